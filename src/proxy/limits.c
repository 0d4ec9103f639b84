/*
 * limits — what the gateway sets for itself so that many clients, and clients
 * that vanish, cannot exhaust it.
 *
 *  - File descriptors: every client costs one descriptor and its upstream one
 *    more. Distributions start processes with a soft RLIMIT_NOFILE of 1024,
 *    which would stop `max_client_conn` near 500; at start the gateway raises
 *    its soft limit to the hard limit (no privilege needed) and logs both.
 *    When accept() still runs out, server.c pauses accepting for 100 ms.
 *  - Half-open clients: a client whose host vanishes without FIN or RST would
 *    hold its session and its upstream backend forever. Client sockets get TCP
 *    keepalive (first probe after `tcp_keepalive` of silence, then 4 probes
 *    tcp_keepalive/4 apart, at least 1s) and TCP_USER_TIMEOUT (data the client
 *    does not acknowledge for as long as that whole probe sequence ends the
 *    connection). A client that is alive but reads slowly acknowledges the
 *    kernel's zero-window probes, so backpressure is not mistaken for death.
 *
 * Both run on the loop thread; neither blocks.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include "proxy/internal.h"
#include "util/log.h"

void proxy_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t was = rl.rlim_cur;
    if (rl.rlim_cur != rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
            log_event(LOG_WARN, "nofile_limit", "soft=%llu hard=%llu error=\"%s\"",
                      (unsigned long long)was, (unsigned long long)rl.rlim_max, strerror(errno));
            return;
        }
    }
    log_event(LOG_INFO, "nofile_limit", "soft=%llu raised_from=%llu",
              (unsigned long long)rl.rlim_cur, (unsigned long long)was);
}

void proxy_client_keepalive(int fd, int64_t idle_ms)
{
    if (idle_ms <= 0)
        return;
    int one = 1;
    int idle = (int)((idle_ms + 999) / 1000);
    int intvl = idle / 4 > 0 ? idle / 4 : 1;
    int cnt = 4;
    unsigned int user_timeout = (unsigned int)(idle + intvl * cnt) * 1000u;
    /* Best effort: a socket option the kernel refuses leaves the defaults. */
    (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
    (void)setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof(user_timeout));
}
