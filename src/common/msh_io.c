/* copy_file_range is a Linux call declared under _GNU_SOURCE; a fallback covers the rest. */
#define _GNU_SOURCE
#include "common/msh_io.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

msh_status msh_reader_init(msh_reader *r, int fd, int64_t size, size_t cap, msh_error *e) {
    memset(r, 0, sizeof *r);
    r->fd = fd;
    r->size = size;
    r->cap = cap;
    r->buf = malloc(cap);
    if (!r->buf)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory for a %zu-byte read buffer", cap);
    return MSH_OK;
}

void msh_reader_free(msh_reader *r) {
    free(r->buf);
    r->buf = NULL;
}

msh_status msh_pread_full(int fd, void *dst, size_t n, int64_t off, msh_error *e) {
    uint8_t *p = dst;
    while (n > 0) {
        ssize_t k = pread(fd, p, n, (off_t)off);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return msh_fail(e, MSH_ERR_IO, "read failed at offset %lld: %s", (long long)off,
                            strerror(errno));
        }
        if (k == 0)
            return msh_fail(e, MSH_ERR_FORMAT, "unexpected end of file at offset %lld",
                            (long long)off);
        p += k;
        n -= (size_t)k;
        off += k;
    }
    return MSH_OK;
}

msh_status msh_pwrite_full(int fd, const void *src, size_t n, int64_t off, msh_error *e) {
    const uint8_t *p = src;
    while (n > 0) {
        ssize_t k = pwrite(fd, p, n, (off_t)off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return msh_fail(e, MSH_ERR_IO, "write failed at offset %lld: %s", (long long)off,
                            k < 0 ? strerror(errno) : "nothing written");
        p += k;
        n -= (size_t)k;
        off += k;
    }
    return MSH_OK;
}

msh_status msh_reader_read(msh_reader *r, void *dst, size_t n, msh_error *e) {
    uint8_t *out = dst;
    if ((int64_t)n > r->size - r->pos)
        return msh_fail(e, MSH_ERR_FORMAT, "truncated: %zu bytes needed at offset %lld", n,
                        (long long)r->pos);
    while (n > 0) {
        if (r->pos < r->boff || r->pos >= r->boff + (int64_t)r->blen) {
            int64_t left = r->size - r->pos;
            size_t want = (int64_t)r->cap < left ? r->cap : (size_t)left;
            MSH_FORWARD(msh_pread_full(r->fd, r->buf, want, r->pos, e));
            r->boff = r->pos;
            r->blen = want;
        }
        size_t at = (size_t)(r->pos - r->boff);
        size_t k = r->blen - at;
        if (k > n)
            k = n;
        memcpy(out, r->buf + at, k);
        out += k;
        n -= k;
        r->pos += (int64_t)k;
    }
    return MSH_OK;
}

char *msh_path_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash)
        return msh_strdup(".");
    if (slash == path)
        return msh_strdup("/");
    size_t n = (size_t)(slash - path);
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, path, n);
        d[n] = 0;
    }
    return d;
}

static mode_t g_mode = 0644, g_umask = 022;

/* The umask from /proc/self/status (Linux 4.7 and later); -1 when it does not say. */
static long proc_umask(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    char line[256];
    long m = -1;
    while (m < 0 && fgets(line, sizeof line, f))
        if (strncmp(line, "Umask:", 6) == 0) {
            char *end;
            long v = strtol(line + 6, &end, 8);
            if (end != line + 6 && v >= 0 && v <= 0777)
                m = v;
        }
    fclose(f);
    return m;
}

static void read_umask(void) {
    /* umask() can only read the mask by setting it, which for a moment would give files that
     * other threads of the process create mode 0666: ask /proc first */
    long pm = proc_umask();
    mode_t m;
    if (pm >= 0) {
        m = (mode_t)pm;
    } else {
        m = umask(0);
        umask(m);
    }
    g_umask = m;
    g_mode = (mode_t)(0666 & ~m);
}

