/*
 * data.c - data sets in host memory: the gzipped IDX files of Fashion-MNIST
 * (read with zlib; gzread also passes a plain, uncompressed file through),
 * the seeded synthetic teacher data set, text as byte tokens (a file, or
 * what a program such as Debian's `bible` prints, run with posix_spawn and
 * read through a pipe), and the deterministic per-epoch sample order.  It
 * owns the arrays of the mp_dataset_t it fills (freed by mp_dataset_free).
 * Loading does blocking file I/O, runs programs and computes: call it on a
 * worker thread, never on a libuv loop thread.  Otherwise pure; any thread.
 */
#include "data.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "common/alloc.h"
#include "gpu/init.h"

#define IDX_MAGIC_LABELS 0x00000801u
#define IDX_MAGIC_IMAGES 0x00000803u
/* A header claiming more elements than this is refused before allocating:
 * Fashion-MNIST's largest file holds 47 million. */
#define IDX_MAX_ELEMENTS 100000000ull
#define IDX_FASHION_CLASSES 10

/* Synthetic data: the teacher's hidden width and the fixed calibration set
 * used to choose its output biases (independent of the requested sizes, so
 * sample i has the same label whatever n is). */
#define SYN_HIDDEN 32
#define SYN_CALIB 4096
#define SYN_MAX_ELEMENTS (1ll << 31)
/* Stream tags, so that features, teacher weights, calibration inputs and
 * shuffles never draw from the same counters. */
#define SYN_TAG_X 0x73796e2d78ull     /* "syn-x" */
#define SYN_TAG_W1 0x73796e2d7731ull  /* "syn-w1" */
#define SYN_TAG_B1 0x73796e2d6231ull  /* "syn-b1" */
#define SYN_TAG_W2 0x73796e2d7732ull  /* "syn-w2" */
#define SYN_TAG_CAL 0x73796e2d63616cull /* "syn-cal" */
#define ORDER_TAG 0x73687566666c65ull /* "shuffle" */

/* ---- IDX files ------------------------------------------------------------ */

typedef struct {
    const char *path;
    gzFile gz;
} idx_file_t;

