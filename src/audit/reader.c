/* The reading side: a read-only environment and read transactions (any process). */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "audit/internal.h"

struct audit_reader {
    MDB_env *env;
    audit_dbs_t dbs;
    _Atomic int *borrowed; /* the writer's count of shared readers (audit_reader_shared) */
};

audit_reader_t *reader_borrow(MDB_env *env, const audit_dbs_t *dbs, _Atomic int *count)
{
    audit_reader_t *r = calloc(1, sizeof(*r));
    if (r) {
        r->env = env;
        r->dbs = *dbs;
        r->borrowed = count;
        atomic_fetch_add(count, 1);
    }
    return r;
}

audit_reader_t *audit_reader_open(const char *path, char *err, size_t errsz)
{
    audit_reader_t *r = calloc(1, sizeof(*r));
    if (!r) {
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    if (store_open(path, 0, false, false, &r->env, &r->dbs, err, errsz) != 0) {
        free(r);
        return NULL;
    }
    return r;
}

void audit_reader_close(audit_reader_t *r)
{
    if (!r)
        return;
    if (r->borrowed)
        atomic_fetch_sub(r->borrowed, 1);
    else
        mdb_env_close(r->env);
    free(r);
}

MDB_env *reader_env(audit_reader_t *r, audit_dbs_t *dbs)
{
    *dbs = r->dbs;
    return r->env;
}

/* Fill rec from one stored key/value; rec->data points into *json (caller deletes). */
void reader_fill(audit_record_t *rec, const MDB_val *k, const MDB_val *v, cJSON **json)
{
    memset(rec, 0, sizeof(*rec));
    *json = NULL;
    rec->key = k->mv_size == 8 ? be64_get(k->mv_data) : 0;
    rec_view_t rv;
    if (!rec_view(v->mv_data, v->mv_size, &rv))
        return;
    rec->prev_hash = rv.prev;
    rec->hash = rv.hash;
    rec->canon = rv.canon;
    rec->canon_len = rv.canon_len;
    uint8_t h[AUDIT_HASH_LEN];
    const void *parts[] = {rv.canon};
    const size_t lens[] = {rv.canon_len};
    chain_hash(h, rv.prev, parts, lens, 1);
    rec->hash_ok = memcmp(h, rv.hash, AUDIT_HASH_LEN) == 0;
    rec_env_t e;
    if (!rec_env_parse(rv.canon, rv.canon_len, &e))
        return;
    *json = e.json;
    rec->seq = e.seq;
    rec->ts = e.ts;
    rec->type_name = e.type;
    rec->type = audit_rec_type_parse(e.type);
    rec->session = e.session;
    rec->data = e.data;
    rec->parsed = true;
}

/* A read transaction with a cursor on dbi; 0, or -1 with nothing left open. */
static int cursor_begin(audit_reader_t *r, MDB_dbi dbi, MDB_txn **txn, MDB_cursor **c)
{
    if (store_read_txn(r->env, txn))
        return -1;
    if (mdb_cursor_open(*txn, dbi, c)) {
        mdb_txn_abort(*txn);
        return -1;
    }
    return 0;
}

/* Ends a walk that stopped with LMDB status rc and callback status ret. */
static int cursor_end(MDB_txn *txn, MDB_cursor *c, int rc, int ret)
{
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
    return rc && rc != MDB_NOTFOUND && ret == 0 ? -1 : ret;
}

/* One stored record to fn, decoded. */
static int visit_record(const MDB_val *k, const MDB_val *v, audit_record_fn fn, void *arg)
{
    audit_record_t rec;
    cJSON *json;
    reader_fill(&rec, k, v, &json);
    int ret = fn(arg, &rec);
    cJSON_Delete(json);
    return ret;
}

int audit_reader_records(audit_reader_t *r, uint64_t from_seq, audit_record_fn fn, void *arg)
{
    MDB_txn *txn;
    MDB_cursor *c;
    if (cursor_begin(r, r->dbs.records, &txn, &c))
        return -1;
    uint8_t kb[8];
    be64_put(kb, from_seq);
    MDB_val k = {8, kb}, v;
    int ret = 0, rc;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0 && ret == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT))
        ret = visit_record(&k, &v, fn, arg);
    return cursor_end(txn, c, rc, ret);
}

int audit_reader_session_records(audit_reader_t *r, const char *sid, audit_record_fn fn, void *arg)
{
    MDB_txn *txn;
    MDB_cursor *c;
    if (cursor_begin(r, r->dbs.session_recs, &txn, &c))
        return -1;
    MDB_val k = {strlen(sid), (void *)sid}, sv;
    int ret = 0, rc;
    for (rc = mdb_cursor_get(c, &k, &sv, MDB_SET_KEY); rc == 0 && ret == 0;
         rc = mdb_cursor_get(c, &k, &sv, MDB_NEXT_DUP)) {
        if (sv.mv_size != 8)
            continue;
        MDB_val rk = {8, sv.mv_data}, rv;
        if (mdb_get(txn, r->dbs.records, &rk, &rv) != 0)
            continue; /* retired, or removed: verify reports the latter */
        ret = visit_record(&rk, &rv, fn, arg);
    }
    return cursor_end(txn, c, rc, ret);
}

