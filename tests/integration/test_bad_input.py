"""Bad input and failing peers. Each test opens a healthy session through the gateway
before doing harm and uses it afterwards: one session's trouble never stalls another.

PostgreSQL itself closes silently on some malformed input (it logs a COMMERROR); the
gateway answers malformed protocol with FATAL 08P01 and closes (SPEC section 8). With
--direct the silent close is accepted, so the tests can be checked against the server.
"""

import ssl
import struct
import time

import pytest

from harness import (PROTO_3_0, SSL_REQUEST, GatewayOptions, PgError, RawPg,
                     parse_error_fields, query_msg, raw_login, startup_packet, wait_for)

GATEWAY = GatewayOptions(tls=True, allow_plaintext_on_loopback=True, forwarder=True)
CLOSE_DEADLINE_S = 5  # a refused connection must be closed by then
UPSTREAM_GONE_DEADLINE_S = 10  # the upstream backend of a dead client must be gone by then


def fatal_errors(msgs):
    return [parse_error_fields(b) for t, b in msgs if t == b"E"]


def expect_refusal(c: RawPg, gw, codes: set):
    """The peer answers FATAL with one of codes and closes (PostgreSQL itself may just
    close, which --direct accepts)."""
    t0 = time.monotonic()
    msgs = c.read_until_closed(CLOSE_DEADLINE_S)
    assert time.monotonic() - t0 < CLOSE_DEADLINE_S
    assert all(t == b"E" for t, _ in msgs), f"unexpected messages before close: {msgs}"
    errs = fatal_errors(msgs)
    if gw.is_direct and not errs:
        return
    assert errs, "connection closed without an ErrorResponse"
    assert errs[0].get("V", errs[0].get("S")) == "FATAL", errs[0]
    assert errs[0].get("C") in codes, errs[0]


def upstream_backends(pg, app):
    return pg.backends("application_name = %s", (app,))


def test_garbage_bytes_instead_of_a_startup_packet_are_refused(gw, healthy):
    c = RawPg(gw.host, gw.port)
    c.send(b"GET / HTTP/1.1\r\nHost: bulwark\r\n\r\n")
    expect_refusal(c, gw, {"08P01"})
    healthy.check()


def test_startup_packet_over_10000_bytes_is_refused(gw, healthy):
    c = RawPg(gw.host, gw.port)
    c.send(startup_packet({"user": "app", "database": "shop", "application_name": "x" * 10500}))
    expect_refusal(c, gw, {"08P01"})
    healthy.check()


def test_truncated_startup_packet_then_close_is_harmless(gw, healthy):
    c = RawPg(gw.host, gw.port)
    c.send(startup_packet({"user": "app", "database": "shop"})[:11])
    c.close()
    healthy.check()


def test_length_field_of_2_31_minus_1_after_login_is_refused(gw, pg, healthy):
    app = "bwit-hugelen"
    c = raw_login(gw.endpoint(application_name=app))
    c.send(b"Q" + struct.pack("!I", 0x7FFFFFFF) + b"select 1")
    expect_refusal(c, gw, {"08P01"})
    wait_for(lambda: not upstream_backends(pg, app), UPSTREAM_GONE_DEADLINE_S,
             "the session's upstream connection to close")
    healthy.check()


def test_truncated_message_then_close_releases_the_session(gw, pg, healthy):
    app = "bwit-truncated"
    c = raw_login(gw.endpoint(application_name=app))
    assert upstream_backends(pg, app)
    c.send(b"Q" + struct.pack("!I", 100) + b"sele")
    c.close()
    wait_for(lambda: not upstream_backends(pg, app), UPSTREAM_GONE_DEADLINE_S,
             "the session's upstream connection to close")
    healthy.check()


def test_protocol_version_4_0_is_fatal(gw, healthy):
    ep = gw.endpoint()
    c = RawPg(gw.host, gw.port)
    c.startup(ep.user, ep.dbname, version=4 << 16)
    msgs = c.read_until_closed(CLOSE_DEADLINE_S)
    errs = fatal_errors(msgs)
    assert errs and errs[0].get("V", errs[0].get("S")) == "FATAL", msgs
    # PostgreSQL: 0A000 "unsupported frontend protocol 4.0".
    assert errs[0]["C"] in ("0A000", "08P01"), errs[0]
    healthy.check()


