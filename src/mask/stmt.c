/*
 * Statements around the SELECT core: INSERT/UPDATE/DELETE/MERGE (RETURNING
 * lineage, filters, and masked data written elsewhere), COPY, cursors,
 * PREPARE/EXECUTE, EXPLAIN, utility statements; and the plan object built
 * from it all (explain, denial, binding to a result's width).
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pg_query.h>

#include "mask/lineage.h"

/* ---- DML ---- */

static bool is_type(const cJSON *n, const char *t, const cJSON **body)
{
    const char *x = ml_node_type(n, body);
    return x && !strcmp(x, t);
}

static const char *rel_label(lctx_t *c, const cJSON *rv)
{
    const char *s = ml_jstr(rv, "schemaname"), *r = ml_jstr(rv, "relname");
    return s ? ml_la_printf(c, "%s.%s", s, r ? r : "?") : ml_la_strdup(c, r ? r : "?");
}

/* Masked data written into column col of T: allowed only into a column that
   carries the same masks (the mask follows it there). */
static void sink_check(lctx_t *c, const item_t *T, const char *label, const char *col, lin_t src,
                       const char *verb)
{
    if (!ml_lin_masked(&src))
        return;
    lin_t rest = src;
    if (T && col) {
        bool found;
        lin_t tl = ml_item_col(c, T, col, &found);
        if (found)
            for (int w = 0; w < MASK_WORDS; w++)
                rest.m[w] &= ~tl.m[w];
    }
    rest.direct = -1;
    if (ml_lin_masked(&rest))
        ml_use_add(c, &rest,
                   col ? ml_la_printf(c, "%s %s.%s", verb, label, col)
                       : ml_la_printf(c, "%s %s", verb, label),
                   true);
}

static item_t *dml_target(lctx_t *c, level_t *L, const cJSON *rv)
{
    item_t *T = ml_rangevar_item(c, L, rv);
    ml_level_add(c, L, T, false);
    ml_level_add(c, L, T, true);
    return T;
}

static void returning(lctx_t *c, level_t *L, const cJSON *b, cols_t *out)
{
    const char *saved = c->clause;
    c->clause = "RETURNING";
    ml_targets(c, L, ml_jget(b, "returningList"), out);
    c->clause = saved;
}

static void set_list(lctx_t *c, level_t *L, const item_t *T, const char *label, const cJSON *list,
                     const char *verb)
{
    const char *saved = c->clause;
    const cJSON *x;
    cJSON_ArrayForEach(x, list)
    {
        const cJSON *rt;
        if (!is_type(x, "ResTarget", &rt))
            continue;
        c->clause = verb;
        lin_t l = ml_ex(c, L, ml_jget(rt, "val"));
        c->clause = saved;
        sink_check(c, T, label, ml_jstr(rt, "name"), l, verb);
    }
}

/* Source columns (from a SELECT or VALUES) written into the named target
   columns, or into T's columns in order. */
static void insert_sinks(lctx_t *c, const item_t *T, const char *label, const cJSON *names,
                         const cols_t *src, const char *verb)
{
    size_t nn = (size_t)cJSON_GetArraySize(names);
    for (size_t i = 0; i < src->n; i++) {
        const char *col = NULL;
        if (src->v[i].var) {
            sink_check(c, NULL, label, NULL, src->v[i].lin, verb);
            continue;
        }
        if (nn) {
            const cJSON *rt;
            if (i < nn && is_type(cJSON_GetArrayItem(names, (int)i), "ResTarget", &rt))
                col = ml_jstr(rt, "name");
        } else if (T && i < T->cols.n && !T->cols.v[i].var) {
            col = T->cols.v[i].name;
        }
        sink_check(c, col ? T : NULL, label, col, src->v[i].lin, verb);
    }
}

