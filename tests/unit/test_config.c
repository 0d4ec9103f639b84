/*
 * Unit tests for config: the valid fixtures load with the right values and
 * defaults; every case under tests/fixtures/config/invalid/ yields exactly the
 * errors in its expected.txt (one "file: path: reason" per line, in order).
 *
 * Fixtures are found from the repository root (the Makefile runs tests from
 * there); BULWARK_TEST_ROOT overrides it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dirent.h>
#include <unistd.h>

#include <cmocka.h>

#include "helpers.h"

#include "config.h"

static void print_errors(const cfg_errors_t *e)
{
    for (size_t i = 0; i < e->n; i++)
        print_message("  error: %s\n", e->msgs[i]);
}

static cfg_t *load_ok(const char *path)
{
    cfg_errors_t errs = {0};
    cfg_t *c = cfg_load(path, &errs);
    if (!c || errs.n) {
        print_errors(&errs);
        cfg_errors_free(&errs);
        cfg_release(c);
        fail_msg("%s did not load", path);
    }
    return c;
}

static void loads_spec_example_with_defaults(void **state)
{
    (void)state;
    cfg_t *c = load_ok(test_fixture("config/valid/bulwark.json"));
    assert_string_equal(c->path, test_fixture("config/valid/bulwark.json"));
    assert_int_equal(c->refcount, 1);
    assert_string_equal(c->listen_host, "0.0.0.0");
    assert_int_equal(c->listen_port, 6432);
    assert_string_equal(c->tls_cert_file, test_fixture("config/valid/certs/server.crt"));
    assert_string_equal(c->tls_key_file, test_fixture("config/valid/certs/server.key"));
    assert_false(c->allow_plaintext_on_loopback);

    /* identity */
    assert_int_equal(c->n_issuers, 3);
    const cfg_issuer_t *idp = &c->issuers[0];
    assert_string_equal(idp->issuer, "https://idp.example.com");
    assert_string_equal(idp->audience, "bulwark");
    assert_string_equal(idp->jwks_file, test_fixture("config/valid/keys/idp-jwks.json"));
    assert_null(idp->jwks_url);
    assert_null(idp->hs256_secret_file);
    assert_int_equal(idp->n_algorithms, 2);
    assert_string_equal(idp->algorithms[0], "RS256");
    assert_string_equal(idp->algorithms[1], "ES256");
    const cfg_issuer_t *acc = &c->issuers[1];
    assert_string_equal(acc->jwks_url, "https://accounts.example.org/oauth2/v3/certs");
    assert_int_equal(acc->refresh_ms, 600000);
    assert_int_equal(acc->n_algorithms, 2); /* default RS256, ES256 */
    const cfg_issuer_t *dev = cfg_find_issuer(c, "dev");
    assert_ptr_equal(dev, &c->issuers[2]);
    assert_string_equal(dev->hs256_secret_file, test_fixture("config/valid/keys/dev.secret"));
    const char *secret = "dev-secret-for-tests-only-0123456789abcdef"; /* newline stripped */
    assert_int_equal(dev->hs256_secret_len, strlen(secret));
    assert_memory_equal(dev->hs256_secret, secret, strlen(secret));
    assert_int_equal(dev->n_algorithms, 1);
    assert_string_equal(dev->algorithms[0], "HS256");
    assert_null(cfg_find_issuer(c, "Dev"));
    assert_int_equal(c->leeway_ms, 30000);
    assert_int_equal(c->max_token_lifetime_ms, 3600000);

    /* targets */
    assert_int_equal(c->n_targets, 2);
    const cfg_target_t *shop = cfg_find_target(c, "shop");
    assert_non_null(shop);
    assert_string_equal(shop->host, "127.0.0.1");
    assert_int_equal(shop->port, 5432);
    assert_string_equal(shop->dbname, "shop");
    assert_int_equal(shop->sslmode, CFG_SSL_PREFER);
    assert_null(shop->sslrootcert);
    const cfg_target_t *ledger = cfg_find_target(c, "ledger");
    assert_non_null(ledger);
    assert_int_equal(ledger->port, 5432);
    assert_string_equal(ledger->dbname, "ledger");
    assert_int_equal(ledger->sslmode, CFG_SSL_VERIFY_FULL);
    assert_string_equal(ledger->sslrootcert, test_fixture("config/valid/certs/ca.crt"));
    assert_null(cfg_find_target(c, "bulwark"));

    /* audit, approvals, knobs: SPEC section 3 defaults */
    assert_string_equal(c->audit.path, test_fixture("config/valid/var/audit"));
    assert_int_equal(c->audit.map_size, 1ULL << 30);
    assert_int_equal(c->audit.durability, CFG_DUR_STRICT_WRITES);
    assert_int_equal(c->audit.capture_rows, 50);
    assert_int_equal(c->audit.capture_bytes, 65536);
    assert_string_equal(c->audit.signing_key_file,
                        test_fixture("config/valid/keys/audit-ed25519.pem"));
    assert_false(c->audit.on_failure_allow);
    assert_null(c->approvals.webhook_url);
    assert_int_equal(c->approvals.poll_interval_ms, 200);
    assert_string_equal(c->metrics_listen, "127.0.0.1:9632");
    assert_int_equal(c->max_statement_bytes, 1 << 20);
    assert_int_equal(c->shutdown_grace_ms, 30000);
    assert_int_equal(c->login_timeout_ms, 15000);
    assert_int_equal(c->max_client_conn, 10000);
    assert_int_equal(c->workers, 0); /* one per core, decided by the proxy */
    assert_null(c->masking.hash_key);
    assert_int_equal(c->masking.max_row_bytes, 16u << 20);
    assert_int_equal(c->masking.catalog_refresh_ms, 60000);
    assert_int_equal(c->tcp_keepalive_ms, 60000);

    /* roles, in file order: policies/analyst.json, then policies/ops.json */
    assert_int_equal(c->n_roles, 3);
    const cfg_role_t *an = cfg_find_role(c, "analyst");
    assert_ptr_equal(an, &c->roles[0]);
    assert_string_equal(an->source_file, test_fixture("config/valid/policies/analyst.json"));
    assert_string_equal(an->description, "LangChain SQL agent: read-only analytics, PII masked");
    assert_int_equal(an->n_identities, 2);
    assert_string_equal(an->identities[0].iss, "dev");
    assert_string_equal(an->identities[0].sub, "svc-agent-*");
    assert_null(an->identities[0].claim);
    assert_string_equal(an->identities[1].iss, "https://idp.example.com");
    assert_null(an->identities[1].sub);
    assert_string_equal(an->identities[1].claim, "groups");
    assert_string_equal(an->identities[1].includes, "analytics-agents");
    assert_int_equal(an->default_action, CFG_DENY);
    assert_true(an->read_only);
    assert_true(an->catalog_reads);
    assert_false(an->admin);
    assert_false(an->end_session_at_token_expiry);
    const cfg_upstream_t *u = cfg_role_upstream(an, "shop");
    assert_non_null(u);
    assert_string_equal(u->user, "agent_ro");
    assert_string_equal(u->password, "agent-ro-password");
    assert_string_equal(u->password_file,
                        test_fixture("config/valid/policies/../secrets/agent_ro"));
    assert_null(u->password_env);
    assert_null(cfg_role_upstream(an, "ledger"));
    assert_int_equal(cJSON_GetArraySize(an->rules), 4);
    assert_int_equal(cJSON_GetArraySize(an->masks), 4);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(an->rules, 2), "id")->valuestring,
                        "orders-fix");

    const cfg_role_t *dba = cfg_find_role(c, "dba");
    assert_non_null(dba);
    assert_string_equal(dba->source_file, test_fixture("config/valid/policies/ops.json"));
    assert_true(dba->admin);
    assert_true(dba->end_session_at_token_expiry);
    assert_int_equal(dba->default_action, CFG_ALLOW);
    assert_string_equal(cfg_role_upstream(dba, "shop")->password, "dba pass with spaces");
    assert_null(cfg_role_upstream(dba, "ledger")->password);
    assert_int_equal(cJSON_GetArraySize(dba->masks), 0);

    const cfg_role_t *aud = cfg_find_role(c, "auditor");
    assert_non_null(aud);
    assert_int_equal(aud->default_action, CFG_DENY);
    assert_non_null(aud->rules);
    assert_int_equal(cJSON_GetArraySize(aud->rules), 0);
    assert_null(cfg_find_role(c, "Analyst"));

    assert_ptr_equal(cfg_retain(c), c);
    assert_int_equal(c->refcount, 2);
    cfg_release(c);
    assert_int_equal(c->refcount, 1);
    cfg_release(c);
}

