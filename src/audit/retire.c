/*
 * Retention: retire the oldest records while keeping the rest verifiable.
 *
 * The cut is always at a checkpoint C: records 1..C and checkpoints before C
 * are deleted, checkpoint C stays and becomes the anchor that vouches (signed,
 * with a signing key) for record C's hash, which record C+1 names as its
 * prev_hash. `bulwark audit verify` then starts the chain at C+1.
 */
#include <errno.h>
#include <string.h>

#include "audit/internal.h"

#define RETIRE_CHUNK 2000
#define RECORD_OVERHEAD 24 /* node header and key, roughly, per record */

/* The newest checkpoint at or below cut and below head; 0 if none. */
static uint64_t anchor_at_or_below(MDB_txn *txn, MDB_dbi dbi, uint64_t cut, uint64_t head)
{
    if (cut >= head)
        cut = head - 1;
    MDB_cursor *c;
    if (cut == 0 || mdb_cursor_open(txn, dbi, &c))
        return 0;
    uint8_t kb[8];
    be64_put(kb, cut + 1);
    MDB_val k = {8, kb}, v;
    int rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    rc = rc == 0 ? mdb_cursor_get(c, &k, &v, MDB_PREV) : mdb_cursor_get(c, &k, &v, MDB_LAST);
    uint64_t a = rc == 0 && k.mv_size == 8 ? be64_get(k.mv_data) : 0;
    mdb_cursor_close(c);
    return a <= cut ? a : 0;
}

/* The key reached after walking oldest records worth want bytes. */
static uint64_t cut_for_bytes(MDB_txn *txn, MDB_dbi dbi, uint64_t want)
{
    MDB_cursor *c;
    if (mdb_cursor_open(txn, dbi, &c))
        return 0;
    MDB_val k, v;
    uint64_t sum = 0, key = 0;
    for (int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0 && sum < want;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        sum += v.mv_size + RECORD_OVERHEAD;
        key = k.mv_size == 8 ? be64_get(k.mv_data) : key;
    }
    mdb_cursor_close(c);
    return key;
}

static int plan(MDB_env *env, const audit_dbs_t *dbs, const retire_params_t *p, retire_result_t *r)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
    if (rc)
        return rc;
    MDB_cursor *c;
    MDB_val k, v;
    uint64_t first = 0;
    if ((rc = mdb_cursor_open(txn, dbs->records, &c)) == 0) {
        if (mdb_cursor_get(c, &k, &v, MDB_FIRST) == 0 && k.mv_size == 8)
            first = be64_get(k.mv_data);
        mdb_cursor_close(c);
    }
    uint64_t cut = 0;
    if (first && p->head_seq > first) {
        if (p->before_us > 0) {
            uint64_t f = store_seq_at(txn, dbs->records, p->before_us);
            if (f > first)
                cut = f - 1, r->reason = "age";
        }
        uint64_t live = store_live_bytes(txn, dbs);
        if (p->max_size && (live > p->max_size || p->emergency)) {
            uint64_t want = live > p->max_size / 4 * 3 ? live - p->max_size / 4 * 3 : 0;
            if (p->emergency && want < live / 4)
                want = live / 4;
            uint64_t s = cut_for_bytes(txn, dbs->records, want);
            if (s > cut)
                cut = s, r->reason = p->emergency ? "map_full" : "size";
        }
    }
    r->anchor = cut ? anchor_at_or_below(txn, dbs->checkpoints, cut, p->head_seq) : 0;
    if (r->anchor < first)
        r->anchor = 0;
    r->first = first;
    mdb_txn_abort(txn);
    return 0;
}

