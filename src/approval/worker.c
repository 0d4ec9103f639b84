/*
 * The gateway's approval writer: one thread that performs every approval
 * write transaction of the gateway (new requests, timeouts, withdrawals,
 * uses of one-use grants), so that the event loop never waits for LMDB's
 * writer lock or an fsync. Most writes are fire-and-forget: the loop learns
 * of decisions by reading (appr_get), not from here (the two exceptions
 * are below).
 *
 * Ids are handed out in memory (the gateway is the only process that
 * creates requests: the audit store's writer.lock), continuing after the
 * highest stored id. A use of a one-use grant counts at once (appr_worker_used)
 * so that two sessions cannot both use it before the write lands.
 *
 * Two kinds of write report back (appr_worker_results, under the caller's
 * tag): a console decision, and a claim of a one-use grant (the shared store:
 * another replica may race for the same grant, so the statement waits for
 * the database's answer; src/proxy/held.c).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "approval/approval.h"
#include "util/log.h"

#define QUEUE_MAX 4096
#define PENDING_SLOTS 1024
#define PRUNE_EVERY_US (3600LL * 1000000)
#define PRUNE_BATCH 10000

typedef enum { OP_CREATE, OP_CLOSE, OP_CONSUME, OP_DECIDE, OP_CLAIM } op_kind_t;

typedef struct op {
    struct op *next;
    op_kind_t kind;
    uint64_t id;
    appr_state_t to;
    appr_req_t req; /* OP_DECIDE: by, by_role, os_user, via, reason of the decision */
    bool approve;
    int64_t grant_ms;
    appr_result_t res;
} op_t;

struct appr_worker {
    appr_store_t *st;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    op_t *head, *tail;
    size_t n;
    op_t *done; /* OP_DECIDE and OP_CLAIM results, newest first */
    void (*notify)(void *arg);
    void *notify_arg;
    bool stopping;
    _Atomic uint64_t next_id;
    int64_t retention_us; /* 0 = keep everything */
    int64_t next_prune_us;
    /* ids of one-use grants whose use is queued (OP_CONSUME not yet written) */
    uint64_t used[QUEUE_MAX];
    size_t nused;
    /* reject-mode requests by identity+fingerprint hash (appr_worker_pending_for) */
    struct {
        uint64_t key, id;
    } pending[PENDING_SLOTS];
};

