"""Helpers for testing against a real corral daemon: polling with deadlines,
/proc inspection, and a private state dir with its daemon's clean shutdown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, List, Optional, TypeVar

from corral_client import Client, Unreachable

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[3]


def corral_bin() -> str:
    """``$CORRAL_BIN``, else the repository's debug build."""
    path = os.environ.get("CORRAL_BIN") or str(REPO / "target" / "debug" / "corral")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"no corral binary at {path}: run `cargo build` or set CORRAL_BIN")
    return os.path.abspath(path)


def poll(check: Callable[[], T], timeout: float = 10.0, what: str = "the condition") -> T:
    """``check()``'s first truthy value, tried until ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.01)


def within(timeout: float, fn: Callable[[], T]) -> T:
    """``fn()``, failing the test if it takes longer than ``timeout`` seconds
    (for calls that block until the daemon ends a stream)."""
    result: List[Any] = []

    def run() -> None:
        try:
            result.append(("ok", fn()))
        except BaseException as e:  # handed to the test's thread
            result.append(("err", e))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        raise AssertionError(f"did not finish within {timeout} s")
    kind, value = result[0]
    if kind == "err":
        raise value
    return value  # type: ignore[no-any-return]


def alive(pid: int) -> bool:
    """The process exists and has not exited. An exited one counts as gone once
    every thread has exited (a zombie leader's other threads may still hold its
    files and sockets); one of ours is then reaped."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return False
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue  # this thread has just exited
        if state not in ("Z", "X"):
            return True
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return False


def cmdline(pid: int) -> List[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a]


def environ(pid: int) -> List[str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(client: Client) -> bool:
    try:
        client.health()
        return True
    except Unreachable:
        return False


class Corral:
    """A private state dir and whatever daemon serves it."""

    def __init__(self, binary: str, state_dir: str) -> None:
        self.bin = binary
        self.state_dir = state_dir
        self.socket = os.path.join(state_dir, "corral.sock")
        self._started: List["subprocess.Popen[bytes]"] = []

    def client(self, **kw: Any) -> Client:
        return Client(state_dir=self.state_dir, corral_bin=self.bin, **kw)

    def cli(self, *args: str) -> "subprocess.CompletedProcess[str]":
        return subprocess.run(
            [self.bin, "--state-dir", self.state_dir, *args], capture_output=True, text=True, timeout=60
        )

    def daemon_pid(self) -> Optional[int]:
        try:
            with open(os.path.join(self.state_dir, "corral.lock")) as f:
                return int(f.read().strip())
        except (FileNotFoundError, ValueError):
            return None

    def start_daemon(self, *args: str) -> None:
        """Runs ``corral daemon ARGS`` ourselves (for options autostart does not pass)."""
        proc = subprocess.Popen(
            [self.bin, "--state-dir", self.state_dir, "daemon", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._started.append(proc)
        poll(lambda: answers(self.client(autostart=False)), what="the daemon answering")

    def agent_processes(self) -> List[int]:
        """Live processes started by this daemon: they carry its socket in CORRAL_SOCKET."""
        mark = f"CORRAL_SOCKET={self.socket}"
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if mark in environ(int(entry)) and alive(int(entry)):
                        found.append(int(entry))
                except OSError:
                    continue
        return found

    def shutdown(self) -> None:
        """Stops every agent, then the daemon, and checks nothing it started is left."""
        if os.path.exists(self.socket):
            self.cli("--no-autostart", "stop", "--all", "--force")
        pid = self.daemon_pid()
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGTERM)
            poll(lambda: not alive(pid), what=f"daemon {pid} exiting")
        for proc in self._started:
            proc.wait(timeout=10)
        try:
            poll(lambda: not self.agent_processes(), timeout=5, what="every agent process ending")
        except AssertionError:
            leftovers = self.agent_processes()
            for p in leftovers:
                os.kill(p, signal.SIGKILL)
            raise AssertionError(f"processes of agents were left running: {leftovers}") from None
