/*
 * Unit tests for the key store (jwks_url issuers): a tiny HTTP server on
 * 127.0.0.1 in a thread serves a JWKS the test changes; the store's worker
 * fetches it; logins go through ident_login() as the proxy will call it.
 * HTTPS with a private CA is covered end to end by test_identity.py.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "helpers.h"

#include "identity/ident.h"
#include "util/log.h"

#define NOW_WALL ((int64_t)time(NULL))

/* ---- a one-thread HTTP/1.0 server ---- */

typedef struct server {
    int fd, port;
    pthread_t thread;
    pthread_mutex_t mu;
    char *body;
    int status; /* 0: accept and never answer */
    atomic_int requests;
    atomic_bool stop;
} server_t;

static void serve_one(server_t *s, int c)
{
    char req[4096];
    size_t got = 0;
    while (got < sizeof(req) - 1) {
        ssize_t r = recv(c, req + got, sizeof(req) - 1 - got, 0);
        if (r <= 0)
            break;
        got += (size_t)r;
        req[got] = 0;
        if (strstr(req, "\r\n\r\n"))
            break;
    }
    atomic_fetch_add(&s->requests, 1);
    pthread_mutex_lock(&s->mu);
    int status = s->status;
    char *body = strdup(s->body);
    pthread_mutex_unlock(&s->mu);
    if (status == 0) {
        while (!atomic_load(&s->stop))
            usleep(10000);
    } else {
        char head[256];
        int n = snprintf(head, sizeof(head),
                         "HTTP/1.0 %d X\r\nContent-Type: application/json\r\nContent-Length: "
                         "%zu\r\nConnection: close\r\n\r\n",
                         status, strlen(body));
        (void)!send(c, head, (size_t)n, MSG_NOSIGNAL);
        (void)!send(c, body, strlen(body), MSG_NOSIGNAL);
    }
    free(body);
    close(c);
}

static void *server_main(void *arg)
{
    server_t *s = arg;
    while (!atomic_load(&s->stop)) {
        struct pollfd p = {.fd = s->fd, .events = POLLIN};
        if (poll(&p, 1, 20) <= 0)
            continue;
        int c = accept(s->fd, NULL, NULL);
        if (c >= 0)
            serve_one(s, c);
    }
    return NULL;
}

static server_t *server_start(const char *body)
{
    server_t *s = calloc(1, sizeof(*s));
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    assert_int_equal(bind(s->fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(s->fd, 16), 0);
    assert_int_equal(getsockname(s->fd, (struct sockaddr *)&a, &len), 0);
    s->port = ntohs(a.sin_port);
    s->body = strdup(body);
    s->status = 200;
    pthread_mutex_init(&s->mu, NULL);
    assert_int_equal(pthread_create(&s->thread, NULL, server_main, s), 0);
    return s;
}

static void server_set(server_t *s, int status, const char *body)
{
    pthread_mutex_lock(&s->mu);
    s->status = status;
    if (body) {
        free(s->body);
        s->body = strdup(body);
    }
    pthread_mutex_unlock(&s->mu);
}

static void server_stop(server_t *s)
{
    atomic_store(&s->stop, true);
    pthread_join(s->thread, NULL);
    close(s->fd);
    pthread_mutex_destroy(&s->mu);
    free(s->body);
    free(s);
}

/* ---- notify: what the proxy's ev_async will be ---- */

static pthread_mutex_t nmu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ncv = PTHREAD_COND_INITIALIZER;
static int notified;

static void on_notify(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&nmu);
    notified++;
    pthread_cond_broadcast(&ncv);
    pthread_mutex_unlock(&nmu);
}

static int notes(void)
{
    pthread_mutex_lock(&nmu);
    int n = notified;
    pthread_mutex_unlock(&nmu);
    return n;
}

/* Wait until more than `seen` notifications came; false after timeout_ms. */
static bool wait_notify(int seen, int timeout_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&nmu);
    while (notified <= seen)
        if (pthread_cond_timedwait(&ncv, &nmu, &ts) != 0)
            break;
    bool ok = notified > seen;
    pthread_mutex_unlock(&nmu);
    return ok;
}

/* ---- keys and tokens ---- */

static char *jwks_of(const char *const *kids)
{
    /* the fixture set holds rsa1, ec256, ec384, ed1; keep the named ones */
    char *text = test_slurp(test_fixture("keys/jwks.json"), NULL);
    cJSON *j = cJSON_Parse(text), *keys = cJSON_GetObjectItem(j, "keys");
    free(text);
    cJSON *out = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(out, "keys"), *k;
    for (const char *const *kid = kids; *kid; kid++) {
        cJSON_ArrayForEach(k, keys)
        {
            if (!strcmp(cJSON_GetObjectItem(k, "kid")->valuestring, *kid))
                cJSON_AddItemToArray(arr, cJSON_Duplicate(k, 1));
        }
    }
    char *s = cJSON_PrintUnformatted(out);
    cJSON_Delete(out);
    cJSON_Delete(j);
    return s;
}

