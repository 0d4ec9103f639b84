#include "util/buf.h"

#include <stdlib.h>
#include <string.h>

void buf_init(buf_t *b, size_t limit)
{
    memset(b, 0, sizeof(*b));
    b->limit = limit;
}

void buf_free(buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->rpos = b->len = b->cap = 0;
}

void buf_reset(buf_t *b)
{
    b->rpos = b->len = 0;
    b->failed = false;
}

bool buf_reserve(buf_t *b, size_t extra)
{
    if (b->failed)
        return false;
    if (b->cap - b->len >= extra)
        return true;
    if (b->rpos > 0 && b->cap - (b->len - b->rpos) >= extra) {
        buf_compact(b);
        return true;
    }
    size_t need = b->len - b->rpos + extra;
    if (need < extra || (b->limit && need > b->limit)) {
        b->failed = true;
        return false;
    }
    size_t ncap = b->cap ? b->cap : 256;
    while (ncap < need)
        ncap *= 2;
    if (b->limit && ncap > b->limit)
        ncap = b->limit;
    buf_compact(b);
    uint8_t *nd = realloc(b->data, ncap);
    if (!nd) {
        b->failed = true;
        return false;
    }
    b->data = nd;
    b->cap = ncap;
    return true;
}

void buf_append(buf_t *b, const void *p, size_t n)
{
    if (n == 0 || !buf_reserve(b, n))
        return;
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

void buf_put_u8(buf_t *b, uint8_t v)
{
    buf_append(b, &v, 1);
}

void buf_put_u16(buf_t *b, uint16_t v)
{
    uint8_t x[2] = {(uint8_t)(v >> 8), (uint8_t)v};
    buf_append(b, x, 2);
}

void buf_put_u32(buf_t *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    buf_append(b, x, 4);
}

void buf_put_cstr(buf_t *b, const char *s)
{
    buf_append(b, s, strlen(s) + 1);
}

void buf_patch_u32(buf_t *b, size_t off, uint32_t v)
{
    if (b->failed || off + 4 > b->len)
        return;
    b->data[off] = (uint8_t)(v >> 24);
    b->data[off + 1] = (uint8_t)(v >> 16);
    b->data[off + 2] = (uint8_t)(v >> 8);
    b->data[off + 3] = (uint8_t)v;
}

void buf_consume(buf_t *b, size_t n)
{
    if (n > b->len - b->rpos)
        n = b->len - b->rpos;
    b->rpos += n;
    if (b->rpos == b->len)
        b->rpos = b->len = 0;
}

void buf_compact(buf_t *b)
{
    if (b->rpos == 0)
        return;
    memmove(b->data, b->data + b->rpos, b->len - b->rpos);
    b->len -= b->rpos;
    b->rpos = 0;
}
