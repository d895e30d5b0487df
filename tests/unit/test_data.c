/*
 * test_data.c - the synthetic teacher data set (deterministic per seed,
 * inputs in [-1, 1), classes balanced), the per-epoch sample order (a
 * permutation, deterministic, identity without shuffle, new each epoch),
 * batch gathering, text windows (DESIGN.md "Text data": the 90/10 split,
 * the windows exactly, the files refused naming them), and, where Debian's
 * packages are installed, the real Fashion-MNIST files and the King James
 * Bible of bible-kjv.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/alloc.h"
#include "model/data.h"

static void synth(int64_t n, int64_t test_n, int64_t dim, int64_t classes, uint64_t seed,
                  mp_dataset_t *train, mp_dataset_t *test)
{
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_data_synthetic(n, test_n, dim, classes, seed, train, test, &err), MP_OK,
                 "%s", err.msg);
}

static int same_data(const mp_dataset_t *a, const mp_dataset_t *b)
{
    return a->n == b->n && a->dim == b->dim &&
           memcmp(a->x, b->x, (size_t)(a->n * a->dim) * sizeof(float)) == 0 &&
           memcmp(a->y, b->y, (size_t)a->n * sizeof(int32_t)) == 0;
}

Test(synthetic, same_seed_gives_the_same_data)
{
    mp_dataset_t a, at, b, bt;
    synth(512, 64, 20, 10, 5, &a, &at);
    synth(512, 64, 20, 10, 5, &b, &bt);
    cr_expect(same_data(&a, &b));
    cr_expect(same_data(&at, &bt));
    cr_expect_eq(a.classes, 10);
    cr_expect_eq(at.n, 64);
    for (int64_t i = 0; i < a.n * a.dim; i++) {
        cr_assert(a.x[i] >= -1.0f && a.x[i] < 1.0f, "x[%lld] = %g", (long long)i, a.x[i]);
    }
    mp_dataset_free(&a);
    mp_dataset_free(&at);
    mp_dataset_free(&b);
    mp_dataset_free(&bt);
}

Test(synthetic, different_seed_gives_different_data)
{
    mp_dataset_t a, at, b, bt;
    synth(512, 0, 20, 10, 5, &a, &at);
    synth(512, 0, 20, 10, 6, &b, &bt);
    int64_t same_x = 0, same_y = 0;
    for (int64_t i = 0; i < a.n * a.dim; i++) {
        same_x += a.x[i] == b.x[i];
    }
    for (int64_t i = 0; i < a.n; i++) {
        same_y += a.y[i] == b.y[i];
    }
    cr_expect_lt(same_x, 100, "%lld of %lld inputs equal", (long long)same_x,
                 (long long)(a.n * a.dim));
    /* Unrelated labels agree about 1 time in 10. */
    cr_expect_lt(same_y, a.n / 4, "%lld of %lld labels equal", (long long)same_y,
                 (long long)a.n);
    mp_dataset_free(&a);
    mp_dataset_free(&b);
}

Test(synthetic, test_split_continues_the_training_stream)
{
    /* The test split is samples [n, n + test_n) of the same stream, so a
     * longer training split starts with the same samples. */
    mp_dataset_t a, at, b, bt;
    synth(300, 100, 12, 4, 9, &a, &at);
    synth(400, 0, 12, 4, 9, &b, &bt);
    cr_expect_eq(bt.n, 0);
    cr_expect_null(bt.x);
    cr_expect_eq(memcmp(a.x, b.x, 300 * 12 * sizeof(float)), 0);
    cr_expect_eq(memcmp(at.x, b.x + 300 * 12, 100 * 12 * sizeof(float)), 0);
    cr_expect_eq(memcmp(at.y, b.y + 300, 100 * sizeof(int32_t)), 0);
    mp_dataset_free(&a);
    mp_dataset_free(&at);
    mp_dataset_free(&b);
}

