/*
 * Private to the audit module (the .c files of src/audit/); everyone else includes audit/audit.h.
 * Tests include it to forge and damage records the way an attacker would.
 *
 * LMDB layout (environment = the directory audit.path; docs/audit.md is the reference):
 *
 *   records        be64(seq) -> [0x01][prev_hash 32][hash 32][canonical JSON]
 *                  hash = SHA-256(prev_hash || canonical JSON); the first record's
 *                  prev_hash is 32 zero bytes
 *   checkpoints    be64(seq) -> [u16 siglen][signature][canonical checkpoint JSON]
 *   sessions       session id -> JSON summary (derived index, not chained)
 *   session_recs   session id -> be64(seq) ...   (MDB_DUPSORT|MDB_DUPFIXED)
 *   sessions_time  be64(start ts) || session id -> ""
 *   sessions_sub   subject (at most 256 bytes) || 0x00 || be64(start ts) || session id -> ""
 *   meta           "format" -> "1"
 *
 * Only the records and checkpoints are evidence; the rest are indexes that a
 * verifier ignores and the writer can rebuild.
 */
#ifndef BULWARK_AUDIT_INTERNAL_H
#define BULWARK_AUDIT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>
#include <lmdb.h>
#include <openssl/evp.h>

#include "audit/audit.h"
#include "util/buf.h"

#define AUDIT_HASH_LEN 32
#define AUDIT_VALUE_VERSION 1
#define AUDIT_VALUE_HDR (1 + 2 * AUDIT_HASH_LEN)
#define AUDIT_SID_MAX 128     /* session id bytes */
#define AUDIT_SUB_KEY_MAX 256 /* subject bytes kept in the sessions_sub key */
#define AUDIT_CANON_DEPTH 64  /* nesting accepted in a record's fields */
#define AUDIT_MAX_DBS 16

typedef struct audit_dbs {
    MDB_dbi records, checkpoints, sessions, session_recs, sessions_time, sessions_sub, meta;
} audit_dbs_t;

/* ---- canon.c: canonical JSON (RFC 8785 for the values records hold) ---- */

/* Append the canonical form of v: object members sorted by UTF-16 code units
 * (the first of duplicate names kept), no whitespace, strings with only the
 * escapes JSON requires (\" \\ \b \f \n \r \t, other controls as \u00xx),
 * invalid UTF-8 replaced by U+FFFD, integers up to 2^53 as digits and every
 * other number as a string ("%.17g", "NaN", "Infinity"). False when v nests
 * deeper than AUDIT_CANON_DEPTH or holds a cJSON_Raw item. */
bool canon_json(buf_t *b, const cJSON *v);
void canon_string(buf_t *b, const char *s, size_t len);
/* Member names in RFC 8785 order (UTF-16 code units of the names as
 * canon_string writes them): <0, 0, >0. */
int canon_name_cmp(const char *a, size_t alen, const char *b, size_t blen);

/* ---- fields.c: audit_fields_t streams -> canonical JSON (writer thread) ---- */

/* Append the canonical object of a fields stream (audit.h, audit_fields_t):
 * the same bytes canon_json gives for the same fields built as cJSON. False
 * when the stream is malformed or nests deeper than AUDIT_CANON_DEPTH. */
bool fields_canon(buf_t *out, const uint8_t *p, size_t n);
/* True if s is usable as a session id: 1..AUDIT_SID_MAX bytes of printable
 * ASCII other than '"' and '\\' (so its canonical form is just "s"). */
bool canon_sid_ok(const char *s);

/* The envelope around a record's data:
 *   {"data":DATA,["replica":"R",]"seq":N,"session":"ID"|null,"ts":T,"type":"NAME","v":1}
 * ("replica": audit.replica, when set: which gateway's chain this is).
 * canon_tail writes everything after DATA; returns its length (< CANON_TAIL_MAX). */
