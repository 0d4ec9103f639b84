/* The config walker: paths, error messages, typed getters, strict JSON, files. */
#include "config/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "util/dur.h"

/* ---- errors ---- */

void cfg_errors_addf(cfg_errors_t *e, const char *fmt, ...)
{
    if (!e)
        return;
    char *msg = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&msg, fmt, ap);
    va_end(ap);
    char **grown = realloc(e->msgs, (e->n + 1) * sizeof(*grown));
    if (!grown) {
        if (n >= 0)
            free(msg);
        return;
    }
    e->msgs = grown;
    e->msgs[e->n++] = n >= 0 ? msg : NULL;
}

void cfg_errors_free(cfg_errors_t *e)
{
    if (!e)
        return;
    for (size_t i = 0; i < e->n; i++)
        free(e->msgs[i]);
    free(e->msgs);
    e->msgs = NULL;
    e->n = 0;
}

/* ---- paths ---- */

static bool ident_like(const char *k)
{
    if (!*k)
        return false;
    for (const char *p = k; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '-'))
            return false;
    return true;
}

static void path_appendf(cfg_path_t *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void path_appendf(cfg_path_t *p, const char *fmt, ...)
{
    size_t room = sizeof(p->s) - p->len;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(p->s + p->len, room, fmt, ap);
    va_end(ap);
    if (n < 0)
        p->s[p->len] = 0;
    else
        p->len = (size_t)n < room ? p->len + (size_t)n : sizeof(p->s) - 1;
}

size_t cfg_path_key(cfg_path_t *p, const char *key)
{
    size_t mark = p->len;
    if (ident_like(key)) {
        path_appendf(p, "%s%s", p->len ? "." : "", key);
    } else {
        char q[96];
        path_appendf(p, "[%s]", cfg_q(q, sizeof(q), key));
    }
    return mark;
}

size_t cfg_path_idx(cfg_path_t *p, size_t i)
{
    size_t mark = p->len;
    path_appendf(p, "[%zu]", i);
    return mark;
}

void cfg_path_pop(cfg_path_t *p, size_t mark)
{
    p->len = mark;
    p->s[mark] = 0;
}

const char *cfg_q(char *out, size_t outsz, const char *s)
{
    size_t o = 0, max = outsz < 72 ? outsz : 72;
    if (max < 8) {
        if (outsz)
            out[0] = 0;
        return out;
    }
    out[o++] = '"';
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (o + 6 >= max) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            out[o++] = '?';
        } else {
            out[o++] = (char)c;
        }
    }
    out[o++] = '"';
    out[o] = 0;
    return out;
}

/* ---- the walker ---- */

void cfgw_init(cfgw_t *w, cfg_errors_t *errs, const char *file)
{
    memset(w, 0, sizeof(*w));
    w->errs = errs;
    w->file = file;
}

size_t cfgw_key(cfgw_t *w, const char *key)
{
    return cfg_path_key(&w->path, key);
}

size_t cfgw_idx(cfgw_t *w, size_t i)
{
    return cfg_path_idx(&w->path, i);
}

void cfgw_pop(cfgw_t *w, size_t mark)
{
    cfg_path_pop(&w->path, mark);
}

static void cfgw_verr(cfgw_t *w, const char *fmt, va_list ap)
{
    char reason[512];
    vsnprintf(reason, sizeof(reason), fmt, ap);
    w->n_err++;
    if (w->path.len)
        cfg_errors_addf(w->errs, "%s: %s: %s", w->file, w->path.s, reason);
    else
        cfg_errors_addf(w->errs, "%s: %s", w->file, reason);
}

void cfgw_err(cfgw_t *w, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cfgw_verr(w, fmt, ap);
    va_end(ap);
}

void cfgw_err_at(cfgw_t *w, const char *key, const char *fmt, ...)
{
    size_t m = cfgw_key(w, key);
    va_list ap;
    va_start(ap, fmt);
    cfgw_verr(w, fmt, ap);
    va_end(ap);
    cfgw_pop(w, m);
}

char *cfgw_strdup(cfgw_t *w, const char *s)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        cfgw_err(w, "out of memory");
    return d;
}

