/*
 * Intent extraction: libpg_query's JSON parse tree -> the accesses each
 * statement makes (SPEC 5.1), independent of session and role so that the
 * parse cache can keep it.
 *
 * Fail closed: the walker knows every node type by name (handlers[] below, a
 * whitelist). A node it does not know, a structure it does not expect, or a
 * tree too deep to walk becomes an `unknown` access, which only a rule that
 * lists "unknown" explicitly can let through.
 *
 * JSON shape (libpg_query 15): a field of type Node holds {"TypeName": {...}}
 * (a "wrapper"); a field whose type is a specific message holds that struct
 * bare ({"relname": ...}); default values (false, 0, "", empty lists) are
 * left out. policy_field_type() knows the type of every bare field.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <pg_query.h>

#include "policy/internal.h"

#define MAX_JSON_DEPTH 1000 /* bounds the walker's recursion (about 200 nested subqueries) */
#define MAX_DEPTH 1500      /* node levels; the JSON bound is reached first */
#define MAX_ACCESSES 20000  /* distinct accesses per statement */

typedef struct cte_scope {
    struct cte_scope *parent;
    const char **names;
    size_t n, n_visible;
} cte_scope_t;

typedef struct walker {
    intent_t *in;
    pstmt_t *st;
    raccess_t *acc; /* growing list of the current statement */
    size_t n_acc, cap_acc;
    uint32_t *hash; /* open addressing over acc indexes + 1, for dedupe */
    size_t hash_cap;
    policy_op_t op;    /* operation charged for relations met in expressions/FROM */
    bool explain_only; /* under plain EXPLAIN: relations are charged `explain` */
    cte_scope_t *scope;
    const char *schema_elts; /* inside CREATE SCHEMA s ...: s comes first in the path */
    int depth;
    bool oom;
} walker_t;

typedef void (*handler_fn)(walker_t *w, const char *type, const jnode_t *n, const char *verb);

static void walk_node(walker_t *w, const jnode_t *wrapper);
static void walk_typed(walker_t *w, const char *type, const jnode_t *n);
static void walk_fields(walker_t *w, const char *type, const jnode_t *n);
static void walk_value(walker_t *w, const char *type, const jnode_t *v);

/* ---- small JSON helpers ---- */

static const jnode_t *get(const jnode_t *o, const char *k)
{
    return json_get(o, k);
}

static const char *get_str(const jnode_t *o, const char *k)
{
    const jnode_t *v = get(o, k);
    return v && v->type == J_STR ? v->str : NULL;
}

static bool get_bool(const jnode_t *o, const char *k)
{
    const jnode_t *v = get(o, k);
    return v && v->type == J_TRUE;
}

static bool is_obj(const jnode_t *v)
{
    return v && v->type == J_OBJ;
}

static bool is_arr(const jnode_t *v)
{
    return v && v->type == J_ARR;
}

static double num(const jnode_t *v)
{
    return v && v->type == J_NUM ? v->num : 0;
}

static size_t count(const jnode_t *v)
{
    return is_arr(v) ? v->n : 0;
}

/* {"T": {...}} with T a node type name: returns T and sets *body. */
static const char *wrapper_type(const jnode_t *v, const jnode_t **body)
{
    if (!is_obj(v) || !v->child || v->child->next || !is_obj(v->child))
        return NULL;
    const char *t = v->child->key;
    if (!t || !isupper((unsigned char)t[0]))
        return NULL;
    *body = v->child;
    return t;
}

/* The sval of a {"String": {"sval": s}} node. */
static const char *string_node(const jnode_t *v)
{
    const jnode_t *b;
    const char *t = wrapper_type(v, &b);
    if (!t || strcmp(t, "String"))
        return NULL;
    const char *s = get_str(b, "sval");
    return s ? s : "";
}

/* ---- recording ---- */

static uint32_t hash_access(const raccess_t *a)
{
    uint32_t h = 2166136261u;
    const unsigned char *p;
    h = (h ^ a->op) * 16777619u;
    h = (h ^ a->kind) * 16777619u;
    h = (h ^ a->flags) * 16777619u;
    h = (h ^ a->builtin) * 16777619u;
    for (p = (const unsigned char *)(a->schema ? a->schema : "\x01"); *p; p++)
        h = (h ^ *p) * 16777619u;
    h = (h ^ '.') * 16777619u;
    for (p = (const unsigned char *)a->name; *p; p++)
        h = (h ^ *p) * 16777619u;
    return h;
}

static bool same_access(const raccess_t *a, const raccess_t *b)
{
    return a->op == b->op && a->kind == b->kind && a->flags == b->flags &&
           a->builtin == b->builtin && !strcmp(a->name, b->name) &&
           ((!a->schema && !b->schema) ||
            (a->schema && b->schema && !strcmp(a->schema, b->schema)));
}

static bool rehash(walker_t *w)
{
    size_t cap = w->hash_cap ? w->hash_cap * 2 : 64;
    uint32_t *h = calloc(cap, sizeof(*h));
    if (!h)
        return false;
    for (size_t i = 0; i < w->n_acc; i++) {
        size_t j = hash_access(&w->acc[i]) & (cap - 1);
        while (h[j])
            j = (j + 1) & (cap - 1);
        h[j] = (uint32_t)i + 1;
    }
    free(w->hash);
    w->hash = h;
    w->hash_cap = cap;
    return true;
}

/* Record an access (deduplicated). schema/name may point into the JSON tree:
 * they are copied into the intent's arena. */
static void add(walker_t *w, policy_op_t op, policy_obj_t kind, unsigned flags, builtin_t b,
                const char *schema, const char *name, const char *verb)
{
    if (w->oom)
        return;
    if (w->explain_only && kind == POLICY_OBJ_RELATION) {
        op = POLICY_OP_EXPLAIN;
        verb = "EXPLAIN";
    }
    raccess_t a = {(uint8_t)op,
                   (uint8_t)kind,
                   (uint8_t)flags,
                   (uint8_t)b,
                   schema,
                   name ? name : "",
                   verb ? verb : policy_op_verb(op)};
    if ((w->n_acc + 1) * 2 > w->hash_cap && !rehash(w)) {
        w->oom = true;
        return;
    }
    size_t j = hash_access(&a) & (w->hash_cap - 1);
    while (w->hash[j]) {
        if (same_access(&w->acc[w->hash[j] - 1], &a))
            return;
        j = (j + 1) & (w->hash_cap - 1);
    }
    if (w->n_acc >= MAX_ACCESSES) {
        if (w->n_acc == MAX_ACCESSES) { /* one marker, then stop growing */
            a = (raccess_t){POLICY_OP_UNKNOWN,
                            POLICY_OBJ_NONE,
                            0,
                            B_TOO_COMPLEX,
                            NULL,
                            "",
                            "statement with too many accesses"};
        } else {
            return;
        }
    }
    if (w->n_acc == w->cap_acc) {
        size_t cap = w->cap_acc ? w->cap_acc * 2 : 16;
        raccess_t *g = realloc(w->acc, cap * sizeof(*g));
        if (!g) {
            w->oom = true;
            return;
        }
        w->acc = g;
        w->cap_acc = cap;
    }
    policy_arena_t *ar = &w->in->arena;
    if (a.schema)
        a.schema = arena_strdup(ar, a.schema);
    a.name = arena_strdup(ar, a.name);
    if (ar->failed) {
        w->oom = true;
        return;
    }
    w->acc[w->n_acc] = a;
    w->hash[j] = (uint32_t)++w->n_acc;
}

/* Unqualified names inside CREATE SCHEMA's elements: PostgreSQL puts the new
 * schema in front of the search_path while it runs them, so it is one more
 * candidate besides the session's path. */
static void add_named(walker_t *w, policy_op_t op, policy_obj_t kind, unsigned flags, builtin_t b,
                      const char *schema, const char *name, const char *verb)
{
    if (!schema && w->schema_elts)
        add(w, op, kind, flags, b, w->schema_elts, name, verb);
    add(w, op, kind, flags, b, schema, name, verb);
}

