/*
 * Unit tests for the audit store: canonical bytes, the writer thread (group
 * commit, durability, reopen, failure and recovery, retention, concurrency),
 * and verify against an attacker who edits the LMDB file directly.
 *
 * Every test works in its own directory under $TMPDIR (tests/unit/helpers.h). Some tests re-run
 * this binary as a second process (LMDB forbids opening one environment twice in a process):
 * `test_audit --child CMD DIR`.
 */
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "helpers.h"
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "audit/audit.h"
#include "audit/internal.h"
#include "util/buf.h"

/* ---- fixtures ---- */

typedef struct fx {
    char dir[TEST_DIR_MAX];
    char store[TEST_DIR_MAX + 32], key[TEST_DIR_MAX + 32], pub[TEST_DIR_MAX + 32],
        other_key[TEST_DIR_MAX + 32];
    cfg_t cfg;
} fx_t;

static void write_key(const char *path, bool pub_only, EVP_PKEY *k)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    if (pub_only)
        assert_int_equal(PEM_write_PUBKEY(f, k), 1);
    else
        assert_int_equal(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL), 1);
    fclose(f);
}

static fx_t *fx_new(uint64_t map_size, bool sign)
{
    fx_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    test_mkdtemp(f->dir, sizeof(f->dir), "bulwark-audit");
    snprintf(f->store, sizeof(f->store), "%s/store", f->dir);
    snprintf(f->key, sizeof(f->key), "%s/audit.pem", f->dir);
    snprintf(f->pub, sizeof(f->pub), "%s/audit.pub.pem", f->dir);
    snprintf(f->other_key, sizeof(f->other_key), "%s/other.pem", f->dir);
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    EVP_PKEY *o = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    assert_non_null(k);
    assert_non_null(o);
    write_key(f->key, false, k);
    write_key(f->pub, true, k);
    write_key(f->other_key, false, o);
    EVP_PKEY_free(k);
    EVP_PKEY_free(o);
    f->cfg.audit.path = f->store;
    f->cfg.audit.map_size = map_size;
    f->cfg.audit.durability = CFG_DUR_STRICT;
    f->cfg.audit.capture_rows = 50;
    f->cfg.audit.capture_bytes = 64 << 10;
    f->cfg.audit.signing_key_file = sign ? f->key : NULL;
    return f;
}

static void fx_free(fx_t *f)
{
    test_rmtree(f->dir);
    free(f);
}

static _Atomic int64_t fake_now_us = 1714564800000000; /* 2024-05-01T12:00:00Z */

static int64_t fake_clock(void)
{
    return atomic_fetch_add(&fake_now_us, 1000) + 1000; /* 1 ms per record */
}

static audit_t *open_audit(fx_t *f, uint32_t cp_every, void (*notify)(void *), void *arg)
{
    char err[512] = "";
    audit_opts_t o = {.checkpoint_every = cp_every, .now_us = fake_clock};
    audit_t *a = audit_open(&f->cfg, &o, notify, arg, err, sizeof(err));
    if (!a)
        fail_msg("audit_open: %s", err);
    return a;
}

static cJSON *stmt_fields(int i)
{
    cJSON *o = cJSON_CreateObject();
    char sql[96];
    snprintf(sql, sizeof(sql), "SELECT id, email FROM customers WHERE id = $1 /* %d */", i);
    cJSON_AddStringToObject(o, "sql", sql);
    cJSON *p = cJSON_AddArrayToObject(o, "params");
    cJSON_AddItemToArray(p, cJSON_CreateString("42"));
    cJSON_AddStringToObject(o, "protocol", "extended");
    cJSON_AddStringToObject(o, "intent", "select public.customers");
    cJSON_AddStringToObject(o, "decision", "allow");
    cJSON_AddStringToObject(o, "rule", "read-public");
    cJSON_AddNumberToObject(o, "start", 1714564800000000.0 + i);
    return o;
}

static uint64_t append_ok(audit_t *a, audit_rec_type_t t, const char *sid, cJSON *fields)
{
    uint64_t seq = 0;
    int rc = audit_append(a, t, sid, fields, &seq);
    assert_int_equal(rc, 0);
    return seq;
}

static audit_verify_result_t verify_store(const char *store, const char *key)
{
    char err[256];
    audit_reader_t *r = audit_reader_open(store, err, sizeof(err));
    if (!r)
        fail_msg("audit_reader_open: %s", err);
    audit_verify_result_t res;
    int rc = audit_verify(r, key, &res);
    audit_reader_close(r);
    if (rc != 0)
        fail_msg("audit_verify could not run: %s", res.problem);
    return res;
}

static void expect_ok(const audit_verify_result_t *res)
{
    if (!res->ok)
        fail_msg("verify failed: %s", res->problem);
}

static void expect_problem(const audit_verify_result_t *res, uint64_t seq, const char *words)
{
    print_message("  verify: %s\n", res->problem);
    if (res->ok)
        fail_msg("verify passed, expected a problem at record %llu", (unsigned long long)seq);
    assert_int_equal(res->bad_seq, seq);
    if (!strstr(res->problem, words))
        fail_msg("problem \"%s\" does not say \"%s\"", res->problem, words);
}

/* A store of n statements in session "s1" (plus the writer's open/close notes),
 * signed checkpoints every cp records and at close. Records: 1 open note,
 * 2 session start, 3..n+2 statements, n+3 the close note. */
static fx_t *store_with(int n, uint32_t cp)
{
    fx_t *f = fx_new(16 << 20, true);
    audit_t *a = open_audit(f, cp, NULL, NULL);
    cJSON *s = cJSON_CreateObject();
    cJSON_AddStringToObject(s, "sub", "svc-agent-1");
    cJSON_AddStringToObject(s, "iss", "dev");
    cJSON_AddStringToObject(s, "role", "analyst");
    cJSON_AddStringToObject(s, "target", "shop");
    append_ok(a, AUDIT_REC_SESSION_START, "s1", s);
    assert_int_equal(audit_flush(a, 5000), 0);
    for (int i = 0; i < n; i++) {
        append_ok(a, AUDIT_REC_STATEMENT, "s1", stmt_fields(i));
        assert_int_equal(audit_flush(a, 5000), 0); /* one record per group: checkpoints land
                                                       exactly every cp records */
    }
    audit_close(a);
    return f;
}

/* ---- direct LMDB access, as an attacker with the file would have ---- */

typedef struct raw {
    MDB_env *env;
    audit_dbs_t dbs;
    MDB_txn *txn;
} raw_t;

static void raw_open(raw_t *r, const char *store)
{
    char err[256];
    if (store_open(store, 0, true, false, &r->env, &r->dbs, err, sizeof(err)) != 0)
        fail_msg("store_open: %s", err);
    assert_int_equal(mdb_txn_begin(r->env, NULL, 0, &r->txn), 0);
}

static void raw_close(raw_t *r)
{
    assert_int_equal(mdb_txn_commit(r->txn), 0);
    mdb_env_close(r->env);
}

static uint8_t *raw_get(raw_t *r, MDB_dbi dbi, uint64_t seq, size_t *len)
{
    uint8_t kb[8];
    be64_put(kb, seq);
    MDB_val k = {8, kb}, v;
    assert_int_equal(mdb_get(r->txn, dbi, &k, &v), 0);
    uint8_t *p = malloc(v.mv_size);
    memcpy(p, v.mv_data, v.mv_size);
    *len = v.mv_size;
    return p;
}

static void raw_put(raw_t *r, MDB_dbi dbi, uint64_t seq, const void *p, size_t len)
{
    uint8_t kb[8];
    be64_put(kb, seq);
    MDB_val k = {8, kb}, v = {len, (void *)p};
    assert_int_equal(mdb_put(r->txn, dbi, &k, &v, 0), 0);
}

