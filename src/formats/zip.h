/* Read-only ZIP access for torch.save archives (see zip.c for what is accepted). */
#ifndef MSH_ZIP_H
#define MSH_ZIP_H

#include "common/msh_common.h"

typedef struct msh_zip_entry {
    char *name;     /* full name, prefix included */
    int64_t header; /* local header offset */
    int64_t offset; /* data offset in the file */
    int64_t size;   /* data bytes */
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
void msh_zip_free(msh_zip *z);

#endif
