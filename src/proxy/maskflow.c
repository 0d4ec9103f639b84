/*
 * maskflow — masking in the data path. The contract is maskflow.h; this file
 * keeps three things in step:
 *
 *   plans      per allowed statement (lineage over libpg_query's tree, cached
 *              per session by text, search_path and catalog generation), then
 *              remembered by name: prepared statements (protocol Parse and SQL
 *              PREPARE share PostgreSQL's namespace), SQL cursors (DECLARE;
 *              also executable as protocol portals), portals (Bind).
 *   the FIFO   one item per reply the server owes, in request order: each
 *              statement of a Query, each Describe, each Execute, each sync
 *              point (Query, Sync, a sentinel Query), and the gateway's own
 *              catalog read. PG docs 55.2.3: after an ErrorResponse the server
 *              skips to Sync, so an error drops the items up to the next sync
 *              point; ReadyForQuery pops up to and including it.
 *   rewriting  a RowDescription is bound to the plan of the FIFO's head
 *              (mask_desc_t), whose DataRows, COPY data and errors are then
 *              rewritten one whole message at a time.
 *
 * Whatever cannot be matched to a plan is masked whole (mask_plan_unknown), and
 * a row that arrives without any description, or is larger than
 * masking.max_row_bytes, ends the session: never pass data unmasked.
 */
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pg_query.h>

#include "proxy/internal.h"
#include "proxy/maskflow.h"
#include "util/log.h"

#define MF_MAX_ITEMS 100000
#define MF_MAX_NAMED 10000 /* prepared statements, cursors, portals (each) */
#define MF_CACHE 64        /* plan cache entries per session */
#define MF_BUCKETS 64

typedef struct portal {
    int refs;
    char *name;
    mask_plan_t *plan;
    mask_desc_t *desc; /* from the Describe of this portal (the real formats) */
    bool nodata;       /* its Describe said NoData */
    bool described;    /* c2u: a Describe of it went upstream since its Bind */
} portal_t;

typedef struct named {
    struct named *next;
    char *name;
    mask_plan_t *plan; /* prepared, cursor */
    portal_t *portal;  /* portals */
} named_t;

typedef struct registry {
    named_t *b[MF_BUCKETS];
    size_t n;
} registry_t;

typedef enum {
    IT_SYNC,        /* Query or Sync: ends at ReadyForQuery */
    IT_RESULT,      /* one statement of a Query */
    IT_EXECUTE,     /* an Execute of a portal */
    IT_DESC_STMT,   /* Describe of a statement: ParameterDescription, then T or NoData */
    IT_DESC_PORTAL, /* Describe of a portal: T or NoData */
    IT_CATALOG,     /* the gateway's catalog read (a Query, swallowed) */
    IT_ROLLBACK,    /* ... and its ROLLBACK when it did not end idle */
} it_kind_t;

typedef struct item {
    struct item *next;
    it_kind_t kind;
    bool swallow;      /* the gateway's own Describe */
    mask_plan_t *plan; /* RESULT, DESC_STMT */
    portal_t *portal;  /* EXECUTE, DESC_PORTAL */
    mask_desc_t *desc; /* RESULT: bound at its RowDescription */
    mask_copy_t *copy; /* RESULT, EXECUTE: COPY TO STDOUT in progress */
} item_t;

typedef struct pcache {
    char *key; /* sql \x01 search_path candidates */
    size_t keylen;
    uint64_t gen;
    mask_plan_t **plans;
    size_t n;
} pcache_t;

struct maskflow {
    session_t *s;
    mask_rules_t *rules;
    mask_scratch_t *scratch;
    /* catalog */
    catalog_t *cat, *loading;
    bool dirty;      /* DDL passed since the last read: relations count as unknown */
    bool loaded;     /* read at least once */
    bool waiting;    /* a read is in flight: the client's input waits */
    bool load_error; /* the read in flight failed */
    bool resume;     /* the read ended: relay the client's input again */
    double loaded_at;
    uint64_t gen; /* catalog generation (plans cached under it) */
    /* the FIFO */
    item_t *head, *tail;
    size_t nitems;
    bool ext_open; /* extended-protocol messages since the last Sync */
    /* names */
    registry_t prepared, cursors, portals;
    /* plans of the Query being decided, until it goes upstream */
    mask_plan_t **stash;
    size_t nstash;
    pcache_t cache[MF_CACHE];
    buf_t out;
};

/* ---- rules per runtime ---------------------------------------------------------- */

mask_rules_t **maskflow_rules_new(const cfg_t *cfg, char *err, size_t errsz)
{
    mask_rules_t **v = calloc(cfg->n_roles + 1, sizeof(*v));
    if (!v) {
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < cfg->n_roles; i++) {
        char why[256] = "";
        v[i] = mask_rules_compile(cfg->roles[i].masks, cfg->masking.hash_key,
                                  cfg->masking.hash_key_len, why, sizeof(why));
        if (!v[i]) {
            snprintf(err, errsz, "role \"%s\": masks: %s", cfg->roles[i].name, why);
            maskflow_rules_free(v, i);
            return NULL;
        }
    }
    return v;
}

