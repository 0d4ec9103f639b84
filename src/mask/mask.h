/*
 * mask — masking that follows the data (SPEC 5.3). Pure functions over parse
 * trees and protocol messages: no sockets, no catalog connection, no globals.
 * docs/masking.md is the long form; this header is the contract.
 *
 * Objects and who owns them:
 *
 *   mask_rules_t    one per role: its column masks, its detectors compiled into
 *                   one Vectorscan database, the HMAC key. Immutable once
 *                   compiled, shared read-only by every thread; refcounted.
 *   mask_scratch_t  one per loop thread: Vectorscan scratch and work buffers.
 *                   Never shared between threads.
 *   mask_plan_t     one per statement: for each output column, whether and how
 *                   it is masked (from lineage), plus the uses of masked
 *                   columns that must deny the statement (oracles, sinks).
 *                   Immutable; refcounted; keeps its rules alive.
 *   mask_desc_t     one per result stream (a RowDescription, plus the Bind's
 *                   result formats in the extended protocol): the plan bound to
 *                   real column types and formats. Rewrites DataRows.
 *   mask_copy_t     one per COPY OUT stream.
 *
 * What the proxy calls when:
 *
 *   role loaded          mask_rules_compile (masks from the policy, hash key)
 *   loop thread start    mask_scratch_new
 *   statement allowed    mask_plan_statement (tree, resolver, search_path);
 *                        mask_plan_denied → deny with its message (42501);
 *                        remember the plan with the statement / portal /
 *                        cursor / prepared name (mask_plan_kind, _name)
 *   RowDescription       mask_desc_new(plan, body, formats) then
 *                        mask_rewrite_rowdesc; keep the desc for the rows
 *   Bind (extended)      mask_desc_new(plan, remembered RowDescription, Bind's
 *                        result formats) for that portal's DataRows
 *   DataRow              mask_rewrite_datarow
 *   CopyOutResponse      mask_copy_new (or refuse with its message); then
 *   CopyData / CopyDone  mask_copy_data / mask_copy_done
 *   ErrorResponse,       mask_rewrite_error (strict when the statement's plan
 *   NoticeResponse         touches masked columns: mask_plan_touches_masked)
 *   NotificationResponse mask_rewrite_notification
 *
 * Rewriters take ONE WHOLE message body (after the 5-byte header) and return
 *    0  unchanged: forward the original message, nothing was appended;
 *    1  replaced: a whole new message (header included) was appended to out;
 *   -1  malformed or out of memory: end the session (fail closed).
 * A value with no detector candidate costs one scan and no copy.
 */
#ifndef BULWARK_MASK_MASK_H
#define BULWARK_MASK_MASK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "pgwire/pgwire.h"
#include "util/buf.h"

#define MASK_WUR __attribute__((warn_unused_result))

typedef struct mask_rules mask_rules_t;
typedef struct mask_scratch mask_scratch_t;
typedef struct mask_plan mask_plan_t;
typedef struct mask_desc mask_desc_t;
typedef struct mask_copy mask_copy_t;

/* ------------------------------------------------------------------ */
/* Methods and rules                                                   */

typedef enum {
    MASK_M_NONE = 0,
    MASK_M_REDACT,  /* "****" */
    MASK_M_PARTIAL, /* keep_first / keep_last characters, the rest '*' one per character */
    MASK_M_EMAIL,   /* a***@example.com: first character of the local part, domain kept */
    MASK_M_HASH,    /* hex HMAC-SHA-256 of the value under the configured key */
    MASK_M_NULL,    /* SQL NULL */
    MASK_M_FIXED,   /* the configured value */
} mask_method_kind_t;

typedef struct mask_method {
    mask_method_kind_t kind;
    int keep_first, keep_last; /* partial */
    const char *value;         /* fixed */
    size_t value_len;
} mask_method_t;

const char *mask_method_name(mask_method_kind_t k); /* "redact", ... "none" */

/* masks: a role's validated "masks" array (config/policy.c checked it).
 * hash_key: the key of the "hash" method (copied; may be NULL when no mask
 * uses "hash" — then compiling such a mask is an error). NULL on error with a
 * reason in err. More than 256 column masks in one role is an error. */
mask_rules_t *mask_rules_compile(const cJSON *masks, const uint8_t *hash_key, size_t keylen,
                                 char *err, size_t errsz) MASK_WUR;
mask_rules_t *mask_rules_retain(mask_rules_t *r);
void mask_rules_release(mask_rules_t *r); /* wipes the key at the last reference */
/* False when the role has no column mask and no detector: nothing to rewrite. */
bool mask_rules_active(const mask_rules_t *r);
bool mask_rules_has_detectors(const mask_rules_t *r);

mask_scratch_t *mask_scratch_new(void) MASK_WUR;
void mask_scratch_free(mask_scratch_t *s);

/* ------------------------------------------------------------------ */
/* Lineage: statement -> plan                                          */

