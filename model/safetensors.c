/*
 * safetensors.c - writer and strict reader of safetensors files of float32
 * tensors (safetensors.h).  The header is built and parsed with jansson;
 * data is written with write(2) straight from the caller's buffers and read
 * with pread(2) on demand.  Blocking file I/O; any thread but a libuv loop
 * thread.
 */
#include "model/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/alloc.h"

struct mp_st_file {
    char path[PATH_MAX];
    int fd;
    uint64_t data_off; /* 8 + header length */
    int n;
    mp_st_tensor_t *t;
    json_t *meta; /* the "__metadata__" object, or NULL */
};

int64_t mp_st_numel(const mp_st_tensor_t *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) {
        n *= t->shape[i];
    }
    return n;
}

/* ---- writing ---------------------------------------------------------------- */

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        /* Bounded chunks: one write of several GiB is refused by some file systems. */
        size_t chunk = len > (64u << 20) ? (64u << 20) : len;
        ssize_t w = write(fd, p, chunk);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return w < 0 ? errno : EIO;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

mp_status_t mp_st_fsync_dir(const char *dir, mp_errbuf_t *err)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        return mp_errbuf_set(err, MP_ERR_IO, "cannot open folder %s: %s", dir, strerror(errno));
    }
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    if (rc != 0 && e != EINVAL) { /* some file systems cannot sync a folder */
        return mp_errbuf_set(err, MP_ERR_IO, "cannot sync folder %s: %s", dir, strerror(e));
    }
    return MP_OK;
}

/* The header text, padded with spaces to a multiple of 8 bytes. */
static char *build_header(const mp_st_entry_t *e, int n, const char *const *keys,
                          const char *const *values, int nmeta, size_t *len_p)
{
    json_t *h = json_object();
    if (h == NULL) {
        return NULL;
    }
    if (nmeta > 0) {
        json_t *m = json_object();
        for (int i = 0; i < nmeta; i++) {
            json_object_set_new(m, keys[i], json_string(values[i]));
        }
        json_object_set_new(h, "__metadata__", m);
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        json_t *shape = json_array();
        int64_t numel = 1;
        for (int d = 0; d < e[i].ndim; d++) {
            json_array_append_new(shape, json_integer(e[i].shape[d]));
            numel *= e[i].shape[d];
        }
        uint64_t bytes = (uint64_t)numel * sizeof(float);
        json_t *t = json_pack("{s:s, s:o, s:[I, I]}", "dtype", "F32", "shape", shape,
                              "data_offsets", (json_int_t)off, (json_int_t)(off + bytes));
        json_object_set_new(h, e[i].name, t);
        off += bytes;
    }
    char *text = json_dumps(h, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(h);
    if (text == NULL) {
        return NULL;
    }
    size_t len = strlen(text);
    size_t padded = (len + 7) & ~(size_t)7;
    char *out = mp_malloc(padded + 1);
    if (out != NULL) {
        memcpy(out, text, len);
        memset(out + len, ' ', padded - len);
        out[padded] = '\0';
        *len_p = padded;
    }
    free(text);
    return out;
}

mp_status_t mp_st_write(const char *path, const mp_st_entry_t *entries, int n,
                        const char *const *keys, const char *const *values, int nmeta,
                        mp_errbuf_t *err)
{
    for (int i = 0; i < n; i++) {
        if (entries[i].name == NULL || strlen(entries[i].name) >= MP_ST_NAME_MAX ||
            entries[i].ndim < 0 || entries[i].ndim > MP_ST_MAX_DIMS) {
            return mp_errbuf_set(err, MP_ERR_INVAL, "%s: tensor %d has a bad name or rank", path,
                                 i);
        }
    }
    size_t hlen = 0;
    char *header = build_header(entries, n, keys, values, nmeta, &hlen);
    if (header == NULL) {
        return mp_errbuf_set(err, MP_ERR_NOMEM, "%s: out of memory for the header", path);
    }
    char tmp[PATH_MAX + 8];
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp)) {
        mp_free(header);
        return mp_errbuf_set(err, MP_ERR_INVAL, "%s: path too long", path);
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        mp_free(header);
        return mp_errbuf_set(err, MP_ERR_IO, "cannot write %s: %s", tmp, strerror(e));
    }
    unsigned char len8[8];
    for (int b = 0; b < 8; b++) {
        len8[b] = (unsigned char)((uint64_t)hlen >> (8 * b));
    }
    int e = write_all(fd, len8, 8);
    if (e == 0) {
        e = write_all(fd, header, hlen);
    }
    mp_free(header);
    for (int i = 0; i < n && e == 0; i++) {
        int64_t numel = 1;
        for (int d = 0; d < entries[i].ndim; d++) {
            numel *= entries[i].shape[d];
        }
        e = write_all(fd, entries[i].data, (size_t)numel * sizeof(float));
    }
    if (e == 0 && fsync(fd) != 0) {
        e = errno;
    }
    if (close(fd) != 0 && e == 0) {
        e = errno;
    }
    if (e == 0 && rename(tmp, path) != 0) {
        e = errno;
    }
    if (e != 0) {
        unlink(tmp);
        return mp_errbuf_set(err, MP_ERR_IO, "cannot write %s: %s", path, strerror(e));
    }
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir) {
        slash[1] = '\0';
    } else if (slash != NULL) {
        *slash = '\0';
    } else {
        snprintf(dir, sizeof(dir), ".");
    }
    return mp_st_fsync_dir(dir, err);
}

