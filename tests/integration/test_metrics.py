"""metrics_listen: /metrics, /healthz and /livez (SPEC section 9, docs/metrics.md).

The gateway of this module has its own config: targets `shop` (PostgreSQL) and `flaky`
(PostgreSQL through a forwarder the test stops and restarts on the same port), a deny rule
to count refusals by, and metrics_listen on a free port. Figures are checked as deltas
between two scrapes around what the test did; the text is checked by a strict parser of
the exposition format written here (not a client library, which would be lenient).
"""

import json
import math
import os
import re
import shutil
import socket
import time

import psycopg2
import pytest

import harness
from harness import Gateway, GatewayOptions, TcpForwarder, wait_for

pytestmark = pytest.mark.gateway_only

PROBE_WAIT_S = 12  # probes run every 2 s; a result is at most one interval plus a timeout away


# ---------------------------------------------------------------------------------------
# a strict parser of the Prometheus text exposition format 0.0.4

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


class ExpositionError(AssertionError):
    pass


def _parse_value(s, where):
    if s in ("+Inf", "Inf"):
        return math.inf
    if s == "-Inf":
        return -math.inf
    if s == "NaN":
        return math.nan
    if not re.fullmatch(r"[-+]?(\d+\.?\d*([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?)", s):
        raise ExpositionError(f"{where}: bad value {s!r}")
    return float(s)


def _parse_labels(s, i, where):
    """s[i] == '{'; returns (labels dict, index after '}')."""
    labels = {}
    i += 1
    while True:
        if s[i:i + 1] == "}":
            return labels, i + 1
        m = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*").match(s, i)
        if not m:
            raise ExpositionError(f"{where}: bad label name at {s[i:i + 20]!r}")
        name = m.group(0)
        i = m.end()
        if s[i:i + 2] != '="':
            raise ExpositionError(f"{where}: expected =\" after label {name}")
        i += 2
        val = []
        while True:
            if i >= len(s):
                raise ExpositionError(f"{where}: unterminated label value")
            c = s[i]
            if c == "\\":
                nxt = s[i + 1:i + 2]
                if nxt not in ("\\", '"', "n"):
                    raise ExpositionError(f"{where}: bad escape \\{nxt}")
                val.append("\n" if nxt == "n" else nxt)
                i += 2
            elif c == '"':
                i += 1
                break
            elif c == "\n":
                raise ExpositionError(f"{where}: raw newline in label value")
            else:
                val.append(c)
                i += 1
        if name in labels:
            raise ExpositionError(f"{where}: label {name} twice")
        labels[name] = "".join(val)
        if s[i:i + 1] == ",":
            i += 1
        elif s[i:i + 1] != "}":
            raise ExpositionError(f"{where}: expected , or }} after label {name}")


