/**
 * The whole scenario against a real daemon: spawn 20 agents, stream events
 * until each runs, wait for the ones that finish, read every log, stop the
 * rest, and check in /proc that nothing of them is left.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import type { Event, EventOf } from "../src/index.js";
import { alive, poll, startTime, TestDaemon, within } from "./helpers.js";

const SHORT = Array.from({ length: 15 }, (_, i) => `fleet.short.${i + 1}`);
const LONG = Array.from({ length: 5 }, (_, i) => `fleet.long.${i + 1}`);

let daemon: TestDaemon;
before(async () => {
  daemon = await TestDaemon.start();
});
after(async () => {
  await daemon?.stop();
});

/** Events as they arrive from a followed stream, and a way to wait for a condition on them. */
class EventLog {
  readonly seen: Event[] = [];
  private wake: (() => void) | undefined;
  readonly done: Promise<void>;

  constructor(stream: AsyncIterable<Event>) {
    this.done = (async () => {
      for await (const event of stream) {
        this.seen.push(event);
        this.wake?.();
      }
    })();
    // A stream that fails wakes the waiters too (they then see `done` rejected).
    this.done.catch(() => this.wake?.());
  }

  states(agentId: string): string[] {
    return this.seen
      .filter((e): e is EventOf<"state"> => e.kind === "state" && e.agent_id === agentId)
      .map((e) => e.state ?? "");
  }

  /** Resolves once `check` holds over what has been seen (new events are checked as they come). */
  async until(check: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!check()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${what} did not happen within ${timeoutMs / 1000} s`);
      let timer: NodeJS.Timeout | undefined;
      try {
        await Promise.race([
          new Promise<void>((resolve) => {
            this.wake = resolve;
            timer = setTimeout(resolve, left);
          }),
          this.done.then(() => {
            throw new Error(`the event stream ended before ${what}`);
          }),
        ]);
      } finally {
        clearTimeout(timer);
      }
    }
  }
}

test("spawn 20, stream events, wait, read logs, stop the rest", async () => {
  const corral = daemon.client();
  const follow = new AbortController();
  const events = new EventLog(corral.events({ since: 0, signal: follow.signal }));

  // Spawn all 20 at once, one request each (the client's connections are reused).
  const spawned = await Promise.all([
    ...SHORT.map((id) =>
      corral.spawn({ agent_id: id, command: ["sh", "-c", "echo hello $CORRAL_AGENT_ID; sleep 0.5"] }),
    ),
    ...LONG.map((id) =>
      corral.spawn({
        agent_id: id,
        command: ["sh", "-c", "echo hello $CORRAL_AGENT_ID; exec sleep 300"],
        labels: { kind: "long" },
      }),
    ),
  ]);
  const pids = new Map<string, { pid: number; start: string | undefined }>();
  for (const answer of spawned) {
    assert.equal(answer.status, "running", `${answer.agent_id}: ${answer.error}`);
    assert.equal(answer.run, 1);
    assert.ok(answer.pid, `${answer.agent_id} has a pid`);
    pids.set(answer.agent_id, { pid: answer.pid, start: startTime(answer.pid) });
  }
  const liveLong = LONG.map((id) => pids.get(id)!);
  assert.ok(
    liveLong.every(({ pid, start }) => alive(pid, start)),
    "the long agents run",
  );

  // The event stream shows each of the 20 reach `running`.
  await events.until(
    () => [...SHORT, ...LONG].every((id) => events.states(id).includes("running")),
    "every agent running in the events",
  );
  for (const id of [...SHORT, ...LONG]) {
    const states = events.states(id);
    assert.ok(states.indexOf("starting") < states.indexOf("running"), `${id}: starting before running: ${states}`);
  }

  // Wait for the short ones: each completes with exit code 0.
  const finals = await Promise.all(SHORT.map((id) => corral.wait(id, { timeoutS: 30 })));
  for (const final of finals) {
    assert.equal(final.state, "ended");
    assert.equal(final.persistent_status, "completed");
    assert.equal(final.exit_code, 0);
    assert.equal(final.health, "completed");
  }
  for (const id of SHORT) assert.ok(!alive(pids.get(id)!.pid, pids.get(id)!.start), `${id}'s process is gone`);

  // Each log holds the line the agent echoed (its id came in CORRAL_AGENT_ID).
  for (const id of SHORT) {
    const lines: string[] = [];
    for await (const line of corral.logs(id)) lines.push(line);
    assert.deepEqual(lines, [`hello ${id}`]);
  }
  // A followed log of a running agent: read until the line, then end the follow with a signal.
  for (const id of LONG) {
    const stop = new AbortController();
    const lines: string[] = [];
    await within(
      10_000,
      `following ${id}'s log`,
      (async () => {
        for await (const line of corral.logs(id, { follow: true, signal: stop.signal })) {
          lines.push(line);
          if (line === `hello ${id}`) stop.abort();
        }
      })(),
    );
    assert.deepEqual(lines, [`hello ${id}`]);
    assert.equal(await corral.logText(id, { tail: 1 }), `hello ${id}\n`);
  }

  // Only the long ones still run; stop them (staged, short stages), by selector.
  const running = await corral.list({ selector: "fleet.*", state: "running", fields: ["state", "pid"] });
  assert.deepEqual(Object.keys(running).sort(), [...LONG].sort());
  assert.deepEqual(Object.keys(await corral.list({ label: { kind: "long" } })).sort(), [...LONG].sort());
  const reports = await corral.stopMany({ selector: "fleet.long.*", stopTimeouts: [2, 1, 1] });
  assert.deepEqual(reports.map((r) => r.agent_id).sort(), [...LONG].sort());
  for (const report of reports) {
    assert.equal(report.persistent_status, "cancelled", JSON.stringify(report));
    assert.equal(report.stage, "term", JSON.stringify(report));
  }
  for (const id of LONG) {
    const { pid, start } = pids.get(id)!;
    assert.ok(!alive(pid, start), `${id}'s process ${pid} is gone from /proc`);
    const status = await corral.status(id);
    assert.equal(status.state, "ended");
    assert.equal(status.health, "cancelled");
  }
  assert.deepEqual(daemon.agentProcesses(), [], "no process of any agent is left");

  // The stream saw the stops through to the end; aborting it ends the iteration quietly.
  await events.until(
    () => LONG.every((id) => events.states(id).at(-1) === "ended"),
    "every long agent ended in the events",
  );
  for (const id of LONG) {
    assert.ok(
      events.seen.some((e) => e.kind === "stop_stage" && e.agent_id === id),
      `${id} has a stop_stage event`,
    );
  }
  for (const id of SHORT) assert.equal(events.states(id).at(-1), "ended");
  const seqs = events.seen.map((e) => e.seq);
  assert.deepEqual(
    seqs,
    [...seqs].sort((a, b) => a - b),
    "events come in seq order",
  );
  assert.equal(new Set(seqs).size, seqs.length, "each event once");
  follow.abort();
  await within(5_000, "the event stream ending after abort", events.done);

  // Resuming after the last seq seen gives nothing new (follow: false ends after the stored ones).
  const rest: Event[] = [];
  for await (const e of corral.events({ since: seqs.at(-1)!, follow: false })) rest.push(e);
  assert.deepEqual(rest, []);
  await poll(async () => (await corral.summary()).running === 0, "the summary counting no running agent");
});
