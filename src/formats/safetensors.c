#include "formats/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/msh_io.h"
#include "common/msh_dtype.h"
#include "passes/inspect.h"
#include "kernels/msh_cpu.h"
#include "kernels/msh_hash.h"

#define ST_MAX_HEADER 100000000

static const struct {
    const char *name;
    int32_t t;
} st_types[] = {{"F32", 1},  {"F16", 10}, {"BF16", 16},    {"F64", 11},    {"I64", 7}, {"I32", 6},
                {"I16", 5},  {"I8", 3},   {"U8", 2},       {"BOOL", 9},    {"U16", 4}, {"U32", 12},
                {"U64", 13}, {"C64", 14}, {"F8_E4M3", 17}, {"F8_E5M2", 19}};

const char *msh_st_dtype_name(int32_t t) {
    for (size_t i = 0; i < sizeof st_types / sizeof st_types[0]; i++)
        if (st_types[i].t == t)
            return st_types[i].name;
    return NULL;
}

static int32_t st_type(const char *s) {
    for (size_t i = 0; i < sizeof st_types / sizeof st_types[0]; i++)
        if (strcmp(st_types[i].name, s) == 0)
            return st_types[i].t;
    return 0;
}

int msh_st_sniff(const uint8_t *h, size_t n, int64_t file_size) {
    if (n < 9)
        return 0;
    /* The header's size is judged by the reader, which then says what is wrong with it. */
    uint64_t len = msh_load_le64(h);
    (void)file_size;
    return h[8] == '{' && len >= 2 && len < ((uint64_t)1 << 40);
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const msh_st_tensor *)a)->name, ((const msh_st_tensor *)b)->name);
}

/* By offset, empty tensors first: [k, k] may sit where the next tensor starts. */
static int cmp_offset(const void *a, const void *b) {
    const msh_st_tensor *x = a, *y = b;
    if (x->offset != y->offset)
        return x->offset < y->offset ? -1 : 1;
    if (x->nbytes != y->nbytes)
        return x->nbytes < y->nbytes ? -1 : 1;
    return strcmp(x->name, y->name); /* names are unique: a total order, whatever qsort does */
}

/* Strict UTF-8: no overlongs, no surrogates, nothing above U+10FFFF. */
static int utf8_ok(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        size_t k;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            k = 1, cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            k = 2, cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            k = 3, cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i <= k)
            return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += k + 1;
    }
    return 1;
}

