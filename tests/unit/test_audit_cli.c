/*
 * Unit tests for the audit commands as a user runs them: `bulwark sessions`,
 * `replay`, `audit verify|export|pubkey`, on a store written by the test with
 * a fixed clock, compared with golden text. psql's aligned format is pinned by
 * cases printed by psql 15 itself. The export is also checked by the outside
 * verifier of docs/audit.md (Python, standard library only) when
 * /usr/bin/python3 exists.
 */
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "helpers.h"
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "audit/audit.h"
#include "audit/internal.h"
#include "cli/cli.h"

static char dir[TEST_DIR_MAX], config[TEST_DIR_MAX + 32], store[TEST_DIR_MAX + 32];

/* ---- helpers ---- */

/* Run a CLI function with stdout and stderr captured. */
typedef struct run {
    int rc;
    char *out, *err;
} run_t;

static char *slurp(FILE *f)
{
    fflush(f);
    long n = ftell(f);
    char *s = malloc((size_t)n + 1);
    rewind(f);
    size_t got = fread(s, 1, (size_t)n, f);
    s[got] = 0;
    return s;
}

static run_t run(int (*fn)(int, char **), ...)
{
    char *argv[16];
    int argc = 0;
    va_list ap;
    va_start(ap, fn);
    for (char *a; argc < 15 && (a = va_arg(ap, char *)) != NULL;)
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    fflush(stdout);
    fflush(stderr);
    FILE *o = tmpfile(), *e = tmpfile();
    int so = dup(1), se = dup(2);
    dup2(fileno(o), 1);
    dup2(fileno(e), 2);
    run_t r;
    r.rc = fn(argc, argv);
    fflush(stdout);
    fflush(stderr);
    dup2(so, 1);
    dup2(se, 2);
    close(so);
    close(se);
    fseek(o, 0, SEEK_END);
    fseek(e, 0, SEEK_END);
    r.out = slurp(o);
    r.err = slurp(e);
    fclose(o);
    fclose(e);
    return r;
}

static void run_free(run_t *r)
{
    free(r->out);
    free(r->err);
}

static void expect_text(const char *what, const char *got, const char *want)
{
    if (strcmp(got, want)) {
        char path[TEST_PATH_MAX];
        snprintf(path, sizeof(path), "%s/bulwark-audit-cli-got.txt", test_tmp_base());
        FILE *f = fopen(path, "w");
        if (f) {
            fputs(got, f);
            fclose(f);
        }
        print_message("---- %s differs: got (whole text in %s) ----\n%s\n", what, path, got);
        fail_msg("%s differs", what);
    }
}

/* ---- the store every test reads ---- */

/* read by the audit writer thread: atomic (make tsan) */
static _Atomic int64_t clock_us = 1714564800000000; /* 2024-05-01T12:00:00Z */

static int64_t fixed_clock(void)
{
    return clock_us;
}

static void at(int64_t offset_ms)
{
    clock_us = 1714564800000000 + offset_ms * 1000;
}

static cJSON *obj(const char *json)
{
    cJSON *j = cJSON_Parse(json);
    assert_non_null(j);
    return j;
}

static uint64_t put(audit_t *a, audit_rec_type_t t, const char *sid, const char *json)
{
    uint64_t seq;
    assert_int_equal(audit_append(a, t, sid, obj(json), &seq), 0);
    return seq;
}

