/*
 * The server: config generations (runtime_t), the listener, signals, the
 * session list and the cancel map. SIGHUP loads the config anew and swaps it
 * in only when it is valid; SIGTERM stops accepting and lets sessions finish
 * for shutdown_grace; SIGINT ends them at once.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "approval/approval.h"
#include "audit/audit.h"
#include "identity/ident.h"
#include "pgwire/pgwire.h"
#include "proxy/catsvc.h"
#include "proxy/internal.h"
#include "proxy/maskflow.h"
#include "proxy/monitor.h"
#include "proxy/proxy.h"
#include "proxy/workers.h"
#include "util/log.h"

/* ---- runtime: a config and the TLS contexts built from it ------------------ */

static SSL_CTX *server_tls_new(const cfg_t *cfg, char *err, size_t errsz)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        goto fail;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert_file) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key_file, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1)
        goto fail;
    return ctx;
fail:;
    char e[200] = "unknown error";
    unsigned long code = ERR_get_error();
    if (code)
        ERR_error_string_n(code, e, sizeof(e));
    ERR_clear_error();
    snprintf(err, errsz, "%s: tls: %s", cfg->path, e);
    SSL_CTX_free(ctx);
    return NULL;
}

static SSL_CTX *target_tls_new(const cfg_target_t *t, char *err, size_t errsz)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        goto fail;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (t->sslmode == CFG_SSL_VERIFY_FULL) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        int ok = t->sslrootcert ? SSL_CTX_load_verify_locations(ctx, t->sslrootcert, NULL)
                                : SSL_CTX_set_default_verify_paths(ctx);
        if (ok != 1)
            goto fail;
    } else {
        /* prefer/require encrypt without checking the certificate, as libpq
         * does without a root certificate. */
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    return ctx;
fail:;
    char e[200] = "unknown error";
    unsigned long code = ERR_get_error();
    if (code)
        ERR_error_string_n(code, e, sizeof(e));
    ERR_clear_error();
    snprintf(err, errsz, "targets.%s: TLS: %s", t->name, e);
    SSL_CTX_free(ctx);
    return NULL;
}

