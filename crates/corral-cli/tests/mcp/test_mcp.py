"""`corral mcp` end to end, driven by the official MCP Python SDK (`mcp` on PyPI).

The SDK starts `corral --state-dir <private dir> mcp` as its stdio server, as an
MCP host would. The server autostarts a daemon in that state dir on its first
tool call; the module fixture stops that daemon at the end and checks that no
agent process is left. Run through scripts/mcp-tests.sh, which builds the
binary and sets CORRAL_BIN.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from mcp import ClientSession, Client, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client

CORRAL = os.environ.get("CORRAL_BIN") or str(
    Path(__file__).resolve().parents[4] / "target" / "debug" / "corral"
)
TOOLS = {
    "spawn_agent",
    "list_agents",
    "get_agent_status",
    "stop_agents",
    "read_logs",
    "wait_agent",
    "get_process_summary",
    "report_progress",
}
AGENT = "mcp.worker"


def alive(pid: int) -> bool:
    """True while /proc has the pid and it is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def processes_with_env(var: str, value: str) -> list[int]:
    """Pids of live processes whose environment has var=value: an agent's whole
    tree carries CORRAL_AGENT_ID and CORRAL_SOCKET, even processes that left its
    process group or session."""
    needle = f"{var}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0") and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


@pytest.fixture(scope="module")
def state_dir():
    """A private state dir; afterwards the daemon the server started is stopped
    and nothing of the test's agents is left."""
    root = tempfile.mkdtemp(prefix="corral-mcp-")
    state = Path(root) / "state"
    state.mkdir(mode=0o700)
    try:
        yield str(state)
    finally:
        try:
            # The server started a daemon on its first tool call; stop it.
            lock = state / "corral.lock"
            text = lock.read_text().strip() if lock.exists() else ""
            assert text.isdigit(), f"no daemon pid in {lock}: {text!r}"
            daemon = int(text)
            assert alive(daemon), f"the daemon (pid {daemon}) is not running"
            os.kill(daemon, signal.SIGTERM)
            if not wait_gone(daemon, 15):
                os.kill(daemon, signal.SIGKILL)
                pytest.fail(f"the daemon (pid {daemon}) did not stop on SIGTERM")
            leftovers = processes_with_env("CORRAL_SOCKET", str(state / "corral.sock"))
            assert leftovers == [], f"agent processes of the test's daemon are still running: {leftovers}"
        finally:
            shutil.rmtree(root, ignore_errors=True)


def server(state_dir: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=CORRAL,
        args=["--state-dir", state_dir, "mcp"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")},
    )


@asynccontextmanager
async def session(state_dir: str):
    async with stdio_client(server(state_dir)) as (read, write):
        async with ClientSession(read, write) as s:
            init = await s.initialize()
            assert init.server_info.name == "corral"
            yield s


def text_of(result) -> str:
    return "\n".join(c.text for c in result.content if c.type == "text")


async def call_ok(s: ClientSession, tool: str, args: dict):
    # The SDK validates structuredContent against the tool's outputSchema here.
    result = await s.call_tool(tool, args)
    assert not result.is_error, f"{tool} failed: {text_of(result)}"
    assert isinstance(result.structured_content, dict), tool
    assert text_of(result).strip(), f"{tool} has no text rendering"
    return result.structured_content


def test_tools_are_listed_with_schemas(state_dir):
    async def main():
        async with session(state_dir) as s:
            listed = await s.list_tools()
            tools = {t.name: t for t in listed.tools}
            assert set(tools) == TOOLS
            for name, tool in tools.items():
                assert tool.input_schema["type"] == "object", name
                assert tool.output_schema and tool.output_schema["type"] == "object", name
                assert len(tool.description or "") > 80, name
            spawn = tools["spawn_agent"].input_schema
            assert set(spawn["required"]) == {"agent_id", "command"}
            for field in ("cwd", "env", "labels", "verify_ms", "restart", "max_runtime_s", "limits", "probes"):
                assert field in spawn["properties"], field
            assert tools["get_agent_status"].input_schema["required"] == ["agent_id"]
            assert "persistent_status" in tools["get_agent_status"].output_schema["properties"]
            assert "state" in tools["get_agent_status"].output_schema["properties"]

    anyio.run(main)


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
            assert pid in processes_with_env("CORRAL_AGENT_ID", AGENT)
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

            # The output comes from the agent's log files; give the shell a moment.
            for _ in range(50):
                logs = await call_ok(s, "read_logs", {"agent_id": AGENT})
                if "hello" in logs["stdout"] and "oops" in logs["stderr"]:
                    break
                await anyio.sleep(0.1)
            assert "hello" in logs["stdout"] and "oops" in logs["stderr"], logs
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
            assert processes_with_env("CORRAL_AGENT_ID", AGENT) == []

            # Stopping again reports that it had already ended.
            again = await call_ok(s, "stop_agents", {"selector": "mcp.*"})
            assert [r["stage"] for r in again["reports"]] == ["already_ended"]

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
