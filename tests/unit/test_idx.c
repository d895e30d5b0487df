/*
 * test_idx.c - the gzipped IDX reader: small files written into a fresh
 * temporary folder (removed after each test) are read back exactly, and
 * each kind of damage (missing, truncated header or payload, bad magic, bad
 * dimensions, label out of range, corrupt or cut gzip stream, trailing
 * bytes, image/label count mismatch) gives its own message naming the file.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "common/alloc.h"
#include "model/data.h"

static char dir[64];

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/mp-test-idx-XXXXXX");
    cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void teardown(void) { nftw(dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS); }

TestSuite(idx, .init = setup, .fini = teardown);

static char *in_dir(const char *name)
{
    static char paths[8][256];
    static int next;
    char *p = paths[next++ % 8];
    snprintf(p, 256, "%s/%s", dir, name);
    return p;
}

/* The bytes of an IDX file: magic, dims, payload (big-endian header). */
static size_t idx_bytes(unsigned char *out, uint32_t magic, const uint32_t *dims, int ndims,
                        const unsigned char *payload, size_t n)
{
    size_t off = 0;
    uint32_t words[4] = {magic};
    for (int i = 0; i < ndims; i++) {
        words[1 + i] = dims[i];
    }
    for (int w = 0; w <= ndims; w++) {
        out[off++] = (unsigned char)(words[w] >> 24);
        out[off++] = (unsigned char)(words[w] >> 16);
        out[off++] = (unsigned char)(words[w] >> 8);
        out[off++] = (unsigned char)words[w];
    }
    if (n > 0) {
        memcpy(out + off, payload, n);
    }
    return off + n;
}

static void write_gz(const char *path, const unsigned char *bytes, size_t n)
{
    gzFile gz = gzopen(path, "wb");
    cr_assert_not_null(gz);
    if (n > 0) {
        cr_assert_eq(gzwrite(gz, bytes, (unsigned)n), (int)n);
    }
    cr_assert_eq(gzclose(gz), Z_OK);
}

static void write_plain(const char *path, const unsigned char *bytes, size_t n)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(bytes, 1, n, f), n);
    fclose(f);
}

static size_t read_plain(const char *path, unsigned char *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f);
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    return n;
}

/* A gzipped images file of n images of rows x cols, pixel k = (k * 37) % 256. */
static void write_images(const char *path, uint32_t n, uint32_t rows, uint32_t cols)
{
    size_t count = (size_t)n * rows * cols;
    unsigned char *pix = malloc(count), *file = malloc(count + 16);
    for (size_t k = 0; k < count; k++) {
        pix[k] = (unsigned char)((k * 37) % 256);
    }
    uint32_t dims[3] = {n, rows, cols};
    write_gz(path, file, idx_bytes(file, 0x803, dims, 3, pix, count));
    free(file);
    free(pix);
}

static void write_labels(const char *path, uint32_t n)
{
    unsigned char lab[4096], file[4096 + 8];
    cr_assert_leq(n, 4096);
    for (uint32_t i = 0; i < n; i++) {
        lab[i] = (unsigned char)(i % 10);
    }
    uint32_t dims[1] = {n};
    write_gz(path, file, idx_bytes(file, 0x801, dims, 1, lab, n));
}

static mp_status_t read_images(const char *path, mp_errbuf_t *err)
{
    float *x = NULL;
    int64_t n = -1, dim = -1;
    mp_status_t st = mp_idx_read_images(path, &x, &n, &dim, err);
    if (st == MP_OK) {
        mp_free(x);
    } else {
        cr_expect_null(x, "output written on error");
        cr_expect_eq(n, -1, "output written on error");
    }
    return st;
}

static mp_status_t read_labels(const char *path, mp_errbuf_t *err)
{
    int32_t *y = NULL;
    int64_t n = -1;
    mp_status_t st = mp_idx_read_labels(path, &y, &n, err);
    if (st == MP_OK) {
        mp_free(y);
    } else {
        cr_expect_null(y, "output written on error");
    }
    return st;
}

static void expect_msg(const mp_errbuf_t *err, const char *fmt, const char *path)
{
    char want[1024];
    snprintf(want, sizeof(want), fmt, path);
    cr_expect_str_eq(err->msg, want);
}

