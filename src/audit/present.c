/*
 * What people and SIEMs read: the sessions table, the replay transcript and
 * the JSON-lines export.
 *
 * Everything printed for a terminal goes through term_text(): an agent
 * controls statement texts and row values, and must not be able to move the
 * reviewer's cursor, recolour the screen or reverse the text direction, so
 * control characters (C0, C1, DEL) and bidirectional controls come out as
 * visible escapes, as psql prints them, and so does every byte that is not
 * part of well-formed UTF-8 (which a terminal might take for a C1 control).
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "audit/internal.h"
#include "util/b64.h"
#include "util/dur.h"

/* ---- display width and escaping ---- */

#define CP_INVALID 0x110000u /* a byte that does not start valid UTF-8 */

/* The code point at s[*i], advancing *i past it; CP_INVALID (advancing one byte)
 * for a byte that does not begin a well-formed UTF-8 sequence (stray or missing
 * continuation bytes, overlong forms, surrogates, past U+10FFFF): a store that
 * was written by someone else than the gateway may hold anything. */
static uint32_t next_cp(const unsigned char *s, size_t n, size_t *i)
{
    static const uint32_t min[] = {0, 0x80, 0x800, 0x10000};
    unsigned char c = s[*i];
    size_t need = c < 0x80             ? 0
                  : (c & 0xe0) == 0xc0 ? 1
                  : (c & 0xf0) == 0xe0 ? 2
                  : (c & 0xf8) == 0xf0 ? 3
                                       : 4;
    if (need == 0) {
        (*i)++;
        return c;
    }
    if (need == 4 || *i + need >= n) {
        (*i)++;
        return CP_INVALID;
    }
    uint32_t cp = need == 1 ? (c & 0x1fu) : need == 2 ? (c & 0x0fu) : (c & 0x07u);
    for (size_t k = 1; k <= need; k++) {
        if ((s[*i + k] & 0xc0) != 0x80) {
            (*i)++;
            return CP_INVALID;
        }
        cp = (cp << 6) | (s[*i + k] & 0x3fu);
    }
    if (cp < min[need] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
        (*i)++;
        return CP_INVALID;
    }
    *i += need + 1;
    return cp;
}

/* Columns a printable code point takes (Markus Kuhn's wcwidth, as psql uses). */
static int cp_width(uint32_t cp)
{
    if ((cp >= 0x0300 && cp <= 0x036f) || (cp >= 0x200b && cp <= 0x200f) ||
        (cp >= 0x20d0 && cp <= 0x20ff) || (cp >= 0xfe00 && cp <= 0xfe0f) ||
        (cp >= 0xfe20 && cp <= 0xfe2f))
        return 0;
    if (cp >= 0x1100 && (cp <= 0x115f || cp == 0x2329 || cp == 0x232a ||
                         (cp >= 0x2e80 && cp <= 0xa4cf && cp != 0x303f) ||
                         (cp >= 0xac00 && cp <= 0xd7a3) || (cp >= 0xf900 && cp <= 0xfaff) ||
                         (cp >= 0xfe10 && cp <= 0xfe19) || (cp >= 0xfe30 && cp <= 0xfe6f) ||
                         (cp >= 0xff00 && cp <= 0xff60) || (cp >= 0xffe0 && cp <= 0xffe6) ||
                         (cp >= 0x1f300 && cp <= 0x1f64f) || (cp >= 0x1f900 && cp <= 0x1f9ff) ||
                         (cp >= 0x20000 && cp <= 0x2fffd) || (cp >= 0x30000 && cp <= 0x3fffd)))
        return 2;
    return 1;
}

static bool cp_escaped(uint32_t cp)
{
    return cp < 0x20 || (cp >= 0x7f && cp < 0xa0) || (cp >= 0x202a && cp <= 0x202e) ||
           (cp >= 0x2066 && cp <= 0x2069) || cp == 0x200e || cp == 0x200f;
}

/* One display line of a cell: bytes [start, end) of the escaped text and its width. */
typedef struct line {
    size_t start, end;
    size_t width;
} line_t;

/* A cell (or any text) made printable, split into lines at '\n'. Tabs become
 * spaces to the next multiple of 8, '\r' becomes "\r", other controls "\xNN"
 * (C0, DEL) or "\uNNNN" (C1, bidi), as psql's aligned format does; a byte that is
 * not well-formed UTF-8 becomes "\xNN" too. */
typedef struct cell {
    buf_t text;
    line_t *lines;
    size_t nlines, width;
} cell_t;

