/*
 * The admin console: the target named `bulwark` (SPEC 1; pgbouncer's admin
 * console is the model). Roles with "admin": true log in there with their
 * own token; nothing goes upstream. Simple Query only:
 *
 *   SHOW APPROVALS                 pending requests
 *   SHOW GRANTS                    approvals that still let statements through
 *   APPROVE n [FOR 'duration']     as the logged-in identity (SPEC 6 rules)
 *   DENY n ['reason']
 *   SHOW SESSIONS                  live sessions of this gateway
 *   SHOW STATS                     counters, as (stat, value) rows
 *
 * Every answer is a result set (RowDescription, DataRow..., CommandComplete,
 * ReadyForQuery) so that psql prints it as a table; anything else is an
 * ERROR and the session goes on. APPROVE and DENY are written by the
 * approval worker thread (never on the loop): the session waits for the
 * outcome (server.c hands it to admin_decided) before it reads on.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

#include "approval/approval.h"
#include "audit/audit.h"
#include "pgwire/pgwire.h"
#include "proxy/internal.h"
#include "proxy/workers.h"
#include "util/dur.h"
#include "util/log.h"

#define ADMIN_MAX_ROWS 1000
/* Requests looked at per SHOW (newest first): reads on the loop stay short. */
#define ADMIN_MAX_SCAN 20000
#define ADMIN_MAX_COLS 12

