/* Unit tests for src/metrics: label escaping, the exposition of counters,
 * gauges and histograms, the cardinality cap, summing loops, upstream timing,
 * and the HTTP request parser (tables of input and expected). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "metrics/metrics.h"

static char *render(metrics_t *const *loops, size_t n, const metrics_snapshot_t *x)
{
    buf_t b;
    buf_init(&b, 0);
    metrics_render(&b, loops, n, x);
    assert_false(b.failed);
    char *s = strndup((const char *)b.data, b.len);
    buf_free(&b);
    return s;
}

/* The sample line starting with `prefix` (up to the value), or NULL. */
static const char *line(const char *text, const char *prefix)
{
    size_t n = strlen(prefix);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (!strncmp(p, prefix, n) && p[n] == ' ')
            return p + n + 1;
    return NULL;
}

static void assert_sample(const char *text, const char *prefix, const char *value)
{
    const char *v = line(text, prefix);
    if (!v)
        fail_msg("no sample %s in:\n%s", prefix, text);
    size_t n = strcspn(v, "\n");
    if (strlen(value) != n || strncmp(v, value, n))
        fail_msg("%s is %.*s, expected %s", prefix, (int)n, v, value);
}

static const struct {
    const char *in, *out;
} escape_cases[] = {
    {"plain", "plain"},
    {"", ""},
    {"a\"b", "a\\\"b"},
    {"back\\slash", "back\\\\slash"},
    {"two\nlines", "two\\nlines"},
    {"\\\"\n", "\\\\\\\"\\n"},
    {"tab\there", "tab\there"}, /* only \ " and newline are escaped */
    {"public.customers.email", "public.customers.email"},
};

static void escapes_label_values_as_the_format_says(void **state)
{
    for (size_t i = 0; i < sizeof(escape_cases) / sizeof(escape_cases[0]); i++) {
        buf_t b;
        buf_init(&b, 0);
        metrics_escape_label(&b, escape_cases[i].in);
        buf_append(&b, "", 1);
        assert_string_equal((const char *)b.data, escape_cases[i].out);
        buf_free(&b);
    }
}

static void counts_by_label_and_escapes_in_samples(void **state)
{
    metrics_t *m = metrics_new();
    metrics_login_failed(m, "expired");
    metrics_login_failed(m, "expired");
    metrics_login_failed(m, "we\"ird\\\n");
    metrics_statement(m, "analyst", "deny", "no-ddl", metrics_clock_ns());
    metrics_statement(m, "analyst", "allow", NULL, metrics_clock_ns());
    metrics_connection(m);
    char *t = render(&m, 1, NULL);
    assert_sample(t, "bulwark_login_failures_total{reason=\"expired\"}", "2");
    assert_sample(t, "bulwark_login_failures_total{reason=\"we\\\"ird\\\\\\n\"}", "1");
    assert_sample(t, "bulwark_statements_total{role=\"analyst\",decision=\"deny\",rule=\"no-ddl\"}",
                  "1");
    assert_sample(
        t, "bulwark_statements_total{role=\"analyst\",decision=\"allow\",rule=\"_default\"}", "1");
    assert_sample(t, "bulwark_connections_total", "1");
    assert_non_null(strstr(t, "# TYPE bulwark_login_failures_total counter\n"));
    assert_non_null(strstr(t, "# TYPE bulwark_sessions_active gauge\n"));
    free(t);
    metrics_free(m);
}

static void empty_registry_still_declares_every_family(void **state)
{
    metrics_t *m = metrics_new();
    char *t = render(&m, 1, NULL);
    assert_sample(t, "bulwark_connections_total", "0");
    assert_sample(t, "bulwark_gate_seconds_count", "0");
    assert_sample(t, "bulwark_gate_seconds_bucket{le=\"+Inf\"}", "0");
    assert_non_null(strstr(t, "# TYPE bulwark_masked_values_total counter\n"));
    assert_null(line(t, "bulwark_masked_values_total"));
    free(t);
    metrics_free(m);
}