runtime_t *runtime_new(cfg_t *cfg, int nworkers, char *err, size_t errsz)
{
    runtime_t *rt = calloc(1, sizeof(*rt));
    if (!rt || !(rt->target_tls = calloc(cfg->n_targets + 1, sizeof(SSL_CTX *)))) {
        free(rt);
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    rt->cfg = cfg;
    rt->nworkers = nworkers;
    atomic_init(&rt->refcount, 1);
    if (cfg->tls_cert_file && !(rt->server_tls = server_tls_new(cfg, err, errsz)))
        goto fail;
    for (size_t i = 0; i < cfg->n_targets; i++) {
        if (cfg->targets[i].sslmode == CFG_SSL_DISABLE)
            continue;
        if (!(rt->target_tls[i] = target_tls_new(&cfg->targets[i], err, errsz)))
            goto fail;
    }
    size_t nr = cfg->n_roles;
    if (!(rt->scram = calloc((size_t)nworkers * nr + 1, sizeof(*rt->scram))))
        goto fail;
    for (size_t i = 0; i < (size_t)nworkers * nr; i++)
        if (!(rt->scram[i] = calloc(cfg->roles[i % nr].n_upstreams + 1, sizeof(pgw_scram_cache_t))))
            goto fail;
    if (!(rt->policies = policy_set_new(cfg))) {
        snprintf(err, errsz, "out of memory compiling the policies");
        goto fail;
    }
    if (!(rt->mask_rules = maskflow_rules_new(cfg, err, errsz)))
        goto fail;
    rt->n_mask_rules = cfg->n_roles;
    return rt;
fail:
    rt->cfg = NULL; /* the caller still owns cfg on failure */
    runtime_release(rt);
    return NULL;
}

pgw_scram_cache_t *runtime_scram_cache(runtime_t *rt, int worker, const cfg_role_t *role,
                                       const cfg_upstream_t *cred)
{
    size_t r = (size_t)(role - rt->cfg->roles), u = (size_t)(cred - role->upstreams);
    if (r >= rt->cfg->n_roles || u >= role->n_upstreams || worker < 0 || worker >= rt->nworkers)
        return NULL;
    size_t i = (size_t)worker * rt->cfg->n_roles + r;
    return rt->scram[i] ? &rt->scram[i][u] : NULL;
}

runtime_t *runtime_retain(runtime_t *rt)
{
    atomic_fetch_add_explicit(&rt->refcount, 1, memory_order_relaxed);
    return rt;
}

void runtime_release(runtime_t *rt)
{
    if (!rt || atomic_fetch_sub_explicit(&rt->refcount, 1, memory_order_acq_rel) > 1)
        return;
    policy_set_free(rt->policies);
    maskflow_rules_free(rt->mask_rules, rt->n_mask_rules);
    if (rt->scram && rt->cfg)
        for (size_t i = 0; i < (size_t)rt->nworkers * rt->cfg->n_roles; i++) {
            const cfg_role_t *role = &rt->cfg->roles[i % rt->cfg->n_roles];
            for (size_t j = 0; rt->scram[i] && j < role->n_upstreams; j++)
                pgw_scram_cache_clear(&rt->scram[i][j]);
            free(rt->scram[i]);
        }
    free(rt->scram);
    SSL_CTX_free(rt->server_tls);
    if (rt->target_tls && rt->cfg)
        for (size_t i = 0; i < rt->cfg->n_targets; i++)
            SSL_CTX_free(rt->target_tls[i]);
    free(rt->target_tls);
    if (rt->cfg)
        cfg_release(rt->cfg);
    free(rt);
}

/* *nworkers 0: take the count from the config (its "workers", or one per core). */
static runtime_t *load_runtime(const char *path, int *nworkers)
{
    cfg_errors_t errs = {0};
    cfg_t *cfg = cfg_load(path, &errs);
    char q[600];
    for (size_t i = 0; i < errs.n; i++)
        log_event(LOG_ERROR, "config_error", "error=%s", log_q(q, sizeof(q), errs.msgs[i]));
    cfg_errors_free(&errs);
    if (!cfg)
        return NULL;
    if (*nworkers == 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        *nworkers = cfg->workers > 0          ? cfg->workers
                    : cores < 1               ? 1
                    : cores > CFG_MAX_WORKERS ? CFG_MAX_WORKERS
                                              : (int)cores;
    }
    char err[300];
    runtime_t *rt = runtime_new(cfg, *nworkers, err, sizeof(err));
    if (!rt) {
        log_event(LOG_ERROR, "config_error", "error=%s", log_q(q, sizeof(q), err));
        cfg_release(cfg);
    }
    return rt;
}

/* The cancel map is shared by every worker: workers.c. */

/* ---- sessions ------------------------------------------------------------------- */

/* A draining loop ends once its last session is gone; main (worker 0) also
 * waits for every other worker's loop to end (they wake it when they do). */
static void maybe_stop(server_t *srv)
{
    if (srv->draining && srv->nsessions == 0 &&
        (srv->worker_id != 0 || workers_running(srv->hub) == 0))
        ev_break(srv->loop, EVBREAK_ALL);
}

static void reaper_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
    server_t *srv = w->data;
    while (srv->graveyard) {
        session_t *s = srv->graveyard;
        srv->graveyard = s->next;
        session_free(s);
    }
    ev_idle_stop(loop, w);
    maybe_stop(srv);
}

void server_session_gone(server_t *srv, session_t *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        srv->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    srv->nsessions--;
    s->prev = NULL;
    s->next = srv->graveyard;
    srv->graveyard = s;
    ev_idle_start(srv->loop, &srv->reaper);
}

