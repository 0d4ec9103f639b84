"""The audit trail end to end (issue 6, "Tests"; SPEC sections 3 `audit`, 7 and 8).

1. A short run through the gateway (psycopg2, simple protocol; node-pg, extended protocol
   with parameters, node/audit_checks.js) of allowed, denied and erroring statements: each
   is in `bulwark replay SESSION --json` and in the text transcript with its decision, rule,
   intent, Bind parameters and captured rows; the sessions are in `bulwark sessions --json`
   with their role and subject; `bulwark audit verify` passes while the gateway runs
   (read-only, from another process) and after it stopped.
2. Crash: `kill -9` of the gateway during a write load (pgbench -N -M prepared, and
   psycopg2 writers inserting unique ids) in `strict-writes` mode; after a restart on the
   same store, `audit verify` passes and every write PostgreSQL committed - in particular
   every one a client saw acknowledged - has its STATEMENT record.
3. Concurrency: 50 sessions at once (strict mode, `audit verify` running meanwhile); the
   chain stays linear and verifiable, with exactly one STATEMENT record per statement sent.
4. Export: `bulwark audit export` of a signed store is checked with the standard-library
   verifier that docs/audit.md documents (taken from the document itself), a checkpoint
   signature with OpenSSL as documented, and edits of the export are caught.
5. Map full: a 1 MiB store. `on_failure: deny` refuses with 58030 once it is full while the
   gateway keeps answering logins and refusals (and another gateway serves), and recovers
   by itself once retention (`retention.max_age`) frees space; `on_failure: allow`
   forwards and logs it loudly; a write held for its record when the map fills is answered
   either way (deny: 58030 and not run); `retention.max_size` keeps the same map from
   ever filling.

Every gateway here is an AuditGateway (harness.Gateway plus an `audit` section and a role of
our own); each test starts its own, so that each store holds only what the test did.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg2
import pytest

import harness
from harness import (PG_BIN, Gateway, GatewayOptions, msg, node_script, raw_login, run,
                     wait_for)

pytestmark = pytest.mark.gateway_only  # the audit trail is the gateway's

ROLE = "auditee"           # the role of this module: writes allowed, a few deny rules
OWNER = harness.OWNER      # its upstream user (owns the shop schema)
BENCH_DB = "audit_bench"   # pgbench tables for the crash test
DOCS_AUDIT = harness.REPO_ROOT / "docs" / "audit.md"


def role_policy() -> dict:
    return {
        "role": ROLE,
        "description": "integration tests: audit trail",
        "identities": [{"iss": harness.ISSUER, "sub": "svc-*"}],
        "upstream": {t: {"user": OWNER, "password_file": f"../secrets/{OWNER}"}
                     for t in ("shop", BENCH_DB)},
        "default": "allow",
        "rules": [
            {"id": "no-ddl", "action": "deny", "operations": ["ddl", "dcl"]},
            {"id": "no-unbounded-writes", "action": "deny", "operations": ["update", "delete"],
             "without_where": True},
        ],
    }


class AuditGateway(Gateway):
    """harness.Gateway (plaintext on loopback) with `audit` settings of the test, the
    target BENCH_DB and the role ROLE."""

    def __init__(self, binary, workdir, pg, certdir, registry, *, name, audit=None):
        super().__init__(binary, workdir, pg, certdir, GatewayOptions(tls=False), registry,
                         name=name)
        self.audit = {"path": "var/audit", "map_size": "256MiB", **(audit or {})}

    def targets(self) -> dict:
        t = super().targets()
        t[BENCH_DB] = {"host": "127.0.0.1", "port": self.pg.port, "dbname": BENCH_DB,
                       "sslmode": "disable"}
        return t

    def write_config(self):
        super().write_config()
        cfg = json.loads(self.config_path.read_text())
        cfg["audit"] = self.audit
        self.config_path.write_text(json.dumps(cfg, indent=2))
        (self.workdir / "policies" / f"{ROLE}.json").write_text(json.dumps(role_policy(), indent=2))

    @property
    def store_dir(self) -> Path:
        return self.workdir / self.audit["path"]

    def ep(self, sub: str, app: str = "bwit-audit", **kw):
        return self.endpoint(role=ROLE, sub=sub, application_name=app, **kw)

    # -- the CLI, from another process -------------------------------------------------
    def cli(self, *args, timeout=120) -> subprocess.CompletedProcess:
        """`bulwark WORDS... -c CONFIG OPTIONS...`: the -c goes after the subcommand words."""
        n = 2 if args[0] == "audit" else 1
        words, rest = args[:n], args[n:]
        return run([str(self.binary), *words, "-c", str(self.config_path), *rest],
                   timeout=timeout)

    def verify(self) -> str:
        r = self.cli("audit", "verify")
        assert r.returncode == 0, (f"bulwark audit verify failed ({r.returncode}):\n"
                                   f"{r.stdout}{r.stderr}\n--- gateway log:\n{self.log_tail()}")
        assert "chain intact" in r.stdout, r.stdout
        return r.stdout

    def export_lines(self, *extra) -> list:
        r = self.cli("audit", "export", "--format", "jsonl", *extra)
        assert r.returncode == 0, f"bulwark audit export failed ({r.returncode}): {r.stderr}"
        return [json.loads(ln) for ln in r.stdout.splitlines() if ln.strip()]

    def records(self) -> list:
        """Every record of the export, as the envelope (seq, type, session, data, ...)."""
        return [o["record"] for o in self.export_lines() if "record" in o]

    def sessions(self, *filters) -> list:
        r = self.cli("sessions", "--json", *filters)
        assert r.returncode == 0, f"bulwark sessions failed ({r.returncode}): {r.stderr}"
        return json.loads(r.stdout)

    def replay(self, session_id: str, as_json: bool) -> str:
        r = self.cli("replay", session_id, *(["--json"] if as_json else []))
        assert r.returncode == 0, f"bulwark replay failed ({r.returncode}): {r.stderr}"
        return r.stdout

    def log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0


@pytest.fixture(scope="module")
def audit_gateways(bulwark_bin, pg, certdir, secret_registry, tmp_path_factory):
    """start(name, **audit) -> a running AuditGateway; all are stopped (SIGTERM, exit 0) at
    the end of the module unless the test stopped or killed it itself."""
    made = []

    def start(name: str, **audit) -> AuditGateway:
        g = AuditGateway(bulwark_bin, tmp_path_factory.mktemp(name), pg, certdir,
                         secret_registry, name=name, audit=audit)
        made.append(g)
        g.start()
        return g

    yield start
    problems = []
    for g in made:
        if g.stopped_by_test or not g.proc:
            continue
        alive = g.alive()
        status = g.stop()
        if not alive or status != 0:
            problems.append(f"{g.name}: alive={alive} exit={status}\n{g.log_tail()}")
    assert not problems, "gateways did not stop cleanly:\n" + "\n".join(problems)


def stop_cleanly(g: AuditGateway):
    g.stopped_by_test = True
    assert g.alive(), f"bulwark serve died:\n{g.log_tail()}"
    status = g.stop()
    assert status == 0, f"bulwark serve exited {status} after SIGTERM:\n{g.log_tail()}"


def admin_exec(pg, sql: str, dbname="shop", as_owner=True):
    c = pg.admin(dbname)
    try:
        with c.cursor() as cur:
            if as_owner:
                cur.execute(f"set role {OWNER}")
            cur.execute(sql)
            return cur.fetchall() if cur.description else None
    finally:
        c.close()


def sqlstate_of(fn) -> str | None:
    """Run fn(); the SQLSTATE of the psycopg2 error it raised, or None."""
    try:
        fn()
    except psycopg2.Error as e:
        return e.pgcode
    return None


def whole_number(v) -> bool:
    """A plain JSON integer: `bulwark replay --json` prints times as the export's canonical
    form does (once it printed 1.79586782064529e+15, cJSON's %.15g, for microseconds)."""
    return isinstance(v, int) and not isinstance(v, bool)


def by_type(records: list, type_: str, session: str | None = None) -> list:
    return [r for r in records
            if r["type"] == type_ and (session is None or r["session"] == session)]


def results_by_stmt(records: list) -> dict:
    """STATEMENT seq -> its RESULT records (a prepared statement may run several times)."""
    out = {}
    for r in by_type(records, "result"):
        out.setdefault(r["data"]["stmt"], []).append(r)
    return out


# ---------------------------------------------------------------------------------------
# 1. every statement of a run, in replay


@pytest.fixture(scope="module")
def items_table(pg):
    admin_exec(pg, "drop table if exists audit_items; "
                   "create table audit_items (id int primary key, note text)")
    yield "audit_items"
    admin_exec(pg, "drop table if exists audit_items")


# Each case: what the client must see (rows as text, command tag, or the SQLSTATE of its
# error), and what the records must say: decision, rule, writes (STATEMENT); for node-pg
# also the Bind values (`params`, as text; None for NULL) of the STATEMENT.
SIMPLE_CASES = [
    dict(label="select", sql="select id, name from customers where id <= 3 order by id",
         rows=[["1", "Ada Lovelace"], ["2", "Grace Hopper"], ["3", "Edsger Dijkstra"]],
         decision="allow", tag="SELECT 3"),
    dict(label="insert", sql="insert into audit_items (id, note) values (1, 'one'), (2, 'two')",
         decision="allow", tag="INSERT 0 2", writes=True),
    dict(label="update", sql="update audit_items set note = 'uno' where id = 1",
         decision="allow", tag="UPDATE 1", writes=True),
    dict(label="read-back", sql="select id, note from audit_items order by id",
         rows=[["1", "uno"], ["2", "two"]], decision="allow", tag="SELECT 2"),
    dict(label="null and empty", sql="select null::text as n, ''::text as e",
         rows=[[None, ""]], decision="allow", tag="SELECT 1"),
    dict(label="unbounded delete", sql="delete from audit_items",
         decision="deny", rule="no-unbounded-writes", error="42501"),
    dict(label="ddl", sql="create table audit_nope (x int)",
         decision="deny", rule="no-ddl", error="42501"),
    dict(label="builtin", sql="select pg_read_file('/etc/hostname')",
         decision="deny", error="42501"),
    dict(label="syntax", sql="selec 1", decision="deny", error="42601"),
    dict(label="division", sql="select 1/0", decision="allow", error="22012"),
    dict(label="missing table", sql="select * from audit_no_such_table",
         decision="allow", error="42P01"),
    dict(label="after errors", sql="select count(*) from audit_items",
         rows=[["2"]], decision="allow", tag="SELECT 1"),
]

NODE_CASES = [
    dict(name="sum", text="select $1::int + $2::int as sum, $3::text as t, $4::text as n",
         values=[40, 2, "päivää", None], params=["40", "2", "päivää", None],
         rows=[["42", "päivää", None]], decision="allow", tag="SELECT 1"),
    dict(name="insert", text="insert into audit_items (id, note) values ($1, $2)",
         values=[101, "from node"], params=["101", "from node"], decision="allow",
         tag="INSERT 0 1", writes=True),
    dict(name="named-1", statement="audit_note",
         text="select id, note from audit_items where id = $1",
         values=[101], params=["101"], rows=[["101", "from node"]], decision="allow",
         tag="SELECT 1"),
    dict(name="named-2", statement="audit_note",
         text="select id, note from audit_items where id = $1",
         values=[2], params=["2"], rows=[["2", "two"]], decision="allow", tag="SELECT 1"),
    dict(name="unbounded update", text="update audit_items set note = $1", values=["x"],
         decision="deny", rule="no-unbounded-writes", error="42501"),
    dict(name="syntax", text="selec $1", values=[1], decision="deny", error="42601"),
    dict(name="division", text="select $1::int / 0 as q", values=[7], params=["7"],
         decision="allow", error="22012"),
    dict(name="last", text="select count(*) as n from audit_items where id > $1", values=[0],
         params=["0"], rows=[["3"]], decision="allow", tag="SELECT 1"),
]


def run_simple_cases(ep) -> dict:
    conn = ep.connect()
    conn.autocommit = True
    seen = {}
    try:
        for c in SIMPLE_CASES:
            with conn.cursor() as cur:
                try:
                    cur.execute(c["sql"])
                    seen[c["label"]] = {"rows": [[None if v is None else str(v) for v in row]
                                                 for row in cur.fetchall()]
                                        if cur.description else None,
                                        "tag": cur.statusmessage}
                except psycopg2.Error as e:
                    seen[c["label"]] = {"error": e.pgcode}
    finally:
        conn.close()
    return seen


def check_statement_record(st: dict, case: dict, protocol: str):
    d = st["data"]
    assert d["protocol"] == protocol, st
    assert d["decision"] == case["decision"], st
    if case.get("rule"):
        assert d.get("rule") == case["rule"], st
    if case["decision"] == "deny":
        assert d.get("message"), f"a refused statement's record must hold the error sent: {st}"
    if case.get("writes"):
        assert d.get("writes") is True, st
    assert whole_number(d.get("start")) and d["start"] > 0, st
    if "params" in case:  # docs/audit.md: the STATEMENT holds the Bind values
        assert d.get("params") == case["params"], f"Bind parameters not recorded: {st}"


def check_result_record(res: dict, case: dict):
    d = res["data"]
    assert whole_number(d.get("end")) and d["end"] > 0, res
    if "error" in case:
        assert d.get("sqlstate") == case["error"], res
        assert "tag" not in d, res
    else:
        assert "sqlstate" not in d, res
        assert d.get("tag") == case["tag"], res
    if "rows" in case:
        assert d.get("values") == case["rows"], res
        assert d.get("rows") == len(case["rows"]), res
        assert len(d.get("columns", [])) == len(case["rows"][0]), res


def replay_json(g: AuditGateway, sid: str) -> list:
    out = json.loads(g.replay(sid, as_json=True))
    assert out["session"] == sid, out
    assert all(r.get("hash_ok") for r in out["records"]), out
    return out["records"]


class RunOutcome:
    """What section 1's run left: the gateway (stopped by now), the sessions and what the
    CLI said while the gateway ran and after it stopped."""
    g: AuditGateway
    simple_sid: str
    node_sid: str
    verify_running: subprocess.CompletedProcess
    verify_stopped: subprocess.CompletedProcess
    records: list


@pytest.fixture(scope="module")
def audited_run(audit_gateways, items_table) -> RunOutcome:
    """Section 1: a failed login, the psycopg2 cases, the node-pg cases; `audit verify`
    while the gateway runs; then SIGTERM and `audit verify` again."""
    o = RunOutcome()
    g = o.g = audit_gateways("audit-run", durability="strict-writes")

    bad = g.ep("svc-audit-simple").with_(password=g.token(secret_file=g.other_secret_path))
    with pytest.raises(harness.PgError) as ei:
        raw_login(bad).close()
    assert ei.value.sqlstate == "28P01" and ei.value.severity == "FATAL", ei.value.fields

    seen = run_simple_cases(g.ep("svc-audit-simple", app="bwit-audit-simple"))
    for c in SIMPLE_CASES:
        got = seen[c["label"]]
        if "error" in c:
            assert got == {"error": c["error"]}, (c, got)
        else:
            assert "error" not in got, (c, got)
            assert got["tag"] == c["tag"], (c, got)
            if "rows" in c:
                assert got["rows"] == c["rows"], (c, got)

    node_cases = [{k: c[k] for k in ("name", "text", "values", "statement") if k in c}
                  for c in NODE_CASES]
    out = node_script("audit_checks.js", g.ep("svc-audit-node", app="bwit-audit-node"),
                      extra_env={"BWIT_AUDIT_CASES": json.dumps(node_cases)})
    assert "fatal" not in out, out
    node_seen = {r["name"]: r for r in out["results"]}
    for c in NODE_CASES:
        got = node_seen[c["name"]]
        if "error" in c:
            assert got.get("error", {}).get("code") == c["error"], (c, got)
        else:
            assert "error" not in got, (c, got)
            if "rows" in c:
                assert got["rows"] == c["rows"], (c, got)

    def sid_of(sub):  # the session's end is recorded just after the client's Terminate
        found = wait_for(lambda: [s for s in g.sessions("--sub", sub) if s.get("end_reason")],
                         10, f"the session of {sub} to be recorded as ended")
        assert len(found) == 1, found
        return found[0]["session"]

    o.simple_sid = sid_of("svc-audit-simple")
    o.node_sid = sid_of("svc-audit-node")
    o.verify_running = g.cli("audit", "verify")  # read-only, from another process
    stop_cleanly(g)
    o.verify_stopped = g.cli("audit", "verify")
    o.records = g.records()
    return o


def test_audit_verify_passes_while_the_gateway_runs_and_after_it_stopped(audited_run):
    for what, r in (("while running", audited_run.verify_running),
                    ("after SIGTERM", audited_run.verify_stopped)):
        assert r.returncode == 0 and "chain intact" in r.stdout, \
            f"audit verify {what}: exit {r.returncode}\n{r.stdout}{r.stderr}"
    assert "does not end with a clean shutdown" in audited_run.verify_running.stdout
    assert "does not end with a clean shutdown" not in audited_run.verify_stopped.stdout
    records = audited_run.records
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert records[-1]["type"] == "note" and records[-1]["data"]["event"] == "close", records[-1]


def test_sessions_list_the_run_with_role_and_subject(audited_run):
    g = audited_run.g
    for sid, sub, app in ((audited_run.simple_sid, "svc-audit-simple", "bwit-audit-simple"),
                          (audited_run.node_sid, "svc-audit-node", "bwit-audit-node")):
        s = [x for x in g.sessions() if x["session"] == sid]
        assert len(s) == 1, s
        s = s[0]
        assert s["role"] == ROLE and s["sub"] == sub and s["iss"] == harness.ISSUER, s
        assert s["target"] == "shop" and s["application_name"] == app, s
        assert s["end_reason"] and s["end"] >= s["start"], s
    by_role = {s["session"] for s in g.sessions("--role", ROLE)}
    assert {audited_run.simple_sid, audited_run.node_sid} <= by_role
    assert g.sessions("--role", "no-such-role") == []
    assert g.sessions("--sub", "svc-nobody") == []
    failed = by_type(audited_run.records, "login_failed")
    assert len(failed) == 1, failed
    assert failed[0]["data"].get("sqlstate") == "28P01", failed
    assert failed[0]["data"].get("role") == ROLE, failed
    txt = g.cli("sessions")
    assert txt.returncode == 0, txt.stderr
    assert audited_run.simple_sid in txt.stdout and "svc-audit-node" in txt.stdout, txt.stdout


def test_simple_protocol_statements_are_in_replay_with_decision_and_rows(audited_run):
    g, sid = audited_run.g, audited_run.simple_sid
    rj = replay_json(g, sid)
    assert [r["seq"] for r in rj] == [r["seq"] for r in audited_run.records if r["session"] == sid]
    start = [r for r in rj if r["type"] == "session_start"]
    assert len(start) == 1 and start[0]["data"]["sub"] == "svc-audit-simple", start
    assert start[0]["data"]["role"] == ROLE and start[0]["data"]["client"].startswith("127.0.0.1:")
    stmts = [r for r in rj if r["type"] == "statement"]
    assert [s["data"]["sql"] for s in stmts] == [c["sql"] for c in SIMPLE_CASES]
    results = results_by_stmt(rj)
    for st, c in zip(stmts, SIMPLE_CASES):
        check_statement_record(st, c, "simple")
        res = results.get(st["seq"], [])
        assert len(res) == 1, f"{c['label']}: expected one RESULT for #{st['seq']}: {res}"
        check_result_record(res[0], c)
    end = [r for r in rj if r["type"] == "session_end"]
    assert len(end) == 1 and end[0]["data"]["statements"] == len(SIMPLE_CASES), end
    assert end[0]["data"]["denied"] == sum(c["decision"] == "deny" for c in SIMPLE_CASES), end
    check_replay_text(g.replay(sid, as_json=False), sid, "svc-audit-simple", stmts,
                      SIMPLE_CASES, "sql")


def test_extended_protocol_statements_are_in_replay_with_bind_parameters(audited_run):
    """node-pg: each execution (Parse/Bind/Execute, or Bind/Execute of a named statement
    parsed before) is one STATEMENT record with its Bind values, recorded before the
    Execute goes upstream, and one RESULT; a Parse the policy refuses is one STATEMENT
    (no values: nothing was bound) and its RESULT with the error sent."""
    g, sid = audited_run.g, audited_run.node_sid
    rj = replay_json(g, sid)
    stmts = [r for r in rj if r["type"] == "statement"]
    assert [s["data"]["sql"] for s in stmts] == [c["text"] for c in NODE_CASES], \
        [s["data"]["sql"] for s in stmts]
    results = results_by_stmt(rj)
    for st, c in zip(stmts, NODE_CASES):
        check_statement_record(st, c, "extended")
        res = results.get(st["seq"], [])
        assert len(res) == 1, f"{c['name']}: expected one RESULT for #{st['seq']}: {res}"
        check_result_record(res[0], c)
    end = [r for r in rj if r["type"] == "session_end"]
    assert len(end) == 1 and end[0]["data"]["statements"] == len(NODE_CASES), end
    check_replay_text(g.replay(sid, as_json=False), sid, "svc-audit-node", stmts, NODE_CASES,
                      "text")


def test_replay_text_shows_the_bind_parameters(audited_run):
    """docs/audit.md: replay shows each statement's "text, parameters and intent"."""
    text = audited_run.g.replay(audited_run.node_sid, as_json=False)
    for c in NODE_CASES:
        if c.get("params"):
            shown = " ".join(f"${i}=" + ("NULL" if p is None else f"'{p}'")
                             for i, p in enumerate(c["params"], 1))
            assert shown in text, \
                f"replay does not show the Bind parameters of {c['name']} ({shown}):\n{text}"


def test_replay_text_shows_every_execution_of_a_prepared_statement(audited_run):
    """A named statement parsed once and executed twice: both executions (their outcome and
    rows) are in the transcript."""
    text = audited_run.g.replay(audited_run.node_sid, as_json=False)
    named = [c for c in NODE_CASES if c.get("statement") == "audit_note"]
    assert len(named) == 2
    for c in named:
        for row in c["rows"]:
            assert re.search(r"\b" + r"\s*\|\s*".join(map(re.escape, row)) + r"\b", text), \
                f"execution {c['name']} (rows {c['rows']}) missing from the transcript:\n{text}"


def test_statement_records_hold_the_intent(audited_run):
    """SPEC 7: a statement's record holds its intent (the accesses it makes)."""
    stmts = by_type(audited_run.records, "statement")
    # (a statement that touches no relation or function, `select 1/0`, has no accesses)
    missing = [s["data"]["sql"] for s in stmts
               if s["data"]["decision"] == "allow" and s["data"].get("intent") is None]
    assert not missing, f"STATEMENT records without an intent: {missing}"

    def accesses(sql):
        found = [s for s in stmts if s["data"]["sql"] == sql]
        assert found, sql
        return json.dumps(found[0]["data"]["intent"])
    for sql, op, obj in (
            (SIMPLE_CASES[0]["sql"], "select", "public.customers"),
            (SIMPLE_CASES[1]["sql"], "insert", "public.audit_items"),
            (SIMPLE_CASES[5]["sql"], "delete", "public.audit_items"),
            (NODE_CASES[1]["text"], "insert", "public.audit_items")):
        a = accesses(sql)
        assert op in a and obj in a, f"intent of {sql!r} does not name {op} on {obj}: {a}"


def extended_query(c, sql: str, params: list) -> list:
    """Parse/Bind/Execute/Sync of sql with text parameters on a raw connection; the rows."""
    vals = b"".join(struct.pack("!i", len(p)) + p for p in (v.encode() for v in params))
    c.send(msg(b"P", b"\0" + sql.encode() + b"\0" + struct.pack("!H", 0))
           + msg(b"B", b"\0\0" + struct.pack("!HH", 0, len(params)) + vals
                 + struct.pack("!H", 0))
           + msg(b"E", b"\0" + struct.pack("!i", 0)) + msg(b"S"))
    rows, err = [], None
    while True:
        t, body = c.read_msg(10)
        if t == b"D":
            rows.append(harness.decode_datarow(body))
        elif t == b"E":
            err = harness.PgError(harness.parse_error_fields(body))
        elif t == b"Z":
            if err:
                raise err
            return rows


SECRET_PARAMS = {  # value -> what the detectors must leave of it in the record
    "4111 1111 1111 1111": "****",                        # credit_card (Luhn)
    "ssn 123-45-6789 on file": "ssn **** on file",          # us_ssn
    "mail alice.smith@example.com now": "mail **** now",    # email
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzdmMifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ": "****",  # secret: JWT
}


def test_bind_parameters_pass_through_the_detectors_before_they_are_recorded(
        audit_gateways):
    """issue 6: Bind parameter values are recorded after every content detector (SPEC 5.3)
    redacted what it found, so a card number, an SSN, an address or a token an agent sends
    as a parameter is not kept in clear in the audit trail; plain values stay as they were."""
    g = audit_gateways("audit-bind-detect")
    c = raw_login(g.ep("svc-bind-detect"))
    plain = ["hello 42", "order #1234"]
    values = plain + list(SECRET_PARAMS)
    sql = "select " + " + ".join(f"length(${i + 1}::text)" for i in range(len(values)))
    try:
        rows = extended_query(c, sql, values)
    finally:
        c.close()
    assert rows == [[str(sum(len(v) for v in values))]], rows  # ran with the real values
    stop_cleanly(g)
    lines = g.export_lines()
    text = json.dumps(lines, ensure_ascii=False)
    for part in ("4111 1111 1111 1111", "123-45-6789", "alice.smith@example.com",
                 "eyJhbGciOiJIUzI1NiJ9", "c2lnbmF0dXJlLXNpZ25hdHVyZQ"):
        assert part not in text, f"{part!r} of a Bind value is in the audit trail"
    st = [r for r in by_type([o["record"] for o in lines if "record" in o], "statement")
          if r["data"]["sql"] == sql]
    assert len(st) == 1, st
    assert st[0]["data"]["params"] == plain + list(SECRET_PARAMS.values()), st[0]["data"]
    g.verify()


def check_replay_text(text: str, sid: str, sub: str, stmts: list, cases: list, key: str):
    assert sid in text and sub in text and ROLE in text, text
    pos = 0
    for st, c in zip(stmts, cases):
        head = re.compile(rf"#{st['seq']}\s+{c['decision']}\b")
        m = head.search(text, pos)
        assert m, f"replay shows no '#{st['seq']} {c['decision']}' after offset {pos}:\n{text}"
        pos = m.end()
        sql_at = text.find(c[key], pos)
        assert sql_at >= 0, f"statement text {c[key]!r} missing after #{st['seq']}:\n{text}"
        if c.get("rule"):
            assert c["rule"] in text[m.start():], text
        if "error" in c:
            assert re.search(rf"\b{c['error']}\b", text[pos:]), \
                f"#{st['seq']}: SQLSTATE {c['error']} not shown:\n{text}"
        for row in c.get("rows") or []:
            for v in row:
                if v:
                    assert v in text[pos:], f"#{st['seq']}: captured value {v!r} not shown:\n{text}"
        if c.get("rows"):
            n = len(c["rows"])
            assert f"({n} row{'s' if n != 1 else ''})" in text[pos:], text


# ---------------------------------------------------------------------------------------
# 2. crash: kill -9 during a write load in strict-writes mode


PGBENCH_INSERT = re.compile(
    r"INSERT INTO pgbench_history \(tid, bid, aid, delta, mtime\) VALUES "
    r"\((\d+|\$1), (\d+|\$2), (\d+|\$3), (-?\d+|\$4), CURRENT_TIMESTAMP\);?", re.I)


def pgbench_history_inserts(stmt_records: list) -> Counter:
    """(tid, bid, aid, delta) of every recorded pgbench_history INSERT: from the text in
    simple mode, from the STATEMENT's Bind values in extended and prepared modes."""
    out = Counter()
    for r in stmt_records:
        d = r["data"]
        m = PGBENCH_INSERT.fullmatch(d["sql"].strip())
        if not m or d["decision"] != "allow":
            continue
        if m.group(1) == "$1":
            assert isinstance(d.get("params"), list) and len(d["params"]) == 4, r
            out[tuple(d["params"])] += 1
        else:
            out[m.groups()] += 1
    return out
ACK_INSERT = re.compile(r"insert into audit_acks \(id, who\) values \((\d+), '(w\d+)'\)")


@pytest.fixture(scope="module")
def bench_db(pg):
    """BENCH_DB owned by the schema owner, with pgbench's tables (loaded directly) and
    audit_acks for the writers of the crash test."""
    pg.admin_query(f"drop database if exists {BENCH_DB} with (force)")
    pg.admin_query(f"create database {BENCH_DB} owner {OWNER}")
    pg.admin_query("alter schema public owner to " + OWNER, dbname=BENCH_DB)
    env = dict(os.environ, PGPASSWORD=pg.passwords[OWNER], PGSSLMODE="disable")
    r = run([str(PG_BIN / "pgbench"), "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p",
             str(pg.port), "-U", OWNER, BENCH_DB], env=env)
    assert r.returncode == 0, f"pgbench -i failed:\n{r.stderr}{r.stdout}"
    admin_exec(pg, "create table audit_acks (id bigint primary key, who text not null)",
               dbname=BENCH_DB)
    yield BENCH_DB
    pg.admin_query(f"drop database if exists {BENCH_DB} with (force)")


class AckWriter(threading.Thread):
    """Inserts unique ids one autocommit statement at a time (simple protocol: the id is in
    the statement text) and keeps those whose INSERT the client saw acknowledged."""

    def __init__(self, ep, n: int):
        super().__init__(daemon=True, name=f"ack-writer-{n}")
        self.ep, self.n = ep, n
        self.acked: list = []
        self.error = None

    def run(self):
        try:
            conn = self.ep.connect()
            conn.autocommit = True
        except psycopg2.Error as e:
            self.error = e
            return
        try:
            with conn.cursor() as cur:
                for i in range(1, 10 ** 6):
                    ident = self.n * 10 ** 7 + i
                    cur.execute(f"insert into audit_acks (id, who) values ({ident}, 'w{self.n}')")
                    self.acked.append(ident)  # CommandComplete + ReadyForQuery seen
        except psycopg2.Error as e:  # the gateway was killed
            self.error = e
        finally:
            try:
                conn.close()
            except psycopg2.Error:
                pass


def test_kill_9_during_writes_loses_no_acknowledged_write(audit_gateways, bench_db, pg):
    g = audit_gateways("audit-crash", durability="strict-writes")
    bench_ep = g.ep("svc-audit-pgbench", app="bwit-audit-pgbench", target=BENCH_DB)
    pgbench = subprocess.Popen(
        [str(PG_BIN / "pgbench"), "-n", "-N", "-M", "prepared", "-c", "4", "-j", "2", "-T", "60",
         BENCH_DB], env=bench_ep.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    writers = [AckWriter(g.ep(f"svc-audit-writer-{n}", target=BENCH_DB), n) for n in (1, 2)]
    for w in writers:
        w.start()
    try:
        def busy():
            hist = pg.admin_query("select count(*) from pgbench_history", dbname=BENCH_DB)[0][0]
            return hist >= 200 and all(len(w.acked) >= 100 for w in writers)
        wait_for(busy, 60, "pgbench and the writers to commit a few hundred writes", interval=0.1)
        time.sleep(0.5)
        assert g.alive() and pgbench.poll() is None, g.log_tail()
        g.proc.kill()  # SIGKILL, mid-run
        g.proc.wait()
    finally:
        for w in writers:
            w.join(30)
        try:
            bench_out = pgbench.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            pgbench.kill()
            bench_out = pgbench.communicate()[0]
    g.stopped_by_test = True
    assert g.proc.returncode == -signal.SIGKILL
    assert all(not w.is_alive() for w in writers)
    acked = {i for w in writers for i in w.acked}
    assert len(acked) >= 200

    # the store as the crash left it, then after a restart on the same path
    after_crash = g.verify()
    assert "does not end with a clean shutdown" in after_crash, after_crash
    g.start()
    g.stopped_by_test = False
    g.verify()
    c = g.ep("svc-audit-after-crash").connect()  # it serves again
    try:
        with c.cursor() as cur:
            cur.execute("select count(*) from customers")
            assert cur.fetchone()[0] == len(harness.CUSTOMERS)
    finally:
        c.close()

    records = g.records()
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    opens = [r for r in records if r["type"] == "note" and r["data"].get("event") == "open"]
    assert len(opens) == 2, "the restarted gateway continues the same chain"
    sqls = [r["data"]["sql"] for r in by_type(records, "statement")]
    recorded_ids = {int(m.group(1)) for m in map(ACK_INSERT.fullmatch, sqls) if m}
    lost = sorted(acked - recorded_ids)
    assert not lost, (f"{len(lost)} acknowledged inserts have no STATEMENT record "
                      f"(first: {lost[:10]})")
    committed = {r[0] for r in pg.admin_query("select id from audit_acks", dbname=BENCH_DB)}
    assert acked <= committed
    # strict-writes holds every write until its record is durable, so even a write that
    # PostgreSQL committed but whose acknowledgement the kill cut off has its record
    unrecorded = sorted(committed - recorded_ids)
    assert not unrecorded, f"committed inserts without a record: {unrecorded[:10]}"

    recorded_hist = pgbench_history_inserts(by_type(records, "statement"))
    committed_hist = Counter(
        tuple(str(v) for v in row) for row in pg.admin_query(
            "select tid, bid, aid, delta from pgbench_history", dbname=BENCH_DB))
    assert sum(committed_hist.values()) >= 200
    # Parse once, Bind/Execute per transaction: each Execute is held for its record
    missing = committed_hist - recorded_hist
    assert not missing, (f"pgbench: {sum(missing.values())} committed history rows have no "
                         f"STATEMENT record (e.g. {list(missing)[:5]});\npgbench said:\n"
                         f"{bench_out[-2000:]}")


# ---------------------------------------------------------------------------------------
# 3. concurrency: 50 sessions at once

CONC_SESSIONS = 50
CONC_ROUNDS = 5  # each round: 4 statements (read, write, refused, erroring)


def check_chain_linear(lines: list) -> int:
    """Export lines: seqs 1..N without gaps, each record naming its predecessor's hash."""
    recs = [o for o in lines if "record" in o]
    prev = "00" * 32
    for i, o in enumerate(recs, 1):
        assert o["seq"] == i and o["record"]["seq"] == i, f"gap or reorder at {i}: {o['seq']}"
        assert o["prev_hash"] == prev, f"record {i} does not link to record {i - 1}"
        prev = o["hash"]
    return len(recs)


@pytest.fixture
def conc_table(pg):
    admin_exec(pg, "drop table if exists audit_conc; "
                   "create table audit_conc (id int primary key, who text)")
    yield "audit_conc"
    admin_exec(pg, "drop table if exists audit_conc")


def test_fifty_concurrent_sessions_keep_one_linear_verifiable_chain(audit_gateways, pg,
                                                                    conc_table):
    g = audit_gateways("audit-conc", durability="strict")
    eps = [g.ep(f"svc-conc-{n:02d}", app=f"bwit-conc-{n:02d}") for n in range(CONC_SESSIONS)]
    conns = []
    for ep in eps:
        c = ep.connect()
        c.autocommit = True
        conns.append(c)
    barrier = threading.Barrier(CONC_SESSIONS)
    sent = Counter()
    errors = []
    verify_during = []

    def client(n: int):
        try:
            with conns[n].cursor() as cur:
                barrier.wait(30)
                for r in range(CONC_ROUNDS):
                    cur.execute("select id, name from customers where id = %s", (r % 5 + 1,))
                    assert len(cur.fetchall()) == 1
                    sent[n] += 1
                    cur.execute("insert into audit_conc values (%s, %s)", (n * 1000 + r, f"c{n}"))
                    sent[n] += 1
                    try:
                        cur.execute("delete from audit_conc")  # no-unbounded-writes
                        raise AssertionError("unbounded delete was not refused")
                    except psycopg2.Error as e:
                        assert e.pgcode == "42501", e
                    sent[n] += 1
                    try:
                        cur.execute("select 1 / (%s - %s)", (r, r))
                        raise AssertionError("division by zero succeeded")
                    except psycopg2.Error as e:
                        assert e.pgcode == "22012", e
                    sent[n] += 1
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"client {n}: {e!r}")

    def verifier():  # a reader walking the chain while 50 sessions write it
        while any(t.is_alive() for t in threads):
            verify_during.append(g.cli("audit", "verify"))

    threads = [threading.Thread(target=client, args=(n,), daemon=True)
               for n in range(CONC_SESSIONS)]
    for t in threads:
        t.start()
    vt = threading.Thread(target=verifier, daemon=True)
    vt.start()
    for t in threads:
        t.join(120)
    vt.join(60)
    for c in conns:
        c.close()
    assert not errors, "\n".join(errors[:10])
    assert sum(sent.values()) == CONC_SESSIONS * CONC_ROUNDS * 4
    n_rows = pg.admin_query("select count(*) from audit_conc", dbname="shop")[0][0]
    assert n_rows == CONC_SESSIONS * CONC_ROUNDS
    assert verify_during, "no verify ran during the load"
    for r in verify_during:
        assert r.returncode == 0 and "chain intact" in r.stdout, f"{r.stdout}{r.stderr}"

    wait_for(lambda: len([s for s in g.sessions() if s["sub"].startswith("svc-conc-")
                          and s.get("end_reason")]) == CONC_SESSIONS,
             15, "every session's end to be recorded")
    stop_cleanly(g)
    g.verify()
    lines = g.export_lines()
    check_chain_linear(lines)
    records = [o["record"] for o in lines if "record" in o]
    sessions = {s["session"]: s for s in g.sessions() if s["sub"].startswith("svc-conc-")}
    assert len(sessions) == CONC_SESSIONS
    per_session = Counter(r["session"] for r in by_type(records, "statement")
                          if r["session"] in sessions)
    assert sum(per_session.values()) == sum(sent.values()), per_session
    for sid, s in sessions.items():
        assert per_session[sid] == CONC_ROUNDS * 4, (s, per_session[sid])
    # each statement has exactly one RESULT, in the same session
    stmts = {r["seq"]: r for r in by_type(records, "statement") if r["session"] in sessions}
    results = Counter(r["data"]["stmt"] for r in by_type(records, "result")
                      if r["session"] in sessions)
    assert set(results) == set(stmts) and set(results.values()) == {1}


# ---------------------------------------------------------------------------------------
# 4. an export checked outside Bulwark


def docs_verifier(tmp_path: Path) -> Path:
    """The standard-library verifier of docs/audit.md ("Checking an export outside
    Bulwark"), exactly as documented."""
    text = DOCS_AUDIT.read_text()
    section = text[text.index("## Checking an export outside Bulwark"):]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "docs/audit.md has no Python verifier"
    p = tmp_path / "verify_export.py"
    p.write_text(m.group(1))
    return p


def run_docs_verifier(script: Path, lines: list) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script)], input="".join(lines),
                          capture_output=True, text=True, timeout=60)


