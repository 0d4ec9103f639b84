"""Just-in-time approvals (issue 7, SPEC section 6).

A `review` rule in hold mode parks the statement (and whatever the client pipelined behind
it) until a human decides with `bulwark approve/deny` — another process on the same LMDB
store — or in the admin console; other sessions carry on meanwhile. Reject mode refuses at
once and lets the same identity re-run the same statement fingerprint once approved (once,
or for the grant's duration).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import threading
import time

import psycopg2
import psycopg2.extensions
import pytest

import harness
from harness import PgError, RawPg, msg, parse_error_fields, psql, query_msg, raw_login
from test_policy_e2e import (create_database, drop_database, start_policy_gateway,
                             stop_policy_gateway)
from test_policy_protocol import SYNC, bind, describe, execute, parse

pytestmark = pytest.mark.gateway_only

DB = "approvals_it"
SUPER = "bw_ap_super"
AGENT_SUB = "svc-agent-ap"

SCHEMA = """
create table orders (id int primary key, note text);
create table items (id int primary key, note text);
create table slow (id int primary key, note text);
create schema hidden;
create table hidden.orders (id int, secret text);
insert into hidden.orders values (1, 'not for agents');
"""

AGENT = {
    "role": "agent",
    "identities": [{"iss": harness.ISSUER, "sub": "svc-agent-*"}],
    "upstream": {DB: {"user": SUPER, "password_file": f"../secrets/{SUPER}"}},
    "default": "deny",
    "catalog_reads": True,
    "rules": [
        {"id": "read", "action": "allow", "operations": ["select"], "relations": ["public.*"]},
        {"id": "orders-fix", "action": "review", "operations": ["delete", "update"],
         "relations": ["public.orders"],
         "review": {"approvers": ["dba"], "timeout": "30s", "mode": "hold"}},
        {"id": "items-fix", "action": "review", "operations": ["delete", "update"],
         "relations": ["public.items"],
         "review": {"approvers": ["dba"], "timeout": "30s", "mode": "reject"}},
        {"id": "slow-fix", "action": "review", "operations": ["update"],
         "relations": ["public.slow"],
         "review": {"approvers": ["dba"], "timeout": "1s", "mode": "hold"}},
    ],
}

DBA = {
    "role": "dba",
    "admin": True,
    # AGENT_SUB is also a dba identity here, to show that nobody approves their own request
    "identities": [{"iss": harness.ISSUER, "sub": "alice"},
                   {"iss": harness.ISSUER, "sub": "dba-*"},
                   {"iss": harness.ISSUER, "sub": AGENT_SUB}],
    "upstream": {DB: {"user": SUPER, "password_file": f"../secrets/{SUPER}"}},
    "default": "deny",
    "rules": [],
}

AUDITOR = {  # an admin, but not an approver of any rule
    "role": "auditor",
    "admin": True,
    "identities": [{"iss": harness.ISSUER, "sub": "auditor-*"}],
    "upstream": {DB: {"user": SUPER, "password_file": f"../secrets/{SUPER}"}},
    "default": "deny",
    "rules": [],
}

OTHER = {
    "role": "other",
    "identities": [{"iss": harness.ISSUER, "sub": "mallory"}],
    "upstream": {DB: {"user": SUPER, "password_file": f"../secrets/{SUPER}"}},
    "default": "deny",
    "rules": [],
}


class Env:
    pass


class HookServer:
    """A local HTTP server that keeps every JSON body POSTed to it."""

    def __init__(self):
        import http.server
        bodies = self.bodies = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                n = int(self.headers.get("Content-Length", "0"))
                bodies.append((self.headers.get("Content-Type"), json.loads(self.rfile.read(n))))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a):
                pass
        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def env(pg, bulwark_bin, certdir, secret_registry, tmp_path_factory):
    pw = "pw-" + secrets.token_hex(12)
    create_database(pg, DB)
    pg.admin_query(f"drop role if exists {SUPER}")
    pg.admin_query(f"create role {SUPER} superuser login password %s", (pw,))
    pg.admin_query(SCHEMA, dbname=DB)
    target = {"host": "127.0.0.1", "port": pg.port, "dbname": DB, "sslmode": "disable"}
    hook = HookServer()
    metrics_port = harness.free_port()
    g = start_policy_gateway("gw-approvals", bulwark_bin, pg, certdir, secret_registry,
                             tmp_path_factory, targets={DB: target},
                             policies=[AGENT, DBA, AUDITOR, OTHER], passwords={SUPER: pw},
                             settings={"approvals": {"poll_interval": "50ms",
                                                     "webhook_url": hook.url},
                                       "metrics_listen": f"127.0.0.1:{metrics_port}"})
    e = Env()
    e.hook = hook
    e.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    e.gw, e.pg, e.bin = g, pg, bulwark_bin
    e.ep = g.endpoint(role="agent", target=DB, sub=AGENT_SUB, application_name="bwit-approvals")
    try:
        yield e
    finally:
        try:
            stop_policy_gateway(g)
        finally:
            hook.stop()
            drop_database(pg, DB)
            pg.admin_query(f"drop role if exists {SUPER}")


@pytest.fixture(autouse=True)
def fresh_rows(env):
    for t in ("orders", "items", "slow"):
        env.pg.admin_query(f"delete from {t}", dbname=DB)
        env.pg.admin_query(f"insert into {t} select g, 'row ' || g from generate_series(1, 5) g",
                           dbname=DB)
    yield


def ids(env, table) -> list:
    return [r[0] for r in env.pg.admin_query(f"select id from {table} order by id", dbname=DB)]


def cli(env, *args, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(env.bin), *args, "-c", str(env.gw.config_path)], capture_output=True,
                       text=True, timeout=30)
    if check:
        assert r.returncode == 0, f"bulwark {args} exited {r.returncode}: {r.stderr}"
    return r


def requests(env, *flags) -> list:
    return json.loads(cli(env, "approvals", "--json", *flags).stdout)


def wait_request(env, sql_part: str, state="pending", timeout=15.0) -> dict:
    found = {}

    def look():
        for r in requests(env, "--all"):
            if sql_part in r.get("sql", "") and r["state"] == state:
                found.update(r)
                return True
        return False
    harness.wait_for(look, timeout, f"a {state} request for {sql_part!r}", interval=0.1)
    return found


def connect(env, autocommit=True):
    c = psycopg2.connect(**env.ep.kwargs())
    c.autocommit = autocommit
    return c


class Background:
    """Run fn in a thread; .result / .error when joined."""

    def __init__(self, fn):
        self.result = self.error = None
        self.t = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.t.start()

    def _run(self, fn):
        try:
            self.result = fn()
        except Exception as e:  # noqa: BLE001 - handed to the test
            self.error = e

    def join(self, timeout=30):
        self.t.join(timeout)
        assert not self.t.is_alive(), "the held statement never finished"
        return self


def run_held(env, sql):
    c = connect(env)

    def go():
        try:
            with c.cursor() as cur:
                cur.execute(sql)
                return cur.rowcount, list(c.notices)
        finally:
            c.close()
    return Background(go)


def pending_gauge(env, role="agent") -> float:
    import urllib.request
    text = urllib.request.urlopen(env.metrics_url, timeout=10).read().decode()
    m = re.search(r'^bulwark_approvals_pending\{role="%s"\} (\S+)$' % role, text, re.M)
    return float(m.group(1)) if m else 0.0


# ---------------------------------------------------------------------------------------
# hold mode


def test_pending_gauge_counts_held_statements_until_decided(env):
    assert pending_gauge(env) == 0
    bg1 = run_held(env, "DELETE FROM orders WHERE id = 2")
    bg2 = run_held(env, "DELETE FROM orders WHERE id = 3")
    r1 = wait_request(env, "DELETE FROM orders WHERE id = 2")
    r2 = wait_request(env, "DELETE FROM orders WHERE id = 3")
    harness.wait_for(lambda: pending_gauge(env) == 2, 10, "two pending approvals")
    cli(env, "approve", str(r1["id"]), "--as", "alice")
    bg1.join()
    assert bg1.error is None, bg1.error
    harness.wait_for(lambda: pending_gauge(env) == 1, 10, "one pending approval")
    cli(env, "deny", str(r2["id"]), "--as", "alice", "--reason", "no")
    bg2.join()
    assert isinstance(bg2.error, psycopg2.Error) and bg2.error.pgcode == "42501"
    harness.wait_for(lambda: pending_gauge(env) == 0, 10, "no pending approval")


def test_held_delete_runs_after_cli_approval_while_other_sessions_work(env):
    bg = run_held(env, "DELETE FROM orders WHERE id = 1")
    req = wait_request(env, "DELETE FROM orders WHERE id = 1")
    assert req["sub"] == AGENT_SUB and req["role"] == "agent" and req["rule"] == "orders-fix"
    assert req["mode"] == "hold" and req["fingerprint"]
    assert ids(env, "orders") == [1, 2, 3, 4, 5]
    # other sessions are unaffected while it waits
    for _ in range(5):
        c = connect(env)
        with c.cursor() as cur:
            cur.execute("select count(*) from orders")
            assert cur.fetchone()[0] == 5
        c.close()
    assert bg.t.is_alive()
    table = cli(env, "approvals").stdout
    assert str(req["id"]) in table and "orders-fix" in table
    out = cli(env, "approve", str(req["id"]), "--as", "alice").stdout
    assert "approved" in out
    bg.join()
    assert bg.error is None, bg.error
    rowcount, notices = bg.result
    assert rowcount == 1
    assert ids(env, "orders") == [2, 3, 4, 5]
    assert any(f"request {req['id']}" in n and f"bulwark approve {req['id']}" in n
               for n in notices), notices
    done = [r for r in requests(env, "--all") if r["id"] == req["id"]][0]
    assert done["state"] == "approved" and done["by"] == "alice" and done["by_role"] == "dba"
    assert done["via"] == "cli" and done["os_user"]
    # the audit trail: the statement (decision review, approval id) and the decision
    replay = subprocess.run([str(env.bin), "audit", "export", "-c", str(env.gw.config_path)],
                            capture_output=True, text=True, timeout=30).stdout
    recs = [json.loads(ln)["record"] for ln in replay.splitlines() if '"record"' in ln]
    stmt = [r for r in recs if r["type"] == "statement" and r["data"].get("approval") == req["id"]]
    note = [r for r in recs if r["type"] == "note" and r["data"].get("approval") == req["id"]]
    assert stmt and stmt[0]["data"]["decision"] == "review"
    assert note and note[0]["data"]["decision"] == "approved"
    assert note[0]["data"]["statement"] == stmt[0]["seq"] and note[0]["data"]["by"] == "alice"
    # and the session's replay shows the approval with the statement and the decision
    replay = subprocess.run([str(env.bin), "replay", "-c", str(env.gw.config_path),
                             req["session"]], capture_output=True, text=True, timeout=30)
    assert replay.returncode == 0, replay.stderr
    assert f"approval {req['id']}" in replay.stdout and "approved" in replay.stdout, replay.stdout


def test_twenty_pgbench_sessions_run_while_a_statement_is_held(env, tmp_path):
    script = tmp_path / "read.sql"
    script.write_text("\\set id random(1, 5)\nSELECT note FROM orders WHERE id = :id;\n")
    bg = run_held(env, "DELETE FROM orders WHERE id = 1 AND note LIKE 'row%'")
    req = wait_request(env, "note LIKE 'row%'")
    r = harness.run([str(harness.PG_BIN / "pgbench"), "-n", "-c", "20", "-j", "2", "-T", "3",
                     "-f", str(script)], timeout=120, env=env.ep.env())
    assert r.returncode == 0, r.stderr + r.stdout
    failed = re.search(r"number of failed transactions: (\d+)", r.stdout)
    done = re.search(r"number of transactions actually processed: (\d+)", r.stdout)
    assert failed and failed.group(1) == "0" and done and int(done.group(1)) > 0, r.stdout
    assert bg.t.is_alive(), "the held statement ended while nobody decided"
    assert [x for x in requests(env) if x["id"] == req["id"]][0]["state"] == "pending"
    cli(env, "approve", str(req["id"]), "--as", "alice")
    bg.join()
    assert bg.error is None and bg.result[0] == 1


def test_denied_gives_42501_with_approver_and_reason(env):
    bg = run_held(env, "DELETE FROM orders WHERE id = 2")
    req = wait_request(env, "WHERE id = 2")
    cli(env, "deny", str(req["id"]), "--reason", "not during the sale", "--as", "dba-bob")
    bg.join()
    assert isinstance(bg.error, psycopg2.Error)
    assert bg.error.pgcode == "42501"
    assert "not during the sale" in str(bg.error) and "dba-bob" in str(bg.error)
    assert ids(env, "orders") == [1, 2, 3, 4, 5]


def test_timeout_gives_57014(env):
    t0 = time.monotonic()
    bg = run_held(env, "UPDATE slow SET note = 'x' WHERE id = 1")
    bg.join()
    assert isinstance(bg.error, psycopg2.Error) and bg.error.pgcode == "57014", bg.error
    assert 0.9 < time.monotonic() - t0 < 10
    req = wait_request(env, "UPDATE slow", state="timeout")
    r = cli(env, "approve", str(req["id"]), "--as", "alice", check=False)
    assert r.returncode == 1 and "not pending" in r.stderr


def test_pipelined_queries_wait_behind_the_held_one_and_run_in_order(env):
    c = raw_login(env.ep)
    try:
        c.send(query_msg("DELETE FROM orders WHERE id = 3") + query_msg("SELECT count(*) FROM orders"))
        t, body = c.read_msg(timeout=10)
        assert t == b"N", (t, body)
        notice = parse_error_fields(body)
        assert "held for approval" in notice["M"]
        with pytest.raises(Exception):
            c.read_msg(timeout=0.5)  # nothing else while held
        req = wait_request(env, "WHERE id = 3")
        cli(env, "approve", str(req["id"]), "--as", "alice")
        seen = []
        while len([m for m in seen if m[0] == b"Z"]) < 2:
            seen.append(c.read_msg(timeout=10))
        types = b"".join(t for t, _ in seen)
        assert types == b"CZTDCZ", types
        assert seen[0][1].rstrip(b"\0") == b"DELETE 1"
        assert harness.decode_datarow(seen[3][1]) == ["4"]
    finally:
        c.close()


def test_extended_group_is_held_as_a_unit(env):
    c = raw_login(env.ep)
    try:
        c.send(parse("del", "DELETE FROM orders WHERE id = $1") + bind("", "del", [4]) +
               describe("P", "") + execute() + SYNC +
               parse("", "SELECT count(*) FROM orders") + bind("", "") + execute() + SYNC)
        t, _ = c.read_msg(timeout=10)
        assert t == b"N"
        with pytest.raises(Exception):
            c.read_msg(timeout=0.5)
        assert ids(env, "orders") == [1, 2, 3, 4, 5]
        req = wait_request(env, "DELETE FROM orders WHERE id = $1")
        cli(env, "approve", str(req["id"]), "--as", "alice")
        seen = []
        while len([m for m in seen if m[0] == b"Z"]) < 2:
            seen.append(c.read_msg(timeout=10))
        types = b"".join(t for t, _ in seen)
        assert types == b"12nCZ12DCZ", types
        assert harness.decode_datarow(seen[7][1]) == ["4"]
        assert ids(env, "orders") == [1, 2, 3, 5]
        # the approval covered that one execution: a Bind to the same statement again is refused
        c.send(bind("", "del", [5]) + execute() + SYNC)
        seen = [c.read_msg(timeout=10), c.read_msg(timeout=10)]
        assert seen[0][0] == b"E" and parse_error_fields(seen[0][1])["C"] == "42501"
        assert ids(env, "orders") == [1, 2, 3, 5]
    finally:
        c.close()


def test_node_pg_with_parameters_held_then_approved(env):
    cases = [{"name": "del", "text": "DELETE FROM orders WHERE id = $1", "values": [5]},
             {"name": "after", "text": "SELECT count(*)::int FROM orders WHERE id <> $1",
              "values": [0]}]
    extra = {"BWIT_AUDIT_CASES": json.dumps(cases)}
    out = {}

    def go():
        out.update(harness.node_script("audit_checks.js", env.ep, timeout=60, extra_env=extra))
    bg = Background(go)
    req = wait_request(env, "DELETE FROM orders WHERE id = $1")
    assert bg.t.is_alive()
    cli(env, "approve", str(req["id"]), "--as", "alice")
    bg.join(60)
    assert bg.error is None, bg.error
    res = {r["name"]: r for r in out["results"]}
    assert res["del"].get("rowCount") == 1, res
    assert res["after"]["rows"] == [["4"]]


def test_node_pg_queued_select_waits_behind_the_held_delete_and_denial_reaches_it(env):
    cases = [{"name": "del", "text": "DELETE FROM orders WHERE id = $1 AND note <> $2",
              "values": [2, "x"]},
             {"name": "after", "text": "SELECT count(*)::int FROM orders WHERE id > $1",
              "values": [0]}]
    out = {}
    bg = Background(lambda: out.update(harness.node_script(
        "approval_checks.js", env.ep, timeout=60,
        extra_env={"BWIT_APPROVAL_CASES": json.dumps(cases)})))
    req = wait_request(env, "note <> $2")
    time.sleep(0.3)
    assert bg.t.is_alive()
    cli(env, "approve", str(req["id"]), "--as", "alice")
    bg.join(60)
    assert bg.error is None, bg.error
    assert [d["name"] for d in out["done"]] == ["del", "after"], out
    assert out["done"][0]["rowCount"] == 1 and out["done"][1]["rows"] == [["4"]]
    assert any(f"request {req['id']}" in n for n in out["notices"]), out["notices"]
    # denied: the queued SELECT still runs after the error
    out.clear()
    cases[0]["values"] = [3, "x"]
    bg = Background(lambda: out.update(harness.node_script(
        "approval_checks.js", env.ep, timeout=60,
        extra_env={"BWIT_APPROVAL_CASES": json.dumps(cases)})))
    req = wait_request(env, "note <> $2")
    cli(env, "deny", str(req["id"]), "--as", "alice", "--reason", "no")
    bg.join(60)
    assert [d["name"] for d in out["done"]] == ["del", "after"], out
    assert out["done"][0]["error"]["code"] == "42501" and out["done"][1]["rows"] == [["4"]]


def test_an_approved_statement_changes_the_search_path_the_policy_tracks(env):
    c = connect(env)
    try:
        bg = Background(lambda: c.cursor().execute(
            "DELETE FROM orders WHERE id = 1 AND id > -1; SET search_path = hidden, public"))
        req = wait_request(env, "SET search_path = hidden")
        cli(env, "approve", str(req["id"]), "--as", "alice")
        bg.join()
        assert bg.error is None, bg.error
        with c.cursor() as cur:
            cur.execute("show search_path")
            assert cur.fetchone()[0] == "hidden, public"
            # orders is now hidden.orders, which no rule allows
            with pytest.raises(psycopg2.Error) as e:
                cur.execute("select * from orders")
            assert e.value.pgcode == "42501" and "hidden.orders" in str(e.value)
    finally:
        c.close()


def test_cancel_during_hold_gives_57014_and_withdraws(env):
    c = connect(env)
    bg = Background(lambda: c.cursor().execute("DELETE FROM orders WHERE id = 1 AND note <> ''"))
    req = wait_request(env, "note <> ''")
    c.cancel()
    bg.join()
    assert isinstance(bg.error, psycopg2.Error) and bg.error.pgcode == "57014"
    wait_request(env, "note <> ''", state="withdrawn")
    # the session goes on
    with c.cursor() as cur:
        cur.execute("select 1")
        assert cur.fetchone() == (1,)
    c.close()
    assert ids(env, "orders") == [1, 2, 3, 4, 5]


def test_client_disconnecting_withdraws_the_request(env):
    c = raw_login(env.ep)
    c.send(query_msg("DELETE FROM orders WHERE id = 5 AND note IS NOT NULL"))
    assert c.read_msg(timeout=10)[0] == b"N"
    wait_request(env, "note IS NOT NULL")
    c.close()
    wait_request(env, "note IS NOT NULL", state="withdrawn")
    assert ids(env, "orders") == [1, 2, 3, 4, 5]


def test_self_approval_and_non_approvers_are_refused(env):
    bg = run_held(env, "DELETE FROM orders WHERE id = 1 OR id = 2")
    req = wait_request(env, "id = 1 OR id = 2")
    r = cli(env, "approve", str(req["id"]), "--as", AGENT_SUB, check=False)
    assert r.returncode == 1 and "own request" in r.stderr
    r = cli(env, "approve", str(req["id"]), "--as", "mallory", check=False)
    assert r.returncode == 1 and "approver" in r.stderr
    assert [x for x in requests(env) if x["id"] == req["id"]][0]["state"] == "pending"
    r = cli(env, "approve", "999999", "--as", "alice", check=False)
    assert r.returncode == 1 and "no request" in r.stderr
    cli(env, "deny", str(req["id"]), "--as", "alice")
    bg.join()
    assert bg.error is not None and bg.error.pgcode == "42501"


# ---------------------------------------------------------------------------------------
# reject mode and grants


def refused_request_id(err) -> int:
    m = str(err)
    assert "approval request " in m, m
    return int(m.split("approval request ")[1].split()[0])


def try_sql(env, sql):
    c = connect(env)
    try:
        with c.cursor() as cur:
            cur.execute(sql)
            return cur.rowcount
    except psycopg2.Error as e:
        return e
    finally:
        c.close()


def test_reject_mode_then_approval_passes_once(env):
    sql = "UPDATE items SET note = 'fixed' WHERE id = 1"
    e = try_sql(env, sql)
    assert isinstance(e, psycopg2.Error) and e.pgcode == "42501"
    rid = refused_request_id(e)
    # running it again before anyone decided names the same request
    again = try_sql(env, "UPDATE items SET note = 'again' WHERE id = 1")
    assert refused_request_id(again) == rid and "is pending" in str(again)
    assert len([r for r in requests(env) if r["rule"] == "items-fix"]) == 1
    cli(env, "approve", str(rid), "--as", "alice")
    assert try_sql(env, sql) == 1
    # once: the next run asks again
    e2 = try_sql(env, sql)
    assert isinstance(e2, psycopg2.Error) and refused_request_id(e2) != rid
    # same fingerprint with another constant is the same statement shape
    cli(env, "approve", str(refused_request_id(e2)), "--as", "alice")
    assert try_sql(env, "UPDATE items SET note = 'other' WHERE id = 2") == 1


def test_grant_for_a_duration_passes_until_it_ends_and_revoke_ends_it(env):
    sql = "DELETE FROM items WHERE id = 1"
    rid = refused_request_id(try_sql(env, sql))
    cli(env, "approve", str(rid), "--for", "8s", "--as", "alice")
    grants = requests(env, "--grants")
    assert [g["id"] for g in grants] == [rid]
    assert try_sql(env, "DELETE FROM items WHERE id = 1") == 1
    assert try_sql(env, "DELETE FROM items WHERE id = 2") == 1
    until = grants[0]["grant_until"] / 1e6
    time.sleep(max(0.0, until - time.time()) + 0.3)
    assert isinstance(try_sql(env, "DELETE FROM items WHERE id = 3"), psycopg2.Error)
    assert ids(env, "items") == [3, 4, 5]
    # revoke
    rid2 = refused_request_id(try_sql(env, "DELETE FROM items WHERE id = 4"))
    cli(env, "approve", str(rid2), "--for", "15m", "--as", "alice")
    assert try_sql(env, "DELETE FROM items WHERE id = 4") == 1
    assert "revoked" in cli(env, "revoke", str(rid2)).stdout
    assert rid2 not in [g["id"] for g in requests(env, "--grants")]
    assert isinstance(try_sql(env, "DELETE FROM items WHERE id = 5"), psycopg2.Error)
    assert ids(env, "items") == [3, 5]
    # a grant also lets a hold-mode statement through without holding it
    bg = run_held(env, "UPDATE orders SET note = 'g' WHERE id = 1")
    req = wait_request(env, "UPDATE orders SET note = 'g'")
    cli(env, "approve", str(req["id"]), "--for", "15m", "--as", "alice")
    bg.join()
    assert bg.error is None
    assert try_sql(env, "UPDATE orders SET note = 'h' WHERE id = 2") == 1


def test_cli_usage_errors(env):
    r = subprocess.run([str(env.bin), "approve", "-c", str(env.gw.config_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "ID" in r.stderr
    r = subprocess.run([str(env.bin), "approve", "-c", str(env.gw.config_path), "1", "--for",
                        "soon"], capture_output=True, text=True)
    assert r.returncode == 2 and "--for" in r.stderr
    r = subprocess.run([str(env.bin), "approvals", "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2


# ---------------------------------------------------------------------------------------
# the admin console


def console(env, sub="alice", role="dba"):
    return env.gw.endpoint(role=role, target="bulwark", sub=sub,
                           application_name="bwit-console")


def test_admin_console_prints_tables_and_approves(env):
    bg = run_held(env, "DELETE FROM orders WHERE id = 3 AND id > 0")
    req = wait_request(env, "id = 3 AND id > 0")
    ep = console(env)
    r = psql(ep, "-c", "SHOW APPROVALS")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].split("|")[0].strip() == "id" and "statement" in lines[0]
    assert set(lines[1]) <= set("-+")
    assert any(ln.split("|")[0].strip() == str(req["id"]) and "orders-fix" in ln
               for ln in lines[2:])
    assert lines[-1].startswith("(") and "row" in lines[-1]
    r = psql(ep, "-c", "SHOW SESSIONS")
    assert r.returncode == 0 and f"held (request {req['id']})" in r.stdout, r.stdout + r.stderr
    assert AGENT_SUB in r.stdout
    r = psql(ep, "-c", "SHOW STATS")
    assert r.returncode == 0 and "held_statements" in r.stdout and "approvals_pending" in r.stdout
    r = psql(ep, "-c", f"APPROVE {req['id']}")
    assert r.returncode == 0, r.stderr
    assert "approved" in r.stdout and "alice" in r.stdout
    bg.join()
    assert bg.error is None and bg.result[0] == 1
    assert 3 not in ids(env, "orders")
    done = [x for x in requests(env, "--all") if x["id"] == req["id"]][0]
    assert done["via"] == "console" and done["by"] == "alice" and done["by_role"] == "dba"


def test_admin_console_deny_with_reason_and_grant_for(env):
    bg = run_held(env, "DELETE FROM orders WHERE id = 4 AND id > 0")
    req = wait_request(env, "id = 4 AND id > 0")
    r = psql(console(env, sub="dba-carol"), "-c", f"DENY {req['id']} 'it''s the weekend'")
    assert r.returncode == 0, r.stderr
    bg.join()
    assert bg.error.pgcode == "42501" and "it's the weekend" in str(bg.error)
    rid = refused_request_id(try_sql(env, "DELETE FROM items WHERE id = 1"))
    r = psql(console(env), "-c", f"APPROVE {rid} FOR '10m'")
    assert r.returncode == 0 and "approved" in r.stdout, r.stderr
    r = psql(console(env), "-c", "SHOW GRANTS")
    assert str(rid) in r.stdout
    assert try_sql(env, "DELETE FROM items WHERE id = 2") == 1


def test_admin_console_refusals(env):
    # not an admin role
    r = psql(env.gw.endpoint(role="agent", target="bulwark", sub=AGENT_SUB), "-c", "SHOW STATS")
    assert r.returncode != 0 and "not an admin role" in r.stderr
    ep = console(env)
    r = psql(ep, "-c", "DROP TABLE orders")
    assert r.returncode != 0 and "unknown admin console command" in r.stderr
    r = psql(ep, "-c", "APPROVE 123456")
    assert r.returncode != 0 and "no approval request" in r.stderr
    r = psql(ep, "-c", "APPROVE 1 FOR 'later'")
    assert r.returncode != 0 and "not a duration" in r.stderr
    # approvers: an admin whose role the rule does not list; and nobody approves their own
    bg = run_held(env, "DELETE FROM orders WHERE id = 5 AND id > 0")
    req = wait_request(env, "id = 5 AND id > 0")
    r = psql(console(env, sub="auditor-eve", role="auditor"), "-c", f"APPROVE {req['id']}")
    assert r.returncode != 0 and "not among the approvers" in r.stderr, r.stderr
    r = psql(console(env, sub="auditor-eve", role="auditor"), "-c", "SHOW APPROVALS")
    assert r.returncode == 0 and str(req["id"]) in r.stdout
    r = psql(console(env, sub=AGENT_SUB), "-c", f"APPROVE {req['id']}")
    assert r.returncode != 0 and "own request" in r.stderr, r.stderr
    assert [x for x in requests(env) if x["id"] == req["id"]][0]["state"] == "pending"
    r = psql(ep, "-c", f"DENY {req['id']}; SHOW APPROVALS")
    assert r.returncode == 0, r.stderr
    bg.join()
    assert bg.error.pgcode == "42501"
    r = psql(ep, "-c", f"APPROVE {req['id']}")
    assert r.returncode != 0 and "not pending" in r.stderr


# ---------------------------------------------------------------------------------------
# webhook (runs last: it stops the receiver)


def test_webhook_receives_new_requests_and_holds_work_without_it(env):
    bg = run_held(env, "UPDATE orders SET note = 'hook' WHERE id = 1 AND id < 100")
    req = wait_request(env, "note = 'hook'")

    def posted():
        return [b for ct, b in env.hook.bodies if b.get("id") == req["id"]]
    harness.wait_for(posted, 10, "the webhook POST")
    ct = [ct for ct, b in env.hook.bodies if b.get("id") == req["id"]][0]
    body = posted()[0]
    assert ct == "application/json"
    assert f"bulwark approve {req['id']}" in body["text"] and AGENT_SUB in body["text"]
    assert body["sub"] == AGENT_SUB and body["role"] == "agent" and body["rule"] == "orders-fix"
    assert body["state"] == "pending" and body["sql"] == "UPDATE orders SET note = 'hook' WHERE id = 1 AND id < 100"
    cli(env, "approve", str(req["id"]), "--as", "alice")
    bg.join()
    assert bg.error is None
    # the receiver goes away: holds still work, and the failure is only logged
    env.hook.stop()
    log_at = env.gw.log_size()
    bg = run_held(env, "UPDATE orders SET note = 'nohook' WHERE id = 2 AND id < 100")
    req = wait_request(env, "note = 'nohook'")
    cli(env, "approve", str(req["id"]), "--as", "alice")
    bg.join()
    assert bg.error is None and bg.result[0] == 1
    harness.wait_for(lambda: "approval_webhook_failed" in env.gw.log_since(log_at), 20,
                     "the webhook failure in the log")
