"""The client against a fake daemon that misbehaves: an endless answer, an
answer that drips, a silent long poll, answers that are not HTTP, not JSON or
not the expected shape. Each ends in the client's own error class, within its
deadline, with memory bounded.

Each call runs in a child Python process, watched from here: its peak memory
is the kernel's (``ru_maxrss``), and a child that grows past 1 GiB or runs
past 20 s is killed and the test fails (rather than the test run hanging or
running out of memory).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any, Dict, Iterator

import pytest
from misbehaving import Misbehaving

import corral_client
from corral_client import BadAnswer, Client, CorralError, DeadlineExceeded

RSS_GUARD_KIB = 1 << 20
TIME_GUARD_S = 20.0

# Runs one call of a client (sync or async) on the socket in argv[1]; prints what happened as JSON.
# An async call is awaited; a stream (events, follow_logs) is read to its end.
CHILD = textwrap.dedent(
    """
    import asyncio, json, resource, sys, time
    import corral_client
    socket, timeout, call, kind = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]

    async def run_async():
        c = corral_client.AsyncClient(socket=socket, timeout=timeout)
        value = eval(call)
        if isinstance(value, corral_client.AsyncStream):
            return [x async for x in value]
        return await value

    def run():
        if kind == "async":
            return asyncio.run(run_async())
        c = corral_client.Client(socket=socket, timeout=timeout)
        value = eval(call)
        return list(value) if call.startswith(("c.events", "c.follow_logs")) else value

    start = time.monotonic()
    out = {}
    try:
        out["value"] = repr(run())[:200]
    except BaseException as e:
        out["error"] = type(e).__name__
        out["mro"] = [k.__name__ for k in type(e).__mro__]
        out["message"] = str(e)
        out["code"] = getattr(e, "code", None)
    out["took"] = time.monotonic() - start
    out["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(out))
    """
)


def vm_rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_client(socket: str, timeout: float, call: str, kind: str = "sync") -> Dict[str, Any]:
    """``call`` (an expression on ``c``, the client: a ``Client``, or an
    ``AsyncClient`` for ``kind="async"``) in a child process, guarded."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, socket, str(timeout), call, kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    start = time.monotonic()
    tripped = None
    try:
        while proc.poll() is None:
            rss = vm_rss_kib(proc.pid)
            if rss > RSS_GUARD_KIB:
                tripped = f"grew to {rss >> 10} MiB"
            elif time.monotonic() - start > TIME_GUARD_S:
                tripped = f"was still running after {TIME_GUARD_S:g} s"
            if tripped:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if tripped:
        pytest.fail(f"the client calling {call} {tripped}; killed it. stderr: {err.decode()[-500:]}")
    assert proc.returncode == 0, err.decode()
    result: Dict[str, Any] = json.loads(out)
    return result


@pytest.fixture
def sock_dir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="corral-hostile-") as d:
        os.chmod(d, 0o700)
        yield d


def serve(sock_dir: str, mode: str, **kw: Any) -> Misbehaving:
    return Misbehaving(os.path.join(sock_dir, "corral.sock"), mode, **kw)


#: Each test runs with the blocking client and with the asyncio one.
both = pytest.mark.parametrize("kind", ["sync", "async"])


@both
def test_an_endless_answer_is_cut_at_the_limit_with_memory_bounded(sock_dir: str, kind: str) -> None:
    with serve(sock_dir, "endless") as server:
        r = run_client(server.path, 30, "c.list_agents()", kind)
    assert r.get("error") == "BadAnswer", r
    assert "the answer to GET /v1/agents" in r["message"] and "larger than 64 MiB" in r["message"], r
    assert r["code"] == "bad_answer"
    # 64 MiB of answer, plus the interpreter.
    assert r["maxrss_kib"] < 200 << 10, f"peak RSS {r['maxrss_kib'] >> 10} MiB"


@both
def test_a_dripping_answer_ends_at_the_deadline(sock_dir: str, kind: str) -> None:
    with serve(sock_dir, "drip", interval=0.1) as server:
        r = run_client(server.path, 1.0, "c.list_agents()", kind)
    assert r.get("error") == "DeadlineExceeded", r
    assert "TimeoutError" in r["mro"] and "Unreachable" in r["mro"], r
    assert "no complete answer to GET /v1/agents" in r["message"] and "within 1 s" in r["message"], r
    # A byte came every 100 ms all along: only an overall deadline ends this.
    assert 1.0 <= r["took"] < 3.0, r["took"]


