"""Replicas sharing approvals through PostgreSQL (issue 10 part 2, docs/replicas.md).

Two gateways (replicas A and B: different ports, each with its own audit store) share
one state database, a second throwaway PostgreSQL that the tests can stop: a statement
held on A is approved on B's admin console and runs on A; a grant made with B's CLI is
honoured on A; with the state database gone, new `review` statements are refused with
an error naming the state store while plain reads go on, and it all recovers once the
state database is back.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import threading
import time

import psycopg2
import pytest

import harness
from harness import PgError, psql
from test_approvals import AGENT, AGENT_SUB, DB, DBA, SCHEMA, SUPER, Background
from test_policy_e2e import (create_database, drop_database, start_policy_gateway,
                             stop_policy_gateway)

pytestmark = pytest.mark.gateway_only


class Env:
    pass


@pytest.fixture(scope="module")
def env(pg, bulwark_bin, certdir, secret_registry, tmp_path_factory, session_dir):
    state_dir = session_dir / "state-pg"  # searchable by the postgres OS user
    state_dir.mkdir()
    state = harness.PgServer(state_dir, certdir)
    state.start()
    dsn_file = state_dir / "state.dsn"
    dsn_file.write_text(f"host={state.datadir} port={state.port} user=postgres dbname=postgres\n")
    pw = "pw-" + secrets.token_hex(12)
    create_database(pg, DB)
    pg.admin_query(f"drop role if exists {SUPER}")
    pg.admin_query(f"create role {SUPER} superuser login password %s", (pw,))
    pg.admin_query(SCHEMA, dbname=DB)
    target = {"host": "127.0.0.1", "port": pg.port, "dbname": DB, "sslmode": "disable"}
    settings = {"approvals": {"poll_interval": "100ms"},
                "state": {"backend": "postgres", "dsn_file": str(dsn_file),
                          "channel": "bwit_replicas"}}
    gws = []
    e = Env()
    try:
        for name in ("gw-replica-a", "gw-replica-b"):
            gws.append(start_policy_gateway(name, bulwark_bin, pg, certdir, secret_registry,
                                            tmp_path_factory, targets={DB: target},
                                            policies=[AGENT, DBA], passwords={SUPER: pw},
                                            settings=dict(settings, audit={
                                                "path": "var/audit", "map_size": "256MiB",
                                                "replica": name.removeprefix("gw-")})))
        e.a, e.b = gws
        e.pg, e.state, e.bin = pg, state, bulwark_bin
        yield e
    finally:
        try:
            for g in gws:
                stop_policy_gateway(g)
        finally:
            state.stop()
            drop_database(pg, DB)
            pg.admin_query(f"drop role if exists {SUPER}")


@pytest.fixture(autouse=True)
def fresh_rows(env):
    for t in ("orders", "items"):
        env.pg.admin_query(f"delete from {t}", dbname=DB)
        env.pg.admin_query(f"insert into {t} select g, 'row ' || g from generate_series(1, 5) g",
                           dbname=DB)
    yield


def cli(env, gw, *args, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(env.bin), *args, "-c", str(gw.config_path)], capture_output=True,
                       text=True, timeout=30)
    if check:
        assert r.returncode == 0, f"bulwark {args} exited {r.returncode}: {r.stderr}"
    return r


def wait_request(env, gw, sql_part: str, state="pending", timeout=15.0) -> dict:
    found = {}

    def look():
        for r in json.loads(cli(env, gw, "approvals", "--json", "--all").stdout):
            if sql_part in r.get("sql", "") and r["state"] == state:
                found.update(r)
                return True
        return False
    harness.wait_for(look, timeout, f"a {state} request for {sql_part!r}", interval=0.1)
    return found


def connect(gw):
    c = psycopg2.connect(**gw.endpoint(role="agent", target=DB, sub=AGENT_SUB,
                                       application_name="bwit-replicas").kwargs())
    c.autocommit = True
    return c


def run_sql(gw, sql):
    c = connect(gw)
    try:
        with c.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if cur.description else cur.rowcount
    finally:
        c.close()


def audit_records(env, gw) -> list:
    out = cli(env, gw, "audit", "export").stdout
    return [json.loads(ln)["record"] for ln in out.splitlines() if '"record"' in ln]


def ids(env, table) -> list:
    return [r[0] for r in env.pg.admin_query(f"select id from {table} order by id", dbname=DB)]


def test_schema_is_created_and_versioned(env):
    v = env.state.admin_query("select version from bulwark_state.schema_version")
    assert v == [(1,)], "both replicas migrated under the lock: exactly one version row"
    cols = {r[0] for r in env.state.admin_query(
        "select column_name from information_schema.columns "
        "where table_schema = 'bulwark_state' and table_name = 'requests'")}
    assert {"id", "seq", "state", "live", "doc"} <= cols


def test_held_on_a_is_approved_on_b_console_and_runs_on_a(env):
    c = connect(env.a)

    def go():
        try:
            with c.cursor() as cur:
                cur.execute("DELETE FROM orders WHERE id = 4")
                return cur.rowcount, time.monotonic()
        finally:
            c.close()
    bg = Background(go)
    req = wait_request(env, env.b, "DELETE FROM orders WHERE id = 4")
    assert 4 in ids(env, "orders"), "held, not run"
    console = env.b.endpoint(role="dba", target="bulwark", sub="alice",
                             application_name="bwit-console")
    shown = psql(console, "-c", "SHOW APPROVALS")
    assert shown.returncode == 0, shown.stderr
    assert any(ln.split("|")[0].strip() == str(req["id"]) for ln in shown.stdout.splitlines()), \
        shown.stdout
    r = psql(console, "-c", f"APPROVE {req['id']}")
    approved_at = time.monotonic()
    assert r.returncode == 0, r.stderr
    assert "approved" in r.stdout
    bg.join(15)
    assert bg.error is None, bg.error
    rowcount, done_at = bg.result
    assert rowcount == 1 and 4 not in ids(env, "orders")
    assert done_at - approved_at < 1.0, f"ran {done_at - approved_at:.2f}s after the approval"
    # each replica records in its own chain: A the held statement and the decision it
    # applied; B the console's decision, and no statement of A's session
    a_recs, b_recs = audit_records(env, env.a), audit_records(env, env.b)
    a_note = [r for r in a_recs if r["type"] == "note" and r["data"].get("approval") == req["id"]
              and r["session"] == req["session"]]
    assert a_note and a_note[0]["data"]["decision"] == "approved"
    assert a_note[0]["data"]["by"] == "alice"
    assert not [r for r in b_recs if r["session"] == req["session"]]
    assert [r for r in b_recs if r["type"] == "note" and r["data"].get("approval") == req["id"]]
    # and every record names the replica whose chain it is (audit.replica)
    assert {r.get("replica") for r in a_recs} == {"replica-a"}
    assert {r.get("replica") for r in b_recs} == {"replica-b"}
    for gw in (env.a, env.b):
        assert cli(env, gw, "audit", "verify").returncode == 0


def test_a_lost_notification_is_made_up_for_by_polling(env):
    # a CLI whose config names another channel: its NOTIFY never reaches replica A, which
    # learns of the decision only by reading the state database every poll_interval
    cfg = json.loads(env.b.config_path.read_text())
    cfg["state"]["channel"] = "bwit_elsewhere"
    other = env.b.workdir / "bulwark-other-channel.json"
    other.write_text(json.dumps(cfg))
    c = connect(env.a)

    def go():
        try:
            with c.cursor() as cur:
                cur.execute("DELETE FROM orders WHERE id = 5")
                return cur.rowcount, time.monotonic()
        finally:
            c.close()
    bg = Background(go)
    req = wait_request(env, env.b, "DELETE FROM orders WHERE id = 5")
    r = subprocess.run([str(env.bin), "approve", str(req["id"]), "--as", "alice", "-c",
                        str(other)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    approved_at = time.monotonic()
    bg.join(15)
    assert bg.error is None, bg.error
    rowcount, done_at = bg.result
    assert rowcount == 1 and 5 not in ids(env, "orders")
    assert done_at - approved_at < 2.0, f"ran {done_at - approved_at:.2f}s after the approval"


def test_grant_made_on_b_is_honoured_on_a(env):
    with pytest.raises(psycopg2.Error) as ei:
        run_sql(env.a, "DELETE FROM items WHERE id = 2")
    assert ei.value.pgcode == "42501" and "approval request" in str(ei.value)
    req = wait_request(env, env.b, "DELETE FROM items WHERE id = 2")
    out = cli(env, env.b, "approve", str(req["id"]), "--as", "alice", "--for", "10m").stdout
    assert str(req["id"]) in out
    grants = json.loads(cli(env, env.a, "approvals", "--json", "--grants").stdout)
    assert [g["id"] for g in grants] == [req["id"]]

    def runs():
        try:
            return run_sql(env.a, "DELETE FROM items WHERE id = 2") == 1
        except psycopg2.Error:
            return False
    harness.wait_for(runs, 5, "the grant honoured on replica A", interval=0.1)
    assert 2 not in ids(env, "items")
    # a timed grant, again and on the other replica too
    assert run_sql(env.b, "DELETE FROM items WHERE id = 2") == 0
    # revoked on A's CLI: both replicas stop honouring it
    cli(env, env.a, "revoke", str(req["id"]), "--as", "alice")

    def refused():
        try:
            run_sql(env.a, "DELETE FROM items WHERE id = 2")
            return False
        except psycopg2.Error as e:
            return e.pgcode == "42501"
    harness.wait_for(refused, 5, "the revoked grant refused on A", interval=0.1)


def test_losing_the_state_database_fails_closed_for_review_only(env):
    env.state.stop()
    try:
        def refused_clearly():
            try:
                run_sql(env.a, "DELETE FROM items WHERE id = 3")
                return None
            except psycopg2.Error as e:
                return e if "state store" in str(e) else None
        err = harness.wait_for(refused_clearly, 10, "review refused without the state store",
                               interval=0.2)
        assert err.pgcode == "42501"
        assert "approvals state store (PostgreSQL) is unavailable" in str(err)
        # plain reads go on, on both replicas
        assert len(run_sql(env.a, "SELECT id FROM orders")) == 5
        assert len(run_sql(env.b, "SELECT id FROM items")) == 5
        with pytest.raises(psycopg2.Error) as ei:
            run_sql(env.b, "DELETE FROM orders WHERE id = 1")
        assert "state store" in str(ei.value)
        # the CLI says what is wrong
        r = cli(env, env.b, "approvals", check=False)
        assert r.returncode != 0 and "state database" in r.stderr
        assert 3 in ids(env, "items") and 1 in ids(env, "orders")
        assert env.a.alive() and env.b.alive()
    finally:
        env.state.start()

    def back(gw):
        try:
            run_sql(gw, "DELETE FROM items WHERE id = 3")
            return False
        except psycopg2.Error as e:
            return "approval request" in str(e) and "state store" not in str(e)
    for gw in (env.a, env.b):
        harness.wait_for(lambda: back(gw), 30,
                         f"review working again on {gw.name} once the state database is back",
                         interval=0.3)


def test_one_use_grant_used_on_a_is_gone_on_b(env):
    with pytest.raises(psycopg2.Error) as ei:
        run_sql(env.b, "DELETE FROM items WHERE id = 4")
    # a new request, or one still pending for the same fingerprint (reject mode reuses it)
    m = re.search(r"approval request (\d+)", str(ei.value))
    assert m and "state store" not in str(ei.value), str(ei.value)
    req = {"id": int(m.group(1))}
    cli(env, env.a, "approve", str(req["id"]), "--as", "alice")

    def runs_on_a():
        try:
            return run_sql(env.a, "DELETE FROM items WHERE id = 4") == 1
        except psycopg2.Error:
            return False
    harness.wait_for(runs_on_a, 5, "the one-use grant used on replica A", interval=0.1)
    done = [r for r in json.loads(cli(env, env.b, "approvals", "--json", "--all").stdout)
            if r["id"] == req["id"]][0]
    harness.wait_for(lambda: [r for r in json.loads(
        cli(env, env.b, "approvals", "--json", "--all").stdout)
        if r["id"] == req["id"]][0].get("used"), 5, "the use written to the state database")
    assert done["state"] == "approved"
    time.sleep(0.5)  # several poll intervals: B has read the use
    with pytest.raises(psycopg2.Error) as ei:
        run_sql(env.b, "DELETE FROM items WHERE id = 4")
    assert ei.value.pgcode == "42501" and "approval request" in str(ei.value)
    assert f"approval request {req['id']} " not in str(ei.value), "a new request, not the used one"


def shows_grant(gw, rid) -> bool:
    """The replica's own table (its console reads only that) lists grant rid."""
    console = gw.endpoint(role="dba", target="bulwark", sub="alice",
                          application_name="bwit-console")
    r = psql(console, "-A", "-t", "-c", "SHOW GRANTS")
    assert r.returncode == 0, r.stderr
    return any(ln.split("|")[0] == str(rid) for ln in r.stdout.splitlines())