def parse_exposition(text):
    """{(name, frozenset(labels)): value}; raises ExpositionError on anything not strictly
    valid: unknown line shapes, samples before their TYPE, a family split in two, duplicate
    series, non-cumulative buckets, +Inf bucket != _count."""
    if text and not text.endswith("\n"):
        raise ExpositionError("the text does not end with a newline")
    samples = {}
    types, helps, seen_families, sampled = {}, set(), [], set()
    current = None
    hist = {}  # (family, labels without le) -> {"buckets": [(le, v)], "count": v}
    for n, line in enumerate(text.split("\n")[:-1], 1):
        where = f"line {n}"
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                if not METRIC_NAME.match(name):
                    raise ExpositionError(f"{where}: bad metric name {name!r}")
                if parts[1] == "HELP":
                    if name in helps:
                        raise ExpositionError(f"{where}: second HELP for {name}")
                    helps.add(name)
                    doc = parts[3] if len(parts) > 3 else ""
                    if re.search(r"\\[^\\n]", doc) or doc.endswith("\\") and not doc.endswith("\\\\"):
                        raise ExpositionError(f"{where}: bad escape in HELP")
                else:
                    if len(parts) != 4 or parts[3] not in TYPES:
                        raise ExpositionError(f"{where}: bad TYPE line")
                    if name in types:
                        raise ExpositionError(f"{where}: second TYPE for {name}")
                    if name in sampled:
                        raise ExpositionError(f"{where}: TYPE after samples of {name}")
                    types[name] = parts[3]
                if current != name:
                    if name in seen_families:
                        raise ExpositionError(f"{where}: family {name} is split")
                    seen_families.append(name)
                    current = name
            continue  # other comments are allowed
        if not line.strip():
            raise ExpositionError(f"{where}: empty line")
        m = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
        if not m:
            raise ExpositionError(f"{where}: bad sample line {line!r}")
        name = m.group(0)
        i = m.end()
        labels = {}
        if line[i:i + 1] == "{":
            labels, i = _parse_labels(line, i, where)
        rest = line[i:]
        if not rest.startswith(" "):
            raise ExpositionError(f"{where}: expected a space before the value")
        fields = rest[1:].split(" ")
        if len(fields) not in (1, 2) or (len(fields) == 2 and not re.fullmatch(r"-?\d+", fields[1])):
            raise ExpositionError(f"{where}: bad value/timestamp {rest!r}")
        value = _parse_value(fields[0], where)
        family = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and types.get(name[: -len(suffix)]) == "histogram":
                family = name[: -len(suffix)]
        if family not in types:
            raise ExpositionError(f"{where}: sample {name} without a TYPE line before it")
        if family != current:
            raise ExpositionError(f"{where}: sample of {family} inside family {current}")
        sampled.add(family)
        t = types[family]
        if t == "histogram" and name == family:
            raise ExpositionError(f"{where}: histogram sample without suffix")
        if t in ("counter",) and (value < 0 or math.isnan(value)):
            raise ExpositionError(f"{where}: counter {name} is {value}")
        key = (name, frozenset(labels.items()))
        if key in samples:
            raise ExpositionError(f"{where}: duplicate series {name}{labels}")
        samples[key] = value
        if t == "histogram":
            base = frozenset((k, v) for k, v in labels.items() if k != "le")
            h = hist.setdefault((family, base), {"buckets": [], "count": None, "sum": None})
            if name.endswith("_bucket"):
                if "le" not in labels:
                    raise ExpositionError(f"{where}: bucket without le")
                h["buckets"].append((_parse_value(labels["le"], where), value))
            elif name.endswith("_count"):
                h["count"] = value
            else:
                h["sum"] = value
    for (family, base), h in hist.items():
        b = h["buckets"]
        if not b or b[-1][0] != math.inf:
            raise ExpositionError(f"{family}{dict(base)}: no +Inf bucket last")
        les = [le for le, _ in b]
        if les != sorted(les) or len(set(les)) != len(les):
            raise ExpositionError(f"{family}: bucket bounds not increasing")
        vals = [v for _, v in b]
        if vals != sorted(vals):
            raise ExpositionError(f"{family}{dict(base)}: buckets not cumulative")
        if h["count"] != b[-1][1] or h["sum"] is None:
            raise ExpositionError(f"{family}{dict(base)}: _count != +Inf bucket or no _sum")
    return samples


def test_parser_rejects_what_is_not_exposition():
    good = "# HELP a_total x\n# TYPE a_total counter\na_total{l=\"v\\\"\"} 1\n"
    assert parse_exposition(good) == {("a_total", frozenset({("l", 'v"')})): 1.0}
    bad = [
        "a_total 1\n",  # no TYPE
        "# TYPE a counter\na{l=\"x} 1\n",  # unterminated
        "# TYPE a counter\na{l=\"\\x\"} 1\n",  # bad escape
        "# TYPE a counter\na 1\na 2\n",  # duplicate
        "# TYPE a counter\na one\n",
        "# TYPE a counter\na 1",  # no final newline
        "# TYPE a gauge\n# TYPE b gauge\nb 1\na 1\n",  # sample out of its family
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 0\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 0\nh_count 2\n",
    ]
    for text in bad:
        with pytest.raises(ExpositionError):
            parse_exposition(text)


