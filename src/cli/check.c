/* bulwark check -c bulwark.json: validate config and every policy file (SPEC section 2). */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "config.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: bulwark check -c bulwark.json\n"
               "\n"
               "Load the configuration and every policy file it names, as `serve` would.\n"
               "Each problem is printed on stderr as `file: path.to.key: reason`; the exit\n"
               "status is 1 if there was any, 0 otherwise (with a one-line summary).\n"
               "\n"
               "  -c, --config FILE   the configuration file\n"
               "  -h, --help          this text\n");
}

int cli_check(int argc, char **argv)
{
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "-c") || !strcmp(a, "--config")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "bulwark check: %s needs a file name\n", a);
                return 2;
            }
            val = argv[++i];
        } else if (!strncmp(a, "--config=", 9)) {
            val = a + 9;
        } else {
            fprintf(stderr,
                    "bulwark check: unexpected argument \"%s\" (try `bulwark check --help`)\n", a);
            return 2;
        }
        if (path) {
            fprintf(stderr, "bulwark check: -c given more than once\n");
            return 2;
        }
        path = val;
    }
    if (!path || !*path) {
        fprintf(stderr, "bulwark check: -c FILE is required (try `bulwark check --help`)\n");
        return 2;
    }
    cfg_t *c = cli_load_config(path);
    if (!c)
        return 1;
    printf("ok: %zu roles, %zu targets\n", c->n_roles, c->n_targets);
    cfg_release(c);
    return 0;
}
