/*
 * What the proxy writes to the audit store (SPEC 7), and when.
 *
 * Logins (failed or not), session ends, and every statement: its STATEMENT
 * record is appended after the decision and before the statement goes
 * upstream; the gate holds the statement until that record is durable when
 * the durability mode asks for it (strict: every statement; strict-writes:
 * those that may change data or schema; batched: none). Each statement that
 * went upstream then gets a RESULT record when it completes: command tag, row
 * count, error, and the first capture_rows rows / capture_bytes bytes as the
 * client received them.
 *
 * In-flight statements form a FIFO in the order their replies come back. A
 * Simple Query completes at its ReadyForQuery (it may hold several
 * statements); an extended-protocol Execute completes at its CommandComplete,
 * ErrorResponse, EmptyQueryResponse or PortalSuspended, or is closed as
 * skipped by the ReadyForQuery of its Sync when an earlier error made the
 * server skip it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "audit/audit.h"
#include "pgwire/pgwire.h"
#include "proxy/internal.h"
#include "util/log.h"

typedef struct inflight {
    struct inflight *next;
    uint64_t seq;
    uint64_t sync_index; /* sync points sent before it */
    cJSON *params;
    char kind; /* 'Q' simple query, 'E' execute */
    char tag[64];
    char sqlstate[6];
    char *error;
    uint64_t rows;
    cJSON *columns, *types, *values;
    size_t captured_bytes;
    bool truncated;
} inflight_t;

struct recorder {
    inflight_t *head, *tail;
    size_t n;
};