static void raw_del(raw_t *r, MDB_dbi dbi, uint64_t seq)
{
    uint8_t kb[8];
    be64_put(kb, seq);
    MDB_val k = {8, kb};
    assert_int_equal(mdb_del(r->txn, dbi, &k, NULL), 0);
}

static uint64_t raw_last(raw_t *r, MDB_dbi dbi)
{
    MDB_cursor *c;
    MDB_val k, v;
    assert_int_equal(mdb_cursor_open(r->txn, dbi, &c), 0);
    uint64_t s = mdb_cursor_get(c, &k, &v, MDB_LAST) == 0 ? be64_get(k.mv_data) : 0;
    mdb_cursor_close(c);
    return s;
}

/* A well-formed record with a correct hash, as a forger would compute it. */
static uint8_t *forge(uint64_t seq, const uint8_t *prev, const char *sql, size_t *len)
{
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "sql", sql);
    cJSON_AddStringToObject(d, "decision", "allow");
    buf_t b;
    buf_init(&b, 0);
    assert_true(canon_json(&b, d));
    cJSON_Delete(d);
    char tail[CANON_TAIL_MAX];
    size_t tl = canon_tail(tail, seq, "s1", 1714564800000000 + (int64_t)seq, "statement", NULL);
    size_t cl = CANON_HEAD_LEN + b.len + tl;
    uint8_t *v = malloc(AUDIT_VALUE_HDR + cl);
    v[0] = AUDIT_VALUE_VERSION;
    memcpy(v + 1, prev, AUDIT_HASH_LEN);
    memcpy(v + AUDIT_VALUE_HDR, CANON_HEAD, CANON_HEAD_LEN);
    memcpy(v + AUDIT_VALUE_HDR + CANON_HEAD_LEN, b.data, b.len);
    memcpy(v + AUDIT_VALUE_HDR + CANON_HEAD_LEN + b.len, tail, tl);
    const void *parts[] = {v + AUDIT_VALUE_HDR};
    const size_t lens[] = {cl};
    chain_hash(v + 1 + AUDIT_HASH_LEN, prev, parts, lens, 1);
    buf_free(&b);
    *len = AUDIT_VALUE_HDR + cl;
    return v;
}

/* ---- canonical bytes ---- */

static void canonical(const char *json, const char *expect)
{
    cJSON *j = cJSON_Parse(json);
    assert_non_null(j);
    buf_t b;
    buf_init(&b, 0);
    assert_true(canon_json(&b, j));
    buf_put_u8(&b, 0);
    if (strcmp((char *)b.data, expect))
        fail_msg("canonical(%s)\n  got      %s\n  expected %s", json, (char *)b.data, expect);
    buf_free(&b);
    cJSON_Delete(j);
}

static void canonical_json_sorts_keys_and_escapes_minimally(void **state)
{
    (void)state;
    canonical("{ \"b\": 1, \"a\": [true, false, null], \"c\": {\"z\": \"\", \"y\": -0} }",
              "{\"a\":[true,false,null],\"b\":1,\"c\":{\"y\":0,\"z\":\"\"}}");
    canonical("{\"s\":\"q\\\" b\\\\ \\n\\t\\r\\b\\f \\u0001 \\u001f \\u007f /\"}",
              "{\"s\":\"q\\\" b\\\\ \\n\\t\\r\\b\\f \\u0001 \\u001f \x7f /\"}");
    /* non-ASCII stays literal UTF-8; names sort by UTF-16 code units (RFC 8785
     * 3.2.3): U+1F600 (surrogates D83D...) sorts before U+FB01 */
    canonical("{\"\\ufb01\":1,\"\\ud83d\\ude00\":2,\"\\u00e9\":3,\"z\":4}",
              "{\"z\":4,\"\xc3\xa9\":3,\"\xf0\x9f\x98\x80\":2,\"\xef\xac\x81\":1}");
    /* integers up to 2^53 as digits, anything else as a string */
    canonical("[0, 1, -7, 9007199254740992, 1.5, 1e300, 12345678901234567890]",
              "[0,1,-7,9007199254740992,\"1.5\",\"1.0000000000000001e+300\","
              "\"1.2345678901234567e+19\"]");
    /* duplicate names: the first one stays */
    canonical("{\"a\":1,\"a\":2}", "{\"a\":1}");
}

static void canonical_json_replaces_invalid_utf8(void **state)
{
    (void)state;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "v",
                            "a\xff"
                            "b\xc0\xaf"
                            "c\xed\xa0\x80"
                            "d\xe2\x82");
    buf_t b;
    buf_init(&b, 0);
    assert_true(canon_json(&b, j));
    buf_put_u8(&b, 0);
    assert_string_equal((char *)b.data, "{\"v\":\"a\xef\xbf\xbd"
                                        "b\xef\xbf\xbd\xef\xbf\xbd"
                                        "c\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
                                        "d\xef\xbf\xbd\xef\xbf\xbd\"}");
    buf_free(&b);
    cJSON_Delete(j);
}

/* The fast path's fields stream gives exactly the bytes canon_json gives for
 * the same fields as cJSON: same order, escapes, numbers, duplicates. */
/* Reference: names by UTF-16 code units, decoded without any shortcut. */
static int ref_u16_units(const char *s, size_t n, uint16_t *out)
{
    buf_t b;
    buf_init(&b, 0);
    canon_string(&b, s, n); /* invalid UTF-8 -> U+FFFD, as the writer sorts it */
    int k = 0;
    for (size_t i = 1; i + 1 < b.len;) {
        unsigned char c = b.data[i];
        uint32_t cp;
        size_t l = c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
        if (c == '\\') { /* only controls and quotes: single units */
            if (b.data[i + 1] == 'u') {
                cp = (uint32_t)strtoul((char[5]){(char)b.data[i + 2], (char)b.data[i + 3],
                                                 (char)b.data[i + 4], (char)b.data[i + 5], 0},
                                       NULL, 16);
                l = 6;
            } else {
                const char *m = strchr("b\bt\tn\nf\fr\r\"\"\\\\", b.data[i + 1]);
                cp = (unsigned char)m[1];
                l = 2;
            }
        } else {
            cp = l == 1 ? c : l == 2 ? c & 0x1f : l == 3 ? c & 0x0f : c & 0x07;
            for (size_t j = 1; j < l; j++)
                cp = cp << 6 | (b.data[i + j] & 0x3f);
        }
        i += l;
        if (cp >= 0x10000) {
            cp -= 0x10000;
            out[k++] = (uint16_t)(0xd800 | cp >> 10);
            out[k++] = (uint16_t)(0xdc00 | (cp & 0x3ff));
        } else {
            out[k++] = (uint16_t)cp;
        }
    }
    buf_free(&b);
    return k;
}

