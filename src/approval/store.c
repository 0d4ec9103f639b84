/* Approval requests and grants in LMDB (layout in approval.h). */
#include <errno.h>
#include <lmdb.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "approval/approval.h"
#include "approval/internal.h"
#include "util/dur.h"
#include "util/glob.h"

/* The audit store opens 7 databases with maxdbs 16 (audit/internal.h). */
#define APPR_MAX_DBS 16
#define APPR_REQ_MAX_BYTES (2u << 20)

static const char *const state_names[] = {NULL,     "pending", "approved",
                                          "denied", "timeout", "withdrawn"};

const char *appr_state_name(appr_state_t s)
{
    return s >= APPR_PENDING && s <= APPR_WITHDRAWN ? state_names[s] : "unknown";
}

const char *appr_state_at(const appr_req_t *r, int64_t now_us)
{
    return r->state == APPR_PENDING && r->expires_us <= now_us ? "expired"
                                                               : appr_state_name(r->state);
}

static appr_state_t state_parse(const char *s)
{
    for (int i = APPR_PENDING; s && i <= APPR_WITHDRAWN; i++)
        if (!strcmp(s, state_names[i]))
            return (appr_state_t)i;
    return 0;
}

void appr_req_free(appr_req_t *r)
{
    if (!r)
        return;
    char **strs[] = {&r->session, &r->sub,         &r->iss,    &r->role,      &r->target,
                     &r->sql,     &r->fingerprint, &r->rule,   &r->by,        &r->by_role,
                     &r->os_user, &r->via,         &r->reason, &r->revoked_by};
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++)
        free(*strs[i]);
    for (size_t i = 0; i < r->n_approvers; i++)
        free(r->approvers[i]);
    free(r->approvers);
    memset(r, 0, sizeof(*r));
}

static void be64_put(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint64_t be64_get(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

/* ---- JSON form ---------------------------------------------------------------- */

static void add_str(cJSON *o, const char *k, const char *v)
{
    if (v)
        cJSON_AddStringToObject(o, k, v);
}

/* Times as integers of µs (exact below 2^53). */
static void add_time(cJSON *o, const char *k, int64_t us)
{
    if (us)
        cJSON_AddNumberToObject(o, k, (double)us);
}

cJSON *appr_req_json(const appr_req_t *r)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    cJSON_AddNumberToObject(o, "id", (double)r->id);
    cJSON_AddStringToObject(o, "state", appr_state_name(r->state));
    add_str(o, "session", r->session);
    add_str(o, "sub", r->sub);
    add_str(o, "iss", r->iss);
    add_str(o, "role", r->role);
    add_str(o, "target", r->target);
    add_str(o, "sql", r->sql);
    add_str(o, "fingerprint", r->fingerprint);
    add_str(o, "rule", r->rule);
    cJSON_AddStringToObject(o, "mode", r->reject ? "reject" : "hold");
    cJSON *a = cJSON_AddArrayToObject(o, "approvers");
    for (size_t i = 0; a && i < r->n_approvers; i++)
        cJSON_AddItemToArray(a, cJSON_CreateString(r->approvers[i]));
    add_time(o, "created", r->created_us);
    add_time(o, "expires", r->expires_us);
    add_time(o, "decided", r->decided_us);
    add_str(o, "by", r->by);
    add_str(o, "by_role", r->by_role);
    add_str(o, "os_user", r->os_user);
    add_str(o, "via", r->via);
    add_str(o, "reason", r->reason);
    add_time(o, "grant_until", r->grant_until_us);
    if (r->used)
        cJSON_AddBoolToObject(o, "used", true);
    if (r->revoked)
        cJSON_AddBoolToObject(o, "revoked", true);
    add_str(o, "revoked_by", r->revoked_by);
    return o;
}

static char *get_str(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? strdup(v->valuestring) : NULL;
}

static int64_t get_i64(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? (int64_t)v->valuedouble : 0;
}

int appr_req_parse(const char *text, size_t len, appr_req_t *r)
{
    memset(r, 0, sizeof(*r));
    cJSON *o = cJSON_ParseWithLength(text, len);
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return -1;
    }
    r->id = (uint64_t)get_i64(o, "id");
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "state");
    r->state = state_parse(cJSON_IsString(st) ? st->valuestring : NULL);
    r->session = get_str(o, "session");
    r->sub = get_str(o, "sub");
    r->iss = get_str(o, "iss");
    r->role = get_str(o, "role");
    r->target = get_str(o, "target");
    r->sql = get_str(o, "sql");
    r->fingerprint = get_str(o, "fingerprint");
    r->rule = get_str(o, "rule");
    const cJSON *mode = cJSON_GetObjectItemCaseSensitive(o, "mode");
    r->reject = cJSON_IsString(mode) && !strcmp(mode->valuestring, "reject");
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "approvers");
    int n = cJSON_IsArray(a) ? cJSON_GetArraySize(a) : 0;
    if (n > 0 && (r->approvers = calloc((size_t)n, sizeof(char *)))) {
        const cJSON *e;
        cJSON_ArrayForEach(e, a) if (cJSON_IsString(e) &&
                                     (r->approvers[r->n_approvers] = strdup(e->valuestring)))
            r->n_approvers++;
    }
    r->created_us = get_i64(o, "created");
    r->expires_us = get_i64(o, "expires");
    r->decided_us = get_i64(o, "decided");
    r->by = get_str(o, "by");
    r->by_role = get_str(o, "by_role");
    r->os_user = get_str(o, "os_user");
    r->via = get_str(o, "via");
    r->reason = get_str(o, "reason");
    r->grant_until_us = get_i64(o, "grant_until");
    r->used = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "used"));
    r->revoked = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "revoked"));
    r->revoked_by = get_str(o, "revoked_by");
    cJSON_Delete(o);
    if (!r->state || !r->id) {
        appr_req_free(r);
        return -1;
    }
    return 0;
}

