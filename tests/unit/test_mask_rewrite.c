/*
 * Unit tests for the result rewriters: byte-exact RowDescription and DataRow
 * in and out (text and binary formats, NULLs, a value over 1 MiB), errors,
 * notices, notifications, and COPY in text, CSV and binary.
 *
 * BULWARK_BENCH=1 also runs a micro-benchmark of mask_rewrite_datarow and
 * prints rows/s.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "mask/internal.h"

/* ---- helpers ---- */

static const char *const customers[] = {"id", "name", "email", "card_number", "ssn", "notes"};
static const char *const kv[] = {"k", "v", "j", "b", "n"};

static int resolve(void *arg, const char *schema, const char *name, mask_relation_t *out)
{
    (void)arg;
    if (strcmp(schema, "public"))
        return 0;
    if (!strcmp(name, "customers")) {
        out->kind = MASK_REL_TABLE;
        out->columns = customers;
        out->ncolumns = 6;
        return 1;
    }
    if (!strcmp(name, "kv")) { /* k int8, v numeric, j jsonb, b bytea, n json */
        out->kind = MASK_REL_TABLE;
        out->columns = kv;
        out->ncolumns = 5;
        return 1;
    }
    return 0;
}

#define AGENT_MASKS                                                                                \
    "[{\"column\":\"public.customers.email\",\"method\":\"email\"},"                               \
    "{\"column\":\"public.customers.card_number\",\"method\":\"partial\",\"keep_last\":4},"        \
    "{\"column\":\"public.customers.ssn\",\"method\":\"redact\"},"                                 \
    "{\"column\":\"public.kv.k\",\"method\":\"hash\"},"                                            \
    "{\"column\":\"public.kv.v\",\"method\":\"partial\",\"keep_last\":2},"                         \
    "{\"detectors\":[\"credit_card\",\"us_ssn\",\"email\",\"secret\"],\"method\":\"redact\"}]"

static mask_rules_t *rules(const char *json)
{
    cJSON *m = cJSON_Parse(json);
    char err[256];
    mask_rules_t *r = mask_rules_compile(m, (const uint8_t *)"k", 1, err, sizeof(err));
    if (!r)
        print_message("compile: %s\n", err);
    cJSON_Delete(m);
    assert_non_null(r);
    return r;
}

static mask_plan_t *plan(const mask_rules_t *r, const char *sql)
{
    static const char *const path[] = {"public", NULL};
    mask_plan_t *p = NULL;
    char err[256];
    assert_int_equal(mask_plan_sql(r, sql, resolve, NULL, path, &p, err, sizeof(err)), 0);
    return p;
}

/* A whole message in b; body() gives what the rewriters take. */
static const uint8_t *body(const buf_t *b)
{
    return b->data + 5;
}
static size_t blen(const buf_t *b)
{
    return b->len - 5;
}

static void rowdesc(buf_t *b, const pgw_column_t *cols, uint16_t n)
{
    buf_reset(b);
    pgw_write_row_description(b, cols, n);
    assert_false(b->failed);
}

static void datarow(buf_t *b, const pgw_value_t *v, uint16_t n)
{
    buf_reset(b);
    pgw_write_datarow(b, v, n);
    assert_false(b->failed);
}

#define TXT(s)                                                                                     \
    {                                                                                              \
        (s), (int32_t)(sizeof(s) - 1)                                                              \
    }
#define NUL                                                                                        \
    {                                                                                              \
        NULL, -1                                                                                   \
    }

static const pgw_column_t cust_cols[] = {
    {"id", 16400, 1, 23, 4, -1, 0},
    {"email", 16400, 3, 25, -1, -1, 0},
    {"ssn", 16400, 5, 1043, -1, 15, 1},
    {"notes", 16400, 6, 25, -1, -1, 0},
};

typedef struct fx {
    mask_rules_t *r;
    mask_scratch_t *s;
    buf_t in, out, want;
} fx_t;

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    f->r = rules(AGENT_MASKS);
    f->s = mask_scratch_new();
    buf_init(&f->in, 0);
    buf_init(&f->out, 0);
    buf_init(&f->want, 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    mask_scratch_free(f->s);
    mask_rules_release(f->r);
    buf_free(&f->in);
    buf_free(&f->out);
    buf_free(&f->want);
    free(f);
    return 0;
}

