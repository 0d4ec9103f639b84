/*
 * The catalog masking resolves names with: every relation (tables,
 * partitions, foreign tables, sequences, views, materialized views) of a
 * target's database, with its columns in attnum order, a view's definition
 * and a table's inheritance ancestors, stored in a mask_relset_t
 * (src/mask/relset.h).
 *
 * Two readers fill it from the same SELECT, one JSON object per relation:
 *   - catsvc.c, the shared snapshot of a target: read on a gateway-owned
 *     connection (catalog_query_shared, search_path pinned to pg_catalog by
 *     the connection's options), then shared read-only by every session of
 *     the target on every loop (refcounted: catalog_retain / catalog_free);
 *   - maskflow.c, a session's private copy after its own DDL: read in-band on
 *     the session's own upstream connection (catalog_query_idle / _in_tx;
 *     replies swallowed), which sees its temporary relations and its
 *     transaction's uncommitted DDL.
 * View definitions are read with search_path = pg_catalog so that every name
 * in them is schema-qualified, as lineage needs (docs/masking.md "The
 * resolver"). Relations of pg_catalog and information_schema are described
 * as tables: their columns hold catalog metadata, never data values, except
 * the statistics catalogs, which lineage treats as unknown by name.
 *
 * Memory is bounded (CATALOG_MAX_BYTES); a bigger catalog fails the load and
 * whoever reads it has no catalog: every relation is masked whole.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "mask/relset.h"
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
const char catalog_query_shared[] = CATALOG_SELECT;
const char catalog_query_undo[] =
    "ROLLBACK TO SAVEPOINT bulwark_catalog; RELEASE SAVEPOINT bulwark_catalog";

struct catalog {
    atomic_int refs;
    mask_relset_t *rels;
    size_t json_bytes; /* JSON read so far (the cap) */
    uint64_t digest;   /* FNV-1a over the rows read, in order */
    char *temp_schema; /* this session's pg_temp_N, or NULL */
};

catalog_t *catalog_new(void)
{
    catalog_t *c = calloc(1, sizeof(*c));
    if (c && !(c->rels = mask_relset_new())) {
        free(c);
        return NULL;
    }
    if (c)
        atomic_init(&c->refs, 1);
    return c;
}

catalog_t *catalog_retain(catalog_t *c)
{
    if (c)
        atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    return c;
}

void catalog_free(catalog_t *c)
{
    if (!c || atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
        return;
    mask_relset_free(c->rels);
    free(c->temp_schema);
    free(c);
}

size_t catalog_size(const catalog_t *c)
{
    return c ? mask_relset_count(c->rels) : 0;
}

bool catalog_same(const catalog_t *a, const catalog_t *b)
{
    return a && b && a->digest == b->digest && a->json_bytes == b->json_bytes &&
           catalog_size(a) == catalog_size(b);
}

size_t catalog_bytes(const catalog_t *c)
{
    return c ? sizeof(*c) + mask_relset_bytes(c->rels) : 0;
}

bool catalog_knows_oid(const catalog_t *c, uint32_t oid)
{
    return oid == 0 || (c && mask_relset_has_oid(c->rels, oid));
}

static mask_relkind_t relkind(const char *k, const char *schema)
{
    bool system = !strcmp(schema, "pg_catalog") || !strcmp(schema, "information_schema");
    if (!system && k && (k[0] == 'v' || k[0] == 'm'))
        return MASK_REL_VIEW;
    return MASK_REL_TABLE;
}

#define REL_MAX_COLS 1700 /* PostgreSQL's MaxHeapAttributeNumber is 1600 */

/* {"o":oid,"s":schema,"n":name,"k":relkind,"c":[[attnum,name],...],"v":def,"p":[...],"t":bool} */
static int add_rel(catalog_t *c, const cJSON *o)
{
    const cJSON *oid = cJSON_GetObjectItemCaseSensitive(o, "o");
    const char *schema = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "s"));
    const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "n"));
    const char *kind = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "k"));
    if (!cJSON_IsNumber(oid) || oid->valuedouble < 1 || oid->valuedouble > 4294967295.0 ||
        !schema || !name)
        return -1;
    mask_relspec_t sp = {.oid = (uint32_t)oid->valuedouble,
                         .schema = schema,
                         .name = name,
                         .kind = relkind(kind, schema)};
    const cJSON *cols = cJSON_GetObjectItemCaseSensitive(o, "c");
    const cJSON *parents = cJSON_GetObjectItemCaseSensitive(o, "p");
    size_t n = cJSON_IsArray(cols) ? (size_t)cJSON_GetArraySize(cols) : 0;
    size_t np = cJSON_IsArray(parents) ? (size_t)cJSON_GetArraySize(parents) : 0;
    if (n > REL_MAX_COLS || np > REL_MAX_COLS)
        return -1;
    const char *colv[REL_MAX_COLS + 1], *parv[REL_MAX_COLS + 1];
    int16_t attv[REL_MAX_COLS + 1];
    const cJSON *e;
    cJSON_ArrayForEach(e, cols)
    {
        const cJSON *num = cJSON_GetArrayItem(e, 0);
        const char *col = cJSON_GetStringValue(cJSON_GetArrayItem(e, 1));
        if (!cJSON_IsNumber(num) || !col)
            continue;
        colv[sp.ncolumns] = col;
        attv[sp.ncolumns++] = (int16_t)num->valuedouble;
    }
    cJSON_ArrayForEach(e, parents)
    {
        const char *p = cJSON_GetStringValue(e);
        if (p)
            parv[sp.nparents++] = p;
    }
    sp.columns = colv;
    sp.attnums = attv;
    sp.parents = parv;
    const char *view = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "v"));
    if (sp.kind == MASK_REL_VIEW)
        sp.view_sql = view;
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "t")) && !c->temp_schema &&
        !(c->temp_schema = strdup(schema)))
        return -1;
    return mask_relset_add(c->rels, &sp) < 0 ? -1 : 0; /* a duplicate name cannot happen */
}

int catalog_add_json(catalog_t *c, const char *json, size_t len)
{
    if (catalog_size(c) >= CATALOG_MAX_RELS || c->json_bytes + len > CATALOG_MAX_BYTES ||
        catalog_bytes(c) > CATALOG_MAX_BYTES)
        return -1;
    c->json_bytes += len;
    uint64_t h = c->digest ? c->digest : 14695981039346656037ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)json[i]) * 1099511628211ull;
    c->digest = (h ^ 0x1e) * 1099511628211ull; /* a row separator */
    cJSON *o = cJSON_ParseWithLength(json, len);
    int rc = o ? add_rel(c, o) : -1;
    cJSON_Delete(o);
    return rc;
}

int catalog_add_row(catalog_t *c, const uint8_t *body, size_t len)
{
    pgw_datarow_t row;
    const uint8_t *v;
    int32_t vlen;
    if (pgw_read_datarow(body, len, &row) < 0 || pgw_values_next(&row.cols, &v, &vlen) != 1 ||
        vlen < 0)
        return -1;
    return catalog_add_json(c, (const char *)v, (size_t)vlen);
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
    return mask_relset_get(v->cat->rels, schema, name, out);
}

int catalog_attname(void *arg, uint32_t table_oid, int16_t attnum, char *out, size_t outsz)
{
    const catalog_view_t *v = arg;
    return v->cat ? mask_relset_attname(v->cat->rels, table_oid, attnum, out, outsz) : 0;
}
