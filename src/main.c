/* bulwark — subcommand dispatch only. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command_t;

static const command_t commands[] = {
    {"serve", cli_serve, "serve -c bulwark.json        run the gateway in the foreground"},
    {"check", cli_check, "check -c bulwark.json        validate config and policy files"},
    {"explain", cli_explain,
     "explain -c bulwark.json --role R [--json] SQL"
     "\n                               show what the gateway would do with SQL"},
    {"token", cli_token,
     "token --secret-file F --iss I --aud A --sub S [--ttl 15m] [--claim k=v]..."
     "\n                               mint a token (development and tests)"},
    {"sessions", cli_sessions,
     "sessions -c bulwark.json [--since 1h] [--role R] [--sub S] [--json]"
     "\n                               list recorded sessions"},
    {"replay", cli_replay,
     "replay -c bulwark.json SESSION [--json]"
     "\n                               print a session as a transcript"},
    {"approvals", cli_approvals,
     "approvals -c bulwark.json [--all] [--grants] [--json]"
     "\n                               list pending approval requests (or all, or grants)"},
    {"approve", cli_approve,
     "approve -c bulwark.json ID [--for 15m] [--as NAME]"
     "\n                               approve a held statement; --for makes it a grant"},
    {"deny", cli_deny,
     "deny -c bulwark.json ID [--reason TEXT] [--as NAME]"
     "\n                               deny a held statement"},
    {"revoke", cli_revoke, "revoke -c bulwark.json ID   revoke a grant"},
    {"demo", cli_demo, "demo [stop]                  the two-minute tour (from a source tree)"},
    {"audit", cli_audit,
     "audit verify|export|pubkey -c bulwark.json"
     "\n                               check the record chain; stream records"},
};

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bulwark COMMAND [options] (`bulwark help` lists the commands)\n");
        return 2;
    }
    if (!strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(bulwark_help_text, stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "bulwark: unknown command \"%s\" (try `bulwark help`)\n", argv[1]);
    return 2;
}
