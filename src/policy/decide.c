/*
 * Decision: compiled rules, session state, name resolution and the verdict
 * (SPEC 5.1 objects, 5.2 decision). See policy.h for the contract and
 * docs/policies.md for the model.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pg_query.h>

#include "policy/internal.h"
#include "util/dur.h"
#include "util/glob.h"

#define MAX_PATHS 16      /* candidate search paths before they are folded into one */
#define MAX_PREPARED 4096 /* SQL-level prepared statements tracked per session */
#define DEFAULT_REVIEW_TIMEOUT_MS (5 * 60 * 1000)

/* ---- compiled rules ---- */

typedef struct crule {
    const char *id;
    policy_decision_t action;
    unsigned ops; /* bit per policy_op_t; 0 = any operation */
    const char **rels, **fns;
    size_t n_rels, n_fns;
    bool has_rels, has_fns, without_where;
    policy_review_t review;
} crule_t;

struct policy_role {
    const policy_set_t *set;
    const char *name;
    crule_t *rules;
    size_t n_rules;
    bool default_allow, read_only, catalog_reads;
};

struct policy_set {
    cfg_t *cfg;
    policy_arena_t arena;
    policy_role_t *roles;
    size_t n_roles;
    uint64_t max_statement_bytes;
};

static const char **glob_list(policy_arena_t *a, const cJSON *arr, size_t *n)
{
    size_t k = (size_t)cJSON_GetArraySize(arr), i = 0;
    const char **v = arena_alloc(a, (k ? k : 1) * sizeof(char *));
    const cJSON *e;
    if (!v)
        return NULL;
    cJSON_ArrayForEach(e, arr) if (cJSON_IsString(e)) v[i++] = arena_strdup(a, e->valuestring);
    *n = i;
    return v;
}

static void compile_rule(policy_arena_t *a, const cJSON *r, crule_t *c)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(r, "id");
    c->id = arena_strdup(a, cJSON_IsString(v) ? v->valuestring : "?");
    v = cJSON_GetObjectItemCaseSensitive(r, "action");
    const char *act = cJSON_IsString(v) ? v->valuestring : "deny";
    c->action = !strcmp(act, "allow")    ? POLICY_ALLOW
                : !strcmp(act, "review") ? POLICY_REVIEW
                                         : POLICY_DENY;
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(r, "operations"))
    {
        for (int op = 0; op < POLICY_OP__COUNT; op++)
            if (cJSON_IsString(e) && !strcmp(e->valuestring, policy_op_name((policy_op_t)op)))
                c->ops |= 1u << op;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(r, "relations"))) {
        c->has_rels = true;
        c->rels = glob_list(a, v, &c->n_rels);
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(r, "functions"))) {
        c->has_fns = true;
        c->fns = glob_list(a, v, &c->n_fns);
    }
    c->without_where = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "without_where"));
    const cJSON *rv = cJSON_GetObjectItemCaseSensitive(r, "review");
    c->review.timeout_ms = DEFAULT_REVIEW_TIMEOUT_MS;
    if (rv) {
        c->review.approvers =
            glob_list(a, cJSON_GetObjectItemCaseSensitive(rv, "approvers"), &c->review.n_approvers);
        v = cJSON_GetObjectItemCaseSensitive(rv, "timeout");
        int64_t ms;
        if (cJSON_IsString(v) && dur_parse(v->valuestring, &ms))
            c->review.timeout_ms = ms;
        v = cJSON_GetObjectItemCaseSensitive(rv, "mode");
        c->review.reject = cJSON_IsString(v) && !strcmp(v->valuestring, "reject");
    }
}

policy_set_t *policy_set_new(cfg_t *cfg)
{
    policy_set_t *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->max_statement_bytes = cfg->max_statement_bytes ? cfg->max_statement_bytes : 1u << 20;
    s->roles = calloc(cfg->n_roles ? cfg->n_roles : 1, sizeof(*s->roles));
    if (!s->roles) {
        free(s);
        return NULL;
    }
    for (size_t i = 0; i < cfg->n_roles; i++) {
        const cfg_role_t *cr = &cfg->roles[i];
        policy_role_t *r = &s->roles[s->n_roles++];
        r->set = s;
        r->name = arena_strdup(&s->arena, cr->name ? cr->name : "");
        r->default_allow = cr->default_action == CFG_ALLOW;
        r->read_only = cr->read_only;
        r->catalog_reads = cr->catalog_reads;
        size_t n = (size_t)cJSON_GetArraySize(cr->rules);
        r->rules = arena_alloc(&s->arena, (n ? n : 1) * sizeof(crule_t));
        if (r->rules)
            memset(r->rules, 0, (n ? n : 1) * sizeof(crule_t));
        const cJSON *rule;
        cJSON_ArrayForEach(rule, cr->rules)
        {
            if (!r->rules)
                break;
            compile_rule(&s->arena, rule, &r->rules[r->n_rules++]);
        }
    }
    if (s->arena.failed) {
        arena_free(&s->arena);
        free(s->roles);
        free(s);
        return NULL;
    }
    s->cfg = cfg_retain(cfg);
    return s;
}

void policy_set_free(policy_set_t *s)
{
    if (!s)
        return;
    arena_free(&s->arena);
    free(s->roles);
    cfg_release(s->cfg);
    free(s);
}

const policy_role_t *policy_set_role(const policy_set_t *s, const char *name)
{
    for (size_t i = 0; s && name && i < s->n_roles; i++)
        if (!strcmp(s->roles[i].name, name))
            return &s->roles[i];
    return NULL;
}

/* ---- session ---- */

typedef struct path {
    char **s;
    size_t n;
} path_t;

typedef struct saccess { /* a resolved access as kept for EXECUTE */
    uint8_t op, kind, builtin;
    bool without_where;
    char *object, *verb;
} saccess_t;