static void write_store(void)
{
    cfg_errors_t errs = {0};
    cfg_t *c = cfg_load(config, &errs);
    for (size_t i = 0; i < errs.n; i++)
        print_message("%s\n", errs.msgs[i]);
    assert_non_null(c);
    cfg_errors_free(&errs);
    char err[256];
    audit_opts_t o = {.checkpoint_every = 4, .now_us = fixed_clock};
    at(0);
    audit_t *a = audit_open(c, &o, NULL, NULL, err, sizeof(err));
    if (!a)
        fail_msg("audit_open: %s", err);
    put(a, AUDIT_REC_SESSION_START, "s-0001",
        "{\"sub\":\"svc-agent-1\",\"iss\":\"dev\",\"role\":\"analyst\",\"target\":\"shop\","
        "\"client\":\"127.0.0.1:50312\",\"tls\":\"TLSv1.3\",\"application_name\":\"langchain\","
        "\"claims\":{\"sub\":\"svc-agent-1\",\"groups\":[\"analytics-agents\"]}}");
    at(12);
    char js[512];
    uint64_t s1 = put(a, AUDIT_REC_STATEMENT, "s-0001",
                      "{\"sql\":\"SELECT id, email, note, amount FROM customers ORDER BY id "
                      "LIMIT 2\",\"protocol\":\"simple\",\"intent\":\"select public.customers\","
                      "\"decision\":\"allow\",\"rule\":\"read-public\","
                      "\"start\":1714564800012000}");
    at(15);
    snprintf(js, sizeof(js),
             "{\"stmt\":%llu,\"end\":1714564800015250,\"tag\":\"SELECT 2\",\"rows\":2,"
             "\"columns\":[\"id\",\"email\",\"note\",\"amount\"],\"types\":[23,25,25,1700],"
             "\"values\":[[\"1\",\"a***@example.com\",\"first\\nline two\",\"3.5\"],"
             "[\"22\",\"b***@example.com\",null,\"10\"]],\"truncated\":false}",
             (unsigned long long)s1);
    put(a, AUDIT_REC_RESULT, "s-0001", js);
    at(1500);
    uint64_t s2 = put(a, AUDIT_REC_STATEMENT, "s-0001",
                      "{\"sql\":\"DROP TABLE customers\",\"protocol\":\"simple\","
                      "\"intent\":\"ddl public.customers\",\"decision\":\"deny\","
                      "\"rule\":\"no-ddl\",\"start\":1714564801500000}");
    snprintf(js, sizeof(js),
             "{\"stmt\":%llu,\"end\":1714564801500100,\"sqlstate\":\"42501\","
             "\"error\":\"bulwark: DROP TABLE on public.customers denied by rule \\\"no-ddl\\\" "
             "(role analyst)\"}",
             (unsigned long long)s2);
    put(a, AUDIT_REC_RESULT, "s-0001", js);
    at(2100);
    uint64_t s3 = put(a, AUDIT_REC_STATEMENT, "s-0001",
                      "{\"sql\":\"UPDATE orders\\n   SET status = $1\\n WHERE id = $2\","
                      "\"params\":[\"shipped\",\"42\"],\"protocol\":\"extended\","
                      "\"intent\":{\"update\":[\"public.orders\"]},\"decision\":\"allow\","
                      "\"rule\":\"orders-fix\",\"approval\":17,\"start\":1714564802100000}");
    at(2104);
    snprintf(js, sizeof(js),
             "{\"stmt\":%llu,\"end\":1714564802104000,\"tag\":\"UPDATE 1\",\"rows\":1}",
             (unsigned long long)s3);
    put(a, AUDIT_REC_RESULT, "s-0001", js);
    at(2600);
    put(a, AUDIT_REC_STATEMENT, "s-0001",
        "{\"sql\":\"SELECT '\\u001b[31mred'\",\"decision\":\"allow\",\"rule\":\"read-public\","
        "\"start\":1714564802600000}");
    at(5210);
    put(a, AUDIT_REC_SESSION_END, "s-0001",
        "{\"reason\":\"client closed the connection\",\"statements\":4,\"denied\":1}");
    at(60000);
    put(a, AUDIT_REC_LOGIN_FAILED, NULL,
        "{\"reason\":\"token expired\",\"sqlstate\":\"28P01\",\"sub\":\"svc-agent-2\","
        "\"role\":\"analyst\",\"target\":\"shop\",\"client\":\"10.0.0.7:41000\"}");
    at(3600000);
    put(a, AUDIT_REC_SESSION_START, "s-0002",
        "{\"sub\":\"etl-7\",\"iss\":\"dev\",\"role\":\"loader\",\"target\":\"shop\","
        "\"client\":\"10.0.0.9:5000\"}");
    at(3600250);
    put(a, AUDIT_REC_STATEMENT, "s-0002",
        "{\"sql\":\"COPY orders FROM STDIN\",\"decision\":\"allow\",\"rule\":\"load\","
        "\"start\":1714568400250000}");
    at(3700000);
    audit_close(a);
    cfg_release(c);
}