static char *token(const char *keyfile, const char *kid, const char *alg)
{
    char rel[64], why[256];
    size_t len;
    snprintf(rel, sizeof(rel), "keys/%s.pem", keyfile);
    char *pem = test_slurp(test_fixture("%s", rel), &len);
    cJSON *claims = cJSON_CreateObject();
    cJSON_AddStringToObject(claims, "iss", "https://idp.url");
    cJSON_AddStringToObject(claims, "sub", "svc-1");
    cJSON_AddStringToObject(claims, "aud", "bulwark");
    cJSON_AddNumberToObject(claims, "iat", (double)(NOW_WALL - 10));
    cJSON_AddNumberToObject(claims, "exp", (double)(NOW_WALL + 600));
    char *tok = ident_sign_pem(pem, len, alg, kid, claims, why, sizeof(why));
    if (!tok)
        fail_msg("sign: %s", why);
    cJSON_Delete(claims);
    free(pem);
    return tok;
}

static char *algs[] = {"RS256", "ES256"};

typedef struct fixture {
    server_t *srv;
    char url[128];
    cfg_issuer_t issuer;
    cfg_t cfg;
    ident_keystore_t *ks;
} fixture_t;

static void fixture_init(fixture_t *f, const char *body, int64_t refresh_ms)
{
    memset(f, 0, sizeof(*f));
    f->srv = server_start(body);
    snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%d/jwks.json", f->srv->port);
    f->issuer = (cfg_issuer_t){.issuer = "https://idp.url",
                               .audience = "bulwark",
                               .jwks_url = f->url,
                               .algorithms = algs,
                               .n_algorithms = 2,
                               .refresh_ms = refresh_ms};
    f->cfg = (cfg_t){.issuers = &f->issuer,
                     .n_issuers = 1,
                     .leeway_ms = 30000,
                     .max_token_lifetime_ms = 3600000};
    f->ks = ident_keystore_new(on_notify, NULL);
    assert_non_null(f->ks);
}

static void fixture_done(fixture_t *f)
{
    ident_keystore_free(f->ks);
    server_stop(f->srv);
}

static ident_status_t login(fixture_t *f, const char *tok, char *reason, size_t rsz)
{
    ident_t id;
    ident_status_t st =
        ident_login(&f->cfg, f->ks, NULL, tok, strlen(tok), NOW_WALL, &id, reason, rsz);
    if (getenv("BULWARK_TEST_VERBOSE"))
        print_message("  login: %s (%s)\n", ident_status_name(st), reason);
    ident_free(&id);
    return st;
}

/* Log in; on KEY_PENDING wait for the store's notify and log in again, as the
 * proxy will. */
static ident_status_t login_waiting(fixture_t *f, const char *tok, char *reason, size_t rsz)
{
    for (int round = 0; round < 5; round++) {
        int seen = notes();
        ident_status_t st = login(f, tok, reason, rsz);
        if (st != IDENT_KEY_PENDING)
            return st;
        if (!wait_notify(seen, 15000))
            fail_msg("no notify within 15 s after KEY_PENDING");
    }
    fail_msg("still KEY_PENDING after 5 notifications");
    return IDENT_KEY_PENDING;
}

/* ---- tests ---- */