static void loads_every_key_set_explicitly(void **state)
{
    (void)state;
    setenv("BULWARK_TEST_SVC_PASSWORD", "from-the-environment", 1);
    cfg_t *c = load_ok(test_fixture("config/valid/explicit.json"));
    unsetenv("BULWARK_TEST_SVC_PASSWORD");
    assert_string_equal(c->listen_host, "::1");
    assert_int_equal(c->listen_port, 7432);
    assert_null(c->tls_cert_file);
    assert_true(c->allow_plaintext_on_loopback);
    assert_int_equal(c->n_issuers, 1);
    assert_string_equal(c->issuers[0].audience, "bulwark-test");
    assert_int_equal(c->leeway_ms, 5000);
    assert_int_equal(c->max_token_lifetime_ms, 7200000);
    const cfg_target_t *shop = cfg_find_target(c, "shop");
    assert_string_equal(shop->host, "localhost");
    assert_int_equal(shop->port, 15432);
    assert_string_equal(shop->dbname, "shop_test");
    assert_int_equal(shop->sslmode, CFG_SSL_DISABLE);
    assert_int_equal(c->audit.map_size, 64ULL << 20);
    assert_int_equal(c->audit.durability, CFG_DUR_BATCHED);
    assert_int_equal(c->audit.capture_rows, 0);
    assert_int_equal(c->audit.capture_bytes, 1 << 20);
    assert_null(c->audit.signing_key_file);
    assert_true(c->audit.on_failure_allow);
    assert_string_equal(c->approvals.webhook_url, "https://hooks.example.com/bulwark");
    assert_int_equal(c->approvals.poll_interval_ms, 1000);
    assert_null(c->metrics_listen);
    assert_int_equal(c->max_statement_bytes, 256 << 10);
    assert_int_equal(c->shutdown_grace_ms, 0);
    assert_int_equal(c->login_timeout_ms, 3000);
    assert_int_equal(c->max_client_conn, 50);
    assert_int_equal(c->workers, 3);
    assert_non_null(c->masking.hash_key);
    assert_int_equal(c->masking.hash_key_len, 40);
    assert_int_equal(c->masking.max_row_bytes, 2u << 20);
    assert_int_equal(c->masking.catalog_refresh_ms, 300000);
    assert_int_equal(c->tcp_keepalive_ms, 5000);

    /* extra/svc.json is matched by two patterns and loaded once */
    assert_int_equal(c->n_roles, 2);
    const cfg_role_t *svc = cfg_find_role(c, "svc");
    assert_non_null(svc);
    assert_string_equal(svc->identities[0].sub, "svc-*");
    assert_string_equal(svc->identities[0].claim, "groups");
    assert_string_equal(svc->identities[0].includes, "ops");
    const cfg_upstream_t *u = cfg_role_upstream(svc, "shop");
    assert_string_equal(u->password, "from-the-environment");
    assert_string_equal(u->password_env, "BULWARK_TEST_SVC_PASSWORD");
    assert_null(u->password_file);
    assert_int_equal(svc->default_action, CFG_ALLOW);
    assert_int_equal(cJSON_GetArraySize(svc->rules), 3);
    assert_int_equal(cJSON_GetArraySize(svc->masks), 4);
    const cfg_role_t *ap = cfg_find_role(c, "approver");
    assert_true(ap->admin);
    assert_int_equal(ap->n_upstreams, 0);
    cfg_release(c);
}

