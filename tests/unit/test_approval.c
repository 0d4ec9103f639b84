/*
 * Unit tests for the approval request store (src/approval/): states and
 * their transitions, grants (one use, for a duration, revoked), who may
 * decide, and the gateway's writer thread, on a fresh LMDB environment.
 */
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "helpers.h"

#include "approval/approval.h"

#define T0 1700000000000000LL /* µs */

static char dir[TEST_DIR_MAX];

static int setup(void **state)
{
    test_mkdtemp(dir, sizeof(dir), "bw-appr");
    char err[256];
    appr_store_t *st = appr_open(dir, err, sizeof(err));
    assert_non_null(st);
    *state = st;
    return 0;
}

static int teardown(void **state)
{
    appr_close(*state);
    test_rmtree(dir);
    return 0;
}

static char *approvers[] = {"dba", "oncall"};

static appr_req_t request(uint64_t id, bool reject, const char *fp)
{
    appr_req_t r = {.id = id,
                    .state = APPR_PENDING,
                    .session = "s1",
                    .sub = "svc-agent-1",
                    .iss = "dev",
                    .role = "agent",
                    .target = "shop",
                    .sql = "DELETE FROM orders WHERE id = 1",
                    .fingerprint = (char *)fp,
                    .rule = "orders-fix",
                    .reject = reject,
                    .approvers = approvers,
                    .n_approvers = 2,
                    .created_us = T0,
                    .expires_us = T0 + 60 * 1000000LL};
    return r;
}

static appr_key_t key_of(const char *fp)
{
    return (appr_key_t){"dev", "svc-agent-1", "agent", "shop", fp};
}

static appr_decision_t approve_at(int64_t now, int64_t grant_ms)
{
    return (appr_decision_t){.approve = true,
                             .by = "alice",
                             .by_role = "dba",
                             .os_user = "root",
                             .via = "cli",
                             .grant_ms = grant_ms,
                             .now_us = now};
}

static void create(appr_store_t *st, appr_req_t r)
{
    char err[200];
    assert_int_equal(appr_create(st, &r, err, sizeof(err)), APPR_OK);
}

static void stores_and_reads_back_a_request(void **state)
{
    appr_store_t *st = *state;
    assert_int_equal(appr_last_id(st), 0);
    create(st, request(7, false, "aaaa"));
    assert_int_equal(appr_last_id(st), 7);
    appr_req_t r;
    assert_int_equal(appr_get(st, 7, &r), APPR_OK);
    assert_int_equal(r.state, APPR_PENDING);
    assert_string_equal(r.sql, "DELETE FROM orders WHERE id = 1");
    assert_string_equal(r.fingerprint, "aaaa");
    assert_int_equal(r.n_approvers, 2);
    assert_string_equal(r.approvers[1], "oncall");
    assert_int_equal(r.expires_us, T0 + 60 * 1000000LL);
    assert_false(r.reject);
    appr_req_free(&r);
    assert_int_equal(appr_get(st, 8, &r), APPR_NOT_FOUND);
}

static void decides_a_pending_request_only_once(void **state)
{
    appr_store_t *st = *state;
    char err[200];
    create(st, request(1, false, "f1"));
    appr_decision_t d = approve_at(T0 + 1000, 0);
    appr_req_t out;
    assert_int_equal(appr_decide(st, 1, &d, &out, err, sizeof(err)), APPR_OK);
    assert_int_equal(out.state, APPR_APPROVED);
    assert_string_equal(out.by, "alice");
    appr_req_free(&out);
    d.approve = false;
    assert_int_equal(appr_decide(st, 1, &d, &out, err, sizeof(err)), APPR_NOT_PENDING);
    assert_int_equal(out.state, APPR_APPROVED);
    appr_req_free(&out);
    /* a hold-mode approval without --for is no grant */
    uint64_t id;
    int64_t until;
    appr_key_t k = key_of("f1");
    assert_int_equal(appr_find_grant(st, &k, T0 + 2000, NULL, NULL, &id, &until), APPR_NOT_FOUND);
    assert_int_equal(appr_close_pending(st, 1, APPR_TIMEOUT, T0 + 3000), APPR_NOT_PENDING);
}

