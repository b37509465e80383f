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

static void human(double n, char *buf, size_t cap) {
    const char *u[] = {"B", "kB", "MB", "GB", "TB"};
    int i = 0;
    while (n >= 1000.0 && i < 4) {
        n /= 1000.0;
        i++;
    }
    if (i == 0)
        snprintf(buf, cap, "%.0f B", n);
    else
        snprintf(buf, cap, "%.1f %s", n, u[i]);
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
    const cJSON *found = cJSON_GetObjectItemCaseSensitive(r, "state_dict_found");
    if (cJSON_IsTrue(found))
        fprintf(out, "  state dict: %s (%.0f tensors in the file)\n",
                *str(r, "state_dict_key") ? str(r, "state_dict_key")
                : cJSON_IsString(mc)      ? "the module's parameters and buffers"
                                          : "the whole file",
                num(r, "tensor_count"));
    else
        fprintf(out, "  no model state dict found (name one with convert --key)\n");
    const cJSON *x;
    const cJSON *cands = cJSON_GetObjectItemCaseSensitive(r, "state_dict_candidates");
    if (cJSON_GetArraySize(cands) >= 2) {
        fprintf(out, "  state dicts:");
        int k = 0;
        cJSON_ArrayForEach(x, cands) {
            human(num(x, "bytes"), a, sizeof a);
            fprintf(out, "%s %s (%.0f tensors, %s)%s", k++ ? "," : "", str(x, "key"),
                    num(x, "tensors"), a,
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
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(r, "by_dtype")) {
        human(num(x, "bytes"), a, sizeof a);
        fprintf(out, "    %-14s %8.0f tensors %12s\n", str(x, "dtype"), num(x, "count"), a);
    }
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(r, "shared_storage")) {
        const cJSON *names = cJSON_GetObjectItemCaseSensitive(x, "tensors");
        human(num(x, "bytes"), a, sizeof a);
        fprintf(out, "  shared storage (%s): %s, %s%s\n", a,
                cJSON_GetArrayItem(names, 0)->valuestring,
                cJSON_GetArraySize(names) > 1 ? cJSON_GetArrayItem(names, 1)->valuestring : "",
                cJSON_GetArraySize(names) > 2 ? ", ..." : "");
    }
}

static void print_st(const cJSON *r, FILE *out) {
    char a[32], b[32];
    human(num(r, "file_bytes"), a, sizeof a);
    human(num(r, "header_bytes"), b, sizeof b);
    fprintf(out, "%s: safetensors, %s: %.0f tensors, %s header\n", str(r, "path"), a,
            num(r, "tensor_count"), b);
    const cJSON *x;
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(r, "by_dtype")) {
        human(num(x, "bytes"), a, sizeof a);
        fprintf(out, "    %-14s %8.0f tensors %12s\n", str(x, "dtype"), num(x, "count"), a);
    }
    const cJSON *dup = cJSON_GetObjectItemCaseSensitive(r, "duplicates");
    human(num(dup, "saved_bytes"), a, sizeof a);
    fprintf(out, "  duplicates: %.0f groups, %.0f redundant tensors, %s\n", num(dup, "groups"),
            num(dup, "tensors"), a);
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
    fprintf(out, "  tensor data %s (%.0f keys; a tied key's bytes counted once)\n", a,
            num(r, "tensor_count"));
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(r, "by_dtype")) {
        human(num(x, "bytes"), a, sizeof a);
        fprintf(out, "    %-14s %8.0f tensors %12s\n", str(x, "dtype"), num(x, "count"), a);
    }
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(r, "tied")) {
        human(num(x, "bytes"), a, sizeof a);
        fprintf(out, "  tied: %s is %s (%s, written once)\n", str(x, "key"), str(x, "to"), a);
    }
    const cJSON *dup = cJSON_GetObjectItemCaseSensitive(r, "duplicates");
    human(num(dup, "saved_bytes"), a, sizeof a);
    fprintf(out, "  duplicates (not tied): %.0f groups, %.0f redundant tensors, %s\n",
            num(dup, "groups"), num(dup, "tensors"), a);
    fprintf(out, "  shards:\n");
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(r, "shards")) {
        human(num(x, "bytes"), b, sizeof b);
        fprintf(out, "    %-40s %8.0f tensors %12s\n", str(x, "file"), num(x, "tensors"), b);
    }
    fprintf(out, "  other files: %.0f (copied as they are)\n", num(r, "other_files"));
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
    fprintf(out, "  %-22s %12s  %5.1f%%  (%.0f tensors)\n", "tensor data", a,
            total > 0 ? 100.0 * tb / total : 0.0, num(r, "tensor_count"));
    fprintf(out, "  %-22s %12s  %5.1f%%\n", "graph + metadata", b,
            total > 0 ? 100.0 * num(r, "overhead_bytes") / total : 0.0);
    if (ext > 0)
        fprintf(out, "  %-22s %12s  (part of tensor data)\n", "in external files", c);
    fprintf(out, "  by element type:\n");
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(r, "by_dtype")) {
        human(num(x, "bytes"), a, sizeof a);
        fprintf(out, "    %-14s %8.0f tensors %12s\n", str(x, "dtype"), num(x, "count"), a);
    }
    const cJSON *dup = cJSON_GetObjectItemCaseSensitive(r, "duplicates");
    human(num(dup, "saved_bytes"), a, sizeof a);
    fprintf(out, "  duplicates: %.0f groups, %.0f redundant tensors, dedup saves %s (%.1f%%)\n",
            num(dup, "groups"), num(dup, "tensors"), a,
            total > 0 ? 100.0 * num(dup, "saved_bytes") / total : 0.0);
    const cJSON *un = cJSON_GetObjectItemCaseSensitive(r, "unused");
    if (un && (num(un, "initializers") > 0 || num(un, "nodes") > 0)) {
        human(num(un, "bytes"), a, sizeof a);
        fprintf(out, "  unused: %.0f initializers (%s), %.0f nodes (removed by convert)\n",
                num(un, "initializers"), a, num(un, "nodes"));
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
        fprintf(out,
                "  quantized: %.0f INT8 weights, %s, with %s of scales and %s of zero points\n",
                num(q, "tensors"), a, b, c);
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
        fprintf(out, "  external file %s: %.0f tensors, %s\n", str(x, "location"),
                num(x, "tensors"), a);
    }
}
