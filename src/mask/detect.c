/*
 * Content detectors (SPEC 5.3 "detectors"): one Vectorscan pass over a buffer
 * finds every candidate; each candidate is then validated by plain C (Luhn,
 * mod-97, SSA ranges, JWT header, ...), which also finds the exact span.
 *
 * The patterns are prefilters: they match a short, cheap part of what they
 * look for and carry no start-of-match (SOM is expensive). Patterns made only
 * of character classes cost Vectorscan the most, so the four digit-based
 * detectors share ONE of them, a "digit gate" (six digits, at most one
 * separator after the second): every card number, SSN, NANP phone number and
 * IBAN contains such a run. A gate hit hands the whole cluster of digits and
 * separators around it to the validators of the enabled digit detectors.
 * The others have literal anchors ('@', '+', "-----BEGIN", "sk_live_", ...).
 * A per-pattern "done" offset remembers how far a validator has looked, so
 * the many overlapping matches of one long token cost one validation and a
 * scan stays linear in the input whatever it holds.
 *
 * The same scan covers several values (the columns of a DataRow): a match is
 * validated only inside the region (value) that holds its last byte, so bytes
 * between values never join them.
 */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "mask/internal.h"
#include "util/b64.h"

const char *const mask_detector_names[DET_N] = {"email", "credit_card", "us_ssn",
                                                "iban",  "phone",       "secret"};

int mask_detector_index(const char *name)
{
    for (int i = 0; i < DET_N; i++)
        if (!strcmp(name, mask_detector_names[i]))
            return i;
    return -1;
}

enum { V_EMAIL, V_DIGITS, V_E164, V_PEM, V_JWT, V_TOKEN, V_AWS_SECRET };
enum { X_US = 1, X_DASH = 2, X_SLASH = 4, X_PLUS = 8 }; /* token characters beyond [A-Za-z0-9] */
#define DIGIT_DETS ((1u << DET_CARD) | (1u << DET_SSN) | (1u << DET_IBAN) | (1u << DET_PHONE))

static const struct pat {
    uint8_t det, val;
    uint8_t width; /* fixed length of the prefilter match (0: validator scans back) */
    uint8_t ext;   /* V_TOKEN: characters that continue the token */
    unsigned flags;
    const char *re;
} pats[] = {
    {DET_EMAIL, V_EMAIL, 0, 0, 0,
     "[A-Za-z0-9._%+\\x80-\\xff-]@[A-Za-z0-9\\x80-\\xff-]+\\.[A-Za-z\\x80-\\xff]{2}"},
    /* the digit gate: card, us_ssn, iban and NANP phone numbers */
    {DET_CARD, V_DIGITS, 0, 0, 0, "[0-9]{2}[ .-]?[0-9]{4}"},
    {DET_PHONE, V_E164, 0, 0, 0, "\\+[1-9](?:[ .()-]{0,2}[0-9]){6}"},
    {DET_SECRET, V_PEM, 0, 0, 0, "-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY"},
    {DET_SECRET, V_JWT, 0, 0, 0, "(?:eyJ|eyA|ewo|ew0|ewk)[A-Za-z0-9_-]{4,}\\.[A-Za-z0-9_-]{2,}\\."},
    {DET_SECRET, V_TOKEN, 20, 0, 0, "A(?:KIA|SIA|BIA|CCA)[A-Z0-9]{16}"},
    {DET_SECRET, V_AWS_SECRET, 0, 0, HS_FLAG_CASELESS,
     "aws_?secret_?access_?key[\"']?\\s{0,5}[:=]\\s{0,5}[\"']?[A-Za-z0-9/+]{40}"},
    {DET_SECRET, V_TOKEN, 18, 0, 0, "[sr]k_(?:live|test)_[0-9A-Za-z]{10}"},
    {DET_SECRET, V_TOKEN, 30, 0, 0, "whsec_[A-Za-z0-9]{24}"},
    {DET_SECRET, V_TOKEN, 34, 0, 0, "gh[pousr]_[A-Za-z0-9]{30}"},
    {DET_SECRET, V_TOKEN, 31, X_US, 0, "github_pat_[A-Za-z0-9_]{20}"},
    {DET_SECRET, V_TOKEN, 15, X_DASH, 0, "xox[abeoprs]-[A-Za-z0-9-]{10}"},
    {DET_SECRET, V_TOKEN, 39, X_US | X_DASH, 0, "AIza[0-9A-Za-z_-]{35}"},
    {DET_SECRET, V_TOKEN, 53, X_US | X_DASH | X_SLASH, 0,
     "https://hooks\\.slack\\.com/services/[A-Za-z0-9_/-]{20}"},
};
#define NPATS (sizeof(pats) / sizeof(pats[0]))
_Static_assert(NPATS <= MASK_NPAT_MAX, "pattern table larger than scratch");

