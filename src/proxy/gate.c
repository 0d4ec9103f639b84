/*
 * The gate: the policy in the data path.
 *
 * Every Query and Parse is decided before it goes upstream (SPEC 5). A refused
 * statement is not dropped: it is replaced by a sentinel that fails at parse
 * analysis upstream (`SELECT bulwark_refused_<nonce>_<n>`, a column that
 * cannot exist), and the sentinel's error is rewritten on its way back into
 * the gateway's own ErrorResponse (DESIGN.md 2.9). The server thus sees an
 * error exactly where the client will, so both agree on ordering, on the
 * ReadyForQuery status and on the transaction state (inside BEGIN the
 * transaction is aborted, and a later COMMIT reports ROLLBACK), and PostgreSQL
 * itself skips the rest of an extended-protocol group until Sync.
 *
 * Sentinels wait in a queue with the number of sync points (Query, Sync,
 * FunctionCall) sent before them; a sentinel whose error never came (the
 * server skipped it after an earlier error, or answered 25P02 in an aborted
 * transaction, as it would have for the real statement) is dropped when the
 * ReadyForQuery of its cycle arrives.
 */
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "audit/audit.h"
#include "pgwire/pgwire.h"
#include "policy/policy.h"
#include "proxy/internal.h"
#include "proxy/maskflow.h"
#include "util/log.h"

#define GATE_MAX_SENTINELS 1024
#define GATE_MAX_REFUSED 4096
#define SENTINEL_PREFIX "bulwark_refused_"

typedef struct sentinel {
    uint32_t n;
    uint64_t sync_index; /* sync points sent before it */
    char sqlstate[6];
    int position;
    char *message;
} sentinel_t;

/* A named (or the unnamed) prepared statement that was refused at Parse:
 * PostgreSQL never created it, and a Bind to it is refused as well. */
typedef struct refused {
    struct refused *next;
    char *name;
    char *message;
} refused_t;

/* What each execution of an allowed prepared statement records, made once at
 * its Parse and shared by reference (refcounted, one loop only) with the
 * portals bound to it: Bind and Execute come once per execution, and copying
 * the intent there cost more than the policy check of a cached text. */
typedef struct stmt_info {
    unsigned refs;
    bool writes;
    char *rule;            /* the rule that allowed it, or NULL */
    audit_fields_t intent; /* its accesses (rec_intent), for the STATEMENT record */
    char sql[];            /* the statement's text */
} stmt_info_t;

/* Allowed prepared statements (for the audit: which STATEMENT record an
 * Execute belongs to) and the portals bound to them. */
typedef struct named {
    struct named *next;
    char *name;
    stmt_info_t *info;      /* shared between a statement and its portals */
    audit_fields_t *params; /* portals: the Bind values (one array value), or NULL */
    /* statements let through by an approval (held.c): the request, the
     * grant's end (-1: one execution only) and the executions so far */
    uint64_t approval;
    int64_t approval_until_us;
    uint32_t execs;
} named_t;

#define STMT_BUCKETS 256
#define GATE_MAX_NAMED 100000

struct gate {
    policy_session_t *ps;
    named_t *stmts[STMT_BUCKETS];
    size_t nstmts;
    named_t *portals;
    char nonce[17];
    uint32_t next_n;
    uint64_t syncs_sent, syncs_recv;
    sentinel_t q[GATE_MAX_SENTINELS];
    size_t qhead, qlen;
    refused_t *refused;
    size_t nrefused;
    bool cycle_error, cycle_rollback;
};

gate_t *gate_new(const char *search_path, const char *session_user, const char *const *schemas,
                 size_t nschemas)
{
    gate_t *g = calloc(1, sizeof(*g));
    uint8_t rnd[8];
    if (!g || RAND_bytes(rnd, sizeof(rnd)) != 1)
        goto fail;
    for (int i = 0; i < 8; i++)
        snprintf(g->nonce + 2 * i, 3, "%02x", rnd[i]);
    g->ps = policy_session_new(search_path, session_user);
    if (!g->ps || (nschemas && policy_session_set_schemas(g->ps, schemas, nschemas) < 0))
        goto fail;
    return g;
fail:
    gate_free(g);
    return NULL;
}

