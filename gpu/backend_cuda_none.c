/*
 * backend_cuda_none.c - the CUDA entry points of gpu/backend.h for a build
 * without nvcc (MP_HAVE_CUDA off), so that callers link and find out at run
 * time that there is no CUDA backend.  Stateless, any thread.
 */
#include "common/log.h"
#include "gpu/backend.h"

bool mp_backend_cuda_built(void)
{
    return false;
}

int mp_backend_cuda_device_count(void)
{
    return 0;
}

mp_status_t mp_backend_cuda_create(int device, bool tf32, mp_backend_t **be_p)
{
    (void)tf32;
    (void)be_p;
    mp_err("cuda: device %d requested, but this build has no CUDA backend (nvcc was not found)",
           device);
    return MP_ERR_UNSUPPORTED;
}