static int q_insert(lctx_t *c, level_t *outer, const cJSON *b, cols_t *out)
{
    level_t L = {.up = outer};
    ml_do_ctes(c, &L, ml_jget(b, "withClause"));
    const cJSON *rv = ml_jget(b, "relation");
    const char *label = rel_label(c, rv);
    cols_t src = {0};
    const cJSON *sel = ml_jget(b, "selectStmt");
    if (sel && ml_q_stmt(c, &L, sel, &src) < 0)
        ml_cols_push(c, &src, "*", ml_lin_uncertain("INSERT source"), true);
    item_t *T = dml_target(c, &L, rv);
    const cJSON *names = ml_jget(b, "cols");
    insert_sinks(c, T, label, names, &src, "INSERT INTO");
    const cJSON *oc = ml_jget(b, "onConflictClause");
    if (oc && T) {
        /* EXCLUDED: the row proposed for insertion */
        item_t *ex_it = ml_la_alloc(c, sizeof(*ex_it));
        if (ex_it) {
            ex_it->name = "excluded";
            ex_it->ulin = ml_lin_clean();
            size_t nn = (size_t)cJSON_GetArraySize(names);
            for (size_t i = 0; i < T->cols.n; i++) {
                lin_t l = T->cols.v[i].lin;
                for (size_t k = 0; k < src.n; k++) {
                    const cJSON *rt;
                    const char *nm =
                        nn ? (is_type(cJSON_GetArrayItem(names, (int)k), "ResTarget", &rt)
                                  ? ml_jstr(rt, "name")
                                  : NULL)
                           : (k < T->cols.n ? T->cols.v[k].name : NULL);
                    if (src.v[k].var || (nm && T->cols.v[i].name && !strcmp(nm, T->cols.v[i].name)))
                        l = ml_lin_merge(l, src.v[k].lin);
                }
                ml_cols_push(c, &ex_it->cols, T->cols.v[i].name, l, false);
            }
            ex_it->unknown = T->unknown;
            if (T->unknown) {
                ex_it->ulin = T->ulin;
                for (size_t k = 0; k < src.n; k++)
                    ex_it->ulin = ml_lin_or(ex_it->ulin, src.v[k].lin);
            }
            ml_level_add(c, &L, ex_it, false);
        }
        set_list(c, &L, T, label, ml_jget(oc, "targetList"), "INSERT ... ON CONFLICT UPDATE");
        const cJSON *w = ml_jget(oc, "whereClause");
        if (w) {
            const char *saved = c->clause;
            c->clause = "ON CONFLICT WHERE";
            lin_t l = ml_ex(c, &L, w);
            c->clause = saved;
            ml_use_add(c, &l, "ON CONFLICT WHERE", false);
        }
    }
    returning(c, &L, b, out);
    return c->failed ? -1 : 0;
}

static void where_clause(lctx_t *c, level_t *L, const cJSON *w, const char *clause)
{
    if (!w)
        return;
    const char *saved = c->clause;
    c->clause = clause;
    lin_t l = ml_ex(c, L, w);
    c->clause = saved;
    ml_use_add(c, &l, clause, false);
}

static int q_update_delete(lctx_t *c, level_t *outer, const cJSON *b, bool update, cols_t *out)
{
    level_t L = {.up = outer};
    ml_do_ctes(c, &L, ml_jget(b, "withClause"));
    const cJSON *rv = ml_jget(b, "relation");
    const char *label = rel_label(c, rv);
    item_t *T = dml_target(c, &L, rv);
    const char *saved = c->clause;
    c->clause = "FROM";
    const cJSON *f;
    cJSON_ArrayForEach(f, ml_jget(b, update ? "fromClause" : "usingClause"))
        ml_level_add(c, &L, ml_from_item(c, &L, f), true);
    c->clause = saved;
    where_clause(c, &L, ml_jget(b, "whereClause"), "WHERE");
    if (update)
        set_list(c, &L, T, label, ml_jget(b, "targetList"), "UPDATE");
    returning(c, &L, b, out);
    return c->failed ? -1 : 0;
}

static int q_merge(lctx_t *c, level_t *outer, const cJSON *b)
{
    level_t L = {.up = outer};
    ml_do_ctes(c, &L, ml_jget(b, "withClause"));
    const cJSON *rv = ml_jget(b, "relation");
    const char *label = rel_label(c, rv);
    item_t *T = dml_target(c, &L, rv);
    ml_level_add(c, &L, ml_from_item(c, &L, ml_jget(b, "sourceRelation")), true);
    where_clause(c, &L, ml_jget(b, "joinCondition"), "MERGE ON");
    const cJSON *w;
    cJSON_ArrayForEach(w, ml_jget(b, "mergeWhenClauses"))
    {
        const cJSON *wb;
        if (!is_type(w, "MergeWhenClause", &wb))
            continue;
        where_clause(c, &L, ml_jget(wb, "condition"), "MERGE WHEN");
        const char *cmd = ml_jstr(wb, "commandType");
        if (cmd && !strcmp(cmd, "CMD_UPDATE")) {
            set_list(c, &L, T, label, ml_jget(wb, "targetList"), "MERGE UPDATE");
        } else if (cmd && !strcmp(cmd, "CMD_INSERT")) {
            cols_t src = {0};
            const cJSON *v;
            cJSON_ArrayForEach(v, ml_jget(wb, "values"))
                ml_cols_push(c, &src, "v", ml_ex(c, &L, v), false);
            insert_sinks(c, T, label, ml_jget(wb, "targetList"), &src, "MERGE INSERT INTO");
        }
    }
    return c->failed ? -1 : 0;
}

