/*
 * glob — the wildcard patterns of policy files (identities' `sub`, rules'
 * `relations` and `functions`).
 *
 *   *   any sequence of characters, including none, '.', '/' and '*'
 *   ?   exactly one character (one UTF-8 sequence, not one byte)
 *
 * Every other character matches itself, case-sensitively; there is no escape
 * and no character class. Matching time is O(len(pattern) * len(subject)) at
 * worst: a hostile subject cannot make it blow up.
 */
#ifndef BULWARK_UTIL_GLOB_H
#define BULWARK_UTIL_GLOB_H

#include <stdbool.h>

bool glob_match(const char *pattern, const char *subject);
/* True if the pattern contains a wildcard at all. */
bool glob_has_wildcard(const char *pattern);

#endif
