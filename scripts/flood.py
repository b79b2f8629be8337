#!/usr/bin/env python3
"""Hardening figures of a private corral daemon, measured on this machine:

1. the daemon's open file descriptors before and after N short-lived agents
   (each runs `true` and ends; an ended run must hold no descriptor);
2. a health check's latency (GET /v1/health on a new connection each time;
   p50/p99 of the answered ones, and how many failed) at rest and while a
   flood holds connections open:
   - `unix idle`: F same-user connections to the Unix socket, never a byte sent;
   - `tcp idle`: F connections to the TCP listener, never a byte sent;
   - `tcp half-sent`: F TCP connections that sent `GET / HTTP/1.1\\r\\nHost:`
     and stopped.
   During each flood the health check goes over the Unix socket and, for the
   TCP floods, first over TCP with the bearer token (the client a TCP flood
   would lock out). A failure is counted by why: `connect` (refused, or the
   accept queue full), `closed` (closed or reset without an answer),
   `timeout` (no answer within --timeout seconds), `status` (not a healthy
   200).

Each flood is opened all at once from child processes; once the daemon has
taken it off its accept queue (`ss`), the health checks run, none started
later than 9 s after the flood began (the daemon's 10 s header timeout would
otherwise be what frees the listener; `n` says how many fit). The flood is
then let go, and the next starts once the daemon is back to its resting
descriptors. The daemon runs with its defaults: its connection cap derives
from its open-file limit, raised here to the hard limit (1024 per listener
for any limit of 4096 or more).

Usage: python3 scripts/flood.py [--bin target/release/corral] [--agents 1000]
           [--unix-flood 3000] [--tcp-flood 3000] [--samples 200] [--timeout 2]

The daemon runs in a temp state dir; everything it started is stopped and
reaped by pid at the end, also on error.
"""
import argparse, json, os, resource, shutil, signal, socket, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corral_harness import become_subreaper, reap_leftovers, request  # noqa: E402

TOKEN = "flood-test-token-0123456789"
# The daemon's default header timeout (serve::HEADER_TIMEOUT), which ends an
# idle connection whatever else happens.
HEADER_TIMEOUT_S = 10


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_for(what, check, timeout=30):
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def health(connect, token, timeout):
    """One GET /v1/health on a new connection: (outcome, milliseconds), the
    outcome being `ok`, or why not: `connect` (refused, or the accept queue
    full), `closed` (closed or reset without an answer), `timeout` (no answer
    within `timeout` s) or `status` (an answer other than a healthy 200)."""
    t = time.perf_counter()
    try:
        s = connect()
    except socket.timeout:
        return "timeout", (time.perf_counter() - t) * 1000
    except OSError:
        return "connect", (time.perf_counter() - t) * 1000
    answer = b""
    try:
        s.settimeout(timeout)
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        s.sendall(f"GET /v1/health HTTP/1.1\r\nHost: corral\r\n{auth}Connection: close\r\n\r\n".encode())
        while True:
            c = s.recv(65536)
            if not c:
                break
            answer += c
        if not answer:
            outcome = "closed"
        elif answer.startswith(b"HTTP/1.1 200") and b'"ok":true' in answer:
            outcome = "ok"
        else:
            outcome = "status"
    except socket.timeout:
        outcome = "timeout"
    except OSError:
        outcome = "closed" if not answer else "status"
    finally:
        s.close()
    return outcome, (time.perf_counter() - t) * 1000


def measure(connect, token, n, timeout, deadline=None):
    """Up to n health checks one after another, none started after
    `deadline` (monotonic): a row of the table."""
    times, why, tried = [], {}, 0
    for _ in range(n):
        if deadline is not None and time.monotonic() >= deadline:
            break
        tried += 1
        outcome, ms = health(connect, token, timeout)
        if outcome == "ok":
            times.append(ms)
        else:
            why[outcome] = why.get(outcome, 0) + 1
    times.sort()
    pick = lambda q: times[min(len(times) - 1, int(len(times) * q))] if times else float("nan")  # noqa: E731
    return {"n": tried, "failed": tried - len(times), "why": why, "p50": pick(0.5), "p99": pick(0.99),
            "max": times[-1] if times else float("nan")}


def accept_queue(kind, target):
    """Connections waiting in the listener's accept queue (its Recv-Q), from
    the kernel's socket tables via `ss`; None when it cannot be read."""
    if kind == "unix":
        cmd, match = ["ss", "-xlnH"], target
    else:
        cmd, match = ["ss", "-tlnH"], f"{target[0]}:{target[1]}"
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 5 and match in f[4:6]:
            return int(f[2])
    return None


def open_flood(kind, target, count, per, children):
    """Opens `count` connections of `kind` from child processes (a process
    cannot hold more descriptors than its own limit), each holding its share
    until told to go; each child is added to `children` as soon as it exists,
    so a failure half-way still lets every one go. Returns (opened, failed at
    connect); opened counts connects that succeeded, whether or not the daemon
    kept them."""
    opened = failed = 0
    while opened + failed < count:
        share = min(per, count - opened - failed)
        r, w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                os.close(go_w)
                for _, go_other in children:
                    os.close(go_other)
                held, bad = [], 0
                for _ in range(share):
                    c = socket.socket(socket.AF_UNIX if kind == "unix" else socket.AF_INET)
                    c.settimeout(2)
                    try:
                        c.connect(target)
                        if kind == "tcp-half":
                            c.sendall(b"GET / HTTP/1.1\r\nHost:")
                        held.append(c)
                    except OSError:
                        bad += 1
                        c.close()
                os.write(w, f"{len(held)} {bad}".encode())
                # Holds them until the parent writes or goes away.
                os.read(go_r, 1)
            finally:
                os._exit(0)
        os.close(w)
        os.close(go_r)
        children.append((pid, go_w))
        got = os.read(r, 64).decode().split()
        os.close(r)
        if len(got) != 2:
            raise SystemExit(f"a flood process ({pid}) ended without reporting")
        opened += int(got[0])
        failed += int(got[1])
    return opened, failed


