#include "batch.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t g_signal;

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

void msh_cli_print_line(const char *in, const char *out, const msh_convert_options *opt,
                        const msh_convert_result *r, const char *skipped) {
    printf("%s -> %s: %lld -> %lld bytes (%.2fx)", in, out, (long long)r->bytes_in,
           (long long)r->bytes_out,
           r->bytes_out ? (double)r->bytes_in / (double)r->bytes_out : 0.0);
    if (strcmp(r->format, "hf") == 0) {
        printf(", %lld -> %lld shards", (long long)r->shards_in, (long long)r->shards_out);
        if (r->tied_tensors)
            printf(", %lld tied tensors written once", (long long)r->tied_tensors);
    }
    if (r->state_dict[0])
        printf(", state dict %s", r->state_dict);
    if (r->pruned_nodes || r->pruned_tensors)
        printf(", pruned %lld nodes, %lld tensors", (long long)r->pruned_nodes,
               (long long)r->pruned_tensors);
    if (r->dedup_merged)
        printf(", dedup merged %lld tensors", (long long)r->dedup_merged);
    if (r->dedup_unshared && strcmp(r->format, "hf") == 0)
        printf(", %lld identical tensors kept as copies (%lld bytes; safetensors cannot share "
               "them)",
               (long long)r->dedup_unshared, (long long)r->dedup_unshared_bytes);
    else if (r->dedup_unshared)
        printf(", %lld identical tensors kept as copies (a .pth output would save %lld bytes)",
               (long long)r->dedup_unshared, (long long)r->dedup_unshared_bytes);
    if (opt->int8) {
        printf(", int8: %lld tensors", (long long)r->int8_tensors);
        if (r->int8_why[0])
            printf(": %s", r->int8_why);
    }
    if (opt->float_type) {
        int f16 = opt->float_type == MSH_FLOAT_FP16;
        printf(", %s%s: %lld tensors", f16 ? "fp16" : "bf16", opt->storage_only ? " storage" : "",
               (long long)r->float_tensors);
        if (r->float_why[0])
            printf(": %s", r->float_why);
        if (f16 && r->float_subnormal)
            printf(", %llu values subnormal", (unsigned long long)r->float_subnormal);
        if (f16 && r->float_clamped)
            printf(", %llu values clamped", (unsigned long long)r->float_clamped);
        if (r->float_kept_range) {
            int64_t below = r->float_kept_range - r->float_kept_above;
            printf(", kept fp32: %lld tensors", (long long)r->float_kept_range);
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
            printf(", kept fp32 by --keep-fp32: %lld tensors", (long long)r->float_kept_user);
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
    int ok;
    int64_t size, mtime_ns;
} prev;

static int cmp_prev(const void *a, const void *b) {
    return strcmp(((const prev *)a)->rel, ((const prev *)b)->rel);
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
                if (!p)
                    break;
                v = p;
            }
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "status");
            v[*n].rel = strdup(rel->valuestring);
            v[*n].ok = cJSON_IsString(st) && strcmp(st->valuestring, "ok") == 0;
            v[*n].size =
                (int64_t)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(j, "input_size"));
            v[*n].mtime_ns = (int64_t)cJSON_GetNumberValue(
                cJSON_GetObjectItemCaseSensitive(j, "input_mtime_ns"));
            (*n)++;
        }
        cJSON_Delete(j);
    }
    free(line);
    fclose(f);
    /* by input; the resume check then looks at every record of an input */
    if (*n) /* a report cut before its first record holds none */
        qsort(v, *n, sizeof *v, cmp_prev);
    return v;
}

/* The first record of `rel`. An input counts as done only when every record for it says ok
 * for this size and time, so a later failure makes it redo. */
static const prev *find_prev(const prev *v, size_t n, const char *rel) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(v[mid].rel, rel) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && strcmp(v[lo].rel, rel) == 0 ? &v[lo] : NULL;
}

/* ---- the run ---- */

typedef struct run {
    msh_cli_batch *b;
    size_t *order; /* model jobs to do, largest first */
    size_t n_order, next;
    pthread_mutex_t lock;
    FILE *report;
    int tty;
    size_t done, ok, failed;
    int64_t bytes_in, bytes_out, bytes_done, bytes_total;
    /* per format (onnx, pth, safetensors, hf): models ok, failed, bytes in and out */
    int64_t fmt_ok[4], fmt_failed[4], fmt_in[4], fmt_out[4];
    double t0;
    int threads; /* engine threads per model: the cores shared among the parallel models */
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
    char *s = cJSON_PrintUnformatted(o);
    if (s) {
        fprintf(r->report, "%s\n", s);
        fflush(r->report); /* a kill loses at most the line being written */
    }
    free(s);
    cJSON_Delete(o);
}

static void fmt_eta(double s, char *buf, size_t cap) {
    if (s < 0 || s > 360000)
        snprintf(buf, cap, "--:--");
    else
        snprintf(buf, cap, "%02d:%02d:%02d", (int)s / 3600, (int)s / 60 % 60, (int)s % 60);
}