def test_one_use_grant_raced_on_both_replicas_runs_exactly_once(env):
    # both replicas have the one-use grant in their tables; a session on each sends the
    # statement at the same moment: the use is claimed in the state database before the
    # statement runs, so exactly one runs and the other gets 42501 naming the approval
    sql = "UPDATE items SET note = note || '+' WHERE id = 1"
    rounds, raced = 6, 0
    conns = {gw.name: connect(gw) for gw in (env.a, env.b)}
    try:
        for n in range(1, rounds + 1):
            with pytest.raises(psycopg2.Error) as ei:
                run_sql(env.a if n % 2 else env.b, sql)
            m = re.search(r"approval request (\d+)", str(ei.value))
            assert ei.value.pgcode == "42501" and m, str(ei.value)
            rid = int(m.group(1))
            cli(env, env.b, "approve", str(rid), "--as", "alice")
            for gw in (env.a, env.b):
                harness.wait_for(lambda: shows_grant(gw, rid), 10,
                                 f"grant {rid} in {gw.name}'s table", interval=0.05)
            barrier = threading.Barrier(2)

            def use(conn):
                def go():
                    barrier.wait(10)
                    with conn.cursor() as cur:
                        cur.execute(sql)
                        return cur.rowcount
                return go
            bgs = {name: Background(use(c)) for name, c in conns.items()}
            for bg in bgs.values():
                bg.join(30)
            ran = [name for name, bg in bgs.items() if bg.error is None]
            refused = {name: bg.error for name, bg in bgs.items() if bg.error is not None}
            assert len(ran) == 1, f"round {n}: ran on {ran}, refused {refused}"
            assert bgs[ran[0]].result == 1
            (loser, err), = refused.items()
            assert isinstance(err, psycopg2.Error) and err.pgcode == "42501", repr(err)
            if f"approval {rid} was already used" in str(err):
                raced += 1  # both claimed it: the state database chose
            else:  # the loser's replica had already learnt of the use: a new request
                assert "approval request" in str(err), str(err)
            # the session that was refused goes on
            with conns[loser].cursor() as cur:
                cur.execute("SELECT count(*) FROM items")
                assert cur.fetchone()[0] == 5
        note = env.pg.admin_query("select note from items where id = 1", dbname=DB)[0][0]
        assert note == "row 1" + "+" * rounds, f"{note!r}: the statement ran once per grant"
        assert raced >= 1, "no round had both replicas claim the same grant"
        refusals = env.a.log_text().count("event=approval_grant_refused") + \
            env.b.log_text().count("event=approval_grant_refused")
        assert refusals >= raced
    finally:
        for c in conns.values():
            c.close()


