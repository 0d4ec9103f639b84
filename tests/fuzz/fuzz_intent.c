/*
 * Intent extraction and decision over arbitrary SQL (src/policy): the query
 * string is decided for the "agent" role of tests/fixtures/policy, through a
 * parse cache and a session whose search_path the allowed statements change,
 * then explained as JSON. Properties checked beyond "no crash": a decision is
 * always one of allow/review/deny; a refusal always carries a SQLSTATE and a
 * message; the cached and uncached decisions agree.
 */
#include "config.h"
#include "fuzz.h"
#include "policy/policy.h"

static cfg_t *cfg;
static policy_set_t *set;
static const policy_role_t *role;
static policy_cache_t *cache;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    cfg = fuzz_load_config("policy/bulwark.json");
    set = policy_set_new(cfg);
    FUZZ_REQUIRE(set, "policy set");
    role = policy_set_role(set, "agent");
    FUZZ_REQUIRE(role, "role agent");
    cache = policy_cache_new(256, 1 << 20);
    FUZZ_REQUIRE(cache, "cache");
    return 0;
}

static void check_result(const policy_result_t *r)
{
    FUZZ_REQUIRE(r->decision == POLICY_ALLOW || r->decision == POLICY_REVIEW ||
                     r->decision == POLICY_DENY,
                 "decision in range");
    if (r->decision != POLICY_ALLOW)
        FUZZ_REQUIRE(r->sqlstate[0] && r->message, "a refusal has a SQLSTATE and a message");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 64 * 1024)
        return 0;
    char *sql = malloc(size + 1);
    memcpy(sql, data, size);
    sql[size] = 0;
    policy_session_t *ps = policy_session_new("\"$user\", public", "agent_rw");
    policy_result_t a, b;
    if (policy_check(role, NULL, ps, sql, size, &a) == 0) {
        check_result(&a);
        char *j = policy_explain_json(&a, sql, size);
        free(j);
        if (policy_check(role, cache, ps, sql, size, &b) == 0) {
            check_result(&b);
            FUZZ_REQUIRE(a.decision == b.decision, "cache agrees");
            policy_session_apply(ps, &b);
            policy_session_txn_end(ps, true);
            policy_result_free(&b);
        }
        policy_result_free(&a);
    }
    char fp[17];
    (void)!policy_fingerprint(sql, size, fp);
    policy_session_free(ps);
    free(sql);
    return 0;
}
