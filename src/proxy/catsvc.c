/*
 * catsvc — one catalog snapshot per target, read on a gateway-owned
 * connection by a thread of its own. Contract: catsvc.h; the user's view:
 * docs/masking.md "The shared catalog".
 *
 * Targets live in a list that only grows (a target dropped by a reload is
 * marked unused, its connection closed and its snapshot dropped), so the
 * thread may work on one without the lock while loops read the list under
 * it. The thread copies a target's connection parameters under the lock,
 * reads without it, and publishes under it.
 */
#include <libpq-fe.h>
#include <openssl/x509.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metrics/metrics.h"
#include "proxy/catsvc.h"
#include "proxy/internal.h"
#include "util/log.h"

#define NPARAMS 7 /* host port dbname user password sslmode sslrootcert */
#define CONNECT_TIMEOUT_MS 5000
#define READ_TIMEOUT_MS 35000 /* statement_timeout 30 s, plus the transfer */
#define SLICE_MS 100
#define BACKOFF_MIN_MS 250
#define BACKOFF_MAX_MS 10000
#define CHANGE_SPACING_MS 500 /* reads asked for by sessions: at most one per 500 ms */

/* Row counts and the sum of row versions' xmin of every catalog the snapshot is
 * made of: any DDL that changes a relation, a column, a view's rule, an
 * inheritance link or a schema writes new row versions, hence changes it. */
#define FP_MAX 400
#define FP_SQL                                                                                     \
    "SELECT concat_ws(',', (SELECT count(*) || ':' || sum(xmin::text::int8) FROM pg_class),"       \
    " (SELECT count(*) || ':' || sum(xmin::text::int8) FROM pg_attribute),"                        \
    " (SELECT count(*) || ':' || sum(xmin::text::int8) FROM pg_rewrite),"                          \
    " (SELECT count(*) || ':' || coalesce(sum(xmin::text::int8), 0) FROM pg_inherits),"            \
    " (SELECT count(*) || ':' || sum(xmin::text::int8) FROM pg_namespace))"

static const char *const param_keys[NPARAMS] = {"host",     "port",    "dbname",     "user",
                                                "password", "sslmode", "sslrootcert"};

typedef struct ctarget {
    struct ctarget *next;
    char *name;
    /* under mu */
    char *params[NPARAMS]; /* NULL where not set */
    int64_t refresh_ms;
    bool used;       /* in the current config */
    bool was_used;   /* catsvc_sync: in the previous one */
    bool reconnect;  /* the parameters changed: a new connection */
    bool attempted;  /* a read ended (ok or not) since the target was set up */
    bool want;       /* a session reported a change */
    bool failing;    /* the last read failed (logged once) */
    catalog_t *snap; /* NULL: none (not read yet, or dropped) */
    uint64_t gen;    /* bumped on each publish or drop */
    int64_t read_at; /* monotonic ms of the snapshot's read */
    int64_t next_at; /* monotonic ms of the next timed read */
    int64_t last_at; /* monotonic ms the last read started */
    int64_t backoff_ms;
    uint64_t reads_ok, reads_failed;
    /* freshness checks (catsvc_check): a fingerprint of the catalogs the
     * snapshot comes from, compared before a full read */
    uint64_t check_req, check_done;
    int64_t checked_at; /* monotonic ms: the snapshot was last found current */
    char fp[FP_MAX];    /* the snapshot's fingerprint ("" unknown) */
    /* the thread's own */
    PGconn *conn;
} ctarget_t;

