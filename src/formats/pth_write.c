#include "formats/pth_write.h"

#include <stdio.h>
#include <stdlib.h>

#include "formats/pickle_write.h"
#include "formats/zip_write.h"

msh_status msh_pth_write(const char *out_path, const msh_pthw_tensor *t, size_t nt,
                         const msh_pthw_storage *s, size_t ns, msh_bytes_fn bytes, void *ctx,
                         int64_t *bytes_out, msh_error *e) {
    msh_pkw_entry *pe = calloc(nt + 1, sizeof *pe);
    char(*keys)[24] = calloc(ns + 1, sizeof *keys);
    if (!pe || !keys) {
        free(pe);
        free(keys);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    for (size_t k = 0; k < ns; k++)
        snprintf(keys[k], sizeof keys[k], "%zu", k);
    for (size_t i = 0; i < nt; i++)
        pe[i] = (msh_pkw_entry){
            t[i].key,   keys[t[i].storage], s[t[i].storage].dtype, s[t[i].storage].numel, 0,
            t[i].shape, t[i].ndim};
    uint8_t *pk = NULL;
    size_t pkn = 0;
    msh_status st = msh_pkw_state_dict(pe, nt, &pk, &pkn, e);
    free(pe);
    msh_sink sink;
    int open = 0;
    if (st == MSH_OK && (st = msh_sink_open(&sink, out_path, e)) == MSH_OK)
        open = 1;
    msh_zipw z;
    if (open)
        msh_zipw_init(&z, &sink);
    if (st == MSH_OK)
        st = msh_zipw_mem(&z, "archive/data.pkl", pk, pkn, e);
    for (size_t k = 0; st == MSH_OK && k < ns; k++) {
        char name[64];
        snprintf(name, sizeof name, "archive/data/%s", keys[k]);
        st = msh_zipw_begin(&z, name, s[k].nbytes, e);
        if (st == MSH_OK && s[k].nbytes > 0)
            st = bytes(ctx, s[k].index, &sink, e);
        if (st == MSH_OK)
            st = msh_zipw_end(&z, e);
    }
    if (st == MSH_OK)
        st = msh_zipw_mem(&z, "archive/version", "3\n", 2, e);
    if (st == MSH_OK)
        st = msh_zipw_finish(&z, e);
    if (st == MSH_OK)
        st = msh_sink_finish(&sink, e);
    if (st == MSH_OK)
        st = msh_sink_rename(&sink, e);
    if (st == MSH_OK)
        *bytes_out = sink.written;
    if (open) {
        msh_zipw_free(&z);
        msh_sink_abort(&sink);
    }
    free(pk);
    free(keys);
    return st;
}
