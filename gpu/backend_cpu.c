/*
 * backend_cpu.c - the CPU backend of gpu/backend.h: GEMMs through oneDNN's
 * dnnl_sgemm (row-major), element-wise kernels, softmax cross-entropy and
 * the SGD / AdamW steps in plain C.  Owns nothing but its backend struct;
 * "device" memory is host memory from mp_aligned_alloc.
 *
 * Threads: a backend object is used by one thread at a time (any thread).
 * Debian's oneDNN is built on OpenMP (libgomp), which sizes its parallel
 * regions from the calling thread's own nthreads ICV, so every op sets that
 * ICV to the backend's thread count first (omp_set_num_threads is per
 * calling thread): several backends on different threads never see each
 * other's setting.  The element-wise kernels split their range over the
 * same count with OpenMP; every element is computed by the same code
 * whatever the split, so results do not depend on the thread count.
 *
 * oneDNN is opened with dlopen when the first CPU backend is created, not
 * linked: a daemon that only coordinates never pays its few MiB of
 * relocated pages and libstdc++.
 *
 * Numerics: GeLU uses its own branch-free erfc/exp so that the loops
 * vectorize; against the exact erf form (in double) the forward's error is
 * below 4e-7 absolute and 1.4e-6 relative for x >= -3 (2e-5 relative in the
 * far negative tail, where gelu(x) < 1e-2), the derivative's below 3e-7;
 * the optimizer steps follow torch.optim's single-tensor code op by op,
 * including the fused multiply-adds of ATen's CPU kernels (add_ with alpha,
 * addcmul_), so they agree with PyTorch bit for bit or within an ulp.
 */
#include <dlfcn.h>
#include <math.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "gpu/backend.h"
#include "gpu/optim_scalars.h"

/* Hot kernels get an AVX2+FMA clone chosen at load time; the default clone
 * runs anywhere.  No kernel uses contraction implicitly (ISO C mode), so
 * both clones produce the same bits. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MP_KERNEL __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define MP_KERNEL
#endif

/* Below this many elements per thread a parallel region costs more than it saves. */
#define MP_CPU_MIN_PER_THREAD 32768

/* linear_fwd copies W to a padded row stride when the batch is at least this
 * large and W's row stride is a multiple of MP_CPU_PAD_ALIGN floats (see
 * cpu_linear_fwd). */
#define MP_CPU_PAD_MIN_ROWS 64
#define MP_CPU_PAD_ALIGN 64
#define MP_CPU_PAD 16

typedef struct {
    mp_backend_t base;
    float *wpad;      /* linear_fwd's padded copy of W */
    size_t wpad_cap;  /* its capacity in floats */
} cpu_backend_t;

static mp_status_t cpu_inval(const char *op, const char *what)
{
    mp_err("cpu backend: %s: %s", op, what);
    return MP_ERR_INVAL;
}

/* Threads for `work` elements: at most the backend's count, at least 1. */
static int cpu_par_threads(const mp_backend_t *be, int64_t work)
{
    int64_t t = work / MP_CPU_MIN_PER_THREAD;
    if (t > be->threads) {
        t = be->threads;
    }
    return t < 1 ? 1 : (int)t;
}

/* This thread's share [*lo, *hi) of n items inside a parallel region, in
 * multiples of `align` so that threads do not share cache lines. */
static void cpu_thread_range(int64_t n, int64_t align, int64_t *lo, int64_t *hi)
{
    int64_t nt = omp_get_num_threads();
    int64_t id = omp_get_thread_num();
    int64_t chunk = (n + nt - 1) / nt;
    chunk = (chunk + align - 1) / align * align;
    int64_t a = id * chunk;
    int64_t b = a + chunk;
    *lo = a < n ? a : n;
    *hi = b < n ? b : n;
}

/* ---- memory ---------------------------------------------------------- */

static void *cpu_alloc(mp_backend_t *be, size_t bytes)
{
    void *p = mp_aligned_alloc(bytes > 0 ? bytes : 64);
    if (p == NULL) {
        mp_err("cpu backend: cannot allocate %zu bytes", bytes);
    }
    return p;
}

static void cpu_free(mp_backend_t *be, void *ptr)
{
    mp_free(ptr);
}