static void unknown(walker_t *w, const char *what)
{
    add(w, POLICY_OP_UNKNOWN, POLICY_OBJ_OTHER, 0, B_NONE, NULL, what, "unknown statement part");
}

/* Add `op` with no object unless an access with that op was recorded since index `from`. */
static void ensure(walker_t *w, size_t from, policy_op_t op, const char *verb)
{
    for (size_t i = from; i < w->n_acc; i++)
        if (w->acc[i].op == op)
            return;
    add(w, op, POLICY_OBJ_NONE, 0, B_NONE, NULL, "", verb);
}

static bool cte_visible(const walker_t *w, const char *name)
{
    for (const cte_scope_t *s = w->scope; s; s = s->parent)
        for (size_t i = 0; i < s->n_visible; i++)
            if (!strcmp(s->names[i], name))
                return true;
    return false;
}

/* A RangeVar body: charge op on it. allow_cte: an unqualified name may be a
 * CTE in scope (FROM items only; DML targets, COPY, DDL never see CTEs). */
static void add_rangevar(walker_t *w, const jnode_t *rv, policy_op_t op, const char *verb,
                         bool allow_cte)
{
    const char *rel = get_str(rv, "relname");
    const char *schema = get_str(rv, "schemaname");
    if (!rel) {
        unknown(w, "RangeVar without relname");
        return;
    }
    if (!schema && allow_cte && cte_visible(w, rel))
        return;
    const char *p = get_str(rv, "relpersistence");
    if (p && !strcmp(p, "t")) {
        w->st->flags |= PS_TEMP;
        if (!schema)
            schema = "pg_temp";
    }
    add_named(w, op, POLICY_OBJ_RELATION, 0, B_NONE, schema, rel, verb);
}

/* ---- constant truth, for without_where ---- */

static const char *aconst_str(const jnode_t *c)
{
    const jnode_t *s = get(c, "sval");
    return s ? get_str(s, "sval") : NULL;
}

static bool bool_word(const char *s, bool *v)
{
    static const char *const t[] = {"t", "true", "y", "yes", "on", "1"};
    static const char *const f[] = {"f", "false", "n", "no", "off", "0"};
    for (size_t i = 0; i < 6; i++) {
        if (!strcasecmp(s, t[i])) {
            *v = true;
            return true;
        }
        if (!strcasecmp(s, f[i])) {
            *v = false;
            return true;
        }
    }
    return false;
}

/* 1 = constant true, 0 = constant false, -1 = not a constant we know. */
static int const_truth(const jnode_t *e, int depth)
{
    const jnode_t *b;
    const char *t = wrapper_type(e, &b);
    if (!t || depth > 50)
        return -1;
    if (!strcmp(t, "A_Const")) {
        const jnode_t *bv = get(b, "boolval");
        if (bv)
            return get_bool(bv, "boolval") ? 1 : 0;
        return -1;
    }
    if (!strcmp(t, "TypeCast")) {
        const jnode_t *arg = get(b, "arg"), *ab;
        const char *at = wrapper_type(arg, &ab);
        if (at && !strcmp(at, "A_Const")) {
            const char *s = aconst_str(ab);
            bool v;
            if (s && bool_word(s, &v))
                return v;
            if (get(ab, "boolval"))
                return const_truth(arg, depth + 1);
        }
        return -1;
    }
    if (!strcmp(t, "BoolExpr")) {
        const char *op = get_str(b, "boolop");
        const jnode_t *args = get(b, "args"), *a;
        if (!op)
            return -1;
        if (!strcmp(op, "NOT_EXPR")) {
            int v = args ? const_truth(args->child, depth + 1) : -1;
            return v < 0 ? -1 : !v;
        }
        bool is_or = !strcmp(op, "OR_EXPR");
        int res = is_or ? 0 : 1;
        JSON_FOREACH(a, args)
        {
            int v = const_truth(a, depth + 1);
            if (is_or && v == 1)
                return 1;
            if (!is_or && v == 0)
                return 0;
            if (v < 0)
                res = -1;
        }
        return res;
    }
    if (!strcmp(t, "A_Expr")) {
        const char *kind = get_str(b, "kind");
        const jnode_t *name = get(b, "name");
        const char *op = name ? string_node(name->child) : NULL;
        if (!kind || strcmp(kind, "AEXPR_OP") || !op || (name->child && name->child->next))
            return -1;
        const jnode_t *l = get(b, "lexpr"), *r = get(b, "rexpr"), *lb, *rb;
        const char *lt = wrapper_type(l, &lb), *rt = wrapper_type(r, &rb);
        if (!lt || !rt)
            return -1;
        if (!strcmp(lt, "ColumnRef") && !strcmp(rt, "ColumnRef")) {
            /* x = x holds for every row where x is not null: as good as no WHERE */
            const jnode_t *lf = get(lb, "fields"), *rf = get(rb, "fields");
            if (!strcmp(op, "=") && lf && rf && json_equal(lf, rf))
                return 1;
            return -1;
        }
        if (strcmp(lt, "A_Const") || strcmp(rt, "A_Const"))
            return -1;
        const jnode_t *li = get(lb, "ival"), *ri = get(rb, "ival");
        const char *ls = aconst_str(lb), *rs = aconst_str(rb);
        int c;
        if (li && ri) {
            long a = (long)num(get(li, "ival") ? get(li, "ival") : li);
            long d = (long)num(get(ri, "ival") ? get(ri, "ival") : ri);
            if (!get(li, "ival"))
                a = 0;
            if (!get(ri, "ival"))
                d = 0;
            c = a < d ? -1 : a > d;
        } else if (ls && rs) {
            c = strcmp(ls, rs);
            c = c < 0 ? -1 : c > 0;
        } else {
            return -1;
        }
        if (!strcmp(op, "="))
            return c == 0;
        if (!strcmp(op, "<>") || !strcmp(op, "!="))
            return c != 0;
        if (!strcmp(op, "<"))
            return c < 0;
        if (!strcmp(op, ">"))
            return c > 0;
        if (!strcmp(op, "<="))
            return c <= 0;
        if (!strcmp(op, ">="))
            return c >= 0;
        return -1;
    }
    if (!strcmp(t, "NullTest")) {
        const jnode_t *ab;
        const char *at = wrapper_type(get(b, "arg"), &ab);
        const char *nt = get_str(b, "nulltesttype");
        if (at && !strcmp(at, "A_Const") && nt) {
            bool isnull = get_bool(ab, "isnull");
            return !strcmp(nt, "IS_NULL") ? isnull : !isnull;
        }
        return -1;
    }
    return -1;
}

static bool without_where(const jnode_t *where)
{
    return !where || const_truth(where, 0) == 1;
}

/* ---- WITH ---- */

/* Walks the CTE queries with PostgreSQL's visibility (a non-recursive CTE
 * sees only the ones before it; WITH RECURSIVE lets every CTE see all) and
 * leaves the scope pushed for the statement body. Returns the scope to pop. */
static cte_scope_t *push_with(walker_t *w, const jnode_t *with)
{
    if (!with)
        return NULL;
    const jnode_t *ctes = get(with, "ctes"), *c;
    bool recursive = get_bool(with, "recursive");
    size_t n = count(ctes);
    cte_scope_t *s = calloc(1, sizeof(*s) + n * sizeof(char *));
    if (!s) {
        w->oom = true;
        return NULL;
    }
    s->names = (const char **)(s + 1);
    JSON_FOREACH(c, ctes)
    {
        const jnode_t *b;
        const char *t = wrapper_type(c, &b);
        const char *name = t && !strcmp(t, "CommonTableExpr") ? get_str(b, "ctename") : NULL;
        s->names[s->n++] = name ? name : "";
        if (!name)
            unknown(w, "WITH item");
    }
    s->parent = w->scope;
    w->scope = s;
    size_t i = 0;
    JSON_FOREACH(c, ctes)
    {
        const jnode_t *b;
        s->n_visible = recursive ? s->n : i++;
        if (wrapper_type(c, &b))
            walk_value(w, "CommonTableExpr", get(b, "ctequery"));
    }
    s->n_visible = s->n;
    return s;
}

static void pop_with(walker_t *w, cte_scope_t *s)
{
    if (s) {
        w->scope = s->parent;
        free(s);
    }
}

