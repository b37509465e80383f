/* The host driver: jobs cut into pieces, producers reading and submitting, one consumer taking
 * pieces in order (see msh_engine.h). */
#include "engine/msh_engine.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "engine/msh_backend.h"
#include "kernels/msh_hash.h"

struct msh_engine {
    msh_engine_opts o;
    msh_backend *be;
    int broken; /* a backend error happened: do not reuse the backend */
};

int64_t msh_job_out_bytes(msh_op op, int64_t nbytes) {
    switch (op) {
    case MSH_OP_COPY: return nbytes;
    case MSH_OP_F16:
    case MSH_OP_BF16: return nbytes / 2;
    case MSH_OP_INT8: return nbytes / 4;
    case MSH_OP_INT4: return (nbytes / 4 + 1) / 2;
    case MSH_OP_Q4STATS:
    case MSH_OP_Q4SEARCH:
    case MSH_OP_DIGEST:
    case MSH_OP_ABSMAX: return 0;
    }
    return nbytes;
}

int msh_op_for(int32_t in, int32_t out) {
    if (out == 0 || out == in)
        return MSH_OP_COPY;
    if (in == 1 && out == 10)
        return MSH_OP_F16;
    if (in == 1 && out == 16)
        return MSH_OP_BF16;
    if (in == 1 && out == 3)
        return MSH_OP_INT8;
    return -1;
}

/* CUDA backends are kept for the next model rather than freed: pinned buffers are slow to make.
 * Parallel models each take their own, so no model waits for another's file reads. */
#define MSH_CUDA_POOL 8
static pthread_mutex_t g_pool_lock = PTHREAD_MUTEX_INITIALIZER;
static msh_backend *g_pool[MSH_CUDA_POOL];
static int g_pool_n;

static msh_status cuda_take(const msh_engine_opts *o, msh_backend **out, msh_error *e) {
    size_t want = (o->staging + MSH_HASH_CHUNK - 1) / MSH_HASH_CHUNK * MSH_HASH_CHUNK;
    msh_backend *b = NULL;
    pthread_mutex_lock(&g_pool_lock);
    for (int i = 0; i < g_pool_n && !b; i++)
        if (g_pool[i]->piece_bytes == want) {
            b = g_pool[i];
            g_pool[i] = g_pool[--g_pool_n];
        }
    pthread_mutex_unlock(&g_pool_lock);
    if (!b)
        return msh_backend_cuda_open(o->staging, &o->f16, out, e);
    b->f16 = o->f16;
    *out = b;
    return MSH_OK;
}

static void cuda_give_back(msh_backend *b) {
    pthread_mutex_lock(&g_pool_lock);
    if (g_pool_n < MSH_CUDA_POOL) {
        g_pool[g_pool_n++] = b;
        b = NULL;
    }
    pthread_mutex_unlock(&g_pool_lock);
    if (b)
        b->close(b);
}

msh_status msh_engine_open(const msh_engine_opts *o, msh_engine **out, msh_error *e) {
    *out = NULL;
    msh_engine *g = calloc(1, sizeof *g);
    if (!g)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    g->o = *o;
    msh_status st;
    if (o->backend == MSH_BACKEND_CUDA) {
        st = cuda_take(o, &g->be, e);
    } else {
        int threads = o->threads;
        if (threads <= 0) {
            long nc = sysconf(_SC_NPROCESSORS_ONLN);
            threads = nc > 0 ? (int)(nc > 64 ? 64 : nc) : 1;
        }
        st = msh_backend_cpu_open(threads, &o->f16, &g->be, e);
    }
    if (st != MSH_OK) {
        free(g);
        return st;
    }
    *out = g;
    return MSH_OK;
}

void msh_engine_close(msh_engine *g) {
    if (!g)
        return;
    if (g->be && g->o.backend == MSH_BACKEND_CUDA && !g->broken)
        cuda_give_back(g->be);
    else if (g->be)
        g->be->close(g->be);
    free(g);
}

