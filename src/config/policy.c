/*
 * Policy files (SPEC section 5): one role object or an array of roles.
 * Identities and upstream credentials are turned into structs now; rules and
 * masks are validated in full (structure, types, enumerated values, duplicate
 * ids) and kept as cJSON copies for the policy and mask modules.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "config/internal.h"

static const char *const role_keys[] = {
    "role",          "description", "identities",
    "upstream",      "default",     "read_only",
    "catalog_reads", "admin",       "end_session_at_token_expiry",
    "rules",         "masks",       NULL};
static const char *const identity_keys[] = {"iss", "sub", "claim", "includes", NULL};
static const char *const upstream_keys[] = {"user", "password_file", "password_env", NULL};
static const char *const rule_keys[] = {"id",        "action",      "operations",
                                        "relations", "functions",   "without_where",
                                        "review",    "description", NULL};
static const char *const review_keys[] = {"approvers", "timeout", "mode", NULL};
static const char *const mask_keys[] = {"column",    "detectors", "method",        "keep_first",
                                        "keep_last", "value",     "in_predicates", NULL};

/* SPEC section 5.1 */
static const char *const operations[] = {"select",   "insert",   "update",    "delete",  "merge",
                                         "truncate", "copy_to",  "copy_from", "explain", "ddl",
                                         "dcl",      "function", "session",   "utility", "do",
                                         "unknown",  NULL};
enum { OP_UPDATE = 2, OP_DELETE = 3 }; /* indexes in operations[] */
enum { A_ALLOW, A_DENY, A_REVIEW };
static const char *const actions[] = {"allow", "deny", "review", NULL};
static const char *const modes[] = {"hold", "reject", NULL};
static const char *const defaults[] = {"deny", "allow", NULL}; /* cfg_default_t order */
static const char *const detectors[] = {"email", "credit_card", "us_ssn", "iban",
                                        "phone", "secret",      NULL};
enum { M_REDACT, M_PARTIAL, M_EMAIL, M_HASH, M_NULL, M_FIXED };
static const char *const methods[] = {"redact", "partial", "email", "hash", "null", "fixed", NULL};
static const char *const allow_deny[] = {"allow", "deny", NULL};

/* ---- approver references, checked once every role is known ---- */

struct cfg_refs {
    struct ref {
        char *file, *path, *name;
    } * v;
    size_t n;
};

cfg_refs_t *cfg_refs_new(void)
{
    return calloc(1, sizeof(cfg_refs_t));
}

void cfg_refs_free(cfg_refs_t *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n; i++) {
        free(r->v[i].file);
        free(r->v[i].path);
        free(r->v[i].name);
    }
    free(r->v);
    free(r);
}

static void refs_add(cfgw_t *w, cfg_refs_t *r, const char *name)
{
    struct ref *g = r ? realloc(r->v, (r->n + 1) * sizeof(*g)) : NULL;
    if (!g) {
        cfgw_err(w, "out of memory");
        return;
    }
    r->v = g;
    g[r->n].file = strdup(w->file);
    g[r->n].path = strdup(w->path.s);
    g[r->n].name = strdup(name);
    r->n++;
}

size_t cfg_policy_check_refs(const cfg_t *c, cfg_errors_t *errs, const cfg_refs_t *refs)
{
    size_t n_err = 0;
    for (size_t i = 0; refs && i < refs->n; i++) {
        const struct ref *r = &refs->v[i];
        if (!r->file || !r->path || !r->name) {
            cfg_errors_addf(errs, "out of memory");
            n_err++;
        } else if (!cfg_find_role(c, r->name)) {
            char q[96];
            cfg_errors_addf(errs, "%s: %s: unknown role %s", r->file, r->path,
                            cfg_q(q, sizeof(q), r->name));
            n_err++;
        }
    }
    return n_err;
}

/* ---- identities and upstreams ---- */

