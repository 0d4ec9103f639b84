"""Test harness for Bulwark's integration tests.

What lives here:
  - PgServer: a throwaway PostgreSQL 15 (scripts/pgtmp.sh) with a small shop schema and one
    user per upstream authentication method;
  - Gateway: `bulwark serve` on a free port with a generated config, secret and policies;
    Direct: the same interface pointing at PostgreSQL itself, so the tests can be checked
    against the real server (pytest --direct);
  - Endpoint: where a client connects and as whom (libpq kwargs, env, URI);
  - RawPg: a struct-based protocol 3.0 client for the malformed-input tests;
  - TcpForwarder: a killable TCP relay to put between the gateway and PostgreSQL;
  - small helpers: free_port, wait_for, rss_kib.

No test should sleep for a fixed time where a condition can be polled: use wait_for.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import psycopg2

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = REPO_ROOT / "scripts"
NODE_DIR = Path(__file__).resolve().parent / "node"
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))

ISSUER = "dev"
AUDIENCE = "bulwark"
SHUTDOWN_GRACE_S = 5
LOGIN_TIMEOUT_S = 15

# Upstream users, one per authentication method pgtmp.sh's pg_hba.conf assigns.
# role name at the gateway -> PostgreSQL user
AUTH_ROLES = {
    "r_scram": "u_scram",
    "r_md5": "u_md5",
    "r_clear": "u_clear",
    "r_trust": "u_trust",
}
OWNER = "app_owner"  # owns the schema; the `app` role's upstream user

CUSTOMERS = [
    (1, "Ada Lovelace", "ada@example.com"),
    (2, "Grace Hopper", "grace@example.com"),
    (3, "Edsger Dijkstra", "edsger@example.com"),
    (4, "Barbara Liskov", "barbara@example.com"),
    (5, "Donald Knuth", "don@example.com"),
]
PRODUCTS = [(1, "keyboard", "49.90"), (2, "mouse", "19.50"), (3, "monitor", "229.00"),
            (4, "cable", "4.99")]
ORDERS_COUNT = 10

SCHEMA_SQL = """
create table customers (id int primary key, name text not null, email text,
                        created_at timestamptz not null default '2024-01-01 00:00:00+00');
create table products (id int primary key, name text not null, price numeric(10,2) not null);
create table orders (id serial primary key, customer_id int not null references customers,
                     product_id int not null references products, qty int not null,
                     ordered_at timestamptz not null default '2024-02-01 12:00:00+00');
