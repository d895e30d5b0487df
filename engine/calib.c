/*
 * calib.c - per-layer cost calibration and the pipeline cut (calib.h);
 * identical layers share their fastest measurement.
 * Owns a CPU backend and one single-layer model at a time while it
 * measures; runs on the caller's (computing) thread.
 *
 * Legend: R = rows of a micro-batch, I = a layer's input width.
 */
#include "engine/calib.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "engine/internal.h"
#include "gpu/backend.h"
#include "model/model.h"
#include "parallel/sched.h"

#define CALIB_REPS 3 /* timed runs per layer after one warm-up; the fastest counts */

/* Forward and backward seconds of layer l alone on be, at R rows. */
static mp_status_t time_layer(mp_backend_t *be, const mp_spec_t *spec, int l, int64_t R,
                              double *fwd_p, double *bwd_p)
{
    mp_model_t *model;
    mp_status_t st = mp_model_create(be, spec, l, 1, 1, R, &model);
    if (st != MP_OK) {
        return st;
    }
    size_t in_bytes = (size_t)(R * mp_model_in_dim(model)) * sizeof(float);
    float *zero = mp_calloc(1, in_bytes);
    if (zero == NULL) {
        mp_model_destroy(model);
        return MP_ERR_NOMEM;
    }
    /* Zeros are a valid input for every kind (token id 0 for an embedding). */
    st = be->ops->upload(be, mp_model_input(model, 0), zero, in_bytes);
    double fwd = -1.0, bwd = -1.0;
    for (int rep = 0; rep <= CALIB_REPS && st == MP_OK; rep++) {
        float *out, *dx;
        uint64_t t0 = mp_engine_now_ns();
        st = mp_model_forward(model, 0, R, &out);
        uint64_t t1 = mp_engine_now_ns();
        if (st == MP_OK) {
            st = mp_model_backward(model, 0, R, l > 0 ? &dx : NULL);
        }
        uint64_t t2 = mp_engine_now_ns();
        if (st == MP_OK && rep > 0) {
            double f = (double)(t1 - t0) * 1e-9, b = (double)(t2 - t1) * 1e-9;
            fwd = fwd < 0.0 || f < fwd ? f : fwd;
            bwd = bwd < 0.0 || b < bwd ? b : bwd;
        }
    }
    mp_free(zero);
    mp_model_destroy(model);
    if (st == MP_OK) {
        *fwd_p = fwd;
        *bwd_p = bwd;
    }
    return st;
}

static bool same_layer(const mp_layer_spec_t *a, const mp_layer_spec_t *b)
{
    return a->kind == b->kind && a->out == b->out && a->hidden == b->hidden && a->ffn == b->ffn &&
           a->tp == b->tp && a->vocab == b->vocab && a->dim == b->dim &&
           a->max_seq == b->max_seq && a->heads == b->heads && a->in_dim == b->in_dim &&
           a->out_dim == b->out_dim;
}

/*
 * Identical layers (the repeated blocks of most models) cost the same: each
 * gets the fastest measurement of its kind, so that a time stretched by
 * another process on a shared machine does not move the cut.
 */
static void share_identical(const mp_spec_t *spec, mp_engine_cut_t *cut)
{
    int L = spec->model.nlayers;
    for (int l = 0; l < L; l++) {
        for (int j = 0; j < L; j++) {
            if (j != l && same_layer(&spec->model.layers[l], &spec->model.layers[j])) {
                cut->fwd[l] = cut->fwd[j] < cut->fwd[l] ? cut->fwd[j] : cut->fwd[l];
                cut->bwd[l] = cut->bwd[j] < cut->bwd[l] ? cut->bwd[j] : cut->bwd[l];
            }
        }
    }
}

static mp_status_t calibrate(const mp_spec_t *spec, int threads, mp_engine_cut_t *cut)
{
    int64_t denom = (int64_t)spec->parallel.dp * spec->parallel.micro_batches;
    int64_t R = denom > 0 ? spec->train.batch_size / denom : 0;
    if (R < 1) {
        return MP_ERR_INVAL;
    }
    mp_backend_t *be;
    mp_status_t st = mp_backend_cpu_create(threads > 0 ? threads : 1, &be);
    if (st != MP_OK) {
        return st;
    }
    for (int l = 0; l < spec->model.nlayers && st == MP_OK; l++) {
        st = time_layer(be, spec, l, R, &cut->fwd[l], &cut->bwd[l]);
        if (st != MP_OK) {
            mp_info("calibration: layer %d (%s): %s", l,
                    mp_layer_kind_name(spec->model.layers[l].kind), mp_strerror(st));
        }
    }
    mp_backend_destroy(be);
    if (st == MP_OK) {
        share_identical(spec, cut);
    }
    return st;
}

/* The FLOP model: backward about twice the forward. */
static mp_status_t flop_costs(const mp_spec_t *spec, mp_engine_cut_t *cut, mp_errbuf_t *err)
{
    mp_status_t st = mp_part_flop_costs(spec, cut->fwd, err);
    for (int l = 0; st == MP_OK && l < spec->model.nlayers; l++) {
        cut->bwd[l] = 2.0 * cut->fwd[l];
    }
    return st;
}

