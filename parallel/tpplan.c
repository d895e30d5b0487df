/*
 * tpplan.c - builds the tensor-parallel plan of a model (tpplan.h explains
 * the math) and answers which parameter block each TP rank holds.  Owns
 * nothing beyond its outputs; pure, any thread.
 */
#include "parallel/tpplan.h"

#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "parallel/internal.h"

static bool same_stage(const mp_part_t *part, int a, int b)
{
    return part == NULL || mp_part_stage_of(part, a) == mp_part_stage_of(part, b);
}

/* Whether the column-parallel linear `l` pairs with a following linear that
 * consumes its shards: skip gelu/relu, stay inside the stage. */
static bool pairs_with_next(const mp_spec_t *spec, const mp_part_t *part, int l)
{
    int j = l + 1;
    while (j < spec->model.nlayers && same_stage(part, l, j) &&
           (spec->model.layers[j].kind == MP_LAYER_GELU ||
            spec->model.layers[j].kind == MP_LAYER_RELU)) {
        j++;
    }
    if (j >= spec->model.nlayers || !same_stage(part, l, j)) {
        return false;
    }
    const mp_layer_spec_t *next = &spec->model.layers[j];
    return next->kind == MP_LAYER_LINEAR && (next->tp == MP_TP_AUTO || next->tp == MP_TP_ROW);
}

static mp_status_t plan_linear(const mp_spec_t *spec, const mp_part_t *part, int l, int tp,
                               mp_tp_layer_t *pl, mp_errbuf_t *err)
{
    const mp_layer_spec_t *layer = &spec->model.layers[l];
    int64_t in = pl->in_dim, out = pl->out_dim;
    if (layer->tp == MP_TP_COLUMN && out % tp != 0) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "model.layers[%d].tp: \"column\" needs parallel.tp = %d to divide "
                             "model.layers[%d].out = %lld",
                             l, tp, l, (long long)out);
    }
    if (layer->tp == MP_TP_ROW && in % tp != 0) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "model.layers[%d].tp: \"row\" needs parallel.tp = %d to divide the "
                             "layer's input width %lld",
                             l, tp, (long long)in);
    }
    pl->split = MP_TP_SPLIT_REPLICATE;
    pl->in_local = in;
    pl->out_local = out;
    pl->split_local = out;
    if (tp == 1) {
        return MP_OK;
    }
    if (pl->in_layout == MP_TP_LAYOUT_SHARDED) {
        /* A column-parallel linear before paired with this one (only an auto
         * or "row" linear is paired), so tp divides in. */
        pl->split = MP_TP_SPLIT_ROW;
        pl->in_local = in / tp;
        pl->split_local = in / tp;
        pl->fwd_post = MP_TP_COMM_ALLREDUCE;
        pl->bias_after_reduce = true;
        return MP_OK;
    }
    if (layer->tp == MP_TP_ROW) {
        pl->split = MP_TP_SPLIT_ROW;
        pl->split_local = in / tp;
        pl->fwd_pre = MP_TP_COMM_SLICE;
        pl->fwd_post = MP_TP_COMM_ALLREDUCE;
        pl->bwd_post = MP_TP_COMM_ALLGATHER;
        pl->bias_after_reduce = true;
        return MP_OK;
    }
    if (layer->tp == MP_TP_COLUMN || (layer->tp == MP_TP_AUTO && out % tp == 0)) {
        pl->split = MP_TP_SPLIT_COLUMN;
        pl->split_local = out / tp;
        pl->bwd_post = MP_TP_COMM_ALLREDUCE;
        if (pairs_with_next(spec, part, l)) {
            pl->out_layout = MP_TP_LAYOUT_SHARDED;
            pl->out_local = out / tp;
        } else {
            pl->fwd_post = MP_TP_COMM_ALLGATHER;
            pl->bwd_pre = MP_TP_COMM_SLICE;
        }
        return MP_OK;
    }
    return MP_OK; /* replicate: forced, or auto with tp not dividing out */
}

