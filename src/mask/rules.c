/*
 * A role's masks compiled once: column masks indexed for lineage, detector
 * methods, the Vectorscan database of the detectors it enables, and the HMAC
 * key of the "hash" method as two SHA-256 states (key XOR ipad / opad) that
 * every thread copies from (read-only sharing).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "mask/internal.h"

static const char *const method_names[] = {"none", "redact", "partial", "email",
                                           "hash", "null",   "fixed"};

const char *mask_method_name(mask_method_kind_t k)
{
    return (unsigned)k < sizeof(method_names) / sizeof(method_names[0]) ? method_names[k] : "?";
}

static int parse_method(const cJSON *m, mask_method_t *out, bool *uses_hash, char *err,
                        size_t errsz, int idx)
{
    const cJSON *meth = cJSON_GetObjectItemCaseSensitive(m, "method");
    memset(out, 0, sizeof(*out));
    for (int k = MASK_M_REDACT; k <= MASK_M_FIXED; k++)
        if (cJSON_IsString(meth) && !strcmp(meth->valuestring, method_names[k]))
            out->kind = (mask_method_kind_t)k;
    if (out->kind == MASK_M_NONE) {
        snprintf(err, errsz, "masks[%d]: missing or unknown method", idx);
        return -1;
    }
    const cJSON *kf = cJSON_GetObjectItemCaseSensitive(m, "keep_first");
    const cJSON *kl = cJSON_GetObjectItemCaseSensitive(m, "keep_last");
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(m, "value");
    out->keep_first = cJSON_IsNumber(kf) && kf->valueint > 0 ? kf->valueint : 0;
    out->keep_last = cJSON_IsNumber(kl) && kl->valueint > 0 ? kl->valueint : 0;
    if (out->kind == MASK_M_FIXED) {
        if (!cJSON_IsString(v)) {
            snprintf(err, errsz, "masks[%d]: method \"fixed\" needs a value", idx);
            return -1;
        }
        out->value = strdup(v->valuestring);
        out->value_len = strlen(v->valuestring);
        if (!out->value) {
            snprintf(err, errsz, "out of memory");
            return -1;
        }
    }
    if (out->kind == MASK_M_HASH)
        *uses_hash = true;
    return 0;
}

static int split_column(const char *full, mask_colmask_t *c)
{
    const char *a = strchr(full, '.');
    const char *b = a ? strchr(a + 1, '.') : NULL;
    if (!a || !b || a == full || b == a + 1 || !b[1] || strchr(b + 1, '.'))
        return -1;
    c->name = strdup(full);
    c->schema = strndup(full, (size_t)(a - full));
    c->table = strndup(a + 1, (size_t)(b - a - 1));
    c->column = strdup(b + 1);
    return c->name && c->schema && c->table && c->column ? 0 : -1;
}

static bool same_method(const mask_method_t *a, const mask_method_t *b)
{
    return a->kind == b->kind && a->keep_first == b->keep_first && a->keep_last == b->keep_last &&
           a->value_len == b->value_len &&
           (!a->value_len || !memcmp(a->value, b->value, a->value_len));
}

static int add_detectors(mask_rules_t *r, const cJSON *dets, const mask_method_t *m, char *err,
                         size_t errsz, int idx)
{
    const cJSON *d;
    cJSON_ArrayForEach(d, dets)
    {
        int k = cJSON_IsString(d) ? mask_detector_index(d->valuestring) : -1;
        if (k < 0) {
            snprintf(err, errsz, "masks[%d]: unknown detector", idx);
            return -1;
        }
        mask_method_t *dm = &r->det_method[k];
        if (!(r->det_on & (1u << k))) {
            *dm = *m;
            if (m->value && !(dm->value = strdup(m->value))) {
                snprintf(err, errsz, "out of memory");
                return -1;
            }
            r->det_on |= 1u << k;
        } else if (!same_method(dm, m)) {
            /* The same detector under two masks with different methods: the
               strictest reasonable reading is redact. */
            free((char *)dm->value);
            *dm = (mask_method_t){.kind = MASK_M_REDACT};
        }
    }
    return 0;
}

static int hmac_init(mask_rules_t *r, char *err, size_t errsz)
{
    uint8_t k[64] = {0}, pad[64];
    if (r->keylen > 64) {
        unsigned n = 0;
        if (!EVP_Digest(r->key, r->keylen, k, &n, EVP_sha256(), NULL))
            goto fail;
    } else {
        memcpy(k, r->key, r->keylen);
    }
    r->hmac_inner = EVP_MD_CTX_new();
    r->hmac_outer = EVP_MD_CTX_new();
    if (!r->hmac_inner || !r->hmac_outer)
        goto fail;
    for (int i = 0; i < 64; i++)
        pad[i] = k[i] ^ 0x36;
    if (!EVP_DigestInit_ex(r->hmac_inner, EVP_sha256(), NULL) ||
        !EVP_DigestUpdate(r->hmac_inner, pad, 64))
        goto fail;
    for (int i = 0; i < 64; i++)
        pad[i] = k[i] ^ 0x5c;
    if (!EVP_DigestInit_ex(r->hmac_outer, EVP_sha256(), NULL) ||
        !EVP_DigestUpdate(r->hmac_outer, pad, 64))
        goto fail;
    OPENSSL_cleanse(k, sizeof(k));
    OPENSSL_cleanse(pad, sizeof(pad));
    return 0;
fail:
    OPENSSL_cleanse(k, sizeof(k));
    OPENSSL_cleanse(pad, sizeof(pad));
    snprintf(err, errsz, "cannot initialise HMAC-SHA-256");
    return -1;
}