static int setup(void **state)
{
    (void)state;
    test_mkdtemp(dir, sizeof(dir), "bulwark-audit-cli");
    snprintf(config, sizeof(config), "%s/bulwark.json", dir);
    snprintf(store, sizeof(store), "%s/var/audit", dir);
    test_write_file(dir, "dev.secret", "0123456789abcdef0123456789abcdef0123456789\n");
    char p[TEST_DIR_MAX + 16];
    snprintf(p, sizeof(p), "%s/audit.pem", dir);
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    EVP_PKEY_free(k);
    test_write_file(
        dir, "bulwark.json",
        "{\n"
        "  \"listen\": \"127.0.0.1:6432\",\n"
        "  \"allow_plaintext_on_loopback\": true,\n"
        "  \"identity\": {\"issuers\": [{\"issuer\": \"dev\", \"audience\": \"bulwark\",\n"
        "                                \"hs256_secret_file\": \"dev.secret\"}]},\n"
        "  \"targets\": {\"shop\": {\"host\": \"127.0.0.1\"}},\n"
        "  \"audit\": {\"path\": \"var/audit\", \"signing_key_file\": \"audit.pem\",\n"
        "            \"retention\": {\"max_age\": \"3650d\", \"max_size\": \"512MiB\"}}\n"
        "}\n");
    write_store();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    test_rmtree(dir);
    return 0;
}

/* ---- psql's aligned format (expected texts printed by psql 15) ---- */

static char *fmt(size_t nc, const char *const *names, const char *aligns, size_t nr,
                 const char *const *cells)
{
    FILE *f = tmpfile();
    audit_fmt_aligned(f, nc, names, aligns, nr, cells);
    fseek(f, 0, SEEK_END);
    char *s = slurp(f);
    fclose(f);
    return s;
}

