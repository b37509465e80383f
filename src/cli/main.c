/* modelshrink command line. Uses only the public API (include/modelshrink.h). */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "batch.h"
#include "html.h"
#include "modelshrink.h"
#include "table.h"
#include "usage.h"

enum { EXIT_ALL_OK = 0, EXIT_SOME_FAILED = 1, EXIT_USAGE = 2 };

static const char *g_cmd = ""; /* the command being run ("convert"), for usage errors' hint */

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "modelshrink: ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (*g_cmd)
        fprintf(stderr, "\n(run 'modelshrink %s --help' for usage)\n", g_cmd);
    else
        fprintf(stderr, "\n(run 'modelshrink --help' for usage)\n");
    return EXIT_USAGE;
}

/* getopt_long returned '?' or ':' while parsing g_cmd's options (`lo`): the usage error, naming
 * the option as it was written. */
static int option_error(int c, char **argv, const struct option *lo) {
    const char *arg = argv[optind - 1];
    int is_long = strncmp(arg, "--", 2) == 0;
    size_t n = is_long ? strcspn(arg + 2, "=") : 0;
    if (c == ':') {
        if (is_long)
            return usage_error("%s: option '--%.*s' needs an argument", g_cmd, (int)n, arg + 2);
        return usage_error("%s: option '-%c' needs an argument", g_cmd, optopt);
    }
    if (optopt && is_long && arg[2 + n] == '=') /* "--fp16=1", or an unknown short option */
        for (const struct option *o = lo; o->name; o++)
            if (o->val == optopt && strlen(o->name) == n && strncmp(o->name, arg + 2, n) == 0)
                return usage_error("%s: option '--%s' takes no argument", g_cmd, o->name);
    if (optopt)
        return usage_error("%s: unknown option '-%c'", g_cmd, optopt);
    if (!is_long)
        return usage_error("%s: unknown option '%s'", g_cmd, arg);
    char list[256] = "";
    int matches = 0;
    for (const struct option *o = lo; o->name; o++)
        if (n && strncmp(o->name, arg + 2, n) == 0) {
            size_t k = strlen(list);
            snprintf(list + k, sizeof list - k, "%s--%s", matches++ ? ", " : "", o->name);
        }
    if (matches > 1)
        return usage_error("%s: ambiguous option '--%.*s' (%s)", g_cmd, (int)n, arg + 2, list);
    return usage_error("%s: unknown option '--%.*s'", g_cmd, (int)n, arg + 2);
}

