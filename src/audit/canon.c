/*
 * Canonical bytes of records and checkpoints: the only thing the hash chain
 * and the signatures cover. An outside verifier reproduces them from an export
 * with any RFC 8785 (JSON Canonicalization Scheme) implementation, because
 * records only ever hold strings, integers up to 2^53, booleans, null, arrays
 * and objects (docs/audit.md).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "audit/internal.h"

/* One code point from s[*i..n), strict UTF-8 (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF); an invalid byte yields U+FFFD and
 * advances by one. */
static uint32_t utf8_next(const unsigned char *s, size_t n, size_t *i)
{
    unsigned char c = s[*i];
    if (c < 0x80) {
        (*i)++;
        return c;
    }
    size_t need;
    uint32_t cp, min;
    if (c >= 0xc2 && c <= 0xdf) {
        need = 1, cp = c & 0x1f, min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        need = 2, cp = c & 0x0f, min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 3, cp = c & 0x07, min = 0x10000;
    } else {
        (*i)++;
        return 0xfffd;
    }
    if (n - *i <= need) {
        (*i)++;
        return 0xfffd;
    }
    for (size_t k = 1; k <= need; k++) {
        unsigned char d = s[*i + k];
        if ((d & 0xc0) != 0x80) {
            (*i)++;
            return 0xfffd;
        }
        cp = (cp << 6) | (d & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
        (*i)++;
        return 0xfffd;
    }
    *i += need + 1;
    return cp;
}

static void put_utf8(buf_t *b, uint32_t cp)
{
    uint8_t o[4];
    size_t n;
    if (cp < 0x80) {
        o[0] = (uint8_t)cp, n = 1;
    } else if (cp < 0x800) {
        o[0] = (uint8_t)(0xc0 | (cp >> 6)), o[1] = (uint8_t)(0x80 | (cp & 0x3f)), n = 2;
    } else if (cp < 0x10000) {
        o[0] = (uint8_t)(0xe0 | (cp >> 12)), o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (uint8_t)(0x80 | (cp & 0x3f)), n = 3;
    } else {
        o[0] = (uint8_t)(0xf0 | (cp >> 18)), o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
        o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f)), o[3] = (uint8_t)(0x80 | (cp & 0x3f));
        n = 4;
    }
    buf_append(b, o, n);
}

/* Bytes canon_string copies as they are: printable ASCII but '"' and '\\'. */
static const uint8_t plain[256] = {
    [0x20 ... 0x21] = 1, /* 0x22 '"' */
    [0x23 ... 0x5b] = 1, /* 0x5c '\\' */
    [0x5d ... 0x7f] = 1,
};

void canon_string(buf_t *b, const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0; /* run: start of bytes copied verbatim */
    while (i < len && plain[u[i]])
        i++;
    if (i == len) { /* nothing to escape or repair: the usual case, one copy */
        if (buf_reserve(b, len + 2)) {
            uint8_t *p = b->data + b->len;
            p[0] = '"';
            memcpy(p + 1, u, len);
            p[len + 1] = '"';
            b->len += len + 2;
        }
        return;
    }
    buf_put_u8(b, '"');
    while (i < len) {
        unsigned char c = u[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            i++;
            continue;
        }
        buf_append(b, u + run, i - run);
        if (c < 0x80) {
            static const char esc[] = "btn\0fr";
            char tmp[8];
            if (c == '"' || c == '\\')
                tmp[0] = '\\', tmp[1] = (char)c, tmp[2] = 0;
            else if (c >= 8 && c <= 13 && c != 11)
                tmp[0] = '\\', tmp[1] = esc[c - 8], tmp[2] = 0;
            else
                snprintf(tmp, sizeof(tmp), "\\u%04x", c);
            buf_append(b, tmp, strlen(tmp));
            i++;
        } else {
            size_t at = i;
            uint32_t cp = utf8_next(u, len, &i);
            if (cp == 0xfffd && !(i - at == 3 && u[at] == 0xef))
                put_utf8(b, 0xfffd);
            else
                buf_append(b, u + at, i - at);
        }
        run = i;
    }
    buf_append(b, u + run, i - run);
    buf_put_u8(b, '"');
}

