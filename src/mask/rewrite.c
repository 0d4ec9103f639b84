/*
 * Result rewriting, one whole message at a time: RowDescription, DataRow,
 * ErrorResponse/NoticeResponse, NotificationResponse.
 *
 * DataRow, per column:
 *   masked (plan)   the value becomes text: the method over its text form.
 *                   Text format: the value is text. Binary format: text-like
 *                   types are their UTF-8 bytes, int2/int4/int8/oid/bool are
 *                   rendered as PostgreSQL would; any other binary value has
 *                   no text form here, so partial and email become redact and
 *                   hash is taken over the binary bytes. NULL stays NULL.
 *   not masked      detectors scan the value when it can hold text: every
 *                   text-format value except fixed-form types (bool, int2,
 *                   int4, floats, dates and times, uuid, ...), and binary
 *                   values of text-like types (jsonb after its version byte).
 *                   Hits are replaced in place. A binary value of any other
 *                   type (arrays, records, bytea, extension types) is scanned
 *                   as raw bytes; a hit there makes the whole value NULL,
 *                   since its bytes cannot be edited without decoding it.
 * All columns of a row are scanned in one Vectorscan pass; a row with nothing
 * to change costs that pass and no copy.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mask/internal.h"

enum {
    OID_BOOL = 16,
    OID_BYTEA = 17,
    OID_CHAR = 18,
    OID_NAME = 19,
    OID_INT8 = 20,
    OID_INT2 = 21,
    OID_INT4 = 23,
    OID_TEXT = 25,
    OID_OID = 26,
    OID_JSON = 114,
    OID_XML = 142,
    OID_FLOAT4 = 700,
    OID_FLOAT8 = 701,
    OID_UNKNOWN = 705,
    OID_BPCHAR = 1042,
    OID_VARCHAR = 1043,
    OID_DATE = 1082,
    OID_TIME = 1083,
    OID_TIMESTAMP = 1114,
    OID_TIMESTAMPTZ = 1184,
    OID_INTERVAL = 1186,
    OID_TIMETZ = 1266,
    OID_BIT = 1560,
    OID_VARBIT = 1562,
    OID_UUID = 2950,
    OID_JSONB = 3802,
    OID_PG_LSN = 3220,
    OID_CIDR = 650,
    OID_INET = 869,
    OID_MACADDR = 829,
    OID_MONEY = 790,
    OID_XID = 28,
    OID_CID = 29,
    OID_TID = 27,
    OID_REGCLASS = 2205,
    OID_REGPROC = 24,
    OID_REGTYPE = 2206,
};

enum { SCAN_NONE, SCAN_TEXT, SCAN_JSONB, SCAN_OPAQUE };
enum { CONV_TEXT, CONV_JSONB, CONV_INT, CONV_UINT, CONV_BOOL, CONV_OPAQUE };

typedef struct dcol {
    const mask_method_t *m; /* NULL = not masked */
    int mask;               /* column mask index, for counters (-1 none) */
    uint32_t type;
    int16_t fmt;
    uint8_t scan, conv;
    bool json; /* json / jsonb: replacements keep the document valid */
    uint64_t count;
} dcol_t;

struct mask_desc {
    mask_plan_t *plan;
    mask_rules_t *rules;
    uint16_t ncols;
    dcol_t *cols;
    bool any_masked, any_scan;
    uint64_t rows, rows_changed, det_count[DET_N + 1];
};

static bool textlike(uint32_t t)
{
    return t == OID_TEXT || t == OID_VARCHAR || t == OID_BPCHAR || t == OID_NAME || t == OID_CHAR ||
           t == OID_UNKNOWN || t == OID_JSON || t == OID_XML;
}

/* Types whose text form is fixed and cannot hold what the detectors look for. */
static bool fixed_form(uint32_t t)
{
    switch (t) {
    case OID_BOOL:
    case OID_INT2:
    case OID_INT4:
    case OID_OID:
    case OID_FLOAT4:
    case OID_FLOAT8:
    case OID_DATE:
    case OID_TIME:
    case OID_TIMESTAMP:
    case OID_TIMESTAMPTZ:
    case OID_INTERVAL:
    case OID_TIMETZ:
    case OID_UUID:
    case OID_PG_LSN:
    case OID_CIDR:
    case OID_INET:
    case OID_MACADDR:
    case OID_XID:
    case OID_CID:
    case OID_TID:
    case OID_REGCLASS:
    case OID_REGPROC:
    case OID_REGTYPE:
    case OID_BIT:
    case OID_VARBIT:
    case OID_MONEY:
        return true;
    default:
        return false;
    }
}

