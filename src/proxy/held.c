/*
 * Holds for a human's approval (SPEC 6, docs/approvals.md).
 *
 * A statement the policy decides `review` is looked up first among the
 * grants (an approval given --for a duration, or a one-use approval of a
 * reject-mode request) for this identity (iss, sub, role, target) and the
 * statement's libpg_query fingerprint; a grant lets it through. Otherwise a
 * request is created (src/approval/; written by the approval worker thread,
 * never on the loop) and:
 *
 *   reject mode   the statement is refused at once (42501 naming the request)
 *   hold mode     the session is parked: the held message (a Query, or the
 *                 Parse that opens an extended-protocol group) stays at the
 *                 head of the client's input, so everything the client
 *                 pipelined behind it waits in order, while every other
 *                 session carries on. A NOTICE tells the client the request
 *                 id and how to approve it.
 *
 * The server's poll timer (every approvals.poll_interval, only while some
 * session holds) reads each held request in a read transaction and moves
 * the hold to approved (the statement goes on: gate_resume), denied (42501
 * with the approver and reason), or, past the rule's timeout, to 57014. A
 * cancel request for the session ends the hold with 57014 and withdraws the
 * request; so does the client going away.
 *
 * With the shared store (state.backend "postgres", several replicas) a
 * one-use grant found in this replica's table may be in use on another
 * replica at the same moment, so its use is not taken on trust: the
 * statement is held the same way (a `held` with claim set: no NOTICE, no
 * request, nothing withdrawn) while the approval worker claims the grant
 * in the database (appr_claim: one locked, conditional write). Its answer
 * comes back under the hold's tag (approval_claimed): confirmed, the
 * statement runs; already used (or revoked) elsewhere, 42501 naming the
 * approval; the store failing or unavailable, 42501 too (fail closed). A
 * cancel ends the wait with 57014; the claim, once sent, may still spend
 * the grant. The LMDB store (one gateway) needs none of this: its uses are
 * counted at once in this process (appr_worker_used).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "approval/approval.h"
#include "audit/audit.h"
#include "metrics/metrics.h"
#include "pgwire/pgwire.h"
#include "proxy/internal.h"
#include "proxy/workers.h"
#include "util/dur.h"
#include "util/log.h"

static int64_t wall_us(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

static void poll_arm(server_t *srv)
{
    if (!ev_is_active(&srv->approvals_poll)) {
        double iv = (double)srv->rt->cfg->approvals.poll_interval_ms / 1000.0;
        ev_timer_set(&srv->approvals_poll, iv, iv);
        ev_timer_start(srv->loop, &srv->approvals_poll);
    }
}

/* The NOTICE can only go between two messages of the upstream's stream. */
static void send_notice(session_t *s)
{
    held_t *h = s->held;
    if (h->notice_sent || s->u2c_left > 0 || s->state != ST_RELAY)
        return;
    char msg[700], dur[32];
    snprintf(msg, sizeof(msg),
             "bulwark: statement held for approval: request %llu (rule \"%s\"); it waits up to "
             "%s. Approve with: bulwark approve %llu (or APPROVE %llu in the admin console)",
             (unsigned long long)h->id, h->rule, dur_format(h->timeout_ms, dur, sizeof(dur)),
             (unsigned long long)h->id, (unsigned long long)h->id);
    pgw_error_t n = {.severity = "NOTICE", .sqlstate = "01000", .message = msg};
    pgw_write_error_full(&s->client.out, 'N', &n);
    h->notice_sent = true;
    session_flush_client(s);
}

static appr_req_t *new_request(session_t *s, const policy_result_t *r, const char *sql,
                               const char *fp, uint64_t id)
{
    appr_req_t *q = calloc(1, sizeof(*q));
    if (!q)
        return NULL;
    q->id = id;
    q->state = APPR_PENDING;
    q->session = strdup(s->id);
    q->sub = strdup(s->subject ? s->subject : "");
    q->iss = strdup(s->issuer ? s->issuer : "");
    q->role = strdup(s->role_name);
    q->target = strdup(s->target_name);
    q->sql = strdup(sql);
    q->fingerprint = strdup(fp);
    q->rule = strdup(r->rule ? r->rule : "");
    q->reject = r->review.reject;
    q->created_us = wall_us();
    q->expires_us = q->created_us + r->review.timeout_ms * 1000;
    q->approvers = calloc(r->review.n_approvers + 1, sizeof(char *));
    for (size_t i = 0; q->approvers && i < r->review.n_approvers; i++)
        if ((q->approvers[q->n_approvers] = strdup(r->review.approvers[i])))
            q->n_approvers++;
    if (!q->session || !q->sub || !q->iss || !q->role || !q->target || !q->sql || !q->fingerprint ||
        !q->rule || !q->approvers) {
        appr_req_free(q);
        free(q);
        return NULL;
    }
    return q;
}