static void assert_bytes(const buf_t *got, const buf_t *want)
{
    if (got->len != want->len || memcmp(got->data, want->data, got->len)) {
        print_message("got %zu bytes, want %zu\n", got->len, want->len);
        for (size_t i = 0; i < got->len && i < want->len; i++)
            if (got->data[i] != want->data[i]) {
                print_message("first difference at byte %zu: %02x vs %02x\n", i, got->data[i],
                              want->data[i]);
                break;
            }
        fail();
    }
}

/* ---- RowDescription ---- */

static void rowdesc_describes_masked_columns_as_text(void **state)
{
    fx_t *f = *state;
    mask_plan_t *p = plan(f->r, "SELECT id, email, ssn, notes FROM customers");
    rowdesc(&f->in, cust_cols, 4);
    mask_desc_t *d;
    assert_int_equal(mask_desc_new(p, body(&f->in), blen(&f->in), NULL, NULL, NULL, &d), 0);
    assert_int_equal(mask_rewrite_rowdesc(d, body(&f->in), blen(&f->in), &f->out), 1);
    const pgw_column_t want_cols[] = {
        {"id", 16400, 1, 23, 4, -1, 0},
        {"email", 0, 0, 25, -1, -1, 0},
        {"ssn", 0, 0, 25, -1, -1, 1}, /* format code kept */
        {"notes", 16400, 6, 25, -1, -1, 0},
    };
    rowdesc(&f->want, want_cols, 4);
    assert_bytes(&f->out, &f->want);
    mask_desc_free(d);
    mask_plan_release(p);

    /* nothing masked: unchanged, nothing appended */
    p = plan(f->r, "SELECT id, notes FROM customers");
    const pgw_column_t two[] = {cust_cols[0], cust_cols[3]};
    rowdesc(&f->in, two, 2);
    buf_reset(&f->out);
    assert_int_equal(mask_desc_new(p, body(&f->in), blen(&f->in), NULL, NULL, NULL, &d), 0);
    assert_int_equal(mask_rewrite_rowdesc(d, body(&f->in), blen(&f->in), &f->out), 0);
    assert_int_equal(f->out.len, 0);
    /* wrong width for this desc: malformed */
    rowdesc(&f->in, cust_cols, 4);
    assert_int_equal(mask_rewrite_rowdesc(d, body(&f->in), blen(&f->in), &f->out), -1);
    mask_desc_free(d);
    mask_plan_release(p);
}

/* ---- DataRow ---- */

static mask_desc_t *cust_desc(fx_t *f, mask_plan_t *p, const pgw_formats_t *fmts)
{
    rowdesc(&f->in, cust_cols, 4);
    mask_desc_t *d;
    assert_int_equal(mask_desc_new(p, body(&f->in), blen(&f->in), fmts, NULL, NULL, &d), 0);
    return d;
}

