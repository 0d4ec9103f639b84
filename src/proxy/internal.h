/*
 * Private to src/proxy/: the structures shared by its files.
 *
 * Ownership: a server is one worker loop (workers.h): it owns its listener,
 * its session list and a reference to the current runtime (config generation
 * + TLS contexts). A session holds a reference to the runtime it started
 * with, so a reload never changes the rules under a live session. Everything
 * here is touched by the loop's own thread only, except the resolver queue
 * (resolver.c), the hub's shared parts and mailboxes (workers.c), nsessions
 * (read by the metrics scrape) and runtime refcounts (atomic).
 */
#ifndef BULWARK_PROXY_INTERNAL_H
#define BULWARK_PROXY_INTERNAL_H

#include <ev.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <cjson/cJSON.h>

#include "config.h"
#include "metrics/metrics.h"
#include "policy/policy.h"
#include "util/buf.h"

/* Per-direction buffering: read at most READ_CHUNK at a time; stop reading a
 * side once the other side's output holds OUT_HIWAT unsent bytes and resume
 * below OUT_LOWAT. Memory per session is bounded by about
 * 2 * (IN_LIMIT + OUT_HIWAT + READ_CHUNK). */
#define READ_CHUNK (64 * 1024)
#define IN_LIMIT (256 * 1024)
#define OUT_HIWAT (256 * 1024)
#define OUT_LOWAT (64 * 1024)
#define OUT_LIMIT (OUT_HIWAT + 2 * READ_CHUNK + 64 * 1024)
/* PostgreSQL's own cap on a frontend message (PQ_LARGE_MESSAGE_LIMIT). */
#define MAX_MESSAGE_BODY ((size_t)0x3fffffff - 4)
/* Login-phase messages (both sides) are small; cap them. */
#define MAX_LOGIN_MESSAGE (64 * 1024)
#define CLOSE_FLUSH_TIMEOUT 5.0
/* Parse cache per loop: statement texts of the extended protocol repeat. */
#define POLICY_CACHE_ENTRIES 4096
#define POLICY_CACHE_BYTES (32u * 1024 * 1024)

/* A config generation with what was built from it. */
typedef struct runtime {
    cfg_t *cfg;
    SSL_CTX *server_tls;            /* NULL when no tls section */
    SSL_CTX **target_tls;           /* per target, for upstream TLS (NULL where sslmode=disable) */
    policy_set_t *policies;         /* every role's rules, compiled */
    struct pgw_scram_cache **scram; /* [worker * n_roles + role][upstream]: salted passwords,
                                      one copy per worker so that no loop writes another's */
    int nworkers;
    struct mask_rules **mask_rules; /* per role: its masks compiled (maskflow.h) */
    size_t n_mask_rules;
    atomic_int refcount; /* sessions of every worker, the workers, the hub */
} runtime_t;

runtime_t *runtime_new(cfg_t *cfg, int nworkers, char *err, size_t errsz);
runtime_t *runtime_retain(runtime_t *rt);
/* The SCRAM salted-password cache of one role's credential for a target. */
struct pgw_scram_cache *runtime_scram_cache(runtime_t *rt, int worker, const cfg_role_t *role,
                                            const cfg_upstream_t *cred);
void runtime_release(runtime_t *rt);

/* One socket, optionally wrapped in TLS, with its in/out buffers. */
typedef struct endpoint {
    int fd;
    SSL *ssl;
    ev_io rw, ww;
    buf_t in, out;
    bool read_wants_write; /* TLS: SSL_read needs the socket writable */
    bool force_write;      /* connecting or handshaking: wake on writable */
    bool write_wants_read; /* TLS: SSL_write needs the socket readable */
} endpoint_t;

typedef enum { IO_OK = 1, IO_AGAIN = 0, IO_EOF = -1, IO_ERR = -2 } io_status_t;

void ep_init(endpoint_t *e, struct ev_loop *loop, int fd,
             void (*cb)(struct ev_loop *, ev_io *, int), void *data);