Test(synthetic, classes_are_balanced)
{
    static const int64_t classes[] = {2, 3, 10, 10, 37};
    static const int64_t dims[] = {8, 784, 64, 16, 32};
    for (int c = 0; c < 5; c++) {
        for (uint64_t seed = 1; seed <= 3; seed++) {
            mp_dataset_t tr, te;
            synth(4096, 0, dims[c], classes[c], seed * 11 + (uint64_t)c, &tr, &te);
            int64_t hist[64] = {0};
            for (int64_t i = 0; i < tr.n; i++) {
                cr_assert(tr.y[i] >= 0 && tr.y[i] < classes[c]);
                hist[tr.y[i]]++;
            }
            int64_t even = 4096 / classes[c];
            for (int64_t k = 0; k < classes[c]; k++) {
                cr_expect(hist[k] > even / 2 && hist[k] < even * 3 / 2,
                          "classes %lld dim %lld seed %llu: class %lld has %lld of 4096 samples",
                          (long long)classes[c], (long long)dims[c], (unsigned long long)seed,
                          (long long)k, (long long)hist[k]);
            }
            mp_dataset_free(&tr);
        }
    }
}

Test(synthetic, refuses_bad_sizes)
{
    mp_dataset_t tr = {0}, te = {0};
    mp_errbuf_t err = {{0}};
    cr_expect_eq(mp_data_synthetic(0, 0, 8, 10, 1, &tr, &te, &err), MP_ERR_INVAL);
    cr_expect_eq(mp_data_synthetic(10, 0, 8, 1, 1, &tr, &te, &err), MP_ERR_INVAL);
    cr_expect_eq(mp_data_synthetic(10, -1, 8, 2, 1, &tr, &te, &err), MP_ERR_INVAL);
    cr_expect_eq(mp_data_synthetic(1ll << 40, 0, 784, 10, 1, &tr, &te, &err), MP_ERR_INVAL);
    cr_expect_neq(strstr(err.msg, "too large"), NULL, "%s", err.msg);
    cr_expect_null(tr.x);
}

Test(synthetic, frees_what_it_allocates)
{
    int64_t before = mp_alloc_live_bytes();
    mp_dataset_t tr, te;
    synth(100, 10, 7, 3, 2, &tr, &te);
    cr_expect_gt(mp_alloc_live_bytes(), before);
    mp_dataset_free(&tr);
    mp_dataset_free(&te);
    cr_expect_eq(mp_alloc_live_bytes(), before);
}

static int is_permutation(const int64_t *perm, int64_t n)
{
    char *seen = calloc((size_t)n, 1);
    int ok = 1;
    for (int64_t i = 0; i < n && ok; i++) {
        ok = perm[i] >= 0 && perm[i] < n && !seen[perm[i]];
        if (ok) {
            seen[perm[i]] = 1;
        }
    }
    free(seen);
    return ok;
}

Test(order, is_a_deterministic_permutation_new_each_epoch)
{
    enum { N = 1000 };
    static int64_t a[N], b[N], c[N], d[N];
    mp_data_order(a, N, 42, 0, 1);
    mp_data_order(b, N, 42, 0, 1);
    mp_data_order(c, N, 42, 1, 1);
    mp_data_order(d, N, 43, 0, 1);
    cr_expect(is_permutation(a, N));
    cr_expect(is_permutation(c, N));
    cr_expect(is_permutation(d, N));
    cr_expect_eq(memcmp(a, b, sizeof(a)), 0, "same (seed, epoch) gave another order");
    int fixed = 0, same_ac = 0, same_ad = 0;
    for (int i = 0; i < N; i++) {
        fixed += a[i] == i;
        same_ac += a[i] == c[i];
        same_ad += a[i] == d[i];
    }
    /* A random permutation has about one fixed point, and two agree in
     * about one place. */
    cr_expect_lt(fixed, 10, "%d fixed points", fixed);
    cr_expect_lt(same_ac, 10, "epochs 0 and 1 agree in %d places", same_ac);
    cr_expect_lt(same_ad, 10, "seeds 42 and 43 agree in %d places", same_ad);
}

Test(order, is_the_identity_without_shuffle)
{
    int64_t p[57];
    mp_data_order(p, 57, 42, 3, 0);
    for (int i = 0; i < 57; i++) {
        cr_expect_eq(p[i], i);
    }
    mp_data_order(p, 1, 42, 3, 1);
    cr_expect_eq(p[0], 0);
    mp_data_order(p, 0, 42, 3, 1); /* nothing to write */
}

