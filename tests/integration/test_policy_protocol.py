"""Refusals at the protocol level (issue 4, "Tests"; DESIGN.md section 2, rule 9).

A statement the gateway refuses must look to the client exactly like a server-side error:
the ErrorResponse in order with what was pipelined around it, the same ReadyForQuery status,
and the client and the server agreeing on the transaction state. Most tests here send the
same bytes twice: through the gateway with a refused statement, and to PostgreSQL itself
(as the same superuser the gateway logs in as) with a statement that fails at parse
analysis in its place, and compare the sequences of messages. Then they check, as the
superuser, that nothing refused ran.

Role "proto" (upstream login: a superuser, so only Bulwark stands in the way): reads
public.*, may INSERT into public.log, nothing on public.secrets, no DDL; default deny;
max_statement_bytes 1KiB.
"""

from __future__ import annotations

import secrets
import struct

import pytest

import harness
from harness import RawPg, msg, parse_error_fields, query_msg, raw_login
from test_policy_e2e import (create_database, drop_database, start_policy_gateway,
                             stop_policy_gateway)

pytestmark = pytest.mark.gateway_only

DB = "policy_proto"
SUPER = "bw_pp_super"
SUB = "svc-proto-tests"
MAX_STATEMENT_BYTES = 1024

SCHEMA = """
create table log (id int primary key, note text);
create table secrets (id int primary key, secret text);
insert into log values (1, 'one'), (2, 'two');
insert into secrets values (1, 'hunter2');
"""

POLICY = {
    "role": "proto",
    "description": "protocol tests: read public, append to log, nothing on secrets",
    "identities": [{"iss": harness.ISSUER, "sub": "svc-proto-*"}],
    "upstream": {DB: {"user": SUPER, "password_file": f"../secrets/{SUPER}"}},
    "default": "deny",
    "catalog_reads": True,
    "rules": [
        {"id": "no-ddl", "action": "deny", "operations": ["ddl", "dcl", "truncate"]},
        {"id": "no-secrets", "action": "deny", "relations": ["public.secrets"]},
        {"id": "read-public", "action": "allow", "operations": ["select", "explain"],
         "relations": ["public.*"]},
        {"id": "append-log", "action": "allow", "operations": ["insert"],
         "relations": ["public.log"]},
    ],
}

DENIED = "SELECT * FROM secrets"          # refused by the gateway (rule no-secrets)
SERVER_ERROR = "SELECT no_such_column"    # its stand-in directly at PostgreSQL (42703)


# ---------------------------------------------------------------------------------------
# protocol messages


def cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def parse(name: str, sql: str) -> bytes:
    return msg(b"P", cstr(name) + cstr(sql) + struct.pack("!H", 0))


def bind(portal: str, stmt: str, params=()) -> bytes:
    body = cstr(portal) + cstr(stmt) + struct.pack("!H", 0) + struct.pack("!H", len(params))
    for p in params:
        if p is None:
            body += struct.pack("!i", -1)
        else:
            b = str(p).encode()
            body += struct.pack("!i", len(b)) + b
    return msg(b"B", body + struct.pack("!H", 0))


def describe(kind: str, name: str) -> bytes:
    return msg(b"D", kind.encode() + cstr(name))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return msg(b"E", cstr(portal) + struct.pack("!I", max_rows))


SYNC = msg(b"S")


def extended(sql: str, name: str = "", params=()) -> bytes:
    """Parse, Bind, Describe portal, Execute: one statement, no Sync."""
    return parse(name, sql) + bind("", name, params) + describe("P", "") + execute()


def function_call(oid: int, args=()) -> bytes:
    body = struct.pack("!IHH", oid, 0, len(args))
    for a in args:
        b = str(a).encode()
        body += struct.pack("!i", len(b)) + b
    return msg(b"F", body + struct.pack("!H", 0))