static mp_status_t idx_open(idx_file_t *f, const char *path, mp_errbuf_t *err)
{
    f->path = path;
    errno = 0;
    f->gz = gzopen(path, "rb");
    if (f->gz == NULL) {
        if (errno == 0) {
            return mp_errbuf_set(err, MP_ERR_NOMEM, "%s: cannot open: out of memory", path);
        }
        return mp_errbuf_set(err, MP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    }
    /* Bigger than zlib's default 8 KiB: the training images are 47 MB. */
    gzbuffer(f->gz, 1 << 17);
    return MP_OK;
}

static void idx_close(idx_file_t *f)
{
    if (f->gz != NULL) {
        gzclose_r(f->gz);
        f->gz = NULL;
    }
}

/* gzerror's text without the "<path>: " zlib puts in front. */
static const char *gz_text(const idx_file_t *f, const char *ztext)
{
    size_t n = strlen(f->path);
    if (strncmp(ztext, f->path, n) == 0 && strncmp(ztext + n, ": ", 2) == 0) {
        return ztext + n + 2;
    }
    return ztext;
}

/* Turns a failed or short gzread into its message.  `what` names the part
 * being read ("header", "pixel data"); `want` and `got` count its bytes. */
static mp_status_t idx_read_fail(idx_file_t *f, const char *what, uint64_t want, uint64_t got,
                                 mp_errbuf_t *err)
{
    int zerr = Z_OK;
    const char *ztext = gzerror(f->gz, &zerr);
    if (zerr == Z_ERRNO) {
        return mp_errbuf_set(err, MP_ERR_IO, "%s: read error in the %s: %s", f->path, what,
                             strerror(errno));
    }
    if (zerr == Z_MEM_ERROR) {
        return mp_errbuf_set(err, MP_ERR_NOMEM, "%s: out of memory while decompressing",
                             f->path);
    }
    if (zerr != Z_OK && zerr != Z_BUF_ERROR) {
        /* zlib inflates ahead of what was asked, so the damage may lie
         * anywhere: name no part of the file. */
        return mp_errbuf_set(err, MP_ERR_FORMAT, "%s: corrupt gzip stream: %s", f->path,
                             gz_text(f, ztext));
    }
    /* Z_BUF_ERROR ("unexpected end of file") or a clean end: the file stops short. */
    return mp_errbuf_set(err, MP_ERR_FORMAT,
                         "%s: truncated: expected %llu bytes of %s, found %llu%s", f->path,
                         (unsigned long long)want, what, (unsigned long long)got,
                         zerr == Z_BUF_ERROR ? " (the gzip stream ends unexpectedly)" : "");
}

/* Reads exactly n bytes (n may exceed what one gzread call takes).  They
 * are part of a `what` of `total` bytes of which `before` were read. */
static mp_status_t idx_read_exact(idx_file_t *f, void *dst, uint64_t n, const char *what,
                                  uint64_t before, uint64_t total, mp_errbuf_t *err)
{
    uint64_t done = 0;
    while (done < n) {
        uint64_t chunk = n - done;
        if (chunk > (1u << 30)) {
            chunk = 1u << 30;
        }
        int r = gzread(f->gz, (char *)dst + done, (unsigned)chunk);
        if (r <= 0) {
            return idx_read_fail(f, what, total, before + done, err);
        }
        done += (uint64_t)r;
    }
    return MP_OK;
}

/* After the payload the file must end: reading one more byte also makes
 * zlib check the gzip trailer (CRC and length), so a corrupted stream whose
 * damage lies in the checksum is caught too. */
static mp_status_t idx_expect_end(idx_file_t *f, const char *what, mp_errbuf_t *err)
{
    unsigned char extra[256];
    int r = gzread(f->gz, extra, sizeof(extra));
    if (r < 0) {
        return idx_read_fail(f, what, 0, 0, err);
    }
    if (r > 0) {
        uint64_t total = (uint64_t)r;
        while ((r = gzread(f->gz, extra, sizeof(extra))) > 0) {
            total += (uint64_t)r;
        }
        if (r < 0) {
            return idx_read_fail(f, what, 0, 0, err);
        }
        return mp_errbuf_set(err, MP_ERR_FORMAT,
                             "%s: %llu bytes of trailing data after the %s (the header's "
                             "dimensions do not match the file size)",
                             f->path, (unsigned long long)total, what);
    }
    int zerr = Z_OK;
    const char *ztext = gzerror(f->gz, &zerr);
    if (zerr != Z_OK) {
        if (zerr == Z_BUF_ERROR) {
            return mp_errbuf_set(err, MP_ERR_FORMAT,
                                 "%s: truncated: the gzip stream ends unexpectedly after the %s",
                                 f->path, what);
        }
        return mp_errbuf_set(err, MP_ERR_FORMAT, "%s: corrupt gzip stream: %s", f->path,
                             gz_text(f, ztext));
    }
    return MP_OK;
}

static uint32_t be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* Reads and checks the magic and the dimensions of an IDX file holding
 * unsigned bytes in `ndims` dimensions.  dims[] receives them. */
static mp_status_t idx_read_header(idx_file_t *f, uint32_t want_magic, const char *kind,
                                   uint32_t *dims, int ndims, mp_errbuf_t *err)
{
    unsigned char hdr[4 + 4 * 3];
    uint64_t hdr_bytes = 4 + 4 * (uint64_t)ndims;
    mp_status_t st = idx_read_exact(f, hdr, 4, "header", 0, hdr_bytes, err);
    if (st != MP_OK) {
        return st;
    }
    uint32_t magic = be32(hdr);
    uint32_t other_magic = want_magic == IDX_MAGIC_IMAGES ? IDX_MAGIC_LABELS : IDX_MAGIC_IMAGES;
    /* Bytes 0-1 are zero and byte 2 is the element type (0x08: unsigned
     * byte) in every IDX file; byte 3 is the number of dimensions, which is
     * reported as a dimension error unless the file is the other known kind. */
    if ((magic & 0xFFFFFF00u) != (want_magic & 0xFFFFFF00u) || magic == other_magic) {
        return mp_errbuf_set(err, MP_ERR_FORMAT,
                             "%s: bad magic 0x%08X, expected 0x%08X (%s)%s", f->path, magic,
                             want_magic, kind,
                             magic == other_magic
                                 ? (want_magic == IDX_MAGIC_IMAGES ? "; this is an IDX labels file"
                                                                   : "; this is an IDX images file")
                                 : "");
    }
    if ((int)(magic & 0xFF) != ndims) {
        return mp_errbuf_set(err, MP_ERR_FORMAT,
                             "%s: bad dimensions: the file has %u dimensions, %s need %d", f->path,
                             magic & 0xFF, kind, ndims);
    }
    st = idx_read_exact(f, hdr + 4, hdr_bytes - 4, "header", 4, hdr_bytes, err);
    if (st != MP_OK) {
        return st;
    }
    uint64_t total = 1;
    char shape[64] = "";
    size_t off = 0;
    for (int i = 0; i < ndims; i++) {
        dims[i] = be32(hdr + 4 + 4 * i);
        int w = snprintf(shape + off, sizeof(shape) - off, "%s%u", i ? " x " : "", dims[i]);
        if (w > 0 && (size_t)w < sizeof(shape) - off) {
            off += (size_t)w;
        }
    }
    for (int i = 0; i < ndims; i++) {
        if (dims[i] == 0) {
            return mp_errbuf_set(err, MP_ERR_FORMAT,
                                 "%s: bad dimensions %s: every dimension must be positive",
                                 f->path, shape);
        }
        total *= dims[i];
        if (total > IDX_MAX_ELEMENTS) {
            return mp_errbuf_set(err, MP_ERR_FORMAT,
                                 "%s: bad dimensions %s: more than %llu elements", f->path, shape,
                                 IDX_MAX_ELEMENTS);
        }
    }
    return MP_OK;
}

mp_status_t mp_idx_read_images(const char *path, float **x_p, int64_t *n_p, int64_t *dim_p,
                               mp_errbuf_t *err)
{
    idx_file_t f;
    mp_status_t st = idx_open(&f, path, err);
    if (st != MP_OK) {
        return st;
    }
    uint32_t dims[3];
    st = idx_read_header(&f, IDX_MAGIC_IMAGES, "images", dims, 3, err);
    if (st != MP_OK) {
        goto close_file;
    }
    uint64_t n = dims[0], dim = (uint64_t)dims[1] * dims[2];
    unsigned char *bytes = mp_malloc(n * dim);
    float *x = mp_aligned_alloc(n * dim * sizeof(float));
    if (bytes == NULL || x == NULL) {
        st = mp_errbuf_set(err, MP_ERR_NOMEM, "%s: out of memory for %llu images", path,
                           (unsigned long long)n);
        goto free_arrays;
    }
    st = idx_read_exact(&f, bytes, n * dim, "pixel data", 0, n * dim, err);
    if (st == MP_OK) {
        st = idx_expect_end(&f, "pixel data", err);
    }
    if (st != MP_OK) {
        goto free_arrays;
    }
    for (uint64_t i = 0; i < n * dim; i++) {
        x[i] = bytes[i] / 255.0f;
    }
    mp_free(bytes);
    idx_close(&f);
    *x_p = x;
    *n_p = (int64_t)n;
    *dim_p = (int64_t)dim;
    return MP_OK;

free_arrays:
    mp_free(x);
    mp_free(bytes);
close_file:
    idx_close(&f);
    return st;
}

mp_status_t mp_idx_read_labels(const char *path, int32_t **y_p, int64_t *n_p, mp_errbuf_t *err)
{
    idx_file_t f;
    mp_status_t st = idx_open(&f, path, err);
    if (st != MP_OK) {
        return st;
    }
    uint32_t dims[1];
    st = idx_read_header(&f, IDX_MAGIC_LABELS, "labels", dims, 1, err);
    if (st != MP_OK) {
        goto close_file;
    }
    uint64_t n = dims[0];
    unsigned char *bytes = mp_malloc(n);
    int32_t *y = mp_malloc(n * sizeof(int32_t));
    if (bytes == NULL || y == NULL) {
        st = mp_errbuf_set(err, MP_ERR_NOMEM, "%s: out of memory for %llu labels", path,
                           (unsigned long long)n);
        goto free_arrays;
    }
    st = idx_read_exact(&f, bytes, n, "label data", 0, n, err);
    if (st == MP_OK) {
        st = idx_expect_end(&f, "label data", err);
    }
    if (st != MP_OK) {
        goto free_arrays;
    }
    for (uint64_t i = 0; i < n; i++) {
        if (bytes[i] >= IDX_FASHION_CLASSES) {
            st = mp_errbuf_set(err, MP_ERR_FORMAT,
                               "%s: label %u of sample %llu is out of range [0, %d]", path,
                               bytes[i], (unsigned long long)i, IDX_FASHION_CLASSES - 1);
            goto free_arrays;
        }
        y[i] = bytes[i];
    }
    mp_free(bytes);
    idx_close(&f);
    *y_p = y;
    *n_p = (int64_t)n;
    return MP_OK;

free_arrays:
    mp_free(y);
    mp_free(bytes);
close_file:
    idx_close(&f);
    return st;
}

/* Loads one split (images + labels) into ds. */
static mp_status_t load_split(const char *dir, const char *prefix, mp_dataset_t *ds,
                              mp_errbuf_t *err)
{
    char ipath[1200], lpath[1200];
    snprintf(ipath, sizeof(ipath), "%s/%s-images-idx3-ubyte.gz", dir, prefix);
    snprintf(lpath, sizeof(lpath), "%s/%s-labels-idx1-ubyte.gz", dir, prefix);
    float *x = NULL;
    int32_t *y = NULL;
    int64_t n_images = 0, dim = 0, n_labels = 0;
    mp_status_t st = mp_idx_read_images(ipath, &x, &n_images, &dim, err);
    if (st != MP_OK) {
        return st;
    }
    st = mp_idx_read_labels(lpath, &y, &n_labels, err);
    if (st != MP_OK) {
        mp_free(x);
        return st;
    }
    if (n_images != n_labels) {
        mp_free(y);
        mp_free(x);
        return mp_errbuf_set(err, MP_ERR_FORMAT, "%s has %lld images but %s has %lld labels",
                             ipath, (long long)n_images, lpath, (long long)n_labels);
    }
    ds->n = n_images;
    ds->dim = dim;
    ds->classes = IDX_FASHION_CLASSES;
    ds->ydim = 1;
    ds->x = x;
    ds->y = y;
    return MP_OK;
}

mp_status_t mp_data_load_fashion_mnist(const char *dir, mp_dataset_t *train, mp_dataset_t *test,
                                       mp_errbuf_t *err)
{
    mp_dataset_t tr = {0}, te = {0};
    mp_status_t st = load_split(dir, "train", &tr, err);
    if (st != MP_OK) {
        return st;
    }
    st = load_split(dir, "t10k", &te, err);
    if (st != MP_OK) {
        mp_dataset_free(&tr);
        return st;
    }
    if (tr.dim != te.dim) {
        st = mp_errbuf_set(err, MP_ERR_FORMAT,
                           "%s/t10k-images-idx3-ubyte.gz has %lld pixels per image but "
                           "%s/train-images-idx3-ubyte.gz has %lld",
                           dir, (long long)te.dim, dir, (long long)tr.dim);
        mp_dataset_free(&te);
        mp_dataset_free(&tr);
        return st;
    }
    *train = tr;
    *test = te;
    return MP_OK;
}

/* ---- checks made before loading ------------------------------------------ */

mp_status_t mp_data_check_file(const char *path, bool folder, mp_errbuf_t *err)
{
    struct stat sb;
    /* stat() does not block on a FIFO; open() waits for its writer. */
    if (stat(path, &sb) != 0) {
        return mp_errbuf_set(err, MP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    }
    if (folder ? S_ISDIR(sb.st_mode) : S_ISREG(sb.st_mode)) {
        return MP_OK;
    }
    const char *is = S_ISDIR(sb.st_mode)    ? "a folder"
                     : S_ISREG(sb.st_mode)  ? "a file"
                     : S_ISFIFO(sb.st_mode) ? "a FIFO"
                     : S_ISSOCK(sb.st_mode) ? "a socket"
                                            : "a device";
    return mp_errbuf_set(err, MP_ERR_IO, "%s is %s, not a %s", path, is,
                         folder ? "folder" : "regular file");
}

/* The count (and pixels per image) an IDX file's header claims, read
 * without its data. */
static mp_status_t idx_header_count(const char *path, bool images, int64_t *n_p, int64_t *dim_p,
                                    mp_errbuf_t *err)
{
    mp_status_t st = mp_data_check_file(path, false, err);
    if (st != MP_OK) {
        return st;
    }
    idx_file_t f;
    st = idx_open(&f, path, err);
    if (st != MP_OK) {
        return st;
    }
    uint32_t dims[3] = {0};
    st = idx_read_header(&f, images ? IDX_MAGIC_IMAGES : IDX_MAGIC_LABELS,
                         images ? "images" : "labels", dims, images ? 3 : 1, err);
    idx_close(&f);
    if (st == MP_OK) {
        *n_p = dims[0];
        *dim_p = images ? (int64_t)dims[1] * dims[2] : 1;
    }
    return st;
}

mp_status_t mp_data_fashion_mnist_check(const char *dir, int64_t *train_n_p, int64_t *dim_p,
                                        mp_errbuf_t *err)
{
    mp_status_t st = mp_data_check_file(dir, true, err);
    if (st != MP_OK) {
        return st;
    }
    static const char *const prefixes[2] = {"train", "t10k"};
    for (int i = 0; i < 2; i++) {
        char ipath[1200], lpath[1200];
        snprintf(ipath, sizeof(ipath), "%s/%s-images-idx3-ubyte.gz", dir, prefixes[i]);
        snprintf(lpath, sizeof(lpath), "%s/%s-labels-idx1-ubyte.gz", dir, prefixes[i]);
        int64_t n_images, dim, n_labels, one;
        st = idx_header_count(ipath, true, &n_images, &dim, err);
        if (st == MP_OK) {
            st = idx_header_count(lpath, false, &n_labels, &one, err);
        }
        if (st != MP_OK) {
            return st;
        }
        if (n_images != n_labels) {
            return mp_errbuf_set(err, MP_ERR_FORMAT, "%s has %lld images but %s has %lld labels",
                                 ipath, (long long)n_images, lpath, (long long)n_labels);
        }
        if (i == 0) {
            *train_n_p = n_images;
            *dim_p = dim;
        }
    }
    return MP_OK;
}

/* ---- synthetic teacher data set ------------------------------------------- */

static float syn_u01(uint64_t seed, uint64_t tag, uint64_t a, uint64_t b)
{
    /* 24 high bits: exactly representable in a float, uniform in [0, 1). */
    return (float)(mp_rng_hash(seed, tag, a, b) >> 40) * (1.0f / 16777216.0f);
}

typedef struct {
    int64_t dim, classes;
    float *w1; /* [dim, SYN_HIDDEN] */
    float *b1; /* [SYN_HIDDEN] */
    float *w2; /* [SYN_HIDDEN, classes] */
    double *b2; /* [classes], chosen to balance the classes */
} teacher_t;

/* One sample's inputs: x[k] = U(-1, 1) from (seed, sample, k). */
static void syn_features(float *x, uint64_t seed, uint64_t tag, int64_t sample, int64_t dim)
{
    for (int64_t k = 0; k < dim; k++) {
        x[k] = 2.0f * syn_u01(seed, tag, (uint64_t)sample, (uint64_t)k) - 1.0f;
    }
}

/* The teacher's logits before the output bias: tanh(x W1 + b1) W2. */
static void teacher_logits(const teacher_t *t, const float *x, double *logits)
{
    double h[SYN_HIDDEN];
    for (int j = 0; j < SYN_HIDDEN; j++) {
        h[j] = t->b1[j];
    }
    for (int64_t k = 0; k < t->dim; k++) {
        const float *w = t->w1 + k * SYN_HIDDEN;
        for (int j = 0; j < SYN_HIDDEN; j++) {
            h[j] += (double)x[k] * w[j];
        }
    }
    for (int64_t c = 0; c < t->classes; c++) {
        logits[c] = 0.0;
    }
    for (int j = 0; j < SYN_HIDDEN; j++) {
        double a = tanh(h[j]);
        for (int64_t c = 0; c < t->classes; c++) {
            logits[c] += a * t->w2[j * t->classes + c];
        }
    }
}

static int32_t argmax_biased(const double *logits, const double *bias, int64_t classes)
{
    int64_t best = 0;
    double best_v = logits[0] + bias[0];
    for (int64_t c = 1; c < classes; c++) {
        double v = logits[c] + bias[c];
        if (v > best_v) {
            best_v = v;
            best = c;
        }
    }
    return (int32_t)best;
}

/* Chooses the output biases so that the calibration set's classes come out
 * nearly equal: a random teacher's argmax is otherwise dominated by a few
 * classes.  Each round moves every class's bias against its surplus share,
 * with a shrinking step; deterministic. */
static void teacher_balance(teacher_t *t, const double *cal_logits, int64_t ncal,
                            int64_t *counts)
{
    int64_t classes = t->classes;
    double step = 1.0;
    for (int64_t c = 0; c < classes; c++) {
        t->b2[c] = 0.0;
    }
    for (int round = 0; round < 400; round++) {
        for (int64_t c = 0; c < classes; c++) {
            counts[c] = 0;
        }
        for (int64_t i = 0; i < ncal; i++) {
            counts[argmax_biased(cal_logits + i * classes, t->b2, classes)]++;
        }
        for (int64_t c = 0; c < classes; c++) {
            double share = (double)counts[c] / (double)ncal;
            t->b2[c] -= step * (share - 1.0 / (double)classes) * (double)classes;
        }
        step *= 0.985;
    }
}

static void teacher_free(teacher_t *t)
{
    mp_free(t->b2);
    mp_free(t->w2);
    mp_free(t->b1);
    mp_free(t->w1);
}

static mp_status_t teacher_build(teacher_t *t, int64_t dim, int64_t classes, uint64_t seed,
                                 mp_errbuf_t *err)
{
    t->dim = dim;
    t->classes = classes;
    t->w1 = mp_malloc((size_t)dim * SYN_HIDDEN * sizeof(float));
    t->b1 = mp_malloc(SYN_HIDDEN * sizeof(float));
    t->w2 = mp_malloc((size_t)classes * SYN_HIDDEN * sizeof(float));
    t->b2 = mp_malloc((size_t)classes * sizeof(double));
    double *cal = mp_malloc((size_t)SYN_CALIB * classes * sizeof(double));
    float *x = mp_malloc((size_t)dim * sizeof(float));
    int64_t *counts = mp_malloc((size_t)classes * sizeof(int64_t));
    if (t->w1 == NULL || t->b1 == NULL || t->w2 == NULL || t->b2 == NULL || cal == NULL ||
        x == NULL || counts == NULL) {
        mp_free(counts);
        mp_free(x);
        mp_free(cal);
        teacher_free(t);
        return mp_errbuf_set(err, MP_ERR_NOMEM, "synthetic data: out of memory for the teacher");
    }
    /* Inputs are U(-1, 1) (variance 1/3); W1 ~ U(-3/sqrt(dim), 3/sqrt(dim))
     * gives hidden pre-activations of variance about 1, where tanh is
     * neither linear nor saturated. */
    float a1 = 3.0f / sqrtf((float)dim);
    for (int64_t i = 0; i < dim * SYN_HIDDEN; i++) {
        t->w1[i] = (2.0f * syn_u01(seed, SYN_TAG_W1, 0, (uint64_t)i) - 1.0f) * a1;
    }
    for (int j = 0; j < SYN_HIDDEN; j++) {
        t->b1[j] = (2.0f * syn_u01(seed, SYN_TAG_B1, 0, (uint64_t)j) - 1.0f) * 0.5f;
    }
    for (int64_t i = 0; i < classes * SYN_HIDDEN; i++) {
        t->w2[i] = 2.0f * syn_u01(seed, SYN_TAG_W2, 0, (uint64_t)i) - 1.0f;
    }
    for (int64_t i = 0; i < SYN_CALIB; i++) {
        syn_features(x, seed, SYN_TAG_CAL, i, dim);
        teacher_logits(t, x, cal + i * classes);
    }
    teacher_balance(t, cal, SYN_CALIB, counts);
    mp_free(counts);
    mp_free(x);
    mp_free(cal);
    return MP_OK;
}

/* Fills ds with samples [first, first + n) of the stream. */
static mp_status_t syn_fill(mp_dataset_t *ds, const teacher_t *t, uint64_t seed, int64_t first,
                            int64_t n, mp_errbuf_t *err)
{
    ds->n = n;
    ds->dim = t->dim;
    ds->classes = t->classes;
    ds->ydim = 1;
    ds->x = mp_aligned_alloc((size_t)n * t->dim * sizeof(float));
    ds->y = mp_malloc((size_t)n * sizeof(int32_t));
    double *logits = mp_malloc((size_t)t->classes * sizeof(double));
    if (ds->x == NULL || ds->y == NULL || logits == NULL) {
        mp_free(logits);
        mp_dataset_free(ds);
        return mp_errbuf_set(err, MP_ERR_NOMEM, "synthetic data: out of memory for %lld samples",
                             (long long)n);
    }
    for (int64_t i = 0; i < n; i++) {
        float *x = ds->x + i * t->dim;
        syn_features(x, seed, SYN_TAG_X, first + i, t->dim);
        teacher_logits(t, x, logits);
        ds->y[i] = argmax_biased(logits, t->b2, t->classes);
    }
    mp_free(logits);
    return MP_OK;
}

mp_status_t mp_data_synthetic(int64_t n, int64_t test_n, int64_t dim, int64_t classes,
                              uint64_t seed, mp_dataset_t *train, mp_dataset_t *test,
                              mp_errbuf_t *err)
{
    if (n <= 0 || test_n < 0 || dim <= 0 || classes < 2) {
        return mp_errbuf_set(err, MP_ERR_INVAL,
                             "synthetic data: need samples > 0, test_samples >= 0, width > 0 "
                             "and classes >= 2 (got %lld, %lld, %lld, %lld)",
                             (long long)n, (long long)test_n, (long long)dim, (long long)classes);
    }
    if (classes > (1 << 20) || dim > SYN_MAX_ELEMENTS || n > SYN_MAX_ELEMENTS / dim ||
        test_n > SYN_MAX_ELEMENTS / dim) {
        return mp_errbuf_set(err, MP_ERR_INVAL,
                             "synthetic data: %lld + %lld samples of width %lld with %lld "
                             "classes is too large (at most %lld values per split, 1048576 "
                             "classes)",
                             (long long)n, (long long)test_n, (long long)dim, (long long)classes,
                             (long long)SYN_MAX_ELEMENTS);
    }
    teacher_t t = {0};
    mp_status_t st = teacher_build(&t, dim, classes, seed, err);
    if (st != MP_OK) {
        return st;
    }
    mp_dataset_t tr = {0}, te = {0};
    st = syn_fill(&tr, &t, seed, 0, n, err);
    if (st == MP_OK && test_n > 0) {
        st = syn_fill(&te, &t, seed, n, test_n, err);
        if (st != MP_OK) {
            mp_dataset_free(&tr);
        }
    }
    teacher_free(&t);
    if (st != MP_OK) {
        return st;
    }
    if (test_n == 0) {
        te.dim = dim;
        te.classes = classes;
        te.ydim = 1;
    }
    *train = tr;
    *test = te;
    return MP_OK;
}

/* ---- text: bytes as tokens ----------------------------------------------- */

/* The windows of a split of len bytes: sample i < floor((len - 1) / T) is
 * x = bytes[i*T, i*T + T), y = bytes[i*T + 1, i*T + T + 1). */
static mp_status_t text_split(const unsigned char *bytes, int64_t len, int64_t T, const char *what,
                              mp_dataset_t *ds, mp_errbuf_t *err)
{
    int64_t n = (len - 1) / T;
    ds->n = n;
    ds->dim = T;
    ds->ydim = T;
    ds->classes = MP_TEXT_VOCAB;
    ds->x = mp_aligned_alloc((size_t)(n * T) * sizeof(float));
    ds->y = mp_malloc((size_t)(n * T) * sizeof(int32_t));
    if (ds->x == NULL || ds->y == NULL) {
        mp_dataset_free(ds);
        return mp_errbuf_set(err, MP_ERR_NOMEM, "%s: out of memory for %lld windows of %lld bytes",
                             what, (long long)n, (long long)T);
    }
    for (int64_t i = 0; i < n * T; i++) {
        ds->x[i] = (float)bytes[i];
        ds->y[i] = bytes[i + 1];
    }
    return MP_OK;
}

mp_status_t mp_data_text_check_size(int64_t len, int64_t block_size, const char *what,
                                    mp_errbuf_t *err)
{
    if (block_size < 1) {
        return mp_errbuf_set(err, MP_ERR_INVAL, "%s: block size %lld is not positive", what,
                             (long long)block_size);
    }
    if (len <= 0) {
        return mp_errbuf_set(err, MP_ERR_FORMAT, "%s: the text is empty", what);
    }
    if (len > MP_TEXT_MAX_BYTES) {
        return mp_errbuf_set(err, MP_ERR_FORMAT,
                             "%s: %lld bytes is more than a text may hold (%lld)", what,
                             (long long)len, (long long)MP_TEXT_MAX_BYTES);
    }
    /* floor(0.9 len) in integers: exactly what the double product gives. */
    int64_t train = len * 9 / 10, test = len - train;
    if (train < block_size + 1 || test < block_size + 1) {
        bool tr = train < block_size + 1;
        /* The test split, ceil(len / 10) bytes, is the shorter: it holds a
         * window of T + 1 bytes from len = 10 T + 1 on. */
        return mp_errbuf_set(err, MP_ERR_FORMAT,
                             "%s: %lld bytes is too short for block size %lld: the %s split (%s "
                             "%lld bytes) holds no window of %lld + 1 bytes; a text needs at "
                             "least %lld bytes",
                             what, (long long)len, (long long)block_size, tr ? "training" : "test",
                             tr ? "the first 90%," : "the last 10%,",
                             (long long)(tr ? train : test), (long long)block_size,
                             (long long)(10 * block_size + 1));
    }
    return MP_OK;
}

mp_status_t mp_data_text_from_bytes(const unsigned char *bytes, int64_t len, int64_t block_size,
                                    const char *what, mp_dataset_t *train, mp_dataset_t *test,
                                    mp_errbuf_t *err)
{
    mp_status_t st = mp_data_text_check_size(len, block_size, what, err);
    if (st != MP_OK) {
        return st;
    }
    int64_t ntrain = len * 9 / 10;
    mp_dataset_t tr = {0}, te = {0};
    st = text_split(bytes, ntrain, block_size, what, &tr, err);
    if (st != MP_OK) {
        return st;
    }
    st = text_split(bytes + ntrain, len - ntrain, block_size, what, &te, err);
    if (st != MP_OK) {
        mp_dataset_free(&tr);
        return st;
    }
    *train = tr;
    *test = te;
    return MP_OK;
}

/* A text read from a file or a pipe, in a buffer that grows up to a
 * little more than MP_TEXT_MAX_BYTES; past that, bytes are counted and
 * dropped, so that total is the length the size check then refuses (the
 * buffer holds fewer than total bytes only then). */
typedef struct {
    unsigned char *p;
    size_t len, cap, total;
} text_buf_t;

/* One read() of fd into tb: the bytes read, 0 at the end, or -1 with errno
 * (EINTR included, for the caller to retry). */
static ssize_t text_buf_read(text_buf_t *tb, int fd)
{
    if (tb->len == tb->cap && tb->cap <= (size_t)MP_TEXT_MAX_BYTES) {
        size_t cap = tb->cap > 0 ? 2 * tb->cap : 1 << 16;
        unsigned char *bigger = mp_realloc(tb->p, cap);
        if (bigger == NULL) {
            errno = ENOMEM;
            return -1;
        }
        tb->p = bigger;
        tb->cap = cap;
    }
    unsigned char sink[4096];
    ssize_t r = tb->len < tb->cap ? read(fd, tb->p + tb->len, tb->cap - tb->len)
                                  : read(fd, sink, sizeof(sink));
    if (r > 0) {
        tb->len += tb->len < tb->cap ? (size_t)r : 0;
        tb->total += (size_t)r;
    }
    return r;
}

/* Reads fd to its end; errno is kept on failure. */
static int read_all(int fd, text_buf_t *tb)
{
    for (;;) {
        ssize_t r = text_buf_read(tb, fd);
        if (r == 0) {
            return 0;
        }
        if (r < 0 && errno != EINTR) {
            return -1;
        }
    }
}

mp_status_t mp_data_text_check(const char *path, int64_t block_size, int64_t *train_n_p,
                               mp_errbuf_t *err)
{
    mp_status_t st = mp_data_check_file(path, false, err);
    if (st != MP_OK) {
        return st;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return mp_errbuf_set(err, MP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    }
    struct stat sb;
    int r = fstat(fd, &sb);
    int e = errno;
    close(fd);
    if (r != 0) {
        return mp_errbuf_set(err, MP_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    int64_t len = (int64_t)sb.st_size;
    st = mp_data_text_check_size(len, block_size, path, err);
    if (st == MP_OK && train_n_p != NULL) {
        *train_n_p = (len * 9 / 10 - 1) / block_size; /* text_split's windows */
    }
    return st;
}

mp_status_t mp_data_load_text(const char *path, int64_t block_size, mp_dataset_t *train,
                              mp_dataset_t *test, mp_errbuf_t *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return mp_errbuf_set(err, MP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    }
    struct stat sb;
    if (fstat(fd, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        close(fd);
        return mp_errbuf_set(err, MP_ERR_IO, "%s: is a folder, not a text file", path);
    }
    /* A regular file too long is refused without reading it. */
    mp_status_t st = MP_OK;
    if (S_ISREG(sb.st_mode) && sb.st_size > MP_TEXT_MAX_BYTES) {
        st = mp_data_text_check_size((int64_t)sb.st_size, block_size, path, err);
        close(fd);
        return st;
    }
    text_buf_t tb = {0};
    int r = read_all(fd, &tb);
    int e = errno;
    close(fd);
    if (r != 0) {
        mp_free(tb.p);
        return mp_errbuf_set(err, e == ENOMEM ? MP_ERR_NOMEM : MP_ERR_IO, "%s: cannot read: %s",
                             path, strerror(e));
    }
    st = mp_data_text_from_bytes(tb.p, (int64_t)tb.total, block_size, path, train, test, err);
    mp_free(tb.p);
    return st;
}

/* Reads the program's stdout (the text, into tb) and stderr (for the
 * error message) until both close, without letting either pipe fill up.
 * errno is kept on failure. */
static int drain_pipes(int out_fd, int err_fd, text_buf_t *tb, char *errtext, size_t errsize)
{
    size_t elen = 0;
    struct pollfd pfd[2] = {{.fd = out_fd, .events = POLLIN}, {.fd = err_fd, .events = POLLIN}};
    while (pfd[0].fd >= 0 || pfd[1].fd >= 0) {
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        if (pfd[0].fd >= 0 && pfd[0].revents != 0) {
            ssize_t r = text_buf_read(tb, out_fd);
            if (r == 0) {
                pfd[0].fd = -1;
            } else if (r < 0 && errno != EINTR) {
                return -1;
            }
        }
        if (pfd[1].fd >= 0 && pfd[1].revents != 0) {
            char tmp[512];
            ssize_t r = read(err_fd, tmp, sizeof(tmp));
            if (r > 0) {
                for (ssize_t i = 0; i < r && elen + 1 < errsize; i++) {
                    errtext[elen++] = tmp[i];
                }
                errtext[elen] = '\0';
            } else if (r == 0 || errno != EINTR) {
                pfd[1].fd = -1;
            }
        }
    }
    return 0;
}

/* The first line of a program's stderr, for a message. */
static void first_line(char *s)
{
    char *nl = strchr(s, '\n');
    if (nl != NULL) {
        *nl = '\0';
    }
}

mp_status_t mp_data_load_program(const char *const argv[], int64_t block_size, mp_dataset_t *train,
                                 mp_dataset_t *test, mp_errbuf_t *err)
{
    /* "prog arg ..." names the text in every message. */
    char what[512];
    size_t off = 0;
    what[0] = '\0';
    for (int i = 0; argv[i] != NULL; i++) {
        int w = snprintf(what + off, sizeof(what) - off, "%s%s", i ? " " : "", argv[i]);
        if (w > 0 && (size_t)w < sizeof(what) - off) {
            off += (size_t)w;
        }
    }
    if (access(argv[0], X_OK) != 0) {
        return mp_errbuf_set(err, MP_ERR_IO, "%s: cannot run %s: %s", what, argv[0],
                             strerror(errno));
    }
    int out[2], errp[2];
    if (pipe2(out, O_CLOEXEC) != 0) {
        return mp_errbuf_set(err, MP_ERR_IO, "%s: cannot make a pipe: %s", what, strerror(errno));
    }
    if (pipe2(errp, O_CLOEXEC) != 0) {
        int e = errno;
        close(out[0]);
        close(out[1]);
        return mp_errbuf_set(err, MP_ERR_IO, "%s: cannot make a pipe: %s", what, strerror(e));
    }
    mp_status_t st = MP_OK;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&fa, errp[1], STDERR_FILENO);
    pid_t pid;
    int rc = posix_spawn(&pid, argv[0], &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(out[1]);
    close(errp[1]);
    if (rc != 0) {
        close(out[0]);
        close(errp[0]);
        return mp_errbuf_set(err, MP_ERR_IO, "%s: cannot run %s: %s", what, argv[0], strerror(rc));
    }
    text_buf_t tb = {0};
    char errtext[512] = "";
    int r = drain_pipes(out[0], errp[0], &tb, errtext, sizeof(errtext));
    int e = errno;
    close(out[0]);
    close(errp[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    first_line(errtext);
    if (r != 0) {
        st = mp_errbuf_set(err, e == ENOMEM ? MP_ERR_NOMEM : MP_ERR_IO,
                           "%s: reading its output failed: %s", what, strerror(e));
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        char how[64];
        if (WIFEXITED(status)) {
            snprintf(how, sizeof(how), "exited with status %d", WEXITSTATUS(status));
        } else {
            snprintf(how, sizeof(how), "was killed by signal %d", WTERMSIG(status));
        }
        st = mp_errbuf_set(err, MP_ERR_IO, "%s: %s failed: it %s%s%s", what, argv[0], how,
                           errtext[0] ? ": " : "", errtext);
    } else {
        st = mp_data_text_from_bytes(tb.p, (int64_t)tb.total, block_size, what, train, test,
                                     err);
    }
    mp_free(tb.p);
    return st;
}

mp_status_t mp_data_load_kjv(int64_t block_size, mp_dataset_t *train, mp_dataset_t *test,
                             mp_errbuf_t *err)
{
    static const char *const argv[] = {MP_KJV_PROGRAM, MP_KJV_RANGE, NULL};
    mp_status_t st = mp_data_load_program(argv, block_size, train, test, err);
    if (st == MP_ERR_IO) {
        /* The usual cause: the packages are not installed. */
        size_t n = strlen(err->msg);
        snprintf(err->msg + n, sizeof(err->msg) - n,
                 " (data.dataset \"kjv\" needs Debian's bible-kjv and bible-kjv-text: "
                 "deploy/install-deps.sh installs them)");
    }
    return st;
}

void mp_dataset_free(mp_dataset_t *ds)
{
    if (ds == NULL) {
        return;
    }
    mp_free(ds->x);
    mp_free(ds->y);
    memset(ds, 0, sizeof(*ds));
}

/* ---- sample order --------------------------------------------------------- */

void mp_data_order(int64_t *perm, int64_t n, uint64_t seed, int64_t epoch, int shuffle)
{
    for (int64_t i = 0; i < n; i++) {
        perm[i] = i;
    }
    if (!shuffle) {
        return;
    }
    /* Fisher-Yates from the back; the draw for position i depends only on
     * (seed, epoch, i).  The modulo's bias is below n / 2^64: negligible. */
    for (int64_t i = n - 1; i > 0; i--) {
        uint64_t h = mp_rng_hash(seed, (uint64_t)epoch, (uint64_t)i, ORDER_TAG);
        int64_t j = (int64_t)(h % (uint64_t)(i + 1));
        int64_t tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
}

void mp_data_gather(const mp_dataset_t *ds, const int64_t *perm, int64_t first, int64_t count,
                    float *x_out, int32_t *y_out)
{
    for (int64_t i = 0; i < count; i++) {
        int64_t s = perm[first + i];
        memcpy(x_out + i * ds->dim, ds->x + s * ds->dim, (size_t)ds->dim * sizeof(float));
        memcpy(y_out + i * ds->ydim, ds->y + s * ds->ydim, (size_t)ds->ydim * sizeof(int32_t));
    }
}
