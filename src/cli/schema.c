/*
 * The catalog `bulwark explain --schema FILE` plans masks with: relations read
 * from SQL DDL (CREATE TABLE, including INHERITS and PARTITION OF, and CREATE
 * VIEW / CREATE MATERIALIZED VIEW), e.g. `pg_dump --schema-only` output, which
 * qualifies every name as the gateway's catalog read does (docs/masking.md
 * "The resolver"). Offline and pure: the gateway itself reads the live catalog
 * (src/proxy/catalog.c). Other statements in the file are ignored. Both
 * store their relations in a mask_relset_t (src/mask/relset.h) and resolve
 * through it.
 *
 * A view's columns are its column list, or the output names of its query as
 * planned against what the file defined before it.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>
#include <pg_query.h>

#include "cli/schema.h"
#include "mask/relset.h"

static xschema_t *load(const char *sql, const mask_rules_t *rules, char *err, size_t errsz);

struct xschema {
    mask_relset_t *rels;
};

/* A relation being built: names are owned until added to the set (copied). */
typedef struct xrel {
    char **cols;
    size_t ncols;
    char **parents;
    size_t nparents;
} xrel_t;

static const cJSON *jget(const cJSON *o, const char *k)
{
    return cJSON_GetObjectItemCaseSensitive(o, k);
}

static const char *jstr(const cJSON *o, const char *k)
{
    return cJSON_GetStringValue(jget(o, k));
}

int xschema_resolve(void *arg, const char *schema, const char *name, mask_relation_t *out)
{
    const xschema_t *x = arg;
    return mask_relset_get(x->rels, schema, name, out);
}

static void xrel_clear(xrel_t *r)
{
    for (size_t i = 0; i < r->ncols; i++)
        free(r->cols[i]);
    free(r->cols);
    for (size_t i = 0; i < r->nparents; i++)
        free(r->parents[i]);
    free(r->parents);
    memset(r, 0, sizeof(*r));
}

/* Into the set (names copied); the first definition of a name is kept. */
static int add(xschema_t *x, const cJSON *rv, mask_relkind_t kind, xrel_t *r, const char *view_sql)
{
    const char *schema = jstr(rv, "schemaname"), *name = jstr(rv, "relname");
    if (!name)
        return 0;
    mask_relspec_t sp = {.schema = schema ? schema : "public",
                         .name = name,
                         .kind = kind,
                         .columns = (const char *const *)r->cols,
                         .ncolumns = r->ncols,
                         .view_sql = view_sql,
                         .parents = (const char *const *)r->parents,
                         .nparents = r->nparents};
    return mask_relset_add(x->rels, &sp) < 0 ? -1 : 0;
}

static int push_col(xrel_t *r, const char *name)
{
    char **v = realloc(r->cols, (r->ncols + 1) * sizeof(char *));
    if (!v)
        return -1;
    r->cols = v;
    return (r->cols[r->ncols] = strdup(name)) ? (int)++r->ncols : -1;
}

static int push_parent(xrel_t *r, const char *s)
{
    char **v = realloc(r->parents, (r->nparents + 1) * sizeof(char *));
    if (!v)
        return -1;
    r->parents = v;
    return (r->parents[r->nparents] = strdup(s)) ? (int)++r->nparents : -1;
}

/* Parents first (their columns come first, as PostgreSQL orders them). */
static int inherit(xschema_t *x, xrel_t *r, const cJSON *parents)
{
    const cJSON *p;
    cJSON_ArrayForEach(p, parents)
    {
        const cJSON *rv = jget(p, "RangeVar");
        const char *ps = jstr(rv, "schemaname"), *pn = jstr(rv, "relname");
        mask_relation_t pr;
        if (!pn || mask_relset_get(x->rels, ps ? ps : "public", pn, &pr) != 1)
            continue;
        char q[512];
        snprintf(q, sizeof(q), "%s.%s", ps ? ps : "public", pn);
        if (push_parent(r, q) < 0)
            return -1;
        for (size_t i = 0; i < pr.nparents; i++)
            if (push_parent(r, pr.parents[i]) < 0)
                return -1;
        for (size_t i = 0; i < pr.ncolumns; i++) {
            bool have = false;
            for (size_t j = 0; j < r->ncols; j++)
                have = have || !strcmp(r->cols[j], pr.columns[i]);
            if (!have && push_col(r, pr.columns[i]) < 0)
                return -1;
        }
    }
    return 0;
}

static int create_table(xschema_t *x, const cJSON *b)
{
    xrel_t r = {0};
    int rc = 0;
    const cJSON *parents = jget(b, "inhRelations");
    if (parents && inherit(x, &r, parents) < 0)
        rc = -1;
    const cJSON *e;
    cJSON_ArrayForEach(e, jget(b, "tableElts"))
    {
        const char *col = jstr(jget(e, "ColumnDef"), "colname");
        bool have = false;
        for (size_t j = 0; col && j < r.ncols; j++)
            have = have || !strcmp(r.cols[j], col);
        if (rc == 0 && col && !have && push_col(&r, col) < 0)
            rc = -1;
    }
    if (rc == 0)
        rc = add(x, jget(b, "relation"), MASK_REL_TABLE, &r, NULL);
    xrel_clear(&r);
    return rc;
}

