/*
 * Worker loops: the hub of what they share, their threads and mailboxes, the
 * shared cancel map, and console questions to every loop (workers.h).
 */
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "approval/approval.h"
#include "proxy/internal.h"
#include "proxy/workers.h"
#include "util/log.h"

/* Messages waiting in one mailbox at most: cancels and console questions. */
#define BOX_MAX 4096
/* One worker's answer to a console question (SHOW SESSIONS: at most ADMIN_MAX_ROWS rows
 * are shown in all); allocated as it grows. */
#define PART_MAX (4u << 20)

typedef struct msg {
    struct msg *next;
    void (*fn)(server_t *on, struct msg *m);
    /* payload, by kind */
    uint32_t pid, key;   /* cancel */
    char from[64];       /* cancel: the requester's address */
    appr_result_t res;   /* console decision */
    uint64_t tag;        /* gather */
    int idx;             /* gather: the answering worker */
    server_t *reply_to;  /* gather question */
    gather_make_fn make; /* gather question */
    buf_t part;          /* gather answer */
} msg_t;

typedef struct worker_box {
    pthread_mutex_t mu;
    msg_t *head, *tail;
    size_t n;
    atomic_uint ctl;
    void (*control)(server_t *srv, unsigned bits);
} worker_box_t;

/* A console question waiting for its answers (on the asking loop). */
typedef struct gather {
    struct gather *next;
    uint64_t tag;
    int n, got;
    gather_done_fn done;
    buf_t *parts;
} gather_t;

struct hub {
    int n;
    server_t **w; /* w[0]: main */
    pthread_t *threads;
    bool *started;
    atomic_int running;
    void (*run_end)(server_t *srv);
    pthread_mutex_t rt_mu;
    runtime_t *rt;
    pthread_mutex_t cancel_mu;
    session_t **cancel_map; /* by my_pid, CANCEL_BUCKETS chains */
};

/* ---- the hub ----------------------------------------------------------------------- */

hub_t *hub_new(int n, runtime_t *rt)
{
    hub_t *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->n = n;
    h->w = calloc((size_t)n, sizeof(*h->w));
    h->threads = calloc((size_t)n, sizeof(*h->threads));
    h->started = calloc((size_t)n, sizeof(*h->started));
    h->cancel_map = calloc(CANCEL_BUCKETS, sizeof(session_t *));
    if (!h->w || !h->threads || !h->started || !h->cancel_map) {
        free(h->w);
        free(h->threads);
        free(h->started);
        free(h->cancel_map);
        free(h);
        return NULL;
    }
    pthread_mutex_init(&h->rt_mu, NULL);
    pthread_mutex_init(&h->cancel_mu, NULL);
    h->rt = runtime_retain(rt);
    return h;
}

int hub_workers(const hub_t *h)
{
    return h->n;
}

server_t *hub_worker(const hub_t *h, int i)
{
    return h->w[i];
}

runtime_t *hub_runtime(hub_t *h)
{
    pthread_mutex_lock(&h->rt_mu);
    runtime_t *rt = runtime_retain(h->rt);
    pthread_mutex_unlock(&h->rt_mu);
    return rt;
}

void hub_runtime_set(hub_t *h, runtime_t *rt)
{
    runtime_retain(rt);
    pthread_mutex_lock(&h->rt_mu);
    runtime_t *old = h->rt;
    h->rt = rt;
    pthread_mutex_unlock(&h->rt_mu);
    runtime_release(old);
}

void hub_wake_audit(hub_t *h)
{
    for (int i = 0; i < h->n; i++)
        if (h->w[i])
            ev_async_send(h->w[i]->loop, &h->w[i]->audit_w);
}

void hub_wake_approvals(hub_t *h)
{
    for (int i = 0; i < h->n; i++)
        if (h->w[i])
            ev_async_send(h->w[i]->loop, &h->w[i]->approvals_w);
}

void hub_wake_keys(hub_t *h)
{
    for (int i = 0; i < h->n; i++)
        if (h->w[i])
            ev_async_send(h->w[i]->loop, &h->w[i]->keys_w);
}

void hub_free(hub_t *h)
{
    if (!h)
        return;
    runtime_release(h->rt);
    pthread_mutex_destroy(&h->rt_mu);
    pthread_mutex_destroy(&h->cancel_mu);
    free(h->cancel_map);
    free(h->w);
    free(h->threads);
    free(h->started);
    free(h);
}

/* ---- the cancel map (server.c's functions, shared by every worker) -------------------- */

