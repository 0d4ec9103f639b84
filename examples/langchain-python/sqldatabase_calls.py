#!/usr/bin/env python3
"""What LangChain's SQLDatabase does to a database, through Bulwark, without LangChain.

LangChain Python's `SQLDatabase.from_uri(URI)` (langchain_community.utilities) is a thin
layer over SQLAlchemy: it reflects the schema with SQLAlchemy's inspector, shows the model
each table's CREATE TABLE and three sample rows, and runs the model's SQL with `run()` (the
SQL tools call `run_no_throw()`, which turns an error into the text "Error: ..."). This
script makes exactly those calls with SQLAlchemy and psycopg2, so that it runs where
LangChain is not installed, and prints what an agent would be shown:

  1. get_usable_table_names()   inspector.get_table_names()
  2. get_table_info(["customers"])
                                MetaData.reflect(only=...), CREATE TABLE, indexes,
                                `SELECT ... FROM customers LIMIT 3` (sample rows)
  3. run("SELECT id, name, email, card_number, ssn FROM customers ORDER BY id LIMIT 3")
  4. run_no_throw("DROP TABLE support_tickets")        denied (rule no-ddl-dcl)
  5. run_no_throw("DELETE FROM support_tickets")       denied (rule no-unbounded-writes)
  6. run_no_throw("DELETE FROM support_tickets WHERE id = 4")
                                held for a human's approval (rule support-fixes)

Usage:
    BULWARK_URL='postgresql+psycopg2://analyst:TOKEN@localhost:6432/shop?sslmode=require' \\
        python3 sqldatabase_calls.py [--json]

With --json the last line of the output is `RESULT_JSON {...}` (the steps, every statement
SQLAlchemy sent, the gateway's notices) for tests/integration/test_agent_e2e.py.
"""

from __future__ import annotations

import json
import os
import sys

import sqlalchemy
from sqlalchemy import MetaData, create_engine, event, inspect, select, text
from sqlalchemy.schema import CreateTable

SAMPLE_ROWS = 3  # SQLDatabase's sample_rows_in_table_info default


class SQLDatabaseCalls:
    """The calls of langchain_community.utilities.SQLDatabase (schema=None, no views,
    sample_rows_in_table_info=3, indexes_in_table_info=False, max_string_length=300)."""

    def __init__(self, engine):
        self._engine = engine
        self._inspector = inspect(engine)
        self._all_tables = set(self._inspector.get_table_names())
        self._metadata = MetaData()
        self._metadata.reflect(bind=engine, only=sorted(self._all_tables))

    @classmethod
    def from_uri(cls, uri: str, **engine_args) -> "SQLDatabaseCalls":
        return cls(create_engine(uri, **engine_args))

    def get_usable_table_names(self) -> list:
        return sorted(self._all_tables)

    def get_table_info(self, table_names: list) -> str:
        missing = set(table_names) - self._all_tables
        if missing:
            raise ValueError(f"table_names {missing} not found in database")
        infos = []
        for table in self._metadata.sorted_tables:
            if table.name not in table_names:
                continue
            info = str(CreateTable(table).compile(self._engine)).rstrip()
            info += f"\n\n/*\n{self._sample_rows(table)}\n*/"
            infos.append(info)
        return "\n\n".join(infos)

    def _sample_rows(self, table) -> str:
        command = select(table).limit(SAMPLE_ROWS)
        columns = "\t".join(col.name for col in table.columns)
        try:
            with self._engine.connect() as connection:
                rows = connection.execute(command)
                sample = "\n".join("\t".join(str(v)[:100] for v in row) for row in rows)
        except sqlalchemy.exc.ProgrammingError:
            sample = ""  # SQLDatabase hides a failed sample the same way
        return f"{SAMPLE_ROWS} rows from {table.name} table:\n{columns}\n{sample}"

    def run(self, command: str) -> str:
        with self._engine.begin() as connection:
            cursor = connection.execute(text(command))
            if cursor.returns_rows:
                return str([tuple(str(v)[:300] if isinstance(v, str) else v for v in row)
                            for row in cursor.fetchall()])
        return ""

    def run_no_throw(self, command: str) -> str:
        try:
            return self.run(command)
        except sqlalchemy.exc.SQLAlchemyError as e:
            return f"Error: {e}"


def main() -> int:
    uri = os.environ.get("BULWARK_URL")
    if not uri:
        print("sqldatabase_calls.py: set BULWARK_URL to "
              "postgresql+psycopg2://ROLE:TOKEN@HOST:PORT/TARGET?sslmode=...", file=sys.stderr)
        return 2
    as_json = "--json" in sys.argv[1:]
    out = {"sql": [], "notices": [], "steps": []}
    # One connection for the whole run: one gateway session, one replay.
    engine = create_engine(uri, pool_size=1, max_overflow=0)

    @event.listens_for(engine, "before_cursor_execute")
    def _record(conn, cursor, statement, parameters, context, executemany):
        out["sql"].append(cursor.mogrify(statement, parameters).decode()
                          if parameters else statement)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, record):
        # psycopg2 keeps NoticeResponses in a list; print them as they come instead.
        class Live(list):
            def append(self, notice):
                out["notices"].append(notice.strip())
                print(f"Notice from the gateway: {notice.strip()}", flush=True)
        dbapi_conn.notices = Live()

    def step(call: str, fn, *args):
        print(f"> {call}", flush=True)
        try:
            result, error = fn(*args), None
        except Exception as e:  # noqa: BLE001 - report what the agent would see
            result, error = None, f"{type(e).__name__}: {e}"
        shown = result if error is None else error
        print(shown if isinstance(shown, str) else json.dumps(shown), flush=True)
        out["steps"].append({"call": call, "result": result, "error": error})
        return result

    db = SQLDatabaseCalls(engine)
    step("get_usable_table_names()", db.get_usable_table_names)
    step('get_table_info(["customers"])', db.get_table_info, ["customers"])
    for sql, fn in (
            ("SELECT id, name, email, card_number, ssn FROM customers ORDER BY id LIMIT 3",
             db.run),
            ("DROP TABLE support_tickets", db.run_no_throw),
            ("DELETE FROM support_tickets", db.run_no_throw),
            ("DELETE FROM support_tickets WHERE id = 4", db.run_no_throw)):
        step(f"{fn.__name__}({sql!r})", fn, sql)
    engine.dispose()
    if as_json:
        print("RESULT_JSON " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
