/* Hugging Face model folders: detection, the index, the shards as one table, the other files. */
#define _GNU_SOURCE /* realpath, strnlen, O_NOFOLLOW on older libcs */
#include "formats/hf_folder.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/msh_io.h"

#define HF_MAX_INDEX ((int64_t)64 << 20)
#define HF_MAX_DEPTH 64

static const char *const ST_SINGLE = "model.safetensors";
static const char *const ST_INDEX = "model.safetensors.index.json";
static const char *const BIN_SINGLE = "pytorch_model.bin";
static const char *const BIN_INDEX = "pytorch_model.bin.index.json";

static char *join(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s%s%s", a, (*a && a[strlen(a) - 1] == '/') ? "" : "/", b);
    return p;
}

static int64_t mtime_of(const struct stat *sb) {
    return (int64_t)sb->st_mtim.tv_sec * 1000000000 + (int64_t)sb->st_mtim.tv_nsec;
}

/* 1 when `dir/name` exists and is not a folder (a link counts: validation says what is wrong). */
static int holds(const char *dir, const char *name) {
    char *p = join(dir, name);
    struct stat sb;
    int ok = p && lstat(p, &sb) == 0 && !S_ISDIR(sb.st_mode);
    free(p);
    return ok;
}

msh_format msh_hf_detect(const char *dir) {
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return MSH_FORMAT_AUTO;
    if (holds(dir, ST_SINGLE) || holds(dir, ST_INDEX))
        return MSH_FORMAT_SAFETENSORS;
    if (holds(dir, BIN_SINGLE) || holds(dir, BIN_INDEX))
        return MSH_FORMAT_PTH;
    return MSH_FORMAT_AUTO;
}

/* "<prefix>-<digits>-of-<digits><ext>": *k and *n, or 0. */
static int shard_name(const char *name, const char *prefix, const char *ext, long *k, long *n) {
    size_t pl = strlen(prefix), el = strlen(ext), nl = strlen(name);
    if (nl <= pl + el || strncmp(name, prefix, pl) != 0 || name[pl] != '-' ||
        strcmp(name + nl - el, ext) != 0)
        return 0;
    const char *p = name + pl + 1;
    char *end;
    if (*p < '0' || *p > '9')
        return 0;
    *k = strtol(p, &end, 10);
    if (strncmp(end, "-of-", 4) != 0 || end[4] < '0' || end[4] > '9')
        return 0;
    *n = strtol(end + 4, &end, 10);
    return end == name + nl - el;
}

/* A weight file or index of either format, by name (never copied). */
static int weight_name(const char *name) {
    long k, n;
    return strcmp(name, ST_SINGLE) == 0 || strcmp(name, ST_INDEX) == 0 ||
           strcmp(name, BIN_SINGLE) == 0 || strcmp(name, BIN_INDEX) == 0 ||
           shard_name(name, "model", ".safetensors", &k, &n) ||
           shard_name(name, "pytorch_model", ".bin", &k, &n);
}

static int safe_name(const char *s) {
    return *s && s[0] != '.' && !strchr(s, '/') && !strchr(s, '\\') && !strstr(s, "..") &&
           strlen(s) <= 255;
}

/* A weight file: a regular file of the folder, not a link; its size and time. */
static msh_status stat_weight(const msh_hf *h, const char *name, const char *what, int64_t *size,
                              int64_t *mtime, msh_error *e) {
    char *p = join(h->dir, name);
    if (!p)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    struct stat sb;
    int rc = lstat(p, &sb), err = errno;
    free(p);
    if (rc != 0)
        return msh_fail(e, err == ENOENT ? MSH_ERR_FORMAT : MSH_ERR_IO, "%s '%s': %s", what, name,
                        err == ENOENT ? "not in the folder" : strerror(err));
    if (S_ISLNK(sb.st_mode))
        return msh_fail(e, MSH_ERR_UNSAFE,
                        "%s '%s' is a symbolic link (weight files must be "
                        "regular files of the folder)",
                        what, name);
    if (!S_ISREG(sb.st_mode))
        return msh_fail(e, MSH_ERR_FORMAT, "%s '%s' is not a regular file", what, name);
    *size = (int64_t)sb.st_size;
    *mtime = mtime_of(&sb);
    return MSH_OK;
}

