/*
 * pgwire — the PostgreSQL frontend/backend protocol 3.0 as data.
 *
 * Pure functions over bytes: no sockets, no policy, no allocation in readers.
 * Reference: PostgreSQL docs, chapter "Frontend/Backend Protocol"
 * (55.7 "Message Formats" in PG 15; section numbers below refer to PG 15).
 *
 * Framing. A regular message is  type:u8  length:i32  body[length-4];
 * startup-phase packets (StartupMessage, SSLRequest, GSSENCRequest,
 * CancelRequest) have no type byte and their length counts itself.
 *
 * Readers take (body, len): the message BODY after the 5-byte header. They
 * check every length against what is left, require every string to be
 * NUL-terminated inside the body, require the body to be consumed exactly
 * (as the server's pq_getmsgend() does), and return 0 on success, -1 when
 * malformed. Pointers they return point into body: keep body alive.
 * Variable-length parts (Bind parameters, RowDescription fields, DataRow
 * columns, ...) are validated by the reader up front and walked afterwards
 * with a pgw_iter_t, whose next() functions then cannot fail.
 *
 * Writers append one whole message to a buf_t (type byte, length
 * back-patched). They never fail by themselves: a failed allocation or a
 * buffer limit sets the buffer's sticky `failed` flag, which the caller
 * checks once after building (see util/buf.h).
 *
 * Counts on the wire are Int16 in the docs but the server reads them as
 * unsigned (pq_getmsgint(msg, 2)), e.g. Bind accepts up to 65535 parameters;
 * so counts here are uint16_t.
 */
#ifndef BULWARK_PGWIRE_PGWIRE_H
#define BULWARK_PGWIRE_PGWIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

#define PGW_WUR __attribute__((warn_unused_result))

#define PGW_PROTO_V3 196608u /* 3 << 16 */
#define PGW_SSL_REQUEST 80877103u
#define PGW_GSSENC_REQUEST 80877104u
#define PGW_CANCEL_REQUEST 80877102u
#define PGW_MAX_STARTUP 10000u /* as PostgreSQL's MAX_STARTUP_PACKET_LENGTH */
#define PGW_MAX_PARAMS 64

#define PGW_PROTO_MAJOR(v) ((v) >> 16)
#define PGW_PROTO_MINOR(v) ((v)&0xffffu)

/* Message type bytes. Several letters mean different things per direction. */
enum {
    /* frontend -> backend */
    PGW_FE_BIND = 'B',
    PGW_FE_CLOSE = 'C',
    PGW_FE_COPY_DATA = 'd',
    PGW_FE_COPY_DONE = 'c',
    PGW_FE_COPY_FAIL = 'f',
    PGW_FE_DESCRIBE = 'D',
    PGW_FE_EXECUTE = 'E',
    PGW_FE_FLUSH = 'H',
    PGW_FE_FUNCTION_CALL = 'F',
    PGW_FE_PARSE = 'P',
    PGW_FE_PASSWORD = 'p', /* also GSSResponse, SASLInitialResponse, SASLResponse */
    PGW_FE_QUERY = 'Q',
    PGW_FE_SYNC = 'S',
    PGW_FE_TERMINATE = 'X',
};
enum {
    /* backend -> frontend */
    PGW_BE_AUTH = 'R',
    PGW_BE_BACKEND_KEY = 'K',
    PGW_BE_BIND_COMPLETE = '2',
    PGW_BE_CLOSE_COMPLETE = '3',
    PGW_BE_COMMAND_COMPLETE = 'C',
    PGW_BE_COPY_DATA = 'd',
    PGW_BE_COPY_DONE = 'c',
    PGW_BE_COPY_IN = 'G',
    PGW_BE_COPY_OUT = 'H',
    PGW_BE_COPY_BOTH = 'W',
    PGW_BE_DATA_ROW = 'D',
    PGW_BE_EMPTY_QUERY = 'I',
    PGW_BE_ERROR = 'E',
    PGW_BE_FUNCTION_CALL_RESPONSE = 'V',
    PGW_BE_NEGOTIATE_VERSION = 'v',
    PGW_BE_NO_DATA = 'n',
    PGW_BE_NOTICE = 'N',
    PGW_BE_NOTIFICATION = 'A',
    PGW_BE_PARAMETER_DESCRIPTION = 't',
    PGW_BE_PARAMETER_STATUS = 'S',
    PGW_BE_PARSE_COMPLETE = '1',
    PGW_BE_PORTAL_SUSPENDED = 's',
    PGW_BE_READY = 'Z',
    PGW_BE_ROW_DESCRIPTION = 'T',
};