static mp_status_t cpu_memmove(const char *op, void *dst, const void *src, size_t bytes)
{
    if (bytes == 0) {
        return MP_OK;
    }
    if (dst == NULL || src == NULL) {
        return cpu_inval(op, "NULL buffer");
    }
    memmove(dst, src, bytes);
    return MP_OK;
}

static mp_status_t cpu_upload(mp_backend_t *be, void *dst, const void *src_host, size_t bytes)
{
    return cpu_memmove("upload", dst, src_host, bytes);
}

static mp_status_t cpu_download(mp_backend_t *be, void *dst_host, const void *src, size_t bytes)
{
    return cpu_memmove("download", dst_host, src, bytes);
}

static mp_status_t cpu_copy(mp_backend_t *be, void *dst, const void *src, size_t bytes)
{
    return cpu_memmove("copy", dst, src, bytes);
}

static mp_status_t cpu_zero(mp_backend_t *be, void *dst, size_t bytes)
{
    if (bytes == 0) {
        return MP_OK;
    }
    if (dst == NULL) {
        return cpu_inval("zero", "NULL buffer");
    }
    memset(dst, 0, bytes);
    return MP_OK;
}

static mp_status_t cpu_sync(mp_backend_t *be)
{
    return MP_OK;
}

/* ---- GEMM ------------------------------------------------------------ */

/* dnnl_sgemm, resolved from libdnnl.so.2 on first use (see the top). */
typedef dnnl_status_t (*sgemm_fn_t)(char, char, dnnl_dim_t, dnnl_dim_t, dnnl_dim_t, float,
                                    const float *, dnnl_dim_t, const float *, dnnl_dim_t, float,
                                    float *, dnnl_dim_t);
static sgemm_fn_t cpu_sgemm;
static pthread_once_t cpu_dnnl_once = PTHREAD_ONCE_INIT;
static char cpu_dnnl_error[512];

static void cpu_dnnl_load(void)
{
    void *h = dlopen("libdnnl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        snprintf(cpu_dnnl_error, sizeof(cpu_dnnl_error), "%s", dlerror());
        return;
    }
    cpu_sgemm = (sgemm_fn_t)(uintptr_t)dlsym(h, "dnnl_sgemm");
    if (cpu_sgemm == NULL) {
        snprintf(cpu_dnnl_error, sizeof(cpu_dnnl_error), "libdnnl.so.2 has no dnnl_sgemm");
        dlclose(h);
    }
}

static mp_status_t cpu_dnnl_status(const char *op, dnnl_status_t st)
{
    switch (st) {
    case dnnl_success:
        return MP_OK;
    case dnnl_out_of_memory:
        mp_err("cpu backend: %s: oneDNN out of memory", op);
        return MP_ERR_NOMEM;
    case dnnl_invalid_arguments:
        mp_err("cpu backend: %s: oneDNN rejected the arguments", op);
        return MP_ERR_INVAL;
    default:
        mp_err("cpu backend: %s: oneDNN status %d", op, (int)st);
        return MP_ERR_DEVICE;
    }
}

MP_KERNEL static void k_scale_rows(float *restrict C, int64_t ldc, int64_t M, int64_t N, float beta)
{
    for (int64_t r = 0; r < M; r++) {
        float *restrict c = C + r * ldc;
        if (beta == 0.0f) {
            for (int64_t j = 0; j < N; j++) {
                c[j] = 0.0f;
            }
        } else {
            for (int64_t j = 0; j < N; j++) {
                c[j] *= beta;
            }
        }
    }
}

static mp_status_t cpu_gemm(mp_backend_t *be, mp_op_t ta, mp_op_t tb, int64_t M, int64_t N,
                            int64_t K, float alpha, const float *A, int64_t lda, const float *Bm,
                            int64_t ldb, float beta, float *Cm, int64_t ldc)
{
    if (M < 0 || N < 0 || K < 0) {
        return cpu_inval("gemm", "negative dimension");
    }
    if (M == 0 || N == 0) {
        return MP_OK;
    }
    int64_t a_cols = ta == MP_OP_N ? K : M;
    int64_t b_cols = tb == MP_OP_N ? N : K;
    if (lda < (a_cols > 1 ? a_cols : 1) || ldb < (b_cols > 1 ? b_cols : 1) || ldc < N) {
        return cpu_inval("gemm", "leading dimension smaller than the row width");
    }
    if (Cm == NULL || (K > 0 && (A == NULL || Bm == NULL))) {
        return cpu_inval("gemm", "NULL matrix");
    }
    if (K == 0 || alpha == 0.0f) {
        /* BLAS semantics: C = beta * C, and beta == 0 writes zeros without reading C. */
        if (beta != 1.0f) {
            k_scale_rows(Cm, ldc, M, N, beta);
        }
        return MP_OK;
    }
    omp_set_num_threads(be->threads);
    dnnl_status_t st = cpu_sgemm(ta == MP_OP_N ? 'N' : 'T', tb == MP_OP_N ? 'N' : 'T', M, N, K,
                                  alpha, A, lda, Bm, ldb, beta, Cm, ldc);
    return cpu_dnnl_status("gemm", st);
}

