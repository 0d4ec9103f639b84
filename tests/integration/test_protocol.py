"""Protocol rules real clients depend on (DESIGN.md section 2), pinned at the message level
with the raw client: ParameterStatus and BackendKeyData, pipelining, Flush without Sync,
row-limited Execute with PortalSuspended, binary parameters and results, named statements
across Sync."""

import struct

from harness import msg, query_msg, raw_login


def cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def parse(name, sql, oids=()):
    return msg(b"P", cstr(name) + cstr(sql) + struct.pack("!H", len(oids))
               + b"".join(struct.pack("!I", o) for o in oids))


def bind(portal, stmt, params=(), param_formats=(), result_formats=()):
    body = cstr(portal) + cstr(stmt)
    body += struct.pack("!H", len(param_formats)) + b"".join(struct.pack("!H", f) for f in param_formats)
    body += struct.pack("!H", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!I", len(p)) + p
    body += struct.pack("!H", len(result_formats)) + b"".join(struct.pack("!H", f) for f in result_formats)
    return msg(b"B", body)


def describe(kind: bytes, name=""):
    return msg(b"D", kind + cstr(name))


def execute(portal="", max_rows=0):
    return msg(b"E", cstr(portal) + struct.pack("!I", max_rows))


SYNC = msg(b"S")
FLUSH = msg(b"H")


def read_until(c, stop: bytes, timeout=10):
    out = []
    while True:
        t, body = c.read_msg(timeout)
        out.append((t, body))
        if t == stop:
            return out


def types(msgs):
    return b"".join(t for t, _ in msgs).decode()


def test_login_relays_parameter_status_and_sends_backend_key_data(gw):
    c = raw_login(gw.endpoint(application_name="bwit-params"))
    try:
        p = c.params
        assert p["server_version"].startswith("15.")
        assert p["client_encoding"] == "UTF8"
        assert p["standard_conforming_strings"] == "on"
        assert p["integer_datetimes"] == "on"
        assert p["application_name"] == "bwit-params"
        for k in ("DateStyle", "TimeZone", "server_encoding", "IntervalStyle"):
            assert k in p
        assert c.backend_key is not None
    finally:
        c.close()


def test_pipelined_simple_queries_in_one_write_are_answered_in_order(gw):
    c = raw_login(gw.endpoint())
    try:
        c.send(query_msg("select 'a'") + query_msg("select 1/0") + query_msg("select 'c'"))
        replies = [read_until(c, b"Z") for _ in range(3)]
        assert types(replies[0]) == "TDCZ" and b"a" in replies[0][1][1]
        assert types(replies[1]) in ("EZ", "TEZ")
        assert types(replies[2]) == "TDCZ" and b"c" in replies[2][1][1]
    finally:
        c.close()


def test_several_sync_groups_in_one_write_keep_order_and_error_isolation(gw):
    c = raw_login(gw.endpoint())
    try:
        c.send(parse("", "select 1") + bind("", "") + execute() + SYNC
               + parse("", "select 1/g from generate_series(0, 0) g") + bind("", "") + execute() + SYNC
               + parse("", "select 3") + bind("", "") + execute() + SYNC)
        g1, g2, g3 = (read_until(c, b"Z") for _ in range(3))
        assert types(g1) == "12DCZ"
        assert types(g2) == "12EZ"
        assert types(g3) == "12DCZ"
    finally:
        c.close()


def test_flush_pushes_replies_out_before_any_sync(gw):
    c = raw_login(gw.endpoint())
    try:
        c.send(parse("s_flush", "select $1::int + 1 as n", [23]) + describe(b"S", "s_flush") + FLUSH)
        # No Sync sent: the replies must still arrive (asyncpg and cursor clients wait here).
        got = [c.read_msg(timeout=5) for _ in range(3)]
        assert types(got) == "1tT"
        c.send(SYNC)
        assert types(read_until(c, b"Z")) == "Z"
    finally:
        c.close()


def test_execute_with_row_limit_suspends_the_portal(gw):
    c = raw_login(gw.endpoint())
    try:
        c.send(parse("", "select g from generate_series(1, 5) g") + bind("p1", "")
               + execute("p1", 2) + FLUSH)
        # ParseComplete, BindComplete, two rows, PortalSuspended: all before any Sync.
        assert types([c.read_msg(5) for _ in range(5)]) == "12DDs"
        c.send(execute("p1", 2) + FLUSH)
        assert types([c.read_msg(5) for _ in range(3)]) == "DDs"
        c.send(execute("p1", 2) + SYNC)
        rest = read_until(c, b"Z")
        assert types(rest) == "DCZ"
        assert rest[1][1].rstrip(b"\0") == b"SELECT 1"
    finally:
        c.close()


def test_binary_parameters_and_results(gw):
    c = raw_login(gw.endpoint())
    try:
        c.send(parse("", "select $1::int4 * 2, $2::text") + bind(
            "", "", params=[struct.pack("!i", 21), b"bin"], param_formats=[1, 0],
            result_formats=[1, 0]) + execute() + SYNC)
        got = read_until(c, b"Z")
        assert types(got) == "12DCZ"
        row = got[2][1]
        assert row == struct.pack("!HI", 2, 4) + struct.pack("!i", 42) + struct.pack("!I", 3) + b"bin"
    finally:
        c.close()


def test_named_statement_outlives_sync_and_runs_without_describe(gw):
    c = raw_login(gw.endpoint())
    try:
        c.send(parse("s_keep", "select $1::text || '!'") + SYNC)
        assert types(read_until(c, b"Z")) == "1Z"
        c.send(query_msg("begin") + query_msg("commit"))
        read_until(c, b"Z")
        read_until(c, b"Z")
        for word in ("one", "two"):
            c.send(bind("", "s_keep", params=[word.encode()]) + execute() + SYNC)
            got = read_until(c, b"Z")
            assert types(got) == "2DCZ"
            assert got[1][1].endswith(word.encode() + b"!")
    finally:
        c.close()
