/*
 * Column lineage over libpg_query's JSON parse tree (PG 15 grammar): scopes,
 * name resolution, expressions and SELECT. Mirrors PostgreSQL's parse
 * analysis closely enough to follow data, and errs towards masking wherever it
 * cannot: a name that could come from two places carries both lineages, a
 * relation the catalog does not know masks whatever could come from it.
 *
 * Filters are recorded as uses (use_add) with the clause they sit in; the
 * plan turns them into denials (SPEC 5.3 oracles).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pg_query.h>

#include "mask/lineage.h"

#define MAX_DEPTH 600
#define MAX_VIEW_DEPTH 16

/* ---- arena ---- */

struct arena_blk {
    arena_blk_t *next;
    size_t used, cap;
    max_align_t data[];
};

void *ml_la_alloc(lctx_t *c, size_t n)
{
    n = (n + sizeof(max_align_t) - 1) & ~(sizeof(max_align_t) - 1);
    arena_blk_t *b = c->arena;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > 16384 ? n : 16384;
        b = malloc(sizeof(*b) + cap);
        if (!b) {
            c->failed = true;
            return NULL;
        }
        b->next = c->arena;
        b->used = 0;
        b->cap = cap;
        c->arena = b;
    }
    void *p = (char *)b->data + b->used;
    b->used += n;
    memset(p, 0, n);
    return p;
}

char *ml_la_strdup(lctx_t *c, const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = ml_la_alloc(c, n);
    if (d)
        memcpy(d, s, n);
    return d;
}

char *ml_la_printf(lctx_t *c, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    return ml_la_strdup(c, tmp);
}

void ml_la_free(lctx_t *c)
{
    while (c->arena) {
        arena_blk_t *n = c->arena->next;
        free(c->arena);
        c->arena = n;
    }
}

/* ---- lineage values ---- */

lin_t ml_lin_clean(void)
{
    lin_t l;
    memset(&l, 0, sizeof(l));
    l.direct = -1;
    return l;
}

lin_t ml_lin_uncertain(const char *why)
{
    lin_t l = ml_lin_clean();
    l.flags = LF_UNCERTAIN;
    l.why = why;
    return l;
}

static bool lin_empty(const lin_t *l)
{
    for (int i = 0; i < MASK_WORDS; i++)
        if (l->m[i])
            return false;
    return !(l->flags & LF_UNCERTAIN);
}

bool ml_lin_masked(const lin_t *l)
{
    return !lin_empty(l);
}

void ml_lin_set(lin_t *l, int mask)
{
    l->m[mask / 64] |= 1ull << (mask % 64);
}

lin_t ml_lin_or(lin_t a, lin_t b)
{
    for (int i = 0; i < MASK_WORDS; i++)
        a.m[i] |= b.m[i];
    a.flags |= b.flags;
    if (!a.why)
        a.why = b.why;
    a.direct = -1;
    return a;
}

lin_t ml_lin_merge(lin_t a, lin_t b)
{
    int16_t d = a.direct == b.direct ? a.direct
                : lin_empty(&a)      ? b.direct
                : lin_empty(&b)      ? a.direct
                                     : -1;
    if ((a.flags | b.flags) & (LF_UNCERTAIN | LF_WHOLEROW))
        d = -1;
    lin_t r = ml_lin_or(a, b);
    r.direct = d;
    return r;
}

static lin_t lin_derive(lin_t a)
{
    a.direct = -1;
    return a;
}

/* ---- cols ---- */

col_t *ml_cols_push(lctx_t *c, cols_t *cs, const char *name, lin_t lin, bool var)
{
    if (cs->n == cs->cap) {
        size_t nc = cs->cap ? cs->cap * 2 : 8;
        col_t *nv = ml_la_alloc(c, nc * sizeof(*nv));
        if (!nv)
            return NULL;
        if (cs->n)
            memcpy(nv, cs->v, cs->n * sizeof(*nv));
        cs->v = nv;
        cs->cap = nc;
    }
    col_t *x = &cs->v[cs->n++];
    x->name = name;
    x->lin = lin;
    x->var = var;
    return x;
}

static void **ptr_push(lctx_t *c, void **v, size_t *n, size_t *cap, void *p)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 8;
        void **nv = ml_la_alloc(c, nc * sizeof(*nv));
        if (!nv)
            return v;
        if (*n)
            memcpy(nv, v, *n * sizeof(*nv));
        v = nv;
        *cap = nc;
    }
    v[(*n)++] = p;
    return v;
}

/* top: a FROM list entry (star order); otherwise a name in scope: base items
   answer unqualified names, every named item answers qualified ones. */
void ml_level_add(lctx_t *c, level_t *L, item_t *it, bool top)
{
    if (!it)
        return;
    if (top) {
        L->items = (item_t **)ptr_push(c, (void **)L->items, &L->nitems, &L->capitems, it);
        return;
    }
    if (!it->is_join)
        L->leaves = (item_t **)ptr_push(c, (void **)L->leaves, &L->nleaves, &L->capleaves, it);
    if (it->name)
        L->named = (item_t **)ptr_push(c, (void **)L->named, &L->nnamed, &L->capnamed, it);
}

/* ---- JSON helpers ---- */

const char *ml_node_type(const cJSON *n, const cJSON **body)
{
    if (!cJSON_IsObject(n) || !n->child || n->child->next || !n->child->string) {
        *body = n;
        return NULL;
    }
    *body = n->child;
    return n->child->string;
}

const cJSON *ml_jget(const cJSON *o, const char *k)
{
    return o ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL;
}

