/* HTML pages (html.h). Every string that comes from a file (tensor names, paths, messages) goes
 * through esc(); numbers are formatted here. The page is built in memory (a few MB at most),
 * then written under a temporary name in the output's folder and renamed when complete. */
#include "html.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "modelshrink.h"
#include "table.h"

/* ---- an append-only text buffer ---- */

typedef struct hbuf {
    char *p;
    size_t n, cap;
    int oom;
} hbuf;

static void put(hbuf *b, const char *s, size_t n) {
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1 << 16;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void puts_(hbuf *b, const char *s) {
    put(b, s, strlen(s));
}

static void putf(hbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(hbuf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k < 0)
        return;
    if ((size_t)k < sizeof tmp) {
        put(b, tmp, (size_t)k);
        return;
    }
    char *big = malloc((size_t)k + 1);
    if (!big) {
        b->oom = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)k + 1, fmt, ap);
    va_end(ap);
    put(b, big, (size_t)k);
    free(big);
}

/* Text from a file, made inert: the five characters HTML gives meaning to become references,
 * and control characters (which no page should carry) become U+FFFD. */
static void esc(hbuf *b, const char *s) {
    const char *run = s;
    for (; s && *s; s++) {
        const char *r = NULL;
        switch (*s) {
        case '&': r = "&amp;"; break;
        case '<': r = "&lt;"; break;
        case '>': r = "&gt;"; break;
        case '"': r = "&quot;"; break;
        case '\'': r = "&#39;"; break;
        default:
            if ((unsigned char)*s < 0x20 || *s == 0x7f)
                r = "\xef\xbf\xbd";
        }
        if (r) {
            put(b, run, (size_t)(s - run));
            puts_(b, r);
            run = s + 1;
        }
    }
    if (s)
        put(b, run, (size_t)(s - run));
}

static void human(double n, char *buf, size_t cap) {
    msh_cli_human_bytes(n, buf, cap);
}

/* "44.6 MB (46733644 bytes)" */
static void bytes_both(hbuf *b, int64_t n) {
    char h[32];
    human((double)n, h, sizeof h);
    putf(b, "%s <span class=x>(%lld bytes)</span>", h, (long long)n);
}

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    while (s && !s[1] && s > p) { /* "folder/" */
        const char *t = s;
        while (t > p && t[-1] != '/')
            t--;
        return t == s ? p : t;
    }
    return s ? s + 1 : p;
}

static int64_t num(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? (int64_t)v->valuedouble : 0;
}

