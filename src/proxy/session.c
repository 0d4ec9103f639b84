/*
 * A client session: startup packet, TLS, token login, then the relay.
 *
 * The relay frames every message in both directions (PG docs 55.7: a type
 * byte and an int32 length) so that the gateway always knows where a message
 * starts, can refuse malformed ones, and can later inspect or rewrite whole
 * messages. Bytes are forwarded as soon as they are read; nothing waits for
 * ReadyForQuery (DESIGN.md 2.3).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "identity/ident.h"
#include "pgwire/pgwire.h"
#include "proxy/internal.h"
#include "proxy/maskflow.h"
#include "proxy/workers.h"
#include "util/log.h"

static void client_io_cb(struct ev_loop *loop, ev_io *w, int revents);
static void session_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void expiry_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void client_readable(session_t *s);
static void client_process(session_t *s);
static void forget_token(session_t *s);
static void relay_c2u(session_t *s);
static void relay_u2c(session_t *s);

#define DEAD(s) ((s)->state == ST_DEAD)

/* Settings a client may pass in its startup packet (directly or in `options`),
 * as SPEC 5.1's safe list. standard_conforming_strings is pinned upstream. */
static const char *const safe_settings[] = {"application_name",
                                            "client_encoding",
                                            "DateStyle",
                                            "TimeZone",
                                            "IntervalStyle",
                                            "extra_float_digits",
                                            "search_path",
                                            "statement_timeout",
                                            "lock_timeout",
                                            "idle_in_transaction_session_timeout",
                                            "client_min_messages",
                                            "bytea_output",
                                            "default_transaction_isolation",
                                            NULL};

/* Startup parameters relayed as they are (SPEC 1). */
static const char *const passthrough_params[] = {
    "application_name", "client_encoding", "DateStyle", "TimeZone", "extra_float_digits", NULL};

static bool in_list(const char *const *list, const char *name)
{
    for (; *list; list++)
        if (!strcasecmp(*list, name))
            return true;
    return false;
}

session_t *session_new(server_t *srv, int fd, const struct sockaddr *peer)
{
    session_t *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    uint8_t rnd[8];
    if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
        free(s);
        return NULL;
    }
    for (int i = 0; i < 8; i++)
        snprintf(s->id + 2 * i, 3, "%02x", rnd[i]);
    s->srv = srv;
    s->rt = runtime_retain(srv->rt);
    s->state = ST_STARTUP;
    s->upstream.fd = -1;
    s->tx_status = 'I';
    s->started_ms = now_ms();
    buf_init(&s->params, 16 * 1024);
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (peer->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const void *)peer;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        port = ntohs(in->sin_port);
    } else if (peer->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const void *)peer;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        port = ntohs(in6->sin6_port);
    }
    snprintf(s->peer, sizeof(s->peer), "%s:%d", host, port);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    ep_init(&s->client, srv->loop, fd, client_io_cb, s);
    ev_timer_init(&s->timer, session_timer_cb, (double)s->rt->cfg->login_timeout_ms / 1000.0, 0.);
    s->timer.data = s;
    ev_timer_start(srv->loop, &s->timer);
    ev_init(&s->expiry, expiry_cb);
    s->expiry.data = s;
    session_update_watchers(s);
    return s;
}

void session_free(session_t *s)
{
    buf_free(&s->params);
    gate_free(s->gate);
    maskflow_free(s->mf);
    forget_token(s);
    free(s->role_name);
    free(s->target_name);
    free(s->ualts);
    free(s->ualt_lens);
    free(s->subject);
    free(s->issuer);
    free(s->app_name);
    free(s->admin_rest);
    free(s);
}

void session_update_watchers(session_t *s)
{
    struct ev_loop *loop = s->srv->loop;
    bool cr = false, ur = false;
    switch (s->state) {
    case ST_STARTUP:
    case ST_PASSWORD:
        cr = true;
        break;
    case ST_TLS_ACCEPT:
        cr = s->hs_want_read;
        break;
    case ST_RELAY:
        cr = !s->client_paused && !s->audit_paused;
        ur = !s->upstream_paused;
        break;
    case ST_UPSTREAM_LOGIN:
        ur = s->ustate == UP_SSL_REQUEST || s->ustate == UP_AUTH || s->ustate == UP_PROBE ||
             (s->ustate == UP_TLS_CONNECT && !s->upstream.force_write);
        break;
    default:
        break;
    }
    ep_watch(&s->client, loop, cr);
    if (s->upstream.fd >= 0)
        ep_watch(&s->upstream, loop, ur);
}

static void log_session_end(session_t *s, const char *reason)
{
    char q[256];
    log_event(LOG_INFO, "session_end",
              "session=%s reason=%s role=%s target=%s duration_ms=%llu bytes_in=%llu "
              "bytes_out=%llu",
              s->id, log_q(q, sizeof(q), reason), s->role_name ? s->role_name : "-",
              s->target_name ? s->target_name : "-", (unsigned long long)(now_ms() - s->started_ms),
              (unsigned long long)s->bytes_c2u, (unsigned long long)s->bytes_u2c);
}

/* Close the upstream side: a Terminate first when we are between messages. */
static void probe_free(session_t *s)
{
    free(s->probe_search_path);
    s->probe_search_path = NULL;
    for (size_t i = 0; i < s->probe_nschemas; i++)
        free(s->probe_schemas[i]);
    free(s->probe_schemas);
    s->probe_schemas = NULL;
    s->probe_nschemas = 0;
}