static void gauges_go_down_and_sessions_end_once(void **state)
{
    metrics_t *m = metrics_new();
    metrics_session_t a = {0}, b = {0}, never = {0};
    metrics_session_start(m, &a, "r", "t");
    metrics_session_start(m, &b, "r", "t");
    metrics_session_end(m, &a, "r", "t");
    metrics_session_end(m, &a, "r", "t"); /* twice: counted once */
    metrics_session_end(m, &never, "r", "t");
    metrics_approvals_pending(m, "r", 1);
    metrics_approvals_pending(m, "r", 1);
    metrics_approvals_pending(m, "r", -1);
    char *t = render(&m, 1, NULL);
    assert_sample(t, "bulwark_sessions_active{role=\"r\",target=\"t\"}", "1");
    assert_sample(t, "bulwark_sessions_total{role=\"r\",target=\"t\"}", "2");
    assert_sample(t, "bulwark_approvals_pending{role=\"r\"}", "1");
    metrics_session_end(m, &b, "r", "t");
    metrics_approvals_pending(m, "r", -1);
    free(t);
    t = render(&m, 1, NULL);
    assert_sample(t, "bulwark_sessions_active{role=\"r\",target=\"t\"}", "0");
    assert_sample(t, "bulwark_approvals_pending{role=\"r\"}", "0");
    free(t);
    metrics_free(m);
}

static void histogram_buckets_are_cumulative(void **state)
{
    metrics_t *m = metrics_new();
    /* the clock is read per call, and the minute goes first: the first call allocates the
     * family's table, which under TSan takes milliseconds before the hook reads the clock */
    metrics_statement(m, "r", "allow", "x",
                      metrics_clock_ns() - 60000000000ull);                /* a minute: +Inf only */
    metrics_statement(m, "r", "allow", "x", metrics_clock_ns() - 3000000); /* 3 ms: le 0.005 */
    metrics_statement(m, "r", "allow", "x", metrics_clock_ns() - 30000000); /* 30 ms: le 0.05 */
    char *t = render(&m, 1, NULL);
    assert_sample(t, "bulwark_gate_seconds_bucket{le=\"0.0025\"}", "0");
    assert_sample(t, "bulwark_gate_seconds_bucket{le=\"0.005\"}", "1");
    assert_sample(t, "bulwark_gate_seconds_bucket{le=\"0.025\"}", "1");
    assert_sample(t, "bulwark_gate_seconds_bucket{le=\"0.05\"}", "2");
    assert_sample(t, "bulwark_gate_seconds_bucket{le=\"10\"}", "2");
    assert_sample(t, "bulwark_gate_seconds_bucket{le=\"+Inf\"}", "3");
    assert_sample(t, "bulwark_gate_seconds_count", "3");
    double sum = strtod(line(t, "bulwark_gate_seconds_sum"), NULL);
    assert_true(sum > 60.03 && sum < 61);
    free(t);
    metrics_free(m);
}

static void upstream_timing_follows_sync_points(void **state)
{
    metrics_t *m = metrics_new();
    metrics_session_t s = {0};
    metrics_upstream_ready(m, &s, "shop"); /* nothing sent: ignored */
    metrics_upstream_sent(&s, 'P');        /* not a sync point */
    metrics_upstream_sent(&s, 'Q');
    metrics_upstream_bytes(m, &s, "shop");
    metrics_upstream_bytes(m, &s, "shop"); /* only the first byte counts */
    metrics_upstream_ready(m, &s, "shop");
    metrics_upstream_sent(&s, 'S');
    metrics_upstream_sent(&s, 'S');
    metrics_upstream_ready(m, &s, "shop"); /* no bytes seen: first byte = ready */
    metrics_upstream_ready(m, &s, "shop");
    metrics_upstream_ready(m, &s, "shop"); /* one too many: ignored */
    char *t = render(&m, 1, NULL);
    assert_sample(t, "bulwark_upstream_ready_seconds_count{target=\"shop\"}", "3");
    assert_sample(t, "bulwark_upstream_first_byte_seconds_count{target=\"shop\"}", "3");
    assert_int_equal(s.outstanding, 0);
    free(t);
    metrics_free(m);
}

static void cardinality_is_capped_with_an_overflow_series(void **state)
{
    metrics_t *m = metrics_new();
    char name[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof(name), "reason-%d", i);
        metrics_login_failed(m, name);
    }
    metrics_login_failed(m, "reason-0"); /* an existing series still counts */
    char *t = render(&m, 1, NULL);
    size_t series = 0;
    for (const char *p = t; (p = strstr(p, "\nbulwark_login_failures_total{")); p++)
        series++;
    assert_int_equal(series, MX_MAX_SERIES * 3 / 4 + 1);
    assert_sample(t, "bulwark_login_failures_total{reason=\"reason-0\"}", "2");
    char other[8];
    snprintf(other, sizeof(other), "%d", 1000 - MX_MAX_SERIES * 3 / 4);
    assert_sample(t, "bulwark_login_failures_total{reason=\"_other\"}", other);
    free(t);
    metrics_free(m);
}