static mode_t msh_file_mode(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, read_umask);
    return g_mode;
}

/* Cancellation flags are set from signal handlers and read by other threads: lock-free atomics
 * are both async-signal-safe and free of data races (a volatile sig_atomic_t is only the
 * first). */
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "cancellation needs lock-free atomic ints");
static atomic_int g_cancel;
void msh_cancel_request(void) {
    atomic_store_explicit(&g_cancel, 1, memory_order_relaxed);
}

struct msh_cancel_token {
    atomic_int requested;
};

msh_status msh_cancel_token_create(msh_cancel_token **token, msh_error *err) {
    *token = malloc(sizeof **token);
    if (!*token)
        return msh_fail(err, MSH_ERR_NOMEM, "out of memory");
    atomic_init(&(*token)->requested, 0);
    return MSH_OK;
}

void msh_cancel_token_request(msh_cancel_token *token) {
    if (token)
        atomic_store_explicit(&token->requested, 1, memory_order_relaxed);
}

int msh_cancel_token_requested(const msh_cancel_token *token) {
    /* atomic_load takes a non-const pointer in C11 */
    return token &&
           atomic_load_explicit(&((msh_cancel_token *)token)->requested, memory_order_relaxed) != 0;
}

void msh_cancel_token_reset(msh_cancel_token *token) {
    if (token)
        atomic_store_explicit(&token->requested, 0, memory_order_relaxed);
}

void msh_cancel_token_free(msh_cancel_token *token) {
    free(token);
}

/* The token of the conversion running on this thread: the writers check it where they check
 * the process-wide request, without a token passed down every call. */
static _Thread_local const msh_cancel_token *tl_token;

const msh_cancel_token *msh_cancel_scope_enter(const msh_cancel_token *token) {
    const msh_cancel_token *prev = tl_token;
    tl_token = token;
    return prev;
}

void msh_cancel_scope_leave(const msh_cancel_token *prev) {
    tl_token = prev;
}

msh_status msh_cancel_check(const msh_cancel_token *token, msh_error *e) {
    if (atomic_load_explicit(&g_cancel, memory_order_relaxed))
        return msh_fail(e, MSH_ERR_CANCELLED, "interrupted");
    if (msh_cancel_token_requested(token))
        return msh_fail(e, MSH_ERR_CANCELLED, "cancelled");
    return MSH_OK;
}

int msh_cancelled(void) {
    return msh_cancel_check(tl_token, NULL) != MSH_OK;
}

static char g_host[64];
static void read_host(void) {
    if (gethostname(g_host, sizeof g_host - 1) != 0 || !g_host[0])
        snprintf(g_host, sizeof g_host, "host");
    for (char *p = g_host; *p; p++) /* keep temp names plain */
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9')))
            *p = '_';
}

/* Temporary names carry this host and process, so a later run can tell stale ones. */
static const char *host_tag(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, read_host);
    return g_host;
}

/* "<folder>/.<name>.msh-tmp-<host>-<pid>-XXXXXX" for `path` (its last component, trailing
 * slashes aside): the template of every temporary name, which msh_clean_stale_temps knows.
 * malloc'd; NULL when out of memory. */
static char *temp_template(const char *path) {
    size_t fl = strlen(path);
    while (fl > 1 && path[fl - 1] == '/')
        fl--; /* "out/" names the folder "out" */
    char *clean = malloc(fl + 1);
    if (!clean)
        return NULL;
    memcpy(clean, path, fl);
    clean[fl] = 0;
    char *dir = msh_path_dir(clean);
    const char *base = strrchr(clean, '/');
    base = base ? base + 1 : clean;
    size_t n = (dir ? strlen(dir) : 0) + strlen(base) + 128;
    char *t = dir ? malloc(n) : NULL;
    if (t)
        snprintf(t, n, "%s/.%s.msh-tmp-%s-%ld-XXXXXX", dir, base, host_tag(), (long)getpid());
    free(dir);
    free(clean);
    return t;
}