Test(order, is_uniform_over_small_permutations)
{
    /* All 6 orders of 3 samples appear about equally over 6000 epochs. */
    int counts[6] = {0};
    for (int64_t e = 0; e < 6000; e++) {
        int64_t p[3];
        mp_data_order(p, 3, 7, e, 1);
        cr_assert(is_permutation(p, 3));
        counts[p[0] * 2 + (p[1] > p[2])]++;
    }
    for (int k = 0; k < 6; k++) {
        cr_expect(counts[k] > 850 && counts[k] < 1150, "order %d seen %d times of 6000", k,
                  counts[k]);
    }
}

Test(gather, copies_the_chosen_samples)
{
    mp_dataset_t tr, te;
    synth(50, 0, 6, 3, 1, &tr, &te);
    int64_t perm[50];
    mp_data_order(perm, 50, 3, 0, 1);
    float x[10 * 6];
    int32_t y[10];
    mp_data_gather(&tr, perm, 20, 10, x, y);
    cr_expect_eq(tr.ydim, 1);
    for (int i = 0; i < 10; i++) {
        int64_t s = perm[20 + i];
        cr_expect_eq(y[i], tr.y[s]);
        cr_expect_eq(memcmp(x + i * 6, tr.x + s * 6, 6 * sizeof(float)), 0, "sample %d", i);
    }
    mp_dataset_free(&tr);
}

/* ---- text ------------------------------------------------------------- */

/* A temporary file holding bytes[0..len); its path in path (64 bytes). */
static void temp_text(char *path, const unsigned char *bytes, size_t len)
{
    snprintf(path, 64, "/tmp/mpar-test-text-XXXXXX");
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, bytes, len), (ssize_t)len);
    close(fd);
}

/* Byte i of the test texts: varied, and every value 0..255 occurs. */
static unsigned char text_byte(int64_t i)
{
    return (unsigned char)((i * 37 + i / 7) & 0xFF);
}

/* Every window of a split starting at byte `first` of bytes: x and y exact. */
static void expect_windows(const mp_dataset_t *ds, const unsigned char *bytes, int64_t first,
                           int64_t T)
{
    cr_expect_eq(ds->dim, T);
    cr_expect_eq(ds->ydim, T);
    cr_expect_eq(ds->classes, 256);
    for (int64_t i = 0; i < ds->n; i++) {
        for (int64_t t = 0; t < T; t++) {
            cr_expect_eq(ds->x[i * T + t], (float)bytes[first + i * T + t], "x[%lld][%lld]",
                         (long long)i, (long long)t);
            cr_expect_eq(ds->y[i * T + t], bytes[first + i * T + t + 1], "y[%lld][%lld]",
                         (long long)i, (long long)t);
        }
    }
}

Test(text, windows_are_exactly_the_designs)
{
    unsigned char bytes[1000];
    for (int i = 0; i < 1000; i++) {
        bytes[i] = text_byte(i);
    }
    char path[64];
    temp_text(path, bytes, sizeof(bytes));
    mp_dataset_t tr, te;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_data_load_text(path, 7, &tr, &te, &err), MP_OK, "%s", err.msg);
    /* 900 training bytes: floor(899 / 7) = 128 windows; 100 test bytes: 14. */
    cr_expect_eq(tr.n, 128);
    cr_expect_eq(te.n, 14);
    expect_windows(&tr, bytes, 0, 7);
    expect_windows(&te, bytes, 900, 7);
    /* The last training target is byte 128 * 7 = 896, inside the split. */
    cr_expect_eq(tr.y[128 * 7 - 1], bytes[896]);
    mp_dataset_free(&tr);
    mp_dataset_free(&te);
    unlink(path);
}

