/*
 * The key store: JWKS sets of jwks_url issuers, fetched over HTTPS with libcurl
 * by one worker thread, never by the loop (DESIGN section 1: nothing on the
 * loop blocks).
 *
 * One entry per (jwks_url, jwks_ca_file). The loop thread registers entries
 * (ident_keystore_sync), reads the current set (retained under the mutex; sets
 * are immutable and refcounted, so a swap never disturbs a reader) and asks for
 * refetches; the worker fetches what is due, swaps the set in on success and
 * keeps the last good one on failure, then calls notify. Nothing here touches
 * a cfg_t after sync returns: the config's refcount is the loop's alone.
 *
 * Schedule of an entry:
 *   registered          fetch at once
 *   fetched             next fetch after `refresh`
 *   fetch failed        retry after refresh/10 (at least 1 s), keeping the last good set
 *   kid not in the set  refetch now, unless the last attempt ended less than refresh/10
 *                       ago (counted from the end, so that a login re-run after a slow
 *                       fetch gets its final answer instead of starting another one)
 */
#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "identity/internal.h"
#include "util/log.h"

#define FETCH_MAX_BYTES (1 << 20)
#define FETCH_CONNECT_TIMEOUT_MS 5000L
#define FETCH_TIMEOUT_MS 10000L
#define RETRY_MIN_MS 1000

typedef struct ks_entry {
    struct ks_entry *next;
    char *url, *ca_file;
    int64_t refresh_ms;
    ident_keyset_t *keys; /* last good set, or NULL */
    int64_t last_start_ms, last_done_ms, next_due_ms;
    bool started, requested, in_flight, dead;
    unsigned mark;
    char last_error[200];
} ks_entry_t;

struct ident_keystore {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* on CLOCK_MONOTONIC */
    pthread_t thread;
    bool stop;
    atomic_bool abort; /* read by curl's progress callback */
    ks_entry_t *entries;
    unsigned mark;
    void (*notify)(void *);
    void *arg;
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool same(const char *a, const char *b)
{
    return a == b || (a && b && !strcmp(a, b));
}

static ks_entry_t *find(ident_keystore_t *ks, const char *url, const char *ca)
{
    for (ks_entry_t *e = ks->entries; e; e = e->next)
        if (!e->dead && same(e->url, url) && same(e->ca_file, ca))
            return e;
    return NULL;
}

static void entry_free(ks_entry_t *e)
{
    ident_keyset_release(e->keys);
    free(e->url);
    free(e->ca_file);
    free(e);
}

/* Under the mutex: unlink and free dead entries the worker is not using. */
static void reap(ident_keystore_t *ks)
{
    for (ks_entry_t **pe = &ks->entries; *pe;) {
        ks_entry_t *e = *pe;
        if (e->dead && !e->in_flight) {
            *pe = e->next;
            entry_free(e);
        } else {
            pe = &e->next;
        }
    }
}

/* ---- fetching (worker thread, mutex not held) ---- */

typedef struct body {
    char *data;
    size_t len;
    bool too_big;
} body_t;

static size_t on_data(char *p, size_t size, size_t n, void *u)
{
    body_t *b = u;
    size_t add = size * n;
    if (b->len + add > FETCH_MAX_BYTES) {
        b->too_big = true;
        return 0;
    }
    char *d = realloc(b->data, b->len + add + 1);
    if (!d)
        return 0;
    memcpy(d + b->len, p, add);
    b->data = d;
    b->len += add;
    d[b->len] = 0;
    return add;
}

static int on_progress(void *u, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    (void)dt;
    (void)dn;
    (void)ut;
    (void)un;
    return atomic_load(&((ident_keystore_t *)u)->abort) ? 1 : 0;
}

static bool http_get(ident_keystore_t *ks, const char *url, const char *ca, body_t *b, char *why,
                     size_t whysz)
{
    char err[CURL_ERROR_SIZE] = "";
    long status = 0;
    CURL *c = curl_easy_init();
    if (!c) {
        snprintf(why, whysz, "curl_easy_init failed");
        return false;
    }
    /* config allows http:// only for loopback hosts; no redirects, so a 30x
     * cannot lead elsewhere or downgrade */
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, strncmp(url, "http://", 7) ? "https" : "http");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, FETCH_CONNECT_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, FETCH_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    if (ca)
        curl_easy_setopt(c, CURLOPT_CAINFO, ca);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "bulwark-jwks");
    curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)FETCH_MAX_BYTES);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, ks);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, err);
    CURLcode rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    if (b->too_big || rc == CURLE_FILESIZE_EXCEEDED) {
        snprintf(why, whysz, "response larger than %d bytes", FETCH_MAX_BYTES);
        return false;
    }
    if (rc != CURLE_OK) {
        snprintf(why, whysz, "%.160s", *err ? err : curl_easy_strerror(rc));
        return false;
    }
    if (status != 200) {
        snprintf(why, whysz, "HTTP status %ld", status);
        return false;
    }
    return true;
}

