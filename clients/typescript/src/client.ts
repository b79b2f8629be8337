/**
 * A typed client for every route of corral's HTTP/JSON API, over the daemon's
 * Unix socket (the default) or over TCP with a bearer token.
 *
 * It uses `node:http` only, with a keep-alive agent: calls reuse connections.
 * It does not trust what answers: every call has one deadline for connecting,
 * sending, the answer's head and its whole body; a body is read up to
 * {@link ANSWER_LIMIT} bytes and no further; an answer that is not HTTP or not
 * JSON where JSON is expected is a {@link CorralError} `bad_answer`. Streams
 * (the event stream, a followed log) have the deadline until their answer
 * begins, then last as long as what they follow.
 */
import * as fs from "node:fs";
import * as http from "node:http";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import type { Duplex } from "node:stream";

import { CorralError, printable } from "./errors.js";
import { parseLines, parseSse } from "./streams.js";
import type {
  AgentHistory,
  AgentStatus,
  CleanupOptions,
  DaemonHealth,
  DaemonStopResponse,
  Event,
  HealthReport,
  KillResponse,
  LogStream,
  PauseReport,
  PauseRequest,
  ProcessSummary,
  Removal,
  RunInfo,
  SpawnRequest,
  SpawnResponse,
  StatusField,
  StopManyRequest,
  StopReport,
  TeamBudget,
  TeamRemoval,
  TeamStatus,
  UiLogin,
} from "./types.js";

/** The socket's name in a state dir. */
export const SOCKET_NAME = "corral.sock";
/** A call's deadline when none is given, ms (the CLI's and the Python client's 60 s). */
export const DEFAULT_TIMEOUT_MS = 60_000;
/** The most a non-streaming answer's body may hold, bytes (64 MiB, as the CLI reads). */
export const ANSWER_LIMIT = 64 << 20;
/** The most one server-sent event may hold, bytes (4 MiB). */
export const EVENT_LIMIT = 4 << 20;
/** A log line longer than this comes in pieces of this many bytes (1 MiB). */
export const LINE_LIMIT = 1 << 20;
/** How long the event stream may stay silent, ms: four of the daemon's 15 s keep-alives. */
export const EVENT_STALL_MS = 60_000;
/** The daemon's wait when a call names none, seconds. */
const DEFAULT_WAIT_S = 30;
/** A stop that names no stage timeouts runs with the agents' own: allow it this much, ms. */
const UNSTATED_STOP_MS = 900_000;
/** The longest stop stage the daemon accepts, seconds. */
const MAX_STAGE_S = 86_400;
/**
 * An idle keep-alive connection is dropped by the client after this long, ms:
 * before the daemon closes it (its header timeout, 10 s), so a request is
 * rarely sent on a connection the daemon is closing.
 */
const IDLE_SOCKET_MS = 4_000;

/**
 * Where the daemon is. With none of `socket`, `stateDir` and `url`: inside an agent, the socket its
 * daemon gave it (`$CORRAL_SOCKET`, which serves the agent's own team); elsewhere the state dir,
 * found as the CLI finds it.
 */
export interface CorralClientOptions {
  /** The daemon's socket. */
  socket?: string;
  /** A state dir: its socket, `<stateDir>/corral.sock`. */
  stateDir?: string;
  /** `HOST:PORT` (or `http://HOST:PORT`) of a daemon started with `--listen`; needs `token` or `tokenFile`. */
  url?: string;
  /** The bearer token of a TCP daemon. */
  token?: string;
  /** A file holding the bearer token of a TCP daemon (as `--token-file`). */
  tokenFile?: string;
  /**
   * Each call's deadline in ms (default 60 s; `null` for none). Calls that ask
   * the daemon to take time get that time on top: a wait its `timeoutS`, a
   * spawn its verification window, a stop its stage timeouts (15 minutes
   * when it names none; the stop goes on in the daemon if the client gives up).
   */
  timeoutMs?: number | null;
}

/** Options every call takes. */
export interface CallOptions {
  /** Aborting it ends the call: a pending call rejects with the signal's reason, an iterator just ends. */
  signal?: AbortSignal;
}

/** Filters of {@link CorralClient.list}, applied by the daemon. */
export interface ListOptions extends CallOptions {
  /** One id, or `PREFIX.*`: PREFIX and every id below it. */
  selector?: string;
  /** Lifecycle states: `"running"` or `["running", "paused"]`. */
  state?: string | readonly string[];
  /** Labels that must all match: `{team: "a"}`, `"team=a"` or `["team=a", "tier=1"]`. */
  label?: string | readonly string[] | Readonly<Record<string, string>>;
  /** Cluster nodes: `"n2"` or `["n1", "n3"]`: only agents whose job runs on one of them. */
  node?: string | readonly string[];
}

