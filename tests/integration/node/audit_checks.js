// node-pg (extended protocol) for tests/integration/test_audit_e2e.py: runs the cases given
// as JSON in BWIT_AUDIT_CASES, in order, on one connection, and reports what the client saw,
// so that pytest can compare it with the audit record of the session.
//
//   BWIT_AUDIT_CASES = [{"name": "sum", "text": "select $1::int ...", "values": [40, 2],
//                        "statement": "optional prepared-statement name"}, ...]
//
// Each result is {rows: [[text or null, ...], ...], command, rowCount} or
// {error: {code, message}}; values are converted back to their text form (rowMode "array",
// every type parser returning the text it got). Connection settings come from the libpq
// environment (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE, PGAPPNAME).
// Prints `RESULT_JSON {...}` as its last line.
import pg from "pg";

const { Client } = pg;
const asText = { getTypeParser: () => (v) => v };

async function main() {
  const cases = JSON.parse(process.env.BWIT_AUDIT_CASES || "[]");
  const client = new Client({
    ssl: (process.env.PGSSLMODE || "disable") === "disable" ? false : { rejectUnauthorized: false },
    application_name: process.env.PGAPPNAME || "bwit-audit-node",
  });
  await client.connect();
  const results = [];
  for (const c of cases) {
    const q = { text: c.text, values: c.values ?? [], rowMode: "array", types: asText };
    if (c.statement) q.name = c.statement;
    try {
      const r = await client.query(q);
      results.push({ name: c.name, rows: r.rows, command: r.command, rowCount: r.rowCount });
    } catch (e) {
      results.push({ name: c.name, error: { code: e.code ?? null, message: String(e.message ?? e) } });
    }
  }
  await client.end();
  console.log("RESULT_JSON " + JSON.stringify({ results }));
}

main().catch((e) => {
  console.log("RESULT_JSON " + JSON.stringify({ fatal: { code: e.code ?? null, message: String(e.message ?? e) } }));
  process.exitCode = 1;
});