/* The query of CREATE VIEW ... AS <query>: the text after the first AS that
 * is followed by SELECT, WITH, VALUES, TABLE or "(". */
static char *view_query(const char *stmt, size_t len)
{
    for (size_t i = 0; i + 2 < len; i++) {
        bool word_start = i == 0 || isspace((unsigned char)stmt[i - 1]) || stmt[i - 1] == ')';
        if (!word_start || strncasecmp(stmt + i, "as", 2) || !isspace((unsigned char)stmt[i + 2]))
            continue;
        size_t j = i + 2;
        while (j < len && isspace((unsigned char)stmt[j]))
            j++;
        static const char *const kw[] = {"select", "with", "values", "table", "(", NULL};
        for (int k = 0; kw[k]; k++)
            if (len - j >= strlen(kw[k]) && !strncasecmp(stmt + j, kw[k], strlen(kw[k])))
                return strndup(stmt + j, len - j);
    }
    return NULL;
}

static int create_view(xschema_t *x, const mask_rules_t *rules, const cJSON *rv,
                       const cJSON *aliases, const char *stmt, size_t len)
{
    char *q = view_query(stmt, len);
    if (!q)
        return 0;
    const char *const no_path[] = {NULL};
    mask_plan_t *p = NULL;
    char err[256];
    if (mask_plan_sql(rules, q, xschema_resolve, x, no_path, &p, err, sizeof(err)) < 0) {
        free(q);
        return 0; /* a view we cannot read stays unknown: masked whole */
    }
    xrel_t r = {0};
    int rc = 0;
    if (aliases && cJSON_GetArraySize(aliases) > 0) {
        const cJSON *a;
        cJSON_ArrayForEach(a, aliases)
        {
            const char *s = jstr(jget(a, "String"), "sval");
            if (s && push_col(&r, s) < 0)
                rc = -1;
        }
    } else {
        for (size_t i = 0; rc == 0 && i < mask_plan_ncols(p); i++)
            if (push_col(&r, mask_plan_col_name(p, i) ? mask_plan_col_name(p, i) : "?") < 0)
                rc = -1;
    }
    mask_plan_release(p);
    if (rc == 0)
        rc = add(x, rv, MASK_REL_VIEW, &r, q);
    xrel_clear(&r);
    free(q);
    return rc;
}

/* psql meta-commands (pg_dump writes \restrict and \connect) are not SQL:
 * blanked, so that offsets stay those of the file. */
static char *strip_meta(const char *in)
{
    char *s = strdup(in);
    for (char *p = s, *line = s; p && *p; line = p) {
        p = strchr(line, '\n');
        p = p ? p + 1 : line + strlen(line);
        if (*line == '\\')
            memset(line, ' ', (size_t)(p - line) - (p[-1] == '\n'));
    }
    return s;
}

xschema_t *xschema_load(const char *text, const mask_rules_t *rules, char *err, size_t errsz)
{
    char *sql = strip_meta(text);
    if (!sql) {
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    xschema_t *x = load(sql, rules, err, errsz);
    free(sql);
    return x;
}

static xschema_t *load(const char *sql, const mask_rules_t *rules, char *err, size_t errsz)
{
    PgQueryParseResult pr = pg_query_parse(sql);
    if (pr.error) {
        snprintf(err, errsz, "%s (at character %d)", pr.error->message, pr.error->cursorpos);
        pg_query_free_parse_result(pr);
        return NULL;
    }
    cJSON *root = cJSON_Parse(pr.parse_tree);
    pg_query_free_parse_result(pr);
    xschema_t *x = calloc(1, sizeof(*x));
    if (!root || !x || !(x->rels = mask_relset_new())) {
        snprintf(err, errsz, "out of memory");
        cJSON_Delete(root);
        free(x);
        return NULL;
    }
    int rc = 0;
    const cJSON *raw;
    cJSON_ArrayForEach(raw, jget(root, "stmts"))
    {
        const cJSON *st = jget(raw, "stmt");
        const cJSON *loc = jget(raw, "stmt_location"), *slen = jget(raw, "stmt_len");
        size_t off = cJSON_IsNumber(loc) ? (size_t)loc->valuedouble : 0;
        size_t n = cJSON_IsNumber(slen) && slen->valuedouble > 0 ? (size_t)slen->valuedouble
                                                                 : strlen(sql) - off;
        const cJSON *b;
        if ((b = jget(st, "CreateStmt")))
            rc = create_table(x, b);
        else if ((b = jget(st, "ViewStmt")))
            rc = create_view(x, rules, jget(b, "view"), jget(b, "aliases"), sql + off, n);
        else if ((b = jget(st, "CreateTableAsStmt")) &&
                 !strcmp(jstr(b, "objtype") ? jstr(b, "objtype") : "", "OBJECT_MATVIEW"))
            rc = create_view(x, rules, jget(jget(b, "into"), "rel"),
                             jget(jget(b, "into"), "colNames"), sql + off, n);
        if (rc < 0)
            break;
    }
    cJSON_Delete(root);
    if (rc < 0) {
        snprintf(err, errsz, "out of memory");
        xschema_free(x);
        return NULL;
    }
    return x;
}

size_t xschema_count(const xschema_t *x)
{
    return x ? mask_relset_count(x->rels) : 0;
}

void xschema_free(xschema_t *x)
{
    if (!x)
        return;
    mask_relset_free(x->rels);
    free(x);
}