/* The catalog, as the proxy's cache knows it. Called with a schema (never
 * NULL: unqualified names are tried schema by schema along search_path, as
 * PostgreSQL does) and a relation name, both as stored in the catalog (the
 * parser has already folded unquoted names to lower case).
 * Returns 1 and fills *out when the relation exists, 0 when it does not, -1 on
 * error (treated as unknown: fail closed). Pointers in *out must stay valid
 * until mask_plan_statement returns. A relation the resolver does not know
 * makes every output column that could come from it masked (redact). */
typedef enum { MASK_REL_TABLE = 1, MASK_REL_VIEW = 2 } mask_relkind_t;
typedef struct mask_relation {
    mask_relkind_t kind;        /* TABLE also for foreign tables and partitions */
    const char *const *columns; /* names in attnum order, dropped columns left out */
    size_t ncolumns;
    /* Views and materialized views: the definition, as pg_get_viewdef(oid)
     * returns it when read with search_path = pg_catalog (so that every name
     * in it is schema-qualified). Its lineage is computed like a subquery's.
     * NULL for a view: every column of the view is masked (uncertain). */
    const char *view_sql;
    /* Inheritance and partition ancestors as "schema.table": a mask on a
     * parent's column also masks the same-named column of the child. */
    const char *const *parents;
    size_t nparents;
} mask_relation_t;
typedef int (*mask_resolve_fn)(void *arg, const char *schema, const char *name,
                               mask_relation_t *out);

typedef enum {
    MASK_STMT_NONE, /* returns no rows (DDL, SET, INSERT without RETURNING, ...) */
    MASK_STMT_ROWS, /* SELECT, VALUES, DML ... RETURNING, SHOW, EXPLAIN */
    MASK_STMT_COPY_OUT,
    MASK_STMT_CURSOR,  /* DECLARE name CURSOR FOR query: FETCH name uses this plan */
    MASK_STMT_PREPARE, /* PREPARE name AS query: EXECUTE name uses this plan */
    MASK_STMT_EXECUTE, /* EXECUTE name: substitute the prepared plan (this one masks all) */
    MASK_STMT_FETCH,   /* FETCH name: substitute the cursor's plan (this one masks all) */
} mask_stmt_kind_t;

/* stmt: one statement node of libpg_query's JSON output, i.e. the value of
 * stmts[i].stmt ({"SelectStmt": {...}}) or the stmts[i] element itself.
 * search_path: NULL-terminated schema names in order, "$user" already
 * expanded (mask_search_path_parse); pg_catalog is searched first unless it
 * is listed. Returns 0 and a plan, or -1 (out of memory). Unknown statement
 * shapes do not fail: they give a plan that masks every column. */
int mask_plan_statement(const mask_rules_t *r, const cJSON *stmt, mask_resolve_fn resolve,
                        void *arg, const char *const *search_path, mask_plan_t **out) MASK_WUR;
/* Parses sql (exactly one statement) and plans it. -1 with the parser's
 * message in err when it does not parse or holds several statements. */
int mask_plan_sql(const mask_rules_t *r, const char *sql, mask_resolve_fn resolve, void *arg,
                  const char *const *search_path, mask_plan_t **out, char *err,
                  size_t errsz) MASK_WUR;
/* A plan that masks every column: for results whose statement is unknown. */
mask_plan_t *mask_plan_unknown(const mask_rules_t *r) MASK_WUR;
mask_plan_t *mask_plan_retain(mask_plan_t *p);
void mask_plan_release(mask_plan_t *p);

mask_stmt_kind_t mask_plan_kind(const mask_plan_t *p);
const char *mask_plan_name(const mask_plan_t *p); /* cursor / prepared name, or NULL */
/* True when the statement must be denied (SPEC 5.3): a masked column used in a
 * filter (WHERE, JOIN ON/USING, HAVING, GROUP BY, ORDER BY, DISTINCT, window,
 * FILTER, LIMIT, set operation, a condition anywhere) whose mask does not say
 * in_predicates: "allow"; a column of unknown lineage in a filter; or masked
 * data written where the mask does not follow it (INSERT/UPDATE into another
 * column, CREATE TABLE AS, SELECT INTO, COPY TO a file, pg_notify,
 * set_config). msg gets e.g. `masked column public.customers.ssn is used in
 * WHERE`. */
bool mask_plan_denied(const mask_plan_t *p, char *msg, size_t msgsz);
/* True when some output column is masked or the statement reads a masked
 * column at all: errors and notices of such a statement are scrubbed strictly. */
bool mask_plan_touches_masked(const mask_plan_t *p);
/* Output columns known to the plan (a star over an unknown relation counts once). */
size_t mask_plan_ncols(const mask_plan_t *p);
/* Method of plan column i (NONE when unmasked) and a one-line reason. */
mask_method_kind_t mask_plan_col_method(const mask_plan_t *p, size_t i);
const char *mask_plan_col_name(const mask_plan_t *p, size_t i);
/* Human-readable: one line per output column (whether, how and why masked),
 * then the denied uses. For `bulwark explain`. */