static void long_label_values_are_cut(void **state)
{
    metrics_t *m = metrics_new();
    char col[400];
    memset(col, 'c', sizeof(col) - 1);
    col[sizeof(col) - 1] = '\0';
    metrics_masked(m, col, NULL, 5);
    metrics_masked(m, NULL, "email", 2);
    metrics_masked(m, NULL, "email", 0); /* nothing masked: no change */
    char *t = render(&m, 1, NULL);
    char prefix[600];
    snprintf(prefix, sizeof(prefix), "bulwark_masked_values_total{column=\"%.*s\",detector=\"\"}",
             MX_MAX_VALUE, col);
    assert_sample(t, prefix, "5");
    assert_sample(t, "bulwark_masked_values_total{column=\"\",detector=\"email\"}", "2");
    free(t);
    metrics_free(m);
}

static void loops_are_summed_at_scrape(void **state)
{
    metrics_t *a = metrics_new(), *b = metrics_new();
    metrics_login_failed(a, "expired");
    metrics_login_failed(b, "expired");
    metrics_login_failed(b, "audience");
    metrics_connection(a);
    metrics_connection(b);
    metrics_connection(b);
    metrics_t *loops[] = {a, NULL, b};
    char *t = render(loops, 3, NULL);
    assert_sample(t, "bulwark_login_failures_total{reason=\"expired\"}", "2");
    assert_sample(t, "bulwark_login_failures_total{reason=\"audience\"}", "1");
    assert_sample(t, "bulwark_connections_total", "3");
    /* sorted by label values */
    assert_true(strstr(t, "reason=\"audience\"") < strstr(t, "reason=\"expired\""));
    free(t);
    metrics_free(a);
    metrics_free(b);
}

static void null_registry_is_a_no_op(void **state)
{
    metrics_session_t s = {0};
    metrics_connection(NULL);
    metrics_session_start(NULL, &s, "r", "t");
    metrics_session_end(NULL, &s, "r", "t");
    metrics_statement(NULL, "r", "allow", NULL, 0);
    metrics_login_failed(NULL, "x");
    metrics_upstream_error(NULL, "t", "lost");
    metrics_approvals_pending(NULL, "r", 1);
    metrics_masked(NULL, "c", NULL, 1);
    metrics_upstream_sent(&s, 'Q');
    metrics_upstream_bytes(NULL, &s, "t");
    metrics_upstream_ready(NULL, &s, "t");
    metrics_free(NULL);
}

static void snapshot_figures_are_rendered(void **state)
{
    metrics_t *m = metrics_new();
    metrics_target_health_t th[] = {{.name = "shop", .up = true}, {.name = "we\"ird", .up = false}};
    metrics_snapshot_t x = {.connections = 7,
                            .max_connections = 100,
                            .start_time = 1700000000,
                            .have_cache = true,
                            .have_audit = true,
                            .targets = th,
                            .n_targets = 2};
    x.cache.hits = 5;
    x.cache.misses = 2;
    x.audit.written = 10;
    x.audit.appended = 11;
    x.audit.batch_hist[0] = 2;     /* two commits of 1 record */
    x.audit.batch_hist[3] = 1;     /* one of 8-15 */
    x.audit.commit_us_hist[9] = 3; /* 512-1023 µs */
    x.audit.commit_us_total = 2000;
    char *t = render(&m, 1, &x);
    assert_sample(t, "bulwark_connections", "7");
    assert_sample(t, "bulwark_parse_cache_hits_total", "5");
    assert_sample(t, "bulwark_parse_cache_misses_total", "2");
    assert_sample(t, "bulwark_audit_records_written_total", "10");
    assert_sample(t, "bulwark_audit_records_appended_total", "11");
    assert_sample(t, "bulwark_audit_group_commit_size_bucket{le=\"1\"}", "2");
    assert_sample(t, "bulwark_audit_group_commit_size_bucket{le=\"7\"}", "2");
    assert_sample(t, "bulwark_audit_group_commit_size_bucket{le=\"15\"}", "3");
    assert_sample(t, "bulwark_audit_group_commit_size_count", "3");
    assert_sample(t, "bulwark_audit_flush_seconds_bucket{le=\"0.000512\"}", "0");
    assert_sample(t, "bulwark_audit_flush_seconds_bucket{le=\"0.001024\"}", "3");
    assert_sample(t, "bulwark_audit_flush_seconds_bucket{le=\"+Inf\"}", "3");
    assert_sample(t, "bulwark_audit_flush_seconds_sum", "0.002000000");
    assert_sample(t, "bulwark_target_up{target=\"shop\"}", "1");
    assert_sample(t, "bulwark_target_up{target=\"we\\\"ird\"}", "0");
    assert_sample(t, "bulwark_audit_failing", "0");
    free(t);
    metrics_free(m);
}

