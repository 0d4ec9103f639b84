"""Fault injection (issue 8): the upstream restarted under load, an upstream that never
answers, thousands of idle connections, slowloris, half-open clients, SIGHUP with broken
files and under load, and a full disk under the audit store.

Each fault gets its own gateway (FaultGateway: the harness's gateway with extra config
keys and, where needed, its own PostgreSQL), so the shared PostgreSQL and the other
modules' gateways are never disturbed. The client that stops reading during a large
result is in test_load.py, beside the slow reader.
"""

import json
import os
import resource
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import psycopg2
import pytest

import harness
from harness import (OWNER, Gateway, GatewayOptions, PgError, PgServer, RawPg,
                     parse_error_fields, raw_login, startup_packet, wait_for)

pytestmark = pytest.mark.gateway_only

FAST_LOGIN_TIMEOUT_S = 3
BLACKHOLE_LOGIN_TIMEOUT_S = 8  # room for slow token minting and queries under ASan
KEEPALIVE_S = 2  # tcp_keepalive of the half-open test's gateway
IDLE_CONNECTIONS = 2000
TCP_REPAIR = 19  # linux/tcp.h: a socket closed in repair mode sends neither FIN nor RST


class FaultGateway(Gateway):
    """The harness gateway plus `extra` keys in bulwark.json, extra `targets`, and an
    optional soft RLIMIT_NOFILE to start under (to check that the gateway raises it)."""

    def __init__(self, *a, extra=None, targets=None, nofile_soft=None, **kw):
        super().__init__(*a, **kw)
        self.extra = extra or {}
        self.extra_targets = targets or {}
        self.nofile_soft = nofile_soft

    def targets(self):
        t = super().targets()
        t.update(self.extra_targets)
        return t

    def write_config(self):
        super().write_config()
        cfg = json.loads(self.config_path.read_text())
        cfg.update(self.extra)
        self.config_path.write_text(json.dumps(cfg, indent=2))
        if self.nofile_soft:
            wrapper = self.workdir / "bulwark-lowfd"
            wrapper.write_text(f"#!/bin/sh\nulimit -S -n {self.nofile_soft} || exit 99\n"
                               f"exec '{self.binary}' \"$@\"\n")
            wrapper.chmod(0o755)
            self.binary = wrapper

    def set_config(self, **kw):
        cfg = json.loads(self.config_path.read_text())
        cfg.update(kw)
        self.config_path.write_text(json.dumps(cfg, indent=2))


@pytest.fixture(scope="module")
def fault_gateway(bulwark_bin, pg, certdir, secret_registry, tmp_path_factory):
    made = []

    def make(name, pg_=None, **kw):
        g = FaultGateway(bulwark_bin, tmp_path_factory.mktemp(name), pg_ or pg, certdir,
                         GatewayOptions(tls=False), secret_registry, name=name, **kw)
        g.start()
        made.append(g)
        return g

    yield make
    for g in made:
        if g.stopped_by_test:
            continue
        alive = g.alive()
        status = g.stop()
        assert alive, f"{g.name} had died:\n{g.log_tail()}"
        assert status == 0, f"{g.name} did not exit 0 on SIGTERM ({status}):\n{g.log_tail()}"


def ask(conn, n):
    with conn.cursor() as cur:
        cur.execute("select %s::int + 0", (n,))
        return cur.fetchone()[0]


def check_serving(g):
    c = g.endpoint(application_name="bwit-fault-check").connect()
    try:
        assert ask(c, 5) == 5
    finally:
        c.close()
    assert g.alive()


