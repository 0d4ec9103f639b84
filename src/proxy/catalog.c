/*
 * The catalog a session's masking resolves names with: every relation (tables,
 * partitions, foreign tables, sequences, views, materialized views) of the
 * database the session's upstream credential connects to, with its columns in
 * attnum order, a view's definition and a table's inheritance ancestors.
 *
 * Read by one Query on the session's own upstream connection (maskflow.c
 * sends it between statements and swallows the replies): each relation is one
 * DataRow holding one JSON object. View definitions are read with
 * search_path = pg_catalog (SET LOCAL inside the Query's own transaction) so
 * that every name in them is schema-qualified, as lineage needs
 * (docs/masking.md "The resolver"). Relations of pg_catalog and
 * information_schema are described as tables: their columns hold catalog
 * metadata, never data values, except the statistics catalogs, which lineage
 * treats as unknown by name.
 *
 * Memory is bounded (CATALOG_MAX_BYTES); a bigger catalog fails the load and
 * the session then masks every relation whole.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "proxy/maskflow.h"

#define CATALOG_MAX_BYTES (64u * 1024 * 1024)
#define CATALOG_MAX_RELS 200000

#define CATALOG_SELECT                                                                             \
    "WITH RECURSIVE anc(child, parent) AS ("                                                       \
    " SELECT inhrelid, inhparent FROM pg_inherits"                                                 \
    " UNION SELECT a.child, i.inhparent FROM anc a JOIN pg_inherits i ON i.inhrelid = a.parent) "  \
    "SELECT json_build_object("                                                                    \
    " 'o', c.oid::int8, 's', n.nspname, 'n', c.relname, 'k', c.relkind,"                           \
    " 'c', (SELECT json_agg(json_build_array(a.attnum, a.attname) ORDER BY a.attnum)"              \
    "       FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT "                \
    "a.attisdropped),"                                                                             \
    " 'v', CASE WHEN c.relkind IN ('v', 'm') AND n.nspname NOT IN ('pg_catalog', "                 \
    "'information_schema') THEN pg_get_viewdef(c.oid) END,"                                        \
    " 'p', (SELECT json_agg(pn.nspname || '.' || pc.relname) FROM anc"                             \
    "       JOIN pg_class pc ON pc.oid = anc.parent"                                               \
    "       JOIN pg_namespace pn ON pn.oid = pc.relnamespace WHERE anc.child = c.oid),"            \
    " 't', n.oid = pg_my_temp_schema())::text "                                                    \
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "                               \
    "WHERE c.relkind IN ('r', 'p', 'f', 'S', 'v', 'm') AND n.nspname <> 'pg_toast' "               \
    "AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%' "                                              \
    "AND (n.nspname NOT LIKE 'pg\\_temp\\_%' OR n.oid = pg_my_temp_schema())"

/* Outside a transaction: a transaction of its own. Inside the client's: a
 * savepoint, rolled back (which also undoes the SET LOCAL) and released, so
 * the client's transaction is as it was. */
const char catalog_query_idle[] =
    "BEGIN; SET LOCAL search_path = pg_catalog; " CATALOG_SELECT "; COMMIT";
const char catalog_query_in_tx[] = "SAVEPOINT bulwark_catalog; "
                                   "SET LOCAL search_path = pg_catalog; " CATALOG_SELECT
                                   "; ROLLBACK TO SAVEPOINT bulwark_catalog; "
                                   "RELEASE SAVEPOINT bulwark_catalog";
const char catalog_query_undo[] =
    "ROLLBACK TO SAVEPOINT bulwark_catalog; RELEASE SAVEPOINT bulwark_catalog";

typedef struct rel {
    uint32_t oid;
    char *schema, *name;
    mask_relkind_t kind;
    char **cols;
    int16_t *attnums;
    size_t ncols;
    char *view_sql;
    char **parents;
    size_t nparents;
    struct rel *next_name, *next_oid;
} rel_t;

#define CAT_BUCKETS 4096