static const char *str(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* ---- the page's frame ---- */

/* Colour classes: weights by element type, then roles. */
enum {
    C_F32,
    C_F16,
    C_BF16,
    C_INT8,
    C_INT4,
    C_OTHER_TYPE,
    C_OPTIM,
    C_TRAINING,
    C_DUP,
    C_META,
    C_N
};
static const char *const class_label[C_N] = {
    "weights: FLOAT",        "weights: FLOAT16",      "weights: BFLOAT16",
    "weights: INT8 / UINT8", "weights: INT4 / UINT4", "weights: other types",
    "optimizer state",       "other training state",  "duplicated copies (dedup merges them)",
    "graph and metadata"};
static const char *const class_colour[C_N] = {"#4e79a7", "#59a14f", "#8cd17d", "#f28e2b",
                                              "#ffbe7d", "#76b7b2", "#e15759", "#b07aa1",
                                              "#9c755f", "#bab0ac"};

static void page_head(hbuf *b, const char *title) {
    puts_(b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
             "<title>");
    esc(b, title);
    puts_(b, "</title>\n<style>\n"
             "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:1150px;"
             "padding:0 1em;color:#222;background:#fff}\n"
             "h1{font-size:1.5em;margin:.2em 0;word-break:break-all}h2{font-size:1.2em;"
             "margin:1.4em 0 .4em;border-bottom:1px solid #ddd}\n"
             ".x{color:#777;font-size:.9em}.note{color:#555}.err{color:#b00}\n"
             "table{border-collapse:collapse;margin:.4em 0}td,th{padding:2px 8px;text-align:left;"
             "vertical-align:top;border-bottom:1px solid #eee}th{background:#f4f4f4}\n"
             "td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}\n"
             "table.sort th{cursor:pointer}tr.e td{background:#fdecea}\n"
             ".bar{display:inline-block;height:12px;vertical-align:middle;min-width:1px}\n"
             ".track{display:inline-block;width:420px;background:#f0f0f0;vertical-align:middle}\n"
             ".key{display:inline-block;width:12px;height:12px;vertical-align:middle;"
             "margin:0 4px 0 12px}\n"
             "svg{max-width:100%;height:auto;display:block}svg text{font:12px sans-serif;"
             "pointer-events:none}\nsvg rect{stroke:#fff;stroke-width:.4}\n"
             "svg rect.g0,svg rect.g1{fill:#fff;fill-opacity:0;stroke:#222;stroke-width:1.5}\n"
             "svg rect.g1{stroke-width:.6}svg rect.g0:hover,svg rect.g1:hover{fill-opacity:.2}\n"
             "svg text.l{font-size:11px;fill:#fff}\n"
             ".name{word-break:break-all}\n");
    for (int c = 0; c < C_N; c++)
        putf(b, ".c%d{fill:%s;background:%s}\n", c, class_colour[c], class_colour[c]);
    puts_(b, ".before{background:#cfcfcf}.after{background:#59a14f}.hist{fill:#4e79a7}\n</style></"
             "head>\n<body>\n");
}

static void page_foot(hbuf *b) {
    putf(b, "<p class=x>Made by modelshrink %s. This page is one file: it loads nothing.</p>\n",
         msh_version());
    puts_(b, "</body></html>\n");
}

/* A bar `frac` (0..1) of a 420-pixel track. */
static void bar(hbuf *b, const char *cls, double frac) {
    if (frac < 0)
        frac = 0;
    if (frac > 1)
        frac = 1;
    putf(b, "<span class=track><span class=\"bar %s\" style=\"width:%.1f%%\"></span></span>", cls,
         frac * 100.0);
}

/* ---- writing the page ---- */

static void host_tag(char *buf, size_t cap) {
    if (gethostname(buf, cap - 1) != 0 || !buf[0])
        snprintf(buf, cap, "host");
    buf[cap - 1] = 0;
    for (char *p = buf; *p; p++) /* as the library names its temporaries */
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9')))
            *p = '_';
}

/* "<folder of path>/.<name of path>.msh-tmp-<host>-<pid>-XXXXXX": the library's temporary names,
 * which msh_clean_stale_temps (and so convert --resume) removes once this process is gone. */
static char *temp_template(const char *path) {
    const char *slash = strrchr(path, '/');
    const char *name = slash ? slash + 1 : path;
    size_t dn = slash ? (size_t)(slash - path) : 1;
    char host[64];
    host_tag(host, sizeof host);
    size_t n = dn + strlen(name) + strlen(host) + 64;
    char *t = malloc(n);
    if (t)
        snprintf(t, n, "%.*s/.%s.msh-tmp-%s-%ld-XXXXXX", (int)dn, slash ? path : ".", name, host,
                 (long)getpid());
    return t;
}

/* Write the page to `out`: a temporary file, synced, renamed. 1 on success, else 0 with the
 * message printed. */
static int write_page(const hbuf *b, const char *out) {
    if (b->oom) {
        fprintf(stderr, "modelshrink: %s: out of memory\n", out);
        return 0;
    }
    char *tmp = temp_template(out);
    int fd = tmp ? mkstemp(tmp) : -1;
    if (fd < 0) {
        fprintf(stderr, "modelshrink: %s: cannot write: %s\n", out, strerror(tmp ? errno : ENOMEM));
        free(tmp);
        return 0;
    }
    mode_t um = umask(0);
    umask(um);
    int ok = fchmod(fd, 0666 & ~um) == 0;
    for (size_t off = 0; ok && off < b->n;) {
        ssize_t w = write(fd, b->p + off, b->n - off);
        if (w < 0 && errno == EINTR)
            continue;
        ok = w > 0;
        off += ok ? (size_t)w : 0;
    }
    ok = ok && fsync(fd) == 0;
    int saved = errno;
    ok = close(fd) == 0 && ok;
    if (ok && rename(tmp, out) != 0) {
        saved = errno;
        ok = 0;
    }
    if (!ok) {
        fprintf(stderr, "modelshrink: %s: cannot write: %s\n", out, strerror(saved));
        unlink(tmp);
    }
    free(tmp);
    return ok;
}

/* Why `out` cannot be written for input `in` (NULL when it can): checked before any work. */
static const char *out_problem(const char *in, const char *out) {
    struct stat so, si;
    if (stat(out, &so) != 0)
        return NULL;
    if (S_ISDIR(so.st_mode))
        return "is a folder";
    if (in && stat(in, &si) == 0 && si.st_dev == so.st_dev && si.st_ino == so.st_ino)
        return "is the input";
    return NULL;
}

/* ---- the treemap ---- */

typedef struct tnode {
    char *label; /* a segment of the name, or a leaf's whole name */
    int64_t value;
    int cls;       /* leaves: a colour class; groups: -1 */
    int64_t count; /* tensors it stands for */
    struct tnode *kid;
    size_t nkid, capkid;
} tnode;

static void tnode_free(tnode *t) {
    for (size_t i = 0; i < t->nkid; i++)
        tnode_free(&t->kid[i]);
    free(t->kid);
    free(t->label);
}

static tnode *tnode_add(tnode *p, const char *label, size_t n, int cls) {
    if (cls < 0) /* a group: the one of that name */
        for (size_t i = 0; i < p->nkid; i++)
            if (p->kid[i].cls < 0 && strlen(p->kid[i].label) == n &&
                memcmp(p->kid[i].label, label, n) == 0)
                return &p->kid[i];
    if (p->nkid == p->capkid) {
        size_t cap = p->capkid ? 2 * p->capkid : 4;
        tnode *k = realloc(p->kid, cap * sizeof *k);
        if (!k)
            return NULL;
        p->kid = k;
        p->capkid = cap;
    }
    tnode *t = &p->kid[p->nkid];
    memset(t, 0, sizeof *t);
    t->label = strndup(label, n);
    if (!t->label)
        return NULL;
    t->cls = cls;
    p->nkid++;
    return t;
}

#define TREE_DEPTH 3    /* levels of groups shown, after chains of single groups are joined */
#define INSERT_DEPTH 12 /* levels of module path read */

/* Add a tensor under its module path: `name` split on '.' and '/', at most INSERT_DEPTH groups. */
static int tree_insert(tnode *root, const char *name, int64_t bytes, int cls) {
    tnode *p = root;
    p->value += bytes;
    p->count++;
    const char *s = name;
    for (int d = 0; d < INSERT_DEPTH; d++) {
        while (*s == '.' || *s == '/')
            s++;
        size_t n = strcspn(s, "./");
        if (!n || !s[n] || !s[n + strspn(s + n, "./")]) /* the last segment is the leaf's */
            break;
        tnode *g = tnode_add(p, s, n, -1);
        if (!g)
            return 0;
        p = g;
        p->value += bytes;
        p->count++;
        s += n;
    }
    tnode *leaf = tnode_add(p, name, strlen(name), cls);
    if (!leaf)
        return 0;
    leaf->value = bytes;
    leaf->count = 1;
    return 1;
}

/* A group whose only part is a group becomes one group ("model" holding only "layers": the
 * group "model.layers"), so that the levels shown are those where the model branches. */
static int tree_join(tnode *t, int is_root) {
    for (size_t i = 0; i < t->nkid; i++)
        if (t->kid[i].cls < 0 && !tree_join(&t->kid[i], 0))
            return 0;
    while (!is_root && t->nkid == 1 && t->kid[0].cls < 0) {
        tnode *c = t->kid;
        size_t n = strlen(t->label) + strlen(c->label) + 2;
        char *label = malloc(n);
        if (!label)
            return 0;
        snprintf(label, n, "%s.%s", t->label, c->label);
        free(t->label);
        free(c->label);
        t->label = label;
        t->kid = c->kid;
        t->nkid = c->nkid;
        t->capkid = c->capkid;
        free(c);
    }
    return 1;
}

/* Move the leaves below `t` into `v`, freeing the groups they were in. */
static int take_leaves(tnode *t, tnode **v, size_t *n, size_t *cap) {
    for (size_t i = 0; i < t->nkid; i++) {
        tnode *k = &t->kid[i];
        if (k->cls < 0) {
            int ok = take_leaves(k, v, n, cap);
            free(k->kid);
            free(k->label);
            k->kid = NULL;
            k->label = NULL;
            k->nkid = 0;
            if (!ok)
                return 0;
            continue;
        }
        if (*n == *cap) {
            size_t nc = *cap ? 2 * *cap : 16;
            tnode *p = realloc(*v, nc * sizeof *p);
            if (!p)
                return 0;
            *v = p;
            *cap = nc;
        }
        (*v)[(*n)++] = *k;
        k->label = NULL;
    }
    t->nkid = 0;
    return 1;
}

/* Groups deeper than TREE_DEPTH: their leaves go to their ancestor at that depth. */
static int tree_flatten(tnode *t, int depth) {
    if (depth < TREE_DEPTH) {
        for (size_t i = 0; i < t->nkid; i++)
            if (t->kid[i].cls < 0 && !tree_flatten(&t->kid[i], depth + 1))
                return 0;
        return 1;
    }
    tnode *v = NULL;
    size_t n = 0, cap = 0;
    int ok = take_leaves(t, &v, &n, &cap);
    free(t->kid);
    t->kid = v;
    t->nkid = n;
    t->capkid = cap;
    return ok;
}

/* Items below `min` bytes are folded, per colour class, into one "N smaller tensors" leaf of
 * their group, so that a model of many tensors stays a page of a few hundred kB. */
static void fold_leaves(const tnode *t, int64_t cnt[C_N], int64_t val[C_N]) {
    if (t->cls >= 0) {
        cnt[t->cls] += t->count;
        val[t->cls] += t->value;
        return;
    }
    for (size_t i = 0; i < t->nkid; i++)
        fold_leaves(&t->kid[i], cnt, val);
}

static int tree_fold(tnode *t, int64_t min) {
    if (t->cls >= 0)
        return 1;
    int64_t cnt[C_N] = {0}, val[C_N] = {0};
    size_t k = 0;
    for (size_t i = 0; i < t->nkid; i++) {
        tnode *c = &t->kid[i];
        if (c->value < min) {
            fold_leaves(c, cnt, val);
            tnode_free(c);
            continue;
        }
        if (!tree_fold(c, min))
            return 0;
        t->kid[k++] = *c;
    }
    t->nkid = k;
    for (int c = 0; c < C_N; c++) {
        if (!cnt[c])
            continue;
        char label[64];
        snprintf(label, sizeof label, "%lld smaller %s", (long long)cnt[c],
                 c == C_META   ? "parts"
                 : cnt[c] == 1 ? "tensor"
                               : "tensors");
        tnode *x = tnode_add(t, label, strlen(label), c);
        if (!x)
            return 0;
        x->value = val[c];
        x->count = cnt[c];
    }
    return 1;
}

static int by_value_desc(const void *a, const void *b) {
    const tnode *x = a, *y = b;
    return x->value < y->value ? 1 : x->value > y->value ? -1 : 0;
}

#define TM_DEPTHS 8

typedef struct tm_ctx {
    hbuf *b;
    double scale; /* square pixels per byte */
    char path[1024];
    double gx[TM_DEPTHS], gy[TM_DEPTHS]; /* the top left corners of the named groups being
                                             drawn, by depth (-1: not named) */
} tm_ctx;

static void tm_node(tm_ctx *c, const tnode *t, double x, double y, double w, double h, int depth);

/* The worst aspect ratio of a row of areas a[0..n) summing to s along a side of length `side`. */
static double worst(double amax, double amin, double s, double side) {
    double s2 = s * s, w2 = side * side;
    double r1 = w2 * amax / s2, r2 = s2 / (w2 * amin);
    return r1 > r2 ? r1 : r2;
}

/* Squarified treemap (Bruls, Huizing and van Wijk): children sorted by size, laid out in rows
 * along the shorter side, each row grown while its worst aspect ratio improves. */
static void squarify(tm_ctx *c, tnode *kid, size_t n, double x, double y, double w, double h,
                     int depth) {
    double total = 0;
    for (size_t i = 0; i < n; i++)
        total += (double)kid[i].value;
    if (total <= 0 || w <= 0 || h <= 0)
        return;
    double k = w * h / total;
    size_t i = 0;
    while (i < n) {
        double side = w < h ? w : h;
        double sum = 0, best = 0;
        size_t j = i;
        while (j < n) {
            double a = (double)kid[j].value * k;
            double s2 = sum + a;
            double wr = worst((double)kid[i].value * k, a > 0 ? a : 1e-9, s2, side);
            if (j > i && wr > best)
                break;
            best = wr;
            sum = s2;
            j++;
        }
        if (sum <= 0)
            break;
        if (w >= h) { /* a column at the left */
            double cw = sum / h, yy = y;
            for (size_t m = i; m < j; m++) {
                double hh = (double)kid[m].value * k / cw;
                tm_node(c, &kid[m], x, yy, cw, hh, depth);
                yy += hh;
            }
            x += cw;
            w -= cw;
        } else { /* a row at the top */
            double rh = sum / w, xx = x;
            for (size_t m = i; m < j; m++) {
                double ww = (double)kid[m].value * k / rh;
                tm_node(c, &kid[m], xx, y, ww, rh, depth);
                xx += ww;
            }
            y += rh;
            h -= rh;
        }
        i = j;
    }
}

static void tm_title(tm_ctx *c, const tnode *t) {
    char h[32];
    human((double)t->value, h, sizeof h);
    puts_(c->b, "<title>");
    if (t->cls >= 0 && t->count == 1 && t->cls != C_META) {
        esc(c->b, t->label);
        putf(c->b, ": %s (%lld bytes), %s", h, (long long)t->value, class_label[t->cls]);
    } else if (t->cls >= 0) {
        esc(c->b, c->path);
        puts_(c->b, c->path[0] ? ": " : "");
        esc(c->b, t->label);
        putf(c->b, ": %s (%lld bytes), %s", h, (long long)t->value, class_label[t->cls]);
    } else {
        esc(c->b, c->path);
        putf(c->b, ": %s (%lld bytes), %lld %s", h, (long long)t->value, (long long)t->count,
             t->count == 1 ? "tensor" : "tensors");
    }
    puts_(c->b, "</title>");
}

static void tm_node(tm_ctx *c, const tnode *t, double x, double y, double w, double h, int depth) {
    if (t->cls >= 0) {
        putf(c->b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" class=c%d>", x, y, w,
             h, t->cls);
        tm_title(c, t);
        puts_(c->b, "</rect>\n");
        if (depth == 0 && w > 90 && h > 18) { /* a part of the file at the top: named */
            putf(c->b, "<text x=\"%.1f\" y=\"%.1f\">", x + 4, y + 14);
            esc(c->b, t->label);
            puts_(c->b, "</text>\n");
        } else if (depth > 0 && w >= 70 && h >= 34) {
            /* a large part inside a group: its name's end at the bottom left (the group's name
             * is at the top left), as much as fits at about 6.5 pixels a character */
            const char *name = t->label;
            size_t plen = strlen(c->path);
            if (plen && strncmp(name, c->path, plen) == 0 && name[plen] && name[plen + 1] &&
                (name[plen] == '.' || name[plen] == '/'))
                name += plen + 1; /* the group's path is the group's */
            size_t fit = (size_t)((w - 8) / 6.5), len = strlen(name);
            const char *tail = name;
            if (len > fit && fit > 1) {
                tail = name + len - (fit - 1);
                while ((*tail & 0xC0) == 0x80) /* not inside a UTF-8 sequence */
                    tail++;
            }
            putf(c->b, "<text class=l x=\"%.1f\" y=\"%.1f\">%s", x + 3, y + h - 5,
                 tail != name ? "&hellip;" : "");
            esc(c->b, tail);
            puts_(c->b, "</text>\n");
        }
        return;
    }
    size_t plen = strlen(c->path);
    snprintf(c->path + plen, sizeof c->path - plen, "%s%s", plen ? "." : "", t->label);
    qsort(t->kid, t->nkid, sizeof *t->kid, by_value_desc);
    /* named: a top group, and an inner group large enough for its name under the names of the
     * groups that share its top left corner */
    int named = depth == 0 ? w > 90 && h > 30 : depth < TM_DEPTHS && w > 90 && h > 50;
    int under = 0;
    for (int d = 0; named && d < depth; d++)
        under += c->gx[d] >= 0 && x - c->gx[d] < 1 && y - c->gy[d] < 1;
    if (depth < TM_DEPTHS) {
        c->gx[depth] = named ? x : -1;
        c->gy[depth] = y;
    }
    puts_(c->b, "<g>");
    squarify(c, t->kid, t->nkid, x, y, w, h, depth + 1);
    /* the group's outline, over its parts, with the group's tooltip */
    putf(c->b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" class=g%d>", x, y, w, h,
         depth == 0 ? 0 : 1);
    tm_title(c, t);
    puts_(c->b, "</rect>");
    if (named && depth == 0) {
        putf(c->b, "<text x=\"%.1f\" y=\"%.1f\" fill=\"#fff\">", x + 4, y + 14);
        esc(c->b, t->label);
        puts_(c->b, "</text>");
    } else if (named) {
        putf(c->b, "<text class=l x=\"%.1f\" y=\"%.1f\">", x + 4, y + 14 + 13 * under);
        if (strspn(t->label, "0123456789") == strlen(t->label)) { /* "3": "albert_layers.3" */
            size_t a = plen;
            while (a > 0 && c->path[a - 1] != '.')
                a--;
            c->path[plen] = 0;
            esc(c->b, c->path + a);
            puts_(c->b, ".");
        }
        esc(c->b, t->label);
        puts_(c->b, "</text>");
    }
    puts_(c->b, "</g>\n");
    c->path[plen] = 0;
}

/* ---- inspect --html ---- */

static int class_of(const cJSON *t) {
    if (str(t, "dup_of"))
        return C_DUP;
    const char *role = str(t, "role");
    if (role && strcmp(role, "optimizer_state") == 0)
        return C_OPTIM;
    if (role && (strcmp(role, "training_state") == 0 || strcmp(role, "other") == 0))
        return C_TRAINING;
    const char *dt = str(t, "dtype");
    if (!dt)
        return C_OTHER_TYPE;
    if (strcmp(dt, "FLOAT") == 0)
        return C_F32;
    if (strcmp(dt, "FLOAT16") == 0)
        return C_F16;
    if (strcmp(dt, "BFLOAT16") == 0)
        return C_BF16;
    if (strcmp(dt, "INT8") == 0 || strcmp(dt, "UINT8") == 0)
        return C_INT8;
    if (strcmp(dt, "INT4") == 0 || strcmp(dt, "UINT4") == 0)
        return C_INT4;
    return C_OTHER_TYPE;
}

static void legend(hbuf *b, const int64_t by_class[C_N]) {
    puts_(b, "<p>");
    for (int c = 0; c < C_N; c++)
        if (by_class[c]) {
            putf(b, "<span class=\"key c%d\"></span>", c);
            puts_(b, class_label[c]);
        }
    puts_(b, "</p>\n");
}

static void shape_text(hbuf *b, const cJSON *shape) {
    puts_(b, "[");
    const cJSON *d;
    int first = 1;
    cJSON_ArrayForEach(d, shape) {
        putf(b, "%s%.0f", first ? "" : ",", d->valuedouble);
        first = 0;
    }
    puts_(b, "]");
}

/* One conversion of the savings section. */
typedef struct pass_try {
    const char *label;
    const char *flags; /* the convert options it stands for */
    int dedup, float_type, int8, int4;
} pass_try;

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)ftw;
    if (flag == FTW_DP)
        rmdir(p);
    else
        unlink(p);
    return 0;
}