Test(idx, reads_images_as_pixels_over_255)
{
    const char *p = in_dir("img.gz");
    write_images(p, 3, 2, 5);
    float *x = NULL;
    int64_t n = 0, dim = 0;
    mp_errbuf_t err = {{0}};
    int64_t before = mp_alloc_live_bytes();
    cr_assert_eq(mp_idx_read_images(p, &x, &n, &dim, &err), MP_OK, "%s", err.msg);
    cr_expect_eq(n, 3);
    cr_expect_eq(dim, 10);
    for (int k = 0; k < 30; k++) {
        unsigned char b = (unsigned char)((k * 37) % 256);
        cr_expect_eq(x[k], b / 255.0f, "pixel %d", k);
    }
    mp_free(x);
    cr_expect_eq(mp_alloc_live_bytes(), before, "the reader leaked host memory");
}

Test(idx, reads_labels)
{
    const char *p = in_dir("lab.gz");
    write_labels(p, 25);
    int32_t *y = NULL;
    int64_t n = 0;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_idx_read_labels(p, &y, &n, &err), MP_OK, "%s", err.msg);
    cr_expect_eq(n, 25);
    for (int i = 0; i < 25; i++) {
        cr_expect_eq(y[i], i % 10);
    }
    mp_free(y);
}

Test(idx, reads_an_uncompressed_file_too)
{
    unsigned char pix[4] = {0, 255, 51, 102}, file[32];
    uint32_t dims[3] = {1, 2, 2};
    const char *p = in_dir("plain-images");
    write_plain(p, file, idx_bytes(file, 0x803, dims, 3, pix, 4));
    float *x = NULL;
    int64_t n = 0, dim = 0;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_idx_read_images(p, &x, &n, &dim, &err), MP_OK, "%s", err.msg);
    cr_expect(n == 1 && dim == 4);
    cr_expect_eq(x[0], 0.0f);
    cr_expect_eq(x[1], 1.0f);
    cr_expect_eq(x[2], 51 / 255.0f);
    cr_expect_eq(x[3], 102 / 255.0f);
    mp_free(x);
}

Test(idx, names_a_missing_file)
{
    const char *p = in_dir("nope.gz");
    mp_errbuf_t err = {{0}};
    cr_expect_eq(read_images(p, &err), MP_ERR_IO);
    expect_msg(&err, "%s: cannot open: No such file or directory", p);
    cr_expect_eq(read_labels(p, &err), MP_ERR_IO);
    expect_msg(&err, "%s: cannot open: No such file or directory", p);
}

Test(idx, reports_a_truncated_header)
{
    unsigned char file[32];
    uint32_t dims[3] = {1, 28, 28};
    size_t n = idx_bytes(file, 0x803, dims, 3, NULL, 0);
    const char *p = in_dir("short-header.gz");
    write_gz(p, file, n - 10); /* magic and 2 bytes of the count */
    mp_errbuf_t err = {{0}};
    cr_expect_eq(read_images(p, &err), MP_ERR_FORMAT);
    expect_msg(&err, "%s: truncated: expected 16 bytes of header, found 6", p);

    const char *e = in_dir("empty.gz");
    write_gz(e, file, 0);
    cr_expect_eq(read_labels(e, &err), MP_ERR_FORMAT);
    expect_msg(&err, "%s: truncated: expected 8 bytes of header, found 0", e);
}

Test(idx, reports_a_truncated_payload)
{
    unsigned char pix[12] = {1, 2, 3, 4, 5}, file[64];
    uint32_t dims[3] = {3, 2, 2};
    const char *p = in_dir("short-pixels.gz");
    write_gz(p, file, idx_bytes(file, 0x803, dims, 3, pix, 5));
    mp_errbuf_t err = {{0}};
    cr_expect_eq(read_images(p, &err), MP_ERR_FORMAT);
    expect_msg(&err, "%s: truncated: expected 12 bytes of pixel data, found 5", p);

    unsigned char lab[3] = {1, 2, 3};
    uint32_t ldims[1] = {7};
    const char *l = in_dir("short-labels.gz");
    write_gz(l, file, idx_bytes(file, 0x801, ldims, 1, lab, 3));
    cr_expect_eq(read_labels(l, &err), MP_ERR_FORMAT);
    expect_msg(&err, "%s: truncated: expected 7 bytes of label data, found 3", l);
}

