/* The public entry points: one model in, one model out (or a report). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/stat.h>

#include "common/msh_dtype.h"
#include "engine/msh_engine.h"
#include "formats/hf_folder.h"
#include "formats/onnx_model.h"
#include "formats/pth.h"
#include "formats/pth_write.h"
#include "formats/safetensors.h"
#include "msh_pipeline.h"
#include "passes/ckpt.h"
#include "passes/dedup.h"
#include "passes/diff.h"
#include "passes/fp16.h"
#include "passes/inspect.h"
#include "passes/int4.h"
#include "passes/int8.h"
#include "passes/lift.h"
#include "passes/op_schemas.h"
#include "passes/prune.h"
#include "passes/storage.h"

#define MSH_PROTOBUF_LIMIT ((int64_t)2147483647 - 65536)
#define MSH_DEFAULT_SHARD_BYTES ((int64_t)5000000000) /* Hugging Face's "5GB" */

void msh_convert_options_init_sized(msh_convert_options *opt, size_t struct_size,
                                    size_t result_size) {
    msh_convert_options d;
    memset(&d, 0, sizeof d);
    d.struct_size = struct_size;
    d.result_size = result_size;
    d.dedup = 1;
    d.external_threshold = 1024;
    d.keep_io_types = 1;
    d.fp16_min = 5.9604644775390625e-08f; /* 2^-24 */
    d.fp16_max = 65504.0f;
    d.int8_min_elements = 4096;
    d.int4_block = 32;
    d.int4_min_elements = 4096;
    d.staging_mib = 64;
    d.max_shard_bytes = MSH_DEFAULT_SHARD_BYTES;
    /* an older caller's struct is a prefix of this one */
    memcpy(opt, &d, struct_size < sizeof d ? struct_size : sizeof d);
}

/* The sizes a caller's msh_convert_options can have: the end of each field from result_size on
 * (fields are only appended, so every older version ends at one of them). A field added to the
 * struct goes at the end of this list. */
/* (rounded up to the struct's alignment: a version ending there has that sizeof) */
#define OPT_ALIGN(n)                                                                               \
    (((n) + _Alignof(msh_convert_options) - 1) / _Alignof(msh_convert_options) *                   \
     _Alignof(msh_convert_options))
#define OPT_END(f)                                                                                 \
    OPT_ALIGN(offsetof(msh_convert_options, f) + sizeof(((msh_convert_options *)0)->f))
static const size_t option_ends[] = {OPT_END(result_size),
                                     OPT_END(dedup),
                                     OPT_END(dedup_graph_inputs),
                                     OPT_END(external_data),
                                     OPT_END(external_threshold),
                                     OPT_END(float_type),
                                     OPT_END(keep_io_types),
                                     OPT_END(fp16_min),
                                     OPT_END(fp16_max),
                                     OPT_END(block_ops),
                                     OPT_END(block_nodes),
                                     OPT_END(int8),
                                     OPT_END(int8_min_elements),
                                     OPT_END(int8_gather),
                                     OPT_END(device),
                                     OPT_END(verify),
                                     OPT_END(staging_mib),
                                     OPT_END(key),
                                     OPT_END(out_format),
                                     OPT_END(keep_outputs),
                                     OPT_END(drop_outputs),
                                     OPT_END(keep_inputs),
                                     OPT_END(threads),
                                     OPT_END(fp16_clamp),
                                     OPT_END(keep_fp32),
                                     OPT_END(n_keep_fp32),
                                     OPT_END(storage_only),
                                     OPT_END(allow_larger),
                                     OPT_END(max_shard_bytes),
                                     OPT_END(progress),
                                     OPT_END(progress_user),
                                     OPT_END(cancel),
                                     OPT_END(int4),
                                     OPT_END(int4_block),
                                     OPT_END(int4_asym),
                                     OPT_END(int4_min_elements),
                                     OPT_END(int4_gather),
                                     OPT_END(int4_format),
                                     OPT_END(int4_search)};
_Static_assert(OPT_END(int4_search) == sizeof(msh_convert_options),
               "a field added to msh_convert_options must be added to option_ends");

/* The msh_convert_result of the first header that sized it: what a call without options (whose
 * caller's size is unknown) writes. Frozen: fields added later are not in it. */
#define RESULT_SIZE_FIRST                                                                          \
    (offsetof(msh_convert_result, state_dict) + sizeof(((msh_convert_result *)0)->state_dict))

/* The caller's options as this library's struct: the fields it knows, defaults for the rest
 * (NULL: all defaults). MSH_ERR_USAGE for a size that no version of the struct has. */