def test_export_passes_the_documented_outside_verifier_and_edits_are_caught(
        audit_gateways, tmp_path, items_table):
    key = tmp_path / "audit-ed25519.pem"
    r = run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)])
    assert r.returncode == 0, r.stderr
    g = audit_gateways("audit-export", signing_key_file=str(key))
    conn = g.ep("svc-audit-export").connect()
    conn.autocommit = True
    with conn.cursor() as cur:
        for i in range(30):
            cur.execute("select %s::text as v, 'ünïcödé ✓ \"q\" \\ \t' as t", (f"row {i}",))
            cur.fetchall()
        assert sqlstate_of(lambda: cur.execute("delete from audit_items")) == "42501"
    conn.close()
    stop_cleanly(g)  # signs the head

    out = g.cli("audit", "verify")
    assert out.returncode == 0 and "chain intact" in out.stdout, out.stdout + out.stderr
    exp = g.cli("audit", "export", "--format", "jsonl")
    assert exp.returncode == 0, exp.stderr
    lines = exp.stdout.splitlines(keepends=True)
    n_records = sum('"record"' in ln and not ln.startswith('{"checkpoint"') for ln in lines)
    cps = [json.loads(ln) for ln in lines if ln.startswith('{"checkpoint"')]
    assert n_records > 60 and cps, exp.stdout[:2000]

    script = docs_verifier(tmp_path)
    ok = run_docs_verifier(script, lines)
    assert ok.returncode == 0, f"documented verifier rejected a clean export: {ok.stderr}"
    assert ok.stdout.strip() == f"ok: {n_records} records", ok.stdout

    # the last checkpoint's signature, with OpenSSL as documented
    pub = tmp_path / "audit.pub"
    r = g.cli("audit", "pubkey")
    assert r.returncode == 0 and "PUBLIC KEY" in r.stdout, r.stderr
    pub.write_text(r.stdout)
    cp = cps[-1]
    assert cp["sig"], cp
    assert cp["checkpoint"]["seq"] == n_records, "the shutdown signs the head"
    (tmp_path / "cp.bin").write_bytes(
        json.dumps(cp["checkpoint"], sort_keys=True, separators=(",", ":")).encode())
    (tmp_path / "sig.bin").write_bytes(base64.b64decode(cp["sig"]))
    r = run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pub), "-rawin",
             "-in", str(tmp_path / "cp.bin"), "-sigfile", str(tmp_path / "sig.bin")])
    assert r.returncode == 0 and "Signature Verified Successfully" in r.stdout, r.stdout + r.stderr
    edited = (tmp_path / "cp.bin").read_bytes().replace(b'"seq":', b'"seq":1')
    (tmp_path / "cp.bin").write_bytes(edited)
    r = run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pub), "-rawin",
             "-in", str(tmp_path / "cp.bin"), "-sigfile", str(tmp_path / "sig.bin")])
    assert r.returncode != 0, "an edited checkpoint still verified"
    r = g.cli("audit", "verify", "--key", str(pub))
    assert r.returncode == 0 and "chain intact" in r.stdout, r.stdout + r.stderr

    # edits of the export are caught by the same script
    rec_idx = [i for i, ln in enumerate(lines) if not ln.startswith('{"checkpoint"')]
    stmt_idx = [i for i in rec_idx if '"type":"statement"' in lines[i]]
    k = stmt_idx[len(stmt_idx) // 2]
    seq_k = json.loads(lines[k])["seq"]

    changed = list(lines)
    changed[k] = changed[k].replace("row ", "rew ", 1) if "row " in changed[k] else \
        changed[k].replace('"decision":"deny"', '"decision":"allow"')
    assert changed[k] != lines[k]
    bad = run_docs_verifier(script, changed)
    assert bad.returncode != 0 and f"record {seq_k} was changed" in bad.stderr, bad.stderr

    removed = lines[:k] + lines[k + 1:]
    bad = run_docs_verifier(script, removed)
    assert bad.returncode != 0 and f"record {seq_k + 1} does not link" in bad.stderr, bad.stderr

    swapped = list(lines)
    swapped[k], swapped[k + 1] = swapped[k + 1], swapped[k]
    bad = run_docs_verifier(script, swapped)
    assert bad.returncode != 0, "swapped records passed the documented verifier"

    # a record re-hashed after an edit still breaks the link to its successor
    o = json.loads(lines[k])
    o["record"]["data"]["sql"] = "select 'nothing to see'"
    canon = json.dumps(o["record"], ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    o["hash"] = hashlib.sha256(bytes.fromhex(o["prev_hash"]) + canon.encode()).hexdigest()
    forged = list(lines)
    forged[k] = json.dumps(o) + "\n"
    bad = run_docs_verifier(script, forged)
    assert bad.returncode != 0 and f"record {seq_k + 1} does not link" in bad.stderr, bad.stderr


# ---------------------------------------------------------------------------------------
# 4b. export --follow --cursor: restarted mid-stream, every record exactly once

def start_follower(g: AuditGateway, out: Path, cursor: Path) -> subprocess.Popen:
    with open(out, "ab") as f:  # appended to, as docs/audit.md says (>>)
        return subprocess.Popen(
            [str(g.binary), "audit", "export", "-c", str(g.config_path), "--follow",
             "--cursor", str(cursor)], stdout=f, stderr=subprocess.PIPE)


def test_export_follow_with_a_cursor_resumes_without_gaps_or_duplicates(audit_gateways,
                                                                        tmp_path):
    """issue 10 part 3: `audit export --follow --cursor FILE` streams new records as JSON
    lines; killed (SIGKILL, at arbitrary moments while records keep coming) or stopped
    (SIGTERM) and started again with the same cursor and output file, it leaves every
    record in the file exactly once, in order, and the stream passes the outside verifier
    of docs/audit.md."""
    g = audit_gateways("audit-follow")
    out, cursor = tmp_path / "follow.jsonl", tmp_path / "follow.cursor"
    stop = threading.Event()
    errors, sent = [], [0]

    def load():
        try:
            conn = g.ep("svc-follow").connect()
            conn.autocommit = True
            with conn.cursor() as cur:
                while not stop.is_set():
                    cur.execute("select %s::int as n", (sent[0],))
                    sent[0] += 1
            conn.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    t = threading.Thread(target=load, daemon=True)
    t.start()
    stderr = []
    try:
        for i in range(8):
            mark = cursor.stat().st_mtime_ns if cursor.exists() else 0
            p = start_follower(g, out, cursor)
            time.sleep(0.25 + 0.17 * (i % 4))
            if i % 4 == 3:  # SIGTERM once it runs (before, it just dies, like SIGKILL)
                wait_for(lambda: cursor.exists() and cursor.stat().st_mtime_ns != mark, 20,
                         "the follower to update its cursor")
                p.send_signal(signal.SIGTERM)
                assert p.wait(10) == 0
            else:
                p.kill()
                p.wait(10)
            stderr.append(p.stderr.read().decode())
            p.stderr.close()
    finally:
        stop.set()
        t.join(30)
    assert not errors, errors
    assert sent[0] > 100, sent
    stop_cleanly(g)  # the last records: session end, close note, signed head
    p = start_follower(g, out, cursor)
    want = g.export_lines()
    last = max(o["seq"] for o in want if "seq" in o)
    wait_for(lambda: cursor.exists() and json.loads(cursor.read_text())["next"] > last, 20,
             "the follower to catch up")
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 0
    stderr.append(p.stderr.read().decode())
    p.stderr.close()

    text = out.read_text()
    assert text.endswith("\n"), text[-200:]
    got = [json.loads(ln) for ln in text.splitlines()]
    seqs = [o["seq"] for o in got if "record" in o]
    assert seqs == list(range(1, last + 1)), (
        f"records missing or repeated: {len(seqs)} lines for {last} records; "
        f"repeated {sorted(k for k, n in Counter(seqs).items() if n > 1)[:10]}, "
        f"missing {sorted(set(range(1, last + 1)) - set(seqs))[:10]}\n" + "".join(stderr))
    assert [o for o in got if "record" in o] == [o for o in want if "record" in o]
    ok = run_docs_verifier(docs_verifier(tmp_path), [ln + "\n" for ln in text.splitlines()])
    assert ok.returncode == 0, ok.stderr
    assert f"ok: {last} records" in ok.stdout, ok.stdout


def test_export_cursor_cuts_uncounted_output_and_refuses_a_shorter_one(audit_gateways, tmp_path):
    """A cursor counts the bytes of its output file: what a killed run wrote after its
    last cursor update is cut off before resuming (no duplicates, no torn line), and
    resuming into a file that was truncated or replaced (`>` instead of `>>`) is refused."""
    g = audit_gateways("audit-cursor-short")
    conn = g.ep("svc-cursor-short").connect()
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("select 1")
    conn.close()
    out, cursor = tmp_path / "out.jsonl", tmp_path / "c.cursor"
    cmd = [str(g.binary), "audit", "export", "-c", str(g.config_path), "--cursor", str(cursor)]
    with open(out, "ab") as f:
        assert subprocess.run(cmd, stdout=f, timeout=30).returncode == 0
    n = len(out.read_text().splitlines())
    assert n > 3 and json.loads(cursor.read_text())["offset"] == out.stat().st_size
    with open(out, "ab") as f:  # nothing new: nothing appended
        assert subprocess.run(cmd, stdout=f, timeout=30).returncode == 0
    assert len(out.read_text().splitlines()) == n
    good = out.read_bytes()
    with open(out, "ab") as f:  # what a run killed before its cursor update leaves
        f.write(good.splitlines(keepends=True)[-1] + b'{"hash":"0123')
    with open(out, "ab") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.PIPE, timeout=30)
    assert r.returncode == 0 and b"dropped" in r.stderr, r.stderr
    assert out.read_bytes() == good
    with open(out, "wb") as f:  # truncated, as `>` does
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.PIPE, timeout=30)
    assert r.returncode == 1 and b"shorter" in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------