/* ---- linear ---------------------------------------------------------- */

MP_KERNEL static void k_fill_rows(float *restrict y, const float *restrict b, int64_t rows,
                                  int64_t cols)
{
    for (int64_t r = 0; r < rows; r++) {
        float *restrict yr = y + r * cols;
        for (int64_t c = 0; c < cols; c++) {
            yr[c] = b[c];
        }
    }
}

static void k_copy_rows(float *restrict dst, int64_t ldd, const float *restrict src,
                                  int64_t rows, int64_t cols)
{
    for (int64_t r = 0; r < rows; r++) {
        memcpy(dst + r * ldd, src + r * cols, (size_t)cols * sizeof(float));
    }
}

/* W with a row stride that is a multiple of 256 bytes makes oneDNN 2.6's
 * AVX2 sgemm (which reads B in place for N,N) thrash on 4K aliasing: measured
 * 40-55 GFLOP/s instead of 80-90 on 256x512x2048.  Copying W to a stride
 * padded by 16 floats costs one pass over W, which a batch of
 * MP_CPU_PAD_MIN_ROWS or more repays several times. */
static const float *cpu_pad_weights(cpu_backend_t *cb, const float *W, int64_t I, int64_t O,
                                    int64_t B, int64_t *ldw_p)
{
    *ldw_p = O;
    if (B < MP_CPU_PAD_MIN_ROWS || O % MP_CPU_PAD_ALIGN != 0 || I < 2) {
        return W;
    }
    int64_t ld = O + MP_CPU_PAD;
    size_t need = (size_t)(I * ld);
    if (need > cb->wpad_cap) {
        float *p = mp_aligned_alloc(need * sizeof(float));
        if (p == NULL) {
            /* Slower but correct: keep the caller's layout. */
            return W;
        }
        mp_free(cb->wpad);
        cb->wpad = p;
        cb->wpad_cap = need;
    }
    k_copy_rows(cb->wpad, ld, W, I, O);
    *ldw_p = ld;
    return cb->wpad;
}

static mp_status_t cpu_linear_fwd(mp_backend_t *be, float *Z, const float *X, const float *W,
                                  const float *b, int64_t B, int64_t I, int64_t O)
{
    if (B < 0 || I < 0 || O < 0) {
        return cpu_inval("linear_fwd", "negative dimension");
    }
    if (B > 0 && O > 0 && (Z == NULL || (I > 0 && (X == NULL || W == NULL)))) {
        return cpu_inval("linear_fwd", "NULL matrix");
    }
    int64_t ldw = O;
    if (B > 0 && O > 0 && I > 0) {
        W = cpu_pad_weights((cpu_backend_t *)be, W, I, O, B, &ldw);
    }
    float beta = 0.0f;
    if (b != NULL && B > 0 && O > 0) {
        /* The bias rides in C with beta = 1: one pass over Z, not two. */
        k_fill_rows(Z, b, B, O);
        beta = 1.0f;
    }
    return cpu_gemm(be, MP_OP_N, MP_OP_N, B, O, I, 1.0f, X, I > 0 ? I : 1, W, ldw > 0 ? ldw : 1,
                    beta, Z, O > 0 ? O : 1);
}

/* db[c0..c1) += column sums of dZ[rows, ld], summed per column tile in a
 * local accumulator first (as a sum, then added: the autograd order). */
