/*
 * trace.h - renders executors' timelines (mp_exec_span_t lists, one per
 * shard) as Chrome trace-event JSON (opens in Perfetto or chrome://tracing)
 * and as an SVG Gantt chart of one step, one row per shard, forward and
 * backward in different colours, like the pipeline figures of the GPipe
 * paper.  Pure formatting to a FILE; any thread.
 */
#ifndef MP_ENGINE_TRACE_H
#define MP_ENGINE_TRACE_H

#include <stdio.h>

#include "common/status.h"
#include "engine/executor.h"

/* One shard's row. */
typedef struct {
    int rank, stage, tp_rank, dp_rank;
    int nspans;
    const mp_exec_span_t *spans;
} mp_trace_row_t;

/* rows[r] for every global rank r of a pp x tp x dp grid (placement.h's
 * numbering) from per-rank span lists, e.g. mp_engine_result_t's. */
void mp_trace_rows_from_ranks(int pp, int tp, int nranks, mp_exec_span_t *const *spans,
                              const int *nspans, mp_trace_row_t *rows);

/* {"traceEvents": [...], "displayTimeUnit": "ms"}: one complete ("X")
 * event per span, named like the schedule's text (F3, B3, rA3, sG3, AR,
 * OPT), microseconds from the earliest span; one thread per shard, named
 * "rank R stage S tp T dp D". */
mp_status_t mp_trace_write_chrome(FILE *out, const mp_trace_row_t *rows, int nrows);
/* An SVG Gantt chart: time on x (ms from the earliest span), a row per
 * shard; FWD blue, BWD green, DP_ALLREDUCE orange, OPT_STEP grey, receives
 * and sends as thin marks; micro-batch numbers inside the boxes. */
mp_status_t mp_trace_write_svg(FILE *out, const mp_trace_row_t *rows, int nrows, const char *title);

#endif