msh_status msh_sink_open(msh_sink *s, const char *final_path, msh_error *e) {
    memset(s, 0, sizeof *s);
    s->fd = -1;
    s->tmp_path = temp_template(final_path);
    s->final_path = msh_strdup(final_path);
    s->cap = (size_t)1 << 20;
    s->buf = malloc(s->cap);
    if (!s->tmp_path || !s->final_path || !s->buf) {
        msh_sink_abort(s);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    s->fd = mkstemp(s->tmp_path);
    if (s->fd < 0) {
        msh_status st = msh_fail(e, MSH_ERR_IO,
                                 "cannot create a temporary file in the folder of "
                                 "%s: %s",
                                 final_path, strerror(errno));
        free(s->tmp_path);
        s->tmp_path = NULL;
        msh_sink_abort(s);
        return st;
    }
    if (fchmod(s->fd, msh_file_mode()) != 0) {
        msh_status st = msh_fail(e, MSH_ERR_IO, "cannot set permissions of %s: %s", s->tmp_path,
                                 strerror(errno));
        msh_sink_abort(s);
        return st;
    }
    return MSH_OK;
}

/* Start writing back what reached the file so far, without waiting: the fsync at the end then
 * finds little left to do, and the disk works while the next pieces are made. */
#define MSH_WRITEBACK_STEP ((int64_t)8 << 20)
static void writeback(msh_sink *s) {
#if defined(__linux__) && defined(SYNC_FILE_RANGE_WRITE)
    int64_t on_file = s->written - (int64_t)s->len;
    if (on_file - s->kicked >= MSH_WRITEBACK_STEP) {
        (void)sync_file_range(s->fd, (off_t)s->kicked, (off_t)(on_file - s->kicked),
                              SYNC_FILE_RANGE_WRITE);
        s->kicked = on_file;
    }
#else
    (void)s;
#endif
}

static msh_status write_all(msh_sink *s, const uint8_t *p, size_t n, msh_error *e) {
    while (n > 0) {
        ssize_t k = write(s->fd, p, n);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return msh_fail(e, MSH_ERR_IO, "cannot write %s: %s", s->final_path, strerror(errno));
        }
        p += k;
        n -= (size_t)k;
    }
    return MSH_OK;
}

static msh_status msh_sink_flush(msh_sink *s, msh_error *e) {
    if (s->len == 0)
        return MSH_OK;
    MSH_FORWARD(write_all(s, s->buf, s->len, e));
    s->len = 0;
    writeback(s);
    return MSH_OK;
}

static void crc_add(msh_sink *s, const void *p, size_t n) {
    if (!s->crc_on)
        return;
    const uint8_t *b = p;
    while (n > 0) { /* zlib takes 32-bit lengths */
        unsigned k = n > (1u << 30) ? 1u << 30 : (unsigned)n;
        s->crc = (uint32_t)crc32(s->crc, b, k);
        b += k;
        n -= k;
    }
}

void msh_sink_crc_start(msh_sink *s) {
    s->crc_on = 1;
    s->crc = 0;
}

uint32_t msh_sink_crc_stop(msh_sink *s) {
    s->crc_on = 0;
    return s->crc;
}

msh_status msh_sink_write(msh_sink *s, const void *p, size_t n, msh_error *e) {
    const uint8_t *src = p;
    MSH_FORWARD(msh_cancel_check(tl_token, e));
    crc_add(s, p, n);
    if (n >= s->cap) {
        /* Large pieces go straight to the file: no copy through the buffer. */
        MSH_FORWARD(msh_sink_flush(s, e));
        s->written += (int64_t)n;
        MSH_FORWARD(write_all(s, src, n, e));
        writeback(s);
        return MSH_OK;
    }
    s->written += (int64_t)n;
    while (n > 0) {
        if (s->len == s->cap)
            MSH_FORWARD(msh_sink_flush(s, e));
        size_t k = s->cap - s->len;
        if (k > n)
            k = n;
        memcpy(s->buf + s->len, src, k);
        s->len += k;
        src += k;
        n -= k;
    }
    return MSH_OK;
}

