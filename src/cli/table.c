#include "table.h"

#include <string.h>

static double num(const cJSON *o, const char *k) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(x) ? x->valuedouble : 0.0;
}

static const char *str(const cJSON *o, const char *k) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(x) ? x->valuestring : "";
}

void msh_cli_human_bytes(double n, char *buf, size_t cap) {
    const char *u[] = {"B", "kB", "MB", "GB", "TB", "PB"};
    int i = 0;
    /* 999,960 bytes is "1.0 MB", not "1000.0 kB": the unit steps up where one decimal would
     * round to 1000 */
    while (i < 5 && (i == 0 ? n >= 1000.0 : n >= 999.95)) {
        n /= 1000.0;
        i++;
    }
    if (i == 0)
        snprintf(buf, cap, "%.0f B", n);
    else
        snprintf(buf, cap, "%.1f %s", n, u[i]);
}

const char *msh_cli_plural(double n, const char *one, const char *many) {
    return n == 1.0 ? one : many;
}

static void human(double n, char *buf, size_t cap) {
    msh_cli_human_bytes(n, buf, cap);
}

static void shape(const cJSON *o, char *buf, size_t cap) {
    size_t w = 0;
    w += (size_t)snprintf(buf + w, cap - w, "[");
    const cJSON *d;
    int first = 1;
    cJSON_ArrayForEach(d, cJSON_GetObjectItemCaseSensitive(o, "shape")) {
        if (w >= cap - 24)
            break;
        w += (size_t)snprintf(buf + w, cap - w, "%s%.0f", first ? "" : ",", d->valuedouble);
        first = 0;
    }
    snprintf(buf + w, cap - w, "]");
}

/* "  N tensors" (with "in M storages" when views share them), aligned for the type rows. */
static void dtype_rows(const cJSON *list, FILE *out) {
    const cJSON *x;
    char a[32], cnt[64];
    cJSON_ArrayForEach(x, list) {
        double n = num(x, "count");
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(x, "storages");
        if (cJSON_IsNumber(st) && st->valuedouble != n)
            snprintf(cnt, sizeof cnt, "%.0f %s in %.0f %s", n,
                     msh_cli_plural(n, "tensor", "tensors"), st->valuedouble,
                     msh_cli_plural(st->valuedouble, "storage", "storages"));
        else
            snprintf(cnt, sizeof cnt, "%.0f %s", n, msh_cli_plural(n, "tensor", "tensors"));
        human(num(x, "bytes"), a, sizeof a);
        fprintf(out, "    %-14s %-26s %10s\n", str(x, "dtype"), cnt, a);
    }
}

/* "largest tensors:" rows of checkpoints, safetensors and model folders. */
static void largest_rows(const cJSON *r, FILE *out) {
    const cJSON *lg = cJSON_GetObjectItemCaseSensitive(r, "largest");
    if (cJSON_GetArraySize(lg) == 0)
        return;
    fprintf(out, "  largest tensors:\n");
    const cJSON *x;
    char a[32], sh[96];
    cJSON_ArrayForEach(x, lg) {
        human(num(x, "bytes"), a, sizeof a);
        shape(x, sh, sizeof sh);
        double views = num(x, "storage_views");
        const char *role = str(x, "role");
        fprintf(out, "    %12s  %-8s %-18s %s (%s", a, str(x, "dtype"), sh, str(x, "name"),
                strcmp(role, "optimizer_state") == 0  ? "optimizer state"
                : strcmp(role, "training_state") == 0 ? "training state"
                                                      : role);
        if (views > 1)
            fprintf(out, ", its storage viewed by %.0f tensors", views);
        fprintf(out, ")\n");
    }
}

