/*
 * backend_cuda_loader.c - the CUDA entry points of gpu/backend.h.  The CUDA
 * backend lives in its own shared library, libmpar-cuda.so (backend_cuda.c
 * and the kernels, linked with cuBLAS), opened with dlopen the first time a
 * caller asks for CUDA: loading cuBLAS costs some 150 MiB of resident
 * memory, which a process that only ever uses CPU shards (mpard's usual
 * case, mpar-client --serial on CPU) must not pay.
 *
 * Search order: $MPAR_CUDA_PLUGIN, then next to the executable's lib folder
 * (build/lib for build/bin, <prefix>/lib/mpar when installed), then the
 * dynamic linker's own search (LD_LIBRARY_PATH).  Thread-safe (pthread_once).
 */
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "gpu/backend.h"

#define MP_CUDA_PLUGIN_NAME "libmpar-cuda.so"

typedef int (*count_fn_t)(void);
typedef mp_status_t (*create_fn_t)(int device, bool tf32, mp_backend_t **be_p);

static pthread_once_t plugin_once = PTHREAD_ONCE_INIT;
static count_fn_t plugin_count;
static create_fn_t plugin_create;
static char plugin_error[512];

#ifdef MP_HAVE_CUDA
static void *try_open(const char *path)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        snprintf(plugin_error, sizeof(plugin_error), "%s", dlerror());
    }
    return h;
}
#endif

static void plugin_load(void)
{
#ifdef MP_HAVE_CUDA
    void *h = NULL;
    const char *env = getenv("MPAR_CUDA_PLUGIN");
    if (env != NULL && env[0] != '\0') {
        h = try_open(env);
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (h == NULL && n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash != NULL) {
            *slash = '\0';
        }
        static const char *const rel[] = {"/../lib/" MP_CUDA_PLUGIN_NAME,
                                          "/../lib/mpar/" MP_CUDA_PLUGIN_NAME};
        for (size_t i = 0; h == NULL && i < sizeof(rel) / sizeof(rel[0]); i++) {
            char path[PATH_MAX + 64];
            snprintf(path, sizeof(path), "%s%s", exe, rel[i]);
            if (access(path, R_OK) == 0) {
                h = try_open(path);
            }
        }
    }
    if (h == NULL) {
        h = try_open(MP_CUDA_PLUGIN_NAME);
    }
    if (h == NULL) {
        return;
    }
    plugin_count = (count_fn_t)(uintptr_t)dlsym(h, "mp_cuda_plugin_device_count");
    plugin_create = (create_fn_t)(uintptr_t)dlsym(h, "mp_cuda_plugin_create");
    if (plugin_count == NULL || plugin_create == NULL) {
        snprintf(plugin_error, sizeof(plugin_error), "%s has no mp_cuda_plugin entry points",
                 MP_CUDA_PLUGIN_NAME);
        plugin_count = NULL;
        plugin_create = NULL;
        dlclose(h);
    }
#else
    snprintf(plugin_error, sizeof(plugin_error), "this build has no CUDA backend (no nvcc)");
#endif
}

bool mp_backend_cuda_built(void)
{
#ifdef MP_HAVE_CUDA
    return true;
#else
    return false;
#endif
}

int mp_backend_cuda_device_count(void)
{
    pthread_once(&plugin_once, plugin_load);
    if (plugin_count == NULL) {
        mp_debug("cuda: backend not loaded: %s", plugin_error);
        return 0;
    }
    return plugin_count();
}

mp_status_t mp_backend_cuda_create(int device, bool tf32, mp_backend_t **be_p)
{
    pthread_once(&plugin_once, plugin_load);
    if (plugin_create == NULL) {
        mp_err("cuda: device %d requested, but the CUDA backend cannot be loaded: %s", device,
               plugin_error);
        return MP_ERR_UNSUPPORTED;
    }
    return plugin_create(device, tf32, be_p);
}
