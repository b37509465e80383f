/* libFuzzer target: PyTorch checkpoints (zip reader, pickle machine, tensor gathering) through
 * inspect and convert (strip to safetensors or weights-only .pth, FP16/BF16). */
#include "fuzz_file.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    msh_fuzz_setup();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int variant = (int)(size % 3);
    msh_fuzz_run(data, size, variant == 2 ? "out.pth" : "out.safetensors", variant);
    return 0;
}
