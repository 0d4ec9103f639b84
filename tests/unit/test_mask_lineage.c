/*
 * Unit tests for mask lineage: every statement of tests/fixtures/mask/masking.tsv
 * is planned for role "agent" against a fake catalog that describes
 * shared/attacks/schema.sql and tests/fixtures/mask/schema-extra.sql, and each
 * output column's masking and the denial are compared with the corpus.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "helpers.h"

#include "mask/internal.h"

/* ---- fixtures ---- */

static mask_rules_t *rules_from(const char *json, const uint8_t *key, size_t keylen)
{
    cJSON *m = cJSON_Parse(json);
    char err[256];
    mask_rules_t *r = mask_rules_compile(m, key, keylen, err, sizeof(err));
    if (!r)
        print_message("compile: %s\n", err);
    cJSON_Delete(m);
    return r;
}

static mask_rules_t *agent_rules(void)
{
    char *json = test_slurp(test_fixture("mask/agent-masks.json"), NULL);
    assert_non_null(json);
    mask_rules_t *r = rules_from(json, NULL, 0);
    free(json);
    assert_non_null(r);
    return r;
}

/* ---- the fake catalog ---- */

static const char *const customers[] = {"id", "name", "email", "card_number", "ssn", "notes"};
static const char *const orders[] = {"id", "customer_id", "amount", "placed_on", "note"};
static const char *const audit_internal[] = {"id", "secret"};
static const char *const contacts[] = {"id", "name", "email", "email_lc"};
static const char *const cards[] = {"id", "card"};
static const char *const vip[] = {"id", "name", "email", "card_number", "ssn", "notes", "tier"};
static const char *const vip_parents[] = {"public.customers"};
static const char *const pg_stats[] = {"schemaname", "tablename", "attname", "null_frac",
                                       "most_common_vals"};
static const char *const pg_class[] = {"oid", "relname", "relnamespace"};

static const struct fake_rel {
    const char *schema, *name;
    mask_relkind_t kind;
    const char *const *cols;
    size_t ncols;
    const char *view_sql; /* as pg_get_viewdef with search_path = pg_catalog */
    const char *const *parents;
    size_t nparents;
} catalog[] = {
    {"public", "customers", MASK_REL_TABLE, customers, 6, NULL, NULL, 0},
    {"public", "orders", MASK_REL_TABLE, orders, 5, NULL, NULL, 0},
    {"public", "audit_internal", MASK_REL_TABLE, audit_internal, 2, NULL, NULL, 0},
    {"public", "customer_contacts", MASK_REL_VIEW, contacts, 4,
     " SELECT customers.id, customers.name, customers.email, lower(customers.email) AS email_lc\n"
     "   FROM public.customers;",
     NULL, 0},
    {"public", "customer_cards", MASK_REL_VIEW, cards, 2,
     " SELECT c.id, c.card_number AS card\n   FROM public.customers c;", NULL, 0},
    {"public", "v_nested", MASK_REL_VIEW, cards, 2,
     " SELECT customer_cards.id, customer_cards.card\n   FROM public.customer_cards;", NULL, 0},
    {"public", "vip_customers", MASK_REL_TABLE, vip, 7, NULL, vip_parents, 1},
    {"public", "opaque_view", MASK_REL_VIEW, contacts, 4, NULL, NULL, 0},
    {"pg_catalog", "pg_stats", MASK_REL_VIEW, pg_stats, 5, NULL, NULL, 0},
    {"pg_catalog", "pg_class", MASK_REL_TABLE, pg_class, 3, NULL, NULL, 0},
};

static int fake_resolve(void *arg, const char *schema, const char *name, mask_relation_t *out)
{
    (void)arg;
    for (size_t i = 0; i < sizeof(catalog) / sizeof(catalog[0]); i++) {
        const struct fake_rel *r = &catalog[i];
        if (strcmp(r->schema, schema) || strcmp(r->name, name))
            continue;
        out->kind = r->kind;
        out->columns = r->cols;
        out->ncolumns = r->ncols;
        out->view_sql = r->view_sql;
        out->parents = r->parents;
        out->nparents = r->nparents;
        return 1;
    }
    return 0;
}