# ---------------------------------------------------------------------------------------
# the gateway of this module


class Forwarder(TcpForwarder):
    """TcpForwarder on a fixed port, so that it can stop and come back at the same address."""

    def __init__(self, target_host, target_port, port):
        super().__init__(target_host, target_port, listen_port=port)


DENY_RULE = "no-order-deletes"


class MetricsGateway(Gateway):
    def __init__(self, *a, audit=None, **kw):
        super().__init__(*a, **kw)
        self.audit_overrides = audit or {}
        self.metrics_port = harness.free_port()
        self.flaky_port = harness.free_port()
        self.flaky = Forwarder("127.0.0.1", self.pg.port, self.flaky_port)

    def targets(self):
        return {
            "shop": {"host": "127.0.0.1", "port": self.pg.port, "dbname": "shop",
                     "sslmode": "disable"},
            "flaky": {"host": "localhost", "port": self.flaky_port, "dbname": "shop",
                      "sslmode": "disable"},
        }

    def write_config(self):
        super().write_config()
        cfg = json.loads(self.config_path.read_text())
        cfg["metrics_listen"] = f"127.0.0.1:{self.metrics_port}"
        cfg["audit"].update(self.audit_overrides)
        self.config_path.write_text(json.dumps(cfg, indent=2))
        pol_path = self.workdir / "policies" / "app.json"
        pol = json.loads(pol_path.read_text())
        pol["rules"].append({"id": DENY_RULE, "action": "deny", "operations": ["delete"],
                             "relations": ["public.orders"]})
        pol_path.write_text(json.dumps(pol, indent=2))

    def http(self, raw: bytes, timeout=10.0):
        """Send raw bytes; return (status, headers dict, body bytes)."""
        with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=timeout) as s:
            s.sendall(raw)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        m = re.fullmatch(r"HTTP/1\.1 (\d{3}) .+", lines[0])
        assert m, f"bad status line {lines[0]!r}"
        headers = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            headers[k.strip().lower()] = v.strip()
        assert int(headers["content-length"]) == len(body) or raw.startswith(b"HEAD")
        return int(m.group(1)), headers, body

    def get(self, path):
        return self.http(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())

    def scrape(self):
        status, headers, body = self.get("/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        return parse_exposition(body.decode("utf-8"))


@pytest.fixture(scope="module")
def mgw(bulwark_bin, pg, certdir, secret_registry, tmp_path_factory):
    g = MetricsGateway(bulwark_bin, tmp_path_factory.mktemp("gw-metrics"), pg, certdir,
                       GatewayOptions(), secret_registry, name="gw-metrics")
    g.start()
    yield g
    g.flaky.close()
    assert g.alive(), g.log_tail()
    assert g.stop() == 0, g.log_tail()


def val(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples, name, **match):
    """Sum of the series of `name` whose labels include `match`."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and all((k, v2) in ls for k, v2 in match.items()))


# ---------------------------------------------------------------------------------------


def test_scrape_is_strict_exposition_with_every_family(mgw):
    s = mgw.scrape()
    names = {n for n, _ in s}
    for family in ["bulwark_connections_total", "bulwark_connections",
                   "bulwark_gate_seconds_count", "bulwark_audit_records_written_total",
                   "bulwark_audit_flush_seconds_count", "bulwark_audit_group_commit_size_count",
                   "bulwark_parse_cache_hits_total", "bulwark_audit_failing",
                   "bulwark_start_time_seconds"]:
        assert family in names, family
    assert val(s, "bulwark_audit_open") == 1
    st, h, body = mgw.http(b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert st == 200 and body == b"" and int(h["content-length"]) > 100


def test_figures_follow_what_the_test_did(mgw):
    before = mgw.scrape()
    conns = [mgw.endpoint(role="app", target="shop").connect() for _ in range(2)]
    for c in conns:
        c.autocommit = True
    allowed = 0
    with conns[0].cursor() as cur:
        for _ in range(3):
            cur.execute("select count(*) from customers")
            allowed += 1
        with pytest.raises(psycopg2.Error) as e:
            cur.execute("delete from orders where id = 1")
        assert e.value.pgcode == "42501" and DENY_RULE in str(e.value)
    with conns[1].cursor() as cur:
        cur.execute("select 1")
        allowed += 1
    mid = mgw.scrape()
    assert val(mid, "bulwark_sessions_active", role="app", target="shop") - \
        val(before, "bulwark_sessions_active", role="app", target="shop") == 2
    for c in conns:
        c.close()

    # two failed logins with different reasons
    with pytest.raises(psycopg2.OperationalError):
        mgw.wrong_password_endpoint(role="app", target="shop").connect()
    with pytest.raises(psycopg2.OperationalError):
        mgw.endpoint(role="no_such_role", target="shop").connect()

    def settled():
        s = mgw.scrape()
        return s if val(s, "bulwark_sessions_active", role="app", target="shop") == \
            val(before, "bulwark_sessions_active", role="app", target="shop") else None
    after = wait_for(settled, 10, "sessions_active back to its value before")

    def d(name, **labels):
        return val(after, name, **labels) - val(before, name, **labels)

    def dt(name, **match):
        return total(after, name, **match) - total(before, name, **match)

    assert d("bulwark_connections_total") == 4
    assert d("bulwark_sessions_total", role="app", target="shop") == 2
    assert d("bulwark_statements_total", role="app", decision="deny", rule=DENY_RULE) == 1
    assert dt("bulwark_statements_total", role="app", decision="allow") == allowed
    assert dt("bulwark_statements_total") == allowed + 1
    assert d("bulwark_login_failures_total", reason="signature") == 1
    assert d("bulwark_login_failures_total", reason="unknown_role") == 1
    # every decided statement was timed; each went upstream as one Query (the denied one
    # as its sentinel), answered by one ReadyForQuery
    assert d("bulwark_gate_seconds_count") == allowed + 1
    assert d("bulwark_upstream_ready_seconds_count", target="shop") == allowed + 1
    assert d("bulwark_upstream_first_byte_seconds_count", target="shop") == allowed + 1
    assert d("bulwark_gate_seconds_sum") > 0
    # the same text three times: parsed once at most
    assert d("bulwark_parse_cache_hits_total") >= 2

    # audit: 2 session starts and ends, 5 statements and their results, 2 login failures
    expected_records = 2 + 2 + 2 * (allowed + 1) + 2

    def flushed():
        s = mgw.scrape()
        w = val(s, "bulwark_audit_records_written_total")
        ok = (w - val(before, "bulwark_audit_records_written_total") >= expected_records
              and w == val(s, "bulwark_audit_records_appended_total"))
        return s if ok else None
    s = wait_for(flushed, 10, "the audit records to be written")
    assert val(s, "bulwark_audit_records_refused_total") == 0
    assert val(s, "bulwark_audit_flush_seconds_count") >= 1
    assert val(s, "bulwark_audit_group_commit_size_sum") == \
        val(s, "bulwark_audit_records_written_total")


def test_healthz_follows_the_upstream(mgw, healthy_m):
    def status():
        st, _, body = mgw.get("/healthz")
        return st, body.decode()
    wait_for(lambda: status()[0] == 200, PROBE_WAIT_S, "/healthz 200")
    assert status() == (200, "ok\n")
    assert val(mgw.scrape(), "bulwark_target_up", target="flaky") == 1

    mgw.flaky.close()
    try:
        st, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(status()),
                            PROBE_WAIT_S, "/healthz 503 once flaky is down")
        assert 'target "flaky": unreachable' in body and "shop" not in body
        assert val(mgw.scrape(), "bulwark_target_up", target="flaky") == 0
        assert val(mgw.scrape(), "bulwark_target_up", target="shop") == 1
        assert mgw.get("/livez")[0] == 200
        # a login to the stopped target is an upstream error, and counted
        before = mgw.scrape()
        with pytest.raises(psycopg2.OperationalError) as e:
            mgw.endpoint(role="app", target="flaky").connect()
        assert "08006" in str(e.value) or "could not connect" in str(e.value)
        after = mgw.scrape()
        assert val(after, "bulwark_upstream_errors_total", target="flaky", kind="connect") - \
            val(before, "bulwark_upstream_errors_total", target="flaky", kind="connect") == 1
        healthy_m.check()
    finally:
        mgw.flaky = Forwarder("127.0.0.1", mgw.pg.port, mgw.flaky_port)
    wait_for(lambda: status()[0] == 200, PROBE_WAIT_S, "/healthz 200 again")
    assert val(mgw.scrape(), "bulwark_target_up", target="flaky") == 1


def test_bad_http_requests_do_not_disturb_sessions(mgw, healthy_m):
    assert mgw.http(b"BLAH\r\n\r\n")[0] == 400
    assert mgw.http(b"GET metrics HTTP/1.1\r\n\r\n")[0] == 400
    assert mgw.http(b"GET /metrics HTTP/2.0\r\n\r\n")[0] == 400
    assert mgw.http(b"GET /metrics HTTP/1.1\r\nX: \x00\r\n\r\n")[0] == 400
    st, h, _ = mgw.http(b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
    assert st == 405 and h["allow"] == "GET, HEAD"
    assert mgw.http(b"GET /nope HTTP/1.1\r\n\r\n")[0] == 404
    assert mgw.http(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")[0] == 200
    assert mgw.http(b"GET /livez HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 9000 + b"\r\n\r\n")[0] == 431

    # idle and half-sent requests and a crowd of connections: sessions go on meanwhile
    half = socket.create_connection(("127.0.0.1", mgw.metrics_port))
    half.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    t0 = time.monotonic()
    idle = [socket.create_connection(("127.0.0.1", mgw.metrics_port)) for _ in range(80)]
    try:
        healthy_m.check()
        half.settimeout(10)
        answer = half.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert 4 <= time.monotonic() - t0 <= 9
        healthy_m.check()
    finally:
        half.close()
        for s in idle:
            s.close()
    wait_for(lambda: mgw.get("/metrics")[0] == 200, 10, "a scrape after the crowd left")
    assert mgw.alive()


@pytest.fixture
def healthy_m(mgw):
    h = harness_healthy(mgw)
    yield h
    h.conn.close()


def harness_healthy(g):
    from conftest import Healthy
    return Healthy(g)


@pytest.mark.skipif(not shutil.which("mdb_copy"), reason="mdb_copy (lmdb-utils) not installed")
def test_audit_store_backup_with_mdb_copy_while_serving_verifies(mgw, tmp_path):
    """docs/operations.md: `mdb_copy -c` of the live store is a consistent backup."""
    c = mgw.endpoint(role="app", target="shop").connect()
    c.autocommit = True
    with c.cursor() as cur:
        cur.execute("select 1")
    audit = mgw.workdir / "var" / "audit"
    backup = tmp_path / "audit-backup"
    backup.mkdir()
    r = harness.run(["mdb_copy", "-c", str(audit), str(backup)])
    c.close()
    assert r.returncode == 0, r.stderr
    cfg = json.loads(mgw.config_path.read_text())
    cfg["audit"]["path"] = str(backup)
    alt = mgw.workdir / "bulwark-backup.json"
    alt.write_text(json.dumps(cfg))
    r = harness.run([str(mgw.binary), "audit", "verify", "-c", str(alt)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert mgw.alive()


def test_healthz_turns_503_when_the_audit_store_cannot_write(bulwark_bin, pg, certdir,
                                                             secret_registry, tmp_path_factory):
    """A 1 MiB map fills up (there is no retention to free it): the store fails, statements
    get 58030 (on_failure deny), and /healthz says why while /livez stays 200."""
    g = MetricsGateway(bulwark_bin, tmp_path_factory.mktemp("gw-metrics-full"), pg, certdir,
                       GatewayOptions(), secret_registry, name="gw-metrics-full",
                       audit={"map_size": "1MiB", "on_failure": "deny"})
    g.start()
    try:
        wait_for(lambda: g.get("/healthz")[0] == 200, PROBE_WAIT_S, "/healthz 200")
        conn = g.endpoint(role="app", target="shop").connect()
        conn.autocommit = True
        cur = conn.cursor()
        for i in range(20000):
            try:
                cur.execute("select %s::int as i, repeat('x', 8000) as pad", (i,))
            except psycopg2.Error as e:
                assert e.pgcode == "58030", e
                break
        else:
            raise AssertionError("the 1 MiB audit store never filled")
        st, _, body = g.get("/healthz")
        assert st == 503 and "audit store: cannot write" in body.decode(), body
        assert "target" not in body.decode()
        s = g.scrape()
        assert val(s, "bulwark_audit_failing") == 1
        assert val(s, "bulwark_audit_records_refused_total") >= 1
        assert g.get("/livez")[0] == 200
        conn.close()
    finally:
        g.flaky.close()
        assert g.alive(), g.log_tail()
        g.stop()


def wanted_cpu_seconds(pid):
    """Time the loop thread ran plus time it waited for a CPU (schedstat): a thread that
    spins wants the CPU all the time, however loaded the machine; an idle one neither."""
    with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
        run_ns, wait_ns, _ = (int(x) for x in f.read().split())
    return (run_ns + wait_ns) / 1e9


@pytest.mark.skipif(not shutil.which("prlimit"), reason="prlimit (util-linux) not installed")
def test_out_of_descriptors_pauses_both_listeners_instead_of_spinning(mgw, healthy_m):
    """With the process out of file descriptors, a listener with connections waiting stays
    readable: the metrics endpoint and the gateway's own listener must pause accepting
    (and keep pausing: a fired libev timer restarted without ev_timer_set fires at once),
    not spin on EMFILE."""
    nfds = len(os.listdir(f"/proc/{mgw.pid}/fd"))
    limit = nfds + 8
    r = harness.run(["prlimit", f"--pid={mgw.pid}", f"--nofile={limit}:{limit}"])
    assert r.returncode == 0, r.stderr
    socks = []
    try:
        for _ in range(40):  # more than the descriptors left: the rest wait in the backlog
            socks.append(socket.create_connection(("127.0.0.1", mgw.metrics_port), timeout=5))
        wait_for(lambda: len(os.listdir(f"/proc/{mgw.pid}/fd")) >= limit - 1, 5,
                 "the gateway to run out of descriptors")
        for _ in range(5):
            socks.append(socket.create_connection(("127.0.0.1", mgw.port), timeout=5))
        wait_for(lambda: "event=accept_paused" in mgw.log_text(), 5,
                 "the gateway's listener to pause")
        c0 = wanted_cpu_seconds(mgw.pid)
        time.sleep(2)
        used = wanted_cpu_seconds(mgw.pid) - c0
        assert used < 1.0, f"the loop wanted {used:.2f} s of CPU in 2 s while out of fds"
    finally:
        for s in socks:
            s.close()
        harness.run(["prlimit", f"--pid={mgw.pid}", "--nofile=65536:65536"])
    wait_for(lambda: mgw.get("/metrics")[0] == 200, 15, "a scrape once descriptors are back")
    healthy_m.check()
