"""TLS on both sides: clients with sslmode=require and verify-full against the demo CA,
plaintext refused off loopback, and the gateway's upstream sslmode."""

import psycopg2
import pytest

from harness import GatewayOptions, RawPg, parse_error_fields

GATEWAY = GatewayOptions(tls=True, allow_plaintext_on_loopback=True)


def ssl_info(conn):
    return conn.info.ssl_in_use, conn.info.ssl_attribute("protocol")


def test_client_sslmode_require_gets_an_encrypted_session(gw):
    conn = gw.endpoint(sslmode="require").connect()
    try:
        in_use, proto = ssl_info(conn)
        assert in_use and proto in ("TLSv1.2", "TLSv1.3")
        with conn.cursor() as cur:
            cur.execute("select count(*) from customers")
            assert cur.fetchone()[0] == 5
    finally:
        conn.close()


def test_client_sslmode_verify_full_accepts_the_demo_ca_for_localhost(gw, certdir):
    ep = gw.endpoint(sslmode="verify-full", host="localhost",
                     sslrootcert=str(certdir / "ca.crt"))
    conn = ep.connect()
    try:
        assert ssl_info(conn)[0]
        with conn.cursor() as cur:
            cur.execute("select 'verified'")
            assert cur.fetchone()[0] == "verified"
    finally:
        conn.close()


def test_client_verify_full_rejects_a_certificate_from_another_ca(gw, tmp_path):
    from harness import SCRIPTS, run
    run([str(SCRIPTS / "mkcerts.sh"), str(tmp_path / "other")])
    ep = gw.endpoint(sslmode="verify-full", host="localhost",
                     sslrootcert=str(tmp_path / "other" / "ca.crt"))
    with pytest.raises(psycopg2.OperationalError) as exc:
        ep.connect().close()
    assert "certificate verify failed" in str(exc.value)


def test_ssl_request_is_answered_S(gw):
    c = RawPg(gw.host, gw.port)
    try:
        assert c.ssl_request() == b"S"
    finally:
        c.close()


@pytest.fixture(scope="module")
def wildcard_gw(make_gateway):
    # The listener is bound to 0.0.0.0: not loopback, whatever address the client uses,
    # so allow_plaintext_on_loopback does not apply.
    return make_gateway(GatewayOptions(listen_host="0.0.0.0", tls=True,
                                       allow_plaintext_on_loopback=True), "gw-wildcard")


@pytest.mark.gateway_only
def test_plaintext_is_refused_on_a_non_loopback_listener(wildcard_gw):
    g = wildcard_gw
    with pytest.raises(psycopg2.OperationalError) as exc:
        g.endpoint(sslmode="disable").connect().close()
    assert "FATAL" in str(exc.value)
    c = RawPg("127.0.0.1", g.port)
    try:
        c.startup("app", "shop")
        t, body = c.read_msg()
        assert t == b"E", f"expected ErrorResponse, got {t!r}"
        fields = parse_error_fields(body)
        assert fields.get("V", fields.get("S")) == "FATAL"
        assert fields["C"] == "28000"
        c.read_until_closed(5)
    finally:
        c.close()
    # TLS on the same listener works.
    conn = g.endpoint(sslmode="require").connect()
    try:
        with conn.cursor() as cur:
            cur.execute("select 1")
            assert cur.fetchone()[0] == 1
    finally:
        conn.close()


def upstream_ssl(gw, target):
    conn = gw.endpoint(target=target).connect()
    try:
        with conn.cursor() as cur:
            cur.execute("select ssl, version from pg_stat_ssl where pid = pg_backend_pid()")
            return cur.fetchone()
    finally:
        conn.close()


def test_upstream_sslmode_disable_is_plaintext(gw):
    assert upstream_ssl(gw, "shop")[0] is False


def test_upstream_sslmode_require_encrypts_the_upstream_connection(gw):
    ssl_on, version = upstream_ssl(gw, "shop_tls_require")
    assert ssl_on is True and version in ("TLSv1.2", "TLSv1.3")


def test_upstream_sslmode_verify_full_checks_the_server_certificate(gw):
    ssl_on, _ = upstream_ssl(gw, "shop_tls_verify")
    assert ssl_on is True


@pytest.mark.gateway_only
def test_upstream_verify_full_with_the_wrong_ca_fails_the_login_with_08006(gw):
    with pytest.raises(psycopg2.OperationalError) as exc:
        gw.endpoint(target="shop_tls_badca").connect().close()
    assert "FATAL" in str(exc.value)
    c = RawPg(gw.host, gw.port)
    try:
        c.startup("app", "shop_tls_badca")
        with pytest.raises(Exception) as e:
            c.finish_login("app", gw.token())
        assert getattr(e.value, "sqlstate", None) == "08006", repr(e.value)
    finally:
        c.close()


@pytest.mark.gateway_only
def test_cancel_of_a_tls_session_works_on_a_non_loopback_listener(wildcard_gw, pg):
    # libpq sends CancelRequest in plaintext on a fresh connection even when the session
    # is TLS: refusing plaintext must not refuse cancel requests.
    import threading
    import time

    import psycopg2.errors

    from harness import wait_for
    conn = wildcard_gw.endpoint(sslmode="require", application_name="bwit-tls-cancel").connect()
    out = {}

    def sleeper():
        try:
            with conn.cursor() as cur:
                cur.execute("select pg_sleep(30)")
        except Exception as e:  # noqa: BLE001
            out["error"] = e
        out["t"] = time.monotonic()

    th = threading.Thread(target=sleeper)
    th.start()
    try:
        wait_for(lambda: pg.backends("application_name = 'bwit-tls-cancel' and state = 'active'"),
                 10, "the query to run")
        t0 = time.monotonic()
        conn.cancel()
        th.join(6)
        assert isinstance(out.get("error"), psycopg2.errors.QueryCanceled), out
        assert out["t"] - t0 < 1.0
    finally:
        if th.is_alive():
            pg.admin_query("select pg_cancel_backend(pid) from pg_stat_activity "
                           "where application_name = 'bwit-tls-cancel'")
            th.join(5)
        conn.close()
