/* The public entry points: one model in, one model out (or a report). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "formats/onnx_model.h"
#include "formats/pth.h"
#include "formats/safetensors.h"
#include "engine/msh_engine.h"
#include "msh_pipeline.h"
#include "passes/dedup.h"
#include "passes/fp16.h"
#include "passes/inspect.h"
#include "passes/int8.h"
#include "passes/prune.h"

#define MSH_PROTOBUF_LIMIT ((int64_t)2147483647 - 65536)

void msh_convert_options_init(msh_convert_options *opt) {
    memset(opt, 0, sizeof *opt);
    opt->dedup = 1;
    opt->external_threshold = 1024;
    opt->keep_io_types = 1;
    opt->fp16_min = 5.9604644775390625e-08f; /* 2^-24 */
    opt->fp16_max = 65504.0f;
    opt->int8_min_elements = 4096;
    opt->staging_mib = 64;
}

static int64_t default_opset(const msh_onnx_model *m) {
    int64_t v = 0;
    for (size_t i = 0; i < m->mp->n_opset_import; i++) {
        const char *d = m->mp->opset_import[i]->domain;
        if (!d || !*d || strcmp(d, "ai.onnx") == 0)
            v = m->mp->opset_import[i]->version;
    }
    return v;
}

static uint32_t f32_bits(float f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
}

static int same_file(const char *path, int64_t dev, int64_t ino) {
    struct stat sb;
    return stat(path, &sb) == 0 && (int64_t)sb.st_dev == dev && (int64_t)sb.st_ino == ino;
}

static msh_status check_paths(const msh_onnx_model *m, const char *in, const char *out,
                              msh_error *e) {
    struct stat si;
    if (stat(in, &si) != 0)
        return MSH_OK; /* open() reports it */
    if (same_file(out, (int64_t)si.st_dev, (int64_t)si.st_ino))
        return msh_fail(e, MSH_ERR_USAGE, "output %s is the input file", out);
    if (!m)
        return MSH_OK;
    char *data = malloc(strlen(out) + 6);
    if (!data)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    sprintf(data, "%s.data", out);
    msh_status st = MSH_OK;
    for (size_t i = 0; i < m->n_ext && st == MSH_OK; i++) {
        if (same_file(out, m->ext[i].dev, m->ext[i].ino) ||
            same_file(data, m->ext[i].dev, m->ext[i].ino))
            st = msh_fail(e, MSH_ERR_USAGE,
                          "output %s would overwrite the input's external "
                          "data file '%s'",
                          out, m->ext[i].location);
    }
    if (st == MSH_OK && same_file(data, (int64_t)si.st_dev, (int64_t)si.st_ino))
        st = msh_fail(e, MSH_ERR_USAGE, "output %s.data is the input file", out);
    free(data);
    return st;
}

/* The engine of one model: CPU or CUDA as chosen, with the options' FP16 bounds. */
static msh_status engine_for(const msh_convert_options *opt, int backend, msh_engine **g,
                             msh_error *e) {
    msh_engine_opts eo;
    memset(&eo, 0, sizeof eo);
    eo.backend = backend;
    eo.threads = opt->threads;
    eo.verify = opt->verify;
    eo.f16.min_abs = f32_bits(opt->fp16_min);
    eo.f16.max_abs = f32_bits(opt->fp16_max);
    eo.staging = (size_t)(opt->staging_mib > 0 ? opt->staging_mib : 64) << 20;
    return msh_engine_open(&eo, g, e);
}

/* Writers ask for tensors in the order their layout promised; each becomes one engine job. */
typedef struct take_ctx {
    msh_run *run;
    const size_t *order;
    size_t n, next;
} take_ctx;

static msh_status take_bytes(void *arg, size_t index, msh_sink *dst, msh_error *e) {
    take_ctx *t = arg;
    if (t->next >= t->n || t->order[t->next] != index)
        return msh_fail(e, MSH_ERR_FORMAT, "internal error: the writer asked for tensor %zu "
                                           "out of its layout's order",
                        index);
    return msh_run_take(t->run, t->next++, dst, e);
}

