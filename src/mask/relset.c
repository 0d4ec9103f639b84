/*
 * relset — relations indexed by name and by OID for the lineage resolver.
 * Contract and sharing rules: relset.h.
 *
 * Two chained hash tables over the same entries; both grow (doubling, from
 * 256 buckets) once they hold more entries than buckets, so a lookup stays
 * O(1) from ten relations to two hundred thousand.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mask/relset.h"

#define RS_MIN_BUCKETS 256u

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

struct mask_relset {
    rel_t **by_name, **by_oid;
    size_t nbuckets; /* a power of two */
    size_t n, bytes;
};

static uint32_t name_hash(const char *schema, const char *name)
{
    uint32_t h = 2166136261u;
    for (const char *p = schema; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    h = (h ^ '.') * 16777619u;
    for (const char *p = name; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    return h;
}

static uint32_t oid_hash(uint32_t oid)
{
    return oid * 2654435761u;
}

mask_relset_t *mask_relset_new(void)
{
    mask_relset_t *rs = calloc(1, sizeof(*rs));
    if (!rs)
        return NULL;
    rs->nbuckets = RS_MIN_BUCKETS;
    rs->by_name = calloc(rs->nbuckets, sizeof(rel_t *));
    rs->by_oid = calloc(rs->nbuckets, sizeof(rel_t *));
    if (!rs->by_name || !rs->by_oid) {
        free(rs->by_name);
        free(rs->by_oid);
        free(rs);
        return NULL;
    }
    rs->bytes = sizeof(*rs) + 2 * rs->nbuckets * sizeof(rel_t *);
    return rs;
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

void mask_relset_free(mask_relset_t *rs)
{
    if (!rs)
        return;
    for (size_t b = 0; b < rs->nbuckets; b++)
        for (rel_t *r = rs->by_name[b], *n; r; r = n) {
            n = r->next_name;
            rel_free(r);
        }
    free(rs->by_name);
    free(rs->by_oid);
    free(rs);
}

size_t mask_relset_count(const mask_relset_t *rs)
{
    return rs ? rs->n : 0;
}

size_t mask_relset_bytes(const mask_relset_t *rs)
{
    return rs ? rs->bytes : 0;
}

static const rel_t *find_name(const mask_relset_t *rs, const char *schema, const char *name)
{
    for (const rel_t *r = rs->by_name[name_hash(schema, name) & (rs->nbuckets - 1)]; r;
         r = r->next_name)
        if (!strcmp(r->name, name) && !strcmp(r->schema, schema))
            return r;
    return NULL;
}

static const rel_t *find_oid(const mask_relset_t *rs, uint32_t oid)
{
    for (const rel_t *r = rs->by_oid[oid_hash(oid) & (rs->nbuckets - 1)]; r; r = r->next_oid)
        if (r->oid == oid)
            return r;
    return NULL;
}

static void rs_link(mask_relset_t *rs, rel_t *r)
{
    size_t m = rs->nbuckets - 1;
    uint32_t h = name_hash(r->schema, r->name) & m;
    r->next_name = rs->by_name[h];
    rs->by_name[h] = r;
    if (r->oid) {
        uint32_t o = oid_hash(r->oid) & m;
        r->next_oid = rs->by_oid[o];
        rs->by_oid[o] = r;
    }
}

/* Doubles both tables; on failure the set stays as it was (only slower). */
static void grow(mask_relset_t *rs)
{
    size_t nb = rs->nbuckets * 2;
    rel_t **bn = calloc(nb, sizeof(rel_t *)), **bo = calloc(nb, sizeof(rel_t *));
    if (!bn || !bo) {
        free(bn);
        free(bo);
        return;
    }
    rel_t *all = NULL;
    for (size_t b = 0; b < rs->nbuckets; b++)
        for (rel_t *r = rs->by_name[b], *n; r; r = n) {
            n = r->next_name;
            r->next_name = all;
            all = r;
        }
    free(rs->by_name);
    free(rs->by_oid);
    rs->bytes += 2 * (nb - rs->nbuckets) * sizeof(rel_t *);
    rs->by_name = bn;
    rs->by_oid = bo;
    rs->nbuckets = nb;
    for (rel_t *r = all, *n; r; r = n) {
        n = r->next_name;
        r->next_name = r->next_oid = NULL;
        rs_link(rs, r);
    }
}

static char *dup(mask_relset_t *rs, const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) {
        memcpy(d, s, n);
        rs->bytes += n;
    }
    return d;
}

int mask_relset_add(mask_relset_t *rs, const mask_relspec_t *sp)
{
    if (!rs || !sp->schema || !sp->name)
        return -1;
    if (find_name(rs, sp->schema, sp->name))
        return 0;
    rel_t *r = calloc(1, sizeof(*r));
    if (!r)
        return -1;
    r->oid = sp->oid;
    r->kind = sp->kind;
    r->cols = calloc(sp->ncolumns ? sp->ncolumns : 1, sizeof(char *));
    r->attnums = calloc(sp->ncolumns ? sp->ncolumns : 1, sizeof(int16_t));
    r->parents = sp->nparents ? calloc(sp->nparents, sizeof(char *)) : NULL;
    if (!(r->schema = dup(rs, sp->schema)) || !(r->name = dup(rs, sp->name)) || !r->cols ||
        !r->attnums || (sp->nparents && !r->parents))
        goto oom;
    for (size_t i = 0; i < sp->ncolumns; i++) {
        if (!sp->columns[i])
            continue;
        if (!(r->cols[r->ncols] = dup(rs, sp->columns[i])))
            goto oom;
        r->attnums[r->ncols++] = sp->attnums ? sp->attnums[i] : (int16_t)(i + 1);
    }
    if (sp->view_sql && !(r->view_sql = dup(rs, sp->view_sql)))
        goto oom;
    for (size_t i = 0; i < sp->nparents; i++)
        if (sp->parents[i] && !(r->parents[r->nparents++] = dup(rs, sp->parents[i])))
            goto oom;
    rs->bytes += sizeof(*r) + sp->ncolumns * (sizeof(char *) + sizeof(int16_t)) +
                 sp->nparents * sizeof(char *);
    if (rs->n >= rs->nbuckets)
        grow(rs);
    rs_link(rs, r);
    rs->n++;
    return 1;
oom:
    rel_free(r);
    return -1;
}

int mask_relset_get(const mask_relset_t *rs, const char *schema, const char *name,
                    mask_relation_t *out)
{
    const rel_t *r = rs ? find_name(rs, schema, name) : NULL;
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

int mask_relset_resolve(void *arg, const char *schema, const char *name, mask_relation_t *out)
{
    return arg ? mask_relset_get(arg, schema, name, out) : -1;
}

int mask_relset_attname(void *arg, uint32_t table_oid, int16_t attnum, char *out, size_t outsz)
{
    const mask_relset_t *rs = arg;
    const rel_t *r = rs && table_oid ? find_oid(rs, table_oid) : NULL;
    if (!r)
        return 0;
    for (size_t i = 0; i < r->ncols; i++)
        if (r->attnums[i] == attnum) {
            snprintf(out, outsz, "%s.%s.%s", r->schema, r->name, r->cols[i]);
            return 1;
        }
    return 0;
}

bool mask_relset_has_oid(const mask_relset_t *rs, uint32_t oid)
{
    return rs && oid && find_oid(rs, oid);
}