static void datarow_text_masks_columns_and_detects_content(void **state)
{
    fx_t *f = *state;
    mask_plan_t *p = plan(f->r, "SELECT id, email, ssn, notes FROM customers");
    const uint8_t text_fmt[] = {0, 0};
    pgw_formats_t fmts = {1, text_fmt};
    mask_desc_t *d = cust_desc(f, p, &fmts);
    const pgw_value_t in[] = {TXT("2"), TXT("bob.baker@example.org"), TXT("987-65-4321"),
                              TXT("api key sk_live_51HxQ2eZvKYlo2C8x7Qj3")};
    datarow(&f->in, in, 4);
    buf_reset(&f->out);
    assert_int_equal(mask_rewrite_datarow(d, f->s, body(&f->in), blen(&f->in), &f->out), 1);
    const pgw_value_t want[] = {TXT("2"), TXT("b***@example.org"), TXT("****"),
                                TXT("api key ****")};
    datarow(&f->want, want, 4);
    assert_bytes(&f->out, &f->want);

    /* NULLs stay NULL; an unmasked column with no hit is copied as is */
    const pgw_value_t in2[] = {TXT("3"), NUL, NUL, TXT("prefers email")};
    datarow(&f->in, in2, 4);
    buf_reset(&f->out);
    assert_int_equal(mask_rewrite_datarow(d, f->s, body(&f->in), blen(&f->in), &f->out), 0);
    assert_int_equal(f->out.len, 0);
    const pgw_value_t in3[] = {TXT("3"), NUL, TXT(""), NUL};
    datarow(&f->in, in3, 4);
    buf_reset(&f->out);
    assert_int_equal(mask_rewrite_datarow(d, f->s, body(&f->in), blen(&f->in), &f->out), 1);
    const pgw_value_t want3[] = {TXT("3"), NUL, TXT("****"), NUL};
    datarow(&f->want, want3, 4);
    assert_bytes(&f->out, &f->want);

    /* malformed: a row of the wrong width, a truncated body */
    datarow(&f->in, in, 3);
    assert_int_equal(mask_rewrite_datarow(d, f->s, body(&f->in), blen(&f->in), &f->out), -1);
    datarow(&f->in, in, 4);
    assert_int_equal(mask_rewrite_datarow(d, f->s, body(&f->in), blen(&f->in) - 1, &f->out), -1);
    buf_t sum;
    buf_init(&sum, 0);
    mask_desc_summary(d, &sum);
    buf_put_u8(&sum, 0);
    assert_non_null(strstr((char *)sum.data, "masked.2.public.customers.email=1"));
    assert_non_null(strstr((char *)sum.data, "detected.secret=1"));
    assert_null(strstr((char *)sum.data, "bob"));
    buf_free(&sum);
    mask_desc_free(d);
    mask_plan_release(p);
}

static void datarow_binary_masked_columns_become_text(void **state)
{
    fx_t *f = *state;
    mask_plan_t *p = plan(f->r, "SELECT id, email, ssn, notes FROM customers");
    const uint8_t bin[] = {0, 1};
    pgw_formats_t fmts = {1, bin}; /* Bind: one code for all columns */
    mask_desc_t *d = cust_desc(f, p, &fmts);
    const uint8_t id42[] = {0, 0, 0, 42};
    const pgw_value_t in[] = {{id42, 4},
                              TXT("carol.chen@example.net"),
                              TXT("222-33-4444"),
                              TXT("card 4111 1111 1111 1111")};
    datarow(&f->in, in, 4);
    buf_reset(&f->out);
    assert_int_equal(mask_rewrite_datarow(d, f->s, body(&f->in), blen(&f->in), &f->out), 1);
    const pgw_value_t want[] = {{id42, 4}, TXT("c***@example.net"), TXT("****"), TXT("card ****")};
    datarow(&f->want, want, 4);
    assert_bytes(&f->out, &f->want);
    mask_desc_free(d);
    mask_plan_release(p);
}

static void datarow_binary_values_of_other_types(void **state)
{
    fx_t *f = *state;
    mask_plan_t *p = plan(f->r, "SELECT k, v, j, b, n FROM kv");
    const pgw_column_t cols[] = {
        {"k", 1, 1, 20, 8, -1, 1},    /* int8, masked by hash */
        {"v", 1, 2, 1700, -1, -1, 1}, /* numeric, masked partial: no text form -> redact */
        {"j", 1, 3, 3802, -1, -1, 1}, /* jsonb: version byte then text */
        {"b", 1, 4, 17, -1, -1, 1},   /* bytea: opaque */
        {"n", 1, 5, 114, -1, -1, 0},  /* json, text format */
    };
    rowdesc(&f->in, cols, 5);
    mask_desc_t *d;
    assert_int_equal(mask_desc_new(p, body(&f->in), blen(&f->in), NULL, NULL, NULL, &d), 0);
    const uint8_t k42[] = {0, 0, 0, 0, 0, 0, 0, 42};
    const uint8_t num[] = {0, 1, 0, 0, 0, 0, 0, 2, 0, 42};
    const char jb[] = "\x01{\"mail\": \"dan.dent@example.com\"}";
    const char by[] = "\x00\x01PEM -----BEGIN PRIVATE KEY-----\x00";
    const pgw_value_t in[] = {{k42, 8},
                              {num, 10},
                              {jb, (int32_t)sizeof(jb) - 1},
                              {by, (int32_t)sizeof(by) - 1},
                              TXT("{\"card\": 4111111111111111}")};
    datarow(&f->in, in, 5);
    buf_reset(&f->out);
    assert_int_equal(mask_rewrite_datarow(d, f->s, body(&f->in), blen(&f->in), &f->out), 1);
    const pgw_value_t want[] = {
        TXT("7955074f51169f1f64053d8b2c403d7f41ee7ca4f3f9fe1c7b84f91083f2c50a"), /* HMAC("42") */
        TXT("****"), TXT("\x01{\"mail\": \"****\"}"), NUL, TXT("{\"card\": \"****\"}")};
    datarow(&f->want, want, 5);
    assert_bytes(&f->out, &f->want);
    mask_desc_free(d);
    mask_plan_release(p);
}

