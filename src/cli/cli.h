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

#endif
