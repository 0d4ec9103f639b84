/*
 * audit — the session record of SPEC section 7: every record is one entry of a
 * SHA-256 hash chain in LMDB, optionally anchored by Ed25519-signed
 * checkpoints. docs/audit.md describes the records, the canonical bytes and
 * how to check an export outside Bulwark.
 *
 * Writing side (the gateway). One writer thread owns every LMDB write
 * transaction. audit_append() never blocks on the disk: it encodes the record
 * (on the calling thread), assigns the next sequence number, queues it and
 * returns. The writer commits whatever is queued as one transaction (group
 * commit: one fsync per group), then publishes the highest durable sequence
 * number and calls notify(arg) — from the writer thread, so notify must only
 * wake the loop (ev_async_send). notify is also called whenever
 * audit_failing() changes.
 *
 *   strict / strict-writes   a statement's record is durable once
 *                            audit_durable_seq() >= its seq (fsync per group)
 *   batched                  commits skip fsync; the writer syncs every
 *                            sync_interval and only then advances the durable seq
 *
 * Failure (map full, disk full, I/O error): the group being written stays
 * queued and is retried with backoff (every record that audit_append accepted
 * is eventually written, in order, while the process lives), audit_failing()
 * turns true, and audit_append() refuses new records with -1 until a retry
 * succeeds; the writer then appends a "note" record saying how many records
 * were refused. The map counts as full at map_size less a headroom kept
 * for retention's own transactions (LMDB needs free pages even to delete);
 * there the writer signs the head, grows the map up to audit.max_map_size if
 * set, and otherwise fails until retention (if set: by age, by size, and
 * first thing on a full map, down to a checkpoint that stays as the chain's
 * signed anchor) has freed room.
 *
 * All functions of the writing side are thread-safe (several loops may append).
 * docs/audit.md ("For the proxy") says which record to append when.
 *
 * Reading side (CLI, any process): audit_reader_open() opens the same
 * environment read-only (MDB_RDONLY; no lock conflicts with a running gateway)
 * — in another process: LMDB forbids opening one environment twice in a
 * process; inside the gateway use audit_reader_shared().
 */
#ifndef BULWARK_AUDIT_AUDIT_H
#define BULWARK_AUDIT_AUDIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "config.h"
#include "util/buf.h"

typedef struct audit audit_t;

/*
 * Record types and the fields the proxy puts in them (all optional unless
 * marked; times are microseconds since the epoch, UTC; strings are UTF-8 —
 * bytes that are not become U+FFFD; integers beyond 2^53 and fractions are
 * stored as strings, so pass big numbers as strings yourself).
 *
 * SESSION_START  session id required. sub*, iss*, role*, target*, client
 *                ("addr:port"), tls ("TLSv1.3" or null), application_name,
 *                claims (object: the token claims the role matched on)
 * SESSION_END    reason* (as logged), and counts: statements, denied, errors,
 *                bytes_in, bytes_out ...
 * LOGIN_FAILED   session id optional (the connection's id). reason*, sqlstate,
 *                sub, iss (when the token was readable), role, target, client
 * STATEMENT      appended BEFORE the statement is forwarded (the proxy holds it
 *                until durable per the durability mode). sql*, params (array of
 *                strings or null: Bind values after the detectors masked them),
 *                protocol ("simple" | "extended"), intent (string or object),
 *                decision* ("allow" | "deny" | "review" | ...), rule, approval,
 *                start*, message (the error sent, for a refused statement)
 * RESULT         appended when the statement completes (or is refused): stmt*
 *                (the STATEMENT's seq), end*, tag (command tag), rows, sqlstate,
 *                error (message), columns (array of names), types (array of type
 *                OIDs; numeric ones are right-aligned in replay as psql does),
 *                values (array of rows, each an array of text or null, as the
 *                client saw them: masked, at most capture_rows / capture_bytes),
 *                truncated (true when rows were left out)
 * NOTE           the gateway's own events (open, close, audit failure and
 *                recovery, retirement): event*, ...
 */
typedef enum {
    AUDIT_REC_SESSION_START = 1,
    AUDIT_REC_SESSION_END,
    AUDIT_REC_LOGIN_FAILED,
    AUDIT_REC_STATEMENT,
    AUDIT_REC_RESULT,
    AUDIT_REC_NOTE,
} audit_rec_type_t;
#define AUDIT_REC_MAX AUDIT_REC_NOTE

