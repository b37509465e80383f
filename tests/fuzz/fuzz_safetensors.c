/* libFuzzer target: the safetensors reader (header JSON, offsets, dtypes) through inspect and
 * convert (dedup report, FP16/BF16 rewrite). */
#include "fuzz_file.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    msh_fuzz_setup();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    msh_fuzz_run(data, size, "out.safetensors", (int)(size % 3));
    return 0;
}