/* Authentication request codes (the Int32 after 'R'). */
enum {
    PGW_AUTH_OK = 0,
    PGW_AUTH_KERBEROS_V5 = 2,
    PGW_AUTH_CLEARTEXT = 3,
    PGW_AUTH_MD5 = 5,
    PGW_AUTH_GSS = 7,
    PGW_AUTH_GSS_CONTINUE = 8,
    PGW_AUTH_SSPI = 9,
    PGW_AUTH_SASL = 10,
    PGW_AUTH_SASL_CONTINUE = 11,
    PGW_AUTH_SASL_FINAL = 12,
};

/* Format codes (Bind, RowDescription, COPY responses, FunctionCall). */
enum { PGW_FMT_TEXT = 0, PGW_FMT_BINARY = 1 };

/* ------------------------------------------------------------------ */
/* Framing                                                             */

typedef struct pgw_hdr {
    char type;
    uint32_t len; /* body length = wire length - 4 */
} pgw_hdr_t;

/* Regular typed message: 1 = header complete and valid (5 bytes seen), 0 = need more bytes,
   -1 = malformed (wire length < 4 or >= 2^31, or body > max_body). Does not require the body
   to be present. */
int pgw_frame(const uint8_t *p, size_t n, size_t max_body, pgw_hdr_t *h) PGW_WUR;

/* Startup-phase packets (no type byte): length includes itself.
   1 ok, 0 need more (<4 bytes), -1 len < 8 or > PGW_MAX_STARTUP. */
int pgw_startup_len(const uint8_t *p, size_t n, uint32_t *len) PGW_WUR;

typedef struct pgw_startup {
    uint32_t code; /* protocol version, or SSL/GSSENC/CANCEL request code */
    int nparams;
    const char *keys[PGW_MAX_PARAMS];
    const char *vals[PGW_MAX_PARAMS];
    uint32_t cancel_pid, cancel_key; /* for CancelRequest */
} pgw_startup_t;

/* pkt includes the length word; len is the whole packet. -1 malformed: length word !=
   len, missing terminators, terminator not the last byte, too many params, empty key,
   wrong size for SSL/GSS/cancel (8/8/16 bytes), protocol major version other than 3.
   Duplicate keys are kept (PostgreSQL lets the last one win; see pgw_startup_get). */
int pgw_parse_startup(const uint8_t *pkt, size_t len, pgw_startup_t *out) PGW_WUR;
/* Value of `key` (exact, case-sensitive; the LAST occurrence, as the server does), or NULL. */
const char *pgw_startup_get(const pgw_startup_t *s, const char *key);

/* ------------------------------------------------------------------ */
/* Iterators over validated variable-length parts                      */

typedef struct pgw_iter {
    const uint8_t *p, *end;
    uint32_t left; /* items left (unused for 0-terminated lists) */
} pgw_iter_t;

/* A column/parameter value: len -1 = SQL NULL (data NULL). */
typedef struct pgw_value {
    const void *data;
    int32_t len;
} pgw_value_t;

/* Bind parameters, DataRow columns, FunctionCall arguments.
   1 = *val and *len set (len -1, val NULL for NULL), 0 = no more. */
