/*
 * The metrics listener: a minimal HTTP/1.1 responder on the gateway's loop.
 *
 * Each connection is read until the end of its header block (at most
 * HTTP_MAX_REQUEST bytes, within HTTP_TIMEOUT seconds), answered once, and
 * closed (Connection: close): no keep-alive, no request bodies, no chunked
 * encoding. Only GET and HEAD of /metrics, /healthz and /livez; anything else
 * is 400, 404 or 405. Sockets are non-blocking and every wait is a watcher, so
 * a slow or hostile scraper costs one small buffer and never holds the loop;
 * at most HTTP_MAX_CONNS are open at a time (more are closed on accept).
 *
 * After the response the write side is shut and what the client still sends
 * is read and dropped until it closes (at most HTTP_DRAIN bytes, for
 * HTTP_LINGER seconds): closing with unread input would send a reset that can
 * destroy the response before the client reads it (an error answered early).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "metrics/metrics.h"
#include "util/log.h"

#define HTTP_MAX_REQUEST 8192
#define HTTP_TIMEOUT 5.0
#define HTTP_MAX_CONNS 64
#define HTTP_MAX_BODY (64u << 20)
#define HTTP_DRAIN (256u << 10)
#define HTTP_LINGER 2.0

typedef struct conn {
    struct metrics_http *h;
    struct conn *prev, *next;
    int fd;
    ev_io rw, ww;
    ev_timer timer;
    char req[HTTP_MAX_REQUEST];
    size_t reqlen;
    bool draining; /* response sent; reading until the client closes */
    size_t drained;
    buf_t out;
} conn_t;

struct metrics_http {
    struct ev_loop *loop;
    int fd;
    ev_io accept_w;
    ev_timer accept_pause; /* out of descriptors: stop accepting for a moment */
    metrics_routes_t routes;
    conn_t *conns;
    int nconns;
};

/* ---- request parsing (pure) ---- */

/* The request line "METHOD SP /target SP HTTP/1.x" (linelen without CR LF). */
static mx_req_status_t parse_line(const char *buf, size_t linelen, char *path, size_t pathsz,
                                  bool *head)
{
    const char *sp1 = memchr(buf, ' ', linelen);
    if (!sp1)
        return MX_REQ_BAD;
    const char *target = sp1 + 1;
    const char *sp2 = memchr(target, ' ', linelen - (size_t)(target - buf));
    if (!sp2 || sp2 == target || *target != '/')
        return MX_REQ_BAD;
    const char *version = sp2 + 1;
    size_t vlen = linelen - (size_t)(version - buf);
    if (vlen != 8 || memcmp(version, "HTTP/1.", 7) || (version[7] != '0' && version[7] != '1'))
        return MX_REQ_BAD;
    size_t mlen = (size_t)(sp1 - buf);
    bool is_get = mlen == 3 && !memcmp(buf, "GET", 3);
    bool is_head = mlen == 4 && !memcmp(buf, "HEAD", 4);
    if (!is_get && !is_head)
        return MX_REQ_METHOD;
    size_t plen = (size_t)(sp2 - target);
    const char *q = memchr(target, '?', plen);
    if (q)
        plen = (size_t)(q - target);
    if (plen >= pathsz)
        return MX_REQ_BAD;
    memcpy(path, target, plen);
    path[plen] = '\0';
    *head = is_head;
    return MX_REQ_OK;
}

mx_req_status_t metrics_http_parse(const char *buf, size_t len, char *path, size_t pathsz,
                                   bool *head)
{
    const char *eol = memchr(buf, '\n', len);
    if (!eol)
        return MX_REQ_INCOMPLETE;
    size_t linelen = (size_t)(eol - buf);
    if (linelen && buf[linelen - 1] == '\r')
        linelen--;
    if (memchr(buf, '\0', linelen))
        return MX_REQ_BAD;
    /* A wrong request line need not wait for the headers. */
    mx_req_status_t st = parse_line(buf, linelen, path, pathsz, head);
    if (st != MX_REQ_OK)
        return st;
    /* The header block ends with an empty line (CRLF CRLF, or LF LF from lax clients). */
    for (size_t i = (size_t)(eol - buf); i < len; i++) {
        if (buf[i] == '\0')
            return MX_REQ_BAD;
        if (buf[i] != '\n')
            continue;
        size_t j = i + 1;
        if (j < len && buf[j] == '\r')
            j++;
        if (j < len && buf[j] == '\n')
            return MX_REQ_OK;
    }
    return MX_REQ_INCOMPLETE;
}