/* ---- environment ---------------------------------------------------------------- */

static int open_dbs(appr_store_t *st, char *err, size_t errsz)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(st->env, NULL, 0, &txn);
    if (!rc)
        rc = mdb_dbi_open(txn, "approvals", MDB_CREATE, &st->reqs);
    if (!rc)
        rc = mdb_dbi_open(txn, "approval_grants", MDB_CREATE, &st->grants);
    if (!rc)
        rc = mdb_txn_commit(txn);
    else
        mdb_txn_abort(txn);
    if (rc)
        snprintf(err, errsz, "cannot open the approvals database: %s", mdb_strerror(rc));
    return rc;
}

appr_store_t *appr_attach(struct MDB_env *env, char *err, size_t errsz)
{
    appr_store_t *st = calloc(1, sizeof(*st));
    if (!st) {
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    st->env = env;
    if (open_dbs(st, err, errsz)) {
        free(st);
        return NULL;
    }
    return st;
}

/* Opens the audit store's environment itself (another process than the gateway),
 * then attaches to it like the gateway does; appr_close closes what it opened. */
appr_store_t *appr_open(const char *path, char *err, size_t errsz)
{
    MDB_env *env = NULL;
    int rc = mdb_env_create(&env);
    if (!rc)
        rc = mdb_env_set_maxdbs(env, APPR_MAX_DBS);
    /* No map size set: LMDB uses the one the gateway gave the environment. */
    if (!rc) {
        rc = mdb_env_open(env, path, MDB_NOTLS, 0600);
        if (rc)
            snprintf(err, errsz,
                     rc == ENOENT
                         ? "%s: no audit store here (the gateway creates it when it starts)"
                         : "%s: cannot open the audit store: %s",
                     path, mdb_strerror(rc));
    } else {
        snprintf(err, errsz, "%s: %s", path, mdb_strerror(rc));
    }
    appr_store_t *st = rc ? NULL : appr_attach(env, err, errsz);
    if (!st) {
        if (env)
            mdb_env_close(env);
        return NULL;
    }
    st->own_env = true;
    return st;
}

void appr_close(appr_store_t *st)
{
    if (!st)
        return;
    if (st->pg)
        apg_close(st->pg);
    if (st->own_env && st->env)
        mdb_env_close(st->env);
    free(st);
}

void appr_set_txn_guard(appr_store_t *st, void (*enter)(void *), void (*leave)(void *), void *arg)
{
    st->guard_enter = enter;
    st->guard_leave = leave;
    st->guard_arg = arg;
}

/* Begin a transaction (inside the guard); another process may have grown the
 * map meanwhile. Every transaction begun here ends in txn_commit/txn_abort. */
static int txn_begin(appr_store_t *st, bool rw, MDB_txn **txn)
{
    if (st->guard_enter)
        st->guard_enter(st->guard_arg);
    int rc = mdb_txn_begin(st->env, NULL, rw ? 0 : MDB_RDONLY, txn);
    if (rc == MDB_MAP_RESIZED && st->own_env && mdb_env_set_mapsize(st->env, 0) == 0)
        rc = mdb_txn_begin(st->env, NULL, rw ? 0 : MDB_RDONLY, txn);
    if (rc && st->guard_leave)
        st->guard_leave(st->guard_arg);
    return rc;
}

static int txn_commit(appr_store_t *st, MDB_txn *txn)
{
    int rc = mdb_txn_commit(txn);
    if (st->guard_leave)
        st->guard_leave(st->guard_arg);
    return rc;
}

static void txn_abort(appr_store_t *st, MDB_txn *txn)
{
    mdb_txn_abort(txn);
    if (st->guard_leave)
        st->guard_leave(st->guard_arg);
}

/* ---- reading ------------------------------------------------------------------------ */

static appr_rc_t get_in(MDB_txn *txn, appr_store_t *st, uint64_t id, appr_req_t *out)
{
    uint8_t kb[8];
    be64_put(kb, id);
    MDB_val k = {8, kb}, v;
    int rc = mdb_get(txn, st->reqs, &k, &v);
    if (rc == MDB_NOTFOUND)
        return APPR_NOT_FOUND;
    if (rc || appr_req_parse(v.mv_data, v.mv_size, out))
        return APPR_ERR;
    return APPR_OK;
}

appr_rc_t appr_get(appr_store_t *st, uint64_t id, appr_req_t *out)
{
    if (st->pg)
        return apg_get(st->pg, id, out);
    MDB_txn *txn;
    memset(out, 0, sizeof(*out));
    if (txn_begin(st, false, &txn))
        return APPR_ERR;
    appr_rc_t rc = get_in(txn, st, id, out);
    txn_abort(st, txn);
    return rc;
}

uint64_t appr_last_id(appr_store_t *st)
{
    if (st->pg)
        return 0; /* ids come from apg_next_id */
    MDB_txn *txn;
    MDB_cursor *c;
    MDB_val k, v;
    uint64_t id = 0;
    if (txn_begin(st, false, &txn))
        return 0;
    if (!mdb_cursor_open(txn, st->reqs, &c)) {
        if (!mdb_cursor_get(c, &k, &v, MDB_LAST) && k.mv_size == 8)
            id = be64_get(k.mv_data);
        mdb_cursor_close(c);
    }
    txn_abort(st, txn);
    return id;
}

static void grant_key(const appr_key_t *k, uint8_t out[40], uint64_t id)
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    const char *parts[] = {k->iss, k->sub, k->role, k->target, k->fingerprint};
    bool ok = c && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1;
    for (size_t i = 0; ok && i < 5; i++) {
        const char *p = parts[i] ? parts[i] : "";
        ok = EVP_DigestUpdate(c, p, strlen(p) + 1) == 1;
    }
    if (!ok || EVP_DigestFinal_ex(c, out, NULL) != 1)
        memset(out, 0xff, 32); /* matches nothing that was stored */
    EVP_MD_CTX_free(c);
    be64_put(out + 32, id);
}