static void print_pth(const cJSON *r, FILE *out) {
    char a[32], b[32], c[32], d[32], f[32];
    const cJSON *bd = cJSON_GetObjectItemCaseSensitive(r, "breakdown");
    human(num(r, "file_bytes"), f, sizeof f);
    human(num(bd, "weights"), a, sizeof a);
    human(num(bd, "optimizer_state"), b, sizeof b);
    human(num(bd, "other_tensors"), c, sizeof c);
    human(num(bd, "metadata"), d, sizeof d);
    const char *kind = str(r, "container");
    const cJSON *mc = cJSON_GetObjectItemCaseSensitive(r, "module_class");
    if (strcmp(kind, "TorchScript") == 0)
        fprintf(out, "%s: TorchScript module%s%s%s\n", str(r, "path"),
                cJSON_IsString(mc) ? " (" : "", cJSON_IsString(mc) ? mc->valuestring : "",
                cJSON_IsString(mc) ? ")" : "");
    else if (cJSON_IsString(mc))
        fprintf(out, "%s: PyTorch checkpoint%s, a whole module (%s)\n", str(r, "path"),
                strcmp(kind, "legacy") == 0 ? " (legacy format)" : "", mc->valuestring);
    else
        fprintf(out, "%s: PyTorch checkpoint%s\n", str(r, "path"),
                strcmp(kind, "legacy") == 0 ? " (legacy format)" : "");
    fprintf(out, "  %s = %s weights + %s optimizer state + %s other tensors + %s metadata\n", f, a,
            b, c, d);
    /* the state dict's rows, then the whole file's when it holds more than the state dict */
    const cJSON *sd = cJSON_GetObjectItemCaseSensitive(r, "state_dict");
    double nt = num(r, "tensor_count"), ns = num(r, "storage_count");
    if (cJSON_IsObject(sd)) {
        double st = num(sd, "tensors"), ss = num(sd, "storages");
        human(num(sd, "bytes"), a, sizeof a);
        fprintf(out, "  state dict %s: %.0f %s",
                *str(sd, "key")      ? str(sd, "key")
                : cJSON_IsString(mc) ? "(the module's parameters and buffers)"
                                     : "(the whole file)",
                st, msh_cli_plural(st, "tensor", "tensors"));
        if (ss != st)
            fprintf(out, " in %.0f %s", ss, msh_cli_plural(ss, "storage", "storages"));
        fprintf(out, ", %s\n", a);
        dtype_rows(cJSON_GetObjectItemCaseSensitive(sd, "by_dtype"), out);
    } else {
        fprintf(out, "  no model state dict found (name one with convert --key)\n");
    }
    if (!cJSON_IsObject(sd) || num(sd, "tensors") != nt || num(sd, "storages") != ns) {
        human(num(r, "tensor_bytes"), a, sizeof a);
        fprintf(out, "  whole file: %.0f %s", nt, msh_cli_plural(nt, "tensor", "tensors"));
        if (ns != nt)
            fprintf(out, " in %.0f %s", ns, msh_cli_plural(ns, "storage", "storages"));
        fprintf(out, ", %s\n", a);
        dtype_rows(cJSON_GetObjectItemCaseSensitive(r, "by_dtype"), out);
    }
    const cJSON *x;
    const cJSON *cands = cJSON_GetObjectItemCaseSensitive(r, "state_dict_candidates");
    if (cJSON_GetArraySize(cands) >= 2) {
        fprintf(out, "  state dicts:");
        int k = 0;
        cJSON_ArrayForEach(x, cands) {
            double n = num(x, "tensors"), s = num(x, "storages");
            human(num(x, "storage_bytes"), a, sizeof a);
            fprintf(out, "%s %s (%.0f %s, %s", k++ ? "," : "", str(x, "key"), n,
                    msh_cli_plural(n, "tensor", "tensors"), a);
            if (s != n)
                fprintf(out, " in %.0f %s", s, msh_cli_plural(s, "storage", "storages"));
            fprintf(out, ")%s",
                    cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(x, "chosen")) ? " [chosen]" : "");
        }
        fprintf(out, "\n");
    }
    const cJSON *objs = cJSON_GetObjectItemCaseSensitive(r, "objects");
    if (cJSON_GetArraySize(objs) > 0 && strcmp(kind, "TorchScript") != 0) {
        fprintf(out, "  objects of other classes (metadata, never run):");
        int k = 0;
        cJSON_ArrayForEach(x, objs) {
            if (k == 6) {
                fprintf(out, ", ... (%d classes)", cJSON_GetArraySize(objs));
                break;
            }
            fprintf(out, "%s %s x%.0f", k++ ? "," : "", str(x, "class"), num(x, "count"));
        }
        fprintf(out, "\n");
    }
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(r, "shared_storage")) {
        const cJSON *names = cJSON_GetObjectItemCaseSensitive(x, "tensors");
        int n = cJSON_GetArraySize(names);
        human(num(x, "bytes"), a, sizeof a);
        fprintf(out, "  shared storage (%s, stored once), viewed by %d %s: %s%s%s%s\n", a, n,
                msh_cli_plural(n, "tensor", "tensors"), cJSON_GetArrayItem(names, 0)->valuestring,
                n > 1 ? ", " : "", n > 1 ? cJSON_GetArrayItem(names, 1)->valuestring : "",
                n > 2 ? ", ..." : "");
    }
    largest_rows(r, out);
}