def test_one_use_grant_claimed_in_the_extended_protocol(env):
    # node-pg sends Parse/Bind/Execute: the Parse that uses the grant waits for the claim
    # with its whole group; once confirmed it runs once, and the session goes on
    text = "UPDATE items SET note = $1 WHERE id = $2"

    def node(gw, cases):
        out = harness.node_script("audit_checks.js", gw.endpoint(
            role="agent", target=DB, sub=AGENT_SUB, application_name="bwit-replicas-node"),
            timeout=60, extra_env={"BWIT_AUDIT_CASES": json.dumps(cases)})
        assert "fatal" not in out, out
        return {r["name"]: r for r in out["results"]}
    first = node(env.a, [{"name": "ask", "text": text, "values": ["asked", 2]}])["ask"]
    assert first["error"]["code"] == "42501", first
    rid = int(re.search(r"approval request (\d+)", first["error"]["message"]).group(1))
    cli(env, env.a, "approve", str(rid), "--as", "alice")
    for gw in (env.a, env.b):
        harness.wait_for(lambda: shows_grant(gw, rid), 10, f"grant {rid} in {gw.name}'s table",
                         interval=0.05)
    res = node(env.b, [{"name": "use", "text": text, "values": ["granted", 2]},
                       {"name": "again", "text": text, "values": ["again", 2]},
                       {"name": "after", "text": "SELECT note FROM items WHERE id = $1",
                        "values": [2]}])
    assert res["use"].get("rowCount") == 1, res
    assert res["again"]["error"]["code"] == "42501", res
    assert f"approval request {rid} " not in res["again"]["error"]["message"]
    assert res["after"]["rows"] == [["granted"]], res
    # used on B: gone on A as well
    late = node(env.a, [{"name": "late", "text": text, "values": ["late", 2]}])["late"]
    assert late["error"]["code"] == "42501", late
    assert env.pg.admin_query("select note from items where id = 2", dbname=DB) == [("granted",)]
    recs = [r for r in audit_records(env, env.b)
            if r["type"] == "statement" and r["data"].get("approval") == rid]
    assert recs and all(r["data"]["decision"] == "review" for r in recs), recs