# 5. map full

FULL_MAP = "1MiB"
RETENTION_AGE_S = 60  # the smallest retention.max_age the config accepts ("1m")


def fill_until(cur, stop, limit=20000):
    """Run small statements until stop(sqlstate_or_None, i) is true; returns the count."""
    for i in range(limit):
        state = sqlstate_of(lambda: cur.execute("select %s::int as i, 'fill' as what", (i,)))
        if stop(state, i):
            return i + 1
    raise AssertionError(f"the {FULL_MAP} store did not fill after {limit} statements")


def test_map_full_with_deny_refuses_58030_keeps_serving_and_recovers_after_retention(
        audit_gateways, items_table):
    """SPEC 3/8 on_failure deny: ERROR 58030 while the store cannot write; issue 6: the
    gateway keeps serving other work and recovers by itself once retention frees space
    (docs/audit.md "Failure": on a full map with retention set, the writer retires old
    records, then retries in smaller transactions). The records are younger than
    retention.max_age when the map fills, so nothing can go before they are a minute old."""
    g = audit_gateways("audit-full-deny", map_size=FULL_MAP, on_failure="deny",
                       retention={"max_age": f"{RETENTION_AGE_S // 60}m"})
    other = audit_gateways("audit-full-other")  # another gateway, with a healthy store
    other_conn = other.ep("svc-full-other").connect()
    other_conn.autocommit = True
    conn = g.ep("svc-full-deny").connect()
    conn.autocommit = True
    try:
        check_full_deny_and_recovery(g, conn, other_conn)
    finally:
        conn.close()
        other_conn.close()


