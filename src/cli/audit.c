/*
 * bulwark audit verify | export | pubkey (SPEC section 2), and the option
 * parsing the audit-reading commands (sessions, replay) share. They open the
 * store read-only, so they work while the gateway runs.
 */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/pem.h>

#include "audit/audit.h"
#include "cli/cli.h"
#include "config.h"

int cli_audit_opt(const char *cmd, int argc, char **argv, int *i, const char *name,
                  const char **out)
{
    const char *a = argv[*i];
    size_t nl = strlen(name);
    if (!strcmp(a, name)) {
        if (*i + 1 >= argc) {
            fprintf(stderr, "bulwark %s: %s needs a value\n", cmd, name);
            return -1;
        }
        *out = argv[++*i];
        return 1;
    }
    if (!strncmp(a, name, nl) && a[nl] == '=') {
        *out = a + nl + 1;
        return 1;
    }
    return 0;
}

cfg_t *cli_load_config(const char *path)
{
    cfg_errors_t errs = {0};
    cfg_t *c = cfg_load(path, &errs);
    for (size_t i = 0; i < errs.n; i++)
        fprintf(stderr, "%s\n", errs.msgs[i] ? errs.msgs[i] : "(out of memory)");
    if (!c && errs.n == 0)
        fprintf(stderr, "%s: could not be loaded\n", path);
    cfg_errors_free(&errs);
    return c;
}

audit_reader_t *cli_audit_reader(const char *cmd, const char *config, cfg_t **cfg_out)
{
    cfg_t *c = cli_load_config(config);
    if (!c)
        return NULL;
    char err[512];
    audit_reader_t *r = audit_reader_open(c->audit.path, err, sizeof(err));
    if (!r) {
        fprintf(stderr, "bulwark %s: %s\n", cmd, err);
        cfg_release(c);
        return NULL;
    }
    if (cfg_out)
        *cfg_out = c;
    else
        cfg_release(c);
    return r;
}

long long cli_audit_now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (int64_t)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bulwark audit verify -c bulwark.json [--key PEM]\n"
            "       bulwark audit export -c bulwark.json [--since T] [--format jsonl] [--follow]\n"
            "                            [--cursor FILE]\n"
            "       bulwark audit pubkey -c bulwark.json\n"
            "\n"
            "verify   walk the whole record chain and every checkpoint signature; print a\n"
            "         summary and exit 0, or name the first record that was changed,\n"
            "         removed, inserted or reordered and exit 1 (docs/audit.md)\n"
            "export   one JSON object per line for every record (with its hashes) and\n"
            "         checkpoint, for a SIEM or an outside verifier\n"
            "pubkey   print the public half of audit.signing_key_file (PEM), for verifiers\n"
            "\n"
            "  -c, --config FILE   the configuration file (the store is audit.path)\n"
            "  --key PEM           verify: the Ed25519 key (public or private) whose\n"
            "                      signatures to check; default audit.signing_key_file\n"
            "  --since T           export: records from T on: a duration back from now\n"
            "                      (\"1h\") or a UTC time (\"2024-05-01T12:00:00Z\")\n"
            "  --format jsonl      export: the only format\n"
            "  --follow            export: keep streaming new records until interrupted\n"
            "  --cursor FILE       export: start after the records a previous run with this\n"
            "                      cursor exported, and keep it up to date (with stdout a\n"
            "                      file opened for appending, >>: every record exactly once\n"
            "                      across restarts, even after kill -9; --since then only\n"
            "                      applies to the first run)\n"
            "  -h, --help          this text\n");
}

static int verify(cfg_t *c, audit_reader_t *r, const char *key)
{
    audit_verify_result_t res;
    if (!key)
        key = c->audit.signing_key_file;
    if (audit_verify(r, key, &res) != 0) {
        fprintf(stderr, "bulwark audit verify: %s\n", res.problem);
        return 1;
    }
    if (!res.ok) {
        printf("FAILED: %s\n", res.problem);
        if (res.records)
            printf("records %" PRIu64 " to %" PRIu64 " before it verified\n", res.first_seq,
                   res.first_seq + res.records - 1);
        return 1;
    }
    if (res.records)
        printf("ok: records %" PRIu64 " to %" PRIu64 " (%" PRIu64 "), chain intact\n",
               res.first_seq, res.last_seq, res.records);
    else
        printf("ok: the store holds no records\n");
    printf("checkpoints: %" PRIu64 " (%" PRIu64 " signed%s)", res.checkpoints,
           res.checkpoints_signed,
           res.signatures_checked ? ", signatures checked" : ", signatures not checked");
    if (res.last_checkpoint_seq)
        printf(", the last at record %" PRIu64, res.last_checkpoint_seq);
    printf("\n");
    if (res.anchor_seq)
        printf("records 1 to %" PRIu64 " were retired; the chain starts from checkpoint %" PRIu64
               "\n",
               res.anchor_seq, res.anchor_seq);
    if (res.unsigned_tail)
        printf("%" PRIu64 " records after the last checkpoint are not covered by one yet\n",
               res.unsigned_tail);
    if (res.records && !res.clean_end)
        printf("the chain does not end with a clean shutdown (the gateway is running, or "
               "stopped abruptly)\n");
    if (res.warning[0])
        printf("warning: %s\n", res.warning);
    return 0;
}