static void info_release(stmt_info_t *i)
{
    if (!i || --i->refs > 0)
        return;
    free(i->rule);
    audit_fields_free(&i->intent);
    free(i);
}

/* NULL when out of memory. */
static stmt_info_t *info_new(const char *sql, const policy_result_t *r)
{
    size_t len = strlen(sql);
    stmt_info_t *i = calloc(1, sizeof(*i) + len + 1);
    if (!i)
        return NULL;
    i->refs = 1;
    memcpy(i->sql, sql, len + 1);
    i->writes = r->writes;
    audit_fields_init(&i->intent, 0);
    rec_intent(&i->intent, r);
    if ((r->rule && !(i->rule = strdup(r->rule))) || !audit_fields_ok(&i->intent)) {
        info_release(i);
        return NULL;
    }
    return i;
}

static void named_free(named_t *n)
{
    free(n->name);
    info_release(n->info);
    if (n->params)
        audit_fields_free(n->params);
    free(n->params);
    free(n);
}

static void named_clear(named_t **list)
{
    for (named_t *n = *list, *next; n; n = next) {
        next = n->next;
        named_free(n);
    }
    *list = NULL;
}

static named_t **named_find(named_t **list, const char *name)
{
    while (*list && strcmp((*list)->name, name))
        list = &(*list)->next;
    return list;
}

static named_t **stmt_bucket(gate_t *g, const char *name)
{
    uint32_t h = 2166136261u;
    for (const char *c = name; *c; c++)
        h = (h ^ (uint8_t)*c) * 16777619u;
    return &g->stmts[h % STMT_BUCKETS];
}

static void named_drop(named_t **list, const char *name, size_t *count)
{
    named_t **p = named_find(list, name);
    if (!*p)
        return;
    named_t *old = *p;
    *p = old->next;
    named_free(old);
    if (count)
        (*count)--;
}

/* Replace what is known under `name` by `n` (which the list then owns;
 * freed here on failure). */
static int named_put(named_t **list, const char *name, named_t *n, size_t *count)
{
    named_drop(list, name, count);
    if ((count && *count >= GATE_MAX_NAMED) || !(n->name = strdup(name))) {
        named_free(n);
        return -1;
    }
    n->next = *list;
    *list = n;
    if (count)
        (*count)++;
    return 0;
}

/* Takes the reference on info (released here on failure). */
static named_t *named_new(stmt_info_t *info)
{
    named_t *n = calloc(1, sizeof(*n));
    if (!n) {
        info_release(info);
        return NULL;
    }
    n->info = info;
    return n;
}

static void sentinel_pop(gate_t *g)
{
    free(g->q[g->qhead].message);
    g->qhead = (g->qhead + 1) % GATE_MAX_SENTINELS;
    g->qlen--;
}

void gate_free(gate_t *g)
{
    if (!g)
        return;
    while (g->qlen)
        sentinel_pop(g);
    for (refused_t *r = g->refused, *n; r; r = n) {
        n = r->next;
        free(r->name);
        free(r->message);
        free(r);
    }
    for (size_t i = 0; i < STMT_BUCKETS; i++)
        named_clear(&g->stmts[i]);
    named_clear(&g->portals);
    policy_session_free(g->ps);
    free(g);
}

/* ---- refused statements ------------------------------------------------------- */

static refused_t **refused_find(gate_t *g, const char *name)
{
    refused_t **p = &g->refused;
    while (*p && strcmp((*p)->name, name))
        p = &(*p)->next;
    return p;
}

static void refused_forget(gate_t *g, const char *name)
{
    refused_t **p = refused_find(g, name);
    if (!*p)
        return;
    refused_t *r = *p;
    *p = r->next;
    free(r->name);
    free(r->message);
    free(r);
    g->nrefused--;
}

static int refused_remember(gate_t *g, const char *name, const char *message)
{
    refused_forget(g, name);
    if (g->nrefused >= GATE_MAX_REFUSED)
        return -1;
    refused_t *r = calloc(1, sizeof(*r));
    if (!r || !(r->name = strdup(name)) || !(r->message = strdup(message))) {
        if (r)
            free(r->name);
        free(r);
        return -1;
    }
    r->next = g->refused;
    g->refused = r;
    g->nrefused++;
    return 0;
}

