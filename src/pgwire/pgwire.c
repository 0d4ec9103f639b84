/*
 * pgwire — framing, startup packets, message readers and writers.
 * SCRAM, MD5 and base64 live in scram.c. Section numbers: PG 15 docs.
 */
#include "pgwire/pgwire.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Bounds-checked reading cursor with a sticky failure flag            */

typedef struct rd {
    const uint8_t *p, *end;
    bool bad;
} rd_t;

static rd_t rd_open(const uint8_t *body, size_t len)
{
    static const uint8_t none[1];
    if (!body) { /* no pointer arithmetic on NULL; a NULL body is only valid when empty */
        rd_t r = {none, none, len != 0};
        return r;
    }
    rd_t r = {body, body + len, false};
    return r;
}

static size_t rd_left(const rd_t *r)
{
    return r->bad ? 0 : (size_t)(r->end - r->p);
}

static const uint8_t *rd_bytes(rd_t *r, size_t n)
{
    if (r->bad || rd_left(r) < n) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *q = r->p;
    r->p += n;
    return q;
}

static uint8_t rd_byte(rd_t *r)
{
    const uint8_t *q = rd_bytes(r, 1);
    return q ? q[0] : 0;
}

static uint16_t rd_int16(rd_t *r)
{
    const uint8_t *q = rd_bytes(r, 2);
    return q ? rd_u16(q) : 0;
}

static uint32_t rd_int32(rd_t *r)
{
    const uint8_t *q = rd_bytes(r, 4);
    return q ? rd_u32(q) : 0;
}

/* A NUL-terminated string that must end inside the body. */
static const char *rd_str(rd_t *r)
{
    size_t left = rd_left(r);
    const uint8_t *nul = left ? memchr(r->p, 0, left) : NULL;
    if (!nul) {
        r->bad = true;
        return NULL;
    }
    const char *s = (const char *)r->p;
    r->p = nul + 1;
    return s;
}

/* The body must be consumed exactly, as the server's pq_getmsgend() demands. */
static int rd_done(const rd_t *r)
{
    return !r->bad && r->p == r->end ? 0 : -1;
}

/* Int16 format codes: count then codes, each 0 (text) or 1 (binary). */
static void rd_formats(rd_t *r, pgw_formats_t *f)
{
    f->n = rd_int16(r);
    f->p = rd_bytes(r, (size_t)f->n * 2);
    for (unsigned i = 0; f->p && i < f->n; i++) {
        if (rd_u16(f->p + 2 * i) > PGW_FMT_BINARY)
            r->bad = true;
    }
}

/* n values, each Int32 length (-1 = NULL, other negatives invalid) then bytes. */
static void rd_values(rd_t *r, uint16_t n, pgw_iter_t *it)
{
    it->p = r->p;
    it->left = n;
    for (unsigned i = 0; i < n && !r->bad; i++) {
        int32_t l = (int32_t)rd_int32(r);
        if (l == -1)
            continue;
        if (l < 0)
            r->bad = true;
        else
            rd_bytes(r, (size_t)l);
    }
    it->end = r->p;
}

/* Per PG docs 55.7 (Bind, FunctionCall): the format count is 0, 1 or the item count. */
static void rd_check_format_count(rd_t *r, const pgw_formats_t *f, uint16_t nitems)
{
    if (f->n > 1 && f->n != nitems)
        r->bad = true;
}

/* ------------------------------------------------------------------ */
/* Framing and startup packets (PG docs 55.2.1, 55.2.10, 55.2.11)      */

int pgw_frame(const uint8_t *p, size_t n, size_t max_body, pgw_hdr_t *h)
{
    if (n < 5)
        return 0;
    uint32_t wire = rd_u32(p + 1);
    /* The length is an Int32 that counts itself; the server treats >= 2^31 as negative. */
    if (wire < 4 || wire > INT32_MAX)
        return -1;
    if ((size_t)(wire - 4) > max_body)
        return -1;
    h->type = (char)p[0];
    h->len = wire - 4;
    return 1;
}

int pgw_startup_len(const uint8_t *p, size_t n, uint32_t *len)
{
    if (n < 4)
        return 0;
    uint32_t l = rd_u32(p);
    /* At least length + code. PostgreSQL caps the packet at MAX_STARTUP_PACKET_LENGTH
       excluding the length word; we cap the whole packet (4 bytes stricter). */
    if (l < 8 || l > PGW_MAX_STARTUP)
        return -1;
    *len = l;
    return 1;
}

static int parse_startup_params(rd_t *r, pgw_startup_t *out)
{
    /* Pairs of strings, then a single zero byte that must be the last byte
       (postmaster: "invalid startup packet layout: expected terminator as last byte"). */
    for (;;) {
        if (rd_left(r) == 0)
            return -1;
        if (*r->p == 0) {
            r->p++;
            return rd_done(r);
        }
        if (out->nparams == PGW_MAX_PARAMS)
            return -1;
        const char *k = rd_str(r);
        const char *v = rd_str(r);
        if (r->bad)
            return -1;
        out->keys[out->nparams] = k;
        out->vals[out->nparams] = v;
        out->nparams++;
    }
}

