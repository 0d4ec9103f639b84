/*
 * Approval requests, decisions and grants in PostgreSQL (state.backend
 * "postgres"; docs/replicas.md), so that several gateway replicas share
 * them: a statement held on one replica can be approved through the CLI or
 * the admin console of another, and a grant made anywhere is honoured
 * everywhere.
 *
 * Schema (created and migrated by Bulwark under an advisory lock; the
 * version is in bulwark_state.schema_version):
 *
 *   bulwark_state.requests (id bigint primary key, seq bigint, state text,
 *                           live boolean, until_us bigint, created_us bigint,
 *                           doc text)
 *     doc:  the request as JSON (appr_req_json), the one source of truth
 *     seq:  from bulwark_state.changes, renewed on every write; every write
 *           transaction first takes one transaction-level advisory lock, so
 *           seq order is commit order and "seq > last seen" misses nothing
 *     live: pending, or a usable grant, when written (until_us: when that
 *           ends; 0 = a one-use grant, until used)
 *   bulwark_state.request_ids: a sequence with INCREMENT 64; a replica takes
 *           a block of 64 ids at a time, so ids are unique across replicas
 *           and the loop never waits for one
 *
 * Every write commits with pg_notify(channel, id). libpq only ever runs on
 * the calling thread of a write (the approval worker thread, or a CLI) and
 * on this module's state thread, never on an event loop. A gateway's
 * state thread LISTENs on the channel and, on a notification or every
 * approvals.poll_interval (so a lost notification costs one interval),
 * reads the rows whose seq is past the last one it saw into an in-memory
 * table (the mirror) of live requests and the ones this replica holds; it
 * reconnects with backoff (0.25 s doubling to 10 s) and, once connected
 * again, re-reads every live row and every request it still tracks.
 * Reads on the loop (appr_get, appr_find_grant, appr_list) see only the
 * mirror. While the state thread is not connected the store is
 * unavailable (appr_available false): the gateway refuses new `review`
 * statements, and held ones wait for their timeout.
 *
 * Bounded: the mirror keeps at most MIRROR_MAX requests (dead ones are
 * evicted first); a poll reads at most BATCH rows at a time.
 */
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "approval/approval.h"
#include "approval/internal.h"
#include "util/log.h"

#define SCHEMA_VERSION 1
#define MIRROR_MAX 4096
#define BATCH 500
#define ID_BLOCK 64
#define ID_LOW 16
#define BACKOFF_MIN_MS 250
#define BACKOFF_MAX_MS 10000
#define WRITE_RETRY_US 1000000 /* a failed connect for writes is not retried sooner */
#define DSN_MAX 4096

typedef struct mentry {
    appr_req_t r;
    int64_t seq;
} mentry_t;

struct apg {
    char *dsn;
    char channel[64];
    int64_t poll_ms;
    /* the connection for writes (and, for the CLI, reads): one caller at a time */
    pthread_mutex_t wmu;
    PGconn *wconn;
    int64_t wfail_us;
    bool dropped; /* the last failure found the connection broken: worth one retry */
    /* gateway: the state thread and the mirror */
    bool gateway;
    void (*changed)(void *arg);
    void *changed_arg;
    pthread_t thread;
    atomic_bool stop;
    pthread_mutex_t mu; /* guards everything below */
    mentry_t *m;
    size_t n;
    uint64_t id_next, id_end;
    bool up;
    char down_why[200];
};

