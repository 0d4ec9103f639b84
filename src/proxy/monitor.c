/*
 * The server's metrics endpoint and health probes (see monitor.h).
 *
 * A probe is in one of three phases: idle, resolving (a resolver request in
 * flight) or connecting (a non-blocking socket watched for writability). The
 * tick that starts probes also ends those still running after an interval,
 * as failed ("timeout"). On reload the probes are rebuilt for the new targets;
 * a target that kept its name, host and port keeps its last result, so a
 * reload does not flap /healthz.
 */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "audit/audit.h"
#include "metrics/metrics.h"
#include "proxy/catsvc.h"
#include "proxy/internal.h"
#include "proxy/monitor.h"
#include "proxy/workers.h"
#include "util/log.h"

typedef struct probe {
    struct monitor *mon;
    char *name, *host;
    int port;
    int fd; /* connecting, or -1 */
    ev_io w;
    struct resolve_req *req;                          /* resolving, or NULL */
    struct sockaddr_storage addrs[RESOLVE_MAX_ADDRS]; /* tried in turn, as libpq does */
    socklen_t lens[RESOLVE_MAX_ADDRS];
    int naddrs, next_addr;
    double started; /* ev_now when the running attempt began */
    bool tried, up; /* a result exists; the last attempt connected */
    double last_ok; /* ev_now of the last success */
    char err[160];  /* why the last attempt failed */
} probe_t;

typedef struct monitor {
    server_t *srv;
    metrics_http_t *http;
    probe_t *probes;
    size_t n;
    ev_timer tick;
    double start_time;
    char *listen; /* metrics_listen as started */
} monitor_t;

/* ---- probes ------------------------------------------------------------------ */

static void probe_stop(probe_t *p)
{
    if (p->req) {
        resolver_cancel(p->req);
        p->req = NULL;
    }
    if (p->fd >= 0) {
        ev_io_stop(p->mon->srv->loop, &p->w);
        close(p->fd);
        p->fd = -1;
    }
}

static void probe_done(probe_t *p, const char *err)
{
    probe_stop(p);
    bool was_up = p->tried && p->up;
    p->tried = true;
    p->up = err == NULL;
    if (p->up) {
        p->last_ok = ev_now(p->mon->srv->loop);
        p->err[0] = '\0';
        if (!was_up)
            log_event(LOG_INFO, "target_up", "target=%s", p->name);
        return;
    }
    snprintf(p->err, sizeof(p->err), "%s", err);
    char q[200];
    if (was_up)
        log_event(LOG_WARN, "target_down", "target=%s error=%s", p->name, log_q(q, sizeof(q), err));
}

static void probe_connect(probe_t *p);

static void probe_writable(struct ev_loop *loop, ev_io *w, int revents)
{
    probe_t *p = w->data;
    int soerr = 0;
    socklen_t len = sizeof(soerr);
    if (getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
        soerr = errno;
    if (soerr && p->next_addr < p->naddrs) {
        probe_stop(p);
        probe_connect(p);
        return;
    }
    probe_done(p, soerr ? strerror(soerr) : NULL);
}

/* Connect to the next address; the host is up when any of them answers. */
static void probe_connect(probe_t *p)
{
    int e = 0;
    while (p->next_addr < p->naddrs) {
        const struct sockaddr_storage *a = &p->addrs[p->next_addr];
        socklen_t alen = p->lens[p->next_addr++];
        int fd = socket(a->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            e = errno;
            continue;
        }
        if (connect(fd, (const struct sockaddr *)a, alen) == 0) {
            close(fd);
            probe_done(p, NULL);
            return;
        }
        if (errno == EINPROGRESS) {
            p->fd = fd;
            ev_io_init(&p->w, probe_writable, fd, EV_WRITE);
            p->w.data = p;
            ev_io_start(p->mon->srv->loop, &p->w);
            return;
        }
        e = errno;
        close(fd);
    }
    probe_done(p, strerror(e ? e : ECONNREFUSED));
}

static void probe_resolved(void *arg, int err, const struct sockaddr_storage *addrs,
                           const socklen_t *lens, int n)
{
    probe_t *p = arg;
    p->req = NULL;
    if (err || n < 1) {
        char why[200];
        snprintf(why, sizeof(why), "cannot resolve %s: %s", p->host,
                 err ? gai_strerror(err) : "no address");
        probe_done(p, why);
        return;
    }
    p->naddrs = n < RESOLVE_MAX_ADDRS ? n : RESOLVE_MAX_ADDRS;
    p->next_addr = 0;
    memcpy(p->addrs, addrs, (size_t)p->naddrs * sizeof(addrs[0]));
    memcpy(p->lens, lens, (size_t)p->naddrs * sizeof(lens[0]));
    probe_connect(p);
}

static void tick_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    monitor_t *m = t->data;
    double now = ev_now(loop);
    for (size_t i = 0; i < m->n; i++) {
        probe_t *p = &m->probes[i];
        if (p->req || p->fd >= 0) {
            if (now - p->started < MONITOR_PROBE_INTERVAL)
                continue;
            probe_done(p, p->req ? "timeout resolving the host" : "timeout connecting");
        }
        p->started = now;
        p->req = resolver_lookup(m->srv->resolver, p->host, p->port, probe_resolved, p);
        if (!p->req)
            probe_done(p, "out of memory");
    }
}

