#include <cuda_runtime.h>

#include "msh_cuda.h"

extern "C" int msh_cuda_probe_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess)
        return 0;
    return n;
}
