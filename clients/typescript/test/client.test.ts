/**
 * Every route of the API through the client, against a real daemon, and the
 * daemon's errors as CorralErrors.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { pathToFileURL } from "node:url";
import { after, before, describe, test } from "node:test";

import { CorralClient, CorralError } from "../src/index.js";
import { alive, PACKAGE_DIR, poll, rejection, startTime, TestDaemon } from "./helpers.js";

/** The client's method for each operationId of the OpenAPI document. */
const METHOD_OF: Record<string, keyof CorralClient> = {
  metrics: "metrics",
  list: "list",
  spawn: "spawn",
  spawn_batch: "spawnBatch",
  status: "status",
  remove: "rm",
  health: "agentHealth",
  kill: "kill",
  logs: "logs",
  progress: "progress",
  restart_one: "restart",
  runs: "runs",
  history: "history",
  ui_login: "uiLogin",
  stop_one: "stop",
  wait: "wait",
  daemon_stop: "daemonStop",
  events: "events",
  daemon_health: "health",
  openapi: "openapi",
  pause: "pause",
  resume: "resume",
  prune: "prune",
  reap: "reap",
  restart_many: "restartMany",
  stop_many: "stopMany",
  summary: "summary",
  teams: "teams",
  team: "team",
  set_team: "setTeam",
  remove_team: "removeTeam",
};

const sleeper = (id: string, extra: object = {}) => ({ agent_id: id, command: ["sleep", "300"], ...extra });

let daemon: TestDaemon;
let corral: CorralClient;
before(async () => {
  daemon = await TestDaemon.start();
  corral = daemon.client();
});
after(async () => {
  await daemon?.stop();
});

