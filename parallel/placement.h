/*
 * placement.h - places a job's pp x tp x dp grid of shards on the devices
 * of the cluster's nodes.  A TP group (the tp ranks of one stage of one DP
 * replica) stays inside one node, as Megatron does, because its collectives
 * run on every layer; stages and replicas may span nodes.  Pure data and
 * functions, no I/O; any thread.
 *
 * Global rank numbering (used by every module that names a shard):
 *     rank = (dp_rank * pp + stage) * tp + tp_rank
 * so the ranks of one TP group are consecutive, then the stages of one
 * replica, then the replicas.
 *
 * The rule: TP groups are taken in rank order (replica 0's stage 0, its
 * stage 1, ..., then replica 1) and nodes in the order given; each group
 * goes to the current node while it has tp free devices, then the next
 * node is taken.  Consecutive stages thus share a node when they can.
 */
#ifndef MP_PARALLEL_PLACEMENT_H
#define MP_PARALLEL_PLACEMENT_H

#include <stdbool.h>

#include "common/status.h"

typedef enum { MP_DEV_CPU = 0, MP_DEV_CUDA } mp_dev_kind_t;

/* One node as the coordinator sees it. */
typedef struct {
    const char *name;
    mp_dev_kind_t kind;
    int ndevices;     /* devices 0..ndevices-1 */
    const bool *busy; /* NULL, or ndevices flags: true = held by another job */
} mp_place_node_t;

/* Where one shard runs. */
typedef struct {
    int node;   /* index into the node list given */
    int device; /* device index on that node */
    mp_dev_kind_t kind;
} mp_place_slot_t;

typedef struct {
    int pp, tp, dp;
    int nranks;            /* pp * tp * dp */
    mp_place_slot_t *slot; /* [nranks], by global rank */
} mp_place_t;

/*
 * Places the grid.  Refuses a grid below 1 on any axis (MP_ERR_INVAL) and a
 * cluster that cannot hold it (MP_ERR_BUSY) with a message naming what is
 * missing, e.g. "the job needs 4 TP groups of 2 devices each inside one
 * node; the cluster has node a (1 free device), node b (1 free device)".
 * Free *place_p with mp_place_free.
 */
mp_status_t mp_place_build(const mp_place_node_t *nodes, int nnodes, int pp, int tp, int dp,
                           mp_place_t *place_p, mp_errbuf_t *err);
void mp_place_free(mp_place_t *place);

/* The rank numbering above, both ways. */
int mp_place_rank(int pp, int tp, int stage, int tp_rank, int dp_rank);
void mp_place_coords(int pp, int tp, int rank, int *stage_p, int *tp_rank_p, int *dp_rank_p);

#endif
