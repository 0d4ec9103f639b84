"""`workers: 4`: four event loops on four threads, each with its own SO_REUSEPORT listener.
200 clients are spread over every worker (each session_start log line and SHOW SESSIONS
name the worker); cancel requests reach their session whichever worker receives them;
SIGHUP under load drops nothing and reaches every worker; SIGTERM drains them all."""

import json
import os
import re
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import psycopg2.errors
import pytest

import harness
from harness import OWNER, PG_BIN, GatewayOptions, wait_for

pytestmark = pytest.mark.gateway_only

WORKERS = 4
# make tsan runs fewer (ThreadSanitizer slows every login several times over)
CLIENTS = int(os.environ.get("BULWARK_TEST_WORKER_CLIENTS", "200"))
GATEWAY = GatewayOptions(tls=False, workers=WORKERS)

START = re.compile(r"event=session_start .*application_name=\"?([\w-]+)\"? worker=(\d+)")


def workers_of(gw, prefix):
    """application_name -> worker, from the session_start log lines."""
    return {m.group(1): int(m.group(2)) for m in START.finditer(gw.log_text())
            if m.group(1).startswith(prefix)}


def connect_many(ep, n, prefix, threads=16):
    def one(i):
        c = ep.connect(application_name=f"{prefix}{i:03d}")
        c.autocommit = True
        return c

    with ThreadPoolExecutor(threads) as ex:
        return list(ex.map(one, range(n)))


def add_role(gw, name, admin=False):
    pol = {"role": name, "identities": [{"iss": harness.ISSUER, "sub": "svc-*"}],
           "upstream": {"shop": {"user": OWNER, "password_file": f"../secrets/{OWNER}"}},
           "default": "allow"}
    if admin:
        pol["admin"] = True
    (gw.workdir / "policies" / f"{name}.json").write_text(json.dumps(pol))


def reload(gw):
    before = gw.log_text().count("event=reloaded")
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: gw.log_text().count("event=reloaded") > before, 10, "the reload")


def test_sessions_spread_over_workers_and_every_cancel_reaches_its_session(gw):
    assert f"workers={WORKERS}" in gw.log_text()
    ep = gw.endpoint()
    conns = connect_many(ep, CLIENTS, "bwit-wk-")
    try:
        where = wait_for(lambda: len(workers_of(gw, "bwit-wk-")) == CLIENTS and
                         workers_of(gw, "bwit-wk-"), 20, "every session_start line")
        per = {w: list(where.values()).count(w) for w in range(WORKERS)}
        assert all(per[w] > 0 for w in range(WORKERS)), per

        # SHOW SESSIONS on the console (one worker) lists the sessions of all four
        add_role(gw, "wk_admin", admin=True)
        reload(gw)
        cons = gw.endpoint(role="wk_admin", target="bulwark", application_name="bwit-wk-console")
        r = subprocess.run([str(PG_BIN / "psql"), "-X", "-A", "-F", "|", "-c", "SHOW SESSIONS"],
                           capture_output=True, text=True, timeout=60, env=cons.env())
        assert r.returncode == 0, r.stderr
        head, *rows = r.stdout.strip().splitlines()
        cols = head.split("|")
        assert cols[-1] == "worker"
        shown = {x[cols.index("application_name")]: int(x[-1]) for x in
                 (ln.split("|") for ln in rows[:-1]) if len(x) == len(cols)}
        assert {k: shown.get(k) for k in where} == where
        assert shown.get("bwit-wk-console") in range(WORKERS)

        # every session runs a long statement; one cancel each, from fresh connections
        outcome = {}

        def sleep_in(name, c):
            try:
                with c.cursor() as cur:
                    cur.execute("select pg_sleep(60)")
                outcome[name] = "finished"
            except psycopg2.errors.QueryCanceled:
                outcome[name] = "canceled"
            except Exception as e:  # noqa: BLE001
                outcome[name] = repr(e)

        sleepers = [threading.Thread(target=sleep_in, args=(f"bwit-wk-{i:03d}", c))
                    for i, c in enumerate(conns)]
        for t in sleepers:
            t.start()
        wait_for(lambda: len(gw.pg.backends("application_name like 'bwit-wk-%' "
                                            "and state = 'active'")) == CLIENTS,
                 30, "all statements running upstream")
        t0 = time.monotonic()
        with ThreadPoolExecutor(16) as ex:
            list(ex.map(lambda c: c.cancel(), conns))
        for t in sleepers:
            t.join(30)
        assert time.monotonic() - t0 < 30
        assert len(outcome) == CLIENTS and set(outcome.values()) == {"canceled"}, outcome
        # most cancel requests land on another worker than their session's
        assert gw.log_text().count("event=cancel_forwarded") > 0
        # and every session is still there
        for c in conns:
            with c.cursor() as cur:
                cur.execute("select 1")
                assert cur.fetchone() == (1,)
    finally:
        for c in conns:
            c.close()