static void print_st(const cJSON *r, FILE *out) {
    char a[32], b[32];
    human(num(r, "file_bytes"), a, sizeof a);
    human(num(r, "header_bytes"), b, sizeof b);
    double n = num(r, "tensor_count");
    fprintf(out, "%s: safetensors, %s: %.0f %s, %s header\n", str(r, "path"), a, n,
            msh_cli_plural(n, "tensor", "tensors"), b);
    dtype_rows(cJSON_GetObjectItemCaseSensitive(r, "by_dtype"), out);
    const cJSON *dup = cJSON_GetObjectItemCaseSensitive(r, "duplicates");
    double g = num(dup, "groups"), t = num(dup, "tensors");
    human(num(dup, "saved_bytes"), a, sizeof a);
    fprintf(out, "  duplicates: %.0f %s, %.0f redundant %s, %s\n", g,
            msh_cli_plural(g, "group", "groups"), t, msh_cli_plural(t, "tensor", "tensors"), a);
    largest_rows(r, out);
}

static void print_hf(const cJSON *r, FILE *out) {
    char a[32], b[32];
    const cJSON *x;
    human(num(r, "file_bytes"), a, sizeof a);
    double n_sh = num(r, "shard_count");
    int sharded = cJSON_IsString(cJSON_GetObjectItemCaseSensitive(r, "index"));
    fprintf(out, "%s: Hugging Face model folder, %s in %.0f %s file%s%s%s%s\n", str(r, "path"), a,
            n_sh, strcmp(str(r, "weights"), "pth") == 0 ? ".bin" : "safetensors",
            n_sh == 1 ? "" : "s", sharded ? " (index " : "", sharded ? str(r, "index") : "",
            sharded ? ")" : "");
    human(num(r, "tensor_bytes"), a, sizeof a);
    double keys = num(r, "tensor_count");
    fprintf(out, "  tensor data %s (%.0f %s; a tied key's bytes counted once)\n", a, keys,
            msh_cli_plural(keys, "key", "keys"));
    dtype_rows(cJSON_GetObjectItemCaseSensitive(r, "by_dtype"), out);
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(r, "tied")) {
        human(num(x, "bytes"), a, sizeof a);
        fprintf(out, "  tied: %s is %s (%s, written once)\n", str(x, "key"), str(x, "to"), a);
    }
    const cJSON *dup = cJSON_GetObjectItemCaseSensitive(r, "duplicates");
    double g = num(dup, "groups"), t = num(dup, "tensors");
    human(num(dup, "saved_bytes"), a, sizeof a);
    fprintf(out, "  duplicates (not tied): %.0f %s, %.0f redundant %s, %s\n", g,
            msh_cli_plural(g, "group", "groups"), t, msh_cli_plural(t, "tensor", "tensors"), a);
    fprintf(out, "  shards:\n");
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(r, "shards")) {
        double k = num(x, "tensors");
        human(num(x, "bytes"), b, sizeof b);
        fprintf(out, "    %-40s %8.0f %-7s %12s\n", str(x, "file"), k,
                msh_cli_plural(k, "tensor", "tensors"), b);
    }
    double of = num(r, "other_files");
    fprintf(out, "  other files: %.0f (copied as they are)\n", of);
    largest_rows(r, out);
    if (*str(r, "note"))
        fprintf(out, "  note: %s\n", str(r, "note"));
}

