#include "formats/zip_write.h"

#include <stdlib.h>

#define ZIP32_MAX ((int64_t)0xFFFFFFFF)

static void le16(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void le32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void le64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

void msh_zipw_init(msh_zipw *z, msh_sink *s) {
    memset(z, 0, sizeof *z);
    z->s = s;
    z->limit = z->off_limit = ZIP32_MAX;
    const char *t = getenv("MSH_TEST_ZIP64_THRESHOLD");
    if (t && *t) {
        long long v = strtoll(t, NULL, 10);
        if (v > 0 && v < ZIP32_MAX)
            z->limit = v;
        const char *o = getenv("MSH_TEST_ZIP64_OFFSETS");
        if (o && strcmp(o, "1") == 0)
            z->off_limit = z->limit;
    }
}

void msh_zipw_free(msh_zipw *z) {
    for (size_t i = 0; i < z->n; i++)
        free(z->v[i].name);
    free(z->v);
    memset(z, 0, sizeof *z);
}

msh_status msh_zipw_begin(msh_zipw *z, const char *name, int64_t size, msh_error *e) {
    size_t nl = strlen(name);
    if (nl > 0xFFFF || z->open)
        return msh_fail(e, MSH_ERR_LIMIT, "zip entry name of %zu bytes", nl);
    if (!msh_grow((void **)&z->v, &z->cap, z->n, sizeof *z->v))
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    msh_zipw_entry *en = &z->v[z->n];
    en->name = msh_strdup(name);
    if (!en->name)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    en->header = z->s->written;
    en->size = size;
    en->crc = 0;
    z->n++;
    int big = size >= z->limit;
    uint8_t h[30 + 20] = {0x50, 0x4b, 0x03, 0x04};
    le16(h + 4, big ? 45 : 20); /* version needed: 4.5 for ZIP64 */
    /* flags, method (0: stored), time, date: 0; crc (14..17) is patched at the end */
    le32(h + 18, big ? 0xFFFFFFFFu : (uint32_t)size);
    le32(h + 22, big ? 0xFFFFFFFFu : (uint32_t)size);
    le16(h + 26, (uint32_t)nl);
    le16(h + 28, big ? 20 : 0);
    size_t hl = 30;
    msh_status st = msh_sink_write(z->s, h, hl, e);
    if (st == MSH_OK)
        st = msh_sink_write(z->s, name, nl, e);
    if (st == MSH_OK && big) {
        uint8_t x[20];
        le16(x, 0x0001);
        le16(x + 2, 16);
        le64(x + 4, (uint64_t)size);  /* uncompressed */
        le64(x + 12, (uint64_t)size); /* compressed */
        st = msh_sink_write(z->s, x, 20, e);
    }
    if (st == MSH_OK) {
        z->open = 1;
        z->data_at = z->s->written;
        msh_sink_crc_start(z->s);
    }
    return st;
}

msh_status msh_zipw_end(msh_zipw *z, msh_error *e) {
    msh_zipw_entry *en = &z->v[z->n - 1];
    uint32_t crc = msh_sink_crc_stop(z->s);
    z->open = 0;
    if (z->s->written - z->data_at != en->size)
        return msh_fail(e, MSH_ERR_FORMAT, "internal error: zip entry '%s' got %lld of %lld bytes",
                        en->name, (long long)(z->s->written - z->data_at), (long long)en->size);
    en->crc = crc;
    uint8_t c4[4];
    le32(c4, crc);
    return msh_sink_patch(z->s, en->header + 14, c4, 4, e);
}

msh_status msh_zipw_mem(msh_zipw *z, const char *name, const void *p, size_t n, msh_error *e) {
    MSH_FORWARD(msh_zipw_begin(z, name, (int64_t)n, e));
    MSH_FORWARD(msh_sink_write(z->s, p, n, e));
    return msh_zipw_end(z, e);
}

msh_status msh_zipw_finish(msh_zipw *z, msh_error *e) {
    int64_t cd_at = z->s->written;
    for (size_t i = 0; i < z->n; i++) {
        const msh_zipw_entry *en = &z->v[i];
        size_t nl = strlen(en->name);
        int big_size = en->size >= z->limit, big_off = en->header >= z->off_limit;
        uint8_t c[46] = {0x50, 0x4b, 0x01, 0x02};
        int zip64 = big_size || big_off;
        le16(c + 4, zip64 ? 45 : 20); /* version made by */
        le16(c + 6, zip64 ? 45 : 20); /* version needed */
        le32(c + 16, en->crc);
        le32(c + 20, big_size ? 0xFFFFFFFFu : (uint32_t)en->size);
        le32(c + 24, big_size ? 0xFFFFFFFFu : (uint32_t)en->size);
        le16(c + 28, (uint32_t)nl);
        uint8_t x[28];
        size_t xl = 0;
        if (zip64) {
            le16(x, 0x0001);
            xl = 4;
            if (big_size) {
                le64(x + xl, (uint64_t)en->size);
                le64(x + xl + 8, (uint64_t)en->size);
                xl += 16;
            }
            if (big_off) {
                le64(x + xl, (uint64_t)en->header);
                xl += 8;
            }
            le16(x + 2, (uint32_t)(xl - 4));
        }
        le16(c + 30, (uint32_t)xl);
        le32(c + 42, big_off ? 0xFFFFFFFFu : (uint32_t)en->header);
        MSH_FORWARD(msh_sink_write(z->s, c, 46, e));
        MSH_FORWARD(msh_sink_write(z->s, en->name, nl, e));
        if (xl)
            MSH_FORWARD(msh_sink_write(z->s, x, xl, e));
    }
    int64_t cd_size = z->s->written - cd_at;
    int zip64 = cd_at >= z->off_limit || cd_size >= z->limit || z->n >= 0xFFFF;
    for (size_t i = 0; i < z->n && !zip64; i++)
        zip64 = z->v[i].size >= z->limit || z->v[i].header >= z->off_limit;
    if (zip64) {
        int64_t rec_at = z->s->written;
        uint8_t r[56] = {0x50, 0x4b, 0x06, 0x06};
        le64(r + 4, 44); /* size of the rest of the record */
        le16(r + 12, 45);
        le16(r + 14, 45);
        /* disk numbers (16..23): 0 */
        le64(r + 24, z->n);
        le64(r + 32, z->n);
        le64(r + 40, (uint64_t)cd_size);
        le64(r + 48, (uint64_t)cd_at);
        MSH_FORWARD(msh_sink_write(z->s, r, 56, e));
        uint8_t l[20] = {0x50, 0x4b, 0x06, 0x07};
        le64(l + 8, (uint64_t)rec_at);
        le32(l + 16, 1); /* total disks */
        MSH_FORWARD(msh_sink_write(z->s, l, 20, e));
    }
    uint8_t end[22] = {0x50, 0x4b, 0x05, 0x06};
    uint32_t cnt = zip64 && z->n >= 0xFFFF ? 0xFFFF : (uint32_t)z->n;
    le16(end + 8, cnt);
    le16(end + 10, cnt);
    le32(end + 12, zip64 && cd_size >= z->limit ? 0xFFFFFFFFu : (uint32_t)cd_size);
    le32(end + 16, zip64 && cd_at >= z->off_limit ? 0xFFFFFFFFu : (uint32_t)cd_at);
    return msh_sink_write(z->s, end, 22, e);
}