static int cmp_shard(const void *a, const void *b) {
    return strcmp(((const msh_hf_shard *)a)->file, ((const msh_hf_shard *)b)->file);
}

static msh_status add_shard(msh_hf *h, const char *file, size_t *cap, msh_error *e) {
    if (!msh_grow((void **)&h->shards, cap, h->n_shards, sizeof *h->shards))
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    msh_hf_shard *s = &h->shards[h->n_shards];
    memset(s, 0, sizeof *s);
    s->pth.fd = s->st.fd = -1;
    s->file = msh_strdup(file);
    s->path = join(h->dir, file);
    h->n_shards++;
    if (!s->file || !s->path)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    return MSH_OK;
}

/* Read and check the index; add its shards. */
static msh_status read_index(msh_hf *h, size_t *cap, msh_error *e) {
    int64_t size, mtime;
    MSH_FORWARD(stat_weight(h, h->index, "index", &size, &mtime, e));
    if (size > HF_MAX_INDEX)
        return msh_fail(e, MSH_ERR_LIMIT, "%s: %lld bytes, more than the %lld an index may have",
                        h->index, (long long)size, (long long)HF_MAX_INDEX);
    h->bytes_in = size;
    h->mtime_ns = mtime;
    char *p = join(h->dir, h->index);
    if (!p)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    int fd = open(p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    free(p);
    if (fd < 0)
        return msh_fail(e, MSH_ERR_IO, "%s: cannot open: %s", h->index, strerror(errno));
    char *buf = malloc((size_t)size + 1);
    msh_status st = buf ? msh_pread_full(fd, buf, (size_t)size, 0, e)
                        : msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    close(fd);
    if (st != MSH_OK) {
        free(buf);
        return st == MSH_ERR_NOMEM ? st : msh_fail(e, st, "%s: cannot read it", h->index);
    }
    buf[size] = 0;
    h->index_json = cJSON_ParseWithLength(buf, (size_t)size);
    free(buf);
    const cJSON *root = h->index_json;
    if (!cJSON_IsObject(root))
        return msh_fail(e, MSH_ERR_FORMAT, "%s: not a JSON object", h->index);
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(root, "metadata");
    if (meta && !cJSON_IsObject(meta))
        return msh_fail(e, MSH_ERR_FORMAT, "%s: \"metadata\" is not an object", h->index);
    const cJSON *ts = meta ? cJSON_GetObjectItemCaseSensitive(meta, "total_size") : NULL;
    if (ts && (!cJSON_IsNumber(ts) || ts->valuedouble < 0))
        return msh_fail(e, MSH_ERR_FORMAT, "%s: \"total_size\" is not a non-negative number",
                        h->index);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!wm)
        return msh_fail(e, MSH_ERR_FORMAT, "%s: no \"weight_map\"", h->index);
    if (!cJSON_IsObject(wm))
        return msh_fail(e, MSH_ERR_FORMAT, "%s: \"weight_map\" is not an object", h->index);
    msh_strmap files;
    msh_strmap_init(&files);
    const char *prefix = h->weights == MSH_FORMAT_SAFETENSORS ? "model" : "pytorch_model";
    const char *ext = h->weights == MSH_FORMAT_SAFETENSORS ? ".safetensors" : ".bin";
    long of = -1;
    const cJSON *x;
    cJSON_ArrayForEach(x, wm) {
        if (!x->string || !cJSON_IsString(x) || !x->valuestring) {
            st = msh_fail(e, MSH_ERR_FORMAT, "%s: weight_map entry '%.200s' is not a file name",
                          h->index, x->string ? x->string : "");
            break;
        }
        int64_t *seen = msh_strmap_get(&h->wmap, x->string);
        if (seen) {
            st = msh_fail(e, MSH_ERR_FORMAT, "%s: tensor '%.200s' is listed twice", h->index,
                          x->string);
            break;
        }
        const char *f = x->valuestring;
        if (!safe_name(f)) {
            st = msh_fail(e, MSH_ERR_UNSAFE,
                          "%s: tensor '%.200s': file name '%.200s' is not a plain name in the "
                          "folder",
                          h->index, x->string, f);
            break;
        }
        int64_t *fi = msh_strmap_get(&files, f);
        if (!fi) {
            long k, n;
            if (shard_name(f, prefix, ext, &k, &n)) {
                if (of >= 0 && n != of) {
                    st =
                        msh_fail(e, MSH_ERR_FORMAT, "%s: '%.200s' is a shard of %ld, others of %ld",
                                 h->index, f, n, of);
                    break;
                }
                of = n;
            }
            if ((st = add_shard(h, f, cap, e)) != MSH_OK)
                break;
            fi = msh_strmap_upsert(&files, h->shards[h->n_shards - 1].file,
                                   (int64_t)h->n_shards - 1);
        }
        int64_t *v = fi ? msh_strmap_upsert(&h->wmap, x->string, 0) : NULL;
        if (!v) {
            st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            break;
        }
        *v = 0; /* set once the shards are sorted */
    }
    if (st == MSH_OK && h->n_shards == 0)
        st = msh_fail(e, MSH_ERR_FORMAT, "%s: the weight_map is empty", h->index);
    /* shards named k-of-n: all n of them */
    for (long k = 1; st == MSH_OK && of > 0 && k <= of; k++) {
        int found = 0;
        for (size_t i = 0; i < h->n_shards && !found; i++) {
            long kk, nn;
            found = shard_name(h->shards[i].file, prefix, ext, &kk, &nn) && kk == k;
        }
        if (!found)
            st = msh_fail(e, MSH_ERR_FORMAT, "%s: lists no shard %ld of %ld", h->index, k, of);
    }
    /* every shard file of the folder is listed */
    DIR *d = st == MSH_OK ? opendir(h->dir) : NULL;
    if (st == MSH_OK && !d)
        st = msh_fail(e, MSH_ERR_IO, "cannot read the folder: %s", strerror(errno));
    struct dirent *de;
    while (st == MSH_OK && (de = readdir(d))) {
        long k, n;
        if (shard_name(de->d_name, prefix, ext, &k, &n) && !msh_strmap_get(&files, de->d_name))
            st = msh_fail(e, MSH_ERR_FORMAT,
                          "%s: the folder's shard '%.200s' is not in the index's weight_map",
                          h->index, de->d_name);
    }
    if (d)
        closedir(d);
    msh_strmap_free(&files);
    return st;
}