static const char *const public_path[] = {"public", NULL};

static mask_plan_t *plan(const mask_rules_t *r, const char *sql)
{
    mask_plan_t *p = NULL;
    char err[256];
    if (mask_plan_sql(r, sql, fake_resolve, NULL, public_path, &p, err, sizeof(err)) < 0)
        print_message("plan %s: %s\n", sql, err);
    return p;
}

/* "- email *redact" / "ALL" */
static void describe(const mask_plan_t *p, char *out, size_t n)
{
    size_t o = 0;
    out[0] = 0;
    if (p->mask_all) {
        snprintf(out, n, "ALL");
        return;
    }
    for (size_t i = 0; i < p->ncols; i++) {
        mask_method_kind_t k = mask_plan_col_method(p, i);
        int w = snprintf(out + o, n - o, "%s%s%s", i ? " " : "", p->cols[i].var ? "*" : "",
                         k == MASK_M_NONE ? "-" : mask_method_name(k));
        if (w > 0 && (size_t)w < n - o)
            o += (size_t)w;
    }
}

static void explain_to_log(const mask_plan_t *p)
{
    buf_t b;
    buf_init(&b, 0);
    mask_plan_explain(p, &b);
    print_message("%.*s", (int)b.len, (const char *)b.data);
    buf_free(&b);
}

/* ---- the corpus ---- */

