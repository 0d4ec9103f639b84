/*
 * bulwark approvals / approve / deny / revoke (SPEC 2 and 6).
 *
 * They run as their own process on the audit store's LMDB environment (the
 * gateway keeps its requests there, src/approval/); a decision written here
 * is seen by the gateway within approvals.poll_interval. The approver is
 * --as NAME (default: the operating-system user), which must be an identity
 * (a token subject matching a role's `sub` pattern) of a role the rule lists
 * in `approvers`, and never the requester; both NAME and the OS user are
 * recorded.
 */
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "approval/approval.h"
#include "audit/audit.h"
#include "cli/cli.h"
#include "util/dur.h"

typedef struct opts {
    const char *config, *as, *reason, *grant_for, *id;
    bool all, json, grants;
} opts_t;

static void usage(FILE *f, const char *cmd)
{
    if (!strcmp(cmd, "approvals"))
        fprintf(f, "usage: bulwark approvals -c bulwark.json [--all] [--grants] [--json]\n"
                   "\n"
                   "List pending approval requests, newest first (--all: every request;\n"
                   "--grants: approvals that still let a statement through).\n");
    else if (!strcmp(cmd, "approve"))
        fprintf(f, "usage: bulwark approve -c bulwark.json ID [--for 15m] [--as NAME]\n"
                   "\n"
                   "Approve request ID: a held statement runs. --for makes the approval a grant:\n"
                   "the same identity may run the same statement fingerprint for that long.\n");
    else if (!strcmp(cmd, "deny"))
        fprintf(f, "usage: bulwark deny -c bulwark.json ID [--reason TEXT] [--as NAME]\n"
                   "\n"
                   "Deny request ID: the held statement fails with 42501 and the reason.\n");
    else
        fprintf(f, "usage: bulwark revoke -c bulwark.json ID [--as NAME]\n"
                   "\n"
                   "Revoke the grant of request ID at once.\n");
    fprintf(f, "\n"
               "  -c, --config FILE   the configuration file (the store is audit.path)\n"
               "  --as NAME           the approver: a token subject of an approver role\n"
               "                      (default: the operating-system user)\n"
               "  -h, --help          this text\n");
}

static int parse_args(const char *cmd, int argc, char **argv, opts_t *o)
{
    bool decide = !strcmp(cmd, "approve") || !strcmp(cmd, "deny") || !strcmp(cmd, "revoke");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL, **slot = NULL;
        int got = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout, cmd);
            return 0;
        }
        if (!decide && (!strcmp(a, "--all") || !strcmp(a, "--json") || !strcmp(a, "--grants"))) {
            *(a[2] == 'a' ? &o->all : a[2] == 'j' ? &o->json : &o->grants) = true;
            continue;
        }
        if ((got = cli_audit_opt(cmd, argc, argv, &i, "-c", &v)) ||
            (got = cli_audit_opt(cmd, argc, argv, &i, "--config", &v)))
            slot = &o->config;
        else if (decide && (got = cli_audit_opt(cmd, argc, argv, &i, "--as", &v)))
            slot = &o->as;
        else if (!strcmp(cmd, "deny") && (got = cli_audit_opt(cmd, argc, argv, &i, "--reason", &v)))
            slot = &o->reason;
        else if (!strcmp(cmd, "approve") && (got = cli_audit_opt(cmd, argc, argv, &i, "--for", &v)))
            slot = &o->grant_for;
        else if (decide && a[0] != '-' && !o->id)
            got = 1, v = a, slot = &o->id;
        if (got < 0)
            return 2;
        if (!got) {
            fprintf(stderr, "bulwark %s: unexpected argument \"%s\" (try `bulwark %s --help`)\n",
                    cmd, a, cmd);
            return 2;
        }
        if (*slot) {
            fprintf(stderr, "bulwark %s: %s given more than once\n", cmd, a);
            return 2;
        }
        *slot = v;
    }
    if (!o->config || !*o->config) {
        fprintf(stderr, "bulwark %s: -c FILE is required (try `bulwark %s --help`)\n", cmd, cmd);
        return 2;
    }
    if (decide && !o->id) {
        fprintf(stderr, "bulwark %s: the request ID is required\n", cmd);
        return 2;
    }
    return -1; /* go on */
}

static cfg_t *load(const char *cmd, const char *config, appr_store_t **st)
{
    cfg_t *c = cli_load_config(config);
    if (!c)
        return NULL;
    char err[512];
    *st = appr_open_cfg(c, err, sizeof(err)); /* LMDB, or state.backend "postgres" */
    if (!*st) {
        fprintf(stderr, "bulwark %s: %s\n", cmd, err);
        cfg_release(c);
        return NULL;
    }
    return c;
}

