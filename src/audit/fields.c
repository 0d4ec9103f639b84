/*
 * Record fields without cJSON: the per-statement fast path.
 *
 * The proxy's loop thread appends a record's fields to an audit_fields_t as a
 * compact binary stream (tags, lengths, raw bytes: a memcpy per value, no
 * allocation per value, no sorting, no escaping). The writer thread turns the
 * stream into the record's canonical JSON (fields_canon) just before hashing
 * it, so the RFC 8785 work (member order, string escapes, UTF-8 repair) runs
 * off the loop. The bytes stored are exactly those canon_json would produce
 * from the same fields built as cJSON: the on-disk format does not change.
 *
 * Stream (host byte order; it never leaves the process):
 *
 *   value   := 'n' | 't' | 'f' | 'i' int64 | 's' u32 len, bytes
 *            | '{' member* ')' | '[' value* ')'
 *   member  := 'k' u8 len, name bytes, value
 *
 * The top level is an object's members without the braces.
 */
#include <stdlib.h>
#include <string.h>

#include "audit/internal.h"

void audit_fields_init(audit_fields_t *f, size_t limit)
{
    buf_init(&f->b, limit);
    f->depth = 0;
}

void audit_fields_reset(audit_fields_t *f)
{
    buf_reset(&f->b);
    f->b.failed = false;
    f->depth = 0;
}

void audit_fields_free(audit_fields_t *f)
{
    buf_free(&f->b);
}

/* Room for a member name (when k is set) and n more bytes: the hot path
 * writes through the returned pointer; NULL after an error (sticky). */
static uint8_t *room(audit_fields_t *f, const char *k, size_t n)
{
    size_t kl = k ? strlen(k) : 0;
    if (kl > 255 || !buf_reserve(&f->b, (k ? 2 + kl : 0) + n)) {
        f->b.failed = true;
        return NULL;
    }
    uint8_t *p = f->b.data + f->b.len;
    if (k) {
        p[0] = 'k', p[1] = (uint8_t)kl;
        memcpy(p + 2, k, kl);
        p += 2 + kl;
    }
    f->b.len = (size_t)(p - f->b.data) + n;
    return p;
}

static void key(audit_fields_t *f, const char *k)
{
    (void)room(f, k, 0);
}

void audit_f_str(audit_fields_t *f, const char *k, const char *s, size_t len)
{
    uint8_t *p = len <= UINT32_MAX && !f->b.failed ? room(f, k, 5 + len) : NULL;
    if (!p) {
        f->b.failed = true;
        return;
    }
    uint32_t l = (uint32_t)len;
    p[0] = 's';
    memcpy(p + 1, &l, 4);
    memcpy(p + 5, s, len);
}

void audit_f_cstr(audit_fields_t *f, const char *k, const char *s)
{
    if (s)
        audit_f_str(f, k, s, strlen(s));
    else
        audit_f_null(f, k);
}

void audit_f_int(audit_fields_t *f, const char *k, int64_t v)
{
    uint8_t *p = f->b.failed ? NULL : room(f, k, 9);
    if (p) {
        p[0] = 'i';
        memcpy(p + 1, &v, 8);
    }
}

void audit_f_bool(audit_fields_t *f, const char *k, bool v)
{
    uint8_t *p = f->b.failed ? NULL : room(f, k, 1);
    if (p)
        *p = v ? 't' : 'f';
}

void audit_f_null(audit_fields_t *f, const char *k)
{
    uint8_t *p = f->b.failed ? NULL : room(f, k, 1);
    if (p)
        *p = 'n';
}

void audit_f_open(audit_fields_t *f, const char *k, char kind)
{
    key(f, k);
    if (f->depth >= AUDIT_CANON_DEPTH || (kind != '{' && kind != '[')) {
        f->b.failed = true;
        return;
    }
    f->depth++;
    buf_put_u8(&f->b, (uint8_t)kind);
}

void audit_f_close(audit_fields_t *f)
{
    if (!f->depth) {
        f->b.failed = true;
        return;
    }
    f->depth--;
    buf_put_u8(&f->b, ')');
}