static int64_t wall_us(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

/* ---- connections ---------------------------------------------------------------------- */

static void clean_err(const char *in, char *out, size_t outsz)
{
    snprintf(out, outsz, "%s", in && *in ? in : "unknown error");
    for (char *c = out; *c; c++)
        if (*c == '\n' || *c == '"')
            *c = ' ';
    size_t n = strlen(out);
    while (n && out[n - 1] == ' ')
        out[--n] = 0;
}

static PGconn *connect_db(apg_t *p, char *err, size_t errsz)
{
    const char *keys[] = {"connect_timeout",
                          "keepalives_idle",
                          "keepalives_interval",
                          "keepalives_count",
                          "application_name",
                          "dbname",
                          NULL};
    const char *vals[] = {"3", "5", "2", "3", "bulwark-state", p->dsn, NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (!c || PQstatus(c) != CONNECTION_OK) {
        clean_err(c ? PQerrorMessage(c) : "out of memory", err, errsz);
        PQfinish(c);
        return NULL;
    }
    return c;
}

/* Run sql; NULL (with err) unless its status is ok. */
static PGresult *run(PGconn *c, const char *sql, int n, const char *const *params, char *err,
                     size_t errsz)
{
    PGresult *res = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return res;
    clean_err(res ? PQresultErrorMessage(res) : PQerrorMessage(c), err, errsz);
    PQclear(res);
    return NULL;
}

static int run_ok(PGconn *c, const char *sql, int n, const char *const *params, char *err,
                  size_t errsz)
{
    PGresult *res = run(c, sql, n, params, err, errsz);
    PQclear(res);
    return res ? 0 : -1;
}

static const char *const migration_v1[] = {
    "CREATE SEQUENCE bulwark_state.request_ids INCREMENT BY 64 MINVALUE 1 START WITH 1",
    "CREATE SEQUENCE bulwark_state.changes",
    "CREATE TABLE bulwark_state.requests (id bigint PRIMARY KEY, seq bigint NOT NULL, "
    "state text NOT NULL, live boolean NOT NULL, until_us bigint NOT NULL, "
    "created_us bigint NOT NULL, doc text NOT NULL)",
    "CREATE INDEX requests_seq ON bulwark_state.requests (seq)",
    "CREATE INDEX requests_live ON bulwark_state.requests (id) WHERE live",
    NULL,
};

/* Create or migrate the schema, under a session advisory lock so that
 * replicas starting together do it once. */
static int migrate(PGconn *c, char *err, size_t errsz)
{
    if (run_ok(c, "SELECT pg_advisory_lock(hashtext('bulwark_state.migrate'))", 0, NULL, err,
               errsz))
        return -1;
    int rc = -1;
    PGresult *res = NULL;
    if (run_ok(c, "CREATE SCHEMA IF NOT EXISTS bulwark_state", 0, NULL, err, errsz) ||
        run_ok(c, "CREATE TABLE IF NOT EXISTS bulwark_state.schema_version (version int NOT NULL)",
               0, NULL, err, errsz) ||
        !(res = run(c, "SELECT coalesce(max(version), 0) FROM bulwark_state.schema_version", 0,
                    NULL, err, errsz)))
        goto out;
    int v = atoi(PQgetvalue(res, 0, 0));
    if (v > SCHEMA_VERSION) {
        snprintf(err, errsz,
                 "the bulwark_state schema is version %d, newer than this bulwark knows (%d)", v,
                 SCHEMA_VERSION);
        goto out;
    }
    if (v < 1) {
        if (run_ok(c, "BEGIN", 0, NULL, err, errsz))
            goto out;
        bool ok = true;
        for (size_t i = 0; ok && migration_v1[i]; i++)
            ok = !run_ok(c, migration_v1[i], 0, NULL, err, errsz);
        ok = ok &&
             !run_ok(c, "INSERT INTO bulwark_state.schema_version VALUES (1)", 0, NULL, err, errsz);
        char e2[100];
        if (!ok || run_ok(c, "COMMIT", 0, NULL, err, errsz)) {
            (void)run_ok(c, "ROLLBACK", 0, NULL, e2, sizeof(e2));
            goto out;
        }
        log_event(LOG_INFO, "state_schema_migrated", "from=%d to=%d", v, SCHEMA_VERSION);
    }
    rc = 0;
out:
    PQclear(res);
    char e3[100];
    (void)run_ok(c, "SELECT pg_advisory_unlock(hashtext('bulwark_state.migrate'))", 0, NULL, e3,
                 sizeof(e3));
    return rc;
}

/* The write connection, connected and migrated; NULL with err. wmu held. */
static PGconn *wconn(apg_t *p, char *err, size_t errsz)
{
    if (p->wconn && PQstatus(p->wconn) == CONNECTION_OK)
        return p->wconn;
    PQfinish(p->wconn);
    p->wconn = NULL;
    int64_t now = wall_us();
    if (p->wfail_us && now - p->wfail_us < WRITE_RETRY_US) {
        snprintf(err, errsz, "the state database was unreachable moments ago");
        return NULL;
    }
    PGconn *c = connect_db(p, err, errsz);
    if (c && migrate(c, err, errsz)) {
        PQfinish(c);
        c = NULL;
    }
    p->wfail_us = c ? 0 : now;
    return p->wconn = c;
}

/* True once after a failure that found the write connection broken (say the
 * state database restarted since its last use): the caller retries once on a
 * new connection. A transaction whose COMMIT was lost may then find its own
 * work done (NOT_PENDING, a duplicate id): reported, never applied twice. */
static bool take_dropped(apg_t *p)
{
    pthread_mutex_lock(&p->wmu);
    bool d = p->dropped;
    p->dropped = false;
    pthread_mutex_unlock(&p->wmu);
    return d;
}

/* After a failed statement: drop a broken connection, end a failed transaction. */
static void after_failure(apg_t *p)
{
    if (!p->wconn)
        return;
    if (PQstatus(p->wconn) != CONNECTION_OK) {
        PQfinish(p->wconn);
        p->wconn = NULL;
        p->dropped = true;
        return;
    }
    if (PQtransactionStatus(p->wconn) != PQTRANS_IDLE) {
        PGresult *r = PQexec(p->wconn, "ROLLBACK");
        PQclear(r);
    }
}

/* ---- the mirror (gateway) ------------------------------------------------------------- */

/* Worth keeping: pending and not expired, or a usable grant. */
static bool live_at(const appr_req_t *r, int64_t now_us)
{
    return (r->state == APPR_PENDING && r->expires_us > now_us) || appr_grant_usable(r, now_us);
}

static int64_t until_of(const appr_req_t *r)
{
    if (r->state == APPR_PENDING)
        return r->expires_us;
    return r->grant_until_us; /* 0: a one-use grant */
}

static mentry_t *mfind(apg_t *p, uint64_t id)
{
    for (size_t i = 0; i < p->n; i++)
        if (p->m[i].r.id == id)
            return &p->m[i];
    return NULL;
}

/* Put a copy of r (mu held). track: keep it even when not live (this
 * replica holds it, or already has it). */
static void mput(apg_t *p, const appr_req_t *r, int64_t seq, bool track)
{
    mentry_t *e = mfind(p, r->id);
    if (e && e->seq > seq && seq)
        return; /* older than what we have */
    if (!e && !track && !live_at(r, wall_us()))
        return;
    appr_req_t copy;
    if (appr_copy(r, &copy) != APPR_OK)
        return;
    if (e) {
        appr_req_free(&e->r);
        e->r = copy;
        if (seq)
            e->seq = seq;
        return;
    }
    if (p->n >= MIRROR_MAX) {
        /* evict the oldest dead entry, else the oldest */
        int64_t now = wall_us();
        size_t victim = 0;
        bool dead = false;
        for (size_t i = 0; i < p->n; i++) {
            bool d = !live_at(&p->m[i].r, now);
            if ((d && !dead) || (d == dead && p->m[i].r.id < p->m[victim].r.id)) {
                victim = i;
                dead = d;
            }
        }
        appr_req_free(&p->m[victim].r);
        p->m[victim] = p->m[--p->n];
    }
    p->m[p->n].r = copy;
    p->m[p->n].seq = seq;
    p->n++;
}

/* ---- writes --------------------------------------------------------------------------- */

typedef appr_rc_t (*mutate_fn)(void *ctx, appr_req_t *r);

static int store_row(apg_t *p, PGconn *c, const appr_req_t *r, bool insert, char *err, size_t errsz)
{
    cJSON *o = appr_req_json(r);
    char *doc = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!doc) {
        snprintf(err, errsz, "out of memory");
        return -1;
    }
    char id[24], until[24], created[24];
    snprintf(id, sizeof(id), "%llu", (unsigned long long)r->id);
    snprintf(until, sizeof(until), "%lld", (long long)until_of(r));
    snprintf(created, sizeof(created), "%lld", (long long)r->created_us);
    bool live = r->state == APPR_PENDING || appr_grant_usable(r, wall_us());
    const char *params[] = {
        id, appr_state_name(r->state), live ? "t" : "f", until, created, doc, p->channel};
    int rc = run_ok(c,
                    insert ? "INSERT INTO bulwark_state.requests (id, seq, state, live, until_us, "
                             "created_us, doc) VALUES ($1, nextval('bulwark_state.changes'), $2, "
                             "$3, $4, $5, $6)"
                           : "UPDATE bulwark_state.requests SET seq = "
                             "nextval('bulwark_state.changes'), state = $2, live = $3, "
                             "until_us = $4, created_us = $5, doc = $6 WHERE id = $1",
                    6, params, err, errsz);
    if (!rc) {
        const char *np[] = {p->channel, id};
        rc = run_ok(c, "SELECT pg_notify($1, $2)", 2, np, err, errsz);
    }
    free(doc);
    return rc;
}

static const char LOCK_WRITES[] = "SELECT pg_advisory_xact_lock(hashtext('bulwark_state.writes'))";

/* Load id FOR UPDATE, mutate, write back, notify, commit. out (if any)
 * gets the request as it stands after the attempt. */
static appr_rc_t write_once(apg_t *p, uint64_t id, mutate_fn fn, void *ctx, appr_req_t *out,
                            char *err, size_t errsz)
{
    char ebuf[300];
    if (!err) {
        err = ebuf;
        errsz = sizeof(ebuf);
    }
    if (out)
        memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&p->wmu);
    appr_rc_t rc = APPR_ERR;
    appr_req_t r;
    memset(&r, 0, sizeof(r));
    PGconn *c = wconn(p, err, errsz);
    PGresult *res = NULL;
    char ids[24];
    snprintf(ids, sizeof(ids), "%llu", (unsigned long long)id);
    const char *params[] = {ids};
    if (!c || run_ok(c, "BEGIN", 0, NULL, err, errsz) ||
        run_ok(c, LOCK_WRITES, 0, NULL, err, errsz) ||
        !(res = run(c, "SELECT doc FROM bulwark_state.requests WHERE id = $1 FOR UPDATE", 1, params,
                    err, errsz)))
        goto fail;
    if (PQntuples(res) == 0) {
        rc = APPR_NOT_FOUND;
        goto fail;
    }
    if (appr_req_parse(PQgetvalue(res, 0, 0), (size_t)PQgetlength(res, 0, 0), &r)) {
        snprintf(err, errsz, "request %llu is not readable in the state database",
                 (unsigned long long)id);
        goto fail;
    }
    rc = fn(ctx, &r);
    if (rc != APPR_OK)
        goto fail;
    if (store_row(p, c, &r, false, err, errsz) || run_ok(c, "COMMIT", 0, NULL, err, errsz)) {
        rc = APPR_ERR;
        goto fail;
    }
    PQclear(res);
    pthread_mutex_unlock(&p->wmu);
    if (p->gateway) {
        pthread_mutex_lock(&p->mu);
        mput(p, &r, 0, mfind(p, id) != NULL);
        pthread_mutex_unlock(&p->mu);
    }
    if (out)
        *out = r;
    else
        appr_req_free(&r);
    return APPR_OK;
fail:
    PQclear(res);
    after_failure(p);
    pthread_mutex_unlock(&p->wmu);
    if (out && r.id)
        *out = r;
    else
        appr_req_free(&r);
    return rc;
}

