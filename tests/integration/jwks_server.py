"""A local HTTPS JWKS endpoint for the identity tests, and JWK helpers.

  JwksServer(certdir)   serves {"keys": [...]} at https://127.0.0.1:PORT/jwks.json with the
                        throwaway localhost certificate (scripts/mkcerts.sh); set_keys() /
                        set_raw() change what it serves, set_delay() makes it slow,
                        requests counts the fetches, stop() takes it down and start()
                        brings it back on the same port.
  jwk_from_pem(path, kid)  the public JWK (RSA n/e, EC crv/x/y, OKP Ed25519 x) of a PEM key.

Run as a script to print the JWKS of some keys:
    python3 tests/integration/jwks_server.py KID=PEM...
"""

from __future__ import annotations

import base64
import http.server
import json
import socket
import ssl
import sys
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _int_bytes(n: int, length: int = 0) -> bytes:
    length = length or max(1, (n.bit_length() + 7) // 8)
    return n.to_bytes(length, "big")


def load_private_key(path):
    return serialization.load_pem_private_key(Path(path).read_bytes(), password=None)


def jwk_from_pem(path, kid: str, alg: str | None = None) -> dict:
    """The public JWK of the (private or public) PEM key at path."""
    data = Path(path).read_bytes()
    if b"PRIVATE KEY" in data:
        pub = serialization.load_pem_private_key(data, password=None).public_key()
    else:
        pub = serialization.load_pem_public_key(data)
    if isinstance(pub, rsa.RSAPublicKey):
        nums = pub.public_numbers()
        jwk = {"kty": "RSA", "kid": kid, "use": "sig", "n": b64url(_int_bytes(nums.n)),
               "e": b64url(_int_bytes(nums.e))}
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        nums = pub.public_numbers()
        crv, size = {"secp256r1": ("P-256", 32), "secp384r1": ("P-384", 48),
                     "secp521r1": ("P-521", 66)}[pub.curve.name]
        jwk = {"kty": "EC", "kid": kid, "use": "sig", "crv": crv,
               "x": b64url(_int_bytes(nums.x, size)), "y": b64url(_int_bytes(nums.y, size))}
    elif isinstance(pub, ed25519.Ed25519PublicKey):
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        jwk = {"kty": "OKP", "kid": kid, "use": "sig", "crv": "Ed25519", "x": b64url(raw)}
    else:
        raise ValueError(f"{path}: unsupported key type")
    if alg:
        jwk["alg"] = alg
    return jwk


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        srv = self.server.owner
        with srv.lock:
            srv.requests += 1
            body = srv.body
            status = srv.status
            delay = srv.delay
        if delay:
            time.sleep(delay)
        if self.path.split("?")[0] != "/jwks.json":
            status, body = 404, b"not found"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class JwksServer:
    """HTTPS on 127.0.0.1; the certificate is for localhost and 127.0.0.1, signed by
    certdir/ca.crt (give that to the gateway as the issuer's jwks_ca_file)."""

    def __init__(self, certdir: Path, keys=None, port: int = 0):
        self.certdir = Path(certdir)
        self.lock = threading.Lock()
        self.requests = 0
        self.status = 200
        self.delay = 0.0
        self.body = b""
        self.set_keys(keys or [])
        self.port = port
        self.httpd = None
        self.thread = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/jwks.json"

    @property
    def ca_file(self) -> Path:
        return self.certdir / "ca.crt"

    def set_keys(self, keys: list):
        with self.lock:
            self.body = json.dumps({"keys": keys}).encode()
            self.status = 200

    def set_raw(self, body: bytes, status: int = 200):
        with self.lock:
            self.body = body
            self.status = status

    def set_delay(self, seconds: float):
        """Answer every request only after this long (a slow identity provider)."""
        with self.lock:
            self.delay = seconds

    def start(self):
        httpd = _Server(("127.0.0.1", self.port), _Handler)
        httpd.owner = self
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.certdir / "server.crt"), str(self.certdir / "server.key"))
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        self.port = httpd.server_address[1]
        self.httpd = httpd
        self.thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True, name="jwks-server")
        self.thread.start()
        return self

    def stop(self):
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(5)
            self.httpd = None

    def is_listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False


if __name__ == "__main__":
    keys = []
    for arg in sys.argv[1:]:
        kid, _, pem = arg.partition("=")
        keys.append(jwk_from_pem(pem, kid))
    print(json.dumps({"keys": keys}, indent=2))
