/*
 * The registry of metrics.h and the Prometheus text exposition (format 0.0.4:
 * https://prometheus.io/docs/instrumenting/exposition_formats/).
 *
 * A family's table is MX_MAX_SERIES slots of one stride (header, label key,
 * then the family's values); slots are claimed by the owning loop only and
 * never freed, so a reader that sees `ready` (acquire) sees the key whole.
 * Histogram values are kept per bucket (not cumulative), then count and the
 * sum in nanoseconds; the scrape turns them cumulative.
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metrics/metrics.h"

#define MX_KEY_MAX (3 * (MX_MAX_VALUE + 1))
#define MX_OVERFLOW "_other"

typedef enum { K_COUNTER, K_GAUGE, K_HISTOGRAM } kind_t;

/* Latency buckets, seconds (upper bounds; +Inf is implied). */
static const double lat_bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                    0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
#define NB (sizeof(lat_bounds) / sizeof(lat_bounds[0]))

typedef struct family_def {
    const char *name, *help;
    kind_t kind;
    int nlabels;
    const char *labels[3];
} family_def_t;

enum {
    F_CONNECTIONS,
    F_SESSIONS,
    F_SESSIONS_ACTIVE,
    F_STATEMENTS,
    F_LOGIN_FAILURES,
    F_UPSTREAM_ERRORS,
    F_APPROVALS_PENDING,
    F_MASKED,
    F_GATE_SECONDS,
    F_UPSTREAM_FIRST_BYTE,
    F_UPSTREAM_READY,
    F_CATALOG_READS,
    F_COUNT
};

static const family_def_t families[F_COUNT] = {
    [F_CONNECTIONS] =
        {"bulwark_connections_total", "Client connections accepted.", K_COUNTER, 0, {NULL}},
    [F_SESSIONS] = {"bulwark_sessions_total",
                    "Sessions started (login and upstream connection succeeded).",
                    K_COUNTER,
                    2,
                    {"role", "target"}},
    [F_SESSIONS_ACTIVE] =
        {"bulwark_sessions_active", "Sessions running now.", K_GAUGE, 2, {"role", "target"}},
    [F_STATEMENTS] = {"bulwark_statements_total",
                      "Query strings and Parse messages decided, by decision and deciding rule.",
                      K_COUNTER,
                      3,
                      {"role", "decision", "rule"}},
    [F_LOGIN_FAILURES] =
        {"bulwark_login_failures_total", "Failed logins by reason.", K_COUNTER, 1, {"reason"}},
    [F_UPSTREAM_ERRORS] = {"bulwark_upstream_errors_total",
                           "Upstream failures: connect, login, timeout, lost.",
                           K_COUNTER,
                           2,
                           {"target", "kind"}},
    [F_APPROVALS_PENDING] = {"bulwark_approvals_pending",
                             "Approval requests waiting for a decision.",
                             K_GAUGE,
                             1,
                             {"role"}},
    [F_MASKED] = {"bulwark_masked_values_total",
                  "Values masked in results, by masked column and by detector.",
                  K_COUNTER,
                  2,
                  {"column", "detector"}},
    [F_GATE_SECONDS] = {"bulwark_gate_seconds",
                        "Gateway time per decided statement: parse, policy, audit enqueue.",
                        K_HISTOGRAM,
                        0,
                        {NULL}},
    [F_UPSTREAM_FIRST_BYTE] = {"bulwark_upstream_first_byte_seconds",
                               "From a sync point going upstream to the first byte of its reply.",
                               K_HISTOGRAM,
                               1,
                               {"target"}},
    [F_UPSTREAM_READY] = {"bulwark_upstream_ready_seconds",
                          "From a sync point going upstream to its ReadyForQuery.",
                          K_HISTOGRAM,
                          1,
                          {"target"}},
    [F_CATALOG_READS] = {"bulwark_catalog_reads_total",
                         "Masking catalog reads on the gateway's own connection per target: "
                         "ok, unchanged (same as the snapshot held), error.",
                         K_COUNTER,
                         2,
                         {"target", "result"}},
};

typedef struct series {
    _Atomic uint32_t ready;
    uint32_t hash;
    uint16_t klen;
    char key[MX_KEY_MAX]; /* label values, each followed by '\0' */
    _Atomic uint64_t v[]; /* counter/gauge: v[0]; histogram: NB buckets, count, sum_ns */
} series_t;