static void rm_tree(const char *p) {
    nftw(p, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* What each conversion does to this model: each one run for real (msh_convert_file, the code
 * of `convert`) into a private folder beside the page, measured, and removed. */
static void savings(hbuf *b, const char *in, const char *out, msh_format kind, int64_t in_bytes) {
    static const pass_try tries[] = {
        {"dedup", "(convert's defaults)", 1, MSH_FLOAT_KEEP, 0, 0},
        {"strip", "--no-dedup", 0, MSH_FLOAT_KEEP, 0, 0},
        {"FP16", "--fp16", 1, MSH_FLOAT_FP16, 0, 0},
        {"BF16", "--bf16", 1, MSH_FLOAT_BF16, 0, 0},
        {"INT8", "--int8", 1, MSH_FLOAT_KEEP, 1, 0},
        {"INT4", "--int4", 1, MSH_FLOAT_KEEP, 0, 1},
    };
    puts_(b, "<h2 id=savings>What each conversion would save</h2>\n<p class=note>Each row is a "
             "real conversion of this file by modelshrink's <code>convert</code> with the "
             "options shown, written to a temporary folder, measured and removed: the sizes are "
             "those of the files it wrote, not estimates. The grey bar is the input, the "
             "coloured one the output.</p>\n<table>\n<tr><th>conversion</th><th>options</th>"
             "<th>input (grey) and output</th><th class=n>output bytes</th><th class=n>ratio"
             "</th><th>notes</th></tr>\n");
    char *tdir = temp_template(out);
    if (tdir && !mkdtemp(tdir)) {
        free(tdir);
        tdir = NULL;
    }
    const char *name = kind == MSH_FORMAT_ONNX        ? "model.onnx"
                       : kind == MSH_FORMAT_HF_FOLDER ? "model"
                                                      : "model.safetensors";
    for (size_t i = 0; i < sizeof tries / sizeof tries[0]; i++) {
        const pass_try *p = &tries[i];
        if (i == 1 && kind != MSH_FORMAT_PTH)
            continue; /* strip alone: checkpoints only */
        msh_convert_options opt;
        msh_convert_options_init(&opt);
        opt.dedup = p->dedup;
        opt.float_type = p->float_type;
        opt.int8 = p->int8;
        opt.int4 = p->int4;
        char label[96];
        snprintf(label, sizeof label, "%s%s", p->label,
                 i == 0 && kind == MSH_FORMAT_PTH ? " + strip" : "");
        putf(b, "<tr><td>%s</td><td><code>%s</code></td>", label, p->flags);
        msh_error err;
        msh_option bad;
        if (msh_convert_check(&opt, kind, NULL, &bad, &err) != MSH_OK) {
            puts_(b, "<td colspan=4 class=note>does not apply: ");
            esc(b, err.msg);
            puts_(b, "</td></tr>\n");
            continue;
        }
        if (!tdir) {
            puts_(b, "<td colspan=4 class=err>not run: no temporary folder could be made beside "
                     "the page</td></tr>\n");
            continue;
        }
        size_t n = strlen(tdir) + strlen(name) + 2;
        char *dst = malloc(n);
        if (!dst) {
            b->oom = 1;
            break;
        }
        snprintf(dst, n, "%s/%s", tdir, name);
        msh_convert_result res;
        memset(&res, 0, sizeof res);
        msh_status st = msh_convert_file(in, dst, &opt, &res, &err);
        rm_tree(dst); /* with its .data file, if any, below */
        if (res.external_out) {
            char *data = malloc(n + 5);
            if (data) {
                snprintf(data, n + 5, "%s.data", dst);
                unlink(data);
            }
            free(data);
        }
        free(dst);
        if (st != MSH_OK) {
            puts_(b, "<td colspan=4 class=err>failed: ");
            esc(b, err.msg);
            puts_(b, "</td></tr>\n");
            continue;
        }
        int64_t before = res.bytes_in ? res.bytes_in : in_bytes, after = res.bytes_out;
        double frac = before > 0 ? (double)after / (double)before : 0;
        puts_(b, "<td>");
        bar(b, "before", 1.0);
        puts_(b, "<br>");
        bar(b, after <= before ? "after" : "c6", frac);
        char hb[32], ha[32];
        human((double)before, hb, sizeof hb);
        human((double)after, ha, sizeof ha);
        putf(b, "</td><td class=n>%s<br><span class=x>%lld</span></td><td class=n>%.2fx</td><td>",
             ha, (long long)after, after > 0 ? (double)before / (double)after : 0.0);
        char saved[32];
        human((double)(before - after), saved, sizeof saved);
        putf(b, "%s &rarr; %s, saves %s", hb, ha, before >= after ? saved : "nothing");
        if (res.dedup_merged)
            putf(b, "; %lld duplicate tensors merged", (long long)res.dedup_merged);
        if (res.strip_saved_bytes) {
            human((double)res.strip_saved_bytes, saved, sizeof saved);
            putf(b, "; training state and metadata dropped: %s", saved);
        }
        if (res.float_tensors)
            putf(b, "; %lld tensors converted", (long long)res.float_tensors);
        if (res.int8_tensors)
            putf(b, "; %lld weights quantized", (long long)res.int8_tensors);
        if (res.int4_tensors)
            putf(b, "; %lld %s in 4 bits", (long long)res.int4_tensors,
                 msh_cli_plural((double)res.int4_tensors, "weight", "weights"));
        const char *why = p->float_type ? res.float_why
                          : p->int8     ? res.int8_why
                          : p->int4     ? res.int4_why
                                        : "";
        if (why[0]) {
            puts_(b, "<br><span class=note>");
            esc(b, why);
            puts_(b, "</span>");
        }
        if (res.note[0]) {
            puts_(b, "<br><span class=note>");
            esc(b, res.note);
            puts_(b, "</span>");
        }
        puts_(b, "</td></tr>\n");
    }
    puts_(b, "</table>\n");
    if (tdir) {
        rm_tree(tdir);
        free(tdir);
    }
}

int msh_cli_html_inspect(const char *in, const char *out, int with_savings) {
    const char *why = out_problem(in, out);
    if (why) {
        fprintf(stderr, "modelshrink: inspect: %s %s\n", out, why);
        return 2;
    }
    char *text = NULL;
    msh_error err;
    if (msh_inspect_file_ex(in, MSH_INSPECT_TENSOR_LIST, &text, &err) != MSH_OK) {
        fprintf(stderr, "modelshrink: %s\n", err.msg);
        return 1;
    }
    cJSON *o = cJSON_Parse(text);
    msh_free(text);
    if (!o) {
        fprintf(stderr, "modelshrink: %s: internal error: bad report\n", in);
        return 1;
    }
    msh_format kind = MSH_FORMAT_AUTO;
    msh_probe_file(in, &kind, &err);
    const char *fmt = str(o, "format");
    int64_t file_bytes = num(o, "file_bytes") + num(o, "external_bytes");
    int64_t by_class[C_N] = {0}, listed = 0;
    tnode root;
    memset(&root, 0, sizeof root);
    root.cls = -1;
    root.label = strdup("");
    int ok = root.label != NULL;
    const cJSON *t;
    cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(o, "tensors")) {
        int64_t n = num(t, "bytes");
        int c = class_of(t);
        by_class[c] += n;
        listed += n;
        if (n > 0 && ok)
            ok = tree_insert(&root, str(t, "name") ? str(t, "name") : "", n, c);
    }
    int64_t meta = file_bytes - listed;
    if (meta < 0) { /* never for a well-formed file: the map is then of the tensors */
        meta = 0;
        file_bytes = listed;
    }
    by_class[C_META] = meta;
    if (meta > 0 && ok) {
        const char *ml = "graph and metadata";
        tnode *m = tnode_add(&root, ml, strlen(ml), C_META);
        ok = m != NULL;
        if (m) {
            m->value = meta;
            m->count = 1;
            root.value += meta;
        }
    }
    if (ok)
        ok = tree_join(&root, 1) && tree_flatten(&root, 0) &&
             tree_fold(&root, file_bytes / 2500 + 1);
    if (!ok) {
        tnode_free(&root);
        cJSON_Delete(o);
        fprintf(stderr, "modelshrink: %s: out of memory\n", in);
        return 1;
    }

    hbuf b = {NULL, 0, 0, 0};
    char title[512];
    snprintf(title, sizeof title, "%s: where the bytes go (modelshrink)", base_name(in));
    page_head(&b, title);
    puts_(&b, "<h1>");
    esc(&b, base_name(in));
    puts_(&b, "</h1>\n<p>");
    esc(&b, in);
    putf(&b, " &middot; %s &middot; ", fmt ? fmt : "?");
    bytes_both(&b, file_bytes);
    putf(&b, " &middot; %lld tensors, ", (long long)num(o, "tensor_count"));
    bytes_both(&b, num(o, "tensor_bytes"));
    puts_(&b, " of tensor data</p>\n");

    puts_(&b, "<h2 id=map>Where the bytes go</h2>\n<p class=note>Each rectangle is a part of the "
              "file, its area its bytes, grouped by module path (names split on "
              "<code>.</code> and <code>/</code>). Hover for names and sizes.</p>\n");
    legend(&b, by_class);
    const double W = 1100, H = 620;
    putf(&b,
         "<svg viewBox=\"0 0 %.0f %.0f\" role=\"img\" aria-label=\"treemap of the file's "
         "bytes\">\n",
         W, H);
    tm_ctx c = {&b, 0, "", {0}, {0}};
    qsort(root.kid, root.nkid, sizeof *root.kid, by_value_desc);
    squarify(&c, root.kid, root.nkid, 0, 0, W, H, 0);
    puts_(&b, "</svg>\n");

    puts_(&b, "<h2 id=breakdown>Size breakdown</h2>\n<table>\n");
    for (int k = 0; k < C_N; k++) {
        if (!by_class[k])
            continue;
        putf(&b, "<tr><td><span class=\"key c%d\"></span>%s</td><td>", k, class_label[k]);
        char cls[8];
        snprintf(cls, sizeof cls, "c%d", k);
        bar(&b, cls, (double)by_class[k] / (double)file_bytes);
        puts_(&b, "</td><td class=n>");
        bytes_both(&b, by_class[k]);
        putf(&b, "</td><td class=n>%.1f%%</td></tr>\n",
             100.0 * (double)by_class[k] / (double)file_bytes);
    }
    puts_(&b, "</table>\n");

    if (with_savings)
        savings(&b, in, out, kind, file_bytes);

    const cJSON *dup = cJSON_GetObjectItemCaseSensitive(o, "duplicates");
    putf(&b,
         "<h2 id=duplicates>Duplicates</h2>\n<p>%lld %s of identical tensors; dedup "
         "would drop %lld %s and save ",
         (long long)num(dup, "groups"),
         msh_cli_plural((double)num(dup, "groups"), "group", "groups"),
         (long long)num(dup, "tensors"),
         msh_cli_plural((double)num(dup, "tensors"), "copy", "copies"));
    bytes_both(&b, num(dup, "saved_bytes"));
    puts_(&b, ". In each group the first tensor is the one kept.</p>\n");
    const cJSON *g;
    int shown = 0, total_groups = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(dup, "list"));
    if (total_groups)
        puts_(&b, "<table>\n<tr><th class=n>copies</th><th>type</th><th>shape</th><th class=n>"
                  "bytes each</th><th>tensors</th></tr>\n");
    cJSON_ArrayForEach(g, cJSON_GetObjectItemCaseSensitive(dup, "list")) {
        if (shown++ == 200)
            break;
        const cJSON *mem = cJSON_GetObjectItemCaseSensitive(g, "members");
        char h[32];
        human((double)num(g, "bytes_each"), h, sizeof h);
        putf(&b, "<tr><td class=n>%d</td><td>", cJSON_GetArraySize(mem));
        esc(&b, str(g, "dtype"));
        puts_(&b, "</td><td>");
        shape_text(&b, cJSON_GetObjectItemCaseSensitive(g, "shape"));
        putf(&b, "</td><td class=n>%s</td><td class=name>", h);
        const cJSON *m;
        int k = 0, nm = cJSON_GetArraySize(mem);
        cJSON_ArrayForEach(m, mem) {
            if (k == 20 && nm > 21) { /* a group of thousands of copies stays one line */
                putf(&b, " and %d more", nm - 20);
                break;
            }
            puts_(&b, k++ ? ", " : "");
            esc(&b, cJSON_IsString(m) ? m->valuestring : "");
        }
        puts_(&b, "</td></tr>\n");
    }
    if (total_groups)
        puts_(&b, "</table>\n");
    if (total_groups > 200)
        putf(&b, "<p class=note>and %d more groups (inspect --json lists them all)</p>\n",
             total_groups - 200);

    puts_(&b, "<h2 id=largest>Largest tensors</h2>\n<table>\n<tr><th class=n>bytes</th><th>type"
              "</th><th>shape</th><th>name</th></tr>\n");
    cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(o, "largest")) {
        char h[32];
        human((double)num(t, "bytes"), h, sizeof h);
        putf(&b, "<tr><td class=n>%s <span class=x>(%lld)</span></td><td>", h,
             (long long)num(t, "bytes"));
        esc(&b, str(t, "dtype"));
        puts_(&b, "</td><td>");
        shape_text(&b, cJSON_GetObjectItemCaseSensitive(t, "shape"));
        puts_(&b, "</td><td class=name>");
        esc(&b, str(t, "name"));
        const char *role = str(t, "role");
        if (role && strcmp(role, "weight") != 0) {
            puts_(&b, " <span class=x>(");
            esc(&b, role);
            puts_(&b, ")</span>");
        }
        puts_(&b, "</td></tr>\n");
    }
    puts_(&b, "</table>\n");
    page_foot(&b);
    tnode_free(&root);
    cJSON_Delete(o);
    int wrote = write_page(&b, out);
    free(b.p);
    return wrote ? 0 : 1;
}