static void upstream_close(session_t *s)
{
    probe_free(s);
    if (s->resolving) {
        resolver_cancel(s->resolving);
        s->resolving = NULL;
    }
    if (s->scram) {
        pgw_scram_free(s->scram);
        free(s->scram);
        s->scram = NULL;
    }
    if (s->upstream.fd < 0)
        return;
    if (s->ustate == UP_READY && s->c2u_left == 0) {
        pgw_write_terminate(&s->upstream.out);
        (void)ep_flush(&s->upstream);
    }
    ep_close(&s->upstream, s->srv->loop);
}

void session_close(session_t *s, const char *reason)
{
    if (DEAD(s))
        return;
    log_session_end(s, reason);
    approval_end(s, reason);
    rec_session_end(s, reason);
    metrics_session_end(s->srv->metrics, &s->mx, s->role_name, s->target_name);
    upstream_close(s);
    ev_timer_stop(s->srv->loop, &s->timer);
    ev_timer_stop(s->srv->loop, &s->expiry);
    ep_close(&s->client, s->srv->loop);
    if (s->in_cancel_map)
        server_cancel_remove(s->srv, s);
    runtime_release(s->rt);
    s->rt = NULL;
    s->state = ST_DEAD;
    server_session_gone(s->srv, s);
}

void session_fail(session_t *s, const char *severity, const char *sqlstate, const char *fmt, ...)
{
    if (DEAD(s) || s->state == ST_CLOSING)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* A message can only be injected between two messages, and never into a
     * TLS handshake in progress. */
    if (s->state == ST_TLS_ACCEPT || s->u2c_left > 0) {
        session_close(s, msg);
        return;
    }
    /* sqlstate may point into the upstream's input buffer, which upstream_close frees */
    char code[6];
    snprintf(code, sizeof(code), "%s", sqlstate);
    char q[600];
    log_event(LOG_INFO, "session_error", "session=%s sqlstate=%s message=%s", s->id, code,
              log_q(q, sizeof(q), msg));
    upstream_close(s);
    pgw_write_error(&s->client.out, severity, code, msg);
    s->state = ST_CLOSING;
    ev_timer_stop(s->srv->loop, &s->timer);
    ev_timer_set(&s->timer, CLOSE_FLUSH_TIMEOUT, 0.);
    ev_timer_start(s->srv->loop, &s->timer);
    session_flush_client(s);
    if (!DEAD(s) && buf_unread(&s->client.out) == 0)
        session_close(s, msg);
}

static void expiry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    session_fail(w->data, "FATAL", "28P01", "bulwark: terminating connection: the token expired");
}

static void session_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    session_t *s = w->data;
    if (s->state == ST_CLOSING)
        session_close(s, "client did not read its final message");
    else if (s->state == ST_UPSTREAM_LOGIN) {
        metrics_upstream_error(s->srv->metrics, s->target_name, "timeout");
        session_fail(s, "FATAL", "08006",
                     "bulwark: upstream server for target \"%s\" did not answer within "
                     "login_timeout",
                     s->target_name);
    } else if (s->state != ST_RELAY)
        session_fail(s, "FATAL", "57014", "bulwark: canceling authentication due to timeout");
}

/* Write pending output to the client; on the way down past the low-water mark,
 * let the upstream side read again. */
void session_flush_client(session_t *s)
{
    io_status_t st = ep_flush(&s->client);
    if (st == IO_EOF || st == IO_ERR) {
        session_close(s, "client connection lost");
        return;
    }
    if (s->state == ST_CLOSING && buf_unread(&s->client.out) == 0) {
        session_close(s, "closed after error");
        return;
    }
    if (s->upstream_paused && buf_unread(&s->client.out) < OUT_LOWAT) {
        s->upstream_paused = false;
        relay_u2c(s);
        if (DEAD(s))
            return;
        /* TLS may hold decrypted bytes the socket no longer signals. */
        if (!s->upstream_paused && s->upstream.ssl && SSL_pending(s->upstream.ssl) > 0)
            ev_feed_event(s->srv->loop, &s->upstream.rw, EV_READ);
    }
    session_update_watchers(s);
}

static void flush_upstream(session_t *s)
{
    io_status_t st = ep_flush(&s->upstream);
    if (st == IO_EOF || st == IO_ERR) {
        session_fail(s, "ERROR", "08006", "bulwark: lost connection to the upstream server");
        return;
    }
    if (s->client_paused && buf_unread(&s->upstream.out) < OUT_LOWAT) {
        s->client_paused = false;
        client_readable(s);
        if (DEAD(s))
            return;
    }
    session_update_watchers(s);
}

/* ---- TLS ------------------------------------------------------------- */

static void tls_accept_step(session_t *s)
{
    ERR_clear_error();
    int r = SSL_accept(s->client.ssl);
    if (r == 1) {
        s->client_tls = true;
        s->client.force_write = false;
        s->state = ST_STARTUP;
        session_update_watchers(s);
        client_readable(s); /* the startup packet may already sit in OpenSSL */
        return;
    }
    int err = SSL_get_error(s->client.ssl, r);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
        s->hs_want_read = err == SSL_ERROR_WANT_READ;
        s->client.force_write = err == SSL_ERROR_WANT_WRITE;
        session_update_watchers(s);
        return;
    }
    char e[160];
    ERR_error_string_n(ERR_get_error(), e, sizeof(e));
    ERR_clear_error();
    session_close(s, e[0] ? e : "TLS handshake failed");
}