int ml_q_stmt(lctx_t *c, level_t *outer, const cJSON *node, cols_t *out)
{
    const cJSON *b;
    const char *t = ml_node_type(node, &b);
    if (!t)
        return -1;
    if (!strcmp(t, "SelectStmt"))
        return ml_q_select(c, outer, b, out);
    if (!strcmp(t, "InsertStmt"))
        return q_insert(c, outer, b, out);
    if (!strcmp(t, "UpdateStmt"))
        return q_update_delete(c, outer, b, true, out);
    if (!strcmp(t, "DeleteStmt"))
        return q_update_delete(c, outer, b, false, out);
    if (!strcmp(t, "MergeStmt"))
        return q_merge(c, outer, b);
    return -1;
}

/* ---- top-level statements ---- */

typedef struct pres {
    mask_stmt_kind_t kind;
    const char *name;
    cols_t cols;
    bool mask_all;
    mask_copy_fmt_t fmt;
    char delim, quote, escape;
    const char *null_str;
    bool header;
    const char *refusal;
} pres_t;

static void plan_node(lctx_t *c, const cJSON *node, pres_t *P);

static const char *defelem_str(const cJSON *de)
{
    const cJSON *arg = ml_jget(de, "arg"), *ab;
    const char *t = ml_node_type(arg, &ab);
    if (!t)
        return NULL;
    if (!strcmp(t, "String"))
        return ml_jstr(ab, "sval");
    if (!strcmp(t, "Boolean"))
        return cJSON_IsTrue(ml_jget(ab, "boolval")) ? "true" : "false";
    if (!strcmp(t, "Integer")) {
        const cJSON *iv = ml_jget(ab, "ival");
        return iv && iv->valueint ? "1" : "0";
    }
    return NULL;
}

static bool is_utf8_name(const char *e)
{
    char norm[32];
    size_t n = 0;
    for (; *e && n + 1 < sizeof(norm); e++)
        if (*e != '-' && *e != '_')
            norm[n++] = (char)tolower((unsigned char)*e);
    norm[n] = 0;
    return !strcmp(norm, "utf8") || !strcmp(norm, "unicode");
}

static void copy_options(lctx_t *c, const cJSON *opts, pres_t *P)
{
    P->fmt = MASK_COPY_TEXT;
    P->delim = 0;
    P->quote = '"';
    P->escape = 0;
    P->null_str = NULL;
    const cJSON *o;
    cJSON_ArrayForEach(o, opts)
    {
        const cJSON *de;
        if (!is_type(o, "DefElem", &de))
            continue;
        const char *k = ml_jstr(de, "defname"), *v = defelem_str(de);
        if (!k)
            continue;
        if (!strcmp(k, "format") && v)
            P->fmt = !strcmp(v, "csv")      ? MASK_COPY_CSV
                     : !strcmp(v, "binary") ? MASK_COPY_BINARY
                                            : MASK_COPY_TEXT;
        else if (!strcmp(k, "delimiter") && v && strlen(v) == 1)
            P->delim = v[0];
        else if (!strcmp(k, "quote") && v && strlen(v) == 1)
            P->quote = v[0];
        else if (!strcmp(k, "escape") && v && strlen(v) == 1)
            P->escape = v[0];
        else if (!strcmp(k, "null") && v)
            P->null_str = ml_la_strdup(c, v);
        else if (!strcmp(k, "header"))
            P->header = !v || strcmp(v, "false");
        else if (!strcmp(k, "encoding") && v && !is_utf8_name(v))
            P->refusal = ml_la_printf(c,
                                      "bulwark: COPY with ENCODING '%s' cannot be masked; "
                                      "use UTF8",
                                      v);
    }
    if (!P->delim)
        P->delim = P->fmt == MASK_COPY_CSV ? ',' : '\t';
    if (!P->escape)
        P->escape = P->quote;
    if (!P->null_str)
        P->null_str = P->fmt == MASK_COPY_CSV ? "" : "\\N";
}

