/* The public API as a program that links the library sees it (issue 19):
 *   threads  4 conversions at once (ONNX, safetensors, a training .pth, a model folder) sharing
 *            one options struct give the bytes of the same conversions one after the other;
 *            the progress callback runs on each caller's thread, with sane figures
 *   cancel   a progress callback that returns non-zero, a cancel token (requested from the
 *            callback, from another thread, before the call) and msh_cancel_request each stop
 *            the conversion with MSH_ERR_CANCELLED and leave no file behind
 *   sizes    msh_convert_options and msh_convert_result of an older (smaller) caller: unknown
 *            options take their defaults, no result byte past its size is written; sizes that
 *            no version has are MSH_ERR_USAGE
 *   inspect  msh_inspect's struct says what msh_inspect_file's JSON says, on every fixture
 *   fixtures the input of the README example (tests/api/readme_example.c)
 *   readme   README.md's "Library" block and the header's example are readme_example.c
 * Usage: test_api CASE WORK_DIR SOURCE_DIR */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../unit/test_util.h"
#include "common/msh_dtype.h"

#define MIB ((int64_t)1 << 20)

static const char *g_src; /* the source tree */

/* ---- files ---- */

static char *cat(const char *a, const char *b) {
    char *p = malloc(strlen(a) + strlen(b) + 2);
    sprintf(p, "%s/%s", a, b);
    return p;
}

static void mkdir_p(const char *path) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            mkdir(buf, 0777);
            *p = '/';
        }
    mkdir(buf, 0777);
}

/* Remove a folder's contents (one level of subfolders is enough here). */
static void clear_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        char *p = cat(dir, de->d_name);
        if (unlink(p) != 0) {
            clear_dir(p);
            rmdir(p);
        }
        free(p);
    }
    closedir(d);
}

static void fresh_dir(const char *dir) {
    mkdir_p(dir);
    clear_dir(dir);
}

/* The names in a folder, one per line (sorted), or "" when empty. */
static void list_dir(const char *dir, char *out, size_t cap) {
    out[0] = 0;
    DIR *d = opendir(dir);
    if (!d)
        return;
    char names[64][256];
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < 64)
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            snprintf(names[n++], sizeof names[0], "%s", de->d_name);
    closedir(d);
    for (int i = 0; i < n; i++)
        for (int k = i + 1; k < n; k++)
            if (strcmp(names[k], names[i]) < 0) {
                char t[256];
                memcpy(t, names[i], sizeof t);
                memcpy(names[i], names[k], sizeof t);
                memcpy(names[k], t, sizeof t);
            }
    for (int i = 0; i < n; i++)
        snprintf(out + strlen(out), cap - strlen(out), "%s%s", i ? " " : "", names[i]);
}

