/* Process-wide device state: whether a GPU is there, and whether it was given up after a CUDA
 * error (the rest of the run then uses the CPU). */
#include <pthread.h>
#include <stdlib.h>

#include "engine/msh_backend.h"
#include "engine/msh_engine.h"

#if defined(MSH_HAVE_CUDA)
#include "msh_cuda.h"
#endif

/* Below this much tensor data the copies to and from the GPU cost more than they save. */
#define MSH_GPU_MIN_BYTES ((int64_t)64 << 20)

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_disabled;

/* With MSH_TEST_DEVICE set (tests only), the test device stands in for one GPU. */
int msh_cuda_device_count(void) {
    if (msh_test_device_on())
        return 1;
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
    return msh_test_device_on();
#endif
}

void msh_device_disable_cuda(void) {
    pthread_mutex_lock(&g_lock);
    g_disabled = 1;
    pthread_mutex_unlock(&g_lock);
}

msh_status msh_device_choose(int device, int verify, int64_t work_bytes, int *backend,
                             msh_error *e) {
    *backend = MSH_BACKEND_CPU;
    if (device == MSH_DEVICE_CPU)
        return MSH_OK;
    pthread_mutex_lock(&g_lock);
    int disabled = g_disabled;
    pthread_mutex_unlock(&g_lock);
    if (disabled)
        return MSH_OK; /* given up after a CUDA error: the rest of the run uses the CPU */
    if (msh_cuda_device_count() == 0) {
        if (device == MSH_DEVICE_CUDA)
            return msh_fail(e, MSH_ERR_CUDA, "device cuda: %s",
                            !msh_cuda_built() ? "this build has no CUDA support"
                                              : "no CUDA device is present");
        return MSH_OK;
    }
    if (device == MSH_DEVICE_AUTO && work_bytes < MSH_GPU_MIN_BYTES && !verify)
        return MSH_OK;
    *backend = MSH_BACKEND_CUDA;
    return MSH_OK;
}
