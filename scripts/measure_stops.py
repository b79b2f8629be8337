#!/usr/bin/env python3
"""What stopping a large fleet costs a private corral daemon, measured on this machine:
N agents that ignore SIGTERM stopped with stages 0.2/0.2/0.2 s (the kill stage
begins at 0.4 s), and N cooperative agents (`sleep`) stopped with the defaults,
each timed from the request until none of their pids is left in /proc, with the
daemon's CPU time meanwhile.

Usage: python3 scripts/measure_stops.py [--bin target/release/corral] [--agents 10000]
           [--perf FILE] [--keep-log FILE]
--perf records the daemon (perf record, DWARF call graphs) during the stubborn stop;
--keep-log keeps its daemon.log, whose "stop stage" lines say when each agent's
stages went out. The state dir is a temp dir; every agent is stopped and reaped
by pid at the end.
"""
import argparse, json, os, signal, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corral_harness import become_subreaper, request  # noqa: E402
from measure_costs import CLK, Daemon, cpu_ticks  # noqa: E402

STUBBORN = ["sh", "-c", "trap '' TERM; exec sleep 3600"]


def spawn(d, prefix, n, command, verify_ms):
    pids = []
    for g in range((n + 999) // 1000):
        count = min(1000, n - g * 1000)
        results = d.batch([{"agent_id": f"{prefix}{g}.{i}", "command": command, "verify_ms": verify_ms}
                           for i in range(count)])
        pids += [r["pid"] for r in results]
    return pids


def gone(pids, deadline):
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [p for p in left if os.path.exists(f"/proc/{p}")]
        if left:
            time.sleep(0.005)
    return not left


def timed_stop(d, pids, body, then=lambda: None):
    t, c = time.monotonic(), cpu_ticks(d.proc.pid)
    status, reply = request(d.sock, "POST", "/v1/stop", body, timeout=300)
    answered = time.monotonic() - t
    assert status == 200, (status, reply[:300])
    assert gone(pids, time.monotonic() + 120), "agents outlived the stop"
    took = time.monotonic() - t
    print(f"  daemon CPU during the stop: {(cpu_ticks(d.proc.pid) - c) / CLK:.2f} s")
    then()
    request(d.sock, "POST", "/v1/prune", {})
    return answered, took, json.loads(reply)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/corral")
    ap.add_argument("--agents", type=int, default=10000)
    ap.add_argument("--perf", help="record the daemon with perf during the stubborn stop into this file")
    ap.add_argument("--keep-log", help="copy the daemon log after the stubborn stop to this file")
    args = ap.parse_args()
    become_subreaper()
    n = args.agents
    d = Daemon(args.bin)
    perf = None
    try:
        pids = spawn(d, "t", n, STUBBORN, 100)
        if args.perf:
            perf = subprocess.Popen(["perf", "record", "-F", "499", "--call-graph", "dwarf,16384", "-q", "-o", args.perf, "-p", str(d.proc.pid)])
            time.sleep(1)
        def end_perf():
            if perf and perf.poll() is None:
                perf.send_signal(signal.SIGINT)
                perf.wait()
        answered, took, reply = timed_stop(d, pids, {"all": True, "stop_timeouts": [0.2, 0.2, 0.2], "live_only": True},
                                           end_perf)
        stages = {}
        for r in reply:
            stages[r["stage"]] = stages.get(r["stage"], 0) + 1
        print(f"stop {n} SIGTERM-ignoring, 0.2/0.2/0.2 s: answered {answered:.3f} s, "
              f"all gone {took:.3f} s (kill stage begins at 0.4 s) stages {stages}")
        if args.keep_log:
            with open(os.path.join(d.state, "daemon.log"), "rb") as src, open(args.keep_log, "wb") as dst:
                dst.write(src.read())
        pids = spawn(d, "c", n, ["sleep", "3600"], 0)
        answered, took, _ = timed_stop(d, pids, {"all": True, "live_only": True})
        print(f"stop {n} cooperative: answered {answered:.3f} s, all gone {took:.3f} s")
    finally:
        if perf and perf.poll() is None:
            perf.send_signal(signal.SIGINT)
            perf.wait()
        d.close()


if __name__ == "__main__":
    main()
