/*
 * Private to the config module (src/config.c, the files under src/config/); everyone else
 * includes only config.h.
 *
 * cfgw_t walks one JSON document and reports errors as "FILE: path: reason".
 * The path grows and shrinks as the walker descends (cfgw_key/cfgw_idx return
 * a mark, cfgw_pop restores it). Getters come in two shapes: cfgw_v_* check a
 * value at the current path; cfgw_* (keyed) fetch obj[key], report a missing
 * required key, and check the value at path.key. Keyed getters return
 * 1 = present and valid, 0 = absent (or null for an optional string),
 * -1 = error (already reported).
 */
#ifndef BULWARK_CONFIG_INTERNAL_H
#define BULWARK_CONFIG_INTERNAL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "config.h"

#define CFG_MAX_FILE (4u << 20)    /* bulwark.json and policy files */
#define CFG_MAX_SECRET (64u << 10) /* secret and password files */
#define CFG_MAX_NAME 63            /* role and target names (PostgreSQL NAMEDATALEN - 1) */

typedef struct cfg_path {
    char s[512];
    size_t len;
} cfg_path_t;

/* Append ".key" (or `["key"]` when the key is not identifier-like) / "[i]". */
size_t cfg_path_key(cfg_path_t *p, const char *key);
size_t cfg_path_idx(cfg_path_t *p, size_t i);
void cfg_path_pop(cfg_path_t *p, size_t mark);

typedef struct cfgw {
    cfg_errors_t *errs;
    const char *file; /* as shown in messages */
    cfg_path_t path;
    size_t n_err; /* errors this walker reported */
} cfgw_t;

enum {
    CFGW_REQ = 1,      /* a missing key is an error */
    CFGW_EMPTY_OK = 2, /* strings: "" is acceptable */
    CFGW_NONEMPTY = 4, /* arrays: [] is an error */
};

void cfg_errors_addf(cfg_errors_t *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cfgw_init(cfgw_t *w, cfg_errors_t *errs, const char *file);
size_t cfgw_key(cfgw_t *w, const char *key);
size_t cfgw_idx(cfgw_t *w, size_t i);
void cfgw_pop(cfgw_t *w, size_t mark);
/* Report at the current path. */
void cfgw_err(cfgw_t *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Report at path.key. */
void cfgw_err_at(cfgw_t *w, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Quote a configured (non-secret) value for a message: escaped, at most ~60 characters. */
const char *cfg_q(char *out, size_t outsz, const char *s);

/* Case-sensitive member lookup. */
const cJSON *cfgw_get(const cJSON *obj, const char *key);
/* v must be an object whose keys are all in `allowed` (NULL-terminated);
 * unknown keys are reported (with a "did you mean" hint). False only if v is
 * not an object. */
bool cfgw_object(cfgw_t *w, const cJSON *v, const char *const *allowed);

bool cfgw_v_str(cfgw_t *w, const cJSON *v, unsigned flags);
bool cfgw_v_int(cfgw_t *w, const cJSON *v, int64_t min, int64_t max, int64_t *out);
bool cfgw_v_enum(cfgw_t *w, const cJSON *v, const char *noun, const char *const *names, int *out);

int cfgw_str(cfgw_t *w, const cJSON *obj, const char *key, unsigned flags, const char **out);
int cfgw_bool(cfgw_t *w, const cJSON *obj, const char *key, unsigned flags, bool *out);
int cfgw_int(cfgw_t *w, const cJSON *obj, const char *key, unsigned flags, int64_t min, int64_t max,
             int64_t *out);
int cfgw_dur(cfgw_t *w, const cJSON *obj, const char *key, unsigned flags, int64_t min_ms,
             int64_t max_ms, int64_t *out);
int cfgw_size(cfgw_t *w, const cJSON *obj, const char *key, unsigned flags, uint64_t min,
              uint64_t max, uint64_t *out);
int cfgw_enum(cfgw_t *w, const cJSON *obj, const char *key, unsigned flags, const char *noun,
              const char *const *names, int *out);
int cfgw_array(cfgw_t *w, const cJSON *obj, const char *key, unsigned flags, const cJSON **out);
int cfgw_objval(cfgw_t *w, const cJSON *obj, const char *key, unsigned flags, const cJSON **out);

/* strdup that reports "out of memory" through the walker; NULL in.. NULL out. */
char *cfgw_strdup(cfgw_t *w, const char *s);

/* dir of a file path as given ("" when it has no '/'), and dir + rel unless
 * rel is absolute or dir is "". Both malloc'd; NULL on allocation failure. */
char *cfg_dirname(const char *path);
char *cfg_join(const char *dir, const char *rel);

/* Read a whole file (at most max bytes) with a NUL appended; -1 with why. */
int cfg_read_file(const char *path, size_t max, char **out, size_t *len, char *why, size_t whysz);

/* Read and strictly parse a JSON file; errors reported as "FILE: ...". */
cJSON *cfgw_load_json(cfgw_t *w, const char *path);

typedef struct cfg_refs cfg_refs_t;
cfg_refs_t *cfg_refs_new(void);
void cfg_refs_free(cfg_refs_t *r);
/* Append the roles of one policy file to c->roles; returns the number of
 * errors reported. Identities' iss and upstream targets are checked against
 * the config only when that section loaded without error (no cascades). */
size_t cfg_policy_load(cfg_t *c, cfg_errors_t *errs, const char *file, bool check_issuers,
                       bool check_targets, cfg_refs_t *refs);
/* After every file: approvers must name roles that exist; returns errors reported. */
size_t cfg_policy_check_refs(const cfg_t *c, cfg_errors_t *errs, const cfg_refs_t *refs);
void cfg_role_free(cfg_role_t *r);

#endif
