/*
 * mem_coll.h - in-memory TP collectives for tests that run a TP group's
 * ranks as threads of one process: a barrier, every rank reads every
 * other's buffer, a barrier.  Sums are taken in rank order on every rank,
 * so all ranks get the same bits, as the transport's ring guarantees.
 * Shared by test_engine_tpmodel.c and test_gpt_model.c.
 */
#ifndef MP_TESTS_MEM_COLL_H
#define MP_TESTS_MEM_COLL_H

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"

#define MEM_COLL_MAXR 4

typedef struct {
    int tp;
    pthread_barrier_t bar;
    float *buf[MEM_COLL_MAXR];
    const float *in[MEM_COLL_MAXR];
} group_t;

typedef struct {
    group_t *g;
    int rank;
} member_t;

static inline mp_status_t mem_allreduce(void *ctx, float *buf, int64_t n)
{
    member_t *me = ctx;
    group_t *g = me->g;
    float *sum = calloc((size_t)(n > 0 ? n : 1), sizeof(float));
    g->buf[me->rank] = buf;
    pthread_barrier_wait(&g->bar);
    for (int r = 0; r < g->tp; r++) {
        for (int64_t i = 0; i < n; i++) {
            sum[i] += g->buf[r][i];
        }
    }
    pthread_barrier_wait(&g->bar);
    memcpy(buf, sum, (size_t)n * sizeof(float));
    free(sum);
    return MP_OK;
}

static inline mp_status_t mem_allgather(void *ctx, const float *in, float *out, int64_t n)
{
    member_t *me = ctx;
    group_t *g = me->g;
    g->in[me->rank] = in;
    pthread_barrier_wait(&g->bar);
    for (int r = 0; r < g->tp; r++) {
        memcpy(out + r * n, g->in[r], (size_t)n * sizeof(float));
    }
    pthread_barrier_wait(&g->bar);
    return MP_OK;
}

#endif
