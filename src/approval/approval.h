/*
 * approval — just-in-time approval requests and grants (SPEC 6, issue 7).
 *
 * Requests live in two named databases of the audit store's LMDB
 * environment, so that the gateway and `bulwark approvals/approve/deny/
 * revoke` (other processes) see the same requests:
 *
 *   approvals        be64(id) -> JSON request (see appr_req_t; docs/approvals.md)
 *   approval_grants  SHA-256(iss \0 sub \0 role \0 target \0 fingerprint) || be64(id) -> ""
 *                    one entry per usable grant: an approved request of mode
 *                    "reject" (one use) or any approval given "--for" a
 *                    duration (until it ends or is revoked)
 *
 * Request states: pending -> approved | denied | timeout | withdrawn. Only a
 * pending request that has not passed its expiry can be decided; the gateway
 * turns an expired pending request into "timeout" and one whose client went
 * away into "withdrawn" (both conditional on the request still being
 * pending, so a decision and a timeout never both stand).
 *
 * Store functions are synchronous LMDB transactions: call the writing ones
 * from the CLI or from the worker thread (appr_worker_*), never on an event
 * loop. Read functions (appr_get, appr_find_grant, appr_list) only take a
 * read transaction and are cheap enough for a loop timer.
 *
 * The gateway attaches to its own open environment (LMDB allows one per
 * process: audit_env()); other processes open it with appr_open().
 */
#ifndef BULWARK_APPROVAL_APPROVAL_H
#define BULWARK_APPROVAL_APPROVAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "config.h"

struct MDB_env;
typedef struct appr_store appr_store_t;

typedef enum {
    APPR_PENDING = 1,
    APPR_APPROVED,
    APPR_DENIED,
    APPR_TIMEOUT,
    APPR_WITHDRAWN,
} appr_state_t;

const char *appr_state_name(appr_state_t s); /* "pending", ... */

/* One request. Strings are owned (appr_req_free). Times: µs since the epoch. */
typedef struct appr_req {
    uint64_t id;
    appr_state_t state;
    char *session, *sub, *iss, *role, *target, *sql, *fingerprint, *rule;
    bool reject;      /* mode "reject" (else "hold") */
    char **approvers; /* role names from the rule */
    size_t n_approvers;
    int64_t created_us, expires_us;
    /* the decision */
    int64_t decided_us;
    char *by, *by_role, *os_user, *via, *reason; /* via: "cli" | "console" | "gateway" */
    int64_t grant_until_us; /* approved --for: the grant's end; 0 = this once */
    bool used;              /* a one-use grant (reject mode) was used */
    bool revoked;
    char *revoked_by;
} appr_req_t;

void appr_req_free(appr_req_t *r);
/* For display: "expired" for a request still pending past its expiry (a
 * reject-mode request nobody decided; nothing waits on it), else the state. */
const char *appr_state_at(const appr_req_t *r, int64_t now_us);

typedef enum {
    APPR_OK = 0,
    APPR_ERR = -1, /* LMDB or memory error; err says which */
    APPR_NOT_FOUND = -2,
    APPR_NOT_PENDING = -3, /* already decided, timed out or withdrawn */
    APPR_EXPIRED = -4,     /* pending but past its expiry */
    APPR_NOT_GRANT = -5,   /* revoke: not an approved request with a usable grant */
} appr_rc_t;

/* Open the environment at path (the audit store, created by the gateway)
 * for reading and writing from another process. NULL with a reason. */
appr_store_t *appr_open(const char *path, char *err, size_t errsz)
    __attribute__((warn_unused_result));
/* Use an environment this process already has open (the gateway's audit
 * store), creating the databases if needed. NULL with a reason. */
appr_store_t *appr_attach(struct MDB_env *env, char *err, size_t errsz)
    __attribute__((warn_unused_result));
/* Calls around each transaction of an attached store (the gateway passes
 * audit_env_enter/audit_env_leave: the audit writer may resize the shared
 * map only while no transaction of this process is open). */
void appr_set_txn_guard(appr_store_t *st, void (*enter)(void *), void (*leave)(void *), void *arg);
void appr_close(appr_store_t *st); /* closes the environment only if appr_open opened it */

/* The store the config names: the audit store's LMDB (appr_open) or, with
 * state.backend "postgres", the shared PostgreSQL schema (for the CLI:
 * every call talks to the database and blocks). */
appr_store_t *appr_open_cfg(const cfg_t *c, char *err, size_t errsz)
    __attribute__((warn_unused_result));