static void cell_build(cell_t *c, const char *s, bool keep_tabs)
{
    memset(c, 0, sizeof(*c));
    buf_init(&c->text, 0);
    const unsigned char *u = (const unsigned char *)(s ? s : "");
    size_t n = strlen((const char *)u), i = 0, cap = 4, lw = 0, ls = 0;
    c->lines = malloc(cap * sizeof(*c->lines));
    if (!c->lines)
        return;
    for (;;) {
        if (i >= n || u[i] == '\n') {
            if (c->nlines == cap) {
                line_t *nl = realloc(c->lines, (cap *= 2) * sizeof(*nl));
                if (!nl)
                    return;
                c->lines = nl;
            }
            c->lines[c->nlines++] = (line_t){ls, c->text.len, lw};
            if (lw > c->width)
                c->width = lw;
            if (i >= n)
                break;
            i++;
            lw = 0;
            ls = c->text.len;
            continue;
        }
        size_t at = i;
        uint32_t cp = next_cp(u, n, &i);
        char esc[16];
        if (cp == '\t' && !keep_tabs) {
            do
                buf_put_u8(&c->text, ' ');
            while (++lw % 8);
        } else if (cp == '\t') {
            buf_put_u8(&c->text, '\t');
            lw += 8 - lw % 8;
        } else if (cp == '\r') {
            buf_append(&c->text, "\\r", 2);
            lw += 2;
        } else if (cp == CP_INVALID) {
            int k = snprintf(esc, sizeof(esc), "\\x%02X", (unsigned)u[at]);
            buf_append(&c->text, esc, (size_t)k);
            lw += (size_t)k;
        } else if (cp_escaped(cp)) {
            int k = cp < 0x80 ? snprintf(esc, sizeof(esc), "\\x%02X", (unsigned)cp)
                              : snprintf(esc, sizeof(esc), "\\u%04X", (unsigned)cp);
            buf_append(&c->text, esc, (size_t)k);
            lw += (size_t)k;
        } else {
            buf_append(&c->text, u + at, i - at);
            lw += (size_t)cp_width(cp);
        }
    }
}

static void cell_free(cell_t *c)
{
    buf_free(&c->text);
    free(c->lines);
}

static void put_line(FILE *out, const cell_t *c, size_t l)
{
    if (l < c->nlines && c->lines[l].end > c->lines[l].start)
        fwrite(c->text.data + c->lines[l].start, 1, c->lines[l].end - c->lines[l].start, out);
}

static size_t line_width(const cell_t *c, size_t l)
{
    return l < c->nlines ? c->lines[l].width : 0;
}

static void spaces(FILE *out, size_t n)
{
    while (n--)
        fputc(' ', out);
}

/* Print text made safe for a terminal, newlines kept, each line after the
 * first prefixed with indent. */
static void put_text(FILE *out, const char *s, const char *indent)
{
    cell_t c;
    cell_build(&c, s, true);
    for (size_t l = 0; l < c.nlines; l++) {
        if (l)
            fprintf(out, "\n%s", indent);
        put_line(out, &c, l);
    }
    cell_free(&c);
}

/* ---- psql's aligned table ---- */

void audit_fmt_aligned(FILE *out, size_t ncols, const char *const *names, const char *aligns,
                       size_t nrows, const char *const *cells)
{
    if (ncols == 0)
        return;
    cell_t *hdr = calloc(ncols, sizeof(*hdr));
    cell_t *body = calloc(ncols * (nrows ? nrows : 1), sizeof(*body));
    size_t *w = calloc(ncols, sizeof(*w));
    if (!hdr || !body || !w)
        goto out;
    size_t hlines = 1;
    for (size_t i = 0; i < ncols; i++) {
        cell_build(&hdr[i], names[i], false);
        w[i] = hdr[i].width;
        if (hdr[i].nlines > hlines)
            hlines = hdr[i].nlines;
    }
    for (size_t r = 0; r < nrows; r++)
        for (size_t i = 0; i < ncols; i++) {
            cell_t *c = &body[r * ncols + i];
            cell_build(c, cells[r * ncols + i], false);
            if (c->width > w[i])
                w[i] = c->width;
        }
    /* header: centred, every column padded, continuation marked with '+' */
    for (size_t l = 0; l < hlines; l++) {
        for (size_t i = 0; i < ncols; i++) {
            size_t lw = line_width(&hdr[i], l), left = (w[i] - lw) / 2;
            fputs(i ? "| " : " ", out);
            spaces(out, left);
            put_line(out, &hdr[i], l);
            spaces(out, w[i] - lw - left);
            fputc(l + 1 < hdr[i].nlines ? '+' : ' ', out);
        }
        fputc('\n', out);
    }
    for (size_t i = 0; i < ncols; i++) {
        if (i)
            fputc('+', out);
        for (size_t k = 0; k < w[i] + 2; k++)
            fputc('-', out);
    }
    fputc('\n', out);
    for (size_t r = 0; r < nrows; r++) {
        size_t lines = 1;
        for (size_t i = 0; i < ncols; i++)
            if (body[r * ncols + i].nlines > lines)
                lines = body[r * ncols + i].nlines;
        for (size_t l = 0; l < lines; l++) {
            for (size_t i = 0; i < ncols; i++) {
                const cell_t *c = &body[r * ncols + i];
                bool right = aligns && aligns[i] == 'r', last = i + 1 == ncols;
                bool more = l + 1 < c->nlines;
                size_t lw = line_width(c, l);
                fputs(i ? "| " : " ", out);
                if (last && l >= c->nlines)
                    continue; /* psql pads nothing past a last cell's lines */
                if (right)
                    spaces(out, w[i] - lw);
                put_line(out, c, l);
                if (!right && (!last || more))
                    spaces(out, w[i] - lw);
                if (more)
                    fputc('+', out);
                else if (!last)
                    fputc(' ', out);
            }
            fputc('\n', out);
        }
    }
    fprintf(out, "(%zu %s)\n", nrows, nrows == 1 ? "row" : "rows");
out:
    if (hdr)
        for (size_t i = 0; i < ncols; i++)
            cell_free(&hdr[i]);
    if (body)
        for (size_t k = 0; k < ncols * nrows; k++)
            cell_free(&body[k]);
    free(hdr);
    free(body);
    free(w);
}

