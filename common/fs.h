/*
 * fs.h - small file-system checks shared by the client and the daemon:
 * mkdir -p, and the preparation of an output folder (--save-weights) before
 * anything starts, so that a run never trains only to fail at its end.
 * Blocking file I/O: never on a libuv loop thread.
 */
#ifndef MP_COMMON_FS_H
#define MP_COMMON_FS_H

#include <sys/types.h>

#include "common/status.h"

/* mkdir -p: the missing parents 0755, the last one `mode`; MP_ERR_IO with
 * the folder that could not be made in err. */
mp_status_t mp_fs_mkdir_p(const char *path, mode_t mode, mp_errbuf_t *err);

/* Makes `dir` (and its parents) if missing and proves that files can be
 * created in it (a probe file, removed again): MP_ERR_IO with the reason
 * (not a folder, read-only, permission denied, ...) naming the path. */
mp_status_t mp_fs_dir_prepare(const char *dir, mp_errbuf_t *err);

#endif