/* ---- invalid configs: one directory per case ---- */

static char **read_lines(const char *path, size_t *n)
{
    FILE *f = fopen(path, "r");
    char **v = NULL;
    *n = 0;
    if (!f)
        return NULL;
    char line[2048];
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = 0;
        v = realloc(v, (*n + 1) * sizeof(*v));
        v[(*n)++] = strdup(line);
    }
    fclose(f);
    return v;
}

static bool run_invalid_case(const char *dir, const char *name)
{
    char cwd[4096], path[4200];
    bool ok = true;
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    assert_int_equal(chdir(path), 0);
    size_t n_exp;
    char **exp = read_lines("expected.txt", &n_exp);
    cfg_errors_t errs = {0};
    cfg_t *c = cfg_load("bulwark.json", &errs);
    if (c || !exp || errs.n != n_exp)
        ok = false;
    for (size_t i = 0; ok && i < n_exp; i++)
        ok = errs.msgs[i] && !strcmp(errs.msgs[i], exp[i]);
    if (!ok) {
        print_message("case %s: %s, %zu errors, expected %zu:\n", name, c ? "LOADED" : "refused",
                      errs.n, n_exp);
        for (size_t i = 0; i < errs.n || i < n_exp; i++) {
            const char *g = i < errs.n ? errs.msgs[i] : "(none)";
            const char *e = i < n_exp ? exp[i] : "(none)";
            print_message("  %s got:      %s\n", strcmp(g, e) ? "!!" : "  ", g);
            if (strcmp(g, e))
                print_message("     expected: %s\n", e);
        }
    }
    cfg_release(c);
    cfg_errors_free(&errs);
    for (size_t i = 0; i < n_exp; i++)
        free(exp[i]);
    free(exp);
    assert_int_equal(chdir(cwd), 0);
    return ok;
}

