"""What the MCP tests share: the binary, a private state dir whose daemon is
stopped afterwards, a session through the official MCP Python SDK, and checks
of real OS state in /proc.

No test sleeps to synchronise: it polls with a deadline (`poll`).
"""

import json
import os
import shutil
import signal
import tempfile
import time
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

CORRAL = os.environ.get("CORRAL_BIN") or str(
    Path(__file__).resolve().parents[4] / "target" / "debug" / "corral"
)

# The tools/list answer, serialized, must fit in this many bytes.
TOOLS_LIST_BUDGET = 16 * 1024


def alive(pid: int) -> bool:
    """True while /proc has the pid and it is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def processes_with_env(var: str, value: str, **also: str) -> list[int]:
    """Pids of live processes whose environment has var=value (and each of
    `also`'s pairs): an agent's whole tree carries CORRAL_AGENT_ID and
    CORRAL_SOCKET, even processes that left its process group or session."""
    needles = {f"{k}={v}".encode() for k, v in [(var, value), *also.items()]}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = set((entry / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if needles <= env and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def agent_processes(state_dir: str, agent_id: str) -> list[int]:
    """Pids of live processes of this agent of this state dir's daemon (an id
    alone could be another daemon's agent: tests may run side by side)."""
    return processes_with_env(
        "CORRAL_AGENT_ID", agent_id, CORRAL_SOCKET=str(Path(state_dir) / "corral.sock")
    )


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


async def poll(check, timeout: float, what: str, every: float = 0.05):
    """Calls `check` (async) until it returns something truthy; fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await anyio.sleep(every)


@contextmanager
def private_state_dir():
    """A private state dir; afterwards the daemon the server started is stopped
    and nothing of the test's agents is left."""
    root = tempfile.mkdtemp(prefix="corral-mcp-")
    state = Path(root) / "state"
    state.mkdir(mode=0o700)
    try:
        yield str(state)
    finally:
        try:
            # The server started a daemon on its first tool call (none when
            # only tools were listed); stop it.
            lock = state / "corral.lock"
            text = lock.read_text().strip() if lock.exists() else ""
            if text:
                assert text.isdigit(), f"no daemon pid in {lock}: {text!r}"
                daemon = int(text)
                assert alive(daemon), f"the daemon (pid {daemon}) is not running"
                os.kill(daemon, signal.SIGTERM)
                if not wait_gone(daemon, 15):
                    os.kill(daemon, signal.SIGKILL)
                    raise AssertionError(f"the daemon (pid {daemon}) did not stop on SIGTERM")
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


async def call_error(s: ClientSession, tool: str, args: dict, *words: str):
    """A call that must be a tool error whose text has every one of `words`."""
    result = await s.call_tool(tool, args)
    text = text_of(result)
    assert result.is_error, f"{tool} {json.dumps(args)} should have failed: {text}"
    for word in words:
        assert word in text, f"{tool}: {word!r} not in {text!r}"
    return result


def tools_list_bytes(result: dict) -> int:
    """The size of a tools/list result as a server writes it (compact JSON, UTF-8)."""
    return len(json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode())


# A worker that says it started, then waits at its gate (a file named after
# it in $GATE) and exits with the code written in the file. The worker polls
# for its gate; the test never sleeps: it releases a worker and waits for it
# through MCP.
GATED_WORKER = (
    'echo "start $CORRAL_AGENT_ID"; '
    'while [ ! -e "$GATE/$CORRAL_AGENT_ID" ]; do sleep 0.02; done; '
    'echo "released $CORRAL_AGENT_ID"; '
    'exit "$(cat "$GATE/$CORRAL_AGENT_ID")"'
)


def release(gate: str, agent_id: str, code: int = 0) -> None:
    """Opens a gated worker's gate: it exits with `code` (written whole, then renamed in)."""
    tmp = Path(gate) / f".{agent_id}.tmp"
    tmp.write_text(str(code))
    tmp.rename(Path(gate) / agent_id)


async def wait_first_releasing(s: ClientSession, selector: str, gate: str, agent_id: str, code: int = 0):
    """wait_agent on `selector` for the first to end, opening `agent_id`'s gate
    once the wait has begun: the server's first progress notification comes
    when it knows which agents it waits for, so the agent was running then."""
    released = []

    async def on_progress(progress, total, message):
        if not released:
            assert message and selector in message, message
            release(gate, agent_id, code)
            released.append(message)

    result = await s.call_tool(
        "wait_agent", {"selector": selector, "mode": "first", "timeout_s": 30}, progress_callback=on_progress
    )
    assert released, "no progress notification came"
    assert not result.is_error, f"wait_agent failed: {text_of(result)}"
    return result.structured_content