struct catsvc {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    bool stop;
    atomic_bool stopping; /* read by the thread without the lock while it polls */
    ctarget_t *targets;
    metrics_t *mx;          /* written by the thread only */
    _Atomic uint64_t epoch; /* bumped (under mu) whenever any target's state changes */
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t stale_ms(const ctarget_t *t)
{
    return 3 * t->refresh_ms;
}

static ctarget_t *find(catsvc_t *cs, const char *name)
{
    for (ctarget_t *t = cs->targets; t; t = t->next)
        if (!strcmp(t->name, name))
            return t;
    return NULL;
}

static void params_free(char **p)
{
    for (int i = 0; i < NPARAMS; i++) {
        if (p[i] && i == 4)
            explicit_bzero(p[i], strlen(p[i]));
        free(p[i]);
        p[i] = NULL;
    }
}

/* ---- publishing (under mu) ---------------------------------------------------------- */

static void publish(catsvc_t *cs, ctarget_t *t, catalog_t *c, int64_t now)
{
    catalog_free(t->snap);
    t->snap = c;
    t->gen++;
    if (c)
        t->read_at = now;
    atomic_fetch_add_explicit(&cs->epoch, 1, memory_order_release);
}

/* ---- the read (the thread, without the lock) ---------------------------------------- */

static void clean_err(const char *in, char *out, size_t outsz)
{
    snprintf(out, outsz, "%s", in && *in ? in : "unknown error");
    for (char *c = out; *c; c++)
        if (*c == '\n' || *c == '"' || *c == '\r')
            *c = ' ';
    size_t n = strlen(out);
    while (n && out[n - 1] == ' ')
        out[--n] = 0;
}

/* Waits for the socket in slices, so that a stop is seen within SLICE_MS. */
static int wait_sock(catsvc_t *cs, PGconn *c, short ev, int64_t deadline)
{
    while (!atomic_load(&cs->stopping)) {
        int64_t left = deadline - mono_ms();
        if (left <= 0)
            return -1;
        struct pollfd p = {.fd = PQsocket(c), .events = ev};
        if (p.fd < 0)
            return -1;
        int r = poll(&p, 1, left < SLICE_MS ? (int)left : SLICE_MS);
        if (r > 0)
            return 0;
        if (r < 0)
            return -1;
    }
    return -1;
}

static PGconn *connect_target(catsvc_t *cs, char **params, char *err, size_t errsz)
{
    const char *keys[NPARAMS + 8], *vals[NPARAMS + 8];
    int n = 0;
    for (int i = 0; i < NPARAMS; i++)
        if (params[i]) {
            keys[n] = param_keys[i];
            vals[n++] = params[i];
        }
    keys[n] = "application_name", vals[n++] = "bulwark catalog";
    keys[n] = "options";
    vals[n++] = "-c search_path=pg_catalog -c statement_timeout=30000 "
                "-c default_transaction_read_only=on -c idle_in_transaction_session_timeout=60000";
    keys[n] = "keepalives_idle", vals[n++] = "30";
    keys[n] = "keepalives_interval", vals[n++] = "5";
    keys[n] = "keepalives_count", vals[n++] = "3";
    keys[n] = NULL, vals[n] = NULL;
    PGconn *c = PQconnectStartParams(keys, vals, 0);
    if (!c || PQstatus(c) == CONNECTION_BAD) {
        clean_err(c ? PQerrorMessage(c) : "out of memory", err, errsz);
        PQfinish(c);
        return NULL;
    }
    int64_t deadline = mono_ms() + CONNECT_TIMEOUT_MS;
    for (;;) {
        PostgresPollingStatusType st = PQconnectPoll(c);
        if (st == PGRES_POLLING_OK)
            return c;
        if (st == PGRES_POLLING_FAILED) {
            clean_err(PQerrorMessage(c), err, errsz);
            break;
        }
        if (wait_sock(cs, c, st == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline) < 0) {
            snprintf(err, errsz, "%s",
                     atomic_load(&cs->stopping) ? "stopping" : "timeout connecting");
            break;
        }
    }
    PQfinish(c);
    return NULL;
}

/* One read over c: a new snapshot, or NULL with err (*broken: the
 * connection is unusable). */
static catalog_t *read_catalog(catsvc_t *cs, PGconn *c, bool *broken, char *err, size_t errsz)
{
    *broken = false;
    catalog_t *cat = catalog_new();
    if (!cat) {
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    bool ok = false, too_big = false;
    if (!PQsendQuery(c, catalog_query_shared) || !PQsetSingleRowMode(c)) {
        clean_err(PQerrorMessage(c), err, errsz);
        *broken = true;
        catalog_free(cat);
        return NULL;
    }
    int64_t deadline = mono_ms() + READ_TIMEOUT_MS;
    err[0] = 0;
    for (;;) {
        while (PQisBusy(c)) {
            if (wait_sock(cs, c, POLLIN, deadline) < 0 || !PQconsumeInput(c)) {
                if (!err[0])
                    snprintf(err, errsz, "%s",
                             atomic_load(&cs->stopping) ? "stopping"
                             : mono_ms() >= deadline    ? "timeout reading"
                                                        : PQerrorMessage(c));
                clean_err(err, err, errsz);
                *broken = true; /* a result half read: start afresh */
                catalog_free(cat);
                return NULL;
            }
        }
        PGresult *r = PQgetResult(c);
        if (!r)
            break;
        switch (PQresultStatus(r)) {
        case PGRES_SINGLE_TUPLE:
            if (!too_big && PQnfields(r) == 1 && !PQgetisnull(r, 0, 0) &&
                catalog_add_json(cat, PQgetvalue(r, 0, 0), (size_t)PQgetlength(r, 0, 0)) < 0) {
                too_big = true;
                snprintf(err, errsz, "the catalog is larger than the gateway holds, or malformed");
            }
            break;
        case PGRES_TUPLES_OK:
            ok = !too_big;
            break;
        default:
            if (!err[0])
                clean_err(PQresultErrorMessage(r), err, errsz);
            break;
        }
        PQclear(r);
    }
    if (PQstatus(c) != CONNECTION_OK)
        *broken = true;
    if (!ok) {
        if (!err[0])
            snprintf(err, errsz, "no result");
        catalog_free(cat);
        return NULL;
    }
    return cat;
}

/* The fingerprint (FP_SQL) into out; -1 with err (*broken as read_catalog). */
static int fingerprint(catsvc_t *cs, PGconn *c, char *out, size_t outsz, bool *broken, char *err,
                       size_t errsz)
{
    *broken = false;
    out[0] = 0;
    if (!PQsendQuery(c, FP_SQL)) {
        clean_err(PQerrorMessage(c), err, errsz);
        *broken = true;
        return -1;
    }
    int64_t deadline = mono_ms() + READ_TIMEOUT_MS;
    bool ok = false;
    for (;;) {
        while (PQisBusy(c))
            if (wait_sock(cs, c, POLLIN, deadline) < 0 || !PQconsumeInput(c)) {
                clean_err(PQerrorMessage(c), err, errsz);
                *broken = true;
                return -1;
            }
        PGresult *r = PQgetResult(c);
        if (!r)
            break;
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && PQnfields(r) == 1 &&
            !PQgetisnull(r, 0, 0)) {
            snprintf(out, outsz, "%s", PQgetvalue(r, 0, 0));
            ok = true;
        } else if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            clean_err(PQresultErrorMessage(r), err, errsz);
        }
        PQclear(r);
    }
    if (PQstatus(c) != CONNECTION_OK)
        *broken = true;
    if (!ok && !err[0])
        snprintf(err, errsz, "no fingerprint");
    return ok ? 0 : -1;
}