/* The job that makes tensor `d`'s output bytes. */
static void job_for(msh_job *j, const msh_tentry *d) {
    memset(j, 0, sizeof *j);
    j->src = &d->src;
    j->nbytes = d->nbytes > 0 ? d->nbytes : 0;
    int op = msh_op_for(d->dtype, d->out_dtype);
    j->op = op < 0 ? MSH_OP_COPY : (msh_op)op;
    j->scales = d->qscales;
    j->inner = d->qinner;
    j->channels = d->qchannels;
    j->name = d->name;
}

/* Run the engine over the writer's order and let the writer place the bytes. */
static msh_status run_jobs(msh_engine *g, const msh_table *tab, const size_t *order, size_t n,
                           msh_status (*write)(void *wctx, msh_bytes_fn fn, void *fnctx,
                                               msh_error *e),
                           void *wctx, uint64_t *clamped, msh_error *e) {
    msh_job *jobs = calloc(n + 1, sizeof *jobs);
    if (!jobs)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    for (size_t k = 0; k < n; k++) {
        const msh_tentry *d = msh_table_at(tab, order[k]);
        if (msh_op_for(d->dtype, d->out_dtype) < 0) {
            free(jobs);
            return msh_fail(e, MSH_ERR_UNSUPPORTED, "tensor '%s': no conversion from %s to %s",
                            d->name, msh_dtype_name(d->dtype), msh_dtype_name(d->out_dtype));
        }
        job_for(&jobs[k], d);
    }
    msh_run *run;
    msh_status st = msh_run_start(g, jobs, n, &run, e);
    if (st == MSH_OK) {
        take_ctx t = {run, order, n, 0};
        st = write(wctx, take_bytes, &t, e);
        if (st == MSH_OK && t.next != n)
            st = msh_fail(e, MSH_ERR_FORMAT, "internal error: the writer took %zu of %zu tensors",
                          t.next, n);
        msh_run_end(run, NULL);
    }
    for (size_t k = 0; st == MSH_OK && k < n; k++)
        *clamped += jobs[k].clamped;
    free(jobs);
    return st;
}

typedef struct onnx_wctx {
    const msh_onnx_model *m;
    const msh_onnx_layout *L;
    const char *out_path;
    msh_onnx_write_result *wr;
} onnx_wctx;

static msh_status onnx_write_cb(void *arg, msh_bytes_fn fn, void *fnctx, msh_error *e) {
    onnx_wctx *w = arg;
    return msh_onnx_write(w->m, w->L, w->out_path, fn, fnctx, w->wr, e);
}

msh_status msh_engine_cpu(int threads, msh_engine **g, msh_error *e) {
    msh_convert_options o;
    msh_convert_options_init(&o);
    o.threads = threads;
    return engine_for(&o, MSH_BACKEND_CPU, g, e);
}

msh_status msh_onnx_save(const msh_onnx_model *m, const char *out_path, int external,
                         int64_t threshold, msh_engine *g, msh_onnx_write_result *wr,
                         uint64_t *clamped, msh_error *e) {
    msh_onnx_layout L;
    memset(wr, 0, sizeof *wr);
    MSH_FORWARD(msh_onnx_layout_make(m, external, threshold > 0 ? threshold : 0, &L, e));
    msh_table tab = msh_onnx_table(m);
    onnx_wctx w = {m, &L, out_path, wr};
    uint64_t c = 0;
    msh_status st = run_jobs(g, &tab, L.order, L.n_order, onnx_write_cb, &w, &c, e);
    if (clamped)
        *clamped += c;
    msh_onnx_layout_free(&L);
    return st;
}

