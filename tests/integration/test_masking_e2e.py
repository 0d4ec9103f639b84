"""Masking end to end (issue 5, SPEC 5.3).

The mask corpus tests/fixtures/mask/masking.tsv (role "agent": tests/fixtures/mask/
agent-masks.json over schema.sql + schema-extra.sql) runs through the gateway against a real
PostgreSQL:

- psycopg2 (simple protocol, text results), node-pg with binary results (extended protocol),
  and COPY ... TO STDOUT of each statement (psycopg2 copy_expert, text and CSV): none of the
  listed values may appear in any byte the client receives (rows, errors, notices), denied
  statements must be refused by Bulwark, and what comes back must be masked as the corpus
  says (unmasked columns arrive unchanged and correctly typed);
- prepared statements re-executed without Describe (a pgjdbc-style sequence on the raw wire),
  SQL cursors, Execute with a row limit, psql \\copy, errors that echo values, a catalog
  change during a session, and the audit replay, which must hold masked rows only.
"""

from __future__ import annotations

import csv
import io
import json
import re
import secrets
import struct
from pathlib import Path

import psycopg2
import pytest

import harness
from harness import PG_BIN, assert_no_leaks, node_script, psql, raw_login, run
from test_policy_e2e import (create_database, drop_database, load_schema_sql,
                             start_policy_gateway, stop_policy_gateway)

pytestmark = pytest.mark.gateway_only  # masking is the gateway's

MASK_FIXTURES = harness.REPO_ROOT / "tests" / "fixtures" / "mask"
DB = "mask_e2e"
READER = "bw_mask_reader"
SUB = "svc-agent-mask"
REFUSED_EVENT = "event=statement_refused"

# Every sensitive value of the data (schema.sql + schema-extra.sql + what the tests add).
SECRETS = [
    "alice.archer@example.com", "bob.baker@example.org", "carol.chen@example.net",
    "dan.dent@example.com", "4111111111111111", "5500005555555559", "340000000000009",
    "6011000990139424", "123-45-6789", "987-65-4321", "222-33-4444", "555-44-3333",
    "sk_live_51HxQ2eZvKYlo2C8x7Qj3",
]


def agent_policy() -> dict:
    return {
        "role": "agent",
        "description": "masking end to end",
        "identities": [{"iss": harness.ISSUER, "sub": "svc-agent-*"}],
        "upstream": {DB: {"user": READER, "password_file": f"../secrets/{READER}"}},
        "default": "deny",
        "catalog_reads": True,
        "rules": [
            {"id": "no-ddl", "action": "deny", "operations": ["dcl", "truncate"]},
            {"id": "read-shop", "action": "allow",
             "operations": ["select", "explain", "copy_to", "insert", "update", "delete"],
             "relations": ["public.*"]},
            {"id": "scratch", "action": "allow", "operations": ["ddl", "insert", "select"],
             "relations": ["scratch.*"]},
        ],
        "masks": json.loads((MASK_FIXTURES / "agent-masks.json").read_text()),
    }


def agent2_policy() -> dict:
    """Masks no detector would find again: a leak of a plan shows as a clear name."""
    return {
        "role": "agent2",
        "identities": [{"iss": harness.ISSUER, "sub": "svc-agent2-*"}],
        "upstream": {DB: {"user": READER, "password_file": f"../secrets/{READER}"}},
        "default": "deny",
        "rules": [{"id": "read", "action": "allow", "operations": ["select"],
                   "relations": ["public.*"]},
                  {"id": "scratch", "action": "allow",
                   "operations": ["select", "insert", "ddl"], "relations": ["scratch.*"]}],
        "masks": [{"column": "public.customers.name", "method": "fixed", "value": "[hidden]"},
                  {"column": "public.customers.email", "method": "hash"},
                  {"column": "scratch.people.secret", "method": "fixed", "value": "[secret]"},
                  {"column": "scratch.people.added", "method": "fixed", "value": "[added]"}],
    }


MAX_ROW = 4 << 20


@pytest.fixture(scope="module")
def env(pg, bulwark_bin, certdir, secret_registry, tmp_path_factory):
    pw = "pw-" + secrets.token_hex(12)
    made_agent_rw = not pg.admin_query("select 1 from pg_roles where rolname = 'agent_rw'")
    create_database(pg, DB)
    load_schema_sql(pg, DB)
    pg.admin_query(f"drop role if exists {READER}")
    pg.admin_query(f"create role {READER} login password %s", (pw,))
    c = pg.admin(DB)
    with c.cursor() as cur:
        cur.execute((MASK_FIXTURES / "schema-extra.sql").read_text())
        cur.execute("create schema scratch")
        cur.execute(f"grant usage, create on schema scratch to {READER}")
        cur.execute(f"grant usage on schema public to {READER}")
        cur.execute(f"grant select on all tables in schema public to {READER}")
        cur.execute(f"grant insert, update, delete on customers, orders to {READER}")
        cur.execute(f"grant usage on all sequences in schema public to {READER}")
    c.close()
    target = {"host": "127.0.0.1", "port": pg.port, "sslmode": "disable", "dbname": DB}
    keyfile = tmp_path_factory.mktemp("maskkey") / "mask-hmac.key"
    keyfile.write_text(secrets.token_hex(32))
    metrics_port = harness.free_port()
    g = start_policy_gateway("gw-mask-e2e", bulwark_bin, pg, certdir, secret_registry,
                             tmp_path_factory, targets={DB: target},
                             policies=[agent_policy(), agent2_policy()], passwords={READER: pw},
                             settings={"metrics_listen": f"127.0.0.1:{metrics_port}",
                                       "audit": {"path": "var/audit", "map_size": "256MiB",
                                                 "capture_rows": 50},
                                       "masking": {"hash_key_file": str(keyfile),
                                                   "max_row_bytes": "4MiB"}})
    g.ep = g.endpoint(role="agent", target=DB, sub=SUB, application_name="bwit-mask-e2e")
    g.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    g.ep2 = g.endpoint(role="agent2", target=DB, sub="svc-agent2-mask",
                       application_name="bwit-mask-e2e2")
    try:
        yield g
    finally:
        try:
            stop_policy_gateway(g)
        finally:
            drop_database(pg, DB)
            for role in [READER] + (["agent_rw"] if made_agent_rw else []):
                try:
                    pg.admin_query(f"drop role if exists {role}")
                except psycopg2.Error as e:
                    print(f"teardown: role {role} not dropped: {e}")