static void set_col_kind(dcol_t *c, bool detectors)
{
    bool bin = c->fmt == PGW_FMT_BINARY;
    c->json = c->type == OID_JSON || c->type == OID_JSONB;
    if (!bin)
        c->conv = CONV_TEXT;
    else if (c->type == OID_JSONB)
        c->conv = CONV_JSONB;
    else if (textlike(c->type))
        c->conv = CONV_TEXT;
    else if (c->type == OID_INT2 || c->type == OID_INT4 || c->type == OID_INT8)
        c->conv = CONV_INT;
    else if (c->type == OID_OID)
        c->conv = CONV_UINT;
    else if (c->type == OID_BOOL)
        c->conv = CONV_BOOL;
    else
        c->conv = CONV_OPAQUE;
    if (c->m || !detectors || fixed_form(c->type))
        c->scan = SCAN_NONE;
    else if (!bin || textlike(c->type))
        c->scan = SCAN_TEXT;
    else if (c->type == OID_JSONB)
        c->scan = SCAN_JSONB;
    else
        c->scan = SCAN_OPAQUE;
}

/* "schema.table.column" from the attname hook to a mask index. */
static int mask_by_attname(const mask_rules_t *r, const char *full)
{
    char buf[512];
    snprintf(buf, sizeof(buf), "%s", full);
    char *a = strchr(buf, '.'), *b = a ? strchr(a + 1, '.') : NULL;
    if (!b)
        return -1;
    *a = *b = 0;
    return mask_rules_find(r, buf, a + 1, b + 1);
}

int mask_desc_new(const mask_plan_t *p, const uint8_t *rowdesc, size_t len,
                  const pgw_formats_t *result_formats, mask_attname_fn attname, void *arg,
                  mask_desc_t **out)
{
    pgw_row_description_t rd;
    *out = NULL;
    if (pgw_read_row_description(rowdesc, len, &rd) < 0)
        return -1;
    mask_desc_t *d = calloc(1, sizeof(*d));
    const mask_method_t **ms = calloc(rd.nfields ? rd.nfields : 1, sizeof(*ms));
    int *masks = calloc(rd.nfields ? rd.nfields : 1, sizeof(*masks));
    if (!d || !ms || !masks || (rd.nfields && !(d->cols = calloc(rd.nfields, sizeof(*d->cols))))) {
        free(ms);
        free(masks);
        mask_desc_free(d);
        return -1;
    }
    d->plan = mask_plan_retain((mask_plan_t *)p);
    d->rules = p->rules;
    d->ncols = rd.nfields;
    mask_plan_bind(p, rd.nfields, ms, NULL, masks);
    bool det = p->rules->db != NULL;
    pgw_iter_t it = rd.fields;
    pgw_column_t col;
    for (unsigned i = 0; i < rd.nfields && pgw_column_next(&it, &col); i++) {
        dcol_t *c = &d->cols[i];
        c->m = ms[i];
        c->mask = masks[i];
        c->type = col.type_oid;
        c->fmt = col.format;
        if (result_formats) {
            int f = pgw_format_of(result_formats, i);
            if (f < 0) {
                free(ms);
                free(masks);
                mask_desc_free(d);
                return -1;
            }
            c->fmt = (int16_t)f;
        }
        char name[512];
        if (!c->m && attname && col.table_oid &&
            attname(arg, col.table_oid, col.attnum, name, sizeof(name)) == 1) {
            int mi = mask_by_attname(p->rules, name);
            if (mi >= 0) {
                c->m = &p->rules->cols[mi].method;
                c->mask = mi;
            }
        }
        set_col_kind(c, det);
        d->any_masked |= c->m != NULL;
        d->any_scan |= c->scan != SCAN_NONE;
    }
    free(ms);
    free(masks);
    *out = d;
    return 0;
}

void mask_desc_free(mask_desc_t *d)
{
    if (!d)
        return;
    mask_plan_release(d->plan);
    free(d->cols);
    free(d);
}

bool mask_desc_active(const mask_desc_t *d)
{
    return d->any_masked || d->any_scan;
}

