/*
 * partition.h - stage partitioning for pipeline parallelism: which
 * consecutive layers of model.layers each of the pp stages runs.  The
 * rules (DESIGN.md "PP"): uniform by layer count, balanced by forward FLOPs,
 * balanced by measured costs (the default: the engine measures, see
 * engine/calib.h, and mp_part_balanced takes the costs; unmeasured it is
 * the FLOP balance), or explicit (the spec's "parallel.stages").  Every stage gets at least one
 * layer; a parameterless layer (gelu, relu) at a stage boundary is fine.
 * Pure data and functions, no I/O; any thread.
 */
#ifndef MP_PARALLEL_PARTITION_H
#define MP_PARALLEL_PARTITION_H

#include <stdbool.h>
#include <stdint.h>

#include "common/status.h"
#include "model/spec.h"

/* Part s (a stage, or a virtual stage) runs layers [first[s], first[s] + count[s]). */
typedef struct {
    int nstages;
    int first[MP_SPEC_MAX_STAGES];
    int count[MP_SPEC_MAX_STAGES];
} mp_part_t;

/*
 * Forward FLOPs of one layer per position, for widths in -> out and
 * sequences of seq positions (model.seq; 1 for a classifier): linear
 * 2*I*O, mlp_block 2*2*H*F (its two matmuls), gelu and relu one per element,
 * a transformer block its matmuls plus attention's 2*T*C.  Backward costs
 * about twice the forward for every kind, so the same numbers balance the
 * whole step.
 */
double mp_part_layer_flops(const mp_layer_spec_t *layer, int64_t in, int64_t out, int64_t seq);

/* The parts a spec's layers are cut into: parallel.pp stages, times
 * parallel.virtual_stages chunks per stage (interleaved_1f1b). */
int mp_part_nparts(const mp_spec_t *spec);

/*
 * Partitions spec's layers into mp_part_nparts(spec) parts by
 * spec->parallel.partition: the pp stages, or with v chunks per stage the
 * p * v virtual stages, part c * pp + s being chunk c of stage s (see
 * parallel/sched.h "Chunks").  Refuses (MP_ERR_SPEC, err naming the field) a
 * pp below 1 or above the number of layers or MP_SPEC_MAX_STAGES, and an
 * explicit list whose length is not pp, holds an empty stage or does not sum
 * to the number of layers.
 */
mp_status_t mp_part_build(const mp_spec_t *spec, mp_part_t *part_p, mp_errbuf_t *err);

/*
 * The rules on their own.  Uniform: stage s starts at layer
 * round(s * nlayers / pp) (halves round up), so 4 layers on 3 stages are
 * [1, 2, 1] as in the seed's figure.  Balanced: contiguous stages that
 * minimize the largest stage cost (exact, by dynamic programming); among
 * equally good splits the one whose earlier stages end earliest wins.
 * Explicit: counts[s] layers for stage s.
 */
mp_status_t mp_part_uniform(int nlayers, int pp, mp_part_t *part_p, mp_errbuf_t *err);
mp_status_t mp_part_balanced(const double *cost, int nlayers, int pp, mp_part_t *part_p,
                             mp_errbuf_t *err);
mp_status_t mp_part_explicit(const int *counts, int nstages, int nlayers, int pp, mp_part_t *part_p,
                             mp_errbuf_t *err);

/* mp_part_layer_flops of every layer of spec into cost_p[nlayers]. */
mp_status_t mp_part_flop_costs(const mp_spec_t *spec, double *cost_p, mp_errbuf_t *err);

/* Whether pipeline stage `stage` (of pp) runs `layer`: in one of its parts
 * stage, stage + pp, stage + 2 pp, ... (its chunks). */
bool mp_part_stage_runs(const mp_part_t *part, int pp, int stage, int layer);

/* The part (stage, or virtual stage) that runs `layer`, or -1 when none does. */
int mp_part_stage_of(const mp_part_t *part, int layer);
/* Sum of mp_part_layer_flops over the layers of `stage` (0 for a bad stage). */
double mp_part_stage_flops(const mp_spec_t *spec, const mp_part_t *part, int stage);

#endif
