/*
 * COPY ... TO STDOUT row parsing and masking (src/mask/copy.c) in text, CSV
 * and binary formats: the plan of a COPY statement chosen by the first byte,
 * bound to a matching CopyOutResponse, then the rest of the input cut into
 * CopyData payloads at input-chosen points (rows span messages), then
 * CopyDone. Every output must be whole CopyData messages.
 *
 * Input: [plan:3 bits | rules:2 bits] then chunks [len:1][bytes:len].
 */
#include "masks.h"

static const struct {
    const char *sql;
    int8_t overall;
    uint16_t ncols;
} plans[] = {
    {"COPY customers TO STDOUT", 0, 6},
    {"COPY customers TO STDOUT (FORMAT csv, HEADER)", 0, 6},
    {"COPY customers TO STDOUT (FORMAT binary)", 1, 6},
    {"COPY customers (email, ssn, id) TO STDOUT (FORMAT csv, DELIMITER ';', QUOTE '''', "
     "NULL 'NULL')",
     0, 3},
    {"COPY (SELECT k, v, b FROM kv) TO STDOUT (FORMAT binary)", 1, 3},
    {"COPY (SELECT name, email FROM customers) TO STDOUT WITH (FORMAT text, DELIMITER '|')", 0, 2},
    {"COPY kv TO STDOUT (FORMAT csv, FORCE_QUOTE *)", 0, 5},
    {"COPY customers TO STDOUT (FORMAT text, NULL '')", 0, 6},
};
#define NPLANS (sizeof(plans) / sizeof(plans[0]))

static void check_out(const buf_t *out, size_t from)
{
    size_t off = from;
    while (off < out->len) {
        pgw_hdr_t h;
        FUZZ_REQUIRE(pgw_frame(out->data + off, out->len - off, 1u << 30, &h) == 1 &&
                         h.type == 'd' && off + 5 + h.len <= out->len,
                     "output is whole CopyData messages");
        off += 5 + h.len;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in_t in = {data, size};
    uint8_t sel = fuzz_u8(&in);
    unsigned pi = (sel & 7) % NPLANS;
    const mask_rules_t *r = fx_rules[(sel >> 3) & 3];
    mask_plan_t *plan = NULL;
    char err[256];
    if (mask_plan_sql(r, plans[pi].sql, fx_resolve, NULL, fx_path, &plan, err, sizeof(err)) < 0)
        FUZZ_REQUIRE(0, err);
    buf_t resp, out;
    buf_init(&resp, 0);
    buf_init(&out, 0);
    int16_t fmts[8];
    for (int i = 0; i < 8; i++)
        fmts[i] = plans[pi].overall;
    pgw_write_copy_response(&resp, 'H', plans[pi].overall, fmts, plans[pi].ncols);
    mask_copy_t *c = NULL;
    if (mask_copy_new(plan, resp.data + 5, resp.len - 5, &c, err, sizeof(err)) == 0) {
        int rc = 0;
        while (in.n && rc >= 0) {
            const uint8_t *p0;
            size_t n = fuzz_take(&in, fuzz_u8(&in), &p0);
            uint8_t *p = fuzz_copy_of(p0, n);
            size_t before = out.len;
            rc = mask_copy_data(c, fx_scratch, p, n, &out);
            if (rc == 1 && !out.failed)
                check_out(&out, before);
            free(p);
            buf_reset(&out);
        }
        if (rc >= 0 && mask_copy_done(c, &out) == 0 && !out.failed)
            check_out(&out, 0);
        mask_copy_free(c);
    }
    buf_free(&resp);
    buf_free(&out);
    mask_plan_release(plan);
    return 0;
}
