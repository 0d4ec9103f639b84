"""psql through the gateway: simple queries, multi-statement strings, errors, \\copy, and
LISTEN/NOTIFY delivered to an idle session."""

import select
import time

import psycopg2
import psycopg2.extensions

from harness import CUSTOMERS, psql, wait_for


def ok(r):
    assert r.returncode == 0, f"psql exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r.stdout


def test_simple_query_returns_rows(gw):
    out = ok(psql(gw.endpoint(), "-At", "-c", "select id, name from customers order by id"))
    assert out.splitlines() == [f"{i}|{n}" for i, n, _ in CUSTOMERS]


def test_server_version_and_encoding_reach_the_client(gw):
    out = ok(psql(gw.endpoint(), "-At", "-c", "show server_version", "-c", "show client_encoding",
                  "-c", "select version()"))
    version, encoding, full = out.splitlines()
    assert version.startswith("15.")
    assert encoding == "UTF8"
    assert full.startswith("PostgreSQL 15.")


def test_multi_statement_string_returns_every_result(gw):
    # One simple Query message holding several statements, ending in ";\n".
    out = ok(psql(gw.endpoint(), "-At", "-c", "select 1; select 2;\nselect 'three';\n"))
    assert out.splitlines() == ["1", "2", "three"]


def test_multi_statement_transaction_commits_as_a_whole(gw):
    ep = gw.endpoint()
    ok(psql(ep, "-c", "drop table if exists scratch.multi; create table scratch.multi (v int)"))
    ok(psql(ep, "-c", "begin; insert into scratch.multi values (1); "
                      "insert into scratch.multi values (2); commit;"))
    assert ok(psql(ep, "-At", "-c", "select sum(v) from scratch.multi")).strip() == "3"


def test_error_shows_sqlstate_and_the_session_continues(gw):
    script = ("\\set VERBOSITY verbose\n"
              "select 1/0;\n"
              "select 'after the error';\n"
              "begin;\n"
              "select 1/0;\n"
              "select 'inside the aborted transaction';\n"
              "rollback;\n"
              "select 'after rollback';\n")
    r = psql(gw.endpoint(), "-At", input=script)
    assert "22012" in r.stderr and "division by zero" in r.stderr, r.stderr
    assert "25P02" in r.stderr, "the statement in the aborted transaction must fail with 25P02"
    assert r.stdout.splitlines() == ["after the error", "after rollback"], r.stdout


def test_copy_out_writes_the_rows_to_a_client_file(gw, tmp_path):
    dest = tmp_path / "customers.csv"
    ok(psql(gw.endpoint(), "-c",
            f"\\copy (select id, name, email from customers order by id) to '{dest}' csv"))
    assert dest.read_text().splitlines() == [f"{i},{n},{e}" for i, n, e in CUSTOMERS]


def test_copy_out_of_a_large_table_is_complete(gw, tmp_path):
    dest = tmp_path / "series.txt"
    ok(psql(gw.endpoint(), "-c",
            f"\\copy (select g, md5(g::text) from generate_series(1, 200000) g) to '{dest}'"))
    lines = dest.read_text().splitlines()
    assert len(lines) == 200000
    assert lines[-1].startswith("200000\t")


def test_copy_in_loads_a_client_file(gw, tmp_path):
    n = 50000
    src = tmp_path / "in.csv"
    src.write_text("".join(f"{i},note {i}\n" for i in range(1, n + 1)))
    ep = gw.endpoint()
    ok(psql(ep, "-c", "drop table if exists scratch.copy_in; "
                      "create table scratch.copy_in (id int, note text)"))
    ok(psql(ep, "-c", f"\\copy scratch.copy_in from '{src}' csv"))
    out = ok(psql(ep, "-At", "-c", "select count(*), sum(id), max(note) from scratch.copy_in"))
    assert out.strip() == f"{n}|{n * (n + 1) // 2}|note 9999"


def test_copy_in_with_a_bad_row_fails_and_the_session_continues(gw, tmp_path):
    src = tmp_path / "bad.csv"
    src.write_text("1,ok\nnot-a-number,bad\n3,ok\n")
    ep = gw.endpoint()
    script = ("drop table if exists scratch.copy_bad;\n"
              "create table scratch.copy_bad (id int, note text);\n"
              f"\\copy scratch.copy_bad from '{src}' csv\n"
              "select 'rows: ' || count(*) from scratch.copy_bad;\n")
    r = psql(ep, "-At", input=script)
    assert "invalid input syntax for type integer" in r.stderr, r.stderr
    assert r.stdout.strip() == "rows: 0"


def test_notify_is_delivered_to_an_idle_listener(gw):
    listener = gw.endpoint(application_name="bwit-listener").connect()
    try:
        listener.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
        with listener.cursor() as cur:
            cur.execute("listen bwit_channel")
        # The listener is idle now; the notification must arrive without it sending anything.
        ok(psql(gw.endpoint(), "-c", "notify bwit_channel, 'hello through the gateway'"))
        t0 = time.monotonic()

        def received():
            r, _, _ = select.select([listener], [], [], 0.2)
            if r:
                listener.poll()
            return listener.notifies

        notes = wait_for(received, 5, "the NOTIFY to reach the idle listener")
        assert notes[0].channel == "bwit_channel"
        assert notes[0].payload == "hello through the gateway"
        assert time.monotonic() - t0 < 5
    finally:
        listener.close()
