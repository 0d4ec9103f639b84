/*
 * Unit tests for the policy module.
 *
 * The corpora under tests/fixtures/policy/ (intent.tsv: attacks and ordinary
 * statements for role "agent"; clients.tsv: every statement real clients
 * send, which a read-only role with catalog_reads must be allowed) run
 * through the same code path as `bulwark explain --json`: policy_check, then
 * policy_explain_json, and the test reads the decision from that JSON.
 *
 * Corpus format: `expected<TAB>sql`, expected one of allow/review/deny; `#`
 * lines are comments; a line `#role NAME` switches the role for what
 * follows. With expected written `deny/nl` (etc.), the two characters `\n`
 * in the SQL stand for a newline (line comments need one).
 *
 * BULWARK_POLICY_BENCH=N runs the parse+decide benchmark instead (N
 * iterations per case) and prints median and p99 per statement.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <cmocka.h>
#include <pg_query.h>

#include "helpers.h"

#include "config.h"
#include "policy/internal.h"
#include "policy/policy.h"

static cfg_t *cfg;
static policy_set_t *set;

static int setup(void **state)
{
    (void)state;
    cfg_errors_t errs = {0};
    cfg = cfg_load(test_fixture("policy/bulwark.json"), &errs);
    for (size_t i = 0; i < errs.n; i++)
        print_message("config: %s\n", errs.msgs[i]);
    cfg_errors_free(&errs);
    if (!cfg)
        return -1;
    set = policy_set_new(cfg);
    return set ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    policy_set_free(set);
    cfg_release(cfg);
    return 0;
}

static const policy_role_t *role(const char *name)
{
    const policy_role_t *r = policy_set_role(set, name);
    assert_non_null(r);
    return r;
}

/* Check sql and return the JSON explain output, parsed. */
static cJSON *explain(const policy_role_t *r, policy_cache_t *cache, policy_session_t *ps,
                      const char *sql, policy_result_t *res_out)
{
    policy_result_t res;
    assert_int_equal(policy_check(r, cache, ps, sql, strlen(sql), &res), 0);
    char *json = policy_explain_json(&res, sql, strlen(sql));
    assert_non_null(json);
    cJSON *o = cJSON_Parse(json);
    free(json);
    assert_non_null(o);
    if (res_out)
        *res_out = res;
    else
        policy_result_free(&res);
    return o;
}