int pgw_values_next(pgw_iter_t *it, const uint8_t **val, int32_t *len);

/* A list of Int16 format codes with PostgreSQL's rule (PG docs 55.7, Bind): zero codes =
   all text, one code = applies to all, otherwise one per item. Returns 0/1, or -1 when
   i is beyond a per-item list. */
typedef struct pgw_formats {
    uint16_t n;
    const uint8_t *p; /* n big-endian Int16, each validated to be 0 or 1 */
} pgw_formats_t;
int pgw_format_of(const pgw_formats_t *f, unsigned i);

/* A list of Int32 OIDs (Parse parameter types, ParameterDescription). 0 if i >= n. */
typedef struct pgw_oids {
    uint16_t n;
    const uint8_t *p;
} pgw_oids_t;
uint32_t pgw_oid_at(const pgw_oids_t *o, unsigned i);

/* ------------------------------------------------------------------ */
/* Writers: framing                                                    */

/* Starts a message: type 0 = no type byte (startup-style). Returns a mark for pgw_end:
   the offset of the LENGTH WORD counted from buf_head(b) (not from b->data: buf_reserve
   may compact the buffer while the message grows, which moves data but not this
   offset). Do not consume from b between pgw_begin and pgw_end. */
size_t pgw_begin(buf_t *b, char type);
/* Back-patches the length (sets b->failed if the message exceeds 2^31-1 bytes). */
void pgw_end(buf_t *b, size_t start);
/* Appends Int32 len + bytes (len -1 = NULL, nothing follows): a Bind/DataRow value. */
void pgw_put_value(buf_t *b, const void *data, int32_t len);

/* ------------------------------------------------------------------ */
/* Writers: frontend messages                                          */

void pgw_write_startup(buf_t *b, uint32_t version,
                       const char *const *kv); /* kv: key,value,...,NULL */
void pgw_write_ssl_request(buf_t *b);
void pgw_write_gssenc_request(buf_t *b);
void pgw_write_cancel_request(buf_t *b, uint32_t pid, uint32_t key);
void pgw_write_password(buf_t *b, const char *pw);                 /* 'p' */
void pgw_write_gss_response(buf_t *b, const void *data, size_t n); /* 'p', raw */
/* 'p': mechanism name, Int32 length (-1 when data is NULL), data */
void pgw_write_sasl_initial(buf_t *b, const char *mech, const void *data, size_t n);
void pgw_write_sasl_response(buf_t *b, const void *data, size_t n); /* 'p', raw */
void pgw_write_query(buf_t *b, const char *sql);
void pgw_write_parse(buf_t *b, const char *stmt, const char *sql, const uint32_t *types,
                     uint16_t ntypes);
/* pfmts/rfmts: format code lists (see pgw_formats_t); params[i].len -1 = NULL. */
void pgw_write_bind(buf_t *b, const char *portal, const char *stmt, const int16_t *pfmts,
                    uint16_t npfmts, const pgw_value_t *params, uint16_t nparams,
                    const int16_t *rfmts, uint16_t nrfmts);
void pgw_write_describe(buf_t *b, char kind /* 'S' or 'P' */, const char *name);
void pgw_write_execute(buf_t *b, const char *portal, int32_t max_rows /* 0 = all */);
void pgw_write_close(buf_t *b, char kind /* 'S' or 'P' */, const char *name);
void pgw_write_sync(buf_t *b);
void pgw_write_flush(buf_t *b);
void pgw_write_terminate(buf_t *b);
void pgw_write_copy_data(buf_t *b, const void *data, size_t n); /* 'd', either direction */
void pgw_write_copy_done(buf_t *b);                             /* 'c', either direction */
void pgw_write_copy_fail(buf_t *b, const char *msg);
void pgw_write_function_call(buf_t *b, uint32_t fn_oid, const int16_t *afmts, uint16_t nafmts,
                             const pgw_value_t *args, uint16_t nargs, int16_t result_fmt);

