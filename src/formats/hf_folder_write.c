/*
 * Hugging Face model folder writer: safetensors shards, the index, and a copy of the folder's
 * other files, in a temporary sibling folder renamed into place complete. The tensors' bytes
 * come from the caller (the engine); this file only places them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/msh_io.h"
#include "formats/hf_folder.h"

/* A growable text buffer for the index. */
typedef struct tbuf {
    char *p;
    size_t n, cap;
    int oom;
} tbuf;

static void put(tbuf *b, const char *s, size_t k) {
    if (b->oom)
        return;
    if (b->n + k + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 4096;
        while (nc < b->n + k + 1)
            nc *= 2;
        char *q = realloc(b->p, nc);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, k);
    b->n += k;
    b->p[b->n] = 0;
}

static void puts_(tbuf *b, const char *s) {
    put(b, s, strlen(s));
}

/* A JSON string: quotes, backslashes and control characters escaped; UTF-8 kept. */
static void put_json_str(tbuf *b, const char *s) {
    put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            put(b, esc, 2);
        } else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            put(b, esc, 6);
        } else {
            put(b, (const char *)&c, 1);
        }
    }
    put(b, "\"", 1);
}

typedef struct kv {
    const char *k, *v;
} kv;

static int cmp_kv(const void *a, const void *b) {
    return strcmp(((const kv *)a)->k, ((const kv *)b)->k);
}

/* {"k": "v", ...} sorted by key, one entry a line at `indent` (as json.dumps(indent=2,
 * sort_keys=True) writes it, which is what save_pretrained does). */
static void put_map(tbuf *b, kv *v, size_t n, const char *indent) {
    if (n)
        qsort(v, n, sizeof *v, cmp_kv);
    puts_(b, n ? "{\n" : "{}");
    for (size_t i = 0; i < n; i++) {
        puts_(b, indent);
        put_json_str(b, v[i].k);
        puts_(b, ": ");
        put_json_str(b, v[i].v);
        puts_(b, i + 1 < n ? ",\n" : "\n");
    }
    if (n) {
        put(b, indent, strlen(indent) - 2);
        puts_(b, "}");
    }
}

