/* libFuzzer target: the pickle machine alone, on raw pickle bytes. Reaching it through a zip
 * costs the fuzzer a valid archive around every mutation; here every byte is opcode stream. */
#include <stddef.h>
#include <stdint.h>

#include "formats/pickle.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    msh_pickle p;
    msh_error err;
    if (msh_pickle_load(&p, data, size, &err) == MSH_OK) {
        /* the lookups the checkpoint reader does first */
        if (p.root)
            (void)msh_pk_dict_get(p.root, "state_dict");
    }
    msh_pickle_free(&p);
    return 0;
}