/* ---- reading ---------------------------------------------------------------- */

static int cmp_begin(const void *a, const void *b)
{
    const mp_st_tensor_t *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : 0;
}

static mp_status_t parse_tensor(mp_st_file_t *f, const char *name, json_t *v, uint64_t data_len,
                                mp_st_tensor_t *t, mp_errbuf_t *err)
{
    const char *p = f->path;
    if (strlen(name) >= MP_ST_NAME_MAX) {
        return mp_errbuf_set(err, MP_ERR_FORMAT, "%s: a tensor name is longer than %d bytes", p,
                             MP_ST_NAME_MAX - 1);
    }
    snprintf(t->name, sizeof(t->name), "%s", name);
    const char *dtype = json_string_value(json_object_get(v, "dtype"));
    json_t *shape = json_object_get(v, "shape");
    json_t *offs = json_object_get(v, "data_offsets");
    if (!json_is_object(v) || dtype == NULL || !json_is_array(shape) || !json_is_array(offs) ||
        json_array_size(offs) != 2) {
        return mp_errbuf_set(err, MP_ERR_FORMAT,
                             "%s: tensor %s: expected dtype, shape and data_offsets [begin, end]",
                             p, name);
    }
    if (strcmp(dtype, "F32") != 0) {
        return mp_errbuf_set(err, MP_ERR_FORMAT, "%s: tensor %s: dtype %s (only F32 is read)", p,
                             name, dtype);
    }
    size_t nd = json_array_size(shape);
    if (nd > MP_ST_MAX_DIMS) {
        return mp_errbuf_set(err, MP_ERR_FORMAT, "%s: tensor %s: %zu dimensions (at most %d)", p,
                             name, nd, MP_ST_MAX_DIMS);
    }
    t->ndim = (int)nd;
    uint64_t numel = 1;
    for (size_t d = 0; d < nd; d++) {
        json_t *x = json_array_get(shape, d);
        if (!json_is_integer(x) || json_integer_value(x) < 0 ||
            json_integer_value(x) > (json_int_t)(INT64_MAX / 8)) {
            return mp_errbuf_set(err, MP_ERR_FORMAT,
                                 "%s: tensor %s: shape[%zu] is not a non-negative integer", p,
                                 name, d);
        }
        t->shape[d] = json_integer_value(x);
        if (t->shape[d] != 0 && numel > UINT64_MAX / 8 / (uint64_t)t->shape[d]) {
            return mp_errbuf_set(err, MP_ERR_FORMAT, "%s: tensor %s: shape too large", p, name);
        }
        numel *= (uint64_t)t->shape[d];
    }
    json_t *b = json_array_get(offs, 0), *e = json_array_get(offs, 1);
    if (!json_is_integer(b) || !json_is_integer(e) || json_integer_value(b) < 0 ||
        json_integer_value(e) < json_integer_value(b)) {
        return mp_errbuf_set(err, MP_ERR_FORMAT,
                             "%s: tensor %s: data_offsets must be integers 0 <= begin <= end", p,
                             name);
    }
    t->begin = (uint64_t)json_integer_value(b);
    t->end = (uint64_t)json_integer_value(e);
    if (t->end > data_len) {
        return mp_errbuf_set(err, MP_ERR_FORMAT,
                             "%s: tensor %s: data_offsets [%llu, %llu] overrun the %llu data "
                             "bytes (truncated file?)",
                             p, name, (unsigned long long)t->begin, (unsigned long long)t->end,
                             (unsigned long long)data_len);
    }
    if (t->end - t->begin != numel * sizeof(float)) {
        return mp_errbuf_set(err, MP_ERR_FORMAT,
                             "%s: tensor %s: data_offsets hold %llu bytes, its shape needs %llu", p,
                             name, (unsigned long long)(t->end - t->begin),
                             (unsigned long long)(numel * sizeof(float)));
    }
    return MP_OK;
}