static bool grant_usable(const appr_req_t *r, int64_t now_us)
{
    if (r->state != APPR_APPROVED || r->revoked)
        return false;
    if (r->grant_until_us)
        return r->grant_until_us > now_us;
    return r->reject && !r->used;
}

appr_rc_t appr_find_grant(appr_store_t *st, const appr_key_t *key, int64_t now_us,
                          bool (*skip)(void *arg, uint64_t id), void *arg, uint64_t *id,
                          int64_t *until_us)
{
    if (st->pg)
        return apg_find_grant(st->pg, key, now_us, skip, arg, id, until_us);
    MDB_txn *txn;
    MDB_cursor *c;
    if (txn_begin(st, false, &txn))
        return APPR_ERR;
    if (mdb_cursor_open(txn, st->grants, &c)) {
        txn_abort(st, txn);
        return APPR_ERR;
    }
    uint8_t kb[40];
    grant_key(key, kb, 0);
    MDB_val k = {40, kb}, v;
    appr_rc_t res = APPR_NOT_FOUND;
    for (int rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
         rc == 0 && k.mv_size == 40 && !memcmp(k.mv_data, kb, 32);
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        uint64_t gid = be64_get((const uint8_t *)k.mv_data + 32);
        appr_req_t r;
        if (skip && skip(arg, gid))
            continue;
        if (get_in(txn, st, gid, &r) != APPR_OK)
            continue;
        /* The hash names the identity; compare the fields too. */
        bool same = r.fingerprint && r.sub && r.role && r.target &&
                    !strcmp(r.fingerprint, key->fingerprint) && !strcmp(r.sub, key->sub) &&
                    !strcmp(r.role, key->role) && !strcmp(r.target, key->target) &&
                    !strcmp(r.iss ? r.iss : "", key->iss ? key->iss : "");
        if (same && grant_usable(&r, now_us)) {
            *id = gid;
            *until_us = r.grant_until_us;
            res = APPR_OK;
        }
        appr_req_free(&r);
        if (res == APPR_OK)
            break;
    }
    mdb_cursor_close(c);
    txn_abort(st, txn);
    return res;
}