static volatile int stop_export;

static void on_stop(int sig)
{
    (void)sig;
    stop_export = 1;
}

static int export(audit_reader_t *r, const char *since, bool follow, const char *cursor)
{
    uint64_t from = 0;
    if (since) {
        int64_t t;
        if (!audit_parse_since(since, cli_audit_now_us(), &t)) {
            fprintf(stderr,
                    "bulwark audit export: --since: \"%s\" is neither a duration (1h) nor a "
                    "time (2024-05-01T12:00:00Z)\n",
                    since);
            return 2;
        }
        from = audit_reader_seq_at(r, t);
    }
    signal(SIGPIPE, SIG_IGN);
    if (follow) {
        signal(SIGINT, on_stop);
        signal(SIGTERM, on_stop);
    }
    if (cursor)
        return cli_export_cursor(r, from, cursor, follow, &stop_export);
    if (audit_export(r, from, stdout, follow, &stop_export) != 0) {
        fprintf(stderr, "bulwark audit export: read or write error\n");
        return 1;
    }
    return 0;
}

static int pubkey(cfg_t *c)
{
    if (!c->audit.signing_key_file) {
        fprintf(stderr, "bulwark audit pubkey: audit.signing_key_file is not set\n");
        return 1;
    }
    FILE *f = fopen(c->audit.signing_key_file, "r");
    EVP_PKEY *k = f ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    if (!k || EVP_PKEY_get_id(k) != EVP_PKEY_ED25519 || !PEM_write_PUBKEY(stdout, k)) {
        fprintf(stderr, "bulwark audit pubkey: %s: not an Ed25519 private key\n",
                c->audit.signing_key_file);
        EVP_PKEY_free(k);
        return 1;
    }
    EVP_PKEY_free(k);
    return 0;
}

int cli_audit(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "bulwark audit: verify, export or pubkey? (try `bulwark audit --help`)\n");
        return 2;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "-h") || !strcmp(sub, "--help")) {
        usage(stdout);
        return 0;
    }
    if (strcmp(sub, "verify") && strcmp(sub, "export") && strcmp(sub, "pubkey")) {
        fprintf(stderr, "bulwark audit: unknown command \"%s\" (try `bulwark audit --help`)\n",
                sub);
        return 2;
    }
    char cmd[32];
    snprintf(cmd, sizeof(cmd), "audit %s", sub);
    const char *config = NULL, *key = NULL, *since = NULL, *format = NULL, *cursor = NULL;
    bool follow = false;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], **slot = NULL;
        int got = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--follow") && !strcmp(sub, "export")) {
            follow = true;
            continue;
        }
        const char *v = NULL;
        if ((got = cli_audit_opt(cmd, argc, argv, &i, "-c", &v)) ||
            (got = cli_audit_opt(cmd, argc, argv, &i, "--config", &v)))
            slot = &config;
        else if (!strcmp(sub, "verify") && (got = cli_audit_opt(cmd, argc, argv, &i, "--key", &v)))
            slot = &key;
        else if (!strcmp(sub, "export") &&
                 (got = cli_audit_opt(cmd, argc, argv, &i, "--since", &v)))
            slot = &since;
        else if (!strcmp(sub, "export") &&
                 (got = cli_audit_opt(cmd, argc, argv, &i, "--format", &v)))
            slot = &format;
        else if (!strcmp(sub, "export") &&
                 (got = cli_audit_opt(cmd, argc, argv, &i, "--cursor", &v)))
            slot = &cursor;
        if (got < 0)
            return 2;
        if (!got) {
            fprintf(stderr, "bulwark %s: unexpected argument \"%s\" (try `bulwark audit --help`)\n",
                    cmd, a);
            return 2;
        }
        if (*slot) {
            fprintf(stderr, "bulwark %s: %s given more than once\n", cmd, a);
            return 2;
        }
        *slot = v;
    }
    if (!config || !*config) {
        fprintf(stderr, "bulwark %s: -c FILE is required (try `bulwark audit --help`)\n", cmd);
        return 2;
    }
    if (format && strcmp(format, "jsonl")) {
        fprintf(stderr, "bulwark %s: --format: only \"jsonl\" is supported\n", cmd);
        return 2;
    }
    if (since) {
        int64_t t;
        if (!audit_parse_since(since, 0, &t)) {
            fprintf(stderr,
                    "bulwark %s: --since: \"%s\" is neither a duration (1h) nor a time "
                    "(2024-05-01T12:00:00Z)\n",
                    cmd, since);
            return 2;
        }
    }
    cfg_t *c = NULL;
    audit_reader_t *r = cli_audit_reader(cmd, config, &c);
    if (!r)
        return 1;
    int rc;
    if (!strcmp(sub, "verify"))
        rc = verify(c, r, key);
    else if (!strcmp(sub, "export"))
        rc = export(r, since, follow, cursor && *cursor ? cursor : NULL);
    else
        rc = pubkey(c);
    audit_reader_close(r);
    cfg_release(c);
    return rc;
}