/* ------------------------------------------------------------------ */
/* Writers: backend messages                                           */

void pgw_write_auth(buf_t *b, uint32_t code, const void *data, size_t n); /* 'R' generic */
void pgw_write_auth_ok(buf_t *b);
void pgw_write_auth_cleartext(buf_t *b);
void pgw_write_auth_md5(buf_t *b, const uint8_t salt[4]);
/* AuthenticationSASL: mechs is a NULL-terminated list of names. */
void pgw_write_auth_sasl(buf_t *b, const char *const *mechs);
void pgw_write_auth_sasl_continue(buf_t *b, const void *data, size_t n);
void pgw_write_auth_sasl_final(buf_t *b, const void *data, size_t n);
void pgw_write_parameter_status(buf_t *b, const char *k, const char *v);
void pgw_write_backend_key(buf_t *b, uint32_t pid, uint32_t key);
void pgw_write_ready(buf_t *b, char status);
void pgw_write_command_complete(buf_t *b, const char *tag);
/* Bodiless messages: ParseComplete '1', BindComplete '2', CloseComplete '3', NoData 'n',
   PortalSuspended 's', EmptyQueryResponse 'I' (and Sync, Flush, CopyDone, Terminate). */
void pgw_write_empty(buf_t *b, char type);
void pgw_write_notification(buf_t *b, uint32_t pid, const char *channel, const char *payload);
void pgw_write_parameter_description(buf_t *b, const uint32_t *oids, uint16_t n);
/* COPY responses: type 'G' (in), 'H' (out), 'W' (both); overall 0/1, one code per column. */
void pgw_write_copy_response(buf_t *b, char type, int8_t overall, const int16_t *fmts,
                             uint16_t ncols);
void pgw_write_function_call_response(buf_t *b, const void *data, int32_t len /* -1 = NULL */);

/* RowDescription: one entry per field. */
typedef struct pgw_column {
    const char *name;
    uint32_t table_oid; /* 0 if not a table column */
    int16_t attnum;     /* 0 if not a table column */
    uint32_t type_oid;
    int16_t typlen; /* negative = variable width */
    int32_t typmod;
    int16_t format; /* 0 text, 1 binary */
} pgw_column_t;
void pgw_write_row_description(buf_t *b, const pgw_column_t *cols, uint16_t n);

/* DataRow: whole, or streamed (pgw_datarow_begin, n x pgw_put_value, pgw_end). */
void pgw_write_datarow(buf_t *b, const pgw_value_t *cols, uint16_t n);
size_t pgw_datarow_begin(buf_t *b, uint16_t ncols);

/* ErrorResponse/NoticeResponse: S and V = severity, C = sqlstate, M = message; optional D
   detail, H hint, P position (0 = none). Writers skip NULL optional fields. */
typedef struct pgw_error {
    const char *severity, *sqlstate, *message, *detail, *hint;
    int position;
    /* readers also fill: */ const char *where, *schema, *table, *column, *constraint, *routine;
    /* and, beyond the common set (writers emit them too when non-NULL/non-zero): */
    const char *severity_nl;    /* V: never localized (9.6+); readers: NULL if absent */
    const char *data_type;      /* d */
    const char *internal_query; /* q */
    int internal_position;      /* p */
    const char *file, *line;    /* F, L */
} pgw_error_t;
void pgw_write_error(buf_t *b, const char *severity, const char *sqlstate, const char *message);
void pgw_write_error_full(buf_t *b, char type /* 'E' or 'N' */, const pgw_error_t *e);
/* Building an error field by field (e.g. to re-emit a read error with fields rewritten):
   start = pgw_begin(b, 'E'); pgw_put_error_field(b, 'S', "ERROR"); ...; pgw_end_error(b, start). */