const char *msh_engine_device(const msh_engine *g) {
    return g->be->name;
}

/* ---- runs ---- */

enum { SLOT_FREE = 0, SLOT_CLAIMED, SLOT_READY, SLOT_FAILED };

typedef struct slot {
    int state;
    int span; /* a file span copied by the consumer: no bytes in the slot */
    msh_piece p;
    msh_status st;
    msh_error err;
} slot;

struct msh_run {
    msh_engine *g;
    msh_backend *be;
    msh_job *jobs;
    size_t n;
    /* producers: the next piece to hand out */
    size_t pj;
    int64_t poff;
    int64_t next_piece;
    /* consumer */
    size_t cj;
    int64_t consumed;
    slot *slots;
    int S;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t *th;
    int nth;
    int stop;
    /* consumer scratch: CPU recomputation when verifying, chunk digests of the current job */
    uint8_t *scratch;
    uint64_t *chunks;
    size_t chunks_cap;
    uint8_t *le;
    msh_status failed; /* a consumer-side failure: the run is over */
    /* progress (consumer side): the phase (0: not reported, a scan of less than a step), input
     * bytes of all jobs, taken, last reported */
    int phase;
    int64_t bytes_total, bytes_done, reported;
};

/* A job that the consumer copies from file to file in one go. */
static int is_span(const msh_job *j) {
    return j->op == MSH_OP_COPY && j->src->kind == MSH_SRC_FILE;
}

static int64_t job_pieces(const msh_run *r, const msh_job *j) {
    if (j->nbytes <= 0)
        return 0;
    if (is_span(j))
        return 1;
    int64_t P = (int64_t)r->be->piece_bytes;
    return (j->nbytes + P - 1) / P;
}

/* An INT4 piece's scales: the job's own, or held from its lazy maker until piece_done. */
static msh_status piece_scales(msh_piece *p, msh_error *e) {
    const msh_int4_layout *l = &p->job->q4;
    if (!l->lazy) {
        p->q4s = l->scales;
        p->q4z = l->zps;
        return MSH_OK;
    }
    MSH_FORWARD(l->lazy->acquire(l->lazy->ctx, &p->q4s, &p->q4z, e));
    p->q4held = 1;
    return MSH_OK;
}

static void piece_done(msh_piece *p) {
    if (p->q4held) {
        p->q4held = 0;
        p->job->q4.lazy->release(p->job->q4.lazy->ctx, (int64_t)p->n);
    }
}