static void json_documents_stay_valid(void **state)
{
    fx_t *f = *state;
    mask_plan_t *p = plan(f->r, "SELECT n FROM kv");
    const pgw_column_t cols[] = {{"n", 1, 5, 114, -1, -1, 0}};
    rowdesc(&f->in, cols, 1);
    mask_desc_t *d;
    assert_int_equal(mask_desc_new(p, body(&f->in), blen(&f->in), NULL, NULL, NULL, &d), 0);
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"{\"a\": \"x\\\"y a@b.example\", \"n\": 4111111111111111}",
         "{\"a\": \"x\\\"y ****\", \"n\": \"****\"}"},
        /* a key cut short runs to the end of the value, across the closing quote */
        {"{\"k\": \"-----BEGIN PRIVATE KEY-----\\nMII\", \"x\": 1}", "\"****\""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        pgw_value_t in = {cases[i].in, (int32_t)strlen(cases[i].in)};
        pgw_value_t want = {cases[i].out, (int32_t)strlen(cases[i].out)};
        datarow(&f->in, &in, 1);
        buf_reset(&f->out);
        assert_int_equal(mask_rewrite_datarow(d, f->s, body(&f->in), blen(&f->in), &f->out), 1);
        datarow(&f->want, &want, 1);
        assert_bytes(&f->out, &f->want);
    }
    mask_desc_free(d);
    mask_plan_release(p);
}

static void datarow_handles_a_value_over_one_mebibyte(void **state)
{
    fx_t *f = *state;
    mask_plan_t *p = plan(f->r, "SELECT id, email, ssn, notes FROM customers");
    mask_desc_t *d = cust_desc(f, p, NULL);
    size_t n = (1 << 20) + 100;
    char *big = malloc(n), *bigw = malloc(n);
    memset(big, 'n', n);
    memcpy(big + n - 28, " mail a.b@example.com please", 28);
    memcpy(bigw, big, n);
    char *email = malloc(n);
    memset(email, 'e', n);
    memcpy(email + n - 12, "@example.com", 12);
    const pgw_value_t in[] = {TXT("1"), {email, (int32_t)n}, NUL, {big, (int32_t)n}};
    datarow(&f->in, in, 4);
    buf_reset(&f->out);
    assert_int_equal(mask_rewrite_datarow(d, f->s, body(&f->in), blen(&f->in), &f->out), 1);
    memcpy(bigw + n - 28, " mail **** please", 17);
    const pgw_value_t want[] = {
        TXT("1"), TXT("e***@example.com"), NUL, {bigw, (int32_t)(n - 28 + 17)}};
    datarow(&f->want, want, 4);
    assert_bytes(&f->out, &f->want);
    free(big);
    free(bigw);
    free(email);
    mask_desc_free(d);
    mask_plan_release(p);
}

static int attname(void *arg, uint32_t table_oid, int16_t attnum, char *out, size_t outsz)
{
    (void)arg;
    if (table_oid == 16400 && attnum == 5) {
        snprintf(out, outsz, "public.customers.ssn");
        return 1;
    }
    return 0;
}

static void rowdesc_names_settle_direct_references(void **state)
{
    fx_t *f = *state;
    /* the plan cannot see it (an unmasked column), RowDescription can */
    mask_plan_t *p = plan(f->r, "SELECT id, notes, notes, notes FROM customers");
    rowdesc(&f->in, cust_cols, 4);
    mask_desc_t *d;
    assert_int_equal(mask_desc_new(p, body(&f->in), blen(&f->in), NULL, attname, NULL, &d), 0);
    const pgw_value_t in[] = {TXT("1"), TXT("a"), TXT("123-45-6789"), TXT("c")};
    datarow(&f->in, in, 4);
    buf_reset(&f->out);
    assert_int_equal(mask_rewrite_datarow(d, f->s, body(&f->in), blen(&f->in), &f->out), 1);
    const pgw_value_t want[] = {TXT("1"), TXT("a"), TXT("****"), TXT("c")};
    datarow(&f->want, want, 4);
    assert_bytes(&f->out, &f->want);
    mask_desc_free(d);
    mask_plan_release(p);
}