/* One attempt at an ONNX model on one backend. */
static msh_status convert_onnx(const char *in_path, const char *out_path,
                               const msh_convert_options *opt, int backend,
                               msh_convert_result *res, msh_error *err) {
    memset(res, 0, sizeof *res);
    if (err) {
        err->msg[0] = 0;
        err->status = MSH_OK;
    }
    msh_status st = check_paths(NULL, in_path, out_path, err);
    if (st != MSH_OK)
        return st;
    msh_onnx_model m;
    msh_engine *eng = NULL;
    st = msh_onnx_model_open(&m, in_path, err);
    if (st == MSH_OK)
        st = check_paths(&m, in_path, out_path, err);
    if (st == MSH_OK)
        st = engine_for(opt, backend, &eng, err);
    if (st == MSH_OK) {
        /* dead code always; the sub-model when outputs are chosen */
        msh_prune_opts po = {opt->keep_outputs, opt->drop_outputs, opt->keep_inputs};
        msh_prune_stats ps;
        st = msh_prune_apply(&m, &po, 1, &ps, err);
        res->pruned_nodes = ps.nodes;
        res->pruned_tensors = ps.tensors;
        res->prune_saved_bytes = ps.bytes;
    }
    if (st == MSH_OK && opt->dedup) {
        msh_dedup_plan plan;
        st = msh_dedup_find(&m, opt->dedup_graph_inputs, eng, &plan, err);
        if (st == MSH_OK)
            st = msh_dedup_apply(&m, &plan, err);
        res->dedup_merged = plan.merged;
        res->dedup_saved_bytes = plan.saved_bytes;
        msh_dedup_plan_free(&plan);
    }
    if (st == MSH_OK && opt->int8) {
        msh_int8_opts io = {opt->int8_min_elements > 0 ? opt->int8_min_elements : 1,
                            opt->int8_gather, default_opset(&m) >= 19 ? opt->float_type : 0, eng};
        msh_int8_stats is;
        st = msh_int8_apply(&m, &io, &is, err);
        res->int8_tensors = is.tensors;
        res->int8_bytes_before = is.bytes_before;
        res->int8_bytes_after = is.bytes_after;
        res->int8_per_tensor = is.per_tensor;
        res->int8_opset = is.opset;
    }
    if (st == MSH_OK && opt->float_type) {
        msh_fp16_opts fo = {opt->float_type, opt->keep_io_types, opt->block_ops,
                            opt->block_nodes};
        msh_fp16_stats fs;
        st = msh_fp16_apply(&m, &fo, &fs, err);
        res->float_tensors = fs.tensors;
        res->float_casts = fs.casts;
        res->float_saved_bytes = fs.bytes_saved;
    }
    int external = opt->external_data || m.n_ext > 0;
    if (st == MSH_OK && !external) {
        int64_t size;
        st = msh_onnx_inline_size(&m, &size, err);
        if (st == MSH_OK && size > MSH_PROTOBUF_LIMIT) {
            external = 1;
            snprintf(res->note, sizeof res->note,
                     "output would pass protobuf's 2 GiB limit; tensors written to %s.data",
                     out_path);
        }
    }
    msh_onnx_write_result wr;
    memset(&wr, 0, sizeof wr);
    if (st == MSH_OK)
        st = msh_onnx_save(&m, out_path, external, opt->external_threshold, eng, &wr,
                           &res->float_clamped, err);
    if (st == MSH_OK) {
        res->bytes_in = m.file_size;
        for (size_t i = 0; i < m.n_ext; i++)
            res->bytes_in += m.ext[i].size;
        res->bytes_out = wr.model_bytes + wr.data_bytes;
        res->external_out = wr.external;
        snprintf(res->device, sizeof res->device, "%s", msh_engine_device(eng));
        snprintf(res->format, sizeof res->format, "onnx");
    }
    msh_engine_close(eng);
    msh_onnx_model_free(&m);
    return st;
}

/* Tensor bytes of an ONNX model, external data included (what the GPU would move). */
static int64_t onnx_work_bytes(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 ? (int64_t)sb.st_size : 0;
}

static int has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* What a file is, from its first bytes: 0 ONNX, 1 torch zip checkpoint, 2 legacy torch,
 * 3 safetensors. */
static int sniff(const char *path) {
    uint8_t h[16] = {0};
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    size_t n = fread(h, 1, sizeof h, f);
    struct stat sb;
    int64_t size = stat(path, &sb) == 0 ? (int64_t)sb.st_size : 0;
    fclose(f);
    if (msh_st_sniff(h, n, size))
        return 3;
    int kind = msh_pth_sniff(h, n);
    if (kind)
        return kind;
    /* Unrecognised bytes: the name says what the file claims to be, so its own reader can say
     * what is wrong (a protobuf error about a broken .safetensors would mislead). */
    if (has_suffix(path, ".safetensors"))
        return 3;
    if (has_suffix(path, ".pth") || has_suffix(path, ".pt") || has_suffix(path, ".ckpt"))
        return 1;
    return 0;
}

