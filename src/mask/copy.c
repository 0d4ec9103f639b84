/*
 * COPY ... TO STDOUT, rewritten row by row (PG docs 55.2.5, and COPY's
 * "File Formats"). PostgreSQL sends one row per CopyData message, the binary
 * header together with the first row and the trailer alone; this code does
 * not rely on it: a row split across messages is kept (bounded by the row's
 * size) until the rest arrives, and each incoming message yields at most one
 * outgoing CopyData with the rows it completed.
 *
 * Text and CSV: fields are decoded (backslash escapes; CSV quoting), masked
 * columns get their method, the others the detectors, and changed fields are
 * encoded again the way COPY would. NULL stays NULL; the null method writes
 * the NULL marker.
 * Binary: there is no RowDescription and the client decodes each field by
 * the column's real type, so a masked column cannot become text. Masked
 * columns are sent as NULL, and any other field in which a detector fires is
 * sent as NULL as well.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mask/internal.h"

#define MAX_CARRY ((size_t)1 << 30) /* PostgreSQL's own limit on one message */

static const uint8_t bin_sig[11] = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', 0xff, '\r', '\n', 0};

typedef struct field {
    uint32_t raw_s, raw_e; /* in the raw row */
    uint32_t off, len;     /* decoded value, in the scanned buffer */
    bool null;
} field_t;

struct mask_copy {
    mask_plan_t *plan;
    mask_rules_t *rules;
    mask_copy_fmt_t fmt;
    char delim, quote, escape;
    char *null_str;
    size_t null_len;
    bool header_pending, bin_header_pending, ended;
    uint16_t ncols;
    const mask_method_t **m;
    buf_t carry, outp, dec, enc, row;
    field_t *f;
    size_t capf;
    uint64_t rows, rows_changed;
};

int mask_copy_new(const mask_plan_t *p, const uint8_t *copyout, size_t len, mask_copy_t **out,
                  char *err, size_t errsz)
{
    pgw_copy_response_t cr;
    *out = NULL;
    if (pgw_read_copy_response(copyout, len, &cr) < 0) {
        snprintf(err, errsz, "bulwark: malformed CopyOutResponse");
        return -1;
    }
    if (p->kind != MASK_STMT_COPY_OUT) {
        snprintf(err, errsz, "bulwark: COPY output of this statement cannot be masked");
        return -1;
    }
    if (p->copy.refusal) {
        snprintf(err, errsz, "%s", p->copy.refusal);
        return -1;
    }
    if ((cr.overall == 1) != (p->copy.fmt == MASK_COPY_BINARY)) {
        snprintf(err, errsz, "bulwark: COPY format differs from the statement's");
        return -1;
    }
    mask_copy_t *c = calloc(1, sizeof(*c));
    if (!c || !(c->m = calloc(cr.cols.n ? cr.cols.n : 1, sizeof(*c->m))) ||
        !(c->null_str = strdup(p->copy.null_str ? p->copy.null_str : ""))) {
        mask_copy_free(c);
        snprintf(err, errsz, "out of memory");
        return -1;
    }
    c->plan = mask_plan_retain((mask_plan_t *)p);
    c->rules = p->rules;
    c->fmt = p->copy.fmt;
    c->delim = p->copy.delim;
    c->quote = p->copy.quote;
    c->escape = p->copy.escape;
    c->null_len = strlen(c->null_str);
    c->header_pending = p->copy.header && c->fmt != MASK_COPY_BINARY;
    c->bin_header_pending = c->fmt == MASK_COPY_BINARY;
    c->ncols = cr.cols.n;
    mask_plan_bind(p, cr.cols.n, c->m, NULL, NULL);
    buf_init(&c->carry, 0);
    buf_init(&c->outp, 0);
    buf_init(&c->dec, 0);
    buf_init(&c->enc, 0);
    buf_init(&c->row, 0);
    *out = c;
    return 0;
}