static appr_rc_t write_tx(apg_t *p, uint64_t id, mutate_fn fn, void *ctx, appr_req_t *out,
                          char *err, size_t errsz)
{
    (void)take_dropped(p);
    appr_rc_t rc = write_once(p, id, fn, ctx, out, err, errsz);
    if (rc == APPR_ERR && take_dropped(p)) {
        if (out)
            appr_req_free(out);
        rc = write_once(p, id, fn, ctx, out, err, errsz);
    }
    return rc;
}

static appr_rc_t create_once(apg_t *p, const appr_req_t *r, char *err, size_t errsz)
{
    pthread_mutex_lock(&p->wmu);
    PGconn *c = wconn(p, err, errsz);
    bool ok = c && !run_ok(c, "BEGIN", 0, NULL, err, errsz) &&
              !run_ok(c, LOCK_WRITES, 0, NULL, err, errsz) &&
              !store_row(p, c, r, true, err, errsz) && !run_ok(c, "COMMIT", 0, NULL, err, errsz);
    if (!ok)
        after_failure(p);
    pthread_mutex_unlock(&p->wmu);
    if (ok && p->gateway) {
        pthread_mutex_lock(&p->mu);
        mput(p, r, 0, true); /* this replica holds it */
        pthread_mutex_unlock(&p->mu);
    }
    return ok ? APPR_OK : APPR_ERR;
}