int mask_rewrite_rowdesc(const mask_desc_t *d, const uint8_t *body, size_t len, buf_t *out)
{
    pgw_row_description_t rd;
    if (pgw_read_row_description(body, len, &rd) < 0 || rd.nfields != d->ncols)
        return -1;
    if (!d->any_masked)
        return 0;
    pgw_column_t *cols = malloc((rd.nfields ? rd.nfields : 1) * sizeof(*cols));
    if (!cols)
        return -1;
    pgw_iter_t it = rd.fields;
    for (unsigned i = 0; i < rd.nfields && pgw_column_next(&it, &cols[i]); i++) {
        if (!d->cols[i].m)
            continue;
        cols[i].table_oid = 0;
        cols[i].attnum = 0;
        cols[i].type_oid = OID_TEXT;
        cols[i].typlen = -1;
        cols[i].typmod = -1;
    }
    pgw_write_row_description(out, cols, rd.nfields);
    free(cols);
    return out->failed ? -1 : 1;
}

/* ---- values ---- */

static uint32_t rd32(const uint8_t *p)
{
    return rd_u32(p);
}

/* Text form of a binary value for a method; NULL when it has none. */
static const uint8_t *text_form(mask_scratch_t *s, const dcol_t *c, const uint8_t *v, size_t n,
                                size_t *tn)
{
    char num[32];
    int k = -1;
    switch (c->conv) {
    case CONV_TEXT:
        *tn = n;
        return v;
    case CONV_JSONB:
        if (n < 1)
            return NULL;
        *tn = n - 1;
        return v + 1;
    case CONV_INT:
        if (n == 2)
            k = snprintf(num, sizeof(num), "%d", (int16_t)rd_u16(v));
        else if (n == 4)
            k = snprintf(num, sizeof(num), "%" PRId32, (int32_t)rd32(v));
        else if (n == 8)
            k = snprintf(num, sizeof(num), "%" PRId64,
                         (int64_t)(((uint64_t)rd32(v) << 32) | rd32(v + 4)));
        break;
    case CONV_UINT:
        if (n == 4)
            k = snprintf(num, sizeof(num), "%" PRIu32, rd32(v));
        break;
    case CONV_BOOL:
        if (n == 1)
            k = snprintf(num, sizeof(num), "%s", v[0] ? "t" : "f");
        break;
    default:
        return NULL;
    }
    if (k < 0)
        return NULL;
    buf_reset(&s->tmp);
    buf_append(&s->tmp, num, (size_t)k);
    *tn = s->tmp.len;
    return s->tmp.data;
}

/* Appends Int32 length + the masked value of column c. */
static void put_masked(const mask_rules_t *r, mask_scratch_t *s, const dcol_t *c, const uint8_t *v,
                       int32_t n, buf_t *out)
{
    if (n < 0) {
        pgw_put_value(out, NULL, -1);
        return;
    }
    size_t mark = out->len - out->rpos;
    buf_put_u32(out, 0);
    size_t start = out->len - out->rpos, tn;
    const uint8_t *t = text_form(s, c, v, (size_t)n, &tn);
    int isnull = t ? mask_method_apply(r, s, c->m, t, tn, out)
                   : mask_method_apply_opaque(r, s, c->m, v, (size_t)n, out);
    if (out->failed)
        return;
    if (isnull) {
        out->len = out->rpos + mark;
        pgw_put_value(out, NULL, -1);
        return;
    }
    buf_patch_u32(out, out->rpos + mark, (uint32_t)(out->len - out->rpos - start));
}

/* Walks a JSON text once, left to right: whether a position is inside a
   string literal, and how many string boundaries a stretch crosses. */
typedef struct json_walk {
    size_t i;
    bool in;
} json_walk_t;

static unsigned json_advance(json_walk_t *w, const uint8_t *v, size_t to)
{
    unsigned toggles = 0;
    for (; w->i < to; w->i++) {
        if (w->in && v[w->i] == '\\') {
            w->i++;
        } else if (v[w->i] == '"') {
            w->in = !w->in;
            toggles++;
        }
    }
    return toggles;
}

/* Detector spans inside a JSON document: a span inside a string is replaced
   by the method's text (escaped); one outside a string (a number) by a JSON
   string. A span that crosses a string boundary cannot be replaced without
   breaking the document: then the whole document becomes the string "****".
   Returns false in that case (nothing appended). */
