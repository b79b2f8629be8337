"""`corral mcp` end to end, driven by the official MCP Python SDK (`mcp` on PyPI).

The SDK starts `corral --state-dir <private dir> mcp` as its stdio server, as an
MCP host would. The server autostarts a daemon in that state dir on its first
tool call; the module fixture stops that daemon at the end and checks that no
agent process is left. Run through scripts/mcp-tests.sh, which builds the
binary and sets CORRAL_BIN.
"""

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from jsonschema import Draft202012Validator
from mcp import Client, MCPError

from mcp_support import (
    CORRAL,
    GATED_WORKER,
    TOOLS_LIST_BUDGET,
    agent_processes,
    alive,
    call_error,
    call_ok,
    poll,
    private_state_dir,
    processes_with_env,
    release,
    server,
    session,
    text_of,
    tools_list_bytes,
    wait_first_releasing,
    wait_gone,
)

TOOLS = {
    "spawn_agent",
    "spawn_agents",
    "list_agents",
    "get_agent_status",
    "list_runs",
    "read_logs",
    "read_events",
    "wait_agent",
    "stop_agents",
    "restart_agents",
    "kill_agent",
    "get_process_summary",
    "report_progress",
    "pause_agents",
    "team_budget",
}
AGENT = "mcp.worker"


@pytest.fixture(scope="module")
def state_dir():
    with private_state_dir() as state:
        yield state


def test_tools_are_listed_with_schemas(state_dir):
    async def main():
        async with session(state_dir) as s:
            listed = await s.list_tools()
            tools = {t.name: t for t in listed.tools}
            assert set(tools) == TOOLS
            for name, tool in tools.items():
                assert tool.input_schema["type"] == "object", name
                assert tool.output_schema and tool.output_schema["type"] == "object", name
                # Valid JSON Schema (2020-12, MCP's default dialect), both of them.
                Draft202012Validator.check_schema(tool.input_schema)
                Draft202012Validator.check_schema(tool.output_schema)
                assert len(tool.description or "") > 40, name
            spawn = tools["spawn_agent"].input_schema
            assert set(spawn["required"]) == {"agent_id", "command"}
            for field in ("cwd", "env", "labels", "verify_ms", "restart", "max_runtime_s", "limits", "probes"):
                assert field in spawn["properties"], field
            assert tools["get_agent_status"].input_schema["required"] == ["agent_id"]
            assert "persistent_status" in tools["get_agent_status"].output_schema["properties"]
            assert "state" in tools["get_agent_status"].output_schema["properties"]
            assert "next_offset" in tools["read_logs"].output_schema["properties"]
            assert "next_since" in tools["read_events"].output_schema["required"]

    anyio.run(main)


