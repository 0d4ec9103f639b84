/*
 * Webhook notification of new approval requests (approvals.webhook_url):
 * a JSON POST with a Slack-compatible `text` field plus the request's
 * structured fields, sent by its own thread with retries. Nothing waits for
 * it: a slow, failing or absent receiver never delays or fails a hold; what
 * cannot be delivered after the retries is logged and dropped.
 */
#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "approval/approval.h"
#include "util/log.h"

#define HOOK_QUEUE_MAX 256
#define HOOK_ATTEMPTS 4
#define HOOK_TIMEOUT_MS 5000L
#define HOOK_BACKOFF_MS 500

typedef struct post {
    struct post *next;
    char *url, *body;
    uint64_t id;
} post_t;

struct appr_webhook {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    post_t *head, *tail;
    size_t n;
    _Atomic bool stopping; /* also read by the transfer's progress callback */
};

static size_t discard(char *p, size_t size, size_t n, void *u)
{
    return size * n;
}

/* Shutting down: abort a transfer in progress. */
static int on_progress(void *u, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    const appr_webhook_t *w = u;
    return atomic_load(&w->stopping) ? 1 : 0;
}

/* One attempt; true on a 2xx answer. */
static bool send_once(appr_webhook_t *w, const post_t *p, char *why, size_t whysz)
{
    CURL *c = curl_easy_init();
    if (!c) {
        snprintf(why, whysz, "curl_easy_init failed");
        return false;
    }
    char err[CURL_ERROR_SIZE] = "";
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, p->url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, HOOK_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, HOOK_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, p->body);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "bulwark-approvals");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, err);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, w);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (rc != CURLE_OK) {
        snprintf(why, whysz, "%s", err[0] ? err : curl_easy_strerror(rc));
        return false;
    }
    if (status < 200 || status > 299) {
        snprintf(why, whysz, "HTTP status %ld", status);
        return false;
    }
    return true;
}

/* Sleep ms unless stopping; false when stopping. Called with mu held. */
static bool backoff(appr_webhook_t *w, long ms)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L)
        t.tv_sec++, t.tv_nsec -= 1000000000L;
    while (!w->stopping && pthread_cond_timedwait(&w->cv, &w->mu, &t) == 0)
        ;
    return !w->stopping;
}

static void deliver(appr_webhook_t *w, post_t *p)
{
    char why[CURL_ERROR_SIZE + 32] = "";
    for (int attempt = 1; attempt <= HOOK_ATTEMPTS; attempt++) {
        if (send_once(w, p, why, sizeof(why))) {
            log_event(LOG_INFO, "approval_webhook_sent", "id=%llu attempt=%d",
                      (unsigned long long)p->id, attempt);
            return;
        }
        pthread_mutex_lock(&w->mu);
        bool go_on = attempt < HOOK_ATTEMPTS && backoff(w, HOOK_BACKOFF_MS << (attempt - 1));
        pthread_mutex_unlock(&w->mu);
        if (!go_on)
            break;
    }
    log_event(LOG_WARN, "approval_webhook_failed", "id=%llu error=\"%s\"",
              (unsigned long long)p->id, why);
}

static void post_free(post_t *p)
{
    free(p->url);
    free(p->body);
    free(p);
}

static void *hook_main(void *arg)
{
    appr_webhook_t *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->head && !w->stopping)
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->stopping)
            break;
        post_t *p = w->head;
        w->head = p->next;
        if (!w->head)
            w->tail = NULL;
        w->n--;
        pthread_mutex_unlock(&w->mu);
        deliver(w, p);
        post_free(p);
        pthread_mutex_lock(&w->mu);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

appr_webhook_t *appr_webhook_new(void)
{
    appr_webhook_t *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    if (pthread_create(&w->thread, NULL, hook_main, w) != 0) {
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
        free(w);
        return NULL;
    }
    return w;
}

void appr_webhook_free(appr_webhook_t *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    w->stopping = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    size_t dropped = 0;
    for (post_t *p = w->head, *n; p; p = n, dropped++) {
        n = p->next;
        post_free(p);
    }
    if (dropped)
        log_event(LOG_WARN, "approval_webhook_dropped", "posts=%zu reason=shutdown", dropped);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}

cJSON *appr_webhook_payload(const appr_req_t *r)
{
    cJSON *o = appr_req_json(r);
    if (!o)
        return NULL;
    char text[1200], sql[600];
    size_t n = strlen(r->sql ? r->sql : "");
    snprintf(sql, sizeof(sql), "%.*s%s", (int)(n > 500 ? 500 : n), r->sql ? r->sql : "",
             n > 500 ? "..." : "");
    snprintf(text, sizeof(text),
             "Bulwark approval request %llu: %s (role %s) wants to run on %s: %s (rule \"%s\", "
             "mode %s). Approve: bulwark approve %llu  Deny: bulwark deny %llu",
             (unsigned long long)r->id, r->sub ? r->sub : "?", r->role ? r->role : "?",
             r->target ? r->target : "?", sql, r->rule ? r->rule : "",
             r->reject ? "reject" : "hold", (unsigned long long)r->id, (unsigned long long)r->id);
    cJSON_AddStringToObject(o, "text", text);
    char cmd[64];
    snprintf(cmd, sizeof(cmd), "bulwark approve %llu", (unsigned long long)r->id);
    cJSON_AddStringToObject(o, "approve_command", cmd);
    return o;
}

int appr_webhook_post(appr_webhook_t *w, const char *url, uint64_t id, cJSON *payload)
{
    post_t *p = calloc(1, sizeof(*p));
    char *body = payload ? cJSON_PrintUnformatted(payload) : NULL;
    cJSON_Delete(payload);
    if (!p || !body || !(p->url = strdup(url))) {
        free(body);
        if (p)
            free(p);
        return -1;
    }
    p->body = body;
    p->id = id;
    pthread_mutex_lock(&w->mu);
    if (w->n >= HOOK_QUEUE_MAX || w->stopping) {
        pthread_mutex_unlock(&w->mu);
        post_free(p);
        return -1;
    }
    if (w->tail)
        w->tail->next = p;
    else
        w->head = p;
    w->tail = p;
    w->n++;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return 0;
}