typedef struct prepared {
    char *name;
    saccess_t *acc;
    size_t n;
} prepared_t;

struct policy_session {
    char *user;
    path_t initial;
    path_t paths[MAX_PATHS]; /* candidates; [settled] is the one believed in effect */
    size_t n_paths, settled;
    long tentative;      /* path a commit would leave, -1 = none */
    bool txn_dirty;      /* a path changed since the last transaction end */
    bool uncertain;      /* ... in a way we cannot follow (ROLLBACK TO, too many paths) */
    bool base_ambiguous; /* outside a transaction, any of paths[] may be in effect */
    prepared_t *prep;
    size_t n_prep;
    bool temp_possible;
    char **schemas;
    size_t n_schemas;
    bool schemas_known;
};

static void path_free(path_t *p)
{
    for (size_t i = 0; i < p->n; i++)
        free(p->s[i]);
    free(p->s);
    p->s = NULL;
    p->n = 0;
}

static bool path_copy(path_t *dst, const char *const *s, size_t n)
{
    dst->s = calloc(n ? n : 1, sizeof(char *));
    dst->n = 0;
    if (!dst->s)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!(dst->s[i] = strdup(s[i]))) {
            path_free(dst);
            return false;
        }
        dst->n++;
    }
    return true;
}

static bool path_equal(const path_t *a, const char *const *s, size_t n)
{
    if (a->n != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (strcmp(a->s[i], s[i]))
            return false;
    return true;
}

/* Split a search_path value as PostgreSQL prints it: comma-separated
 * identifiers, double-quoted ones verbatim ("" = "), others lower-cased. */
static bool parse_path(const char *v, path_t *out)
{
    size_t cap = 4;
    out->s = calloc(cap, sizeof(char *));
    out->n = 0;
    if (!out->s)
        return false;
    const char *p = v;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
            p++;
        if (!*p)
            break;
        char buf[256];
        size_t k = 0;
        if (*p == '"') {
            p++;
            while (*p && !(*p == '"' && p[1] != '"')) {
                if (*p == '"')
                    p++;
                if (k + 1 < sizeof(buf))
                    buf[k++] = *p;
                p++;
            }
            if (*p == '"')
                p++;
        } else {
            while (*p && *p != ',' && *p != ' ' && *p != '\t') {
                char c = *p++;
                if (k + 1 < sizeof(buf))
                    buf[k++] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
            }
        }
        buf[k] = '\0';
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == ',')
            p++;
        if (out->n == cap) {
            char **g = realloc(out->s, cap * 2 * sizeof(char *));
            if (!g)
                return false;
            out->s = g;
            cap *= 2;
        }
        if (!(out->s[out->n] = strdup(buf)))
            return false;
        out->n++;
    }
    return true;
}

policy_session_t *policy_session_new(const char *search_path, const char *session_user)
{
    policy_session_t *ps = calloc(1, sizeof(*ps));
    if (!ps)
        return NULL;
    ps->tentative = -1;
    ps->user = strdup(session_user ? session_user : "");
    if (!ps->user || !parse_path(search_path ? search_path : "\"$user\", public", &ps->initial) ||
        !path_copy(&ps->paths[0], (const char *const *)ps->initial.s, ps->initial.n)) {
        policy_session_free(ps);
        return NULL;
    }
    ps->n_paths = 1;
    return ps;
}

size_t policy_session_npaths(const policy_session_t *ps)
{
    return ps->n_paths;
}

const char *const *policy_session_path(const policy_session_t *ps, size_t i, size_t *n)
{
    *n = i < ps->n_paths ? ps->paths[i].n : 0;
    return i < ps->n_paths ? (const char *const *)ps->paths[i].s : NULL;
}

const char *policy_session_user(const policy_session_t *ps)
{
    return ps->user;
}

static void prepared_free(prepared_t *p)
{
    for (size_t i = 0; i < p->n; i++) {
        free(p->acc[i].object);
        free(p->acc[i].verb);
    }
    free(p->acc);
    free(p->name);
}

static void clear_prepared(policy_session_t *ps)
{
    for (size_t i = 0; i < ps->n_prep; i++)
        prepared_free(&ps->prep[i]);
    free(ps->prep);
    ps->prep = NULL;
    ps->n_prep = 0;
}

void policy_session_free(policy_session_t *ps)
{
    if (!ps)
        return;
    free(ps->user);
    path_free(&ps->initial);
    for (size_t i = 0; i < ps->n_paths; i++)
        path_free(&ps->paths[i]);
    clear_prepared(ps);
    for (size_t i = 0; i < ps->n_schemas; i++)
        free(ps->schemas[i]);
    free(ps->schemas);
    free(ps);
}

static bool add_schema(policy_session_t *ps, const char *name)
{
    for (size_t i = 0; i < ps->n_schemas; i++)
        if (!strcmp(ps->schemas[i], name))
            return true;
    char **g = realloc(ps->schemas, (ps->n_schemas + 1) * sizeof(char *));
    if (!g)
        return false;
    ps->schemas = g;
    if (!(g[ps->n_schemas] = strdup(name)))
        return false;
    ps->n_schemas++;
    return true;
}

int policy_session_set_schemas(policy_session_t *ps, const char *const *names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!add_schema(ps, names[i]))
            return -1;
    ps->schemas_known = true;
    return 0;
}

/* ---- resolution ---- */

/* Everything a check may consult beyond the session: effects of earlier
 * statements of the same query string. */
typedef struct eff_item {
    effect_t kind;
    bool local;
    const char **path; /* EFF_SET_PATH / EFF_RESET_PATH (initial) */
    size_t n_path;
    const char *name;
    policy_access_t *acc; /* EFF_PREPARE: the resolved accesses */
    size_t n_acc;
} eff_item_t;

struct policy_effects {
    eff_item_t *v;
    size_t n, cap;
    bool temp;
};