static void answer_ssl_request(session_t *s)
{
    SSL_CTX *ctx = s->rt->server_tls;
    if (s->client_tls) {
        session_fail(s, "FATAL", "08P01", "bulwark: SSLRequest received on a TLS connection");
        return;
    }
    /* CVE-2021-23214: bytes that arrived with the SSLRequest were not protected. */
    if (buf_unread(&s->client.in) > 0) {
        session_fail(s, "FATAL", "08P01", "bulwark: received unencrypted data after SSL request");
        return;
    }
    char answer = ctx ? 'S' : 'N';
    buf_append(&s->client.out, &answer, 1);
    if (ep_flush(&s->client) != IO_OK) {
        session_close(s, "could not answer SSLRequest");
        return;
    }
    if (!ctx)
        return;
    s->client.ssl = SSL_new(ctx);
    if (!s->client.ssl || SSL_set_fd(s->client.ssl, s->client.fd) != 1) {
        session_close(s, "SSL_new failed");
        return;
    }
    s->state = ST_TLS_ACCEPT;
    tls_accept_step(s);
}

/* ---- startup --------------------------------------------------------- */

/* `options` may only carry -c settings of the safe list (SPEC 1); returns
 * the offending setting name, or NULL when all are safe. */
static const char *unsafe_option(const char *opts, char *name, size_t namesz)
{
    const char *p = opts;
    while (*p) {
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        const char *setting;
        if (!strncmp(p, "-c", 2)) {
            p += 2;
            while (*p == ' ')
                p++;
            setting = p;
        } else if (!strncmp(p, "--", 2)) {
            setting = p + 2;
        } else {
            snprintf(name, namesz, "%.*s", (int)strcspn(p, " "), p);
            return name;
        }
        size_t n = strcspn(setting, "=");
        snprintf(name, namesz, "%.*s", (int)n, setting);
        for (char *c = name; *c; c++)
            if (*c == '-')
                *c = '_';
        if (!setting[n] || !in_list(safe_settings, name))
            return name;
        /* skip the value, honouring backslash-escaped spaces */
        p = setting + n;
        while (*p && *p != ' ') {
            if (*p == '\\' && p[1])
                p++;
            p++;
        }
    }
    return NULL;
}

static void add_param(session_t *s, const char *k, const char *v)
{
    buf_put_cstr(&s->params, k);
    buf_put_cstr(&s->params, v);
}

/* Checks in the order a client can act on: protocol, transport, names. */
static void handle_startup(session_t *s, const pgw_startup_t *st)
{
    const cfg_t *cfg = s->rt->cfg;
    unsigned major = st->code >> 16, minor = st->code & 0xffff;
    if (major != 3) {
        session_fail(s, "FATAL", "0A000",
                     "unsupported frontend protocol %u.%u: server supports 3.0 to 3.0", major,
                     minor);
        return;
    }
    const char *unrecognized[PGW_MAX_PARAMS];
    int nunrec = 0;
    for (int i = 0; i < st->nparams; i++)
        if (!strncmp(st->keys[i], "_pq_.", 5))
            unrecognized[nunrec++] = st->keys[i];
    if (minor > 0 || nunrec > 0)
        pgw_write_negotiate_version(&s->client.out, 0, unrecognized, nunrec);

    if (!s->client_tls && !(s->srv->listener_loopback && cfg->allow_plaintext_on_loopback)) {
        metrics_login_failed(s->srv->metrics, "plaintext");
        session_fail(s, "FATAL", "28000",
                     "bulwark: plaintext connections are refused; connect with sslmode=require");
        return;
    }
    const char *user = pgw_startup_get(st, "user");
    const char *db = pgw_startup_get(st, "database");
    const char *opts = pgw_startup_get(st, "options");
    const char *repl = pgw_startup_get(st, "replication");
    if (!user || !*user) {
        session_fail(s, "FATAL", "28000", "no PostgreSQL user name specified in startup packet");
        return;
    }
    if (!db || !*db)
        db = user;
    const char *app = pgw_startup_get(st, "application_name");
    s->role_name = strdup(user);
    s->target_name = strdup(db);
    s->app_name = strdup(app ? app : "");
    if (!s->role_name || !s->target_name || !s->app_name) {
        session_close(s, "out of memory");
        return;
    }
    if (repl && strcasecmp(repl, "false") && strcasecmp(repl, "off") && strcmp(repl, "0")) {
        session_fail(s, "FATAL", "28000", "bulwark: replication connections are not supported");
        return;
    }
    char bad[128];
    if (opts && unsafe_option(opts, bad, sizeof(bad))) {
        session_fail(s, "FATAL", "28000",
                     "bulwark: startup option \"%s\" is not allowed (only -c settings of the safe "
                     "list)",
                     bad);
        return;
    }
    s->role = cfg_find_role(cfg, user);
    if (!s->role) {
        rec_login_failed(s, "unknown_role", "28000");
        session_fail(s, "FATAL", "28000", "bulwark: role \"%s\" does not exist", user);
        return;
    }
    if (!strcmp(db, "bulwark")) { /* the admin console (admin.c) */
        if (!s->role->admin) {
            rec_login_failed(s, "not_admin", "28000");
            session_fail(s, "FATAL", "28000",
                         "bulwark: role \"%s\" may not use the admin console (target \"bulwark\"): "
                         "it is not an admin role",
                         user);
            return;
        }
        s->admin = true;
        pgw_write_auth_cleartext(&s->client.out);
        s->state = ST_PASSWORD;
        session_flush_client(s);
        return;
    }
    s->target = cfg_find_target(cfg, db);
    if (!s->target) {
        rec_login_failed(s, "unknown_target", "3D000");
        session_fail(s, "FATAL", "3D000", "bulwark: target \"%s\" does not exist", db);
        return;
    }
    s->target_index = (int)(s->target - cfg->targets);
    if (!cfg_role_upstream(s->role, db)) {
        metrics_login_failed(s->srv->metrics, "no_access");
        session_fail(s, "FATAL", "28000", "bulwark: role \"%s\" has no access to target \"%s\"",
                     user, db);
        return;
    }
    for (int i = 0; i < st->nparams; i++)
        if (in_list(passthrough_params, st->keys[i]))
            add_param(s, st->keys[i], st->vals[i]);
    if (opts && *opts)
        add_param(s, "options", opts);
    if (s->params.failed) {
        session_fail(s, "FATAL", "08P01", "bulwark: startup parameters too long");
        return;
    }
    pgw_write_auth_cleartext(&s->client.out);
    s->state = ST_PASSWORD;
    session_flush_client(s);
}