static void load_identity(cfgw_t *w, const cJSON *v, const cfg_t *c, bool check_issuers,
                          cfg_identity_match_t *im)
{
    if (!cfgw_object(w, v, identity_keys))
        return;
    const char *s;
    char q[96];
    if (cfgw_str(w, v, "iss", CFGW_REQ, &s) > 0) {
        im->iss = cfgw_strdup(w, s);
        if (check_issuers && !cfg_find_issuer(c, s))
            cfgw_err_at(w, "iss", "unknown issuer %s (not in identity.issuers of %s)",
                        cfg_q(q, sizeof(q), s), c->path);
    }
    int rc_sub = cfgw_str(w, v, "sub", 0, &s);
    if (rc_sub > 0)
        im->sub = cfgw_strdup(w, s);
    int rc_claim = cfgw_str(w, v, "claim", 0, &s);
    if (rc_claim > 0)
        im->claim = cfgw_strdup(w, s);
    int rc_inc = cfgw_str(w, v, "includes", 0, &s);
    if (rc_inc > 0)
        im->includes = cfgw_strdup(w, s);
    if (rc_sub < 0 || rc_claim < 0 || rc_inc < 0)
        return;
    if ((rc_claim > 0) != (rc_inc > 0))
        cfgw_err(w, "claim and includes must be given together");
    else if (rc_sub == 0 && rc_claim == 0)
        cfgw_err(w, "needs sub or claim/includes (iss alone would admit every subject of the "
                    "issuer)");
}

static void load_password(cfgw_t *w, const cJSON *v, const char *dir, cfg_upstream_t *u)
{
    const char *file = NULL, *env = NULL;
    char q[96], why[256];
    int rf = cfgw_str(w, v, "password_file", 0, &file);
    int re = cfgw_str(w, v, "password_env", 0, &env);
    if (rf > 0 && re > 0) {
        cfgw_err(w, "only one of password_file and password_env may be given");
        return;
    }
    if (rf > 0) {
        u->password_file = cfg_join(dir, file);
        uint8_t *pw;
        size_t len;
        if (!u->password_file) {
            cfgw_err(w, "out of memory");
        } else if (cfg_read_secret_file(u->password_file, &pw, &len, why, sizeof(why)) < 0) {
            cfgw_err_at(w, "password_file", "cannot read %s: %s",
                        cfg_q(q, sizeof(q), u->password_file), why);
        } else if (memchr(pw, 0, len)) {
            OPENSSL_cleanse(pw, len);
            free(pw);
            cfgw_err_at(w, "password_file", "%s holds a NUL byte",
                        cfg_q(q, sizeof(q), u->password_file));
        } else {
            u->password = (char *)pw;
        }
    }
    if (re > 0) {
        u->password_env = cfgw_strdup(w, env);
        const char *val = getenv(env);
        if (!val)
            cfgw_err_at(w, "password_env", "environment variable %s is not set",
                        cfg_q(q, sizeof(q), env));
        else if (!*val)
            cfgw_err_at(w, "password_env", "environment variable %s is empty",
                        cfg_q(q, sizeof(q), env));
        else
            u->password = cfgw_strdup(w, val);
    }
}

static void load_upstreams(cfgw_t *w, const cJSON *role, const cfg_t *c, bool check_targets,
                           const char *dir, cfg_role_t *r)
{
    const cJSON *up;
    if (cfgw_objval(w, role, "upstream", 0, &up) <= 0)
        return;
    size_t n = (size_t)cJSON_GetArraySize(up);
    r->upstreams = n ? calloc(n, sizeof(*r->upstreams)) : NULL;
    if (n && !r->upstreams) {
        cfgw_err(w, "out of memory");
        return;
    }
    size_t m = cfgw_key(w, "upstream");
    const cJSON *v;
    cJSON_ArrayForEach(v, up)
    {
        size_t mt = cfgw_key(w, v->string);
        cfg_upstream_t *u = &r->upstreams[r->n_upstreams++];
        u->target = cfgw_strdup(w, v->string);
        if (check_targets && !cfg_find_target(c, v->string)) {
            char list[512] = "";
            size_t o = 0;
            for (size_t i = 0; i < c->n_targets && o < sizeof(list); i++) {
                const char *sep = i == 0 ? "" : i + 1 == c->n_targets ? " or " : ", ";
                int k = snprintf(list + o, sizeof(list) - o, "%s\"%s\"", sep, c->targets[i].name);
                o += k > 0 ? (size_t)k : 0;
            }
            cfgw_err(w, "unknown target (expected %s)", list);
        }
        if (cfgw_object(w, v, upstream_keys)) {
            const char *s;
            if (cfgw_str(w, v, "user", CFGW_REQ, &s) > 0)
                u->user = cfgw_strdup(w, s);
            load_password(w, v, dir, u);
        }
        cfgw_pop(w, mt);
    }
    cfgw_pop(w, m);
}

/* ---- rules ---- */