/* Walk every field of n except those named in skip (NULL-terminated). */
static void walk_fields_except(walker_t *w, const char *type, const jnode_t *n,
                               const char *const *skip)
{
    const jnode_t *c;
    JSON_FOREACH(c, n)
    {
        bool skipped = false;
        for (const char *const *k = skip; k && *k && !skipped; k++)
            skipped = !strcmp(c->key, *k);
        if (!skipped)
            walk_value(w, type, c);
    }
}

/* ---- handlers: expressions ---- */

static void h_leaf(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    (void)w, (void)type, (void)n, (void)verb;
}

static void h_generic(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    (void)verb;
    walk_fields(w, type, n);
}

static void h_rangevar(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    (void)type;
    add_rangevar(w, n, w->op, verb, true);
}

/* set_config(name, ...): settings the gateway pins or tracks may not change
 * this way, whatever the rules say; other names go to the function rules. */
static bool pinned_setting(const char *name)
{
    static const char *const pinned[] = {
        "search_path",           "standard_conforming_strings",   "client_encoding",      "role",
        "session_authorization", "default_transaction_read_only", "transaction_read_only"};
    for (size_t i = 0; i < sizeof(pinned) / sizeof(pinned[0]); i++)
        if (!strcasecmp(name, pinned[i]))
            return true;
    return false;
}

static void funccall(walker_t *w, const jnode_t *n, unsigned flags)
{
    const jnode_t *fn = get(n, "funcname"), *p;
    const char *parts[3] = {0};
    size_t k = 0;
    JSON_FOREACH(p, fn)
    {
        const char *s = string_node(p);
        if (!s || k == 3) {
            unknown(w, "function name");
            return;
        }
        parts[k++] = s;
    }
    if (k == 0) {
        unknown(w, "function name");
        return;
    }
    const char *name = parts[k - 1], *schema = k >= 2 ? parts[k - 2] : NULL;
    if (!strcmp(name, "set_config")) {
        const jnode_t *args = get(n, "args"), *ab;
        const char *at = args ? wrapper_type(args->child, &ab) : NULL;
        const char *setting = at && !strcmp(at, "A_Const") ? aconst_str(ab) : NULL;
        if (!setting || pinned_setting(setting))
            add(w, POLICY_OP_SESSION, POLICY_OBJ_SETTING, 0, B_PINNED, NULL,
                setting ? setting : "(computed name)", "set_config of");
    }
    if (!(flags & RA_CALL) && policy_writer_function(name))
        w->st->flags |= PS_WRITES;
    add_named(w, POLICY_OP_FUNCTION, POLICY_OBJ_FUNCTION, flags, B_NONE, schema, name,
              flags & RA_CALL ? "CALL of" : "call of");
    static const char *const skip[] = {"funcname", NULL};
    walk_fields_except(w, "FuncCall", n, skip);
}

static void h_funccall(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    (void)type, (void)verb;
    funccall(w, n, 0);
}

/* FOR UPDATE OF a, b: names of FROM items, not new relations. */
static void h_locking(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    (void)w, (void)type, (void)n, (void)verb;
}

/* ---- handlers: DML ---- */

static void h_select(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    (void)verb;
    policy_op_t saved = w->op;
    cte_scope_t *s = push_with(w, get(n, "withClause"));
    w->op = POLICY_OP_SELECT;
    const jnode_t *into = get(n, "intoClause");
    if (into) {
        const jnode_t *rel = get(into, "rel");
        if (rel)
            add_rangevar(w, rel, POLICY_OP_DDL, "SELECT INTO", false);
        else
            unknown(w, "SELECT INTO without a table");
    }
    static const char *const skip[] = {"withClause", "intoClause", "lockingClause", NULL};
    walk_fields_except(w, type, n, skip);
    w->op = saved;
    pop_with(w, s);
}

static void returning(walker_t *w, const jnode_t *n, const jnode_t *rel)
{
    if (count(get(n, "returningList")) > 0)
        add_rangevar(w, rel, POLICY_OP_SELECT, "RETURNING from", false);
}

static void dml(walker_t *w, const char *type, const jnode_t *n, policy_op_t op, const char *verb)
{
    policy_op_t saved = w->op;
    cte_scope_t *s = push_with(w, get(n, "withClause"));
    const jnode_t *rel = get(n, "relation");
    if (!rel) {
        unknown(w, "DML without a target");
    } else {
        const char *r = get_str(rel, "relname"), *sc = get_str(rel, "schemaname");
        unsigned flags = 0;
        if ((op == POLICY_OP_UPDATE || op == POLICY_OP_DELETE) &&
            without_where(get(n, "whereClause")))
            flags |= RA_WITHOUT_WHERE;
        if (r)
            add(w, op, POLICY_OBJ_RELATION, flags, B_NONE, sc, r, verb);
        else
            unknown(w, "DML target");
        returning(w, n, rel);
        if (op == POLICY_OP_INSERT) {
            const jnode_t *occ = get(n, "onConflictClause");
            const char *action = get_str(occ, "action");
            if (action && !strcmp(action, "ONCONFLICT_UPDATE"))
                add_rangevar(w, rel, POLICY_OP_UPDATE, "INSERT ... ON CONFLICT DO UPDATE", false);
        }
        if (op == POLICY_OP_MERGE) {
            const jnode_t *c;
            JSON_FOREACH(c, get(n, "mergeWhenClauses"))
            {
                const jnode_t *b;
                const char *t = wrapper_type(c, &b), *cmd = t ? get_str(b, "commandType") : NULL;
                if (!cmd)
                    unknown(w, "MERGE action");
                else if (!strcmp(cmd, "CMD_INSERT"))
                    add_rangevar(w, rel, POLICY_OP_INSERT, "MERGE ... INSERT", false);
                else if (!strcmp(cmd, "CMD_UPDATE"))
                    add_rangevar(w, rel, POLICY_OP_UPDATE, "MERGE ... UPDATE", false);
                else if (!strcmp(cmd, "CMD_DELETE"))
                    add_rangevar(w, rel, POLICY_OP_DELETE, "MERGE ... DELETE", false);
                else if (strcmp(cmd, "CMD_NOTHING"))
                    unknown(w, "MERGE action");
            }
        }
    }
    w->op = POLICY_OP_SELECT;
    static const char *const skip[] = {"withClause", "relation", NULL};
    walk_fields_except(w, type, n, skip);
    w->op = saved;
    pop_with(w, s);
}

static void h_insert(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    dml(w, type, n, POLICY_OP_INSERT, verb);
}
static void h_update(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    dml(w, type, n, POLICY_OP_UPDATE, verb);
}
static void h_delete(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    dml(w, type, n, POLICY_OP_DELETE, verb);
}
static void h_merge(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    dml(w, type, n, POLICY_OP_MERGE, verb);
}

/* ---- handlers: EXPLAIN, PREPARE, EXECUTE, cursors, COPY ---- */

static bool explain_analyze(const jnode_t *options)
{
    const jnode_t *o;
    JSON_FOREACH(o, options)
    {
        const jnode_t *b;
        const char *t = wrapper_type(o, &b);
        const char *name = t ? get_str(b, "defname") : NULL;
        if (!name || strcasecmp(name, "analyze"))
            continue;
        const jnode_t *arg = get(b, "arg"), *ab;
        if (!arg)
            return true;
        const char *at = wrapper_type(arg, &ab);
        bool v;
        if (at && !strcmp(at, "String") && get_str(ab, "sval") &&
            bool_word(get_str(ab, "sval"), &v))
            return v;
        if (at && !strcmp(at, "Integer"))
            return num(get(ab, "ival")) != 0 && get(ab, "ival");
        if (at && !strcmp(at, "Boolean"))
            return get_bool(ab, "boolval");
        return true; /* anything else: assume it runs */
    }
    return false;
}

