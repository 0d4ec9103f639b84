#include "util/glob.h"

#include <stddef.h>
#include <string.h>

/* Length of the UTF-8 sequence starting at s (1 for stray or truncated bytes). */
static size_t utf8_len(const char *s)
{
    unsigned char c = (unsigned char)s[0];
    size_t n = c < 0xc0 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
    for (size_t i = 1; i < n; i++)
        if (((unsigned char)s[i] & 0xc0) != 0x80)
            return 1;
    return n;
}

/*
 * Greedy match with one backtrack point: on a mismatch, let the last '*'
 * swallow one more character and retry from just after it. Earlier stars
 * never need revisiting, which keeps this O(n * m).
 */
bool glob_match(const char *pattern, const char *subject)
{
    const char *p = pattern, *s = subject;
    const char *star_p = NULL, *star_s = NULL;
    if (!p || !s)
        return false;
    while (*s) {
        if (*p == '*') {
            while (*p == '*')
                p++;
            star_p = p;
            star_s = s;
            continue;
        }
        if (*p == '?') {
            p++;
            s += utf8_len(s);
            continue;
        }
        if (*p && *p == *s) {
            p++;
            s++;
            continue;
        }
        if (!star_p)
            return false;
        star_s += utf8_len(star_s);
        s = star_s;
        p = star_p;
    }
    while (*p == '*')
        p++;
    return *p == '\0';
}

bool glob_has_wildcard(const char *pattern)
{
    return pattern && strpbrk(pattern, "*?") != NULL;
}