/* Connects if needed, takes the fingerprint (into fp) and, unless it equals
 * old_fp when only a check was asked for (*unchanged set), reads; one retry on
 * a fresh connection when the old one turned out broken (a terminated
 * backend, a restarted server, a database dropped and created again). */
static catalog_t *attempt(catsvc_t *cs, ctarget_t *t, char **params, bool reconnect,
                          const char *old_fp, char *fp, bool *unchanged, char *err, size_t errsz)
{
    *unchanged = false;
    if (reconnect && t->conn) {
        PQfinish(t->conn);
        t->conn = NULL;
    }
    for (int round = 0; round < 2; round++) {
        bool fresh = !t->conn;
        if (!t->conn && !(t->conn = connect_target(cs, params, err, errsz)))
            return NULL;
        bool broken;
        catalog_t *c = NULL;
        if (fingerprint(cs, t->conn, fp, FP_MAX, &broken, err, errsz) == 0) {
            if (old_fp && old_fp[0] && !strcmp(fp, old_fp)) {
                *unchanged = true;
                return NULL;
            }
            c = read_catalog(cs, t->conn, &broken, err, errsz);
        }
        if (broken) {
            PQfinish(t->conn);
            t->conn = NULL;
        }
        if (c || !broken || fresh || atomic_load(&cs->stopping))
            return c;
    }
    return NULL;
}