typedef struct ctx {
    const policy_role_t *role;
    policy_session_t *ps;
    policy_result_t *r;
    policy_arena_t *a;
    policy_effects_t *eff;
    /* accesses of the statement being decided */
    policy_access_t *acc;
    size_t n_acc, cap_acc;
    bool oom;
} ctx_t;

static bool in_list(const char *const *v, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(v[i], s))
            return true;
    return false;
}

static bool schema_exists(const ctx_t *c, const char *s)
{
    if (!c->ps->schemas_known)
        return true;
    if (in_list((const char *const *)c->ps->schemas, c->ps->n_schemas, s))
        return true;
    for (size_t i = 0; i < c->eff->n; i++)
        if (c->eff->v[i].kind == EFF_CREATE_SCHEMA && !strcmp(c->eff->v[i].name, s))
            return true;
    return false;
}

typedef struct cands {
    const char *v[64];
    size_t n;
    bool overflow;
} cands_t;

static void cand_add(cands_t *cs, const char *s)
{
    for (size_t i = 0; i < cs->n; i++)
        if (!strcmp(cs->v[i], s))
            return;
    if (cs->n < sizeof(cs->v) / sizeof(cs->v[0]))
        cs->v[cs->n++] = s;
    else
        cs->overflow = true;
}

/* PostgreSQL's lookup of an unqualified name along one path: pg_temp
 * (relations only, when the session may have temp tables) and pg_catalog
 * come first unless the path places them; a schema where the name is known
 * to exist ends the walk (pg_catalog built-ins); every other schema on the
 * way is a candidate because we cannot see what it holds. */
static void resolve_path(const ctx_t *c, const char *const *p, size_t n, const char *name,
                         bool is_function, bool temp, cands_t *cs)
{
    const char *eff[MAX_PATHS * 8 + 2];
    size_t k = 0;
    if (!is_function && temp && !in_list(p, n, "pg_temp"))
        eff[k++] = "pg_temp";
    if (!in_list(p, n, "pg_catalog"))
        eff[k++] = "pg_catalog";
    for (size_t i = 0; i < n && k < sizeof(eff) / sizeof(eff[0]); i++)
        eff[k++] = p[i];
    for (size_t i = 0; i < k; i++) {
        const char *s = eff[i];
        if (!strcmp(s, "pg_catalog")) {
            if (is_function ? policy_is_pg_function(name) : policy_is_pg_relation(name)) {
                cand_add(cs, s);
                return;
            }
            continue;
        }
        if (!strcmp(s, "pg_temp")) {
            if (!is_function && temp)
                cand_add(cs, s);
            continue;
        }
        if (!strcmp(s, "$user")) {
            if (c->ps->schemas_known && c->ps->user[0] && schema_exists(c, c->ps->user))
                cand_add(cs, c->ps->user);
            continue;
        }
        /* A schema named in the path is a candidate even if it did not exist
         * when the session started: another session may create it meanwhile. */
        if (*s)
            cand_add(cs, s);
    }
}

static void resolve(const ctx_t *c, const char *name, bool is_function, cands_t *cs)
{
    policy_session_t *ps = c->ps;
    bool temp = ps->temp_possible || c->eff->temp;
    /* A SET earlier in the same string is in force for what follows (had it
     * failed, the rest of the string would not run): it alone counts. */
    for (size_t i = c->eff->n; i-- > 0;)
        if (c->eff->v[i].path) {
            resolve_path(c, c->eff->v[i].path, c->eff->v[i].n_path, name, is_function, temp, cs);
            return;
        }
    for (size_t i = 0; i < ps->n_paths; i++)
        resolve_path(c, (const char *const *)ps->paths[i].s, ps->paths[i].n, name, is_function,
                     temp, cs);
}

static char *object_name(policy_arena_t *a, const char *schema, const char *name)
{
    const char *qs = schema ? policy_quote_ident(a, schema) : NULL;
    const char *qn = policy_quote_ident(a, name);
    if (!qn || (schema && !qs))
        return NULL;
    size_t l = (qs ? strlen(qs) + 1 : 0) + strlen(qn) + 1;
    char *o = arena_alloc(a, l);
    if (o)
        snprintf(o, l, "%s%s%s", qs ? qs : "", qs ? "." : "", qn);
    return o;
}

/* ---- rule matching ---- */

static bool globs_match(const char *const *g, size_t n, const char *obj, bool exact_name)
{
    for (size_t i = 0; i < n; i++) {
        if (!glob_match(g[i], obj))
            continue;
        if (!exact_name)
            return true;
        const char *dot = strrchr(g[i], '.');
        if (!glob_has_wildcard(dot ? dot + 1 : g[i]))
            return true;
    }
    return false;
}

/* exact: for protected objects, the rule must name the object without a
 * wildcard in its name part, and list `unknown` explicitly. */
static bool rule_matches(const crule_t *r, const policy_access_t *a, bool exact)
{
    if (r->ops ? !(r->ops & (1u << a->op)) : (exact && a->op == POLICY_OP_UNKNOWN))
        return false;
    if (r->without_where && !a->without_where)
        return false;
    if (r->has_rels || r->has_fns) {
        if (a->kind == POLICY_OBJ_RELATION)
            return r->has_rels && globs_match(r->rels, r->n_rels, a->object, exact);
        if (a->kind == POLICY_OBJ_FUNCTION)
            return r->has_fns && globs_match(r->fns, r->n_fns, a->object, exact);
        return false;
    }
    return !exact || a->op == POLICY_OP_UNKNOWN;
}

static bool write_op(policy_op_t op)
{
    switch (op) {
    case POLICY_OP_INSERT:
    case POLICY_OP_UPDATE:
    case POLICY_OP_DELETE:
    case POLICY_OP_MERGE:
    case POLICY_OP_TRUNCATE:
    case POLICY_OP_COPY_FROM:
    case POLICY_OP_DDL:
    case POLICY_OP_DCL:
        return true;
    default:
        return false;
    }
}

