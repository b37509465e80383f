#include "batch.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "table.h"

static volatile sig_atomic_t g_signal;
static volatile sig_atomic_t g_winch; /* the terminal was resized: the bar re-reads its width */

static void on_winch(int sig) {
    (void)sig;
    g_winch = 1;
}

static void on_signal(int sig) {
    g_signal = sig;
    msh_cancel_request();
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void msh_cli_batch_free(msh_cli_batch *b) {
    for (size_t i = 0; i < b->n; i++) {
        free(b->v[i].in);
        free(b->v[i].out);
        free(b->v[i].rel);
        free(b->v[i].opts);
    }
    free(b->v);
    b->v = NULL;
    b->n = b->cap = 0;
}

int msh_cli_batch_add(msh_cli_batch *b, const char *in, const char *out, const char *rel,
                      int model) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 64;
        msh_cli_job *p = realloc(b->v, cap * sizeof *p);
        if (!p)
            return 0;
        b->v = p;
        b->cap = cap;
    }
    msh_cli_job *j = &b->v[b->n];
    memset(j, 0, sizeof *j);
    j->in = strdup(in);
    j->out = strdup(out);
    j->rel = strdup(rel);
    j->model = model;
    struct stat sb;
    msh_error e;
    if (stat(in, &sb) == 0) {
        j->folder = S_ISDIR(sb.st_mode);
        j->size = (int64_t)sb.st_size;
        j->mtime_ns = (int64_t)sb.st_mtim.tv_sec * 1000000000 + (int64_t)sb.st_mtim.tv_nsec;
    }
    /* a model folder: its weight files' bytes and newest time (resume compares them) */
    if (j->folder && msh_input_stat(in, &j->size, &j->mtime_ns, &e) != MSH_OK)
        j->size = j->mtime_ns = 0; /* its conversion says what is wrong */
    if (!j->in || !j->out || !j->rel)
        return 0;
    b->n++;
    return 1;
}

void msh_cli_clear_option(msh_convert_options *opt, msh_option o) {
    msh_convert_options d;
    msh_convert_options_init(&d);
    switch (o) {
    case MSH_OPTION_DEDUP_GRAPH_INPUTS: opt->dedup_graph_inputs = d.dedup_graph_inputs; break;
    case MSH_OPTION_EXTERNAL_DATA: opt->external_data = d.external_data; break;
    case MSH_OPTION_EXTERNAL_THRESHOLD: opt->external_threshold = d.external_threshold; break;
    case MSH_OPTION_KEEP_IO_TYPES: opt->keep_io_types = d.keep_io_types; break;
    case MSH_OPTION_BLOCK_OPS: opt->block_ops = d.block_ops; break;
    case MSH_OPTION_BLOCK_NODES: opt->block_nodes = d.block_nodes; break;
    case MSH_OPTION_INT8: opt->int8 = d.int8; break;
    case MSH_OPTION_INT8_MIN_ELEMENTS: opt->int8_min_elements = d.int8_min_elements; break;
    case MSH_OPTION_INT8_GATHER: opt->int8_gather = d.int8_gather; break;
    case MSH_OPTION_INT4: opt->int4 = d.int4; break;
    case MSH_OPTION_INT4_BLOCK: opt->int4_block = d.int4_block; break;
    case MSH_OPTION_INT4_ASYM: opt->int4_asym = d.int4_asym; break;
    case MSH_OPTION_INT4_MIN_ELEMENTS: opt->int4_min_elements = d.int4_min_elements; break;
    case MSH_OPTION_INT4_GATHER: opt->int4_gather = d.int4_gather; break;
    case MSH_OPTION_INT4_FORMAT: opt->int4_format = d.int4_format; break;
    case MSH_OPTION_INT4_SEARCH: opt->int4_search = d.int4_search; break;
    case MSH_OPTION_KEY: opt->key = d.key; break;
    case MSH_OPTION_OUT_FORMAT: opt->out_format = d.out_format; break;
    case MSH_OPTION_KEEP_OUTPUTS: opt->keep_outputs = d.keep_outputs; break;
    case MSH_OPTION_DROP_OUTPUTS: opt->drop_outputs = d.drop_outputs; break;
    case MSH_OPTION_KEEP_INPUTS: opt->keep_inputs = d.keep_inputs; break;
    case MSH_OPTION_FP16_CLAMP: opt->fp16_clamp = d.fp16_clamp; break;
    case MSH_OPTION_KEEP_FP32:
        opt->keep_fp32 = d.keep_fp32;
        opt->n_keep_fp32 = d.n_keep_fp32;
        break;
    case MSH_OPTION_STORAGE_ONLY: opt->storage_only = d.storage_only; break;
    case MSH_OPTION_ALLOW_LARGER: opt->allow_larger = d.allow_larger; break;
    case MSH_OPTION_MAX_SHARD_BYTES: opt->max_shard_bytes = d.max_shard_bytes; break;
    case MSH_OPTION_NONE: break;
    }
}

/* ---- the options that change outputs, as one canonical string ---- */

/* A growing string; `oom` once an allocation failed (the string is then dropped). */
typedef struct sbuf {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *s, const char *x, size_t n) {
    if (s->oom)
        return;
    if (s->n + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 256;
        while (s->n + n + 1 > cap)
            cap *= 2;
        char *p = realloc(s->p, cap);
        if (!p) {
            s->oom = 1;
            return;
        }
        s->p = p;
        s->cap = cap;
    }
    memcpy(s->p + s->n, x, n);
    s->n += n;
    s->p[s->n] = 0;
}

/* A value as is where it is plain, else with %XX for the bytes that would make the string
 * ambiguous (space, comma, '=', '%') or unreadable (controls, non-ASCII). */
static void sb_value(sbuf *s, const char *v, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            (c > ' ' && c < 0x7f && !strchr(" ,=%", c))) {
            sb_put(s, (const char *)&c, 1);
        } else {
            char hex[4];
            snprintf(hex, sizeof hex, "%%%02X", c);
            sb_put(s, hex, 3);
        }
    }
}

static void sb_key(sbuf *s, const char *key) {
    if (s->n)
        sb_put(s, " ", 1);
    sb_put(s, key, strlen(key));
    sb_put(s, "=", 1);
}

static void kv_num(sbuf *s, const char *key, long long v) {
    char b[32];
    snprintf(b, sizeof b, "%lld", v);
    sb_key(s, key);
    sb_put(s, b, strlen(b));
}

