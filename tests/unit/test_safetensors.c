/*
 * test_safetensors.c - the safetensors writer and its strict reader: a file
 * written is read back bit for bit with its metadata and no temporary file
 * left, and every kind of damage (a file cut short, a header length past
 * the end, offsets that overrun, overlap or leave a hole, a shape the
 * offsets disagree with, another dtype, a header that is not JSON) is
 * refused with MP_ERR_FORMAT and a message naming the file.  Files live in
 * a fresh temporary folder removed after each test.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/safetensors.h"

static char dir[64];

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/mp-test-st-XXXXXX");
    cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void teardown(void)
{
    nftw(dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
}

TestSuite(safetensors, .init = setup, .fini = teardown);

static const char *in_dir(const char *name)
{
    static char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return path;
}

/* A file of the 8-byte length, header text and `data` data bytes (zeros). */
static const char *write_raw(const char *name, const char *header, size_t data, long cut)
{
    const char *path = in_dir(name);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    unsigned long long n = strlen(header);
    unsigned char len8[8];
    for (int b = 0; b < 8; b++) {
        len8[b] = (unsigned char)(n >> (8 * b));
    }
    fwrite(len8, 1, 8, f);
    fwrite(header, 1, n, f);
    for (size_t i = 0; i < data; i++) {
        fputc(0, f);
    }
    fclose(f);
    if (cut > 0) {
        cr_assert_eq(truncate(path, cut), 0);
    }
    return path;
}

static void assert_refused(const char *path, const char *what)
{
    mp_st_file_t *f = NULL;
    mp_errbuf_t err = {{0}};
    mp_status_t st = mp_st_open(path, &f, &err);
    cr_assert_eq(st, MP_ERR_FORMAT, "%s: status %d (%s)", path, st, err.msg);
    cr_assert_null(f);
    cr_assert_not_null(strstr(err.msg, path), "the message names the file: %s", err.msg);
    cr_assert_not_null(strstr(err.msg, what), "the message says '%s': %s", what, err.msg);
}

Test(safetensors, round_trips_tensors_and_metadata)
{
    float a[6] = {1, -2, 3.5f, 4, 5, 1e-30f}, b[3] = {7, 8, 9};
    mp_st_entry_t e[2] = {{.name = "0.weight", .ndim = 2, .shape = {2, 3}, .data = a},
                          {.name = "0.bias", .ndim = 1, .shape = {3}, .data = b}};
    const char *keys[] = {"mpar.step"}, *vals[] = {"42"};
    mp_errbuf_t err = {{0}};
    const char *path = in_dir("x.safetensors");
    cr_assert_eq(mp_st_write(path, e, 2, keys, vals, 1, &err), MP_OK, "%s", err.msg);
    char tmp[300];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    cr_assert_neq(access(tmp, F_OK), 0, "no temporary file is left");
    mp_st_file_t *f;
    cr_assert_eq(mp_st_open(path, &f, &err), MP_OK, "%s", err.msg);
    cr_assert_eq(mp_st_count(f), 2);
    cr_assert_str_eq(mp_st_meta(f, "mpar.step"), "42");
    const mp_st_tensor_t *w = mp_st_find(f, "0.weight");
    cr_assert_not_null(w);
    cr_assert_eq(w->ndim, 2);
    cr_assert_eq(w->shape[0], 2);
    cr_assert_eq(w->shape[1], 3);
    float back[6];
    cr_assert_eq(mp_st_read(f, w, 0, 6, back, &err), MP_OK, "%s", err.msg);
    cr_assert_eq(memcmp(back, a, sizeof(a)), 0);
    cr_assert_eq(mp_st_read(f, w, 4, 2, back, &err), MP_OK);
    cr_assert_eq(memcmp(back, a + 4, 2 * sizeof(float)), 0);
    cr_assert_eq(mp_st_read(f, w, 5, 2, back, &err), MP_ERR_INVAL, "past its end is refused");
    const mp_st_tensor_t *bias = mp_st_find(f, "0.bias");
    cr_assert_eq(bias->ndim, 1);
    cr_assert_eq(mp_st_read(f, bias, 0, 3, back, &err), MP_OK);
    cr_assert_eq(memcmp(back, b, sizeof(b)), 0);
    cr_assert_null(mp_st_find(f, "nope"));
    mp_st_close(f);
}