static void h_explain(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    (void)type, (void)verb;
    const jnode_t *q = get(n, "query");
    if (explain_analyze(get(n, "options"))) {
        size_t from = w->n_acc;
        walk_value(w, "ExplainStmt", q);
        size_t to = w->n_acc;
        for (size_t i = from; i < to && !w->oom; i++) {
            raccess_t a = w->acc[i];
            if (a.kind == POLICY_OBJ_RELATION)
                add(w, POLICY_OP_EXPLAIN, a.kind, 0, B_NONE, a.schema, a.name, "EXPLAIN");
            else if (a.builtin == B_EXEC_PREPARED)
                add(w, a.op, a.kind, a.flags | RA_EXPLAIN, a.builtin, a.schema, a.name, a.verb);
        }
        return;
    }
    bool saved = w->explain_only;
    w->explain_only = true;
    walk_value(w, "ExplainStmt", q);
    w->explain_only = saved;
}

static void h_prepare(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    (void)type, (void)verb;
    const char *name = get_str(n, "name");
    if (!name) {
        unknown(w, "PREPARE without a name");
        return;
    }
    w->st->effect = EFF_PREPARE;
    w->st->eff_name = arena_strdup(&w->in->arena, name);
    w->st->flags |= PS_NO_EXEC;
    walk_value(w, "PrepareStmt", get(n, "query"));
}

static void h_execute(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    (void)type;
    const char *name = get_str(n, "name");
    add(w, POLICY_OP_UNKNOWN, POLICY_OBJ_OTHER, w->explain_only ? RA_EXPLAIN : 0, B_EXEC_PREPARED,
        NULL, name ? name : "", verb);
    policy_op_t saved = w->op;
    w->op = POLICY_OP_SELECT;
    walk_value(w, "ExecuteStmt", get(n, "params"));
    w->op = saved;
}

static void h_deallocate(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    (void)type, (void)verb;
    const char *name = get_str(n, "name");
    w->st->effect = name ? EFF_DEALLOCATE : EFF_DEALLOCATE_ALL;
    if (name)
        w->st->eff_name = arena_strdup(&w->in->arena, name);
}

static void h_ctas(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    const jnode_t *into = get(n, "into");
    const jnode_t *rel = get(into, "rel");
    const char *ot = get_str(n, "objtype");
    if (ot && !strcmp(ot, "OBJECT_MATVIEW"))
        verb = "CREATE MATERIALIZED VIEW";
    else if (get_bool(n, "is_select_into"))
        verb = "SELECT INTO";
    if (rel)
        add_rangevar(w, rel, POLICY_OP_DDL, verb, false);
    else
        unknown(w, "CREATE TABLE AS without a table");
    policy_op_t saved = w->op;
    w->op = POLICY_OP_SELECT;
    walk_value(w, type, get(n, "query"));
    w->op = saved;
}

static void h_copy(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    (void)verb;
    bool from = get_bool(n, "is_from");
    bool server = get_bool(n, "is_program") || get_str(n, "filename");
    policy_op_t op = from ? POLICY_OP_COPY_FROM : POLICY_OP_COPY_TO;
    builtin_t b = server ? B_COPY_SERVER : B_NONE;
    const char *v = get_bool(n, "is_program") ? (from ? "COPY FROM PROGRAM" : "COPY TO PROGRAM")
                    : server                  ? (from ? "COPY FROM file" : "COPY TO file")
                    : from                    ? "COPY FROM"
                                              : "COPY TO";
    const jnode_t *rel = get(n, "relation"), *q = get(n, "query");
    if (server)
        add(w, op, POLICY_OBJ_NONE, 0, b, NULL, "", v);
    if (rel) {
        const char *r = get_str(rel, "relname");
        if (r)
            add(w, op, POLICY_OBJ_RELATION, 0, b, get_str(rel, "schemaname"), r, v);
        else
            unknown(w, "COPY target");
    }
    if (q) {
        size_t start = w->n_acc;
        walk_value(w, type, q);
        size_t end = w->n_acc;
        for (size_t i = start; i < end && !w->oom; i++)
            if (w->acc[i].kind == POLICY_OBJ_RELATION)
                add(w, op, POLICY_OBJ_RELATION, 0, b, w->acc[i].schema, w->acc[i].name, v);
    }
    if (!rel && !q)
        unknown(w, "COPY without a table or query");
    policy_op_t saved = w->op;
    w->op = POLICY_OP_SELECT;
    walk_value(w, type, get(n, "whereClause"));
    w->op = saved;
}

/* A list of RangeVar nodes charged with op (TRUNCATE, LOCK). */
static void relation_list(walker_t *w, const jnode_t *list, policy_op_t op, const char *verb)
{
    const jnode_t *c;
    size_t k = 0;
    JSON_FOREACH(c, list)
    {
        const jnode_t *b;
        const char *t = wrapper_type(c, &b);
        if (t && !strcmp(t, "RangeVar"))
            add_rangevar(w, b, op, verb, false);
        else
            unknown(w, t ? t : "relation list");
        k++;
    }
    if (!k)
        add(w, op, POLICY_OBJ_NONE, 0, B_NONE, NULL, "", verb);
}

static void h_truncate(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    (void)type;
    relation_list(w, get(n, "relations"), POLICY_OP_TRUNCATE, verb);
}

static void h_lock(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    (void)type;
    relation_list(w, get(n, "relations"), POLICY_OP_UTILITY, verb);
}

/* ---- handlers: DO, CALL, SET, DISCARD, transactions ---- */

static void h_do(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    (void)type, (void)n;
    add(w, POLICY_OP_DO, POLICY_OBJ_NONE, 0, B_NONE, NULL, "", verb);
}

static void h_call(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    (void)type, (void)verb;
    const jnode_t *fc = get(n, "funccall");
    if (!fc) {
        unknown(w, "CALL without a procedure");
        return;
    }
    policy_op_t saved = w->op;
    w->op = POLICY_OP_SELECT;
    funccall(w, fc, RA_CALL);
    w->op = saved;
}

static void setting_access(walker_t *w, const char *name, builtin_t b, const char *verb)
{
    add(w, POLICY_OP_SESSION, POLICY_OBJ_SETTING, 0, b, NULL, name, verb);
}

/* A constant argument's value as text (identifier, string, number, boolean). */
static const char *arg_text(const jnode_t *arg, char *buf, size_t bufsz)
{
    const jnode_t *b;
    const char *t = arg ? wrapper_type(arg, &b) : NULL;
    if (!t)
        return NULL;
    if (!strcmp(t, "A_Const")) {
        const char *s = aconst_str(b);
        if (s)
            return s;
        const jnode_t *iv = get(b, "ival");
        if (iv) {
            snprintf(buf, bufsz, "%ld", (long)num(get(iv, "ival")));
            return buf;
        }
        const jnode_t *bv = get(b, "boolval");
        if (bv)
            return get_bool(bv, "boolval") ? "on" : "off";
    }
    return NULL;
}

static bool utf8_name(const char *s)
{
    char n[32];
    size_t k = 0;
    for (; *s && k + 1 < sizeof(n); s++)
        if (isalnum((unsigned char)*s))
            n[k++] = (char)tolower((unsigned char)*s);
    n[k] = '\0';
    return !*s && (!strcmp(n, "utf8") || !strcmp(n, "unicode"));
}

/* SET search_path TO a, "B": each argument one schema (PostgreSQL quotes
 * each string argument as one identifier: SET search_path = 'a, b' names the
 * single schema "a, b"). */
static void set_path_effect(walker_t *w, const jnode_t *args)
{
    size_t n = count(args), k = 0;
    const char **path = n ? arena_alloc(&w->in->arena, n * sizeof(char *)) : NULL;
    const jnode_t *a;
    char buf[32];
    JSON_FOREACH(a, args)
    {
        const char *s = arg_text(a, buf, sizeof(buf));
        if (!s || !path) {
            unknown(w, "search_path value");
            return;
        }
        path[k++] = arena_strdup(&w->in->arena, s);
    }
    w->st->effect = EFF_SET_PATH;
    w->st->path = path;
    w->st->n_path = k;
}