static void end_all_sessions(server_t *srv)
{
    session_t *s = srv->sessions;
    while (s) {
        session_t *next = s->next;
        session_fail(s, "FATAL", "57P01",
                     "bulwark: terminating connection: the gateway is shutting down");
        s = next;
    }
}

/* ---- listener ------------------------------------------------------------------- */

static void refuse(int fd, const char *sqlstate, const char *msg)
{
    buf_t b;
    buf_init(&b, 4096);
    pgw_write_error(&b, "FATAL", sqlstate, msg);
    if (!b.failed && write(fd, b.data, b.len) < 0) {
        /* best effort: the connection is being refused anyway */
    }
    buf_free(&b);
    close(fd);
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    server_t *srv = w->data;
    for (int i = 0; i < 128; i++) {
        struct sockaddr_storage peer;
        socklen_t plen = sizeof(peer);
        int fd =
            accept4(srv->listen_fd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                log_event(LOG_ERROR, "accept_paused", "error=%s", strerror(errno));
                ev_io_stop(loop, &srv->listen_w);
                ev_timer_set(&srv->accept_pause, 0.1, 0.); /* a fired timer restarts at 0 */
                ev_timer_start(loop, &srv->accept_pause);
            }
            return;
        }
        /* max_client_conn counts the whole process: every worker's sessions */
        if (workers_sessions(srv->hub) >= srv->rt->cfg->max_client_conn) {
            refuse(fd, "53300", "sorry, too many clients already");
            continue;
        }
        proxy_client_keepalive(fd, srv->rt->cfg->tcp_keepalive_ms);
        session_t *s = session_new(srv, fd, (struct sockaddr *)&peer);
        metrics_connection(srv->metrics);
        if (!s) {
            close(fd);
            continue;
        }
        s->next = srv->sessions;
        if (srv->sessions)
            srv->sessions->prev = s;
        srv->sessions = s;
        srv->nsessions++;
    }
}

static void accept_resume(struct ev_loop *loop, ev_timer *t, int revents)
{
    server_t *srv = t->data;
    if (srv->listen_fd >= 0)
        ev_io_start(loop, &srv->listen_w);
}

static bool addr_is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6)
        return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)sa)->sin6_addr);
    return false;
}

/* One socket bound to the listen address; SO_REUSEPORT when several workers
 * each have their own (the kernel spreads connections over them). */