static int64_t wall_us(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

static void run_op(appr_worker_t *w, op_t *op)
{
    char err[200] = "";
    appr_rc_t rc = APPR_OK;
    switch (op->kind) {
    case OP_CREATE:
        rc = appr_create(w->st, &op->req, err, sizeof(err));
        break;
    case OP_CLOSE:
        rc = appr_close_pending(w->st, op->id, op->to, wall_us());
        if (rc == APPR_NOT_PENDING)
            rc = APPR_OK; /* decided meanwhile: the decision stands */
        break;
    case OP_CONSUME:
        rc = appr_consume(w->st, op->id);
        break;
    case OP_DECIDE: {
        appr_decision_t d = {.approve = op->approve,
                             .by = op->req.by,
                             .by_role = op->req.by_role,
                             .os_user = op->req.os_user,
                             .via = op->req.via,
                             .reason = op->req.reason,
                             .grant_ms = op->grant_ms,
                             .now_us = wall_us()};
        appr_req_t out;
        memset(&out, 0, sizeof(out));
        op->res.id = op->id;
        op->res.rc = appr_decide(w->st, op->id, &d, &out, op->res.err, sizeof(op->res.err));
        op->res.state = out.state;
        op->res.grant_until_us = out.grant_until_us;
        appr_req_free(&out);
        return; /* the outcome goes back to the console */
    }
    case OP_CLAIM:
        op->res.id = op->id;
        op->res.claim = true;
        op->res.rc = appr_claim(w->st, op->id, op->res.err, sizeof(op->res.err));
        return; /* the outcome goes back to the waiting statement */
    }
    if (rc != APPR_OK)
        log_event(LOG_ERROR, "approval_write_failed", "id=%llu op=%d rc=%d error=\"%s\"",
                  (unsigned long long)(op->kind == OP_CREATE ? op->req.id : op->id), op->kind, rc,
                  err);
}

static void forget_use(appr_worker_t *w, uint64_t id)
{
    for (size_t i = 0; i < w->nused; i++)
        if (w->used[i] == id) {
            w->used[i] = w->used[--w->nused];
            return;
        }
}

/* Called with mu held; drops it while pruning. */
static void maybe_prune(appr_worker_t *w)
{
    int64_t now = wall_us();
    if (!w->retention_us || now < w->next_prune_us)
        return;
    int64_t before = now - w->retention_us;
    pthread_mutex_unlock(&w->mu);
    size_t n = 0;
    appr_rc_t rc = appr_prune(w->st, before, now, PRUNE_BATCH, &n);
    if (n || rc != APPR_OK)
        log_event(rc == APPR_OK ? LOG_INFO : LOG_ERROR, "approvals_pruned", "requests=%zu ok=%s", n,
                  rc == APPR_OK ? "yes" : "no");
    pthread_mutex_lock(&w->mu);
    /* a full batch: more to do soon */
    w->next_prune_us = now + (n >= PRUNE_BATCH ? 1000000 : PRUNE_EVERY_US);
}

/* Wait for work, or until the next prune is due. */
static void wait_work(appr_worker_t *w)
{
    if (!w->retention_us) {
        pthread_cond_wait(&w->cv, &w->mu);
        return;
    }
    int64_t at = w->next_prune_us;
    struct timespec t = {.tv_sec = at / 1000000, .tv_nsec = (at % 1000000) * 1000};
    pthread_cond_timedwait(&w->cv, &w->mu, &t);
}

static void *worker_main(void *arg)
{
    appr_worker_t *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        maybe_prune(w);
        while (!w->head && !w->stopping) {
            wait_work(w);
            maybe_prune(w);
        }
        if (!w->head)
            break;
        op_t *op = w->head;
        w->head = op->next;
        if (!w->head)
            w->tail = NULL;
        w->n--;
        pthread_mutex_unlock(&w->mu);
        run_op(w, op);
        pthread_mutex_lock(&w->mu);
        if (op->kind == OP_CONSUME || op->kind == OP_CLAIM)
            forget_use(w, op->id);
        appr_req_free(&op->req);
        if (op->kind == OP_DECIDE || op->kind == OP_CLAIM) {
            op->next = w->done;
            w->done = op;
            if (w->notify)
                w->notify(w->notify_arg);
        } else {
            free(op);
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

appr_worker_t *appr_worker_new(appr_store_t *st, void (*notify)(void *arg), void *arg)
{
    appr_worker_t *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->st = st;
    w->notify = notify;
    w->notify_arg = arg;
    atomic_store(&w->next_id, appr_last_id(st) + 1);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
        free(w);
        return NULL;
    }
    return w;
}

void appr_worker_free(appr_worker_t *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    w->stopping = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    for (op_t *op = w->done, *n; op; op = n) {
        n = op->next;
        free(op);
    }
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}

appr_store_t *appr_worker_store(appr_worker_t *w)
{
    return w->st;
}

uint64_t appr_worker_next_id(appr_worker_t *w)
{
    if (appr_shared(w->st))
        return appr_next_id(w->st); /* blocks of ids from the shared store; 0: none */
    return atomic_fetch_add(&w->next_id, 1);
}

static int enqueue(appr_worker_t *w, op_t *op)
{
    pthread_mutex_lock(&w->mu);
    bool use = op->kind == OP_CONSUME || op->kind == OP_CLAIM;
    if (w->n >= QUEUE_MAX || w->stopping || (use && w->nused >= QUEUE_MAX)) {
        pthread_mutex_unlock(&w->mu);
        return -1;
    }
    if (use)
        w->used[w->nused++] = op->id;
    if (w->tail)
        w->tail->next = op;
    else
        w->head = op;
    w->tail = op;
    w->n++;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return 0;
}

int appr_worker_create(appr_worker_t *w, appr_req_t *r)
{
    op_t *op = calloc(1, sizeof(*op));
    if (!op) {
        appr_req_free(r);
        return -1;
    }
    op->kind = OP_CREATE;
    op->req = *r;
    memset(r, 0, sizeof(*r));
    if (enqueue(w, op) < 0) {
        appr_req_free(&op->req);
        free(op);
        return -1;
    }
    return 0;
}

static int simple(appr_worker_t *w, op_kind_t kind, uint64_t id, appr_state_t to)
{
    op_t *op = calloc(1, sizeof(*op));
    if (!op)
        return -1;
    op->kind = kind;
    op->id = id;
    op->to = to;
    if (enqueue(w, op) < 0) {
        free(op);
        return -1;
    }
    return 0;
}

int appr_worker_close_pending(appr_worker_t *w, uint64_t id, appr_state_t to)
{
    return simple(w, OP_CLOSE, id, to);
}

int appr_worker_consume(appr_worker_t *w, uint64_t id)
{
    return simple(w, OP_CONSUME, id, 0);
}

int appr_worker_claim(appr_worker_t *w, uint64_t id, uint64_t tag)
{
    op_t *op = calloc(1, sizeof(*op));
    if (!op)
        return -1;
    op->kind = OP_CLAIM;
    op->id = id;
    op->res.tag = tag;
    if (enqueue(w, op) < 0) {
        free(op);
        return -1;
    }
    return 0;
}

bool appr_worker_used(void *arg, uint64_t id)
{
    appr_worker_t *w = arg;
    bool found = false;
    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < w->nused && !found; i++)
        found = w->used[i] == id;
    pthread_mutex_unlock(&w->mu);
    return found;
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

int appr_worker_decide(appr_worker_t *w, uint64_t id, const appr_decision_t *d, uint64_t tag)
{
    op_t *op = calloc(1, sizeof(*op));
    if (!op)
        return -1;
    op->kind = OP_DECIDE;
    op->id = id;
    op->approve = d->approve;
    op->grant_ms = d->grant_ms;
    op->res.tag = tag;
    op->req.by = dup_or_null(d->by);
    op->req.by_role = dup_or_null(d->by_role);
    op->req.os_user = dup_or_null(d->os_user);
    op->req.via = dup_or_null(d->via);
    op->req.reason = dup_or_null(d->reason);
    if (enqueue(w, op) < 0) {
        appr_req_free(&op->req);
        free(op);
        return -1;
    }
    return 0;
}

void appr_worker_results(appr_worker_t *w, void (*fn)(void *arg, const appr_result_t *r), void *arg)
{
    pthread_mutex_lock(&w->mu);
    op_t *list = w->done;
    w->done = NULL;
    pthread_mutex_unlock(&w->mu);
    /* oldest first */
    op_t *rev = NULL;
    for (op_t *op = list, *n; op; op = n) {
        n = op->next;
        op->next = rev;
        rev = op;
    }
    for (op_t *op = rev, *n; op; op = n) {
        n = op->next;
        fn(arg, &op->res);
        free(op);
    }
}

uint64_t appr_worker_pending_for(appr_worker_t *w, uint64_t key)
{
    pthread_mutex_lock(&w->mu);
    size_t i = key % PENDING_SLOTS;
    uint64_t id = w->pending[i].key == key ? w->pending[i].id : 0;
    pthread_mutex_unlock(&w->mu);
    return id;
}

void appr_worker_remember_pending(appr_worker_t *w, uint64_t key, uint64_t id)
{
    pthread_mutex_lock(&w->mu);
    size_t i = key % PENDING_SLOTS;
    w->pending[i].key = key;
    w->pending[i].id = id;
    pthread_mutex_unlock(&w->mu);
}

void appr_worker_set_retention(appr_worker_t *w, int64_t max_age_ms)
{
    pthread_mutex_lock(&w->mu);
    w->retention_us = max_age_ms > 0 ? max_age_ms * 1000 : 0;
    w->next_prune_us = wall_us();
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}
