"""A coordinator runs a team of 20 agents through MCP alone.

The session a model acting as a coordinator would have, scripted, through the
official MCP Python SDK against `corral mcp` (which starts its own daemon in a
private state dir): it spawns the team in one call, watches it (a short
listing; the event log read with a cursor), reads a worker's output page by
page with log offsets, restarts one worker, waits for the first and then for
all of the workers to finish, kills one service and stops the others, and
waits for the whole team. Nothing but MCP tool calls touches the agents; the
test itself only opens the workers' gates (files) and checks real OS state in
/proc: every process the team ever had is gone at the end.

The team: `crew.work.1`..`crew.work.16`, workers that write 20,000 lines, report
progress 100 (with `corral progress`, from inside the agent), then wait at
their gate and exit 0 once it opens; `crew.serve.1`..`crew.serve.4`, services
that run until stopped.
"""

from pathlib import Path

import anyio
import pytest

from mcp_support import (
    CORRAL,
    agent_processes,
    alive,
    call_error,
    call_ok,
    poll,
    private_state_dir,
    processes_with_env,
    release,
    session,
    wait_first_releasing,
    wait_gone,
)

WORKERS = [f"crew.work.{i}" for i in range(1, 17)]
SERVICES = [f"crew.serve.{i}" for i in range(1, 5)]
TEAM = WORKERS + SERVICES
LINES = 20_000
OUTPUT = "".join(f"{i}\n" for i in range(1, LINES + 1))

WORKER = (
    f'seq 1 {LINES}; '
    '"$CORRAL_BIN" progress 100 --message written; '
    'while [ ! -e "$GATE/$CORRAL_AGENT_ID" ]; do sleep 0.02; done; '
    'exit "$(cat "$GATE/$CORRAL_AGENT_ID")"'
)
SERVICE = 'echo "serving as $CORRAL_AGENT_ID"; exec sleep 600'


@pytest.fixture
def state_dir():
    with private_state_dir() as state:
        yield state


