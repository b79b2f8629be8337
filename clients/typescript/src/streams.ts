/**
 * Parsers for the two streamed answers: server-sent events (`/v1/events`) and
 * log text split into lines (`/v1/agents/{id}/logs`). Both take the body as
 * it arrives, in chunks cut anywhere (inside a line, inside a UTF-8 character).
 */
import { CorralError } from "./errors.js";

/** One server-sent event: its `id:`, `event:` and `data:` (data lines joined by `\n`). */
export interface SseMessage {
  id: string | undefined;
  event: string | undefined;
  data: string;
}

const NEWLINE = 0x0a;

/**
 * The lines of `chunks` as bytes, without their `\n`; a last line without one
 * comes at the end. When more than `limit` bytes of one line are held,
 * `tooLong` is thrown, or without it the line comes in pieces of at most
 * `limit` bytes, each cut between UTF-8 characters.
 */
async function* byteLines(chunks: AsyncIterable<Buffer>, limit: number, tooLong?: () => Error): AsyncGenerator<Buffer> {
  let held = Buffer.alloc(0);
  for await (const chunk of chunks) {
    let start = 0;
    for (let nl = chunk.indexOf(NEWLINE, start); nl !== -1; nl = chunk.indexOf(NEWLINE, start)) {
      const piece = chunk.subarray(start, nl);
      yield held.length ? Buffer.concat([held, piece]) : piece;
      held = Buffer.alloc(0);
      start = nl + 1;
    }
    if (start < chunk.length) held = Buffer.concat([held, chunk.subarray(start)]);
    while (held.length > limit) {
      if (tooLong) throw tooLong();
      let end = limit;
      while (end > 0 && (held[end]! & 0xc0) === 0x80) end--; // a continuation byte: not a boundary
      if (end === 0) end = limit;
      yield held.subarray(0, end);
      held = Buffer.from(held.subarray(end));
    }
  }
  if (held.length) yield held;
}

/**
 * Server-sent events of a stream, as the spec reads them: `field: value`
 * lines (one optional space after the colon), `:` comments (the daemon's
 * keep-alives) skipped, a blank line ending each event, `\r\n` or `\n`. An
 * event larger than `limit` bytes is a `bad_answer`.
 */
export async function* parseSse(
  chunks: AsyncIterable<Buffer>,
  limit: number,
  what = "the event stream",
): AsyncGenerator<SseMessage> {
  const tooLarge = () =>
    new CorralError(
      "bad_answer",
      `an event of ${what} is larger than ${limit >> 20} MiB, more than corral ever sends; stopped reading`,
    );
  let data: string[] = [];
  let dataBytes = 0;
  let event: string | undefined;
  let id: string | undefined;
  for await (const raw of byteLines(chunks, limit, tooLarge)) {
    let line = raw.toString("utf8");
    if (line.endsWith("\r")) line = line.slice(0, -1);
    if (line === "") {
      if (data.length) yield { id, event, data: data.join("\n") };
      data = [];
      dataBytes = 0;
      event = undefined;
      continue;
    }
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    switch (field) {
      case "data":
        dataBytes += raw.length;
        if (dataBytes > limit) throw tooLarge();
        data.push(value);
        break;
      case "event":
        event = value;
        break;
      case "id":
        if (!value.includes("\0")) id = value;
        break;
      default:
        // `retry:` and unknown fields mean nothing to this client.
        break;
    }
  }
  // A stream that ends inside an event drops that event (as the spec says).
}

/**
 * The lines of a text stream, without their `\n` (a last line without one
 * comes at the end). A line longer than `limit` bytes comes in pieces of
 * `limit` bytes, so an agent that never writes a newline cannot grow the
 * client without bound. Bytes that are not UTF-8 become U+FFFD.
 */
export async function* parseLines(chunks: AsyncIterable<Buffer>, limit: number): AsyncGenerator<string> {
  for await (const line of byteLines(chunks, limit)) yield line.toString("utf8");
}
