/*
 * cuda_kernels.cu - the CUDA backend's own kernels (everything that is not
 * a GEMM): GeLU, ReLU, axpy, bias add, bias-gradient column sums, softmax
 * cross-entropy, SGD and AdamW, and the sequence layers (embedding,
 * positions, LayerNorm, causal attention, vocab-parallel cross-entropy),
 * each with a C launcher declared in
 * cuda_internal.h.  Launchers enqueue on the backend's stream and return
 * the launch status; they run on whichever thread owns the backend.
 *
 * Reductions (column sums, softmax row sums, the loss and correct count)
 * use a fixed tree and no atomics, so every run gives the same bits.
 * Legend: B = batch rows, C = classes (columns of a row), n = element count.
 */
#include <math.h>
#include <stdint.h>

#include "gpu/cuda_internal.h"

namespace
{

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

/* Blocks for a grid-stride loop over n elements. */
unsigned grid_for(int64_t n)
{
    int64_t blocks = (n + kThreads - 1) / kThreads;
    if (blocks > kMaxBlocks) {
        blocks = kMaxBlocks;
    }
    return (unsigned)blocks;
}

__device__ __forceinline__ int64_t first_index()
{
    return (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ int64_t grid_stride()
{
    return (int64_t)gridDim.x * blockDim.x;
}

/* ---- element-wise ------------------------------------------------------ */

__global__ void gelu_fwd_kernel(float *y, const float *x, int64_t n)
{
    for (int64_t i = first_index(); i < n; i += grid_stride()) {
        float v = x[i];
        y[i] = 0.5f * v * (1.0f + erff(v * (float)M_SQRT1_2));
    }
}

/* The exact derivative, as PyTorch's GeluBackward computes it:
 * cdf(x) + x * pdf(x). */
__global__ void gelu_bwd_kernel(float *dx, const float *x, const float *dy, int64_t n)
{
    const float kBeta = (float)(M_2_SQRTPI * M_SQRT1_2 * 0.5);
    for (int64_t i = first_index(); i < n; i += grid_stride()) {
        float v = x[i];
        float cdf = 0.5f * (1.0f + erff(v * (float)M_SQRT1_2));
        float pdf = expf(-0.5f * v * v) * kBeta;
        dx[i] += dy[i] * (cdf + v * pdf);
    }
}

__global__ void relu_fwd_kernel(float *y, const float *x, int64_t n)
{
    for (int64_t i = first_index(); i < n; i += grid_stride()) {
        float v = x[i];
        y[i] = v > 0.0f ? v : 0.0f;
    }
}

__global__ void relu_bwd_kernel(float *dx, const float *x, const float *dy, int64_t n)
{
    for (int64_t i = first_index(); i < n; i += grid_stride()) {
        if (x[i] > 0.0f) {
            dx[i] += dy[i];
        }
    }
}

__global__ void axpy_kernel(float *y, float alpha, const float *x, int64_t n)
{
    for (int64_t i = first_index(); i < n; i += grid_stride()) {
        y[i] += alpha * x[i];
    }
}

__global__ void bias_add_kernel(float *y, const float *b, int64_t rows, int64_t cols)
{
    int64_t n = rows * cols;
    for (int64_t i = first_index(); i < n; i += grid_stride()) {
        y[i] += b[i % cols];
    }
}

/* ---- column sums: db[c] += sum_r dZ[r, c] --------------------------------
 * A block covers 32 adjacent columns (coalesced rows) with 8 row lanes; row
 * lane t sums rows t, t+8, t+16, ... in order, then lane 0 adds the eight
 * partial sums in order.  Fixed order: deterministic. */

constexpr int kColsumCols = 32;
constexpr int kColsumLanes = 8;

__global__ void colsum_add_kernel(float *db, const float *dZ, int64_t rows, int64_t cols)
{
    __shared__ float part[kColsumLanes][kColsumCols];
    int64_t c = (int64_t)blockIdx.x * kColsumCols + threadIdx.x;
    float acc = 0.0f;
    if (c < cols) {
        for (int64_t r = threadIdx.y; r < rows; r += kColsumLanes) {
            acc += dZ[r * cols + c];
        }
    }
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        float sum = part[0][threadIdx.x];
        for (int t = 1; t < kColsumLanes; t++) {
            sum += part[t][threadIdx.x];
        }
        db[c] += sum;
    }
}

/* ---- block reductions --------------------------------------------------- */

struct MaxOp {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct MinIntOp {
    __device__ int operator()(int a, int b) const { return a < b ? a : b; }
};
template <typename T> struct SumOp {
    __device__ T operator()(T a, T b) const { return a + b; }
};

template <typename T, typename Op> __device__ T warp_reduce(T v, Op op)
{
    for (int off = 16; off > 0; off >>= 1) {
        v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
    }
    return v;
}

/* Every thread gets op over the block's values; blockDim.x is a multiple of
 * 32 and at most 1024.  `shared` holds 32 T. */
template <typename T, typename Op> __device__ T block_reduce(T v, Op op, T identity, T *shared)
{
    int lane = threadIdx.x & 31;
    int warp = threadIdx.x >> 5;
    int warps = blockDim.x >> 5;
    v = warp_reduce(v, op);
    __syncthreads(); /* a previous call may still be reading shared[0] */
    if (lane == 0) {
        shared[warp] = v;
    }
    __syncthreads();
    if (warp == 0) {
        v = lane < warps ? shared[lane] : identity;
        v = warp_reduce(v, op);
        if (lane == 0) {
            shared[0] = v;
        }
    }
    __syncthreads();
    return shared[0];
}

/* ---- softmax cross-entropy ------------------------------------------------ */

constexpr int kXentFlagCorrect = 1;
constexpr int kXentFlagBad = 2;

__host__ __device__ inline size_t xent_rows_offset()
{
    /* Per-row losses start after the sums, 8-byte aligned. */
    return (sizeof(mp_cuda_xent_out_t) + 7) / 8 * 8;
}

/* One block per row: max, exp and sum, probabilities, first argmax, and the
 * row's loss -log p[label] = log(sum) - (x[label] - max), in double. */
__global__ void xent_row_kernel(float *probs, const float *logits, const int32_t *labels, int64_t C,
                                double *row_loss, int *row_flag)
{
    __shared__ float fshared[32];
    __shared__ int ishared[32];
    int64_t row = blockIdx.x;
    const float *x = logits + row * C;
    float *p = probs + row * C;
    /* Read the label's logit before any write, so probs may alias logits. */
    int32_t label = labels[row];
    bool bad = label < 0 || (int64_t)label >= C;
    float xl = bad ? 0.0f : x[label];

    float mx = -INFINITY;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        mx = fmaxf(mx, x[c]);
    }
    mx = block_reduce(mx, MaxOp(), -INFINITY, fshared);

    float sum = 0.0f;
    int first = INT32_MAX;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        float xc = x[c];
        float e = expf(xc - mx);
        p[c] = e;
        sum += e;
        if (xc == mx && c < first) {
            first = (int)c;
        }
    }
    sum = block_reduce(sum, SumOp<float>(), 0.0f, fshared);
    first = block_reduce(first, MinIntOp(), INT32_MAX, ishared);

    /* Each thread rescales the entries it wrote itself (and, when probs
     * aliases logits, each element is read and written by one thread). */
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        p[c] = p[c] / sum;
    }
    if (threadIdx.x == 0) {
        if (bad) {
            row_loss[row] = 0.0;
            row_flag[row] = kXentFlagBad;
        } else {
            row_loss[row] = log((double)sum) - ((double)xl - (double)mx);
            row_flag[row] = first == label ? kXentFlagCorrect : 0;
        }
    }
}