Test(idx, reports_trailing_bytes)
{
    unsigned char pix[6] = {0}, file[64];
    uint32_t dims[3] = {1, 2, 2};
    const char *p = in_dir("long.gz");
    write_gz(p, file, idx_bytes(file, 0x803, dims, 3, pix, 6));
    mp_errbuf_t err = {{0}};
    cr_expect_eq(read_images(p, &err), MP_ERR_FORMAT);
    expect_msg(&err,
               "%s: 2 bytes of trailing data after the pixel data (the header's dimensions do "
               "not match the file size)",
               p);
}

Test(idx, reports_bad_magic)
{
    const char *lab = in_dir("labels.gz");
    write_labels(lab, 10);
    mp_errbuf_t err = {{0}};
    cr_expect_eq(read_images(lab, &err), MP_ERR_FORMAT);
    expect_msg(&err, "%s: bad magic 0x00000801, expected 0x00000803 (images); this is an IDX "
                     "labels file",
               lab);

    const char *img = in_dir("images.gz");
    write_images(img, 2, 2, 2);
    cr_expect_eq(read_labels(img, &err), MP_ERR_FORMAT);
    expect_msg(&err, "%s: bad magic 0x00000803, expected 0x00000801 (labels); this is an IDX "
                     "images file",
               img);

    unsigned char file[64];
    uint32_t dims[3] = {1, 1, 1};
    const char *junk = in_dir("junk.gz");
    write_gz(junk, file, idx_bytes(file, 0x1F8B0808, dims, 3, file, 1));
    cr_expect_eq(read_images(junk, &err), MP_ERR_FORMAT);
    expect_msg(&err, "%s: bad magic 0x1F8B0808, expected 0x00000803 (images)", junk);

    /* Element type 0x0D (float) instead of 0x08 (unsigned byte). */
    const char *flt = in_dir("float.gz");
    write_gz(flt, file, idx_bytes(file, 0x0D03, dims, 3, file, 4));
    cr_expect_eq(read_images(flt, &err), MP_ERR_FORMAT);
    expect_msg(&err, "%s: bad magic 0x00000D03, expected 0x00000803 (images)", flt);
}

Test(idx, reports_bad_dimensions)
{
    unsigned char file[64], pix[4] = {0};
    mp_errbuf_t err = {{0}};
    uint32_t dims2[2] = {2, 2};
    const char *flat = in_dir("2d.gz");
    write_gz(flat, file, idx_bytes(file, 0x802, dims2, 2, pix, 4));
    cr_expect_eq(read_images(flat, &err), MP_ERR_FORMAT);
    expect_msg(&err, "%s: bad dimensions: the file has 2 dimensions, images need 3", flat);

    uint32_t zero[3] = {0, 28, 28};
    const char *z = in_dir("zero.gz");
    write_gz(z, file, idx_bytes(file, 0x803, zero, 3, pix, 0));
    cr_expect_eq(read_images(z, &err), MP_ERR_FORMAT);
    expect_msg(&err, "%s: bad dimensions 0 x 28 x 28: every dimension must be positive", z);

    /* Refused from the header alone, before allocating 4e15 bytes. */
    uint32_t huge[3] = {4000000000u, 1000000, 1000};
    const char *h = in_dir("huge.gz");
    write_gz(h, file, idx_bytes(file, 0x803, huge, 3, pix, 4));
    int64_t before = mp_alloc_live_bytes();
    cr_expect_eq(read_images(h, &err), MP_ERR_FORMAT);
    expect_msg(&err,
               "%s: bad dimensions 4000000000 x 1000000 x 1000: more than 100000000 elements", h);
    cr_expect_eq(mp_alloc_live_bytes(), before);

    uint32_t lzero[1] = {0};
    const char *lz = in_dir("lzero.gz");
    write_gz(lz, file, idx_bytes(file, 0x801, lzero, 1, pix, 0));
    cr_expect_eq(read_labels(lz, &err), MP_ERR_FORMAT);
    expect_msg(&err, "%s: bad dimensions 0: every dimension must be positive", lz);
}

Test(idx, reports_a_label_out_of_range)
{
    unsigned char lab[4] = {9, 0, 10, 3}, file[64];
    uint32_t dims[1] = {4};
    const char *p = in_dir("bad-label.gz");
    write_gz(p, file, idx_bytes(file, 0x801, dims, 1, lab, 4));
    mp_errbuf_t err = {{0}};
    cr_expect_eq(read_labels(p, &err), MP_ERR_FORMAT);
    expect_msg(&err, "%s: label 10 of sample 2 is out of range [0, 9]", p);
}

