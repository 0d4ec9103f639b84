// node-pg in the extended protocol with binary results, for the masking tests
// (tests/integration/test_masking_e2e.py). Runs every case of the JSON file named by
// MASK_CASES, in order, on one connection ([{ "id": 1, "text": "SELECT ..." }, ...]), each as
// client.query({ text, binary: true, rowMode: "array" }): Parse, Bind (all results binary),
// Describe, Execute, Sync. After a connection error the next case gets a fresh connection.
// Then MASK_NAMED_REPEAT times one named statement (node-pg describes it once and then
// only binds and executes it). Connection settings come from the libpq environment.
// Prints `RESULT_JSON {...}` last:
//   { results: [{ id, fields: [{ name, type }], rows: [[value...]] } | { id, error }],
//     named: [...rows per execution] }
// Values: null, strings, numbers, booleans as they are; Buffers as { hex }; anything else
// as its JSON.
import fs from "node:fs";
import pg from "pg";

const { Client } = pg;

function sslOption() {
  const mode = process.env.PGSSLMODE || "disable";
  if (mode === "disable") return false;
  return { rejectUnauthorized: false };
}

async function connect() {
  const c = new Client({ ssl: sslOption(), application_name: "bwit-mask-node" });
  c.broken = false;
  c.notices = [];
  c.on("error", () => { c.broken = true; });
  c.on("notice", (n) => { c.notices.push(String(n.message)); });
  await c.connect();
  return c;
}

function plain(v) {
  if (v === null || v === undefined) return null;
  if (Buffer.isBuffer(v)) return { hex: v.toString("hex"), utf8: v.toString("utf8") };
  if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") return v;
  if (typeof v === "bigint") return v.toString();
  try { return JSON.parse(JSON.stringify(v)); } catch { return String(v); }
}

async function main() {
  const cases = JSON.parse(fs.readFileSync(process.env.MASK_CASES, "utf8"));
  const results = [];
  let client = await connect();
  for (const c of cases) {
    if (client.broken) {
      try { await client.end(); } catch { /* already gone */ }
      client = await connect();
    }
    try {
      const r = await client.query({ text: c.text, binary: true, rowMode: "array" });
      results.push({
        id: c.id,
        fields: (r.fields || []).map((f) => ({ name: f.name, type: f.dataTypeID })),
        rows: (r.rows || []).map((row) => row.map(plain)),
      });
    } catch (e) {
      results.push({ id: c.id, error: { code: e.code ?? null, message: String(e.message ?? e) } });
    }
  }
  const named = [];
  const repeat = Number(process.env.MASK_NAMED_REPEAT || 0);
  for (let i = 0; i < repeat; i++) {
    try {
      const r = await client.query({ name: "mask_named", text: "SELECT id, email, ssn FROM customers WHERE id = $1",
                                     values: [1 + (i % 3)], binary: true, rowMode: "array" });
      named.push({ fields: r.fields.map((f) => ({ name: f.name, type: f.dataTypeID })),
                   rows: r.rows.map((row) => row.map(plain)) });
    } catch (e) {
      named.push({ error: { code: e.code ?? null, message: String(e.message ?? e) } });
    }
  }
  const notices = client.notices;
  await client.end();
  console.log("RESULT_JSON " + JSON.stringify({ results, named, notices }));
}

main().catch((e) => {
  console.log("RESULT_JSON " + JSON.stringify({ fatal: String(e && e.stack || e) }));
  process.exit(1);
});
