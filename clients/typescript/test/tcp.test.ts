/**
 * The client over TCP with a bearer token, against a daemon started with
 * `--listen` and `--token-file`.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { after, before, test } from "node:test";

import { CorralClient, type Event } from "../src/index.js";
import { freePort, rejection, TestDaemon } from "./helpers.js";

let daemon: TestDaemon;
let secrets: string;
let tokenFile: string;
let token: string;
let url: string;

before(async () => {
  secrets = mkdtempSync(path.join(tmpdir(), "corral-ts-token-"));
  tokenFile = path.join(secrets, "token");
  token = randomBytes(32).toString("hex");
  writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
  url = `127.0.0.1:${await freePort()}`;
  daemon = await TestDaemon.start(["--listen", url, "--token-file", tokenFile, "--strict"]);
});
after(async () => {
  try {
    await daemon?.stop();
  } finally {
    rmSync(secrets, { recursive: true, force: true });
  }
});

test("every kind of call over TCP with the token", async () => {
  const corral = daemon.client({ url, token });
  assert.equal(corral.address, url);
  const health = await corral.health();
  assert.equal(health.pid, daemon.pid);

  const spawned = await corral.spawn({ agent_id: "tcp.1", command: ["sh", "-c", "echo over tcp; sleep 0.2"] });
  assert.equal(spawned.status, "running");
  assert.equal((await corral.wait("tcp.1", { timeoutS: 30 })).exit_code, 0);
  const lines: string[] = [];
  for await (const line of corral.logs("tcp.1", { follow: true })) lines.push(line);
  assert.deepEqual(lines, ["over tcp"]);
  const events: Event[] = [];
  for await (const e of corral.events({ follow: false })) events.push(e);
  assert.ok(events.some((e) => e.kind === "state" && e.agent_id === "tcp.1" && e.state === "ended"));
  assert.match(await corral.metrics(), /corral_agents/);
  assert.deepEqual(Object.keys(await corral.list()), ["tcp.1"]);
});

test("the token from a file, and http:// in the url", async () => {
  const corral = daemon.client({ url: `http://${url}`, tokenFile });
  assert.equal((await corral.health()).ok, true);
});

test("a url without a token is refused before anything is sent", () => {
  assert.throws(() => new CorralClient({ url }), /token/);
  assert.throws(() => new CorralClient({ url: "not a url", token }), /HOST:PORT/);
  assert.throws(() => new CorralClient({ stateDir: daemon.stateDir, token }), /url/);
});

// Last: the daemon slows down an address after failed token checks.
test("a wrong token is unauthorized (401)", async () => {
  const e = await rejection(daemon.client({ url, token: "x".repeat(64) }).health());
  assert.equal(e.code, "unauthorized");
  assert.equal(e.status, 401);
});