/* FNV-1a over the fields that make a grant's key. */
static uint64_t request_key(const appr_key_t *k)
{
    uint64_t h = 1469598103934665603ull;
    const char *parts[] = {k->iss, k->sub, k->role, k->target, k->fingerprint};
    for (size_t i = 0; i < 5; i++)
        for (const char *c = parts[i];; c++) {
            h = (h ^ (uint8_t)*c) * 1099511628211ull;
            if (!*c)
                break;
        }
    return h;
}

/* A reject-mode request still pending (or not yet written) for the same key. */
static uint64_t reuse_pending(session_t *s, uint64_t rkey)
{
    appr_worker_t *w = s->srv->approvals;
    uint64_t id = appr_worker_pending_for(w, rkey);
    if (!id)
        return 0;
    appr_req_t r;
    appr_rc_t rc = appr_get(appr_worker_store(w), id, &r);
    bool pending = rc == APPR_OK && r.state == APPR_PENDING && r.expires_us > wall_us() &&
                   !strcmp(r.sub, s->subject ? s->subject : "") && !strcmp(r.role, s->role_name) &&
                   !strcmp(r.target, s->target_name);
    if (rc == APPR_OK)
        appr_req_free(&r);
    return pending ? id : 0;
}

/* The shared store: hold the statement until the worker's claim of grant gid
 * is confirmed (approval_claimed). */
static review_t claim_grant(session_t *s, const policy_result_t *r, uint64_t gid, review_out_t *out)
{
    held_t *h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(out->message, sizeof(out->message), "%s; out of memory", r->message);
        return REVIEW_REFUSE;
    }
    h->claim = true;
    h->claim_tag = worker_tag(s->srv);
    if (appr_worker_claim(s->srv->approvals, gid, h->claim_tag) < 0) {
        free(h);
        snprintf(out->message, sizeof(out->message), "%s; the approval store is busy", r->message);
        return REVIEW_REFUSE;
    }
    h->id = gid;
    h->notice_sent = true; /* nobody is asked: nothing to tell */
    h->expires_us = wall_us() + r->review.timeout_ms * 1000;
    h->timeout_ms = r->review.timeout_ms;
    snprintf(h->rule, sizeof(h->rule), "%s", r->rule ? r->rule : "");
    s->held = h;
    s->srv->nheld++;
    out->approval = gid;
    log_event(LOG_DEBUG, "approval_grant_claim", "session=%s id=%llu", s->id,
              (unsigned long long)gid);
    poll_arm(s->srv);
    return REVIEW_HOLD;
}