static int is_dir(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* 1 when two files (or two folders, file by file) hold the same bytes. */
static int same_bytes(const char *a, const char *b) {
    if (is_dir(a)) {
        char la[4096], lb[4096];
        list_dir(a, la, sizeof la);
        list_dir(b, lb, sizeof lb);
        if (strcmp(la, lb) != 0 || !*la)
            return 0;
        int same = 1;
        for (char *tok = la; same && *tok;) {
            size_t n = strcspn(tok, " ");
            char name[256];
            snprintf(name, sizeof name, "%.*s", (int)n, tok);
            char *pa = cat(a, name), *pb = cat(b, name);
            same = same_bytes(pa, pb);
            free(pa);
            free(pb);
            tok += n;
            if (*tok)
                tok++;
        }
        return same;
    }
    size_t na, nb;
    uint8_t *x = read_file(a, &na), *y = read_file(b, &nb);
    int same = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}

static void copy_file(const char *from, const char *to) {
    size_t n;
    uint8_t *b = read_file(from, &n);
    CHECK(b != NULL, "read %s", from);
    if (b)
        write_bytes(to, b, n);
    free(b);
}

/* ---- fixtures ---- */

/* FP32 values that FP16 holds, different per seed. */
static void fill(uint8_t *p, int64_t n, int seed) {
    for (int64_t i = 0; i < n; i++) {
        float v = (float)((i * 7 + seed * 13) % 1000) * 0.01f - 5.0f;
        memcpy(p + 4 * i, &v, 4);
    }
}

static Onnx__ValueInfoProto *vi_f32(const char *name, int64_t n) {
    Onnx__ValueInfoProto *v = mk_vi(name);
    Onnx__TypeProto *t = malloc(sizeof *t);
    onnx__type_proto__init(t);
    Onnx__TypeProto__Tensor *tt = malloc(sizeof *tt);
    onnx__type_proto__tensor__init(tt);
    tt->has_elem_type = 1;
    tt->elem_type = 1;
    Onnx__TensorShapeProto *sh = malloc(sizeof *sh);
    onnx__tensor_shape_proto__init(sh);
    Onnx__TensorShapeProto__Dimension *d = malloc(sizeof *d);
    onnx__tensor_shape_proto__dimension__init(d);
    d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
    d->dim_value = n;
    PUSH(sh->dim, sh->n_dim, d);
    tt->shape = sh;
    t->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    t->tensor_type = tt;
    v->type = t;
    return v;
}

/* y = x + w0 + ... + w{n-1} + `dup` copies of w0, each weight `elems` FP32 values. */
static void make_onnx(const char *path, int n, int64_t elems, int dup) {
    Onnx__GraphProto *g = mk_graph("main");
    PUSH(g->input, g->n_input, vi_f32("x", elems));
    PUSH(g->output, g->n_output, vi_f32("y", elems));
    char prev[32] = "x", name[32], out[32];
    for (int i = 0; i < n + dup; i++) {
        if (i < n)
            snprintf(name, sizeof name, "w%d", i);
        else
            snprintf(name, sizeof name, "w0_copy%d", i - n);
        Onnx__TensorProto *t = mk_tensor(name, elems, 0.0f, 0);
        fill(t->raw_data.data, elems, i < n ? i : 0);
        PUSH(g->initializer, g->n_initializer, t);
        snprintf(out, sizeof out, i + 1 == n + dup ? "y" : "a%d", i);
        PUSH(g->node, g->n_node, mk_node("Add", prev, name, out));
        snprintf(prev, sizeof prev, "%s", out);
    }
    Onnx__ModelProto *m = mk_model(g);
    size_t len;
    uint8_t *bytes = pack(&m->base, &len);
    protobuf_c_message_free_unpacked(&m->base, NULL);
    write_bytes(path, bytes, len);
    free(bytes);
}

/* A safetensors file: n FP32 tensors "layer.<i>.weight" of `elems` values, and `dup` tensors
 * "layer.copy<k>.weight" identical to layer.0. */
static void make_safetensors(const char *path, int n, int64_t elems, int dup) {
    int total = n + dup;
    char *h = malloc(256 * (size_t)total + 16);
    size_t hl = 0;
    h[hl++] = '{';
    int64_t nb = elems * 4;
    for (int i = 0; i < total; i++) {
        char name[32];
        if (i < n)
            snprintf(name, sizeof name, "layer.%d.weight", i);
        else
            snprintf(name, sizeof name, "layer.copy%d.weight", i - n);
        hl += (size_t)sprintf(h + hl,
                              "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld],"
                              "\"data_offsets\":[%lld,%lld]}",
                              i ? "," : "", name, (long long)elems, (long long)(i * nb),
                              (long long)((i + 1) * nb));
    }
    h[hl++] = '}';
    while ((hl + 8) % 8)
        h[hl++] = ' ';
    FILE *f = fopen(path, "wb");
    uint8_t len8[8];
    msh_store_le64(len8, hl);
    fwrite(len8, 1, 8, f);
    fwrite(h, 1, hl, f);
    uint8_t *d = malloc((size_t)nb);
    for (int i = 0; i < total; i++) {
        fill(d, elems, i < n ? i + 100 : 100);
        fwrite(d, 1, (size_t)nb, f);
    }
    fclose(f);
    free(d);
    free(h);
}

static void make_hf(const char *dir, int n, int64_t elems, int dup) {
    mkdir_p(dir);
    char *st = cat(dir, "model.safetensors"), *cfg = cat(dir, "config.json");
    make_safetensors(st, n, elems, dup);
    const char *json = "{\"model_type\": \"test\"}\n";
    write_bytes(cfg, (const uint8_t *)json, strlen(json));
    free(st);
    free(cfg);
}

/* The four inputs of the thread and cancel cases, in `dir`: a.onnx (48 MiB, 4 copies of a
 * weight: a dedup scan of 20 MiB), b.safetensors (20 MiB, a copy), c.pth (a ResNet with Adam
 * state), d/ (a model folder, 36 MiB, 4 copies). */
static void make_inputs(const char *dir, char *paths[4]) {
    mkdir_p(dir);
    paths[0] = cat(dir, "a.onnx");
    paths[1] = cat(dir, "b.safetensors");
    paths[2] = cat(dir, "c.pth");
    paths[3] = cat(dir, "d");
    make_onnx(paths[0], 8, MIB, 4);
    make_safetensors(paths[1], 4, MIB, 1);
    char *pth = cat(g_src, "tests/fixtures/pth/resnet_adam.pth");
    copy_file(pth, paths[2]);
    free(pth);
    make_hf(paths[3], 5, MIB, 4);
}

static const char *out_name[4] = {"a.onnx", "b.safetensors", "c.safetensors", "d"};

/* ---- progress ---- */

/* What one conversion's progress calls looked like. */
typedef struct plog {
    const char *path;
    pthread_t thread;
    int calls, wrong_thread, bad;
    char why[256];
    int in_phase; /* a phase has started and not ended */
    int phase, phases, ended, writes;
    int64_t last_done, max_gap;
    /* actions */
    int stop_phase;          /* return non-zero in this phase ... */
    int64_t stop_bytes;      /* ... once bytes_done reaches this */
    msh_cancel_token *token; /* request it (and return 0) at stop_phase/stop_bytes instead */
    atomic_int *point;       /* or set this (for another thread) ... */
    atomic_int *wait_for;    /* ... and wait until that thread sets this, then return 0 */
    int requested, calls_after;
} plog;

static void bad(plog *L, const char *what, const msh_progress *p) {
    if (!L->bad++)
        snprintf(L->why, sizeof L->why, "%s (phase %d, %lld/%lld bytes, %lld/%lld tensors)", what,
                 p->phase, (long long)p->bytes_done, (long long)p->bytes_total,
                 (long long)p->tensors_done, (long long)p->tensors_total);
}

static int log_progress(plog *L, const msh_progress *p) {
    L->calls++;
    if (L->requested)
        L->calls_after++;
    if (!pthread_equal(pthread_self(), L->thread))
        L->wrong_thread++;
    if (p->struct_size != sizeof *p || !MSH_STRUCT_HAS(p, msh_progress, tensors_total))
        bad(L, "struct_size", p);
    if (strcmp(p->path, L->path) != 0)
        bad(L, "path", p);
    if (p->phase != MSH_PHASE_SCAN && p->phase != MSH_PHASE_WRITE)
        bad(L, "phase", p);
    if (p->bytes_done < 0 || p->bytes_done > p->bytes_total || p->tensors_done < 0 ||
        p->tensors_done > p->tensors_total)
        bad(L, "figures out of range", p);
    if (p->bytes_done == 0 && p->tensors_done == 0) { /* a phase starts */
        if (L->in_phase)
            bad(L, "a phase started before the last one ended", p);
        L->in_phase = 1;
        L->phase = p->phase;
        L->phases++;
        L->writes += p->phase == MSH_PHASE_WRITE;
    } else {
        if (!L->in_phase || p->phase != L->phase)
            bad(L, "a report outside its phase", p);
        int64_t gap = p->bytes_done - L->last_done;
        if (gap < 0)
            bad(L, "bytes_done went back", p);
        if (gap > L->max_gap)
            L->max_gap = gap;
    }
    L->last_done = p->bytes_done;
    if (p->bytes_done == p->bytes_total && p->tensors_done == p->tensors_total && L->in_phase) {
        L->in_phase = 0;
        L->ended++;
    }
    if (L->stop_phase && p->phase == L->stop_phase && p->bytes_done >= L->stop_bytes &&
        !L->requested) {
        L->requested = 1;
        if (L->point) { /* the request comes from another thread: wait until it is made */
            atomic_store(L->point, 1);
            while (!atomic_load(L->wait_for))
                nanosleep(&(struct timespec){0, 1000000}, NULL);
            return 0;
        }
        if (L->token) {
            msh_cancel_token_request(L->token);
            return 0;
        }
        return 1;
    }
    return 0;
}

static int on_progress(void *user, const msh_progress *p) {
    return log_progress(user, p);
}

/* The logs of concurrent conversions, found by the input's path. */
typedef struct plogs {
    plog v[4];
} plogs;

static int on_progress_many(void *user, const msh_progress *p) {
    plogs *ls = user;
    for (int i = 0; i < 4; i++)
        if (strcmp(ls->v[i].path, p->path) == 0)
            return log_progress(&ls->v[i], p);
    return 1;
}

/* A finished conversion's log: every phase ended, reports at most 16 MiB apart (plus a piece),
 * at least one write phase. */
static void check_log(const plog *L, const char *what) {
    CHECK(L->bad == 0, "%s: progress: %s", what, L->why);
    CHECK(L->wrong_thread == 0, "%s: progress called on another thread %d times", what,
          L->wrong_thread);
    CHECK(L->calls >= 2 && L->phases >= 1 && L->ended == L->phases && !L->in_phase,
          "%s: progress: %d calls, %d phases, %d ended", what, L->calls, L->phases, L->ended);
    CHECK(L->writes >= 1, "%s: no write phase", what);
    CHECK(L->max_gap <= 16 * MIB, "%s: progress reports %lld bytes apart", what,
          (long long)L->max_gap);
}

/* ---- threads ---- */

typedef struct job {
    const char *in;
    char *out;
    const msh_convert_options *opt;
    plog *log;
    msh_status st;
    msh_error err;
    char *json; /* msh_inspect_file of the input, in the same thread */
    msh_status ist;
    char device[8];
} job;

static void *run_job(void *arg) {
    job *j = arg;
    if (j->log)
        j->log->thread = pthread_self();
    msh_convert_result res;
    j->st = msh_convert_file(j->in, j->out, j->opt, &res, &j->err);
    memcpy(j->device, res.device, sizeof j->device);
    msh_error e;
    j->ist = msh_inspect_file(j->in, &j->json, &e);
    return NULL;
}

static int case_threads(const char *work) {
    char *in_dir = cat(work, "in"), *seq = cat(work, "seq"), *par = cat(work, "par");
    fresh_dir(work);
    char *in[4];
    make_inputs(in_dir, in);
    mkdir_p(seq);
    mkdir_p(par);
    plogs logs;
    memset(&logs, 0, sizeof logs);
    msh_convert_options opt; /* one struct for all, read by 4 threads at once */
    msh_convert_options_init(&opt);
    opt.float_type = MSH_FLOAT_FP16;
    opt.threads = 2;
    opt.progress = on_progress_many;
    opt.progress_user = &logs;
    job seqj[4], parj[4];
    for (int i = 0; i < 4; i++) {
        logs.v[i].path = in[i];
        seqj[i] = (job){
            in[i], cat(seq, out_name[i]), &opt, &logs.v[i], MSH_OK, {0, ""}, NULL, MSH_OK, ""};
        run_job(&seqj[i]);
        CHECK(seqj[i].st == MSH_OK, "sequential %s: %s", in[i], seqj[i].err.msg);
        CHECK(seqj[i].ist == MSH_OK, "inspect %s", in[i]);
        check_log(&logs.v[i], in[i]);
        printf("%s: %d progress calls, %d phases (%d writes), reports at most %lld bytes apart\n",
               in[i], logs.v[i].calls, logs.v[i].phases, logs.v[i].writes,
               (long long)logs.v[i].max_gap);
    }
    /* twice on the CPU; then on the GPU when there is one (or the test device stands in: the
     * api_threads_test_device test), whose pieces run through the pool of CUDA backends and
     * give the CPU's bytes */
    int rounds = msh_cuda_device_count() > 0 ? 3 : 2;
    for (int round = 0; round < rounds; round++) {
        if (round == 2) {
            opt.device = MSH_DEVICE_CUDA;
            opt.staging_mib = 4; /* pieces of 4 MiB: progress stays 16 MiB apart */
            printf("round 3 on the GPU\n");
        }
        memset(&logs, 0, sizeof logs);
        clear_dir(par);
        pthread_t th[4];
        for (int i = 0; i < 4; i++) {
            logs.v[i].path = in[i];
            parj[i] = (job){
                in[i], cat(par, out_name[i]), &opt, &logs.v[i], MSH_OK, {0, ""}, NULL, MSH_OK, ""};
        }
        for (int i = 0; i < 4; i++)
            CHECK(pthread_create(&th[i], NULL, run_job, &parj[i]) == 0, "pthread_create");
        for (int i = 0; i < 4; i++)
            pthread_join(th[i], NULL);
        for (int i = 0; i < 4; i++) {
            CHECK(parj[i].st == MSH_OK, "parallel %s: %s", in[i], parj[i].err.msg);
            CHECK((strcmp(parj[i].device, "cpu") == 0) == (round < 2), "round %d: %s on %s", round,
                  in[i], parj[i].device); /* the GPU is "cuda", the test device "test" */
            CHECK(same_bytes(seqj[i].out, parj[i].out),
                  "round %d: %s converted in parallel differs from the sequential output", round,
                  in[i]);
            CHECK(parj[i].json && seqj[i].json && strcmp(parj[i].json, seqj[i].json) == 0,
                  "round %d: %s inspected in parallel differs", round, in[i]);
            check_log(&logs.v[i], in[i]);
            free(parj[i].out);
            free(parj[i].json);
        }
    }
    char left[4096];
    list_dir(par, left, sizeof left);
    CHECK(strcmp(left, "a.onnx b.safetensors c.safetensors d") == 0, "par/ holds: %s", left);
    for (int i = 0; i < 4; i++) {
        free(seqj[i].out);
        free(seqj[i].json);
        free(in[i]);
    }
    free(in_dir);
    free(seq);
    free(par);
    return fails;
}

/* ---- cancel ---- */

typedef struct requester {
    msh_cancel_token *token;
    atomic_int point; /* the conversion's callback is at the point to stop */
    atomic_int done;  /* requested (or given up: the conversion ended) */
} requester;

static void *request_later(void *arg) {
    requester *q = arg;
    while (!atomic_load(&q->done) && !atomic_load(&q->point))
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    msh_cancel_token_request(q->token);
    atomic_store(&q->done, 1);
    return NULL;
}

static int case_cancel(const char *work) {
    char *in_dir = cat(work, "in"), *out = cat(work, "out");
    fresh_dir(work);
    char *in[4];
    make_inputs(in_dir, in);
    char inputs_before[4096];
    list_dir(in_dir, inputs_before, sizeof inputs_before);
    msh_cancel_token *tok = NULL;
    msh_error e;
    CHECK(msh_cancel_token_create(&tok, &e) == MSH_OK && tok, "token: %s", e.msg);
    CHECK(!msh_cancel_token_requested(tok), "a new token is not requested");

    /* 1. the callback returns non-zero: in the write phase of each format, and in a scan */
    struct {
        int input, phase;
        int64_t at;
    } where[] = {{0, MSH_PHASE_WRITE, 1},        {0, MSH_PHASE_WRITE, 20 * MIB},
                 {0, MSH_PHASE_SCAN, 1},         {1, MSH_PHASE_WRITE, 1},
                 {2, MSH_PHASE_WRITE, 0},        {3, MSH_PHASE_WRITE, 1},
                 {3, MSH_PHASE_WRITE, 16 * MIB}, {3, MSH_PHASE_SCAN, 0}};
    for (size_t w = 0; w < sizeof where / sizeof where[0]; w++) {
        fresh_dir(out);
        int i = where[w].input;
        char *o = cat(out, out_name[i]);
        plog L;
        memset(&L, 0, sizeof L);
        L.path = in[i];
        L.thread = pthread_self();
        L.stop_phase = where[w].phase;
        L.stop_bytes = where[w].at;
        msh_convert_options opt;
        msh_convert_options_init(&opt);
        opt.float_type = MSH_FLOAT_BF16;
        opt.progress = on_progress;
        opt.progress_user = &L;
        msh_convert_result res;
        msh_status st = msh_convert_file(in[i], o, &opt, &res, &e);
        char left[4096];
        list_dir(out, left, sizeof left);
        CHECK(st == MSH_ERR_CANCELLED, "case %zu: %s: %s, want MSH_ERR_CANCELLED (%s)", w, in[i],
              msh_status_name(st), e.msg);
        CHECK(st != MSH_ERR_CANCELLED || strstr(e.msg, "progress callback"), "case %zu: %s", w,
              e.msg);
        CHECK(!*left, "case %zu: cancelled %s left behind: %s", w, in[i], left);
        CHECK(L.bad == 0, "case %zu: %s", w, L.why);
        free(o);
    }

    /* 2. a token requested from the callback: no piece after it (the callback is not called
     * again), nothing left */
    for (int i = 0; i < 4; i += 3) {
        fresh_dir(out);
        char *o = cat(out, out_name[i]);
        msh_cancel_token_reset(tok);
        plog L;
        memset(&L, 0, sizeof L);
        L.path = in[i];
        L.thread = pthread_self();
        L.stop_phase = MSH_PHASE_WRITE;
        L.stop_bytes = 16 * MIB;
        L.token = tok;
        msh_convert_options opt;
        msh_convert_options_init(&opt);
        opt.progress = on_progress;
        opt.progress_user = &L;
        opt.cancel = tok;
        opt.threads = 3;
        msh_convert_result res;
        msh_status st = msh_convert_file(in[i], o, &opt, &res, &e);
        char left[4096];
        list_dir(out, left, sizeof left);
        CHECK(L.requested, "%s: the write phase never reached 16 MiB", in[i]);
        CHECK(st == MSH_ERR_CANCELLED, "token from the callback: %s: %s (%s)", in[i],
              msh_status_name(st), e.msg);
        CHECK(L.calls_after == 0, "%s: %d progress calls after the request", in[i], L.calls_after);
        CHECK(!*left, "token: %s left behind: %s", in[i], left);
        free(o);
    }

    /* 3. a token requested by another thread while the conversion runs */
    {
        fresh_dir(out);
        char *o = cat(out, out_name[0]);
        msh_cancel_token_reset(tok);
        plog L;
        memset(&L, 0, sizeof L);
        L.path = in[0];
        L.thread = pthread_self();
        L.stop_phase = MSH_PHASE_WRITE;
        L.stop_bytes = 1;
        requester q;
        q.token = tok;
        atomic_init(&q.point, 0);
        atomic_init(&q.done, 0);
        L.point = &q.point; /* the callback marks the point; the other thread requests */
        L.wait_for = &q.done;
        msh_convert_options opt;
        msh_convert_options_init(&opt);
        opt.progress = on_progress;
        opt.progress_user = &L;
        opt.cancel = tok;
        pthread_t th;
        CHECK(pthread_create(&th, NULL, request_later, &q) == 0, "pthread_create");
        msh_convert_result res;
        msh_status st = msh_convert_file(in[0], o, &opt, &res, &e);
        atomic_store(&q.done, 1);
        pthread_join(th, NULL);
        char left[4096];
        list_dir(out, left, sizeof left);
        CHECK(st == MSH_ERR_CANCELLED, "token from another thread: %s (%s)", msh_status_name(st),
              e.msg);
        CHECK(L.calls_after == 0, "%d progress calls after the request", L.calls_after);
        CHECK(!*left, "token from another thread: left behind: %s", left);
        free(o);
    }

    /* 4. requested before the call: nothing happens, not even a progress call; reset: it runs */
    {
        fresh_dir(out);
        char *o = cat(out, out_name[3]);
        msh_cancel_token_request(tok);
        CHECK(msh_cancel_token_requested(tok), "requested");
        plog L;
        memset(&L, 0, sizeof L);
        L.path = in[3];
        L.thread = pthread_self();
        msh_convert_options opt;
        msh_convert_options_init(&opt);
        opt.progress = on_progress;
        opt.progress_user = &L;
        opt.cancel = tok;
        msh_convert_result res;
        msh_status st = msh_convert_file(in[3], o, &opt, &res, &e);
        char left[4096];
        list_dir(out, left, sizeof left);
        CHECK(st == MSH_ERR_CANCELLED && L.calls == 0 && !*left,
              "requested before: %s, %d calls, left %s", msh_status_name(st), L.calls, left);
        msh_cancel_token_reset(tok);
        CHECK(!msh_cancel_token_requested(tok), "reset");
        memset(&L, 0, sizeof L);
        L.path = in[3];
        L.thread = pthread_self();
        st = msh_convert_file(in[3], o, &opt, &res, &e);
        CHECK(st == MSH_OK, "after reset: %s", e.msg);
        check_log(&L, "after reset");
        free(o);
    }
    msh_cancel_token_free(tok);
    msh_cancel_token_free(NULL);

    /* 5. msh_cancel_request holds for the whole process: in a child */
    fresh_dir(out);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        msh_cancel_request();
        char *o = cat(out, out_name[0]);
        msh_convert_result res;
        msh_status st = msh_convert_file(in[0], o, NULL, &res, &e);
        msh_inspect_info *info = NULL;
        msh_status ist = msh_inspect(in[1], &info, &e);
        char left[4096];
        list_dir(out, left, sizeof left);
        _exit(st == MSH_ERR_CANCELLED && ist == MSH_ERR_CANCELLED && !info && !*left ? 0 : 1);
    }
    int ws = 0;
    CHECK(pid > 0 && waitpid(pid, &ws, 0) == pid && WIFEXITED(ws) && WEXITSTATUS(ws) == 0,
          "msh_cancel_request in a child: conversion and inspection not cancelled cleanly");
    char inputs_after[4096];
    list_dir(in_dir, inputs_after, sizeof inputs_after);
    CHECK(strcmp(inputs_before, inputs_after) == 0, "the inputs' folder changed: %s", inputs_after);
    for (int i = 0; i < 4; i++)
        free(in[i]);
    free(in_dir);
    free(out);
    return fails;
}

