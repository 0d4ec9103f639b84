/*
 * Built-in protections of SPEC 5.2 as data, reviewed against PostgreSQL 15's
 * pg_proc and pg_class (and the usual contrib extensions), plus the arena and
 * small lookups shared by the module.
 */
#include <stdlib.h>
#include <string.h>

#include "policy/internal.h"
#include "util/glob.h"

/* ---- arena ---- */

struct arena_chunk {
    struct arena_chunk *next;
    size_t used, cap;
    max_align_t data[];
};

void *arena_alloc(policy_arena_t *a, size_t n)
{
    n = (n + sizeof(max_align_t) - 1) & ~(sizeof(max_align_t) - 1);
    struct arena_chunk *c = a->head;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > 3000 ? n : 4096 - sizeof(*c);
        c = malloc(sizeof(*c) + cap);
        if (!c) {
            a->failed = true;
            return NULL;
        }
        c->used = 0;
        c->cap = cap;
        c->next = a->head;
        a->head = c;
        a->bytes += sizeof(*c) + cap;
    }
    void *p = (char *)c->data + c->used;
    c->used += n;
    return p;
}

char *arena_strndup(policy_arena_t *a, const char *s, size_t n)
{
    char *d = arena_alloc(a, n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

char *arena_strdup(policy_arena_t *a, const char *s)
{
    return arena_strndup(a, s, strlen(s));
}

void arena_free(policy_arena_t *a)
{
    struct arena_chunk *c = a->head;
    while (c) {
        struct arena_chunk *n = c->next;
        free(c);
        c = n;
    }
    a->head = NULL;
    a->bytes = 0;
}

char *policy_quote_ident(policy_arena_t *a, const char *s)
{
    if (*s && !strpbrk(s, ".\""))
        return (char *)s;
    size_t n = strlen(s), q = 0;
    for (size_t i = 0; i < n; i++)
        q += s[i] == '"';
    char *d = arena_alloc(a, n + q + 3);
    if (!d)
        return NULL;
    char *o = d;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"')
            *o++ = '"';
        *o++ = s[i];
    }
    *o++ = '"';
    *o = '\0';
    return d;
}

/* ---- sorted-table lookups ---- */

static int cmp_str(const void *k, const void *e)
{
    return strcmp((const char *)k, *(const char *const *)e);
}

bool policy_is_pg_function(const char *name)
{
    return bsearch(name, policy_pg_functions, policy_pg_functions_n, sizeof(char *), cmp_str);
}

bool policy_is_pg_relation(const char *name)
{
    return bsearch(name, policy_pg_relations, policy_pg_relations_n, sizeof(char *), cmp_str);
}

typedef struct {
    const char *msg, *field;
} field_key_t;

static int cmp_field(const void *k, const void *e)
{
    const field_key_t *a = k;
    const policy_node_field_t *b = e;
    int c = strcmp(a->msg, b->msg);
    return c ? c : strcmp(a->field, b->field);
}

const char *policy_field_type(const char *msg, const char *field)
{
    field_key_t k = {msg, field};
    const policy_node_field_t *f =
        bsearch(&k, policy_node_fields, policy_node_fields_n, sizeof(*f), cmp_field);
    return f ? f->type : NULL;
}

/* ---- dangerous functions (SPEC 5.2) ----
 *
 * Matched by name in every schema: extensions (dblink, adminpack, tablefunc)
 * install into whatever schema the operator chose, and a look-alike in
 * `public` must not pass where the built-in would not. A rule lifts one only
 * by naming it without a wildcard in the name part (e.g.
 * "pg_catalog.pg_sleep"). Reviewed against every pg_proc entry of
 * PostgreSQL 15; functions that only read catalog metadata, settings or the
 * caller's own session (current_setting, pg_get_*def, has_*_privilege,
 * pg_relation_size, txid_current, pg_blocking_pids, ...) are not here. */
static const struct {
    const char *glob, *why;
} dangerous[] = {
    /* server files */
    {"pg_read_file", "reads server files"},
    {"pg_read_binary_file", "reads server files"},
    {"pg_stat_file", "reads server files"},
    {"pg_ls_*", "lists server directories"},
    {"pg_current_logfile", "reads server files"},
    {"pg_file_*", "writes server files"}, /* adminpack */
    {"pg_logdir_ls", "lists server directories"},
    {"lo_*", "large objects: server files and data outside the table policy"},
    {"loread", "large objects"},
    {"lowrite", "large objects"},
    {"pg_import_system_collations", "changes the catalog from server files"},
    /* other sessions and the server process */
    {"pg_terminate_backend", "ends other sessions"},
    {"pg_cancel_backend", "cancels other sessions"},
    {"pg_signal_backend", "signals other sessions"},
    {"pg_reload_conf", "reloads the server configuration"},
    {"pg_rotate_logfile*", "rotates the server log"},
    {"pg_log_backend_memory_contexts", "writes the server log"},
    {"pg_promote", "promotes a standby"},
    {"pg_switch_wal", "forces a WAL switch"},
    {"pg_create_restore_point", "writes WAL"},
    {"pg_backup_*", "controls backups"},
    {"pg_start_backup", "controls backups"},
    {"pg_stop_backup", "controls backups"},
    {"pg_wal_replay_*", "controls recovery"},
    {"pg_stat_reset*", "resets statistics"},
    {"pg_stat_get_activity", "shows other sessions' statements"},
    {"pg_stat_get_backend_*", "shows other sessions' statements"},
    {"pg_stat_statements*", "shows other sessions' statements"},
    {"pg_sleep*", "holds the session (and its locks)"},
    {"pg_advisory_*", "takes locks other sessions wait for"},
    {"pg_try_advisory_*", "takes locks other sessions wait for"},
    {"pg_notify", "signals other sessions"},
    {"pg_hba_file_rules", "reads server configuration files"},
    {"pg_ident_file_mappings", "reads server configuration files"},
    {"pg_show_all_file_settings", "reads server configuration files"},
    /* replication */
    {"pg_create_*_replication_slot", "creates replication slots"},
    {"pg_copy_*_replication_slot", "creates replication slots"},
    {"pg_drop_replication_slot", "drops replication slots"},
    {"pg_replication_slot_advance", "moves replication slots"},
    {"pg_logical_*", "reads or writes the logical replication stream"},
    {"pg_replication_origin_*", "changes replication origins"},
    /* SQL run from a string, or a table read by its name */
    {"query_to_xml*", "runs SQL from a string"},
    {"cursor_to_xml*", "reads a cursor by name"},
    {"table_to_xml*", "reads a table named in a string"},
    {"schema_to_xml*", "reads every table of a schema"},
    {"database_to_xml*", "reads every table of the database"},
    {"ts_stat", "runs SQL from a string"},
    {"ts_rewrite", "runs SQL from a string"},
    {"dblink*", "runs SQL on another connection"},
    {"crosstab*", "runs SQL from a string"}, /* tablefunc */
    {"connectby", "reads a table named in a string"},
    {"pg_background_*", "runs SQL in another session"},
    /* settings and data changed behind the policy's back */
    {"set_config", "changes settings the gateway tracks or pins"},
    {"setval", "changes a sequence"},
    {"brin_summarize_*", "index maintenance"},
    {"brin_desummarize_range", "index maintenance"},
    {"gin_clean_pending_list", "index maintenance"},
    {"pg_extension_config_dump", "changes the catalog"},
    {"binary_upgrade_*", "changes the catalog"},
    {"pg_stop_making_pinned_objects", "changes the catalog"},
    {"pg_nextoid", "changes the catalog"},
};

const char *policy_dangerous_function(const char *name)
{
    for (size_t i = 0; i < sizeof(dangerous) / sizeof(dangerous[0]); i++)
        if (glob_match(dangerous[i].glob, name))
            return dangerous[i].why;
    return NULL;
}

/* ---- catalogs that hold secrets or data values (SPEC 5.2) ----
 * PostgreSQL 15 review: password hashes (pg_authid, pg_shadow), user mapping
 * options (passwords of foreign servers), subscription conninfo (passwords),
 * column statistics (most common values are row data), large objects, server
 * configuration files, and other sessions' statement texts (which carry
 * literal values). pg_statistic_ext is not here: it holds the definition of
 * extended statistics (psql's \d+ reads it); their values are in
 * pg_statistic_ext_data. */
static const char *const secret_catalogs[] = {
    "pg_authid",         "pg_shadow",
    "pg_user_mapping",   "pg_user_mappings",
    "pg_statistic",      "pg_statistic_ext_data",
    "pg_stats*",         "pg_largeobject*",
    "pg_hba_file_rules", "pg_ident_file_mappings",
    "pg_file_settings",  "pg_subscription",
    "pg_stat_activity",  "pg_stat_statements*",
};
static const char *const secret_info_schema[] = {"user_mapping_options", "user_mappings",
                                                 "_pg_user_mappings", "foreign_server_options",
                                                 "_pg_foreign_servers"};

bool policy_secret_relation(const char *schema, const char *name)
{
    bool catalog = schema && !strcmp(schema, "pg_catalog");
    for (size_t i = 0; i < sizeof(secret_catalogs) / sizeof(secret_catalogs[0]); i++)
        if (glob_match(secret_catalogs[i], name) &&
            (catalog || !strncmp(secret_catalogs[i], "pg_stat_statements", 18)))
            return true;
    if (schema && !strcmp(schema, "information_schema"))
        for (size_t i = 0; i < sizeof(secret_info_schema) / sizeof(secret_info_schema[0]); i++)
            if (!strcmp(secret_info_schema[i], name))
                return true;
    return false;
}

/* ---- SPEC 5.1 safe settings (names as the grammar gives them, lower case) ---- */
static const char *const safe_settings[] = {
    "application_name",
    "bytea_output",
    "client_encoding", /* value checked separately: UTF8 only */
    "client_min_messages",
    "datestyle",
    "default_transaction_deferrable",
    "default_transaction_isolation",
    "extra_float_digits",
    "idle_in_transaction_session_timeout",
    "intervalstyle",
    "lock_timeout",
    "search_path",
    "statement_timeout",
    "timezone",
    "transaction_deferrable",
    "transaction_isolation",
};

bool policy_safe_setting(const char *name)
{
    return bsearch(name, safe_settings, sizeof(safe_settings) / sizeof(safe_settings[0]),
                   sizeof(char *), cmp_str);
}

bool policy_writer_function(const char *name)
{
    return !strcmp(name, "nextval");
}

static const char *const op_names[POLICY_OP__COUNT] = {
    "select",  "insert", "update", "delete",   "merge",   "truncate", "copy_to", "copy_from",
    "explain", "ddl",    "dcl",    "function", "session", "utility",  "do",      "unknown"};
static const char *const op_verbs[POLICY_OP__COUNT] = {"SELECT",  "INSERT",
                                                       "UPDATE",  "DELETE",
                                                       "MERGE",   "TRUNCATE",
                                                       "COPY TO", "COPY FROM",
                                                       "EXPLAIN", "DDL",
                                                       "DCL",     "call of",
                                                       "SET",     "utility statement",
                                                       "DO",      "unknown statement part"};

const char *policy_op_name(policy_op_t op)
{
    return op < POLICY_OP__COUNT ? op_names[op] : "unknown";
}

const char *policy_op_verb(policy_op_t op)
{
    return op < POLICY_OP__COUNT ? op_verbs[op] : "unknown statement part";
}

const char *policy_decision_name(policy_decision_t d)
{
    return d == POLICY_ALLOW ? "allow" : d == POLICY_REVIEW ? "review" : "deny";
}