/* ---- compile ---- */

int mask_detect_compile(mask_rules_t *r, char *err, size_t errsz)
{
    const char *exprs[NPATS];
    unsigned flags[NPATS], ids[NPATS], n = 0;
    r->pat_of_id = calloc(NPATS, sizeof(*r->pat_of_id));
    if (!r->pat_of_id) {
        snprintf(err, errsz, "out of memory");
        return -1;
    }
    for (unsigned i = 0; i < NPATS; i++) {
        unsigned need = pats[i].val == V_DIGITS ? DIGIT_DETS : 1u << pats[i].det;
        if (!(r->det_on & need))
            continue;
        exprs[n] = pats[i].re;
        flags[n] = pats[i].flags;
        ids[n] = n;
        r->pat_of_id[n] = (uint16_t)i;
        n++;
    }
    r->npats = n;
    if (!n)
        return 0;
    hs_compile_error_t *ce = NULL;
    if (hs_compile_multi(exprs, flags, ids, n, HS_MODE_BLOCK, NULL, &r->db, &ce) != HS_SUCCESS) {
        snprintf(err, errsz, "detector patterns: %s (pattern %d)",
                 ce && ce->message ? ce->message : "compile failed", ce ? ce->expression : -1);
        hs_free_compile_error(ce);
        return -1;
    }
    return 0;
}

/* ---- character classes ---- */

static inline bool is_digit(uint8_t c)
{
    return c >= '0' && c <= '9';
}
static inline bool is_alpha(uint8_t c)
{
    return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
}
static inline bool is_alnum(uint8_t c)
{
    return is_digit(c) || is_alpha(c);
}
static inline bool is_local(uint8_t c)
{
    return is_alnum(c) || c >= 0x80 || c == '.' || c == '_' || c == '%' || c == '+' || c == '-';
}
static inline bool is_dom(uint8_t c)
{
    return is_alnum(c) || c >= 0x80 || c == '-';
}
static inline bool is_b64u(uint8_t c)
{
    return is_alnum(c) || c == '_' || c == '-';
}
static inline bool is_tok(uint8_t c, uint8_t ext)
{
    return is_alnum(c) || ((ext & X_US) && c == '_') || ((ext & X_DASH) && c == '-') ||
           ((ext & X_SLASH) && c == '/') || ((ext & X_PLUS) && c == '+');
}

/* ---- spans ---- */

static void span_add(mask_scratch_t *s, size_t start, size_t end, uint8_t det, uint32_t region)
{
    if (s->nspans == s->capspans) {
        size_t nc = s->capspans ? s->capspans * 2 : 32;
        mask_span_t *ns = realloc(s->spans, nc * sizeof(*ns));
        if (!ns) {
            s->failed = true;
            return;
        }
        s->spans = ns;
        s->capspans = nc;
    }
    s->spans[s->nspans++] = (mask_span_t){(uint32_t)start, (uint32_t)end, region, det};
}

/* A validator sees the whole buffer b, its region [rs, re) and the match end. */
typedef struct vctx {
    mask_scratch_t *s;
    const uint8_t *b;
    size_t rs, re, to;
    uint32_t region;
    unsigned pi;
} vctx_t;