static session_t *cancel_find_locked(hub_t *h, uint32_t pid, uint32_t key)
{
    for (session_t *s = h->cancel_map[pid % CANCEL_BUCKETS]; s; s = s->cancel_next)
        if (s->my_pid == pid && CRYPTO_memcmp(&s->my_key, &key, sizeof(key)) == 0)
            return s;
    return NULL;
}

void server_cancel_add(server_t *srv, session_t *s)
{
    hub_t *h = srv->hub;
    pthread_mutex_lock(&h->cancel_mu);
    uint32_t r[2];
    do {
        if (RAND_bytes((unsigned char *)r, sizeof(r)) != 1)
            r[0] = (uint32_t)random();
        s->my_pid = (r[0] & 0x7fffffff) | 1;
        s->my_key = r[1];
    } while (cancel_find_locked(h, s->my_pid, s->my_key)); /* unique: unambiguous lookups */
    session_t **b = &h->cancel_map[s->my_pid % CANCEL_BUCKETS];
    s->cancel_next = *b;
    *b = s;
    s->in_cancel_map = true;
    pthread_mutex_unlock(&h->cancel_mu);
}

void server_cancel_remove(server_t *srv, session_t *s)
{
    hub_t *h = srv->hub;
    pthread_mutex_lock(&h->cancel_mu);
    for (session_t **p = &h->cancel_map[s->my_pid % CANCEL_BUCKETS]; *p; p = &(*p)->cancel_next)
        if (*p == s) {
            *p = s->cancel_next;
            break;
        }
    s->in_cancel_map = false;
    pthread_mutex_unlock(&h->cancel_mu);
}

/* Only this worker's sessions: another worker's session is not ours to touch. */
session_t *server_cancel_find(server_t *srv, uint32_t pid, uint32_t key)
{
    pthread_mutex_lock(&srv->hub->cancel_mu);
    session_t *s = cancel_find_locked(srv->hub, pid, key);
    pthread_mutex_unlock(&srv->hub->cancel_mu);
    return s && s->srv == srv ? s : NULL;
}

server_t *server_cancel_owner(server_t *srv, uint32_t pid, uint32_t key)
{
    pthread_mutex_lock(&srv->hub->cancel_mu);
    session_t *s = cancel_find_locked(srv->hub, pid, key);
    server_t *owner = s ? s->srv : NULL; /* set before the session entered the map */
    pthread_mutex_unlock(&srv->hub->cancel_mu);
    return owner;
}

/* ---- mailboxes ------------------------------------------------------------------------ */

static void msg_free(msg_t *m)
{
    buf_free(&m->part);
    free(m);
}

static void box_cb(struct ev_loop *loop, ev_async *w, int revents)
{
    server_t *srv = w->data;
    worker_box_t *b = srv->box;
    unsigned bits = atomic_exchange(&b->ctl, 0);
    if (b->control)
        b->control(srv, bits); /* also with 0: main learns that a worker ended */
    pthread_mutex_lock(&b->mu);
    msg_t *m = b->head;
    b->head = b->tail = NULL;
    b->n = 0;
    pthread_mutex_unlock(&b->mu);
    while (m) {
        msg_t *next = m->next;
        m->fn(srv, m);
        msg_free(m);
        m = next;
    }
}

int worker_box_init(server_t *srv, void (*control)(server_t *srv, unsigned bits))
{
    worker_box_t *b = calloc(1, sizeof(*b));
    if (!b)
        return -1;
    pthread_mutex_init(&b->mu, NULL);
    b->control = control;
    srv->box = b;
    ev_async_init(&srv->box_w, box_cb);
    srv->box_w.data = srv;
    ev_async_start(srv->loop, &srv->box_w);
    return 0;
}

void worker_box_fini(server_t *srv)
{
    worker_box_t *b = srv->box;
    if (!b)
        return;
    ev_async_stop(srv->loop, &srv->box_w);
    for (msg_t *m = b->head, *next; m; m = next) {
        next = m->next;
        msg_free(m);
    }
    while (srv->gathers) {
        gather_t *g = srv->gathers;
        srv->gathers = g->next;
        for (int i = 0; i < g->n; i++)
            buf_free(&g->parts[i]);
        free(g->parts);
        free(g);
    }
    pthread_mutex_destroy(&b->mu);
    free(b);
    srv->box = NULL;
}

static msg_t *msg_new(void (*fn)(server_t *, msg_t *))
{
    msg_t *m = calloc(1, sizeof(*m));
    if (m) {
        m->fn = fn;
        buf_init(&m->part, PART_MAX);
    }
    return m;
}

