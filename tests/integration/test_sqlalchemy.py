"""SQLAlchemy 1.4 + psycopg2 doing exactly what LangChain's Python SQLDatabase does, with the
token in the URI and sslmode=require (this module's gateway terminates TLS)."""

import pytest
from sqlalchemy import MetaData, create_engine, inspect, select, text
from sqlalchemy.schema import CreateTable

from harness import CUSTOMERS, ORDERS_COUNT, GatewayOptions

GATEWAY = GatewayOptions(tls=True)
SHOP_TABLES = ["customers", "orders", "products"]


@pytest.fixture(scope="module")
def engine(gw):
    ep = gw.endpoint(sslmode="require", application_name="bwit-sqlalchemy")
    uri = ep.uri("postgresql+psycopg2")
    assert ep.password in uri or gw.is_direct
    eng = create_engine(uri)
    yield eng
    eng.dispose()


def test_connection_is_encrypted(engine):
    raw = engine.raw_connection()
    try:
        assert raw.connection.info.ssl_in_use
        assert raw.connection.info.ssl_attribute("protocol") in ("TLSv1.2", "TLSv1.3")
    finally:
        raw.close()


def test_inspector_lists_the_tables(engine):
    insp = inspect(engine)
    tables = insp.get_table_names()
    views = insp.get_view_names()
    assert sorted(tables) == SHOP_TABLES
    assert views == []
    cols = [c["name"] for c in insp.get_columns("orders")]
    assert cols == ["id", "customer_id", "product_id", "qty", "ordered_at"]
    fks = insp.get_foreign_keys("orders")
    assert {fk["referred_table"] for fk in fks} == {"customers", "products"}


def test_reflect_then_sample_three_rows_per_table_like_sqldatabase_table_info(engine):
    # SQLDatabase.__init__: reflect the usable tables; get_table_info: CREATE TABLE text
    # plus `select(table).limit(3)` rows per table, each value str()-ed and cut to 100 chars.
    md = MetaData()
    md.reflect(bind=engine, views=False, only=SHOP_TABLES)
    assert sorted(md.tables) == SHOP_TABLES
    info = {}
    for table in md.sorted_tables:
        create = str(CreateTable(table).compile(engine))
        with engine.connect() as conn:
            rows = [[str(v)[:100] for v in r] for r in conn.execute(select(table).limit(3))]
        info[table.name] = (create, rows)
    assert "CREATE TABLE customers" in info["customers"][0]
    assert info["customers"][1] == [[str(i), n, e, "2024-01-01 00:00:00+00:00"]
                                    for i, n, e in CUSTOMERS[:3]]
    assert len(info["orders"][1]) == 3
    assert len(info["products"][1]) == 3


def test_run_executes_text_sql_in_a_transaction_like_sqldatabase_run(engine):
    # SQLDatabase.run: with engine.begin(): execute(text(sql)); fetchall() when rows return.
    sql = ("select c.name, count(*) as n from orders o join customers c on c.id = o.customer_id "
           "group by c.name order by n desc, c.name limit 10")
    with engine.begin() as conn:
        cursor = conn.execute(text(sql))
        assert cursor.returns_rows
        rows = cursor.fetchall()
    assert sum(n for _, n in rows) == ORDERS_COUNT
    assert rows[0] == ("Ada Lovelace", 2)


def test_run_error_rolls_back_and_the_engine_keeps_working(engine):
    from sqlalchemy.exc import DataError
    with pytest.raises(DataError) as exc:
        with engine.begin() as conn:
            conn.execute(text("select 1/0"))
    assert exc.value.orig.pgcode == "22012"
    with engine.begin() as conn:
        assert conn.execute(text("select count(*) from products")).scalar() == 4
