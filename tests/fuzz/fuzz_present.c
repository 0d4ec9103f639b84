/*
 * What `bulwark replay`, `bulwark sessions` and `bulwark audit export` print
 * (src/audit/present.c), from stored values as the reader decodes them
 * (reader_fill, reader_session), without LMDB in between.
 *
 * Everything printed for a terminal must be safe to show: valid UTF-8 with no
 * control character but newline and tab, no C1 control and no bidirectional
 * control (an agent writes the statement texts and values these show). The
 * JSON forms must parse as JSON.
 *
 * Input: a sequence of chunks [kind][len: u16 big-endian][len bytes], kind % 5:
 *   0  a record's canonical JSON, stored with its correct hash
 *   1  a record's canonical JSON, stored with a hash that does not match
 *   2  a stored record value as it is (version, prev hash, hash, canonical JSON)
 *   3  a stored checkpoint value (export only)
 *   4  a sessions-table row: [records: u8][id length: u8][id][JSON value]
 * Records are keyed 1, 2, 3, ... in input order.
 */
#include <lmdb.h>

#include "audit/internal.h"
#include "fuzz.h"

#define MAX_CHUNKS 64

/* Next code point of valid UTF-8 at s[*i] (advancing *i), or -1 if invalid. */
static long utf8_next(const unsigned char *s, size_t n, size_t *i)
{
    unsigned char c = s[*i];
    if (c < 0x80) {
        (*i)++;
        return c;
    }
    size_t need = (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2 : (c & 0xf8) == 0xf0 ? 3 : 0;
    if (!need || *i + need >= n)
        return -1;
    long cp = need == 1 ? c & 0x1f : need == 2 ? c & 0x0f : c & 0x07;
    for (size_t k = 1; k <= need; k++) {
        if ((s[*i + k] & 0xc0) != 0x80)
            return -1;
        cp = cp << 6 | (s[*i + k] & 0x3f);
    }
    static const long min[] = {0, 0x80, 0x800, 0x10000};
    if (cp < min[need] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return -1;
    *i += need + 1;
    return cp;
}

static void check_terminal_safe(const char *what, const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t at = i;
        long cp = utf8_next((const unsigned char *)s, n, &i);
        if (cp < 0) {
            fprintf(stderr, "%s: invalid UTF-8 at byte %zu of %zu\n", what, at, n);
            FUZZ_REQUIRE(0, "terminal output is valid UTF-8");
        }
        bool bad = (cp < 0x20 && cp != '\n' && cp != '\t') || (cp >= 0x7f && cp < 0xa0) ||
                   (cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069) ||
                   cp == 0x200e || cp == 0x200f;
        if (bad) {
            fprintf(stderr, "%s: U+%04lX at byte %zu of %zu\n", what, cp, at, n);
            FUZZ_REQUIRE(0, "no control or bidi character reaches the terminal");
        }
    }
}

static void check_json(const char *what, const char *s, size_t n)
{
    cJSON *j = cJSON_ParseWithLength(s, n);
    if (!j)
        fprintf(stderr, "%s: not JSON: %.*s\n", what, (int)(n < 400 ? n : 400), s);
    FUZZ_REQUIRE(j, "JSON output parses");
    cJSON_Delete(j);
}

typedef struct out {
    FILE *f;
    char *buf;
    size_t len;
} out_t;

static void out_open(out_t *o)
{
    o->buf = NULL;
    o->len = 0;
    o->f = open_memstream(&o->buf, &o->len);
    FUZZ_REQUIRE(o->f, "open_memstream");
}

static void out_close(out_t *o)
{
    FUZZ_REQUIRE(fclose(o->f) == 0, "output written");
}

/* A stored record value around canon: version 1, a zero prev hash, and the right
 * hash (or its complement). */
static uint8_t *record_value(const uint8_t *canon, size_t n, bool good_hash, size_t *len)
{
    uint8_t *v = malloc(AUDIT_VALUE_HDR + n + 1);
    v[0] = AUDIT_VALUE_VERSION;
    memset(v + 1, 0, AUDIT_HASH_LEN);
    const void *parts[] = {canon};
    const size_t lens[] = {n};
    chain_hash(v + 1 + AUDIT_HASH_LEN, v + 1, parts, lens, 1);
    if (!good_hash)
        v[1 + AUDIT_HASH_LEN] ^= 0xff;
    memcpy(v + AUDIT_VALUE_HDR, canon, n);
    *len = AUDIT_VALUE_HDR + n;
    return v;
}

static void add_session(present_sessions_t *text, present_sessions_t *json, const uint8_t *p,
                        size_t n)
{
    if (n < 2 || (size_t)p[1] + 2 > n)
        return;
    char id[256];
    memcpy(id, p + 2, p[1]);
    id[p[1]] = 0;
    cJSON *j = cJSON_ParseWithLength((const char *)p + 2 + p[1], n - 2 - p[1]);
    if (cJSON_IsObject(j)) {
        audit_session_t s;
        reader_session(&s, j, id);
        s.records = p[0];
        FUZZ_REQUIRE(present_sessions_add(text, &s) == 0, "session row kept");
        FUZZ_REQUIRE(present_sessions_add(json, &s) == 0, "session row kept (json)");
    }
    cJSON_Delete(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 18)
        return 0;
    fuzz_in_t in = {data, size};
    present_replay_t *replay = present_replay_new();
    present_sessions_t *stext = present_sessions_new(false), *sjson = present_sessions_new(true);
    FUZZ_REQUIRE(replay && stext && sjson, "present lists");
    out_t exp;
    out_open(&exp);
    char sid[AUDIT_SID_MAX + 1] = "s";
    uint64_t key = 0;
    for (int c = 0; c < MAX_CHUNKS && in.n; c++) {
        uint8_t kind = fuzz_u8(&in) % 5;
        const uint8_t *p;
        size_t n = fuzz_take(&in, fuzz_u16(&in), &p);
        if (kind == 3) {
            present_export_checkpoint(exp.f, p, n);
            continue;
        }
        if (kind == 4) {
            add_session(stext, sjson, p, n);
            continue;
        }
        size_t vlen = n;
        uint8_t *v = kind == 2 ? NULL : record_value(p, n, kind == 0, &vlen);
        const void *val = v ? v : (const void *)p;
        uint8_t kb[8];
        be64_put(kb, ++key);
        MDB_val k = {8, kb}, mv = {vlen, (void *)val};
        audit_record_t rec;
        cJSON *json = NULL;
        reader_fill(&rec, &k, &mv, &json);
        if (kind == 0 && rec.parsed)
            FUZZ_REQUIRE(rec.hash_ok, "a record stored with its hash reads as intact");
        if (rec.parsed && rec.session && key == 1)
            snprintf(sid, sizeof(sid), "%s", rec.session);
        FUZZ_REQUIRE(present_replay_add(replay, &rec) == 0, "record kept");
        present_export_record(exp.f, key, val, vlen);
        cJSON_Delete(json);
        free(v);
    }
    out_close(&exp);

    out_t o;
    out_open(&o);
    present_replay_print(replay, sid, false, o.f);
    out_close(&o);
    FUZZ_REQUIRE((o.len > 0) == (present_replay_count(replay) > 0), "a transcript if records");
    check_terminal_safe("replay", o.buf, o.len);
    free(o.buf);

    out_open(&o);
    present_replay_print(replay, sid, true, o.f);
    out_close(&o);
    if (o.len)
        check_json("replay --json", o.buf, o.len);
    free(o.buf);

    out_open(&o);
    FUZZ_REQUIRE(present_sessions_print(stext, o.f) == 0, "sessions table printed");
    out_close(&o);
    check_terminal_safe("sessions", o.buf, o.len);
    free(o.buf);

    out_open(&o);
    FUZZ_REQUIRE(present_sessions_print(sjson, o.f) == 0, "sessions --json printed");
    out_close(&o);
    check_json("sessions --json", o.buf, o.len);
    free(o.buf);

    free(exp.buf);
    present_replay_free(replay);
    present_sessions_free(stext);
    present_sessions_free(sjson);
    return 0;
}