#define CANON_HEAD "{\"data\":"
#define CANON_HEAD_LEN 8
#define CANON_TAIL_MAX (256 + 80 + AUDIT_SID_MAX)
size_t canon_tail(char *out, uint64_t seq, const char *sid, int64_t ts, const char *type,
                  const char *replica);
/* Decimal digits of v (no NUL); out needs 20 (u64) / 21 (i64) bytes. Returns the length. */
size_t canon_u64(char *out, uint64_t v);
size_t canon_i64(char *out, int64_t v);

void hex_encode(char *out, const uint8_t *in, size_t n); /* 2n chars + NUL */
bool hex_decode(uint8_t *out, const char *in, size_t n); /* exactly 2n hex chars */
void be64_put(uint8_t *p, uint64_t v);
uint64_t be64_get(const uint8_t *p);

/* hash = SHA-256(prev || parts...) */
void chain_hash(uint8_t out[AUDIT_HASH_LEN], const uint8_t prev[AUDIT_HASH_LEN],
                const void *const *parts, const size_t *lens, size_t nparts);
/* The same hash with SHA-256 fetched once and one context reused (the writer
 * thread's; one hasher per thread). chain_hasher_init leaves ctx NULL when
 * OpenSSL fails, and chain_hash_with then falls back to chain_hash. */
typedef struct chain_hasher {
    EVP_MD *md;
    EVP_MD_CTX *ctx;
} chain_hasher_t;
void chain_hasher_init(chain_hasher_t *h);
void chain_hasher_free(chain_hasher_t *h);
void chain_hash_with(chain_hasher_t *h, uint8_t out[AUDIT_HASH_LEN],
                     const uint8_t prev[AUDIT_HASH_LEN], const void *const *parts,
                     const size_t *lens, size_t nparts);

/* A stored record value, split; false if too short or of an unknown version. */
typedef struct rec_view {
    const uint8_t *prev, *hash;
    const char *canon;
    size_t canon_len;
} rec_view_t;
bool rec_view(const void *val, size_t len, rec_view_t *out);

/* The envelope fields of a canonical record, parsed (cJSON); false if the
 * bytes are not such an object. json is the whole parsed record (caller deletes). */
typedef struct rec_env {
    cJSON *json;
    uint64_t seq;
    int64_t ts;
    const char *type, *session;
    const cJSON *data;
} rec_env_t;
bool rec_env_parse(const char *canon, size_t len, rec_env_t *out);
/* Only "ts", found from the end of the bytes without a full parse; false if absent. */
bool rec_ts_fast(const char *canon, size_t len, int64_t *ts);

/* Checkpoint: canonical {"hash":HEX,"key":HEX|null,"seq":N,"ts":T,"v":1};
 * the signature (Ed25519, 64 bytes, or none) covers exactly these bytes. */
void canon_checkpoint(buf_t *b, uint64_t seq, const uint8_t hash[AUDIT_HASH_LEN],
                      const uint8_t *key_id, int64_t ts);
typedef struct cp_view {
    uint64_t seq;
    int64_t ts;
    uint8_t hash[AUDIT_HASH_LEN];
    bool has_key;
    uint8_t key_id[AUDIT_HASH_LEN];
    const uint8_t *sig;
    size_t sig_len;
    const char *canon;
    size_t canon_len;
} cp_view_t;
bool cp_view(const void *val, size_t len, cp_view_t *out);

/* ---- sign.c ---- */

/* Load an Ed25519 key from PEM: a private key (signing) or, when want_private
 * is false, either a private or a public key (verification). NULL with why. */
EVP_PKEY *sign_load_key(const char *path, bool want_private, char *why, size_t whysz);
/* key id = SHA-256 of the 32-byte raw public key */
bool sign_key_id(EVP_PKEY *k, uint8_t out[AUDIT_HASH_LEN]);
bool sign_ed25519(EVP_PKEY *k, const void *msg, size_t len, uint8_t sig[64]);
bool sign_verify(EVP_PKEY *k, const void *msg, size_t len, const uint8_t *sig, size_t siglen);

/* ---- store.c ---- */