static void refuses_decisions_after_expiry_and_times_out(void **state)
{
    appr_store_t *st = *state;
    char err[200];
    create(st, request(2, false, "f2"));
    appr_decision_t d = approve_at(T0 + 61 * 1000000LL, 0);
    assert_int_equal(appr_decide(st, 2, &d, NULL, err, sizeof(err)), APPR_EXPIRED);
    assert_int_equal(appr_close_pending(st, 2, APPR_TIMEOUT, T0 + 61 * 1000000LL), APPR_OK);
    appr_req_t r;
    assert_int_equal(appr_get(st, 2, &r), APPR_OK);
    assert_int_equal(r.state, APPR_TIMEOUT);
    assert_string_equal(r.via, "gateway");
    appr_req_free(&r);
    d.now_us = T0;
    assert_int_equal(appr_decide(st, 2, &d, NULL, err, sizeof(err)), APPR_NOT_PENDING);
    assert_int_equal(appr_decide(st, 99, &d, NULL, err, sizeof(err)), APPR_NOT_FOUND);
}

static void reject_mode_approval_is_a_one_use_grant(void **state)
{
    appr_store_t *st = *state;
    char err[200];
    create(st, request(3, true, "f3"));
    appr_decision_t d = approve_at(T0 + 1000, 0);
    assert_int_equal(appr_decide(st, 3, &d, NULL, err, sizeof(err)), APPR_OK);
    uint64_t id = 0;
    int64_t until = -1;
    appr_key_t k = key_of("f3");
    assert_int_equal(appr_find_grant(st, &k, T0 + 2000, NULL, NULL, &id, &until), APPR_OK);
    assert_int_equal(id, 3);
    assert_int_equal(until, 0);
    /* another identity or fingerprint does not match */
    appr_key_t other = key_of("f3");
    other.sub = "svc-agent-2";
    assert_int_equal(appr_find_grant(st, &other, T0, NULL, NULL, &id, &until), APPR_NOT_FOUND);
    appr_key_t fp = key_of("f4");
    assert_int_equal(appr_find_grant(st, &fp, T0, NULL, NULL, &id, &until), APPR_NOT_FOUND);
    assert_int_equal(appr_consume(st, 3), APPR_OK);
    assert_int_equal(appr_find_grant(st, &k, T0 + 3000, NULL, NULL, &id, &until), APPR_NOT_FOUND);
}

static void grant_for_a_duration_lasts_until_it_ends_or_is_revoked(void **state)
{
    appr_store_t *st = *state;
    char err[200];
    create(st, request(4, false, "f5"));
    appr_decision_t d = approve_at(T0, 15 * 60 * 1000);
    assert_int_equal(appr_decide(st, 4, &d, NULL, err, sizeof(err)), APPR_OK);
    uint64_t id;
    int64_t until;
    appr_key_t k = key_of("f5");
    assert_int_equal(appr_find_grant(st, &k, T0 + 1000, NULL, NULL, &id, &until), APPR_OK);
    assert_int_equal(until, T0 + 15 * 60 * 1000000LL);
    assert_int_equal(appr_consume(st, 4), APPR_OK); /* timed grants are not used up */
    assert_int_equal(appr_find_grant(st, &k, T0 + 2000, NULL, NULL, &id, &until), APPR_OK);
    assert_int_equal(appr_find_grant(st, &k, T0 + 16 * 60 * 1000000LL, NULL, NULL, &id, &until),
                     APPR_NOT_FOUND);
    assert_int_equal(appr_revoke(st, 4, "alice", T0 + 3000, err, sizeof(err)), APPR_OK);
    assert_int_equal(appr_find_grant(st, &k, T0 + 4000, NULL, NULL, &id, &until), APPR_NOT_FOUND);
    assert_int_equal(appr_revoke(st, 4, "alice", T0 + 5000, err, sizeof(err)), APPR_NOT_GRANT);
}