create schema scratch;
"""


class GatewayError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------
# small helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond: Callable[[], object], timeout: float, what: str, interval: float = 0.02):
    """Poll cond() until it returns a truthy value (returned) or timeout (AssertionError)."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - keep polling, report the last failure
            last_exc = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def run(cmd, timeout=120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


# ---------------------------------------------------------------------------------------
# Endpoint: where and as whom a client connects


@dataclasses.dataclass
class Endpoint:
    host: str
    port: int
    user: str
    password: Optional[str]
    dbname: str
    sslmode: str = "disable"
    sslrootcert: Optional[str] = None
    application_name: str = "bulwark-tests"

    def with_(self, **kw) -> "Endpoint":
        return dataclasses.replace(self, **kw)

    def kwargs(self, **extra) -> dict:
        """Keyword arguments for psycopg2.connect."""
        d = dict(host=self.host, port=self.port, user=self.user, dbname=self.dbname,
                 sslmode=self.sslmode, application_name=self.application_name,
                 connect_timeout=10)
        if self.password is not None:
            d["password"] = self.password
        if self.sslrootcert:
            d["sslrootcert"] = self.sslrootcert
        d.update(extra)
        return d

    def connect(self, **extra):
        return psycopg2.connect(**self.kwargs(**extra))

    def env(self) -> dict:
        """Environment for psql, pgbench and node-pg (libpq variables)."""
        e = dict(os.environ)
        for k in list(e):
            if k.startswith("PG"):
                del e[k]
        e.update(PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user,
                 PGDATABASE=self.dbname, PGSSLMODE=self.sslmode,
                 PGAPPNAME=self.application_name, PGCONNECT_TIMEOUT="10")
        if self.password is not None:
            e["PGPASSWORD"] = self.password
        if self.sslrootcert:
            e["PGSSLROOTCERT"] = self.sslrootcert
        return e

    def uri(self, scheme="postgresql") -> str:
        from urllib.parse import quote
        auth = quote(self.user, safe="")
        if self.password is not None:
            auth += ":" + quote(self.password, safe="")
        q = f"sslmode={self.sslmode}&application_name={quote(self.application_name)}"
        if self.sslrootcert:
            q += "&sslrootcert=" + quote(self.sslrootcert)
        return f"{scheme}://{auth}@{self.host}:{self.port}/{quote(self.dbname)}?{q}"


# ---------------------------------------------------------------------------------------
# PostgreSQL


class PgServer:
    """A throwaway PostgreSQL 15 started with scripts/pgtmp.sh."""

    def __init__(self, basedir: Path, certdir: Path):
        self.basedir = basedir
        self.datadir = basedir / "pg"
        self.certdir = certdir
        self.port = free_port()
        self.passwords = {u: "pw-" + secrets.token_hex(12) for u in [OWNER, *AUTH_ROLES.values()]}
        self.passwords["u_trust"] = "pw-unused-" + secrets.token_hex(6)

    def start(self):
        r = run([str(SCRIPTS / "pgtmp.sh"), "start", str(self.datadir), str(self.port),
                 "--ssl", str(self.certdir)], timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"pgtmp.sh start failed: {r.stderr}{r.stdout}")
        self.psql_command = r.stdout.strip()

    def stop(self):
        run([str(SCRIPTS / "pgtmp.sh"), "stop", str(self.datadir)], timeout=60)

    def admin(self, dbname="postgres"):
        """A superuser connection over the unix socket (autocommit)."""
        c = psycopg2.connect(host=str(self.datadir), port=self.port, user="postgres",
                             dbname=dbname, application_name="bulwark-tests-admin")
        c.autocommit = True
        return c

    def admin_query(self, sql, args=None, dbname="postgres"):
        c = self.admin(dbname)
        try:
            with c.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchall() if cur.description else None
        finally:
            c.close()

    def setup(self):
        pw = self.passwords
        c = self.admin()
        cur = c.cursor()
        if os.environ.get("BULWARK_TEST_PG_LOG") == "1":  # debugging: connections in the log
            cur.execute("alter system set log_connections = on")
            cur.execute("alter system set log_disconnections = on")
            cur.execute("select pg_reload_conf()")
        cur.execute("create role app_owner login password %s", (pw[OWNER],))
        cur.execute("create role u_scram login password %s", (pw["u_scram"],))
        cur.execute("create role u_clear login password %s", (pw["u_clear"],))
        cur.execute("create role u_trust login")
        cur.execute("set password_encryption = 'md5'")
        cur.execute("create role u_md5 login password %s", (pw["u_md5"],))
        cur.execute("reset password_encryption")
        cur.execute("create database shop owner app_owner")
        cur.execute("create database bench owner app_owner")
        cur.execute("select rolname, left(rolpassword, 6) from pg_authid where rolname like 'u\\_%%'")
        stored = dict(cur.fetchall())
        assert stored["u_md5"].startswith("md5"), "u_md5 must have an MD5 password"
        assert stored["u_scram"].startswith("SCRAM-"), "u_scram must have a SCRAM secret"
        c.close()
        for db in ("shop", "bench"):
            self.admin_query("alter schema public owner to app_owner", dbname=db)
        c = self.admin("shop")
        cur = c.cursor()
        cur.execute("set role app_owner")
        cur.execute(SCHEMA_SQL)
        cur.executemany("insert into customers (id, name, email) values (%s, %s, %s)", CUSTOMERS)
        cur.executemany("insert into products values (%s, %s, %s)", PRODUCTS)
        for i in range(ORDERS_COUNT):
            cur.execute("insert into orders (customer_id, product_id, qty) values (%s, %s, %s)",
                        (i % len(CUSTOMERS) + 1, i % len(PRODUCTS) + 1, i + 1))
        users = ", ".join(AUTH_ROLES.values())
        cur.execute(f"grant usage on schema public, scratch to {users}")
        cur.execute(f"grant select on all tables in schema public to {users}")
        c.close()

    def backends(self, where: str, args=None) -> list:
        return self.admin_query(
            "select pid, usename, application_name, state, query from pg_stat_activity "
            "where backend_type = 'client backend' and pid <> pg_backend_pid() and " + where, args)


# ---------------------------------------------------------------------------------------
# Gateway and its direct stand-in


@dataclasses.dataclass
class GatewayOptions:
    listen_host: str = "127.0.0.1"
    tls: bool = True
    allow_plaintext_on_loopback: bool = True
    forwarder: bool = False  # add target shop_fwd through a killable TcpForwarder
    workers: Optional[int] = None  # "workers" (None: the gateway's default, one per core)


class Direct:
    """Same interface as Gateway, pointing clients at PostgreSQL itself."""

    is_direct = True
    pid = None
    log_path = None
    stopped_by_test = False

    def __init__(self, pg: PgServer, certdir: Path):
        self.pg = pg
        self.certdir = certdir
        self.host = "127.0.0.1"
        self.port = pg.port
        self.forwarder = None

    def endpoint(self, role="app", target="shop", sub="svc-tests", sslmode="disable",
                 host=None, **kw) -> Endpoint:
        user = OWNER if role == "app" else AUTH_ROLES.get(role, role)
        # The gateway's upstream TLS targets, as a direct client would reach them.
        if target == "shop_tls_require":
            target, sslmode = "shop", "require"
        elif target == "shop_tls_verify":
            target, sslmode, host = "shop", "verify-full", "localhost"
            kw["sslrootcert"] = str(self.certdir / "ca.crt")
        return Endpoint(host=host or self.host, port=self.port, user=user,
                        password=self.pg.passwords.get(user), dbname=target, sslmode=sslmode, **kw)

    def wrong_password_endpoint(self, **kw) -> Endpoint:
        return self.endpoint(**kw).with_(password="not-the-password")


class Gateway:
    """`bulwark serve` with a generated config in workdir."""

    is_direct = False

    def __init__(self, binary: Path, workdir: Path, pg: PgServer, certdir: Path,
                 opts: GatewayOptions, registry: "SecretRegistry", name: str = "gw"):
        self.binary = binary
        self.workdir = workdir
        self.pg = pg
        self.certdir = certdir
        self.opts = opts
        self.registry = registry
        self.name = name
        self.host = "127.0.0.1"
        self.port = free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = workdir / "bulwark.log"
        self.config_path = workdir / "bulwark.json"
        self.secret_path = workdir / "dev.secret"
        self.other_secret_path = workdir / "other.secret"
        self.forwarder: Optional[TcpForwarder] = None
        self.other_ca_dir = certdir.parent / "otherca"  # a CA that did not sign PG's cert
        self.down_port = free_port()  # nothing listens here
        self.stopped_by_test = False  # a test that stops it checks the exit itself

    # -- configuration ----------------------------------------------------------------
    def targets(self) -> dict:
        pg = self.pg
        t = {
            "shop": {"host": "127.0.0.1", "port": pg.port, "dbname": "shop", "sslmode": "disable"},
            "bench": {"host": "127.0.0.1", "port": pg.port, "dbname": "bench", "sslmode": "disable"},
            "shop_tls_require": {"host": "127.0.0.1", "port": pg.port, "dbname": "shop",
                                 "sslmode": "require"},
            "shop_tls_verify": {"host": "localhost", "port": pg.port, "dbname": "shop",
                                "sslmode": "verify-full",
                                "sslrootcert": str(self.certdir / "ca.crt")},
            "shop_tls_badca": {"host": "localhost", "port": pg.port, "dbname": "shop",
                               "sslmode": "verify-full",
                               "sslrootcert": str(self.other_ca_dir / "ca.crt")},
            "down": {"host": "127.0.0.1", "port": self.down_port, "dbname": "shop",
                     "sslmode": "disable"},
        }
        if self.forwarder:
            t["shop_fwd"] = {"host": "127.0.0.1", "port": self.forwarder.port, "dbname": "shop",
                             "sslmode": "disable"}
        return t

    def write_config(self):
        w = self.workdir
        (w / "policies").mkdir(parents=True, exist_ok=True)
        (w / "secrets").mkdir(exist_ok=True)
        self.secret_path.write_text(secrets.token_hex(32))
        self.other_secret_path.write_text(secrets.token_hex(32))
        r = run([str(SCRIPTS / "mkcerts.sh"), str(self.other_ca_dir)])  # once per run
        assert r.returncode == 0, r.stderr
        for user, pw in self.pg.passwords.items():
            p = w / "secrets" / user
            p.write_text(pw)
            p.chmod(0o600)
            self.registry.passwords.add(pw)
        targets = self.targets()
        ident = [{"iss": ISSUER, "sub": "svc-*"}]
        roles = {"app": {t: OWNER for t in targets}}
        for role, user in AUTH_ROLES.items():
            roles[role] = {"shop": user}
        for role, ups in roles.items():
            pol = {"role": role, "description": f"integration tests: {role}",
                   "identities": ident,
                   "upstream": {t: {"user": u, "password_file": f"../secrets/{u}"}
                                for t, u in ups.items()},
                   "default": "allow",
                   # pass-through tests sleep upstream (cancel, slow queries);
                   # pg_sleep is a built-in protection only a named rule lifts
                   "rules": [{"id": "tests-may-sleep", "action": "allow",
                              "operations": ["function"],
                              "functions": ["pg_catalog.pg_sleep"]}]}
            (w / "policies" / f"{role}.json").write_text(json.dumps(pol, indent=2))
        cfg = {
            "listen": f"{self.opts.listen_host}:{self.port}",
            "allow_plaintext_on_loopback": self.opts.allow_plaintext_on_loopback,
            "identity": {
                "issuers": [{"issuer": ISSUER, "audience": AUDIENCE,
                             "hs256_secret_file": "dev.secret"}],
                "leeway": "30s",
                "max_token_lifetime": "24h",
            },
            "targets": targets,
            "policy_files": ["policies/*.json"],
            "audit": {"path": "var/audit", "map_size": "256MiB"},
            "login_timeout": f"{LOGIN_TIMEOUT_S}s",
            "shutdown_grace": f"{SHUTDOWN_GRACE_S}s",
            "max_client_conn": 1000,
        }
        if self.opts.workers is not None:
            cfg["workers"] = self.opts.workers
        if self.opts.tls:
            cfg["tls"] = {"cert_file": str(self.certdir / "server.crt"),
                          "key_file": str(self.certdir / "server.key")}
        self.config_path.write_text(json.dumps(cfg, indent=2))

    # -- process ----------------------------------------------------------------------
    def start(self):
        if self.opts.forwarder:
            self.forwarder = TcpForwarder("127.0.0.1", self.pg.port)
        self.write_config()
        self.log_file = open(self.log_path, "ab")
        self.registry.logs.append(self.log_path)
        self.proc = subprocess.Popen([str(self.binary), "serve", "-c", str(self.config_path)],
                                     stdin=subprocess.DEVNULL, stdout=self.log_file,
                                     stderr=self.log_file, cwd=str(self.workdir))

        def ready():
            return self.proc.poll() is not None or "event=listening" in self.log_text()

        try:
            wait_for(ready, 15, "bulwark serve to log event=listening", interval=0.05)
        except AssertionError as e:
            self.kill()
            raise GatewayError(f"{e}\n{self.log_tail()}") from None
        if self.proc.poll() is not None:
            raise GatewayError(f"bulwark serve exited with {self.proc.returncode}:\n"
                               + self.log_tail())

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n=40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int:
        """SIGTERM; return the exit status (None if it did not exit within the grace)."""
        if self.forwarder:
            self.forwarder.close()
        if not self.proc:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=SHUTDOWN_GRACE_S + 5)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        self.log_file.close()
        return self.proc.returncode

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    # -- identity ---------------------------------------------------------------------
    def token(self, sub="svc-tests", secret_file=None, ttl="15m", aud=AUDIENCE,
              iss=ISSUER) -> str:
        r = run([str(self.binary), "token", "--secret-file", str(secret_file or self.secret_path),
                 "--iss", iss, "--aud", aud, "--sub", sub, "--ttl", ttl], timeout=30)
        if r.returncode != 0:
            raise GatewayError(f"bulwark token failed ({r.returncode}): {r.stderr}")
        tok = r.stdout.strip()
        self.registry.tokens.add(tok)
        return tok

    def endpoint(self, role="app", target="shop", sub="svc-tests", sslmode="disable",
                 host=None, **kw) -> Endpoint:
        return Endpoint(host=host or self.host, port=self.port, user=role,
                        password=self.token(sub=sub), dbname=target, sslmode=sslmode, **kw)

    def wrong_password_endpoint(self, **kw) -> Endpoint:
        """A token that is well formed but signed with another secret."""
        return self.endpoint(**kw).with_(password=self.token(secret_file=self.other_secret_path))


