"""The documentation matches the program (issue 9):

- every `bulwark ...` command line shown in README.md and docs/*.md names a command that
  exists: `bulwark CMD [SUB] --help` exits 0 (a dry form that runs nothing);
- every configuration key documented in docs/configuration.md exists in the config loader,
  and every key the loader accepts is documented there;
- every key in the JSON examples of docs/configuration.md is one the loader accepts.

The loader's keys are read from its allowed-key lists in src/config.c and
src/config/policy.c (`static const char *const NAME[] = {...}`), the lists the strict
loader itself checks every object against.
"""

import json
import re
from pathlib import Path

import pytest

import harness

pytestmark = pytest.mark.gateway_only

ROOT = harness.REPO_ROOT
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


def command_lines():
    """(file, line) for each shown command line that runs bulwark."""
    found = []
    prefix = re.compile(r"^(?:\$ )?(?:sudo (?:-u \S+ )?)?(?:build/|/usr/bin/|/usr/local/bin/)?bulwark (.*)$")
    for path in DOCS:
        text = path.read_text()
        in_code = False
        for line in text.splitlines():
            if line.lstrip().startswith("```"):
                in_code = not in_code
                continue
            candidates = [line.strip()] if in_code else []
            candidates += re.findall(r"`([^`]+)`", line) if not in_code else []
            for c in candidates:
                m = prefix.match(c.strip())
                if m:
                    found.append((path.name, m.group(1)))
    return found


def test_docs_show_command_lines():
    assert len(command_lines()) >= 20


@pytest.mark.parametrize("where,args", command_lines())
def test_command_line_in_docs_names_a_real_command(bulwark_bin, where, args):
    words = args.split()
    cmd = words[:1]
    if cmd == ["audit"] and len(words) > 1 and not words[1].startswith("-"):
        cmd.append(words[1].split("|")[0])
    if cmd[0] == "help":
        r = harness.run([str(bulwark_bin), "help"])
    else:
        r = harness.run([str(bulwark_bin), *cmd, "--help"])
    assert r.returncode == 0, f"{where}: `bulwark {args}`: {r.stderr.strip()}"
    assert r.stdout.strip(), f"{where}: `bulwark {' '.join(cmd)} --help` printed nothing"
    cli = (ROOT / "docs" / "cli.txt").read_text()
    assert f"\n  {' '.join(cmd)}" in cli, f"{where}: `bulwark {cmd}` is not in docs/cli.txt"


def loader_keys():
    keys = set()
    for src in ["src/config.c", "src/config/policy.c"]:
        text = (ROOT / src).read_text()
        for m in re.finditer(r"static const char \*const (\w+)\[\] = \{(.*?)\};", text, re.S):
            name, body = m.groups()
            if not (name.endswith("keys") or name == "keys"):
                continue  # enums (modes, algorithms) are values, not keys
            keys.update(re.findall(r'"([^"]+)"', body))
    return keys


def documented_keys():
    """Key names from the first column of the tables in docs/configuration.md:
    `tls.cert_file` gives tls and cert_file; `upstream.TARGET.user` gives upstream, user."""
    keys = set()
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        m = re.match(r"^\| `([^`]+)` \|", line)
        if not m:
            continue
        for part in m.group(1).split("."):
            part = re.sub(r"\[\]$", "", part)
            if part and not part.isupper():
                keys.add(part)
    return keys


def test_every_documented_key_exists_and_every_key_is_documented():
    loader = loader_keys()
    assert {"listen", "metrics_listen", "hs256_secret_file", "without_where", "keep_last",
            "retention", "max_age"} <= loader, "the loader's key lists were not found"
    doc = documented_keys()
    assert doc - loader == set(), f"documented but not accepted by the loader: {doc - loader}"
    assert loader - doc == set(), f"accepted by the loader but not documented: {loader - doc}"


def json_examples():
    text = (ROOT / "docs" / "configuration.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, re.S)
    out = []
    for b in blocks:
        for chunk in [b] if b.lstrip().startswith("{\n") else b.strip().splitlines():
            try:
                out.append(json.loads(chunk))
            except json.JSONDecodeError:
                pass
    return out


def test_json_examples_use_only_real_keys():
    loader = loader_keys()
    examples = json_examples()
    assert len(examples) >= 3

    def walk(v, path):
        if isinstance(v, dict):
            for k, sub in v.items():
                # names the user chooses: targets and upstream entries are keyed by target
                if path and path[-1] in ("targets", "upstream"):
                    walk(sub, path + ["NAME"])
                    continue
                assert k in loader, f"example key {'.'.join(path + [k])} is not accepted"
                walk(sub, path + [k])
        elif isinstance(v, list):
            for x in v:
                walk(x, path)
    for ex in examples:
        walk(ex, [])
