/**
 * The client against servers that are not a healthy corral daemon: each
 * failure is a CorralError with a clear code, never a hang or a crash.
 */
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { after, before, test } from "node:test";

import { CorralClient } from "../src/index.js";
import { rejection } from "./helpers.js";

let dir: string;
before(() => {
  dir = mkdtempSync(path.join(tmpdir(), "corral-ts-fake-"));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

/**
 * A server on a Unix socket in a state dir of its own; `answer` gets each
 * request's head (and the connection's request count) and writes what it likes.
 */
async function fake(
  name: string,
  answer: (socket: Socket, head: string, nth: number) => void,
): Promise<{ client: CorralClient; connections: () => number; close: () => Promise<void> }> {
  const stateDir = path.join(dir, name);
  mkdirSync(stateDir, { mode: 0o700 });
  const sockets = new Set<Socket>();
  let connections = 0;
  const server: Server = createServer((socket) => {
    connections++;
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => undefined);
    let buffered = "";
    let nth = 0;
    socket.on("data", (data) => {
      buffered += data.toString("latin1");
      let end: number;
      while ((end = buffered.indexOf("\r\n\r\n")) !== -1) {
        const head = buffered.slice(0, end);
        buffered = buffered.slice(end + 4);
        const length = Number(/content-length: *(\d+)/i.exec(head)?.[1] ?? 0);
        buffered = buffered.slice(length); // the tests' bodies arrive with their heads
        answer(socket, head, ++nth);
      }
    });
  });
  const socketPath = path.join(stateDir, "corral.sock");
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  const client = new CorralClient({ stateDir, timeoutMs: 1_000 });
  return {
    client,
    connections: () => connections,
    close: async () => {
      client.close();
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

const reply = (status: string, type: string, body: string, extra = "") =>
  `HTTP/1.1 ${status}\r\nContent-Type: ${type}\r\nContent-Length: ${Buffer.byteLength(body)}\r\n${extra}\r\n${body}`;

test("an answer that is not JSON is a bad_answer", async () => {
  const f = await fake("notjson", (s) => s.write(reply("200 OK", "application/json", "<html>hello</html>")));
  try {
    const e = await rejection(f.client.health());
    assert.equal(e.code, "bad_answer");
    assert.match(e.message, /GET \/v1\/health: expected JSON/);
  } finally {
    await f.close();
  }
});

test("an error answer without corral's error body keeps its status and text", async () => {
  const f = await fake("proxy", (s, head) =>
    s.write(
      head.includes("/v1/summary")
        ? reply("502 Bad Gateway", "text/html", "<h1>bad gateway</h1>")
        : reply("404 Not Found", "text/plain", "nope"),
    ),
  );
  try {
    const gateway = await rejection(f.client.summary());
    assert.deepEqual([gateway.code, gateway.status], ["http_error", 502]);
    assert.match(gateway.message, /bad gateway/);
    const missing = await rejection(f.client.status("x"));
    assert.deepEqual([missing.code, missing.status], ["not_found", 404]);
  } finally {
    await f.close();
  }
});

test("a peer that does not speak HTTP is a bad_answer", async () => {
  const f = await fake("garbage", (s) => s.end("SSH-2.0-OpenSSH_9.6\r\n\r\n"));
  try {
    const e = await rejection(f.client.health());
    assert.equal(e.code, "bad_answer");
  } finally {
    await f.close();
  }
});

test("a peer that never answers fails at the deadline", async () => {
  const f = await fake("silent", () => undefined);
  try {
    const started = Date.now();
    const e = await rejection(f.client.health());
    assert.equal(e.code, "deadline_exceeded");
    assert.ok(Date.now() - started < 5_000);
    // A dripping answer does not renew it either.
    const drip = await fake("drip", (s) => {
      s.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n");
      const timer = setInterval(() => s.write(" "), 50);
      s.on("close", () => clearInterval(timer));
    });
    try {
      assert.equal((await rejection(drip.client.health())).code, "deadline_exceeded");
    } finally {
      await drip.close();
    }
  } finally {
    await f.close();
  }
});

test("an answer declared larger than any corral answer is not read", async () => {
  const f = await fake("huge", (s) =>
    s.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 999999999999\r\n\r\n{"),
  );
  try {
    const e = await rejection(f.client.health());
    assert.equal(e.code, "bad_answer");
    assert.match(e.message, /larger than 64 MiB/);
  } finally {
    await f.close();
  }
});

test("a kept-alive connection closed as a request arrives: the request goes again on a new one", async () => {
  const health = JSON.stringify({ ok: true, version: "0", pid: 1, agents: 0, state_dir: "/", uptime_s: 0 });
  // Each connection answers its first request, then closes without answering the second.
  const f = await fake("idle", (s, _head, nth) =>
    nth === 1 ? s.write(reply("200 OK", "application/json", health)) : s.destroy(),
  );
  try {
    assert.equal((await f.client.health()).ok, true);
    assert.equal((await f.client.health()).ok, true);
    assert.equal(f.connections(), 2);
  } finally {
    await f.close();
  }
});

test("a socket path that is not a socket is refused", async () => {
  const stateDir = mkdtempSync(path.join(dir, "file-"));
  writeFileSync(path.join(stateDir, "corral.sock"), "");
  const e = await rejection(new CorralClient({ stateDir }).health());
  assert.equal(e.code, "untrusted_socket");
});