MP_KERNEL static void k_colsum_add(float *restrict db, const float *restrict dZ, int64_t rows,
                                   int64_t ld, int64_t c0, int64_t c1)
{
    enum { TILE = 256 };
    float acc[TILE];
    for (int64_t cb = c0; cb < c1; cb += TILE) {
        int64_t w = c1 - cb < TILE ? c1 - cb : TILE;
        for (int64_t j = 0; j < w; j++) {
            acc[j] = 0.0f;
        }
        for (int64_t r = 0; r < rows; r++) {
            const float *restrict row = dZ + r * ld + cb;
            for (int64_t j = 0; j < w; j++) {
                acc[j] += row[j];
            }
        }
        for (int64_t j = 0; j < w; j++) {
            db[cb + j] += acc[j];
        }
    }
}

static void cpu_colsum_add(mp_backend_t *be, float *db, const float *dZ, int64_t rows, int64_t cols)
{
    int nt = cpu_par_threads(be, rows * cols);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int64_t lo, hi;
        cpu_thread_range(cols, 16, &lo, &hi);
        if (lo < hi) {
            k_colsum_add(db, dZ, rows, cols, lo, hi);
        }
    }
}

static mp_status_t cpu_linear_bwd(mp_backend_t *be, float *dX, float *dW, float *db,
                                  const float *dZ, const float *X, const float *W, int64_t B,
                                  int64_t I, int64_t O)
{
    if (B < 0 || I < 0 || O < 0) {
        return cpu_inval("linear_bwd", "negative dimension");
    }
    int64_t ldi = I > 0 ? I : 1, ldo = O > 0 ? O : 1;
    mp_status_t st;
    if (dX != NULL) {
        st = cpu_gemm(be, MP_OP_N, MP_OP_T, B, I, O, 1.0f, dZ, ldo, W, ldo, 1.0f, dX, ldi);
        if (st != MP_OK) {
            return st;
        }
    }
    if (dW != NULL) {
        st = cpu_gemm(be, MP_OP_T, MP_OP_N, I, O, B, 1.0f, X, ldi, dZ, ldo, 1.0f, dW, ldo);
        if (st != MP_OK) {
            return st;
        }
    }
    if (db != NULL && B > 0 && O > 0) {
        cpu_colsum_add(be, db, dZ, B, O);
    }
    return MP_OK;
}

/* ---- GeLU ------------------------------------------------------------ */

/* expf: Cody-Waite reduction x = k ln2 + r, then Cephes' degree-6
 * polynomial, about 1 ulp for x in [-87, 88].  Below that the exponent is
 * held at 2^-126 (the result is then some value under 2e-38 instead of the
 * denormal or 0, harmless for GeLU's tail), above it at 2^127.  The clamp is
 * on the integer k: a float clamp makes GCC if-convert half the function.
 * Branch-free and call-free so that the loops around it vectorize; a NaN
 * stays a NaN through the polynomial. */
static inline float mp_expf(float x)
{
    /* Round to nearest through the 1.5 * 2^23 trick (no rintf: SSE2 has no vector round). */
    float kf = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = fmaf(kf, -0.693359375f, x);
    r = fmaf(kf, 2.12194440e-4f, r);
    /* Estrin's scheme: a short dependency chain, so iterations overlap. */
    float r2 = r * r;
    float u0 = fmaf(1.6666665459e-1f, r, 5.0000001201e-1f);
    float u1 = fmaf(8.3334519073e-3f, r, 4.1665795894e-2f);
    float u2 = fmaf(1.9875691500e-4f, r, 1.3981999507e-3f);
    float w = fmaf(fmaf(u2, r2, u1), r2, u0);
    float p = fmaf(w, r2, r) + 1.0f;
    union {
        int32_t i;
        float f;
    } scale;
    int32_t k = (int32_t)kf;
    k = k > -126 ? k : -126;
    k = k < 127 ? k : 127;
    scale.i = (k + 127) * (1 << 23);
    return p * scale.f;
}

/* Polynomial part of erfc's Chebyshev fit (Numerical Recipes' erfcc,
 * fractional error < 1.2e-7): erfc(z) = t exp(-z^2 + P(t)), t = 1/(1+z/2), z >= 0. */