void maskflow_rules_free(mask_rules_t **rules, size_t n)
{
    if (!rules)
        return;
    for (size_t i = 0; i < n; i++)
        mask_rules_release(rules[i]);
    free(rules);
}

/* ---- registries ------------------------------------------------------------------ */

static void portal_release(portal_t *p)
{
    if (!p || --p->refs > 0)
        return;
    free(p->name);
    mask_plan_release(p->plan);
    mask_desc_free(p->desc);
    free(p);
}

static named_t **reg_slot(registry_t *r, const char *name)
{
    uint32_t h = 2166136261u;
    for (const char *c = name; *c; c++)
        h = (h ^ (uint8_t)*c) * 16777619u;
    named_t **p = &r->b[h % MF_BUCKETS];
    while (*p && strcmp((*p)->name, name))
        p = &(*p)->next;
    return p;
}

static void named_free(named_t *n)
{
    free(n->name);
    mask_plan_release(n->plan);
    portal_release(n->portal);
    free(n);
}

static void reg_drop(registry_t *r, const char *name)
{
    named_t **p = reg_slot(r, name);
    if (!*p)
        return;
    named_t *n = *p;
    *p = n->next;
    named_free(n);
    r->n--;
}

static void reg_clear(registry_t *r)
{
    for (size_t i = 0; i < MF_BUCKETS; i++)
        for (named_t *n = r->b[i], *next; n; n = next) {
            next = n->next;
            named_free(n);
        }
    memset(r, 0, sizeof(*r));
}

/* Takes ownership of plan / portal (released on failure). */
static int reg_put(registry_t *r, const char *name, mask_plan_t *plan, portal_t *portal)
{
    reg_drop(r, name);
    named_t *n = r->n < MF_MAX_NAMED ? calloc(1, sizeof(*n)) : NULL;
    if (!n || !(n->name = strdup(name))) {
        free(n);
        mask_plan_release(plan);
        portal_release(portal);
        return -1;
    }
    n->plan = plan;
    n->portal = portal;
    named_t **slot = reg_slot(r, name);
    n->next = *slot;
    *slot = n;
    r->n++;
    return 0;
}

static named_t *reg_get(registry_t *r, const char *name)
{
    return *reg_slot(r, name);
}

/* ---- lifecycle ----------------------------------------------------------------------- */

static mask_rules_t *role_rules(const session_t *s)
{
    const runtime_t *rt = s->rt;
    size_t i = (size_t)(s->role - rt->cfg->roles);
    return rt->mask_rules && i < rt->cfg->n_roles ? rt->mask_rules[i] : NULL;
}

maskflow_t *maskflow_new(session_t *s, bool *oom)
{
    *oom = false;
    mask_rules_t *r = role_rules(s);
    if (!r || !mask_rules_active(r))
        return NULL;
    maskflow_t *mf = calloc(1, sizeof(*mf));
    if (mf && !s->srv->mask_scratch)
        s->srv->mask_scratch = mask_scratch_new();
    if (!mf || !s->srv->mask_scratch) {
        free(mf);
        *oom = true;
        return NULL;
    }
    mf->s = s;
    mf->rules = mask_rules_retain(r);
    mf->scratch = s->srv->mask_scratch;
    buf_init(&mf->out, 0);
    return mf;
}

static void item_free(item_t *it)
{
    mask_plan_release(it->plan);
    portal_release(it->portal);
    mask_desc_free(it->desc);
    mask_copy_free(it->copy);
    free(it);
}

static void stash_clear(maskflow_t *mf)
{
    for (size_t i = 0; i < mf->nstash; i++)
        mask_plan_release(mf->stash[i]);
    free(mf->stash);
    mf->stash = NULL;
    mf->nstash = 0;
}

static void cache_entry_clear(pcache_t *e)
{
    free(e->key);
    for (size_t i = 0; i < e->n; i++)
        mask_plan_release(e->plans[i]);
    free(e->plans);
    memset(e, 0, sizeof(*e));
}

void maskflow_free(maskflow_t *mf)
{
    if (!mf)
        return;
    for (item_t *it = mf->head, *n; it; it = n) {
        n = it->next;
        item_free(it);
    }
    reg_clear(&mf->prepared);
    reg_clear(&mf->cursors);
    reg_clear(&mf->portals);
    stash_clear(mf);
    for (size_t i = 0; i < MF_CACHE; i++)
        cache_entry_clear(&mf->cache[i]);
    catalog_free(mf->cat);
    catalog_free(mf->loading);
    mask_rules_release(mf->rules);
    buf_free(&mf->out);
    free(mf);
}

size_t maskflow_max_message(const session_t *s)
{
    return (size_t)s->rt->cfg->masking.max_row_bytes;
}

/* ---- the FIFO ---------------------------------------------------------------------- */

static item_t *push(maskflow_t *mf, it_kind_t kind)
{
    if (mf->nitems >= MF_MAX_ITEMS)
        return NULL;
    item_t *it = calloc(1, sizeof(*it));
    if (!it)
        return NULL;
    it->kind = kind;
    if (mf->tail)
        mf->tail->next = it;
    else
        mf->head = it;
    mf->tail = it;
    mf->nitems++;
    return it;
}