/* Each element a string naming schema.name (a glob), or "*". */
static void check_object_globs(cfgw_t *w, const cJSON *rule, const char *key)
{
    const cJSON *arr;
    if (cfgw_array(w, rule, key, CFGW_NONEMPTY, &arr) <= 0)
        return;
    size_t m = cfgw_key(w, key), i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, arr)
    {
        size_t mi = cfgw_idx(w, i++);
        if (cfgw_v_str(w, v, 0) && strcmp(v->valuestring, "*") && !strchr(v->valuestring, '.'))
            cfgw_err(w, "must be schema.name (globs allowed, e.g. \"public.*\")");
        cfgw_pop(w, mi);
    }
    cfgw_pop(w, m);
}

/* Returns a bit set of the operations listed (bit i = operations[i]); 0 if absent. */
static unsigned check_operations(cfgw_t *w, const cJSON *rule)
{
    const cJSON *arr;
    unsigned set = 0;
    if (cfgw_array(w, rule, "operations", CFGW_NONEMPTY, &arr) <= 0)
        return 0;
    size_t m = cfgw_key(w, "operations"), i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, arr)
    {
        size_t mi = cfgw_idx(w, i++);
        int op;
        if (cfgw_v_enum(w, v, "operation", operations, &op)) {
            if (set & (1u << op))
                cfgw_err(w, "duplicate operation \"%s\"", operations[op]);
            set |= 1u << op;
        }
        cfgw_pop(w, mi);
    }
    cfgw_pop(w, m);
    return set;
}

static void check_review(cfgw_t *w, const cJSON *rule, int action, cfg_refs_t *refs)
{
    const cJSON *rv = cfgw_get(rule, "review");
    if (action != A_REVIEW) {
        if (rv)
            cfgw_err_at(w, "review", "only valid with action \"review\"");
        return;
    }
    if (cfgw_objval(w, rule, "review", CFGW_REQ, &rv) <= 0)
        return;
    size_t m = cfgw_key(w, "review");
    if (cfgw_object(w, rv, review_keys)) {
        const cJSON *arr;
        if (cfgw_array(w, rv, "approvers", CFGW_REQ | CFGW_NONEMPTY, &arr) > 0) {
            size_t ma = cfgw_key(w, "approvers"), i = 0;
            const cJSON *v;
            cJSON_ArrayForEach(v, arr)
            {
                size_t mi = cfgw_idx(w, i++);
                if (cfgw_v_str(w, v, 0))
                    refs_add(w, refs, v->valuestring);
                cfgw_pop(w, mi);
            }
            cfgw_pop(w, ma);
        }
        (void)cfgw_dur(w, rv, "timeout", 0, 1, INT64_MAX, NULL);
        (void)cfgw_enum(w, rv, "mode", 0, "mode", modes, NULL);
    }
    cfgw_pop(w, m);
}

static void check_rule(cfgw_t *w, const cJSON *rule, cfg_refs_t *refs)
{
    if (!cfgw_object(w, rule, rule_keys))
        return;
    int action = -1;
    bool without_where = false;
    (void)cfgw_str(w, rule, "id", CFGW_REQ, NULL);
    (void)cfgw_enum(w, rule, "action", CFGW_REQ, "action", actions, &action);
    unsigned ops = check_operations(w, rule);
    check_object_globs(w, rule, "relations");
    check_object_globs(w, rule, "functions");
    if (cfgw_bool(w, rule, "without_where", 0, &without_where) > 0 && without_where && ops &&
        (ops & ~((1u << OP_UPDATE) | (1u << OP_DELETE))))
        cfgw_err_at(w, "without_where", "only applies to operations \"update\" and \"delete\"");
    if (action >= 0)
        check_review(w, rule, action, refs);
    (void)cfgw_str(w, rule, "description", CFGW_EMPTY_OK, NULL);
}

static void check_rules(cfgw_t *w, const cJSON *role, cfg_refs_t *refs)
{
    const cJSON *arr;
    if (cfgw_array(w, role, "rules", 0, &arr) <= 0)
        return;
    size_t m = cfgw_key(w, "rules"), i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, arr)
    {
        size_t mi = cfgw_idx(w, i);
        check_rule(w, v, refs);
        const cJSON *id = cfgw_get(v, "id");
        size_t k = 0;
        const cJSON *prev;
        cJSON_ArrayForEach(prev, arr)
        {
            if (k >= i || !cJSON_IsString(id) || !*id->valuestring)
                break;
            const cJSON *pid = cfgw_get(prev, "id");
            if (cJSON_IsString(pid) && !strcmp(pid->valuestring, id->valuestring)) {
                char q[96];
                cfgw_err_at(w, "id", "duplicate rule id %s (also rules[%zu])",
                            cfg_q(q, sizeof(q), id->valuestring), k);
                break;
            }
            k++;
        }
        cfgw_pop(w, mi);
        i++;
    }
    cfgw_pop(w, m);
}