static void hit(vctx_t *v, uint8_t det, size_t start, size_t end)
{
    span_add(v->s, start, end, det, v->region);
    if (end > v->s->done[v->pi])
        v->s->done[v->pi] = (uint32_t)end;
}

static bool det_on(const vctx_t *v, int det)
{
    return v->s->rules->det_on & (1u << det);
}

/* ---- validators ---- */

static void v_email(vctx_t *v)
{
    const uint8_t *b = v->b;
    size_t i = v->to;
    while (i > v->rs && b[i - 1] != '@') {
        if (!is_dom(b[i - 1]) && b[i - 1] != '.')
            return;
        i--;
    }
    if (i == v->rs)
        return;
    size_t at = i - 1, ls = at;
    while (ls > v->rs && is_local(b[ls - 1]))
        ls--;
    while (ls < at && b[ls] == '.')
        ls++;
    if (ls == at)
        return;
    size_t de = at + 1, lastdot = 0;
    while (de < v->re) {
        uint8_t c = b[de];
        if (is_dom(c))
            de++;
        else if (c == '.' && de > at + 1 && b[de - 1] != '.' && de + 1 < v->re && is_dom(b[de + 1]))
            lastdot = de++;
        else
            break;
    }
    while (de > at + 1 && b[de - 1] == '-')
        de--;
    /* Any later match inside this token finds the same '@' and the same end:
       look no further, whether or not it is an address (keeps scans linear). */
    if (de > v->s->done[v->pi])
        v->s->done[v->pi] = (uint32_t)de;
    if (!lastdot || de - lastdot - 1 < 2)
        return;
    uint8_t t = b[lastdot + 1];
    if (!(is_alpha(t) || t >= 0x80))
        return;
    hit(v, DET_EMAIL, ls, de);
}

static bool luhn(const uint8_t *d, size_t n)
{
    unsigned sum = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned x = d[n - 1 - i];
        if (i & 1) {
            x *= 2;
            if (x > 9)
                x -= 9;
        }
        sum += x;
    }
    return sum % 10 == 0;
}

typedef struct group {
    size_t s, e;
    uint8_t sep; /* separator after the group, 0 at the end of the run */
} group_t;

/* Digits of groups g[0..k) into d; returns the count (0 if more than 19). */
static size_t card_digits(const uint8_t *b, const group_t *g, int k, uint8_t d[19])
{
    size_t n = 0;
    for (int i = 0; i < k; i++)
        for (size_t j = g[i].s; j < g[i].e; j++) {
            if (n == 19)
                return 0;
            d[n++] = (uint8_t)(b[j] - '0');
        }
    return n;
}

static bool card_ok(const uint8_t *d, size_t n)
{
    return n >= 13 && n <= 19 && d[0] >= 2 && d[0] <= 6 && luhn(d, n);
}

/* Shapes of a grouped card number: 4-4-4-(1..4)[-1..3], 4-6-5 (Amex), 4-6-4 (Diners). */
static bool card_shape(const group_t *g, int k)
{
    for (int i = 0; i + 1 < k; i++)
        if (g[i].sep != g[0].sep)
            return false;
    size_t len[6];
    for (int i = 0; i < k; i++)
        len[i] = g[i].e - g[i].s;
    if (k == 3 && len[0] == 4 && len[1] == 6 && (len[2] == 5 || len[2] == 4))
        return true;
    for (int i = 0; i + 1 < k; i++)
        if (len[i] != 4)
            return false;
    return k >= 4 && len[k - 1] >= 1 && len[k - 1] <= 4;
}

/* A run [st, en) of digit groups joined by single spaces or dashes: every card
   number in it, starting at group boundaries, longest shape first. */
