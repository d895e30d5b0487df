/*
 * calib.h - where a pipeline cuts the model: per-layer costs measured on
 * the job's own backend (a short calibration: every layer alone, forward
 * and backward of one micro-batch, best of a few), the stage partition that
 * balances them, and the bubble the job's schedule is predicted to have
 * with those costs.  The measurement lives here; parallel/ only takes the
 * costs (mp_part_balanced, mp_sched_simulate).
 *
 * Runs on the calling thread, which computes (never the libuv thread): the
 * one-process runner's, or the coordinator's feeder thread.
 */
#ifndef MP_ENGINE_CALIB_H
#define MP_ENGINE_CALIB_H

#include <stdbool.h>
#include <stddef.h>

#include "common/status.h"
#include "model/spec.h"
#include "parallel/partition.h"

typedef struct {
    bool measured;       /* costs from a calibration run; false: the FLOP model (relative units) */
    mp_part_kind_t rule; /* the spec's partition rule the cut follows */
    double fwd[MP_SPEC_MAX_LAYERS], bwd[MP_SPEC_MAX_LAYERS]; /* per layer; seconds if measured */
    mp_part_t part;
    double stage_fwd[MP_SPEC_MAX_STAGES], stage_bwd[MP_SPEC_MAX_STAGES];
    double bubble; /* the job's schedule through the simulator on these costs */
} mp_engine_cut_t;

/*
 * The cut of spec's pipeline.  With parallel.partition "measured" (the
 * default) and pp > 1 on CPU shards (cpu) it calibrates on a CPU backend of
 * `threads` threads and balances the measured costs (GPU shards: FLOPs); when the calibration
 * cannot run (a layer the backend refuses) it says so in the log and balances FLOPs instead. Other
 * partitions keep their rule, and only the prediction uses the FLOP model.  Errors are the spec's
 * (a pp that does not fit).
 */
mp_status_t mp_engine_cut_plan(const mp_spec_t *spec, int threads, bool cpu, mp_engine_cut_t *cut_p,
                               mp_errbuf_t *err);
/* Writes the cut into spec as explicit stages, so that every shard, the
 * weight gather and the result see the same partition. */
void mp_engine_cut_apply(mp_spec_t *spec, const mp_engine_cut_t *cut);
/* One line for the job's events, e.g. "stages: layers 0-2 | 3-5; predicted
 * bubble 0.112 (1f1b, measured per-layer costs)"; like snprintf. */
size_t mp_engine_cut_describe(const mp_spec_t *spec, const mp_engine_cut_t *cut, char *buf,
                              size_t len);
/* The layers pipeline stage `stage` holds, "0-2", or its chunks "0-1,4-5"
 * under interleaved_1f1b (chunk c of stage s is the cut's part c x pp + s);
 * like snprintf. */
size_t mp_engine_cut_stage_layers(const mp_spec_t *spec, const mp_engine_cut_t *cut, int stage,
                                  char *buf, size_t len);

#endif
