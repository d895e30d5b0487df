/*
 * tpplan.c - builds the tensor-parallel plan of a model (tpplan.h explains
 * the math) and answers which parameter block each TP rank holds.  Owns
 * nothing beyond its outputs; pure, any thread.
 */
#include "parallel/tpplan.h"

#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "model/layer.h"
#include "parallel/internal.h"

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
    plan->vocab_parallel_loss = false;
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
        const mp_layer_ops_t *ops = mp_layer_ops(layer->kind);
        if (ops == NULL) {
            mp_free(plan);
            return mp_errbuf_set(err, MP_ERR_SPEC, "model.layers[%d].type: unknown kind %d", l,
                                 (int)layer->kind);
        }
        if (!ops->takes_tp && layer->tp != MP_TP_AUTO) {
            mp_free(plan);
            return mp_errbuf_set(err, MP_ERR_SPEC,
                                 "model.layers[%d].tp: only a linear layer takes \"tp\"", l);
        }
        pl.layer = *layer;
        pl.layer.in_dim = in[l];
        pl.layer.out_dim = out[l];
        mp_layer_plan_ctx_t ctx = {.spec = spec, .part = part, .index = l, .tp = tp};
        st = ops->plan(&ctx, &pl, err);
        if (st != MP_OK) {
            mp_free(plan);
            return st;
        }
        if (pl.out_layout == MP_TP_LAYOUT_SHARDED && l == L - 1) {
            plan->vocab_parallel_loss = true;
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
    const mp_layer_ops_t *ops = mp_layer_ops(pl->kind);
    if (ops == NULL || ops->param_slice == NULL) {
        return MP_ERR_INVAL;
    }
    ops->param_slice(pl, &pl->layer, param, plan->tp, tp_rank, slice_p);
    return MP_OK;
}

void mp_tp_slice_scatter(const mp_tp_slice_t *s, const float *blk, float *full)
{
    int parts = s->parts > 1 ? s->parts : 1;
    int64_t w = s->cols / parts;
    for (int64_t r = 0; r < s->rows; r++) {
        for (int k = 0; k < parts; k++) {
            memcpy(full + (s->row0 + r) * s->full_cols + mp_tp_slice_full_col(s, k * w),
                   blk + r * s->cols + k * w, (size_t)w * sizeof(float));
        }
    }
}

void mp_tp_slice_extract(const mp_tp_slice_t *s, const float *full, float *blk)
{
    int parts = s->parts > 1 ? s->parts : 1;
    int64_t w = s->cols / parts;
    for (int64_t r = 0; r < s->rows; r++) {
        for (int k = 0; k < parts; k++) {
            memcpy(blk + r * s->cols + k * w,
                   full + (s->row0 + r) * s->full_cols + mp_tp_slice_full_col(s, k * w),
                   (size_t)w * sizeof(float));
        }
    }
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
    case MP_TP_SPLIT_VOCAB:
        return "vocab";
    case MP_TP_SPLIT_HEADS:
        return "heads";
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
    size_t total = 0;
    if (len > 0) {
        buf[0] = '\0';
    }
    for (int l = 0; l < plan->nlayers; l++) {
        const mp_tp_layer_t *pl = &plan->layer[l];
        char line[256];
        int n = snprintf(line, sizeof(line),
                         "layer %d %s %lld->%lld: %s, in %s, out %s, fwd %s/%s, bwd %s/%s\n", l,
                         mp_layer_ops(pl->kind) != NULL ? mp_layer_ops(pl->kind)->name : "?",
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
