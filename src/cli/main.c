/* modelshrink command line. Uses only the public API (include/modelshrink.h). */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "batch.h"
#include "modelshrink.h"
#include "table.h"

enum { EXIT_ALL_OK = 0, EXIT_SOME_FAILED = 1, EXIT_USAGE = 2 };

static const char *usage_text =
    "usage: modelshrink <command> [options]\n"
    "\n"
    "commands:\n"
    "  inspect [--json] FILE...            explain a model's size\n"
    "  diff [--json] [--all] A B           compare two model files tensor by tensor\n"
    "  convert [OPTIONS] INPUT... -o OUTPUT shrink models (files, Hugging Face model\n"
    "                                      folders, or folders of models)\n"
    "\n"
    "convert options:\n"
    "  -o, --output PATH       output file (one input file; its extension .safetensors,\n"
    "                          .pth/.pt/.bin or .onnx decides the format) or folder\n"
    "      --no-dedup          do not merge identical initializers\n"
    "      --dedup-graph-inputs  also merge initializers that are graph inputs\n"
    "      --external-data     write tensors to <output>.data (4096-byte aligned)\n"
    "      --fp16, --bf16      convert FP32 tensors and the ops that allow it to FP16 / BF16\n"
    "      --storage-only      with --fp16/--bf16: store weights in the half type, widen\n"
    "                          them to FP32 once (Cast) and compute in FP32 (runs on any CPU)\n"
    "      --keep-fp32 GLOB    keep matching tensors (names, checkpoint keys) and the ops that\n"
    "                          read them in FP32 (repeatable)\n"
    "      --fp16-clamp        clamp tensors FP16 cannot hold (|x| > 65504, or mostly below\n"
    "                          2^-14) instead of keeping them FP32 (the default)\n"
    "      --allow-larger      keep the FP16/BF16 conversion even when its Casts make the file\n"
    "                          larger (for half-precision compute); by default it is left out\n"
    "      --fp16-min X        non-zero magnitudes below X become X (default 2^-24)\n"
    "      --fp16-max X        finite magnitudes above X become X (default 65504)\n"
    "      --keep-io-types     keep FP32 graph inputs and outputs (default)\n"
    "      --no-keep-io-types  make FP32 graph inputs and outputs FP16/BF16 too\n"
    "      --block-op OP[,OP]  keep these op types in FP32 (repeatable)\n"
    "      --block-node N[,N]  keep these nodes (by name) in FP32 (repeatable)\n"
    "      --int8              quantize MatMul/Gemm/Conv/ConvTranspose weights to INT8\n"
    "                          (per output channel, DequantizeLinear)\n"
    "      --int8-min-elements N  smallest weight quantized (default 4096)\n"
    "      --int8-gather       also quantize embedding tables feeding Gather\n"
    "      --device D          auto (default: the GPU when present and the model >= 64 MiB),\n"
    "                          cpu or cuda\n"
    "      --verify            run GPU and CPU on every piece and compare the bytes\n"
    "      --staging-mib N     GPU pinned staging buffer size (default 64; two are used)\n"
    "      --keep-outputs N[,N]  keep only these graph outputs and what they need (repeatable)\n"
    "      --drop-outputs N[,N]  remove these graph outputs and what only they need\n"
    "      --keep-inputs       keep graph inputs that the kept outputs no longer read\n"
    "                          (always: unread nodes and initializers, value_info of removed\n"
    "                          values and opset imports of unused domains are removed)\n"
    "\n";

/* The second half (C99 guarantees string literals of only 4095 bytes). */
static const char *usage_text2 =
    "PyTorch checkpoints (.pth, torch >= 1.6 zip format) are stripped to their state dict:\n"
    "      --strip             keep only the state dict (the default for checkpoints)\n"
    "      --key NAME          the state dict's key (default: model_state_dict, state_dict,\n"
    "                          model, module, net, network; or a bare state dict)\n"
    "      --format F          safetensors (default) or pth (weights-only .pth)\n"
    "\n"
    "Hugging Face model folders (pytorch_model.bin, model.safetensors, or their shards with an\n"
    "index) are converted as one model into a folder of safetensors shards plus an index; the\n"
    "other files (config.json, tokenizer files, ...) are copied:\n"
    "      --max-shard-size S  largest shard: bytes, or a number with KB, MB, GB, TB (powers\n"
    "                          of 1000) or KiB, MiB, GiB, TiB (default 5GB)\n"
    "\n"
    "Batches (several inputs or folders):\n"
    "  -j, --jobs N            models at once (default: the number of cores)\n"
    "      --report FILE       JSON Lines: one record per model, then a summary\n"
    "      --resume            skip models the report says are done (same size and time)\n"
    "      --shard K/N         only this share of the inputs (by relative path); default\n"
    "                          from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT, or\n"
    "                          JOB_COMPLETION_INDEX with --shard-count N\n"
    "      --copy-others       copy files that are not models into the output tree\n"
    "\n"
    "report merge REPORT... [-o OUT]   combine shard reports into one, with totals\n"
    "  -q, --quiet             no per-model lines\n"
    "\n"
    "  -h, --help              this text\n"
    "      --version           print the version\n"
    "\n"
    "exit codes: 0 all converted, 1 at least one input failed, 2 usage error\n";

