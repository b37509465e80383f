/*
 * A read-only ZIP reader for torch.save files. Nothing is ever extracted to disk.
 *
 * Accepts: an End of Central Directory record (with its ZIP64 record when the 32-bit fields
 * are saturated, as torch writes them); central directory entries that are STORED (method 0)
 * with equal compressed and uncompressed sizes, or DEFLATE (method 8: torch.jit.save compresses
 * code and debug pickles), with sizes and CRC taken from the central directory (local headers
 * may carry zeros); names without "..", a leading '/', or '\\', no duplicates, all under one
 * top-level folder; a local header whose name matches; data that lies inside the file, does not
 * overlap another entry and starts after its own local header. DEFLATE entries are inflated
 * only when read (msh_zip_read), in memory, size-limited and CRC-checked.
 */
#include "formats/zip.h"

#include <stdlib.h>
#include <zlib.h>

#include "common/msh_io.h"

#define ZIP_MAX_ENTRIES 1000000
#define EOCD_SIG 0x06054b50u
#define Z64_LOC_SIG 0x07064b50u
#define Z64_EOCD_SIG 0x06064b50u
#define CD_SIG 0x02014b50u
#define LOCAL_SIG 0x04034b50u

static uint16_t rd16(const uint8_t *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}
static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static int cmp_off(const void *a, const void *b) {
    const msh_zip_entry *x = a, *y = b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const msh_zip_entry *)a)->name, ((const msh_zip_entry *)b)->name);
}

static msh_status bad(msh_error *e, const char *what) {
    return msh_fail(e, MSH_ERR_FORMAT, "zip: %s", what);
}

