/*
 * report.c - what `mpar-client run` shows of a finished run besides its
 * numbers: the learning-curve SVG (engine/curve.c) and, for a text model,
 * a short sample of the text it now writes, generated in this process from
 * the run's final (gathered) weights.  Blocks; the client's own thread.
 */
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "client/client.h"
#include "common/alloc.h"
#include "engine/curve.h"
#include "model/sample.h"
#include "model/train.h"

json_t *mp_client_json_bytes(const char *s, size_t n)
{
    char *buf = mp_malloc(3 * n + 1);
    if (buf == NULL) {
        return json_null();
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x80) {
            buf[k++] = s[i];
        } else {
            memcpy(buf + k, "\xef\xbf\xbd", 3);
            k += 3;
        }
    }
    json_t *j = json_stringn(buf, k);
    mp_free(buf);
    return j != NULL ? j : json_null();
}

int mp_client_write_curve(const char *path, const char *title, const double *losses,
                          int64_t nsteps, double test_loss, bool has_test)
{
    mp_curve_point_t pt = {(double)nsteps, test_loss};
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "mpar-client run: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    mp_status_t st = mp_curve_write_svg(f, title, losses, nsteps, &pt, has_test ? 1 : 0);
    if (fclose(f) != 0 && st == MP_OK) {
        st = MP_ERR_IO;
    }
    if (st != MP_OK) {
        fprintf(stderr, "mpar-client run: no learning curve: %s\n",
                st == MP_ERR_INVAL ? "no finite training loss to draw" : mp_strerror(st));
        remove(path);
        return -1;
    }
    return 0;
}

bool mp_client_load_spec(const char *path, mp_spec_t **spec_p)
{
    mp_errbuf_t err = {{0}};
    if (mp_spec_load(path, spec_p, &err) == MP_OK) {
        return true;
    }
    /* A file error already names the file; a spec error names the field. */
    bool named = strncmp(err.msg, path, strlen(path)) == 0;
    fprintf(stderr, "mpar-client: %s%s%s\n", named ? "" : path, named ? "" : ": ", err.msg);
    return false;
}

bool mp_client_is_text_job(const mp_spec_t *spec)
{
    mp_errbuf_t err;
    return mp_sample_check_spec(spec, &err) == MP_OK;
}

char *mp_client_run_sample(const mp_spec_t *spec, const char *weights_dir, int64_t tokens,
                           size_t *len_p)
{
    mp_train_opts_t to = {.device = "cpu", .threads = 1};
    mp_sample_opts_t so = {.tokens = tokens,
                           .temperature = MP_CLIENT_SAMPLE_TEMPERATURE,
                           .seed = 1};
    mp_errbuf_t err = {{0}};
    mp_backend_t *be = NULL;
    unsigned char *cont = NULL;
    if (mp_train_backend_create(&to, &be, &err) == MP_OK) {
        const char *prompt = MP_CLIENT_SAMPLE_PROMPT;
        if (mp_sample_generate(be, spec, weights_dir, (const unsigned char *)prompt,
                               strlen(prompt), &so, &cont, &err) != MP_OK) {
            cont = NULL;
        }
    }
    mp_backend_destroy(be);
    if (cont == NULL) {
        fprintf(stderr, "mpar-client run: no sample: %s\n", err.msg);
        return NULL;
    }
    /* The prompt, then the continuation: what `sample` would print. */
    /* The continuation may hold NUL bytes: its length is `tokens`. */
    size_t plen = strlen(MP_CLIENT_SAMPLE_PROMPT), clen = (size_t)tokens;
    char *text = mp_malloc(plen + clen + 1);
    if (text != NULL) {
        memcpy(text, MP_CLIENT_SAMPLE_PROMPT, plen);
        memcpy(text + plen, cont, clen + 1);
        *len_p = plen + clen;
    }
    mp_free(cont);
    return text;
}

void mp_client_print_sample(FILE *out, const char *text, size_t len, int64_t tokens)
{
    const char *end = text + len;
    fprintf(out, "  the model now writes (%lld bytes, temperature %g, seed 1):\n",
            (long long)tokens, MP_CLIENT_SAMPLE_TEMPERATURE);
    while (text < end && *text == '\n') {
        text++;
    }
    fputs("    | ", out);
    for (const char *c = text; c < end; c++) {
        if (*c == '\n') {
            fputs(c + 1 < end ? "\n    | " : "", out);
        } else {
            /* Bytes a terminal would not show as text print as '?'. */
            unsigned char b = (unsigned char)*c;
            fputc((b >= 0x20 && b < 0x7f) || b == '\t' ? b : '?', out);
        }
    }
    fputc('\n', out);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void mp_client_remove_tree(const char *dir)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}