static void *producer(void *arg) {
    msh_run *r = arg;
    msh_backend *be = r->be;
    const int64_t P = (int64_t)be->piece_bytes;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (r->pj < r->n && job_pieces(r, &r->jobs[r->pj]) == 0) {
            r->pj++;
            r->poff = 0;
        }
        if (r->stop || r->pj >= r->n)
            break;
        msh_job *j = &r->jobs[r->pj];
        int64_t idx = r->next_piece++;
        int64_t off = r->poff;
        int span = is_span(j);
        int64_t len = span ? j->nbytes : (j->nbytes - off < P ? j->nbytes - off : P);
        r->poff += len;
        if (r->poff >= j->nbytes) {
            r->pj++;
            r->poff = 0;
        }
        int s = (int)(idx % r->S);
        /* slot s is this piece's once the consumer has taken piece idx - S (two producers may
         * wait for the same slot with pieces S apart) */
        while (!r->stop && idx >= r->consumed + r->S)
            pthread_cond_wait(&r->cv, &r->mu);
        if (r->stop)
            break;
        slot *sl = &r->slots[s];
        sl->state = SLOT_CLAIMED;
        sl->span = span;
        memset(&sl->p, 0, sizeof sl->p);
        sl->p.job = j;
        sl->p.first = off;
        sl->p.n = (size_t)len;
        pthread_mutex_unlock(&r->mu);
        msh_status st = MSH_OK;
        msh_error err;
        err.msg[0] = 0;
        if (!span) {
            st = msh_src_read(j->src, off, be->in_buf(be, s), (size_t)len, &err);
            if (st == MSH_OK && j->op == MSH_OP_INT4)
                st = piece_scales(&sl->p, &err);
            if (st == MSH_OK && j->op != MSH_OP_COPY)
                st = be->submit(be, s, &sl->p, &err);
            if (st != MSH_OK)
                piece_done(&sl->p);
        }
        pthread_mutex_lock(&r->mu);
        sl->st = st;
        if (st != MSH_OK) {
            sl->err = err;
            sl->state = SLOT_FAILED;
            r->stop = 1; /* the consumer reports it when it reaches this piece */
        } else {
            sl->state = SLOT_READY;
        }
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* Tell the engine's progress callback where a phase is; non-zero from it cancels. */
static msh_status engine_report(const msh_engine *g, int phase, int64_t bytes_done,
                                int64_t bytes_total, int64_t tensors_done, int64_t tensors_total,
                                msh_error *e) {
    const msh_engine_opts *o = &g->o;
    if (!o->progress)
        return MSH_OK;
    msh_progress p;
    memset(&p, 0, sizeof p);
    p.struct_size = sizeof p;
    p.path = o->progress_path ? o->progress_path : "";
    p.phase = phase;
    p.bytes_done = bytes_done;
    p.bytes_total = bytes_total;
    p.tensors_done = tensors_done;
    p.tensors_total = tensors_total;
    if (o->progress(o->progress_user, &p) != 0)
        return msh_fail(e, MSH_ERR_CANCELLED, "cancelled by the progress callback");
    return MSH_OK;
}

static msh_status run_report(msh_run *r, msh_error *e) {
    r->reported = r->bytes_done;
    if (!r->phase)
        return MSH_OK;
    return engine_report(r->g, r->phase, r->bytes_done, r->bytes_total, (int64_t)r->cj,
                         (int64_t)r->n, e);
}

/* After `n` more input bytes: report when the next piece could take the run more than a step
 * past the last report (so reports are at most a step apart where pieces are smaller). */
static msh_status run_advance(msh_run *r, int64_t n, msh_error *e) {
    r->bytes_done += n;
    if (r->bytes_done - r->reported + (int64_t)r->be->piece_bytes > MSH_PROGRESS_STEP)
        return run_report(r, e);
    return MSH_OK;
}

static msh_status run_fail(msh_run *r, msh_status st) {
    if (st == MSH_ERR_CUDA)
        r->g->broken = 1;
    pthread_mutex_lock(&r->mu);
    r->stop = 1;
    r->failed = st;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return st;
}

static msh_status run_start(msh_engine *g, msh_job *jobs, size_t n, int phase, msh_run **out,
                            msh_error *e) {
    *out = NULL;
    msh_run *r = calloc(1, sizeof *r);
    if (!r)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    r->g = g;
    r->be = g->be;
    r->jobs = jobs;
    r->n = n;
    r->S = g->be->slots;
    r->slots = calloc((size_t)r->S, sizeof *r->slots);
    int nth = g->be->producers;
    r->th = calloc((size_t)nth, sizeof *r->th);
    if (g->o.verify && g->be->submit != NULL && strcmp(g->be->name, "cpu") != 0)
        r->scratch = malloc(g->be->piece_bytes);
    if (!r->slots || !r->th || (g->o.verify && strcmp(g->be->name, "cpu") != 0 && !r->scratch)) {
        free(r->slots);
        free(r->th);
        free(r->scratch);
        free(r);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    for (size_t k = 0; k < n; k++)
        r->bytes_total += jobs[k].nbytes > 0 ? jobs[k].nbytes : 0;
    /* a small scan is a blink: not worth a phase of its own */
    r->phase = phase == MSH_PHASE_SCAN && r->bytes_total < MSH_PROGRESS_STEP ? 0 : phase;
    msh_status st = msh_cancel_check(g->o.cancel, e);
    if (st == MSH_OK)
        st = run_report(r, e);
    if (st != MSH_OK) { /* before any thread starts */
        msh_run_end(r, NULL);
        return st;
    }
    for (int i = 0; i < nth; i++) {
        if (pthread_create(&r->th[i], NULL, producer, r) != 0)
            break;
        r->nth++;
    }
    if (r->nth == 0) {
        msh_run_end(r, NULL);
        return msh_fail(e, MSH_ERR_NOMEM, "cannot start the engine's threads");
    }
    *out = r;
    return MSH_OK;
}

msh_status msh_run_start(msh_engine *g, msh_job *jobs, size_t n, msh_run **out, msh_error *e) {
    return run_start(g, jobs, n, MSH_PHASE_WRITE, out, e);
}

msh_status msh_run_end(msh_run *r, msh_error *e) {
    (void)e;
    if (!r)
        return MSH_OK;
    pthread_mutex_lock(&r->mu);
    r->stop = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    for (int i = 0; i < r->nth; i++)
        pthread_join(r->th[i], NULL);
    /* pieces submitted but never taken: let an asynchronous backend finish with their slots */
    for (int s = 0; s < r->S; s++)
        if (r->slots[s].state == SLOT_READY && !r->slots[s].span &&
            r->slots[s].p.job->op != MSH_OP_COPY) {
            (void)r->be->wait(r->be, s, &r->slots[s].p, NULL);
            piece_done(&r->slots[s].p);
        }
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r->slots);
    free(r->th);
    free(r->scratch);
    free(r->chunks);
    free(r->le);
    free(r);
    return MSH_OK;
}

/* The CPU's version of a piece another backend made: same bytes, counts, digests, maxima. */
static msh_status verify_piece(msh_run *r, int s, const msh_piece *p, const uint8_t *out,
                               msh_error *e) {
    const msh_job *j = p->job;
    msh_piece q = *p;
    msh_piece_compute_cpu(&q, &r->be->f16, r->be->in_buf(r->be, s), r->scratch);
    const char *dev = r->be->name;
    if (q.out_n != p->out_n || q.row0 != p->row0)
        return msh_fail(e, MSH_ERR_VERIFY,
                        "verify: tensor '%s': the %s made %zu bytes, the CPU %zu", j->name, dev,
                        p->out_n, q.out_n);
    if (j->op == MSH_OP_F16 && q.clamped != p->clamped)
        return msh_fail(e, MSH_ERR_VERIFY,
                        "verify: tensor '%s': %llu values clamped on the %s, %llu on the CPU",
                        j->name, (unsigned long long)p->clamped, dev,
                        (unsigned long long)q.clamped);
    if (j->op == MSH_OP_F16 &&
        (q.range.nonzero != p->range.nonzero || q.range.below != p->range.below ||
         q.range.above != p->range.above || q.range.max_bits != p->range.max_bits))
        return msh_fail(e, MSH_ERR_VERIFY,
                        "verify: tensor '%s': the range test differs on the %s (%llu/%llu/%llu, "
                        "max 0x%x) and the CPU (%llu/%llu/%llu, max 0x%x)",
                        j->name, dev, (unsigned long long)p->range.nonzero,
                        (unsigned long long)p->range.below, (unsigned long long)p->range.above,
                        p->range.max_bits, (unsigned long long)q.range.nonzero,
                        (unsigned long long)q.range.below, (unsigned long long)q.range.above,
                        q.range.max_bits);
    if (memcmp(out, r->scratch, p->out_n) == 0)
        return MSH_OK;
    size_t w = j->op == MSH_OP_INT8 || j->op == MSH_OP_INT4          ? 1
               : j->op == MSH_OP_Q4STATS || j->op == MSH_OP_Q4SEARCH ? 4
               : j->op == MSH_OP_DIGEST                              ? 8
               : j->op == MSH_OP_ABSMAX                              ? 4
                                                                     : 2;
    for (size_t i = 0; i + w <= p->out_n; i += w)
        if (memcmp(out + i, r->scratch + i, w) != 0) {
            uint64_t a = 0, b = 0;
            memcpy(&a, out + i, w);
            memcpy(&b, r->scratch + i, w);
            if (j->op == MSH_OP_DIGEST)
                return msh_fail(
                    e, MSH_ERR_VERIFY,
                    "verify: tensor '%s': digest of chunk %lld differs on the %s", j->name,
                    (long long)(p->first / (int64_t)MSH_HASH_CHUNK + (int64_t)(i / 8)), dev);
            if (j->op == MSH_OP_ABSMAX)
                return msh_fail(e, MSH_ERR_VERIFY,
                                "verify: tensor '%s': channel %lld maximum differs: %s 0x%llx, "
                                "CPU 0x%llx",
                                j->name, (long long)((p->row0 + (int64_t)(i / 4)) % j->channels),
                                dev, (unsigned long long)a, (unsigned long long)b);
            int64_t in_w = j->op == MSH_OP_INT8 ? 4 : 4;
            return msh_fail(e, MSH_ERR_VERIFY,
                            "verify: tensor '%s': element %lld differs: %s 0x%llx, CPU 0x%llx",
                            j->name, (long long)(p->first / in_w + (int64_t)(i / w)), dev,
                            (unsigned long long)a, (unsigned long long)b);
        }
    return msh_fail(e, MSH_ERR_VERIFY, "verify: tensor '%s': bytes differ", j->name);
}

/* A file span from file to file, in steps that keep reports a step apart, checking for
 * cancellation between them. */
static msh_status copy_span(msh_run *r, msh_sink *dst, const msh_job *j, msh_error *e) {
    for (int64_t off = 0; off < j->nbytes;) {
        int64_t step = MSH_PROGRESS_STEP - (r->bytes_done - r->reported);
        if (step < (int64_t)1 << 20)
            step = (int64_t)1 << 20;
        int64_t len = j->nbytes - off < step ? j->nbytes - off : step;
        if (off > 0)
            MSH_FORWARD(msh_cancel_check(r->g->o.cancel, e));
        if (dst)
            MSH_FORWARD(msh_sink_copy_from(dst, j->src->fd, j->src->offset + off, len, e));
        off += len;
        MSH_FORWARD(run_advance(r, len, e));
    }
    return MSH_OK;
}

static msh_status job_begin(msh_run *r, msh_job *j, msh_error *e) {
    j->clamped = 0;
    memset(&j->range, 0, sizeof j->range);
    if (j->op == MSH_OP_DIGEST) {
        size_t nc = (size_t)((j->nbytes + (int64_t)MSH_HASH_CHUNK - 1) / (int64_t)MSH_HASH_CHUNK);
        if (nc > r->chunks_cap) {
            uint64_t *c = realloc(r->chunks, nc * sizeof *c);
            uint8_t *le = c ? realloc(r->le, nc * 8) : NULL;
            if (c)
                r->chunks = c;
            if (le)
                r->le = le;
            if (!c || !le)
                return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            r->chunks_cap = nc;
        }
    }
    return MSH_OK;
}

static void job_end(msh_run *r, msh_job *j) {
    if (j->op == MSH_OP_DIGEST) {
        size_t nc = (size_t)((j->nbytes + (int64_t)MSH_HASH_CHUNK - 1) / (int64_t)MSH_HASH_CHUNK);
        j->digest = msh_digest_combine(r->chunks, nc, j->nbytes, r->le);
    }
}

msh_status msh_run_take(msh_run *r, size_t k, msh_sink *dst, msh_error *e) {
    if (r->failed)
        return msh_fail(e, r->failed, "internal error: the engine run has already failed");
    if (k != r->cj || k >= r->n)
        return run_fail(r, msh_fail(e, MSH_ERR_FORMAT,
                                    "internal error: tensor %zu taken out of order (expected %zu)",
                                    k, r->cj));
    msh_job *j = &r->jobs[k];
    int64_t np = job_pieces(r, j);
    msh_status st = job_begin(r, j, e);
    if (st != MSH_OK)
        return run_fail(r, st);
    msh_backend *be = r->be;
    for (int64_t i = 0; i < np; i++) {
        st = msh_cancel_check(r->g->o.cancel, e);
        if (st != MSH_OK)
            return run_fail(r, st);
        int s = (int)(r->consumed % r->S);
        slot *sl = &r->slots[s];
        pthread_mutex_lock(&r->mu);
        while (sl->state == SLOT_FREE || sl->state == SLOT_CLAIMED) {
            if (r->stop && sl->state == SLOT_FREE)
                break; /* a producer failed earlier and nobody will fill this slot */
            pthread_cond_wait(&r->cv, &r->mu);
        }
        int state = sl->state;
        pthread_mutex_unlock(&r->mu);
        if (state == SLOT_FAILED) {
            if (e)
                *e = sl->err;
            return run_fail(r, sl->st);
        }
        if (state != SLOT_READY) {
            /* stopped before this piece was made: the failure is at an earlier slot */
            for (int t = 0; t < r->S; t++)
                if (r->slots[t].state == SLOT_FAILED) {
                    if (e)
                        *e = r->slots[t].err;
                    return run_fail(r, r->slots[t].st);
                }
            return run_fail(r, msh_fail(e, MSH_ERR_FORMAT, "internal error: engine stopped"));
        }
        msh_piece *p = &sl->p;
        int64_t piece_in = sl->span ? 0 : (int64_t)p->n; /* a span reports as it copies */
        if (sl->span) {
            st = copy_span(r, dst, j, e);
        } else if (j->op == MSH_OP_COPY) {
            st = dst ? msh_sink_write(dst, be->in_buf(be, s), p->n, e) : MSH_OK;
        } else {
            st = be->wait(be, s, p, e);
            const uint8_t *out = st == MSH_OK ? be->out_buf(be, s) : NULL;
            if (st == MSH_OK && r->scratch)
                st = verify_piece(r, s, p, out, e);
            if (st == MSH_OK) {
                j->clamped += p->clamped;
                j->range.nonzero += p->range.nonzero;
                j->range.below += p->range.below;
                j->range.above += p->range.above;
                if (p->range.max_bits > j->range.max_bits)
                    j->range.max_bits = p->range.max_bits;
                if (j->op == MSH_OP_DIGEST) {
                    memcpy(r->chunks + p->first / (int64_t)MSH_HASH_CHUNK, out, p->out_n);
                } else if (j->op == MSH_OP_Q4STATS) {
                    const float *pm = (const float *)(const void *)out;
                    float *st4 = j->q4_stats + 2 * p->row0;
                    for (size_t q = 0; q < p->out_n / 4; q += 2) {
                        if (pm[q] < st4[q])
                            st4[q] = pm[q];
                        if (pm[q + 1] > st4[q + 1])
                            st4[q + 1] = pm[q + 1];
                    }
                } else if (j->op == MSH_OP_Q4SEARCH) {
                    memcpy(j->q4_stats + 2 * p->row0, out, p->out_n);
                } else if (j->op == MSH_OP_ABSMAX) {
                    const float *pm = (const float *)(const void *)out;
                    size_t t = p->out_n / 4;
                    for (size_t q = 0; q < t; q++) {
                        int64_t ch = (p->row0 + (int64_t)q) % j->channels;
                        if (pm[q] > j->absmax[ch])
                            j->absmax[ch] = pm[q];
                    }
                } else if (dst) {
                    st = msh_sink_write(dst, out, p->out_n, e);
                }
            }
        }
        if (st != MSH_OK)
            return run_fail(r, st);
        piece_done(p);
        pthread_mutex_lock(&r->mu);
        sl->state = SLOT_FREE;
        r->consumed++;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        st = run_advance(r, piece_in, e);
        if (st != MSH_OK)
            return run_fail(r, st);
    }
    job_end(r, j);
    r->cj++;
    if (r->cj == r->n) { /* the phase's end */
        st = run_report(r, e);
        if (st != MSH_OK)
            return run_fail(r, st);
    }
    return MSH_OK;
}

msh_status msh_engine_scan(msh_engine *g, msh_job *jobs, size_t n, msh_error *e) {
    if (n == 0)
        return MSH_OK;
    msh_run *r;
    MSH_FORWARD(run_start(g, jobs, n, MSH_PHASE_SCAN, &r, e));
    msh_status st = MSH_OK;
    for (size_t k = 0; k < n && st == MSH_OK; k++)
        st = msh_run_take(r, k, NULL, e);
    msh_run_end(r, NULL);
    return st;
}

#define SAME_CHUNK ((size_t)1 << 20)

/* Progress of msh_engine_same, a scan phase of its own when it reads a step or more: report
 * before a read of `len` bytes that could take it more than a step past the last report. */
typedef struct same_progress {
    const msh_engine *g;
    int on;
    int64_t total, done, reported, sources;
} same_progress;

static msh_status same_step(same_progress *sp, size_t len, msh_error *e) {
    MSH_FORWARD(msh_cancel_check(sp->g ? sp->g->o.cancel : NULL, e));
    if (sp->on && sp->done - sp->reported + (int64_t)len > MSH_PROGRESS_STEP) {
        sp->reported = sp->done;
        MSH_FORWARD(engine_report(sp->g, MSH_PHASE_SCAN, sp->done, sp->total, 0, sp->sources, e));
    }
    sp->done += (int64_t)len;
    return MSH_OK;
}

msh_status msh_engine_same(msh_engine *g, const msh_src *ref, const msh_src *const *srcs, size_t n,
                           int64_t nbytes, uint8_t *same, msh_error *e) {
    for (size_t k = 0; k < n; k++)
        same[k] = 1;
    if (n == 0 || nbytes <= 0)
        return MSH_OK;
    uint8_t *x = malloc(SAME_CHUNK), *y = malloc(SAME_CHUNK);
    msh_status st = x && y ? MSH_OK : msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    /* the bytes of every source (a source found different early is not read to its end) */
    same_progress sp = {g, 0, 0, 0, 0, (int64_t)n + 1};
    if (!msh_mul_i64(nbytes, (int64_t)n + 1, &sp.total))
        sp.total = INT64_MAX;
    sp.on = g && sp.total >= MSH_PROGRESS_STEP;
    if (st == MSH_OK && sp.on)
        st = engine_report(g, MSH_PHASE_SCAN, 0, sp.total, 0, sp.sources, e);
    size_t alive = n;
    for (int64_t off = 0; st == MSH_OK && alive && off < nbytes;) {
        size_t len = nbytes - off < (int64_t)SAME_CHUNK ? (size_t)(nbytes - off) : SAME_CHUNK;
        st = same_step(&sp, len, e);
        if (st == MSH_OK)
            st = msh_src_read(ref, off, x, len, e);
        for (size_t k = 0; st == MSH_OK && k < n; k++) {
            if (!same[k])
                continue;
            st = same_step(&sp, len, e);
            if (st == MSH_OK)
                st = msh_src_read(srcs[k], off, y, len, e);
            if (st == MSH_OK && memcmp(x, y, len) != 0) {
                same[k] = 0;
                alive--;
            }
        }
        off += (int64_t)len;
    }
    if (st == MSH_OK && sp.on) /* the end */
        st = engine_report(g, MSH_PHASE_SCAN, sp.total, sp.total, sp.sources, sp.sources, e);
    free(x);
    free(y);
    return st;
}