static void unknown_shape_masks_every_column(void **state)
{
    fx_t *f = *state;
    mask_plan_t *p = mask_plan_unknown(f->r);
    mask_desc_t *d = cust_desc(f, p, NULL);
    const pgw_value_t in[] = {TXT("1"), TXT("x"), NUL, TXT("y")};
    datarow(&f->in, in, 4);
    buf_reset(&f->out);
    assert_int_equal(mask_rewrite_datarow(d, f->s, body(&f->in), blen(&f->in), &f->out), 1);
    const pgw_value_t want[] = {TXT("****"), TXT("****"), NUL, TXT("****")};
    datarow(&f->want, want, 4);
    assert_bytes(&f->out, &f->want);
    mask_desc_free(d);
    mask_plan_release(p);
}

/* ---- errors, notices, notifications ---- */

static void error_build(buf_t *b, char type, const char *m, const char *detail)
{
    buf_reset(b);
    size_t st = pgw_begin(b, type);
    pgw_put_error_field(b, 'S', "ERROR");
    pgw_put_error_field(b, 'C', "22P02");
    pgw_put_error_field(b, 'M', m);
    if (detail)
        pgw_put_error_field(b, 'D', detail);
    pgw_end_error(b, st);
}

static void errors_and_notices_are_scrubbed(void **state)
{
    fx_t *f = *state;
    error_build(&f->in, 'E', "invalid input syntax for type integer: \"123-45-6789\"", NULL);
    buf_reset(&f->out);
    assert_int_equal(
        mask_rewrite_error(f->r, f->s, 'E', false, body(&f->in), blen(&f->in), &f->out), 1);
    error_build(&f->want, 'E', "invalid input syntax for type integer: \"****\"", NULL);
    assert_bytes(&f->out, &f->want);

    /* strict: values PostgreSQL quotes from data, detectors or not */
    error_build(&f->in, 'E', "value \"Alice Archer\" is out of range",
                "Key (email)=(alice(x)@example) already exists.");
    buf_reset(&f->out);
    assert_int_equal(mask_rewrite_error(f->r, f->s, 'E', true, body(&f->in), blen(&f->in), &f->out),
                     1);
    error_build(&f->want, 'E', "value \"****\" is out of range",
                "Key (email)=(****) already exists.");
    assert_bytes(&f->out, &f->want);
    error_build(&f->in, 'N', "new row violates check constraint \"c1\"",
                "Failing row contains (1, Alice, x, y).");
    buf_reset(&f->out);
    assert_int_equal(mask_rewrite_error(f->r, f->s, 'N', true, body(&f->in), blen(&f->in), &f->out),
                     1);
    error_build(&f->want, 'N', "new row violates check constraint \"c1\"",
                "Failing row contains (****).");
    assert_bytes(&f->out, &f->want);

    /* names stay readable, even in strict mode */
    error_build(&f->in, 'E', "column \"emial\" does not exist", NULL);
    buf_reset(&f->out);
    assert_int_equal(mask_rewrite_error(f->r, f->s, 'E', true, body(&f->in), blen(&f->in), &f->out),
                     0);
    assert_int_equal(f->out.len, 0);
    assert_int_equal(mask_rewrite_error(f->r, f->s, 'E', false, (const uint8_t *)"M", 1, &f->out),
                     -1);
}

static void notification_payloads_are_scrubbed(void **state)
{
    fx_t *f = *state;
    buf_reset(&f->in);
    pgw_write_notification(&f->in, 7, "chan", "ssn 123-45-6789");
    buf_reset(&f->out);
    assert_int_equal(mask_rewrite_notification(f->r, f->s, body(&f->in), blen(&f->in), &f->out), 1);
    buf_reset(&f->want);
    pgw_write_notification(&f->want, 7, "chan", "ssn ****");
    assert_bytes(&f->out, &f->want);
    buf_reset(&f->in);
    pgw_write_notification(&f->in, 7, "chan", "nothing");
    buf_reset(&f->out);
    assert_int_equal(mask_rewrite_notification(f->r, f->s, body(&f->in), blen(&f->in), &f->out), 0);
}

