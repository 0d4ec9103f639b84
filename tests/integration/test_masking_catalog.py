"""The shared masking catalog (issue 5 item 1, docs/masking.md "The shared catalog").

One gateway-owned connection per target reads the catalog; every session of the target uses
that snapshot:

- two sessions of one target share one read (the gateway log shows one catalog read, no
  in-band read by either session, and PostgreSQL shows the gateway's own connection);
- a view created by session A is masked correctly in session B, which did no DDL itself,
  after the refresh that A's DDL triggers (catalog_refresh is an hour here, so only the DDL
  can have caused it); until then B sees the view masked whole, never its values;
- session A, which ran the DDL, reads its own catalog in-band and masks its temporary view
  at once;
- the catalog connection refused (its user may no longer log in, its backend terminated):
  once the last snapshot is older than its bound the relations are masked whole, and
  masked correctly again once the catalog can be read.
"""

from __future__ import annotations

import re
import secrets
import time

import psycopg2
import pytest

import harness
from test_policy_e2e import (create_database, drop_database, load_schema_sql,
                             start_policy_gateway, stop_policy_gateway)

pytestmark = pytest.mark.gateway_only

DB = "mask_catalog"
READER = "bw_cat_reader"


def policy(name: str, sub: str) -> dict:
    return {
        "role": name,
        "identities": [{"iss": harness.ISSUER, "sub": sub}],
        "upstream": {DB: {"user": READER, "password_file": f"../secrets/{READER}"}},
        "default": "deny",
        "rules": [{"id": "read", "action": "allow", "operations": ["select"],
                   "relations": ["public.*"]},
                  {"id": "scratch", "action": "allow",
                   "operations": ["select", "insert", "ddl"],
                   "relations": ["scratch.*", "pg_temp.*"]}],
        "masks": [{"column": "public.customers.ssn", "method": "fixed", "value": "[ssn]"},
                  {"column": "scratch.people.secret", "method": "fixed", "value": "[secret]"}],
    }


@pytest.fixture(scope="module")
def db(pg):
    pw = "pw-" + secrets.token_hex(12)
    create_database(pg, DB)
    load_schema_sql(pg, DB)
    pg.admin_query(f"drop role if exists {READER}")
    pg.admin_query(f"create role {READER} login password %s", (pw,))
    c = pg.admin(DB)
    with c.cursor() as cur:
        cur.execute("create schema scratch")
        cur.execute(f"grant usage, create on schema scratch to {READER}")
        cur.execute(f"grant usage on schema public to {READER}")
        cur.execute(f"grant select on all tables in schema public to {READER}")
    c.close()
    try:
        yield pw
    finally:
        drop_database(pg, DB)
        try:
            pg.admin_query(f"drop role if exists {READER}")
        except psycopg2.Error as e:
            print(f"teardown: role {READER} not dropped: {e}")


def gateway(name, bulwark_bin, pg, certdir, secret_registry, tmp_path_factory, pw, refresh,
            workers=1):
    target = {"host": "127.0.0.1", "port": pg.port, "sslmode": "disable", "dbname": DB}
    metrics_port = harness.free_port()
    g = start_policy_gateway(name, bulwark_bin, pg, certdir, secret_registry,
                             tmp_path_factory, targets={DB: target},
                             policies=[policy("cat_a", "svc-cat-a"),
                                       policy("cat_b", "svc-cat-b")],
                             passwords={READER: pw},
                             settings={"masking": {"catalog_refresh": refresh},
                                       "workers": workers,
                                       "metrics_listen": f"127.0.0.1:{metrics_port}"})
    g.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    return g


def catalog_reads_metric(g) -> dict:
    import urllib.request
    text = urllib.request.urlopen(g.metrics_url, timeout=10).read().decode()
    out = {}
    for m in re.finditer(r'^bulwark_catalog_reads_total\{target="([^"]*)",result="([^"]*)"\} '
                         r'(\d+)$', text, re.M):
        out[(m.group(1), m.group(2))] = int(m.group(3))
    return out


@pytest.fixture(scope="module")
def gw(db, pg, bulwark_bin, certdir, secret_registry, tmp_path_factory):
    g = gateway("gw-mask-catalog", bulwark_bin, pg, certdir, secret_registry,
                tmp_path_factory, db, "1h", workers=2)
    try:
        yield g
    finally:
        stop_policy_gateway(g)


def connect(g, role: str):
    c = g.endpoint(role=role, target=DB, sub=f"svc-{role.replace('_', '-')}",
                   application_name=f"bwit-{role}").connect()
    c.autocommit = True
    return c


def reads(g) -> list:
    return [ln for ln in g.log_text().splitlines()
            if "event=catalog_read " in ln and f"target={DB}" in ln]


def inband_reads(g) -> list:
    return [ln for ln in g.log_text().splitlines() if "event=mask_catalog " in ln]


