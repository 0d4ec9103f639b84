"""Fixtures for the integration tests.

  pg       (session)  a throwaway PostgreSQL 15 with the shop schema and auth-method users
  certdir  (session)  the throwaway CA and localhost certificate (scripts/mkcerts.sh)
  gw       (module)   `bulwark serve` for this test module, configured by the module's
                      GATEWAY = GatewayOptions(...) (defaults if absent); torn down with
                      SIGTERM, which must exit 0 within the shutdown grace
  healthy  (function) a session opened through gw before the test; the test uses it after
                      whatever it did to the gateway (check with healthy.check())

`pytest --direct` (or BULWARK_TEST_DIRECT=1) points every client at PostgreSQL itself
instead of the gateway, to check the tests; tests marked gateway_only are skipped then.
BULWARK_BIN names the binary (default: build/bulwark in the repository).
"""

import faulthandler
import os
import sys
import tempfile
from pathlib import Path

import pytest

import harness
from harness import Direct, Gateway, GatewayOptions, PgServer, SecretRegistry


# A hung test must not hang the run (CI has no other guard): past this, every thread's
# stack is printed and the process exits.
TEST_HARD_TIMEOUT_S = 240


@pytest.fixture(autouse=True)
def _hard_timeout():
    faulthandler.dump_traceback_later(TEST_HARD_TIMEOUT_S, exit=True, file=sys.stderr)
    yield
    faulthandler.cancel_dump_traceback_later()


def pytest_addoption(parser):
    parser.addoption("--direct", action="store_true", default=False,
                     help="run the clients against PostgreSQL directly (validates the tests)")


def pytest_configure(config):
    config.addinivalue_line("markers", "gateway_only: behaviour of the gateway itself; "
                            "skipped with --direct")


def is_direct(config) -> bool:
    return config.getoption("--direct") or os.environ.get("BULWARK_TEST_DIRECT") == "1"


def pytest_collection_modifyitems(config, items):
    if not is_direct(config):
        return
    skip = pytest.mark.skip(reason="gateway behaviour; not applicable with --direct")
    for item in items:
        if "gateway_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def direct(pytestconfig) -> bool:
    return is_direct(pytestconfig)


@pytest.fixture(scope="session")
def bulwark_bin(direct) -> Path:
    p = Path(os.environ.get("BULWARK_BIN", harness.REPO_ROOT / "build" / "bulwark"))
    if not p.is_absolute():
        p = harness.REPO_ROOT / p
    if not direct and not os.access(p, os.X_OK):
        pytest.fail(f"gateway binary {p} not found or not executable (run `make`, or set "
                    "BULWARK_BIN)", pytrace=False)
    return p


@pytest.fixture(scope="session")
def session_dir():
    # Under /tmp with a searchable parent: pgtmp.sh runs PostgreSQL as the postgres user
    # when we are root, and unix socket paths must stay short.
    d = Path(tempfile.mkdtemp(prefix="bwit-"))
    d.chmod(0o755)
    yield d
    if os.environ.get("BULWARK_KEEP_TMP") != "1":
        import shutil
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def certdir(session_dir) -> Path:
    d = session_dir / "certs"
    r = harness.run([str(harness.SCRIPTS / "mkcerts.sh"), str(d)])
    assert r.returncode == 0, r.stderr
    return d


@pytest.fixture(scope="session")
def pg(session_dir, certdir):
    server = PgServer(session_dir, certdir)
    server.start()
    try:
        server.setup()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def secret_registry():
    """At session end, no gateway log may contain a token or an upstream password."""
    reg = SecretRegistry()
    yield reg
    leaks = reg.leaks()
    assert not leaks, "secrets found in gateway logs:\n" + "\n".join(leaks)


def _make_gateway(request, bulwark_bin, pg, certdir, registry, tmp_path_factory, direct,
                  opts: GatewayOptions, name: str):
    if direct:
        return Direct(pg, certdir)
    workdir = tmp_path_factory.mktemp(name)
    g = Gateway(bulwark_bin, workdir, pg, certdir, opts, registry, name=name)
    g.start()
    return g


@pytest.fixture(scope="module")
def gw(request, bulwark_bin, pg, certdir, secret_registry, tmp_path_factory, direct):
    opts = getattr(request.module, "GATEWAY", GatewayOptions())
    name = "gw-" + request.module.__name__.rsplit(".", 1)[-1]
    g = _make_gateway(request, bulwark_bin, pg, certdir, secret_registry, tmp_path_factory,
                      direct, opts, name)
    yield g
    stop_gateway(g)


def stop_gateway(g):
    if g.is_direct or g.stopped_by_test:
        return
    alive = g.alive()
    status = g.stop()
    assert alive, f"bulwark serve had died before teardown:\n{g.log_tail()}"
    assert status == 0, (f"bulwark serve did not exit 0 within {harness.SHUTDOWN_GRACE_S}s "
                         f"+ 5s of SIGTERM (status {status}):\n{g.log_tail()}")


@pytest.fixture(scope="module")
def make_gateway(bulwark_bin, pg, certdir, secret_registry, tmp_path_factory, direct):
    """Start extra gateways with other options inside a module; all stopped at its end."""
    made = []

    def make(opts: GatewayOptions, name: str):
        g = _make_gateway(None, bulwark_bin, pg, certdir, secret_registry, tmp_path_factory,
                          direct, opts, name)
        made.append(g)
        return g

    yield make
    for g in made:
        stop_gateway(g)


class Healthy:
    """A session opened before a test; check() proves it still works afterwards, and that
    a new session can still log in."""

    def __init__(self, gw):
        self.gw = gw
        self.ep = gw.endpoint(application_name="bwit-healthy")
        self.conn = self.ep.connect()
        self.conn.autocommit = True
        assert self._ask(7) == 7

    def _ask(self, n):
        with self.conn.cursor() as cur:
            cur.execute("select %s::int + 0", (n,))
            return cur.fetchone()[0]

    def check(self):
        assert self._ask(42) == 42, "the parallel healthy session stopped working"
        fresh = self.gw.endpoint(application_name="bwit-fresh").connect()
        try:
            with fresh.cursor() as cur:
                cur.execute("select 'still serving'")
                assert cur.fetchone()[0] == "still serving"
        finally:
            fresh.close()
        if not self.gw.is_direct:
            assert self.gw.alive(), "bulwark serve died"


@pytest.fixture
def healthy(gw):
    h = Healthy(gw)
    yield h
    h.conn.close()