def read_cycles(c: RawPg, n: int = 1, timeout: float = 10) -> list:
    """Messages until the n-th ReadyForQuery, as short strings: 'E:42501', 'Z:I',
    'C:INSERT 0 1', 'D', 'T', '1', '2', 'n', ... Errors' fields are kept in c.errors."""
    out = []
    c.errors = []
    while n:
        t, body = c.read_msg(timeout)
        k = t.decode()
        if t == b"E":
            f = parse_error_fields(body)
            c.errors.append(f)
            k += ":" + f.get("C", "?")
        elif t == b"Z":
            k += ":" + body.decode()
            n -= 1
        elif t == b"C":
            k += ":" + body.rstrip(b"\0").decode()
        elif t in (b"N", b"S"):
            continue  # notices and parameter changes are not part of the shape
        out.append(k)
    return out


def shape(kinds: list) -> list:
    """The sequence without SQLSTATEs: what must match PostgreSQL's own."""
    return [k.split(":")[0] if k.startswith("E:") else k for k in kinds]


def exchange(c: RawPg, data: bytes, cycles: int) -> list:
    c.send(data)
    return read_cycles(c, cycles)


# ---------------------------------------------------------------------------------------
# environment


class Env:
    pass


@pytest.fixture(scope="module")
def env(pg, bulwark_bin, certdir, secret_registry, tmp_path_factory):
    pw = "pw-" + secrets.token_hex(12)
    create_database(pg, DB)
    pg.admin_query(f"create role {SUPER} superuser login password %s", (pw,))
    pg.admin_query(SCHEMA, dbname=DB)
    target = {"host": "127.0.0.1", "port": pg.port, "dbname": DB, "sslmode": "disable"}
    g = start_policy_gateway("gw-policy-proto", bulwark_bin, pg, certdir, secret_registry,
                             tmp_path_factory, targets={DB: target}, policies=[POLICY],
                             passwords={SUPER: pw},
                             settings={"max_statement_bytes": f"{MAX_STATEMENT_BYTES}B"})
    e = Env()
    e.gw, e.pg, e.password = g, pg, pw
    e.ep = g.endpoint(role="proto", target=DB, sub=SUB, application_name="bwit-policy-proto")
    try:
        yield e
    finally:
        try:
            stop_policy_gateway(g)
        finally:
            drop_database(pg, DB)
            pg.admin_query(f"drop role if exists {SUPER}")


@pytest.fixture
def gwc(env):
    """A raw protocol session through the gateway."""
    c = raw_login(env.ep)
    yield c
    c.close()


@pytest.fixture
def pgc(env):
    """The same, directly at PostgreSQL as the gateway's upstream login."""
    c = RawPg("127.0.0.1", env.pg.port)
    c.login(SUPER, env.password, DB, application_name="bwit-policy-proto-direct")
    yield c
    c.close()


@pytest.fixture(autouse=True)
def fresh_log_table(env):
    """Every test starts from the same two rows in public.log."""
    env.pg.admin_query("delete from log where id > 2", dbname=DB)
    yield


def log_ids(env) -> list:
    return [r[0] for r in env.pg.admin_query("select id from log order by id", dbname=DB)]


def assert_refused(c: RawPg, index: int = 0, sqlstate: str = "42501"):
    f = c.errors[index]
    assert f.get("S") == "ERROR" and f.get("C") == sqlstate, f
    assert f.get("M", "").startswith("bulwark:"), f
    return f


def assert_still_works(c: RawPg):
    assert exchange(c, query_msg("SELECT 'still here'"), 1) == ["T", "D", "C:SELECT 1", "Z:I"]


# ---------------------------------------------------------------------------------------
# tests