static void corpus_columns_and_denials_match(void **state)
{
    (void)state;
    mask_rules_t *r = agent_rules();
    char *tsv = test_slurp(test_fixture("mask/masking.tsv"), NULL);
    assert_non_null(tsv);
    int n = 0, failed = 0;
    for (char *save = NULL, *line = strtok_r(tsv, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#' || !line[0])
            continue;
        char *f[4] = {line, "", "", ""};
        for (int i = 1; i < 4; i++) {
            char *tab = strchr(f[i - 1], '\t');
            if (!tab)
                break;
            *tab = 0;
            f[i] = tab + 1;
        }
        n++;
        mask_plan_t *p = plan(r, f[0]);
        if (!p) {
            failed++;
            continue;
        }
        char got[512], msg[512];
        describe(p, got, sizeof(got));
        bool denied = mask_plan_denied(p, msg, sizeof(msg));
        bool want_deny = f[3][0] != 0;
        bool ok = !strcmp(got, f[2]) && denied == want_deny && (!want_deny || strstr(msg, f[3]));
        if (!ok) {
            failed++;
            print_message("MISMATCH: %s\n  want: [%s]%s%s\n  got:  [%s]%s%s\n", f[0], f[2],
                          want_deny ? " deny " : "", f[3], got, denied ? " deny: " : "",
                          denied ? msg : "");
            explain_to_log(p);
        }
        mask_plan_release(p);
    }
    print_message("masking.tsv: %d statements, %d mismatches\n", n, failed);
    assert_true(n >= 60);
    assert_int_equal(failed, 0);
    free(tsv);
    mask_rules_release(r);
}

/* ---- targeted cases ---- */

static void non_sensitive_columns_stay_unmasked(void **state)
{
    (void)state;
    mask_rules_t *r = agent_rules();
    static const char *const sqls[] = {
        "SELECT id, name FROM customers",
        "SELECT amount, note, placed_on FROM orders",
        "SELECT o.amount FROM orders o JOIN customers c ON c.id = o.customer_id",
        "SELECT sum(amount) FROM orders GROUP BY customer_id ORDER BY 1",
        "WITH t AS (SELECT id, name FROM customers) SELECT * FROM t",
        "SELECT name FROM customer_contacts",
        NULL};
    for (int i = 0; sqls[i]; i++) {
        mask_plan_t *p = plan(r, sqls[i]);
        assert_non_null(p);
        char msg[256];
        assert_false(mask_plan_denied(p, msg, sizeof(msg)));
        for (size_t k = 0; k < mask_plan_ncols(p); k++)
            assert_int_equal(mask_plan_col_method(p, k), MASK_M_NONE);
        mask_plan_release(p);
    }
    mask_rules_release(r);
}

static void unknown_relation_masks_whatever_could_come_from_it(void **state)
{
    (void)state;
    mask_rules_t *r = agent_rules();
    mask_plan_t *p = NULL;
    char err[128];
    /* no resolver at all: nothing is known; masks still apply by name */
    assert_int_equal(mask_plan_sql(r, "SELECT id, email, x FROM customers", NULL, NULL, public_path,
                                   &p, err, sizeof(err)),
                     0);
    assert_int_equal(mask_plan_col_method(p, 0), MASK_M_REDACT); /* unknown lineage */
    assert_int_equal(mask_plan_col_method(p, 1), MASK_M_EMAIL);  /* the mask names it */
    assert_int_equal(mask_plan_col_method(p, 2), MASK_M_REDACT);
    assert_true(mask_plan_touches_masked(p));
    mask_plan_release(p);
    /* a view whose definition the catalog does not give: every column masked */
    p = plan(r, "SELECT id FROM opaque_view");
    assert_int_equal(mask_plan_col_method(p, 0), MASK_M_REDACT);
    mask_plan_release(p);
    mask_rules_release(r);
}

static void in_predicates_allow_lets_a_filter_through(void **state)
{
    (void)state;
    mask_rules_t *r = rules_from(
        "[{\"column\":\"public.customers.ssn\",\"method\":\"redact\",\"in_predicates\":\"allow\"},"
        " {\"column\":\"public.customers.email\",\"method\":\"email\"}]",
        NULL, 0);
    assert_non_null(r);
    char msg[256];
    mask_plan_t *p = plan(r, "SELECT id FROM customers WHERE ssn LIKE '1%'");
    assert_false(mask_plan_denied(p, msg, sizeof(msg)));
    mask_plan_release(p);
    p = plan(r, "SELECT id FROM customers WHERE ssn LIKE '1%' AND email LIKE 'a%'");
    assert_true(mask_plan_denied(p, msg, sizeof(msg)));
    assert_non_null(strstr(msg, "public.customers.email"));
    assert_non_null(strstr(msg, "WHERE"));
    mask_plan_release(p);
    /* writes are never allowed by in_predicates */
    p = plan(r, "INSERT INTO orders (note) SELECT ssn FROM customers");
    assert_true(mask_plan_denied(p, msg, sizeof(msg)));
    assert_non_null(strstr(msg, "written"));
    mask_plan_release(p);
    mask_rules_release(r);
}

static void writes_into_the_same_column_are_allowed(void **state)
{
    (void)state;
    mask_rules_t *r = agent_rules();
    char msg[256];
    mask_plan_t *p = plan(r, "UPDATE customers SET email = lower(email) WHERE id = 1");
    assert_false(mask_plan_denied(p, msg, sizeof(msg)));
    mask_plan_release(p);
    p = plan(r, "UPDATE customers SET notes = email WHERE id = 1");
    assert_true(mask_plan_denied(p, msg, sizeof(msg)));
    assert_non_null(strstr(msg, "customers.notes"));
    mask_plan_release(p);
    p = plan(r,
             "INSERT INTO customers (name, email) VALUES ('n', 'e@example.com') RETURNING email");
    assert_false(mask_plan_denied(p, msg, sizeof(msg)));
    assert_int_equal(mask_plan_col_method(p, 0), MASK_M_EMAIL);
    mask_plan_release(p);
    mask_rules_release(r);
}

static void search_path_decides_which_relation_a_name_is(void **state)
{
    (void)state;
    mask_rules_t *r = agent_rules();
    mask_plan_t *p = NULL;
    char err[128];
    static const char *const other[] = {"sales", NULL};
    assert_int_equal(mask_plan_sql(r, "SELECT email FROM customers", fake_resolve, NULL, other, &p,
                                   err, sizeof(err)),
                     0);
    /* customers is not on this path: unknown, yet the mask of public.customers
       does not apply to sales.customers either -> masked as uncertain */
    assert_int_equal(mask_plan_col_method(p, 0), MASK_M_REDACT);
    mask_plan_release(p);
    char **sp = mask_search_path_parse("\"$user\", Public,\"My Schema\" , pg_temp", "agent_rw");
    assert_non_null(sp);
    assert_string_equal(sp[0], "agent_rw");
    assert_string_equal(sp[1], "public");
    assert_string_equal(sp[2], "My Schema");
    assert_string_equal(sp[3], "pg_temp");
    assert_null(sp[4]);
    mask_search_path_free(sp);
    sp = mask_search_path_parse("\"$user\"", NULL);
    assert_null(sp[0]);
    mask_search_path_free(sp);
    mask_rules_release(r);
}

static void plans_bind_to_the_width_of_a_result(void **state)
{
    (void)state;
    mask_rules_t *r = agent_rules();
    mask_plan_t *p = plan(r, "SELECT id, m.*, c.email FROM customers c, mystery m");
    const mask_method_t *ms[6];
    mask_reason_t rs[6];
    mask_plan_bind(p, 5, ms, rs, NULL); /* mystery has 3 columns here */
    assert_non_null(ms[0]);             /* id: could come from mystery */
    for (int i = 1; i < 4; i++)
        assert_int_equal(rs[i], MR_UNCERTAIN);
    assert_int_equal(ms[4]->kind, MASK_M_EMAIL);
    mask_plan_bind(p, 1, ms, rs, NULL); /* too narrow: everything masked */
    assert_int_equal(rs[0], MR_SHAPE);
    mask_plan_release(p);
    p = plan(r, "SELECT id, name FROM customers");
    mask_plan_bind(p, 3, ms, rs, NULL); /* shape differs from the statement's */
    for (int i = 0; i < 3; i++)
        assert_int_equal(ms[i]->kind, MASK_M_REDACT);
    mask_plan_release(p);
    p = mask_plan_unknown(r);
    mask_plan_bind(p, 2, ms, NULL, NULL);
    assert_int_equal(ms[1]->kind, MASK_M_REDACT);
    mask_plan_release(p);
    mask_rules_release(r);
}

static void explain_says_why(void **state)
{
    (void)state;
    mask_rules_t *r = agent_rules();
    mask_plan_t *p =
        plan(r, "SELECT id, email, lower(ssn), c FROM customers c WHERE card_number > '4'");
    buf_t b;
    buf_init(&b, 0);
    mask_plan_explain(p, &b);
    buf_put_u8(&b, 0);
    const char *t = (const char *)b.data;
    assert_non_null(strstr(t, "column 1 \"id\": not masked"));
    assert_non_null(
        strstr(t, "column 2 \"email\": masked by email — column public.customers.email"));
    assert_non_null(strstr(t, "masked by redact — expression over public.customers.ssn"));
    assert_non_null(strstr(t, "whole-row value including"));
    assert_non_null(
        strstr(t, "denied: masked column public.customers.card_number is used in WHERE"));
    buf_free(&b);
    cJSON *j = mask_plan_explain_json(p);
    assert_non_null(j);
    char *s = cJSON_PrintUnformatted(j);
    assert_non_null(strstr(s, "\"method\":\"email\""));
    assert_non_null(strstr(s, "\"use\":\"filter\""));
    free(s);
    cJSON_Delete(j);
    assert_int_equal(mask_plan_kind(p), MASK_STMT_ROWS);
    mask_plan_release(p);
    p = plan(r, "DECLARE c1 CURSOR FOR SELECT email FROM customers");
    assert_int_equal(mask_plan_kind(p), MASK_STMT_CURSOR);
    assert_string_equal(mask_plan_name(p), "c1");
    mask_plan_release(p);
    mask_rules_release(r);
}

static void statement_nodes_are_accepted_wrapped_or_not(void **state)
{
    (void)state;
    mask_rules_t *r = agent_rules();
    cJSON *tree =
        cJSON_Parse("{\"stmts\":[{\"stmt\":{\"SelectStmt\":{\"targetList\":[{\"ResTarget\":"
                    "{\"val\":{\"ColumnRef\":{\"fields\":[{\"String\":{\"sval\":\"ssn\"}}]}}}}],"
                    "\"fromClause\":[{\"RangeVar\":{\"relname\":\"customers\",\"inh\":true}}],"
                    "\"op\":\"SETOP_NONE\"}},\"stmt_len\":0}]}");
    const cJSON *raw = cJSON_GetArrayItem(cJSON_GetObjectItem(tree, "stmts"), 0);
    mask_plan_t *p = NULL;
    assert_int_equal(mask_plan_statement(r, raw, fake_resolve, NULL, public_path, &p), 0);
    assert_int_equal(mask_plan_col_method(p, 0), MASK_M_REDACT);
    mask_plan_release(p);
    assert_int_equal(mask_plan_statement(r, cJSON_GetObjectItem(raw, "stmt"), fake_resolve, NULL,
                                         public_path, &p),
                     0);
    assert_int_equal(mask_plan_col_method(p, 0), MASK_M_REDACT);
    mask_plan_release(p);
    /* an unknown node shape: every column masked */
    cJSON *odd = cJSON_Parse("{\"FutureStmt\":{}}");
    assert_int_equal(mask_plan_statement(r, odd, fake_resolve, NULL, public_path, &p), 0);
    assert_true(p->mask_all);
    mask_plan_release(p);
    cJSON_Delete(odd);
    cJSON_Delete(tree);
    mask_rules_release(r);
}

static void deep_nesting_does_not_overflow(void **state)
{
    (void)state;
    mask_rules_t *r = agent_rules();
    /* libpg_query's JSON nests 3 levels per parenthesis; cJSON stops at 1000 */
    char sql[4096];
    size_t o = (size_t)snprintf(sql, sizeof(sql), "SELECT ");
    for (int i = 0; i < 300; i++)
        sql[o++] = '(';
    o += (size_t)snprintf(sql + o, sizeof(sql) - o, "ssn");
    for (int i = 0; i < 300; i++)
        sql[o++] = ')';
    snprintf(sql + o, sizeof(sql) - o, " FROM customers");
    mask_plan_t *p = NULL;
    char err[256];
    int rc = mask_plan_sql(r, sql, fake_resolve, NULL, public_path, &p, err, sizeof(err));
    if (rc == 0) {
        assert_int_not_equal(mask_plan_col_method(p, 0), MASK_M_NONE);
        mask_plan_release(p);
    }
    mask_rules_release(r);
}

static void rules_refuse_what_cannot_work(void **state)
{
    (void)state;
    char err[256];
    cJSON *m = cJSON_Parse("[{\"column\":\"public.t.c\",\"method\":\"hash\"}]");
    assert_null(mask_rules_compile(m, NULL, 0, err, sizeof(err)));
    assert_non_null(strstr(err, "key"));
    mask_rules_t *r = mask_rules_compile(m, (const uint8_t *)"k", 1, err, sizeof(err));
    assert_non_null(r);
    assert_true(mask_rules_active(r));
    assert_false(mask_rules_has_detectors(r));
    mask_rules_release(r);
    cJSON_Delete(m);
    m = cJSON_Parse("[]");
    r = mask_rules_compile(m, NULL, 0, err, sizeof(err));
    assert_false(mask_rules_active(r));
    mask_rules_release(r);
    cJSON_Delete(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(corpus_columns_and_denials_match),
        cmocka_unit_test(non_sensitive_columns_stay_unmasked),
        cmocka_unit_test(unknown_relation_masks_whatever_could_come_from_it),
        cmocka_unit_test(in_predicates_allow_lets_a_filter_through),
        cmocka_unit_test(writes_into_the_same_column_are_allowed),
        cmocka_unit_test(search_path_decides_which_relation_a_name_is),
        cmocka_unit_test(plans_bind_to_the_width_of_a_result),
        cmocka_unit_test(explain_says_why),
        cmocka_unit_test(statement_nodes_are_accepted_wrapped_or_not),
        cmocka_unit_test(deep_nesting_does_not_overflow),
        cmocka_unit_test(rules_refuse_what_cannot_work),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
