/*
 * 1f1b.c - the 1F1B schedule (PipeDream-flush, Megatron's default) and its
 * interleaved form (Megatron's virtual pipeline), which are one builder:
 * stage s runs its chunk-forwards in Megatron's order, a warm-up of them
 * first, then one forward and one backward in turn, then the remaining
 * backwards.
 *  - 1f1b (v = 1): min(p - s - 1, m) warm-up forwards; GPipe's bubble
 *    (p - 1) / (m + p - 1) with at most min(p - s, m) activations held
 *    instead of m.
 *  - interleaved_1f1b (v chunks per stage, m a multiple of p): the k-th
 *    forward of a stage is micro-batch (k / pv) p + k % p of chunk
 *    (k / p) % v (groups of p micro-batches go through chunk 0, then
 *    chunk 1, ...), the k-th backward the same with chunk v - 1 - (k / p) % v;
 *    (p - s - 1) + (v - 1) p warm-up forwards (capped at mv), so that the
 *    first backward of the last chunk finds its stage's forwards ahead of
 *    it.  Bubble (p - 1) / (vm + p - 1) at unit chunk costs.  At v = 1 it is
 *    1f1b exactly.
 * Pure, any thread.
 */
#include "parallel/sched_gen.h"

/* Micro-batch and chunk of the k-th forward (bwd: backward) of a stage. */
static void order(int p, int v, int k, bool bwd, int *mb_p, int *chunk_p)
{
    int c = (k / p) % v;
    *chunk_p = bwd ? v - 1 - c : c;
    *mb_p = (k / (p * v)) * p + k % p;
}

static mp_status_t build_1f1b(mp_sched_t *sched)
{
    int p = sched->nstages, m = sched->nmicro, v = sched->nchunks, n = m * v;
    mp_status_t st = MP_OK;
    for (int s = 0; s < p && st == MP_OK; s++) {
        int warmup = (p - s - 1) + (v - 1) * p;
        warmup = warmup < n ? warmup : n;
        int nf = 0, nb = 0, mb, c;
        for (; nf < warmup && st == MP_OK; nf++) {
            order(p, v, nf, false, &mb, &c);
            st = mp_sched_push_fwd(sched, s, c, mb);
        }
        for (; nf < n && st == MP_OK; nf++, nb++) {
            order(p, v, nf, false, &mb, &c);
            st = mp_sched_push_fwd(sched, s, c, mb);
            if (st == MP_OK) {
                order(p, v, nb, true, &mb, &c);
                st = mp_sched_push_bwd(sched, s, c, mb);
            }
        }
        for (; nb < n && st == MP_OK; nb++) {
            order(p, v, nb, true, &mb, &c);
            st = mp_sched_push_bwd(sched, s, c, mb);
        }
        if (st == MP_OK) {
            st = mp_sched_push_tail(sched, s);
        }
    }
    return st;
}

const mp_sched_gen_t mp_sched_gen_1f1b = {
    .name = "1f1b",
    .kind = MP_SCHED_1F1B,
    .build = build_1f1b,
    .bubble = mp_sched_bubble_1f1b,
};

/* Megatron's rule: the micro-batches go through the chunks in groups of p. */
static mp_status_t check_interleaved(int p, int m, int v, mp_errbuf_t *err)
{
    (void)v;
    if (m % p != 0) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "parallel.micro_batches: %d is not a multiple of parallel.pp = %d "
                             "(schedule \"interleaved_1f1b\" runs the micro-batches through "
                             "the chunks in groups of pp)",
                             m, p);
    }
    return MP_OK;
}

double mp_sched_bubble_theory_interleaved(int p, int m, int v)
{
    return (double)(p - 1) / (double)(v * m + p - 1);
}

const mp_sched_gen_t mp_sched_gen_interleaved_1f1b = {
    .name = "interleaved_1f1b",
    .kind = MP_SCHED_INTERLEAVED_1F1B,
    .chunks = true,
    .check = check_interleaved,
    .build = build_1f1b,
    .bubble = mp_sched_bubble_theory_interleaved,
};