static bool json_spans(const mask_rules_t *r, mask_scratch_t *s, const uint8_t *v, size_t n,
                       const mask_span_t *sp, size_t ns, uint32_t off, buf_t *out)
{
    static const mask_method_t redact = {.kind = MASK_M_REDACT};
    json_walk_t w = {0, false};
    size_t pos = 0, start = out->len - out->rpos;
    for (size_t i = 0; i < ns; i++) {
        size_t a = sp[i].start - off, b = sp[i].end - off;
        if (a < pos || b > n)
            continue;
        json_advance(&w, v, a);
        bool in = w.in;
        if (json_advance(&w, v, b) || w.i > b) {
            out->len = out->rpos + start;
            return false;
        }
        buf_append(out, v + pos, a - pos);
        const mask_method_t *m = mask_det_method(r, sp[i].det);
        if (m->kind == MASK_M_NULL)
            m = &redact;
        buf_reset(&s->tmp2);
        (void)mask_method_apply(r, s, m, v + a, b - a, &s->tmp2);
        if (!in)
            buf_put_u8(out, '"');
        for (size_t k = 0; k < s->tmp2.len; k++) {
            uint8_t ch = s->tmp2.data[k];
            if (ch == '"' || ch == '\\')
                buf_put_u8(out, '\\');
            if (ch >= 0x20)
                buf_put_u8(out, ch);
        }
        if (!in)
            buf_put_u8(out, '"');
        pos = b;
    }
    buf_append(out, v + pos, n - pos);
    return true;
}

static void put_scanned(const mask_rules_t *r, mask_scratch_t *s, const dcol_t *c, const uint8_t *v,
                        int32_t n, const mask_span_t *sp, size_t ns, uint32_t off, buf_t *out)
{
    if (c->scan == SCAN_OPAQUE || mask_spans_null(r, sp, ns)) {
        pgw_put_value(out, NULL, -1);
        return;
    }
    size_t mark = out->len - out->rpos;
    buf_put_u32(out, 0);
    size_t start = out->len - out->rpos;
    if (c->scan == SCAN_JSONB) {
        buf_put_u8(out, v[0]);
        v++;
        n--;
        off++;
    }
    if (c->json) {
        if (!json_spans(r, s, v, (size_t)n, sp, ns, off, out))
            buf_append(out, "\"" MASK_REDACTED "\"", 6);
    } else
        mask_apply_spans(r, s, v, (size_t)n, sp, ns, off, out);
    buf_patch_u32(out, out->rpos + mark, (uint32_t)(out->len - out->rpos - start));
}

/* ---- DataRow ---- */

int mask_rewrite_datarow(mask_desc_t *d, mask_scratch_t *s, const uint8_t *body, size_t len,
                         buf_t *out)
{
    pgw_datarow_t dr;
    if (pgw_read_datarow(body, len, &dr) < 0 || dr.ncols != d->ncols || len > 0xffffffffu)
        return -1;
    d->rows++;
    if (!d->any_masked && !d->any_scan)
        return 0;
    size_t nc = dr.ncols ? dr.ncols : 1;
    if (s->capvals < nc) {
        mask_val_t *nv = realloc(s->vals, nc * sizeof(*nv));
        if (!nv)
            return -1;
        s->vals = nv;
        s->capvals = nc;
    }
    if (!mask_scratch_regions(s, nc))
        return -1;
    mask_val_t *vals = s->vals;
    pgw_iter_t it = dr.cols;
    const uint8_t *v;
    int32_t n;
    size_t nreg = 0;
    bool changed = false;
    for (unsigned i = 0; pgw_values_next(&it, &v, &n); i++) {
        vals[i].off = v ? (uint32_t)(v - body) : 0;
        vals[i].len = n;
        const dcol_t *c = &d->cols[i];
        if (c->m && n >= 0)
            changed = true;
        uint32_t skip = c->scan == SCAN_JSONB ? 1 : 0;
        if (c->scan != SCAN_NONE && n > (int32_t)skip) {
            s->regions[nreg] = (mask_region_t){vals[i].off + skip, vals[i].off + (uint32_t)n};
            s->region_col[nreg++] = i;
        }
    }
    int nsp = nreg ? mask_detect(d->rules, s, body, len, s->regions, nreg) : 0;
    if (nsp < 0)
        return -1;
    if (!changed && nsp == 0)
        return 0;
    d->rows_changed++;
    size_t start = pgw_datarow_begin(out, dr.ncols);
    size_t k = 0;
    for (unsigned i = 0; i < dr.ncols; i++) {
        const dcol_t *c = &d->cols[i];
        const uint8_t *val = body + vals[i].off;
        if (c->m) {
            if (vals[i].len >= 0)
                d->cols[i].count++;
            put_masked(d->rules, s, c, val, vals[i].len, out);
            continue;
        }
        size_t k0 = k;
        while (k < (size_t)nsp && s->region_col[s->spans[k].region] == i)
            k++;
        if (k == k0) {
            pgw_put_value(out, vals[i].len >= 0 ? val : NULL, vals[i].len);
            continue;
        }
        for (size_t j = k0; j < k; j++)
            d->det_count[s->spans[j].det < DET_N ? s->spans[j].det : DET_N]++;
        put_scanned(d->rules, s, c, val, vals[i].len, s->spans + k0, k - k0, vals[i].off, out);
    }
    pgw_end(out, start);
    return out->failed ? -1 : 1;
}