/* "session_start", "session_end", "login_failed", "statement", "result", "note";
 * NULL for anything else. audit_rec_type_parse is the inverse (0 if unknown). */
const char *audit_rec_type_name(audit_rec_type_t t);
audit_rec_type_t audit_rec_type_parse(const char *name);

/* Tunables with defaults (zero fields take the default). */
typedef struct audit_opts {
    uint32_t checkpoint_every;      /* records between checkpoints; default 1000 */
    int64_t checkpoint_interval_ms; /* or this long after an unsigned record; default 60s */
    int64_t sync_interval_ms;       /* batched: fsync period; default 200ms */
    size_t queue_max_records;       /* accepted, not yet committed; default 65536 */
    size_t queue_max_bytes;         /* default 64 MiB */
    size_t group_max_records;       /* records per commit; default 4096 */
    int64_t (*now_us)(void);        /* wall clock for record times (tests); default realtime */
} audit_opts_t;

/* Open (creating) the store at cfg->audit.path, load the signing key, read the
 * chain head (a new process continues the existing chain), start the writer
 * and append a "note" {event: "open"}. NULL with a one-line reason in err.
 * Fails if another process has the store open for writing. */
audit_t *audit_open(const cfg_t *cfg, const audit_opts_t *opts, void (*notify)(void *arg),
                    void *arg, char *err, size_t errsz) __attribute__((warn_unused_result));

/* Append {event: "close"}, write everything queued (giving up after 5 s if
 * the store keeps failing, with an error log naming what was lost), sign the
 * chain head, sync, stop the writer and close. NULL is a no-op. */
void audit_close(audit_t *a);

/* Queue a record. session_id: NULL, or 1..128 printable ASCII bytes without
 * '"' and '\\'. fields: a JSON object or NULL; always consumed (deleted).
 * Returns 0 and the record's sequence number, or -1 when it cannot be
 * recorded: the store is failing, the queue is full, the record is larger
 * than map_size / 8, or the arguments are invalid (logged). The proxy turns -1
 * into ERROR 58030 (on_failure deny) or a loud log line (allow). */
int audit_append(audit_t *a, audit_rec_type_t type, const char *session_id, cJSON *fields,
                 uint64_t *seq_out) __attribute__((warn_unused_result));

/*
 * The per-statement fast path: a record's fields built without cJSON. The
 * caller appends values to an audit_fields_t (a reusable buffer: one memcpy
 * per value, no allocation per value); audit_append_fields copies the bytes
 * into the queue, and the writer thread turns them into the canonical JSON
 * that audit_append would have stored for the same fields as cJSON (member
 * order, escapes and UTF-8 repair happen there, off the caller's thread).
 *
 * Keys: member names inside objects (and at the top level, which is the
 * record's data object); NULL inside arrays. Any order; a name given twice
 * keeps its first value. Integers beyond 2^53 are stored as strings.
 * Errors (nesting deeper than 64, a name over 255 bytes, the size limit) are
 * sticky: audit_append_fields then refuses the record.
 */
typedef struct audit_fields {
    buf_t b;
    unsigned depth;
} audit_fields_t;
void audit_fields_init(audit_fields_t *f, size_t limit); /* limit: bytes, 0 = none */
void audit_fields_reset(audit_fields_t *f);              /* empty again; keeps the memory */
void audit_fields_free(audit_fields_t *f);
bool audit_fields_ok(const audit_fields_t *f); /* no error, every open closed */
void audit_f_str(audit_fields_t *f, const char *key, const char *s, size_t len);
void audit_f_cstr(audit_fields_t *f, const char *key, const char *s); /* NULL: null */
void audit_f_int(audit_fields_t *f, const char *key, int64_t v);
void audit_f_bool(audit_fields_t *f, const char *key, bool v);
void audit_f_null(audit_fields_t *f, const char *key);
void audit_f_open(audit_fields_t *f, const char *key, char kind); /* '{' or '[' */
void audit_f_close(audit_fields_t *f);
void audit_f_json(audit_fields_t *f, const char *key, const cJSON *v); /* a copy of v */
/* What another audit_fields_t holds, with every open closed: with a key,
 * exactly one value (e.g. an array opened there with a NULL key); with key
 * NULL, members to add to the object being built here. */