static void kv_str(sbuf *s, const char *key, const char *v) {
    sb_key(s, key);
    sb_value(s, v, strlen(v));
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A list whose order does not change the output (op types, node names, outputs, patterns):
 * sorted, repeats and empty items left out, joined with ','. `csv`: items separated by commas
 * in one string; else `n` items. Nothing is added for an absent list. */
static void kv_list(sbuf *s, const char *key, const char *csv, const char *const *items, size_t n) {
    if (!csv && !n)
        return;
    char *copy = csv ? strdup(csv) : NULL;
    size_t cnt = csv ? 1 : n;
    for (const char *c = csv; c && *c; c++)
        cnt += *c == ',';
    const char **v = malloc((cnt + 1) * sizeof *v);
    if ((csv && !copy) || !v) {
        s->oom = 1;
        free(copy);
        free((void *)v);
        return;
    }
    size_t k = 0;
    if (copy) {
        for (char *tok = copy, *next; tok; tok = next) {
            next = strchr(tok, ',');
            if (next)
                *next++ = 0;
            if (*tok)
                v[k++] = tok;
        }
    } else {
        for (size_t i = 0; i < n; i++)
            if (items[i] && *items[i])
                v[k++] = items[i];
    }
    qsort((void *)v, k, sizeof *v, cmp_str);
    sb_key(s, key);
    for (size_t i = 0, w = 0; i < k; i++) {
        if (i && strcmp(v[i], v[i - 1]) == 0)
            continue;
        if (w++)
            sb_put(s, ",", 1);
        sb_value(s, v[i], strlen(v[i]));
    }
    free(copy);
    free((void *)v);
}

/* The options that change a conversion's output, as `key=value` pairs sorted by key: what a
 * resumed batch compares with a model's record. Options that do not change outputs (--jobs,
 * --device, --verify, --staging-mib, threads) are left out, and so are refinements of a
 * conversion that is off (--fp16-max without --fp16, --int8-gather without --int8,
 * --keep-inputs without --keep-outputs/--drop-outputs, --dedup-graph-inputs with --no-dedup).
 * An absent list or key is absent; an empty one is `key=`. NULL when out of memory. */
static char *options_canon(const msh_convert_options *o) {
    sbuf s = {NULL, 0, 0, 0};
    int fl = o->float_type != MSH_FLOAT_KEEP;
    char f[32];
    if (fl) {
        kv_num(&s, "allow_larger", o->allow_larger);
        kv_list(&s, "block_nodes", o->block_nodes, NULL, 0);
        kv_list(&s, "block_ops", o->block_ops, NULL, 0);
    }
    kv_num(&s, "dedup", o->dedup);
    if (o->dedup)
        kv_num(&s, "dedup_graph_inputs", o->dedup_graph_inputs);
    kv_list(&s, "drop_outputs", o->drop_outputs, NULL, 0);
    kv_num(&s, "external_data", o->external_data);
    kv_num(&s, "external_threshold", (long long)o->external_threshold);
    kv_str(&s, "float",
           o->float_type == MSH_FLOAT_FP16   ? "fp16"
           : o->float_type == MSH_FLOAT_BF16 ? "bf16"
           : fl                              ? "other"
                                             : "keep");
    if (fl) {
        kv_num(&s, "fp16_clamp", o->fp16_clamp);
        snprintf(f, sizeof f, "%.9g", (double)o->fp16_max); /* %.9g: a float's exact value */
        kv_str(&s, "fp16_max", f);
        snprintf(f, sizeof f, "%.9g", (double)o->fp16_min);
        kv_str(&s, "fp16_min", f);
    }
    kv_num(&s, "int8", o->int8);
    if (o->int8) {
        kv_num(&s, "int8_gather", o->int8_gather);
        kv_num(&s, "int8_min_elements", (long long)o->int8_min_elements);
    }
    if (o->int4) { /* absent without --int4: reports of earlier versions still resume */
        kv_num(&s, "int4", o->int4);
        kv_num(&s, "int4_asym", o->int4_asym);
        kv_num(&s, "int4_block", o->int4_block);
        kv_num(&s, "int4_format", o->int4_format);
        kv_num(&s, "int4_gather", o->int4_gather);
        kv_num(&s, "int4_min_elements", (long long)o->int4_min_elements);
        if (o->int4_search) /* absent without it, as above */
            kv_num(&s, "int4_search", o->int4_search);
    }
    if (fl && o->n_keep_fp32)
        kv_list(&s, "keep_fp32", NULL, o->keep_fp32, o->n_keep_fp32);
    if (o->keep_outputs || o->drop_outputs)
        kv_num(&s, "keep_inputs", o->keep_inputs);
    if (fl)
        kv_num(&s, "keep_io_types", o->keep_io_types);
    kv_list(&s, "keep_outputs", o->keep_outputs, NULL, 0);
    if (o->key)
        kv_str(&s, "key", o->key);
    kv_num(&s, "max_shard_bytes", (long long)o->max_shard_bytes);
    kv_str(&s, "out_format", msh_format_name((msh_format)o->out_format));
    if (fl)
        kv_num(&s, "storage_only", o->storage_only);
    if (s.oom) {
        free(s.p);
        return NULL;
    }
    return s.p;
}

/* The options one model is converted with: the batch's, less those its format does not take. */
static void job_options(const msh_cli_batch *b, const msh_cli_job *j, msh_convert_options *opt) {
    *opt = *b->opt;
    for (unsigned o = 0; o < 32; o++)
        if ((j->skip >> o) & 1u)
            msh_cli_clear_option(opt, (msh_option)o);
}

static uint64_t fnv1a(const char *s) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 0x100000001b3ULL;
    return h;
}

/* "N tensor" or "N tensors". */
#define NOUN(n, one, many) (long long)(n), msh_cli_plural((double)(n), one, many)

void msh_cli_print_line(const char *in, const char *out, const msh_convert_options *opt,
                        const msh_convert_result *r, const char *skipped) {
    char hi[32], ho[32];
    msh_cli_human_bytes((double)r->bytes_in, hi, sizeof hi);
    msh_cli_human_bytes((double)r->bytes_out, ho, sizeof ho);
    printf("%s -> %s: %s -> %s (%.2fx)", in, out, hi, ho,
           r->bytes_out ? (double)r->bytes_in / (double)r->bytes_out : 0.0);
    if (strcmp(r->format, "hf") == 0) {
        printf(", %lld -> %lld %s", (long long)r->shards_in,
               NOUN(r->shards_out, "shard", "shards"));
        if (r->tied_tensors)
            printf(", %lld tied %s written once", NOUN(r->tied_tensors, "tensor", "tensors"));
    }
    if (r->state_dict[0])
        printf(", state dict %s", r->state_dict);
    if (r->pruned_nodes || r->pruned_tensors)
        printf(", pruned %lld %s, %lld %s", NOUN(r->pruned_nodes, "node", "nodes"),
               NOUN(r->pruned_tensors, "tensor", "tensors"));
    if (r->dedup_merged)
        printf(", dedup merged %lld %s", NOUN(r->dedup_merged, "tensor", "tensors"));
    msh_cli_human_bytes((double)r->dedup_unshared_bytes, hi, sizeof hi);
    if (r->dedup_unshared && strcmp(r->format, "hf") == 0)
        printf(", %lld identical %s (%s; safetensors cannot share them)",
               NOUN(r->dedup_unshared, "tensor kept as a copy", "tensors kept as copies"), hi);
    else if (r->dedup_unshared)
        printf(", %lld identical %s (a .pth output would save %s)",
               NOUN(r->dedup_unshared, "tensor kept as a copy", "tensors kept as copies"), hi);
    if (opt->int8) {
        printf(", int8: %lld %s", NOUN(r->int8_tensors, "tensor", "tensors"));
        if (r->int8_why[0])
            printf(": %s", r->int8_why);
    }
    if (opt->int4) {
        printf(", int4: %lld %s", NOUN(r->int4_tensors, "tensor", "tensors"));
        if (r->int4_why[0])
            printf(": %s", r->int4_why);
        if (opt->int4_search && r->int4_tensors && r->int4_search_seconds > 0)
            printf(", search %.2f GB/s",
                   (double)r->int4_bytes_before / r->int4_search_seconds / 1e9);
    }
    if (opt->float_type) {
        int f16 = opt->float_type == MSH_FLOAT_FP16;
        printf(", %s%s: %lld %s", f16 ? "fp16" : "bf16", opt->storage_only ? " storage" : "",
               NOUN(r->float_tensors, "tensor", "tensors"));
        if (r->float_why[0])
            printf(": %s", r->float_why);
        if (f16 && r->float_subnormal)
            printf(", %lld %s subnormal", NOUN(r->float_subnormal, "value", "values"));
        if (f16 && r->float_clamped)
            printf(", %lld %s clamped", NOUN(r->float_clamped, "value", "values"));
        if (r->float_kept_range) {
            int64_t below = r->float_kept_range - r->float_kept_above;
            printf(", kept fp32: %lld %s", NOUN(r->float_kept_range, "tensor", "tensors"));
            if (r->float_kept_above && below > 0)
                printf(" (%lld beyond FP16 range, max |x| %.3g; %lld mostly below FP16's normal "
                       "range)",
                       (long long)r->float_kept_above, (double)r->float_kept_max, (long long)below);
            else if (r->float_kept_above)
                printf(" beyond FP16 range (max |x| %.3g)", (double)r->float_kept_max);
            else
                printf(" mostly below FP16's normal range");
        }
        if (r->float_kept_user)
            printf(", kept fp32 by --keep-fp32: %lld %s",
                   NOUN(r->float_kept_user, "tensor", "tensors"));
    }
    if (r->external_out)
        printf(", tensors in %s.data", out);
    if (skipped && *skipped)
        printf(", not applied to %s: %s", r->format, skipped);
    printf(", on %s%s\n", r->device,
           opt->verify && strcmp(r->device, "cpu") != 0 ? " (verified against the CPU)" : "");
}