/* ---- times ---- */

static const char *fmt_time(char *out, size_t outsz, int64_t us, bool frac)
{
    time_t s = (time_t)(us / 1000000);
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t n = strftime(out, outsz, "%Y-%m-%d %H:%M:%S", &tm);
    if (frac && n + 5 < outsz)
        snprintf(out + n, outsz - n, ".%03d", (int)(us % 1000000 / 1000));
    return out;
}

static const char *fmt_offset(char *out, size_t outsz, int64_t us)
{
    const char *sign = us < 0 ? "-" : "+";
    if (us < 0)
        us = -us;
    snprintf(out, outsz, "%s%lld.%03ds", sign, (long long)(us / 1000000),
             (int)(us % 1000000 / 1000));
    return out;
}

static const char *fmt_duration(char *out, size_t outsz, int64_t us)
{
    int64_t s = us / 1000000;
    if (s < 60)
        snprintf(out, outsz, "%lld.%03ds", (long long)s, (int)(us % 1000000 / 1000));
    else if (s < 3600)
        snprintf(out, outsz, "%lldm%02llds", (long long)(s / 60), (long long)(s % 60));
    else
        snprintf(out, outsz, "%lldh%02lldm", (long long)(s / 3600), (long long)(s / 60 % 60));
    return out;
}

/* ---- --since ---- */

static bool digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

bool audit_parse_since(const char *s, int64_t now_us, int64_t *out_us)
{
    int64_t ms;
    if (!s || !*s)
        return false;
    if (dur_parse(s, &ms)) {
        *out_us = now_us - ms * 1000;
        return true;
    }
    struct tm tm = {0};
    int y, mo, d, h = 0, mi = 0, sec = 0, frac = 0;
    size_t n = strlen(s), i = 10;
    if (n < 10 || !digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) || s[7] != '-' ||
        !digits(s + 8, 2, &d))
        return false;
    if (i < n && (s[i] == 'T' || s[i] == ' ')) {
        if (n < i + 6 || !digits(s + i + 1, 2, &h) || s[i + 3] != ':' || !digits(s + i + 4, 2, &mi))
            return false;
        i += 6;
        if (i < n && s[i] == ':') {
            if (n < i + 3 || !digits(s + i + 1, 2, &sec))
                return false;
            i += 3;
            if (i < n && s[i] == '.') {
                int k = 0;
                for (i++; i < n && s[i] >= '0' && s[i] <= '9'; i++, k++)
                    if (k < 6)
                        frac = frac * 10 + (s[i] - '0');
                if (k == 0)
                    return false;
                for (; k < 6; k++)
                    frac *= 10;
            }
        }
    }
    int off = 0;
    if (i < n && s[i] == 'Z') {
        i++;
    } else if (i < n && (s[i] == '+' || s[i] == '-')) {
        int oh, om;
        if (n < i + 6 || !digits(s + i + 1, 2, &oh) || s[i + 3] != ':' ||
            !digits(s + i + 4, 2, &om) || oh > 23 || om > 59)
            return false;
        off = (s[i] == '-' ? -1 : 1) * (oh * 3600 + om * 60);
        i += 6;
    }
    if (i != n || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return false;
    tm.tm_year = y - 1900, tm.tm_mon = mo - 1, tm.tm_mday = d;
    tm.tm_hour = h, tm.tm_min = mi, tm.tm_sec = sec;
    time_t t = timegm(&tm);
    *out_us = ((int64_t)t - off) * 1000000 + frac;
    return true;
}