@both
def test_a_wait_may_take_its_own_timeout_and_no_more(sock_dir: str, kind: str) -> None:
    with serve(sock_dir, "silent") as server:
        r = run_client(server.path, 0.5, "c.wait('a', timeout_s=1)", kind)
    assert r.get("error") == "DeadlineExceeded", r
    assert "within 1.5 s" in r["message"], r
    assert 1.5 <= r["took"] < 3.5, r["took"]


@both
def test_an_answer_that_is_not_json_is_a_bad_answer(sock_dir: str, kind: str) -> None:
    with serve(sock_dir, "notjson") as server:
        r = run_client(server.path, 5, "c.list_agents()", kind)
    assert r.get("error") == "BadAnswer", r
    assert "GET /v1/agents: expected a JSON object, got 39 bytes beginning '<html>corral?" in r["message"], r


@both
def test_json_of_the_wrong_shape_is_a_bad_answer(sock_dir: str, kind: str) -> None:
    with serve(sock_dir, "wrongshape") as server:
        r = run_client(server.path, 5, "c.list_agents()", kind)
    assert r.get("error") == "BadAnswer", r
    assert r["message"] == "GET /v1/agents: expected a JSON object, got a JSON list", r


@both
def test_an_answer_that_is_not_http_is_a_bad_answer(sock_dir: str, kind: str) -> None:
    with serve(sock_dir, "badstatus") as server:
        r = run_client(server.path, 5, "c.summary()", kind)
    assert r.get("error") == "BadAnswer", r
    assert "GET /v1/summary: expected an HTTP/1.1 answer" in r["message"], r
    assert "\n" not in r["message"] and "\r" not in r["message"], r


@both
def test_an_endless_event_is_cut_at_the_event_limit(sock_dir: str, kind: str) -> None:
    with serve(sock_dir, "endlessevent") as server:
        r = run_client(server.path, 5, "c.events(since=0, follow=True)", kind)
    assert r.get("error") == "BadAnswer", r
    assert "an event of GET /v1/events" in r["message"] and "larger than 4 MiB" in r["message"], r
    assert r["maxrss_kib"] < 200 << 10, f"peak RSS {r['maxrss_kib'] >> 10} MiB"


def test_a_followed_log_outlasts_the_deadline(sock_dir: str) -> None:
    # Streams are exempt once they have begun: the log of a slow agent is read
    # to its end, well past the client's timeout.
    with serve(sock_dir, "slowstream", interval=0.1, stream_bytes=15) as server:
        c = Client(socket=server.path, timeout=0.5)
        start = time.monotonic()
        text = "".join(c.follow_logs("a"))
        took = time.monotonic() - start
    assert text == "x" * 15
    assert took > 1.0, took


def test_a_followed_log_outlasts_the_deadline_async(sock_dir: str) -> None:
    async def follow(path: str) -> str:
        async with corral_client.AsyncClient(socket=path, timeout=0.5) as c:
            return "".join([piece async for piece in c.follow_logs("a")])

    with serve(sock_dir, "slowstream", interval=0.1, stream_bytes=15) as server:
        start = time.monotonic()
        text = asyncio.run(follow(server.path))
        took = time.monotonic() - start
    assert text == "x" * 15
    assert took > 1.0, took


def test_a_kept_connection_closed_under_a_request_is_retried_once_if_idempotent(sock_dir: str) -> None:
    with serve(sock_dir, "dropsecond") as server:
        c = Client(socket=server.path, timeout=5)
        assert c.health().pid == 1
        assert c.health().pid == 1  # its kept connection is dropped: sent again on a new one
        assert server.requests == [
            "GET /v1/health HTTP/1.1",
            "GET /v1/health HTTP/1.1 (dropped)",
            "GET /v1/health HTTP/1.1",
        ]
        del server.requests[:]
        with Client(socket=server.path, timeout=5) as fresh:
            assert fresh.reap() == []
            with pytest.raises(corral_client.Unreachable, match="without sending a response"):
                fresh.reap()  # a POST is not sent twice
        assert server.requests == ["POST /v1/reap HTTP/1.1", "POST /v1/reap HTTP/1.1 (dropped)"]
        del server.requests[:]

        async def twice() -> None:
            async with corral_client.AsyncClient(socket=server.path, timeout=5) as a:
                assert (await a.health()).pid == 1
                assert (await a.health()).pid == 1

        asyncio.run(twice())
        assert server.requests == [
            "GET /v1/health HTTP/1.1",
            "GET /v1/health HTTP/1.1 (dropped)",
            "GET /v1/health HTTP/1.1",
        ]


def test_the_error_classes_are_the_clients_own() -> None:
    assert issubclass(BadAnswer, CorralError)
    assert issubclass(DeadlineExceeded, CorralError) and issubclass(DeadlineExceeded, TimeoutError)
