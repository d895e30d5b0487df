/*
 * fs.c - mkdir -p and output-folder checks (fs.h).  Any thread but a
 * libuv loop's: it does blocking file I/O.
 */
#include "common/fs.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

mp_status_t mp_fs_mkdir_p(const char *path, mode_t mode, mp_errbuf_t *err)
{
    char buf[PATH_MAX];
    if (path[0] == '\0' || (size_t)snprintf(buf, sizeof(buf), "%s", path) >= sizeof(buf)) {
        return mp_errbuf_set(err, MP_ERR_IO, "cannot create '%.200s': path empty or too long",
                             path);
    }
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
                return mp_errbuf_set(err, MP_ERR_IO, "cannot create %s: %s", buf, strerror(errno));
            }
            *p = '/';
        }
    }
    if (mkdir(buf, mode) != 0 && errno != EEXIST) {
        return mp_errbuf_set(err, MP_ERR_IO, "cannot create %s: %s", buf, strerror(errno));
    }
    return MP_OK;
}

mp_status_t mp_fs_dir_prepare(const char *dir, mp_errbuf_t *err)
{
    struct stat sb;
    if (stat(dir, &sb) == 0 && !S_ISDIR(sb.st_mode)) {
        return mp_errbuf_set(err, MP_ERR_IO, "%s exists and is not a folder", dir);
    }
    mp_status_t st = mp_fs_mkdir_p(dir, 0755, err);
    if (st != MP_OK) {
        return st;
    }
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        return mp_errbuf_set(err, MP_ERR_IO, "%s is not a folder", dir);
    }
    /* access(W_OK) says yes to root on a read-only mount: create a file. */
    char probe[PATH_MAX];
    if ((size_t)snprintf(probe, sizeof(probe), "%s/.mpar-write-check-XXXXXX", dir) >=
        sizeof(probe)) {
        return mp_errbuf_set(err, MP_ERR_IO, "%s: path too long", dir);
    }
    int fd = mkstemp(probe);
    if (fd < 0) {
        return mp_errbuf_set(err, MP_ERR_IO, "cannot write in %s: %s", dir, strerror(errno));
    }
    close(fd);
    unlink(probe);
    return MP_OK;
}