/* One block sums the per-row results in a fixed order. */
__global__ void xent_sum_kernel(mp_cuda_xent_out_t *out, const double *row_loss,
                                const int *row_flag, int64_t B)
{
    __shared__ double dshared[32];
    __shared__ long long lshared[32];
    double loss = 0.0;
    long long correct = 0;
    long long bad = 0;
    for (int64_t r = threadIdx.x; r < B; r += blockDim.x) {
        loss += row_loss[r];
        correct += (row_flag[r] & kXentFlagCorrect) != 0;
        bad += (row_flag[r] & kXentFlagBad) != 0;
    }
    loss = block_reduce(loss, SumOp<double>(), 0.0, dshared);
    correct = block_reduce(correct, SumOp<long long>(), 0LL, lshared);
    bad = block_reduce(bad, SumOp<long long>(), 0LL, lshared);
    if (threadIdx.x == 0) {
        out->loss_sum = loss;
        out->correct = correct;
        out->bad = bad;
    }
}

__global__ void xent_bwd_kernel(float *dlogits, const float *probs, const int32_t *labels,
                                int64_t B, int64_t C, float scale)
{
    int64_t n = B * C;
    for (int64_t i = first_index(); i < n; i += grid_stride()) {
        int64_t r = i / C;
        int64_t c = i - r * C;
        float onehot = (int64_t)labels[r] == c ? 1.0f : 0.0f;
        dlogits[i] += scale * (probs[i] - onehot);
    }
}

/* ---- optimizers (torch.optim single-tensor semantics) ------------------- */