static void names_and_envelope_tails_match_their_references(void **state)
{
    (void)state;
    static const char *const parts[] = {
        "a",    "b",    "sql", "z",       "\xc3\xa9", "\xef\xbd\xa1", "\xf0\x9f\x98\x80",
        "\xff", "\x01", "",    "\xe2\x82"};
    const size_t np = sizeof(parts) / sizeof(parts[0]);
    char x[32], y[32];
    uint16_t ux[64], uy[64];
    for (size_t i = 0; i < np * np * np; i++) {
        for (size_t j = 0; j < np * np * np; j++) {
            snprintf(x, sizeof(x), "%s%s%s", parts[i % np], parts[i / np % np], parts[i / np / np]);
            snprintf(y, sizeof(y), "%s%s%s", parts[j % np], parts[j / np % np], parts[j / np / np]);
            int nx = ref_u16_units(x, strlen(x), ux), ny = ref_u16_units(y, strlen(y), uy);
            int want = 0;
            for (int k = 0; !want && (k < nx || k < ny); k++)
                want = k >= nx ? -1 : k >= ny ? 1 : ux[k] < uy[k] ? -1 : ux[k] > uy[k];
            int got = canon_name_cmp(x, strlen(x), y, strlen(y));
            if ((got > 0) - (got < 0) != want)
                fail_msg("canon_name_cmp(\"%s\", \"%s\") = %d, want %d", x, y, got, want);
        }
    }

    /* canon_tail: the bytes of its snprintf format */
    static const uint64_t seqs[] = {0, 1, 9, 10, 12345678901234ULL, UINT64_MAX};
    static const int64_t tss[] = {0, -1, 1714564800000000, INT64_MIN, INT64_MAX};
    static const char *const sids[] = {NULL, "s1", "a-session.id_0123"};
    static const char *const reps[] = {NULL, "eu-1", ""};
    char tail[CANON_TAIL_MAX], want[CANON_TAIL_MAX + 64], rep[96];
    for (size_t a = 0; a < 6; a++)
        for (size_t b = 0; b < 5; b++)
            for (size_t c = 0; c < 3; c++)
                for (size_t d = 0; d < 3; d++) {
                    size_t n = canon_tail(tail, seqs[a], sids[c], tss[b], "statement", reps[d]);
                    rep[0] = 0;
                    if (reps[d])
                        snprintf(rep, sizeof(rep), ",\"replica\":\"%s\"", reps[d]);
                    if (sids[c])
                        snprintf(want, sizeof(want),
                                 "%s,\"seq\":%llu,\"session\":\"%s\",\"ts\":%lld,\"type\":\"%s\","
                                 "\"v\":1}",
                                 rep, (unsigned long long)seqs[a], sids[c], (long long)tss[b],
                                 "statement");
                    else
                        snprintf(want, sizeof(want),
                                 "%s,\"seq\":%llu,\"session\":null,\"ts\":%lld,\"type\":\"%s\","
                                 "\"v\":1}",
                                 rep, (unsigned long long)seqs[a], (long long)tss[b], "statement");
                    assert_int_equal(n, strlen(want));
                    assert_memory_equal(tail, want, n);
                }
    char sid[AUDIT_SID_MAX + 1];
    memset(sid, 'x', AUDIT_SID_MAX);
    sid[AUDIT_SID_MAX] = 0;
    char longrep[65];
    memset(longrep, 'r', 64);
    longrep[64] = 0;
    size_t n = canon_tail(tail, UINT64_MAX, sid, INT64_MIN, "session_start", longrep);
    assert_true(n > 0 && n < CANON_TAIL_MAX);
    assert_int_equal(strlen(tail), n);
}

static void fields_objects_of_many_members_are_canonical_like_cjson(void **state)
{
    (void)state;
    /* 20, 30 and 40 members (the writer's member list starts on the stack,
     * grows past 24 and sorts with qsort past 32), in reverse order, with a
     * duplicate name in each */
    for (int n = 20; n <= 40; n += 10) {
        cJSON *j = cJSON_CreateObject();
        audit_fields_t f;
        audit_fields_init(&f, 0);
        for (int i = n; i >= 0; i--) {
            char k[16];
            snprintf(k, sizeof(k), "m%02d%s", i % n, i % n % 3 ? "" : "\xc3\xa9");
            cJSON *o = cJSON_AddObjectToObject(j, k);
            audit_f_open(&f, k, '{');
            for (int m = 0; m < n; m++) {
                char v[16];
                snprintf(v, sizeof(v), "v%d", (m * 7) % n);
                cJSON_AddNumberToObject(o, v, m);
                audit_f_int(&f, v, m);
            }
            audit_f_close(&f);
        }
        assert_true(audit_fields_ok(&f));
        buf_t want, got;
        buf_init(&want, 0);
        buf_init(&got, 0);
        assert_true(canon_json(&want, j));
        assert_true(fields_canon(&got, f.b.data, f.b.len));
        assert_int_equal(got.len, want.len);
        assert_memory_equal(got.data, want.data, want.len);
        buf_free(&want);
        buf_free(&got);
        audit_fields_free(&f);
        cJSON_Delete(j);
    }
}

static void fields_stream_is_canonical_like_cjson(void **state)
{
    (void)state;
    static const char odd[] = "q\"\\\n\x01\x7f\xff\xe2\x82 \xc3\xa9\xf0\x9f\x98\x80";
    cJSON *j = cJSON_CreateObject();
    audit_fields_t f;
    audit_fields_init(&f, 0);

    cJSON_AddStringToObject(j, "sql", odd);
    audit_f_cstr(&f, "sql", odd);
    cJSON_AddNumberToObject(j, "start", 1714564800012345.0);
    audit_f_int(&f, "start", 1714564800012345);
    cJSON_AddNumberToObject(j, "big", 9007199254740994.0); /* beyond 2^53: a string */
    audit_f_int(&f, "big", 9007199254740994LL);
    cJSON_AddNumberToObject(j, "neg", -7);
    audit_f_int(&f, "neg", -7);
    cJSON_AddBoolToObject(j, "writes", false);
    audit_f_bool(&f, "writes", false);
    cJSON_AddNullToObject(j, "rule");
    audit_f_null(&f, "rule");
    cJSON_AddStringToObject(j, "\xc3\xa9t\xc3\xa9", "non-ASCII name");
    audit_f_cstr(&f, "\xc3\xa9t\xc3\xa9", "non-ASCII name");
    cJSON_AddStringToObject(j, "\xef\xbd\xa1", "U+FF61 sorts after U+1F600 in UTF-16");
    audit_f_cstr(&f, "\xef\xbd\xa1", "U+FF61 sorts after U+1F600 in UTF-16");
    cJSON_AddStringToObject(j, "\xf0\x9f\x98\x80", "emoji");
    audit_f_cstr(&f, "\xf0\x9f\x98\x80", "emoji");
    cJSON_AddStringToObject(j, "sql", "duplicate: the first stays");
    audit_f_cstr(&f, "sql", "duplicate: the first stays");
    cJSON *vals = cJSON_AddArrayToObject(j, "values");
    audit_fields_t v;
    audit_fields_init(&v, 0);
    audit_f_open(&v, NULL, '[');
    for (int r = 0; r < 3; r++) {
        cJSON *row = cJSON_CreateArray();
        audit_f_open(&v, NULL, '[');
        cJSON_AddItemToArray(row, cJSON_CreateString(r ? "x" : ""));
        audit_f_str(&v, NULL, r ? "x" : "", r ? 1 : 0);
        cJSON_AddItemToArray(row, cJSON_CreateNull());
        audit_f_null(&v, NULL);
        cJSON_AddItemToArray(vals, row);
        audit_f_close(&v);
    }
    audit_f_close(&v);
    audit_f_splice(&f, "values", &v);
    cJSON *intent = cJSON_Parse("[{\"op\":\"select\",\"object\":\"public.t\",\"decision\":"
                                "\"allow\",\"n\":1.5,\"z\":{\"b\":[],\"a\":{}}}]");
    audit_f_json(&f, "intent", intent);
    cJSON_AddItemToObject(j, "intent", intent);
    assert_true(audit_fields_ok(&f));

    buf_t want, got;
    buf_init(&want, 0);
    buf_init(&got, 0);
    assert_true(canon_json(&want, j));
    assert_true(fields_canon(&got, f.b.data, f.b.len));
    buf_put_u8(&want, 0);
    buf_put_u8(&got, 0);
    assert_string_equal((char *)got.data, (char *)want.data);
    assert_non_null(strstr((char *)got.data, "\"big\":\"9007199254740994\""));

    /* malformed streams are refused, never read past */
    for (size_t cut = 1; cut < f.b.len; cut += 7) {
        buf_reset(&got);
        got.failed = false;
        (void)fields_canon(&got, f.b.data, cut); /* no crash, no overread (ASan) */
    }
    audit_f_open(&f, "unclosed", '{');
    assert_false(audit_fields_ok(&f));
    audit_fields_reset(&f);
    for (int i = 0; i < 70; i++)
        audit_f_open(&f, i ? NULL : "deep", '[');
    assert_false(audit_fields_ok(&f));

    buf_free(&want);
    buf_free(&got);
    audit_fields_free(&f);
    audit_fields_free(&v);
    cJSON_Delete(j);
}

