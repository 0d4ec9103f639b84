/*
 * Result rewriting (src/mask/rewrite.c API) with a masking plan chosen by the
 * input: one of four rule sets and one of several statements (or the plan of
 * an unknown statement). Then a RowDescription (and optionally Bind result
 * formats) from the input binds the plan, and the remaining messages are
 * rewritten: DataRow, ErrorResponse/NoticeResponse (strict or not),
 * NotificationResponse. Every replacement must itself be a well-formed
 * message of the same type.
 *
 * Input: [rules:2 bits | plan:3 bits | formats:1 bit | strict:1 bit] then
 * records [type:1][len:2, big-endian][body:len]; the first 'T' record binds.
 */
#include "masks.h"

static const char *const plans[] = {
    "SELECT * FROM customers",
    "SELECT id, email, ssn, notes FROM customers WHERE id > 3",
    "SELECT c FROM customers c",
    "SELECT k, v, j, b, n FROM kv",
    ("SELECT name, upper(email), card_number::text AS x FROM customers UNION ALL "
     "SELECT 'a', 'b', 'c'"),
    "SELECT row_to_json(v) FROM v_customers v",
    "SELECT 1, 'x'",
};
#define NPLANS (sizeof(plans) / sizeof(plans[0]))

/* The replacement must frame as exactly one message of the given type. */
static void check_out(const buf_t *out, size_t before, char type)
{
    const uint8_t *m = out->data + before;
    size_t n = out->len - before;
    pgw_hdr_t h;
    FUZZ_REQUIRE(pgw_frame(m, n, 1u << 30, &h) == 1, "rewritten message frames");
    FUZZ_REQUIRE(h.type == type && 5 + (size_t)h.len == n, "one whole message, same type");
    if (type == 'D') {
        pgw_datarow_t dr;
        FUZZ_REQUIRE(pgw_read_datarow(m + 5, h.len, &dr) == 0, "rewritten DataRow reads back");
    } else if (type == 'T') {
        pgw_row_description_t rd;
        FUZZ_REQUIRE(pgw_read_row_description(m + 5, h.len, &rd) == 0,
                     "rewritten RowDescription reads back");
    } else if (type == 'E' || type == 'N') {
        pgw_error_t e;
        FUZZ_REQUIRE(pgw_read_error(m + 5, h.len, &e) == 0, "rewritten error reads back");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in_t in = {data, size};
    uint8_t sel = fuzz_u8(&in);
    const mask_rules_t *r = fx_rules[sel & 3];
    unsigned pi = (sel >> 2) & 7;
    bool use_formats = sel & 0x20, strict = sel & 0x40;
    mask_plan_t *plan = NULL;
    char err[256];
    if (pi >= NPLANS)
        plan = mask_plan_unknown(r);
    else if (mask_plan_sql(r, plans[pi], fx_resolve, NULL, fx_path, &plan, err, sizeof(err)) < 0)
        plan = NULL;
    FUZZ_REQUIRE(plan, "plan");
    char msg[256];
    (void)mask_plan_denied(plan, msg, sizeof(msg));
    uint8_t fmt_codes[2 * 8];
    pgw_formats_t formats = {0, fmt_codes};
    if (use_formats) {
        formats.n = fuzz_u8(&in) % 8;
        for (unsigned i = 0; i < formats.n; i++) {
            fmt_codes[2 * i] = 0;
            fmt_codes[2 * i + 1] = fuzz_u8(&in) & 1;
        }
    }
    mask_desc_t *desc = NULL;
    buf_t out;
    buf_init(&out, 0);
    while (in.n >= 3) {
        char type = (char)fuzz_u8(&in);
        const uint8_t *b0;
        size_t n = fuzz_take(&in, fuzz_u16(&in), &b0);
        uint8_t *b = fuzz_copy_of(b0, n);
        size_t before = out.len;
        int rc = 0;
        if (type == 'T' && !desc) {
            if (mask_desc_new(plan, b, n, use_formats ? &formats : NULL, NULL, NULL, &desc) == 0) {
                (void)mask_desc_active(desc);
                rc = mask_rewrite_rowdesc(desc, b, n, &out);
            }
        } else if (type == 'D' && desc) {
            rc = mask_rewrite_datarow(desc, fx_scratch, b, n, &out);
        } else if (type == 'E' || type == 'N') {
            rc = mask_rewrite_error(r, fx_scratch, type, strict, b, n, &out);
        } else if (type == 'A') {
            rc = mask_rewrite_notification(r, fx_scratch, b, n, &out);
        }
        if (rc == 1 && !out.failed)
            check_out(&out, before, type);
        else
            FUZZ_REQUIRE(out.len == before || rc == 1, "nothing appended unless replaced");
        free(b);
        buf_reset(&out);
        if (rc < 0)
            break;
    }
    if (desc) {
        mask_desc_summary(desc, &out);
        mask_desc_free(desc);
    }
    buf_free(&out);
    mask_plan_release(plan);
    return 0;
}