__global__ void sgd_kernel(float *p, const float *grad, float *buf, int64_t n, float lr,
                           float momentum, float one_minus_damp, float weight_decay, bool nesterov,
                           bool first_step, int *nonfinite)
{
    for (int64_t i = first_index(); i < n; i += grid_stride()) {
        float g = grad[i];
        if (!isfinite(g)) {
            *nonfinite = 1; /* every writer writes 1: no atomic needed */
        }
        if (weight_decay != 0.0f) {
            g = g + weight_decay * p[i];
        }
        if (momentum != 0.0f) {
            float b;
            if (first_step) {
                b = g;
            } else {
                b = buf[i] * momentum;
                b = b + one_minus_damp * g;
            }
            buf[i] = b;
            g = nesterov ? g + momentum * b : b;
        }
        p[i] = p[i] - lr * g;
    }
}

__global__ void adamw_kernel(float *p, const float *grad, float *m, float *v, int64_t n,
                             float decay, float one_minus_beta1, float beta2, float one_minus_beta2,
                             float step_size, float bc2_sqrt, float eps, int *nonfinite)
{
    float w = one_minus_beta1; /* torch on CUDA: exp_avg.lerp_(grad, 1 - beta1) */
    for (int64_t i = first_index(); i < n; i += grid_stride()) {
        float g = grad[i];
        if (!isfinite(g)) {
            *nonfinite = 1;
        }
        float pi = p[i] * decay;
        float mi = m[i];
        mi = fabsf(w) < 0.5f ? mi + w * (g - mi) : g - (g - mi) * (1.0f - w);
        float vi = v[i] * beta2 + one_minus_beta2 * g * g;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        p[i] = pi - step_size * (mi / denom);
        m[i] = mi;
        v[i] = vi;
    }
}

/* ---- sequence layers -------------------------------------------------------
 * Same contracts as the CPU backend (backend.h).  The reductions use a fixed
 * tree or a fixed loop order and no atomics, so every run gives the same
 * bits; embed_bwd and pos_bwd add rows in the CPU backend's order. */

/* Row of the vocab shard [v0, v0 + Vl) that token id f selects, or -1; the
 * comparison runs before the cast, so a NaN never reaches it. */
__device__ __forceinline__ int64_t embed_row(float f, int64_t v0, int64_t Vl)
{
    double d = (double)f;
    if (!(d >= (double)v0 && d < (double)(v0 + Vl))) {
        return -1;
    }
    return (int64_t)d - v0;
}

__global__ void embed_fwd_kernel(float *y, const float *ids, const float *tok, int64_t R,
                                 int64_t C, int64_t v0, int64_t Vl)
{
    int64_t n = R * C;
    for (int64_t i = first_index(); i < n; i += grid_stride()) {
        int64_t r = i / C;
        int64_t v = embed_row(ids[r], v0, Vl);
        y[i] = v < 0 ? 0.0f : tok[v * C + (i - r * C)];
    }
}

/* One thread per column c and vocab tile (blockIdx.y): the rows whose id
 * falls in the tile, in row order. */
__global__ void embed_bwd_kernel(float *dtok, const float *dy, const float *ids, int64_t R,
                                 int64_t C, int64_t v0, int64_t Vl, int64_t tile)
{
    int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) {
        return;
    }
    int64_t lo = (int64_t)blockIdx.y * tile;
    int64_t hi = lo + tile < Vl ? lo + tile : Vl;
    for (int64_t r = 0; r < R; r++) {
        int64_t v = embed_row(ids[r], v0, Vl);
        if (v >= lo && v < hi) {
            dtok[v * C + c] += dy[r * C + c];
        }
    }
}

__global__ void pos_add_kernel(float *y, const float *pos, int64_t R, int64_t T, int64_t C)
{
    int64_t n = R * C;
    for (int64_t i = first_index(); i < n; i += grid_stride()) {
        int64_t r = i / C;
        y[i] += pos[(r % T) * C + (i - r * C)];
    }
}

/* One thread per (t, c): the batch's rows summed in order, then added. */
__global__ void pos_bwd_kernel(float *dpos, const float *dy, int64_t nb, int64_t T, int64_t C)
{
    int64_t n = T * C;
    for (int64_t i = first_index(); i < n; i += grid_stride()) {
        int64_t t = i / C, c = i - t * C;
        float acc = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            acc += dy[(b * T + t) * C + c];
        }
        dpos[i] += acc;
    }
}