class SecretRegistry:
    """Every token minted and upstream password written, and every gateway log: at session
    end no log may contain any of them."""

    def __init__(self):
        self.tokens: set = set()
        self.passwords: set = set()
        self.logs: list = []

    def leaks(self) -> list:
        found = []
        for log in self.logs:
            try:
                text = Path(log).read_text(errors="replace")
            except FileNotFoundError:
                continue
            for tok in self.tokens:
                sig = tok.rsplit(".", 1)[-1]
                if tok in text or (len(sig) >= 16 and sig in text):
                    found.append(f"{log}: token ...{tok[-12:]}")
            for pw in self.passwords:
                if pw in text:
                    found.append(f"{log}: upstream password {pw[:5]}...")
        return found


# ---------------------------------------------------------------------------------------
# RawPg: a minimal protocol 3.0 client that lets a test send anything


PROTO_3_0 = 196608
SSL_REQUEST = 80877103


class PgError(Exception):
    def __init__(self, fields: dict):
        self.fields = fields
        super().__init__(f"{fields.get('S')} {fields.get('C')}: {fields.get('M')}")

    @property
    def sqlstate(self):
        return self.fields.get("C")

    @property
    def severity(self):
        return self.fields.get("V") or self.fields.get("S")


def parse_error_fields(body: bytes) -> dict:
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def msg(type_: bytes, body: bytes = b"") -> bytes:
    return type_ + struct.pack("!I", len(body) + 4) + body