static void set_value(walker_t *w, const jnode_t *n, const char *name, const char *kind)
{
    bool reset = !strcmp(kind, "VAR_RESET") || !strcmp(kind, "VAR_SET_DEFAULT");
    const jnode_t *args = get(n, "args");
    char buf[32];
    const char *val = args ? arg_text(args->child, buf, sizeof(buf)) : NULL;
    bool single = val && !args->child->next;
    bool on;
    if (!strcmp(name, "search_path")) {
        if (!strcmp(kind, "VAR_SET_VALUE"))
            set_path_effect(w, args);
        else if (reset)
            w->st->effect = EFF_RESET_PATH;
        return; /* FROM CURRENT: no change */
    }
    if (!strcmp(name, "standard_conforming_strings")) {
        /* pinned on: RESET and DEFAULT restore the startup value (on) */
        if (!reset && !(single && bool_word(val, &on) && on))
            setting_access(w, name, B_PINNED, "SET");
        return;
    }
    if (!strcmp(name, "client_encoding")) {
        if (!reset && !(single && utf8_name(val)))
            setting_access(w, name, B_PINNED, "SET");
        return;
    }
    if (!strcmp(name, "transaction_read_only") || !strcmp(name, "default_transaction_read_only")) {
        if (!reset && val && bool_word(val, &on) && on)
            return; /* read only: only restricts */
        setting_access(w, name, B_READ_WRITE, "SET");
        setting_access(w, name, B_NONE, "SET");
        return;
    }
    if (policy_safe_setting(name))
        return;
    setting_access(w, name, B_NONE,
                   !strcmp(name, "role")                    ? "SET ROLE"
                   : !strcmp(name, "session_authorization") ? "SET SESSION AUTHORIZATION"
                   : reset                                  ? "RESET"
                                                            : "SET");
}

/* SET TRANSACTION ..., SET SESSION CHARACTERISTICS AS TRANSACTION ..., and
 * BEGIN/START TRANSACTION options. */
static void transaction_options(walker_t *w, const jnode_t *opts)
{
    const jnode_t *o;
    JSON_FOREACH(o, opts)
    {
        const jnode_t *b;
        const char *t = wrapper_type(o, &b);
        const char *name = t && !strcmp(t, "DefElem") ? get_str(b, "defname") : NULL;
        if (!name) {
            unknown(w, "transaction option");
            continue;
        }
        if (!strcmp(name, "transaction_read_only")) {
            const jnode_t *ab;
            const char *at = wrapper_type(get(b, "arg"), &ab);
            const jnode_t *iv = at && !strcmp(at, "A_Const") ? get(ab, "ival") : NULL;
            if (!iv || !num(get(iv, "ival")))
                add(w, POLICY_OP_SESSION, POLICY_OBJ_SETTING, 0, B_READ_WRITE, NULL,
                    "transaction_read_only", "READ WRITE transaction");
        } else if (strcmp(name, "transaction_isolation") &&
                   strcmp(name, "transaction_deferrable")) {
            unknown(w, "transaction option");
        }
    }
}

static void h_set(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    (void)type, (void)verb;
    const char *kind = get_str(n, "kind");
    const char *raw = get_str(n, "name");
    if (get_bool(n, "is_local"))
        w->st->flags |= PS_LOCAL;
    if (!kind) {
        unknown(w, "SET");
        return;
    }
    if (!strcmp(kind, "VAR_RESET_ALL")) {
        setting_access(w, "all", B_NONE, "RESET ALL");
        w->st->effect = EFF_RESET_PATH;
        return;
    }
    if (!raw) {
        unknown(w, "SET without a name");
        return;
    }
    char name[128];
    size_t i = 0;
    for (; raw[i] && i + 1 < sizeof(name); i++)
        name[i] = (char)tolower((unsigned char)raw[i]);
    name[i] = '\0';
    if (!strcmp(kind, "VAR_SET_MULTI")) {
        if (!strcmp(name, "transaction") || !strcmp(name, "session characteristics"))
            transaction_options(w, get(n, "args"));
        else if (strcmp(name, "transaction snapshot"))
            unknown(w, raw);
        return;
    }
    if (!strcmp(kind, "VAR_SET_VALUE") || !strcmp(kind, "VAR_SET_DEFAULT") ||
        !strcmp(kind, "VAR_SET_CURRENT") || !strcmp(kind, "VAR_RESET"))
        set_value(w, n, name, kind);
    else
        unknown(w, kind);
}

static void h_discard(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    (void)type, (void)verb;
    const char *t = get_str(n, "target");
    const char *what = !t                                ? "unknown"
                       : !strcmp(t, "DISCARD_ALL")       ? "all"
                       : !strcmp(t, "DISCARD_PLANS")     ? "plans"
                       : !strcmp(t, "DISCARD_SEQUENCES") ? "sequences"
                       : !strcmp(t, "DISCARD_TEMP")      ? "temp"
                                                         : "unknown";
    setting_access(w, what, B_NONE, "DISCARD");
    if (!strcmp(what, "all"))
        w->st->effect = EFF_DISCARD_ALL;
    else if (!strcmp(what, "temp"))
        w->st->effect = EFF_DISCARD_TEMP;
}

static void h_transaction(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    (void)type, (void)verb;
    const char *kind = get_str(n, "kind");
    if (!kind) {
        unknown(w, "transaction statement");
        return;
    }
    if (!strcmp(kind, "TRANS_STMT_PREPARE") || !strcmp(kind, "TRANS_STMT_COMMIT_PREPARED") ||
        !strcmp(kind, "TRANS_STMT_ROLLBACK_PREPARED")) {
        /* two-phase commit outlives the session or reaches other sessions' transactions */
        add(w, POLICY_OP_UTILITY, POLICY_OBJ_NONE, 0, B_NONE, NULL, "",
            !strcmp(kind, "TRANS_STMT_PREPARE")           ? "PREPARE TRANSACTION"
            : !strcmp(kind, "TRANS_STMT_COMMIT_PREPARED") ? "COMMIT PREPARED"
                                                          : "ROLLBACK PREPARED");
        return;
    }
    if (!strcmp(kind, "TRANS_STMT_ROLLBACK_TO"))
        w->st->effect = EFF_ROLLBACK_TO;
    transaction_options(w, get(n, "options"));
}

/* ---- handlers: DDL, DCL, utility ---- */

static void classed(walker_t *w, const char *type, const jnode_t *n, policy_op_t op,
                    const char *verb)
{
    policy_op_t saved = w->op;
    size_t from = w->n_acc;
    w->op = op;
    walk_fields(w, type, n);
    w->op = saved;
    ensure(w, from, op, verb);
}

static void h_ddl(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    classed(w, type, n, POLICY_OP_DDL, verb);
}

static void h_utility(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    classed(w, type, n, POLICY_OP_UTILITY, verb);
}

static void h_dcl(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    if (!strcmp(type, "GrantStmt") || !strcmp(type, "GrantRoleStmt"))
        verb = get_bool(n, "is_grant") ? "GRANT" : "REVOKE";
    classed(w, type, n, POLICY_OP_DCL, verb);
}

/* Roles, ownership: both a privilege and a schema change. */
static void h_ddl_dcl(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    size_t from = w->n_acc;
    classed(w, type, n, POLICY_OP_DDL, verb);
    size_t to = w->n_acc;
    for (size_t i = from; i < to && !w->oom; i++)
        if (w->acc[i].op == POLICY_OP_DDL)
            add(w, POLICY_OP_DCL, w->acc[i].kind, 0, B_NONE, w->acc[i].schema, w->acc[i].name,
                verb);
}

static const char *object_type_word(const char *ot)
{
    static const struct {
        const char *ot, *word;
    } m[] = {
        {"OBJECT_TABLE", "TABLE"},
        {"OBJECT_VIEW", "VIEW"},
        {"OBJECT_MATVIEW", "MATERIALIZED VIEW"},
        {"OBJECT_INDEX", "INDEX"},
        {"OBJECT_SEQUENCE", "SEQUENCE"},
        {"OBJECT_FOREIGN_TABLE", "FOREIGN TABLE"},
        {"OBJECT_FUNCTION", "FUNCTION"},
        {"OBJECT_PROCEDURE", "PROCEDURE"},
        {"OBJECT_ROUTINE", "ROUTINE"},
        {"OBJECT_AGGREGATE", "AGGREGATE"},
        {"OBJECT_SCHEMA", "SCHEMA"},
        {"OBJECT_TYPE", "TYPE"},
        {"OBJECT_DOMAIN", "DOMAIN"},
        {"OBJECT_EXTENSION", "EXTENSION"},
        {"OBJECT_TRIGGER", "TRIGGER"},
        {"OBJECT_POLICY", "POLICY"},
        {"OBJECT_RULE", "RULE"},
        {"OBJECT_DATABASE", "DATABASE"},
    };
    for (size_t i = 0; ot && i < sizeof(m) / sizeof(m[0]); i++)
        if (!strcmp(ot, m[i].ot))
            return m[i].word;
    return NULL;
}

