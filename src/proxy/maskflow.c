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

#include "proxy/catsvc.h"
#include "proxy/internal.h"
#include "proxy/maskflow.h"
#include "metrics/metrics.h"
#include "util/log.h"

#define MF_MAX_ITEMS 100000
#define MF_MAX_NAMED 10000 /* prepared statements, cursors, portals (each) */
#define MF_CACHE 64        /* plan cache entries per session */
#define MF_BUCKETS 64
#define SHARED_WAIT_POLL 0.02 /* s: polling for the target's first shared read */
#define SHARED_WAIT_MAX 10.0  /* s: then the session goes on without (masked whole) */
#define SHARED_FRESH_MS 1000  /* a session's first statement trusts a check this recent */

static void shared_wait_cb(struct ev_loop *loop, ev_timer *w, int revents);

typedef struct portal {
    int refs;
    mask_plan_t *plan;
    mask_desc_t *desc; /* from the Describe of this portal (the real formats) */
    bool described;    /* c2u: a Describe of it went upstream since its Bind */
} portal_t;

/* A name the server may or may not have accepted yet. PostgreSQL refuses a
 * second prepared statement or portal (SQL cursors are portals) of the same
 * name and keeps the first, so what the client sent is only a candidate until
 * the server's ParseComplete / BindComplete / CommandComplete confirms it. */
typedef struct pend {
    uint64_t id;
    uint64_t group; /* sync group it was sent in */
    mask_plan_t *plan;
    portal_t *portal;
} pend_t;

#define MF_PENDING 8

typedef struct named {
    struct named *next;
    char *name;
    bool have; /* a confirmed value */
    mask_plan_t *plan;
    portal_t *portal;
    pend_t pend[MF_PENDING];
    int npend;
    bool lost; /* a pending one did not fit: ambiguous until none is pending */
} named_t;

typedef struct registry {
    named_t *b[MF_BUCKETS];
    size_t n;
} registry_t;

/* A registration an item confirms when its statement succeeds. */
typedef struct reg_ref {
    registry_t *reg;
    char *name;
    uint64_t id; /* 0: none */
} reg_ref_t;

typedef enum {
    IT_SYNC,        /* Query or Sync: ends at ReadyForQuery */
    IT_RESULT,      /* one statement of a Query */
    IT_EXECUTE,     /* an Execute of a portal */
    IT_DESC_STMT,   /* Describe of a statement: ParameterDescription, then T or NoData */
    IT_DESC_PORTAL, /* Describe of a portal: T or NoData */
    IT_PARSE,       /* ParseComplete confirms the statement's name */
    IT_BIND,        /* BindComplete confirms the portal's name */
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
    reg_ref_t reg;     /* confirmed by ParseComplete, BindComplete or CommandComplete */
} item_t;

/* A statement planned and waiting to go upstream. */
typedef struct staged {
    mask_plan_t *plan;
    reg_ref_t reg;
} staged_t;

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
    char cat_status; /* transaction status the read started in, and must end in */
    int undo_tries;
    double loaded_at;
    uint64_t gen; /* catalog generation (plans cached under it) */
    /* the target's shared snapshot (catsvc.h) until the session's own DDL */
    bool private_cat;      /* DDL passed here: in-band reads of its own from now on */
    bool ddl_pending;      /* ... tell catsvc once its transaction has ended */
    bool shared_wait;      /* waiting for the target's first shared read */
    bool shared_gave_up;   /* waited SHARED_WAIT_MAX: go on without (masked whole) */
    uint64_t shared_gen;   /* generation of the snapshot held (catsvc_get) */
    bool shared_checked;   /* the first statement's freshness check was asked for */
    uint64_t check_ticket; /* a freshness check this session waits for (catsvc_check) */
    uint64_t epoch;        /* catsvc_epoch when it last found nothing new (0: never) */
    double wait_since;
    ev_timer wait_timer;
    /* the FIFO */
    item_t *head, *tail;
    size_t nitems;
    bool ext_open; /* extended-protocol messages since the last Sync */
    /* names: prepared statements (Parse, SQL PREPARE) and portals (Bind, SQL
     * DECLARE), as PostgreSQL keeps them: two namespaces */
    registry_t prepared, portals;
    uint64_t group;   /* sync groups sent so far */
    uint64_t next_id; /* of pending registrations */
    /* the statements of the Query or Parse being decided, until it goes upstream */
    staged_t *stash;
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

