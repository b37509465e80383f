/*
 * The test device: a backend used only by tests, standing in for the GPU where there is none.
 *
 * It honours the CUDA backend's contract exactly and no more: two slots, each an input and an
 * output buffer the driver may touch only before submit and after wait; submit only queues the
 * piece; a worker thread (the "device") later copies the input buffer in, computes the piece
 * with the CPU's element functions, and copies the result out; wait blocks until that slot's
 * piece is done. A driver that writes a slot's input after submit, reads its output before
 * wait, or submits to a slot it has not waited for therefore gets wrong bytes or an error, and
 * the tests that compare with the CPU fail, without a GPU.
 *
 * Switched on with the environment variable MSH_TEST_DEVICE (tests only): then
 * msh_cuda_device_count() reports one device and the "cuda" backend is this one (lines say
 * "on test"). Its value is a comma-separated list:
 *   on            emulate the device, nothing else
 *   delay         each piece waits 0 to 2 ms before the device takes it (late copies)
 *   reorder       when both slots are queued, the device does the newer piece first
 *   seed=N        the random delays' seed
 *   fail=submit:K the K-th submit of the process fails with a CUDA error (and so every later
 *   fail=wait:K   call, as a sticky CUDA error would): the driver must redo the model on the CPU
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "engine/msh_backend.h"

typedef struct tspec {
    int on, delay, reorder;
    unsigned seed;
    int fail_submit, fail_wait; /* 1-based call numbers, 0: never */
} tspec;

static tspec g_spec;
static pthread_once_t g_spec_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t g_calls_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_submits, g_waits, g_broken;

static void read_spec(void) {
    const char *v = getenv("MSH_TEST_DEVICE");
    memset(&g_spec, 0, sizeof g_spec);
    g_spec.seed = 1;
    if (!v || !*v)
        return;
    g_spec.on = 1;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", v);
    char *save = NULL; /* strtok_r: strtok's hidden state is shared with the host's threads */
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (strcmp(tok, "delay") == 0)
            g_spec.delay = 1;
        else if (strcmp(tok, "reorder") == 0)
            g_spec.reorder = 1;
        else if (strncmp(tok, "seed=", 5) == 0)
            g_spec.seed = (unsigned)strtoul(tok + 5, NULL, 10);
        else if (strncmp(tok, "fail=submit:", 12) == 0)
            g_spec.fail_submit = atoi(tok + 12);
        else if (strncmp(tok, "fail=wait:", 10) == 0)
            g_spec.fail_wait = atoi(tok + 10);
    }
}

int msh_test_device_on(void) {
    pthread_once(&g_spec_once, read_spec);
    return g_spec.on;
}

enum { T_IDLE = 0, T_QUEUED, T_DONE };

typedef struct tslot {
    uint8_t *in, *out;         /* host buffers (the driver's side) */
    uint8_t *dev_in, *dev_out; /* "device memory" */
    msh_piece work;
    int state;
    unsigned long seq;
} tslot;

typedef struct tdev {
    tslot s[2];
    size_t piece;
    const msh_backend *self; /* its FP16 bounds change when a pooled backend is reused */
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
    unsigned long seq;
    unsigned rnd;
} tdev;

static unsigned next_rand(tdev *d) {
    d->rnd = d->rnd * 1103515245u + 12345u;
    return d->rnd >> 8;
}

