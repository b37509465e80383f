/* Read-only ZIP access for torch.save and torch.jit.save archives (see zip.c for what is
 * accepted). */
#ifndef MSH_ZIP_H
#define MSH_ZIP_H

#include "common/msh_common.h"

typedef struct msh_zip_entry {
    char *name;     /* full name, prefix included */
    int64_t header; /* local header offset */
    int64_t offset; /* data offset in the file */
    int64_t size;   /* data bytes (uncompressed) */
    int64_t csize;  /* bytes in the file (== size when STORED) */
    int method;     /* 0 STORED, 8 DEFLATE */
    uint32_t crc;   /* CRC-32 of the uncompressed bytes, from the central directory */
} msh_zip_entry;

typedef struct msh_zip {
    int fd;
    msh_zip_entry *entries; /* sorted by name */
    size_t n;
    char *prefix; /* "archive/" */
} msh_zip;

msh_status msh_zip_open(msh_zip *z, int fd, int64_t size, msh_error *e);
/* The entry "<prefix><rel>", or NULL. */
const msh_zip_entry *msh_zip_find(const msh_zip *z, const char *rel);

/* The whole uncompressed content of an entry into a malloc'd buffer (NUL-terminated, not
 * counted in `*n`): STORED entries are read, DEFLATE ones inflated with zlib in 64 KiB steps.
 * MSH_ERR_LIMIT when the entry holds more than `max` bytes; MSH_ERR_FORMAT when the inflated
 * size or the CRC-32 differs from the central directory's. */
msh_status msh_zip_read(const msh_zip *z, const msh_zip_entry *en, size_t max, uint8_t **out,
                        size_t *n, msh_error *e);
void msh_zip_free(msh_zip *z);

#endif
