/*
 * audit_verify: walk the records in key order and the checkpoints, and name
 * the first record that was changed, removed, inserted or reordered.
 *
 * What each check catches (docs/audit.md has the table):
 *  - stored hash != SHA-256(prev_hash || canonical bytes): the record changed;
 *  - a key missing in the sequence: a record removed;
 *  - the "seq" inside a record differs from its key: renumbering (a removal or
 *    insertion that shifted later records) or a swap;
 *  - prev_hash != the previous record's hash: the previous record was
 *    replaced, or a record was inserted (then prev_hash names the one before);
 *  - a checkpoint whose hash differs from its record's: the chain was
 *    rewritten consistently since the previous checkpoint (only a signature
 *    can catch that);
 *  - a checkpoint beyond the last record: the tail was truncated.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit/internal.h"

typedef struct cp {
    uint64_t seq;
    uint8_t hash[AUDIT_HASH_LEN];
    bool signed_, sig_ok, damaged, other_key;
} cp_t;

typedef struct walk {
    audit_verify_result_t *res;
    cp_t *cps;
    size_t ncp, next_cp;
    bool have_key;
    uint64_t last_key, last_good_cp;
    uint8_t prev[AUDIT_HASH_LEN], prev2[AUDIT_HASH_LEN];
    bool have_prev2;
} walk_t;

static int fail(walk_t *w, uint64_t seq, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(walk_t *w, uint64_t seq, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->res->problem, sizeof(w->res->problem), fmt, ap);
    va_end(ap);
    w->res->ok = false;
    w->res->bad_seq = seq;
    return 1;
}

static int load_checkpoints(MDB_txn *txn, MDB_dbi dbi, EVP_PKEY *key, const uint8_t *key_id,
                            walk_t *w)
{
    MDB_cursor *c;
    MDB_val k, v;
    size_t cap = 0;
    if (mdb_cursor_open(txn, dbi, &c))
        return -1;
    for (int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (w->ncp == cap) {
            cap = cap ? cap * 2 : 64;
            cp_t *n = realloc(w->cps, cap * sizeof(*n));
            if (!n) {
                mdb_cursor_close(c);
                return -1;
            }
            w->cps = n;
        }
        cp_t *p = &w->cps[w->ncp++];
        memset(p, 0, sizeof(*p));
        p->seq = k.mv_size == 8 ? be64_get(k.mv_data) : 0;
        cp_view_t cv;
        if (!cp_view(v.mv_data, v.mv_size, &cv) || cv.seq != p->seq) {
            p->damaged = true;
            continue;
        }
        memcpy(p->hash, cv.hash, AUDIT_HASH_LEN);
        p->signed_ = cv.sig != NULL;
        if (p->signed_ && key) {
            p->other_key = !cv.has_key || memcmp(cv.key_id, key_id, AUDIT_HASH_LEN) != 0;
            p->sig_ok =
                !p->other_key && sign_verify(key, cv.canon, cv.canon_len, cv.sig, cv.sig_len);
        }
    }
    mdb_cursor_close(c);
    return 0;
}

/* Problems of checkpoint p alone (its bytes and signature). */
static int check_cp(walk_t *w, const cp_t *p, bool *seen_signed)
{
    audit_verify_result_t *res = w->res;
    res->checkpoints++;
    if (p->damaged)
        return fail(w, p->seq, "checkpoint %llu is damaged (not a well-formed checkpoint)",
                    (unsigned long long)p->seq);
    if (p->signed_) {
        res->checkpoints_signed++;
        *seen_signed = true;
        if (w->have_key && p->other_key)
            return fail(w, p->seq, "checkpoint %llu is signed by another key",
                        (unsigned long long)p->seq);
        if (w->have_key && !p->sig_ok)
            return fail(w, p->seq,
                        "checkpoint %llu: bad signature (the checkpoint was changed or forged)",
                        (unsigned long long)p->seq);
    } else if (w->have_key && *seen_signed) {
        return fail(w, p->seq, "checkpoint %llu is not signed, though earlier ones are",
                    (unsigned long long)p->seq);
    }
    return 0;
}