int pgw_parse_startup(const uint8_t *pkt, size_t len, pgw_startup_t *out)
{
    memset(out, 0, sizeof(*out));
    if (!pkt || len < 8 || len > PGW_MAX_STARTUP || rd_u32(pkt) != len)
        return -1;
    out->code = rd_u32(pkt + 4);
    switch (out->code) {
    case PGW_SSL_REQUEST:
    case PGW_GSSENC_REQUEST:
        return len == 8 ? 0 : -1;
    case PGW_CANCEL_REQUEST:
        if (len != 16)
            return -1;
        out->cancel_pid = rd_u32(pkt + 8);
        out->cancel_key = rd_u32(pkt + 12);
        return 0;
    default:
        break;
    }
    if (PGW_PROTO_MAJOR(out->code) != 3)
        return -1;
    rd_t r = rd_open(pkt + 8, len - 8);
    return parse_startup_params(&r, out);
}

const char *pgw_startup_get(const pgw_startup_t *s, const char *key)
{
    for (int i = s->nparams - 1; i >= 0; i--) {
        if (strcmp(s->keys[i], key) == 0)
            return s->vals[i];
    }
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Iterators                                                           */

int pgw_values_next(pgw_iter_t *it, const uint8_t **val, int32_t *len)
{
    if (it->left == 0 || (size_t)(it->end - it->p) < 4)
        return 0;
    int32_t l = (int32_t)rd_u32(it->p);
    it->p += 4;
    it->left--;
    if (l < 0) {
        *val = NULL;
        *len = -1;
        return 1;
    }
    if ((size_t)(it->end - it->p) < (size_t)l) { /* not from a validated reader */
        it->left = 0;
        return 0;
    }
    *val = it->p;
    *len = l;
    it->p += l;
    return 1;
}

int pgw_format_of(const pgw_formats_t *f, unsigned i)
{
    if (f->n == 0)
        return PGW_FMT_TEXT;
    if (f->n == 1)
        return rd_u16(f->p);
    if (i >= f->n)
        return -1;
    return rd_u16(f->p + 2 * i);
}

uint32_t pgw_oid_at(const pgw_oids_t *o, unsigned i)
{
    return i < o->n ? rd_u32(o->p + 4 * i) : 0;
}

/* Zero-terminated list of strings, as in AuthenticationSASL or an ErrorResponse. */
static const char *iter_str(pgw_iter_t *it)
{
    if (it->p >= it->end)
        return NULL;
    const uint8_t *nul = memchr(it->p, 0, (size_t)(it->end - it->p));
    if (!nul)
        return NULL;
    const char *s = (const char *)it->p;
    it->p = nul + 1;
    return s;
}

int pgw_string_next(pgw_iter_t *it, const char **s)
{
    if (it->left == 0)
        return 0;
    const char *v = iter_str(it);
    if (!v)
        return 0;
    it->left--;
    *s = v;
    return 1;
}

/* ------------------------------------------------------------------ */
/* Writers                                                             */

size_t pgw_begin(buf_t *b, char type)
{
    if (type)
        buf_put_u8(b, (uint8_t)type);
    size_t mark = b->len - b->rpos;
    buf_put_u32(b, 0);
    return mark;
}

void pgw_end(buf_t *b, size_t start)
{
    if (b->failed)
        return;
    size_t off = b->rpos + start;
    if (off + 4 > b->len) {
        b->failed = true; /* the buffer was consumed or reset since pgw_begin */
        return;
    }
    size_t n = b->len - off;
    if (n > INT32_MAX) {
        b->failed = true;
        return;
    }
    buf_patch_u32(b, off, (uint32_t)n);
}

static void put_str(buf_t *b, const char *s)
{
    buf_put_cstr(b, s ? s : "");
}

static void put_i16(buf_t *b, int16_t v)
{
    buf_put_u16(b, (uint16_t)v);
}

static void put_i32(buf_t *b, int32_t v)
{
    buf_put_u32(b, (uint32_t)v);
}

void pgw_put_value(buf_t *b, const void *data, int32_t len)
{
    if (len < 0 || (len > 0 && !data)) {
        put_i32(b, -1);
        return;
    }
    put_i32(b, len);
    buf_append(b, data, (size_t)len);
}

static void put_formats(buf_t *b, const int16_t *f, uint16_t n)
{
    buf_put_u16(b, n);
    for (unsigned i = 0; i < n; i++)
        put_i16(b, f[i]);
}

static void put_values(buf_t *b, const pgw_value_t *v, uint16_t n)
{
    buf_put_u16(b, n);
    for (unsigned i = 0; i < n; i++)
        pgw_put_value(b, v[i].data, v[i].len);
}

/* A payload whose size must fit an Int32 length; otherwise the buffer fails. */
static void put_payload(buf_t *b, const void *data, size_t n)
{
    if (n > INT32_MAX - 16) {
        b->failed = true;
        return;
    }
    if (n)
        buf_append(b, data, n);
}

/* Frontend ----------------------------------------------------------- */

void pgw_write_startup(buf_t *b, uint32_t version, const char *const *kv)
{
    size_t m = pgw_begin(b, 0);
    buf_put_u32(b, version);
    for (; kv && kv[0] && kv[1]; kv += 2) {
        if (!kv[0][0])
            continue; /* an empty key would read as the terminator */
        put_str(b, kv[0]);
        put_str(b, kv[1]);
    }
    buf_put_u8(b, 0);
    pgw_end(b, m);
}

static void write_code_packet(buf_t *b, uint32_t code)
{
    size_t m = pgw_begin(b, 0);
    buf_put_u32(b, code);
    pgw_end(b, m);
}

void pgw_write_ssl_request(buf_t *b)
{
    write_code_packet(b, PGW_SSL_REQUEST);
}

void pgw_write_gssenc_request(buf_t *b)
{
    write_code_packet(b, PGW_GSSENC_REQUEST);
}

void pgw_write_cancel_request(buf_t *b, uint32_t pid, uint32_t key)
{
    size_t m = pgw_begin(b, 0);
    buf_put_u32(b, PGW_CANCEL_REQUEST);
    buf_put_u32(b, pid);
    buf_put_u32(b, key);
    pgw_end(b, m);
}

static void write_str_msg(buf_t *b, char type, const char *s)
{
    size_t m = pgw_begin(b, type);
    put_str(b, s);
    pgw_end(b, m);
}

static void write_raw_msg(buf_t *b, char type, const void *data, size_t n)
{
    size_t m = pgw_begin(b, type);
    put_payload(b, data, n);
    pgw_end(b, m);
}

void pgw_write_password(buf_t *b, const char *pw)
{
    write_str_msg(b, PGW_FE_PASSWORD, pw);
}

void pgw_write_gss_response(buf_t *b, const void *data, size_t n)
{
    write_raw_msg(b, PGW_FE_PASSWORD, data, n);
}

void pgw_write_sasl_initial(buf_t *b, const char *mech, const void *data, size_t n)
{
    size_t m = pgw_begin(b, PGW_FE_PASSWORD);
    put_str(b, mech);
    if (!data) {
        put_i32(b, -1);
    } else {
        put_i32(b, n > INT32_MAX ? -1 : (int32_t)n);
        put_payload(b, data, n);
    }
    pgw_end(b, m);
}

void pgw_write_sasl_response(buf_t *b, const void *data, size_t n)
{
    write_raw_msg(b, PGW_FE_PASSWORD, data, n);
}

void pgw_write_query(buf_t *b, const char *sql)
{
    write_str_msg(b, PGW_FE_QUERY, sql);
}

void pgw_write_parse(buf_t *b, const char *stmt, const char *sql, const uint32_t *types,
                     uint16_t ntypes)
{
    size_t m = pgw_begin(b, PGW_FE_PARSE);
    put_str(b, stmt);
    put_str(b, sql);
    buf_put_u16(b, ntypes);
    for (unsigned i = 0; i < ntypes; i++)
        buf_put_u32(b, types[i]);
    pgw_end(b, m);
}

void pgw_write_bind(buf_t *b, const char *portal, const char *stmt, const int16_t *pfmts,
                    uint16_t npfmts, const pgw_value_t *params, uint16_t nparams,
                    const int16_t *rfmts, uint16_t nrfmts)
{
    size_t m = pgw_begin(b, PGW_FE_BIND);
    put_str(b, portal);
    put_str(b, stmt);
    put_formats(b, pfmts, npfmts);
    put_values(b, params, nparams);
    put_formats(b, rfmts, nrfmts);
    pgw_end(b, m);
}

static void write_target(buf_t *b, char type, char kind, const char *name)
{
    size_t m = pgw_begin(b, type);
    buf_put_u8(b, (uint8_t)kind);
    put_str(b, name);
    pgw_end(b, m);
}

void pgw_write_describe(buf_t *b, char kind, const char *name)
{
    write_target(b, PGW_FE_DESCRIBE, kind, name);
}

void pgw_write_close(buf_t *b, char kind, const char *name)
{
    write_target(b, PGW_FE_CLOSE, kind, name);
}

void pgw_write_execute(buf_t *b, const char *portal, int32_t max_rows)
{
    size_t m = pgw_begin(b, PGW_FE_EXECUTE);
    put_str(b, portal);
    put_i32(b, max_rows);
    pgw_end(b, m);
}

void pgw_write_empty(buf_t *b, char type)
{
    pgw_end(b, pgw_begin(b, type));
}

void pgw_write_sync(buf_t *b)
{
    pgw_write_empty(b, PGW_FE_SYNC);
}

void pgw_write_flush(buf_t *b)
{
    pgw_write_empty(b, PGW_FE_FLUSH);
}

void pgw_write_terminate(buf_t *b)
{
    pgw_write_empty(b, PGW_FE_TERMINATE);
}

void pgw_write_copy_data(buf_t *b, const void *data, size_t n)
{
    write_raw_msg(b, PGW_FE_COPY_DATA, data, n);
}

void pgw_write_copy_done(buf_t *b)
{
    pgw_write_empty(b, PGW_FE_COPY_DONE);
}

void pgw_write_copy_fail(buf_t *b, const char *msg)
{
    write_str_msg(b, PGW_FE_COPY_FAIL, msg);
}

void pgw_write_function_call(buf_t *b, uint32_t fn_oid, const int16_t *afmts, uint16_t nafmts,
                             const pgw_value_t *args, uint16_t nargs, int16_t result_fmt)
{
    size_t m = pgw_begin(b, PGW_FE_FUNCTION_CALL);
    buf_put_u32(b, fn_oid);
    put_formats(b, afmts, nafmts);
    put_values(b, args, nargs);
    put_i16(b, result_fmt);
    pgw_end(b, m);
}

/* Backend ------------------------------------------------------------ */

void pgw_write_auth(buf_t *b, uint32_t code, const void *data, size_t n)
{
    size_t m = pgw_begin(b, PGW_BE_AUTH);
    buf_put_u32(b, code);
    put_payload(b, data, n);
    pgw_end(b, m);
}

void pgw_write_auth_ok(buf_t *b)
{
    pgw_write_auth(b, PGW_AUTH_OK, NULL, 0);
}

void pgw_write_auth_cleartext(buf_t *b)
{
    pgw_write_auth(b, PGW_AUTH_CLEARTEXT, NULL, 0);
}

void pgw_write_auth_md5(buf_t *b, const uint8_t salt[4])
{
    pgw_write_auth(b, PGW_AUTH_MD5, salt, 4);
}

void pgw_write_auth_sasl(buf_t *b, const char *const *mechs)
{
    size_t m = pgw_begin(b, PGW_BE_AUTH);
    buf_put_u32(b, PGW_AUTH_SASL);
    for (; mechs && *mechs; mechs++) {
        if (**mechs)
            put_str(b, *mechs);
    }
    buf_put_u8(b, 0);
    pgw_end(b, m);
}

void pgw_write_auth_sasl_continue(buf_t *b, const void *data, size_t n)
{
    pgw_write_auth(b, PGW_AUTH_SASL_CONTINUE, data, n);
}

void pgw_write_auth_sasl_final(buf_t *b, const void *data, size_t n)
{
    pgw_write_auth(b, PGW_AUTH_SASL_FINAL, data, n);
}

void pgw_write_parameter_status(buf_t *b, const char *k, const char *v)
{
    size_t m = pgw_begin(b, PGW_BE_PARAMETER_STATUS);
    put_str(b, k);
    put_str(b, v);
    pgw_end(b, m);
}

void pgw_write_backend_key(buf_t *b, uint32_t pid, uint32_t key)
{
    size_t m = pgw_begin(b, PGW_BE_BACKEND_KEY);
    buf_put_u32(b, pid);
    buf_put_u32(b, key);
    pgw_end(b, m);
}

void pgw_write_ready(buf_t *b, char status)
{
    size_t m = pgw_begin(b, PGW_BE_READY);
    buf_put_u8(b, (uint8_t)status);
    pgw_end(b, m);
}

void pgw_write_command_complete(buf_t *b, const char *tag)
{
    write_str_msg(b, PGW_BE_COMMAND_COMPLETE, tag);
}

void pgw_write_notification(buf_t *b, uint32_t pid, const char *channel, const char *payload)
{
    size_t m = pgw_begin(b, PGW_BE_NOTIFICATION);
    buf_put_u32(b, pid);
    put_str(b, channel);
    put_str(b, payload);
    pgw_end(b, m);
}

void pgw_write_parameter_description(buf_t *b, const uint32_t *oids, uint16_t n)
{
    size_t m = pgw_begin(b, PGW_BE_PARAMETER_DESCRIPTION);
    buf_put_u16(b, n);
    for (unsigned i = 0; i < n; i++)
        buf_put_u32(b, oids[i]);
    pgw_end(b, m);
}

void pgw_write_copy_response(buf_t *b, char type, int8_t overall, const int16_t *fmts,
                             uint16_t ncols)
{
    size_t m = pgw_begin(b, type);
    buf_put_u8(b, (uint8_t)overall);
    put_formats(b, fmts, ncols);
    pgw_end(b, m);
}

void pgw_write_function_call_response(buf_t *b, const void *data, int32_t len)
{
    size_t m = pgw_begin(b, PGW_BE_FUNCTION_CALL_RESPONSE);
    pgw_put_value(b, data, len);
    pgw_end(b, m);
}

void pgw_write_row_description(buf_t *b, const pgw_column_t *cols, uint16_t n)
{
    size_t m = pgw_begin(b, PGW_BE_ROW_DESCRIPTION);
    buf_put_u16(b, n);
    for (unsigned i = 0; i < n; i++) {
        const pgw_column_t *c = &cols[i];
        put_str(b, c->name);
        buf_put_u32(b, c->table_oid);
        put_i16(b, c->attnum);
        buf_put_u32(b, c->type_oid);
        put_i16(b, c->typlen);
        put_i32(b, c->typmod);
        put_i16(b, c->format);
    }
    pgw_end(b, m);
}

size_t pgw_datarow_begin(buf_t *b, uint16_t ncols)
{
    size_t m = pgw_begin(b, PGW_BE_DATA_ROW);
    buf_put_u16(b, ncols);
    return m;
}

void pgw_write_datarow(buf_t *b, const pgw_value_t *cols, uint16_t n)
{
    size_t m = pgw_begin(b, PGW_BE_DATA_ROW);
    put_values(b, cols, n);
    pgw_end(b, m);
}

void pgw_put_error_field(buf_t *b, char code, const char *value)
{
    if (!code || !value)
        return;
    buf_put_u8(b, (uint8_t)code);
    buf_put_cstr(b, value);
}

void pgw_end_error(buf_t *b, size_t start)
{
    buf_put_u8(b, 0);
    pgw_end(b, start);
}

static void put_int_field(buf_t *b, char code, int v)
{
    char tmp[16];
    if (v <= 0)
        return;
    snprintf(tmp, sizeof(tmp), "%d", v);
    pgw_put_error_field(b, code, tmp);
}

/* Field order as the server emits it (send_message_to_frontend). PG docs 55.8. */
void pgw_write_error_full(buf_t *b, char type, const pgw_error_t *e)
{
    size_t m = pgw_begin(b, type);
    pgw_put_error_field(b, 'S', e->severity ? e->severity : "ERROR");
    pgw_put_error_field(b, 'V',
                        e->severity_nl ? e->severity_nl
                        : e->severity  ? e->severity
                                       : "ERROR");
    pgw_put_error_field(b, 'C', e->sqlstate ? e->sqlstate : "XX000");
    pgw_put_error_field(b, 'M', e->message ? e->message : "");
    pgw_put_error_field(b, 'D', e->detail);
    pgw_put_error_field(b, 'H', e->hint);
    put_int_field(b, 'P', e->position);
    put_int_field(b, 'p', e->internal_position);
    pgw_put_error_field(b, 'q', e->internal_query);
    pgw_put_error_field(b, 'W', e->where);
    pgw_put_error_field(b, 's', e->schema);
    pgw_put_error_field(b, 't', e->table);
    pgw_put_error_field(b, 'c', e->column);
    pgw_put_error_field(b, 'd', e->data_type);
    pgw_put_error_field(b, 'n', e->constraint);
    pgw_put_error_field(b, 'F', e->file);
    pgw_put_error_field(b, 'L', e->line);
    pgw_put_error_field(b, 'R', e->routine);
    pgw_end_error(b, m);
}

void pgw_write_error(buf_t *b, const char *severity, const char *sqlstate, const char *message)
{
    pgw_error_t e = {.severity = severity, .sqlstate = sqlstate, .message = message};
    pgw_write_error_full(b, PGW_BE_ERROR, &e);
}

void pgw_write_negotiate_version(buf_t *b, uint32_t newest_minor, const char *const *unrecognized,
                                 int n)
{
    size_t m = pgw_begin(b, PGW_BE_NEGOTIATE_VERSION);
    if (n < 0 || (n > 0 && !unrecognized))
        n = 0;
    buf_put_u32(b, newest_minor);
    buf_put_u32(b, (uint32_t)n);
    for (int i = 0; i < n; i++)
        put_str(b, unrecognized[i]);
    pgw_end(b, m);
}

/* ------------------------------------------------------------------ */
/* Readers: backend messages                                           */

/* AuthenticationSASL body: non-empty names, each NUL-terminated, then one zero byte. */
static int check_sasl_list(const uint8_t *p, size_t n)
{
    rd_t r = rd_open(p, n);
    int count = 0;
    while (rd_left(&r) > 0 && *r.p != 0) {
        if (!rd_str(&r))
            return -1;
        count++;
    }
    if (rd_byte(&r) != 0 || count == 0)
        return -1;
    return rd_done(&r);
}

int pgw_read_auth(const uint8_t *body, size_t len, pgw_auth_t *out)
{
    rd_t r = rd_open(body, len);
    out->code = rd_int32(&r);
    if (r.bad)
        return -1;
    out->data = r.p;
    out->len = rd_left(&r);
    switch (out->code) {
    case PGW_AUTH_OK:
    case PGW_AUTH_KERBEROS_V5:
    case PGW_AUTH_CLEARTEXT:
    case PGW_AUTH_GSS:
    case PGW_AUTH_SSPI:
        return out->len == 0 ? 0 : -1;
    case PGW_AUTH_MD5:
        return out->len == 4 ? 0 : -1;
    case PGW_AUTH_SASL:
        return check_sasl_list(out->data, out->len);
    default: /* GSSContinue, SASLContinue, SASLFinal carry opaque data; others unknown */
        return 0;
    }
}

pgw_iter_t pgw_auth_sasl_mechs(const pgw_auth_t *a)
{
    pgw_iter_t it = {a->data, a->data + a->len, 0};
    if (a->code != PGW_AUTH_SASL)
        it.end = it.p;
    return it;
}

int pgw_sasl_mech_next(pgw_iter_t *it, const char **name)
{
    const char *s = iter_str(it);
    if (!s || !*s)
        return 0;
    *name = s;
    return 1;
}

bool pgw_auth_sasl_has(const pgw_auth_t *a, const char *mech)
{
    pgw_iter_t it = pgw_auth_sasl_mechs(a);
    const char *name;
    while (pgw_sasl_mech_next(&it, &name)) {
        if (strcmp(name, mech) == 0)
            return true;
    }
    return false;
}

/* A decimal position (1-based character index); 0 if absent or not a plain number. */
static int parse_position(const char *s)
{
    long v = 0;
    if (!s || !*s)
        return 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > INT_MAX / 10)
            return 0;
        v = v * 10 + (*s - '0');
    }
    return v > INT_MAX ? 0 : (int)v;
}