static void card_run(vctx_t *v, size_t st, size_t en)
{
    const uint8_t *b = v->b;
    size_t gs = st;
    while (gs < en) {
        group_t g[6] = {{0}};
        int ng = 0;
        for (size_t p = gs; ng < 6 && p < en;) {
            size_t q = p;
            while (q < en && is_digit(b[q]))
                q++;
            g[ng++] = (group_t){p, q, q < en ? b[q] : 0};
            p = q + 1;
        }
        uint8_t d[19];
        size_t n, end = 0;
        if ((n = card_digits(b, g, 1, d)) && card_ok(d, n)) {
            end = g[0].e;
        } else if (g[0].e - g[0].s == 4) {
            for (int k = ng; k >= 3 && !end; k--)
                if (card_shape(g, k) && (n = card_digits(b, g, k, d)) && card_ok(d, n))
                    end = g[k - 1].e;
        }
        if (end) {
            hit(v, DET_CARD, g[0].s, end);
            gs = end + 1;
        } else {
            gs = g[0].e + 1;
        }
    }
}

static void cards(vctx_t *v, size_t cs, size_t ce)
{
    const uint8_t *b = v->b;
    for (size_t i = cs; i < ce;) {
        if (!is_digit(b[i])) {
            i++;
            continue;
        }
        size_t e = i;
        while (e < ce && (is_digit(b[e]) ||
                          ((b[e] == ' ' || b[e] == '-') && e + 1 < ce && is_digit(b[e + 1]))))
            e++;
        card_run(v, i, e);
        i = e;
    }
}