class Load:
    """`n` clients, each in a loop: log in if needed, run a query, note the outcome.
    Raw protocol clients, so that the SQLSTATE of an error sent just before a close is
    seen (libpq reports only "server closed the connection unexpectedly" then)."""

    def __init__(self, g, n, sql="select count(*) from orders", reconnect=True):
        self.g, self.sql, self.reconnect = g, sql, reconnect
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.ok = [0] * n
        self.errors = [[] for _ in range(n)]  # (phase, sqlstate or None, message)
        self.phase = "before"
        self.eps = [g.endpoint(application_name=f"bwit-load-{i}") for i in range(n)]
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(n)]

    def start(self):
        for t in self.threads:
            t.start()
        wait_for(lambda: all(self.ok), 60, "every load client to run a query")
        return self

    def _query(self, c):
        """(None, rows) or (sqlstate, message): an ErrorResponse, or "EOF" for a close
        with none before it."""
        c.send(harness.query_msg(self.sql))
        err, rows = None, 0
        while True:
            try:
                t, body = c.read_msg(timeout=30)
            except (EOFError, OSError) as e:
                if err:
                    return err
                return ("EOF", repr(e))
            if t == b"E" and not err:
                f = parse_error_fields(body)
                err = (f.get("C"), f.get("M"))
            elif t == b"D":
                rows += 1
            elif t == b"Z":
                return err or (None, rows)

    def _run(self, i):
        c = None
        while not self.stop_flag.is_set():
            try:
                if c is None:
                    c = raw_login(self.eps[i])
                code, text = self._query(c)
            except PgError as e:
                code, text = e.sqlstate, e.fields.get("M")
            except OSError as e:
                code, text = "connect", repr(e)
            with self.lock:
                if code is None:
                    self.ok[i] += 1
                    continue
                self.errors[i].append((self.phase, code, text))
            if c is not None:
                c.close()
                c = None
            if not self.reconnect:
                return
            time.sleep(0.05)
        if c is not None:
            c.close()

    def counts(self):
        with self.lock:
            return list(self.ok)

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(30)


# ---------------------------------------------------------------------------------------
# the upstream restarted during load


@pytest.fixture(scope="module")
def pg2(session_dir, certdir):
    """A second PostgreSQL only this module restarts and kills."""
    server = PgServer(session_dir / "f2", certdir)
    server.start()
    try:
        server.setup()
        yield server
    finally:
        server.stop()


def pg_processes(pg_):
    """The postmaster's pid and its children's."""
    master = int((pg_.datadir / "postmaster.pid").read_text().split()[0])
    pids = [master]
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                pids.append(int(d))
    return pids