void pgw_put_error_field(buf_t *b, char code, const char *value);
void pgw_end_error(buf_t *b, size_t start); /* the terminating zero byte, then pgw_end */

void pgw_write_negotiate_version(buf_t *b, uint32_t newest_minor, const char *const *unrecognized,
                                 int n);

/* ------------------------------------------------------------------ */
/* Readers: backend messages (body after the 5-byte header)            */

typedef struct pgw_auth {
    uint32_t code;
    const uint8_t *data;
    size_t len;
} pgw_auth_t; /* 'R' */
/* Checks the size of every known code: Ok/KerberosV5/Cleartext/GSS/SSPI no data, MD5
   exactly a 4-byte salt, SASL a list of non-empty names ending with an empty one.
   Unknown codes are returned as is (the caller refuses them by name). */
int pgw_read_auth(const uint8_t *body, size_t len, pgw_auth_t *out) PGW_WUR;
/* Iterate AuthenticationSASL mechanism names: it = pgw_auth_sasl_mechs(&a). */
pgw_iter_t pgw_auth_sasl_mechs(const pgw_auth_t *a);
int pgw_sasl_mech_next(pgw_iter_t *it, const char **name);
bool pgw_auth_sasl_has(const pgw_auth_t *a, const char *mech);

int pgw_read_error(const uint8_t *body, size_t len, pgw_error_t *out) PGW_WUR; /* 'E' or 'N' */
/* Iterate raw fields of an ErrorResponse/NoticeResponse (after pgw_read_error succeeded
   on the same body): it = pgw_error_fields(body, len). */
pgw_iter_t pgw_error_fields(const uint8_t *body, size_t len);
int pgw_error_field_next(pgw_iter_t *it, char *code, const char **value);

int pgw_read_parameter_status(const uint8_t *body, size_t len, const char **k,
                              const char **v) PGW_WUR;
int pgw_read_backend_key(const uint8_t *body, size_t len, uint32_t *pid, uint32_t *key) PGW_WUR;
int pgw_read_ready(const uint8_t *body, size_t len,
                   char *status) PGW_WUR; /* status must be I, T or E */
int pgw_read_command_complete(const uint8_t *body, size_t len, const char **tag) PGW_WUR;
/* Bodiless messages (ParseComplete, BindComplete, ..., Sync, Flush, CopyDone, Terminate). */
int pgw_read_empty(const uint8_t *body, size_t len) PGW_WUR;

typedef struct pgw_notification {
    uint32_t pid;
    const char *channel, *payload;
} pgw_notification_t;
int pgw_read_notification(const uint8_t *body, size_t len, pgw_notification_t *out) PGW_WUR;

int pgw_read_parameter_description(const uint8_t *body, size_t len, pgw_oids_t *out) PGW_WUR;

typedef struct pgw_row_description {
    uint16_t nfields;
    pgw_iter_t fields; /* copy, then pgw_column_next */
} pgw_row_description_t;
int pgw_read_row_description(const uint8_t *body, size_t len, pgw_row_description_t *out) PGW_WUR;
int pgw_column_next(pgw_iter_t *it, pgw_column_t *col);

typedef struct pgw_datarow {
    uint16_t ncols;
    pgw_iter_t cols; /* copy, then pgw_values_next */
} pgw_datarow_t;
int pgw_read_datarow(const uint8_t *body, size_t len, pgw_datarow_t *out) PGW_WUR;

typedef struct pgw_negotiate {
    uint32_t newest_minor;
    uint32_t n;
    pgw_iter_t options; /* unrecognized option names: pgw_string_next */
} pgw_negotiate_t;
int pgw_read_negotiate_version(const uint8_t *body, size_t len, pgw_negotiate_t *out) PGW_WUR;
int pgw_string_next(pgw_iter_t *it, const char **s);