void ep_close(endpoint_t *e, struct ev_loop *loop);
/* Read what is available (up to READ_CHUNK) into e->in. */
io_status_t ep_fill(endpoint_t *e);
/* Write as much of e->out as the socket takes. IO_OK = all written. */
io_status_t ep_flush(endpoint_t *e);
/* Start/stop the watchers: reading when `want_read`, writing when output is pending. */
void ep_watch(endpoint_t *e, struct ev_loop *loop, bool want_read);
const char *ep_tls_version(const endpoint_t *e);

typedef struct server server_t;
typedef struct session session_t;

typedef enum {
    ST_STARTUP,        /* reading the startup packet (maybe after TLS) */
    ST_TLS_ACCEPT,     /* client TLS handshake */
    ST_PASSWORD,       /* asked for the token, waiting for 'p' */
    ST_KEY_PENDING,    /* the token's key is being fetched (jwks_url) */
    ST_UPSTREAM_LOGIN, /* connecting and authenticating upstream */
    ST_RELAY,          /* session running */
    ST_CLOSING,        /* flushing a final message to the client, then close */
    ST_DEAD            /* closed; freed by the server's reaper after this loop pass */
} session_state_t;

typedef enum {
    UP_RESOLVING,
    UP_CONNECTING,
    UP_SSL_REQUEST,
    UP_TLS_CONNECT,
    UP_AUTH,
    UP_PROBE, /* reading search_path and the schemas for the policy session */
    UP_READY
} upstream_state_t;

struct resolve_req;
typedef struct gate gate_t;
typedef struct held held_t;

struct session {
    server_t *srv;
    runtime_t *rt;
    session_t *prev, *next; /* server's session list */
    session_t *cancel_next; /* cancel map chain */
    char id[17];
    session_state_t state;
    upstream_state_t ustate;
    endpoint_t client, upstream;
    ev_timer timer;      /* login timeout, then close-flush timeout */
    ev_timer expiry;     /* end_session_at_token_expiry */
    int64_t token_exp;   /* the token's exp, seconds since the epoch */
    char *pending_token; /* ST_KEY_PENDING: the token, wiped when done */
    size_t pending_token_len;
    char peer[64];
    bool client_tls;
    bool client_paused, upstream_paused;
    bool audit_paused; /* the audit queue is congested: statements wait (audit_congested) */
    bool hs_want_read; /* client TLS handshake direction */
    bool upstream_open;
    /* relay framing: bytes of the current message still to pass through, or
     * to drop (a refused message too large to hold) */
    size_t c2u_left, u2c_left, c2u_skip;
    gate_t *gate;        /* the policy in the data path */
    struct maskflow *mf; /* masking in the data path (NULL: the role masks nothing) */
    char probe_status;   /* upstream's first ReadyForQuery, held during the probe */
    int probe_set;       /* result set being read by the probe */
    char *probe_search_path;
    char **probe_schemas;
    size_t probe_nschemas;
    char last_backend_type;
    char tx_status; /* from the last ReadyForQuery */
    /* identity and routing, set during login */
    const cfg_role_t *role;
    const cfg_target_t *target;
    int target_index;
    char *role_name, *target_name, *subject, *issuer, *app_name;
    /* audit */
    struct recorder *rec; /* statements in flight, for RESULT records */
    bool recorded_start;
    bool holding;        /* the message at the input's head waits ... */
    uint64_t hold_seq;   /* ... until this record is durable */
    held_t *held;        /* ... or until a human decides (held.c) */
    bool admin;          /* the admin console (admin.c): no upstream */
    uint64_t admin_wait; /* the console's decision on its way (a tag), 0 = none */
    char *admin_rest;    /* the console's query string still to run */
    uint64_t n_statements, n_denied;
    buf_t params; /* upstream startup params: key\0value\0 ... */
    bool key_sent, in_cancel_map;
    /* upstream */
    struct sockaddr_storage uaddr; /* the address connected to (cancel requests go there) */
    socklen_t uaddr_len;
    struct sockaddr_storage *ualts; /* further addresses to try, as libpq does */
    socklen_t *ualt_lens;
    int nualts;
    struct resolve_req *resolving;
    void *scram;             /* pgw_scram_t * while SCRAM runs */
    uint32_t up_pid, up_key; /* upstream BackendKeyData */
    uint32_t my_pid, my_key; /* what the client got */
    uint64_t started_ms;
    uint64_t bytes_c2u, bytes_u2c;
    metrics_session_t mx; /* metrics: upstream timing, sessions_active */
};

