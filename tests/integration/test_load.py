"""Cancel, many concurrent clients, and a huge result read slowly with bounded memory."""

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import psycopg2.errors

from harness import query_msg, raw_login, rss_kib, wait_for

CANCEL_DEADLINE_S = 1.0
CONCURRENT_CLIENTS = 200
STREAM_ROWS = 1_000_000
STREAM_ROW_WIDTH = 200  # bytes of text per row: ~220 MB of DataRows in all
# The gateway's per-session buffers are bounded: while one slow client streams a result
# more than three times this size, the gateway's RSS may not grow by more than this.
RSS_GROWTH_BOUND_MIB = 64
SLOW_PHASE_S = 3.0  # read 4 KiB every 10 ms for this long, then as fast as possible


def test_cancel_during_pg_sleep_returns_57014_within_a_second(gw, pg):
    conn = gw.endpoint(application_name="bwit-cancel").connect()
    marker = "bwit-cancel-marker"
    outcome = {}

    def run_sleep():
        try:
            with conn.cursor() as cur:
                cur.execute(f"select pg_sleep(30) -- {marker}")
            outcome["error"] = None
        except Exception as e:  # noqa: BLE001
            outcome["error"] = e
        outcome["t_end"] = time.monotonic()

    th = threading.Thread(target=run_sleep)
    th.start()
    try:
        wait_for(lambda: pg.backends("state = 'active' and query like %s", (f"%{marker}%",)),
                 10, "the pg_sleep to be running upstream")
        t_cancel = time.monotonic()
        conn.cancel()
        th.join(CANCEL_DEADLINE_S + 5)
        assert not th.is_alive(), "the query was not cancelled"
        elapsed = outcome["t_end"] - t_cancel
        err = outcome["error"]
        assert isinstance(err, psycopg2.errors.QueryCanceled), repr(err)
        assert err.pgcode == "57014"
        assert elapsed < CANCEL_DEADLINE_S, f"cancel took {elapsed:.2f}s"
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("select 'usable after cancel'")
            assert cur.fetchone()[0] == "usable after cancel"
    finally:
        conn.cancel()
        th.join(35)
        conn.close()


def test_cancel_request_with_a_wrong_key_cancels_nothing(gw, pg):
    a = raw_login(gw.endpoint(application_name="bwit-cancel-wrongkey"))
    try:
        a.send(query_msg("select pg_sleep(1.5), 'finished'"))
        wait_for(lambda: pg.backends("state = 'active' and application_name = %s",
                                     ("bwit-cancel-wrongkey",)), 10, "the query to start")
        pid, key = a.backend_key
        s = socket.create_connection((gw.host, gw.port), timeout=5)
        s.sendall((16).to_bytes(4, "big") + (80877102).to_bytes(4, "big")
                  + pid.to_bytes(4, "big") + ((key + 1) % 2**32).to_bytes(4, "big"))
        assert s.recv(1) == b""  # the server just closes a cancel connection
        s.close()
        types = []
        while True:
            t, body = a.read_msg(timeout=10)
            types.append(t)
            if t == b"Z":
                break
        assert b"E" not in types and b"D" in types, types
    finally:
        a.close()


def test_200_concurrent_clients_all_log_in_and_query(gw):
    ep = gw.endpoint(application_name="bwit-many")
    all_in = threading.Barrier(CONCURRENT_CLIENTS, timeout=120)

    def client(i):
        t0 = time.monotonic()
        try:
            conn = psycopg2.connect(**ep.kwargs(connect_timeout=60))
        except Exception as e:
            all_in.abort()  # the others need not wait for the barrier's timeout
            raise AssertionError(f"client {i} could not log in after "
                                 f"{time.monotonic() - t0:.1f}s: {e}") from None
        try:
            all_in.wait()  # every client is connected at the same moment
            with conn.cursor() as cur:
                cur.execute("select pg_backend_pid(), %s::int", (i,))
                pid, echo = cur.fetchone()
            assert echo == i
            return pid
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=CONCURRENT_CLIENTS) as pool:
        futures = [pool.submit(client, i) for i in range(CONCURRENT_CLIENTS)]
        errors, pids = [], []
        for f in futures:
            try:
                pids.append(f.result(timeout=180))
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
    errors.sort(key=lambda e: "BrokenBarrierError" in e)  # root causes first
    assert not errors, f"{len(errors)} of {CONCURRENT_CLIENTS} clients failed, e.g. {errors[:3]}"
    assert len(set(pids)) == CONCURRENT_CLIENTS


