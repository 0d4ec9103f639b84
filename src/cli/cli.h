/*
 * cli — one function per subcommand. Each takes the arguments after the
 * subcommand name (argv[0] is the subcommand) and returns the process exit
 * status: 0 success, 1 failure of the operation, 2 bad arguments (after
 * printing a one-line reason to stderr).
 */
#ifndef BULWARK_CLI_H
#define BULWARK_CLI_H

int cli_serve(int argc, char **argv);
int cli_check(int argc, char **argv);
int cli_explain(int argc, char **argv);
int cli_token(int argc, char **argv);
int cli_sessions(int argc, char **argv);
int cli_replay(int argc, char **argv);
int cli_audit(int argc, char **argv);
int cli_approvals(int argc, char **argv); /* approvals.c */
int cli_approve(int argc, char **argv);
int cli_deny(int argc, char **argv);
int cli_revoke(int argc, char **argv);
int cli_demo(int argc, char **argv); /* demo.c: runs scripts/demo.sh of a source tree */

/* `bulwark help`: docs/cli.txt, made a C string at build time (scripts/txt2c.awk);
 * the man page bulwark.1 is made from the same file (scripts/txt2man.awk). */
extern const char bulwark_help_text[];

/* Shared by audit, sessions and replay (src/cli/audit.c): one option with a
 * value ("--name V" or "--name=V"; 1 taken, 0 not this option, -1 value
 * missing, reported); load the config and open its audit store read-only
 * (NULL after printing why; *cfg_out, if given, to be released); the clock. */
struct audit_reader;
struct cfg;
/* Every command's config loading: the config at path, or NULL after printing every
 * error (src/cli/audit.c). */
struct cfg *cli_load_config(const char *path);
int cli_audit_opt(const char *cmd, int argc, char **argv, int *i, const char *name,
                  const char **out);
struct audit_reader *cli_audit_reader(const char *cmd, const char *config, struct cfg **cfg_out);
long long cli_audit_now_us(void);
/* audit export --cursor FILE [--follow] (src/cli/export.c): exit status. */
int cli_export_cursor(struct audit_reader *r, unsigned long long from, const char *cursor,
                      _Bool follow, volatile int *stop);

#endif