/* ---- connections ---- */

static void conn_free(conn_t *c)
{
    metrics_http_t *h = c->h;
    ev_io_stop(h->loop, &c->rw);
    ev_io_stop(h->loop, &c->ww);
    ev_timer_stop(h->loop, &c->timer);
    close(c->fd);
    buf_free(&c->out);
    if (c->prev)
        c->prev->next = c->next;
    else
        h->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    h->nconns--;
    free(c);
}

static void conn_write(conn_t *c)
{
    while (buf_unread(&c->out) > 0) {
        ssize_t n = send(c->fd, buf_head(&c->out), buf_unread(&c->out), MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            ev_io_start(c->h->loop, &c->ww);
            return;
        }
        if (n <= 0)
            break;
        buf_consume(&c->out, (size_t)n);
    }
    if (buf_unread(&c->out) > 0 || shutdown(c->fd, SHUT_WR) < 0) {
        conn_free(c);
        return;
    }
    c->draining = true;
    ev_timer_stop(c->h->loop, &c->timer);
    ev_timer_set(&c->timer, HTTP_LINGER, 0.);
    ev_timer_start(c->h->loop, &c->timer);
    ev_io_start(c->h->loop, &c->rw);
}

/* After the response: drop input until EOF. */
static void conn_drain(conn_t *c)
{
    char tmp[4096];
    for (;;) {
        ssize_t n = recv(c->fd, tmp, sizeof(tmp), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        c->drained += n > 0 ? (size_t)n : 0;
        if (n <= 0 || c->drained > HTTP_DRAIN) {
            conn_free(c);
            return;
        }
    }
}

static const char *status_text(int code)
{
    switch (code) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    default:
        return "Service Unavailable";
    }
}

static void respond(conn_t *c, int code, const char *ctype, const void *body, size_t len, bool head)
{
    ev_io_stop(c->h->loop, &c->rw);
    char hdr[300];
    int n =
        snprintf(hdr, sizeof(hdr),
                 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
                 "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                 code, status_text(code), ctype, len, code == 405 ? "Allow: GET, HEAD\r\n" : "");
    buf_reset(&c->out);
    buf_append(&c->out, hdr, (size_t)n);
    if (!head)
        buf_append(&c->out, body, len);
    if (c->out.failed) {
        conn_free(c);
        return;
    }
    conn_write(c);
}

static void respond_text(conn_t *c, int code, const char *text, bool head)
{
    respond(c, code, "text/plain; charset=utf-8", text, strlen(text), head);
}

static void serve(conn_t *c, const char *path, bool head)
{
    metrics_http_t *h = c->h;
    if (!strcmp(path, "/metrics")) {
        buf_t body;
        buf_init(&body, HTTP_MAX_BODY);
        h->routes.render(h->routes.arg, &body);
        if (body.failed)
            respond_text(c, 500, "metrics too large or out of memory\n", head);
        else
            respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", body.data, body.len, head);
        buf_free(&body);
    } else if (!strcmp(path, "/healthz")) {
        char why[1024] = "";
        if (h->routes.health(h->routes.arg, why, sizeof(why)))
            respond_text(c, 200, "ok\n", head);
        else {
            size_t l = strlen(why);
            if (l + 1 < sizeof(why) && (l == 0 || why[l - 1] != '\n'))
                strcat(why, "\n");
            respond_text(c, 503, why, head);
        }
    } else if (!strcmp(path, "/livez")) {
        respond_text(c, 200, "ok\n", head);
    } else {
        respond_text(c, 404, "not found: try /metrics, /healthz or /livez\n", head);
    }
}

static void conn_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    conn_t *c = w->data;
    if (c->draining) {
        conn_drain(c);
        return;
    }
    for (;;) {
        if (c->reqlen == sizeof(c->req)) {
            respond_text(c, 431, "request too large\n", false);
            return;
        }
        ssize_t n = recv(c->fd, c->req + c->reqlen, sizeof(c->req) - c->reqlen, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            conn_free(c); /* gone before asking anything */
            return;
        }
        c->reqlen += (size_t)n;
        char path[256];
        bool head = false;
        switch (metrics_http_parse(c->req, c->reqlen, path, sizeof(path), &head)) {
        case MX_REQ_INCOMPLETE:
            continue;
        case MX_REQ_BAD:
            respond_text(c, 400, "bad request\n", false);
            return;
        case MX_REQ_METHOD:
            respond_text(c, 405, "only GET and HEAD\n", false);
            return;
        case MX_REQ_OK:
            serve(c, path, head);
            return;
        }
    }
}