static void print_usage(void) {
    fputs(usage_text, stdout);
    fputs(usage_text2, stdout);
}

static int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "modelshrink: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(run 'modelshrink --help' for usage)\n");
    return EXIT_USAGE;
}

/* ---- inputs to (input, output) pairs ---- */

static char *path_join(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s%s%s", a, (*a && a[strlen(a) - 1] == '/') ? "" : "/", b);
    return p;
}

static int has_suffix(const char *s, const char *suf) {
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && strcmp(s + n - k, suf) == 0;
}

static int g_out_format; /* --format, for naming stripped checkpoints in folder mode */

static int is_model_name(const char *n) {
    return has_suffix(n, ".onnx") || has_suffix(n, ".pth") || has_suffix(n, ".pt") ||
           has_suffix(n, ".ckpt") || has_suffix(n, ".safetensors");
}

/* A checkpoint written as safetensors is named *.safetensors in the output tree, and one written
 * as a weights-only .pth (--format pth) keeps a .pth/.pt/.ckpt name or gets .pth. */
static char *out_name(const char *dst, int out_format) {
    const char *ckpt[] = {".pth", ".pt", ".ckpt"};
    const char *from = NULL, *to = NULL;
    if (out_format == MSH_FORMAT_PTH) {
        if (has_suffix(dst, ".safetensors"))
            from = ".safetensors", to = ".pth";
    } else {
        for (size_t i = 0; i < 3 && !from; i++)
            if (has_suffix(dst, ckpt[i]))
                from = ckpt[i], to = ".safetensors";
    }
    if (!from)
        return strdup(dst);
    size_t n = strlen(dst) - strlen(from);
    char *r = malloc(n + strlen(to) + 1);
    if (r) {
        memcpy(r, dst, n);
        strcpy(r + n, to);
    }
    return r;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int is_model_folder(const char *path) {
    msh_format k;
    msh_error e;
    return msh_probe_file(path, &k, &e) == MSH_OK && k == MSH_FORMAT_HF_FOLDER;
}

/* Collect the files below `dir` (sorted, recursive), mirrored below `out`; `rel` is the path
 * relative to the input root. Skips hidden files and the output folder when it lies inside. A
 * Hugging Face model folder is one model: not entered. */
static int walk_dir(msh_cli_batch *j, const char *dir, const char *out, const char *rel,
                    const struct stat *out_st, int depth) {
    if (depth > 64)
        return 1;
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "modelshrink: %s: cannot read folder: %s\n", dir, strerror(errno));
        return 0;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue; /* ".", "..", hidden files and our own temporaries */
        if (n == cap) {
            cap = cap ? 2 * cap : 32;
            char **p = realloc(names, cap * sizeof *p);
            if (!p)
                break;
            names = p;
        }
        names[n++] = strdup(de->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_str);
    int ok = 1;
    for (size_t i = 0; i < n; i++) {
        char *src = path_join(dir, names[i]);
        char *dst = path_join(out, names[i]);
        char *r = *rel ? path_join(rel, names[i]) : strdup(names[i]);
        struct stat sb;
        if (src && dst && r && stat(src, &sb) == 0) {
            if (S_ISDIR(sb.st_mode)) {
                if (out_st && sb.st_dev == out_st->st_dev && sb.st_ino == out_st->st_ino)
                    ; /* the output folder itself */
                else if (is_model_folder(src))
                    ok &= msh_cli_batch_add(j, src, dst, r, 1);
                else
                    ok &= walk_dir(j, src, dst, r, out_st, depth + 1);
            } else if (S_ISREG(sb.st_mode)) {
                int model = is_model_name(names[i]);
                char *dst2 = model ? out_name(dst, g_out_format) : strdup(dst);
                ok &= dst2 && msh_cli_batch_add(j, src, dst2, r, model);
                free(dst2);
            }
        }
        free(src);
        free(dst);
        free(r);
        free(names[i]);
    }
    free(names);
    return ok;
}

/* Append a comma-separated list to *dst (repeatable options). */
static int append_list(char **dst, const char *add) {
    size_t a = *dst ? strlen(*dst) : 0, b = strlen(add);
    char *p = realloc(*dst, a + b + 2);
    if (!p)
        return 0;
    if (a)
        p[a++] = ',';
    memcpy(p + a, add, b + 1);
    *dst = p;
    return 1;
}

static const char *kind_phrase(msh_format k) {
    switch (k) {
    case MSH_FORMAT_ONNX: return "an ONNX model";
    case MSH_FORMAT_PTH: return "a PyTorch checkpoint";
    case MSH_FORMAT_SAFETENSORS: return "a safetensors file";
    case MSH_FORMAT_HF_FOLDER: return "a Hugging Face model folder";
    case MSH_FORMAT_AUTO: break;
    }
    return "a model";
}

