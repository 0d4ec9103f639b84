/*
 * workers — `workers: N` event loops on N threads (private to src/proxy/;
 * docs/scaling.md is the user's view).
 *
 * Each worker is a server_t with a libev loop of its own, its own
 * SO_REUSEPORT listening socket (the kernel spreads new connections over
 * them), and everything its sessions touch on the hot path: the session list,
 * the graveyard, the parse cache, the resolver, the Vectorscan scratch, the
 * metrics registry, the approvals poll timer. A session never leaves the
 * worker that accepted it. Worker 0 runs on the main thread and is also the
 * control loop: signals, file watches, reload, the grace timer and the
 * metrics endpoint live there only.
 *
 * What the workers share, and how (the hub):
 *   runtime       the current config generation; swapped under rt_mu by the
 *                 main loop on reload; every worker then takes a reference to
 *                 the new one for its new sessions (WK_RELOAD). Refcounts of
 *                 runtime_t and cfg_t are atomic.
 *   cancel map    one map of every session's BackendKeyData under cancel_mu;
 *                 a CancelRequest that lands on another worker than the
 *                 session's is handed to the owner (a message), which acts on
 *                 it exactly as with one worker.
 *   audit, keys   one audit writer thread, one key store thread, one approval
 *   approvals     writer thread, one webhook thread (all thread-safe); their
 *                 notifies wake every worker (one ev_async per loop); console
 *                 decisions come back to worker 0, which hands each to the
 *                 worker whose console asked (the tag says which).
 *
 * Messages between workers: a bounded mailbox per worker (mutex + list +
 * ev_async). Control (reload, drain, stop, end sessions) travels as bits that
 * are never dropped; cancel forwarding and console questions as messages (a
 * full mailbox drops them, logged: a cancel is best effort by protocol).
 *
 * Everything here is set up before the worker threads start and torn down
 * after they are joined; while they run, only the hub's locked parts and the
 * mailboxes are touched from other threads.
 */
#ifndef BULWARK_PROXY_WORKERS_H
#define BULWARK_PROXY_WORKERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "policy/policy.h"
#include "util/buf.h"

struct server;
struct session;
struct runtime;
struct metrics;

typedef struct hub hub_t;

/* Control bits for workers_signal(). */
enum {
    WK_RELOAD = 1,  /* take the hub's current runtime for new sessions */
    WK_DRAIN = 2,   /* SIGTERM: stop accepting, end when the last session ends */
    WK_STOP = 4,    /* SIGINT: stop accepting, end every session now */
    WK_END_ALL = 8, /* the grace period is over: end every session now */
};

/* The hub for n workers around rt (a reference is taken). NULL: out of memory. */
hub_t *hub_new(int n, struct runtime *rt) __attribute__((warn_unused_result));
int hub_workers(const hub_t *h);
struct server *hub_worker(const hub_t *h, int i);
/* The current generation, retained for the caller. */
struct runtime *hub_runtime(hub_t *h);
/* Make rt (a reference is taken) the current generation. */
void hub_runtime_set(hub_t *h, struct runtime *rt);
/* Wake every worker's watcher of this kind (from any thread). */
void hub_wake_audit(hub_t *h);
void hub_wake_keys(hub_t *h);
void hub_wake_approvals(hub_t *h);
/* After every worker stopped: free the hub (drops its runtime reference). */
void hub_free(hub_t *h);

/* Worker 0 is main (already set up by the caller, with srv->hub set);
 * create workers 1..n-1 as copies of its shared parts, each with a loop of
 * its own, set up by init (server.c). -1 (logged) on failure. */
int workers_create(hub_t *h, struct server *main, int (*init)(struct server *srv));
/* Start the threads of workers 1..n-1; each runs its loop, then run_end. */
int workers_start(hub_t *h, void (*run_end)(struct server *srv));
/* Bits for every worker but main. */
void workers_signal(hub_t *h, unsigned bits);
/* Worker threads whose loop still runs. */
int workers_running(hub_t *h);
/* Wait for the threads of workers 1..n-1 to end (their loops were told to). */
void workers_join(hub_t *h);
/* Join (if not yet), then free workers 1..n-1 with fini (server.c). */
void workers_destroy(hub_t *h, void (*fini)(struct server *srv));

/* Per-loop setup and teardown of the mailbox (server.c calls these for
 * every worker, main included). handler: what a control bit means. */
int worker_box_init(struct server *srv, void (*control)(struct server *srv, unsigned bits));
void worker_box_fini(struct server *srv);

/* A fresh tag for a console request; tag % n names the worker asking. */
uint64_t worker_tag(struct server *srv);
int worker_of_tag(const struct server *srv, uint64_t tag);

/* Hand a cancel request to the worker owning the session (owner != srv). */
void worker_forward_cancel(struct server *owner, uint32_t pid, uint32_t key, const char *from);
/* Hand a console decision's result to the worker whose console asked. */
struct appr_result;
void worker_forward_decided(struct server *owner, const struct appr_result *r);

/* Console questions to every worker. make runs on each worker's own thread
 * (this one's at once) and appends its part to out; once all answered, done
 * runs here with the parts in worker order, for the console session still
 * waiting (s->admin_wait == the tag; cleared first), with later true: it must
 * then carry on with the console's input. With one worker, done runs before
 * this returns (later false) and admin_wait is left 0. -1: cannot ask. */
typedef void (*gather_make_fn)(struct server *srv, buf_t *out);
typedef void (*gather_done_fn)(struct session *s, const buf_t *parts, int n, bool later);
int workers_gather(struct session *s, gather_make_fn make, gather_done_fn done)
    __attribute__((warn_unused_result));

/* Sums over every worker, for the metrics endpoint and the console. */
int64_t workers_sessions(hub_t *h);
void workers_cache_stats(hub_t *h, policy_cache_stats_t *out);
/* The metrics registries of the workers (NULL entries where metrics are off). */
size_t workers_metrics(hub_t *h, struct metrics **out, size_t max);

#endif
