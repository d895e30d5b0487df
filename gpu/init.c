/*
 * init.c - counter-based RNG (a splitmix64-style finalizer over the counter)
 * and nn.Linear-style uniform initialization by block.  Pure; any thread.
 */
#include "init.h"

static uint64_t mix64(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint64_t mp_rng_hash(uint64_t seed, uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t h = mix64(seed ^ 0x6D7061722D726E67ull);
    h = mix64(h ^ a);
    h = mix64(h ^ (b * 0x100000001B3ull));
    return mix64(h ^ c);
}

float mp_init_u01(uint64_t seed, uint32_t layer, uint32_t param, uint64_t index)
{
    uint64_t h = mp_rng_hash(seed, layer, param, index);
    /* 24 high bits: exactly representable in a float, uniform in [0, 1). */
    return (float)(h >> 40) * (1.0f / 16777216.0f);
}

void mp_init_uniform_block(float *dst, uint64_t seed, uint32_t layer, uint32_t param,
                           int64_t full_cols, int64_t row0, int64_t rows, int64_t col0,
                           int64_t cols, float bound)
{
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < cols; c++) {
            uint64_t idx = (uint64_t)((row0 + r) * full_cols + (col0 + c));
            float u = mp_init_u01(seed, layer, param, idx);
            dst[r * cols + c] = (2.0f * u - 1.0f) * bound;
        }
    }
}