/* ---- COPY ---- */

static mask_copy_t *copy_start(fx_t *f, mask_plan_t *p, int8_t overall, uint16_t ncols)
{
    int16_t fm[8] = {0};
    for (int i = 0; i < ncols; i++)
        fm[i] = overall;
    buf_reset(&f->in);
    pgw_write_copy_response(&f->in, 'H', overall, fm, ncols);
    mask_copy_t *c = NULL;
    char err[256];
    if (mask_copy_new(p, body(&f->in), blen(&f->in), &c, err, sizeof(err)) < 0)
        print_message("copy: %s\n", err);
    return c;
}

/* Feeds chunks as CopyData payloads; returns the concatenated output payloads. */
static char *copy_feed(fx_t *f, mask_copy_t *c, const char *const *chunks, const size_t *lens,
                       size_t *outlen)
{
    buf_t all;
    buf_init(&all, 0);
    for (int i = 0; chunks[i]; i++) {
        size_t n = lens ? lens[i] : strlen(chunks[i]);
        buf_reset(&f->out);
        int rc = mask_copy_data(c, f->s, (const uint8_t *)chunks[i], n, &f->out);
        assert_true(rc >= 0);
        if (rc == 0) {
            buf_append(&all, chunks[i], n);
            continue;
        }
        for (size_t o = 0; o < f->out.len;) { /* unwrap CopyData messages */
            assert_int_equal(f->out.data[o], 'd');
            size_t ml = rd_u32(f->out.data + o + 1) - 4;
            buf_append(&all, f->out.data + o + 5, ml);
            o += 5 + ml;
        }
    }
    assert_int_equal(mask_copy_done(c, &f->out), 0);
    buf_put_u8(&all, 0);
    *outlen = all.len - 1;
    return (char *)all.data;
}

static void copy_text_rows_are_masked_even_split_across_messages(void **state)
{
    fx_t *f = *state;
    mask_plan_t *p = plan(f->r, "COPY customers TO STDOUT");
    mask_copy_t *c = copy_start(f, p, 0, 6);
    assert_non_null(c);
    const char *chunks[] = {
        "1\tAlice Archer\talice.archer@example.com\t4111111111111111\t123-45-6789\tprefers email\n",
        "2\tBob Baker\tbob.baker@example.org\t5500005555555559\t987-65-4321\tapi key "
        "sk_live_51HxQ2eZ",
        "vKYlo2C8x7Qj3\n3\tCarol\\tChen\tcarol.chen@example.net\t\\N\t222-33-4444\t\\N\n", NULL};
    size_t n;
    char *got = copy_feed(f, c, chunks, NULL, &n);
    assert_string_equal(got,
                        "1\tAlice Archer\ta***@example.com\t************1111\t****\tprefers email\n"
                        "2\tBob Baker\tb***@example.org\t************5559\t****\tapi key ****\n"
                        "3\tCarol\\tChen\tc***@example.net\t\\N\t****\t\\N\n");
    free(got);
    mask_copy_free(c);
    mask_plan_release(p);
}

static void copy_csv_with_header_quotes_and_nulls(void **state)
{
    fx_t *f = *state;
    mask_plan_t *p =
        plan(f->r,
             "COPY (SELECT name, email, notes FROM customers) TO STDOUT WITH (FORMAT csv, HEADER)");
    mask_copy_t *c = copy_start(f, p, 0, 3);
    assert_non_null(c);
    const char *chunks[] = {"name,email,notes\n",
                            "\"Archer, Alice\",alice.archer@example.com,\"said \"\"hi\"\"\n"
                            "and 123-45-6789\"\n",
                            "Bob,,\n", "Carol,\"\",x\n", NULL};
    size_t n;
    char *got = copy_feed(f, c, chunks, NULL, &n);
    assert_string_equal(got, "name,email,notes\n"
                             "\"Archer, Alice\",a***@example.com,\"said \"\"hi\"\"\nand ****\"\n"
                             "Bob,,\n"
                             "Carol,****,x\n");
    free(got);
    mask_copy_free(c);
    mask_plan_release(p);
}