static bool relation_objtype(const char *ot)
{
    return ot && (!strcmp(ot, "OBJECT_TABLE") || !strcmp(ot, "OBJECT_VIEW") ||
                  !strcmp(ot, "OBJECT_MATVIEW") || !strcmp(ot, "OBJECT_INDEX") ||
                  !strcmp(ot, "OBJECT_SEQUENCE") || !strcmp(ot, "OBJECT_FOREIGN_TABLE"));
}

static bool function_objtype(const char *ot)
{
    return ot && (!strcmp(ot, "OBJECT_FUNCTION") || !strcmp(ot, "OBJECT_PROCEDURE") ||
                  !strcmp(ot, "OBJECT_ROUTINE") || !strcmp(ot, "OBJECT_AGGREGATE"));
}

/* A qualified name as a list of String nodes: [schema,] name. */
static bool qualified(const jnode_t *list, const char **schema, const char **name)
{
    const char *parts[3];
    size_t k = 0;
    const jnode_t *p;
    JSON_FOREACH(p, list)
    {
        const char *s = string_node(p);
        if (!s || k == 3)
            return false;
        parts[k++] = s;
    }
    if (!k)
        return false;
    *name = parts[k - 1];
    *schema = k >= 2 ? parts[k - 2] : NULL;
    return true;
}

/* The objects of DROP and COMMENT: relations and functions by name. */
static void named_object(walker_t *w, const jnode_t *obj, const char *ot, const char *verb)
{
    const jnode_t *b;
    const char *t = wrapper_type(obj, &b), *schema, *name;
    if (!t)
        return;
    if (relation_objtype(ot) && !strcmp(t, "List") && qualified(get(b, "items"), &schema, &name))
        add_named(w, POLICY_OP_DDL, POLICY_OBJ_RELATION, 0, B_NONE, schema, name, verb);
    else if (function_objtype(ot) && !strcmp(t, "ObjectWithArgs") &&
             qualified(get(b, "objname"), &schema, &name))
        add_named(w, POLICY_OP_DDL, POLICY_OBJ_FUNCTION, 0, B_NONE, schema, name, verb);
}

static void h_drop(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    const char *ot = get_str(n, "removeType");
    const char *word = object_type_word(ot);
    char *v = NULL;
    if (word) {
        size_t l = strlen(verb) + strlen(word) + 2;
        v = arena_alloc(&w->in->arena, l);
        if (v)
            snprintf(v, l, "%s %s", verb, word);
    }
    verb = v ? v : verb;
    const jnode_t *o;
    JSON_FOREACH(o, get(n, "objects")) named_object(w, o, ot, verb);
    classed(w, type, n, POLICY_OP_DDL, verb);
}

static void h_comment(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    named_object(w, get(n, "object"), get_str(n, "objtype"), verb);
    classed(w, type, n, POLICY_OP_DDL, verb);
}

static void h_createfunc(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    const char *schema, *name;
    if (qualified(get(n, "funcname"), &schema, &name))
        add_named(w, POLICY_OP_DDL, POLICY_OBJ_FUNCTION, 0, B_NONE, schema, name, verb);
    classed(w, type, n, POLICY_OP_DDL, verb);
}

static void h_createschema(walker_t *w, const char *type, const jnode_t *n, const char *verb)
{
    const char *name = get_str(n, "schemaname");
    if (name) {
        w->st->effect = EFF_CREATE_SCHEMA;
        w->st->eff_name = arena_strdup(&w->in->arena, name);
        char *o = arena_alloc(&w->in->arena, strlen(name) + 8);
        if (o)
            snprintf(o, strlen(name) + 8, "schema %s", name);
        add(w, POLICY_OP_DDL, POLICY_OBJ_OTHER, 0, B_NONE, NULL, o ? o : name, verb);
    }
    const char *saved = w->schema_elts;
    w->schema_elts = name ? arena_strdup(&w->in->arena, name) : saved;
    classed(w, type, n, POLICY_OP_DDL, verb);
    w->schema_elts = saved;
}

/* ---- the whitelist: every node type the walker knows (sorted by name) ---- */

typedef struct handler {
    const char *type;
    handler_fn fn;
    const char *verb;
} handler_t;