struct catalog {
    rel_t *by_name[CAT_BUCKETS];
    rel_t *by_oid[CAT_BUCKETS];
    size_t nrels, bytes;
    char *temp_schema; /* this session's pg_temp_N, or NULL */
};

catalog_t *catalog_new(void)
{
    return calloc(1, sizeof(catalog_t));
}

static void rel_free(rel_t *r)
{
    free(r->schema);
    free(r->name);
    for (size_t i = 0; i < r->ncols; i++)
        free(r->cols[i]);
    free(r->cols);
    free(r->attnums);
    free(r->view_sql);
    for (size_t i = 0; i < r->nparents; i++)
        free(r->parents[i]);
    free(r->parents);
    free(r);
}

void catalog_free(catalog_t *c)
{
    if (!c)
        return;
    for (size_t b = 0; b < CAT_BUCKETS; b++)
        for (rel_t *r = c->by_name[b], *n; r; r = n) {
            n = r->next_name;
            rel_free(r);
        }
    free(c->temp_schema);
    free(c);
}

size_t catalog_size(const catalog_t *c)
{
    return c ? c->nrels : 0;
}

static uint32_t name_hash(const char *schema, const char *name)
{
    uint32_t h = 2166136261u;
    for (const char *p = schema; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    h = (h ^ '.') * 16777619u;
    for (const char *p = name; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    return h % CAT_BUCKETS;
}

static const rel_t *find_name(const catalog_t *c, const char *schema, const char *name)
{
    for (const rel_t *r = c->by_name[name_hash(schema, name)]; r; r = r->next_name)
        if (!strcmp(r->name, name) && !strcmp(r->schema, schema))
            return r;
    return NULL;
}

static const rel_t *find_oid(const catalog_t *c, uint32_t oid)
{
    for (const rel_t *r = c->by_oid[oid % CAT_BUCKETS]; r; r = r->next_oid)
        if (r->oid == oid)
            return r;
    return NULL;
}

bool catalog_knows_oid(const catalog_t *c, uint32_t oid)
{
    return oid == 0 || (c && find_oid(c, oid));
}

static char *dup_str(catalog_t *c, const char *s)
{
    if (!s)
        return NULL;
    c->bytes += strlen(s) + 1;
    return strdup(s);
}

static mask_relkind_t relkind(const char *k, const char *schema)
{
    bool system = !strcmp(schema, "pg_catalog") || !strcmp(schema, "information_schema");
    if (!system && k && (k[0] == 'v' || k[0] == 'm'))
        return MASK_REL_VIEW;
    return MASK_REL_TABLE;
}

/* {"o":oid,"s":schema,"n":name,"k":relkind,"c":[[attnum,name],...],"v":def,"p":[...],"t":bool} */
static int fill_rel(catalog_t *c, rel_t *r, const cJSON *o)
{
    const cJSON *oid = cJSON_GetObjectItemCaseSensitive(o, "o");
    const char *schema = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "s"));
    const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "n"));
    const char *kind = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "k"));
    if (!cJSON_IsNumber(oid) || oid->valuedouble < 1 || oid->valuedouble > 4294967295.0 ||
        !schema || !name)
        return -1;
    r->oid = (uint32_t)oid->valuedouble;
    r->schema = dup_str(c, schema);
    r->name = dup_str(c, name);
    r->kind = relkind(kind, schema);
    if (!r->schema || !r->name)
        return -1;
    const cJSON *cols = cJSON_GetObjectItemCaseSensitive(o, "c");
    size_t n = cJSON_IsArray(cols) ? (size_t)cJSON_GetArraySize(cols) : 0;
    r->cols = calloc(n ? n : 1, sizeof(char *));
    r->attnums = calloc(n ? n : 1, sizeof(int16_t));
    if (!r->cols || !r->attnums)
        return -1;
    const cJSON *e;
    cJSON_ArrayForEach(e, cols)
    {
        const cJSON *num = cJSON_GetArrayItem(e, 0);
        const char *col = cJSON_GetStringValue(cJSON_GetArrayItem(e, 1));
        if (!cJSON_IsNumber(num) || !col)
            continue;
        if (!(r->cols[r->ncols] = dup_str(c, col)))
            return -1;
        r->attnums[r->ncols++] = (int16_t)num->valuedouble;
    }
    const char *view = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "v"));
    if (view && r->kind == MASK_REL_VIEW && !(r->view_sql = dup_str(c, view)))
        return -1;
    const cJSON *parents = cJSON_GetObjectItemCaseSensitive(o, "p");
    size_t np = cJSON_IsArray(parents) ? (size_t)cJSON_GetArraySize(parents) : 0;
    if (np) {
        if (!(r->parents = calloc(np, sizeof(char *))))
            return -1;
        cJSON_ArrayForEach(e, parents)
        {
            const char *p = cJSON_GetStringValue(e);
            if (p && !(r->parents[r->nparents++] = dup_str(c, p)))
                return -1;
        }
    }
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "t")) && !c->temp_schema &&
        !(c->temp_schema = dup_str(c, schema)))
        return -1;
    c->bytes += sizeof(*r) + n * (sizeof(char *) + sizeof(int16_t)) + np * sizeof(char *);
    return 1;
}