void audit_f_splice(audit_fields_t *f, const char *key, const audit_fields_t *value);

/* audit_append for a record built as fields (not consumed; reset it to reuse).
 * Not for SESSION_START / SESSION_END, whose fields also feed the session
 * indexes: use audit_append. Same results as audit_append. */
int audit_append_fields(audit_t *a, audit_rec_type_t type, const char *session_id,
                        const audit_fields_t *f, uint64_t *seq_out)
    __attribute__((warn_unused_result));

/* Highest sequence number such that it and every record before it is durable. */
uint64_t audit_durable_seq(const audit_t *a);
/* True while the store cannot write; appends are refused meanwhile. */
bool audit_failing(const audit_t *a);
/* True while the queue of accepted, uncommitted records is past 3/4 of its limits
 * (and the store is not failing): the loops stop taking statements from clients
 * until the writer catches up (backpressure instead of refusals); the notify is
 * called when it ends. */
bool audit_congested(const audit_t *a);

/* Block until every record appended so far is durable, or timeout_ms passes,
 * or the store fails. 0 when durable. For tests and the CLI — never on a loop. */
int audit_flush(audit_t *a, int64_t timeout_ms);

typedef struct audit_stats {
    uint64_t appended, refused; /* audit_append outcomes */
    uint64_t written, commits;  /* records and transactions committed */
    uint64_t syncs, checkpoints, retired, failures;
    uint64_t batch_max;                      /* records in the largest commit */
    uint64_t commit_us_total, commit_us_max; /* commit (with fsync unless batched) */
    uint64_t batch_hist[16];                 /* commits of 1, 2-3, 4-7, ... records */
    uint64_t commit_us_hist[24];             /* commits taking < 2^(i+1) µs */
    uint64_t bytes_written;                  /* record values (header + canonical bytes) */
} audit_stats_t;
void audit_get_stats(audit_t *a, audit_stats_t *out);

/* The open LMDB environment, for modules that keep their own named
 * databases in the same store (src/approval/: approval requests and grants;
 * they open at most AUDIT_MAX_DBS - 7 of them). Valid until audit_close(). */
struct MDB_env;
struct MDB_env *audit_env(audit_t *a);
/* Such a module runs each of its transactions between audit_env_enter() and
 * audit_env_leave() (a shared lock, held only for the transaction): LMDB may
 * resize the map (audit.max_map_size) only while this process has no
 * transaction open, so the writer grows it only when it can take the lock
 * exclusively, and never waits for it. Once audit_env() was called, the
 * writer no longer reopens a panicked environment (the module holds it). */
void audit_env_enter(audit_t *a);
void audit_env_leave(audit_t *a);

/* ---- reading side ---- */

typedef struct audit_reader audit_reader_t;

/* Open the store at path read-only. NULL with a reason. */
audit_reader_t *audit_reader_open(const char *path, char *err, size_t errsz)
    __attribute__((warn_unused_result));
void audit_reader_close(audit_reader_t *r);
/* A reader on the gateway's own open store (LMDB allows one environment per
 * process): read transactions from any thread, e.g. for the admin console.
 * Close it before audit_close(). NULL if the store is not open. */
audit_reader_t *audit_reader_shared(audit_t *a) __attribute__((warn_unused_result));

/* One stored record as read. Pointers are valid during the callback only.
 * parsed is false when the stored bytes are not a well-formed record (then
 * only key and the raw fields are set). hash_ok: the stored hash matches
 * SHA-256(prev_hash || canon) — it says nothing about the links (audit_verify). */
typedef struct audit_record {
    uint64_t key, seq;
    int64_t ts;
    audit_rec_type_t type; /* 0 if unknown */
    const char *type_name, *session;
    const cJSON *data;
    const uint8_t *prev_hash, *hash; /* 32 bytes, or NULL if the value is too short */
    const char *canon;
    size_t canon_len;
    bool parsed, hash_ok;
} audit_record_t;

/* Return 0 to go on, anything else to stop (audit_reader_* then returns it). */
typedef int (*audit_record_fn)(void *arg, const audit_record_t *rec);

/* Every record with key >= from_seq, in order, in one read transaction.
 * Returns 0, the callback's stop value, or -1 (read error). */