static int count(void *arg, const appr_req_t *r)
{
    (*(int *)arg)++;
    return 0;
}

static void lists_pending_all_and_grants(void **state)
{
    appr_store_t *st = *state;
    char err[200];
    create(st, request(1, false, "a"));
    create(st, request(2, true, "b"));
    create(st, request(3, false, "c"));
    appr_decision_t d = approve_at(T0, 0);
    assert_int_equal(appr_decide(st, 2, &d, NULL, err, sizeof(err)), APPR_OK);
    int n = 0;
    assert_int_equal(appr_list(st, APPR_LIST_PENDING, T0, 0, count, &n), 0);
    assert_int_equal(n, 2);
    n = 0; /* past their expiry, pending requests are no longer listed as pending */
    assert_int_equal(appr_list(st, APPR_LIST_PENDING, T0 + 61 * 1000000LL, 0, count, &n), 0);
    assert_int_equal(n, 0);
    n = 0;
    assert_int_equal(appr_list(st, APPR_LIST_ALL, T0, 1, count, &n), 0);
    assert_int_equal(n, 1); /* max_scan */
    appr_req_t r = request(1, false, "a");
    assert_string_equal(appr_state_at(&r, T0), "pending");
    assert_string_equal(appr_state_at(&r, T0 + 61 * 1000000LL), "expired");
    n = 0;
    assert_int_equal(appr_list(st, APPR_LIST_ALL, T0, 0, count, &n), 0);
    assert_int_equal(n, 3);
    n = 0;
    assert_int_equal(appr_list(st, APPR_LIST_GRANTS, T0, 0, count, &n), 0);
    assert_int_equal(n, 1);
}

static void only_listed_roles_decide_and_never_the_requester(void **state)
{
    appr_req_t r = request(5, false, "x");
    char why[300];
    assert_true(appr_may_decide(&r, "dba", "dev", "alice", why, sizeof(why)));
    assert_false(appr_may_decide(&r, "analyst", "dev", "alice", why, sizeof(why)));
    assert_non_null(strstr(why, "not among the approvers"));
    assert_false(appr_may_decide(&r, "dba", "dev", "svc-agent-1", why, sizeof(why)));
    assert_non_null(strstr(why, "own request"));
    /* the same subject from another issuer is someone else */
    assert_true(appr_may_decide(&r, "dba", "other-idp", "svc-agent-1", why, sizeof(why)));
}

static void cli_approver_must_match_an_approver_roles_identity(void **state)
{
    cfg_identity_match_t dba_ids[] = {{.iss = "dev", .sub = "dba-*"}};
    cfg_identity_match_t oncall_ids[] = {{.iss = "dev", .claim = "groups", .includes = "x"}};
    cfg_role_t roles[] = {{.name = "dba", .identities = dba_ids, .n_identities = 1},
                          {.name = "oncall", .identities = oncall_ids, .n_identities = 1},
                          {.name = "agent", .identities = NULL, .n_identities = 0}};
    cfg_t cfg = {.roles = roles, .n_roles = 3};
    appr_req_t r = request(6, false, "x");
    char why[300];
    const char *role = appr_cli_approver_role(&cfg, &r, "dba-bob", why, sizeof(why));
    assert_non_null(role);
    assert_string_equal(role, "dba");
    assert_null(appr_cli_approver_role(&cfg, &r, "mallory", why, sizeof(why)));
    assert_non_null(strstr(why, "approvers: dba, oncall"));
    assert_null(appr_cli_approver_role(&cfg, &r, "svc-agent-1", why, sizeof(why)));
    assert_non_null(strstr(why, "own request"));
}