static const char *builtin_reason(const char *rule)
{
    static const struct {
        const char *id, *why;
    } m[] = {
        {"builtin:copy-server-side", "COPY to or from a server file or program is never allowed"},
        {"builtin:pinned-setting", "the gateway pins this setting"},
        {"builtin:read-only", "the role is read-only"},
        {"builtin:unknown-prepared-statement", "no such prepared statement in this session"},
        {"builtin:unknown", "the gateway cannot classify it"},
        {"builtin:secret-catalog", "the catalog holds secrets or data values"},
        {"builtin:too-complex", "the statement is too complex to check"},
        {"builtin:too-many-prepared", "too many prepared statements in this session"},
    };
    for (size_t i = 0; i < sizeof(m) / sizeof(m[0]); i++)
        if (!strcmp(rule, m[i].id))
            return m[i].why;
    return NULL;
}

/* Decide one resolved access; `special` is the built-in that guards it
 * ("builtin:dangerous-function", "builtin:secret-catalog", "builtin:unknown")
 * and `hard` a built-in no rule lifts, or NULL. */
static void decide_access(ctx_t *c, policy_access_t *a, const char *special, const char *hard)
{
    const policy_role_t *role = c->role;
    const crule_t *deny = NULL, *review = NULL, *allow = NULL;
    a->matched = arena_alloc(c->a, (role->n_rules ? role->n_rules : 1) * sizeof(char *));
    if (!a->matched) {
        c->oom = true;
        return;
    }
    for (size_t i = 0; i < role->n_rules; i++) {
        const crule_t *r = &role->rules[i];
        if (!rule_matches(r, a, false))
            continue;
        a->matched[a->n_matched++] = r->id;
        if (special && r->action != POLICY_DENY && !rule_matches(r, a, true))
            continue;
        const crule_t **slot = r->action == POLICY_DENY     ? &deny
                               : r->action == POLICY_REVIEW ? &review
                                                            : &allow;
        if (!*slot)
            *slot = r;
    }
    if (!hard && role->read_only && write_op(a->op))
        hard = "builtin:read-only";
    if (hard) {
        a->decision = POLICY_DENY;
        a->rule = hard;
    } else if (deny) {
        a->decision = POLICY_DENY;
        a->rule = deny->id;
    } else if (review) {
        a->decision = POLICY_REVIEW;
        a->rule = review->id;
    } else if (allow) {
        a->decision = POLICY_ALLOW;
        a->rule = allow->id;
    } else if (special) {
        a->decision = POLICY_DENY;
        a->rule = special;
    } else if (role->catalog_reads && (a->op == POLICY_OP_SELECT || a->op == POLICY_OP_EXPLAIN) &&
               a->kind == POLICY_OBJ_RELATION &&
               (!strncmp(a->object, "pg_catalog.", 11) ||
                !strncmp(a->object, "information_schema.", 19))) {
        a->decision = POLICY_ALLOW;
        a->rule = "builtin:catalog-reads";
    } else {
        a->decision = role->default_allow ? POLICY_ALLOW : POLICY_DENY;
        a->rule = NULL;
    }
}

static policy_access_t *push_access(ctx_t *c)
{
    if (c->n_acc == c->cap_acc) {
        size_t cap = c->cap_acc ? c->cap_acc * 2 : 16;
        policy_access_t *g = realloc(c->acc, cap * sizeof(*g));
        if (!g) {
            c->oom = true;
            return NULL;
        }
        c->acc = g;
        c->cap_acc = cap;
    }
    policy_access_t *a = &c->acc[c->n_acc++];
    memset(a, 0, sizeof(*a));
    return a;
}

static const char *builtin_rule(builtin_t b)
{
    switch (b) {
    case B_COPY_SERVER:
        return "builtin:copy-server-side";
    case B_PINNED:
        return "builtin:pinned-setting";
    case B_READ_WRITE:
        return "builtin:read-only";
    case B_TOO_COMPLEX:
        return "builtin:too-complex";
    default:
        return NULL;
    }
}

/* special: the built-in guarding a protected object (NULL = work it out);
 * b: a built-in verdict from extraction. */
static void emit(ctx_t *c, policy_op_t op, policy_obj_t kind, const char *object, const char *verb,
                 bool without_where, builtin_t b, const char *special)
{
    if (b == B_READ_WRITE && !c->role->read_only)
        return; /* a read-write transaction is ordinary for other roles */
    policy_access_t *a = push_access(c);
    if (!a)
        return;
    a->op = op;
    a->kind = kind;
    a->object = object ? object : "";
    /* the verb may live in the intent, which the cache can free before the result is
       used (uncached checks, statements larger than the cache): the result keeps a copy */
    a->verb = verb ? arena_strdup(c->a, verb) : NULL;
    if (verb && !a->verb)
        c->oom = true;
    a->without_where = without_where;
    if (!special && op == POLICY_OP_UNKNOWN) {
        special = "builtin:unknown";
    } else if (!special && kind == POLICY_OBJ_FUNCTION) {
        const char *dot = strrchr(a->object, '.');
        if (policy_dangerous_function(dot ? dot + 1 : a->object))
            special = "builtin:dangerous-function";
    } else if (!special && kind == POLICY_OBJ_RELATION && a->object[0] != '"') {
        /* object is schema.name; identifiers holding '.' or '"' are quoted */
        const char *dot = strchr(a->object, '.');
        char schema[128];
        if (dot && (size_t)(dot - a->object) < sizeof(schema)) {
            memcpy(schema, a->object, (size_t)(dot - a->object));
            schema[dot - a->object] = '\0';
            if (policy_secret_relation(schema, dot + 1))
                special = "builtin:secret-catalog";
        }
    }
    decide_access(c, a, special, builtin_rule(b));
}

