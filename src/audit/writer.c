/*
 * The writing side: audit_append (any thread) and the writer thread that owns
 * every LMDB write transaction.
 *
 *   append ──lock──▶ queue (seq order) ──▶ writer: group ──▶ txn: records,
 *                                                  indexes, checkpoint ──▶ commit
 *                                                  ──▶ durable_seq, notify()
 *
 * Invariants:
 *  - seq and ts are assigned under `mu` in queue order, so the queue is in seq
 *    order and ts never decreases along the chain.
 *  - q_count / q_bytes count records accepted and not yet committed (the
 *    group being written included), so the bound holds during failures.
 *  - head_hash / written_seq change only after a successful commit; a failed
 *    group is retried from the same head.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "audit/internal.h"
#include "util/log.h"

#define CLOSE_GIVE_UP_MS 5000
#define RETRY_MIN_MS 50
#define RETRY_MAX_MS 2000
#define RETENTION_CHECK_MS 1000
#define RETIRE_CHUNK 2000

typedef struct ix_info {
    char *sub, *iss, *role, *target, *client, *app, *reason;
} ix_info_t;

typedef struct entry {
    struct entry *next;
    uint64_t seq;
    int64_t ts;
    audit_rec_type_t type;
    char *sid; /* inside this allocation, or NULL */
    ix_info_t *ix;
    size_t data_len, cost;
    bool fields;    /* data is an audit_fields_t stream, made canonical by the writer */
    uint8_t data[]; /* canonical JSON of the fields (or the stream), then the session id */
} entry_t;

struct audit {
    /* fixed after open */
    char *path;
    char *replica; /* audit.replica, in every record's envelope; NULL = none */
    MDB_env *env;
    audit_dbs_t dbs;
    EVP_PKEY *key;
    uint8_t key_id[AUDIT_HASH_LEN];
    bool batched;
    uint64_t map_size, max_record;
    uint64_t headroom;     /* map bytes kept free for retention's own transactions */
    uint64_t max_map_size; /* grow towards this when full (writer thread only) */
    int64_t retention_age_ms;
    uint64_t retention_size;
    audit_opts_t o;
    void (*notify)(void *);
    void *notify_arg;
    int lock_fd;
    pthread_t thread;

    pthread_mutex_t mu;
    pthread_cond_t cv;        /* work for the writer */
    pthread_cond_t done_cv;   /* durability advanced or failure changed */
    entry_t *q_head, *q_tail; /* q_head..: accepted, not yet committed, in seq order */
    size_t q_count, q_bytes;
    uint64_t next_seq;
    int64_t last_ts;
    bool stopping;
    audit_stats_t st;

    /* writer thread only */
    uint64_t written_seq, synced_seq, cp_seq, cp_bytes;
    uint8_t head_hash[AUDIT_HASH_LEN];
    int64_t cp_due_ms, sync_due_ms, retry_at_ms, retry_ms, retention_due_ms;
    int last_rc;
    uint64_t refused_mark, group_bytes;
    size_t group_limit, group_max_bytes;
    bool env_broken, retire_soon;
    buf_t canon; /* fields streams made canonical */
    chain_hasher_t hasher;
    struct sref *srefs; /* a group's session_recs entries, put per session (index_sessions) */
    uint8_t *svals;
    size_t srefs_cap;
    bool full; /* stopped at the headroom: resume only below map_size - 2 * headroom */

    _Atomic uint64_t durable_seq;
    _Atomic bool failing;
    _Atomic bool congested;     /* the queue is past 3/4 of a limit (audit_congested) */
    _Atomic int shared_readers; /* audit_reader_shared: the env must stay open */
    _Atomic bool env_shared;    /* audit_env() was called: never reopen */
    pthread_rwlock_t env_lock;  /* audit_env_enter/leave vs grow_map */
};

static int64_t mono_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int64_t mono_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

static int64_t real_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (int64_t)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

static const char *const type_names[] = {
    NULL, "session_start", "session_end", "login_failed", "statement", "result", "note",
};

const char *audit_rec_type_name(audit_rec_type_t t)
{
    return t >= 1 && t <= AUDIT_REC_MAX ? type_names[t] : NULL;
}

audit_rec_type_t audit_rec_type_parse(const char *name)
{
    for (int i = 1; name && i <= AUDIT_REC_MAX; i++)
        if (!strcmp(name, type_names[i]))
            return (audit_rec_type_t)i;
    return 0;
}

/* ---- appending ---- */

static char *dup_field(const cJSON *fields, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(fields, name);
    return cJSON_IsString(v) ? strdup(v->valuestring) : NULL;
}

static void ix_free(ix_info_t *ix)
{
    if (!ix)
        return;
    free(ix->sub), free(ix->iss), free(ix->role), free(ix->target);
    free(ix->client), free(ix->app), free(ix->reason);
    free(ix);
}

static void entries_free(entry_t *e)
{
    while (e) {
        entry_t *n = e->next;
        ix_free(e->ix);
        free(e);
        e = n;
    }
}

static ix_info_t *ix_extract(audit_rec_type_t type, const cJSON *fields)
{
    if (type != AUDIT_REC_SESSION_START && type != AUDIT_REC_SESSION_END)
        return NULL;
    ix_info_t *ix = calloc(1, sizeof(*ix));
    if (!ix)
        return NULL;
    if (type == AUDIT_REC_SESSION_START) {
        ix->sub = dup_field(fields, "sub");
        ix->iss = dup_field(fields, "iss");
        ix->role = dup_field(fields, "role");
        ix->target = dup_field(fields, "target");
        ix->client = dup_field(fields, "client");
        ix->app = dup_field(fields, "application_name");
    } else {
        ix->reason = dup_field(fields, "reason");
    }
    return ix;
}

static int refuse(audit_t *a, const char *why)
{
    pthread_mutex_lock(&a->mu);
    uint64_t n = ++a->st.refused;
    pthread_mutex_unlock(&a->mu);
    /* One line per power of two keeps a flood of refusals readable. */
    if (why && (n & (n - 1)) == 0)
        log_event(LOG_ERROR, "audit_refused", "reason=\"%s\" refused_total=%llu", why,
                  (unsigned long long)n);
    return -1;
}