def release(children):
    for pid, go in children:
        os.close(go)
        os.waitpid(pid, 0)
    children.clear()


def row(flood, via, r):
    why = ", ".join(f"{k} {v}" for k, v in sorted(r["why"].items())) or "-"
    print(f"| {flood:<24} | {via:<12} | {r['n']:>4} | {r['failed']:>6} | {why:<14} | "
          f"{r['p50']:>8.2f} | {r['p99']:>8.2f} | {r['max']:>8.2f} |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/corral")
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--unix-flood", type=int, default=3000)
    ap.add_argument("--tcp-flood", type=int, default=3000)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=2.0)
    args = ap.parse_args()
    become_subreaper()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = tempfile.mkdtemp(prefix="corral-flood-")
    state = os.path.join(tmp, "state")
    sock = os.path.join(state, "corral.sock")
    token = os.path.join(tmp, "token")
    with open(os.open(token, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(TOKEN + "\n")
    port = free_port()
    daemon = subprocess.Popen([args.bin, "--state-dir", state, "daemon",
                               "--listen", f"127.0.0.1:{port}", "--token-file", token],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    flood = []
    try:
        wait_for("the daemon", lambda: os.path.exists(sock) and request(sock, "GET", "/v1/health")[0] == 200)
        if args.agents:
            before = fds(daemon.pid)
            batch = {"agents": [{"agent_id": f"once.{i}", "command": ["true"], "verify_ms": 0}
                                for i in range(args.agents)]}
            status, _ = request(sock, "POST", "/v1/agents/batch", batch, timeout=120)
            assert status == 200, status

            def all_ended():
                _, body = request(sock, "GET", "/v1/summary")
                s = json.loads(body)
                return s.get("running", 1) == 0 and s.get("spawning", 0) == 0
            wait_for("every short-lived agent to end", all_ended, timeout=120)
            after = fds(daemon.pid)
            print(f"daemon fds: {before} before, {after} after {args.agents} short-lived agents "
                  f"(+{after - before})")

        def via_unix():
            # A timeout before connecting too: a connect to a Unix socket whose
            # accept queue is full blocks until there is room.
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(args.timeout)
            try:
                s.connect(sock)
            except OSError:
                s.close()
                raise
            return s

        def via_tcp():
            return socket.create_connection(("127.0.0.1", port), timeout=args.timeout)

        resting = fds(daemon.pid)
        per = max(1, hard - 256)
        print(f"\n{os.path.basename(args.bin)}: GET /v1/health, a new connection each, "
              f"{args.samples} one after another (ms; p50/p99/max of the answered ones)\n")
        print("| flood                    | health via   |    n | failed | why            |      p50 |      p99 |      max |")
        print("|--------------------------|--------------|------|--------|----------------|----------|----------|----------|")
        row("none", "unix socket", measure(via_unix, None, args.samples, args.timeout))
        row("none", "tcp + token", measure(via_tcp, TOKEN, args.samples, args.timeout))
        scenarios = [("unix", sock, args.unix_flood, "unix idle"),
                     ("tcp-idle", ("127.0.0.1", port), args.tcp_flood, "tcp idle"),
                     ("tcp-half", ("127.0.0.1", port), args.tcp_flood, "tcp half-sent")]
        notes = []
        for kind, target, count, name in scenarios:
            if not count:
                continue
            t = time.monotonic()
            # Every flood connection must still be inside its header timeout
            # when a health check is sent, or the timeout, not the daemon's
            # choice, would be what lets it in.
            deadline = t + HEADER_TIMEOUT_S - 1
            opened, refused = open_flood(kind, target, count, per, flood)
            took = time.monotonic() - t
            # What is measured is the listener full, not the burst: the daemon
            # has taken every flood connection off its accept queue.
            wait_for("the daemon to take the flood off its accept queue",
                     lambda: accept_queue(kind, target) in (0, None), timeout=5)
            label = f"{name} ({opened})"
            note = (f"{name}: {opened} opened in {took:.2f} s ({refused} failed at connect); "
                    f"daemon fds then {fds(daemon.pid)} (resting {resting})")
            if kind != "unix":
                row(label, "tcp + token", measure(via_tcp, TOKEN, args.samples, args.timeout, deadline))
            row(label, "unix socket", measure(via_unix, None, args.samples, args.timeout, deadline))
            notes.append(note + f"; measured by {time.monotonic() - t:.2f} s after the flood's start")
            release(flood)
            wait_for("the flood to be let go", lambda: fds(daemon.pid) <= resting + 4)
        print()
        for n in notes:
            print(n)
    finally:
        release(flood)
        try:
            request(sock, "POST", "/v1/stop", {"all": True, "force": True}, timeout=60)
        except OSError:
            pass
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        reap_leftovers()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