/* The PostgreSQL backend (pg.c, docs/replicas.md). With changed != NULL it
 * runs for a gateway: a state thread connects (with backoff), creates or
 * migrates the bulwark_state schema, LISTENs on state.channel and polls
 * every approvals.poll_interval, keeping an in-memory table of live
 * requests and grants; appr_get/find_grant/list then read only that table
 * (never the network: safe on an event loop) and changed(arg) is called
 * from the state thread after it changed (it must only wake the loop).
 * Writes (create, decide, ...) always go to the database and block: call
 * them from the approval worker thread or a CLI. Without changed, every
 * call talks to the database directly (the CLI). */
appr_store_t *appr_pg_open(const cfg_t *c, void (*changed)(void *arg), void *arg, char *err,
                           size_t errsz) __attribute__((warn_unused_result));
/* True for the PostgreSQL backend (shared by several replicas). */
bool appr_shared(const appr_store_t *st);
/* A request id from the shared store's id blocks: 0 when it has none (the
 * state database is unreachable) or the store is LMDB (the caller counts). */
uint64_t appr_next_id(appr_store_t *st);
/* False (with why) while a shared store cannot be trusted to be current:
 * its state thread is not connected. LMDB: always true. */
bool appr_available(appr_store_t *st, char *why, size_t whysz);

/* Highest id stored (0 if none). */
uint64_t appr_last_id(appr_store_t *st);

/* Store a new request (r->id set by the caller, state pending). */
appr_rc_t appr_create(appr_store_t *st, const appr_req_t *r, char *err, size_t errsz);
appr_rc_t appr_get(appr_store_t *st, uint64_t id, appr_req_t *out);

/* Decide a pending request. approve: grant_ms > 0 makes it a grant for that
 * long (from now); a reject-mode approval without it is a one-use grant. */
typedef struct appr_decision {
    bool approve;
    const char *by, *by_role, *os_user, *via, *reason;
    int64_t grant_ms;
    int64_t now_us;
} appr_decision_t;
appr_rc_t appr_decide(appr_store_t *st, uint64_t id, const appr_decision_t *d, appr_req_t *out,
                      char *err, size_t errsz);

/* pending -> to (APPR_TIMEOUT or APPR_WITHDRAWN); APPR_NOT_PENDING if decided meanwhile. */
appr_rc_t appr_close_pending(appr_store_t *st, uint64_t id, appr_state_t to, int64_t now_us);

/* Revoke a grant: it stops matching at once. */
appr_rc_t appr_revoke(appr_store_t *st, uint64_t id, const char *by, int64_t now_us, char *err,
                      size_t errsz);

/* Retention: delete up to max requests created before before_us, oldest
 * first, except pending ones not yet expired and grants still in force.
 * *pruned counts them. */
appr_rc_t appr_prune(appr_store_t *st, int64_t before_us, int64_t now_us, size_t max,
                     size_t *pruned);

/* A one-use grant was used. */
appr_rc_t appr_consume(appr_store_t *st, uint64_t id);
/* Use a one-use grant only if it is still usable, atomically (in one
 * transaction: for the shared store the row is locked, so of two replicas
 * racing for it exactly one gets APPR_OK). APPR_NOT_GRANT with why ("already
 * used", "revoked", "not approved") when it cannot be used; APPR_ERR with why
 * when the store cannot be written. A timed grant is never used up (APPR_OK). */
appr_rc_t appr_claim(appr_store_t *st, uint64_t id, char *why, size_t whysz);

/* A usable grant of fingerprint to this identity: its request id and end
 * (0 = one use). skip(arg, id) true: ignore this id (uses not yet written).
 * APPR_NOT_FOUND when there is none. */
typedef struct appr_key {
    const char *iss, *sub, *role, *target, *fingerprint;
} appr_key_t;
appr_rc_t appr_find_grant(appr_store_t *st, const appr_key_t *k, int64_t now_us,
                          bool (*skip)(void *arg, uint64_t id), void *arg, uint64_t *id,
                          int64_t *until_us);

/* Requests newest first. filter: 0 pending only, 1 all, 2 usable grants
 * only. fn returns non-zero to stop. max_scan > 0: look at no more than
 * that many of the newest requests (a bound for callers on a loop). */
enum { APPR_LIST_PENDING, APPR_LIST_ALL, APPR_LIST_GRANTS };
int appr_list(appr_store_t *st, int filter, int64_t now_us, size_t max_scan,
              int (*fn)(void *arg, const appr_req_t *r), void *arg);