static inline float erfc_poly(float t)
{
    /* Estrin's scheme (depth 4 instead of Horner's 9). */
    float t2 = t * t, t4 = t2 * t2, t8 = t4 * t4;
    float q0 = fmaf(1.00002368f, t, -1.26551223f);
    float q1 = fmaf(0.09678418f, t, 0.37409196f);
    float q2 = fmaf(0.27886807f, t, -0.18628806f);
    float q3 = fmaf(1.48851587f, t, -1.13520398f);
    float q4 = fmaf(0.17087277f, t, -0.82215223f);
    float r0 = fmaf(q1, t2, q0);
    float r1 = fmaf(q3, t2, q2);
    return fmaf(q4, t8, fmaf(r1, t4, r0));
}

#define MP_SQRT1_2 0.70710678118654752f
#define MP_INV_SQRT_2PI 0.39894228040143268f

/* gelu(x) = 0.5 x (1 + erf(x/sqrt2)) = x * Phi(x), with Phi(x) = erfc(-x/sqrt2)/2
 * evaluated directly, so that the negative tail keeps its relative accuracy
 * (1 + erf(x) would cancel there). */
MP_KERNEL static void k_gelu_fwd(float *restrict y, const float *restrict x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float xi = x[i];
        float z = fabsf(xi) * MP_SQRT1_2;
        float t = 1.0f / (1.0f + 0.5f * z);
        float tail = 0.5f * t * mp_expf(erfc_poly(t) - z * z); /* erfc(z)/2 = Phi(-|x|) */
        float phi_cdf = xi < 0.0f ? tail : 1.0f - tail;
        y[i] = xi * phi_cdf;
    }
}

/* gelu'(x) = Phi(x) + x phi(x), phi(x) = exp(-x^2/2)/sqrt(2 pi). */
MP_KERNEL static void k_gelu_bwd(float *restrict dx, const float *restrict x,
                                 const float *restrict dy, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float xi = x[i];
        float z = fabsf(xi) * MP_SQRT1_2;
        float t = 1.0f / (1.0f + 0.5f * z);
        float g = mp_expf(-z * z); /* exp(-x^2/2) */
        float tail = 0.5f * t * g * mp_expf(erfc_poly(t));
        float phi_cdf = xi < 0.0f ? tail : 1.0f - tail;
        float d = phi_cdf + xi * (MP_INV_SQRT_2PI * g);
        dx[i] += dy[i] * d;
    }
}

static mp_status_t cpu_check_vec(const char *op, int64_t n, const void *a, const void *b,
                                 const void *c)
{
    if (n < 0) {
        return cpu_inval(op, "negative length");
    }
    if (n > 0 && (a == NULL || b == NULL || c == NULL)) {
        return cpu_inval(op, "NULL buffer");
    }
    return MP_OK;
}

/* The element-wise ops share one shape: check the vectors, split the
 * range over the backend's threads, run the kernel on each part. */
typedef void (*k_unary_t)(float *restrict, const float *restrict, int64_t);
typedef void (*k_binary_t)(float *restrict, const float *restrict, const float *restrict,
                           int64_t);

static mp_status_t cpu_map_unary(mp_backend_t *be, const char *op, k_unary_t k, float *y,
                                 const float *x, int64_t n)
{
    mp_status_t st = cpu_check_vec(op, n, y, x, x);
    if (st != MP_OK) {
        return st;
    }
    int nt = cpu_par_threads(be, n);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int64_t lo, hi;
        cpu_thread_range(n, 16, &lo, &hi);
        k(y + lo, x + lo, hi - lo);
    }
    return MP_OK;
}

static mp_status_t cpu_map_binary(mp_backend_t *be, const char *op, k_binary_t k, float *dx,
                                  const float *x, const float *dy, int64_t n)
{
    mp_status_t st = cpu_check_vec(op, n, dx, x, dy);
    if (st != MP_OK) {
        return st;
    }
    int nt = cpu_par_threads(be, n);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int64_t lo, hi;
        cpu_thread_range(n, 16, &lo, &hi);
        k(dx + lo, x + lo, dy + lo, hi - lo);
    }
    return MP_OK;
}

static mp_status_t cpu_gelu_fwd(mp_backend_t *be, float *y, const float *x, int64_t n)
{
    return cpu_map_unary(be, "gelu_fwd", k_gelu_fwd, y, x, n);
}

static mp_status_t cpu_gelu_bwd(mp_backend_t *be, float *dx, const float *x, const float *dy,
                                int64_t n)
{
    return cpu_map_binary(be, "gelu_bwd", k_gelu_bwd, dx, x, dy, n);
}