/* getopt_long's arrays for g_cmd, from the table of options (usage.h). */
static int getopt_setup(struct option *lo, size_t cap, char *so, size_t scap) {
    optind = 1;
    opterr = 0;
    return msh_cli_getopt(g_cmd, lo, cap, so, scap);
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
    if (n) /* an empty folder has no array, and qsort must not get NULL */
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

/* Move the jobs of `from` to the end of `to`, leaving `from` empty. 0 when out of memory (the
 * jobs of `from` are then freed). */
static int move_jobs(msh_cli_batch *to, msh_cli_batch *from) {
    if (to->n + from->n > to->cap) {
        msh_cli_job *v = realloc(to->v, (to->n + from->n) * sizeof *v);
        if (!v) {
            msh_cli_batch_free(from);
            return 0;
        }
        to->v = v;
        to->cap = to->n + from->n;
    }
    if (from->n)
        memcpy(to->v + to->n, from->v, from->n * sizeof *from->v);
    to->n += from->n;
    free(from->v);
    from->v = NULL;
    from->n = from->cap = 0;
    return 1;
}

/* Folders that did not exist before a run (each once). */
typedef struct dirlist {
    char **v;
    size_t n, cap;
} dirlist;

/* Note the folders above `path` that do not exist yet: the run may create them. */
static void note_missing_dirs(dirlist *d, const char *path) {
    char *p = strdup(path);
    for (char *slash; p && (slash = strrchr(p, '/')) && slash != p;) {
        while (slash > p && slash[-1] == '/') /* "a//b" */
            slash--;
        *slash = 0;
        if (slash == p)
            break;
        int known = 0; /* searched from the end: a tree's outputs come folder by folder */
        for (size_t k = d->n; k-- > 0 && !known;)
            known = strcmp(d->v[k], p) == 0;
        struct stat sb;
        if (known || lstat(p, &sb) == 0 || errno != ENOENT)
            break;
        if (d->n == d->cap) {
            size_t cap = d->cap ? 2 * d->cap : 16;
            char **v = realloc(d->v, cap * sizeof *v);
            if (!v)
                break;
            d->v = v;
            d->cap = cap;
        }
        if (!(d->v[d->n] = strdup(p)))
            break;
        d->n++;
    }
    free(p);
}

static int longer_first(const void *a, const void *b) {
    size_t x = strlen(*(char *const *)a), y = strlen(*(char *const *)b);
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Remove the noted folders that are empty (no model in them succeeded), deepest first; rmdir
 * leaves any other alone. Frees the list. */
static void remove_empty_dirs(dirlist *d) {
    if (d->n)
        qsort(d->v, d->n, sizeof *d->v, longer_first);
    for (size_t k = 0; k < d->n; k++) {
        rmdir(d->v[k]);
        free(d->v[k]);
    }
    free(d->v);
    d->v = NULL;
    d->n = d->cap = 0;
}

/* Whether `report` is a file directly in folder `dir` (as written: "out/r.jsonl" and "out/"). */
static int report_in_folder(const char *report, const char *dir) {
    const char *slash = strrchr(report, '/');
    size_t n = slash ? (size_t)(slash - report) : 0, m = strlen(dir);
    while (n > 1 && report[n - 1] == '/')
        n--;
    while (m > 1 && dir[m - 1] == '/')
        m--;
    return slash && n == m && strncmp(report, dir, n) == 0;
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
    struct option lo[64];
    char so[64];
    if (!getopt_setup(lo, sizeof lo / sizeof lo[0], so, sizeof so))
        return usage_error("%s", "convert: internal error: the option table is too large");
    int fp16_min_given = 0, fp16_max_given = 0, staging_given = 0;
    while ((c = getopt_long(argc, argv, so, lo, NULL)) != -1) {
        switch (c) {
        case OPT_OUTPUT: output = optarg; break;
        case OPT_NO_DEDUP: opt.dedup = 0; break;
        case OPT_DEDUP_GRAPH_INPUTS:
            opt.dedup_graph_inputs = 1;
            given[MSH_OPTION_DEDUP_GRAPH_INPUTS] = "--dedup-graph-inputs";
            break;
        case OPT_EXTERNAL_DATA:
            opt.external_data = 1;
            given[MSH_OPTION_EXTERNAL_DATA] = "--external-data";
            break;
        case OPT_QUIET: quiet = 1; break;
        case OPT_HELP: msh_cli_usage(stdout, "convert"); return EXIT_ALL_OK;
        case OPT_FP16:
        case OPT_BF16:
            if (opt.float_type &&
                opt.float_type != (c == OPT_FP16 ? MSH_FLOAT_FP16 : MSH_FLOAT_BF16))
                return usage_error("convert: %s", "--fp16 and --bf16 exclude each other");
            opt.float_type = c == OPT_FP16 ? MSH_FLOAT_FP16 : MSH_FLOAT_BF16;
            break;
        case OPT_FP16_MIN:
        case OPT_FP16_MAX: {
            char *end;
            double v = strtod(optarg, &end);
            if (*end || !(v > 0.0) || v > 3.4e38)
                return usage_error("convert: bad FP16 bound '%s' (a positive number)", optarg);
            if (c == OPT_FP16_MIN) {
                opt.fp16_min = (float)v;
                fp16_min_given = 1;
            } else {
                opt.fp16_max = (float)v;
                fp16_max_given = 1;
            }
            break;
        }
        case OPT_KEEP_IO_TYPES:
        case OPT_NO_KEEP_IO_TYPES:
            opt.keep_io_types = c == OPT_KEEP_IO_TYPES;
            given[MSH_OPTION_KEEP_IO_TYPES] =
                c == OPT_KEEP_IO_TYPES ? "--keep-io-types" : "--no-keep-io-types";
            break;
        case OPT_INT8:
            opt.int8 = 1;
            given[MSH_OPTION_INT8] = "--int8";
            break;
        case OPT_INT8_MIN_ELEMENTS: {
            char *end;
            long long v = strtoll(optarg, &end, 10);
            if (*end || v < 1)
                return usage_error("convert: bad --int8-min-elements '%s' (a positive integer)",
                                   optarg);
            opt.int8_min_elements = v;
            given[MSH_OPTION_INT8_MIN_ELEMENTS] = "--int8-min-elements";
            break;
        }
        case OPT_INT8_GATHER:
            opt.int8_gather = 1;
            given[MSH_OPTION_INT8_GATHER] = "--int8-gather";
            break;
        case OPT_INT4:
            opt.int4 = 1;
            given[MSH_OPTION_INT4] = "--int4";
            break;
        case OPT_INT4_BLOCK:
            if (strcmp(optarg, "32") != 0 && strcmp(optarg, "64") != 0 &&
                strcmp(optarg, "128") != 0)
                return usage_error("convert: bad --int4-block '%s' (32, 64 or 128)", optarg);
            opt.int4_block = atoi(optarg);
            given[MSH_OPTION_INT4_BLOCK] = "--int4-block";
            break;
        case OPT_INT4_ASYM:
            opt.int4_asym = 1;
            given[MSH_OPTION_INT4_ASYM] = "--int4-asym";
            break;
        case OPT_INT4_MIN_ELEMENTS: {
            char *end;
            long long v = strtoll(optarg, &end, 10);
            if (*end || v < 1)
                return usage_error("convert: bad --int4-min-elements '%s' (a positive integer)",
                                   optarg);
            opt.int4_min_elements = v;
            given[MSH_OPTION_INT4_MIN_ELEMENTS] = "--int4-min-elements";
            break;
        }
        case OPT_INT4_GATHER:
            opt.int4_gather = 1;
            given[MSH_OPTION_INT4_GATHER] = "--int4-gather";
            break;
        case OPT_INT4_FORMAT:
            if (strcmp(optarg, "qdq") == 0)
                opt.int4_format = MSH_INT4_FORMAT_QDQ;
            else if (strcmp(optarg, "matmulnbits") == 0)
                opt.int4_format = MSH_INT4_FORMAT_MATMULNBITS;
            else
                return usage_error("convert: bad --int4-format '%s' (qdq or matmulnbits)", optarg);
            given[MSH_OPTION_INT4_FORMAT] = "--int4-format";
            break;
        case OPT_INT4_SEARCH:
            opt.int4_search = 1;
            given[MSH_OPTION_INT4_SEARCH] = "--int4-search";
            break;
        case OPT_DEVICE:
            if (strcmp(optarg, "auto") == 0)
                opt.device = MSH_DEVICE_AUTO;
            else if (strcmp(optarg, "cpu") == 0)
                opt.device = MSH_DEVICE_CPU;
            else if (strcmp(optarg, "cuda") == 0)
                opt.device = MSH_DEVICE_CUDA;
            else
                return usage_error("convert: --device '%s': use auto, cpu or cuda", optarg);
            break;
        case OPT_VERIFY: opt.verify = 1; break;
        case OPT_KEY:
            opt.key = optarg;
            given[MSH_OPTION_KEY] = "--key";
            break;
        case OPT_STRIP: break; /* checkpoints are always stripped to their state dict */
        case OPT_JOBS: {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 1 || v > 256)
                return usage_error("convert: bad --jobs '%s' (1 to 256)", optarg);
            jobs = (int)v;
            break;
        }
        case OPT_REPORT: report = optarg; break;
        case OPT_RESUME: resume = 1; break;
        case OPT_SHARD:
            if (sscanf(optarg, "%d/%d", &shard_k, &shard_n) != 2 || shard_n < 1 || shard_k < 0 ||
                shard_k >= shard_n)
                return usage_error("convert: bad --shard '%s' (K/N with 0 <= K < N)", optarg);
            break;
        case OPT_SHARD_COUNT: {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 1)
                return usage_error("convert: bad --shard-count '%s'", optarg);
            shard_count = (int)v;
            break;
        }
        case OPT_COPY_OTHERS: copy_others = 1; break;
        case OPT_FORMAT:
            if (strcmp(optarg, "safetensors") == 0)
                opt.out_format = MSH_FORMAT_SAFETENSORS;
            else if (strcmp(optarg, "pth") == 0)
                opt.out_format = MSH_FORMAT_PTH;
            else
                return usage_error("convert: --format '%s': use safetensors or pth", optarg);
            given[MSH_OPTION_OUT_FORMAT] = "--format";
            break;
        case OPT_STAGING_MIB: {
            char *end;
            long long v = strtoll(optarg, &end, 10);
            if (*end || v < 1 || v > 65536)
                return usage_error("convert: bad --staging-mib '%s' (1 to 65536)", optarg);
            opt.staging_mib = v;
            staging_given = 1;
            break;
        }
        case OPT_BLOCK_OP:
        case OPT_BLOCK_NODE:
            if (!append_list(c == OPT_BLOCK_OP ? &block_ops : &block_nodes, optarg))
                return usage_error("convert: %s", "out of memory");
            given[c == OPT_BLOCK_OP ? MSH_OPTION_BLOCK_OPS : MSH_OPTION_BLOCK_NODES] =
                c == OPT_BLOCK_OP ? "--block-op" : "--block-node";
            break;
        case OPT_KEEP_OUTPUTS:
        case OPT_DROP_OUTPUTS:
            if (!append_list(c == OPT_KEEP_OUTPUTS ? &keep_outs : &drop_outs, optarg))
                return usage_error("convert: %s", "out of memory");
            given[c == OPT_KEEP_OUTPUTS ? MSH_OPTION_KEEP_OUTPUTS : MSH_OPTION_DROP_OUTPUTS] =
                c == OPT_KEEP_OUTPUTS ? "--keep-outputs" : "--drop-outputs";
            break;
        case OPT_KEEP_INPUTS:
            opt.keep_inputs = 1;
            given[MSH_OPTION_KEEP_INPUTS] = "--keep-inputs";
            break;
        case OPT_FP16_CLAMP: opt.fp16_clamp = 1; break;
        case OPT_KEEP_FP32: {
            const char **v = realloc(keep_fp32, (n_keep_fp32 + 1) * sizeof *v);
            if (!v)
                return usage_error("convert: %s", "out of memory");
            keep_fp32 = v;
            keep_fp32[n_keep_fp32++] = optarg;
            break;
        }
        case OPT_STORAGE_ONLY: opt.storage_only = 1; break;
        case OPT_ALLOW_LARGER:
            opt.allow_larger = 1;
            given[MSH_OPTION_ALLOW_LARGER] = "--allow-larger";
            break;
        case OPT_MAX_SHARD_SIZE:
            if (!parse_size(optarg, &opt.max_shard_bytes))
                return usage_error("convert: bad --max-shard-size '%s' (bytes, or a whole number "
                                   "with KB, MB, GB, TB, KiB, MiB, GiB or TiB, e.g. 5GB)",
                                   optarg);
            given[MSH_OPTION_MAX_SHARD_BYTES] = "--max-shard-size";
            break;
        default: return option_error(c, argv, lo);
        }
    }
    g_out_format = opt.out_format;
    opt.block_ops = block_ops;
    if (keep_outs && drop_outs)
        return usage_error("convert: %s", "--keep-outputs and --drop-outputs exclude each other");
    opt.keep_outputs = keep_outs;
    opt.drop_outputs = drop_outs;
    opt.block_nodes = block_nodes;
    opt.keep_fp32 = keep_fp32;
    opt.n_keep_fp32 = n_keep_fp32;
    /* An option that refines another needs it: alone it would silently do nothing. The library
     * refuses the same combinations of its fields (msh_convert_check); these messages name the
     * flags. */
    const char *half_only = opt.fp16_clamp   ? "--fp16-clamp"
                            : fp16_min_given ? "--fp16-min"
                            : fp16_max_given ? "--fp16-max"
                                             : NULL;
    const char *compute = given[MSH_OPTION_KEEP_IO_TYPES] ? given[MSH_OPTION_KEEP_IO_TYPES]
                          : block_ops                     ? "--block-op"
                          : block_nodes                   ? "--block-node"
                                                          : NULL; /* what computes in FP32 */
    if (given[MSH_OPTION_DEDUP_GRAPH_INPUTS] && !opt.dedup)
        return usage_error("convert: %s", "--dedup-graph-inputs and --no-dedup exclude each other");
    if (half_only && opt.float_type != MSH_FLOAT_FP16)
        return usage_error("convert: %s needs --fp16", half_only);
    if (opt.fp16_min > opt.fp16_max)
        return usage_error("convert: %s", "--fp16-min is larger than --fp16-max");
    if (n_keep_fp32 && !opt.float_type)
        return usage_error("convert: %s", "--keep-fp32 needs --fp16 or --bf16");
    if (opt.storage_only && !opt.float_type)
        return usage_error("convert: %s", "--storage-only needs --fp16 or --bf16");
    if (opt.allow_larger && !opt.float_type)
        return usage_error("convert: %s", "--allow-larger needs --fp16 or --bf16");
    if (compute && !opt.float_type)
        return usage_error("convert: %s needs --fp16 or --bf16", compute);
    if (compute && opt.storage_only)
        return usage_error("convert: %s and --storage-only exclude each other (with "
                           "--storage-only every op computes in FP32, on FP32 inputs and outputs)",
                           compute);
    if (!opt.int8 && (given[MSH_OPTION_INT8_MIN_ELEMENTS] || given[MSH_OPTION_INT8_GATHER]))
        return usage_error("convert: %s needs --int8", given[MSH_OPTION_INT8_MIN_ELEMENTS]
                                                           ? given[MSH_OPTION_INT8_MIN_ELEMENTS]
                                                           : given[MSH_OPTION_INT8_GATHER]);
    if (opt.int4 && opt.int8)
        return usage_error("convert: %s", "--int4 and --int8 exclude each other");
    if (!opt.int4) {
        static const msh_option int4_opts[] = {
            MSH_OPTION_INT4_BLOCK,  MSH_OPTION_INT4_ASYM,   MSH_OPTION_INT4_MIN_ELEMENTS,
            MSH_OPTION_INT4_GATHER, MSH_OPTION_INT4_FORMAT, MSH_OPTION_INT4_SEARCH};
        for (size_t k = 0; k < sizeof int4_opts / sizeof int4_opts[0]; k++)
            if (given[int4_opts[k]])
                return usage_error("convert: %s needs --int4", given[int4_opts[k]]);
    }
    if (opt.keep_inputs && !keep_outs && !drop_outs)
        return usage_error("convert: %s", "--keep-inputs needs --keep-outputs or --drop-outputs");
    if (resume && !report)
        return usage_error("convert: %s", "--resume needs --report FILE (it reads what is done)");
    if (shard_count > 0 && shard_n)
        return usage_error("convert: %s", "--shard and --shard-count exclude each other");
    if (block_ops) { /* the op types: the library knows the ONNX schemas */
        msh_convert_options bo;
        msh_convert_options_init(&bo);
        bo.float_type = opt.float_type;
        bo.block_ops = block_ops;
        msh_option bad = MSH_OPTION_NONE;
        msh_error be;
        if (msh_convert_check(&bo, MSH_FORMAT_ONNX, NULL, &bad, &be) != MSH_OK &&
            bad == MSH_OPTION_BLOCK_OPS) {
            const char *m = strncmp(be.msg, "block_ops: ", 11) == 0 ? be.msg + 11 : be.msg;
            return usage_error("convert: --block-op: %s", m);
        }
    }
    if (opt.device == MSH_DEVICE_CUDA && msh_cuda_device_count() == 0) {
        fprintf(stderr, "modelshrink: --device cuda: %s\n",
                msh_cuda_built() ? "no CUDA device is present"
                                 : "this build has no CUDA support (rebuild with nvcc)");
        return EXIT_USAGE;
    }
    if (!output)
        return usage_error("convert: %s", "missing -o OUTPUT");
    if (optind >= argc)
        return usage_error("convert: %s", "no input given");
    /* shards: --shard K/N, else a Kubernetes Indexed Job (--shard-count), else a Slurm array */
    if (shard_count > 0) {
        const char *ki = getenv("JOB_COMPLETION_INDEX");
        if (!ki)
            return usage_error("convert: %s", "--shard-count needs JOB_COMPLETION_INDEX (a "
                                              "Kubernetes Indexed Job) or use --shard K/N");
        shard_k = atoi(ki);
        shard_n = shard_count;
    } else if (!shard_n) {
        const char *id = getenv("SLURM_ARRAY_TASK_ID"), *cnt = getenv("SLURM_ARRAY_TASK_COUNT");
        if (id && cnt) {
            shard_k = atoi(id);
            shard_n = atoi(cnt);
        }
    }
    if (shard_n && (shard_k < 0 || shard_k >= shard_n))
        return usage_error("convert: %s", "the shard index from the environment is out of range");
    if (copy_others) { /* it copies what input folders hold besides models */
        struct stat fs;
        int folders = 0;
        for (int i = optind; i < argc; i++)
            folders += stat(argv[i], &fs) == 0 && S_ISDIR(fs.st_mode) && !is_model_folder(argv[i]);
        if (!folders)
            return usage_error("convert: %s", "--copy-others needs an input folder (it copies the "
                                              "files in it that are not models)");
    }
    if (opt.verify && (opt.device == MSH_DEVICE_CPU || msh_cuda_device_count() == 0))
        fprintf(stderr,
                "modelshrink: warning: --verify: %s, so the CPU path runs alone and there "
                "is nothing to compare\n",
                opt.device == MSH_DEVICE_CPU ? "--device cpu" : "no CUDA device");
    if (staging_given && opt.device == MSH_DEVICE_CPU)
        fprintf(stderr, "modelshrink: warning: --staging-mib: --device cpu uses no GPU staging "
                        "buffers\n");
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
    } else if (n_in == 1 && !out_is_dir && !has_suffix(output, "/") &&
               !(stat(argv[optind], &ist) == 0 && S_ISDIR(ist.st_mode))) {
        /* one input file to one output file (an existing folder receives OUTPUT/<input name>,
         * below, as with cp) */
        if (stat(argv[optind], &ist) != 0) {
            fprintf(stderr, "modelshrink: %s: cannot open: %s\n", argv[optind], strerror(errno));
            return EXIT_SOME_FAILED;
        }
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
                msh_cli_batch found = j; /* the folder's files: kept when a model is among them */
                found.v = NULL;
                found.n = found.cap = 0;
                int ok = walk_dir(&found, in, output, "", out_is_dir ? &ost : NULL, 0);
                size_t models = 0;
                for (size_t k = 0; k < found.n; k++)
                    models += found.v[k].model != 0;
                if (ok && !models) { /* a folder without models fails, its other files too */
                    fprintf(stderr, "modelshrink: convert: no models found in %s\n", in);
                    msh_cli_batch_free(&found);
                    failed++;
                } else if (!move_jobs(&j, &found) || !ok) {
                    failed++;
                }
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
    if (j.n == 0) { /* every input failed already: nothing to run, nothing created */
        free(out_root);
        msh_cli_batch_free(&j);
        return failed ? EXIT_SOME_FAILED : EXIT_ALL_OK;
    }
    /* Folders are created as outputs need them (the batch makes each output's folder before
     * converting it); those that end up empty, because their models failed, are removed
     * afterwards, so that a failed run leaves nothing at -o. A sharded run keeps them: another
     * shard may be about to write into them. */
    dirlist made = {NULL, 0, 0};
    if (folder_mode && report && !out_is_dir && report_in_folder(report, output) &&
        mkdir(output, 0777) != 0 && errno != EEXIST) /* the report is written whatever happens */
        fprintf(stderr, "modelshrink: %s: cannot create the output folder: %s\n", output,
                strerror(errno));
    for (size_t k = 0; !shard_n && k < j.n; k++)
        note_missing_dirs(&made, j.v[k].out);
    j.output_root = out_root;
    int code = msh_cli_batch_run(&j);
    remove_empty_dirs(&made);
    free(out_root);
    if (code == 0 && failed)
        code = EXIT_SOME_FAILED;
    return code;
}