static const char *jstr(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Decision of sql in a fresh session with the default search_path. */
static const char *decide_fresh(const char *rname, const char *sql)
{
    static char d[16];
    policy_session_t *ps = policy_session_new(NULL, "agent_rw");
    cJSON *o = explain(role(rname), NULL, ps, sql, NULL);
    snprintf(d, sizeof(d), "%s", jstr(o, "decision"));
    cJSON_Delete(o);
    policy_session_free(ps);
    return d;
}

/* ---- corpora ---- */

static void unescape_nl(char *s)
{
    char *o = s;
    for (; *s; s++) {
        if (s[0] == '\\' && s[1] == 'n') {
            *o++ = '\n';
            s++;
        } else {
            *o++ = *s;
        }
    }
    *o = '\0';
}

static int run_corpus(const char *file, const char *default_role, size_t *n_out)
{
    FILE *f = fopen(test_fixture("policy/%s", file), "r");
    assert_non_null(f);
    char *line = NULL;
    size_t cap = 0, n = 0;
    ssize_t got;
    int failures = 0, lineno = 0;
    char rname[64];
    snprintf(rname, sizeof(rname), "%s", default_role);
    policy_cache_t *cache = policy_cache_new(64, 1 << 20);
    assert_non_null(cache);
    while ((got = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r'))
            line[--got] = '\0';
        if (!strncmp(line, "#role ", 6)) {
            snprintf(rname, sizeof(rname), "%s", line + 6);
            continue;
        }
        if (!*line || line[0] == '#')
            continue;
        char *tab = strchr(line, '\t');
        assert_non_null(tab);
        *tab = '\0';
        char *expected = line, *sql = tab + 1;
        char *slash = strchr(expected, '/');
        if (slash) {
            assert_string_equal(slash, "/nl");
            *slash = '\0';
            unescape_nl(sql);
        }
        /* twice: a parse (cache miss) and a cache hit must agree */
        for (int pass = 0; pass < 2; pass++) {
            policy_session_t *ps = policy_session_new(NULL, "agent_rw");
            assert_non_null(ps);
            cJSON *o = explain(role(rname), cache, ps, sql, NULL);
            const char *got_d = jstr(o, "decision");
            if (strcmp(got_d, expected)) {
                char *js = cJSON_PrintUnformatted(o);
                print_message("%s:%d: role %s: expected %s, got %s%s: %s\n  %s\n", file, lineno,
                              rname, expected, got_d, pass ? " (cache hit)" : "", sql, js);
                free(js);
                failures++;
            }
            cJSON_Delete(o);
            policy_session_free(ps);
        }
        n++;
    }
    free(line);
    fclose(f);
    policy_cache_stats_t st;
    policy_cache_stats(cache, &st);
    assert_true(st.hits > 0);
    policy_cache_free(cache);
    *n_out = n;
    return failures;
}

static void attack_corpus_decides_as_expected_for_agent(void **state)
{
    (void)state;
    size_t n;
    int failures = run_corpus("intent.tsv", "agent", &n);
    print_message("intent.tsv: %zu statements, %d failures\n", n, failures);
    assert_true(n >= 280);
    assert_int_equal(failures, 0);
}

static void real_client_statements_are_allowed_for_readonly(void **state)
{
    (void)state;
    size_t n;
    int failures = run_corpus("clients.tsv", "readonly", &n);
    print_message("clients.tsv: %zu statements, %d failures\n", n, failures);
    assert_true(n >= 50);
    assert_int_equal(failures, 0);
}

/* ---- search_path ---- */

static size_t count_objects(const cJSON *o, const char *object)
{
    size_t k = 0;
    const cJSON *s, *a;
    cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(o, "statements"))
        cJSON_ArrayForEach(a, cJSON_GetObjectItemCaseSensitive(s, "accesses")) k +=
        !strcmp(jstr(a, "object"), object);
    return k;
}

static void ambiguous_search_path_checks_every_candidate(void **state)
{
    (void)state;
    policy_session_t *ps = policy_session_new("a, \"B\", public", "tester");
    cJSON *o = explain(role("tester"), NULL, ps, "SELECT * FROM orders", NULL);
    /* a.orders allowed, "B".orders no rule, public.orders allowed: strictest wins */
    assert_int_equal(count_objects(o, "a.orders"), 1);
    assert_int_equal(count_objects(o, "B.orders"), 1);
    assert_int_equal(count_objects(o, "public.orders"), 1);
    assert_string_equal(jstr(o, "decision"), "deny");
    cJSON_Delete(o);

    /* a schema named in the path stays a candidate even when it does not exist
     * yet: another session may create it (and a decoy table) mid-session */
    const char *exist[] = {"a", "public", "pg_catalog"};
    assert_int_equal(policy_session_set_schemas(ps, exist, 3), 0);
    o = explain(role("tester"), NULL, ps, "SELECT * FROM orders", NULL);
    assert_int_equal(count_objects(o, "B.orders"), 1);
    assert_string_equal(jstr(o, "decision"), "deny");
    cJSON_Delete(o);

    /* built-in catalog names resolve to pg_catalog first, and only there */
    o = explain(role("tester"), NULL, ps, "SELECT relname FROM pg_class", NULL);
    assert_int_equal(count_objects(o, "pg_catalog.pg_class"), 1);
    assert_int_equal(count_objects(o, "a.pg_class"), 0);
    cJSON_Delete(o);
    policy_session_free(ps);

    /* "$user" counts only when that schema is known to exist */
    ps = policy_session_new("\"$user\", public", "tester");
    o = explain(role("tester"), NULL, ps, "SELECT * FROM orders", NULL);
    assert_int_equal(count_objects(o, "tester.orders"), 0);
    cJSON_Delete(o);
    const char *exist2[] = {"tester", "public"};
    assert_int_equal(policy_session_set_schemas(ps, exist2, 2), 0);
    o = explain(role("tester"), NULL, ps, "SELECT * FROM orders", NULL);
    assert_int_equal(count_objects(o, "tester.orders"), 1);
    assert_string_equal(jstr(o, "decision"), "deny");
    cJSON_Delete(o);
    policy_session_free(ps);
}

static void search_path_changes_are_tracked_and_settled(void **state)
{
    (void)state;
    const policy_role_t *r = role("tester");
    policy_session_t *ps = policy_session_new("public", "tester");
    policy_result_t res;

    /* within one string, a SET changes what later statements resolve to */
    cJSON *o = explain(r, NULL, ps, "SET search_path = evil; SELECT * FROM orders", NULL);
    assert_int_equal(count_objects(o, "evil.orders"), 1);
    assert_string_equal(jstr(o, "decision"), "deny");
    cJSON_Delete(o);

    /* applied: old and new are candidates until the transaction ends */
    o = explain(r, NULL, ps, "SET search_path TO a", &res);
    assert_string_equal(jstr(o, "decision"), "allow");
    cJSON_Delete(o);
    policy_session_apply(ps, &res);
    policy_result_free(&res);
    o = explain(r, NULL, ps, "SELECT * FROM orders", NULL);
    assert_int_equal(count_objects(o, "a.orders"), 1);
    assert_int_equal(count_objects(o, "public.orders"), 1);
    cJSON_Delete(o);

    /* committed: only the new path */
    policy_session_txn_end(ps, true);
    o = explain(r, NULL, ps, "SELECT * FROM orders", NULL);
    assert_int_equal(count_objects(o, "a.orders"), 1);
    assert_int_equal(count_objects(o, "public.orders"), 0);
    cJSON_Delete(o);

    /* rolled back: the old one */
    o = explain(r, NULL, ps, "SET search_path = public", &res);
    cJSON_Delete(o);
    policy_session_apply(ps, &res);
    policy_result_free(&res);
    policy_session_txn_end(ps, false);
    o = explain(r, NULL, ps, "SELECT * FROM orders", NULL);
    assert_int_equal(count_objects(o, "a.orders"), 1);
    assert_int_equal(count_objects(o, "public.orders"), 0);
    cJSON_Delete(o);

    /* SET then ROLLBACK TO SAVEPOINT: cannot follow, keep both for good */
    o = explain(r, NULL, ps, "SAVEPOINT s; SET search_path = public; ROLLBACK TO SAVEPOINT s",
                &res);
    cJSON_Delete(o);
    policy_session_apply(ps, &res);
    policy_result_free(&res);
    policy_session_txn_end(ps, true);
    o = explain(r, NULL, ps, "SELECT * FROM orders", NULL);
    assert_int_equal(count_objects(o, "a.orders"), 1);
    assert_int_equal(count_objects(o, "public.orders"), 1);
    cJSON_Delete(o);

    /* SET search_path = 'x, y' names one schema "x, y", as in PostgreSQL */
    o = explain(r, NULL, ps, "SET search_path = 'x, y'; SELECT * FROM t", NULL);
    assert_int_equal(count_objects(o, "x, y.t"), 1);
    cJSON_Delete(o);
    policy_session_free(ps);
}

/* ---- PREPARE / EXECUTE ---- */

static void apply_ok(policy_session_t *ps, const char *sql)
{
    policy_result_t res;
    cJSON *o = explain(role("tester"), NULL, ps, sql, &res);
    if (strcmp(jstr(o, "decision"), "allow"))
        fail_msg("%s: %s", sql, jstr(o, "message"));
    cJSON_Delete(o);
    policy_session_apply(ps, &res);
    policy_result_free(&res);
    policy_session_txn_end(ps, true);
}

static const char *check_in(policy_session_t *ps, const char *sql)
{
    static char d[16];
    cJSON *o = explain(role("tester"), NULL, ps, sql, NULL);
    snprintf(d, sizeof(d), "%s", jstr(o, "decision"));
    cJSON_Delete(o);
    return d;
}

static void prepared_statements_are_tracked_per_session(void **state)
{
    (void)state;
    policy_session_t *ps = policy_session_new("public", "tester");
    policy_result_t res;

    /* unknown name: denied */
    cJSON *o = explain(role("tester"), NULL, ps, "EXECUTE nope", &res);
    assert_string_equal(jstr(o, "decision"), "deny");
    assert_string_equal(jstr(o, "rule"), "builtin:unknown-prepared-statement");
    cJSON_Delete(o);
    policy_result_free(&res);

    apply_ok(ps, "PREPARE p(int) AS SELECT * FROM orders WHERE id = $1");
    apply_ok(ps, "PREPARE d AS DELETE FROM orders");
    assert_string_equal(check_in(ps, "EXECUTE p(1)"), "allow");
    assert_string_equal(check_in(ps, "EXPLAIN EXECUTE p(1)"), "allow");
    /* EXECUTE re-charges: the role may delete orders, and the rule still applies */
    o = explain(role("tester"), NULL, ps, "EXECUTE d", NULL);
    assert_string_equal(jstr(o, "decision"), "allow");
    assert_int_equal(count_objects(o, "public.orders"), 1);
    cJSON_Delete(o);

    /* PREPARE and EXECUTE in one string; a denied PREPARE is never applied */
    assert_string_equal(check_in(ps, "PREPARE s AS SELECT * FROM audit_internal; EXECUTE s"),
                        "deny");
    o = explain(role("tester"), NULL, ps, "PREPARE s AS SELECT * FROM audit_internal", &res);
    policy_session_apply(ps, &res); /* denied: no effect */
    policy_result_free(&res);
    cJSON_Delete(o);
    assert_string_equal(check_in(ps, "EXECUTE s"), "deny");

    /* a second PREPARE of a name fails in PostgreSQL: the first one stays */
    apply_ok(ps, "PREPARE p AS SELECT 1");
    o = explain(role("tester"), NULL, ps, "EXECUTE p", NULL);
    assert_int_equal(count_objects(o, "public.orders"), 1);
    cJSON_Delete(o);

    /* the search_path at PREPARE time is the one that counts */
    apply_ok(ps, "SET search_path = evil");
    o = explain(role("tester"), NULL, ps, "EXECUTE p(1)", NULL);
    assert_int_equal(count_objects(o, "public.orders"), 1);
    assert_int_equal(count_objects(o, "evil.orders"), 0);
    cJSON_Delete(o);

    apply_ok(ps, "DEALLOCATE p");
    assert_string_equal(check_in(ps, "EXECUTE p(1)"), "deny");
    assert_string_equal(check_in(ps, "EXECUTE d"), "allow");
    assert_string_equal(check_in(ps, "DEALLOCATE ALL; EXECUTE d"), "deny");
    apply_ok(ps, "DISCARD ALL");
    assert_string_equal(check_in(ps, "EXECUTE d"), "deny");
    policy_session_free(ps);
}

/* ---- fail closed ---- */

static const char *tree_decision(const char *json)
{
    static char d[16];
    intent_t *in = policy_extract_tree(json, 10);
    assert_non_null(in);
    /* decide it through the cache path: put the intent under a key, then check the key */
    policy_cache_t *c = policy_cache_new(4, 1 << 20);
    const char *key = "SELECT 1";
    assert_non_null(policy_cache_put(c, key, strlen(key), in));
    policy_session_t *ps = policy_session_new(NULL, "x");
    cJSON *o = explain(role("tester"), c, ps, key, NULL);
    snprintf(d, sizeof(d), "%s", jstr(o, "decision"));
    cJSON_Delete(o);
    policy_session_free(ps);
    policy_cache_free(c);
    return d;
}

static void unknown_node_types_fail_closed(void **state)
{
    (void)state;
    /* sanity: the same shape with known nodes is allowed */
    assert_string_equal(
        tree_decision("{\"stmts\":[{\"stmt\":{\"SelectStmt\":{\"fromClause\":[{\"RangeVar\":"
                      "{\"relname\":\"orders\"}}]}}}]}"),
        "allow");
    /* a node type the walker does not know (here a planner node) */
    assert_string_equal(tree_decision("{\"stmts\":[{\"stmt\":{\"Query\":{}}}]}"), "deny");
    assert_string_equal(
        tree_decision("{\"stmts\":[{\"stmt\":{\"SelectStmt\":{\"targetList\":[{\"Var\":{}}]}}}]}"),
        "deny");
    assert_string_equal(tree_decision("{\"stmts\":[{\"stmt\":{\"FutureStmt\":{}}}]}"), "deny");
    /* a bare struct where the table knows no typed field */
    assert_string_equal(
        tree_decision(
            "{\"stmts\":[{\"stmt\":{\"SelectStmt\":{\"whereClause\":{\"x\":1,\"y\":2}}}}]}"),
        "deny");
    /* a wrapper holding something that is not an object */
    assert_string_equal(
        tree_decision("{\"stmts\":[{\"stmt\":{\"SelectStmt\":{\"targetList\":[[1]]}}}]}"), "deny");
    /* a RangeVar without a name */
    assert_string_equal(
        tree_decision(
            "{\"stmts\":[{\"stmt\":{\"SelectStmt\":{\"fromClause\":[{\"RangeVar\":{}}]}}}]}"),
        "deny");
    /* the tree reader refuses what is not strict JSON: the statement is refused */
    assert_string_equal(tree_decision("{\"stmts\":["), "deny");
    assert_string_equal(tree_decision("{\"stmts\":[]} x"), "deny");
    assert_string_equal(
        tree_decision("{\"stmts\":[{\"stmt\":{\"SelectStmt\":{\"fromClause\":[{\"RangeVar\":"
                      "{\"relname\":\"ord\\u0000ers\"}}]}}}]}"),
        "deny");
    /* escapes are decoded: this is public.orders */
    assert_string_equal(
        tree_decision("{\"stmts\":[{\"stmt\":{\"SelectStmt\":{\"fromClause\":[{\"RangeVar\":"
                      "{\"relname\":\"\\u006frders\"}}]}}}]}"),
        "allow");
    /* unknown is lifted only by a rule listing it: no role here does */
    assert_string_equal(decide_fresh("tester", "SELECT 1"), "allow");
}

/* ---- limits, errors, cache ---- */

static void statements_over_max_bytes_are_refused_unparsed(void **state)
{
    (void)state;
    size_t max = (size_t)cfg->max_statement_bytes;
    assert_int_equal(max, 1u << 20);
    char *big = malloc(max + 2);
    assert_non_null(big);
    memset(big, ' ', max + 1);
    memcpy(big, "SELECT 1", 8);
    big[max + 1] = '\0';
    policy_session_t *ps = policy_session_new(NULL, "x");
    policy_result_t res;
    assert_int_equal(policy_check(role("agent"), NULL, ps, big, max + 1, &res), 0);
    assert_int_equal(res.decision, POLICY_DENY);
    assert_string_equal(res.sqlstate, "54000");
    assert_string_equal(res.rule, "builtin:statement-too-large");
    assert_int_equal(res.n_stmts, 0);
    policy_result_free(&res);
    assert_int_equal(policy_check(role("agent"), NULL, ps, big, max, &res), 0);
    assert_int_equal(res.decision, POLICY_ALLOW);
    policy_result_free(&res);
    /* NUL inside the statement */
    assert_int_equal(policy_check(role("agent"), NULL, ps, "SELECT 1\0; DROP TABLE x", 23, &res),
                     0);
    assert_int_equal(res.decision, POLICY_DENY);
    policy_result_free(&res);
    free(big);
    policy_session_free(ps);
}

static void parse_errors_carry_message_and_position(void **state)
{
    (void)state;
    policy_session_t *ps = policy_session_new(NULL, "x");
    policy_result_t res;
    const char *sql = "SELECT 1; SELEC * FROM orders";
    assert_int_equal(policy_check(role("agent"), NULL, ps, sql, strlen(sql), &res), 0);
    assert_int_equal(res.decision, POLICY_DENY);
    assert_string_equal(res.sqlstate, "42601");
    assert_string_equal(res.message, "syntax error at or near \"SELEC\"");
    assert_int_equal(res.cursorpos, 11);
    policy_result_free(&res);
    /* positions count characters, not bytes */
    sql = "select 'é', 'x' frm t";
    assert_int_equal(policy_check(role("agent"), NULL, ps, sql, strlen(sql), &res), 0);
    assert_int_equal(res.cursorpos, 21);
    policy_result_free(&res);
    policy_session_free(ps);
}

static void cache_is_bounded_in_entries_and_bytes(void **state)
{
    (void)state;
    policy_session_t *ps = policy_session_new(NULL, "x");
    policy_cache_t *c = policy_cache_new(3, 1 << 20);
    policy_cache_stats_t st;
    char sql[64];
    policy_result_t res;
    for (int i = 0; i < 5; i++) {
        snprintf(sql, sizeof(sql), "SELECT %d FROM orders", i);
        assert_int_equal(policy_check(role("agent"), c, ps, sql, strlen(sql), &res), 0);
        assert_false(res.cache_hit);
        policy_result_free(&res);
    }
    policy_cache_stats(c, &st);
    assert_int_equal(st.entries, 3);
    assert_int_equal(st.evictions, 2);
    assert_int_equal(st.misses, 5);
    /* most recent entries stay; a hit refreshes */
    assert_int_equal(policy_check(role("agent"), c, ps, sql, strlen(sql), &res), 0);
    assert_true(res.cache_hit);
    assert_int_equal(res.decision, POLICY_ALLOW);
    policy_result_free(&res);
    assert_int_equal(policy_check(role("agent"), c, ps, "SELECT 0 FROM orders", 20, &res), 0);
    assert_false(res.cache_hit);
    policy_result_free(&res);
    policy_cache_stats(c, &st);
    assert_int_equal(st.hits, 1);
    policy_cache_free(c);

    /* bytes: each entry is a few KiB (arena chunk); 10 KiB holds at most a couple */
    c = policy_cache_new(1000, 10 * 1024);
    for (int i = 0; i < 20; i++) {
        snprintf(sql, sizeof(sql), "SELECT %d FROM orders", i);
        assert_int_equal(policy_check(role("agent"), c, ps, sql, strlen(sql), &res), 0);
        policy_result_free(&res);
        policy_cache_stats(c, &st);
        assert_true(st.bytes <= 10 * 1024);
    }
    assert_true(st.entries >= 1 && st.entries < 20);
    policy_cache_free(c);

    /* no cache at all */
    c = policy_cache_new(0, 0);
    assert_int_equal(policy_check(role("agent"), c, ps, sql, strlen(sql), &res), 0);
    policy_result_free(&res);
    policy_cache_stats(c, &st);
    assert_int_equal(st.entries, 0);
    policy_cache_free(c);
    policy_session_free(ps);
}

/* Masking plans the statement from the policy's parse: the tree is kept on a
 * parse (cache miss) when asked, and only then. */
static void kept_parse_tree_is_the_parsers_on_a_miss_only(void **state)
{
    (void)state;
    policy_session_t *ps = policy_session_new(NULL, "x");
    policy_cache_t *c = policy_cache_new(8, 1 << 20);
    policy_result_t res;
    const char *sql = "SELECT id FROM orders WHERE id = 7";
    assert_int_equal(policy_check(role("agent"), c, ps, sql, strlen(sql), &res), 0);
    assert_null(res.tree); /* not asked */
    policy_result_free(&res);
    sql = "SELECT total FROM orders WHERE id = 8";
    assert_int_equal(policy_check_keep(role("agent"), c, ps, sql, strlen(sql), true, &res), 0);
    assert_false(res.cache_hit);
    assert_non_null(res.tree);
    PgQueryParseResult pr = pg_query_parse(sql);
    assert_null(pr.error);
    assert_string_equal(res.tree, pr.parse_tree);
    pg_query_free_parse_result(pr);
    policy_result_free(&res);
    assert_null(res.tree);
    /* a hit has no tree: the caller parses for itself */
    assert_int_equal(policy_check_keep(role("agent"), c, ps, sql, strlen(sql), true, &res), 0);
    assert_true(res.cache_hit);
    assert_null(res.tree);
    policy_result_free(&res);
    /* nor has a text that does not parse */
    sql = "SELEC 1";
    assert_int_equal(policy_check_keep(role("agent"), c, ps, sql, strlen(sql), true, &res), 0);
    assert_int_equal(res.decision, POLICY_DENY);
    assert_null(res.tree);
    policy_result_free(&res);
    policy_cache_free(c);
    policy_session_free(ps);
}

/* The tree reader's integer fast path reads what strtod would. */
static void tree_numbers_read_as_strtod_would(void **state)
{
    (void)state;
    static const char *const nums[] = {
        "0",   "7",     "-12", "007",  "123456789012345",  "12345678901234",
        "1.5", "-0.25", "1e3", "2E-2", "9007199254740993", "-0"};
    for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
        char text[64];
        snprintf(text, sizeof(text), "[%s,1]", nums[i]);
        jdoc_t *d = json_parse(text, strlen(text), 8);
        assert_non_null(d);
        const jnode_t *n = json_root(d)->child;
        assert_int_equal(n->type, J_NUM);
        assert_true(n->num == strtod(nums[i], NULL));
        assert_int_equal(n->next->type, J_NUM);
        json_free(d);
    }
    assert_null(json_parse("[-]", 3, 8));
    assert_null(json_parse("[12", 3, 8));
}