def check_full_deny_and_recovery(g, conn, other_conn):
    cur = conn.cursor()
    log0 = g.log_size()
    t0 = time.monotonic()

    def refused(state, i):
        assert state in (None, "58030"), f"statement {i} failed with {state}"
        return state == "58030"
    n = fill_until(cur, refused)
    t_full = time.monotonic()
    assert n > 200, f"full after only {n} statements"

    # while full: statements are refused with 58030, everything else goes on
    for _ in range(3):
        with pytest.raises(psycopg2.Error) as ei:
            cur.execute("select 1")
        assert ei.value.pgcode == "58030", ei.value
        assert "audit" in str(ei.value), str(ei.value)
    assert sqlstate_of(lambda: cur.execute("delete from audit_items")) == "42501"
    # logins are still answered: a session that cannot be recorded either is refused at
    # login with 58030 or gets 58030 for its statements
    try:
        c2 = raw_login(g.ep("svc-full-deny-2"))
    except harness.PgError as e:
        assert e.sqlstate == "58030", e.fields
    else:
        try:
            with pytest.raises(harness.PgError) as ei:
                c2.query("select 2")
            assert ei.value.sqlstate == "58030", ei.value.fields
        finally:
            c2.close()
    bad = g.ep("svc-full-deny").with_(password=g.token(secret_file=g.other_secret_path))
    with pytest.raises(harness.PgError) as ei:
        raw_login(bad).close()
    assert ei.value.sqlstate == "28P01", ei.value.fields
    with other_conn.cursor() as oc:
        oc.execute("select count(*) from customers")
        assert oc.fetchone()[0] == len(harness.CUSTOMERS)
    assert g.alive()
    log = g.log_since(log0)
    assert re.search(r"level=error event=audit_store_failing .*(map_size|MAP_FULL)", log), \
        log[-3000:]
    refused_seen = 3 + 1  # the selects above and c2's

    # recovery by itself, once the records are older than retention.max_age
    def recovered():
        return sqlstate_of(lambda: cur.execute("select 42")) is None
    try:
        wait_for(recovered, RETENTION_AGE_S + 45 - (time.monotonic() - t0),
                 "the store to recover after retention", interval=1)
    except AssertionError as e:
        failures = [ln for ln in g.log_since(log0).splitlines()
                    if "audit_retire" in ln or "audit_store_" in ln]
        raise AssertionError(
            f"{e}: full after {n} statements ({t_full - t0:.1f}s); no recovery "
            f"{time.monotonic() - t0:.0f}s after the first record although retention."
            f"max_age is {RETENTION_AGE_S}s. Audit lines of the log (last 8):\n"
            + "\n".join(failures[-8:])) from None
    assert cur.fetchone()[0] == 42
    with conn.cursor() as c:  # and stays recovered
        for i in range(20):
            c.execute("select %s::int", (i,))
            assert c.fetchone()[0] == i
    fresh = g.ep("svc-full-deny-3").connect()
    try:
        with fresh.cursor() as c:
            c.execute("select 'serving'")
            assert c.fetchone()[0] == "serving"
    finally:
        fresh.close()
    log = g.log_since(log0)
    assert "event=audit_store_recovered" in log and "event=audit_retired" in log, log[-3000:]

    out = g.verify()
    assert re.search(r"records 1 to \d+ were retired", out), out
    lines = g.export_lines()
    records = [o["record"] for o in lines if "record" in o]
    notes = [r["data"] for r in by_type(records, "note")]
    rec = [d for d in notes if d.get("event") == "audit_recovered"]
    assert rec and max(d["refused"] for d in rec) >= refused_seen, notes
    assert any(d.get("event") == "retired" for d in notes), notes
    assert lines[0].get("checkpoint"), "an export after retirement starts at its anchor"
    script = docs_verifier(g.workdir)
    ok = run_docs_verifier(script, [json.dumps(o, ensure_ascii=False, sort_keys=True,
                                               separators=(",", ":")) + "\n" for o in lines])
    assert ok.returncode == 0, ok.stderr


