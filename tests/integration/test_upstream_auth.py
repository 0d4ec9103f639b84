"""The gateway logs in upstream with each PostgreSQL password method: SCRAM-SHA-256, MD5,
cleartext password and trust (pg_hba.conf from scripts/pgtmp.sh assigns one per user)."""

import pytest

from harness import AUTH_ROLES


@pytest.mark.parametrize("role", ["r_scram", "r_md5", "r_clear", "r_trust"],
                         ids=["scram-sha-256", "md5", "cleartext", "trust"])
def test_upstream_auth_method_logs_in(gw, pg, role):
    conn = gw.endpoint(role=role, application_name=f"bwit-auth-{role}").connect()
    try:
        with conn.cursor() as cur:
            cur.execute("select current_user, count(*) from customers group by 1")
            assert cur.fetchone() == (AUTH_ROLES[role], 5)
    finally:
        conn.close()


def test_md5_user_really_has_an_md5_password(pg):
    # Otherwise PostgreSQL would silently upgrade the md5 method to SCRAM.
    stored = pg.admin_query("select left(rolpassword, 3) from pg_authid where rolname = 'u_md5'")
    assert stored == [("md5",)]