/* ---- the thread ------------------------------------------------------------------- */

/* Under mu: drop snapshots past their bound; the next target due (NULL: none,
 * *wait_ms until something may be). */
static ctarget_t *next_due(catsvc_t *cs, int64_t now, int64_t *wait_ms)
{
    ctarget_t *best = NULL;
    int64_t soonest = INT64_MAX;
    int64_t best_due = INT64_MAX;
    for (ctarget_t *t = cs->targets; t; t = t->next) {
        if (!t->used) {
            if (t->conn) { /* dropped by a reload */
                PQfinish(t->conn);
                t->conn = NULL;
            }
            continue;
        }
        if (t->snap && now - t->read_at > stale_ms(t)) {
            publish(cs, t, NULL, now);
            log_event(LOG_WARN, "catalog_dropped",
                      "target=%s detail=\"no catalog read for %lld ms: every relation of this "
                      "target is masked whole until a read succeeds\"",
                      t->name, (long long)(now - t->read_at));
        }
        if (t->snap && t->read_at + stale_ms(t) + 1 < soonest)
            soonest = t->read_at + stale_ms(t) + 1;
        int64_t due = t->next_at;
        if (t->check_req > t->check_done)
            due = now; /* a session waits for it */
        if (t->want) {
            int64_t w = t->last_at + CHANGE_SPACING_MS;
            if (w < due)
                due = w;
        }
        if (due <= now && due < best_due) {
            best = t;
            best_due = due;
        }
        if (due < soonest)
            soonest = due;
    }
    *wait_ms = soonest == INT64_MAX ? 60000 : soonest - now;
    return best;
}