/* Takes m; false (m freed) when the box is full. */
static bool post(server_t *to, msg_t *m)
{
    worker_box_t *b = to->box;
    pthread_mutex_lock(&b->mu);
    bool ok = b->n < BOX_MAX;
    if (ok) {
        if (b->tail)
            b->tail->next = m;
        else
            b->head = m;
        b->tail = m;
        b->n++;
    }
    pthread_mutex_unlock(&b->mu);
    if (!ok) {
        msg_free(m);
        log_event(LOG_WARN, "worker_mailbox_full", "worker=%d", to->worker_id);
        return false;
    }
    ev_async_send(to->loop, &to->box_w);
    return true;
}

void workers_signal(hub_t *h, unsigned bits)
{
    for (int i = 1; h && i < h->n; i++) {
        server_t *w = h->w[i];
        if (!w || !w->box)
            continue;
        atomic_fetch_or(&w->box->ctl, bits);
        ev_async_send(w->loop, &w->box_w);
    }
}

/* ---- threads -------------------------------------------------------------------------- */

static void *worker_main(void *arg)
{
    server_t *srv = arg;
    hub_t *h = srv->hub;
    ev_run(srv->loop, 0);
    h->run_end(srv);
    rec_thread_end();
    atomic_fetch_sub(&h->running, 1);
    /* main may be waiting for the last worker to end its drain */
    ev_async_send(h->w[0]->loop, &h->w[0]->box_w);
    return NULL;
}

int workers_create(hub_t *h, server_t *main, int (*init)(server_t *srv))
{
    h->w[0] = main;
    for (int i = 1; i < h->n; i++) {
        server_t *w = calloc(1, sizeof(*w));
        if (!w) {
            log_event(LOG_ERROR, "workers_failed", "error=\"out of memory\"");
            return -1;
        }
        w->hub = h;
        w->worker_id = i;
        w->config_path = main->config_path;
        w->listen_fd = -1;
        w->rt = hub_runtime(h);
        w->loop = ev_loop_new(EVFLAG_AUTO);
        h->w[i] = w;
        if (!w->loop || init(w) < 0) {
            log_event(LOG_ERROR, "workers_failed", "worker=%d error=\"cannot set up its loop\"", i);
            return -1;
        }
    }
    return 0;
}

int workers_start(hub_t *h, void (*run_end)(server_t *srv))
{
    h->run_end = run_end;
    for (int i = 1; i < h->n; i++) {
        server_t *w = h->w[i];
        /* shared services, opened by main before the threads exist */
        w->audit = h->w[0]->audit;
        w->keystore = h->w[0]->keystore;
        w->approvals = h->w[0]->approvals;
        w->webhook = h->w[0]->webhook;
        w->catalogs = h->w[0]->catalogs;
        w->listener_loopback = h->w[0]->listener_loopback;
        atomic_fetch_add(&h->running, 1);
        int rc = pthread_create(&h->threads[i], NULL, worker_main, w);
        if (rc != 0) {
            atomic_fetch_sub(&h->running, 1);
            log_event(LOG_ERROR, "workers_failed", "worker=%d error=\"%s\"", i, strerror(rc));
            return -1;
        }
        h->started[i] = true;
    }
    return 0;
}

int workers_running(hub_t *h)
{
    return atomic_load(&h->running);
}

void workers_join(hub_t *h)
{
    for (int i = 1; h && i < h->n; i++)
        if (h->started[i]) {
            pthread_join(h->threads[i], NULL);
            h->started[i] = false;
        }
}

void workers_destroy(hub_t *h, void (*fini)(server_t *srv))
{
    if (!h)
        return;
    workers_join(h);
    for (int i = 1; i < h->n; i++) {
        server_t *w = h->w[i];
        if (!w)
            continue;
        fini(w);
        if (w->loop)
            ev_loop_destroy(w->loop);
        free(w);
        h->w[i] = NULL;
    }
}

/* ---- tags, cancels and console decisions ------------------------------------------------- */

uint64_t worker_tag(server_t *srv)
{
    return ++srv->admin_tags * (uint64_t)srv->hub->n + (uint64_t)srv->worker_id;
}

int worker_of_tag(const server_t *srv, uint64_t tag)
{
    return (int)(tag % (uint64_t)srv->hub->n);
}

static void cancel_msg(server_t *on, msg_t *m)
{
    session_cancel(on, m->pid, m->key, m->from);
}