static msh_status write_index(const char *path, const msh_st_out *items, size_t n,
                              const size_t *shard_of, char **names, int64_t total,
                              const char *const *tied_from, const char *const *tied_to,
                              size_t n_tied, int64_t *bytes, msh_error *e) {
    kv *v = calloc((n > n_tied ? n : n_tied) + 1, sizeof *v);
    if (!v)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    tbuf b = {0};
    char num[32];
    snprintf(num, sizeof num, "%lld", (long long)total);
    puts_(&b, "{\n  \"metadata\": {\n");
    if (n_tied) {
        for (size_t i = 0; i < n_tied; i++)
            v[i] = (kv){tied_from[i], tied_to[i]};
        puts_(&b, "    \"tied\": ");
        put_map(&b, v, n_tied, "      ");
        puts_(&b, ",\n");
    }
    puts_(&b, "    \"total_size\": ");
    puts_(&b, num);
    puts_(&b, "\n  },\n  \"weight_map\": ");
    for (size_t i = 0; i < n; i++)
        v[i] = (kv){items[i].name, names[shard_of[i]]};
    put_map(&b, v, n, "    ");
    puts_(&b, "\n}\n");
    free(v);
    if (b.oom) {
        free(b.p);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    msh_sink s;
    msh_status st = msh_sink_open(&s, path, e);
    if (st == MSH_OK)
        st = msh_sink_write(&s, b.p, b.n, e);
    if (st == MSH_OK)
        st = msh_sink_finish(&s, e);
    if (st == MSH_OK)
        st = msh_sink_rename(&s, e);
    if (st == MSH_OK)
        *bytes = (int64_t)b.n;
    msh_sink_abort(&s);
    free(b.p);
    return st;
}

static char *join(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", a, b);
    return p;
}

/* Copy the input folder's other files into `tmp`. */
static msh_status copy_files(const msh_hf *in, const char *tmp, int64_t *copied, msh_error *e) {
    for (size_t i = 0; i < in->n_files; i++) {
        const msh_hf_file *f = &in->files[i];
        char *dst = join(tmp, f->rel);
        if (!dst)
            return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        msh_status st = MSH_OK;
        if (msh_cancelled()) {
            st = msh_fail(e, MSH_ERR_CANCELLED, "interrupted");
        } else if (f->is_dir) {
            if (mkdir(dst, 0777) != 0)
                st = msh_fail(e, MSH_ERR_IO, "cannot create folder '%s': %s", f->rel,
                              strerror(errno));
        } else {
            int fd = open(f->src, O_RDONLY | O_CLOEXEC);
            struct stat sb;
            msh_sink s;
            s.fd = -1;
            s.tmp_path = s.final_path = NULL;
            s.buf = NULL;
            if (fd < 0 || fstat(fd, &sb) != 0)
                st = msh_fail(e, MSH_ERR_IO, "cannot read '%s': %s", f->rel, strerror(errno));
            else if (!S_ISREG(sb.st_mode))
                st = msh_fail(e, MSH_ERR_UNSUPPORTED, "'%s' is no longer a regular file", f->rel);
            if (st == MSH_OK)
                st = msh_sink_open(&s, dst, e);
            if (st == MSH_OK)
                st = msh_sink_copy_from(&s, fd, 0, (int64_t)sb.st_size, e);
            if (st == MSH_OK)
                st = msh_sink_finish(&s, e);
            if (st == MSH_OK)
                st = msh_sink_rename(&s, e);
            msh_sink_abort(&s);
            if (fd >= 0)
                close(fd);
            if (st == MSH_OK) {
                (void)chmod(dst, (mode_t)(f->mode & 0777u));
                (*copied)++;
            }
        }
        free(dst);
        if (st != MSH_OK)
            return st;
    }
    return MSH_OK;
}

/* Put the finished folder `tmp` at `out`. An existing `out` (an empty folder or an older model
 * folder, as msh_hf_check_output allowed) is moved aside under a temporary name first, and
 * removed once the new one is in place. */
static msh_status put_in_place(const char *tmp, const char *out, msh_error *e) {
    struct stat sb;
    if (lstat(out, &sb) != 0) {
        if (rename(tmp, out) != 0)
            return msh_fail(e, MSH_ERR_IO, "cannot rename the temporary folder to %s: %s", out,
                            strerror(errno));
        msh_sync_dir_of(out);
        return MSH_OK;
    }
    if (!S_ISDIR(sb.st_mode))
        return msh_fail(e, MSH_ERR_USAGE, "output %s exists and is not a folder", out);
    char *old = NULL;
    MSH_FORWARD(msh_tmpdir_make(out, &old, e));
    /* renaming a folder onto an empty folder replaces it */
    if (rename(out, old) != 0) {
        msh_status st =
            msh_fail(e, MSH_ERR_IO, "cannot move the old %s aside: %s", out, strerror(errno));
        rmdir(old);
        free(old);
        return st;
    }
    if (rename(tmp, out) != 0) {
        msh_status st = msh_fail(e, MSH_ERR_IO, "cannot rename the temporary folder to %s: %s", out,
                                 strerror(errno));
        (void)rename(old, out);
        free(old);
        return st;
    }
    msh_sync_dir_of(out);
    (void)msh_rmtree(old);
    free(old);
    return MSH_OK;
}

msh_status msh_hf_write(const char *out, const msh_hf *in, const msh_st_out *items, size_t n,
                        int64_t max_shard, const char *const *tied_from, const char *const *tied_to,
                        size_t n_tied, msh_bytes_fn bytes, void *ctx, msh_hf_write_result *wr,
                        msh_error *e) {
    memset(wr, 0, sizeof *wr);
    if (max_shard <= 0)
        return msh_fail(e, MSH_ERR_USAGE, "the largest shard must be at least one byte");
    /* shards, filled in order; a tensor larger than a shard gets its own */
    size_t *shard_of = malloc((n + 1) * sizeof *shard_of);
    size_t *first = malloc((n + 2) * sizeof *first);
    if (!shard_of || !first) {
        free(shard_of);
        free(first);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    size_t ns = 0;
    int64_t cur = 0, total = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t b = items[i].nbytes;
        int big = b > max_shard;
        if (ns == 0 || (i > first[ns - 1] && (big || cur > max_shard - b))) {
            first[ns++] = i;
            cur = 0;
        }
        cur += b;
        total += b;
        shard_of[i] = ns - 1;
        if (big && i + 1 < n) { /* alone: the next tensor starts a new shard */
            first[ns++] = i + 1;
            cur = 0;
        }
    }
    if (ns == 0)
        first[ns++] = 0; /* no tensors: one file with none */
    first[ns] = n;
    char **names = calloc(ns + 1, sizeof *names);
    char *tmp = NULL;
    msh_status st = names ? MSH_OK : msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    for (size_t s = 0; st == MSH_OK && s < ns; s++) {
        char nm[64];
        if (ns == 1)
            snprintf(nm, sizeof nm, "model.safetensors");
        else
            snprintf(nm, sizeof nm, "model-%05zu-of-%05zu.safetensors", s + 1, ns);
        if (!(names[s] = msh_strdup(nm)))
            st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    if (st == MSH_OK)
        st = msh_tmpdir_make(out, &tmp, e);
    for (size_t s = 0; st == MSH_OK && s < ns; s++) {
        char *p = join(tmp, names[s]);
        int64_t sb = 0;
        if (!p)
            st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        else
            st = msh_st_write(p, NULL, items + first[s], first[s + 1] - first[s], bytes, ctx, &sb,
                              e);
        free(p);
        wr->bytes_out += sb;
    }
    if (st == MSH_OK && ns > 1) {
        char *p = join(tmp, "model.safetensors.index.json");
        int64_t ib = 0;
        st =
            p ? write_index(p, items, n, shard_of, names, total, tied_from, tied_to, n_tied, &ib, e)
              : msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        free(p);
        wr->bytes_out += ib;
    }
    if (st == MSH_OK)
        st = copy_files(in, tmp, &wr->files_copied, e);
    if (st == MSH_OK)
        st = put_in_place(tmp, out, e);
    if (st != MSH_OK && tmp)
        (void)msh_rmtree(tmp);
    if (st == MSH_OK)
        wr->shards = (int64_t)ns;
    else
        wr->bytes_out = 0;
    for (size_t s = 0; names && s < ns; s++)
        free(names[s]);
    free(names);
    free(tmp);
    free(shard_of);
    free(first);
    return st;
}