/* Under a->mu, after the queue changed: true when congestion just ended. */
static bool update_congested(audit_t *a)
{
    bool now =
        a->q_count >= a->o.queue_max_records / 4 * 3 || a->q_bytes >= a->o.queue_max_bytes / 4 * 3;
    bool was = atomic_exchange(&a->congested, now);
    return was && !now;
}

bool audit_congested(const audit_t *a)
{
    return atomic_load(&((audit_t *)a)->congested) && !atomic_load(&((audit_t *)a)->failing);
}

/* Queue an encoded record; the caller has checked everything else. */
static int enqueue(audit_t *a, entry_t *e, bool internal, uint64_t *seq_out)
{
    pthread_mutex_lock(&a->mu);
    const char *why = NULL;
    if (!internal) {
        if (a->stopping)
            why = "closing";
        else if (atomic_load(&a->failing))
            why = "store failing";
        else if (a->q_count >= a->o.queue_max_records ||
                 a->q_bytes + e->cost > a->o.queue_max_bytes)
            why = "queue full";
    }
    if (why) {
        pthread_mutex_unlock(&a->mu);
        ix_free(e->ix);
        free(e);
        return refuse(a, why);
    }
    int64_t now = a->o.now_us();
    e->seq = a->next_seq++;
    e->ts = now > a->last_ts ? now : a->last_ts;
    a->last_ts = e->ts;
    e->next = NULL;
    if (a->q_tail)
        a->q_tail->next = e;
    else
        a->q_head = e;
    a->q_tail = e;
    a->q_count++;
    a->q_bytes += e->cost;
    update_congested(a);
    a->st.appended++;
    uint64_t seq = e->seq; /* e belongs to the writer once the lock is released */
    pthread_cond_signal(&a->cv);
    pthread_mutex_unlock(&a->mu);
    if (seq_out)
        *seq_out = seq;
    return 0;
}

static int append(audit_t *a, audit_rec_type_t type, const char *sid, cJSON *fields,
                  uint64_t *seq_out, bool internal)
{
    if (!audit_rec_type_name(type) || (sid && !canon_sid_ok(sid)) ||
        (fields && !cJSON_IsObject(fields))) {
        cJSON_Delete(fields);
        return refuse(a, "invalid record (type, session id or fields)");
    }
    if (!internal && atomic_load(&a->failing)) {
        cJSON_Delete(fields);
        return refuse(a, "store failing");
    }
    buf_t b;
    buf_init(&b, a->max_record);
    bool ok;
    if (fields) {
        ok = canon_json(&b, fields);
    } else {
        buf_append(&b, "{}", 2);
        ok = !b.failed;
    }
    ix_info_t *ix = ok ? ix_extract(type, fields) : NULL;
    cJSON_Delete(fields);
    size_t sl = sid ? strlen(sid) + 1 : 0;
    entry_t *e = ok ? malloc(sizeof(*e) + b.len + sl) : NULL;
    if (!e) {
        bool too_big = b.failed;
        buf_free(&b);
        ix_free(ix);
        return refuse(a, too_big ? "record too large" : "cannot encode the record");
    }
    memcpy(e->data, b.data, b.len);
    e->data_len = b.len;
    e->sid = sid ? memcpy(e->data + b.len, sid, sl) : NULL;
    e->type = type;
    e->ix = ix;
    e->fields = false;
    e->cost = sizeof(*e) + b.len + sl + CANON_TAIL_MAX;
    buf_free(&b);
    return enqueue(a, e, internal, seq_out);
}

int audit_append_fields(audit_t *a, audit_rec_type_t type, const char *sid, const audit_fields_t *f,
                        uint64_t *seq_out)
{
    if (!a)
        return -1;
    if (!audit_rec_type_name(type) || type == AUDIT_REC_SESSION_START ||
        type == AUDIT_REC_SESSION_END || (sid && !canon_sid_ok(sid)) || !audit_fields_ok(f))
        return refuse(a, f->b.failed ? "record too large or too deep"
                                     : "invalid record (type, session id or fields)");
    if (atomic_load(&a->failing))
        return refuse(a, "store failing");
    /* The stream is never much smaller than its canonical form (escapes
     * aside), so the size bound of audit_append holds for it too. */
    if (f->b.len > a->max_record)
        return refuse(a, "record too large");
    size_t sl = sid ? strlen(sid) + 1 : 0;
    entry_t *e = malloc(sizeof(*e) + f->b.len + sl);
    if (!e)
        return refuse(a, "out of memory");
    memcpy(e->data, f->b.data, f->b.len);
    e->data_len = f->b.len;
    e->sid = sid ? memcpy(e->data + f->b.len, sid, sl) : NULL;
    e->type = type;
    e->ix = NULL;
    e->fields = true;
    e->cost = sizeof(*e) + f->b.len + f->b.len / 4 + sl + CANON_TAIL_MAX;
    return enqueue(a, e, false, seq_out);
}

int audit_append(audit_t *a, audit_rec_type_t type, const char *session_id, cJSON *fields,
                 uint64_t *seq_out)
{
    if (!a) {
        cJSON_Delete(fields);
        return -1;
    }
    return append(a, type, session_id, fields, seq_out, false);
}

static void append_note(audit_t *a, cJSON *fields)
{
    if (append(a, AUDIT_REC_NOTE, NULL, fields, NULL, true) != 0)
        log_event(LOG_ERROR, "audit_note_lost", "reason=refused");
}

uint64_t audit_durable_seq(const audit_t *a)
{
    return atomic_load(&((audit_t *)a)->durable_seq);
}

bool audit_failing(const audit_t *a)
{
    return atomic_load(&((audit_t *)a)->failing);
}

void audit_get_stats(audit_t *a, audit_stats_t *out)
{
    pthread_mutex_lock(&a->mu);
    *out = a->st;
    pthread_mutex_unlock(&a->mu);
}