static int digits3(const uint8_t *p)
{
    return (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
}

/* NNN-NN-NNNN (or with spaces) at s, not inside a longer number. */
static void ssn_at(vctx_t *v, size_t s)
{
    const uint8_t *b = v->b;
    uint8_t sep = b[s + 3];
    if ((sep != '-' && sep != ' ') || b[s + 6] != sep)
        return;
    for (int i = 0; i < 11; i++)
        if (i != 3 && i != 6 && !is_digit(b[s + i]))
            return;
    if ((s > v->rs && is_digit(b[s - 1])) || (s + 11 < v->re && is_digit(b[s + 11])))
        return;
    int area = digits3(b + s);
    int grp = (b[s + 4] - '0') * 10 + (b[s + 5] - '0');
    int ser = digits3(b + s + 7) * 10 + (b[s + 10] - '0');
    /* SSA: area 000, 666 and 900-999, group 00 and serial 0000 are never issued;
       078-05-1120 and 219-09-9999 were published in advertising and voided. */
    if (area == 0 || area == 666 || area >= 900 || grp == 0 || ser == 0)
        return;
    if ((area == 78 && grp == 5 && ser == 1120) || (area == 219 && grp == 9 && ser == 9999))
        return;
    hit(v, DET_SSN, s, s + 11);
}

/* IBAN lengths per country (SWIFT IBAN registry). */
static const struct {
    char cc[3];
    uint8_t len;
} iban_len[] = {
    {"AD", 24}, {"AE", 23}, {"AL", 28}, {"AT", 20}, {"AZ", 28}, {"BA", 20}, {"BE", 16}, {"BG", 22},
    {"BH", 22}, {"BI", 27}, {"BR", 29}, {"BY", 28}, {"CH", 21}, {"CR", 22}, {"CY", 28}, {"CZ", 24},
    {"DE", 22}, {"DJ", 27}, {"DK", 18}, {"DO", 28}, {"EE", 20}, {"EG", 29}, {"ES", 24}, {"FI", 18},
    {"FK", 18}, {"FO", 18}, {"FR", 27}, {"GB", 22}, {"GE", 22}, {"GI", 23}, {"GL", 18}, {"GR", 27},
    {"GT", 28}, {"HR", 21}, {"HU", 28}, {"IE", 22}, {"IL", 23}, {"IQ", 23}, {"IS", 26}, {"IT", 27},
    {"JO", 30}, {"KW", 30}, {"KZ", 20}, {"LB", 28}, {"LC", 32}, {"LI", 21}, {"LT", 20}, {"LU", 20},
    {"LV", 21}, {"LY", 25}, {"MC", 27}, {"MD", 24}, {"ME", 22}, {"MK", 19}, {"MN", 20}, {"MR", 27},
    {"MT", 31}, {"MU", 30}, {"NI", 28}, {"NL", 18}, {"NO", 15}, {"OM", 23}, {"PK", 24}, {"PL", 28},
    {"PS", 29}, {"PT", 25}, {"QA", 29}, {"RO", 24}, {"RS", 22}, {"RU", 33}, {"SA", 24}, {"SC", 31},
    {"SD", 18}, {"SE", 24}, {"SI", 19}, {"SK", 24}, {"SM", 27}, {"SO", 23}, {"ST", 25}, {"SV", 28},
    {"TL", 23}, {"TN", 24}, {"TR", 26}, {"UA", 29}, {"VA", 22}, {"VG", 24}, {"XK", 20},
};

static int iban_length(uint8_t a, uint8_t b)
{
    a &= (uint8_t)~0x20;
    b &= (uint8_t)~0x20;
    for (size_t i = 0; i < sizeof(iban_len) / sizeof(iban_len[0]); i++)
        if (iban_len[i].cc[0] == a && iban_len[i].cc[1] == b)
            return iban_len[i].len;
    return 0;
}

static bool iban_mod97(const uint8_t *c, size_t n)
{
    unsigned rem = 0;
    for (size_t k = 0; k < n; k++) {
        uint8_t x = c[(k + 4) % n];
        if (is_digit(x)) {
            rem = (rem * 10 + (x - '0')) % 97;
        } else {
            unsigned val = (unsigned)((x | 0x20) - 'a') + 10;
            rem = (rem * 100 + val) % 97;
        }
    }
    return rem == 1;
}

/* An IBAN starting at s ("CCdd..."): the country's length in letters and
   digits, single spaces allowed between them, then mod-97. */
static void iban_at(vctx_t *v, size_t s)
{
    const uint8_t *b = v->b;
    if (!is_alpha(b[s]) || !is_alpha(b[s + 1]) || !is_digit(b[s + 2]) || !is_digit(b[s + 3]))
        return;
    if (s > v->rs && is_alnum(b[s - 1]))
        return;
    int len = iban_length(b[s], b[s + 1]);
    if (!len)
        return;
    uint8_t c[34];
    int n = 0;
    size_t p = s;
    while (n < len && p < v->re) {
        if (is_alnum(b[p])) {
            c[n++] = b[p++];
        } else if (b[p] == ' ' && n > 0 && p + 1 < v->re && is_alnum(b[p + 1])) {
            p++;
        } else {
            break;
        }
    }
    if (n < len || (p < v->re && is_alnum(b[p])) || !iban_mod97(c, (size_t)n))
        return;
    hit(v, DET_IBAN, s, p);
}

/* A NANP number whose line number ends at `to`: area code (in parentheses or
   followed by a separator), exchange, line; an optional 1 or +1 before. */
static void nanp_end(vctx_t *v, size_t to)
{
    const uint8_t *b = v->b;
    if (to < v->rs + 8 || (to < v->re && is_digit(b[to])))
        return;
    size_t ex = to - 8, q = ex, area;
    if (b[ex] < '2' || !is_digit(b[ex]) || !is_digit(b[ex + 1]) || !is_digit(b[ex + 2]) ||
        (b[ex + 3] != ' ' && b[ex + 3] != '.' && b[ex + 3] != '-'))
        return;
    for (int i = 4; i < 8; i++)
        if (!is_digit(b[ex + i]))
            return;
    if (q > v->rs && (b[q - 1] == ' ' || b[q - 1] == '.' || b[q - 1] == '-'))
        q--;
    if (q >= v->rs + 5 && b[q - 1] == ')' && b[q - 5] == '(' && is_digit(b[q - 4]) &&
        is_digit(b[q - 3]) && is_digit(b[q - 2])) {
        area = q - 4;
        q -= 5;
    } else if (q < ex && q >= v->rs + 3 && is_digit(b[q - 1]) && is_digit(b[q - 2]) &&
               is_digit(b[q - 3])) {
        area = q - 3;
        q -= 3;
    } else {
        return;
    }
    if (b[area] < '2')
        return;
    size_t s = q;
    if (s >= v->rs + 2 && (b[s - 1] == ' ' || b[s - 1] == '-' || b[s - 1] == '.') &&
        b[s - 2] == '1') {
        s -= 2;
        if (s > v->rs && b[s - 1] == '+')
            s--;
    }
    if (s > v->rs && is_digit(b[s - 1]))
        return;
    hit(v, DET_PHONE, s, to);
}

static inline bool in_cluster(uint8_t c)
{
    return is_digit(c) || c == ' ' || c == '-' || c == '.' || c == '(' || c == ')' || c == '+';
}

/* The digit gate fired: the cluster of digits and separators around it is
   searched once by every enabled digit detector. IBANs start with letters,
   which end a cluster, so their start is looked for just before it. */
static void v_digits(vctx_t *v)
{
    const uint8_t *b = v->b;
    size_t cs = v->to - 1, ce = v->to;
    while (cs > v->rs && in_cluster(b[cs - 1]))
        cs--;
    while (ce < v->re && in_cluster(b[ce]))
        ce++;
    if (ce > v->s->done[v->pi])
        v->s->done[v->pi] = (uint32_t)ce;
    if (det_on(v, DET_CARD))
        cards(v, cs, ce);
    if (det_on(v, DET_SSN))
        for (size_t i = cs; i + 11 <= ce; i++)
            ssn_at(v, i);
    if (det_on(v, DET_PHONE))
        for (size_t e = cs + 8; e <= ce; e++)
            nanp_end(v, e);
    if (det_on(v, DET_IBAN) && cs >= v->rs + 2)
        for (size_t p = cs >= v->rs + 36 ? cs - 36 : v->rs; p + 2 <= cs; p++)
            if (p + 4 <= v->re)
                iban_at(v, p);
}

static inline bool is_phone_sep(uint8_t c)
{
    return c == ' ' || c == '-' || c == '.' || c == '(' || c == ')';
}

static void v_e164(vctx_t *v)
{
    const uint8_t *b = v->b;
    size_t i = v->to;
    while (i > v->rs && b[i - 1] != '+' && v->to - i < 40)
        i--;
    if (i == v->rs || b[i - 1] != '+')
        return;
    size_t ps = i - 1;
    if (ps > v->rs && is_alnum(b[ps - 1]))
        return;
    /* Walk digits and separators; a number followed by more digits can still
       end at a group boundary where it has 8 to 15 digits. */
    size_t p = ps + 1, digits = 0, best = 0, nsep = 0;
    while (p < v->re) {
        if (is_digit(b[p])) {
            digits++;
            nsep = 0;
            p++;
            if (digits >= 8 && digits <= 15 && (p == v->re || !is_digit(b[p])))
                best = p;
        } else if (is_phone_sep(b[p]) && nsep < 2) {
            nsep++;
            p++;
        } else {
            break;
        }
    }
    if (p > v->s->done[v->pi])
        v->s->done[v->pi] = (uint32_t)p;
    if (best)
        hit(v, DET_PHONE, ps, best);
}

static void v_pem(vctx_t *v)
{
    const uint8_t *b = v->b;
    static const char begin[] = "-----BEGIN";
    size_t lim = v->to > v->rs + 64 ? v->to - 64 : v->rs, s = v->to - 10;
    while (memcmp(b + s, begin, 10)) {
        if (s == lim)
            return;
        s--;
    }
    size_t e = v->re;
    const uint8_t *end = memmem(b + v->to, v->re - v->to, "-----END", 8);
    if (end) {
        size_t after = (size_t)(end - b) + 8;
        const uint8_t *close = memmem(b + after, v->re - after, "-----", 5);
        if (close)
            e = (size_t)(close - b) + 5;
    }
    hit(v, DET_SECRET, s, e);
}

static bool jwt_header_ok(const uint8_t *h, size_t n)
{
    uint8_t dec[768];
    size_t dn = 0;
    if (n < 8 || n > 1024 || !b64_decode(dec, &dn, (const char *)h, n, B64_URL))
        return false;
    cJSON *j = cJSON_ParseWithLength((const char *)dec, dn);
    bool ok = cJSON_IsObject(j) && cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "alg"));
    cJSON_Delete(j);
    return ok;
}

