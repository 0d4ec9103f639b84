// node-pg through the gateway: extended protocol, named statements, binary results,
// pg-cursor (Execute with a row limit + Flush -> PortalSuspended), and a pool.
// Connection settings come from the libpq environment (PGHOST, PGPORT, PGUSER, PGPASSWORD,
// PGDATABASE, PGSSLMODE). Prints `RESULT_JSON {...}` as its last line; every check is
// recorded as a value or as {error: {code, message}}, so pytest does the asserting.
import pg from "pg";
import Cursor from "pg-cursor";

const { Client, Pool } = pg;

function sslOption() {
  const mode = process.env.PGSSLMODE || "disable";
  if (mode === "disable") return false;
  return { rejectUnauthorized: false };
}

const config = () => ({ ssl: sslOption(), application_name: "bwit-node-pg" });

async function check(name, out, fn) {
  try {
    out[name] = await fn();
  } catch (e) {
    out[name] = { error: { code: e.code ?? null, message: String(e.message ?? e) } };
  }
}

async function main() {
  const out = {};
  const client = new Client(config());
  await client.connect();

  await check("params", out, async () => {
    const r = await client.query("select $1::int + $2::int as sum, $3::text as t, $4::text as n",
                                 [40, 2, "päivää", null]);
    return r.rows;
  });

  await check("named_reused", out, async () => {
    const got = [];
    for (let i = 1; i <= 5; i++) {
      const r = await client.query({ name: "q1", text: "select $1::int * 2 as d", values: [i] });
      got.push(r.rows[0].d);
    }
    return got;
  });

  await check("named_across_transactions", out, async () => {
    await client.query("begin");
    const a = await client.query({ name: "q2", text: "select count(*)::int as n from customers where id <= $1", values: [2] });
    await client.query("commit");
    const b = await client.query({ name: "q2", text: "select count(*)::int as n from customers where id <= $1", values: [4] });
    return [a.rows[0].n, b.rows[0].n];
  });

  await check("binary", out, async () => {
    const r = await client.query({
      text: "select 7::int4 as i4, 9000000000::int8 as i8, 2.5::float8 as f8, 'abc'::text as t, true as b, $1::int4 as p",
      values: [11],
      binary: true,
    });
    const row = r.rows[0];
    return {
      formats: r.fields.map((f) => f.format),
      i4: row.i4, i8: String(row.i8), f8: row.f8, t: String(row.t), b: row.b, p: row.p,
    };
  });

  await check("cursor", out, async () => {
    const cursor = client.query(new Cursor("select g from generate_series(1, 9) g"));
    const batches = [];
    for (;;) {
      const rows = await cursor.read(2);
      batches.push(rows.map((r) => r.g));
      if (rows.length === 0) break;
    }
    await cursor.close();
    return batches;
  });

  await check("cursor_then_query", out, async () => {
    const cursor = client.query(new Cursor("select g from generate_series(1, 100) g"));
    const first = await cursor.read(3);
    await cursor.close();
    const r = await client.query("select 'after cursor' as s");
    return [first.map((x) => x.g), r.rows[0].s];
  });

  await check("error_then_usable", out, async () => {
    let err = null;
    try {
      await client.query("select 1 / $1::int as x", [0]);
    } catch (e) {
      err = e.code;
    }
    const r = await client.query({ name: "q1", text: "select $1::int * 2 as d", values: [21] });
    return [err, r.rows[0].d];
  });

  await client.end();

  await check("pool", out, async () => {
    const pool = new Pool({ ...config(), max: 5 });
    const jobs = [];
    for (let i = 0; i < 20; i++) {
      jobs.push(pool.query("select pg_backend_pid() as pid, $1::int as i, pg_sleep(0.1)::text as s", [i]));
    }
    const rs = await Promise.all(jobs);
    await pool.end();
    return {
      ids: rs.map((r) => r.rows[0].i),
      distinct_backends: new Set(rs.map((r) => r.rows[0].pid)).size,
    };
  });

  console.log("RESULT_JSON " + JSON.stringify(out));
}

main().catch((e) => {
  console.log("RESULT_JSON " + JSON.stringify({ fatal: { code: e.code ?? null, message: String(e.message ?? e) } }));
  process.exitCode = 1;
});
