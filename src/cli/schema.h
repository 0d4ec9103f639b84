/*
 * An offline catalog for `bulwark explain --schema FILE`: relations from SQL
 * DDL (see schema.c). The gateway reads the live catalog instead.
 */
#ifndef BULWARK_CLI_SCHEMA_H
#define BULWARK_CLI_SCHEMA_H

#include "mask/mask.h"

typedef struct xschema xschema_t;

/* NULL with a reason in err when sql does not parse (or out of memory). */
xschema_t *xschema_load(const char *sql, const mask_rules_t *rules, char *err, size_t errsz);
void xschema_free(xschema_t *x);
size_t xschema_count(const xschema_t *x);
/* mask_resolve_fn; arg is the xschema_t. */
int xschema_resolve(void *arg, const char *schema, const char *name, mask_relation_t *out);

#endif