void session_cancel(server_t *srv, uint32_t pid, uint32_t key, const char *from)
{
    session_t *target = server_cancel_find(srv, pid, key);
    if (target && target->held && approval_cancel(target)) {
        log_event(LOG_INFO, "cancel", "session=%s from=%s held=yes worker=%d", target->id, from,
                  srv->worker_id);
    } else if (target && target->upstream.fd >= 0 && target->ustate == UP_READY) {
        log_event(LOG_INFO, "cancel", "session=%s from=%s worker=%d", target->id, from,
                  srv->worker_id);
        cancel_forward(srv, (struct sockaddr *)&target->uaddr, target->uaddr_len, target->up_pid,
                       target->up_key);
    } else {
        log_event(LOG_INFO, "cancel_unknown", "from=%s", from);
    }
}

/* The session may live on another worker: that worker acts on the request. */
static void handle_cancel(session_t *s, const pgw_startup_t *st)
{
    server_t *owner = server_cancel_owner(s->srv, st->cancel_pid, st->cancel_key);
    if (owner && owner != s->srv) {
        log_event(LOG_INFO, "cancel_forwarded", "from=%s worker=%d to_worker=%d", s->peer,
                  s->srv->worker_id, owner->worker_id);
        worker_forward_cancel(owner, st->cancel_pid, st->cancel_key, s->peer);
    } else {
        session_cancel(s->srv, st->cancel_pid, st->cancel_key, s->peer);
    }
    session_close(s, "cancel request");
}

static void process_startup(session_t *s)
{
    while (s->state == ST_STARTUP) {
        uint32_t len;
        int r = pgw_startup_len(buf_head(&s->client.in), buf_unread(&s->client.in), &len);
        if (r < 0) {
            session_fail(s, "FATAL", "08P01", "bulwark: invalid length of startup packet");
            return;
        }
        if (r == 0 || buf_unread(&s->client.in) < len)
            return;
        pgw_startup_t st;
        if (pgw_parse_startup(buf_head(&s->client.in), len, &st) < 0) {
            session_fail(s, "FATAL", "08P01", "bulwark: invalid startup packet layout");
            return;
        }
        if (st.code == PGW_SSL_REQUEST) {
            buf_consume(&s->client.in, len);
            answer_ssl_request(s);
        } else if (st.code == PGW_GSSENC_REQUEST) {
            buf_consume(&s->client.in, len);
            buf_put_u8(&s->client.out, 'N');
            session_flush_client(s);
        } else if (st.code == PGW_CANCEL_REQUEST) {
            handle_cancel(s, &st);
        } else {
            handle_startup(s, &st); /* copies what it keeps before the consume */
            if (!DEAD(s))
                buf_consume(&s->client.in, len);
        }
        if (DEAD(s))
            return;
    }
}

/* ---- password (the token) ---------------------------------------------- */

static void process_password(session_t *s)
{
    pgw_hdr_t h;
    int r = pgw_frame(buf_head(&s->client.in), buf_unread(&s->client.in), MAX_LOGIN_MESSAGE, &h);
    if (r < 0) {
        session_fail(s, "FATAL", "08P01", "bulwark: invalid message length in password packet");
        return;
    }
    if (r == 0 || buf_unread(&s->client.in) < 5 + (size_t)h.len)
        return;
    if (h.type != 'p') {
        session_fail(s, "FATAL", "08P01", "expected password response, got message type %d",
                     h.type);
        return;
    }
    uint8_t *body = s->client.in.data + s->client.in.rpos + 5;
    const char *tok;
    size_t toklen;
    if (pgw_read_password(body, h.len, &tok, &toklen) < 0) {
        session_fail(s, "FATAL", "08P01", "bulwark: invalid password packet");
        return;
    }
    /* Take the token out of the input buffer (and wipe it there) before the
     * login may end the session and free that buffer. */
    char *copy = malloc(toklen + 1);
    if (copy)
        memcpy(copy, tok, toklen + 1);
    OPENSSL_cleanse(body, h.len);
    buf_consume(&s->client.in, 5 + (size_t)h.len);
    if (!copy) {
        session_fail(s, "FATAL", "53200", "bulwark: out of memory");
        return;
    }
    session_try_login(s, copy, toklen);
    OPENSSL_cleanse(copy, toklen);
    free(copy);
}

