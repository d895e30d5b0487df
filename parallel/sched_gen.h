/*
 * sched_gen.h - the table behind parallel.schedule: one generator per
 * schedule kind (parallel/sched/<name>.c), registered in sched.c, and the
 * list-building helpers they share.  Adding a schedule is its file, one
 * line in sched.c's registry and its name in model/spec.h's kind enum.
 * Internal to parallel/; pure, any thread.
 */
#ifndef MP_PARALLEL_SCHED_GEN_H
#define MP_PARALLEL_SCHED_GEN_H

#include <stdbool.h>

#include "parallel/sched.h"

typedef struct mp_sched_gen {
    const char *name; /* parallel.schedule's value */
    mp_sched_kind_t kind;
    /* Whether it runs several chunks per stage (parallel.virtual_stages). */
    bool chunks;
    /* Whether its backward is B then W actions (BWD, BWD_W), so that W's
     * can be grouped (parallel.fuse_w). */
    bool split;
    /* Refuses (MP_ERR_SPEC, naming the spec's fields) a p stages x m
     * micro-batches x v chunks this schedule cannot run; NULL: any (v = 1
     * unless chunks, p and m in range are checked for every kind). */
    mp_status_t (*check)(int p, int m, int v, mp_errbuf_t *err);
    /* Fills the empty sched (kind, p, m, v set) with every stage's list,
     * DP_ALLREDUCE and OPT_STEP at the end of each. */
    mp_status_t (*build)(mp_sched_t *sched);
    /* The bubble at unit costs (F = B, and W = B under a split backward),
     * the papers' formula; the simulator reproduces it (test_sched). */
    double (*bubble)(int p, int m, int v);
} mp_sched_gen_t;

extern const mp_sched_gen_t mp_sched_gen_naive;
extern const mp_sched_gen_t mp_sched_gen_gpipe;
extern const mp_sched_gen_t mp_sched_gen_1f1b;
extern const mp_sched_gen_t mp_sched_gen_zero_bubble;
extern const mp_sched_gen_t mp_sched_gen_interleaved_1f1b;

/* The generator of kind, or NULL for a kind that has none. */
const mp_sched_gen_t *mp_sched_gen(mp_sched_kind_t kind);

/* Stage s's forward of mb in chunk c with its receive (all but the first
 * virtual stage) and send (all but the last). */
mp_status_t mp_sched_push_fwd(mp_sched_t *sched, int s, int c, int mb);
/* Stage s's backward (B under a split) of mb in chunk c with its receive
 * and send. */
mp_status_t mp_sched_push_bwd(mp_sched_t *sched, int s, int c, int mb);
/* 1f1b's bubble, (p - 1) / (m + p - 1), as the table's bubble. */
double mp_sched_bubble_1f1b(int p, int m, int v);
/* DP_ALLREDUCE then OPT_STEP: the end of every list. */
mp_status_t mp_sched_push_tail(mp_sched_t *sched, int s);
/* gpipe's lists (naive's too: gpipe at m = 1). */
mp_status_t mp_sched_build_gpipe(mp_sched_t *sched);

#endif