/* One block per row: mean, then the mean squared deviation (two passes). */
__global__ void layernorm_fwd_kernel(float *y, float *mean, float *rstd, const float *x,
                                     const float *w, const float *b, int64_t C, float eps)
{
    __shared__ float shared[32];
    int64_t r = blockIdx.x;
    const float *xr = x + r * C;
    float *yr = y + r * C;
    float s = 0.0f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        s += xr[c];
    }
    float m = block_reduce(s, SumOp<float>(), 0.0f, shared) / (float)C;
    float v = 0.0f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        float d = xr[c] - m;
        v += d * d;
    }
    float var = block_reduce(v, SumOp<float>(), 0.0f, shared) / (float)C;
    float rs = 1.0f / sqrtf(var + eps);
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        yr[c] = (xr[c] - m) * rs * w[c] + b[c];
    }
    if (threadIdx.x == 0) {
        mean[r] = m;
        rstd[r] = rs;
    }
}

/* One block per row: dx += rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w. */
__global__ void layernorm_bwd_dx_kernel(float *dx, const float *dy, const float *x,
                                        const float *mean, const float *rstd, const float *w,
                                        int64_t C)
{
    __shared__ float shared[32];
    int64_t r = blockIdx.x;
    const float *xr = x + r * C, *gr = dy + r * C;
    float m = mean[r], rs = rstd[r];
    float sg = 0.0f, sgx = 0.0f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        float g = gr[c] * w[c];
        sg += g;
        sgx += g * ((xr[c] - m) * rs);
    }
    float mg = block_reduce(sg, SumOp<float>(), 0.0f, shared) / (float)C;
    float mgx = block_reduce(sgx, SumOp<float>(), 0.0f, shared) / (float)C;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        float xhat = (xr[c] - m) * rs;
        dx[r * C + c] += rs * (gr[c] * w[c] - mg - xhat * mgx);
    }
}

/* dw[c] += sum_r dy * xhat, db[c] += sum_r dy (either may be NULL), laid out
 * as colsum_add_kernel: 32 columns by 8 row lanes, fixed order. */
__global__ void layernorm_bwd_dw_kernel(float *dw, float *db, const float *dy, const float *x,
                                        const float *mean, const float *rstd, int64_t R,
                                        int64_t C)
{
    __shared__ float pw[kColsumLanes][kColsumCols];
    __shared__ float pb[kColsumLanes][kColsumCols];
    int64_t c = (int64_t)blockIdx.x * kColsumCols + threadIdx.x;
    float aw = 0.0f, ab = 0.0f;
    if (c < C) {
        for (int64_t r = threadIdx.y; r < R; r += kColsumLanes) {
            float g = dy[r * C + c];
            aw += g * ((x[r * C + c] - mean[r]) * rstd[r]);
            ab += g;
        }
    }
    pw[threadIdx.y][threadIdx.x] = aw;
    pb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float sw = pw[0][threadIdx.x], sb = pb[0][threadIdx.x];
        for (int t = 1; t < kColsumLanes; t++) {
            sw += pw[t][threadIdx.x];
            sb += pb[t][threadIdx.x];
        }
        if (dw != NULL) {
            dw[c] += sw;
        }
        if (db != NULL) {
            db[c] += sb;
        }
    }
}

/* Geometry of one attention row block: blockIdx.x = (b*H + h)*T + t. */
struct AttnRow {
    int64_t t, bh, h, b;
    __device__ AttnRow(int64_t row, int64_t T, int64_t H)
        : t(row % T), bh(row / T), h((row / T) % H), b(row / T / H)
    {
    }
};

/* One block per (b, h, t): the scores of s <= t (a thread per position, a
 * dot product of D each), softmax, then the weighted sum of V (a thread per
 * column).  att's row is the scratch between the phases (__syncthreads makes
 * a block's global writes visible to the block); masked entries are 0. */
__global__ void attn_fwd_kernel(float *out, float *att, const float *qkv, int64_t T, int64_t H,
                                int64_t D, float scale)
{
    __shared__ float shared[32];
    const AttnRow g(blockIdx.x, T, H);
    const int64_t C = H * D, ld = 3 * C;
    const float *base = qkv + g.b * T * ld + g.h * D;
    const float *q = base + g.t * ld;
    float *a = att + (int64_t)blockIdx.x * T;
    float mx = -INFINITY;
    for (int64_t s = threadIdx.x; s <= g.t; s += blockDim.x) {
        const float *k = base + s * ld + C;
        float acc = 0.0f;
        for (int64_t d = 0; d < D; d++) {
            acc += q[d] * k[d];
        }
        acc *= scale;
        a[s] = acc;
        mx = fmaxf(mx, acc);
    }
    mx = block_reduce(mx, MaxOp(), -INFINITY, shared);
    float sum = 0.0f;
    for (int64_t s = threadIdx.x; s <= g.t; s += blockDim.x) {
        float e = expf(a[s] - mx);
        a[s] = e;
        sum += e;
    }
    float inv = 1.0f / block_reduce(sum, SumOp<float>(), 0.0f, shared);
    /* Each thread rescales the positions it wrote itself. */
    for (int64_t s = threadIdx.x; s < T; s += blockDim.x) {
        a[s] = s <= g.t ? a[s] * inv : 0.0f;
    }
    __syncthreads();
    float *o = out + (g.b * T + g.t) * C + g.h * D;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (int64_t s = 0; s <= g.t; s++) {
            acc += a[s] * base[s * ld + 2 * C + d];
        }
        o[d] = acc;
    }
}