/* ---- sentinels ---------------------------------------------------------------- */

/* Queue the error the client will see and write the sentinel upstream: as a
 * Query (kind 'Q': answered by an error and ReadyForQuery) or as a Parse of
 * `stmt` (kind 'P': PostgreSQL then skips to Sync). */
static int send_sentinel(session_t *s, char kind, const char *stmt, const char *sqlstate,
                         const char *message, int position)
{
    gate_t *g = s->gate;
    if (g->qlen >= GATE_MAX_SENTINELS)
        return -1;
    sentinel_t *e = &g->q[(g->qhead + g->qlen) % GATE_MAX_SENTINELS];
    memset(e, 0, sizeof(*e));
    e->message = strdup(message && *message ? message : "bulwark: statement refused");
    if (!e->message)
        return -1;
    e->n = g->next_n++;
    e->sync_index = g->syncs_sent;
    snprintf(e->sqlstate, sizeof(e->sqlstate), "%s", sqlstate && *sqlstate ? sqlstate : "42501");
    e->position = position;
    g->qlen++;
    if (s->mf)
        maskflow_sentinel(s, kind);
    char sql[96];
    snprintf(sql, sizeof(sql), "SELECT " SENTINEL_PREFIX "%s_%u", g->nonce, e->n);
    if (kind == 'Q')
        pgw_write_query(&s->upstream.out, sql);
    else
        pgw_write_parse(&s->upstream.out, stmt, sql, NULL, 0);
    return 0;
}

static void log_refusal(session_t *s, const char *what, const policy_result_t *r)
{
    char q[400];
    log_event(LOG_INFO, "statement_refused",
              "session=%s role=%s message_type=%s sqlstate=%s rule=%s reason=%s", s->id,
              s->role_name, what, r->sqlstate[0] ? r->sqlstate : "42501", r->rule ? r->rule : "-",
              log_q(q, sizeof(q), r->message ? r->message : ""));
}

static const char *decision_name(policy_decision_t d)
{
    return d == POLICY_ALLOW ? "allow" : d == POLICY_REVIEW ? "review" : "deny";
}

#define AUDIT_REFUSED_MSG                                                                          \
    "bulwark: the audit store cannot record this statement; refused (audit.on_failure is deny)"

/* A decided statement: record it, then refuse it, hold it, or let it go.
 * kind 'Q' or 'P' (stmt: the Parse's statement name). */
typedef struct decided {
    char kind;
    const char *stmt;
    const char *sql;
    size_t len;
    policy_result_t r;
    char mask_msg[512]; /* a denial by masking (r.message points here) */
} decided_t;

static gate_verdict_t refuse(session_t *s, const decided_t *d, const char *sqlstate,
                             const char *message, int position, uint64_t seq)
{
    gate_t *g = s->gate;
    int rc = 0;
    if (d->kind == 'P')
        rc = refused_remember(g, d->stmt, message ? message : "refused");
    if (s->mf)
        maskflow_refused(s);
    if (rc == 0)
        rc = send_sentinel(s, d->kind, d->stmt, sqlstate, message, position);
    if (d->kind == 'P')
        named_drop(stmt_bucket(g, d->stmt), d->stmt, &g->nstmts);
    rec_refused_result(s, seq, sqlstate, message);
    return rc < 0 ? GATE_FAILED : GATE_REPLACED;
}

/* A Query that goes upstream now: its result is awaited. */
static gate_verdict_t query_sent(session_t *s, uint64_t seq)
{
    rec_inflight_push(s, seq, 'Q', s->gate->syncs_sent, NULL);
    return GATE_FORWARD;
}

/* An allowed Parse: nothing runs yet; what each Execute of it records is kept.
 * approval: the request that let it through (0 = none) and its grant's end. */
static gate_verdict_t parse_allowed(session_t *s, decided_t *d, uint64_t approval, int64_t until_us)
{
    gate_t *g = s->gate;
    refused_forget(g, d->stmt);
    if (!s->srv->audit)
        return GATE_FORWARD;
    stmt_info_t *info = info_new(d->sql, &d->r);
    named_t *n = info ? named_new(info) : NULL;
    if (n) {
        n->approval = approval;
        n->approval_until_us = until_us;
    }
    if (!n || named_put(stmt_bucket(g, d->stmt), d->stmt, n, &g->nstmts) < 0)
        return GATE_FAILED;
    return GATE_FORWARD;
}