/* ---- report html ---- */

typedef struct rrec {
    const char *rel;
    size_t seq;
    cJSON *j;
    double ratio; /* 0 for a failure */
} rrec;

static int cmp_rel_seq(const void *a, const void *b) {
    const rrec *x = a, *y = b;
    int c = strcmp(x->rel, y->rel);
    return c ? c : (x->seq < y->seq ? -1 : x->seq > y->seq);
}

/* Ok models by ratio, largest first, then the failures; by name within a tie. */
static int cmp_ratio_desc(const void *a, const void *b) {
    const rrec *x = a, *y = b;
    if (x->ratio != y->ratio)
        return x->ratio < y->ratio ? 1 : -1;
    return strcmp(x->rel, y->rel);
}

static int is_ok(const cJSON *j) {
    const char *s = str(j, "status");
    return s && strcmp(s, "ok") == 0;
}

/* Read the model records of `path` into *v (the last line may be cut short by a kill: it is
 * ignored, as --resume does). 1, or 0 with the message printed. */
static int read_report(const char *path, rrec **v, size_t *n, size_t *cap, size_t *seq,
                       int *summaries, int *shards) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "modelshrink: %s: cannot read: %s\n", path, strerror(errno));
        return 0;
    }
    char *line = NULL;
    size_t lcap = 0, lineno = 0;
    ssize_t len;
    int ok = 1;
    while (ok && (len = getline(&line, &lcap, f)) > 0) {
        lineno++;
        int complete = line[len - 1] == '\n';
        size_t k = strspn(line, " \t\r\n");
        if (!line[k])
            continue;
        cJSON *j = cJSON_Parse(line);
        if (!cJSON_IsObject(j)) {
            cJSON_Delete(j);
            if (!complete)
                break; /* a record cut short */
            fprintf(stderr,
                    "modelshrink: %s: line %zu: not a JSON object (is it a report of "
                    "convert --report?)\n",
                    path, lineno);
            ok = 0;
            break;
        }
        const char *type = str(j, "type");
        if (type && strcmp(type, "summary") == 0) {
            (*summaries)++;
            const cJSON *sh = cJSON_GetObjectItemCaseSensitive(j, "shards");
            *shards += cJSON_IsArray(sh) ? cJSON_GetArraySize(sh) : str(j, "shard") ? 1 : 0;
        }
        if (!type || strcmp(type, "model") != 0) {
            cJSON_Delete(j);
            continue;
        }
        const char *rel = str(j, "rel");
        const char *st = str(j, "status");
        if (!rel || !st || !cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(j, "bytes_in")) ||
            !cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(j, "bytes_out"))) {
            fprintf(stderr, "modelshrink: %s: line %zu: a model record without %s\n", path, lineno,
                    !rel  ? "\"rel\""
                    : !st ? "\"status\""
                          : "its byte counts");
            cJSON_Delete(j);
            ok = 0;
            break;
        }
        if (*n == *cap) {
            size_t nc = *cap ? 2 * *cap : 256;
            rrec *p = realloc(*v, nc * sizeof *p);
            if (!p) {
                cJSON_Delete(j);
                fprintf(stderr, "modelshrink: %s: out of memory\n", path);
                ok = 0;
                break;
            }
            *v = p;
            *cap = nc;
        }
        int64_t bo = num(j, "bytes_out");
        (*v)[(*n)++] = (rrec){rel, (*seq)++, j,
                              is_ok(j) && bo > 0 ? (double)num(j, "bytes_in") / (double)bo : 0};
    }
    free(line);
    if (ok && ferror(f)) {
        fprintf(stderr, "modelshrink: %s: cannot read: %s\n", path, strerror(errno));
        ok = 0;
    }
    fclose(f);
    return ok;
}