static int64_t wall_us(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

/* ---- result sets ------------------------------------------------------------------- */

typedef struct table {
    const char *names[ADMIN_MAX_COLS];
    size_t ncols, nrows;
    char **cells; /* row-major, owned */
} table_t;

static void table_init(table_t *t, const char *const *names, size_t ncols)
{
    memset(t, 0, sizeof(*t));
    t->ncols = ncols;
    for (size_t i = 0; i < ncols; i++)
        t->names[i] = names[i];
    t->cells = calloc((size_t)ADMIN_MAX_ROWS * ncols, sizeof(char *));
}

/* Add a row of ncols strings (NULL = SQL NULL). */
static void table_row(table_t *t, const char *const *vals)
{
    if (!t->cells || t->nrows >= ADMIN_MAX_ROWS)
        return;
    for (size_t i = 0; i < t->ncols; i++)
        t->cells[t->nrows * t->ncols + i] = vals[i] ? strdup(vals[i]) : NULL;
    t->nrows++;
}

static void table_free(table_t *t)
{
    for (size_t i = 0; t->cells && i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    t->cells = NULL;
}

static void table_send(session_t *s, table_t *t, const char *tag)
{
    buf_t *b = &s->client.out;
    pgw_column_t cols[ADMIN_MAX_COLS];
    for (size_t i = 0; i < t->ncols; i++)
        cols[i] = (pgw_column_t){.name = t->names[i], .type_oid = 25, .typlen = -1, .typmod = -1};
    pgw_write_row_description(b, cols, (uint16_t)t->ncols);
    for (size_t r = 0; r < t->nrows; r++) {
        pgw_value_t v[ADMIN_MAX_COLS];
        for (size_t i = 0; i < t->ncols; i++) {
            const char *c = t->cells[r * t->ncols + i];
            v[i] = (pgw_value_t){c, c ? (int32_t)strlen(c) : -1};
        }
        pgw_write_datarow(b, v, (uint16_t)t->ncols);
    }
    char tg[64];
    snprintf(tg, sizeof(tg), "%s", tag ? tag : "SHOW");
    pgw_write_command_complete(b, tg);
    table_free(t);
}

static void error(session_t *s, const char *sqlstate, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void error(session_t *s, const char *sqlstate, const char *fmt, ...)
{
    char m[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof(m), fmt, ap);
    va_end(ap);
    pgw_write_error(&s->client.out, "ERROR", sqlstate, m);
}

/* ---- commands ------------------------------------------------------------------------ */

static void one_line(char *out, size_t n, const char *in)
{
    size_t j = 0;
    for (; in && *in && j + 4 < n; in++)
        out[j++] = *in == '\n' || *in == '\r' || *in == '\t' ? ' ' : *in;
    if (in && *in)
        memcpy(out + j, "...", 3), j += 3;
    out[j] = 0;
}

static void fmt_age(char *out, size_t n, int64_t from_us, int64_t now_us)
{
    int64_t ms = (now_us - from_us) / 1000;
    dur_format(ms < 0 ? 0 : ms / 1000 * 1000, out, n);
}

static void fmt_time(char *out, size_t n, int64_t us)
{
    time_t t = (time_t)(us / 1000000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, n, "%Y-%m-%d %H:%M:%SZ", &tm);
}

typedef struct list_ctx {
    table_t *t;
    int64_t now;
    bool grants;
} list_ctx_t;

static int approval_row(void *arg, const appr_req_t *r)
{
    list_ctx_t *c = arg;
    if (c->t->nrows >= ADMIN_MAX_ROWS)
        return 1;
    char id[24], age[32], sql[90], last[64] = "once";
    snprintf(id, sizeof(id), "%llu", (unsigned long long)r->id);
    fmt_age(age, sizeof(age), r->created_us, c->now);
    one_line(sql, sizeof(sql), r->sql);
    if (c->grants && r->grant_until_us)
        fmt_time(last, sizeof(last), r->grant_until_us);
    else if (!c->grants)
        fmt_time(last, sizeof(last), r->expires_us);
    const char *row[] = {id,      appr_state_at(r, c->now),
                         age,     r->sub,
                         r->role, r->target,
                         r->rule, c->grants ? r->by : r->reject ? "reject" : "hold",
                         last,    sql};
    table_row(c->t, row);
    return 0;
}

static bool show_approvals(session_t *s, bool grants)
{
    static const char *const names[] = {"id",     "state", "age",  "sub",     "role",
                                        "target", "rule",  "mode", "expires", "statement"};
    static const char *const gnames[] = {"id",     "state", "age", "sub",   "role",
                                         "target", "rule",  "by",  "until", "statement"};
    table_t t;
    table_init(&t, grants ? gnames : names, 10);
    list_ctx_t c = {&t, wall_us(), grants};
    if (appr_list(appr_worker_store(s->srv->approvals),
                  grants ? APPR_LIST_GRANTS : APPR_LIST_PENDING, c.now, ADMIN_MAX_SCAN,
                  approval_row, &c) < 0) {
        table_free(&t);
        error(s, "58030", "bulwark: cannot read the approvals database");
        return false;
    }
    table_send(s, &t, "SHOW");
    return true;
}

/* SHOW SESSIONS and SHOW STATS ask every worker (workers_gather): each
 * appends its part on its own thread, the console's worker builds the table.
 * A part of SHOW SESSIONS is rows of SESSION_COLS cells, each 'S' text '\0'
 * or 'N' (null); one of SHOW STATS is STAT_COUNTS uint64 values. */
#define SESSION_COLS 11
#define STAT_COUNTS 5

static void put_cell(buf_t *b, const char *v)
{
    if (!v) {
        buf_append(b, "N", 1);
        return;
    }
    buf_append(b, "S", 1);
    buf_append(b, v, strlen(v) + 1);
}

static void admin_resume(session_t *s, bool ok);

static void sessions_part(server_t *srv, buf_t *out)
{
    uint64_t now = now_ms();
    char wk[16];
    snprintf(wk, sizeof(wk), "%d", srv->worker_id);
    for (session_t *x = srv->sessions; x; x = x->next) {
        if (x->state != ST_RELAY)
            continue;
        char st[48], age[32], n[24], d[24];
        if (x->held)
            snprintf(st, sizeof(st), "held (request %llu)", (unsigned long long)x->held->id);
        else
            snprintf(st, sizeof(st), "%s",
                     x->admin              ? "console"
                     : x->tx_status == 'I' ? "idle"
                                           : "active");
        dur_format((int64_t)(now - x->started_ms) / 1000 * 1000, age, sizeof(age));
        snprintf(n, sizeof(n), "%llu", (unsigned long long)x->n_statements);
        snprintf(d, sizeof(d), "%llu", (unsigned long long)x->n_denied);
        const char *row[SESSION_COLS] = {x->id,   x->role_name, x->subject, x->target_name,
                                         x->peer, st,           age,        n,
                                         d,       x->app_name,  wk};
        for (int i = 0; i < SESSION_COLS; i++)
            put_cell(out, row[i]);
    }
}

static void sessions_done(session_t *s, const buf_t *parts, int nparts, bool later)
{
    static const char *const names[SESSION_COLS] = {
        "id",  "role",       "sub",    "target",           "client", "state",
        "age", "statements", "denied", "application_name", "worker"};
    table_t t;
    table_init(&t, names, SESSION_COLS);
    for (int w = 0; w < nparts; w++) {
        const char *p = (const char *)parts[w].data,
                   *end = p + (parts[w].failed ? 0 : parts[w].len);
        while (p < end) {
            const char *row[SESSION_COLS] = {0};
            for (int i = 0; i < SESSION_COLS && p < end; i++) {
                row[i] = *p == 'S' ? p + 1 : NULL;
                p += *p == 'S' ? strlen(p + 1) + 2 : 1;
            }
            table_row(&t, row);
        }
    }
    table_send(s, &t, "SHOW");
    if (later)
        admin_resume(s, true);
}

static void show_sessions(session_t *s)
{
    if (workers_gather(s, sessions_part, sessions_done) < 0)
        error(s, "53000", "bulwark: cannot ask every worker; try again");
}

static void stat_row(table_t *t, const char *name, unsigned long long v)
{
    char b[32];
    snprintf(b, sizeof(b), "%llu", v);
    const char *row[] = {name, b};
    table_row(t, row);
}

static int count_one(void *arg, const appr_req_t *r)
{
    (*(unsigned long long *)arg)++;
    return 0;
}

static void stats_part(server_t *srv, buf_t *out)
{
    uint64_t v[STAT_COUNTS] = {(uint64_t)srv->nsessions, 0, (uint64_t)srv->nheld, 0, 0};
    for (session_t *x = srv->sessions; x; x = x->next) {
        v[1] += x->state == ST_RELAY;
        v[3] += x->n_statements;
        v[4] += x->n_denied;
    }
    buf_append(out, v, sizeof(v));
}

static void stats_done(session_t *s, const buf_t *parts, int nparts, bool later)
{
    static const char *const names[] = {"stat", "value"};
    table_t t;
    table_init(&t, names, 2);
    server_t *srv = s->srv;
    uint64_t v[STAT_COUNTS] = {0};
    for (int w = 0; w < nparts; w++)
        for (int i = 0; i < STAT_COUNTS && !parts[w].failed && parts[w].len == sizeof(v); i++) {
            uint64_t x;
            memcpy(&x, parts[w].data + i * sizeof(x), sizeof(x));
            v[i] += x;
        }
    stat_row(&t, "connections", (unsigned long long)v[0]);
    stat_row(&t, "sessions", (unsigned long long)v[1]);
    stat_row(&t, "held_statements", (unsigned long long)v[2]);
    stat_row(&t, "statements_of_live_sessions", (unsigned long long)v[3]);
    stat_row(&t, "denied_of_live_sessions", (unsigned long long)v[4]);
    stat_row(&t, "workers", (unsigned long long)nparts);
    unsigned long long pending = 0;
    if (srv->approvals && appr_list(appr_worker_store(srv->approvals), APPR_LIST_PENDING, 0,
                                    ADMIN_MAX_SCAN, count_one, &pending) == 0)
        stat_row(&t, "approvals_pending", pending);
    policy_cache_stats_t cs;
    workers_cache_stats(srv->hub, &cs);
    stat_row(&t, "parse_cache_hits", (unsigned long long)cs.hits);
    stat_row(&t, "parse_cache_misses", (unsigned long long)cs.misses);
    if (srv->audit) {
        audit_stats_t as;
        audit_get_stats(srv->audit, &as);
        stat_row(&t, "audit_records_appended", (unsigned long long)as.appended);
        stat_row(&t, "audit_records_written", (unsigned long long)as.written);
        stat_row(&t, "audit_records_refused", (unsigned long long)as.refused);
        stat_row(&t, "audit_commits", (unsigned long long)as.commits);
    }
    table_send(s, &t, "SHOW");
    if (later)
        admin_resume(s, true);
}

static void show_stats(session_t *s)
{
    if (workers_gather(s, stats_part, stats_done) < 0)
        error(s, "53000", "bulwark: cannot ask every worker; try again");
}

/* ---- APPROVE / DENY ------------------------------------------------------------------- */

/* Words and 'quoted strings' ('' inside is a quote) of a command. */
#define MAX_WORDS 6
typedef struct words {
    char *w[MAX_WORDS];
    bool quoted[MAX_WORDS];
    int n;
    bool bad;
} words_t;

static void split(char *q, words_t *out)
{
    memset(out, 0, sizeof(*out));
    char *p = q;
    for (;;) {
        while (isspace((unsigned char)*p) || *p == ';')
            p++;
        if (!*p)
            return;
        if (out->n == MAX_WORDS) {
            out->bad = true;
            return;
        }
        if (*p == '\'') {
            char *dst = ++p, *start = p;
            for (;;) {
                if (!*p) {
                    out->bad = true;
                    return;
                }
                if (*p == '\'' && p[1] == '\'')
                    *dst++ = '\'', p += 2;
                else if (*p == '\'')
                    break;
                else
                    *dst++ = *p++;
            }
            *dst = 0;
            p++;
            out->quoted[out->n] = true;
            out->w[out->n++] = start;
            continue;
        }
        char *start = p;
        while (*p && !isspace((unsigned char)*p) && *p != ';' && *p != '\'')
            p++;
        char c = *p;
        *p = 0;
        out->w[out->n++] = start;
        if (!c)
            return;
        if (c != '\'')
            p++;
        else
            *p = '\''; /* a quote right after a word: start the next token there */
    }
}

static bool word_is(const words_t *w, int i, const char *kw)
{
    return i < w->n && !w->quoted[i] && !strcasecmp(w->w[i], kw);
}

static void decide(session_t *s, const words_t *w, bool approve)
{
    char *end;
    unsigned long long id = w->n > 1 && !w->quoted[1] ? strtoull(w->w[1], &end, 10) : 0;
    if (!id || *end) {
        error(s, "42601", "bulwark: syntax: %s",
              approve ? "APPROVE n [FOR 'duration']" : "DENY n ['reason']");
        return;
    }
    int64_t grant_ms = 0;
    const char *reason = NULL;
    if (approve && w->n == 4 && word_is(w, 2, "for")) {
        if (!appr_parse_duration(w->w[3], &grant_ms)) {
            error(s, "22023", "bulwark: FOR '%s' is not a duration (15m, 1h)", w->w[3]);
            return;
        }
    } else if (!approve && w->n == 3) {
        reason = w->w[2];
    } else if (w->n != 2) {
        error(s, "42601", "bulwark: syntax: %s",
              approve ? "APPROVE n [FOR 'duration']" : "DENY n ['reason']");
        return;
    }
    appr_req_t r;
    appr_rc_t rc = appr_get(appr_worker_store(s->srv->approvals), id, &r);
    if (rc != APPR_OK) {
        error(s, rc == APPR_NOT_FOUND ? "42704" : "58030", "bulwark: %s %llu",
              rc == APPR_NOT_FOUND ? "no approval request" : "cannot read approval request", id);
        return;
    }
    char why[400];
    bool may = appr_may_decide(&r, s->role_name, s->issuer, s->subject, why, sizeof(why));
    appr_req_free(&r);
    if (!may) {
        log_event(LOG_WARN, "approval_refused", "session=%s id=%llu sub=\"%s\" why=\"%s\"", s->id,
                  id, s->subject, why);
        error(s, "42501", "bulwark: %s", why);
        return;
    }
    appr_decision_t d = {.approve = approve,
                         .by = s->subject,
                         .by_role = s->role_name,
                         .via = "console",
                         .reason = reason,
                         .grant_ms = grant_ms};
    s->admin_wait = worker_tag(s->srv);
    if (appr_worker_decide(s->srv->approvals, id, &d, s->admin_wait) < 0) {
        s->admin_wait = 0;
        error(s, "53000", "bulwark: the approval store is busy; try again");
    }
}

static void admin_run(session_t *s);

/* The console's decision in the audit chain (the held session records its own end). */
static void record_decision(session_t *s, const appr_result_t *res)
{
    if (!s->srv->audit)
        return;
    cJSON *f = cJSON_CreateObject();
    cJSON_AddStringToObject(f, "event", "approval_decision");
    cJSON_AddNumberToObject(f, "approval", (double)res->id);
    cJSON_AddStringToObject(f, "decision", appr_state_name(res->state));
    cJSON_AddStringToObject(f, "by", s->subject ? s->subject : "");
    cJSON_AddStringToObject(f, "by_role", s->role_name);
    cJSON_AddStringToObject(f, "via", "console");
    if (res->grant_until_us)
        cJSON_AddNumberToObject(f, "grant_until", (double)res->grant_until_us);
    uint64_t seq;
    if (audit_append(s->srv->audit, AUDIT_REC_NOTE, s->id, f, &seq) < 0)
        log_event(LOG_ERROR, "audit_append_failed", "session=%s type=note event=approval_decision",
                  s->id);
}

void admin_decided(server_t *srv, const appr_result_t *res)
{
    if (res->claim) { /* not the console's: a statement using a one-use grant (held.c) */
        approval_claimed(srv, res);
        return;
    }
    session_t *s = srv->sessions;
    while (s && !(s->admin && s->admin_wait == res->tag && s->state == ST_RELAY))
        s = s->next;
    if (!s)
        return;
    s->admin_wait = 0;
    if (res->rc == APPR_OK) {
        static const char *const names[] = {"id", "state", "by", "grant_until"};
        table_t t;
        table_init(&t, names, 4);
        char id[24], until[64];
        snprintf(id, sizeof(id), "%llu", (unsigned long long)res->id);
        if (res->grant_until_us)
            fmt_time(until, sizeof(until), res->grant_until_us);
        const char *row[] = {id, appr_state_name(res->state), s->subject,
                             res->grant_until_us ? until : NULL};
        table_row(&t, row);
        table_send(s, &t, res->state == APPR_APPROVED ? "APPROVE" : "DENY");
        record_decision(s, res);
        log_event(LOG_INFO, "approval_decided", "session=%s id=%llu state=%s by=\"%s\" via=console",
                  s->id, (unsigned long long)res->id, appr_state_name(res->state), s->subject);
    } else if (res->rc == APPR_NOT_PENDING) {
        error(s, "55000", "bulwark: approval request %llu is %s, not pending",
              (unsigned long long)res->id, appr_state_name(res->state));
    } else if (res->rc == APPR_EXPIRED) {
        error(s, "55000", "bulwark: approval request %llu expired", (unsigned long long)res->id);
    } else {
        error(s, "58030", "bulwark: %s", res->err[0] ? res->err : "cannot write the decision");
    }
    admin_resume(s, res->rc == APPR_OK);
}

/* A command that waited (admin_wait) is done: run the rest of the query (ok)
 * or skip it after an error, then read what the client sent meanwhile. */
static void admin_resume(session_t *s, bool ok)
{
    if (ok) {
        admin_run(s);
    } else {
        free(s->admin_rest);
        s->admin_rest = NULL;
        pgw_write_ready(&s->client.out, 'I');
    }
    session_flush_client(s);
    if (s->state == ST_RELAY && buf_unread(&s->client.in) > 0)
        admin_input(s);
}

/* The end of the first command of q: its ';' outside quotes, or the end. */
static char *command_end(char *q)
{
    bool quoted = false;
    for (; *q; q++) {
        if (*q == '\'')
            quoted = !quoted;
        else if (*q == ';' && !quoted)
            return q;
    }
    return q;
}

/* One command; false when it failed (the rest of the query is skipped, as
 * PostgreSQL does with a multi-statement query string). */
static bool admin_command(session_t *s, char *q)
{
    char log_sql[200];
    one_line(log_sql, sizeof(log_sql), q);
    log_event(LOG_INFO, "admin_command", "session=%s sub=\"%s\" sql=\"%s\"", s->id, s->subject,
              log_sql);
    words_t w;
    split(q, &w);
    if (w.bad) {
        error(s, "42601", "bulwark: cannot read the command (unterminated quote?)");
    } else if (!s->srv->approvals && !(word_is(&w, 0, "show") &&
                                       (word_is(&w, 1, "sessions") || word_is(&w, 1, "stats")))) {
        error(s, "55000", "bulwark: approvals need the audit store, which is not open");
    } else if (w.n == 2 && word_is(&w, 0, "show") && word_is(&w, 1, "approvals")) {
        return show_approvals(s, false);
    } else if (w.n == 2 && word_is(&w, 0, "show") && word_is(&w, 1, "grants")) {
        return show_approvals(s, true);
    } else if (w.n == 2 && word_is(&w, 0, "show") && word_is(&w, 1, "sessions")) {
        show_sessions(s);
    } else if (w.n == 2 && word_is(&w, 0, "show") && word_is(&w, 1, "stats")) {
        show_stats(s);
    } else if (word_is(&w, 0, "approve") || word_is(&w, 0, "deny")) {
        decide(s, &w, word_is(&w, 0, "approve"));
        return s->admin_wait != 0;
    } else {
        error(s, "42601",
              "bulwark: unknown admin console command; try SHOW APPROVALS, SHOW GRANTS, "
              "APPROVE n [FOR 'duration'], DENY n ['reason'], SHOW SESSIONS, SHOW STATS");
        return false;
    }
    return true;
}

/* Run the commands of a Query from s->admin_rest on; ReadyForQuery at the
 * end, unless a decision is on its way (admin_decided goes on). */
static void admin_run(session_t *s)
{
    char *q = s->admin_rest;
    bool any = false;
    while (q && *q) {
        char *end = command_end(q);
        bool last = !*end;
        *end = 0;
        char *p = q;
        while (isspace((unsigned char)*p))
            p++;
        q = last ? end : end + 1;
        if (!*p)
            continue;
        any = true;
        if (!admin_command(s, p)) {
            q = NULL;
            break;
        }
        if (s->admin_wait) {
            memmove(s->admin_rest, q, strlen(q) + 1);
            return;
        }
    }
    free(s->admin_rest);
    s->admin_rest = NULL;
    if (!any && q)
        pgw_write_empty(&s->client.out, 'I');
    pgw_write_ready(&s->client.out, 'I');
}

void admin_input(session_t *s)
{
    endpoint_t *c = &s->client;
    while (s->state == ST_RELAY && !s->admin_wait && buf_unread(&c->in) > 0) {
        pgw_hdr_t h;
        int r = pgw_frame(buf_head(&c->in), buf_unread(&c->in), MAX_LOGIN_MESSAGE, &h);
        if (r == 0)
            break;
        if (r < 0) {
            session_fail(s, "FATAL", "08P01", "bulwark: invalid message length");
            return;
        }
        size_t total = 5 + (size_t)h.len;
        if (buf_unread(&c->in) < total)
            break;
        const uint8_t *body = buf_head(&c->in) + 5;
        if (h.type == 'X') {
            session_close(s, "client terminated");
            return;
        }
        if (h.type == 'Q') {
            const char *sql;
            if (pgw_read_query(body, h.len, &sql) < 0) {
                session_fail(s, "FATAL", "08P01", "bulwark: malformed protocol message");
                return;
            }
            free(s->admin_rest);
            s->admin_rest = strdup(sql);
            buf_consume(&c->in, total);
            if (!s->admin_rest) {
                session_fail(s, "FATAL", "53200", "bulwark: out of memory");
                return;
            }
            admin_run(s);
        } else if (h.type == 'S') {
            buf_consume(&c->in, total);
            pgw_write_ready(&s->client.out, 'I');
        } else if (strchr("PBDECH", h.type)) {
            buf_consume(&c->in, total);
            if (h.type == 'P')
                error(s, "0A000",
                      "bulwark: the admin console speaks the simple query protocol only");
        } else {
            session_fail(s, "FATAL", "08P01", "bulwark: invalid frontend message type %d",
                         (unsigned char)h.type);
            return;
        }
    }
    if (s->state == ST_RELAY)
        session_flush_client(s);
}

void admin_start(session_t *s)
{
    buf_t *b = &s->client.out;
    pgw_write_auth_ok(b);
    static const char *const params[][2] = {{"server_version", "15.0 (bulwark admin console)"},
                                            {"server_encoding", "UTF8"},
                                            {"client_encoding", "UTF8"},
                                            {"DateStyle", "ISO, MDY"},
                                            {"integer_datetimes", "on"},
                                            {"standard_conforming_strings", "on"},
                                            {"TimeZone", "UTC"},
                                            {"is_superuser", "off"}};
    for (size_t i = 0; i < sizeof(params) / sizeof(params[0]); i++)
        pgw_write_parameter_status(b, params[i][0], params[i][1]);
    pgw_write_parameter_status(b, "application_name", s->app_name ? s->app_name : "");
    pgw_write_backend_key(b, s->my_pid, s->my_key);
    s->key_sent = true;
    pgw_write_ready(b, 'I');
    s->state = ST_RELAY;
    ev_timer_stop(s->srv->loop, &s->timer);
    if (s->role->end_session_at_token_expiry) {
        double left = (double)s->token_exp - ev_now(s->srv->loop);
        ev_timer_set(&s->expiry, left > 0 ? left : 0., 0.);
        ev_timer_start(s->srv->loop, &s->expiry);
    }
    rec_session_start(s);
    char q[300];
    log_event(LOG_INFO, "session_start",
              "session=%s peer=%s role=%s target=bulwark sub=%s admin=yes", s->id, s->peer,
              s->role_name, log_q(q, sizeof(q), s->subject));
    session_update_watchers(s);
    admin_input(s);
}