static const cp_t *cp_at(const walk_t *w, uint64_t seq)
{
    size_t lo = 0, hi = w->ncp;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (w->cps[mid].seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < w->ncp && w->cps[lo].seq == seq ? &w->cps[lo] : NULL;
}

/* A record's "seq" differs from its key: say what most likely happened. */
static int misplaced(walk_t *w, MDB_txn *txn, MDB_dbi recs, uint64_t k, uint64_t s,
                     const uint8_t *prev_hash)
{
    if (s + 1 == k && w->have_prev2 && !memcmp(prev_hash, w->prev2, AUDIT_HASH_LEN))
        return fail(w, k - 1,
                    "record %llu was inserted: the record stored after it is the original "
                    "record %llu and links to record %llu",
                    (unsigned long long)(k - 1), (unsigned long long)s,
                    (unsigned long long)(k - 2));
    if (s > k) {
        uint8_t kb[8];
        be64_put(kb, s);
        MDB_val sk = {8, kb}, sv;
        rec_view_t rv;
        rec_env_t e;
        if (mdb_get(txn, recs, &sk, &sv) == 0 && rec_view(sv.mv_data, sv.mv_size, &rv) &&
            rec_env_parse(rv.canon, rv.canon_len, &e)) {
            bool swapped = e.seq == k;
            cJSON_Delete(e.json);
            if (swapped)
                return fail(w, k, "records %llu and %llu were swapped (reordered)",
                            (unsigned long long)k, (unsigned long long)s);
        }
        return fail(w, k,
                    "record %llu was removed: the record stored under key %llu is record %llu "
                    "(later records were renumbered)",
                    (unsigned long long)k, (unsigned long long)k, (unsigned long long)s);
    }
    return fail(w, k, "record %llu was reordered: the record stored there is record %llu",
                (unsigned long long)k, (unsigned long long)s);
}

/* One record; 0 to go on. */
static int check_record(walk_t *w, MDB_txn *txn, MDB_dbi recs, const MDB_val *k, const MDB_val *v,
                        bool *seen_signed)
{
    audit_verify_result_t *res = w->res;
    uint64_t key = k->mv_size == 8 ? be64_get(k->mv_data) : 0;
    if (!key)
        return fail(w, w->last_key + 1, "a record with a malformed key follows record %llu",
                    (unsigned long long)w->last_key);
    if (key != w->last_key + 1) {
        uint64_t e = w->last_key + 1;
        if (key == e + 1)
            return fail(w, e, "record %llu was removed", (unsigned long long)e);
        return fail(w, e, "records %llu to %llu were removed", (unsigned long long)e,
                    (unsigned long long)(key - 1));
    }
    audit_record_t rec;
    cJSON *json;
    reader_fill(&rec, k, v, &json);
    int ret = 0;
    if (!rec.hash)
        ret = fail(w, key, "record %llu was changed (the stored value is truncated)",
                   (unsigned long long)key);
    else if (!rec.hash_ok)
        ret = fail(w, key, "record %llu was changed: its contents do not match its hash",
                   (unsigned long long)key);
    else if (!rec.parsed)
        ret = fail(w, key, "record %llu was changed: it is not a well-formed record",
                   (unsigned long long)key);
    else if (rec.seq != key)
        ret = misplaced(w, txn, recs, key, rec.seq, rec.prev_hash);
    else if (memcmp(rec.prev_hash, w->prev, AUDIT_HASH_LEN) != 0) {
        if (w->have_prev2 && !memcmp(rec.prev_hash, w->prev2, AUDIT_HASH_LEN))
            ret = fail(w, key - 1, "record %llu was inserted: record %llu links to record %llu",
                       (unsigned long long)(key - 1), (unsigned long long)key,
                       (unsigned long long)(key - 2));
        else
            ret = fail(w, key - 1,
                       "record %llu was changed or replaced: record %llu does not link to it",
                       (unsigned long long)(key - 1), (unsigned long long)key);
    }
    if (!ret) {
        const cJSON *ev =
            rec.type == AUDIT_REC_NOTE ? cJSON_GetObjectItemCaseSensitive(rec.data, "event") : NULL;
        res->clean_end = cJSON_IsString(ev) && !strcmp(ev->valuestring, "close");
        memcpy(w->prev2, w->prev, AUDIT_HASH_LEN);
        w->have_prev2 = true;
        memcpy(w->prev, rec.hash, AUDIT_HASH_LEN);
    }
    cJSON_Delete(json);
    if (ret)
        return ret;
    w->last_key = key;
    res->records++;
    res->last_seq = key;
    /* checkpoints up to this record */
    for (; w->next_cp < w->ncp && w->cps[w->next_cp].seq <= key; w->next_cp++) {
        const cp_t *p = &w->cps[w->next_cp];
        if ((ret = check_cp(w, p, seen_signed)) != 0)
            return ret;
        if (p->seq == key && memcmp(p->hash, w->prev, AUDIT_HASH_LEN) != 0)
            return fail(w, w->last_good_cp + 1,
                        "records %llu to %llu were rewritten: checkpoint %llu %s a different "
                        "hash for record %llu",
                        (unsigned long long)(w->last_good_cp + 1), (unsigned long long)key,
                        (unsigned long long)key, p->signed_ ? "signed" : "holds",
                        (unsigned long long)key);
        w->last_good_cp = p->seq;
        res->last_checkpoint_seq = p->seq;
    }
    return 0;
}

static int walk_records(walk_t *w, MDB_txn *txn, const audit_dbs_t *dbs)
{
    audit_verify_result_t *res = w->res;
    MDB_cursor *c;
    MDB_val k, v;
    bool seen_signed = false;
    if (mdb_cursor_open(txn, dbs->records, &c))
        return -1;
    int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
    uint64_t first = rc == 0 && k.mv_size == 8 ? be64_get(k.mv_data) : 0;
    int ret = 0;
    if (first > 1) {
        const cp_t *anchor = cp_at(w, first - 1);
        if (!anchor) {
            mdb_cursor_close(c);
            return fail(w, 1,
                        "records 1 to %llu were removed: the chain starts at record %llu and no "
                        "checkpoint anchors it",
                        (unsigned long long)(first - 1), (unsigned long long)first);
        }
        res->anchor_seq = first - 1;
        memcpy(w->prev, anchor->hash, AUDIT_HASH_LEN);
        w->last_key = first - 1;
    }
    /* checkpoints of retired records: signatures only */
    for (; w->next_cp < w->ncp && w->cps[w->next_cp].seq + 1 < first && !ret; w->next_cp++)
        ret = check_cp(w, &w->cps[w->next_cp], &seen_signed);
    if (first > 1 && !ret && w->next_cp < w->ncp) {
        ret = check_cp(w, &w->cps[w->next_cp], &seen_signed); /* the anchor */
        w->last_good_cp = w->cps[w->next_cp].seq;
        res->last_checkpoint_seq = w->last_good_cp;
        w->next_cp++;
    }
    res->first_seq = first;
    for (; rc == 0 && !ret; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT))
        ret = check_record(w, txn, dbs->records, &k, &v, &seen_signed);
    mdb_cursor_close(c);
    if (ret)
        return ret;
    if (rc != MDB_NOTFOUND)
        return -1;
    if (w->next_cp < w->ncp) {
        uint64_t s = w->cps[w->ncp - 1].seq;
        for (; w->next_cp < w->ncp && !ret; w->next_cp++)
            ret = check_cp(w, &w->cps[w->next_cp], &seen_signed);
        if (ret)
            return ret;
        return fail(w, w->last_key + 1,
                    "the tail was truncated: records %llu to %llu were removed (checkpoint %llu "
                    "vouches for record %llu, the records end at %llu)",
                    (unsigned long long)(w->last_key + 1), (unsigned long long)s,
                    (unsigned long long)s, (unsigned long long)s, (unsigned long long)w->last_key);
    }
    res->unsigned_tail =
        w->last_key - (w->last_good_cp < w->last_key ? w->last_good_cp : w->last_key);
    return 0;
}

