#!/usr/bin/env python3
"""What reading a large fleet costs a private corral daemon, measured on this machine:
`GET /v1/agents` whole, with `?fields=agent_id,state,progress`, with a
`?selector=` of one tenth of the fleet, and `GET /metrics` (p50/p99, a new
connection each), with N sleeping agents spawned in batches of 1000.

Usage: python3 scripts/measure_listing.py [--bin target/release/corral] [--agents 10000] [--requests 30]
The state dir is a temp dir; every agent is stopped and reaped by pid at the end.
"""
import argparse, os, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corral_harness import become_subreaper, request  # noqa: E402
from measure_costs import Daemon, percentiles  # noqa: E402


def timed(sock, path, n):
    times, size = [], 0
    for _ in range(n):
        t = time.perf_counter()
        status, body = request(sock, "GET", path, timeout=120)
        times.append((time.perf_counter() - t) * 1000)
        assert status == 200, (path, status, body[:300])
        size = len(body)
    p50, p99 = percentiles(times)
    return p50, p99, size


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/corral")
    ap.add_argument("--agents", type=int, default=10000)
    ap.add_argument("--requests", type=int, default=30)
    args = ap.parse_args()
    become_subreaper()
    n = args.agents
    d = Daemon(args.bin)
    try:
        groups = (n + 999) // 1000
        for g in range(groups):
            count = min(1000, n - g * 1000)
            d.batch([{"agent_id": f"g{g}.{i}", "command": ["sleep", "3600"], "verify_ms": 0}
                     for i in range(count)])
        time.sleep(2.5)  # a sample or two of every agent
        for label, path in [
            ("GET /v1/agents", "/v1/agents"),
            ("GET /v1/agents?fields=agent_id,state,progress", "/v1/agents?fields=agent_id,state,progress"),
            ("GET /v1/agents?selector=g0.*", "/v1/agents?selector=g0.*"),
            ("GET /metrics", "/metrics"),
        ]:
            p50, p99, size = timed(d.sock, path, args.requests)
            print(f"{label} with {n} agents ({size} bytes): p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    finally:
        d.close()


if __name__ == "__main__":
    main()