/** How a stop goes: `force` is SIGKILL at once; `stopTimeouts` the stages' waits in seconds (TERM, TERM, KILL). */
export interface StopOptions extends CallOptions {
  force?: boolean;
  stopTimeouts?: number[];
}

/** Which agents {@link CorralClient.stopMany} and {@link CorralClient.restartMany} take: `all`, or a `selector`. */
export type ManyOptions = StopOptions & {
  /** Leave out agents whose run had already ended (a stop would report `already_ended`). */
  liveOnly?: boolean;
} & ({ all: true; selector?: undefined } | { selector: string; all?: false });

/** Which agents {@link CorralClient.pause} and {@link CorralClient.resume} take: one `agentId` (a 409 `conflict` when it cannot be paused or resumed), a `selector`, or `all` (those that cannot are `skipped`). */
export type PauseTarget = CallOptions &
  (
    | { agentId: string; selector?: undefined; all?: undefined }
    | { selector: string; agentId?: undefined; all?: undefined }
    | { all: true; agentId?: undefined; selector?: undefined }
  );

/** Which log to read. */
export interface LogOptions extends CallOptions {
  /** `stdout` (default), `stderr` or `both`. */
  stream?: LogStream;
  /** Start with the last N lines. */
  tail?: number;
  /** The run (default: the current one). */
  run?: number;
}

/** A state dir as the CLI finds it: `$CORRAL_STATE_DIR`, else `$XDG_STATE_HOME/corral`, else `~/.local/state/corral`. */
export function defaultStateDir(): string {
  const env = process.env;
  if (env.CORRAL_STATE_DIR) return path.resolve(env.CORRAL_STATE_DIR);
  if (env.XDG_STATE_HOME) return path.resolve(env.XDG_STATE_HOME, "corral");
  const home = env.HOME || os.homedir();
  if (!home) throw new Error("cannot find a state dir: pass stateDir, or set CORRAL_STATE_DIR or HOME");
  return path.resolve(home, ".local", "state", "corral");
}

/**
 * Refuses a socket this user cannot trust before anything is sent to it: one
 * planted in a directory others can write would otherwise get this user's
 * requests (environments included). A missing socket passes: connecting fails.
 */
function checkSocket(socketPath: string): void {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(socketPath);
  } catch {
    return;
  }
  if (!st.isSocket()) {
    throw new CorralError(
      "untrusted_socket",
      `refusing to talk to ${socketPath}: it is not a socket (a symlink, file or directory)`,
    );
  }
  const me = process.geteuid?.() ?? st.uid;
  if (st.uid !== me && st.uid !== 0) {
    throw new CorralError(
      "untrusted_socket",
      `refusing to talk to ${socketPath}: it is owned by uid ${st.uid}, not by this user (uid ${me}) or root`,
    );
  }
}

/** A keep-alive agent for a Unix socket that checks the socket before each new connection. */
class SocketAgent extends http.Agent {
  constructor(private readonly socketPath: string) {
    super({ keepAlive: true, timeout: IDLE_SOCKET_MS });
  }

  override createConnection(
    options: http.ClientRequestArgs,
    callback?: (err: Error | null, stream: Duplex) => void,
  ): Duplex | null | undefined {
    try {
      checkSocket(this.socketPath);
    } catch (e) {
      callback?.(e as Error, undefined as unknown as Duplex);
      return undefined;
    }
    return net.createConnection({ ...(options as net.NetConnectOpts), path: this.socketPath });
  }
}

/** `HOST:PORT` (`http://` optional; IPv6 in brackets) as host and port. */
function parseUrl(url: string): { host: string; port: number } {
  let parsed: URL | undefined;
  try {
    parsed = new URL(url.includes("://") ? url : `http://${url}`);
  } catch {
    parsed = undefined;
  }
  if (
    !parsed ||
    parsed.protocol !== "http:" ||
    !parsed.hostname ||
    !parsed.port ||
    (parsed.pathname !== "/" && parsed.pathname !== "")
  ) {
    throw new Error(`url ${JSON.stringify(url)} must be HOST:PORT, like 127.0.0.1:7070`);
  }
  return { host: parsed.hostname.replace(/^\[(.*)\]$/, "$1"), port: Number(parsed.port) };
}

/** An agent id as one path segment (a `/` in it can never reach another route). */
function seg(agentId: string): string {
  return encodeURIComponent(agentId);
}

type QueryValue = string | number | boolean | undefined | null | readonly string[];

function queryString(query: Record<string, QueryValue> | undefined): string {
  if (!query) return "";
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value === undefined || value === null) continue;
    if (Array.isArray(value)) for (const v of value) params.append(key, v);
    else params.append(key, String(value));
  }
  const text = params.toString();
  return text ? `?${text}` : "";
}