/* ---- HTTP requests ---- */

static const struct {
    const char *req;
    mx_req_status_t st;
    const char *path;
    bool head;
} http_cases[] = {
    {"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", MX_REQ_OK, "/metrics", false},
    {"HEAD /healthz HTTP/1.0\r\n\r\n", MX_REQ_OK, "/healthz", true},
    {"GET /metrics?name[]=x HTTP/1.1\r\n\r\n", MX_REQ_OK, "/metrics", false},
    {"GET /livez HTTP/1.1\n\n", MX_REQ_OK, "/livez", false}, /* bare LF */
    {"GET /metrics HTTP/1.1\r\nHost: x\r\n", MX_REQ_INCOMPLETE, NULL, false},
    {"GET /metr", MX_REQ_INCOMPLETE, NULL, false},
    {"", MX_REQ_INCOMPLETE, NULL, false},
    {"POST /metrics HTTP/1.1\r\n", MX_REQ_METHOD, NULL, false}, /* refused before the headers */
    {"get /metrics HTTP/1.1\r\n\r\n", MX_REQ_METHOD, NULL, false},
    {"GET metrics HTTP/1.1\r\n\r\n", MX_REQ_BAD, NULL, false},
    {"GET /metrics HTTP/2.0\r\n\r\n", MX_REQ_BAD, NULL, false},
    {"GET /metrics\r\n\r\n", MX_REQ_BAD, NULL, false}, /* HTTP/0.9 */
    {"GET  /metrics HTTP/1.1\r\n\r\n", MX_REQ_BAD, NULL, false},
    {"GET /metrics HTTP/1.1 \r\n\r\n", MX_REQ_BAD, NULL, false},
    {"BLAH\r\n\r\n", MX_REQ_BAD, NULL, false},
};

static void parses_http_requests_strictly(void **state)
{
    for (size_t i = 0; i < sizeof(http_cases) / sizeof(http_cases[0]); i++) {
        char path[64] = "";
        bool head = false;
        mx_req_status_t st = metrics_http_parse(http_cases[i].req, strlen(http_cases[i].req), path,
                                                sizeof(path), &head);
        if (st != http_cases[i].st)
            fail_msg("case %zu (%s): status %d, expected %d", i, http_cases[i].req, st,
                     http_cases[i].st);
        if (http_cases[i].path) {
            assert_string_equal(path, http_cases[i].path);
            assert_int_equal(head, http_cases[i].head);
        }
    }
    /* a NUL anywhere in the header block, and a path longer than the buffer */
    const char nul[] = "GET /metrics HTTP/1.1\r\nX: a\0b\r\n\r\n";
    char path[16];
    bool head;
    assert_int_equal(metrics_http_parse(nul, sizeof(nul) - 1, path, sizeof(path), &head),
                     MX_REQ_BAD);
    const char *lng = "GET /aaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n\r\n";
    assert_int_equal(metrics_http_parse(lng, strlen(lng), path, sizeof(path), &head), MX_REQ_BAD);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(escapes_label_values_as_the_format_says),
        cmocka_unit_test(counts_by_label_and_escapes_in_samples),
        cmocka_unit_test(empty_registry_still_declares_every_family),
        cmocka_unit_test(gauges_go_down_and_sessions_end_once),
        cmocka_unit_test(histogram_buckets_are_cumulative),
        cmocka_unit_test(upstream_timing_follows_sync_points),
        cmocka_unit_test(cardinality_is_capped_with_an_overflow_series),
        cmocka_unit_test(long_label_values_are_cut),
        cmocka_unit_test(loops_are_summed_at_scrape),
        cmocka_unit_test(null_registry_is_a_no_op),
        cmocka_unit_test(snapshot_figures_are_rendered),
        cmocka_unit_test(parses_http_requests_strictly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