const cJSON *cfgw_get(const cJSON *obj, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(obj, key);
}

/* Edit distance, for "did you mean"; keys are short. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 40 || lb > 40)
        return SIZE_MAX;
    size_t row[41];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (row[j] + 1 < best)
                best = row[j] + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

bool cfgw_object(cfgw_t *w, const cJSON *v, const char *const *allowed)
{
    if (!cJSON_IsObject(v)) {
        cfgw_err(w, "must be an object");
        return false;
    }
    const cJSON *m;
    cJSON_ArrayForEach(m, v)
    {
        const char *best = NULL;
        size_t best_d = SIZE_MAX;
        bool known = false;
        for (size_t i = 0; allowed[i]; i++) {
            if (!strcmp(m->string, allowed[i])) {
                known = true;
                break;
            }
            size_t d = edit_distance(m->string, allowed[i]);
            if (d < best_d) {
                best_d = d;
                best = allowed[i];
            }
        }
        if (known)
            continue;
        size_t len = strlen(m->string);
        if (best && best_d <= 2 && best_d < len)
            cfgw_err_at(w, m->string, "unknown key (did you mean \"%s\"?)", best);
        else
            cfgw_err_at(w, m->string, "unknown key");
    }
    return true;
}

/* ---- typed values at the current path ---- */

bool cfgw_v_str(cfgw_t *w, const cJSON *v, unsigned flags)
{
    if (!cJSON_IsString(v)) {
        cfgw_err(w, "must be a string");
        return false;
    }
    if (!(flags & CFGW_EMPTY_OK) && !*v->valuestring) {
        cfgw_err(w, "must not be empty");
        return false;
    }
    return true;
}

static bool json_int(const cJSON *v, int64_t *out)
{
    if (!cJSON_IsNumber(v))
        return false;
    double d = v->valuedouble;
    /* 2^63 is exactly representable; anything at or past it is out of range */
    if (!isfinite(d) || d != trunc(d) || d >= 9223372036854775808.0 || d < -9223372036854775808.0)
        return false;
    *out = (int64_t)d;
    return true;
}

bool cfgw_v_int(cfgw_t *w, const cJSON *v, int64_t min, int64_t max, int64_t *out)
{
    int64_t i;
    if (!json_int(v, &i) || i < min || i > max) {
        cfgw_err(w, "must be an integer %" PRId64 "-%" PRId64, min, max);
        return false;
    }
    if (out)
        *out = i;
    return true;
}

/* `"a", "b" or "c"` */
static void enum_list(char *out, size_t outsz, const char *const *names)
{
    size_t o = 0, n = 0;
    while (names[n])
        n++;
    out[0] = 0;
    for (size_t i = 0; i < n && o < outsz; i++) {
        const char *sep = i == 0 ? "" : i + 1 == n ? " or " : ", ";
        int k = snprintf(out + o, outsz - o, "%s\"%s\"", sep, names[i]);
        if (k < 0)
            break;
        o += (size_t)k;
    }
}

bool cfgw_v_enum(cfgw_t *w, const cJSON *v, const char *noun, const char *const *names, int *out)
{
    if (!cJSON_IsString(v)) {
        cfgw_err(w, "must be a string");
        return false;
    }
    size_t n = 0;
    for (; names[n]; n++) {
        if (!strcmp(v->valuestring, names[n])) {
            if (out)
                *out = (int)n;
            return true;
        }
    }
    char q[96];
    cfg_q(q, sizeof(q), v->valuestring);
    if (n <= 8) {
        char list[256];
        enum_list(list, sizeof(list), names);
        cfgw_err(w, "unknown %s %s (expected %s)", noun, q, list);
    } else {
        cfgw_err(w, "unknown %s %s", noun, q);
    }
    return false;
}

/* ---- keyed getters ---- */