/* ---- sizes ---- */

static int never_called(void *user, const msh_progress *p) {
    (void)p;
    (*(int *)user)++;
    return 1;
}

static int case_sizes(const char *work) {
    fresh_dir(work);
    char *in = cat(work, "m.onnx"), *ref = cat(work, "ref.onnx"), *out = cat(work, "out.onnx");
    make_onnx(in, 3, 4096, 1);
    msh_error e;
    msh_convert_result res;
    memset(&res, 0xCD, sizeof res);
    CHECK(msh_convert_file(in, ref, NULL, &res, &e) == MSH_OK, "defaults: %s", e.msg);
    /* without options the caller's size is unknown: the first header's result is written (the
     * INT4 fields appended later are not) */
    CHECK(res.struct_size == offsetof(msh_convert_result, state_dict) + sizeof res.state_dict,
          "opt NULL: struct_size %zu", res.struct_size);
    CHECK(res.dedup_merged == 1 && res.bytes_in > 0, "opt NULL: merged %lld",
          (long long)res.dedup_merged);

    /* init writes nothing past the caller's size */
    union {
        msh_convert_options o;
        uint8_t b[sizeof(msh_convert_options) + 64];
    } u;
    size_t old = offsetof(msh_convert_options, progress); /* before progress came */
    memset(&u, 0xA5, sizeof u);
    msh_convert_options_init_sized(&u.o, old, sizeof(msh_convert_result));
    int untouched = 1;
    for (size_t i = old; i < sizeof u; i++)
        untouched &= u.b[i] == 0xA5;
    CHECK(untouched, "init wrote past struct_size");
    CHECK(u.o.struct_size == old && u.o.dedup == 1 && u.o.max_shard_bytes == 5000000000LL,
          "init of the old size: %zu %d", u.o.struct_size, u.o.dedup);

    /* an older caller: the fields it does not have (garbage here) take their defaults */
    int called = 0;
    msh_cancel_token *tok = NULL;
    CHECK(msh_cancel_token_create(&tok, &e) == MSH_OK, "token");
    msh_cancel_token_request(tok);
    u.o.progress = never_called; /* past its size: must be ignored */
    u.o.progress_user = &called;
    u.o.cancel = tok;
    u.o.struct_size = old;
    CHECK(msh_convert_file(in, out, &u.o, &res, &e) == MSH_OK, "old size: %s", e.msg);
    CHECK(called == 0, "old size: the progress field past struct_size was called");
    CHECK(same_bytes(ref, out), "old size: output differs from the defaults'");
    CHECK(msh_convert_check(&u.o, MSH_FORMAT_ONNX, out, NULL, &e) == MSH_OK, "check: %s", e.msg);
    /* ... and the fields it has count */
    u.o.dedup = 0;
    CHECK(msh_convert_file(in, out, &u.o, &res, &e) == MSH_OK && res.dedup_merged == 0,
          "old size, dedup 0: merged %lld (%s)", (long long)res.dedup_merged, e.msg);
    CHECK(!same_bytes(ref, out), "old size, dedup 0: the output should keep the copy");

    /* the smallest: only struct_size and result_size; all else garbage */
    memset(&u, 0x5A, sizeof u);
    size_t tiny = offsetof(msh_convert_options, result_size) + sizeof(size_t);
    msh_convert_options_init_sized(&u.o, tiny, sizeof(msh_convert_result));
    CHECK(u.o.dedup == 0x5A5A5A5A, "init wrote a field past the smallest size");
    CHECK(msh_convert_file(in, out, &u.o, &res, &e) == MSH_OK, "smallest: %s", e.msg);
    CHECK(same_bytes(ref, out), "smallest size: output differs from the defaults'");

    /* sizes that no version has */
    msh_convert_options o;
    size_t badsz[] = {0, 4, sizeof o + 8, offsetof(msh_convert_options, dedup) + 2,
                      offsetof(msh_convert_options, fp16_min) + 2};
    for (size_t k = 0; k < sizeof badsz / sizeof badsz[0]; k++) {
        msh_convert_options_init(&o);
        o.struct_size = badsz[k];
        CHECK(msh_convert_file(in, out, &o, &res, &e) == MSH_ERR_USAGE &&
                  strstr(e.msg, "struct_size"),
              "struct_size %zu: %s", badsz[k], e.msg);
        msh_option bad = MSH_OPTION_INT8;
        CHECK(msh_convert_check(&o, MSH_FORMAT_ONNX, NULL, &bad, &e) == MSH_ERR_USAGE &&
                  bad == MSH_OPTION_NONE,
              "check, struct_size %zu", badsz[k]);
    }
    msh_convert_options_init(&o);
    o.result_size = 0;
    CHECK(msh_convert_file(in, out, &o, &res, &e) == MSH_ERR_USAGE && strstr(e.msg, "result_size"),
          "result_size 0: %s", e.msg);

    /* an older, smaller result: not a byte past it is written, whatever the outcome */
    for (int fail = 0; fail < 2; fail++) {
        union {
            msh_convert_result r;
            uint8_t b[sizeof(msh_convert_result) + 64];
        } ur;
        memset(&ur, 0xCD, sizeof ur);
        size_t rs = offsetof(msh_convert_result, note);
        msh_convert_options_init_sized(&o, sizeof o, rs);
        o.int8 = fail; /* int8 applies, but "m.onnx" -> a missing folder fails */
        msh_status st = msh_convert_file(in, fail ? "/nonexistent-msh/x.onnx" : out, &o, &ur.r, &e);
        CHECK(fail ? st == MSH_ERR_IO : st == MSH_OK, "small result: %s", e.msg);
        int clean = 1;
        for (size_t i = rs; i < sizeof ur; i++)
            clean &= ur.b[i] == 0xCD;
        CHECK(clean, "small result: a byte past result_size was written");
        CHECK(ur.r.struct_size == rs, "small result: struct_size %zu, want %zu", ur.r.struct_size,
              rs);
        CHECK(fail || (ur.r.bytes_in > 0 && ur.r.dedup_merged == 1), "small result: figures");
    }

    /* the library's own structs say their size */
    msh_inspect_info *info = NULL;
    CHECK(msh_inspect(in, &info, &e) == MSH_OK, "inspect: %s", e.msg);
    CHECK(info && info->struct_size == sizeof *info &&
              MSH_STRUCT_HAS(info, msh_inspect_info, n_largest),
          "msh_inspect_info.struct_size");
    msh_inspect_info_free(info);
    msh_inspect_info_free(NULL);
    msh_cancel_token_free(tok);
    free(in);
    free(ref);
    free(out);
    return fails;
}

