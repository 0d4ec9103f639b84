/*
 * catsvc — the masking catalog of each target, read once for every session
 * (issue 5 item 1; docs/masking.md "The shared catalog"). Private to
 * src/proxy/.
 *
 * One thread for the process (opened by worker 0 before the other workers
 * start, like the audit writer) keeps, per target that some masking role
 * reaches, a gateway-owned libpq connection made with the credential of the
 * first such role in the config, and reads the catalog over it (catalog.c's
 * SELECT, search_path = pg_catalog, read-only, statement_timeout 30 s) into
 * an immutable snapshot (catalog_t). A snapshot is published under a mutex
 * with a generation number; sessions on every loop take references
 * (catalog_retain) and swap only between statements.
 *
 * When: at once for every target when the service starts or a reload adds or
 * changes one; every masking.catalog_refresh; when a fingerprint check asked
 * for by a session (its first statement, or a result naming a table the
 * snapshot does not know) finds the catalog changed; and promptly when a session
 * reports a change (catsvc_changed: DDL passed through the gateway and its
 * transaction ended, or a result named a table the snapshot does not know);
 * reports arriving while a read is waiting or running coalesce into one
 * read after it.
 *
 * Failure (target down, authentication refused, a catalog over the size cap):
 * retried with backoff (0.25 s doubling up to catalog_refresh, at most 10 s),
 * the last good snapshot kept while it is younger than 3 x catalog_refresh;
 * after that the target has no snapshot and its sessions mask every relation
 * whole, until a read succeeds. Each state change is logged once.
 *
 * libpq runs on the service's thread only, with non-blocking connect and
 * reads polled in 100 ms slices, so catsvc_free never waits long. Nothing
 * here blocks a loop: catsvc_get and catsvc_changed take the mutex for a few
 * pointer operations.
 */
#ifndef BULWARK_PROXY_CATSVC_H
#define BULWARK_PROXY_CATSVC_H

#include <stdbool.h>
#include <stdint.h>

#include "proxy/maskflow.h"

struct runtime;
typedef struct catsvc catsvc_t;

/* Starts the thread (with no targets). NULL: out of memory or no thread. */
catsvc_t *catsvc_new(void);
/* Stops the thread, closes the connections, drops the snapshots (sessions
 * holding references keep theirs). */
void catsvc_free(catsvc_t *cs);
/* The targets of a config generation (main loop: start and every reload). */
void catsvc_sync(catsvc_t *cs, const struct runtime *rt);

typedef enum {
    CATSVC_SAME = 0,    /* *gen is current: keep what you hold */
    CATSVC_NEW = 1,     /* *out: a reference to the current snapshot (NULL: none, mask whole) */
    CATSVC_PENDING = 2, /* the first read of the target has not ended yet: wait */
} catsvc_state_t;
/* The target's snapshot if its generation differs from *gen (updated). */
catsvc_state_t catsvc_get(catsvc_t *cs, const char *target, uint64_t *gen, catalog_t **out);
/* Ask for a check that the target's snapshot is current, unless one found it
 * so within max_age_ms (or the target is failing, or not read yet): 0 = no
 * need, else a ticket for catsvc_checked. The thread compares a fingerprint
 * of the catalogs (row counts and row versions of pg_class, pg_attribute,
 * pg_rewrite, pg_inherits, pg_namespace) and reads the catalog only if it
 * changed. Requests coalesce. */
uint64_t catsvc_check(catsvc_t *cs, const char *target, int64_t max_age_ms);
/* That check has ended (whatever its outcome): catsvc_get has its result. */
bool catsvc_checked(catsvc_t *cs, const char *target, uint64_t ticket);
/* Changes whenever what catsvc_get or catsvc_checked would answer for any
 * target may have changed (one atomic load, no lock): a session that saw
 * this epoch and has nothing to ask need not take the lock. */
uint64_t catsvc_epoch(catsvc_t *cs);
/* Something may have changed the target's catalog: read it again soon. */
void catsvc_changed(catsvc_t *cs, const char *target);
/* The thread's metrics registry (bulwark_catalog_reads_total), for the
 * scrape to sum with the loops'; NULL if none. */
struct metrics *catsvc_metrics(catsvc_t *cs);

#endif