describe("routes", () => {
  test("every operation of the OpenAPI document has a method", async () => {
    const doc = (await corral.openapi()) as {
      openapi: string;
      paths: Record<string, Record<string, { operationId: string }>>;
    };
    assert.match(doc.openapi, /^3\./);
    const operations = Object.values(doc.paths).flatMap((route) => Object.values(route).map((op) => op.operationId));
    const missing = operations.filter((op) => !(op in METHOD_OF));
    assert.deepEqual(missing, [], "operations without a client method");
    for (const op of operations) assert.equal(typeof corral[METHOD_OF[op]!], "function", `${op} → ${METHOD_OF[op]}`);
  });

  test("health, summary, metrics, reap", async () => {
    const health = await corral.health();
    assert.equal(health.ok, true);
    assert.equal(health.pid, daemon.pid);
    assert.equal(health.state_dir, daemon.stateDir);
    const summary = await corral.summary();
    assert.equal(typeof summary.total, "number");
    assert.match(await corral.metrics(), /^corral_agents\{state="running"\} \d+$/m);
    assert.deepEqual(await corral.reap(), []);
  });

  test("spawn, status, agent health, progress, list filters, runs", async () => {
    const spawned = await corral.spawn(
      sleeper("r.one", { labels: { team: "a", tier: "1" }, env: { GREETING: "hi" }, verify_ms: 50 }),
    );
    assert.equal(spawned.status, "running");
    assert.equal(spawned.run, 1);
    const status = await corral.status("r.one");
    assert.equal(status.pid, spawned.pid);
    assert.equal(status.state, "running");
    assert.deepEqual(status.labels, { team: "a", tier: "1" });
    assert.deepEqual(await corral.agentHealth("r.one"), { agent_id: "r.one", healthy: true, health: "healthy" });

    const reported = await corral.progress("r.one", 42, { message: "indexing" });
    assert.equal(reported.progress, 42);
    assert.equal(reported.progress_message, "indexing");

    await corral.spawn(sleeper("r.two", { labels: { team: "b" } }));
    assert.deepEqual(Object.keys(await corral.list({ selector: "r.*" })).sort(), ["r.one", "r.two"]);
    assert.deepEqual(Object.keys(await corral.list({ label: { team: "a" } })), ["r.one"]);
    assert.deepEqual(Object.keys(await corral.list({ label: ["team=a", "tier=1"] })), ["r.one"]);
    assert.deepEqual(Object.keys(await corral.list({ label: "team=b" })), ["r.two"]);
    // Agents on this host run on no cluster node: the daemon's node filter leaves them out.
    assert.deepEqual(await corral.list({ node: "n2" }), {});
    assert.deepEqual(await corral.list({ node: ["n1", "n3"], fields: ["state"] }), {});
    assert.deepEqual(Object.keys(await corral.list({ selector: "r.*", state: ["ended", "paused"] })), []);
    const picked = await corral.list({ selector: "r.one", fields: ["state", "progress"] });
    assert.deepEqual(picked, { "r.one": { agent_id: "r.one", state: "running", progress: 42 } });

    const runs = await corral.runs("r.one");
    assert.equal(runs.length, 1);
    assert.equal(runs[0]!.run, 1);
    assert.equal(runs[0]!.pid, spawned.pid);

    const login = await corral.uiLogin();
    assert.match(login.url, /^http:\/\/127\.0\.0\.1:\d+\/ui\/login\?code=[0-9a-f]{64}$/);
    assert.ok(login.url.endsWith(login.path) && login.expires_s > 0);
    const history = await corral.history("r.one");
    assert.equal(history.agent_id, "r.one");
    assert.ok(history.interval_s > 0);
    for (const p of history.points) assert.ok(p.t > 0 && p.memory_mb >= 0);
    assert.deepEqual((await corral.history("r.one", { since: Date.now() / 1000 + 60 })).points, []);
  });

  test("team budgets: set, show, list, a spawn over max_agents, remove", async () => {
    const set = await corral.setTeam("tb", { max_agents: 1, memory_mb: 4096 });
    assert.deepEqual(set.budget, { max_agents: 1, memory_mb: 4096 });
    assert.equal(set.enforcement, "sampler");
    const one = await corral.spawn(sleeper("tb.1"));
    const over = await rejection(corral.spawn(sleeper("tb.2")));
    assert.equal(over.code, "budget");
    assert.equal(over.status, 409);
    assert.match(over.message, /team tb is at its budget of 1 live agent/);
    assert.equal((await rejection(corral.status("tb.2"))).code, "not_found");
    const shown = await corral.team("tb");
    assert.equal(shown.usage.agents, 1);
    assert.deepEqual(
      shown.members?.map((m) => [m.agent_id, m.state]),
      [["tb.1", "running"]],
    );
    assert.deepEqual(
      (await corral.teams()).map((t) => t.team),
      ["tb"],
    );
    assert.equal((await rejection(corral.setTeam("tb", { pids: 0 }))).code, "invalid");
    assert.deepEqual(await corral.removeTeam("tb"), { team: "tb", budget: { max_agents: 1, memory_mb: 4096 } });
    assert.deepEqual(await corral.teams(), []);
    await corral.stop("tb.1", { stopTimeouts: [2, 1, 1] });
    assert.ok(!alive(one.pid!, startTime(one.pid!)));
  });

  test("stop, kill, restart, restart many, rm, prune", async () => {
    const a = await corral.spawn(sleeper("s.a"));
    const started = startTime(a.pid!);
    const report = await corral.stop("s.a", { stopTimeouts: [2, 1, 1] });
    assert.equal(report.persistent_status, "cancelled");
    assert.ok(!alive(a.pid!, started), "stopped agent's process is gone");
    assert.equal((await corral.stop("s.a")).stage, "already_ended");

    const b = await corral.spawn(sleeper("s.b"));
    const killed = await corral.kill("s.b", { force: true });
    assert.equal(killed.killed, true);
    assert.equal(killed.report.persistent_status, "cancelled");
    assert.ok(!alive(b.pid!, startTime(b.pid!)));
    assert.equal((await corral.kill("s.b")).killed, false);

    const c = await corral.spawn(sleeper("s.c"));
    const restarted = await corral.restart("s.c", { stopTimeouts: [2, 1, 1] });
    assert.equal(restarted.run, 2);
    assert.notEqual(restarted.pid, c.pid);
    assert.equal((await corral.runs("s.c")).length, 2);

    const many = await corral.restartMany({ selector: "s.c", stopTimeouts: [2, 1, 1] });
    assert.equal(many.length, 1);
    assert.ok(!(many[0] instanceof CorralError));
    assert.equal(many[0]!.run, 3);

    const live = await rejection(corral.rm("s.c"));
    assert.equal(live.code, "conflict");
    assert.equal(live.status, 409);
    await corral.stopMany({ selector: "s.*", stopTimeouts: [2, 1, 1], liveOnly: true });
    assert.deepEqual(await corral.rm("s.a"), { removed: ["s.a"], runs_removed: 1 });
    await rejection(corral.status("s.a")).then((e) => assert.equal(e.code, "not_found"));
    const pruned = await corral.prune();
    assert.ok(pruned.removed.includes("s.b") && pruned.removed.includes("s.c"), JSON.stringify(pruned));
  });

  test("pause and resume: one agent, a selector, all", async () => {
    const a = await corral.spawn(sleeper("p.a"));
    await corral.spawn(sleeper("p.b"));
    const [paused] = await corral.pause({ agentId: "p.a" });
    assert.equal(paused!.outcome, "paused");
    assert.equal(paused!.state, "paused");
    assert.equal(paused!.pid, a.pid);
    const status = await corral.status("p.a");
    assert.equal(status.state, "paused");
    assert.equal(status.health, "paused");
    const many = await corral.pause({ selector: "p.*" });
    assert.deepEqual(
      many.map((r) => [r.agent_id, r.outcome]),
      [
        ["p.a", "already_paused"],
        ["p.b", "paused"],
      ],
    );
    const all = await corral.resume({ all: true });
    assert.ok(
      all.filter((r) => r.agent_id.startsWith("p.")).every((r) => r.outcome === "resumed"),
      JSON.stringify(all),
    );
    assert.equal((await corral.status("p.b")).state, "running");
    await corral.stopMany({ selector: "p.*", force: true, liveOnly: true });
    const ended = await rejection(corral.pause({ agentId: "p.a" }));
    assert.equal(ended.code, "conflict");
    assert.equal(ended.status, 409);
  });

  test("inside an agent, a client with no options works on the agent's own team", async () => {
    await corral.spawn(sleeper("ts.other"));
    const entry = pathToFileURL(path.join(PACKAGE_DIR, "dist", "src", "index.js")).href;
    const script = `
      import { CorralClient } from ${JSON.stringify(entry)};
      const c = new CorralClient();
      const h = await c.spawn({ agent_id: "ts.lead.h1", command: ["sleep", "300"] });
      console.log("helper", h.pid);
      try { await c.spawn({ agent_id: "ts.other2", command: ["sleep", "300"] }); }
      catch (e) { console.log("refused", e.status); }
      console.log("sees", Object.keys(await c.list()).sort().join(","));
      c.close();
      setInterval(() => {}, 1000);
    `;
    await corral.spawn({ agent_id: "ts.lead", command: [process.execPath, "--input-type=module", "-e", script] });
    const text = await poll(async () => {
      const lines: string[] = [];
      for await (const line of corral.logs("ts.lead")) lines.push(line);
      return lines.some((l) => l.startsWith("sees")) ? lines : undefined;
    }, "the agent's report");
    const said = Object.fromEntries(text.map((l) => l.split(" ", 2) as [string, string]));
    const helper = Number(said.helper);
    assert.ok(alive(helper), "the helper runs");
    assert.equal(said.refused, "403");
    assert.equal(said.sees, "ts.lead,ts.lead.h1");
    await rejection(corral.status("ts.other2"));

    const report = await corral.stop("ts.lead", { stopTimeouts: [2, 1, 1] });
    assert.equal(report.agent_id, "ts.lead");
    assert.ok(!alive(helper), "the helper outlived its stopped parent");
    const h1 = await corral.status("ts.lead.h1");
    assert.equal(h1.persistent_status, "cancelled");
    assert.match(h1.end_reason ?? "", /with its parent agent/);
    await corral.stopMany({ selector: "ts.*", force: true, liveOnly: true });
  });

  test("spawn batch: one result per request, a bad entry fails alone", async () => {
    const results = await corral.spawnBatch([
      sleeper("b.1"),
      { agent_id: "b.2", command: ["/nonexistent/program"] },
      { agent_id: "b..3", command: ["true"] },
      sleeper("b.4"),
    ]);
    assert.equal(results.length, 4);
    const [one, two, three, four] = results;
    assert.ok(!(one instanceof CorralError) && one!.status === "running");
    assert.ok(two instanceof CorralError);
    assert.equal(two.code, "spawn_failed");
    assert.equal(two.status, 422);
    assert.ok(three instanceof CorralError);
    assert.equal(three.code, "invalid");
    assert.ok(!(four instanceof CorralError) && four!.status === "running");
    const stopped = await corral.stopMany({ selector: "b.*", force: true, liveOnly: true });
    assert.deepEqual(stopped.map((r) => r.agent_id).sort(), ["b.1", "b.4"]);
  });

  test("wait answers with the final status", async () => {
    await corral.spawn({ agent_id: "w.1", command: ["sh", "-c", "echo out; echo err >&2; exit 3"], verify_ms: 0 });
    const final = await corral.wait("w.1", { timeoutS: 30 });
    assert.equal(final.state, "ended");
    assert.equal(final.exit_code, 3);
    assert.equal(final.persistent_status, "failed");
    assert.equal(await corral.logText("w.1", { stream: "stderr" }), "err\n");
    const both: string[] = [];
    for await (const line of corral.logs("w.1", { stream: "both" })) both.push(line);
    assert.deepEqual(both.sort(), ["err", "out"]);
    // Following a run that has ended gives its log and ends.
    const followed: string[] = [];
    for await (const line of corral.logs("w.1", { follow: true, run: 1 })) followed.push(line);
    assert.deepEqual(followed, ["out"]);
  });
});