void mask_copy_free(mask_copy_t *c)
{
    if (!c)
        return;
    mask_plan_release(c->plan);
    free((void *)c->m);
    free(c->null_str);
    free(c->f);
    buf_free(&c->carry);
    buf_free(&c->outp);
    buf_free(&c->dec);
    buf_free(&c->enc);
    buf_free(&c->row);
    free(c);
}

/* ---- text and CSV ---- */

/* End of the row starting at p (index just past its '\n'), or 0 if incomplete. */
static size_t row_end(const mask_copy_t *c, const uint8_t *p, size_t n)
{
    if (c->fmt == MASK_COPY_TEXT) {
        const uint8_t *nl = memchr(p, '\n', n);
        return nl ? (size_t)(nl - p) + 1 : 0;
    }
    bool inq = false;
    for (size_t i = 0; i < n; i++) {
        uint8_t ch = p[i];
        if (inq) {
            if (ch == (uint8_t)c->escape && c->escape != c->quote && i + 1 < n &&
                (p[i + 1] == (uint8_t)c->quote || p[i + 1] == (uint8_t)c->escape))
                i++;
            else if (ch == (uint8_t)c->quote)
                inq = false; /* a doubled quote re-enters at once */
        } else if (ch == (uint8_t)c->quote) {
            inq = true;
        } else if (ch == '\n') {
            return i + 1;
        }
    }
    return 0;
}

static uint8_t unescape(uint8_t ch)
{
    switch (ch) {
    case 'b':
        return '\b';
    case 'f':
        return '\f';
    case 'n':
        return '\n';
    case 'r':
        return '\r';
    case 't':
        return '\t';
    case 'v':
        return '\v';
    default:
        return ch;
    }
}

static bool add_field(mask_copy_t *c, size_t nf)
{
    if (nf < c->capf)
        return true;
    size_t cap = c->capf ? c->capf * 2 : 16;
    field_t *nv = realloc(c->f, cap * sizeof(*nv));
    if (!nv)
        return false;
    c->f = nv;
    c->capf = cap;
    return true;
}

static int hexval(uint8_t ch)
{
    return ch >= '0' && ch <= '9'                     ? ch - '0'
           : (ch | 0x20) >= 'a' && (ch | 0x20) <= 'f' ? (ch | 0x20) - 'a' + 10
                                                      : -1;
}

/* Splits row r[0..n) (without its newline) into fields, decoding each into
   c->dec. Returns the number of fields, -1 on allocation failure. */
static int split_text(mask_copy_t *c, const uint8_t *r, size_t n)
{
    buf_reset(&c->dec);
    size_t nf = 0, i = 0;
    for (;;) {
        if (!add_field(c, nf))
            return -1;
        field_t *f = &c->f[nf++];
        f->raw_s = (uint32_t)i;
        f->off = (uint32_t)c->dec.len;
        bool csvq = false;
        while (i < n) {
            uint8_t ch = r[i];
            if (c->fmt == MASK_COPY_TEXT) {
                if (ch == (uint8_t)c->delim)
                    break;
                if (ch == '\\' && i + 1 < n) {
                    uint8_t e = r[++i];
                    if (e >= '0' && e <= '7') {
                        int v = e - '0';
                        for (int k = 0; k < 2 && i + 1 < n && r[i + 1] >= '0' && r[i + 1] <= '7';
                             k++)
                            v = v * 8 + (r[++i] - '0');
                        buf_put_u8(&c->dec, (uint8_t)v);
                    } else if (e == 'x' && i + 1 < n && hexval(r[i + 1]) >= 0) {
                        int v = hexval(r[++i]);
                        if (i + 1 < n && hexval(r[i + 1]) >= 0)
                            v = v * 16 + hexval(r[++i]);
                        buf_put_u8(&c->dec, (uint8_t)v);
                    } else {
                        buf_put_u8(&c->dec, unescape(e));
                    }
                    i++;
                    continue;
                }
            } else {
                if (!csvq && ch == (uint8_t)c->delim)
                    break;
                if (csvq) {
                    if (ch == (uint8_t)c->escape && i + 1 < n &&
                        (r[i + 1] == (uint8_t)c->quote || r[i + 1] == (uint8_t)c->escape) &&
                        (c->escape != c->quote || r[i + 1] == (uint8_t)c->quote)) {
                        buf_put_u8(&c->dec, r[i + 1]);
                        i += 2;
                        continue;
                    }
                    if (ch == (uint8_t)c->quote) {
                        csvq = false;
                        i++;
                        continue;
                    }
                } else if (ch == (uint8_t)c->quote) {
                    csvq = true;
                    i++;
                    continue;
                }
            }
            buf_put_u8(&c->dec, ch);
            i++;
        }
        f->raw_e = (uint32_t)i;
        f->len = (uint32_t)(c->dec.len - f->off);
        size_t rl = f->raw_e - f->raw_s;
        /* NULL: the marker exactly, unquoted (COPY FROM's rule; COPY TO never
           quotes a NULL). */
        f->null = rl == c->null_len && !memcmp(r + f->raw_s, c->null_str, rl);
        if (i >= n)
            break;
        i++; /* delimiter */
    }
    return c->dec.failed ? -1 : (int)nf;
}