/* ---- bulwark sessions ---- */

/* JSON for machines in the canonical form of the records themselves: times
 * and counts as plain integers (cJSON's printer writes microsecond times like
 * 1714564800012000 in exponent form), members sorted, no whitespace. */
static void print_canon(FILE *out, const cJSON *v)
{
    buf_t b;
    buf_init(&b, 0);
    if (canon_json(&b, v) && !b.failed)
        fwrite(b.data, 1, b.len, out);
    else
        fputs("null", out);
    buf_free(&b);
}

typedef struct srow {
    char *cells[9];
} srow_t;

typedef struct present_sessions {
    srow_t *rows;
    size_t n, cap;
    cJSON *json;
    bool failed;
} slist_t;

static void add_opt(cJSON *o, const char *name, const char *v)
{
    cJSON_AddItemToObject(o, name, v ? cJSON_CreateString(v) : cJSON_CreateNull());
}

int present_sessions_add(void *arg, const audit_session_t *s)
{
    slist_t *l = arg;
    if (l->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "session", s->id);
        add_opt(o, "sub", s->sub);
        add_opt(o, "iss", s->iss);
        add_opt(o, "role", s->role);
        add_opt(o, "target", s->target);
        add_opt(o, "client", s->client);
        add_opt(o, "application_name", s->application_name);
        cJSON_AddNumberToObject(o, "start", (double)s->start_us);
        cJSON_AddItemToObject(
            o, "end", s->end_us ? cJSON_CreateNumber((double)s->end_us) : cJSON_CreateNull());
        add_opt(o, "end_reason", s->end_reason);
        cJSON_AddNumberToObject(o, "first_seq", (double)s->first_seq);
        cJSON_AddNumberToObject(o, "records", (double)s->records);
        cJSON_AddItemToArray(l->json, o);
        return 0;
    }
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 32;
        srow_t *r = realloc(l->rows, cap * sizeof(*r));
        if (!r) {
            l->failed = true;
            return -1;
        }
        l->rows = r, l->cap = cap;
    }
    char t[64], d[64], recs[32];
    fmt_time(t, sizeof(t), s->start_us, false);
    if (s->end_us)
        fmt_duration(d, sizeof(d), s->end_us - s->start_us);
    else
        snprintf(d, sizeof(d), "open");
    snprintf(recs, sizeof(recs), "%" PRIu64, s->records);
    const char *v[9] = {s->id, t, d, s->role, s->sub, s->target, s->client, recs, s->end_reason};
    srow_t *r = &l->rows[l->n++];
    for (int i = 0; i < 9; i++)
        r->cells[i] = v[i] ? strdup(v[i]) : NULL;
    return 0;
}

present_sessions_t *present_sessions_new(bool json)
{
    slist_t *l = calloc(1, sizeof(*l));
    if (l && json && !(l->json = cJSON_CreateArray())) {
        free(l);
        return NULL;
    }
    return l;
}

int present_sessions_print(const present_sessions_t *l, FILE *out)
{
    if (l->failed)
        return -1;
    if (l->json) {
        fputs("[", out);
        size_t i = 0;
        for (const cJSON *o = l->json->child; o; o = o->next, i++) {
            fprintf(out, "%s\n", i ? "," : "");
            print_canon(out, o);
        }
        fputs(i ? "\n]\n" : "]\n", out);
        return 0;
    }
    static const char *const names[] = {"session", "started (UTC)", "duration", "role", "subject",
                                        "target",  "client",        "records",  "end"};
    const char **cells = calloc(l->n ? l->n * 9 : 1, sizeof(*cells));
    if (!cells)
        return -1;
    for (size_t i = 0; i < l->n; i++)
        for (int k = 0; k < 9; k++)
            cells[i * 9 + k] = l->rows[i].cells[k];
    audit_fmt_aligned(out, 9, names, "lllllllrl", l->n, cells);
    free(cells);
    return 0;
}

void present_sessions_free(present_sessions_t *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < l->n; i++)
        for (int k = 0; k < 9; k++)
            free(l->rows[i].cells[k]);
    free(l->rows);
    cJSON_Delete(l->json);
    free(l);
}