Test(text, split_sizes_follow_the_floor_of_nine_tenths)
{
    static const struct {
        int64_t len, T, ntrain, ntest;
    } cases[] = {
        /* floor(0.9 len) training bytes, floor((n - 1) / T) windows each. */
        {1000, 1, 899, 99}, {1000, 64, 14, 1}, {12345, 10, 1110, 123},
        {641, 64, 8, 1},    {77, 2, 34, 3},    {4298239, 64, 60443, 6715},
    };
    unsigned char *bytes = malloc(4298239);
    cr_assert(bytes != NULL);
    for (int64_t i = 0; i < 4298239; i++) {
        bytes[i] = text_byte(i);
    }
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        mp_dataset_t tr, te;
        mp_errbuf_t err = {{0}};
        cr_assert_eq(
            mp_data_text_from_bytes(bytes, cases[c].len, cases[c].T, "mem", &tr, &te, &err), MP_OK,
            "%s", err.msg);
        cr_expect_eq(tr.n, cases[c].ntrain, "len %lld T %lld: %lld training windows",
                     (long long)cases[c].len, (long long)cases[c].T, (long long)tr.n);
        cr_expect_eq(te.n, cases[c].ntest, "len %lld T %lld: %lld test windows",
                     (long long)cases[c].len, (long long)cases[c].T, (long long)te.n);
        int64_t ntr = cases[c].len * 9 / 10;
        cr_expect_eq(te.x[0], (float)bytes[ntr]);
        cr_expect_eq(te.y[te.n * te.dim - 1], bytes[ntr + te.n * te.dim]);
        mp_dataset_free(&tr);
        mp_dataset_free(&te);
    }
    free(bytes);
}

Test(text, a_file_of_exactly_one_test_window_loads)
{
    /* 10 T + 1 bytes: the test split is ceil(len / 10) = T + 1 bytes, one window. */
    enum { T = 16, LEN = 10 * T + 1 };
    unsigned char bytes[LEN];
    for (int i = 0; i < LEN; i++) {
        bytes[i] = text_byte(i);
    }
    char path[64];
    temp_text(path, bytes, LEN);
    mp_errbuf_t err = {{0}};
    cr_expect_eq(mp_data_text_check(path, T, NULL, &err), MP_OK, "%s", err.msg);
    mp_dataset_t tr, te;
    cr_assert_eq(mp_data_load_text(path, T, &tr, &te, &err), MP_OK, "%s", err.msg);
    cr_expect_eq(tr.n, (9 * T - 1) / T);
    cr_expect_eq(te.n, 1);
    expect_windows(&te, bytes, 9 * T, T);
    cr_expect_eq(te.y[T - 1], bytes[LEN - 1]);
    mp_dataset_free(&tr);
    mp_dataset_free(&te);
    unlink(path);
}

Test(text, a_file_short_of_one_window_is_refused_naming_it)
{
    enum { T = 16, LEN = 10 * T };
    unsigned char bytes[LEN];
    memset(bytes, 'a', sizeof(bytes));
    char path[64];
    temp_text(path, bytes, LEN);
    char want[256];
    snprintf(want, sizeof(want),
             "%s: 160 bytes is too short for block size 16: the test split (the last 10%%, 16 "
             "bytes) holds no window of 16 + 1 bytes; a text needs at least 161 bytes",
             path);
    mp_errbuf_t err = {{0}};
    cr_expect_eq(mp_data_text_check(path, T, NULL, &err), MP_ERR_FORMAT);
    cr_expect_str_eq(err.msg, want);
    mp_dataset_t tr, te;
    memset(&err, 0, sizeof(err));
    cr_expect_eq(mp_data_load_text(path, T, &tr, &te, &err), MP_ERR_FORMAT);
    cr_expect_str_eq(err.msg, want);
    /* Short in the training split too: 2 bytes for T = 1. */
    memset(&err, 0, sizeof(err));
    cr_expect_eq(mp_data_text_from_bytes(bytes, 2, 1, "two", &tr, &te, &err), MP_ERR_FORMAT);
    cr_expect_str_eq(err.msg, "two: 2 bytes is too short for block size 1: the training split "
                              "(the first 90%, 1 bytes) holds no window of 1 + 1 bytes; a text "
                              "needs at least 11 bytes");
    unlink(path);
}