/** Node's HTTP parser refused the answer: the peer does not speak HTTP/1.1. */
function isHttpParseError(e: unknown): boolean {
  const code = (e as { code?: unknown })?.code;
  return typeof code === "string" && code.startsWith("HPE_");
}

/** A batch answer's results: each a spawn response, or the error that entry alone got. */
function batchResults(answer: { results?: unknown }, what: string): Array<SpawnResponse | CorralError> {
  if (!Array.isArray(answer.results)) throw new CorralError("bad_answer", `${what}: expected {"results": [...]}`);
  return answer.results.map((entry: unknown) => {
    if (entry === null || typeof entry !== "object")
      throw new CorralError("bad_answer", `${what}: expected each result to be an object`);
    const error = (entry as { error?: unknown }).error;
    if (error !== null && typeof error === "object") {
      const { code, message } = error as { code?: unknown; message?: unknown };
      return CorralError.fromDetail({ code: String(code), message: String(message) });
    }
    return entry as SpawnResponse;
  });
}

interface Request {
  method: string;
  path: string;
  query?: Record<string, QueryValue>;
  body?: unknown;
  /** Ms the daemon may take on top of the client's deadline (`null`: no deadline at all). */
  extraMs?: number | null;
  signal?: AbortSignal | undefined;
}

/** An answer whose head has arrived, with what ends its exchange. */
interface Open {
  res: http.IncomingMessage;
  req: http.ClientRequest;
  /** The call's own signal: aborted by the deadline, a stall or the caller. */
  ctl: AbortController;
  /** Stops the deadline (a stream's body has none). */
  clearDeadline(): void;
  /** Ends the exchange: timers and listeners gone, the request destroyed unless its answer was read. */
  close(): void;
}

/**
 * A client bound to one corral daemon.
 *
 * ```ts
 * const corral = new CorralClient();                       // the CLI's state dir
 * await corral.spawn({ agent_id: "build.1", command: ["make", "-j8"] });
 * for await (const line of corral.logs("build.1", { follow: true })) console.log(line);
 * ```
 *
 * Every daemon error is thrown as a {@link CorralError} with the daemon's
 * `code` (`not_found`, `conflict`, ...) and HTTP `status`.
 */
export class CorralClient {
  /** The socket path, or `HOST:PORT` over TCP. */
  readonly address: string;
  private readonly agent: http.Agent;
  private readonly target: { socketPath: string } | { host: string; port: number };
  private readonly token: string | undefined;
  private readonly timeoutMs: number | null;

  constructor(options: CorralClientOptions = {}) {
    const { socket, stateDir, url, token, tokenFile } = options;
    if ([socket, stateDir, url].filter((x) => x !== undefined).length > 1) {
      throw new Error("give one of socket, stateDir or url");
    }
    this.timeoutMs = options.timeoutMs === undefined ? DEFAULT_TIMEOUT_MS : options.timeoutMs;
    if (url !== undefined) {
      const { host, port } = parseUrl(url);
      const secret = token ?? (tokenFile !== undefined ? fs.readFileSync(tokenFile, "utf8").trim() : undefined);
      if (!secret) {
        throw new Error("url needs token or tokenFile: a TCP daemon accepts only requests with its bearer token");
      }
      this.token = secret;
      this.target = { host, port };
      this.address = host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
      this.agent = new http.Agent({ keepAlive: true, timeout: IDLE_SOCKET_MS });
    } else {
      if (token !== undefined || tokenFile !== undefined) {
        throw new Error("token and tokenFile are for url; the Unix socket needs none");
      }
      // Inside an agent, with neither named: the socket its daemon gave it
      // (its team's door; that daemon runs already), as the CLI does.
      const inAgent =
        socket === undefined && stateDir === undefined ? process.env.CORRAL_SOCKET || undefined : undefined;
      const chosen = socket ?? inAgent;
      const socketPath =
        chosen !== undefined
          ? path.resolve(chosen)
          : path.join(stateDir !== undefined ? path.resolve(stateDir) : defaultStateDir(), SOCKET_NAME);
      this.target = { socketPath };
      this.address = socketPath;
      this.agent = new SocketAgent(socketPath);
    }
  }

  /**
   * Closes this client's connections, idle and in use (calls in progress
   * fail); later calls open new ones. Not needed before exiting: idle
   * connections never keep the process alive.
   */
  close(): void {
    this.agent.destroy();
  }

  // -- transport --------------------------------------------------------------

