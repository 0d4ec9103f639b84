/* Opening the LMDB environment, read-write (the writer) or read-only (the CLI). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "audit/internal.h"

static int mkdir_p(const char *path)
{
    char tmp[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof(tmp))
        return ENAMETOOLONG;
    memcpy(tmp, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (tmp[i] != '/' && tmp[i] != 0)
            continue;
        char c = tmp[i];
        tmp[i] = 0;
        if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
            return errno;
        tmp[i] = c;
    }
    return 0;
}

const char *store_strerror(int rc)
{
    if (rc == MDB_MAP_FULL)
        return "the audit store is full (map_size reached)";
    if (rc == ENOSPC)
        return "no space left on the device";
    return mdb_strerror(rc);
}

static int open_dbs(MDB_txn *txn, bool rw, audit_dbs_t *d)
{
    const unsigned c = rw ? MDB_CREATE : 0;
    struct {
        const char *name;
        unsigned flags;
        MDB_dbi *dbi;
    } t[] = {
        {"records", c, &d->records},
        {"checkpoints", c, &d->checkpoints},
        {"sessions", c, &d->sessions},
        {"session_recs", c | MDB_DUPSORT | MDB_DUPFIXED, &d->session_recs},
        {"sessions_time", c, &d->sessions_time},
        {"sessions_sub", c, &d->sessions_sub},
        {"meta", c, &d->meta},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        int rc = mdb_dbi_open(txn, t[i].name, t[i].flags, t[i].dbi);
        if (rc)
            return rc;
    }
    return 0;
}

static int check_format(MDB_txn *txn, const audit_dbs_t *d, bool rw, char *err, size_t errsz)
{
    MDB_val k = {6, (void *)"format"}, v;
    int rc = mdb_get(txn, d->meta, &k, &v);
    if (rc == MDB_NOTFOUND && rw) {
        v.mv_size = 1, v.mv_data = (void *)"1";
        rc = mdb_put(txn, d->meta, &k, &v, 0);
        if (rc)
            snprintf(err, errsz, "cannot initialise the audit store: %s", store_strerror(rc));
        return rc;
    }
    if (rc || v.mv_size != 1 || *(const char *)v.mv_data != '1') {
        snprintf(err, errsz, "not a Bulwark audit store of format 1");
        return rc ? rc : MDB_INCOMPATIBLE;
    }
    return 0;
}

int store_open(const char *path, uint64_t map_size, bool rw, bool nosync, MDB_env **envp,
               audit_dbs_t *dbs, char *err, size_t errsz)
{
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    int rc;
    *envp = NULL;
    if (rw && (rc = mkdir_p(path)) != 0) {
        snprintf(err, errsz, "%s: cannot create the directory: %s", path, strerror(rc));
        return rc;
    }
    if ((rc = mdb_env_create(&env)) != 0 || (rc = mdb_env_set_maxdbs(env, AUDIT_MAX_DBS)) != 0 ||
        (rw && (rc = mdb_env_set_mapsize(env, (size_t)map_size)) != 0)) {
        snprintf(err, errsz, "%s: %s", path, mdb_strerror(rc));
        goto fail;
    }
    unsigned flags = MDB_NOTLS | (rw ? (nosync ? MDB_NOSYNC : 0) : MDB_RDONLY);
    if ((rc = mdb_env_open(env, path, flags, 0600)) != 0) {
        if (rc == ENOENT)
            snprintf(err, errsz, "%s: no audit store here (the gateway creates it when it starts)",
                     path);
        else
            snprintf(err, errsz, "%s: cannot open the audit store: %s", path, mdb_strerror(rc));
        goto fail;
    }
    if ((rc = mdb_txn_begin(env, NULL, rw ? 0 : MDB_RDONLY, &txn)) != 0) {
        snprintf(err, errsz, "%s: %s", path, store_strerror(rc));
        goto fail;
    }
    if ((rc = open_dbs(txn, rw, dbs)) != 0) {
        if (rc == MDB_NOTFOUND)
            snprintf(err, errsz, "%s: not a Bulwark audit store (databases missing)", path);
        else
            snprintf(err, errsz, "%s: %s", path, store_strerror(rc));
        goto fail;
    }
    if ((rc = check_format(txn, dbs, rw, err, errsz)) != 0)
        goto fail;
    rc = mdb_txn_commit(txn); /* makes the dbi handles usable by later transactions */
    txn = NULL;
    if (rc) {
        snprintf(err, errsz, "%s: %s", path, store_strerror(rc));
        goto fail;
    }
    *envp = env;
    return 0;