Test(text, empty_and_missing_files_are_refused_naming_them)
{
    char path[64];
    temp_text(path, (const unsigned char *)"", 0);
    char want[128];
    snprintf(want, sizeof(want), "%s: the text is empty", path);
    mp_dataset_t tr, te;
    mp_errbuf_t err = {{0}};
    cr_expect_eq(mp_data_text_check(path, 8, NULL, &err), MP_ERR_FORMAT);
    cr_expect_str_eq(err.msg, want);
    cr_expect_eq(mp_data_load_text(path, 8, &tr, &te, &err), MP_ERR_FORMAT);
    cr_expect_str_eq(err.msg, want);
    unlink(path);
    snprintf(want, sizeof(want), "%s: cannot open: No such file or directory", path);
    cr_expect_eq(mp_data_text_check(path, 8, NULL, &err), MP_ERR_IO);
    cr_expect_str_eq(err.msg, want);
    cr_expect_eq(mp_data_load_text(path, 8, &tr, &te, &err), MP_ERR_IO);
    cr_expect_str_eq(err.msg, want);
    cr_expect_eq(mp_data_load_text("/tmp", 8, &tr, &te, &err), MP_ERR_IO);
    cr_expect_str_eq(err.msg, "/tmp: is a folder, not a text file");
}

Test(text, gather_copies_every_label_of_a_window)
{
    unsigned char bytes[400];
    for (int i = 0; i < 400; i++) {
        bytes[i] = text_byte(i);
    }
    mp_dataset_t tr, te;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_data_text_from_bytes(bytes, 400, 5, "mem", &tr, &te, &err), MP_OK, "%s",
                 err.msg);
    int64_t perm[71];
    cr_assert_eq(tr.n, 71);
    mp_data_order(perm, tr.n, 9, 0, 1);
    float x[4 * 5];
    int32_t y[4 * 5];
    mp_data_gather(&tr, perm, 3, 4, x, y);
    for (int i = 0; i < 4; i++) {
        int64_t s = perm[3 + i];
        for (int t = 0; t < 5; t++) {
            cr_expect_eq(x[i * 5 + t], (float)bytes[s * 5 + t]);
            cr_expect_eq(y[i * 5 + t], bytes[s * 5 + t + 1]);
        }
    }
    mp_dataset_free(&tr);
    mp_dataset_free(&te);
}

Test(text, a_program_that_fails_is_refused_naming_it)
{
    mp_dataset_t tr, te;
    mp_errbuf_t err = {{0}};
    const char *const missing[] = {"/nonexistent/bible", "gen1:1", NULL};
    cr_expect_eq(mp_data_load_program(missing, 8, &tr, &te, &err), MP_ERR_IO);
    cr_expect_str_eq(err.msg, "/nonexistent/bible gen1:1: cannot run /nonexistent/bible: No "
                              "such file or directory");
    const char *const failing[] = {"/bin/sh", "-c", "echo no such book >&2; exit 3", NULL};
    cr_expect_eq(mp_data_load_program(failing, 8, &tr, &te, &err), MP_ERR_IO);
    cr_expect_str_eq(err.msg, "/bin/sh -c echo no such book >&2; exit 3: /bin/sh failed: it "
                              "exited with status 3: no such book");
    const char *const silent[] = {"/bin/true", NULL};
    cr_expect_eq(mp_data_load_program(silent, 8, &tr, &te, &err), MP_ERR_FORMAT);
    cr_expect_str_eq(err.msg, "/bin/true: the text is empty");
    /* A program's text: the windows of what it printed. */
    const char *const echo[] = {"/bin/sh", "-c", "printf 'abcdefghijklmnopqrstuvwxyz'", NULL};
    cr_assert_eq(mp_data_load_program(echo, 2, &tr, &te, &err), MP_OK, "%s", err.msg);
    cr_expect_eq(tr.n, 11); /* floor(26 * 0.9) = 23 bytes: (23 - 1) / 2 */
    cr_expect_eq(te.n, 1);  /* "xyz" */
    cr_expect_eq(te.x[0], (float)'x');
    cr_expect_eq(te.y[1], 'z');
    mp_dataset_free(&tr);
    mp_dataset_free(&te);
}