Test(safetensors, header_is_padded_to_eight_bytes)
{
    float a[1] = {1};
    mp_st_entry_t e = {.name = "a", .ndim = 1, .shape = {1}, .data = a};
    const char *path = in_dir("p.safetensors");
    cr_assert_eq(mp_st_write(path, &e, 1, NULL, NULL, 0, NULL), MP_OK);
    FILE *f = fopen(path, "rb");
    unsigned char len8[8];
    cr_assert_eq(fread(len8, 1, 8, f), 8);
    fclose(f);
    cr_assert_eq(len8[0] % 8, 0);
}

Test(safetensors, refuses_a_truncated_file)
{
    const char *h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}";
    assert_refused(write_raw("t.safetensors", h, 16, 8 + (long)strlen(h) + 10), "overrun");
}

Test(safetensors, refuses_a_file_shorter_than_its_header)
{
    const char *h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}";
    assert_refused(write_raw("h.safetensors", h, 16, 20), "truncated");
    assert_refused(write_raw("e.safetensors", "", 0, 4), "truncated");
}

Test(safetensors, refuses_overlapping_offsets)
{
    const char *h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}";
    assert_refused(write_raw("o.safetensors", h, 12, 0), "overlap");
}

Test(safetensors, refuses_offsets_that_overrun_the_data)
{
    const char *h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}";
    assert_refused(write_raw("r.safetensors", h, 8, 0), "overrun");
}

Test(safetensors, refuses_a_hole_between_tensors)
{
    const char *h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}";
    assert_refused(write_raw("g.safetensors", h, 12, 0), "hole");
}

Test(safetensors, refuses_a_shape_its_offsets_disagree_with)
{
    const char *h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[3,2],\"data_offsets\":[0,16]}}";
    assert_refused(write_raw("s.safetensors", h, 16, 0), "its shape needs 24");
}

Test(safetensors, refuses_trailing_bytes_after_the_tensors)
{
    const char *h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    assert_refused(write_raw("x.safetensors", h, 12, 0), "the tensors hold 4");
}

Test(safetensors, refuses_other_dtypes_and_bad_headers)
{
    assert_refused(write_raw("d.safetensors",
                             "{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
                             0),
                   "F16");
    assert_refused(write_raw("j.safetensors", "{not json", 0, 0), "not a JSON object");
    assert_refused(write_raw("n.safetensors",
                             "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}",
                             0, 0),
                   "shape[0]");
    assert_refused(write_raw("m.safetensors", "{\"__metadata__\":{\"k\":1}}", 0, 0),
                   "__metadata__");
    assert_refused(write_raw("b.safetensors",
                             "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4,
                             0),
                   "begin <= end");
}

Test(safetensors, refuses_a_missing_file_naming_it)
{
    mp_st_file_t *f;
    mp_errbuf_t err;
    const char *path = in_dir("absent.safetensors");
    cr_assert_eq(mp_st_open(path, &f, &err), MP_ERR_NOTFOUND);
    cr_assert_not_null(strstr(err.msg, path));
}

Test(safetensors, a_failed_write_names_the_file_and_leaves_nothing)
{
    float a[1] = {1};
    mp_st_entry_t e = {.name = "a", .ndim = 1, .shape = {1}, .data = a};
    char path[300];
    snprintf(path, sizeof(path), "%s/no/such/folder/x.safetensors", dir);
    mp_errbuf_t err;
    cr_assert_eq(mp_st_write(path, &e, 1, NULL, NULL, 0, &err), MP_ERR_IO);
    cr_assert_not_null(strstr(err.msg, "x.safetensors.tmp"), "%s", err.msg);
    /* /dev/full fails every write with ENOSPC, like a full disk. */
    if (access("/dev/full", W_OK) == 0) {
        float big[4096] = {0};
        mp_st_entry_t eb = {.name = "b", .ndim = 1, .shape = {4096}, .data = big};
        char link[300];
        snprintf(link, sizeof(link), "%s/full.safetensors", dir);
        char tmp[320];
        snprintf(tmp, sizeof(tmp), "%s.tmp", link);
        cr_assert_eq(symlink("/dev/full", tmp), 0);
        cr_assert_eq(mp_st_write(link, &eb, 1, NULL, NULL, 0, &err), MP_ERR_IO);
        cr_assert_not_null(strstr(err.msg, "No space left"), "%s", err.msg);
        cr_assert_neq(access(link, F_OK), 0, "the file is not there");
    }
}
