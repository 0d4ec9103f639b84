/* bulwark explain: what the gateway would do with SQL for a role (SPEC section 2). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pg_query.h>

#include "cli/cli.h"
#include "cli/schema.h"
#include "config.h"
#include "mask/mask.h"
#include "policy/policy.h"
#include "util/buf.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: bulwark explain -c bulwark.json --role R [--json] [--search-path P]\n"
               "                       [--user U] [--schema FILE] SQL\n"
               "\n"
               "Parse SQL as the gateway does and print, for each statement, the accesses it\n"
               "makes (operation and object), the rules that matched each, and the decision;\n"
               "then, for each statement, whether and why each output column is masked and\n"
               "which uses of masked columns deny it (SPEC 5.3).\n"
               "SQL may hold several statements; `-` reads it from standard input. The exit\n"
               "status is 0 when the explanation was printed, whatever the decision.\n"
               "\n"
               "  -c, --config FILE     the configuration file\n"
               "  -r, --role R          the role whose policy applies\n"
               "      --json            one JSON object instead of a table\n"
               "      --search-path P   the session's search_path (default: \"$user\", public)\n"
               "      --user U          the upstream user \"$user\" stands for (default: the\n"
               "                        role's first upstream user)\n"
               "      --schema FILE     the relations masks are planned against, as SQL DDL\n"
               "                        (e.g. `pg_dump --schema-only`); without it every\n"
               "                        relation is unknown and masked whole, as the gateway\n"
               "                        does for a relation missing from its catalog\n"
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

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *b = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (cap - n < 4096) {
            char *g = realloc(b, cap ? cap * 2 : 65536);
            if (!g) {
                free(b);
                fclose(f);
                return NULL;
            }
            b = g;
            cap = cap ? cap * 2 : 65536;
        }
        size_t got = fread(b + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
    }
    fclose(f);
    b[n] = '\0';
    return b;
}

static int no_catalog(void *arg, const char *schema, const char *name, mask_relation_t *out)
{
    return -1;
}

/* The masks of each statement of sql (SPEC 2: explain shows "masks"). Text goes
 * to out; JSON (when json) into *arr. -1 with a message on stderr on failure. */
static int explain_masks(const cfg_t *c, const cfg_role_t *cr, const char *sql, const char *sp,
                         const char *user, const char *schema_file, buf_t *out, cJSON *arr)
{
    char err[512] = "";
    mask_rules_t *rules = mask_rules_compile(cr->masks, c->masking.hash_key,
                                             c->masking.hash_key_len, err, sizeof(err));
    if (!rules) {
        fprintf(stderr, "bulwark explain: masks of role \"%s\": %s\n", cr->name, err);
        return -1;
    }
    int rc = -1;
    xschema_t *xs = NULL;
    char **path = NULL;
    char *ddl = NULL;
    PgQueryParseResult pr = {0};
    cJSON *tree = NULL;
    if (!mask_rules_active(rules)) {
        buf_append(out, "masks: none (the role masks nothing)\n", 37);
        rc = 0;
        goto out;
    }
    if (schema_file) {
        if (!(ddl = read_file(schema_file))) {
            fprintf(stderr, "bulwark explain: cannot read %s\n", schema_file);
            goto out;
        }
        if (!(xs = xschema_load(ddl, rules, err, sizeof(err)))) {
            fprintf(stderr, "bulwark explain: %s: %s\n", schema_file, err);
            goto out;
        }
    }
    path = mask_search_path_parse(sp ? sp : "\"$user\", public", user);
    pr = pg_query_parse(sql);
    if (!path || pr.error || !(tree = cJSON_Parse(pr.parse_tree))) {
        rc = pr.error ? 0 : -1; /* the policy's explanation already shows the parse error */
        goto out;
    }
    if (!xs) {
        const char note[] = "masks: planned without a catalog (--schema): relations are "
                            "unknown here, so their columns show as masked whole\n";
        buf_append(out, note, sizeof(note) - 1);
    }
    int i = 0;
    const cJSON *st;
    cJSON_ArrayForEach(st, cJSON_GetObjectItemCaseSensitive(tree, "stmts"))
    {
        mask_plan_t *p;
        if (mask_plan_statement(rules, st, xs ? xschema_resolve : no_catalog, xs,
                                (const char *const *)path, &p) < 0)
            goto out;
        char head[64];
        int k = snprintf(head, sizeof(head), "masks of statement %d:\n", ++i);
        buf_append(out, head, (size_t)k);
        mask_plan_explain(p, out);
        char why[512];
        if (mask_plan_denied(p, why, sizeof(why))) {
            k = snprintf(head, sizeof(head), "=> denied by masking: ");
            buf_append(out, head, (size_t)k);
            buf_append(out, why, strlen(why));
            buf_append(out, "\n", 1);
        }
        if (arr) {
            cJSON *j = mask_plan_explain_json(p);
            if (j) {
                cJSON_AddBoolToObject(j, "denied", mask_plan_denied(p, why, sizeof(why)));
                cJSON_AddItemToArray(arr, j);
            }
        }
        mask_plan_release(p);
    }
    rc = out->failed ? -1 : 0;
out:
    cJSON_Delete(tree);
    pg_query_free_parse_result(pr);
    mask_search_path_free(path);
    xschema_free(xs);
    free(ddl);
    mask_rules_release(rules);
    return rc;
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
    const char *path = NULL, *role = NULL, *sp = NULL, *user = NULL, *sql = NULL, *schema = NULL;
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
        else if (opt_value(argc, argv, &i, NULL, "--schema", &v))
            slot = &schema;
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
    cfg_t *c = cli_load_config(path);
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
    policy_result_free(&r);
    buf_t mtext;
    buf_init(&mtext, 0);
    cJSON *obj = json && text ? cJSON_Parse(text) : NULL;
    cJSON *masks = obj ? cJSON_AddArrayToObject(obj, "masks") : NULL;
    if (text && (!json || masks) &&
        explain_masks(c, cr, sql, sp, user, schema, &mtext, masks) == 0) {
        if (json) {
            char *o = cJSON_PrintUnformatted(obj);
            if (o)
                printf("%s\n", o);
            rc = o ? 0 : 1;
            free(o);
        } else {
            fputs(text, stdout);
            fwrite(mtext.data, 1, mtext.len, stdout);
            rc = 0;
        }
    }
    cJSON_Delete(obj);
    buf_free(&mtext);
    free(text);
out:
    policy_session_free(ps);
    policy_set_free(set);
    cfg_release(c);
    free(input);
    return rc;
}