/* The savings of a record's passes: dedup, strip, float, int8, int4, prune. */
#define N_PASSES 6
static const char *const pass_name[N_PASSES] = {"dedup", "strip", "FP16/BF16",
                                                "INT8",  "INT4",  "clean-up (prune)"};

static void record_savings(const cJSON *j, int64_t s[N_PASSES]) {
    const cJSON *sv = cJSON_GetObjectItemCaseSensitive(j, "savings");
    const cJSON *q4 = cJSON_GetObjectItemCaseSensitive(j, "int4");
    s[0] = num(sv, "dedup");
    s[1] = num(sv, "strip");
    s[2] = num(sv, "float");
    s[3] = num(sv, "int8");
    s[4] = q4 ? num(q4, "bytes_before") - num(q4, "bytes_after") : 0;
    s[5] = num(sv, "prune");
}

static const char sort_js[] =
    "<script>\n"
    "document.querySelectorAll('table.sort').forEach(function(t){\n"
    "t.tHead.querySelectorAll('th').forEach(function(th,i){\n"
    "th.addEventListener('click',function(){\n"
    "var tb=t.tBodies[0],r=Array.prototype.slice.call(tb.rows),d=th.dataset.d==='a'?'d':'a',"
    "n=th.classList.contains('n');\n"
    "th.dataset.d=d;\n"
    "function k(c){return n?parseFloat(c.getAttribute('data-v')||c.textContent)||0:"
    "c.textContent;}\n"
    "r.sort(function(a,b){var x=k(a.cells[i]),y=k(b.cells[i]),o=n?x-y:(x<y?-1:x>y?1:0);"
    "return d==='a'?o:-o;});\n"
    "var f=document.createDocumentFragment();r.forEach(function(x){f.appendChild(x);});"
    "tb.appendChild(f);});});});\n"
    "</script>\n";