static void enc_text(mask_copy_t *c, const uint8_t *v, size_t n, buf_t *o)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t ch = v[i];
        const char *e = ch == '\\'   ? "\\\\"
                        : ch == '\n' ? "\\n"
                        : ch == '\r' ? "\\r"
                        : ch == '\t' ? "\\t"
                        : ch == '\b' ? "\\b"
                        : ch == '\f' ? "\\f"
                        : ch == '\v' ? "\\v"
                                     : NULL;
        if (e)
            buf_append(o, e, 2);
        else if (ch == (uint8_t)c->delim) {
            buf_put_u8(o, '\\');
            buf_put_u8(o, ch);
        } else
            buf_put_u8(o, ch);
    }
}

static void enc_csv(mask_copy_t *c, const uint8_t *v, size_t n, buf_t *o)
{
    bool q = n == c->null_len && !memcmp(v, c->null_str, n);
    for (size_t i = 0; i < n && !q; i++)
        q = v[i] == (uint8_t)c->delim || v[i] == (uint8_t)c->quote || v[i] == '\n' || v[i] == '\r';
    if (!q) {
        buf_append(o, v, n);
        return;
    }
    buf_put_u8(o, (uint8_t)c->quote);
    for (size_t i = 0; i < n; i++) {
        if (v[i] == (uint8_t)c->quote || v[i] == (uint8_t)c->escape)
            buf_put_u8(o, (uint8_t)c->escape);
        buf_put_u8(o, v[i]);
    }
    buf_put_u8(o, (uint8_t)c->quote);
}

static void enc_value(mask_copy_t *c, const uint8_t *v, size_t n, buf_t *o)
{
    if (c->fmt == MASK_COPY_CSV)
        enc_csv(c, v, n, o);
    else
        enc_text(c, v, n, o);
}

/* Rewrites one text/CSV row (r[0..n) including its newline) into o when
   something changes; returns 1 changed, 0 unchanged, -1 error. */