static void copy_binary_masked_fields_become_null(void **state)
{
    fx_t *f = *state;
    mask_plan_t *p =
        plan(f->r, "COPY (SELECT id, email, notes FROM customers) TO STDOUT WITH (FORMAT binary)");
    mask_copy_t *c = copy_start(f, p, 1, 3);
    assert_non_null(c);
    static const uint8_t head[] = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', 0xff, '\r', '\n',
                                   0,   0,   0,   0,   0,   0,   0,    0,    0};
    buf_t msg;
    buf_init(&msg, 0);
    buf_append(&msg, head, sizeof(head));
    /* tuple: 3 fields: int4 7, text email, text notes with a secret */
    buf_put_u16(&msg, 3);
    buf_put_u32(&msg, 4);
    buf_put_u32(&msg, 7);
    buf_put_u32(&msg, 9);
    buf_append(&msg, "a@b.test!", 9);
    buf_put_u32(&msg, 20);
    buf_append(&msg, "AKIAIOSFODNN7EXAMPLE", 20);
    size_t split = 30; /* the tuple spans two messages */
    const uint8_t trailer[] = {0xff, 0xff};
    const char *chunks[] = {(const char *)msg.data, (const char *)msg.data + split,
                            (const char *)trailer, NULL};
    const size_t lens[] = {split, msg.len - split, 2};
    size_t n;
    char *got = copy_feed(f, c, chunks, lens, &n);
    buf_t want;
    buf_init(&want, 0);
    buf_append(&want, head, sizeof(head));
    buf_put_u16(&want, 3);
    buf_put_u32(&want, 4);
    buf_put_u32(&want, 7);
    buf_put_u32(&want, 0xffffffff);
    buf_put_u32(&want, 0xffffffff);
    buf_append(&want, trailer, 2);
    assert_int_equal(n, want.len);
    assert_memory_equal(got, want.data, n);
    free(got);
    buf_free(&want);
    buf_free(&msg);
    mask_copy_free(c);
    mask_plan_release(p);
}

static void copy_refuses_what_it_cannot_mask(void **state)
{
    fx_t *f = *state;
    mask_plan_t *p = plan(f->r, "COPY customers TO STDOUT WITH (ENCODING 'LATIN1')");
    assert_null(copy_start(f, p, 0, 6));
    mask_plan_release(p);
    p = plan(f->r, "SELECT 1");
    assert_null(copy_start(f, p, 0, 1));
    mask_plan_release(p);
    p = plan(f->r, "COPY customers TO STDOUT");
    mask_copy_t *c = copy_start(f, p, 0, 6);
    buf_reset(&f->out);
    assert_int_equal(mask_copy_data(c, f->s, (const uint8_t *)"1\tx", 3, &f->out), 1);
    assert_int_equal(f->out.len, 0); /* held until the row completes */
    assert_int_equal(mask_copy_done(c, &f->out), -1);
    mask_copy_free(c);
    c = copy_start(f, p, 0, 6);
    assert_int_equal(mask_copy_data(c, f->s, (const uint8_t *)"1\tx\n", 4, &f->out),
                     -1); /* 2 of 6 */
    mask_copy_free(c);
    mask_plan_release(p);
}

/* ---- benchmark ---- */

static double bench_rows(fx_t *f, mask_plan_t *p, const pgw_column_t *cols, const pgw_value_t *vals,
                         uint16_t n, int rows)
{
    rowdesc(&f->in, cols, n);
    mask_desc_t *d;
    assert_int_equal(mask_desc_new(p, body(&f->in), blen(&f->in), NULL, NULL, NULL, &d), 0);
    datarow(&f->in, vals, n);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < rows; i++) {
        buf_reset(&f->out);
        if (mask_rewrite_datarow(d, f->s, body(&f->in), blen(&f->in), &f->out) < 0)
            fail();
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    mask_desc_free(d);
    double s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    return rows / s;
}