static void emit_relation(ctx_t *c, const raccess_t *ra)
{
    cands_t cs = {.n = 0};
    if (ra->schema)
        cand_add(&cs, ra->schema);
    else
        resolve(c, ra->name, false, &cs);
    bool ww = ra->flags & RA_WITHOUT_WHERE;
    if (cs.n == 0) /* resolves nowhere: PostgreSQL will fail; charge the bare name */
        emit(c, ra->op, POLICY_OBJ_RELATION, object_name(c->a, NULL, ra->name), ra->verb, ww,
             ra->builtin, NULL);
    for (size_t i = 0; i < cs.n; i++)
        emit(c, ra->op, POLICY_OBJ_RELATION, object_name(c->a, cs.v[i], ra->name), ra->verb, ww,
             ra->builtin, NULL);
    if (cs.overflow)
        emit(c, POLICY_OP_UNKNOWN, POLICY_OBJ_OTHER, "search_path too long", "name resolution",
             false, B_NONE, NULL);
}

static bool system_schema(const char *s)
{
    return !strcmp(s, "pg_catalog") || !strcmp(s, "information_schema");
}

static void emit_function(ctx_t *c, const raccess_t *ra)
{
    cands_t cs = {.n = 0};
    if (ra->schema)
        cand_add(&cs, ra->schema);
    else
        resolve(c, ra->name, true, &cs);
    if (cs.n == 0)
        cand_add(&cs, policy_is_pg_function(ra->name) ? "pg_catalog" : "");
    for (size_t i = 0; i < cs.n; i++) {
        if (system_schema(cs.v[i]) && !(ra->flags & RA_CALL) &&
            !policy_dangerous_function(ra->name))
            continue; /* an ordinary built-in: no access */
        emit(c, POLICY_OP_FUNCTION, POLICY_OBJ_FUNCTION,
             object_name(c->a, *cs.v[i] ? cs.v[i] : NULL, ra->name), ra->verb, false, ra->builtin,
             NULL);
    }
}

/* ---- prepared statements ---- */

static const eff_item_t *overlay_prepared(const ctx_t *c, const char *name, bool *cleared)
{
    *cleared = false;
    for (size_t i = c->eff->n; i-- > 0;) {
        const eff_item_t *e = &c->eff->v[i];
        if (e->kind == EFF_PREPARE && !strcmp(e->name, name))
            return e;
        if ((e->kind == EFF_DEALLOCATE && !strcmp(e->name, name)) ||
            e->kind == EFF_DEALLOCATE_ALL || e->kind == EFF_DISCARD_ALL) {
            *cleared = true;
            return NULL;
        }
    }
    return NULL;
}

static const prepared_t *session_prepared(const policy_session_t *ps, const char *name)
{
    for (size_t i = 0; i < ps->n_prep; i++)
        if (!strcmp(ps->prep[i].name, name))
            return &ps->prep[i];
    return NULL;
}

static bool prepared_exists(const ctx_t *c, const char *name)
{
    bool cleared;
    if (overlay_prepared(c, name, &cleared))
        return true;
    return !cleared && session_prepared(c->ps, name);
}

static void emit_execute(ctx_t *c, const raccess_t *ra)
{
    bool explain = ra->flags & RA_EXPLAIN, cleared;
    const eff_item_t *e = overlay_prepared(c, ra->name, &cleared);
    const prepared_t *p = e || cleared ? NULL : session_prepared(c->ps, ra->name);
    if (!e && !p) {
        policy_access_t *a = push_access(c);
        if (!a)
            return;
        a->op = POLICY_OP_UNKNOWN;
        a->kind = POLICY_OBJ_OTHER;
        size_t l = strlen(ra->name) + 24;
        char *o = arena_alloc(c->a, l);
        if (o)
            snprintf(o, l, "prepared statement %s", ra->name);
        a->object = o ? o : "";
        a->verb = "EXECUTE";
        decide_access(c, a, NULL, "builtin:unknown-prepared-statement");
        return;
    }
    size_t n = e ? e->n_acc : p->n;
    for (size_t i = 0; i < n; i++) {
        policy_op_t op = e ? e->acc[i].op : (policy_op_t)p->acc[i].op;
        policy_obj_t kind = e ? e->acc[i].kind : (policy_obj_t)p->acc[i].kind;
        const char *obj = e ? e->acc[i].object : arena_strdup(c->a, p->acc[i].object);
        const char *verb = e ? e->acc[i].verb : arena_strdup(c->a, p->acc[i].verb);
        bool ww = e ? e->acc[i].without_where : p->acc[i].without_where;
        /* the built-in verdict travels in the rule id */
        const char *rule = e ? e->acc[i].rule : NULL;
        builtin_t b = p ? (builtin_t)p->acc[i].builtin
                      : rule && !strcmp(rule, "builtin:copy-server-side") ? B_COPY_SERVER
                      : rule && !strcmp(rule, "builtin:pinned-setting")   ? B_PINNED
                                                                          : B_NONE;
        if (explain && kind == POLICY_OBJ_RELATION) {
            op = POLICY_OP_EXPLAIN;
            verb = "EXPLAIN";
        }
        emit(c, op, kind, obj, verb, ww, b, NULL);
    }
}

/* ---- statements ---- */

static bool eff_push(ctx_t *c, eff_item_t it)
{
    policy_effects_t *e = c->eff;
    if (e->n == e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 4;
        eff_item_t *g = arena_alloc(c->a, cap * sizeof(*g));
        if (!g) {
            c->oom = true;
            return false;
        }
        if (e->n)
            memcpy(g, e->v, e->n * sizeof(*g));
        e->v = g;
        e->cap = cap;
    }
    e->v[e->n++] = it;
    return true;
}