/* ---- ReLU, axpy, bias ------------------------------------------------ */

MP_KERNEL static void k_relu_fwd(float *restrict y, const float *restrict x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        y[i] = x[i] < 0.0f ? 0.0f : x[i]; /* a NaN passes through, as in torch.relu */
    }
}

MP_KERNEL static void k_relu_bwd(float *restrict dx, const float *restrict x,
                                 const float *restrict dy, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        dx[i] += x[i] > 0.0f ? dy[i] : 0.0f;
    }
}

MP_KERNEL static void k_axpy(float *restrict y, float alpha, const float *restrict x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        y[i] += alpha * x[i];
    }
}

MP_KERNEL static void k_bias_add(float *restrict y, const float *restrict b, int64_t rows,
                                 int64_t cols)
{
    for (int64_t r = 0; r < rows; r++) {
        float *restrict yr = y + r * cols;
        for (int64_t c = 0; c < cols; c++) {
            yr[c] += b[c];
        }
    }
}

static mp_status_t cpu_relu_fwd(mp_backend_t *be, float *y, const float *x, int64_t n)
{
    return cpu_map_unary(be, "relu_fwd", k_relu_fwd, y, x, n);
}

static mp_status_t cpu_relu_bwd(mp_backend_t *be, float *dx, const float *x, const float *dy,
                                int64_t n)
{
    return cpu_map_binary(be, "relu_bwd", k_relu_bwd, dx, x, dy, n);
}

static mp_status_t cpu_axpy(mp_backend_t *be, float *y, float alpha, const float *x, int64_t n)
{
    mp_status_t st = cpu_check_vec("axpy", n, y, x, x);
    if (st != MP_OK) {
        return st;
    }
    int nt = cpu_par_threads(be, n);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int64_t lo, hi;
        cpu_thread_range(n, 16, &lo, &hi);
        k_axpy(y + lo, alpha, x + lo, hi - lo);
    }
    return MP_OK;
}

static mp_status_t cpu_bias_add(mp_backend_t *be, float *y, const float *b, int64_t rows,
                                int64_t cols)
{
    if (rows < 0 || cols < 0) {
        return cpu_inval("bias_add", "negative dimension");
    }
    if (rows == 0 || cols == 0) {
        return MP_OK;
    }
    if (y == NULL || b == NULL) {
        return cpu_inval("bias_add", "NULL buffer");
    }
    int nt = cpu_par_threads(be, rows * cols);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int64_t lo, hi;
        cpu_thread_range(rows, 1, &lo, &hi);
        if (lo < hi) {
            k_bias_add(y + lo * cols, b, hi - lo, cols);
        }
    }
    return MP_OK;
}

/* ---- softmax cross-entropy ------------------------------------------- */

static mp_status_t cpu_check_labels(const char *op, const int32_t *labels, int64_t B, int64_t C)
{
    for (int64_t r = 0; r < B; r++) {
        if (labels[r] < 0 || labels[r] >= C) {
            mp_err("cpu backend: %s: label %d of row %lld is outside [0, %lld)", op,
                   (int)labels[r], (long long)r, (long long)C);
            return MP_ERR_INVAL;
        }
    }
    return MP_OK;
}

/* Rows are independent and cheap next to the GEMMs that produce them, so
 * this runs on the calling thread: the loss sum is then the same double
 * sum, in row order, whatever the backend's thread count. */
static mp_status_t cpu_xent_fwd(mp_backend_t *be, float *probs, const float *logits,
                                const int32_t *labels, int64_t B, int64_t C,
                                double *loss_sum_host, int64_t *correct_host)
{
    if (B < 0 || C < 1) {
        return cpu_inval("xent_fwd", "need B >= 0 and C >= 1");
    }
    if (B > 0 && (probs == NULL || logits == NULL || labels == NULL)) {
        return cpu_inval("xent_fwd", "NULL buffer");
    }
    mp_status_t st = cpu_check_labels("xent_fwd", labels, B, C);
    if (st != MP_OK) {
        return st;
    }
    double loss = 0.0;
    int64_t correct = 0;
    for (int64_t r = 0; r < B; r++) {
        const float *l = logits + r * C;
        float *p = probs + r * C;
        int64_t arg = 0;
        float mx = l[0];
        for (int64_t c = 1; c < C; c++) {
            if (l[c] > mx) {
                mx = l[c];
                arg = c;
            }
        }
        float sum = 0.0f;
        for (int64_t c = 0; c < C; c++) {
            p[c] = expf(l[c] - mx);
            sum += p[c];
        }
        float inv = 1.0f / sum;
        for (int64_t c = 0; c < C; c++) {
            p[c] *= inv;
        }
        /* -log softmax[label] = log(sum) - (l[label] - max), in double. */
        loss += log((double)sum) - ((double)l[labels[r]] - (double)mx);
        correct += arg == labels[r];
    }
    if (loss_sum_host != NULL) {
        *loss_sum_host = loss;
    }
    if (correct_host != NULL) {
        *correct_host = correct;
    }
    return MP_OK;
}

