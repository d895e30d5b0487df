/*
 * trace.c - Chrome trace-event JSON and SVG Gantt charts of executor
 * timelines (trace.h).  Formatting only; owns nothing; any thread.
 */
#include "engine/trace.h"

#include <stdbool.h>
#include <stdint.h>

#include "parallel/placement.h"

void mp_trace_rows_from_ranks(int pp, int tp, int nranks, mp_exec_span_t *const *spans,
                              const int *nspans, mp_trace_row_t *rows)
{
    for (int r = 0; r < nranks; r++) {
        mp_trace_row_t *row = &rows[r];
        row->rank = r;
        mp_place_coords(pp, tp, r, &row->stage, &row->tp_rank, &row->dp_rank);
        row->nspans = nspans[r];
        row->spans = spans[r];
    }
}

static uint64_t earliest(const mp_trace_row_t *rows, int nrows)
{
    uint64_t t0 = UINT64_MAX;
    for (int r = 0; r < nrows; r++) {
        for (int i = 0; i < rows[r].nspans; i++) {
            if (rows[r].spans[i].t0_ns < t0) {
                t0 = rows[r].spans[i].t0_ns;
            }
        }
    }
    return t0 == UINT64_MAX ? 0 : t0;
}

/* Whether any span is of a chunk other than 0 (interleaved_1f1b). */
static bool chunked(const mp_trace_row_t *rows, int nrows)
{
    for (int r = 0; r < nrows; r++) {
        for (int i = 0; i < rows[r].nspans; i++) {
            if (rows[r].spans[i].chunk > 0) {
                return true;
            }
        }
    }
    return false;
}

/* The schedule text's name of a span (parallel/sched.h's mp_sched_format;
 * with chunks "F3.1": micro-batch 3 of chunk 1). */
static void span_name(const mp_exec_span_t *s, bool chunks, char *buf, size_t len)
{
    static const char *const names[] = {
        [MP_SCHED_RECV_ACT] = "rA",     [MP_SCHED_FWD] = "F",        [MP_SCHED_SEND_ACT] = "sA",
        [MP_SCHED_RECV_GRAD] = "rG",    [MP_SCHED_BWD] = "B",        [MP_SCHED_SEND_GRAD] = "sG",
        [MP_SCHED_DP_ALLREDUCE] = "AR", [MP_SCHED_OPT_STEP] = "OPT", [MP_SCHED_BWD_W] = "W",
    };
    const char *n = (unsigned)s->op <= MP_SCHED_OP_LAST ? names[s->op] : "?";
    if (s->mb >= 0 && chunks) {
        snprintf(buf, len, "%s%d.%d", n, s->mb, s->chunk);
    } else if (s->mb >= 0) {
        snprintf(buf, len, "%s%d", n, s->mb);
    } else {
        snprintf(buf, len, "%s", n);
    }
}

static const char *category(mp_sched_op_t op)
{
    switch (op) {
    case MP_SCHED_FWD:
        return "forward";
    case MP_SCHED_BWD:
        return "backward";
    case MP_SCHED_BWD_W:
        return "weight-gradient";
    case MP_SCHED_DP_ALLREDUCE:
        return "allreduce";
    case MP_SCHED_OPT_STEP:
        return "optimizer";
    case MP_SCHED_RECV_ACT:
    case MP_SCHED_RECV_GRAD:
        return "receive";
    default:
        return "send";
    }
}

mp_status_t mp_trace_write_chrome(FILE *out, const mp_trace_row_t *rows, int nrows)
{
    uint64_t t0 = earliest(rows, nrows);
    bool chunks = chunked(rows, nrows);
    fprintf(out, "{\"displayTimeUnit\": \"ms\", \"traceEvents\": [\n");
    const char *sep = "";
    for (int r = 0; r < nrows; r++) {
        const mp_trace_row_t *row = &rows[r];
        fprintf(out,
                "%s{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": 0, \"tid\": %d, "
                "\"args\": {\"name\": \"rank %d stage %d tp %d dp %d\"}}",
                sep, row->rank, row->rank, row->stage, row->tp_rank, row->dp_rank);
        sep = ",\n";
        for (int i = 0; i < row->nspans; i++) {
            const mp_exec_span_t *s = &row->spans[i];
            char name[32];
            span_name(s, chunks, name, sizeof(name));
            fprintf(out,
                    ",\n{\"name\": \"%s\", \"cat\": \"%s\", \"ph\": \"X\", \"pid\": 0, "
                    "\"tid\": %d, \"ts\": %.3f, \"dur\": %.3f, \"args\": {\"mb\": %d, "
                    "\"chunk\": %d}}",
                    name, category(s->op), row->rank, (double)(s->t0_ns - t0) * 1e-3,
                    (double)(s->t1_ns - s->t0_ns) * 1e-3, s->mb, s->chunk);
        }
    }
    fprintf(out, "\n]}\n");
    return ferror(out) ? MP_ERR_IO : MP_OK;
}