static void benchmark_datarow(void **state)
{
    fx_t *f = *state;
    if (!getenv("BULWARK_BENCH")) {
        print_message("set BULWARK_BENCH=1 to run the benchmark\n");
        return;
    }
    const pgw_column_t cols[] = {
        {"id", 16400, 1, 23, 4, -1, 0},     {"name", 16400, 2, 25, -1, -1, 0},
        {"email", 16400, 3, 25, -1, -1, 0}, {"card_number", 16400, 4, 25, -1, -1, 0},
        {"ssn", 16400, 5, 25, -1, -1, 0},   {"notes", 16400, 6, 25, -1, -1, 0},
    };
    const pgw_value_t vals[] = {TXT("123456"),
                                TXT("Alice Archer"),
                                TXT("alice.archer@example.com"),
                                TXT("4111111111111111"),
                                TXT("123-45-6789"),
                                TXT("prefers email; called about order 1234 on 2024-05-01")};
    int rows = 2000000;
    mask_rules_t *none = rules("[]");
    mask_rules_t *det_only = rules("[{\"detectors\":[\"email\",\"credit_card\",\"us_ssn\",\"iban\","
                                   "\"phone\",\"secret\"],\"method\":\"redact\"}]");
    mask_rules_t *all = rules(
        "[{\"column\":\"public.customers.email\",\"method\":\"email\"},"
        "{\"column\":\"public.customers.card_number\",\"method\":\"partial\",\"keep_last\":4},"
        "{\"column\":\"public.customers.ssn\",\"method\":\"redact\"},"
        "{\"detectors\":[\"email\",\"credit_card\",\"us_ssn\",\"iban\",\"phone\",\"secret\"],"
        "\"method\":\"redact\"}]");
    const char *sql = "SELECT * FROM customers";
    mask_plan_t *p0 = plan(none, sql), *p1 = plan(det_only, sql), *p2 = plan(all, sql);
    double r0 = bench_rows(f, p0, cols, vals, 6, rows);
    double r1 = bench_rows(f, p1, cols, vals, 6, rows);
    double r2 = bench_rows(f, p2, cols, vals, 6, rows);
    print_message("mask_rewrite_datarow, 6-column row (%zu bytes):\n", blen(&f->in));
    print_message("  no masks, no detectors:           %12.0f rows/s\n", r0);
    print_message("  all 6 detectors, no column masks: %12.0f rows/s (row rewritten)\n", r1);
    print_message("  3 masked columns + all detectors: %12.0f rows/s\n", r2);
    const pgw_value_t clean[] = {
        TXT("123456"), TXT("Alice Archer"),
        TXT("x"),      TXT("y"),
        TXT("z"),      TXT("prefers email; called about order 1234 on 2024-05-01")};
    double r3 = bench_rows(f, p1, cols, clean, 6, rows);
    print_message("  all detectors, nothing found:     %12.0f rows/s (no copy)\n", r3);
    mask_plan_release(p0);
    mask_plan_release(p1);
    mask_plan_release(p2);
    mask_rules_release(none);
    mask_rules_release(det_only);
    mask_rules_release(all);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(rowdesc_describes_masked_columns_as_text, setup, teardown),
        cmocka_unit_test_setup_teardown(datarow_text_masks_columns_and_detects_content, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(datarow_binary_masked_columns_become_text, setup, teardown),
        cmocka_unit_test_setup_teardown(datarow_binary_values_of_other_types, setup, teardown),
        cmocka_unit_test_setup_teardown(json_documents_stay_valid, setup, teardown),
        cmocka_unit_test_setup_teardown(datarow_handles_a_value_over_one_mebibyte, setup, teardown),
        cmocka_unit_test_setup_teardown(rowdesc_names_settle_direct_references, setup, teardown),
        cmocka_unit_test_setup_teardown(unknown_shape_masks_every_column, setup, teardown),
        cmocka_unit_test_setup_teardown(errors_and_notices_are_scrubbed, setup, teardown),
        cmocka_unit_test_setup_teardown(notification_payloads_are_scrubbed, setup, teardown),
        cmocka_unit_test_setup_teardown(copy_text_rows_are_masked_even_split_across_messages, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(copy_csv_with_header_quotes_and_nulls, setup, teardown),
        cmocka_unit_test_setup_teardown(copy_binary_masked_fields_become_null, setup, teardown),
        cmocka_unit_test_setup_teardown(copy_refuses_what_it_cannot_mask, setup, teardown),
        cmocka_unit_test_setup_teardown(benchmark_datarow, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