static mp_status_t cpu_xent_bwd(mp_backend_t *be, float *dlogits, const float *probs,
                                const int32_t *labels, int64_t B, int64_t C, float scale)
{
    if (B < 0 || C < 1) {
        return cpu_inval("xent_bwd", "need B >= 0 and C >= 1");
    }
    if (B > 0 && (probs == NULL || dlogits == NULL || labels == NULL)) {
        return cpu_inval("xent_bwd", "NULL buffer");
    }
    mp_status_t st = cpu_check_labels("xent_bwd", labels, B, C);
    if (st != MP_OK) {
        return st;
    }
    for (int64_t r = 0; r < B; r++) {
        const float *p = probs + r * C;
        float *d = dlogits + r * C;
        for (int64_t c = 0; c < C; c++) {
            float onehot = c == labels[r] ? 1.0f : 0.0f;
            d[c] += scale * (p[c] - onehot);
        }
    }
    return MP_OK;
}

/* ---- optimizers ------------------------------------------------------ */

/* The steps' scalars come from gpu/optim_scalars.h, shared with the CUDA backend. */

typedef struct {
    float wd, momentum, one_minus_damp, neg_lr;
    int first, nesterov;
} sgd_consts_t;

/* _single_tensor_sgd: d_p = grad.add(p, alpha=wd); buf.mul_(m).add_(d_p, alpha=1-damp)
 * (buf = d_p on the first step); d_p = d_p.add(buf, alpha=m) or buf; p.add_(d_p, alpha=-lr).
 * ATen's add with alpha is a fused multiply-add on CPU. */
MP_KERNEL static void k_sgd(float *restrict p, const float *restrict grad, float *restrict buf,
                            int64_t n, sgd_consts_t k)
{
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i];
        if (k.wd != 0.0f) {
            g = fmaf(p[i], k.wd, g);
        }
        if (k.momentum != 0.0f) {
            float b = k.first ? g : fmaf(g, k.one_minus_damp, buf[i] * k.momentum);
            buf[i] = b;
            g = k.nesterov ? fmaf(b, k.momentum, g) : b;
        }
        p[i] = fmaf(g, k.neg_lr, p[i]);
    }
}

static mp_status_t cpu_sgd_step(mp_backend_t *be, float *p, const float *grad, float *buf,
                                int64_t n, const mp_optim_hp_t *hp)
{
    if (hp == NULL || hp->step < 1) {
        return cpu_inval("sgd_step", "missing hyper-parameters or step < 1");
    }
    if (hp->momentum != 0.0f && n > 0 && buf == NULL) {
        return cpu_inval("sgd_step", "momentum needs a buffer");
    }
    if (hp->nesterov && (hp->momentum <= 0.0f || hp->dampening != 0.0f)) {
        return cpu_inval("sgd_step", "nesterov needs momentum > 0 and dampening 0");
    }
    mp_status_t st = cpu_check_vec("sgd_step", n, p, grad, grad);
    if (st != MP_OK) {
        return st;
    }
    sgd_consts_t k = {
        .wd = hp->weight_decay,
        .momentum = hp->momentum,
        .one_minus_damp = mp_optim_sgd_one_minus_damp(hp),
        .neg_lr = -hp->lr,
        .first = hp->step == 1,
        .nesterov = hp->nesterov,
    };
    int nt = cpu_par_threads(be, n);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int64_t lo, hi;
        cpu_thread_range(n, 16, &lo, &hi);
        k_sgd(p + lo, grad + lo, buf != NULL ? buf + lo : NULL, hi - lo, k);
    }
    return MP_OK;
}

