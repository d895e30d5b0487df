/*
 * partition.c - stage partitioning (uniform, balanced by FLOPs, explicit)
 * and the layer-width walk shared by parallel/.  Owns nothing beyond its
 * outputs; pure, any thread.
 */
#include "parallel/partition.h"

#include <stdio.h>

#include "common/alloc.h"
#include "model/layer.h"
#include "parallel/internal.h"

mp_status_t mp_par_layer_dims(const mp_spec_t *spec, int64_t *in_p, int64_t *out_p,
                              mp_errbuf_t *err)
{
    if (spec->model.input < 1) {
        return mp_errbuf_set(err, MP_ERR_SPEC, "model.input: %lld is not a positive width",
                             (long long)spec->model.input);
    }
    if (spec->model.nlayers < 1 || spec->model.nlayers > MP_SPEC_MAX_LAYERS) {
        return mp_errbuf_set(err, MP_ERR_SPEC, "model.layers: %d layers, expected 1 to %d",
                             spec->model.nlayers, MP_SPEC_MAX_LAYERS);
    }
    int64_t width = spec->model.input;
    for (int l = 0; l < spec->model.nlayers; l++) {
        const mp_layer_spec_t *layer = &spec->model.layers[l];
        int64_t out = width;
        const mp_layer_ops_t *ops = mp_layer_ops(layer->kind);
        if (ops == NULL) {
            return mp_errbuf_set(err, MP_ERR_SPEC, "model.layers[%d].type: unknown kind %d", l,
                                 (int)layer->kind);
        }
        char from[64];
        if (l == 0) {
            snprintf(from, sizeof(from), "model.input");
        } else {
            snprintf(from, sizeof(from), "model.layers[%d]", l - 1);
        }
        mp_status_t st = ops->check(layer, l, width, from, &out, err);
        if (st != MP_OK) {
            return st;
        }
        in_p[l] = width;
        out_p[l] = out;
        width = out;
    }
    return MP_OK;
}

double mp_part_layer_flops(const mp_layer_spec_t *layer, int64_t in, int64_t out, int64_t seq)
{
    const mp_layer_ops_t *ops = mp_layer_ops(layer->kind);
    return ops != NULL ? ops->flops(layer, in, out, seq > 0 ? seq : 1) : 0.0;
}

static mp_status_t check_pp(int nlayers, int pp, mp_errbuf_t *err)
{
    if (pp < 1 || pp > MP_SPEC_MAX_STAGES) {
        return mp_errbuf_set(err, MP_ERR_SPEC, "parallel.pp: %d, expected 1 to %d stages", pp,
                             MP_SPEC_MAX_STAGES);
    }
    if (pp > nlayers) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "parallel.pp: %d stages need at least %d layers; model.layers has %d",
                             pp, pp, nlayers);
    }
    return MP_OK;
}

mp_status_t mp_part_uniform(int nlayers, int pp, mp_part_t *part_p, mp_errbuf_t *err)
{
    mp_status_t st = check_pp(nlayers, pp, err);
    if (st != MP_OK) {
        return st;
    }
    /* Boundary s is round(s * L / p), halves up; consecutive boundaries differ
     * by at least one because L / p >= 1. */
    mp_part_t part = {.nstages = pp};
    for (int s = 0; s < pp; s++) {
        int64_t b0 = (2 * (int64_t)s * nlayers + pp) / (2 * (int64_t)pp);
        int64_t b1 = (2 * (int64_t)(s + 1) * nlayers + pp) / (2 * (int64_t)pp);
        part.first[s] = (int)b0;
        part.count[s] = (int)(b1 - b0);
    }
    *part_p = part;
    return MP_OK;
}

mp_status_t mp_part_balanced(const double *cost, int nlayers, int pp, mp_part_t *part_p,
                             mp_errbuf_t *err)
{
    mp_status_t st = check_pp(nlayers, pp, err);
    if (st != MP_OK) {
        return st;
    }
    for (int l = 0; l < nlayers; l++) {
        if (!(cost[l] >= 0.0)) {
            return mp_errbuf_set(err, MP_ERR_INVAL, "layer %d: cost %g is not a cost", l, cost[l]);
        }
    }
    int L = nlayers;
    double *prefix = mp_malloc(sizeof(double) * (size_t)(L + 1));
    double *best = mp_malloc(sizeof(double) * (size_t)(L + 1) * 2);
    if (prefix == NULL || best == NULL) {
        mp_free(prefix);
        mp_free(best);
        return mp_errbuf_set(err, MP_ERR_NOMEM, "stage partitioning: out of memory");
    }
    prefix[0] = 0.0;
    for (int l = 0; l < L; l++) {
        prefix[l + 1] = prefix[l] + cost[l];
    }
    /* best[k][j]: the smallest possible largest stage cost when the first j
     * layers form k stages (two rolling rows). */
    double *prev = best, *cur = best + (L + 1);
    for (int j = 0; j <= L; j++) {
        prev[j] = prefix[j];
    }
    for (int k = 2; k <= pp; k++) {
        for (int j = 0; j <= L; j++) {
            cur[j] = -1.0;
        }
        for (int j = k; j <= L; j++) {
            double b = -1.0;
            for (int i = k - 1; i <= j - 1; i++) {
                double seg = prefix[j] - prefix[i];
                double v = prev[i] > seg ? prev[i] : seg;
                if (b < 0.0 || v < b) {
                    b = v;
                }
            }
            cur[j] = b;
        }
        double *t = prev;
        prev = cur;
        cur = t;
    }
    double limit = prev[L];
    /* Fill from the last stage back: each takes as many layers as fit under
     * the optimal limit while leaving one for every earlier stage, so stage 0
     * (which holds the most in-flight activations under 1F1B) gets the least.
     * Every single layer fits (limit >= any one cost), so this never fails. */
    mp_part_t part = {.nstages = pp};
    int end = L;
    for (int s = pp - 1; s >= 0; s--) {
        int start = end - 1;
        while (start - 1 >= s && prefix[end] - prefix[start - 1] <= limit) {
            start--;
        }
        if (s == 0) {
            start = 0;
        }
        part.first[s] = start;
        part.count[s] = end - start;
        end = start;
    }
    mp_free(best);
    mp_free(prefix);
    *part_p = part;
    return MP_OK;
}