  /** The error for a failed exchange: no daemon there, or not an HTTP answer. */
  private failure(e: unknown, what: string): CorralError {
    if (e instanceof CorralError) return e;
    const err = e as NodeJS.ErrnoException;
    if (isHttpParseError(e)) {
      return new CorralError(
        "bad_answer",
        `${what}: expected an HTTP/1.1 answer from the corral daemon at ${this.address}: ${printable(String(err.message))}`,
        undefined,
        { cause: e },
      );
    }
    const hint = "socketPath" in this.target ? "; start one with `corral daemon` (or any corral command)" : "";
    return new CorralError(
      "unreachable",
      `cannot talk to the corral daemon at ${this.address} (${what}): ${printable(String(err?.message ?? e))}${hint}`,
      undefined,
      { cause: e },
    );
  }

  /** Sends one request and resolves once its answer's head has arrived; an error answer is thrown. */
  private async open(r: Request): Promise<Open> {
    const what = `${r.method} ${r.path}`;
    r.signal?.throwIfAborted();
    const ctl = new AbortController();
    const onAbort = () => ctl.abort(r.signal!.reason);
    r.signal?.addEventListener("abort", onAbort, { once: true });
    const budget = this.timeoutMs === null || r.extraMs === null ? null : this.timeoutMs + (r.extraMs ?? 0);
    let timer: NodeJS.Timeout | undefined;
    if (budget !== null) {
      timer = setTimeout(
        () =>
          ctl.abort(
            new CorralError(
              "deadline_exceeded",
              `no complete answer to ${what} from the corral daemon at ${this.address} within ${budget / 1000} s`,
            ),
          ),
        budget,
      );
    }
    const clearDeadline = () => clearTimeout(timer);
    const body = r.body === undefined ? undefined : Buffer.from(JSON.stringify(r.body));
    const headers: http.OutgoingHttpHeaders = { Accept: "application/json, text/plain, text/event-stream" };
    if (body) {
      headers["Content-Type"] = "application/json";
      headers["Content-Length"] = body.length;
    } else if (r.method !== "GET" && r.method !== "DELETE") {
      headers["Content-Length"] = 0;
    }
    if (this.token !== undefined) headers.Authorization = `Bearer ${this.token}`;
    const target = r.path + queryString(r.query);

    const send = (retried: boolean): Promise<{ req: http.ClientRequest; res: http.IncomingMessage }> =>
      new Promise((resolve, reject) => {
        if (ctl.signal.aborted) return reject(ctl.signal.reason);
        const req = http.request({ ...this.target, agent: this.agent, method: r.method, path: target, headers });
        const abort = () => req.destroy(ctl.signal.reason as Error);
        ctl.signal.addEventListener("abort", abort, { once: true });
        let answered = false;
        req.once("response", (res) => {
          answered = true;
          resolve({ req, res });
        });
        // `on`, not `once`: a request can fail more than once (its answer's reader sees those).
        req.on("error", (e: NodeJS.ErrnoException) => {
          if (answered) return;
          answered = true;
          ctl.signal.removeEventListener("abort", abort);
          if (ctl.signal.aborted) return reject(ctl.signal.reason);
          // A kept-alive connection the daemon closed as idle just as this
          // request went out, before any answer: the daemon never read it
          // (it closes only connections between requests), so sending it again is safe.
          if (!retried && req.reusedSocket && (e.code === "ECONNRESET" || e.code === "EPIPE")) {
            return resolve(send(true));
          }
          reject(this.failure(e, what));
        });
        req.end(body);
      });

    let sent: { req: http.ClientRequest; res: http.IncomingMessage };
    try {
      sent = await send(false);
    } catch (e) {
      clearDeadline();
      r.signal?.removeEventListener("abort", onAbort);
      throw e;
    }
    const { req, res } = sent;
    const close = () => {
      clearDeadline();
      r.signal?.removeEventListener("abort", onAbort);
      if (!res.complete) req.destroy();
    };
    const open: Open = { req, res, ctl, clearDeadline, close };
    if (res.statusCode !== undefined && res.statusCode >= 400) {
      try {
        throw CorralError.fromAnswer(res.statusCode, await this.readAll(open, what));
      } finally {
        close();
      }
    }
    return open;
  }

  /** An answer's whole body, up to {@link ANSWER_LIMIT} bytes, within the call's deadline. */
  private async readAll(open: Open, what: string): Promise<Buffer> {
    const tooLarge = () =>
      new CorralError(
        "bad_answer",
        `the answer to ${what} from the corral daemon at ${this.address} is larger than ${ANSWER_LIMIT >> 20} MiB, more than corral ever sends; stopped reading`,
      );
    const declared = Number(open.res.headers["content-length"]);
    if (declared > ANSWER_LIMIT) throw tooLarge();
    const chunks: Buffer[] = [];
    let size = 0;
    try {
      for await (const chunk of open.res as AsyncIterable<Buffer>) {
        size += chunk.length;
        if (size > ANSWER_LIMIT) throw tooLarge();
        chunks.push(chunk);
      }
    } catch (e) {
      if (open.ctl.signal.aborted) throw open.ctl.signal.reason;
      throw this.failure(e, what);
    }
    if (open.ctl.signal.aborted) throw open.ctl.signal.reason;
    if (!open.res.complete) throw this.failure(new Error("the answer ended early"), what);
    return Buffer.concat(chunks);
  }

