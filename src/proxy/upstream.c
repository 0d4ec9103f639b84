/*
 * Upstream login: resolve (off the loop), connect without blocking, TLS as the
 * target's sslmode says, the startup packet, then trust / cleartext / MD5 /
 * SCRAM-SHA-256 with the role's stored credential. ParameterStatus messages
 * are relayed to the client as they come (psycopg2 needs client_encoding,
 * pgjdbc server_version: DESIGN.md 2.2); BackendKeyData is replaced by the
 * gateway's own, and the first ReadyForQuery hands over to the relay.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pgwire/pgwire.h"
#include "proxy/internal.h"
#include "util/log.h"

#define DEAD(s) ((s)->state == ST_DEAD)

static void fail_upstream(session_t *s, const char *what)
{
    metrics_upstream_error(s->srv->metrics, s->target_name, "connect");
    char q[300];
    log_event(LOG_WARN, "upstream_login_failed", "session=%s target=%s reason=%s", s->id,
              s->target_name, log_q(q, sizeof(q), what));
    session_fail(s, "FATAL", "08006", "bulwark: could not connect to target \"%s\": %s",
                 s->target_name, what);
}

static const cfg_upstream_t *credential(session_t *s)
{
    return cfg_role_upstream(s->role, s->target_name);
}

static void flush_both(session_t *s)
{
    io_status_t st = ep_flush(&s->upstream);
    if (st == IO_EOF || st == IO_ERR) {
        fail_upstream(s, "connection lost during login");
        return;
    }
    session_flush_client(s);
}

/* ---- startup packet ---------------------------------------------------------- */

static void send_startup(session_t *s)
{
    const cfg_upstream_t *cred = credential(s);
    const char *kv[2 * PGW_MAX_PARAMS + 8];
    int n = 0;
    kv[n++] = "user";
    kv[n++] = cred->user;
    kv[n++] = "database";
    kv[n++] = s->target->dbname;
    /* Pinned settings (SPEC 5.1, 5.2) go first in options; a client's safe
     * -c settings follow and cannot name them (unsafe_option refuses). */
    char opts[2048];
    int o = snprintf(opts, sizeof(opts), "-c standard_conforming_strings=on%s",
                     s->role->read_only ? " -c default_transaction_read_only=on" : "");
    const char *p = (const char *)s->params.data, *end = p + s->params.len;
    while (p && p < end && n < 2 * PGW_MAX_PARAMS) {
        const char *k = p, *v = k + strlen(k) + 1;
        p = v + strlen(v) + 1;
        if (!strcmp(k, "options")) {
            o += snprintf(opts + o, o < (int)sizeof(opts) ? sizeof(opts) - (size_t)o : 0, " %s", v);
            continue;
        }
        kv[n++] = k;
        kv[n++] = v;
    }
    if (o >= (int)sizeof(opts)) {
        session_fail(s, "FATAL", "08P01", "bulwark: startup options too long");
        return;
    }
    kv[n++] = "options";
    kv[n++] = opts;
    kv[n] = NULL;
    pgw_write_startup(&s->upstream.out, PGW_PROTO_V3, kv);
    s->ustate = UP_AUTH;
    flush_both(s);
}

/* ---- TLS ------------------------------------------------------------------- */

static void tls_connect_step(session_t *s)
{
    ERR_clear_error();
    int r = SSL_connect(s->upstream.ssl);
    if (r == 1) {
        s->upstream.force_write = false;
        send_startup(s);
        return;
    }
    int err = SSL_get_error(s->upstream.ssl, r);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
        s->upstream.force_write = err == SSL_ERROR_WANT_WRITE;
        session_update_watchers(s);
        return;
    }
    char e[200] = "TLS handshake failed";
    unsigned long code = ERR_get_error();
    if (code)
        ERR_error_string_n(code, e, sizeof(e));
    long vr = SSL_get_verify_result(s->upstream.ssl);
    if (vr != X509_V_OK)
        snprintf(e, sizeof(e), "certificate verify failed: %s", X509_verify_cert_error_string(vr));
    ERR_clear_error();
    fail_upstream(s, e);
}