static void set_error_field(pgw_error_t *e, char code, const char *v)
{
    switch (code) {
    case 'S':
        e->severity = v;
        break;
    case 'V':
        e->severity_nl = v;
        break;
    case 'C':
        e->sqlstate = v;
        break;
    case 'M':
        e->message = v;
        break;
    case 'D':
        e->detail = v;
        break;
    case 'H':
        e->hint = v;
        break;
    case 'P':
        e->position = parse_position(v);
        break;
    case 'p':
        e->internal_position = parse_position(v);
        break;
    case 'q':
        e->internal_query = v;
        break;
    case 'W':
        e->where = v;
        break;
    case 's':
        e->schema = v;
        break;
    case 't':
        e->table = v;
        break;
    case 'c':
        e->column = v;
        break;
    case 'd':
        e->data_type = v;
        break;
    case 'n':
        e->constraint = v;
        break;
    case 'F':
        e->file = v;
        break;
    case 'L':
        e->line = v;
        break;
    case 'R':
        e->routine = v;
        break;
    default:
        break; /* PG docs 55.8: ignore fields of unrecognized type */
    }
}

/* PG docs 55.8: S, C and M are always present. A repeated field: the last one wins (as
   in libpq). */
int pgw_read_error(const uint8_t *body, size_t len, pgw_error_t *out)
{
    memset(out, 0, sizeof(*out));
    rd_t r = rd_open(body, len);
    for (;;) {
        char code = (char)rd_byte(&r);
        if (r.bad)
            return -1;
        if (code == 0)
            break;
        const char *v = rd_str(&r);
        if (!v)
            return -1;
        set_error_field(out, code, v);
    }
    if (rd_done(&r) < 0 || !out->severity || !out->sqlstate || !out->message)
        return -1;
    return 0;
}