static void conn_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    conn_t *c = w->data;
    ev_io_stop(loop, w);
    conn_write(c);
}

static void conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    conn_t *c = w->data;
    if (c->draining || buf_unread(&c->out) > 0)
        conn_free(c); /* done lingering, or the scraper stopped reading */
    else
        respond_text(c, 408, "request timeout\n", false);
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    metrics_http_t *h = w->data;
    for (int i = 0; i < 32; i++) {
        int fd = accept4(h->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* the socket stays readable: without a pause this would spin */
                ev_io_stop(loop, &h->accept_w);
                ev_timer_set(&h->accept_pause, 0.1, 0.); /* a fired timer restarts at 0 */
                ev_timer_start(loop, &h->accept_pause);
            }
            return;
        }
        conn_t *c = h->nconns < HTTP_MAX_CONNS ? calloc(1, sizeof(*c)) : NULL;
        if (!c) {
            close(fd);
            continue;
        }
        c->h = h;
        c->fd = fd;
        buf_init(&c->out, 0);
        ev_io_init(&c->rw, conn_read_cb, fd, EV_READ);
        ev_io_init(&c->ww, conn_write_cb, fd, EV_WRITE);
        ev_timer_init(&c->timer, conn_timer_cb, HTTP_TIMEOUT, 0.);
        c->rw.data = c->ww.data = c->timer.data = c;
        c->next = h->conns;
        if (h->conns)
            h->conns->prev = c;
        h->conns = c;
        h->nconns++;
        ev_io_start(loop, &c->rw);
        ev_timer_start(loop, &c->timer);
    }
}

static void accept_resume(struct ev_loop *loop, ev_timer *t, int revents)
{
    metrics_http_t *h = t->data;
    ev_io_start(loop, &h->accept_w);
}

/* "host:port" or "[v6]:port" → host, port; false if malformed. */
static bool split_hostport(const char *hp, char *host, size_t hostsz, char *port, size_t portsz)
{
    const char *colon;
    const char *h = hp;
    size_t hlen;
    if (*hp == '[') {
        const char *rb = strchr(hp, ']');
        if (!rb || rb[1] != ':')
            return false;
        h = hp + 1;
        hlen = (size_t)(rb - h);
        colon = rb + 1;
    } else {
        colon = strrchr(hp, ':');
        if (!colon)
            return false;
        hlen = (size_t)(colon - hp);
    }
    if (hlen >= hostsz || strlen(colon + 1) >= portsz || !colon[1])
        return false;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    strcpy(port, colon + 1);
    return true;
}

metrics_http_t *metrics_http_new(struct ev_loop *loop, const char *hostport,
                                 const metrics_routes_t *routes, char *err, size_t errsz)
{
    char host[256], port[16];
    if (!split_hostport(hostport, host, sizeof(host), port, sizeof(port))) {
        snprintf(err, errsz, "metrics_listen: cannot read \"%s\" as host:port", hostport);
        return NULL;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *res = NULL;
    int rc = getaddrinfo(*host ? host : NULL, port, &hints, &res);
    if (rc != 0) {
        snprintf(err, errsz, "metrics_listen %s: %s", hostport, gai_strerror(rc));
        return NULL;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 64) < 0) {
        snprintf(err, errsz, "metrics_listen %s: %s", hostport, strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(res);
        return NULL;
    }
    freeaddrinfo(res);
    metrics_http_t *h = calloc(1, sizeof(*h));
    if (!h) {
        close(fd);
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    h->loop = loop;
    h->fd = fd;
    h->routes = *routes;
    ev_io_init(&h->accept_w, accept_cb, fd, EV_READ);
    ev_timer_init(&h->accept_pause, accept_resume, 0.1, 0.);
    h->accept_w.data = h->accept_pause.data = h;
    ev_io_start(loop, &h->accept_w);
    return h;
}

void metrics_http_free(metrics_http_t *h)
{
    if (!h)
        return;
    while (h->conns)
        conn_free(h->conns);
    ev_io_stop(h->loop, &h->accept_w);
    ev_timer_stop(h->loop, &h->accept_pause);
    close(h->fd);
    free(h);
}