static void other_weights_note(msh_hf *h) {
    const char *other = h->weights == MSH_FORMAT_SAFETENSORS ? BIN_SINGLE : NULL;
    if (h->weights == MSH_FORMAT_SAFETENSORS && !holds(h->dir, BIN_SINGLE) &&
        holds(h->dir, BIN_INDEX))
        other = BIN_INDEX;
    if (other && holds(h->dir, other))
        snprintf(h->note, sizeof h->note,
                 "%s is not converted: the safetensors weights are (transformers prefers them); "
                 "the .bin weights are not copied",
                 other);
}

msh_status msh_hf_scan(msh_hf *h, const char *dir, msh_error *e) {
    memset(h, 0, sizeof *h);
    msh_strmap_init(&h->wmap);
    h->dir = msh_strdup(dir);
    if (!h->dir)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    h->weights = msh_hf_detect(dir);
    if (h->weights == MSH_FORMAT_AUTO)
        return msh_fail(e, MSH_ERR_USAGE,
                        "not a Hugging Face model folder (no %s, %s, %s or %s in it)", ST_SINGLE,
                        ST_INDEX, BIN_SINGLE, BIN_INDEX);
    h->real = realpath(dir, NULL);
    if (!h->real)
        return msh_fail(e, MSH_ERR_IO, "cannot resolve the folder: %s", strerror(errno));
    const char *single = h->weights == MSH_FORMAT_SAFETENSORS ? ST_SINGLE : BIN_SINGLE;
    size_t cap = 0;
    msh_status st;
    if (holds(dir, single)) {
        st = add_shard(h, single, &cap, e);
    } else {
        h->index = h->weights == MSH_FORMAT_SAFETENSORS ? ST_INDEX : BIN_INDEX;
        st = read_index(h, &cap, e);
    }
    if (st != MSH_OK)
        return st;
    qsort(h->shards, h->n_shards, sizeof *h->shards, cmp_shard);
    if (h->index) { /* the map's shard positions, now that the shards are sorted */
        msh_strmap pos;
        msh_strmap_init(&pos);
        for (size_t i = 0; i < h->n_shards; i++)
            if (!msh_strmap_upsert(&pos, h->shards[i].file, 2 * (int64_t)i)) {
                msh_strmap_free(&pos);
                return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            }
        const cJSON *x;
        cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(h->index_json, "weight_map")) {
            *msh_strmap_get(&h->wmap, x->string) = *msh_strmap_get(&pos, x->valuestring);
        }
        msh_strmap_free(&pos);
    }
    char what[96];
    snprintf(what, sizeof what, "%s%s", h->index ? h->index : "weight file",
             h->index ? ": shard" : "");
    for (size_t i = 0; i < h->n_shards; i++) {
        msh_hf_shard *s = &h->shards[i];
        MSH_FORWARD(stat_weight(h, s->file, what, &s->size, &s->mtime_ns, e));
        if (!msh_add_i64(h->bytes_in, s->size, &h->bytes_in))
            return msh_fail(e, MSH_ERR_LIMIT, "weight files too large");
        if (s->mtime_ns > h->mtime_ns)
            h->mtime_ns = s->mtime_ns;
    }
    other_weights_note(h);
    return MSH_OK;
}