int audit_flush(audit_t *a, int64_t timeout_ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (timeout_ms % 1000) * 1000000;
    if (dl.tv_nsec >= 1000000000)
        dl.tv_sec++, dl.tv_nsec -= 1000000000;
    pthread_mutex_lock(&a->mu);
    uint64_t want = a->next_seq - 1;
    int rc = 0;
    while (atomic_load(&a->durable_seq) < want) {
        if (atomic_load(&a->failing) ||
            pthread_cond_timedwait(&a->done_cv, &a->mu, &dl) == ETIMEDOUT) {
            rc = atomic_load(&a->durable_seq) >= want ? 0 : -1;
            break;
        }
    }
    pthread_mutex_unlock(&a->mu);
    return rc;
}

/* ---- the writer: one group ---- */

/* The canonical data of an entry: its bytes, or its fields stream made
 * canonical in the writer's scratch buffer. A stream that cannot be made
 * canonical within the record size bound (only escapes can blow it up) is
 * stored as a note of that fact: its seq is taken, and a hole would break
 * the chain. */
static void entry_canon(audit_t *a, const entry_t *e, const uint8_t **data, size_t *len)
{
    *data = e->data, *len = e->data_len;
    if (!e->fields)
        return;
    buf_reset(&a->canon);
    a->canon.failed = false;
    if (!fields_canon(&a->canon, e->data, e->data_len) || a->canon.len > a->max_record) {
        buf_reset(&a->canon);
        a->canon.failed = false;
        char tmp[160];
        int n = snprintf(tmp, sizeof(tmp),
                         "{\"error\":\"the record could not be encoded within %llu bytes\"}",
                         (unsigned long long)a->max_record);
        buf_append(&a->canon, tmp, (size_t)n);
    }
    *data = a->canon.data, *len = a->canon.len;
}

static int put_record(audit_t *a, MDB_txn *txn, const entry_t *e, const uint8_t *prev,
                      uint8_t *hash)
{
    char tail[CANON_TAIL_MAX];
    size_t tl = canon_tail(tail, e->seq, e->sid, e->ts, audit_rec_type_name(e->type), a->replica);
    const uint8_t *data;
    size_t data_len;
    entry_canon(a, e, &data, &data_len);
    const void *parts[] = {CANON_HEAD, data, tail};
    const size_t lens[] = {CANON_HEAD_LEN, data_len, tl};
    chain_hash_with(&a->hasher, hash, prev, parts, lens, 3);
    uint8_t kb[8];
    be64_put(kb, e->seq);
    MDB_val k = {8, kb}, v = {AUDIT_VALUE_HDR + CANON_HEAD_LEN + data_len + tl, NULL};
    int rc = mdb_put(txn, a->dbs.records, &k, &v, MDB_APPEND | MDB_RESERVE);
    if (rc)
        return rc;
    uint8_t *p = v.mv_data;
    p[0] = AUDIT_VALUE_VERSION;
    memcpy(p + 1, prev, AUDIT_HASH_LEN);
    memcpy(p + 1 + AUDIT_HASH_LEN, hash, AUDIT_HASH_LEN);
    p += AUDIT_VALUE_HDR;
    memcpy(p, CANON_HEAD, CANON_HEAD_LEN);
    memcpy(p + CANON_HEAD_LEN, data, data_len);
    memcpy(p + CANON_HEAD_LEN + data_len, tail, tl);
    a->group_bytes += v.mv_size;
    return 0;
}

static void add_str(cJSON *o, const char *name, const char *v)
{
    if (v)
        cJSON_AddStringToObject(o, name, v);
}

static int put_json(MDB_txn *txn, MDB_dbi dbi, MDB_val *k, cJSON *j)
{
    char *s = cJSON_PrintUnformatted(j);
    if (!s)
        return ENOMEM;
    MDB_val v = {strlen(s), s};
    int rc = mdb_put(txn, dbi, k, &v, 0);
    free(s);
    return rc;
}

static int index_session_start(audit_t *a, MDB_txn *txn, const entry_t *e)
{
    const ix_info_t *ix = e->ix;
    MDB_val k = {strlen(e->sid), e->sid}, v;
    if (mdb_get(txn, a->dbs.sessions, &k, &v) == 0)
        return 0; /* a second start for the same id: the first one stays indexed */
    cJSON *j = cJSON_CreateObject();
    if (!j)
        return ENOMEM;
    cJSON_AddNumberToObject(j, "first", (double)e->seq);
    cJSON_AddNumberToObject(j, "start", (double)e->ts);
    add_str(j, "sub", ix ? ix->sub : NULL);
    add_str(j, "iss", ix ? ix->iss : NULL);
    add_str(j, "role", ix ? ix->role : NULL);
    add_str(j, "target", ix ? ix->target : NULL);
    add_str(j, "client", ix ? ix->client : NULL);
    add_str(j, "app", ix ? ix->app : NULL);
    int rc = put_json(txn, a->dbs.sessions, &k, j);
    cJSON_Delete(j);
    if (rc)
        return rc;
    size_t sl = strlen(e->sid);
    uint8_t key[AUDIT_SUB_KEY_MAX + 1 + 8 + AUDIT_SID_MAX];
    be64_put(key, (uint64_t)e->ts);
    memcpy(key + 8, e->sid, sl);
    MDB_val tk = {8 + sl, key}, empty = {0, ""};
    if ((rc = mdb_put(txn, a->dbs.sessions_time, &tk, &empty, 0)) != 0)
        return rc;
    if (ix && ix->sub) {
        size_t ul = strlen(ix->sub);
        if (ul > AUDIT_SUB_KEY_MAX)
            ul = AUDIT_SUB_KEY_MAX;
        memcpy(key, ix->sub, ul);
        key[ul] = 0;
        be64_put(key + ul + 1, (uint64_t)e->ts);
        memcpy(key + ul + 9, e->sid, sl);
        MDB_val sk = {ul + 9 + sl, key};
        rc = mdb_put(txn, a->dbs.sessions_sub, &sk, &empty, 0);
    }
    return rc;
}