static int bind_one(const struct addrinfo *ai, bool reuseport, bool do_listen)
{
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if ((reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || (do_listen && listen(fd, 1024) < 0)) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* Runs before the loops start, so a blocking lookup of the listen host is
 * fine. With several workers, every one gets its own SO_REUSEPORT socket;
 * first a plain bind checks that no other process (say a second gateway
 * started by mistake) holds the address, which SO_REUSEPORT would allow. */
static int open_listeners(hub_t *h, const cfg_t *cfg)
{
    char port[8];
    snprintf(port, sizeof(port), "%d", cfg->listen_port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *res = NULL;
    int rc = getaddrinfo(cfg->listen_host, port, &hints, &res);
    if (rc != 0) {
        log_event(LOG_ERROR, "listen_failed", "host=%s error=\"%s\"", cfg->listen_host,
                  gai_strerror(rc));
        return -1;
    }
    int n = hub_workers(h);
    bool reuse = n > 1;
    int probe = reuse ? bind_one(res, false, false) : 0;
    if (probe > 0)
        close(probe);
    for (int i = 0; i < n && probe >= 0; i++) {
        server_t *w = hub_worker(h, i);
        if ((w->listen_fd = bind_one(res, reuse, true)) < 0)
            probe = -1;
        w->listener_loopback = addr_is_loopback(res->ai_addr);
    }
    if (probe < 0)
        log_event(LOG_ERROR, "listen_failed", "host=%s port=%d error=\"%s\"", cfg->listen_host,
                  cfg->listen_port, strerror(errno));
    freeaddrinfo(res);
    return probe < 0 ? -1 : 0;
}

static void close_listener(server_t *srv)
{
    if (srv->listen_fd < 0)
        return;
    ev_io_stop(srv->loop, &srv->listen_w);
    ev_timer_stop(srv->loop, &srv->accept_pause);
    close(srv->listen_fd);
    srv->listen_fd = -1;
}

/* ---- signals (main loop) and their echo on every worker --------------------------- */

static void drain(server_t *srv)
{
    if (srv->draining)
        return;
    srv->draining = true;
    close_listener(srv);
    maybe_stop(srv);
}

static void stop_now(server_t *srv)
{
    srv->draining = true;
    close_listener(srv);
    end_all_sessions(srv);
    maybe_stop(srv);
}

/* What main asked of this worker (workers_signal), on the worker's thread. */
static void worker_control(server_t *srv, unsigned bits)
{
    if (bits & WK_RELOAD) {
        runtime_t *rt = hub_runtime(srv->hub);
        runtime_release(srv->rt);
        srv->rt = rt;
    }
    if (bits & WK_DRAIN)
        drain(srv);
    if (bits & (WK_STOP | WK_END_ALL))
        stop_now(srv);
    maybe_stop(srv); /* main: a worker's loop has ended */
}

static void grace_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    server_t *srv = t->data;
    log_event(LOG_WARN, "grace_expired", "sessions=%lld", (long long)workers_sessions(srv->hub));
    workers_signal(srv->hub, WK_END_ALL);
    end_all_sessions(srv);
}

static void on_sigterm(struct ev_loop *loop, ev_signal *w, int revents)
{
    server_t *srv = w->data;
    if (srv->draining)
        return;
    int64_t n = workers_sessions(srv->hub);
    ev_timer_set(&srv->grace, (double)srv->rt->cfg->shutdown_grace_ms / 1000.0, 0.);
    ev_timer_start(loop, &srv->grace);
    workers_signal(srv->hub, WK_DRAIN);
    log_event(LOG_INFO, "draining", "sessions=%lld grace_ms=%lld workers=%d", (long long)n,
              (long long)srv->rt->cfg->shutdown_grace_ms, hub_workers(srv->hub));
    drain(srv);
}

static void on_sigint(struct ev_loop *loop, ev_signal *w, int revents)
{
    server_t *srv = w->data;
    log_event(LOG_INFO, "stopping", "sessions=%lld", (long long)workers_sessions(srv->hub));
    workers_signal(srv->hub, WK_STOP);
    stop_now(srv);
}

static void watch_files(server_t *srv);

static void reload(server_t *srv, const char *why)
{
    log_event(LOG_INFO, "reloading", "trigger=%s", why);
    int n = hub_workers(srv->hub);
    runtime_t *rt = load_runtime(srv->config_path, &n);
    if (!rt) {
        log_event(LOG_ERROR, "reload_failed", "config=%s keeping=previous", srv->config_path);
        return;
    }
    if (strcmp(rt->cfg->listen_host, srv->rt->cfg->listen_host) ||
        rt->cfg->listen_port != srv->rt->cfg->listen_port)
        log_event(LOG_WARN, "reload_listen_unchanged", "reason=\"listen needs a restart\"");
    if (rt->cfg->workers != srv->rt->cfg->workers)
        log_event(LOG_WARN, "reload_workers_unchanged", "reason=\"workers needs a restart\"");
    catsvc_sync(srv->catalogs, rt); /* before any session of rt can ask */
    runtime_t *old = srv->rt;
    srv->rt = rt; /* main's own reference */
    hub_runtime_set(srv->hub, rt);
    workers_signal(srv->hub, WK_RELOAD);
    watch_files(srv); /* before the old config (holding the old paths) may go */
    runtime_release(old);
    ident_keystore_sync(srv->keystore, rt->cfg);
    monitor_reload(srv);
    log_event(LOG_INFO, "reloaded", "roles=%zu targets=%zu", rt->cfg->n_roles, rt->cfg->n_targets);
}

static void on_sighup(struct ev_loop *loop, ev_signal *w, int revents)
{
    reload(w->data, "SIGHUP");
}

/* ---- file changes: key, secret and password rotation without a restart ---------- */

static void reload_delay_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    reload(t->data, "file_changed");
}

/* A watched file as last seen. The files are polled rather than watched through
 * ev_stat: libev's inotify backend falls back to a 30-second poll on file systems
 * it does not know (overlay, as in containers), and its own poll compares times in
 * whole seconds, so a file rewritten with the same size within a second would go
 * unnoticed. A rename (the usual atomic rotation) changes the inode; an in-place
 * write changes the nanosecond mtime or ctime. */
struct file_watch {
    const char *path; /* in the current cfg, which outlives the watches */
    bool exists;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime, ctime;
};

static void file_look(struct file_watch *f)
{
    struct stat st;
    f->exists = stat(f->path, &st) == 0;
    if (!f->exists)
        return;
    f->dev = st.st_dev;
    f->ino = st.st_ino;
    f->size = st.st_size;
    f->mtime = st.st_mtim;
    f->ctime = st.st_ctim;
}

static bool file_same(const struct file_watch *a, const struct file_watch *b)
{
    if (a->exists != b->exists)
        return false;
    return !a->exists ||
           (a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
            a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec &&
            a->ctime.tv_sec == b->ctime.tv_sec && a->ctime.tv_nsec == b->ctime.tv_nsec);
}

/* Every second: a few stat() calls of local files, as ev_stat itself would make. */
static void watch_poll_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    server_t *srv = t->data;
    bool changed = false;
    for (size_t i = 0; i < srv->nwatches; i++) {
        struct file_watch now = {.path = srv->watches[i].path};
        file_look(&now);
        if (!file_same(&now, &srv->watches[i])) {
            srv->watches[i] = now; /* seen before the reload reads it */
            changed = true;
        }
    }
    if (changed) {
        /* A rotation often writes several files; take them in one reload. */
        ev_timer_stop(loop, &srv->reload_delay);
        ev_timer_set(&srv->reload_delay, 0.2, 0.);
        ev_timer_start(loop, &srv->reload_delay);
    }
}