static size_t count_prepared(const ctx_t *c)
{
    size_t n = c->ps->n_prep;
    for (size_t i = 0; i < c->eff->n; i++)
        n += c->eff->v[i].kind == EFF_PREPARE;
    return n;
}

static void record_effect(ctx_t *c, const pstmt_t *st, policy_stmt_t *out)
{
    /* copies: the intent may leave the cache before the proxy applies this */
    eff_item_t it = {.kind = st->effect, .local = st->flags & PS_LOCAL};
    if (st->effect == EFF_NONE)
        return;
    if (st->eff_name && !(it.name = arena_strdup(c->a, st->eff_name)))
        return;
    switch (st->effect) {
    case EFF_SET_PATH:
        it.path = arena_alloc(c->a, (st->n_path ? st->n_path : 1) * sizeof(char *));
        if (!it.path)
            return;
        for (size_t i = 0; i < st->n_path; i++)
            if (!(it.path[i] = arena_strdup(c->a, st->path[i])))
                return;
        it.n_path = st->n_path;
        break;
    case EFF_RESET_PATH:
    case EFF_DISCARD_ALL:
        it.path = (const char **)c->ps->initial.s;
        it.n_path = c->ps->initial.n;
        break;
    case EFF_PREPARE:
        if (prepared_exists(c, st->eff_name))
            return; /* PostgreSQL refuses a second PREPARE of the name: nothing changes */
        it.acc = out->accesses;
        it.n_acc = out->n_accesses;
        break;
    default:
        break;
    }
    eff_push(c, it);
}

static void decide_stmt(ctx_t *c, const pstmt_t *st, policy_stmt_t *out)
{
    c->n_acc = 0;
    if (st->effect == EFF_PREPARE && !prepared_exists(c, st->eff_name) &&
        count_prepared(c) >= MAX_PREPARED) {
        policy_access_t *a = push_access(c);
        if (a) {
            a->op = POLICY_OP_UNKNOWN;
            a->kind = POLICY_OBJ_NONE;
            a->object = "";
            a->verb = "PREPARE";
            decide_access(c, a, NULL, "builtin:too-many-prepared");
        }
    }
    for (size_t i = 0; i < st->n_acc && !c->oom; i++) {
        const raccess_t *ra = &st->acc[i];
        if (ra->builtin == B_EXEC_PREPARED)
            emit_execute(c, ra);
        else if (ra->kind == POLICY_OBJ_RELATION)
            emit_relation(c, ra);
        else if (ra->kind == POLICY_OBJ_FUNCTION)
            emit_function(c, ra);
        else
            emit(c, (policy_op_t)ra->op, (policy_obj_t)ra->kind,
                 ra->kind == POLICY_OBJ_NONE ? "" : arena_strdup(c->a, ra->name), ra->verb,
                 ra->flags & RA_WITHOUT_WHERE, (builtin_t)ra->builtin, NULL);
    }
    out->location = st->location;
    out->len = st->len;
    out->node = arena_strdup(c->a, st->node);
    out->writes = (st->flags & PS_WRITES) != 0;
    out->decision = POLICY_ALLOW;
    if (c->oom)
        return;
    out->accesses = c->n_acc ? arena_alloc(c->a, c->n_acc * sizeof(policy_access_t)) : NULL;
    if (c->n_acc && !out->accesses) {
        c->oom = true;
        return;
    }
    if (c->n_acc)
        memcpy(out->accesses, c->acc, c->n_acc * sizeof(policy_access_t));
    out->n_accesses = c->n_acc;
    record_effect(c, st, out);
    if (st->flags & PS_TEMP)
        c->eff->temp = true;
    for (size_t i = 0; i < out->n_accesses; i++) {
        const policy_access_t *a = &out->accesses[i];
        if (a->decision > out->decision)
            out->decision = a->decision;
        if (write_op(a->op) || a->op == POLICY_OP_FUNCTION || a->op == POLICY_OP_UTILITY ||
            a->op == POLICY_OP_DO || a->op == POLICY_OP_UNKNOWN)
            out->writes = true;
    }
    if (st->flags & PS_NO_EXEC)
        out->writes = false;
}

/* ---- messages ---- */

static void label(const policy_access_t *a, char *buf, size_t n)
{
    bool fn = a->kind == POLICY_OBJ_FUNCTION;
    bool setting = a->kind == POLICY_OBJ_SETTING;
    if (!a->object[0] || (setting && strcmp(a->verb, "SET") && strcmp(a->verb, "RESET") &&
                          strcmp(a->verb, "DISCARD") && strcmp(a->verb, "set_config of")))
        snprintf(buf, n, "%s", a->verb);
    else if (fn || setting)
        snprintf(buf, n, "%s %s", a->verb, a->object);
    else
        snprintf(buf, n, "%s on %s", a->verb, a->object);
}

static char *format_message(policy_arena_t *ar, const policy_role_t *role, const policy_access_t *a)
{
    char what[512], msg[1024];
    label(a, what, sizeof(what));
    const char *why = a->rule ? builtin_reason(a->rule) : NULL;
    if (a->rule && !strcmp(a->rule, "builtin:dangerous-function")) {
        const char *dot = strrchr(a->object, '.');
        why = policy_dangerous_function(dot ? dot + 1 : a->object);
    }
    if (a->decision == POLICY_REVIEW)
        snprintf(msg, sizeof(msg), "bulwark: approval required: %s (rule \"%s\", role %s)", what,
                 a->rule, role->name);
    else if (!a->rule)
        snprintf(msg, sizeof(msg), "bulwark: %s denied: no rule allows it (role %s, default deny)",
                 what, role->name);
    else if (!strncmp(a->rule, "builtin:", 8))
        snprintf(msg, sizeof(msg), "bulwark: %s denied: %s (built-in rule \"%s\", role %s)", what,
                 why ? why : "built-in protection", a->rule + 8, role->name);
    else
        snprintf(msg, sizeof(msg), "bulwark: %s denied by rule \"%s\" (role %s)", what, a->rule,
                 role->name);
    return arena_strdup(ar, msg);
}

