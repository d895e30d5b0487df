/*
 * alloc.c - counted malloc wrapper.  Each block carries a 64-byte header
 * holding its size, so mp_free() can subtract it and every block stays
 * 64-byte aligned.  Any thread.
 */
#include "alloc.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define MP_ALLOC_HDR 64

static _Atomic int64_t live_bytes;

void *mp_malloc(size_t size)
{
    void *raw = NULL;
    if (posix_memalign(&raw, MP_ALLOC_HDR, size + MP_ALLOC_HDR) != 0) {
        return NULL;
    }
    *(size_t *)raw = size;
    atomic_fetch_add(&live_bytes, (int64_t)size);
    return (char *)raw + MP_ALLOC_HDR;
}

void *mp_calloc(size_t n, size_t size)
{
    if (size != 0 && n > SIZE_MAX / size) {
        return NULL;
    }
    void *p = mp_malloc(n * size);
    if (p != NULL) {
        memset(p, 0, n * size);
    }
    return p;
}

void *mp_aligned_alloc(size_t size) { return mp_malloc(size); }

void mp_free(void *ptr)
{
    if (ptr == NULL) {
        return;
    }
    void *raw = (char *)ptr - MP_ALLOC_HDR;
    atomic_fetch_sub(&live_bytes, (int64_t)*(size_t *)raw);
    free(raw);
}

void *mp_realloc(void *ptr, size_t size)
{
    if (ptr == NULL) {
        return mp_malloc(size);
    }
    size_t old = *(size_t *)((char *)ptr - MP_ALLOC_HDR);
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