static void forget_token(session_t *s)
{
    if (s->pending_token) {
        OPENSSL_cleanse(s->pending_token, s->pending_token_len);
        free(s->pending_token);
        s->pending_token = NULL;
    }
}

/* Validate the token; on IDENT_KEY_PENDING keep a copy and wait in
 * ST_KEY_PENDING for the key store's notify (server.c calls this again). */
void session_try_login(session_t *s, const char *tok, size_t toklen)
{
    ident_t id;
    memset(&id, 0, sizeof(id));
    char reason[256] = "";
    ident_status_t st = ident_login(s->rt->cfg, s->srv->keystore, s->role, tok, toklen,
                                    (int64_t)time(NULL), &id, reason, sizeof(reason));
    if (st == IDENT_KEY_PENDING) {
        if (!s->pending_token && !(s->pending_token = malloc(toklen + 1))) {
            session_fail(s, "FATAL", "53200", "bulwark: out of memory");
            return;
        }
        if (tok != s->pending_token)
            memcpy(s->pending_token, tok, toklen);
        s->pending_token_len = toklen;
        if (s->state != ST_KEY_PENDING)
            log_event(LOG_INFO, "login_waiting_for_keys", "session=%s role=%s", s->id,
                      s->role_name);
        s->state = ST_KEY_PENDING;
        session_update_watchers(s);
        return;
    }
    char q[300];
    if (st != IDENT_OK) {
        log_event(LOG_WARN, "login_failed", "session=%s peer=%s role=%s reason=%s detail=%s", s->id,
                  s->peer, s->role_name, ident_status_name(st), log_q(q, sizeof(q), reason));
        ident_free(&id);
        forget_token(s);
        rec_login_failed(s, ident_status_name(st), ident_status_sqlstate(st));
        session_fail(s, "FATAL", ident_status_sqlstate(st),
                     "bulwark: authentication failed for role \"%s\": %s", s->role_name, reason);
        return;
    }
    forget_token(s);
    s->issuer = strdup(id.issuer ? id.issuer : "");
    s->subject = strdup(id.subject ? id.subject : "");
    s->token_exp = id.exp;
    ident_free(&id);
    server_cancel_add(s->srv, s);
    if (s->admin) {
        admin_start(s);
        return;
    }
    s->state = ST_UPSTREAM_LOGIN;
    session_update_watchers(s);
    upstream_start(s);
}

/* ---- relay --------------------------------------------------------------- */

static bool frontend_type_ok(char t)
{
    return t && strchr("QPBDESHCdcfFX", t) != NULL;
}

static bool backend_type_ok(char t)
{
    return t && strchr("RSKZTDCENAI123nstGHWdcVv", t) != NULL;
}

/* Pass `n` bytes from one endpoint's input to the other's output. */
static void pass(endpoint_t *from, endpoint_t *to, size_t n)
{
    buf_append(&to->out, buf_head(&from->in), n);
    buf_consume(&from->in, n);
}

/* Drop a message the gate replaced: what is buffered now, the rest as it comes. */
static void skip_message(session_t *s, size_t total)
{
    size_t n = buf_unread(&s->client.in) < total ? buf_unread(&s->client.in) : total;
    buf_consume(&s->client.in, n);
    s->c2u_skip = total - n;
}

static int gate_verdict(session_t *s, gate_verdict_t v, size_t total)
{
    switch (v) {
    case GATE_FORWARD:
        return 1;
    case GATE_HOLD:
        return 0;
    case GATE_REPLACED:
    case GATE_SKIP:
        skip_message(s, total);
        return 2;
    case GATE_MALFORMED:
        session_fail(s, "FATAL", "08P01", "bulwark: malformed protocol message");
        return -1;
    default:
        session_fail(s, "FATAL", "53000",
                     "bulwark: cannot check more statements in this session (out of memory or "
                     "too many refusals in flight)");
        return -1;
    }
}

/* The gate's share of one frontend message (header h at the buffer's head).
 * 1 = stream it on, 2 = it was handled (consumed or being skipped),
 * 0 = wait for more bytes, -1 = the session ended. */
