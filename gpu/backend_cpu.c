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
 *
 * Sequence layers (embedding, positions, LayerNorm, causal attention,
 * vocab-parallel cross-entropy) are plain C kernels too: rows, (batch,
 * head) pairs or column ranges split over the threads, every reduction in
 * a fixed order, so that they also give the same bits for any thread
 * count.  Attention is fused per (batch, head) pair in register tiles
 * (see "causal self-attention"); the softmaxes use mp_expf.
 */
#include <dlfcn.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif
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
#include "gpu/seq_args.h"

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

/* Row strides that oneDNN 2.6's AVX2 sgemm reads slowly, and the padding
 * that cures them (see cpu_gemm_pad). */
#define MP_CPU_PAD_NN_ALIGN 512 /* N,N: B's stride a multiple of 2 KiB */
#define MP_CPU_PAD_NN_MAX_M 512 /* ... when oneDNN does not pack B itself */
#define MP_CPU_PAD_NN_SMALL_M 64 /* ... see cpu_gemm_pad_nn_b */
#define MP_CPU_PAD_TN_ALIGN 64  /* T,N: either stride a multiple of 256 bytes */
#define MP_CPU_PAD 16

#define MP_CPU_MAX_HELD 8 /* parameter ranges a backend caches copies of */

/* A padded copy of a weight matrix inside a held range (cpu_gemm_pad_held). */
typedef struct {
    const float *src;
    int64_t rows, cols, lds;
    float *pad; /* [rows, cols + MP_CPU_PAD] */
    bool valid; /* false once an op wrote into src */
} cpu_wcopy_t;

typedef struct {
    mp_backend_t base;
    float *pad[2];      /* cpu_gemm's padded copies of A and B */
    size_t pad_cap[2];  /* their capacities in floats */
    const char *held_lo[MP_CPU_MAX_HELD], *held_hi[MP_CPU_MAX_HELD]; /* params_hold ranges */
    int nheld;
    cpu_wcopy_t *wcopy; /* padded weights of the held ranges */
    int nwcopy, wcopy_cap;
    float *scratch;     /* the attention kernels' per-thread work space */
    size_t scratch_cap; /* its capacity in floats */
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

/* Whether weight copy w was made from memory in [dst, dst + bytes). */
static bool wcopy_overlaps(const cpu_wcopy_t *w, const void *dst, size_t bytes)
{
    const char *lo = dst, *hi = lo + bytes;
    const char *a = (const char *)w->src;
    const char *b = (const char *)(w->src + (w->rows - 1) * w->lds + w->cols);
    return a < hi && lo < b;
}

/* An op is about to write [dst, dst + bytes): copies made from there are stale. */
static void cpu_wrote(mp_backend_t *be, const void *dst, size_t bytes)
{
    cpu_backend_t *cb = (cpu_backend_t *)be;
    for (int i = 0; i < cb->nwcopy; i++) {
        if (wcopy_overlaps(&cb->wcopy[i], dst, bytes)) {
            cb->wcopy[i].valid = false;
        }
    }
}

static void cpu_params_hold(mp_backend_t *be, const void *ptr, size_t bytes)
{
    cpu_backend_t *cb = (cpu_backend_t *)be;
    if (ptr != NULL && bytes > 0 && cb->nheld < MP_CPU_MAX_HELD) {
        cb->held_lo[cb->nheld] = ptr;
        cb->held_hi[cb->nheld] = (const char *)ptr + bytes;
        cb->nheld++;
    }
}

static void cpu_params_release(mp_backend_t *be, const void *ptr)
{
    cpu_backend_t *cb = (cpu_backend_t *)be;
    for (int h = 0; h < cb->nheld; h++) {
        if (cb->held_lo[h] != ptr) {
            continue;
        }
        const char *lo = cb->held_lo[h], *hi = cb->held_hi[h];
        int k = 0;
        for (int i = 0; i < cb->nwcopy; i++) {
            const char *a = (const char *)cb->wcopy[i].src;
            if (a >= lo && a < hi) {
                mp_free(cb->wcopy[i].pad);
            } else {
                cb->wcopy[k++] = cb->wcopy[i];
            }
        }
        cb->nwcopy = k;
        cb->held_lo[h] = cb->held_lo[cb->nheld - 1];
        cb->held_hi[h] = cb->held_hi[cb->nheld - 1];
        cb->nheld--;
        return;
    }
}

static bool cpu_is_held(const cpu_backend_t *cb, const float *X, int64_t rows, int64_t cols,
                        int64_t ld)
{
    const char *a = (const char *)X, *b = (const char *)(X + (rows - 1) * ld + cols);
    for (int h = 0; h < cb->nheld; h++) {
        if (a >= cb->held_lo[h] && b <= cb->held_hi[h]) {
            return true;
        }
    }
    return false;
}

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
    cpu_wrote(be, dst, bytes);
    return cpu_memmove("upload", dst, src_host, bytes);
}

static mp_status_t cpu_download(mp_backend_t *be, void *dst_host, const void *src, size_t bytes)
{
    return cpu_memmove("download", dst_host, src, bytes);
}