  /** One request; its answer's body. */
  private async body(r: Request): Promise<Buffer> {
    const open = await this.open(r);
    try {
      return await this.readAll(open, `${r.method} ${r.path}`);
    } finally {
      open.close();
    }
  }

  /** One request with a JSON answer: an object, or with `array` an array. */
  private async json<T>(r: Request, expect: "object" | "array" = "object"): Promise<T> {
    const raw = await this.body(r);
    const what = `${r.method} ${r.path}`;
    let value: unknown;
    try {
      value = JSON.parse(raw.toString("utf8"));
    } catch (e) {
      const got = raw.length
        ? `${raw.length} bytes beginning ${JSON.stringify(printable(raw.subarray(0, 120).toString("utf8")))}`
        : "an empty body";
      throw new CorralError("bad_answer", `${what}: expected JSON, got ${got}`, undefined, { cause: e });
    }
    const isArray = Array.isArray(value);
    if (value === null || typeof value !== "object" || isArray !== (expect === "array")) {
      throw new CorralError(
        "bad_answer",
        `${what}: expected a JSON ${expect}, got ${isArray ? "an array" : JSON.stringify(value)?.slice(0, 40)}`,
      );
    }
    return value as T;
  }

  /**
   * A streamed GET's body as it arrives. The head must come within the
   * deadline; then with `stallMs` the body may not go silent that long.
   * Aborting the caller's signal (or leaving the loop) ends it quietly.
   */
  private async *chunks(r: Request, stallMs: number | null): AsyncGenerator<Buffer> {
    let open: Open;
    try {
      open = await this.open(r);
    } catch (e) {
      if (r.signal?.aborted && e === r.signal.reason) return;
      throw e;
    }
    open.clearDeadline();
    const what = `${r.method} ${r.path}`;
    let stall: NodeJS.Timeout | undefined;
    const arm = () => {
      if (stallMs === null) return;
      clearTimeout(stall);
      stall = setTimeout(
        () =>
          open.ctl.abort(
            new CorralError(
              "deadline_exceeded",
              `${what} from the corral daemon at ${this.address} sent nothing for ${stallMs / 1000} s (it sends a keep-alive every 15 s)`,
            ),
          ),
        stallMs,
      );
    };
    try {
      arm();
      try {
        for await (const chunk of open.res as AsyncIterable<Buffer>) {
          arm();
          yield chunk;
        }
      } catch (e) {
        if (!open.ctl.signal.aborted) throw this.failure(e, what);
      }
      if (open.ctl.signal.aborted) {
        if (r.signal?.aborted) return;
        throw open.ctl.signal.reason;
      }
      if (!open.res.complete) throw this.failure(new Error("the answer ended early"), what);
    } finally {
      clearTimeout(stall);
      open.close();
    }
  }

  /** Ms a stop with these stage timeouts may take (15 minutes when it names none). */
  private static stopMs(stopTimeouts: readonly number[] | undefined): number {
    if (stopTimeouts === undefined) return UNSTATED_STOP_MS;
    return stopTimeouts.reduce((sum, t) => sum + Math.min(Math.max(Number(t) || 0, 0), MAX_STAGE_S) * 1000, 0);
  }

  private static cleanup(o: StopOptions): CleanupOptions {
    const body: CleanupOptions = {};
    if (o.force !== undefined) body.force = o.force;
    if (o.stopTimeouts !== undefined) body.stop_timeouts = o.stopTimeouts;
    return body;
  }

  private static many(o: ManyOptions): StopManyRequest {
    const body: StopManyRequest = CorralClient.cleanup(o);
    if (o.all) body.all = true;
    if (o.selector !== undefined) body.selector = o.selector;
    if (o.liveOnly !== undefined) body.live_only = o.liveOnly;
    return body;
  }

  // -- the daemon -------------------------------------------------------------

  /** `GET /v1/health`: the daemon answers and its store takes writes (else `unavailable`, 503). */
  health(o: CallOptions = {}): Promise<DaemonHealth> {
    return this.json({ method: "GET", path: "/v1/health", signal: o.signal });
  }

  /** `GET /v1/openapi.json`: the OpenAPI document of every route and shape. */
  openapi(o: CallOptions = {}): Promise<Record<string, unknown>> {
    return this.json({ method: "GET", path: "/v1/openapi.json", signal: o.signal });
  }

  /** `GET /metrics`: Prometheus text format. */
  async metrics(o: CallOptions = {}): Promise<string> {
    return (await this.body({ method: "GET", path: "/metrics", signal: o.signal })).toString("utf8");
  }