struct server {
    struct ev_loop *loop;
    runtime_t *rt;
    char *config_path;
    int listen_fd;
    bool listener_loopback;
    ev_io listen_w;
    ev_timer accept_pause;
    ev_signal sig_term, sig_int, sig_hup;
    ev_timer grace;
    bool draining;
    session_t *sessions;
    atomic_int nsessions; /* written by this loop, read by the metrics scrape */
    session_t *graveyard; /* closed sessions, freed by `reaper` */
    ev_idle reaper;
    struct resolver *resolver;
    policy_cache_t *policy_cache;      /* parse cache of this loop */
    struct mask_scratch *mask_scratch; /* Vectorscan scratch of this loop (maskflow.c) */
    /* audit, keystore, approvals, webhook: one of each for the process, opened by
     * worker 0 before the other workers start (thread-safe; see workers.h) */
    struct audit *audit;             /* NULL: recording off */
    ev_async audit_w;                /* the audit writer's notify */
    struct ident_keystore *keystore; /* jwks_url keys, fetched by a worker */
    ev_async keys_w;                 /* the keystore's notify */
    struct file_watch *watches;      /* files of the current config (server.c) */
    size_t nwatches;
    ev_timer watch_poll;           /* stats them every second */
    ev_timer reload_delay;         /* debounce file changes */
    struct appr_worker *approvals; /* approval writes (NULL without the audit store) */
    ev_timer approvals_poll;       /* runs while nheld > 0 (held.c) */
    int nheld;
    ev_async approvals_w;         /* the approval worker's notify: console decisions */
    struct appr_webhook *webhook; /* approvals.webhook_url's sender */
    struct catsvc *catalogs;      /* masking catalog per target (catsvc.h), shared */
    uint64_t admin_tags;
    struct metrics *metrics; /* this loop's figures (NULL: no metrics_listen) */
    struct monitor *monitor; /* metrics_listen endpoint and health probes (monitor.h) */
    /* workers (workers.h): 0 is the main loop (signals, reload, metrics endpoint) */
    struct hub *hub;
    int worker_id;
    struct worker_box *box; /* messages from other workers */
    ev_async box_w;
    struct gather *gathers; /* console questions waiting for other workers */
};

#define CANCEL_BUCKETS 4096

/* server.c */
void server_cancel_add(server_t *srv, session_t *s);
void server_cancel_remove(server_t *srv, session_t *s);
/* A session of this worker (NULL if the key is unknown or another worker's). */
session_t *server_cancel_find(server_t *srv, uint32_t pid, uint32_t key);
/* The worker owning the session with this key (NULL: none). (workers.c) */
server_t *server_cancel_owner(server_t *srv, uint32_t pid, uint32_t key);
void server_session_gone(server_t *srv, session_t *s);

/* session.c */
session_t *session_new(server_t *srv, int fd, const struct sockaddr *peer);
/* Send a FATAL (or ERROR) to the client, then close: the one way a session ends
 * with a reason the client should see. */
