/**
 * Test helpers: a real corral daemon in a private temp state dir (the binary
 * is $CORRAL_BIN, else the repository's debug build), polling with deadlines,
 * and /proc inspection to check that nothing it started is left.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { accessSync, constants, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { CorralClient, CorralError, type CorralClientOptions } from "../src/index.js";

/** The package's directory (this file runs as dist/test/helpers.js). */
export const PACKAGE_DIR = fileURLToPath(new URL("../..", import.meta.url));

/** `$CORRAL_BIN`, else the repository's debug build, made absolute. */
export function corralBin(): string {
  const bin = path.resolve(PACKAGE_DIR, process.env.CORRAL_BIN || "../../target/debug/corral");
  try {
    accessSync(bin, constants.X_OK);
  } catch {
    throw new Error(`no corral binary at ${bin}: run \`cargo build\` or set CORRAL_BIN`);
  }
  return bin;
}

/** `check()`'s first truthy value, tried until `timeoutMs` have passed. */
export async function poll<T>(check: () => T | Promise<T>, what: string, timeoutMs = 10_000): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${timeoutMs / 1000} s`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** `promise`, failing if it takes longer than `timeoutMs` (for calls that wait on the daemon). */
export async function within<T>(timeoutMs: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${timeoutMs / 1000} s`)), timeoutMs);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Fields 3 (state) and 22 (start time) of /proc/PID/stat; undefined once there is no such process. */
function procStat(pid: number, tid = pid): { state: string; start: string } | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
    const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
    return { state: fields[0]!, start: fields[19]! };
  } catch {
    return undefined;
  }
}

/** The start time of a process (to tell it from a later one with its pid). */
export function startTime(pid: number): string | undefined {
  return procStat(pid)?.start;
}

/**
 * Whether a process is alive: it exists, a thread of it has not exited, and
 * (given `start`) it is the one that started then, not a later one with its pid.
 */
export function alive(pid: number, start?: string): boolean {
  const main = procStat(pid);
  if (!main || (start !== undefined && main.start !== start)) return false;
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return false;
  }
  return tids.some((tid) => {
    const s = procStat(pid, Number(tid));
    return s !== undefined && s.state !== "Z" && s.state !== "X";
  });
}

/** A TCP port free right now on 127.0.0.1. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  if (address === null || typeof address === "string") throw new Error("no port");
  return address.port;
}

/** The CorralError a promise rejects with (failing when it resolves or rejects with something else). */
export async function rejection(promise: Promise<unknown>): Promise<CorralError> {
  try {
    await promise;
  } catch (e) {
    if (e instanceof CorralError) return e;
    throw e;
  }
  throw new Error("expected a CorralError, but the call succeeded");
}

/** A private 0700 state dir and the daemon this helper started for it. */
export class TestDaemon {
  readonly bin: string;
  readonly stateDir: string;
  readonly socket: string;
  private readonly child: ChildProcess;
  private stderr = "";
  private readonly clients: CorralClient[] = [];

  private constructor(bin: string, stateDir: string, args: readonly string[]) {
    this.bin = bin;
    this.stateDir = stateDir;
    this.socket = path.join(stateDir, "corral.sock");
    this.child = spawn(bin, ["--state-dir", stateDir, "daemon", ...args], { stdio: ["ignore", "ignore", "pipe"] });
    this.child.stderr!.setEncoding("utf8").on("data", (text: string) => {
      this.stderr = (this.stderr + text).slice(-4000);
    });
  }

  /** Starts `corral --state-dir TMP daemon ARGS` and waits until it answers. */
  static async start(args: readonly string[] = []): Promise<TestDaemon> {
    const stateDir = mkdtempSync(path.join(tmpdir(), "corral-ts-")); // mode 0700
    const daemon = new TestDaemon(corralBin(), stateDir, args);
    const probe = new CorralClient({ stateDir, timeoutMs: 2_000 });
    try {
      await poll(async () => {
        if (daemon.child.exitCode !== null || daemon.child.signalCode !== null) {
          throw new Error(`the daemon exited (${daemon.child.exitCode ?? daemon.child.signalCode}): ${daemon.stderr}`);
        }
        try {
          return (await probe.health()).ok;
        } catch (e) {
          if (e instanceof CorralError && e.code === "unreachable") return false;
          throw e;
        }
      }, "the daemon answering");
    } catch (e) {
      await daemon.stop().catch(() => undefined);
      throw e;
    } finally {
      probe.close();
    }
    return daemon;
  }

  /** The daemon's pid (it is this process's child). */
  get pid(): number {
    return this.child.pid!;
  }

  /** A client of this daemon's socket (closed at teardown). */
  client(options: Omit<CorralClientOptions, "stateDir" | "socket"> = {}): CorralClient {
    const client = new CorralClient(options.url === undefined ? { stateDir: this.stateDir, ...options } : options);
    this.clients.push(client);
    return client;
  }

  /** Whether the daemon process is still running. */
  running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Live processes this daemon started: agents carry its socket in CORRAL_SOCKET. */
  agentProcesses(): number[] {
    const mark = `CORRAL_SOCKET=${this.socket}`;
    const found: number[] = [];
    for (const entry of readdirSync("/proc")) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        const env = readFileSync(`/proc/${entry}/environ`, "utf8").split("\0");
        if (env.includes(mark) && alive(Number(entry))) found.push(Number(entry));
      } catch {
        // gone, or not ours to read
      }
    }
    return found;
  }

  /**
   * Stops every agent, then the daemon (`corral daemon stop`), checks that no
   * process it started is left, and removes the state dir.
   */
  async stop(): Promise<void> {
    const problems: string[] = [];
    try {
      if (this.running()) {
        const client = new CorralClient({ stateDir: this.stateDir });
        try {
          await client.stopMany({ all: true, force: true });
        } catch (e) {
          // A daemon on its way out (a test stopped it) no longer answers: the checks below still run.
          if (!(e instanceof CorralError && e.code === "unreachable"))
            problems.push(`stopping every agent: ${(e as Error).message}`);
        } finally {
          client.close();
        }
        await promisify(execFile)(this.bin, ["--state-dir", this.stateDir, "daemon", "stop"]).catch((e: Error) => {
          if (this.running()) problems.push(`corral daemon stop: ${e.message}`);
        });
      }
      try {
        await poll(() => !this.running(), `daemon ${this.pid} exiting`);
      } catch (e) {
        this.child.kill("SIGKILL");
        problems.push((e as Error).message);
      }
      if (alive(this.pid)) problems.push(`daemon ${this.pid} is still in /proc`);
      try {
        await poll(() => this.agentProcesses().length === 0, "every agent process ending", 5_000);
      } catch {
        const left = this.agentProcesses();
        for (const pid of left) process.kill(pid, "SIGKILL");
        problems.push(`processes of agents were left running: ${left.join(", ")}`);
      }
    } finally {
      for (const client of this.clients) client.close();
      rmSync(this.stateDir, { recursive: true, force: true });
    }
    if (problems.length) throw new Error(problems.join("; "));
  }
}