static void progress(run *r) {
    double el = now_s() - r->t0, rate = el > 0 ? (double)r->bytes_done / el : 0;
    char eta[32];
    fmt_eta(rate > 0 ? (double)(r->bytes_total - r->bytes_done) / rate : -1, eta, sizeof eta);
    fprintf(stderr, "\r[%zu/%zu] %.1f of %.1f MB, %.1f MB/s, ETA %s, %zu failed\033[K", r->done,
            r->n_order, (double)r->bytes_done / 1e6, (double)r->bytes_total / 1e6, rate / 1e6, eta,
            r->failed);
    fflush(stderr);
}

static void *worker(void *arg) {
    run *r = arg;
    msh_cli_batch *b = r->b;
    for (;;) {
        pthread_mutex_lock(&r->lock);
        size_t k = r->next < r->n_order && !g_signal ? r->order[r->next++] : (size_t)-1;
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
        msh_convert_options opt = *b->opt; /* less the given options this format does not take */
        if (!opt.threads)
            opt.threads = r->threads;
        for (unsigned o = 0; o < 32; o++)
            if ((j->skip >> o) & 1u)
                msh_cli_clear_option(&opt, (msh_option)o);
        char skipped[256];
        skipped_flags(b, j, skipped, sizeof skipped);
        if (!mkdirs_for(j->out))
            st = MSH_ERR_IO,
            snprintf(err.msg, sizeof err.msg, "%s: cannot create the folder of %s", j->in, j->out);
        else
            st = msh_convert_file(j->in, j->out, &opt, &res, &err);
        double secs = now_s() - t0;
        pthread_mutex_lock(&r->lock);
        if (st == MSH_ERR_CANCELLED) { /* stopped by a signal: redone by --resume */
            pthread_mutex_unlock(&r->lock);
            continue;
        }
        r->done++;
        r->bytes_done += j->size;
        int fi = strcmp(res.format, "pth") == 0           ? 1
                 : strcmp(res.format, "safetensors") == 0 ? 2
                 : strcmp(res.format, "hf") == 0          ? 3
                                                          : 0;
        if (!res.format[0]) {
            size_t ln = strlen(j->in);
            fi = j->folder                                                 ? 3
                 : ln > 5 && strcmp(j->in + ln - 5, ".onnx") == 0          ? 0
                 : ln > 12 && strcmp(j->in + ln - 12, ".safetensors") == 0 ? 2
                                                                           : 1;
        }
        if (st == MSH_OK) {
            r->fmt_ok[fi]++;
            r->fmt_in[fi] += res.bytes_in;
            r->fmt_out[fi] += res.bytes_out;
        } else {
            r->fmt_failed[fi]++;
        }
        if (st == MSH_OK) {
            r->ok++;
            r->bytes_in += res.bytes_in;
            r->bytes_out += res.bytes_out;
        } else {
            r->failed++;
        }
        record(r, j, st, &res, err.msg, secs);
        if (st != MSH_OK) {
            if (r->tty && !b->quiet)
                fprintf(stderr, "\r\033[K");
            fprintf(stderr, "modelshrink: %s\n", err.msg);
        } else if (!b->quiet && !r->tty) {
            msh_cli_print_line(j->in, j->out, &opt, &res, skipped);
            fflush(stdout);
        }
        if (res.note[0])
            fprintf(stderr, "modelshrink: %s: warning: %s\n", j->in, res.note);
        if (!b->quiet && r->tty)
            progress(r);
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

static uint64_t fnv1a(const char *s) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 0x100000001b3ULL;
    return h;
}

int msh_cli_batch_run(msh_cli_batch *b) {
    run r;
    memset(&r, 0, sizeof r);
    r.b = b;
    pthread_mutex_init(&r.lock, NULL);
    r.tty = isatty(2);
    size_t not_models = 0, resumed = 0;
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
            } else if (not_models <= 10) {
                fprintf(stderr, "modelshrink: %s: skipped (not a model)%s\n", j->in,
                        not_models == 10 ? "; further ones are counted, not listed" : "");
            }
            continue;
        }
        if (pv) {
            const prev *p = find_prev(pv, n_prev, j->rel);
            int all_ok = p != NULL;
            /* the report's times went through a JSON reader's doubles: within a microsecond */
            for (; p && p < pv + n_prev && strcmp(p->rel, j->rel) == 0; p++)
                all_ok &= p->ok && p->size == j->size && llabs(p->mtime_ns - j->mtime_ns) <= 1000;
            if (all_ok && access(j->out, F_OK) == 0) {
                resumed++;
                continue;
            }
        }
        r.order[r.n_order++] = i;
        r.bytes_total += j->size;
    }
    g_sort_jobs = b->v;
    if (r.order)
        qsort(r.order, r.n_order, sizeof *r.order, cmp_job); /* largest first: even finish */
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    r.t0 = now_s();
    int nth = b->jobs > 0 ? b->jobs : 1;
    if ((size_t)nth > r.n_order)
        nth = r.n_order ? (int)r.n_order : 1;
    pthread_t th[256];
    if (nth > 256)
        nth = 256;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    r.threads = cores > nth ? (int)(cores / nth) : 1;
    int started = 0;
    for (int i = 1; code == 0 && i < nth; i++)
        if (pthread_create(&th[i], NULL, worker, &r) == 0)
            started = i;
        else
            break;
    if (code == 0)
        worker(&r);
    for (int i = 1; i <= started; i++)
        pthread_join(th[i], NULL);
    double secs = now_s() - r.t0;
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (r.tty && !b->quiet && r.n_order)
        fprintf(stderr, "\n");
    if (r.report) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "type", "summary");
        cJSON_AddNumberToObject(o, "models", (double)(r.done + resumed));
        cJSON_AddNumberToObject(o, "ok", (double)r.ok);
        cJSON_AddNumberToObject(o, "failed", (double)r.failed);
        cJSON_AddNumberToObject(o, "resumed", (double)resumed);
        cJSON_AddNumberToObject(o, "not_models", (double)not_models);
        cJSON_AddNumberToObject(o, "bytes_in", (double)r.bytes_in);
        cJSON_AddNumberToObject(o, "bytes_out", (double)r.bytes_out);
        cJSON_AddNumberToObject(o, "seconds", secs);
        cJSON_AddNumberToObject(o, "jobs", nth);
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
    if (not_models > 10 && !b->copy_others)
        fprintf(stderr, "modelshrink: %zu files skipped (not models)\n", not_models);
    if (!b->quiet && (r.n_order > 1 || resumed || b->n > 1)) {
        static const char *names[4] = {"onnx", "pth", "safetensors", "hf"};
        printf("%-12s %8s %8s %14s %14s %8s\n", "format", "ok", "failed", "bytes in", "bytes out",
               "ratio");
        for (int f = 0; f < 4; f++)
            if (r.fmt_ok[f] || r.fmt_failed[f])
                printf("%-12s %8lld %8lld %14lld %14lld %7.2fx\n", names[f], (long long)r.fmt_ok[f],
                       (long long)r.fmt_failed[f], (long long)r.fmt_in[f], (long long)r.fmt_out[f],
                       r.fmt_out[f] ? (double)r.fmt_in[f] / (double)r.fmt_out[f] : 0.0);
    }
    if (!b->quiet && (r.n_order > 1 || resumed || b->n > 1))
        printf("total: %zu converted, %zu failed, %zu resumed, %zu not models, %lld -> %lld bytes "
               "(%.2fx), %.2f s, %.1f MB/s\n",
               r.ok, r.failed, resumed, not_models, (long long)r.bytes_in, (long long)r.bytes_out,
               r.bytes_out ? (double)r.bytes_in / (double)r.bytes_out : 0.0, secs,
               secs > 0 ? (double)r.bytes_done / secs / 1e6 : 0.0);
    fflush(stdout);
    for (size_t i = 0; i < n_data; i++)
        free(data[i]);
    free(data);
    for (size_t i = 0; i < n_prev; i++)
        free(pv[i].rel);
    free(pv);
    free(r.order);
    msh_cli_batch_free(b);
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
    int64_t resumed_sum = 0, others_sum = 0; /* from the shards' summaries */
    cJSON *shards = cJSON_CreateArray();
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "-o") == 0 && i + 1 < argc) {
            out = argv[++i];
            continue;
        }
        FILE *f = fopen(argv[i], "r");
        if (!f) {
            fprintf(stderr, "modelshrink: %s: cannot read: %s\n", argv[i], strerror(errno));
            return 2;
        }
        char *line = NULL;
        size_t lcap = 0;
        while (getline(&line, &lcap, f) > 0) {
            cJSON *j = cJSON_Parse(line);
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "type");
            const cJSON *rel = cJSON_GetObjectItemCaseSensitive(j, "rel");
            if (cJSON_IsString(t) && strcmp(t->valuestring, "summary") == 0) {
                resumed_sum +=
                    (int64_t)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(j, "resumed"));
                others_sum += (int64_t)cJSON_GetNumberValue(
                    cJSON_GetObjectItemCaseSensitive(j, "not_models"));
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
    cJSON_AddItemToObject(sum, "shards", shards);
    cJSON_AddBoolToObject(sum, "merged", 1);
    char *s = cJSON_PrintUnformatted(sum);
    if (s)
        fprintf(o, "%s\n", s);
    free(s);
    cJSON_Delete(sum);
    if (out)
        fclose(o);
    fprintf(stderr, "merged: %zu models, %zu ok, %zu failed, %lld -> %lld bytes\n", models, ok,
            failed, (long long)bin, (long long)bout);
    for (size_t i = 0; i < n; i++) {
        free(v[i].rel);
        free(v[i].line);
        cJSON_Delete(v[i].j);
    }
    free(v);
    return failed ? 1 : 0;
}
