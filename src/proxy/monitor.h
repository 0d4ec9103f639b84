/*
 * monitor — the server's side of metrics_listen (private to src/proxy/): the
 * loop's metrics registry (srv->metrics, which the proxy's hooks feed), the
 * HTTP endpoint (src/metrics/http.c) and the health of what the gateway
 * depends on.
 *
 * Health. Every MONITOR_PROBE_INTERVAL each configured target gets a
 * connection attempt: its host resolved off the loop (resolver.c), then a
 * non-blocking TCP connect, given one interval to complete, closed at once (PostgreSQL
 * logs nothing for a connection that sends no startup packet). /healthz is
 * 200 "ok" when the last probe of every target connected (within the last 3
 * intervals), the audit store is open and writing, and the server is not
 * draining; otherwise 503 with one line per problem. /livez is 200 whenever
 * the loop answers. Without metrics_listen none of this runs.
 */
#ifndef BULWARK_PROXY_MONITOR_H
#define BULWARK_PROXY_MONITOR_H

#include <stdbool.h>
#include <stddef.h>

#define MONITOR_PROBE_INTERVAL 2.0

struct server;
struct cfg;

/* Before the loop runs: listen on metrics_listen (if set), start probing.
 * -1 (logged) when metrics_listen cannot be served. */
int monitor_start(struct server *srv) __attribute__((warn_unused_result));
/* After a reload swapped srv->rt: probe the new config's targets (a changed
 * metrics_listen needs a restart: logged). */
void monitor_reload(struct server *srv);
void monitor_stop(struct server *srv);

/* The /healthz verdict; why gets one line per problem. */
bool monitor_ready(struct server *srv, char *why, size_t whysz);

#endif