static portal_t *portal_new(mask_plan_t *plan)
{
    portal_t *p = calloc(1, sizeof(*p));
    if (!p) {
        mask_plan_release(plan);
        return NULL;
    }
    p->refs = 1;
    p->plan = plan;
    return p;
}

static portal_t *portal_retain(portal_t *p)
{
    if (p)
        p->refs++;
    return p;
}

static void portal_release(portal_t *p)
{
    if (!p || --p->refs > 0)
        return;
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

static void pend_free(pend_t *e)
{
    mask_plan_release(e->plan);
    portal_release(e->portal);
    memset(e, 0, sizeof(*e));
}

static void named_free(named_t *n)
{
    free(n->name);
    mask_plan_release(n->plan);
    portal_release(n->portal);
    for (int i = 0; i < n->npend; i++)
        pend_free(&n->pend[i]);
    free(n);
}

static void reg_unlink(registry_t *r, named_t **slot)
{
    named_t *n = *slot;
    *slot = n->next;
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

static named_t *reg_entry(registry_t *r, const char *name, bool create)
{
    named_t **slot = reg_slot(r, name);
    if (*slot || !create)
        return *slot;
    named_t *n = r->n < MF_MAX_NAMED ? calloc(1, sizeof(*n)) : NULL;
    if (!n || !(n->name = strdup(name))) {
        free(n);
        return NULL;
    }
    *slot = n;
    r->n++;
    return n;
}

/* A candidate for name (takes plan / portal). Returns its id, 0 when out of memory. */
static uint64_t reg_pend(maskflow_t *mf, registry_t *r, const char *name, mask_plan_t *plan,
                         portal_t *portal)
{
    named_t *n = reg_entry(r, name, true);
    if (!n) {
        mask_plan_release(plan);
        portal_release(portal);
        return 0;
    }
    if (n->npend == MF_PENDING) { /* the oldest one's outcome is then not followed */
        pend_free(&n->pend[0]);
        memmove(&n->pend[0], &n->pend[1], (MF_PENDING - 1) * sizeof(pend_t));
        n->npend--;
        n->lost = true;
    }
    pend_t *e = &n->pend[n->npend++];
    e->id = ++mf->next_id;
    e->group = mf->group;
    e->plan = plan;
    e->portal = portal;
    return e->id;
}

/* The server answered the statement that sent a candidate: ok = it took it. */
static void reg_resolve(reg_ref_t *ref, bool ok)
{
    if (!ref->id)
        return;
    named_t **slot = reg_slot(ref->reg, ref->name);
    named_t *n = *slot;
    for (int i = 0; n && i < n->npend; i++) {
        if (n->pend[i].id != ref->id)
            continue;
        pend_t e = n->pend[i];
        memmove(&n->pend[i], &n->pend[i + 1], (size_t)(n->npend - i - 1) * sizeof(pend_t));
        n->npend--;
        if (ok) {
            mask_plan_release(n->plan);
            portal_release(n->portal);
            n->plan = e.plan;
            n->portal = e.portal;
            n->have = true;
        } else {
            pend_free(&e);
        }
        if (!n->npend)
            n->lost = false;
        break;
    }
    if (n && !n->have && !n->npend)
        reg_unlink(ref->reg, slot);
    free(ref->name);
    memset(ref, 0, sizeof(*ref));
}

static int ref_set(reg_ref_t *ref, registry_t *r, const char *name, uint64_t id)
{
    ref->reg = r;
    ref->id = id;
    ref->name = id ? strdup(name) : NULL;
    if (id && !ref->name) {
        ref->id = 0; /* stays pending: lookups of the name stay ambiguous */
        return -1;
    }
    return id ? 0 : -1;
}

/* What a name stands for now, seen from a message of the current sync group:
 * a candidate sent in this same group is the one (had the server refused it,
 * it would skip this message too: PG docs 55.2.3); otherwise every candidate
 * still possible must agree. *plan (retained) / *portal (a reference) are NULL
 * when nothing is known; ambiguous gives a plan that masks every column (and,
 * for a portal, a new portal object that will be described). */
static bool same_shape(const mask_plan_t *a, const mask_plan_t *b);

static int reg_lookup(maskflow_t *mf, registry_t *r, const char *name, uint64_t group,
                      mask_plan_t **plan, portal_t **portal)
{
    *plan = NULL;
    if (portal)
        *portal = NULL;
    named_t *n = reg_entry(r, name, false);
    if (!n)
        return 0;
    const pend_t *cur = NULL;
    for (int i = 0; i < n->npend; i++)
        if (n->pend[i].group == group)
            cur = &n->pend[i];
    if (cur) {
        *plan = mask_plan_retain(cur->plan ? cur->plan : cur->portal->plan);
        if (portal)
            *portal = portal_retain(cur->portal);
        return 0;
    }
    const mask_plan_t *first = NULL;
    portal_t *only = NULL;
    int ncand = 0;
    bool agree = !n->lost;
    if (n->have) {
        first = n->plan ? n->plan : n->portal->plan;
        only = n->portal;
        ncand++;
    }
    for (int i = 0; i < n->npend; i++) {
        const mask_plan_t *p = n->pend[i].plan ? n->pend[i].plan : n->pend[i].portal->plan;
        if (!first)
            first = p;
        else if (!same_shape(first, p))
            agree = false;
        only = n->pend[i].portal;
        ncand++;
    }
    if (!ncand)
        return 0;
    if (ncand == 1 && agree) {
        *plan = mask_plan_retain((mask_plan_t *)first);
        if (portal)
            *portal = portal_retain(only);
        return 0;
    }
    *plan = agree ? mask_plan_retain((mask_plan_t *)first) : mask_plan_unknown(mf->rules);
    if (!*plan)
        return -1;
    if (portal && !(*portal = portal_new(mask_plan_retain(*plan)))) {
        mask_plan_release(*plan);
        *plan = NULL;
        return -1;
    }
    return 0;
}

/* Close (protocol): the name is gone, whatever was pending. Later lookups find
 * nothing and mask whole. */
static void reg_forget(registry_t *r, const char *name)
{
    named_t **slot = reg_slot(r, name);
    named_t *n = *slot;
    if (!n)
        return;
    mask_plan_release(n->plan);
    portal_release(n->portal);
    n->plan = NULL;
    n->portal = NULL;
    n->have = false;
    n->lost = n->npend > 0; /* what is pending may still arrive: stay ambiguous */
    if (!n->npend)
        reg_unlink(r, slot);
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
    mf->shared_gen = UINT64_MAX - 1; /* no generation of catsvc's */
    ev_init(&mf->wait_timer, shared_wait_cb);
    mf->wait_timer.data = mf;
    return mf;
}

static void item_free(item_t *it)
{
    reg_resolve(&it->reg, false); /* not confirmed: the server did not take it */
    mask_plan_release(it->plan);
    portal_release(it->portal);
    mask_desc_free(it->desc);
    mask_copy_free(it->copy);
    free(it);
}

/* Statements planned but not sent (refused, or replaced by the next decision). */
static void stash_clear(maskflow_t *mf)
{
    for (size_t i = 0; i < mf->nstash; i++) {
        reg_resolve(&mf->stash[i].reg, false);
        mask_plan_release(mf->stash[i].plan);
    }
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
    stash_clear(mf);
    reg_clear(&mf->prepared);
    reg_clear(&mf->portals);
    for (size_t i = 0; i < MF_CACHE; i++)
        cache_entry_clear(&mf->cache[i]);
    ev_timer_stop(mf->s->srv->loop, &mf->wait_timer);
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
    if (!mf->private_cat)
        return false; /* the shared snapshot serves this session */
    if (!mf->loaded || mf->dirty)
        return true;
    double age_ms = (ev_now(mf->s->srv->loop) - mf->loaded_at) * 1000.0;
    return age_ms > (double)mf->s->rt->cfg->masking.catalog_refresh_ms;
}

/* Nothing in flight, not inside an extended-protocol group, no failed
 * transaction: a Query of our own fits in here without anyone noticing. */
static bool upstream_idle(const maskflow_t *mf)
{
    const session_t *s = mf->s;
    return !mf->head && !mf->ext_open && (s->tx_status == 'I' || s->tx_status == 'T') &&
           !s->holding && s->c2u_left == 0;
}

static bool start_catalog_read(maskflow_t *mf)
{
    catalog_free(mf->loading);
    mf->loading = catalog_new();
    if (!mf->loading || !push(mf, IT_CATALOG))
        return false;
    mf->load_error = false;
    mf->waiting = true;
    mf->cat_status = mf->s->tx_status;
    pgw_write_query(&mf->s->upstream.out,
                    mf->cat_status == 'T' ? catalog_query_in_tx : catalog_query_idle);
    return true;
}

/* Between statements, with nothing in flight: take the target's newest
 * shared snapshot. False: its first read has not ended yet; wait (polled). */
static bool shared_refresh(maskflow_t *mf)
{
    session_t *s = mf->s;
    catalog_t *c = NULL;
    /* the common case, without the lock: nothing asked for, nothing new */
    uint64_t epoch = catsvc_epoch(s->srv->catalogs);
    if (mf->epoch && epoch == mf->epoch && !mf->check_ticket && !mf->dirty && !mf->shared_wait)
        return true;
    /* The session's first statement, or the first after a result named a table
     * the snapshot does not know (DDL from outside the gateway): wait for a
     * check that the snapshot is current (a fingerprint; a read if it changed). */
    if (!mf->check_ticket && (!mf->shared_checked || mf->dirty)) {
        mf->check_ticket = catsvc_check(s->srv->catalogs, s->target_name,
                                        mf->shared_checked ? 0 : SHARED_FRESH_MS);
        mf->shared_checked = true;
        if (!mf->check_ticket)
            mf->dirty = false; /* none to wait for: the next result decides again */
    }
    bool checking =
        mf->check_ticket && !catsvc_checked(s->srv->catalogs, s->target_name, mf->check_ticket);
    if (mf->check_ticket && !checking) {
        mf->check_ticket = 0;
        mf->dirty = false; /* the snapshot below is as current as the server's catalog */
    }
    catsvc_state_t st = checking
                            ? CATSVC_PENDING
                            : catsvc_get(s->srv->catalogs, s->target_name, &mf->shared_gen, &c);
    if (st == CATSVC_PENDING) {
        double now = ev_now(s->srv->loop);
        if (mf->shared_gave_up)
            return true;
        if (!mf->shared_wait) {
            mf->shared_wait = true;
            mf->wait_since = now;
        } else if (now - mf->wait_since > SHARED_WAIT_MAX) {
            mf->shared_wait = false;
            mf->loaded = true;
            if (checking) { /* go on with what it has (dirty: unknown relations masked whole) */
                mf->check_ticket = 0;
                return true;
            }
            mf->shared_gave_up = true;
            log_event(LOG_WARN, "mask_catalog_wait",
                      "session=%s target=%s detail=\"no catalog yet: every relation is masked "
                      "whole until the target's first catalog read ends\"",
                      s->id, s->target_name);
            return true;
        }
        ev_timer_set(&mf->wait_timer, SHARED_WAIT_POLL, 0.);
        ev_timer_start(s->srv->loop, &mf->wait_timer);
        return false;
    }
    mf->shared_wait = false;
    if (st == CATSVC_NEW) {
        catalog_free(mf->cat);
        mf->cat = c;
        mf->gen++;
        mf->loaded = true;
        mf->dirty = false;
    }
    if (!mf->check_ticket && mf->shared_checked)
        mf->epoch = epoch; /* read before catsvc_get: a change since is seen next time */
    return true;
}

static void shared_wait_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    maskflow_t *mf = w->data;
    if (mf->s->state == ST_RELAY)
        session_resume(mf->s); /* c2u asks again (maskflow_c2u_ready) */
}

bool maskflow_c2u_ready(session_t *s, char type, size_t avail, size_t total)
{
    maskflow_t *mf = s->mf;
    if (mf->waiting || ev_is_active(&mf->wait_timer))
        return false;
    if ((type == 'Q' || type == 'P') && !mf->private_cat && upstream_idle(mf) &&
        !shared_refresh(mf))
        return false;
    if (type == 'D' && avail < total && total <= 64 * 1024)
        return false; /* larger: malformed, see c2u_describe */
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

static mf_verdict_t on_notification(maskflow_t *mf, const uint8_t *body, size_t len,
                                    const uint8_t **rep, size_t *replen);
static void fail(session_t *s, const char *sqlstate, const char *msg);

/* Replies to the catalog read are the gateway's own: swallowed. Messages the
 * server sends on its own at any time (NotificationResponse, ParameterStatus)
 * still go to the client. */
static mf_verdict_t catalog_message(maskflow_t *mf, char type, const uint8_t *body, size_t len,
                                    const uint8_t **rep, size_t *replen)
{
    item_t *it = mf->head;
    switch (type) {
    case 'A':
        return on_notification(mf, body, len, rep, replen);
    case 'S':
        return MF_PASS;
    case 'D':
        if (it->kind == IT_CATALOG && !mf->load_error &&
            catalog_add_row(mf->loading, body, len) < 0)
            mf->load_error = true;
        break;
    case 'E':
        mf->load_error = true;
        break;
    case 'Z': {
        char status = 'E';
        if (pgw_read_ready(body, len, &status) < 0)
            status = 'E';
        bool first = it->kind == IT_CATALOG;
        pop(mf);
        if (status == mf->cat_status) {
            catalog_done(mf, first && !mf->load_error);
            break;
        }
        mf->load_error = true;
        /* an error left our transaction open, or the client's aborted: undo. The
         * undo runs under the client's statement_timeout too: try it a few times */
        if (first)
            mf->undo_tries = 0;
        if (++mf->undo_tries > 5) {
            fail(mf->s, "08006",
                 "bulwark: the session's transaction state was lost reading the catalog");
            return MF_FAIL;
        }
        if (!push(mf, IT_ROLLBACK))
            return MF_FAIL;
        pgw_write_query(&mf->s->upstream.out,
                        mf->cat_status == 'T' ? catalog_query_undo : "ROLLBACK");
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

/* libpg_query's tree of sql as cJSON: from the policy's parse of the same text
 * when it kept one (tree), else parsed here. NULL and *bad set when it does not parse. */
static cJSON *parse_tree(const char *sql, const char *tree, bool *bad)
{
    *bad = false;
    if (tree)
        return cJSON_Parse(tree);
    PgQueryParseResult pr = pg_query_parse(sql);
    if (pr.error) {
        pg_query_free_parse_result(pr);
        *bad = true;
        return NULL;
    }
    cJSON *root = cJSON_Parse(pr.parse_tree);
    pg_query_free_parse_result(pr);
    return root;
}

/* Plans every statement of sql under each search_path candidate. Where the
 * candidates disagree, the plan masks every column (denials of any count). */
static int plan_all(maskflow_t *mf, const char *sql, const char *tree, const paths_t *P,
                    mask_plan_t ***out, size_t *nout)
{
    *out = NULL;
    *nout = 0;
    bool bad;
    cJSON *root = parse_tree(sql, tree, &bad);
    if (bad)
        return 1; /* the policy has refused it already; refuse again */
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
static int plan_cached(maskflow_t *mf, const char *sql, size_t len, const char *tree,
                       const paths_t *P, mask_plan_t ***out, size_t *nout)
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
    int rc = plan_all(mf, sql, tree, P, out, nout);
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

/* FETCH and EXECUTE stand for the plan remembered under their name (in this
 * group: see reg_lookup); the statement's own plan masks everything. Returns a
 * retained plan, NULL when out of memory. */
static mask_plan_t *substitute(maskflow_t *mf, mask_plan_t *p)
{
    mask_stmt_kind_t k = mask_plan_kind(p);
    const char *name = mask_plan_name(p);
    if ((k != MASK_STMT_FETCH && k != MASK_STMT_EXECUTE) || !name)
        return mask_plan_retain(p);
    mask_plan_t *found;
    portal_t *portal = NULL;
    if (reg_lookup(mf, k == MASK_STMT_FETCH ? &mf->portals : &mf->prepared, name, mf->group, &found,
                   k == MASK_STMT_FETCH ? &portal : NULL) < 0)
        return NULL;
    portal_release(portal);
    return found ? found : mask_plan_retain(p);
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

/* A statement that defines a name for later ones (DECLARE, PREPARE): its plan
 * is a candidate for that name until the statement's CommandComplete. */
static int remember(maskflow_t *mf, staged_t *st)
{
    const char *name = mask_plan_name(st->plan);
    mask_stmt_kind_t k = mask_plan_kind(st->plan);
    if (!name || (k != MASK_STMT_CURSOR && k != MASK_STMT_PREPARE))
        return 0;
    registry_t *r = k == MASK_STMT_CURSOR ? &mf->portals : &mf->prepared;
    uint64_t id;
    if (k == MASK_STMT_CURSOR) {
        portal_t *p = portal_new(mask_plan_retain(st->plan));
        id = p ? reg_pend(mf, r, name, NULL, p) : 0;
    } else {
        id = reg_pend(mf, r, name, mask_plan_retain(st->plan), NULL);
    }
    return ref_set(&st->reg, r, name, id);
}

int maskflow_plan(session_t *s, policy_session_t *ps, char kind, const char *stmt, const char *sql,
                  size_t len, const policy_result_t *r, char *msg, size_t msgsz)
{
    maskflow_t *mf = s->mf;
    paths_t P;
    if (paths_get(ps, &P) < 0)
        return -1;
    mask_plan_t **plans;
    size_t n;
    int rc = plan_cached(mf, sql, len, r->tree, &P, &plans, &n);
    paths_free(&P);
    if (rc < 0)
        return -1;
    if (rc > 0) {
        snprintf(msg, msgsz, "bulwark: the statement cannot be checked for masked columns");
        return 1;
    }
    stash_clear(mf);
    size_t nplans = n;
    staged_t *st = calloc(n ? n : 1, sizeof(*st));
    if (!st)
        rc = -1;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        /* one after the other: a FETCH sees the DECLARE before it in the same string;
         * a Parse's FETCH / EXECUTE is resolved when it is bound (executed) */
        st[i].plan = kind == 'Q' ? substitute(mf, plans[i]) : mask_plan_retain(plans[i]);
        if (!st[i].plan) {
            rc = -1;
            break;
        }
        char why[400];
        if (mask_plan_denied(st[i].plan, why, sizeof(why))) {
            snprintf(msg, msgsz, "bulwark: %s (role %s)", why, s->role_name);
            rc = 1;
            break;
        }
        /* DECLARE / PREPARE sent by Parse define their name at Execute */
        if (kind == 'Q' && remember(mf, &st[i]) < 0)
            rc = -1;
    }
    if (rc == 0 && kind == 'P' && n == 0 && !(st[0].plan = mask_plan_unknown(mf->rules)))
        rc = -1;
    if (rc == 0 && kind == 'P') {
        /* the statement's name is a candidate until ParseComplete */
        uint64_t id = reg_pend(mf, &mf->prepared, stmt, mask_plan_retain(st[0].plan), NULL);
        if (ref_set(&st[0].reg, &mf->prepared, stmt, id) < 0)
            rc = -1;
        /* several statements in one Parse: the server refuses it (42601); only the
         * first plan is kept for the name */
        for (size_t i = 1; i < n; i++)
            mask_plan_release(st[i].plan);
        n = 1;
    }
    mf->stash = st;
    mf->nstash = st ? n : 0;
    if (rc != 0)
        stash_clear(mf);
    for (size_t i = 0; i < nplans; i++)
        mask_plan_release(plans[i]);
    free(plans);
    if (rc == 0 && may_change_catalog(r)) {
        /* its own DDL (temporary objects, uncommitted definitions) is seen by
         * nobody else: this session reads its own catalog from now on */
        mf->dirty = true;
        mf->private_cat = true;
        mf->ddl_pending = true;
    }
    return rc;
}

void maskflow_refused(session_t *s)
{
    stash_clear(s->mf);
}

void maskflow_sentinel(session_t *s, char kind)
{
    maskflow_t *mf = s->mf;
    if (kind != 'Q')
        return;
    if (push(mf, IT_SYNC))
        mf->group++;
    else
        mf->ext_open = true; /* out of memory: no idle point is trusted any more */
}

/* ---- c2u ---------------------------------------------------------------------------- */

static int sync_point(maskflow_t *mf)
{
    mf->ext_open = false;
    if (!push(mf, IT_SYNC))
        return -1;
    mf->group++;
    return 0;
}

static int c2u_query(maskflow_t *mf)
{
    for (size_t i = 0; i < mf->nstash; i++) {
        item_t *it = push(mf, IT_RESULT);
        if (!it)
            return -1;
        it->plan = mf->stash[i].plan;
        it->reg = mf->stash[i].reg;
        memset(&mf->stash[i], 0, sizeof(mf->stash[i]));
    }
    if (mf->nstash == 0 && !push(mf, IT_RESULT)) /* EmptyQueryResponse */
        return -1;
    stash_clear(mf);
    return sync_point(mf);
}

static int c2u_parse(maskflow_t *mf)
{
    mf->ext_open = true;
    item_t *it = push(mf, IT_PARSE);
    if (!it)
        return -1;
    if (mf->nstash) {
        it->reg = mf->stash[0].reg;
        memset(&mf->stash[0].reg, 0, sizeof(reg_ref_t));
    }
    stash_clear(mf);
    return 0;
}

/* The plan of a prepared statement, or one that masks every column. */
static mask_plan_t *stmt_plan(maskflow_t *mf, const char *name)
{
    mask_plan_t *p;
    if (reg_lookup(mf, &mf->prepared, name, mf->group, &p, NULL) < 0)
        return NULL;
    return p ? p : mask_plan_unknown(mf->rules);
}

/* The portal of that name (a reference): bound through us, a SQL cursor, or
 * unknown (a new portal that masks every column). */
static portal_t *portal_get(maskflow_t *mf, const char *name)
{
    mask_plan_t *plan;
    portal_t *p;
    if (reg_lookup(mf, &mf->portals, name, mf->group, &plan, &p) < 0)
        return NULL;
    if (p) {
        mask_plan_release(plan);
        return p;
    }
    mask_plan_release(plan);
    plan = mask_plan_unknown(mf->rules);
    return plan ? portal_new(plan) : NULL;
}

static int c2u_bind(maskflow_t *mf, const uint8_t *body, size_t avail)
{
    const char *portal = (const char *)body;
    size_t pl = strnlen(portal, avail);
    if (pl == avail)
        return -2;
    const char *stmt = portal + pl + 1;
    if (strnlen(stmt, avail - pl - 1) == avail - pl - 1)
        return -2;
    mask_plan_t *raw = stmt_plan(mf, stmt);
    mask_plan_t *plan = raw ? substitute(mf, raw) : NULL;
    mask_plan_release(raw);
    portal_t *p = plan ? portal_new(plan) : NULL;
    item_t *it = p ? push(mf, IT_BIND) : NULL;
    if (!it) {
        portal_release(p);
        return -1;
    }
    uint64_t id = reg_pend(mf, &mf->portals, portal, NULL, p);
    return ref_set(&it->reg, &mf->portals, portal, id);
}

static int c2u_describe(maskflow_t *mf, const uint8_t *body, size_t len)
{
    if (len < 2 || body[len - 1] != '\0' || (body[0] != 'S' && body[0] != 'P'))
        return -2;
    const char *name = (const char *)body + 1;
    if (body[0] == 'S') {
        item_t *it = push(mf, IT_DESC_STMT);
        return it && (it->plan = stmt_plan(mf, name)) ? 0 : -1;
    }
    portal_t *p = portal_get(mf, name);
    item_t *it = p ? push(mf, IT_DESC_PORTAL) : NULL;
    if (!it) {
        portal_release(p);
        return -1;
    }
    p->described = true;
    it->portal = p;
    return 0;
}

/* DESIGN 2.4: an Execute whose portal's shape is unknown gets our Describe
 * first. An Execute of SQL DECLARE / PREPARE defines that name. */
static int c2u_execute(maskflow_t *mf, const uint8_t *body, size_t len)
{
    const char *name = (const char *)body;
    if (strnlen(name, len) == len)
        return -2;
    portal_t *p = portal_get(mf, name);
    if (!p)
        return -1;
    if (!p->described) {
        item_t *d = push(mf, IT_DESC_PORTAL);
        if (!d) {
            portal_release(p);
            return -1;
        }
        d->swallow = true;
        d->portal = portal_retain(p);
        p->described = true;
        pgw_write_describe(&mf->s->upstream.out, 'P', name);
    }
    item_t *it = push(mf, IT_EXECUTE);
    if (!it) {
        portal_release(p);
        return -1;
    }
    it->portal = p;
    staged_t st = {.plan = p->plan};
    return remember(mf, &st) < 0 ? -1 : (it->reg = st.reg, 0);
}

static int c2u_close(maskflow_t *mf, const uint8_t *body, size_t len)
{
    if (len < 2 || body[len - 1] != '\0')
        return -2;
    reg_forget(body[0] == 'S' ? &mf->prepared : &mf->portals, (const char *)body + 1);
    return 0;
}

int maskflow_c2u(session_t *s, char type, const uint8_t *body, size_t avail)
{
    maskflow_t *mf = s->mf;
    switch (type) {
    case 'Q':
        return c2u_query(mf);
    case 'P':
        return c2u_parse(mf);
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
        return sync_point(mf);
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
    case '1':
    case '2':
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
    log_event(LOG_WARN, "mask_fail_closed", "session=%s role=%s reason=\"%s\"", s->id, s->role_name,
              msg);
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

static mf_verdict_t on_rowdesc(maskflow_t *mf, const uint8_t *body, size_t len, const uint8_t **rep,
                               size_t *replen)
{
    item_t *it = mf->head;
    const mask_plan_t *plan = current_plan(mf);
    mask_plan_t *unknown = NULL;
    bool known = rowdesc_known(mf, body, len);
    if (!plan || !known) {
        if (!known && mf->cat)
            mf->dirty = true; /* read the catalog again at the next idle point (without
                               * one, not before catalog_refresh: no retry storm); a
                               * session on the shared snapshot waits there for a check */
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
        swallow = it->swallow;
        pop(mf);
    } else if (it && it->kind == IT_DESC_STMT) {
        pop(mf);
    }
    return swallow ? MF_SWALLOW : MF_PASS;
}

static mf_verdict_t on_datarow(maskflow_t *mf, const uint8_t *body, size_t len, const uint8_t **rep,
                               size_t *replen)
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

static void count_masked(void *arg, const char *column, const char *detector, uint64_t n)
{
    session_t *s = arg;
    metrics_masked(s->srv->metrics, column, detector, n);
}

static void log_summary(maskflow_t *mf, const mask_desc_t *d)
{
    if (!d || !mask_desc_active(d))
        return;
    mask_desc_counts(d, count_masked, mf->s);
    buf_t b;
    buf_init(&b, 64 * 1024);
    mask_desc_summary(d, &b);
    buf_put_u8(&b, 0);
    if (!b.failed &&
        (strstr((const char *)b.data, "masked.") || strstr((const char *)b.data, "detected.")))
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
    if (type == 'C') /* DECLARE / PREPARE took their names */
        reg_resolve(&it->reg, true);
    pop(mf);
}

/* ParseComplete / BindComplete: the server took the name. */
static void on_complete(maskflow_t *mf, it_kind_t kind)
{
    item_t *it = mf->head;
    if (!it || it->kind != kind)
        return;
    reg_resolve(&it->reg, true);
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
        fail(mf->s, "XX000",
             "bulwark: a server message could not be masked; the session is closed");
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

static mf_verdict_t on_notification(maskflow_t *mf, const uint8_t *body, size_t len,
                                    const uint8_t **rep, size_t *replen)
{
    buf_reset(&mf->out);
    int rc = mask_rewrite_notification(mf->rules, mf->scratch, body, len, &mf->out);
    if (rc < 0 || mf->out.failed) {
        fail(mf->s, "XX000", "bulwark: a notification could not be masked; the session is closed");
        return MF_FAIL;
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
        return catalog_message(mf, type, body, len, rep, replen);
    switch (type) {
    case 'T':
        return on_rowdesc(mf, body, len, rep, replen);
    case 'n':
        return on_nodata(mf);
    case '1':
        on_complete(mf, IT_PARSE);
        return MF_PASS;
    case '2':
        on_complete(mf, IT_BIND);
        return MF_PASS;
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
    case 'A':
        return on_notification(mf, body, len, rep, replen);
    case 'Z':
        while (mf->head && !is_sync(mf->head))
            pop(mf);
        pop(mf);
        if (mf->ddl_pending && len == 1 && body[0] == 'I') {
            /* the DDL's transaction ended: others may see it now */
            mf->ddl_pending = false;
            catsvc_changed(s->srv->catalogs, s->target_name);
        }
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