/* "5GB", "500MB", "100KB", "2GiB" or a number of bytes; 0 when it is none of them. */
static int parse_size(const char *s, int64_t *out) {
    static const struct {
        const char *unit;
        int64_t mul;
    } units[] = {{"", 1},
                 {"B", 1},
                 {"KB", 1000},
                 {"kB", 1000},
                 {"MB", 1000000},
                 {"GB", 1000000000},
                 {"TB", 1000000000000},
                 {"KiB", (int64_t)1 << 10},
                 {"MiB", (int64_t)1 << 20},
                 {"GiB", (int64_t)1 << 30},
                 {"TiB", (int64_t)1 << 40}};
    if (*s < '0' || *s > '9')
        return 0;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || v < 1)
        return 0;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (strcmp(end, units[i].unit) == 0) {
            if (v > (unsigned long long)(INT64_MAX / units[i].mul))
                return 0;
            *out = (int64_t)v * units[i].mul;
            return 1;
        }
    return 0;
}

/* Options given that do not apply to a model's format: a usage error for a file named on the
 * command line, and for an option that applies to none of the models; in a folder they are left
 * out for the models that cannot take them, and their lines say so. Nothing is written yet. */
static int check_applicable(msh_cli_batch *b, const char *const *given) {
    size_t applies[32] = {0}, models = 0, by_kind[8] = {0};
    for (size_t i = 0; i < b->n; i++) {
        msh_cli_job *j = &b->v[i];
        msh_format k;
        msh_error e;
        if (!j->model || msh_probe_file(j->in, &k, &e) != MSH_OK)
            continue; /* not a model, or unreadable: its conversion says why */
        models++;
        by_kind[k & 7]++;
        for (unsigned o = 1; o < 32; o++) {
            if (!given[o])
                continue;
            if (msh_option_applies((msh_option)o, k)) {
                applies[o]++;
            } else if (j->explicit) {
                fprintf(stderr, "modelshrink: convert: %s does not apply to %s (%s)\n", given[o],
                        j->in, kind_phrase(k));
                return EXIT_USAGE;
            } else {
                j->skip |= 1u << o;
            }
        }
        if (j->explicit) { /* the output's name against the options and the input */
            msh_convert_options opt = *b->opt;
            msh_error ce;
            if (msh_convert_check(&opt, k, j->out, NULL, &ce) != MSH_OK) {
                fprintf(stderr, "modelshrink: convert: %s: %s\n", j->in, ce.msg);
                return EXIT_USAGE;
            }
        }
    }
    for (unsigned o = 1; models && o < 32; o++)
        if (given[o] && !applies[o]) {
            char hf[64] = "";
            if (by_kind[MSH_FORMAT_HF_FOLDER])
                snprintf(hf, sizeof hf, ", %zu Hugging Face folders",
                         by_kind[MSH_FORMAT_HF_FOLDER]);
            fprintf(stderr,
                    "modelshrink: convert: %s applies to none of the %zu models found (%zu "
                    "ONNX, %zu PyTorch, %zu safetensors%s)\n",
                    given[o], models, by_kind[MSH_FORMAT_ONNX], by_kind[MSH_FORMAT_PTH],
                    by_kind[MSH_FORMAT_SAFETENSORS], hf);
            return EXIT_USAGE;
        }
    return 0;
}

/* Why `out` cannot receive the model folder `in` (NULL when it can): the library refuses the
 * same cases, but these are usage errors, found before any work. */
static const char *folder_output_problem(const char *in, const char *out) {
    struct stat si, so;
    if (stat(in, &si) != 0)
        return NULL; /* the conversion says why */
    int exists = lstat(out, &so) == 0;
    if (exists && si.st_dev == so.st_dev && si.st_ino == so.st_ino)
        return "is the input folder";
    if (exists && !S_ISDIR(so.st_mode))
        return "exists and is not a folder";
    /* where the output is, or would be: its real folder and name */
    const char *slash = strrchr(out, '/');
    char *parent = slash ? strndup(out, (size_t)(slash - out)) : strdup(".");
    char *ri = realpath(in, NULL),
         *rp = parent && *parent ? realpath(parent, NULL) : realpath("/", NULL);
    char *ro = rp ? path_join(rp, slash ? slash + 1 : out) : NULL;
    size_t n = ri ? strlen(ri) : 0;
    int inside = ri && ro && strncmp(ro, ri, n) == 0 && ro[n] == '/';
    int holds = exists && ri && ro && strncmp(ri, ro, strlen(ro)) == 0 && ri[strlen(ro)] == '/';
    free(parent);
    free(ri);
    free(rp);
    free(ro);
    if (inside)
        return "is inside the input folder";
    if (holds)
        return "holds the input folder";
    if (!exists)
        return NULL;
    DIR *d = opendir(out);
    int empty = 1;
    struct dirent *de;
    while (d && empty && (de = readdir(d)))
        empty = strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0;
    if (d)
        closedir(d);
    if (!empty && !is_model_folder(out))
        return "exists and is not a model folder; it is not replaced";
    return NULL;
}