/* An approved statement's effects (search_path, PREPARE, ...) count like an
 * allowed one's: policy_session_apply only takes allowed results, and an
 * untracked SET search_path would let later names resolve wrongly. */
static void apply_approved(policy_session_t *ps, const policy_result_t *r)
{
    policy_result_t a = *r;
    a.decision = POLICY_ALLOW;
    policy_session_apply(ps, &a);
}

/* A `review` statement (SPEC 6): a grant lets it through, otherwise it is
 * held for a human or refused naming the request (held.c). */
static gate_verdict_t settle_review(session_t *s, decided_t *d)
{
    policy_result_t *r = &d->r;
    review_out_t rv;
    review_t k = approval_review(s, d->sql, d->len, r, &rv);
    if (k == REVIEW_REFUSE)
        log_refusal(s, d->kind == 'Q' ? "Query" : "Parse", r);
    if (k == REVIEW_PASS) {
        apply_approved(s->gate->ps, r);
        if (d->kind == 'P')
            return parse_allowed(s, d, rv.approval, rv.grant_until_us ? rv.grant_until_us : -1);
    }
    rec_stmt_t st = {.protocol = d->kind == 'Q' ? "simple" : "extended",
                     .sql = d->sql,
                     .decision = "review",
                     .rule = r->rule,
                     .message = k == REVIEW_REFUSE ? rv.message : NULL,
                     .policy = r,
                     .writes = r->writes,
                     .refused = k == REVIEW_REFUSE,
                     .approval = rv.approval};
    uint64_t seq;
    bool wait;
    int rc = rec_statement(s, &st, &seq, &wait);
    if (k == REVIEW_REFUSE)
        return refuse(s, d, "42501", rv.message, 0, seq);
    if (rc < 0 && !s->rt->cfg->audit.on_failure_allow) {
        if (k == REVIEW_HOLD)
            approval_end(s, "audit store failing");
        return refuse(s, d, "58030", AUDIT_REFUSED_MSG, 0, 0);
    }
    if (k == REVIEW_HOLD) {
        s->held->stmt_seq = seq;
        s->holding = true;
        return GATE_HOLD;
    }
    if (wait) {
        s->holding = true;
        s->hold_seq = seq;
        return GATE_HOLD;
    }
    return query_sent(s, seq);
}

static gate_verdict_t settle(session_t *s, decided_t *d)
{
    policy_result_t *r = &d->r;
    if (r->decision == POLICY_REVIEW)
        return settle_review(s, d);
    bool ok = r->decision == POLICY_ALLOW;
    if (!ok)
        log_refusal(s, d->kind == 'Q' ? "Query" : "Parse", r);
    /* Allowed Parses are recorded at each Execute, with their Bind values. */
    if (ok && d->kind == 'P')
        return parse_allowed(s, d, 0, 0);
    rec_stmt_t st = {.protocol = d->kind == 'Q' ? "simple" : "extended",
                     .sql = d->sql,
                     .decision = decision_name(r->decision),
                     .rule = r->rule,
                     .message = r->message,
                     .policy = r,
                     .writes = r->writes,
                     .refused = !ok};
    uint64_t seq;
    bool wait;
    int rc = rec_statement(s, &st, &seq, &wait);
    if (!ok)
        return refuse(s, d, r->sqlstate, r->message, r->cursorpos, seq);
    if (rc < 0 && !s->rt->cfg->audit.on_failure_allow)
        return refuse(s, d, "58030", AUDIT_REFUSED_MSG, 0, 0);
    if (wait) {
        s->holding = true;
        s->hold_seq = seq;
        return GATE_HOLD;
    }
    return query_sent(s, seq);
}