static void aligned_format_matches_psql(void **state)
{
    (void)state;
    struct {
        size_t nc, nr;
        const char *names[4], *aligns, *cells[8], *psql;
    } cases[] = {
        {3,
         2,
         {"id", "name", "amount"},
         "rlr",
         {"1", "alice", "3.5", "22", NULL, "10"},
         " id | name  | amount \n"
         "----+-------+--------\n"
         "  1 | alice |    3.5\n"
         " 22 |       |     10\n"
         "(2 rows)\n"},
        {4,
         1,
         {"x", "y", "wide", "jp"},
         "lrll",
         {"a\nbc", "1", "\xc3\xbc", "\xe6\x97\xa5\xe6\x9c\xac"},
         " x  | y | wide |  jp  \n"
         "----+---+------+------\n"
         " a +| 1 | \xc3\xbc    | \xe6\x97\xa5\xe6\x9c\xac\n"
         " bc |   |      | \n"
         "(1 row)\n"},
        {1, 0, {"id"}, "r", {NULL}, " id \n----\n(0 rows)\n"},
        {2,
         1,
         {"a long header", "n"},
         "lr",
         {"x", "5"},
         " a long header | n \n"
         "---------------+---\n"
         " x             | 5\n"
         "(1 row)\n"},
        {1, 1, {"last"}, "l", {"l1\nl2"}, " last \n------\n l1  +\n l2\n(1 row)\n"},
        {2,
         1,
         {"a", "multi\nline"},
         "rr",
         {"1", "2"},
         " a | multi+\n"
         "   | line  \n"
         "---+-------\n"
         " 1 |     2\n"
         "(1 row)\n"},
        /* control characters as psql shows them: tab expanded, \r, \x1B */
        {1,
         1,
         {"v"},
         "l",
         {"a\tb\r\x1b[2J"},
         "         v          \n--------------------\n a       b\\r\\x1B[2J\n(1 row)\n"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *s = fmt(cases[i].nc, cases[i].names, cases[i].aligns, cases[i].nr, cases[i].cells);
        char what[32];
        snprintf(what, sizeof(what), "case %zu", i);
        expect_text(what, s, cases[i].psql);
        free(s);
    }
}

/* ---- the commands ---- */

static const char replay_golden[] =
    "session s-0001\n"
    "  subject     svc-agent-1\n"
    "  issuer      dev\n"
    "  role        analyst\n"
    "  target      shop\n"
    "  client      127.0.0.1:50312\n"
    "  tls         TLSv1.3\n"
    "  application langchain\n"
    "  claims      {\"groups\":[\"analytics-agents\"],\"sub\":\"svc-agent-1\"}\n"
    "  started     2024-05-01 12:00:00.000 UTC\n"
    "  ended       +5.210s  client closed the connection\n"
    "\n"
    "+0.012s  #3  allow  (rule read-public)\n"
    "    SELECT id, email, note, amount FROM customers ORDER BY id LIMIT 2\n"
    "    intent: select public.customers\n"
    "+0.015s  SELECT 2  (3.250 ms)\n"
    " id |      email       |   note   | amount \n"
    "----+------------------+----------+--------\n"
    "  1 | a***@example.com | first   +|    3.5\n"
    "    |                  | line two | \n"
    " 22 | b***@example.com |          |     10\n"
    "(2 rows)\n"
    "\n"
    "+1.500s  #5  deny  (rule no-ddl)\n"
    "    DROP TABLE customers\n"
    "    intent: ddl public.customers\n"
    "+1.500s  ERROR 42501  bulwark: DROP TABLE on public.customers denied by rule \"no-ddl\" "
    "(role analyst)  (0.100 ms)\n"
    "\n"
    "+2.100s  #7  allow  (rule orders-fix)  approval 17\n"
    "    UPDATE orders\n"
    "       SET status = $1\n"
    "     WHERE id = $2\n"
    "    params: $1='shipped' $2='42'\n"
    "    intent: {\"update\":[\"public.orders\"]}\n"
    "+2.104s  UPDATE 1  (4.000 ms)\n"
    "\n"
    "+2.600s  #9  allow  (rule read-public)\n"
    "    SELECT '\\x1B[31mred'\n"
    "    (no result recorded)\n";

static void replay_prints_a_transcript(void **state)
{
    (void)state;
    run_t r = run(cli_replay, "replay", "-c", config, "s-0001", NULL);
    assert_int_equal(r.rc, 0);
    expect_text("replay s-0001", r.out, replay_golden);
    run_free(&r);

    r = run(cli_replay, "replay", "-c", config, "s-0001", "--json", NULL);
    assert_int_equal(r.rc, 0);
    cJSON *j = cJSON_Parse(r.out);
    assert_non_null(j);
    const cJSON *recs = cJSON_GetObjectItem(j, "records");
    assert_int_equal(cJSON_GetArraySize(recs), 9);
    const cJSON *third = cJSON_GetArrayItem(recs, 2);
    assert_string_equal(cJSON_GetObjectItem(third, "type")->valuestring, "result");
    assert_int_equal((int)cJSON_GetObjectItem(third, "offset_us")->valuedouble, 15000);
    cJSON_Delete(j);
    /* microsecond times as plain integers, never 1.714564800012e+15 */
    assert_null(strstr(r.out, "e+"));
    assert_non_null(strstr(r.out, "\"ts\":1714564800"));
    run_free(&r);

    r = run(cli_replay, "replay", "-c", config, "s-9999", NULL);
    assert_int_equal(r.rc, 1);
    assert_string_equal(r.err, "bulwark replay: no session \"s-9999\" in the audit store\n");
    run_free(&r);
}

static const char sessions_golden[] =
    " session |    started (UTC)    | duration |  role   |   subject   | target |     client      "
    "| records |             end              \n"
    "---------+---------------------+----------+---------+-------------+--------+-----------------"
    "+---------+------------------------------\n"
    " s-0001  | 2024-05-01 12:00:00 | 5.210s   | analyst | svc-agent-1 | shop   | 127.0.0.1:50312 "
    "|       9 | client closed the connection\n"
    " s-0002  | 2024-05-01 13:00:00 | open     | loader  | etl-7       | shop   | 10.0.0.9:5000   "
    "|       2 | \n"
    "(2 rows)\n";

static void sessions_lists_and_filters(void **state)
{
    (void)state;
    run_t r = run(cli_sessions, "sessions", "-c", config, NULL);
    assert_int_equal(r.rc, 0);
    expect_text("sessions", r.out, sessions_golden);
    run_free(&r);

    r = run(cli_sessions, "sessions", "-c", config, "--role", "loader", "--json", NULL);
    assert_int_equal(r.rc, 0);
    cJSON *j = cJSON_Parse(r.out);
    assert_int_equal(cJSON_GetArraySize(j), 1);
    assert_string_equal(cJSON_GetObjectItem(j->child, "session")->valuestring, "s-0002");
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j->child, "end")));
    cJSON_Delete(j);
    assert_null(strstr(r.out, "e+"));
    assert_non_null(strstr(r.out, "\"start\":1714568400000000"));
    run_free(&r);

    r = run(cli_sessions, "sessions", "-c", config, "--sub", "svc-agent-1", "--json", NULL);
    j = cJSON_Parse(r.out);
    assert_int_equal(cJSON_GetArraySize(j), 1);
    assert_string_equal(cJSON_GetObjectItem(j->child, "session")->valuestring, "s-0001");
    assert_int_equal((int)cJSON_GetObjectItem(j->child, "records")->valuedouble, 9);
    cJSON_Delete(j);
    run_free(&r);

    r = run(cli_sessions, "sessions", "-c", config, "--since", "2024-05-01T12:30:00Z", "--json",
            NULL);
    j = cJSON_Parse(r.out);
    assert_int_equal(cJSON_GetArraySize(j), 1);
    cJSON_Delete(j);
    run_free(&r);

    r = run(cli_sessions, "sessions", "-c", config, "--since", "1h", "--sub", "nobody", NULL);
    assert_int_equal(r.rc, 0);
    assert_string_equal(r.out, " session | started (UTC) | duration | role | subject | target | "
                               "client | records | end \n"
                               "---------+---------------+----------+------+---------+--------+"
                               "--------+---------+-----\n"
                               "(0 rows)\n");
    run_free(&r);
}