/* ---- the writer ---- */

typedef struct seen {
    int n;
    char data[2][256];
} seen_t;

static int keep_statements(void *arg, const audit_record_t *rec)
{
    seen_t *s = arg;
    if (rec->type != AUDIT_REC_STATEMENT || s->n >= 2)
        return 0;
    assert_true(rec->hash_ok);
    const char *d = memmem(rec->canon, rec->canon_len, "{\"data\":", 8);
    assert_non_null(d);
    snprintf(s->data[s->n++], sizeof(s->data[0]), "%.*s", (int)(rec->canon_len - 8), d + 8);
    return 0;
}

static void fields_records_are_stored_canonical_and_oversized_ones_say_so(void **state)
{
    (void)state;
    fx_t *f = fx_new(1 << 20, false); /* records up to map_size / 8 = 128 KiB */
    audit_t *a = open_audit(f, 50, NULL, NULL);
    audit_fields_t fl;
    audit_fields_init(&fl, 0);
    audit_f_cstr(&fl, "sql", "select 1");
    audit_f_int(&fl, "start", 1714564800012345);
    audit_f_cstr(&fl, "decision", "allow");
    uint64_t s1, s2;
    assert_int_equal(audit_append_fields(a, AUDIT_REC_STATEMENT, "s-f", &fl, &s1), 0);
    /* 40 KB of control characters: 240 KB once escaped, over the bound */
    audit_fields_reset(&fl);
    static char ctl[40000];
    memset(ctl, 1, sizeof(ctl));
    audit_f_str(&fl, "sql", ctl, sizeof(ctl));
    assert_int_equal(audit_append_fields(a, AUDIT_REC_STATEMENT, "s-f", &fl, &s2), 0);
    assert_int_equal(s2, s1 + 1);
    /* session records feed the indexes: not through this path */
    assert_int_equal(audit_append_fields(a, AUDIT_REC_SESSION_START, "s-f", &fl, NULL), -1);
    audit_f_open(&fl, "open", '[');
    assert_int_equal(audit_append_fields(a, AUDIT_REC_RESULT, "s-f", &fl, NULL), -1);
    assert_int_equal(audit_flush(a, 5000), 0);
    audit_close(a);
    audit_fields_free(&fl);

    char err[256];
    audit_reader_t *r = audit_reader_open(f->store, err, sizeof(err));
    assert_non_null(r);
    seen_t seen = {0};
    assert_int_equal(audit_reader_records(r, 0, keep_statements, &seen), 0);
    audit_reader_close(r);
    assert_int_equal(seen.n, 2);
    assert_non_null(strstr(
        seen.data[0], "{\"decision\":\"allow\",\"sql\":\"select 1\",\"start\":1714564800012345}"));
    assert_non_null(strstr(seen.data[1], "{\"error\":\"the record could not be encoded"));
    audit_verify_result_t res = verify_store(f->store, NULL);
    expect_ok(&res);
    fx_free(f);
}

static _Atomic int notified;

static void count_notify(void *arg)
{
    (void)arg;
    atomic_fetch_add(&notified, 1);
}

static void appends_while_writer_commits_and_reopen_continues_chain(void **state)
{
    (void)state;
    fx_t *f = fx_new(64 << 20, true);
    atomic_store(&notified, 0);
    audit_t *a = open_audit(f, 100, count_notify, NULL);
    uint64_t first = 0, last = 0;
    for (int i = 0; i < 2000; i++) {
        last = append_ok(a, AUDIT_REC_STATEMENT, "s1", stmt_fields(i));
        if (!first)
            first = last;
    }
    assert_int_equal(first, 2); /* 1 is the writer's "open" note */
    assert_int_equal(last, 2001);
    assert_int_equal(audit_flush(a, 10000), 0);
    assert_true(audit_durable_seq(a) >= last);
    assert_true(atomic_load(&notified) > 0);
    assert_false(audit_failing(a));
    audit_stats_t st;
    audit_get_stats(a, &st);
    print_message("  2000 appends: %llu commits, largest group %llu records\n",
                  (unsigned long long)st.commits, (unsigned long long)st.batch_max);
    assert_true(st.commits < 2001); /* grouped */
    audit_close(a);

    a = open_audit(f, 100, NULL, NULL);
    assert_int_equal(audit_durable_seq(a), 2002); /* + the close note */
    uint64_t s = append_ok(a, AUDIT_REC_STATEMENT, "s1", stmt_fields(9));
    assert_int_equal(s, 2004); /* 2003 is the new "open" note */
    audit_close(a);
    audit_verify_result_t res = verify_store(f->store, f->key);
    expect_ok(&res);
    assert_int_equal(res.records, 2005);
    assert_true(res.clean_end);
    assert_true(res.signatures_checked);
    assert_int_equal(res.unsigned_tail, 0); /* close signs the head */
    fx_free(f);
}

static void refuses_bad_arguments_without_consuming_a_seq(void **state)
{
    (void)state;
    fx_t *f = fx_new(16 << 20, false);
    audit_t *a = open_audit(f, 100, NULL, NULL);
    uint64_t s;
    assert_int_equal(audit_append(a, AUDIT_REC_STATEMENT, "bad\"id", NULL, &s), -1);
    assert_int_equal(audit_append(a, AUDIT_REC_STATEMENT, "", NULL, &s), -1);
    assert_int_equal(audit_append(a, (audit_rec_type_t)99, "s1", NULL, &s), -1);
    assert_int_equal(audit_append(a, AUDIT_REC_STATEMENT, "s1", cJSON_CreateArray(), &s), -1);
    assert_int_equal(audit_append(a, AUDIT_REC_LOGIN_FAILED, NULL, NULL, &s), 0);
    assert_int_equal(s, 2);
    audit_close(a);
    audit_verify_result_t res = verify_store(f->store, NULL);
    expect_ok(&res);
    assert_int_equal(res.checkpoints_signed, 0);
    fx_free(f);
}

/* ---- tampering ---- */

static void detects_a_changed_byte(void **state)
{
    (void)state;
    fx_t *f = store_with(20, 5);
    raw_t r;
    raw_open(&r, f->store);
    size_t len;
    uint8_t *v = raw_get(&r, r.dbs.records, 9, &len);
    char *p = memmem(v, len, "customers", 9);
    assert_non_null(p);
    p[0] = 'C'; /* one byte of the statement text */
    raw_put(&r, r.dbs.records, 9, v, len);
    free(v);
    raw_close(&r);
    audit_verify_result_t res = verify_store(f->store, f->key);
    expect_problem(&res, 9, "record 9 was changed");
    fx_free(f);
}

static void detects_a_removed_record(void **state)
{
    (void)state;
    fx_t *f = store_with(20, 5);
    raw_t r;
    raw_open(&r, f->store);
    raw_del(&r, r.dbs.records, 8);
    raw_close(&r);
    audit_verify_result_t res = verify_store(f->store, f->key);
    expect_problem(&res, 8, "record 8 was removed");
    fx_free(f);
}