/* ---- resume: the latest record of each input ---- */

typedef struct prev {
    char *rel;
    size_t seq; /* its line's place in the report: the last record of an input decides */
    int ok;
    int64_t size, mtime_ns;
    char *opts; /* "options", or NULL in a record written before they were recorded */
    int64_t bytes_in, bytes_out;
    int fmt; /* index into the per-format table */
} prev;

static int cmp_prev(const void *a, const void *b) {
    const prev *x = a, *y = b;
    int c = strcmp(x->rel, y->rel);
    return c ? c : (x->seq < y->seq ? -1 : x->seq > y->seq);
}

static int fmt_index(const char *f) {
    return strcmp(f, "pth") == 0           ? 1
           : strcmp(f, "safetensors") == 0 ? 2
           : strcmp(f, "hf") == 0          ? 3
                                           : 0;
}

/* A record's number as an integer; 0 when it is missing or not a number. */
static int64_t json_i64(const cJSON *o, const char *key) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(x) && x->valuedouble > -9.2e18 && x->valuedouble < 9.2e18
               ? (int64_t)x->valuedouble
               : 0;
}

static prev *load_report(const char *path, size_t *n) {
    *n = 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    prev *v = NULL;
    size_t cap = 0;
    char *line = NULL;
    size_t lcap = 0;
    while (getline(&line, &lcap, f) > 0) {
        cJSON *j = cJSON_Parse(line); /* a line cut by a kill does not parse: ignored */
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "type");
        const cJSON *rel = cJSON_GetObjectItemCaseSensitive(j, "rel");
        if (cJSON_IsString(t) && strcmp(t->valuestring, "model") == 0 && cJSON_IsString(rel)) {
            if (*n == cap) {
                cap = cap ? 2 * cap : 256;
                prev *p = realloc(v, cap * sizeof *p);
                if (!p) {
                    cJSON_Delete(j);
                    break;
                }
                v = p;
            }
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "status");
            const cJSON *op = cJSON_GetObjectItemCaseSensitive(j, "options");
            const cJSON *fm = cJSON_GetObjectItemCaseSensitive(j, "format");
            prev *x = &v[*n];
            x->rel = strdup(rel->valuestring);
            x->seq = *n;
            x->opts = cJSON_IsString(op) ? strdup(op->valuestring) : NULL;
            x->fmt = fmt_index(cJSON_IsString(fm) ? fm->valuestring : "");
            x->ok = cJSON_IsString(st) && strcmp(st->valuestring, "ok") == 0;
            x->bytes_in = json_i64(j, "bytes_in");
            x->bytes_out = json_i64(j, "bytes_out");
            x->size = json_i64(j, "input_size");
            x->mtime_ns = json_i64(j, "input_mtime_ns");
            if (x->rel)
                (*n)++;
            else
                free(x->opts);
        }
        cJSON_Delete(j);
    }
    free(line);
    fclose(f);
    /* by input, then in the report's order */
    if (*n) /* a report cut before its first record holds none */
        qsort(v, *n, sizeof *v, cmp_prev);
    return v;
}

/* The last record of `rel` (NULL when none): it says whether the input is done, so a later
 * failure, or a later conversion with other options, is what counts. */
static const prev *find_prev(const prev *v, size_t n, const char *rel) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(v[mid].rel, rel) <= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo > 0 && strcmp(v[lo - 1].rel, rel) == 0 ? &v[lo - 1] : NULL;
}

/* ---- the run ---- */

/* A failure, repeated at the end of a run that showed the progress bar. */
typedef struct failure {
    char *path, *msg;
} failure;

typedef struct run {
    msh_cli_batch *b;
    size_t *order; /* model jobs to do, largest first */
    size_t n_order, next;
    pthread_mutex_t lock;
    FILE *report;
    int bar;   /* the progress bar is drawn on stderr (a terminal, not --quiet, several models) */
    int lines; /* the per-model lines are printed on stdout */
    size_t done, ok, failed, reconverted;
    int64_t bytes_in, bytes_out; /* of the models converted by this run */
    size_t resumed;              /* --resume: models done before, by the report */
    int64_t resumed_in, resumed_out;
    int64_t bytes_done, bytes_total; /* the bar's: input files and their external data */
    /* per format (onnx, pth, safetensors, hf): models ok (resumed too), failed, bytes in and
     * out */
    int64_t fmt_ok[4], fmt_failed[4], fmt_in[4], fmt_out[4];
    double t0;
    int threads; /* engine threads per model: the cores shared among the parallel models */
    /* the bar */
    const char *flight[256]; /* the inputs being converted (relative paths), by worker slot */
    size_t flight_seq[256];  /* when each started, in starts */
    size_t starts;
    const char *last;
    int cols; /* the terminal's width */
    int stop; /* the ticker's end */
    pthread_cond_t tick;
    failure *fails;
    size_t n_fails, cap_fails;
} run;

static msh_cli_job *g_sort_jobs; /* qsort has no context argument */
static int cmp_job(const void *a, const void *b) {
    const msh_cli_job *x = &g_sort_jobs[*(const size_t *)a], *y = &g_sort_jobs[*(const size_t *)b];
    if (x->size != y->size)
        return x->size > y->size ? -1 : 1;
    return strcmp(x->rel, y->rel);
}

static int mkdirs_for(const char *file) {
    char *p = strdup(file);
    if (!p)
        return 0;
    char *slash = strrchr(p, '/');
    if (!slash || slash == p) {
        free(p);
        return 1;
    }
    *slash = 0;
    for (char *q = p + 1; *q; q++) {
        if (*q != '/')
            continue;
        *q = 0;
        if (mkdir(p, 0777) != 0 && errno != EEXIST) {
            free(p);
            return 0;
        }
        *q = '/';
    }
    int ok = mkdir(p, 0777) == 0 || errno == EEXIST;
    free(p);
    return ok;
}

/* The given options that do not apply to job j's format, as "--int8, --keep-outputs". */
static void skipped_flags(const msh_cli_batch *b, const msh_cli_job *j, char *buf, size_t cap) {
    buf[0] = 0;
    for (unsigned o = 0; b->flags && o < 32; o++)
        if ((j->skip >> o) & 1u && b->flags[o])
            snprintf(buf + strlen(buf), cap - strlen(buf), "%s%s", *buf ? ", " : "", b->flags[o]);
}