static int only_dirs(const struct dirent *d)
{
    return d->d_name[0] != '.';
}

static void refuses_each_invalid_fixture_with_exact_errors(void **state)
{
    (void)state;
    unsetenv("BULWARK_TEST_UNSET_VARIABLE");
    const char *dir = test_fixture("config/invalid");
    struct dirent **names;
    int n = scandir(dir, &names, only_dirs, alphasort);
    assert_true(n >= 20);
    int failed = 0;
    for (int i = 0; i < n; i++) {
        failed += !run_invalid_case(dir, names[i]->d_name);
        free(names[i]);
    }
    free(names);
    print_message("%d invalid-config cases, %d failed\n", n, failed);
    assert_int_equal(failed, 0);
}

static void reports_unreadable_config_file(void **state)
{
    (void)state;
    cfg_errors_t errs = {0};
    assert_null(cfg_load("no/such/bulwark.json", &errs));
    assert_int_equal(errs.n, 1);
    assert_string_equal(errs.msgs[0],
                        "no/such/bulwark.json: cannot read: No such file or directory");
    cfg_errors_free(&errs);
    assert_null(cfg_load(test_fixture("config/valid"), &errs));
    assert_int_equal(errs.n, 1);
    assert_non_null(strstr(errs.msgs[0], ": cannot read: is a directory"));
    cfg_errors_free(&errs);
    /* errs may be NULL */
    assert_null(cfg_load("no/such/bulwark.json", NULL));
}

/* ---- strict JSON ---- */

