/*
 * bulwark audit export --cursor FILE [--follow]: an export that resumes where
 * the previous run stopped, for shipping a replica's chain to a central store
 * (issue 10 part 3, docs/audit.md "Following the store").
 *
 * The cursor file holds, as one JSON line, the next record to export and —
 * when stdout is a regular file — how many bytes of that file hold exactly the
 * lines of the records before it:
 *
 *   {"anchored":B,"dev":D,"ino":I,"next":N,"offset":O,"v":1}
 *
 * (anchored: those lines begin with the anchor checkpoint an export that
 * starts after retired records needs, or need none.) A first run writes the
 * cursor before its first line, counting what the file held before it.
 *
 * After each pass the lines are flushed and synced, then the cursor is
 * replaced atomically (a temporary file, fsync, rename, fsync of the
 * directory). A run that dies between the two leaves lines the cursor does
 * not count: the next run cuts the same output file back to the cursor's
 * offset before it resumes, so the file holds every record exactly once
 * whatever moment the follower was killed. Into a pipe the lines of the last
 * pass may come twice after a kill -9 (never a gap): a consumer there dedupes
 * by seq.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "audit/audit.h"
#include "cli/cli.h"

#define CURSOR_MAX 512

typedef struct cursor {
    uint64_t next, dev, ino;
    int64_t offset;
    bool anchored; /* the lines counted hold the anchor checkpoint (or need none) */
    bool have;
} cursor_t;

static bool json_u64(const cJSON *o, const char *name, uint64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 9007199254740992.0)
        return false;
    *out = (uint64_t)v->valuedouble;
    return true;
}

/* 0 (have=false when the file does not exist yet), -1 after printing why. */
static int cursor_read(const char *path, cursor_t *c)
{
    memset(c, 0, sizeof(*c));
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT)
            return 0;
        fprintf(stderr, "bulwark audit export: --cursor %s: %s\n", path, strerror(errno));
        return -1;
    }
    char buf[CURSOR_MAX];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    cJSON *o = cJSON_Parse(buf);
    uint64_t off = 0, v = 0;
    bool ok = cJSON_IsObject(o) && json_u64(o, "v", &v) && v == 1 &&
              json_u64(o, "next", &c->next) && c->next > 0 && json_u64(o, "offset", &off) &&
              json_u64(o, "dev", &c->dev) && json_u64(o, "ino", &c->ino);
    const cJSON *an = cJSON_GetObjectItemCaseSensitive(o, "anchored");
    ok = ok && cJSON_IsBool(an);
    c->anchored = cJSON_IsTrue(an);
    cJSON_Delete(o);
    if (!ok) {
        fprintf(stderr,
                "bulwark audit export: --cursor %s: not a cursor file of this command "
                "(remove it to export from the start)\n",
                path);
        return -1;
    }
    c->offset = (int64_t)off;
    c->have = true;
    return 0;
}

static int cursor_write(const char *path, const cursor_t *c)
{
    char tmp[4200], dir[4200];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
        return -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    char line[CURSOR_MAX];
    int n = snprintf(line, sizeof(line),
                     "{\"anchored\":%s,\"dev\":%" PRIu64 ",\"ino\":%" PRIu64 ",\"next\":%" PRIu64
                     ",\"offset\":%" PRId64 ",\"v\":1}\n",
                     c->anchored ? "true" : "false", c->dev, c->ino, c->next, c->offset);
    bool ok = write(fd, line, (size_t)n) == n && fsync(fd) == 0;
    ok = close(fd) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    snprintf(dir, sizeof(dir), "%s", path);
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    return 0;
}

/* The output is the file the cursor counted: cut what a killed run wrote
 * after its last cursor update. */
static int rewind_output(const char *path, const cursor_t *c, const struct stat *st)
{
    if (!S_ISREG(st->st_mode) || (uint64_t)st->st_dev != c->dev || (uint64_t)st->st_ino != c->ino)
        return 0;
    if (st->st_size < c->offset) {
        fprintf(stderr,
                "bulwark audit export: the output file is shorter (%lld bytes) than --cursor %s "
                "says it was (%lld): it was truncated or replaced; not resuming into it\n",
                (long long)st->st_size, path, (long long)c->offset);
        return -1;
    }
    if (st->st_size > c->offset) {
        if (ftruncate(STDOUT_FILENO, c->offset) != 0) {
            fprintf(stderr, "bulwark audit export: cannot cut the output back to %lld bytes: %s\n",
                    (long long)c->offset, strerror(errno));
            return -1;
        }
        fprintf(stderr,
                "bulwark audit export: dropped %lld bytes of the output written after the last "
                "cursor update (they are exported again)\n",
                (long long)(st->st_size - c->offset));
    }
    return lseek(STDOUT_FILENO, c->offset, SEEK_SET) < 0 ? -1 : 0;
}

int cli_export_cursor(struct audit_reader *r, unsigned long long from, const char *path,
                      bool follow, volatile int *stop)
{
    cursor_t c;
    if (cursor_read(path, &c) != 0)
        return 1;
    struct stat st;
    if (fstat(STDOUT_FILENO, &st) != 0) {
        fprintf(stderr, "bulwark audit export: stdout: %s\n", strerror(errno));
        return 1;
    }
    bool file_out = S_ISREG(st.st_mode);
    bool anchored = false;
    if (c.have) {
        if (rewind_output(path, &c, &st) != 0)
            return 1;
        from = c.next;
        anchored = c.anchored;
    }
    c.dev = (uint64_t)st.st_dev, c.ino = (uint64_t)st.st_ino;
    uint64_t next = from ? from : 1;
    if (!c.have) {
        /* The first run counts what the output held before it: killed before
         * its first pass ended, the next run cuts back to here. */
        off_t end = file_out ? lseek(STDOUT_FILENO, 0, SEEK_END) : 0;
        c.next = next, c.offset = end < 0 ? 0 : (int64_t)end, c.anchored = false;
        if (cursor_write(path, &c) != 0) {
            fprintf(stderr, "bulwark audit export: --cursor %s: cannot write it: %s\n", path,
                    strerror(errno));
            return 1;
        }
    }
    for (;;) {
        uint64_t first = 0, before = next;
        bool started = anchored; /* records were exported before this pass */
        if (audit_export_pass(r, &next, &anchored, stdout, &first) != 0 || fflush(stdout) != 0 ||
            (file_out && fdatasync(STDOUT_FILENO) != 0)) {
            fprintf(stderr, "bulwark audit export: read or write error\n");
            return 1;
        }
        if (first > before && started)
            fprintf(stderr,
                    "bulwark audit export: records %" PRIu64 " to %" PRIu64
                    " were retired before they could be exported\n",
                    before, first - 1);
        if (next != before) {
            off_t at = file_out ? lseek(STDOUT_FILENO, 0, SEEK_CUR) : 0;
            c.next = next, c.offset = at < 0 ? 0 : (int64_t)at, c.anchored = anchored;
            if (cursor_write(path, &c) != 0) {
                fprintf(stderr, "bulwark audit export: --cursor %s: cannot write it: %s\n", path,
                        strerror(errno));
                return 1;
            }
        }
        if (!follow || *stop)
            return 0;
        usleep(200 * 1000);
        if (*stop)
            return 0;
    }
}
