"""The policy end to end (issue 4, "Tests").

1. The attack corpus tests/fixtures/policy/intent.tsv (role "agent" of policy-agent.json over
   schema.sql) runs through the gateway against a real PostgreSQL whose upstream login for
   the role is a SUPERUSER, so that only Bulwark stands between each statement and the
   damage: once with psycopg2 (simple protocol) and once with node-pg (extended protocol,
   with parameters where the statement has them, plus parameterised cases of our own).
   Afterwards the schema, the data and the cluster's roles, databases and settings are
   checked intact. Each statement is decided in a fresh session, as the corpus means it (a
   new connection after anything that got through and may have changed the session), in a
   database where the schemas the corpus names exist (`evil`), since the gateway skips
   missing ones as PostgreSQL does. The few COPY ... PROGRAM statements are sent only once
   `bulwark explain` has confirmed their refusal: a shell command running as the postgres
   OS user would reach beyond this throwaway cluster.
2. False positives: SQLAlchemy's reflection and what LangChain's SQLDatabase does with it,
   psql's \\d family, LangChain.js SqlDatabase over TypeORM + node-pg, pgbench -S in the
   three query modes, and every statement of tests/fixtures/policy/clients.tsv (captured
   from those clients) are all allowed for the read-only role of policy-readonly.json.

Every refusal is also counted in the gateway's log (event=statement_refused): a statement
expected refused must have been refused by Bulwark, not merely failed upstream, and an
allowed one must not have been.

This module also holds PolicyGateway, a harness.Gateway with its own config (targets,
policy files, settings), which test_policy_protocol.py uses too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
from pathlib import Path
from typing import Optional

import psycopg2
import psycopg2.extensions
import pytest

import harness
from harness import PG_BIN, Gateway, GatewayOptions, node_script, psql, raw_login, run

pytestmark = pytest.mark.gateway_only  # the policy is the gateway's; PostgreSQL has none

FIXTURES = harness.REPO_ROOT / "tests" / "fixtures" / "policy"

E2E_DB = "policy_e2e"   # schema.sql; the attack corpus runs here as a superuser
FP_DB = "policy_fp"     # schema.sql + a view, an index and pgbench tables; read-only role
SUPER = "bw_pe_super"   # the agent role's upstream login: a superuser
READER = "bw_pe_reader"  # the readonly role's upstream login
AGENT_SUB = "svc-agent-e2e"
READONLY_SUB = "svc-readonly-e2e"
REFUSED_EVENT = "event=statement_refused"


# ---------------------------------------------------------------------------------------
# A gateway with a config of our own


class PolicyGateway(Gateway):
    """harness.Gateway, but with the targets, policy files and settings given here.

    targets:   name -> {host, port, dbname, sslmode}
    policies:  list of policy-file dicts (upstream password_file as "../secrets/USER")
    passwords: upstream user -> password, written to secrets/USER
    settings:  extra top-level keys of bulwark.json (e.g. max_statement_bytes)
    """

    def __init__(self, binary, workdir, pg, certdir, registry, *, name, targets, policies,
                 passwords, settings=None):
        super().__init__(binary, workdir, pg, certdir, GatewayOptions(tls=False), registry,
                         name=name)
        self.custom_targets = targets
        self.policies = policies
        self.passwords = passwords
        self.settings = settings or {}

    def targets(self) -> dict:
        return self.custom_targets

    def write_config(self):
        w = self.workdir
        (w / "policies").mkdir(parents=True, exist_ok=True)
        (w / "secrets").mkdir(exist_ok=True)
        self.secret_path.write_text(secrets.token_hex(32))
        self.other_secret_path.write_text(secrets.token_hex(32))
        for user, pw in self.passwords.items():
            p = w / "secrets" / user
            p.write_text(pw)
            p.chmod(0o600)
            self.registry.passwords.add(pw)
        for pol in self.policies:
            (w / "policies" / f"{pol['role']}.json").write_text(json.dumps(pol, indent=2))
        cfg = {
            "listen": f"127.0.0.1:{self.port}",
            "allow_plaintext_on_loopback": True,
            "identity": {
                "issuers": [{"issuer": harness.ISSUER, "audience": harness.AUDIENCE,
                             "hs256_secret_file": "dev.secret"}],
                "leeway": "30s",
                "max_token_lifetime": "24h",
            },
            "targets": self.custom_targets,
            "policy_files": ["policies/*.json"],
            "audit": {"path": "var/audit", "map_size": "256MiB"},
            "login_timeout": f"{harness.LOGIN_TIMEOUT_S}s",
            "shutdown_grace": f"{harness.SHUTDOWN_GRACE_S}s",
            "max_client_conn": 1000,
        }
        cfg.update(self.settings)
        self.config_path.write_text(json.dumps(cfg, indent=2))

    # -- the log ------------------------------------------------------------------------
    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def refusals_since(self, offset: int) -> list:
        return [ln for ln in self.log_since(offset).splitlines() if REFUSED_EVENT in ln]


def start_policy_gateway(request_name, bulwark_bin, pg, certdir, registry, tmp_path_factory,
                         **kw) -> PolicyGateway:
    g = PolicyGateway(bulwark_bin, tmp_path_factory.mktemp(request_name), pg, certdir, registry,
                      name=request_name, **kw)
    g.start()
    return g


def stop_policy_gateway(g: PolicyGateway):
    alive = g.alive()
    status = g.stop()
    assert alive, f"bulwark serve had died before teardown:\n{g.log_tail()}"
    assert status == 0, f"bulwark serve did not exit 0 after SIGTERM ({status}):\n{g.log_tail()}"


def fixture_policy(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def load_schema_sql(pg, dbname: str):
    """schema.sql into dbname, as the superuser. Its CREATE ROLE agent_rw is made
    conditional: the role is cluster-wide and another database may have created it."""
    sql = (FIXTURES / "schema.sql").read_text()
    create_role = "CREATE ROLE agent_rw LOGIN PASSWORD 'agent-rw-secret';"
    if create_role in sql:
        sql = sql.replace(create_role, "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE "
                          "rolname = 'agent_rw') THEN CREATE ROLE agent_rw LOGIN PASSWORD "
                          "'agent-rw-secret'; END IF; END $$;")
    c = pg.admin(dbname)
    try:
        with c.cursor() as cur:
            cur.execute(sql)
    finally:
        c.close()


def create_database(pg, dbname: str):
    c = pg.admin()
    try:
        with c.cursor() as cur:
            cur.execute(f"drop database if exists {dbname} with (force)")
            cur.execute(f"create database {dbname}")
    finally:
        c.close()


def drop_database(pg, dbname: str):
    pg.admin_query(f"drop database if exists {dbname} with (force)")


# ---------------------------------------------------------------------------------------
# corpora


@dataclasses.dataclass
class Case:
    line: int
    expected: str   # allow, deny, review
    sql: str
    role: str
    values: Optional[list] = None  # extended-protocol parameters

    @property
    def label(self) -> str:
        return f"line {self.line}" if self.line else "extra"


def read_corpus(path: Path, role: str) -> list:
    """`expected<TAB>sql` lines; `#` comments; `#role NAME`; `/nl`: `\\n` is a newline
    (the format of tests/unit/test_policy.c)."""
    cases = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("#role "):
            role = line[6:].strip()
            continue
        if not line or line.startswith("#"):
            continue
        expected, sql = line.split("\t", 1)
        if expected.endswith("/nl"):
            expected = expected[:-3]
            sql = sql.replace("\\n", "\n")
        assert expected in ("allow", "deny", "review"), f"{path.name}:{lineno}: {expected!r}"
        cases.append(Case(lineno, expected, sql, role))
    return cases


# Statements that may change the session (settings, prepared statements, cursors, an open
# transaction): after one of them got through, the next case runs on a fresh connection so
# that each is decided as the corpus means it, in a fresh session. Over-inclusive on purpose.
STATEFUL = re.compile(r"\b(set|reset|prepare|execute|declare|begin|start|savepoint|commit|"
                      r"rollback|abort|end|discard|listen|deallocate|fetch|move|close)\b", re.I)
PARAM = re.compile(r"\$(\d+)")


def node_values(sql: str) -> list:
    """Parameters for a corpus statement that has $n of its own (not inside PREPARE)."""
    if sql.lstrip().upper().startswith("PREPARE"):
        return []
    ns = [int(n) for n in PARAM.findall(sql)]
    return [1] * max(ns) if ns else []


# Parameterised statements (extended protocol only): the values travel in Bind, never in the
# text the policy reads; hostile values must change nothing.
INJECTION = "1; DROP TABLE customers; --"
PARAM_CASES = [
    Case(0, "allow", "SELECT id, amount FROM orders WHERE id = $1", "agent", [1]),
    Case(0, "allow", "SELECT id FROM orders WHERE note = $1 OR id = $2", "agent", [INJECTION, 2]),
    Case(0, "allow", "SELECT $1::text AS t, $2::int AS n", "agent", ["DROP TABLE customers", 3]),
    Case(0, "allow", "SELECT name FROM customers WHERE id = ANY($1::int[])", "agent", [[1, 2]]),
    Case(0, "review", "DELETE FROM orders WHERE id = $1", "agent", [3]),
    Case(0, "review", "UPDATE orders SET note = $1 WHERE id = $2", "agent", [INJECTION, 1]),
    Case(0, "deny", "UPDATE orders SET note = $1", "agent", ["x"]),
    Case(0, "deny", "DELETE FROM orders WHERE id = $1 OR true", "agent", [1]),
    Case(0, "deny", "INSERT INTO orders (customer_id, amount) VALUES ($1, $2)", "agent", [1, 1]),
    Case(0, "deny", "SELECT secret FROM audit_internal WHERE id = $1", "agent", [1]),
    Case(0, "deny", "SELECT pg_read_file($1)", "agent", ["/etc/passwd"]),
    Case(0, "deny", "SELECT set_config($1, $2, false)", "agent", ["search_path", "evil"]),
    Case(0, "deny", "SELECT * FROM orders WHERE id = $1; DROP TABLE customers", "agent", [1]),
    Case(0, "deny", "COPY (SELECT * FROM customers WHERE id = $1) TO STDOUT", "agent", [1]),
]


@dataclasses.dataclass
class Outcome:
    ok: bool
    sqlstate: Optional[str] = None
    message: str = ""
    position: Optional[str] = None
    severity: Optional[str] = None
    refusals: int = 0  # statement_refused lines the gateway logged for it

    def show(self) -> str:
        if self.ok:
            return f"ok (refusals logged: {self.refusals})"
        return (f"{self.severity} {self.sqlstate} {self.message!r} position={self.position} "
                f"(refusals logged: {self.refusals})")


def judge(case: Case, out: Outcome, extended: bool) -> Optional[str]:
    """None if the outcome is what SPEC 5 and 8 ask for, else why not."""
    msg = out.message or ""
    if case.expected == "allow":
        if out.refusals:
            return "refused by the gateway"
        if out.sqlstate == "42501" or msg.startswith("bulwark:"):
            return "refused"
        if out.severity == "FATAL":
            return "session ended"
        if out.sqlstate == "42601" and not (
                extended and "cannot insert multiple commands into a prepared statement" in msg):
            return "syntax error for a statement the gateway allowed"
        return None  # ok, or a server-side failure for another reason
    if out.ok:
        return "it ran"
    if out.refusals < 1:
        return "failed upstream but the gateway logged no refusal (it reached PostgreSQL)"
    if case.expected == "review":
        if out.sqlstate != "42501" or not msg.startswith("bulwark: approval required"):
            return ("a review decision (reject mode) must fail closed: 42501 'bulwark: approval "
                    "required ...'")
        return None
    if out.sqlstate == "42501":
        if not msg.startswith("bulwark:"):
            return "42501 without a bulwark: message"
        if "approval required" in msg:
            return "denied statement reported as needing approval"
        return None
    if out.sqlstate in ("42601", "54000", "54001"):
        return None
    return f"unexpected SQLSTATE {out.sqlstate}"


def report(failures: list, total: int, what: str) -> str:
    lines = [f"{len(failures)} of {total} statements went wrong ({what}):"]
    for case, out, why in failures:
        lines.append(f"  {case.label} expected {case.expected}: {why}\n"
                     f"      sql: {case.sql!r}" + (f" values={case.values!r}" if case.values
                                                    else "") + f"\n      got: {out.show()}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# the environment: databases, upstream logins, one gateway


@pytest.fixture(scope="module")
def env(pg, bulwark_bin, certdir, secret_registry, tmp_path_factory):
    pw_super = "pw-" + secrets.token_hex(12)
    pw_reader = "pw-" + secrets.token_hex(12)
    made_agent_rw = not pg.admin_query("select 1 from pg_roles where rolname = 'agent_rw'")
    for db in (E2E_DB, FP_DB):
        create_database(pg, db)
        load_schema_sql(pg, db)
    # The corpus expects `SET search_path = evil, public; SELECT * FROM orders` denied: evil
    # is a candidate. The gateway learns at login which schemas exist and skips missing ones
    # as PostgreSQL does, so make the schemas the corpus names exist, with a decoy orders.
    c = pg.admin(E2E_DB)
    with c.cursor() as cur:
        cur.execute("create schema evil")
        cur.execute("create table evil.orders (id int, secret text)")
        cur.execute("insert into evil.orders values (1, 'decoy')")
    c.close()
    pg.admin_query(f"create role {SUPER} superuser login password %s", (pw_super,))
    pg.admin_query(f"create role {READER} login password %s", (pw_reader,))
    # The false-positive database: what clients.tsv was captured against.
    c = pg.admin(FP_DB)
    with c.cursor() as cur:
        cur.execute("create view order_totals as select customer_id, sum(amount) "
                    "from orders group by customer_id")
        cur.execute("create index orders_placed_on_idx on orders (placed_on)")
    c.close()
    r = run([str(PG_BIN / "pgbench"), "-i", "-q", "-s", "1", "-h", str(pg.datadir),
             "-p", str(pg.port), "-U", "postgres", FP_DB])
    assert r.returncode == 0, f"pgbench -i failed: {r.stderr}{r.stdout}"
    c = pg.admin(FP_DB)
    with c.cursor() as cur:
        cur.execute(f"grant select on all tables in schema public to {READER}")
    c.close()

    agent = fixture_policy("policy-agent.json")
    agent["upstream"] = {E2E_DB: {"user": SUPER, "password_file": f"../secrets/{SUPER}"}}
    # The corpus checks that a review statement does not run unapproved: reject mode answers
    # at once (42501, a request is created) where hold mode would wait for a human
    # (test_approvals.py covers holds).
    for rule in agent["rules"]:
        if rule.get("action") == "review":
            rule["review"]["mode"] = "reject"
    readonly = fixture_policy("policy-readonly.json")
    readonly["upstream"] = {FP_DB: {"user": READER, "password_file": f"../secrets/{READER}"}}
    dba = fixture_policy("policy-dba.json")  # the approver role agent's review rule names
    target = {"host": "127.0.0.1", "port": pg.port, "sslmode": "disable"}
    g = start_policy_gateway("gw-policy-e2e", bulwark_bin, pg, certdir, secret_registry,
                             tmp_path_factory,
                             targets={E2E_DB: {**target, "dbname": E2E_DB},
                                      FP_DB: {**target, "dbname": FP_DB}},
                             policies=[agent, readonly, dba],
                             passwords={SUPER: pw_super, READER: pw_reader})
    g.baseline = snapshot(pg)
    g.agent_ep = g.endpoint(role="agent", target=E2E_DB, sub=AGENT_SUB,
                            application_name="bwit-policy-e2e")
    g.readonly_ep = g.endpoint(role="readonly", target=FP_DB, sub=READONLY_SUB,
                               application_name="bwit-policy-fp")
    try:
        yield g
    finally:
        try:
            stop_policy_gateway(g)
        finally:
            for db in (E2E_DB, FP_DB):
                drop_database(pg, db)
            for role in [SUPER, READER] + (["agent_rw"] if made_agent_rw else []):
                try:
                    pg.admin_query(f"drop role if exists {role}")
                except psycopg2.Error as e:  # it owns what a failed run left behind
                    print(f"teardown: role {role} not dropped: {e}")


# ---------------------------------------------------------------------------------------
# 1. the attack corpus, end to end


# Files the corpus would write if a COPY ... TO/FROM PROGRAM or file went through.
WATCHED_FILES = ["/tmp/x", "/tmp/orders.csv"]

SNAPSHOT_QUERIES = {
    "relations": """
        select n.nspname, c.relname, c.relkind, c.relowner::regrole::text,
               coalesce(c.relacl::text, ''), c.relhastriggers, c.relrowsecurity, c.relhasrules,
               c.relpersistence
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname not in ('pg_catalog', 'information_schema')
          and n.nspname !~ '^pg_(toast|temp_|toast_temp_)' order by 1, 2""",
    "columns": """
        select c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               a.attisdropped, coalesce(pg_get_expr(d.adbin, d.adrelid), '')
        from pg_attribute a join pg_class c on c.oid = a.attrelid
        join pg_namespace n on n.oid = c.relnamespace
        left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
        where n.nspname = 'public' and a.attnum > 0 order by 1, 2""",
    "schemas": """select nspname, nspowner::regrole::text, coalesce(nspacl::text, '')
                  from pg_namespace where nspname !~ '^pg_(toast_)?temp_' order by 1""",
    "functions": """
        select n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where n.nspname not in ('pg_catalog', 'information_schema') order by 1, 2, 3""",
    "types": """select t.typname from pg_type t join pg_namespace n on n.oid = t.typnamespace
                where n.nspname = 'public' order by 1""",
    "constraints": """select conrelid::regclass::text, conname, pg_get_constraintdef(oid)
                      from pg_constraint where connamespace in
                        (select oid from pg_namespace where nspname = 'public')
                      order by 1, 2""",
    "triggers": "select tgrelid::regclass::text, tgname, tgenabled from pg_trigger order by 1, 2",
    "rules": """select c.relname, r.rulename from pg_rewrite r
                join pg_class c on c.oid = r.ev_class
                join pg_namespace n on n.oid = c.relnamespace
                where n.nspname not in ('pg_catalog', 'information_schema') order by 1, 2""",
    "row_policies": "select polrelid::regclass::text, polname from pg_policy order by 1, 2",
    "comments": """select classoid::regclass::text, objoid, objsubid, description
                   from pg_description where objoid >= 16384 order by 1, 2, 3""",
    "security_labels": "select objoid, provider, label from pg_seclabel order by 1",
    "ext_statistics": "select stxname from pg_statistic_ext order by 1",
    "extensions": "select extname from pg_extension order by 1",
    "event_triggers": "select evtname from pg_event_trigger order by 1",
    "publications": "select pubname from pg_publication order by 1",
    "foreign_servers": "select srvname from pg_foreign_server order by 1",
    "user_mappings": "select umuser, umserver from pg_user_mapping order by 1, 2",
    "default_acl": "select defaclrole, defaclobjtype, defaclacl::text from pg_default_acl",
    "sequence_definitions": """select schemaname, sequencename, start_value, increment_by,
                                      min_value, max_value, cycle
                               from pg_sequences order by 1, 2""",
    "large_objects": "select oid from pg_largeobject_metadata order by 1",
    # cluster-wide
    "roles": """select rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin,
                       rolreplication, rolbypassrls, coalesce(rolpassword, '')
                from pg_authid order by 1""",
    "role_members": """select roleid::regrole::text, member::regrole::text from pg_auth_members
                       order by 1, 2""",
    "role_settings": """select setdatabase, setrole, setconfig::text from pg_db_role_setting
                        order by 1, 2""",
    "databases": """select datname, datdba::regrole::text, coalesce(datacl::text, '')
                    from pg_database order by 1""",
    "subscriptions": "select subname from pg_subscription order by 1",
    "prepared_xacts": "select gid from pg_prepared_xacts order by 1",
    "replication_slots": "select slot_name from pg_replication_slots order by 1",
    "auto_conf": """select name, setting from pg_file_settings
                    where sourcefile like '%postgresql.auto.conf' order by 1""",
    # the data
    "data": """
        select 'customers', count(*), md5(coalesce(string_agg(t::text, '|' order by t.id), ''))
          from public.customers t
        union all
        select 'orders', count(*), md5(coalesce(string_agg(t::text, '|' order by t.id), ''))
          from public.orders t
        union all
        select 'audit_internal', count(*),
               md5(coalesce(string_agg(t::text, '|' order by t.id), ''))
          from public.audit_internal t""",
}


def snapshot(pg) -> dict:
    c = pg.admin(E2E_DB)
    out = {}
    try:
        with c.cursor() as cur:
            for k, q in SNAPSHOT_QUERIES.items():
                cur.execute(q)
                out[k] = cur.fetchall()
            cur.execute("select sequencename, last_value from pg_sequences "
                        "where schemaname = 'public'")
            out["_sequence_values"] = dict(cur.fetchall())
    finally:
        c.close()
    out["_files"] = {}
    for f in WATCHED_FILES:
        try:
            st = os.stat(f)
            out["_files"][f] = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            out["_files"][f] = None
    return out


def intent_cases() -> list:
    return read_corpus(FIXTURES / "intent.tsv", "agent")


# A COPY ... PROGRAM that got through would run a shell command as the postgres OS user
# (`rm -rf /` is in the corpus), which on a shared machine reaches beyond this throwaway
# cluster. Those few are sent only once `bulwark explain` (the gate's own policy_check) has
# confirmed it denies them; the gateway is then tested on them like on everything else.
SHELL = re.compile(r"\bPROGRAM\b", re.I)


def unsafe_to_send(gw, case) -> Optional[str]:
    if not SHELL.search(case.sql):
        return None
    r = run([str(gw.binary), "explain", "-c", str(gw.config_path), "--role", case.role,
             "--json", case.sql], cwd=str(gw.workdir))
    try:
        decision = json.loads(r.stdout)["decision"]
    except (ValueError, KeyError):
        return f"not sent: bulwark explain failed ({r.returncode}): {r.stderr.strip()}"
    if decision != "deny":
        return f"not sent: bulwark explain says {decision} for a shell command"
    return None


def simple_outcome(gw, conn, sql) -> tuple:
    """Run sql on conn (psycopg2, autocommit); (Outcome, conn still usable)."""
    off = gw.log_size()
    usable = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
        out = Outcome(ok=True)
    except psycopg2.Error as e:
        d = e.diag
        out = Outcome(ok=False, sqlstate=e.pgcode, message=d.message_primary or str(e).strip(),
                      position=d.statement_position, severity=d.severity)
        usable = not conn.closed and e.pgcode is not None and d.severity != "FATAL"
    if usable and conn.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
        usable = False  # leave no transaction behind: start afresh
    out.refusals = len(gw.refusals_since(off))
    return out, usable


def raw_simple_outcome(gw, ep, sql) -> Outcome:
    """psycopg2 will not send an empty query string; RawPg does."""
    off = gw.log_size()
    c = raw_login(ep)
    try:
        c.query(sql)
        out = Outcome(ok=True)
    except harness.PgError as e:
        out = Outcome(ok=False, sqlstate=e.sqlstate, message=e.fields.get("M", ""),
                      position=e.fields.get("P"), severity=e.severity)
    finally:
        c.close()
    out.refusals = len(gw.refusals_since(off))
    return out


def test_attack_corpus_through_psycopg2_simple_protocol_decides_every_statement(env):
    cases = intent_cases()
    assert len(cases) >= 480, f"intent.tsv shrank to {len(cases)} statements"
    failures, conn, connections = [], None, 0
    try:
        for case in cases:
            unsafe = unsafe_to_send(env, case)
            if unsafe:
                failures.append((case, Outcome(ok=False), unsafe))
                continue
            if not case.sql.strip():
                out = raw_simple_outcome(env, env.agent_ep, case.sql)
            else:
                if conn is None:
                    conn = env.agent_ep.connect()
                    conn.autocommit = True
                    connections += 1
                out, usable = simple_outcome(env, conn, case.sql)
                if not usable or (not out.refusals and STATEFUL.search(case.sql)):
                    conn.close()
                    conn = None
            why = judge(case, out, extended=False)
            if why:
                failures.append((case, out, why))
    finally:
        if conn is not None:
            conn.close()
    print(f"psycopg2: {len(cases)} statements on {connections} connections, "
          f"{len(failures)} failures")
    assert not failures, report(failures, len(cases), "psycopg2, simple protocol")


def test_attack_corpus_through_node_pg_extended_protocol_decides_every_statement(env, tmp_path):
    cases = intent_cases()
    for c in cases:
        c.values = node_values(c.sql)
    cases += PARAM_CASES
    unsafe = [(c, Outcome(ok=False), why) for c in cases
              for why in [unsafe_to_send(env, c)] if why]
    assert not unsafe, report(unsafe, len(cases), "node-pg, extended protocol")
    path = tmp_path / "cases.json"
    path.write_text(json.dumps([{"id": i, "text": c.sql, "values": c.values or [],
                                 "stateful": bool(STATEFUL.search(c.sql))}
                                for i, c in enumerate(cases)]))
    res = node_script("policy_checks.js", env.agent_ep, timeout=300,
                      extra_env={"POLICY_CASES": str(path),
                                 "POLICY_GATEWAY_LOG": str(env.log_path)})
    assert "fatal" not in res, res
    failures = node_failures(cases, res)
    print(f"node-pg: {len(cases)} statements ({len(PARAM_CASES)} parameterised cases of our "
          f"own, {sum(1 for c in cases if c.values)} with parameters in all) on "
          f"{res['connections']} connections, {len(failures)} failures")
    assert not failures, report(failures, len(cases), "node-pg, extended protocol")


def node_failures(cases, res) -> list:
    results = res["results"]
    assert [r["id"] for r in results] == list(range(len(cases)))
    failures = []
    for r in results:
        case = cases[r["id"]]
        if r.get("ok"):
            out = Outcome(ok=True)
        else:
            e = r["error"]
            out = Outcome(ok=False, sqlstate=e["code"], message=e["message"],
                          position=e["position"], severity=e["severity"])
        out.refusals = r["refusals"]
        why = judge(case, out, extended=True)
        if why:
            failures.append((case, out, why))
    return failures


def test_schema_data_and_cluster_are_intact_after_the_corpus(env, pg):
    """Runs after both corpus runs (file order): nothing the corpus sent changed anything."""
    after = snapshot(pg)
    before = env.baseline
    changed = []
    for k in SNAPSHOT_QUERIES:
        if before[k] != after[k]:
            gone = [r for r in before[k] if r not in after[k]]
            new = [r for r in after[k] if r not in before[k]]
            changed.append(f"{k}: gone {gone[:10]} new {new[:10]}")
    assert not changed, "the corpus changed the database:\n" + "\n".join(changed)
    # nextval() is allowed (and runs); setval() and ALTER SEQUENCE RESTART are not.
    for seq, v in before["_sequence_values"].items():
        assert (after["_sequence_values"][seq] or 0) >= (v or 0), f"sequence {seq} went back"
    assert after["_files"] == before["_files"], "a COPY to/from a server file or PROGRAM ran"
    tables = {(r[0], r[1]) for r in after["relations"] if r[2] == "r"}
    assert tables == {("public", "customers"), ("public", "orders"),
                      ("public", "audit_internal"), ("evil", "orders")}
    counts = {r[0]: r[1] for r in after["data"]}
    assert counts == {"customers": 3, "orders": 3, "audit_internal": 1}


def test_schema_created_after_login_is_still_a_candidate_for_unqualified_names(env, pg):
    """SPEC 5.1: an unqualified name is checked against every schema of the search_path that
    could hold it. A schema created (by someone else) after the session logged in is such a
    schema: `SELECT * FROM orders` with search_path `late, public` reads late.orders, which no
    rule allows, so it must be refused. Runs after the intact check: it adds a schema."""
    conn = env.agent_ep.connect()
    conn.autocommit = True
    try:
        pg.admin_query("create schema late; create table late.orders (id int, secret text); "
                       "insert into late.orders values (1, 'late-decoy')", dbname=E2E_DB)
        with conn.cursor() as cur:
            cur.execute("SET search_path = late, public")
            off = env.log_size()
            try:
                cur.execute("SELECT * FROM orders")
                got = f"rows {cur.fetchall()!r}"
            except psycopg2.Error as e:
                got = f"{e.pgcode} {e.diag.message_primary}"
        assert got.startswith("42501 bulwark:"), (
            "SET search_path = late, public; SELECT * FROM orders, schema late created after "
            f"login: expected 42501, got {got}; refusals logged: {env.refusals_since(off)}")
    finally:
        conn.close()
        pg.admin_query("drop schema if exists late cascade", dbname=E2E_DB)


# ---------------------------------------------------------------------------------------
# 2. false positives: real clients, read-only role with catalog_reads


def assert_no_refusals(gw, off, what):
    refused = gw.refusals_since(off)
    assert not refused, f"{what}: the gateway refused statements:\n" + "\n".join(refused)


def test_sqlalchemy_reflection_and_langchain_sqldatabase_are_allowed(env):
    from sqlalchemy import MetaData, create_engine, inspect, select, text
    from sqlalchemy.schema import CreateTable

    off = env.log_size()
    eng = create_engine(env.readonly_ep.with_(application_name="bwit-policy-sqla")
                        .uri("postgresql+psycopg2"))
    try:
        # SQLAlchemy's Inspector, every reflection call (what SQLDatabase builds on).
        insp = inspect(eng)
        tables = insp.get_table_names()
        assert {"customers", "orders", "audit_internal", "pgbench_accounts"} <= set(tables)
        assert insp.get_view_names() == ["order_totals"]
        assert "public" in insp.get_schema_names()
        assert "orders_id_seq" in insp.get_sequence_names()
        for t in tables + ["order_totals"]:
            assert insp.get_columns(t)
            insp.get_pk_constraint(t)
            insp.get_foreign_keys(t)
            insp.get_indexes(t)
            insp.get_unique_constraints(t)
            insp.get_check_constraints(t)
            insp.get_table_comment(t)
            assert insp.has_table(t)
        # LangChain SQLDatabase: reflect (views too), table info = CREATE TABLE text plus
        # select(table).limit(3) per table, then run() in a transaction.
        md = MetaData()
        md.reflect(bind=eng, views=True)
        assert "order_totals" in md.tables
        for table in md.sorted_tables:
            str(CreateTable(table).compile(eng))
            with eng.connect() as conn:
                conn.execute(select(table).limit(3)).fetchall()
        with eng.begin() as conn:
            rows = conn.execute(text("SELECT c.name, count(o.id) AS n FROM customers c "
                                     "LEFT JOIN orders o ON o.customer_id = c.id "
                                     "GROUP BY c.name ORDER BY c.name LIMIT 10")).fetchall()
        assert len(rows) == 3
    finally:
        eng.dispose()
    assert_no_refusals(env, off, "SQLAlchemy / SQLDatabase")


PSQL_META = [r"\d", r"\dt", r"\dt+", r"\d+ orders", r"\d orders", r"\d customers",
             r"\d+ customers", r"\d order_totals", r"\dn", r"\dn+", r"\df", r"\df+", r"\dv",
             r"\di", r"\ds", r"\l", r"\l+", r"\du", r"\dx", r"\dT", r"\dp", r"\dd",
             r"\d orders_pkey", r"\sf pg_catalog.lower(text)", r"\dm", r"\dg", r"\dconfig"]


def test_psql_describe_family_is_allowed(env):
    off = env.log_size()
    ep = env.readonly_ep.with_(application_name="bwit-policy-psql")
    args = []
    for m in PSQL_META:
        args += ["-c", m]
    r = psql(ep, "-v", "ON_ERROR_STOP=1", *args)
    assert r.returncode == 0, f"psql failed ({r.returncode}):\n{r.stderr}"
    assert "bulwark" not in r.stderr, r.stderr
    assert "order_totals" in r.stdout and "orders_pkey" in r.stdout
    assert_no_refusals(env, off, "psql \\d family")


def test_langchain_js_sqldatabase_over_typeorm_is_allowed(env):
    off = env.log_size()
    out = node_script("langchain_sqldb.js", env.readonly_ep.with_(application_name="bwit-lcjs"))
    assert "fatal" not in out, out
    assert {"customers", "orders", "order_totals"} <= set(out["tables"])
    assert 'CREATE TABLE "public"."orders"' in out["tableInfo"]
    assert out["run"] == [{"id": 1, "name": "Alice Archer"}, {"id": 2, "name": "Bob Baker"}]
    # its deliberate error is the server's division by zero, not a refusal
    assert out["runError"] is not None and "division by zero" in out["runError"]["message"]
    assert out["afterError"] == [{"n": 3}]
    assert_no_refusals(env, off, "LangChain.js SqlDatabase")


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_select_only_is_allowed_in_query_mode(env, mode):
    off = env.log_size()
    ep = env.readonly_ep.with_(application_name="bwit-policy-pgbench")
    r = run([str(PG_BIN / "pgbench"), "-n", "-S", "-M", mode, "-c", "2", "-j", "2", "-t", "100"],
            env=ep.env())
    assert r.returncode == 0, f"pgbench -M {mode} failed ({r.returncode}):\n{r.stderr}{r.stdout}"
    assert re.search(r"number of transactions actually processed: 200/200", r.stdout), r.stdout
    assert re.search(r"number of failed transactions: 0\b", r.stdout), r.stdout
    assert_no_refusals(env, off, f"pgbench -S -M {mode}")


def test_captured_client_statements_replayed_through_psycopg2_are_allowed(env):
    """clients.tsv in capture order on one connection (it holds its own BEGIN/COMMIT)."""
    cases = read_corpus(FIXTURES / "clients.tsv", "readonly")
    assert all(c.role == "readonly" for c in cases)
    failures, conn = [], None
    try:
        for case in cases:
            if conn is None:
                conn = env.readonly_ep.connect()
                conn.autocommit = True
            off = env.log_size()
            try:
                with conn.cursor() as cur:
                    cur.execute(case.sql)
                out = Outcome(ok=True)
            except psycopg2.Error as e:
                out = Outcome(ok=False, sqlstate=e.pgcode, message=e.diag.message_primary or "",
                              severity=e.diag.severity)
                if conn.closed or e.pgcode is None:
                    conn = None
                elif conn.get_transaction_status() == \
                        psycopg2.extensions.TRANSACTION_STATUS_INERROR:
                    conn.cursor().execute("ROLLBACK")
            out.refusals = len(env.refusals_since(off))
            why = judge(case, out, extended=False)
            if why:
                failures.append((case, out, why))
    finally:
        if conn is not None:
            conn.close()
    assert not failures, report(failures, len(cases), "clients.tsv, psycopg2")


def test_captured_client_statements_replayed_through_node_pg_are_allowed(env, tmp_path):
    cases = [c for c in read_corpus(FIXTURES / "clients.tsv", "readonly")]
    path = tmp_path / "cases.json"
    path.write_text(json.dumps([{"id": i, "text": c.sql, "values": node_values(c.sql),
                                 "stateful": False} for i, c in enumerate(cases)]))
    res = node_script("policy_checks.js", env.readonly_ep,
                      extra_env={"POLICY_CASES": str(path),
                                 "POLICY_GATEWAY_LOG": str(env.log_path)})
    assert "fatal" not in res, res
    failures = node_failures(cases, res)
    assert not failures, report(failures, len(cases), "clients.tsv, node-pg")
