/*
 * stats.h - the per-step statistics of a model-parallel job, accumulated
 * from its executors' reports (engine/executor.h) in whatever order they
 * arrive: each training step's window (from the first compute of any
 * shard to the last action's end), the busy time of each stage (its dp 0,
 * tp 0 shard), and from them the measured bubble fraction and the
 * training time, as engine/local.h defines them.  Pure data; the caller
 * serializes access (one thread, or its own lock).
 */
#ifndef MP_ENGINE_STATS_H
#define MP_ENGINE_STATS_H

#include <stdint.h>

#include "common/status.h"
#include "engine/executor.h"

typedef struct mp_engine_stats mp_engine_stats_t;

/* For a job of pp stages and `steps` training steps. */
mp_status_t mp_engine_stats_create(int pp, int64_t steps, mp_engine_stats_t **stats_p);
void mp_engine_stats_destroy(mp_engine_stats_t *stats);
/* Adds one training-step report (others are ignored).  Times may be any
 * clock shared by every reporter. */
void mp_engine_stats_add(mp_engine_stats_t *stats, const mp_exec_report_t *report);
/* Seconds of step (1-based) from its window, 0 until reported. */
double mp_engine_stats_step_seconds(const mp_engine_stats_t *stats, int64_t step);
/* Bubble fraction: per step, the mean over stages of (window - busy) /
 * window, averaged over the steps but the first (warm-up) when there are
 * more; 0 with none.  *seconds_p (may be NULL): the windows' sum. */
double mp_engine_stats_bubble(const mp_engine_stats_t *stats, double *seconds_p);
/* The same over steps 1..upto only (those known complete while a job runs). */
double mp_engine_stats_bubble_upto(const mp_engine_stats_t *stats, int64_t upto, double *seconds_p);
/* FWD, BWD, DP_ALLREDUCE and OPT_STEP: the actions that compute. */
int mp_engine_op_busy(mp_sched_op_t op);

#endif