/* ---- decisions and results ---- */

static void results_say_what_decided(void **state)
{
    (void)state;
    policy_session_t *ps = policy_session_new(NULL, "agent_rw");
    policy_result_t res;
    const char *sql = "SELECT * FROM orders; DELETE FROM orders WHERE id = 3";
    assert_int_equal(policy_check(role("agent"), NULL, ps, sql, strlen(sql), &res), 0);
    assert_int_equal(res.decision, POLICY_REVIEW);
    assert_string_equal(res.rule, "fix-orders");
    assert_non_null(res.decided_by);
    assert_int_equal(res.decided_by->op, POLICY_OP_DELETE);
    assert_string_equal(res.decided_by->object, "public.orders");
    assert_int_equal(res.review.n_approvers, 1);
    assert_string_equal(res.review.approvers[0], "dba");
    assert_int_equal(res.review.timeout_ms, 30000);
    assert_false(res.review.reject);
    assert_true(res.writes);
    assert_int_equal(res.n_stmts, 2);
    assert_false(res.stmts[0].writes);
    assert_true(res.stmts[1].writes);
    assert_int_equal(res.stmts[1].location, 21);
    policy_result_free(&res);

    sql = "DELETE FROM orders";
    assert_int_equal(policy_check(role("agent"), NULL, ps, sql, strlen(sql), &res), 0);
    assert_string_equal(res.message,
                        "bulwark: DELETE on public.orders denied by rule \"no-unbounded-writes\" "
                        "(role agent)");
    policy_result_free(&res);
    sql = "SELECT * FROM audit_internal";
    assert_int_equal(policy_check(role("agent"), NULL, ps, sql, strlen(sql), &res), 0);
    assert_string_equal(res.message, "bulwark: SELECT on public.audit_internal denied: no rule "
                                     "allows it (role agent, default deny)");
    assert_null(res.rule);
    policy_result_free(&res);
    policy_session_free(ps);

    /* dangerous functions: lifted only by a rule naming them without wildcard */
    assert_string_equal(decide_fresh("tester", "SELECT pg_sleep(1)"), "allow");
    assert_string_equal(decide_fresh("tester", "SELECT pg_catalog.pg_ls_dir('.')"), "deny");
    assert_string_equal(decide_fresh("tester", "SELECT app.f(1)"), "allow");
    assert_string_equal(decide_fresh("tester", "SELECT app.pg_read_file('x')"), "deny");
    assert_string_equal(decide_fresh("tester", "SELECT * FROM audit_internal"), "deny");
    assert_string_equal(decide_fresh("tester", "SET work_mem = '1GB'"), "allow");
    assert_string_equal(decide_fresh("tester", "SET standard_conforming_strings = off"), "deny");
}