void msh_cli_print_table(const cJSON *r, FILE *out) {
    char a[32], b[32], c[32], sh[96];
    if (strcmp(str(r, "format"), "hf") == 0) {
        print_hf(r, out);
        return;
    }
    if (strcmp(str(r, "format"), "pth") == 0) {
        print_pth(r, out);
        return;
    }
    if (strcmp(str(r, "format"), "safetensors") == 0) {
        print_st(r, out);
        return;
    }
    double file = num(r, "file_bytes"), ext = num(r, "external_bytes");
    human(file + ext, a, sizeof a);
    fprintf(out, "%s: %s, ONNX IR %.0f, opsets", str(r, "path"), a, num(r, "ir_version"));
    const cJSON *x;
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(r, "opsets")) {
        const char *dom = str(x, "domain");
        fprintf(out, " %s %.0f", *dom ? dom : "ai.onnx", num(x, "version"));
    }
    fprintf(out, "\n");
    double tb = num(r, "tensor_bytes");
    human(tb, a, sizeof a);
    human(num(r, "overhead_bytes"), b, sizeof b);
    human(ext, c, sizeof c);
    double total = file + ext;
    double nt = num(r, "tensor_count");
    fprintf(out, "  %-22s %12s  %5.1f%%  (%.0f %s)\n", "tensor data", a,
            total > 0 ? 100.0 * tb / total : 0.0, nt, msh_cli_plural(nt, "tensor", "tensors"));
    fprintf(out, "  %-22s %12s  %5.1f%%\n", "graph + metadata", b,
            total > 0 ? 100.0 * num(r, "overhead_bytes") / total : 0.0);
    if (ext > 0)
        fprintf(out, "  %-22s %12s  (part of tensor data)\n", "in external files", c);
    fprintf(out, "  by element type:\n");
    dtype_rows(cJSON_GetObjectItemCaseSensitive(r, "by_dtype"), out);
    const cJSON *dup = cJSON_GetObjectItemCaseSensitive(r, "duplicates");
    double g = num(dup, "groups"), t = num(dup, "tensors");
    human(num(dup, "saved_bytes"), a, sizeof a);
    fprintf(out, "  duplicates: %.0f %s, %.0f redundant %s, dedup saves %s (%.1f%%)\n", g,
            msh_cli_plural(g, "group", "groups"), t, msh_cli_plural(t, "tensor", "tensors"), a,
            total > 0 ? 100.0 * num(dup, "saved_bytes") / total : 0.0);
    const cJSON *un = cJSON_GetObjectItemCaseSensitive(r, "unused");
    if (un && (num(un, "initializers") > 0 || num(un, "nodes") > 0)) {
        double ui = num(un, "initializers"), un_n = num(un, "nodes");
        human(num(un, "bytes"), a, sizeof a);
        fprintf(out, "  unused: %.0f %s (%s), %.0f %s (removed by convert)\n", ui,
                msh_cli_plural(ui, "initializer", "initializers"), a, un_n,
                msh_cli_plural(un_n, "node", "nodes"));
    }
    int shown = 0;
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(dup, "list")) {
        if (shown++ == 8) {
            fprintf(out, "    ...\n");
            break;
        }
        const cJSON *mem = cJSON_GetObjectItemCaseSensitive(x, "members");
        int n = cJSON_GetArraySize(mem);
        human(num(x, "bytes_each"), a, sizeof a);
        shape(x, sh, sizeof sh);
        fprintf(out, "    %d x %s %s (%s each): %s, %s%s\n", n, str(x, "dtype"), sh, a,
                cJSON_GetArrayItem(mem, 0)->valuestring,
                n > 1 ? cJSON_GetArrayItem(mem, 1)->valuestring : "", n > 2 ? ", ..." : "");
    }
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(r, "quantized");
    if (num(q, "tensors") > 0) {
        human(num(q, "bytes"), a, sizeof a);
        human(num(q, "scale_bytes"), b, sizeof b);
        human(num(q, "zero_point_bytes"), c, sizeof c);
        double qn = num(q, "tensors");
        fprintf(out, "  quantized: %.0f INT8 %s, %s, with %s of scales and %s of zero points\n", qn,
                msh_cli_plural(qn, "weight", "weights"), a, b, c);
    }
    const cJSON *q4 = cJSON_GetObjectItemCaseSensitive(q, "int4");
    if (num(q4, "tensors") > 0) {
        human(num(q4, "bytes"), a, sizeof a);
        human(num(q4, "scale_bytes"), b, sizeof b);
        human(num(q4, "zero_point_bytes"), c, sizeof c);
        double qn = num(q4, "tensors");
        fprintf(
            out,
            "  quantized: %.0f INT4 %s (%.0f DequantizeLinear, %.0f com.microsoft), %s, with %s "
            "of scales and %s of zero points\n",
            qn, msh_cli_plural(qn, "weight", "weights"), num(q4, "dequantize_linear"),
            num(q4, "com_microsoft"), a, b, c);
    }
    fprintf(out, "  largest tensors:\n");
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(r, "largest")) {
        human(num(x, "bytes"), a, sizeof a);
        shape(x, sh, sizeof sh);
        fprintf(out, "    %12s  %-8s %-18s %s (%s, %s)\n", a, str(x, "dtype"), sh, str(x, "name"),
                str(x, "location"), str(x, "graph"));
    }
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(r, "external")) {
        human(num(x, "bytes"), a, sizeof a);
        double et = num(x, "tensors");
        fprintf(out, "  external file %s: %.0f %s, %s\n", str(x, "location"), et,
                msh_cli_plural(et, "tensor", "tensors"), a);
    }
}
