/*
 * cuda_kernels.cu - the CUDA backend's own kernels (everything that is not
 * a GEMM): GeLU, ReLU, axpy, bias add, bias-gradient column sums, softmax
 * cross-entropy, SGD and AdamW, each with a C launcher declared in
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
                           bool first_step)
{
    for (int64_t i = first_index(); i < n; i += grid_stride()) {
        float g = grad[i];
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
                             float step_size, float bc2_sqrt, float eps)
{
    float w = one_minus_beta1; /* torch on CUDA: exp_avg.lerp_(grad, 1 - beta1) */
    for (int64_t i = first_index(); i < n; i += grid_stride()) {
        float g = grad[i];
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
                               float weight_decay, bool nesterov, bool first_step)
{
    if (n <= 0) {
        return cudaSuccess;
    }
    sgd_kernel<<<grid_for(n), kThreads, 0, stream>>>(p, grad, buf, n, lr, momentum, one_minus_damp,
                                                     weight_decay, nesterov, first_step);
    return cudaGetLastError();
}

cudaError_t mp_cuda_adamw_launch(cudaStream_t stream, float *p, const float *grad, float *m,
                                 float *v, int64_t n, float decay, float one_minus_beta1,
                                 float beta2, float one_minus_beta2, float step_size,
                                 float bc2_sqrt, float eps)
{
    if (n <= 0) {
        return cudaSuccess;
    }
    adamw_kernel<<<grid_for(n), kThreads, 0, stream>>>(
        p, grad, m, v, n, decay, one_minus_beta1, beta2, one_minus_beta2, step_size, bc2_sqrt, eps);
    return cudaGetLastError();
}

} /* extern "C" */