mp_status_t mp_part_explicit(const int *counts, int nstages, int nlayers, int pp, mp_part_t *part_p,
                             mp_errbuf_t *err)
{
    mp_status_t st = check_pp(nlayers, pp, err);
    if (st != MP_OK) {
        return st;
    }
    if (nstages != pp) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "parallel.stages: %d entries, expected one per stage (parallel.pp = "
                             "%d)",
                             nstages, pp);
    }
    mp_part_t part = {.nstages = pp};
    int first = 0;
    for (int s = 0; s < pp; s++) {
        if (counts[s] < 1) {
            return mp_errbuf_set(err, MP_ERR_SPEC,
                                 "parallel.stages[%d]: %d layers, expected at least 1", s,
                                 counts[s]);
        }
        if (counts[s] > nlayers - first) {
            return mp_errbuf_set(err, MP_ERR_SPEC,
                                 "parallel.stages: the stages hold more than the %d layers of "
                                 "model.layers",
                                 nlayers);
        }
        part.first[s] = first;
        part.count[s] = counts[s];
        first += counts[s];
    }
    if (first != nlayers) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "parallel.stages: the stages hold %d layers; model.layers has %d",
                             first, nlayers);
    }
    *part_p = part;
    return MP_OK;
}

int mp_part_nparts(const mp_spec_t *spec)
{
    int v = spec->parallel.virtual_stages > 1 ? spec->parallel.virtual_stages : 1;
    return spec->parallel.pp * v;
}

mp_status_t mp_part_build(const mp_spec_t *spec, mp_part_t *part_p, mp_errbuf_t *err)
{
    int L = spec->model.nlayers, parts = mp_part_nparts(spec);
    int64_t in[MP_SPEC_MAX_LAYERS], out[MP_SPEC_MAX_LAYERS];
    mp_status_t st = mp_par_layer_dims(spec, in, out, err);
    if (st != MP_OK) {
        return st;
    }
    switch (spec->parallel.partition) {
    case MP_PART_UNIFORM:
        return mp_part_uniform(L, parts, part_p, err);
    case MP_PART_BALANCED:
    case MP_PART_MEASURED: {
        /* "measured" costs are applied by the engine (engine/calib.h), which
         * rewrites the spec with explicit stages; unmeasured, FLOPs balance. */
        double cost[MP_SPEC_MAX_LAYERS];
        for (int l = 0; l < L; l++) {
            cost[l] = mp_part_layer_flops(&spec->model.layers[l], in[l], out[l], spec->model.seq);
        }
        return mp_part_balanced(cost, L, parts, part_p, err);
    }
    case MP_PART_EXPLICIT:
        if (spec->parallel.nstages_explicit < 0 ||
            spec->parallel.nstages_explicit > MP_SPEC_MAX_STAGES) {
            return mp_errbuf_set(err, MP_ERR_SPEC, "parallel.stages: %d entries, expected 1 to %d",
                                 spec->parallel.nstages_explicit, MP_SPEC_MAX_STAGES);
        }
        return mp_part_explicit(spec->parallel.stage_layers, spec->parallel.nstages_explicit, L,
                                parts, part_p, err);
    }
    return mp_errbuf_set(err, MP_ERR_SPEC, "parallel.partition: unknown rule %d",
                         (int)spec->parallel.partition);
}

mp_status_t mp_part_flop_costs(const mp_spec_t *spec, double *cost_p, mp_errbuf_t *err)
{
    int64_t in[MP_SPEC_MAX_LAYERS], out[MP_SPEC_MAX_LAYERS];
    mp_status_t st = mp_par_layer_dims(spec, in, out, err);
    for (int l = 0; st == MP_OK && l < spec->model.nlayers; l++) {
        cost_p[l] = mp_part_layer_flops(&spec->model.layers[l], in[l], out[l], spec->model.seq);
    }
    return st;
}

int mp_part_stage_of(const mp_part_t *part, int layer)
{
    for (int s = 0; s < part->nstages; s++) {
        if (layer >= part->first[s] && layer < part->first[s] + part->count[s]) {
            return s;
        }
    }
    return -1;
}

bool mp_part_stage_runs(const mp_part_t *part, int pp, int stage, int layer)
{
    int u = mp_part_stage_of(part, layer);
    return u >= 0 && pp > 0 && u % pp == stage;
}

double mp_part_stage_flops(const mp_spec_t *spec, const mp_part_t *part, int stage)
{
    int64_t in[MP_SPEC_MAX_LAYERS], out[MP_SPEC_MAX_LAYERS];
    if (stage < 0 || stage >= part->nstages || mp_par_layer_dims(spec, in, out, NULL) != MP_OK) {
        return 0.0;
    }
    double sum = 0.0;
    for (int l = part->first[stage]; l < part->first[stage] + part->count[stage]; l++) {
        if (l >= 0 && l < spec->model.nlayers) {
            sum += mp_part_layer_flops(&spec->model.layers[l], in[l], out[l], spec->model.seq);
        }
    }
    return sum;
}