/* JSON of a request (for --json, the console and webhooks). */
cJSON *appr_req_json(const appr_req_t *r);

/* Who may decide (SPEC 6): an identity of a role listed in the request's
 * approvers, never the requester. The CLI names the approver with --as
 * NAME (a token subject): NAME must match the sub pattern of an identity of
 * such a role. Returns the matching role name (in cfg) or NULL with why. */
const char *appr_cli_approver_role(const cfg_t *cfg, const appr_req_t *r, const char *name,
                                   char *why, size_t whysz);
/* The console: a session of role `role` with token subject sub/iss. */
bool appr_may_decide(const appr_req_t *r, const char *role, const char *iss, const char *sub,
                     char *why, size_t whysz);

/* ---- the gateway's writer (a thread: writes never run on the loop) ---- */

typedef struct appr_worker appr_worker_t;

/* Start the thread on st. Ids continue after appr_last_id(). notify(arg) is
 * called from the worker thread when a decision's result is ready (it must
 * only wake the loop), and may be NULL. */
appr_worker_t *appr_worker_new(appr_store_t *st, void (*notify)(void *arg), void *arg)
    __attribute__((warn_unused_result));
/* Prune requests older than max_age_ms (0 = keep all; audit.retention.max_age)
 * about once an hour. */
void appr_worker_set_retention(appr_worker_t *w, int64_t max_age_ms);
/* Write what is queued, then stop. */
void appr_worker_free(appr_worker_t *w);
appr_store_t *appr_worker_store(appr_worker_t *w);
/* The next request id (thread-safe); 0 when the shared store has none to give. */
uint64_t appr_worker_next_id(appr_worker_t *w);
/* Queue writes (thread-safe, never block on the disk). create takes r
 * (its strings are then owned by the worker). -1 when the queue is full. */
int appr_worker_create(appr_worker_t *w, appr_req_t *r);
int appr_worker_close_pending(appr_worker_t *w, uint64_t id, appr_state_t to);
/* Marks id used at once for appr_worker_used(), and queues the write. */
int appr_worker_consume(appr_worker_t *w, uint64_t id);
/* Like consume, but the write is appr_claim and its outcome comes back
 * through appr_worker_results() under tag (res.claim set): with the shared
 * store a statement using a one-use grant waits for it (docs/replicas.md).
 * Counted at once for appr_worker_used() until the write is done. */
int appr_worker_claim(appr_worker_t *w, uint64_t id, uint64_t tag);
/* True while a use of id is queued but not yet written (a skip function for appr_find_grant). */
bool appr_worker_used(void *w, uint64_t id);

/* Reject mode: the pending request this gateway made for the same identity
 * and fingerprint (key: a hash of them), so that re-running a refused
 * statement does not make a new request each time. 0 = none remembered. */
uint64_t appr_worker_pending_for(appr_worker_t *w, uint64_t key);
void appr_worker_remember_pending(appr_worker_t *w, uint64_t key, uint64_t id);

/* A decision from the admin console, written by the worker; its outcome
 * comes back through appr_worker_results() under tag. d's strings are copied. */
int appr_worker_decide(appr_worker_t *w, uint64_t id, const appr_decision_t *d, uint64_t tag);
typedef struct appr_result {
    uint64_t tag, id;
    bool claim; /* appr_worker_claim's outcome (else a console decision's) */
    appr_rc_t rc;
    appr_state_t state; /* the request's state after the attempt */
    int64_t grant_until_us;
    char err[200];
} appr_result_t;
/* Hand every finished decision to fn (on the caller's thread). */
void appr_worker_results(appr_worker_t *w, void (*fn)(void *arg, const appr_result_t *r),
                         void *arg);

/* ---- webhook notification of new requests (a thread of its own; webhook.c) ---- */

typedef struct appr_webhook appr_webhook_t;
appr_webhook_t *appr_webhook_new(void) __attribute__((warn_unused_result));
/* Stop; posts still queued are dropped (logged). */
void appr_webhook_free(appr_webhook_t *w);
/* The JSON sent for a new request: appr_req_json() plus a Slack-compatible
 * "text" and "approve_command". */
cJSON *appr_webhook_payload(const appr_req_t *r);
/* Queue a POST of payload (consumed) to url; never blocks on the network.
 * Up to 4 attempts with backoff; -1 when the queue is full. */
int appr_webhook_post(appr_webhook_t *w, const char *url, uint64_t id, cJSON *payload);

/* "15m" etc. → ms; false if not a positive duration. */
bool appr_parse_duration(const char *s, int64_t *ms);

#endif
