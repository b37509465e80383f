#include "common/msh_common.h"

#if defined(MSH_HAVE_CUDA)
int msh_cuda_probe_count(void);
#endif

int msh_cuda_device_count(void) {
#if defined(MSH_HAVE_CUDA)
    return msh_cuda_probe_count();
#else
    return 0;
#endif
}