/* ---- inspect ---- */

static int64_t jnum(const cJSON *o, const char *a, const char *b) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, a);
    if (b)
        x = cJSON_GetObjectItemCaseSensitive(x, b);
    return cJSON_IsNumber(x) ? (int64_t)x->valuedouble : -1;
}

static const char *jstr(const cJSON *o, const char *a) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, a);
    return cJSON_IsString(x) ? x->valuestring : NULL;
}

static int checked; /* files compared */

/* The struct of msh_inspect against the JSON of msh_inspect_file, field by field. */
static void agree(const char *path) {
    msh_error ej, es;
    char *json = NULL;
    msh_inspect_info *in = NULL;
    msh_status sj = msh_inspect_file(path, &json, &ej);
    msh_status ss = msh_inspect(path, &in, &es);
    CHECK(sj == ss, "%s: msh_inspect_file says %s, msh_inspect %s", path, msh_status_name(sj),
          msh_status_name(ss));
    if (sj != MSH_OK || ss != MSH_OK) {
        CHECK(strcmp(ej.msg, es.msg) == 0, "%s: messages differ: '%s' / '%s'", path, ej.msg,
              es.msg);
        CHECK(!in && !json, "%s: a result after failure", path);
        return;
    }
    checked++;
    cJSON *o = cJSON_Parse(json);
    CHECK(o != NULL, "%s: JSON does not parse", path);
    if (!o)
        return;
    CHECK(strcmp(msh_format_name(in->format), jstr(o, "format")) == 0, "%s: format %s / %s", path,
          msh_format_name(in->format), jstr(o, "format"));
#define SAME(field, a, b)                                                                          \
    CHECK(in->field == jnum(o, a, b), "%s: " #field " %lld, JSON %lld", path,                      \
          (long long)in->field, (long long)jnum(o, a, b))
    SAME(file_bytes, "file_bytes", NULL);
    SAME(tensor_bytes, "tensor_bytes", NULL);
    SAME(tensor_count, "tensor_count", NULL);
    SAME(weights_bytes, "breakdown", "weights");
    SAME(optimizer_state_bytes, "breakdown", "optimizer_state");
    SAME(other_tensor_bytes, "breakdown", "other_tensors");
    SAME(metadata_bytes, "breakdown", "metadata");
    SAME(overhead_bytes, "overhead_bytes", NULL);
    SAME(external_bytes, "external_bytes", NULL);
    SAME(header_bytes, "header_bytes", NULL);
    SAME(dup_groups, "duplicates", "groups");
    SAME(dup_tensors, "duplicates", "tensors");
    SAME(dup_saved_bytes, "duplicates", "saved_bytes");
#undef SAME
    CHECK(in->file_bytes >= 0 && in->tensor_bytes >= 0 && in->dup_groups >= 0,
          "%s: a figure every format has is missing", path);
    CHECK((in->format == MSH_FORMAT_PTH) == (in->weights_bytes >= 0) &&
              (in->format == MSH_FORMAT_ONNX) == (in->overhead_bytes >= 0) &&
              (in->format == MSH_FORMAT_SAFETENSORS) == (in->header_bytes >= 0),
          "%s: breakdown of another format", path);
    const cJSON *found = cJSON_GetObjectItemCaseSensitive(o, "state_dict_found");
    if (cJSON_IsTrue(found))
        CHECK(in->state_dict_key && strcmp(in->state_dict_key, jstr(o, "state_dict_key")) == 0,
              "%s: state_dict_key '%s', JSON '%s'", path,
              in->state_dict_key ? in->state_dict_key : "(null)", jstr(o, "state_dict_key"));
    else
        CHECK(!in->state_dict_key, "%s: state_dict_key '%s' without one in the JSON", path,
              in->state_dict_key);
    const cJSON *bd = cJSON_GetObjectItemCaseSensitive(o, "by_dtype");
    CHECK(in->n_by_dtype == (size_t)cJSON_GetArraySize(bd), "%s: %zu types, JSON %d", path,
          in->n_by_dtype, cJSON_GetArraySize(bd));
    int64_t sum = 0;
    for (size_t i = 0; i < in->n_by_dtype && i < (size_t)cJSON_GetArraySize(bd); i++) {
        const msh_inspect_dtype *d = &in->by_dtype[i];
        const cJSON *x = cJSON_GetArrayItem(bd, (int)i);
        CHECK(strcmp(d->dtype, jstr(x, "dtype")) == 0 && d->count == jnum(x, "count", NULL) &&
                  d->bytes == jnum(x, "bytes", NULL),
              "%s: by_dtype[%zu] %s %lld %lld", path, i, d->dtype, (long long)d->count,
              (long long)d->bytes);
        CHECK(d->code >= 0 ? strcmp(msh_dtype_name(d->code), d->dtype) == 0
                           : strcmp(d->dtype, "UNKNOWN") == 0,
              "%s: code %d for %s", path, d->code, d->dtype);
        CHECK(i == 0 || d->code > in->by_dtype[i - 1].code || d->code < 0,
              "%s: by_dtype not in code order", path);
        sum += d->bytes;
    }
    if (in->format != MSH_FORMAT_PTH) /* a checkpoint's by_dtype counts storages */
        CHECK(sum == in->tensor_bytes, "%s: by_dtype sums to %lld of %lld", path, (long long)sum,
              (long long)in->tensor_bytes);
    const cJSON *lg = cJSON_GetObjectItemCaseSensitive(o, "largest");
    int nl = cJSON_GetArraySize(lg);
    CHECK(in->n_largest == (size_t)(nl < MSH_INSPECT_LARGEST ? nl : MSH_INSPECT_LARGEST),
          "%s: %zu largest, JSON %d", path, in->n_largest, nl);
    for (size_t i = 0; i < in->n_largest && i < (size_t)nl; i++) {
        const msh_inspect_tensor *t = &in->largest[i];
        const cJSON *x = cJSON_GetArrayItem(lg, (int)i);
        const cJSON *sh = cJSON_GetObjectItemCaseSensitive(x, "shape");
        int same = strcmp(t->name, jstr(x, "name")) == 0 &&
                   strcmp(t->dtype, jstr(x, "dtype")) == 0 && t->bytes == jnum(x, "bytes", NULL) &&
                   t->ndim == (size_t)cJSON_GetArraySize(sh);
        for (size_t k = 0; same && k < t->ndim; k++)
            same = t->shape[k] == (int64_t)cJSON_GetArrayItem(sh, (int)k)->valuedouble;
        CHECK(same, "%s: largest[%zu] '%s' differs from the JSON", path, i, t->name);
        CHECK(i == 0 || t->bytes <= in->largest[i - 1].bytes, "%s: largest not in order", path);
    }
    cJSON_Delete(o);
    msh_free(json);
    msh_inspect_info_free(in);
}

