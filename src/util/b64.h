/*
 * b64 — base64 (RFC 4648 section 4, padded) and base64url (section 5,
 * unpadded, as JWS uses it).
 *
 * Decoding is strict, because a lenient decoder gives a forger more than one
 * spelling of the same token: B64_STD needs a multiple of 4 characters with
 * correct '=' padding; B64_URL refuses '=' entirely and lengths that are 1
 * mod 4; both refuse characters outside the alphabet (whitespace included) and
 * non-zero unused bits in the last character ("QR==" is not "QQ==").
 */
#ifndef BULWARK_UTIL_B64_H
#define BULWARK_UTIL_B64_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { B64_STD, B64_URL } b64_variant_t;

/* Characters b64_encode() writes for n bytes, without the NUL. */
size_t b64_encoded_len(size_t n, b64_variant_t v);
/* Bytes b64_decode() may write for len characters (an upper bound). */
size_t b64_decoded_maxlen(size_t len);

/* Encode into out (b64_encoded_len(n, v) + 1 bytes); NUL-terminates; returns the length. */
size_t b64_encode(char *out, const void *in, size_t n, b64_variant_t v);
/* Decode len characters into out (b64_decoded_maxlen(len) bytes); false if not valid. */
bool b64_decode(uint8_t *out, size_t *outlen, const char *in, size_t len, b64_variant_t v)
    __attribute__((warn_unused_result));

/* Allocating forms; NULL on invalid input or allocation failure. The decoded
 * buffer has an extra NUL after outlen bytes (convenient for JSON text). */
char *b64_encode_alloc(const void *in, size_t n, b64_variant_t v);
uint8_t *b64_decode_alloc(const char *in, size_t len, b64_variant_t v, size_t *outlen);

#endif