static void set_verdict(policy_result_t *r, const policy_role_t *role, const policy_access_t *a)
{
    r->decision = a->decision;
    r->decided_by = a;
    r->rule = a->rule;
    if (a->decision == POLICY_ALLOW)
        return;
    memcpy(r->sqlstate, "42501", 6);
    r->message = format_message(r->arena, role, a);
    if (a->decision == POLICY_REVIEW) {
        for (size_t i = 0; i < role->n_rules; i++)
            if (role->rules[i].id == a->rule)
                r->review = role->rules[i].review;
    }
}

static int oom_result(policy_result_t *r)
{
    r->decision = POLICY_DENY;
    memcpy(r->sqlstate, "42501", 6);
    r->message = NULL;
    return -1;
}

static void refuse(policy_result_t *r, const char *sqlstate, const char *rule, const char *msg,
                   int pos)
{
    r->decision = POLICY_DENY;
    memcpy(r->sqlstate, sqlstate, 6);
    r->rule = rule;
    r->message = arena_strdup(r->arena, msg);
    r->cursorpos = pos;
}

static int decide(const policy_role_t *role, policy_session_t *ps, const intent_t *in,
                  policy_result_t *r)
{
    if (in->error) {
        refuse(r, in->sqlstate, NULL, in->error, in->cursorpos);
        return r->message ? 0 : oom_result(r);
    }
    r->effects = arena_alloc(r->arena, sizeof(policy_effects_t));
    r->stmts = in->n_stmts ? arena_alloc(r->arena, in->n_stmts * sizeof(policy_stmt_t)) : NULL;
    if (!r->effects || (in->n_stmts && !r->stmts))
        return oom_result(r);
    memset(r->effects, 0, sizeof(*r->effects));
    ctx_t c = {.role = role, .ps = ps, .r = r, .a = r->arena, .eff = r->effects};
    for (size_t i = 0; i < in->n_stmts && !c.oom; i++) {
        policy_stmt_t *s = &r->stmts[r->n_stmts++];
        memset(s, 0, sizeof(*s));
        decide_stmt(&c, &in->stmts[i], s);
    }
    free(c.acc);
    if (c.oom || r->arena->failed)
        return oom_result(r);
    const policy_access_t *worst = NULL;
    for (size_t i = 0; i < r->n_stmts; i++) {
        r->writes |= r->stmts[i].writes;
        for (size_t j = 0; j < r->stmts[i].n_accesses; j++) {
            const policy_access_t *a = &r->stmts[i].accesses[j];
            if (!worst || a->decision > worst->decision)
                worst = a;
        }
    }
    if (worst)
        set_verdict(r, role, worst);
    if (r->decision != POLICY_ALLOW && !r->message)
        return oom_result(r);
    return 0;
}

int policy_check(const policy_role_t *role, policy_cache_t *cache, policy_session_t *ps,
                 const char *sql, size_t len, policy_result_t *out)
{
    return policy_check_keep(role, cache, ps, sql, len, false, out);
}

int policy_check_keep(const policy_role_t *role, policy_cache_t *cache, policy_session_t *ps,
                      const char *sql, size_t len, bool keep_tree, policy_result_t *out)
{
    memset(out, 0, sizeof(*out));
    out->arena = calloc(1, sizeof(policy_arena_t));
    if (!out->arena)
        return oom_result(out);
    uint64_t max = role->set->max_statement_bytes;
    if (len > max) {
        char msg[160];
        snprintf(msg, sizeof(msg),
                 "bulwark: statement of %zu bytes exceeds max_statement_bytes (%llu)", len,
                 (unsigned long long)max);
        refuse(out, "54000", "builtin:statement-too-large", msg, 0); /* program_limit_exceeded */
        return out->message ? 0 : oom_result(out);
    }
    if (memchr(sql, 0, len)) {
        refuse(out, "42601", NULL, "bulwark: statement contains a NUL byte", 0);
        return out->message ? 0 : oom_result(out);
    }
    const intent_t *in = cache ? policy_cache_get(cache, sql, len) : NULL;
    intent_t *own = NULL;
    char *tree = NULL;
    out->cache_hit = in != NULL;
    if (!in) {
        char *copy = malloc(len + 1);
        if (!copy)
            return oom_result(out);
        memcpy(copy, sql, len);
        copy[len] = '\0';
        own = policy_extract_keep(copy, len, keep_tree ? &tree : NULL);
        free(copy);
        if (!own)
            return oom_result(out);
        in = own;
    }
    int rc = decide(role, ps, in, out);
    out->tree = tree; /* after decide(), which may reset *out */
    if (own && cache)
        (void)policy_cache_put(cache, sql, len, own);
    else
        policy_intent_free(own);
    return rc;
}

void policy_result_free(policy_result_t *r)
{
    if (!r)
        return;
    if (r->arena) {
        arena_free(r->arena);
        free(r->arena);
    }
    free(r->tree);
    memset(r, 0, sizeof(*r));
}

/* ---- applying effects ---- */

static void fold_paths(policy_session_t *ps)
{
    /* Too many candidates: fold all into one path holding every schema with
     * pg_catalog last, whose candidates are a superset of each path's. */
    path_t merged = {calloc(64, sizeof(char *)), 0};
    if (!merged.s)
        return;
    for (size_t i = 0; i < ps->n_paths; i++)
        for (size_t j = 0; j < ps->paths[i].n; j++) {
            const char *s = ps->paths[i].s[j];
            if (strcmp(s, "pg_catalog") && merged.n < 63 &&
                !in_list((const char *const *)merged.s, merged.n, s))
                merged.s[merged.n++] = strdup(s);
        }
    merged.s[merged.n++] = strdup("pg_catalog");
    for (size_t i = 0; i < merged.n; i++)
        if (!merged.s[i]) {
            path_free(&merged);
            return;
        }
    for (size_t i = 0; i < ps->n_paths; i++)
        path_free(&ps->paths[i]);
    ps->paths[0] = merged;
    ps->n_paths = 1;
    ps->settled = 0;
    ps->tentative = -1;
    ps->uncertain = true;
}