def test_tools_list_fits_the_budget(state_dir):
    """The whole tools/list answer, as it goes over the wire, within 16 KiB."""
    lines = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    ]
    proc = subprocess.run(
        [CORRAL, "--state-dir", state_dir, "mcp"],
        input="".join(json.dumps(line) + "\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    line = next(l for l in proc.stdout.splitlines() if json.loads(l).get("id") == 2)
    result = json.loads(line)["result"]
    size = tools_list_bytes(result)
    print(f"tools/list: {size} bytes ({len(line.encode())} with the JSON-RPC envelope), budget {TOOLS_LIST_BUDGET}")
    for tool in result["tools"]:
        print(f"  {tool['name']:<20} {tools_list_bytes(tool):>5} bytes")
    assert size <= TOOLS_LIST_BUDGET, f"tools/list is {size} bytes"


def test_agent_lifecycle(state_dir):
    async def main():
        async with session(state_dir) as s:
            spawned = await call_ok(
                s,
                "spawn_agent",
                {
                    "agent_id": AGENT,
                    "command": ["sh", "-c", "echo hello; echo oops >&2; sleep 30"],
                    "labels": {"suite": "mcp"},
                    "stop_timeouts": [2, 1, 1],
                },
            )
            assert spawned["agent_id"] == AGENT and spawned["status"] == "running", spawned
            pid = spawned["pid"]
            assert isinstance(pid, int) and alive(pid)
            # The leftover checks below and at the end can see this agent's tree.
            assert pid in agent_processes(state_dir, AGENT)
            assert pid in processes_with_env("CORRAL_SOCKET", str(Path(state_dir) / "corral.sock"))

            status = await call_ok(s, "get_agent_status", {"agent_id": AGENT})
            assert status["persistent_status"] == "running" and status["state"] == "running"
            assert status["stop"] is None
            assert status["health"] == "healthy"
            assert status["pid"] == pid and status["labels"] == {"suite": "mcp"}

            listed = await call_ok(s, "list_agents", {"selector": "mcp.*", "state": "live"})
            assert listed["count"] == 1 and listed["agents"][0]["agent_id"] == AGENT
            none = await call_ok(s, "list_agents", {"state": "completed"})
            assert none["count"] == 0
            # This agent runs on this host, on no cluster node: the node filter leaves it out.
            for node in ("n2", ["n1", "n3"]):
                placed = await call_ok(s, "list_agents", {"selector": "mcp.*", "node": node})
                assert placed["count"] == 0, placed
            short = await call_ok(s, "list_agents", {"node": "n2", "fields": ["state"]})
            assert short["count"] == 0, short

            # The output comes from the agent's log files: poll until it is there.
            async def both_written():
                logs = await call_ok(s, "read_logs", {"agent_id": AGENT})
                return logs if "hello" in logs["stdout"] and "oops" in logs["stderr"] else None

            logs = await poll(both_written, 10, "the agent's output")
            assert logs["run"] == 1 and logs["truncated"] is False
            only_err = await call_ok(s, "read_logs", {"agent_id": AGENT, "stream": "stderr", "tail": 5})
            assert "stdout" not in only_err and "oops" in only_err["stderr"]

            progressed = await call_ok(
                s, "report_progress", {"agent_id": AGENT, "progress": 40, "message": "indexing"}
            )
            assert progressed["progress"] == 40 and progressed["progress_message"] == "indexing"

            summary = await call_ok(s, "get_process_summary", {})
            assert summary["running"] >= 1 and summary["total"] >= 1

            # Still running: a short wait is a tool error and leaves it running.
            timed_out = await s.call_tool("wait_agent", {"agent_id": AGENT, "timeout_s": 0.3})
            assert timed_out.is_error and "timeout" in text_of(timed_out), text_of(timed_out)

            stopped = await call_ok(s, "stop_agents", {"agent_id": AGENT})
            assert stopped["count"] == 1
            report = stopped["reports"][0]
            assert report["agent_id"] == AGENT and report["persistent_status"] == "cancelled"
            assert report["stage"] in ("term", "second_term", "kill"), report

            final = await call_ok(s, "wait_agent", {"agent_id": AGENT, "timeout_s": 10})
            assert final["persistent_status"] == "cancelled" and final["process_alive"] is False
            assert final["state"] == "ended" and final["health"] == "cancelled"
            assert wait_gone(pid, 5), f"agent pid {pid} is still there"
            assert agent_processes(state_dir, AGENT) == []

            # Stopping again reports that it had already ended.
            again = await call_ok(s, "stop_agents", {"selector": "mcp.*"})
            assert [r["stage"] for r in again["reports"]] == ["already_ended"]

    anyio.run(main)


def test_logs_from_an_offset_read_on_without_rereading(state_dir):
    agent = "mcp.logs"

    async def main():
        async with session(state_dir) as s:
            # 168,894 bytes of stdout: more than one page of 64 KiB.
            script = "seq 1 30000; echo end; echo err-line >&2; exec sleep 60"
            spawned = await call_ok(
                s, "spawn_agent", {"agent_id": agent, "command": ["sh", "-c", script], "stop_timeouts": [2, 1, 1]}
            )
            expected = "".join(f"{i}\n" for i in range(1, 30001)) + "end\n"

            text, offset, pages = "", 0, 0
            async def read_on():
                nonlocal text, offset, pages
                page = await call_ok(s, "read_logs", {"agent_id": agent, "offset": offset, "run": 1})
                assert page["offset"] == offset and page["run"] == 1 and "stderr" not in page
                assert len(page["stdout"].encode()) <= 64 * 1024
                assert page["next_offset"] == offset + len(page["stdout"].encode())
                text += page["stdout"]
                offset = page["next_offset"]
                pages += 1
                return text.endswith("end\n") and not page["more"]

            await poll(read_on, 20, "the whole log, page by page")
            assert text == expected, "pages left a gap or read something twice"
            assert pages >= 3 and offset == len(expected)

            # At the end: nothing new, nothing more.
            at_end = await call_ok(s, "read_logs", {"agent_id": agent, "offset": offset})
            assert at_end["stdout"] == "" and at_end["more"] is False and at_end["next_offset"] == offset

            # stderr from an offset; an offset past the end reads from 0 and says so.
            err = await call_ok(s, "read_logs", {"agent_id": agent, "stream": "stderr", "offset": 4})
            assert err["stderr"] == "line\n" and "stdout" not in err
            past = await call_ok(s, "read_logs", {"agent_id": agent, "stream": "stderr", "offset": 10**6})
            assert past["reset"] is True and past["stderr"] == "err-line\n" and past["next_offset"] == 9

            # The tail is still the tail.
            tail = await call_ok(s, "read_logs", {"agent_id": agent, "stream": "stdout", "tail": 2})
            assert tail["stdout"] == "30000\nend\n" and "next_offset" not in tail

            await call_error(s, "read_logs", {"agent_id": agent, "offset": 0, "stream": "both"}, "one stream")
            await call_error(s, "read_logs", {"agent_id": agent, "offset": 0, "tail": 3}, "not both")

            stopped = await call_ok(s, "stop_agents", {"agent_id": agent})
            assert stopped["reports"][0]["persistent_status"] == "cancelled"
            assert wait_gone(spawned["pid"], 5)

    anyio.run(main)


def test_runs_events_kill_and_restart_of_one_agent(state_dir):
    agent = "mcp.one"

    async def main():
        async with session(state_dir) as s:
            first = await call_ok(
                s, "spawn_agent", {"agent_id": agent, "command": ["sleep", "60"], "stop_timeouts": [2, 1, 1]}
            )
            restarted = await call_ok(s, "restart_agents", {"agent_id": agent})
            assert (restarted["started"], restarted["failed"]) == (1, 0)
            result = restarted["results"][0]
            assert result["agent_id"] == agent and result["run"] == 2 and result["status"] == "running"
            assert result["pid"] != first["pid"] and alive(result["pid"])
            assert wait_gone(first["pid"], 5), "the first run's process is still there"

            runs = await call_ok(s, "list_runs", {"agent_id": agent})
            assert runs["agent_id"] == agent and runs["count"] == 2
            assert [r["run"] for r in runs["runs"]] == [1, 2]
            assert runs["runs"][0]["persistent_status"] == "cancelled"
            assert runs["runs"][1]["persistent_status"] == "running"

            killed = await call_ok(s, "kill_agent", {"agent_id": agent, "force": True})
            assert killed["killed"] is True and killed["report"]["stage"] == "kill"
            assert killed["report"]["persistent_status"] == "cancelled"
            assert wait_gone(result["pid"], 5)
            again = await call_ok(s, "kill_agent", {"agent_id": agent})
            assert again["killed"] is False and again["report"]["stage"] == "already_ended"

            # Its events, from the start, in one read and page by page: the same.
            whole = await call_ok(s, "read_events", {"selector": agent, "limit": 1000})
            assert whole["more"] is False and whole["count"] == len(whole["events"]) > 0
            seqs = [e["seq"] for e in whole["events"]]
            assert seqs == sorted(set(seqs)) and whole["next_since"] == seqs[-1]
            assert {e["agent_id"] for e in whole["events"]} == {agent}
            kinds = {e["kind"] for e in whole["events"]}
            assert {"state", "stop_stage"} <= kinds, kinds
            ends = [e for e in whole["events"] if e["kind"] == "state" and e.get("state") == "ended"]
            assert [e["run"] for e in ends] == [1, 2], ends

            paged, since = [], 0
            while True:
                page = await call_ok(s, "read_events", {"selector": agent, "since": since, "limit": 2})
                assert page["count"] <= 2
                paged += page["events"]
                since = page["next_since"]
                if not page["more"]:
                    break
            assert paged == whole["events"]
            # Nothing after the last cursor.
            after = await call_ok(s, "read_events", {"selector": agent, "since": since})
            assert after["count"] == 0 and after["next_since"] == since and after["more"] is False

    anyio.run(main)


def _utime(pid):
    """User CPU ticks of pid, from /proc (field 14 of stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[11])


def test_a_team_paused_and_resumed(state_dir):
    async def main():
        async with session(state_dir) as s:
            busy = ["sh", "-c", "while :; do :; done"]
            pids = []
            for n in (1, 2):
                r = await call_ok(s, "spawn_agent", {"agent_id": f"mcp.frozen.{n}", "command": busy})
                pids.append(r["pid"])
            paused = await call_ok(s, "pause_agents", {"selector": "mcp.frozen.*"})
            assert paused["count"] == 2
            assert {r["outcome"] for r in paused["reports"]} == {"paused"}, paused
            before = [_utime(p) for p in pids]
            # A window in which a running busy loop would use CPU.
            await anyio.sleep(0.3)
            assert [_utime(p) for p in pids] == before, "a paused agent used CPU"
            status = await call_ok(s, "get_agent_status", {"agent_id": "mcp.frozen.1"})
            assert status["state"] == "paused"

            resumed = await call_ok(s, "pause_agents", {"selector": "mcp.frozen.*", "resume": True})
            assert {r["outcome"] for r in resumed["reports"]} == {"resumed"}, resumed
            async def running_again():
                return all(_utime(p) > b for p, b in zip(pids, before))

            await poll(running_again, 10, "CPU use after the resume")
            await call_error(s, "pause_agents", {"agent_id": "mcp.frozen.1", "all": True}, "exactly one of agent_id")
            await call_ok(s, "stop_agents", {"selector": "mcp.frozen.*", "force": True})
            for p in pids:
                assert wait_gone(p, 5)

    anyio.run(main)


def test_a_team_spawned_waited_for_and_restarted_by_selector(state_dir, tmp_path):
    gate = str(tmp_path)
    team = "mcp.team"

    async def main():
        async with session(state_dir) as s:
            request = {"command": ["sh", "-c", GATED_WORKER], "env": {"GATE": gate}, "stop_timeouts": [2, 1, 1]}
            spawned = await call_ok(s, "spawn_agents", {"count": 4, "prefix": team, "request": request})
            assert (spawned["started"], spawned["failed"]) == (4, 0), spawned
            ids = [r["agent_id"] for r in spawned["results"]]
            assert ids == [f"{team}.{i}" for i in range(1, 5)]
            pids = {r["agent_id"]: r["pid"] for r in spawned["results"]}
            assert all(alive(p) for p in pids.values())

            # The same ids again: each refused on its own, all of them, so a tool error.
            again = await s.call_tool("spawn_agents", {"count": 4, "prefix": team, "request": request})
            assert again.is_error and "conflict" in text_of(again), text_of(again)

            short = await call_ok(s, "list_agents", {"selector": f"{team}.*", "fields": ["state", "pid"]})
            assert short["count"] == 4
            assert all(set(a) == {"agent_id", "state", "pid"} for a in short["agents"]), short
            live = await call_ok(s, "list_agents", {"selector": f"{team}.*", "state": "live", "fields": ["pid"]})
            assert live["count"] == 4 and all(set(a) == {"agent_id", "pid"} for a in live["agents"])

            # Nobody has ended: a short wait for the first is a timeout, and says who is pending.
            timed_out = await call_error(
                s, "wait_agent", {"selector": f"{team}.*", "mode": "first", "timeout_s": 0.3}, "timeout"
            )
            assert sorted(timed_out.structured_content["pending"]) == ids

            first = await wait_first_releasing(s, f"{team}.*", gate, f"{team}.2", 3)
            assert [e["agent_id"] for e in first["ended"]] == [f"{team}.2"], first
            assert first["ended"][0]["persistent_status"] == "failed" and first["ended"][0]["exit_code"] == 3
            assert sorted(first["pending"]) == [i for i in ids if i != f"{team}.2"]

            # Restart the whole team (the ended one too): each a new run.
            (Path(gate) / f"{team}.2").unlink()
            restarted = await call_ok(s, "restart_agents", {"selector": f"{team}.*", "stop_timeouts": [2, 1, 1]})
            assert restarted["started"] == 4 and [r["run"] for r in restarted["results"]] == [2] * 4
            for old in pids.values():
                assert wait_gone(old, 5), f"pid {old} of a first run is still there"

            for i in ids:
                release(gate, i, 0)
            done = await call_ok(s, "wait_agent", {"selector": f"{team}.*", "mode": "all", "timeout_s": 30})
            assert done["pending"] == [] and sorted(e["agent_id"] for e in done["ended"]) == ids
            assert all(e["persistent_status"] == "completed" and e["run"] == 2 for e in done["ended"]), done
            for i in ids:
                assert agent_processes(state_dir, i) == []

            # A batch entry that fails fails alone.
            mixed = await call_ok(
                s,
                "spawn_agents",
                {"agents": [
                    {"agent_id": "mcp.mixed.ok", "command": ["sleep", "60"], "stop_timeouts": [2, 1, 1]},
                    {"agent_id": "mcp.mixed.bad", "command": ["/nonexistent/program"]},
                ]},
            )
            assert (mixed["started"], mixed["failed"]) == (1, 1), mixed
            bad = mixed["results"][1]
            assert bad["started"] is False and "/nonexistent/program" in bad["error"]
            stopped = await call_ok(s, "stop_agents", {"selector": "mcp.mixed.*"})
            assert {r["agent_id"]: r["stage"] for r in stopped["reports"]}["mcp.mixed.ok"] in ("term", "second_term", "kill")
            assert wait_gone(mixed["results"][0]["pid"], 5)

    anyio.run(main)


def test_a_team_budget_is_set_read_and_caps_spawns(state_dir):
    team = "mcp.capped"

    async def main():
        async with session(state_dir) as s:
            budget = await call_ok(s, "team_budget", {"team": team, "max_agents": 1, "memory_mb": 4096})
            assert budget["budget"] == {"max_agents": 1, "memory_mb": 4096.0}, budget
            assert budget["enforcement"] == "sampler" and budget["usage"]["agents"] == 0
            one = await call_ok(
                s, "spawn_agent", {"agent_id": f"{team}.1", "command": ["sleep", "300"], "stop_timeouts": [2, 1, 1]}
            )
            assert alive(one["pid"])
            refused = await s.call_tool("spawn_agent", {"agent_id": f"{team}.2", "command": ["sleep", "300"]})
            assert refused.is_error and "budget of 1 live agent" in text_of(refused), text_of(refused)
            assert agent_processes(state_dir, f"{team}.2") == []
            read = await call_ok(s, "team_budget", {"team": team})
            assert read["usage"]["agents"] == 1 and [m["agent_id"] for m in read["members"]] == [f"{team}.1"]
            await call_ok(s, "stop_agents", {"agent_id": f"{team}.1"})
            assert not alive(one["pid"])

    anyio.run(main)


def test_waiting_on_more_agents_than_are_waited_on_at_once(state_dir, tmp_path):
    """wait_agent waits on 32 agents at a time; the first to end may be any of 40."""
    gate = str(tmp_path)
    ids = [f"mcp.many.{i}" for i in range(1, 41)]

    async def main():
        async with session(state_dir) as s:
            request = {"command": ["sh", "-c", GATED_WORKER], "env": {"GATE": gate}, "stop_timeouts": [2, 1, 1]}
            spawned = await call_ok(s, "spawn_agents", {"count": 40, "prefix": "mcp.many", "request": request})
            assert spawned["started"] == 40, spawned
            # mcp.many.7 sorts after the first 32 ids (mcp.many.1, .10 to .19, .2, ...).
            first = await wait_first_releasing(s, "mcp.many.*", gate, "mcp.many.7")
            assert "mcp.many.7" in [e["agent_id"] for e in first["ended"]], first
            for i in ids:
                if i != "mcp.many.7":
                    release(gate, i)
            done = await call_ok(s, "wait_agent", {"selector": "mcp.many.*", "timeout_s": 60})
            assert done["pending"] == [] and len(done["ended"]) == 40
            assert all(e["persistent_status"] == "completed" for e in done["ended"])
            for r in spawned["results"]:
                assert wait_gone(r["pid"], 5), r

    anyio.run(main)


def test_errors_are_tool_errors(state_dir):
    async def main():
        async with session(state_dir) as s:
            missing = await s.call_tool("get_agent_status", {"agent_id": "no.such.agent"})
            assert missing.is_error and "not found" in text_of(missing), text_of(missing)

            bad_id = await s.call_tool("get_agent_status", {"agent_id": "../etc"})
            assert bad_id.is_error and "../etc" in text_of(bad_id), text_of(bad_id)

            no_command = await s.call_tool("spawn_agent", {"agent_id": "x"})
            assert no_command.is_error and "command" in text_of(no_command), text_of(no_command)

            cannot_start = await s.call_tool(
                "spawn_agent", {"agent_id": "mcp.broken", "command": ["/nonexistent/program"]}
            )
            assert cannot_start.is_error, text_of(cannot_start)
            assert "/nonexistent/program" in text_of(cannot_start), text_of(cannot_start)

            failed = await s.call_tool(
                "spawn_agent", {"agent_id": "mcp.fails", "command": ["sh", "-c", "echo boom >&2; exit 3"]}
            )
            assert failed.is_error and "boom" in text_of(failed), text_of(failed)
            assert failed.structured_content["exit_code"] == 3

            no_target = await s.call_tool("stop_agents", {})
            assert no_target.is_error and "exactly one" in text_of(no_target), text_of(no_target)

            glob = await s.call_tool("list_agents", {"selector": "*"})
            assert glob.is_error and "selector" in text_of(glob), text_of(glob)

            bad_progress = await s.call_tool("report_progress", {"agent_id": "mcp.fails", "progress": 101})
            assert bad_progress.is_error and "0" in text_of(bad_progress), text_of(bad_progress)

            await call_error(s, "spawn_agents", {}, "either agents")
            await call_error(
                s, "spawn_agents", {"count": 2, "prefix": "x", "request": {"agent_id": "y", "command": ["true"]}},
                "must not have an agent_id",
            )
            await call_error(s, "spawn_agents", {"agents": [{"agent_id": "x"}]}, "agents[0]", "command")
            await call_error(s, "spawn_agent", {"agent_id": "x", "command": ["true"], "bogus": 1}, "bogus")
            await call_error(s, "read_logs", {"agent_id": "no.such.agent"}, "not found")
            await call_error(s, "wait_agent", {}, "exactly one of agent_id or selector")
            await call_error(s, "wait_agent", {"selector": "nobody.*"}, "no agent matches")
            await call_error(s, "read_events", {"selector": "*"}, "selector")
            await call_error(s, "read_events", {"limit": 0}, "limit")
            await call_error(s, "kill_agent", {"agent_id": "no.such.agent"}, "not found")
            await call_error(s, "list_runs", {"agent_id": "no.such.agent"}, "not found")
            await call_error(s, "restart_agents", {}, "exactly one")
            await call_error(s, "list_agents", {"fields": ["nope"]}, "nope")

            with pytest.raises(MCPError):
                await s.call_tool("no_such_tool", {})

            # The server is still serving after all of that.
            assert (await s.call_tool("get_process_summary", {})).is_error is False

    anyio.run(main)


def test_modern_protocol_through_discover(state_dir):
    """The SDK's default `Client` negotiates the newest protocol (server/discover)."""

    async def main():
        async with Client(server(state_dir)) as client:
            assert client.protocol_version == "2026-07-28"
            tools = await client.list_tools()
            assert {t.name for t in tools.tools} == TOOLS
            result = await client.call_tool("list_agents", {"selector": "mcp.*"})
            assert not result.is_error, text_of(result)
            assert result.structured_content["count"] >= 1

    anyio.run(main)


@pytest.mark.parametrize("version", ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"])
def test_older_protocol_versions_are_accepted(state_dir, version):
    """Raw JSON-RPC lines, as an older host would send them."""
    lines = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": version,
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "ping"},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
    ]
    proc = subprocess.run(
        [CORRAL, "--state-dir", state_dir, "mcp"],
        input="".join(json.dumps(line) + "\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    answers = {m["id"]: m for m in map(json.loads, proc.stdout.splitlines())}
    assert answers[1]["result"]["protocolVersion"] == version
    assert answers[2]["result"] == {}
    assert {t["name"] for t in answers[3]["result"]["tools"]} == TOOLS


def test_a_line_that_is_not_json_gets_a_parse_error_and_the_session_goes_on(state_dir):
    """JSON-RPC 2.0: a line that does not parse is answered -32700 with id null."""
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        },
    }
    text = (
        json.dumps(init)
        + "\n{not json at all\n"
        + json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
        + "\n"
        + json.dumps({"jsonrpc": "2.0", "id": 2, "method": "ping"})
        + "\n"
    )
    proc = subprocess.run(
        [CORRAL, "--state-dir", state_dir, "mcp"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    errors = [a for a in answers if "error" in a]
    assert len(errors) == 1, answers
    assert errors[0]["error"]["code"] == -32700 and errors[0]["id"] is None, errors
    by_id = {a["id"]: a for a in answers if a.get("id") is not None}
    assert by_id[1]["result"]["protocolVersion"] == "2025-06-18"
    assert by_id[2]["result"] == {}, "the session went on after the bad line"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