msh_status msh_sink_copy_from(msh_sink *s, int fd, int64_t off, int64_t len, msh_error *e) {
    MSH_FORWARD(msh_cancel_check(tl_token, e));
    MSH_FORWARD(msh_sink_flush(s, e));
#if defined(__linux__)
    /* In-kernel copy: no trip through user space (and a reflink where the file system can);
     * not when the bytes must be checksummed on their way. */
    while (len > 0 && !s->crc_on) {
        loff_t in_off = (loff_t)off;
        size_t want = len > ((int64_t)1 << 30) ? (size_t)1 << 30 : (size_t)len;
        ssize_t k = copy_file_range(fd, &in_off, s->fd, NULL, want, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break; /* unsupported here (EXDEV, ENOSYS, EINVAL, ...) or EOF: fall back */
        off += k;
        len -= k;
        s->written += k;
        writeback(s);
    }
#endif
    while (len > 0) {
        size_t n = len < (int64_t)s->cap ? (size_t)len : s->cap;
        MSH_FORWARD(msh_pread_full(fd, s->buf, n, off, e));
        crc_add(s, s->buf, n);
        s->len = n;
        s->written += (int64_t)n;
        MSH_FORWARD(msh_sink_flush(s, e));
        off += (int64_t)n;
        len -= (int64_t)n;
    }
    return MSH_OK;
}

msh_status msh_sink_pad(msh_sink *s, int64_t align, msh_error *e) {
    static const uint8_t zeros[256];
    int64_t rem = s->written % align;
    int64_t need = rem ? align - rem : 0;
    while (need > 0) {
        size_t k = need > (int64_t)sizeof zeros ? sizeof zeros : (size_t)need;
        MSH_FORWARD(msh_sink_write(s, zeros, k, e));
        need -= (int64_t)k;
    }
    return MSH_OK;
}

msh_status msh_sink_finish(msh_sink *s, msh_error *e) {
    MSH_FORWARD(msh_sink_flush(s, e));
    if (fsync(s->fd) != 0)
        return msh_fail(e, MSH_ERR_IO, "cannot sync %s: %s", s->final_path, strerror(errno));
    if (close(s->fd) != 0) {
        s->fd = -1;
        return msh_fail(e, MSH_ERR_IO, "cannot close %s: %s", s->final_path, strerror(errno));
    }
    s->fd = -1;
    return MSH_OK;
}

msh_status msh_sink_rename(msh_sink *s, msh_error *e) {
    if (rename(s->tmp_path, s->final_path) != 0)
        return msh_fail(e, MSH_ERR_IO, "cannot rename the temporary file to %s: %s", s->final_path,
                        strerror(errno));
    free(s->tmp_path);
    s->tmp_path = NULL;
    /* Make the rename itself durable. */
    msh_sync_dir_of(s->final_path);
    return MSH_OK;
}

void msh_sync_dir_of(const char *path) {
    char *dir = msh_path_dir(path);
    if (dir) {
        int dfd = open(dir, O_RDONLY | O_DIRECTORY);
        if (dfd >= 0) {
            (void)fsync(dfd);
            close(dfd);
        }
        free(dir);
    }
}

msh_status msh_tmpdir_make(const char *final_path, char **tmp_path, msh_error *e) {
    *tmp_path = NULL;
    char *t = temp_template(final_path);
    if (!t)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    if (!mkdtemp(t)) {
        msh_status st = msh_fail(e, MSH_ERR_IO, "cannot create a temporary folder beside %s: %s",
                                 final_path, strerror(errno));
        free(t);
        return st;
    }
    /* mkdtemp makes it 0700: the finished folder gets a folder's usual mode */
    (void)msh_file_mode(); /* reads the umask once */
    (void)chmod(t, (mode_t)(0777 & ~g_umask));
    *tmp_path = t;
    return MSH_OK;
}

msh_status msh_scratch_open(const char *near_path, int *fd, msh_error *e) {
    *fd = -1;
    char *t = temp_template(near_path);
    if (!t)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    int f = mkstemp(t);
    if (f < 0) {
        msh_status st = msh_fail(e, MSH_ERR_IO, "cannot create a scratch file beside %s: %s",
                                 near_path, strerror(errno));
        free(t);
        return st;
    }
    unlink(t); /* nameless from now: nothing is left behind, whatever happens */
    free(t);
    *fd = f;
    return MSH_OK;
}

static int rmtree_at(const char *path, int depth) {
    struct stat sb;
    if (lstat(path, &sb) != 0)
        return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(sb.st_mode))
        return unlink(path);
    if (depth > 256) {
        errno = ELOOP;
        return -1;
    }
    DIR *d = opendir(path);
    if (!d)
        return -1;
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        size_t len = strlen(path) + strlen(de->d_name) + 2;
        char *p = malloc(len);
        if (!p) {
            rc = -1;
            break;
        }
        snprintf(p, len, "%s/%s", path, de->d_name);
        if (rmtree_at(p, depth + 1) != 0)
            rc = -1;
        free(p);
    }
    closedir(d);
    if (rc == 0)
        rc = rmdir(path);
    return rc;
}

