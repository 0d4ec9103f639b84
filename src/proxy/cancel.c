/*
 * Cancel forwarding: a CancelRequest (PG docs 55.2.8) arrives on a fresh
 * connection carrying the gateway's key; the session it names is asked to
 * cancel through another fresh connection carrying the upstream's key.
 * Fire and forget: the upstream closes the connection without an answer.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pgwire/pgwire.h"
#include "proxy/internal.h"
#include "util/log.h"

typedef struct cancel_conn {
    ev_io w;
    ev_timer t;
    struct ev_loop *loop;
    int fd;
    uint8_t pkt[16];
    size_t sent;
} cancel_conn_t;

static void cancel_done(cancel_conn_t *c)
{
    ev_io_stop(c->loop, &c->w);
    ev_timer_stop(c->loop, &c->t);
    close(c->fd);
    free(c);
}

static void cancel_io(struct ev_loop *loop, ev_io *w, int revents)
{
    cancel_conn_t *c = w->data;
    int err = 0;
    socklen_t l = sizeof(err);
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0 || err) {
        log_event(LOG_WARN, "cancel_failed", "reason=connect");
        cancel_done(c);
        return;
    }
    while (c->sent < sizeof(c->pkt)) {
        ssize_t n = write(c->fd, c->pkt + c->sent, sizeof(c->pkt) - c->sent);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            cancel_done(c);
            return;
        }
        c->sent += (size_t)n;
    }
    cancel_done(c);
}

static void cancel_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    log_event(LOG_WARN, "cancel_failed", "reason=timeout");
    cancel_done(t->data);
}

void cancel_forward(server_t *srv, const struct sockaddr *addr, socklen_t len, uint32_t pid,
                    uint32_t key)
{
    cancel_conn_t *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        free(c);
        return;
    }
    buf_t b;
    buf_init(&b, 64);
    pgw_write_cancel_request(&b, pid, key);
    if (b.failed || b.len != sizeof(c->pkt) ||
        (connect(c->fd, addr, len) < 0 && errno != EINPROGRESS)) {
        buf_free(&b);
        close(c->fd);
        free(c);
        return;
    }
    memcpy(c->pkt, b.data, sizeof(c->pkt));
    buf_free(&b);
    c->loop = srv->loop;
    ev_io_init(&c->w, cancel_io, c->fd, EV_WRITE);
    c->w.data = c;
    ev_timer_init(&c->t, cancel_timeout, 5.0, 0.);
    c->t.data = c;
    ev_io_start(c->loop, &c->w);
    ev_timer_start(c->loop, &c->t);
}