  /** `POST /v1/daemon/stop`: the daemon answers, then stops; its agents keep running unless `stopAgents`. */
  daemonStop(o: CallOptions & { stopAgents?: boolean } = {}): Promise<DaemonStopResponse> {
    const body = o.stopAgents === undefined ? {} : { stop_agents: o.stopAgents };
    return this.json({
      method: "POST",
      path: "/v1/daemon/stop",
      body,
      extraMs: o.stopAgents ? UNSTATED_STOP_MS : 0,
      signal: o.signal,
    });
  }

  // -- spawning ---------------------------------------------------------------

  /**
   * `POST /v1/agents`: starts an agent and answers after its verification
   * window. A program that cannot start is a `spawn_failed` error (with the
   * OS's reason); one that ended inside the window is answered with `status`
   * `completed` or `failed`. A live id is a `conflict`.
   */
  spawn(request: SpawnRequest, o: CallOptions = {}): Promise<SpawnResponse> {
    return this.json({
      method: "POST",
      path: "/v1/agents",
      body: request,
      extraMs: request.verify_ms ?? 0,
      signal: o.signal,
    });
  }

  /**
   * `POST /v1/agents/batch`: many agents in one request, all verification
   * windows at once. One result per request, in request order: its spawn
   * response, or the {@link CorralError} that entry alone got (returned, not thrown).
   */
  async spawnBatch(
    requests: readonly SpawnRequest[],
    o: CallOptions = {},
  ): Promise<Array<SpawnResponse | CorralError>> {
    const extraMs = Math.max(0, ...requests.map((r) => r.verify_ms ?? 0));
    const answer = await this.json<{ results?: unknown }>({
      method: "POST",
      path: "/v1/agents/batch",
      body: { agents: requests },
      extraMs,
      signal: o.signal,
    });
    return batchResults(answer, "POST /v1/agents/batch");
  }

  // -- observing --------------------------------------------------------------

  /**
   * `GET /v1/agents`: every agent's status by id, filtered by the daemon.
   * With `fields`, each status has only those fields (and `agent_id`).
   */
  list(o?: ListOptions & { fields?: undefined }): Promise<Record<string, AgentStatus>>;
  list<F extends StatusField>(
    o: ListOptions & { fields: readonly F[] },
  ): Promise<Record<string, Pick<AgentStatus, F | "agent_id">>>;
  list(o: ListOptions & { fields?: readonly StatusField[] } = {}): Promise<Record<string, Partial<AgentStatus>>> {
    let label: readonly string[] | undefined;
    if (typeof o.label === "string") label = [o.label];
    else if (Array.isArray(o.label)) label = o.label as readonly string[];
    else if (o.label) label = Object.entries(o.label).map(([k, v]) => `${k}=${v}`);
    const query = {
      selector: o.selector,
      state: typeof o.state === "string" || o.state === undefined ? o.state : o.state.join(","),
      label,
      fields: o.fields?.join(","),
      node: typeof o.node === "string" || o.node === undefined ? o.node : o.node.join(","),
    };
    return this.json({ method: "GET", path: "/v1/agents", query, signal: o.signal });
  }

  /** `GET /v1/agents/{id}`: one agent's status (`not_found` for an unknown id). */
  status(agentId: string, o: CallOptions = {}): Promise<AgentStatus> {
    return this.json({ method: "GET", path: `/v1/agents/${seg(agentId)}`, signal: o.signal });
  }

  /** `GET /v1/agents/{id}/health`: `healthy` is `health == "healthy"`. */
  agentHealth(agentId: string, o: CallOptions = {}): Promise<HealthReport> {
    return this.json({ method: "GET", path: `/v1/agents/${seg(agentId)}/health`, signal: o.signal });
  }

  /** `GET /v1/summary`: counts by status and by state, total memory and CPU. */
  summary(o: CallOptions = {}): Promise<ProcessSummary> {
    return this.json({ method: "GET", path: "/v1/summary", signal: o.signal });
  }

  /** `GET /v1/agents/{id}/runs`: every run of the agent, oldest first. */
  runs(agentId: string, o: CallOptions = {}): Promise<RunInfo[]> {
    return this.json({ method: "GET", path: `/v1/agents/${seg(agentId)}/runs`, signal: o.signal }, "array");
  }

  /** `GET /v1/agents/{id}/history`: its tree's recent CPU and memory, oldest first (after `since`, Unix seconds). */
  history(agentId: string, o: CallOptions & { since?: number } = {}): Promise<AgentHistory> {
    return this.json({
      method: "GET",
      path: `/v1/agents/${seg(agentId)}/history`,
      query: { since: o.since },
      signal: o.signal,
    });
  }