msh_status msh_st_open(msh_st_file *f, const char *path, msh_error *e) {
    memset(f, 0, sizeof *f);
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0)
        return msh_fail(e, MSH_ERR_IO, "cannot open: %s", strerror(errno));
    struct stat sb;
    if (fstat(f->fd, &sb) != 0 || !S_ISREG(sb.st_mode))
        return msh_fail(e, MSH_ERR_FORMAT, "not a regular file");
    f->file_size = (int64_t)sb.st_size;
    uint8_t len8[8];
    if (f->file_size < 8)
        return msh_fail(e, MSH_ERR_FORMAT, "safetensors: file shorter than its length field");
    MSH_FORWARD(msh_pread_full(f->fd, len8, 8, 0, e));
    uint64_t n = msh_load_le64(len8);
    if (n > ST_MAX_HEADER)
        return msh_fail(e, MSH_ERR_LIMIT,
                        "safetensors: header of %llu bytes is over the "
                        "100,000,000-byte limit",
                        (unsigned long long)n);
    if ((int64_t)n > f->file_size - 8)
        return msh_fail(e, MSH_ERR_FORMAT,
                        "safetensors: header of %llu bytes is longer than the "
                        "file",
                        (unsigned long long)n);
    f->header_bytes = (int64_t)n;
    char *hdr = malloc((size_t)n + 1);
    if (!hdr)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    msh_status st = msh_pread_full(f->fd, hdr, (size_t)n, 8, e);
    if (st == MSH_OK && !utf8_ok((const uint8_t *)hdr, (size_t)n))
        st = msh_fail(e, MSH_ERR_FORMAT, "safetensors: the header is not valid UTF-8");
    cJSON *j = st == MSH_OK ? cJSON_ParseWithLength(hdr, (size_t)n) : NULL;
    free(hdr);
    MSH_FORWARD(st);
    if (!j)
        return msh_fail(e, MSH_ERR_FORMAT, "safetensors: the header is not valid JSON");
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return msh_fail(e, MSH_ERR_FORMAT, "safetensors: the header is not a JSON object");
    }
    int64_t data_start = 8 + (int64_t)n, data_len = f->file_size - data_start;
    size_t count = (size_t)cJSON_GetArraySize(j);
    f->t = calloc(count + 1, sizeof *f->t);
    if (!f->t) {
        cJSON_Delete(j);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, j) {
        if (strcmp(it->string, "__metadata__") == 0) {
            const cJSON *m;
            if (f->metadata)
                st = msh_fail(e, MSH_ERR_FORMAT, "safetensors: __metadata__ appears twice");
            else if (!cJSON_IsObject(it))
                st = msh_fail(e, MSH_ERR_FORMAT, "safetensors: __metadata__ is not an object");
            cJSON_ArrayForEach(m, it) if (!cJSON_IsString(m)) st =
                msh_fail(e, MSH_ERR_FORMAT, "safetensors: __metadata__ values must be strings");
            if (st != MSH_OK)
                break;
            f->metadata = cJSON_PrintUnformatted(it);
            continue;
        }
        msh_st_tensor *t = &f->t[f->n++];
        t->name = msh_strdup(it->string);
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(it, "dtype");
        const cJSON *sh = cJSON_GetObjectItemCaseSensitive(it, "shape");
        const cJSON *of = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
        if (!t->name || !cJSON_IsObject(it) || !cJSON_IsString(dt) || !cJSON_IsArray(sh) ||
            !cJSON_IsArray(of) || cJSON_GetArraySize(of) != 2 || cJSON_GetArraySize(sh) > 64) {
            st = msh_fail(e, MSH_ERR_FORMAT,
                          "safetensors: tensor '%.200s' lacks dtype, shape or "
                          "data_offsets",
                          it->string);
            break;
        }
        t->dtype = st_type(dt->valuestring);
        if (!t->dtype) {
            st = msh_fail(e, MSH_ERR_UNSUPPORTED,
                          "safetensors: tensor '%.200s': unknown dtype "
                          "'%.20s'",
                          it->string, dt->valuestring);
            break;
        }
        t->numel = 1;
        const cJSON *d;
        cJSON_ArrayForEach(d, sh) {
            double v = cJSON_IsNumber(d) ? d->valuedouble : 0.5;
            const char *why = NULL;
            if (v < 0)
                why = "is negative";
            else if (v != (double)(int64_t)v || v > 9e15)
                why = "is not a whole number up to 9e15";
            else if (!msh_mul_i64(t->numel, (int64_t)v, &t->numel))
                why = "makes the element count overflow";
            if (why) {
                st = msh_fail(e, MSH_ERR_FORMAT, "safetensors: tensor '%.200s': shape dim %zu %s",
                              it->string, t->ndim, why);
                break;
            }
            t->shape[t->ndim++] = (int64_t)v;
        }
        if (st != MSH_OK)
            break;
        double b = cJSON_GetArrayItem(of, 0)->valuedouble,
               en = cJSON_GetArrayItem(of, 1)->valuedouble;
        if (!cJSON_IsNumber(cJSON_GetArrayItem(of, 0)) ||
            !cJSON_IsNumber(cJSON_GetArrayItem(of, 1)) || b < 0 || en < b || en > 9e15 ||
            b != (double)(int64_t)b || en != (double)(int64_t)en) {
            st = msh_fail(e, MSH_ERR_FORMAT,
                          "safetensors: tensor '%.200s': data_offsets must be two whole numbers, "
                          "begin <= end",
                          it->string);
            break;
        }
        if (!msh_mul_i64(t->numel, msh_dtype_size(t->dtype), &t->nbytes) ||
            t->nbytes != (int64_t)en - (int64_t)b) {
            st = msh_fail(e, MSH_ERR_FORMAT,
                          "safetensors: tensor '%.200s': %lld bytes between "
                          "its offsets, its shape needs %lld",
                          it->string, (long long)((int64_t)en - (int64_t)b), (long long)t->nbytes);
            break;
        }
        t->offset = (int64_t)b; /* relative for now */
    }
    cJSON_Delete(j);
    MSH_FORWARD(st);
    /* JSON allows a key twice and cJSON keeps both: a name must say which tensor it means. */
    qsort(f->t, f->n, sizeof *f->t, cmp_name);
    for (size_t i = 1; i < f->n; i++)
        if (strcmp(f->t[i - 1].name, f->t[i].name) == 0)
            return msh_fail(e, MSH_ERR_FORMAT, "safetensors: tensor '%.200s' is named twice",
                            f->t[i].name);
    qsort(f->t, f->n, sizeof *f->t, cmp_offset);
    int64_t at = 0;
    for (size_t i = 0; i < f->n; i++) {
        if (f->t[i].offset != at)
            return msh_fail(e, MSH_ERR_FORMAT, "safetensors: tensor '%.200s' %s the previous one",
                            f->t[i].name, f->t[i].offset < at ? "overlaps" : "leaves a gap after");
        at += f->t[i].nbytes;
        f->t[i].offset += data_start;
    }
    if (at != data_len)
        return msh_fail(e, MSH_ERR_FORMAT,
                        "safetensors: the data area has %lld bytes, the "
                        "tensors %lld",
                        (long long)data_len, (long long)at);
    return MSH_OK;
}

