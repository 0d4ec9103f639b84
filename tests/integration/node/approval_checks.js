// node-pg (extended protocol) for tests/integration/test_approvals.py: sends every case in
// BWIT_APPROVAL_CASES at once on one connection (client.query without awaiting, so node-pg
// queues them behind each other), and reports each outcome in the order they completed,
// with the notices the connection received.
//
//   BWIT_APPROVAL_CASES = [{"name": "del", "text": "DELETE ... $1", "values": [5]}, ...]
//
// Connection settings come from the libpq environment. Prints `RESULT_JSON {...}` last.
import pg from "pg";

const { Client } = pg;
const asText = { getTypeParser: () => (v) => v };

async function main() {
  const cases = JSON.parse(process.env.BWIT_APPROVAL_CASES || "[]");
  const client = new Client({
    ssl: (process.env.PGSSLMODE || "disable") === "disable" ? false : { rejectUnauthorized: false },
    application_name: process.env.PGAPPNAME || "bwit-approval-node",
  });
  const notices = [];
  client.on("notice", (n) => notices.push(String(n.message)));
  await client.connect();
  const done = [];
  await Promise.all(cases.map((c) =>
    client.query({ text: c.text, values: c.values ?? [], rowMode: "array", types: asText })
      .then((r) => done.push({ name: c.name, rows: r.rows, command: r.command, rowCount: r.rowCount }))
      .catch((e) => done.push({ name: c.name, error: { code: e.code ?? null, message: String(e.message ?? e) } }))));
  await client.end();
  console.log("RESULT_JSON " + JSON.stringify({ done, notices }));
}

main().catch((e) => {
  console.log("RESULT_JSON " + JSON.stringify({ fatal: { code: e.code ?? null, message: String(e.message ?? e) } }));
  process.exitCode = 1;
});
