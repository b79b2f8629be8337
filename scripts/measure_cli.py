#!/usr/bin/env python3
"""Measures corral's CLI latency and bulk spawn time against a private daemon.

Usage: scripts/measure_cli.py [--corral target/release/corral] [--agents 100 1000]

For each N: starts a daemon in a temp state dir, spawns N `sleep` agents
concurrently over the Unix socket (raw HTTP/1.1, one connection per request,
--concurrency in flight), runs N bare posix_spawns of the same command as a
baseline, times `corral status ID` and `corral ps --json` as whole commands
(process start to exit), then stops every agent and the daemon and checks
that none is left. The script makes itself a child subreaper, so whatever
happens (an error, a closed pipe) it stops and reaps everything it caused.
"""
import argparse, json, os, signal, socket, statistics, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor

from corral_harness import become_subreaper, reap_leftovers, request


def timed(cmd, runs):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def measure(args, corral, n, state):
    base = [corral, "--state-dir", state, "--no-autostart"]
    sock = os.path.join(state, "corral.sock")
    deadline = time.time() + 10
    while not os.path.exists(sock):
        assert time.time() < deadline, "daemon did not start"
        time.sleep(0.01)

    def spawn(i):
        code, body = request(sock, "POST", "/v1/agents", {
            "agent_id": f"a{i}", "command": ["sleep", "3600"], "verify_ms": args.verify_ms})
        assert code == 201, body
        return json.loads(body)["pid"]

    t = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        pids = list(pool.map(spawn, range(n)))
    spawn_s = time.perf_counter() - t
    alive = sum(os.path.exists(f"/proc/{p}") for p in pids)
    print(f"N={n}: spawn {n} agents (verify_ms={args.verify_ms}, {args.concurrency} in flight): "
          f"{spawn_s:.3f} s ({n / spawn_s:.0f}/s); alive in /proc: {alive}")
    # Baseline in the same run: N bare posix_spawns of the same command.
    t = time.perf_counter()
    bare = [os.posix_spawn("/bin/sleep", ["sleep", "3600"], os.environ) for _ in range(n)]
    bare_s = time.perf_counter() - t
    print(f"N={n}: baseline {n} bare posix_spawn of sleep: {bare_s:.3f} s; corral/bare = {spawn_s / bare_s:.2f}x")
    # Baseline for the stop: SIGTERM every bare process, then wait for each.
    t = time.perf_counter()
    for p in bare:
        os.kill(p, signal.SIGTERM)
    for p in bare:
        os.waitpid(p, 0)
    bare_stop_s = time.perf_counter() - t
    time.sleep(1.5)  # let the sampler take a full-interval sample of every agent
    for label, cmd in [("corral status ID", base + ["status", f"a{n // 2}"]),
                       ("corral ps --json", base + ["--json", "ps"]),
                       ("baseline /bin/true", ["/bin/true"])]:
        p50, p99 = timed(cmd, args.runs)
        print(f"N={n}: {label:<20} p50 {p50:.2f} ms  p99 {p99:.2f} ms ({args.runs} runs)")
    for label, path in [("GET /v1/agents/{id}", f"/v1/agents/a{n // 2}"), ("GET /v1/agents", "/v1/agents")]:
        times = []
        for _ in range(args.runs * 4):
            t = time.perf_counter()
            code, body = request(sock, "GET", path)
            times.append((time.perf_counter() - t) * 1000)
            assert code == 200, body[:200]
        times.sort()
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        print(f"N={n}: {label:<20} p50 {statistics.median(times):.2f} ms  p99 {p99:.2f} ms "
              f"({len(times)} requests over the socket, {len(body)} bytes)")
    t = time.perf_counter()
    subprocess.run(base + ["stop", "--all", "--stop-timeouts", "5,5,5"], check=True, stdout=subprocess.DEVNULL)
    stop_s = time.perf_counter() - t
    print(f"N={n}: corral stop --all (whole CLI command) {stop_s:.3f} s; bare SIGTERM+wait loop {bare_stop_s:.3f} s; "
          f"ratio {stop_s / bare_stop_s:.2f}x")
    left = [p for p in pids if os.path.exists(f"/proc/{p}")]
    assert not left, f"agents left: {left[:10]}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corral", default="target/release/corral")
    ap.add_argument("--agents", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--verify-ms", type=int, default=100)
    ap.add_argument("--no-cgroups", action="store_true", help="force process-group containment")
    args = ap.parse_args()
    corral = os.path.abspath(args.corral)
    become_subreaper()
    for n in args.agents:
        with tempfile.TemporaryDirectory(prefix="corral-measure-") as tmp:
            state = os.path.join(tmp, "state")
            env = dict(os.environ, CORRAL_NO_CGROUPS="1" if args.no_cgroups else "0")
            daemon = subprocess.Popen([corral, "--state-dir", state, "daemon"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                measure(args, corral, n, state)
            finally:
                subprocess.run([corral, "--state-dir", state, "--no-autostart", "stop", "--all", "--force"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                daemon.send_signal(signal.SIGTERM)
                daemon.wait()
                reap_leftovers()


if __name__ == "__main__":
    sys.exit(main())
