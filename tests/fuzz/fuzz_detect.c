/*
 * The content detectors (src/mask/detect.c): one Vectorscan scan of the input
 * under a rule set chosen by the first byte, validation of every candidate
 * (Luhn, IBAN checksum, ...), then the spans applied. Spans must lie inside
 * the value, be sorted and not overlap.
 */
#include "masks.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 256 * 1024)
        return 0;
    const mask_rules_t *r = fx_rules[data[0] & 3];
    size_t n = size - 1;
    uint8_t *v = fuzz_copy_of(data + 1, n);
    int k = mask_detect_value(r, fx_scratch, v, n);
    FUZZ_REQUIRE(k >= 0, "detect does not fail on any input");
    FUZZ_REQUIRE((size_t)k == fx_scratch->nspans, "count matches spans");
    uint32_t prev_end = 0;
    for (int i = 0; i < k; i++) {
        const mask_span_t *s = &fx_scratch->spans[i];
        FUZZ_REQUIRE(s->start < s->end && s->end <= n, "span inside the value");
        FUZZ_REQUIRE(s->start >= prev_end, "spans sorted, not overlapping");
        prev_end = s->end;
    }
    if (k > 0) {
        mask_span_t *spans = malloc((size_t)k * sizeof(*spans));
        memcpy(spans, fx_scratch->spans, (size_t)k * sizeof(*spans));
        buf_t out;
        buf_init(&out, 0);
        (void)mask_spans_null(r, spans, (size_t)k);
        mask_apply_spans(r, fx_scratch, v, n, spans, (size_t)k, 0, &out);
        buf_free(&out);
        free(spans);
    }
    free(v);
    return 0;
}