static int gate_message(session_t *s, const pgw_hdr_t *h)
{
    endpoint_t *c = &s->client;
    size_t total = 5 + (size_t)h->len;
    size_t avail = buf_unread(&c->in) - 5 < h->len ? buf_unread(&c->in) - 5 : h->len;
    const uint8_t *body = buf_head(&c->in) + 5;
    if (s->holding) /* only ever a whole Query or Execute */
        return gate_verdict(s, gate_resume(s, h->type, body, h->len), total);
    switch (h->type) {
    case 'Q':
    case 'P':
    case 'F':
    case 'C':
    case 'E':
        if (total > c->in.limit) {
            if (h->type == 'C' || h->type == 'E')
                return gate_verdict(s, GATE_MALFORMED, total);
            if (h->type == 'P' && !memchr(body, 0, avail) && avail < 1024)
                return 0; /* the statement name is still on its way */
            if (h->type == 'F')
                return gate_verdict(s, gate_frontend(s, 'F', body, avail, false), total);
            return gate_verdict(s, gate_oversized(s, h->type, body, avail, h->len), total);
        }
        if (buf_unread(&c->in) < total)
            return 0;
        return gate_verdict(s, gate_frontend(s, h->type, body, h->len, true), total);
    case 'B': {
        /* Held whole when small, for the audit's record of the values. */
        if (s->srv->audit && total <= MAX_LOGIN_MESSAGE) {
            if (buf_unread(&c->in) < total)
                return 0;
            return gate_verdict(s, gate_frontend(s, 'B', body, h->len, true), total);
        }
        size_t plen = gate_bind_prefix_len(body, avail);
        if (plen == 0)
            return avail == h->len || avail >= 4096 ? gate_verdict(s, GATE_MALFORMED, total) : 0;
        return gate_verdict(s, gate_frontend(s, 'B', body, plen, false), total);
    }
    case 'S':
        return gate_verdict(s, gate_frontend(s, 'S', body, 0, true), total);
    default:
        return 1;
    }
}

static void relay_c2u(session_t *s)
{
    endpoint_t *c = &s->client, *u = &s->upstream;
    size_t before = buf_unread(&c->in);
    while (buf_unread(&c->in) > 0 && !s->client_paused) {
        if (s->c2u_left > 0) {
            size_t n = buf_unread(&c->in) < s->c2u_left ? buf_unread(&c->in) : s->c2u_left;
            pass(c, u, n);
            s->c2u_left -= n;
            continue;
        }
        if (s->c2u_skip > 0) {
            size_t n = buf_unread(&c->in) < s->c2u_skip ? buf_unread(&c->in) : s->c2u_skip;
            buf_consume(&c->in, n);
            s->c2u_skip -= n;
            continue;
        }
        pgw_hdr_t h;
        int r = pgw_frame(buf_head(&c->in), buf_unread(&c->in), MAX_MESSAGE_BODY, &h);
        if (r == 0)
            break;
        if (r < 0 || !frontend_type_ok(h.type)) {
            session_fail(s, "FATAL", "08P01",
                         r < 0 ? "bulwark: invalid message length"
                               : "bulwark: invalid frontend message type %d",
                         (unsigned char)h.type);
            return;
        }
        if (h.type == 'X') {
            session_close(s, "client terminated");
            return;
        }
        if (s->mf && !s->holding && !maskflow_c2u_ready(s, h.type, buf_unread(&c->in) - 5, h.len))
            break;
        /* A statement makes audit records: while the writer is behind, it waits here
         * (and the client's socket is not read) rather than being refused. */
        if (!s->holding && (h.type == 'Q' || h.type == 'P' || h.type == 'E') && s->srv->audit &&
            audit_congested(s->srv->audit)) {
            if (!s->audit_paused) {
                s->audit_paused = true;
                session_update_watchers(s);
            }
            break;
        }
        int g = gate_message(s, &h);
        if (g > 0)
            metrics_upstream_sent(&s->mx, h.type);
        if (g < 0)
            return;
        if (g == 0)
            break;
        if (g == 2)
            continue;
        size_t total = 5 + (size_t)h.len;
        int m = s->mf
                    ? maskflow_c2u(s, h.type, buf_head(&c->in) + 5,
                                   buf_unread(&c->in) - 5 < h.len ? buf_unread(&c->in) - 5 : h.len)
                    : 0;
        if (m < 0) {
            if (m == -2)
                session_fail(s, "FATAL", "08P01", "bulwark: malformed protocol message");
            else
                session_fail(s, "FATAL", "53200", "bulwark: out of memory tracking result shapes");
            return;
        }
        size_t n = buf_unread(&c->in) < total ? buf_unread(&c->in) : total;
        pass(c, u, n);
        s->c2u_left = total - n;
        if (buf_unread(&u->out) > OUT_HIWAT)
            s->client_paused = true;
    }
    s->bytes_c2u += before - buf_unread(&c->in);
    if (u->out.failed) {
        session_fail(s, "FATAL", "53200", "bulwark: out of memory relaying to upstream");
        return;
    }
    flush_upstream(s);
}

/* Handle what the client sent, in whatever state it leaves us: a startup
 * packet and the password may arrive in one read. */
static void client_process(session_t *s)
{
    for (;;) {
        session_state_t before = s->state;
        switch (before) {
        case ST_STARTUP:
            process_startup(s);
            break;
        case ST_PASSWORD:
            process_password(s);
            break;
        case ST_RELAY:
            if (s->admin)
                admin_input(s);
            else
                relay_c2u(s);
            return;
        default:
            return;
        }
        if (DEAD(s) || s->state == before || buf_unread(&s->client.in) == 0)
            return;
    }
}

static void client_readable(session_t *s)
{
    for (int rounds = 0; rounds < 4 && !DEAD(s); rounds++) {
        if (s->state == ST_RELAY && (s->client_paused || s->audit_paused))
            return;
        io_status_t st = ep_fill(&s->client);
        if (st == IO_EOF || st == IO_ERR) {
            session_close(s, st == IO_EOF ? "client closed the connection" : "client read error");
            return;
        }
        bool more = st == IO_OK;
        client_process(s);
        /* TLS may hold decrypted bytes the socket no longer signals. */
        if (!more || DEAD(s) || !s->client.ssl || SSL_pending(s->client.ssl) == 0)
            return;
    }
    if (!DEAD(s) && s->client.ssl && SSL_pending(s->client.ssl) > 0)
        ev_feed_event(s->srv->loop, &s->client.rw, EV_READ);
}

