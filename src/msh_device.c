/* Process-wide device state: the CUDA engine is made once, on first use, and shared by every
 * model of the run; after a CUDA error it is given up and the rest of the run uses the CPU. */
#include <pthread.h>
#include <stdlib.h>

#include "kernels/msh_engine.h"

#if defined(MSH_HAVE_CUDA)
#include "msh_cuda.h"
#endif

#define MSH_GPU_MIN_BYTES ((int64_t)64 << 20)

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_disabled;
#if defined(MSH_HAVE_CUDA)
static void *g_engine; /* lives until the process exits, shared by every model of the run */
#endif

int msh_cuda_device_count(void) {
#if defined(MSH_HAVE_CUDA)
    return msh_cuda_probe_count();
#else
    return 0;
#endif
}

int msh_cuda_built(void) {
#if defined(MSH_HAVE_CUDA)
    return 1;
#else
    return 0;
#endif
}

void msh_device_disable_cuda(void) {
    pthread_mutex_lock(&g_lock);
    g_disabled = 1;
    pthread_mutex_unlock(&g_lock);
}

msh_status msh_device_engine(int device, size_t staging, int64_t work_bytes, msh_engine *g,
                             msh_error *e) {
    g->cuda = 0;
    g->handle = NULL;
    if (device == MSH_DEVICE_CPU)
        return MSH_OK;
    pthread_mutex_lock(&g_lock);
    int disabled = g_disabled;
    pthread_mutex_unlock(&g_lock);
    int count = disabled ? 0 : msh_cuda_device_count();
    if (count == 0) {
        if (device == MSH_DEVICE_CUDA)
            return msh_fail(e, MSH_ERR_CUDA, "--device cuda: %s",
                            !msh_cuda_built() ? "this build has no CUDA support"
                            : disabled        ? "the GPU was given up after a CUDA error"
                                              : "no CUDA device is present");
        return MSH_OK;
    }
    if (device == MSH_DEVICE_AUTO && work_bytes < MSH_GPU_MIN_BYTES && !g->verify)
        return MSH_OK; /* too small to gain from the copies */
#if defined(MSH_HAVE_CUDA)
    pthread_mutex_lock(&g_lock);
    msh_status st = MSH_OK;
    if (!g_engine) {
        char err[256];
        msh_cuda_engine *ce;
        if (msh_cuda_engine_new(staging, &ce, err, sizeof err) != 0)
            st = msh_fail(e, MSH_ERR_CUDA, "%s", err);
        else
            g_engine = ce;
    }
    pthread_mutex_unlock(&g_lock);
    if (st != MSH_OK) {
        if (device == MSH_DEVICE_CUDA)
            return st;
        msh_device_disable_cuda();
        return MSH_OK;
    }
    g->cuda = 1;
    g->handle = g_engine;
#else
    (void)staging;
#endif
    return MSH_OK;
}
