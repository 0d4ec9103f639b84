/*
 * Masking methods (SPEC 5.3) over one value. Values are UTF-8 text (the
 * gateway pins client_encoding to UTF8); "characters" are code points, and a
 * byte that does not start a valid sequence counts as one character so that
 * invalid input can never make a method keep more than it should.
 *
 * NULL stays NULL under every method, "fixed" included: a NULL carries no
 * value, and turning it into the fixed text would claim data that is not
 * there. The empty string is a value: redact and hash mask it, partial keeps
 * nothing of it.
 */
#include <string.h>

#include "mask/internal.h"

static size_t utf8_step(const uint8_t *p, size_t n)
{
    uint8_t c = p[0];
    size_t len = c < 0x80             ? 1
                 : (c & 0xe0) == 0xc0 ? 2
                 : (c & 0xf0) == 0xe0 ? 3
                 : (c & 0xf8) == 0xf0 ? 4
                                      : 1;
    if (len > n)
        return 1;
    for (size_t i = 1; i < len; i++)
        if ((p[i] & 0xc0) != 0x80)
            return 1;
    return len;
}

size_t mask_utf8_len(const uint8_t *p, size_t n)
{
    size_t chars = 0;
    for (size_t i = 0; i < n; chars++) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        i += utf8_step(p + i, n - i);
    }
    return chars;
}

static void put_stars(buf_t *out, size_t n)
{
    if (!n || !buf_reserve(out, n))
        return;
    memset(out->data + out->len, '*', n);
    out->len += n;
}

static void partial(const mask_method_t *m, const uint8_t *v, size_t n, buf_t *out)
{
    size_t chars = mask_utf8_len(v, n);
    size_t kf = (size_t)m->keep_first, kl = (size_t)m->keep_last;
    if (chars <= kf + kl) {
        put_stars(out, chars);
        return;
    }
    /* byte offsets of the end of the first kf characters and the start of the last kl */
    size_t i = 0, c = 0, head = 0, tail = n;
    for (; i < n; c++) {
        if (c == kf)
            head = i;
        if (c == chars - kl) {
            tail = i;
            break;
        }
        i += utf8_step(v + i, n - i);
    }
    if (kf == 0)
        head = 0;
    buf_append(out, v, head);
    put_stars(out, chars - kf - kl);
    buf_append(out, v + tail, n - tail);
}

static void email(const uint8_t *v, size_t n, buf_t *out)
{
    const uint8_t *at = n ? memrchr(v, '@', n) : NULL;
    size_t dlen = at ? n - (size_t)(at - v) - 1 : 0;
    if (!at || !dlen) {
        buf_append(out, MASK_REDACTED, 4);
        return;
    }
    size_t local = (size_t)(at - v);
    if (local)
        buf_append(out, v, utf8_step(v, local));
    buf_append(out, "***@", 4);
    buf_append(out, at + 1, dlen);
}

void mask_hmac_hex(const mask_rules_t *r, mask_scratch_t *s, const uint8_t *v, size_t n,
                   char hex[65])
{
    static const char digits[] = "0123456789abcdef";
    uint8_t in[32], mac[32];
    unsigned len = 0;
    bool ok = r->hmac_inner && EVP_MD_CTX_copy_ex(s->md, r->hmac_inner) &&
              EVP_DigestUpdate(s->md, v, n) && EVP_DigestFinal_ex(s->md, in, &len) &&
              EVP_MD_CTX_copy_ex(s->md, r->hmac_outer) && EVP_DigestUpdate(s->md, in, 32) &&
              EVP_DigestFinal_ex(s->md, mac, &len);
    if (!ok) {
        /* Cannot happen with a compiled key; never fall back to the value. */
        memset(hex, '*', 64);
        hex[64] = 0;
        return;
    }
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = digits[mac[i] >> 4];
        hex[2 * i + 1] = digits[mac[i] & 15];
    }
    hex[64] = 0;
}

int mask_method_apply(const mask_rules_t *r, mask_scratch_t *s, const mask_method_t *m,
                      const uint8_t *v, size_t n, buf_t *out)
{
    char hex[65];
    switch (m->kind) {
    case MASK_M_NULL:
        return 1;
    case MASK_M_PARTIAL:
        partial(m, v, n, out);
        return 0;
    case MASK_M_EMAIL:
        email(v, n, out);
        return 0;
    case MASK_M_HASH:
        mask_hmac_hex(r, s, v, n, hex);
        buf_append(out, hex, 64);
        return 0;
    case MASK_M_FIXED:
        buf_append(out, m->value, m->value_len);
        return 0;
    case MASK_M_NONE: /* callers never ask; mask anyway */
    case MASK_M_REDACT:
    default:
        buf_append(out, MASK_REDACTED, 4);
        return 0;
    }
}

int mask_method_apply_opaque(const mask_rules_t *r, mask_scratch_t *s, const mask_method_t *m,
                             const uint8_t *v, size_t n, buf_t *out)
{
    if (m->kind == MASK_M_PARTIAL || m->kind == MASK_M_EMAIL) {
        buf_append(out, MASK_REDACTED, 4);
        return 0;
    }
    return mask_method_apply(r, s, m, v, n, out);
}

bool mask_spans_null(const mask_rules_t *r, const mask_span_t *spans, size_t nspans)
{
    for (size_t i = 0; i < nspans; i++)
        if (mask_det_method(r, spans[i].det)->kind == MASK_M_NULL)
            return true;
    return false;
}

void mask_apply_spans(const mask_rules_t *r, mask_scratch_t *s, const uint8_t *v, size_t n,
                      const mask_span_t *spans, size_t nspans, uint32_t off, buf_t *out)
{
    static const mask_method_t redact = {.kind = MASK_M_REDACT};
    size_t pos = 0;
    for (size_t i = 0; i < nspans; i++) {
        size_t a = spans[i].start - off, b = spans[i].end - off;
        if (a < pos || b > n || a > b)
            continue; /* cannot happen: spans are sorted, merged and inside the value */
        buf_append(out, v + pos, a - pos);
        const mask_method_t *m = mask_det_method(r, spans[i].det);
        if (m->kind == MASK_M_NULL)
            m = &redact;
        (void)mask_method_apply(r, s, m, v + a, b - a, out);
        pos = b;
    }
    buf_append(out, v + pos, n - pos);
}