/* Common prologue: absent / null handling. Returns the value or NULL with *rc set. */
static const cJSON *keyed(cfgw_t *w, const cJSON *obj, const char *key, unsigned flags,
                          bool null_is_absent, int *rc)
{
    const cJSON *v = cfgw_get(obj, key);
    if (!v || (null_is_absent && cJSON_IsNull(v) && !(flags & CFGW_REQ))) {
        if (flags & CFGW_REQ) {
            cfgw_err_at(w, key, "required key is missing");
            *rc = -1;
        } else {
            *rc = 0;
        }
        return NULL;
    }
    *rc = 1;
    return v;
}

int cfgw_str(cfgw_t *w, const cJSON *obj, const char *key, unsigned flags, const char **out)
{
    int rc;
    const cJSON *v = keyed(w, obj, key, flags, true, &rc);
    if (!v)
        return rc;
    size_t m = cfgw_key(w, key);
    bool ok = cfgw_v_str(w, v, flags);
    cfgw_pop(w, m);
    if (!ok)
        return -1;
    if (out)
        *out = v->valuestring;
    return 1;
}

int cfgw_bool(cfgw_t *w, const cJSON *obj, const char *key, unsigned flags, bool *out)
{
    int rc;
    const cJSON *v = keyed(w, obj, key, flags, false, &rc);
    if (!v)
        return rc;
    if (!cJSON_IsBool(v)) {
        cfgw_err_at(w, key, "must be true or false");
        return -1;
    }
    if (out)
        *out = cJSON_IsTrue(v);
    return 1;
}

int cfgw_int(cfgw_t *w, const cJSON *obj, const char *key, unsigned flags, int64_t min, int64_t max,
             int64_t *out)
{
    int rc;
    const cJSON *v = keyed(w, obj, key, flags, false, &rc);
    if (!v)
        return rc;
    size_t m = cfgw_key(w, key);
    bool ok = cfgw_v_int(w, v, min, max, out);
    cfgw_pop(w, m);
    return ok ? 1 : -1;
}

int cfgw_dur(cfgw_t *w, const cJSON *obj, const char *key, unsigned flags, int64_t min_ms,
             int64_t max_ms, int64_t *out)
{
    int rc;
    const cJSON *v = keyed(w, obj, key, flags, false, &rc);
    if (!v)
        return rc;
    int64_t ms;
    char b[32];
    if (!cJSON_IsString(v) || !dur_parse(v->valuestring, &ms)) {
        cfgw_err_at(w, key,
                    "must be a duration such as \"30s\" (a whole number and one unit: ms, s, m, "
                    "h, d)");
        return -1;
    }
    if (ms < min_ms) {
        if (min_ms == 1)
            cfgw_err_at(w, key, "must be more than 0");
        else
            cfgw_err_at(w, key, "must be at least %s", dur_format(min_ms, b, sizeof(b)));
        return -1;
    }
    if (ms > max_ms) {
        cfgw_err_at(w, key, "must be at most %s", dur_format(max_ms, b, sizeof(b)));
        return -1;
    }
    if (out)
        *out = ms;
    return 1;
}

int cfgw_size(cfgw_t *w, const cJSON *obj, const char *key, unsigned flags, uint64_t min,
              uint64_t max, uint64_t *out)
{
    int rc;
    const cJSON *v = keyed(w, obj, key, flags, false, &rc);
    if (!v)
        return rc;
    uint64_t n;
    char b[32];
    if (!cJSON_IsString(v) || !size_parse(v->valuestring, &n)) {
        cfgw_err_at(w, key,
                    "must be a size such as \"64KiB\" (a whole number and one unit: B, KiB, MiB, "
                    "GiB, TiB)");
        return -1;
    }
    if (n < min) {
        cfgw_err_at(w, key, "must be at least %s", size_format(min, b, sizeof(b)));
        return -1;
    }
    if (n > max) {
        cfgw_err_at(w, key, "must be at most %s", size_format(max, b, sizeof(b)));
        return -1;
    }
    if (out)
        *out = n;
    return 1;
}

int cfgw_enum(cfgw_t *w, const cJSON *obj, const char *key, unsigned flags, const char *noun,
              const char *const *names, int *out)
{
    int rc;
    const cJSON *v = keyed(w, obj, key, flags, false, &rc);
    if (!v)
        return rc;
    size_t m = cfgw_key(w, key);
    bool ok = cfgw_v_enum(w, v, noun, names, out);
    cfgw_pop(w, m);
    return ok ? 1 : -1;
}

