/*
 * coll.h - collectives over UCX workers: allreduce (sum, fp32), allgather,
 * reduce-scatter, broadcast and barrier over any group of ranks.
 *
 * A group is a list of endpoints (one per member, in group-rank order) on
 * one worker, plus a 16-bit group id that namespaces its tags: a job's TP
 * group and DP group are two groups over the same worker, with distinct
 * ids, and their messages never match each other's.  Every member must
 * call the group's collectives in the same order with the same arguments
 * (counts, root, algorithm).  Groups of up to MP_COLL_GROUP_MAX ranks; any
 * element count, including 0, 1, primes and counts not divisible by the
 * group size.
 *
 * Element i of a count-element tensor belongs to the block of group rank b
 * with mp_coll_block(count, size, b, ...) containing i: the first count %
 * size ranks hold one element more.  Reduce-scatter leaves rank b its
 * block; allgather expects it.
 *
 * A collective that fails (a dead member, a timeout) fails the group: every
 * later call on it returns MP_ERR_STATE.  The worker stays usable; make a
 * new group (new id, new endpoints where old ones failed) to go on.
 * Threading: the worker's thread only.
 */
#ifndef MP_TRANSPORT_COLL_H
#define MP_TRANSPORT_COLL_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "transport/ucx.h"

#define MP_COLL_GROUP_MAX 128

typedef struct mp_coll_group mp_coll_group_t;

typedef enum {
    /* By size and group: recursive doubling up to a threshold, then recursive
     * halving-doubling for power-of-two groups and the ring for the others. */
    MP_COLL_ALGO_AUTO = 0,
    /* Recursive doubling: log2(n) rounds of the whole tensor (latency-bound). */
    MP_COLL_ALGO_RD = 1,
    /* Ring reduce-scatter + allgather: 2(n-1) steps of 1/n of it (bandwidth-bound). */
    MP_COLL_ALGO_RING = 2,
    /* Rabenseifner: recursive halving reduce-scatter + recursive doubling
     * allgather, the ring's bandwidth in 2 log2(n) rounds. */
    MP_COLL_ALGO_RHD = 3,
} mp_coll_algo_t;

/*
 * Allreduce bytes above which AUTO leaves recursive doubling: for
 * power-of-two groups for recursive halving-doubling, for the others for
 * the ring.  Measured with `mpar-bench-xport --switch` (2-4 processes,
 * shared memory, a loaded 2-core machine; time of RD / time of the other):
 *   n=2  rhd 1.15 at 64 KiB, 1.8 at 256 KiB, 1.07 at 1 MiB, 1.4 at 4 MiB
 *   n=4  rhd 0.31 at 64 KiB, 0.64 at 256 KiB, 1.12 at 1 MiB, 1.7 at 4 MiB
 *   n=3  ring 0.43 at 256 KiB, 0.58 at 1 MiB, 1.4 at 4 MiB, 1.2 at 16 MiB
 * The ring's 2(n-1) dependent steps each wait for a scheduled neighbour,
 * so on an oversubscribed host it pays only from a few MiB; with a core
 * per rank the crossovers move down.  Tune per group with
 * mp_coll_group_set_thresholds().
 */
#define MP_COLL_RHD_THRESHOLD_DEFAULT (512u * 1024u)
#define MP_COLL_RING_THRESHOLD_DEFAULT (2u * 1024u * 1024u)

/*
 * Makes a group of size members, of which the caller is group rank rank.
 * eps[i] is the endpoint to member i (eps[rank] is not used and may be
 * NULL); the endpoints stay the caller's and must outlive the group.
 */
mp_status_t mp_coll_group_create(mp_xport_worker_t *worker, uint16_t group_id, uint32_t size,
                                 uint32_t rank, mp_xport_ep_t *const *eps,
                                 mp_coll_group_t **group_p);
void mp_coll_group_destroy(mp_coll_group_t *group);
uint32_t mp_coll_group_size(const mp_coll_group_t *group);
uint32_t mp_coll_group_rank(const mp_coll_group_t *group);
/* MP_OK, or the error that failed the group. */
mp_status_t mp_coll_group_status(const mp_coll_group_t *group);
/* Allreduce bytes above which MP_COLL_ALGO_AUTO uses recursive halving-doubling
 * (power-of-two groups) or the ring (other groups). */
void mp_coll_group_set_thresholds(mp_coll_group_t *group, size_t rhd_bytes, size_t ring_bytes);

/* The block [*off_p, *off_p + *len_p) of group rank b in a count-element tensor. */
void mp_coll_block(size_t count, uint32_t size, uint32_t b, size_t *off_p, size_t *len_p);

/* In place: buf (count floats) becomes the element-wise sum over the group.
 * Every member gets the same bits.  timeout_ms <= 0: the worker's default. */
mp_status_t mp_coll_allreduce_sum_f32(mp_coll_group_t *group, float *buf, size_t count,
                                      int64_t timeout_ms);
mp_status_t mp_coll_allreduce_sum_f32_algo(mp_coll_group_t *group, float *buf, size_t count,
                                           mp_coll_algo_t algo, int64_t timeout_ms);
/* all (count floats) gets every member's block; mine is the caller's block
 * (mp_coll_block length), which may already sit at its place inside all. */
mp_status_t mp_coll_allgather_f32(mp_coll_group_t *group, const float *mine, float *all,
                                  size_t count, int64_t timeout_ms);
/* mine gets the caller's block of the element-wise sum over the group of in (count floats). */
mp_status_t mp_coll_reduce_scatter_sum_f32(mp_coll_group_t *group, const float *in, float *mine,
                                           size_t count, int64_t timeout_ms);
/* buf (bytes) of member root is copied to every member's buf. */
mp_status_t mp_coll_bcast(mp_coll_group_t *group, void *buf, size_t bytes, uint32_t root,
                          int64_t timeout_ms);
/* Returns once every member has entered it. */
mp_status_t mp_coll_barrier(mp_coll_group_t *group, int64_t timeout_ms);

#endif