static mp_status_t cpu_copy(mp_backend_t *be, void *dst, const void *src, size_t bytes)
{
    cpu_wrote(be, dst, bytes);
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
    cpu_wrote(be, dst, bytes);
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
static pthread_once_t cpu_isa_once = PTHREAD_ONCE_INIT;
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

static void k_copy_rows(float *restrict dst, int64_t ldd, const float *restrict src, int64_t lds,
                        int64_t rows, int64_t cols)
{
    for (int64_t r = 0; r < rows; r++) {
        memcpy(dst + r * ldd, src + r * lds, (size_t)cols * sizeof(float));
    }
}

/* An optimizer step has written [dst, dst + bytes): the padded copies made
 * from there are made again now, inside the step, rather than by the next
 * step's first GEMM that reads one.  The work is the same; but under a
 * pipeline the last stage's optimizer step runs while the first stage is
 * still busy, so there it is off the critical path, and its first forward
 * (on it) is not. */
static void cpu_refresh(mp_backend_t *be, const void *dst, size_t bytes)
{
    cpu_backend_t *cb = (cpu_backend_t *)be;
    for (int i = 0; i < cb->nwcopy; i++) {
        cpu_wcopy_t *w = &cb->wcopy[i];
        if (!w->valid && wcopy_overlaps(w, dst, bytes)) {
            k_copy_rows(w->pad, w->cols + MP_CPU_PAD, w->src, w->lds, w->rows, w->cols);
            w->valid = true;
        }
    }
}

/*
 * oneDNN 2.6's AVX2 sgemm reads some operands in place, down their columns,
 * and a row stride that is a multiple of a few KiB then maps every row to the
 * same L1 sets (4K aliasing): 30-40 GFLOP/s instead of 70-90 on this
 * machine's Zen 3 cores.  Measured on one thread (min of 25 runs, copy
 * included), the operands it hurts are
 *   - N,N: B (the weights of every forward) with a stride of 512 floats or a
 *     multiple (1024-wide layers: 35 -> 72 GFLOP/s at 32 rows), while M is at
 *     most 512 rows; above that oneDNN packs B itself and a copy only costs.
 *     At a stride of 512 the gain is smaller (1.25-1.45x) and a copy of a
 *     deep B is not repaid by a few rows (32 x 2048 x 512: 0.94x with the
 *     copy), so there it takes M >= 64 or K <= 512 (cpu_gemm_pad_nn_b);
 *   - T,N (every weight gradient, dW = X^T dZ): A and B, both activations,
 *     at any stride that is a multiple of 64 floats (1.05-1.15x at 128 and
 *     256, 1.3-2.3x at 512 and more); the copy is one pass over operands
 *     that the GEMM reads N or M times;
 *   - N,T (every input gradient) reads both along their rows: never.
 * The copy goes to a stride padded by MP_CPU_PAD floats, in a buffer the
 * backend keeps (which = 0 for A, 1 for B).  Only the speed depends on it:
 * the same shape always takes the same path, so the bits do not change
 * from run to run.
 */
static const float *cpu_gemm_pad(cpu_backend_t *cb, int which, const float *X, int64_t rows,
                                 int64_t cols, int64_t *ld_p)
{
    int64_t ld = cols + MP_CPU_PAD;
    size_t need = (size_t)(rows * ld);
    if (rows < 2) {
        return X;
    }
    if (need > cb->pad_cap[which]) {
        float *p = mp_aligned_alloc(need * sizeof(float));
        if (p == NULL) {
            /* Slower but correct: keep the caller's layout. */
            return X;
        }
        mp_free(cb->pad[which]);
        cb->pad[which] = p;
        cb->pad_cap[which] = need;
    }
    k_copy_rows(cb->pad[which], ld, X, *ld_p, rows, cols);
    *ld_p = ld;
    return cb->pad[which];
}

/*
 * The padded copy of a weight in a held range (params_hold): made on first
 * use and kept until an op writes into the weight, so that the
 * micro-batches of a step share one copy; an optimizer step makes it again
 * at its end (cpu_refresh), other writers leave it to the next use.  With
 * `create` false only an existing valid copy is returned.  NULL when there
 * is none (or no memory for one: the caller then copies as for any operand).
 */
static const float *cpu_gemm_pad_held(cpu_backend_t *cb, const float *X, int64_t rows,
                                      int64_t cols, int64_t *ld_p, bool create)
{
    cpu_wcopy_t *w = NULL;
    for (int i = 0; i < cb->nwcopy && w == NULL; i++) {
        cpu_wcopy_t *c = &cb->wcopy[i];
        if (c->src == X && c->rows == rows && c->cols == cols && c->lds == *ld_p) {
            w = c;
        }
    }
    if (w == NULL || !w->valid) {
        if (!create) {
            return NULL;
        }
        if (w == NULL) {
            if (cb->nwcopy == cb->wcopy_cap) {
                int cap = cb->wcopy_cap > 0 ? 2 * cb->wcopy_cap : 16;
                cpu_wcopy_t *n = mp_realloc(cb->wcopy, (size_t)cap * sizeof(*n));
                if (n == NULL) {
                    return NULL;
                }
                cb->wcopy = n;
                cb->wcopy_cap = cap;
            }
            float *pad = mp_aligned_alloc((size_t)(rows * (cols + MP_CPU_PAD)) * sizeof(float));
            if (pad == NULL) {
                return NULL;
            }
            w = &cb->wcopy[cb->nwcopy++];
            *w = (cpu_wcopy_t){.src = X, .rows = rows, .cols = cols, .lds = *ld_p, .pad = pad};
        }
        k_copy_rows(w->pad, cols + MP_CPU_PAD, X, *ld_p, rows, cols);
        w->valid = true;
    }
    *ld_p = cols + MP_CPU_PAD;
    return w->pad;
}

/* Whether an N,N product copies its B (cpu_gemm_pad's table). */
static bool cpu_gemm_pad_nn_b(int64_t M, int64_t K, int64_t ldb)
{
    if (ldb % MP_CPU_PAD_NN_ALIGN != 0 || M > MP_CPU_PAD_NN_MAX_M) {
        return false;
    }
    return ldb % (2 * MP_CPU_PAD_NN_ALIGN) == 0 || M >= MP_CPU_PAD_NN_SMALL_M ||
           K <= MP_CPU_PAD_NN_ALIGN;
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
    cpu_backend_t *cb = (cpu_backend_t *)be;
    int64_t a_rows = ta == MP_OP_N ? M : K, b_rows = tb == MP_OP_N ? K : N;
    if (ta == MP_OP_T && tb == MP_OP_N && lda % MP_CPU_PAD_TN_ALIGN == 0) {
        A = cpu_gemm_pad(cb, 0, A, a_rows, a_cols, &lda);
    }
    bool held = cpu_is_held(cb, Bm, b_rows, b_cols, ldb);
    const float *Bh = NULL;
    if (held && tb == MP_OP_N && ta == MP_OP_N && ldb % MP_CPU_PAD_NN_ALIGN == 0 &&
        M <= MP_CPU_PAD_NN_MAX_M) {
        /* A weight: one copy serves every micro-batch until the next step. */
        Bh = cpu_gemm_pad_held(cb, Bm, b_rows, b_cols, &ldb, true);
    } else if (held && tb == MP_OP_T && ldb % MP_CPU_PAD_NN_ALIGN == 0) {
        /* The input gradient's W^T: N,T is never slow, but reads the padded
         * copy the forward made a little faster (1.15x at 1024 wide). */
        Bh = cpu_gemm_pad_held(cb, Bm, b_rows, b_cols, &ldb, false);
    }
    if (Bh != NULL) {
        Bm = Bh;
    } else if (tb == MP_OP_N && (ta == MP_OP_N ? cpu_gemm_pad_nn_b(M, K, ldb)
                                               : ldb % MP_CPU_PAD_TN_ALIGN == 0)) {
        Bm = cpu_gemm_pad(cb, 1, Bm, b_rows, b_cols, &ldb);
    }
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

static mp_status_t cpu_linear_fwd(mp_backend_t *be, float *Z, const float *X, const float *W,
                                  const float *b, int64_t B, int64_t I, int64_t O)
{
    if (B < 0 || I < 0 || O < 0) {
        return cpu_inval("linear_fwd", "negative dimension");
    }
    if (B > 0 && O > 0 && (Z == NULL || (I > 0 && (X == NULL || W == NULL)))) {
        return cpu_inval("linear_fwd", "NULL matrix");
    }
    float beta = 0.0f;
    if (b != NULL && B > 0 && O > 0) {
        /* The bias rides in C with beta = 1: one pass over Z, not two. */
        k_fill_rows(Z, b, B, O);
        beta = 1.0f;
    }
    return cpu_gemm(be, MP_OP_N, MP_OP_N, B, O, I, 1.0f, X, I > 0 ? I : 1, W, O > 0 ? O : 1, beta,
                    Z, O > 0 ? O : 1);
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
typedef void (*k_binary_t)(float *restrict, const float *restrict, const float *restrict, int64_t);

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
            mp_err("cpu backend: %s: label %d of row %lld is outside [0, %lld)", op, (int)labels[r],
                   (long long)r, (long long)C);
            return MP_ERR_INVAL;
        }
    }
    return MP_OK;
}

/* Rows are independent and cheap next to the GEMMs that produce them, so
 * this runs on the calling thread: the loss sum is then the same double
 * sum, in row order, whatever the backend's thread count. */