def test_sighup_under_load_drops_nothing_and_reaches_every_worker(gw):
    ep = gw.endpoint()
    stop = threading.Event()
    errors, done = [], [0]
    lock = threading.Lock()

    def client(i):
        n = 0
        while not stop.is_set():
            try:
                # a new session every few statements: logins race the reloads too
                with ep.connect(application_name=f"bwit-wkl-{i:02d}") as c:
                    for _ in range(5):
                        with c.cursor() as cur:
                            cur.execute("select count(*) from customers")
                            cur.fetchone()
                        n += 1
                c.close()
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append(repr(e))
        with lock:
            done[0] += n

    threads = [threading.Thread(target=client, args=(i,)) for i in range(max(4, CLIENTS // 8))]
    for t in threads:
        t.start()
    try:
        for k in range(3):
            add_role(gw, f"wk_new{k}")
            reload(gw)
            # the new role is accepted on whichever worker a login lands
            new = gw.endpoint(role=f"wk_new{k}")
            for _ in range(12):
                new.connect().close()
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert errors == [], errors[:5]
    assert done[0] > 0


def test_sigterm_drains_every_worker(make_gateway):
    g = make_gateway(GatewayOptions(tls=False, workers=WORKERS), "gw-wk-drain")
    conns = connect_many(g.endpoint(), 40, "bwit-wkd-")
    where = wait_for(lambda: len(workers_of(g, "bwit-wkd-")) == 40 and workers_of(g, "bwit-wkd-"),
                     20, "every session_start line")
    assert len(set(where.values())) > 1, where
    results = {}

    def slow(c):
        try:
            with c.cursor() as cur:
                cur.execute("select pg_sleep(2), 'finished'")
                results[id(c)] = cur.fetchone()[1]
        except Exception as e:  # noqa: BLE001
            results[id(c)] = repr(e)

    threads = [threading.Thread(target=slow, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    wait_for(lambda: len(g.pg.backends("application_name like 'bwit-wkd-%' "
                                       "and state = 'active'")) == 40, 20, "all running")
    g.stopped_by_test = True
    g.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "event=draining" in g.log_text(), 5, "draining")
    for _ in range(8):  # every worker's listener is closed
        with pytest.raises(psycopg2.OperationalError):
            g.endpoint().connect().close()
    for t in threads:
        t.join(20)
    assert set(results.values()) == {"finished"}, results
    for c in conns:
        c.close()
    g.proc.wait(timeout=10)
    assert g.proc.returncode == 0, g.log_tail()
    text = g.log_text()
    for w in range(WORKERS):
        assert f"event=parse_cache worker={w} " in text
    assert "event=stopped" in text


def test_one_worker_runs_everything_on_the_main_loop(make_gateway):
    g = make_gateway(GatewayOptions(tls=False, workers=1), "gw-wk-one")
    assert "workers=1" in g.log_text()
    conns = connect_many(g.endpoint(), 8, "bwit-wk1-")
    try:
        where = wait_for(lambda: len(workers_of(g, "bwit-wk1-")) == 8 and workers_of(g, "bwit-wk1-"),
                         20, "every session_start line")
        assert set(where.values()) == {0}
        err = {}

        def sleep_in():
            try:
                with conns[0].cursor() as cur:
                    cur.execute("select pg_sleep(60)")
            except psycopg2.errors.QueryCanceled as e:
                err["e"] = e

        t = threading.Thread(target=sleep_in)
        t.start()
        wait_for(lambda: g.pg.backends("application_name = 'bwit-wk1-000' and state = 'active'"),
                 20, "the statement to run")
        conns[0].cancel()
        t.join(20)
        assert "e" in err
        assert "event=cancel_forwarded" not in g.log_text()
    finally:
        for c in conns:
            c.close()