void mask_desc_summary(const mask_desc_t *d, buf_t *out)
{
    char line[700];
    int k = snprintf(line, sizeof(line), "rows=%" PRIu64 " rows_changed=%" PRIu64, d->rows,
                     d->rows_changed);
    buf_append(out, line, (size_t)k);
    for (unsigned i = 0; i < d->ncols; i++) {
        const dcol_t *c = &d->cols[i];
        if (!c->count)
            continue;
        const char *name = c->mask >= 0 && (size_t)c->mask < d->rules->ncols
                               ? d->rules->cols[c->mask].name
                               : "expression";
        k = snprintf(line, sizeof(line), " masked.%u.%s=%" PRIu64, i + 1, name, c->count);
        buf_append(out, line, (size_t)k < sizeof(line) ? (size_t)k : sizeof(line) - 1);
    }
    for (int i = 0; i <= DET_N; i++)
        if (d->det_count[i]) {
            k = snprintf(line, sizeof(line), " detected.%s=%" PRIu64,
                         i < DET_N ? mask_detector_names[i] : "mixed", d->det_count[i]);
            buf_append(out, line, (size_t)k);
        }
}

void mask_desc_counts(const mask_desc_t *d, mask_count_fn fn, void *arg)
{
    for (unsigned i = 0; i < d->ncols; i++) {
        const dcol_t *c = &d->cols[i];
        if (c->count)
            fn(arg,
               c->mask >= 0 && (size_t)c->mask < d->rules->ncols ? d->rules->cols[c->mask].name
                                                                 : "expression",
               NULL, c->count);
    }
    for (int i = 0; i <= DET_N; i++)
        if (d->det_count[i])
            fn(arg, NULL, i < DET_N ? mask_detector_names[i] : "mixed", d->det_count[i]);
}

/* ---- ErrorResponse / NoticeResponse ---- */

static bool scanned_field(char code)
{
    return code == 'M' || code == 'D' || code == 'H' || code == 'W' || code == 'q';
}

/* Words after which PostgreSQL quotes a name or a piece of the statement,
   not a data value. */
static bool quote_is_name(const char *v, size_t q)
{
    static const char *const words[] = {
        "column ",     "relation ", "table ",       "function ",     "type ",      "schema ",
        "constraint ", "index ",    "database ",    "role ",         "sequence ",  "view ",
        "trigger ",    "cursor ",   "portal ",      "statement ",    "savepoint ", "extension ",
        "collation ",  "domain ",   "near ",        "for ",          "operator ",  "aggregate ",
        "parameter ",  "variable ", "setting ",     "option ",       "channel ",   "tablespace ",
        "server ",     "policy ",   "publication ", "subscription ", "language ",  "procedure ",
        "routine ",    "rule ",     "user ",        "window ",       "attribute ", "CTE ",
        "table: ",     NULL};
    for (int i = 0; words[i]; i++) {
        size_t w = strlen(words[i]);
        if (q >= w && !strncmp(v + q - w, words[i], w))
            return true;
    }
    return false;
}

static void strict_add(mask_scratch_t *s, size_t a, size_t b)
{
    if (b <= a)
        return;
    if (s->nspans == s->capspans) {
        size_t nc = s->capspans ? s->capspans * 2 : 32;
        mask_span_t *ns = realloc(s->spans, nc * sizeof(*ns));
        if (!ns) {
            s->failed = true;
            return;
        }
        s->spans = ns;
        s->capspans = nc;
    }
    s->spans[s->nspans++] = (mask_span_t){(uint32_t)a, (uint32_t)b, 0, DET_MIXED};
}

static int span_cmp(const void *x, const void *y)
{
    const mask_span_t *a = x, *b = y;
    return a->start < b->start ? -1 : a->start > b->start ? 1 : 0;
}