def test_size_retention_keeps_a_small_map_from_filling(audit_gateways):
    """retention.max_size well under map_size: far more statements than the map holds run
    without one refusal, old records are retired down to a checkpoint, and the rest of the
    chain verifies from that anchor."""
    g = audit_gateways("audit-full-size", map_size=FULL_MAP, on_failure="deny",
                       retention={"max_size": "640KiB"})
    conn = g.ep("svc-full-size").connect()
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for i in range(6000):  # about 4 times what fills the map without retention
                cur.execute("select %s::int as i, 'fill' as what", (i,))
    finally:
        conn.close()
    log = g.log_text()
    assert "audit_store_failing" not in log, log[-3000:]
    assert "event=audit_retired" in log, log[-3000:]
    out = g.verify()
    assert re.search(r"records 1 to \d+ were retired", out), out
    lines = g.export_lines()
    assert lines[0].get("checkpoint")
    ok = run_docs_verifier(docs_verifier(g.workdir),
                           [json.dumps(o, ensure_ascii=False, sort_keys=True,
                                       separators=(",", ":")) + "\n" for o in lines])
    assert ok.returncode == 0, ok.stderr


def test_map_full_with_allow_forwards_and_logs_loudly(audit_gateways, items_table, pg):
    g = audit_gateways("audit-full-allow", map_size=FULL_MAP, on_failure="allow")
    conn = g.ep("svc-full-allow").connect()
    conn.autocommit = True
    cur = conn.cursor()
    log0 = g.log_size()

    def full(state, i):
        assert state is None, f"statement {i} failed with {state} under on_failure allow"
        return i % 25 == 0 and "event=audit_store_failing" in g.log_since(log0)
    n = fill_until(cur, full)
    assert n > 200, f"full after only {n} statements"
    failing_at = g.log_size()
    for i in range(10):  # forwarded while the store cannot record them
        cur.execute("select %s::int * 2", (i,))
        assert cur.fetchone()[0] == 2 * i
    cur.execute("insert into audit_items (id, note) values (9001, 'unrecorded write')")
    assert cur.rowcount == 1
    assert pg.admin_query("select note from audit_items where id = 9001",
                          dbname="shop") == [("unrecorded write",)]
    admin_exec(pg, "delete from audit_items where id = 9001")
    assert sqlstate_of(lambda: cur.execute("delete from audit_items")) == "42501"
    conn.close()
    assert g.alive()
    loud = [ln for ln in g.log_since(failing_at).splitlines()
            if "level=error" in ln and "on_failure=allow" in ln]
    assert len(loud) >= 11, "each unrecorded statement is logged as an error:\n" + \
        g.log_since(failing_at)[-3000:]
    stop_cleanly(g)
    g.verify()  # what was written is intact


