/*
 * mask internals shared by the files of src/mask/ (and the unit tests, which
 * exercise methods and detectors directly). Everything else goes through
 * mask/mask.h.
 */
#ifndef BULWARK_MASK_INTERNAL_H
#define BULWARK_MASK_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hs/hs.h>
#include <openssl/evp.h>

#include "mask/mask.h"
#include "util/buf.h"

/* ---- detectors ---- */

enum { DET_EMAIL, DET_CARD, DET_SSN, DET_IBAN, DET_PHONE, DET_SECRET, DET_N };
#define DET_MIXED 0xff /* a merged span found by detectors with different methods */

extern const char *const mask_detector_names[DET_N];
int mask_detector_index(const char *name); /* -1 if unknown */

/* Column masks per role are capped so that a column's lineage (the set of
 * masked columns it carries) is a fixed-size bit set. */
#define MASK_MAX_COLUMNS 256
#define MASK_WORDS (MASK_MAX_COLUMNS / 64)

typedef struct mask_colmask {
    char *name; /* "schema.table.column" as configured */
    char *schema, *table, *column;
    mask_method_t method;
    bool pred_allow; /* in_predicates: "allow" */
} mask_colmask_t;

struct mask_rules {
    int refs; /* atomic */
    mask_colmask_t *cols;
    size_t ncols;
    unsigned det_on;                 /* bit per DET_* */
    mask_method_t det_method[DET_N]; /* for enabled detectors */
    hs_database_t *db;               /* NULL when no detector is on */
    unsigned npats;
    uint16_t *pat_of_id; /* hs id -> index in the static pattern table */
    uint8_t *key;        /* HMAC key for "hash" (copy, wiped on release) */
    size_t keylen;
    EVP_MD_CTX *hmac_inner, *hmac_outer; /* SHA-256 states after the key pads */
};

int mask_detect_compile(mask_rules_t *r, char *err, size_t errsz);

/* Lookup of a column mask by its parts; -1 when the column is not masked. */
int mask_rules_find(const mask_rules_t *r, const char *schema, const char *table,
                    const char *column);

/* A validated detector hit: [start, end) in the scanned buffer. */
typedef struct mask_span {
    uint32_t start, end;
    uint32_t region; /* index of the region (value) it lies in */
    uint8_t det;     /* DET_* or DET_MIXED */
} mask_span_t;

/* A window of the scanned buffer that holds one value. Matches are validated
 * only inside a single region: bytes between regions (DataRow length words)
 * never join two values. */
typedef struct mask_region {
    uint32_t start, end;
} mask_region_t;

#define MASK_NPAT_MAX 32

/* A DataRow value: offset of its bytes in the message body, length (-1 NULL). */
typedef struct mask_val {
    uint32_t off;
    int32_t len;
} mask_val_t;

struct mask_scratch {
    hs_scratch_t *hs;
    const hs_database_t *hs_for; /* the database hs was last checked against */
    mask_span_t *spans;
    size_t nspans, capspans;
    mask_region_t *regions;
    size_t nregions, capregions;
    uint32_t *region_col; /* DataRow: column of each region */
    size_t capregcol;
    mask_val_t *vals; /* DataRow: the values of the row being rewritten */
    size_t capvals;
    uint32_t done[MASK_NPAT_MAX]; /* per pattern: end of the last region validated */
    /* scan context */
    const mask_rules_t *rules;
    const uint8_t *base; /* the buffer being scanned */
    size_t scan_off;     /* where in base the scan started */
    bool failed;
    EVP_MD_CTX *md;
    buf_t tmp;  /* decoded values (COPY text fields, binary ints) */
    buf_t tmp2; /* method output before re-encoding */
};

/* Scans data[0..n) once and leaves in s->spans the validated hits that lie
 * inside the given regions (sorted by start, overlaps merged). Returns the
 * number of spans, or -1 on failure (allocation, scan error). No detector on:
 * returns 0 without scanning. */
int mask_detect(const mask_rules_t *r, mask_scratch_t *s, const uint8_t *data, size_t n,
                const mask_region_t *regions, size_t nregions);