static void from_json(audit_fields_t *f, const char *k, const cJSON *v)
{
    if (cJSON_IsNull(v)) {
        audit_f_null(f, k);
    } else if (cJSON_IsBool(v)) {
        audit_f_bool(f, k, cJSON_IsTrue(v));
    } else if (cJSON_IsString(v)) {
        audit_f_cstr(f, k, v->valuestring ? v->valuestring : "");
    } else if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        if (d == (double)(int64_t)d && d >= -9007199254740992.0 && d <= 9007199254740992.0) {
            audit_f_int(f, k, (int64_t)d);
        } else {
            buf_t t; /* canon_json's string form of other numbers */
            buf_init(&t, 64);
            canon_json(&t, v);
            if (t.failed || t.len < 2)
                f->b.failed = true;
            else
                audit_f_str(f, k, (const char *)t.data + 1, t.len - 2);
            buf_free(&t);
        }
    } else if (cJSON_IsArray(v) || cJSON_IsObject(v)) {
        bool obj = cJSON_IsObject(v);
        audit_f_open(f, k, obj ? '{' : '[');
        for (const cJSON *c = v->child; c && !f->b.failed; c = c->next)
            from_json(f, obj ? (c->string ? c->string : "") : NULL, c);
        audit_f_close(f);
    } else {
        f->b.failed = true; /* cJSON_Raw or invalid, as canon_json */
    }
}

void audit_f_json(audit_fields_t *f, const char *k, const cJSON *v)
{
    from_json(f, k, v);
}

void audit_f_splice(audit_fields_t *f, const char *k, const audit_fields_t *value)
{
    if (value->b.failed || value->depth) {
        f->b.failed = true;
        return;
    }
    key(f, k);
    buf_append(&f->b, value->b.data, value->b.len);
}

bool audit_fields_ok(const audit_fields_t *f)
{
    return !f->b.failed && f->depth == 0;
}

/* ---- the writer's side: stream -> canonical JSON ---- */

typedef struct rd {
    const uint8_t *p, *end;
} rd_t;

typedef struct fmember {
    const char *name;
    size_t name_len, index;
    const uint8_t *val; /* the value's first byte */
} fmember_t;

static bool skip_value(rd_t *r, int depth);

static bool skip_members(rd_t *r, int depth, bool object)
{
    while (r->p < r->end && *r->p != ')') {
        if (object) {
            if (r->end - r->p < 2 || *r->p != 'k' || (size_t)(r->end - r->p) < 2u + r->p[1])
                return false;
            r->p += 2 + r->p[1];
        }
        if (!skip_value(r, depth))
            return false;
    }
    return true;
}

static bool skip_value(rd_t *r, int depth)
{
    if (r->p >= r->end || depth > AUDIT_CANON_DEPTH)
        return false;
    uint8_t t = *r->p++;
    uint32_t l;
    switch (t) {
    case 'n':
    case 't':
    case 'f':
        return true;
    case 'i':
        if (r->end - r->p < 8)
            return false;
        r->p += 8;
        return true;
    case 's':
        if (r->end - r->p < 4)
            return false;
        memcpy(&l, r->p, 4);
        r->p += 4;
        if ((size_t)(r->end - r->p) < l)
            return false;
        r->p += l;
        return true;
    case '{':
    case '[':
        if (!skip_members(r, depth + 1, t == '{') || r->p >= r->end)
            return false;
        r->p++; /* ')' */
        return true;
    default:
        return false;
    }
}

static int fmember_cmp(const void *pa, const void *pb)
{
    const fmember_t *a = pa, *b = pb;
    int c = canon_name_cmp(a->name, a->name_len, b->name, b->name_len);
    if (c)
        return c;
    return a->index < b->index ? -1 : a->index > b->index;
}

static bool emit_value(buf_t *out, rd_t *r, int depth);

/* One byte; the writer's canonical JSON is mostly single-byte punctuation. */
static inline void put1(buf_t *b, uint8_t c)
{
    if (b->len < b->cap && !b->failed)
        b->data[b->len++] = c;
    else
        buf_put_u8(b, c);
}

/* The members up to ')' or the end (r is left there), sorted as RFC 8785
 * wants; the first of duplicate names stays. One pass finds the members
 * (and checks the whole body) before anything is written. */