static void fingerprints_ignore_constants(void **state)
{
    (void)state;
    char a[17], b[17], c[17];
    assert_int_equal(policy_fingerprint("SELECT * FROM orders WHERE id = 1", 33, a), 0);
    assert_int_equal(policy_fingerprint("select * from orders where id = 42", 34, b), 0);
    assert_int_equal(policy_fingerprint("SELECT * FROM customers WHERE id = 1", 36, c), 0);
    assert_string_equal(a, b);
    assert_string_not_equal(a, c);
    assert_int_equal(policy_fingerprint("SELEC", 5, c), -1);
}

/* ---- benchmark ---- */

static int cmp_u64(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void bench_one(const char *label, const char *sql, bool cached, int n)
{
    policy_session_t *ps = policy_session_new(NULL, "agent_rw");
    policy_cache_t *c = cached ? policy_cache_new(128, 1 << 24) : NULL;
    uint64_t *t = calloc((size_t)n, sizeof(*t));
    const policy_role_t *r = policy_set_role(set, "agent");
    size_t len = strlen(sql);
    policy_result_t res;
    for (int i = -n / 10; i < n; i++) { /* warm-up first */
        uint64_t t0 = now_ns();
        if (policy_check(r, c, ps, sql, len, &res) < 0)
            abort();
        uint64_t t1 = now_ns();
        policy_result_free(&res);
        if (i >= 0)
            t[i] = t1 - t0;
    }
    qsort(t, (size_t)n, sizeof(*t), cmp_u64);
    printf("%-28s %-7s median %7.1f us   p99 %7.1f us   (%d runs)\n", label,
           cached ? "cached" : "parse", t[n / 2] / 1000.0, t[(size_t)n * 99 / 100] / 1000.0, n);
    free(t);
    policy_cache_free(c);
    policy_session_free(ps);
}

static int bench(int n)
{
    if (setup(NULL))
        return 1;
    const char *short_sql = "SELECT id, amount FROM orders WHERE id = 42";
    const char *complex_sql =
        "WITH recent AS (SELECT o.customer_id, sum(o.amount) AS total, count(*) AS n "
        "FROM orders o WHERE o.placed_on > current_date - interval '30 days' "
        "GROUP BY o.customer_id HAVING count(*) > 1), "
        "ranked AS (SELECT r.*, rank() OVER (ORDER BY r.total DESC) AS rk FROM recent r) "
        "SELECT c.id, c.name, lower(c.email) AS email, rk.total, rk.n, "
        "(SELECT max(o2.amount) FROM orders o2 WHERE o2.customer_id = c.id) AS biggest, "
        "CASE WHEN rk.total > 1000 THEN 'gold' WHEN rk.total > 100 THEN 'silver' ELSE 'bronze' "
        "END AS tier, coalesce(c.notes, '') AS notes "
        "FROM customers c JOIN ranked rk ON rk.customer_id = c.id "
        "LEFT JOIN LATERAL (SELECT o3.note FROM orders o3 WHERE o3.customer_id = c.id "
        "ORDER BY o3.placed_on DESC LIMIT 1) last ON true "
        "WHERE c.id IN (SELECT customer_id FROM orders WHERE amount > 5 "
        "UNION SELECT customer_id FROM orders WHERE note ILIKE '%bulk%') "
        "AND EXISTS (SELECT 1 FROM orders o4 WHERE o4.customer_id = c.id AND o4.amount "
        "BETWEEN 1 AND 10000) ORDER BY rk.total DESC, c.name LIMIT 50 OFFSET 0";
    printf("short:   %zu bytes\ncomplex: %zu bytes\n", strlen(short_sql), strlen(complex_sql));
    bench_one("short SELECT", short_sql, false, n);
    bench_one("complex SELECT", complex_sql, false, n);
    bench_one("short SELECT", short_sql, true, n);
    bench_one("complex SELECT", complex_sql, true, n);
    teardown(NULL);
    return 0;
}

int main(void)
{
    const char *b = getenv("BULWARK_POLICY_BENCH");
    if (b && atoi(b) > 0)
        return bench(atoi(b));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(attack_corpus_decides_as_expected_for_agent),
        cmocka_unit_test(real_client_statements_are_allowed_for_readonly),
        cmocka_unit_test(ambiguous_search_path_checks_every_candidate),
        cmocka_unit_test(search_path_changes_are_tracked_and_settled),
        cmocka_unit_test(prepared_statements_are_tracked_per_session),
        cmocka_unit_test(unknown_node_types_fail_closed),
        cmocka_unit_test(statements_over_max_bytes_are_refused_unparsed),
        cmocka_unit_test(parse_errors_carry_message_and_position),
        cmocka_unit_test(cache_is_bounded_in_entries_and_bytes),
        cmocka_unit_test(kept_parse_tree_is_the_parsers_on_a_miss_only),
        cmocka_unit_test(tree_numbers_read_as_strtod_would),
        cmocka_unit_test(results_say_what_decided),
        cmocka_unit_test(fingerprints_ignore_constants),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
