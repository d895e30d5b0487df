/*
 * sample.c - generation from a trained byte-level GPT: loads every
 * parameter from its .npy file (strictly: the shape of the job's model, in
 * the serial layout) into a one-slot serial model and extends the prompt
 * one byte at a time.  Blocks on the caller's thread.
 *
 * Legend: T = positions of the model (model.seq), V = head width.
 */
#include "model/sample.h"

#include <math.h>
#include <string.h>

#include "common/alloc.h"
#include "gpu/init.h"
#include "model/model.h"
#include "model/npy.h"

#define SAMPLE_BYTES 256

mp_status_t mp_sample_check_spec(const mp_spec_t *spec, mp_errbuf_t *err)
{
    int n = spec->model.nlayers;
    if (n < 1 || spec->model.layers[0].kind != MP_LAYER_EMBEDDING) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "model.layers[0]: sampling needs a text model whose first layer is "
                             "an embedding");
    }
    if (spec->data.kind != MP_DATA_TEXT && spec->data.kind != MP_DATA_KJV) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "data.dataset: sampling needs a byte text data set (text or kjv)");
    }
    if (spec->model.layers[n - 1].out_dim < SAMPLE_BYTES) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "model.layers[%d].out: %lld, but a byte model's head needs at least "
                             "256",
                             n - 1, (long long)spec->model.layers[n - 1].out_dim);
    }
    return MP_OK;
}

int mp_sample_pick(const float *logits, int64_t V, const mp_sample_opts_t *o, int64_t step,
                   double *scratch)
{
    int n = V < SAMPLE_BYTES ? (int)V : SAMPLE_BYTES;
    int best = 0;
    for (int i = 1; i < n; i++) {
        if (logits[i] > logits[best]) {
            best = i;
        }
    }
    if (o->temperature <= 0.0) {
        return best;
    }
    /* The k-th largest logit: candidates are those >= it (ties included, as
     * torch.topk followed by masking what is below the k-th value). */
    double floor_v = -INFINITY;
    if (o->top_k > 0 && o->top_k < n) {
        for (int i = 0; i < n; i++) {
            scratch[i] = logits[i];
        }
        /* Partial selection sort: k passes, fine for 256 candidates. */
        for (int64_t k = 0; k < o->top_k; k++) {
            int m = (int)k;
            for (int i = (int)k + 1; i < n; i++) {
                if (scratch[i] > scratch[m]) {
                    m = i;
                }
            }
            double t = scratch[k];
            scratch[k] = scratch[m];
            scratch[m] = t;
        }
        floor_v = scratch[o->top_k - 1];
    }
    double mx = logits[best], sum = 0.0;
    for (int i = 0; i < n; i++) {
        double p = (double)logits[i] >= floor_v ? exp(((double)logits[i] - mx) / o->temperature)
                                                : 0.0;
        scratch[i] = p;
        sum += p;
    }
    double u = (double)(mp_rng_hash(o->seed, 0x73616d706c65ULL, (uint64_t)step, 0) >> 11) *
               (1.0 / 9007199254740992.0) * sum;
    double acc = 0.0;
    int last = best;
    for (int i = 0; i < n; i++) {
        if (scratch[i] <= 0.0) {
            continue;
        }
        acc += scratch[i];
        last = i;
        if (u < acc) {
            return i;
        }
    }
    return last; /* u within rounding of sum */
}

static mp_status_t load_weights(mp_model_t *model, const mp_spec_t *spec, const char *dir,
                                mp_errbuf_t *err)
{
    for (int l = 0; l < spec->model.nlayers; l++) {
        const mp_layer_spec_t *ls = &spec->model.layers[l];
        for (int p = 0; p < mp_layer_nparams(ls); p++) {
            int64_t rows, cols;
            mp_layer_param_shape(ls, p, &rows, &cols);
            float *host = mp_malloc((size_t)(rows * cols) * sizeof(float));
            if (host == NULL) {
                return mp_errbuf_set(err, MP_ERR_NOMEM, "out of memory loading the weights");
            }
            mp_status_t st = mp_npy_load_param(dir, spec, l, p, host, err);
            if (st == MP_OK) {
                st = mp_model_param_upload(model, l, p, host);
                if (st != MP_OK) {
                    mp_errbuf_set(err, st, "cannot load layer %d's %s: %s", l,
                                  mp_layer_param_name(ls, p), mp_strerror(st));
                }
            }
            mp_free(host);
            if (st != MP_OK) {
                return st;
            }
        }
    }
    return MP_OK;
}

mp_status_t mp_sample_generate(mp_backend_t *be, const mp_spec_t *spec, const char *weights_dir,
                               const unsigned char *prompt, size_t plen, const mp_sample_opts_t *o,
                               unsigned char **out_p, mp_errbuf_t *err)
{
    MP_TRY(mp_sample_check_spec(spec, err));
    if (plen < 1 || o->tokens < 0) {
        return mp_errbuf_set(err, MP_ERR_INVAL, "sampling needs a prompt of at least one byte");
    }
    mp_model_t *model = NULL;
    mp_status_t st = mp_model_create(be, spec, 0, spec->model.nlayers, 1, 1, &model);
    if (st != MP_OK) {
        return mp_errbuf_set(err, st, "cannot build the model on %s: %s", be->ops->name,
                             mp_strerror(st));
    }
    int64_t T = spec->model.seq;
    int64_t V = spec->model.layers[spec->model.nlayers - 1].out_dim;
    size_t total = plen + (size_t)o->tokens;
    unsigned char *text = mp_malloc(total + 1);
    float *ids = mp_calloc((size_t)T, sizeof(float));
    float *logits = mp_malloc((size_t)(T * V) * sizeof(float));
    double scratch[SAMPLE_BYTES];
    if (text == NULL || ids == NULL || logits == NULL) {
        st = mp_errbuf_set(err, MP_ERR_NOMEM, "out of memory for sampling");
        goto out;
    }
    st = load_weights(model, spec, weights_dir, err);
    memcpy(text, prompt, plen);
    size_t len = plen;
    for (int64_t step = 0; st == MP_OK && step < o->tokens; step++) {
        size_t n = len < (size_t)T ? len : (size_t)T;
        const unsigned char *ctx = text + len - n;
        for (int64_t t = 0; t < T; t++) {
            ids[t] = t < (int64_t)n ? (float)ctx[t] : 0.0f;
        }
        float *out;
        st = be->ops->upload(be, mp_model_input(model, 0), ids, (size_t)T * sizeof(float));
        if (st == MP_OK) {
            st = mp_model_forward(model, 0, 1, &out);
        }
        if (st == MP_OK) {
            /* Only the row of the last real position is read. */
            st = be->ops->download(be, logits, out + (int64_t)(n - 1) * V,
                                   (size_t)V * sizeof(float));
        }
        if (st != MP_OK) {
            mp_errbuf_set(err, st, "the model's forward failed: %s", mp_strerror(st));
            break;
        }
        text[len++] = (unsigned char)mp_sample_pick(logits, V, o, step, scratch);
    }
    if (st == MP_OK) {
        size_t cont = len - plen;
        memmove(text, text + plen, cont);
        text[cont] = '\0';
        *out_p = text;
        text = NULL;
    }
out:
    mp_free(logits);
    mp_free(ids);
    mp_free(text);
    mp_model_destroy(model);
    return st;
}