def dead(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except OSError:
        return True


def crash(pg_):
    """kill -9 the postmaster and every backend at once, as a host crash would. They are
    all stopped first: a backend still running when the postmaster dies would notice and
    say FATAL 57P01 itself ("unexpected postmaster exit"), which no host crash does."""
    pids = pg_processes(pg_)
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    wait_for(lambda: all(dead(p) for p in pids), 10, "PostgreSQL's processes to die")
    # the postmaster may stay a zombie (nobody here reaps it), which pg_ctl would take
    # for a running server: the lock files go, as after a reboot
    (pg_.datadir / "postmaster.pid").unlink()
    for p in pg_.datadir.glob(".s.PGSQL.*"):
        p.unlink()


@pytest.mark.parametrize("how", ["crash", "fast-stop"])
def test_upstream_restart_under_load_ends_sessions_with_08006_and_new_ones_work(
        fault_gateway, pg2, how):
    g = fault_gateway(f"gw-restart-{how}", pg_=pg2)
    pid = g.pid
    load = Load(g, 8).start()
    try:
        before = load.counts()
        wait_for(lambda: all(a > b for a, b in zip(load.counts(), before)), 30,
                 "every client to make progress")
        load.phase = "down"
        if how == "crash":
            crash(pg2)
        else:
            pg2.stop()
        # while it is down, a new session is refused at login with FATAL 08006
        ep = g.endpoint(application_name="bwit-while-down")
        c = RawPg(g.host, g.port)
        c.startup(ep.user, ep.dbname)
        with pytest.raises(PgError) as ei:
            c.finish_login(ep.user, ep.password)
        assert ei.value.severity == "FATAL" and ei.value.sqlstate == "08006", ei.value.fields
        c.close()
        wait_for(lambda: all(load.errors), 30, "every client to see its session end")
        pg2.start()
        load.phase = "back"
        mark = load.counts()
        wait_for(lambda: all(a > b for a, b in zip(load.counts(), mark)), 60,
                 "every client to work again through new sessions")
    finally:
        load.stop()
        if not pg2.datadir.joinpath("postmaster.pid").exists():
            pg2.start()
    assert g.alive() and g.pid == pid, "the gateway restarted"
    # Each session that was open when PostgreSQL went away ended with 08006 from the
    # gateway (a fast stop makes PostgreSQL itself say 57P01 first, which is relayed).
    allowed = {"08006"} if how == "crash" else {"08006", "57P01"}
    for i, errs in enumerate(load.errors):
        first = errs[0]
        assert first[0] == "down", f"client {i} failed before the restart: {first}"
        assert first[1] in allowed, f"client {i}: {first}; all: {load.errors}"
        # later attempts while PostgreSQL was down were refused at login with FATAL
        # 08006 (or found it still starting: 57P03, "the database system is starting up")
        for phase, code, text in errs[1:]:
            assert phase in ("down", "back") and code in allowed | {"57P03"}, (i, phase, code,
                                                                               text)
    check_serving(g)
    assert "upstream" in g.log_text()


# ---------------------------------------------------------------------------------------
# an upstream that accepts TCP and never answers


class BlackHole:
    """Accepts TCP connections and never sends a byte."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(256)
        self.port = self.lsock.getsockname()[1]
        self.held = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            self.held.append(c)

    def close(self):
        self.closed = True
        self.lsock.close()
        for c in self.held:
            c.close()


def test_upstream_that_never_answers_times_out_the_login_and_stalls_nobody(fault_gateway):
    hole = BlackHole()
    timeout_s = BLACKHOLE_LOGIN_TIMEOUT_S
    try:
        g = fault_gateway("gw-blackhole", extra={"login_timeout": f"{timeout_s}s"},
                          targets={"blackhole": {"host": "127.0.0.1", "port": hole.port,
                                                 "dbname": "shop", "sslmode": "disable"}})
        healthy = g.endpoint(application_name="bwit-beside-blackhole").connect()
        healthy.autocommit = True
        eps = [g.endpoint(target="blackhole") for _ in range(20)]  # tokens minted first
        results, threads = [], []

        def stuck_login(ep):
            c = RawPg(g.host, g.port, timeout=timeout_s + 20)
            t0 = time.monotonic()
            try:
                c.login(ep.user, ep.password, ep.dbname)
                results.append(("logged in", None, 0))
            except PgError as e:
                results.append((e.severity, e.sqlstate, time.monotonic() - t0, e.fields["M"]))
            finally:
                c.close()

        for ep in eps:
            threads.append(threading.Thread(target=stuck_login, args=(ep,)))
            threads[-1].start()
        wait_for(lambda: len(hole.held) >= 20, timeout_s, "the gateway to reach the black hole")
        # The loop keeps serving the healthy session while 20 logins hang upstream: these
        # queries all finish before any of those logins times out (a loop blocked by them
        # would answer only after login_timeout).
        for i in range(10):
            assert ask(healthy, i) == i
        assert not results, f"logins ended before the healthy queries did: {results}"
        for t in threads:
            t.join(timeout_s + 20)
        assert len(results) == 20
        for r in results:
            assert r[:2] == ("FATAL", "08006"), r
            assert timeout_s - 0.5 < r[2] < timeout_s + 10, r
            assert "did not answer within login_timeout" in r[3], r
        healthy.close()
        check_serving(g)
    finally:
        hole.close()


# ---------------------------------------------------------------------------------------
# many idle connections plus load; the soft descriptor limit is raised by the gateway


def test_2000_idle_connections_plus_active_load(fault_gateway):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = IDLE_CONNECTIONS + 500
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need * 2), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < need * 2:
        pytest.skip("the hard descriptor limit is too low for this test")
    # Started with a soft limit of 1024: without raising it, the gateway would stop
    # near 1000 connections.
    g = fault_gateway("gw-idle", nofile_soft=1024,
                      extra={"max_client_conn": IDLE_CONNECTIONS + 200, "login_timeout": "120s"})
    assert "event=nofile_limit" in g.log_text() and "raised_from=1024" in g.log_text(), \
        g.log_tail()
    idle = []
    try:
        # half of them said nothing at all, half completed SSLRequest ('N': plaintext) and
        # wait at the startup packet; 20 more are logged-in sessions that stay idle
        for i in range(IDLE_CONNECTIONS):
            s = socket.create_connection((g.host, g.port), timeout=10)
            if i % 2:
                s.sendall(struct.pack("!II", 8, harness.SSL_REQUEST))
            idle.append(s)
        for s in idle[1::2]:
            assert s.recv(1) == b"N"
        sessions = [g.endpoint(application_name=f"bwit-idle-{i}").connect() for i in range(20)]
        load = Load(g, 8, reconnect=False).start()
        mark = load.counts()
        wait_for(lambda: all(c >= m + 20 for c, m in zip(load.counts(), mark)), 120,
                 "each load client to run 20 more queries")
        load.stop()
        assert not any(load.errors), load.errors
        for i, c in enumerate(sessions):
            assert ask(c, i) == i
            c.close()
        # every idle connection is still open (none was dropped to make room)
        for s in idle[:50]:
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)
    finally:
        for s in idle:
            s.close()
    check_serving(g)


# ---------------------------------------------------------------------------------------
# slowloris and half-open clients


def test_slowloris_startup_packet_is_dropped_after_the_login_timeout(fault_gateway):
    g = fault_gateway("gw-slowloris", extra={"login_timeout": f"{FAST_LOGIN_TIMEOUT_S}s"})
    healthy = g.endpoint(application_name="bwit-beside-slowloris").connect()
    pkt = startup_packet({"user": "app", "database": "shop", "application_name": "x" * 40})
    outcome = {}

    def drip(k):
        s = socket.create_connection((g.host, g.port), timeout=30)
        t0 = time.monotonic()
        sent = 0
        try:
            for b in pkt:
                s.sendall(bytes([b]))
                sent += 1
                time.sleep(1.0)
        except OSError:
            pass
        # read what the gateway said before it closed
        s.settimeout(5)
        data = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        outcome[k] = (sent, time.monotonic() - t0, data)
        s.close()

    threads = [threading.Thread(target=drip, args=(k,)) for k in range(30)]
    for t in threads:
        t.start()
    time.sleep(1)
    assert ask(healthy, 1) == 1
    for t in threads:
        t.join(60)
    assert len(outcome) == 30
    for k, (sent, elapsed, data) in outcome.items():
        assert sent < len(pkt), f"the whole packet ({sent} bytes) went through"
        assert sent <= FAST_LOGIN_TIMEOUT_S + 3, f"{sent} bytes were accepted"
        if data:
            assert data[:1] == b"E", data
            f = parse_error_fields(data[5:])
            assert f.get("V") == "FATAL" and f.get("C") == "57014", f
    assert ask(healthy, 2) == 2
    healthy.close()
    check_serving(g)


def vanish(sock):
    """Close a socket without FIN or RST: the peer's side is left half open."""
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    sock.close()


def test_half_open_client_is_found_by_keepalive_and_its_upstream_released(fault_gateway, pg):
    g = fault_gateway("gw-halfopen", extra={"tcp_keepalive": f"{KEEPALIVE_S}s"})
    app = "bwit-halfopen"
    c = raw_login(g.endpoint(application_name=app))
    c.query("select 1")
    assert pg.backends("application_name = %s", (app,))
    try:
        vanish(c.sock)
    except OSError as e:
        pytest.skip(f"TCP_REPAIR needs CAP_NET_ADMIN: {e}")
    t0 = time.monotonic()
    # keepalive idle 2s, probes 1s apart: found within a few seconds, not the kernel's
    # default two hours
    wait_for(lambda: not pg.backends("application_name = %s", (app,)), KEEPALIVE_S + 10,
             "the half-open session's upstream backend to go away")
    print(f"half-open session ended after {time.monotonic() - t0:.1f}s")
    check_serving(g)


def test_half_open_client_during_a_login_is_dropped_by_the_login_timeout(fault_gateway):
    g = fault_gateway("gw-halfopen-login",
                      extra={"login_timeout": f"{FAST_LOGIN_TIMEOUT_S}s", "tcp_keepalive": "1h"})
    s = socket.create_connection((g.host, g.port))
    s.sendall(startup_packet({"user": "app", "database": "shop"})[:9])
    local = s.getsockname()
    vanish(s)

    def gone():
        out = subprocess.run(["ss", "-tn", "state", "established", "dst",
                              f"{local[0]}:{local[1]}"], capture_output=True, text=True).stdout
        return str(g.port) not in out
    wait_for(gone, FAST_LOGIN_TIMEOUT_S + 5, "the gateway to drop the vanished login")
    check_serving(g)


# ---------------------------------------------------------------------------------------
# SIGHUP


def reloads(g, kind):
    return g.log_text().count(f"event={kind}")


@pytest.mark.parametrize("breakage", ["policy", "key"])
def test_sighup_with_a_broken_policy_or_key_file_keeps_the_old_config(fault_gateway, breakage):
    g = fault_gateway(f"gw-hup-{breakage}")
    old_conn = g.endpoint(application_name="bwit-before-hup").connect()
    old_conn.autocommit = True
    token_ep = g.endpoint()  # a token minted with the secret in force
    path = (g.workdir / "policies" / "app.json") if breakage == "policy" else g.secret_path
    good = path.read_bytes()
    pos = len(g.log_text())
    try:
        path.write_bytes(b'{"role": "app", "identities": [' if breakage == "policy"
                         else b"short")
        g.proc.send_signal(signal.SIGHUP)

        # The write alone may trigger a reload (file watch) before SIGHUP does; either
        # way the failure is logged with a config_error naming the file.
        def failed_and_named():
            seg = g.log_text()[pos:]
            return ("event=reload_failed" in seg and "event=config_error" in seg
                    and path.name in seg)
        wait_for(failed_and_named, 10, "reload_failed and a config_error naming the file")
        assert g.alive()
        assert ask(old_conn, 3) == 3
        c = token_ep.with_(application_name="bwit-after-hup").connect()
        assert ask(c, 4) == 4
        c.close()
    finally:
        path.write_bytes(good)
    old_conn.close()


def test_sighup_under_load_drops_no_session(fault_gateway):
    g = fault_gateway("gw-hup-load")
    load = Load(g, 16, sql="select count(*) from customers", reconnect=False).start()
    try:
        for _ in range(10):
            n = reloads(g, "reloaded")
            g.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: reloads(g, "reloaded") > n, 10, "the reload")
            mark = load.counts()
            wait_for(lambda: all(c > m for c, m in zip(load.counts(), mark)), 30,
                     "every client to go on after the reload")
    finally:
        load.stop()
    assert not any(load.errors), load.errors
    assert "reload_failed" not in g.log_text()