/* The outside verifier of docs/audit.md, kept identical to it. */
static const char py_verifier[] =
    "import hashlib, json, sys\n"
    "\n"
    "def canonical(v):  # RFC 8785 for the values records hold (strings, ints, ...)\n"
    "    return json.dumps(v, ensure_ascii=False, sort_keys=True,\n"
    "                      separators=(',', ':')).encode('utf-8')\n"
    "\n"
    "prev, anchor, n = None, None, 0\n"
    "for line in sys.stdin:\n"
    "    o = json.loads(line)\n"
    "    if 'checkpoint' in o:\n"
    "        cp = o['checkpoint']\n"
    "        if prev is None:\n"
    "            anchor = cp  # the export starts after this checkpoint\n"
    "        elif cp['seq'] != last_seq or cp['hash'] != prev:\n"
    "            sys.exit('checkpoint %d does not match record %d' % (cp['seq'], last_seq))\n"
    "        continue\n"
    "    rec, seq = o['record'], o['seq']\n"
    "    if rec['seq'] != seq:\n"
    "        sys.exit('record %d: seq mismatch' % seq)\n"
    "    expect = prev or (anchor['hash'] if anchor else None) or (\n"
    "        '00' * 32 if seq == 1 else o['prev_hash'])\n"
    "    if o['prev_hash'] != expect:\n"
    "        sys.exit('record %d does not link to its predecessor' % seq)\n"
    "    h = hashlib.sha256(bytes.fromhex(o['prev_hash']) + canonical(rec)).hexdigest()\n"
    "    if h != o['hash']:\n"
    "        sys.exit('record %d was changed' % seq)\n"
    "    prev, last_seq, n = h, seq, n + 1\n"
    "print('ok: %d records' % n)\n";