static void pop(maskflow_t *mf)
{
    item_t *it = mf->head;
    if (!it)
        return;
    mf->head = it->next;
    if (!mf->head)
        mf->tail = NULL;
    mf->nitems--;
    item_free(it);
}

static bool is_sync(const item_t *it)
{
    return it->kind == IT_SYNC || it->kind == IT_CATALOG || it->kind == IT_ROLLBACK;
}

/* An error: the server skips to the next sync point. */
static void pop_to_sync(maskflow_t *mf)
{
    while (mf->head && !is_sync(mf->head))
        pop(mf);
}

/* ---- catalog reads ---------------------------------------------------------------- */

static bool catalog_due(const maskflow_t *mf)
{
    if (!mf->loaded || mf->dirty)
        return true;
    double age_ms = (ev_now(mf->s->srv->loop) - mf->loaded_at) * 1000.0;
    return age_ms > (double)mf->s->rt->cfg->masking.catalog_refresh_ms;
}

/* No transaction, nothing in flight, not inside an extended-protocol group:
 * a Query of our own fits in here without anyone noticing. */
static bool upstream_idle(const maskflow_t *mf)
{
    const session_t *s = mf->s;
    return !mf->head && !mf->ext_open && s->tx_status == 'I' && !s->holding && s->c2u_left == 0;
}

static bool start_catalog_read(maskflow_t *mf)
{
    catalog_free(mf->loading);
    mf->loading = catalog_new();
    if (!mf->loading || !push(mf, IT_CATALOG))
        return false;
    mf->load_error = false;
    mf->waiting = true;
    pgw_write_query(&mf->s->upstream.out, catalog_query);
    return true;
}

bool maskflow_c2u_ready(session_t *s, char type, size_t avail, size_t total)
{
    maskflow_t *mf = s->mf;
    if (mf->waiting)
        return false;
    if (type == 'D' && avail < total)
        return false;
    if ((type == 'Q' || type == 'P') && catalog_due(mf) && upstream_idle(mf)) {
        if (start_catalog_read(mf))
            return false;
        /* out of memory: go on with what we have; relations stay as they were */
    }
    return true;
}

static void catalog_done(maskflow_t *mf, bool ok)
{
    mf->waiting = false;
    mf->resume = true;
    mf->loaded_at = ev_now(mf->s->srv->loop);
    mf->gen++;
    if (ok) {
        catalog_free(mf->cat);
        mf->cat = mf->loading;
        mf->loading = NULL;
        mf->loaded = true;
        mf->dirty = false;
        log_event(LOG_INFO, "mask_catalog", "session=%s relations=%zu", mf->s->id,
                  catalog_size(mf->cat));
        return;
    }
    /* Without a catalog every relation is unknown: masked whole. Tried again
     * after catalog_refresh. */
    catalog_free(mf->loading);
    mf->loading = NULL;
    catalog_free(mf->cat);
    mf->cat = NULL;
    mf->loaded = true;
    mf->dirty = false;
    log_event(LOG_WARN, "mask_catalog_failed",
              "session=%s role=%s detail=\"the catalog could not be read; every relation is "
              "masked whole until the next read\"",
              mf->s->id, mf->s->role_name);
}

static mf_verdict_t catalog_message(maskflow_t *mf, char type, const uint8_t *body, size_t len)
{
    item_t *it = mf->head;
    switch (type) {
    case 'D':
        if (it->kind == IT_CATALOG && !mf->load_error &&
            catalog_add_row(mf->loading, body, len) < 0)
            mf->load_error = true;
        break;
    case 'E':
        mf->load_error = true;
        break;
    case 'Z': {
        char status = 'I';
        if (pgw_read_ready(body, len, &status) < 0)
            status = 'E';
        bool catalog = it->kind == IT_CATALOG;
        pop(mf);
        if (status != 'I') { /* an error left our transaction open */
            mf->load_error = true;
            if (!push(mf, IT_ROLLBACK))
                return MF_FAIL;
            pgw_write_query(&mf->s->upstream.out, "ROLLBACK");
            break;
        }
        (void)catalog;
        catalog_done(mf, !mf->load_error);
        break;
    }
    default:
        break;
    }
    return MF_SWALLOW;
}

bool maskflow_resume_pending(session_t *s)
{
    if (!s->mf || !s->mf->resume)
        return false;
    s->mf->resume = false;
    return true;
}

/* ---- planning ---------------------------------------------------------------------- */

/* The search_path candidates as NULL-terminated arrays, "$user" expanded. */
typedef struct paths {
    char **v[8];
    size_t n;
    char key[1024];
} paths_t;

static void paths_free(paths_t *p)
{
    for (size_t i = 0; i < p->n; i++)
        free(p->v[i]);
}