/* ---- the shards as one table ---- */

static msh_status add_tensor(msh_hf *h, size_t shard, const msh_tentry *d, const char *name,
                             int64_t storage_base, msh_error *e) {
    msh_hf_shard *s = &h->shards[shard];
    if (h->index) {
        int64_t *v = msh_strmap_get(&h->wmap, name);
        if (!v)
            return msh_fail(e, MSH_ERR_FORMAT, "%s holds tensor '%.200s', which %s does not list",
                            s->file, name, h->index);
        if (*v / 2 != (int64_t)shard)
            return msh_fail(e, MSH_ERR_FORMAT, "%s holds tensor '%.200s', which %s puts in %s",
                            s->file, name, h->index, h->shards[*v / 2].file);
        if (*v & 1)
            return msh_fail(e, MSH_ERR_FORMAT, "%s holds tensor '%.200s' twice", s->file, name);
        *v |= 1;
    }
    if (!msh_grow((void **)&h->t, &h->cap, h->n, sizeof *h->t))
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    msh_hf_tensor *t = &h->t[h->n];
    t->d = *d;
    t->d.name = name;
    t->d.origin = (int64_t)h->n;
    t->d.storage = d->storage >= 0 ? d->storage + storage_base : -1;
    t->d.dup_of = -1;
    t->d.out_dtype = 0;
    t->d.dropped = 0;
    t->shard = shard;
    h->n++;
    return MSH_OK;
}

static msh_status open_shard(msh_hf *h, size_t i, int64_t *storage_base, msh_error *e) {
    msh_hf_shard *s = &h->shards[i];
    s->first = h->n;
    s->opened = 1;
    if (h->weights == MSH_FORMAT_SAFETENSORS) {
        msh_status st = msh_st_open(&s->st, s->path, e);
        if (st != MSH_OK) {
            msh_error_prefix(e, s->file);
            return st;
        }
        msh_table tab = msh_st_table(&s->st);
        for (size_t k = 0; k < tab.n; k++) {
            const msh_tentry *d = msh_table_at(&tab, k);
            MSH_FORWARD(add_tensor(h, i, d, d->name, *storage_base, e));
        }
    } else {
        msh_status st = msh_pth_open(&s->pth, s->path, NULL, e);
        if (st == MSH_OK && !s->pth.sd_key) {
            char keys[400];
            msh_pth_top_keys(&s->pth, keys, sizeof keys);
            st = msh_fail(e, MSH_ERR_FORMAT, "no state dict in it (top-level keys: %s)",
                          *keys ? keys : "none");
        }
        if (st != MSH_OK) {
            msh_error_prefix(e, s->file);
            return st;
        }
        int64_t top = -1;
        for (size_t k = 0; k < s->pth.nt; k++) {
            const msh_pth_tensor *pt = &s->pth.t[k];
            if (pt->d.role != MSH_ROLE_WEIGHT && pt->d.role != MSH_ROLE_BUFFER)
                continue; /* training state saved beside the weights: not the model */
            MSH_FORWARD(add_tensor(h, i, &pt->d, pt->key ? pt->key : pt->d.name, *storage_base, e));
            if (pt->d.storage > top)
                top = pt->d.storage;
        }
        *storage_base += top + 1;
    }
    s->count = h->n - s->first;
    return MSH_OK;
}

