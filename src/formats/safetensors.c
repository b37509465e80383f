#include "formats/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "common/msh_dtype.h"
#include "common/msh_io.h"

#define ST_MAX_HEADER 100000000

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
    if (x->d.nbytes != y->d.nbytes)
        return x->d.nbytes < y->d.nbytes ? -1 : 1;
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
        msh_tentry_init(&t->d);
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
        t->d.dtype = msh_dtype_from_st(dt->valuestring);
        if (!t->d.dtype) {
            st = msh_fail(e, MSH_ERR_UNSUPPORTED,
                          "safetensors: tensor '%.200s': unknown dtype "
                          "'%.20s'",
                          it->string, dt->valuestring);
            break;
        }
        t->d.numel = 1;
        const cJSON *d;
        cJSON_ArrayForEach(d, sh) {
            double v = cJSON_IsNumber(d) ? d->valuedouble : 0.5;
            const char *why = NULL;
            if (v < 0)
                why = "is negative";
            else if (v != (double)(int64_t)v || v > 9e15)
                why = "is not a whole number up to 9e15";
            else if (!msh_mul_i64(t->d.numel, (int64_t)v, &t->d.numel))
                why = "makes the element count overflow";
            if (why) {
                st = msh_fail(e, MSH_ERR_FORMAT, "safetensors: tensor '%.200s': shape dim %zu %s",
                              it->string, t->d.ndim, why);
                break;
            }
            t->shape[t->d.ndim++] = (int64_t)v;
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
        if (!msh_mul_i64(t->d.numel, msh_dtype_size(t->d.dtype), &t->d.nbytes) ||
            t->d.nbytes != (int64_t)en - (int64_t)b) {
            st =
                msh_fail(e, MSH_ERR_FORMAT,
                         "safetensors: tensor '%.200s': %lld bytes between "
                         "its offsets, its shape needs %lld",
                         it->string, (long long)((int64_t)en - (int64_t)b), (long long)t->d.nbytes);
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
        at += f->t[i].d.nbytes;
        f->t[i].offset += data_start;
    }
    for (size_t i = 0; i < f->n; i++) {
        /* the neutral description (the array no longer moves) */
        msh_st_tensor *t = &f->t[i];
        t->d.origin = (int64_t)i;
        t->d.name = t->name;
        t->d.shape = t->shape;
        t->d.role = MSH_ROLE_WEIGHT;
        t->d.src.kind = t->d.nbytes > 0 ? MSH_SRC_FILE : MSH_SRC_NONE;
        t->d.src.fd = f->fd;
        t->d.src.offset = t->offset;
        t->d.src.length = t->d.nbytes;
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

msh_table msh_st_table(const msh_st_file *f) {
    msh_table t = {f->t ? &f->t[0].d : NULL, f->n, sizeof(msh_st_tensor)};
    return t;
}
