"""pgbench through the gateway: `-i` (client-side COPY) and `-S` in the simple, extended
and prepared query modes."""

import re

import pytest

from harness import PG_BIN, run

CLIENTS = 4
TRANSACTIONS_PER_CLIENT = 250


def pgbench(ep, *args, timeout=120):
    return run([str(PG_BIN / "pgbench"), *args], timeout=timeout, env=ep.env())


@pytest.fixture(scope="module")
def bench_ep(gw):
    ep = gw.endpoint(target="bench", application_name="bwit-pgbench")
    r = pgbench(ep, "-i", "-s", "1", "-q")
    assert r.returncode == 0, f"pgbench -i failed ({r.returncode}):\n{r.stderr}{r.stdout}"
    return ep


def test_pgbench_init_loads_accounts_with_copy(bench_ep, pg):
    n = pg.admin_query("select count(*) from pgbench_accounts", dbname="bench")[0][0]
    assert n == 100000


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_select_only_runs_in_query_mode(bench_ep, mode):
    r = pgbench(bench_ep, "-S", "-M", mode, "-c", str(CLIENTS), "-j", "2",
                "-t", str(TRANSACTIONS_PER_CLIENT), "-n")
    assert r.returncode == 0, f"pgbench -M {mode} failed ({r.returncode}):\n{r.stderr}{r.stdout}"
    done = re.search(r"number of transactions actually processed: (\d+)/(\d+)", r.stdout)
    assert done and done.group(1) == done.group(2) == str(CLIENTS * TRANSACTIONS_PER_CLIENT), r.stdout
    failed = re.search(r"number of failed transactions: (\d+)", r.stdout)
    assert failed and failed.group(1) == "0", r.stdout
    tps = re.search(r"tps = ([0-9.]+)", r.stdout)
    assert tps and float(tps.group(1)) > 0, r.stdout