static msh_status options_effective(const msh_convert_options *opt, msh_convert_options *eff,
                                    msh_error *err) {
    msh_convert_options_init(eff);
    if (!opt)
        return MSH_OK;
    size_t n = opt->struct_size;
    int known = 0;
    for (size_t i = 0; i < sizeof option_ends / sizeof option_ends[0] && !known; i++)
        known = option_ends[i] == n;
    if (!known)
        return msh_fail(err, MSH_ERR_USAGE,
                        "msh_convert_options.struct_size is %zu, not the size of a version of "
                        "the struct that this library knows (at most %zu): initialise the "
                        "options with msh_convert_options_init",
                        n, sizeof *eff);
    memcpy(eff, opt, n);
    if (eff->result_size < sizeof(size_t))
        return msh_fail(err, MSH_ERR_USAGE,
                        "msh_convert_options.result_size is %zu: initialise the options with "
                        "msh_convert_options_init",
                        eff->result_size);
    return MSH_OK;
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

/* The engine of one model: CPU or CUDA as chosen, with the options' FP16 bounds, progress
 * callback (told `path`) and cancel token. */
static msh_status engine_for(const msh_convert_options *opt, int backend, const char *path,
                             msh_engine **g, msh_error *e) {
    msh_engine_opts eo;
    memset(&eo, 0, sizeof eo);
    eo.backend = backend;
    eo.threads = opt->threads;
    eo.verify = opt->verify;
    eo.f16.min_abs = f32_bits(opt->fp16_min);
    eo.f16.max_abs = f32_bits(opt->fp16_max);
    eo.staging = (size_t)(opt->staging_mib > 0 ? opt->staging_mib : 64) << 20;
    eo.progress = opt->progress;
    eo.progress_user = opt->progress_user;
    eo.progress_path = path;
    eo.cancel = opt->cancel;
    return msh_engine_open(&eo, g, e);
}

/* What an attempt at a model knows from the attempts before it. The first attempt converts to
 * FP16 and checks each tensor's range as the engine converts it; at the first tensor FP16 cannot
 * hold, it stops (nothing is renamed into place), one scan finds every such tensor, and the next
 * attempt keeps them FP32. A float conversion that makes the file larger is left out. */
typedef struct attempt {
    int check_range; /* stop with MSH_RETRY_RANGE at a tensor that fails the range test */
    uint8_t *keep;   /* per origin: why the range test keeps it (MSH_F16_KEEP_*), or 0 */
    size_t n_keep;
    int64_t kept_above, kept_below;
    float kept_max;
    int no_float;  /* leave the float conversion out */
    char why[192]; /* why it was left out */
    int no_int8;   /* leave INT8 out */
    char why_int8[192];
} attempt;

/* MSH_RETRY_INT8, with the reason in a->why_int8, when quantizing `tensors` weights made the
 * inline model grow from `before` to `after` bytes (the attempt is then redone without it). */
static msh_status quant_grew(attempt *a, int64_t tensors, int64_t before, int64_t after) {
    if (tensors <= 0 || after < before)
        return MSH_OK;
    char grow[32];
    snprintf(a->why_int8, sizeof a->why_int8,
             "quantizing %lld %s would make the file %s larger; kept FP32", (long long)tensors,
             msh_plural(tensors, "tensor", "tensors"),
             msh_fmt_bytes(after - before, grow, sizeof grow));
    return MSH_RETRY_INT8;
}

typedef struct run_stats {
    uint64_t clamped, subnormal;
} run_stats;

/* Writers ask for tensors in the order their layout promised; each becomes one engine job. */
typedef struct take_ctx {
    msh_run *run;
    msh_job *jobs;
    const msh_table *tab;
    const size_t *order;
    size_t n, next;
    int check_range;
} take_ctx;

static msh_status take_bytes(void *arg, size_t index, msh_sink *dst, msh_error *e) {
    take_ctx *t = arg;
    if (t->next >= t->n || t->order[t->next] != index)
        return msh_fail(e, MSH_ERR_FORMAT,
                        "internal error: the writer asked for tensor %zu "
                        "out of its layout's order",
                        index);
    size_t k = t->next++;
    MSH_FORWARD(msh_run_take(t->run, k, dst, e));
    const msh_job *j = &t->jobs[k];
    const msh_tentry *d = msh_table_at(t->tab, index);
    /* a tensor a pass made (an INT8 scale) cannot be kept by the next attempt: it is converted,
     * and counted if clamped */
    if (t->check_range && j->op == MSH_OP_F16 && d->origin >= 0 &&
        msh_f16_range_keep(&j->range, d->ndim))
        return msh_fail(e, MSH_RETRY_RANGE, "tensor '%s' does not fit FP16", j->name);
    return MSH_OK;
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
    if (d->q4) {
        j->op = MSH_OP_INT4;
        j->q4 = d->q4l;
    }
}

/* The range test over every tensor of `order` that is converted to FP16 (one engine scan, no
 * output): the attempt's keep list and what it found. */
static msh_status range_scan(msh_engine *g, const msh_table *tab, const size_t *order, size_t n,
                             attempt *a, msh_error *e) {
    msh_job *jobs = calloc(n + 1, sizeof *jobs);
    size_t *at = calloc(n + 1, sizeof *at);
    uint8_t *keep = calloc(tab->n + 1, 1);
    msh_status st = jobs && at && keep ? MSH_OK : msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    size_t nj = 0;
    for (size_t k = 0; st == MSH_OK && k < n; k++) {
        const msh_tentry *d = msh_table_at(tab, order[k]);
        if (msh_op_for(d->dtype, d->out_dtype) != MSH_OP_F16)
            continue;
        job_for(&jobs[nj], d);
        at[nj++] = order[k];
    }
    if (st == MSH_OK)
        st = msh_engine_scan(g, jobs, nj, e);
    for (size_t k = 0; st == MSH_OK && k < nj; k++) {
        const msh_tentry *d = msh_table_at(tab, at[k]);
        int why = msh_f16_range_keep(&jobs[k].range, d->ndim);
        int64_t o = d->origin;
        if (!why || o < 0 || (size_t)o >= tab->n || keep[o])
            continue;
        keep[o] = (uint8_t)why;
        if (why == MSH_F16_KEEP_ABOVE) {
            float mx;
            uint32_t b = jobs[k].range.max_bits;
            memcpy(&mx, &b, 4);
            a->kept_above++;
            if (mx > a->kept_max)
                a->kept_max = mx;
        } else {
            a->kept_below++;
        }
    }
    if (st == MSH_OK) {
        free(a->keep);
        a->keep = keep;
        a->n_keep = tab->n;
        keep = NULL;
    }
    free(keep);
    free(at);
    free(jobs);
    return st;
}

/* Run the engine over the writer's order and let the writer place the bytes. */
static msh_status run_jobs(msh_engine *g, const msh_table *tab, const size_t *order, size_t n,
                           msh_status (*write)(void *wctx, msh_bytes_fn fn, void *fnctx,
                                               msh_error *e),
                           void *wctx, attempt *a, run_stats *rs, msh_error *e) {
    msh_job *jobs = calloc(n + 1, sizeof *jobs);
    if (!jobs)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    for (size_t k = 0; k < n; k++) {
        const msh_tentry *d = msh_table_at(tab, order[k]);
        if (!d->q4 && msh_op_for(d->dtype, d->out_dtype) < 0) {
            free(jobs);
            return msh_fail(e, MSH_ERR_UNSUPPORTED, "tensor '%s': no conversion from %s to %s",
                            d->name, msh_dtype_name(d->dtype), msh_dtype_name(d->out_dtype));
        }
        job_for(&jobs[k], d);
    }
    msh_run *run;
    msh_status st = msh_run_start(g, jobs, n, &run, e);
    if (st == MSH_OK) {
        take_ctx t = {run, jobs, tab, order, n, 0, a && a->check_range};
        st = write(wctx, take_bytes, &t, e);
        if (st == MSH_OK && t.next != n)
            st = msh_fail(e, MSH_ERR_FORMAT, "internal error: the writer took %zu of %zu tensors",
                          t.next, n);
        msh_run_end(run, NULL);
    }
    for (size_t k = 0; st == MSH_OK && k < n; k++) {
        rs->clamped += jobs[k].clamped;
        if (jobs[k].op == MSH_OP_F16)
            rs->subnormal += jobs[k].range.below;
    }
    free(jobs);
    if (st == MSH_RETRY_RANGE) {
        msh_status s2 = range_scan(g, tab, order, n, a, e);
        if (s2 != MSH_OK)
            st = s2;
    }
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
    return engine_for(&o, MSH_BACKEND_CPU, NULL, g, e);
}

static msh_status onnx_save(const msh_onnx_model *m, const char *out_path, int external,
                            int64_t threshold, msh_engine *g, msh_onnx_write_result *wr, attempt *a,
                            run_stats *rs, msh_error *e) {
    msh_onnx_layout L;
    memset(wr, 0, sizeof *wr);
    MSH_FORWARD(msh_onnx_layout_make(m, external, threshold > 0 ? threshold : 0, &L, e));
    msh_table tab = msh_onnx_table(m);
    onnx_wctx w = {m, &L, out_path, wr};
    msh_status st = run_jobs(g, &tab, L.order, L.n_order, onnx_write_cb, &w, a, rs, e);
    msh_onnx_layout_free(&L);
    return st;
}

msh_status msh_onnx_save(const msh_onnx_model *m, const char *out_path, int external,
                         int64_t threshold, msh_engine *g, msh_onnx_write_result *wr,
                         uint64_t *clamped, msh_error *e) {
    run_stats rs = {0, 0};
    msh_status st = onnx_save(m, out_path, external, threshold, g, wr, NULL, &rs, e);
    if (clamped)
        *clamped += rs.clamped;
    return st;
}

/* One attempt at an ONNX model on one backend. */
/* Why a float conversion that was asked for converted nothing. */
static void float_why(const msh_onnx_model *m, const msh_convert_options *opt,
                      const msh_fp16_stats *fs, char *why, size_t cap) {
    const char *tn = opt->float_type == MSH_FLOAT_FP16 ? "FP16" : "BF16";
    if (fs->candidates == 0 && opt->storage_only)
        snprintf(why, cap, "no FP32 weight has %d elements", MSH_STORAGE_MIN_ELEMENTS);
    else if (fs->candidates == 0)
        snprintf(why, cap, "no FP32 weights");
    else if (fs->kept_range + fs->kept_user >= fs->candidates)
        snprintf(why, cap, "every FP32 weight is kept FP32");
    else
        snprintf(why, cap,
                 "no op that reads an FP32 weight can run in %s (blocked, or its schema at "
                 "opset %lld does not allow it)",
                 tn, (long long)default_opset(m));
}

static msh_status convert_onnx(const char *in_path, const char *out_path,
                               const msh_convert_options *opt, int backend, attempt *a,
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
        st = engine_for(opt, backend, in_path, &eng, err);
    if (st == MSH_OK) {
        /* dead code always; the sub-model when outputs are chosen */
        msh_prune_opts po = {opt->keep_outputs, opt->drop_outputs, opt->keep_inputs};
        msh_prune_stats ps;
        st = msh_prune_apply(&m, &po, 1, &ps, err);
        res->pruned_nodes = ps.nodes;
        res->pruned_tensors = ps.tensors;
        res->prune_saved_bytes = ps.bytes;
    }
    if (st == MSH_OK && (opt->int8 || opt->int4 || opt->float_type != MSH_FLOAT_KEEP)) {
        /* weights read through an Identity: every reader seen by the weight passes */
        int64_t folded = 0;
        st = msh_fold_identities(&m, &folded, err);
    }
    if (st == MSH_OK && (opt->dedup || opt->int8 || opt->int4)) {
        /* weights in Constant nodes, where dedup, INT8 or INT4 would act on them */
        msh_lift_opts lo = {opt->dedup,
                            opt->int8,
                            opt->int8_min_elements > 0 ? opt->int8_min_elements : 1,
                            opt->int8_gather,
                            eng,
                            opt->int4,
                            opt->int4_min_elements > 0 ? opt->int4_min_elements : 1,
                            opt->int4_gather};
        int64_t lifted = 0;
        st = msh_lift_constants(&m, &lo, &lifted, err);
        res->constants_lifted = lifted;
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
    if (st == MSH_OK && opt->int8 && a->no_int8) {
        snprintf(res->int8_why, sizeof res->int8_why, "%s", a->why_int8);
    } else if (st == MSH_OK && opt->int8) {
        int64_t before = 0, after = 0;
        st = msh_onnx_inline_size(&m, &before, err);
        /* the scales are rounded to the half type only where the float pass will run and may
         * store them in it (storage-only keeps pass-made tensors FP32) */
        int float_runs = opt->float_type && !opt->storage_only && !a->no_float &&
                         !(opt->float_type == MSH_FLOAT_BF16 && default_opset(&m) < 13);
        msh_int8_opts io = {opt->int8_min_elements > 0 ? opt->int8_min_elements : 1,
                            opt->int8_gather, float_runs ? opt->float_type : 0, eng};
        msh_int8_stats is;
        memset(&is, 0, sizeof is);
        if (st == MSH_OK)
            st = msh_int8_apply(&m, &io, &is, err);
        if (st == MSH_OK)
            st = msh_onnx_inline_size(&m, &after, err);
        if (st == MSH_OK)
            st = quant_grew(a, is.tensors, before, after);
        res->int8_tensors = is.tensors;
        res->int8_bytes_before = is.bytes_before;
        res->int8_bytes_after = is.bytes_after;
        res->int8_per_tensor = is.per_tensor;
        res->int8_opset = is.opset;
        if (is.skipped_opset)
            snprintf(res->int8_why, sizeof res->int8_why,
                     "INT8 needs opset 7 and the model has opset %lld", (long long)is.opset);
        else if (is.tensors == 0 && is.eligible == 0)
            snprintf(res->int8_why, sizeof res->int8_why,
                     "no FP32 weight feeds MatMul, Gemm, Conv, ConvTranspose, LSTM, GRU or "
                     "RNN%s",
                     opt->int8_gather ? " or Gather" : "");
        else if (is.tensors == 0 && is.no_gain)
            snprintf(res->int8_why, sizeof res->int8_why,
                     "no weight is large enough for INT8 to save bytes (%lld too small)",
                     (long long)is.no_gain);
        else if (is.tensors == 0)
            snprintf(res->int8_why, sizeof res->int8_why,
                     "no weight has %lld elements (the largest of %lld has %lld)",
                     (long long)io.min_elements, (long long)is.eligible,
                     (long long)is.largest_small);
    }
    if (st == MSH_OK && opt->int4 && a->no_int8) {
        snprintf(res->int4_why, sizeof res->int4_why, "%s", a->why_int8);
    } else if (st == MSH_OK && opt->int4) {
        int64_t before = 0, after = 0;
        st = msh_onnx_inline_size(&m, &before, err);
        /* the float pass stores the scales in its type where it runs the dequantizing node in
         * it: DequantizeLinear-21 in FP16 or BF16, MatMulNBits and GatherBlockQuantized in FP16
         * only (fp16.c) */
        int float_runs =
            opt->float_type && !opt->storage_only && !a->no_float &&
            (opt->int4_format == MSH_INT4_FORMAT_QDQ || opt->float_type == MSH_FLOAT_FP16);
        msh_int4_opts qo = {opt->int4_min_elements,
                            opt->int4_block,
                            opt->int4_asym,
                            opt->int4_gather,
                            opt->int4_format == MSH_INT4_FORMAT_MATMULNBITS ? MSH_INT4_MATMULNBITS
                                                                            : MSH_INT4_QDQ,
                            float_runs ? opt->float_type : 0,
                            eng,
                            opt->int4_search,
                            out_path};
        msh_int4_result qs;
        memset(&qs, 0, sizeof qs);
        if (st == MSH_OK)
            st = msh_int4_apply(&m, &qo, &qs, err);
        if (st == MSH_OK)
            st = msh_onnx_inline_size(&m, &after, err);
        if (st == MSH_OK)
            st = quant_grew(a, qs.tensors, before, after);
        res->int4_tensors = qs.tensors;
        res->int4_bytes_before = qs.bytes_before;
        res->int4_bytes_after = qs.bytes_after;
        res->int4_opset = qs.opset_out;
        res->int4_search_seconds = qs.search_seconds;
        if (qs.why[0])
            snprintf(res->int4_why, sizeof res->int4_why, "%s", qs.why);
        else if (qs.tensors == 0 && qs.eligible == 0)
            snprintf(res->int4_why, sizeof res->int4_why,
                     "no 2-D FP32 weight feeds MatMul or Gemm%s",
                     opt->int4_gather ? " or Gather on axis 0" : "");
        else if (qs.tensors == 0)
            snprintf(res->int4_why, sizeof res->int4_why,
                     "no weight has %lld elements and a reduction axis of at least %d (the "
                     "largest of %lld has %lld elements)",
                     (long long)qo.min_elements, qo.block, (long long)qs.eligible,
                     (long long)qs.largest_small);
    }
    if (st == MSH_OK && opt->float_type && a->no_float) {
        snprintf(res->float_why, sizeof res->float_why, "%s", a->why);
    } else if (st == MSH_OK && opt->float_type == MSH_FLOAT_BF16 && default_opset(&m) < 13) {
        snprintf(res->float_why, sizeof res->float_why,
                 "BF16 needs opset 13 and the model has opset %lld", (long long)default_opset(&m));
    } else if (st == MSH_OK && opt->float_type) {
        msh_fp16_opts fo = {opt->float_type, opt->keep_io_types, opt->block_ops, opt->block_nodes,
                            a->keep,         a->n_keep,          opt->keep_fp32, opt->n_keep_fp32};
        msh_fp16_stats fs;
        int64_t before = 0, after = 0;
        st = msh_onnx_inline_size(&m, &before, err);
        if (st == MSH_OK)
            st = opt->storage_only ? msh_storage_apply(&m, &fo, &fs, err)
                                   : msh_fp16_apply(&m, &fo, &fs, err);
        if (st == MSH_OK)
            st = msh_onnx_inline_size(&m, &after, err);
        if (st == MSH_OK && !opt->allow_larger && (fs.tensors > 0 || fs.casts > 0) &&
            after >= before) {
            char grow[32];
            snprintf(a->why, sizeof a->why,
                     "converting %lld %s would make the file %s larger (%lld %s); kept FP32",
                     (long long)fs.tensors, msh_plural(fs.tensors, "tensor", "tensors"),
                     msh_fmt_bytes(after - before, grow, sizeof grow), (long long)fs.casts,
                     msh_plural(fs.casts, "Cast", "Casts"));
            st = MSH_RETRY_LARGER;
        }
        res->float_tensors = fs.tensors;
        res->float_casts = fs.casts;
        res->float_saved_bytes = fs.bytes_saved;
        res->float_kept_range = fs.kept_range;
        res->float_kept_user = fs.kept_user;
        if (st == MSH_OK && fs.tensors == 0)
            float_why(&m, opt, &fs, res->float_why, sizeof res->float_why);
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
    run_stats rs = {0, 0};
    if (st == MSH_OK)
        st = onnx_save(&m, out_path, external, opt->external_threshold, eng, &wr, a, &rs, err);
    res->float_clamped = rs.clamped;
    res->float_subnormal = rs.subnormal;
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

static int has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

const char *msh_format_name(msh_format f) {
    switch (f) {
    case MSH_FORMAT_ONNX: return "onnx";
    case MSH_FORMAT_PTH: return "pth";
    case MSH_FORMAT_SAFETENSORS: return "safetensors";
    case MSH_FORMAT_HF_FOLDER: return "hf";
    case MSH_FORMAT_AUTO: break;
    }
    return "auto";
}

static int is_dir(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* What a file is, from its first bytes; unrecognised bytes go by the name. A folder is a
 * Hugging Face model folder, or MSH_FORMAT_AUTO. */
static msh_format sniff(const char *path) {
    if (is_dir(path))
        return msh_hf_detect(path) != MSH_FORMAT_AUTO ? MSH_FORMAT_HF_FOLDER : MSH_FORMAT_AUTO;
    uint8_t h[16] = {0};
    FILE *f = fopen(path, "rb");
    if (!f)
        return MSH_FORMAT_ONNX;
    size_t n = fread(h, 1, sizeof h, f);
    struct stat sb;
    int64_t size = stat(path, &sb) == 0 ? (int64_t)sb.st_size : 0;
    fclose(f);
    if (msh_st_sniff(h, n, size))
        return MSH_FORMAT_SAFETENSORS;
    if (msh_pth_sniff(h, n))
        return MSH_FORMAT_PTH;
    /* The name says what the file claims to be, so its own reader can say what is wrong (a
     * protobuf error about a broken .safetensors would mislead). */
    if (has_suffix(path, ".safetensors"))
        return MSH_FORMAT_SAFETENSORS;
    if (has_suffix(path, ".pth") || has_suffix(path, ".pt") || has_suffix(path, ".ckpt"))
        return MSH_FORMAT_PTH;
    return MSH_FORMAT_ONNX;
}

msh_status msh_probe_file(const char *path, msh_format *kind, msh_error *err) {
    struct stat sb;
    *kind = MSH_FORMAT_AUTO;
    if (stat(path, &sb) != 0)
        return msh_fail(err, MSH_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (S_ISDIR(sb.st_mode) && msh_hf_detect(path) != MSH_FORMAT_AUTO) {
        *kind = MSH_FORMAT_HF_FOLDER;
        return MSH_OK;
    }
    if (S_ISDIR(sb.st_mode))
        return msh_fail(err, MSH_ERR_USAGE, "%s: a folder, and not a Hugging Face model folder",
                        path);
    if (!S_ISREG(sb.st_mode))
        return msh_fail(err, MSH_ERR_USAGE, "%s: not a regular file", path);
    *kind = sniff(path);
    return MSH_OK;
}

msh_status msh_input_stat(const char *path, int64_t *bytes, int64_t *mtime_ns, msh_error *err) {
    msh_format kind;
    *bytes = *mtime_ns = 0;
    MSH_FORWARD(msh_probe_file(path, &kind, err));
    if (kind == MSH_FORMAT_HF_FOLDER) {
        msh_hf h;
        msh_status st = msh_hf_scan(&h, path, err);
        if (st == MSH_OK) {
            *bytes = h.bytes_in;
            *mtime_ns = h.mtime_ns;
        } else {
            msh_error_prefix(err, path);
        }
        msh_hf_free(&h);
        return st;
    }
    struct stat sb;
    if (stat(path, &sb) != 0)
        return msh_fail(err, MSH_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    *bytes = (int64_t)sb.st_size;
    *mtime_ns = (int64_t)sb.st_mtim.tv_sec * 1000000000 + (int64_t)sb.st_mtim.tv_nsec;
    return MSH_OK;
}

/* ---- which options mean something for which input ---- */

static const char *const option_names[] = {
    [MSH_OPTION_NONE] = "none",
    [MSH_OPTION_DEDUP_GRAPH_INPUTS] = "dedup_graph_inputs",
    [MSH_OPTION_EXTERNAL_DATA] = "external_data",
    [MSH_OPTION_EXTERNAL_THRESHOLD] = "external_threshold",
    [MSH_OPTION_KEEP_IO_TYPES] = "keep_io_types",
    [MSH_OPTION_BLOCK_OPS] = "block_ops",
    [MSH_OPTION_BLOCK_NODES] = "block_nodes",
    [MSH_OPTION_INT8] = "int8",
    [MSH_OPTION_INT8_MIN_ELEMENTS] = "int8_min_elements",
    [MSH_OPTION_INT8_GATHER] = "int8_gather",
    [MSH_OPTION_KEY] = "key",
    [MSH_OPTION_OUT_FORMAT] = "out_format",
    [MSH_OPTION_KEEP_OUTPUTS] = "keep_outputs",
    [MSH_OPTION_DROP_OUTPUTS] = "drop_outputs",
    [MSH_OPTION_KEEP_INPUTS] = "keep_inputs",
    [MSH_OPTION_FP16_CLAMP] = "fp16_clamp",
    [MSH_OPTION_KEEP_FP32] = "keep_fp32",
    [MSH_OPTION_STORAGE_ONLY] = "storage_only",
    [MSH_OPTION_ALLOW_LARGER] = "allow_larger",
    [MSH_OPTION_MAX_SHARD_BYTES] = "max_shard_bytes",
    [MSH_OPTION_INT4] = "int4",
    [MSH_OPTION_INT4_BLOCK] = "int4_block",
    [MSH_OPTION_INT4_ASYM] = "int4_asym",
    [MSH_OPTION_INT4_MIN_ELEMENTS] = "int4_min_elements",
    [MSH_OPTION_INT4_GATHER] = "int4_gather",
    [MSH_OPTION_INT4_FORMAT] = "int4_format",
    [MSH_OPTION_INT4_SEARCH] = "int4_search",
};

const char *msh_option_name(msh_option o) {
    if (o >= 0 && (size_t)o < sizeof option_names / sizeof option_names[0] && option_names[o])
        return option_names[o];
    return "unknown";
}

int msh_option_applies(msh_option o, msh_format input) {
    switch (o) {
    case MSH_OPTION_DEDUP_GRAPH_INPUTS:
    case MSH_OPTION_EXTERNAL_DATA:
    case MSH_OPTION_EXTERNAL_THRESHOLD:
    case MSH_OPTION_KEEP_IO_TYPES:
    case MSH_OPTION_BLOCK_OPS:
    case MSH_OPTION_BLOCK_NODES:
    case MSH_OPTION_INT8:
    case MSH_OPTION_INT8_MIN_ELEMENTS:
    case MSH_OPTION_INT8_GATHER:
    case MSH_OPTION_KEEP_OUTPUTS:
    case MSH_OPTION_DROP_OUTPUTS:
    case MSH_OPTION_KEEP_INPUTS:
    case MSH_OPTION_ALLOW_LARGER:
    case MSH_OPTION_INT4:
    case MSH_OPTION_INT4_BLOCK:
    case MSH_OPTION_INT4_ASYM:
    case MSH_OPTION_INT4_MIN_ELEMENTS:
    case MSH_OPTION_INT4_GATHER:
    case MSH_OPTION_INT4_FORMAT:
    case MSH_OPTION_INT4_SEARCH: return input == MSH_FORMAT_ONNX;
    case MSH_OPTION_KEY: return input == MSH_FORMAT_PTH;
    case MSH_OPTION_OUT_FORMAT: return input == MSH_FORMAT_PTH || input == MSH_FORMAT_SAFETENSORS;
    case MSH_OPTION_MAX_SHARD_BYTES: return input == MSH_FORMAT_HF_FOLDER;
    case MSH_OPTION_FP16_CLAMP:
    case MSH_OPTION_KEEP_FP32:
    case MSH_OPTION_STORAGE_ONLY:
    case MSH_OPTION_NONE: break;
    }
    return 1;
}

/* The format an output's name asks for (its extension), or MSH_FORMAT_AUTO. */
static msh_format name_format(const char *path) {
    if (!path)
        return MSH_FORMAT_AUTO;
    if (has_suffix(path, ".safetensors"))
        return MSH_FORMAT_SAFETENSORS;
    if (has_suffix(path, ".pth") || has_suffix(path, ".pt") || has_suffix(path, ".bin"))
        return MSH_FORMAT_PTH;
    if (has_suffix(path, ".onnx"))
        return MSH_FORMAT_ONNX;
    return MSH_FORMAT_AUTO;
}

static const char *format_phrase(msh_format f) {
    switch (f) {
    case MSH_FORMAT_ONNX: return "an ONNX model";
    case MSH_FORMAT_PTH: return "a weights-only .pth";
    case MSH_FORMAT_SAFETENSORS: return "a safetensors file";
    case MSH_FORMAT_HF_FOLDER: return "a Hugging Face model folder";
    case MSH_FORMAT_AUTO: break;
    }
    return "a model";
}

/* The output's name against the options and the input (msh_convert_check). */
static msh_status check_out_name(const msh_convert_options *opt, msh_format input,
                                 const char *out_path, msh_option *bad, msh_error *err) {
    msh_format want = name_format(out_path);
    if (want == MSH_FORMAT_AUTO || input == MSH_FORMAT_AUTO)
        return MSH_OK;
    const char *why = NULL;
    char buf[160];
    if (input == MSH_FORMAT_HF_FOLDER && want != MSH_FORMAT_SAFETENSORS) {
        why = "a Hugging Face model folder is written as a folder of safetensors shards";
    } else if (opt->out_format != MSH_FORMAT_AUTO && opt->out_format != (int)want) {
        snprintf(buf, sizeof buf, "out_format (--format) is %s",
                 msh_format_name((msh_format)opt->out_format));
        why = buf;
    } else if (input == MSH_FORMAT_ONNX && want != MSH_FORMAT_ONNX) {
        why = "the input is an ONNX model, which is written as ONNX";
    } else if (input != MSH_FORMAT_ONNX && input != MSH_FORMAT_HF_FOLDER &&
               want == MSH_FORMAT_ONNX) {
        snprintf(buf, sizeof buf,
                 "the input is %s, which is written as safetensors or a "
                 "weights-only .pth",
                 input == MSH_FORMAT_PTH ? "a PyTorch checkpoint" : "a safetensors file");
        why = buf;
    }
    if (!why)
        return MSH_OK;
    if (bad)
        *bad = MSH_OPTION_OUT_FORMAT;
    return msh_fail(err, MSH_ERR_USAGE, "output %s names %s, but %s", out_path, format_phrase(want),
                    why);
}

/* Every op type of block_ops must be one of an ONNX schema (any domain, any version): a name
 * that is in none would block nothing, and nodes of custom domains always stay FP32. */
static msh_status check_block_ops(const char *list, msh_error *err) {
    size_t n_schemas;
    const msh_op_schema *t = msh_op_schema_table(&n_schemas);
    for (const char *p = list; *p;) {
        size_t n = strcspn(p, ",");
        const char *close = NULL; /* the same name but for case */
        int found = n == 0;       /* an empty item blocks nothing and names nothing */
        if ((n == 11 && strncmp(p, "MatMulNBits", n) == 0) ||
            (n == 20 && strncmp(p, "GatherBlockQuantized", n) == 0))
            found = 1; /* com.microsoft's, which the float pass runs in FP16 (fp16.c) */
        for (size_t i = 0; i < n_schemas && !found; i++) {
            if (strlen(t[i].name) != n)
                continue;
            if (strncmp(t[i].name, p, n) == 0)
                found = 1;
            else if (!close && strncasecmp(t[i].name, p, n) == 0)
                close = t[i].name;
        }
        if (!found) {
            char hint[96] = "";
            if (close)
                snprintf(hint, sizeof hint, " (did you mean '%s'?)", close);
            return msh_fail(err, MSH_ERR_USAGE,
                            "block_ops: op type '%.*s' is in no ONNX operator schema%s; nodes of "
                            "custom domains always stay FP32, so blocking one would change "
                            "nothing",
                            (int)(n < 200 ? n : 200), p, hint);
        }
        p += n;
        if (*p == ',')
            p++;
    }
    return MSH_OK;
}

msh_status msh_convert_check(const msh_convert_options *opt_in, msh_format input,
                             const char *out_path, msh_option *bad, msh_error *err) {
    if (bad)
        *bad = MSH_OPTION_NONE;
    msh_convert_options o; /* the caller's, grown to this library's struct */
    MSH_FORWARD(options_effective(opt_in, &o, err));
    const msh_convert_options *opt = &o;
    msh_convert_options d;
    msh_convert_options_init(&d);
    msh_option set[32];
    size_t n = 0;
    if (opt->dedup_graph_inputs)
        set[n++] = MSH_OPTION_DEDUP_GRAPH_INPUTS;
    if (opt->external_data)
        set[n++] = MSH_OPTION_EXTERNAL_DATA;
    if (opt->external_threshold != d.external_threshold)
        set[n++] = MSH_OPTION_EXTERNAL_THRESHOLD;
    if (opt->keep_io_types != d.keep_io_types)
        set[n++] = MSH_OPTION_KEEP_IO_TYPES;
    if (opt->block_ops && *opt->block_ops)
        set[n++] = MSH_OPTION_BLOCK_OPS;
    if (opt->block_nodes && *opt->block_nodes)
        set[n++] = MSH_OPTION_BLOCK_NODES;
    if (opt->int8)
        set[n++] = MSH_OPTION_INT8;
    if (opt->int8_min_elements != d.int8_min_elements)
        set[n++] = MSH_OPTION_INT8_MIN_ELEMENTS;
    if (opt->int8_gather)
        set[n++] = MSH_OPTION_INT8_GATHER;
    if (opt->key)
        set[n++] = MSH_OPTION_KEY;
    if (opt->out_format != MSH_FORMAT_AUTO &&
        !(input == MSH_FORMAT_ONNX && opt->out_format == MSH_FORMAT_ONNX) &&
        !(input == MSH_FORMAT_HF_FOLDER && opt->out_format == MSH_FORMAT_SAFETENSORS))
        set[n++] = MSH_OPTION_OUT_FORMAT;
    if (opt->keep_outputs)
        set[n++] = MSH_OPTION_KEEP_OUTPUTS;
    if (opt->drop_outputs)
        set[n++] = MSH_OPTION_DROP_OUTPUTS;
    if (opt->keep_inputs)
        set[n++] = MSH_OPTION_KEEP_INPUTS;
    if (opt->allow_larger)
        set[n++] = MSH_OPTION_ALLOW_LARGER;
    if (opt->max_shard_bytes != d.max_shard_bytes)
        set[n++] = MSH_OPTION_MAX_SHARD_BYTES;
    if (opt->int4)
        set[n++] = MSH_OPTION_INT4;
    if (opt->int4_block != d.int4_block)
        set[n++] = MSH_OPTION_INT4_BLOCK;
    if (opt->int4_asym)
        set[n++] = MSH_OPTION_INT4_ASYM;
    if (opt->int4_min_elements != d.int4_min_elements)
        set[n++] = MSH_OPTION_INT4_MIN_ELEMENTS;
    if (opt->int4_gather)
        set[n++] = MSH_OPTION_INT4_GATHER;
    if (opt->int4_format != d.int4_format)
        set[n++] = MSH_OPTION_INT4_FORMAT;
    if (opt->int4_search)
        set[n++] = MSH_OPTION_INT4_SEARCH;
    if (bad)
        *bad = MSH_OPTION_NONE;
    if (opt->max_shard_bytes <= 0) {
        if (bad)
            *bad = MSH_OPTION_MAX_SHARD_BYTES;
        return msh_fail(err, MSH_ERR_USAGE, "max_shard_bytes must be at least 1");
    }
    if (opt->int4 && opt->int8) {
        if (bad)
            *bad = MSH_OPTION_INT4;
        return msh_fail(err, MSH_ERR_USAGE, "options int4 and int8 exclude each other");
    }
    if (opt->int4_block != 32 && opt->int4_block != 64 && opt->int4_block != 128) {
        if (bad)
            *bad = MSH_OPTION_INT4_BLOCK;
        return msh_fail(err, MSH_ERR_USAGE, "int4_block must be 32, 64 or 128 (not %d)",
                        opt->int4_block);
    }
    if (opt->int4_format != MSH_INT4_FORMAT_QDQ &&
        opt->int4_format != MSH_INT4_FORMAT_MATMULNBITS) {
        if (bad)
            *bad = MSH_OPTION_INT4_FORMAT;
        return msh_fail(err, MSH_ERR_USAGE, "int4_format must be QDQ or MATMULNBITS (not %d)",
                        opt->int4_format);
    }
    if (opt->int4_min_elements < 1) {
        if (bad)
            *bad = MSH_OPTION_INT4_MIN_ELEMENTS;
        return msh_fail(err, MSH_ERR_USAGE, "int4_min_elements must be at least 1");
    }
    /* options that refine another one need it: without it they would silently do nothing */
    msh_option needs = MSH_OPTION_NONE;
    const char *what = "float_type FP16 or BF16";
    int blocks_ops = opt->block_ops && *opt->block_ops;
    int blocks_nodes = opt->block_nodes && *opt->block_nodes;
    msh_option compute = !opt->keep_io_types ? MSH_OPTION_KEEP_IO_TYPES
                         : blocks_ops        ? MSH_OPTION_BLOCK_OPS
                         : blocks_nodes      ? MSH_OPTION_BLOCK_NODES
                                             : MSH_OPTION_NONE; /* what computes in FP32 */
    if (opt->fp16_clamp && opt->float_type != MSH_FLOAT_FP16) {
        needs = MSH_OPTION_FP16_CLAMP;
        what = "float_type FP16";
    } else if (opt->n_keep_fp32 && !opt->float_type) {
        needs = MSH_OPTION_KEEP_FP32;
    } else if (opt->storage_only && !opt->float_type) {
        needs = MSH_OPTION_STORAGE_ONLY;
    } else if (opt->allow_larger && !opt->float_type) {
        needs = MSH_OPTION_ALLOW_LARGER;
    } else if (compute != MSH_OPTION_NONE && !opt->float_type) {
        needs = compute;
    } else if (compute != MSH_OPTION_NONE && opt->storage_only) {
        needs = compute; /* storage-only computes every op in FP32 and keeps the graph's types */
        what = "FP16/BF16 compute (not storage_only)";
    } else if ((opt->int8_gather || opt->int8_min_elements != d.int8_min_elements) && !opt->int8) {
        needs = opt->int8_gather ? MSH_OPTION_INT8_GATHER : MSH_OPTION_INT8_MIN_ELEMENTS;
        what = "int8";
    } else if (!opt->int4 && (opt->int4_block != d.int4_block || opt->int4_asym ||
                              opt->int4_min_elements != d.int4_min_elements || opt->int4_gather ||
                              opt->int4_format != d.int4_format || opt->int4_search)) {
        needs = opt->int4_block != d.int4_block                 ? MSH_OPTION_INT4_BLOCK
                : opt->int4_asym                                ? MSH_OPTION_INT4_ASYM
                : opt->int4_min_elements != d.int4_min_elements ? MSH_OPTION_INT4_MIN_ELEMENTS
                : opt->int4_gather                              ? MSH_OPTION_INT4_GATHER
                : opt->int4_search                              ? MSH_OPTION_INT4_SEARCH
                                                                : MSH_OPTION_INT4_FORMAT;
        what = "int4";
    } else if (opt->keep_inputs && !opt->keep_outputs && !opt->drop_outputs) {
        needs = MSH_OPTION_KEEP_INPUTS;
        what = "keep_outputs or drop_outputs";
    } else if (opt->dedup_graph_inputs && !opt->dedup) {
        needs = MSH_OPTION_DEDUP_GRAPH_INPUTS;
        what = "dedup";
    }
    if (needs != MSH_OPTION_NONE) {
        if (bad)
            *bad = needs;
        return msh_fail(err, MSH_ERR_USAGE, "option %s needs %s", msh_option_name(needs), what);
    }
    if (opt->block_ops) {
        msh_status st = check_block_ops(opt->block_ops, err);
        if (st != MSH_OK) {
            if (bad)
                *bad = MSH_OPTION_BLOCK_OPS;
            return st;
        }
    }
    for (size_t i = 0; i < n; i++)
        if (!msh_option_applies(set[i], input)) {
            if (bad)
                *bad = set[i];
            if (set[i] == MSH_OPTION_OUT_FORMAT)
                return msh_fail(err, MSH_ERR_USAGE, "out_format %s does not apply to %s inputs",
                                msh_format_name((msh_format)opt->out_format),
                                msh_format_name(input));
            return msh_fail(err, MSH_ERR_USAGE, "option %s does not apply to %s inputs",
                            msh_option_name(set[i]), msh_format_name(input));
        }
    if (input != MSH_FORMAT_ONNX && opt->out_format == MSH_FORMAT_ONNX) {
        if (bad)
            *bad = MSH_OPTION_OUT_FORMAT;
        return msh_fail(err, MSH_ERR_USAGE, "out_format onnx does not apply to %s inputs",
                        msh_format_name(input));
    }
    return check_out_name(opt, input, out_path, bad, err);
}

/* ---- checkpoints: torch.save archives and safetensors ---- */

typedef struct ckpt_wctx {
    const char *out_path;
    const char *metadata;
    msh_st_out *items;
    size_t n_items;
    msh_pthw_tensor *pt;
    size_t n_pt;
    msh_pthw_storage *ps;
    size_t n_ps;
    int64_t bytes_out;
} ckpt_wctx;

static msh_status ckpt_write_st(void *arg, msh_bytes_fn fn, void *fnctx, msh_error *e) {
    ckpt_wctx *w = arg;
    return msh_st_write(w->out_path, w->metadata, w->items, w->n_items, fn, fnctx, &w->bytes_out,
                        e);
}

static msh_status ckpt_write_pth(void *arg, msh_bytes_fn fn, void *fnctx, msh_error *e) {
    ckpt_wctx *w = arg;
    return msh_pth_write(w->out_path, w->pt, w->n_pt, w->ps, w->n_ps, fn, fnctx, &w->bytes_out, e);
}

/* One attempt at a checkpoint on one backend: strip to the state dict, dedup, precision, then
 * the engine makes the bytes that the safetensors or .pth writer places. */
static msh_status convert_ckpt(const char *in_path, const char *out_path, msh_format kind,
                               const msh_convert_options *opt, int backend, attempt *a,
                               msh_convert_result *res, msh_error *err) {
    memset(res, 0, sizeof *res);
    msh_status st = check_paths(NULL, in_path, out_path, err);
    if (st != MSH_OK)
        return st;
    msh_pth p;
    msh_st_file f;
    memset(&p, 0, sizeof p);
    memset(&f, 0, sizeof f);
    p.fd = f.fd = -1;
    msh_table tab;
    int64_t bytes_in = 0;
    const char *metadata = NULL;
    if (kind == MSH_FORMAT_PTH) {
        st = msh_pth_open(&p, in_path, opt->key, err);
        if (st == MSH_OK && !p.sd_key && p.n_cand >= 2) {
            char keys[400];
            msh_pth_top_keys(&p, keys, sizeof keys);
            st = msh_fail(err, MSH_ERR_USAGE, "%s; name one with --key", keys);
        } else if (st == MSH_OK && !p.sd_key) {
            char keys[400];
            msh_pth_top_keys(&p, keys, sizeof keys);
            st = msh_fail(err, MSH_ERR_USAGE,
                          "no model state dict found (top-level keys: %s); name its key",
                          *keys ? keys : "none");
        }
        if (st == MSH_OK && p.n_cand >= 2) {
            size_t w = (size_t)snprintf(res->state_dict, sizeof res->state_dict,
                                        "%s (also in the file:", p.sd_key);
            int k = 0;
            for (size_t i = 0; i < p.n_cand && w < sizeof res->state_dict; i++)
                if (!p.cand[i].chosen)
                    w += (size_t)snprintf(res->state_dict + w, sizeof res->state_dict - w, "%s %s",
                                          k++ ? "," : "", p.cand[i].key);
            if (w < sizeof res->state_dict)
                snprintf(res->state_dict + w, sizeof res->state_dict - w, ")");
        }
        tab = msh_pth_table(&p);
        bytes_in = p.file_size;
    } else {
        st = msh_st_open(&f, in_path, err);
        tab = msh_st_table(&f);
        bytes_in = f.file_size;
        metadata = f.metadata;
    }
    int out_pth = opt->out_format == MSH_FORMAT_PTH;
    msh_engine *eng = NULL;
    if (st == MSH_OK)
        st = engine_for(opt, backend, in_path, &eng, err);
    msh_ckpt_plan plan;
    memset(&plan, 0, sizeof plan);
    if (st == MSH_OK) {
        msh_ckpt_opts co = {opt->float_type, opt->dedup,     out_pth,          a->keep,
                            a->n_keep,       opt->keep_fp32, opt->n_keep_fp32, 0};
        st = msh_ckpt_plan_make(&tab, &co, eng, &plan, err);
    }
    ckpt_wctx w;
    memset(&w, 0, sizeof w);
    w.out_path = out_path;
    w.metadata = metadata;
    size_t *order = NULL;
    if (st == MSH_OK) {
        order = malloc((plan.n + 1) * sizeof *order);
        w.items = calloc(plan.n + 1, sizeof *w.items);
        w.pt = calloc(plan.n + 1, sizeof *w.pt);
        w.ps = calloc(plan.n_storage + 1, sizeof *w.ps);
        if (!order || !w.items || !w.pt || !w.ps)
            st = msh_fail(err, MSH_ERR_NOMEM, "out of memory");
    }
    size_t n_order = 0;
    if (st == MSH_OK && !out_pth) {
        for (size_t k = 0; k < plan.n; k++) {
            const msh_tentry *t = msh_table_at(&tab, plan.sel[k]);
            w.items[k] = (msh_st_out){t->name,
                                      t->out_dtype ? t->out_dtype : t->dtype,
                                      t->shape,
                                      t->ndim,
                                      msh_tentry_out_bytes(t),
                                      plan.sel[k]};
            if (w.items[k].nbytes > 0)
                order[n_order++] = plan.sel[k];
        }
        w.n_items = plan.n;
    } else if (st == MSH_OK) {
        for (size_t k = 0; k < plan.n; k++) {
            const msh_tentry *t = msh_table_at(&tab, plan.sel[k]);
            w.pt[k] = (msh_pthw_tensor){t->name, plan.storage_of[k], t->shape, t->ndim};
        }
        w.n_pt = plan.n;
        for (size_t s = 0; s < plan.n_storage; s++) {
            const msh_tentry *r = msh_table_at(&tab, plan.rep[s]);
            w.ps[s] = (msh_pthw_storage){r->out_dtype ? r->out_dtype : r->dtype, r->numel,
                                         msh_tentry_out_bytes(r), plan.rep[s]};
            if (w.ps[s].nbytes > 0)
                order[n_order++] = plan.rep[s];
        }
        w.n_ps = plan.n_storage;
    }
    run_stats rs = {0, 0};
    if (st == MSH_OK)
        st = run_jobs(eng, &tab, order, n_order, out_pth ? ckpt_write_pth : ckpt_write_st, &w, a,
                      &rs, err);
    res->float_clamped = rs.clamped;
    res->float_subnormal = rs.subnormal;
    if (st == MSH_OK) {
        res->bytes_in = bytes_in;
        res->bytes_out = w.bytes_out;
        res->float_tensors = plan.float_tensors;
        res->float_saved_bytes = plan.float_saved;
        res->float_kept_range = plan.kept_range;
        res->float_kept_user = plan.kept_user;
        if (opt->float_type && plan.float_tensors == 0)
            snprintf(res->float_why, sizeof res->float_why, "%s",
                     plan.kept_range + plan.kept_user ? "every FP32 tensor is kept FP32"
                                                      : "no FP32 tensors");
        res->dedup_merged = out_pth ? plan.dup_tensors : 0;
        res->dedup_saved_bytes = out_pth ? plan.dup_bytes : 0;
        res->dedup_unshared = out_pth ? 0 : plan.dup_tensors;
        res->dedup_unshared_bytes = out_pth ? 0 : plan.dup_bytes;
        if (kind == MSH_FORMAT_PTH)
            res->strip_saved_bytes =
                res->bytes_in - res->bytes_out - res->float_saved_bytes - res->dedup_saved_bytes;
        snprintf(res->device, sizeof res->device, "%s", msh_engine_device(eng));
        snprintf(res->format, sizeof res->format, "%s", msh_format_name(kind));
    }
    free(order);
    free(w.items);
    free(w.pt);
    free(w.ps);
    msh_ckpt_plan_free(&plan);
    msh_engine_close(eng);
    msh_pth_free(&p);
    msh_st_free(&f);
    return st;
}

/* ---- Hugging Face model folders: all shards as one checkpoint ---- */

typedef struct hf_wctx {
    const char *out_path;
    const msh_hf *h;
    const msh_st_out *items;
    size_t n_items;
    int64_t max_shard;
    const char **tied_from, **tied_to;
    size_t n_tied;
    msh_hf_write_result wr;
} hf_wctx;

static msh_status hf_write_cb(void *arg, msh_bytes_fn fn, void *fnctx, msh_error *e) {
    hf_wctx *w = arg;
    return msh_hf_write(w->out_path, w->h, w->items, w->n_items, w->max_shard, w->tied_from,
                        w->tied_to, w->n_tied, fn, fnctx, &w->wr, e);
}

/* One attempt at a model folder on one backend: the shards' state dicts are one table, planned
 * like a checkpoint (strip, dedup, precision) with tied keys written once; the engine makes the
 * bytes that the folder writer places in shards. */
static msh_status convert_hf(const char *in_path, const char *out_path,
                             const msh_convert_options *opt, int backend, attempt *a,
                             msh_convert_result *res, msh_error *err) {
    memset(res, 0, sizeof *res);
    msh_hf h;
    memset(&h, 0, sizeof h);
    msh_status st = msh_hf_check_output(in_path, out_path, err);
    if (st == MSH_OK)
        st = msh_hf_open(&h, in_path, err);
    msh_table tab = msh_hf_table(&h);
    msh_engine *eng = NULL;
    if (st == MSH_OK)
        st = engine_for(opt, backend, in_path, &eng, err);
    msh_ckpt_plan plan;
    memset(&plan, 0, sizeof plan);
    if (st == MSH_OK) {
        msh_ckpt_opts co = {opt->float_type, opt->dedup,       0, a->keep, a->n_keep,
                            opt->keep_fp32,  opt->n_keep_fp32, 1};
        st = msh_ckpt_plan_make(&tab, &co, eng, &plan, err);
    }
    hf_wctx w;
    memset(&w, 0, sizeof w);
    w.out_path = out_path;
    w.h = &h;
    w.max_shard = opt->max_shard_bytes;
    msh_st_out *items = NULL;
    size_t *order = NULL, n_order = 0;
    if (st == MSH_OK) {
        items = calloc(plan.n + 1, sizeof *items);
        order = malloc((plan.n + 1) * sizeof *order);
        w.tied_from = calloc(plan.n + 1, sizeof *w.tied_from);
        w.tied_to = calloc(plan.n + 1, sizeof *w.tied_to);
        if (!items || !order || !w.tied_from || !w.tied_to)
            st = msh_fail(err, MSH_ERR_NOMEM, "out of memory");
    }
    for (size_t k = 0; st == MSH_OK && k < plan.n; k++) {
        const msh_tentry *t = msh_table_at(&tab, plan.sel[k]);
        if (plan.tied_to[k] != MSH_CKPT_UNTIED) {
            w.tied_from[w.n_tied] = t->name;
            w.tied_to[w.n_tied++] = msh_table_at(&tab, plan.sel[plan.tied_to[k]])->name;
            continue;
        }
        items[w.n_items++] = (msh_st_out){t->name,
                                          t->out_dtype ? t->out_dtype : t->dtype,
                                          t->shape,
                                          t->ndim,
                                          msh_tentry_out_bytes(t),
                                          plan.sel[k]};
        if (items[w.n_items - 1].nbytes > 0)
            order[n_order++] = plan.sel[k];
    }
    w.items = items;
    run_stats rs = {0, 0};
    if (st == MSH_OK)
        st = run_jobs(eng, &tab, order, n_order, hf_write_cb, &w, a, &rs, err);
    res->float_clamped = rs.clamped;
    res->float_subnormal = rs.subnormal;
    if (st == MSH_OK) {
        res->bytes_in = h.bytes_in;
        res->bytes_out = w.wr.bytes_out;
        res->float_tensors = plan.float_tensors;
        res->float_saved_bytes = plan.float_saved;
        res->float_kept_range = plan.kept_range;
        res->float_kept_user = plan.kept_user;
        if (opt->float_type && plan.float_tensors == 0)
            snprintf(res->float_why, sizeof res->float_why, "%s",
                     plan.kept_range + plan.kept_user ? "every FP32 tensor is kept FP32"
                                                      : "no FP32 tensors");
        res->dedup_unshared = plan.dup_tensors;
        res->dedup_unshared_bytes = plan.dup_bytes;
        if (h.weights == MSH_FORMAT_PTH) { /* what torch.save kept besides the tensors */
            int64_t strip = res->bytes_in - res->bytes_out - res->float_saved_bytes;
            res->strip_saved_bytes = strip > 0 ? strip : 0;
        }
        res->shards_in = (int64_t)h.n_shards;
        res->shards_out = w.wr.shards;
        res->tied_tensors = plan.tied;
        res->files_copied = w.wr.files_copied;
        snprintf(res->note, sizeof res->note, "%s", h.note);
        snprintf(res->device, sizeof res->device, "%s", msh_engine_device(eng));
        snprintf(res->format, sizeof res->format, "%s", msh_format_name(MSH_FORMAT_HF_FOLDER));
    }
    free(items);
    free(order);
    free(w.tied_from);
    free(w.tied_to);
    msh_ckpt_plan_free(&plan);
    msh_engine_close(eng);
    msh_hf_free(&h);
    return st;
}

/* Tensor bytes of a model (what the GPU would move): the file, and an ONNX model's external
 * data; a model folder's weight files. */
static int64_t work_bytes(const char *path, msh_format kind) {
    struct stat sb;
    if (kind == MSH_FORMAT_HF_FOLDER) {
        int64_t n = 0, t = 0;
        msh_error e;
        return msh_input_stat(path, &n, &t, &e) == MSH_OK ? n : 0;
    }
    int64_t n = stat(path, &sb) == 0 ? (int64_t)sb.st_size : 0;
    if (kind == MSH_FORMAT_ONNX) {
        char **loc = NULL;
        size_t nl = 0;
        msh_error e;
        if (msh_onnx_external_files(path, &loc, &nl, &e) == MSH_OK) {
            char *dir = msh_path_dir(path);
            for (size_t i = 0; i < nl; i++) {
                char *full = dir ? malloc(strlen(dir) + strlen(loc[i]) + 2) : NULL;
                if (full) {
                    sprintf(full, "%s/%s", dir, loc[i]);
                    if (stat(full, &sb) == 0)
                        n += (int64_t)sb.st_size;
                }
                free(full);
                free(loc[i]);
            }
            free(loc);
            free(dir);
        }
    }
    return n;
}

static msh_status convert_once(const char *in_path, const char *out_path, msh_format kind,
                               const msh_convert_options *opt, int backend, attempt *a,
                               msh_convert_result *res, msh_error *err) {
    if (err) {
        err->msg[0] = 0;
        err->status = MSH_OK;
    }
    if (kind == MSH_FORMAT_ONNX)
        return convert_onnx(in_path, out_path, opt, backend, a, res, err);
    if (kind == MSH_FORMAT_HF_FOLDER)
        return convert_hf(in_path, out_path, opt, backend, a, res, err);
    return convert_ckpt(in_path, out_path, kind, opt, backend, a, res, err);
}

/* A model on one backend, attempted until the plan holds: after the range test's verdict, and
 * without INT8 or the float conversion where they made the file larger (at most four). */
static msh_status convert_on(const char *in_path, const char *out_path, msh_format kind,
                             const msh_convert_options *opt, int backend, msh_convert_result *res,
                             msh_error *err) {
    attempt a;
    memset(&a, 0, sizeof a);
    a.check_range = opt->float_type == MSH_FLOAT_FP16 && !opt->fp16_clamp;
    msh_status st = convert_once(in_path, out_path, kind, opt, backend, &a, res, err);
    for (int tries = 0; tries < 4; tries++) {
        if (st == MSH_RETRY_RANGE)
            a.check_range = 0; /* what the scan could not attribute is clamped, and counted */
        else if (st == MSH_RETRY_LARGER)
            a.no_float = 1;
        else if (st == MSH_RETRY_INT8)
            a.no_int8 = 1;
        else
            break;
        st = convert_once(in_path, out_path, kind, opt, backend, &a, res, err);
    }
    if (st == MSH_OK) {
        res->float_kept_above = a.kept_above;
        res->float_kept_max = a.kept_max;
    }
    free(a.keep);
    return st;
}

/* msh_convert_file with this library's options and result. */
static msh_status convert_file(const char *in_path, const char *out_path,
                               const msh_convert_options *opt, msh_convert_result *res,
                               msh_error *err) {
    msh_format kind = sniff(in_path);
    msh_status st = MSH_OK;
    if (kind == MSH_FORMAT_AUTO) /* a folder that is not a model folder: say why */
        st = msh_fail(err, MSH_ERR_USAGE,
                      "a folder, and not a Hugging Face model folder (no model.safetensors, "
                      "model.safetensors.index.json, pytorch_model.bin or "
                      "pytorch_model.bin.index.json in it)");
    if (st == MSH_OK)
        st = msh_convert_check(opt, kind, out_path, NULL, err);
    /* the output's extension decides what a checkpoint is written as */
    msh_convert_options eff = *opt;
    if (st == MSH_OK && eff.out_format == MSH_FORMAT_AUTO &&
        (kind == MSH_FORMAT_PTH || kind == MSH_FORMAT_SAFETENSORS))
        eff.out_format = name_format(out_path);
    opt = &eff;
    char *out_dir = NULL; /* a model folder's output, without trailing slashes */
    if (st == MSH_OK && kind == MSH_FORMAT_HF_FOLDER) {
        size_t n = strlen(out_path);
        while (n > 1 && out_path[n - 1] == '/')
            n--;
        out_dir = malloc(n + 1);
        if (!out_dir) {
            st = msh_fail(err, MSH_ERR_NOMEM, "out of memory");
        } else {
            memcpy(out_dir, out_path, n);
            out_dir[n] = 0;
            out_path = out_dir;
        }
    }
    if (st == MSH_OK && kind == MSH_FORMAT_HF_FOLDER)
        st = msh_hf_check_output(in_path, out_path, err);
    if (st == MSH_OK && opt->float_type &&
        (!(opt->fp16_min > 0.0f) || !(opt->fp16_max >= opt->fp16_min) ||
         !(opt->fp16_max <= 3.4028234663852886e+38f)))
        st = msh_fail(err, MSH_ERR_USAGE, "FP16 bounds must satisfy 0 < min <= max < inf");
    int backend = MSH_BACKEND_CPU;
    if (st == MSH_OK)
        st = msh_device_choose(opt->device, opt->verify, work_bytes(in_path, kind), &backend, err);
    if (st == MSH_OK) {
        st = convert_on(in_path, out_path, kind, opt, backend, res, err);
        if (st == MSH_ERR_CUDA && backend == MSH_BACKEND_CUDA) {
            /* Never a wrong output: the GPU is given up for the rest of the run and this model
             * is converted again, from the start, on the CPU (the failed attempt left no file). */
            char why[sizeof err->msg];
            memcpy(why, err->msg, sizeof why);
            msh_device_disable_cuda();
            st = convert_on(in_path, out_path, kind, opt, MSH_BACKEND_CPU, res, err);
            if (st == MSH_OK)
                snprintf(res->note, sizeof res->note,
                         "CUDA failed (%.160s); redone on the CPU, which runs the rest", why);
        }
    }
    free(out_dir);
    return st;
}

msh_status msh_convert_file(const char *in_path, const char *out_path,
                            const msh_convert_options *opt, msh_convert_result *res,
                            msh_error *err) {
    if (err) {
        err->msg[0] = 0;
        err->status = MSH_OK;
    }
    msh_convert_options eff;
    msh_status st = options_effective(opt, &eff, err);
    if (st != MSH_OK) { /* the sizes themselves are wrong: `res` cannot be written safely */
        msh_error_prefix(err, in_path);
        return st;
    }
    msh_convert_result full;
    memset(&full, 0, sizeof full);
    /* the writers check the token where they check msh_cancel_request */
    const msh_cancel_token *prev = msh_cancel_scope_enter(eff.cancel);
    st = msh_cancel_check(eff.cancel, err);
    if (st == MSH_OK)
        st = convert_file(in_path, out_path, &eff, &full, err);
    msh_cancel_scope_leave(prev);
    size_t n = opt ? eff.result_size : RESULT_SIZE_FIRST;
    if (n > sizeof full)
        n = sizeof full; /* a newer caller's fields beyond are left as they were */
    full.struct_size = n;
    memcpy(res, &full, n);
    if (st != MSH_OK)
        msh_error_prefix(err, in_path);
    return st;
}

msh_status msh_onnx_external_files(const char *path, char ***locations, size_t *n, msh_error *err) {
    *locations = NULL;
    *n = 0;
    if (sniff(path) != MSH_FORMAT_ONNX)
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

/* Any supported file, opened for reading its tensor table. */
typedef struct any_model {
    msh_format kind;
    msh_onnx_model onnx;
    msh_pth pth;
    msh_st_file st;
    msh_hf hf;
    msh_table tab;
} any_model;

static void any_free(any_model *a) {
    if (a->kind == MSH_FORMAT_ONNX)
        msh_onnx_model_free(&a->onnx);
    else if (a->kind == MSH_FORMAT_PTH)
        msh_pth_free(&a->pth);
    else if (a->kind == MSH_FORMAT_SAFETENSORS)
        msh_st_free(&a->st);
    else if (a->kind == MSH_FORMAT_HF_FOLDER)
        msh_hf_free(&a->hf);
    a->kind = MSH_FORMAT_AUTO;
}

static msh_status any_open(any_model *a, const char *path, msh_error *err) {
    memset(a, 0, sizeof *a);
    a->kind = sniff(path);
    msh_status st;
    if (a->kind == MSH_FORMAT_SAFETENSORS) {
        st = msh_st_open(&a->st, path, err);
        a->tab = msh_st_table(&a->st);
    } else if (a->kind == MSH_FORMAT_PTH) {
        st = msh_pth_open(&a->pth, path, NULL, err);
        a->tab = msh_pth_table(&a->pth);
    } else if (a->kind == MSH_FORMAT_HF_FOLDER || is_dir(path)) {
        a->kind = MSH_FORMAT_HF_FOLDER;
        st = msh_hf_open(&a->hf, path, err);
        a->tab = msh_hf_table(&a->hf);
    } else {
        st = msh_onnx_model_open(&a->onnx, path, err);
        a->tab = msh_onnx_table(&a->onnx);
    }
    if (st != MSH_OK)
        msh_error_prefix(err, path);
    return st;
}

msh_status msh_diff_files(const char *path_a, const char *path_b, char **json_out, int *identical,
                          msh_error *err) {
    *json_out = NULL;
    *identical = 0;
    any_model a, b;
    msh_status st = any_open(&a, path_a, err);
    if (st == MSH_OK)
        st = any_open(&b, path_b, err);
    else
        memset(&b, 0, sizeof b);
    cJSON *o = cJSON_CreateObject();
    if (st == MSH_OK && !o)
        st = msh_fail(err, MSH_ERR_NOMEM, "out of memory");
    if (st == MSH_OK) {
        cJSON_AddStringToObject(o, "a", path_a);
        cJSON_AddStringToObject(o, "b", path_b);
        cJSON_AddStringToObject(o, "format_a", msh_format_name(a.kind));
        cJSON_AddStringToObject(o, "format_b", msh_format_name(b.kind));
        st = msh_diff_tables(&a.tab, &b.tab, o, identical, err);
        if (st != MSH_OK)
            msh_error_prefix(err, path_a);
    }
    if (st == MSH_OK && !(*json_out = cJSON_PrintUnformatted(o)))
        st = msh_fail(err, MSH_ERR_NOMEM, "out of memory");
    cJSON_Delete(o);
    any_free(&a);
    any_free(&b);
    return st;
}

/* The inspect report of `path` as a JSON tree (`*out`, the caller's to cJSON_Delete): what
 * msh_inspect_file prints and msh_inspect reads its struct from, so the two always agree. */
static msh_status inspect_json(const char *path, int list, cJSON **out, msh_error *err) {
    msh_convert_options dflt;
    msh_convert_options_init(&dflt);
    *out = NULL;
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return msh_fail(err, MSH_ERR_NOMEM, "%s: out of memory", path);
    cJSON_AddNumberToObject(o, "schema_version", MSH_INSPECT_SCHEMA_VERSION);
    cJSON_AddStringToObject(o, "path", path);
    msh_format kind = sniff(path);
    msh_engine *eng = NULL;
    msh_status st = engine_for(&dflt, MSH_BACKEND_CPU, NULL, &eng, err);
    if (st == MSH_OK && kind == MSH_FORMAT_SAFETENSORS) {
        msh_st_file f;
        st = msh_st_open(&f, path, err);
        if (st == MSH_OK)
            st = msh_inspect_st(&f, eng, list, o, err);
        msh_st_free(&f);
    } else if (st == MSH_OK && kind == MSH_FORMAT_PTH) {
        msh_pth p;
        st = msh_pth_open(&p, path, NULL, err);
        if (st == MSH_OK)
            st = msh_inspect_pth(&p, eng, list, o, err);
        msh_pth_free(&p);
    } else if (st == MSH_OK && (kind == MSH_FORMAT_HF_FOLDER || is_dir(path))) {
        msh_hf h;
        st = msh_hf_open(&h, path, err); /* a folder that is not a model folder says so */
        if (st == MSH_OK)
            st = msh_inspect_hf(&h, eng, list, o, err);
        msh_hf_free(&h);
    } else if (st == MSH_OK) {
        msh_onnx_model m;
        msh_dedup_plan plan;
        memset(&plan, 0, sizeof plan);
        st = msh_onnx_model_open(&m, path, err);
        if (st == MSH_OK)
            st = msh_dedup_find(&m, 0, eng, &plan, err);
        if (st == MSH_OK)
            st = msh_inspect_onnx(&m, &plan, list, o, err);
        msh_dedup_plan_free(&plan);
        msh_onnx_model_free(&m);
    }
    msh_engine_close(eng);
    if (st == MSH_OK)
        *out = o;
    else
        cJSON_Delete(o);
    if (st != MSH_OK)
        msh_error_prefix(err, path);
    return st;
}

msh_status msh_inspect_file(const char *path, char **json_out, msh_error *err) {
    return msh_inspect_file_ex(path, 0, json_out, err);
}

msh_status msh_inspect_file_ex(const char *path, unsigned flags, char **json_out, msh_error *err) {
    *json_out = NULL;
    if (flags & ~(unsigned)MSH_INSPECT_TENSOR_LIST)
        return msh_fail(err, MSH_ERR_USAGE, "%s: unknown inspect flags 0x%x", path, flags);
    cJSON *o;
    MSH_FORWARD(inspect_json(path, (flags & MSH_INSPECT_TENSOR_LIST) != 0, &o, err));
    *json_out = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!*json_out)
        return msh_fail(err, MSH_ERR_NOMEM, "%s: out of memory", path);
    return MSH_OK;
}

/* An msh_inspect_info and what it points to: strings point into the report's JSON tree. */
typedef struct inspect_box {
    msh_inspect_info info; /* first: the caller's pointer is the box's */
    cJSON *json;
    msh_inspect_dtype *by_dtype;
    msh_inspect_tensor *largest;
    int64_t *shapes;
} inspect_box;

void msh_inspect_info_free(msh_inspect_info *info) {
    inspect_box *b = (inspect_box *)info;
    if (!b)
        return;
    cJSON_Delete(b->json);
    free(b->by_dtype);
    free(b->largest);
    free(b->shapes);
    free(b);
}

/* A number of the report (`a`, then `b` inside it when given), or -1 where it has none. */
static int64_t jnum(const cJSON *o, const char *a, const char *b) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, a);
    if (b)
        x = cJSON_GetObjectItemCaseSensitive(x, b);
    return cJSON_IsNumber(x) ? (int64_t)x->valuedouble : -1;
}

static const char *jstr(const cJSON *o, const char *key) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(x) ? x->valuestring : "";
}

/* The code of an element type as the report names it (-1: unknown). */
static int32_t dtype_code(const char *name) {
    for (int32_t c = 0; c < 64; c++)
        if (strcmp(msh_dtype_name(c), "UNKNOWN") != 0 && strcmp(msh_dtype_name(c), name) == 0)
            return c;
    return -1;
}

static msh_status info_from_json(cJSON *o, inspect_box *b, msh_error *err) {
    msh_inspect_info *in = &b->info;
    in->struct_size = sizeof *in;
    const char *fmt = jstr(o, "format");
    in->format = MSH_FORMAT_AUTO;
    for (int f = MSH_FORMAT_ONNX; f <= MSH_FORMAT_HF_FOLDER; f++)
        if (strcmp(fmt, msh_format_name((msh_format)f)) == 0)
            in->format = (msh_format)f;
    in->file_bytes = jnum(o, "file_bytes", NULL);
    in->tensor_bytes = jnum(o, "tensor_bytes", NULL);
    in->tensor_count = jnum(o, "tensor_count", NULL);
    in->weights_bytes = jnum(o, "breakdown", "weights");
    in->optimizer_state_bytes = jnum(o, "breakdown", "optimizer_state");
    in->other_tensor_bytes = jnum(o, "breakdown", "other_tensors");
    in->metadata_bytes = jnum(o, "breakdown", "metadata");
    in->overhead_bytes = jnum(o, "overhead_bytes", NULL);
    in->external_bytes = jnum(o, "external_bytes", NULL);
    in->header_bytes = jnum(o, "header_bytes", NULL);
    in->dup_groups = jnum(o, "duplicates", "groups");
    in->dup_tensors = jnum(o, "duplicates", "tensors");
    in->dup_saved_bytes = jnum(o, "duplicates", "saved_bytes");
    in->state_dict_key = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "state_dict_found"))
                             ? jstr(o, "state_dict_key")
                             : NULL;
    const cJSON *bd = cJSON_GetObjectItemCaseSensitive(o, "by_dtype");
    const cJSON *lg = cJSON_GetObjectItemCaseSensitive(o, "largest");
    size_t nd = (size_t)cJSON_GetArraySize(bd), nl = (size_t)cJSON_GetArraySize(lg), ns = 0;
    if (nl > MSH_INSPECT_LARGEST)
        nl = MSH_INSPECT_LARGEST;
    const cJSON *x;
    size_t k = 0;
    cJSON_ArrayForEach(x, lg) {
        if (k++ < nl)
            ns += (size_t)cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(x, "shape"));
    }
    b->by_dtype = calloc(nd + 1, sizeof *b->by_dtype);
    b->largest = calloc(nl + 1, sizeof *b->largest);
    b->shapes = calloc(ns + 1, sizeof *b->shapes);
    if (!b->by_dtype || !b->largest || !b->shapes)
        return msh_fail(err, MSH_ERR_NOMEM, "out of memory");
    k = 0;
    cJSON_ArrayForEach(x, bd) {
        if (k >= nd)
            break;
        msh_inspect_dtype *d = &b->by_dtype[k++];
        d->dtype = jstr(x, "dtype");
        d->code = dtype_code(d->dtype);
        d->count = jnum(x, "count", NULL);
        d->bytes = jnum(x, "bytes", NULL);
    }
    in->by_dtype = b->by_dtype;
    in->n_by_dtype = k;
    k = 0;
    size_t at = 0;
    cJSON_ArrayForEach(x, lg) {
        if (k >= nl)
            break;
        msh_inspect_tensor *t = &b->largest[k++];
        t->name = jstr(x, "name");
        t->dtype = jstr(x, "dtype");
        t->code = dtype_code(t->dtype);
        t->bytes = jnum(x, "bytes", NULL);
        t->shape = b->shapes + at;
        const cJSON *dim;
        cJSON_ArrayForEach(dim, cJSON_GetObjectItemCaseSensitive(x, "shape")) {
            if (at < ns && cJSON_IsNumber(dim)) {
                b->shapes[at++] = (int64_t)dim->valuedouble;
                t->ndim++;
            }
        }
    }
    in->largest = b->largest;
    in->n_largest = k;
    return MSH_OK;
}

msh_status msh_inspect(const char *path, msh_inspect_info **info, msh_error *err) {
    *info = NULL;
    inspect_box *b = calloc(1, sizeof *b);
    if (!b)
        return msh_fail(err, MSH_ERR_NOMEM, "%s: out of memory", path);
    msh_status st = inspect_json(path, 0, &b->json, err);
    if (st == MSH_OK) {
        st = info_from_json(b->json, b, err);
        if (st != MSH_OK)
            msh_error_prefix(err, path);
    }
    if (st != MSH_OK) {
        msh_inspect_info_free(&b->info);
        return st;
    }
    *info = &b->info;
    return MSH_OK;
}