static void *thread_main(void *arg)
{
    catsvc_t *cs = arg;
    pthread_mutex_lock(&cs->mu);
    while (!cs->stop) {
        int64_t now = mono_ms(), wait_ms;
        ctarget_t *t = next_due(cs, now, &wait_ms);
        if (!t) {
            if (wait_ms < 1)
                wait_ms = 1;
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += wait_ms / 1000;
            ts.tv_nsec += (wait_ms % 1000) * 1000000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&cs->cv, &cs->mu, &ts);
            continue;
        }
        char *params[NPARAMS] = {0};
        bool oom = false;
        for (int i = 0; i < NPARAMS; i++)
            if (t->params[i] && !(params[i] = strdup(t->params[i])))
                oom = true;
        bool reconnect = t->reconnect;
        /* only a freshness check (not the timer, not a reported change): the
         * fingerprint decides whether the catalog is read */
        bool check_only = t->snap && !t->want && t->next_at > now;
        uint64_t serving = t->check_req;
        char old_fp[FP_MAX], fp[FP_MAX];
        snprintf(old_fp, sizeof(old_fp), "%s", check_only ? t->fp : "");
        t->reconnect = t->want = false;
        t->last_at = now;
        pthread_mutex_unlock(&cs->mu);

        char err[400] = "";
        catalog_t *c = NULL;
        bool unchanged = false;
        fp[0] = 0;
        if (oom)
            snprintf(err, sizeof(err), "out of memory");
        else
            c = attempt(cs, t, params, reconnect, old_fp, fp, &unchanged, err, sizeof(err));
        params_free(params);
        int64_t end = mono_ms();

        pthread_mutex_lock(&cs->mu);
        t->attempted = true;
        if (t->check_done < serving) {
            t->check_done = serving; /* whatever the outcome: the waiting sessions go on */
            atomic_fetch_add_explicit(&cs->epoch, 1, memory_order_release);
        }
        if (unchanged) {
            t->checked_at = end;
            continue;
        }
        if (c && t->used) {
            snprintf(t->fp, sizeof(t->fp), "%s", fp);
            t->checked_at = end;
        }
        if (!t->used) { /* dropped by a reload meanwhile */
            catalog_free(c);
            continue;
        }
        if (c && catalog_same(c, t->snap)) {
            /* nothing changed: the sessions keep the snapshot (and their plans) */
            catalog_free(c);
            t->read_at = end;
            t->backoff_ms = 0;
            t->next_at = end + t->refresh_ms;
            metrics_catalog_read(cs->mx, t->name, "unchanged");
            log_event(LOG_INFO, "catalog_read",
                      "target=%s relations=%zu bytes=%zu ms=%lld generation=%llu unchanged=true",
                      t->name, catalog_size(t->snap), catalog_bytes(t->snap),
                      (long long)(end - now), (unsigned long long)t->gen);
            if (t->failing)
                log_event(LOG_INFO, "catalog_recovered", "target=%s", t->name);
            t->failing = false;
            continue;
        }
        if (c) {
            publish(cs, t, c, end);
            metrics_catalog_read(cs->mx, t->name, "ok");
            t->reads_ok++;
            t->backoff_ms = 0;
            t->next_at = end + t->refresh_ms;
            log_event(LOG_INFO, "catalog_read",
                      "target=%s relations=%zu bytes=%zu ms=%lld generation=%llu", t->name,
                      catalog_size(c), catalog_bytes(c), (long long)(end - now),
                      (unsigned long long)t->gen);
            if (t->failing)
                log_event(LOG_INFO, "catalog_recovered", "target=%s", t->name);
            t->failing = false;
            continue;
        }
        t->reads_failed++;
        metrics_catalog_read(cs->mx, t->name, "error");
        if (cs->stop)
            break;
        t->backoff_ms = t->backoff_ms ? t->backoff_ms * 2 : BACKOFF_MIN_MS;
        int64_t cap = t->refresh_ms < BACKOFF_MAX_MS ? t->refresh_ms : BACKOFF_MAX_MS;
        if (t->backoff_ms > cap)
            t->backoff_ms = cap;
        t->next_at = end + t->backoff_ms;
        if (!t->snap) {
            t->gen++; /* sessions waiting for the first read go on: masked whole */
            atomic_fetch_add_explicit(&cs->epoch, 1, memory_order_release);
        }
        if (!t->failing) {
            char q[500];
            log_event(LOG_WARN, "catalog_read_failed",
                      "target=%s error=%s keeping=%s retry=backoff", t->name,
                      log_q(q, sizeof(q), err), t->snap ? "last_snapshot" : "none");
        }
        t->failing = true;
    }
    pthread_mutex_unlock(&cs->mu);
    return NULL;
}

/* ---- the API ---------------------------------------------------------------------- */

catsvc_t *catsvc_new(void)
{
    catsvc_t *cs = calloc(1, sizeof(*cs));
    if (!cs)
        return NULL;
    pthread_mutex_init(&cs->mu, NULL);
    pthread_cond_init(&cs->cv, NULL);
    atomic_init(&cs->stopping, false);
    cs->mx = metrics_new();
    if (pthread_create(&cs->thread, NULL, thread_main, cs) != 0) {
        pthread_cond_destroy(&cs->cv);
        pthread_mutex_destroy(&cs->mu);
        metrics_free(cs->mx);
        free(cs);
        return NULL;
    }
    return cs;
}

