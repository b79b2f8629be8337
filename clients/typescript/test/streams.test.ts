/** The stream parsers on bodies cut at every byte, without a daemon. */
import assert from "node:assert/strict";
import { test } from "node:test";

import { CorralError } from "../src/index.js";
import { parseLines, parseSse, type SseMessage } from "../src/streams.js";

async function* pieces(text: string | Buffer, size: number): AsyncGenerator<Buffer> {
  const all = Buffer.from(text);
  for (let i = 0; i < all.length; i += size) yield all.subarray(i, i + size);
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

test("server-sent events: fields, comments, multi-line data, CRLF, any cut", async () => {
  const body =
    ": keep-alive\n\n" +
    'id: 1\nevent: state\ndata: {"seq":1,"é":"ü"}\n\n' +
    "id:2\r\nevent:progress\r\ndata:a\r\ndata: b\r\nretry: 10\r\n\r\n" +
    "data\n\n" +
    "id: 3\nevent: cut\ndata: never dispatched";
  const expected: SseMessage[] = [
    { id: "1", event: "state", data: '{"seq":1,"é":"ü"}' },
    { id: "2", event: "progress", data: "a\nb" },
    { id: "2", event: undefined, data: "" },
  ];
  // `data` alone is an empty data line, which dispatches an event with empty data.
  for (const size of [1, 2, 3, 7, 1000]) {
    assert.deepEqual(await collect(parseSse(pieces(body, size), 1 << 20)), expected, `cut every ${size} bytes`);
  }
});

test("an event larger than the limit is a bad_answer", async () => {
  const body = `data: ${"x".repeat(100)}\n\n`;
  await assert.rejects(
    collect(parseSse(pieces(body, 10), 64)),
    (e: unknown) => e instanceof CorralError && e.code === "bad_answer",
  );
  const endless = "data: " + "y".repeat(200); // no newline at all
  await assert.rejects(
    collect(parseSse(pieces(endless, 10), 64)),
    (e: unknown) => e instanceof CorralError && e.code === "bad_answer",
  );
});

test("log lines: any cut, a last line without a newline, UTF-8 kept whole", async () => {
  const body = "first\n\nsecond ☃ line\nlast without newline";
  for (const size of [1, 2, 5, 1000]) {
    assert.deepEqual(await collect(parseLines(pieces(body, size), 1 << 20)), [
      "first",
      "",
      "second ☃ line",
      "last without newline",
    ]);
  }
});

test("a log line over the limit comes in pieces, cut between characters", async () => {
  const line = "☃".repeat(10); // 30 bytes
  const got = await collect(parseLines(pieces(`${line}\nend\n`, 4), 8));
  assert.equal(got.slice(0, -1).join(""), line);
  assert.ok(
    got.slice(0, -1).every((p) => Buffer.byteLength(p) <= 8 && !p.includes("\ufffd")),
    JSON.stringify(got),
  );
  assert.equal(got.at(-1), "end");
});