/* Backward, first half, one block per (b, h, t): dP = dO V^T over s <= t,
 * dS = P * (dP - rowsum(P * dP)) * scale into ds (0 for s > t), then
 * dQ[t] += dS K. */
__global__ void attn_bwd_rows_kernel(float *dqkv, float *ds, const float *dout, const float *qkv,
                                     const float *att, int64_t T, int64_t H, int64_t D,
                                     float scale)
{
    __shared__ float shared[32];
    const AttnRow g(blockIdx.x, T, H);
    const int64_t C = H * D, ld = 3 * C;
    const float *base = qkv + g.b * T * ld + g.h * D;
    const float *go = dout + (g.b * T + g.t) * C + g.h * D;
    const float *a = att + (int64_t)blockIdx.x * T;
    float *dsr = ds + (int64_t)blockIdx.x * T;
    float dot = 0.0f;
    for (int64_t s = threadIdx.x; s <= g.t; s += blockDim.x) {
        const float *v = base + s * ld + 2 * C;
        float acc = 0.0f;
        for (int64_t d = 0; d < D; d++) {
            acc += go[d] * v[d];
        }
        dsr[s] = acc;
        dot += a[s] * acc;
    }
    dot = block_reduce(dot, SumOp<float>(), 0.0f, shared);
    for (int64_t s = threadIdx.x; s < T; s += blockDim.x) {
        dsr[s] = s <= g.t ? a[s] * (dsr[s] - dot) * scale : 0.0f;
    }
    __syncthreads();
    float *dq = dqkv + (g.b * T + g.t) * ld + g.h * D;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (int64_t s = 0; s <= g.t; s++) {
            acc += dsr[s] * base[s * ld + C + d];
        }
        dq[d] += acc;
    }
}

/* Backward, second half, one block per (b, h, s): dK[s] += dS[:, s]^T Q and
 * dV[s] += P[:, s]^T dO over the positions t >= s (a thread per column). */
__global__ void attn_bwd_cols_kernel(float *dqkv, const float *ds, const float *dout,
                                     const float *qkv, const float *att, int64_t T, int64_t H,
                                     int64_t D)
{
    const AttnRow g(blockIdx.x, T, H); /* g.t is the key position s */
    const int64_t C = H * D, ld = 3 * C, s = g.t;
    const float *base = qkv + g.b * T * ld + g.h * D;
    const float *dob = dout + g.b * T * C + g.h * D;
    const float *dsb = ds + g.bh * T * T;
    const float *ab = att + g.bh * T * T;
    float *dk = dqkv + (g.b * T + s) * ld + C + g.h * D;
    float *dv = dk + C;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        float ak = 0.0f, av = 0.0f;
        for (int64_t t = s; t < T; t++) {
            ak += dsb[t * T + s] * base[t * ld + d];
            av += ab[t * T + s] * dob[t * C + d];
        }
        dk[d] += ak;
        dv[d] += av;
    }
}

/* Vocab-parallel cross-entropy: one block per row for the reductions. */
__global__ void xent_vp_max_kernel(float *rowmax, const float *logits, int64_t Vl)
{
    __shared__ float shared[32];
    const float *l = logits + (int64_t)blockIdx.x * Vl;
    float mx = -INFINITY;
    for (int64_t c = threadIdx.x; c < Vl; c += blockDim.x) {
        mx = fmaxf(mx, l[c]);
    }
    mx = block_reduce(mx, MaxOp(), -INFINITY, shared);
    if (threadIdx.x == 0) {
        rowmax[blockIdx.x] = mx;
    }
}