int audit_verify(audit_reader_t *r, const char *key_file, audit_verify_result_t *res)
{
    memset(res, 0, sizeof(*res));
    res->ok = true;
    EVP_PKEY *key = NULL;
    uint8_t key_id[AUDIT_HASH_LEN];
    if (key_file) {
        key = sign_load_key(key_file, false, res->problem, sizeof(res->problem));
        if (!key || !sign_key_id(key, key_id)) {
            if (key)
                snprintf(res->problem, sizeof(res->problem), "%s: unusable key", key_file);
            EVP_PKEY_free(key);
            res->ok = false;
            return -1;
        }
    }
    audit_dbs_t dbs;
    MDB_env *env = reader_env(r, &dbs);
    MDB_txn *txn;
    walk_t w = {.res = res, .have_key = key != NULL};
    int ret = -1;
    if (store_read_txn(env, &txn) == 0) {
        if (load_checkpoints(txn, dbs.checkpoints, key, key_id, &w) == 0)
            ret = walk_records(&w, txn, &dbs);
        mdb_txn_abort(txn);
    }
    res->signatures_checked = key != NULL;
    if (!key && res->checkpoints_signed)
        snprintf(res->warning, sizeof(res->warning),
                 "%llu checkpoints are signed but no key was given: signatures not checked",
                 (unsigned long long)res->checkpoints_signed);
    EVP_PKEY_free(key);
    free(w.cps);
    if (ret < 0) {
        snprintf(res->problem, sizeof(res->problem), "cannot read the audit store");
        res->ok = false;
        return -1;
    }
    return 0;
}