static void v_jwt(vctx_t *v)
{
    const uint8_t *b = v->b;
    size_t p = v->to - 1; /* the second dot */
    size_t q = p;
    while (q > v->rs && is_b64u(b[q - 1]))
        q--;
    if (q == v->rs || b[q - 1] != '.')
        return;
    size_t he = q - 1, hs = he;
    while (hs > v->rs && is_b64u(b[hs - 1]))
        hs--;
    if (!jwt_header_ok(b + hs, he - hs))
        return;
    size_t e = v->to;
    while (e < v->re && is_b64u(b[e]))
        e++;
    for (int seg = 3; seg < 5 && e + 1 < v->re && b[e] == '.' && is_b64u(b[e + 1]); seg++)
        for (e++; e < v->re && is_b64u(b[e]);)
            e++;
    hit(v, DET_SECRET, hs, e);
}

static void v_token(vctx_t *v)
{
    size_t w = pats[v->pi].width;
    if (v->to < v->rs + w)
        return;
    size_t e = v->to;
    while (e < v->re && is_tok(v->b[e], pats[v->pi].ext))
        e++;
    hit(v, DET_SECRET, v->to - w, e);
}

static void v_aws_secret(vctx_t *v)
{
    size_t e = v->to;
    while (e < v->re && is_tok(v->b[e], X_SLASH | X_PLUS))
        e++;
    hit(v, DET_SECRET, v->to - 40, e);
}