__global__ void xent_vp_sumexp_kernel(float *sumexp, float *target, const float *logits,
                                      const float *gmax, const int32_t *labels, int64_t Vl,
                                      int64_t v0)
{
    __shared__ float shared[32];
    const int64_t r = blockIdx.x;
    const float *l = logits + r * Vl;
    const float m = gmax[r];
    float s = 0.0f;
    for (int64_t c = threadIdx.x; c < Vl; c += blockDim.x) {
        s += expf(l[c] - m);
    }
    s = block_reduce(s, SumOp<float>(), 0.0f, shared);
    if (threadIdx.x == 0) {
        int64_t c = (int64_t)labels[r] - v0;
        sumexp[r] = s;
        target[r] = c >= 0 && c < Vl ? l[c] : 0.0f;
    }
}

__global__ void xent_vp_bwd_kernel(float *dlogits, const float *logits, const float *gmax,
                                   const float *gsum, const int32_t *labels, int64_t R,
                                   int64_t Vl, int64_t v0, float scale)
{
    int64_t n = R * Vl;
    for (int64_t i = first_index(); i < n; i += grid_stride()) {
        int64_t r = i / Vl, c = i - r * Vl;
        float onehot = (int64_t)labels[r] - v0 == c ? 1.0f : 0.0f;
        dlogits[i] += scale * (expf(logits[i] - gmax[r]) / gsum[r] - onehot);
    }
}

/* Threads for a block that strides over n items: one warp for short rows,
 * up to 256 for long ones. */
int row_threads(int64_t n)
{
    return n <= 32 ? 32 : n <= 64 ? 64 : n <= 128 ? 128 : 256;
}

} /* namespace */

/* ---- launchers ------------------------------------------------------------ */

