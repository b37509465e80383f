/* The public entry points: one model in, one model out (or a report). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "formats/onnx_model.h"
#include "formats/pth.h"
#include "formats/safetensors.h"
#include "kernels/msh_engine.h"
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

/* One attempt: `eng` is the GPU engine, or NULL for the CPU. */
static msh_status convert_once(const char *in_path, const char *out_path,
                               const msh_convert_options *opt, msh_convert_result *res,
                               const msh_engine *eng, msh_error *err) {
    memset(res, 0, sizeof *res);
    if (err) {
        err->msg[0] = 0;
        err->status = MSH_OK;
    }
    msh_status st = check_paths(NULL, in_path, out_path, err);
    if (st != MSH_OK)
        goto fail;
    msh_onnx_model m;
    st = msh_onnx_model_open(&m, in_path, err);
    if (st == MSH_OK)
        st = check_paths(&m, in_path, out_path, err);
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
        if (!(opt->fp16_min > 0.0f) || !(opt->fp16_max >= opt->fp16_min) ||
            !(opt->fp16_max <= 3.4028234663852886e+38f))
            st = msh_fail(err, MSH_ERR_USAGE, "FP16 bounds must satisfy 0 < min <= max < inf");
    }
    msh_fp16_opts fo = {opt->float_type,  opt->keep_io_types,      opt->block_ops,
                        opt->block_nodes, f32_bits(opt->fp16_min), f32_bits(opt->fp16_max)};
    if (st == MSH_OK && opt->float_type) {
        msh_fp16_stats fs;
        st = msh_fp16_apply(&m, &fo, &fs, err);
        res->float_tensors = fs.tensors;
        res->float_clamped = fs.clamped;
        res->float_casts = fs.casts;
        res->float_saved_bytes = fs.bytes_saved;
    }
    msh_onnx_write_opts wo = {opt->external_data || m.n_ext > 0, opt->external_threshold,
                              fo.f16_min_abs, fo.f16_max_abs, eng};
    if (wo.external_threshold < 0)
        wo.external_threshold = 0;
    if (st == MSH_OK && !wo.external) {
        int64_t size;
        st = msh_onnx_inline_size(&m, &size, err);
        if (st == MSH_OK && size > MSH_PROTOBUF_LIMIT) {
            wo.external = 1;
            snprintf(res->note, sizeof res->note,
                     "output would pass protobuf's 2 GiB limit; tensors written to %s.data",
                     out_path);
        }
    }
    msh_onnx_write_result wr;
    if (st == MSH_OK)
        st = msh_onnx_write(&m, out_path, &wo, &wr, err);
    if (st == MSH_OK) {
        res->bytes_in = m.file_size;
        for (size_t i = 0; i < m.n_ext; i++)
            res->bytes_in += m.ext[i].size;
        res->bytes_out = wr.model_bytes + wr.data_bytes;
        res->external_out = wr.external;
        res->float_clamped += wr.clamped;
    }
    msh_onnx_model_free(&m);
    if (st == MSH_OK)
        return MSH_OK;
fail:
    msh_error_prefix(err, in_path);
    return st;
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
    msh_engine eng = {0, opt->verify, NULL};
    struct stat sb;
    int64_t work = stat(in_path, &sb) == 0 ? (int64_t)sb.st_size : 0;
    size_t staging = (size_t)(opt->staging_mib > 0 ? opt->staging_mib : 64) << 20;
    msh_status st = msh_device_engine(opt->device, staging, work, &eng, err);
    if (st != MSH_OK) {
        msh_error_prefix(err, in_path);
        return st;
    }
    st = convert_once(in_path, out_path, opt, res, eng.cuda ? &eng : NULL, err);
    if (st == MSH_ERR_CUDA && eng.cuda) {
        /* Never a wrong output: the GPU is given up for the rest of the run and this model is
         * converted again, from the start, on the CPU (the failed attempt left no file). */
        char why[sizeof err->msg];
        memcpy(why, err->msg, sizeof why);
        msh_device_disable_cuda();
        st = convert_once(in_path, out_path, opt, res, NULL, err);
        if (st == MSH_OK)
            snprintf(res->note, sizeof res->note,
                     "CUDA failed (%.160s); redone on the CPU, which runs the rest", why);
        eng.cuda = 0;
    }
    snprintf(res->device, sizeof res->device, "%s", eng.cuda ? "cuda" : "cpu");
    snprintf(res->format, sizeof res->format, "onnx");
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
    msh_status st = msh_onnx_model_open(&m, path, err);
    msh_dedup_plan plan;
    memset(&plan, 0, sizeof plan);
    if (st == MSH_OK)
        st = msh_dedup_find(&m, 0, NULL, &plan, err);
    if (st == MSH_OK)
        st = msh_inspect_onnx(&m, &plan, o, err);
    msh_dedup_plan_free(&plan);
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