void msh_st_free(msh_st_file *f) {
    free(f->metadata);
    for (size_t i = 0; i < f->n; i++)
        free(f->t[i].name);
    free(f->t);
    if (f->fd > 0)
        close(f->fd);
    memset(f, 0, sizeof *f);
}

static msh_status digest(const msh_st_file *f, const msh_st_tensor *t, uint64_t *d, uint8_t *buf,
                         msh_hasher *h, msh_error *e) {
    msh_hasher_reset(h);
    for (int64_t off = 0; off < t->nbytes;) {
        size_t n = t->nbytes - off < ((int64_t)1 << 20) ? (size_t)(t->nbytes - off) : 1u << 20;
        MSH_FORWARD(msh_pread_full(f->fd, buf, n, t->offset + off, e));
        msh_hasher_update(h, buf, n);
        off += (int64_t)n;
    }
    *d = msh_hasher_digest(h);
    return MSH_OK;
}

static msh_status same(const msh_st_file *f, const msh_st_tensor *a, const msh_st_tensor *b,
                       uint8_t *x, uint8_t *y, int *eq, msh_error *e) {
    *eq = 0;
    for (int64_t off = 0; off < a->nbytes;) {
        size_t n = a->nbytes - off < ((int64_t)1 << 20) ? (size_t)(a->nbytes - off) : 1u << 20;
        MSH_FORWARD(msh_pread_full(f->fd, x, n, a->offset + off, e));
        MSH_FORWARD(msh_pread_full(f->fd, y, n, b->offset + off, e));
        if (memcmp(x, y, n) != 0)
            return MSH_OK;
        off += (int64_t)n;
    }
    *eq = 1;
    return MSH_OK;
}

msh_status msh_st_inspect(const msh_st_file *f, cJSON *o, msh_error *e) {
    int64_t total = 0, dt_count[32] = {0}, dt_bytes[32] = {0};
    for (size_t i = 0; i < f->n; i++) {
        int d = f->t[i].dtype < 31 ? f->t[i].dtype : 31;
        dt_count[d]++;
        dt_bytes[d] += f->t[i].nbytes;
        total += f->t[i].nbytes;
    }
    cJSON_AddStringToObject(o, "format", "safetensors");
    cJSON_AddNumberToObject(o, "file_bytes", (double)f->file_size);
    cJSON_AddNumberToObject(o, "header_bytes", (double)f->header_bytes);
    cJSON_AddNumberToObject(o, "tensor_bytes", (double)total);
    cJSON_AddNumberToObject(o, "tensor_count", (double)f->n);
    msh_json_by_dtype(o, dt_count, dt_bytes);
    /* duplicates: same dtype and shape, same digest, same bytes (quadratic only within a run
     * of equal digests, which holds identical tensors) */
    uint64_t *dg = calloc(f->n + 1, sizeof *dg);
    int *grp = malloc((f->n + 1) * sizeof *grp);
    uint8_t *x = malloc(1u << 20), *y = malloc(1u << 20);
    msh_hasher *h = msh_hasher_new();
    msh_status st = dg && grp && x && y && h ? MSH_OK : msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    for (size_t i = 0; st == MSH_OK && i < f->n; i++) {
        grp[i] = -1;
        st = digest(f, &f->t[i], &dg[i], x, h, e);
    }
    cJSON *dup = cJSON_AddObjectToObject(o, "duplicates");
    cJSON *list = cJSON_AddArrayToObject(dup, "list");
    int64_t groups = 0, extra = 0, saved = 0;
    for (size_t i = 0; st == MSH_OK && i < f->n; i++) {
        if (grp[i] >= 0)
            continue;
        cJSON *members = NULL;
        for (size_t k = i + 1; st == MSH_OK && k < f->n; k++) {
            const msh_st_tensor *a = &f->t[i], *b = &f->t[k];
            if (grp[k] >= 0 || dg[k] != dg[i] || a->dtype != b->dtype || a->ndim != b->ndim ||
                memcmp(a->shape, b->shape, a->ndim * sizeof *a->shape) != 0)
                continue;
            int eq;
            st = same(f, a, b, x, y, &eq, e);
            if (st != MSH_OK || !eq)
                continue;
            if (!members) {
                cJSON *g = cJSON_CreateObject();
                cJSON_AddStringToObject(g, "dtype", msh_dtype_name(a->dtype));
                cJSON_AddNumberToObject(g, "bytes_each", (double)a->nbytes);
                members = cJSON_AddArrayToObject(g, "members");
                cJSON_AddItemToArray(members, cJSON_CreateString(a->name));
                cJSON_AddItemToArray(list, g);
                groups++;
                grp[i] = (int)i;
            }
            grp[k] = (int)i;
            cJSON_AddItemToArray(members, cJSON_CreateString(b->name));
            extra++;
            saved += b->nbytes;
        }
    }
    cJSON_AddNumberToObject(dup, "groups", (double)groups);
    cJSON_AddNumberToObject(dup, "tensors", (double)extra);
    cJSON_AddNumberToObject(dup, "saved_bytes", (double)saved);
    free(dg);
    free(grp);
    free(x);
    free(y);
    msh_hasher_free(h);
    return st;
}