/* UTF-16 code units of a string, one at a time (RFC 8785 section 3.2.3 sorts
 * member names by them), decoding exactly as canon_string encodes. */
typedef struct u16it {
    const unsigned char *s;
    size_t n, i;
    uint16_t pending; /* low surrogate still to yield, or 0 */
} u16it_t;

static int u16_next(u16it_t *it)
{
    if (it->pending) {
        int u = it->pending;
        it->pending = 0;
        return u;
    }
    if (it->i >= it->n)
        return -1;
    uint32_t cp = utf8_next(it->s, it->n, &it->i);
    if (cp < 0x10000)
        return (int)cp;
    cp -= 0x10000;
    it->pending = (uint16_t)(0xdc00 | (cp & 0x3ff));
    return (int)(0xd800 | (cp >> 10));
}

int canon_name_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    /* ASCII prefix: one byte is one code unit, so bytes compare as UTF-16
     * would (the writer sorts about ten plain names per record). */
    size_t i = 0, n = alen < blen ? alen : blen;
    for (; i < n; i++) {
        unsigned char ca = (unsigned char)a[i], cb = (unsigned char)b[i];
        if ((ca | cb) >= 0x80)
            break;
        if (ca != cb)
            return ca < cb ? -1 : 1;
    }
    if (i == n) /* a prefix of the other: whatever follows is at least one code unit */
        return alen == blen ? 0 : alen < blen ? -1 : 1;
    /* the rest by code units; the ASCII prefix decodes the same from anywhere */
    u16it_t x = {(const unsigned char *)a + i, alen - i, 0, 0};
    u16it_t y = {(const unsigned char *)b + i, blen - i, 0, 0};
    for (;;) {
        int ux = u16_next(&x), uy = u16_next(&y);
        if (ux != uy)
            return ux < uy ? -1 : 1;
        if (ux < 0)
            return 0;
    }
}

typedef struct member {
    const cJSON *item;
    size_t index;
} member_t;

static int member_cmp(const void *pa, const void *pb)
{
    const member_t *a = pa, *b = pb;
    const char *sa = a->item->string ? a->item->string : "";
    const char *sb = b->item->string ? b->item->string : "";
    u16it_t x = {(const unsigned char *)sa, strlen(sa), 0, 0};
    u16it_t y = {(const unsigned char *)sb, strlen(sb), 0, 0};
    for (;;) {
        int ux = u16_next(&x), uy = u16_next(&y);
        if (ux != uy)
            return ux < uy ? -1 : 1;
        if (ux < 0)
            break;
    }
    return a->index < b->index ? -1 : a->index > b->index;
}

static bool same_name(const member_t *a, const member_t *b)
{
    member_t x = {a->item, 0}, y = {b->item, 0}; /* same index: compares names only */
    return member_cmp(&x, &y) == 0;
}

static void canon_number(buf_t *b, double d)
{
    char tmp[40];
    if (isfinite(d) && d == floor(d) && fabs(d) <= 9007199254740992.0) {
        snprintf(tmp, sizeof(tmp), "%lld", (long long)d); /* -0 prints 0 */
        buf_append(b, tmp, strlen(tmp));
        return;
    }
    if (isnan(d))
        snprintf(tmp, sizeof(tmp), "NaN");
    else if (isinf(d))
        snprintf(tmp, sizeof(tmp), d > 0 ? "Infinity" : "-Infinity");
    else
        snprintf(tmp, sizeof(tmp), "%.17g", d);
    canon_string(b, tmp, strlen(tmp));
}

