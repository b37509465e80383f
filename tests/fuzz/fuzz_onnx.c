/* libFuzzer target: the ONNX reader (wire scanner, skeleton, tensor walker, external data) and
 * every pass behind it (inspect, dedup, clean-up, FP16/BF16, INT8, writer). */
#include "fuzz_file.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    msh_fuzz_setup();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* The variant comes from the size, so the model bytes themselves stay free to mutate. */
    msh_fuzz_run(data, size, "out.onnx", (int)(size % 4));
    return 0;
}