static const handler_t handlers[] = {
    {"A_ArrayExpr", h_generic, NULL},
    {"A_Const", h_leaf, NULL},
    {"A_Expr", h_generic, NULL},
    {"A_Indices", h_generic, NULL},
    {"A_Indirection", h_generic, NULL},
    {"A_Star", h_leaf, NULL},
    {"AccessPriv", h_generic, NULL},
    {"Alias", h_leaf, NULL},
    {"AlterCollationStmt", h_ddl, "ALTER COLLATION"},
    {"AlterDatabaseRefreshCollStmt", h_ddl, "ALTER DATABASE"},
    {"AlterDatabaseSetStmt", h_ddl, "ALTER DATABASE"},
    {"AlterDatabaseStmt", h_ddl, "ALTER DATABASE"},
    {"AlterDefaultPrivilegesStmt", h_dcl, "ALTER DEFAULT PRIVILEGES"},
    {"AlterDomainStmt", h_ddl, "ALTER DOMAIN"},
    {"AlterEnumStmt", h_ddl, "ALTER TYPE"},
    {"AlterEventTrigStmt", h_ddl, "ALTER EVENT TRIGGER"},
    {"AlterExtensionContentsStmt", h_ddl, "ALTER EXTENSION"},
    {"AlterExtensionStmt", h_ddl, "ALTER EXTENSION"},
    {"AlterFdwStmt", h_ddl, "ALTER FOREIGN DATA WRAPPER"},
    {"AlterForeignServerStmt", h_ddl, "ALTER SERVER"},
    {"AlterFunctionStmt", h_ddl, "ALTER FUNCTION"},
    {"AlterObjectDependsStmt", h_ddl, "ALTER ... DEPENDS ON EXTENSION"},
    {"AlterObjectSchemaStmt", h_ddl, "ALTER ... SET SCHEMA"},
    {"AlterOpFamilyStmt", h_ddl, "ALTER OPERATOR FAMILY"},
    {"AlterOperatorStmt", h_ddl, "ALTER OPERATOR"},
    {"AlterOwnerStmt", h_ddl_dcl, "ALTER ... OWNER TO"},
    {"AlterPolicyStmt", h_ddl, "ALTER POLICY"},
    {"AlterPublicationStmt", h_ddl, "ALTER PUBLICATION"},
    {"AlterRoleSetStmt", h_ddl_dcl, "ALTER ROLE ... SET"},
    {"AlterRoleStmt", h_ddl_dcl, "ALTER ROLE"},
    {"AlterSeqStmt", h_ddl, "ALTER SEQUENCE"},
    {"AlterStatsStmt", h_ddl, "ALTER STATISTICS"},
    {"AlterSubscriptionStmt", h_ddl, "ALTER SUBSCRIPTION"},
    {"AlterSystemStmt", h_ddl, "ALTER SYSTEM"},
    {"AlterTSConfigurationStmt", h_ddl, "ALTER TEXT SEARCH CONFIGURATION"},
    {"AlterTSDictionaryStmt", h_ddl, "ALTER TEXT SEARCH DICTIONARY"},
    {"AlterTableCmd", h_generic, NULL},
    {"AlterTableMoveAllStmt", h_ddl, "ALTER ... SET TABLESPACE"},
    {"AlterTableSpaceOptionsStmt", h_ddl, "ALTER TABLESPACE"},
    {"AlterTableStmt", h_ddl, "ALTER TABLE"},
    {"AlterTypeStmt", h_ddl, "ALTER TYPE"},
    {"AlterUserMappingStmt", h_ddl, "ALTER USER MAPPING"},
    {"BitString", h_leaf, NULL},
    {"BoolExpr", h_generic, NULL},
    {"Boolean", h_leaf, NULL},
    {"BooleanTest", h_generic, NULL},
    {"CTECycleClause", h_generic, NULL},
    {"CTESearchClause", h_generic, NULL},
    {"CallStmt", h_call, "CALL"},
    {"CaseExpr", h_generic, NULL},
    {"CaseWhen", h_generic, NULL},
    {"CheckPointStmt", h_utility, "CHECKPOINT"},
    {"ClosePortalStmt", h_leaf, NULL},
    {"ClusterStmt", h_utility, "CLUSTER"},
    {"CoalesceExpr", h_generic, NULL},
    {"CollateClause", h_generic, NULL},
    {"ColumnDef", h_generic, NULL},
    {"ColumnRef", h_leaf, NULL},
    {"CommentStmt", h_comment, "COMMENT ON"},
    {"CommonTableExpr", h_generic, NULL},
    {"CompositeTypeStmt", h_ddl, "CREATE TYPE"},
    {"Constraint", h_generic, NULL},
    {"ConstraintsSetStmt", h_leaf, NULL},
    {"CopyStmt", h_copy, "COPY"},
    {"CreateAmStmt", h_ddl, "CREATE ACCESS METHOD"},
    {"CreateCastStmt", h_ddl, "CREATE CAST"},
    {"CreateConversionStmt", h_ddl, "CREATE CONVERSION"},
    {"CreateDomainStmt", h_ddl, "CREATE DOMAIN"},
    {"CreateEnumStmt", h_ddl, "CREATE TYPE"},
    {"CreateEventTrigStmt", h_ddl, "CREATE EVENT TRIGGER"},
    {"CreateExtensionStmt", h_ddl, "CREATE EXTENSION"},
    {"CreateFdwStmt", h_ddl, "CREATE FOREIGN DATA WRAPPER"},
    {"CreateForeignServerStmt", h_ddl, "CREATE SERVER"},
    {"CreateForeignTableStmt", h_ddl, "CREATE FOREIGN TABLE"},
    {"CreateFunctionStmt", h_createfunc, "CREATE FUNCTION"},
    {"CreateOpClassItem", h_generic, NULL},
    {"CreateOpClassStmt", h_ddl, "CREATE OPERATOR CLASS"},
    {"CreateOpFamilyStmt", h_ddl, "CREATE OPERATOR FAMILY"},
    {"CreatePLangStmt", h_ddl, "CREATE LANGUAGE"},
    {"CreatePolicyStmt", h_ddl, "CREATE POLICY"},
    {"CreatePublicationStmt", h_ddl, "CREATE PUBLICATION"},
    {"CreateRangeStmt", h_ddl, "CREATE TYPE"},
    {"CreateRoleStmt", h_ddl_dcl, "CREATE ROLE"},
    {"CreateSchemaStmt", h_createschema, "CREATE SCHEMA"},
    {"CreateSeqStmt", h_ddl, "CREATE SEQUENCE"},
    {"CreateStatsStmt", h_ddl, "CREATE STATISTICS"},
    {"CreateStmt", h_ddl, "CREATE TABLE"},
    {"CreateSubscriptionStmt", h_ddl, "CREATE SUBSCRIPTION"},
    {"CreateTableAsStmt", h_ctas, "CREATE TABLE AS"},
    {"CreateTableSpaceStmt", h_ddl, "CREATE TABLESPACE"},
    {"CreateTransformStmt", h_ddl, "CREATE TRANSFORM"},
    {"CreateTrigStmt", h_ddl, "CREATE TRIGGER"},
    {"CreateUserMappingStmt", h_ddl, "CREATE USER MAPPING"},
    {"CreatedbStmt", h_ddl, "CREATE DATABASE"},
    {"CurrentOfExpr", h_leaf, NULL},
    {"DeallocateStmt", h_deallocate, "DEALLOCATE"},
    {"DeclareCursorStmt", h_generic, "DECLARE CURSOR"},
    {"DefElem", h_generic, NULL},
    {"DefineStmt", h_ddl, "CREATE"},
    {"DeleteStmt", h_delete, "DELETE"},
    {"DiscardStmt", h_discard, "DISCARD"},
    {"DoStmt", h_do, "DO"},
    {"DropOwnedStmt", h_ddl_dcl, "DROP OWNED"},
    {"DropRoleStmt", h_ddl_dcl, "DROP ROLE"},
    {"DropStmt", h_drop, "DROP"},
    {"DropSubscriptionStmt", h_ddl, "DROP SUBSCRIPTION"},
    {"DropTableSpaceStmt", h_ddl, "DROP TABLESPACE"},
    {"DropUserMappingStmt", h_ddl, "DROP USER MAPPING"},
    {"DropdbStmt", h_ddl, "DROP DATABASE"},
    {"ExecuteStmt", h_execute, "EXECUTE"},
    {"ExplainStmt", h_explain, "EXPLAIN"},
    {"FetchStmt", h_leaf, NULL},
    {"Float", h_leaf, NULL},
    {"FuncCall", h_funccall, NULL},
    {"FunctionParameter", h_generic, NULL},
    {"GrantRoleStmt", h_ddl_dcl, "GRANT"},
    {"GrantStmt", h_dcl, "GRANT"},
    {"GroupingFunc", h_generic, NULL},
    {"GroupingSet", h_generic, NULL},
    {"ImportForeignSchemaStmt", h_ddl, "IMPORT FOREIGN SCHEMA"},
    {"IndexElem", h_generic, NULL},
    {"IndexStmt", h_ddl, "CREATE INDEX"},
    {"InferClause", h_generic, NULL},
    {"InsertStmt", h_insert, "INSERT"},
    {"Integer", h_leaf, NULL},
    {"IntoClause", h_generic, NULL},
    {"JoinExpr", h_generic, NULL},
    {"List", h_generic, NULL},
    {"ListenStmt", h_utility, "LISTEN"},
    {"LoadStmt", h_utility, "LOAD"},
    {"LockStmt", h_lock, "LOCK"},
    {"LockingClause", h_locking, NULL},
    {"MergeStmt", h_merge, "MERGE"},
    {"MergeWhenClause", h_generic, NULL},
    {"MinMaxExpr", h_generic, NULL},
    {"MultiAssignRef", h_generic, NULL},
    {"NamedArgExpr", h_generic, NULL},
    {"NotifyStmt", h_utility, "NOTIFY"},
    {"NullTest", h_generic, NULL},
    {"ObjectWithArgs", h_generic, NULL},
    {"OnConflictClause", h_generic, NULL},
    {"ParamRef", h_leaf, NULL},
    {"PartitionBoundSpec", h_generic, NULL},
    {"PartitionCmd", h_generic, NULL},
    {"PartitionElem", h_generic, NULL},
    {"PartitionRangeDatum", h_generic, NULL},
    {"PartitionSpec", h_generic, NULL},
    {"PrepareStmt", h_prepare, "PREPARE"},
    {"PublicationObjSpec", h_generic, NULL},
    {"PublicationTable", h_generic, NULL},
    {"RangeFunction", h_generic, NULL},
    {"RangeSubselect", h_generic, NULL},
    {"RangeTableFunc", h_generic, NULL},
    {"RangeTableFuncCol", h_generic, NULL},
    {"RangeTableSample", h_generic, NULL},
    {"RangeVar", h_rangevar, NULL},
    {"ReassignOwnedStmt", h_ddl_dcl, "REASSIGN OWNED"},
    {"RefreshMatViewStmt", h_utility, "REFRESH MATERIALIZED VIEW"},
    {"ReindexStmt", h_utility, "REINDEX"},
    {"RenameStmt", h_ddl, "ALTER ... RENAME"},
    {"ReplicaIdentityStmt", h_ddl, "ALTER TABLE ... REPLICA IDENTITY"},
    {"ResTarget", h_generic, NULL},
    {"ReturnStmt", h_generic, NULL},
    {"RoleSpec", h_leaf, NULL},
    {"RowExpr", h_generic, NULL},
    {"RuleStmt", h_ddl, "CREATE RULE"},
    {"SQLValueFunction", h_leaf, NULL},
    {"SecLabelStmt", h_ddl, "SECURITY LABEL"},
    {"SelectStmt", h_select, NULL},
    {"SetToDefault", h_leaf, NULL},
    {"SortBy", h_generic, NULL},
    {"StatsElem", h_generic, NULL},
    {"String", h_leaf, NULL},
    {"SubLink", h_generic, NULL},
    {"TableLikeClause", h_generic, NULL},
    {"TransactionStmt", h_transaction, NULL},
    {"TriggerTransition", h_leaf, NULL},
    {"TruncateStmt", h_truncate, "TRUNCATE"},
    {"TypeCast", h_generic, NULL},
    {"TypeName", h_generic, NULL},
    {"UnlistenStmt", h_utility, "UNLISTEN"},
    {"UpdateStmt", h_update, "UPDATE"},
    {"VacuumRelation", h_generic, NULL},
    {"VacuumStmt", h_utility, "VACUUM/ANALYZE"},
    {"VariableSetStmt", h_set, "SET"},
    {"VariableShowStmt", h_leaf, NULL},
    {"ViewStmt", h_ddl, "CREATE VIEW"},
    {"WindowDef", h_generic, NULL},
    {"WithClause", h_generic, NULL},
    {"XmlExpr", h_generic, NULL},
    {"XmlSerialize", h_generic, NULL},
};