pgw_iter_t pgw_error_fields(const uint8_t *body, size_t len)
{
    pgw_iter_t it = {body, body ? body + len : body, 0};
    return it;
}

int pgw_error_field_next(pgw_iter_t *it, char *code, const char **value)
{
    if (it->p >= it->end || *it->p == 0)
        return 0;
    const uint8_t *save = it->p++;
    const char *v = iter_str(it);
    if (!v) {
        it->p = save;
        it->end = save;
        return 0;
    }
    *code = (char)*save;
    *value = v;
    return 1;
}

int pgw_read_parameter_status(const uint8_t *body, size_t len, const char **k, const char **v)
{
    rd_t r = rd_open(body, len);
    *k = rd_str(&r);
    *v = rd_str(&r);
    return rd_done(&r);
}

int pgw_read_backend_key(const uint8_t *body, size_t len, uint32_t *pid, uint32_t *key)
{
    /* Protocol 3.0: exactly Int32 pid + Int32 key (3.2 allows longer keys). */
    rd_t r = rd_open(body, len);
    *pid = rd_int32(&r);
    *key = rd_int32(&r);
    return rd_done(&r);
}

int pgw_read_ready(const uint8_t *body, size_t len, char *status)
{
    rd_t r = rd_open(body, len);
    char s = (char)rd_byte(&r);
    if (rd_done(&r) < 0 || (s != 'I' && s != 'T' && s != 'E'))
        return -1;
    *status = s;
    return 0;
}