int audit_print_sessions(audit_reader_t *r, const audit_session_filter_t *f, bool json, FILE *out)
{
    present_sessions_t *l = present_sessions_new(json);
    if (!l)
        return -1;
    int rc = audit_reader_sessions(r, f, present_sessions_add, l);
    if (rc == 0)
        rc = present_sessions_print(l, out);
    present_sessions_free(l);
    return rc == 0 ? 0 : -1;
}

/* ---- bulwark replay ---- */

typedef struct rrec {
    uint64_t seq;
    int64_t ts;
    audit_rec_type_t type;
    char *type_name;
    cJSON *data;
    bool hash_ok, parsed;
} rrec_t;

typedef struct present_replay {
    rrec_t *v;
    size_t n, cap;
    bool failed;
} rlist_t;

int present_replay_add(void *arg, const audit_record_t *rec)
{
    rlist_t *l = arg;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        rrec_t *v = realloc(l->v, cap * sizeof(*v));
        if (!v) {
            l->failed = true;
            return -1;
        }
        l->v = v, l->cap = cap;
    }
    rrec_t *x = &l->v[l->n++];
    x->seq = rec->parsed ? rec->seq : rec->key;
    x->ts = rec->ts;
    x->type = rec->type;
    x->type_name = rec->type_name ? strdup(rec->type_name) : NULL;
    x->data = rec->data ? cJSON_Duplicate(rec->data, 1) : NULL;
    x->hash_ok = rec->hash_ok;
    x->parsed = rec->parsed;
    return 0;
}

static const char *dstr(const cJSON *d, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(d, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* A number of the record's data, if it is one within +-2^53 (what a double holds
 * exactly; times and sequence numbers are never larger, and differences of two
 * such values cannot overflow). */
static bool dint(const cJSON *d, const char *name, int64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(d, name);
    if (!cJSON_IsNumber(v) ||
        !(v->valuedouble >= -9007199254740992.0 && v->valuedouble <= 9007199254740992.0))
        return false;
    *out = (int64_t)v->valuedouble;
    return true;
}

/* A JSON value shown inline: strings as they are, the rest as compact JSON. */
static void put_json_inline(FILE *out, const cJSON *v)
{
    if (cJSON_IsString(v)) {
        put_text(out, v->valuestring, "    ");
        return;
    }
    char *s = cJSON_PrintUnformatted(v);
    put_text(out, s ? s : "?", "    ");
    free(s);
}

static void print_header(FILE *out, const char *sid, const rlist_t *l, int64_t t0)
{
    const rrec_t *start = NULL, *end = NULL;
    for (size_t i = 0; i < l->n; i++) {
        if (l->v[i].type == AUDIT_REC_SESSION_START && !start)
            start = &l->v[i];
        if (l->v[i].type == AUDIT_REC_SESSION_END)
            end = &l->v[i];
    }
    fputs("session ", out);
    put_text(out, sid, "");
    fputc('\n', out);
    char tb[64];
    if (start) {
        const cJSON *d = start->data;
        const char *rows[][2] = {{"subject", dstr(d, "sub")},
                                 {"issuer", dstr(d, "iss")},
                                 {"role", dstr(d, "role")},
                                 {"target", dstr(d, "target")},
                                 {"client", dstr(d, "client")},
                                 {"tls", dstr(d, "tls")},
                                 {"application", dstr(d, "application_name")}};
        for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
            if (!rows[i][1])
                continue;
            fprintf(out, "  %-12s", rows[i][0]);
            put_text(out, rows[i][1], "    ");
            fputc('\n', out);
        }
        const cJSON *claims = cJSON_GetObjectItemCaseSensitive(d, "claims");
        if (claims) {
            fprintf(out, "  %-12s", "claims");
            put_json_inline(out, claims);
            fputc('\n', out);
        }
    } else {
        fputs("  (the session start was not recorded or has been retired)\n", out);
    }
    fprintf(out, "  %-12s%s UTC\n", "started", fmt_time(tb, sizeof(tb), t0, true));
    if (end) {
        char ob[32];
        fprintf(out, "  %-12s%s", "ended", fmt_offset(ob, sizeof(ob), end->ts - t0));
        const char *reason = dstr(end->data, "reason");
        if (reason) {
            fputs("  ", out);
            put_text(out, reason, "    ");
        }
        fputc('\n', out);
    }
}

/* RESULT records by the seq of their statement, for lookups while printing. */
typedef struct ridx {
    uint64_t stmt;
    const rrec_t *res;
} ridx_t;

static int ridx_cmp(const void *a, const void *b)
{
    uint64_t x = ((const ridx_t *)a)->stmt, y = ((const ridx_t *)b)->stmt;
    return x < y ? -1 : x > y;
}

