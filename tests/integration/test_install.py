"""Packaging: `make install` into a temporary DESTDIR, the man page and `bulwark help` from
one source (docs/cli.txt), the systemd unit, and the example configuration.

No PostgreSQL is needed; make runs against the build directory of BULWARK_BIN (nothing is
rebuilt when it is up to date).
"""

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

import harness

pytestmark = pytest.mark.gateway_only

# SPEC section 2: every command `bulwark help` must list.
SPEC_COMMANDS = ["serve", "check", "explain", "token", "approvals", "approve", "deny",
                 "sessions", "replay", "audit verify", "audit export", "demo"]


def make(bulwark_bin, *args, cwd=harness.REPO_ROOT):
    build = Path(bulwark_bin).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    r = subprocess.run(["make", "--no-print-directory", f"BUILD={build}", *args], cwd=cwd,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


@pytest.fixture(scope="module")
def installed(bulwark_bin, tmp_path_factory):
    dest = tmp_path_factory.mktemp("destdir")
    make(bulwark_bin, "install", f"DESTDIR={dest}", "PREFIX=/usr")
    return dest


def mode(p):
    return stat.S_IMODE(p.stat().st_mode)


def test_install_puts_every_file_under_destdir_prefix(installed):
    files = sorted(str(p.relative_to(installed)) for p in installed.rglob("*") if p.is_file())
    assert files == [
        "usr/bin/bulwark",
        "usr/lib/systemd/system/bulwark.service",
        "usr/share/doc/bulwark/examples/bulwark.json",
        "usr/share/doc/bulwark/examples/policies/analyst.json",
        "usr/share/man/man1/bulwark.1",
    ]
    assert mode(installed / "usr/bin/bulwark") == 0o755
    for f in files[1:]:
        assert mode(installed / f) == 0o644, f


def test_help_is_the_text_the_man_page_is_made_from(installed):
    r = harness.run([str(installed / "usr/bin/bulwark"), "help"])
    assert r.returncode == 0
    assert r.stdout == (harness.REPO_ROOT / "docs" / "cli.txt").read_text()
    commands = r.stdout.split("\nCOMMANDS\n", 1)[1].split("\n\n", 1)[0]
    listed = [ln[2:] for ln in commands.splitlines() if ln.startswith("  ") and ln[2] != " "]
    for c in SPEC_COMMANDS:
        assert any(ln == c or ln.startswith(c + " ") for ln in listed), f"help lacks {c}"
    r = harness.run([str(installed / "usr/bin/bulwark")])
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1


@pytest.mark.skipif(not shutil.which("groff"), reason="groff is not installed")
def test_man_page_is_clean_roff_listing_every_command(installed):
    page = installed / "usr/share/man/man1/bulwark.1"
    r = harness.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(page)])
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = harness.run(["groff", "-man", "-Tascii", "-P-cbou", str(page)])
    text = " ".join(r.stdout.split())
    assert text.startswith("BULWARK(1)")
    for c in SPEC_COMMANDS:
        assert c + " " in text, c
    for section in ["NAME", "SYNOPSIS", "COMMANDS", "EXIT STATUS", "FILES", "SEE ALSO"]:
        assert f"\n{section}\n" in r.stdout, section
    assert "--secret-file" in text  # hyphens survive as \-