int pgw_read_command_complete(const uint8_t *body, size_t len, const char **tag)
{
    rd_t r = rd_open(body, len);
    *tag = rd_str(&r);
    return rd_done(&r);
}

int pgw_read_empty(const uint8_t *body, size_t len)
{
    (void)body;
    return len == 0 ? 0 : -1;
}

int pgw_read_notification(const uint8_t *body, size_t len, pgw_notification_t *out)
{
    rd_t r = rd_open(body, len);
    out->pid = rd_int32(&r);
    out->channel = rd_str(&r);
    out->payload = rd_str(&r);
    return rd_done(&r);
}

static void rd_oids(rd_t *r, pgw_oids_t *o)
{
    o->n = rd_int16(r);
    o->p = rd_bytes(r, (size_t)o->n * 4);
}

int pgw_read_parameter_description(const uint8_t *body, size_t len, pgw_oids_t *out)
{
    rd_t r = rd_open(body, len);
    rd_oids(&r, out);
    return rd_done(&r);
}

/* RowDescription field after its name: table oid, attnum, type oid, typlen, typmod, format. */
#define PGW_FIELD_FIXED 18

int pgw_read_row_description(const uint8_t *body, size_t len, pgw_row_description_t *out)
{
    rd_t r = rd_open(body, len);
    out->nfields = rd_int16(&r);
    out->fields.p = r.p;
    out->fields.left = out->nfields;
    for (unsigned i = 0; i < out->nfields && !r.bad; i++) {
        rd_str(&r);
        const uint8_t *f = rd_bytes(&r, PGW_FIELD_FIXED);
        if (f && rd_u16(f + 16) > PGW_FMT_BINARY)
            r.bad = true;
    }
    out->fields.end = r.p;
    return rd_done(&r);
}

