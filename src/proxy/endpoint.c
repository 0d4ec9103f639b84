/* One socket, plain or TLS, with its buffers: non-blocking reads and writes. */
#include <errno.h>
#include <openssl/err.h>
#include <time.h>
#include <unistd.h>

#include "proxy/internal.h"

uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void ep_init(endpoint_t *e, struct ev_loop *loop, int fd,
             void (*cb)(struct ev_loop *, ev_io *, int), void *data)
{
    (void)loop;
    e->fd = fd;
    e->ssl = NULL;
    e->read_wants_write = e->write_wants_read = false;
    buf_init(&e->in, IN_LIMIT);
    buf_init(&e->out, OUT_LIMIT);
    ev_io_init(&e->rw, cb, fd, EV_READ);
    ev_io_init(&e->ww, cb, fd, EV_WRITE);
    e->rw.data = e->ww.data = data;
}

void ep_close(endpoint_t *e, struct ev_loop *loop)
{
    if (e->fd < 0)
        return;
    ev_io_stop(loop, &e->rw);
    ev_io_stop(loop, &e->ww);
    if (e->ssl) {
        SSL_set_quiet_shutdown(e->ssl, 1);
        SSL_free(e->ssl);
        e->ssl = NULL;
    }
    close(e->fd);
    e->fd = -1;
    buf_free(&e->in);
    buf_free(&e->out);
}

static io_status_t tls_status(endpoint_t *e, int ret, bool reading)
{
    int err = SSL_get_error(e->ssl, ret);
    switch (err) {
    case SSL_ERROR_WANT_READ:
        if (!reading)
            e->write_wants_read = true;
        return IO_AGAIN;
    case SSL_ERROR_WANT_WRITE:
        if (reading)
            e->read_wants_write = true;
        return IO_AGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return IO_EOF;
    case SSL_ERROR_SYSCALL:
        ERR_clear_error();
        return (errno == 0 || errno == ECONNRESET) ? IO_EOF : IO_ERR;
    default:
        ERR_clear_error();
        return IO_ERR;
    }
}

/* One read of up to READ_CHUNK; TLS loops over records until the chunk is
 * full or the socket is drained, so that no decrypted bytes sit unseen
 * inside OpenSSL while the watcher waits on an idle socket. */
io_status_t ep_fill(endpoint_t *e)
{
    size_t want = READ_CHUNK;
    if (!buf_reserve(&e->in, want)) {
        e->in.failed = false;
        size_t room = e->in.limit - buf_unread(&e->in);
        if (room == 0 || !buf_reserve(&e->in, room))
            return IO_ERR;
        want = room;
    }
    size_t got = 0;
    while (got < want) {
        uint8_t *dst = e->in.data + e->in.len;
        if (e->ssl) {
            e->read_wants_write = false;
            ERR_clear_error();
            int n = SSL_read(e->ssl, dst, (int)(want - got));
            if (n <= 0) {
                io_status_t st = tls_status(e, n, true);
                if (st == IO_AGAIN || got > 0)
                    return got ? IO_OK : IO_AGAIN;
                return st;
            }
            e->in.len += (size_t)n;
            got += (size_t)n;
        } else {
            ssize_t n = read(e->fd, dst, want - got);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return got ? IO_OK : IO_AGAIN;
            if (n < 0)
                return got ? IO_OK : (errno == ECONNRESET ? IO_EOF : IO_ERR);
            if (n == 0)
                return got ? IO_OK : IO_EOF;
            e->in.len += (size_t)n;
            got += (size_t)n;
            return IO_OK; /* one read(2) per wakeup: the kernel gave what it had */
        }
    }
    return IO_OK;
}

io_status_t ep_flush(endpoint_t *e)
{
    while (buf_unread(&e->out) > 0) {
        size_t n = buf_unread(&e->out);
        if (e->ssl) {
            e->write_wants_read = false;
            ERR_clear_error();
            int w = SSL_write(e->ssl, buf_head(&e->out), n > INT32_MAX ? INT32_MAX : (int)n);
            if (w <= 0)
                return tls_status(e, w, false);
            buf_consume(&e->out, (size_t)w);
        } else {
            ssize_t w = write(e->fd, buf_head(&e->out), n);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return IO_AGAIN;
            if (w < 0)
                return (errno == EPIPE || errno == ECONNRESET) ? IO_EOF : IO_ERR;
            buf_consume(&e->out, (size_t)w);
        }
    }
    return IO_OK;
}

void ep_watch(endpoint_t *e, struct ev_loop *loop, bool want_read)
{
    if (e->fd < 0)
        return;
    bool r = want_read || e->write_wants_read;
    bool w = buf_unread(&e->out) > 0 || e->read_wants_write || e->force_write;
    if (r && !ev_is_active(&e->rw))
        ev_io_start(loop, &e->rw);
    else if (!r && ev_is_active(&e->rw))
        ev_io_stop(loop, &e->rw);
    if (w && !ev_is_active(&e->ww))
        ev_io_start(loop, &e->ww);
    else if (!w && ev_is_active(&e->ww))
        ev_io_stop(loop, &e->ww);
}

const char *ep_tls_version(const endpoint_t *e)
{
    return e->ssl ? SSL_get_version(e->ssl) : "none";
}