static void start_tls(session_t *s)
{
    SSL_CTX *ctx = s->rt->target_tls[s->target_index];
    const char *host = s->target->host;
    SSL *ssl = ctx ? SSL_new(ctx) : NULL;
    if (!ssl || SSL_set_fd(ssl, s->upstream.fd) != 1) {
        SSL_free(ssl);
        fail_upstream(s, "could not create a TLS session");
        return;
    }
    s->upstream.ssl = ssl;
    unsigned char tmp[16];
    bool is_ip = inet_pton(AF_INET, host, tmp) == 1 || inet_pton(AF_INET6, host, tmp) == 1;
    if (!is_ip)
        SSL_set_tlsext_host_name(ssl, host);
    if (s->target->sslmode == CFG_SSL_VERIFY_FULL) {
        int ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host)
                       : SSL_set1_host(ssl, host);
        if (ok != 1) {
            fail_upstream(s, "could not set the host name to verify");
            return;
        }
    }
    s->ustate = UP_TLS_CONNECT;
    tls_connect_step(s);
}

/* PG docs 55.2.10: one byte, 'S' or 'N'; anything buffered behind it was not
 * protected by TLS and is refused (CVE-2021-23222). */
static void read_ssl_answer(session_t *s)
{
    io_status_t st = ep_fill(&s->upstream);
    if (st == IO_AGAIN)
        return;
    if (st != IO_OK) {
        fail_upstream(s, "connection closed after SSLRequest");
        return;
    }
    char answer = (char)buf_head(&s->upstream.in)[0];
    if (buf_unread(&s->upstream.in) != 1) {
        fail_upstream(s, "unexpected data after the SSLRequest answer");
        return;
    }
    buf_consume(&s->upstream.in, 1);
    if (answer == 'S')
        start_tls(s);
    else if (answer == 'N' && s->target->sslmode == CFG_SSL_PREFER)
        send_startup(s);
    else if (answer == 'N')
        fail_upstream(s, "server does not support SSL, but the target requires it");
    else
        fail_upstream(s, "invalid answer to SSLRequest");
}

/* ---- connect ------------------------------------------------------------------ */

static void connected(session_t *s)
{
    s->upstream.force_write = false;
    if (s->target->sslmode == CFG_SSL_DISABLE) {
        send_startup(s);
        return;
    }
    pgw_write_ssl_request(&s->upstream.out);
    s->ustate = UP_SSL_REQUEST;
    flush_both(s);
}

static bool try_next_address(session_t *s);

static void connect_now(session_t *s)
{
    const struct sockaddr *sa = (const struct sockaddr *)&s->uaddr;
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fail_upstream(s, strerror(errno));
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    ep_init(&s->upstream, s->srv->loop, fd, upstream_io_cb, s);
    s->upstream_open = true;
    if (connect(fd, sa, s->uaddr_len) == 0) {
        connected(s);
        return;
    }
    if (errno != EINPROGRESS) {
        int e = errno;
        if (!try_next_address(s))
            fail_upstream(s, strerror(e));
        return;
    }
    s->ustate = UP_CONNECTING;
    s->upstream.force_write = true;
    session_update_watchers(s);
}

static void resolved(void *arg, int err, const struct sockaddr_storage *addrs,
                     const socklen_t *lens, int n)
{
    session_t *s = arg;
    s->resolving = NULL;
    if (err || n < 1) {
        fail_upstream(s, "could not resolve the host name");
        return;
    }
    memcpy(&s->uaddr, &addrs[0], lens[0]);
    s->uaddr_len = lens[0];
    if (n > 1) {
        s->ualts = malloc((size_t)(n - 1) * sizeof(*s->ualts));
        s->ualt_lens = malloc((size_t)(n - 1) * sizeof(*s->ualt_lens));
        if (s->ualts && s->ualt_lens) {
            memcpy(s->ualts, addrs + 1, (size_t)(n - 1) * sizeof(*s->ualts));
            memcpy(s->ualt_lens, lens + 1, (size_t)(n - 1) * sizeof(*s->ualt_lens));
            s->nualts = n - 1;
        }
    }
    connect_now(s);
}