static mp_status_t cpu_xent_fwd(mp_backend_t *be, float *probs, const float *logits,
                                const int32_t *labels, int64_t B, int64_t C, double *loss_sum_host,
                                int64_t *correct_host)
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

/* ---- sequence layers ------------------------------------------------- */

/* Reductions over a row use eight interleaved lanes (element i in lane
 * i % 8), added in a fixed tree at the end: the same order on every call
 * and for every thread count.  The lanes are a GCC vector (AVX in the
 * x86-64-v3 clone, two SSE halves in the default one; no contraction in
 * either, so both give the same bits): GCC's vectorizer turns an array of
 * eight accumulators into shuffles instead. */
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

/* Macros, not functions: a function taking or returning v8f has a
 * different ABI in the two clones (GCC's -Wpsabi). */
#define V8_SPLAT(x) ((v8f){(x), (x), (x), (x), (x), (x), (x), (x)})
#define V8_LOAD(v, p) memcpy(&(v), (p), sizeof(v8f))

static inline float v8_total(const v8f *a)
{
    return (((*a)[0] + (*a)[1]) + ((*a)[2] + (*a)[3])) +
           (((*a)[4] + (*a)[5]) + ((*a)[6] + (*a)[7]));
}

static inline float k_sum_lanes(const float *restrict x, int64_t n)
{
    v8f acc = V8_SPLAT(0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        v8f v;
        V8_LOAD(v, x + i);
        acc += v;
    }
    for (int l = 0; i + l < n; l++) {
        acc[l] += x[i + l];
    }
    return v8_total(&acc);
}

/* sum of (x - m)^2: the second pass of a two-pass variance. */
static inline float k_sqdev_lanes(const float *restrict x, float m, int64_t n)
{
    v8f acc = V8_SPLAT(0.0f), mv = V8_SPLAT(m);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        v8f d;
        V8_LOAD(d, x + i);
        d -= mv;
        acc += d * d;
    }
    for (int l = 0; i + l < n; l++) {
        float d = x[i + l] - m;
        acc[l] += d * d;
    }
    return v8_total(&acc);
}

static inline float k_dot_lanes(const float *restrict a, const float *restrict b, int64_t n)
{
    v8f acc = V8_SPLAT(0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        v8f va, vb;
        V8_LOAD(va, a + i);
        V8_LOAD(vb, b + i);
        acc += va * vb;
    }
    for (int l = 0; i + l < n; l++) {
        acc[l] += a[i + l] * b[i + l];
    }
    return v8_total(&acc);
}

/* Max of x[0..n), n >= 1; a NaN is skipped (it then poisons the exp sum). */
static inline float k_max_lanes(const float *restrict x, int64_t n)
{
    v8f acc = V8_SPLAT(x[0]);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        v8f v;
        V8_LOAD(v, x + i);
        v8i gt = v > acc;
        acc = (v8f)(((v8i)v & gt) | ((v8i)acc & ~gt));
    }
    for (int l = 0; i + l < n; l++) {
        acc[l] = x[i + l] > acc[l] ? x[i + l] : acc[l];
    }
    float m = acc[0];
    for (int l = 1; l < 8; l++) {
        m = acc[l] > m ? acc[l] : m;
    }
    return m;
}

/* Refuses a call that gpu/seq_args.h finds wrong (the same rules as CUDA). */
#define CPU_SEQ_CHECK(op, check) MP_SEQ_REFUSE_IF(cpu_inval, op, check)

/* Row of the vocab shard [v0, v0 + Vl) that token id `f` selects, or -1.
 * The comparison runs before the conversion, so a NaN or a huge value
 * never reaches the (undefined) float-to-integer cast. */
static inline int64_t embed_row(float f, int64_t v0, int64_t Vl)
{
    double d = (double)f;
    if (!(d >= (double)v0 && d < (double)(v0 + Vl))) {
        return -1;
    }
    return (int64_t)d - v0;
}

static void k_embed_fwd(float *restrict y, const float *restrict ids, const float *restrict tok,
                        int64_t r0, int64_t r1, int64_t C, int64_t v0, int64_t Vl)
{
    for (int64_t r = r0; r < r1; r++) {
        int64_t v = embed_row(ids[r], v0, Vl);
        if (v < 0) {
            memset(y + r * C, 0, (size_t)C * sizeof(float));
        } else {
            memcpy(y + r * C, tok + v * C, (size_t)C * sizeof(float));
        }
    }
}

static mp_status_t cpu_embed_fwd(mp_backend_t *be, float *y, const float *ids, const float *tok,
                                 int64_t R, int64_t C, int64_t v0, int64_t Vl)
{
    CPU_SEQ_CHECK("embed_fwd", mp_seq_check_embed(R, C, v0, Vl, y, ids, tok));
    if (R == 0 || C == 0) {
        return MP_OK;
    }
    int nt = cpu_par_threads(be, R * C);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int64_t lo, hi;
        cpu_thread_range(R, 1, &lo, &hi);
        k_embed_fwd(y, ids, tok, lo, hi, C, v0, Vl);
    }
    return MP_OK;
}

/* Columns [c0, c1) of every selected row, rows in order: each dtok element
 * is the same sequence of additions whatever the thread count. */
MP_KERNEL static void k_embed_bwd(float *restrict dtok, const float *restrict dy,
                                  const float *restrict ids, int64_t R, int64_t C, int64_t v0,
                                  int64_t Vl, int64_t c0, int64_t c1)
{
    for (int64_t r = 0; r < R; r++) {
        int64_t v = embed_row(ids[r], v0, Vl);
        if (v < 0) {
            continue;
        }
        float *restrict d = dtok + v * C;
        const float *restrict g = dy + r * C;
        for (int64_t c = c0; c < c1; c++) {
            d[c] += g[c];
        }
    }
}

static mp_status_t cpu_embed_bwd(mp_backend_t *be, float *dtok, const float *dy, const float *ids,
                                 int64_t R, int64_t C, int64_t v0, int64_t Vl)
{
    CPU_SEQ_CHECK("embed_bwd", mp_seq_check_embed(R, C, v0, Vl, dy, ids, dtok));
    if (R == 0 || C == 0 || Vl == 0) {
        return MP_OK;
    }
    int nt = cpu_par_threads(be, R * C);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int64_t lo, hi;
        cpu_thread_range(C, 16, &lo, &hi);
        if (lo < hi) {
            k_embed_bwd(dtok, dy, ids, R, C, v0, Vl, lo, hi);
        }
    }
    return MP_OK;
}

MP_KERNEL static void k_pos_add(float *restrict y, const float *restrict pos, int64_t r0,
                                int64_t r1, int64_t T, int64_t C)
{
    for (int64_t r = r0; r < r1; r++) {
        float *restrict yr = y + r * C;
        const float *restrict p = pos + (r % T) * C;
        for (int64_t c = 0; c < C; c++) {
            yr[c] += p[c];
        }
    }
}

static mp_status_t cpu_pos_add(mp_backend_t *be, float *y, const float *pos, int64_t R, int64_t T,
                               int64_t C)
{
    CPU_SEQ_CHECK("pos_add", mp_seq_check_pos(R, T, C, y, pos));
    if (R == 0 || C == 0) {
        return MP_OK;
    }
    int nt = cpu_par_threads(be, R * C);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int64_t lo, hi;
        cpu_thread_range(R, 1, &lo, &hi);
        k_pos_add(y, pos, lo, hi, T, C);
    }
    return MP_OK;
}