void mask_plan_explain(const mask_plan_t *p, buf_t *out);
cJSON *mask_plan_explain_json(const mask_plan_t *p) MASK_WUR;

/* Parses a search_path setting ("\"$user\", public") into a NULL-terminated
 * array (free with mask_search_path_free). "$user" becomes session_user when
 * given, else is dropped. Unquoted names are folded to lower case. */
char **mask_search_path_parse(const char *setting, const char *session_user) MASK_WUR;
void mask_search_path_free(char **path);

/* ------------------------------------------------------------------ */
/* Results                                                             */

/* Optional: names the table column behind a RowDescription field
 * ("schema.table.column" into out; return 1), 0 when unknown. When it names a
 * masked column the field is masked with that column's method even if the
 * plan says otherwise (defence in depth: mask more, never less). */
typedef int (*mask_attname_fn)(void *arg, uint32_t table_oid, int16_t attnum, char *out,
                               size_t outsz);

/* Binds plan to a RowDescription body. result_formats: the Bind's result
 * format codes for the extended protocol (a statement Describe reports text
 * everywhere); NULL = the formats in the RowDescription. -1 when the body is
 * malformed or a per-column format list does not match. A plan whose column
 * count does not match the RowDescription masks every column. */
int mask_desc_new(const mask_plan_t *p, const uint8_t *rowdesc, size_t len,
                  const pgw_formats_t *result_formats, mask_attname_fn attname, void *arg,
                  mask_desc_t **out) MASK_WUR;
void mask_desc_free(mask_desc_t *d);
/* Whether any DataRow can change (some column masked, or detectors on). */
bool mask_desc_active(const mask_desc_t *d);

/* RowDescription: a masked column is described as text (OID 25, typlen -1,
 * typmod -1, table OID and attnum 0), its format code kept. */
int mask_rewrite_rowdesc(const mask_desc_t *d, const uint8_t *body, size_t len,
                         buf_t *out) MASK_WUR;
/* DataRow: column masks by method; detectors over every other value that can
 * hold text (see docs/masking.md for the binary rules). */
int mask_rewrite_datarow(mask_desc_t *d, mask_scratch_t *s, const uint8_t *body, size_t len,
                         buf_t *out) MASK_WUR;
/* ErrorResponse ('E') / NoticeResponse ('N'): detectors over message, detail,
 * hint, context and internal query. strict additionally redacts what
 * PostgreSQL quotes from data: "..." in those fields, `Key (..)=(value)`, and
 * `Failing row contains (...)`. */
int mask_rewrite_error(const mask_rules_t *r, mask_scratch_t *s, char type, bool strict,
                       const uint8_t *body, size_t len, buf_t *out) MASK_WUR;
/* NotificationResponse: detectors over the payload. */
int mask_rewrite_notification(const mask_rules_t *r, mask_scratch_t *s, const uint8_t *body,
                              size_t len, buf_t *out) MASK_WUR;

/* Counters of a result stream, for the log line at CommandComplete:
 * "rows=… rows_changed=… masked.<schema.table.column>=… detected.<detector>=…"
 * (never values). */
void mask_desc_summary(const mask_desc_t *d, buf_t *out);
/* The same counters one by one, for metrics: a column mask (column
 * "schema.table.column", or "expression" when the mask came through an
 * expression; detector NULL), or a detector's hits (column NULL). */
typedef void (*mask_count_fn)(void *arg, const char *column, const char *detector, uint64_t n);
void mask_desc_counts(const mask_desc_t *d, mask_count_fn fn, void *arg);

/* ------------------------------------------------------------------ */
/* COPY ... TO STDOUT                                                  */

/* Binds a COPY_OUT plan to the CopyOutResponse body. Returns -1 with a message
 * for the client in err when the output cannot be masked (the proxy then
 * fails the statement instead of forwarding data): a plan that is not a COPY
 * plan, ENCODING other than UTF8, a malformed body. */
int mask_copy_new(const mask_plan_t *p, const uint8_t *copyout, size_t len, mask_copy_t **out,
                  char *err, size_t errsz) MASK_WUR;
/* One CopyData payload (the message body). Rows may span CopyData messages
 * (PostgreSQL sends one row per message; a partial row is kept until the
 * rest arrives). Returns 0 (forward the original), 1 (the rows completed so
 * far were appended to out as CopyData messages — possibly none yet), -1
 * (malformed: end the session). */
int mask_copy_data(mask_copy_t *c, mask_scratch_t *s, const uint8_t *data, size_t len,
                   buf_t *out) MASK_WUR;
/* At CopyDone: -1 if a partial row is left over. */
int mask_copy_done(mask_copy_t *c, buf_t *out) MASK_WUR;
void mask_copy_free(mask_copy_t *c);

#endif