def test_protocol_version_3_99_is_negotiated_down_or_fatal(gw, healthy):
    ep = gw.endpoint(application_name="bwit-proto399")
    c = RawPg(gw.host, gw.port)
    c.startup(ep.user, ep.dbname, version=(3 << 16) | 99, application_name=ep.application_name)
    t, body = c.read_msg()
    if t == b"v":
        newest, n_unrecognized = struct.unpack_from("!II", body)
        # The newest minor version supported for major 3: 0 (PostgreSQL sends it as 3.0).
        assert newest in (0, PROTO_3_0), newest
        c.finish_login(ep.user, ep.password)
        rows, tags = c.query("select 'negotiated'")
        assert rows == [["negotiated"]]
        c.close()
    else:
        assert t == b"E", f"3.99 must get NegotiateProtocolVersion or FATAL, got {t!r}"
        assert parse_error_fields(body).get("V") == "FATAL"
        c.read_until_closed(CLOSE_DEADLINE_S)
    healthy.check()


@pytest.mark.gateway_only  # PostgreSQL built with GSSAPI answers 'G'
def test_gssenc_request_gets_N_and_the_login_goes_on(gw, healthy):
    ep = gw.endpoint(application_name="bwit-gssenc")
    c = RawPg(gw.host, gw.port)
    c.send(struct.pack("!II", 8, 80877104))
    assert c.read_byte() == b"N"
    c.login(ep.user, ep.password, ep.dbname, application_name=ep.application_name)
    assert c.query("select 'after gssenc'")[0] == [["after gssenc"]]
    c.close()
    healthy.check()


def test_plaintext_startup_after_ssl_request_S_gets_no_service(gw, healthy):
    ep = gw.endpoint()
    c = RawPg(gw.host, gw.port)
    assert c.ssl_request() == b"S"
    c.send(startup_packet({"user": ep.user, "database": ep.dbname}))
    data = c.read_raw_until_closed(CLOSE_DEADLINE_S)
    # At most a TLS alert (0x15) or an ErrorResponse; never an authentication request.
    assert not data.startswith(b"R"), data[:40]
    assert data == b"" or data[:1] in (b"\x15", b"E"), data[:40]
    healthy.check()


def test_data_sent_with_the_ssl_request_is_not_read_after_the_handshake(gw, healthy):
    # A startup packet arrives in the same segment as the SSLRequest, before the TLS
    # handshake: it may have been injected by a man in the middle, so it must never be
    # served as if it had come over TLS (CVE-2021-23214). The handshake may fail, or it may
    # succeed and the server then refuses with FATAL 08P01, as PostgreSQL does.
    ep = gw.endpoint()
    c = RawPg(gw.host, gw.port)
    c.send(struct.pack("!II", 8, SSL_REQUEST) + startup_packet({"user": ep.user,
                                                                 "database": ep.dbname}))
    first = c.read_byte()
    if first == b"E":  # refused at once, before any handshake: fine too
        c.buf[:0] = first
        errs = fatal_errors(c.read_until_closed(CLOSE_DEADLINE_S))
        assert errs and errs[0]["C"] == "08P01", errs
        healthy.check()
        return
    assert first == b"S", first
    ctx = ssl._create_unverified_context()
    c.sock.settimeout(CLOSE_DEADLINE_S)
    try:
        c.sock = ctx.wrap_socket(c.sock, server_hostname="localhost")
    except (ssl.SSLError, OSError):
        healthy.check()  # handshake refused: the injected bytes were not served
        return
    msgs = c.read_until_closed(CLOSE_DEADLINE_S)
    assert not any(t == b"R" for t, _ in msgs), f"the injected startup packet was served: {msgs}"
    errs = fatal_errors(msgs)
    assert errs and errs[0]["C"] == "08P01", msgs
    healthy.check()