/* dpos[t, :] for t in [t0, t1): the B rows of position t summed in batch
 * order per column tile, then added (the autograd order). */
MP_KERNEL static void k_pos_bwd(float *restrict dpos, const float *restrict dy, int64_t nb,
                                int64_t T, int64_t C, int64_t t0, int64_t t1)
{
    enum { TILE = 256 };
    float acc[TILE];
    for (int64_t t = t0; t < t1; t++) {
        for (int64_t cb = 0; cb < C; cb += TILE) {
            int64_t w = C - cb < TILE ? C - cb : TILE;
            for (int64_t j = 0; j < w; j++) {
                acc[j] = 0.0f;
            }
            for (int64_t b = 0; b < nb; b++) {
                const float *restrict row = dy + (b * T + t) * C + cb;
                for (int64_t j = 0; j < w; j++) {
                    acc[j] += row[j];
                }
            }
            float *restrict d = dpos + t * C + cb;
            for (int64_t j = 0; j < w; j++) {
                d[j] += acc[j];
            }
        }
    }
}

static mp_status_t cpu_pos_bwd(mp_backend_t *be, float *dpos, const float *dy, int64_t R, int64_t T,
                               int64_t C)
{
    CPU_SEQ_CHECK("pos_bwd", mp_seq_check_pos(R, T, C, dpos, dy));
    if (R == 0 || C == 0) {
        return MP_OK;
    }
    int nt = cpu_par_threads(be, R * C);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int64_t lo, hi;
        cpu_thread_range(T, 1, &lo, &hi);
        k_pos_bwd(dpos, dy, R / T, T, C, lo, hi);
    }
    return MP_OK;
}

/* ---- LayerNorm ------------------------------------------------------- */

/* Two-pass statistics in float (mean, then the mean squared deviation):
 * no cancellation when |mean| >> std, unlike E[x^2] - E[x]^2. */
MP_KERNEL static void k_layernorm_fwd(float *restrict y, float *restrict mean, float *restrict rstd,
                                      const float *restrict x, const float *restrict w,
                                      const float *restrict b, int64_t r0, int64_t r1, int64_t C,
                                      float eps)
{
    float fc = (float)C;
    for (int64_t r = r0; r < r1; r++) {
        const float *restrict xr = x + r * C;
        float *restrict yr = y + r * C;
        float m = k_sum_lanes(xr, C) / fc;
        float var = k_sqdev_lanes(xr, m, C) / fc;
        float rs = 1.0f / sqrtf(var + eps);
        for (int64_t c = 0; c < C; c++) {
            yr[c] = (xr[c] - m) * rs * w[c] + b[c];
        }
        mean[r] = m;
        rstd[r] = rs;
    }
}

static mp_status_t cpu_layernorm_fwd(mp_backend_t *be, float *y, float *mean, float *rstd,
                                     const float *x, const float *w, const float *b, int64_t R,
                                     int64_t C, float eps)
{
    CPU_SEQ_CHECK("layernorm_fwd", mp_seq_check_layernorm_fwd(y, mean, rstd, x, w, b, R, C, eps));
    if (R == 0) {
        return MP_OK;
    }
    int nt = cpu_par_threads(be, R * C);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int64_t lo, hi;
        cpu_thread_range(R, 1, &lo, &hi);
        k_layernorm_fwd(y, mean, rstd, x, w, b, lo, hi, C, eps);
    }
    return MP_OK;
}

/* dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w. */
MP_KERNEL static void k_layernorm_bwd_dx(float *restrict dx, const float *restrict dy,
                                         const float *restrict x, const float *restrict mean,
                                         const float *restrict rstd, const float *restrict w,
                                         int64_t r0, int64_t r1, int64_t C)
{
    float fc = (float)C;
    for (int64_t r = r0; r < r1; r++) {
        const float *restrict xr = x + r * C;
        const float *restrict gr = dy + r * C;
        float *restrict dr = dx + r * C;
        float m = mean[r], rs = rstd[r];
        v8f ag = V8_SPLAT(0.0f), agx = V8_SPLAT(0.0f);
        const v8f mv = V8_SPLAT(m), rv = V8_SPLAT(rs);
        int64_t c = 0;
        for (; c + 8 <= C; c += 8) {
            v8f g, wv, xv;
            V8_LOAD(g, gr + c);
            V8_LOAD(wv, w + c);
            V8_LOAD(xv, xr + c);
            g *= wv;
            ag += g;
            agx += g * ((xv - mv) * rv);
        }
        for (int l = 0; c + l < C; l++) {
            float g = gr[c + l] * w[c + l];
            ag[l] += g;
            agx[l] += g * ((xr[c + l] - m) * rs);
        }
        float mg = v8_total(&ag) / fc;
        float mgx = v8_total(&agx) / fc;
        for (c = 0; c < C; c++) {
            float xhat = (xr[c] - m) * rs;
            dr[c] += rs * (gr[c] * w[c] - mg - xhat * mgx);
        }
    }
}

/* dw[c0..c1) += sum_r dy * xhat, db[c0..c1) += sum_r dy, rows in order per
 * column tile (either output may be NULL). */
MP_KERNEL static void k_layernorm_bwd_dw(float *restrict dw, float *restrict db,
                                         const float *restrict dy, const float *restrict x,
                                         const float *restrict mean, const float *restrict rstd,
                                         int64_t R, int64_t C, int64_t c0, int64_t c1)
{
    enum { TILE = 128 };
    float aw[TILE], ab[TILE];
    for (int64_t cb = c0; cb < c1; cb += TILE) {
        int64_t n = c1 - cb < TILE ? c1 - cb : TILE;
        for (int64_t j = 0; j < n; j++) {
            aw[j] = 0.0f;
            ab[j] = 0.0f;
        }
        for (int64_t r = 0; r < R; r++) {
            const float *restrict xr = x + r * C + cb;
            const float *restrict gr = dy + r * C + cb;
            float m = mean[r], rs = rstd[r];
            for (int64_t j = 0; j < n; j++) {
                aw[j] += gr[j] * ((xr[j] - m) * rs);
                ab[j] += gr[j];
            }
        }
        if (dw != NULL) {
            for (int64_t j = 0; j < n; j++) {
                dw[cb + j] += aw[j];
            }
        }
        if (db != NULL) {
            for (int64_t j = 0; j < n; j++) {
                db[cb + j] += ab[j];
            }
        }
    }
}

static mp_status_t cpu_layernorm_bwd(mp_backend_t *be, float *dx, float *dw, float *db,
                                     const float *dy, const float *x, const float *mean,
                                     const float *rstd, const float *w, int64_t R, int64_t C)
{
    CPU_SEQ_CHECK("layernorm_bwd",
                  mp_seq_check_layernorm_bwd(dx, dw, db, dy, x, mean, rstd, w, R, C));
    if (R == 0) {
        return MP_OK;
    }
    int nt = cpu_par_threads(be, R * C);
    if (dx != NULL) {
#pragma omp parallel num_threads(nt) if (nt > 1)
        {
            int64_t lo, hi;
            cpu_thread_range(R, 1, &lo, &hi);
            k_layernorm_bwd_dx(dx, dy, x, mean, rstd, w, lo, hi, C);
        }
    }
    if (dw != NULL || db != NULL) {
#pragma omp parallel num_threads(nt) if (nt > 1)
        {
            int64_t lo, hi;
            cpu_thread_range(C, 16, &lo, &hi);
            if (lo < hi) {
                k_layernorm_bwd_dw(dw, db, dy, x, mean, rstd, R, C, lo, hi);
            }
        }
    }
    return MP_OK;
}