static ridx_t *index_results(const rlist_t *l, size_t *n)
{
    ridx_t *ix = malloc((l->n ? l->n : 1) * sizeof(*ix));
    *n = 0;
    for (size_t i = 0; ix && i < l->n; i++) {
        int64_t s;
        if (l->v[i].type == AUDIT_REC_RESULT && dint(l->v[i].data, "stmt", &s))
            ix[(*n)++] = (ridx_t){(uint64_t)s, &l->v[i]};
    }
    if (ix)
        qsort(ix, *n, sizeof(*ix), ridx_cmp); /* equal stmts keep no order: first found wins */
    return ix;
}

static const rrec_t *find_result(const ridx_t *ix, size_t n, uint64_t stmt)
{
    ridx_t key = {stmt, NULL};
    const ridx_t *f = ix ? bsearch(&key, ix, n, sizeof(*ix), ridx_cmp) : NULL;
    return f ? f->res : NULL;
}

static void print_capture(FILE *out, const cJSON *d)
{
    const cJSON *cols = cJSON_GetObjectItemCaseSensitive(d, "columns");
    const cJSON *vals = cJSON_GetObjectItemCaseSensitive(d, "values");
    const cJSON *types = cJSON_GetObjectItemCaseSensitive(d, "types");
    int nc = cJSON_IsArray(cols) ? cJSON_GetArraySize(cols) : 0;
    if (nc <= 0)
        return;
    int nr = cJSON_IsArray(vals) ? cJSON_GetArraySize(vals) : 0;
    const char **names = calloc((size_t)nc, sizeof(*names));
    char *aligns = calloc((size_t)nc + 1, 1);
    const char **cells = calloc((size_t)(nr ? nr : 1) * (size_t)nc, sizeof(*cells));
    if (!names || !aligns || !cells)
        goto out;
    for (int i = 0; i < nc; i++) {
        const cJSON *n = cJSON_GetArrayItem(cols, i);
        names[i] = cJSON_IsString(n) ? n->valuestring : "?";
        const cJSON *t = cJSON_IsArray(types) ? cJSON_GetArrayItem(types, i) : NULL;
        double oid = cJSON_IsNumber(t) ? t->valuedouble : 0; /* compared, never converted */
        /* psql's column_type_alignment: int2 int4 int8 float4 float8 numeric oid xid
         * xid8 cid money */
        bool num = oid == 20 || oid == 21 || oid == 23 || oid == 700 || oid == 701 || oid == 1700 ||
                   oid == 26 || oid == 28 || oid == 5069 || oid == 29 || oid == 790;
        aligns[i] = num ? 'r' : 'l';
    }
    int r = 0;
    for (const cJSON *row = cJSON_IsArray(vals) ? vals->child : NULL; row; row = row->next, r++)
        for (int i = 0; i < nc; i++) {
            const cJSON *v = cJSON_IsArray(row) ? cJSON_GetArrayItem(row, i) : NULL;
            cells[(size_t)r * (size_t)nc + (size_t)i] = cJSON_IsString(v) ? v->valuestring : NULL;
        }
    audit_fmt_aligned(out, (size_t)nc, names, aligns, (size_t)nr, cells);
    int64_t rows;
    const cJSON *trunc = cJSON_GetObjectItemCaseSensitive(d, "truncated");
    if (cJSON_IsTrue(trunc)) {
        if (dint(d, "rows", &rows))
            fprintf(out, "(capture truncated: the client received %lld rows)\n", (long long)rows);
        else
            fputs("(capture truncated)\n", out);
    }
out:
    free(names);
    free(aligns);
    free(cells);
}

static void print_result(FILE *out, const rrec_t *res, int64_t t0, int64_t start)
{
    const cJSON *d = res->data;
    int64_t end = res->ts;
    (void)dint(d, "end", &end);
    char ob[32];
    fprintf(out, "%s  ", fmt_offset(ob, sizeof(ob), end - t0));
    const char *state = dstr(d, "sqlstate"), *tag = dstr(d, "tag"), *err = dstr(d, "error");
    if (state || err) {
        fputs("ERROR ", out);
        put_text(out, state ? state : "", "    ");
        if (err) {
            fputs("  ", out);
            put_text(out, err, "    ");
        }
    } else {
        put_text(out, tag ? tag : "(no command tag)", "");
    }
    if (start && end >= start)
        fprintf(out, "  (%.3f ms)", (double)(end - start) / 1000.0);
    fputc('\n', out);
    print_capture(out, d);
}

