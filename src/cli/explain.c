/* bulwark explain: what the gateway would do with SQL for a role (SPEC section 2). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "config.h"
#include "policy/policy.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: bulwark explain -c bulwark.json --role R [--json] [--search-path P]\n"
               "                       [--user U] SQL\n"
               "\n"
               "Parse SQL as the gateway does and print, for each statement, the accesses it\n"
               "makes (operation and object), the rules that matched each, and the decision.\n"
               "SQL may hold several statements; `-` reads it from standard input. The exit\n"
               "status is 0 when the explanation was printed, whatever the decision.\n"
               "\n"
               "  -c, --config FILE     the configuration file\n"
               "  -r, --role R          the role whose policy applies\n"
               "      --json            one JSON object instead of a table\n"
               "      --search-path P   the session's search_path (default: \"$user\", public)\n"
               "      --user U          the upstream user \"$user\" stands for (default: the\n"
               "                        role's first upstream user)\n"
               "  -h, --help            this text\n");
}

static char *read_stdin(size_t *len)
{
    size_t cap = 4096, n = 0;
    char *b = malloc(cap);
    while (b) {
        size_t got = fread(b + n, 1, cap - n - 1, stdin);
        n += got;
        if (got == 0)
            break;
        if (cap - n < 2) {
            char *g = realloc(b, cap * 2);
            if (!g) {
                free(b);
                return NULL;
            }
            b = g;
            cap *= 2;
        }
    }
    if (b)
        b[n] = '\0';
    *len = n;
    return b;
}

/* Option with a value: "-x V", "--long V" or "--long=V". Returns 1 if matched
 * (value in *val, or NULL when missing), 0 if not this option. */
static int opt_value(int argc, char **argv, int *i, const char *sh, const char *lo,
                     const char **val)
{
    const char *a = argv[*i];
    size_t l = strlen(lo);
    if ((sh && !strcmp(a, sh)) || !strcmp(a, lo)) {
        *val = *i + 1 < argc ? argv[++*i] : NULL;
        return 1;
    }
    if (!strncmp(a, lo, l) && a[l] == '=') {
        *val = a + l + 1;
        return 1;
    }
    return 0;
}

int cli_explain(int argc, char **argv)
{
    const char *path = NULL, *role = NULL, *sp = NULL, *user = NULL, *sql = NULL;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        const char **slot = NULL;
        const char *name = a;
        if (opt_value(argc, argv, &i, "-c", "--config", &v))
            slot = &path;
        else if (opt_value(argc, argv, &i, "-r", "--role", &v))
            slot = &role;
        else if (opt_value(argc, argv, &i, NULL, "--search-path", &v))
            slot = &sp;
        else if (opt_value(argc, argv, &i, NULL, "--user", &v))
            slot = &user;
        else if (!strcmp(a, "--json")) {
            json = true;
            continue;
        } else if (a[0] == '-' && a[1] && strcmp(a, "--")) {
            fprintf(stderr,
                    "bulwark explain: unknown option \"%s\" (try `bulwark explain --help`)\n", a);
            return 2;
        } else {
            if (!strcmp(a, "--") && i + 1 < argc)
                a = argv[++i];
            if (sql) {
                fprintf(stderr, "bulwark explain: give the SQL as one argument (quote it)\n");
                return 2;
            }
            sql = a;
            continue;
        }
        if (!v) {
            fprintf(stderr, "bulwark explain: %s needs a value\n", name);
            return 2;
        }
        if (*slot) {
            fprintf(stderr, "bulwark explain: %s given more than once\n", name);
            return 2;
        }
        *slot = v;
    }
    if (!path || !*path || !role || !sql) {
        fprintf(stderr, "bulwark explain: -c FILE, --role R and SQL are required (try `bulwark "
                        "explain --help`)\n");
        return 2;
    }
    char *input = NULL;
    size_t len = strlen(sql);
    if (!strcmp(sql, "-")) {
        if (!(input = read_stdin(&len))) {
            fprintf(stderr, "bulwark explain: cannot read standard input\n");
            return 1;
        }
        sql = input;
    }
    cfg_errors_t errs = {0};
    cfg_t *c = cfg_load(path, &errs);
    for (size_t i = 0; i < errs.n; i++)
        fprintf(stderr, "%s\n", errs.msgs[i] ? errs.msgs[i] : "(out of memory)");
    cfg_errors_free(&errs);
    if (!c) {
        free(input);
        return 1;
    }
    int rc = 1;
    policy_set_t *set = policy_set_new(c);
    const cfg_role_t *cr = cfg_find_role(c, role);
    const policy_role_t *pr = set ? policy_set_role(set, role) : NULL;
    policy_session_t *ps = NULL;
    if (!cr || !pr) {
        if (set)
            fprintf(stderr, "bulwark explain: no role \"%s\" in %s\n", role, path);
        else
            fprintf(stderr, "bulwark explain: out of memory\n");
        if (set)
            rc = 2;
        goto out;
    }
    if (!user)
        user = cr->n_upstreams ? cr->upstreams[0].user : "";
    ps = policy_session_new(sp, user);
    policy_result_t r;
    if (!ps || policy_check(pr, NULL, ps, sql, len, &r) < 0) {
        fprintf(stderr, "bulwark explain: out of memory\n");
        goto out;
    }
    char *text = json ? policy_explain_json(&r, sql, len) : policy_explain_text(&r, sql, len);
    if (text) {
        fputs(text, stdout);
        if (json)
            fputc('\n', stdout);
        rc = 0;
    }
    free(text);
    policy_result_free(&r);
out:
    policy_session_free(ps);
    policy_set_free(set);
    cfg_release(c);
    free(input);
    return rc;
}
