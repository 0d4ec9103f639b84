// node-pg in the extended protocol, for the policy tests (tests/integration/test_policy_e2e.py).
// Runs every case of the JSON file named by POLICY_CASES, in order, on one connection:
//   [{ "id": 1, "text": "SELECT ...", "values": [..], "stateful": false }, ...]
// Each case goes as client.query({ text, values, queryMode: "extended" }): Parse, Bind,
// Describe, Execute, Sync, whatever the values (node-pg would use the simple protocol for a
// query without values otherwise). After a case that is `stateful` (it may change the
// session: SET, PREPARE, BEGIN, ...) and was not refused, and after any connection error,
// the next case runs on a fresh connection, so every case is decided in a fresh session.
// With POLICY_GATEWAY_LOG naming the gateway's log file, each result also counts the
// `event=statement_refused` lines the gateway logged while the case ran (`refusals`): the
// gateway logs a refusal before it answers, so the count belongs to that case.
// Connection settings come from the libpq environment. Prints `RESULT_JSON {...}` last:
//   { results: [{ id, ok, command, rows, refusals } | { id, error: { code, message,
//     position, severity }, refusals }], connections: N }
import fs from "node:fs";
import pg from "pg";

const { Client } = pg;

function sslOption() {
  const mode = process.env.PGSSLMODE || "disable";
  if (mode === "disable") return false;
  return { rejectUnauthorized: false };
}

async function connect() {
  const c = new Client({ ssl: sslOption(), application_name: "bwit-policy-node" });
  c.broken = false;
  c.on("error", () => { c.broken = true; }); // a FATAL after the query finished
  await c.connect();
  return c;
}

const LOG = process.env.POLICY_GATEWAY_LOG || null;

function logSize() {
  return LOG ? fs.statSync(LOG).size : 0;
}

function refusalsSince(offset) {
  if (!LOG) return null;
  const end = fs.statSync(LOG).size;
  if (end <= offset) return 0;
  const fd = fs.openSync(LOG, "r");
  try {
    const b = Buffer.alloc(end - offset);
    fs.readSync(fd, b, 0, b.length, offset);
    return b.toString("utf8").split("\n").filter((l) => l.includes("event=statement_refused")).length;
  } finally {
    fs.closeSync(fd);
  }
}

async function main() {
  const cases = JSON.parse(fs.readFileSync(process.env.POLICY_CASES, "utf8"));
  const results = [];
  let client = null;
  let connections = 0;
  for (const c of cases) {
    if (client === null) {
      client = await connect();
      connections++;
    }
    let fresh = false;
    const off = logSize();
    try {
      const r = await client.query({ text: c.text, values: c.values ?? [], queryMode: "extended" });
      results.push({ id: c.id, ok: true, command: r.command ?? null, rows: r.rowCount ?? null });
    } catch (e) {
      results.push({
        id: c.id,
        error: {
          code: e.code ?? null,
          message: String(e.message ?? e),
          position: e.position ?? null,
          severity: e.severity ?? null,
        },
      });
      // Not a server error (the connection broke) or a FATAL: start over.
      fresh = !e.code || e.severity === "FATAL" || e.severity === "PANIC";
    }
    const last = results[results.length - 1];
    last.refusals = refusalsSince(off);
    // got through (even if it then failed upstream): it may have changed the session
    if (c.stateful && (last.ok || last.refusals === 0)) fresh = true;
    if (client.broken) fresh = true;
    if (fresh) {
      try { await client.end(); } catch (_) { /* already closed */ }
      client = null;
    }
  }
  if (client) await client.end();
  console.log("RESULT_JSON " + JSON.stringify({ results, connections }));
}

main().catch((e) => {
  console.log("RESULT_JSON " + JSON.stringify({ fatal: { code: e.code ?? null, message: String(e.message ?? e) } }));
  process.exitCode = 1;
});