/* Remove seq from its session's index; drop the session once it has no records. */
static int unindex(MDB_txn *txn, const audit_dbs_t *dbs, const char *sid, uint64_t seq)
{
    uint8_t sb[8];
    be64_put(sb, seq);
    MDB_val k = {strlen(sid), (void *)sid}, v = {8, sb};
    int rc = mdb_del(txn, dbs->session_recs, &k, &v);
    if (rc && rc != MDB_NOTFOUND)
        return rc;
    if (mdb_get(txn, dbs->session_recs, &k, &v) == 0)
        return 0;
    if (mdb_get(txn, dbs->sessions, &k, &v) != 0)
        return 0;
    cJSON *j = cJSON_ParseWithLength(v.mv_data, v.mv_size);
    const cJSON *start = cJSON_GetObjectItemCaseSensitive(j, "start");
    const cJSON *sub = cJSON_GetObjectItemCaseSensitive(j, "sub");
    size_t sl = strlen(sid);
    uint8_t key[AUDIT_SUB_KEY_MAX + 1 + 8 + AUDIT_SID_MAX];
    if (cJSON_IsNumber(start)) {
        be64_put(key, (uint64_t)start->valuedouble);
        memcpy(key + 8, sid, sl);
        MDB_val tk = {8 + sl, key};
        (void)mdb_del(txn, dbs->sessions_time, &tk, NULL);
        if (cJSON_IsString(sub)) {
            size_t ul = strlen(sub->valuestring);
            ul = ul > AUDIT_SUB_KEY_MAX ? AUDIT_SUB_KEY_MAX : ul;
            memcpy(key, sub->valuestring, ul);
            key[ul] = 0;
            be64_put(key + ul + 1, (uint64_t)start->valuedouble);
            memcpy(key + ul + 9, sid, sl);
            MDB_val sk = {ul + 9 + sl, key};
            (void)mdb_del(txn, dbs->sessions_sub, &sk, NULL);
        }
    }
    cJSON_Delete(j);
    rc = mdb_del(txn, dbs->sessions, &k, NULL);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Delete every record at or below end (a checkpoint) in one transaction, so
 * that after any commit the remaining chain starts right after a checkpoint
 * (a crash between two of these leaves a verifiable store); *done counts them. */
static int delete_upto(MDB_env *env, const audit_dbs_t *dbs, uint64_t end, uint64_t *done)
{
    MDB_txn *txn;
    MDB_cursor *c = NULL;
    int rc = mdb_txn_begin(env, NULL, 0, &txn);
    if (rc)
        return rc;
    uint64_t n = 0;
    MDB_val k, v;
    if ((rc = mdb_cursor_open(txn, dbs->records, &c)) != 0)
        goto out;
    for (;;) {
        rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
        if (rc == MDB_NOTFOUND)
            break;
        if (rc)
            goto out;
        if (k.mv_size != 8 || be64_get(k.mv_data) > end)
            break;
        uint64_t seq = be64_get(k.mv_data);
        rec_view_t rv;
        rec_env_t env_;
        if (rec_view(v.mv_data, v.mv_size, &rv) && rec_env_parse(rv.canon, rv.canon_len, &env_)) {
            rc = env_.session ? unindex(txn, dbs, env_.session, seq) : 0;
            cJSON_Delete(env_.json);
            if (rc)
                goto out;
        }
        if ((rc = mdb_cursor_del(c, 0)) != 0)
            goto out;
        n++;
    }
    mdb_cursor_close(c);
    c = NULL;
    rc = mdb_txn_commit(txn);
    txn = NULL;
    if (!rc)
        *done += n;
    return rc;
out:
    if (c)
        mdb_cursor_close(c);
    if (txn)
        mdb_txn_abort(txn);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* The checkpoint that ends a step: the newest in [first, target], else the
 * oldest after target (at most anchor, which is one). */
static int step_end(MDB_env *env, const audit_dbs_t *dbs, uint64_t first, uint64_t target,
                    uint64_t anchor, uint64_t *end)
{
    MDB_txn *txn;
    MDB_cursor *c;
    int rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
    if (rc)
        return rc;
    if (target > anchor)
        target = anchor;
    *end = anchor;
    if ((rc = mdb_cursor_open(txn, dbs->checkpoints, &c)) == 0) {
        uint8_t kb[8];
        be64_put(kb, target + 1);
        MDB_val k = {8, kb}, v;
        int g = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
        uint64_t after = g == 0 && k.mv_size == 8 ? be64_get(k.mv_data) : 0;
        g = g == 0 ? mdb_cursor_get(c, &k, &v, MDB_PREV) : mdb_cursor_get(c, &k, &v, MDB_LAST);
        uint64_t before = g == 0 && k.mv_size == 8 ? be64_get(k.mv_data) : 0;
        if (before >= first && before <= target)
            *end = before;
        else if (after && after <= anchor)
            *end = after;
        mdb_cursor_close(c);
    }
    mdb_txn_abort(txn);
    return rc;
}

/* After the records: drop checkpoints older than the anchor and note the
 * anchor. Being a transaction of its own also lets LMDB reuse the pages the
 * last chunk freed (it reuses pages freed two transactions back). */
static int finish(MDB_env *env, const audit_dbs_t *dbs, uint64_t anchor)
{
    MDB_txn *txn;
    MDB_cursor *c;
    MDB_val k, v;
    int rc = mdb_txn_begin(env, NULL, 0, &txn);
    if (rc)
        return rc;
    if ((rc = mdb_cursor_open(txn, dbs->checkpoints, &c)) == 0) {
        while ((rc = mdb_cursor_get(c, &k, &v, MDB_FIRST)) == 0 && k.mv_size == 8 &&
               be64_get(k.mv_data) < anchor)
            if ((rc = mdb_cursor_del(c, 0)) != 0)
                break;
        mdb_cursor_close(c);
    }
    if (rc == 0 || rc == MDB_NOTFOUND) {
        uint8_t ab[8];
        be64_put(ab, anchor);
        MDB_val mk = {6, (void *)"anchor"}, mv = {8, ab};
        rc = mdb_put(txn, dbs->meta, &mk, &mv, 0);
    }
    if (rc) {
        mdb_txn_abort(txn);
        return rc;
    }
    return mdb_txn_commit(txn);
}

int store_retire(MDB_env *env, const audit_dbs_t *dbs, const retire_params_t *p, retire_result_t *r)
{
    memset(r, 0, sizeof(*r));
    r->reason = "none";
    int rc = plan(env, dbs, p, r);
    if (rc || !r->anchor)
        return rc;
    /* Cut in steps that end at checkpoints: about RETIRE_CHUNK records, and at
     * least two transactions (for the page reuse described at finish()). */
    size_t chunk = r->anchor - r->first + 1;
    chunk = chunk > 1 ? (chunk + 1) / 2 : 1;
    chunk = chunk > RETIRE_CHUNK ? RETIRE_CHUNK : chunk;
    uint64_t first = r->first;
    while (first <= r->anchor) {
        uint64_t end;
        rc = step_end(env, dbs, first, first + chunk - 1, r->anchor, &end);
        if (!rc)
            rc = delete_upto(env, dbs, end, &r->records);
        if (rc == MDB_MAP_FULL && chunk > 1) {
            chunk /= 4; /* even a delete needs pages for copy-on-write: take smaller bites */
            continue;
        }
        if (rc)
            return rc;
        first = end + 1;
    }
    return finish(env, dbs, r->anchor);
}