msh_status msh_zip_open(msh_zip *z, int fd, int64_t size, msh_error *e) {
    memset(z, 0, sizeof *z);
    z->fd = fd;
    if (size < 22)
        return bad(e, "file too short for a zip archive");
    /* the EOCD record: 22 bytes plus a comment of at most 65535 bytes */
    int64_t tail_len = size < 65557 ? size : 65557;
    uint8_t *tail = malloc((size_t)tail_len);
    if (!tail)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    msh_status st = msh_pread_full(fd, tail, (size_t)tail_len, size - tail_len, e);
    int64_t eocd = -1;
    for (int64_t i = tail_len - 22; st == MSH_OK && i >= 0; i--)
        if (rd32(tail + i) == EOCD_SIG && i + 22 + rd16(tail + i + 20) == tail_len) {
            eocd = i;
            break;
        }
    if (st != MSH_OK || eocd < 0) {
        free(tail);
        return st != MSH_OK ? st : bad(e, "no end of central directory record");
    }
    const uint8_t *r = tail + eocd;
    uint64_t n_entries = rd16(r + 10), cd_size = rd32(r + 12), cd_off = rd32(r + 16);
    int64_t eocd_abs = size - tail_len + eocd;
    if (n_entries == 0xFFFF || cd_size == 0xFFFFFFFFu || cd_off == 0xFFFFFFFFu) {
        if (eocd < 20 || rd32(r - 20) != Z64_LOC_SIG) {
            free(tail);
            return bad(e, "saturated end record without a ZIP64 locator");
        }
        uint64_t z64 = msh_load_le64(r - 20 + 8);
        uint8_t rec[56];
        if (z64 > (uint64_t)size - 56 ||
            (st = msh_pread_full(fd, rec, 56, (int64_t)z64, e)) != MSH_OK ||
            rd32(rec) != Z64_EOCD_SIG) {
            free(tail);
            return st != MSH_OK ? st : bad(e, "bad ZIP64 end of central directory record");
        }
        n_entries = msh_load_le64(rec + 32);
        cd_size = msh_load_le64(rec + 40);
        cd_off = msh_load_le64(rec + 48);
        eocd_abs = (int64_t)z64;
    }
    free(tail);
    if (n_entries == 0 || n_entries > ZIP_MAX_ENTRIES)
        return bad(e, "implausible number of entries");
    if (cd_off > (uint64_t)eocd_abs || cd_size > (uint64_t)eocd_abs - cd_off)
        return bad(e, "central directory outside the file");
    uint8_t *cd = malloc((size_t)cd_size + 1);
    z->entries = calloc((size_t)n_entries, sizeof *z->entries);
    if (!cd || !z->entries) {
        free(cd);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    st = msh_pread_full(fd, cd, (size_t)cd_size, (int64_t)cd_off, e);
    size_t at = 0;
    for (uint64_t k = 0; st == MSH_OK && k < n_entries; k++) {
        if (cd_size - at < 46 || rd32(cd + at) != CD_SIG) {
            st = bad(e, "truncated or corrupt central directory");
            break;
        }
        const uint8_t *h = cd + at;
        uint16_t method = rd16(h + 10), nlen = rd16(h + 28), xlen = rd16(h + 30),
                 clen = rd16(h + 32);
        uint64_t csize = rd32(h + 20), usize = rd32(h + 24), loff = rd32(h + 42);
        if (cd_size - at < 46u + nlen + xlen + clen) {
            st = bad(e, "central directory entry runs past its end");
            break;
        }
        /* ZIP64 extra field: the saturated fields, in this order */
        const uint8_t *x = h + 46 + nlen;
        for (size_t xo = 0; xo + 4 <= xlen;) {
            uint16_t id = rd16(x + xo), sz = rd16(x + xo + 2);
            if (xo + 4u + sz > xlen)
                break;
            if (id == 1) {
                size_t p = xo + 4;
                if (usize == 0xFFFFFFFFu && p + 8 <= xo + 4u + sz)
                    usize = msh_load_le64(x + p), p += 8;
                if (csize == 0xFFFFFFFFu && p + 8 <= xo + 4u + sz)
                    csize = msh_load_le64(x + p), p += 8;
                if (loff == 0xFFFFFFFFu && p + 8 <= xo + 4u + sz)
                    loff = msh_load_le64(x + p);
            }
            xo += 4u + sz;
        }
        char *name = malloc((size_t)nlen + 1);
        if (!name) {
            st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            break;
        }
        memcpy(name, h + 46, nlen);
        name[nlen] = 0;
        z->entries[z->n++].name = name;
        if (strlen(name) != nlen || nlen == 0 || name[0] == '/' || strchr(name, '\\') ||
            strstr(name, "..")) {
            st = msh_fail(e, MSH_ERR_UNSAFE, "zip: unsafe entry name '%.200s'", name);
            break;
        }
        if (method != 0 && method != 8) {
            st = msh_fail(e, MSH_ERR_FORMAT,
                          "zip: entry '%.200s' is compressed with method %u (only STORED and "
                          "DEFLATE are read)",
                          name, method);
            break;
        }
        if (method == 0 && csize != usize) {
            st = msh_fail(e, MSH_ERR_FORMAT, "zip: entry '%.200s': stored sizes differ", name);
            break;
        }
        /* the local header: its own name length and extra length locate the data */
        uint8_t lh[30];
        if (loff > (uint64_t)size - 30 ||
            (st = msh_pread_full(fd, lh, 30, (int64_t)loff, e)) != MSH_OK ||
            rd32(lh) != LOCAL_SIG) {
            if (st == MSH_OK)
                st = msh_fail(e, MSH_ERR_FORMAT, "zip: entry '%.200s': bad local header", name);
            break;
        }
        uint64_t data = loff + 30 + rd16(lh + 26) + rd16(lh + 28);
        if (rd16(lh + 26) != nlen) {
            st = msh_fail(e, MSH_ERR_FORMAT,
                          "zip: entry '%.200s': local and central names "
                          "differ",
                          name);
            break;
        }
        char lname[4096];
        if (nlen < sizeof lname) {
            if ((st = msh_pread_full(fd, lname, nlen, (int64_t)loff + 30, e)) != MSH_OK)
                break;
            if (memcmp(lname, name, nlen) != 0) {
                st = msh_fail(e, MSH_ERR_FORMAT,
                              "zip: entry '%.200s': local and central names "
                              "differ",
                              name);
                break;
            }
        }
        if (data > (uint64_t)size || csize > (uint64_t)size - data) {
            st = msh_fail(e, MSH_ERR_FORMAT, "zip: entry '%.200s' runs past the end of the file",
                          name);
            break;
        }
        if (usize > ((uint64_t)1 << 62)) {
            st = msh_fail(e, MSH_ERR_LIMIT, "zip: entry '%.200s': implausible size", name);
            break;
        }
        z->entries[z->n - 1].header = (int64_t)loff;
        z->entries[z->n - 1].offset = (int64_t)data;
        z->entries[z->n - 1].size = (int64_t)usize;
        z->entries[z->n - 1].csize = (int64_t)csize;
        z->entries[z->n - 1].method = method;
        z->entries[z->n - 1].crc = rd32(h + 16);
        at += 46u + nlen + xlen + clen;
    }
    free(cd);
    if (st != MSH_OK)
        return st;
    /* one top-level folder */
    const char *slash = strchr(z->entries[0].name, '/');
    if (!slash)
        return bad(e, "entries are not under one top-level folder");
    size_t plen = (size_t)(slash - z->entries[0].name) + 1;
    z->prefix = malloc(plen + 1);
    if (!z->prefix)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    memcpy(z->prefix, z->entries[0].name, plen);
    z->prefix[plen] = 0;
    for (size_t i = 0; i < z->n; i++)
        if (strncmp(z->entries[i].name, z->prefix, plen) != 0)
            return msh_fail(e, MSH_ERR_FORMAT,
                            "zip: entry '%.200s' is outside the top-level "
                            "folder '%s'",
                            z->entries[i].name, z->prefix);
    /* no overlaps: each entry's local header starts after the previous entry's data */
    qsort(z->entries, z->n, sizeof *z->entries, cmp_off);
    for (size_t i = 1; i < z->n; i++)
        if (z->entries[i].header < z->entries[i - 1].offset + z->entries[i - 1].csize)
            return msh_fail(e, MSH_ERR_FORMAT, "zip: entries '%.200s' and '%.200s' overlap",
                            z->entries[i - 1].name, z->entries[i].name);
    qsort(z->entries, z->n, sizeof *z->entries, cmp_name);
    for (size_t i = 1; i < z->n; i++)
        if (strcmp(z->entries[i].name, z->entries[i - 1].name) == 0)
            return msh_fail(e, MSH_ERR_FORMAT, "zip: duplicate entry '%.200s'", z->entries[i].name);
    return MSH_OK;
}

const msh_zip_entry *msh_zip_find(const msh_zip *z, const char *rel) {
    size_t plen = strlen(z->prefix), rlen = strlen(rel);
    size_t lo = 0, hi = z->n;
    char buf[4200];
    if (plen + rlen >= sizeof buf)
        return NULL;
    memcpy(buf, z->prefix, plen);
    memcpy(buf + plen, rel, rlen + 1);
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(z->entries[mid].name, buf);
        if (c == 0)
            return &z->entries[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

void msh_zip_free(msh_zip *z) {
    for (size_t i = 0; i < z->n; i++)
        free(z->entries[i].name);
    free(z->entries);
    free(z->prefix);
    memset(z, 0, sizeof *z);
}

#define INFLATE_STEP ((size_t)65536)

/* Inflate a raw DEFLATE entry into buf (room for size + 1 bytes: one more than expected, so a
 * stream that would go on is caught). */
static msh_status inflate_entry(const msh_zip *z, const msh_zip_entry *en, uint8_t *buf,
                                size_t size, msh_error *e) {
    uint8_t *in = malloc(INFLATE_STEP);
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (!in || inflateInit2(&zs, -MAX_WBITS) != Z_OK) { /* zip entries are raw DEFLATE */
        free(in);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    zs.next_out = buf;
    zs.avail_out = (uInt)(size + 1);
    int64_t at = 0;
    msh_status st = MSH_OK;
    for (;;) {
        if (zs.avail_in == 0 && at < en->csize) {
            size_t k =
                en->csize - at < (int64_t)INFLATE_STEP ? (size_t)(en->csize - at) : INFLATE_STEP;
            if ((st = msh_pread_full(z->fd, in, k, en->offset + at, e)) != MSH_OK)
                break;
            at += (int64_t)k;
            zs.next_in = in;
            zs.avail_in = (uInt)k;
        }
        int zr = inflate(&zs, Z_NO_FLUSH);
        if (zr == Z_STREAM_END)
            break;
        if (zr == Z_OK && zs.avail_out > 0)
            continue;
        if (zs.avail_out == 0)
            st =
                msh_fail(e, MSH_ERR_FORMAT,
                         "zip: entry '%.200s' inflates to more than its %zu bytes", en->name, size);
        else if (zr == Z_BUF_ERROR && zs.avail_in == 0 && at >= en->csize)
            st = msh_fail(e, MSH_ERR_FORMAT, "zip: entry '%.200s': deflate stream cut short",
                          en->name);
        else
            st = msh_fail(e, MSH_ERR_FORMAT, "zip: entry '%.200s': bad deflate data (%s)", en->name,
                          zs.msg ? zs.msg : "zlib error");
        break;
    }
    if (st == MSH_OK && (size_t)(zs.next_out - buf) != size)
        st = msh_fail(e, MSH_ERR_FORMAT,
                      "zip: entry '%.200s' inflates to %zu bytes, the directory says %zu", en->name,
                      (size_t)(zs.next_out - buf), size);
    inflateEnd(&zs);
    free(in);
    return st;
}

msh_status msh_zip_read(const msh_zip *z, const msh_zip_entry *en, size_t max, uint8_t **out,
                        size_t *n, msh_error *e) {
    *out = NULL;
    *n = 0;
    if (max >= UINT32_MAX) /* zlib counts in 32 bits */
        max = UINT32_MAX - 1;
    if (en->size < 0 || (uint64_t)en->size > (uint64_t)max)
        return msh_fail(e, MSH_ERR_LIMIT, "zip: entry '%.200s' holds %lld bytes (limit %zu)",
                        en->name, (long long)en->size, max);
    size_t size = (size_t)en->size;
    uint8_t *buf = malloc(size + 1);
    if (!buf)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    msh_status st = en->method == 0 ? msh_pread_full(z->fd, buf, size, en->offset, e)
                                    : inflate_entry(z, en, buf, size, e);
    if (st == MSH_OK && (uint32_t)crc32(crc32(0L, Z_NULL, 0), buf, (uInt)size) != en->crc)
        st = msh_fail(e, MSH_ERR_FORMAT, "zip: entry '%.200s': CRC-32 mismatch", en->name);
    if (st != MSH_OK) {
        free(buf);
        return st;
    }
    buf[size] = 0;
    *out = buf;
    *n = size;
    return MSH_OK;
}