static int paths_get(policy_session_t *ps, paths_t *p)
{
    memset(p, 0, sizeof(*p));
    size_t np = policy_session_npaths(ps), k = 0;
    const char *user = policy_session_user(ps);
    for (size_t i = 0; i < np && i < 8; i++) {
        size_t n;
        const char *const *s = policy_session_path(ps, i, &n);
        char **v = calloc(n + 1, sizeof(char *));
        if (!v) {
            paths_free(p);
            return -1;
        }
        for (size_t j = 0; j < n; j++) {
            v[j] = (char *)(strcmp(s[j], "$user") ? s[j] : user);
            k += (size_t)snprintf(p->key + (k < sizeof(p->key) ? k : sizeof(p->key)),
                                  k < sizeof(p->key) ? sizeof(p->key) - k : 0, "%s,", v[j]);
        }
        k += (size_t)snprintf(p->key + (k < sizeof(p->key) ? k : sizeof(p->key)),
                              k < sizeof(p->key) ? sizeof(p->key) - k : 0, ";");
        p->v[p->n++] = v;
    }
    if (k >= sizeof(p->key))
        p->key[0] = '\0'; /* too long to cache by */
    return 0;
}

static bool same_shape(const mask_plan_t *a, const mask_plan_t *b)
{
    if (mask_plan_kind(a) != mask_plan_kind(b) || mask_plan_ncols(a) != mask_plan_ncols(b) ||
        mask_plan_touches_masked(a) != mask_plan_touches_masked(b))
        return false;
    for (size_t i = 0; i < mask_plan_ncols(a); i++)
        if (mask_plan_col_method(a, i) != mask_plan_col_method(b, i))
            return false;
    return true;
}

/* Plans every statement of sql under each search_path candidate. Where the
 * candidates disagree, the plan masks every column (denials of any count). */
static int plan_all(maskflow_t *mf, const char *sql, const paths_t *P, mask_plan_t ***out,
                    size_t *nout)
{
    *out = NULL;
    *nout = 0;
    PgQueryParseResult pr = pg_query_parse(sql);
    if (pr.error) {
        pg_query_free_parse_result(pr);
        return 1; /* the policy has refused it already; refuse again */
    }
    cJSON *root = cJSON_Parse(pr.parse_tree);
    pg_query_free_parse_result(pr);
    if (!root)
        return -1;
    const cJSON *stmts = cJSON_GetObjectItemCaseSensitive(root, "stmts");
    size_t n = cJSON_IsArray(stmts) ? (size_t)cJSON_GetArraySize(stmts) : 0;
    mask_plan_t **plans = calloc(n ? n : 1, sizeof(*plans));
    int rc = plans ? 0 : -1;
    catalog_view_t view = {mf->cat, mf->dirty};
    for (size_t i = 0; rc == 0 && i < n; i++) {
        const cJSON *st = cJSON_GetArrayItem(stmts, (int)i);
        for (size_t k = 0; rc == 0 && k < P->n; k++) {
            mask_plan_t *p;
            if (mask_plan_statement(mf->rules, st, catalog_resolve, &view,
                                    (const char *const *)P->v[k], &p) < 0) {
                rc = -1;
                break;
            }
            if (!plans[i]) {
                plans[i] = p;
                continue;
            }
            char m1[8], m2[8];
            bool d1 = mask_plan_denied(plans[i], m1, sizeof(m1));
            bool d2 = mask_plan_denied(p, m2, sizeof(m2));
            if (d2 && !d1) {
                mask_plan_release(plans[i]);
                plans[i] = p;
            } else if (!d1 && !same_shape(plans[i], p)) {
                mask_plan_t *u = mask_plan_unknown(mf->rules);
                mask_plan_release(p);
                if (!u) {
                    rc = -1;
                    break;
                }
                mask_plan_release(plans[i]);
                plans[i] = u;
            } else {
                mask_plan_release(p);
            }
        }
        if (rc == 0 && !plans[i])
            rc = -1; /* no search_path at all */
    }
    cJSON_Delete(root);
    if (rc != 0) {
        for (size_t i = 0; plans && i < n; i++)
            mask_plan_release(plans[i]);
        free(plans);
        return rc;
    }
    *out = plans;
    *nout = n;
    return 0;
}

static uint32_t hash_bytes(const char *p, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)p[i]) * 16777619u;
    return h;
}

/* Cached by text and search_path under the catalog generation; the plans
 * returned are retained for the caller. */
static int plan_cached(maskflow_t *mf, const char *sql, size_t len, const paths_t *P,
                       mask_plan_t ***out, size_t *nout)
{
    size_t klen = len + 1 + strlen(P->key);
    bool cacheable = P->key[0] && klen <= 64 * 1024 && !mf->dirty;
    char *key = cacheable ? malloc(klen) : NULL;
    pcache_t *e = NULL;
    if (key) {
        memcpy(key, sql, len);
        key[len] = '\x01';
        memcpy(key + len + 1, P->key, klen - len - 1);
        e = &mf->cache[hash_bytes(key, klen) % MF_CACHE];
        if (e->key && e->gen == mf->gen && e->keylen == klen && !memcmp(e->key, key, klen)) {
            free(key);
            *out = calloc(e->n ? e->n : 1, sizeof(mask_plan_t *));
            if (!*out)
                return -1;
            for (size_t i = 0; i < e->n; i++)
                (*out)[i] = mask_plan_retain(e->plans[i]);
            *nout = e->n;
            return 0;
        }
    }
    int rc = plan_all(mf, sql, P, out, nout);
    if (rc == 0 && e) {
        cache_entry_clear(e);
        e->plans = calloc(*nout ? *nout : 1, sizeof(mask_plan_t *));
        if (e->plans) {
            e->key = key;
            key = NULL;
            e->keylen = klen;
            e->gen = mf->gen;
            e->n = *nout;
            for (size_t i = 0; i < *nout; i++)
                e->plans[i] = mask_plan_retain((*out)[i]);
        }
    }
    free(key);
    return rc;
}