def test_unit_file_is_hardened_and_points_at_the_installed_binary(installed):
    unit = (installed / "usr/lib/systemd/system/bulwark.service").read_text()
    lines = {ln.split("=", 1)[0]: ln.split("=", 1)[1] for ln in unit.splitlines()
             if "=" in ln and not ln.startswith("#")}
    assert lines["ExecStart"] == "/usr/bin/bulwark serve -c /etc/bulwark/bulwark.json"
    assert lines["ExecStartPre"] == "/usr/bin/bulwark check -c /etc/bulwark/bulwark.json"
    assert lines["ExecReload"] == "/bin/kill -HUP $MAINPID"
    for key, want in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                      ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                      ("ReadWritePaths", "/var/lib/bulwark"), ("CapabilityBoundingSet", ""),
                      ("User", "bulwark")]:
        assert lines.get(key) == want, key
    assert "/usr/local/bin" not in unit


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_unit_file_verifies(bulwark_bin, tmp_path):
    # PREFIX (no DESTDIR) so that ExecStart names a binary that exists
    make(bulwark_bin, "install", f"PREFIX={tmp_path}")
    r = harness.run(["systemd-analyze", "verify", "--man=no",
                     str(tmp_path / "lib/systemd/system/bulwark.service")])
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def test_example_config_passes_check_once_its_files_exist(installed, tmp_path):
    ex = installed / "usr/share/doc/bulwark/examples"
    shutil.copytree(ex, tmp_path / "etc")
    etc = tmp_path / "etc"
    cfg = json.loads((etc / "bulwark.json").read_text())
    assert cfg["metrics_listen"] == "127.0.0.1:9632"
    assert cfg["audit"]["path"] == "/var/lib/bulwark/audit"
    binary = str(installed / "usr/bin/bulwark")
    r = harness.run([binary, "check", "-c", str(etc / "bulwark.json")])
    assert r.returncode == 1 and "tls.cert_file: cannot read" in r.stderr  # files are read
    r = harness.run([str(harness.SCRIPTS / "mkcerts.sh"), str(etc / "certs")])
    assert r.returncode == 0, r.stderr
    shutil.copy(etc / "certs/ca.crt", etc / "certs/db-ca.crt")
    (etc / "keys").mkdir()
    r = harness.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out",
                     str(etc / "keys/audit-ed25519.pem")])
    assert r.returncode == 0, r.stderr
    (etc / "secrets").mkdir()
    (etc / "secrets/agent_ro").write_text("not-a-real-password\n")
    r = harness.run([binary, "check", "-c", str(etc / "bulwark.json")])
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(not shutil.which("cc"), reason="no C compiler")
def test_help_text_survives_backslashes_quotes_and_roff_specials(tmp_path):
    """scripts/txt2c.awk and txt2man.awk escape what C and roff would read differently."""
    text = 'NAME\n    a\\b "q" c\\\\d -x %s %%\n.starts with a dot\n\'and a quote\n'
    (tmp_path / "cli.txt").write_text(text)
    scripts = harness.REPO_ROOT / "scripts"
    c = harness.run(["awk", "-f", str(scripts / "txt2c.awk"), str(tmp_path / "cli.txt")])
    assert c.returncode == 0, c.stderr
    (tmp_path / "help.c").write_text(c.stdout)
    (tmp_path / "main.c").write_text('#include <stdio.h>\nextern const char bulwark_help_text[];\n'
                                     'int main(void) { fputs(bulwark_help_text, stdout); }\n')
    r = harness.run(["cc", "-Wall", "-Werror", "-o", str(tmp_path / "h"),
                     str(tmp_path / "main.c"), str(tmp_path / "help.c")])
    assert r.returncode == 0, r.stderr
    assert harness.run([str(tmp_path / "h")]).stdout == text
    man = harness.run(["awk", "-f", str(scripts / "txt2man.awk"), str(tmp_path / "cli.txt")])
    assert man.returncode == 0, man.stderr
    assert "a\\eb" in man.stdout and "c\\e\\ed \\-x" in man.stdout
    assert "\n\\&.starts with a dot\n" in man.stdout and "\n\\&'and a quote\n" in man.stdout


def test_compose_example_config_passes_check(bulwark_bin, tmp_path):
    """docker-compose.yml's gateway config, laid out as examples/compose/init.sh writes it."""
    etc = tmp_path / "etc"
    (etc / "policies").mkdir(parents=True)
    shutil.copy(harness.REPO_ROOT / "examples/compose/bulwark.json", etc / "bulwark.json")
    shutil.copy(harness.REPO_ROOT / "policies/demo.json", etc / "policies/demo.json")
    r = harness.run([str(harness.SCRIPTS / "mkcerts.sh"), str(etc / "certs")])
    assert r.returncode == 0, r.stderr
    (etc / "keys").mkdir()
    (etc / "keys/demo.secret").write_text("ab" * 32 + "\n")
    (etc / "secrets").mkdir()
    (etc / "secrets/shop_agent.password").write_text("cd" * 24 + "\n")
    r = harness.run([str(bulwark_bin), "check", "-c", str(etc / "bulwark.json")])
    assert r.returncode == 0, r.stderr
    cfg = json.loads((etc / "bulwark.json").read_text())
    assert cfg["metrics_listen"].endswith(":9632")  # the image's HEALTHCHECK asks there
    compose = (harness.REPO_ROOT / "docker-compose.yml").read_text()
    for path in ["examples/compose", "examples/compose/pg-init.sh",
                 "examples/demo/schema.sql", "policies/demo.json"]:
        assert f"./{path}:" in compose and (harness.REPO_ROOT / path).exists(), path
    assert "/compose/init.sh" in compose and "/compose/bulwark.json" in \
        (harness.REPO_ROOT / "examples/compose/init.sh").read_text()
    if shutil.which("shellcheck"):
        scripts = sorted(str(p) for p in (harness.REPO_ROOT / "examples/compose").glob("*.sh"))
        r = harness.run(["shellcheck", "-s", "sh", *scripts])
        assert r.returncode == 0, r.stdout
