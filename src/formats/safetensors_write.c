/*
 * safetensors writer: 8-byte little-endian header length, the JSON header (padded with spaces to
 * a multiple of 8), then each tensor's bytes in header order, contiguous and without gaps. The
 * bytes come from the caller (the engine); this file only places them.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/msh_dtype.h"
#include "formats/safetensors.h"

msh_status msh_st_write(const char *out_path, const char *metadata, const msh_st_out *items,
                        size_t n, msh_bytes_fn bytes, void *ctx, int64_t *bytes_out, msh_error *e) {
    cJSON *h = cJSON_CreateObject();
    cJSON *meta = metadata ? cJSON_Parse(metadata) : NULL;
    if (!meta) {
        meta = cJSON_CreateObject();
        cJSON_AddStringToObject(meta, "format", "pt");
    }
    cJSON_AddItemToObject(h, "__metadata__", meta);
    int64_t at = 0;
    for (size_t i = 0; i < n; i++) {
        const msh_st_out *t = &items[i];
        const char *dn = msh_dtype_st_name(t->dtype);
        if (!dn || cJSON_GetObjectItemCaseSensitive(h, t->name)) {
            cJSON_Delete(h);
            return msh_fail(e, dn ? MSH_ERR_FORMAT : MSH_ERR_UNSUPPORTED,
                            dn ? "tensor name '%.200s' appears twice"
                               : "tensor '%.200s': element type %s has no safetensors name",
                            t->name, msh_dtype_name(t->dtype));
        }
        cJSON *x = cJSON_AddObjectToObject(h, t->name);
        cJSON_AddStringToObject(x, "dtype", dn);
        cJSON *shape = cJSON_AddArrayToObject(x, "shape");
        for (size_t d = 0; d < t->ndim; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
        cJSON *offs = cJSON_AddArrayToObject(x, "data_offsets");
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)at));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(at + t->nbytes)));
        at += t->nbytes;
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
    for (size_t i = 0; st == MSH_OK && i < n; i++) {
        if (items[i].nbytes == 0)
            continue;
        int64_t before = s.written;
        st = bytes(ctx, items[i].index, &s, e);
        if (st == MSH_OK && s.written - before != items[i].nbytes)
            st = msh_fail(e, MSH_ERR_FORMAT, "internal error: tensor '%s' came with %lld bytes",
                          items[i].name, (long long)(s.written - before));
    }
    if (st == MSH_OK)
        st = msh_sink_finish(&s, e);
    if (st == MSH_OK)
        st = msh_sink_rename(&s, e);
    if (st == MSH_OK)
        *bytes_out = s.written;
    msh_sink_abort(&s);
    return st;
}
