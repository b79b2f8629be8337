"""Fixtures for the dashboard's end-to-end tests: a real daemon in a private
state dir, real agents, and headless Chromium driven by Selenium.

Every fixture cleans up what it started: the daemon is stopped with its
agents, and each agent's process is checked gone in /proc (by pid and start
time); each browser is quit and its profile removed.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

BIN = os.environ.get("CORRAL_BIN", "")
SHOTS = Path(os.environ.get("UI_SCREENSHOTS", "target/ui-screenshots"))
CHROME_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--hide-scrollbars",
]


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0, every: float = 0.05) -> Any:
    """Polls `check` until it returns something truthy; fails naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as e:  # noqa: BLE001 - a check may race the page; keep polling
            last = e
        else:
            if last:
                return last
        time.sleep(every)
    pytest.fail(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def start_ticks(pid: int) -> int | None:
    """The process's start time from /proc (None when there is no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def process_gone(pid: int, ticks: int) -> bool:
    """The process that had `ticks` as start time is gone (or only a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19]) != ticks or fields[0] == "Z"


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 60.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


class Daemon:
    """A corral daemon on a private state dir, reached over its socket."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.socket = str(state_dir / "corral.sock")
        self.log = open(state_dir.parent / "daemon.out", "wb")
        self.proc = subprocess.Popen(
            [BIN, "daemon", "--state-dir", str(state_dir), "--agent-socket", "none"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.agents: dict[str, tuple[int, int]] = {}
        wait_for("the daemon to answer", self._answers, timeout=20)

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"the daemon exited with {self.proc.returncode}")
        try:
            return self.call("GET", "/v1/health")[0] == 200
        except OSError:
            return False

    def call(self, method: str, path: str, body: Any = None, conn: UnixHTTP | None = None) -> tuple[int, Any]:
        """One request; on `conn` (kept open for the next) when given, else on a new connection."""
        own = conn is None
        c = UnixHTTP(self.socket) if conn is None else conn
        try:
            data = None if body is None else json.dumps(body)
            headers = {"Content-Type": "application/json"} if data else {}
            c.request(method, path, body=data, headers=headers)
            r = c.getresponse()
            raw = r.read()
            try:
                return r.status, json.loads(raw) if raw else None
            except ValueError:
                return r.status, raw.decode(errors="replace")
        finally:
            if own:
                c.close()

    def connection(self) -> UnixHTTP:
        return UnixHTTP(self.socket)

    def remember(self, agent_id: str, pid: int) -> None:
        ticks = start_ticks(pid)
        if ticks is not None:  # else it has ended already (and was reaped): nothing to leave behind
            self.agents[agent_id] = (pid, ticks)

    def spawn(self, agent_id: str, command: list[str], **extra: Any) -> int:
        status, body = self.call("POST", "/v1/agents", {"agent_id": agent_id, "command": command, **extra})
        assert status == 201, f"spawn {agent_id}: {status} {body}"
        pid = body["pid"]
        self.remember(agent_id, pid)
        return pid

    def spawn_batch(self, requests: list[dict[str, Any]]) -> None:
        status, body = self.call("POST", "/v1/agents/batch", {"agents": requests})
        assert status == 200, f"batch: {status} {body}"
        for r in body["results"]:
            assert r.get("pid"), f"batch entry: {r}"
            self.remember(r["agent_id"], r["pid"])

    def login_url(self) -> str:
        out = subprocess.run(
            [BIN, "ui", "--no-open", "--state-dir", str(self.state_dir)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        url = out.stdout.strip()
        assert url.startswith("http://127.0.0.1:") and "/ui/login?code=" in url, out
        return url

    def stop(self) -> None:
        try:
            self.call("POST", "/v1/daemon/stop", {"stop_agents": True})
        except OSError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        for agent_id, (pid, ticks) in self.agents.items():
            if not process_gone(pid, ticks):
                # Never left behind: stop it (it is the very process we started, by start time).
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
                pytest.fail(f"agent {agent_id} (pid {pid}) outlived its daemon's stop")


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    assert BIN and os.access(BIN, os.X_OK), "CORRAL_BIN must name the corral binary"
    root = Path(tempfile.mkdtemp(prefix="corral-ui-"))
    state = root / "state"
    state.mkdir(mode=0o700)
    d = Daemon(state)
    try:
        yield d
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)


class Browsers:
    """Fresh Chromium sessions, each with its own profile; all quit at the end."""

    def __init__(self) -> None:
        self.open: list[tuple[webdriver.Chrome, str]] = []

    def new(self, width: int = 1280, height: int = 800) -> webdriver.Chrome:
        chromium = shutil.which("chromium")
        driver_bin = shutil.which("chromedriver")
        assert chromium and driver_bin, "chromium and chromedriver are needed (scripts/ui-tests.sh installs them)"
        profile = tempfile.mkdtemp(prefix="corral-ui-chromium-")
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for flag in CHROME_FLAGS:
            opts.add_argument(flag)
        opts.add_argument(f"--user-data-dir={profile}")
        opts.add_argument(f"--window-size={width},{height}")
        driver = webdriver.Chrome(service=Service(executable_path=driver_bin), options=opts)
        self.open.append((driver, profile))
        size(driver, width, height)
        return driver

    def close(self) -> None:
        for driver, profile in self.open:
            try:
                driver.quit()
            finally:
                shutil.rmtree(profile, ignore_errors=True)


def size(driver: webdriver.Chrome, width: int, height: int) -> None:
    """Exactly this viewport (a phone's too, with touch and its scale)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )


def shot(driver: webdriver.Chrome, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    assert driver.save_screenshot(str(path)), f"cannot save {path}"
    return path


@pytest.fixture
def browsers() -> Iterator[Browsers]:
    b = Browsers()
    try:
        yield b
    finally:
        b.close()
