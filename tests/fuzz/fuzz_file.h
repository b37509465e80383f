/* Shared part of the file-based fuzz targets: libFuzzer hands us bytes, the library reads
 * files, so each input is written to a model file in a private folder and then inspected and
 * converted the way the command line does it. The folder also holds a small "w.data" file so that
 * mutated external-data references can point at something real. */
#ifndef MSH_FUZZ_FILE_H
#define MSH_FUZZ_FILE_H

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "modelshrink.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char msh_fuzz_dir[4096];

static void msh_fuzz_path(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "%s/%s", msh_fuzz_dir, name);
}

static void msh_fuzz_write(const char *path, const uint8_t *data, size_t size) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        perror(path);
        abort();
    }
    size_t done = 0;
    while (done < size) {
        ssize_t w = write(fd, data + done, size - done);
        if (w <= 0) {
            perror(path);
            abort();
        }
        done += (size_t)w;
    }
    close(fd);
}

/* Make the private folder (under $TMPDIR) and its external-data file; removed at exit. */
static void msh_fuzz_cleanup(void) {
    char p[4200];
    static const char *names[] = {"in.model",      "w.data",          "out.onnx",
                                  "out.onnx.data", "out.safetensors", "out.pth"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        msh_fuzz_path(p, sizeof p, names[i]);
        unlink(p);
    }
    rmdir(msh_fuzz_dir);
}

static void msh_fuzz_setup(void) {
    const char *tmp = getenv("TMPDIR");
    snprintf(msh_fuzz_dir, sizeof msh_fuzz_dir, "%s/msh-fuzz-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(msh_fuzz_dir)) {
        perror("mkdtemp");
        abort();
    }
    uint8_t w[4096];
    for (size_t i = 0; i < sizeof w; i++)
        w[i] = (uint8_t)(i * 7u + 3u);
    char p[4200];
    msh_fuzz_path(p, sizeof p, "w.data");
    msh_fuzz_write(p, w, sizeof w);
    atexit(msh_fuzz_cleanup);
}

/* Inspect the file, then convert it with the options `variant` selects, and remove the output. */
static void msh_fuzz_run(const uint8_t *data, size_t size, const char *out_name, int variant) {
    char in[4200], out[4200], out_data[4300];
    msh_fuzz_path(in, sizeof in, "in.model");
    msh_fuzz_path(out, sizeof out, out_name);
    snprintf(out_data, sizeof out_data, "%s.data", out);
    msh_fuzz_write(in, data, size);

    msh_error err;
    char *json = NULL;
    if (msh_inspect_file(in, &json, &err) == MSH_OK)
        msh_free(json);

    msh_convert_options opt;
    msh_convert_options_init(&opt);
    opt.device = MSH_DEVICE_CPU;
    opt.threads = 2;
    /* the options of the input's own format: others are refused before any work */
    msh_format kind = MSH_FORMAT_ONNX;
    (void)msh_probe_file(in, &kind, &err);
    if (kind != MSH_FORMAT_ONNX) {
        switch (variant & 3) {
        case 0: break;
        case 1: opt.float_type = MSH_FLOAT_FP16; break;
        case 2:
            opt.float_type = MSH_FLOAT_BF16;
            opt.out_format = MSH_FORMAT_PTH; /* weights-only .pth */
            break;
        default:
            opt.float_type = MSH_FLOAT_FP16;
            opt.out_format = MSH_FORMAT_PTH;
            opt.dedup = 0;
            break;
        }
    } else {
        switch (variant & 3) {
        case 0: /* dedup and clean-up only */ break;
        case 1:
            opt.float_type = MSH_FLOAT_FP16;
            opt.int8 = 1;
            opt.int8_min_elements = 1;
            break;
        case 2:
            opt.float_type = MSH_FLOAT_BF16;
            opt.external_data = 1;
            opt.external_threshold = 0;
            break;
        default:
            opt.int8 = 1;
            opt.int8_min_elements = 1;
            opt.int8_gather = 1;
            break;
        }
    }
    /* the output's extension must agree with the format written (msh_convert_check) */
    if (kind != MSH_FORMAT_ONNX) {
        msh_fuzz_path(out, sizeof out,
                      opt.out_format == MSH_FORMAT_PTH ? "out.pth" : "out.safetensors");
        snprintf(out_data, sizeof out_data, "%s.data", out);
    }
    msh_convert_result res;
    (void)msh_convert_file(in, out, &opt, &res, &err);
    unlink(out);
    unlink(out_data);
}

#endif