def test_a_coordinator_runs_a_20_agent_team_through_mcp_alone(state_dir, tmp_path):
    gate = str(tmp_path)
    every_pid: set[int] = set()

    async def main():
        async with session(state_dir) as s:
            tools = {t.name for t in (await s.list_tools()).tools}
            assert {"spawn_agents", "read_events", "wait_agent", "restart_agents", "kill_agent"} <= tools

            # --- Spawn the team in one call. ---------------------------------
            env = {"GATE": gate, "CORRAL_BIN": CORRAL}
            agents = [
                {"agent_id": a, "command": ["sh", "-c", WORKER], "env": env, "stop_timeouts": [2, 1, 1],
                 "labels": {"role": "worker"}}
                for a in WORKERS
            ] + [
                {"agent_id": a, "command": ["sh", "-c", SERVICE], "stop_timeouts": [2, 1, 1],
                 "labels": {"role": "service"}}
                for a in SERVICES
            ]
            spawned = await call_ok(s, "spawn_agents", {"agents": agents})
            assert (spawned["started"], spawned["failed"]) == (20, 0), spawned
            assert [r["agent_id"] for r in spawned["results"]] == TEAM
            pids = {r["agent_id"]: r["pid"] for r in spawned["results"]}
            every_pid.update(pids.values())
            for agent, pid in pids.items():
                assert alive(pid), f"{agent}: pid {pid} is not running"
                assert pid in agent_processes(state_dir, agent)

            # --- Watch: a short listing, and the event log with a cursor. ----
            listed = await call_ok(
                s, "list_agents", {"selector": "crew.*", "fields": ["state", "pid", "progress", "labels"]}
            )
            assert listed["count"] == 20
            assert {a["agent_id"]: a["pid"] for a in listed["agents"]} == pids
            assert all(set(a) == {"agent_id", "state", "pid", "progress", "labels"} for a in listed["agents"])

            since, seen = 0, []

            async def read_events():
                nonlocal since
                page = await call_ok(s, "read_events", {"since": since, "selector": "crew.*", "limit": 25})
                assert page["count"] <= 25
                seen.extend(page["events"])
                since = page["next_since"]
                return not page["more"]

            # Every agent's start is in the log (read to its end, page by page).
            await poll(read_events, 30, "the event log, read to its end")
            started = {e["agent_id"] for e in seen if e["kind"] == "state" and e.get("state") == "running"}
            assert started == set(TEAM)

            async def all_written():
                await read_events()
                progress = await call_ok(
                    s, "list_agents", {"selector": "crew.work.*", "fields": ["progress", "progress_message"]}
                )
                return all(a["progress"] == 100 for a in progress["agents"])

            # The workers report progress 100 once their output is written.
            await poll(all_written, 60, "every worker's progress report")
            reports = {e["agent_id"] for e in seen if e["kind"] == "progress" and e["progress"] == 100}
            assert reports == set(WORKERS)

            # --- Read a worker's output page by page with offsets. -----------
            text, offset = "", 0
            while True:
                page = await call_ok(s, "read_logs", {"agent_id": "crew.work.7", "offset": offset, "run": 1})
                assert page["offset"] == offset and page["next_offset"] >= offset
                text += page["stdout"]
                offset = page["next_offset"]
                if not page["more"]:
                    break
            assert text == OUTPUT, "the pages differ from what the worker wrote"
            assert offset == len(OUTPUT.encode())

            # --- Restart one worker. ----------------------------------------
            restarted = await call_ok(s, "restart_agents", {"agent_id": "crew.work.3"})
            new = restarted["results"][0]
            assert new["started"] and new["run"] == 2, restarted
            assert wait_gone(pids["crew.work.3"], 10), "crew.work.3's first run is still there"
            every_pid.add(new["pid"])
            runs = await call_ok(s, "list_runs", {"agent_id": "crew.work.3"})
            assert [(r["run"], r["persistent_status"]) for r in runs["runs"]] == [(1, "cancelled"), (2, "running")]

            # The new run writes its output again, into its own log.
            async def second_run_written():
                page = await call_ok(s, "read_logs", {"agent_id": "crew.work.3", "stream": "stdout", "tail": 1})
                return page["run"] == 2 and page["stdout"] == f"{LINES}\n"

            await poll(second_run_written, 30, "crew.work.3's second run's output")

            # --- Wait for the first worker to finish, then for all. ---------
            await call_error(
                s, "wait_agent", {"selector": "crew.work.*", "mode": "first", "timeout_s": 0.2}, "timeout"
            )
            first = await wait_first_releasing(s, "crew.work.*", gate, "crew.work.11")
            assert [e["agent_id"] for e in first["ended"]] == ["crew.work.11"], first
            assert first["ended"][0]["persistent_status"] == "completed"
            assert len(first["pending"]) == 15

            for worker in WORKERS:
                if worker != "crew.work.11":
                    release(gate, worker)
            done = await call_ok(s, "wait_agent", {"selector": "crew.work.*", "mode": "all", "timeout_s": 60})
            assert done["pending"] == []
            assert sorted(e["agent_id"] for e in done["ended"]) == sorted(WORKERS)
            assert all(e["persistent_status"] == "completed" and e["exit_code"] == 0 for e in done["ended"]), done
            assert {e["agent_id"]: e["run"] for e in done["ended"]}["crew.work.3"] == 2

            # --- Kill one service, stop the others. -------------------------
            killed = await call_ok(s, "kill_agent", {"agent_id": "crew.serve.4", "force": True})
            assert killed["killed"] and killed["report"]["stage"] == "kill"
            stopped = await call_ok(s, "stop_agents", {"selector": "crew.serve.*", "stop_timeouts": [2, 1, 1]})
            stages = {r["agent_id"]: r["stage"] for r in stopped["reports"]}
            assert stages == {
                "crew.serve.1": "term", "crew.serve.2": "term", "crew.serve.3": "term",
                "crew.serve.4": "already_ended",
            }, stages

            # --- The whole team has ended. -----------------------------------
            team = await call_ok(s, "wait_agent", {"selector": "crew.*", "mode": "all", "timeout_s": 10})
            assert team["pending"] == [] and len(team["ended"]) == 20
            outcome = {e["agent_id"]: e["persistent_status"] for e in team["ended"]}
            assert outcome == {**{w: "completed" for w in WORKERS}, **{v: "cancelled" for v in SERVICES}}
            summary = await call_ok(s, "get_process_summary", {})
            assert (summary["total"], summary["completed"], summary["cancelled"]) == (20, 16, 4)
            assert summary["running"] == 0

            # The event log, read on from the cursor: every agent's run ended.
            await poll(read_events, 10, "the rest of the event log")
            seqs = [e["seq"] for e in seen]
            assert seqs == sorted(set(seqs)), "an event was read twice or out of order"
            ended = {(e["agent_id"], e["run"]) for e in seen if e["kind"] == "state" and e.get("state") == "ended"}
            assert ended == {(a, 1) for a in TEAM} | {("crew.work.3", 2)}

    anyio.run(main)

    # Real OS state: no process of the team is left, by pid or by environment.
    for pid in every_pid:
        assert not alive(pid), f"pid {pid} is still running"
    for agent in TEAM:
        assert agent_processes(state_dir, agent) == [], agent
    assert processes_with_env("CORRAL_SOCKET", str(Path(state_dir) / "corral.sock")) == []
