#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "proxy/proxy.h"

static void serve_usage(FILE *f)
{
    fprintf(f, "usage: bulwark serve -c bulwark.json\n"
               "  run the gateway in the foreground; logs go to stderr.\n"
               "  SIGHUP reloads config, policies and secrets; SIGTERM drains; SIGINT stops.\n");
}

int cli_serve(int argc, char **argv)
{
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            serve_usage(stdout);
            return 0;
        } else if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc) {
            path = argv[++i];
        } else {
            fprintf(stderr, "bulwark serve: unexpected argument \"%s\"\n", argv[i]);
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "bulwark serve: -c CONFIG is required\n");
        return 2;
    }
    return proxy_serve(path);
}