/* ---- masks ---- */

/* schema.table.column: three non-empty parts, no wildcards (a mask that
 * silently matches nothing exposes the column). */
static bool column_ok(const char *s)
{
    if (strpbrk(s, "*?"))
        return false;
    const char *a = strchr(s, '.');
    const char *b = a ? strchr(a + 1, '.') : NULL;
    return a && b && a > s && b > a + 1 && b[1] && !strchr(b + 1, '.');
}

static void check_detectors(cfgw_t *w, const cJSON *arr)
{
    size_t m = cfgw_key(w, "detectors"), i = 0;
    unsigned seen = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, arr)
    {
        size_t mi = cfgw_idx(w, i++);
        int d;
        if (cfgw_v_enum(w, v, "detector", detectors, &d)) {
            if (seen & (1u << d))
                cfgw_err(w, "duplicate detector \"%s\"", detectors[d]);
            seen |= 1u << d;
        }
        cfgw_pop(w, mi);
    }
    cfgw_pop(w, m);
}

static void check_mask(cfgw_t *w, const cJSON *mask)
{
    if (!cfgw_object(w, mask, mask_keys))
        return;
    const char *col = NULL;
    const cJSON *dets = NULL;
    int rc_col = cfgw_str(w, mask, "column", 0, &col);
    int rc_det = cfgw_array(w, mask, "detectors", CFGW_NONEMPTY, &dets);
    if (rc_col > 0 && !column_ok(col))
        cfgw_err_at(w, "column", "must be \"schema.table.column\" (no wildcards)");
    if (rc_det > 0)
        check_detectors(w, dets);
    if (rc_col >= 0 && rc_det >= 0 && (rc_col > 0) == (rc_det > 0))
        cfgw_err(w, "exactly one of column or detectors is required");

    int method = -1;
    (void)cfgw_enum(w, mask, "method", CFGW_REQ, "method", methods, &method);
    int rc_first = cfgw_int(w, mask, "keep_first", 0, 0, 1000, NULL);
    int rc_last = cfgw_int(w, mask, "keep_last", 0, 0, 1000, NULL);
    int rc_val = cfgw_str(w, mask, "value", CFGW_EMPTY_OK, NULL);
    if (method >= 0 && method != M_PARTIAL) {
        if (rc_first > 0)
            cfgw_err_at(w, "keep_first", "only valid with method \"partial\"");
        if (rc_last > 0)
            cfgw_err_at(w, "keep_last", "only valid with method \"partial\"");
    }
    if (method == M_PARTIAL && rc_first == 0 && rc_last == 0)
        cfgw_err(w, "method \"partial\" needs keep_first or keep_last");
    if (method >= 0 && method != M_FIXED && rc_val > 0)
        cfgw_err_at(w, "value", "only valid with method \"fixed\"");
    if (method == M_FIXED && rc_val == 0)
        cfgw_err_at(w, "value", "required with method \"fixed\"");
    int rc_pred = cfgw_enum(w, mask, "in_predicates", 0, "value", allow_deny, NULL);
    if (rc_pred > 0 && rc_det > 0)
        cfgw_err_at(w, "in_predicates", "only valid with column masks");
}

static void check_masks(cfgw_t *w, const cJSON *role)
{
    const cJSON *arr;
    if (cfgw_array(w, role, "masks", 0, &arr) <= 0)
        return;
    size_t m = cfgw_key(w, "masks"), i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, arr)
    {
        size_t mi = cfgw_idx(w, i);
        check_mask(w, v);
        const cJSON *col = cfgw_get(v, "column");
        size_t k = 0;
        const cJSON *prev;
        cJSON_ArrayForEach(prev, arr)
        {
            if (k >= i || !cJSON_IsString(col))
                break;
            const cJSON *pcol = cfgw_get(prev, "column");
            if (cJSON_IsString(pcol) && !strcmp(pcol->valuestring, col->valuestring)) {
                char q[96];
                cfgw_err_at(w, "column", "duplicate mask for column %s (also masks[%zu])",
                            cfg_q(q, sizeof(q), col->valuestring), k);
                break;
            }
            k++;
        }
        cfgw_pop(w, mi);
        i++;
    }
    cfgw_pop(w, m);
}

/* ---- roles ---- */

static bool name_ok(const char *s)
{
    if (strlen(s) > CFG_MAX_NAME)
        return false;
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return false;
    return true;
}

