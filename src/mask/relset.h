/*
 * relset — a set of relations as the lineage resolver needs them
 * (mask_relation_t: kind, columns in attnum order, a view's definition,
 * inheritance ancestors), indexed by schema-qualified name and by OID.
 *
 * The one place where a catalog is filled and looked up: the gateway's live
 * catalog (src/proxy/catalog.c, one snapshot per target shared by every
 * session, or a session's private copy after its own DDL) and the offline
 * one of `bulwark explain --schema FILE` (src/cli/schema.c) both store their
 * relations here and resolve through mask_relset_resolve.
 *
 * Everything added is copied. A set is built by one thread, then only read:
 * lookups never write, so a finished set may be shared by any number of
 * threads without a lock. Memory is counted (mask_relset_bytes) so that the
 * builder can cap it.
 */
#ifndef BULWARK_MASK_RELSET_H
#define BULWARK_MASK_RELSET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mask/mask.h"

typedef struct mask_relset mask_relset_t;

/* One relation to add. oid 0: none (an offline catalog); attnums NULL: 1..n. */
typedef struct mask_relspec {
    uint32_t oid;
    const char *schema, *name;
    mask_relkind_t kind;
    const char *const *columns;
    const int16_t *attnums;
    size_t ncolumns;
    const char *view_sql;
    const char *const *parents;
    size_t nparents;
} mask_relspec_t;

mask_relset_t *mask_relset_new(void);
void mask_relset_free(mask_relset_t *rs);
/* 1 added; 0 a relation of that name is already there (the first is kept);
 * -1 out of memory or a NULL schema/name. */
int mask_relset_add(mask_relset_t *rs, const mask_relspec_t *spec);
size_t mask_relset_count(const mask_relset_t *rs);
/* Bytes held (strings, arrays, entries). */
size_t mask_relset_bytes(const mask_relset_t *rs);

/* Fills out (pointers into the set) and returns 1, or 0 when unknown. */
int mask_relset_get(const mask_relset_t *rs, const char *schema, const char *name,
                    mask_relation_t *out);
/* mask_resolve_fn; arg is the mask_relset_t (NULL: -1, unknown). */
int mask_relset_resolve(void *arg, const char *schema, const char *name, mask_relation_t *out);
/* mask_attname_fn: "schema.table.column" of a table OID and attnum; 0 if unknown. */
int mask_relset_attname(void *arg, uint32_t table_oid, int16_t attnum, char *out, size_t outsz);
bool mask_relset_has_oid(const mask_relset_t *rs, uint32_t oid);

#endif
