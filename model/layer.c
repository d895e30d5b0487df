/*
 * layer.c - the registry of layer kinds (one line per kind; the kinds live
 * in model/layers/) and the services their compute uses: the TP group's
 * collectives through the model's hook table, column copies, scratch.
 * The registry is pure; the services run on the model's thread.
 */
#include "model/layer.h"

#include <string.h>

#include "model/layer_env.h"

/* Indexed by mp_layer_kind_t: adding a kind is its file plus one line here. */
static const mp_layer_ops_t *const registry[] = {
    [MP_LAYER_LINEAR] = &mp_layer_linear,
    [MP_LAYER_GELU] = &mp_layer_gelu,
    [MP_LAYER_RELU] = &mp_layer_relu,
    [MP_LAYER_MLP_BLOCK] = &mp_layer_mlp_block,
    [MP_LAYER_EMBEDDING] = &mp_layer_embedding,
    [MP_LAYER_LAYERNORM] = &mp_layer_layernorm,
    [MP_LAYER_TRANSFORMER_BLOCK] = &mp_layer_transformer_block,
};
#define NKINDS ((int)(sizeof(registry) / sizeof(registry[0])))

const mp_layer_ops_t *mp_layer_ops(mp_layer_kind_t kind)
{
    return (int)kind >= 0 && (int)kind < NKINDS ? registry[kind] : NULL;
}

const mp_layer_ops_t *mp_layer_ops_by_name(const char *name)
{
    for (int k = 0; k < NKINDS; k++) {
        if (registry[k] != NULL && strcmp(registry[k]->name, name) == 0) {
            return registry[k];
        }
    }
    return NULL;
}

int mp_layer_kind_names(const char *const **names_p)
{
    static const char *names[sizeof(registry) / sizeof(registry[0])];
    for (int k = 0; k < NKINDS; k++) {
        names[k] = registry[k]->name;
    }
    *names_p = names;
    return NKINDS;
}

/* ---- services ---------------------------------------------------------- */

mp_status_t mp_layer_allreduce(mp_layer_t *L, float *buf, int64_t n)
{
    mp_layer_env_t *e = L->env;
    if (L->tp == 1) {
        return MP_OK;
    }
    mp_backend_t *be = L->be;
    e->coll_bytes += n * (int64_t)sizeof(float);
    if (be->kind == MP_BACKEND_CPU) {
        return e->coll.allreduce_sum(e->coll.ctx, buf, n);
    }
    size_t bytes = (size_t)n * sizeof(float);
    MP_TRY(be->ops->download(be, e->host_a, buf, bytes));
    MP_TRY(e->coll.allreduce_sum(e->coll.ctx, e->host_a, n));
    return be->ops->upload(be, buf, e->host_a, bytes);
}

mp_status_t mp_layer_allgather_cols(mp_layer_t *L, const float *in, float *out, int64_t R,
                                    int64_t c)
{
    mp_layer_env_t *e = L->env;
    mp_backend_t *be = L->be;
    const float *hin = in;
    e->coll_bytes += R * c * (int64_t)sizeof(float);
    if (be->kind != MP_BACKEND_CPU) {
        MP_TRY(be->ops->download(be, e->host_a, in, (size_t)(R * c) * sizeof(float)));
        hin = e->host_a;
    }
    MP_TRY(e->coll.allgather(e->coll.ctx, hin, e->host_b, R * c));
    /* The transport's rank-major blocks [tp][R x c], interleaved row by row. */
    int64_t n = c * L->tp;
    for (int t = 0; t < L->tp; t++) {
        for (int64_t r = 0; r < R; r++) {
            MP_TRY(be->ops->upload(be, out + r * n + t * c, e->host_b + (t * R + r) * c,
                                   (size_t)c * sizeof(float)));
        }
    }
    return MP_OK;
}

mp_status_t mp_layer_copy_cols(mp_layer_t *L, float *dst, const float *src, int64_t R, int64_t n,
                               int64_t col0, int64_t cols)
{
    for (int64_t r = 0; r < R; r++) {
        MP_TRY(L->be->ops->copy(L->be, dst + r * cols, src + r * n + col0,
                                (size_t)cols * sizeof(float)));
    }
    return MP_OK;
}

float *mp_layer_scratch(mp_layer_t *L)
{
    return L->env->scratch;
}

/* dst [n * R, cols] = the n blocks src[j] [R, cols] one after another. */
static mp_status_t gather_rows(mp_layer_t *L, float *dst, const float *const *src, int n,
                               int64_t R, int64_t cols)
{
    size_t bytes = (size_t)(R * cols) * sizeof(float);
    for (int j = 0; j < n; j++) {
        MP_TRY(L->be->ops->copy(L->be, dst + (int64_t)j * R * cols, src[j], bytes));
    }
    return MP_OK;
}

mp_status_t mp_layer_wgrad_n(mp_layer_t *L, int n, const float *const *x,
                             const float *const *dz, int64_t R, int64_t k, int64_t o, float *gw,
                             float *gb)
{
    mp_backend_t *be = L->be;
    int64_t nR = (int64_t)n * R;
    mp_layer_env_t *env = L->env;
    if (n == 1 || env->fuse == NULL || nR * (k + o) > env->fuse_elems) {
        for (int j = 0; j < n; j++) {
            MP_TRY(be->ops->linear_bwd(be, NULL, gw, gb, dz[j], x[j], NULL, R, k, o));
        }
        return MP_OK;
    }
    float *xs = env->fuse, *dzs = env->fuse + nR * k; /* [nR, k], [nR, o] */
    MP_TRY(gather_rows(L, xs, x, n, R, k));
    MP_TRY(gather_rows(L, dzs, dz, n, R, o));
    return be->ops->linear_bwd(be, NULL, gw, gb, dzs, xs, NULL, nR, k, o);
}