appr_rc_t apg_create(apg_t *p, const appr_req_t *r, char *err, size_t errsz)
{
    (void)take_dropped(p);
    appr_rc_t rc = create_once(p, r, err, errsz);
    if (rc == APPR_ERR && take_dropped(p))
        rc = create_once(p, r, err, errsz);
    return rc;
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static appr_rc_t m_decide(void *ctx, appr_req_t *r)
{
    const appr_decision_t *d = ctx;
    if (r->state != APPR_PENDING)
        return APPR_NOT_PENDING;
    if (r->expires_us <= d->now_us)
        return APPR_EXPIRED;
    r->state = d->approve ? APPR_APPROVED : APPR_DENIED;
    r->decided_us = d->now_us;
    r->by = dup_or_null(d->by);
    r->by_role = dup_or_null(d->by_role);
    r->os_user = dup_or_null(d->os_user);
    r->via = dup_or_null(d->via);
    r->reason = dup_or_null(d->reason);
    if (d->approve && d->grant_ms > 0)
        r->grant_until_us = d->now_us + d->grant_ms * 1000;
    return APPR_OK;
}

appr_rc_t apg_decide(apg_t *p, uint64_t id, const appr_decision_t *d, appr_req_t *out, char *err,
                     size_t errsz)
{
    return write_tx(p, id, m_decide, (void *)d, out, err, errsz);
}

typedef struct {
    appr_state_t to;
    int64_t now_us;
    const char *by;
} close_ctx_t;

static appr_rc_t m_close(void *ctx, appr_req_t *r)
{
    const close_ctx_t *c = ctx;
    if (r->state != APPR_PENDING)
        return APPR_NOT_PENDING;
    r->state = c->to;
    r->decided_us = c->now_us;
    free(r->via);
    r->via = strdup("gateway");
    return APPR_OK;
}

appr_rc_t apg_close_pending(apg_t *p, uint64_t id, appr_state_t to, int64_t now_us)
{
    close_ctx_t c = {.to = to, .now_us = now_us};
    return write_tx(p, id, m_close, &c, NULL, NULL, 0);
}

static appr_rc_t m_revoke(void *ctx, appr_req_t *r)
{
    const close_ctx_t *c = ctx;
    if (!appr_grant_usable(r, c->now_us))
        return APPR_NOT_GRANT;
    r->revoked = true;
    free(r->revoked_by);
    r->revoked_by = dup_or_null(c->by);
    return APPR_OK;
}

appr_rc_t apg_revoke(apg_t *p, uint64_t id, const char *by, int64_t now_us, char *err, size_t errsz)
{
    close_ctx_t c = {.now_us = now_us, .by = by};
    return write_tx(p, id, m_revoke, &c, NULL, err, errsz);
}

static appr_rc_t m_consume(void *ctx, appr_req_t *r)
{
    (void)ctx;
    if (r->grant_until_us) /* a timed grant is never used up */
        return APPR_OK;
    if (r->used || r->revoked) /* used on another replica first: logged by the worker */
        return APPR_NOT_GRANT;
    r->used = true;
    return APPR_OK;
}

appr_rc_t apg_consume(apg_t *p, uint64_t id)
{
    return write_tx(p, id, m_consume, NULL, NULL, NULL, 0);
}

/* A one-use grant's use, confirmed: the row is read FOR UPDATE under the
 * writes lock, so of two replicas racing for it exactly one finds it unused. */
typedef struct {
    char *why;
    size_t whysz;
} claim_ctx_t;

static appr_rc_t m_claim(void *ctx, appr_req_t *r)
{
    claim_ctx_t *c = ctx;
    const char *no = appr_claim_refusal(r);
    if (no) {
        snprintf(c->why, c->whysz, "%s", no);
        return APPR_NOT_GRANT;
    }
    if (!r->grant_until_us)
        r->used = true;
    return APPR_OK;
}

appr_rc_t apg_claim(apg_t *p, uint64_t id, char *why, size_t whysz)
{
    claim_ctx_t c = {.why = why, .whysz = whysz};
    appr_req_t out;
    appr_rc_t rc = write_tx(p, id, m_claim, &c, &out, why, whysz);
    if (rc == APPR_NOT_GRANT && p->gateway && out.id) {
        /* used elsewhere: this replica's table learns it now, not at the next poll */
        pthread_mutex_lock(&p->mu);
        mput(p, &out, 0, mfind(p, id) != NULL);
        pthread_mutex_unlock(&p->mu);
    }
    appr_req_free(&out);
    return rc;
}

appr_rc_t apg_prune(apg_t *p, int64_t before_us, int64_t now_us, size_t max, size_t *pruned)
{
    char before[24], now[24], lim[24], err[300];
    snprintf(before, sizeof(before), "%lld", (long long)before_us);
    snprintf(now, sizeof(now), "%lld", (long long)now_us);
    snprintf(lim, sizeof(lim), "%zu", max);
    const char *params[] = {before, now, lim};
    *pruned = 0;
    pthread_mutex_lock(&p->wmu);
    PGconn *c = wconn(p, err, sizeof(err));
    PGresult *res =
        c ? run(c,
                "DELETE FROM bulwark_state.requests WHERE id IN (SELECT id FROM "
                "bulwark_state.requests WHERE created_us < $1 AND (NOT live OR (until_us > 0 AND "
                "until_us <= $2)) ORDER BY id LIMIT $3)",
                3, params, err, sizeof(err))
          : NULL;
    if (res)
        *pruned = (size_t)strtoull(PQcmdTuples(res), NULL, 10);
    else
        after_failure(p);
    PQclear(res);
    pthread_mutex_unlock(&p->wmu);
    return res ? APPR_OK : APPR_ERR;
}

/* ---- reads ------------------------------------------------------------------------------ */

/* CLI: rows of a query, each parsed and handed to fn (non-zero stops). */
static int query_docs(apg_t *p, const char *sql, int n, const char *const *params,
                      int (*fn)(void *arg, appr_req_t *r), void *arg)
{
    char err[300];
    PGresult *res = NULL;
    (void)take_dropped(p);
    for (int attempt = 0; attempt < 2 && !res; attempt++) {
        if (attempt && !take_dropped(p))
            break;
        pthread_mutex_lock(&p->wmu);
        PGconn *c = wconn(p, err, sizeof(err));
        res = c ? run(c, sql, n, params, err, sizeof(err)) : NULL;
        if (!res)
            after_failure(p);
        pthread_mutex_unlock(&p->wmu);
    }
    if (!res) {
        log_event(LOG_ERROR, "state_query_failed", "error=\"%s\"", err);
        return -1;
    }
    int stop = 0;
    for (int i = 0; i < PQntuples(res) && !stop; i++) {
        appr_req_t r;
        if (appr_req_parse(PQgetvalue(res, i, 0), (size_t)PQgetlength(res, i, 0), &r))
            continue;
        stop = fn(arg, &r);
        appr_req_free(&r);
    }
    PQclear(res);
    return stop;
}

static int take_first(void *arg, appr_req_t *r)
{
    appr_req_t *out = arg;
    *out = *r;
    memset(r, 0, sizeof(*r));
    return 1;
}

appr_rc_t apg_get(apg_t *p, uint64_t id, appr_req_t *out)
{
    memset(out, 0, sizeof(*out));
    if (p->gateway) {
        pthread_mutex_lock(&p->mu);
        mentry_t *e = mfind(p, id);
        appr_rc_t rc = e ? appr_copy(&e->r, out) : APPR_NOT_FOUND;
        pthread_mutex_unlock(&p->mu);
        return rc;
    }
    char ids[24];
    snprintf(ids, sizeof(ids), "%llu", (unsigned long long)id);
    const char *params[] = {ids};
    int rc = query_docs(p, "SELECT doc FROM bulwark_state.requests WHERE id = $1", 1, params,
                        take_first, out);
    return rc < 0 ? APPR_ERR : rc == 0 ? APPR_NOT_FOUND : APPR_OK;
}

static bool key_matches(const appr_req_t *r, const appr_key_t *k)
{
    return r->fingerprint && r->sub && r->role && r->target &&
           !strcmp(r->fingerprint, k->fingerprint) && !strcmp(r->sub, k->sub) &&
           !strcmp(r->role, k->role) && !strcmp(r->target, k->target) &&
           !strcmp(r->iss ? r->iss : "", k->iss ? k->iss : "");
}

typedef struct {
    const appr_key_t *k;
    int64_t now_us;
    bool (*skip)(void *arg, uint64_t id);
    void *skip_arg;
    uint64_t id;
    int64_t until_us;
} grant_q_t;

static int grant_one(void *arg, appr_req_t *r)
{
    grant_q_t *q = arg;
    if (!key_matches(r, q->k) || !appr_grant_usable(r, q->now_us) ||
        (q->skip && q->skip(q->skip_arg, r->id)))
        return 0;
    q->id = r->id;
    q->until_us = r->grant_until_us;
    return 1;
}

appr_rc_t apg_find_grant(apg_t *p, const appr_key_t *k, int64_t now_us,
                         bool (*skip)(void *arg, uint64_t id), void *arg, uint64_t *id,
                         int64_t *until_us)
{
    grant_q_t q = {.k = k, .now_us = now_us, .skip = skip, .skip_arg = arg};
    int found;
    if (p->gateway) {
        found = 0;
        pthread_mutex_lock(&p->mu);
        for (size_t i = 0; i < p->n && !found; i++)
            found = grant_one(&q, &p->m[i].r);
        pthread_mutex_unlock(&p->mu);
    } else {
        found = query_docs(p,
                           "SELECT doc FROM bulwark_state.requests WHERE live AND state = "
                           "'approved' ORDER BY id",
                           0, NULL, grant_one, &q);
        if (found < 0)
            return APPR_ERR;
    }
    if (!found)
        return APPR_NOT_FOUND;
    *id = q.id;
    *until_us = q.until_us;
    return APPR_OK;
}

typedef struct {
    int filter;
    int64_t now_us;
    int (*fn)(void *arg, const appr_req_t *r);
    void *arg;
} list_q_t;

static int list_one(void *arg, appr_req_t *r)
{
    list_q_t *q = arg;
    bool show =
        q->filter == APPR_LIST_ALL ||
        (q->filter == APPR_LIST_PENDING && r->state == APPR_PENDING && r->expires_us > q->now_us) ||
        (q->filter == APPR_LIST_GRANTS && appr_grant_usable(r, q->now_us));
    return show ? q->fn(q->arg, r) : 0;
}

static int by_id_desc(const void *a, const void *b)
{
    uint64_t x = (*(const mentry_t *const *)a)->r.id, y = (*(const mentry_t *const *)b)->r.id;
    return x < y ? 1 : x > y ? -1 : 0;
}

int apg_list(apg_t *p, int filter, int64_t now_us, size_t max_scan,
             int (*fn)(void *arg, const appr_req_t *r), void *arg)
{
    list_q_t q = {filter, now_us, fn, arg};
    if (!p->gateway) {
        char lim[24];
        snprintf(lim, sizeof(lim), "%zu", max_scan ? max_scan : (size_t)100000);
        const char *params[] = {lim};
        return query_docs(p,
                          filter == APPR_LIST_ALL
                              ? "SELECT doc FROM bulwark_state.requests ORDER BY id DESC LIMIT $1"
                              : "SELECT doc FROM bulwark_state.requests WHERE live ORDER BY id "
                                "DESC LIMIT $1",
                          1, params, list_one, &q);
    }
    /* the mirror, newest first (a bounded table; the loop may call this) */
    pthread_mutex_lock(&p->mu);
    mentry_t **order = malloc((p->n ? p->n : 1) * sizeof(*order));
    int stop = -1;
    if (order) {
        for (size_t i = 0; i < p->n; i++)
            order[i] = &p->m[i];
        qsort(order, p->n, sizeof(*order), by_id_desc);
        stop = 0;
        for (size_t i = 0; i < p->n && !stop && (!max_scan || i < max_scan); i++)
            stop = list_one(&q, &order[i]->r);
    }
    free(order);
    pthread_mutex_unlock(&p->mu);
    return stop;
}

uint64_t apg_next_id(apg_t *p)
{
    uint64_t id = 0;
    pthread_mutex_lock(&p->mu);
    if (p->up && p->id_next && p->id_next < p->id_end)
        id = p->id_next++;
    pthread_mutex_unlock(&p->mu);
    return id;
}

bool apg_available(apg_t *p, char *why, size_t whysz)
{
    if (!p->gateway)
        return true;
    pthread_mutex_lock(&p->mu);
    bool up = p->up;
    if (!up)
        snprintf(why, whysz, "%s", p->down_why[0] ? p->down_why : "not connected yet");
    pthread_mutex_unlock(&p->mu);
    return up;
}

/* ---- the state thread (gateway) --------------------------------------------------------- */

static void set_down(apg_t *p, const char *why)
{
    pthread_mutex_lock(&p->mu);
    bool news = p->up || strcmp(p->down_why, why) != 0;
    p->up = false;
    snprintf(p->down_why, sizeof(p->down_why), "%s", why);
    pthread_mutex_unlock(&p->mu);
    if (news)
        log_event(LOG_ERROR, "state_store_down", "error=\"%s\"", why);
}

/* Read rows into the mirror; the highest seq seen goes to *last. -1 on error. */
static int absorb(apg_t *p, PGresult *res, int64_t *last, bool *changed)
{
    for (int i = 0; i < PQntuples(res); i++) {
        int64_t seq = strtoll(PQgetvalue(res, i, 0), NULL, 10);
        appr_req_t r;
        if (appr_req_parse(PQgetvalue(res, i, 1), (size_t)PQgetlength(res, i, 1), &r))
            continue;
        pthread_mutex_lock(&p->mu);
        mentry_t *e = mfind(p, r.id);
        bool differs = !e || e->r.state != r.state || e->r.used != r.used ||
                       e->r.revoked != r.revoked || e->r.grant_until_us != r.grant_until_us;
        mput(p, &r, seq, e != NULL);
        pthread_mutex_unlock(&p->mu);
        *changed |= differs;
        appr_req_free(&r);
        if (seq > *last)
            *last = seq;
    }
    return 0;
}

/* After (re)connecting: every live row and every request the mirror tracks. */
static int full_sync(apg_t *p, PGconn *c, int64_t *last, char *err, size_t errsz)
{
    PGresult *res =
        run(c, "SELECT coalesce(max(seq), 0) FROM bulwark_state.requests", 0, NULL, err, errsz);
    if (!res)
        return -1;
    *last = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    /* the ids the mirror tracks, as an array literal */
    pthread_mutex_lock(&p->mu);
    size_t cap = 3 + p->n * 21;
    char *ids = malloc(cap);
    if (ids) {
        size_t o = 0;
        ids[o++] = '{';
        for (size_t i = 0; i < p->n; i++)
            o += (size_t)snprintf(ids + o, cap - o, "%s%llu", i ? "," : "",
                                  (unsigned long long)p->m[i].r.id);
        snprintf(ids + o, cap - o, "}");
    }
    pthread_mutex_unlock(&p->mu);
    if (!ids) {
        snprintf(err, errsz, "out of memory");
        return -1;
    }
    char now[24], lim[24];
    snprintf(now, sizeof(now), "%lld", (long long)wall_us());
    snprintf(lim, sizeof(lim), "%d", MIRROR_MAX);
    const char *params[] = {now, ids, lim};
    res = run(c,
              "SELECT seq, doc FROM bulwark_state.requests WHERE (live AND (until_us = 0 OR "
              "until_us > $1)) OR id = ANY($2::bigint[]) ORDER BY id DESC LIMIT $3",
              3, params, err, errsz);
    free(ids);
    if (!res)
        return -1;
    bool changed = false;
    int64_t ignore = 0;
    absorb(p, res, &ignore, &changed);
    PQclear(res);
    return 0;
}

static int poll_changes(apg_t *p, PGconn *c, int64_t *last, bool *changed, char *err, size_t errsz)
{
    for (;;) {
        char since[24], lim[24];
        snprintf(since, sizeof(since), "%lld", (long long)*last);
        snprintf(lim, sizeof(lim), "%d", BATCH);
        const char *params[] = {since, lim};
        PGresult *res = run(c,
                            "SELECT seq, doc FROM bulwark_state.requests WHERE seq > $1 ORDER BY "
                            "seq LIMIT $2",
                            2, params, err, errsz);
        if (!res)
            return -1;
        int n = PQntuples(res);
        absorb(p, res, last, changed);
        PQclear(res);
        if (n < BATCH)
            return 0;
    }
}

static int refill_ids(apg_t *p, PGconn *c, char *err, size_t errsz)
{
    pthread_mutex_lock(&p->mu);
    bool low = !p->id_next || p->id_end - p->id_next < ID_LOW;
    pthread_mutex_unlock(&p->mu);
    if (!low)
        return 0;
    PGresult *res = run(c, "SELECT nextval('bulwark_state.request_ids')", 0, NULL, err, errsz);
    if (!res)
        return -1;
    uint64_t v = strtoull(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    pthread_mutex_lock(&p->mu);
    p->id_next = v;
    p->id_end = v + ID_BLOCK;
    pthread_mutex_unlock(&p->mu);
    return 0;
}

static void nap_ms(apg_t *p, int64_t ms)
{
    while (ms > 0 && !atomic_load(&p->stop)) {
        int64_t step = ms < 100 ? ms : 100;
        struct timespec t = {.tv_sec = 0, .tv_nsec = step * 1000000};
        nanosleep(&t, NULL);
        ms -= step;
    }
}

static void *state_main(void *arg)
{
    apg_t *p = arg;
    PGconn *c = NULL;
    int64_t backoff = BACKOFF_MIN_MS, last = 0;
    char err[300];
    while (!atomic_load(&p->stop)) {
        if (!c) {
            char lq[120];
            snprintf(lq, sizeof(lq), "LISTEN %s", p->channel);
            c = connect_db(p, err, sizeof(err));
            if (c &&
                (migrate(c, err, sizeof(err)) || run_ok(c, lq, 0, NULL, err, sizeof(err)) ||
                 full_sync(p, c, &last, err, sizeof(err)) || refill_ids(p, c, err, sizeof(err)))) {
                PQfinish(c);
                c = NULL;
            }
            if (!c) {
                set_down(p, err);
                nap_ms(p, backoff);
                backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
                continue;
            }
            backoff = BACKOFF_MIN_MS;
            pthread_mutex_lock(&p->mu);
            p->up = true;
            p->down_why[0] = 0;
            pthread_mutex_unlock(&p->mu);
            log_event(LOG_INFO, "state_store_up", "channel=%s", p->channel);
            if (p->changed)
                p->changed(p->changed_arg);
        }
        bool changed = false;
        if (poll_changes(p, c, &last, &changed, err, sizeof(err)) ||
            refill_ids(p, c, err, sizeof(err))) {
            PQfinish(c);
            c = NULL;
            set_down(p, err);
            continue;
        }
        if (changed && p->changed)
            p->changed(p->changed_arg);
        /* wait for a notification, or the next poll */
        struct pollfd pfd = {.fd = PQsocket(c), .events = POLLIN};
        int64_t wait = p->poll_ms < 100 ? p->poll_ms : 100, waited = 0;
        bool notified = false;
        while (!notified && waited < p->poll_ms && !atomic_load(&p->stop)) {
            int n = poll(&pfd, 1, (int)wait);
            waited += wait;
            if (n > 0) {
                if (!PQconsumeInput(c)) {
                    clean_err(PQerrorMessage(c), err, sizeof(err));
                    break;
                }
                PGnotify *nt;
                while ((nt = PQnotifies(c))) {
                    notified = true;
                    PQfreemem(nt);
                }
                if (PQstatus(c) != CONNECTION_OK)
                    break;
            }
        }
        if (PQstatus(c) != CONNECTION_OK || (pfd.revents & (POLLHUP | POLLERR))) {
            if (PQstatus(c) != CONNECTION_OK)
                clean_err(PQerrorMessage(c), err, sizeof(err));
            else
                snprintf(err, sizeof(err), "the connection to the state database was lost");
            PQfinish(c);
            c = NULL;
            set_down(p, err);
        }
    }
    PQfinish(c);
    return NULL;
}

/* ---- opening ------------------------------------------------------------------------------ */

static char *read_dsn(const char *path, char *err, size_t errsz)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errsz, "%s: cannot read the state DSN file", path);
        return NULL;
    }
    char *buf = calloc(1, DSN_MAX + 1);
    size_t n = buf ? fread(buf, 1, DSN_MAX + 1, f) : 0;
    fclose(f);
    if (!buf || n > DSN_MAX) {
        snprintf(err, errsz, "%s: the state DSN is too long", path);
        free(buf);
        return NULL;
    }
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        buf[--n] = 0;
    if (!n) {
        snprintf(err, errsz, "%s: the state DSN file is empty", path);
        free(buf);
        return NULL;
    }
    return buf;
}