static void record(run *r, const msh_cli_job *j, msh_status st, const msh_convert_result *res,
                   const char *err, double secs) {
    if (!r->report)
        return;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "model");
    cJSON_AddStringToObject(o, "input", j->in);
    cJSON_AddStringToObject(o, "rel", j->rel);
    cJSON_AddStringToObject(o, "output", j->out);
    const char *fmt = res->format;
    if (!fmt[0]) { /* failed before the content said: go by the name */
        size_t n = strlen(j->in);
        fmt = j->folder                                               ? "hf"
              : n > 12 && strcmp(j->in + n - 12, ".safetensors") == 0 ? "safetensors"
              : n > 5 && strcmp(j->in + n - 5, ".onnx") == 0          ? "onnx"
                                                                      : "pth";
    }
    cJSON_AddStringToObject(o, "format", fmt);
    cJSON_AddStringToObject(o, "status", st == MSH_OK ? "ok" : "error");
    if (st == MSH_OK)
        cJSON_AddNullToObject(o, "error");
    else
        cJSON_AddStringToObject(o, "error", err);
    cJSON_AddNumberToObject(o, "bytes_in", (double)res->bytes_in);
    cJSON_AddNumberToObject(o, "bytes_out", (double)res->bytes_out);
    cJSON_AddNumberToObject(o, "ratio",
                            res->bytes_out ? (double)res->bytes_in / (double)res->bytes_out : 0.0);
    cJSON_AddNumberToObject(o, "seconds", secs);
    cJSON_AddStringToObject(o, "device", res->device[0] ? res->device : "cpu");
    cJSON *sv = cJSON_AddObjectToObject(o, "savings");
    cJSON_AddNumberToObject(sv, "dedup", (double)res->dedup_saved_bytes);
    cJSON_AddNumberToObject(sv, "strip", (double)res->strip_saved_bytes);
    cJSON_AddNumberToObject(sv, "float", (double)res->float_saved_bytes);
    cJSON_AddNumberToObject(sv, "int8", (double)(res->int8_bytes_before - res->int8_bytes_after));
    cJSON_AddNumberToObject(sv, "prune", (double)res->prune_saved_bytes);
    const msh_convert_options *op = r->b->opt;
    if (st == MSH_OK && op && op->float_type) {
        cJSON *f = cJSON_AddObjectToObject(o, "float");
        cJSON_AddStringToObject(f, "type", op->float_type == MSH_FLOAT_FP16 ? "fp16" : "bf16");
        cJSON_AddBoolToObject(f, "storage_only", op->storage_only);
        cJSON_AddNumberToObject(f, "tensors", (double)res->float_tensors);
        cJSON_AddNumberToObject(f, "casts", (double)res->float_casts);
        cJSON_AddNumberToObject(f, "values_subnormal", (double)res->float_subnormal);
        cJSON_AddNumberToObject(f, "values_clamped", (double)res->float_clamped);
        cJSON_AddNumberToObject(f, "kept_fp32_range", (double)res->float_kept_range);
        cJSON_AddNumberToObject(f, "kept_fp32_above", (double)res->float_kept_above);
        cJSON_AddNumberToObject(f, "kept_max_abs", (double)res->float_kept_max);
        cJSON_AddNumberToObject(f, "kept_fp32_user", (double)res->float_kept_user);
        if (res->float_why[0])
            cJSON_AddStringToObject(f, "why", res->float_why);
        else
            cJSON_AddNullToObject(f, "why");
    }
    if (st == MSH_OK && op && op->int8 && !((j->skip >> MSH_OPTION_INT8) & 1u)) {
        cJSON *q = cJSON_AddObjectToObject(o, "int8");
        cJSON_AddNumberToObject(q, "tensors", (double)res->int8_tensors);
        cJSON_AddNumberToObject(q, "bytes_before", (double)res->int8_bytes_before);
        cJSON_AddNumberToObject(q, "bytes_after", (double)res->int8_bytes_after);
        if (res->int8_why[0])
            cJSON_AddStringToObject(q, "why", res->int8_why);
        else
            cJSON_AddNullToObject(q, "why");
    }
    if (st == MSH_OK && op && op->int4 && !((j->skip >> MSH_OPTION_INT4) & 1u)) {
        cJSON *q = cJSON_AddObjectToObject(o, "int4");
        cJSON_AddNumberToObject(q, "tensors", (double)res->int4_tensors);
        cJSON_AddNumberToObject(q, "bytes_before", (double)res->int4_bytes_before);
        cJSON_AddNumberToObject(q, "bytes_after", (double)res->int4_bytes_after);
        cJSON_AddNumberToObject(q, "opset", (double)res->int4_opset);
        if (op->int4_search)
            cJSON_AddNumberToObject(q, "search_seconds", res->int4_search_seconds);
        if (res->int4_why[0])
            cJSON_AddStringToObject(q, "why", res->int4_why);
        else
            cJSON_AddNullToObject(q, "why");
    }
    cJSON *na = cJSON_AddArrayToObject(o, "not_applied");
    for (unsigned k = 0; r->b->flags && k < 32; k++)
        if ((j->skip >> k) & 1u && r->b->flags[k])
            cJSON_AddItemToArray(na, cJSON_CreateString(r->b->flags[k]));
    /* exact integers (a double would round a nanosecond time) */
    char num[32];
    snprintf(num, sizeof num, "%lld", (long long)j->size);
    cJSON_AddRawToObject(o, "input_size", num);
    snprintf(num, sizeof num, "%lld", (long long)j->mtime_ns);
    cJSON_AddRawToObject(o, "input_mtime_ns", num);
    /* what --resume compares: the options that change this model's output */
    if (j->opts) {
        cJSON_AddStringToObject(o, "options", j->opts);
        snprintf(num, sizeof num, "%016llx", (unsigned long long)fnv1a(j->opts));
        cJSON_AddStringToObject(o, "options_hash", num);
    } else {
        cJSON_AddNullToObject(o, "options");
        cJSON_AddNullToObject(o, "options_hash");
    }
    char *s = cJSON_PrintUnformatted(o);
    if (s) {
        fprintf(r->report, "%s\n", s);
        fflush(r->report); /* a kill loses at most the line being written */
    }
    free(s);
    cJSON_Delete(o);
}

/* ---- the progress bar ---- */