/* ---- causal self-attention ------------------------------------------- */

/* One (b, h) pair per task.  A pair's Q, K, V (and dO) are first packed
 * into the thread's scratch, zero-padded to Tp = T and Dp = D rounded up
 * to MK, with K (forward) or V (backward) transposed, so that every
 * product of the pair (S = QK^T, O = PV; dP = dO V^T, dQ = dS K,
 * dK = dS^T Q, dV = P^T dO) is a sequence of MK x MK register tiles over
 * contiguous rows: a small GEMM without a call, skipping the tiles above
 * the causal diagonal.  The scores never leave the core's cache.  A pair
 * is computed by the same code whatever thread runs it, so results do not
 * depend on the thread count; the tiles use fmaf, which both clones round
 * the same way. */

enum { MK = 8 }; /* register tile: MK rows x MK columns */

/* c[r, l] = sum over k in [k0, k1) of a[r*ars + k*aks] * b[k*ldb + l], for
 * r, l < MK, stored at c[r*ldc + l]: one fused multiply-add per term, in k
 * order.  With aks = 1, a is read by rows; with ars = 1, transposed (the
 * tile's rows are columns of a). */
typedef void (*mk_tile_fn_t)(float *restrict c, int64_t ldc, const float *restrict a, int64_t ars,
                             int64_t aks, const float *restrict b, int64_t ldb, int64_t k0,
                             int64_t k1);

/* Portable: fmaf rounds exactly as the FMA instruction does, so both
 * versions give the same bits. */