static void print_statement(FILE *out, const ridx_t *ix, size_t nix, const rrec_t *x, int64_t t0)
{
    const cJSON *d = x->data;
    int64_t start = x->ts;
    (void)dint(d, "start", &start);
    char ob[32];
    fprintf(out, "\n%s  #%" PRIu64 "  ", fmt_offset(ob, sizeof(ob), start - t0), x->seq);
    const char *dec = dstr(d, "decision"), *rule = dstr(d, "rule");
    put_text(out, dec ? dec : "(no decision)", "");
    if (rule) {
        fputs("  (rule ", out);
        put_text(out, rule, "");
        fputc(')', out);
    }
    const cJSON *appr = cJSON_GetObjectItemCaseSensitive(d, "approval");
    if (appr && !cJSON_IsNull(appr)) {
        fputs("  approval ", out);
        put_json_inline(out, appr);
    }
    fputs("\n    ", out);
    const char *sql = dstr(d, "sql");
    put_text(out, sql ? sql : "(no statement text)", "    ");
    fputc('\n', out);
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(d, "params");
    if (cJSON_IsArray(params) && cJSON_GetArraySize(params) > 0) {
        fputs("    params:", out);
        int i = 1;
        for (const cJSON *p = params->child; p; p = p->next, i++) {
            fprintf(out, " $%d=", i);
            if (cJSON_IsNull(p)) {
                fputs("NULL", out);
            } else {
                fputc('\'', out);
                put_json_inline(out, p);
                fputc('\'', out);
            }
        }
        fputc('\n', out);
    }
    const cJSON *intent = cJSON_GetObjectItemCaseSensitive(d, "intent");
    if (intent && !cJSON_IsNull(intent)) {
        fputs("    intent: ", out);
        put_json_inline(out, intent);
        fputc('\n', out);
    }
    const char *msg = dstr(d, "message");
    const rrec_t *res = find_result(ix, nix, x->seq);
    if (res)
        print_result(out, res, t0, start);
    else if (msg) {
        fputs("    ", out);
        put_text(out, msg, "    ");
        fputc('\n', out);
    } else {
        fputs("    (no result recorded)\n", out);
    }
}

static void print_other(FILE *out, const rrec_t *x, int64_t t0)
{
    char ob[32];
    fprintf(out, "\n%s  #%" PRIu64 "  ", fmt_offset(ob, sizeof(ob), x->ts - t0), x->seq);
    put_text(out, x->type_name ? x->type_name : "(unreadable record)", "    ");
    if (x->data) {
        fputs("  ", out);
        put_json_inline(out, x->data);
    }
    fputc('\n', out);
}

static void replay_json(FILE *out, const char *sid, const rlist_t *l, int64_t t0)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "session", sid);
    cJSON_AddNumberToObject(o, "start", (double)t0);
    cJSON *arr = cJSON_AddArrayToObject(o, "records");
    for (size_t i = 0; i < l->n; i++) {
        const rrec_t *x = &l->v[i];
        cJSON *r = cJSON_CreateObject();
        cJSON_AddNumberToObject(r, "seq", (double)x->seq);
        cJSON_AddNumberToObject(r, "ts", (double)x->ts);
        cJSON_AddNumberToObject(r, "offset_us", (double)(x->ts - t0));
        add_opt(r, "type", x->type_name);
        cJSON_AddItemToObject(r, "data",
                              x->data ? cJSON_Duplicate(x->data, 1) : cJSON_CreateNull());
        cJSON_AddBoolToObject(r, "hash_ok", x->hash_ok);
        cJSON_AddItemToArray(arr, r);
    }
    print_canon(out, o);
    fputc('\n', out);
    cJSON_Delete(o);
}

present_replay_t *present_replay_new(void)
{
    return calloc(1, sizeof(present_replay_t));
}

size_t present_replay_count(const present_replay_t *l)
{
    return l->n;
}

void present_replay_print(const present_replay_t *l, const char *sid, bool json, FILE *out)
{
    if (l->n == 0)
        return;
    int64_t t0 = l->v[0].ts;
    if (json) {
        replay_json(out, sid, l, t0);
        return;
    }
    print_header(out, sid, l, t0);
    size_t bad = 0, nix;
    ridx_t *ix = index_results(l, &nix);
    for (size_t i = 0; i < l->n; i++) {
        const rrec_t *x = &l->v[i];
        bad += !x->hash_ok;
        if (x->type == AUDIT_REC_STATEMENT)
            print_statement(out, ix, nix, x, t0);
        else if (x->type != AUDIT_REC_SESSION_START && x->type != AUDIT_REC_SESSION_END &&
                 x->type != AUDIT_REC_RESULT)
            print_other(out, x, t0);
    }
    free(ix);
    if (bad)
        fprintf(out,
                "\nWARNING: %zu of these records do not match their hash; run "
                "`bulwark audit verify`\n",
                bad);
}