/* ---- scan ---- */

static uint32_t region_of(const mask_scratch_t *s, size_t pos)
{
    size_t lo = 0, hi = s->nregions;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->regions[mid].end <= pos)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (uint32_t)lo;
}

static int on_match(unsigned id, unsigned long long from, unsigned long long to, unsigned flags,
                    void *ctx)
{
    (void)from;
    (void)flags;
    mask_scratch_t *s = ctx;
    unsigned pi = s->rules->pat_of_id[id];
    size_t end = (size_t)to + s->scan_off;
    if (end <= s->done[pi])
        return 0;
    uint32_t ri = region_of(s, end - 1);
    if (ri >= s->nregions || s->regions[ri].start > end - 1)
        return 0;
    vctx_t v = {s, s->base, s->regions[ri].start, s->regions[ri].end, end, ri, pi};
    switch (pats[pi].val) {
    case V_EMAIL:
        v_email(&v);
        break;
    case V_DIGITS:
        v_digits(&v);
        break;
    case V_E164:
        v_e164(&v);
        break;
    case V_PEM:
        v_pem(&v);
        break;
    case V_JWT:
        v_jwt(&v);
        break;
    case V_TOKEN:
        v_token(&v);
        break;
    case V_AWS_SECRET:
        v_aws_secret(&v);
        break;
    }
    return s->failed ? 1 : 0;
}

static int span_cmp(const void *a, const void *b)
{
    const mask_span_t *x = a, *y = b;
    if (x->start != y->start)
        return x->start < y->start ? -1 : 1;
    return x->end < y->end ? 1 : x->end > y->end ? -1 : 0;
}

/* Sort, then merge overlapping spans; a merge of different detectors whose
   methods differ is marked DET_MIXED (masked with redact). */
static void spans_normalize(const mask_rules_t *r, mask_scratch_t *s)
{
    if (s->nspans > 16) {
        qsort(s->spans, s->nspans, sizeof(*s->spans), span_cmp);
    } else { /* usually a handful, nearly sorted: insertion sort */
        for (size_t i = 1; i < s->nspans; i++) {
            mask_span_t x = s->spans[i];
            size_t j = i;
            for (; j > 0 && span_cmp(&s->spans[j - 1], &x) > 0; j--)
                s->spans[j] = s->spans[j - 1];
            s->spans[j] = x;
        }
    }
    size_t w = 0;
    for (size_t i = 0; i < s->nspans; i++) {
        mask_span_t x = s->spans[i];
        if (w && x.region == s->spans[w - 1].region && x.start < s->spans[w - 1].end) {
            mask_span_t *p = &s->spans[w - 1];
            if (x.end > p->end)
                p->end = x.end;
            if (p->det != x.det) {
                const mask_method_t *a = mask_det_method(r, p->det), *b = mask_det_method(r, x.det);
                bool same = a && b && a->kind == b->kind && a->keep_first == b->keep_first &&
                            a->keep_last == b->keep_last && a->value_len == b->value_len &&
                            (!a->value_len || !memcmp(a->value, b->value, a->value_len));
                p->det = same ? p->det : DET_MIXED;
            }
        } else {
            s->spans[w++] = x;
        }
    }
    s->nspans = w;
}