/* FETCH and EXECUTE stand for the plan remembered under their name; the
 * statement's own plan masks everything. Returns a retained plan. */
static mask_plan_t *substitute(maskflow_t *mf, mask_plan_t *p)
{
    mask_stmt_kind_t k = mask_plan_kind(p);
    const char *name = mask_plan_name(p);
    if ((k != MASK_STMT_FETCH && k != MASK_STMT_EXECUTE) || !name)
        return mask_plan_retain(p);
    named_t *n = reg_get(k == MASK_STMT_FETCH ? &mf->cursors : &mf->prepared, name);
    return mask_plan_retain(n && n->plan ? n->plan : p);
}

static bool may_change_catalog(const policy_result_t *r)
{
    for (size_t i = 0; i < r->n_stmts; i++)
        for (size_t j = 0; j < r->stmts[i].n_accesses; j++) {
            policy_op_t op = r->stmts[i].accesses[j].op;
            if (op == POLICY_OP_DDL || op == POLICY_OP_DO || op == POLICY_OP_FUNCTION ||
                op == POLICY_OP_UNKNOWN)
                return true;
        }
    return false;
}

/* Remember what a statement defines for later statements: cursors, prepared. */
static int remember(maskflow_t *mf, mask_plan_t *p)
{
    const char *name = mask_plan_name(p);
    if (!name)
        return 0;
    if (mask_plan_kind(p) == MASK_STMT_CURSOR)
        return reg_put(&mf->cursors, name, mask_plan_retain(p), NULL);
    if (mask_plan_kind(p) == MASK_STMT_PREPARE)
        return reg_put(&mf->prepared, name, mask_plan_retain(p), NULL);
    return 0;
}

int maskflow_plan(session_t *s, policy_session_t *ps, char kind, const char *stmt,
                  const char *sql, size_t len, const policy_result_t *r, char *msg, size_t msgsz)
{
    maskflow_t *mf = s->mf;
    paths_t P;
    if (paths_get(ps, &P) < 0)
        return -1;
    mask_plan_t **plans;
    size_t n;
    int rc = plan_cached(mf, sql, len, &P, &plans, &n);
    paths_free(&P);
    if (rc < 0)
        return -1;
    if (rc > 0) {
        snprintf(msg, msgsz, "bulwark: the statement cannot be checked for masked columns");
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        mask_plan_t *sub = substitute(mf, plans[i]);
        mask_plan_release(plans[i]);
        plans[i] = sub;
    }
    for (size_t i = 0; i < n; i++) {
        char why[400];
        if (mask_plan_denied(plans[i], why, sizeof(why))) {
            snprintf(msg, msgsz, "bulwark: %s (role %s)", why, s->role_name);
            rc = 1;
            break;
        }
    }
    for (size_t i = 0; rc == 0 && i < n; i++)
        if (remember(mf, plans[i]) < 0)
            rc = -1;
    if (rc == 0 && kind == 'P') {
        mask_plan_t *p = n ? mask_plan_retain(plans[0]) : NULL;
        if (!p && !(p = mask_plan_unknown(mf->rules)))
            rc = -1;
        else if (reg_put(&mf->prepared, stmt, p, NULL) < 0)
            rc = -1;
    }
    if (rc == 0 && kind == 'Q') {
        stash_clear(mf);
        mf->stash = plans;
        mf->nstash = n;
        plans = NULL;
    }
    if (plans) {
        for (size_t i = 0; i < n; i++)
            mask_plan_release(plans[i]);
        free(plans);
    }
    if (rc == 0 && may_change_catalog(r))
        mf->dirty = true;
    return rc;
}

void maskflow_parse_refused(session_t *s, const char *stmt)
{
    reg_drop(&s->mf->prepared, stmt);
}

void maskflow_sentinel(session_t *s, char kind)
{
    maskflow_t *mf = s->mf;
    if (kind == 'Q' && !push(mf, IT_SYNC))
        mf->ext_open = true; /* cannot fail open: the next E pops; stay conservative */
}

/* ---- c2u ---------------------------------------------------------------------------- */

static portal_t *portal_new(const char *name, mask_plan_t *plan)
{
    portal_t *p = calloc(1, sizeof(*p));
    if (!p || !(p->name = strdup(name))) {
        free(p);
        mask_plan_release(plan);
        return NULL;
    }
    p->refs = 1;
    p->plan = plan;
    return p;
}

/* The portal of that name; one the client did not Bind through us is a SQL
 * cursor (DECLARE), or unknown (masked whole). The registry owns it. */
