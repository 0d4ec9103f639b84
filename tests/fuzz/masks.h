/*
 * Masking fixtures shared by the mask fuzz targets: a customers(id, name,
 * email, card_number, ssn, notes) and kv(k, v, j, b, n) catalog, and four rule
 * sets that mask those columns with different methods, with and without
 * detectors. Compiled once per process (Vectorscan compilation is slow), by the
 * LLVMFuzzerInitialize this header defines for the target that includes it.
 */
#ifndef BULWARK_TESTS_FUZZ_MASKS_H
#define BULWARK_TESTS_FUZZ_MASKS_H

#include "fuzz.h"
#include "mask/internal.h"

static const char *const fx_customers[] = {"id", "name", "email", "card_number", "ssn", "notes"};
static const char *const fx_kv[] = {"k", "v", "j", "b", "n"};
static const char *const fx_path[] = {"public", NULL};

__attribute__((unused)) static int fx_resolve(void *arg, const char *schema, const char *name,
                                              mask_relation_t *out)
{
    (void)arg;
    if (strcmp(schema, "public"))
        return 0;
    memset(out, 0, sizeof(*out));
    if (!strcmp(name, "customers")) {
        out->kind = MASK_REL_TABLE;
        out->columns = fx_customers;
        out->ncolumns = 6;
        return 1;
    }
    if (!strcmp(name, "kv")) {
        out->kind = MASK_REL_TABLE;
        out->columns = fx_kv;
        out->ncolumns = 5;
        return 1;
    }
    if (!strcmp(name, "v_customers")) {
        out->kind = MASK_REL_VIEW;
        out->columns = fx_customers;
        out->ncolumns = 6;
        out->view_sql = " SELECT customers.id, customers.name, customers.email, "
                        "customers.card_number, customers.ssn, customers.notes FROM "
                        "public.customers;";
        return 1;
    }
    return 0;
}

#define FX_NRULES 4
static const char *const fx_rules_json[FX_NRULES] = {
    "[{\"column\":\"public.customers.email\",\"method\":\"email\"},"
    "{\"column\":\"public.customers.card_number\",\"method\":\"partial\",\"keep_last\":4},"
    "{\"column\":\"public.customers.ssn\",\"method\":\"redact\"},"
    "{\"column\":\"public.kv.k\",\"method\":\"hash\"},"
    "{\"column\":\"public.kv.v\",\"method\":\"partial\",\"keep_last\":2},"
    "{\"detectors\":[\"credit_card\",\"us_ssn\",\"email\",\"secret\"],\"method\":\"redact\"}]",
    "[{\"column\":\"public.customers.name\",\"method\":\"hash\"},"
    "{\"column\":\"public.customers.notes\",\"method\":\"null\"},"
    "{\"column\":\"public.kv.j\",\"method\":\"fixed\",\"value\":\"{}\"},"
    "{\"column\":\"public.kv.b\",\"method\":\"redact\"}]",
    "[{\"detectors\":[\"email\",\"credit_card\",\"us_ssn\",\"iban\",\"phone\",\"secret\"],"
    "\"method\":\"partial\",\"keep_first\":1,\"keep_last\":2}]",
    "[{\"column\":\"public.customers.id\",\"method\":\"fixed\",\"value\":\"0\"},"
    "{\"column\":\"public.customers.email\",\"method\":\"partial\",\"keep_first\":2},"
    "{\"column\":\"public.kv.n\",\"method\":\"email\"},"
    "{\"detectors\":[\"iban\",\"phone\"],\"method\":\"null\"},"
    "{\"detectors\":[\"secret\"],\"method\":\"hash\"}]",
};

static mask_rules_t *fx_rules[FX_NRULES];
static mask_scratch_t *fx_scratch;

static void fx_masks_init(void)
{
    for (int i = 0; i < FX_NRULES; i++) {
        cJSON *m = cJSON_Parse(fx_rules_json[i]);
        char err[256] = "";
        fx_rules[i] = mask_rules_compile(m, (const uint8_t *)"fuzz-key", 8, err, sizeof(err));
        cJSON_Delete(m);
        if (!fx_rules[i])
            fprintf(stderr, "rules %d: %s\n", i, err);
        FUZZ_REQUIRE(fx_rules[i], "mask rules");
    }
    fx_scratch = mask_scratch_new();
    FUZZ_REQUIRE(fx_scratch, "mask scratch");
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fx_masks_init();
    return 0;
}

#endif