static void histogram(hbuf *b, const rrec *v, size_t n) {
    static const double edge[] = {0, 1, 1.1, 1.25, 1.5, 2, 3, 4, 6, 8};
    static const char *const label[] = {"&lt;1", "1-1.1", "1.1-1.25", "1.25-1.5", "1.5-2",
                                        "2-3",   "3-4",   "4-6",      "6-8",      "&#8805;8"};
    enum { NB = 10 };
    int64_t cnt[NB] = {0}, most = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i].ratio <= 0)
            continue;
        int k = NB - 1;
        while (k > 0 && v[i].ratio < edge[k])
            k--;
        cnt[k]++;
    }
    for (int k = 0; k < NB; k++)
        most = cnt[k] > most ? cnt[k] : most;
    const double W = 900, H = 240, top = 20, base = 200, bw = W / NB;
    putf(b, "<svg viewBox=\"0 0 %.0f %.0f\" role=\"img\" aria-label=\"histogram of ratios\">\n", W,
         H);
    for (int k = 0; k < NB; k++) {
        double h = most ? (base - top) * (double)cnt[k] / (double)most : 0;
        putf(b,
             "<rect class=hist x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\"><title>ratio "
             "%s: %lld models</title></rect>",
             k * bw + 6, base - h, bw - 12, h, label[k], (long long)cnt[k]);
        putf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%lld</text>", k * bw + bw / 2,
             base - h - 4, (long long)cnt[k]);
        putf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", k * bw + bw / 2,
             base + 18, label[k]);
    }
    putf(b, "<line x1=\"0\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"#444\"/>\n", base, W,
         base);
    putf(b,
         "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">ratio (bytes in / bytes out) of "
         "the models converted</text>\n</svg>\n",
         W / 2, H - 4);
}

