"""LangChain agents end to end through Bulwark (issue 9 part 2).

Two clients, each run against a fresh copy of the demo's shop (examples/demo/schema.sql)
behind a gateway whose role is the demo's `analyst` (policies/demo.json: its rules, masks
and review rule; only the identities, the upstream password and the review timeout are the
test's):

- examples/langchain-js/agent.js: a LangChain.js SQL agent (createSqlAgent + SqlToolkit of
  @langchain/classic over TypeORM) driven by a scripted chat model. It lists the tables,
  reads the customers table (info-sql and query-sql), tries DROP TABLE and an unbounded
  DELETE, and then a DELETE ... WHERE id = 4 that the policy holds for approval.
- examples/langchain-python/sqldatabase_calls.py: the calls LangChain Python's SQLDatabase
  makes (SQLAlchemy reflection, sample rows, run/run_no_throw) with the same statements.

While a client runs, the test answers the held statement as a human would, from another
process: `bulwark approvals --json`, then `bulwark approve ID --as svc-dba-1` (or `bulwark
deny ID --reason ...`). Then it asserts what the agent saw (the tables; masked values, never
the real ones; the denials with 42501 and the rule; the held statement's outcome) and that
`bulwark replay` of the agent's session shows every statement of the conversation.

Every run is bounded by timeouts: a held statement that nobody answers fails the run, it
never hangs it.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import threading
import time
from pathlib import Path

import pytest

import harness
from harness import PG_BIN, assert_no_leaks, run, wait_for
from test_policy_e2e import create_database, drop_database, start_policy_gateway, \
    stop_policy_gateway

pytestmark = pytest.mark.gateway_only  # policy, masks, approvals and replay are the gateway's

EXAMPLES = harness.REPO_ROOT / "examples"
JS_DIR = EXAMPLES / "langchain-js"
PY_SCRIPT = EXAMPLES / "langchain-python" / "sqldatabase_calls.py"
SCHEMA = EXAMPLES / "demo" / "schema.sql"
DEMO_POLICY = harness.REPO_ROOT / "policies" / "demo.json"

DB = "agent_e2e"
UPSTREAM = "shop_agent"       # the analyst's upstream login (schema.sql)
UPSTREAM_PW = "pw-" + secrets.token_hex(12)
APPROVER = "svc-dba-1"        # a subject of the demo's approver role "dba"
REVIEW_TIMEOUT_S = 60         # a hold nobody answers ends in 57014 after this
RUN_TIMEOUT_S = 150           # one client's whole run, hold included
HELD_SQL = "DELETE FROM support_tickets WHERE id = 4"
DENY_REASON = "ticket 4 is evidence, keep it"


# The first three customers of schema.sql, and what the demo's masks make of them
# (docs/masking.md: partial keeps N characters and stars the rest; email keeps the first
# character of the local part and the domain; redact is ****).
REAL = [
    dict(name="Alice Archer", email="alice.archer@example.com", card="4111111111111111",
         ssn="123-45-6789"),
    dict(name="Bob Baker", email="bob.baker@example.org", card="5500005555555559",
         ssn="987-65-4321"),
    dict(name="Carol Chen", email="carol.chen@example.net", card="340000000000009",
         ssn="222-33-4444"),
]
REAL_VALUES = [v for c in REAL for v in c.values()]


def masked(c: dict) -> dict:
    return dict(name=c["name"][0] + "*" * (len(c["name"]) - 1),
                email=c["email"][0] + "***@" + c["email"].split("@")[1],
                card="*" * (len(c["card"]) - 4) + c["card"][-4:], ssn="****")


# ---------------------------------------------------------------------------------------
# the database and the gateway


def demo_policies(password_file: str) -> list:
    """policies/demo.json with the test's identities, upstream password and timeout."""
    roles = json.loads(DEMO_POLICY.read_text())
    by_name = {r["role"]: r for r in roles}
    analyst, dba = by_name["analyst"], by_name["dba"]
    analyst["identities"] = [{"iss": harness.ISSUER, "sub": "svc-agent-*"}]
    analyst["upstream"]["shop"]["password_file"] = password_file
    for rule in analyst["rules"]:
        if rule["action"] == "review":
            rule["review"]["timeout"] = f"{REVIEW_TIMEOUT_S}s"
    dba["identities"] = [{"iss": harness.ISSUER, "sub": "svc-dba-*"}]
    return roles