const char *ml_jstr(const cJSON *o, const char *k)
{
    const cJSON *v = ml_jget(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

const char *ml_sval(const cJSON *n)
{
    const cJSON *b;
    const char *t = ml_node_type(n, &b);
    return t && !strcmp(t, "String") ? ml_jstr(b, "sval") : NULL;
}

static bool is_type(const cJSON *n, const char *t, const cJSON **body)
{
    const char *x = ml_node_type(n, body);
    return x && !strcmp(x, t);
}

/* ---- uses ---- */

static void use_one(lctx_t *c, int mask, const char *clause, bool sink, const char *why)
{
    for (size_t i = 0; i < c->nuses; i++)
        if (c->uses[i].mask == mask && c->uses[i].sink == sink &&
            !strcmp(c->uses[i].clause, clause))
            return;
    if (c->nuses == c->capuses) {
        size_t nc = c->capuses ? c->capuses * 2 : 8;
        use_t *nu = ml_la_alloc(c, nc * sizeof(*nu));
        if (!nu)
            return;
        if (c->nuses)
            memcpy(nu, c->uses, c->nuses * sizeof(*nu));
        c->uses = nu;
        c->capuses = nc;
    }
    c->uses[c->nuses++] = (use_t){mask, clause, sink, why};
}

void ml_use_add(lctx_t *c, const lin_t *l, const char *clause, bool sink)
{
    if (c->no_uses)
        return;
    for (int w = 0; w < MASK_WORDS; w++)
        for (uint64_t bits = l->m[w]; bits; bits &= bits - 1)
            use_one(c, w * 64 + __builtin_ctzll(bits), clause, sink, NULL);
    if (l->flags & LF_UNCERTAIN)
        use_one(c, -1, clause, sink, l->why);
}

/* ---- relations and masks ---- */

static bool in_path(lctx_t *c, const char *schema)
{
    if (!strcmp(schema, "pg_catalog"))
        return true;
    for (const char *const *p = c->path; p && *p; p++)
        if (!strcmp(*p, schema))
            return true;
    return false;
}

static lin_t table_masks(lctx_t *c, const char *schema, const char *table, const char *column)
{
    lin_t l = ml_lin_clean();
    int hits = 0, last = -1;
    for (size_t i = 0; i < c->r->ncols; i++) {
        const mask_colmask_t *m = &c->r->cols[i];
        if (strcmp(m->table, table) || (column && strcmp(m->column, column)))
            continue;
        if (schema ? strcmp(m->schema, schema) : !in_path(c, m->schema))
            continue;
        ml_lin_set(&l, (int)i);
        hits++;
        last = (int)i;
    }
    if (hits == 1 && column)
        l.direct = (int16_t)last;
    if (hits)
        c->touched = true;
    return l;
}

lin_t ml_base_col_lin(lctx_t *c, const char *schema, const char *table, const char *column,
                      const mask_relation_t *rel)
{
    lin_t l = ml_lin_clean();
    int mi = mask_rules_find(c->r, schema, table, column);
    if (mi >= 0) {
        ml_lin_set(&l, mi);
        l.direct = (int16_t)mi;
        c->touched = true;
    }
    for (size_t i = 0; rel && i < rel->nparents; i++) {
        const char *dot = rel->parents[i] ? strchr(rel->parents[i], '.') : NULL;
        if (!dot)
            continue;
        char ps[256];
        size_t n = (size_t)(dot - rel->parents[i]);
        if (n >= sizeof(ps))
            continue;
        memcpy(ps, rel->parents[i], n);
        ps[n] = 0;
        int pm = mask_rules_find(c->r, ps, dot + 1, column);
        if (pm >= 0) {
            lin_t one = ml_lin_clean();
            ml_lin_set(&one, pm);
            one.direct = (int16_t)pm;
            l = ml_lin_merge(l, one);
            c->touched = true;
        }
    }
    return l;
}

static bool is_stats_catalog(const char *schema, const char *rel)
{
    static const char *const stats[] = {"pg_statistic",          "pg_stats",
                                        "pg_stats_ext",          "pg_stats_ext_exprs",
                                        "pg_statistic_ext_data", NULL};
    if (strcmp(schema, "pg_catalog"))
        return false;
    for (int i = 0; stats[i]; i++)
        if (!strcmp(rel, stats[i]))
            return true;
    return false;
}

/* Lineage of a view from its definition; false if it cannot be computed. */
static bool view_cols(lctx_t *c, const mask_relation_t *rel, cols_t *out)
{
    if (!rel->view_sql || c->view_depth >= MAX_VIEW_DEPTH)
        return false;
    PgQueryParseResult pr = pg_query_parse(rel->view_sql);
    bool ok = false;
    if (!pr.error && pr.parse_tree) {
        cJSON *tree = cJSON_Parse(pr.parse_tree);
        const cJSON *stmts = ml_jget(tree, "stmts");
        if (cJSON_GetArraySize(stmts) == 1) {
            const cJSON *st = ml_jget(cJSON_GetArrayItem(stmts, 0), "stmt");
            const char *const *saved_path = c->path;
            static const char *const no_path[] = {NULL};
            bool saved_nu = c->no_uses;
            c->path = no_path; /* pg_get_viewdef under search_path=pg_catalog qualifies names */
            c->no_uses = true;
            c->view_depth++;
            cols_t vc = {0};
            ok = ml_q_stmt(c, NULL, st, &vc) == 0 && !c->failed;
            c->view_depth--;
            c->no_uses = saved_nu;
            c->path = saved_path;
            *out = vc;
        }
        cJSON_Delete(tree);
    }
    pg_query_free_parse_result(pr);
    return ok;
}

static int resolve_rel(lctx_t *c, const char *schema, const char *rel, mask_relation_t *out,
                       const char **found_schema)
{
    memset(out, 0, sizeof(*out));
    if (!c->resolve)
        return 0;
    if (schema) {
        *found_schema = schema;
        return c->resolve(c->arg, schema, rel, out) == 1 ? 1 : 0;
    }
    bool listed = false; /* PostgreSQL searches pg_catalog first unless it is listed */
    for (const char *const *p = c->path; p && *p; p++)
        listed |= !strcmp(*p, "pg_catalog");
    if (!listed && c->resolve(c->arg, "pg_catalog", rel, out) == 1) {
        *found_schema = "pg_catalog";
        return 1;
    }
    for (const char *const *p = c->path; p && *p; p++) {
        memset(out, 0, sizeof(*out));
        if (c->resolve(c->arg, *p, rel, out) == 1) {
            *found_schema = *p;
            return 1;
        }
    }
    return 0;
}

static void rename_cols(lctx_t *c, cols_t *cs, const cJSON *colnames)
{
    size_t i = 0;
    const cJSON *n;
    cJSON_ArrayForEach(n, colnames)
    {
        if (i >= cs->n || cs->v[i].var)
            break;
        const char *s = ml_sval(n);
        if (s)
            cs->v[i].name = ml_la_strdup(c, s);
        i++;
    }
}

static const cJSON *alias_of(const cJSON *body, const char **name)
{
    const cJSON *a = ml_jget(body, "alias");
    *name = ml_jstr(a, "aliasname");
    return ml_jget(a, "colnames");
}

static cte_t *find_cte(level_t *L, const char *name)
{
    for (; L; L = L->up)
        for (cte_t *x = L->ctes; x; x = x->next)
            if (!strcmp(x->name, name))
                return x;
    return NULL;
}

item_t *ml_rangevar_item(lctx_t *c, level_t *L, const cJSON *rv)
{
    item_t *it = ml_la_alloc(c, sizeof(*it));
    if (!it)
        return NULL;
    const char *schema = ml_jstr(rv, "schemaname"), *rel = ml_jstr(rv, "relname"), *alias;
    const cJSON *colnames = alias_of(rv, &alias);
    if (!rel)
        rel = "?";
    it->name = ml_la_strdup(c, alias ? alias : rel);
    it->ulin = ml_lin_clean();
    cte_t *cte = schema ? NULL : find_cte(L, rel);
    if (cte) {
        for (size_t i = 0; i < cte->cols.n; i++)
            ml_cols_push(c, &it->cols, cte->cols.v[i].name, cte->cols.v[i].lin, cte->cols.v[i].var);
        it->unknown = cte->unknown;
        it->ulin = cte->ulin;
        rename_cols(c, &it->cols, colnames);
        return it;
    }
    mask_relation_t r;
    const char *fs = NULL;
    if (!alias)
        it->schema = schema ? ml_la_strdup(c, schema) : NULL;
    if (resolve_rel(c, schema, rel, &r, &fs) == 1) {
        if (!alias && !it->schema)
            it->schema = ml_la_strdup(c, fs);
        bool stats = is_stats_catalog(fs, rel);
        cols_t vc = {0};
        bool have_view = r.kind == MASK_REL_VIEW && view_cols(c, &r, &vc);
        if (r.kind == MASK_REL_VIEW && have_view && vc.n != r.ncolumns)
            have_view = false;
        for (size_t i = 0; i < r.ncolumns; i++) {
            const char *cn = r.columns[i] ? r.columns[i] : "?";
            lin_t l;
            if (stats)
                l = ml_lin_uncertain(
                    ml_la_printf(c, "%s.%s holds data values (statistics)", fs, rel));
            else if (r.kind == MASK_REL_VIEW && !have_view)
                l = ml_lin_uncertain(ml_la_printf(c, "lineage of view %s.%s is unknown", fs, rel));
            else if (r.kind == MASK_REL_VIEW)
                l = vc.v[i].var ? ml_lin_uncertain(ml_la_printf(c, "view %s.%s", fs, rel))
                                : vc.v[i].lin;
            else
                l = ml_base_col_lin(c, fs, rel, cn, &r);
            if (l.flags & LF_UNCERTAIN)
                c->touched = true;
            /* a view column keeps the masks of what it is computed from */
            ml_cols_push(c, &it->cols, ml_la_strdup(c, cn), l, false);
        }
        rename_cols(c, &it->cols, colnames);
        return it;
    }
    it->unknown = true;
    it->mtable = ml_la_strdup(c, rel);
    it->mschema = schema ? ml_la_strdup(c, schema) : NULL;
    it->ulin = ml_lin_uncertain(
        schema ? ml_la_printf(c, "relation %s.%s is not in the catalog", schema, rel)
               : ml_la_printf(c, "relation %s is not in the catalog (search_path)", rel));
    c->touched = true;
    return it;
}

/* ---- items: columns, stars, whole rows ---- */

lin_t ml_item_col(lctx_t *c, const item_t *it, const char *name, bool *found)
{
    lin_t l = ml_lin_clean();
    *found = false;
    for (size_t i = 0; i < it->cols.n; i++)
        if (!it->cols.v[i].var && it->cols.v[i].name && !strcmp(it->cols.v[i].name, name)) {
            l = *found ? ml_lin_merge(l, it->cols.v[i].lin) : it->cols.v[i].lin;
            *found = true;
        }
    if (*found || !it->unknown)
        return l;
    *found = true;
    if (it->mtable) {
        lin_t m = table_masks(c, it->mschema, it->mtable, name);
        if (!lin_empty(&m))
            return m;
    }
    return it->ulin;
}

static lin_t star_lin(lctx_t *c, const item_t *it)
{
    lin_t l = it->ulin;
    l.direct = -1;
    if (it->mtable)
        l = ml_lin_or(l, table_masks(c, it->mschema, it->mtable, NULL));
    return l;
}

void ml_item_star(lctx_t *c, const item_t *it, cols_t *out)
{
    for (size_t i = 0; i < it->cols.n; i++)
        ml_cols_push(c, out, it->cols.v[i].name, it->cols.v[i].lin, it->cols.v[i].var);
    if (it->unknown)
        ml_cols_push(c, out, it->name ? it->name : "*", star_lin(c, it), true);
}

static lin_t wholerow(lctx_t *c, const item_t *it)
{
    lin_t l = it->unknown ? star_lin(c, it) : ml_lin_clean();
    for (size_t i = 0; i < it->cols.n; i++)
        l = ml_lin_or(l, it->cols.v[i].lin);
    l.flags |= LF_WHOLEROW;
    l.direct = -1;
    return l;
}

static item_t *find_item(level_t *L, const char *schema, const char *name)
{
    for (; L; L = L->up)
        for (size_t i = 0; i < L->nnamed; i++) {
            item_t *it = L->named[i];
            if (!strcmp(it->name, name) && (!schema || (it->schema && !strcmp(it->schema, schema))))
                return it;
        }
    return NULL;
}

/* Unqualified column name: nearest level with a definite match wins; items
   whose columns are unknown add their lineage and let the search go on. */
static bool lookup_name(lctx_t *c, level_t *L, const char *name, lin_t *out)
{
    bool any = false;
    lin_t acc = ml_lin_clean();
    for (; L; L = L->up) {
        bool definite = false;
        for (size_t i = 0; i < L->nleaves; i++) {
            item_t *it = L->leaves[i];
            bool f;
            lin_t l = ml_item_col(c, it, name, &f);
            if (!f)
                continue;
            acc = any ? ml_lin_merge(acc, l) : l;
            any = true;
            definite |= !it->unknown || l.direct >= 0;
        }
        if (definite)
            break;
    }
    *out = acc;
    return any;
}

static lin_t colref(lctx_t *c, level_t *L, const cJSON *fields)
{
    const char *f[4] = {0};
    int n = 0;
    bool star = false;
    const cJSON *x;
    cJSON_ArrayForEach(x, fields)
    {
        const cJSON *b;
        if (n == 4)
            return ml_lin_uncertain("column reference with too many parts");
        if (is_type(x, "A_Star", &b)) {
            star = true;
            break;
        }
        f[n++] = ml_sval(x);
        if (!f[n - 1])
            return ml_lin_uncertain("unsupported column reference");
    }
    lin_t l;
    item_t *it;
    bool found;
    if (star) {
        if (n == 0) {
            l = ml_lin_clean();
            for (level_t *M = L; M; M = M->up) {
                for (size_t i = 0; i < M->nitems; i++)
                    l = ml_lin_or(l, wholerow(c, M->items[i]));
                if (M->nitems)
                    break;
            }
            l.flags |= LF_WHOLEROW;
            return l;
        }
        it = find_item(L, n >= 2 ? f[n - 2] : NULL, f[n - 1]);
        return it ? wholerow(c, it)
                  : ml_lin_uncertain(ml_la_printf(c, "unknown relation %s", f[n - 1]));
    }
    switch (n) {
    case 1:
        if (lookup_name(c, L, f[0], &l))
            return l;
        if ((it = find_item(L, NULL, f[0])))
            return wholerow(c, it);
        return ml_lin_uncertain(ml_la_printf(c, "column %s not found", f[0]));
    case 2:
        if ((it = find_item(L, NULL, f[0]))) {
            l = ml_item_col(c, it, f[1], &found);
            if (found)
                return l;
        }
        if (lookup_name(c, L, f[0], &l)) /* field of a composite column */
            return lin_derive(l);
        return ml_lin_uncertain(ml_la_printf(c, "column %s.%s not found", f[0], f[1]));
    case 3:
        if ((it = find_item(L, f[0], f[1]))) {
            l = ml_item_col(c, it, f[2], &found);
            if (found)
                return l;
        }
        if ((it = find_item(L, NULL, f[0]))) {
            l = ml_item_col(c, it, f[1], &found);
            if (found)
                return lin_derive(l);
        }
        return ml_lin_uncertain(ml_la_printf(c, "column %s.%s.%s not found", f[0], f[1], f[2]));
    default:
        if ((it = find_item(L, f[1], f[2]))) {
            l = ml_item_col(c, it, f[3], &found);
            if (found)
                return l;
        }
        return ml_lin_uncertain("column reference not found");
    }
}

/* ---- expressions ---- */

static bool name_in(const char *name, const char *const *list)
{
    for (; *list; list++)
        if (!strcmp(name, *list))
            return true;
    return false;
}

/* Functions whose output is data they read by name (a query or table in a
   string): their lineage cannot be followed. */
static const char *const fn_reads_by_name[] = {"query_to_xml",
                                               "query_to_xmlschema",
                                               "query_to_xml_and_xmlschema",
                                               "table_to_xml",
                                               "table_to_xmlschema",
                                               "table_to_xml_and_xmlschema",
                                               "cursor_to_xml",
                                               "cursor_to_xmlschema",
                                               "schema_to_xml",
                                               "schema_to_xmlschema",
                                               "schema_to_xml_and_xmlschema",
                                               "database_to_xml",
                                               "database_to_xmlschema",
                                               "database_to_xml_and_xmlschema",
                                               "dblink",
                                               "dblink_fetch",
                                               "dblink_get_result",
                                               "pg_read_file",
                                               "pg_read_binary_file",
                                               "lo_get",
                                               "loread",
                                               "ts_stat",
                                               "ts_rewrite",
                                               NULL};
/* Functions whose arguments leave the result set: masked data passed to them
   is written somewhere the masks do not follow (or timed). */
static const char *const fn_sinks[] = {"pg_notify",
                                       "set_config",
                                       "pg_logical_emit_message",
                                       "lo_from_bytea",
                                       "lo_put",
                                       "lowrite",
                                       "dblink_exec",
                                       "dblink",
                                       "dblink_send_query",
                                       "setval",
                                       "pg_sleep",
                                       "pg_sleep_for",
                                       "pg_sleep_until",
                                       "pg_file_write",
                                       "pg_advisory_lock",
                                       "pg_advisory_xact_lock",
                                       NULL};
/* Set-returning functions: how many rows they return depends on their arguments. */
static const char *const fn_srfs[] = {"generate_series",
                                      "generate_subscripts",
                                      "unnest",
                                      "regexp_matches",
                                      "regexp_split_to_table",
                                      "string_to_table",
                                      "json_array_elements",
                                      "json_array_elements_text",
                                      "jsonb_array_elements",
                                      "jsonb_array_elements_text",
                                      "json_each",
                                      "json_each_text",
                                      "jsonb_each",
                                      "jsonb_each_text",
                                      "json_object_keys",
                                      "jsonb_object_keys",
                                      "json_populate_recordset",
                                      "jsonb_populate_recordset",
                                      "json_to_recordset",
                                      "jsonb_to_recordset",
                                      "jsonb_path_query",
                                      "ts_debug",
                                      "ts_parse",
                                      NULL};

/* Operators that compute a value rather than test one; every other operator
   (=, <, LIKE's ~~, regex ~, @>, ...) is a condition. */
static bool op_is_arith(const cJSON *name, const cJSON *lexpr)
{
    static const char *const arith[] = {"+",   "-",  "*",   "/",  "%",  "^",  "||", "|/",
                                        "||/", "@",  "&",   "|",  "#",  "<<", ">>", "->",
                                        "->>", "#>", "#>>", "#-", "!!", NULL};
    const char *op = ml_sval(cJSON_GetArrayItem(name, cJSON_GetArraySize(name) - 1));
    if (!op)
        return false;
    if (!lexpr && !strcmp(op, "~"))
        return true; /* unary bitwise not */
    return name_in(op, arith);
}

static lin_t ex_list(lctx_t *c, level_t *L, const cJSON *list)
{
    lin_t l = ml_lin_clean();
    const cJSON *x;
    cJSON_ArrayForEach(x, list) l = ml_lin_or(l, ml_ex(c, L, x));
    return l;
}

static lin_t cond(lctx_t *c, level_t *L, const cJSON *node, const char *clause)
{
    const char *saved = c->clause;
    if (clause)
        c->clause = clause;
    lin_t l = ml_ex(c, L, node);
    c->clause = saved;
    ml_use_add(c, &l, clause ? clause : c->clause, false);
    return l;
}

/* A window's PARTITION BY and ORDER BY: part of the function's value, and
   filters in their own right (rows come out in window order). */
static lin_t window_part(lctx_t *c, level_t *L, const cJSON *w)
{
    lin_t p = ex_list(c, L, ml_jget(w, "partitionClause"));
    lin_t o = ex_list(c, L, ml_jget(w, "orderClause"));
    ml_use_add(c, &p, "window PARTITION BY", false);
    ml_use_add(c, &o, "window ORDER BY", false);
    return ml_lin_or(p, o);
}

static lin_t window_lin(lctx_t *c, level_t *L, const cJSON *w, int hops)
{
    lin_t l = window_part(c, L, w);
    const char *ref = ml_jstr(w, "name") ? ml_jstr(w, "name") : ml_jstr(w, "refname");
    for (level_t *M = L; ref && hops < 8 && M; M = M->up) {
        const cJSON *d;
        cJSON_ArrayForEach(d, M->windows)
        {
            const cJSON *b;
            if (is_type(d, "WindowDef", &b) && ml_jstr(b, "name") &&
                !strcmp(ml_jstr(b, "name"), ref) && b != w)
                return ml_lin_or(l, window_lin(c, L, b, hops + 1));
        }
        if (M->windows)
            break;
    }
    return l;
}

static lin_t funccall(lctx_t *c, level_t *L, const cJSON *b)
{
    const cJSON *fn = ml_jget(b, "funcname");
    int nparts = cJSON_GetArraySize(fn);
    const char *name = ml_sval(cJSON_GetArrayItem(fn, nparts - 1));
    const char *schema = nparts >= 2 ? ml_sval(cJSON_GetArrayItem(fn, nparts - 2)) : NULL;
    lin_t args = ex_list(c, L, ml_jget(b, "args"));
    lin_t l = ml_lin_or(args, ex_list(c, L, ml_jget(b, "agg_order")));
    const cJSON *filter = ml_jget(b, "agg_filter");
    if (filter)
        l = ml_lin_or(l, cond(c, L, filter, "FILTER"));
    const cJSON *over = ml_jget(b, "over");
    if (over)
        l = ml_lin_or(l, window_lin(c, L, over, 0));
    l = lin_derive(l);
    if (!name)
        return ml_lin_or(l, ml_lin_uncertain("unnamed function"));
    if (schema && strcmp(schema, "pg_catalog") && strcmp(schema, "information_schema"))
        l = ml_lin_or(
            l, ml_lin_uncertain(ml_la_printf(c, "function %s.%s is not built in", schema, name)));
    if (name_in(name, fn_reads_by_name)) {
        l = ml_lin_or(l,
                      ml_lin_uncertain(ml_la_printf(c, "%s() reads data named in a string", name)));
        c->touched = true;
    }
    if (ml_lin_masked(&args) && name_in(name, fn_sinks))
        ml_use_add(c, &args, ml_la_printf(c, "%s()", name), true);
    if (ml_lin_masked(&args) && name_in(name, fn_srfs))
        ml_use_add(c, &args, ml_la_printf(c, "set-returning function %s()", name), false);
    return l;
}

static lin_t sublink(lctx_t *c, level_t *L, const cJSON *b)
{
    const char *kind = ml_jstr(b, "subLinkType");
    cols_t sc = {0};
    lin_t l = ml_lin_clean();
    if (ml_q_stmt(c, L, ml_jget(b, "subselect"), &sc) < 0)
        l = ml_lin_uncertain("subquery");
    for (size_t i = 0; i < sc.n; i++)
        l = ml_lin_or(l, sc.v[i].lin);
    l = lin_derive(l);
    if (kind && !strcmp(kind, "EXISTS_SUBLINK"))
        return ml_lin_clean(); /* true or false by the subquery's own filters, recorded there */
    const cJSON *test = ml_jget(b, "testexpr");
    if (test) {
        l = ml_lin_or(l, ml_ex(c, L, test));
        ml_use_add(c, &l, c->clause, false);
    }
    return l;
}

static lin_t indirection(lctx_t *c, level_t *L, const cJSON *b)
{
    const cJSON *arg = ml_jget(b, "arg"), *ind = ml_jget(b, "indirection");
    const cJSON *first = cJSON_GetArrayItem(ind, 0), *ab, *fb;
    const char *field = ml_sval(first);
    if (field && is_type(arg, "ColumnRef", &ab)) {
        const cJSON *fields = ml_jget(ab, "fields");
        const char *nm =
            cJSON_GetArraySize(fields) == 1 ? ml_sval(cJSON_GetArrayItem(fields, 0)) : NULL;
        lin_t dummy;
        item_t *it;
        if (nm && !lookup_name(c, L, nm, &dummy) && (it = find_item(L, NULL, nm))) {
            bool found;
            lin_t l = ml_item_col(c, it, field, &found);
            if (!found)
                l = ml_lin_uncertain(ml_la_printf(c, "field %s not found", field));
            return cJSON_GetArraySize(ind) > 1 ? ml_lin_or(lin_derive(l), ex_list(c, L, ind)) : l;
        }
    }
    lin_t l = lin_derive(ml_ex(c, L, arg));
    if (is_type(first, "A_Star", &fb))
        l.flags |= LF_WHOLEROW;
    return ml_lin_or(l, ex_list(c, L, ind));
}

static lin_t a_expr(lctx_t *c, level_t *L, const cJSON *b)
{
    const cJSON *lx = ml_jget(b, "lexpr"), *rx = ml_jget(b, "rexpr");
    lin_t l = lin_derive(ml_lin_or(ml_ex(c, L, lx), ml_ex(c, L, rx)));
    const char *kind = ml_jstr(b, "kind");
    bool arith = kind && !strcmp(kind, "AEXPR_OP") && op_is_arith(ml_jget(b, "name"), lx);
    if (!arith)
        ml_use_add(c, &l, c->clause, false);
    return l;
}

static lin_t case_expr(lctx_t *c, level_t *L, const cJSON *b)
{
    lin_t conds = ml_ex(c, L, ml_jget(b, "arg")), res = ml_ex(c, L, ml_jget(b, "defresult"));
    const cJSON *w;
    cJSON_ArrayForEach(w, ml_jget(b, "args"))
    {
        const cJSON *wb;
        ml_node_type(w, &wb);
        conds = ml_lin_or(conds, ml_ex(c, L, ml_jget(wb, "expr")));
        res = ml_lin_or(res, ml_ex(c, L, ml_jget(wb, "result")));
    }
    ml_use_add(c, &conds, c->clause, false);
    return lin_derive(ml_lin_or(conds, res));
}

/* Any node type not handled below: the union of everything inside it. */
static lin_t ex_generic(lctx_t *c, level_t *L, const cJSON *body)
{
    lin_t l = ml_lin_clean();
    const cJSON *x;
    cJSON_ArrayForEach(x, body)
    {
        if (cJSON_IsArray(x)) {
            l = ml_lin_or(l, ex_list(c, L, x));
        } else if (cJSON_IsObject(x)) {
            const cJSON *xb;
            l = ml_lin_or(l, ml_node_type(x, &xb) ? ml_ex(c, L, x) : ex_generic(c, L, x));
        }
    }
    return lin_derive(l);
}

lin_t ml_ex(lctx_t *c, level_t *L, const cJSON *node)
{
    const cJSON *b;
    const char *t = ml_node_type(node, &b);
    if (!node || cJSON_IsNull(node))
        return ml_lin_clean();
    if (!t)
        return cJSON_IsArray(node)    ? ex_list(c, L, node)
               : cJSON_IsObject(node) ? ex_generic(c, L, node)
                                      : ml_lin_clean();
    if (++c->depth > MAX_DEPTH) {
        c->depth--;
        return ml_lin_uncertain("expression nested too deeply");
    }
    lin_t l;
    if (!strcmp(t, "ColumnRef"))
        l = colref(c, L, ml_jget(b, "fields"));
    else if (!strcmp(t, "A_Const") || !strcmp(t, "ParamRef") || !strcmp(t, "SQLValueFunction") ||
             !strcmp(t, "SetToDefault") || !strcmp(t, "CurrentOfExpr") || !strcmp(t, "TypeName") ||
             !strcmp(t, "String") || !strcmp(t, "Integer") || !strcmp(t, "A_Star"))
        l = ml_lin_clean();
    else if (!strcmp(t, "TypeCast") || !strcmp(t, "CollateClause"))
        l = ml_ex(c, L, ml_jget(b, "arg"));
    else if (!strcmp(t, "A_Expr"))
        l = a_expr(c, L, b);
    else if (!strcmp(t, "BoolExpr") || !strcmp(t, "BooleanTest") || !strcmp(t, "MinMaxExpr")) {
        l = lin_derive(
            ml_lin_or(ex_list(c, L, ml_jget(b, "args")), ml_ex(c, L, ml_jget(b, "arg"))));
        ml_use_add(c, &l, c->clause, false);
    } else if (!strcmp(t, "CaseExpr"))
        l = case_expr(c, L, b);
    else if (!strcmp(t, "FuncCall"))
        l = funccall(c, L, b);
    else if (!strcmp(t, "SubLink"))
        l = sublink(c, L, b);
    else if (!strcmp(t, "A_Indirection"))
        l = indirection(c, L, b);
    else if (!strcmp(t, "ResTarget"))
        l = ml_ex(c, L, ml_jget(b, "val"));
    else if (!strcmp(t, "MultiAssignRef"))
        l = lin_derive(ml_ex(c, L, ml_jget(b, "source")));
    else if (!strcmp(t, "List"))
        l = lin_derive(ex_list(c, L, ml_jget(b, "items")));
    else if (!strcmp(t, "SortBy"))
        l = ml_ex(c, L, ml_jget(b, "node"));
    else if (!strcmp(t, "SelectStmt")) {
        cols_t sc = {0};
        l = ml_q_select(c, L, b, &sc) < 0 ? ml_lin_uncertain("subquery") : ml_lin_clean();
        for (size_t i = 0; i < sc.n; i++)
            l = ml_lin_or(l, sc.v[i].lin);
        l = lin_derive(l);
    } else
        l = ex_generic(c, L, b);
    c->depth--;
    return l;
}

/* ---- FROM ---- */

static item_t *subquery_item(lctx_t *c, level_t *L, const cJSON *b)
{
    item_t *it = ml_la_alloc(c, sizeof(*it));
    if (!it)
        return NULL;
    const char *alias;
    const cJSON *colnames = alias_of(b, &alias);
    const cJSON *lat = ml_jget(b, "lateral");
    level_t scope = {.up = L->up, .ctes = L->ctes};
    if (ml_q_stmt(c, cJSON_IsTrue(lat) ? L : &scope, ml_jget(b, "subquery"), &it->cols) < 0) {
        it->unknown = true;
        it->ulin = ml_lin_uncertain("subquery");
    }
    for (size_t i = 0; i < it->cols.n; i++)
        if (it->cols.v[i].var) { /* a star over something unknown inside */
            it->unknown = true;
            it->ulin = ml_lin_merge(it->ulin, it->cols.v[i].lin);
        }
    if (!it->unknown)
        it->ulin = ml_lin_clean();
    it->name = ml_la_strdup(c, alias);
    rename_cols(c, &it->cols, colnames);
    return it;
}

static item_t *function_item(lctx_t *c, level_t *L, const cJSON *b, const char *kind)
{
    item_t *it = ml_la_alloc(c, sizeof(*it));
    if (!it)
        return NULL;
    const char *alias, *fname = NULL;
    const cJSON *colnames = alias_of(b, &alias);
    lin_t fl = ml_lin_clean();
    const cJSON *coldefs = ml_jget(b, "coldeflist");
    if (!strcmp(kind, "RangeFunction")) {
        const cJSON *f;
        cJSON_ArrayForEach(f, ml_jget(b, "functions"))
        {
            const cJSON *lb, *items;
            if (is_type(f, "List", &lb) && (items = ml_jget(lb, "items"))) {
                const cJSON *call = cJSON_GetArrayItem(items, 0), *cb;
                fl = ml_lin_or(fl, ml_ex(c, L, call));
                if (!fname && is_type(call, "FuncCall", &cb)) {
                    const cJSON *fn = ml_jget(cb, "funcname");
                    fname = ml_sval(cJSON_GetArrayItem(fn, cJSON_GetArraySize(fn) - 1));
                }
                const cJSON *cd = cJSON_GetArrayItem(items, 1);
                if (cJSON_IsArray(cd) && cJSON_GetArraySize(cd) && !coldefs)
                    coldefs = cd;
            } else {
                fl = ml_lin_or(fl, ml_ex(c, L, f));
            }
        }
    } else { /* RangeTableFunc: XMLTABLE */
        fl = ml_lin_or(ml_ex(c, L, ml_jget(b, "docexpr")), ml_ex(c, L, ml_jget(b, "rowexpr")));
        const cJSON *col;
        cJSON_ArrayForEach(col, ml_jget(b, "columns"))
        {
            const cJSON *cb;
            ml_node_type(col, &cb);
            fl = ml_lin_or(fl, ml_lin_or(ml_ex(c, L, ml_jget(cb, "colexpr")),
                                         ml_ex(c, L, ml_jget(cb, "coldefexpr"))));
        }
        coldefs = ml_jget(b, "columns");
        fname = "xmltable";
    }
    fl = lin_derive(fl);
    ml_use_add(c, &fl, "FROM function", false); /* how many rows come out depends on it */
    it->name = ml_la_strdup(c, alias ? alias : fname);
    if (coldefs) {
        const cJSON *cd;
        cJSON_ArrayForEach(cd, coldefs)
        {
            const cJSON *cb;
            ml_node_type(cd, &cb);
            ml_cols_push(c, &it->cols, ml_la_strdup(c, ml_jstr(cb, "colname")), fl, false);
        }
        if (cJSON_IsTrue(ml_jget(b, "ordinality")) || cJSON_IsTrue(ml_jget(b, "for_ordinality")))
            ml_cols_push(c, &it->cols, "ordinality", ml_lin_clean(), false);
        rename_cols(c, &it->cols, colnames);
    } else {
        it->unknown = true;
        it->ulin = fl;
    }
    return it;
}

static void join_cols(lctx_t *c, item_t *j, const item_t *l, const item_t *r, const cJSON *b)
{
    /* USING / NATURAL: merged columns first, then the others of each side. */
    const char *using[64];
    int nu = 0;
    const cJSON *u;
    cJSON_ArrayForEach(u, ml_jget(b, "usingClause"))
    {
        if (nu < 64 && ml_sval(u))
            using[nu++] = ml_sval(u);
    }
    if (cJSON_IsTrue(ml_jget(b, "isNatural"))) {
        if (l->unknown || r->unknown) {
            lin_t all = ml_lin_or(wholerow(c, l), wholerow(c, r));
            all.flags &= (uint8_t)~LF_WHOLEROW;
            ml_use_add(c, &all, "NATURAL JOIN", false);
            j->unknown = true;
            j->ulin = all;
            return;
        }
        for (size_t i = 0; i < l->cols.n && nu < 64; i++)
            for (size_t k = 0; k < r->cols.n; k++)
                if (!strcmp(l->cols.v[i].name, r->cols.v[k].name)) {
                    using[nu++] = l->cols.v[i].name;
                    break;
                }
    }
    for (int i = 0; i < nu; i++) {
        bool f1, f2;
        lin_t a = ml_item_col(c, l, using[i], &f1), bb = ml_item_col(c, r, using[i], &f2);
        lin_t m = ml_lin_merge(a, bb);
        ml_use_add(c, &m, cJSON_IsTrue(ml_jget(b, "isNatural")) ? "NATURAL JOIN" : "JOIN USING",
                   false);
        ml_cols_push(c, &j->cols, ml_la_strdup(c, using[i]), m, false);
    }
    const item_t *side[2] = {l, r};
    for (int s = 0; s < 2; s++) {
        for (size_t i = 0; i < side[s]->cols.n; i++) {
            bool skip = false;
            for (int k = 0; k < nu && !skip; k++)
                skip = !side[s]->cols.v[i].var && !strcmp(side[s]->cols.v[i].name, using[k]);
            if (!skip)
                ml_cols_push(c, &j->cols, side[s]->cols.v[i].name, side[s]->cols.v[i].lin,
                             side[s]->cols.v[i].var);
        }
        if (side[s]->unknown)
            ml_cols_push(c, &j->cols, "*", star_lin(c, side[s]), true);
    }
}

item_t *ml_from_item(lctx_t *c, level_t *L, const cJSON *node)
{
    const cJSON *b;
    const char *t = ml_node_type(node, &b);
    item_t *it = NULL;
    if (!t) {
        return NULL;
    } else if (!strcmp(t, "RangeVar")) {
        it = ml_rangevar_item(c, L, b);
    } else if (!strcmp(t, "RangeSubselect")) {
        it = subquery_item(c, L, b);
    } else if (!strcmp(t, "RangeFunction") || !strcmp(t, "RangeTableFunc")) {
        it = function_item(c, L, b, t);
    } else if (!strcmp(t, "RangeTableSample")) {
        (void)ex_list(c, L, ml_jget(b, "args"));
        return ml_from_item(c, L, ml_jget(b, "relation"));
    } else if (!strcmp(t, "JoinExpr")) {
        item_t *l = ml_from_item(c, L, ml_jget(b, "larg"));
        item_t *r = ml_from_item(c, L, ml_jget(b, "rarg"));
        it = ml_la_alloc(c, sizeof(*it));
        if (!it || !l || !r)
            return it;
        it->is_join = true;
        it->ulin = ml_lin_clean();
        join_cols(c, it, l, r, b);
        const char *alias;
        const cJSON *colnames = alias_of(b, &alias);
        it->name = ml_la_strdup(c, alias);
        rename_cols(c, &it->cols, colnames);
        if (it->name)
            ml_level_add(c, L, it, false);
        const cJSON *quals = ml_jget(b, "quals");
        if (quals)
            (void)cond(c, L, quals, "JOIN ON");
        return it;
    } else {
        it = ml_la_alloc(c, sizeof(*it));
        if (it) {
            it->unknown = true;
            it->ulin = ml_lin_uncertain(ml_la_printf(c, "unsupported FROM item %s", t));
        }
    }
    if (it && !it->is_join)
        ml_level_add(c, L, it, false);
    return it;
}

/* ---- SELECT ---- */

static const char *target_name(const cJSON *rt, const cJSON *val)
{
    const char *n = ml_jstr(rt, "name");
    const cJSON *b;
    const char *t = ml_node_type(val, &b);
    if (n || !t)
        return n ? n : "?column?";
    if (!strcmp(t, "ColumnRef")) {
        const cJSON *f = ml_jget(b, "fields");
        const char *s = ml_sval(cJSON_GetArrayItem(f, cJSON_GetArraySize(f) - 1));
        return s ? s : "?column?";
    }
    if (!strcmp(t, "FuncCall")) {
        const cJSON *f = ml_jget(b, "funcname");
        const char *s = ml_sval(cJSON_GetArrayItem(f, cJSON_GetArraySize(f) - 1));
        return s ? s : "?column?";
    }
    if (!strcmp(t, "TypeCast") || !strcmp(t, "CollateClause"))
        return target_name(NULL, ml_jget(b, "arg"));
    if (!strcmp(t, "A_Indirection")) {
        const cJSON *ind = ml_jget(b, "indirection");
        const char *s = ml_sval(cJSON_GetArrayItem(ind, cJSON_GetArraySize(ind) - 1));
        return s ? s : target_name(NULL, ml_jget(b, "arg"));
    }
    if (!strcmp(t, "CaseExpr"))
        return "case";
    return "?column?";
}

static void star_expand(lctx_t *c, level_t *L, const char **f, int n, cols_t *out)
{
    if (n == 0) {
        for (size_t i = 0; i < L->nitems; i++)
            ml_item_star(c, L->items[i], out);
        return;
    }
    item_t *it = find_item(L, n >= 2 ? f[n - 2] : NULL, f[n - 1]);
    if (it)
        ml_item_star(c, it, out);
    else
        ml_cols_push(c, out, "*",
                     ml_lin_uncertain(ml_la_printf(c, "unknown relation %s", f[n - 1])), true);
}

void ml_targets(lctx_t *c, level_t *L, const cJSON *list, cols_t *out)
{
    const cJSON *x;
    cJSON_ArrayForEach(x, list)
    {
        const cJSON *rt, *val, *vb;
        if (!is_type(x, "ResTarget", &rt))
            continue;
        val = ml_jget(rt, "val");
        const char *t = ml_node_type(val, &vb);
        if (t && !strcmp(t, "ColumnRef")) {
            const cJSON *fields = ml_jget(vb, "fields");
            const cJSON *last = cJSON_GetArrayItem(fields, cJSON_GetArraySize(fields) - 1), *lb;
            if (is_type(last, "A_Star", &lb)) {
                const char *f[4] = {0};
                int n = 0;
                const cJSON *fx;
                cJSON_ArrayForEach(fx, fields)
                {
                    if (n < 4 && ml_sval(fx))
                        f[n++] = ml_sval(fx);
                }
                star_expand(c, L, f, n, out);
                continue;
            }
        }
        if (t && !strcmp(t, "A_Indirection")) {
            const cJSON *ind = ml_jget(vb, "indirection"), *lb, *ab;
            const cJSON *last = cJSON_GetArrayItem(ind, cJSON_GetArraySize(ind) - 1);
            if (cJSON_GetArraySize(ind) == 1 && is_type(last, "A_Star", &lb)) { /* (x).* */
                const cJSON *arg = ml_jget(vb, "arg");
                const char *nm = NULL;
                lin_t dummy;
                if (is_type(arg, "ColumnRef", &ab) &&
                    cJSON_GetArraySize(ml_jget(ab, "fields")) == 1)
                    nm = ml_sval(cJSON_GetArrayItem(ml_jget(ab, "fields"), 0));
                item_t *it = nm && !lookup_name(c, L, nm, &dummy) ? find_item(L, NULL, nm) : NULL;
                if (it)
                    ml_item_star(c, it, out);
                else
                    ml_cols_push(c, out, "*", lin_derive(ml_ex(c, L, arg)), true);
                continue;
            }
        }
        lin_t l = ml_ex(c, L, val);
        ml_cols_push(c, out, ml_la_strdup(c, target_name(rt, val)), l, false);
    }
}

/* ORDER BY / GROUP BY / DISTINCT ON item: an output column by number or name,
   or an expression over the input. Both readings are taken when both exist. */
static lin_t sort_item(lctx_t *c, level_t *L, const cJSON *node)
{
    const cJSON *b;
    const char *t = ml_node_type(node, &b);
    if (t && !strcmp(t, "SortBy"))
        node = ml_jget(b, "node");
    t = ml_node_type(node, &b);
    if (t && !strcmp(t, "A_Const") && L->outputs) {
        const cJSON *iv = ml_jget(ml_jget(b, "ival"), "ival");
        int k = cJSON_IsNumber(iv) ? iv->valueint : 0;
        if (k >= 1 && (size_t)k <= L->outputs->n && !L->outputs->v[k - 1].var)
            return L->outputs->v[k - 1].lin;
        if (k >= 1) { /* a position inside a star over something unknown */
            lin_t all = ml_lin_clean();
            for (size_t i = 0; i < L->outputs->n; i++)
                all = ml_lin_or(all, L->outputs->v[i].lin);
            return all;
        }
        return ml_lin_clean();
    }
    if (t && !strcmp(t, "GroupingSet"))
        return ex_list(c, L, ml_jget(b, "content"));
    if (t && !strcmp(t, "ColumnRef") && L->outputs &&
        cJSON_GetArraySize(ml_jget(b, "fields")) == 1) {
        const char *nm = ml_sval(cJSON_GetArrayItem(ml_jget(b, "fields"), 0));
        lin_t in, acc = ml_lin_clean();
        bool any = false;
        for (size_t i = 0; nm && i < L->outputs->n; i++)
            if (L->outputs->v[i].name && !strcmp(L->outputs->v[i].name, nm)) {
                acc = any ? ml_lin_merge(acc, L->outputs->v[i].lin) : L->outputs->v[i].lin;
                any = true;
            }
        if (nm && lookup_name(c, L, nm, &in))
            return any ? ml_lin_merge(acc, in) : in;
        if (any)
            return acc;
    }
    return ml_ex(c, L, node);
}

static void sort_uses(lctx_t *c, level_t *L, const cJSON *list, const char *clause)
{
    const char *saved = c->clause;
    c->clause = clause;
    const cJSON *x;
    cJSON_ArrayForEach(x, list)
    {
        lin_t l = sort_item(c, L, x);
        ml_use_add(c, &l, clause, false);
    }
    c->clause = saved;
}

void ml_do_ctes(lctx_t *c, level_t *L, const cJSON *with)
{
    if (!with)
        return;
    bool recursive = cJSON_IsTrue(ml_jget(with, "recursive"));
    const cJSON *x;
    cJSON_ArrayForEach(x, ml_jget(with, "ctes"))
    {
        const cJSON *b;
        if (!is_type(x, "CommonTableExpr", &b))
            continue;
        cte_t *cte = ml_la_alloc(c, sizeof(*cte));
        if (!cte)
            return;
        cte->name = ml_la_strdup(c, ml_jstr(b, "ctename") ? ml_jstr(b, "ctename") : "?");
        const cJSON *q = ml_jget(b, "ctequery"), *names = ml_jget(b, "aliascolnames");
        if (!recursive) {
            if (ml_q_stmt(c, L, q, &cte->cols) < 0) {
                cte->unknown = true;
                cte->ulin = ml_lin_uncertain("CTE");
            }
            rename_cols(c, &cte->cols, names);
            cte->next = L->ctes;
            L->ctes = cte;
            continue;
        }
        /* WITH RECURSIVE: iterate to a fixed point, starting from a clean CTE
           of unknown shape; lineage only grows, so this converges. */
        cte->unknown = true;
        cte->ulin = ml_lin_clean();
        cte->next = L->ctes;
        L->ctes = cte;
        bool stable = false;
        for (int it = 0; it < 8 && !stable; it++) {
            cols_t nc = {0};
            if (ml_q_stmt(c, L, q, &nc) < 0)
                break;
            rename_cols(c, &nc, names);
            stable = !cte->unknown && nc.n == cte->cols.n;
            for (size_t i = 0; stable && i < nc.n; i++)
                stable = !memcmp(nc.v[i].lin.m, cte->cols.v[i].lin.m, sizeof(nc.v[i].lin.m)) &&
                         nc.v[i].lin.flags == cte->cols.v[i].lin.flags &&
                         nc.v[i].lin.direct == cte->cols.v[i].lin.direct;
            cte->cols = nc;
            cte->unknown = false;
            for (size_t i = 0; i < nc.n; i++)
                if (nc.v[i].var) {
                    cte->unknown = true;
                    cte->ulin = ml_lin_merge(cte->ulin, nc.v[i].lin);
                }
        }
        if (!stable) {
            for (size_t i = 0; i < cte->cols.n; i++)
                cte->cols.v[i].lin = ml_lin_uncertain("recursive CTE did not settle");
            cte->unknown = true;
            cte->ulin = ml_lin_uncertain("recursive CTE did not settle");
        }
    }
}

static void setop_merge(lctx_t *c, cols_t *l, const cols_t *r, cols_t *out)
{
    bool var = false;
    for (size_t i = 0; i < l->n; i++)
        var |= l->v[i].var;
    for (size_t i = 0; i < r->n; i++)
        var |= r->v[i].var;
    if (!var && l->n == r->n) {
        for (size_t i = 0; i < l->n; i++)
            ml_cols_push(c, out, l->v[i].name, ml_lin_merge(l->v[i].lin, r->v[i].lin), false);
        return;
    }
    /* shapes cannot be lined up: one run of columns carrying everything */
    lin_t all = ml_lin_clean();
    for (size_t i = 0; i < l->n; i++)
        all = ml_lin_or(all, l->v[i].lin);
    for (size_t i = 0; i < r->n; i++)
        all = ml_lin_or(all, r->v[i].lin);
    if (l->n != r->n && !var)
        all = ml_lin_or(all, ml_lin_uncertain("set operation branches differ in width"));
    ml_cols_push(c, out, "*", all, true);
}

static void limits(lctx_t *c, level_t *L, const cJSON *s)
{
    const cJSON *lc = ml_jget(s, "limitCount"), *lo = ml_jget(s, "limitOffset");
    if (lc)
        (void)cond(c, L, lc, "LIMIT");
    if (lo)
        (void)cond(c, L, lo, "OFFSET");
}

int ml_q_select(lctx_t *c, level_t *outer, const cJSON *s, cols_t *out)
{
    if (++c->depth > MAX_DEPTH) {
        c->depth--;
        return -1;
    }
    level_t L = {.up = outer};
    ml_do_ctes(c, &L, ml_jget(s, "withClause"));
    const char *op = ml_jstr(s, "op");
    const char *saved = c->clause;
    if (op && strcmp(op, "SETOP_NONE")) {
        cols_t lc = {0}, rc = {0};
        int rl = ml_q_select(c, &L, ml_jget(s, "larg"), &lc);
        int rr = ml_q_select(c, &L, ml_jget(s, "rarg"), &rc);
        if (rl < 0 || rr < 0) {
            c->depth--;
            return -1;
        }
        setop_merge(c, &lc, &rc, out);
        bool all = cJSON_IsTrue(ml_jget(s, "all"));
        const char *clause = !strcmp(op, "SETOP_UNION")       ? "UNION"
                             : !strcmp(op, "SETOP_INTERSECT") ? "INTERSECT"
                                                              : "EXCEPT";
        if (!all || strcmp(clause, "UNION")) /* rows compared across branches */
            for (size_t i = 0; i < out->n; i++)
                ml_use_add(c, &out->v[i].lin, clause, false);
    } else if (ml_jget(s, "valuesLists")) {
        cols_t acc = {0};
        bool first = true;
        const cJSON *row;
        c->clause = "VALUES";
        cJSON_ArrayForEach(row, ml_jget(s, "valuesLists"))
        {
            const cJSON *rb;
            ml_node_type(row, &rb);
            const cJSON *items = ml_jget(rb, "items"), *v;
            size_t i = 0;
            cJSON_ArrayForEach(v, items)
            {
                lin_t l = ml_ex(c, &L, v);
                if (first)
                    ml_cols_push(c, &acc, ml_la_printf(c, "column%zu", i + 1), l, false);
                else if (i < acc.n)
                    acc.v[i].lin = ml_lin_merge(acc.v[i].lin, l);
                i++;
            }
            first = false;
        }
        *out = acc;
    } else {
        const cJSON *f;
        c->clause = "FROM";
        cJSON_ArrayForEach(f, ml_jget(s, "fromClause"))
            ml_level_add(c, &L, ml_from_item(c, &L, f), true);
        c->clause = saved;
        const cJSON *where = ml_jget(s, "whereClause");
        if (where)
            (void)cond(c, &L, where, "WHERE");
        L.windows = ml_jget(s, "windowClause");
        c->clause = "a condition in the SELECT list";
        ml_targets(c, &L, ml_jget(s, "targetList"), out);
        c->clause = saved;
        L.outputs = out;
        sort_uses(c, &L, ml_jget(s, "groupClause"), "GROUP BY");
        const cJSON *having = ml_jget(s, "havingClause");
        if (having)
            (void)cond(c, &L, having, "HAVING");
        const cJSON *dist = ml_jget(s, "distinctClause");
        if (cJSON_IsArray(dist) && cJSON_GetArraySize(dist)) {
            const cJSON *d0 = cJSON_GetArrayItem(dist, 0);
            if (cJSON_GetArraySize(dist) == 1 && cJSON_IsObject(d0) && !d0->child) {
                for (size_t i = 0; i < out->n; i++) /* plain DISTINCT compares rows */
                    ml_use_add(c, &out->v[i].lin, "DISTINCT", false);
            } else {
                sort_uses(c, &L, dist, "DISTINCT ON");
            }
        }
        const cJSON *w;
        cJSON_ArrayForEach(w, L.windows)
        {
            const cJSON *wb;
            ml_node_type(w, &wb);
            (void)ex_list(c, &L, ml_jget(wb, "partitionClause"));
            (void)ex_list(c, &L, ml_jget(wb, "orderClause"));
        }
        if (ml_jget(s, "intoClause"))
            for (size_t i = 0; i < out->n; i++)
                ml_use_add(c, &out->v[i].lin, "SELECT INTO", true);
    }
    L.outputs = out;
    sort_uses(c, &L, ml_jget(s, "sortClause"), "ORDER BY");
    limits(c, &L, s);
    c->clause = saved;
    c->depth--;
    return c->failed ? -1 : 0;
}