static void client_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    session_t *s = w->data;
    if (s->state == ST_TLS_ACCEPT) {
        tls_accept_step(s);
        return;
    }
    if ((revents & EV_WRITE) || s->client.write_wants_read) {
        session_flush_client(s);
        if (DEAD(s))
            return;
    }
    if ((revents & EV_READ) && s->state != ST_CLOSING) {
        client_readable(s);
        /* A client that closed while we wait on the upstream is noticed here. */
    }
}

void session_resume(session_t *s)
{
    relay_c2u(s);
}

void session_audit_relieved(session_t *s)
{
    if (!s->audit_paused || audit_congested(s->srv->audit))
        return;
    s->audit_paused = false;
    session_update_watchers(s);
    relay_c2u(s);
}

/* After the upstream's ReadyForQuery the session runs; anything the client
 * pipelined behind its password is relayed now. */
void session_upstream_ready(session_t *s)
{
    s->state = ST_RELAY;
    ev_timer_stop(s->srv->loop, &s->timer);
    bool oom;
    s->mf = maskflow_new(s, &oom);
    if (oom) {
        session_fail(s, "FATAL", "53200", "bulwark: out of memory");
        return;
    }
    /* Messages that are rewritten are held whole (docs/masking.md). */
    if (s->mf && s->upstream.in.limit < maskflow_max_message(s) + 5)
        s->upstream.in.limit = maskflow_max_message(s) + 5;
    rec_session_start(s);
    metrics_session_start(s->srv->metrics, &s->mx, s->role_name, s->target_name);
    /* Query and Parse are held whole for the policy, up to max_statement_bytes. */
    uint64_t hold = s->rt->cfg->max_statement_bytes + 64 * 1024;
    if (hold > s->client.in.limit)
        s->client.in.limit = hold;
    if (s->role->end_session_at_token_expiry) {
        double left = (double)s->token_exp - ev_now(s->srv->loop);
        ev_timer_set(&s->expiry, left > 0 ? left : 0., 0.);
        ev_timer_start(s->srv->loop, &s->expiry);
    }
    char q1[300], q2[300];
    log_event(LOG_INFO, "session_start",
              "session=%s peer=%s role=%s target=%s sub=%s tls=%s application_name=%s worker=%d",
              s->id, s->peer, s->role_name, s->target_name, log_q(q1, sizeof(q1), s->subject),
              ep_tls_version(&s->client), log_q(q2, sizeof(q2), s->app_name), s->srv->worker_id);
    if (buf_unread(&s->client.in) > 0)
        relay_c2u(s);
    if (DEAD(s))
        return;
    session_flush_client(s);
}

/* What the gateway learns from a whole backend message on its way to the
 * client (after masking rewrote it): the audit, command tags, the cycle's end. */
static void observe_backend(session_t *s, char type, const uint8_t *body, size_t len)
{
    rec_backend(s, type, body, len);
    if (type == 'C')
        gate_command_complete(s, body, len);
    char status;
    if (type == 'Z' && pgw_read_ready(body, len, &status) == 0) {
        metrics_upstream_ready(s->srv->metrics, &s->mx, s->target_name);
        s->tx_status = status;
        gate_ready(s, status);
    }
}

/* A backend message masking must see whole (maskflow.h): rewritten before
 * the audit observes it and the client gets it. 1 = handled, 0 = wait for
 * the rest, -1 = the session ended. */
static int u2c_masked(session_t *s, const pgw_hdr_t *h)
{
    endpoint_t *c = &s->client, *u = &s->upstream;
    size_t total = 5 + (size_t)h->len;
    if (total > maskflow_max_message(s) + 5) {
        session_fail(s, "FATAL", "54000",
                     "bulwark: a result message of %zu bytes is larger than masking.max_row_bytes "
                     "(%llu); the session is closed rather than send it unmasked",
                     total, (unsigned long long)maskflow_max_message(s));
        return -1;
    }
    if (buf_unread(&u->in) < total)
        return 0;
    const uint8_t *msg = buf_head(&u->in), *body = msg + 5;
    const uint8_t *rep;
    size_t replen;
    mf_verdict_t v = maskflow_u2c(s, h->type, body, h->len, &rep, &replen);
    if (v == MF_FAIL || DEAD(s) || s->state == ST_CLOSING)
        return -1;
    if (v == MF_SWALLOW) {
        buf_consume(&u->in, total);
        return 1;
    }
    if (h->type == 'E' && gate_backend_error(s, body, h->len)) {
        s->last_backend_type = 'E';
        buf_consume(&u->in, total);
        return 1;
    }
    const uint8_t *out = msg;
    size_t outlen = total;
    if (v == MF_REPLACED || (v == MF_OBSERVE && rep)) {
        out = rep;
        outlen = replen;
    }
    /* The audit sees a message as the client gets it. COPY data is not
     * observed: its rewrite may be several messages or none. */
    bool observe =
        h->type == 'Z' || h->type == 'E' || h->type == 'C' ||
        (rec_inflight(s) && (strchr("TIs", h->type) || (h->type == 'D' && rec_wants_rows(s))));
    bool single = outlen >= 5 && (size_t)rd_u32(out + 1) + 1 == outlen;
    if (observe && single && outlen <= MAX_LOGIN_MESSAGE + 5)
        observe_backend(s, h->type, out + 5, outlen - 5);
    if (v != MF_OBSERVE) {
        s->last_backend_type = h->type;
        buf_append(&c->out, out, outlen);
    }
    buf_consume(&u->in, total);
    if (buf_unread(&c->out) > OUT_HIWAT)
        s->upstream_paused = true;
    return 1;
}

