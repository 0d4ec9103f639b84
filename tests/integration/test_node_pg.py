"""node-pg (npm `pg`, `pg-cursor`) through the gateway: the extended protocol as a real
Node client drives it. tests/integration/node/pg_checks.js runs every check once and
reports JSON; each test asserts one behaviour."""

import pytest

from harness import node_script


@pytest.fixture(scope="module")
def result(gw):
    out = node_script("pg_checks.js", gw.endpoint(application_name="bwit-node-pg"))
    assert "fatal" not in out, out
    return out


def test_parameterized_query_uses_bound_values(result):
    assert result["params"] == [{"sum": 42, "t": "päivää", "n": None}]


def test_named_statement_is_parsed_once_and_reused(result):
    assert result["named_reused"] == [2, 4, 6, 8, 10]


def test_named_statement_outlives_its_transaction(result):
    assert result["named_across_transactions"] == [2, 4]


def test_binary_result_format_is_decoded(result):
    b = result["binary"]
    assert b == {"formats": ["binary"] * 6, "i4": 7, "i8": "9000000000", "f8": 2.5,
                 "t": "abc", "b": True, "p": 11}


def test_cursor_reads_in_row_limited_batches(result):
    # Execute with max rows, Flush, PortalSuspended; the last read returns what is left.
    assert result["cursor"] == [[1, 2], [3, 4], [5, 6], [7, 8], [9], []]


def test_closing_a_cursor_early_leaves_the_connection_usable(result):
    assert result["cursor_then_query"] == [[1, 2, 3], "after cursor"]


def test_error_in_extended_protocol_then_named_statement_still_works(result):
    assert result["error_then_usable"] == ["22012", 42]


def test_pool_runs_queries_on_several_connections_in_parallel(result):
    pool = result["pool"]
    assert sorted(pool["ids"]) == list(range(20))
    assert pool["distinct_backends"] == 5