static void agree_dir(const char *dir) {
    DIR *d = opendir(dir);
    CHECK(d != NULL, "cannot list %s", dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (de->d_name[0] == '.' || (n > 5 && strcmp(de->d_name + n - 5, ".json") == 0))
            continue;
        char *p = cat(dir, de->d_name);
        if (!is_dir(p))
            agree(p);
        free(p);
    }
    closedir(d);
}

static int case_inspect(const char *work) {
    fresh_dir(work);
    char *onnx = cat(work, "m.onnx"), *ext = cat(work, "ext.onnx"),
         *st = cat(work, "m.safetensors");
    char *hf = cat(work, "hf"), *pth = cat(work, "m.pth");
    make_onnx(onnx, 12, 1000, 2); /* more tensors than the largest list holds */
    make_safetensors(st, 3, 5000, 1);
    make_hf(hf, 2, 3000, 1);
    msh_convert_options opt;
    msh_convert_options_init(&opt);
    opt.external_data = 1;
    opt.dedup = 0;
    msh_convert_result res;
    msh_error e;
    CHECK(msh_convert_file(onnx, ext, &opt, &res, &e) == MSH_OK, "external: %s", e.msg);
    msh_convert_options_init(&opt);
    opt.out_format = MSH_FORMAT_PTH;
    opt.dedup = 0; /* a .pth output would share the copy's storage */
    CHECK(msh_convert_file(st, pth, &opt, &res, &e) == MSH_OK, "pth: %s", e.msg);
    const char *made[] = {onnx, ext, st, hf, pth};
    for (size_t i = 0; i < sizeof made / sizeof made[0]; i++)
        agree(made[i]);
    msh_inspect_info *in = NULL;
    CHECK(msh_inspect(ext, &in, &e) == MSH_OK && in->external_bytes > 0 && in->dup_groups == 1 &&
              in->n_largest == MSH_INSPECT_LARGEST,
          "ext.onnx: external %lld, groups %lld", in ? (long long)in->external_bytes : -1,
          in ? (long long)in->dup_groups : -1);
    msh_inspect_info_free(in);
    const char *dirs[] = {"tests/fixtures/pth", "tests/fixtures/pth/real",
                          "tests/fixtures/pth/refused"};
    for (size_t i = 0; i < 3; i++) {
        char *d = cat(g_src, dirs[i]);
        agree_dir(d);
        free(d);
    }
    CHECK(msh_inspect(work, &in, &e) == MSH_ERR_USAGE && !in, "a plain folder: %s", e.msg);
    agree(work);
    char *missing = cat(work, "missing.onnx");
    agree(missing);
    free(missing);
    CHECK(checked >= 20, "only %d files inspected", checked);
    printf("%d inspections agree\n", checked);
    free(onnx);
    free(ext);
    free(st);
    free(hf);
    free(pth);
    return fails;
}