static void plan_copy(lctx_t *c, const cJSON *b, pres_t *P)
{
    if (cJSON_IsTrue(ml_jget(b, "is_from"))) {
        P->kind = MASK_STMT_NONE;
        return;
    }
    const cJSON *q = ml_jget(b, "query");
    if (q) {
        if (ml_q_stmt(c, NULL, q, &P->cols) < 0)
            ml_cols_push(c, &P->cols, "*", ml_lin_uncertain("COPY query"), true);
    } else {
        level_t L = {0};
        item_t *T = ml_rangevar_item(c, &L, ml_jget(b, "relation"));
        const cJSON *att = ml_jget(b, "attlist");
        if (T && cJSON_GetArraySize(att)) {
            const cJSON *a;
            cJSON_ArrayForEach(a, att)
            {
                bool found = false;
                const char *nm = ml_sval(a);
                lin_t l = nm ? ml_item_col(c, T, nm, &found) : ml_lin_uncertain("COPY column");
                ml_cols_push(c, &P->cols, nm ? nm : "?",
                             found ? l : ml_lin_uncertain("COPY column"), false);
            }
        } else if (T) {
            ml_item_star(c, T, &P->cols);
        }
    }
    copy_options(c, ml_jget(b, "options"), P);
    if (ml_jstr(b, "filename") || cJSON_IsTrue(ml_jget(b, "is_program"))) {
        for (size_t i = 0; i < P->cols.n; i++)
            ml_use_add(c, &P->cols.v[i].lin, "COPY TO a file or program", true);
        P->kind = MASK_STMT_NONE;
        return;
    }
    P->kind = MASK_STMT_COPY_OUT;
}

/* A statement whose own output is not data (EXPLAIN, CREATE ... AS): its
   inner query is walked for filters and writes only. */
static void walk_inner(lctx_t *c, const cJSON *node, cols_t *cols)
{
    pres_t inner = {0};
    plan_node(c, node, &inner);
    *cols = inner.cols;
}

static void plan_node(lctx_t *c, const cJSON *node, pres_t *P)
{
    const cJSON *b;
    if (cJSON_IsObject(node) && ml_jget(node, "stmt"))
        node = ml_jget(node, "stmt");
    const char *t = ml_node_type(node, &b);
    P->kind = MASK_STMT_NONE;
    P->mask_all = false;
    if (!t) {
        P->mask_all = true;
    } else if (!strcmp(t, "SelectStmt") || !strcmp(t, "InsertStmt") || !strcmp(t, "UpdateStmt") ||
               !strcmp(t, "DeleteStmt") || !strcmp(t, "MergeStmt")) {
        if (ml_q_stmt(c, NULL, node, &P->cols) < 0)
            P->mask_all = true;
        bool rows = !strcmp(t, "SelectStmt") ? !ml_jget(b, "intoClause")
                                             : cJSON_GetArraySize(ml_jget(b, "returningList")) > 0;
        P->kind = rows ? MASK_STMT_ROWS : MASK_STMT_NONE;
    } else if (!strcmp(t, "CopyStmt")) {
        plan_copy(c, b, P);
    } else if (!strcmp(t, "DeclareCursorStmt") || !strcmp(t, "PrepareStmt")) {
        bool cursor = !strcmp(t, "DeclareCursorStmt");
        pres_t inner = {0};
        plan_node(c, ml_jget(b, "query"), &inner);
        P->cols = inner.cols;
        P->mask_all = inner.mask_all || inner.kind == MASK_STMT_NONE;
        P->kind = cursor ? MASK_STMT_CURSOR : MASK_STMT_PREPARE;
        P->name = ml_la_strdup(c, ml_jstr(b, cursor ? "portalname" : "name"));
    } else if (!strcmp(t, "ExecuteStmt")) {
        P->kind = MASK_STMT_EXECUTE;
        P->name = ml_la_strdup(c, ml_jstr(b, "name"));
        P->mask_all = true;
    } else if (!strcmp(t, "FetchStmt")) {
        P->kind = cJSON_IsTrue(ml_jget(b, "ismove")) ? MASK_STMT_NONE : MASK_STMT_FETCH;
        P->name = ml_la_strdup(c, ml_jstr(b, "portalname"));
        P->mask_all = true;
    } else if (!strcmp(t, "ExplainStmt")) {
        cols_t ignored = {0};
        walk_inner(c, ml_jget(b, "query"), &ignored);
        P->kind = MASK_STMT_ROWS;
        ml_cols_push(c, &P->cols, "QUERY PLAN", ml_lin_clean(), true);
    } else if (!strcmp(t, "CreateTableAsStmt") || !strcmp(t, "ViewStmt")) {
        cols_t cols = {0};
        walk_inner(c, ml_jget(b, "query"), &cols);
        const char *ot = ml_jstr(b, "objtype");
        const char *what = !strcmp(t, "ViewStmt")                ? NULL
                           : ot && !strcmp(ot, "OBJECT_MATVIEW") ? "CREATE MATERIALIZED VIEW"
                                                                 : "CREATE TABLE AS";
        for (size_t i = 0; what && i < cols.n; i++)
            ml_use_add(c, &cols.v[i].lin, what, true);
    } else if (!strcmp(t, "VariableShowStmt")) {
        P->kind = MASK_STMT_ROWS;
        ml_cols_push(c, &P->cols, "setting", ml_lin_clean(), true);
    } else {
        /* CALL (OUT parameters), utility and unknown statements: any row
           that comes back is masked whole. */
        P->kind = !strcmp(t, "CallStmt") ? MASK_STMT_ROWS : MASK_STMT_NONE;
        P->mask_all = true;
    }
}