static void *device_main(void *arg) {
    tdev *d = arg;
    pthread_mutex_lock(&d->mu);
    for (;;) {
        int pick = -1;
        for (int i = 0; i < 2; i++)
            if (d->s[i].state == T_QUEUED &&
                (pick < 0 ||
                 (g_spec.reorder ? d->s[i].seq > d->s[pick].seq : d->s[i].seq < d->s[pick].seq)))
                pick = i;
        if (pick < 0) {
            if (d->stop)
                break;
            pthread_cond_wait(&d->cv, &d->mu);
            continue;
        }
        unsigned pause = g_spec.delay ? next_rand(d) % 2000u : 0;
        pthread_mutex_unlock(&d->mu);
        if (pause) {
            struct timespec ts = {0, (long)pause * 1000L};
            nanosleep(&ts, NULL);
        }
        tslot *s = &d->s[pick];
        /* the copy in happens now, late: a driver that reused the input buffer after submit
         * would be caught here */
        memcpy(s->dev_in, s->in, s->work.n);
        msh_piece_compute_cpu(&s->work, &d->self->f16, s->dev_in, s->dev_out);
        memcpy(s->out, s->dev_out, s->work.out_n);
        pthread_mutex_lock(&d->mu);
        s->state = T_DONE;
        pthread_cond_broadcast(&d->cv);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

static uint8_t *t_in(msh_backend *b, int slot) {
    return ((tdev *)b->impl)->s[slot].in;
}

static const uint8_t *t_out(msh_backend *b, int slot) {
    return ((tdev *)b->impl)->s[slot].out;
}

/* The injected failure, and every call after it: a sticky device error. */
static int failing(int is_submit) {
    pthread_mutex_lock(&g_calls_lock);
    int n = is_submit ? ++g_submits : ++g_waits;
    int at = is_submit ? g_spec.fail_submit : g_spec.fail_wait;
    if (at > 0 && n == at)
        g_broken = 1;
    int broken = g_broken;
    pthread_mutex_unlock(&g_calls_lock);
    return broken ? n : 0;
}

static msh_status t_submit(msh_backend *b, int slot, msh_piece *p, msh_error *e) {
    tdev *d = b->impl;
    int n = failing(1);
    if (n)
        return msh_fail(e, MSH_ERR_CUDA, "tensor '%s': test device: injected failure at submit %d",
                        p->job->name, n);
    pthread_mutex_lock(&d->mu);
    tslot *s = &d->s[slot];
    if (s->state != T_IDLE) {
        pthread_mutex_unlock(&d->mu);
        return msh_fail(e, MSH_ERR_FORMAT,
                        "test device: contract broken: slot %d submitted again before its wait",
                        slot);
    }
    s->work = *p;
    s->work.out_n = 0;
    s->work.clamped = 0;
    s->state = T_QUEUED;
    s->seq = ++d->seq;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    return MSH_OK;
}

static msh_status t_wait(msh_backend *b, int slot, msh_piece *p, msh_error *e) {
    tdev *d = b->impl;
    pthread_mutex_lock(&d->mu);
    tslot *s = &d->s[slot];
    if (s->state == T_IDLE) {
        pthread_mutex_unlock(&d->mu);
        return msh_fail(e, MSH_ERR_FORMAT, "test device: contract broken: wait on idle slot %d",
                        slot);
    }
    while (s->state != T_DONE)
        pthread_cond_wait(&d->cv, &d->mu);
    s->state = T_IDLE;
    p->out_n = s->work.out_n;
    p->clamped = s->work.clamped;
    p->range = s->work.range;
    p->row0 = s->work.row0;
    pthread_mutex_unlock(&d->mu);
    int n = failing(0);
    if (n)
        return msh_fail(e, MSH_ERR_CUDA, "tensor '%s': test device: injected failure at wait %d",
                        p->job ? p->job->name : "?", n);
    return MSH_OK;
}

static void t_close(msh_backend *b) {
    if (!b)
        return;
    tdev *d = b->impl;
    if (d) {
        pthread_mutex_lock(&d->mu);
        d->stop = 1;
        pthread_cond_broadcast(&d->cv);
        pthread_mutex_unlock(&d->mu);
        pthread_join(d->th, NULL);
        for (int i = 0; i < 2; i++) {
            free(d->s[i].in);
            free(d->s[i].out);
            free(d->s[i].dev_in);
            free(d->s[i].dev_out);
        }
        pthread_mutex_destroy(&d->mu);
        pthread_cond_destroy(&d->cv);
        free(d);
    }
    free(b);
}

msh_status msh_backend_test_open(size_t staging, const msh_f16_bounds *f16, msh_backend **out,
                                 msh_error *e) {
    *out = NULL;
    staging = (staging + MSH_HASH_CHUNK - 1) / MSH_HASH_CHUNK * MSH_HASH_CHUNK;
    if (staging < MSH_HASH_CHUNK)
        staging = MSH_HASH_CHUNK;
    msh_backend *b = calloc(1, sizeof *b);
    tdev *d = calloc(1, sizeof *d);
    if (!b || !d) {
        free(b);
        free(d);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    int ok = 1;
    for (int i = 0; i < 2 && ok; i++)
        ok = (d->s[i].in = malloc(staging)) && (d->s[i].out = malloc(staging)) &&
             (d->s[i].dev_in = malloc(staging)) && (d->s[i].dev_out = malloc(staging));
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv, NULL);
    d->piece = staging;
    d->self = b;
    d->rnd = g_spec.seed;
    b->impl = d;
    b->f16 = *f16;
    if (!ok || pthread_create(&d->th, NULL, device_main, d) != 0) {
        for (int i = 0; i < 2; i++) {
            free(d->s[i].in);
            free(d->s[i].out);
            free(d->s[i].dev_in);
            free(d->s[i].dev_out);
        }
        pthread_mutex_destroy(&d->mu);
        pthread_cond_destroy(&d->cv);
        free(d);
        free(b);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory for the test device");
    }
    b->name = "test";
    b->slots = 2;
    b->producers = 1;
    b->piece_bytes = staging;
    b->f16 = *f16;
    b->in_buf = t_in;
    b->out_buf = t_out;
    b->submit = t_submit;
    b->wait = t_wait;
    b->close = t_close;
    *out = b;
    return MSH_OK;
}