static void mk_tile_any(float *restrict c, int64_t ldc, const float *restrict a, int64_t ars,
                        int64_t aks, const float *restrict b, int64_t ldb, int64_t k0, int64_t k1)
{
    float acc[MK][MK];
    for (int r = 0; r < MK; r++) {
        for (int l = 0; l < MK; l++) {
            acc[r][l] = 0.0f;
        }
    }
    for (int64_t k = k0; k < k1; k++) {
        const float *restrict bk = b + k * ldb;
        const float *restrict ak = a + k * aks;
        for (int r = 0; r < MK; r++) {
            for (int l = 0; l < MK; l++) {
                acc[r][l] = fmaf(ak[r * ars], bk[l], acc[r][l]);
            }
        }
    }
    for (int r = 0; r < MK; r++) {
        for (int l = 0; l < MK; l++) {
            c[r * ldc + l] = acc[r][l];
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
/* AVX2 + FMA: the eight rows of the tile in eight registers, one broadcast
 * of a and one FMA per row and k.  (Written with intrinsics: GCC's
 * vectorizer lays the tile out across rows, with a shuffle per FMA.) */
__attribute__((target("avx2,fma"))) static void mk_tile_avx2(float *restrict c, int64_t ldc,
                                                             const float *restrict a, int64_t ars,
                                                             int64_t aks, const float *restrict b,
                                                             int64_t ldb, int64_t k0, int64_t k1)
{
    __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
    for (int64_t k = k0; k < k1; k++) {
        const __m256 bv = _mm256_loadu_ps(b + k * ldb);
        const float *restrict ak = a + k * aks;
        c0 = _mm256_fmadd_ps(_mm256_broadcast_ss(ak), bv, c0);
        c1 = _mm256_fmadd_ps(_mm256_broadcast_ss(ak + ars), bv, c1);
        c2 = _mm256_fmadd_ps(_mm256_broadcast_ss(ak + 2 * ars), bv, c2);
        c3 = _mm256_fmadd_ps(_mm256_broadcast_ss(ak + 3 * ars), bv, c3);
        c4 = _mm256_fmadd_ps(_mm256_broadcast_ss(ak + 4 * ars), bv, c4);
        c5 = _mm256_fmadd_ps(_mm256_broadcast_ss(ak + 5 * ars), bv, c5);
        c6 = _mm256_fmadd_ps(_mm256_broadcast_ss(ak + 6 * ars), bv, c6);
        c7 = _mm256_fmadd_ps(_mm256_broadcast_ss(ak + 7 * ars), bv, c7);
    }
    _mm256_storeu_ps(c, c0);
    _mm256_storeu_ps(c + ldc, c1);
    _mm256_storeu_ps(c + 2 * ldc, c2);
    _mm256_storeu_ps(c + 3 * ldc, c3);
    _mm256_storeu_ps(c + 4 * ldc, c4);
    _mm256_storeu_ps(c + 5 * ldc, c5);
    _mm256_storeu_ps(c + 6 * ldc, c6);
    _mm256_storeu_ps(c + 7 * ldc, c7);
}
#endif

static mk_tile_fn_t cpu_mk_tile = mk_tile_any;

static void cpu_isa_probe(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        cpu_mk_tile = mk_tile_avx2;
    }
#endif
}

typedef struct {
    int64_t T, D;
    int64_t Tp, Dp; /* T and D rounded up to MK */
    int64_t ld;     /* qkv row stride: 3*H*D */
    int64_t ldo;    /* out / dout row stride: H*D */
    int64_t hd;     /* H*D: offset of K (and 2*hd of V) in a qkv row */
    float scale;    /* 1/sqrt(D) */
    mk_tile_fn_t tile;
} attn_dims_t;

static int64_t round_up(int64_t n, int64_t m)
{
    return (n + m - 1) / m * m;
}

/* Per-thread scratch floats of the forward and the backward, whole cache lines. */
static int64_t attn_fwd_scratch(const attn_dims_t *g)
{
    return round_up(3 * g->Tp * g->Dp + g->Tp * g->Tp + MK * g->Dp, 16);
}

static int64_t attn_bwd_scratch(const attn_dims_t *g)
{
    return round_up(4 * g->Tp * g->Dp + 2 * g->Tp * g->Tp + MK * g->Dp, 16);
}

/* dst[t, d] (row stride Dp) = src[t*ld + d], zero outside T x D. */
static inline void attn_pack_rows(float *restrict dst, const float *restrict src, int64_t ld,
                                  const attn_dims_t *g)
{
    for (int64_t t = 0; t < g->T; t++) {
        float *restrict row = dst + t * g->Dp;
        memcpy(row, src + t * ld, (size_t)g->D * sizeof(float));
        for (int64_t d = g->D; d < g->Dp; d++) {
            row[d] = 0.0f;
        }
    }
    memset(dst + g->T * g->Dp, 0, (size_t)((g->Tp - g->T) * g->Dp) * sizeof(float));
}

/* dst[d, t] (row stride Tp) = src[t*ld + d], zero outside: MK rows of src
 * at a time, so that the writes are runs of MK floats. */
static inline void attn_pack_cols(float *restrict dst, const float *restrict src, int64_t ld,
                                  const attn_dims_t *g)
{
    memset(dst + g->D * g->Tp, 0, (size_t)((g->Dp - g->D) * g->Tp) * sizeof(float));
    for (int64_t t0 = 0; t0 < g->Tp; t0 += MK) {
        if (t0 + MK <= g->T) {
            for (int64_t d = 0; d < g->D; d++) {
                float *restrict out = dst + d * g->Tp + t0;
                for (int r = 0; r < MK; r++) {
                    out[r] = src[(t0 + r) * ld + d];
                }
            }
        } else {
            for (int64_t d = 0; d < g->D; d++) {
                float *restrict out = dst + d * g->Tp + t0;
                for (int r = 0; r < MK; r++) {
                    out[r] = t0 + r < g->T ? src[(t0 + r) * ld + d] : 0.0f;
                }
            }
        }
    }
}

/* dst[t*ld + d] += (or =) tile[r, d] for the rows t = t0 + r < T, d < D. */
static inline void attn_store(float *restrict dst, int64_t ld, const float *restrict tile,
                              int64_t t0, const attn_dims_t *g, int add)
{
    for (int64_t r = 0; r < MK && t0 + r < g->T; r++) {
        float *restrict row = dst + (t0 + r) * ld;
        const float *restrict tr = tile + r * g->Dp;
        if (add) {
            for (int64_t d = 0; d < g->D; d++) {
                row[d] += tr[d];
            }
        } else {
            for (int64_t d = 0; d < g->D; d++) {
                row[d] = tr[d];
            }
        }
    }
}

/* q0 points at Q of (b, t = 0, h) in qkv, out0 at out of (b, 0, h), att0 at att[b, h]. */
MP_KERNEL static void k_attn_fwd_pair(float *restrict out0, float *restrict att0,
                                      const float *restrict q0, attn_dims_t g, float *restrict ws)
{
    const int64_t T = g.T, Tp = g.Tp, Dp = g.Dp;
    float *restrict qs = ws;           /* [Tp][Dp] */
    float *restrict kt = qs + Tp * Dp; /* [Dp][Tp] */
    float *restrict vs = kt + Dp * Tp; /* [Tp][Dp] */
    float *restrict s = vs + Tp * Dp;  /* [Tp][Tp]: scores, then probabilities */
    float *restrict o = s + Tp * Tp;   /* [MK][Dp]: one row block of the output */
    attn_pack_rows(qs, q0, g.ld, &g);
    attn_pack_cols(kt, q0 + g.hd, g.ld, &g);
    attn_pack_rows(vs, q0 + 2 * g.hd, g.ld, &g);
    for (int64_t t0 = 0; t0 < Tp; t0 += MK) {
        for (int64_t j0 = 0; j0 <= t0; j0 += MK) {
            g.tile(s + t0 * Tp + j0, Tp, qs + t0 * Dp, Dp, 1, kt + j0, Tp, 0, Dp);
        }
    }
    for (int64_t t = 0; t < Tp; t++) {
        float *restrict a = s + t * Tp;
        const int64_t n = t < T ? t + 1 : 0;
        for (int64_t j = 0; j < n; j++) {
            a[j] *= g.scale;
        }
        if (n > 0) {
            const float mx = k_max_lanes(a, n);
            for (int64_t j = 0; j < n; j++) {
                a[j] = mp_expf(a[j] - mx);
            }
            const float inv = 1.0f / k_sum_lanes(a, n);
            for (int64_t j = 0; j < n; j++) {
                a[j] *= inv;
            }
        }
        /* Masked (and padding) entries are exact zeros: the PV tiles below
         * run over whole tiles and add them. */
        for (int64_t j = n; j < Tp; j++) {
            a[j] = 0.0f;
        }
        if (t < T) {
            memcpy(att0 + t * T, a, (size_t)T * sizeof(float));
        }
    }
    for (int64_t t0 = 0; t0 < Tp; t0 += MK) {
        for (int64_t d0 = 0; d0 < Dp; d0 += MK) {
            g.tile(o + d0, Dp, s + t0 * Tp, Tp, 1, vs + d0, Dp, 0, t0 + MK);
        }
        attn_store(out0, g.ldo, o, t0, &g, 0);
    }
}

/* The gradients of one pair, added to dqkv: dP = dO V^T;
 * dS = P * (dP - rowsum(P * dP)) / sqrt(D); dQ = dS K, dK = dS^T Q,
 * dV = P^T dO, each over the causal triangle only. */
MP_KERNEL static void k_attn_bwd_pair(float *restrict dq0, const float *restrict dout0,
                                      const float *restrict q0, const float *restrict att0,
                                      attn_dims_t g, float *restrict ws)
{
    const int64_t T = g.T, Tp = g.Tp, Dp = g.Dp;
    float *restrict qs = ws;            /* [Tp][Dp] */
    float *restrict ks = qs + Tp * Dp;  /* [Tp][Dp] */
    float *restrict vt = ks + Tp * Dp;  /* [Dp][Tp] */
    float *restrict dos = vt + Dp * Tp; /* [Tp][Dp] */
    float *restrict ps = dos + Tp * Dp; /* [Tp][Tp]: P, zero-padded */
    float *restrict ds = ps + Tp * Tp;  /* [Tp][Tp]: dP, then dS */
    float *restrict o = ds + Tp * Tp;   /* [MK][Dp] */
    attn_pack_rows(qs, q0, g.ld, &g);
    attn_pack_rows(ks, q0 + g.hd, g.ld, &g);
    attn_pack_cols(vt, q0 + 2 * g.hd, g.ld, &g);
    attn_pack_rows(dos, dout0, g.ldo, &g);
    for (int64_t t = 0; t < Tp; t++) {
        float *restrict p = ps + t * Tp;
        const int64_t n = t < T ? t + 1 : 0;
        memcpy(p, att0 + t * T, (size_t)n * sizeof(float));
        memset(p + n, 0, (size_t)(Tp - n) * sizeof(float));
    }
    for (int64_t t0 = 0; t0 < Tp; t0 += MK) {
        for (int64_t j0 = 0; j0 <= t0; j0 += MK) {
            g.tile(ds + t0 * Tp + j0, Tp, dos + t0 * Dp, Dp, 1, vt + j0, Tp, 0, Dp);
        }
    }
    for (int64_t t = 0; t < Tp; t++) {
        const float *restrict p = ps + t * Tp;
        float *restrict a = ds + t * Tp;
        const int64_t n = t < T ? t + 1 : 0;
        const float dot = k_dot_lanes(p, a, n);
        for (int64_t j = 0; j < n; j++) {
            a[j] = p[j] * (a[j] - dot) * g.scale;
        }
        for (int64_t j = n; j < Tp; j++) {
            a[j] = 0.0f;
        }
    }
    for (int64_t t0 = 0; t0 < Tp; t0 += MK) {
        for (int64_t d0 = 0; d0 < Dp; d0 += MK) {
            g.tile(o + d0, Dp, ds + t0 * Tp, Tp, 1, ks + d0, Dp, 0, t0 + MK);
        }
        attn_store(dq0, g.ld, o, t0, &g, 1);
    }
    /* dK and dV rows j0..j0+MK-1 gather the positions t >= j0 (columns of dS and P). */
    for (int64_t j0 = 0; j0 < Tp; j0 += MK) {
        for (int64_t d0 = 0; d0 < Dp; d0 += MK) {
            g.tile(o + d0, Dp, ds + j0, 1, Tp, qs + d0, Dp, j0, Tp);
        }
        attn_store(dq0 + g.hd, g.ld, o, j0, &g, 1);
        for (int64_t d0 = 0; d0 < Dp; d0 += MK) {
            g.tile(o + d0, Dp, ps + j0, 1, Tp, dos + d0, Dp, j0, Tp);
        }
        attn_store(dq0 + 2 * g.hd, g.ld, o, j0, &g, 1);
    }
}

/* The per-thread scratch of the attention kernels, grown on demand (a
 * backend is used by one thread at a time, so one buffer serves every call). */
static float *cpu_scratch(cpu_backend_t *cb, const char *op, size_t floats)
{
    if (floats > cb->scratch_cap) {
        float *p = mp_aligned_alloc(floats * sizeof(float));
        if (p == NULL) {
            mp_err("cpu backend: %s: cannot allocate %zu bytes of scratch", op,
                   floats * sizeof(float));
            return NULL;
        }
        mp_free(cb->scratch);
        cb->scratch = p;
        cb->scratch_cap = floats;
    }
    return cb->scratch;
}

static attn_dims_t attn_dims(int64_t T, int64_t H, int64_t D)
{
    attn_dims_t g = {.T = T,
                     .D = D,
                     .Tp = round_up(T, MK),
                     .Dp = round_up(D, MK),
                     .ld = 3 * H * D,
                     .ldo = H * D,
                     .hd = H * D,
                     .scale = 1.0f / sqrtf((float)D),
                     .tile = cpu_mk_tile};
    return g;
}

/* Threads for B*H pairs of about T*T*D multiply-adds each. */
static int cpu_attn_threads(const mp_backend_t *be, int64_t B, int64_t T, int64_t H, int64_t D)
{
    int nt = cpu_par_threads(be, B * H * T * T * D / 2);
    return (int64_t)nt > B * H ? (int)(B * H) : nt;
}

/* Runs the forward (dout == NULL: out and att written) or the backward
 * (out is dqkv, att read) of every (b, h) pair, pairs split over the threads. */
static mp_status_t cpu_attn_pairs(mp_backend_t *be, float *out, const float *dout, const float *qkv,
                                  float *att_w, const float *att, int64_t B, int64_t T, int64_t H,
                                  int64_t D)
{
    const bool bwd = dout != NULL;
    attn_dims_t g = attn_dims(T, H, D);
    int nt = cpu_attn_threads(be, B, T, H, D);
    int64_t per = bwd ? attn_bwd_scratch(&g) : attn_fwd_scratch(&g);
    float *ws = cpu_scratch((cpu_backend_t *)be, bwd ? "attn_bwd" : "attn_fwd", (size_t)(per * nt));
    if (ws == NULL) {
        return MP_ERR_NOMEM;
    }
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int64_t lo, hi;
        cpu_thread_range(B * H, 1, &lo, &hi);
        float *mine = ws + per * omp_get_thread_num();
        for (int64_t p = lo; p < hi; p++) {
            int64_t b = p / H, h = p % H;
            const float *q0 = qkv + b * T * g.ld + h * D;
            if (bwd) {
                k_attn_bwd_pair(out + b * T * g.ld + h * D, dout + b * T * g.ldo + h * D, q0,
                                att + p * T * T, g, mine);
            } else {
                k_attn_fwd_pair(out + b * T * g.ldo + h * D, att_w + p * T * T, q0, g, mine);
            }
        }
    }
    return MP_OK;
}

static mp_status_t cpu_attn_fwd(mp_backend_t *be, float *out, float *att, const float *qkv,
                                int64_t B, int64_t T, int64_t H, int64_t D)
{
    CPU_SEQ_CHECK("attn_fwd", mp_seq_check_attn(B, T, H, D, out, att, qkv, qkv));
    if (B == 0 || T == 0) {
        return MP_OK;
    }
    return cpu_attn_pairs(be, out, NULL, qkv, att, att, B, T, H, D);
}

static mp_status_t cpu_attn_bwd(mp_backend_t *be, float *dqkv, const float *dout, const float *qkv,
                                const float *att, int64_t B, int64_t T, int64_t H, int64_t D)
{
    CPU_SEQ_CHECK("attn_bwd", mp_seq_check_attn(B, T, H, D, dqkv, dout, qkv, att));
    if (B == 0 || T == 0) {
        return MP_OK;
    }
    return cpu_attn_pairs(be, dqkv, dout, qkv, NULL, att, B, T, H, D);
}

/* ---- vocab-parallel cross-entropy ------------------------------------ */

MP_KERNEL static void k_xent_vp_max(float *restrict rowmax, const float *restrict logits,
                                    int64_t r0, int64_t r1, int64_t Vl)
{
    for (int64_t r = r0; r < r1; r++) {
        rowmax[r] = k_max_lanes(logits + r * Vl, Vl);
    }
}

static mp_status_t cpu_xent_vp_max(mp_backend_t *be, float *rowmax, const float *logits, int64_t R,
                                   int64_t Vl)
{
    CPU_SEQ_CHECK("xent_vp_max", mp_seq_check_vp(R, Vl, 0, rowmax, logits, logits, logits, logits));
    int nt = cpu_par_threads(be, R * Vl);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int64_t lo, hi;
        cpu_thread_range(R, 1, &lo, &hi);
        k_xent_vp_max(rowmax, logits, lo, hi, Vl);
    }
    return MP_OK;
}