/* ---- plan assembly ---- */

static char *mask_list(const mask_rules_t *r, const lin_t *l)
{
    char buf[512];
    size_t o = 0;
    int shown = 0, more = 0;
    buf[0] = 0;
    for (int w = 0; w < MASK_WORDS; w++)
        for (uint64_t bits = l->m[w]; bits; bits &= bits - 1) {
            int i = w * 64 + __builtin_ctzll(bits);
            if (shown == 4) {
                more++;
                continue;
            }
            int k = snprintf(buf + o, sizeof(buf) - o, "%s%s", shown ? ", " : "", r->cols[i].name);
            if (k > 0 && (size_t)k < sizeof(buf) - o)
                o += (size_t)k;
            shown++;
        }
    if (more)
        snprintf(buf + o, sizeof(buf) - o, " and %d more", more);
    return strdup(buf);
}

static int fill_col(const mask_rules_t *r, mask_pcol_t *pc, const col_t *x)
{
    const lin_t *l = &x->lin;
    pc->name = strdup(x->name ? x->name : "?column?");
    pc->var = x->var;
    pc->mask = -1;
    char *srcs = mask_list(r, l);
    char tmp[768];
    if (!pc->name || !srcs) {
        free(srcs);
        return -1;
    }
    if (l->flags & LF_UNCERTAIN) {
        pc->reason = MR_UNCERTAIN;
        snprintf(tmp, sizeof(tmp), "lineage uncertain: %s%s%s", l->why ? l->why : "unknown",
                 *srcs ? "; carries " : "", srcs);
    } else if (!*srcs) {
        pc->reason = MR_NONE;
        tmp[0] = 0;
    } else if (l->direct >= 0 && !(l->flags & LF_WHOLEROW)) {
        pc->reason = MR_COLUMN;
        pc->mask = l->direct;
        snprintf(tmp, sizeof(tmp), "column %s", srcs);
    } else if (l->flags & LF_WHOLEROW) {
        pc->reason = MR_WHOLEROW;
        snprintf(tmp, sizeof(tmp), "whole-row value including %s", srcs);
    } else {
        pc->reason = MR_EXPR;
        snprintf(tmp, sizeof(tmp), "expression over %s", srcs);
    }
    free(srcs);
    pc->detail = strdup(tmp);
    return pc->detail ? 0 : -1;
}

/* Several runs of unknown width cannot be lined up with a RowDescription:
   everything from the first to the last becomes one run. */
static void consolidate_var(cols_t *cs)
{
    size_t first = cs->n, last = 0, nvar = 0;
    for (size_t i = 0; i < cs->n; i++)
        if (cs->v[i].var) {
            if (first == cs->n)
                first = i;
            last = i;
            nvar++;
        }
    if (nvar < 2)
        return;
    lin_t all = ml_lin_clean();
    for (size_t i = first; i <= last; i++)
        all = ml_lin_or(all, cs->v[i].lin);
    cs->v[first].lin = all;
    cs->v[first].name = "*";
    memmove(&cs->v[first + 1], &cs->v[last + 1], (cs->n - last - 1) * sizeof(col_t));
    cs->n -= last - first;
}