typedef struct pgw_copy_response {
    int8_t overall;     /* 0 text, 1 binary */
    pgw_formats_t cols; /* one code per column (n may be 0) */
} pgw_copy_response_t;
/* CopyInResponse, CopyOutResponse, CopyBothResponse (same body). With overall 0 (text) every
   column code must be 0 (PG docs 55.7). */
int pgw_read_copy_response(const uint8_t *body, size_t len, pgw_copy_response_t *out) PGW_WUR;
/* FunctionCallResponse: *data NULL and *n -1 for a NULL result. */
int pgw_read_function_call_response(const uint8_t *body, size_t len, const uint8_t **data,
                                    int32_t *n) PGW_WUR;

/* ------------------------------------------------------------------ */
/* Readers: frontend messages                                          */

/* 'p' as cleartext: NUL-terminated, no embedded NUL; *pwlen excludes the NUL. */
int pgw_read_password(const uint8_t *body, size_t len, const char **pw, size_t *pwlen) PGW_WUR;
/* 'p' as SASLInitialResponse: *data NULL and *n -1 when the client sent no data (-1). */
int pgw_read_sasl_initial(const uint8_t *body, size_t len, const char **mech, const uint8_t **data,
                          int32_t *n) PGW_WUR;
/* SASLResponse, GSSResponse and CopyData are raw bytes: the body itself is the payload. */

/* Query: *sql is NUL-terminated at body[len-1]; its length is len - 1. */
int pgw_read_query(const uint8_t *body, size_t len, const char **sql) PGW_WUR;

typedef struct pgw_parse {
    const char *stmt; /* "" = unnamed */
    const char *sql;
    size_t sql_len;
    pgw_oids_t param_types;
} pgw_parse_t;
int pgw_read_parse(const uint8_t *body, size_t len, pgw_parse_t *out) PGW_WUR;

typedef struct pgw_bind {
    const char *portal, *stmt;
    pgw_formats_t param_formats; /* count is 0, 1 or nparams (checked) */
    uint16_t nparams;
    pgw_iter_t params;            /* copy, then pgw_values_next */
    pgw_formats_t result_formats; /* count vs columns is the server's to check */
} pgw_bind_t;
int pgw_read_bind(const uint8_t *body, size_t len, pgw_bind_t *out) PGW_WUR;

/* Describe and Close: kind 'S' (statement) or 'P' (portal). */
typedef struct pgw_target {
    char kind;
    const char *name;
} pgw_target_t;
int pgw_read_describe(const uint8_t *body, size_t len, pgw_target_t *out) PGW_WUR;
int pgw_read_close(const uint8_t *body, size_t len, pgw_target_t *out) PGW_WUR;

/* Execute: max_rows <= 0 means no limit (the server treats any non-positive value so). */
int pgw_read_execute(const uint8_t *body, size_t len, const char **portal,
                     int32_t *max_rows) PGW_WUR;
int pgw_read_copy_fail(const uint8_t *body, size_t len, const char **msg) PGW_WUR;

typedef struct pgw_function_call {
    uint32_t fn_oid;
    pgw_formats_t arg_formats; /* count 0, 1 or nargs (checked) */
    uint16_t nargs;
    pgw_iter_t args; /* pgw_values_next */
    int16_t result_format;
} pgw_function_call_t;
int pgw_read_function_call(const uint8_t *body, size_t len, pgw_function_call_t *out) PGW_WUR;

/* ------------------------------------------------------------------ */
/* SCRAM-SHA-256 client (RFC 5802/7677 as PostgreSQL uses it, PG docs 55.3.1)            */

#define PGW_SCRAM_MECH "SCRAM-SHA-256"
#define PGW_SCRAM_KEY_LEN 32
/* PBKDF2 runs on the caller's thread, so cap the server-chosen iteration count: PostgreSQL's
   default is 4096 (~2 ms); 10^6 costs ~0.5 s of CPU, 10^7 ~5 s. Use a pgw_scram_cache_t to
   pay it once per credential rather than per login. */