/* Decide one query string (the statement of a Parse, or a Query's text). */
static gate_verdict_t decide(session_t *s, decided_t *d, size_t len)
{
    uint64_t t0 = metrics_clock_ns();
    d->len = len;
    const policy_role_t *role = policy_set_role(s->rt->policies, s->role_name);
    /* with masking on, the policy's parse tree serves the masking plan too */
    if (!role || policy_check_keep(role, s->srv->policy_cache, s->gate->ps, d->sql, len,
                                   s->mf != NULL, &d->r) < 0)
        return GATE_FAILED;
    if (d->r.decision == POLICY_ALLOW)
        policy_session_apply(s->gate->ps, &d->r);
    /* SPEC 5.3: the masks follow the data; a masked column used as a filter
     * is an oracle, denied like a rule would. */
    if (d->r.decision == POLICY_ALLOW && s->mf) {
        int m = maskflow_plan(s, s->gate->ps, d->kind, d->stmt, d->sql, len, &d->r, d->mask_msg,
                              sizeof(d->mask_msg));
        if (m < 0)
            return GATE_FAILED;
        if (m > 0) {
            d->r.decision = POLICY_DENY;
            snprintf(d->r.sqlstate, sizeof(d->r.sqlstate), "42501");
            d->r.message = d->mask_msg;
            d->r.rule = "builtin:masking";
            d->r.cursorpos = 0;
        }
    }
    gate_verdict_t v = settle(s, d);
    metrics_statement(s->srv->metrics, s->role_name, decision_name(d->r.decision), d->r.rule, t0);
    return v;
}

/* The held message (a Query or a Parse) of a decided approval hold. */
static gate_verdict_t resume_approval(session_t *s, char type, const uint8_t *body, size_t len)
{
    gate_t *g = s->gate;
    held_t *h = s->held;
    if (h->outcome == HELD_PENDING)
        return GATE_HOLD;
    decided_t d = {.kind = type == 'Q' ? 'Q' : 'P'};
    pgw_parse_t p;
    if (type == 'Q' ? pgw_read_query(body, len, &d.sql) < 0 : pgw_read_parse(body, len, &p) < 0)
        return GATE_MALFORMED;
    if (type == 'P')
        d.stmt = p.stmt, d.sql = p.sql, d.len = p.sql_len;
    else
        d.len = strlen(d.sql);
    int rc = approval_record(s);
    if (h->outcome == HELD_REFUSED) {
        char sqlstate[6], msg[sizeof(h->message)];
        uint64_t seq = h->stmt_seq;
        memcpy(sqlstate, h->sqlstate, sizeof(sqlstate));
        memcpy(msg, h->message, sizeof(msg));
        s->holding = false;
        approval_end(s, "decided");
        gate_verdict_t v = refuse(s, &d, sqlstate, msg, 0, seq);
        if (type == 'Q')
            g->syncs_sent++;
        return v;
    }
    const cfg_t *cfg = s->rt->cfg;
    bool waits =
        rc == 0 && cfg->audit.durability != CFG_DUR_BATCHED && !rec_durable(s, h->note_seq);
    /* on_failure deny: what cannot be recorded does not run, approved or not */
    if ((rc < 0 || (waits && rec_failing(s))) && !cfg->audit.on_failure_allow) {
        uint64_t seq = h->stmt_seq;
        s->holding = false;
        approval_end(s, "audit store failing");
        gate_verdict_t v = refuse(s, &d, "58030", AUDIT_REFUSED_MSG, 0, seq);
        if (type == 'Q')
            g->syncs_sent++;
        return v;
    }
    /* Approved: the decision's record is durable before the statement runs
     * (unless recording is batched, or failing with on_failure allow). */
    if (waits && !rec_failing(s))
        return GATE_HOLD; /* audit_progress resumes it */
    const policy_role_t *role = policy_set_role(s->rt->policies, s->role_name);
    if (!role || policy_check(role, s->srv->policy_cache, g->ps, d.sql, d.len, &d.r) < 0) {
        policy_result_free(&d.r);
        return GATE_FAILED;
    }
    uint64_t approval = h->id, seq = h->stmt_seq;
    int64_t until = h->grant_until_us ? h->grant_until_us : -1;
    log_event(LOG_INFO, "approval_approved", "session=%s id=%llu by=\"%s\"", s->id,
              (unsigned long long)approval, h->by);
    s->holding = false;
    approval_end(s, "approved");
    apply_approved(g->ps, &d.r);
    gate_verdict_t v;
    if (type == 'Q') {
        v = query_sent(s, seq);
        g->syncs_sent++;
    } else {
        v = parse_allowed(s, &d, approval, until);
    }
    policy_result_free(&d.r);
    return v;
}

