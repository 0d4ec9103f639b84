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
 *
 * Cost: STATEMENT and RESULT records are built as audit_fields_t streams
 * (audit.h), not cJSON: a memcpy per value into a buffer the loop thread
 * reuses, and captured rows copied straight from the DataRow. The writer
 * thread makes them canonical JSON and hashes them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <pthread.h>

#include "audit/audit.h"
#include "mask/mask.h"
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
    bool described; /* a RowDescription came: cap holds "columns", "types" and an open "values" */
    audit_fields_t cap; /* members of the RESULT record, spliced in at completion */
    size_t captured_rows, captured_bytes;
    bool truncated;
} inflight_t;

/* The loop thread's record under construction, reused statement after
 * statement (one per thread: never shared). */
static _Thread_local audit_fields_t tl_fields;
static _Thread_local bool tl_fields_ready;
#define FIELDS_KEEP (256u << 10) /* a buffer grown past this is released after use */

static audit_fields_t *fields_begin(void)
{
    if (!tl_fields_ready) {
        audit_fields_init(&tl_fields, 0);
        tl_fields_ready = true;
    }
    audit_fields_reset(&tl_fields);
    return &tl_fields;
}

void rec_thread_end(void)
{
    if (tl_fields_ready) {
        audit_fields_free(&tl_fields);
        tl_fields_ready = false;
    }
}

static void fields_end(void)
{
    if (tl_fields.b.cap > FIELDS_KEEP) {
        audit_fields_free(&tl_fields);
        audit_fields_init(&tl_fields, 0);
    }
}

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

static int append_failed(session_t *s, audit_rec_type_t type)
{
    log_event(LOG_ERROR, "audit_append_failed", "session=%s type=%s on_failure=%s", s->id,
              audit_rec_type_name(type), s->rt->cfg->audit.on_failure_allow ? "allow" : "deny");
    return -1;
}

/* -1 when the record could not be appended (the caller applies on_failure). */
static int append(session_t *s, audit_rec_type_t type, const char *sid, cJSON *f, uint64_t *seq)
{
    if (!store(s)) {
        cJSON_Delete(f);
        return 0;
    }
    uint64_t tmp;
    if (audit_append(store(s), type, sid, f, seq ? seq : &tmp) < 0)
        return append_failed(s, type);
    return 0;
}