void catsvc_free(catsvc_t *cs)
{
    if (!cs)
        return;
    pthread_mutex_lock(&cs->mu);
    cs->stop = true;
    atomic_store(&cs->stopping, true);
    pthread_cond_signal(&cs->cv);
    pthread_mutex_unlock(&cs->mu);
    pthread_join(cs->thread, NULL);
    for (ctarget_t *t = cs->targets, *n; t; t = n) {
        n = t->next;
        PQfinish(t->conn);
        catalog_free(t->snap);
        params_free(t->params);
        free(t->name);
        free(t);
    }
    pthread_cond_destroy(&cs->cv);
    pthread_mutex_destroy(&cs->mu);
    metrics_free(cs->mx);
    free(cs);
}

metrics_t *catsvc_metrics(catsvc_t *cs)
{
    return cs ? cs->mx : NULL;
}

static const char *sslmode_name(cfg_sslmode_t m)
{
    switch (m) {
    case CFG_SSL_DISABLE:
        return "disable";
    case CFG_SSL_REQUIRE:
        return "require";
    case CFG_SSL_VERIFY_FULL:
        return "verify-full";
    default:
        return "prefer";
    }
}

/* The credential the catalog is read with: the first role (config order)
 * that masks something and reaches the target; NULL if none does. */
static const cfg_upstream_t *catalog_credential(const runtime_t *rt, const cfg_target_t *tg)
{
    const cfg_t *cfg = rt->cfg;
    for (size_t i = 0; i < cfg->n_roles; i++) {
        if (!rt->mask_rules || i >= rt->n_mask_rules || !rt->mask_rules[i] ||
            !mask_rules_active(rt->mask_rules[i]))
            continue;
        const cfg_upstream_t *u = cfg_role_upstream(&cfg->roles[i], tg->name);
        if (u)
            return u;
    }
    return NULL;
}

static bool same(const char *a, const char *b)
{
    return a == b || (a && b && !strcmp(a, b));
}

void catsvc_sync(catsvc_t *cs, const runtime_t *rt)
{
    if (!cs)
        return;
    const cfg_t *cfg = rt->cfg;
    pthread_mutex_lock(&cs->mu);
    for (ctarget_t *t = cs->targets; t; t = t->next) {
        t->was_used = t->used;
        t->used = false;
    }
    for (size_t i = 0; i < cfg->n_targets; i++) {
        const cfg_target_t *tg = &cfg->targets[i];
        const cfg_upstream_t *u = catalog_credential(rt, tg);
        if (!u)
            continue;
        ctarget_t *t = find(cs, tg->name);
        if (!t) {
            if (!(t = calloc(1, sizeof(*t))) || !(t->name = strdup(tg->name))) {
                free(t);
                log_event(LOG_ERROR, "catalog_unavailable",
                          "target=%s error=\"out of memory\" detail=\"masked whole\"", tg->name);
                continue;
            }
            t->next = cs->targets;
            cs->targets = t;
        }
        char port[16];
        snprintf(port, sizeof(port), "%d", tg->port);
        const char *sslrootcert = NULL;
        if (tg->sslmode == CFG_SSL_VERIFY_FULL)
            sslrootcert = tg->sslrootcert ? tg->sslrootcert : X509_get_default_cert_file();
        const char *want[NPARAMS] = {tg->host,   port,        tg->dbname,
                                     u->user,    u->password, sslmode_name(tg->sslmode),
                                     sslrootcert};
        bool other_db = false, changed = !t->was_used;
        for (int k = 0; k < NPARAMS; k++)
            if (!same(t->params[k], want[k])) {
                changed = true;
                other_db = other_db || k < 3; /* host, port, dbname */
            }
        if (other_db && t->snap)
            publish(cs, t, NULL, 0); /* another database's catalog must not be used */
        if (changed) {
            params_free(t->params);
            for (int k = 0; k < NPARAMS; k++)
                if (want[k] && !(t->params[k] = strdup(want[k])))
                    log_event(LOG_ERROR, "catalog_unavailable", "target=%s error=\"out of memory\"",
                              tg->name);
            /* a new connection, read at once; without a snapshot, sessions
             * wait for that read (CATSVC_PENDING) */
            t->reconnect = true;
            t->next_at = 0;
            t->backoff_ms = 0;
            if (!t->snap)
                t->attempted = false;
        }
        t->used = true;
        t->refresh_ms = cfg->masking.catalog_refresh_ms;
        if (t->next_at > mono_ms() + t->refresh_ms)
            t->next_at = mono_ms() + t->refresh_ms;
    }
    for (ctarget_t *t = cs->targets; t; t = t->next)
        if (!t->used && t->was_used) {
            publish(cs, t, NULL, 0);
            params_free(t->params);
            t->attempted = false;
            t->failing = false;
        }
    atomic_fetch_add_explicit(&cs->epoch, 1, memory_order_release);
    pthread_cond_signal(&cs->cv);
    pthread_mutex_unlock(&cs->mu);
}

