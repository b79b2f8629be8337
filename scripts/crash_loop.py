#!/usr/bin/env python3
"""Crash loop: spawn a batch, SIGKILL the daemon at a random moment, restart, check.

Usage: scripts/crash_loop.py [--corral target/release/corral] [--cycles 20] [--batch 30]

Each cycle starts a daemon, spawns a batch of `sleep` agents concurrently over
the Unix socket, kills the daemon with SIGKILL at a random moment while the
spawns are in flight, then starts a new daemon and compares its record with
what /proc holds:
  lost     a spawn the daemon acknowledged (HTTP 201) that the record lacks,
           or a running record whose process is not there
  leaked   a process started under this state dir (found by its CORRAL_RUN_ID
           environment) that is alive but not on record as running
  stuck    a record left in `spawning`
Agents are kept across cycles (each restart must re-adopt all of them); at the
end everything is stopped and reaped. The script is a child subreaper, so the
agents orphaned by each killed daemon are its children and it reaps them.
"""
import argparse, json, os, random, signal, socket, subprocess, sys, tempfile, threading, time

from corral_harness import become_subreaper, reap_leftovers, request


def start_daemon(corral, state):
    d = subprocess.Popen([corral, "--state-dir", state, "daemon"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    sock = os.path.join(state, "corral.sock")
    deadline = time.time() + 10
    while True:
        try:
            if request(sock, "GET", "/v1/health")[0] == 200:
                return d, sock
        except OSError:
            pass
        assert time.time() < deadline, "daemon did not start"
        time.sleep(0.005)


def ours(state_tag):
    """Live (non-zombie) processes whose environment names a run of this state dir."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = open(f"/proc/{entry}/environ", "rb").read()
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        if stat[stat.rfind(")") + 2] == "Z":
            continue
        fields = dict(kv.split(b"=", 1) for kv in env.split(b"\0") if b"=" in kv)
        if fields.get(b"CORRAL_SOCKET", b"").startswith(state_tag) and b"CORRAL_RUN_ID" in fields:
            # The agent itself leads its session; its children would share it.
            session = stat[stat.rfind(")") + 2:].split()[3]
            if session == entry:
                found[int(entry)] = fields[b"CORRAL_AGENT_ID"].decode()
    return found


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corral", default="target/release/corral")
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--batch", type=int, default=30)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    corral = os.path.abspath(args.corral)
    become_subreaper()
    totals = {"acknowledged": 0, "lost": 0, "leaked": 0, "stuck": 0, "adopted_unrecorded": 0}
    with tempfile.TemporaryDirectory(prefix="corral-crash-") as tmp:
        state = os.path.join(tmp, "state")
        tag = state.encode()
        acknowledged = set()
        daemon = None
        try:
            for cycle in range(args.cycles):
                daemon, sock = start_daemon(corral, state)
                lock = threading.Lock()

                def spawn(i, cycle=cycle, sock=sock):
                    body = {"agent_id": f"c{cycle}.{i}", "command": ["sleep", "3600"], "verify_ms": 0}
                    try:
                        code, _ = request(sock, "POST", "/v1/agents", body)
                        if code == 201:
                            with lock:
                                acknowledged.add(body["agent_id"])
                    except (OSError, IndexError):
                        pass  # the daemon died mid-request: not acknowledged

                threads = [threading.Thread(target=spawn, args=(i,)) for i in range(args.batch)]
                for t in threads:
                    t.start()
                time.sleep(rng.uniform(0, 0.08))  # the crash lands at a random moment
                daemon.send_signal(signal.SIGKILL)
                daemon.wait()
                for t in threads:
                    t.join()
                # Restart and compare the record with /proc.
                daemon, sock = start_daemon(corral, state)
                code, body = request(sock, "GET", "/v1/agents")
                record = json.loads(body)
                running = {s["pid"]: a for a, s in record.items() if s["persistent_status"] == "running"}
                stuck = [a for a, s in record.items() if s["persistent_status"] == "spawning"]
                lost = [a for a in acknowledged if a not in record]
                lost += [a for p, a in running.items() if not os.path.exists(f"/proc/{p}")]
                leaked = [(p, a) for p, a in ours(tag).items() if p not in running]
                with open(os.path.join(state, "daemon.log")) as log:
                    totals["adopted_unrecorded"] = log.read().count("found the process of an unrecorded spawn")
                totals["lost"] += len(lost)
                totals["leaked"] += len(leaked)
                totals["stuck"] += len(stuck)
                print(f"cycle {cycle + 1}: {len(acknowledged)} acknowledged so far, {len(running)} running on record, "
                      f"lost {len(lost)}, leaked {len(leaked)}, stuck {len(stuck)}", flush=True)
                daemon.send_signal(signal.SIGTERM)
                daemon.wait()
                daemon = None
            totals["acknowledged"] = len(acknowledged)
        finally:
            if daemon is None:
                daemon, sock = start_daemon(corral, state)
            request(sock, "POST", "/v1/stop", {"all": True, "force": True}, timeout=60)
            daemon.send_signal(signal.SIGTERM)
            daemon.wait()
            reap_leftovers()
    print(f"{args.cycles} cycles: {totals['acknowledged']} spawns acknowledged; lost {totals['lost']}, "
          f"leaked {totals['leaked']}, stuck in spawning {totals['stuck']}; "
          f"unrecorded spawns found and adopted on restart: {totals['adopted_unrecorded']}")
    return 1 if totals["lost"] or totals["leaked"] or totals["stuck"] else 0


if __name__ == "__main__":
    sys.exit(main())