/* The same for a record built in fields (fields_begin); ends it. */
static int append_fields(session_t *s, audit_rec_type_t type, audit_fields_t *f, uint64_t *seq)
{
    uint64_t tmp;
    int rc = audit_append_fields(store(s), type, s->id, f, seq ? seq : &tmp);
    fields_end();
    return rc < 0 ? append_failed(s, type) : 0;
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
    audit_fields_free(&e->cap);
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

/* The intent of a statement: every access. */
static void put_intent(audit_fields_t *f, const char *key, const policy_result_t *r)
{
    audit_f_open(f, key, '[');
    for (size_t i = 0; i < r->n_stmts; i++)
        for (size_t j = 0; j < r->stmts[i].n_accesses; j++) {
            const policy_access_t *a = &r->stmts[i].accesses[j];
            audit_f_open(f, NULL, '{');
            audit_f_cstr(f, "op", policy_op_name(a->op));
            if (a->object && *a->object)
                audit_f_cstr(f, "object", a->object);
            audit_f_cstr(f, "decision", policy_decision_name(a->decision));
            audit_f_close(f);
        }
    audit_f_close(f);
}

void rec_intent(audit_fields_t *f, const policy_result_t *r)
{
    put_intent(f, NULL, r);
}

int rec_statement(session_t *s, const rec_stmt_t *st, uint64_t *seq, bool *wait)
{
    *seq = 0;
    *wait = false;
    s->n_statements++;
    if (st->refused)
        s->n_denied++;
    if (!store(s))
        return 0;
    audit_fields_t *f = fields_begin();
    audit_f_cstr(f, "sql", st->sql ? st->sql : "");
    audit_f_cstr(f, "protocol", st->protocol);
    audit_f_cstr(f, "decision", st->decision);
    if (st->rule)
        audit_f_cstr(f, "rule", st->rule);
    if (st->message)
        audit_f_cstr(f, "message", st->message);
    if (st->params)
        audit_f_splice(f, "params", st->params);
    if (st->policy)
        put_intent(f, "intent", st->policy);
    else if (st->intent)
        audit_f_splice(f, "intent", st->intent);
    if (st->approval)
        audit_f_int(f, "approval", (int64_t)st->approval);
    audit_f_bool(f, "writes", st->writes);
    audit_f_int(f, "start", wall_us());
    if (append_fields(s, AUDIT_REC_STATEMENT, f, seq) < 0)
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
    audit_fields_t *f = fields_begin();
    audit_f_int(f, "stmt", (int64_t)seq);
    audit_f_int(f, "end", wall_us());
    audit_f_cstr(f, "sqlstate", sqlstate);
    audit_f_cstr(f, "error", message ? message : "");
    (void)append_fields(s, AUDIT_REC_RESULT, f, NULL);
}

/* ---- Bind parameter values ----------------------------------------------------------- */

/* Every content detector of SPEC 5.3, whatever the role's masks say: the audit
 * trail must not become the place where an agent's secrets and card numbers
 * end up in clear. Compiled once (immutable, shared by every loop thread);
 * each loop scans with its own scratch (srv->mask_scratch, freed with the loop). */
static mask_rules_t *param_rules;
static pthread_once_t param_rules_once = PTHREAD_ONCE_INIT;

static void param_rules_compile(void)
{
    cJSON *masks = cJSON_Parse("[{\"detectors\":[\"email\",\"credit_card\",\"us_ssn\","
                               "\"iban\",\"phone\",\"secret\"],\"method\":\"redact\"}]");
    char err[256];
    param_rules = masks ? mask_rules_compile(masks, NULL, 0, err, sizeof(err)) : NULL;
    if (!param_rules)
        log_event(LOG_ERROR, "audit_param_detectors_unavailable", "reason=\"%s\"",
                  masks ? err : "out of memory");
    cJSON_Delete(masks);
}

/* text with every detector hit redacted, added to the array f builds; false
 * when it cannot be scanned (the caller then records no value: fail closed). */
static bool scrubbed(server_t *srv, audit_fields_t *f, const char *text, size_t len)
{
    pthread_once(&param_rules_once, param_rules_compile);
    if (!param_rules || (!srv->mask_scratch && !(srv->mask_scratch = mask_scratch_new())))
        return false;
    /* The public detector entry point for a lone text is the NOTIFY payload
     * rewriter: wrap the value as a NotificationResponse body. */
    buf_t in, out;
    buf_init(&in, 0);
    buf_init(&out, 0);
    buf_put_u32(&in, 0);
    buf_put_u8(&in, 0); /* channel "" */
    buf_append(&in, text, len);
    buf_put_u8(&in, 0);
    bool ok = true;
    pgw_notification_t nt;
    int rc = in.failed
                 ? -1
                 : mask_rewrite_notification(param_rules, srv->mask_scratch, in.data, in.len, &out);
    if (rc == 0)
        audit_f_cstr(f, NULL, (const char *)in.data + 5);
    else if (rc == 1 && out.len > 5 && pgw_read_notification(out.data + 5, out.len - 5, &nt) == 0)
        audit_f_cstr(f, NULL, nt.payload);
    else
        ok = false;
    buf_free(&in);
    buf_free(&out);
    return ok;
}

int rec_bind_params(session_t *s, const uint8_t *body, size_t len, audit_fields_t *out)
{
    pgw_bind_t b;
    if (pgw_read_bind(body, len, &b) < 0)
        return -1;
    audit_f_open(out, NULL, '[');
    const uint8_t *v;
    int32_t vlen;
    pgw_iter_t it = b.params;
    for (unsigned i = 0; pgw_values_next(&it, &v, &vlen) == 1; i++) {
        if (vlen < 0) {
            audit_f_null(out, NULL);
            continue;
        }
        char *str;
        if (pgw_format_of(&b.param_formats, i) == PGW_FMT_BINARY) {
            str = malloc(2 * (size_t)vlen + 3);
            if (str) {
                static const char hx[] = "0123456789abcdef";
                str[0] = '\\', str[1] = 'x';
                for (int32_t k = 0; k < vlen; k++)
                    str[2 + 2 * k] = hx[v[k] >> 4], str[3 + 2 * k] = hx[v[k] & 15];
                str[2 + 2 * (size_t)vlen] = 0;
            }
        } else {
            str = strndup((const char *)v, (size_t)vlen); /* text: up to a NUL, as before */
        }
        if (!str || !scrubbed(s->srv, out, str, strlen(str)))
            audit_f_cstr(out, NULL, "(not recorded: the detectors could not scan it)");
        free(str);
    }
    audit_f_close(out);
    return audit_fields_ok(out) ? 0 : -1;
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
    bool truncated = e->truncated || (e->described && e->rows > e->captured_rows);
    audit_fields_t *f = fields_begin();
    audit_f_int(f, "stmt", (int64_t)e->seq);
    audit_f_int(f, "end", wall_us());
    if (e->params)
        audit_f_json(f, "params", e->params);
    if (e->tag[0])
        audit_f_cstr(f, "tag", e->tag);
    audit_f_int(f, "rows", (int64_t)(e->rows > INT64_MAX ? INT64_MAX : e->rows));
    if (e->sqlstate[0]) {
        audit_f_cstr(f, "sqlstate", e->sqlstate);
        audit_f_cstr(f, "error", e->error ? e->error : "");
    }
    if (e->described) {
        audit_f_close(&e->cap); /* values */
        audit_f_splice(f, NULL, &e->cap);
    }
    if (truncated)
        audit_f_bool(f, "truncated", true);
    (void)append_fields(s, AUDIT_REC_RESULT, f, NULL);
    inflight_free(e);
}

static void on_row_description(inflight_t *e, const uint8_t *body, size_t len)
{
    pgw_row_description_t rd;
    if (e->described || pgw_read_row_description(body, len, &rd) < 0)
        return;
    e->described = true;
    audit_fields_init(&e->cap, 0);
    pgw_column_t col;
    pgw_iter_t it = rd.fields;
    audit_f_open(&e->cap, "columns", '[');
    while (pgw_column_next(&it, &col) == 1)
        audit_f_cstr(&e->cap, NULL, col.name);
    audit_f_close(&e->cap);
    it = rd.fields;
    audit_f_open(&e->cap, "types", '[');
    while (pgw_column_next(&it, &col) == 1)
        audit_f_int(&e->cap, NULL, (int64_t)col.type_oid);
    audit_f_close(&e->cap);
    audit_f_open(&e->cap, "values", '[');
}

static void on_data_row(session_t *s, inflight_t *e, const uint8_t *body, size_t len)
{
    e->rows++;
    const cfg_t *cfg = s->rt->cfg;
    if (!e->described || e->captured_rows >= (size_t)cfg->audit.capture_rows ||
        e->captured_bytes + len > cfg->audit.capture_bytes) {
        if (e->described)
            e->truncated = true;
        return;
    }
    pgw_datarow_t row;
    if (pgw_read_datarow(body, len, &row) < 0)
        return;
    const uint8_t *v;
    int32_t vlen;
    pgw_iter_t it = row.cols;
    audit_f_open(&e->cap, NULL, '[');
    while (pgw_values_next(&it, &v, &vlen) == 1) {
        if (vlen < 0) {
            audit_f_null(&e->cap, NULL);
            continue;
        }
        /* text as cJSON kept it: up to the first NUL (binary values have them) */
        const uint8_t *nul = memchr(v, 0, (size_t)vlen);
        audit_f_str(&e->cap, NULL, (const char *)v, nul ? (size_t)(nul - v) : (size_t)vlen);
    }
    audit_f_close(&e->cap);
    e->captured_rows++;
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
    return e && e->described && e->captured_rows < (size_t)s->rt->cfg->audit.capture_rows;
}
