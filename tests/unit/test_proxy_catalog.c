/*
 * The catalog masking resolves names with (src/proxy/catalog.c): rows of the
 * catalog query as PostgreSQL returns them, the resolver and attname hooks
 * built on them, and what happens with rows it cannot read.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/maskflow.h"

/* A DataRow body with one text value. */
static size_t datarow(uint8_t *out, const char *json)
{
    size_t n = strlen(json);
    out[0] = 0;
    out[1] = 1;
    out[2] = (uint8_t)(n >> 24);
    out[3] = (uint8_t)(n >> 16);
    out[4] = (uint8_t)(n >> 8);
    out[5] = (uint8_t)n;
    memcpy(out + 6, json, n);
    return n + 6;
}

static int add(catalog_t *c, const char *json)
{
    uint8_t buf[4096];
    return catalog_add_row(c, buf, datarow(buf, json));
}

static const char *const ROWS[] = {
    "{\"o\":16390,\"s\":\"public\",\"n\":\"customers\",\"k\":\"r\","
    "\"c\":[[1,\"id\"],[2,\"name\"],[4,\"email\"],[5,\"ssn\"]],\"v\":null,\"p\":null,\"t\":false}",
    "{\"o\":16400,\"s\":\"public\",\"n\":\"cards\",\"k\":\"v\",\"c\":[[1,\"id\"],[2,\"card\"]],"
    "\"v\":\" SELECT c.id, c.card_number AS card FROM public.customers "
    "c;\",\"p\":null,\"t\":false}",
    "{\"o\":16410,\"s\":\"public\",\"n\":\"vip\",\"k\":\"r\",\"c\":[[1,\"id\"],[2,\"tier\"]],"
    "\"v\":null,\"p\":[\"public.customers\"],\"t\":false}",
    "{\"o\":16420,\"s\":\"pg_temp_3\",\"n\":\"scratch\",\"k\":\"r\",\"c\":[[1,\"x\"]],\"v\":null,"
    "\"p\":null,\"t\":true}",
    "{\"o\":1259,\"s\":\"pg_catalog\",\"n\":\"pg_class\",\"k\":\"r\",\"c\":[[1,\"oid\"],[2,"
    "\"relname\"]],\"v\":null,\"p\":null,\"t\":false}",
    "{\"o\":13000,\"s\":\"information_schema\",\"n\":\"tables\",\"k\":\"v\",\"c\":[[1,"
    "\"table_name\"]],\"v\":null,\"p\":null,\"t\":false}",
};

static catalog_t *loaded(void)
{
    catalog_t *c = catalog_new();
    assert_non_null(c);
    for (size_t i = 0; i < sizeof(ROWS) / sizeof(ROWS[0]); i++)
        assert_int_equal(add(c, ROWS[i]), 0);
    assert_int_equal(catalog_size(c), 6);
    return c;
}

static void resolves_tables_views_parents_and_the_temp_schema(void **state)
{
    catalog_t *c = loaded();
    catalog_view_t v = {c, false};
    mask_relation_t r;
    assert_int_equal(catalog_resolve(&v, "public", "customers", &r), 1);
    assert_int_equal(r.kind, MASK_REL_TABLE);
    assert_int_equal(r.ncolumns, 4);
    assert_string_equal(r.columns[2], "email");
    assert_int_equal(catalog_resolve(&v, "public", "cards", &r), 1);
    assert_int_equal(r.kind, MASK_REL_VIEW);
    assert_non_null(r.view_sql);
    assert_non_null(strstr(r.view_sql, "public.customers"));
    assert_int_equal(catalog_resolve(&v, "public", "vip", &r), 1);
    assert_int_equal(r.nparents, 1);
    assert_string_equal(r.parents[0], "public.customers");
    assert_int_equal(catalog_resolve(&v, "pg_temp", "scratch", &r), 1);
    assert_int_equal(catalog_resolve(&v, "public", "nothing", &r), 0);
    assert_int_equal(catalog_resolve(&v, "other", "customers", &r), 0);
    /* system views are described as tables: their columns hold metadata */
    assert_int_equal(catalog_resolve(&v, "information_schema", "tables", &r), 1);
    assert_int_equal(r.kind, MASK_REL_TABLE);
    catalog_free(c);
}

static void after_ddl_only_system_relations_are_known(void **state)
{
    catalog_t *c = loaded();
    catalog_view_t v = {c, true};
    mask_relation_t r;
    assert_int_equal(catalog_resolve(&v, "public", "customers", &r), -1);
    assert_int_equal(catalog_resolve(&v, "pg_catalog", "pg_class", &r), 1);
    catalog_view_t none = {NULL, false};
    assert_int_equal(catalog_resolve(&none, "pg_catalog", "pg_class", &r), -1);
    catalog_free(c);
}

static void names_columns_by_table_oid_and_attnum_with_dropped_gaps(void **state)
{
    catalog_t *c = loaded();
    catalog_view_t v = {c, false};
    char name[256];
    assert_int_equal(catalog_attname(&v, 16390, 4, name, sizeof(name)), 1);
    assert_string_equal(name, "public.customers.email");
    assert_int_equal(catalog_attname(&v, 16390, 3, name, sizeof(name)), 0); /* dropped */
    assert_int_equal(catalog_attname(&v, 99999, 1, name, sizeof(name)), 0);
    assert_int_equal(catalog_attname(&v, 0, 0, name, sizeof(name)), 0);
    assert_true(catalog_knows_oid(c, 16400));
    assert_true(catalog_knows_oid(c, 0));
    assert_false(catalog_knows_oid(c, 99999));
    assert_false(catalog_knows_oid(NULL, 1));
    catalog_free(c);
}

static void refuses_rows_it_cannot_read(void **state)
{
    static const char *const bad[] = {
        "not json",
        "{\"o\":\"16390\",\"s\":\"public\",\"n\":\"t\"}", /* oid as a string */
        "{\"o\":0,\"s\":\"public\",\"n\":\"t\"}",
        "{\"o\":5000000000,\"s\":\"public\",\"n\":\"t\"}",
        "{\"o\":16390,\"n\":\"t\"}",
        "{\"o\":16390,\"s\":\"public\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        catalog_t *c = catalog_new();
        assert_int_equal(add(c, bad[i]), -1);
        catalog_free(c);
    }
    catalog_t *c = catalog_new();
    uint8_t null_row[] = {0, 1, 0xff, 0xff, 0xff, 0xff};
    assert_int_equal(catalog_add_row(c, null_row, sizeof(null_row)), -1);
    uint8_t short_row[] = {0, 1, 0, 0, 0, 9, '{'};
    assert_int_equal(catalog_add_row(c, short_row, sizeof(short_row)), -1);
    catalog_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(resolves_tables_views_parents_and_the_temp_schema),
        cmocka_unit_test(after_ddl_only_system_relations_are_known),
        cmocka_unit_test(names_columns_by_table_oid_and_attnum_with_dropped_gaps),
        cmocka_unit_test(refuses_rows_it_cannot_read),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