/* Spans of what PostgreSQL echoes from data in message text: quoted values,
   `Key (...)=(value)`, `Failing row contains (...)`. Appended to s->spans. */
static void strict_spans(mask_scratch_t *s, const char *v, size_t n)
{
    const char *kv = memmem(v, n, ")=(", 3);
    if (kv) {
        size_t a = (size_t)(kv - v) + 3;
        const char *close = memrchr(v + a, ')', n - a);
        strict_add(s, a, close ? (size_t)(close - v) : n);
    }
    const char *fr = memmem(v, n, "Failing row contains (", 22);
    if (fr) {
        size_t a = (size_t)(fr - v) + 22;
        const char *close = memrchr(v + a, ')', n - a);
        strict_add(s, a, close ? (size_t)(close - v) : n);
    }
    for (size_t i = 0; i < n; i++) {
        if (v[i] != '"')
            continue;
        const char *end = memchr(v + i + 1, '"', n - i - 1);
        size_t e = end ? (size_t)(end - v) : n;
        if (!quote_is_name(v, i))
            strict_add(s, i + 1, e);
        i = e;
    }
}

/* Spans for one field: detectors, then strict spans; sorted and merged. */
static int field_spans(const mask_rules_t *r, mask_scratch_t *s, bool strict, const char *v,
                       size_t n)
{
    int rc = mask_detect_value(r, s, (const uint8_t *)v, n);
    if (rc < 0)
        return -1;
    if (!strict)
        return rc;
    s->failed = false;
    strict_spans(s, v, n);
    if (s->failed)
        return -1;
    if (s->nspans > 1)
        qsort(s->spans, s->nspans, sizeof(*s->spans), span_cmp);
    size_t w = 0;
    for (size_t i = 0; i < s->nspans; i++) {
        if (w && s->spans[i].start < s->spans[w - 1].end) {
            if (s->spans[i].end > s->spans[w - 1].end)
                s->spans[w - 1].end = s->spans[i].end;
            s->spans[w - 1].det = DET_MIXED;
        } else {
            s->spans[w++] = s->spans[i];
        }
    }
    s->nspans = w;
    return (int)w;
}

int mask_rewrite_error(const mask_rules_t *r, mask_scratch_t *s, char type, bool strict,
                       const uint8_t *body, size_t len, buf_t *out)
{
    pgw_error_t e;
    if (pgw_read_error(body, len, &e) < 0)
        return -1;
    if (!r->db && !strict)
        return 0;
    bool changed = false;
    pgw_iter_t it = pgw_error_fields(body, len);
    char code;
    const char *val;
    while (!changed && pgw_error_field_next(&it, &code, &val)) {
        if (!scanned_field(code))
            continue;
        int ns = field_spans(r, s, strict, val, strlen(val));
        if (ns < 0)
            return -1;
        changed = ns > 0;
    }
    if (!changed)
        return 0;
    size_t start = pgw_begin(out, type);
    it = pgw_error_fields(body, len);
    while (pgw_error_field_next(&it, &code, &val)) {
        size_t vn = strlen(val);
        buf_put_u8(out, (uint8_t)code);
        int ns = scanned_field(code) ? field_spans(r, s, strict, val, vn) : 0;
        if (ns < 0)
            return -1;
        if (ns)
            mask_apply_spans(r, s, (const uint8_t *)val, vn, s->spans, (size_t)ns, 0, out);
        else
            buf_append(out, val, vn);
        buf_put_u8(out, 0);
    }
    pgw_end_error(out, start);
    return out->failed ? -1 : 1;
}

int mask_rewrite_notification(const mask_rules_t *r, mask_scratch_t *s, const uint8_t *body,
                              size_t len, buf_t *out)
{
    pgw_notification_t nt;
    if (pgw_read_notification(body, len, &nt) < 0)
        return -1;
    size_t n = strlen(nt.payload);
    int ns = mask_detect_value(r, s, (const uint8_t *)nt.payload, n);
    if (ns <= 0)
        return ns;
    buf_reset(&s->tmp2);
    mask_apply_spans(r, s, (const uint8_t *)nt.payload, n, s->spans, (size_t)ns, 0, &s->tmp2);
    buf_put_u8(&s->tmp2, 0);
    if (s->tmp2.failed)
        return -1;
    pgw_write_notification(out, nt.pid, nt.channel, (const char *)s->tmp2.data);
    return out->failed ? -1 : 1;
}