int appr_list(appr_store_t *st, int filter, int64_t now_us, size_t max_scan,
              int (*fn)(void *arg, const appr_req_t *r), void *arg)
{
    if (st->pg)
        return apg_list(st->pg, filter, now_us, max_scan, fn, arg);
    MDB_txn *txn;
    MDB_cursor *c;
    if (txn_begin(st, false, &txn))
        return -1;
    if (mdb_cursor_open(txn, st->reqs, &c)) {
        txn_abort(st, txn);
        return -1;
    }
    MDB_val k, v;
    int stop = 0;
    size_t seen = 0;
    for (int rc = mdb_cursor_get(c, &k, &v, MDB_LAST); rc == 0 && !stop;
         rc = mdb_cursor_get(c, &k, &v, MDB_PREV)) {
        if (max_scan && seen++ >= max_scan)
            break;
        appr_req_t r;
        if (appr_req_parse(v.mv_data, v.mv_size, &r))
            continue;
        bool show =
            filter == APPR_LIST_ALL ||
            (filter == APPR_LIST_PENDING && r.state == APPR_PENDING && r.expires_us > now_us) ||
            (filter == APPR_LIST_GRANTS && grant_usable(&r, now_us));
        if (show)
            stop = fn(arg, &r);
        appr_req_free(&r);
    }
    mdb_cursor_close(c);
    txn_abort(st, txn);
    return stop;
}

/* ---- writing ------------------------------------------------------------------------- */

static int put_in(MDB_txn *txn, appr_store_t *st, const appr_req_t *r)
{
    cJSON *o = appr_req_json(r);
    char *text = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!text)
        return ENOMEM;
    size_t n = strlen(text);
    int rc = E2BIG;
    if (n <= APPR_REQ_MAX_BYTES) {
        uint8_t kb[8];
        be64_put(kb, r->id);
        MDB_val k = {8, kb}, v = {n, text};
        rc = mdb_put(txn, st->reqs, &k, &v, 0);
    }
    free(text);
    return rc;
}