  /** `POST /v1/ui/login`: a one-time login URL for the web dashboard (refused from inside an agent). */
  uiLogin(o: CallOptions = {}): Promise<UiLogin> {
    return this.json({ method: "POST", path: "/v1/ui/login", signal: o.signal });
  }

  /** `PUT /v1/agents/{id}/progress`: reports progress (0–100); from inside an agent, only its own (else `forbidden`). */
  progress(agentId: string, progress: number, o: CallOptions & { message?: string } = {}): Promise<AgentStatus> {
    const body = o.message === undefined ? { progress } : { progress, message: o.message };
    return this.json({ method: "PUT", path: `/v1/agents/${seg(agentId)}/progress`, body, signal: o.signal });
  }

  /**
   * `GET /v1/agents/{id}/wait`: the final status once the current run has
   * ended and will not be restarted; a `timeout` error (408) after `timeoutS`
   * seconds (the daemon's default 30, at most 3600).
   */
  wait(agentId: string, o: CallOptions & { timeoutS?: number } = {}): Promise<AgentStatus> {
    return this.json({
      method: "GET",
      path: `/v1/agents/${seg(agentId)}/wait`,
      query: { timeout_s: o.timeoutS },
      extraMs: (o.timeoutS ?? DEFAULT_WAIT_S) * 1000,
      signal: o.signal,
    });
  }

  /**
   * `GET /v1/agents/{id}/logs`, line by line (without the `\n`). With
   * `follow`, what is written next comes too, until the run ends (or the
   * signal is aborted, or the loop is left). The request is sent when the
   * iteration begins.
   */
  async *logs(agentId: string, o: LogOptions & { follow?: boolean } = {}): AsyncGenerator<string, void, undefined> {
    const r: Request = {
      method: "GET",
      path: `/v1/agents/${seg(agentId)}/logs`,
      query: { stream: o.stream, tail: o.tail, run: o.run, follow: o.follow ? true : undefined },
      signal: o.signal,
    };
    // A followed log has no stall limit (a quiet agent writes nothing for hours);
    // a log read to its end may not go silent longer than a call's deadline.
    yield* parseLines(this.chunks(r, o.follow ? null : this.timeoutMs), LINE_LIMIT);
  }

  /** `GET /v1/agents/{id}/logs` as one text: the log so far (up to 64 MiB). */
  async logText(agentId: string, o: LogOptions = {}): Promise<string> {
    const query = { stream: o.stream, tail: o.tail, run: o.run };
    return (
      await this.body({ method: "GET", path: `/v1/agents/${seg(agentId)}/logs`, query, signal: o.signal })
    ).toString("utf8");
  }

  /**
   * `GET /v1/events`: the event log after `since` (default 0: from the
   * first), in `seq` order; with `follow` (the default) it waits for new ones
   * until the signal is aborted or the loop is left. Resume after a
   * disconnect with `since` set to the last `seq` seen: every event arrives
   * exactly once. The request is sent when the iteration begins.
   */
  async *events(o: CallOptions & { since?: number; follow?: boolean } = {}): AsyncGenerator<Event, void, undefined> {
    const follow = o.follow ?? true;
    const r: Request = { method: "GET", path: "/v1/events", query: { since: o.since, follow }, signal: o.signal };
    for await (const message of parseSse(this.chunks(r, EVENT_STALL_MS), EVENT_LIMIT, "GET /v1/events")) {
      let value: unknown;
      try {
        value = JSON.parse(message.data);
      } catch (e) {
        throw new CorralError(
          "bad_answer",
          `GET /v1/events: expected an event as JSON, got ${JSON.stringify(printable(message.data.slice(0, 120)))}`,
          undefined,
          { cause: e },
        );
      }
      if (
        value === null ||
        typeof value !== "object" ||
        Array.isArray(value) ||
        typeof (value as { kind?: unknown }).kind !== "string"
      ) {
        throw new CorralError(
          "bad_answer",
          `GET /v1/events: expected an event object with a kind, got ${printable(message.data.slice(0, 120))}`,
        );
      }
      yield value as Event;
    }
  }

  // -- stopping, restarting and forgetting ------------------------------------

  /**
   * `POST /v1/agents/{id}/stop`: staged stop of the agent's whole tree
   * (SIGTERM, SIGTERM, SIGKILL; `force`: SIGKILL at once). Answers once
   * nothing of the agent is left.
   */
  stop(agentId: string, o: StopOptions = {}): Promise<StopReport> {
    return this.json({
      method: "POST",
      path: `/v1/agents/${seg(agentId)}/stop`,
      body: CorralClient.cleanup(o),
      extraMs: CorralClient.stopMs(o.stopTimeouts),
      signal: o.signal,
    });
  }