def startup_packet(params: dict, version: int = PROTO_3_0) -> bytes:
    body = struct.pack("!I", version)
    for k, v in params.items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def query_msg(sql: str) -> bytes:
    return msg(b"Q", sql.encode() + b"\0")


class RawPg:
    """One connection; read_msg() returns (type, body) or raises EOFError/socket.timeout."""

    def __init__(self, host: str, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.params = {}
        self.backend_key = None
        self.timeout = timeout

    def close(self, rst=False):
        if rst:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def send(self, data: bytes):
        self.sock.sendall(data)

    def _fill(self, n: int, timeout: Optional[float]):
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout(f"no complete message within {timeout}s")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed by peer")
            self.buf += chunk

    def read_byte(self, timeout=None) -> bytes:
        self._fill(1, timeout)
        b = bytes(self.buf[:1])
        del self.buf[:1]
        return b

    def read_msg(self, timeout=None):
        self._fill(5, timeout)
        t = bytes(self.buf[:1])
        (length,) = struct.unpack_from("!I", self.buf, 1)
        if length < 4 or length > 1 << 30:
            raise AssertionError(f"peer sent message {t!r} with bad length {length}")
        self._fill(1 + length, timeout)
        body = bytes(self.buf[5:1 + length])
        del self.buf[:1 + length]
        return t, body

    def read_until_closed(self, timeout: float) -> list:
        """Read messages until EOF; AssertionError if still open after timeout."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"connection still open after {timeout}s; got {got}")
            try:
                got.append(self.read_msg(timeout=left))
            except EOFError:
                return got
            except ConnectionResetError:
                return got
            except socket.timeout:
                continue

    def read_raw_until_closed(self, timeout: float) -> bytes:
        data = bytes(self.buf)
        self.buf.clear()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"connection still open after {timeout}s; got {data[:80]!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk

    # -- login ------------------------------------------------------------------------
    def ssl_request(self) -> bytes:
        self.send(struct.pack("!II", 8, SSL_REQUEST))
        return self.read_byte()

    def starttls(self, sslmode="require", rootcert=None, server_hostname="localhost"):
        r = self.ssl_request()
        if r != b"S":
            raise AssertionError(f"SSLRequest answered {r!r}")
        ctx = ssl.create_default_context(cafile=rootcert) if rootcert else ssl._create_unverified_context()
        if not rootcert:
            ctx.check_hostname = False
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)

    def startup(self, user, database, version=PROTO_3_0, **params):
        p = {"user": user, "database": database, **params}
        self.send(startup_packet(p, version))

    def login(self, user, password, database, **params):
        """Startup + authentication until ReadyForQuery; raises PgError on ErrorResponse."""
        self.startup(user, database, **params)
        self.finish_login(user, password)

    def finish_login(self, user, password, first=None):
        scram = None
        while True:
            t, body = first if first else self.read_msg()
            first = None
            if t == b"E":
                raise PgError(parse_error_fields(body))
            if t == b"R":
                (code,) = struct.unpack_from("!I", body)
                if code == 0:
                    continue
                if code == 3:
                    self.send(msg(b"p", password.encode() + b"\0"))
                elif code == 5:
                    salt = body[4:8]
                    inner = hashlib.md5(password.encode() + user.encode()).hexdigest()
                    outer = hashlib.md5(inner.encode() + salt).hexdigest()
                    self.send(msg(b"p", b"md5" + outer.encode() + b"\0"))
                elif code == 10:
                    scram = _Scram(password)
                    first_msg = scram.client_first()
                    self.send(msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first_msg))
                                  + first_msg))
                elif code == 11:
                    self.send(msg(b"p", scram.client_final(body[4:])))
                elif code == 12:
                    scram.verify(body[4:])
                else:
                    raise AssertionError(f"unsupported authentication request {code}")
            elif t == b"S":
                k, v, _ = body.split(b"\0", 2)
                self.params[k.decode()] = v.decode()
            elif t == b"K":
                self.backend_key = struct.unpack("!II", body)
            elif t == b"Z":
                return
            elif t in (b"N", b"v"):
                continue
            else:
                raise AssertionError(f"unexpected message {t!r} during login")

    # -- queries ----------------------------------------------------------------------
    def query(self, sql: str, timeout=None):
        """Simple query; returns (rows, tags) or raises PgError (after ReadyForQuery)."""
        self.send(query_msg(sql))
        rows, tags, err = [], [], None
        while True:
            t, body = self.read_msg(timeout)
            if t == b"D":
                rows.append(decode_datarow(body))
            elif t == b"C":
                tags.append(body.rstrip(b"\0").decode())
            elif t == b"E":
                err = PgError(parse_error_fields(body))
            elif t == b"Z":
                if err:
                    raise err
                return rows, tags


def decode_datarow(body: bytes) -> list:
    (n,) = struct.unpack_from("!H", body)
    off, out = 2, []
    for _ in range(n):
        (ln,) = struct.unpack_from("!i", body, off)
        off += 4
        if ln < 0:
            out.append(None)
        else:
            out.append(body[off:off + ln].decode())
            off += ln
    return out


class _Scram:
    """SCRAM-SHA-256 client side (RFC 5802/7677), enough to log in to PostgreSQL directly."""

    def __init__(self, password: str):
        self.password = password.encode()
        self.nonce = base64.b64encode(secrets.token_bytes(18)).decode()

    def client_first(self) -> bytes:
        self.first_bare = f"n=,r={self.nonce}"
        return ("n,," + self.first_bare).encode()

    def client_final(self, server_first: bytes) -> bytes:
        sf = server_first.decode()
        attrs = dict(kv.split("=", 1) for kv in sf.split(","))
        salt = base64.b64decode(attrs["s"])
        salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, int(attrs["i"]))
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored = hashlib.sha256(client_key).digest()
        final_wo_proof = "c=biws,r=" + attrs["r"]
        auth = f"{self.first_bare},{sf},{final_wo_proof}".encode()
        sig = hmac.new(stored, auth, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, sig))
        server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        self.server_sig = hmac.new(server_key, auth, hashlib.sha256).digest()
        return (final_wo_proof + ",p=" + base64.b64encode(proof).decode()).encode()

    def verify(self, server_final: bytes):
        v = dict(kv.split("=", 1) for kv in server_final.decode().split(","))["v"]
        assert base64.b64decode(v) == self.server_sig, "server SCRAM signature mismatch"


def raw_login(ep: Endpoint, timeout=10.0, **params) -> RawPg:
    """A RawPg logged in at ep (plaintext, or TLS when ep.sslmode asks for it)."""
    c = RawPg(ep.host, ep.port, timeout=timeout)
    if ep.sslmode in ("require", "verify-ca", "verify-full"):
        c.starttls(rootcert=ep.sslrootcert if ep.sslmode != "require" else None)
    params.setdefault("application_name", ep.application_name)
    c.login(ep.user, ep.password, ep.dbname, **params)
    return c


# ---------------------------------------------------------------------------------------
# TcpForwarder: a relay whose connections a test can cut


class TcpForwarder:
    """A TCP relay on a loopback port (listen_port, or a free one) to target. With
    record=True it also keeps every byte relayed back from the target (what a client saw:
    received())."""

    def __init__(self, target_host: str, target_port: int, record: bool = False,
                 listen_port: int = 0):
        self.target = (target_host, target_port)
        self.record = record
        self.data = bytearray()
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", listen_port))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.socks: list = []
        self.closed = False
        self.accepted = 0
        threading.Thread(target=self._accept_loop, daemon=True, name="fwd-accept").start()

    def _accept_loop(self):
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(self.target, timeout=5)
                u.settimeout(None)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.socks += [c, u]
                self.accepted += 1
            threading.Thread(target=self._pump, args=(c, u, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, self.record), daemon=True).start()

    def _pump(self, src, dst, record):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if record:  # before it is sent on: whatever the client got is kept
                    with self.lock:
                        self.data += data
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def received(self) -> bytes:
        """Every byte relayed from the target so far (record=True)."""
        with self.lock:
            return bytes(self.data)

    def kill_connections(self):
        """Cut every relayed connection at once, as if the upstream host died."""
        with self.lock:
            socks, self.socks = self.socks, []
        for s in socks:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self):
        self.closed = True
        try:
            self.lsock.close()
        except OSError:
            pass
        self.kill_connections()


# ---------------------------------------------------------------------------------------
# leak checks: did a value that must stay hidden reach a client?


def leaked_values(seen, values) -> list:
    """The values (str) that occur in seen (str, or bytes: the values UTF-8 encoded), sorted."""
    if isinstance(seen, (bytes, bytearray)):
        return sorted({v for v in values if v and v.encode() in seen})
    return sorted({v for v in values if v and v in seen})


def assert_no_leaks(seen, values, who: str = "the client", context=None):
    """Fails naming every value of values found in seen (what who saw); context, if given,
    is printed with the failure (the text or rows that held them)."""
    leaked = leaked_values(seen, values)
    if leaked:
        raise AssertionError(f"values reached {who}: {leaked}"
                             + ("" if context is None else f"\n{context}"))


# ---------------------------------------------------------------------------------------
# external clients


def psql(ep: Endpoint, *args, input=None, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([str(PG_BIN / "psql"), "-X", "-q", *args], input=input,
                          capture_output=True, text=True, timeout=timeout, env=ep.env())


def node_script(name: str, ep: Endpoint, timeout=120, extra_env=None) -> dict:
    """Run tests/integration/node/NAME against ep; it prints `RESULT_JSON {...}` last."""
    if not (NODE_DIR / "node_modules").is_dir():
        raise AssertionError("tests/integration/node/node_modules is missing: run "
                             "scripts/install-deps.sh")
    env = ep.env()
    if extra_env:
        env.update(extra_env)
    r = subprocess.run(["node", str(NODE_DIR / name)], capture_output=True, text=True,
                       timeout=timeout, env=env, cwd=str(NODE_DIR))
    for line in reversed(r.stdout.splitlines()):
        if line.startswith("RESULT_JSON "):
            return json.loads(line[len("RESULT_JSON "):])
    raise AssertionError(f"node {name} exited {r.returncode} without a result:\n"
                         f"stdout: {r.stdout[-3000:]}\nstderr: {r.stderr[-3000:]}")


def which(name: str) -> Optional[str]:
    return shutil.which(name)