static void fetches_off_the_loop_and_waits_for_keys(void **state)
{
    (void)state;
    const char *const first[] = {"rsa1", NULL};
    char *body = jwks_of(first);
    fixture_t f;
    fixture_init(&f, body, 2000);
    char *rs = token("rsa1", "rsa1", "RS256"), reason[256];

    /* NULL store: a URL issuer refuses, it never blocks to fetch */
    ident_t id;
    assert_int_equal(
        ident_login(&f.cfg, NULL, NULL, rs, strlen(rs), NOW_WALL, &id, reason, sizeof(reason)),
        IDENT_UNKNOWN_KEY);
    assert_non_null(strstr(reason, "no key store"));

    /* not registered yet: nothing to wait for */
    assert_int_equal(login(&f, rs, reason, sizeof(reason)), IDENT_UNKNOWN_KEY);
    assert_non_null(strstr(reason, "not registered"));

    int seen = notes();
    ident_keystore_sync(f.ks, &f.cfg);
    /* the first fetch is queued at once: a login waits for it */
    ident_status_t st = login(&f, rs, reason, sizeof(reason));
    assert_true(st == IDENT_KEY_PENDING || st == IDENT_OK);
    assert_true(wait_notify(seen, 15000));
    assert_int_equal(login(&f, rs, reason, sizeof(reason)), IDENT_OK);
    assert_int_equal(atomic_load(&f.srv->requests), 1);

    /* a config reload with the same URL keeps the set: no refetch, no wait */
    ident_keystore_sync(f.ks, &f.cfg);
    assert_int_equal(login(&f, rs, reason, sizeof(reason)), IDENT_OK);

    /* an unknown kid right after a fetch: refused at once (rate limit) */
    char *es = token("ec256", "ec256", "ES256");
    assert_int_equal(login(&f, es, reason, sizeof(reason)), IDENT_UNKNOWN_KEY);
    assert_non_null(strstr(reason, "refetched at most every"));
    assert_int_equal(atomic_load(&f.srv->requests), 1);

    /* refresh/10 later, the key has appeared: one refetch, then the login passes */
    const char *const second[] = {"rsa1", "ec256", NULL};
    char *body2 = jwks_of(second);
    server_set(f.srv, 200, body2);
    usleep(250 * 1000);
    assert_int_equal(login_waiting(&f, es, reason, sizeof(reason)), IDENT_OK);
    assert_int_equal(atomic_load(&f.srv->requests), 2);

    /* a forged kid cannot make the store fetch more than once per refresh/10 */
    char *bogus = token("rsa2", "nope", "RS256");
    for (int i = 0; i < 20; i++)
        (void)login(&f, bogus, reason, sizeof(reason));
    usleep(100 * 1000);
    assert_true(atomic_load(&f.srv->requests) <= 3);
    assert_int_equal(login_waiting(&f, bogus, reason, sizeof(reason)), IDENT_UNKNOWN_KEY);

    /* the server fails: the last good keys stay */
    server_set(f.srv, 500, NULL);
    usleep(250 * 1000);
    assert_int_equal(login_waiting(&f, bogus, reason, sizeof(reason)), IDENT_UNKNOWN_KEY);
    assert_int_equal(login(&f, rs, reason, sizeof(reason)), IDENT_OK);
    assert_int_equal(login(&f, es, reason, sizeof(reason)), IDENT_OK);
    /* garbage and an empty set do not replace them either */
    server_set(f.srv, 200, "{\"keys\":[]}");
    usleep(250 * 1000);
    assert_int_equal(login_waiting(&f, bogus, reason, sizeof(reason)), IDENT_UNKNOWN_KEY);
    server_set(f.srv, 200, "{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}");
    usleep(250 * 1000);
    assert_int_equal(login_waiting(&f, bogus, reason, sizeof(reason)), IDENT_UNKNOWN_KEY);
    assert_int_equal(login(&f, es, reason, sizeof(reason)), IDENT_OK);

    /* a reload without the issuer's URL forgets the set */
    cfg_t empty = {.n_issuers = 0};
    ident_keystore_sync(f.ks, &empty);
    assert_int_equal(login(&f, rs, reason, sizeof(reason)), IDENT_UNKNOWN_KEY);

    free(bogus);
    free(es);
    free(rs);
    free(body2);
    free(body);
    fixture_done(&f);
}

static void refresh_drops_removed_keys(void **state)
{
    (void)state;
    const char *const both[] = {"rsa1", "ec256", NULL}, *const only_ec[] = {"ec256", NULL};
    char *body = jwks_of(both), *body2 = jwks_of(only_ec);
    fixture_t f;
    fixture_init(&f, body, 600);
    char *rs = token("rsa1", "rsa1", "RS256"), reason[256];
    ident_keystore_sync(f.ks, &f.cfg);
    assert_int_equal(login_waiting(&f, rs, reason, sizeof(reason)), IDENT_OK);
    /* the IdP retires rsa1; after the next periodic refresh it stops working */
    server_set(f.srv, 200, body2);
    int seen = notes();
    assert_true(wait_notify(seen, 5000));
    assert_int_equal(login_waiting(&f, rs, reason, sizeof(reason)), IDENT_UNKNOWN_KEY);
    free(rs);
    free(body);
    free(body2);
    fixture_done(&f);
}

static void free_aborts_a_hanging_fetch(void **state)
{
    (void)state;
    fixture_t f;
    fixture_init(&f, "{}", 600000);
    server_set(f.srv, 0, NULL); /* accept, never answer */
    ident_keystore_sync(f.ks, &f.cfg);
    while (atomic_load(&f.srv->requests) == 0)
        usleep(5000);
    char *rs = token("rsa1", "rsa1", "RS256"), reason[256];
    assert_int_equal(login(&f, rs, reason, sizeof(reason)), IDENT_KEY_PENDING);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    ident_keystore_free(f.ks);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double took = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    print_message("keystore_free with a fetch in flight took %.2fs\n", took);
    assert_true(took < 3.0);
    server_stop(f.srv);
    free(rs);
}

int main(void)
{
    if (!getenv("BULWARK_TEST_VERBOSE"))
        log_set_level(LOG_ERROR); /* the worker logs every fetch */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fetches_off_the_loop_and_waits_for_keys),
        cmocka_unit_test(refresh_drops_removed_keys),
        cmocka_unit_test(free_aborts_a_hanging_fetch),
    };
    return cmocka_run_group_tests_name("ident_keystore", tests, NULL, NULL);
}