static void worker_writes_in_order_and_counts_uses_at_once(void **state)
{
    appr_store_t *st = *state;
    char err[200];
    create(st, request(10, true, "w"));
    appr_decision_t d = approve_at(T0, 0);
    assert_int_equal(appr_decide(st, 10, &d, NULL, err, sizeof(err)), APPR_OK);
    appr_worker_t *w = appr_worker_new(st, NULL, NULL);
    assert_non_null(w);
    assert_int_equal(appr_worker_next_id(w), 11);
    assert_int_equal(appr_worker_next_id(w), 12);
    appr_req_t *r = calloc(1, sizeof(*r));
    *r = request(11, false, "v");
    /* the worker owns what it is given: duplicate the strings */
    r->session = strdup("s1"), r->sub = strdup("svc-agent-1"), r->iss = strdup("dev");
    r->role = strdup("agent"), r->target = strdup("shop"), r->sql = strdup("x");
    r->fingerprint = strdup("v"), r->rule = strdup("orders-fix");
    r->approvers = calloc(1, sizeof(char *));
    r->approvers[0] = strdup("dba");
    r->n_approvers = 1;
    assert_int_equal(appr_worker_create(w, r), 0);
    free(r);
    assert_int_equal(appr_worker_close_pending(w, 11, APPR_WITHDRAWN), 0);
    assert_int_equal(appr_worker_consume(w, 10), 0);
    uint64_t id;
    int64_t until;
    appr_key_t k = key_of("w");
    /* counted at once, whether or not the write has landed */
    assert_int_equal(appr_find_grant(st, &k, T0 + 1, appr_worker_used, w, &id, &until),
                     APPR_NOT_FOUND);
    appr_worker_free(w); /* writes what is queued */
    assert_int_equal(appr_find_grant(st, &k, T0 + 1, NULL, NULL, &id, &until), APPR_NOT_FOUND);
    appr_req_t got;
    assert_int_equal(appr_get(st, 11, &got), APPR_OK);
    assert_int_equal(got.state, APPR_WITHDRAWN);
    appr_req_free(&got);
}

static void claim_result(void *arg, const appr_result_t *r)
{
    appr_result_t *out = arg; /* tags 5, 6, 7 */
    if (r->tag >= 5 && r->tag <= 7)
        out[r->tag - 5] = *r;
}

/* appr_claim: a conditional use (the shared store does it in one locked
 * transaction; here LMDB's write transaction), reported back by the worker. */
static void claims_a_one_use_grant_once_and_reports_why_not(void **state)
{
    appr_store_t *st = *state;
    char err[200], why[100] = "";
    create(st, request(20, true, "c"));
    assert_int_equal(appr_claim(st, 20, why, sizeof(why)), APPR_NOT_GRANT); /* pending */
    assert_string_equal(why, "not approved");
    appr_decision_t d = approve_at(T0, 0);
    assert_int_equal(appr_decide(st, 20, &d, NULL, err, sizeof(err)), APPR_OK);
    create(st, request(21, true, "c2"));
    assert_int_equal(appr_decide(st, 21, &d, NULL, err, sizeof(err)), APPR_OK);
    assert_int_equal(appr_revoke(st, 21, "alice", T0 + 1, err, sizeof(err)), APPR_OK);
    assert_int_equal(appr_claim(st, 99, why, sizeof(why)), APPR_NOT_FOUND);

    appr_worker_t *w = appr_worker_new(st, NULL, NULL);
    assert_non_null(w);
    assert_int_equal(appr_worker_claim(w, 20, 5), 0);
    assert_int_equal(appr_worker_claim(w, 20, 6), 0);
    assert_int_equal(appr_worker_claim(w, 21, 7), 0);
    appr_result_t res[3];
    memset(res, 0, sizeof(res));
    for (int i = 0; i < 2500 && !(res[0].tag && res[1].tag && res[2].tag); i++) {
        appr_worker_results(w, claim_result, res);
        usleep(2000);
    }
    assert_int_equal(res[0].tag, 5);
    assert_true(res[0].claim);
    assert_int_equal(res[0].rc, APPR_OK);        /* the first claim wins ... */
    assert_int_equal(res[1].rc, APPR_NOT_GRANT); /* ... the second finds it used */
    assert_string_equal(res[1].err, "already used");
    assert_int_equal(res[2].rc, APPR_NOT_GRANT);
    assert_string_equal(res[2].err, "revoked");
    appr_worker_free(w);
    appr_req_t got;
    assert_int_equal(appr_get(st, 20, &got), APPR_OK);
    assert_true(got.used);
    appr_req_free(&got);
}

