/*
 * Unit tests for the shared approvals state (state.backend "postgres",
 * src/approval/pg.c) that need no database server: the config section, and
 * how the backend behaves while its database cannot be reached (the CLI
 * gets a clear error at once; a gateway's store reports itself unavailable,
 * hands out no request ids and its loop-side reads answer from the empty
 * in-memory table without waiting on the network). The behaviour with a
 * real database is tested in tests/integration/test_replicas.py.
 */
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "helpers.h"

#include "approval/approval.h"
#include "config.h"

static char dir[TEST_DIR_MAX];

/* A port on loopback where nothing listens (bound, then closed). */
static int dead_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t n = sizeof(a);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &n), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static cfg_t *load_with_state(const char *state_json)
{
    char cfg[2048];
    snprintf(cfg, sizeof(cfg),
             "{\"listen\": \"127.0.0.1:6432\", \"allow_plaintext_on_loopback\": true,"
             " \"identity\": {\"issuers\": [{\"issuer\": \"dev\", \"audience\": \"bulwark\","
             " \"hs256_secret_file\": \"dev.secret\"}]},"
             " \"targets\": {\"shop\": {\"host\": \"127.0.0.1\"}},"
             " \"audit\": {\"path\": \"audit\"}%s%s}",
             state_json ? ", \"state\": " : "", state_json ? state_json : "");
    test_write_file(dir, "bulwark.json", cfg);
    char path[TEST_DIR_MAX + 16];
    snprintf(path, sizeof(path), "%s/bulwark.json", dir);
    cfg_errors_t errs = {0};
    cfg_t *c = cfg_load(path, &errs);
    for (size_t i = 0; i < errs.n; i++)
        print_message("  error: %s\n", errs.msgs[i]);
    cfg_errors_free(&errs);
    return c;
}

static int setup(void **state)
{
    test_mkdtemp(dir, sizeof(dir), "bw-state");
    test_write_file(dir, "dev.secret", "0123456789abcdef0123456789abcdef0123456789\n");
    char dsn[200];
    snprintf(dsn, sizeof(dsn), "host=127.0.0.1 port=%d user=nobody dbname=nothing\n", dead_port());
    test_write_file(dir, "state.dsn", dsn);
    return 0;
}

static int teardown(void **state)
{
    test_rmtree(dir);
    return 0;
}

static void lmdb_is_the_default(void **state)
{
    cfg_t *c = load_with_state(NULL);
    assert_non_null(c);
    assert_false(c->state.postgres);
    assert_null(c->state.dsn_file);
    assert_string_equal(c->state.channel, "bulwark_approvals");
    cfg_release(c);
    c = load_with_state("{\"backend\": \"lmdb\"}");
    assert_non_null(c);
    assert_false(c->state.postgres);
    cfg_release(c);
}

static void postgres_section_loads(void **state)
{
    cfg_t *c = load_with_state(
        "{\"backend\": \"postgres\", \"dsn_file\": \"state.dsn\", \"channel\": \"team_a2\"}");
    assert_non_null(c);
    assert_true(c->state.postgres);
    char want[TEST_DIR_MAX + 32];
    snprintf(want, sizeof(want), "%s/state.dsn", dir);
    assert_string_equal(c->state.dsn_file, want);
    assert_string_equal(c->state.channel, "team_a2");
    cfg_release(c);
}

static void bad_sections_are_refused(void **state)
{
    const char *bad[] = {
        "{\"backend\": \"mysql\", \"dsn_file\": \"state.dsn\"}",
        "{\"backend\": \"postgres\"}",
        "{\"backend\": \"lmdb\", \"dsn_file\": \"state.dsn\"}",
        "{\"backend\": \"postgres\", \"dsn_file\": \"missing.dsn\"}",
        "{\"backend\": \"postgres\", \"dsn_file\": \"state.dsn\", \"channel\": \"x; DROP\"}",
        "{\"backend\": \"postgres\", \"dsn_file\": \"state.dsn\", \"channel\": \"1abc\"}",
        "{\"dsn_file\": \"state.dsn\"}",
        "\"postgres\"",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cfg_t *c = load_with_state(bad[i]);
        if (c)
            fail_msg("loaded: %s", bad[i]);
    }
}

static void cli_reports_an_unreachable_database(void **state)
{
    cfg_t *c = load_with_state("{\"backend\": \"postgres\", \"dsn_file\": \"state.dsn\"}");
    assert_non_null(c);
    char err[512] = "";
    appr_store_t *st = appr_open_cfg(c, err, sizeof(err));
    assert_null(st);
    assert_non_null(strstr(err, "the state database"));
    cfg_release(c);
}

static int changes;
static void changed(void *arg)
{
    changes++;
}

static int count_row(void *arg, const appr_req_t *r)
{
    (*(int *)arg)++;
    return 0;
}

static void gateway_store_fails_closed_while_unreachable(void **state)
{
    cfg_t *c = load_with_state("{\"backend\": \"postgres\", \"dsn_file\": \"state.dsn\"}");
    assert_non_null(c);
    char err[512] = "";
    appr_store_t *st = appr_pg_open(c, changed, NULL, err, sizeof(err));
    assert_non_null(st);
    assert_true(appr_shared(st));
    struct timespec t = {0, 300 * 1000000}; /* the state thread tries and fails */
    nanosleep(&t, NULL);
    char why[200] = "";
    assert_false(appr_available(st, why, sizeof(why)));
    assert_true(why[0] != 0);
    assert_int_equal(appr_next_id(st), 0);
    appr_req_t r;
    assert_int_equal(appr_get(st, 1, &r), APPR_NOT_FOUND);
    appr_key_t k = {"dev", "svc", "agent", "shop", "0123456789abcdef"};
    uint64_t id;
    int64_t until;
    assert_int_equal(appr_find_grant(st, &k, 0, NULL, NULL, &id, &until), APPR_NOT_FOUND);
    int rows = 0;
    assert_int_equal(appr_list(st, APPR_LIST_ALL, 0, 0, count_row, &rows), 0);
    assert_int_equal(rows, 0);
    /* a one-use grant's claim (a write: the approval worker's) fails, saying why */
    char cwhy[200] = "";
    assert_int_equal(appr_claim(st, 1, cwhy, sizeof(cwhy)), APPR_ERR);
    assert_true(cwhy[0] != 0);
    assert_int_equal(changes, 0);
    appr_close(st); /* joins the state thread */
    cfg_release(c);
}

static void lmdb_store_is_always_available(void **state)
{
    char err[256];
    appr_store_t *st = appr_open(dir, err, sizeof(err));
    assert_non_null(st);
    assert_false(appr_shared(st));
    assert_true(appr_available(st, err, sizeof(err)));
    assert_int_equal(appr_next_id(st), 0);
    appr_close(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(lmdb_is_the_default, setup, teardown),
        cmocka_unit_test_setup_teardown(postgres_section_loads, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_sections_are_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(cli_reports_an_unreachable_database, setup, teardown),
        cmocka_unit_test_setup_teardown(gateway_store_fails_closed_while_unreachable, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(lmdb_store_is_always_available, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