uint64_t catsvc_epoch(catsvc_t *cs)
{
    return cs ? atomic_load_explicit(&cs->epoch, memory_order_acquire) : 0;
}

catsvc_state_t catsvc_get(catsvc_t *cs, const char *target, uint64_t *gen, catalog_t **out)
{
    *out = NULL;
    if (!cs) {
        catsvc_state_t st = *gen == UINT64_MAX ? CATSVC_SAME : CATSVC_NEW;
        *gen = UINT64_MAX;
        return st;
    }
    pthread_mutex_lock(&cs->mu);
    ctarget_t *t = find(cs, target);
    catsvc_state_t st;
    if (!t || !t->used) {
        /* not served (no masking role reaches it in the current config): none */
        st = *gen == UINT64_MAX ? CATSVC_SAME : CATSVC_NEW;
        *gen = UINT64_MAX;
    } else if (!t->snap && !t->attempted) {
        st = CATSVC_PENDING;
    } else if (t->gen == *gen) {
        st = CATSVC_SAME;
    } else {
        *out = catalog_retain(t->snap);
        *gen = t->gen;
        st = CATSVC_NEW;
    }
    pthread_mutex_unlock(&cs->mu);
    return st;
}

uint64_t catsvc_check(catsvc_t *cs, const char *target, int64_t max_age_ms)
{
    if (!cs)
        return 0;
    uint64_t ticket = 0;
    pthread_mutex_lock(&cs->mu);
    ctarget_t *t = find(cs, target);
    /* not while failing: the backoff decides; not before the first read */
    if (t && t->used && t->snap && !t->failing && mono_ms() - t->checked_at > max_age_ms) {
        if (t->check_req == t->check_done) {
            t->check_req++;
            pthread_cond_signal(&cs->cv);
        }
        ticket = t->check_req;
    }
    pthread_mutex_unlock(&cs->mu);
    return ticket;
}

bool catsvc_checked(catsvc_t *cs, const char *target, uint64_t ticket)
{
    if (!cs)
        return true;
    pthread_mutex_lock(&cs->mu);
    ctarget_t *t = find(cs, target);
    bool done = !t || !t->used || t->check_done >= ticket;
    pthread_mutex_unlock(&cs->mu);
    return done;
}

void catsvc_changed(catsvc_t *cs, const char *target)
{
    if (!cs)
        return;
    pthread_mutex_lock(&cs->mu);
    ctarget_t *t = find(cs, target);
    if (t && t->used && !t->want) {
        t->want = true;
        pthread_cond_signal(&cs->cv);
    }
    pthread_mutex_unlock(&cs->mu);
}