/* A failed connect moves on to the next address the name resolved to. */
static bool try_next_address(session_t *s)
{
    if (s->nualts == 0)
        return false;
    ep_close(&s->upstream, s->srv->loop);
    s->upstream.fd = -1;
    memcpy(&s->uaddr, &s->ualts[0], s->ualt_lens[0]);
    s->uaddr_len = s->ualt_lens[0];
    memmove(s->ualts, s->ualts + 1, (size_t)(s->nualts - 1) * sizeof(*s->ualts));
    memmove(s->ualt_lens, s->ualt_lens + 1, (size_t)(s->nualts - 1) * sizeof(*s->ualt_lens));
    s->nualts--;
    connect_now(s);
    return true;
}

void upstream_start(session_t *s)
{
    const cfg_target_t *t = s->target;
    struct sockaddr_in *in = (struct sockaddr_in *)&s->uaddr;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&s->uaddr;
    memset(&s->uaddr, 0, sizeof(s->uaddr));
    if (inet_pton(AF_INET, t->host, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)t->port);
        s->uaddr_len = sizeof(*in);
    } else if (inet_pton(AF_INET6, t->host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)t->port);
        s->uaddr_len = sizeof(*in6);
    } else {
        s->ustate = UP_RESOLVING;
        s->resolving = resolver_lookup(s->srv->resolver, t->host, t->port, resolved, s);
        if (!s->resolving)
            fail_upstream(s, "could not start name resolution");
        return;
    }
    connect_now(s);
}

/* ---- authentication ------------------------------------------------------------ */

static void sasl_start(session_t *s, const pgw_auth_t *a, const char *password)
{
    if (!pgw_auth_sasl_has(a, "SCRAM-SHA-256")) {
        fail_upstream(s, "server offers no SASL mechanism the gateway supports");
        return;
    }
    pgw_scram_t *sc = calloc(1, sizeof(*sc));
    buf_t first;
    buf_init(&first, 4096);
    if (!sc || pgw_scram_init(sc, "", password) != 0 || pgw_scram_client_first(sc, &first) != 0) {
        free(sc);
        buf_free(&first);
        fail_upstream(s, "could not start SCRAM");
        return;
    }
    pgw_scram_cache_t *cache =
        runtime_scram_cache(s->rt, s->srv->worker_id, s->role, credential(s));
    if (cache)
        pgw_scram_set_cache(sc, cache); /* PBKDF2 once per credential, not per login */
    s->scram = sc;
    pgw_write_sasl_initial(&s->upstream.out, "SCRAM-SHA-256", first.data, first.len);
    buf_free(&first);
}

static void sasl_continue(session_t *s, const pgw_auth_t *a)
{
    buf_t final;
    buf_init(&final, 4096);
    if (!s->scram || pgw_scram_client_final(s->scram, a->data, a->len, &final) != 0) {
        buf_free(&final);
        fail_upstream(s, "invalid SCRAM server-first-message");
        return;
    }
    pgw_write_sasl_response(&s->upstream.out, final.data, final.len);
    buf_free(&final);
}

static void sasl_final(session_t *s, const pgw_auth_t *a)
{
    if (!s->scram || pgw_scram_verify_final(s->scram, a->data, a->len) != 0) {
        fail_upstream(s, "the server's SCRAM signature does not verify");
        return;
    }
    pgw_scram_free(s->scram);
    free(s->scram);
    s->scram = NULL;
}

static void handle_auth(session_t *s, const uint8_t *body, size_t len)
{
    pgw_auth_t a;
    if (pgw_read_auth(body, len, &a) < 0) {
        fail_upstream(s, "invalid authentication message");
        return;
    }
    const cfg_upstream_t *cred = credential(s);
    const char *pw = cred->password;
    bool sasl_step = a.code == PGW_AUTH_SASL_CONTINUE || a.code == PGW_AUTH_SASL_FINAL;
    if (a.code != PGW_AUTH_OK && !sasl_step && !pw) {
        fail_upstream(s, "the server asks for a password but none is configured");
        return;
    }
    if ((a.code == PGW_AUTH_OK || a.code == PGW_AUTH_SASL) && s->scram) {
        /* As libpq: a server that skips SASLFinal never proved it knows the password. */
        fail_upstream(s, "the server skipped SCRAM verification");
        return;
    }
    switch (a.code) {
    case PGW_AUTH_OK:
        pgw_write_auth_ok(&s->client.out);
        break;
    case PGW_AUTH_CLEARTEXT:
        pgw_write_password(&s->upstream.out, pw);
        break;
    case PGW_AUTH_MD5: {
        char md5[36];
        if (a.len != 4) {
            fail_upstream(s, "invalid MD5 salt");
            return;
        }
        pgw_md5_password(cred->user, pw, a.data, md5);
        pgw_write_password(&s->upstream.out, md5);
        break;
    }
    case PGW_AUTH_SASL:
        sasl_start(s, &a, pw);
        break;
    case PGW_AUTH_SASL_CONTINUE:
        sasl_continue(s, &a);
        break;
    case PGW_AUTH_SASL_FINAL:
        sasl_final(s, &a);
        break;
    default:
        fail_upstream(s, "the server asks for an authentication method the gateway lacks");
        break;
    }
}