def load_shop(pg):
    """A fresh DB with the demo schema; the upstream login gets LOGIN and a password."""
    create_database(pg, DB)
    r = subprocess.run([str(PG_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                        "-h", str(pg.datadir), "-p", str(pg.port), "-U", "postgres",
                        "-d", DB, "-f", str(SCHEMA)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    pg.admin_query(f"alter role {UPSTREAM} login password %s", (UPSTREAM_PW,), DB)


def tickets(pg) -> list:
    return [r[0] for r in pg.admin_query("select id from support_tickets order by id",
                                         dbname=DB)]


@pytest.fixture(scope="module")
def agw(request, bulwark_bin, pg, certdir, secret_registry, tmp_path_factory):
    g = start_policy_gateway(
        "gw-agent-e2e", bulwark_bin, pg, certdir, secret_registry, tmp_path_factory,
        targets={"shop": {"host": "127.0.0.1", "port": pg.port, "dbname": DB,
                          "sslmode": "disable"}},
        policies=demo_policies(f"../secrets/{UPSTREAM}"),
        passwords={UPSTREAM: UPSTREAM_PW})
    yield g
    stop_policy_gateway(g)
    drop_database(pg, DB)


def cli(g, *args, timeout=60) -> subprocess.CompletedProcess:
    """`bulwark WORDS -c CONFIG OPTIONS` (the -c goes after the subcommand word)."""
    return run([str(g.binary), args[0], "-c", str(g.config_path), *args[1:]], timeout=timeout)


# ---------------------------------------------------------------------------------------
# a run: the client in the background, a human answering the hold from another process


def pending_requests(listing) -> list:
    """Requests of `bulwark approvals --json` as (id, text of the request)."""
    if isinstance(listing, dict):
        listing = next((v for v in listing.values() if isinstance(v, list)), [])
    out = []
    for req in listing if isinstance(listing, list) else []:
        if isinstance(req, dict):
            rid = req.get("id", req.get("request_id"))
            if rid is not None:
                out.append((str(rid), json.dumps(req)))
    return out


class Run:
    """One client run: its process, what it reported, and what the approver did."""

    def __init__(self, g, sub: str, argv: list, cwd: Path, env_extra: dict, answer: str):
        self.g, self.sub, self.answer = g, sub, answer
        ep = g.endpoint(role="analyst", sub=sub, application_name=f"bwit-{sub}")
        env = ep.env()
        scheme = "postgresql+psycopg2" if argv[0].endswith("python3") else "postgresql"
        env.update(BULWARK_URL=ep.uri(scheme), **env_extra)
        self.listings: list = []       # every `approvals --json` output that parsed
        self.request_id = None
        self.answered = None           # the approve/deny CompletedProcess
        self.proc = subprocess.Popen(argv, cwd=str(cwd), env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.stdout = self.stderr = ""
        reader = threading.Thread(target=self._read, daemon=True)
        reader.start()
        self._approve_loop()
        reader.join(RUN_TIMEOUT_S)
        self.result = self._result()

    def _read(self):
        try:
            self.stdout, self.stderr = self.proc.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.stdout, self.stderr = self.proc.communicate()
            self.stderr += f"\n[killed after {RUN_TIMEOUT_S}s]"

    def _approve_loop(self):
        """Until the client exits: look for its held statement and answer it once."""
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while self.proc.poll() is None and time.monotonic() < deadline:
            if self.request_id is None:
                r = cli(self.g, "approvals", "--json")
                if r.returncode == 0:
                    try:
                        listing = json.loads(r.stdout)
                    except ValueError:
                        listing = None
                    self.listings.append(listing)
                    for rid, req in pending_requests(listing):
                        if HELD_SQL in req:
                            self.request_id = rid
                            if self.answer == "approve":
                                self.answered = cli(self.g, "approve", rid, "--as", APPROVER)
                            else:
                                self.answered = cli(self.g, "deny", rid, "--reason",
                                                    DENY_REASON, "--as", APPROVER)
                            break
            time.sleep(0.2)

    def _result(self) -> dict:
        for line in reversed(self.stdout.splitlines()):
            if line.startswith("RESULT_JSON "):
                res = json.loads(line[len("RESULT_JSON "):])
                assert "fatal" not in res, (res, self.stderr[-3000:])
                return res
        raise AssertionError(f"{self.sub}: exited {self.proc.returncode} without a result:\n"
                             f"stdout: {self.stdout[-3000:]}\nstderr: {self.stderr[-3000:]}")

    def session_ids(self) -> list:
        def ended():
            r = cli(self.g, "sessions", "--sub", self.sub, "--json")
            assert r.returncode == 0, r.stderr
            got = json.loads(r.stdout)
            return got if got and all(s.get("end_reason") for s in got) else None
        return [s["session"] for s in wait_for(ended, 15, f"the sessions of {self.sub} to end")]

    def replay(self) -> str:
        """The text transcripts of every session of this run."""
        out = []
        for sid in self.session_ids():
            r = cli(self.g, "replay", sid)
            assert r.returncode == 0, r.stderr
            out.append(r.stdout)
        return "\n".join(out)

    def replay_records(self) -> list:
        recs = []
        for sid in self.session_ids():
            r = cli(self.g, "replay", sid, "--json")
            assert r.returncode == 0, r.stderr
            recs += json.loads(r.stdout)["records"]
        return recs


def names_request(run: Run) -> bool:
    """A NOTICE the client got while held names the request id (SPEC section 6)."""
    rid = re.compile(r"(?<![\w-])" + re.escape(run.request_id) + r"(?![\w-])")
    return any(rid.search(n) for n in run.result["notices"])


def js_run(g, sub: str, answer: str) -> Run:
    if not (JS_DIR / "node_modules").is_dir():
        raise AssertionError("examples/langchain-js/node_modules is missing: run "
                             "scripts/install-deps.sh")
    return Run(g, sub, ["node", "agent.js"], JS_DIR, {"AGENT_RESULT_JSON": "1"}, answer)


def py_run(g, sub: str, answer: str) -> Run:
    return Run(g, sub, ["/usr/bin/python3", str(PY_SCRIPT), "--json"], PY_SCRIPT.parent, {},
               answer)


# Each run starts from a fresh shop (an approved DELETE removes ticket 4). Module fixtures
# run in the order the tests first use them; each loads its own copy first.
def fresh_run(agw, pg, run, sub: str, answer: str) -> Run:
    load_shop(pg)
    r = run(agw, sub, answer)
    r.tickets_after = tickets(pg)
    return r


@pytest.fixture(scope="module")
def js_approved(agw, pg):
    return fresh_run(agw, pg, js_run, "svc-agent-js", "approve")


@pytest.fixture(scope="module")
def js_denied(agw, pg):
    return fresh_run(agw, pg, js_run, "svc-agent-js-deny", "deny")


@pytest.fixture(scope="module")
def py_approved(agw, pg):
    return fresh_run(agw, pg, py_run, "svc-agent-py", "approve")


@pytest.fixture(scope="module")
def py_denied(agw, pg):
    return fresh_run(agw, pg, py_run, "svc-agent-py-deny", "deny")


# ---------------------------------------------------------------------------------------
# what the JS agent saw


def js_obs(run: Run, tool: str, input_start: str = "") -> str:
    for s in run.result["steps"]:
        if s["tool"] == tool and s["input"].startswith(input_start):
            return s["observation"]
    raise AssertionError(f"the agent made no {tool} {input_start!r} step: {run.result['steps']}")


def js_sql_error(run: Run, sql: str) -> dict:
    for q in run.result["sql"]:
        if q["query"].strip() == sql:
            return q.get("error") or {}
    raise AssertionError(f"the driver never sent {sql!r}: {run.result['sql']}")


def test_js_agent_follows_its_script_to_the_final_answer(js_approved):
    res = js_approved.result
    assert [s["tool"] for s in res["steps"]] == ["list-tables-sql", "info-sql"] + ["query-sql"] * 4
    assert res["modelTurns"] == 7 and res["output"].startswith("I listed the tables")


def test_js_agent_lists_the_tables_it_may_see(js_approved):
    tables = sorted(t.strip() for t in js_obs(js_approved, "list-tables-sql").split(","))
    # internal.api_keys is in a schema the upstream login has no USAGE on
    assert tables == ["customers", "order_items", "orders", "products", "support_tickets"]


def test_js_agent_reads_customers_schema_and_rows(js_approved):
    info = js_obs(js_approved, "info-sql", "customers")
    assert 'CREATE TABLE "public"."customers"' in info
    assert 'SELECT * FROM "public"."customers" LIMIT 3;' in info
    rows = json.loads(js_obs(js_approved, "query-sql", "SELECT"))
    assert [r["id"] for r in rows] == [1, 2, 3]


def test_js_agent_sees_masked_customers_never_the_real_values(js_approved):
    info = js_obs(js_approved, "info-sql", "customers")
    rows = json.loads(js_obs(js_approved, "query-sql", "SELECT"))
    seen = info + json.dumps(rows) + json.dumps(js_approved.result["steps"])
    assert_no_leaks(seen, REAL_VALUES, "the agent")
    assert [{k: r[k] for k in ("name", "email", "card_number", "ssn")} for r in rows] == \
        [{"name": m["name"], "email": m["email"], "card_number": m["card"], "ssn": m["ssn"]}
         for m in map(masked, REAL)]
    for m in map(masked, REAL):  # the sample rows of info-sql are masked alike
        assert m["email"] in info and m["card"] in info


@pytest.mark.parametrize("sql,rule", [("DROP TABLE support_tickets", "no-ddl-dcl"),
                                      ("DELETE FROM support_tickets", "no-unbounded-writes")])
def test_js_agent_is_refused_destructive_statements_naming_the_rule(js_approved, sql, rule):
    obs = js_obs(js_approved, "query-sql", sql)
    assert f'denied by rule "{rule}"' in obs and "role analyst" in obs, obs
    assert js_sql_error(js_approved, sql).get("code") == "42501"


def test_js_refused_statements_changed_nothing(js_approved, pg):
    assert set(js_approved.tickets_after) >= {1, 2, 3}, "an unbounded DELETE got through"


def test_js_held_delete_waits_for_approval_then_runs(js_approved):
    r = js_approved
    assert r.request_id is not None, f"no pending request for {HELD_SQL!r}: {r.listings}"
    assert r.answered.returncode == 0, r.answered.stderr
    assert names_request(r), f"no NOTICE named request {r.request_id}: {r.result['notices']}"
    # TypeORM answers a DELETE with [rows, rowCount]: one ticket deleted
    assert js_obs(r, "query-sql", HELD_SQL) == "[[],1]"
    assert js_sql_error(r, HELD_SQL) == {}
    assert r.tickets_after == [1, 2, 3], "ticket 4 (and only it) is gone once approved"


def test_js_held_delete_denied_reaches_the_agent_with_the_reason(js_denied):
    r = js_denied
    assert r.request_id is not None, f"no pending request for {HELD_SQL!r}: {r.listings}"
    assert r.answered.returncode == 0, r.answered.stderr
    obs = js_obs(r, "query-sql", HELD_SQL)
    assert DENY_REASON in obs, obs
    assert js_sql_error(r, HELD_SQL).get("code") == "42501"
    assert r.tickets_after == [1, 2, 3, 4]


def normalize(sql: str) -> str:
    return re.sub(r"\s+", " ", sql).strip()


def test_js_replay_shows_the_whole_conversation(js_approved):
    transcript = normalize(js_approved.replay())
    sent = [normalize(q["query"]) for q in js_approved.result["sql"]]
    assert sent, "the driver logged no statements"
    for step in js_approved.result["steps"]:
        if step["tool"] == "query-sql":
            assert normalize(step["input"]) in sent
    for sql in sent:
        assert sql in transcript, f"replay does not show {sql!r}"
    for rule in ("no-ddl-dcl", "no-unbounded-writes", "support-fixes"):
        assert rule in transcript, f"replay does not name rule {rule}"


def test_js_replay_records_hold_the_decisions(js_approved):
    decided = {normalize(r["data"]["sql"]): r["data"] for r in js_approved.replay_records()
               if r["type"] == "statement" and "sql" in r.get("data", {})}
    assert decided["DROP TABLE support_tickets"]["decision"] == "deny"
    assert decided["DELETE FROM support_tickets"]["decision"] == "deny"
    assert decided[HELD_SQL]["decision"] == "review"
    assert decided[
        "SELECT id, name, email, card_number, ssn FROM customers ORDER BY id LIMIT 3"
    ]["decision"] == "allow"


# ---------------------------------------------------------------------------------------
# what the Python SQLDatabase calls saw


def py_step(run: Run, call_start: str) -> dict:
    for s in run.result["steps"]:
        if s["call"].startswith(call_start):
            return s
    raise AssertionError(f"no step {call_start!r}: {run.result['steps']}")


def test_py_sqldatabase_lists_the_tables(py_approved):
    s = py_step(py_approved, "get_usable_table_names")
    assert s["error"] is None, s
    assert s["result"] == ["customers", "order_items", "orders", "products", "support_tickets"]


def test_py_sqldatabase_table_info_has_create_table_and_sample_rows(py_approved):
    s = py_step(py_approved, "get_table_info")
    assert s["error"] is None, s
    info = s["result"]
    assert "CREATE TABLE customers" in info and "3 rows from customers table:" in info
    assert len(info.split("*/")[0].split("table:\n", 1)[1].strip().splitlines()) == 4, info
    assert any("LIMIT 3" in q and "FROM customers" in q for q in py_approved.result["sql"])


def test_py_sqldatabase_sees_masked_customers_never_the_real_values(py_approved):
    seen = json.dumps(py_approved.result["steps"])
    assert_no_leaks(seen, REAL_VALUES, "SQLDatabase")
    run_result = py_step(py_approved, "run('SELECT")["result"]
    for i, m in enumerate(map(masked, REAL), 1):
        assert str((i, m["name"], m["email"], m["card"], m["ssn"])) in run_result, run_result


@pytest.mark.parametrize("sql,rule", [("DROP TABLE support_tickets", "no-ddl-dcl"),
                                      ("DELETE FROM support_tickets", "no-unbounded-writes")])
def test_py_sqldatabase_is_refused_destructive_statements(py_approved, sql, rule):
    s = py_step(py_approved, f"run_no_throw({sql!r})")
    assert s["result"].startswith("Error: (psycopg2.errors.InsufficientPrivilege)"), s
    assert f'denied by rule "{rule}"' in s["result"], s


def test_py_held_delete_waits_for_approval_then_runs(py_approved):
    r = py_approved
    assert r.request_id is not None, f"no pending request for {HELD_SQL!r}: {r.listings}"
    assert r.answered.returncode == 0, r.answered.stderr
    assert names_request(r), f"no NOTICE named request {r.request_id}: {r.result['notices']}"
    assert py_step(r, f"run_no_throw({HELD_SQL!r})")["result"] == ""
    assert r.tickets_after == [1, 2, 3]


def test_py_held_delete_denied_returns_the_reason(py_denied):
    r = py_denied
    assert r.request_id is not None, f"no pending request for {HELD_SQL!r}: {r.listings}"
    s = py_step(r, f"run_no_throw({HELD_SQL!r})")
    assert "InsufficientPrivilege" in s["result"] and DENY_REASON in s["result"], s
    assert r.tickets_after == [1, 2, 3, 4]


def test_py_replay_shows_every_statement_sent(py_approved):
    transcript = normalize(py_approved.replay())
    for sql in py_approved.result["sql"]:
        assert normalize(sql) in transcript, f"replay does not show {sql!r}"
    for sql in ("DROP TABLE support_tickets", HELD_SQL):
        assert sql in transcript
