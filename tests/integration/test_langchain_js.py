"""LangChain.js SqlDatabase (@langchain/classic/sql_db) over a TypeORM postgres DataSource,
as LangChain's SQL tools use it, through the gateway. No language model involved."""

import pytest

from harness import CUSTOMERS, ORDERS_COUNT, node_script


@pytest.fixture(scope="module")
def result(gw):
    out = node_script("langchain_sqldb.js", gw.endpoint(application_name="bwit-langchain-js"))
    assert "fatal" not in out, out
    return out


def test_from_data_source_params_lists_the_tables(result):
    assert result["tables"] == ["customers", "orders", "products"]


def test_table_info_has_create_statements_and_sample_rows(result):
    info = result["tableInfo"]
    for t in ("customers", "orders", "products"):
        assert f'CREATE TABLE "public"."{t}"' in info
        assert f'SELECT * FROM "public"."{t}" LIMIT 3;' in info
    # getTableInfo swallows query errors; the sample rows prove the SELECTs ran.
    for _, name, email in CUSTOMERS[:3]:
        assert name in info and email in info
    assert CUSTOMERS[3][1] not in info, "only three sample rows per table"


def test_run_returns_rows_as_json(result):
    assert result["run"] == [{"id": i, "name": n} for i, n, _ in CUSTOMERS[:2]]


def test_run_error_surfaces_and_the_datasource_keeps_working(result):
    assert result["runError"] is not None and "division by zero" in result["runError"]["message"]
    assert result["afterError"] == [{"n": ORDERS_COUNT}]
