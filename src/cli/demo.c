/*
 * bulwark demo — the two-minute tour (scripts/demo.sh) from a source tree:
 * a throwaway PostgreSQL with the demo shop, the gateway with
 * policies/demo.json, and a ready psql command. The script needs the tree's
 * scripts/, policies/ and examples/, so it is looked up next to this binary
 * (build/bulwark → scripts/demo.sh), or in BULWARK_SOURCE_DIR; an installed
 * binary without a source tree says where to get one. Arguments go to the
 * script ("bulwark demo stop" ends a running demo).
 */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"

/* dir/scripts/demo.sh into out, if it is there. */
static bool script_in(const char *dir, char *out, size_t outsz)
{
    int n = snprintf(out, outsz, "%s/scripts/demo.sh", dir);
    return n > 0 && (size_t)n < outsz && access(out, R_OK) == 0;
}

int cli_demo(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: bulwark demo [stop]\n\n"
               "Start a local PostgreSQL with a demo schema, the gateway and demo policies, and\n"
               "print a ready psql command and a tour (from a source tree; same as make demo).\n"
               "`bulwark demo stop` ends a running demo.\n");
        return 0;
    }
    char exe[PATH_MAX], script[PATH_MAX + 32];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0) {
        fprintf(stderr, "bulwark demo: cannot find this binary: %s\n", strerror(errno));
        return 1;
    }
    exe[n] = 0;
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", exe);
    char *bin_dir = dirname(dir); /* .../build */
    char root[PATH_MAX + 4];
    snprintf(root, sizeof(root), "%s/..", bin_dir);
    const char *env = getenv("BULWARK_SOURCE_DIR");
    if (!(env && *env && script_in(env, script, sizeof(script))) &&
        !script_in(root, script, sizeof(script))) {
        fprintf(stderr,
                "bulwark demo: the demo runs from a source tree (scripts/demo.sh, policies/, "
                "examples/): run `make demo` in a clone of the repository, or set "
                "BULWARK_SOURCE_DIR to one\n");
        return 1;
    }
    if (setenv("BULWARK_BIN", exe, 1) != 0) {
        fprintf(stderr, "bulwark demo: %s\n", strerror(errno));
        return 1;
    }
    char *args[8] = {"bash", script};
    int k = 2;
    for (int i = 1; i < argc && k < 7; i++)
        args[k++] = argv[i];
    args[k] = NULL;
    execvp("bash", args);
    fprintf(stderr, "bulwark demo: cannot run bash: %s\n", strerror(errno));
    return 1;
}