void session_fail(session_t *s, const char *severity, const char *sqlstate, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Close at once; `reason` goes to the log. */
void session_close(session_t *s, const char *reason);
/* Upstream login finished (upstream.c → session.c). */
void session_upstream_ready(session_t *s);
void session_update_watchers(session_t *s);
void session_try_login(session_t *s, const char *tok, size_t toklen);
/* The audit store made progress: a held statement may go on. */
void session_resume(session_t *s);
/* The audit queue may have drained: a session paused by audit_congested reads on. */
void session_audit_relieved(session_t *s);
void session_flush_client(session_t *s);
void upstream_io_cb(struct ev_loop *loop, ev_io *w, int revents);
void session_free(session_t *s);
/* A cancel request for a session of this worker (a held statement is withdrawn,
 * a running one cancelled upstream); from: the requester, for the log. */
void session_cancel(server_t *srv, uint32_t pid, uint32_t key, const char *from);

/* upstream.c: from resolving the target to the upstream's first ReadyForQuery.
 * Ends in session_upstream_ready() or session_fail(). */
void upstream_start(session_t *s);
void upstream_login_io(session_t *s, int revents);

/* gate.c: the policy in the data path (see gate.c's header comment). */
typedef enum {
    GATE_FORWARD,   /* pass the message on unchanged */
    GATE_REPLACED,  /* a sentinel went upstream instead; drop the message */
    GATE_SKIP,      /* like REPLACED, for a message not held whole: drop its bytes */
    GATE_MALFORMED, /* FATAL 08P01 */
    GATE_FAILED,    /* out of memory or too many refusals in flight: end the session */
    GATE_HOLD       /* forward once s->hold_seq is durable (s->holding set) */
} gate_verdict_t;
gate_t *gate_new(const char *search_path, const char *session_user, const char *const *schemas,
                 size_t nschemas);
void gate_free(gate_t *g);
/* Q, P, F, C, E: the whole body; B: the whole body (whole true) or a prefix
 * holding its two names (gate_bind_prefix_len). */
gate_verdict_t gate_frontend(session_t *s, char type, const uint8_t *body, size_t len, bool whole);
/* The held message at the input's head (s->holding): GATE_HOLD while its record is not durable. */
gate_verdict_t gate_resume(session_t *s, char type, const uint8_t *body, size_t len);
size_t gate_bind_prefix_len(const uint8_t *body, size_t avail); /* 0 = need more */
gate_verdict_t gate_oversized(session_t *s, char type, const uint8_t *body, size_t avail,
                              size_t len);
bool gate_expects_errors(const session_t *s);
bool gate_backend_error(session_t *s, const uint8_t *body, size_t len); /* true: rewritten */
void gate_command_complete(session_t *s, const uint8_t *body, size_t len);
void gate_ready(session_t *s, char status);

/* record.c: what goes to the audit store, and when (see record.c). */
typedef struct rec_stmt {
    const char *protocol; /* "simple" | "extended" */
    const char *sql;
    const char *decision; /* "allow" | "deny" | "review" */
    const char *rule, *message;
    const struct audit_fields *params; /* one array value (rec_bind_params), copied in */
    const struct audit_fields *intent; /* rendered by rec_intent (a Parse's, kept), or */
    const policy_result_t *policy;     /* the intent, rendered from the result */
    bool writes, refused;
    uint64_t approval; /* the approval request that let it through (or holds it), 0 = none */
} rec_stmt_t;
/* The "intent" member of a STATEMENT record (every access of r) as one value, for a
 * statement whose record is written later (a Parse, recorded at each Execute). */
void rec_intent(struct audit_fields *f, const policy_result_t *r);
void rec_login_failed(session_t *s, const char *reason, const char *sqlstate);
void rec_session_start(session_t *s);
void rec_session_end(session_t *s, const char *reason);
/* -1: cannot record (apply on_failure). *wait: hold until rec_durable(seq). */
int rec_statement(session_t *s, const rec_stmt_t *st, uint64_t *seq, bool *wait);
bool rec_durable(const session_t *s, uint64_t seq);
bool rec_failing(const session_t *s);
void rec_refused_result(session_t *s, uint64_t seq, const char *sqlstate, const char *message);
void rec_inflight_push(session_t *s, uint64_t seq, char kind, uint64_t sync_index, cJSON *params);
/* A whole Bind's parameter values for its STATEMENT records, added to out as
 * one array value: text as is, binary as \x hex, every content detector's hit
 * redacted; -1 if malformed or out of memory. */
int rec_bind_params(session_t *s, const uint8_t *body, size_t len, struct audit_fields *out);
/* A loop thread's reusable record buffer: freed when its loop has ended. */
void rec_thread_end(void);
bool rec_inflight(const session_t *s);
bool rec_wants_rows(const session_t *s);
void rec_backend(session_t *s, char type, const uint8_t *body, size_t len);
void rec_ready(session_t *s, uint64_t syncs_recv);

/* held.c: holds for a human's approval (see held.c). */
typedef enum { HELD_PENDING, HELD_APPROVED, HELD_REFUSED } held_outcome_t;
struct held {
    uint64_t id;       /* the approval request */
    uint64_t stmt_seq; /* the held statement's STATEMENT record */
    uint64_t note_seq; /* the decision's record, once written */
    int64_t expires_us, timeout_ms, grant_until_us;
    held_outcome_t outcome;
    bool notice_sent, noted;
    bool claim;         /* not a human's decision: a one-use grant's use being confirmed */
    uint64_t claim_tag; /* ... by the approval worker (appr_worker_claim), under this tag */
    char rule[128], by[256], by_role[128], via[16];
    char sqlstate[6];
    char message[600];
};
typedef enum { REVIEW_PASS, REVIEW_HOLD, REVIEW_REFUSE } review_t;
typedef struct review_out {
    uint64_t approval;      /* the grant used, or the request created */
    int64_t grant_until_us; /* PASS: the grant's end, 0 = used once */
    char message[900];      /* REFUSE: what the client is told */
} review_out_t;
/* A `review` decision: pass on a grant, hold (s->held set, NOTICE sent) or refuse. */
review_t approval_review(session_t *s, const char *sql, size_t len, const policy_result_t *r,
                         review_out_t *out);
/* Append the decision's audit record for the held statement; -1 if it cannot be recorded. */
int approval_record(session_t *s);
/* The hold is over (decided) or the session ends (a pending request is withdrawn). */
void approval_end(session_t *s, const char *why);
/* A cancel request for a held session: 57014, request withdrawn. False if not held. */
bool approval_cancel(session_t *s);
/* The server's poll timer. */
void approval_poll(server_t *srv);
struct appr_result;
/* The approval worker's answer to a claim (held.c; on the session's own worker). */
void approval_claimed(server_t *srv, const struct appr_result *res);

/* admin.c: the admin console (the target "bulwark"; see admin.c). */
struct appr_result;
void admin_start(session_t *s); /* after a successful login */
void admin_input(session_t *s); /* what the client sent */
void admin_decided(server_t *srv, const struct appr_result *res);

/* cancel.c: forward a cancel request to an upstream address, fire and forget. */
void cancel_forward(server_t *srv, const struct sockaddr *addr, socklen_t len, uint32_t pid,
                    uint32_t key);

/* resolver.c: getaddrinfo off the loop thread. */
struct resolver *resolver_new(struct ev_loop *loop);
void resolver_free(struct resolver *r);
#define RESOLVE_MAX_ADDRS 8
/* Every address the name has (up to RESOLVE_MAX_ADDRS), in getaddrinfo's order. */
typedef void (*resolve_cb)(void *arg, int err, const struct sockaddr_storage *addrs,
                           const socklen_t *lens, int n);
struct resolve_req *resolver_lookup(struct resolver *r, const char *host, int port, resolve_cb cb,
                                    void *arg);
/* The callback will not be called; the request is freed when the worker is done. */
void resolver_cancel(struct resolve_req *req);

uint64_t now_ms(void);

/* limits.c: the soft RLIMIT_NOFILE raised to the hard one; client TCP keepalive. */
void proxy_raise_nofile(void);
void proxy_client_keepalive(int fd, int64_t idle_ms);

#endif
