/*
 * alloc.h - the one counted allocation wrapper: every host allocation of
 * mpar goes through it, so live bytes are a number mpard can report.
 * Thread-safe (atomic counters).
 */
#ifndef MP_ALLOC_H
#define MP_ALLOC_H

#include <stddef.h>
#include <stdint.h>

void *mp_malloc(size_t size);
void *mp_calloc(size_t n, size_t size);
void *mp_realloc(void *ptr, size_t size);
/* 64-byte aligned, for tensors. */
void *mp_aligned_alloc(size_t size);
void mp_free(void *ptr);
char *mp_strdup(const char *s);
/* Live bytes allocated through this wrapper. */
int64_t mp_alloc_live_bytes(void);

#endif