/* Room for n regions (and their columns) in s; false on allocation failure. */
bool mask_scratch_regions(mask_scratch_t *s, size_t n);
/* Convenience: one region = the whole buffer. */
int mask_detect_value(const mask_rules_t *r, mask_scratch_t *s, const uint8_t *data, size_t n);

/* ---- methods ---- */

/* Appends the masked form of the text v[0..n) to out. Returns 0, or 1 when the
 * result is SQL NULL (nothing appended). Buffer failure shows in out->failed. */
int mask_method_apply(const mask_rules_t *r, mask_scratch_t *s, const mask_method_t *m,
                      const uint8_t *v, size_t n, buf_t *out);
/* The same for a value whose binary representation has no text form: redact,
 * fixed, null as usual; hash over the bytes; partial and email become redact. */
int mask_method_apply_opaque(const mask_rules_t *r, mask_scratch_t *s, const mask_method_t *m,
                             const uint8_t *v, size_t n, buf_t *out);
/* Rewrites v with every span (offsets relative to v) replaced by its
 * detector's method; "null" spans become "****" here (a span cannot be NULL). */
void mask_apply_spans(const mask_rules_t *r, mask_scratch_t *s, const uint8_t *v, size_t n,
                      const mask_span_t *spans, size_t nspans, uint32_t off, buf_t *out);
/* True when some span's detector method is "null" (the whole value becomes NULL). */
bool mask_spans_null(const mask_rules_t *r, const mask_span_t *spans, size_t nspans);

const mask_method_t *mask_det_method(const mask_rules_t *r, uint8_t det);
void mask_hmac_hex(const mask_rules_t *r, mask_scratch_t *s, const uint8_t *v, size_t n,
                   char hex[65]);
size_t mask_utf8_len(const uint8_t *p, size_t n); /* characters; invalid bytes count 1 each */

#define MASK_REDACTED "****"

/* ---- plans (built by lineage.c, used by rewrite.c and copy.c) ---- */

typedef enum {
    MR_NONE,      /* not masked */
    MR_COLUMN,    /* a bare reference (or cast) of one masked column */
    MR_EXPR,      /* an expression over masked columns */
    MR_WHOLEROW,  /* a whole-row reference that includes masked columns */
    MR_UNCERTAIN, /* lineage could not be established */
    MR_SHAPE,     /* result shape does not match the statement's plan */
    MR_ROWDESC,   /* RowDescription names a masked table column */
} mask_reason_t;

typedef struct mask_pcol {
    char *name;           /* output name, for explain */
    int mask;             /* column mask index for MR_COLUMN, else -1 */
    mask_reason_t reason; /* MR_NONE = unmasked */
    bool var;             /* stands for a run of columns of unknown width (star) */
    char *detail;         /* sources or why uncertain, for explain */
} mask_pcol_t;

typedef struct mask_puse {
    int mask;     /* column mask index, or -1 for a column of unknown lineage */
    char *clause; /* "WHERE", "JOIN ON", "INSERT INTO public.orders.note", ... */
    bool sink;    /* written somewhere (always denied) rather than filtered on */
    char *detail; /* for unknown lineage: why */
} mask_puse_t;

typedef enum { MASK_COPY_TEXT, MASK_COPY_CSV, MASK_COPY_BINARY } mask_copy_fmt_t;

struct mask_plan {
    int refs;
    mask_rules_t *rules;
    mask_stmt_kind_t kind;
    char *name; /* cursor / prepared statement / portal name */
    mask_pcol_t *cols;
    size_t ncols;
    bool mask_all; /* shape unknown: every column of the result is redacted */
    bool touched;  /* reads a masked column or something of unknown lineage */
    mask_puse_t *uses;
    size_t nuses;
    struct {
        mask_copy_fmt_t fmt;
        char delim, quote, escape;
        char *null_str;
        bool header;
        char *refusal; /* set when COPY output cannot be masked */
    } copy;
};

/* The method a plan column applies (NULL = none). */
const mask_method_t *mask_pcol_method(const mask_plan_t *p, const mask_pcol_t *c);

/* Binds a plan to a result of n columns. out[i] receives the method for
 * column i (NULL = unmasked) and reasons[i] its reason (may be NULL). */
void mask_plan_bind(const mask_plan_t *p, size_t n, const mask_method_t **out,
                    mask_reason_t *reasons, int *masks);

#endif