@pytest.fixture
def fill_table(pg):
    admin_exec(pg, "drop table if exists audit_fill; create table audit_fill (id int primary key)")
    yield "audit_fill"
    admin_exec(pg, "drop table if exists audit_fill")


@pytest.mark.parametrize("on_failure", ["deny", "allow"])
def test_map_full_answers_every_held_write(audit_gateways, fill_table, pg, on_failure):
    """strict-writes holds each write until its record is durable. When the map fills,
    the writes whose records were queued but cannot be written must be answered too:
    refused with 58030 and not run (deny: what cannot be recorded does not run), or
    forwarded (allow) — not held until a recovery that, with no retention, never comes."""
    g = audit_gateways(f"audit-full-w-{on_failure}", map_size=FULL_MAP, on_failure=on_failure,
                       durability="strict-writes")
    c = raw_login(g.ep(f"svc-full-w-{on_failure}"), timeout=15)
    log0 = g.log_size()
    acked, refused = [], []

    def insert(i):
        try:
            _, tags = c.query(f"insert into audit_fill values ({i})", timeout=15)
        except harness.PgError as e:
            assert on_failure == "deny" and e.sqlstate == "58030", e.fields
            refused.append(i)
            return
        except TimeoutError:
            pytest.fail(f"insert {i} got no answer in 15 s: held for a record that cannot be "
                        f"written (on_failure {on_failure}).\n"
                        + "\n".join(g.log_since(log0).splitlines()[-6:]))
        assert tags == ["INSERT 0 1"], tags
        acked.append(i)

    try:
        for i in range(20000):
            insert(i)
            if refused or (i > 200 and i % 25 == 0
                           and "event=audit_store_failing" in g.log_since(log0)):
                break
        else:
            pytest.fail("the store did not fill")
        for j in range(i + 1, i + 21):  # and after
            insert(j)
    finally:
        c.close()
    assert len(acked) > 200, "full too early"
    in_pg = {r[0] for r in pg.admin_query("select id from audit_fill", dbname="shop")}
    assert set(acked) <= in_pg
    if on_failure == "deny":
        assert len(refused) >= 20, refused
        ran = sorted(set(refused) & in_pg)
        assert not ran, f"inserts refused with 58030 ran all the same: {ran[:10]}"
    else:
        assert not refused and len(acked) == i + 21