def test_denied_parse_then_bind_execute_sync_gives_only_error_and_ready(env, gwc, pgc):
    data = extended(DENIED) + SYNC
    got = exchange(gwc, data, 1)
    assert got == ["E:42501", "Z:I"], got  # no ParseComplete, BindComplete, rows or tag
    assert_refused(gwc)
    assert shape(got) == shape(exchange(pgc, extended(SERVER_ERROR) + SYNC, 1))
    # a write refused at Parse: its Bind and Execute never reach the server
    got = exchange(gwc, extended("DELETE FROM log") + SYNC, 1)
    assert got == ["E:42501", "Z:I"], got
    assert log_ids(env) == [1, 2]
    assert_still_works(gwc)


def test_denied_query_pipelined_after_allowed_one_in_same_write_keeps_order(env, gwc, pgc):
    def data(bad):
        return (query_msg("SELECT id FROM log ORDER BY id") + query_msg(bad)
                + query_msg("SELECT 'after'"))
    got = exchange(gwc, data(DENIED), 3)
    assert got == ["T", "D", "D", "C:SELECT 2", "Z:I", "E:42501", "Z:I",
                   "T", "D", "C:SELECT 1", "Z:I"], got
    assert_refused(gwc)
    assert shape(got) == shape(exchange(pgc, data(SERVER_ERROR), 3))


def test_denied_parse_pipelined_between_sync_groups_keeps_order(env, gwc, pgc):
    def data(bad):
        return (extended("SELECT id FROM log WHERE id = $1", params=[1]) + SYNC
                + extended(bad) + SYNC + extended("SELECT 'after'") + SYNC)
    got = exchange(gwc, data(DENIED), 3)
    assert got == ["1", "2", "T", "D", "C:SELECT 1", "Z:I", "E:42501", "Z:I",
                   "1", "2", "T", "D", "C:SELECT 1", "Z:I"], got
    assert_refused(gwc)
    assert shape(got) == shape(exchange(pgc, data(SERVER_ERROR), 3))


def test_denied_parse_in_same_sync_group_aborts_the_implicit_transaction(env, gwc, pgc):
    # An allowed INSERT, then a refused statement, one Sync: as with a server-side error,
    # the INSERT ran but its implicit transaction rolls back.
    def data(bad, row):
        return extended(f"INSERT INTO log VALUES ({row}, 'implicit')") + extended(bad) + SYNC
    got = exchange(gwc, data(DENIED, 10), 1)
    assert got == ["1", "2", "n", "C:INSERT 0 1", "E:42501", "Z:I"], got
    assert_refused(gwc)
    assert shape(got) == shape(exchange(pgc, data(SERVER_ERROR, 11), 1))
    assert log_ids(env) == [1, 2]


def test_denied_statement_inside_begin_then_commit_reports_rollback(env, gwc, pgc):
    def run(c, bad, row):
        seq = []
        for q in ("BEGIN", f"INSERT INTO log VALUES ({row}, 'in txn')", bad, "SELECT 1",
                  "COMMIT"):
            seq += exchange(c, query_msg(q), 1)
        return seq
    got = run(gwc, DENIED, 20)
    assert got == ["C:BEGIN", "Z:T", "C:INSERT 0 1", "Z:T", "E:42501", "Z:E",
                   # the server agrees the transaction is aborted
                   "E:25P02", "Z:E",
                   "C:ROLLBACK", "Z:I"], got
    assert shape(got) == shape(run(pgc, SERVER_ERROR, 21))
    assert log_ids(env) == [1, 2], "the aborted transaction's INSERT is visible"
    assert_still_works(gwc)


def test_denied_parse_inside_begin_then_commit_reports_rollback(env, gwc, pgc):
    def run(c, bad, row):
        seq = exchange(c, query_msg("BEGIN"), 1)
        seq += exchange(c, extended(f"INSERT INTO log VALUES ({row}, 'in txn')") + extended(bad)
                        + SYNC, 1)
        seq += exchange(c, query_msg("COMMIT"), 1)
        return seq
    got = run(gwc, DENIED, 22)
    assert got == ["C:BEGIN", "Z:T", "1", "2", "n", "C:INSERT 0 1", "E:42501", "Z:E",
                   "C:ROLLBACK", "Z:I"], got
    assert shape(got) == shape(run(pgc, SERVER_ERROR, 23))
    assert log_ids(env) == [1, 2]