static void unwatch_files(server_t *srv)
{
    ev_timer_stop(srv->loop, &srv->watch_poll);
    free(srv->watches);
    srv->watches = NULL;
    srv->nwatches = 0;
}

/* The files of the current config; a file watched before keeps what was last seen
 * of it, so a change made while the reload ran is still noticed. */
static void watch_files(server_t *srv)
{
    const char *const *files;
    size_t n = cfg_watch_files(srv->rt->cfg, &files);
    struct file_watch *w = calloc(n ? n : 1, sizeof(*w));
    if (!w) {
        log_event(LOG_ERROR, "watch_failed", "reason=\"out of memory\" files=%zu", n);
        return; /* keep the previous watches */
    }
    for (size_t i = 0; i < n; i++) {
        size_t j = 0;
        while (j < srv->nwatches && strcmp(srv->watches[j].path, files[i]))
            j++;
        if (j < srv->nwatches) {
            w[i] = srv->watches[j];
            w[i].path = files[i];
        } else {
            w[i].path = files[i];
            file_look(&w[i]);
        }
    }
    unwatch_files(srv);
    srv->watches = w;
    srv->nwatches = n;
    if (n) {
        ev_timer_init(&srv->watch_poll, watch_poll_cb, 1., 1.);
        srv->watch_poll.data = srv;
        ev_timer_start(srv->loop, &srv->watch_poll);
    }
}

/* ---- the audit writer's notify: held statements go on, on every worker ------------- */

static void audit_notify(void *arg)
{
    hub_wake_audit(arg); /* writer thread: only the async sends */
}

static void audit_progress(struct ev_loop *loop, ev_async *w, int revents)
{
    server_t *srv = w->data;
    for (session_t *s = srv->sessions, *next; s; s = next) {
        next = s->next;
        if (s->state == ST_RELAY && s->holding)
            session_resume(s);
        else if (s->state == ST_RELAY && s->audit_paused)
            session_audit_relieved(s);
    }
}