static ident_keyset_t *fetch(ident_keystore_t *ks, const char *url, const char *ca, char *why,
                             size_t whysz)
{
    body_t b = {0};
    ident_keyset_t *set = NULL;
    char jwhy[160];
    if (http_get(ks, url, ca, &b, why, whysz)) {
        cJSON *j = cfg_json_parse_strict(b.data ? b.data : "", b.len, jwhy, sizeof(jwhy));
        if (!j)
            snprintf(why, whysz, "response is not JSON: %s", jwhy);
        else if (!(set = ident_jwks_parse(j, jwhy, sizeof(jwhy))))
            snprintf(why, whysz, "response is not a usable JWKS: %s", jwhy);
        cJSON_Delete(j);
    }
    /* an empty set would lock every client out; keep the last good one */
    if (set && ident_keyset_count(set) == 0) {
        ident_keyset_release(set);
        set = NULL;
        snprintf(why, whysz, "the JWKS holds no signature keys");
    }
    free(b.data);
    return set;
}

/* ---- the worker ---- */

static ks_entry_t *next_due(ident_keystore_t *ks, int64_t now, int64_t *wake)
{
    *wake = INT64_MAX;
    for (ks_entry_t *e = ks->entries; e; e = e->next) {
        if (e->dead || e->in_flight)
            continue;
        if (e->requested || now >= e->next_due_ms)
            return e;
        if (e->next_due_ms < *wake)
            *wake = e->next_due_ms;
    }
    return NULL;
}

static void wait_until(ident_keystore_t *ks, int64_t wake)
{
    if (wake == INT64_MAX) {
        pthread_cond_wait(&ks->cv, &ks->mu);
        return;
    }
    struct timespec ts = {.tv_sec = wake / 1000, .tv_nsec = (wake % 1000) * 1000000};
    pthread_cond_timedwait(&ks->cv, &ks->mu, &ts);
}

static void fetch_one(ident_keystore_t *ks, ks_entry_t *e)
{
    char why[200] = "", q1[300], q2[260];
    e->in_flight = true;
    e->requested = false;
    e->started = true;
    e->last_start_ms = mono_ms();
    char *url = strdup(e->url), *ca = e->ca_file ? strdup(e->ca_file) : NULL;
    pthread_mutex_unlock(&ks->mu);

    ident_keyset_t *set = url && (ca || !e->ca_file) ? fetch(ks, url, ca, why, sizeof(why)) : NULL;
    if (!set && !*why)
        snprintf(why, sizeof(why), "out of memory");

    pthread_mutex_lock(&ks->mu);
    int64_t now = mono_ms();
    size_t kept = ident_keyset_count(e->keys);
    e->in_flight = false;
    e->last_done_ms = now;
    if (set) {
        ident_keyset_release(e->keys);
        e->keys = set;
        e->last_error[0] = 0;
        e->next_due_ms = now + e->refresh_ms;
    } else {
        snprintf(e->last_error, sizeof(e->last_error), "%s", why);
        int64_t retry = e->refresh_ms / 10;
        e->next_due_ms = now + (retry < RETRY_MIN_MS ? RETRY_MIN_MS : retry);
    }
    size_t n = ident_keyset_count(set);
    pthread_mutex_unlock(&ks->mu);

    bool stopping = atomic_load(&ks->abort);
    if (set)
        log_event(LOG_INFO, "jwks_fetched", "url=%s keys=%zu", log_q(q1, sizeof(q1), url), n);
    else if (!stopping)
        log_event(LOG_WARN, "jwks_fetch_failed", "url=%s error=%s keeping_keys=%zu",
                  log_q(q1, sizeof(q1), url), log_q(q2, sizeof(q2), why), kept);
    free(url);
    free(ca);
    if (ks->notify && !stopping)
        ks->notify(ks->arg);
    pthread_mutex_lock(&ks->mu);
}

static void *worker(void *arg)
{
    ident_keystore_t *ks = arg;
    pthread_mutex_lock(&ks->mu);
    while (!ks->stop) {
        reap(ks);
        int64_t wake;
        ks_entry_t *e = next_due(ks, mono_ms(), &wake);
        if (e)
            fetch_one(ks, e);
        else
            wait_until(ks, wake);
    }
    pthread_mutex_unlock(&ks->mu);
    return NULL;
}

