/* bulwark sessions -c bulwark.json [--since 1h] [--role R] [--sub S] [--json] (SPEC section 2). */
#include <stdio.h>
#include <string.h>

#include "audit/audit.h"
#include "cli/cli.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: bulwark sessions -c bulwark.json [--since T] [--role R] [--sub S] [--json]\n"
               "\n"
               "List the recorded sessions, oldest first, as a table (or a JSON array).\n"
               "Reads the audit store read-only: works while the gateway runs.\n"
               "\n"
               "  -c, --config FILE   the configuration file (the store is audit.path)\n"
               "  --since T           sessions that started at or after T: a duration back\n"
               "                      from now (\"1h\", \"7d\") or a UTC time\n"
               "                      (\"2024-05-01\", \"2024-05-01T12:00:00Z\")\n"
               "  --role R            only sessions of role R\n"
               "  --sub S             only sessions of the token subject S (exact)\n"
               "  --json              JSON instead of a table\n"
               "  -h, --help          this text\n");
}

int cli_sessions(int argc, char **argv)
{
    const char *config = NULL, *since = NULL, *role = NULL, *sub = NULL;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL, **slot = NULL;
        int got = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--json")) {
            json = true;
            continue;
        }
        if ((got = cli_audit_opt("sessions", argc, argv, &i, "-c", &v)) ||
            (got = cli_audit_opt("sessions", argc, argv, &i, "--config", &v)))
            slot = &config;
        else if ((got = cli_audit_opt("sessions", argc, argv, &i, "--since", &v)))
            slot = &since;
        else if ((got = cli_audit_opt("sessions", argc, argv, &i, "--role", &v)))
            slot = &role;
        else if ((got = cli_audit_opt("sessions", argc, argv, &i, "--sub", &v)))
            slot = &sub;
        if (got < 0)
            return 2;
        if (!got) {
            fprintf(
                stderr,
                "bulwark sessions: unexpected argument \"%s\" (try `bulwark sessions --help`)\n",
                a);
            return 2;
        }
        if (*slot) {
            fprintf(stderr, "bulwark sessions: %s given more than once\n", a);
            return 2;
        }
        *slot = v;
    }
    if (!config || !*config) {
        fprintf(stderr, "bulwark sessions: -c FILE is required (try `bulwark sessions --help`)\n");
        return 2;
    }
    audit_session_filter_t f = {.role = role, .sub = sub};
    if (since && !audit_parse_since(since, (int64_t)cli_audit_now_us(), &f.since_us)) {
        fprintf(stderr,
                "bulwark sessions: --since: \"%s\" is neither a duration (1h) nor a time "
                "(2024-05-01T12:00:00Z)\n",
                since);
        return 2;
    }
    audit_reader_t *r = cli_audit_reader("sessions", config, NULL);
    if (!r)
        return 1;
    int rc = audit_print_sessions(r, &f, json, stdout);
    audit_reader_close(r);
    if (rc != 0) {
        fprintf(stderr, "bulwark sessions: cannot read the audit store\n");
        return 1;
    }
    return 0;
}