static int cmp_handler(const void *k, const void *e)
{
    return strcmp((const char *)k, ((const handler_t *)e)->type);
}

static const handler_t *find_handler(const char *type)
{
    return bsearch(type, handlers, sizeof(handlers) / sizeof(handlers[0]), sizeof(handler_t),
                   cmp_handler);
}

/* ---- the walk ---- */

static void walk_typed(walker_t *w, const char *type, const jnode_t *n)
{
    if (w->oom)
        return;
    const handler_t *h = find_handler(type);
    if (!h) {
        unknown(w, type);
        return;
    }
    if (!is_obj(n)) {
        unknown(w, type);
        return;
    }
    if (++w->depth > MAX_DEPTH) {
        unknown(w, "statement nested too deeply");
    } else {
        h->fn(w, type, n, h->verb);
    }
    w->depth--;
}

static void walk_node(walker_t *w, const jnode_t *v)
{
    const jnode_t *body;
    const char *t = wrapper_type(v, &body);
    if (!t) {
        unknown(w, "unexpected parse tree shape");
        return;
    }
    walk_typed(w, t, body);
}

/* One field of a `type` struct: typed (bare) structs by the generated table,
 * everything else must be Node wrappers, lists of them, or scalars. */
static void walk_value(walker_t *w, const char *type, const jnode_t *v)
{
    if (!v || w->oom)
        return;
    const jnode_t *body;
    if (is_obj(v)) {
        if (!v->child && !(v->key && policy_field_type(type, v->key)))
            return; /* a NULL node */
        if (wrapper_type(v, &body)) {
            walk_node(w, v);
            return;
        }
        const char *ft = v->key ? policy_field_type(type, v->key) : NULL;
        if (ft)
            walk_typed(w, ft, v);
        else
            unknown(w, "unexpected parse tree shape");
    } else if (is_arr(v)) {
        const jnode_t *e;
        const char *ft = v->key ? policy_field_type(type, v->key) : NULL;
        JSON_FOREACH(e, v)
        {
            if (ft && is_obj(e) && !wrapper_type(e, &body))
                walk_typed(w, ft, e);
            else if (is_obj(e) && !e->child)
                continue; /* a NULL element, e.g. ROWS FROM's missing column list */
            else if (is_obj(e))
                walk_node(w, e);
            else if (is_arr(e))
                unknown(w, "unexpected parse tree shape");
        }
    }
}

static void walk_fields(walker_t *w, const char *type, const jnode_t *n)
{
    const jnode_t *c;
    JSON_FOREACH(c, n) walk_value(w, type, c);
}

/* ---- driver ---- */

static intent_t *fail_intent(intent_t *in, const char *sqlstate, const char *msg, int pos)
{
    memcpy(in->sqlstate, sqlstate, 6);
    in->error = arena_strdup(&in->arena, msg);
    in->cursorpos = pos;
    if (!in->error) {
        policy_intent_free(in);
        return NULL;
    }
    return in;
}

static bool extract_stmt(walker_t *w, const jnode_t *raw, size_t total)
{
    const jnode_t *stmt = get(raw, "stmt"), *body;
    const char *t = wrapper_type(stmt, &body);
    pstmt_t *st = w->st;
    double loc = num(get(raw, "stmt_location"));
    double len = num(get(raw, "stmt_len"));
    st->location = loc > 0 && loc <= (double)total ? (size_t)loc : 0;
    st->len = len > 0 && st->location + (size_t)len <= total ? (size_t)len : total - st->location;
    st->node = arena_strdup(&w->in->arena, t ? t : "?");
    w->n_acc = 0;
    if (w->hash)
        memset(w->hash, 0, w->hash_cap * sizeof(*w->hash));
    w->op = POLICY_OP_SELECT;
    w->explain_only = false;
    w->scope = NULL;
    w->schema_elts = NULL;
    w->depth = 0;
    walk_node(w, stmt);
    if (w->oom)
        return false;
    st->n_acc = w->n_acc;
    st->acc = w->n_acc ? arena_alloc(&w->in->arena, w->n_acc * sizeof(raccess_t)) : NULL;
    if (w->n_acc && !st->acc)
        return false;
    if (w->n_acc)
        memcpy(st->acc, w->acc, w->n_acc * sizeof(raccess_t));
    return !w->in->arena.failed;
}

intent_t *policy_extract_tree(const char *json, size_t len)
{
    intent_t *in = calloc(1, sizeof(*in));
    if (!in)
        return NULL;
    jdoc_t *doc = json ? json_parse(json, strlen(json), MAX_JSON_DEPTH) : NULL;
    if (!doc)
        return fail_intent(in, "54001", "bulwark: statement is nested too deeply to be checked", 0);
    const jnode_t *stmts = get(json_root(doc), "stmts"), *raw;
    size_t n = count(stmts);
    walker_t w = {.in = in};
    bool ok = true;
    if (n) {
        in->stmts = arena_alloc(&in->arena, n * sizeof(pstmt_t));
        ok = in->stmts != NULL;
        if (ok)
            memset(in->stmts, 0, n * sizeof(pstmt_t));
    }
    JSON_FOREACH(raw, stmts)
    {
        if (!ok)
            break;
        w.st = &in->stmts[in->n_stmts++];
        ok = extract_stmt(&w, raw, len);
    }
    free(w.acc);
    free(w.hash);
    json_free(doc);
    if (!ok) {
        policy_intent_free(in);
        return NULL;
    }
    return in;
}

intent_t *policy_extract(const char *sql, size_t len)
{
    return policy_extract_keep(sql, len, NULL);
}

intent_t *policy_extract_keep(const char *sql, size_t len, char **tree)
{
    if (tree)
        *tree = NULL;
    PgQueryParseResult r = pg_query_parse(sql);
    if (r.error) {
        intent_t *in = calloc(1, sizeof(*in));
        intent_t *ret =
            in ? fail_intent(in, "42601", r.error->message ? r.error->message : "syntax error",
                             r.error->cursorpos)
               : NULL;
        pg_query_free_parse_result(r);
        return ret;
    }
    intent_t *in = policy_extract_tree(r.parse_tree, len);
    if (in && tree) {
        /* libpg_query returns the tree in plain malloc'd memory (its free function
         * calls free() on it): hand it over instead of copying it */
        *tree = r.parse_tree;
        r.parse_tree = NULL;
    }
    pg_query_free_parse_result(r);
    return in;
}

void policy_intent_free(intent_t *in)
{
    if (!in)
        return;
    arena_free(&in->arena);
    free(in);
}
