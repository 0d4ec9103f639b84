/*
 * Backend side of the wire: a stream of typed messages as an upstream (or a
 * man in the middle) might send them, each framed and read with the reader for
 * its type, iterators walked to the end.
 */
#include "fuzz.h"
#include "pgwire/pgwire.h"

#define MAX_BODY (1u << 20)

volatile size_t sink; /* keeps the reads from being optimised away */

static void one_message(char type, const uint8_t *b, size_t n)
{
    pgw_auth_t auth;
    pgw_error_t err;
    pgw_row_description_t rd;
    pgw_datarow_t dr;
    pgw_notification_t note;
    pgw_oids_t oids;
    pgw_negotiate_t neg;
    pgw_copy_response_t cr;
    const char *k, *v;
    const uint8_t *d;
    int32_t dn;
    uint32_t pid, key;
    char status;

    switch (type) {
    case 'R':
        if (pgw_read_auth(b, n, &auth) == 0 && auth.code == PGW_AUTH_SASL) {
            pgw_iter_t it = pgw_auth_sasl_mechs(&auth);
            while (pgw_sasl_mech_next(&it, &k) == 1)
                sink += strlen(k);
            (void)pgw_auth_sasl_has(&auth, PGW_SCRAM_MECH);
        }
        break;
    case 'E':
    case 'N':
        memset(&err, 0, sizeof(err));
        if (pgw_read_error(b, n, &err) == 0) {
            pgw_iter_t it = pgw_error_fields(b, n);
            char code;
            while (pgw_error_field_next(&it, &code, &v) == 1)
                sink += strlen(v) + (size_t)code;
        }
        break;
    case 'S':
        if (pgw_read_parameter_status(b, n, &k, &v) == 0)
            sink += strlen(k) + strlen(v);
        break;
    case 'K':
        (void)!pgw_read_backend_key(b, n, &pid, &key);
        break;
    case 'Z':
        (void)!pgw_read_ready(b, n, &status);
        break;
    case 'C':
        if (pgw_read_command_complete(b, n, &k) == 0)
            sink += strlen(k);
        break;
    case 'A':
        (void)!pgw_read_notification(b, n, &note);
        break;
    case 't':
        if (pgw_read_parameter_description(b, n, &oids) == 0)
            for (unsigned i = 0; i <= oids.n; i++)
                sink += pgw_oid_at(&oids, i);
        break;
    case 'T':
        if (pgw_read_row_description(b, n, &rd) == 0) {
            pgw_iter_t it = rd.fields;
            pgw_column_t col;
            while (pgw_column_next(&it, &col) == 1)
                sink += strlen(col.name) + col.type_oid;
        }
        break;
    case 'D':
        if (pgw_read_datarow(b, n, &dr) == 0) {
            pgw_iter_t it = dr.cols;
            const uint8_t *val;
            int32_t len;
            while (pgw_values_next(&it, &val, &len) == 1)
                if (val && len > 0)
                    sink += val[len - 1];
        }
        break;
    case 'v':
        if (pgw_read_negotiate_version(b, n, &neg) == 0) {
            pgw_iter_t it = neg.options;
            while (pgw_string_next(&it, &k) == 1)
                sink += strlen(k);
        }
        break;
    case 'G':
    case 'H':
    case 'W':
        if (pgw_read_copy_response(b, n, &cr) == 0)
            for (unsigned i = 0; i <= cr.cols.n; i++)
                if (pgw_format_of(&cr.cols, i) < 0)
                    break;
        break;
    case 'V':
        (void)!pgw_read_function_call_response(b, n, &d, &dn);
        break;
    case '1':
    case '2':
    case '3':
    case 'n':
    case 's':
    case 'I':
    case 'c':
        (void)!pgw_read_empty(b, n);
        break;
    default:
        (void)pgw_backend_name(type);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_each_message(data, size, 0, MAX_BODY, one_message);
    return 0;
}