static mask_plan_t *plan_build(lctx_t *c, const pres_t *P)
{
    mask_plan_t *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->refs = 1;
    p->rules = mask_rules_retain((mask_rules_t *)c->r);
    p->kind = P->kind;
    p->mask_all = P->mask_all;
    p->touched = c->touched || P->mask_all;
    bool ok = true;
    if (P->name && !(p->name = strdup(P->name)))
        ok = false;
    cols_t cs = P->cols;
    consolidate_var(&cs);
    if (cs.n && !(p->cols = calloc(cs.n, sizeof(*p->cols))))
        ok = false;
    for (size_t i = 0; ok && i < cs.n; i++) {
        ok = fill_col(c->r, &p->cols[i], &cs.v[i]) == 0;
        p->ncols++;
        if (p->cols[i].reason != MR_NONE)
            p->touched = true;
    }
    if (c->nuses && !(p->uses = calloc(c->nuses, sizeof(*p->uses))))
        ok = false;
    for (size_t i = 0; ok && i < c->nuses; i++) {
        mask_puse_t *u = &p->uses[p->nuses++];
        u->mask = c->uses[i].mask;
        u->sink = c->uses[i].sink;
        u->clause = strdup(c->uses[i].clause);
        u->detail = c->uses[i].why ? strdup(c->uses[i].why) : NULL;
        ok = u->clause && (!c->uses[i].why || u->detail);
    }
    p->copy.fmt = P->fmt;
    p->copy.delim = P->delim;
    p->copy.quote = P->quote;
    p->copy.escape = P->escape;
    p->copy.header = P->header;
    if (P->kind == MASK_STMT_COPY_OUT &&
        !(p->copy.null_str = strdup(P->null_str ? P->null_str : "")))
        ok = false;
    if (P->refusal && !(p->copy.refusal = strdup(P->refusal)))
        ok = false;
    if (!ok) {
        mask_plan_release(p);
        return NULL;
    }
    return p;
}

int mask_plan_statement(const mask_rules_t *r, const cJSON *stmt, mask_resolve_fn resolve,
                        void *arg, const char *const *search_path, mask_plan_t **out)
{
    static const char *const empty[] = {NULL};
    lctx_t c = {.r = r,
                .resolve = resolve,
                .arg = arg,
                .path = search_path ? search_path : empty,
                .clause = "a condition"};
    pres_t P = {0};
    *out = NULL;
    plan_node(&c, stmt, &P);
    if (c.failed) {
        ml_la_free(&c);
        return -1;
    }
    *out = plan_build(&c, &P);
    ml_la_free(&c);
    return *out ? 0 : -1;
}

int mask_plan_sql(const mask_rules_t *r, const char *sql, mask_resolve_fn resolve, void *arg,
                  const char *const *search_path, mask_plan_t **out, char *err, size_t errsz)
{
    *out = NULL;
    PgQueryParseResult pr = pg_query_parse(sql);
    if (pr.error) {
        snprintf(err, errsz, "%s", pr.error->message ? pr.error->message : "syntax error");
        pg_query_free_parse_result(pr);
        return -1;
    }
    cJSON *tree = cJSON_Parse(pr.parse_tree);
    pg_query_free_parse_result(pr);
    const cJSON *stmts = ml_jget(tree, "stmts");
    int rc = -1;
    if (cJSON_GetArraySize(stmts) != 1)
        snprintf(err, errsz, "expected exactly one statement");
    else if ((rc = mask_plan_statement(r, cJSON_GetArrayItem(stmts, 0), resolve, arg, search_path,
                                       out)) < 0)
        snprintf(err, errsz, "out of memory");
    cJSON_Delete(tree);
    return rc;
}

mask_plan_t *mask_plan_unknown(const mask_rules_t *r)
{
    mask_plan_t *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->refs = 1;
    p->rules = mask_rules_retain((mask_rules_t *)r);
    p->kind = MASK_STMT_ROWS;
    p->mask_all = true;
    p->touched = true;
    return p;
}

mask_plan_t *mask_plan_retain(mask_plan_t *p)
{
    if (p)
        __atomic_add_fetch(&p->refs, 1, __ATOMIC_RELAXED);
    return p;
}