static msh_status convert_st(const char *in_path, const char *out_path,
                             const msh_convert_options *opt, msh_convert_result *res,
                             msh_error *err) {
    msh_st_file f;
    msh_status st = check_paths(NULL, in_path, out_path, err);
    if (st == MSH_OK)
        st = msh_st_open(&f, in_path, err);
    msh_st_item *items = st == MSH_OK ? calloc(f.n + 1, sizeof *items) : NULL;
    if (st == MSH_OK && !items)
        st = msh_fail(err, MSH_ERR_NOMEM, "out of memory");
    for (size_t i = 0; st == MSH_OK && i < f.n; i++) {
        const msh_st_tensor *t = &f.t[i];
        items[i] = (msh_st_item){t->name,  t->dtype, t->dtype,  t->shape, t->ndim,
                                 t->numel, f.fd,     t->offset, NULL,     NULL};
        if (opt->float_type && t->dtype == 1) {
            items[i].dtype_out = opt->float_type;
            res->float_tensors++;
            res->float_saved_bytes += t->numel * 2;
        }
    }
    int64_t out = 0;
    uint64_t clamped = 0;
    if (st == MSH_OK)
        st = msh_st_write(out_path, f.metadata, items, f.n, f32_bits(opt->fp16_min),
                          f32_bits(opt->fp16_max), &out, &clamped, err);
    if (st == MSH_OK) {
        res->bytes_in = f.file_size;
        res->bytes_out = out;
        res->float_clamped = clamped;
        snprintf(res->device, sizeof res->device, "cpu");
        snprintf(res->format, sizeof res->format, "safetensors");
    }
    free(items);
    msh_st_free(&f);
    return st;
}

static msh_status convert_pth(const char *in_path, const char *out_path,
                              const msh_convert_options *opt, msh_convert_result *res,
                              msh_error *err) {
    msh_pth p;
    msh_status st = check_paths(NULL, in_path, out_path, err);
    if (st == MSH_OK)
        st = msh_pth_open(&p, in_path, opt->key, err);
    int64_t out = 0, n = 0; /* n: tensors written */
    uint64_t clamped = 0;
    if (st == MSH_OK)
        st = (opt->out_format == 1 ? msh_pth_write_pth : msh_pth_write_safetensors)(
            &p, out_path, opt->float_type, f32_bits(opt->fp16_min), f32_bits(opt->fp16_max), &out,
            &n, &clamped, err);
    if (st == MSH_OK) {
        res->bytes_in = p.file_size;
        res->bytes_out = out;
        res->float_clamped = clamped;
        snprintf(res->format, sizeof res->format, "pth");
        for (size_t i = 0; opt->float_type && i < p.nt; i++)
            if (p.t[i].cat == MSH_PTH_WEIGHTS && p.t[i].dtype == 1) {
                res->float_tensors++;
                res->float_saved_bytes += p.t[i].numel * 2;
            }
        res->strip_saved_bytes = res->bytes_in - res->bytes_out - res->float_saved_bytes;
        snprintf(res->device, sizeof res->device, "cpu");
    }
    msh_pth_free(&p);
    return st;
}