static appr_key_t key_of(const appr_req_t *r)
{
    return (appr_key_t){r->iss, r->sub, r->role, r->target, r->fingerprint};
}

static int grant_put(MDB_txn *txn, appr_store_t *st, const appr_req_t *r, bool add)
{
    uint8_t kb[40];
    appr_key_t key = key_of(r);
    grant_key(&key, kb, r->id);
    MDB_val k = {40, kb}, v = {0, ""};
    int rc = add ? mdb_put(txn, st->grants, &k, &v, 0) : mdb_del(txn, st->grants, &k, NULL);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static appr_rc_t commit(appr_store_t *st, MDB_txn *txn, int rc, char *err, size_t errsz)
{
    if (!rc)
        rc = txn_commit(st, txn);
    else
        txn_abort(st, txn);
    if (rc && err)
        snprintf(err, errsz, "cannot write the approvals database: %s",
                 rc == E2BIG ? "request too large" : mdb_strerror(rc));
    return rc ? APPR_ERR : APPR_OK;
}

appr_rc_t appr_create(appr_store_t *st, const appr_req_t *r, char *err, size_t errsz)
{
    if (st->pg)
        return apg_create(st->pg, r, err, errsz);
    MDB_txn *txn;
    int rc = txn_begin(st, true, &txn);
    if (rc) {
        snprintf(err, errsz, "%s", mdb_strerror(rc));
        return APPR_ERR;
    }
    return commit(st, txn, put_in(txn, st, r), err, errsz);
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* Load id for a change in a write transaction (left open only on APPR_OK). An
 * APPR_ERR is described in err, if given. */
static appr_rc_t load_for_write(appr_store_t *st, uint64_t id, MDB_txn **txn, appr_req_t *r,
                                char *err, size_t errsz)
{
    appr_rc_t rc = APPR_ERR;
    if (txn_begin(st, true, txn) == 0) {
        rc = get_in(*txn, st, id, r);
        if (rc != APPR_OK)
            txn_abort(st, *txn);
    }
    if (rc == APPR_ERR && err)
        snprintf(err, errsz, "cannot read the approvals database");
    return rc;
}

appr_rc_t appr_decide(appr_store_t *st, uint64_t id, const appr_decision_t *d, appr_req_t *out,
                      char *err, size_t errsz)
{
    if (st->pg)
        return apg_decide(st->pg, id, d, out, err, errsz);
    MDB_txn *txn;
    appr_req_t r;
    appr_rc_t rc = load_for_write(st, id, &txn, &r, err, errsz);
    if (rc != APPR_OK)
        return rc;
    if (r.state != APPR_PENDING || r.expires_us <= d->now_us) {
        rc = r.state != APPR_PENDING ? APPR_NOT_PENDING : APPR_EXPIRED;
        txn_abort(st, txn);
        if (out)
            *out = r;
        else
            appr_req_free(&r);
        return rc;
    }
    r.state = d->approve ? APPR_APPROVED : APPR_DENIED;
    r.decided_us = d->now_us;
    r.by = dup_or_null(d->by);
    r.by_role = dup_or_null(d->by_role);
    r.os_user = dup_or_null(d->os_user);
    r.via = dup_or_null(d->via);
    r.reason = dup_or_null(d->reason);
    if (d->approve && d->grant_ms > 0)
        r.grant_until_us = d->now_us + d->grant_ms * 1000;
    int w = put_in(txn, st, &r);
    if (!w && d->approve && (r.grant_until_us || r.reject))
        w = grant_put(txn, st, &r, true);
    rc = commit(st, txn, w, err, errsz);
    if (out)
        *out = r;
    else
        appr_req_free(&r);
    return rc;
}

appr_rc_t appr_close_pending(appr_store_t *st, uint64_t id, appr_state_t to, int64_t now_us)
{
    if (st->pg)
        return apg_close_pending(st->pg, id, to, now_us);
    MDB_txn *txn;
    appr_req_t r;
    appr_rc_t rc = load_for_write(st, id, &txn, &r, NULL, 0);
    if (rc != APPR_OK)
        return rc;
    if (r.state != APPR_PENDING) {
        txn_abort(st, txn);
        appr_req_free(&r);
        return APPR_NOT_PENDING;
    }
    r.state = to;
    r.decided_us = now_us;
    r.via = dup_or_null("gateway");
    rc = commit(st, txn, put_in(txn, st, &r), NULL, 0);
    appr_req_free(&r);
    return rc;
}

appr_rc_t appr_revoke(appr_store_t *st, uint64_t id, const char *by, int64_t now_us, char *err,
                      size_t errsz)
{
    if (st->pg)
        return apg_revoke(st->pg, id, by, now_us, err, errsz);
    MDB_txn *txn;
    appr_req_t r;
    appr_rc_t rc = load_for_write(st, id, &txn, &r, err, errsz);
    if (rc != APPR_OK)
        return rc;
    if (!grant_usable(&r, now_us)) {
        txn_abort(st, txn);
        appr_req_free(&r);
        return APPR_NOT_GRANT;
    }
    r.revoked = true;
    r.revoked_by = dup_or_null(by);
    int w = put_in(txn, st, &r);
    if (!w)
        w = grant_put(txn, st, &r, false);
    rc = commit(st, txn, w, err, errsz);
    appr_req_free(&r);
    return rc;
}

/* Marks a one-use grant used (a timed grant is never used up); with `check`, only
 * when appr_claim_refusal finds nothing against it (APPR_NOT_GRANT, why says what). */
static appr_rc_t use_grant(appr_store_t *st, uint64_t id, bool check, char *why, size_t whysz)
{
    MDB_txn *txn;
    appr_req_t r;
    appr_rc_t rc = load_for_write(st, id, &txn, &r, why, whysz);
    if (rc != APPR_OK)
        return rc;
    const char *no = check ? appr_claim_refusal(&r) : NULL;
    if (no) {
        snprintf(why, whysz, "%s", no);
        txn_abort(st, txn);
        appr_req_free(&r);
        return APPR_NOT_GRANT;
    }
    int w = 0;
    if (!r.grant_until_us) {
        r.used = true;
        w = put_in(txn, st, &r);
        if (!w)
            w = grant_put(txn, st, &r, false);
    }
    rc = commit(st, txn, w, why, whysz);
    appr_req_free(&r);
    return rc;
}

appr_rc_t appr_consume(appr_store_t *st, uint64_t id)
{
    return st->pg ? apg_consume(st->pg, id) : use_grant(st, id, false, NULL, 0);
}

/* Why a one-use grant cannot be used (NULL: it can). */
const char *appr_claim_refusal(const appr_req_t *r)
{
    if (r->state != APPR_APPROVED)
        return "not approved";
    if (r->revoked)
        return "revoked";
    if (!r->grant_until_us && (r->used || !r->reject))
        return r->used ? "already used" : "not a grant";
    return NULL;
}

appr_rc_t appr_claim(appr_store_t *st, uint64_t id, char *why, size_t whysz)
{
    return st->pg ? apg_claim(st->pg, id, why, whysz) : use_grant(st, id, true, why, whysz);
}

appr_rc_t appr_prune(appr_store_t *st, int64_t before_us, int64_t now_us, size_t max,
                     size_t *pruned)
{
    if (st->pg)
        return apg_prune(st->pg, before_us, now_us, max, pruned);
    MDB_txn *txn;
    MDB_cursor *c;
    *pruned = 0;
    if (txn_begin(st, true, &txn))
        return APPR_ERR;
    if (mdb_cursor_open(txn, st->reqs, &c)) {
        txn_abort(st, txn);
        return APPR_ERR;
    }
    MDB_val k, v;
    int rc = 0;
    for (int g = mdb_cursor_get(c, &k, &v, MDB_FIRST); g == 0 && !rc && *pruned < max;
         g = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        appr_req_t r;
        if (appr_req_parse(v.mv_data, v.mv_size, &r)) {
            rc = mdb_cursor_del(c, 0); /* unreadable: nothing can use it */
            (*pruned)++;
            continue;
        }
        bool young = r.created_us >= before_us; /* ids grow with time: stop here */
        bool keep = (r.state == APPR_PENDING && r.expires_us > now_us) || grant_usable(&r, now_us);
        if (!young && !keep) {
            rc = grant_put(txn, st, &r, false);
            if (!rc)
                rc = mdb_cursor_del(c, 0);
            (*pruned)++;
        }
        appr_req_free(&r);
        if (young)
            break;
    }
    mdb_cursor_close(c);
    return commit(st, txn, rc, NULL, 0);
}

/* ---- who may decide ------------------------------------------------------------------- */

static bool listed(const appr_req_t *r, const char *role)
{
    for (size_t i = 0; i < r->n_approvers; i++)
        if (!strcmp(r->approvers[i], role))
            return true;
    return false;
}

bool appr_may_decide(const appr_req_t *r, const char *role, const char *iss, const char *sub,
                     char *why, size_t whysz)
{
    if (!role || !listed(r, role)) {
        snprintf(why, whysz, "role \"%s\" is not among the approvers of request %llu",
                 role ? role : "", (unsigned long long)r->id);
        return false;
    }
    if (sub && r->sub && !strcmp(sub, r->sub) && !strcmp(iss ? iss : "", r->iss ? r->iss : "")) {
        snprintf(why, whysz, "nobody approves their own request (%s made request %llu)", sub,
                 (unsigned long long)r->id);
        return false;
    }
    return true;
}

const char *appr_cli_approver_role(const cfg_t *cfg, const appr_req_t *r, const char *name,
                                   char *why, size_t whysz)
{
    if (!name || !*name) {
        snprintf(why, whysz, "no approver name");
        return NULL;
    }
    if (r->sub && !strcmp(name, r->sub)) {
        snprintf(why, whysz, "nobody approves their own request (%s made request %llu)", name,
                 (unsigned long long)r->id);
        return NULL;
    }
    for (size_t i = 0; i < r->n_approvers; i++) {
        const cfg_role_t *role = cfg_find_role(cfg, r->approvers[i]);
        for (size_t j = 0; role && j < role->n_identities; j++)
            if (role->identities[j].sub && glob_match(role->identities[j].sub, name))
                return role->name;
    }
    snprintf(why, whysz,
             "\"%s\" is not an identity of an approver role of request %llu (approvers: ", name,
             (unsigned long long)r->id);
    for (size_t i = 0; i < r->n_approvers; i++) {
        size_t n = strlen(why);
        snprintf(why + n, whysz - n, "%s%s", i ? ", " : "", r->approvers[i]);
    }
    size_t n = strlen(why);
    snprintf(why + n, whysz - n, ")");
    return NULL;
}

bool appr_parse_duration(const char *s, int64_t *ms)
{
    return s && dur_parse(s, ms) && *ms > 0;
}

/* ---- shared by the backends (approval/internal.h) --------------------------------- */

bool appr_grant_usable(const appr_req_t *r, int64_t now_us)
{
    return grant_usable(r, now_us);
}

appr_rc_t appr_copy(const appr_req_t *src, appr_req_t *dst)
{
    cJSON *o = appr_req_json(src);
    char *text = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    int rc = text ? appr_req_parse(text, strlen(text), dst) : -1;
    free(text);
    if (rc)
        memset(dst, 0, sizeof(*dst));
    return rc ? APPR_ERR : APPR_OK;
}

uint64_t appr_next_id(appr_store_t *st)
{
    return st->pg ? apg_next_id(st->pg) : 0;
}

bool appr_shared(const appr_store_t *st)
{
    return st->pg != NULL;
}

bool appr_available(appr_store_t *st, char *why, size_t whysz)
{
    return st->pg ? apg_available(st->pg, why, whysz) : true;
}

appr_store_t *appr_open_cfg(const cfg_t *c, char *err, size_t errsz)
{
    if (c->state.postgres)
        return appr_pg_open(c, NULL, NULL, err, errsz);
    return appr_open(c->audit.path, err, errsz);
}