void mask_plan_release(mask_plan_t *p)
{
    if (!p || __atomic_sub_fetch(&p->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    for (size_t i = 0; i < p->ncols; i++) {
        free(p->cols[i].name);
        free(p->cols[i].detail);
    }
    free(p->cols);
    for (size_t i = 0; i < p->nuses; i++) {
        free(p->uses[i].clause);
        free(p->uses[i].detail);
    }
    free(p->uses);
    free(p->name);
    free(p->copy.null_str);
    free(p->copy.refusal);
    mask_rules_release(p->rules);
    free(p);
}

mask_stmt_kind_t mask_plan_kind(const mask_plan_t *p)
{
    return p->kind;
}

const char *mask_plan_name(const mask_plan_t *p)
{
    return p->name;
}

bool mask_plan_touches_masked(const mask_plan_t *p)
{
    return p->touched;
}

size_t mask_plan_ncols(const mask_plan_t *p)
{
    return p->ncols;
}

const mask_method_t *mask_pcol_method(const mask_plan_t *p, const mask_pcol_t *c)
{
    static const mask_method_t redact = {.kind = MASK_M_REDACT};
    if (c->reason == MR_NONE)
        return NULL;
    if (c->reason == MR_COLUMN && c->mask >= 0 && (size_t)c->mask < p->rules->ncols)
        return &p->rules->cols[c->mask].method;
    return &redact;
}

mask_method_kind_t mask_plan_col_method(const mask_plan_t *p, size_t i)
{
    if (p->mask_all)
        return MASK_M_REDACT;
    const mask_method_t *m = i < p->ncols ? mask_pcol_method(p, &p->cols[i]) : NULL;
    return m ? m->kind : MASK_M_NONE;
}

const char *mask_plan_col_name(const mask_plan_t *p, size_t i)
{
    return i < p->ncols ? p->cols[i].name : NULL;
}

static bool use_allowed(const mask_plan_t *p, const mask_puse_t *u)
{
    return !u->sink && u->mask >= 0 && p->rules->cols[u->mask].pred_allow;
}

static void use_text(const mask_plan_t *p, const mask_puse_t *u, char *msg, size_t msgsz)
{
    if (u->mask < 0)
        snprintf(msg, msgsz, "a value of unknown lineage (%s) is %s %s",
                 u->detail ? u->detail : "unknown", u->sink ? "written by" : "used in", u->clause);
    else if (u->sink)
        snprintf(msg, msgsz, "masked column %s would be written by %s",
                 p->rules->cols[u->mask].name, u->clause);
    else
        snprintf(msg, msgsz, "masked column %s is used in %s", p->rules->cols[u->mask].name,
                 u->clause);
}

bool mask_plan_denied(const mask_plan_t *p, char *msg, size_t msgsz)
{
    for (size_t i = 0; i < p->nuses; i++)
        if (!use_allowed(p, &p->uses[i])) {
            use_text(p, &p->uses[i], msg, msgsz);
            return true;
        }
    if (msgsz)
        msg[0] = 0;
    return false;
}

static const char *const kind_names[] = {"none",    "rows",    "copy_out", "cursor",
                                         "prepare", "execute", "fetch"};

void mask_plan_explain(const mask_plan_t *p, buf_t *out)
{
    char line[1200];
    int k;
    if (p->mask_all) {
        k = snprintf(line, sizeof(line), "every column: masked by redact — %s\n",
                     p->kind == MASK_STMT_EXECUTE || p->kind == MASK_STMT_FETCH
                         ? "uses the plan of the prepared statement or cursor it names"
                         : "result shape unknown");
        buf_append(out, line, (size_t)k < sizeof(line) ? (size_t)k : sizeof(line) - 1);
    }
    for (size_t i = 0; !p->mask_all && i < p->ncols; i++) {
        const mask_pcol_t *c = &p->cols[i];
        const mask_method_t *m = mask_pcol_method(p, c);
        if (!m)
            k = snprintf(line, sizeof(line), "column %zu \"%s\"%s: not masked\n", i + 1, c->name,
                         c->var ? " (and the columns it expands to)" : "");
        else
            k = snprintf(line, sizeof(line), "column %zu \"%s\"%s: masked by %s — %s\n", i + 1,
                         c->name, c->var ? " (and the columns it expands to)" : "",
                         mask_method_name(m->kind), c->detail);
        buf_append(out, line, (size_t)k < sizeof(line) ? (size_t)k : sizeof(line) - 1);
    }
    for (size_t i = 0; i < p->nuses; i++) {
        char msg[900];
        use_text(p, &p->uses[i], msg, sizeof(msg));
        bool ok = use_allowed(p, &p->uses[i]);
        k = snprintf(line, sizeof(line), "%s: %s%s\n", ok ? "allowed" : "denied", msg,
                     ok ? " (in_predicates: allow)" : "");
        buf_append(out, line, (size_t)k < sizeof(line) ? (size_t)k : sizeof(line) - 1);
    }
}

cJSON *mask_plan_explain_json(const mask_plan_t *p)
{
    static const char *const reasons[] = {"none",      "column", "expression",     "whole_row",
                                          "uncertain", "shape",  "row_description"};
    cJSON *o = cJSON_CreateObject(), *cols = cJSON_CreateArray(), *uses = cJSON_CreateArray();
    if (!o || !cols || !uses) {
        cJSON_Delete(o);
        cJSON_Delete(cols);
        cJSON_Delete(uses);
        return NULL;
    }
    cJSON_AddStringToObject(o, "kind", kind_names[p->kind]);
    if (p->name)
        cJSON_AddStringToObject(o, "name", p->name);
    cJSON_AddBoolToObject(o, "mask_all", p->mask_all);
    for (size_t i = 0; i < p->ncols; i++) {
        const mask_pcol_t *c = &p->cols[i];
        const mask_method_t *m = p->mask_all ? NULL : mask_pcol_method(p, c);
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "name", c->name);
        cJSON_AddBoolToObject(x, "masked", m != NULL || p->mask_all);
        cJSON_AddStringToObject(x, "method",
                                p->mask_all ? "redact"
                                : m         ? mask_method_name(m->kind)
                                            : "none");
        cJSON_AddStringToObject(x, "reason", reasons[c->reason]);
        if (c->detail && *c->detail)
            cJSON_AddStringToObject(x, "detail", c->detail);
        if (c->var)
            cJSON_AddBoolToObject(x, "expands", true);
        cJSON_AddItemToArray(cols, x);
    }
    for (size_t i = 0; i < p->nuses; i++) {
        const mask_puse_t *u = &p->uses[i];
        cJSON *x = cJSON_CreateObject();
        if (u->mask >= 0)
            cJSON_AddStringToObject(x, "column", p->rules->cols[u->mask].name);
        else
            cJSON_AddNullToObject(x, "column");
        cJSON_AddStringToObject(x, "clause", u->clause);
        cJSON_AddStringToObject(x, "use", u->sink ? "write" : "filter");
        cJSON_AddBoolToObject(x, "allowed", use_allowed(p, u));
        if (u->detail)
            cJSON_AddStringToObject(x, "detail", u->detail);
        cJSON_AddItemToArray(uses, x);
    }
    cJSON_AddItemToObject(o, "columns", cols);
    cJSON_AddItemToObject(o, "uses", uses);
    return o;
}

void mask_plan_bind(const mask_plan_t *p, size_t n, const mask_method_t **out,
                    mask_reason_t *reasons, int *masks)
{
    static const mask_method_t redact = {.kind = MASK_M_REDACT};
    size_t nvar = 0, vpos = 0;
    for (size_t i = 0; i < p->ncols; i++)
        if (p->cols[i].var) {
            nvar++;
            vpos = i;
        }
    size_t fixed = p->ncols - nvar;
    bool fits = !p->mask_all && (nvar ? n >= fixed : n == p->ncols);
    for (size_t i = 0; i < n; i++) {
        const mask_pcol_t *c = NULL;
        if (fits) {
            size_t width = n - fixed;
            c = !nvar || i < vpos  ? &p->cols[i]
                : i < vpos + width ? &p->cols[vpos]
                                   : &p->cols[i - width + 1];
        }
        out[i] = c ? mask_pcol_method(p, c) : &redact;
        if (reasons)
            reasons[i] = c ? c->reason : MR_SHAPE;
        if (masks)
            masks[i] = c ? c->mask : -1;
    }
}

/* ---- search_path ---- */

void mask_search_path_free(char **path)
{
    for (size_t i = 0; path && path[i]; i++)
        free(path[i]);
    free(path);
}

char **mask_search_path_parse(const char *setting, const char *session_user)
{
    size_t cap = 4, n = 0;
    char **v = calloc(cap, sizeof(*v));
    const char *p = setting ? setting : "";
    while (v && *p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (!*p)
            break;
        char name[256];
        size_t k = 0;
        bool quoted = *p == '"';
        if (quoted) {
            for (p++; *p; p++) {
                if (*p == '"' && p[1] == '"')
                    p++;
                else if (*p == '"') {
                    p++;
                    break;
                }
                if (k + 1 < sizeof(name))
                    name[k++] = *p;
            }
        } else {
            for (; *p && *p != ','; p++)
                if (k + 1 < sizeof(name))
                    name[k++] = (char)tolower((unsigned char)*p);
            while (k && (name[k - 1] == ' ' || name[k - 1] == '\t'))
                k--;
        }
        name[k] = 0;
        while (*p && *p != ',')
            p++;
        const char *use = !strcmp(name, "$user") ? session_user : name;
        if (!use || !*use)
            continue;
        if (n + 2 > cap) {
            char **nv = realloc(v, (cap *= 2) * sizeof(*nv));
            if (!nv) {
                mask_search_path_free(v);
                return NULL;
            }
            v = nv;
        }
        if (!(v[n] = strdup(use))) {
            mask_search_path_free(v);
            return NULL;
        }
        v[++n] = NULL;
    }
    return v;
}