#define PGW_SCRAM_MAX_ITERATIONS 1000000u
#define PGW_SCRAM_MAX_SALT 256 /* decoded bytes; PostgreSQL uses 16 */

/* Optional cache of the salted password, so that repeated logins with the same credential
   skip PBKDF2 (the server's salt and iteration count are per role and stable). Owned by the
   caller, zero-initialised; tied to the password by its SHA-256, so a rotated password
   simply misses. Wipe with pgw_scram_cache_clear. */
typedef struct pgw_scram_cache {
    bool valid;
    uint32_t iterations;
    size_t salt_len;
    uint8_t salt[PGW_SCRAM_MAX_SALT];
    uint8_t password_hash[32];
    uint8_t salted[PGW_SCRAM_KEY_LEN];
} pgw_scram_cache_t;
void pgw_scram_cache_clear(pgw_scram_cache_t *c);

typedef struct pgw_scram {
    int state;                   /* internal: which message comes next */
    char *password;              /* heap copy, wiped on free */
    char *client_first_bare;     /* "n=<user>,r=<nonce>" */
    size_t nonce_off, nonce_len; /* client nonce inside client_first_bare */
    pgw_scram_cache_t *cache;    /* optional, see pgw_scram_set_cache */
    uint8_t server_signature[PGW_SCRAM_KEY_LEN];
} pgw_scram_t;

int pgw_scram_init(pgw_scram_t *s, const char *user,
                   const char *password) PGW_WUR; /* random 18-byte nonce, base64 */
/* nonce: printable ASCII without ',' (for tests). */
int pgw_scram_init_nonce(pgw_scram_t *s, const char *user, const char *password,
                         const char *nonce) PGW_WUR;
/* Use (and fill) a salted-password cache for this exchange; call before client_final. */
void pgw_scram_set_cache(pgw_scram_t *s, pgw_scram_cache_t *cache);
/* Appends the client-first-message text "n,,n=<user>,r=<nonce>" (not a PG message). */
int pgw_scram_client_first(pgw_scram_t *s, buf_t *out) PGW_WUR;
/* Parses server-first "r=<nonce>,s=<salt>,i=<iterations>" (strictly: no extensions, as
   libpq): the server nonce must extend ours, salt valid non-empty base64, 1 <= i <=
   PGW_SCRAM_MAX_ITERATIONS. Appends client-final "c=biws,r=<nonce>,p=<proof>". */
int pgw_scram_client_final(pgw_scram_t *s, const uint8_t *server_first, size_t n,
                           buf_t *out) PGW_WUR;
/* 0 if server-final is exactly "v=<base64 signature>" and the signature matches
   (CRYPTO_memcmp); -1 otherwise, and on "e=<error>". */
int pgw_scram_verify_final(pgw_scram_t *s, const uint8_t *server_final, size_t n) PGW_WUR;
void pgw_scram_free(pgw_scram_t *s); /* OPENSSL_cleanse secrets */

/* MD5: "md5" + md5hex(md5hex(password + user) + salt), NUL-terminated (35 chars + NUL). */
void pgw_md5_password(const char *user, const char *password, const uint8_t salt[4], char out[36]);

/* Base64 (RFC 4648, padded). Decode is strict: length multiple of 4, alphabet only,
   '=' only as final padding, unused bits zero (canonical); returns the decoded length or -1
   (also when out is too small). */
size_t pgw_base64_encode(const uint8_t *in, size_t n, char *out, size_t outsz); /* 0 if too small */
int pgw_base64_decode(const char *in, size_t n, uint8_t *out, size_t outsz) PGW_WUR;

/* ------------------------------------------------------------------ */
/* Names for logs: 'Q' -> "Query", ... "?" unknown                     */

const char *pgw_frontend_name(char type);
const char *pgw_backend_name(char type);
const char *pgw_auth_name(uint32_t code); /* "SASL", "MD5Password", ... "?" */

#endif