describe("errors", () => {
  test("an unknown agent is not_found (404)", async () => {
    const e = await rejection(corral.status("no.such.agent"));
    assert.ok(e instanceof Error);
    assert.equal(e.name, "CorralError");
    assert.equal(e.code, "not_found");
    assert.equal(e.status, 404);
    assert.match(e.message, /no\.such\.agent/);
    // Streams too: the error comes when the iteration begins.
    const logs = await rejection(
      (async () => {
        for await (const _ of corral.logs("no.such.agent")) void _;
      })(),
    );
    assert.equal(logs.code, "not_found");
  });

  test("a live id is a conflict (409), a missing program spawn_failed (422), a bad id invalid (400)", async () => {
    await corral.spawn(sleeper("e.live"));
    const conflict = await rejection(corral.spawn(sleeper("e.live")));
    assert.deepEqual([conflict.code, conflict.status], ["conflict", 409]);
    const missing = await rejection(corral.spawn({ agent_id: "e.missing", command: ["/nonexistent/program"] }));
    assert.deepEqual([missing.code, missing.status], ["spawn_failed", 422]);
    assert.match(missing.message, /nonexistent/);
    const bad = await rejection(corral.spawn({ agent_id: "../up", command: ["true"] }));
    assert.deepEqual([bad.code, bad.status], ["invalid", 400]);
    const state = await rejection(corral.list({ state: "sleepy" }));
    assert.deepEqual([state.code, state.status], ["invalid", 400]);
    assert.match(state.message, /sleepy/);
    await corral.stop("e.live", { force: true });
  });

  test("a wait that runs out is a timeout (408)", async () => {
    await corral.spawn(sleeper("e.wait"));
    const e = await rejection(corral.wait("e.wait", { timeoutS: 0.2 }));
    assert.deepEqual([e.code, e.status], ["timeout", 408]);
    await corral.stop("e.wait", { force: true });
  });

  test("aborting a call rejects with the signal's reason", async () => {
    await corral.spawn(sleeper("e.abort"));
    const stop = new AbortController();
    const waiting = corral.wait("e.abort", { timeoutS: 60, signal: stop.signal });
    setTimeout(() => stop.abort(), 50);
    await assert.rejects(waiting, { name: "AbortError" });
    // The connection was dropped, not the client: the next call works.
    assert.equal((await corral.status("e.abort")).state, "running");
    await corral.stop("e.abort", { force: true });
  });

  test("no daemon is unreachable, without an HTTP status", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "corral-ts-none-"));
    try {
      const e = await rejection(new CorralClient({ stateDir: dir }).health());
      assert.equal(e.code, "unreachable");
      assert.equal(e.status, undefined);
      assert.match(e.message, /corral\.sock/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

test("daemonStop with stopAgents: the agents are stopped, the daemon answers, then exits", async () => {
  const other = await TestDaemon.start();
  try {
    const client = other.client();
    const agent = await client.spawn(sleeper("d.one", { stop_timeouts: [2, 1, 1] }));
    const started = startTime(agent.pid!);
    const answer = await client.daemonStop({ stopAgents: true });
    assert.equal(answer.pid, other.pid);
    assert.deepEqual(
      answer.stopped.map((r) => [r.agent_id, r.persistent_status]),
      [["d.one", "cancelled"]],
    );
    assert.ok(!alive(agent.pid!, started), "the agent was stopped");
    await poll(() => !other.running(), "the daemon exiting");
    const gone = await rejection(client.health());
    assert.equal(gone.code, "unreachable");
  } finally {
    await other.stop();
  }
});