static int index_session_end(audit_t *a, MDB_txn *txn, const entry_t *e)
{
    MDB_val k = {strlen(e->sid), e->sid}, v;
    if (mdb_get(txn, a->dbs.sessions, &k, &v) != 0)
        return 0; /* no start recorded (or retired): nothing to annotate */
    cJSON *j = cJSON_ParseWithLength(v.mv_data, v.mv_size);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return 0;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(j, "end");
    cJSON_DeleteItemFromObjectCaseSensitive(j, "reason");
    cJSON_AddNumberToObject(j, "end", (double)e->ts);
    add_str(j, "reason", e->ix ? e->ix->reason : NULL);
    int rc = put_json(txn, a->dbs.sessions, &k, j);
    cJSON_Delete(j);
    return rc;
}

/* The session_recs entries of a group: collected per record, then sorted by
 * session and put with one MDB_MULTIPLE call per session (DUPFIXED), so a
 * session's records in a group pay for one key lookup, not one each. The
 * entries are the same as one mdb_put per record would make. */
typedef struct sref {
    const char *sid;
    size_t sid_len;
    uint64_t seq;
} sref_t;

static int sref_cmp(const void *pa, const void *pb)
{
    const sref_t *x = pa, *y = pb;
    size_t n = x->sid_len < y->sid_len ? x->sid_len : y->sid_len;
    int c = memcmp(x->sid, y->sid, n);
    if (c)
        return c;
    if (x->sid_len != y->sid_len)
        return x->sid_len < y->sid_len ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Room for n entries; false (and one mdb_put per record instead) if memory is short. */
static bool srefs_reserve(audit_t *a, size_t n)
{
    if (n <= a->srefs_cap)
        return true;
    sref_t *r = realloc(a->srefs, n * sizeof(*r));
    if (r)
        a->srefs = r;
    uint8_t *v = r ? realloc(a->svals, n * 8) : NULL;
    if (v)
        a->svals = v;
    if (!r || !v)
        return false;
    a->srefs_cap = n;
    return true;
}

static int put_session_rec(audit_t *a, MDB_txn *txn, const char *sid, size_t sl, uint64_t seq)
{
    uint8_t sb[8];
    be64_put(sb, seq);
    MDB_val k = {sl, (void *)sid}, v = {8, sb};
    return mdb_put(txn, a->dbs.session_recs, &k, &v, 0);
}

static bool same_sid(const sref_t *x, const sref_t *y)
{
    return x->sid_len == y->sid_len && memcmp(x->sid, y->sid, x->sid_len) == 0;
}

static int index_sessions(audit_t *a, MDB_txn *txn, size_t n)
{
    if (!n)
        return 0;
    if (n > 1)
        qsort(a->srefs, n, sizeof(*a->srefs), sref_cmp);
    MDB_cursor *c = NULL;
    int rc = mdb_cursor_open(txn, a->dbs.session_recs, &c);
    for (size_t i = 0, j; i < n && !rc; i = j) {
        for (j = i; j < n && same_sid(&a->srefs[i], &a->srefs[j]); j++)
            be64_put(a->svals + 8 * (j - i), a->srefs[j].seq);
        MDB_val k = {a->srefs[i].sid_len, (void *)a->srefs[i].sid};
        MDB_val d[2] = {{8, a->svals}, {j - i, NULL}};
        rc = mdb_cursor_put(c, &k, d, MDB_MULTIPLE);
        if (!rc && d[1].mv_size != j - i)
            rc = EIO; /* not all stored: the caller aborts the transaction */
    }
    if (c)
        mdb_cursor_close(c);
    return rc;
}

static int index_record(audit_t *a, MDB_txn *txn, const entry_t *e, size_t *nrefs)
{
    if (!e->sid)
        return 0;
    size_t sl = strlen(e->sid);
    int rc = 0;
    if (nrefs)
        a->srefs[(*nrefs)++] = (sref_t){e->sid, sl, e->seq};
    else
        rc = put_session_rec(a, txn, e->sid, sl, e->seq);
    if (rc)
        return rc;
    if (e->type == AUDIT_REC_SESSION_START)
        return index_session_start(a, txn, e);
    if (e->type == AUDIT_REC_SESSION_END)
        return index_session_end(a, txn, e);
    return 0;
}

/* Sign the head (written_seq after this transaction) into txn. */
static int put_checkpoint(audit_t *a, MDB_txn *txn, uint64_t seq, const uint8_t *hash)
{
    buf_t b;
    buf_init(&b, 0);
    buf_put_u16(&b, a->key ? 64 : 0);
    if (a->key) {
        buf_append(&b, (uint8_t[64]){0}, 64);
    }
    size_t off = b.len;
    canon_checkpoint(&b, seq, hash, a->key ? a->key_id : NULL, a->o.now_us());
    if (b.failed) {
        buf_free(&b);
        return ENOMEM;
    }
    if (a->key && !sign_ed25519(a->key, b.data + off, b.len - off, b.data + 2)) {
        buf_free(&b);
        log_event(LOG_ERROR, "audit_sign_failed", "seq=%llu", (unsigned long long)seq);
        return EINVAL;
    }
    uint8_t kb[8];
    be64_put(kb, seq);
    MDB_val k = {8, kb}, v = {b.len, b.data};
    int rc = mdb_put(txn, a->dbs.checkpoints, &k, &v, 0);
    buf_free(&b);
    return rc;
}

static void hist_add(uint64_t *h, size_t n, uint64_t v)
{
    size_t i = 0;
    while (v > 1 && i + 1 < n)
        v >>= 1, i++;
    h[i]++;
}

/* After MDB_PANIC (an I/O error while writing the meta page) the environment
 * is unusable until reopened; not while readers borrow it. */
static void reopen_env(audit_t *a)
{
    char err[256];
    if (atomic_load(&a->shared_readers) > 0 || atomic_load(&a->env_shared))
        return;
    mdb_env_close(a->env);
    a->env = NULL;
    if (store_open(a->path, a->map_size, true, a->batched, &a->env, &a->dbs, err, sizeof(err)) == 0)
        a->env_broken = false;
    else
        log_event(LOG_ERROR, "audit_reopen_failed", "error=\"%s\"", err);
}

static void set_limits(audit_t *a)
{
    a->group_max_bytes = a->map_size / 16 < (16u << 20) ? a->map_size / 16 : (16u << 20);
    a->headroom = a->map_size / 8 < (64u << 20) ? a->map_size / 8 : (64u << 20);
    if (a->headroom < 2 * a->group_max_bytes)
        a->headroom = 2 * a->group_max_bytes;
}

/* audit.max_map_size: double the map (at most to that) instead of stopping.
 * LMDB allows it only while this process has no transaction open: the
 * writer has none here, and borrowed readers (audit_reader_shared) might,
 * so not while one exists. Readers in other processes adopt the new size
 * when they meet it (MDB_MAP_RESIZED, reader.c). */
static bool grow_map(audit_t *a)
{
    if (a->max_map_size <= a->map_size || atomic_load(&a->shared_readers) > 0 ||
        pthread_rwlock_trywrlock(&a->env_lock) != 0)
        return false;
    uint64_t n = a->map_size * 2;
    if (n > a->max_map_size || n < a->map_size)
        n = a->max_map_size;
    int rc = mdb_env_set_mapsize(a->env, (size_t)n);
    pthread_rwlock_unlock(&a->env_lock);
    if (rc) {
        log_event(LOG_ERROR, "audit_map_grow_failed", "to=%llu error=\"%s\"", (unsigned long long)n,
                  mdb_strerror(rc));
        a->max_map_size = a->map_size; /* do not try again */
        return false;
    }
    log_event(LOG_WARN, "audit_map_grown", "path=\"%s\" from=%llu to=%llu max=%llu", a->path,
              (unsigned long long)a->map_size, (unsigned long long)n,
              (unsigned long long)a->max_map_size);
    a->map_size = n;
    set_limits(a);
    a->full = false;
    return true;
}

/* Checkpoints fall exactly every checkpoint_every records (wherever group
 * boundaries are), and after every map_size/16 bytes of records (so that a
 * small map has cut points too), so retention always finds cut points;
 * and on the head after checkpoint_interval, at shutdown, and when forced. */
static int write_group(audit_t *a, entry_t *g, size_t n, size_t bytes, bool force_cp)
{
    if (a->env_broken)
        reopen_env(a);
    if (!a->env)
        return EIO;
    /* Headroom: records stop at map_size - headroom, so that retention (whose
     * deletes need fresh pages for copy-on-write) can always run, and resume
     * only once retention got the store below map_size - 2 * headroom (no
     * flapping between failing and writing a record at a time). A group takes
     * at most twice its queued cost (records, indexes, page slack). */
    if (n) {
        uint64_t used = store_used_bytes(a->env);
        uint64_t limit = a->map_size - (a->full ? 2 : 1) * a->headroom;
        while (used + 2 * (uint64_t)bytes > limit && grow_map(a))
            limit = a->map_size - a->headroom;
        if (used + 2 * (uint64_t)bytes > limit) {
            a->full = true;
            return MDB_MAP_FULL;
        }
        a->full = false;
        if (used > a->map_size - 2 * a->headroom)
            a->retire_soon = true; /* getting close: retire what retention allows */
    }
    MDB_txn *txn;
    int rc = mdb_txn_begin(a->env, NULL, 0, &txn);
    if (rc) {
        if (rc == MDB_PANIC)
            a->env_broken = true;
        return rc;
    }
    uint8_t prev[AUDIT_HASH_LEN], hash[AUDIT_HASH_LEN];
    memcpy(prev, a->head_hash, sizeof(prev));
    uint64_t last = a->written_seq, cp_seq = a->cp_seq, ncp = 0, cp_bytes = a->cp_bytes;
    a->group_bytes = 0;
    size_t nrefs = 0;
    size_t *batch = srefs_reserve(a, n) ? &nrefs : NULL;
    entry_t *e = g;
    for (size_t i = 0; i < n && !rc; i++) {
        rc = put_record(a, txn, e, prev, hash);
        if (!rc)
            rc = index_record(a, txn, e, batch);
        memcpy(prev, hash, sizeof(prev));
        last = e->seq;
        cp_bytes += AUDIT_VALUE_HDR + e->data_len + CANON_TAIL_MAX / 2;
        if (!rc && (last - cp_seq >= a->o.checkpoint_every || cp_bytes >= a->map_size / 16)) {
            rc = put_checkpoint(a, txn, last, prev);
            cp_seq = last, ncp++, cp_bytes = 0;
        }
        if (i + 1 < n) /* the last one's next may be being linked by a producer */
            e = e->next;
    }
    if (!rc)
        rc = index_sessions(a, txn, nrefs);
    if (!rc && a->retention_size && store_live_bytes(txn, &a->dbs) > a->retention_size)
        a->retire_soon = true;
    if (!rc && last > cp_seq && (force_cp || mono_ms() >= a->cp_due_ms)) {
        rc = put_checkpoint(a, txn, last, prev);
        cp_seq = last, ncp++, cp_bytes = 0;
    }
    if (a->canon.cap > (4u << 20)) { /* a huge record passed: do not keep its buffer */
        buf_free(&a->canon);
        buf_init(&a->canon, 0);
    }
    if (rc) {
        mdb_txn_abort(txn);
        return rc;
    }
    int64_t t0 = mono_us();
    rc = mdb_txn_commit(txn);
    int64_t dt = mono_us() - t0;
    if (rc) {
        if (rc == MDB_PANIC || rc == EIO)
            a->env_broken = true;
        return rc;
    }
    memcpy(a->head_hash, prev, sizeof(prev));
    a->written_seq = last;
    a->cp_bytes = cp_bytes;
    if (ncp) {
        a->cp_seq = cp_seq;
        a->cp_due_ms = mono_ms() + a->o.checkpoint_interval_ms;
    }
    pthread_mutex_lock(&a->mu);
    a->st.written += n;
    a->st.bytes_written += a->group_bytes;
    a->st.commits++;
    a->st.checkpoints += ncp;
    if (n > a->st.batch_max)
        a->st.batch_max = n;
    a->st.commit_us_total += (uint64_t)dt;
    if ((uint64_t)dt > a->st.commit_us_max)
        a->st.commit_us_max = (uint64_t)dt;
    if (n)
        hist_add(a->st.batch_hist, 16, n);
    hist_add(a->st.commit_us_hist, 24, (uint64_t)dt);
    pthread_mutex_unlock(&a->mu);
    return 0;
}

/* The durable sequence number reached seq: tell waiters and the loop. */
static void set_durable(audit_t *a, uint64_t seq)
{
    pthread_mutex_lock(&a->mu);
    bool advanced = seq > atomic_load(&a->durable_seq);
    if (advanced)
        atomic_store(&a->durable_seq, seq);
    pthread_cond_broadcast(&a->done_cv);
    pthread_mutex_unlock(&a->mu);
    if (advanced && a->notify)
        a->notify(a->notify_arg);
}

static void set_failing(audit_t *a, int rc)
{
    if (!atomic_load(&a->failing)) {
        pthread_mutex_lock(&a->mu);
        atomic_store(&a->failing, true);
        a->st.failures++;
        a->refused_mark = a->st.refused;
        pthread_cond_broadcast(&a->done_cv);
        pthread_mutex_unlock(&a->mu);
        log_event(LOG_ERROR, "audit_store_failing", "path=\"%s\" error=\"%s\"", a->path,
                  store_strerror(rc));
        if (a->notify)
            a->notify(a->notify_arg);
    } else if (rc != a->last_rc) {
        log_event(LOG_ERROR, "audit_store_failing", "path=\"%s\" error=\"%s\"", a->path,
                  store_strerror(rc));
    }
    a->last_rc = rc;
    a->retry_ms = a->retry_ms ? a->retry_ms * 2 : RETRY_MIN_MS;
    if (a->retry_ms > RETRY_MAX_MS)
        a->retry_ms = RETRY_MAX_MS;
    a->retry_at_ms = mono_ms() + a->retry_ms;
}

static void clear_failing(audit_t *a)
{
    if (!atomic_load(&a->failing))
        return;
    pthread_mutex_lock(&a->mu);
    uint64_t refused = a->st.refused - a->refused_mark;
    atomic_store(&a->failing, false);
    pthread_cond_broadcast(&a->done_cv);
    pthread_mutex_unlock(&a->mu);
    a->retry_ms = 0;
    log_event(LOG_WARN, "audit_store_recovered", "path=\"%s\" refused=%llu", a->path,
              (unsigned long long)refused);
    cJSON *n = cJSON_CreateObject();
    cJSON_AddStringToObject(n, "event", "audit_recovered");
    cJSON_AddStringToObject(n, "error", store_strerror(a->last_rc));
    cJSON_AddNumberToObject(n, "refused", (double)refused);
    append_note(a, n);
    if (a->notify)
        a->notify(a->notify_arg);
}

static bool retention_on(const audit_t *a)
{
    return a->retention_age_ms > 0 || a->retention_size > 0;
}

static void retire(audit_t *a, bool emergency)
{
    if (!a->env || !retention_on(a))
        return;
    retire_params_t p = {
        .head_seq = a->written_seq,
        .before_us = a->retention_age_ms > 0 ? a->o.now_us() - a->retention_age_ms * 1000 : 0,
        .max_size = a->retention_size,
        .emergency = emergency,
        .map_size = a->map_size,
    };
    retire_result_t r;
    int rc = store_retire(a->env, &a->dbs, &p, &r);
    if (rc) {
        log_event(LOG_ERROR, "audit_retire_failed", "error=\"%s\"", store_strerror(rc));
        return;
    }
    if (!r.records)
        return;
    pthread_mutex_lock(&a->mu);
    a->st.retired += r.records;
    pthread_mutex_unlock(&a->mu);
    log_event(LOG_INFO, "audit_retired", "records=%llu anchor=%llu reason=%s",
              (unsigned long long)r.records, (unsigned long long)r.anchor, r.reason);
    cJSON *n = cJSON_CreateObject();
    cJSON_AddStringToObject(n, "event", "retired");
    cJSON_AddNumberToObject(n, "anchor", (double)r.anchor);
    cJSON_AddNumberToObject(n, "records", (double)r.records);
    cJSON_AddStringToObject(n, "reason", r.reason);
    append_note(a, n);
}

/* Write the next group (the queue head, at most group_max_records). */
static void write_next(audit_t *a, bool force_cp)
{
    pthread_mutex_lock(&a->mu);
    entry_t *g = a->q_head;
    size_t n = 0, bytes = 0;
    for (entry_t *e = g; e && n < a->group_limit && (n == 0 || bytes < a->group_max_bytes);
         e = e->next)
        n++, bytes += e->cost;
    pthread_mutex_unlock(&a->mu);
    if (!n && !force_cp)
        return;
    /* The first n entries stay put: producers only link new ones after q_tail. */
    int rc = write_group(a, g, n, bytes, force_cp);
    if (rc) {
        set_failing(a, rc);
        if (rc == MDB_MAP_FULL) {
            /* Smaller transactions need fewer fresh pages, and each commit lets
             * LMDB reuse the pages freed two transactions before. */
            a->group_limit = n > 1 ? n / 2 : 1;
            /* Sign the head while the headroom has room for it: retention can
             * then cut up to here, and verify vouches for every record written. */
            if (a->written_seq > a->cp_seq && write_group(a, g, 0, 0, true) != 0)
                log_event(LOG_ERROR, "audit_checkpoint_failed", "seq=%llu",
                          (unsigned long long)a->written_seq);
            retire(a, true);
        }
        return;
    }
    a->group_limit = a->o.group_max_records;
    entry_t *done = g;
    pthread_mutex_lock(&a->mu);
    /* Only a group of records moves q_head: a checkpoint alone (n == 0, queue empty
     * when it began) must not reset q_head/q_tail over a record a producer queued
     * meanwhile, which would be lost (found by LeakSanitizer under make asan). */
    if (n) {
        entry_t *e = g, *last = NULL;
        for (size_t i = 0; i < n; i++, e = e->next) {
            a->q_count--;
            a->q_bytes -= e->cost;
            last = e;
        }
        a->q_head = e;
        if (!e)
            a->q_tail = NULL;
        last->next = NULL;
    }
    bool relieved = n && update_congested(a);
    pthread_mutex_unlock(&a->mu);
    if (relieved && a->notify)
        a->notify(a->notify_arg); /* paused sessions read their clients again */
    if (n)
        entries_free(done);
    clear_failing(a);
    if (a->retire_soon) {
        a->retire_soon = false;
        retire(a, false);
    }
    if (!a->batched) {
        a->synced_seq = a->written_seq;
        set_durable(a, a->written_seq);
    } else if (!a->sync_due_ms) {
        a->sync_due_ms = mono_ms() + a->o.sync_interval_ms;
    }
}

static void sync_now(audit_t *a)
{
    a->sync_due_ms = 0;
    if (!a->env || a->synced_seq == a->written_seq)
        return;
    int64_t t0 = mono_us();
    int rc = mdb_env_sync(a->env, 1);
    int64_t dt = mono_us() - t0;
    if (rc) {
        set_failing(a, rc);
        a->sync_due_ms = a->retry_at_ms;
        return;
    }
    pthread_mutex_lock(&a->mu);
    a->st.syncs++;
    hist_add(a->st.commit_us_hist, 24, (uint64_t)dt);
    pthread_mutex_unlock(&a->mu);
    a->synced_seq = a->written_seq;
    set_durable(a, a->written_seq);
}

static int64_t next_wake(audit_t *a, int64_t now)
{
    int64_t w = now + RETENTION_CHECK_MS;
    if (a->written_seq > a->cp_seq && a->cp_due_ms < w)
        w = a->cp_due_ms;
    if (a->sync_due_ms && a->sync_due_ms < w)
        w = a->sync_due_ms;
    if (atomic_load(&a->failing) && a->retry_at_ms < w)
        w = a->retry_at_ms;
    return w;
}

static void wait_until(audit_t *a, int64_t when_ms)
{
    int64_t d = when_ms - mono_ms();
    if (d <= 0)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += d / 1000;
    ts.tv_nsec += (d % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000)
        ts.tv_sec++, ts.tv_nsec -= 1000000000;
    pthread_cond_timedwait(&a->cv, &a->mu, &ts);
}

/* Timers: checkpoint by time, batched sync, retention. */
static void housekeeping(audit_t *a)
{
    int64_t now = mono_ms();
    if (atomic_load(&a->failing))
        return;
    if (a->written_seq > a->cp_seq && now >= a->cp_due_ms)
        write_next(a, true);
    if (a->sync_due_ms && now >= a->sync_due_ms)
        sync_now(a);
    if (retention_on(a) && now >= a->retention_due_ms) {
        a->retention_due_ms = now + RETENTION_CHECK_MS;
        retire(a, false);
    }
}

static void *writer_main(void *arg)
{
    audit_t *a = arg;
    int64_t give_up_at = 0;
    for (;;) {
        pthread_mutex_lock(&a->mu);
        bool failing = atomic_load(&a->failing);
        int64_t now = mono_ms();
        bool work = a->q_head && (!failing || now >= a->retry_at_ms);
        if (!work && !a->stopping)
            wait_until(a, next_wake(a, now));
        bool stopping = a->stopping;
        pthread_mutex_unlock(&a->mu);

        if (!atomic_load(&a->failing) || mono_ms() >= a->retry_at_ms)
            write_next(a, false);
        housekeeping(a);
        if (!stopping)
            continue;

        pthread_mutex_lock(&a->mu);
        bool drained = a->q_head == NULL;
        pthread_mutex_unlock(&a->mu);
        if (!give_up_at)
            give_up_at = mono_ms() + CLOSE_GIVE_UP_MS;
        if (drained) {
            if (a->written_seq > a->cp_seq)
                write_next(a, true);
            sync_now(a);
            break;
        }
        if (mono_ms() >= give_up_at)
            break;
        if (atomic_load(&a->failing)) {
            pthread_mutex_lock(&a->mu);
            wait_until(a, a->retry_at_ms < give_up_at ? a->retry_at_ms : give_up_at);
            pthread_mutex_unlock(&a->mu);
        }
    }
    return NULL;
}

/* ---- open / close ---- */

/* Read the chain head: the last record's seq and hash, or the last checkpoint
 * when retention removed every record. */
static int load_head(audit_t *a, char *err, size_t errsz)
{
    MDB_txn *txn;
    MDB_cursor *cur;
    int rc = mdb_txn_begin(a->env, NULL, MDB_RDONLY, &txn);
    if (rc) {
        snprintf(err, errsz, "%s: %s", a->path, store_strerror(rc));
        return -1;
    }
    MDB_val k, v;
    rc = mdb_cursor_open(txn, a->dbs.records, &cur);
    if (!rc) {
        rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
        mdb_cursor_close(cur);
    }
    if (rc == 0) {
        rec_view_t rv;
        if (k.mv_size != 8 || !rec_view(v.mv_data, v.mv_size, &rv)) {
            mdb_txn_abort(txn);
            snprintf(err, errsz, "%s: the last record is damaged; run `bulwark audit verify`",
                     a->path);
            return -1;
        }
        a->written_seq = be64_get(k.mv_data);
        memcpy(a->head_hash, rv.hash, AUDIT_HASH_LEN);
        int64_t ts;
        if (rec_ts_fast(rv.canon, rv.canon_len, &ts))
            a->last_ts = ts;
    }
    if ((rc = mdb_cursor_open(txn, a->dbs.checkpoints, &cur)) == 0) {
        if (mdb_cursor_get(cur, &k, &v, MDB_LAST) == 0 && k.mv_size == 8) {
            cp_view_t cv;
            a->cp_seq = be64_get(k.mv_data);
            if (a->cp_seq > a->written_seq && cp_view(v.mv_data, v.mv_size, &cv)) {
                a->written_seq = cv.seq;
                memcpy(a->head_hash, cv.hash, AUDIT_HASH_LEN);
            }
        }
        mdb_cursor_close(cur);
    }
    mdb_txn_abort(txn);
    return 0;
}

static void defaults(audit_opts_t *o)
{
    if (!o->checkpoint_every)
        o->checkpoint_every = 1000;
    if (o->checkpoint_interval_ms <= 0)
        o->checkpoint_interval_ms = 60000;
    if (o->sync_interval_ms <= 0)
        o->sync_interval_ms = 200;
    if (!o->queue_max_records)
        o->queue_max_records = 65536;
    if (!o->queue_max_bytes)
        o->queue_max_bytes = 64u << 20;
    if (!o->group_max_records)
        o->group_max_records = 4096;
    if (!o->now_us)
        o->now_us = real_us;
}

static int lock_writer(audit_t *a, char *err, size_t errsz)
{
    char p[4200];
    snprintf(p, sizeof(p), "%s/writer.lock", a->path);
    a->lock_fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (a->lock_fd < 0) {
        snprintf(err, errsz, "%s: %s", p, strerror(errno));
        return -1;
    }
    if (flock(a->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        snprintf(err, errsz, "%s: the audit store is in use by another gateway process", a->path);
        return -1;
    }
    return 0;
}

static void free_audit(audit_t *a)
{
    if (a->env)
        mdb_env_close(a->env);
    if (a->lock_fd >= 0)
        close(a->lock_fd);
    EVP_PKEY_free(a->key);
    entries_free(a->q_head);
    buf_free(&a->canon);
    chain_hasher_free(&a->hasher);
    free(a->srefs);
    free(a->svals);
    pthread_mutex_destroy(&a->mu);
    pthread_rwlock_destroy(&a->env_lock);
    pthread_cond_destroy(&a->cv);
    pthread_cond_destroy(&a->done_cv);
    free(a->path);
    free(a->replica);
    free(a);
}

audit_t *audit_open(const cfg_t *cfg, const audit_opts_t *opts, void (*notify)(void *arg),
                    void *arg, char *err, size_t errsz)
{
    audit_t *a = calloc(1, sizeof(*a));
    if (!a || !(a->path = strdup(cfg->audit.path)) ||
        (cfg->audit.replica && !(a->replica = strdup(cfg->audit.replica)))) {
        if (a)
            free(a->path);
        free(a);
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    a->lock_fd = -1;
    buf_init(&a->canon, 0);
    chain_hasher_init(&a->hasher);
    pthread_mutex_init(&a->mu, NULL);
    pthread_rwlock_init(&a->env_lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&a->cv, &ca);
    pthread_cond_init(&a->done_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (opts)
        a->o = *opts;
    defaults(&a->o);
    a->batched = cfg->audit.durability == CFG_DUR_BATCHED;
    a->map_size = cfg->audit.map_size;
    a->max_map_size = cfg->audit.max_map_size;
    a->max_record = a->map_size / 8;
    a->retention_age_ms = cfg->audit.retention_max_age_ms;
    a->retention_size = cfg->audit.retention_max_size;
    a->notify = notify;
    a->notify_arg = arg;
    if (cfg->audit.signing_key_file) {
        char why[256];
        a->key = sign_load_key(cfg->audit.signing_key_file, true, why, sizeof(why));
        if (!a->key || !sign_key_id(a->key, a->key_id)) {
            snprintf(err, errsz, "audit.signing_key_file: %s", a->key ? "unusable key" : why);
            free_audit(a);
            return NULL;
        }
    }
    if (store_open(a->path, a->map_size, true, a->batched, &a->env, &a->dbs, err, errsz) != 0 ||
        lock_writer(a, err, errsz) != 0 || load_head(a, err, errsz) != 0) {
        free_audit(a);
        return NULL;
    }
    /* A map grown by an earlier run (max_map_size) stays grown: LMDB keeps
     * the size in the file; take the larger of it and map_size. */
    MDB_envinfo info;
    if (mdb_env_set_mapsize(a->env, 0) == 0 && mdb_env_info(a->env, &info) == 0 &&
        info.me_mapsize > a->map_size)
        a->map_size = info.me_mapsize;
    else
        (void)mdb_env_set_mapsize(a->env, (size_t)a->map_size);
    a->group_limit = a->o.group_max_records;
    set_limits(a);
    a->next_seq = a->written_seq + 1;
    a->synced_seq = a->written_seq;
    atomic_store(&a->durable_seq, a->written_seq);
    a->cp_due_ms = mono_ms() + a->o.checkpoint_interval_ms;
    a->retention_due_ms = mono_ms();
    cJSON *n = cJSON_CreateObject();
    cJSON_AddStringToObject(n, "event", "open");
    cJSON_AddNumberToObject(n, "pid", (double)getpid());
    append_note(a, n);
    log_event(LOG_INFO, "audit_open", "path=\"%s\" head=%llu signed=%s", a->path,
              (unsigned long long)a->written_seq, a->key ? "yes" : "no");
    if (pthread_create(&a->thread, NULL, writer_main, a) != 0) {
        snprintf(err, errsz, "cannot start the audit writer thread");
        free_audit(a);
        return NULL;
    }
    return a;
}

void audit_close(audit_t *a)
{
    if (!a)
        return;
    cJSON *n = cJSON_CreateObject();
    cJSON_AddStringToObject(n, "event", "close");
    append_note(a, n);
    pthread_mutex_lock(&a->mu);
    a->stopping = true;
    pthread_cond_signal(&a->cv);
    pthread_mutex_unlock(&a->mu);
    pthread_join(a->thread, NULL);
    if (a->q_head)
        log_event(LOG_ERROR, "audit_records_lost", "path=\"%s\" records=%zu first_seq=%llu",
                  a->path, a->q_count, (unsigned long long)a->q_head->seq);
    free_audit(a);
}

audit_reader_t *audit_reader_shared(audit_t *a)
{
    return a->env ? reader_borrow(a->env, &a->dbs, &a->shared_readers) : NULL;
}

struct MDB_env *audit_env(audit_t *a)
{
    if (!a)
        return NULL;
    atomic_store(&a->env_shared, true);
    return a->env;
}

void audit_env_enter(audit_t *a)
{
    pthread_rwlock_rdlock(&a->env_lock);
}

void audit_env_leave(audit_t *a)
{
    pthread_rwlock_unlock(&a->env_lock);
}
