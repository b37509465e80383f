/*
 * A ZIP writer for torch.save archives: STORED entries (no compression), each entry's CRC-32
 * computed from the bytes as they pass through the sink and patched into its local header, then
 * the central directory. ZIP64 records are written only when needed: an entry's size or local
 * header offset, or the central directory's size or offset, reaching 0xFFFFFFFF, or 65535
 * entries; small archives therefore stay plain zip files, as before.
 */
#ifndef MSH_ZIP_WRITE_H
#define MSH_ZIP_WRITE_H

#include "common/msh_io.h"

typedef struct msh_zipw_entry {
    char *name;
    int64_t header; /* local header offset */
    int64_t size;
    uint32_t crc;
} msh_zipw_entry;

typedef struct msh_zipw {
    msh_sink *s;
    msh_zipw_entry *v;
    size_t n, cap;
    int64_t limit;     /* sizes at or above this use ZIP64 fields */
    int64_t off_limit; /* local header offsets at or above this use ZIP64 fields */
    int open;          /* an entry is being written */
    int64_t data_at;
} msh_zipw;

/* Start an archive on an open sink. The ZIP64 limit is 0xFFFFFFFF. For tests only, the
 * environment variable MSH_TEST_ZIP64_THRESHOLD lowers it for sizes (entries, the central
 * directory: the ZIP64 end records appear), and MSH_TEST_ZIP64_OFFSETS=1 for local header offsets
 * too (readers such as torch's miniz refuse an offset field of 0xFFFFFFFF in an archive smaller
 * than 4 GiB, so only Python's zipfile reads that variant). */
void msh_zipw_init(msh_zipw *z, msh_sink *s);
/* An entry of `size` bytes: its local header now; the caller then appends exactly `size` bytes
 * to the sink and calls msh_zipw_end. */
msh_status msh_zipw_begin(msh_zipw *z, const char *name, int64_t size, msh_error *e);
msh_status msh_zipw_end(msh_zipw *z, msh_error *e);
/* A whole entry from memory. */
msh_status msh_zipw_mem(msh_zipw *z, const char *name, const void *p, size_t n, msh_error *e);
/* The central directory and end records. */
msh_status msh_zipw_finish(msh_zipw *z, msh_error *e);
void msh_zipw_free(msh_zipw *z);

#endif
