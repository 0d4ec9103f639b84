#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "proxy/proxy.h"
#include "util/log.h"

static void serve_usage(FILE *f)
{
    fprintf(f, "usage: bulwark serve -c bulwark.json [--log-level LEVEL]\n"
               "  run the gateway in the foreground; logs go to stderr.\n"
               "  SIGHUP reloads config, policies and secrets; SIGTERM drains; SIGINT stops.\n"
               "\n"
               "  -c, --config FILE   the configuration file\n"
               "  --log-level LEVEL   debug, info (default), warn or error\n"
               "  -h, --help          this text\n");
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
        } else if (!strcmp(argv[i], "--log-level") && i + 1 < argc) {
            static const char *const names[] = {"debug", "info", "warn", "error"};
            const char *v = argv[++i];
            size_t l = 0;
            while (l < 4 && strcmp(v, names[l]))
                l++;
            if (l == 4) {
                fprintf(stderr, "bulwark serve: --log-level must be debug, info, warn or error\n");
                return 2;
            }
            log_set_level((log_level_t)l);
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