msh_status msh_convert_file(const char *in_path, const char *out_path,
                            const msh_convert_options *opt, msh_convert_result *res,
                            msh_error *err) {
    msh_convert_options defaults;
    if (!opt) {
        msh_convert_options_init(&defaults);
        opt = &defaults;
    }
    memset(res, 0, sizeof *res);
    int kind = sniff(in_path);
    if (kind) {
        msh_status pst = kind == 3 ? convert_st(in_path, out_path, opt, res, err)
                                   : convert_pth(in_path, out_path, opt, res, err);
        if (pst != MSH_OK)
            msh_error_prefix(err, in_path);
        return pst;
    }
    int backend;
    msh_status st = msh_device_choose(opt->device, opt->verify, onnx_work_bytes(in_path),
                                      &backend, err);
    if (st != MSH_OK) {
        msh_error_prefix(err, in_path);
        return st;
    }
    st = convert_onnx(in_path, out_path, opt, backend, res, err);
    if (st == MSH_ERR_CUDA && backend == MSH_BACKEND_CUDA) {
        /* Never a wrong output: the GPU is given up for the rest of the run and this model is
         * converted again, from the start, on the CPU (the failed attempt left no file). */
        char why[sizeof err->msg];
        memcpy(why, err->msg, sizeof why);
        msh_device_disable_cuda();
        st = convert_onnx(in_path, out_path, opt, MSH_BACKEND_CPU, res, err);
        if (st == MSH_OK)
            snprintf(res->note, sizeof res->note,
                     "CUDA failed (%.160s); redone on the CPU, which runs the rest", why);
    }
    if (st != MSH_OK)
        msh_error_prefix(err, in_path);
    return st;
}

msh_status msh_onnx_external_files(const char *path, char ***locations, size_t *n, msh_error *err) {
    *locations = NULL;
    *n = 0;
    if (sniff(path))
        return MSH_OK;
    msh_onnx_model m;
    msh_status st = msh_onnx_model_open(&m, path, err);
    if (st == MSH_OK && m.n_ext) {
        *locations = calloc(m.n_ext, sizeof **locations);
        if (!*locations)
            st = msh_fail(err, MSH_ERR_NOMEM, "out of memory");
        for (size_t i = 0; st == MSH_OK && i < m.n_ext; i++) {
            if (!((*locations)[i] = msh_strdup(m.ext[i].location)))
                st = msh_fail(err, MSH_ERR_NOMEM, "out of memory");
            (*n)++;
        }
    }
    msh_onnx_model_free(&m);
    if (st != MSH_OK)
        msh_error_prefix(err, path);
    return st;
}

msh_status msh_inspect_file(const char *path, char **json_out, msh_error *err) {
    msh_convert_options dflt;
    msh_convert_options_init(&dflt);
    dflt.threads = 1;
    *json_out = NULL;
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return msh_fail(err, MSH_ERR_NOMEM, "%s: out of memory", path);
    cJSON_AddStringToObject(o, "path", path);
    int kind = sniff(path);
    if (kind) {
        msh_status pst;
        if (kind == 3) {
            msh_st_file f;
            pst = msh_st_open(&f, path, err);
            if (pst == MSH_OK)
                pst = msh_st_inspect(&f, o, err);
            msh_st_free(&f);
        } else {
            msh_pth p;
            pst = msh_pth_open(&p, path, NULL, err);
            if (pst == MSH_OK)
                pst = msh_pth_inspect(&p, o, err);
            msh_pth_free(&p);
        }
        if (pst == MSH_OK && !(*json_out = cJSON_PrintUnformatted(o)))
            pst = msh_fail(err, MSH_ERR_NOMEM, "out of memory");
        cJSON_Delete(o);
        if (pst != MSH_OK)
            msh_error_prefix(err, path);
        return pst;
    }
    msh_onnx_model m;
    msh_engine *eng = NULL;
    msh_status st = msh_onnx_model_open(&m, path, err);
    msh_dedup_plan plan;
    memset(&plan, 0, sizeof plan);
    if (st == MSH_OK)
        st = engine_for(&dflt, MSH_BACKEND_CPU, &eng, err);
    if (st == MSH_OK)
        st = msh_dedup_find(&m, 0, eng, &plan, err);
    if (st == MSH_OK)
        st = msh_inspect_onnx(&m, &plan, o, err);
    msh_dedup_plan_free(&plan);
    msh_engine_close(eng);
    msh_onnx_model_free(&m);
    if (st == MSH_OK) {
        *json_out = cJSON_PrintUnformatted(o);
        if (!*json_out)
            st = msh_fail(err, MSH_ERR_NOMEM, "out of memory");
    }
    cJSON_Delete(o);
    if (st != MSH_OK)
        msh_error_prefix(err, path);
    return st;
}