mp_status_t mp_trace_write_svg(FILE *out, const mp_trace_row_t *rows, int nrows, const char *title)
{
    uint64_t t0 = earliest(rows, nrows), t1 = t0;
    for (int r = 0; r < nrows; r++) {
        for (int i = 0; i < rows[r].nspans; i++) {
            if (rows[r].spans[i].t1_ns > t1) {
                t1 = rows[r].spans[i].t1_ns;
            }
        }
    }
    bool chunks = chunked(rows, nrows);
    double ms = (double)(t1 - t0) * 1e-6;
    if (ms <= 0) {
        ms = 1.0;
    }
    const double left = 170, width = 1000, row_h = 28, top = 40;
    double height = top + row_h * nrows + 40;
    double px = width / ms;
    fprintf(out,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
            "font-family=\"sans-serif\" font-size=\"11\">\n"
            "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
            "<text x=\"10\" y=\"20\" font-size=\"14\">%s</text>\n",
            left + width + 20, height, title != NULL ? title : "timeline");
    for (int r = 0; r < nrows; r++) {
        const mp_trace_row_t *row = &rows[r];
        double y = top + r * row_h;
        fprintf(out, "<text x=\"10\" y=\"%.1f\">rank %d: stage %d tp %d dp %d</text>\n",
                y + row_h * 0.6, row->rank, row->stage, row->tp_rank, row->dp_rank);
        fprintf(out, "<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n",
                left, y + row_h - 2, left + width, y + row_h - 2);
        for (int i = 0; i < row->nspans; i++) {
            const mp_exec_span_t *s = &row->spans[i];
            double x = left + (double)(s->t0_ns - t0) * 1e-6 * px;
            double w = (double)(s->t1_ns - s->t0_ns) * 1e-6 * px;
            const char *fill;
            bool box = true;
            switch (s->op) {
            case MP_SCHED_FWD:
                fill = "#4a90d9";
                break;
            case MP_SCHED_BWD:
                fill = "#5cb85c";
                break;
            case MP_SCHED_BWD_W:
                fill = "#8e44ad";
                break;
            case MP_SCHED_DP_ALLREDUCE:
                fill = "#f0ad4e";
                break;
            case MP_SCHED_OPT_STEP:
                fill = "#999999";
                break;
            default:
                fill = "#d9534f";
                box = false;
                break;
            }
            char name[32];
            span_name(s, chunks, name, sizeof(name));
            if (box) {
                /* Odd chunks in a lighter shade of their action's colour. */
                fprintf(out,
                        "<rect x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"%.1f\" "
                        "fill=\"%s\" fill-opacity=\"%s\" stroke=\"white\" "
                        "stroke-width=\"0.5\"><title>%s %.3f ms</title></rect>\n",
                        x, y + 3, w > 0.5 ? w : 0.5, row_h - 8, fill, s->chunk % 2 ? "0.6" : "1",
                        name, (double)(s->t1_ns - s->t0_ns) * 1e-6);
                if (w > 14 && s->mb >= 0 && !chunks) {
                    fprintf(out,
                            "<text x=\"%.2f\" y=\"%.1f\" fill=\"white\" "
                            "text-anchor=\"middle\">%d</text>\n",
                            x + w / 2, y + row_h * 0.6, s->mb);
                } else if (w > 22 && s->mb >= 0) {
                    fprintf(out,
                            "<text x=\"%.2f\" y=\"%.1f\" fill=\"white\" "
                            "text-anchor=\"middle\">%d.%d</text>\n",
                            x + w / 2, y + row_h * 0.6, s->mb, s->chunk);
                }
            } else if (w >= 1.0) {
                /* Waiting for a message: a thin bar under the row. */
                fprintf(out,
                        "<rect x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"2\" fill=\"%s\">"
                        "<title>%s %.3f ms</title></rect>\n",
                        x, y + row_h - 5, w, fill, name, (double)(s->t1_ns - s->t0_ns) * 1e-6);
            }
        }
    }
    double ay = top + row_h * nrows + 15;
    fprintf(out,
            "<text x=\"%.0f\" y=\"%.1f\">0 ms</text><text x=\"%.0f\" y=\"%.1f\" "
            "text-anchor=\"end\">%.1f ms</text>\n"
            "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"middle\">forward (blue), backward "
            "(green; the input gradient B when split), weight gradient W (purple), DP allreduce "
            "(orange), optimizer (grey), waiting on a receive (red "
            "line)%s</text>\n</svg>\n",
            left, ay, left + width, ay, ms, left + width / 2, ay + 16,
            chunks ? "; micro-batch.chunk, odd chunks lighter" : "");
    return ferror(out) ? MP_ERR_IO : MP_OK;
}
