#include "util/b64.h"

#include <stdint.h>
#include <stdlib.h>

static const char alpha_std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char alpha_url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t b64_encoded_len(size_t n, b64_variant_t v)
{
    if (v == B64_STD)
        return (n + 2) / 3 * 4;
    return n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0);
}

size_t b64_decoded_maxlen(size_t len)
{
    return len / 4 * 3 + 3;
}

size_t b64_encode(char *out, const void *in, size_t n, b64_variant_t v)
{
    const char *a = v == B64_STD ? alpha_std : alpha_url;
    const uint8_t *p = in;
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t w = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = a[w >> 18];
        out[o++] = a[(w >> 12) & 63];
        out[o++] = a[(w >> 6) & 63];
        out[o++] = a[w & 63];
    }
    if (n - i == 1) {
        uint32_t w = (uint32_t)p[i] << 16;
        out[o++] = a[w >> 18];
        out[o++] = a[(w >> 12) & 63];
        if (v == B64_STD) {
            out[o++] = '=';
            out[o++] = '=';
        }
    } else if (n - i == 2) {
        uint32_t w = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        out[o++] = a[w >> 18];
        out[o++] = a[(w >> 12) & 63];
        out[o++] = a[(w >> 6) & 63];
        if (v == B64_STD)
            out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

/* 0-63, or -1 for anything outside the variant's alphabet ('=' included). */
static int sextet(char c, b64_variant_t v)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == (v == B64_STD ? '+' : '-'))
        return 62;
    if (c == (v == B64_STD ? '/' : '_'))
        return 63;
    return -1;
}

bool b64_decode(uint8_t *out, size_t *outlen, const char *in, size_t len, b64_variant_t v)
{
    if (v == B64_STD) {
        if (len % 4)
            return false;
        /* strip at most two '=' from the end; any other '=' fails sextet() */
        if (len && in[len - 1] == '=')
            len--;
        if (len && in[len - 1] == '=')
            len--;
    }
    if (len % 4 == 1)
        return false;
    size_t o = 0, i = 0;
    for (; i + 4 <= len; i += 4) {
        int a = sextet(in[i], v), b = sextet(in[i + 1], v);
        int c = sextet(in[i + 2], v), d = sextet(in[i + 3], v);
        if ((a | b | c | d) < 0)
            return false;
        uint32_t w = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
        out[o++] = (uint8_t)(w >> 16);
        out[o++] = (uint8_t)(w >> 8);
        out[o++] = (uint8_t)w;
    }
    size_t rest = len - i;
    if (rest) {
        int a = sextet(in[i], v), b = sextet(in[i + 1], v);
        int c = rest == 3 ? sextet(in[i + 2], v) : 0;
        if ((a | b | c) < 0)
            return false;
        uint32_t w = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6;
        /* the bits past the last whole byte must be zero (canonical form) */
        if (rest == 2 ? (w & 0xffff) : (w & 0xff))
            return false;
        out[o++] = (uint8_t)(w >> 16);
        if (rest == 3)
            out[o++] = (uint8_t)(w >> 8);
    }
    *outlen = o;
    return true;
}

char *b64_encode_alloc(const void *in, size_t n, b64_variant_t v)
{
    if (n > SIZE_MAX / 2)
        return NULL;
    char *out = malloc(b64_encoded_len(n, v) + 1);
    if (out)
        b64_encode(out, in, n, v);
    return out;
}

uint8_t *b64_decode_alloc(const char *in, size_t len, b64_variant_t v, size_t *outlen)
{
    uint8_t *out = malloc(b64_decoded_maxlen(len) + 1);
    if (!out)
        return NULL;
    size_t n = 0;
    if (!b64_decode(out, &n, in, len, v)) {
        free(out);
        return NULL;
    }
    out[n] = 0;
    *outlen = n;
    return out;
}