static mp_status_t parse_header(mp_st_file_t *f, const char *text, size_t len, uint64_t data_len,
                                mp_errbuf_t *err)
{
    json_error_t jerr;
    json_t *h = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (h == NULL || !json_is_object(h)) {
        json_decref(h);
        return mp_errbuf_set(err, MP_ERR_FORMAT, "%s: the header is not a JSON object: %s",
                             f->path, h == NULL ? jerr.text : "not an object");
    }
    size_t n = json_object_size(h);
    f->t = mp_calloc(n + 1, sizeof(*f->t));
    if (f->t == NULL) {
        json_decref(h);
        return mp_errbuf_set(err, MP_ERR_NOMEM, "%s: out of memory", f->path);
    }
    mp_status_t st = MP_OK;
    const char *key;
    json_t *v;
    json_object_foreach(h, key, v)
    {
        if (strcmp(key, "__metadata__") == 0) {
            const char *mk;
            json_t *mv;
            bool ok = json_is_object(v);
            json_object_foreach(ok ? v : NULL, mk, mv)
            {
                ok = ok && json_is_string(mv);
            }
            if (!ok) {
                st = mp_errbuf_set(err, MP_ERR_FORMAT,
                                   "%s: __metadata__ must map strings to strings", f->path);
                break;
            }
            f->meta = json_incref(v);
            continue;
        }
        st = parse_tensor(f, key, v, data_len, &f->t[f->n], err);
        if (st != MP_OK) {
            break;
        }
        f->n++;
    }
    json_decref(h);
    if (st != MP_OK) {
        return st;
    }
    /* The tensors tile the data exactly: sorted by begin, each starts where
     * the previous one ended, and the last ends at the end of the file. */
    mp_st_tensor_t *sorted = mp_malloc(((size_t)f->n + 1) * sizeof(*sorted));
    if (sorted == NULL) {
        return mp_errbuf_set(err, MP_ERR_NOMEM, "%s: out of memory", f->path);
    }
    memcpy(sorted, f->t, (size_t)f->n * sizeof(*sorted));
    qsort(sorted, (size_t)f->n, sizeof(*sorted), cmp_begin);
    uint64_t at = 0;
    for (int i = 0; i < f->n && st == MP_OK; i++) {
        if (sorted[i].begin < at) {
            st = mp_errbuf_set(err, MP_ERR_FORMAT,
                               "%s: tensor %s: data_offsets [%llu, %llu] overlap tensor %s", f->path,
                               sorted[i].name, (unsigned long long)sorted[i].begin,
                               (unsigned long long)sorted[i].end, sorted[i - 1].name);
        } else if (sorted[i].begin > at) {
            st = mp_errbuf_set(err, MP_ERR_FORMAT,
                               "%s: tensor %s: data_offsets leave a hole of %llu bytes before it",
                               f->path, sorted[i].name,
                               (unsigned long long)(sorted[i].begin - at));
        }
        at = sorted[i].end;
    }
    mp_free(sorted);
    if (st == MP_OK && at != data_len) {
        st = mp_errbuf_set(err, MP_ERR_FORMAT,
                           "%s: %llu bytes of data follow the header, the tensors hold %llu",
                           f->path, (unsigned long long)data_len, (unsigned long long)at);
    }
    return st;
}