static long add_path(policy_session_t *ps, const char *const *s, size_t n)
{
    for (size_t i = 0; i < ps->n_paths; i++)
        if (path_equal(&ps->paths[i], s, n))
            return (long)i;
    if (ps->n_paths == MAX_PATHS)
        fold_paths(ps);
    if (ps->n_paths == MAX_PATHS || !path_copy(&ps->paths[ps->n_paths], s, n))
        return -1;
    return (long)ps->n_paths++;
}

static void apply_prepare(policy_session_t *ps, const eff_item_t *e)
{
    if (session_prepared(ps, e->name) || ps->n_prep >= MAX_PREPARED)
        return;
    prepared_t *g = realloc(ps->prep, (ps->n_prep + 1) * sizeof(*g));
    if (!g)
        return;
    ps->prep = g;
    prepared_t *p = &g[ps->n_prep];
    p->name = strdup(e->name);
    p->acc = calloc(e->n_acc ? e->n_acc : 1, sizeof(saccess_t));
    p->n = 0;
    if (!p->name || !p->acc) {
        prepared_free(p);
        return;
    }
    for (size_t i = 0; i < e->n_acc; i++) {
        const policy_access_t *a = &e->acc[i];
        saccess_t *s = &p->acc[p->n++];
        s->op = (uint8_t)a->op;
        s->kind = (uint8_t)a->kind;
        s->without_where = a->without_where;
        s->builtin = a->rule && !strcmp(a->rule, "builtin:copy-server-side") ? B_COPY_SERVER
                     : a->rule && !strcmp(a->rule, "builtin:pinned-setting") ? B_PINNED
                                                                             : B_NONE;
        s->object = strdup(a->object);
        s->verb = strdup(a->verb);
        if (!s->object || !s->verb) {
            prepared_free(p);
            return;
        }
    }
    ps->n_prep++;
}

static void deallocate(policy_session_t *ps, const char *name)
{
    for (size_t i = 0; i < ps->n_prep; i++)
        if (!name || !strcmp(ps->prep[i].name, name)) {
            prepared_free(&ps->prep[i]);
            ps->prep[i] = ps->prep[--ps->n_prep];
            if (name)
                return;
            i--;
        }
}

void policy_session_apply(policy_session_t *ps, const policy_result_t *r)
{
    if (!ps || !r || r->decision != POLICY_ALLOW || !r->effects)
        return;
    const policy_effects_t *e = r->effects;
    for (size_t i = 0; i < e->n; i++) {
        const eff_item_t *it = &e->v[i];
        long idx;
        switch (it->kind) {
        case EFF_SET_PATH:
        case EFF_RESET_PATH:
        case EFF_DISCARD_ALL:
            idx = add_path(ps, it->path, it->n_path);
            if (idx < 0) {
                ps->uncertain = true; /* could not track: keep every path */
            } else if (!it->local) {
                ps->tentative = idx;
            }
            ps->txn_dirty = true;
            if (it->kind == EFF_DISCARD_ALL) {
                clear_prepared(ps);
                ps->temp_possible = false;
            }
            break;
        case EFF_PREPARE:
            apply_prepare(ps, it);
            break;
        case EFF_DEALLOCATE:
            deallocate(ps, it->name);
            break;
        case EFF_DEALLOCATE_ALL:
            deallocate(ps, NULL);
            break;
        case EFF_DISCARD_TEMP:
            break; /* temp tables may come back in a rolled-back DISCARD: keep the flag */
        case EFF_CREATE_SCHEMA:
            if (ps->schemas_known)
                (void)add_schema(ps, it->name);
            break;
        case EFF_ROLLBACK_TO:
            if (ps->txn_dirty)
                ps->uncertain = true;
            break;
        default:
            break;
        }
    }
    if (e->temp)
        ps->temp_possible = true;
}

void policy_session_txn_end(policy_session_t *ps, bool committed)
{
    if (!ps || !ps->txn_dirty)
        return;
    long keep = -1;
    if (ps->uncertain)
        ps->base_ambiguous = true;
    else if (committed && ps->tentative >= 0)
        keep = ps->tentative; /* a committed session-level SET decides */
    else if (!ps->base_ambiguous)
        keep = (long)ps->settled; /* rolled back, or SET LOCAL only */
    if (keep >= 0) {
        path_t kept = ps->paths[keep];
        for (size_t i = 0; i < ps->n_paths; i++)
            if (i != (size_t)keep)
                path_free(&ps->paths[i]);
        ps->paths[0] = kept;
        ps->n_paths = 1;
        ps->settled = 0;
        ps->base_ambiguous = false;
    }
    ps->tentative = -1;
    ps->txn_dirty = false;
    ps->uncertain = false;
}

int policy_fingerprint(const char *sql, size_t len, char out[17])
{
    char *copy = malloc(len + 1);
    if (!copy)
        return -1;
    memcpy(copy, sql, len);
    copy[len] = '\0';
    PgQueryFingerprintResult f = pg_query_fingerprint(copy);
    free(copy);
    int rc = -1;
    if (!f.error && f.fingerprint_str && strlen(f.fingerprint_str) == 16) {
        memcpy(out, f.fingerprint_str, 17);
        rc = 0;
    }
    pg_query_free_fingerprint_result(f);
    return rc;
}