static portal_t *portal_find(maskflow_t *mf, const char *name)
{
    named_t *n = reg_get(&mf->portals, name);
    if (n)
        return n->portal;
    named_t *c = reg_get(&mf->cursors, name);
    mask_plan_t *plan = c ? mask_plan_retain(c->plan) : mask_plan_unknown(mf->rules);
    portal_t *p = plan ? portal_new(name, plan) : NULL;
    if (!p || reg_put(&mf->portals, name, NULL, p) < 0)
        return NULL;
    return p;
}

static int c2u_query(maskflow_t *mf)
{
    for (size_t i = 0; i < mf->nstash; i++) {
        item_t *it = push(mf, IT_RESULT);
        if (!it)
            return -1;
        it->plan = mf->stash[i];
        mf->stash[i] = NULL;
    }
    if (mf->nstash == 0 && !push(mf, IT_RESULT)) /* EmptyQueryResponse */
        return -1;
    stash_clear(mf);
    mf->ext_open = false;
    return push(mf, IT_SYNC) ? 0 : -1;
}

static int c2u_bind(maskflow_t *mf, const uint8_t *body, size_t avail)
{
    const char *portal = (const char *)body;
    size_t pl = strnlen(portal, avail);
    if (pl == avail)
        return -1;
    const char *stmt = portal + pl + 1;
    if (strnlen(stmt, avail - pl - 1) == avail - pl - 1)
        return -1;
    named_t *st = reg_get(&mf->prepared, stmt);
    mask_plan_t *plan = st ? mask_plan_retain(st->plan) : mask_plan_unknown(mf->rules);
    portal_t *p = plan ? portal_new(portal, plan) : NULL;
    if (!p)
        return -1;
    return reg_put(&mf->portals, portal, NULL, p);
}

static int c2u_describe(maskflow_t *mf, const uint8_t *body, size_t len)
{
    if (len < 2 || body[len - 1] != '\0')
        return -1;
    const char *name = (const char *)body + 1;
    if (body[0] == 'S') {
        item_t *it = push(mf, IT_DESC_STMT);
        if (!it)
            return -1;
        named_t *st = reg_get(&mf->prepared, name);
        it->plan = st ? mask_plan_retain(st->plan) : mask_plan_unknown(mf->rules);
        return it->plan ? 0 : -1;
    }
    portal_t *p = portal_find(mf, name);
    item_t *it = p ? push(mf, IT_DESC_PORTAL) : NULL;
    if (!it)
        return -1;
    p->described = true;
    p->refs++;
    it->portal = p;
    return 0;
}

/* DESIGN 2.4: an Execute whose portal's shape is unknown gets our Describe first. */
static int c2u_execute(maskflow_t *mf, const uint8_t *body, size_t len)
{
    const char *name = (const char *)body;
    if (strnlen(name, len) == len)
        return -1;
    portal_t *p = portal_find(mf, name);
    if (!p)
        return -1;
    if (!p->described) {
        item_t *d = push(mf, IT_DESC_PORTAL);
        if (!d)
            return -1;
        d->swallow = true;
        d->portal = p;
        p->refs++;
        p->described = true;
        pgw_write_describe(&mf->s->upstream.out, 'P', name);
    }
    item_t *it = push(mf, IT_EXECUTE);
    if (!it)
        return -1;
    it->portal = p;
    p->refs++;
    return 0;
}

static int c2u_close(maskflow_t *mf, const uint8_t *body, size_t len)
{
    if (len < 2 || body[len - 1] != '\0')
        return -1;
    reg_drop(body[0] == 'S' ? &mf->prepared : &mf->portals, (const char *)body + 1);
    return 0;
}

int maskflow_c2u(session_t *s, char type, const uint8_t *body, size_t avail)
{
    maskflow_t *mf = s->mf;
    switch (type) {
    case 'Q':
        return c2u_query(mf);
    case 'P':
        mf->ext_open = true;
        return 0;
    case 'B':
        mf->ext_open = true;
        return c2u_bind(mf, body, avail);
    case 'D':
        mf->ext_open = true;
        return c2u_describe(mf, body, avail);
    case 'E':
        mf->ext_open = true;
        return c2u_execute(mf, body, avail);
    case 'C':
        mf->ext_open = true;
        return c2u_close(mf, body, avail);
    case 'S':
        mf->ext_open = false;
        return push(mf, IT_SYNC) ? 0 : -1;
    default:
        return 0;
    }
}

/* ---- u2c ---------------------------------------------------------------------------- */

static mask_desc_t *current_desc(const maskflow_t *mf)
{
    const item_t *it = mf->head;
    if (!it)
        return NULL;
    if (it->kind == IT_RESULT)
        return it->desc;
    if (it->kind == IT_EXECUTE)
        return it->portal->desc;
    return NULL;
}

static const mask_plan_t *current_plan(const maskflow_t *mf)
{
    const item_t *it = mf->head;
    if (!it)
        return NULL;
    if (it->kind == IT_RESULT || it->kind == IT_DESC_STMT)
        return it->plan;
    if (it->kind == IT_EXECUTE || it->kind == IT_DESC_PORTAL)
        return it->portal->plan;
    return NULL;
}