/* The terminal's width on stderr (80 when it does not say). */
static int term_cols(void) {
    struct winsize ws;
    if (ioctl(2, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        return ws.ws_col;
    return 80;
}

/* "0:42", "1:02:03"; "--:--" when unknown or past 99 hours. */
static void fmt_eta(double s, char *buf, size_t cap) {
    if (s < 0 || s > 99 * 3600.0)
        snprintf(buf, cap, "--:--");
    else if (s < 3600)
        snprintf(buf, cap, "%d:%02d", (int)s / 60, (int)s % 60);
    else
        snprintf(buf, cap, "%d:%02d:%02d", (int)s / 3600, (int)s / 60 % 60, (int)s % 60);
}

/* Bytes in at most five columns for narrow terminals: "512B", "9.5k", "45M", "1.2G". */
static void compact_bytes(double n, char *buf, size_t cap) {
    const char *u = "BkMGTP";
    int i = 0;
    while (i < 5 && n >= 999.5) {
        n /= 1000.0;
        i++;
    }
    if (i > 0 && n < 9.95)
        snprintf(buf, cap, "%.1f%c", n, u[i]);
    else
        snprintf(buf, cap, "%.0f%c", n, u[i]);
}

/* `s` in at most `w` columns: as is, or its start and end around "...". Bytes count as columns
 * (a multibyte character takes no more columns than bytes, so the line never wraps), cuts fall
 * between characters, and control bytes show as '?'. */
static void fit_middle(const char *s, int w, char *out, size_t cap) {
    size_t n = strlen(s), o = 0;
    size_t head = n, tail = n;
    if (w < 0)
        w = 0;
    if (n > (size_t)w) {
        size_t keep = w > 3 ? (size_t)w - 3 : 0;
        head = keep / 3; /* the end is the file's name: it gets the larger share */
        while (head > 0 && ((unsigned char)s[head] & 0xC0) == 0x80)
            head--;
        tail = n - (keep - head);
        while (tail < n && ((unsigned char)s[tail] & 0xC0) == 0x80)
            tail++;
    }
    for (size_t i = 0; i < n && o + 4 < cap; i++) {
        if (i == head && head < tail) {
            if (w >= 3)
                o += (size_t)snprintf(out + o, cap - o, "...");
            i = tail;
            if (i >= n)
                break;
        }
        unsigned char c = (unsigned char)s[i];
        out[o++] = c < 0x20 || c == 0x7f ? '?' : (char)c;
    }
    out[o] = 0;
}

/* The bar's line in at most `width` columns: models done/total, bytes done/total (external
 * data included), rate, ETA, failures, and the input last started, each in the longest form
 * that leaves the file name room; a bar graph when there is plenty. */
static void compose_bar(const run *r, int width, char *line, size_t cap) {
    double el = now_s() - r->t0;
    double rate = el > 0 ? (double)r->bytes_done / el : 0;
    char eta[24], dn[24], tt[24], rt[24], cdn[16], ctt[16], crt[16], fl[40] = "";
    fmt_eta(rate > 0 ? (double)(r->bytes_total - r->bytes_done) / rate : -1, eta, sizeof eta);
    msh_cli_human_bytes((double)r->bytes_done, dn, sizeof dn);
    msh_cli_human_bytes((double)r->bytes_total, tt, sizeof tt);
    msh_cli_human_bytes(rate, rt, sizeof rt);
    compact_bytes((double)r->bytes_done, cdn, sizeof cdn);
    compact_bytes((double)r->bytes_total, ctt, sizeof ctt);
    compact_bytes(rate, crt, sizeof crt);
    if (r->failed)
        snprintf(fl, sizeof fl, ", %zu failed", r->failed);
    char st[4][192];
    snprintf(st[0], sizeof st[0], "%zu/%zu %s, %s of %s, %s/s, ETA %s%s", r->done, r->n_order,
             msh_cli_plural((double)r->n_order, "model", "models"), dn, tt, rt, eta, fl);
    if (r->failed)
        snprintf(fl, sizeof fl, " %zu failed", r->failed);
    snprintf(st[1], sizeof st[1], "%zu/%zu %s/%s %s/s ETA %s%s", r->done, r->n_order, dn, tt, rt,
             eta, fl);
    snprintf(st[2], sizeof st[2], "%zu/%zu %s/%s %s/s %s%s", r->done, r->n_order, cdn, ctt, crt,
             eta, fl);
    snprintf(st[3], sizeof st[3], "%zu/%zu %s/%s %s%s", r->done, r->n_order, cdn, ctt, eta, fl);
    /* the file: of those being converted, the one that started first (it holds the bar up);
     * between two models, the last one started */
    const char *cur = r->done < r->n_order ? r->last : NULL;
    size_t first = (size_t)-1;
    for (int i = 0; i < 256; i++)
        if (r->flight[i] && r->flight_seq[i] < first) {
            cur = r->flight[i];
            first = r->flight_seq[i];
        }
    static const int min_file[4] = {24, 12, 8, 0};
    int lv = 0;
    while (lv < 3 && (int)strlen(st[lv]) + (cur ? 2 + min_file[lv] : 0) > width)
        lv++;
    size_t o = 0;
    line[0] = 0;
    int graph = 20;
    if (lv == 0 && (int)strlen(st[0]) + 2 + 30 + graph + 3 <= width) {
        int fill = r->bytes_total > 0
                       ? (int)((double)graph * (double)r->bytes_done / (double)r->bytes_total)
                       : (int)((size_t)graph * r->done / (r->n_order ? r->n_order : 1));
        line[o++] = '[';
        for (int i = 0; i < graph; i++)
            line[o++] = i < fill ? '#' : '-';
        line[o++] = ']';
        line[o++] = ' ';
        line[o] = 0;
    }
    o += (size_t)snprintf(line + o, cap - o, "%s", st[lv]);
    int room = width - (int)o - 2;
    if (cur && room >= 5) {
        char f[512];
        fit_middle(cur, room, f, sizeof f);
        snprintf(line + o, cap - o, "  %s", f);
    }
    if (width >= 0 && strlen(line) > (size_t)width) /* the last resort: never wrap */
        line[width] = 0;
}

/* Redraw the bar (the caller holds the lock). */
static void draw_bar(run *r) {
    if (g_winch) {
        g_winch = 0;
        r->cols = term_cols();
    }
    char line[1024];
    /* one column short of the width: a line that fills it wraps on some terminals */
    int w = r->cols - 1 < (int)sizeof line - 1 ? r->cols - 1 : (int)sizeof line - 1;
    compose_bar(r, w, line, sizeof line);
    fprintf(stderr, "\r%s\033[K", line);
    fflush(stderr);
}

/* Clear the bar's line before something else is printed on stderr (the caller holds the lock;
 * the next redraw brings it back). */
static void clear_bar(const run *r) {
    if (r->bar)
        fputs("\r\033[K", stderr);
}

/* Redraws the bar five times a second (and at once after a resize), so rate and ETA move while
 * large models convert. */
static void *ticker(void *arg) {
    run *r = arg;
    pthread_mutex_lock(&r->lock);
    while (!r->stop) {
        draw_bar(r);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&r->tick, &r->lock, &ts);
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

static void add_failure(run *r, const char *path, const char *msg) {
    if (r->n_fails == r->cap_fails) {
        size_t cap = r->cap_fails ? 2 * r->cap_fails : 16;
        failure *p = realloc(r->fails, cap * sizeof *p);
        if (!p)
            return; /* the message was printed already; only its repetition is lost */
        r->fails = p;
        r->cap_fails = cap;
    }
    failure *f = &r->fails[r->n_fails];
    f->path = strdup(path);
    f->msg = strdup(msg);
    if (f->path && f->msg)
        r->n_fails++;
    else {
        free(f->path);
        free(f->msg);
    }
}

static int job_fmt_index(const msh_cli_job *j, const msh_convert_result *res) {
    if (res->format[0])
        return fmt_index(res->format);
    size_t ln = strlen(j->in); /* failed before the content said: go by the name */
    return j->folder                                                 ? 3
           : ln > 5 && strcmp(j->in + ln - 5, ".onnx") == 0          ? 0
           : ln > 12 && strcmp(j->in + ln - 12, ".safetensors") == 0 ? 2
                                                                     : 1;
}

static void *worker(void *arg) {
    run *r = arg;
    msh_cli_batch *b = r->b;
    int slot = -1;
    for (;;) {
        pthread_mutex_lock(&r->lock);
        size_t k = r->next < r->n_order && !g_signal ? r->order[r->next++] : (size_t)-1;
        for (int i = 0; k != (size_t)-1 && slot < 0 && i < 256; i++)
            if (!r->flight[i])
                slot = i;
        if (k != (size_t)-1 && slot >= 0) {
            r->flight[slot] = b->v[k].rel;
            r->flight_seq[slot] = r->starts++;
            r->last = b->v[k].rel;
        }
        pthread_mutex_unlock(&r->lock);
        if (k == (size_t)-1)
            break;
        msh_cli_job *j = &b->v[k];
        msh_convert_result res;
        memset(&res, 0, sizeof res);
        msh_error err;
        err.msg[0] = 0;
        double t0 = now_s();
        msh_status st;
        msh_convert_options opt; /* less the given options this format does not take */
        job_options(b, j, &opt);
        if (!opt.threads)
            opt.threads = r->threads;
        char skipped[256];
        skipped_flags(b, j, skipped, sizeof skipped);
        if (!mkdirs_for(j->out))
            st = MSH_ERR_IO,
            snprintf(err.msg, sizeof err.msg, "%s: cannot create the folder of %s", j->in, j->out);
        else
            st = msh_convert_file(j->in, j->out, &opt, &res, &err);
        double secs = now_s() - t0;
        pthread_mutex_lock(&r->lock);
        if (slot >= 0)
            r->flight[slot] = NULL;
        slot = -1;
        if (st == MSH_ERR_CANCELLED) { /* stopped by a signal: redone by --resume */
            pthread_mutex_unlock(&r->lock);
            continue;
        }
        r->done++;
        r->bytes_done += j->size + j->data_bytes;
        r->reconverted += (size_t)j->reconvert;
        int fi = job_fmt_index(j, &res);
        if (st == MSH_OK) {
            r->fmt_ok[fi]++;
            r->fmt_in[fi] += res.bytes_in;
            r->fmt_out[fi] += res.bytes_out;
            r->ok++;
            r->bytes_in += res.bytes_in;
            r->bytes_out += res.bytes_out;
        } else {
            r->fmt_failed[fi]++;
            r->failed++;
        }
        record(r, j, st, &res, err.msg, secs);
        if (st != MSH_OK) {
            clear_bar(r);
            fprintf(stderr, "modelshrink: %s\n", err.msg);
            if (r->bar)
                add_failure(r, j->in, err.msg);
        } else if (r->lines) {
            msh_cli_print_line(j->in, j->out, &opt, &res, skipped);
            fflush(stdout);
        }
        if (res.note[0]) {
            clear_bar(r);
            fprintf(stderr, "modelshrink: %s: warning: %s\n", j->in, res.note);
        }
        if (r->bar && (st != MSH_OK || res.note[0]))
            draw_bar(r); /* back under what was printed; otherwise the ticker redraws it */
        pthread_mutex_unlock(&r->lock);
    }
    return NULL;
}

/* Copy a file that is not a model into the output tree (temporary name, then rename). */
static int copy_file(const char *in, const char *out) {
    if (!mkdirs_for(out))
        return 0;
    size_t n = strlen(out) + 32;
    char *tmp = malloc(n);
    if (!tmp)
        return 0;
    snprintf(tmp, n, "%s.msh-copy-XXXXXX", out);
    int fo = mkstemp(tmp), fi = open(in, O_RDONLY);
    int ok = fo >= 0 && fi >= 0;
    char buf[1 << 16];
    ssize_t k;
    while (ok && (k = read(fi, buf, sizeof buf)) > 0)
        ok = write(fo, buf, (size_t)k) == k;
    if (fi >= 0)
        close(fi);
    if (fo >= 0) {
        ok = ok && fchmod(fo, 0644) == 0 && fsync(fo) == 0;
        close(fo);
    }
    ok = ok && rename(tmp, out) == 0;
    if (!ok)
        unlink(tmp);
    free(tmp);
    return ok;
}

/* Files that belong to a model: the external data of every ONNX model of the batch (all shards:
 * a model and its data must never be split). Returns malloc'd real paths, sorted. */
static int cmp_cstr(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static char **model_data_files(const msh_cli_batch *b, size_t *n) {
    char **v = NULL;
    size_t cap = 0;
    *n = 0;
    for (size_t i = 0; i < b->n; i++) {
        const msh_cli_job *j = &b->v[i];
        size_t len = strlen(j->in);
        if (!j->model || len < 5 || strcmp(j->in + len - 5, ".onnx") != 0)
            continue;
        char **loc;
        size_t nl;
        msh_error err;
        if (msh_onnx_external_files(j->in, &loc, &nl, &err) != MSH_OK)
            continue; /* the conversion will report it */
        const char *slash = strrchr(j->in, '/');
        size_t dl = slash ? (size_t)(slash - j->in) : 0;
        for (size_t k = 0; k < nl; k++) {
            char *p = malloc(dl + strlen(loc[k]) + 3);
            if (p) {
                snprintf(p, dl + strlen(loc[k]) + 3, "%.*s%s%s", (int)dl, j->in, dl ? "/" : "",
                         loc[k]);
                char *real = realpath(p, NULL);
                free(p);
                if (real && *n == cap) {
                    cap = cap ? 2 * cap : 16;
                    char **nv = realloc(v, cap * sizeof *nv);
                    if (!nv) {
                        free(real);
                        real = NULL;
                    } else {
                        v = nv;
                    }
                }
                if (real)
                    v[(*n)++] = real;
            }
            msh_free(loc[k]);
        }
        msh_free(loc);
    }
    if (v)
        qsort(v, *n, sizeof *v, cmp_cstr);
    return v;
}

static int is_model_data(char **files, size_t n, const char *path) {
    if (!n)
        return 0;
    char *real = realpath(path, NULL);
    int found = real && bsearch(&real, files, n, sizeof *files, cmp_cstr) != NULL;
    free(real);
    return found;
}

/* The bytes of an ONNX model's external data files (0 for other files, or when unreadable: its
 * conversion says why). */
static int64_t external_data_bytes(const char *path) {
    char **loc = NULL;
    size_t n = 0;
    msh_error e;
    int64_t sum = 0;
    if (msh_onnx_external_files(path, &loc, &n, &e) != MSH_OK)
        return 0;
    const char *slash = strrchr(path, '/');
    int dl = slash ? (int)(slash - path) : 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = (size_t)dl + strlen(loc[i]) + 2;
        char *p = malloc(len);
        struct stat sb;
        if (p) {
            snprintf(p, len, "%.*s%s%s", dl, path, dl ? "/" : "", loc[i]);
            if (stat(p, &sb) == 0 && S_ISREG(sb.st_mode))
                sum += (int64_t)sb.st_size;
        }
        free(p);
        msh_free(loc[i]);
    }
    msh_free(loc);
    return sum;
}

/* The message of a failure with its path in front (the library's messages start with it). */
static void print_failure(const char *path, const char *msg) {
    size_t n = strlen(path);
    if (strncmp(msg, path, n) == 0 && msg[n] == ':')
        fprintf(stderr, "  %s\n", msg);
    else
        fprintf(stderr, "  %s: %s\n", path, msg);
}

int msh_cli_batch_run(msh_cli_batch *b) {
    run r;
    memset(&r, 0, sizeof r);
    r.b = b;
    pthread_mutex_init(&r.lock, NULL);
    pthread_cond_init(&r.tick, NULL);
    size_t not_models = 0;
    int code = 0;
    if (b->output_root)
        msh_clean_stale_temps(b->output_root);
    size_t n_prev = 0;
    prev *pv = b->resume && b->report ? load_report(b->report, &n_prev) : NULL;
    if (b->report) {
        r.report = fopen(b->report, b->resume ? "a" : "w");
        if (!r.report) {
            fprintf(stderr, "modelshrink: %s: cannot write the report: %s\n", b->report,
                    strerror(errno));
            code = 1;
        }
    }
    r.order = malloc((b->n + 1) * sizeof *r.order);
    size_t n_data = 0;
    char **data = NULL;
    for (size_t i = 0; i < b->n; i++)
        if (!b->v[i].model) { /* only worth reading the models when other files are there */
            data = model_data_files(b, &n_data);
            break;
        }
    for (size_t i = 0; r.order && code == 0 && i < b->n; i++) {
        msh_cli_job *j = &b->v[i];
        if (!j->model && is_model_data(data, n_data, j->in))
            continue; /* a model's external data: written with the model */
        if (b->shard_n && fnv1a(j->rel) % (uint64_t)b->shard_n != (uint64_t)b->shard_k)
            continue;
        if (!j->model) {
            not_models++;
            if (b->copy_others) {
                if (!copy_file(j->in, j->out)) {
                    fprintf(stderr, "modelshrink: %s: cannot copy to %s\n", j->in, j->out);
                    r.failed++;
                }
            } else if (not_models <= 10 && !b->quiet) {
                fprintf(stderr, "modelshrink: %s: skipped (not a model)%s\n", j->in,
                        not_models == 10 ? "; further ones are counted, not listed" : "");
            }
            continue;
        }
        msh_convert_options jo;
        job_options(b, j, &jo);
        j->opts = options_canon(&jo);
        const prev *p = pv ? find_prev(pv, n_prev, j->rel) : NULL;
        /* the report's times went through a JSON reader's doubles: within a microsecond */
        if (p && p->ok && p->size == j->size && llabs(p->mtime_ns - j->mtime_ns) <= 1000 &&
            access(j->out, F_OK) == 0) {
            if (p->opts && j->opts && strcmp(p->opts, j->opts) == 0) {
                r.resumed++;
                r.resumed_in += p->bytes_in;
                r.resumed_out += p->bytes_out;
                r.fmt_ok[p->fmt]++;
                r.fmt_in[p->fmt] += p->bytes_in;
                r.fmt_out[p->fmt] += p->bytes_out;
                continue;
            }
            j->reconvert = 1; /* done, but with other options (or none recorded) */
        }
        r.order[r.n_order++] = i;
    }
    g_sort_jobs = b->v;
    if (r.order)
        qsort(r.order, r.n_order, sizeof *r.order, cmp_job); /* largest first: even finish */
    /* A bar for a batch on a terminal; the per-model lines where there is no bar, or where
     * stdout is not the terminal (a log file gets them while the terminal shows the bar). */
    r.bar = !b->quiet && r.n_order > 1 && isatty(2);
    r.lines = !b->quiet && (!r.bar || !isatty(1));
    for (size_t i = 0; i < r.n_order; i++) {
        msh_cli_job *j = &b->v[r.order[i]];
        if (r.bar && !j->folder)
            j->data_bytes = external_data_bytes(j->in);
        r.bytes_total += j->size + j->data_bytes;
    }
    struct sigaction sa, old_int, old_term, old_winch;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    pthread_t tick;
    int ticking = 0;
    if (r.bar && code == 0) {
        sa.sa_handler = on_winch;
        sa.sa_flags = SA_RESTART;
        sigaction(SIGWINCH, &sa, &old_winch);
        r.cols = term_cols();
        ticking = pthread_create(&tick, NULL, ticker, &r) == 0;
    }
    r.t0 = now_s();
    int nth = b->jobs > 0 ? b->jobs : 1;
    if ((size_t)nth > r.n_order)
        nth = (int)r.n_order;
    pthread_t th[256];
    if (nth > 256)
        nth = 256;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    r.threads = nth > 0 && cores > nth ? (int)(cores / nth) : 1;
    int started = 0;
    for (int i = 1; code == 0 && i < nth; i++)
        if (pthread_create(&th[i], NULL, worker, &r) == 0)
            started = i;
        else
            break;
    if (code == 0 && nth > 0)
        worker(&r);
    for (int i = 1; i <= started; i++)
        pthread_join(th[i], NULL);
    int jobs_used = nth > 0 ? started + 1 : 0; /* the models converted at once */
    double secs = now_s() - r.t0;
    if (ticking) {
        pthread_mutex_lock(&r.lock);
        r.stop = 1;
        pthread_cond_signal(&r.tick);
        pthread_mutex_unlock(&r.lock);
        pthread_join(tick, NULL);
    }
    if (r.bar && code == 0) {
        draw_bar(&r); /* the final count */
        fputc('\n', stderr);
        sigaction(SIGWINCH, &old_winch, NULL);
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    size_t ok = r.ok + r.resumed;
    int64_t bytes_in = r.bytes_in + r.resumed_in, bytes_out = r.bytes_out + r.resumed_out;
    if (r.report) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "type", "summary");
        cJSON_AddNumberToObject(o, "models", (double)(r.done + r.resumed));
        cJSON_AddNumberToObject(o, "ok", (double)ok);
        cJSON_AddNumberToObject(o, "converted", (double)r.ok);
        cJSON_AddNumberToObject(o, "failed", (double)r.failed);
        cJSON_AddNumberToObject(o, "resumed", (double)r.resumed);
        cJSON_AddNumberToObject(o, "reconverted_options", (double)r.reconverted);
        cJSON_AddNumberToObject(o, "not_models", (double)not_models);
        cJSON_AddNumberToObject(o, "bytes_in", (double)bytes_in);
        cJSON_AddNumberToObject(o, "bytes_out", (double)bytes_out);
        cJSON_AddNumberToObject(o, "seconds", secs);
        cJSON_AddNumberToObject(o, "jobs", jobs_used);
        if (b->shard_n) {
            char sh[48];
            snprintf(sh, sizeof sh, "%d/%d", b->shard_k, b->shard_n);
            cJSON_AddStringToObject(o, "shard", sh);
        } else {
            cJSON_AddNullToObject(o, "shard");
        }
        cJSON_AddBoolToObject(o, "interrupted", g_signal != 0);
        char *s = cJSON_PrintUnformatted(o);
        if (s)
            fprintf(r.report, "%s\n", s);
        free(s);
        cJSON_Delete(o);
        fclose(r.report);
    }
    if (not_models > 10 && !b->copy_others && !b->quiet)
        fprintf(stderr, "modelshrink: %zu files skipped (not models)\n", not_models);
    if (r.n_fails) { /* they scrolled by above the bar: once more, together */
        fprintf(stderr, "modelshrink: %zu of %zu %s failed:\n", r.n_fails, r.done,
                msh_cli_plural((double)r.done, "model", "models"));
        for (size_t i = 0; i < r.n_fails; i++)
            print_failure(r.fails[i].path, r.fails[i].msg);
    }
    if (!b->quiet && (r.n_order > 1 || r.resumed || b->n > 1)) {
        static const char *names[4] = {"onnx", "pth", "safetensors", "hf"};
        char hi[32], ho[32], ra[16];
        printf("%-12s %8s %8s %12s %12s %8s\n", "format", "ok", "failed", "bytes in", "bytes out",
               "ratio");
        for (int f = 0; f < 4; f++) {
            if (!r.fmt_ok[f] && !r.fmt_failed[f])
                continue;
            msh_cli_human_bytes((double)r.fmt_in[f], hi, sizeof hi);
            msh_cli_human_bytes((double)r.fmt_out[f], ho, sizeof ho);
            if (r.fmt_out[f])
                snprintf(ra, sizeof ra, "%.2fx", (double)r.fmt_in[f] / (double)r.fmt_out[f]);
            else
                snprintf(ra, sizeof ra, "-");
            printf("%-12s %8lld %8lld %12s %12s %8s\n", names[f], (long long)r.fmt_ok[f],
                   (long long)r.fmt_failed[f], hi, ho, ra);
        }
        /* counts, then bytes and ratio over every model that is ok (resumed ones too), then
         * time and rate over what this run converted; none of them where they mean nothing */
        printf("total: %zu converted", r.ok);
        if (r.resumed)
            printf(", %zu resumed", r.resumed);
        printf(", %zu failed", r.failed);
        if (not_models)
            printf(", %zu %s", not_models,
                   msh_cli_plural((double)not_models, "not a model", "not models"));
        if (ok && bytes_out > 0) {
            msh_cli_human_bytes((double)bytes_in, hi, sizeof hi);
            msh_cli_human_bytes((double)bytes_out, ho, sizeof ho);
            printf(", %s -> %s (%.2fx)", hi, ho, (double)bytes_in / (double)bytes_out);
        }
        printf(", %.2f s", secs);
        if (r.ok && secs > 0) {
            msh_cli_human_bytes((double)r.bytes_in / secs, hi, sizeof hi);
            printf(", %s/s", hi);
        }
        if (r.reconverted)
            printf("; %zu converted again because %s options changed", r.reconverted,
                   msh_cli_plural((double)r.reconverted, "its", "their"));
        printf("\n");
    }
    fflush(stdout);
    for (size_t i = 0; i < r.n_fails; i++) {
        free(r.fails[i].path);
        free(r.fails[i].msg);
    }
    free(r.fails);
    for (size_t i = 0; i < n_data; i++)
        free(data[i]);
    free(data);
    for (size_t i = 0; i < n_prev; i++) {
        free(pv[i].rel);
        free(pv[i].opts);
    }
    free(pv);
    free(r.order);
    msh_cli_batch_free(b);
    pthread_cond_destroy(&r.tick);
    pthread_mutex_destroy(&r.lock);
    if (g_signal == SIGINT)
        return 130;
    if (g_signal == SIGTERM)
        return 143;
    return code ? code : (r.failed ? 1 : 0);
}

/* ---- report merge ---- */

typedef struct mrec {
    char *rel;
    char *line;
    size_t seq;
    cJSON *j;
} mrec;

static int cmp_mrec(const void *a, const void *b) {
    const mrec *x = a, *y = b;
    int c = strcmp(x->rel, y->rel);
    return c ? c : (x->seq < y->seq ? -1 : x->seq > y->seq);
}

int msh_cli_report_merge(int argc, char **argv) {
    const char *out = NULL;
    mrec *v = NULL;
    size_t n = 0, cap = 0, seq = 0;
    int64_t resumed_sum = 0, others_sum = 0, reconv_sum = 0; /* from the shards' summaries */
    cJSON *shards = cJSON_CreateArray();
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "-o") == 0 && i + 1 < argc) {
            out = argv[++i];
            continue;
        }
        FILE *f = fopen(argv[i], "r");
        if (!f) {
            fprintf(stderr, "modelshrink: %s: cannot read: %s\n", argv[i], strerror(errno));
            for (size_t k = 0; k < n; k++) {
                free(v[k].rel);
                free(v[k].line);
                cJSON_Delete(v[k].j);
            }
            free(v);
            cJSON_Delete(shards);
            return 2;
        }
        char *line = NULL;
        size_t lcap = 0;
        while (getline(&line, &lcap, f) > 0) {
            cJSON *j = cJSON_Parse(line);
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "type");
            const cJSON *rel = cJSON_GetObjectItemCaseSensitive(j, "rel");
            if (cJSON_IsString(t) && strcmp(t->valuestring, "summary") == 0) {
                resumed_sum += json_i64(j, "resumed");
                others_sum += json_i64(j, "not_models");
                reconv_sum += json_i64(j, "reconverted_options");
                const cJSON *sh = cJSON_GetObjectItemCaseSensitive(j, "shard");
                if (cJSON_IsString(sh))
                    cJSON_AddItemToArray(shards, cJSON_CreateString(sh->valuestring));
            }
            if (cJSON_IsString(t) && strcmp(t->valuestring, "model") == 0 && cJSON_IsString(rel)) {
                if (n == cap) {
                    cap = cap ? 2 * cap : 256;
                    mrec *p = realloc(v, cap * sizeof *p);
                    if (!p)
                        break;
                    v = p;
                }
                size_t ll = strlen(line);
                while (ll && (line[ll - 1] == '\n' || line[ll - 1] == '\r'))
                    line[--ll] = 0;
                /* the line itself is kept: re-printing would round its exact integers */
                v[n++] = (mrec){strdup(rel->valuestring), strdup(line), seq++, j};
                continue;
            }
            cJSON_Delete(j);
        }
        free(line);
        fclose(f);
    }
    if (n)
        qsort(v, n, sizeof *v, cmp_mrec);
    FILE *o = out ? fopen(out, "w") : stdout;
    if (!o) {
        fprintf(stderr, "modelshrink: %s: cannot write: %s\n", out, strerror(errno));
        return 1;
    }
    int64_t bin = 0, bout = 0;
    size_t models = 0, ok = 0, failed = 0;
    for (size_t i = 0; i < n; i++) {
        if (i + 1 < n && strcmp(v[i].rel, v[i + 1].rel) == 0)
            continue; /* the last record of each input wins */
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(v[i].j, "status");
        int is_ok = cJSON_IsString(st) && strcmp(st->valuestring, "ok") == 0;
        models++;
        ok += (size_t)is_ok;
        failed += (size_t)!is_ok;
        bin += (int64_t)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(v[i].j, "bytes_in"));
        bout +=
            (int64_t)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(v[i].j, "bytes_out"));
        if (v[i].line)
            fprintf(o, "%s\n", v[i].line);
    }
    cJSON *sum = cJSON_CreateObject();
    cJSON_AddStringToObject(sum, "type", "summary");
    cJSON_AddNumberToObject(sum, "models", (double)models);
    cJSON_AddNumberToObject(sum, "ok", (double)ok);
    cJSON_AddNumberToObject(sum, "failed", (double)failed);
    cJSON_AddNumberToObject(sum, "bytes_in", (double)bin);
    cJSON_AddNumberToObject(sum, "bytes_out", (double)bout);
    cJSON_AddNumberToObject(sum, "resumed", (double)resumed_sum);
    cJSON_AddNumberToObject(sum, "not_models", (double)others_sum);
    cJSON_AddNumberToObject(sum, "reconverted_options", (double)reconv_sum);
    cJSON_AddItemToObject(sum, "shards", shards);
    cJSON_AddBoolToObject(sum, "merged", 1);
    char *s = cJSON_PrintUnformatted(sum);
    if (s)
        fprintf(o, "%s\n", s);
    free(s);
    cJSON_Delete(sum);
    if (out)
        fclose(o);
    char hi[32], ho[32];
    msh_cli_human_bytes((double)bin, hi, sizeof hi);
    msh_cli_human_bytes((double)bout, ho, sizeof ho);
    fprintf(stderr, "merged: %zu %s, %zu ok, %zu failed, %s -> %s\n", models,
            msh_cli_plural((double)models, "model", "models"), ok, failed, hi, ho);
    for (size_t i = 0; i < n; i++) {
        free(v[i].rel);
        free(v[i].line);
        cJSON_Delete(v[i].j);
    }
    free(v);
    return failed ? 1 : 0;
}