msh_status msh_st_write(const char *out_path, const char *metadata, const msh_st_item *items,
                        size_t n, uint32_t f16_min_abs, uint32_t f16_max_abs, int64_t *bytes_out,
                        uint64_t *clamped, msh_error *e) {
    cJSON *h = cJSON_CreateObject();
    cJSON *meta = metadata ? cJSON_Parse(metadata) : NULL;
    if (!meta) {
        meta = cJSON_CreateObject();
        cJSON_AddStringToObject(meta, "format", "pt");
    }
    cJSON_AddItemToObject(h, "__metadata__", meta);
    int64_t at = 0;
    for (size_t i = 0; i < n; i++) {
        const msh_st_item *t = &items[i];
        const char *dn = msh_st_dtype_name(t->dtype_out);
        if (!dn || cJSON_GetObjectItemCaseSensitive(h, t->name)) {
            cJSON_Delete(h);
            return msh_fail(e, dn ? MSH_ERR_FORMAT : MSH_ERR_UNSUPPORTED,
                            dn ? "tensor name '%.200s' appears twice"
                               : "tensor '%.200s': element type has no safetensors name",
                            t->name);
        }
        int64_t nb = t->numel * msh_dtype_size(t->dtype_out);
        cJSON *x = cJSON_AddObjectToObject(h, t->name);
        cJSON_AddStringToObject(x, "dtype", dn);
        cJSON *shape = cJSON_AddArrayToObject(x, "shape");
        for (size_t d = 0; d < t->ndim; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
        cJSON *offs = cJSON_AddArrayToObject(x, "data_offsets");
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)at));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(at + nb)));
        at += nb;
    }
    char *json = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    if (!json)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    size_t hl = strlen(json), padded = (hl + 7) / 8 * 8;
    msh_sink s;
    msh_status st = msh_sink_open(&s, out_path, e);
    if (st != MSH_OK) {
        free(json);
        return st;
    }
    uint8_t len8[8];
    msh_store_le64(len8, padded);
    st = msh_sink_write(&s, len8, 8, e);
    if (st == MSH_OK)
        st = msh_sink_write(&s, json, hl, e);
    free(json);
    for (size_t k = hl; st == MSH_OK && k < padded; k++)
        st = msh_sink_write(&s, " ", 1, e);
    msh_f16_bounds b = {f16_min_abs, f16_max_abs};
    uint8_t *chunk = malloc((size_t)4 << 20), *conv = malloc((size_t)2 << 20);
    if (!chunk || !conv)
        st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    for (size_t i = 0; st == MSH_OK && i < n; i++) {
        const msh_st_item *t = &items[i];
        int64_t nbytes = t->numel * msh_dtype_size(t->dtype_in);
        int conv_on = t->dtype_out != t->dtype_in;
        if (nbytes == 0)
            continue;
        if (!t->gather && !conv_on) {
            st = msh_sink_copy_from(&s, t->fd, t->offset, nbytes, e);
            continue;
        }
        uint8_t *all = NULL;
        if (t->gather) {
            all = malloc((size_t)nbytes);
            st = all ? t->gather(t->ctx, all, e) : msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        }
        for (int64_t off = 0; st == MSH_OK && off < nbytes;) {
            size_t len =
                nbytes - off < ((int64_t)4 << 20) ? (size_t)(nbytes - off) : (size_t)4 << 20;
            const uint8_t *src = all ? all + off : chunk;
            if (!all)
                st = msh_pread_full(t->fd, chunk, len, t->offset + off, e);
            if (st != MSH_OK)
                break;
            if (!conv_on) {
                st = msh_sink_write(&s, src, len, e);
            } else if (t->dtype_out == 10) {
                *clamped += msh_f32_to_f16_buf(src, conv, len / 4, &b);
                st = msh_sink_write(&s, conv, len / 2, e);
            } else {
                msh_f32_to_bf16_buf(src, conv, len / 4);
                st = msh_sink_write(&s, conv, len / 2, e);
            }
            off += (int64_t)len;
        }
        free(all);
    }
    free(chunk);
    free(conv);
    if (st == MSH_OK)
        st = msh_sink_finish(&s, e);
    if (st == MSH_OK)
        st = msh_sink_rename(&s, e);
    if (st == MSH_OK)
        *bytes_out = s.written;
    msh_sink_abort(&s);
    return st;
}