int pgw_column_next(pgw_iter_t *it, pgw_column_t *col)
{
    if (it->left == 0)
        return 0;
    const char *name = iter_str(it);
    if (!name || (size_t)(it->end - it->p) < PGW_FIELD_FIXED)
        return 0;
    const uint8_t *f = it->p;
    col->name = name;
    col->table_oid = rd_u32(f);
    col->attnum = (int16_t)rd_u16(f + 4);
    col->type_oid = rd_u32(f + 6);
    col->typlen = (int16_t)rd_u16(f + 10);
    col->typmod = (int32_t)rd_u32(f + 12);
    col->format = (int16_t)rd_u16(f + 16);
    it->p += PGW_FIELD_FIXED;
    it->left--;
    return 1;
}

int pgw_read_datarow(const uint8_t *body, size_t len, pgw_datarow_t *out)
{
    rd_t r = rd_open(body, len);
    out->ncols = rd_int16(&r);
    rd_values(&r, out->ncols, &out->cols);
    return rd_done(&r);
}

int pgw_read_negotiate_version(const uint8_t *body, size_t len, pgw_negotiate_t *out)
{
    rd_t r = rd_open(body, len);
    out->newest_minor = rd_int32(&r);
    out->n = rd_int32(&r);
    if (out->n > INT32_MAX)
        return -1;
    out->options.p = r.p;
    out->options.left = out->n;
    for (uint32_t i = 0; i < out->n && !r.bad; i++)
        rd_str(&r);
    out->options.end = r.p;
    return rd_done(&r);
}