/* The message at the input's head waited for a human (a Query or a Parse)
 * or for its record to be durable (a Query or an Execute). */
gate_verdict_t gate_resume(session_t *s, char type, const uint8_t *body, size_t len)
{
    gate_t *g = s->gate;
    if (s->held)
        return resume_approval(s, type, body, len);
    if (!rec_durable(s, s->hold_seq) && !(rec_failing(s) && s->rt->cfg->audit.on_failure_allow)) {
        if (!rec_failing(s))
            return GATE_HOLD;
        /* SPEC 3 on_failure deny: what cannot be recorded does not run. An
         * Execute is replaced by a failing Parse: the server skips to Sync. */
        s->holding = false;
        char name[96];
        snprintf(name, sizeof(name), SENTINEL_PREFIX "%s", g->nonce);
        int rc = send_sentinel(s, type == 'Q' ? 'Q' : 'P', name, "58030", AUDIT_REFUSED_MSG, 0);
        rec_refused_result(s, s->hold_seq, "58030", AUDIT_REFUSED_MSG);
        if (type == 'Q')
            g->syncs_sent++;
        return rc < 0 ? GATE_FAILED : GATE_REPLACED;
    }
    s->holding = false;
    if (type == 'Q') {
        gate_verdict_t v = query_sent(s, s->hold_seq);
        g->syncs_sent++;
        return v;
    }
    rec_inflight_push(s, s->hold_seq, 'E', g->syncs_sent, NULL);
    return GATE_FORWARD;
}

/* ---- frontend messages ---------------------------------------------------------- */

static gate_verdict_t on_query(session_t *s, const uint8_t *body, size_t len)
{
    decided_t d = {.kind = 'Q'};
    if (pgw_read_query(body, len, &d.sql) < 0)
        return GATE_MALFORMED;
    gate_verdict_t v = decide(s, &d, strlen(d.sql));
    policy_result_free(&d.r);
    if (v != GATE_HOLD)
        s->gate->syncs_sent++;
    return v;
}

static gate_verdict_t on_parse(session_t *s, const uint8_t *body, size_t len)
{
    pgw_parse_t p;
    if (pgw_read_parse(body, len, &p) < 0)
        return GATE_MALFORMED;
    decided_t d = {.kind = 'P', .stmt = p.stmt, .sql = p.sql};
    gate_verdict_t v = decide(s, &d, p.sql_len);
    policy_result_free(&d.r);
    return v;
}

/* A statement let through by an approval runs once (one Bind), or while its
 * grant lasts (approval_until_us > 0; -1 marks a used one-use grant). */