static bool ensure_scratch(const mask_rules_t *r, mask_scratch_t *s)
{
    if (s->hs && s->hs_for == r->db)
        return true;
    if (hs_alloc_scratch(r->db, &s->hs) != HS_SUCCESS)
        return false;
    s->hs_for = r->db;
    return true;
}

/* Values closer than this share one hs_scan call; farther apart (masked or
   non-text columns in between), each group gets its own: a call costs about
   as much as scanning this many bytes, and the bytes between would only feed
   matches that fall outside every region. */
#define SCAN_GAP 48

static int scan_range(const mask_rules_t *r, mask_scratch_t *s, const uint8_t *data, size_t lo,
                      size_t hi)
{
    s->scan_off = lo;
    hs_error_t rc =
        hs_scan(r->db, (const char *)data + lo, (unsigned)(hi - lo), 0, s->hs, on_match, s);
    if (rc == HS_INVALID) { /* scratch built for another database at the same address */
        s->hs_for = NULL;
        if (!ensure_scratch(r, s))
            return -1;
        rc = hs_scan(r->db, (const char *)data + lo, (unsigned)(hi - lo), 0, s->hs, on_match, s);
    }
    return (rc != HS_SUCCESS && rc != HS_SCAN_TERMINATED) || s->failed ? -1 : 0;
}

int mask_detect(const mask_rules_t *r, mask_scratch_t *s, const uint8_t *data, size_t n,
                const mask_region_t *regions, size_t nregions)
{
    s->nspans = 0;
    if (!r->db || !nregions)
        return 0;
    if (regions[nregions - 1].end > n || regions[0].start > regions[nregions - 1].end ||
        n > 0xffffffffu)
        return -1;
    if (!ensure_scratch(r, s))
        return -1;
    if (s->regions != regions) {
        if (!mask_scratch_regions(s, nregions))
            return -1;
        memcpy(s->regions, regions, nregions * sizeof(*regions));
    }
    s->nregions = nregions;
    memset(s->done, 0, sizeof(s->done));
    s->rules = r;
    s->base = data;
    s->failed = false;
    for (size_t i = 0; i < nregions;) {
        size_t lo = s->regions[i].start, hi = s->regions[i].end;
        for (i++; i < nregions && s->regions[i].start <= hi + SCAN_GAP; i++)
            hi = s->regions[i].end;
        if (hi > lo && scan_range(r, s, data, lo, hi) < 0)
            return -1;
    }
    spans_normalize(r, s);
    return (int)s->nspans;
}

static bool grow(void **p, size_t *cap, size_t n, size_t sz)
{
    if (n <= *cap && *p)
        return true;
    void *np = realloc(*p, (n ? n : 1) * sz);
    if (!np)
        return false;
    *p = np;
    *cap = n ? n : 1;
    return true;
}

bool mask_scratch_regions(mask_scratch_t *s, size_t n)
{
    return grow((void **)&s->regions, &s->capregions, n, sizeof(*s->regions)) &&
           grow((void **)&s->region_col, &s->capregcol, n, sizeof(*s->region_col));
}

int mask_detect_value(const mask_rules_t *r, mask_scratch_t *s, const uint8_t *data, size_t n)
{
    mask_region_t one = {0, (uint32_t)n};
    if (n > 0xffffffffu)
        return -1;
    return mask_detect(r, s, data, n, &one, 1);
}