void worker_forward_cancel(server_t *owner, uint32_t pid, uint32_t key, const char *from)
{
    msg_t *m = msg_new(cancel_msg);
    if (!m)
        return;
    m->pid = pid;
    m->key = key;
    snprintf(m->from, sizeof(m->from), "%s", from);
    (void)post(owner, m);
}

static void decided_msg(server_t *on, msg_t *m)
{
    admin_decided(on, &m->res);
}

void worker_forward_decided(server_t *owner, const appr_result_t *r)
{
    msg_t *m = msg_new(decided_msg);
    if (!m)
        return;
    m->res = *r;
    (void)post(owner, m);
}

/* ---- console questions to every worker ------------------------------------------------- */

static void gather_finish(server_t *srv, gather_t *g)
{
    for (gather_t **p = &srv->gathers; *p; p = &(*p)->next)
        if (*p == g) {
            *p = g->next;
            break;
        }
    session_t *s = srv->sessions;
    while (s && !(s->admin && s->admin_wait == g->tag && s->state == ST_RELAY))
        s = s->next;
    if (s) {
        s->admin_wait = 0;
        g->done(s, g->parts, g->n, true);
    }
    for (int i = 0; i < g->n; i++)
        buf_free(&g->parts[i]);
    free(g->parts);
    free(g);
}

static void answer_msg(server_t *on, msg_t *m)
{
    gather_t *g = on->gathers;
    while (g && g->tag != m->tag)
        g = g->next;
    if (!g)
        return;
    buf_t tmp = g->parts[m->idx];
    g->parts[m->idx] = m->part;
    m->part = tmp; /* freed with the message */
    if (++g->got == g->n)
        gather_finish(on, g);
}

static void question_msg(server_t *on, msg_t *m)
{
    msg_t *a = msg_new(answer_msg);
    if (!a)
        return;
    a->tag = m->tag;
    a->idx = on->worker_id;
    m->make(on, &a->part);
    (void)post(m->reply_to, a);
}

int workers_gather(session_t *s, gather_make_fn make, gather_done_fn done)
{
    server_t *srv = s->srv;
    hub_t *h = srv->hub;
    gather_t *g = calloc(1, sizeof(*g));
    if (!g || !(g->parts = calloc((size_t)h->n, sizeof(buf_t)))) {
        free(g);
        return -1;
    }
    g->n = h->n;
    g->done = done;
    for (int i = 0; i < h->n; i++)
        buf_init(&g->parts[i], PART_MAX);
    make(srv, &g->parts[srv->worker_id]);
    g->got = 1;
    if (h->n == 1) {
        done(s, g->parts, 1, false);
        buf_free(&g->parts[0]);
        free(g->parts);
        free(g);
        return 0;
    }
    g->tag = worker_tag(srv);
    g->next = srv->gathers;
    srv->gathers = g;
    s->admin_wait = g->tag;
    for (int i = 0; i < h->n; i++) {
        if (i == srv->worker_id)
            continue;
        msg_t *m = msg_new(question_msg);
        if (m) {
            m->tag = g->tag;
            m->reply_to = srv;
            m->make = make;
        }
        if (!m || !post(h->w[i], m)) {
            /* that worker cannot answer: give up on the question */
            s->admin_wait = 0;
            g->tag = 0; /* late answers find nothing */
            srv->gathers = g->next;
            for (int j = 0; j < g->n; j++)
                buf_free(&g->parts[j]);
            free(g->parts);
            free(g);
            return -1;
        }
    }
    return 0;
}

/* ---- sums ----------------------------------------------------------------------------- */

int64_t workers_sessions(hub_t *h)
{
    int64_t n = 0;
    for (int i = 0; i < h->n; i++)
        if (h->w[i])
            n += atomic_load_explicit(&h->w[i]->nsessions, memory_order_relaxed);
    return n;
}

void workers_cache_stats(hub_t *h, policy_cache_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    for (int i = 0; i < h->n; i++) {
        if (!h->w[i] || !h->w[i]->policy_cache)
            continue;
        policy_cache_stats_t one;
        policy_cache_stats(h->w[i]->policy_cache, &one);
        out->hits += one.hits;
        out->misses += one.misses;
        out->evictions += one.evictions;
        out->entries += one.entries;
        out->bytes += one.bytes;
    }
}

size_t workers_metrics(hub_t *h, struct metrics **out, size_t max)
{
    size_t k = 0;
    for (int i = 0; i < h->n && k < max; i++)
        if (h->w[i] && h->w[i]->metrics)
            out[k++] = h->w[i]->metrics;
    return k;
}
