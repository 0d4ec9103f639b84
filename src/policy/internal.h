/*
 * Private to src/policy/: the extracted intent (what the parse cache keeps),
 * the arena every intent and result lives in, and the data tables.
 *
 * Pipeline: text --extract.c--> intent_t (session independent, cacheable)
 *                --decide.c---> policy_result_t (names resolved through the
 *                               session's search_path, rules applied).
 */
#ifndef BULWARK_POLICY_INTERNAL_H
#define BULWARK_POLICY_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "policy/policy.h"

/* ---- arena: bump allocation in chunks, freed at once ---- */

typedef struct policy_arena {
    struct arena_chunk *head;
    size_t bytes; /* total allocated from malloc, for cache accounting */
    bool failed;
} policy_arena_t;

void *arena_alloc(policy_arena_t *a, size_t n);
char *arena_strdup(policy_arena_t *a, const char *s);
char *arena_strndup(policy_arena_t *a, const char *s, size_t n);
void arena_free(policy_arena_t *a);

/* ---- json.c: a read-only JSON tree, all nodes in a few blocks ---- */

typedef enum { J_NULL, J_FALSE, J_TRUE, J_NUM, J_STR, J_ARR, J_OBJ } jtype_t;
typedef struct jnode {
    uint8_t type;    /* jtype_t */
    uint32_t n;      /* members of an object or array */
    const char *key; /* member name, in an object */
    const char *str; /* J_STR, unescaped, no NUL inside */
    double num;
    struct jnode *child, *next;
} jnode_t;
typedef struct jdoc jdoc_t;

/* NULL if text is not one strict JSON value, nests deeper than max_depth, or
 * memory runs out; a string with \u0000 is refused. */
jdoc_t *json_parse(const char *text, size_t len, int max_depth);
const jnode_t *json_root(const jdoc_t *d);
void json_free(jdoc_t *d);
const jnode_t *json_get(const jnode_t *obj, const char *key);
bool json_equal(const jnode_t *a, const jnode_t *b);
#define JSON_FOREACH(e, arr) for ((e) = (arr) ? (arr)->child : NULL; (e); (e) = (e)->next)

/* ---- intent ---- */

enum raccess_flags {
    RA_WITHOUT_WHERE = 1 << 0,
    RA_CALL = 1 << 1,    /* CALL: a `function` access even for pg_catalog names */
    RA_EXPLAIN = 1 << 2, /* EXECUTE under plain EXPLAIN: relations charged `explain` */
};

/* Built-in verdicts decided at extraction, whatever the session. */
typedef enum {
    B_NONE,
    B_COPY_SERVER,   /* COPY to/from a server file or PROGRAM */
    B_PINNED,        /* standard_conforming_strings, client_encoding != UTF8, set_config of those */
    B_READ_WRITE,    /* asks for a read-write transaction: denied for read_only roles */
    B_EXEC_PREPARED, /* EXECUTE name: expanded at decision time */
    B_TOO_COMPLEX,   /* more accesses than we keep */
} builtin_t;

typedef struct raccess {
    uint8_t op;         /* policy_op_t */
    uint8_t kind;       /* policy_obj_t */
    uint8_t flags;      /* raccess_flags */
    uint8_t builtin;    /* builtin_t */
    const char *schema; /* NULL: unqualified, resolve through search_path */
    const char *name;   /* relation / function / setting / prepared statement name, or "" */
    const char *verb;   /* static string */
} raccess_t;

typedef enum {
    EFF_NONE,
    EFF_SET_PATH,   /* path/n_path; local */
    EFF_RESET_PATH, /* back to the session's initial path; local */
    EFF_PREPARE,    /* name; the statement's accesses are the prepared ones */
    EFF_DEALLOCATE, /* name */
    EFF_DEALLOCATE_ALL,
    EFF_DISCARD_ALL, /* prepared statements, path, temp */
    EFF_DISCARD_TEMP,
    EFF_CREATE_SCHEMA, /* name */
    EFF_ROLLBACK_TO,   /* ROLLBACK TO SAVEPOINT: tentative paths become uncertain */
} effect_t;

enum pstmt_flags {
    PS_WRITES = 1 << 0,  /* calls a writer built-in (nextval) */
    PS_NO_EXEC = 1 << 1, /* PREPARE: does not run its query now */
    PS_TEMP = 1 << 2,    /* creates a temporary object */
    PS_LOCAL = 1 << 3,   /* SET LOCAL */
};

typedef struct pstmt {
    size_t location, len;
    const char *node;
    unsigned flags;
    effect_t effect;
    const char *eff_name;
    const char **path; /* EFF_SET_PATH: schemas in order */
    size_t n_path;
    raccess_t *acc;
    size_t n_acc;
} pstmt_t;

typedef struct intent {
    policy_arena_t arena;
    char *error;      /* parse error message, or NULL */
    char sqlstate[6]; /* with error: 42601, or 54001 when too deep to check */
    int cursorpos;    /* 1-based, 0 = none */
    pstmt_t *stmts;
    size_t n_stmts;
} intent_t;

/* Parse and extract sql (NUL-terminated, len bytes). NULL when out of memory;
 * a parse error is an intent with error set. */
intent_t *policy_extract(const char *sql, size_t len);
/* The same; tree (if not NULL) receives libpg_query's JSON parse tree (malloc'd, the
 * caller frees it) when the text parsed, else NULL. */
intent_t *policy_extract_keep(const char *sql, size_t len, char **tree);
/* The same from a parse tree in libpg_query's JSON form (tests feed it trees
 * the parser would not produce, to check that the walker fails closed). */
intent_t *policy_extract_tree(const char *json, size_t sql_len);
void policy_intent_free(intent_t *in);

/* ---- cache (cache.c) ---- */
const intent_t *policy_cache_get(policy_cache_t *c, const char *sql, size_t len);
/* Takes ownership of in (frees it when it does not fit). Returns in. */
const intent_t *policy_cache_put(policy_cache_t *c, const char *sql, size_t len, intent_t *in);

/* ---- data tables (pgcatalog.c generated, builtins.c reviewed by hand) ---- */

typedef struct policy_node_field {
    const char *msg, *field, *type;
} policy_node_field_t;

extern const char *const policy_pg_functions[];
extern const size_t policy_pg_functions_n;
extern const char *const policy_pg_relations[];
extern const size_t policy_pg_relations_n;
extern const policy_node_field_t policy_node_fields[];
extern const size_t policy_node_fields_n;

bool policy_is_pg_function(const char *name);
bool policy_is_pg_relation(const char *name);
/* Type of a message-typed (bare) field, or NULL when the field holds Node(s) or scalars. */
const char *policy_field_type(const char *msg, const char *field);
/* Why a function is dangerous (SPEC 5.2), or NULL. Matched by name in any schema. */
const char *policy_dangerous_function(const char *name);
/* True for catalogs that hold secrets or data values (schema pg_catalog or
 * information_schema, or by name in any schema for extension views). */
bool policy_secret_relation(const char *schema, const char *name);
/* SPEC 5.1 safe settings (lower-case name). */
bool policy_safe_setting(const char *name);
/* pg_catalog functions that change data though they are harmless otherwise. */
bool policy_writer_function(const char *name);

/* Upper-case label of an operation for messages ("SELECT", "COPY TO", ...). */
const char *policy_op_verb(policy_op_t op);

/* Quote one identifier for an object string when it holds '.', '"' or is
 * empty: the result is unambiguous when joined with '.'. */
char *policy_quote_ident(policy_arena_t *a, const char *s);

#endif