def test_denied_named_statement_rebound_later_is_refused_again(env, gwc, pgc):
    def prepare(c, sql):
        return exchange(c, parse("s_del", sql) + SYNC, 1)

    def rebind(c):
        return exchange(c, bind("", "s_del") + execute() + SYNC, 1)

    got = prepare(gwc, "DELETE FROM log")
    assert got == ["E:42501", "Z:I"], got
    assert_refused(gwc)
    # later, in new Sync groups, without a new Parse: refused again, nothing runs
    for _ in range(2):
        got = rebind(gwc)
        assert got == ["E:42501", "Z:I"], got
        assert_refused(gwc)
    assert log_ids(env) == [1, 2]
    # PostgreSQL: the failed Parse left no statement behind, so Bind fails the same way
    assert shape(prepare(pgc, SERVER_ERROR)) == ["E", "Z:I"]
    assert shape(rebind(pgc)) == ["E", "Z:I"]
    # Describe of it is an error too, never a description
    got = exchange(gwc, describe("S", "s_del") + SYNC, 1)
    assert len(got) == 2 and got[0].startswith("E:") and got[1] == "Z:I", got
    # the name can be parsed anew with an allowed statement, and then it runs
    got = exchange(gwc, parse("s_del", "SELECT count(*) FROM log") + SYNC, 1)
    assert got == ["1", "Z:I"], got
    got = exchange(gwc, bind("", "s_del") + execute() + SYNC, 1)
    assert got == ["2", "D", "C:SELECT 1", "Z:I"], got


def test_multi_statement_query_with_denied_part_runs_nothing(env, gwc):
    for q in ("INSERT INTO log VALUES (30, 'x'); DROP TABLE log",
              "INSERT INTO log VALUES (31, 'x'); SELECT * FROM secrets",
              "SELECT * FROM secrets; INSERT INTO log VALUES (32, 'x')",
              "BEGIN; INSERT INTO log VALUES (33, 'x'); DELETE FROM log; COMMIT"):
        got = exchange(gwc, query_msg(q), 1)
        assert got == ["E:42501", "Z:I"], (q, got)  # not even the first part's result
        assert_refused(gwc)
    assert log_ids(env) == [1, 2]
    assert env.pg.admin_query("select to_regclass('public.log') is not null", dbname=DB)[0][0]
    # an all-allowed string runs whole
    got = exchange(gwc, query_msg("INSERT INTO log VALUES (34, 'x'); SELECT count(*) FROM log"),
                   1)
    assert got == ["C:INSERT 0 1", "T", "D", "C:SELECT 1", "Z:I"], got
    assert log_ids(env) == [1, 2, 34]


@pytest.mark.parametrize("sql", ["SELECT * FROM log WHERE", "SELECT id FROM log ORDER BY",
                                 "SELEC 1", "SELECT 1; SELECT 'unterminated"])
def test_parse_error_is_42601_with_the_position_as_postgresql_reports_it(env, gwc, pgc, sql):
    got = exchange(gwc, query_msg(sql), 1)
    assert got == ["E:42601", "Z:I"], got
    mine = gwc.errors[0]
    assert exchange(pgc, query_msg(sql), 1) == ["E:42601", "Z:I"]
    theirs = pgc.errors[0]
    assert mine.get("P") and mine.get("P") == theirs.get("P"), (mine, theirs)
    assert mine.get("M") == theirs.get("M"), (mine, theirs)
    # and through Parse
    got = exchange(gwc, extended(sql) + SYNC, 1)
    assert got == ["E:42601", "Z:I"], got
    assert gwc.errors[0].get("P") == theirs.get("P"), gwc.errors[0]
    assert_still_works(gwc)