static void probes_free(monitor_t *m)
{
    for (size_t i = 0; i < m->n; i++) {
        probe_stop(&m->probes[i]);
        free(m->probes[i].name);
        free(m->probes[i].host);
    }
    free(m->probes);
    m->probes = NULL;
    m->n = 0;
}

/* Probes for cfg's targets, keeping the results of unchanged ones. */
static int probes_build(monitor_t *m, const cfg_t *cfg)
{
    probe_t *np = calloc(cfg->n_targets + 1, sizeof(probe_t));
    if (!np)
        return -1;
    for (size_t i = 0; i < cfg->n_targets; i++) {
        const cfg_target_t *t = &cfg->targets[i];
        probe_t *p = &np[i];
        p->mon = m;
        p->fd = -1;
        p->port = t->port;
        p->name = strdup(t->name);
        p->host = strdup(t->host);
        if (!p->name || !p->host) {
            for (size_t j = 0; j <= i; j++) {
                free(np[j].name);
                free(np[j].host);
            }
            free(np);
            return -1;
        }
        for (size_t j = 0; j < m->n; j++) {
            const probe_t *o = &m->probes[j];
            if (!strcmp(o->name, t->name) && !strcmp(o->host, t->host) && o->port == t->port) {
                p->tried = o->tried;
                p->up = o->up;
                p->last_ok = o->last_ok;
                memcpy(p->err, o->err, sizeof(p->err));
            }
        }
    }
    probes_free(m);
    m->probes = np;
    m->n = cfg->n_targets;
    return 0;
}

/* ---- the endpoint ---------------------------------------------------------------- */

bool monitor_ready(server_t *srv, char *why, size_t whysz)
{
    monitor_t *m = srv->monitor;
    size_t len = 0;
    why[0] = '\0';
#define WHY(...)                                                                                   \
    do {                                                                                           \
        if (len < whysz) {                                                                         \
            int k_ = snprintf(why + len, whysz - len, __VA_ARGS__);                                \
            len += k_ > 0 ? (size_t)k_ : 0;                                                        \
        }                                                                                          \
    } while (0)
    if (srv->draining)
        WHY("draining: the gateway is shutting down\n");
    if (!srv->audit)
        WHY("audit store: not open\n");
    else if (audit_failing(srv->audit))
        WHY("audit store: cannot write (see the gateway log)\n");
    double now = ev_now(srv->loop);
    for (size_t i = 0; m && i < m->n; i++) {
        const probe_t *p = &m->probes[i];
        if (!p->tried)
            WHY("target \"%s\": not probed yet\n", p->name);
        else if (!p->up)
            WHY("target \"%s\": unreachable (%s:%d): %s\n", p->name, p->host, p->port, p->err);
        else if (now - p->last_ok > 3 * MONITOR_PROBE_INTERVAL)
            WHY("target \"%s\": no answer for %.0f s\n", p->name, now - p->last_ok);
    }
#undef WHY
    return why[0] == '\0';
}

static bool route_health(void *arg, char *why, size_t whysz)
{
    return monitor_ready(arg, why, whysz);
}