/* exp(l - gmax) summed in the eight lanes of k_sum_lanes (element i in lane
 * i % 8), computed a chunk at a time so that the exponentials vectorize. */
MP_KERNEL static void k_xent_vp_sumexp(float *restrict sumexp, float *restrict target,
                                       const float *restrict logits, const float *restrict gmax,
                                       const int32_t *restrict labels, int64_t r0, int64_t r1,
                                       int64_t Vl, int64_t v0)
{
    enum { CHUNK = 256 };
    float e[CHUNK];
    for (int64_t r = r0; r < r1; r++) {
        const float *restrict l = logits + r * Vl;
        const float m = gmax[r];
        v8f acc = V8_SPLAT(0.0f);
        for (int64_t cb = 0; cb < Vl; cb += CHUNK) {
            int64_t n = Vl - cb < CHUNK ? Vl - cb : CHUNK;
            for (int64_t j = 0; j < n; j++) {
                e[j] = mp_expf(l[cb + j] - m);
            }
            int64_t j = 0;
            for (; j + 8 <= n; j += 8) {
                v8f v;
                V8_LOAD(v, e + j);
                acc += v;
            }
            for (int k = 0; j + k < n; k++) {
                acc[k] += e[j + k];
            }
        }
        sumexp[r] = v8_total(&acc);
        int64_t c = (int64_t)labels[r] - v0;
        target[r] = c >= 0 && c < Vl ? l[c] : 0.0f;
    }
}

static mp_status_t cpu_xent_vp_sumexp(mp_backend_t *be, float *sumexp, float *target,
                                      const float *logits, const float *gmax, const int32_t *labels,
                                      int64_t R, int64_t Vl, int64_t v0)
{
    CPU_SEQ_CHECK("xent_vp_sumexp",
                  mp_seq_check_vp(R, Vl, v0, sumexp, target, logits, gmax, labels));
    int nt = cpu_par_threads(be, R * Vl);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int64_t lo, hi;
        cpu_thread_range(R, 1, &lo, &hi);
        k_xent_vp_sumexp(sumexp, target, logits, gmax, labels, lo, hi, Vl, v0);
    }
    return MP_OK;
}