static int64_t wall_us(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

static audit_t *store(const session_t *s)
{
    return s->srv->audit;
}

/* -1 when the record could not be appended (the caller applies on_failure). */
static int append(session_t *s, audit_rec_type_t type, const char *sid, cJSON *f, uint64_t *seq)
{
    if (!store(s)) {
        cJSON_Delete(f);
        return 0;
    }
    uint64_t tmp;
    if (audit_append(store(s), type, sid, f, seq ? seq : &tmp) < 0) {
        log_event(LOG_ERROR, "audit_append_failed", "session=%s type=%s on_failure=%s", s->id,
                  audit_rec_type_name(type), s->rt->cfg->audit.on_failure_allow ? "allow" : "deny");
        return -1;
    }
    return 0;
}

void rec_login_failed(session_t *s, const char *reason, const char *sqlstate)
{
    metrics_login_failed(s->srv->metrics, reason);
    cJSON *f = cJSON_CreateObject();
    cJSON_AddStringToObject(f, "reason", reason);
    cJSON_AddStringToObject(f, "sqlstate", sqlstate);
    if (s->role_name)
        cJSON_AddStringToObject(f, "role", s->role_name);
    if (s->target_name)
        cJSON_AddStringToObject(f, "target", s->target_name);
    cJSON_AddStringToObject(f, "client", s->peer);
    (void)append(s, AUDIT_REC_LOGIN_FAILED, s->id, f, NULL);
}

void rec_session_start(session_t *s)
{
    cJSON *f = cJSON_CreateObject();
    cJSON_AddStringToObject(f, "sub", s->subject ? s->subject : "");
    cJSON_AddStringToObject(f, "iss", s->issuer ? s->issuer : "");
    cJSON_AddStringToObject(f, "role", s->role_name);
    cJSON_AddStringToObject(f, "target", s->target_name);
    cJSON_AddStringToObject(f, "client", s->peer);
    if (s->client.ssl)
        cJSON_AddStringToObject(f, "tls", ep_tls_version(&s->client));
    else
        cJSON_AddNullToObject(f, "tls");
    cJSON_AddStringToObject(f, "application_name", s->app_name ? s->app_name : "");
    s->recorded_start = append(s, AUDIT_REC_SESSION_START, s->id, f, NULL) == 0 && store(s);
}

static void inflight_free(inflight_t *e)
{
    free(e->error);
    cJSON_Delete(e->params);
    cJSON_Delete(e->columns);
    cJSON_Delete(e->types);
    cJSON_Delete(e->values);
    free(e);
}

void rec_session_end(session_t *s, const char *reason)
{
    if (s->rec) {
        for (inflight_t *e = s->rec->head, *n; e; e = n) {
            n = e->next;
            inflight_free(e);
        }
        free(s->rec);
        s->rec = NULL;
    }
    if (!s->recorded_start)
        return;
    cJSON *f = cJSON_CreateObject();
    cJSON_AddStringToObject(f, "reason", reason);
    cJSON_AddNumberToObject(f, "statements", (double)s->n_statements);
    cJSON_AddNumberToObject(f, "denied", (double)s->n_denied);
    cJSON_AddNumberToObject(f, "bytes_in", (double)s->bytes_c2u);
    cJSON_AddNumberToObject(f, "bytes_out", (double)s->bytes_u2c);
    (void)append(s, AUDIT_REC_SESSION_END, s->id, f, NULL);
}

int rec_statement(session_t *s, const rec_stmt_t *st, uint64_t *seq, bool *wait)
{
    *seq = 0;
    *wait = false;
    s->n_statements++;
    if (st->refused)
        s->n_denied++;
    if (!store(s)) {
        cJSON_Delete(st->params);
        cJSON_Delete(st->intent);
        return 0;
    }
    cJSON *f = cJSON_CreateObject();
    cJSON_AddStringToObject(f, "sql", st->sql ? st->sql : "");
    cJSON_AddStringToObject(f, "protocol", st->protocol);
    cJSON_AddStringToObject(f, "decision", st->decision);
    if (st->rule)
        cJSON_AddStringToObject(f, "rule", st->rule);
    if (st->message)
        cJSON_AddStringToObject(f, "message", st->message);
    if (st->params)
        cJSON_AddItemToObject(f, "params", st->params);
    if (st->intent)
        cJSON_AddItemToObject(f, "intent", st->intent);
    if (st->approval)
        cJSON_AddNumberToObject(f, "approval", (double)st->approval);
    cJSON_AddBoolToObject(f, "writes", st->writes);
    cJSON_AddNumberToObject(f, "start", (double)wall_us());
    if (append(s, AUDIT_REC_STATEMENT, s->id, f, seq) < 0)
        return -1;
    cfg_durability_t d = s->rt->cfg->audit.durability;
    /* on_failure allow: a failing store holds nothing up (the append was
     * accepted and is written when the store recovers). */
    *wait = !st->refused && (d == CFG_DUR_STRICT || (d == CFG_DUR_STRICT_WRITES && st->writes)) &&
            audit_durable_seq(store(s)) < *seq &&
            !(s->rt->cfg->audit.on_failure_allow && audit_failing(store(s)));
    return 0;
}

bool rec_durable(const session_t *s, uint64_t seq)
{
    return !store(s) || audit_durable_seq(store(s)) >= seq;
}

bool rec_failing(const session_t *s)
{
    return store(s) && audit_failing(store(s));
}

void rec_refused_result(session_t *s, uint64_t seq, const char *sqlstate, const char *message)
{
    if (!store(s) || !seq)
        return;
    cJSON *f = cJSON_CreateObject();
    cJSON_AddNumberToObject(f, "stmt", (double)seq);
    cJSON_AddNumberToObject(f, "end", (double)wall_us());
    cJSON_AddStringToObject(f, "sqlstate", sqlstate);
    cJSON_AddStringToObject(f, "error", message ? message : "");
    (void)append(s, AUDIT_REC_RESULT, s->id, f, NULL);
}

/* ---- results of statements that went upstream ------------------------------------- */

void rec_inflight_push(session_t *s, uint64_t seq, char kind, uint64_t sync_index, cJSON *params)
{
    if (!store(s) || !seq) {
        cJSON_Delete(params);
        return;
    }
    if (!s->rec && !(s->rec = calloc(1, sizeof(*s->rec))))
        return;
    inflight_t *e = calloc(1, sizeof(*e));
    if (!e) {
        cJSON_Delete(params);
        return;
    }
    e->seq = seq;
    e->kind = kind;
    e->sync_index = sync_index;
    e->params = params;
    if (s->rec->tail)
        s->rec->tail->next = e;
    else
        s->rec->head = e;
    s->rec->tail = e;
    s->rec->n++;
}

bool rec_inflight(const session_t *s)
{
    return s->rec && s->rec->head;
}

static void complete(session_t *s)
{
    inflight_t *e = s->rec->head;
    s->rec->head = e->next;
    if (!s->rec->head)
        s->rec->tail = NULL;
    s->rec->n--;
    bool truncated =
        e->truncated || (e->values && e->rows > (uint64_t)cJSON_GetArraySize(e->values));
    cJSON *f = cJSON_CreateObject();
    cJSON_AddNumberToObject(f, "stmt", (double)e->seq);
    cJSON_AddNumberToObject(f, "end", (double)wall_us());
    if (e->params) {
        cJSON_AddItemToObject(f, "params", e->params);
        e->params = NULL;
    }
    if (e->tag[0])
        cJSON_AddStringToObject(f, "tag", e->tag);
    cJSON_AddNumberToObject(f, "rows", (double)e->rows);
    if (e->sqlstate[0]) {
        cJSON_AddStringToObject(f, "sqlstate", e->sqlstate);
        cJSON_AddStringToObject(f, "error", e->error ? e->error : "");
    }
    if (e->columns) {
        cJSON_AddItemToObject(f, "columns", e->columns);
        cJSON_AddItemToObject(f, "types", e->types);
        cJSON_AddItemToObject(f, "values", e->values ? e->values : cJSON_CreateArray());
        e->columns = e->types = e->values = NULL;
    }
    if (truncated)
        cJSON_AddBoolToObject(f, "truncated", true);
    (void)append(s, AUDIT_REC_RESULT, s->id, f, NULL);
    inflight_free(e);
}

static void on_row_description(inflight_t *e, const uint8_t *body, size_t len)
{
    pgw_row_description_t rd;
    if (e->columns || pgw_read_row_description(body, len, &rd) < 0)
        return;
    e->columns = cJSON_CreateArray();
    e->types = cJSON_CreateArray();
    e->values = cJSON_CreateArray();
    pgw_column_t col;
    pgw_iter_t it = rd.fields;
    while (pgw_column_next(&it, &col) == 1) {
        cJSON_AddItemToArray(e->columns, cJSON_CreateString(col.name));
        cJSON_AddItemToArray(e->types, cJSON_CreateNumber((double)col.type_oid));
    }
}

static void on_data_row(session_t *s, inflight_t *e, const uint8_t *body, size_t len)
{
    e->rows++;
    const cfg_t *cfg = s->rt->cfg;
    if (!e->values || cJSON_GetArraySize(e->values) >= cfg->audit.capture_rows ||
        e->captured_bytes + len > cfg->audit.capture_bytes) {
        if (e->values)
            e->truncated = true;
        return;
    }
    pgw_datarow_t row;
    if (pgw_read_datarow(body, len, &row) < 0)
        return;
    cJSON *r = cJSON_CreateArray();
    const uint8_t *v;
    int32_t vlen;
    pgw_iter_t it = row.cols;
    while (pgw_values_next(&it, &v, &vlen) == 1) {
        if (vlen < 0) {
            cJSON_AddItemToArray(r, cJSON_CreateNull());
            continue;
        }
        char *str = strndup((const char *)v, (size_t)vlen);
        cJSON_AddItemToArray(r, str ? cJSON_CreateString(str) : cJSON_CreateNull());
        free(str);
    }
    cJSON_AddItemToArray(e->values, r);
    e->captured_bytes += len;
}

static void on_error(inflight_t *e, const uint8_t *body, size_t len)
{
    pgw_error_t err;
    memset(&err, 0, sizeof(err));
    if (e->sqlstate[0] || pgw_read_error(body, len, &err) < 0)
        return;
    snprintf(e->sqlstate, sizeof(e->sqlstate), "%s", err.sqlstate ? err.sqlstate : "XX000");
    e->error = strdup(err.message ? err.message : "");
}

/* One whole backend message while statements are in flight. DataRows are
 * passed only while a row could still be captured (rows are counted from
 * the command tag otherwise). */
void rec_backend(session_t *s, char type, const uint8_t *body, size_t len)
{
    inflight_t *e = s->rec ? s->rec->head : NULL;
    if (!e)
        return;
    switch (type) {
    case 'T':
        on_row_description(e, body, len);
        break;
    case 'D':
        on_data_row(s, e, body, len);
        break;
    case 'C': {
        const char *tag;
        if (pgw_read_command_complete(body, len, &tag) == 0) {
            snprintf(e->tag, sizeof(e->tag), "%s", tag);
            const char *sp = strrchr(tag, ' ');
            if (sp && sp[1] >= '0' && sp[1] <= '9')
                e->rows = strtoull(sp + 1, NULL, 10);
        }
        if (e->kind == 'E')
            complete(s);
        break;
    }
    case 'E':
        on_error(e, body, len);
        if (e->kind == 'E')
            complete(s);
        break;
    case 'I':
    case 's':
        if (e->kind == 'E')
            complete(s);
        break;
    default:
        break;
    }
}

/* A ReadyForQuery: the cycle is over. Its Simple Query completes, and
 * Executes the server skipped after an error end with it. */
void rec_ready(session_t *s, uint64_t syncs_recv)
{
    while (s->rec && s->rec->head && s->rec->head->sync_index < syncs_recv)
        complete(s);
}

bool rec_wants_rows(const session_t *s)
{
    const inflight_t *e = s->rec ? s->rec->head : NULL;
    return e && e->values && cJSON_GetArraySize(e->values) < s->rt->cfg->audit.capture_rows;
}