static bool emit_object(buf_t *out, rd_t *r, int depth)
{
    fmember_t stack[24], *m = stack;
    size_t n = 0, cap = sizeof(stack) / sizeof(stack[0]);
    bool ok = true;
    while (r->p < r->end && *r->p != ')') {
        if (r->end - r->p < 2 || *r->p != 'k' || (size_t)(r->end - r->p) < 2u + r->p[1]) {
            ok = false;
            break;
        }
        if (n == cap) {
            fmember_t *g =
                m == stack ? malloc(2 * cap * sizeof(*m)) : realloc(m, 2 * cap * sizeof(*m));
            if (!g) {
                out->failed = true;
                ok = false;
                break;
            }
            if (m == stack)
                memcpy(g, stack, sizeof(stack));
            m = g, cap *= 2;
        }
        m[n].name = (const char *)r->p + 2;
        m[n].name_len = r->p[1];
        m[n].index = n;
        r->p += 2 + r->p[1];
        m[n].val = r->p;
        n++;
        if (!skip_value(r, depth + 1)) {
            ok = false;
            break;
        }
    }
    if (ok && n > 32) {
        qsort(m, n, sizeof(*m), fmember_cmp);
    } else if (ok) {
        /* Insertion sort: stable, so equal names keep their stream order (the
         * first one stays); the loop's records come nearly sorted. */
        for (size_t i = 1; i < n; i++) {
            fmember_t x = m[i];
            size_t j = i;
            while (j > 0 &&
                   canon_name_cmp(m[j - 1].name, m[j - 1].name_len, x.name, x.name_len) > 0) {
                m[j] = m[j - 1];
                j--;
            }
            m[j] = x;
        }
    }
    if (ok)
        put1(out, '{');
    for (size_t i = 0, written = 0; i < n && ok; i++) {
        if (i > 0 &&
            canon_name_cmp(m[i - 1].name, m[i - 1].name_len, m[i].name, m[i].name_len) == 0)
            continue;
        if (written++)
            put1(out, ',');
        canon_string(out, m[i].name, m[i].name_len);
        put1(out, ':');
        rd_t v = {m[i].val, r->end};
        ok = emit_value(out, &v, depth + 1);
    }
    if (ok)
        put1(out, '}');
    if (m != stack)
        free(m);
    return ok && !out->failed;
}

static bool emit_value(buf_t *out, rd_t *r, int depth)
{
    if (r->p >= r->end || depth > AUDIT_CANON_DEPTH)
        return false;
    uint8_t t = *r->p++;
    switch (t) {
    case 'n':
        buf_append(out, "null", 4);
        return true;
    case 't':
        buf_append(out, "true", 4);
        return true;
    case 'f':
        buf_append(out, "false", 5);
        return true;
    case 'i': {
        int64_t v;
        if (r->end - r->p < 8)
            return false;
        memcpy(&v, r->p, 8);
        r->p += 8;
        char tmp[24];
        size_t len = canon_i64(tmp, v);
        bool exact = v >= -9007199254740992LL && v <= 9007199254740992LL;
        if (exact) /* integers beyond 2^53 are strings, as canon_json stores them */
            buf_append(out, tmp, len);
        else
            canon_string(out, tmp, len);
        return true;
    }
    case 's': {
        uint32_t l;
        if (r->end - r->p < 4)
            return false;
        memcpy(&l, r->p, 4);
        r->p += 4;
        if ((size_t)(r->end - r->p) < l)
            return false;
        canon_string(out, (const char *)r->p, l);
        r->p += l;
        return true;
    }
    case '[': {
        put1(out, '[');
        for (size_t i = 0; r->p < r->end && *r->p != ')'; i++) {
            if (i)
                put1(out, ',');
            if (!emit_value(out, r, depth + 1))
                return false;
        }
        if (r->p >= r->end)
            return false;
        r->p++;
        put1(out, ']');
        return true;
    }
    case '{':
        if (!emit_object(out, r, depth) || r->p >= r->end)
            return false;
        r->p++; /* ')' */
        return true;
    default:
        return false;
    }
}

bool fields_canon(buf_t *out, const uint8_t *p, size_t n)
{
    rd_t r = {p, p + n};
    return emit_object(out, &r, 0) && r.p == r.end;
}
