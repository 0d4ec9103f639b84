/*
 * maskflow — masking in the data path (SPEC 5.3, docs/masking.md "As built").
 * Private to src/proxy/. The mask module (src/mask/) is pure; this is where
 * its plans meet the session's message streams:
 *
 *   c2u  every Query and Parse the policy allowed is planned (lineage) with
 *        the session's catalog and search_path; an oracle use denies it. The
 *        plans are remembered per prepared statement, portal, SQL cursor and
 *        SQL prepared name, and each forwarded message that will be answered
 *        with results (statement of a Query, Describe, Execute, Sync) puts an
 *        item on a FIFO in request order. An Execute of a portal whose shape
 *        is not known yet gets the gateway's own Describe first (its reply is
 *        swallowed: DESIGN 2.4).
 *   u2c  replies are matched to the FIFO's head: RowDescription turns masked
 *        columns into text, DataRows and COPY data are rewritten one whole
 *        message at a time (bounded by masking.max_row_bytes; a larger one
 *        ends the session rather than pass unmasked), ErrorResponse and
 *        NoticeResponse go through the detectors. All of this happens before
 *        the audit (record.c) observes the message.
 *
 * The catalog: the target's shared snapshot (catsvc.h), taken between
 * statements (nothing in flight); a session waits for the target's first
 * read. A session whose statement may change the catalog (DDL, DO, functions)
 * reads its own copy from then on (catalog.c), on its own upstream
 * connection, between statements (nothing in flight; in the client's
 * transaction within a savepoint), by a Query whose replies are swallowed:
 * after DDL passed, and when older than masking.catalog_refresh; and it tells
 * catsvc once the DDL's transaction ended. Between a DDL statement and the
 * next such point (a pipeline, an aborted transaction), and after a result
 * named a table the catalog does not know, every relation outside
 * pg_catalog/information_schema counts as unknown (masked whole, filters on
 * it denied).
 *
 * A role with no column mask and no detector has no maskflow (s->mf NULL):
 * nothing here runs for it.
 */
#ifndef BULWARK_PROXY_MASKFLOW_H
#define BULWARK_PROXY_MASKFLOW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "mask/mask.h"
#include "pgwire/pgwire.h"
#include "policy/policy.h"
#include "util/buf.h"

struct session;
struct runtime;
typedef struct maskflow maskflow_t;

/* ---- per runtime: every role's compiled rules, by index in cfg->roles ---- */
mask_rules_t **maskflow_rules_new(const cfg_t *cfg, char *err, size_t errsz);
void maskflow_rules_free(mask_rules_t **rules, size_t n);

/* ---- per session ---- */
/* NULL when the role masks nothing (or out of memory: *oom set). */
maskflow_t *maskflow_new(struct session *s, bool *oom);
void maskflow_free(maskflow_t *mf);
/* Bytes of one upstream message the session may hold whole to rewrite it. */
size_t maskflow_max_message(const struct session *s);

/* c2u, before the gate looks at a message: false = wait (a catalog read is
 * in flight or was just started; or a Describe is not whole yet). */
bool maskflow_c2u_ready(struct session *s, char type, size_t avail, size_t total);
/* gate.c, an allowed Query ('Q') or Parse ('P', stmt = its name): plan it.
 * 0 = planned; 1 = denied (msg for the client, 42501); -1 = out of memory. */
int maskflow_plan(struct session *s, policy_session_t *ps, char kind, const char *stmt,
                  const char *sql, size_t len, const policy_result_t *r, char *msg, size_t msgsz);
/* gate.c: the statement just planned is refused after all (its names are not defined). */
void maskflow_refused(struct session *s);
/* gate.c: a sentinel went upstream ('Q': a Query, answered by E and Z). */
void maskflow_sentinel(struct session *s, char kind);
/* session.c: the message at the client input's head goes upstream now
 * (body: avail bytes of it; whole except a Bind's parameters). May write an
 * injected Describe upstream first. -1: out of memory, -2: malformed (end the
 * session). */
int maskflow_c2u(struct session *s, char type, const uint8_t *body, size_t avail);

/* u2c. Whether the message must be held whole before it is forwarded. */
bool maskflow_u2c_whole(const struct session *s, char type);
typedef enum {
    MF_PASS = 0,     /* forward the original */
    MF_REPLACED = 1, /* forward *out (a whole message, header included) instead */
    MF_SWALLOW = 2,  /* the gateway's own: neither forward nor observe */
    MF_OBSERVE = 3,  /* swallow, but the audit may observe *out (or the original) */
    MF_FAIL = -1     /* the session was ended (fail closed) */
} mf_verdict_t;
/* rep/replen: the replacement (MF_REPLACED; MF_OBSERVE when not NULL), valid
 * until the next call. */
mf_verdict_t maskflow_u2c(struct session *s, char type, const uint8_t *body, size_t len,
                          const uint8_t **rep, size_t *replen);
/* A catalog read ended: the client's waiting input must be relayed again. */
bool maskflow_resume_pending(struct session *s);

/* ---- catalog.c ---- */
typedef struct catalog catalog_t;
catalog_t *catalog_new(void);
/* Snapshots are refcounted (atomically): shared by sessions on every loop. */
catalog_t *catalog_retain(catalog_t *c);
void catalog_free(catalog_t *c); /* drops one reference */
/* The Query that reads it (search_path pinned to pg_catalog for view
 * definitions): outside a transaction, and inside the client's (a savepoint);
 * _undo restores the client's transaction when the latter failed. */
extern const char catalog_query_idle[], catalog_query_in_tx[], catalog_query_undo[];
/* The bare SELECT, for a connection whose search_path is pg_catalog (catsvc.c). */
extern const char catalog_query_shared[];
/* One DataRow of that query's result; -1 when out of memory or over the cap. */
int catalog_add_row(catalog_t *c, const uint8_t *body, size_t len);
/* The same from the row's one value (JSON text). */
int catalog_add_json(catalog_t *c, const char *json, size_t len);
/* mask_resolve_fn over a catalog; dirty: relations outside the system schemas count as unknown. */
typedef struct catalog_view {
    const catalog_t *cat;
    bool dirty;
} catalog_view_t;
int catalog_resolve(void *arg, const char *schema, const char *name, mask_relation_t *out);
/* mask_attname_fn; arg is a catalog_view_t. */
int catalog_attname(void *arg, uint32_t table_oid, int16_t attnum, char *out, size_t outsz);
/* True when the table OID is known (0 counts as known: a computed column). */
bool catalog_knows_oid(const catalog_t *c, uint32_t oid);
size_t catalog_size(const catalog_t *c);
size_t catalog_bytes(const catalog_t *c); /* memory held */
/* The same rows were read into both (a digest of the rows, their count and size). */
bool catalog_same(const catalog_t *a, const catalog_t *b);

#endif