WORKER_OF = re.compile(r"event=session_start .*application_name=\"?([\w-]+)\"? worker=(\d+)")


def test_a_decision_wakes_held_statements_on_every_worker(env, pg, bulwark_bin, certdir,
                                                          secret_registry, tmp_path_factory):
    # replica C runs two worker loops and polls the state store only every 30 s: a
    # statement held on either worker must run as soon as the state thread hears of the
    # decision, not at the next poll
    target = {"host": "127.0.0.1", "port": pg.port, "dbname": DB, "sslmode": "disable"}
    dsn = json.loads(env.a.config_path.read_text())["state"]["dsn_file"]
    settings = {"workers": 2, "approvals": {"poll_interval": "30s"},
                "state": {"backend": "postgres", "dsn_file": dsn,
                          "channel": "bwit_replicas"},
                "audit": {"path": "var/audit", "map_size": "256MiB", "replica": "replica-c"}}
    c_gw = start_policy_gateway("gw-replica-c", bulwark_bin, pg, certdir, secret_registry,
                                tmp_path_factory, targets={DB: target}, policies=[AGENT, DBA],
                                passwords=env.a.passwords, settings=settings)
    conns = []
    try:
        on = {}
        for i in range(32):  # SO_REUSEPORT spreads them; stop once both workers have one
            name = f"bwit-rc-{i:02d}"
            conn = psycopg2.connect(**c_gw.endpoint(role="agent", target=DB, sub=AGENT_SUB,
                                                    application_name=name).kwargs())
            conn.autocommit = True
            conns.append((name, conn))
            harness.wait_for(lambda: name in {m.group(1) for m in
                                              WORKER_OF.finditer(c_gw.log_text())},
                             10, "the session_start line")
            w = {m.group(1): int(m.group(2)) for m in WORKER_OF.finditer(c_gw.log_text())}[name]
            on.setdefault(w, conn)
            if len(on) == 2:
                break
        assert sorted(on) == [0, 1], f"32 sessions all landed on worker(s) {sorted(on)}"

        def held(conn, row):
            def go():
                with conn.cursor() as cur:
                    cur.execute(f"DELETE FROM orders WHERE id = {row}")
                    return cur.rowcount, time.monotonic()
            return Background(go)
        bgs = {w: held(conn, row) for (w, conn), row in zip(sorted(on.items()), (1, 2))}
        reqs = [wait_request(env, env.b, f"DELETE FROM orders WHERE id = {row}")
                for row in (1, 2)]
        for req in reqs:
            cli(env, env.b, "approve", str(req["id"]), "--as", "alice")
        approved_at = time.monotonic()
        for w, bg in bgs.items():
            bg.join(40)
            assert bg.error is None, bg.error
            rowcount, done_at = bg.result
            assert rowcount == 1
            assert done_at - approved_at < 3.0, \
                f"worker {w}'s held statement ran {done_at - approved_at:.2f}s after the approval"
    finally:
        for _, conn in conns:
            conn.close()
        stop_policy_gateway(c_gw)