/* ---- approvals: the store in the audit environment, and the poll timer ------------- */

static void approvals_poll_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    approval_poll(w->data);
}

/* Console decisions, and changes the shared store's state thread saw, wake every
 * loop: whichever loop drains a console decision hands it to the worker whose console
 * asked, and every loop with held statements polls at once rather than at its next
 * poll_interval. */
static void approvals_notify(void *arg)
{
    server_t *srv = arg; /* writer or state thread: only the async sends */
    hub_wake_approvals(srv->hub);
}

static void console_decided(void *arg, const appr_result_t *r)
{
    server_t *srv = arg;
    int owner = worker_of_tag(srv, r->tag);
    if (owner == srv->worker_id)
        admin_decided(srv, r);
    else
        worker_forward_decided(hub_worker(srv->hub, owner), r);
}

static void approvals_results(struct ev_loop *loop, ev_async *w, int revents)
{
    server_t *srv = w->data;
    if (srv->approvals)
        appr_worker_results(srv->approvals, console_decided, srv);
    if (srv->approvals && srv->nheld)
        approval_poll(srv); /* the shared store's state thread saw a change */
}

static void env_enter(void *audit)
{
    audit_env_enter(audit);
}

static void env_leave(void *audit)
{
    audit_env_leave(audit);
}

/* Main only, before the workers start. Without them a `review` statement is
 * refused (fail closed), as before. */
static void approvals_open(server_t *srv)
{
    char err[300] = "";
    appr_store_t *st = NULL;
    if (srv->audit && srv->rt->cfg->state.postgres) /* shared by replicas: docs/replicas.md */
        st = appr_pg_open(srv->rt->cfg, approvals_notify, srv, err, sizeof(err));
    else if (srv->audit && (st = appr_attach(audit_env(srv->audit), err, sizeof(err))))
        appr_set_txn_guard(st, env_enter, env_leave, srv->audit);
    if (st && !(srv->approvals = appr_worker_new(st, approvals_notify, srv))) {
        snprintf(err, sizeof(err), "cannot start the approval writer thread");
        appr_close(st);
    }
    if (!srv->approvals)
        log_event(LOG_ERROR, "approvals_unavailable", "error=\"%s\"", err);
    if (srv->approvals)
        appr_worker_set_retention(srv->approvals, srv->rt->cfg->audit.retention_max_age_ms);
    if (srv->approvals && !(srv->webhook = appr_webhook_new()))
        log_event(LOG_ERROR, "approvals_webhook_unavailable", "error=\"cannot start its thread\"");
}

/* Main only, after the workers stopped. */
static void approvals_close(server_t *srv)
{
    appr_webhook_free(srv->webhook);
    srv->webhook = NULL;
    if (!srv->approvals)
        return;
    appr_store_t *st = appr_worker_store(srv->approvals);
    appr_worker_free(srv->approvals);
    appr_close(st);
    ev_async_stop(srv->loop, &srv->approvals_w);
    srv->approvals = NULL;
}

/* ---- the key store's notify: logins waiting on a JWKS fetch go on ------------------ */

static void keys_notify(void *arg)
{
    hub_wake_keys(arg); /* worker thread: only the async sends */
}

static void keys_ready(struct ev_loop *loop, ev_async *w, int revents)
{
    server_t *srv = w->data;
    for (session_t *s = srv->sessions, *next; s; s = next) {
        next = s->next;
        if (s->state == ST_KEY_PENDING)
            session_try_login(s, s->pending_token, s->pending_token_len);
    }
}

/* ---- one worker's loop: set up, run, tear down -------------------------------------- */