appr_store_t *appr_pg_open(const cfg_t *cfg, void (*changed)(void *arg), void *arg, char *err,
                           size_t errsz)
{
    if (!cfg->state.postgres || !cfg->state.dsn_file) {
        snprintf(err, errsz, "state.backend is not \"postgres\"");
        return NULL;
    }
    appr_store_t *st = calloc(1, sizeof(*st));
    apg_t *p = calloc(1, sizeof(*p));
    char *dsn = read_dsn(cfg->state.dsn_file, err, errsz);
    if (p)
        p->m = calloc(MIRROR_MAX, sizeof(*p->m));
    if (!st || !p || !dsn || !p->m) {
        if (dsn && (!st || !p || !p->m))
            snprintf(err, errsz, "out of memory");
        if (p)
            free(p->m);
        free(st);
        free(p);
        free(dsn);
        return NULL;
    }
    p->dsn = dsn;
    snprintf(p->channel, sizeof(p->channel), "%s", cfg->state.channel);
    p->poll_ms = cfg->approvals.poll_interval_ms > 0 ? cfg->approvals.poll_interval_ms : 200;
    pthread_mutex_init(&p->wmu, NULL);
    pthread_mutex_init(&p->mu, NULL);
    st->pg = p;
    if (!changed) {
        /* the CLI: connect now, so that a wrong DSN is reported at once */
        pthread_mutex_lock(&p->wmu);
        PGconn *c = wconn(p, err, errsz);
        pthread_mutex_unlock(&p->wmu);
        if (!c) {
            char e2[400];
            snprintf(e2, sizeof(e2), "the state database: %s", err);
            snprintf(err, errsz, "%s", e2);
            appr_close(st);
            return NULL;
        }
        return st;
    }
    p->gateway = true;
    p->changed = changed;
    p->changed_arg = arg;
    snprintf(p->down_why, sizeof(p->down_why), "not connected yet");
    if (pthread_create(&p->thread, NULL, state_main, p) != 0) {
        p->gateway = false;
        snprintf(err, errsz, "cannot start the state thread");
        appr_close(st);
        return NULL;
    }
    return st;
}

void apg_close(apg_t *p)
{
    if (!p)
        return;
    if (p->gateway) {
        atomic_store(&p->stop, true);
        pthread_join(p->thread, NULL);
    }
    PQfinish(p->wconn);
    for (size_t i = 0; i < p->n; i++)
        appr_req_free(&p->m[i].r);
    free(p->m);
    pthread_mutex_destroy(&p->wmu);
    pthread_mutex_destroy(&p->mu);
    free(p->dsn);
    free(p);
}
