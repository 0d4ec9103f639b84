/*
 * Name resolution off the loop thread: getaddrinfo(3) blocks, so one worker
 * thread runs lookups from a queue and hands results back through ev_async.
 *
 * A request belongs to the worker while queued or running, then to the loop.
 * resolver_cancel() only clears `cb` (loop thread), so a session that went
 * away is never called back; the loop frees the request when it comes back.
 */
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/internal.h"

struct resolve_req {
    struct resolve_req *next;
    char host[256];
    char port[8];
    resolve_cb cb; /* loop thread only; NULL when cancelled */
    void *arg;
    int err;
    struct sockaddr_storage addr[RESOLVE_MAX_ADDRS];
    socklen_t addrlen[RESOLVE_MAX_ADDRS];
    int naddr;
};

struct resolver {
    struct ev_loop *loop;
    ev_async done_w;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct resolve_req *waiting, *done; /* guarded by mu */
    bool stop;
};

static void *resolver_main(void *arg)
{
    struct resolver *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->waiting && !r->stop)
            pthread_cond_wait(&r->cv, &r->mu);
        if (r->stop)
            break;
        struct resolve_req *q = r->waiting;
        r->waiting = q->next;
        pthread_mutex_unlock(&r->mu);
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
        q->err = getaddrinfo(q->host, q->port, &hints, &res);
        for (struct addrinfo *ai = res; q->err == 0 && ai && q->naddr < RESOLVE_MAX_ADDRS;
             ai = ai->ai_next) {
            if (ai->ai_addrlen > sizeof(q->addr[0]))
                continue;
            memcpy(&q->addr[q->naddr], ai->ai_addr, ai->ai_addrlen);
            q->addrlen[q->naddr++] = ai->ai_addrlen;
        }
        if (q->err == 0 && q->naddr == 0)
            q->err = EAI_FAIL;
        if (res)
            freeaddrinfo(res);
        pthread_mutex_lock(&r->mu);
        q->next = r->done;
        r->done = q;
        ev_async_send(r->loop, &r->done_w);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

static void resolver_done(struct ev_loop *loop, ev_async *w, int revents)
{
    struct resolver *r = w->data;
    pthread_mutex_lock(&r->mu);
    struct resolve_req *q = r->done;
    r->done = NULL;
    pthread_mutex_unlock(&r->mu);
    while (q) {
        struct resolve_req *next = q->next;
        if (q->cb)
            q->cb(q->arg, q->err, q->addr, q->addrlen, q->naddr);
        free(q);
        q = next;
    }
}

struct resolver *resolver_new(struct ev_loop *loop)
{
    struct resolver *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->loop = loop;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    ev_async_init(&r->done_w, resolver_done);
    r->done_w.data = r;
    ev_async_start(loop, &r->done_w);
    if (pthread_create(&r->thread, NULL, resolver_main, r) != 0) {
        ev_async_stop(loop, &r->done_w);
        free(r);
        return NULL;
    }
    return r;
}

void resolver_free(struct resolver *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    r->stop = true;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
    ev_async_stop(r->loop, &r->done_w);
    for (struct resolve_req *q = r->waiting, *n; q; q = n) {
        n = q->next;
        free(q);
    }
    for (struct resolve_req *q = r->done, *n; q; q = n) {
        n = q->next;
        free(q);
    }
    free(r);
}

struct resolve_req *resolver_lookup(struct resolver *r, const char *host, int port, resolve_cb cb,
                                    void *arg)
{
    struct resolve_req *q = calloc(1, sizeof(*q));
    if (!q || strlen(host) >= sizeof(q->host)) {
        free(q);
        return NULL;
    }
    strcpy(q->host, host);
    snprintf(q->port, sizeof(q->port), "%d", port);
    q->cb = cb;
    q->arg = arg;
    pthread_mutex_lock(&r->mu);
    q->next = r->waiting;
    r->waiting = q;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return q;
}

void resolver_cancel(struct resolve_req *req)
{
    req->cb = NULL;
}
