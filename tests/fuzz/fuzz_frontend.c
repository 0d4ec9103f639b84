/*
 * Frontend side of the wire: a startup-phase packet (StartupMessage,
 * SSLRequest, GSSENCRequest, CancelRequest) followed by a stream of typed
 * messages, each framed with pgw_frame and read with the reader for its type,
 * every variable-length part walked to the end. Nothing may read outside the
 * input, whatever the lengths claim.
 */
#include "fuzz.h"
#include "pgwire/pgwire.h"

#define MAX_BODY (1u << 20)

volatile uint32_t sum; /* keeps the reads from being optimised away */

static void walk_values(pgw_iter_t it)
{
    const uint8_t *v;
    int32_t n;
    while (pgw_values_next(&it, &v, &n) == 1)
        if (v && n > 0)
            sum += v[0] + v[n - 1];
}

static void walk_formats(const pgw_formats_t *f, unsigned upto)
{
    for (unsigned i = 0; i <= upto && i < 70000; i++)
        if (pgw_format_of(f, i) < 0)
            break;
}

static void one_message(char type, const uint8_t *b, size_t n)
{
    const char *s, *m;
    const uint8_t *d;
    int32_t dn;
    size_t sl;
    int32_t rows;
    pgw_parse_t parse;
    pgw_bind_t bind;
    pgw_target_t tgt;
    pgw_function_call_t fc;
    switch (type) {
    case 'Q':
        if (pgw_read_query(b, n, &s) == 0)
            (void)strlen(s);
        break;
    case 'P':
        if (pgw_read_parse(b, n, &parse) == 0)
            for (unsigned i = 0; i <= parse.param_types.n; i++)
                (void)pgw_oid_at(&parse.param_types, i);
        break;
    case 'B':
        if (pgw_read_bind(b, n, &bind) == 0) {
            walk_values(bind.params);
            walk_formats(&bind.param_formats, bind.nparams);
            walk_formats(&bind.result_formats, bind.result_formats.n);
        }
        break;
    case 'D':
        (void)!pgw_read_describe(b, n, &tgt);
        break;
    case 'C':
        (void)!pgw_read_close(b, n, &tgt);
        break;
    case 'E':
        (void)!pgw_read_execute(b, n, &s, &rows);
        break;
    case 'f':
        (void)!pgw_read_copy_fail(b, n, &m);
        break;
    case 'F':
        if (pgw_read_function_call(b, n, &fc) == 0) {
            walk_values(fc.args);
            walk_formats(&fc.arg_formats, fc.nargs);
        }
        break;
    case 'p':
        (void)!pgw_read_password(b, n, &s, &sl);
        (void)!pgw_read_sasl_initial(b, n, &m, &d, &dn);
        break;
    case 'S':
    case 'H':
    case 'X':
    case 'c':
        (void)!pgw_read_empty(b, n);
        break;
    default:
        (void)pgw_frontend_name(type);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint32_t len;
    size_t off = 0;
    if (pgw_startup_len(data, size, &len) == 1 && len <= size) {
        pgw_startup_t st;
        if (pgw_parse_startup(data, len, &st) == 0) {
            (void)pgw_startup_get(&st, "user");
            (void)pgw_startup_get(&st, "database");
            for (int i = 0; i < st.nparams; i++)
                (void)(strlen(st.keys[i]) + strlen(st.vals[i]));
        }
        off = len;
    }
    fuzz_each_message(data, size, off, MAX_BODY, one_message);
    return 0;
}