review_t approval_review(session_t *s, const char *sql, size_t len, const policy_result_t *r,
                         review_out_t *out)
{
    appr_worker_t *w = s->srv->approvals;
    memset(out, 0, sizeof(*out));
    char fp[17];
    if (!w) {
        snprintf(out->message, sizeof(out->message), "%s; approvals need the %s, which is not open",
                 r->message,
                 s->rt->cfg->state.postgres ? "approvals state store (PostgreSQL)" : "audit store");
        return REVIEW_REFUSE;
    }
    char why[200];
    if (!appr_available(appr_worker_store(w), why, sizeof(why))) {
        /* fail closed: grants may have been revoked, decisions cannot be learned */
        snprintf(out->message, sizeof(out->message),
                 "%s; the approvals state store (PostgreSQL) is unavailable: %s", r->message, why);
        return REVIEW_REFUSE;
    }
    if (policy_fingerprint(sql, len, fp) < 0) {
        snprintf(out->message, sizeof(out->message), "%s (no fingerprint)", r->message);
        return REVIEW_REFUSE;
    }
    appr_key_t key = {s->issuer ? s->issuer : "", s->subject ? s->subject : "", s->role_name,
                      s->target_name, fp};
    uint64_t gid;
    int64_t until;
    if (appr_find_grant(appr_worker_store(w), &key, wall_us(), appr_worker_used, w, &gid, &until) ==
        APPR_OK) {
        if (!until && appr_shared(appr_worker_store(w)))
            return claim_grant(s, r, gid, out); /* another replica may be using it too */
        if (!until && appr_worker_consume(w, gid) < 0) {
            snprintf(out->message, sizeof(out->message), "%s; the approval store is busy",
                     r->message);
            return REVIEW_REFUSE;
        }
        out->approval = gid;
        out->grant_until_us = until;
        log_event(LOG_INFO, "approval_grant_used", "session=%s id=%llu fingerprint=%s", s->id,
                  (unsigned long long)gid, fp);
        return REVIEW_PASS;
    }
    uint64_t rkey = request_key(&key);
    if (r->review.reject) {
        uint64_t old = reuse_pending(s, rkey);
        if (old) {
            out->approval = old;
            snprintf(out->message, sizeof(out->message),
                     "%s: approval request %llu is pending; once it is approved (bulwark approve "
                     "%llu), run the statement again",
                     r->message, (unsigned long long)old, (unsigned long long)old);
            return REVIEW_REFUSE;
        }
    }
    uint64_t id = appr_worker_next_id(w);
    if (!id) {
        snprintf(out->message, sizeof(out->message),
                 "%s; the approvals state store (PostgreSQL) is unavailable: no request id",
                 r->message);
        return REVIEW_REFUSE;
    }
    appr_req_t *q = new_request(s, r, sql, fp, id);
    const char *hook = s->rt->cfg->approvals.webhook_url;
    if (q && hook && s->srv->webhook &&
        appr_webhook_post(s->srv->webhook, hook, id, appr_webhook_payload(q)) < 0)
        log_event(LOG_WARN, "approval_webhook_dropped", "id=%llu reason=queue_full",
                  (unsigned long long)id);
    if (!q || appr_worker_create(w, q) < 0) {
        free(q);
        snprintf(out->message, sizeof(out->message), "%s; cannot create an approval request",
                 r->message);
        return REVIEW_REFUSE;
    }
    free(q);
    out->approval = id;
    if (r->review.reject)
        appr_worker_remember_pending(w, rkey, id);
    log_event(LOG_INFO, "approval_requested", "session=%s id=%llu rule=%s mode=%s", s->id,
              (unsigned long long)id, r->rule ? r->rule : "-",
              r->review.reject ? "reject" : "hold");
    if (r->review.reject) {
        snprintf(out->message, sizeof(out->message),
                 "%s: approval request %llu created; once it is approved (bulwark approve %llu), "
                 "run the statement again",
                 r->message, (unsigned long long)id, (unsigned long long)id);
        return REVIEW_REFUSE;
    }
    held_t *h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(out->message, sizeof(out->message), "%s; out of memory", r->message);
        return REVIEW_REFUSE;
    }
    h->id = id;
    h->expires_us = wall_us() + r->review.timeout_ms * 1000;
    h->timeout_ms = r->review.timeout_ms;
    snprintf(h->rule, sizeof(h->rule), "%s", r->rule ? r->rule : "");
    s->held = h;
    s->srv->nheld++;
    metrics_approvals_pending(s->srv->metrics, s->role_name, +1);
    send_notice(s);
    poll_arm(s->srv);
    return REVIEW_HOLD;
}

/* The decision as an audit record of the session, linked to the request
 * and to the held statement's STATEMENT record. */
int approval_record(session_t *s)
{
    held_t *h = s->held;
    if (h->noted)
        return 0;
    h->noted = true;
    if (h->claim) {
        /* nobody decided anything: the statement's own record (its approval
         * named) is what must be durable before it runs */
        h->note_seq = h->stmt_seq;
        return 0;
    }
    if (!s->srv->audit)
        return 0;
    cJSON *f = cJSON_CreateObject();
    cJSON_AddStringToObject(f, "event", "approval");
    cJSON_AddNumberToObject(f, "approval", (double)h->id);
    const char *decision = h->outcome == HELD_APPROVED       ? "approved"
                           : !strcmp(h->sqlstate, "42501")   ? "denied"
                           : strstr(h->message, "withdrawn") ? "withdrawn"
                                                             : "timeout";
    cJSON_AddStringToObject(f, "decision", decision);
    if (h->by[0]) {
        cJSON_AddStringToObject(f, "by", h->by);
        cJSON_AddStringToObject(f, "by_role", h->by_role);
        cJSON_AddStringToObject(f, "via", h->via);
    }
    if (h->outcome == HELD_REFUSED)
        cJSON_AddStringToObject(f, "message", h->message);
    if (h->grant_until_us)
        cJSON_AddNumberToObject(f, "grant_until", (double)h->grant_until_us);
    if (h->stmt_seq)
        cJSON_AddNumberToObject(f, "statement", (double)h->stmt_seq);
    if (audit_append(s->srv->audit, AUDIT_REC_NOTE, s->id, f, &h->note_seq) < 0) {
        log_event(LOG_ERROR, "audit_append_failed", "session=%s type=note event=approval", s->id);
        return -1;
    }
    return 0;
}