# docs/configuration.md: longer statements are refused with ERROR 54000 without being parsed.
# The sizes: just over the limit; over it but within what the gateway buffers of one
# message (256 KiB); beyond that (the message is skipped as it streams in).
@pytest.mark.parametrize("size", [MAX_STATEMENT_BYTES + 100, 200 * 1024, 400 * 1024],
                         ids=["just-over", "200KiB", "400KiB"])
def test_statement_over_max_statement_bytes_is_refused_with_54000(env, gwc, size):
    pad = "x" * (size - len("INSERT INTO log VALUES (40, '')"))
    sql = f"INSERT INTO log VALUES (40, '{pad}')"
    assert len(sql) == size
    got = exchange(gwc, query_msg(sql), 1)
    assert got == ["E:54000", "Z:I"], (got, gwc.errors)
    assert_refused(gwc, sqlstate="54000")
    assert_still_works(gwc)
    got = exchange(gwc, extended(sql) + SYNC, 1)
    assert got == ["E:54000", "Z:I"], (got, gwc.errors)
    assert_refused(gwc, sqlstate="54000")
    assert_still_works(gwc)
    assert log_ids(env) == [1, 2]


def test_statement_at_max_statement_bytes_is_decided_normally(env, gwc):
    head = "INSERT INTO log VALUES (41, '"
    sql = head + "y" * (MAX_STATEMENT_BYTES - len(head) - 2) + "')"
    assert len(sql) == MAX_STATEMENT_BYTES
    assert exchange(gwc, query_msg(sql), 1) == ["C:INSERT 0 1", "Z:I"]
    assert log_ids(env) == [1, 2, 41]


def test_function_call_message_is_refused(env, gwc):
    oid = env.pg.admin_query("select 'pg_catalog.pg_terminate_backend(int4, int8)'"
                             "::regprocedure::oid")[0][0]
    victim = RawPg("127.0.0.1", env.pg.port)
    victim.login(SUPER, env.password, DB, application_name="bwit-policy-proto-victim")
    try:
        pid = victim.query("select pg_backend_pid()")[0][0][0]
        got = exchange(gwc, function_call(oid, [pid, 0]), 1)
        assert got == ["E:42501", "Z:I"], got
        assert_refused(gwc)
        assert victim.query("select 'alive'")[0] == [["alive"]]
    finally:
        victim.close()
    assert_still_works(gwc)


@pytest.mark.parametrize("sql", ["EXECUTE nope", "EXECUTE nope(1)",
                                 "EXPLAIN ANALYZE EXECUTE nope"])
def test_execute_of_an_unknown_prepared_statement_is_denied(env, gwc, pgc, sql):
    got = exchange(gwc, query_msg(sql), 1)
    assert got == ["E:42501", "Z:I"], got
    assert_refused(gwc)
    assert shape(got) == shape(exchange(pgc, query_msg(sql), 1))  # 26000 there


def test_prepare_of_a_denied_statement_is_denied_and_never_executes(env, gwc):
    got = exchange(gwc, query_msg("PREPARE d AS DELETE FROM log WHERE id = $1"), 1)
    assert got == ["E:42501", "Z:I"], got
    assert_refused(gwc)
    for q in ("EXECUTE d(1)", "EXECUTE d"):
        got = exchange(gwc, query_msg(q), 1)
        assert got == ["E:42501", "Z:I"], (q, got)
        assert_refused(gwc)
    assert log_ids(env) == [1, 2]
    # an allowed PREPARE goes through, and its EXECUTE too
    assert exchange(gwc, query_msg("PREPARE ok AS SELECT count(*) FROM log"), 1) == \
        ["C:PREPARE", "Z:I"]
    assert exchange(gwc, query_msg("EXECUTE ok"), 1) == ["T", "D", "C:SELECT 1", "Z:I"]