int catalog_add_row(catalog_t *c, const uint8_t *body, size_t len)
{
    pgw_datarow_t row;
    const uint8_t *v;
    int32_t vlen;
    if (pgw_read_datarow(body, len, &row) < 0 || pgw_values_next(&row.cols, &v, &vlen) != 1 ||
        vlen < 0)
        return -1;
    if (c->nrels >= CATALOG_MAX_RELS || c->bytes + (size_t)vlen > CATALOG_MAX_BYTES)
        return -1;
    cJSON *o = cJSON_ParseWithLength((const char *)v, (size_t)vlen);
    rel_t *r = calloc(1, sizeof(*r));
    int rc = o && r ? fill_rel(c, r, o) : -1;
    cJSON_Delete(o);
    if (rc <= 0) {
        if (r)
            rel_free(r);
        return rc;
    }
    if (find_name(c, r->schema, r->name)) { /* cannot happen in one snapshot */
        rel_free(r);
        return 0;
    }
    uint32_t h = name_hash(r->schema, r->name);
    r->next_name = c->by_name[h];
    c->by_name[h] = r;
    r->next_oid = c->by_oid[r->oid % CAT_BUCKETS];
    c->by_oid[r->oid % CAT_BUCKETS] = r;
    c->nrels++;
    return 0;
}

static bool system_schema(const char *schema)
{
    return !strcmp(schema, "pg_catalog") || !strcmp(schema, "information_schema");
}

int catalog_resolve(void *arg, const char *schema, const char *name, mask_relation_t *out)
{
    const catalog_view_t *v = arg;
    if (!v->cat)
        return -1;
    if (!strcmp(schema, "pg_temp")) {
        if (!v->cat->temp_schema)
            return 0;
        schema = v->cat->temp_schema;
    }
    if (v->dirty && !system_schema(schema))
        return -1;
    const rel_t *r = find_name(v->cat, schema, name);
    if (!r)
        return 0;
    memset(out, 0, sizeof(*out));
    out->kind = r->kind;
    out->columns = (const char *const *)r->cols;
    out->ncolumns = r->ncols;
    out->view_sql = r->view_sql;
    out->parents = (const char *const *)r->parents;
    out->nparents = r->nparents;
    return 1;
}

int catalog_attname(void *arg, uint32_t table_oid, int16_t attnum, char *out, size_t outsz)
{
    const catalog_view_t *v = arg;
    if (!v->cat || !table_oid)
        return 0;
    const rel_t *r = find_oid(v->cat, table_oid);
    if (!r)
        return 0;
    for (size_t i = 0; i < r->ncols; i++)
        if (r->attnums[i] == attnum) {
            snprintf(out, outsz, "%s.%s.%s", r->schema, r->name, r->cols[i]);
            return 1;
        }
    return 0;
}