bool maskflow_u2c_whole(const session_t *s, char type)
{
    const maskflow_t *mf = s->mf;
    if (mf->head && (mf->head->kind == IT_CATALOG || mf->head->kind == IT_ROLLBACK))
        return true;
    switch (type) {
    case 'D': {
        const mask_desc_t *d = current_desc(mf);
        return !d || mask_desc_active(d);
    }
    case 'd':
        return true;
    case 'T':
    case 't':
    case 'n':
    case 'C':
    case 'I':
    case 's':
    case 'E':
    case 'N':
    case 'A':
    case 'Z':
    case 'H':
    case 'G':
    case 'c':
        return true;
    default:
        return false;
    }
}

static void fail(session_t *s, const char *sqlstate, const char *msg)
{
    log_event(LOG_WARN, "mask_fail_closed", "session=%s role=%s reason=\"%s\"", s->id,
              s->role_name, msg);
    session_fail(s, "FATAL", sqlstate, "%s", msg);
}

/* A RowDescription naming a table the catalog does not know (created since
 * the last read, or by another session) cannot be trusted to the plan. */
static bool rowdesc_known(const maskflow_t *mf, const uint8_t *body, size_t len)
{
    pgw_row_description_t rd;
    if (pgw_read_row_description(body, len, &rd) < 0)
        return false;
    pgw_column_t col;
    pgw_iter_t it = rd.fields;
    while (pgw_column_next(&it, &col) == 1)
        if (!catalog_knows_oid(mf->cat, col.table_oid) || (col.table_oid && mf->dirty))
            return false;
    return true;
}

static mf_verdict_t on_rowdesc(maskflow_t *mf, const uint8_t *body, size_t len,
                               const uint8_t **rep, size_t *replen)
{
    item_t *it = mf->head;
    const mask_plan_t *plan = current_plan(mf);
    mask_plan_t *unknown = NULL;
    bool known = rowdesc_known(mf, body, len);
    if (!plan || !known) {
        if (!known)
            mf->dirty = true; /* read the catalog again at the next idle point */
        if (!(unknown = mask_plan_unknown(mf->rules)))
            return MF_FAIL;
        plan = unknown;
    }
    catalog_view_t view = {mf->cat, mf->dirty};
    mask_desc_t *d;
    int rc = mask_desc_new(plan, body, len, NULL, catalog_attname, &view, &d);
    mask_plan_release(unknown);
    if (rc < 0)
        return MF_FAIL;
    buf_reset(&mf->out);
    rc = mask_rewrite_rowdesc(d, body, len, &mf->out);
    if (rc < 0 || mf->out.failed) {
        mask_desc_free(d);
        return MF_FAIL;
    }
    bool swallow = false;
    if (it && it->kind == IT_RESULT) {
        mask_desc_free(it->desc);
        it->desc = d;
    } else if (it && it->kind == IT_DESC_PORTAL) {
        mask_desc_free(it->portal->desc);
        it->portal->desc = d;
        it->portal->nodata = false;
        swallow = it->swallow;
        pop(mf);
    } else {
        mask_desc_free(d); /* a statement's Describe: only the client keeps it */
        if (it && it->kind == IT_DESC_STMT)
            pop(mf);
    }
    *rep = rc == 1 ? mf->out.data : NULL;
    *replen = rc == 1 ? mf->out.len : 0;
    if (swallow)
        return MF_OBSERVE;
    return rc == 1 ? MF_REPLACED : MF_PASS;
}

static mf_verdict_t on_nodata(maskflow_t *mf)
{
    item_t *it = mf->head;
    bool swallow = false;
    if (it && it->kind == IT_DESC_PORTAL) {
        mask_desc_free(it->portal->desc);
        it->portal->desc = NULL;
        it->portal->nodata = true;
        swallow = it->swallow;
        pop(mf);
    } else if (it && it->kind == IT_DESC_STMT) {
        pop(mf);
    }
    return swallow ? MF_SWALLOW : MF_PASS;
}

static mf_verdict_t on_datarow(maskflow_t *mf, const uint8_t *body, size_t len,
                               const uint8_t **rep, size_t *replen)
{
    mask_desc_t *d = current_desc(mf);
    if (!d) {
        fail(mf->s, "XX000",
             "bulwark: a result row arrived without its description; the session is closed "
             "rather than send it unmasked");
        return MF_FAIL;
    }
    buf_reset(&mf->out);
    int rc = mask_rewrite_datarow(d, mf->scratch, body, len, &mf->out);
    if (rc < 0 || mf->out.failed) {
        fail(mf->s, "XX000", "bulwark: a result row could not be masked; the session is closed");
        return MF_FAIL;
    }
    *rep = mf->out.data;
    *replen = mf->out.len;
    return rc == 1 ? MF_REPLACED : MF_PASS;
}

static void log_summary(maskflow_t *mf, const mask_desc_t *d)
{
    if (!d || !mask_desc_active(d))
        return;
    buf_t b;
    buf_init(&b, 64 * 1024);
    mask_desc_summary(d, &b);
    buf_put_u8(&b, 0);
    if (!b.failed && (strstr((const char *)b.data, "masked.") ||
                      strstr((const char *)b.data, "detected.")))
        log_event(LOG_INFO, "masked", "session=%s role=%s %s", mf->s->id, mf->s->role_name,
                  (const char *)b.data);
    buf_free(&b);
}

