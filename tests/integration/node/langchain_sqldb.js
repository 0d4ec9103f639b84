// LangChain.js SqlDatabase over a TypeORM postgres DataSource, as its SQL tools use it:
// fromDataSourceParams, getTableInfo(), run("SELECT ..."). No language model involved.
// Connection settings come from the libpq environment. Prints `RESULT_JSON {...}` last.
import "reflect-metadata";
import { DataSource } from "typeorm";
import { SqlDatabase } from "@langchain/classic/sql_db";

async function main() {
  const mode = process.env.PGSSLMODE || "disable";
  const ds = new DataSource({
    type: "postgres",
    host: process.env.PGHOST,
    port: Number(process.env.PGPORT),
    username: process.env.PGUSER,
    password: process.env.PGPASSWORD,
    database: process.env.PGDATABASE,
    ssl: mode === "disable" ? false : { rejectUnauthorized: false },
    applicationName: "bwit-langchain-js",
  });
  const out = {};
  const db = await SqlDatabase.fromDataSourceParams({ appDataSource: ds });
  out.tables = db.allTables.map((t) => t.tableName).sort();
  out.tableInfo = await db.getTableInfo();
  out.run = JSON.parse(await db.run("SELECT id, name FROM customers ORDER BY id LIMIT 2"));
  try {
    await db.run("SELECT 1/0");
    out.runError = null;
  } catch (e) {
    out.runError = { code: e.code ?? e.driverError?.code ?? null, message: String(e.message) };
  }
  out.afterError = JSON.parse(await db.run("SELECT count(*)::int AS n FROM orders"));
  await ds.destroy();
  console.log("RESULT_JSON " + JSON.stringify(out));
}

main().catch((e) => {
  console.log("RESULT_JSON " + JSON.stringify({ fatal: { code: e.code ?? null, message: String(e.message ?? e) } }));
  process.exitCode = 1;
});
