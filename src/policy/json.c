/*
 * A small read-only JSON tree for libpg_query's parse-tree output.
 *
 * cJSON allocates every node with malloc; on a 1 KB statement its parse of the
 * 10 KB tree cost as much as libpg_query's parse itself. This parser puts all
 * nodes and strings in a few large blocks freed at once, and refuses anything
 * that is not strict JSON (which only ever means: fail closed).
 */
#include <stdlib.h>
#include <string.h>

#include "policy/internal.h"

typedef struct jblock {
    struct jblock *next;
    size_t used, cap;
    max_align_t data[];
} jblock_t;

struct jdoc {
    jblock_t *blocks;
    const char *p, *end;
    int depth, max_depth;
    bool failed;
    jnode_t *root;
};

static void *jalloc(jdoc_t *d, size_t n)
{
    n = (n + sizeof(max_align_t) - 1) & ~(sizeof(max_align_t) - 1);
    jblock_t *b = d->blocks;
    if (!b || b->cap - b->used < n) {
        size_t cap = b ? b->cap * 2 : 16384;
        if (cap < n)
            cap = n;
        b = malloc(sizeof(*b) + cap);
        if (!b) {
            d->failed = true;
            return NULL;
        }
        b->used = 0;
        b->cap = cap;
        b->next = d->blocks;
        d->blocks = b;
    }
    void *r = (char *)b->data + b->used;
    b->used += n;
    return r;
}

static void ws(jdoc_t *d)
{
    while (d->p < d->end && (*d->p == ' ' || *d->p == '\n' || *d->p == '\t' || *d->p == '\r'))
        d->p++;
}

static int hex4(const char *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= c - '0';
        else if (c >= 'a' && c <= 'f')
            v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            v |= c - 'A' + 10;
        else
            return -1;
    }
    return v;
}

static char *put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        *o++ = (char)cp;
    } else if (cp < 0x800) {
        *o++ = (char)(0xc0 | (cp >> 6));
        *o++ = (char)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        *o++ = (char)(0xe0 | (cp >> 12));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3f));
        *o++ = (char)(0x80 | (cp & 0x3f));
    } else {
        *o++ = (char)(0xf0 | (cp >> 18));
        *o++ = (char)(0x80 | ((cp >> 12) & 0x3f));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3f));
        *o++ = (char)(0x80 | (cp & 0x3f));
    }
    return o;
}

/* At the opening quote; returns the unescaped string (no NUL inside). */
static const char *jstring(jdoc_t *d)
{
    const char *s = ++d->p, *q = s;
    bool esc = false;
    while (q < d->end && *q != '"') {
        if ((unsigned char)*q < 0x20)
            return NULL;
        if (*q == '\\') {
            esc = true;
            q++;
        }
        q++;
    }
    if (q >= d->end)
        return NULL;
    size_t n = (size_t)(q - s);
    char *out = jalloc(d, n + 1), *o = out;
    if (!out)
        return NULL;
    if (!esc) {
        memcpy(out, s, n);
        out[n] = '\0';
        d->p = q + 1;
        return out;
    }
    for (const char *p = s; p < q; p++) {
        if (*p != '\\') {
            *o++ = *p;
            continue;
        }
        p++;
        switch (*p) {
        case '"':
        case '\\':
        case '/':
            *o++ = *p;
            break;
        case 'b':
            *o++ = '\b';
            break;
        case 'f':
            *o++ = '\f';
            break;
        case 'n':
            *o++ = '\n';
            break;
        case 'r':
            *o++ = '\r';
            break;
        case 't':
            *o++ = '\t';
            break;
        case 'u': {
            if (q - p < 5)
                return NULL;
            int cp = hex4(p + 1);
            p += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && q - p >= 7 && p[1] == '\\' && p[2] == 'u') {
                int lo = hex4(p + 3);
                if (lo >= 0xdc00 && lo < 0xe000) {
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    p += 6;
                }
            }
            if (cp <= 0 || (cp >= 0xd800 && cp < 0xe000)) /* NUL or a lone surrogate */
                return NULL;
            o = put_utf8(o, (unsigned)cp); /* never longer than the 6+ bytes it replaces */
            break;
        }
        default:
            return NULL;
        }
    }
    *o = '\0';
    d->p = q + 1;
    return out;
}

static jnode_t *jvalue(jdoc_t *d);