static void detects_a_removed_record_with_renumbering(void **state)
{
    (void)state;
    fx_t *f = store_with(20, 5);
    raw_t r;
    raw_open(&r, f->store);
    uint64_t last = raw_last(&r, r.dbs.records);
    for (uint64_t s = 8; s < last; s++) { /* shift 9.. down by one */
        size_t len;
        uint8_t *v = raw_get(&r, r.dbs.records, s + 1, &len);
        raw_put(&r, r.dbs.records, s, v, len);
        free(v);
    }
    raw_del(&r, r.dbs.records, last);
    raw_close(&r);
    audit_verify_result_t res = verify_store(f->store, f->key);
    expect_problem(&res, 8, "record 8 was removed");
    fx_free(f);
}

static void detects_two_swapped_records(void **state)
{
    (void)state;
    fx_t *f = store_with(20, 5);
    raw_t r;
    raw_open(&r, f->store);
    size_t l1, l2;
    uint8_t *a = raw_get(&r, r.dbs.records, 7, &l1), *b = raw_get(&r, r.dbs.records, 12, &l2);
    raw_put(&r, r.dbs.records, 7, b, l2);
    raw_put(&r, r.dbs.records, 12, a, l1);
    free(a);
    free(b);
    raw_close(&r);
    audit_verify_result_t res = verify_store(f->store, f->key);
    expect_problem(&res, 7, "records 7 and 12 were swapped");
    fx_free(f);
}

static void detects_an_inserted_record(void **state)
{
    (void)state;
    fx_t *f = store_with(20, 5);
    raw_t r;
    raw_open(&r, f->store);
    uint64_t last = raw_last(&r, r.dbs.records);
    for (uint64_t s = last; s >= 8; s--) { /* make room at 8 */
        size_t len;
        uint8_t *v = raw_get(&r, r.dbs.records, s, &len);
        raw_put(&r, r.dbs.records, s + 1, v, len);
        free(v);
    }
    size_t len, fl;
    uint8_t *prev = raw_get(&r, r.dbs.records, 7, &len);
    rec_view_t pv;
    assert_true(rec_view(prev, len, &pv));
    uint8_t *forged = forge(8, pv.hash, "DELETE FROM orders", &fl);
    raw_put(&r, r.dbs.records, 8, forged, fl);
    free(prev);
    free(forged);
    raw_close(&r);
    audit_verify_result_t res = verify_store(f->store, f->key);
    expect_problem(&res, 8, "record 8 was inserted");
    fx_free(f);
}

static void detects_a_consistently_rewritten_chain_by_its_checkpoint(void **state)
{
    (void)state;
    fx_t *f = store_with(20, 5);
    raw_t r;
    raw_open(&r, f->store);
    uint64_t last = raw_last(&r, r.dbs.records);
    /* replace record 7 and re-chain every later record with correct hashes */
    size_t len;
    uint8_t *v = raw_get(&r, r.dbs.records, 6, &len);
    rec_view_t rv;
    assert_true(rec_view(v, len, &rv));
    uint8_t prev[AUDIT_HASH_LEN];
    memcpy(prev, rv.hash, sizeof(prev));
    free(v);
    for (uint64_t s = 7; s <= last; s++) {
        size_t fl;
        uint8_t *fv = forge(s, prev, s == 7 ? "SELECT 1" : "SELECT 2", &fl);
        memcpy(prev, fv + 1 + AUDIT_HASH_LEN, AUDIT_HASH_LEN);
        raw_put(&r, r.dbs.records, s, fv, fl);
        free(fv);
    }
    raw_close(&r);
    audit_verify_result_t res = verify_store(f->store, f->key);
    /* checkpoints at 5, 10, ...: the first one after the change catches it */
    expect_problem(&res, 6, "records 6 to 10 were rewritten");
    fx_free(f);
}

static void detects_a_record_replaced_by_a_self_consistent_forgery(void **state)
{
    (void)state;
    fx_t *f = store_with(20, 5);
    raw_t r;
    raw_open(&r, f->store);
    size_t len, fl;
    uint8_t *prev = raw_get(&r, r.dbs.records, 6, &len);
    rec_view_t pv;
    assert_true(rec_view(prev, len, &pv));
    uint8_t *forged = forge(7, pv.hash, "SELECT harmless", &fl);
    raw_put(&r, r.dbs.records, 7, forged, fl);
    free(prev);
    free(forged);
    raw_close(&r);
    audit_verify_result_t res = verify_store(f->store, f->key);
    expect_problem(&res, 7, "record 7 was changed or replaced");
    fx_free(f);
}

static void detects_the_first_records_removed_without_an_anchor(void **state)
{
    (void)state;
    fx_t *f = store_with(20, 5);
    raw_t r;
    raw_open(&r, f->store);
    for (uint64_t s = 1; s <= 3; s++) /* no checkpoint at 3 */
        raw_del(&r, r.dbs.records, s);
    raw_close(&r);
    audit_verify_result_t res = verify_store(f->store, f->key);
    expect_problem(&res, 1, "records 1 to 3 were removed");
    fx_free(f);
}

static void reports_a_tail_truncated_after_a_checkpoint(void **state)
{
    (void)state;
    fx_t *f = store_with(20, 5);
    raw_t r;
    raw_open(&r, f->store);
    uint64_t last = raw_last(&r, r.dbs.records);
    assert_int_equal(raw_last(&r, r.dbs.checkpoints), last); /* close signed the head */
    for (uint64_t s = 18; s <= last; s++)
        raw_del(&r, r.dbs.records, s);
    raw_close(&r);
    audit_verify_result_t res = verify_store(f->store, f->key);
    expect_problem(&res, 18, "the tail was truncated");
    fx_free(f);
}

static void detects_a_changed_checkpoint_and_a_foreign_key(void **state)
{
    (void)state;
    fx_t *f = store_with(20, 5);
    audit_verify_result_t res = verify_store(f->store, f->pub); /* the public half suffices */
    expect_ok(&res);
    assert_true(res.checkpoints_signed >= 4);
    assert_int_equal(res.checkpoints, res.checkpoints_signed);

    res = verify_store(f->store, f->other_key);
    expect_problem(&res, 5, "checkpoint 5 is signed by another key");

    raw_t r;
    raw_open(&r, f->store);
    size_t len;
    uint8_t *v = raw_get(&r, r.dbs.checkpoints, 10, &len);
    char *ts = memmem(v, len, "\"ts\":", 5);
    assert_non_null(ts);
    ts[6] = ts[6] == '9' ? '8' : '9'; /* the time, not the hash: only the signature notices */
    raw_put(&r, r.dbs.checkpoints, 10, v, len);
    free(v);
    raw_close(&r);
    res = verify_store(f->store, f->key);
    expect_problem(&res, 10, "checkpoint 10: bad signature");
    fx_free(f);
}

/* ---- failure and recovery ---- */

static void wait_for(bool (*cond)(audit_t *), audit_t *a, int ms)
{
    for (int i = 0; i < ms / 10 && !cond(a); i++)
        usleep(10000);
}

static bool not_failing(audit_t *a)
{
    return !audit_failing(a);
}

static char self_exe[4096];