int cfgw_array(cfgw_t *w, const cJSON *obj, const char *key, unsigned flags, const cJSON **out)
{
    int rc;
    const cJSON *v = keyed(w, obj, key, flags, false, &rc);
    if (!v)
        return rc;
    if (!cJSON_IsArray(v)) {
        cfgw_err_at(w, key, "must be an array");
        return -1;
    }
    if ((flags & CFGW_NONEMPTY) && !v->child) {
        cfgw_err_at(w, key, "must not be empty");
        return -1;
    }
    *out = v;
    return 1;
}

int cfgw_objval(cfgw_t *w, const cJSON *obj, const char *key, unsigned flags, const cJSON **out)
{
    int rc;
    const cJSON *v = keyed(w, obj, key, flags, false, &rc);
    if (!v)
        return rc;
    if (!cJSON_IsObject(v)) {
        cfgw_err_at(w, key, "must be an object");
        return -1;
    }
    *out = v;
    return 1;
}

/* ---- strict JSON ---- */

static void line_col(const char *text, size_t pos, size_t *line, size_t *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < pos; i++) {
        if (text[i] == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

/* Length of the valid UTF-8 sequence at p (at most n bytes), 0 if invalid
 * (overlong forms, surrogates and code points past U+10FFFF are invalid). */
static size_t utf8_valid(const unsigned char *p, size_t n)
{
    if (p[0] < 0x80)
        return 1;
    size_t len;
    uint32_t cp;
    if (p[0] >= 0xc2 && p[0] <= 0xdf) {
        len = 2;
        cp = p[0] & 0x1f;
    } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
        len = 3;
        cp = p[0] & 0x0f;
    } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        len = 4;
        cp = p[0] & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* NUL bytes, invalid UTF-8, and \u0000 inside strings; returns the offending
 * offset or SIZE_MAX if clean. */
static size_t scan_raw(const char *text, size_t len, const char **what)
{
    const unsigned char *t = (const unsigned char *)text;
    bool in_str = false;
    for (size_t i = 0; i < len;) {
        if (t[i] == 0) {
            *what = "NUL byte";
            return i;
        }
        size_t n = utf8_valid(t + i, len - i);
        if (!n) {
            *what = "invalid UTF-8";
            return i;
        }
        if (n > 1) {
            i += n;
            continue;
        }
        if (t[i] == '"') {
            in_str = !in_str;
        } else if (in_str && t[i] == '\\' && i + 1 < len) {
            if (t[i + 1] == 'u' && i + 6 <= len && !memcmp(t + i + 2, "0000", 4)) {
                *what = "\\u0000 in a string";
                return i;
            }
            i += 2; /* skip the escaped character, so \" does not end the string */
            continue;
        }
        i++;
    }
    return SIZE_MAX;
}

static int cmp_name(const void *a, const void *b)
{
    const cJSON *x = *(const cJSON *const *)a, *y = *(const cJSON *const *)b;
    return strcmp(x->string, y->string);
}

/* First duplicate member name anywhere under v; path set to it. */
static bool find_duplicate(const cJSON *v, cfg_path_t *path)
{
    if (cJSON_IsObject(v)) {
        size_t n = 0;
        const cJSON *m;
        cJSON_ArrayForEach(m, v) n++;
        if (n > 1) {
            const cJSON **sorted = malloc(n * sizeof(*sorted));
            if (!sorted)
                return false;
            size_t i = 0;
            cJSON_ArrayForEach(m, v) sorted[i++] = m;
            qsort(sorted, n, sizeof(*sorted), cmp_name);
            for (i = 1; i < n; i++) {
                if (!strcmp(sorted[i - 1]->string, sorted[i]->string)) {
                    cfg_path_key(path, sorted[i]->string);
                    free(sorted);
                    return true;
                }
            }
            free(sorted);
        }
        cJSON_ArrayForEach(m, v)
        {
            size_t mark = cfg_path_key(path, m->string);
            if (find_duplicate(m, path))
                return true;
            cfg_path_pop(path, mark);
        }
    } else if (cJSON_IsArray(v)) {
        size_t i = 0;
        const cJSON *m;
        cJSON_ArrayForEach(m, v)
        {
            size_t mark = cfg_path_idx(path, i++);
            if (find_duplicate(m, path))
                return true;
            cfg_path_pop(path, mark);
        }
    }
    return false;
}

cJSON *cfg_json_parse_strict(const char *text, size_t len, char *why, size_t whysz)
{
    size_t line, col;
    const char *what = NULL;
    size_t bad = scan_raw(text, len, &what);
    if (bad != SIZE_MAX) {
        line_col(text, bad, &line, &col);
        snprintf(why, whysz, "line %zu, column %zu: %s", line, col, what);
        return NULL;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, false);
    size_t pos = end && end >= text && end <= text + len ? (size_t)(end - text) : 0;
    if (root) {
        while (pos < len && strchr(" \t\r\n", text[pos]))
            pos++;
        if (pos != len) {
            cJSON_Delete(root);
            root = NULL;
        }
    }
    if (!root) {
        line_col(text, pos, &line, &col);
        snprintf(why, whysz, "line %zu, column %zu: invalid JSON", line, col);
        return NULL;
    }
    cfg_path_t path = {.len = 0};
    path.s[0] = 0;
    if (find_duplicate(root, &path)) {
        snprintf(why, whysz, "%s: duplicate key", path.s);
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

/* ---- files ---- */

char *cfg_dirname(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return strdup("");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

char *cfg_join(const char *dir, const char *rel)
{
    char *out = NULL;
    if (rel[0] == '/' || !dir[0])
        return strdup(rel);
    if (asprintf(&out, "%s%s%s", dir, dir[strlen(dir) - 1] == '/' ? "" : "/", rel) < 0)
        return NULL;
    return out;
}

int cfg_read_file(const char *path, size_t max, char **out, size_t *len, char *why, size_t whysz)
{
    why[0] = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, whysz, "%s", strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        snprintf(why, whysz, "%s", strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(why, whysz, "%s", S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file");
        close(fd);
        return -1;
    }
    char *b = malloc(max + 2);
    if (!b) {
        close(fd);
        snprintf(why, whysz, "out of memory");
        return -1;
    }
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, b + n, max + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(why, whysz, "%s", strerror(errno));
            break;
        }
        if (r == 0 || (n += (size_t)r) > max)
            break;
    }
    close(fd);
    if (n > max || why[0]) {
        if (n > max) {
            char sz[32];
            snprintf(why, whysz, "file is larger than %s", size_format(max, sz, sizeof(sz)));
        }
        OPENSSL_cleanse(b, max + 2);
        free(b);
        return -1;
    }
    b[n] = 0;
    *out = b;
    *len = n;
    return 0;
}

int cfg_read_secret_file(const char *path, uint8_t **out, size_t *len, char *why, size_t whysz)
{
    char *b;
    size_t n;
    why[0] = 0;
    if (cfg_read_file(path, CFG_MAX_SECRET, &b, &n, why, whysz) < 0)
        return -1;
    if (n && b[n - 1] == '\n') {
        n--;
        if (n && b[n - 1] == '\r')
            n--;
    }
    if (n == 0) {
        free(b);
        snprintf(why, whysz, "file is empty");
        return -1;
    }
    b[n] = 0;
    *out = (uint8_t *)b;
    *len = n;
    return 0;
}

cJSON *cfgw_load_json(cfgw_t *w, const char *path)
{
    char *text;
    size_t len;
    char why[256] = "";
    if (cfg_read_file(path, CFG_MAX_FILE, &text, &len, why, sizeof(why)) < 0) {
        cfgw_err(w, "cannot read: %s", why);
        return NULL;
    }
    cJSON *root = cfg_json_parse_strict(text, len, why, sizeof(why));
    free(text);
    if (!root)
        cfgw_err(w, "%s", why);
    return root;
}