static void prunes_old_decided_requests_but_keeps_pending_and_grants(void **state)
{
    appr_store_t *st = *state;
    char err[200];
    const int64_t day = 86400LL * 1000000;
    for (uint64_t id = 1; id <= 5; id++) {
        appr_req_t r = request(id, id == 3, "p");
        r.created_us = T0 + (int64_t)id; /* all old */
        r.expires_us = id == 1 ? T0 + 10 * day : T0 + 60;
        create(st, r);
    }
    appr_req_t young = request(6, false, "p");
    young.created_us = T0 + 5 * day;
    young.expires_us = T0 + 5 * day + 60;
    create(st, young);
    appr_decision_t d = approve_at(T0 + 10, 20LL * 86400 * 1000); /* 2: a 20-day grant */
    assert_int_equal(appr_decide(st, 2, &d, NULL, err, sizeof(err)), APPR_OK);
    d = approve_at(T0 + 10, 0); /* 3: reject mode, one use, then used */
    assert_int_equal(appr_decide(st, 3, &d, NULL, err, sizeof(err)), APPR_OK);
    assert_int_equal(appr_consume(st, 3), APPR_OK);
    assert_int_equal(appr_close_pending(st, 4, APPR_TIMEOUT, T0 + 100), APPR_OK);
    size_t n = 0;
    assert_int_equal(appr_prune(st, T0 + day, T0 + 2 * day, 100, &n), APPR_OK);
    /* 1 still pending, 2 a grant in force, 6 young; 3 (used), 4 (timeout) and 5
     * (pending but expired) go */
    assert_int_equal(n, 3);
    appr_req_t r;
    uint64_t keep[] = {1, 2, 6}, gone[] = {3, 4, 5};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(appr_get(st, keep[i], &r), APPR_OK);
        appr_req_free(&r);
        assert_int_equal(appr_get(st, gone[i], &r), APPR_NOT_FOUND);
    }
    uint64_t id;
    int64_t until;
    appr_key_t k = key_of("p");
    assert_int_equal(appr_find_grant(st, &k, T0 + 2 * day, NULL, NULL, &id, &until), APPR_OK);
    assert_int_equal(id, 2);
}

static void parses_grant_durations(void **state)
{
    int64_t ms;
    assert_true(appr_parse_duration("15m", &ms));
    assert_int_equal(ms, 15 * 60 * 1000);
    assert_false(appr_parse_duration("0s", &ms));
    assert_false(appr_parse_duration("soon", &ms));
    assert_false(appr_parse_duration(NULL, &ms));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(stores_and_reads_back_a_request, setup, teardown),
        cmocka_unit_test_setup_teardown(decides_a_pending_request_only_once, setup, teardown),
        cmocka_unit_test_setup_teardown(refuses_decisions_after_expiry_and_times_out, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(reject_mode_approval_is_a_one_use_grant, setup, teardown),
        cmocka_unit_test_setup_teardown(grant_for_a_duration_lasts_until_it_ends_or_is_revoked,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(lists_pending_all_and_grants, setup, teardown),
        cmocka_unit_test(only_listed_roles_decide_and_never_the_requester),
        cmocka_unit_test(cli_approver_must_match_an_approver_roles_identity),
        cmocka_unit_test_setup_teardown(worker_writes_in_order_and_counts_uses_at_once, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(claims_a_one_use_grant_once_and_reports_why_not, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(prunes_old_decided_requests_but_keeps_pending_and_grants,
                                        setup, teardown),
        cmocka_unit_test(parses_grant_durations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
