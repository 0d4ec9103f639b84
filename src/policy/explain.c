/*
 * Rendering a policy_result_t for `bulwark explain` (and the corpus tests,
 * which read the JSON form so that they test what the command prints).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "policy/internal.h"

static cJSON *str_or_null(const char *s)
{
    return s ? cJSON_CreateString(s) : cJSON_CreateNull();
}

static cJSON *access_json(const policy_access_t *a)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "op", policy_op_name(a->op));
    cJSON_AddStringToObject(o, "object", a->object);
    cJSON_AddStringToObject(o, "verb", a->verb);
    cJSON_AddStringToObject(o, "decision", policy_decision_name(a->decision));
    cJSON_AddItemToObject(o, "rule", str_or_null(a->rule));
    cJSON *m = cJSON_AddArrayToObject(o, "matched");
    for (size_t i = 0; m && i < a->n_matched; i++)
        cJSON_AddItemToArray(m, cJSON_CreateString(a->matched[i]));
    cJSON_AddBoolToObject(o, "without_where", a->without_where);
    return o;
}

static cJSON *result_json(const policy_result_t *r, const char *sql, size_t len)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    cJSON_AddStringToObject(o, "decision", policy_decision_name(r->decision));
    cJSON_AddItemToObject(o, "rule", str_or_null(r->rule));
    cJSON_AddStringToObject(o, "sqlstate", r->sqlstate);
    cJSON_AddItemToObject(o, "message", str_or_null(r->message));
    cJSON_AddNumberToObject(o, "position", r->cursorpos);
    cJSON_AddBoolToObject(o, "writes", r->writes);
    cJSON_AddBoolToObject(o, "cache_hit", r->cache_hit);
    cJSON *stmts = cJSON_AddArrayToObject(o, "statements");
    for (size_t i = 0; stmts && i < r->n_stmts; i++) {
        const policy_stmt_t *s = &r->stmts[i];
        cJSON *so = cJSON_CreateObject();
        size_t loc = s->location <= len ? s->location : len;
        size_t l = s->len <= len - loc ? s->len : len - loc;
        while (l && (sql[loc] == ' ' || sql[loc] == '\n' || sql[loc] == '\t' || sql[loc] == '\r')) {
            loc++;
            l--;
        }
        char *text = strndup(sql + loc, l), fp[17];
        cJSON_AddStringToObject(so, "text", text ? text : "");
        free(text);
        cJSON_AddStringToObject(so, "node", s->node);
        if (policy_fingerprint(sql + loc, l, fp) == 0)
            cJSON_AddStringToObject(so, "fingerprint", fp);
        else
            cJSON_AddNullToObject(so, "fingerprint");
        cJSON_AddStringToObject(so, "decision", policy_decision_name(s->decision));
        cJSON_AddBoolToObject(so, "writes", s->writes);
        cJSON *acc = cJSON_AddArrayToObject(so, "accesses");
        for (size_t j = 0; acc && j < s->n_accesses; j++)
            cJSON_AddItemToArray(acc, access_json(&s->accesses[j]));
        cJSON_AddItemToArray(stmts, so);
    }
    if (r->decision == POLICY_REVIEW) {
        cJSON *rv = cJSON_AddObjectToObject(o, "review");
        cJSON *ap = cJSON_AddArrayToObject(rv, "approvers");
        for (size_t i = 0; ap && i < r->review.n_approvers; i++)
            cJSON_AddItemToArray(ap, cJSON_CreateString(r->review.approvers[i]));
        cJSON_AddNumberToObject(rv, "timeout_ms", (double)r->review.timeout_ms);
        cJSON_AddStringToObject(rv, "mode", r->review.reject ? "reject" : "hold");
    }
    return o;
}

char *policy_explain_json(const policy_result_t *r, const char *sql, size_t len)
{
    cJSON *o = result_json(r, sql, len);
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return s;
}

/* ---- text ---- */

typedef struct sbuf {
    char *s;
    size_t len, cap;
    bool failed;
} sbuf_t;

static void sb_printf(sbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf_t *b, const char *fmt, ...)
{
    if (b->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = true;
            return;
        }
        if (b->s && (size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = (b->cap + (size_t)n + 256) * 2;
        char *g = realloc(b->s, cap);
        if (!g) {
            b->failed = true;
            return;
        }
        b->s = g;
        b->cap = cap;
    }
}

/* One line of statement text: newlines and tabs shown as spaces, long text cut. */
static void sb_text(sbuf_t *b, const char *s, size_t n)
{
    char line[121];
    size_t k = 0;
    for (size_t i = 0; i < n && k < 117; i++)
        line[k++] = s[i] == '\n' || s[i] == '\r' || s[i] == '\t' ? ' ' : s[i];
    if (n > 117) {
        memcpy(line + k, "...", 3);
        k += 3;
    }
    line[k] = '\0';
    sb_printf(b, "%s", line);
}

char *policy_explain_text(const policy_result_t *r, const char *sql, size_t len)
{
    sbuf_t b = {0};
    for (size_t i = 0; i < r->n_stmts; i++) {
        const policy_stmt_t *s = &r->stmts[i];
        size_t loc = s->location <= len ? s->location : len;
        size_t l = s->len <= len - loc ? s->len : len - loc;
        while (l && (sql[loc] == ' ' || sql[loc] == '\n' || sql[loc] == '\t')) {
            loc++;
            l--;
        }
        sb_printf(&b, "statement %zu (%s%s): ", i + 1, s->node, s->writes ? ", writes" : "");
        sb_text(&b, sql + loc, l);
        sb_printf(&b, "\n");
        if (!s->n_accesses) {
            sb_printf(&b, "  (no access)  %s\n", policy_decision_name(s->decision));
            continue;
        }
        sb_printf(&b, "  %-10s %-40s %-7s %-28s %s\n", "op", "object", "verdict", "rule",
                  "matched");
        for (size_t j = 0; j < s->n_accesses; j++) {
            const policy_access_t *a = &s->accesses[j];
            char obj[256];
            snprintf(obj, sizeof(obj), "%s%s", a->object[0] ? a->object : "-",
                     a->without_where ? " (no WHERE)" : "");
            sb_printf(&b, "  %-10s %-40s %-7s %-28s ", policy_op_name(a->op), obj,
                      policy_decision_name(a->decision), a->rule ? a->rule : "(default)");
            for (size_t k = 0; k < a->n_matched; k++)
                sb_printf(&b, "%s%s", k ? "," : "", a->matched[k]);
            sb_printf(&b, "%s\n", a->n_matched ? "" : "-");
        }
    }
    sb_printf(&b, "decision: %s", policy_decision_name(r->decision));
    if (r->rule)
        sb_printf(&b, " (rule %s)", r->rule);
    sb_printf(&b, "%s\n", r->writes ? ", may change data or schema" : "");
    if (r->message) {
        sb_printf(&b, "  %s %s", r->sqlstate, r->message);
        if (r->cursorpos > 0)
            sb_printf(&b, " (position %d)", r->cursorpos);
        sb_printf(&b, "\n");
    }
    if (r->decision == POLICY_REVIEW) {
        sb_printf(&b, "  review: mode %s, timeout %lldms, approvers",
                  r->review.reject ? "reject" : "hold", (long long)r->review.timeout_ms);
        for (size_t i = 0; i < r->review.n_approvers; i++)
            sb_printf(&b, " %s", r->review.approvers[i]);
        sb_printf(&b, "\n");
    }
    if (b.failed) {
        free(b.s);
        return NULL;
    }
    return b.s;
}