/* Open (creating when rw) the environment and every named database. */
int store_open(const char *path, uint64_t map_size, bool rw, bool nosync, MDB_env **env,
               audit_dbs_t *dbs, char *err, size_t errsz);
const char *store_strerror(int rc);
/* A read-only transaction; when the writer (another process) grew the map
 * past this process's mapping, adopt the new size first (MDB_MAP_RESIZED).
 * Only for environments this process does not write (the CLI's). */
int store_read_txn(MDB_env *env, MDB_txn **txn);

/* The first key whose record's ts >= ts_us (bisection: ts never decreases
 * along the chain); last key + 1 when there is none. */
uint64_t store_seq_at(MDB_txn *txn, MDB_dbi records, int64_t ts_us);
/* Bytes of the map in use by every database of the environment (ours and any
 * other module's) as of the last commit: its last page number less the free list. Free
 * pages still pinned by a reader count as free. */
uint64_t store_used_bytes(MDB_env *env); /* its own read transaction */
/* Bytes of pages the B-trees use (free pages excluded). */
uint64_t store_live_bytes(MDB_txn *txn, const audit_dbs_t *dbs);

/* ---- reader.c, for verify.c and present.c ---- */

MDB_env *reader_env(audit_reader_t *r, audit_dbs_t *dbs);
audit_reader_t *reader_borrow(MDB_env *env, const audit_dbs_t *dbs, _Atomic int *count);
/* rec from a stored key/value; rec->data points into *json, which the caller deletes. */
void reader_fill(audit_record_t *rec, const MDB_val *k, const MDB_val *v, cJSON **json);

/* ---- retire.c: retention ---- */

/* ---- presentation without the store (present.c) ----
 * audit_print_replay, audit_print_sessions and audit_export are a walk over the
 * store feeding these; tests/fuzz/fuzz_present.c feeds them decoded values
 * directly. The _add functions are callbacks for audit_reader_* (-1: out of
 * memory, and _print then fails or prints nothing). Output for a terminal
 * escapes every control and bidi character an agent could have put in a value. */
typedef struct present_replay present_replay_t;
present_replay_t *present_replay_new(void);
int present_replay_add(void *replay, const audit_record_t *rec);
size_t present_replay_count(const present_replay_t *l);
void present_replay_print(const present_replay_t *l, const char *sid, bool json, FILE *out);
void present_replay_free(present_replay_t *l);

typedef struct present_sessions present_sessions_t;
present_sessions_t *present_sessions_new(bool json);
int present_sessions_add(void *sessions, const audit_session_t *s);
int present_sessions_print(const present_sessions_t *l, FILE *out); /* -1: out of memory */
void present_sessions_free(present_sessions_t *l);

/* One line of `bulwark audit export` for a stored record / checkpoint value. */
void present_export_record(FILE *out, uint64_t seq, const void *val, size_t len);
void present_export_checkpoint(FILE *out, const void *val, size_t len);

/* A session row from its sessions-db value (parsed JSON; strings point into j). */
void reader_session(audit_session_t *s, const cJSON *j, const char *id);

typedef struct retire_params {
    uint64_t head_seq; /* the writer's last committed seq */
    int64_t before_us; /* retire records older than this; 0 = no age limit */
    uint64_t max_size; /* keep the live data below this; 0 = no size limit */
    uint64_t map_size;
    bool emergency; /* the map is full: retire at least a quarter (size limit only) */
} retire_params_t;
typedef struct retire_result {
    uint64_t records, anchor; /* retired records up to anchor (its checkpoint stays) */
    uint64_t first;           /* the first record before retiring */
    const char *reason;       /* "age", "size", "map_full" */
} retire_result_t;
/* Delete the oldest records, and their index entries, up to the newest
 * checkpoint that the limits allow (never the last record); checkpoints
 * older than that anchor go too. Runs in the writer thread. */
int store_retire(MDB_env *env, const audit_dbs_t *dbs, const retire_params_t *p,
                 retire_result_t *r);

#endif