extern "C" {

size_t mp_cuda_xent_scratch_bytes(int64_t B)
{
    return xent_rows_offset() + (size_t)B * sizeof(double) + (size_t)B * sizeof(int);
}

cudaError_t mp_cuda_gelu_fwd_launch(cudaStream_t stream, float *y, const float *x, int64_t n)
{
    if (n <= 0) {
        return cudaSuccess;
    }
    gelu_fwd_kernel<<<grid_for(n), kThreads, 0, stream>>>(y, x, n);
    return cudaGetLastError();
}

cudaError_t mp_cuda_gelu_bwd_launch(cudaStream_t stream, float *dx, const float *x, const float *dy,
                                    int64_t n)
{
    if (n <= 0) {
        return cudaSuccess;
    }
    gelu_bwd_kernel<<<grid_for(n), kThreads, 0, stream>>>(dx, x, dy, n);
    return cudaGetLastError();
}

cudaError_t mp_cuda_relu_fwd_launch(cudaStream_t stream, float *y, const float *x, int64_t n)
{
    if (n <= 0) {
        return cudaSuccess;
    }
    relu_fwd_kernel<<<grid_for(n), kThreads, 0, stream>>>(y, x, n);
    return cudaGetLastError();
}

cudaError_t mp_cuda_relu_bwd_launch(cudaStream_t stream, float *dx, const float *x, const float *dy,
                                    int64_t n)
{
    if (n <= 0) {
        return cudaSuccess;
    }
    relu_bwd_kernel<<<grid_for(n), kThreads, 0, stream>>>(dx, x, dy, n);
    return cudaGetLastError();
}

cudaError_t mp_cuda_axpy_launch(cudaStream_t stream, float *y, float alpha, const float *x,
                                int64_t n)
{
    if (n <= 0) {
        return cudaSuccess;
    }
    axpy_kernel<<<grid_for(n), kThreads, 0, stream>>>(y, alpha, x, n);
    return cudaGetLastError();
}

cudaError_t mp_cuda_bias_add_launch(cudaStream_t stream, float *y, const float *b, int64_t rows,
                                    int64_t cols)
{
    if (rows <= 0 || cols <= 0) {
        return cudaSuccess;
    }
    bias_add_kernel<<<grid_for(rows * cols), kThreads, 0, stream>>>(y, b, rows, cols);
    return cudaGetLastError();
}

cudaError_t mp_cuda_colsum_add_launch(cudaStream_t stream, float *db, const float *dZ, int64_t rows,
                                      int64_t cols)
{
    if (rows <= 0 || cols <= 0) {
        return cudaSuccess;
    }
    dim3 block(kColsumCols, kColsumLanes);
    unsigned blocks = (unsigned)((cols + kColsumCols - 1) / kColsumCols);
    colsum_add_kernel<<<blocks, block, 0, stream>>>(db, dZ, rows, cols);
    return cudaGetLastError();
}

cudaError_t mp_cuda_xent_fwd_launch(cudaStream_t stream, float *probs, const float *logits,
                                    const int32_t *labels, int64_t B, int64_t C, void *scratch)
{
    mp_cuda_xent_out_t *out = (mp_cuda_xent_out_t *)scratch;
    double *row_loss = (double *)((char *)scratch + xent_rows_offset());
    int *row_flag = (int *)(row_loss + B);
    if (B > 0 && C > 0) {
        /* Small class counts (10) need one warp; wide rows get up to 256 threads. */
        int threads = C <= 32 ? 32 : C <= 64 ? 64 : C <= 128 ? 128 : 256;
        xent_row_kernel<<<(unsigned)B, threads, 0, stream>>>(probs, logits, labels, C, row_loss,
                                                             row_flag);
        cudaError_t err = cudaGetLastError();
        if (err != cudaSuccess) {
            return err;
        }
    }
    xent_sum_kernel<<<1, kThreads, 0, stream>>>(out, row_loss, row_flag, C > 0 ? B : 0);
    return cudaGetLastError();
}

cudaError_t mp_cuda_xent_bwd_launch(cudaStream_t stream, float *dlogits, const float *probs,
                                    const int32_t *labels, int64_t B, int64_t C, float scale)
{
    if (B <= 0 || C <= 0) {
        return cudaSuccess;
    }
    xent_bwd_kernel<<<grid_for(B * C), kThreads, 0, stream>>>(dlogits, probs, labels, B, C, scale);
    return cudaGetLastError();
}

cudaError_t mp_cuda_sgd_launch(cudaStream_t stream, float *p, const float *grad, float *buf,
                               int64_t n, float lr, float momentum, float one_minus_damp,
                               float weight_decay, bool nesterov, bool first_step, int *nonfinite)
{
    if (n <= 0) {
        return cudaSuccess;
    }
    sgd_kernel<<<grid_for(n), kThreads, 0, stream>>>(p, grad, buf, n, lr, momentum, one_minus_damp,
                                                     weight_decay, nesterov, first_step, nonfinite);
    return cudaGetLastError();
}

cudaError_t mp_cuda_adamw_launch(cudaStream_t stream, float *p, const float *grad, float *m,
                                 float *v, int64_t n, float decay, float one_minus_beta1,
                                 float beta2, float one_minus_beta2, float step_size,
                                 float bc2_sqrt, float eps, int *nonfinite)
{
    if (n <= 0) {
        return cudaSuccess;
    }
    adamw_kernel<<<grid_for(n), kThreads, 0, stream>>>(p, grad, m, v, n, decay, one_minus_beta1,
                                                       beta2, one_minus_beta2, step_size, bc2_sqrt,
                                                       eps, nonfinite);
    return cudaGetLastError();
}


/* ---- sequence layers ---------------------------------------------------- */

cudaError_t mp_cuda_embed_fwd_launch(cudaStream_t stream, float *y, const float *ids,
                                     const float *tok, int64_t R, int64_t C, int64_t v0,
                                     int64_t Vl)
{
    if (R <= 0 || C <= 0) {
        return cudaSuccess;
    }
    embed_fwd_kernel<<<grid_for(R * C), kThreads, 0, stream>>>(y, ids, tok, R, C, v0, Vl);
    return cudaGetLastError();
}

cudaError_t mp_cuda_embed_bwd_launch(cudaStream_t stream, float *dtok, const float *dy,
                                     const float *ids, int64_t R, int64_t C, int64_t v0,
                                     int64_t Vl)
{
    if (R <= 0 || C <= 0 || Vl <= 0) {
        return cudaSuccess;
    }
    int64_t tiles = Vl < 64 ? Vl : 64;
    int64_t tile = (Vl + tiles - 1) / tiles;
    tiles = (Vl + tile - 1) / tile;
    dim3 grid((unsigned)((C + 31) / 32), (unsigned)tiles);
    embed_bwd_kernel<<<grid, 32, 0, stream>>>(dtok, dy, ids, R, C, v0, Vl, tile);
    return cudaGetLastError();
}

cudaError_t mp_cuda_pos_add_launch(cudaStream_t stream, float *y, const float *pos, int64_t R,
                                   int64_t T, int64_t C)
{
    if (R <= 0 || C <= 0) {
        return cudaSuccess;
    }
    pos_add_kernel<<<grid_for(R * C), kThreads, 0, stream>>>(y, pos, R, T, C);
    return cudaGetLastError();
}

cudaError_t mp_cuda_pos_bwd_launch(cudaStream_t stream, float *dpos, const float *dy, int64_t R,
                                   int64_t T, int64_t C)
{
    if (R <= 0 || C <= 0) {
        return cudaSuccess;
    }
    pos_bwd_kernel<<<grid_for(T * C), kThreads, 0, stream>>>(dpos, dy, R / T, T, C);
    return cudaGetLastError();
}

cudaError_t mp_cuda_layernorm_fwd_launch(cudaStream_t stream, float *y, float *mean, float *rstd,
                                         const float *x, const float *w, const float *b,
                                         int64_t R, int64_t C, float eps)
{
    if (R <= 0) {
        return cudaSuccess;
    }
    layernorm_fwd_kernel<<<(unsigned)R, row_threads(C), 0, stream>>>(y, mean, rstd, x, w, b, C,
                                                                     eps);
    return cudaGetLastError();
}

cudaError_t mp_cuda_layernorm_bwd_launch(cudaStream_t stream, float *dx, float *dw, float *db,
                                         const float *dy, const float *x, const float *mean,
                                         const float *rstd, const float *w, int64_t R,
                                         int64_t C)
{
    if (R <= 0) {
        return cudaSuccess;
    }
    if (dx != NULL) {
        layernorm_bwd_dx_kernel<<<(unsigned)R, row_threads(C), 0, stream>>>(dx, dy, x, mean, rstd,
                                                                            w, C);
        cudaError_t err = cudaGetLastError();
        if (err != cudaSuccess) {
            return err;
        }
    }
    if (dw != NULL || db != NULL) {
        dim3 block(kColsumCols, kColsumLanes);
        unsigned blocks = (unsigned)((C + kColsumCols - 1) / kColsumCols);
        layernorm_bwd_dw_kernel<<<blocks, block, 0, stream>>>(dw, db, dy, x, mean, rstd, R, C);
    }
    return cudaGetLastError();
}

size_t mp_cuda_attn_scratch_bytes(int64_t B, int64_t T, int64_t H)
{
    return (size_t)(B * H * T * T) * sizeof(float);
}

cudaError_t mp_cuda_attn_fwd_launch(cudaStream_t stream, float *out, float *att, const float *qkv,
                                    int64_t B, int64_t T, int64_t H, int64_t D)
{
    if (B <= 0 || T <= 0) {
        return cudaSuccess;
    }
    float scale = 1.0f / sqrtf((float)D);
    attn_fwd_kernel<<<(unsigned)(B * H * T), row_threads(T), 0, stream>>>(out, att, qkv, T, H, D,
                                                                         scale);
    return cudaGetLastError();
}

cudaError_t mp_cuda_attn_bwd_launch(cudaStream_t stream, float *dqkv, const float *dout,
                                    const float *qkv, const float *att, int64_t B, int64_t T,
                                    int64_t H, int64_t D, void *scratch)
{
    if (B <= 0 || T <= 0) {
        return cudaSuccess;
    }
    float scale = 1.0f / sqrtf((float)D);
    float *ds = (float *)scratch;
    unsigned rows = (unsigned)(B * H * T);
    attn_bwd_rows_kernel<<<rows, row_threads(T > D ? T : D), 0, stream>>>(dqkv, ds, dout, qkv,
                                                                         att, T, H, D, scale);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) {
        return err;
    }
    attn_bwd_cols_kernel<<<rows, row_threads(D), 0, stream>>>(dqkv, ds, dout, qkv, att, T, H, D);
    return cudaGetLastError();
}

