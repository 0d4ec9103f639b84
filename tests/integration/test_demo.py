"""`make demo` (scripts/demo.sh, issue 9 part 5): the two-minute tour.

- DEMO_ONESHOT=1 starts everything, runs the tour's SELECT and two refusals in one psql
  session, finds them in `bulwark replay`; with masking in the build it checks the masked
  row, with approvals it approves the held DELETE from the CLI and sees it run; it stops
  and cleans up (exit 0).
- The interactive run started without a terminal prints the tour (masked SELECT, denied
  DROP, held DELETE with `bulwark approvals` / `approve`, `bulwark replay`); the commands it
  prints work as printed; `scripts/demo.sh stop` (what `make demo-stop` runs) ends it and
  every file it made is gone.

The demo starts its own PostgreSQL and gateway (not the module's `gw`).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

import harness
from harness import free_port, run, wait_for

pytestmark = pytest.mark.gateway_only

DEMO = harness.SCRIPTS / "demo.sh"


@pytest.fixture
def tmp_path():
    """A directory the postgres OS user can reach too (pgtmp.sh runs the cluster as
    postgres when the tests run as root; pytest's own tmp_path is private)."""
    d = Path(tempfile.mkdtemp(prefix="bwit-demo-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def demo_env(bulwark_bin, tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(BULWARK_BIN=str(bulwark_bin), DEMO_PORT=str(free_port()), TMPDIR=str(tmp_path),
               DEMO_PIDFILE=str(tmp_path / "demo.pid"), **extra)
    return env


def demo_dirs(tmp_path) -> list:
    return sorted(p for p in tmp_path.iterdir() if p.name.startswith("bulwark-demo."))


def test_oneshot_runs_the_tour_statements_and_cleans_up(bulwark_bin, tmp_path):
    """Through `bulwark demo` (SPEC section 2), which runs scripts/demo.sh of the tree."""
    env = demo_env(bulwark_bin, tmp_path, DEMO_ONESHOT="1",
                   BULWARK_SOURCE_DIR=str(harness.REPO_ROOT))
    r = run([str(bulwark_bin), "demo"], timeout=180, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "demo: oneshot OK" in r.stderr, r.stderr
    assert 'denied by rule "no-ddl-dcl"' in r.stderr
    assert 'denied by rule "no-unbounded-writes"' in r.stderr
    assert demo_dirs(tmp_path) == [], "the demo left its directory behind"


def test_bulwark_demo_outside_a_source_tree_says_where_to_run_it(bulwark_bin, tmp_path):
    lone = tmp_path / "bin" / "bulwark"
    lone.parent.mkdir()
    shutil.copy(bulwark_bin, lone)
    env = {k: v for k, v in os.environ.items() if k != "BULWARK_SOURCE_DIR"}
    r = run([str(lone), "demo"], timeout=30, env=env)
    assert r.returncode == 1
    assert "runs from a source tree" in r.stderr and "make demo" in r.stderr, r.stderr


@pytest.fixture
def running_demo(bulwark_bin, tmp_path):
    env = demo_env(bulwark_bin, tmp_path)
    out = tmp_path / "demo.out"
    with open(out, "wb") as f:
        p = subprocess.Popen([str(DEMO)], stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                             env=env, start_new_session=True)
    try:
        wait_for(lambda: p.poll() is not None or "Stop: Ctrl-C" in out.read_text(), 120,
                 "the demo to print its tour")
        assert p.poll() is None, out.read_text()
        wait_for(lambda: (tmp_path / "demo.pid").exists(), 10, "the demo's pid file")
        yield p, out.read_text(), env
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def printed_command(text: str, word: str) -> list:
    """The first printed command line `.../bulwark WORD ...` as argv."""
    for line in text.splitlines():
        argv = shlex.split(line.strip()) if "bulwark " + word in line else []
        if len(argv) > 1 and argv[0].endswith("bulwark") and argv[1] == word:
            return argv
    raise AssertionError(f"the tour prints no `bulwark {word}` command:\n{text}")


def test_tour_prints_ready_commands_that_work_and_stop_ends_it(running_demo, tmp_path):
    p, text, env = running_demo
    for want in ("SELECT name, email, phone, card_number, ssn FROM customers",
                 "DROP TABLE customers;", 'denied by rule "no-ddl-dcl"',
                 "DELETE FROM support_tickets WHERE id = 4;", "bulwark approvals -c",
                 "bulwark approve -c", "bulwark replay -c", "make demo-stop"):
        assert want in text, f"the tour does not mention {want!r}:\n{text}"

    m = re.search(r'psql "(postgresql://analyst:[^"]+)"', text)
    assert m, text
    r = subprocess.run([str(harness.PG_BIN / "psql"), "-X", "-At", m.group(1)],
                       input="SELECT count(*) FROM customers;\nDROP TABLE customers;\n",
                       capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in env.items() if not k.startswith("PG")})
    assert r.stdout.strip() == "10", r.stdout + r.stderr
    assert 'denied by rule "no-ddl-dcl"' in r.stderr, r.stderr

    explain = run(printed_command(text, "explain"), timeout=60)
    assert explain.returncode == 0, explain.stderr
    assert "no-unbounded-writes" in explain.stdout, explain.stdout
    sessions = run(printed_command(text, "sessions") + ["--json"], timeout=60)
    assert sessions.returncode == 0 and '"analyst"' in sessions.stdout, sessions

    stop = run([str(DEMO), "stop"], timeout=60, env=env)
    assert stop.returncode == 0, stop.stderr
    assert p.wait(timeout=30) == 0, "a requested stop is a normal end (make reports no error)"
    assert demo_dirs(tmp_path) == [], "the demo left its directory behind"
    assert not (tmp_path / "demo.pid").exists()
    again = run([str(DEMO), "stop"], timeout=60, env=env)
    assert again.returncode == 0 and "not running" in again.stderr, again
