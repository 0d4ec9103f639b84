"""The gateway process: SIGTERM drains (running statements finish, new clients are turned
away, exit 0), SIGHUP reloads (new policies apply to new sessions, a broken file keeps the
old configuration, existing sessions go on)."""

import json
import signal
import threading

import psycopg2
import pytest

from harness import OWNER, GatewayOptions, wait_for

pytestmark = pytest.mark.gateway_only


def test_sigterm_lets_a_running_statement_finish_then_exits_0(make_gateway):
    g = make_gateway(GatewayOptions(tls=False), "gw-drain")
    conn = g.endpoint(application_name="bwit-drain").connect()
    result = {}

    def slow_query():
        try:
            with conn.cursor() as cur:
                cur.execute("select pg_sleep(1.5), 'finished'")
                result["row"] = cur.fetchone()
        except Exception as e:  # noqa: BLE001
            result["error"] = e

    th = threading.Thread(target=slow_query)
    th.start()
    wait_for(lambda: g.pg.backends("application_name = 'bwit-drain' and state = 'active'"),
             10, "the statement to run")
    g.stopped_by_test = True
    g.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "event=draining" in g.log_text(), 5, "the gateway to start draining")
    # New clients are turned away while draining.
    with pytest.raises(psycopg2.OperationalError):
        g.endpoint().connect().close()
    th.join(10)
    assert result.get("row") == ("", "finished"), result
    conn.close()
    g.proc.wait(timeout=5)  # the last session gone, no need to wait for the grace
    assert g.proc.returncode == 0, g.log_tail()


def test_sighup_reload_adds_a_role_and_keeps_existing_sessions(make_gateway):
    g = make_gateway(GatewayOptions(tls=False), "gw-reload")
    old = g.endpoint(application_name="bwit-before-reload").connect()
    old.autocommit = True
    with pytest.raises(psycopg2.OperationalError):
        g.endpoint(role="r_new").connect().close()
    pol = {"role": "r_new", "identities": [{"iss": "dev", "sub": "svc-*"}],
           "upstream": {"shop": {"user": OWNER, "password_file": f"../secrets/{OWNER}"}},
           "default": "allow"}
    (g.workdir / "policies" / "r_new.json").write_text(json.dumps(pol))
    g.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "event=reloaded" in g.log_text(), 5, "the reload to be logged")

    def new_role_logs_in():
        c = g.endpoint(role="r_new").connect()
        c.close()
        return True

    wait_for(new_role_logs_in, 5, "role r_new to be accepted after SIGHUP")
    with old.cursor() as cur:
        cur.execute("select 'still here'")
        assert cur.fetchone()[0] == "still here"
    old.close()


def test_sighup_with_a_broken_config_keeps_the_previous_one(make_gateway):
    g = make_gateway(GatewayOptions(tls=False), "gw-badreload")
    good = g.config_path.read_text()
    g.config_path.write_text(good.replace('"targets"', '"targetz"'))
    try:
        g.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "event=reload_failed" in g.log_text(), 5,
                 "the failed reload to be logged")
        assert g.alive()
        c = g.endpoint().connect()
        with c.cursor() as cur:
            cur.execute("select count(*) from products")
            assert cur.fetchone()[0] == 4
        c.close()
    finally:
        g.config_path.write_text(good)
