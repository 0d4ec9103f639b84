/*
 * buf — a growable byte buffer with a read cursor and a sticky failure flag.
 *
 *   data                 data+rpos            data+len          data+cap
 *   |--- consumed -------|--- unread bytes ----|--- free space ---|
 *
 * Writers append at len; readers take from rpos. A failed allocation or a
 * growth past `limit` (0 = unlimited) sets `failed`, after which appends are
 * no-ops: check it once after building a message (pgbouncer pktbuf idiom).
 */
#ifndef BULWARK_UTIL_BUF_H
#define BULWARK_UTIL_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct buf {
    uint8_t *data;
    size_t rpos;
    size_t len;
    size_t cap;
    size_t limit;
    bool failed;
} buf_t;

void buf_init(buf_t *b, size_t limit);
void buf_free(buf_t *b);
/* Drop all bytes; keeps the allocation. */
void buf_reset(buf_t *b);
/* Make room for `extra` more bytes at the end; false (and failed) if impossible. */
bool buf_reserve(buf_t *b, size_t extra);
void buf_append(buf_t *b, const void *p, size_t n);
void buf_put_u8(buf_t *b, uint8_t v);
void buf_put_u16(buf_t *b, uint16_t v);     /* network order */
void buf_put_u32(buf_t *b, uint32_t v);     /* network order */
void buf_put_cstr(buf_t *b, const char *s); /* with its NUL */
/* Overwrite 4 bytes at `off` with v in network order (length back-patching). */
void buf_patch_u32(buf_t *b, size_t off, uint32_t v);

static inline size_t buf_unread(const buf_t *b)
{
    return b->len - b->rpos;
}
static inline const uint8_t *buf_head(const buf_t *b)
{
    return b->data + b->rpos;
}
/* Mark n unread bytes consumed; resets to empty when all are consumed. */
void buf_consume(buf_t *b, size_t n);
/* Move unread bytes to the front so that free space is contiguous. */
void buf_compact(buf_t *b);

static inline uint32_t rd_u32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint16_t rd_u16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

#endif