typedef struct family {
    _Atomic(unsigned char *) slots; /* MX_MAX_SERIES * stride, allocated on first use */
    size_t count;                   /* slots claimed (owning loop only) */
} family_t;

struct metrics {
    family_t f[F_COUNT];
};

static size_t nvalues(int f)
{
    return families[f].kind == K_HISTOGRAM ? NB + 2 : 1;
}

static size_t stride(int f)
{
    size_t s = sizeof(series_t) + nvalues(f) * sizeof(uint64_t);
    return (s + 7) & ~(size_t)7;
}

static series_t *slot_at(unsigned char *slots, int f, size_t i)
{
    return (series_t *)(slots + i * stride(f));
}

metrics_t *metrics_new(void)
{
    return calloc(1, sizeof(metrics_t));
}

void metrics_free(metrics_t *m)
{
    if (!m)
        return;
    for (int f = 0; f < F_COUNT; f++)
        free(atomic_load(&m->f[f].slots));
    free(m);
}

uint64_t metrics_clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- writing (the owning loop) ---- */

static uint32_t fnv1a(const char *p, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)p[i]) * 16777619u;
    return h;
}

/* Label values joined with '\0' after each, each cut at MX_MAX_VALUE bytes. */
static size_t make_key(char *key, const char *const *vals, int n)
{
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        const char *v = vals[i] ? vals[i] : "";
        size_t l = strnlen(v, MX_MAX_VALUE);
        memcpy(key + len, v, l);
        len += l;
        key[len++] = '\0';
    }
    return len;
}

static series_t *find_or_add(family_t *fam, int f, const char *key, size_t klen, bool add)
{
    unsigned char *slots = atomic_load_explicit(&fam->slots, memory_order_acquire);
    if (!slots) {
        if (!(slots = calloc(MX_MAX_SERIES, stride(f))))
            return NULL;
        atomic_store_explicit(&fam->slots, slots, memory_order_release);
    }
    uint32_t h = fnv1a(key, klen);
    for (size_t i = 0, at = h % MX_MAX_SERIES; i < MX_MAX_SERIES;
         i++, at = (at + 1) % MX_MAX_SERIES) {
        series_t *s = slot_at(slots, f, at);
        if (!atomic_load_explicit(&s->ready, memory_order_acquire)) {
            if (!add)
                return NULL;
            s->hash = h;
            s->klen = (uint16_t)klen;
            memcpy(s->key, key, klen);
            atomic_store_explicit(&s->ready, 1, memory_order_release);
            fam->count++;
            return s;
        }
        if (s->hash == h && s->klen == klen && !memcmp(s->key, key, klen))
            return s;
    }
    return NULL;
}

static series_t *series(metrics_t *m, int f, const char *const *vals)
{
    family_t *fam = &m->f[f];
    char key[MX_KEY_MAX];
    int n = families[f].nlabels;
    size_t klen = make_key(key, vals, n);
    series_t *s = find_or_add(fam, f, key, klen, fam->count < MX_MAX_SERIES * 3 / 4);
    if (s || fam->count < MX_MAX_SERIES * 3 / 4)
        return s;
    const char *other[3] = {MX_OVERFLOW, MX_OVERFLOW, MX_OVERFLOW};
    klen = make_key(key, other, n);
    return find_or_add(fam, f, key, klen, true);
}

static void add(metrics_t *m, int f, const char *const *vals, uint64_t delta)
{
    series_t *s = m ? series(m, f, vals) : NULL;
    if (s)
        atomic_fetch_add_explicit(&s->v[0], delta, memory_order_relaxed);
}

