/* Bounded-memory file access: a buffered pread reader and a temp-then-rename writer. */
#ifndef MSH_IO_H
#define MSH_IO_H

#include "common/msh_common.h"

/* Reads a file through one fixed buffer with pread: memory stays at `cap` bytes and, unlike
 * mmap, touched file pages never count against the process's resident set. */
typedef struct msh_reader {
    int fd;
    int64_t size;
    int64_t pos;
    uint8_t *buf;
    size_t cap;
    int64_t boff;
    size_t blen;
} msh_reader;

msh_status msh_reader_init(msh_reader *r, int fd, int64_t size, size_t cap, msh_error *e);
void msh_reader_free(msh_reader *r);
/* Copy n bytes at the current position into dst and advance. MSH_ERR_FORMAT past the end. */
msh_status msh_reader_read(msh_reader *r, void *dst, size_t n, msh_error *e);

/* pread exactly n bytes at off (retrying short reads). */
msh_status msh_pread_full(int fd, void *dst, size_t n, int64_t off, msh_error *e);
/* Write all `n` bytes at `off` (retrying short writes and EINTR). */
msh_status msh_pwrite_full(int fd, const void *src, size_t n, int64_t off, msh_error *e);

/* An output file written under a temporary name in its final folder. */
typedef struct msh_sink {
    int fd;
    char *tmp_path;
    char *final_path;
    uint8_t *buf;
    size_t cap;
    size_t len;
    int64_t written; /* bytes accepted so far (buffered included) */
    int64_t kicked;  /* bytes whose write-back has been started */
    int crc_on;      /* msh_sink_crc_start: CRC-32 every byte accepted */
    uint32_t crc;
} msh_sink;

msh_status msh_sink_open(msh_sink *s, const char *final_path, msh_error *e);
msh_status msh_sink_write(msh_sink *s, const void *p, size_t n, msh_error *e);
/* Append `len` bytes of file `fd` at `off` (copy_file_range where possible). */
msh_status msh_sink_copy_from(msh_sink *s, int fd, int64_t off, int64_t len, msh_error *e);
/* Write zero bytes until the size is a multiple of `align`. */
msh_status msh_sink_pad(msh_sink *s, int64_t align, msh_error *e);
/* Flush and fsync; the file keeps its temporary name until msh_sink_rename. */
msh_status msh_sink_finish(msh_sink *s, msh_error *e);
msh_status msh_sink_rename(msh_sink *s, msh_error *e);
/* Close and remove the temporary file (safe to call after rename, then it only frees). */
void msh_sink_abort(msh_sink *s);

/* Overwrite `n` bytes at `off` of the written part (everything buffered is flushed first). */
msh_status msh_sink_patch(msh_sink *s, int64_t off, const void *p, size_t n, msh_error *e);

/* Where a writer gets the bytes of tensor `index` (of its format's table), already planned:
 * the callee appends them to `dst`. Writers call it in the order their layout promised. */
typedef msh_status (*msh_bytes_fn)(void *ctx, size_t index, msh_sink *dst, msh_error *e);

/* CRC-32 every byte accepted from now (copies included) until msh_sink_crc_stop, which returns
 * it (for zip entries). */
void msh_sink_crc_start(msh_sink *s);
uint32_t msh_sink_crc_stop(msh_sink *s);

/* CRC-32 (IEEE 802.3, as zip uses it), continued from `crc` (start with 0). */
uint32_t msh_crc32(uint32_t crc, const void *p, size_t n);

/* The folder part of a path ("." when none); malloc'd. */
char *msh_path_dir(const char *path);

/* A new empty folder beside `final_path`, named like the temporary files
 * (".<name>.msh-tmp-<host>-<pid>-XXXXXX"), so that msh_clean_stale_temps removes it when its
 * process dies. `*tmp_path` is malloc'd. */
msh_status msh_tmpdir_make(const char *final_path, char **tmp_path, msh_error *e);

/* A scratch file beside `near_path` (named like the temporary files, then unlinked at once):
 * `*fd` is open for reading and writing, and the space goes when it is closed. */
msh_status msh_scratch_open(const char *near_path, int *fd, msh_error *e);

/* Remove `path` and, when it is a folder, everything in it, never following a symbolic link
 * (a link is removed, not its target). 0 on success, -1 otherwise (errno set). */
int msh_rmtree(const char *path);

/* fsync the folder that holds `path` (makes a rename durable); failures are ignored. */
void msh_sync_dir_of(const char *path);

/* Cancellation. MSH_ERR_CANCELLED ("interrupted" or "cancelled") once msh_cancel_request was
 * called or `token` (NULL: none) is requested; MSH_OK otherwise. */
msh_status msh_cancel_check(const msh_cancel_token *token, msh_error *e);
/* Make `token` the one of the calling thread's conversion until msh_cancel_scope_leave(the
 * returned previous one); sink writes and msh_cancelled check it. */
const msh_cancel_token *msh_cancel_scope_enter(const msh_cancel_token *token);
void msh_cancel_scope_leave(const msh_cancel_token *prev);
/* 1 when msh_cancel_check(the calling thread's token) says cancelled. */
int msh_cancelled(void);

#endif
