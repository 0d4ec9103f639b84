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

#include "pgwire/pgwire.h"
#include "policy/policy.h"
#include "proxy/internal.h"
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

struct gate {
    policy_session_t *ps;
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
    log_event(LOG_INFO, "statement_refused", "session=%s role=%s message_type=%s sqlstate=%s rule=%s reason=%s",
              s->id, s->role_name, what, r->sqlstate[0] ? r->sqlstate : "42501",
              r->rule ? r->rule : "-", log_q(q, sizeof(q), r->message ? r->message : ""));
}

/* Decide one query string. 1 = allowed (effects applied), 0 = refused (out
 * holds what the client must see), -1 = out of memory. */
static int decide(session_t *s, const char *what, const char *sql, size_t len,
                  policy_result_t *r)
{
    const policy_role_t *role = policy_set_role(s->rt->policies, s->role_name);
    if (!role)
        return -1;
    if (policy_check(role, s->srv->policy_cache, s->gate->ps, sql, len, r) < 0)
        return -1;
    if (r->decision == POLICY_ALLOW) {
        policy_session_apply(s->gate->ps, r);
        return 1;
    }
    log_refusal(s, what, r);
    return 0;
}

/* ---- frontend messages ---------------------------------------------------------- */

static gate_verdict_t on_query(session_t *s, const uint8_t *body, size_t len)
{
    const char *sql;
    if (pgw_read_query(body, len, &sql) < 0)
        return GATE_MALFORMED;
    policy_result_t r;
    int d = decide(s, "Query", sql, strlen(sql), &r);
    gate_verdict_t v = GATE_FORWARD;
    if (d < 0)
        v = GATE_FAILED;
    else if (d == 0 && send_sentinel(s, 'Q', NULL, r.sqlstate, r.message, r.cursorpos) < 0)
        v = GATE_FAILED;
    else if (d == 0)
        v = GATE_REPLACED;
    policy_result_free(&r);
    return v;
}

static gate_verdict_t on_parse(session_t *s, const uint8_t *body, size_t len)
{
    pgw_parse_t p;
    if (pgw_read_parse(body, len, &p) < 0)
        return GATE_MALFORMED;
    policy_result_t r;
    int d = decide(s, "Parse", p.sql, p.sql_len, &r);
    gate_verdict_t v = GATE_FORWARD;
    if (d < 0) {
        v = GATE_FAILED;
    } else if (d == 1) {
        refused_forget(s->gate, p.stmt);
    } else if (refused_remember(s->gate, p.stmt, r.message ? r.message : "refused") < 0 ||
               send_sentinel(s, 'P', p.stmt, r.sqlstate, r.message, r.cursorpos) < 0) {
        v = GATE_FAILED;
    } else {
        v = GATE_REPLACED;
    }
    policy_result_free(&r);
    return v;
}

/* Bind names its statement before its (maybe huge) parameters: `prefix` holds
 * at least the portal and statement names. */
static gate_verdict_t on_bind(session_t *s, const uint8_t *prefix, size_t n)
{
    const char *portal = (const char *)prefix;
    size_t pl = strnlen(portal, n);
    if (pl == n)
        return GATE_MALFORMED;
    const char *stmt = portal + pl + 1;
    if (strnlen(stmt, n - pl - 1) == n - pl - 1)
        return GATE_MALFORMED;
    refused_t *r = *refused_find(s->gate, stmt);
    if (!r)
        return GATE_FORWARD;
    char msg[600];
    snprintf(msg, sizeof(msg), "%s", r->message);
    char name[96];
    snprintf(name, sizeof(name), SENTINEL_PREFIX "%s", s->gate->nonce);
    return send_sentinel(s, 'P', name, "42501", msg, 0) < 0 ? GATE_FAILED : GATE_SKIP;
}

static gate_verdict_t on_close(session_t *s, const uint8_t *body, size_t len)
{
    pgw_target_t t;
    if (pgw_read_close(body, len, &t) < 0)
        return GATE_MALFORMED;
    if (t.kind == 'S')
        refused_forget(s->gate, t.name);
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

gate_verdict_t gate_frontend(session_t *s, char type, const uint8_t *body, size_t len)
{
    gate_verdict_t v;
    switch (type) {
    case 'Q':
        v = on_query(s, body, len);
        s->gate->syncs_sent++;
        return v;
    case 'F':
        v = on_function_call(s);
        s->gate->syncs_sent++;
        return v;
    case 'P':
        return on_parse(s, body, len);
    case 'B':
        return on_bind(s, body, len);
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
    snprintf(msg, sizeof(msg),
             "bulwark: statement of %zu bytes refused: larger than max_statement_bytes (%llu)",
             len, (unsigned long long)s->rt->cfg->max_statement_bytes);
    log_event(LOG_INFO, "statement_refused", "session=%s role=%s reason=too_long bytes=%zu",
              s->id, s->role_name, len);
    if (type == 'Q') {
        int rc = send_sentinel(s, 'Q', NULL, "54000", msg, 0);
        s->gate->syncs_sent++;
        return rc < 0 ? GATE_FAILED : GATE_SKIP;
    }
    /* Parse: the statement name comes first in the body. */
    const char *stmt = (const char *)body;
    if (strnlen(stmt, avail) == avail)
        return GATE_MALFORMED;
    if (refused_remember(s->gate, stmt, msg) < 0 || send_sentinel(s, 'P', stmt, "54000", msg, 0) < 0)
        return GATE_FAILED;
    return GATE_SKIP;
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
    pgw_error_t out = {.severity = "ERROR", .sqlstate = q->sqlstate, .message = q->message,
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
    while (g->qlen && g->q[g->qhead].sync_index < g->syncs_recv)
        sentinel_pop(g);
    if (status == 'I')
        policy_session_txn_end(g->ps, !g->cycle_error && !g->cycle_rollback);
    g->cycle_error = g->cycle_rollback = false;
}
