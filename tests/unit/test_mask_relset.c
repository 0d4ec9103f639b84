/*
 * The relation set both catalogs resolve through (src/mask/relset.c): lookups
 * by name and OID across table growth, the first of two same-named relations
 * kept, copies independent of the caller's strings, and a snapshot shared
 * by reference (catalog_retain / catalog_free) outliving its first owner.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "mask/relset.h"
#include "proxy/maskflow.h"

static void finds_every_relation_by_name_and_oid_after_growth(void **state)
{
    mask_relset_t *rs = mask_relset_new();
    assert_non_null(rs);
    size_t before = mask_relset_bytes(rs);
    for (uint32_t i = 1; i <= 5000; i++) {
        char name[32], col[32];
        snprintf(name, sizeof(name), "t%u", i);
        snprintf(col, sizeof(col), "c%u", i);
        const char *cols[] = {"id", col};
        const int16_t att[] = {1, 3};
        mask_relspec_t sp = {.oid = 16000 + i,
                             .schema = "public",
                             .name = name,
                             .kind = MASK_REL_TABLE,
                             .columns = cols,
                             .attnums = att,
                             .ncolumns = 2};
        assert_int_equal(mask_relset_add(rs, &sp), 1);
    }
    assert_int_equal(mask_relset_count(rs), 5000);
    assert_true(mask_relset_bytes(rs) > before + 5000 * 8);
    mask_relation_t r;
    assert_int_equal(mask_relset_resolve(rs, "public", "t4321", &r), 1);
    assert_int_equal(r.kind, MASK_REL_TABLE);
    assert_int_equal(r.ncolumns, 2);
    assert_string_equal(r.columns[1], "c4321");
    assert_int_equal(mask_relset_resolve(rs, "public", "t5001", &r), 0);
    assert_int_equal(mask_relset_resolve(rs, "other", "t1", &r), 0);
    assert_int_equal(mask_relset_resolve(NULL, "public", "t1", &r), -1);
    char out[128];
    assert_int_equal(mask_relset_attname(rs, 16000 + 17, 3, out, sizeof(out)), 1);
    assert_string_equal(out, "public.t17.c17");
    assert_int_equal(mask_relset_attname(rs, 16000 + 17, 2, out, sizeof(out)), 0);
    assert_int_equal(mask_relset_attname(rs, 99, 1, out, sizeof(out)), 0);
    assert_true(mask_relset_has_oid(rs, 21000));
    assert_false(mask_relset_has_oid(rs, 21001));
    assert_false(mask_relset_has_oid(rs, 0));
    mask_relset_free(rs);
}

static void keeps_the_first_of_two_names_and_copies_everything(void **state)
{
    mask_relset_t *rs = mask_relset_new();
    char name[] = "v", sql[] = "SELECT a FROM public.t", parent[] = "public.base";
    const char *cols[] = {"a", NULL, "b"};
    const char *parents[] = {parent};
    mask_relspec_t sp = {.schema = "public",
                         .name = name,
                         .kind = MASK_REL_VIEW,
                         .columns = cols,
                         .ncolumns = 3,
                         .view_sql = sql,
                         .parents = parents,
                         .nparents = 1};
    assert_int_equal(mask_relset_add(rs, &sp), 1);
    sp.view_sql = "SELECT 1";
    assert_int_equal(mask_relset_add(rs, &sp), 0);
    memset(sql, 'x', sizeof(sql) - 1);
    memset(parent, 'y', sizeof(parent) - 1);
    mask_relation_t r;
    assert_int_equal(mask_relset_get(rs, "public", "v", &r), 1);
    assert_int_equal(r.kind, MASK_REL_VIEW);
    assert_string_equal(r.view_sql, "SELECT a FROM public.t");
    assert_int_equal(r.ncolumns, 2); /* the NULL name is left out */
    assert_string_equal(r.columns[1], "b");
    assert_int_equal(r.nparents, 1);
    assert_string_equal(r.parents[0], "public.base");
    mask_relspec_t bad = {.schema = NULL, .name = "x"};
    assert_int_equal(mask_relset_add(rs, &bad), -1);
    mask_relset_free(rs);
}

static void a_shared_snapshot_lives_until_its_last_reference(void **state)
{
    catalog_t *c = catalog_new();
    const char *row = "{\"o\":16390,\"s\":\"public\",\"n\":\"customers\",\"k\":\"r\","
                      "\"c\":[[1,\"id\"],[2,\"email\"]],\"v\":null,\"p\":null,\"t\":false}";
    assert_int_equal(catalog_add_json(c, row, strlen(row)), 0);
    assert_int_equal(catalog_add_json(c, "{", 1), -1);
    catalog_t *held = catalog_retain(c);
    catalog_free(c); /* the publisher lets go; a session still holds it */
    catalog_view_t v = {held, false};
    mask_relation_t r;
    assert_int_equal(catalog_resolve(&v, "public", "customers", &r), 1);
    assert_string_equal(r.columns[1], "email");
    assert_true(catalog_bytes(held) > 0);
    catalog_free(held);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(finds_every_relation_by_name_and_oid_after_growth),
        cmocka_unit_test(keeps_the_first_of_two_names_and_copies_everything),
        cmocka_unit_test(a_shared_snapshot_lives_until_its_last_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