mp_status_t mp_st_open(const char *path, mp_st_file_t **file_p, mp_errbuf_t *err)
{
    mp_st_file_t *f = mp_calloc(1, sizeof(*f));
    if (f == NULL) {
        return mp_errbuf_set(err, MP_ERR_NOMEM, "%s: out of memory", path);
    }
    snprintf(f->path, sizeof(f->path), "%s", path);
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0) {
        int e = errno;
        mp_free(f);
        return mp_errbuf_set(err, e == ENOENT ? MP_ERR_NOTFOUND : MP_ERR_IO, "cannot open %s: %s",
                             path, strerror(e));
    }
    mp_status_t st = MP_OK;
    char *text = NULL;
    struct stat sb;
    unsigned char len8[8];
    if (fstat(f->fd, &sb) != 0) {
        st = mp_errbuf_set(err, MP_ERR_IO, "cannot stat %s: %s", path, strerror(errno));
        goto out;
    }
    uint64_t size = (uint64_t)sb.st_size;
    if (size < 8 || pread(f->fd, len8, 8, 0) != 8) {
        st = mp_errbuf_set(err, MP_ERR_FORMAT, "%s: truncated: %llu bytes, not even a header",
                           path, (unsigned long long)size);
        goto out;
    }
    uint64_t hlen = 0;
    for (int b = 0; b < 8; b++) {
        hlen |= (uint64_t)len8[b] << (8 * b);
    }
    if (hlen > MP_ST_MAX_HEADER) {
        st = mp_errbuf_set(err, MP_ERR_FORMAT, "%s: header length %llu is over the %u-byte limit",
                           path, (unsigned long long)hlen, MP_ST_MAX_HEADER);
        goto out;
    }
    if (8 + hlen > size) {
        st = mp_errbuf_set(err, MP_ERR_FORMAT,
                           "%s: truncated: the header needs %llu bytes, the file has %llu", path,
                           (unsigned long long)(8 + hlen), (unsigned long long)size);
        goto out;
    }
    text = mp_malloc((size_t)hlen + 1);
    if (text == NULL) {
        st = mp_errbuf_set(err, MP_ERR_NOMEM, "%s: out of memory", path);
        goto out;
    }
    if (pread(f->fd, text, (size_t)hlen, 8) != (ssize_t)hlen) {
        st = mp_errbuf_set(err, MP_ERR_IO, "cannot read %s: %s", path, strerror(errno));
        goto out;
    }
    f->data_off = 8 + hlen;
    st = parse_header(f, text, (size_t)hlen, size - f->data_off, err);
out:
    mp_free(text);
    if (st != MP_OK) {
        mp_st_close(f);
        return st;
    }
    *file_p = f;
    return MP_OK;
}

int mp_st_count(const mp_st_file_t *f)
{
    return f->n;
}

const mp_st_tensor_t *mp_st_get(const mp_st_file_t *f, int i)
{
    return i >= 0 && i < f->n ? &f->t[i] : NULL;
}

const mp_st_tensor_t *mp_st_find(const mp_st_file_t *f, const char *name)
{
    for (int i = 0; i < f->n; i++) {
        if (strcmp(f->t[i].name, name) == 0) {
            return &f->t[i];
        }
    }
    return NULL;
}

const char *mp_st_meta(const mp_st_file_t *f, const char *key)
{
    return f->meta != NULL ? json_string_value(json_object_get(f->meta, key)) : NULL;
}

const char *mp_st_path(const mp_st_file_t *f)
{
    return f->path;
}

mp_status_t mp_st_read(mp_st_file_t *f, const mp_st_tensor_t *t, int64_t elem, int64_t n,
                       float *dst, mp_errbuf_t *err)
{
    if (elem < 0 || n < 0 || elem + n > mp_st_numel(t)) {
        return mp_errbuf_set(err, MP_ERR_INVAL, "%s: tensor %s: elements [%lld, %lld) are outside it",
                             f->path, t->name, (long long)elem, (long long)(elem + n));
    }
    uint64_t off = f->data_off + t->begin + (uint64_t)elem * sizeof(float);
    size_t left = (size_t)n * sizeof(float);
    char *p = (char *)dst;
    while (left > 0) {
        ssize_t r = pread(f->fd, p, left, (off_t)off);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            return mp_errbuf_set(err, r < 0 ? MP_ERR_IO : MP_ERR_FORMAT,
                                 "%s: tensor %s: cannot read its data: %s", f->path, t->name,
                                 r < 0 ? strerror(errno) : "the file ends early");
        }
        p += r;
        off += (uint64_t)r;
        left -= (size_t)r;
    }
    return MP_OK;
}

void mp_st_close(mp_st_file_t *f)
{
    if (f == NULL) {
        return;
    }
    if (f->fd >= 0) {
        close(f->fd);
    }
    json_decref(f->meta);
    mp_free(f->t);
    mp_free(f);
}