typedef struct pctx {
    cfg_t *c;
    const char *dir;
    bool check_issuers, check_targets;
    cfg_refs_t *refs;
} pctx_t;

static cJSON *copy_or_empty(cfgw_t *w, const cJSON *role, const char *key)
{
    const cJSON *v = cfgw_get(role, key);
    cJSON *copy = cJSON_IsArray(v) ? cJSON_Duplicate(v, true) : cJSON_CreateArray();
    if (!copy)
        cfgw_err(w, "out of memory");
    return copy;
}

static void load_identities(cfgw_t *w, const cJSON *role, const pctx_t *P, cfg_role_t *r)
{
    const cJSON *arr;
    if (cfgw_array(w, role, "identities", CFGW_REQ | CFGW_NONEMPTY, &arr) <= 0)
        return;
    r->identities = calloc((size_t)cJSON_GetArraySize(arr), sizeof(*r->identities));
    if (!r->identities) {
        cfgw_err(w, "out of memory");
        return;
    }
    size_t m = cfgw_key(w, "identities");
    const cJSON *v;
    cJSON_ArrayForEach(v, arr)
    {
        size_t mi = cfgw_idx(w, r->n_identities);
        load_identity(w, v, P->c, P->check_issuers, &r->identities[r->n_identities++]);
        cfgw_pop(w, mi);
    }
    cfgw_pop(w, m);
}

static void load_role(cfgw_t *w, const cJSON *v, const pctx_t *P)
{
    cfg_role_t r = {0};
    if (!cfgw_object(w, v, role_keys))
        return;
    const char *s;
    char q[96];
    int d;
    if (cfgw_str(w, v, "role", CFGW_REQ, &s) > 0) {
        const cfg_role_t *prev = cfg_find_role(P->c, s);
        if (!name_ok(s))
            cfgw_err_at(w, "role", "must be 1-%d characters without control characters",
                        CFG_MAX_NAME);
        else if (prev)
            cfgw_err_at(w, "role", "duplicate role %s (first defined in %s)",
                        cfg_q(q, sizeof(q), s), prev->source_file);
        r.name = cfgw_strdup(w, s);
    }
    r.source_file = cfgw_strdup(w, w->file);
    if (cfgw_str(w, v, "description", CFGW_EMPTY_OK, &s) > 0)
        r.description = cfgw_strdup(w, s);
    load_identities(w, v, P, &r);
    load_upstreams(w, v, P->c, P->check_targets, P->dir, &r);
    if (cfgw_enum(w, v, "default", 0, "value", defaults, &d) > 0)
        r.default_action = (cfg_default_t)d;
    (void)cfgw_bool(w, v, "read_only", 0, &r.read_only);
    (void)cfgw_bool(w, v, "catalog_reads", 0, &r.catalog_reads);
    (void)cfgw_bool(w, v, "admin", 0, &r.admin);
    (void)cfgw_bool(w, v, "end_session_at_token_expiry", 0, &r.end_session_at_token_expiry);
    check_rules(w, v, P->refs);
    check_masks(w, v);
    r.rules = copy_or_empty(w, v, "rules");
    r.masks = copy_or_empty(w, v, "masks");

    cfg_role_t *grown = realloc(P->c->roles, (P->c->n_roles + 1) * sizeof(*grown));
    if (!grown) {
        cfgw_err(w, "out of memory");
        cfg_role_free(&r);
        return;
    }
    P->c->roles = grown;
    P->c->roles[P->c->n_roles++] = r;
}

size_t cfg_policy_load(cfg_t *c, cfg_errors_t *errs, const char *file, bool check_issuers,
                       bool check_targets, cfg_refs_t *refs)
{
    cfgw_t w;
    cfgw_init(&w, errs, file);
    cJSON *root = cfgw_load_json(&w, file);
    char *dir = cfg_dirname(file);
    pctx_t P = {c, dir ? dir : "", check_issuers, check_targets, refs};
    if (!root) {
        /* reported */
    } else if (cJSON_IsObject(root)) {
        load_role(&w, root, &P);
    } else if (cJSON_IsArray(root) && root->child) {
        size_t i = 0;
        const cJSON *v;
        cJSON_ArrayForEach(v, root)
        {
            size_t m = cfgw_idx(&w, i++);
            load_role(&w, v, &P);
            cfgw_pop(&w, m);
        }
    } else {
        cfgw_err(&w, "must be a role object or a non-empty array of roles");
    }
    cJSON_Delete(root);
    free(dir);
    return w.n_err;
}
