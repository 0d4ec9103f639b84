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
from harness import PG_BIN, node_script, psql, raw_login, run
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
             "operations": ["select", "explain", "copy_to"], "relations": ["public.*"]},
            {"id": "scratch-ddl", "action": "allow", "operations": ["ddl", "insert"],
             "relations": ["scratch.*"]},
        ],
        "masks": json.loads((MASK_FIXTURES / "agent-masks.json").read_text()),
    }


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
        cur.execute(f"grant update on customers to {READER}")
    c.close()
    target = {"host": "127.0.0.1", "port": pg.port, "sslmode": "disable", "dbname": DB}
    g = start_policy_gateway("gw-mask-e2e", bulwark_bin, pg, certdir, secret_registry,
                             tmp_path_factory, targets={DB: target},
                             policies=[agent_policy()], passwords={READER: pw},
                             settings={"audit": {"path": "var/audit", "map_size": "256MiB",
                                                 "capture_rows": 50}})
    g.ep = g.endpoint(role="agent", target=DB, sub=SUB, application_name="bwit-mask-e2e")
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


def leaks(text: str, values) -> list:
    return [v for v in values if v and v in text]


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
    assert not leaks(text, SECRETS), text
    assert rows[0][0] == 1 and rows[0][1] == "Alice Archer"
    assert rows[0][2] == "a***@example.com"
    assert rows[0][3] == "************1111"
    assert rows[0][4] == "****"
    assert types[0] == 23 and types[2] == 25