void approval_end(session_t *s, const char *why)
{
    held_t *h = s->held;
    if (!h)
        return;
    if (h->outcome == HELD_PENDING && h->claim)
        log_event(LOG_INFO, "approval_claim_abandoned", "session=%s id=%llu reason=\"%s\"", s->id,
                  (unsigned long long)h->id, why);
    else if (h->outcome == HELD_PENDING)
        metrics_approvals_pending(s->srv->metrics, s->role_name, -1);
    if (h->outcome == HELD_PENDING && !h->claim && s->srv->approvals) {
        (void)appr_worker_close_pending(s->srv->approvals, h->id, APPR_WITHDRAWN);
        log_event(LOG_INFO, "approval_withdrawn", "session=%s id=%llu reason=\"%s\"", s->id,
                  (unsigned long long)h->id, why);
    }
    s->held = NULL;
    s->srv->nheld--;
    free(h);
}

static void settle_outcome(session_t *s, held_outcome_t o, const char *sqlstate, const char *msg)
{
    held_t *h = s->held;
    if (h->outcome == HELD_PENDING && o != HELD_PENDING && !h->claim)
        metrics_approvals_pending(s->srv->metrics, s->role_name, -1);
    h->outcome = o;
    snprintf(h->sqlstate, sizeof(h->sqlstate), "%s", sqlstate);
    snprintf(h->message, sizeof(h->message), "%s", msg);
}

bool approval_cancel(session_t *s)
{
    held_t *h = s->held;
    if (!h || h->outcome != HELD_PENDING)
        return false;
    char msg[200];
    if (h->claim) {
        /* the claim is on its way: it may still spend the grant */
        snprintf(msg, sizeof(msg),
                 "canceling statement due to user request (approval %llu was not used)",
                 (unsigned long long)h->id);
        settle_outcome(s, HELD_REFUSED, "57014", msg);
        log_event(LOG_INFO, "approval_claim_cancelled", "session=%s id=%llu", s->id,
                  (unsigned long long)h->id);
        session_resume(s);
        return true;
    }
    snprintf(msg, sizeof(msg),
             "canceling statement due to user request (approval request %llu withdrawn)",
             (unsigned long long)h->id);
    (void)appr_worker_close_pending(s->srv->approvals, h->id, APPR_WITHDRAWN);
    settle_outcome(s, HELD_REFUSED, "57014", msg);
    log_event(LOG_INFO, "approval_withdrawn", "session=%s id=%llu reason=cancel", s->id,
              (unsigned long long)h->id);
    session_resume(s);
    return true;
}

/* A claim still unanswered: fail closed once the shared store is down (its
 * answer cannot be trusted to come) or the rule's timeout has passed. */
static void poll_claim(session_t *s, int64_t now)
{
    held_t *h = s->held;
    char why[200], msg[600], dur[32];
    if (!appr_available(appr_worker_store(s->srv->approvals), why, sizeof(why))) {
        snprintf(msg, sizeof(msg),
                 "bulwark: approval %llu could not be used: the approvals state store "
                 "(PostgreSQL) is unavailable: %s",
                 (unsigned long long)h->id, why);
        settle_outcome(s, HELD_REFUSED, "42501", msg);
    } else if (now >= h->expires_us) {
        snprintf(msg, sizeof(msg),
                 "bulwark: canceling statement: the use of approval %llu was not confirmed "
                 "within %s",
                 (unsigned long long)h->id, dur_format(h->timeout_ms, dur, sizeof(dur)));
        settle_outcome(s, HELD_REFUSED, "57014", msg);
    }
}

