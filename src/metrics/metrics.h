/*
 * metrics — the gateway's figures (SPEC section 9) and the tiny HTTP endpoint
 * that serves them: Prometheus text on GET /metrics, /healthz and /livez.
 * docs/metrics.md lists every metric.
 *
 * Registry. A metrics_t belongs to one event loop: only that loop's thread
 * writes it (the hooks below), and any thread may read it. Series live in
 * fixed open-addressing tables that only grow: a slot is filled and then
 * published with a release store; values are C11 atomics (relaxed: a scrape
 * sees each value whole, not all values at one instant). So a scrape on one
 * loop can sum the registries of several loops (metrics_render takes an
 * array) without locks, and a second loop thread trips over nothing.
 *
 * Cardinality. Label values come from the config (role, target, rule, masked
 * column) or from small fixed sets (decision, reason, kind, detector); still,
 * a reload can bring new names, so each family holds at most
 * MX_MAX_SERIES label sets. Once a family is 3/4 full, new label sets are
 * counted in one series whose label values are all "_other", and label values
 * longer than MX_MAX_VALUE bytes are cut there. Nothing here allocates on the
 * hot path except a family's table on its first use.
 *
 * Hooks take NULL for m (metrics off) and NULL strings (shown as "").
 */
#ifndef BULWARK_METRICS_METRICS_H
#define BULWARK_METRICS_METRICS_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "audit/audit.h"
#include "policy/policy.h"
#include "util/buf.h"

#define MX_MAX_SERIES 1024
#define MX_MAX_VALUE 200

typedef struct metrics metrics_t;

metrics_t *metrics_new(void) __attribute__((warn_unused_result));
void metrics_free(metrics_t *m);

/* Monotonic clock for the latency hooks. */
uint64_t metrics_clock_ns(void);

/* ---- hooks (one call at each place in the proxy) ---- */

/* A client connection was accepted. */
void metrics_connection(metrics_t *m);
/* Per session: the timing of what went upstream, and whether the session
 * counts in bulwark_sessions_active. Embedded in the session, zeroed. */
typedef struct metrics_session {
    uint64_t sent_ns;     /* when the oldest unanswered sync point went upstream */
    uint32_t outstanding; /* sync points (Query, Sync, FunctionCall) sent, no ReadyForQuery yet */
    bool first_seen;      /* the reply's first byte was seen for the oldest one */
    bool active;          /* counted in sessions_active */
} metrics_session_t;
void metrics_session_start(metrics_t *m, metrics_session_t *ms, const char *role,
                           const char *target);
/* Safe to call for a session that never started (counts nothing then). */
void metrics_session_end(metrics_t *m, metrics_session_t *ms, const char *role, const char *target);
/* A statement (a Query's text or a Parse) was decided by `rule` (NULL: the
 * role's default, shown as "_default"); t0 from metrics_clock_ns()
 * when the gate took it: the gateway's time (parse, policy, audit enqueue). */
void metrics_statement(metrics_t *m, const char *role, const char *decision, const char *rule,
                       uint64_t t0);
/* reason: ident_status_name(), "unknown_role", "unknown_target", "no_access", "plaintext". */
void metrics_login_failed(metrics_t *m, const char *reason);
/* kind: "connect", "login", "timeout", "lost". */
void metrics_upstream_error(metrics_t *m, const char *target, const char *kind);
/* A masking catalog read ended (result "ok", "unchanged", "error"); written by
 * the catalog thread into a registry of its own (src/proxy/catsvc.c). */
void metrics_catalog_read(metrics_t *m, const char *target, const char *result);
/* Approval requests waiting for a decision, by role: +1 when one is created,
 * -1 when it is decided, times out or is withdrawn. */
void metrics_approvals_pending(metrics_t *m, const char *role, int delta);
/* n values were masked: by a column mask (column "schema.table.column",
 * detector NULL) or by a content detector (detector "email", ..., column the
 * output column's source if known, else NULL). Each call hashes its labels:
 * count per column in the result and call once per result (or per batch of
 * rows), not once per value. */
void metrics_masked(metrics_t *m, const char *column, const char *detector, uint64_t n);
/* Message type `type` went upstream; Q, S and F are sync points. */
void metrics_upstream_sent(metrics_session_t *ms, char type);
/* Bytes arrived from upstream: the first after a sync point is timed. */
void metrics_upstream_bytes(metrics_t *m, metrics_session_t *ms, const char *target);
/* A ReadyForQuery came from upstream. */
void metrics_upstream_ready(metrics_t *m, metrics_session_t *ms, const char *target);

/* ---- the scrape ---- */

typedef struct metrics_target_health {
    const char *name;
    bool up;            /* the last probe connected */
    double last_ok_age; /* seconds since the last good probe; < 0 = never */
} metrics_target_health_t;

/* Figures that live elsewhere, read at scrape time by the loop serving it. */
typedef struct metrics_snapshot {
    int64_t connections;     /* client connections open now */
    int64_t max_connections; /* max_client_conn */
    double start_time;       /* process start, seconds since the epoch */
    bool have_cache;
    policy_cache_stats_t cache;
    bool have_audit; /* the store is open */
    bool audit_failing;
    audit_stats_t audit;
    const metrics_target_health_t *targets;
    size_t n_targets;
} metrics_snapshot_t;

/* Append the Prometheus text exposition (format 0.0.4) of the registries
 * loops[0..n) summed, and of snap, to out (check out->failed). */
void metrics_render(buf_t *out, metrics_t *const *loops, size_t n, const metrics_snapshot_t *snap);

/* Append v as a label value: \ " and newline escaped (exposition format). */
void metrics_escape_label(buf_t *out, const char *v);

/* ---- the HTTP endpoint ---- */

typedef struct metrics_routes {
    void (*render)(void *arg, buf_t *out);              /* GET /metrics: the body */
    bool (*health)(void *arg, char *why, size_t whysz); /* GET /healthz: ready? why not */
    void *arg;
} metrics_routes_t;

/* One parsed request line. */
typedef enum {
    MX_REQ_INCOMPLETE, /* the header block has not ended yet */
    MX_REQ_OK,
    MX_REQ_BAD,    /* 400 */
    MX_REQ_METHOD, /* 405: only GET and HEAD */
} mx_req_status_t;
/* Parse an HTTP/1.x request held in buf[0..len): on MX_REQ_OK, path (without
 * the query string, NUL-terminated, at most pathsz - 1 bytes) and *head. */
mx_req_status_t metrics_http_parse(const char *buf, size_t len, char *path, size_t pathsz,
                                   bool *head);

typedef struct metrics_http metrics_http_t;
/* Listen on "host:port" (IPv6 as "[::1]:9632"; resolved here, before the loop
 * runs). Each connection: a request of at most 8 KiB within 5 s, one response,
 * then close; at most 64 connections at a time (more are closed at once).
 * NULL with a reason. */
metrics_http_t *metrics_http_new(struct ev_loop *loop, const char *hostport,
                                 const metrics_routes_t *routes, char *err, size_t errsz)
    __attribute__((warn_unused_result));
void metrics_http_free(metrics_http_t *h);

#endif