/* Everything a loop owns, before it runs (srv->loop, hub, worker_id, rt set). */
static int loop_init(server_t *srv)
{
    srv->resolver = resolver_new(srv->loop);
    srv->policy_cache = policy_cache_new(POLICY_CACHE_ENTRIES, POLICY_CACHE_BYTES);
    ev_async_init(&srv->keys_w, keys_ready);
    ev_async_init(&srv->audit_w, audit_progress);
    ev_async_init(&srv->approvals_w, approvals_results);
    srv->keys_w.data = srv->audit_w.data = srv->approvals_w.data = srv;
    ev_async_start(srv->loop, &srv->keys_w);
    ev_async_start(srv->loop, &srv->audit_w);
    ev_async_start(srv->loop, &srv->approvals_w);
    ev_init(&srv->approvals_poll, approvals_poll_cb);
    srv->approvals_poll.data = srv;
    ev_io_init(&srv->listen_w, accept_cb, -1, EV_READ);
    ev_timer_init(&srv->accept_pause, accept_resume, 0.1, 0.);
    ev_idle_init(&srv->reaper, reaper_cb);
    srv->listen_w.data = srv->accept_pause.data = srv->reaper.data = srv;
    /* main's registry is made by monitor_start; the others' here */
    if (srv->worker_id != 0 && srv->rt->cfg->metrics_listen && !(srv->metrics = metrics_new()))
        return -1;
    if (worker_box_init(srv, worker_control) < 0 || !srv->resolver || !srv->policy_cache)
        return -1;
    return 0;
}

static void loop_start_listening(server_t *srv)
{
    ev_io_set(&srv->listen_w, srv->listen_fd, EV_READ);
    ev_io_start(srv->loop, &srv->listen_w);
}

/* After the loop ran, on its own thread: nothing of its sessions is left. */
static void loop_end(server_t *srv)
{
    close_listener(srv);
    reaper_cb(srv->loop, &srv->reaper, 0);
    ev_timer_stop(srv->loop, &srv->approvals_poll);
    policy_cache_stats_t cs;
    policy_cache_stats(srv->policy_cache, &cs);
    log_event(LOG_INFO, "parse_cache", "worker=%d hits=%llu misses=%llu evictions=%llu",
              srv->worker_id, (unsigned long long)cs.hits, (unsigned long long)cs.misses,
              (unsigned long long)cs.evictions);
}

/* Once the shared services (which wake this loop) are closed. */
static void loop_fini(server_t *srv)
{
    if (!srv->loop) {
        runtime_release(srv->rt);
        srv->rt = NULL;
        return;
    }
    ev_async_stop(srv->loop, &srv->keys_w);
    ev_async_stop(srv->loop, &srv->audit_w);
    ev_async_stop(srv->loop, &srv->approvals_w);
    worker_box_fini(srv);
    resolver_free(srv->resolver);
    policy_cache_free(srv->policy_cache);
    mask_scratch_free(srv->mask_scratch);
    if (srv->worker_id != 0)
        metrics_free(srv->metrics);
    runtime_release(srv->rt);
    srv->rt = NULL;
}

/* ---- entry point ------------------------------------------------------------------ */

/* Open the shared services on main; NULL audit etc. are logged. */
static int shared_open(server_t *srv)
{
    srv->keystore = ident_keystore_new(keys_notify, srv->hub);
    char aerr[300] = "";
    srv->audit = audit_open(srv->rt->cfg, NULL, audit_notify, srv->hub, aerr, sizeof(aerr));
    if (!srv->audit) {
        char q[400];
        log_event(LOG_ERROR, "audit_open_failed", "path=%s error=%s", srv->rt->cfg->audit.path,
                  log_q(q, sizeof(q), aerr));
    }
    if ((srv->catalogs = catsvc_new()))
        catsvc_sync(srv->catalogs, srv->rt);
    else
        log_event(LOG_ERROR, "catalog_unavailable",
                  "error=\"cannot start its thread\" detail=\"masked relations are masked whole\"");
    return srv->keystore && srv->audit ? 0 : -1;
}