static int cmd_convert(int argc, char **argv) {
    static const struct option opts[] = {{"output", required_argument, 0, 'o'},
                                         {"no-dedup", no_argument, 0, 1},
                                         {"dedup-graph-inputs", no_argument, 0, 2},
                                         {"external-data", no_argument, 0, 3},
                                         {"quiet", no_argument, 0, 'q'},
                                         {"help", no_argument, 0, 'h'},
                                         {"fp16", no_argument, 0, 4},
                                         {"bf16", no_argument, 0, 5},
                                         {"fp16-min", required_argument, 0, 6},
                                         {"fp16-max", required_argument, 0, 7},
                                         {"keep-io-types", no_argument, 0, 8},
                                         {"no-keep-io-types", no_argument, 0, 9},
                                         {"block-op", required_argument, 0, 10},
                                         {"block-node", required_argument, 0, 11},
                                         {"int8", no_argument, 0, 12},
                                         {"int8-min-elements", required_argument, 0, 13},
                                         {"int8-gather", no_argument, 0, 14},
                                         {"device", required_argument, 0, 15},
                                         {"verify", no_argument, 0, 16},
                                         {"staging-mib", required_argument, 0, 17},
                                         {"key", required_argument, 0, 18},
                                         {"strip", no_argument, 0, 20},
                                         {"format", required_argument, 0, 19},
                                         {"jobs", required_argument, 0, 'j'},
                                         {"report", required_argument, 0, 21},
                                         {"resume", no_argument, 0, 22},
                                         {"shard", required_argument, 0, 23},
                                         {"shard-count", required_argument, 0, 24},
                                         {"copy-others", no_argument, 0, 25},
                                         {"keep-outputs", required_argument, 0, 26},
                                         {"drop-outputs", required_argument, 0, 27},
                                         {"keep-inputs", no_argument, 0, 28},
                                         {"fp16-clamp", no_argument, 0, 29},
                                         {"keep-fp32", required_argument, 0, 30},
                                         {"storage-only", no_argument, 0, 31},
                                         {"allow-larger", no_argument, 0, 32},
                                         {"max-shard-size", required_argument, 0, 33},
                                         {0, 0, 0, 0}};
    msh_convert_options opt;
    msh_convert_options_init(&opt);
    const char *output = NULL;
    int quiet = 0, c, jobs = 0, resume = 0, copy_others = 0;
    int shard_k = 0, shard_n = 0, shard_count = 0;
    const char *report = NULL;
    /* the lists live as long as the process (static: released at exit) */
    static char *block_ops, *block_nodes, *keep_outs, *drop_outs;
    static const char **keep_fp32;
    size_t n_keep_fp32 = 0;
    /* given[o]: the flag that set msh_option o (options only some formats take) */
    static const char *given[32];
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "o:qhj:", opts, NULL)) != -1) {
        switch (c) {
        case 'o': output = optarg; break;
        case 1: opt.dedup = 0; break;
        case 2:
            opt.dedup_graph_inputs = 1;
            given[MSH_OPTION_DEDUP_GRAPH_INPUTS] = "--dedup-graph-inputs";
            break;
        case 3:
            opt.external_data = 1;
            given[MSH_OPTION_EXTERNAL_DATA] = "--external-data";
            break;
        case 'q': quiet = 1; break;
        case 'h': print_usage(); return EXIT_ALL_OK;
        case 4:
        case 5:
            if (opt.float_type && opt.float_type != (c == 4 ? MSH_FLOAT_FP16 : MSH_FLOAT_BF16))
                return usage_error("convert: %s", "--fp16 and --bf16 exclude each other");
            opt.float_type = c == 4 ? MSH_FLOAT_FP16 : MSH_FLOAT_BF16;
            break;
        case 6:
        case 7: {
            char *end;
            double v = strtod(optarg, &end);
            if (*end || !(v > 0.0) || v > 3.4e38)
                return usage_error("convert: bad FP16 bound '%s' (a positive number)", optarg);
            if (c == 6)
                opt.fp16_min = (float)v;
            else
                opt.fp16_max = (float)v;
            break;
        }
        case 8:
        case 9:
            opt.keep_io_types = c == 8;
            given[MSH_OPTION_KEEP_IO_TYPES] = c == 8 ? "--keep-io-types" : "--no-keep-io-types";
            break;
        case 12:
            opt.int8 = 1;
            given[MSH_OPTION_INT8] = "--int8";
            break;
        case 13: {
            char *end;
            long long v = strtoll(optarg, &end, 10);
            if (*end || v < 1)
                return usage_error("convert: bad --int8-min-elements '%s' (a positive integer)",
                                   optarg);
            opt.int8_min_elements = v;
            given[MSH_OPTION_INT8_MIN_ELEMENTS] = "--int8-min-elements";
            break;
        }
        case 14:
            opt.int8_gather = 1;
            given[MSH_OPTION_INT8_GATHER] = "--int8-gather";
            break;
        case 15:
            if (strcmp(optarg, "auto") == 0)
                opt.device = MSH_DEVICE_AUTO;
            else if (strcmp(optarg, "cpu") == 0)
                opt.device = MSH_DEVICE_CPU;
            else if (strcmp(optarg, "cuda") == 0)
                opt.device = MSH_DEVICE_CUDA;
            else
                return usage_error("convert: --device '%s': use auto, cpu or cuda", optarg);
            break;
        case 16: opt.verify = 1; break;
        case 18:
            opt.key = optarg;
            given[MSH_OPTION_KEY] = "--key";
            break;
        case 20: break; /* checkpoints are always stripped to their state dict */
        case 'j': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 1 || v > 256)
                return usage_error("convert: bad --jobs '%s' (1 to 256)", optarg);
            jobs = (int)v;
            break;
        }
        case 21: report = optarg; break;
        case 22: resume = 1; break;
        case 23:
            if (sscanf(optarg, "%d/%d", &shard_k, &shard_n) != 2 || shard_n < 1 || shard_k < 0 ||
                shard_k >= shard_n)
                return usage_error("convert: bad --shard '%s' (K/N with 0 <= K < N)", optarg);
            break;
        case 24: {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 1)
                return usage_error("convert: bad --shard-count '%s'", optarg);
            shard_count = (int)v;
            break;
        }
        case 25: copy_others = 1; break;
        case 19:
            if (strcmp(optarg, "safetensors") == 0)
                opt.out_format = MSH_FORMAT_SAFETENSORS;
            else if (strcmp(optarg, "pth") == 0)
                opt.out_format = MSH_FORMAT_PTH;
            else
                return usage_error("convert: --format '%s': use safetensors or pth", optarg);
            given[MSH_OPTION_OUT_FORMAT] = "--format";
            break;
        case 17: {
            char *end;
            long long v = strtoll(optarg, &end, 10);
            if (*end || v < 1 || v > 65536)
                return usage_error("convert: bad --staging-mib '%s' (1 to 65536)", optarg);
            opt.staging_mib = v;
            break;
        }
        case 10:
        case 11:
            if (!append_list(c == 10 ? &block_ops : &block_nodes, optarg))
                return usage_error("convert: %s", "out of memory");
            given[c == 10 ? MSH_OPTION_BLOCK_OPS : MSH_OPTION_BLOCK_NODES] =
                c == 10 ? "--block-op" : "--block-node";
            break;
        case 26:
        case 27:
            if (!append_list(c == 26 ? &keep_outs : &drop_outs, optarg))
                return usage_error("convert: %s", "out of memory");
            given[c == 26 ? MSH_OPTION_KEEP_OUTPUTS : MSH_OPTION_DROP_OUTPUTS] =
                c == 26 ? "--keep-outputs" : "--drop-outputs";
            break;
        case 28:
            opt.keep_inputs = 1;
            given[MSH_OPTION_KEEP_INPUTS] = "--keep-inputs";
            break;
        case 29: opt.fp16_clamp = 1; break;
        case 30: {
            const char **v = realloc(keep_fp32, (n_keep_fp32 + 1) * sizeof *v);
            if (!v)
                return usage_error("convert: %s", "out of memory");
            keep_fp32 = v;
            keep_fp32[n_keep_fp32++] = optarg;
            break;
        }
        case 31: opt.storage_only = 1; break;
        case 32:
            opt.allow_larger = 1;
            given[MSH_OPTION_ALLOW_LARGER] = "--allow-larger";
            break;
        case 33:
            if (!parse_size(optarg, &opt.max_shard_bytes))
                return usage_error("convert: bad --max-shard-size '%s' (bytes, or a whole number "
                                   "with KB, MB, GB, TB, KiB, MiB, GiB or TiB, e.g. 5GB)",
                                   optarg);
            given[MSH_OPTION_MAX_SHARD_BYTES] = "--max-shard-size";
            break;
        default: return usage_error("convert: unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    g_out_format = opt.out_format;
    opt.block_ops = block_ops;
    if (keep_outs && drop_outs)
        return usage_error("convert: %s", "--keep-outputs and --drop-outputs exclude each other");
    opt.keep_outputs = keep_outs;
    opt.drop_outputs = drop_outs;
    opt.block_nodes = block_nodes;
    if (opt.fp16_min > opt.fp16_max)
        return usage_error("convert: %s", "--fp16-min is larger than --fp16-max");
    opt.keep_fp32 = keep_fp32;
    opt.n_keep_fp32 = n_keep_fp32;
    if (opt.fp16_clamp && opt.float_type != MSH_FLOAT_FP16)
        return usage_error("convert: %s", "--fp16-clamp needs --fp16");
    if (n_keep_fp32 && !opt.float_type)
        return usage_error("convert: %s", "--keep-fp32 needs --fp16 or --bf16");
    if (opt.storage_only && !opt.float_type)
        return usage_error("convert: %s", "--storage-only needs --fp16 or --bf16");
    if (opt.allow_larger && !opt.float_type)
        return usage_error("convert: %s", "--allow-larger needs --fp16 or --bf16");
    if (opt.device == MSH_DEVICE_CUDA && msh_cuda_device_count() == 0) {
        fprintf(stderr, "modelshrink: --device cuda: %s\n",
                msh_cuda_built() ? "no CUDA device is present"
                                 : "this build has no CUDA support (rebuild with nvcc)");
        return EXIT_USAGE;
    }
    if (opt.verify && msh_cuda_device_count() == 0)
        fprintf(stderr, "modelshrink: warning: --verify: no CUDA device, so the CPU path runs "
                        "alone and there is nothing to compare\n");
    if (!output)
        return usage_error("convert: %s", "missing -o OUTPUT");
    if (resume && !report)
        return usage_error("convert: %s", "--resume needs --report FILE (it reads what is done)");
    if (optind >= argc)
        return usage_error("convert: %s", "no input given");
    /* shards: --shard K/N, else a Slurm job array, else a Kubernetes Indexed Job */
    if (!shard_n) {
        const char *id = getenv("SLURM_ARRAY_TASK_ID"), *cnt = getenv("SLURM_ARRAY_TASK_COUNT");
        const char *ki = getenv("JOB_COMPLETION_INDEX");
        if (id && cnt) {
            shard_k = atoi(id);
            shard_n = atoi(cnt);
        } else if (ki && shard_count > 0) {
            shard_k = atoi(ki);
            shard_n = shard_count;
        }
        if (shard_count > 0 && !shard_n)
            return usage_error("convert: %s", "--shard-count needs JOB_COMPLETION_INDEX (a "
                                              "Kubernetes Indexed Job) or use --shard K/N");
        if (shard_n && (shard_k < 0 || shard_k >= shard_n))
            return usage_error("convert: %s", "the shard index from the environment is out of "
                                              "range");
    }
    int n_in = argc - optind;
    struct stat ist, ost;
    int out_exists = stat(output, &ost) == 0;
    int out_is_dir = out_exists && S_ISDIR(ost.st_mode);
    msh_cli_batch j;
    memset(&j, 0, sizeof j);
    j.opt = &opt;
    j.jobs = jobs > 0 ? jobs : (int)sysconf(_SC_NPROCESSORS_ONLN);
    j.resume = resume;
    j.report = report;
    j.quiet = quiet;
    j.copy_others = copy_others;
    j.shard_k = shard_k;
    j.shard_n = shard_n;
    int failed = 0, folder_mode = 0;
    char *out_root = NULL;
    if (n_in == 1 && is_model_folder(argv[optind])) {
        /* a model folder is one model: -o names the output folder */
        char *in = strdup(argv[optind]), *out = strdup(output);
        if (!in || !out) {
            free(in);
            free(out);
            return usage_error("convert: %s", "out of memory");
        }
        for (size_t n = strlen(in); n > 1 && in[n - 1] == '/';)
            in[--n] = 0;
        for (size_t n = strlen(out); n > 1 && out[n - 1] == '/';)
            out[--n] = 0;
        const char *why = folder_output_problem(in, out);
        if (why) {
            fprintf(stderr, "modelshrink: convert: output %s %s\n", out, why);
            free(in);
            free(out);
            return EXIT_USAGE;
        }
        const char *base = strrchr(in, '/');
        if (msh_cli_batch_add(&j, in, out, base ? base + 1 : in, 1))
            j.v[j.n - 1].explicit = 1;
        const char *slash = strrchr(out, '/');
        out_root = slash ? strndup(out, (size_t)(slash - out)) : strdup(".");
        free(in);
        free(out);
    } else if (n_in == 1 && stat(argv[optind], &ist) == 0 && !S_ISDIR(ist.st_mode) && !out_is_dir &&
               !has_suffix(output, "/")) {
        if (out_exists && ist.st_dev == ost.st_dev && ist.st_ino == ost.st_ino)
            return usage_error("convert: output %s is the input file", output);
        const char *base = strrchr(argv[optind], '/');
        if (msh_cli_batch_add(&j, argv[optind], output, base ? base + 1 : argv[optind], 1))
            j.v[j.n - 1].explicit = 1;
        const char *slash = strrchr(output, '/');
        out_root = slash ? strndup(output, (size_t)(slash - output)) : strdup(".");
    } else {
        folder_mode = 1;
        if (out_exists && !out_is_dir)
            return usage_error("convert: output %s is not a folder", output);
        for (int i = optind; out_is_dir && i < argc; i++) /* before any job is made */
            if (stat(argv[i], &ist) == 0 && S_ISDIR(ist.st_mode) && ist.st_dev == ost.st_dev &&
                ist.st_ino == ost.st_ino)
                return usage_error("convert: output folder %s is an input folder", output);
        out_root = strdup(output);
        for (int i = optind; i < argc; i++) {
            const char *in = argv[i];
            if (stat(in, &ist) != 0) {
                fprintf(stderr, "modelshrink: %s: cannot open: %s\n", in, strerror(errno));
                failed++;
                continue;
            }
            if (S_ISDIR(ist.st_mode) && is_model_folder(in)) {
                char *tmp = strdup(in);
                for (size_t n = tmp ? strlen(tmp) : 0; n > 1 && tmp[n - 1] == '/';)
                    tmp[--n] = 0;
                const char *base = tmp ? strrchr(tmp, '/') : NULL;
                base = base ? base + 1 : tmp;
                char *dst = tmp ? path_join(output, base) : NULL;
                if (!dst || !msh_cli_batch_add(&j, tmp, dst, base, 1))
                    failed++;
                else
                    j.v[j.n - 1].explicit = 1;
                free(dst);
                free(tmp);
            } else if (S_ISDIR(ist.st_mode)) {
                if (!walk_dir(&j, in, output, "", out_is_dir ? &ost : NULL, 0))
                    failed++;
            } else {
                const char *base = strrchr(in, '/');
                base = base ? base + 1 : in;
                char *dst = path_join(output, base);
                char *dst2 = dst ? out_name(dst, g_out_format) : NULL;
                if (!dst2 || !msh_cli_batch_add(&j, in, dst2, base, 1))
                    failed++;
                else
                    j.v[j.n - 1].explicit = 1;
                free(dst);
                free(dst2);
            }
        }
    }
    j.flags = given;
    int uc = check_applicable(&j, given);
    if (uc) {
        free(out_root);
        msh_cli_batch_free(&j);
        return uc;
    }
    if (folder_mode) {
        if (!out_is_dir && mkdir(output, 0777) != 0 && errno != EEXIST) {
            fprintf(stderr, "modelshrink: %s: cannot create output folder: %s\n", output,
                    strerror(errno));
            free(out_root);
            msh_cli_batch_free(&j);
            return EXIT_SOME_FAILED;
        }
    }
    j.output_root = out_root;
    int code = msh_cli_batch_run(&j);
    free(out_root);
    if (code == 0 && failed)
        code = EXIT_SOME_FAILED;
    return code;
}