static const struct {
    const char *text;
    size_t len;      /* 0: strlen */
    const char *why; /* NULL: parses */
} json_cases[] = {
    {"{\"a\": 1}", 0, NULL},
    {"  [1, 2, {\"b\": [true]}]\n\n", 0, NULL},
    {"\"caf\xc3\xa9\"", 0, NULL},
    {"{\"a\": 1, \"a\": 2}", 0, "a: duplicate key"},
    {"{\"x\": [{\"k\": 1}, {\"k\": 1, \"k\": 2}]}", 0, "x[1].k: duplicate key"},
    {"{\"sub\": 1, \"s\\u0075b\": 2}", 0, "sub: duplicate key"}, /* escapes decode first */
    {"{\"a.b\": {\"c\": 1, \"c\": 1}}", 0, "[\"a.b\"].c: duplicate key"},
    {"{\"a\": 1} x", 0, "line 1, column 10: invalid JSON"},
    {"{\"a\": 1}{}", 0, "line 1, column 9: invalid JSON"},
    {"", 0, "line 1, column 1: invalid JSON"},
    {"{\"a\": \"x\\u0000y\"}", 0, "line 1, column 9: \\u0000 in a string"},
    {"{\"a\": \"x\\\\u0000y\"}", 0, NULL}, /* an escaped backslash, then text */
    {"{\"a\": 1}\0", 9, "line 1, column 9: NUL byte"},
    {"\"\xc3\x28\"", 0, "line 1, column 2: invalid UTF-8"},
    {"\"\xed\xa0\x80\"", 0, "line 1, column 2: invalid UTF-8"}, /* a surrogate */
    {"\"\xc0\xaf\"", 0, "line 1, column 2: invalid UTF-8"},     /* overlong '/' */
    {"{\n\"a\": [1,\n]}", 0, "line 3, column 1: invalid JSON"},
};

static void parses_json_strictly(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(json_cases) / sizeof(json_cases[0]); i++) {
        const char *t = json_cases[i].text;
        size_t len = json_cases[i].len ? json_cases[i].len : strlen(t);
        char why[256] = "";
        cJSON *j = cfg_json_parse_strict(t, len, why, sizeof(why));
        if (!json_cases[i].why) {
            if (!j)
                fail_msg("case %zu refused: %s", i, why);
        } else {
            if (j)
                fail_msg("case %zu parsed", i);
            if (strcmp(why, json_cases[i].why))
                fail_msg("case %zu: \"%s\", expected \"%s\"", i, why, json_cases[i].why);
        }
        cJSON_Delete(j);
    }
}

static void reads_secret_files_stripping_one_newline(void **state)
{
    (void)state;
    uint8_t *s;
    size_t len;
    char why[128];
    assert_int_equal(
        cfg_read_secret_file(test_fixture("config/valid/secrets/dba"), &s, &len, why, sizeof(why)),
        0);
    assert_int_equal(len, strlen("dba pass with spaces"));
    assert_memory_equal(s, "dba pass with spaces", len);
    assert_int_equal(s[len], 0);
    free(s);
    assert_int_equal(cfg_read_secret_file(test_fixture("config/invalid/issuer-errors/empty.secret"),
                                          &s, &len, why, sizeof(why)),
                     -1);
    assert_string_equal(why, "file is empty");
    assert_int_equal(cfg_read_secret_file(test_fixture("config/nope"), &s, &len, why, sizeof(why)),
                     -1);
    assert_string_equal(why, "No such file or directory");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(loads_spec_example_with_defaults),
        cmocka_unit_test(loads_every_key_set_explicitly),
        cmocka_unit_test(refuses_each_invalid_fixture_with_exact_errors),
        cmocka_unit_test(reports_unreadable_config_file),
        cmocka_unit_test(parses_json_strictly),
        cmocka_unit_test(reads_secret_files_stripping_one_newline),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
