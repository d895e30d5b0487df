/*
 * init.h - counter-based parameter initialization: element value =
 * f(seed, layer, param, flat index into the full serial tensor), so a
 * tensor-parallel shard computes exactly its slice of the weights a single
 * device would have.  Bounds follow PyTorch's nn.Linear: weight and bias
 * both U(-1/sqrt(fan_in), 1/sqrt(fan_in)).  Pure, host-side, any thread.
 */
#ifndef MP_GPU_INIT_H
#define MP_GPU_INIT_H

#include <stdint.h>

/* A uniform float in [0, 1) from the counter (seed, layer, param, index). */
float mp_init_u01(uint64_t seed, uint32_t layer, uint32_t param, uint64_t index);

/* Fills dst[rows x cols] (row-major, ld = cols) with the block
 * [row0, row0+rows) x [col0, col0+cols) of a full tensor [full_rows, full_cols]
 * whose elements are U(-bound, bound).  A 1-D tensor is full_rows = 1. */
void mp_init_uniform_block(float *dst, uint64_t seed, uint32_t layer, uint32_t param,
                           int64_t full_cols, int64_t row0, int64_t rows, int64_t col0,
                           int64_t cols, float bound);

/* A 64-bit mix of the counter, for other seeded streams (shuffles, synthetic data). */
uint64_t mp_rng_hash(uint64_t seed, uint64_t a, uint64_t b, uint64_t c);

#endif
