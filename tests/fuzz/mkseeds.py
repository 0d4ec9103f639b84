#!/usr/bin/python3
"""Writes the seed corpora under tests/fuzz/corpus/ (run from anywhere; the files are
committed, so run it again only to change them). Small on purpose: libFuzzer grows its
own corpus from these in build/fuzz/corpus/ during `make fuzz`."""

import hashlib
import hmac
import base64
import json
import shutil
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fuzz" / "corpus"
FIX = ROOT / "tests" / "fixtures"


def msg(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def cstr(s) -> bytes:
    return (s.encode() if isinstance(s, str) else s) + b"\0"


def startup(params, version=196608) -> bytes:
    body = struct.pack("!I", version) + b"".join(cstr(k) + cstr(v) for k, v in params) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


def values(vals) -> bytes:
    out = struct.pack("!H", len(vals))
    for v in vals:
        out += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return out


def rowdesc(cols) -> bytes:
    out = struct.pack("!H", len(cols))
    for name, table, att, typ, typlen, fmt in cols:
        out += cstr(name) + struct.pack("!IhIhih", table, att, typ, typlen, -1, fmt)
    return out


def error(fields) -> bytes:
    return b"".join(k.encode() + cstr(v) for k, v in fields) + b"\0"


def write(target, name, data: bytes):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def frontend():
    su = startup([("user", "analyst"), ("database", "shop"), ("application_name", "psql"),
                  ("options", "-c search_path=public")])
    write("fuzz_frontend", "startup-query", su + msg(b"p", cstr("eyJ.token.sig"))
          + msg(b"Q", cstr("select 1; select * from orders")) + msg(b"X"))
    ext = (msg(b"P", cstr("s1") + cstr("select $1::int, $2") + struct.pack("!HII", 2, 23, 25))
           + msg(b"B", cstr("") + cstr("s1") + struct.pack("!HHH", 2, 0, 1)
                 + values([b"42", b"\x00\x01"]) + struct.pack("!HH", 1, 1))
           + msg(b"D", b"P" + cstr("")) + msg(b"E", cstr("") + struct.pack("!i", 10))
           + msg(b"H") + msg(b"C", b"S" + cstr("s1")) + msg(b"S"))
    write("fuzz_frontend", "extended", su + ext)
    write("fuzz_frontend", "ssl-request", struct.pack("!II", 8, 80877103))
    write("fuzz_frontend", "cancel", struct.pack("!IIII", 16, 80877102, 1234, 5678))
    write("fuzz_frontend", "copy-in-and-fncall", su + msg(b"d", b"1\tx\n") + msg(b"c")
          + msg(b"f", cstr("client gave up"))
          + msg(b"F", struct.pack("!IHH", 1598, 1, 0) + values([b"abc"]) + struct.pack("!h", 0)))
    write("fuzz_frontend", "sasl", su + msg(b"p", cstr("SCRAM-SHA-256") + struct.pack("!i", 5)
                                              + b"n,,n="))


def backend():
    t = rowdesc([("id", 16400, 1, 23, 4, 0), ("email", 16400, 3, 25, -1, 0)])
    s = (msg(b"R", struct.pack("!I", 10) + cstr("SCRAM-SHA-256") + b"\0")
         + msg(b"R", struct.pack("!I", 11) + b"r=abc,s=c2FsdA==,i=4096")
         + msg(b"R", struct.pack("!I", 0)) + msg(b"S", cstr("server_version") + cstr("15.4"))
         + msg(b"K", struct.pack("!II", 77, 99)) + msg(b"Z", b"I"))
    write("fuzz_backend", "login", s)
    q = (msg(b"T", t) + msg(b"D", values([b"1", b"ada@example.com"])) + msg(b"D", values([b"2", None]))
         + msg(b"C", cstr("SELECT 2")) + msg(b"Z", b"T"))
    write("fuzz_backend", "result", q)
    e = (msg(b"E", error([("S", "ERROR"), ("V", "ERROR"), ("C", "42703"),
                          ("M", "column \"x\" does not exist"), ("P", "8"), ("F", "parse.c"),
                          ("L", "100"), ("R", "errorMissingColumn")]))
         + msg(b"N", error([("S", "NOTICE"), ("C", "00000"), ("M", "hello")]))
         + msg(b"A", struct.pack("!I", 5) + cstr("chan") + cstr("payload"))
         + msg(b"t", struct.pack("!HII", 2, 23, 25)) + msg(b"v", struct.pack("!II", 0, 1) + cstr("_pq_.x"))
         + msg(b"H", struct.pack("!bHhh", 0, 2, 0, 0)) + msg(b"d", b"1\tx\n") + msg(b"c")
         + msg(b"V", struct.pack("!i", 3) + b"abc") + msg(b"1") + msg(b"2") + msg(b"3")
         + msg(b"n") + msg(b"s") + msg(b"I") + msg(b"R", struct.pack("!I", 5) + b"salt"))
    write("fuzz_backend", "misc", e)


def jwt():
    secret = (FIX / "keys" / "dev.secret").read_bytes().rstrip(b"\n")
    now = 1767225600
    hdr = {"alg": "HS256", "typ": "JWT"}
    pays = [
        {"iss": "dev", "aud": "bulwark", "sub": "svc-agent-1", "exp": now + 600, "iat": now},
        {"iss": "dev", "aud": ["x", "bulwark"], "sub": "svc-agent-2", "exp": now + 60, "nbf": now - 5},
        {"iss": "https://idp.test", "aud": "bulwark", "sub": "a", "exp": now - 100},
        {"iss": "dev", "aud": "bulwark", "sub": "s", "exp": now + 99999, "iat": now, "groups": ["g"]},
    ]
    for i, p in enumerate(pays):
        write("fuzz_jwt", f"claims-{i}", b"\x01" + json.dumps(hdr).encode() + b"\n"
              + json.dumps(p).encode())
        h = base64.urlsafe_b64encode(json.dumps(hdr).encode()).rstrip(b"=")
        b = base64.urlsafe_b64encode(json.dumps(p).encode()).rstrip(b"=")
        sig = base64.urlsafe_b64encode(hmac.new(secret, h + b"." + b, hashlib.sha256).digest()).rstrip(b"=")
        write("fuzz_jwt", f"token-{i}", b"\x00" + h + b"." + b + b"." + sig)
    write("fuzz_jwt", "alg-none", b"\x01" + b'{"alg":"none"}\n{"iss":"dev"}')
    write("fuzz_jwt", "kid", b"\x01" + b'{"alg":"RS256","kid":"rsa1"}\n{"iss":"https://idp.test","aud":"bulwark","exp":1767226000}')
    write("fuzz_jwt", "jku", b"\x01" + b'{"alg":"HS256","jku":"http://x"}\n{"iss":"dev"}')


def intent():
    lines = []
    for name in ("intent.tsv", "clients.tsv"):
        for ln in (FIX / "policy" / name).read_text().splitlines():
            if ln and not ln.startswith("#") and "\t" in ln:
                lines.append(ln.split("\t", 1)[1].replace("\\n", "\n"))
    for i, sql in enumerate(lines[::6]):
        write("fuzz_intent", f"sql-{i:03d}", sql.encode())


CUST = [("id", 16400, 1, 23, 4, 0), ("name", 16400, 2, 25, -1, 0), ("email", 16400, 3, 25, -1, 0),
        ("card_number", 16400, 4, 25, -1, 0), ("ssn", 16400, 5, 1043, -1, 1),
        ("notes", 16400, 6, 25, -1, 0)]


def rec(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!H", len(body)) + body


def rewrite():
    row = values([b"1", b"Ada", b"ada@example.com", b"4111111111111111", b"123-45-6789",
                  b"call 555-123-4567 or key AKIAIOSFODNN7EXAMPLE"])
    for rules in range(4):
        sel = rules | (0 << 2)
        write("fuzz_rewrite", f"select-star-{rules}", bytes([sel]) + rec(b"T", rowdesc(CUST))
              + rec(b"D", row) + rec(b"D", values([b"2", None, None, b"", b"", b"x"])))
    sel = 1 | (3 << 2) | 0x20
    kv = rowdesc([("k", 16500, 1, 20, 8, 1), ("v", 16500, 2, 1700, -1, 0), ("j", 16500, 3, 3802, -1, 1),
                  ("b", 16500, 4, 17, -1, 1), ("n", 16500, 5, 114, -1, 0)])
    write("fuzz_rewrite", "kv-binary", bytes([sel, 5, 1, 0, 1, 1, 0]) + rec(b"T", kv)
          + rec(b"D", values([struct.pack("!q", 7), b"12.50", b"\x01{\"a\": \"x@y.com\"}",
                              b"\xde\xad", b"{\"e\": \"bob@example.org\"}"])))
    sel = 0 | (2 << 2) | 0x40
    write("fuzz_rewrite", "whole-row-and-errors", bytes([sel])
          + rec(b"T", rowdesc([("c", 0, 0, 16401, -1, 0)]))
          + rec(b"D", values([b"(1,Ada,ada@example.com,4111111111111111,123-45-6789,)"]))
          + rec(b"E", error([("S", "ERROR"), ("C", "23505"), ("M", "duplicate key"),
                             ("D", "Key (email)=(ada@example.com) already exists.")]))
          + rec(b"N", error([("S", "NOTICE"), ("C", "00000"), ("M", "ssn 123-45-6789")]))
          + rec(b"A", struct.pack("!I", 9) + cstr("c") + cstr("card 4111 1111 1111 1111")))
    write("fuzz_rewrite", "unknown-plan", bytes([3 | (7 << 2)]) + rec(b"T", rowdesc(CUST[:3]))
          + rec(b"D", values([b"1", b"x", b"eve@example.com"])))


def detect():
    n = 0
    for ln in (FIX / "mask" / "detectors.tsv").read_text().splitlines():
        if ln and not ln.startswith("#"):
            parts = ln.split("\t")
            if len(parts) >= 2 and n < 60:
                write("fuzz_detect", f"value-{n:02d}", bytes([n % 4]) + parts[1].replace("\\n", "\n").encode())
                n += 1


def copy():
    text = b"1\tAda\tada@example.com\t4111111111111111\t123-45-6789\t\\N\n2\tBob\t\\N\t\t\tnote\\tx\n"
    write("fuzz_copy", "text", bytes([0]) + bytes([40]) + text[:40] + bytes([len(text) - 40]) + text[40:])
    csv = b'id,name,email,card_number,ssn,notes\n1,"Ada, L",ada@example.com,4111111111111111,123-45-6789,"multi\nline"\n'
    write("fuzz_copy", "csv", bytes([1 | 8]) + bytes([len(csv)]) + csv)
    hdr = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!II", 0, 0)
    tup = struct.pack("!h", 6)
    for v in (struct.pack("!i", 1), b"Ada", b"ada@example.com", b"4111111111111111", None, b"n"):
        tup += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    binary = hdr + tup + struct.pack("!h", -1)
    write("fuzz_copy", "binary", bytes([2]) + bytes([len(binary)]) + binary)
    semi = b"ada@example.com;123-45-6789;1\nNULL;'a;b';2\n"
    write("fuzz_copy", "csv-options", bytes([3 | 16]) + bytes([len(semi)]) + semi)
    pipe = b"Ada|ada@example.com\nBob|\\N\n"
    write("fuzz_copy", "text-pipe", bytes([5]) + bytes([len(pipe)]) + pipe)


def audit():
    prev = bytes(32)
    canon = (b'{"data":{"decision":"allow","sql":"select 1"},"seq":7,"session":"0123456789abcdef",'
             b'"ts":1767225600000000,"type":"statement","v":1}')
    h = hashlib.sha256(prev + canon).digest()
    write("fuzz_audit", "record", b"\x00" + b"\x01" + prev + h + canon)
    canon2 = (b'{"data":{"reason":"expired","sub":"svc-\\u0001"},"seq":8,"session":null,'
              b'"ts":1767225600000001,"type":"login_failed","v":1}')
    write("fuzz_audit", "record-login-failed", b"\x00" + b"\x01" + h
          + hashlib.sha256(h + canon2).digest() + canon2)
    cp = (b'{"hash":"' + h.hex().encode() + b'","key":null,"seq":7,"ts":1767225600000000,"v":1}')
    write("fuzz_audit", "checkpoint", b"\x01" + struct.pack("!H", 0) + cp)
    write("fuzz_audit", "checkpoint-signed", b"\x01" + struct.pack("!H", 64) + bytes(range(64)) + cp)
    write("fuzz_audit", "canon", b"\x02" + '{"b":[1,2.5,-0,1e21,"\\u00e9\\ud83d\\ude00"],"a":{"z":null,"\\u0000":true}}'.encode())


def present():
    """fuzz_present: chunks [kind][u16 length][bytes] (see fuzz_present.c)."""
    def chunk(kind, b):
        b = b.encode() if isinstance(b, str) else b
        return bytes([kind]) + struct.pack("!H", len(b)) + b

    def rec(seq, ts, typ, data, sid="s-0001"):
        return json.dumps({"data": data, "seq": seq, "session": sid, "ts": ts, "type": typ,
                           "v": 1}, sort_keys=True, separators=(",", ":"))

    t0 = 1714564800000000
    start = rec(1, t0, "session_start", {
        "sub": "svc-agent-1", "iss": "dev", "role": "analyst", "target": "shop",
        "client": "127.0.0.1:50312", "tls": "TLSv1.3", "application_name": "langchain",
        "claims": {"sub": "svc-agent-1", "groups": ["analytics-agents"]}})
    stmt = rec(2, t0 + 12000, "statement", {
        "sql": "SELECT id, email FROM customers\n LIMIT 2", "decision": "allow",
        "rule": "read-public", "intent": {"select": ["public.customers"]},
        "params": ["a", None], "approval": 17, "start": t0 + 12000})
    res = rec(3, t0 + 15000, "result", {
        "stmt": 2, "end": t0 + 15250, "tag": "SELECT 2", "rows": 9,
        "columns": ["id", "email"], "types": [23, 25],
        "values": [["1", "a***@example.com"], ["22", "\u001b[31m\u202eevil\tx\ny"]],
        "truncated": True})
    deny = rec(4, t0 + 20000, "statement", {"sql": "DROP TABLE customers", "decision": "deny",
                                            "rule": "no-ddl", "message": "denied"})
    err = rec(5, t0 + 20100, "result", {"stmt": 4, "sqlstate": "42501", "error": "denied \u009b"})
    note = rec(6, t0 + 30000, "note", {"what": "reload", "roles": 3})
    end = rec(7, t0 + 52100, "session_end", {"reason": "client closed the connection"})
    h = hashlib.sha256(bytes(32) + start.encode()).hexdigest()
    cp = json.dumps({"hash": h, "key": None, "seq": 1, "ts": t0, "v": 1}, sort_keys=True,
                    separators=(",", ":"))
    session = bytes([7, 6]) + b"s-0001" + json.dumps({
        "sub": "svc-agent-1", "iss": "dev", "role": "analyst", "target": "shop",
        "client": "127.0.0.1:50312", "app": "psql\u0007", "reason": "closed",
        "start": t0, "end": t0 + 52100, "first": 1}).encode()
    write("fuzz_present", "session", b"".join(chunk(0, r) for r in (start, stmt, res, deny, err,
                                                                     note, end))
          + chunk(3, struct.pack("!H", 0) + cp.encode()) + chunk(4, session))
    write("fuzz_present", "tampered-and-damaged",
          chunk(1, stmt) + chunk(2, b"\x01" + bytes(10)) + chunk(0, "{}") + chunk(1, end))
    write("fuzz_present", "open-session-row",
          chunk(4, bytes([0, 3]) + b"s-2" + b'{"sub":"x\\u202ey","start":1,"first":2}'))


if __name__ == "__main__":
    shutil.rmtree(OUT, ignore_errors=True)
    for f in (frontend, backend, jwt, intent, rewrite, detect, copy, audit, present):
        f()
    for d in sorted(OUT.iterdir()):
        print(d.name, len(list(d.iterdir())))