static void export_streams_records_an_outside_verifier_accepts(void **state)
{
    (void)state;
    run_t r = run(cli_audit, "audit", "export", "-c", config, "--format", "jsonl", NULL);
    assert_int_equal(r.rc, 0);
    int records = 0, checkpoints = 0;
    for (char *line = strtok(r.out, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        records += cJSON_GetObjectItem(j, "record") != NULL;
        checkpoints += cJSON_GetObjectItem(j, "checkpoint") != NULL;
        cJSON_Delete(j);
    }
    assert_int_equal(records, 14);
    assert_true(checkpoints >= 3);
    run_free(&r);

    r = run(cli_audit, "audit", "export", "-c", config, "--since", "2024-05-01T13:00:00Z", NULL);
    assert_int_equal(r.rc, 0);
    assert_non_null(strstr(r.out, "\"seq\":12}")); /* s-0002's start */
    assert_null(strstr(r.out, "\"seq\":11}"));
    run_free(&r);

    if (access("/usr/bin/python3", X_OK) != 0) {
        print_message("  (no /usr/bin/python3: outside verifier skipped)\n");
        return;
    }
    char py[256], exp[256], cmd[1024];
    snprintf(py, sizeof(py), "%s/verify.py", dir);
    snprintf(exp, sizeof(exp), "%s/export.jsonl", dir);
    test_write_file(dir, "verify.py", py_verifier);
    r = run(cli_audit, "audit", "export", "-c", config, NULL);
    test_write_file(dir, "export.jsonl", r.out);
    run_free(&r);
    snprintf(cmd, sizeof(cmd), "/usr/bin/python3 %s < %s", py, exp);
    FILE *p = popen(cmd, "r");
    char out[256] = "";
    size_t n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = 0;
    assert_int_equal(pclose(p), 0);
    assert_string_equal(out, "ok: 14 records\n");
    /* one changed character and the outside verifier objects */
    char sed[512];
    snprintf(sed, sizeof(sed), "sed -i 's/DROP TABLE customers/DROP TABLE customerz/' %s", exp);
    assert_int_equal(system(sed), 0);
    p = popen(cmd, "r");
    n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = 0;
    assert_int_not_equal(pclose(p), 0);
}

static void verify_and_pubkey(void **state)
{
    (void)state;
    run_t r = run(cli_audit, "audit", "verify", "-c", config, NULL);
    assert_int_equal(r.rc, 0);
    assert_non_null(strstr(r.out, "ok: records 1 to 14 (14), chain intact\n"));
    assert_non_null(strstr(r.out, "signed, signatures checked"));
    run_free(&r);

    r = run(cli_audit, "audit", "pubkey", "-c", config, NULL);
    assert_int_equal(r.rc, 0);
    assert_non_null(strstr(r.out, "-----BEGIN PUBLIC KEY-----"));
    test_write_file(dir, "audit.pub", r.out);
    run_free(&r);
    char pub[256];
    snprintf(pub, sizeof(pub), "%s/audit.pub", dir);
    r = run(cli_audit, "audit", "verify", "-c", config, "--key", pub, NULL);
    assert_int_equal(r.rc, 0);
    run_free(&r);
}

static void bad_arguments_exit_2_and_help_exits_0(void **state)
{
    (void)state;
    struct {
        int (*fn)(int, char **);
        const char *argv[6];
    } bad[] = {
        {cli_sessions, {"sessions", NULL}},
        {cli_sessions, {"sessions", "-c", config, "--since", "yesterday", NULL}},
        {cli_sessions, {"sessions", "-c", config, "--frob", NULL}},
        {cli_sessions, {"sessions", "-c", config, "--role", NULL}},
        {cli_replay, {"replay", "-c", config, NULL}},
        {cli_replay, {"replay", "-c", config, "a", "b", NULL}},
        {cli_audit, {"audit", NULL}},
        {cli_audit, {"audit", "frob", "-c", config, NULL}},
        {cli_audit, {"audit", "export", "-c", config, "--format", "csv"}},
        {cli_audit, {"audit", "verify", "-c", config, "--since", "1h"}},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char **a = bad[i].argv;
        run_t r = run(bad[i].fn, a[0], a[1], a[2], a[3], a[4], a[5], NULL);
        if (r.rc != 2)
            fail_msg("case %zu (%s %s): exit %d, expected 2", i, a[0], a[1] ? a[1] : "", r.rc);
        assert_non_null(strchr(r.err, '\n'));
        assert_ptr_equal(strchr(r.err, '\n'), r.err + strlen(r.err) - 1); /* one line */
        run_free(&r);
    }
    int (*fns[])(int, char **) = {cli_sessions, cli_replay, cli_audit};
    const char *names[] = {"sessions", "replay", "audit"};
    for (int i = 0; i < 3; i++) {
        run_t r = run(fns[i], names[i], "--help", NULL);
        assert_int_equal(r.rc, 0);
        assert_non_null(strstr(r.out, "usage: bulwark"));
        run_free(&r);
    }
}

static void verify_fails_with_exit_1_naming_the_record(void **state)
{
    (void)state;
    MDB_env *env;
    audit_dbs_t dbs;
    char err[256];
    assert_int_equal(store_open(store, 0, true, false, &env, &dbs, err, sizeof(err)), 0);
    MDB_txn *txn;
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    uint8_t kb[8];
    be64_put(kb, 6);
    MDB_val k = {8, kb};
    assert_int_equal(mdb_del(txn, dbs.records, &k, NULL), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    run_t r = run(cli_audit, "audit", "verify", "-c", config, NULL);
    assert_int_equal(r.rc, 1);
    assert_non_null(strstr(r.out, "FAILED: record 6 was removed\n"));
    run_free(&r);
}

/* A store written by someone else may hold any bytes: what is not UTF-8 and a
 * record type the gateway never writes come out escaped like controls do. */
static void replay_escapes_bytes_that_are_not_utf8(void **state)
{
    (void)state;
    present_replay_t *l = present_replay_new();
    assert_non_null(l);
    cJSON *d1 = cJSON_CreateObject(), *d2 = cJSON_CreateObject();
    cJSON_AddStringToObject(d1, "sql",
                            "SELECT '\x9b"
                            "31m', '\xc3(', '\xe2\x80\xae'");
    cJSON_AddStringToObject(d1, "decision", "allow");
    cJSON_AddNumberToObject(d1, "start", 1e300); /* beyond int64: ignored, not converted */
    cJSON_AddStringToObject(d2, "x", "y");
    audit_record_t r1 = {.key = 1,
                         .seq = 1,
                         .ts = 1714564800000000,
                         .type = AUDIT_REC_STATEMENT,
                         .type_name = "statement",
                         .session = "s-1",
                         .data = d1,
                         .parsed = true,
                         .hash_ok = true};
    audit_record_t r2 = {.key = 2,
                         .seq = 2,
                         .ts = 1714564800001000,
                         .type_name = "no\x9bte",
                         .session = "s-1",
                         .data = d2,
                         .parsed = true,
                         .hash_ok = true};
    assert_int_equal(present_replay_add(l, &r1), 0);
    assert_int_equal(present_replay_add(l, &r2), 0);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    present_replay_print(l, "s-1", false, f);
    assert_int_equal(fclose(f), 0);
    expect_text("replay of foreign bytes", text,
                "session s-1\n"
                "  (the session start was not recorded or has been retired)\n"
                "  started     2024-05-01 12:00:00.000 UTC\n"
                "\n"
                "+0.000s  #1  allow\n"
                "    SELECT '\\x9B31m', '\\xC3(', '\\u202E'\n"
                "    (no result recorded)\n"
                "\n"
                "+0.001s  #2  no\\x9Bte  {\"x\":\"y\"}\n");
    free(text);
    present_replay_free(l);
    cJSON_Delete(d1);
    cJSON_Delete(d2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(aligned_format_matches_psql),
        cmocka_unit_test(replay_prints_a_transcript),
        cmocka_unit_test(replay_escapes_bytes_that_are_not_utf8),
        cmocka_unit_test(sessions_lists_and_filters),
        cmocka_unit_test(export_streams_records_an_outside_verifier_accepts),
        cmocka_unit_test(verify_and_pubkey),
        cmocka_unit_test(bad_arguments_exit_2_and_help_exits_0),
        cmocka_unit_test(verify_fails_with_exit_1_naming_the_record), /* last: damages the store */
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