void approval_claimed(server_t *srv, const appr_result_t *res)
{
    session_t *s = srv->sessions;
    while (s && !(s->state == ST_RELAY && s->held && s->held->claim &&
                  s->held->claim_tag == res->tag && s->held->outcome == HELD_PENDING))
        s = s->next;
    if (!s) {
        /* the session went away or stopped waiting; the grant is spent if rc is 0 */
        log_event(LOG_INFO, "approval_claim_orphaned", "id=%llu rc=%d", (unsigned long long)res->id,
                  res->rc);
        return;
    }
    held_t *h = s->held;
    char msg[600];
    if (res->rc == APPR_OK) {
        settle_outcome(s, HELD_APPROVED, "", "");
        log_event(LOG_INFO, "approval_grant_used", "session=%s id=%llu confirmed=yes", s->id,
                  (unsigned long long)h->id);
    } else {
        if (res->rc == APPR_NOT_GRANT)
            snprintf(msg, sizeof(msg),
                     "bulwark: approval %llu was %s; run the statement again to ask for a new "
                     "approval",
                     (unsigned long long)h->id, res->err[0] ? res->err : "already used");
        else if (res->rc == APPR_NOT_FOUND)
            snprintf(msg, sizeof(msg), "bulwark: approval %llu no longer exists",
                     (unsigned long long)h->id);
        else
            snprintf(msg, sizeof(msg),
                     "bulwark: approval %llu could not be used: the approvals state store "
                     "(PostgreSQL) is unavailable: %s",
                     (unsigned long long)h->id, res->err[0] ? res->err : "cannot write");
        settle_outcome(s, HELD_REFUSED, "42501", msg);
        log_event(LOG_INFO, "approval_grant_refused", "session=%s id=%llu rc=%d reason=\"%s\"",
                  s->id, (unsigned long long)h->id, res->rc, res->err);
    }
    session_resume(s);
}

/* One held session: what its request says now. */
static void poll_one(session_t *s, int64_t now)
{
    held_t *h = s->held;
    if (h->claim) {
        poll_claim(s, now);
        return;
    }
    appr_req_t r;
    appr_rc_t rc = appr_get(appr_worker_store(s->srv->approvals), h->id, &r);
    char msg[600], dur[32];
    if (rc == APPR_OK && r.state == APPR_APPROVED) {
        h->grant_until_us = r.grant_until_us;
        snprintf(h->by, sizeof(h->by), "%s", r.by ? r.by : "");
        snprintf(h->by_role, sizeof(h->by_role), "%s", r.by_role ? r.by_role : "");
        snprintf(h->via, sizeof(h->via), "%s", r.via ? r.via : "");
        settle_outcome(s, HELD_APPROVED, "", "");
    } else if (rc == APPR_OK && r.state == APPR_DENIED) {
        snprintf(h->by, sizeof(h->by), "%s", r.by ? r.by : "");
        snprintf(h->by_role, sizeof(h->by_role), "%s", r.by_role ? r.by_role : "");
        snprintf(h->via, sizeof(h->via), "%s", r.via ? r.via : "");
        snprintf(msg, sizeof(msg), "bulwark: approval request %llu denied by %s (role %s)%s%s",
                 (unsigned long long)h->id, h->by, h->by_role, r.reason ? ": " : "",
                 r.reason ? r.reason : "");
        settle_outcome(s, HELD_REFUSED, "42501", msg);
    } else if ((rc == APPR_OK && r.state != APPR_PENDING) || now >= h->expires_us) {
        if (rc == APPR_OK && r.state == APPR_PENDING)
            (void)appr_worker_close_pending(s->srv->approvals, h->id, APPR_TIMEOUT);
        snprintf(msg, sizeof(msg),
                 "bulwark: canceling statement: approval request %llu was not decided within %s",
                 (unsigned long long)h->id, dur_format(h->timeout_ms, dur, sizeof(dur)));
        settle_outcome(s, HELD_REFUSED, "57014", msg);
    }
    if (rc == APPR_OK)
        appr_req_free(&r);
}

void approval_poll(server_t *srv)
{
    int64_t now = wall_us();
    for (session_t *s = srv->sessions, *next; s; s = next) {
        next = s->next;
        if (s->state != ST_RELAY || !s->held)
            continue;
        send_notice(s);
        if (s->state != ST_RELAY || !s->held)
            continue;
        if (s->held->outcome == HELD_PENDING)
            poll_one(s, now);
        if (s->held->outcome != HELD_PENDING)
            session_resume(s);
    }
    if (!srv->nheld)
        ev_timer_stop(srv->loop, &srv->approvals_poll);
}