static int cmd_inspect(int argc, char **argv) {
    struct option lo[8];
    char so[16];
    int json = 0, no_savings = 0, c;
    const char *html = NULL;
    if (!getopt_setup(lo, sizeof lo / sizeof lo[0], so, sizeof so))
        return usage_error("%s", "inspect: internal error: the option table is too large");
    while ((c = getopt_long(argc, argv, so, lo, NULL)) != -1) {
        switch (c) {
        case OPT_JSON: json = 1; break;
        case OPT_HTML: html = optarg; break;
        case OPT_NO_SAVINGS: no_savings = 1; break;
        case OPT_HELP: msh_cli_usage(stdout, "inspect"); return EXIT_ALL_OK;
        default: return option_error(c, argv, lo);
        }
    }
    if (html && json)
        return usage_error("inspect: %s", "--html and --json exclude each other");
    if (no_savings && !html)
        return usage_error("inspect: %s", "--no-savings needs --html");
    if (optind >= argc)
        return usage_error("inspect: %s", "no file given");
    if (html && argc - optind != 1)
        return usage_error("inspect: --html shows one file (%d given)", argc - optind);
    if (html && !*html)
        return usage_error("inspect: %s", "--html needs a file name");
    if (html)
        return msh_cli_html_inspect(argv[optind], html, !no_savings);
    int failed = 0;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddNumberToObject(root, "schema_version", 1);
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
    struct option lo[8];
    char so[16];
    int json = 0, all = 0, c;
    if (!getopt_setup(lo, sizeof lo / sizeof lo[0], so, sizeof so))
        return usage_error("%s", "diff: internal error: the option table is too large");
    while ((c = getopt_long(argc, argv, so, lo, NULL)) != -1) {
        switch (c) {
        case OPT_JSON: json = 1; break;
        case OPT_ALL: all = 1; break;
        case OPT_HELP: msh_cli_usage(stdout, "diff"); return EXIT_ALL_OK;
        default: return option_error(c, argv, lo);
        }
    }
    if (all && json)
        return usage_error("diff: %s", "--all and --json exclude each other (--json lists every "
                                       "tensor)");
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

/* `modelshrink report merge REPORT... [-o OUT]`: the options are checked here, before any
 * report is read; the merge itself is in batch.c. */
static int cmd_report_merge(int argc, char **argv) {
    struct option lo[8];
    char so[16];
    const char *out = NULL;
    int c;
    if (!getopt_setup(lo, sizeof lo / sizeof lo[0], so, sizeof so))
        return usage_error("%s", "report merge: internal error: the option table is too large");
    while ((c = getopt_long(argc, argv, so, lo, NULL)) != -1) {
        switch (c) {
        case OPT_OUTPUT: out = optarg; break;
        case OPT_HELP: msh_cli_usage(stdout, "report merge"); return EXIT_ALL_OK;
        default: return option_error(c, argv, lo);
        }
    }
    if (optind >= argc)
        return usage_error("report merge: %s", "no report given");
    /* the merge reads "-o OUT" and report paths; a path that starts with '-' is given as ./-x */
    int n = argc - optind;
    char **v = calloc((size_t)n + 2, sizeof *v);
    char **own = calloc((size_t)n, sizeof *own);
    int k = 0, code = EXIT_SOME_FAILED;
    if (v && own) {
        if (out) {
            v[k++] = "-o";
            v[k++] = (char *)out;
        }
        for (int i = 0; i < n; i++) {
            const char *r = argv[optind + i];
            if (r[0] == '-' && (own[i] = malloc(strlen(r) + 3)))
                snprintf(own[i], strlen(r) + 3, "./%s", r);
            v[k++] = own[i] ? own[i] : (char *)r;
        }
        code = msh_cli_report_merge(k, v);
    } else {
        fprintf(stderr, "modelshrink: report merge: out of memory\n");
    }
    for (int i = 0; own && i < n; i++)
        free(own[i]);
    free(own);
    free(v);
    return code;
}

/* `modelshrink report html REPORT... -o OUT`. */
static int cmd_report_html(int argc, char **argv) {
    struct option lo[8];
    char so[16];
    const char *out = NULL;
    int c;
    if (!getopt_setup(lo, sizeof lo / sizeof lo[0], so, sizeof so))
        return usage_error("%s", "report html: internal error: the option table is too large");
    while ((c = getopt_long(argc, argv, so, lo, NULL)) != -1) {
        switch (c) {
        case OPT_OUTPUT: out = optarg; break;
        case OPT_HELP: msh_cli_usage(stdout, "report html"); return EXIT_ALL_OK;
        default: return option_error(c, argv, lo);
        }
    }
    if (optind >= argc)
        return usage_error("report html: %s", "no report given");
    if (!out || !*out)
        return usage_error("report html: %s", "no output given (-o OUT.html)");
    return msh_cli_html_report(argc - optind, argv + optind, out);
}

/* `modelshrink help [COMMAND]`. */
static int cmd_help(int argc, char **argv) {
    char name[64] = "";
    for (int i = 1; i < argc; i++) { /* "help report merge" names "report merge" */
        size_t k = strlen(name);
        snprintf(name + k, sizeof name - k, "%s%s", k ? " " : "", argv[i]);
    }
    if (!msh_cli_command_find(name)) {
        g_cmd = "";
        return usage_error("help: unknown command '%s'", name);
    }
    msh_cli_usage(stdout, name);
    return EXIT_ALL_OK;
}

int main(int argc, char **argv) {
    /* Past a file-size limit (ulimit -f) a write must fail with EFBIG, so the temporary file is
     * removed and the error reported, rather than the process dying on SIGXFSZ mid-write. */
    signal(SIGXFSZ, SIG_IGN);
    if (argc < 2)
        return usage_error("%s", "no command given");
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        msh_cli_usage(stdout, "");
        return EXIT_ALL_OK;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("modelshrink %s (CUDA devices: %d)\n", msh_version(), msh_cuda_device_count());
        return EXIT_ALL_OK;
    }
    if (cmd[0] == '-')
        return usage_error("unknown option '%s'", cmd);
    if (strcmp(cmd, "help") == 0)
        return cmd_help(argc - 1, argv + 1);
    if (strcmp(cmd, "report") == 0) {
        g_cmd = "report";
        if (argc < 3) {
            fprintf(stderr, "modelshrink: report: no command given\n");
            msh_cli_usage(stderr, "report");
            return EXIT_USAGE;
        }
        if (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0) {
            msh_cli_usage(stdout, "report");
            return EXIT_ALL_OK;
        }
        if (strcmp(argv[2], "merge") == 0) {
            g_cmd = "report merge";
            return cmd_report_merge(argc - 2, argv + 2);
        }
        if (strcmp(argv[2], "html") == 0) {
            g_cmd = "report html";
            return cmd_report_html(argc - 2, argv + 2);
        }
        if (argv[2][0] == '-')
            return usage_error("report: unknown option '%s'", argv[2]);
        return usage_error("report: unknown command '%s'", argv[2]);
    }
    if (strcmp(cmd, "convert") == 0 || strcmp(cmd, "inspect") == 0 || strcmp(cmd, "diff") == 0) {
        g_cmd = cmd;
        return cmd[0] == 'c'   ? cmd_convert(argc - 1, argv + 1)
               : cmd[0] == 'i' ? cmd_inspect(argc - 1, argv + 1)
                               : cmd_diff(argc - 1, argv + 1);
    }
    return usage_error("unknown command '%s'", cmd);
}