mp_status_t mp_tp_plan_build(const mp_spec_t *spec, const mp_part_t *part, mp_tp_plan_t *plan_p,
                             mp_errbuf_t *err)
{
    int tp = spec->parallel.tp;
    if (tp < 1) {
        return mp_errbuf_set(err, MP_ERR_SPEC, "parallel.tp: %d, expected at least 1", tp);
    }
    int64_t in[MP_SPEC_MAX_LAYERS], out[MP_SPEC_MAX_LAYERS];
    mp_status_t st = mp_par_layer_dims(spec, in, out, err);
    if (st != MP_OK) {
        return st;
    }
    int L = spec->model.nlayers;
    if (part != NULL) {
        for (int l = 0; l < L; l++) {
            if (mp_part_stage_of(part, l) < 0) {
                return mp_errbuf_set(err, MP_ERR_INVAL, "layer %d is in no pipeline stage", l);
            }
        }
    }
    /* Built aside and copied out, so *plan_p is written only on success. */
    mp_tp_plan_t *plan = mp_malloc(sizeof(*plan));
    if (plan == NULL) {
        return mp_errbuf_set(err, MP_ERR_NOMEM, "tensor-parallel plan: out of memory");
    }
    plan->tp = tp;
    plan->nlayers = L;
    mp_tp_layout_t layout = MP_TP_LAYOUT_REPLICATED;
    for (int l = 0; l < L; l++) {
        const mp_layer_spec_t *layer = &spec->model.layers[l];
        mp_tp_layer_t pl = {
            .kind = layer->kind,
            .in_dim = in[l],
            .out_dim = out[l],
            .in_layout = layout,
            .out_layout = MP_TP_LAYOUT_REPLICATED,
            .needs_dx = l > 0,
        };
        if (layer->kind != MP_LAYER_LINEAR && layer->tp != MP_TP_AUTO) {
            mp_free(plan);
            return mp_errbuf_set(err, MP_ERR_SPEC,
                                 "model.layers[%d].tp: only a linear layer takes \"tp\"", l);
        }
        switch (layer->kind) {
        case MP_LAYER_GELU:
        case MP_LAYER_RELU:
            pl.split = MP_TP_SPLIT_ELEMENTWISE;
            pl.out_layout = layout;
            pl.in_local = layout == MP_TP_LAYOUT_SHARDED ? in[l] / tp : in[l];
            pl.out_local = pl.in_local;
            pl.split_local = pl.in_local;
            break;
        case MP_LAYER_MLP_BLOCK:
            if (layer->ffn % tp != 0) {
                mp_free(plan);
                return mp_errbuf_set(err, MP_ERR_SPEC,
                                     "parallel.tp: %d does not divide model.layers[%d].ffn = %lld",
                                     tp, l, (long long)layer->ffn);
            }
            /* Only a linear is ever paired, so x arrives replicated. */
            pl.split = MP_TP_SPLIT_MLP;
            pl.ffn = layer->ffn;
            pl.in_local = in[l];
            pl.out_local = out[l];
            pl.split_local = layer->ffn / tp;
            pl.nparams = 4;
            pl.bias_after_reduce = true;
            if (tp > 1) {
                pl.fwd_post = MP_TP_COMM_ALLREDUCE;
                pl.bwd_post = MP_TP_COMM_ALLREDUCE;
            }
            break;
        case MP_LAYER_LINEAR:
            pl.nparams = 2;
            st = plan_linear(spec, part, l, tp, &pl, err);
            if (st != MP_OK) {
                mp_free(plan);
                return st;
            }
            break;
        default:
            mp_free(plan);
            return mp_errbuf_set(err, MP_ERR_SPEC, "model.layers[%d].type: not planned yet", l);
        }
        if (!pl.needs_dx) {
            pl.bwd_post = MP_TP_COMM_NONE;
        }
        layout = pl.out_layout;
        plan->layer[l] = pl;
    }
    *plan_p = *plan;
    mp_free(plan);
    return MP_OK;
}

void mp_tp_shard_range(int64_t n, int tp, int tp_rank, int64_t *col0_p, int64_t *cols_p)
{
    int64_t chunk = n / tp;
    *col0_p = chunk * tp_rank;
    *cols_p = chunk;
}