static bool canon_at(buf_t *b, const cJSON *v, int depth)
{
    if (depth > AUDIT_CANON_DEPTH)
        return false;
    if (cJSON_IsNull(v)) {
        buf_append(b, "null", 4);
    } else if (cJSON_IsFalse(v)) {
        buf_append(b, "false", 5);
    } else if (cJSON_IsTrue(v)) {
        buf_append(b, "true", 4);
    } else if (cJSON_IsNumber(v)) {
        canon_number(b, v->valuedouble);
    } else if (cJSON_IsString(v)) {
        const char *s = v->valuestring ? v->valuestring : "";
        canon_string(b, s, strlen(s));
    } else if (cJSON_IsArray(v)) {
        buf_put_u8(b, '[');
        bool first = true;
        for (const cJSON *c = v->child; c; c = c->next) {
            if (!first)
                buf_put_u8(b, ',');
            first = false;
            if (!canon_at(b, c, depth + 1))
                return false;
        }
        buf_put_u8(b, ']');
    } else if (cJSON_IsObject(v)) {
        size_t n = 0;
        for (const cJSON *c = v->child; c; c = c->next)
            n++;
        member_t *m = n ? malloc(n * sizeof(*m)) : NULL;
        if (n && !m) {
            b->failed = true;
            return false;
        }
        size_t k = 0;
        for (const cJSON *c = v->child; c; c = c->next, k++)
            m[k] = (member_t){c, k};
        if (n > 1)
            qsort(m, n, sizeof(*m), member_cmp);
        buf_put_u8(b, '{');
        bool ok = true, first = true;
        for (size_t i = 0; i < n && ok; i++) {
            if (i > 0 && same_name(&m[i - 1], &m[i]))
                continue; /* sorted by (name, index): the first occurrence stays */
            if (!first)
                buf_put_u8(b, ',');
            first = false;
            const char *name = m[i].item->string ? m[i].item->string : "";
            canon_string(b, name, strlen(name));
            buf_put_u8(b, ':');
            ok = canon_at(b, m[i].item, depth + 1);
        }
        free(m);
        if (!ok)
            return false;
        buf_put_u8(b, '}');
    } else {
        return false; /* cJSON_Raw or invalid */
    }
    return !b->failed;
}

bool canon_json(buf_t *b, const cJSON *v)
{
    return canon_at(b, v, 0);
}

bool canon_sid_ok(const char *s)
{
    if (!s)
        return false;
    size_t n = 0;
    for (; s[n]; n++) {
        unsigned char c = (unsigned char)s[n];
        if (c <= 0x20 || c >= 0x7f || c == '"' || c == '\\' || n >= AUDIT_SID_MAX)
            return false;
    }
    return n > 0;
}