static bool jmembers(jdoc_t *d, jnode_t *n, bool object)
{
    char close = object ? '}' : ']';
    d->p++;
    ws(d);
    if (d->p < d->end && *d->p == close) {
        d->p++;
        return true;
    }
    jnode_t **tail = &n->child;
    for (;;) {
        const char *key = NULL;
        ws(d);
        if (object) {
            if (d->p >= d->end || *d->p != '"' || !(key = jstring(d)))
                return false;
            ws(d);
            if (d->p >= d->end || *d->p != ':')
                return false;
            d->p++;
        }
        jnode_t *c = jvalue(d);
        if (!c)
            return false;
        c->key = key;
        *tail = c;
        tail = &c->next;
        n->n++;
        ws(d);
        if (d->p < d->end && *d->p == ',') {
            d->p++;
            continue;
        }
        if (d->p < d->end && *d->p == close) {
            d->p++;
            return true;
        }
        return false;
    }
}

static jnode_t *jvalue(jdoc_t *d)
{
    ws(d);
    if (d->p >= d->end)
        return NULL;
    jnode_t *n = jalloc(d, sizeof(*n));
    if (!n)
        return NULL;
    memset(n, 0, sizeof(*n));
    char c = *d->p;
    if (c == '{' || c == '[') {
        if (++d->depth > d->max_depth)
            return NULL;
        n->type = c == '{' ? J_OBJ : J_ARR;
        if (!jmembers(d, n, c == '{'))
            return NULL;
        d->depth--;
    } else if (c == '"') {
        n->type = J_STR;
        if (!(n->str = jstring(d)))
            return NULL;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
        char *e;
        n->type = J_NUM;
        /* libpg_query's trees are mostly small integers ("location"): read
         * those directly; anything else (fraction, exponent, hex, long) is strtod's */
        const char *q = d->p + (c == '-');
        int64_t v = 0;
        int digits = 0;
        while (q < d->end && *q >= '0' && *q <= '9' && digits < 15)
            v = v * 10 + (*q++ - '0'), digits++;
        if (digits > 0 && digits < 15 &&
            (q == d->end || !strchr(".eExX0123456789", *q) || *q == '\0')) {
            n->num = (double)(c == '-' ? -v : v);
            d->p = q;
            return n;
        }
        n->num = strtod(d->p, &e);
        if (e == d->p || e > d->end)
            return NULL;
        d->p = e;
    } else if (d->end - d->p >= 4 && !memcmp(d->p, "true", 4)) {
        n->type = J_TRUE;
        d->p += 4;
    } else if (d->end - d->p >= 5 && !memcmp(d->p, "false", 5)) {
        n->type = J_FALSE;
        d->p += 5;
    } else if (d->end - d->p >= 4 && !memcmp(d->p, "null", 4)) {
        n->type = J_NULL;
        d->p += 4;
    } else {
        return NULL;
    }
    return n;
}

jdoc_t *json_parse(const char *text, size_t len, int max_depth)
{
    jdoc_t *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->p = text;
    d->end = text + len;
    d->max_depth = max_depth;
    d->root = jvalue(d);
    ws(d);
    if (!d->root || d->failed || d->p != d->end) {
        json_free(d);
        return NULL;
    }
    return d;
}

const jnode_t *json_root(const jdoc_t *d)
{
    return d->root;
}

void json_free(jdoc_t *d)
{
    if (!d)
        return;
    jblock_t *b = d->blocks;
    while (b) {
        jblock_t *n = b->next;
        free(b);
        b = n;
    }
    free(d);
}

const jnode_t *json_get(const jnode_t *o, const char *key)
{
    if (!o || o->type != J_OBJ)
        return NULL;
    for (const jnode_t *c = o->child; c; c = c->next)
        if (!strcmp(c->key, key))
            return c;
    return NULL;
}

bool json_equal(const jnode_t *a, const jnode_t *b)
{
    if (!a || !b || a->type != b->type || a->n != b->n)
        return false;
    switch (a->type) {
    case J_STR:
        return !strcmp(a->str, b->str);
    case J_NUM:
        return a->num == b->num;
    case J_ARR:
    case J_OBJ:
        for (const jnode_t *x = a->child, *y = b->child; x && y; x = x->next, y = y->next) {
            if (a->type == J_OBJ && strcmp(x->key, y->key))
                return false;
            if (!json_equal(x, y))
                return false;
        }
        return true;
    default:
        return true;
    }
}