typedef struct fmt_row {
    char name[16];
    int64_t models, ok, failed, in, out;
} fmt_row;

int msh_cli_html_report(int nrep, char **reports, const char *out) {
    for (int i = 0; i < nrep; i++) {
        const char *why = out_problem(reports[i], out);
        if (why) {
            fprintf(stderr, "modelshrink: report html: %s %s\n", out,
                    strcmp(why, "is the input") == 0 ? "is one of the reports" : why);
            return 2;
        }
    }
    rrec *all = NULL;
    size_t n = 0, cap = 0, seq = 0;
    int summaries = 0, shards = 0, ok = 1;
    for (int i = 0; ok && i < nrep; i++)
        ok = read_report(reports[i], &all, &n, &cap, &seq, &summaries, &shards);
    if (ok && n == 0) {
        fprintf(stderr,
                "modelshrink: %s: no model records (is it a report of convert "
                "--report?)\n",
                reports[0]);
        ok = 0;
    }
    if (!ok) {
        for (size_t i = 0; i < n; i++)
            cJSON_Delete(all[i].j);
        free(all);
        return 2;
    }
    /* the last record of each model wins, as in report merge */
    qsort(all, n, sizeof *all, cmp_rel_seq);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (i + 1 < n && strcmp(all[i].rel, all[i + 1].rel) == 0) {
            cJSON_Delete(all[i].j);
            continue;
        }
        all[m++] = all[i];
    }
    n = m;
    qsort(all, n, sizeof *all, cmp_ratio_desc);

    int64_t models = (int64_t)n, okc = 0, failed = 0, bin = 0, bout = 0, cpu = 0, cuda = 0;
    int64_t saved[N_PASSES] = {0};
    double secs = 0;
    fmt_row fr[8];
    size_t nf = 0;
    for (size_t i = 0; i < n; i++) {
        const cJSON *j = all[i].j;
        int good = is_ok(j);
        const char *fmt = str(j, "format") ? str(j, "format") : "?";
        size_t k = 0;
        while (k < nf && strcmp(fr[k].name, fmt) != 0)
            k++;
        if (k == nf && nf < 8) {
            memset(&fr[nf], 0, sizeof fr[nf]);
            snprintf(fr[nf].name, sizeof fr[nf].name, "%s", fmt);
            nf++;
        }
        if (k == 8)
            k = 7; /* never: four formats */
        fr[k].models++;
        secs += cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(j, "seconds")) > 0
                    ? cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(j, "seconds"))
                    : 0;
        const char *dev = str(j, "device");
        if (good) {
            okc++;
            fr[k].ok++;
            bin += num(j, "bytes_in");
            bout += num(j, "bytes_out");
            fr[k].in += num(j, "bytes_in");
            fr[k].out += num(j, "bytes_out");
            int64_t s[N_PASSES];
            record_savings(j, s);
            for (int p = 0; p < N_PASSES; p++)
                saved[p] += s[p];
            if (dev && strcmp(dev, "cuda") == 0)
                cuda++;
            else
                cpu++;
        } else {
            failed++;
            fr[k].failed++;
        }
    }

    hbuf b = {NULL, 0, 0, 0};
    page_head(&b, "modelshrink batch report");
    puts_(&b, "<h1>Batch report</h1>\n<p class=note>");
    for (int i = 0; i < nrep && i < 20; i++) {
        puts_(&b, i ? ", " : "");
        esc(&b, reports[i]);
    }
    if (nrep > 20)
        putf(&b, " and %d more reports", nrep - 20);
    if (shards > 1)
        putf(&b, " &middot; merged from %d shards", shards);
    puts_(&b, "</p>\n<h2 id=totals>Totals</h2>\n<table>\n");
    putf(&b,
         "<tr><th>models</th><td><b id=models>%lld</b>: <span id=ok>%lld</span> ok, <span "
         "id=failed>%lld</span> failed</td></tr>\n",
         (long long)models, (long long)okc, (long long)failed);
    puts_(&b, "<tr><th>bytes (ok models)</th><td>");
    bytes_both(&b, bin);
    puts_(&b, " &rarr; ");
    bytes_both(&b, bout);
    if (bout > 0)
        putf(&b, ", ratio <b>%.2fx</b>", (double)bin / (double)bout);
    puts_(&b, "</td></tr>\n");
    putf(&b, "<tr><th>conversion time</th><td>%.2f s, summed over the models</td></tr>\n", secs);
    putf(&b, "<tr><th>device</th><td>cpu: %lld, cuda: %lld (ok models)</td></tr>\n</table>\n",
         (long long)cpu, (long long)cuda);

    puts_(&b, "<h2 id=passes>Savings by pass</h2>\n<p class=note>Bytes each pass removed, summed "
              "over the models converted, against their input bytes.</p>\n<table>\n");
    for (int p = 0; p < N_PASSES; p++) {
        putf(&b, "<tr><td>%s</td><td>", pass_name[p]);
        bar(&b, "after", bin > 0 ? (double)saved[p] / (double)bin : 0);
        puts_(&b, "</td><td class=n>");
        bytes_both(&b, saved[p]);
        putf(&b, "</td><td class=n>%.1f%%</td></tr>\n",
             bin > 0 ? 100.0 * (double)saved[p] / (double)bin : 0.0);
    }
    puts_(&b, "</table>\n");

    puts_(&b, "<h2 id=formats>By format</h2>\n<table>\n<tr><th>format</th><th class=n>models</th>"
              "<th class=n>ok</th><th class=n>failed</th><th class=n>bytes in</th><th class=n>"
              "bytes out</th><th class=n>ratio</th></tr>\n");
    for (size_t k = 0; k < nf; k++) {
        char hi[32], ho[32];
        human((double)fr[k].in, hi, sizeof hi);
        human((double)fr[k].out, ho, sizeof ho);
        puts_(&b, "<tr><td>");
        esc(&b, fr[k].name);
        putf(&b,
             "</td><td class=n>%lld</td><td class=n>%lld</td><td class=n>%lld</td><td class=n>%s"
             "</td><td class=n>%s</td><td class=n>",
             (long long)fr[k].models, (long long)fr[k].ok, (long long)fr[k].failed, hi, ho);
        if (fr[k].out > 0)
            putf(&b, "%.2fx", (double)fr[k].in / (double)fr[k].out);
        puts_(&b, "</td></tr>\n");
    }
    puts_(&b, "</table>\n<h2 id=histogram>Ratios</h2>\n");
    histogram(&b, all, n);

    putf(&b, "<h2 id=failures>Failures (%lld)</h2>\n", (long long)failed);
    if (!failed)
        puts_(&b, "<p>None.</p>\n");
    else
        puts_(&b, "<table>\n<tr><th>model</th><th>format</th><th>message</th></tr>\n");
    for (size_t i = 0; i < n; i++) {
        if (is_ok(all[i].j))
            continue;
        puts_(&b, "<tr><td class=name>");
        esc(&b, all[i].rel);
        puts_(&b, "</td><td>");
        esc(&b, str(all[i].j, "format"));
        puts_(&b, "</td><td class=err>");
        esc(&b, str(all[i].j, "error"));
        puts_(&b, "</td></tr>\n");
    }
    if (failed)
        puts_(&b, "</table>\n");

    puts_(&b, "<h2 id=models-table>Models</h2>\n<p class=note>Sorted by ratio; with scripts on, "
              "a click on a column's title sorts by it.</p>\n<style>table.sort td:nth-child(n+4)"
              "{text-align:right}</style>\n<table class=sort>\n<thead><tr><th>model</th><th>"
              "format</th><th>status</th><th class=n>ratio</th><th class=n>bytes in</th><th "
              "class=n>bytes out</th><th class=n>seconds</th><th>device</th></tr></thead>\n"
              "<tbody>\n");
    for (size_t i = 0; i < n; i++) {
        const cJSON *j = all[i].j;
        int good = is_ok(j);
        char hi[32], ho[32];
        int64_t in = num(j, "bytes_in"), o = num(j, "bytes_out");
        human((double)in, hi, sizeof hi);
        human((double)o, ho, sizeof ho);
        puts_(&b, good ? "<tr><td>" : "<tr class=e><td>");
        esc(&b, all[i].rel);
        puts_(&b, "</td><td>");
        esc(&b, str(j, "format"));
        puts_(&b, "</td><td>");
        esc(&b, str(j, "status"));
        if (good)
            putf(&b, "</td><td>%.2f", all[i].ratio);
        else
            puts_(&b, "</td><td data-v=0>");
        double s = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(j, "seconds"));
        putf(&b, "</td><td data-v=%lld>%s</td><td data-v=%lld>%s</td><td>%.2f</td><td>",
             (long long)in, hi, (long long)o, ho, s == s ? s : 0.0);
        esc(&b, str(j, "device"));
        puts_(&b, "</td></tr>\n");
    }
    puts_(&b, "</tbody></table>\n");
    puts_(&b, sort_js);
    page_foot(&b);
    for (size_t i = 0; i < n; i++)
        cJSON_Delete(all[i].j);
    free(all);
    int wrote = write_page(&b, out);
    free(b.p);
    return wrote ? 0 : 1;
}