mp_status_t mp_tp_param_slice(const mp_tp_plan_t *plan, int layer, int param, int tp_rank,
                              mp_tp_slice_t *slice_p)
{
    if (layer < 0 || layer >= plan->nlayers || tp_rank < 0 || tp_rank >= plan->tp) {
        return MP_ERR_INVAL;
    }
    const mp_tp_layer_t *pl = &plan->layer[layer];
    if (param < 0 || param >= pl->nparams) {
        return MP_ERR_INVAL;
    }
    int64_t rows, cols;
    /* Which axis of the full tensor is split: 0 none, 1 rows, 2 columns. */
    int axis = 0;
    if (pl->kind == MP_LAYER_LINEAR) {
        rows = param == 0 ? pl->in_dim : 1;
        cols = pl->out_dim;
        if (pl->split == MP_TP_SPLIT_COLUMN) {
            axis = 2;
        } else if (pl->split == MP_TP_SPLIT_ROW && param == 0) {
            axis = 1;
        }
    } else {
        switch (param) {
        case 0: /* fc1.weight [H, F], columns */
            rows = pl->in_dim;
            cols = pl->ffn;
            axis = 2;
            break;
        case 1: /* fc1.bias [1, F], columns */
            rows = 1;
            cols = pl->ffn;
            axis = 2;
            break;
        case 2: /* fc2.weight [F, H], rows */
            rows = pl->ffn;
            cols = pl->out_dim;
            axis = 1;
            break;
        default: /* fc2.bias [1, H], whole */
            rows = 1;
            cols = pl->out_dim;
            break;
        }
    }
    mp_tp_slice_t s = {.full_rows = rows, .full_cols = cols, .rows = rows, .cols = cols};
    if (axis == 1) {
        mp_tp_shard_range(rows, plan->tp, tp_rank, &s.row0, &s.rows);
    } else if (axis == 2) {
        mp_tp_shard_range(cols, plan->tp, tp_rank, &s.col0, &s.cols);
    }
    s.replicated = s.rows == rows && s.cols == cols;
    *slice_p = s;
    return MP_OK;
}

const char *mp_tp_split_name(mp_tp_split_t split)
{
    switch (split) {
    case MP_TP_SPLIT_REPLICATE:
        return "replicate";
    case MP_TP_SPLIT_COLUMN:
        return "column";
    case MP_TP_SPLIT_ROW:
        return "row";
    case MP_TP_SPLIT_MLP:
        return "column-row";
    case MP_TP_SPLIT_ELEMENTWISE:
        return "elementwise";
    }
    return "unknown";
}

const char *mp_tp_comm_name(mp_tp_comm_t comm)
{
    switch (comm) {
    case MP_TP_COMM_NONE:
        return "none";
    case MP_TP_COMM_SLICE:
        return "slice";
    case MP_TP_COMM_ALLGATHER:
        return "allgather";
    case MP_TP_COMM_ALLREDUCE:
        return "allreduce";
    }
    return "unknown";
}

const char *mp_tp_layout_name(mp_tp_layout_t layout)
{
    return layout == MP_TP_LAYOUT_SHARDED ? "sharded" : "replicated";
}

size_t mp_tp_plan_format(const mp_tp_plan_t *plan, char *buf, size_t len)
{
    static const char *const kinds[] = {
        [MP_LAYER_LINEAR] = "linear",
        [MP_LAYER_GELU] = "gelu",
        [MP_LAYER_RELU] = "relu",
        [MP_LAYER_MLP_BLOCK] = "mlp_block",
    };
    size_t total = 0;
    if (len > 0) {
        buf[0] = '\0';
    }
    for (int l = 0; l < plan->nlayers; l++) {
        const mp_tp_layer_t *pl = &plan->layer[l];
        char line[256];
        int n = snprintf(line, sizeof(line),
                         "layer %d %s %lld->%lld: %s, in %s, out %s, fwd %s/%s, bwd %s/%s\n", l,
                         (unsigned)pl->kind <= MP_LAYER_MLP_BLOCK ? kinds[pl->kind] : "?",
                         (long long)pl->in_dim, (long long)pl->out_dim, mp_tp_split_name(pl->split),
                         mp_tp_layout_name(pl->in_layout), mp_tp_layout_name(pl->out_layout),
                         mp_tp_comm_name(pl->fwd_pre), mp_tp_comm_name(pl->fwd_post),
                         mp_tp_comm_name(pl->bwd_pre), mp_tp_comm_name(pl->bwd_post));
        size_t k = n > 0 ? (size_t)n : 0;
        if (total < len) {
            size_t room = len - total - 1;
            size_t c = k < room ? k : room;
            memcpy(buf + total, line, c);
            buf[total + c] = '\0';
        }
        total += k;
    }
    return total;
}
