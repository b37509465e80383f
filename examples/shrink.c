/* shrink IN OUT [--fp16]: convert one model with the library, as `modelshrink convert` does.
 * Uses nothing but the public API; build it with examples/CMakeLists.txt (find_package) or
 *     cc shrink.c $(pkg-config --cflags --libs modelshrink) -o shrink */
#include <modelshrink.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc < 3 || argc > 4 || (argc == 4 && strcmp(argv[3], "--fp16") != 0)) {
        fprintf(stderr, "usage: shrink IN OUT [--fp16]\n");
        return 2;
    }
    msh_convert_options opt;
    msh_convert_options_init(&opt); /* dedup on; the output's extension picks its format */
    if (argc == 4)
        opt.float_type = MSH_FLOAT_FP16;
    msh_convert_result res;
    msh_error err;
    msh_status st = msh_convert_file(argv[1], argv[2], &opt, &res, &err);
    if (st != MSH_OK) {
        fprintf(stderr, "shrink: %s (%s)\n", err.msg, msh_status_name(st));
        return 1;
    }
    printf("%s -> %s: %lld -> %lld bytes, %lld tensors merged, %lld to FP16, on %s\n", argv[1],
           argv[2], (long long)res.bytes_in, (long long)res.bytes_out, (long long)res.dedup_merged,
           (long long)res.float_tensors, res.device);
    return 0;
}
