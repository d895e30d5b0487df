/*
 * test_npy.c - the .npy reader and the parameter files: what the writer
 * writes reads back exactly, a transformer block's LayerNorm parameters
 * and biases are 1-D and its weights [in, out], and every kind of wrong
 * file (missing, not .npy, another dtype, Fortran order, another shape,
 * truncated or trailing data) is refused with a message naming the file.
 * Files live in a fresh temporary folder, removed after each test.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/alloc.h"
#include "model/npy.h"

static char dir[64];

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/mp-test-npy-XXXXXX");
    cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void teardown(void) { nftw(dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS); }

TestSuite(npy, .init = setup, .fini = teardown);

static const char *in_dir(const char *name)
{
    static char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return path;
}

/* A .npy v1 file with the given header dict and `data_bytes` bytes of data. */
static void write_raw(const char *path, const char *dict, size_t data_bytes)
{
    size_t len = strlen(dict);
    size_t total = 10 + len + 1;
    size_t pad = (64 - total % 64) % 64;
    unsigned short hlen = (unsigned short)(len + pad + 1);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hlen & 0xff),
                             (unsigned char)(hlen >> 8)};
    fwrite(pre, 1, 10, f);
    fwrite(dict, 1, len, f);
    for (size_t i = 0; i < pad; i++) {
        fputc(' ', f);
    }
    fputc('\n', f);
    for (size_t i = 0; i < data_bytes; i++) {
        fputc(0, f);
    }
    fclose(f);
}

static mp_status_t read_2x3(const char *path, mp_errbuf_t *err)
{
    float buf[6];
    int64_t shape[2] = {2, 3};
    return mp_npy_read_into(path, 2, shape, buf, err);
}

Test(npy, writes_and_reads_back_exactly)
{
    float a[6] = {1.5f, -2.0f, 3.25f, 0.0f, 1e-30f, -7.0f};
    int64_t shape[2] = {2, 3};
    mp_errbuf_t err;
    const char *p = in_dir("a.npy");
    cr_assert_eq(mp_npy_write(p, a, 2, shape, &err), MP_OK, "%s", err.msg);
    float b[6] = {0};
    cr_assert_eq(mp_npy_read_into(p, 2, shape, b, &err), MP_OK, "%s", err.msg);
    cr_assert_eq(memcmp(a, b, sizeof(a)), 0);
    float *c = NULL;
    int ndim = 0;
    int64_t got[4];
    cr_assert_eq(mp_npy_read(p, &c, &ndim, got, &err), MP_OK, "%s", err.msg);
    cr_assert_eq(ndim, 2);
    cr_assert_eq(got[0], 2);
    cr_assert_eq(got[1], 3);
    cr_assert_eq(memcmp(a, c, sizeof(a)), 0);
    mp_free(c);
}

Test(npy, refuses_a_missing_file_naming_it)
{
    mp_errbuf_t err;
    cr_assert_eq(read_2x3(in_dir("none.npy"), &err), MP_ERR_IO);
    cr_assert(strstr(err.msg, "none.npy") != NULL, "%s", err.msg);
}

Test(npy, refuses_a_file_that_is_not_npy)
{
    const char *p = in_dir("text.npy");
    FILE *f = fopen(p, "w");
    fputs("hello, not numpy at all\n", f);
    fclose(f);
    mp_errbuf_t err;
    cr_assert_eq(read_2x3(p, &err), MP_ERR_FORMAT);
    cr_assert(strstr(err.msg, "text.npy: not a .npy file") != NULL, "%s", err.msg);
}

Test(npy, refuses_another_dtype_naming_it)
{
    const char *p = in_dir("f8.npy");
    write_raw(p, "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", 48);
    mp_errbuf_t err;
    cr_assert_eq(read_2x3(p, &err), MP_ERR_FORMAT);
    cr_assert(strstr(err.msg, "f8.npy: dtype '<f8', expected '<f4'") != NULL, "%s", err.msg);
}

Test(npy, refuses_fortran_order)
{
    const char *p = in_dir("fo.npy");
    write_raw(p, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 24);
    mp_errbuf_t err;
    cr_assert_eq(read_2x3(p, &err), MP_ERR_FORMAT);
    cr_assert(strstr(err.msg, "fo.npy: a Fortran-order array") != NULL, "%s", err.msg);
}

Test(npy, refuses_another_shape_naming_both)
{
    const char *p = in_dir("t.npy");
    write_raw(p, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }", 24);
    mp_errbuf_t err;
    cr_assert_eq(read_2x3(p, &err), MP_ERR_FORMAT);
    cr_assert(strstr(err.msg, "t.npy: shape (3, 2), expected (2, 3)") != NULL, "%s", err.msg);
    write_raw(p, "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }", 24);
    cr_assert_eq(read_2x3(p, &err), MP_ERR_FORMAT);
    cr_assert(strstr(err.msg, "t.npy: shape (6,), expected (2, 3)") != NULL, "%s", err.msg);
}