/* CommandComplete, EmptyQueryResponse, PortalSuspended: the head is done. */
static void on_done(maskflow_t *mf, char type)
{
    item_t *it = mf->head;
    if (!it || (it->kind != IT_RESULT && it->kind != IT_EXECUTE))
        return;
    if (type == 's' && it->kind != IT_EXECUTE)
        return;
    log_summary(mf, current_desc(mf));
    pop(mf);
}

static mf_verdict_t on_error(maskflow_t *mf, char type, const uint8_t *body, size_t len,
                             const uint8_t **rep, size_t *replen)
{
    const mask_plan_t *p = current_plan(mf);
    bool strict = p ? mask_plan_touches_masked(p) : false;
    buf_reset(&mf->out);
    int rc = mask_rewrite_error(mf->rules, mf->scratch, type, strict, body, len, &mf->out);
    if (type == 'E')
        pop_to_sync(mf);
    if (rc < 0 || mf->out.failed) {
        fail(mf->s, "XX000", "bulwark: a server message could not be masked; the session is closed");
        return MF_FAIL;
    }
    *rep = mf->out.data;
    *replen = mf->out.len;
    return rc == 1 ? MF_REPLACED : MF_PASS;
}

static mf_verdict_t on_copy_out(maskflow_t *mf, const uint8_t *body, size_t len)
{
    item_t *it = mf->head;
    const mask_plan_t *p = current_plan(mf);
    char err[300] = "";
    mask_copy_t *c = NULL;
    if (!it || (it->kind != IT_RESULT && it->kind != IT_EXECUTE) || !p ||
        mask_copy_new(p, body, len, &c, err, sizeof(err)) < 0) {
        char msg[400];
        snprintf(msg, sizeof(msg), "bulwark: COPY output cannot be masked: %s",
                 err[0] ? err : "no plan for it");
        fail(mf->s, "0A000", msg);
        return MF_FAIL;
    }
    mask_copy_free(it->copy);
    it->copy = c;
    return MF_PASS;
}

static mask_copy_t *current_copy(const maskflow_t *mf)
{
    const item_t *it = mf->head;
    return it && (it->kind == IT_RESULT || it->kind == IT_EXECUTE) ? it->copy : NULL;
}

static mf_verdict_t on_copy_data(maskflow_t *mf, char type, const uint8_t *body, size_t len,
                                 const uint8_t **rep, size_t *replen)
{
    mask_copy_t *c = current_copy(mf);
    if (!c) {
        fail(mf->s, "XX000",
             "bulwark: COPY data arrived without its CopyOutResponse; the session is closed");
        return MF_FAIL;
    }
    buf_reset(&mf->out);
    int rc = type == 'd' ? mask_copy_data(c, mf->scratch, body, len, &mf->out)
                         : mask_copy_done(c, &mf->out);
    if (rc < 0 || mf->out.failed) {
        fail(mf->s, "XX000", "bulwark: COPY data could not be masked; the session is closed");
        return MF_FAIL;
    }
    if (type == 'c') {
        pgw_write_copy_done(&mf->out);
        rc = 1;
    }
    *rep = mf->out.data;
    *replen = mf->out.len;
    return rc == 1 ? MF_REPLACED : MF_PASS;
}

mf_verdict_t maskflow_u2c(session_t *s, char type, const uint8_t *body, size_t len,
                          const uint8_t **rep, size_t *replen)
{
    maskflow_t *mf = s->mf;
    *rep = NULL;
    *replen = 0;
    if (mf->head && (mf->head->kind == IT_CATALOG || mf->head->kind == IT_ROLLBACK))
        return catalog_message(mf, type, body, len);
    switch (type) {
    case 'T':
        return on_rowdesc(mf, body, len, rep, replen);
    case 'n':
        return on_nodata(mf);
    case 'D':
        return on_datarow(mf, body, len, rep, replen);
    case 'C':
    case 'I':
    case 's':
        on_done(mf, type);
        return MF_PASS;
    case 'E':
    case 'N':
        return on_error(mf, type, body, len, rep, replen);
    case 'A': {
        buf_reset(&mf->out);
        int rc = mask_rewrite_notification(mf->rules, mf->scratch, body, len, &mf->out);
        if (rc < 0 || mf->out.failed) {
            fail(s, "XX000", "bulwark: a notification could not be masked; the session is closed");
            return MF_FAIL;
        }
        *rep = mf->out.data;
        *replen = mf->out.len;
        return rc == 1 ? MF_REPLACED : MF_PASS;
    }
    case 'Z':
        while (mf->head && !is_sync(mf->head))
            pop(mf);
        pop(mf);
        return MF_PASS;
    case 'H':
        return on_copy_out(mf, body, len);
    case 'd':
    case 'c':
        return on_copy_data(mf, type, body, len, rep, replen);
    default:
        return MF_PASS;
    }
}
