#!/usr/bin/env python3
"""Two hardening figures of a private corral daemon, measured on this machine:

1. the daemon's open file descriptors before and after N short-lived agents
   (each runs `true` and ends; an ended run must hold no descriptor);
2. GET /v1/agents/{id} latency over the Unix socket (p50/p99, a new
   connection each) at rest and while F idle connections flood the daemon's TCP
   listener (each listener caps its connections and times out idle ones, so a
   flood on one never starves the other or the daemon's own work), and whether
   a spawn works during the flood.

Usage: python3 scripts/flood.py [--bin target/release/corral] [--agents 1000] [--flood 20000]

The daemon runs in a temp state dir; everything it started is stopped and
reaped by pid at the end, also on error.
"""
import argparse, json, os, resource, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corral_harness import become_subreaper, reap_leftovers, request  # noqa: E402


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


def latency(sock, path, n):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        status, _ = request(sock, "GET", path)
        times.append((time.perf_counter() - t) * 1000)
        assert status == 200, status
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/corral")
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--flood", type=int, default=20000)
    args = ap.parse_args()
    become_subreaper()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = tempfile.mkdtemp(prefix="corral-flood-")
    state = os.path.join(tmp, "state")
    sock = os.path.join(state, "corral.sock")
    token = os.path.join(tmp, "token")
    with open(os.open(token, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write("flood-test-token-0123456789\n")
    port = free_port()
    daemon = subprocess.Popen([args.bin, "--state-dir", state, "daemon",
                               "--listen", f"127.0.0.1:{port}", "--token-file", token],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    flood = []
    try:
        wait_for("the daemon", lambda: os.path.exists(sock) and request(sock, "GET", "/v1/health")[0] == 200)
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

        status, _ = request(sock, "POST", "/v1/agents",
                            {"agent_id": "target", "command": ["sleep", "600"]})
        assert status in (200, 201), status
        p50, p99 = latency(sock, "/v1/agents/target", 200)
        print(f"GET /v1/agents/target at rest: p50 {p50:.2f} ms, p99 {p99:.2f} ms")

        # The flood comes from child processes (a process cannot hold more
        # descriptors than its own limit); each holds its share until told to go.
        per = max(1, hard - 256)
        opened = refused = 0
        while opened + refused < args.flood:
            share = min(per, args.flood - opened - refused)
            r, w = os.pipe()
            go_r, go_w = os.pipe()
            others = [g for _, g in flood]
            pid = os.fork()
            if pid == 0:
                os.close(r)
                os.close(go_w)
                held, bad = [], 0
                for go_other in others:
                    os.close(go_other)
                for _ in range(share):
                    c = socket.socket()
                    c.settimeout(2)
                    try:
                        c.connect(("127.0.0.1", port))
                        held.append(c)
                    except OSError:
                        bad += 1
                        c.close()
                os.write(w, f"{len(held)} {bad}".encode())
                os.read(go_r, 1)
                os._exit(0)
            os.close(w)
            os.close(go_r)
            got = os.read(r, 64).decode().split()
            os.close(r)
            opened += int(got[0])
            refused += int(got[1])
            flood.append((pid, go_w))
        print(f"flood: {opened} idle TCP connections opened ({refused} refused at connect); "
              f"daemon fds now {fds(daemon.pid)}")
        p50, p99 = latency(sock, "/v1/agents/target", 200)
        print(f"GET /v1/agents/target during the flood: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        t = time.perf_counter()
        status, body = request(sock, "POST", "/v1/agents",
                               {"agent_id": "during-flood", "command": ["sleep", "600"]})
        print(f"spawn during the flood: HTTP {status} in {(time.perf_counter() - t) * 1000:.1f} ms")
    finally:
        for pid, go in flood:
            os.close(go)
            os.waitpid(pid, 0)
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