uint64_t audit_reader_seq_at(audit_reader_t *r, int64_t ts_us)
{
    MDB_txn *txn;
    if (store_read_txn(r->env, &txn))
        return 0;
    uint64_t s = store_seq_at(txn, r->dbs.records, ts_us);
    mdb_txn_abort(txn);
    return s;
}

static const char *jstr(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* A number of the row, 0 if it is none or beyond +-2^53 (see present.c's dint). */
static int64_t jint(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsNumber(v) && v->valuedouble >= -9007199254740992.0 &&
                   v->valuedouble <= 9007199254740992.0
               ? (int64_t)v->valuedouble
               : 0;
}

void reader_session(audit_session_t *s, const cJSON *j, const char *id)
{
    *s = (audit_session_t){
        .id = id,
        .sub = jstr(j, "sub"),
        .iss = jstr(j, "iss"),
        .role = jstr(j, "role"),
        .target = jstr(j, "target"),
        .client = jstr(j, "client"),
        .application_name = jstr(j, "app"),
        .end_reason = jstr(j, "reason"),
        .start_us = jint(j, "start"),
        .end_us = jint(j, "end"),
        .first_seq = (uint64_t)jint(j, "first"),
    };
}

/* Look up one session and hand it to fn if it passes the filter; 0 = go on. */
static int visit_session(audit_reader_t *r, MDB_txn *txn, MDB_cursor *recs, const char *sid,
                         size_t sl, const audit_session_filter_t *f,
                         int (*fn)(void *, const audit_session_t *), void *arg)
{
    MDB_val k = {sl, (void *)sid}, v;
    if (mdb_get(txn, r->dbs.sessions, &k, &v) != 0)
        return 0;
    cJSON *j = cJSON_ParseWithLength(v.mv_data, v.mv_size);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return 0;
    }
    char id[AUDIT_SID_MAX + 1];
    memcpy(id, sid, sl < sizeof(id) ? sl : sizeof(id) - 1);
    id[sl < sizeof(id) ? sl : sizeof(id) - 1] = 0;
    audit_session_t s;
    reader_session(&s, j, id);
    int ret = 0;
    bool ok = s.start_us >= f->since_us && (!f->role || (s.role && !strcmp(s.role, f->role))) &&
              (!f->sub || (s.sub && !strcmp(s.sub, f->sub)));
    if (ok) {
        MDB_val sv;
        size_t n = 0;
        if (mdb_cursor_get(recs, &k, &sv, MDB_SET_KEY) == 0)
            mdb_cursor_count(recs, &n);
        s.records = n;
        ret = fn(arg, &s);
    }
    cJSON_Delete(j);
    return ret;
}

int audit_reader_sessions(audit_reader_t *r, const audit_session_filter_t *f,
                          int (*fn)(void *arg, const audit_session_t *s), void *arg)
{
    static const audit_session_filter_t none = {0};
    if (!f)
        f = &none;
    MDB_txn *txn;
    MDB_cursor *c = NULL, *recs = NULL;
    if (store_read_txn(r->env, &txn))
        return -1;
    int ret = -1, rc;
    uint8_t key[AUDIT_SUB_KEY_MAX + 1 + 8];
    size_t prefix = 0;
    MDB_dbi dbi = r->dbs.sessions_time;
    if (f->sub) {
        prefix = strlen(f->sub) > AUDIT_SUB_KEY_MAX ? AUDIT_SUB_KEY_MAX : strlen(f->sub);
        memcpy(key, f->sub, prefix);
        key[prefix++] = 0;
        dbi = r->dbs.sessions_sub;
    }
    be64_put(key + prefix, f->since_us > 0 ? (uint64_t)f->since_us : 0);
    if (mdb_cursor_open(txn, dbi, &c) || mdb_cursor_open(txn, r->dbs.session_recs, &recs))
        goto out;
    MDB_val k = {prefix + 8, key}, v;
    ret = 0;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0 && ret == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size < prefix + 8 || memcmp(k.mv_data, key, prefix) != 0)
            break;
        const char *sid = (const char *)k.mv_data + prefix + 8;
        ret = visit_session(r, txn, recs, sid, k.mv_size - prefix - 8, f, fn, arg);
    }
    if (rc && rc != MDB_NOTFOUND && ret == 0)
        ret = -1;
out:
    if (recs)
        mdb_cursor_close(recs);
    if (c)
        mdb_cursor_close(c);
    mdb_txn_abort(txn);
    return ret;
}