size_t canon_u64(char *out, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do
        tmp[n++] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

size_t canon_i64(char *out, int64_t v)
{
    if (v >= 0)
        return canon_u64(out, (uint64_t)v);
    out[0] = '-';
    return 1 + canon_u64(out + 1, 0 - (uint64_t)v); /* INT64_MIN too */
}

/* Appends to a fixed buffer without snprintf (the writer does this per record). */
typedef struct tailw {
    char *p, *end;
    bool over;
} tailw_t;

static void tw_put(tailw_t *w, const char *s, size_t n)
{
    if (w->over || (size_t)(w->end - w->p) < n) {
        w->over = true;
        return;
    }
    memcpy(w->p, s, n);
    w->p += n;
}

#define TW_LIT(w, lit) tw_put((w), (lit), sizeof(lit) - 1)

size_t canon_tail(char *out, uint64_t seq, const char *sid, int64_t ts, const char *type,
                  const char *replica)
{
    /* The bytes are those of the snprintf format
     *   [,"replica":"R"],"seq":N,"session":"ID"|null,"ts":T,"type":"NAME","v":1}
     * and, like snprintf's, they must end below CANON_TAIL_MAX (room for a NUL). */
    tailw_t w = {out, out + CANON_TAIL_MAX - 1, false};
    char num[24];
    if (replica) {
        size_t rl = strlen(replica);
        if (rl <= 64) { /* config-checked: letters, digits, . _ - */
            TW_LIT(&w, ",\"replica\":\"");
            tw_put(&w, replica, rl);
            TW_LIT(&w, "\"");
        }
    }
    TW_LIT(&w, ",\"seq\":");
    tw_put(&w, num, canon_u64(num, seq));
    if (sid) {
        TW_LIT(&w, ",\"session\":\"");
        tw_put(&w, sid, strlen(sid));
        TW_LIT(&w, "\",\"ts\":");
    } else {
        TW_LIT(&w, ",\"session\":null,\"ts\":");
    }
    tw_put(&w, num, canon_i64(num, ts));
    TW_LIT(&w, ",\"type\":\"");
    tw_put(&w, type, strlen(type));
    TW_LIT(&w, "\",\"v\":1}");
    if (w.over)
        return 0;
    *w.p = 0;
    return (size_t)(w.p - out);
}

void hex_encode(char *out, const uint8_t *in, size_t n)
{
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[in[i] >> 4];
        out[2 * i + 1] = d[in[i] & 15];
    }
    out[2 * n] = 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

bool hex_decode(uint8_t *out, const char *in, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(in[2 * i]), lo = hi < 0 ? -1 : hexval(in[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return in[2 * n] == 0;
}

void be64_put(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

uint64_t be64_get(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static void hash_parts(EVP_MD_CTX *ctx, const EVP_MD *md, uint8_t out[AUDIT_HASH_LEN],
                       const uint8_t prev[AUDIT_HASH_LEN], const void *const *parts,
                       const size_t *lens, size_t nparts)
{
    unsigned int olen = 0;
    if (!ctx || !EVP_DigestInit_ex(ctx, md, NULL) || !EVP_DigestUpdate(ctx, prev, AUDIT_HASH_LEN)) {
        memset(out, 0, AUDIT_HASH_LEN); /* never matches a real hash: verify reports it */
        return;
    }
    for (size_t i = 0; i < nparts; i++)
        (void)EVP_DigestUpdate(ctx, parts[i], lens[i]);
    if (!EVP_DigestFinal_ex(ctx, out, &olen))
        memset(out, 0, AUDIT_HASH_LEN);
}

void chain_hash(uint8_t out[AUDIT_HASH_LEN], const uint8_t prev[AUDIT_HASH_LEN],
                const void *const *parts, const size_t *lens, size_t nparts)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    hash_parts(ctx, EVP_sha256(), out, prev, parts, lens, nparts);
    EVP_MD_CTX_free(ctx);
}

void chain_hasher_init(chain_hasher_t *h)
{
    h->md = EVP_MD_fetch(NULL, "SHA2-256", NULL);
    h->ctx = h->md ? EVP_MD_CTX_new() : NULL;
}

void chain_hasher_free(chain_hasher_t *h)
{
    EVP_MD_CTX_free(h->ctx);
    EVP_MD_free(h->md);
    h->ctx = NULL, h->md = NULL;
}

void chain_hash_with(chain_hasher_t *h, uint8_t out[AUDIT_HASH_LEN],
                     const uint8_t prev[AUDIT_HASH_LEN], const void *const *parts,
                     const size_t *lens, size_t nparts)
{
    if (h && h->ctx)
        hash_parts(h->ctx, h->md, out, prev, parts, lens, nparts);
    else
        chain_hash(out, prev, parts, lens, nparts);
}

bool rec_view(const void *val, size_t len, rec_view_t *out)
{
    const uint8_t *p = val;
    if (len < AUDIT_VALUE_HDR + 2 || p[0] != AUDIT_VALUE_VERSION)
        return false;
    out->prev = p + 1;
    out->hash = p + 1 + AUDIT_HASH_LEN;
    out->canon = (const char *)p + AUDIT_VALUE_HDR;
    out->canon_len = len - AUDIT_VALUE_HDR;
    return true;
}

static bool json_uint(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 9007199254740992.0 ||
        v->valuedouble != floor(v->valuedouble))
        return false;
    *out = (uint64_t)v->valuedouble;
    return true;
}

bool rec_env_parse(const char *canon, size_t len, rec_env_t *out)
{
    memset(out, 0, sizeof(*out));
    cJSON *j = cJSON_ParseWithLength(canon, len);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return false;
    }
    out->json = j;
    const cJSON *seq = cJSON_GetObjectItemCaseSensitive(j, "seq");
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(j, "ts");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(j, "type");
    const cJSON *sess = cJSON_GetObjectItemCaseSensitive(j, "session");
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(j, "data");
    uint64_t t;
    if (!json_uint(seq, &out->seq) || !json_uint(ts, &t) || !cJSON_IsString(type) ||
        !cJSON_IsObject(data) || !(cJSON_IsNull(sess) || cJSON_IsString(sess))) {
        cJSON_Delete(j);
        out->json = NULL;
        return false;
    }
    out->ts = (int64_t)t;
    out->type = type->valuestring;
    out->session = cJSON_IsString(sess) ? sess->valuestring : NULL;
    out->data = data;
    return true;
}

bool rec_ts_fast(const char *canon, size_t len, int64_t *ts)
{
    static const char pat[] = ",\"ts\":";
    const size_t pl = sizeof(pat) - 1;
    if (len < pl + 2)
        return false;
    /* The envelope's "ts" is the last such member: everything after it is
     * "type" (a fixed name) and "v". */
    for (size_t i = len - pl; i-- > 0;) {
        if (memcmp(canon + i, pat, pl))
            continue;
        int64_t v = 0;
        size_t k = i + pl, digits = 0;
        while (k < len && canon[k] >= '0' && canon[k] <= '9' && digits < 18)
            v = v * 10 + (canon[k++] - '0'), digits++;
        if (!digits)
            return false;
        *ts = v;
        return true;
    }
    return false;
}

void canon_checkpoint(buf_t *b, uint64_t seq, const uint8_t hash[AUDIT_HASH_LEN],
                      const uint8_t *key_id, int64_t ts)
{
    char h[2 * AUDIT_HASH_LEN + 1], k[2 * AUDIT_HASH_LEN + 1], tmp[256];
    hex_encode(h, hash, AUDIT_HASH_LEN);
    if (key_id)
        hex_encode(k, key_id, AUDIT_HASH_LEN);
    int n = snprintf(tmp, sizeof(tmp),
                     "{\"hash\":\"%s\",\"key\":%s%s%s,\"seq\":%llu,\"ts\":%lld,\"v\":1}", h,
                     key_id ? "\"" : "", key_id ? k : "null", key_id ? "\"" : "",
                     (unsigned long long)seq, (long long)ts);
    if (n > 0)
        buf_append(b, tmp, (size_t)n);
}

bool cp_view(const void *val, size_t len, cp_view_t *out)
{
    const uint8_t *p = val;
    memset(out, 0, sizeof(*out));
    if (len < 2)
        return false;
    size_t sl = (size_t)p[0] << 8 | p[1];
    if (len < 2 + sl + 2)
        return false;
    out->sig = sl ? p + 2 : NULL;
    out->sig_len = sl;
    out->canon = (const char *)p + 2 + sl;
    out->canon_len = len - 2 - sl;
    cJSON *j = cJSON_ParseWithLength(out->canon, out->canon_len);
    bool ok = false;
    if (cJSON_IsObject(j)) {
        const cJSON *h = cJSON_GetObjectItemCaseSensitive(j, "hash");
        const cJSON *k = cJSON_GetObjectItemCaseSensitive(j, "key");
        uint64_t ts = 0;
        ok = json_uint(cJSON_GetObjectItemCaseSensitive(j, "seq"), &out->seq) &&
             json_uint(cJSON_GetObjectItemCaseSensitive(j, "ts"), &ts) && cJSON_IsString(h) &&
             strlen(h->valuestring) == 2 * AUDIT_HASH_LEN &&
             hex_decode(out->hash, h->valuestring, AUDIT_HASH_LEN);
        out->ts = (int64_t)ts;
        if (ok && cJSON_IsString(k)) {
            ok = strlen(k->valuestring) == 2 * AUDIT_HASH_LEN &&
                 hex_decode(out->key_id, k->valuestring, AUDIT_HASH_LEN);
            out->has_key = ok;
        } else if (ok && !cJSON_IsNull(k)) {
            ok = false;
        }
    }
    cJSON_Delete(j);
    return ok;
}