static int text_row(mask_copy_t *c, mask_scratch_t *s, const uint8_t *r, size_t n, buf_t *o)
{
    int nf = split_text(c, r, n - 1);
    if (nf < 0)
        return -1;
    if ((size_t)nf != c->ncols)
        return -1;
    /* every field empty: nothing was decoded and the buffer may have no storage yet
       (NULL + 0 is undefined behaviour; found by fuzz_copy) */
    const uint8_t *dec = c->dec.data ? c->dec.data : (const uint8_t *)"";
    size_t nreg = 0;
    bool changed = false;
    if (!mask_scratch_regions(s, (size_t)nf))
        return -1;
    for (int i = 0; i < nf; i++) {
        if (c->f[i].null)
            continue;
        if (c->m[i])
            changed = true;
        else if (c->f[i].len) {
            s->regions[nreg] = (mask_region_t){c->f[i].off, c->f[i].off + c->f[i].len};
            s->region_col[nreg++] = (uint32_t)i;
        }
    }
    int nsp = nreg ? mask_detect(c->rules, s, dec, c->dec.len, s->regions, nreg) : 0;
    if (nsp < 0)
        return -1;
    if (!changed && !nsp)
        return 0;
    size_t k = 0;
    for (int i = 0; i < nf; i++) {
        const field_t *f = &c->f[i];
        if (i)
            buf_put_u8(o, (uint8_t)c->delim);
        size_t k0 = k;
        while (k < (size_t)nsp && s->region_col[s->spans[k].region] == (uint32_t)i)
            k++;
        if (f->null || (!c->m[i] && k == k0)) {
            buf_append(o, r + f->raw_s, f->raw_e - f->raw_s);
            continue;
        }
        buf_reset(&c->enc);
        bool isnull;
        if (c->m[i])
            isnull = mask_method_apply(c->rules, s, c->m[i], dec + f->off, f->len, &c->enc) == 1;
        else if ((isnull = mask_spans_null(c->rules, s->spans + k0, k - k0)) == false)
            mask_apply_spans(c->rules, s, dec + f->off, f->len, s->spans + k0, k - k0, f->off,
                             &c->enc);
        if (isnull)
            buf_append(o, c->null_str, c->null_len);
        else
            enc_value(c, c->enc.data, c->enc.len, o);
    }
    buf_put_u8(o, '\n');
    return o->failed || c->enc.failed ? -1 : 1;
}

/* ---- binary ---- */

/* Length of the next binary unit at p (header, tuple or trailer), 0 if
   incomplete, -1 if malformed. */
static long bin_unit(mask_copy_t *c, const uint8_t *p, size_t n)
{
    if (c->bin_header_pending) {
        if (n < 19)
            return 0;
        if (memcmp(p, bin_sig, 11))
            return -1;
        uint32_t ext = rd_u32(p + 15);
        if (ext > (1u << 20))
            return -1;
        return n < 19 + (size_t)ext ? 0 : (long)(19 + ext);
    }
    if (n < 2)
        return 0;
    int16_t nf = (int16_t)rd_u16(p);
    if (nf == -1)
        return 2;
    if (nf < 0 || nf != (int16_t)c->ncols)
        return -1;
    size_t i = 2;
    for (int k = 0; k < nf; k++) {
        if (n < i + 4)
            return 0;
        int32_t l = (int32_t)rd_u32(p + i);
        i += 4;
        if (l < -1)
            return -1;
        if (l > 0) {
            if ((size_t)l > MAX_CARRY)
                return -1;
            if (n < i + (size_t)l)
                return 0;
            i += (size_t)l;
        }
    }
    return (long)i;
}

static int bin_tuple(mask_copy_t *c, mask_scratch_t *s, const uint8_t *p, size_t n, buf_t *o)
{
    if (n == 2)
        return 0; /* trailer */
    size_t nf = c->ncols, i = 2, nreg = 0;
    if (!add_field(c, nf ? nf - 1 : 0))
        return -1;
    if (!mask_scratch_regions(s, nf))
        return -1;
    bool changed = false;
    for (size_t k = 0; k < nf; k++) {
        int32_t l = (int32_t)rd_u32(p + i);
        c->f[k].raw_s = (uint32_t)i;
        i += 4;
        c->f[k].off = (uint32_t)i;
        c->f[k].null = l < 0;
        c->f[k].len = l > 0 ? (uint32_t)l : 0;
        i += l > 0 ? (size_t)l : 0;
        c->f[k].raw_e = (uint32_t)i;
        if (l >= 0 && c->m[k])
            changed = true;
        else if (l > 0) {
            s->regions[nreg] = (mask_region_t){c->f[k].off, c->f[k].off + (uint32_t)l};
            s->region_col[nreg++] = (uint32_t)k;
        }
    }
    int nsp = nreg ? mask_detect(c->rules, s, p, n, s->regions, nreg) : 0;
    if (nsp < 0)
        return -1;
    if (!changed && !nsp)
        return 0;
    buf_append(o, p, 2);
    size_t sp = 0;
    for (size_t k = 0; k < nf; k++) {
        bool hit = false;
        while (sp < (size_t)nsp && s->region_col[s->spans[sp].region] == k) {
            hit = true;
            sp++;
        }
        if ((c->m[k] && !c->f[k].null) || hit)
            pgw_put_value(o, NULL, -1);
        else
            buf_append(o, p + c->f[k].raw_s, c->f[k].raw_e - c->f[k].raw_s);
    }
    return o->failed ? -1 : 1;
}