/* Upstream → client. Only ReadyForQuery is looked into (for the transaction
 * status); everything else streams. */
static bool relay_u2c_some(session_t *s)
{
    endpoint_t *c = &s->client, *u = &s->upstream;
    size_t before = buf_unread(&u->in);
    while (buf_unread(&u->in) > 0 && !s->upstream_paused) {
        if (s->u2c_left > 0) {
            size_t n = buf_unread(&u->in) < s->u2c_left ? buf_unread(&u->in) : s->u2c_left;
            pass(u, c, n);
            s->u2c_left -= n;
            continue;
        }
        pgw_hdr_t h;
        int r = pgw_frame(buf_head(&u->in), buf_unread(&u->in), MAX_MESSAGE_BODY, &h);
        if (r == 0)
            break;
        if (r < 0 || !backend_type_ok(h.type)) {
            session_fail(s, "FATAL", "08P01", "bulwark: invalid message from the upstream server");
            return false;
        }
        size_t total = 5 + (size_t)h.len;
        if (s->mf && maskflow_u2c_whole(s, h.type)) {
            int m = u2c_masked(s, &h);
            if (m < 0)
                return false;
            if (m == 0)
                break;
            continue;
        }
        bool observe =
            h.type == 'Z' || h.type == 'E' || h.type == 'C' ||
            (rec_inflight(s) && (strchr("TIs", h.type) || (h.type == 'D' && rec_wants_rows(s))));
        if (observe && total <= MAX_LOGIN_MESSAGE) {
            if (buf_unread(&u->in) < total)
                break;
            const uint8_t *body = buf_head(&u->in) + 5;
            s->last_backend_type = h.type;
            if (h.type == 'E' && gate_backend_error(s, body, h.len)) {
                buf_consume(&u->in, total);
                continue;
            }
            observe_backend(s, h.type, body, h.len);
        }
        s->last_backend_type = h.type;
        size_t n = buf_unread(&u->in) < total ? buf_unread(&u->in) : total;
        pass(u, c, n);
        s->u2c_left = total - n;
        if (buf_unread(&c->out) > OUT_HIWAT)
            s->upstream_paused = true;
    }
    s->bytes_u2c += before - buf_unread(&u->in);
    if (c->out.failed) {
        session_close(s, "out of memory relaying to client");
        return false;
    }
    io_status_t st = ep_flush(c);
    if (st == IO_EOF || st == IO_ERR) {
        session_close(s, "client connection lost");
        return false;
    }
    if (s->upstream_paused && buf_unread(&c->out) < OUT_LOWAT) {
        s->upstream_paused = false;
        return buf_unread(&u->in) > 0;
    }
    return false;
}

static void relay_u2c(session_t *s)
{
    while (relay_u2c_some(s))
        ;
    /* A catalog read for masking ended: the client's input waited for it. */
    if (!DEAD(s) && maskflow_resume_pending(s))
        relay_c2u(s);
    if (!DEAD(s))
        session_update_watchers(s);
}

static void upstream_lost(session_t *s)
{
    metrics_upstream_error(s->srv->metrics, s->target_name, "lost");
    if (s->u2c_left > 0) {
        session_close(s, "upstream closed mid-message");
        return;
    }
    if (s->last_backend_type == 'E') {
        /* The server said why (e.g. FATAL 57P01); let that be the last word. */
        upstream_close(s);
        s->state = ST_CLOSING;
        ev_timer_set(&s->timer, CLOSE_FLUSH_TIMEOUT, 0.);
        ev_timer_start(s->srv->loop, &s->timer);
        session_flush_client(s);
        return;
    }
    session_fail(s, "ERROR", "08006", "bulwark: lost connection to the upstream server");
}

static void upstream_relay_readable(session_t *s)
{
    for (int rounds = 0; rounds < 4 && !DEAD(s) && !s->upstream_paused; rounds++) {
        io_status_t st = ep_fill(&s->upstream);
        if (st == IO_EOF || st == IO_ERR) {
            relay_u2c(s); /* what was read before the end still goes out */
            if (!DEAD(s))
                upstream_lost(s);
            return;
        }
        if (st == IO_AGAIN)
            return;
        metrics_upstream_bytes(s->srv->metrics, &s->mx, s->target_name);
        relay_u2c(s);
        if (!s->upstream.ssl || SSL_pending(s->upstream.ssl) == 0)
            return;
    }
    if (!DEAD(s) && s->upstream.ssl && SSL_pending(s->upstream.ssl) > 0 && !s->upstream_paused)
        ev_feed_event(s->srv->loop, &s->upstream.rw, EV_READ);
}

void upstream_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    session_t *s = w->data;
    if (s->state != ST_RELAY) {
        upstream_login_io(s, revents);
        return;
    }
    if ((revents & EV_WRITE) || s->upstream.write_wants_read) {
        flush_upstream(s);
        if (DEAD(s))
            return;
    }
    if (revents & EV_READ)
        upstream_relay_readable(s);
}