int pgw_read_copy_response(const uint8_t *body, size_t len, pgw_copy_response_t *out)
{
    rd_t r = rd_open(body, len);
    out->overall = (int8_t)rd_byte(&r);
    rd_formats(&r, &out->cols);
    if (rd_done(&r) < 0 || out->overall < 0 || out->overall > PGW_FMT_BINARY)
        return -1;
    for (unsigned i = 0; out->overall == PGW_FMT_TEXT && i < out->cols.n; i++) {
        if (rd_u16(out->cols.p + 2 * i) != PGW_FMT_TEXT)
            return -1;
    }
    return 0;
}

int pgw_read_function_call_response(const uint8_t *body, size_t len, const uint8_t **data,
                                    int32_t *n)
{
    rd_t r = rd_open(body, len);
    pgw_iter_t it;
    rd_values(&r, 1, &it);
    if (rd_done(&r) < 0 || !pgw_values_next(&it, data, n))
        return -1;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Readers: frontend messages                                          */

/* A body that is exactly one string: the first NUL is the last byte. */
static int read_one_str(const uint8_t *body, size_t len, const char **s)
{
    rd_t r = rd_open(body, len);
    *s = rd_str(&r);
    return rd_done(&r);
}

int pgw_read_password(const uint8_t *body, size_t len, const char **pw, size_t *pwlen)
{
    if (read_one_str(body, len, pw) < 0)
        return -1;
    *pwlen = len - 1;
    return 0;
}

int pgw_read_sasl_initial(const uint8_t *body, size_t len, const char **mech, const uint8_t **data,
                          int32_t *n)
{
    rd_t r = rd_open(body, len);
    *mech = rd_str(&r);
    pgw_iter_t it;
    rd_values(&r, 1, &it);
    if (rd_done(&r) < 0 || !pgw_values_next(&it, data, n))
        return -1;
    return 0;
}

int pgw_read_query(const uint8_t *body, size_t len, const char **sql)
{
    return read_one_str(body, len, sql);
}

int pgw_read_parse(const uint8_t *body, size_t len, pgw_parse_t *out)
{
    rd_t r = rd_open(body, len);
    out->stmt = rd_str(&r);
    out->sql = rd_str(&r);
    out->sql_len = out->sql ? strlen(out->sql) : 0;
    rd_oids(&r, &out->param_types);
    return rd_done(&r);
}

int pgw_read_bind(const uint8_t *body, size_t len, pgw_bind_t *out)
{
    rd_t r = rd_open(body, len);
    out->portal = rd_str(&r);
    out->stmt = rd_str(&r);
    rd_formats(&r, &out->param_formats);
    out->nparams = rd_int16(&r);
    rd_check_format_count(&r, &out->param_formats, out->nparams);
    rd_values(&r, out->nparams, &out->params);
    rd_formats(&r, &out->result_formats);
    return rd_done(&r);
}

static int read_target(const uint8_t *body, size_t len, pgw_target_t *out)
{
    rd_t r = rd_open(body, len);
    out->kind = (char)rd_byte(&r);
    out->name = rd_str(&r);
    if (rd_done(&r) < 0 || (out->kind != 'S' && out->kind != 'P'))
        return -1;
    return 0;
}

int pgw_read_describe(const uint8_t *body, size_t len, pgw_target_t *out)
{
    return read_target(body, len, out);
}

int pgw_read_close(const uint8_t *body, size_t len, pgw_target_t *out)
{
    return read_target(body, len, out);
}

int pgw_read_execute(const uint8_t *body, size_t len, const char **portal, int32_t *max_rows)
{
    rd_t r = rd_open(body, len);
    *portal = rd_str(&r);
    *max_rows = (int32_t)rd_int32(&r);
    return rd_done(&r);
}

int pgw_read_copy_fail(const uint8_t *body, size_t len, const char **msg)
{
    return read_one_str(body, len, msg);
}

int pgw_read_function_call(const uint8_t *body, size_t len, pgw_function_call_t *out)
{
    rd_t r = rd_open(body, len);
    out->fn_oid = rd_int32(&r);
    rd_formats(&r, &out->arg_formats);
    out->nargs = rd_int16(&r);
    rd_check_format_count(&r, &out->arg_formats, out->nargs);
    rd_values(&r, out->nargs, &out->args);
    uint16_t rf = rd_int16(&r);
    if (rd_done(&r) < 0 || rf > PGW_FMT_BINARY)
        return -1;
    out->result_format = (int16_t)rf;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Names                                                               */

const char *pgw_frontend_name(char type)
{
    switch (type) {
    case PGW_FE_BIND:
        return "Bind";
    case PGW_FE_CLOSE:
        return "Close";
    case PGW_FE_COPY_DATA:
        return "CopyData";
    case PGW_FE_COPY_DONE:
        return "CopyDone";
    case PGW_FE_COPY_FAIL:
        return "CopyFail";
    case PGW_FE_DESCRIBE:
        return "Describe";
    case PGW_FE_EXECUTE:
        return "Execute";
    case PGW_FE_FLUSH:
        return "Flush";
    case PGW_FE_FUNCTION_CALL:
        return "FunctionCall";
    case PGW_FE_PARSE:
        return "Parse";
    case PGW_FE_PASSWORD:
        return "PasswordMessage";
    case PGW_FE_QUERY:
        return "Query";
    case PGW_FE_SYNC:
        return "Sync";
    case PGW_FE_TERMINATE:
        return "Terminate";
    default:
        return "?";
    }
}

const char *pgw_backend_name(char type)
{
    switch (type) {
    case PGW_BE_AUTH:
        return "Authentication";
    case PGW_BE_BACKEND_KEY:
        return "BackendKeyData";
    case PGW_BE_BIND_COMPLETE:
        return "BindComplete";
    case PGW_BE_CLOSE_COMPLETE:
        return "CloseComplete";
    case PGW_BE_COMMAND_COMPLETE:
        return "CommandComplete";
    case PGW_BE_COPY_DATA:
        return "CopyData";
    case PGW_BE_COPY_DONE:
        return "CopyDone";
    case PGW_BE_COPY_IN:
        return "CopyInResponse";
    case PGW_BE_COPY_OUT:
        return "CopyOutResponse";
    case PGW_BE_COPY_BOTH:
        return "CopyBothResponse";
    case PGW_BE_DATA_ROW:
        return "DataRow";
    case PGW_BE_EMPTY_QUERY:
        return "EmptyQueryResponse";
    case PGW_BE_ERROR:
        return "ErrorResponse";
    case PGW_BE_FUNCTION_CALL_RESPONSE:
        return "FunctionCallResponse";
    case PGW_BE_NEGOTIATE_VERSION:
        return "NegotiateProtocolVersion";
    case PGW_BE_NO_DATA:
        return "NoData";
    case PGW_BE_NOTICE:
        return "NoticeResponse";
    case PGW_BE_NOTIFICATION:
        return "NotificationResponse";
    case PGW_BE_PARAMETER_DESCRIPTION:
        return "ParameterDescription";
    case PGW_BE_PARAMETER_STATUS:
        return "ParameterStatus";
    case PGW_BE_PARSE_COMPLETE:
        return "ParseComplete";
    case PGW_BE_PORTAL_SUSPENDED:
        return "PortalSuspended";
    case PGW_BE_READY:
        return "ReadyForQuery";
    case PGW_BE_ROW_DESCRIPTION:
        return "RowDescription";
    default:
        return "?";
    }
}

const char *pgw_auth_name(uint32_t code)
{
    switch (code) {
    case PGW_AUTH_OK:
        return "Ok";
    case PGW_AUTH_KERBEROS_V5:
        return "KerberosV5";
    case PGW_AUTH_CLEARTEXT:
        return "CleartextPassword";
    case PGW_AUTH_MD5:
        return "MD5Password";
    case PGW_AUTH_GSS:
        return "GSS";
    case PGW_AUTH_GSS_CONTINUE:
        return "GSSContinue";
    case PGW_AUTH_SSPI:
        return "SSPI";
    case PGW_AUTH_SASL:
        return "SASL";
    case PGW_AUTH_SASL_CONTINUE:
        return "SASLContinue";
    case PGW_AUTH_SASL_FINAL:
        return "SASLFinal";
    default:
        return "?";
    }
}