static void route_metrics(void *arg, buf_t *out)
{
    server_t *srv = arg;
    monitor_t *m = srv->monitor;
    metrics_snapshot_t x = {.connections = workers_sessions(srv->hub),
                            .max_connections = srv->rt->cfg->max_client_conn,
                            .start_time = m->start_time};
    if (srv->policy_cache) {
        x.have_cache = true;
        workers_cache_stats(srv->hub, &x.cache); /* every worker's, summed */
    }
    if (srv->audit) {
        x.have_audit = true;
        x.audit_failing = audit_failing(srv->audit);
        audit_get_stats(srv->audit, &x.audit);
    }
    metrics_target_health_t *th = calloc(m->n + 1, sizeof(*th));
    if (!th) {
        out->failed = true;
        return;
    }
    for (size_t i = 0; i < m->n; i++) {
        th[i].name = m->probes[i].name;
        th[i].up = m->probes[i].tried && m->probes[i].up;
        th[i].last_ok_age =
            m->probes[i].last_ok > 0 ? ev_now(srv->loop) - m->probes[i].last_ok : -1;
    }
    x.targets = th;
    x.n_targets = m->n;
    metrics_t *loops[CFG_MAX_WORKERS + 1];
    size_t nloops = workers_metrics(srv->hub, loops, CFG_MAX_WORKERS);
    if (catsvc_metrics(srv->catalogs)) /* the catalog thread's own registry */
        loops[nloops++] = catsvc_metrics(srv->catalogs);
    metrics_render(out, loops, nloops, &x);
    free(th);
}

int monitor_start(server_t *srv)
{
    const cfg_t *cfg = srv->rt->cfg;
    if (!cfg->metrics_listen)
        return 0;
    monitor_t *m = calloc(1, sizeof(*m));
    if (!m || !(srv->metrics = metrics_new()) || !(m->listen = strdup(cfg->metrics_listen))) {
        log_event(LOG_ERROR, "metrics_failed", "error=\"out of memory\"");
        free(m);
        return -1;
    }
    m->srv = srv;
    m->start_time = (double)time(NULL);
    srv->monitor = m;
    metrics_routes_t routes = {.render = route_metrics, .health = route_health, .arg = srv};
    char err[300], q[400];
    if (!(m->http = metrics_http_new(srv->loop, cfg->metrics_listen, &routes, err, sizeof(err))) ||
        probes_build(m, cfg) < 0) {
        log_event(LOG_ERROR, "metrics_failed", "error=%s",
                  log_q(q, sizeof(q), m->http ? "out of memory" : err));
        monitor_stop(srv);
        return -1;
    }
    ev_timer_init(&m->tick, tick_cb, 0., MONITOR_PROBE_INTERVAL);
    m->tick.data = m;
    ev_timer_start(srv->loop, &m->tick);
    log_event(LOG_INFO, "metrics_listening", "addr=%s", cfg->metrics_listen);
    return 0;
}

void monitor_reload(server_t *srv)
{
    monitor_t *m = srv->monitor;
    const cfg_t *cfg = srv->rt->cfg;
    if (!m) {
        if (cfg->metrics_listen)
            log_event(LOG_WARN, "reload_metrics_unchanged",
                      "reason=\"metrics_listen needs a restart\"");
        return;
    }
    if (!cfg->metrics_listen || strcmp(cfg->metrics_listen, m->listen))
        log_event(LOG_WARN, "reload_metrics_unchanged",
                  "reason=\"metrics_listen needs a restart\"");
    if (probes_build(m, cfg) < 0)
        log_event(LOG_ERROR, "metrics_failed",
                  "error=\"out of memory: probes keep the old targets\"");
    ev_feed_event(srv->loop, &m->tick, EV_TIMER); /* probe the new targets now */
}

void monitor_stop(server_t *srv)
{
    monitor_t *m = srv->monitor;
    if (m) {
        ev_timer_stop(srv->loop, &m->tick);
        probes_free(m);
        metrics_http_free(m->http);
        free(m->listen);
        free(m);
        srv->monitor = NULL;
    }
    metrics_free(srv->metrics);
    srv->metrics = NULL;
}