/* ---- listing ------------------------------------------------------------------------ */

#define MAX_ROWS 10000
#define NCOLS 9

typedef struct listing {
    bool json, grants;
    int64_t now_us;
    cJSON *arr;
    char **cells;
    size_t nrows;
} listing_t;

static char *age_of(int64_t from_us, int64_t now_us)
{
    char b[64];
    int64_t ms = (now_us - from_us) / 1000;
    dur_format(ms < 0 ? 0 : ms / 1000 * 1000, b, sizeof(b));
    return strdup(b);
}

static char *one_line(const char *s, size_t max)
{
    size_t n = strlen(s ? s : "");
    char *o = malloc((n < max ? n : max) + 4);
    if (!o)
        return NULL;
    size_t j = 0;
    for (size_t i = 0; i < n && j < max; i++)
        o[j++] = s[i] == '\n' || s[i] == '\r' || s[i] == '\t' ? ' ' : s[i];
    if (n > max)
        memcpy(o + j, "...", 3), j += 3;
    o[j] = 0;
    return o;
}

static int list_row(void *arg, const appr_req_t *r)
{
    listing_t *l = arg;
    if (l->json) {
        cJSON *o = appr_req_json(r);
        if (o && r->state == APPR_PENDING)
            cJSON_ReplaceItemInObject(o, "state", cJSON_CreateString(appr_state_at(r, l->now_us)));
        cJSON_AddItemToArray(l->arr, o);
        return 0;
    }
    if (l->nrows >= MAX_ROWS)
        return 1;
    char **row = l->cells + l->nrows * NCOLS;
    char id[24], until[64] = "once";
    snprintf(id, sizeof(id), "%llu", (unsigned long long)r->id);
    if (r->grant_until_us) {
        time_t t = (time_t)(r->grant_until_us / 1000000);
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(until, sizeof(until), "%Y-%m-%d %H:%M:%SZ", &tm);
    }
    row[0] = strdup(id);
    row[1] = strdup(appr_state_at(r, l->now_us));
    row[2] = age_of(r->created_us, l->now_us);
    row[3] = strdup(r->sub ? r->sub : "");
    row[4] = strdup(r->role ? r->role : "");
    row[5] = strdup(r->target ? r->target : "");
    row[6] = strdup(r->rule ? r->rule : "");
    row[7] = l->grants ? strdup(until) : strdup(r->by ? r->by : "");
    row[8] = one_line(r->sql, 60);
    l->nrows++;
    return 0;
}

static int run_list(const opts_t *o)
{
    appr_store_t *st;
    cfg_t *c = load("approvals", o->config, &st);
    if (!c)
        return 1;
    listing_t l = {.json = o->json, .grants = o->grants, .now_us = cli_audit_now_us()};
    if (l.json)
        l.arr = cJSON_CreateArray();
    else
        l.cells = calloc((size_t)MAX_ROWS * NCOLS, sizeof(char *));
    int rc = 1;
    if (l.arr || l.cells) {
        int filter = o->grants ? APPR_LIST_GRANTS : o->all ? APPR_LIST_ALL : APPR_LIST_PENDING;
        rc = appr_list(st, filter, l.now_us, 0, list_row, &l) < 0;
    }
    if (rc) {
        fprintf(stderr, "bulwark approvals: cannot read the approvals database\n");
    } else if (l.json) {
        char *s = cJSON_Print(l.arr);
        printf("%s\n", s ? s : "[]");
        free(s);
    } else {
        static const char *const names[NCOLS] = {"id",     "state", "age", "sub",      "role",
                                                 "target", "rule",  "by",  "statement"};
        const char *gnames[NCOLS] = {"id",     "state", "age",   "sub",      "role",
                                     "target", "rule",  "until", "statement"};
        audit_fmt_aligned(stdout, NCOLS, o->grants ? gnames : names, "rllllllll", l.nrows,
                          (const char *const *)l.cells);
    }
    for (size_t i = 0; l.cells && i < l.nrows * NCOLS; i++)
        free(l.cells[i]);
    free(l.cells);
    cJSON_Delete(l.arr);
    appr_close(st);
    cfg_release(c);
    return rc;
}

/* ---- deciding ------------------------------------------------------------------------ */

static const char *os_user(char *buf, size_t n)
{
    struct passwd pw, *res = NULL;
    char tmp[1024];
    if (getpwuid_r(getuid(), &pw, tmp, sizeof(tmp), &res) == 0 && res)
        snprintf(buf, n, "%s", res->pw_name);
    else
        snprintf(buf, n, "uid:%u", (unsigned)getuid());
    return buf;
}