mp_status_t mp_engine_cut_plan(const mp_spec_t *spec, int threads, bool cpu, mp_engine_cut_t *cut_p,
                               mp_errbuf_t *err)
{
    mp_engine_cut_t cut;
    memset(&cut, 0, sizeof(cut));
    int L = spec->model.nlayers, pp = spec->parallel.pp, parts = mp_part_nparts(spec);
    int v = parts / pp;
    mp_status_t st = MP_OK;
    cut.rule = spec->parallel.partition;
    if (spec->parallel.partition == MP_PART_MEASURED && pp > 1 && cpu) {
        cut.measured = calibrate(spec, threads, &cut) == MP_OK;
        if (!cut.measured) {
            mp_info("calibration failed: the pipeline is balanced by FLOPs instead");
        }
    }
    if (!cut.measured) {
        st = flop_costs(spec, &cut, err);
        if (st != MP_OK) {
            return st;
        }
    }
    if (cut.measured) {
        double cost[MP_SPEC_MAX_LAYERS];
        for (int l = 0; l < L; l++) {
            cost[l] = cut.fwd[l] + cut.bwd[l];
        }
        st = mp_part_balanced(cost, L, parts, &cut.part, err);
    } else {
        st = mp_part_build(spec, &cut.part, err);
    }
    if (st != MP_OK) {
        return st;
    }
    for (int s = 0; s < parts; s++) {
        for (int l = cut.part.first[s]; l < cut.part.first[s] + cut.part.count[s]; l++) {
            cut.stage_fwd[s] += cut.fwd[l];
            cut.stage_bwd[s] += cut.bwd[l];
        }
    }
    /* The prediction is only a report: a schedule the simulator refuses
     * fails the job later, with its own message. */
    cut.bubble = -1.0;
    mp_sched_t *sched = NULL;
    mp_errbuf_t serr;
    if (mp_sched_build_for(spec, pp, v, &sched, &serr) == MP_OK) {
        mp_sched_cost_t c = {.stage_fwd = cut.stage_fwd, .stage_bwd = cut.stage_bwd};
        mp_sched_report_t rep;
        if (mp_sched_simulate(sched, &c, &rep, &serr) == MP_OK) {
            cut.bubble = rep.bubble;
        }
    }
    mp_sched_free(sched);
    *cut_p = cut;
    return MP_OK;
}

void mp_engine_cut_apply(mp_spec_t *spec, const mp_engine_cut_t *cut)
{
    spec->parallel.partition = MP_PART_EXPLICIT;
    spec->parallel.nstages_explicit = cut->part.nstages;
    for (int s = 0; s < cut->part.nstages; s++) {
        spec->parallel.stage_layers[s] = cut->part.count[s];
    }
}

size_t mp_engine_cut_describe(const mp_spec_t *spec, const mp_engine_cut_t *cut, char *buf,
                              size_t len)
{
    char text[600];
    size_t off = 0;
    off += (size_t)snprintf(text, sizeof(text), "%s: layers",
                            cut->part.nstages > spec->parallel.pp
                                ? "chunks (chunk c of stage s is entry c x pp + s)"
                                : "stages");
    for (int s = 0; s < cut->part.nstages && off < sizeof(text); s++) {
        int a = cut->part.first[s], b = a + cut->part.count[s] - 1;
        off += (size_t)(a == b ? snprintf(text + off, sizeof(text) - off, "%s %d", s ? " |" : "", a)
                               : snprintf(text + off, sizeof(text) - off, "%s %d-%d", s ? " |" : "",
                                          a, b));
    }
    if (off < sizeof(text) && cut->bubble >= 0.0) {
        off += (size_t)snprintf(text + off, sizeof(text) - off, "; predicted bubble %.3f (%s, ",
                                cut->bubble, mp_sched_kind_name(spec->parallel.schedule));
    } else if (off < sizeof(text)) {
        off += (size_t)snprintf(text + off, sizeof(text) - off, " (");
    }
    if (off < sizeof(text) && cut->measured) {
        /* A stage's cost is that of all its chunks (part c * pp + s). */
        double slowest = 0.0, total = 0.0;
        int pp = spec->parallel.pp;
        for (int s = 0; s < pp; s++) {
            double c = 0.0;
            for (int u = s; u < cut->part.nstages; u += pp) {
                c += cut->stage_fwd[u] + cut->stage_bwd[u];
            }
            slowest = c > slowest ? c : slowest;
            total += c;
        }
        snprintf(text + off, sizeof(text) - off,
                 "measured per-layer costs; the slowest stage %.2f ms of %.2f ms per micro-batch)",
                 slowest * 1e3, total * 1e3);
    } else if (off < sizeof(text)) {
        snprintf(text + off, sizeof(text) - off, "%s)",
                 cut->rule == MP_PART_EXPLICIT  ? "explicit stages, FLOP model"
                 : cut->rule == MP_PART_UNIFORM ? "uniform stages, FLOP model"
                 : cut->rule == MP_PART_MEASURED
                     ? "balanced by FLOPs: no calibration on these devices"
                     : "balanced by FLOPs");
    }
    return (size_t)snprintf(buf, len, "%s", text);
}

size_t mp_engine_cut_stage_layers(const mp_spec_t *spec, const mp_engine_cut_t *cut, int stage,
                                  char *buf, size_t len)
{
    size_t off = 0;
    int pp = spec->parallel.pp > 0 ? spec->parallel.pp : 1;
    if (len > 0) {
        buf[0] = '\0';
    }
    for (int u = stage; u < cut->part.nstages; u += pp) {
        int a = cut->part.first[u], b = a + cut->part.count[u] - 1;
        const char *sep = off > 0 ? "," : "";
        int w = a == b ? snprintf(buf + off, off < len ? len - off : 0, "%s%d", sep, a)
                       : snprintf(buf + off, off < len ? len - off : 0, "%s%d-%d", sep, a, b);
        off += w > 0 ? (size_t)w : 0;
    }
    return off;
}