cudaError_t mp_cuda_xent_vp_max_launch(cudaStream_t stream, float *rowmax, const float *logits,
                                       int64_t R, int64_t Vl)
{
    if (R <= 0) {
        return cudaSuccess;
    }
    xent_vp_max_kernel<<<(unsigned)R, row_threads(Vl), 0, stream>>>(rowmax, logits, Vl);
    return cudaGetLastError();
}

cudaError_t mp_cuda_xent_vp_sumexp_launch(cudaStream_t stream, float *sumexp, float *target,
                                          const float *logits, const float *gmax,
                                          const int32_t *labels, int64_t R, int64_t Vl,
                                          int64_t v0)
{
    if (R <= 0) {
        return cudaSuccess;
    }
    xent_vp_sumexp_kernel<<<(unsigned)R, row_threads(Vl), 0, stream>>>(sumexp, target, logits,
                                                                       gmax, labels, Vl, v0);
    return cudaGetLastError();
}

cudaError_t mp_cuda_xent_vp_bwd_launch(cudaStream_t stream, float *dlogits, const float *logits,
                                       const float *gmax, const float *gsum,
                                       const int32_t *labels, int64_t R, int64_t Vl, int64_t v0,
                                       float scale)
{
    if (R <= 0) {
        return cudaSuccess;
    }
    xent_vp_bwd_kernel<<<grid_for(R * Vl), kThreads, 0, stream>>>(dlogits, logits, gmax, gsum,
                                                                  labels, R, Vl, v0, scale);
    return cudaGetLastError();
}

} /* extern "C" */