fail:
    if (txn)
        mdb_txn_abort(txn);
    if (env)
        mdb_env_close(env);
    return rc ? rc : EINVAL;
}

uint64_t store_live_bytes(MDB_txn *txn, const audit_dbs_t *dbs)
{
    const MDB_dbi all[] = {1 /* MAIN_DBI: the names of the others */,
                           dbs->records,
                           dbs->checkpoints,
                           dbs->sessions,
                           dbs->session_recs,
                           dbs->sessions_time,
                           dbs->sessions_sub,
                           dbs->meta};
    uint64_t total = 0;
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        MDB_stat st;
        if (mdb_stat(txn, all[i], &st) == 0)
            total += (uint64_t)st.ms_psize *
                     (st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages);
    }
    return total;
}

int store_read_txn(MDB_env *env, MDB_txn **txn)
{
    int rc = mdb_txn_begin(env, NULL, MDB_RDONLY, txn);
    if (rc == MDB_MAP_RESIZED && mdb_env_set_mapsize(env, 0) == 0)
        rc = mdb_txn_begin(env, NULL, MDB_RDONLY, txn);
    return rc;
}

uint64_t store_used_bytes(MDB_env *env)
{
    MDB_envinfo info;
    MDB_stat st;
    MDB_txn *txn;
    /* LMDB refuses cursors on the free list in a write transaction. */
    if (mdb_txn_begin(env, NULL, MDB_RDONLY, &txn) != 0)
        return 0;
    if (mdb_env_info(env, &info) != 0 || mdb_env_stat(env, &st) != 0) {
        mdb_txn_abort(txn);
        return 0;
    }
    uint64_t pages = (uint64_t)info.me_last_pgno + 1, free_pages = 0;
    MDB_cursor *c;
    MDB_val k, v;
    if (mdb_cursor_open(txn, 0 /* FREE_DBI */, &c) == 0) {
        for (int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
             rc = mdb_cursor_get(c, &k, &v, MDB_NEXT))
            if (v.mv_size >= sizeof(size_t))
                free_pages += *(const size_t *)v.mv_data; /* an IDL: its count first */
        mdb_cursor_close(c);
    }
    mdb_txn_abort(txn);
    return free_pages < pages ? (pages - free_pages) * st.ms_psize : 0;
}

uint64_t store_seq_at(MDB_txn *txn, MDB_dbi records, int64_t ts_us)
{
    MDB_cursor *c;
    MDB_val k, v;
    uint64_t lo = 0, hi = 0;
    if (mdb_cursor_open(txn, records, &c))
        return 0;
    if (mdb_cursor_get(c, &k, &v, MDB_FIRST) == 0 && k.mv_size == 8)
        lo = be64_get(k.mv_data);
    if (mdb_cursor_get(c, &k, &v, MDB_LAST) == 0 && k.mv_size == 8)
        hi = be64_get(k.mv_data) + 1;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        uint8_t kb[8];
        be64_put(kb, mid);
        k.mv_size = 8, k.mv_data = kb;
        rec_view_t rv;
        int64_t ts;
        if (mdb_cursor_get(c, &k, &v, MDB_SET_RANGE) != 0) {
            hi = mid;
        } else if (rec_view(v.mv_data, v.mv_size, &rv) &&
                   rec_ts_fast(rv.canon, rv.canon_len, &ts) && ts < ts_us) {
            lo = be64_get(k.mv_data) + 1;
        } else {
            hi = mid;
        }
    }
    mdb_cursor_close(c);
    return lo;
}
