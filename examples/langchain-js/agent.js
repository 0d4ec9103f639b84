// A LangChain.js SQL agent (createSqlAgent + SqlToolkit from @langchain/classic) whose
// database is Bulwark: TypeORM's DataSource connects with the agent's token as the password,
// as any LangChain SQL agent would connect to PostgreSQL. The language model is scripted
// (ScriptedChatModel below: no network, no API key), so every run asks the same things:
//
//   1. list the tables                       list-tables-sql
//   2. the customers table's schema and rows info-sql (CREATE TABLE + SELECT * ... LIMIT 3)
//   3. a question over customers             query-sql SELECT ... (masked columns)
//   4. "clean up": DROP TABLE support_tickets       -> denied (rule no-ddl-dcl)
//   5. "clean up": DELETE FROM support_tickets      -> denied (rule no-unbounded-writes)
//   6. remove ticket 4, which leaks an API key: DELETE FROM support_tickets WHERE id = 4
//                                                   -> held for a human's approval
//                                                      (rule support-fixes)
//   7. the final answer
//
// Run (see README.md):   BULWARK_URL='postgresql://analyst:TOKEN@localhost:6432/shop?sslmode=...' node agent.js
//
// Output: the agent's transcript (each action and what the tool answered) on stdout; with
// AGENT_RESULT_JSON=1 the last line is `RESULT_JSON {...}`: the steps, the SQL the driver
// sent with each error's SQLSTATE, the notices the gateway sent (a held statement's
// request id), and the final answer, for tests/integration/test_agent_e2e.py.
import "reflect-metadata";
import { DataSource } from "typeorm";
import { SqlDatabase } from "@langchain/classic/sql_db";
import { SqlToolkit, createSqlAgent } from "@langchain/classic/agents/toolkits/sql";
import { BaseChatModel } from "@langchain/core/language_models/chat_models";
import { AIMessage } from "@langchain/core/messages";

// The model's turns, in the ReAct format ZeroShotAgent (what createSqlAgent builds) parses:
// "Action: TOOL\nAction Input: INPUT", or "Final Answer: ...".
export const SCRIPT = [
  `Thought: I should look at the tables in the database to see what I can query.
Action: list-tables-sql
Action Input: `,
  `Thought: The customers table should hold what I need. I should look at its schema.
Action: info-sql
Action Input: customers`,
  `Thought: I can now query the first customers and their payment details.
Action: query-sql
Action Input: SELECT id, name, email, card_number, ssn FROM customers ORDER BY id LIMIT 3`,
  `Thought: The support tickets contain leaked secrets. The fastest fix is to drop the table.
Action: query-sql
Action Input: DROP TABLE support_tickets`,
  `Thought: Dropping was refused. I will delete every ticket instead.
Action: query-sql
Action Input: DELETE FROM support_tickets`,
  `Thought: Deleting everything was refused. Only ticket 4 leaks an API key; I will delete just that one.
Action: query-sql
Action Input: DELETE FROM support_tickets WHERE id = 4`,
  `Thought: I now know the final answer.
Final Answer: I listed the tables and read three customers as the gateway returned them. Dropping or emptying support_tickets was refused by the gateway's policy; deleting ticket 4 was sent to a human for approval.`,
];

/** A chat model that answers with the next turn of a fixed script and remembers the
 * prompts it was given (each holds the observations of the steps so far). */
export class ScriptedChatModel extends BaseChatModel {
  constructor(script) {
    super({});
    this.script = script;
    this.turn = 0;
    this.prompts = [];
  }

  _llmType() {
    return "scripted";
  }

  async _generate(messages) {
    this.prompts.push(messages.map((m) => String(m.content)).join("\n"));
    if (this.turn >= this.script.length) throw new Error("the script has no more turns");
    const text = this.script[this.turn++];
    return { generations: [{ text, message: new AIMessage(text) }] };
  }
}

/** TypeORM logger that keeps every statement the driver sent and each error's SQLSTATE. */
class RecordingLogger {
  constructor(out) {
    this.out = out;
  }
  logQuery(query) {
    this.out.sql.push({ query });
  }
  logQueryError(error, query) {
    const last = this.out.sql.findLast((q) => q.query === query && !("error" in q));
    const e = { code: error?.code ?? null, message: String(error?.message ?? error) };
    if (last) last.error = e;
    else this.out.sql.push({ query, error: e });
  }
  logQuerySlow() {}
  logSchemaBuild() {}
  logMigration() {}
  log(level, message) {
    if (level !== "info") return; // logNotifications: the gateway's NOTICEs
    this.out.notices.push(String(message));
    say(`Notice from the gateway: ${message}`);
  }
}

function say(line) {
  process.stdout.write(line + "\n");
}

async function main() {
  const url = process.env.BULWARK_URL;
  if (!url) {
    console.error("agent.js: set BULWARK_URL to postgresql://ROLE:TOKEN@HOST:PORT/TARGET?sslmode=...");
    process.exit(2);
  }
  const out = { sql: [], notices: [], steps: [], output: null };
  const ds = new DataSource({
    type: "postgres",
    url, // the token is the password; sslmode/sslrootcert in the URL as with libpq
    applicationName: "bulwark-langchain-js-example",
    // One connection: the whole conversation is one gateway session (one replay), and
    // the gateway's notices (a held statement's request id) reach logNotifications.
    poolSize: 1,
    logNotifications: true,
    logging: true,
    logger: new RecordingLogger(out),
  });

  const model = new ScriptedChatModel(SCRIPT);
  const db = await SqlDatabase.fromDataSourceParams({ appDataSource: ds });
  // A pool connection made later (after an error closed the first) reports notices too.
  ds.driver.master.on("connect", (client) =>
    client.on("notice", (msg) => {
      out.notices.push(String(msg?.message ?? msg));
      say(`Notice from the gateway: ${msg?.message ?? msg}`);
    }),
  );
  const toolkit = new SqlToolkit(db, model);
  const executor = createSqlAgent(model, toolkit);

  say("Question: Which customers do we have, and please clean up the support tickets that leak secrets.");
  // The transcript as it happens (a held statement waits between Action and Observation).
  const live = {
    handleAgentAction: (action) => say(`Action: ${action.tool} ${JSON.stringify(action.toolInput)}`),
    handleToolEnd: (output) => say(`Observation: ${typeof output === "string" ? output : output?.content ?? JSON.stringify(output)}`),
  };
  const result = await executor.invoke(
    { input: "Which customers do we have, and please clean up the support tickets that leak secrets." },
    { callbacks: [live] },
  );
  for (const step of result.intermediateSteps)
    out.steps.push({ tool: step.action.tool, input: step.action.toolInput, observation: step.observation });
  say(`Final Answer: ${result.output}`);
  out.output = result.output;
  out.modelTurns = model.turn;
  await ds.destroy();
  if (process.env.AGENT_RESULT_JSON === "1") say("RESULT_JSON " + JSON.stringify(out));
}

main().catch((e) => {
  console.error(e);
  if (process.env.AGENT_RESULT_JSON === "1")
    say("RESULT_JSON " + JSON.stringify({ fatal: { code: e.code ?? null, message: String(e.message ?? e) } }));
  process.exitCode = 1;
});
