/* bulwark replay -c bulwark.json SESSION [--json] (SPEC section 2). */
#include <stdio.h>
#include <string.h>

#include "audit/audit.h"
#include "cli/cli.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: bulwark replay -c bulwark.json SESSION [--json]\n"
               "\n"
               "Print a recorded session as a transcript: the identity, then each statement\n"
               "with its time relative to the session start, its decision and rule, and the\n"
               "result rows as the client saw them (masked), in psql's aligned format.\n"
               "SESSION is an id from `bulwark sessions`.\n"
               "\n"
               "  -c, --config FILE   the configuration file (the store is audit.path)\n"
               "  --json              the session's records as JSON instead\n"
               "  -h, --help          this text\n");
}

int cli_replay(int argc, char **argv)
{
    const char *config = NULL, *session = NULL;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        int got;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--json")) {
            json = true;
            continue;
        }
        if ((got = cli_audit_opt("replay", argc, argv, &i, "-c", &v)) ||
            (got = cli_audit_opt("replay", argc, argv, &i, "--config", &v))) {
            if (got < 0)
                return 2;
            if (config) {
                fprintf(stderr, "bulwark replay: -c given more than once\n");
                return 2;
            }
            config = v;
            continue;
        }
        if (a[0] == '-' || session) {
            fprintf(stderr,
                    "bulwark replay: unexpected argument \"%s\" (try `bulwark replay --help`)\n",
                    a);
            return 2;
        }
        session = a;
    }
    if (!config || !*config) {
        fprintf(stderr, "bulwark replay: -c FILE is required (try `bulwark replay --help`)\n");
        return 2;
    }
    if (!session || !*session) {
        fprintf(stderr, "bulwark replay: which SESSION? (ids come from `bulwark sessions`)\n");
        return 2;
    }
    audit_reader_t *r = cli_audit_reader("replay", config, NULL);
    if (!r)
        return 1;
    char err[300];
    int rc = audit_print_replay(r, session, json, stdout, err, sizeof(err));
    audit_reader_close(r);
    if (rc != 0) {
        fprintf(stderr, "bulwark replay: %s\n", err);
        return 1;
    }
    return 0;
}