Test(idx, reports_a_corrupt_gzip_stream)
{
    const char *p = in_dir("good.gz");
    write_images(p, 50, 28, 28);
    static unsigned char buf[200000];
    size_t n = read_plain(p, buf, sizeof(buf));
    cr_assert_gt(n, 100);
    mp_errbuf_t err = {{0}};

    /* A wrong CRC in the gzip trailer: the data decompress, the check fails. */
    const char *crc = in_dir("bad-crc.gz");
    buf[n - 8] ^= 0xFF;
    write_plain(crc, buf, n);
    buf[n - 8] ^= 0xFF;
    cr_expect_eq(read_images(crc, &err), MP_ERR_FORMAT);
    expect_msg(&err, "%s: corrupt gzip stream: incorrect data check", crc);

    /* An invalid deflate block type (3) in the first block header, right
     * after gzopen's 10-byte gzip header. */
    const char *blk = in_dir("bad-block.gz");
    buf[10] |= 0x06;
    write_plain(blk, buf, n);
    cr_expect_eq(read_images(blk, &err), MP_ERR_FORMAT);
    expect_msg(&err, "%s: corrupt gzip stream: invalid block type", blk);
}

Test(idx, reports_a_cut_gzip_stream_as_truncated)
{
    const char *p = in_dir("full.gz");
    write_images(p, 50, 28, 28);
    static unsigned char buf[200000];
    size_t n = read_plain(p, buf, sizeof(buf));
    const char *cut = in_dir("cut.gz");
    write_plain(cut, buf, n / 2);
    mp_errbuf_t err = {{0}};
    cr_expect_eq(read_images(cut, &err), MP_ERR_FORMAT);
    char prefix[300];
    snprintf(prefix, sizeof(prefix), "%s: truncated: expected 39200 bytes of pixel data, found ",
             cut);
    cr_expect_eq(strncmp(err.msg, prefix, strlen(prefix)), 0, "%s", err.msg);
    const char *tail = " (the gzip stream ends unexpectedly)";
    size_t len = strlen(err.msg);
    cr_expect(len > strlen(tail) && strcmp(err.msg + len - strlen(tail), tail) == 0, "%s",
              err.msg);
}

/* A Fashion-MNIST-shaped folder with the given counts. */
static void write_folder(uint32_t train_images, uint32_t train_labels, uint32_t test_images,
                         uint32_t test_labels, uint32_t test_cols)
{
    write_images(in_dir("train-images-idx3-ubyte.gz"), train_images, 4, 4);
    write_labels(in_dir("train-labels-idx1-ubyte.gz"), train_labels);
    write_images(in_dir("t10k-images-idx3-ubyte.gz"), test_images, 4, test_cols);
    write_labels(in_dir("t10k-labels-idx1-ubyte.gz"), test_labels);
}

Test(idx, loads_a_fashion_mnist_folder)
{
    write_folder(20, 20, 7, 7, 4);
    mp_dataset_t train = {0}, test = {0};
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_data_load_fashion_mnist(dir, &train, &test, &err), MP_OK, "%s", err.msg);
    cr_expect(train.n == 20 && train.dim == 16 && train.classes == 10);
    cr_expect(test.n == 7 && test.dim == 16 && test.classes == 10);
    cr_expect_eq(train.y[13], 3);
    cr_expect_eq(test.x[5], (5 * 37 % 256) / 255.0f);
    mp_dataset_free(&train);
    mp_dataset_free(&test);
    cr_expect_null(train.x);
}

Test(idx, refuses_an_image_label_count_mismatch)
{
    write_folder(20, 19, 7, 7, 4);
    mp_dataset_t train = {0}, test = {0};
    mp_errbuf_t err = {{0}};
    int64_t before = mp_alloc_live_bytes();
    cr_expect_eq(mp_data_load_fashion_mnist(dir, &train, &test, &err), MP_ERR_FORMAT);
    char want[1024];
    snprintf(want, sizeof(want),
             "%s/train-images-idx3-ubyte.gz has 20 images but %s/train-labels-idx1-ubyte.gz has "
             "19 labels",
             dir, dir);
    cr_expect_str_eq(err.msg, want);
    cr_expect_null(train.x);
    cr_expect_eq(mp_alloc_live_bytes(), before);

    write_folder(20, 20, 7, 8, 4);
    cr_expect_eq(mp_data_load_fashion_mnist(dir, &train, &test, &err), MP_ERR_FORMAT);
    snprintf(want, sizeof(want),
             "%s/t10k-images-idx3-ubyte.gz has 7 images but %s/t10k-labels-idx1-ubyte.gz has "
             "8 labels",
             dir, dir);
    cr_expect_str_eq(err.msg, want);
    cr_expect_eq(mp_alloc_live_bytes(), before);
}