/* ---- the other files ---- */

static msh_status add_file(msh_hf *h, const char *rel, const char *src, int is_dir, unsigned mode,
                           msh_error *e) {
    if (!msh_grow((void **)&h->files, &h->cap_files, h->n_files, sizeof *h->files))
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    msh_hf_file *f = &h->files[h->n_files];
    f->rel = msh_strdup(rel);
    f->src = msh_strdup(src);
    f->is_dir = is_dir;
    f->mode = mode & 07777u;
    h->n_files++;
    if (!f->rel || !f->src)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    return MSH_OK;
}

static int cmp_cstr(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The real path of a link's target when it is a regular file inside the folder, else NULL and
 * the reason. */
static char *link_target(const msh_hf *h, const char *path, const char **why) {
    char *real = realpath(path, NULL);
    struct stat sb;
    size_t rl = strlen(h->real);
    if (!real) {
        *why = "points to nothing";
        return NULL;
    }
    if (strncmp(real, h->real, rl) != 0 || (real[rl] != '/' && strcmp(h->real, "/") != 0)) {
        *why = "points outside the model folder";
    } else if (stat(real, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        *why = "does not point to a regular file";
    } else {
        return real;
    }
    free(real);
    return NULL;
}

static msh_status walk_files(msh_hf *h, const char *rel, int depth, msh_error *e) {
    if (depth > HF_MAX_DEPTH)
        return msh_fail(e, MSH_ERR_LIMIT, "'%s': folders nested deeper than %d", rel, HF_MAX_DEPTH);
    char *dir = *rel ? join(h->dir, rel) : msh_strdup(h->dir);
    if (!dir)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    DIR *d = opendir(dir);
    if (!d) {
        msh_status st = msh_fail(e, MSH_ERR_IO, "cannot read folder '%s': %s", *rel ? rel : ".",
                                 strerror(errno));
        free(dir);
        return st;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    msh_status st = MSH_OK;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *nm = de->d_name;
        if (strcmp(nm, ".") == 0 || strcmp(nm, "..") == 0 || strcmp(nm, ".git") == 0 ||
            strstr(nm, ".msh-tmp-"))
            continue;
        if (!*rel && weight_name(nm))
            continue;
        if (!msh_grow((void **)&names, &cap, n, sizeof *names) || !(names[n] = msh_strdup(nm))) {
            st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            break;
        }
        n++;
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof *names, cmp_cstr);
    for (size_t i = 0; st == MSH_OK && i < n; i++) {
        char *r = *rel ? join(rel, names[i]) : msh_strdup(names[i]);
        char *p = join(dir, names[i]);
        struct stat sb;
        if (!r || !p) {
            st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        } else if (lstat(p, &sb) != 0) {
            st = msh_fail(e, MSH_ERR_IO, "'%s': %s", r, strerror(errno));
        } else if (S_ISDIR(sb.st_mode)) {
            st = add_file(h, r, p, 1, (unsigned)sb.st_mode, e);
            if (st == MSH_OK)
                st = walk_files(h, r, depth + 1, e);
        } else if (S_ISREG(sb.st_mode)) {
            st = add_file(h, r, p, 0, (unsigned)sb.st_mode, e);
        } else if (S_ISLNK(sb.st_mode)) {
            const char *why = "";
            char *target = link_target(h, p, &why);
            if (!target) {
                st = msh_fail(e, MSH_ERR_UNSAFE, "'%s' is a symbolic link that %s; not copied", r,
                              why);
            } else {
                struct stat tb;
                st = stat(target, &tb) == 0
                         ? add_file(h, r, target, 0, (unsigned)tb.st_mode, e)
                         : msh_fail(e, MSH_ERR_IO, "'%s': %s", r, strerror(errno));
                free(target);
            }
        } else {
            st = msh_fail(e, MSH_ERR_UNSUPPORTED, "'%s' is not a regular file or a folder", r);
        }
        free(r);
        free(p);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    free(dir);
    return st;
}

msh_status msh_hf_open(msh_hf *h, const char *dir, msh_error *e) {
    MSH_FORWARD(msh_hf_scan(h, dir, e));
    int64_t base = 0;
    for (size_t i = 0; i < h->n_shards; i++)
        MSH_FORWARD(open_shard(h, i, &base, e));
    /* every tensor the index lists was found in its shard */
    if (h->index) {
        const cJSON *x;
        cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(h->index_json, "weight_map")) {
            int64_t *v = msh_strmap_get(&h->wmap, x->string);
            if (v && !(*v & 1))
                return msh_fail(e, MSH_ERR_FORMAT,
                                "%s lists tensor '%.200s' in %s, which does "
                                "not hold it",
                                h->index, x->string, x->valuestring);
        }
    }
    return walk_files(h, "", 0, e);
}

void msh_hf_free(msh_hf *h) {
    for (size_t i = 0; i < h->n_shards; i++) {
        msh_hf_shard *s = &h->shards[i];
        if (s->opened && h->weights == MSH_FORMAT_SAFETENSORS)
            msh_st_free(&s->st);
        else if (s->opened)
            msh_pth_free(&s->pth);
        free(s->file);
        free(s->path);
    }
    free(h->shards);
    for (size_t i = 0; i < h->n_files; i++) {
        free(h->files[i].rel);
        free(h->files[i].src);
    }
    free(h->files);
    free(h->t);
    msh_strmap_free(&h->wmap);
    cJSON_Delete(h->index_json);
    free(h->dir);
    free(h->real);
    memset(h, 0, sizeof *h);
}

msh_table msh_hf_table(const msh_hf *h) {
    msh_table t = {h->t ? &h->t[0].d : NULL, h->n, sizeof(msh_hf_tensor)};
    return t;
}

/* ---- where the output may go ---- */

/* The real path of `p`, or of its nearest existing ancestor followed by the rest. */
static char *real_or_parent(const char *p) {
    char *r = realpath(p, NULL);
    if (r)
        return r;
    char *dir = msh_path_dir(p);
    const char *base = strrchr(p, '/');
    base = base ? base + 1 : p;
    char *rd = dir ? realpath(dir, NULL) : NULL;
    free(dir);
    char *out = rd ? join(rd, base) : NULL;
    free(rd);
    return out;
}

static int inside(const char *path, const char *dir) {
    size_t n = strlen(dir);
    if (strcmp(dir, "/") == 0)
        return 1;
    return strncmp(path, dir, n) == 0 && (path[n] == '/' || path[n] == 0);
}

static int empty_dir(const char *p) {
    DIR *d = opendir(p);
    if (!d)
        return 0;
    struct dirent *de;
    int empty = 1;
    while (empty && (de = readdir(d)))
        empty = strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0;
    closedir(d);
    return empty;
}

msh_status msh_hf_check_output(const char *in, const char *out, msh_error *e) {
    char *ri = realpath(in, NULL);
    char *ro = real_or_parent(out);
    msh_status st = MSH_OK;
    struct stat sb;
    int exists = lstat(out, &sb) == 0;
    if (!ri)
        st = msh_fail(e, MSH_ERR_IO, "cannot resolve the path of %s: %s", in, strerror(errno));
    else if (!ro)
        st = MSH_OK; /* its folder does not exist: writing there fails and says so */
    else if (strcmp(ri, ro) == 0)
        st = msh_fail(e, MSH_ERR_USAGE, "output %s is the input folder", out);
    else if (inside(ro, ri))
        st = msh_fail(e, MSH_ERR_USAGE, "output %s is inside the input folder", out);
    else if (exists && inside(ri, ro))
        st = msh_fail(e, MSH_ERR_USAGE, "output %s holds the input folder", out);
    else if (exists && !S_ISDIR(sb.st_mode))
        st = msh_fail(e, MSH_ERR_USAGE, "output %s exists and is not a folder", out);
    else if (exists && !empty_dir(out) && msh_hf_detect(out) == MSH_FORMAT_AUTO)
        st = msh_fail(e, MSH_ERR_USAGE,
                      "output folder %s exists and is not a model folder; it is not replaced", out);
    free(ri);
    free(ro);
    return st;
}