class RssSampler(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stop_flag = threading.Event()

    def run(self):
        while not self.stop_flag.is_set():
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except (FileNotFoundError, ProcessLookupError):
                return
            self.stop_flag.wait(0.02)


def test_million_row_result_streams_to_a_slow_reader_with_bounded_gateway_memory(gw):
    c = raw_login(gw.endpoint(application_name="bwit-stream"), timeout=60)
    sampler = None
    if not gw.is_direct:
        baseline = rss_kib(gw.pid)
        sampler = RssSampler(gw.pid)
        sampler.start()
    sql = (f"select g, repeat('x', {STREAM_ROW_WIDTH}) "
           f"from generate_series(1, {STREAM_ROWS}) g")
    c.send(query_msg(sql))
    sock = c.sock
    buf = bytearray()
    rows = 0
    tag = None
    t0 = time.monotonic()
    done = False
    slow_bytes = 0
    while not done:
        slow = time.monotonic() - t0 < SLOW_PHASE_S
        sock.settimeout(60)
        chunk = sock.recv(4096 if slow else 1 << 20)
        assert chunk, "connection closed mid-result"
        if slow:
            slow_bytes += len(chunk)
        buf += chunk
        off = 0
        n = len(buf)
        while n - off >= 5:
            length = int.from_bytes(buf[off + 1:off + 5], "big")
            if n - off < 1 + length:
                break
            t = buf[off]
            if t == 0x44:  # DataRow
                rows += 1
            elif t == 0x43:
                tag = bytes(buf[off + 5:off + length]).rstrip(b"\0").decode()
            elif t == 0x45:
                raise AssertionError(f"error mid-stream: {bytes(buf[off:off + length + 1])!r}")
            elif t == 0x5A:
                done = True
            off += 1 + length
        del buf[:off]
        if slow:
            time.sleep(0.01)
    elapsed = time.monotonic() - t0
    c.close()
    assert rows == STREAM_ROWS
    assert tag == f"SELECT {STREAM_ROWS}"
    # The slow phase really was slow: the result could not have been read in it.
    assert slow_bytes < STREAM_ROWS * STREAM_ROW_WIDTH / 10
    if sampler:
        sampler.stop_flag.set()
        sampler.join()
        growth_mib = (sampler.peak - baseline) / 1024
        print(f"gateway RSS baseline {baseline} KiB, peak {sampler.peak} KiB")
        assert growth_mib < RSS_GROWTH_BOUND_MIB, (
            f"gateway RSS grew by {growth_mib:.1f} MiB (baseline {baseline} KiB, peak "
            f"{sampler.peak} KiB) while streaming; bound {RSS_GROWTH_BOUND_MIB} MiB")
    print(f"streamed {rows} rows in {elapsed:.1f}s")


def test_client_that_stops_reading_mid_result_holds_bounded_memory_and_stalls_nobody(gw, pg):
    """Fault injection (issue 8): the client sends a huge query and never reads. The
    gateway stops reading upstream (PostgreSQL's backend blocks in ClientWrite), its
    memory stays bounded, other sessions go on, and the client's close frees all."""
    app = "bwit-stopped-reader"
    c = raw_login(gw.endpoint(application_name=app), timeout=60)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    baseline = rss_kib(gw.pid) if not gw.is_direct else 0
    c.send(query_msg(f"select g, repeat('x', {STREAM_ROW_WIDTH}) "
                     f"from generate_series(1, {STREAM_ROWS}) g"))
    blocked = ("application_name = %s and state = 'active' and exists (select 1 from "
               "pg_stat_activity a where a.pid = pg_stat_activity.pid and "
               "a.wait_event = 'ClientWrite')")
    wait_for(lambda: pg.backends(blocked, (app,)), 30,
             "the upstream backend to block writing to the gateway")
    other = gw.endpoint(application_name="bwit-beside-stopped").connect()
    try:
        for i in range(20):
            with other.cursor() as cur:
                cur.execute("select count(*) from orders where id > %s", (i,))
                assert cur.fetchone()[0] == max(0, 10 - i)
        # still blocked: the gateway did not read the rest into memory
        assert pg.backends(blocked, (app,))
        if not gw.is_direct:
            growth_mib = (rss_kib(gw.pid) - baseline) / 1024
            assert growth_mib < RSS_GROWTH_BOUND_MIB, f"RSS grew by {growth_mib:.1f} MiB"
    finally:
        other.close()
        c.close(rst=True)
    wait_for(lambda: not pg.backends("application_name = %s", (app,)), 15,
             "the stopped reader's upstream backend to go away")