Test(idx, refuses_splits_of_different_widths)
{
    write_folder(20, 20, 7, 7, 5);
    mp_dataset_t train = {0}, test = {0};
    mp_errbuf_t err = {{0}};
    cr_expect_eq(mp_data_load_fashion_mnist(dir, &train, &test, &err), MP_ERR_FORMAT);
    char want[1024];
    snprintf(want, sizeof(want),
             "%s/t10k-images-idx3-ubyte.gz has 20 pixels per image but "
             "%s/train-images-idx3-ubyte.gz has 16",
             dir, dir);
    cr_expect_str_eq(err.msg, want);
}

Test(idx, names_the_missing_file_of_a_folder)
{
    write_images(in_dir("train-images-idx3-ubyte.gz"), 5, 4, 4);
    mp_dataset_t train = {0}, test = {0};
    mp_errbuf_t err = {{0}};
    cr_expect_eq(mp_data_load_fashion_mnist(dir, &train, &test, &err), MP_ERR_IO);
    char want[1024];
    snprintf(want, sizeof(want), "%s/train-labels-idx1-ubyte.gz: cannot open: No such file or "
                                 "directory",
             dir);
    cr_expect_str_eq(err.msg, want);
}

Test(idx, a_folder_check_reads_the_headers_not_the_data)
{
    write_folder(20, 20, 7, 7, 4);
    int64_t n = -1, dim = -1;
    mp_errbuf_t err = {{0}};
    size_t before = mp_alloc_live_bytes();
    cr_assert_eq(mp_data_fashion_mnist_check(dir, &n, &dim, &err), MP_OK, "%s", err.msg);
    cr_expect_eq(n, 20);
    cr_expect_eq(dim, 16);
    cr_expect_eq(mp_alloc_live_bytes(), before, "the check allocated data");
    /* Counts that disagree are refused by the check as by the loader. */
    write_labels(in_dir("t10k-labels-idx1-ubyte.gz"), 8);
    cr_expect_eq(mp_data_fashion_mnist_check(dir, &n, &dim, &err), MP_ERR_FORMAT);
    char want[1024];
    snprintf(want, sizeof(want),
             "%s/t10k-images-idx3-ubyte.gz has 7 images but %s/t10k-labels-idx1-ubyte.gz has "
             "8 labels",
             dir, dir);
    cr_expect_str_eq(err.msg, want);
}

Test(idx, a_fifo_in_the_folder_is_refused_without_blocking, .timeout = 10)
{
    /* open() of a FIFO waits for a writer that never comes: the check must
     * refuse it from stat() alone (the test's timeout fails a blocked one). */
    write_folder(20, 20, 7, 7, 4);
    cr_assert_eq(unlink(in_dir("train-labels-idx1-ubyte.gz")), 0);
    cr_assert_eq(mkfifo(in_dir("train-labels-idx1-ubyte.gz"), 0600), 0);
    int64_t n, dim;
    mp_errbuf_t err = {{0}};
    cr_expect_eq(mp_data_fashion_mnist_check(dir, &n, &dim, &err), MP_ERR_IO);
    char want[1024];
    snprintf(want, sizeof(want), "%s/train-labels-idx1-ubyte.gz is a FIFO, not a regular file",
             dir);
    cr_expect_str_eq(err.msg, want);
    /* And a FIFO where the folder should be. */
    cr_assert_eq(mkfifo(in_dir("fifo"), 0600), 0);
    cr_expect_eq(mp_data_fashion_mnist_check(in_dir("fifo"), &n, &dim, &err), MP_ERR_IO);
    snprintf(want, sizeof(want), "%s/fifo is a FIFO, not a folder", dir);
    cr_expect_str_eq(err.msg, want);
}
