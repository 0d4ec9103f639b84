"""The command line around the gateway: `bulwark token` mints what `serve` accepts, and
`bulwark check` validates the config and policy files the tests use."""

import base64
import hashlib
import hmac
import json
import shutil
import time

import pytest

from harness import AUDIENCE, ISSUER, run

pytestmark = pytest.mark.gateway_only


def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def test_token_prints_an_hs256_jwt_with_the_requested_claims(gw, bulwark_bin):
    r = run([str(bulwark_bin), "token", "--secret-file", str(gw.secret_path), "--iss", ISSUER,
             "--aud", AUDIENCE, "--sub", "svc-cli", "--ttl", "15m", "--claim", "team=data"])
    assert r.returncode == 0, r.stderr
    tok = r.stdout.strip()
    gw.registry.tokens.add(tok)
    head, payload, sig = tok.split(".")
    assert json.loads(b64url_decode(head))["alg"] == "HS256"
    claims = json.loads(b64url_decode(payload))
    assert claims["iss"] == ISSUER and claims["sub"] == "svc-cli" and claims["team"] == "data"
    assert claims["aud"] in (AUDIENCE, [AUDIENCE])
    assert abs(claims["exp"] - (time.time() + 900)) < 60
    mac = hmac.new(gw.secret_path.read_bytes(), f"{head}.{payload}".encode(), hashlib.sha256)
    assert b64url_decode(sig) == mac.digest()


def test_token_with_missing_arguments_exits_2(bulwark_bin):
    r = run([str(bulwark_bin), "token", "--iss", ISSUER])
    assert r.returncode == 2


def test_check_accepts_the_test_configuration(gw, bulwark_bin):
    r = run([str(bulwark_bin), "check", "-c", str(gw.config_path)])
    assert r.returncode == 0, r.stdout + r.stderr


def test_check_rejects_an_unknown_key_naming_file_and_path(gw, bulwark_bin, tmp_path):
    shutil.copytree(gw.workdir, tmp_path / "cfg", ignore=shutil.ignore_patterns("*.log"))
    cfg_path = tmp_path / "cfg" / "bulwark.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["identity"]["leway"] = "30s"
    cfg_path.write_text(json.dumps(cfg))
    r = run([str(bulwark_bin), "check", "-c", str(cfg_path)])
    assert r.returncode == 1, r.stdout + r.stderr
    assert "bulwark.json: identity.leway:" in r.stdout + r.stderr


def test_check_rejects_an_unknown_key_in_a_policy_file(gw, bulwark_bin, tmp_path):
    shutil.copytree(gw.workdir, tmp_path / "cfg", ignore=shutil.ignore_patterns("*.log"))
    pol_path = tmp_path / "cfg" / "policies" / "app.json"
    pol = json.loads(pol_path.read_text())
    pol["defualt"] = "allow"
    pol_path.write_text(json.dumps(pol))
    r = run([str(bulwark_bin), "check", "-c", str(tmp_path / "cfg" / "bulwark.json")])
    assert r.returncode == 1, r.stdout + r.stderr
    assert "app.json: defualt:" in r.stdout + r.stderr