def test_client_vanishing_mid_result_releases_its_upstream(gw, pg, healthy):
    app = "bwit-vanish"
    c = raw_login(gw.endpoint(application_name=app))
    c.send(query_msg("select g, repeat('x', 200) from generate_series(1, 3000000) g"))
    while True:
        t, _ = c.read_msg()
        if t == b"D":
            break
    c.close(rst=True)
    wait_for(lambda: not upstream_backends(pg, app), UPSTREAM_GONE_DEADLINE_S,
             "the vanished client's upstream backend to go away")
    healthy.check()


@pytest.mark.gateway_only
def test_upstream_killed_mid_query_gives_the_client_08006_then_close(gw, pg, healthy):
    app = "bwit-upstream-killed"
    c = raw_login(gw.endpoint(target="shop_fwd", application_name=app))
    try:
        c.send(query_msg("select pg_sleep(30)"))
        wait_for(lambda: pg.backends("application_name = %s and state = 'active'", (app,)),
                 10, "the query to run upstream")
        gw.forwarder.kill_connections()
        t0 = time.monotonic()
        msgs = c.read_until_closed(CLOSE_DEADLINE_S)
        errs = fatal_errors(msgs)
        assert errs, f"no ErrorResponse before close: {msgs}"
        assert errs[0]["C"] == "08006", errs[0]
        assert time.monotonic() - t0 < CLOSE_DEADLINE_S
    finally:
        c.close()
        pg.admin_query("select pg_terminate_backend(pid) from pg_stat_activity "
                       "where application_name = %s", (app,))
    healthy.check()


@pytest.mark.gateway_only
def test_upstream_down_at_login_is_fatal_08006(gw, healthy):
    ep = gw.endpoint(target="down")
    c = RawPg(gw.host, gw.port)
    c.startup(ep.user, ep.dbname)
    t0 = time.monotonic()
    with pytest.raises(PgError) as exc:
        c.finish_login(ep.user, ep.password)
    assert exc.value.severity == "FATAL" and exc.value.sqlstate == "08006", exc.value.fields
    assert time.monotonic() - t0 < CLOSE_DEADLINE_S
    c.read_until_closed(CLOSE_DEADLINE_S)
    healthy.check()


def test_wrong_token_is_fatal_28P01_and_not_echoed(gw, healthy):
    ep = gw.wrong_password_endpoint()
    c = RawPg(gw.host, gw.port)
    with pytest.raises(PgError) as exc:
        c.login(ep.user, ep.password, ep.dbname)
    assert exc.value.severity == "FATAL" and exc.value.sqlstate == "28P01", exc.value.fields
    assert ep.password not in str(exc.value.fields)
    c.read_until_closed(CLOSE_DEADLINE_S)
    healthy.check()


@pytest.mark.gateway_only
def test_token_of_an_identity_the_role_does_not_accept_is_refused(gw, healthy):
    ep = gw.endpoint(sub="intruder")  # the role accepts sub svc-* only
    c = RawPg(gw.host, gw.port)
    with pytest.raises(PgError) as exc:
        c.login(ep.user, ep.password, ep.dbname)
    assert exc.value.severity == "FATAL"
    assert exc.value.sqlstate in ("28P01", "28000"), exc.value.fields
    healthy.check()


@pytest.mark.gateway_only
def test_unknown_role_is_fatal_28000(gw, healthy):
    ep = gw.endpoint(role="no_such_role")
    c = RawPg(gw.host, gw.port)
    with pytest.raises(PgError) as exc:
        c.login(ep.user, ep.password, ep.dbname)
    assert exc.value.severity == "FATAL" and exc.value.sqlstate == "28000", exc.value.fields
    healthy.check()


def test_unknown_target_is_fatal_3D000(gw, healthy):
    ep = gw.endpoint(target="no_such_target")
    c = RawPg(gw.host, gw.port)
    with pytest.raises(PgError) as exc:
        c.login(ep.user, ep.password, ep.dbname)
    assert exc.value.severity == "FATAL" and exc.value.sqlstate == "3D000", exc.value.fields
    healthy.check()