static bool approval_covers(named_t *st)
{
    if (st->approval_until_us > 0) {
        struct timeval tv;
        gettimeofday(&tv, NULL);
        return st->approval_until_us > (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
    }
    return st->execs++ == 0;
}

/* Bind names its statement before its (maybe huge) parameters: body holds at
 * least the two names, and the whole message when whole is true. */
/* The portal's Bind values for its STATEMENT records; none when the Bind is
 * malformed (the server refuses it) or memory runs out. */
static void bind_params(session_t *s, named_t *p, bool whole, const uint8_t *body, size_t n)
{
    if (!(p->params = malloc(sizeof(*p->params))))
        return;
    audit_fields_init(p->params, 0);
    if (!whole)
        audit_f_cstr(p->params, NULL, "(not captured: Bind larger than 64 KiB)");
    if (whole ? rec_bind_params(s, body, n, p->params) < 0 : !audit_fields_ok(p->params)) {
        audit_fields_free(p->params);
        free(p->params);
        p->params = NULL;
    }
}

static gate_verdict_t on_bind(session_t *s, const uint8_t *body, size_t n, bool whole)
{
    const char *portal = (const char *)body;
    size_t pl = strnlen(portal, n);
    if (pl == n)
        return GATE_MALFORMED;
    const char *stmt = portal + pl + 1;
    if (strnlen(stmt, n - pl - 1) == n - pl - 1)
        return GATE_MALFORMED;
    gate_t *g = s->gate;
    refused_t *r = *refused_find(g, stmt);
    if (r) {
        char msg[600];
        snprintf(msg, sizeof(msg), "%s", r->message);
        char name[96];
        snprintf(name, sizeof(name), SENTINEL_PREFIX "%s", g->nonce);
        return send_sentinel(s, 'P', name, "42501", msg, 0) < 0 ? GATE_FAILED : GATE_SKIP;
    }
    named_t *st = *named_find(stmt_bucket(g, stmt), stmt);
    if (st && st->approval && !approval_covers(st)) {
        char msg[300], name[96];
        snprintf(msg, sizeof(msg),
                 "bulwark: approval request %llu covered %s; prepare the statement again to ask "
                 "for a new approval",
                 (unsigned long long)st->approval,
                 st->approval_until_us > 0 ? "a grant that has ended" : "one execution");
        snprintf(name, sizeof(name), SENTINEL_PREFIX "%s", g->nonce);
        return send_sentinel(s, 'P', name, "42501", msg, 0) < 0 ? GATE_FAILED : GATE_SKIP;
    }
    if (st && s->srv->audit) {
        st->info->refs++;
        named_t *p = named_new(st->info);
        if (!p)
            return GATE_FAILED;
        p->approval = st->approval;
        bind_params(s, p, whole, body, n);
        if (named_put(&g->portals, portal, p, NULL) < 0)
            return GATE_FAILED;
    }
    return GATE_FORWARD;
}

/* Each execution of an allowed statement is a STATEMENT record with its Bind
 * values, appended before the Execute goes upstream. */
static gate_verdict_t on_execute(session_t *s, const uint8_t *body, size_t len)
{
    const char *portal = (const char *)body;
    if (!len || strnlen(portal, len) == len)
        return GATE_MALFORMED;
    named_t *p = *named_find(&s->gate->portals, portal);
    if (!p)
        return GATE_FORWARD; /* not recording, or the server will refuse it */
    rec_stmt_t st = {.protocol = "extended",
                     .sql = p->info->sql,
                     .decision = p->approval ? "review" : "allow",
                     .approval = p->approval,
                     .rule = p->info->rule,
                     .params = p->params,
                     .intent = &p->info->intent,
                     .writes = p->info->writes};
    uint64_t seq;
    bool wait;
    if (rec_statement(s, &st, &seq, &wait) < 0 && !s->rt->cfg->audit.on_failure_allow) {
        char name[96];
        snprintf(name, sizeof(name), SENTINEL_PREFIX "%s", s->gate->nonce);
        return send_sentinel(s, 'P', name, "58030", AUDIT_REFUSED_MSG, 0) < 0 ? GATE_FAILED
                                                                              : GATE_REPLACED;
    }
    if (wait) {
        s->holding = true;
        s->hold_seq = seq;
        return GATE_HOLD;
    }
    rec_inflight_push(s, seq, 'E', s->gate->syncs_sent, NULL);
    return GATE_FORWARD;
}

static gate_verdict_t on_close(session_t *s, const uint8_t *body, size_t len)
{
    pgw_target_t t;
    if (pgw_read_close(body, len, &t) < 0)
        return GATE_MALFORMED;
    if (t.kind == 'S') {
        refused_forget(s->gate, t.name);
        named_drop(stmt_bucket(s->gate, t.name), t.name, &s->gate->nstmts);
    } else {
        named_drop(&s->gate->portals, t.name, NULL);
    }
    return GATE_FORWARD;
}

static gate_verdict_t on_function_call(session_t *s)
{
    return send_sentinel(s, 'Q', NULL, "42501",
                         "bulwark: fast-path function calls (FunctionCall) are refused", 0) < 0
               ? GATE_FAILED
               : GATE_REPLACED;
}

size_t gate_bind_prefix_len(const uint8_t *body, size_t avail)
{
    const uint8_t *a = memchr(body, 0, avail);
    if (!a)
        return 0;
    const uint8_t *b = memchr(a + 1, 0, avail - (size_t)(a + 1 - body));
    return b ? (size_t)(b + 1 - body) : 0;
}

gate_verdict_t gate_frontend(session_t *s, char type, const uint8_t *body, size_t len, bool whole)
{
    gate_verdict_t v;
    switch (type) {
    case 'Q':
        return on_query(s, body, len);
    case 'F':
        v = on_function_call(s);
        s->gate->syncs_sent++;
        return v;
    case 'P':
        return on_parse(s, body, len);
    case 'B':
        return on_bind(s, body, len, whole);
    case 'E':
        return on_execute(s, body, len);
    case 'C':
        return on_close(s, body, len);
    case 'S':
        s->gate->syncs_sent++;
        return GATE_FORWARD;
    default:
        return GATE_FORWARD;
    }
}

gate_verdict_t gate_oversized(session_t *s, char type, const uint8_t *body, size_t avail,
                              size_t len)
{
    char msg[200];
    snprintf(msg, sizeof(msg), "bulwark: statement of %zu bytes exceeds max_statement_bytes (%llu)",
             len, (unsigned long long)s->rt->cfg->max_statement_bytes);
    log_event(LOG_INFO, "statement_refused", "session=%s role=%s reason=too_long bytes=%zu", s->id,
              s->role_name, len);
    decided_t d = {.kind = type == 'Q' ? 'Q' : 'P', .stmt = ""};
    if (type == 'P') {
        d.stmt = (const char *)body; /* the statement name comes first */
        if (strnlen(d.stmt, avail) == avail)
            return GATE_MALFORMED;
    }
    rec_stmt_t st = {.protocol = type == 'Q' ? "simple" : "extended",
                     .sql = "(not recorded: larger than max_statement_bytes)",
                     .decision = "deny",
                     .rule = "builtin:max_statement_bytes",
                     .message = msg,
                     .refused = true};
    uint64_t seq;
    bool wait;
    (void)rec_statement(s, &st, &seq, &wait);
    metrics_statement(s->srv->metrics, s->role_name, "deny", st.rule, metrics_clock_ns());
    gate_verdict_t v = refuse(s, &d, "54000", msg, 0, seq);
    if (type == 'Q')
        s->gate->syncs_sent++;
    return v == GATE_REPLACED ? GATE_SKIP : v;
}

/* ---- backend messages ---------------------------------------------------------- */

bool gate_expects_errors(const session_t *s)
{
    return s->gate && s->gate->qlen > 0;
}

/* A sentinel's error: replace it with the one the client must see. */
bool gate_backend_error(session_t *s, const uint8_t *body, size_t len)
{
    gate_t *g = s->gate;
    g->cycle_error = true;
    if (!g->qlen)
        return false;
    pgw_error_t e;
    memset(&e, 0, sizeof(e));
    if (pgw_read_error(body, len, &e) < 0 || !e.message)
        return false;
    char prefix[64];
    snprintf(prefix, sizeof(prefix), SENTINEL_PREFIX "%s_", g->nonce);
    const char *at = strstr(e.message, prefix);
    if (!at)
        return false;
    uint32_t n = (uint32_t)strtoul(at + strlen(prefix), NULL, 10);
    while (g->qlen && g->q[g->qhead].n < n)
        sentinel_pop(g);
    if (!g->qlen || g->q[g->qhead].n != n)
        return false;
    sentinel_t *q = &g->q[g->qhead];
    pgw_error_t out = {.severity = "ERROR",
                       .sqlstate = q->sqlstate,
                       .message = q->message,
                       .position = q->position};
    pgw_write_error_full(&s->client.out, 'E', &out);
    sentinel_pop(g);
    return true;
}

void gate_command_complete(session_t *s, const uint8_t *body, size_t len)
{
    const char *tag;
    if (pgw_read_command_complete(body, len, &tag) == 0)
        s->gate->cycle_rollback = !strcmp(tag, "ROLLBACK");
}

void gate_ready(session_t *s, char status)
{
    gate_t *g = s->gate;
    g->syncs_recv++;
    rec_ready(s, g->syncs_recv);
    if (status == 'I')
        named_clear(&g->portals); /* portals end with their transaction */
    while (g->qlen && g->q[g->qhead].sync_index < g->syncs_recv)
        sentinel_pop(g);
    if (status == 'I')
        policy_session_txn_end(g->ps, !g->cycle_error && !g->cycle_rollback);
    g->cycle_error = g->cycle_rollback = false;
}
