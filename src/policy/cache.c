/*
 * Parse cache: statement text -> extracted intent (session and role
 * independent). Chained hash table keyed by a 64-bit FNV-1a of the text with
 * a full comparison on hit; LRU list; bounded in entries and in bytes (text
 * plus the intent's arena). Not thread-safe: one cache per loop.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "policy/internal.h"

typedef struct entry {
    struct entry *hnext;       /* bucket chain */
    struct entry *prev, *next; /* LRU: head = most recent */
    uint64_t hash;
    size_t len, bytes;
    intent_t *in;
    char text[];
} entry_t;

struct policy_cache {
    entry_t **buckets;
    size_t n_buckets; /* power of two */
    entry_t *head, *tail;
    size_t max_entries, max_bytes;
    /* Written by the owning loop only; read by any thread (the metrics scrape
     * sums every worker's cache): relaxed atomics, bumped without a locked RMW. */
    _Atomic size_t entries, bytes;
    _Atomic uint64_t hits, misses, evictions;
};

#define BUMP(x)                                                                                    \
    atomic_store_explicit(&(x), atomic_load_explicit(&(x), memory_order_relaxed) + 1,              \
                          memory_order_relaxed)
#define READ(x) atomic_load_explicit(&(x), memory_order_relaxed)

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

policy_cache_t *policy_cache_new(size_t max_entries, size_t max_bytes)
{
    policy_cache_t *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->max_entries = max_entries;
    c->max_bytes = max_bytes;
    size_t nb = 16;
    while (nb < max_entries && nb < (1u << 24))
        nb <<= 1;
    c->buckets = calloc(nb, sizeof(*c->buckets));
    if (!c->buckets) {
        free(c);
        return NULL;
    }
    c->n_buckets = nb;
    return c;
}

static void lru_unlink(policy_cache_t *c, entry_t *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_front(policy_cache_t *c, entry_t *e)
{
    e->prev = NULL;
    e->next = c->head;
    if (c->head)
        c->head->prev = e;
    c->head = e;
    if (!c->tail)
        c->tail = e;
}

static void drop(policy_cache_t *c, entry_t *e)
{
    entry_t **pp = &c->buckets[e->hash & (c->n_buckets - 1)];
    while (*pp && *pp != e)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = e->hnext;
    lru_unlink(c, e);
    c->entries--;
    c->bytes -= e->bytes;
    policy_intent_free(e->in);
    free(e);
}

void policy_cache_free(policy_cache_t *c)
{
    if (!c)
        return;
    while (c->head)
        drop(c, c->head);
    free(c->buckets);
    free(c);
}

void policy_cache_stats(const policy_cache_t *c, policy_cache_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    if (!c)
        return;
    out->hits = READ(c->hits);
    out->misses = READ(c->misses);
    out->evictions = READ(c->evictions);
    out->entries = READ(c->entries);
    out->bytes = READ(c->bytes);
}

const intent_t *policy_cache_get(policy_cache_t *c, const char *sql, size_t len)
{
    uint64_t h = fnv1a(sql, len);
    for (entry_t *e = c->buckets[h & (c->n_buckets - 1)]; e; e = e->hnext)
        if (e->hash == h && e->len == len && !memcmp(e->text, sql, len)) {
            lru_unlink(c, e);
            lru_push_front(c, e);
            BUMP(c->hits);
            return e->in;
        }
    BUMP(c->misses);
    return NULL;
}

const intent_t *policy_cache_put(policy_cache_t *c, const char *sql, size_t len, intent_t *in)
{
    size_t bytes = sizeof(entry_t) + len + 1 + sizeof(intent_t) + in->arena.bytes;
    if (c->max_entries == 0 || bytes > c->max_bytes) {
        policy_intent_free(in);
        return NULL;
    }
    entry_t *e = malloc(sizeof(*e) + len + 1);
    if (!e) {
        policy_intent_free(in);
        return NULL;
    }
    while (c->tail && (c->entries + 1 > c->max_entries || c->bytes + bytes > c->max_bytes)) {
        drop(c, c->tail);
        BUMP(c->evictions);
    }
    e->hash = fnv1a(sql, len);
    e->len = len;
    e->bytes = bytes;
    e->in = in;
    memcpy(e->text, sql, len);
    e->text[len] = '\0';
    e->prev = e->next = NULL;
    size_t b = e->hash & (c->n_buckets - 1);
    e->hnext = c->buckets[b];
    c->buckets[b] = e;
    lru_push_front(c, e);
    c->entries++;
    c->bytes += bytes;
    return in;
}