MP_KERNEL static void k_xent_vp_bwd(float *restrict dlogits, const float *restrict logits,
                                    const float *restrict gmax, const float *restrict gsum,
                                    const int32_t *restrict labels, int64_t r0, int64_t r1,
                                    int64_t Vl, int64_t v0, float scale)
{
    for (int64_t r = r0; r < r1; r++) {
        const float *restrict l = logits + r * Vl;
        float *restrict d = dlogits + r * Vl;
        const float m = gmax[r], inv = 1.0f / gsum[r];
        const int64_t lab = (int64_t)labels[r] - v0;
        for (int64_t c = 0; c < Vl; c++) {
            float onehot = c == lab ? 1.0f : 0.0f;
            d[c] += scale * (mp_expf(l[c] - m) * inv - onehot);
        }
    }
}

static mp_status_t cpu_xent_vp_bwd(mp_backend_t *be, float *dlogits, const float *logits,
                                   const float *gmax, const float *gsum, const int32_t *labels,
                                   int64_t R, int64_t Vl, int64_t v0, float scale)
{
    CPU_SEQ_CHECK("xent_vp_bwd", mp_seq_check_vp(R, Vl, v0, dlogits, logits, gmax, gsum, labels));
    int nt = cpu_par_threads(be, R * Vl);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int64_t lo, hi;
        cpu_thread_range(R, 1, &lo, &hi);
        k_xent_vp_bwd(dlogits, logits, gmax, gsum, labels, lo, hi, Vl, v0, scale);
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
/* 1 when the float's exponent bits are all ones (NaN, ±Inf): an integer OR
 * reduction, which vectorizes where a float test would not. */
static inline uint32_t nonfinite_bit(float g)
{
    uint32_t u;
    memcpy(&u, &g, sizeof(u));
    return (u & 0x7f800000u) == 0x7f800000u;
}

/* The optimizer kernels return 1 when an element of grad is not finite. */
MP_KERNEL static uint32_t k_sgd(float *restrict p, const float *restrict grad,
                                float *restrict buf, int64_t n, sgd_consts_t k)
{
    uint32_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i];
        bad |= nonfinite_bit(g);
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
    return bad;
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
    if (st == MP_OK && n > 0) {
        cpu_wrote(be, p, (size_t)n * sizeof(float));
    }
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
    uint32_t bad = 0;
#pragma omp parallel num_threads(nt) if (nt > 1) reduction(| : bad)
    {
        int64_t lo, hi;
        cpu_thread_range(n, 16, &lo, &hi);
        bad |= k_sgd(p + lo, grad + lo, buf != NULL ? buf + lo : NULL, hi - lo, k);
    }
    if (bad) {
        return MP_ERR_NONFINITE;
    }
    cpu_refresh(be, p, (size_t)n * sizeof(float));
    return MP_OK;
}

/* _single_tensor_adamw (torch 1.13, foreach off as on CPU):
 *   p.mul_(1 - lr*wd); m.mul_(b1).add_(g, alpha=1-b1); v.mul_(b2).addcmul_(g, g, value=1-b2);
 *   denom = (v.sqrt() / sqrt(bc2)).add_(eps); p.addcdiv_(m, denom, value=-lr/bc1)
 * with ATen's CPU rounding: add_ = fma(g, alpha, m*b1), addcmul_ = fma(value*g, g, v),
 * addcdiv_ = p + (value*m)/denom, written p - (step_size*m)/denom (the same bits:
 * negation is exact). */
MP_KERNEL static uint32_t k_adamw(float *restrict p, const float *restrict grad,
                                  float *restrict m, float *restrict v, int64_t n,
                                  mp_optim_adamw_scalars_t k)
{
    uint32_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i];
        bad |= nonfinite_bit(g);
        float pi = p[i] * k.decay;
        float mi = fmaf(g, k.one_minus_beta1, m[i] * k.beta1);
        float vi = fmaf(k.one_minus_beta2 * g, g, v[i] * k.beta2);
        float denom = sqrtf(vi) / k.bc2_sqrt + k.eps;
        p[i] = pi - (k.step_size * mi) / denom;
        m[i] = mi;
        v[i] = vi;
    }
    return bad;
}

static mp_status_t cpu_adamw_step(mp_backend_t *be, float *p, const float *grad, float *m, float *v,
                                  int64_t n, const mp_optim_hp_t *hp)
{
    if (hp == NULL || hp->step < 1) {
        return cpu_inval("adamw_step", "missing hyper-parameters or step < 1");
    }
    mp_status_t st = cpu_check_vec("adamw_step", n, p, grad, grad);
    if (st == MP_OK) {
        st = cpu_check_vec("adamw_step", n, m, v, v);
    }
    if (st == MP_OK && n > 0) {
        cpu_wrote(be, p, (size_t)n * sizeof(float));
    }
    if (st != MP_OK) {
        return st;
    }
    mp_optim_adamw_scalars_t k = mp_optim_adamw_scalars(hp);
    int nt = cpu_par_threads(be, n);
    uint32_t bad = 0;
#pragma omp parallel num_threads(nt) if (nt > 1) reduction(| : bad)
    {
        int64_t lo, hi;
        cpu_thread_range(n, 16, &lo, &hi);
        bad |= k_adamw(p + lo, grad + lo, m + lo, v + lo, hi - lo, k);
    }
    if (bad) {
        return MP_ERR_NONFINITE;
    }
    cpu_refresh(be, p, (size_t)n * sizeof(float));
    return MP_OK;
}

/* ---- the table ------------------------------------------------------- */

static void cpu_destroy(mp_backend_t *be)
{
    cpu_backend_t *cb = (cpu_backend_t *)be;
    mp_free(cb->pad[0]);
    mp_free(cb->pad[1]);
    for (int i = 0; i < cb->nwcopy; i++) {
        mp_free(cb->wcopy[i].pad);
    }
    mp_free(cb->wcopy);
    mp_free(cb->scratch);
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
    .embed_fwd = cpu_embed_fwd,
    .embed_bwd = cpu_embed_bwd,
    .pos_add = cpu_pos_add,
    .pos_bwd = cpu_pos_bwd,
    .layernorm_fwd = cpu_layernorm_fwd,
    .layernorm_bwd = cpu_layernorm_bwd,
    .attn_fwd = cpu_attn_fwd,
    .attn_bwd = cpu_attn_bwd,
    .xent_vp_max = cpu_xent_vp_max,
    .xent_vp_sumexp = cpu_xent_vp_sumexp,
    .xent_vp_bwd = cpu_xent_vp_bwd,
    .params_hold = cpu_params_hold,
    .params_release = cpu_params_release,
    .sgd_step = cpu_sgd_step,
    .adamw_step = cpu_adamw_step,
};

mp_status_t mp_backend_cpu_create(int threads, mp_backend_t **be_p)
{
    if (threads < 1 || be_p == NULL) {
        return cpu_inval("create", "threads must be >= 1");
    }
    pthread_once(&cpu_dnnl_once, cpu_dnnl_load);
    pthread_once(&cpu_isa_once, cpu_isa_probe);
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