def connect(g, **kw):
    c = g.ep.connect(**kw)
    c.autocommit = True
    return c


def test_smoke_select_star_is_masked(env):
    c = connect(env)
    try:
        with c.cursor() as cur:
            cur.execute("SELECT * FROM customers ORDER BY id")
            rows = cur.fetchall()
            types = [d.type_code for d in cur.description]
    finally:
        c.close()
    text = repr(rows)
    assert_no_leaks(text, SECRETS, context=text)
    assert rows[0][0] == 1 and rows[0][1] == "Alice Archer"
    assert rows[0][2] == "a***@example.com"
    assert rows[0][3] == "************1111"
    assert rows[0][4] == "****"
    assert types[0] == 23 and types[2] == 25


def masked_counts(env) -> dict:
    """bulwark_masked_values_total by (column, detector), scraped from /metrics."""
    import urllib.request
    text = urllib.request.urlopen(env.metrics_url, timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(r'bulwark_masked_values_total\{column="([^"]*)",detector="([^"]*)"\} (\S+)',
                         line)
        if m:
            out[(m.group(1), m.group(2))] = float(m.group(3))
    return out


def test_masked_values_are_counted_by_column_and_detector(env):
    before = masked_counts(env)
    c = connect(env)
    try:
        with c.cursor() as cur:
            cur.execute("SELECT email, ssn FROM customers ORDER BY id LIMIT 3")
            assert len(cur.fetchall()) == 3
            cur.execute("SELECT 'reach me at someone@example.org' AS note")
            assert cur.fetchone()[0] != "reach me at someone@example.org"
    finally:
        c.close()

    def grown():
        after = masked_counts(env)
        d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        return d if d.get(("public.customers.ssn", ""), 0) >= 3 else None
    d = harness.wait_for(grown, 10, "the masked-values counter to grow")
    assert d[("public.customers.email", "")] == 3
    assert d[("public.customers.ssn", "")] == 3
    assert d.get(("", "email"), 0) == 1


# ---------------------------------------------------------------------------------------
# What the client receives: every byte from the gateway, through a recording forwarder


def Capture(port: int) -> harness.TcpForwarder:
    """A forwarder in front of the gateway that keeps every byte sent to the client."""
    return harness.TcpForwarder("127.0.0.1", port, record=True)


# ---------------------------------------------------------------------------------------
# The corpus


class MCase:
    def __init__(self, line, sql, values, expect, denied):
        self.line, self.sql, self.values, self.expect, self.denied = (line, sql, values,
                                                                      expect, denied)


def corpus() -> list:
    out = []
    for n, line in enumerate((MASK_FIXTURES / "masking.tsv").read_text().splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        f = line.split("\t")
        f += [""] * (4 - len(f))
        values = [v for v in f[1].split(",") if v]
        out.append(MCase(n, f[0], values, f[2].split() if f[2] else [], f[3]))
    return out


CASES = corpus()
ALL_VALUES = sorted(set(SECRETS) | {v for c in CASES for v in c.values})


def expected_ok(c: MCase, types, rows, direct_rows, direct_types, binary=False) -> list:
    """Problems with one result against the corpus's expectation (empty = as expected)."""
    problems = []
    exp = c.expect
    if not exp:
        return problems
    ncols = len(types)
    if exp == ["ALL"] or (len(exp) == 1 and exp[0].startswith("*")):
        meth = "redact" if exp[0] in ("ALL", "*redact") else exp[0][1:]
        exp = [meth] * ncols
    elif any(e.startswith("*") for e in exp):
        return problems  # a run of unknown width among known columns: leaks are checked
    if len(exp) != ncols:
        return [f"{ncols} columns, corpus expects {len(exp)}"]
    for i, e in enumerate(exp):
        got = [r[i] for r in rows]
        if e == "-":
            if direct_types is not None and types[i] != direct_types[i]:
                problems.append(f"column {i + 1}: type {types[i]}, PostgreSQL says "
                                f"{direct_types[i]}")
            if direct_rows is not None:
                # the detectors (second net) may replace spans: "api key ****"
                want = sorted(repr(r[i]) for r in direct_rows)
                have = sorted(map(repr, got))
                if len(want) != len(have) or any(
                        w != h and "****" not in h for w, h in zip(want, have)):
                    problems.append(f"column {i + 1} changed: {got!r} vs "
                                    f"{[r[i] for r in direct_rows]!r}")
            continue
        if types[i] != 25:
            problems.append(f"column {i + 1} ({e}) described as type {types[i]}, not text")
        for v in got:
            if v is None:
                continue
            if isinstance(v, (bytes, memoryview)):
                v = bytes(v).decode()
            ok = {"redact": v == "****",
                  "email": bool(re.fullmatch(r".\*\*\*@[^@]+|\*\*\*\*", v)),
                  "partial": bool(re.fullmatch(r"\*+[^*]{0,4}", v))}.get(e, True)
            if not ok:
                problems.append(f"column {i + 1}: {v!r} is not masked as {e}")
    return problems


def direct_result(pg, sql):
    c = pg.admin(DB)
    try:
        with c.cursor() as cur:
            cur.execute(sql)
            if cur.description is None:
                return None, None
            return cur.fetchall(), [d.type_code for d in cur.description]
    except psycopg2.Error:
        return None, None
    finally:
        c.close()


def refused_by_gateway(err: psycopg2.Error) -> bool:
    return err.pgcode == "42501" and "bulwark" in (err.pgerror or "")


def refused_by_masking(message: str) -> bool:
    """A denial by masking (an oracle or a sink), not by a policy rule: the policy may be
    stricter than the corpus assumes (query_to_xml, pg_stats are refused by built-ins)."""
    return "masked column" in message or "unknown lineage" in message


# Statements that change the database (the corpus denies them; should one get through, it
# must not disturb the next cases) or need a transaction (cursors: their own tests below).
SKIP_PSYCOPG = re.compile(r"^(DECLARE|FETCH|PREPARE|EXECUTE)\b", re.I)


def test_corpus_through_psycopg2_simple_protocol(env, pg):
    cap = Capture(env.port)
    failures = []
    off = env.log_size()
    try:
        conn = connect(env, port=cap.port)
        for c in CASES:
            if SKIP_PSYCOPG.match(c.sql):
                continue
            before = len(env.refusals_since(off))
            try:
                with conn.cursor() as cur:
                    cur.execute(c.sql)
                    rows = cur.fetchall() if cur.description else []
                    types = [d.type_code for d in cur.description] if cur.description else []
            except psycopg2.Error as e:
                if c.denied and not refused_by_gateway(e):
                    failures.append(f"line {c.line}: expected refusal ({c.denied}), got "
                                    f"{e.pgcode} {e.pgerror!r}")
                elif c.denied and len(env.refusals_since(off)) == before:
                    failures.append(f"line {c.line}: refused but not logged")
                elif not c.denied and refused_by_gateway(e) and refused_by_masking(e.pgerror):
                    failures.append(f"line {c.line}: refused: {e.pgerror!r}")
                continue
            if c.denied:
                failures.append(f"line {c.line}: not refused ({c.denied})")
                continue
            drows, dtypes = direct_result(pg, c.sql) if "-" in c.expect else (None, None)
            for p in expected_ok(c, types, rows, drows, dtypes):
                failures.append(f"line {c.line}: {p}")
        conn.close()
    finally:
        cap.close()
    assert_no_leaks(cap.received(), ALL_VALUES)
    assert not failures, "\n".join([f"{len(failures)} problems:"] + failures)


def test_corpus_through_node_pg_extended_protocol_binary_results(env, pg, tmp_path):
    cap = Capture(env.port)
    cases = [c for c in CASES if not SKIP_PSYCOPG.match(c.sql) and not c.sql.startswith("COPY")]
    f = tmp_path / "cases.json"
    f.write_text(json.dumps([{"id": c.line, "text": c.sql} for c in cases]))
    try:
        res = node_script("mask_checks.js", env.ep.with_(port=cap.port),
                          extra_env={"MASK_CASES": str(f), "MASK_NAMED_REPEAT": "12"})
    finally:
        cap.close()
    assert "fatal" not in res, res
    by_id = {r["id"]: r for r in res["results"]}
    failures = []
    for c in cases:
        r = by_id[c.line]
        if "error" in r:
            if c.denied and r["error"]["code"] != "42501":
                failures.append(f"line {c.line}: expected refusal, got {r['error']}")
            elif not c.denied and refused_by_masking(r["error"]["message"]):
                failures.append(f"line {c.line}: refused: {r['error']}")
            continue
        if c.denied:
            failures.append(f"line {c.line}: not refused ({c.denied})")
            continue
        types = [fl["type"] for fl in r["fields"]]
        rows = [[v["utf8"] if isinstance(v, dict) and "utf8" in v else v for v in row]
                for row in r["rows"]]
        masked_only = [e for e in c.expect]
        ce = MCase(c.line, c.sql, c.values, masked_only, c.denied)
        # binary values of unmasked columns come back parsed by node-pg: compare types only
        drows, dtypes = direct_result(pg, c.sql) if "-" in c.expect else (None, None)
        for p in expected_ok(ce, types, rows, None, dtypes, binary=True):
            failures.append(f"line {c.line}: {p}")
    named = res["named"]
    assert len(named) == 12 and all("error" not in n for n in named), named
    for n in named:
        assert [fl["type"] for fl in n["fields"]] == [23, 25, 25], n
        for row in n["rows"]:
            assert row[1].endswith("@example.com") or row[1].endswith("@example.org") or \
                row[1].endswith("@example.net"), row
            assert row[1][1:4] == "***" and row[2] == "****", row
    assert_no_leaks(cap.received(), ALL_VALUES)
    assert not failures, "\n".join([f"{len(failures)} problems:"] + failures)


COPYABLE = re.compile(r"^(SELECT|WITH|TABLE)\b", re.I)


@pytest.mark.parametrize("fmt", ["text", "csv", "binary"])
def test_corpus_as_copy_to_stdout(env, fmt):
    cap = Capture(env.port)
    failures = []
    try:
        conn = connect(env, port=cap.port)
        for c in CASES:
            if not COPYABLE.match(c.sql) or " INTO " in c.sql.upper():
                continue
            opt = "" if fmt == "text" else f" WITH (FORMAT {fmt})"
            buf = io.BytesIO()
            try:
                with conn.cursor() as cur:
                    cur.copy_expert(f"COPY ({c.sql}) TO STDOUT{opt}", buf)
            except psycopg2.Error as e:
                if not c.denied and refused_by_gateway(e) and refused_by_masking(e.pgerror):
                    failures.append(f"line {c.line}: refused: {e.pgerror!r}")
                elif c.denied and not refused_by_gateway(e):
                    failures.append(f"line {c.line}: expected refusal, got {e.pgerror!r}")
                if conn.closed:
                    conn = connect(env, port=cap.port)
                continue
            if c.denied:
                failures.append(f"line {c.line}: COPY not refused ({c.denied})")
        conn.close()
    finally:
        cap.close()
    assert_no_leaks(cap.received(), ALL_VALUES)
    assert not failures, "\n".join([f"{len(failures)} problems:"] + failures)


# ---------------------------------------------------------------------------------------
# The extended protocol by hand: what pgjdbc and cursor clients do


def parse_msg(name: str, sql: str) -> bytes:
    return harness.msg(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!H", 0))


def bind_msg(portal: str, stmt: str, params: list, result_formats: list) -> bytes:
    body = portal.encode() + b"\0" + stmt.encode() + b"\0" + struct.pack("!H", 0)
    body += struct.pack("!H", len(params))
    for p in params:
        b = str(p).encode()
        body += struct.pack("!i", len(b)) + b
    body += struct.pack("!H", len(result_formats))
    body += b"".join(struct.pack("!H", f) for f in result_formats)
    return harness.msg(b"B", body)


def describe_msg(kind: bytes, name: str) -> bytes:
    return harness.msg(b"D", kind + name.encode() + b"\0")


def execute_msg(portal: str, max_rows: int = 0) -> bytes:
    return harness.msg(b"E", portal.encode() + b"\0" + struct.pack("!i", max_rows))


SYNC = harness.msg(b"S")


def until_ready(c) -> list:
    out = []
    while True:
        t, body = c.read_msg(10)
        out.append((t, body))
        if t == b"Z":
            return out


def row_types(body: bytes) -> list:
    (n,) = struct.unpack_from("!H", body)
    off, out = 2, []
    for _ in range(n):
        end = body.index(b"\0", off)
        off = end + 1
        _, _, typ, _, _, fmt = struct.unpack_from("!IhIhih", body, off)
        off += 18
        out.append((typ, fmt))
    return out


def test_named_statement_described_once_then_executed_without_describe(env):
    """pgjdbc: Parse + Describe(S) once, then Bind/Execute/Sync many times, some with
    binary results, one with a row limit (PortalSuspended): every execution is masked."""
    cap = Capture(env.port)
    try:
        c = raw_login(env.ep.with_(port=cap.port))
        sql = "SELECT id, email, ssn, card_number, name FROM customers WHERE id <= $1 ORDER BY id"
        c.send(parse_msg("S_1", sql) + describe_msg(b"S", "S_1") + SYNC)
        first = until_ready(c)
        rd = [b for t, b in first if t == b"T"]
        assert rd and [t for t, _ in row_types(rd[0])] == [23, 25, 25, 25, 25], first
        for i in range(6):
            fmts = [1] if i % 2 else [0]
            c.send(bind_msg("", "S_1", [3], fmts) + execute_msg("") + SYNC)
            msgs = until_ready(c)
            rows = [b for t, b in msgs if t == b"D"]
            assert len(rows) == 3 and not [t for t, _ in msgs if t in (b"T", b"E")], msgs
            for b in rows:
                (n,) = struct.unpack_from("!H", b)
                assert n == 5
            text = b"".join(rows)
            assert b"***@example." in text and b"****" in text, text
        # a named portal executed one row at a time
        c.send(bind_msg("P1", "S_1", [3], [0]) + execute_msg("P1", 1) + harness.msg(b"H"))
        got = []
        while True:
            t, body = c.read_msg(10)
            got.append(t)
            if t == b"s":
                break
        assert got.count(b"D") == 1, got
        c.send(execute_msg("P1", 1) + execute_msg("P1", 0) + SYNC)
        rest = until_ready(c)
        assert [t for t, _ in rest].count(b"D") == 2, rest
        c.close()
    finally:
        cap.close()
    assert_no_leaks(cap.received(), ALL_VALUES)


def test_sql_cursors_and_prepared_statements_follow_their_plans(env):
    cap = Capture(env.port)
    try:
        conn = env.ep.with_(port=cap.port).connect()
        with conn.cursor() as cur:  # psycopg2 opens a transaction: DECLARE works
            cur.execute("DECLARE cur SCROLL CURSOR FOR SELECT id, email, ssn FROM customers "
                        "ORDER BY id")
            cur.execute("FETCH 2 FROM cur")
            a = cur.fetchall()
            cur.execute("FETCH ALL FROM cur")
            b = cur.fetchall()
            cur.execute("MOVE ABSOLUTE 0 IN cur")
            cur.execute("FETCH NEXT FROM cur")
            c1 = cur.fetchall()
        conn.commit()
        rows = a + b + c1
        assert len(rows) == 5 and all(r[2] == "****" and "***@" in r[1] for r in rows), rows
        with conn.cursor("srv") as cur:  # a psycopg2 named cursor: DECLARE + FETCH FORWARD
            cur.itersize = 2
            cur.execute("SELECT name, card_number FROM customers ORDER BY id")
            named = list(cur)
        conn.commit()
        assert [r[0] for r in named[:2]] == ["Alice Archer", "Bob Baker"], named
        assert all(r[1].startswith("****") for r in named), named
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("PREPARE p_mask AS SELECT id, ssn, email FROM customers WHERE id = $1")
            cur.execute("EXECUTE p_mask(2)")
            ex = cur.fetchall()
            assert ex == [(2, "****", "b***@example.org")], ex
        conn.close()
    finally:
        cap.close()
    assert_no_leaks(cap.received(), ALL_VALUES)


def test_errors_and_notices_that_echo_values_are_scrubbed(env):
    cap = Capture(env.port)
    msgs = []
    try:
        conn = connect(env, port=cap.port)
        for sql in ["SELECT ssn::int FROM customers",
                    "SELECT card_number::int8::int4 FROM customers",
                    "SELECT email::date FROM customers",
                    "SELECT notes::int FROM customers WHERE id = 2",
                    "SELECT (SELECT email FROM customers WHERE id = 1)::int",
                    "SELECT jsonb_build_object('a', ssn)::text::int FROM customers",
                    "DO $$ BEGIN RAISE NOTICE 'leak %', (SELECT ssn FROM customers LIMIT 1); END $$"]:
            try:
                with conn.cursor() as cur:
                    cur.execute(sql)
            except psycopg2.Error as e:
                msgs.append(f"{e.pgcode} {e.pgerror}")
        msgs += list(conn.notices)
        conn.close()
    finally:
        cap.close()
    assert len(msgs) >= 6, msgs
    assert_no_leaks(cap.received(), ALL_VALUES, context=msgs)


def test_psql_copy_to_stdout_is_masked(env, tmp_path):
    out = tmp_path / "c.csv"
    r = psql(env.ep, "-c", f"\\copy customers TO '{out}' WITH (FORMAT csv, HEADER)")
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert_no_leaks(text, ALL_VALUES, context=text)
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["id", "name", "email", "card_number", "ssn", "notes"], rows
    assert rows[1][:5] == ["1", "Alice Archer", "a***@example.com", "************1111", "****"]
    r = psql(env.ep, "-c", "COPY (SELECT email, name FROM customers ORDER BY id) TO STDOUT")
    assert r.returncode == 0 and "Alice Archer" in r.stdout, r.stderr
    assert_no_leaks(r.stdout, ALL_VALUES, context=r.stdout)


def test_catalog_changes_during_a_session_are_masked_afterwards(env, pg):
    """A view replaced, a column renamed and one added in the session: the next statement
    sees the new shapes (DDL makes the gateway read the catalog again)."""
    cap = Capture(env.port)
    try:
        conn = connect(env, port=cap.port)
        with conn.cursor() as cur:
            cur.execute("CREATE VIEW scratch.v1 AS SELECT id, name AS a, ssn AS b FROM "
                        "public.customers")
            cur.execute("SELECT a, b FROM scratch.v1 ORDER BY 1")
            first = cur.fetchall()
            cur.execute("CREATE OR REPLACE VIEW scratch.v1 AS SELECT id, ssn AS a, name AS b "
                        "FROM public.customers")
            cur.execute("SELECT a, b FROM scratch.v1")
            second = cur.fetchall()
            cur.execute("SELECT * FROM scratch.v1")
            third = cur.fetchall()
        assert all(r[1] == "****" and r[0] != "****" for r in first), first
        assert all(r[0] == "****" and r[1] != "****" for r in second), second
        assert all(r[1] == "****" for r in third), third
        # another session changes the view: the RowDescription of an unknown relation, or
        # the next catalog read, keeps the old plan from applying
        pg.admin_query("create view scratch.v2 as select id, card_number as c from "
                       "public.customers", dbname=DB)
        pg.admin_query(f"grant select on scratch.v2 to {READER}", dbname=DB)
        with conn.cursor() as cur:
            cur.execute("SELECT c FROM scratch.v2")
            other = cur.fetchall()
        assert all(r[0] is None or "4111" not in r[0] and r[0].startswith("*")
                   for r in other), other
        conn.close()
    finally:
        cap.close()
    assert_no_leaks(cap.received(), ALL_VALUES)


def test_large_rows_are_masked_and_oversized_rows_end_the_session(env, pg):
    conn = connect(env)
    with conn.cursor() as cur:
        cur.execute("SELECT repeat('x', 3000000) || ssn AS big, ssn FROM customers WHERE id = 1")
        big, s = cur.fetchone()
    assert len(big) == 3000000 + 4 or big == "****", len(big)
    assert s == "****"
    with conn.cursor() as cur:
        cur.execute("SELECT repeat('y', 1000) || ' 123-45-6789', id FROM orders LIMIT 1")
        v, _ = cur.fetchone()
    assert "123-45-6789" not in v and v.endswith("****"), v
    conn.close()


def test_audit_records_hold_masked_rows_only(env):
    conn = connect(env, application_name="bwit-mask-audit")
    with conn.cursor() as cur:
        cur.execute("SELECT id, name, email, card_number, ssn, notes FROM customers ORDER BY id")
        cur.fetchall()
    conn.close()
    r = run([str(env.binary), "audit", "export", "-c", str(env.config_path), "--format", "jsonl"])
    assert r.returncode == 0, r.stderr
    results = [o["record"]["data"] for o in map(json.loads, r.stdout.splitlines())
               if o.get("record", {}).get("type") == "result"]
    captured = json.dumps([{k: d.get(k) for k in ("values", "error", "columns")}
                           for d in results])
    assert "a***@example.com" in captured and "************1111" in captured
    assert_no_leaks(captured, ALL_VALUES)
    sid = None
    for ln in env.log_text().splitlines():
        if "event=session_start" in ln and "bwit-mask-audit" in ln:
            sid = re.search(r"session=(\w+)", ln).group(1)
    assert sid
    rp = run([str(env.binary), "replay", sid, "-c", str(env.config_path)])
    assert rp.returncode == 0, rp.stderr
    assert "a***@example.com" in rp.stdout, rp.stdout
    assert_no_leaks(rp.stdout, ALL_VALUES, context=rp.stdout)


def test_explain_shows_the_masks_of_each_statement(env, pg, tmp_path):
    dump = tmp_path / "schema.sql"
    r = run([str(PG_BIN / "pg_dump"), "--schema-only", "-h", str(pg.datadir), "-p", str(pg.port),
             "-U", "postgres", "-f", str(dump), DB])
    assert r.returncode == 0, r.stderr
    sql = ("SELECT c.email AS e, name, lower(ssn) FROM customers c; "
           "SELECT id FROM customers WHERE ssn LIKE '1%'; SELECT * FROM v_nested")
    r = run([str(env.binary), "explain", "-c", str(env.config_path), "--role", "agent",
             "--schema", str(dump), "--json", sql])
    assert r.returncode == 0, r.stderr
    masks = json.loads(r.stdout)["masks"]
    assert len(masks) == 3, masks
    assert not masks[0]["denied"] and masks[1]["denied"] and not masks[2]["denied"], masks
    text = run([str(env.binary), "explain", "-c", str(env.config_path), "--role", "agent",
                "--schema", str(dump), sql])
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert 'column 1 "e": masked by email' in out, out
    assert 'column 2 "name": not masked' in out, out
    assert 'column 3 "lower": masked by redact' in out, out
    assert "denied by masking: masked column public.customers.ssn is used in WHERE" in out, out
    assert 'column 2 "card": masked by partial' in out, out
    bare = run([str(env.binary), "explain", "-c", str(env.config_path), "--role", "agent",
                "SELECT name FROM customers"])
    assert bare.returncode == 0 and "without a catalog" in bare.stdout, bare.stdout


# ---------------------------------------------------------------------------------------
# Names the server refused: a second DECLARE or Parse of a name keeps the first. The
# card number's lineage method (partial) proves the first plan applied; the detector alone
# would give "****".


NAMES = ["Alice Archer", "Bob Baker", "Carol Chen", "Dan Dent"]


def test_a_refused_redeclaration_does_not_replace_the_cursors_plan(env):
    cap = Capture(env.port)
    try:
        conn = env.ep2.with_(port=cap.port).connect()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("DECLARE hc CURSOR WITH HOLD FOR SELECT name AS x FROM customers "
                        "ORDER BY id")
            with pytest.raises(psycopg2.Error):
                cur.execute("DECLARE hc CURSOR WITH HOLD FOR SELECT id::text AS x FROM customers")
            cur.execute("FETCH ALL FROM hc")
            rows = cur.fetchall()
            cur.execute("CLOSE hc")
            # the same within one Query string: the second DECLARE fails, FETCH never runs
            cur.execute("DECLARE hd CURSOR WITH HOLD FOR SELECT name AS x FROM customers")
            with pytest.raises(psycopg2.Error):
                cur.execute("DECLARE hd CURSOR WITH HOLD FOR SELECT 'x'::text AS x; "
                            "FETCH ALL FROM hd")
            cur.execute("FETCH ALL FROM hd")
            rows2 = cur.fetchall()
        conn.close()
    finally:
        cap.close()
    assert rows == [("[hidden]",)] * 4, rows
    assert rows2 == [("[hidden]",)] * 4, rows2
    assert_no_leaks(cap.received(), NAMES)


def test_a_refused_second_parse_of_a_name_does_not_replace_its_plan(env):
    cap = Capture(env.port)
    try:
        c = raw_login(env.ep2.with_(port=cap.port))
        c.send(parse_msg("dup", "SELECT name FROM customers ORDER BY id") + SYNC)
        assert [t for t, _ in until_ready(c)] == [b"1", b"Z"]
        c.send(parse_msg("dup", "SELECT id::text FROM customers ORDER BY id") + SYNC)
        assert b"E" in [t for t, _ in until_ready(c)]
        c.send(bind_msg("", "dup", [], [0]) + execute_msg("") + SYNC)
        first = [harness.decode_datarow(b) for t, b in until_ready(c) if t == b"D"]
        # the second attempt and an execution pipelined, without waiting for the error:
        # either plan could hold, so the result is masked whole
        c.send(parse_msg("dup", "SELECT id::text FROM customers ORDER BY id") + SYNC +
               bind_msg("", "dup", [], [0]) + execute_msg("") + SYNC)
        msgs = until_ready(c) + until_ready(c)
        second = [harness.decode_datarow(b) for t, b in msgs if t == b"D"]
        c.close()
    finally:
        cap.close()
    assert first == [["[hidden]"]] * 4, first
    assert second in ([["[hidden]"]] * 4, [["****"]] * 4), second
    assert_no_leaks(cap.received(), NAMES)


def test_a_parse_of_several_statements_is_refused_by_the_server_and_the_session_goes_on(env):
    # The policy allows both statements and the masking plans both; PostgreSQL refuses the
    # Parse (42601). Only the first plan stays with the name (under `make asan-ci` a plan
    # kept for the second statement was a leak the gateway's exit reported).
    c = raw_login(env.ep2)
    try:
        for name in ("", "two"):
            c.send(parse_msg(name, "SELECT name FROM customers; SELECT ssn FROM customers") +
                   SYNC)
            got = until_ready(c)
            assert [t for t, _ in got] == [b"E", b"Z"], got
            assert harness.parse_error_fields(got[0][1]).get("C") == "42601"
        c.send(parse_msg("", "SELECT name FROM customers ORDER BY id") +
               bind_msg("", "", [], [0]) + execute_msg("") + SYNC)
        rows = [harness.decode_datarow(b) for t, b in until_ready(c) if t == b"D"]
        assert rows == [["[hidden]"]] * 4, rows
    finally:
        c.close()


def test_hash_is_deterministic_across_sessions_and_keeps_joins(env):
    got = []
    for _ in range(2):
        c = env.ep2.connect()
        c.autocommit = True
        with c.cursor() as cur:
            cur.execute("SELECT id, email FROM customers ORDER BY id")
            got.append(cur.fetchall())
        c.close()
    assert got[0] == got[1], got
    hashes = [e for _, e in got[0]]
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), hashes
    assert len(set(hashes)) == len(hashes)
    assert_no_leaks(repr(got), ALL_VALUES)


def test_rows_larger_than_max_row_bytes_end_the_session(env):
    conn = connect(env)
    with conn.cursor() as cur:
        cur.execute("SELECT repeat('x', 3000000) || ssn, id FROM customers WHERE id = 1")
        assert cur.fetchone()[1] == 1
    conn.close()
    c = raw_login(env.ep)
    c.send(harness.query_msg(f"SELECT repeat('x', {MAX_ROW}) || ssn FROM customers"))
    got = []
    with pytest.raises(EOFError):
        while True:
            got.append(c.read_msg(10))
    assert [t for t, _ in got] == [b"T", b"E"], got
    err = harness.parse_error_fields(got[1][1])
    assert err.get("S") == "FATAL" and err.get("C") == "54000", err
    assert "max_row_bytes" in err.get("M", ""), err
    c2 = connect(env)  # the gateway serves on
    with c2.cursor() as cur:
        cur.execute("SELECT 1")
    c2.close()


# ---------------------------------------------------------------------------------------
# What agents and tools do with a masking role: reflection and \d must work, unmasked


def test_sqlalchemy_reflection_and_psql_describe_work_through_a_masking_role(env):
    from sqlalchemy import MetaData, create_engine, inspect, select
    from sqlalchemy.schema import CreateTable

    off = env.log_size()
    eng = create_engine(env.ep.with_(application_name="bwit-mask-sqla").uri("postgresql+psycopg2"))
    try:
        insp = inspect(eng)
        assert {"customers", "orders"} <= set(insp.get_table_names())
        assert "customer_contacts" in insp.get_view_names()
        cols = [c["name"] for c in insp.get_columns("customers")]
        assert cols == ["id", "name", "email", "card_number", "ssn", "notes"], cols
        for t in ("customers", "orders"):
            insp.get_pk_constraint(t)
            insp.get_foreign_keys(t)
            insp.get_indexes(t)
            insp.get_unique_constraints(t)
        md = MetaData()
        md.reflect(bind=eng, only=["customers", "orders", "customer_contacts"], views=True)
        sample = {}
        for table in md.sorted_tables:
            str(CreateTable(table).compile(eng))
            with eng.connect() as conn:
                sample[table.name] = conn.execute(select(table).limit(3)).fetchall()
    finally:
        eng.dispose()
    assert sample["customers"][0][2] == "a***@example.com", sample
    assert_no_leaks(repr(sample), ALL_VALUES)
    masking_refusals = [ln for ln in env.refusals_since(off) if "builtin:masking" in ln]
    assert not masking_refusals, masking_refusals
    r = psql(env.ep, "-v", "ON_ERROR_STOP=1", "-c", r"\d customers", "-c", r"\dt", "-c",
             r"\d+ customer_contacts", "-c", r"\dn")
    assert r.returncode == 0, r.stderr
    assert "card_number" in r.stdout and "customer_contacts" in r.stdout, r.stdout
    assert_no_leaks(r.stdout, ALL_VALUES, context=r.stdout)


def test_columns_renamed_or_added_during_a_session_are_masked_afterwards(env):
    conn = env.ep2.connect()
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE scratch.people (id int, nick text, other text)")
            cur.execute("INSERT INTO scratch.people VALUES (1, 'n1', 'o1'), (2, 'n2', 'o2')")
            cur.execute("SELECT * FROM scratch.people ORDER BY id")
            before = cur.fetchall()
            cur.execute("ALTER TABLE scratch.people RENAME COLUMN nick TO secret")
            cur.execute("SELECT * FROM scratch.people ORDER BY id")
            renamed = cur.fetchall()
            cur.execute("SELECT p.secret || '!' AS s FROM scratch.people p")
            expr = cur.fetchall()
            cur.execute("ALTER TABLE scratch.people ADD COLUMN added text DEFAULT 'zz'")
            cur.execute("SELECT * FROM scratch.people ORDER BY id")
            added = cur.fetchall()
            # in the client's transaction: the catalog is read again within a savepoint
            # that leaves the transaction (and its SET LOCAL) as it was
            cur.execute("BEGIN")
            cur.execute("SET LOCAL search_path = scratch, public")
            cur.execute("ALTER TABLE scratch.people RENAME COLUMN other TO secret2")
            cur.execute("SHOW search_path")
            path_in_tx = cur.fetchone()[0]
            cur.execute("SELECT id, secret2 FROM scratch.people WHERE id = 1")
            in_tx = cur.fetchall()
            with pytest.raises(psycopg2.Error):
                cur.execute("ALTER TABLE people RENAME COLUMN nosuch TO x")
            cur.execute("ROLLBACK")
            cur.execute("BEGIN")
            cur.execute("ALTER TABLE scratch.people RENAME COLUMN other TO secret2")
            cur.execute("SELECT id, secret2 FROM scratch.people ORDER BY 1")
            in_tx2 = cur.fetchall()
            cur.execute("COMMIT")
            cur.execute("SHOW search_path")
            path_after = cur.fetchone()[0]
            cur.execute("SELECT id, secret2 FROM scratch.people ORDER BY 1")
            after_tx = cur.fetchall()
    finally:
        conn.close()
    assert before == [(1, "n1", "o1"), (2, "n2", "o2")], before
    assert renamed == [(1, "[secret]", "o1"), (2, "[secret]", "o2")], renamed
    assert expr == [("****",), ("****",)], expr
    assert added == [(1, "[secret]", "o1", "[added]"), (2, "[secret]", "o2", "[added]")], added
    assert path_in_tx == "scratch, public", path_in_tx
    assert in_tx == [(1, "o1")], in_tx
    assert in_tx2 == [(1, "o1"), (2, "o2")], in_tx2
    assert path_after != "scratch, public", path_after
    assert after_tx == [(1, "o1"), (2, "o2")], after_tx


def test_a_failed_catalog_read_leaves_the_clients_transaction_as_it_was(env):
    """The catalog read inside the client's transaction times out (its statement_timeout):
    the savepoint is rolled back, the client's transaction goes on, and with no catalog
    every relation is masked whole."""
    conn = env.ep2.connect()
    try:
        with conn.cursor() as cur:  # psycopg2 opens the transaction
            cur.execute("CREATE TABLE scratch.t_fail (id int, v text)")
            cur.execute("INSERT INTO scratch.t_fail VALUES (1, 'one')")
            # DDL, then the timeout in the same string: the next statement's catalog read
            # runs under it
            cur.execute("ALTER TABLE scratch.t_fail ADD COLUMN w int; "
                        "SET LOCAL statement_timeout = '1ms'")
            cur.execute("SELECT id, v FROM scratch.t_fail")
            masked = cur.fetchall()
            cur.execute("SET LOCAL statement_timeout = 0")
            cur.execute("SELECT count(*) FROM scratch.t_fail")
            count = cur.fetchone()
        conn.commit()
    finally:
        conn.close()
    assert masked == [("****", "****")], masked  # no catalog: masked whole
    assert count == (1,), count  # count(*) carries no column; the transaction went on
    failed = [ln for ln in env.log_text().splitlines() if "mask_catalog_failed" in ln]
    assert failed, "the catalog read did not fail as the test meant it to"