static int run_child(const char *cmd, const char *dir, char *out, size_t outsz)
{
    char line[8192];
    snprintf(line, sizeof(line), "'%s' --child %s '%s'", self_exe, cmd, dir);
    FILE *p = popen(line, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, outsz - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void map_full_fails_cleanly_and_recovers_when_space_returns(void **state)
{
    (void)state;
    fx_t *f = fx_new(1 << 20, false);
    /* Someone else's data takes half the map (the test frees it later). */
    {
        char err[256];
        MDB_env *env;
        audit_dbs_t dbs;
        assert_int_equal(store_open(f->store, 1 << 20, true, false, &env, &dbs, err, sizeof(err)),
                         0);
        MDB_txn *txn;
        MDB_dbi filler;
        assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
        assert_int_equal(mdb_dbi_open(txn, "filler", MDB_CREATE, &filler), 0);
        static char blob[2000];
        memset(blob, 'x', sizeof(blob));
        for (int i = 0; i < 200; i++) {
            uint8_t kb[8];
            be64_put(kb, (uint64_t)i);
            MDB_val k = {8, kb}, v = {sizeof(blob), blob};
            assert_int_equal(mdb_put(txn, filler, &k, &v, 0), 0);
        }
        assert_int_equal(mdb_txn_commit(txn), 0);
        mdb_env_close(env);
    }
    audit_t *a = open_audit(f, 50, NULL, NULL);
    char big[3000];
    memset(big, 'r', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    int accepted = 0, refused = 0;
    for (int i = 0; i < 2000 && !audit_failing(a); i++) {
        cJSON *o = stmt_fields(i);
        cJSON_AddStringToObject(o, "pad", big);
        uint64_t s;
        if (audit_append(a, AUDIT_REC_STATEMENT, "s1", o, &s) == 0)
            accepted++;
        (void)audit_flush(a, 2000);
    }
    assert_true(audit_failing(a));
    uint64_t durable = audit_durable_seq(a);
    for (int i = 0; i < 10; i++) {
        uint64_t s;
        if (audit_append(a, AUDIT_REC_STATEMENT, "s1", stmt_fields(i), &s) != 0)
            refused++;
    }
    assert_int_equal(refused, 10);
    print_message("  map full after %d records (durable %llu); appends refused\n", accepted,
                  (unsigned long long)durable);
    usleep(300 * 1000); /* the writer keeps retrying without crashing */
    assert_true(audit_failing(a));
    assert_int_equal(audit_durable_seq(a), durable);

    char out[256];
    assert_int_equal(run_child("drop-filler", f->store, out, sizeof(out)), 0);
    wait_for(not_failing, a, 5000);
    assert_false(audit_failing(a));
    assert_int_equal(audit_flush(a, 5000), 0);
    assert_true(audit_durable_seq(a) > durable); /* the pending record, then the note */
    append_ok(a, AUDIT_REC_STATEMENT, "s1", stmt_fields(1));
    assert_int_equal(audit_flush(a, 5000), 0);
    audit_stats_t st;
    audit_get_stats(a, &st);
    assert_int_equal(st.failures, 1);
    assert_true(st.refused >= 10);
    audit_close(a);
    audit_verify_result_t res = verify_store(f->store, NULL);
    expect_ok(&res);
    fx_free(f);
}

static void a_full_map_grows_up_to_max_map_size_then_fails(void **state)
{
    (void)state;
    fx_t *f = fx_new(1 << 20, false);
    f->cfg.audit.max_map_size = 3 << 20;
    audit_t *a = open_audit(f, 50, NULL, NULL);
    char pad[3000];
    memset(pad, 'g', sizeof(pad) - 1);
    pad[sizeof(pad) - 1] = 0;
    int accepted = 0;
    for (int i = 0; i < 4000 && !audit_failing(a); i++) {
        cJSON *o = stmt_fields(i);
        cJSON_AddStringToObject(o, "pad", pad);
        uint64_t s;
        if (audit_append(a, AUDIT_REC_STATEMENT, "s1", o, &s) == 0)
            accepted++;
        if (i % 20 == 0)
            (void)audit_flush(a, 2000);
    }
    (void)audit_flush(a, 2000);
    /* well past the first 1 MiB (grown twice: 2 MiB, then 3 MiB), then full */
    print_message("  %d records of 3 KB accepted before the 3 MiB map was full\n", accepted);
    assert_true(accepted > 600);
    assert_true(audit_failing(a));
    uint64_t durable = audit_durable_seq(a);
    assert_true(durable > 600); /* records, not just acceptances, went past 1 MiB */
    audit_close(a);
    struct stat st;
    char data[4200];
    snprintf(data, sizeof(data), "%s/data.mdb", f->store);
    assert_int_equal(stat(data, &st), 0);
    assert_true(st.st_size > (2 << 20) && st.st_size <= (3 << 20));
    /* a restart with the configured 1 MiB keeps the grown map and its records */
    a = open_audit(f, 50, NULL, NULL);
    assert_true(audit_failing(a) || audit_flush(a, 2000) == 0);
    audit_close(a);
    audit_verify_result_t res = verify_store(f->store, NULL);
    expect_ok(&res);
    assert_true(res.last_seq >= durable);
    fx_free(f);
}

static void retention_by_size_keeps_a_tiny_map_writing_and_verifiable(void **state)
{
    (void)state;
    fx_t *f = fx_new(1 << 20, true);
    f->cfg.audit.retention_max_size = 512 << 10;
    audit_t *a = open_audit(f, 20, NULL, NULL);
    char pad[2000];
    memset(pad, 'p', sizeof(pad) - 1);
    pad[sizeof(pad) - 1] = 0;
    int refused = 0;
    for (int i = 0; i < 3000; i++) { /* ~7 MB through a 1 MiB map */
        char sid[16];
        snprintf(sid, sizeof(sid), "s%d", i / 50);
        if (i % 50 == 0) {
            cJSON *s = cJSON_CreateObject();
            cJSON_AddStringToObject(s, "sub", "svc");
            cJSON_AddStringToObject(s, "role", "analyst");
            if (audit_append(a, AUDIT_REC_SESSION_START, sid, s, NULL) != 0)
                refused++;
        }
        cJSON *o = stmt_fields(i);
        cJSON_AddStringToObject(o, "pad", pad);
        uint64_t s;
        if (audit_append(a, AUDIT_REC_STATEMENT, sid, o, &s) != 0)
            refused++;
        if (i % 100 == 0)
            (void)audit_flush(a, 5000);
        if (audit_failing(a))
            wait_for(not_failing, a, 5000);
    }
    assert_int_equal(audit_flush(a, 5000), 0);
    audit_stats_t st;
    audit_get_stats(a, &st);
    print_message("  retired %llu records, %llu map-full episodes, %d appends refused\n",
                  (unsigned long long)st.retired, (unsigned long long)st.failures, refused);
    assert_true(st.retired > 1000);
    assert_false(audit_failing(a));
    audit_close(a);
    audit_verify_result_t res = verify_store(f->store, f->key);
    expect_ok(&res);
    assert_true(res.anchor_seq > 0);
    assert_int_equal(res.first_seq, res.anchor_seq + 1);
    print_message("  chain now %llu..%llu, anchored by signed checkpoint %llu\n",
                  (unsigned long long)res.first_seq, (unsigned long long)res.last_seq,
                  (unsigned long long)res.anchor_seq);
    /* the sessions index forgot the retired sessions */
    char err[256];
    audit_reader_t *r = audit_reader_open(f->store, err, sizeof(err));
    assert_non_null(r);
    audit_session_filter_t all = {0};
    FILE *devnull = fopen("/dev/null", "w");
    assert_int_equal(audit_print_sessions(r, &all, false, devnull), 0);
    fclose(devnull);
    audit_reader_close(r);
    fx_free(f);
}

static void retention_by_age_retires_old_records(void **state)
{
    (void)state;
    fx_t *f = fx_new(16 << 20, true);
    f->cfg.audit.retention_max_age_ms = 24 * 3600 * 1000LL;
    audit_t *a = open_audit(f, 10, NULL, NULL);
    for (int i = 0; i < 50; i++)
        append_ok(a, AUDIT_REC_STATEMENT, "s1", stmt_fields(i));
    assert_int_equal(audit_flush(a, 5000), 0);
    atomic_fetch_add(&fake_now_us, 2 * 24 * 3600 * 1000000LL); /* two days later */
    for (int i = 0; i < 5; i++)
        append_ok(a, AUDIT_REC_STATEMENT, "s1", stmt_fields(i));
    assert_int_equal(audit_flush(a, 5000), 0);
    audit_stats_t st;
    for (int i = 0; i < 300; i++) { /* retention runs once a second */
        audit_get_stats(a, &st);
        if (st.retired)
            break;
        usleep(10000);
    }
    /* everything before the jump (1..51) may go, down to the newest checkpoint there */
    assert_true(st.retired >= 10 && st.retired <= 51);
    audit_close(a);
    audit_verify_result_t res = verify_store(f->store, f->key);
    expect_ok(&res);
    assert_int_equal(res.anchor_seq, st.retired);
    print_message("  retired records 1..%llu (older than a day)\n", (unsigned long long)st.retired);
    fx_free(f);
}

/* ---- backpressure ---- */

/* Appending faster than the writer commits (a commit is an fsync) makes the queue
 * congested before it refuses; once the writer catches up the flag clears and the
 * notify tells the loops so. */
static void congestion_is_signalled_before_the_queue_refuses_and_clears_after(void **state)
{
    fx_t *f = fx_new(64u << 20, false);
    char err[512] = "";
    audit_opts_t o = {.queue_max_records = 64, .now_us = fake_clock};
    audit_t *a = audit_open(&f->cfg, &o, count_notify, NULL, err, sizeof(err));
    if (!a)
        fail_msg("audit_open: %s", err);
    bool seen = false;
    int refused = 0, before = atomic_load(&notified);
    for (int i = 0; i < 20000 && !(seen && refused); i++) {
        uint64_t s;
        if (audit_append(a, AUDIT_REC_STATEMENT, "c1", stmt_fields(i), &s) != 0)
            refused++;
        seen = seen || audit_congested(a);
    }
    assert_true(seen);
    assert_int_equal(audit_flush(a, 10000), 0);
    assert_false(audit_congested(a));
    assert_true(atomic_load(&notified) > before);
    audit_close(a);
    fx_free(f);
}

/* ---- concurrency ---- */

typedef struct worker {
    audit_t *a;
    int id, n;
    uint64_t *seqs;
} worker_t;

static void *work(void *arg)
{
    worker_t *w = arg;
    char sid[16];
    snprintf(sid, sizeof(sid), "t%d", w->id);
    for (int i = 0; i < w->n; i++) {
        uint64_t s = 0;
        while (audit_append(w->a, AUDIT_REC_STATEMENT, sid, stmt_fields(i), &s) != 0)
            usleep(100); /* queue full: back off */
        w->seqs[i] = s;
    }
    return NULL;
}

static int count_rec(void *arg, const audit_record_t *rec)
{
    (void)rec;
    (*(int *)arg)++;
    return 0;
}

typedef struct sess_check {
    const char *sid;
    int n;
    uint64_t last;
    bool ok;
} sess_check_t;

static int check_sess_rec(void *arg, const audit_record_t *rec)
{
    sess_check_t *sc = arg;
    if (!rec->session || strcmp(rec->session, sc->sid) || rec->seq <= sc->last)
        sc->ok = false;
    sc->last = rec->seq;
    sc->n++;
    return 0;
}

static void appends_from_many_threads_keep_one_linear_chain(void **state)
{
    (void)state;
    fx_t *f = fx_new(256 << 20, true);
    audit_t *a = open_audit(f, 500, NULL, NULL);
    enum { T = 8, N = 2500 };
    worker_t w[T];
    pthread_t th[T];
    for (int i = 0; i < T; i++) {
        w[i] = (worker_t){a, i, N, calloc(N, sizeof(uint64_t))};
        assert_int_equal(pthread_create(&th[i], NULL, work, &w[i]), 0);
    }
    for (int i = 0; i < T; i++)
        pthread_join(th[i], NULL);
    uint64_t lasts[T];
    for (int i = 0; i < T; i++) {
        for (int k = 1; k < N; k++)
            assert_true(w[i].seqs[k] > w[i].seqs[k - 1]);
        lasts[i] = w[i].seqs[N - 1];
        free(w[i].seqs);
    }
    audit_stats_t st;
    audit_get_stats(a, &st);
    print_message("  %d threads x %d appends: %llu commits, largest group %llu\n", T, N,
                  (unsigned long long)st.commits, (unsigned long long)st.batch_max);
    audit_close(a);
    audit_verify_result_t res = verify_store(f->store, f->key);
    expect_ok(&res);
    assert_int_equal(res.records, T * N + 2);
    char err[256];
    audit_reader_t *r = audit_reader_open(f->store, err, sizeof(err));
    /* every session's index lists exactly its records, in order (the writer puts
     * a group's entries per session, interleaved sessions sorted apart) */
    for (int i = 0; i < T; i++) {
        char sid[16];
        snprintf(sid, sizeof(sid), "t%d", i);
        sess_check_t sc = {sid, 0, 0, true};
        assert_int_equal(audit_reader_session_records(r, sid, check_sess_rec, &sc), 0);
        assert_int_equal(sc.n, N);
        assert_true(sc.ok);
        assert_int_equal(sc.last, lasts[i]);
    }
    audit_reader_close(r);
    fx_free(f);
}

static void another_process_reads_while_the_writer_runs(void **state)
{
    (void)state;
    fx_t *f = fx_new(16 << 20, false);
    audit_t *a = open_audit(f, 100, NULL, NULL);
    for (int i = 0; i < 100; i++)
        append_ok(a, AUDIT_REC_STATEMENT, "s1", stmt_fields(i));
    assert_int_equal(audit_flush(a, 5000), 0);
    char out[64];
    assert_int_equal(run_child("count", f->store, out, sizeof(out)), 0);
    assert_int_equal(atoi(out), 101);
    /* and the gateway itself reads through its own environment */
    audit_reader_t *r = audit_reader_shared(a);
    assert_non_null(r);
    int n = 0;
    assert_int_equal(audit_reader_records(r, 0, count_rec, &n), 0);
    assert_int_equal(n, 101);
    audit_reader_close(r);
    /* a second writer is refused */
    char err[256];
    audit_t *b = audit_open(&f->cfg, NULL, NULL, NULL, err, sizeof(err));
    assert_null(b);
    print_message("  second writer: %s\n", err);
    audit_close(a);
    fx_free(f);
}

/* ---- measurements (printed; generous bounds only) ---- */

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static uint64_t pct(const uint64_t *h, size_t n, double p)
{
    uint64_t total = 0, acc = 0;
    for (size_t i = 0; i < n; i++)
        total += h[i];
    for (size_t i = 0; i < n; i++) {
        acc += h[i];
        if (total && (double)acc >= p * (double)total)
            return 2ull << i; /* upper bound of bucket i */
    }
    return 0;
}

static void measure(cfg_durability_t mode, const char *name, int threads, int n)
{
    fx_t *f = fx_new(1ULL << 30, true);
    f->cfg.audit.durability = mode;
    audit_t *a = open_audit(f, 1000, NULL, NULL);
    double t0 = now_s();
    worker_t w[16];
    pthread_t th[16];
    for (int i = 0; i < threads; i++) {
        w[i] = (worker_t){a, i, n / threads, calloc((size_t)(n / threads), sizeof(uint64_t))};
        assert_int_equal(pthread_create(&th[i], NULL, work, &w[i]), 0);
    }
    for (int i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
        free(w[i].seqs);
    }
    double t1 = now_s();
    assert_int_equal(audit_flush(a, 30000), 0);
    double t2 = now_s();
    audit_stats_t st;
    audit_get_stats(a, &st);
    MDB_envinfo info;
    audit_close(a);
    raw_t r;
    raw_open(&r, f->store);
    mdb_env_info(r.env, &info);
    MDB_stat ms;
    mdb_env_stat(r.env, &ms);
    raw_close(&r);
    print_message("  %-13s %d thread(s): %d appends in %.3f s (%.0f/s enqueue), durable after "
                  "%.3f s (%.0f records/s)\n"
                  "                commits %llu, mean group %.1f, largest %llu; commit+fsync "
                  "mean %.0f us, p50 <%llu us, p99 <%llu us, max %llu us\n"
                  "                %.0f bytes/record value, %.0f bytes/record in the file "
                  "(indexes, pages)\n",
                  name, threads, n, t1 - t0, n / (t1 - t0), t2 - t0, n / (t2 - t0),
                  (unsigned long long)st.commits, (double)st.written / (double)st.commits,
                  (unsigned long long)st.batch_max, (double)st.commit_us_total / (double)st.commits,
                  (unsigned long long)pct(st.commit_us_hist, 24, 0.5),
                  (unsigned long long)pct(st.commit_us_hist, 24, 0.99),
                  (unsigned long long)st.commit_us_max,
                  (double)st.bytes_written / (double)st.written,
                  (double)(info.me_last_pgno + 1) * ms.ms_psize / (double)st.written);
    fx_free(f);
}

/* Closed loop, as strict mode runs: each "session" appends a statement and
 * waits until it is durable before the next (woken by notify). */
static pthread_mutex_t dmu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t dcv = PTHREAD_COND_INITIALIZER;

static void wake(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&dmu);
    pthread_cond_broadcast(&dcv);
    pthread_mutex_unlock(&dmu);
}

typedef struct session_w {
    audit_t *a;
    int id, n;
    double wait_s;
} session_w_t;

static void *session_loop(void *arg)
{
    session_w_t *w = arg;
    char sid[16];
    snprintf(sid, sizeof(sid), "c%d", w->id);
    for (int i = 0; i < w->n; i++) {
        uint64_t s;
        double t0 = now_s();
        while (audit_append(w->a, AUDIT_REC_STATEMENT, sid, stmt_fields(i), &s) != 0)
            usleep(100);
        pthread_mutex_lock(&dmu);
        while (audit_durable_seq(w->a) < s)
            pthread_cond_wait(&dcv, &dmu);
        pthread_mutex_unlock(&dmu);
        w->wait_s += now_s() - t0;
    }
    return NULL;
}

static void measure_closed_loop(int sessions, int per_session)
{
    fx_t *f = fx_new(1ULL << 30, true);
    audit_t *a = open_audit(f, 1000, wake, NULL);
    assert_int_equal(audit_flush(a, 5000), 0);
    audit_stats_t st0;
    audit_get_stats(a, &st0);
    session_w_t w[64];
    pthread_t th[64];
    double t0 = now_s();
    for (int i = 0; i < sessions; i++) {
        w[i] = (session_w_t){a, i, per_session, 0};
        assert_int_equal(pthread_create(&th[i], NULL, session_loop, &w[i]), 0);
    }
    double wait = 0;
    for (int i = 0; i < sessions; i++) {
        pthread_join(th[i], NULL);
        wait += w[i].wait_s;
    }
    double dt = now_s() - t0;
    audit_stats_t st;
    audit_get_stats(a, &st);
    uint64_t commits = st.commits - st0.commits, written = st.written - st0.written;
    for (size_t i = 0; i < 24; i++)
        st.commit_us_hist[i] -= st0.commit_us_hist[i];
    int n = sessions * per_session;
    print_message("  strict, %2d sessions waiting for durability: %5.0f statements/s, wait "
                  "%.2f ms mean; %llu commits, mean group %.1f, largest %llu; commit+fsync "
                  "mean %.2f ms, p50 <%.2f ms, p99 <%.2f ms\n",
                  sessions, n / dt, wait / n * 1000, (unsigned long long)commits,
                  (double)written / (double)commits, (unsigned long long)st.batch_max,
                  (double)(st.commit_us_total - st0.commit_us_total) / (double)commits / 1000,
                  (double)pct(st.commit_us_hist, 24, 0.5) / 1000,
                  (double)pct(st.commit_us_hist, 24, 0.99) / 1000);
    audit_close(a);
    fx_free(f);
}

static void measures_throughput_and_group_commit(void **state)
{
    (void)state;
    measure(CFG_DUR_STRICT, "strict", 1, 20000);
    measure(CFG_DUR_STRICT, "strict", 4, 40000);
    measure(CFG_DUR_BATCHED, "batched", 1, 20000);
    measure_closed_loop(1, 300);
    measure_closed_loop(8, 150);
    measure_closed_loop(64, 40);
}

/* ---- child process commands ---- */

static int child(const char *cmd, const char *dir)
{
    if (!strcmp(cmd, "drop-filler")) {
        MDB_env *env;
        MDB_txn *txn;
        MDB_dbi dbi;
        if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, AUDIT_MAX_DBS) ||
            mdb_env_open(env, dir, MDB_NOTLS, 0600) || mdb_txn_begin(env, NULL, 0, &txn) ||
            mdb_dbi_open(txn, "filler", 0, &dbi) || mdb_drop(txn, dbi, 1) || mdb_txn_commit(txn))
            return 1;
        mdb_env_close(env);
        return 0;
    }
    if (!strcmp(cmd, "count")) {
        char err[256];
        audit_reader_t *r = audit_reader_open(dir, err, sizeof(err));
        if (!r)
            return 1;
        int n = 0;
        int rc = audit_reader_records(r, 0, count_rec, &n);
        audit_reader_close(r);
        printf("%d\n", n);
        return rc ? 1 : 0;
    }
    return 2;
}