mask_rules_t *mask_rules_compile(const cJSON *masks, const uint8_t *hash_key, size_t keylen,
                                 char *err, size_t errsz)
{
    mask_rules_t *r = calloc(1, sizeof(*r));
    int n = cJSON_IsArray(masks) ? cJSON_GetArraySize(masks) : 0;
    bool uses_hash = false;
    if (!r || (n && !(r->cols = calloc((size_t)n, sizeof(*r->cols))))) {
        snprintf(err, errsz, "out of memory");
        free(r);
        return NULL;
    }
    r->refs = 1;
    if (masks && !cJSON_IsArray(masks)) {
        snprintf(err, errsz, "masks must be an array");
        goto fail;
    }
    int idx = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, masks)
    {
        mask_method_t meth;
        if (parse_method(m, &meth, &uses_hash, err, errsz, idx) < 0)
            goto fail;
        const cJSON *col = cJSON_GetObjectItemCaseSensitive(m, "column");
        const cJSON *dets = cJSON_GetObjectItemCaseSensitive(m, "detectors");
        if (cJSON_IsString(col)) {
            if (r->ncols == MASK_MAX_COLUMNS) {
                free((char *)meth.value);
                snprintf(err, errsz, "more than %d column masks", MASK_MAX_COLUMNS);
                goto fail;
            }
            mask_colmask_t *c = &r->cols[r->ncols++];
            c->method = meth;
            if (split_column(col->valuestring, c) < 0) {
                snprintf(err, errsz, "masks[%d].column: must be \"schema.table.column\"", idx);
                goto fail;
            }
            const cJSON *pa = cJSON_GetObjectItemCaseSensitive(m, "in_predicates");
            c->pred_allow = cJSON_IsString(pa) && !strcmp(pa->valuestring, "allow");
        } else if (cJSON_IsArray(dets)) {
            int rc = add_detectors(r, dets, &meth, err, errsz, idx);
            free((char *)meth.value);
            if (rc < 0)
                goto fail;
        } else {
            free((char *)meth.value);
            snprintf(err, errsz, "masks[%d]: needs column or detectors", idx);
            goto fail;
        }
        idx++;
    }
    if (uses_hash) {
        if (!hash_key || !keylen) {
            snprintf(err, errsz, "method \"hash\" needs a key (masking hash key file)");
            goto fail;
        }
        if (!(r->key = malloc(keylen))) {
            snprintf(err, errsz, "out of memory");
            goto fail;
        }
        memcpy(r->key, hash_key, keylen);
        r->keylen = keylen;
        if (hmac_init(r, err, errsz) < 0)
            goto fail;
    }
    if (mask_detect_compile(r, err, errsz) < 0)
        goto fail;
    return r;
fail:
    mask_rules_release(r);
    return NULL;
}

mask_rules_t *mask_rules_retain(mask_rules_t *r)
{
    if (r)
        __atomic_add_fetch(&r->refs, 1, __ATOMIC_RELAXED);
    return r;
}

void mask_rules_release(mask_rules_t *r)
{
    if (!r || __atomic_sub_fetch(&r->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    for (size_t i = 0; i < r->ncols; i++) {
        free(r->cols[i].name);
        free(r->cols[i].schema);
        free(r->cols[i].table);
        free(r->cols[i].column);
        free((char *)r->cols[i].method.value);
    }
    free(r->cols);
    for (int d = 0; d < DET_N; d++)
        if (r->det_on & (1u << d))
            free((char *)r->det_method[d].value);
    hs_free_database(r->db);
    free(r->pat_of_id);
    if (r->key) {
        OPENSSL_cleanse(r->key, r->keylen);
        free(r->key);
    }
    EVP_MD_CTX_free(r->hmac_inner);
    EVP_MD_CTX_free(r->hmac_outer);
    free(r);
}

bool mask_rules_active(const mask_rules_t *r)
{
    return r && (r->ncols || r->det_on);
}

bool mask_rules_has_detectors(const mask_rules_t *r)
{
    return r && r->db;
}

int mask_rules_find(const mask_rules_t *r, const char *schema, const char *table,
                    const char *column)
{
    for (size_t i = 0; i < r->ncols; i++) {
        const mask_colmask_t *c = &r->cols[i];
        if (!strcmp(c->column, column) && !strcmp(c->table, table) && !strcmp(c->schema, schema))
            return (int)i;
    }
    return -1;
}

const mask_method_t *mask_det_method(const mask_rules_t *r, uint8_t det)
{
    static const mask_method_t redact = {.kind = MASK_M_REDACT};
    if (det == DET_MIXED || det >= DET_N || !(r->det_on & (1u << det)))
        return &redact;
    return &r->det_method[det];
}

/* ---- scratch ---- */

mask_scratch_t *mask_scratch_new(void)
{
    mask_scratch_t *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->md = EVP_MD_CTX_new();
    if (!s->md) {
        free(s);
        return NULL;
    }
    buf_init(&s->tmp, 0);
    buf_init(&s->tmp2, 0);
    return s;
}

void mask_scratch_free(mask_scratch_t *s)
{
    if (!s)
        return;
    hs_free_scratch(s->hs);
    free(s->spans);
    free(s->regions);
    free(s->region_col);
    free(s->vals);
    EVP_MD_CTX_free(s->md);
    buf_free(&s->tmp);
    buf_free(&s->tmp2);
    free(s);
}