static void handle_login_error(session_t *s, const uint8_t *body, size_t len)
{
    pgw_error_t e;
    memset(&e, 0, sizeof(e));
    if (pgw_read_error(body, len, &e) < 0) {
        fail_upstream(s, "invalid error message");
        return;
    }
    char q[400];
    log_event(LOG_WARN, "upstream_login_failed", "session=%s target=%s sqlstate=%s message=%s",
              s->id, s->target_name, e.sqlstate ? e.sqlstate : "?",
              log_q(q, sizeof(q), e.message ? e.message : ""));
    /* Overload and startup states are worth passing on; the rest (auth, missing
     * database) is the operator's business and stays in the log. */
    const char *code = e.sqlstate ? e.sqlstate : "08006";
    metrics_upstream_error(s->srv->metrics, s->target_name, "login");
    if (!strncmp(code, "53", 2) || !strncmp(code, "57P0", 4))
        session_fail(s, "FATAL", code, "bulwark: target \"%s\" refused the connection: %s",
                     s->target_name, e.message ? e.message : "");
    else
        session_fail(s, "FATAL", "08006",
                     "bulwark: login to target \"%s\" failed (SQLSTATE %s); see the gateway log",
                     s->target_name, code);
}

static void forward_whole(session_t *s, const uint8_t *msg, size_t n)
{
    buf_append(&s->client.out, msg, n);
}

static void handle_login_error(session_t *s, const uint8_t *body, size_t len);

/* ---- probe: what the policy session needs to resolve names ----------------------- */

/* The client's ReadyForQuery waits until the upstream has said what its
 * search_path is and which schemas exist (SPEC 5.1: unqualified names resolve
 * through the session's search_path). */
static void start_probe(session_t *s)
{
    s->probe_status = s->tx_status;
    s->probe_set = 0;
    pgw_write_query(&s->upstream.out, "SHOW search_path; "
                                      "SELECT nspname FROM pg_catalog.pg_namespace");
    s->ustate = UP_PROBE;
}

static int probe_row(session_t *s, const uint8_t *body, size_t len)
{
    pgw_datarow_t row;
    const uint8_t *v;
    int32_t vlen;
    if (pgw_read_datarow(body, len, &row) < 0 || pgw_values_next(&row.cols, &v, &vlen) != 1 ||
        vlen < 0)
        return 0;
    char *str = strndup((const char *)v, (size_t)vlen);
    if (!str)
        return -1;
    if (s->probe_set == 1) {
        free(s->probe_search_path);
        s->probe_search_path = str;
        return 0;
    }
    char **n = realloc(s->probe_schemas, (s->probe_nschemas + 1) * sizeof(char *));
    if (!n) {
        free(str);
        return -1;
    }
    s->probe_schemas = n;
    s->probe_schemas[s->probe_nschemas++] = str;
    return 0;
}

static void finish_probe(session_t *s)
{
    s->gate = gate_new(s->probe_search_path, credential(s)->user,
                       (const char *const *)s->probe_schemas, s->probe_nschemas);
    if (!s->gate) {
        fail_upstream(s, "out of memory");
        return;
    }
    pgw_write_ready(&s->client.out, s->probe_status);
    s->ustate = UP_READY;
}