Test(npy, refuses_truncated_and_trailing_data)
{
    const char *p = in_dir("short.npy");
    write_raw(p, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 20);
    mp_errbuf_t err;
    cr_assert_eq(read_2x3(p, &err), MP_ERR_FORMAT);
    cr_assert(strstr(err.msg, "short.npy: 20 bytes of data where its shape needs 24") != NULL,
              "%s", err.msg);
    write_raw(p, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 28);
    cr_assert_eq(read_2x3(p, &err), MP_ERR_FORMAT);
    cr_assert(strstr(err.msg, "28 bytes of data where its shape needs 24") != NULL, "%s",
              err.msg);
}

Test(npy, refuses_more_than_four_dims)
{
    const char *p = in_dir("5d.npy");
    write_raw(p, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1, 1, 1), }", 4);
    mp_errbuf_t err;
    float *d = NULL;
    int ndim;
    int64_t shape[4];
    cr_assert_eq(mp_npy_read(p, &d, &ndim, shape, &err), MP_ERR_FORMAT);
    cr_assert(strstr(err.msg, "at most 4 dims") != NULL, "%s", err.msg);
}

Test(npy, parameter_files_have_design_shapes)
{
    mp_layer_spec_t block = {.kind = MP_LAYER_TRANSFORMER_BLOCK, .heads = 2, .ffn = 12,
                             .in_dim = 8, .out_dim = 8};
    mp_layer_spec_t ln = {.kind = MP_LAYER_LAYERNORM, .in_dim = 8, .out_dim = 8};
    mp_layer_spec_t lin = {.kind = MP_LAYER_LINEAR, .out = 5, .in_dim = 1, .out_dim = 5};
    for (int p = 0; p < mp_layer_nparams(&block); p++) {
        const char *name = mp_layer_param_name(&block, p);
        bool vec = strstr(name, "bias") != NULL || strncmp(name, "ln", 2) == 0;
        cr_assert_eq(mp_npy_param_is_vector(&block, p), vec, "%s", name);
    }
    cr_assert(mp_npy_param_is_vector(&ln, 0), "a layernorm's weight is [C]");
    cr_assert(mp_npy_param_is_vector(&ln, 1));
    cr_assert(!mp_npy_param_is_vector(&lin, 0), "a linear's weight [1, 5] stays 2-D");
    cr_assert(mp_npy_param_is_vector(&lin, 1));
}

Test(npy, saved_parameters_load_back_and_wrong_ones_are_refused)
{
    /* The layer table alone decides shapes: the layer list suffices. */
    mp_errbuf_t err;
    mp_spec_t *spec = mp_calloc(1, sizeof(*spec));
    {
        spec->model.nlayers = 4;
        spec->model.layers[0] = (mp_layer_spec_t){.kind = MP_LAYER_EMBEDDING, .vocab = 256,
                                                  .dim = 8, .max_seq = 4, .in_dim = 1,
                                                  .out_dim = 8};
        spec->model.layers[1] = (mp_layer_spec_t){.kind = MP_LAYER_TRANSFORMER_BLOCK,
                                                  .heads = 2, .ffn = 12, .in_dim = 8,
                                                  .out_dim = 8};
        spec->model.layers[2] = (mp_layer_spec_t){.kind = MP_LAYER_LAYERNORM, .in_dim = 8,
                                                  .out_dim = 8};
        spec->model.layers[3] = (mp_layer_spec_t){.kind = MP_LAYER_LINEAR, .out = 256,
                                                  .in_dim = 8, .out_dim = 256};
    }
    for (int l = 0; l < spec->model.nlayers; l++) {
        const mp_layer_spec_t *ls = &spec->model.layers[l];
        for (int p = 0; p < mp_layer_nparams(ls); p++) {
            int64_t rows, cols;
            mp_layer_param_shape(ls, p, &rows, &cols);
            float *a = mp_malloc((size_t)(rows * cols) * sizeof(float));
            float *b = mp_calloc((size_t)(rows * cols), sizeof(float));
            for (int64_t i = 0; i < rows * cols; i++) {
                a[i] = (float)(l * 1000 + p * 100) + (float)i * 0.5f;
            }
            cr_assert_eq(mp_npy_save_layer_param(dir, spec, l, p, a, &err), MP_OK, "%s",
                         err.msg);
            cr_assert_eq(mp_npy_load_param(dir, spec, l, p, b, &err), MP_OK, "%s", err.msg);
            cr_assert_eq(memcmp(a, b, (size_t)(rows * cols) * sizeof(float)), 0);
            mp_free(a);
            mp_free(b);
        }
    }
    /* The block's qkv weight is [8, 24]; one of [8, 16] is refused, naming the file. */
    float w[8 * 16] = {0};
    int64_t shape[2] = {8, 16};
    char path[256];
    snprintf(path, sizeof(path), "%s/1.attn.qkv.weight.npy", dir);
    cr_assert_eq(mp_npy_write(path, w, 2, shape, &err), MP_OK);
    float *dst = mp_malloc(8 * 24 * sizeof(float));
    cr_assert_eq(mp_npy_load_param(dir, spec, 1, 2, dst, &err), MP_ERR_FORMAT);
    cr_assert(strstr(err.msg, "1.attn.qkv.weight.npy: shape (8, 16), expected (8, 24)") != NULL,
              "%s", err.msg);
    mp_free(dst);
    mp_free(spec);
}