static bool parse_id(const char *cmd, const char *s, uint64_t *id)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (!*s || *end || !v || s[0] == '-') {
        fprintf(stderr, "bulwark %s: \"%s\" is not a request id (a positive number)\n", cmd, s);
        return false;
    }
    *id = v;
    return true;
}

static int decide_fail(const char *cmd, appr_rc_t rc, uint64_t id, const appr_req_t *r,
                       const char *err)
{
    switch (rc) {
    case APPR_NOT_FOUND:
        fprintf(stderr, "bulwark %s: no request %llu\n", cmd, (unsigned long long)id);
        break;
    case APPR_NOT_PENDING:
        fprintf(stderr, "bulwark %s: request %llu is %s, not pending\n", cmd,
                (unsigned long long)id, appr_state_name(r->state));
        break;
    case APPR_EXPIRED:
        fprintf(stderr, "bulwark %s: request %llu expired (its statement timed out)\n", cmd,
                (unsigned long long)id);
        break;
    case APPR_NOT_GRANT:
        fprintf(stderr, "bulwark %s: request %llu has no grant in force\n", cmd,
                (unsigned long long)id);
        break;
    default:
        fprintf(stderr, "bulwark %s: %s\n", cmd, err && *err ? err : "cannot write");
    }
    return 1;
}

static int run_decide(const char *cmd, const opts_t *o)
{
    uint64_t id;
    int64_t grant_ms = 0;
    if (!parse_id(cmd, o->id, &id))
        return 2;
    if (o->grant_for && !appr_parse_duration(o->grant_for, &grant_ms)) {
        fprintf(stderr, "bulwark %s: --for: \"%s\" is not a duration (15m, 1h)\n", cmd,
                o->grant_for);
        return 2;
    }
    appr_store_t *st;
    cfg_t *c = load(cmd, o->config, &st);
    if (!c)
        return 1;
    char user[128], why[512] = "", err[300] = "";
    os_user(user, sizeof(user));
    const char *name = o->as ? o->as : user;
    int64_t now = cli_audit_now_us();
    appr_req_t r;
    appr_rc_t rc = appr_get(st, id, &r);
    int status = 0;
    if (rc != APPR_OK) {
        status = decide_fail(cmd, rc, id, &r, "cannot read the approvals database");
    } else if (!strcmp(cmd, "revoke")) {
        appr_req_free(&r);
        rc = appr_revoke(st, id, name, now, err, sizeof(err));
        if (rc == APPR_OK)
            printf("revoked grant %llu\n", (unsigned long long)id);
        else
            status = decide_fail(cmd, rc, id, &r, err);
    } else {
        const char *role = appr_cli_approver_role(c, &r, name, why, sizeof(why));
        appr_req_free(&r);
        if (!role) {
            fprintf(stderr, "bulwark %s: refused: %s\n", cmd, why);
            status = 1;
        } else {
            appr_decision_t d = {.approve = !strcmp(cmd, "approve"),
                                 .by = name,
                                 .by_role = role,
                                 .os_user = user,
                                 .via = "cli",
                                 .reason = o->reason,
                                 .grant_ms = grant_ms,
                                 .now_us = now};
            rc = appr_decide(st, id, &d, &r, err, sizeof(err));
            if (rc == APPR_OK) {
                char dur[32];
                if (d.approve && grant_ms)
                    printf("approved request %llu as %s (role %s); granted for %s\n",
                           (unsigned long long)id, name, role,
                           dur_format(grant_ms, dur, sizeof(dur)));
                else
                    printf("%s request %llu as %s (role %s)\n", d.approve ? "approved" : "denied",
                           (unsigned long long)id, name, role);
            } else {
                status = decide_fail(cmd, rc, id, &r, err);
            }
            appr_req_free(&r);
        }
    }
    appr_close(st);
    cfg_release(c);
    return status;
}

static int run(const char *cmd, int argc, char **argv)
{
    opts_t o = {0};
    int rc = parse_args(cmd, argc, argv, &o);
    if (rc >= 0)
        return rc;
    return !strcmp(cmd, "approvals") ? run_list(&o) : run_decide(cmd, &o);
}

int cli_approvals(int argc, char **argv)
{
    return run("approvals", argc, argv);
}

int cli_approve(int argc, char **argv)
{
    return run("approve", argc, argv);
}

int cli_deny(int argc, char **argv)
{
    return run("deny", argc, argv);
}

int cli_revoke(int argc, char **argv)
{
    return run("revoke", argc, argv);
}