Test(kjv, loads_the_king_james_bible_from_bible_kjv, .timeout = 60)
{
    if (access(MP_KJV_PROGRAM, X_OK) != 0) {
        cr_skip_test("%s is not installed (Debian's bible-kjv)", MP_KJV_PROGRAM);
    }
    mp_dataset_t tr, te;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_data_load_kjv(64, &tr, &te, &err), MP_OK, "%s", err.msg);
    /* About 4.3 MB: the windows of both splits cover all but < 2 T bytes. */
    int64_t covered = (tr.n + te.n) * 64;
    cr_expect(covered > 4200000 && covered < 4400000, "%lld bytes in windows", (long long)covered);
    cr_expect(te.n > 6000 && te.n < 7000, "%lld test windows", (long long)te.n);
    /* The first window starts with the header `bible` prints for Genesis. */
    static const char head[] = "\nGenesis 1\n\n  1 In the beginning God created the heaven";
    for (size_t i = 0; i < strlen(head); i++) {
        cr_expect_eq(tr.x[i], (float)(unsigned char)head[i], "byte %zu", i);
    }
    cr_expect_eq(tr.y[0], 'G');
    mp_dataset_free(&tr);
    mp_dataset_free(&te);
}

Test(fashion_mnist, loads_the_installed_data_set, .timeout = 120)
{
    if (access(MP_FASHION_MNIST_DIR "/train-images-idx3-ubyte.gz", R_OK) != 0) {
        cr_skip_test("%s is not installed", MP_FASHION_MNIST_DIR);
    }
    mp_dataset_t train, test;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_data_load_fashion_mnist(MP_FASHION_MNIST_DIR, &train, &test, &err), MP_OK,
                 "%s", err.msg);
    cr_expect_eq(train.n, 60000);
    cr_expect_eq(test.n, 10000);
    cr_expect_eq(train.dim, 784);
    cr_expect_eq(test.dim, 784);
    cr_expect_eq(train.classes, 10);
    int64_t hist[10] = {0}, thist[10] = {0};
    for (int64_t i = 0; i < train.n; i++) {
        hist[train.y[i]]++;
    }
    for (int64_t i = 0; i < test.n; i++) {
        thist[test.y[i]]++;
    }
    for (int k = 0; k < 10; k++) {
        cr_expect_eq(hist[k], 6000, "train class %d", k);
        cr_expect_eq(thist[k], 1000, "test class %d", k);
    }
    float lo = 1.0f, hi = 0.0f;
    for (int64_t i = 0; i < train.n * train.dim; i++) {
        lo = train.x[i] < lo ? train.x[i] : lo;
        hi = train.x[i] > hi ? train.x[i] : hi;
    }
    cr_expect_eq(lo, 0.0f);
    cr_expect_eq(hi, 1.0f);
    /* Every pixel is a byte over 255. */
    for (int64_t i = 0; i < 784; i++) {
        float b = test.x[i] * 255.0f;
        cr_expect_eq(test.x[i], (float)(int)(b + 0.5f) / 255.0f, "pixel %lld", (long long)i);
    }
    mp_dataset_free(&train);
    mp_dataset_free(&test);
}

Test(text, a_fifo_as_the_text_is_refused_without_blocking, .timeout = 10)
{
    /* open() of a FIFO waits for a writer: the check refuses it from stat()
     * (a blocked check fails the test's timeout). */
    char path[64];
    snprintf(path, sizeof(path), "/tmp/mp-test-fifo-%d", (int)getpid());
    unlink(path);
    cr_assert_eq(mkfifo(path, 0600), 0);
    mp_errbuf_t err = {{0}};
    cr_expect_eq(mp_data_text_check(path, 8, NULL, &err), MP_ERR_IO);
    char want[128];
    snprintf(want, sizeof(want), "%s is a FIFO, not a regular file", path);
    cr_expect_str_eq(err.msg, want);
    unlink(path);
}

Test(text, the_check_counts_the_training_windows_as_the_loader)
{
    enum { T = 16, LEN = 1000 };
    unsigned char bytes[LEN];
    for (int i = 0; i < LEN; i++) {
        bytes[i] = text_byte(i);
    }
    char path[64];
    temp_text(path, bytes, LEN);
    int64_t n = -1;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_data_text_check(path, T, &n, &err), MP_OK, "%s", err.msg);
    mp_dataset_t tr, te;
    cr_assert_eq(mp_data_load_text(path, T, &tr, &te, &err), MP_OK, "%s", err.msg);
    cr_expect_eq(n, tr.n, "check %lld windows, loader %lld", (long long)n, (long long)tr.n);
    mp_dataset_free(&tr);
    mp_dataset_free(&te);
    unlink(path);
}