/* ---- the README example ---- */

static int case_fixtures(const char *work) {
    mkdir_p(work);
    char *p = cat(work, "example.onnx");
    make_onnx(p, 4, 100000, 1);
    free(p);
    return fails;
}

static char *slurp(const char *path) {
    size_t n;
    char *b = (char *)read_file(path, &n);
    CHECK(b != NULL, "cannot read %s", path);
    if (b)
        b[n] = 0;
    return b;
}

static int case_readme(void) {
    char *rp = cat(g_src, "README.md"), *ep = cat(g_src, "tests/api/readme_example.c");
    char *hp = cat(g_src, "include/modelshrink.h");
    char *readme = slurp(rp), *ex = slurp(ep), *hdr = slurp(hp);
    if (!readme || !ex || !hdr)
        return fails;
    /* README: a ```c block that is the file */
    char *want = malloc(strlen(ex) + 16);
    sprintf(want, "```c\n%s```\n", ex);
    const char *lib = strstr(readme, "\n## Library\n");
    const char *next = lib ? strstr(lib + 1, "\n## ") : NULL;
    const char *at = lib ? strstr(lib, want) : NULL;
    CHECK(lib && at && (!next || at < next),
          "README.md's \"Library\" section does not hold tests/api/readme_example.c in a ```c "
          "block, byte for byte");
    if (lib && !at) { /* say where they part */
        const char *blk = strstr(lib, "```c\n");
        if (blk) {
            blk += 5;
            int line = 1;
            size_t i = 0;
            while (blk[i] && ex[i] && blk[i] == ex[i])
                line += ex[i++] == '\n';
            printf("  first difference at line %d of readme_example.c\n", line);
        }
    }
    /* the header's comment: the same lines, indented by " *     " */
    size_t cap = strlen(ex) * 2 + 64, w = 0;
    char *hw = malloc(cap);
    for (const char *l = ex; *l;) {
        size_t n = strcspn(l, "\n");
        w += (size_t)snprintf(hw + w, cap - w, n ? " *     %.*s\n" : " *\n", (int)n, l);
        l += n + (l[n] == '\n');
    }
    CHECK(strstr(hdr, hw) != NULL,
          "include/modelshrink.h's top comment does not hold tests/api/readme_example.c");
    free(hw);
    free(want);
    free(readme);
    free(ex);
    free(hdr);
    free(rp);
    free(ep);
    free(hp);
    return fails;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: test_api threads|cancel|sizes|inspect|fixtures|readme WORK SRC\n");
        return 2;
    }
    g_src = argv[3];
    const char *c = argv[1], *work = argv[2];
    int r = !strcmp(c, "threads")    ? case_threads(work)
            : !strcmp(c, "cancel")   ? case_cancel(work)
            : !strcmp(c, "sizes")    ? case_sizes(work)
            : !strcmp(c, "inspect")  ? case_inspect(work)
            : !strcmp(c, "fixtures") ? case_fixtures(work)
            : !strcmp(c, "readme")   ? case_readme()
                                     : -1;
    if (r < 0) {
        fprintf(stderr, "test_api: unknown case %s\n", c);
        return 2;
    }
    if (fails)
        printf("test_api %s: %d failures\n", c, fails);
    else
        printf("test_api %s: ok\n", c);
    return fails ? 1 : 0;
}