static void observe(metrics_t *m, int f, const char *const *vals, uint64_t ns)
{
    series_t *s = m ? series(m, f, vals) : NULL;
    if (!s)
        return;
    size_t b = 0;
    while (b < NB && (double)ns > lat_bounds[b] * 1e9)
        b++;
    if (b < NB)
        atomic_fetch_add_explicit(&s->v[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->v[NB], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->v[NB + 1], ns, memory_order_relaxed);
}

void metrics_connection(metrics_t *m)
{
    add(m, F_CONNECTIONS, NULL, 1);
}

void metrics_session_start(metrics_t *m, metrics_session_t *ms, const char *role,
                           const char *target)
{
    const char *v[] = {role, target};
    add(m, F_SESSIONS, v, 1);
    add(m, F_SESSIONS_ACTIVE, v, 1);
    ms->active = true;
}

void metrics_session_end(metrics_t *m, metrics_session_t *ms, const char *role, const char *target)
{
    if (!ms->active)
        return;
    ms->active = false;
    const char *v[] = {role, target};
    add(m, F_SESSIONS_ACTIVE, v, (uint64_t)-1);
}

void metrics_statement(metrics_t *m, const char *role, const char *decision, const char *rule,
                       uint64_t t0)
{
    if (!m)
        return;
    const char *v[] = {role, decision, rule ? rule : "_default"}; /* NULL: the role's default */
    add(m, F_STATEMENTS, v, 1);
    uint64_t now = metrics_clock_ns();
    observe(m, F_GATE_SECONDS, NULL, now > t0 ? now - t0 : 0);
}

void metrics_login_failed(metrics_t *m, const char *reason)
{
    const char *v[] = {reason};
    add(m, F_LOGIN_FAILURES, v, 1);
}

void metrics_upstream_error(metrics_t *m, const char *target, const char *kind)
{
    const char *v[] = {target, kind};
    add(m, F_UPSTREAM_ERRORS, v, 1);
}

void metrics_catalog_read(metrics_t *m, const char *target, const char *result)
{
    const char *v[] = {target, result};
    add(m, F_CATALOG_READS, v, 1);
}

void metrics_approvals_pending(metrics_t *m, const char *role, int delta)
{
    const char *v[] = {role};
    add(m, F_APPROVALS_PENDING, v, (uint64_t)(int64_t)delta);
}

void metrics_masked(metrics_t *m, const char *column, const char *detector, uint64_t n)
{
    const char *v[] = {column, detector};
    if (n)
        add(m, F_MASKED, v, n);
}

void metrics_upstream_sent(metrics_session_t *ms, char type)
{
    if (type != 'Q' && type != 'S' && type != 'F')
        return;
    if (ms->outstanding++ == 0) {
        ms->sent_ns = metrics_clock_ns();
        ms->first_seen = false;
    }
}

void metrics_upstream_bytes(metrics_t *m, metrics_session_t *ms, const char *target)
{
    if (!ms->outstanding || ms->first_seen)
        return;
    ms->first_seen = true;
    const char *v[] = {target};
    uint64_t now = metrics_clock_ns();
    observe(m, F_UPSTREAM_FIRST_BYTE, v, now > ms->sent_ns ? now - ms->sent_ns : 0);
}

/* The server answers sync points in order; the next one's clock starts when
 * this one is answered (it waited behind it until then). */
void metrics_upstream_ready(metrics_t *m, metrics_session_t *ms, const char *target)
{
    if (!ms->outstanding)
        return;
    const char *v[] = {target};
    uint64_t now = metrics_clock_ns();
    if (!ms->first_seen)
        observe(m, F_UPSTREAM_FIRST_BYTE, v, now > ms->sent_ns ? now - ms->sent_ns : 0);
    observe(m, F_UPSTREAM_READY, v, now > ms->sent_ns ? now - ms->sent_ns : 0);
    if (--ms->outstanding) {
        ms->sent_ns = now;
        ms->first_seen = false;
    }
}

/* ---- reading: the exposition ---- */

static void put(buf_t *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(buf_t *out, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        out->failed = true;
        return;
    }
    buf_append(out, tmp, (size_t)n);
}

void metrics_escape_label(buf_t *out, const char *v)
{
    for (const char *p = v ? v : ""; *p; p++) {
        const char *run = p;
        while (*p && *p != '\\' && *p != '"' && *p != '\n')
            p++;
        buf_append(out, run, (size_t)(p - run));
        if (!*p)
            break;
        buf_append(out, *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : "\\n", 2);
    }
}

static void header(buf_t *out, const char *name, const char *help, const char *type)
{
    put(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{labels[,le="..."]} — key holds the label values of `def`. */
static void sample_start(buf_t *out, const char *name, const char *suffix, const family_def_t *def,
                         const char *key, const char *le)
{
    put(out, "%s%s", name, suffix);
    if (def->nlabels == 0 && !le)
        return;
    buf_append(out, "{", 1);
    const char *v = key;
    for (int i = 0; i < def->nlabels; i++) {
        put(out, "%s%s=\"", i ? "," : "", def->labels[i]);
        metrics_escape_label(out, v);
        buf_append(out, "\"", 1);
        v += strlen(v) + 1;
    }
    if (le)
        put(out, "%sle=\"%s\"", def->nlabels ? "," : "", le);
    buf_append(out, "}", 1);
}

typedef struct agg {
    const char *key;
    size_t klen;
    uint64_t v[NB + 2];
} agg_t;

static int agg_cmp(const void *a, const void *b)
{
    const agg_t *x = a, *y = b;
    size_t n = x->klen < y->klen ? x->klen : y->klen;
    int c = memcmp(x->key, y->key, n);
    return c ? c : (x->klen > y->klen) - (x->klen < y->klen);
}

/* Sum one family over the loops; sorted by label values. NULL + 0 if empty. */
static agg_t *collect(metrics_t *const *loops, size_t n, int f, size_t *count)
{
    *count = 0;
    size_t cap = 0;
    for (size_t l = 0; l < n; l++)
        if (loops[l] && atomic_load_explicit(&loops[l]->f[f].slots, memory_order_acquire))
            cap += MX_MAX_SERIES;
    if (!cap)
        return NULL;
    agg_t *a = calloc(cap, sizeof(agg_t));
    if (!a)
        return NULL;
    size_t nv = nvalues(f);
    for (size_t l = 0; l < n; l++) {
        unsigned char *slots =
            loops[l] ? atomic_load_explicit(&loops[l]->f[f].slots, memory_order_acquire) : NULL;
        for (size_t i = 0; slots && i < MX_MAX_SERIES; i++) {
            series_t *s = slot_at(slots, f, i);
            if (!atomic_load_explicit(&s->ready, memory_order_acquire))
                continue;
            size_t j = n > 1 ? 0 : *count; /* one loop: keys are unique */
            while (j < *count && !(a[j].klen == s->klen && !memcmp(a[j].key, s->key, s->klen)))
                j++;
            if (j == *count) {
                a[j].key = s->key;
                a[j].klen = s->klen;
                (*count)++;
            }
            for (size_t k = 0; k < nv; k++)
                a[j].v[k] += atomic_load_explicit(&s->v[k], memory_order_relaxed);
        }
    }
    qsort(a, *count, sizeof(agg_t), agg_cmp);
    return a;
}

static void render_family(buf_t *out, metrics_t *const *loops, size_t n, int f)
{
    const family_def_t *d = &families[f];
    header(out, d->name, d->help,
           d->kind == K_COUNTER ? "counter"
           : d->kind == K_GAUGE ? "gauge"
                                : "histogram");
    size_t count;
    agg_t *a = collect(loops, n, f, &count);
    if (!count && d->nlabels == 0) {
        /* A label-less family always has its one sample. */
        if (!(a = calloc(1, sizeof(agg_t)))) {
            out->failed = true;
            return;
        }
        a->key = "";
        count = 1;
    }
    for (size_t i = 0; i < count; i++) {
        if (d->kind != K_HISTOGRAM) {
            sample_start(out, d->name, "", d, a[i].key, NULL);
            if (d->kind == K_GAUGE)
                put(out, " %lld\n", (long long)(int64_t)a[i].v[0]);
            else
                put(out, " %llu\n", (unsigned long long)a[i].v[0]);
            continue;
        }
        uint64_t cum = 0;
        for (size_t b = 0; b < NB; b++) {
            char le[32];
            snprintf(le, sizeof(le), "%g", lat_bounds[b]);
            cum += a[i].v[b];
            sample_start(out, d->name, "_bucket", d, a[i].key, le);
            put(out, " %llu\n", (unsigned long long)cum);
        }
        sample_start(out, d->name, "_bucket", d, a[i].key, "+Inf");
        put(out, " %llu\n", (unsigned long long)a[i].v[NB]);
        sample_start(out, d->name, "_sum", d, a[i].key, NULL);
        put(out, " %.9f\n", (double)a[i].v[NB + 1] / 1e9);
        sample_start(out, d->name, "_count", d, a[i].key, NULL);
        put(out, " %llu\n", (unsigned long long)a[i].v[NB]);
    }
    free(a);
}

static void scalar(buf_t *out, const char *name, const char *type, const char *help, double v)
{
    header(out, name, help, type);
    put(out, "%s %.17g\n", name, v);
}

/* A log2 histogram of the audit writer (bucket i counts values < 2^(i+1),
 * the last one everything above) as a Prometheus histogram. */
static void log2_hist(buf_t *out, const char *name, const char *help, const uint64_t *h, size_t nb,
                      double unit, bool integer_bounds, double sum)
{
    header(out, name, help, "histogram");
    uint64_t cum = 0;
    for (size_t i = 0; i + 1 < nb; i++) {
        cum += h[i];
        double le =
            integer_bounds ? (double)((1ull << (i + 1)) - 1) : (double)(1ull << (i + 1)) * unit;
        put(out, "%s_bucket{le=\"%.9g\"} %llu\n", name, le, (unsigned long long)cum);
    }
    cum += h[nb - 1];
    put(out, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    put(out, "%s_sum %.9f\n", name, sum);
    put(out, "%s_count %llu\n", name, (unsigned long long)cum);
}

static void render_audit(buf_t *out, const metrics_snapshot_t *x)
{
    const audit_stats_t *a = &x->audit;
    scalar(out, "bulwark_audit_open", "gauge", "1 when the audit store is open.", x->have_audit);
    scalar(out, "bulwark_audit_failing", "gauge",
           "1 while the audit store cannot write (appends are refused).", x->audit_failing);
    if (!x->have_audit)
        return;
    scalar(out, "bulwark_audit_records_appended_total", "counter",
           "Records accepted by the audit writer.", (double)a->appended);
    scalar(out, "bulwark_audit_records_refused_total", "counter",
           "Records the audit writer refused (store failing or queue full).", (double)a->refused);
    scalar(out, "bulwark_audit_records_written_total", "counter",
           "Records committed to the audit store.", (double)a->written);
    scalar(out, "bulwark_audit_bytes_written_total", "counter", "Bytes of records committed.",
           (double)a->bytes_written);
    scalar(out, "bulwark_audit_commits_total", "counter", "Audit write transactions committed.",
           (double)a->commits);
    scalar(out, "bulwark_audit_checkpoints_total", "counter", "Chain checkpoints written.",
           (double)a->checkpoints);
    scalar(out, "bulwark_audit_write_failures_total", "counter",
           "Failed audit writes (each retried).", (double)a->failures);
    log2_hist(out, "bulwark_audit_group_commit_size", "Records per audit commit (group commit).",
              a->batch_hist, 16, 1, true, (double)a->written);
    log2_hist(out, "bulwark_audit_flush_seconds",
              "Time of each audit commit with its fsync, and of each batched-mode sync.",
              a->commit_us_hist, 24, 1e-6, false, (double)a->commit_us_total / 1e6);
}

void metrics_render(buf_t *out, metrics_t *const *loops, size_t n, const metrics_snapshot_t *x)
{
    for (int f = 0; f < F_COUNT; f++)
        render_family(out, loops, n, f);
    if (!x)
        return;
    scalar(out, "bulwark_connections", "gauge", "Client connections open now.",
           (double)x->connections);
    scalar(out, "bulwark_max_client_conn", "gauge", "The max_client_conn setting.",
           (double)x->max_connections);
    scalar(out, "bulwark_start_time_seconds", "gauge", "Start time of the process, Unix seconds.",
           x->start_time);
    if (x->have_cache) {
        scalar(out, "bulwark_parse_cache_hits_total", "counter",
               "Statements whose parse and intent came from the cache.", (double)x->cache.hits);
        scalar(out, "bulwark_parse_cache_misses_total", "counter", "Statements parsed anew.",
               (double)x->cache.misses);
        scalar(out, "bulwark_parse_cache_evictions_total", "counter",
               "Parse cache entries evicted.", (double)x->cache.evictions);
        scalar(out, "bulwark_parse_cache_entries", "gauge", "Parse cache entries held.",
               (double)x->cache.entries);
        scalar(out, "bulwark_parse_cache_bytes", "gauge", "Bytes held by the parse cache.",
               (double)x->cache.bytes);
    }
    render_audit(out, x);
    header(out, "bulwark_target_up", "1 when the last connection probe of the target succeeded.",
           "gauge");
    for (size_t i = 0; i < x->n_targets; i++) {
        put(out, "bulwark_target_up{target=\"");
        metrics_escape_label(out, x->targets[i].name);
        put(out, "\"} %d\n", x->targets[i].up ? 1 : 0);
    }
}