void present_replay_free(present_replay_t *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].type_name);
        cJSON_Delete(l->v[i].data);
    }
    free(l->v);
    free(l);
}

int audit_print_replay(audit_reader_t *r, const char *sid, bool json, FILE *out, char *err,
                       size_t errsz)
{
    present_replay_t *l = present_replay_new();
    int rc = l ? audit_reader_session_records(r, sid, present_replay_add, l) : -1;
    int ret = 0;
    if (rc != 0 || l->failed) {
        snprintf(err, errsz, "cannot read the audit store");
        ret = -1;
    } else if (l->n == 0) {
        snprintf(err, errsz, "no session \"%.*s\" in the audit store", 200, sid);
        ret = 1;
    } else {
        present_replay_print(l, sid, json, out);
    }
    present_replay_free(l);
    return ret;
}

/* ---- bulwark audit export ---- */

void present_export_checkpoint(FILE *out, const void *val, size_t len)
{
    cp_view_t cv;
    if (!cp_view(val, len, &cv))
        return; /* damaged: verify reports it; the export carries what is there */
    fputs("{\"checkpoint\":", out);
    fwrite(cv.canon, 1, cv.canon_len, out);
    if (cv.sig) {
        char *s = b64_encode_alloc(cv.sig, cv.sig_len, B64_STD);
        fprintf(out, ",\"sig\":\"%s\"}\n", s ? s : "");
        free(s);
    } else {
        fputs(",\"sig\":null}\n", out);
    }
}

void present_export_record(FILE *out, uint64_t seq, const void *val, size_t len)
{
    rec_view_t rv;
    if (rec_view(val, len, &rv)) {
        char ph[2 * AUDIT_HASH_LEN + 1], h[2 * AUDIT_HASH_LEN + 1];
        hex_encode(ph, rv.prev, AUDIT_HASH_LEN);
        hex_encode(h, rv.hash, AUDIT_HASH_LEN);
        fprintf(out, "{\"hash\":\"%s\",\"prev_hash\":\"%s\",\"record\":", h, ph);
        fwrite(rv.canon, 1, rv.canon_len, out);
        fprintf(out, ",\"seq\":%" PRIu64 "}\n", seq);
    } else {
        fprintf(out, "{\"damaged\":true,\"seq\":%" PRIu64 "}\n", seq);
    }
}

static int export_pass(audit_reader_t *r, uint64_t *from, bool *anchored, FILE *out,
                       uint64_t *first_out)
{
    audit_dbs_t dbs;
    MDB_env *env = reader_env(r, &dbs);
    MDB_txn *txn;
    MDB_cursor *c = NULL;
    if (store_read_txn(env, &txn))
        return -1;
    int ret = -1, rc;
    uint8_t kb[8];
    be64_put(kb, *from);
    MDB_val k = {8, kb}, v;
    bool first = true;
    if (mdb_cursor_open(txn, dbs.records, &c))
        goto out;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 8)
            continue;
        uint64_t seq = be64_get(k.mv_data);
        if (first && first_out)
            *first_out = seq;
        if (first && !*anchored && seq > 1) { /* the anchor this export starts from */
            uint8_t pb[8];
            be64_put(pb, seq - 1);
            MDB_val pk = {8, pb}, pv;
            if (mdb_get(txn, dbs.checkpoints, &pk, &pv) == 0)
                present_export_checkpoint(out, pv.mv_data, pv.mv_size);
        }
        first = false;
        *anchored = true;
        present_export_record(out, seq, v.mv_data, v.mv_size);
        MDB_val cv;
        if (mdb_get(txn, dbs.checkpoints, &k, &cv) == 0)
            present_export_checkpoint(out, cv.mv_data, cv.mv_size);
        *from = seq + 1;
        if (ferror(out))
            goto out;
    }
    ret = rc == MDB_NOTFOUND ? 0 : -1;
out:
    if (c)
        mdb_cursor_close(c);
    mdb_txn_abort(txn);
    return ret;
}

int audit_export_pass(audit_reader_t *r, uint64_t *next, bool *anchored, FILE *out, uint64_t *first)
{
    if (first)
        *first = 0;
    return export_pass(r, next, anchored, out, first);
}

int audit_export(audit_reader_t *r, uint64_t from_seq, FILE *out, bool follow, volatile int *stop)
{
    uint64_t next = from_seq;
    bool anchored = false;
    for (;;) {
        if (export_pass(r, &next, &anchored, out, NULL) != 0 || fflush(out) != 0)
            return -1;
        if (!follow || (stop && *stop))
            return 0;
        usleep(200 * 1000);
        if (stop && *stop)
            return 0;
    }
}