/* _single_tensor_adamw (torch 1.13, foreach off as on CPU):
 *   p.mul_(1 - lr*wd); m.mul_(b1).add_(g, alpha=1-b1); v.mul_(b2).addcmul_(g, g, value=1-b2);
 *   denom = (v.sqrt() / sqrt(bc2)).add_(eps); p.addcdiv_(m, denom, value=-lr/bc1)
 * with ATen's CPU rounding: add_ = fma(g, alpha, m*b1), addcmul_ = fma(value*g, g, v),
 * addcdiv_ = p + (value*m)/denom, written p - (step_size*m)/denom (the same bits:
 * negation is exact). */
MP_KERNEL static void k_adamw(float *restrict p, const float *restrict grad, float *restrict m,
                              float *restrict v, int64_t n, mp_optim_adamw_scalars_t k)
{
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i];
        float pi = p[i] * k.decay;
        float mi = fmaf(g, k.one_minus_beta1, m[i] * k.beta1);
        float vi = fmaf(k.one_minus_beta2 * g, g, v[i] * k.beta2);
        float denom = sqrtf(vi) / k.bc2_sqrt + k.eps;
        p[i] = pi - (k.step_size * mi) / denom;
        m[i] = mi;
        v[i] = vi;
    }
}

static mp_status_t cpu_adamw_step(mp_backend_t *be, float *p, const float *grad, float *m,
                                  float *v, int64_t n, const mp_optim_hp_t *hp)
{
    if (hp == NULL || hp->step < 1) {
        return cpu_inval("adamw_step", "missing hyper-parameters or step < 1");
    }
    mp_status_t st = cpu_check_vec("adamw_step", n, p, grad, grad);
    if (st == MP_OK) {
        st = cpu_check_vec("adamw_step", n, m, v, v);
    }
    if (st != MP_OK) {
        return st;
    }
    mp_optim_adamw_scalars_t k = mp_optim_adamw_scalars(hp);
    int nt = cpu_par_threads(be, n);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int64_t lo, hi;
        cpu_thread_range(n, 16, &lo, &hi);
        k_adamw(p + lo, grad + lo, m + lo, v + lo, hi - lo, k);
    }
    return MP_OK;
}

/* ---- the table ------------------------------------------------------- */

static void cpu_destroy(mp_backend_t *be)
{
    cpu_backend_t *cb = (cpu_backend_t *)be;
    mp_free(cb->wpad);
    mp_free(cb);
}

static const mp_backend_ops_t cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .copy = cpu_copy,
    .zero = cpu_zero,
    .sync = cpu_sync,
    .gemm = cpu_gemm,
    .linear_fwd = cpu_linear_fwd,
    .linear_bwd = cpu_linear_bwd,
    .gelu_fwd = cpu_gelu_fwd,
    .gelu_bwd = cpu_gelu_bwd,
    .relu_fwd = cpu_relu_fwd,
    .relu_bwd = cpu_relu_bwd,
    .axpy = cpu_axpy,
    .bias_add = cpu_bias_add,
    .xent_fwd = cpu_xent_fwd,
    .xent_bwd = cpu_xent_bwd,
    .sgd_step = cpu_sgd_step,
    .adamw_step = cpu_adamw_step,
};

mp_status_t mp_backend_cpu_create(int threads, mp_backend_t **be_p)
{
    if (threads < 1 || be_p == NULL) {
        return cpu_inval("create", "threads must be >= 1");
    }
    pthread_once(&cpu_dnnl_once, cpu_dnnl_load);
    if (cpu_sgemm == NULL) {
        mp_err("cpu backend: cannot load oneDNN (Debian package libdnnl2): %s", cpu_dnnl_error);
        return MP_ERR_UNSUPPORTED;
    }
    cpu_backend_t *cb = mp_calloc(1, sizeof *cb);
    if (cb == NULL) {
        mp_err("cpu backend: cannot allocate the backend");
        return MP_ERR_NOMEM;
    }
    cb->base.ops = &cpu_ops;
    cb->base.kind = MP_BACKEND_CPU;
    cb->base.device = 0;
    cb->base.threads = threads;
    *be_p = &cb->base;
    return MP_OK;
}