static void probe_message(session_t *s, char type, const uint8_t *body, size_t len)
{
    switch (type) {
    case 'T':
        s->probe_set++;
        break;
    case 'D':
        if (probe_row(s, body, len) < 0)
            fail_upstream(s, "out of memory");
        break;
    case 'C':
    case 'N':
    case 'S':
        break;
    case 'Z':
        finish_probe(s);
        break;
    case 'E':
        handle_login_error(s, body, len);
        break;
    default:
        fail_upstream(s, "unexpected message while reading the search_path");
        break;
    }
}

/* One whole login-phase message. */
static void login_message(session_t *s, char type, const uint8_t *msg, size_t total)
{
    const uint8_t *body = msg + 5;
    size_t len = total - 5;
    if (s->ustate == UP_PROBE) {
        probe_message(s, type, body, len);
        return;
    }
    switch (type) {
    case 'R':
        handle_auth(s, body, len);
        break;
    case 'S':
    case 'N':
        forward_whole(s, msg, total);
        break;
    case 'K':
        if (pgw_read_backend_key(body, len, &s->up_pid, &s->up_key) < 0) {
            fail_upstream(s, "invalid BackendKeyData");
            return;
        }
        pgw_write_backend_key(&s->client.out, s->my_pid, s->my_key);
        s->key_sent = true;
        break;
    case 'Z':
        if (!s->key_sent)
            pgw_write_backend_key(&s->client.out, s->my_pid, s->my_key);
        if (pgw_read_ready(body, len, &s->tx_status) < 0) {
            fail_upstream(s, "invalid ReadyForQuery");
            return;
        }
        start_probe(s);
        break;
    case 'E':
        handle_login_error(s, body, len);
        break;
    case 'v':
        break; /* NegotiateProtocolVersion: we asked for plain 3.0 */
    default:
        fail_upstream(s, "unexpected message during login");
        break;
    }
}

static void read_login(session_t *s)
{
    io_status_t st = ep_fill(&s->upstream);
    if (st == IO_EOF || st == IO_ERR) {
        /* An ErrorResponse may have come with the close. */
        if (buf_unread(&s->upstream.in) == 0) {
            fail_upstream(s, "server closed the connection during login");
            return;
        }
    }
    endpoint_t *u = &s->upstream;
    while (!DEAD(s) && s->state == ST_UPSTREAM_LOGIN && s->ustate != UP_READY) {
        pgw_hdr_t h;
        int r = pgw_frame(buf_head(&u->in), buf_unread(&u->in), MAX_LOGIN_MESSAGE, &h);
        if (r < 0) {
            fail_upstream(s, "invalid message during login");
            return;
        }
        if (r == 0 || buf_unread(&u->in) < 5 + (size_t)h.len)
            break;
        size_t total = 5 + (size_t)h.len;
        login_message(s, h.type, buf_head(&u->in), total);
        buf_consume(&u->in, total);
    }
    if (DEAD(s) || s->state != ST_UPSTREAM_LOGIN)
        return;
    if (st == IO_EOF || st == IO_ERR) {
        fail_upstream(s, "server closed the connection during login");
        return;
    }
    if (s->ustate == UP_READY) {
        if (ep_flush(&s->upstream) == IO_ERR) {
            fail_upstream(s, "connection lost during login");
            return;
        }
        session_upstream_ready(s);
        return;
    }
    flush_both(s);
}

void upstream_login_io(session_t *s, int revents)
{
    switch (s->ustate) {
    case UP_RESOLVING:
        break;
    case UP_CONNECTING: {
        int err = 0;
        socklen_t l = sizeof(err);
        if (getsockopt(s->upstream.fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0)
            err = errno;
        if (err && !try_next_address(s))
            fail_upstream(s, strerror(err));
        else if (!err)
            connected(s);
        break;
    }
    case UP_SSL_REQUEST:
        if (revents & EV_WRITE)
            flush_both(s);
        if (!DEAD(s) && (revents & EV_READ))
            read_ssl_answer(s);
        break;
    case UP_TLS_CONNECT:
        tls_connect_step(s);
        break;
    case UP_AUTH:
    case UP_PROBE:
        if (revents & EV_WRITE)
            flush_both(s);
        if (!DEAD(s) && s->state == ST_UPSTREAM_LOGIN && (revents & EV_READ))
            read_login(s);
        break;
    case UP_READY:
        break;
    }
}