# ---------------------------------------------------------------------------------------
# disk full under the audit store


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill_disk(mnt: Path):
    """Fill the filesystem (to ENOSPC); returns the filler's path."""
    filler = mnt / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as e:
            if e.errno != 28:
                raise
        try:
            while True:  # the last partial chunk
                f.write(b"\0" * 512)
        except OSError:
            pass
    return filler


@pytest.mark.parametrize("on_failure", ["deny", "allow"])
def test_disk_full_under_the_audit_store_follows_on_failure(fault_gateway, small_disk,
                                                            on_failure):
    g = fault_gateway(f"gw-diskfull-{on_failure}",
                      extra={"audit": {"path": str(small_disk / "audit"), "map_size": "64MiB",
                                       "durability": "strict", "on_failure": on_failure}})
    conn = g.endpoint(application_name="bwit-diskfull").connect()
    conn.autocommit = True
    filler = None
    try:
        assert ask(conn, 1) == 1
        filler = fill_disk(small_disk)
        check_disk_full(g, conn, on_failure)
        # space comes back: statements are recorded and served again without a restart
        filler.unlink()
        filler = None

        def recovered():
            try:
                return ask(conn, 77) == 77
            except psycopg2.Error as e:
                assert e.pgcode == "58030", e
                return False
        wait_for(recovered, 30, "the gateway to record again once space is back",
                 interval=0.2)
    finally:
        if filler is not None:
            filler.unlink()
        conn.close()
    r = harness.run([str(g.binary), "audit", "verify", "-c", str(g.config_path)])
    assert r.returncode == 0, r.stdout + r.stderr


def check_disk_full(g, conn, on_failure):
    """deny: statements are refused with 58030 once the store cannot write; allow: they
    go on, and each record that could not be written is logged."""
    for i in range(400):
        try:
            assert ask(conn, i) == i
        except psycopg2.Error as e:
            assert on_failure == "deny", e
            assert e.pgcode == "58030", e
            assert "audit" in str(e)
            break
        if on_failure == "allow" and "event=audit_store_failing" in g.log_text():
            break
    else:
        raise AssertionError("the store never failed with a full disk")
    assert g.alive()
    if on_failure == "allow":
        wait_for(lambda: "no space left" in g.log_text().lower(), 30, "the write failure to be logged")
        for i in range(5):  # served while the store cannot write, each one logged
            assert ask(conn, i) == i
        wait_for(lambda: "event=audit_append_failed" in g.log_text(), 30,
                 "the unrecorded statements to be logged")
