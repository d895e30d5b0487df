/*
 * alloc.c - counted malloc wrapper.  Each block carries a 64-byte header
 * holding its size and the address the C library returned, so mp_free()
 * can subtract the size and free the block, and every block stays 64-byte
 * aligned.  mp_calloc uses calloc itself: a large zeroed block then comes
 * from fresh (lazily zeroed) pages instead of a memset over all of it,
 * which on a loop thread cost a second for a job of a million steps.
 * Any thread.
 */
#include "alloc.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MP_ALLOC_HDR 64

typedef struct {
    size_t size;
    void *base; /* what posix_memalign or calloc returned */
} hdr_t;

static _Atomic int64_t live_bytes;

static void *finish(void *base, char *p, size_t size)
{
    hdr_t *h = (hdr_t *)(p - MP_ALLOC_HDR);
    h->size = size;
    h->base = base;
    atomic_fetch_add(&live_bytes, (int64_t)size);
    return p;
}

void *mp_malloc(size_t size)
{
    void *raw = NULL;
    if (size > SIZE_MAX - MP_ALLOC_HDR ||
        posix_memalign(&raw, MP_ALLOC_HDR, size + MP_ALLOC_HDR) != 0) {
        return NULL;
    }
    return finish(raw, (char *)raw + MP_ALLOC_HDR, size);
}

void *mp_calloc(size_t n, size_t size)
{
    if (size != 0 && n > SIZE_MAX / size) {
        return NULL;
    }
    size_t bytes = n * size;
    if (bytes > SIZE_MAX - 2 * MP_ALLOC_HDR) {
        return NULL;
    }
    /* calloc aligns to 16 only: the block starts at the first 64-byte
     * boundary at least a header past calloc's address. */
    char *base = calloc(1, bytes + 2 * MP_ALLOC_HDR);
    if (base == NULL) {
        return NULL;
    }
    uintptr_t p = ((uintptr_t)base + MP_ALLOC_HDR + (MP_ALLOC_HDR - 1)) &
                  ~(uintptr_t)(MP_ALLOC_HDR - 1);
    return finish(base, (char *)p, bytes);
}

void *mp_aligned_alloc(size_t size) { return mp_malloc(size); }

void mp_free(void *ptr)
{
    if (ptr == NULL) {
        return;
    }
    hdr_t *h = (hdr_t *)((char *)ptr - MP_ALLOC_HDR);
    atomic_fetch_sub(&live_bytes, (int64_t)h->size);
    free(h->base);
}

void *mp_realloc(void *ptr, size_t size)
{
    if (ptr == NULL) {
        return mp_malloc(size);
    }
    size_t old = ((hdr_t *)((char *)ptr - MP_ALLOC_HDR))->size;
    void *p = mp_malloc(size);
    if (p == NULL) {
        return NULL;
    }
    memcpy(p, ptr, old < size ? old : size);
    mp_free(ptr);
    return p;
}

char *mp_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = mp_malloc(n);
    if (p != NULL) {
        memcpy(p, s, n);
    }
    return p;
}

int64_t mp_alloc_live_bytes(void) { return atomic_load(&live_bytes); }