static void shared_close(server_t *srv)
{
    approvals_close(srv);
    catsvc_free(srv->catalogs);
    srv->catalogs = NULL;
    audit_close(srv->audit);
    srv->audit = NULL;
    if (srv->keystore)
        ident_keystore_free(srv->keystore);
    srv->keystore = NULL;
}

int proxy_serve(const char *config_path)
{
    signal(SIGPIPE, SIG_IGN);
    proxy_raise_nofile();
    server_t srv;
    memset(&srv, 0, sizeof(srv));
    srv.listen_fd = -1;
    srv.config_path = (char *)config_path;
    int nworkers = 0;
    srv.rt = load_runtime(config_path, &nworkers);
    if (!srv.rt)
        return 1;
    srv.loop = ev_default_loop(EVFLAG_AUTO);
    hub_t *hub = srv.hub = hub_new(nworkers, srv.rt);
    int ok = hub && loop_init(&srv) == 0 && workers_create(hub, &srv, loop_init) == 0 &&
             open_listeners(hub, srv.rt->cfg) == 0;
    ok = ok && shared_open(&srv) == 0 && monitor_start(&srv) == 0;
    if (ok)
        approvals_open(&srv);
    for (int i = 0; ok && i < nworkers; i++)
        loop_start_listening(hub_worker(hub, i)); /* before the threads run */
    if (!ok || workers_start(hub, loop_end) < 0) {
        workers_signal(hub, WK_STOP); /* threads that did start end at once */
        workers_join(hub);
        shared_close(&srv);
        monitor_stop(&srv);
        for (int i = 0; hub && i < hub_workers(hub); i++)
            if (hub_worker(hub, i))
                close_listener(hub_worker(hub, i));
        workers_destroy(hub, loop_fini);
        if (hub)
            loop_fini(&srv);
        else
            runtime_release(srv.rt);
        hub_free(hub);
        return 1;
    }
    ev_timer_init(&srv.grace, grace_cb, 1., 0.);
    ev_signal_init(&srv.sig_term, on_sigterm, SIGTERM);
    ev_signal_init(&srv.sig_int, on_sigint, SIGINT);
    ev_signal_init(&srv.sig_hup, on_sighup, SIGHUP);
    srv.grace.data = &srv;
    srv.sig_term.data = srv.sig_int.data = srv.sig_hup.data = &srv;
    ev_timer_init(&srv.reload_delay, reload_delay_cb, 0.2, 0.);
    srv.reload_delay.data = &srv;
    ident_keystore_sync(srv.keystore, srv.rt->cfg);
    watch_files(&srv);
    ev_signal_start(srv.loop, &srv.sig_term);
    ev_signal_start(srv.loop, &srv.sig_int);
    ev_signal_start(srv.loop, &srv.sig_hup);
    const cfg_t *cfg = srv.rt->cfg;
    if (!cfg->tls_cert_file && !(srv.listener_loopback && cfg->allow_plaintext_on_loopback))
        log_event(LOG_WARN, "no_tls",
                  "reason=\"no tls section and plaintext not allowed: every login is refused\"");
    log_event(LOG_INFO, "listening", "addr=%s:%d tls=%s plaintext_loopback=%s pid=%d workers=%d",
              cfg->listen_host, cfg->listen_port, cfg->tls_cert_file ? "on" : "off",
              srv.listener_loopback && cfg->allow_plaintext_on_loopback ? "allowed" : "refused",
              (int)getpid(), nworkers);
    ev_run(srv.loop, 0);
    loop_end(&srv);
    ev_timer_stop(srv.loop, &srv.grace);
    unwatch_files(&srv);
    ev_timer_stop(srv.loop, &srv.reload_delay);
    workers_join(hub); /* their loops have ended: main stops only then */
    /* the shared services may wake every loop until closed: free loops after */
    shared_close(&srv);
    monitor_stop(&srv);
    workers_destroy(hub, loop_fini);
    loop_fini(&srv);
    hub_free(hub);
    rec_thread_end();
    log_event(LOG_INFO, "stopped", "pid=%d", (int)getpid());
    return 0;
}
