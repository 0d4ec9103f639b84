/*
 * The audit record decoders (src/audit): a stored record value as
 * `bulwark audit verify`, `replay` and `export` read it (reader_fill: version
 * byte, hashes, canonical JSON envelope), a stored checkpoint (cp_view), and
 * the fast timestamp scan. The canonical JSON writer must be a fixed point:
 * writing what it parses back gives the same bytes it parsed from its own
 * output.
 *
 * Input: [0: record | 1: checkpoint | 2: canonical JSON][value bytes].
 */
#include <lmdb.h>

#include "audit/internal.h"
#include "fuzz.h"

static void canon_fixed_point(const char *s, size_t n)
{
    cJSON *j = cJSON_ParseWithLength(s, n);
    if (!j)
        return;
    buf_t a, b;
    buf_init(&a, 1 << 24);
    buf_init(&b, 1 << 24);
    if (canon_json(&a, j) && !a.failed) {
        cJSON *j2 = cJSON_ParseWithLength((const char *)a.data, a.len);
        FUZZ_REQUIRE(j2, "canonical output parses");
        FUZZ_REQUIRE(canon_json(&b, j2) && !b.failed, "canonical output canonicalizes");
        FUZZ_REQUIRE(a.len == b.len && !memcmp(a.data, b.data, a.len), "canon is a fixed point");
        cJSON_Delete(j2);
    }
    buf_free(&a);
    buf_free(&b);
    cJSON_Delete(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 1 << 20)
        return 0;
    size_t n = size - 1;
    uint8_t *v = fuzz_copy_of(data + 1, n);
    switch (data[0] % 3) {
    case 0: {
        uint8_t key[8];
        be64_put(key, 7);
        MDB_val k = {8, key}, val = {n, v};
        audit_record_t rec;
        cJSON *json = NULL;
        reader_fill(&rec, &k, &val, &json);
        if (rec.parsed) {
            FUZZ_REQUIRE(rec.canon && rec.canon_len <= n, "canon inside the value");
            (void)audit_rec_type_name(rec.type);
        }
        int64_t ts;
        if (rec.canon)
            (void)rec_ts_fast(rec.canon, rec.canon_len, &ts);
        cJSON_Delete(json);
        break;
    }
    case 1: {
        cp_view_t cp;
        if (cp_view(v, n, &cp))
            FUZZ_REQUIRE(cp.canon && cp.sig_len <= n, "checkpoint parts inside the value");
        break;
    }
    default:
        canon_fixed_point((const char *)v, n);
    }
    free(v);
    return 0;
}