static int cmd_inspect(int argc, char **argv) {
    static const struct option opts[] = {
        {"json", no_argument, 0, 'j'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int json = 0, c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'j': json = 1; break;
        case 'h': print_usage(); return EXIT_ALL_OK;
        default: return usage_error("inspect: unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind >= argc)
        return usage_error("inspect: %s", "no file given");
    int failed = 0;
    cJSON *root = cJSON_CreateObject();
    cJSON *files = cJSON_AddArrayToObject(root, "files");
    for (int i = optind; i < argc; i++) {
        char *text = NULL;
        msh_error err;
        msh_status st = msh_inspect_file(argv[i], &text, &err);
        if (st != MSH_OK) {
            fprintf(stderr, "modelshrink: %s\n", err.msg);
            failed++;
            cJSON *x = cJSON_CreateObject();
            cJSON_AddStringToObject(x, "path", argv[i]);
            cJSON_AddStringToObject(x, "error", err.msg);
            cJSON_AddItemToArray(files, x);
            continue;
        }
        cJSON *x = cJSON_Parse(text);
        msh_free(text);
        if (!x) {
            fprintf(stderr, "modelshrink: %s: internal error: bad report\n", argv[i]);
            failed++;
            continue;
        }
        if (!json)
            msh_cli_print_table(x, stdout);
        cJSON_AddItemToArray(files, x);
    }
    if (json) {
        char *s = cJSON_Print(root);
        if (s)
            printf("%s\n", s);
        free(s);
    }
    cJSON_Delete(root);
    fflush(stdout);
    return failed ? EXIT_SOME_FAILED : EXIT_ALL_OK;
}

static const char *diff_usage =
    "usage: modelshrink diff [--json] [--all] A B\n"
    "\n"
    "Compare two model files tensor by tensor, whatever their formats (an ONNX model and its\n"
    "safetensors export, a checkpoint and its strip, a GPU conversion and a CPU one). Tensors\n"
    "are matched by name. For each: bytes identical or not; otherwise the largest absolute and\n"
    "relative difference, the largest ULP distance (same float type) and the cosine; names in\n"
    "one file only; element type and shape changes. Prints the tensors that differ (--all: every\n"
    "tensor) and a summary line; --json prints the whole report as JSON.\n"
    "\n"
    "exit codes: 0 every tensor byte-identical, 1 a difference (or a file that cannot be read),\n"
    "2 usage error\n";

static void fmt_shape(const cJSON *a, char *buf, size_t cap) {
    size_t n = 0;
    buf[0] = 0;
    n += (size_t)snprintf(buf + n, cap - n, "[");
    const cJSON *d;
    int first = 1;
    cJSON_ArrayForEach(d, a) {
        if (n < cap)
            n += (size_t)snprintf(buf + n, cap - n, "%s%.0f", first ? "" : ",", d->valuedouble);
        first = 0;
    }
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
}

static int cmd_diff(int argc, char **argv) {
    static const struct option opts[] = {{"json", no_argument, 0, 'j'},
                                         {"all", no_argument, 0, 'a'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int json = 0, all = 0, c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'j': json = 1; break;
        case 'a': all = 1; break;
        case 'h': fputs(diff_usage, stdout); return EXIT_ALL_OK;
        default: return usage_error("diff: unknown option '%s'", argv[optind - 1]);
        }
    }
    if (argc - optind != 2)
        return usage_error("diff: %s", "two files are needed: diff A B");
    char *text = NULL;
    int identical = 0;
    msh_error err;
    if (msh_diff_files(argv[optind], argv[optind + 1], &text, &identical, &err) != MSH_OK) {
        fprintf(stderr, "modelshrink: %s\n", err.msg);
        return EXIT_SOME_FAILED;
    }
    cJSON *o = cJSON_Parse(text);
    msh_free(text);
    if (!o) {
        fprintf(stderr, "modelshrink: diff: internal error: bad report\n");
        return EXIT_SOME_FAILED;
    }
    if (json) {
        char *s = cJSON_Print(o);
        if (s)
            printf("%s\n", s);
        free(s);
    } else {
        const cJSON *t;
        int header = 0;
        cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(o, "tensors")) {
            const char *status = cJSON_GetObjectItemCaseSensitive(t, "status")->valuestring;
            if (!all && strcmp(status, "identical") == 0)
                continue;
            if (!header) {
                printf("%-40s %-10s %-20s %12s %12s %10s %10s\n", "tensor", "status",
                       "dtype (a -> b)", "max abs", "max rel", "max ulp", "cosine");
                header = 1;
            }
            const cJSON *da = cJSON_GetObjectItemCaseSensitive(t, "dtype_a"),
                        *db = cJSON_GetObjectItemCaseSensitive(t, "dtype_b");
            char types[64], ma[24] = "", mr[24] = "", mu[24] = "", co[24] = "";
            snprintf(types, sizeof types, "%s%s%s", da ? da->valuestring : "-",
                     da && db && strcmp(da->valuestring, db->valuestring) == 0 ? "" : " -> ",
                     da && db && strcmp(da->valuestring, db->valuestring) == 0
                         ? ""
                         : (db ? db->valuestring : "-"));
            const cJSON *v;
            if ((v = cJSON_GetObjectItemCaseSensitive(t, "max_abs")))
                snprintf(ma, sizeof ma, "%.4g", v->valuedouble);
            if ((v = cJSON_GetObjectItemCaseSensitive(t, "max_rel")))
                snprintf(mr, sizeof mr, "%.4g", v->valuedouble);
            if ((v = cJSON_GetObjectItemCaseSensitive(t, "max_ulp")) && cJSON_IsNumber(v))
                snprintf(mu, sizeof mu, "%.0f", v->valuedouble);
            if ((v = cJSON_GetObjectItemCaseSensitive(t, "cosine")))
                snprintf(co, sizeof co, "%.6f", v->valuedouble);
            printf("%-40s %-10s %-20s %12s %12s %10s %10s", t->child->valuestring, status, types,
                   ma, mr, mu, co);
            if (strcmp(status, "shape") == 0) {
                char sa[128], sb[128];
                fmt_shape(cJSON_GetObjectItemCaseSensitive(t, "shape_a"), sa, sizeof sa);
                fmt_shape(cJSON_GetObjectItemCaseSensitive(t, "shape_b"), sb, sizeof sb);
                printf(" %s -> %s", sa, sb);
            }
            printf("\n");
        }
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "summary");
#define NUM(k) cJSON_GetObjectItemCaseSensitive(s, k)->valuedouble
        printf("%s: %.0f identical, %.0f differ (%.0f in type or shape), %.0f only in %s, %.0f "
               "only in %s",
               identical ? "identical" : "different", NUM("identical"), NUM("different"),
               NUM("type_or_shape_changed"), NUM("missing"), argv[optind], NUM("extra"),
               argv[optind + 1]);
        if (NUM("different") > 0)
            printf("; largest abs difference %.4g, smallest cosine %.6f", NUM("max_abs"),
                   NUM("min_cosine"));
        printf("\n");
#undef NUM
    }
    cJSON_Delete(o);
    fflush(stdout);
    return identical ? EXIT_ALL_OK : EXIT_SOME_FAILED;
}

int main(int argc, char **argv) {
    /* Past a file-size limit (ulimit -f) a write must fail with EFBIG, so the temporary file is
     * removed and the error reported, rather than the process dying on SIGXFSZ mid-write. */
    signal(SIGXFSZ, SIG_IGN);
    if (argc < 2)
        return usage_error("%s", "no command given");
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        print_usage();
        return EXIT_ALL_OK;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("modelshrink %s (CUDA devices: %d)\n", msh_version(), msh_cuda_device_count());
        return EXIT_ALL_OK;
    }
    if (strcmp(cmd, "convert") == 0)
        return cmd_convert(argc - 1, argv + 1);
    if (strcmp(cmd, "inspect") == 0)
        return cmd_inspect(argc - 1, argv + 1);
    if (strcmp(cmd, "diff") == 0)
        return cmd_diff(argc - 1, argv + 1);
    if (strcmp(cmd, "report") == 0 && argc >= 3 && strcmp(argv[2], "merge") == 0) {
        if (argc < 4)
            return usage_error("%s", "report merge: no report given");
        return msh_cli_report_merge(argc - 3, argv + 3);
    }
    return usage_error("unknown command '%s'", cmd);
}