  /** `POST /v1/stop`: stops every agent (`all: true`) or a selector's, in parallel; one report each. */
  stopMany(o: ManyOptions): Promise<StopReport[]> {
    return this.json(
      {
        method: "POST",
        path: "/v1/stop",
        body: CorralClient.many(o),
        extraMs: CorralClient.stopMs(o.stopTimeouts),
        signal: o.signal,
      },
      "array",
    );
  }

  /** `POST /v1/agents/{id}/kill`: stops one agent; `killed` is false when it had already ended. */
  kill(agentId: string, o: CallOptions & { force?: boolean } = {}): Promise<KillResponse> {
    const body = o.force === undefined ? {} : { force: o.force };
    return this.json({
      method: "POST",
      path: `/v1/agents/${seg(agentId)}/kill`,
      body,
      extraMs: UNSTATED_STOP_MS,
      signal: o.signal,
    });
  }

  /** `POST /v1/agents/{id}/restart`: its staged stop (when live), then a new run of the request it was last spawned with. */
  restart(agentId: string, o: StopOptions = {}): Promise<SpawnResponse> {
    return this.json({
      method: "POST",
      path: `/v1/agents/${seg(agentId)}/restart`,
      body: CorralClient.cleanup(o),
      extraMs: CorralClient.stopMs(o.stopTimeouts),
      signal: o.signal,
    });
  }

  /** `POST /v1/restart`: restarts every agent or a selector's; each result as in {@link spawnBatch}. */
  async restartMany(o: ManyOptions): Promise<Array<SpawnResponse | CorralError>> {
    const answer = await this.json<{ results?: unknown }>({
      method: "POST",
      path: "/v1/restart",
      body: CorralClient.many(o),
      extraMs: CorralClient.stopMs(o.stopTimeouts),
      signal: o.signal,
    });
    return batchResults(answer, "POST /v1/restart");
  }

  /** `POST /v1/pause`: freezes the whole tree of each agent picked (it is `paused` until resumed, across daemon restarts); one report each. */
  pause(o: PauseTarget): Promise<PauseReport[]> {
    return this.json({ method: "POST", path: "/v1/pause", body: CorralClient.pauseBody(o), signal: o.signal }, "array");
  }

  /** `POST /v1/resume`: thaws the whole tree of each paused agent picked; one report each. */
  resume(o: PauseTarget): Promise<PauseReport[]> {
    return this.json(
      { method: "POST", path: "/v1/resume", body: CorralClient.pauseBody(o), signal: o.signal },
      "array",
    );
  }

  private static pauseBody(o: PauseTarget): PauseRequest {
    if (o.agentId !== undefined) return { agent_id: o.agentId };
    if (o.selector !== undefined) return { selector: o.selector };
    return { all: true };
  }

  /** `GET /v1/teams`: every team with budgets, with what each uses. */
  teams(o: CallOptions = {}): Promise<TeamStatus[]> {
    return this.json({ method: "GET", path: "/v1/teams", signal: o.signal }, "array");
  }

  /** `GET /v1/teams/{id}`: one team's budgets, usage and members (`not_found` for a team with no budget and no agent). */
  team(team: string, o: CallOptions = {}): Promise<TeamStatus> {
    return this.json({ method: "GET", path: `/v1/teams/${seg(team)}`, signal: o.signal });
  }

  /** `PUT /v1/teams/{id}`: sets (replaces) the budgets of the agent `team` and every agent under it; a spawn over `max_agents` is then a 409 `budget`. */
  setTeam(team: string, budget: TeamBudget, o: CallOptions = {}): Promise<TeamStatus> {
    return this.json({ method: "PUT", path: `/v1/teams/${seg(team)}`, body: budget, signal: o.signal });
  }

  /** `DELETE /v1/teams/{id}`: removes a team's budgets; answers what they were. */
  removeTeam(team: string, o: CallOptions = {}): Promise<TeamRemoval> {
    return this.json({ method: "DELETE", path: `/v1/teams/${seg(team)}`, signal: o.signal });
  }

  /** `POST /v1/reap`: sweeps for unreaped processes; the agents whose end it recorded (normally none). */
  reap(o: CallOptions = {}): Promise<string[]> {
    return this.json({ method: "POST", path: "/v1/reap", signal: o.signal }, "array");
  }

  /** `DELETE /v1/agents/{id}`: forgets an ended agent, its runs and default logs (`conflict` while any of it runs). */
  rm(agentId: string, o: CallOptions = {}): Promise<Removal> {
    return this.json({
      method: "DELETE",
      path: `/v1/agents/${seg(agentId)}`,
      extraMs: UNSTATED_STOP_MS,
      signal: o.signal,
    });
  }

  /** `POST /v1/prune`: forgets every ended run (live agents keep their current run). */
  prune(o: CallOptions = {}): Promise<Removal> {
    return this.json({ method: "POST", path: "/v1/prune", extraMs: UNSTATED_STOP_MS, signal: o.signal });
  }
}