int audit_reader_records(audit_reader_t *r, uint64_t from_seq, audit_record_fn fn, void *arg);
/* The records of one session, in order. */
int audit_reader_session_records(audit_reader_t *r, const char *session_id, audit_record_fn fn,
                                 void *arg);
/* The first key whose record's ts >= ts_us (records are in time order: the
 * writer never lets ts go backwards); last key + 1 if none. */
uint64_t audit_reader_seq_at(audit_reader_t *r, int64_t ts_us);

typedef struct audit_session {
    const char *id, *sub, *iss, *role, *target, *client, *application_name, *end_reason;
    int64_t start_us, end_us; /* end_us 0 while open (or if the end was never recorded) */
    uint64_t first_seq, records;
} audit_session_t;

typedef struct audit_session_filter {
    int64_t since_us;       /* sessions that started at or after; 0 = all */
    const char *role, *sub; /* exact match, or NULL */
} audit_session_filter_t;

/* Matching sessions by start time. Returns 0, the callback's stop value, or -1. */
int audit_reader_sessions(audit_reader_t *r, const audit_session_filter_t *f,
                          int (*fn)(void *arg, const audit_session_t *s), void *arg);

/* Walk the whole chain and every checkpoint. key_file: PEM Ed25519 key
 * (private or public) whose signatures to check, or NULL (signatures are then
 * reported as unchecked). Returns 0 when it ran (res->ok says whether the
 * chain is intact), -1 when it could not (res->problem says why). */
typedef struct audit_verify_result {
    bool ok;
    uint64_t records, first_seq, last_seq;
    uint64_t checkpoints, checkpoints_signed, last_checkpoint_seq;
    uint64_t anchor_seq;    /* records up to here were retired; 0 if none */
    uint64_t unsigned_tail; /* records after the last checkpoint */
    uint64_t bad_seq;       /* the record named by problem, 0 if none */
    bool clean_end;         /* the last record is a "close" note */
    bool signatures_checked;
    char problem[512]; /* one line naming the first broken record */
    char warning[256]; /* e.g. signatures present but no key given */
} audit_verify_result_t;
int audit_verify(audit_reader_t *r, const char *key_file, audit_verify_result_t *res);

/* ---- presentation (bulwark sessions / replay / audit export) ---- */

/* --since values: a duration back from now_us ("90s", "1h", "7d"), or a UTC
 * time "YYYY-MM-DD", "YYYY-MM-DDTHH:MM[:SS[.ffffff]]" (a space may replace
 * the T) with an optional "Z" or "+HH:MM"/"-HH:MM" offset. */
bool audit_parse_since(const char *s, int64_t now_us, int64_t *out_us)
    __attribute__((warn_unused_result));

/* psql's aligned format: header centred, numeric-aligned columns ('r' in
 * aligns) padded left, multi-line cells continued with '+', control
 * characters escaped, followed by "(N rows)". cells is row-major; a NULL cell
 * prints empty (SQL NULL). */
void audit_fmt_aligned(FILE *out, size_t ncols, const char *const *names, const char *aligns,
                       size_t nrows, const char *const *cells);

int audit_print_sessions(audit_reader_t *r, const audit_session_filter_t *f, bool json, FILE *out);
/* 0, 1 = no such session (err says so), -1 = read error. */
int audit_print_replay(audit_reader_t *r, const char *session_id, bool json, FILE *out, char *err,
                       size_t errsz);
/* One JSON object per line for each record with key >= from_seq:
 *   {"hash":H,"prev_hash":P,"record":CANONICAL,"seq":N}
 * and after a record that has a checkpoint: {"checkpoint":CANONICAL,"sig":B64|null}.
 * follow: keep polling for new records until *stop becomes non-zero.
 * Returns 0, or -1 on a read or write error. */
int audit_export(audit_reader_t *r, uint64_t from_seq, FILE *out, bool follow, volatile int *stop);
/* One pass of audit_export in one short read transaction: the lines of every
 * record with key >= *next; *next becomes the key after the last one written
 * (unchanged when there is none) and *first the first key written (0: none).
 * The anchor checkpoint line is written before the first record only while
 * *anchored is false (then it becomes true). For `export --follow --cursor`. */
int audit_export_pass(audit_reader_t *r, uint64_t *next, bool *anchored, FILE *out,
                      uint64_t *first);

#endif