int main(int argc, char **argv)
{
    if (argc == 4 && !strcmp(argv[1], "--child"))
        return child(argv[2], argv[3]);
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof(self_exe) - 1);
    if (n > 0)
        self_exe[n] = 0;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(canonical_json_sorts_keys_and_escapes_minimally),
        cmocka_unit_test(canonical_json_replaces_invalid_utf8),
        cmocka_unit_test(fields_stream_is_canonical_like_cjson),
        cmocka_unit_test(fields_objects_of_many_members_are_canonical_like_cjson),
        cmocka_unit_test(names_and_envelope_tails_match_their_references),
        cmocka_unit_test(fields_records_are_stored_canonical_and_oversized_ones_say_so),
        cmocka_unit_test(appends_while_writer_commits_and_reopen_continues_chain),
        cmocka_unit_test(refuses_bad_arguments_without_consuming_a_seq),
        cmocka_unit_test(detects_a_changed_byte),
        cmocka_unit_test(detects_a_removed_record),
        cmocka_unit_test(detects_a_removed_record_with_renumbering),
        cmocka_unit_test(detects_two_swapped_records),
        cmocka_unit_test(detects_an_inserted_record),
        cmocka_unit_test(detects_a_consistently_rewritten_chain_by_its_checkpoint),
        cmocka_unit_test(detects_a_record_replaced_by_a_self_consistent_forgery),
        cmocka_unit_test(detects_the_first_records_removed_without_an_anchor),
        cmocka_unit_test(reports_a_tail_truncated_after_a_checkpoint),
        cmocka_unit_test(detects_a_changed_checkpoint_and_a_foreign_key),
        cmocka_unit_test(map_full_fails_cleanly_and_recovers_when_space_returns),
        cmocka_unit_test(a_full_map_grows_up_to_max_map_size_then_fails),
        cmocka_unit_test(retention_by_size_keeps_a_tiny_map_writing_and_verifiable),
        cmocka_unit_test(retention_by_age_retires_old_records),
        cmocka_unit_test(congestion_is_signalled_before_the_queue_refuses_and_clears_after),
        cmocka_unit_test(appends_from_many_threads_keep_one_linear_chain),
        cmocka_unit_test(another_process_reads_while_the_writer_runs),
        cmocka_unit_test(measures_throughput_and_group_commit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
