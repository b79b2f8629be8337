#!/usr/bin/env python3
"""What supervision costs a private corral daemon, measured on this machine:

1. the daemon's CPU at rest with N agents (1 Hz sampling): plain, with a
   memory limit each (enforced by the sampler where cgroup controllers are not
   delegated), and with a probe each (progress_stale_s, checked every second);
2. a `/metrics` scrape with N agents (p50/p99, a new connection each);
3. how soon `GET /v1/agents/{id}/wait` answers after the agent exits
   (killed through a pidfd by this script; p50/p99).

Usage: python3 scripts/measure_costs.py [--bin target/release/corral] [--agents 1000]
Each phase runs in its own temp state dir; everything is stopped and reaped by pid.
"""
import argparse, json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corral_harness import become_subreaper, reap_leftovers, request  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid):
    f = open(f"/proc/{pid}/stat").read()
    rest = f[f.rfind(")") + 2:].split()
    return int(rest[11]) + int(rest[12])


class Daemon:
    def __init__(self, binary):
        self.tmp = tempfile.mkdtemp(prefix="corral-costs-")
        self.state = os.path.join(self.tmp, "state")
        self.sock = os.path.join(self.state, "corral.sock")
        self.proc = subprocess.Popen([binary, "--state-dir", self.state, "daemon"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 20
        while True:
            try:
                if request(self.sock, "GET", "/v1/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > end:
                raise SystemExit("the daemon did not answer")
            time.sleep(0.01)

    def batch(self, agents):
        status, body = request(self.sock, "POST", "/v1/agents/batch", {"agents": agents}, timeout=300)
        assert status == 200, (status, body[:300])
        results = json.loads(body)["results"]
        bad = [r for r in results if r.get("status") != "running"]
        assert not bad, bad[:3]
        return results

    def rest_cpu(self, seconds):
        t0, c0 = time.monotonic(), cpu_ticks(self.proc.pid)
        time.sleep(seconds)
        return (cpu_ticks(self.proc.pid) - c0) / CLK / (time.monotonic() - t0) * 100

    def close(self):
        try:
            request(self.sock, "POST", "/v1/stop", {"all": True, "force": True}, timeout=120)
        except OSError:
            pass
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        reap_leftovers()
        shutil.rmtree(self.tmp, ignore_errors=True)


def agents(n, prefix, **extra):
    return [dict({"agent_id": f"{prefix}.{i}", "command": ["sleep", "3600"]}, **extra) for i in range(n)]


def percentiles(xs):
    xs = sorted(xs)
    return statistics.median(xs), xs[min(len(xs) - 1, int(len(xs) * 0.99))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/corral")
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--rest", type=float, default=10)
    args = ap.parse_args()
    become_subreaper()
    n = args.agents
    for label, extra in [
        ("plain", {}),
        ("memory_mb limit each", {"limits": {"memory_mb": 512}}),
        ("progress_stale_s probe each, every 1 s",
         {"probes": {"liveness": {"progress_stale_s": 3600}, "interval_s": 1}}),
    ]:
        d = Daemon(args.bin)
        try:
            res = d.batch(agents(n, "a", **extra))
            time.sleep(2)
            cpu = d.rest_cpu(args.rest)
            how = ""
            if "limits" in extra:
                _, body = request(d.sock, "GET", f"/v1/agents/{res[0]['agent_id']}")
                how = " (enforced by: " + json.loads(body)["limits"]["memory_mb"]["enforced_by"] + ")"
            print(f"daemon CPU at rest, {n} agents, {label}: {cpu:.2f} % of a core{how}")
            if label == "plain":
                times = []
                for _ in range(50):
                    t = time.perf_counter()
                    status, body = request(d.sock, "GET", "/metrics")
                    times.append((time.perf_counter() - t) * 1000)
                    assert status == 200
                p50, p99 = percentiles(times)
                print(f"GET /metrics with {n} agents ({len(body)} bytes): p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        finally:
            d.close()

    d = Daemon(args.bin)
    try:
        res = d.batch(agents(50, "w"))
        lat = []
        for r in res:
            got = {}

            def waiter(aid=r["agent_id"]):
                request(d.sock, "GET", f"/v1/agents/{aid}/wait?timeout_s=30", timeout=40)
                got["at"] = time.perf_counter()
            th = threading.Thread(target=waiter)
            th.start()
            time.sleep(0.05)  # the wait is parked in the daemon before the kill
            fd = os.pidfd_open(r["pid"])
            t = time.perf_counter()
            signal.pidfd_send_signal(fd, signal.SIGKILL)
            os.close(fd)
            th.join()
            lat.append((got["at"] - t) * 1000)
        p50, p99 = percentiles(lat)
        print(f"wait answered after the agent's exit: p50 {p50:.2f} ms, p99 {p99:.2f} ms (50 agents)")
    finally:
        d.close()


if __name__ == "__main__":
    main()