/* ---- stream ---- */

/* Processes complete units of p[0..n); returns the bytes consumed, -1 on
   error. Rewritten rows go to c->outp; *changed tells whether any did (in
   which case c->outp holds every processed byte, rewritten or not). */
static long process(mask_copy_t *c, mask_scratch_t *s, const uint8_t *p, size_t n, bool *changed)
{
    size_t pos = 0;
    while (pos < n && !c->ended) {
        size_t u;
        int rc = 0;
        buf_reset(&c->row);
        if (c->fmt == MASK_COPY_BINARY) {
            long l = bin_unit(c, p + pos, n - pos);
            if (l < 0)
                return -1;
            if (l == 0)
                break;
            u = (size_t)l;
            if (c->bin_header_pending)
                c->bin_header_pending = false;
            else if (u == 2 && (int16_t)rd_u16(p + pos) == -1)
                c->ended = true;
            else {
                c->rows++;
                rc = bin_tuple(c, s, p + pos, u, &c->row);
            }
        } else {
            u = row_end(c, p + pos, n - pos);
            if (!u)
                break;
            if (c->header_pending) {
                c->header_pending = false;
            } else {
                c->rows++;
                rc = text_row(c, s, p + pos, u, &c->row);
            }
        }
        if (rc < 0)
            return -1;
        if (rc == 1 && !*changed) {
            *changed = true;
            buf_reset(&c->outp);
            buf_append(&c->outp, p, pos);
        }
        if (rc == 1)
            c->rows_changed++;
        if (*changed) {
            if (rc == 1)
                buf_append(&c->outp, c->row.data, c->row.len);
            else
                buf_append(&c->outp, p + pos, u);
        }
        pos += u;
    }
    return c->outp.failed || c->row.failed ? -1 : (long)pos;
}

int mask_copy_data(mask_copy_t *c, mask_scratch_t *s, const uint8_t *data, size_t len, buf_t *out)
{
    bool changed = false;
    if (buf_unread(&c->carry) == 0) {
        long used = process(c, s, data, len, &changed);
        if (used < 0)
            return -1;
        if ((size_t)used == len && !changed)
            return 0;
        if (!changed) {
            buf_reset(&c->outp);
            buf_append(&c->outp, data, (size_t)used);
        }
        if ((size_t)used < len)
            buf_append(&c->carry, data + used, len - (size_t)used);
    } else {
        if (buf_unread(&c->carry) + len > MAX_CARRY)
            return -1;
        buf_append(&c->carry, data, len);
        long used = process(c, s, buf_head(&c->carry), buf_unread(&c->carry), &changed);
        if (used < 0)
            return -1;
        if (!changed) {
            buf_reset(&c->outp);
            buf_append(&c->outp, buf_head(&c->carry), (size_t)used);
        }
        buf_consume(&c->carry, (size_t)used);
    }
    if (c->carry.failed || c->outp.failed)
        return -1;
    if (c->outp.len)
        pgw_write_copy_data(out, c->outp.data, c->outp.len);
    buf_reset(&c->outp);
    return out->failed ? -1 : 1;
}

int mask_copy_done(mask_copy_t *c, buf_t *out)
{
    (void)out;
    return buf_unread(&c->carry) ? -1 : 0;
}
