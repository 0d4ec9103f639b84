/*
 * Lineage internals shared by lineage.c (scopes, names, expressions, SELECT)
 * and stmt.c (DML, COPY, utility statements, plan assembly).
 *
 * A column's lineage (lin_t) is the set of masked columns its value is
 * computed from, plus two marks: uncertain (it could come from something the
 * catalog does not describe) and whole-row. `direct` names the one masked
 * column when the value IS that column (a bare reference or a cast of one):
 * only then does the column's own method apply; anything else is redacted.
 */
#ifndef BULWARK_MASK_LINEAGE_H
#define BULWARK_MASK_LINEAGE_H

#include "mask/internal.h"

#define LF_UNCERTAIN 1u
#define LF_WHOLEROW 2u

typedef struct lin {
    uint64_t m[MASK_WORDS];
    int16_t direct;
    uint8_t flags;
    const char *why; /* first reason for uncertainty (arena string) */
} lin_t;

typedef struct col {
    const char *name;
    lin_t lin;
    bool var; /* a run of columns of unknown width (star over an unknown relation) */
} col_t;

typedef struct cols {
    col_t *v;
    size_t n, cap;
} cols_t;

typedef struct item item_t;
struct item {
    const char *name;    /* alias, relation or CTE name; NULL if not addressable */
    const char *schema;  /* base relation without alias: for schema.table.column */
    cols_t cols;         /* known columns in star order */
    bool unknown;        /* the column list is incomplete: any name may resolve here */
    lin_t ulin;          /* lineage of a column of an unknown item */
    const char *mtable;  /* unknown base relation: masks still apply by name */
    const char *mschema; /* its schema, or NULL = any schema of search_path */
    bool is_join;
};

typedef struct cte cte_t;
struct cte {
    const char *name;
    cols_t cols;
    bool unknown;
    lin_t ulin;
    cte_t *next;
};

typedef struct level level_t;
struct level {
    level_t *up;
    item_t **items; /* top-level FROM items, in order (star expansion) */
    size_t nitems, capitems;
    item_t **leaves; /* base items (unqualified lookups) */
    size_t nleaves, capleaves;
    item_t **named; /* every addressable item (qualified lookups) */
    size_t nnamed, capnamed;
    cte_t *ctes;
    cols_t *outputs;      /* the target list, for ORDER BY / GROUP BY by name or number */
    const cJSON *windows; /* windowClause */
};

typedef struct use {
    int mask;
    const char *clause;
    bool sink;
    const char *why;
} use_t;

typedef struct arena_blk arena_blk_t;

typedef struct lctx {
    const mask_rules_t *r;
    mask_resolve_fn resolve;
    void *arg;
    const char *const *path;
    arena_blk_t *arena;
    use_t *uses;
    size_t nuses, capuses;
    int depth, view_depth;
    bool no_uses;       /* inside a view definition: its filters are the owner's */
    const char *clause; /* clause being walked, for conditions found inside */
    bool touched;
    bool failed;
} lctx_t;

/* arena */
void *ml_la_alloc(lctx_t *c, size_t n);
char *ml_la_strdup(lctx_t *c, const char *s);
char *ml_la_printf(lctx_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ml_la_free(lctx_t *c);

/* lineage values */
lin_t ml_lin_clean(void);
lin_t ml_lin_uncertain(const char *why);
lin_t ml_lin_or(lin_t a, lin_t b);    /* an expression over both */
lin_t ml_lin_merge(lin_t a, lin_t b); /* either one (set operations, ambiguous names) */
bool ml_lin_masked(const lin_t *l);   /* masks or uncertain */
void ml_lin_set(lin_t *l, int mask);

/* cols */
col_t *ml_cols_push(lctx_t *c, cols_t *cs, const char *name, lin_t lin, bool var);

/* JSON helpers */
const char *ml_node_type(const cJSON *n, const cJSON **body);
const cJSON *ml_jget(const cJSON *o, const char *k);
const char *ml_jstr(const cJSON *o, const char *k);
const char *ml_sval(const cJSON *n); /* {"String":{"sval":x}} -> x */

/* walkers */
void ml_use_add(lctx_t *c, const lin_t *l, const char *clause, bool sink);
lin_t ml_ex(lctx_t *c, level_t *L, const cJSON *node);
int ml_q_stmt(lctx_t *c, level_t *outer, const cJSON *node, cols_t *out);
int ml_q_select(lctx_t *c, level_t *outer, const cJSON *sel, cols_t *out);
void ml_do_ctes(lctx_t *c, level_t *L, const cJSON *with);
item_t *ml_from_item(lctx_t *c, level_t *L, const cJSON *node);
item_t *ml_rangevar_item(lctx_t *c, level_t *L, const cJSON *rv);
void ml_level_add(lctx_t *c, level_t *L, item_t *it, bool top);
void ml_targets(lctx_t *c, level_t *L, const cJSON *list, cols_t *out);
lin_t ml_item_col(lctx_t *c, const item_t *it, const char *name, bool *found);
void ml_item_star(lctx_t *c, const item_t *it, cols_t *out);
/* masks that apply to schema.table.column, parents included */
lin_t ml_base_col_lin(lctx_t *c, const char *schema, const char *table, const char *column,
                      const mask_relation_t *rel);

#endif