def one(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def test_two_sessions_share_one_catalog_read(gw, pg):
    """Sessions of two roles on two worker loops (`workers: 2`; the kernel spreads them)."""
    harness.wait_for(lambda: reads(gw), 15, "the target's first catalog read")
    before = len(reads(gw))
    a, b = connect(gw, "cat_a"), connect(gw, "cat_b")
    more = [connect(gw, "cat_a" if i % 2 else "cat_b") for i in range(6)]
    try:
        ra = one(a, "SELECT id, name, ssn FROM customers ORDER BY id")
        rb = one(b, "SELECT id, name, ssn FROM customers ORDER BY id")
        assert ra == rb and ra, ra
        for c in more:
            assert one(c, "SELECT id, name, ssn FROM customers ORDER BY id") == ra
        assert all(r[2] == "[ssn]" and isinstance(r[0], int) and r[1] != "****"
                   for r in ra), ra
        line = reads(gw)[0]
        m = re.search(r"relations=(\d+) bytes=(\d+) ms=(\d+)", line)
        assert m and int(m.group(1)) > 100, line  # pg_catalog's relations and the tables
        gateway_conns = pg.admin_query(
            "select usename from pg_stat_activity where application_name = 'bulwark catalog' "
            "and datname = %s", (DB,))
    finally:
        for c in [a, b] + more:
            c.close()
    assert len(reads(gw)) == before, "a session made the gateway read the catalog again"
    assert not inband_reads(gw), inband_reads(gw)
    assert gateway_conns == [(READER,)], gateway_conns
    assert catalog_reads_metric(gw) == {(DB, "ok"): before}, catalog_reads_metric(gw)


def test_a_view_created_in_one_session_is_masked_in_another_after_the_refresh(gw, pg):
    b = connect(gw, "cat_b")  # opened first: it holds the snapshot from before the DDL
    a = connect(gw, "cat_a")
    try:
        assert one(b, "SELECT count(*) FROM customers")[0][0] > 0
        n_reads = len(reads(gw))
        with a.cursor() as cur:
            cur.execute("CREATE TABLE scratch.people (id int, secret text)")
            cur.execute("INSERT INTO scratch.people VALUES (1, 'hunter2-shared')")
            cur.execute("CREATE VIEW scratch.pv AS SELECT id, secret AS s FROM scratch.people")
            # the session that ran DDL reads its own catalog: its temporary view at once
            cur.execute("CREATE TEMP VIEW tv AS SELECT id, secret FROM scratch.people")
            cur.execute("SELECT id, secret FROM pg_temp.tv")
            assert cur.fetchall() == [(1, "[secret]")]
            cur.execute("SELECT id, s FROM scratch.pv")
            assert cur.fetchall() == [(1, "[secret]")]
        assert inband_reads(gw), "session A did not read its own catalog after its DDL"
        seen = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            rows = one(b, "SELECT id, s FROM scratch.pv")
            seen.append(rows)
            if rows == [(1, "[secret]")]:
                break
            time.sleep(0.1)
        assert seen[-1] == [(1, "[secret]")], seen[-5:]
        # before the refresh reached B the view was unknown: masked whole, never its value
        assert all(r in ([(1, "[secret]")], [("****", "****")]) for r in seen), seen
        assert len(reads(gw)) > n_reads, "no catalog read after the DDL"
    finally:
        a.close()
        b.close()


def test_catalog_connection_refused_masks_whole_then_recovers(db, pg, bulwark_bin, certdir,
                                                              secret_registry,
                                                              tmp_path_factory):
    g = gateway("gw-mask-catalog-fail", bulwark_bin, pg, certdir, secret_registry,
                tmp_path_factory, db, "1s")
    s = None
    try:
        harness.wait_for(lambda: reads(g), 15, "the target's first catalog read")
        s = connect(g, "cat_a")
        good = one(s, "SELECT id, ssn FROM customers LIMIT 1")
        assert good == [(1, "[ssn]")], good
        # the catalog's user may no longer log in, and its connection is gone
        pg.admin_query(f"alter role {READER} nologin")
        pg.admin_query("select pg_terminate_backend(pid) from pg_stat_activity "
                       "where application_name = 'bulwark catalog' and datname = %s", (DB,))
        seen = []

        def masked_whole():
            rows = one(s, "SELECT id, ssn FROM customers LIMIT 1")
            seen.append(rows)
            return rows == [("****", "****")]
        harness.wait_for(masked_whole, 20, "relations masked whole without a catalog",
                         interval=0.2)
        assert all(r in ([(1, "[ssn]")], [("****", "****")]) for r in seen), seen
        log = g.log_text()
        assert log.count("event=catalog_read_failed") == 1, log  # once per state change
        assert "event=catalog_dropped" in log, log
        pg.admin_query(f"alter role {READER} login")

        def recovered():
            return one(s, "SELECT id, ssn FROM customers LIMIT 1") == [(1, "[ssn]")]
        harness.wait_for(recovered, 20, "masking as configured once the catalog is read again",
                         interval=0.2)
        assert "event=catalog_recovered" in g.log_text()
    finally:
        pg.admin_query(f"alter role {READER} login")
        if s is not None:
            s.close()
        stop_policy_gateway(g)


def test_ddl_from_outside_the_gateway_is_seen_by_a_new_sessions_first_statement(gw, pg):
    """A view made by a client that does not go through the gateway: a session that starts
    afterwards has its first statement wait for a fingerprint check of the catalog, which
    finds the change and reads the catalog once (catalog_refresh is an hour here)."""
    pg.admin_query("create view scratch.outside_v as select id, ssn as x from public.customers",
                   dbname=DB)
    pg.admin_query(f"grant select on scratch.outside_v to {READER}", dbname=DB)
    time.sleep(1.2)  # past the second within which a new session trusts the last check
    n_reads = len(reads(gw))
    s = connect(gw, "cat_b")
    try:
        rows = one(s, "SELECT id, x FROM scratch.outside_v")
        again = one(s, "SELECT id, name FROM customers")
    finally:
        s.close()
    assert rows and all(isinstance(r[0], int) and r[1] == "[ssn]" for r in rows), rows
    assert again and all(r[1] != "****" for r in again), again
    assert len(reads(gw)) == n_reads + 1, reads(gw)[n_reads:]