int msh_rmtree(const char *path) {
    return rmtree_at(path, 0);
}

void msh_sink_abort(msh_sink *s) {
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    if (s->tmp_path)
        unlink(s->tmp_path);
    free(s->tmp_path);
    free(s->final_path);
    free(s->buf);
    s->tmp_path = s->final_path = NULL;
    s->buf = NULL;
}

msh_status msh_sink_patch(msh_sink *s, int64_t off, const void *p, size_t n, msh_error *e) {
    MSH_FORWARD(msh_sink_flush(s, e));
    const uint8_t *b = p;
    while (n > 0) {
        ssize_t k = pwrite(s->fd, b, n, (off_t)off);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return msh_fail(e, MSH_ERR_IO, "cannot write %s: %s", s->final_path, strerror(errno));
        }
        b += k;
        n -= (size_t)k;
        off += k;
    }
    return MSH_OK;
}

uint32_t msh_crc32(uint32_t crc, const void *p, size_t n) {
    const uint8_t *b = p;
    while (n > 0) {
        unsigned k = n > (1u << 30) ? 1u << 30 : (unsigned)n;
        crc = (uint32_t)crc32(crc, b, k);
        b += k;
        n -= k;
    }
    return crc;
}

/* ".<name>.msh-tmp-<host>-<pid>-XXXXXX" of this host whose process is gone */
static int stale(const char *name) {
    const char *t = strstr(name, ".msh-tmp-");
    if (name[0] != '.' || !t)
        return 0;
    t += 9;
    size_t hl = strlen(host_tag());
    if (strncmp(t, host_tag(), hl) != 0 || t[hl] != '-')
        return 0;
    char *end;
    long pid = strtol(t + hl + 1, &end, 10);
    if (end == t + hl + 1 || *end != '-' || pid <= 0)
        return 0;
    return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

static int64_t clean_dir(const char *dir, int depth) {
    if (depth > 64)
        return 0;
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int64_t n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        size_t len = strlen(dir) + strlen(de->d_name) + 2;
        char *p = malloc(len);
        if (!p)
            break;
        snprintf(p, len, "%s/%s", dir, de->d_name);
        struct stat sb;
        if (lstat(p, &sb) == 0) {
            if (S_ISDIR(sb.st_mode) && stale(de->d_name))
                n += msh_rmtree(p) == 0; /* a model folder being written, or a replaced one */
            else if (S_ISDIR(sb.st_mode))
                n += clean_dir(p, depth + 1);
            else if (S_ISREG(sb.st_mode) && stale(de->d_name) && unlink(p) == 0)
                n++;
        }
        free(p);
    }
    closedir(d);
    return n;
}

int64_t msh_clean_stale_temps(const char *dir) {
    return clean_dir(dir, 0);
}
