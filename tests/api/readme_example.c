#include <modelshrink.h>
#include <stdio.h>

// Called on this thread every 16 MiB or so; returning non-zero cancels the conversion.
static int on_progress(void *user, const msh_progress *p) {
    (void)user;
    if (p->phase == MSH_PHASE_WRITE)
        fprintf(stderr, "\r%s: %lld of %lld MiB", p->path, (long long)(p->bytes_done >> 20),
                (long long)(p->bytes_total >> 20));
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s IN OUT\n", argv[0]);
        return 2;
    }
    msh_error err;
    msh_inspect_info *info;
    if (msh_inspect(argv[1], &info, &err) != MSH_OK) {
        fprintf(stderr, "%s\n", err.msg); // "in.onnx: ..."
        return 1;
    }
    printf("%s: %s, %lld tensors, %lld bytes, %lld of them duplicates\n", argv[1],
           msh_format_name(info->format), (long long)info->tensor_count,
           (long long)info->tensor_bytes, (long long)info->dup_saved_bytes);
    for (size_t i = 0; i < info->n_largest && i < 3; i++)
        printf("  %s %s %lld bytes\n", info->largest[i].name, info->largest[i].dtype,
               (long long)info->largest[i].bytes);
    msh_inspect_info_free(info);

    msh_convert_options opt;
    msh_convert_options_init(&opt); // every field at its default: dedup on
    opt.float_type = MSH_FLOAT_FP16;
    opt.progress = on_progress;
    msh_convert_result res;
    if (msh_convert_file(argv[1], argv[2], &opt, &res, &err) != MSH_OK) {
        fprintf(stderr, "\n%s\n", err.msg);
        return 1;
    }
    printf("\n%s: %lld -> %lld bytes on the %s\n", argv[2], (long long)res.bytes_in,
           (long long)res.bytes_out, res.device);
    return 0;
}
