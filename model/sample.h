/*
 * sample.h - text from a trained byte-level GPT (DESIGN.md "Interfaces":
 * `mpar-client sample`): its weights loaded from .npy files into a serial
 * model, then autoregressive generation, greedy or by temperature and
 * top-k with a seeded counter-based generator (so a seed reproduces a
 * sample).  Blocks (file I/O, compute) on the caller's thread: never a
 * libuv loop thread.
 */
#ifndef MP_MODEL_SAMPLE_H
#define MP_MODEL_SAMPLE_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "gpu/backend.h"
#include "model/spec.h"

typedef struct {
    int64_t tokens;     /* bytes to generate, >= 0 */
    double temperature; /* 0: greedy (argmax); > 0: softmax(logits / temperature) */
    int64_t top_k;      /* sample among the k most likely bytes; 0: all */
    uint64_t seed;      /* of the sampling stream (unused when greedy) */
} mp_sample_opts_t;

/* MP_OK when spec's model generates text: an embedding first, a byte text
 * data set (model.seq = block_size) and a head at least 256 wide; else
 * MP_ERR_SPEC with the reason. */
mp_status_t mp_sample_check_spec(const mp_spec_t *spec, mp_errbuf_t *err);

/*
 * The next byte from one position's logits [V] (only the first 256, the
 * byte vocabulary, are candidates): the first maximum at temperature 0,
 * otherwise a draw from softmax(logits / temperature) over the top_k
 * largest (ties with the k-th included), with the uniform
 * mp_rng_hash(seed, step); scratch holds 256 doubles.  Pure.
 */
int mp_sample_pick(const float *logits, int64_t V, const mp_sample_opts_t *o, int64_t step,
                   double *scratch);

/*
 * Generates o->tokens bytes after prompt (plen >= 1 bytes) from the weights
 * in weights_dir (<layer>.<param>.npy, as --save-weights writes them) on
 * backend be.  Each step feeds the last T = model.seq bytes (a shorter
 * context padded after its end: causal attention makes a position depend
 * only on those before it) and reads the logits at the last real position.
 * *out_p (mp_malloc'ed, NUL-terminated) receives the continuation only.
 */
mp_status_t mp_sample_generate(mp_backend_t *be, const mp_spec_t *spec, const char *weights_dir,
                               const unsigned char *prompt, size_t plen, const mp_sample_opts_t *o,
                               unsigned char **out_p, mp_errbuf_t *err);

#endif