/* ---- the loop thread's side ---- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static bool curl_ok;

static void curl_init(void)
{
    curl_ok = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
}

ident_keystore_t *ident_keystore_new(void (*notify)(void *arg), void *arg)
{
    pthread_once(&curl_once, curl_init);
    if (!curl_ok)
        return NULL;
    ident_keystore_t *ks = calloc(1, sizeof(*ks));
    if (!ks)
        return NULL;
    ks->notify = notify;
    ks->arg = arg;
    atomic_init(&ks->abort, false);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    bool ok = pthread_mutex_init(&ks->mu, NULL) == 0;
    if (ok && pthread_cond_init(&ks->cv, &ca) != 0) {
        pthread_mutex_destroy(&ks->mu);
        ok = false;
    }
    pthread_condattr_destroy(&ca);
    if (ok && pthread_create(&ks->thread, NULL, worker, ks) != 0) {
        pthread_cond_destroy(&ks->cv);
        pthread_mutex_destroy(&ks->mu);
        ok = false;
    }
    if (!ok) {
        free(ks);
        return NULL;
    }
    return ks;
}

static void register_issuer(ident_keystore_t *ks, const cfg_issuer_t *is)
{
    ks_entry_t *e = find(ks, is->jwks_url, is->jwks_ca_file);
    if (e && e->mark == ks->mark) {
        /* two issuers, one URL: the shorter refresh wins */
        if (is->refresh_ms < e->refresh_ms)
            e->refresh_ms = is->refresh_ms;
        return;
    }
    if (e) {
        e->mark = ks->mark;
        if (e->refresh_ms != is->refresh_ms && e->started && !e->last_error[0])
            e->next_due_ms = e->last_start_ms + is->refresh_ms;
        e->refresh_ms = is->refresh_ms;
        return;
    }
    e = calloc(1, sizeof(*e));
    if (!e || !(e->url = strdup(is->jwks_url)) ||
        (is->jwks_ca_file && !(e->ca_file = strdup(is->jwks_ca_file)))) {
        if (e)
            entry_free(e);
        log_event(LOG_ERROR, "jwks_register_failed", "reason=\"out of memory\"");
        return;
    }
    e->refresh_ms = is->refresh_ms > 0 ? is->refresh_ms : 600000;
    e->mark = ks->mark;
    e->requested = true;
    snprintf(e->last_error, sizeof(e->last_error), "not fetched yet");
    e->next = ks->entries;
    ks->entries = e;
}

void ident_keystore_sync(ident_keystore_t *ks, const cfg_t *cfg)
{
    if (!ks)
        return;
    pthread_mutex_lock(&ks->mu);
    ks->mark++;
    for (size_t i = 0; cfg && i < cfg->n_issuers; i++)
        if (cfg->issuers[i].jwks_url)
            register_issuer(ks, &cfg->issuers[i]);
    for (ks_entry_t *e = ks->entries; e; e = e->next)
        if (e->mark != ks->mark)
            e->dead = true;
    reap(ks);
    pthread_cond_signal(&ks->cv);
    pthread_mutex_unlock(&ks->mu);
}

void ident_keystore_free(ident_keystore_t *ks)
{
    if (!ks)
        return;
    pthread_mutex_lock(&ks->mu);
    ks->stop = true;
    atomic_store(&ks->abort, true);
    pthread_cond_signal(&ks->cv);
    pthread_mutex_unlock(&ks->mu);
    pthread_join(ks->thread, NULL);
    while (ks->entries) {
        ks_entry_t *e = ks->entries;
        ks->entries = e->next;
        entry_free(e);
    }
    pthread_cond_destroy(&ks->cv);
    pthread_mutex_destroy(&ks->mu);
    free(ks);
}

ident_keyset_t *ident_keystore_keys(ident_keystore_t *ks, const cfg_issuer_t *is, char *why,
                                    size_t whysz)
{
    ident_keyset_t *set = NULL;
    pthread_mutex_lock(&ks->mu);
    ks_entry_t *e = find(ks, is->jwks_url, is->jwks_ca_file);
    if (!e)
        snprintf(why, whysz, "its jwks_url is not registered with the key store");
    else if (!(set = ident_keyset_retain(e->keys)))
        snprintf(why, whysz, "fetching its jwks_url: %s", e->last_error);
    pthread_mutex_unlock(&ks->mu);
    return set;
}

bool ident_keystore_refetch(ident_keystore_t *ks, const cfg_issuer_t *is, char *why, size_t whysz)
{
    bool pending = false;
    pthread_mutex_lock(&ks->mu);
    ks_entry_t *e = find(ks, is->jwks_url, is->jwks_ca_file);
    int64_t now = mono_ms(), gap = e ? e->refresh_ms / 10 : 0;
    if (!e) {
        snprintf(why, whysz, "its jwks_url is not registered with the key store");
    } else if (e->in_flight || e->requested) {
        pending = true;
    } else if (!e->started || now - e->last_done_ms >= gap) {
        e->requested = true;
        pthread_cond_signal(&ks->cv);
        pending = true;
    } else {
        snprintf(why, whysz,
                 "the set was fetched %.1fs ago and is refetched at most every %.1fs "
                 "(refresh/10)",
                 (double)(now - e->last_done_ms) / 1000.0, (double)gap / 1000.0);
    }
    pthread_mutex_unlock(&ks->mu);
    return pending;
}
