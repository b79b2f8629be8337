"""A typed client for every route of corral's HTTP/JSON API.

It speaks HTTP/1.1 with the standard library only: over the daemon's Unix
socket (the default) or over TCP with a bearer token. Each call uses a fresh
connection, so one call's failure or abandoned stream never affects the next.
Like the ``corral`` CLI, it starts a daemon for the state dir when none
answers on its socket.
"""

from __future__ import annotations

import codecs
import http.client
import json
import os
import shutil
import socket as socketlib
import stat
import subprocess
import threading
import time
import urllib.parse
from typing import Any, Dict, Generator, Iterable, List, Mapping, Optional, Tuple, Union, cast

from .errors import CorralError, Unreachable, UntrustedSocket, from_answer, from_detail
from .types import (
    DaemonHealth,
    Event,
    HealthReport,
    KillResponse,
    ProcessSummary,
    Removal,
    RunInfo,
    SpawnRequest,
    SpawnResponse,
    StatusDict,
    StopReport,
)

SOCKET_NAME = "corral.sock"
#: How long a client waits for a daemon it started to answer (as the CLI does).
STARTUP_DEADLINE_S = 10.0
#: Exit code of a daemon that lost the race for the state dir: another one is starting.
EXIT_ALREADY_RUNNING = 3
#: The daemon's wait when none is asked for, seconds.
DEFAULT_WAIT_S = 30.0
_CHUNK = 64 * 1024

SpawnLike = Union[SpawnRequest, Mapping[str, Any]]
Query = Mapping[str, Union[str, int, float, bool, None]]


def default_state_dir() -> str:
    """``$CORRAL_STATE_DIR``, else ``$XDG_STATE_HOME/corral``, else ``~/.local/state/corral``
    (the CLI's rule, so both find the same daemon), made absolute."""
    for var, suffix in (("CORRAL_STATE_DIR", ""), ("XDG_STATE_HOME", "corral")):
        value = os.environ.get(var)
        if value:
            return os.path.abspath(os.path.join(value, suffix) if suffix else value)
    home = os.environ.get("HOME")
    if not home:
        raise Unreachable("unreachable", "cannot find a state dir: pass state_dir=, or set CORRAL_STATE_DIR or HOME")
    return os.path.abspath(os.path.join(home, ".local", "state", "corral"))


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket: only ``connect`` differs from TCP."""

    def __init__(self, path: str, timeout: Optional[float]) -> None:
        super().__init__("corral", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _check_socket(path: str) -> None:
    """Refuses a socket this user cannot trust before anything is sent to it
    (the daemon applies the same rule to its state dir). A missing socket
    passes: connecting then fails in the usual words, or starts a daemon."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise UntrustedSocket(
            "untrusted_socket", f"refusing to talk to {path}: it is not a socket (a symlink, file or directory)"
        )
    me = os.geteuid()
    if st.st_uid not in (me, 0):
        raise UntrustedSocket(
            "untrusted_socket",
            f"refusing to talk to {path}: it is owned by uid {st.st_uid}, not by this user (uid {me}) or root",
        )


def _parse_url(url: str) -> Tuple[str, int]:
    """``HOST:PORT`` (``http://`` optional; IPv6 in brackets) as host and port."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise ValueError(f"url {url!r} must be HOST:PORT, like 127.0.0.1:7070")
    return parts.hostname, port


def _id(agent_id: str) -> str:
    """An agent id as one path segment (a ``/`` in it can never reach another route)."""
    return urllib.parse.quote(agent_id, safe="")


class Client:
    """A client bound to one corral daemon.

    Exactly one of: ``state_dir`` (its socket, ``<state_dir>/corral.sock``),
    ``socket`` (that socket; no daemon is started for it) or ``url``
    (``HOST:PORT`` of ``corral daemon --listen``, with ``token`` or
    ``token_file``). With none, the state dir is found as the CLI finds it.
    For a state dir with ``autostart`` (the default), a daemon is started with
    ``corral --state-dir DIR daemon --detach`` when none answers — ``corral``
    being ``corral_bin``, else ``$CORRAL_BIN``, else found on ``PATH``.

    ``timeout`` bounds ordinary calls (seconds, ``None`` for no bound). Calls
    whose length the daemon bounds — stops, kills, waits, followed streams —
    are not cut short by it.
    """

    def __init__(
        self,
        *,
        state_dir: Optional[str] = None,
        socket: Optional[str] = None,
        url: Optional[str] = None,
        token: Optional[str] = None,
        token_file: Optional[str] = None,
        autostart: bool = True,
        corral_bin: Optional[str] = None,
        timeout: Optional[float] = 60.0,
    ) -> None:
        if sum(x is not None for x in (state_dir, socket, url)) > 1:
            raise ValueError("give one of state_dir, socket or url")
        self._timeout = timeout
        self._corral_bin = corral_bin
        self._tcp: Optional[Tuple[str, int, str]] = None
        self.state_dir: Optional[str] = None
        if url is not None:
            host, port = _parse_url(url)
            if token is None and token_file is not None:
                with open(token_file, encoding="utf-8") as f:
                    token = f.read().strip()
            if not token:
                raise ValueError(
                    "url needs token or token_file: a TCP daemon accepts only requests with its bearer token"
                )
            self._tcp = (host, port, token)
            self.address = f"{host}:{port}"
            self._autostart = False
        else:
            if token is not None or token_file is not None:
                raise ValueError("token and token_file are for url=; the Unix socket needs none")
            if socket is None:
                self.state_dir = os.path.abspath(state_dir) if state_dir is not None else default_state_dir()
                socket = os.path.join(self.state_dir, SOCKET_NAME)
            self.address = socket
            self._autostart = autostart and self.state_dir is not None

    def __repr__(self) -> str:
        return f"Client({self.address!r})"

    # -- transport ---------------------------------------------------------

    def _connect(self, conn: http.client.HTTPConnection, autostart: bool) -> None:
        """Connects, starting a daemon first when none answers and that is allowed."""
        if self._tcp is not None:
            conn.connect()
            return
        _check_socket(self.address)
        try:
            conn.connect()
            return
        except (FileNotFoundError, ConnectionRefusedError):
            if not (autostart and self._autostart):
                raise
        self._start_daemon()
        _check_socket(self.address)
        conn.connect()

    def _send(
        self,
        method: str,
        path: str,
        *,
        query: Optional[Query] = None,
        body: Optional[Any] = None,
        timeout: Optional[float],
        autostart: bool = True,
    ) -> Tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Sends one request and returns its open answer; an error answer is raised."""
        target = path
        if query:
            pairs = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in query.items() if v is not None}
            target += "?" + urllib.parse.urlencode(pairs)
        headers = {"Connection": "close", "Accept": "application/json, text/plain, text/event-stream"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn: http.client.HTTPConnection
        if self._tcp is not None:
            host, port, token = self._tcp
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
            headers["Authorization"] = f"Bearer {token}"
        else:
            conn = _UnixConnection(self.address, timeout)
        try:
            self._connect(conn, autostart)
            conn.request(method, target, body=data, headers=headers)
            resp = conn.getresponse()
            if resp.status >= 400:
                raise from_answer(resp.status, resp.read())
            return conn, resp
        except CorralError:
            conn.close()
            raise
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            hint = "" if self._autostart or self._tcp else "; start one with `corral daemon`"
            raise Unreachable("unreachable", f"cannot talk to the corral daemon at {self.address}: {e}{hint}") from e
        except BaseException:
            conn.close()
            raise

    def _body(self, method: str, path: str, *, timeout: Optional[float], **kw: Any) -> bytes:
        conn, resp = self._send(method, path, timeout=timeout, **kw)
        try:
            return resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise Unreachable("unreachable", f"reading the answer of {method} {path} from {self.address}: {e}") from e
        finally:
            conn.close()

    def _call(self, method: str, path: str, *, timeout: Optional[float], **kw: Any) -> Any:
        """One request with a JSON answer."""
        return json.loads(self._body(method, path, timeout=timeout, **kw))

    def _chunks(self, path: str, query: Query) -> Generator[bytes, None, None]:
        """Opens a streamed GET now (so errors raise here) and yields its body as it arrives."""
        conn, resp = self._send("GET", path, query=query, timeout=None)

        def pieces() -> Generator[bytes, None, None]:
            try:
                while True:
                    chunk = resp.read1(_CHUNK)
                    if not chunk:
                        return
                    yield chunk
            finally:
                conn.close()

        return pieces()

    def _answers(self) -> bool:
        """Whether a daemon answers at all: a daemon answering 503 is still there."""
        try:
            self._body("GET", "/v1/health", timeout=2.0, autostart=False)
        except Unreachable:
            return False
        except UntrustedSocket:
            raise
        except CorralError:
            pass
        return True

    def _start_daemon(self) -> None:
        """Starts ``corral daemon --detach`` for the state dir and waits for a daemon to answer.

        Race-safe as the CLI is: every client that finds no daemon starts one,
        all but one exit with code 3 on the state dir's lock, and each client
        waits for the winner.
        """
        assert self.state_dir is not None
        exe = self._corral_bin or os.environ.get("CORRAL_BIN") or shutil.which("corral")
        if not exe:
            raise Unreachable(
                "unreachable",
                f"no corral daemon answers at {self.address} and no corral executable was found to start one: "
                "pass corral_bin=, set CORRAL_BIN or put corral on PATH",
            )
        try:
            proc = subprocess.Popen(
                [exe, "--state-dir", self.state_dir, "daemon", "--detach"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except OSError as e:
            raise Unreachable("unreachable", f"cannot start a corral daemon with {exe}: {e}") from e
        assert proc.stderr is not None
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        try:
            while not self._answers():
                code = proc.poll()
                if code is not None and code != EXIT_ALREADY_RUNNING:
                    why = proc.stderr.read().decode("utf-8", "replace").strip()
                    why = why[len("error: ") :] if why.startswith("error: ") else why
                    raise Unreachable("unreachable", f"the corral daemon did not start (exit code {code}): {why}")
                if time.monotonic() > deadline:
                    raise Unreachable(
                        "unreachable",
                        f"started a corral daemon but it did not answer at {self.address} within "
                        f"{STARTUP_DEADLINE_S:g} s; see {os.path.join(self.state_dir, 'daemon.log')}",
                    )
                time.sleep(0.005)
        finally:
            proc.stderr.close()
        if proc.poll() is None:
            # The winner runs on as our child: reap it whenever it exits, so it never lingers as a zombie.
            threading.Thread(target=proc.wait, name="corral-daemon-reaper", daemon=True).start()

    # -- the daemon ----------------------------------------------------------

    def health(self) -> DaemonHealth:
        """The daemon answers and its store takes writes (else :class:`Unavailable`)."""
        return cast(DaemonHealth, self._call("GET", "/v1/health", timeout=self._timeout))

    def openapi(self) -> Dict[str, Any]:
        """The daemon's OpenAPI document: every route and shape."""
        return cast(Dict[str, Any], self._call("GET", "/v1/openapi.json", timeout=self._timeout))

    def metrics(self) -> str:
        """``GET /metrics``: Prometheus text format (bearer token required over TCP too)."""
        return self._body("GET", "/metrics", timeout=self._timeout).decode("utf-8", "replace")

    # -- spawning ------------------------------------------------------------

    def _spawn_timeout(self, requests: Iterable[Mapping[str, Any]]) -> Optional[float]:
        """The usual bound plus the longest verification window asked for."""
        if self._timeout is None:
            return None
        return self._timeout + max((float(r.get("verify_ms") or 0) for r in requests), default=0.0) / 1000

    def spawn(self, request: SpawnLike) -> SpawnResponse:
        """Starts an agent and answers after its verification window.

        A program that cannot start raises :class:`SpawnFailed` (with the OS's
        reason); one that ended inside the window is answered with
        ``status`` ``COMPLETED`` or ``FAILED``. A live id raises :class:`Conflict`.
        """
        body = request.to_json() if isinstance(request, SpawnRequest) else dict(request)
        answer = self._call("POST", "/v1/agents", body=body, timeout=self._spawn_timeout([body]))
        return SpawnResponse.from_json(answer)

    def spawn_batch(self, requests: Iterable[SpawnLike]) -> List[Union[SpawnResponse, CorralError]]:
        """Starts many agents in one request, all verification windows at once.

        One result per request, in request order: a :class:`SpawnResponse`, or
        the error that entry alone got (a :class:`CorralError` subclass, returned
        rather than raised so the others are not lost).
        """
        bodies = [r.to_json() if isinstance(r, SpawnRequest) else dict(r) for r in requests]
        answer = self._call("POST", "/v1/agents/batch", body={"agents": bodies}, timeout=self._spawn_timeout(bodies))
        results: List[Union[SpawnResponse, CorralError]] = []
        for entry in answer["results"]:
            error = entry.get("error")
            if isinstance(error, dict):
                results.append(from_detail(str(error["code"]), str(error["message"])))
            else:
                results.append(SpawnResponse.from_json(entry))
        return results

    # -- observing -----------------------------------------------------------

    def list_agents(self) -> Dict[str, StatusDict]:
        """Every agent's status, by id (the reference's ``monitor_all_agents``)."""
        return cast(Dict[str, StatusDict], self._call("GET", "/v1/agents", timeout=self._timeout))

    def status(self, agent_id: str) -> StatusDict:
        """One agent's status (:class:`NotFound` for an unknown id)."""
        return cast(StatusDict, self._call("GET", f"/v1/agents/{_id(agent_id)}", timeout=self._timeout))

    def agent_health(self, agent_id: str) -> HealthReport:
        """Quick health: ``healthy`` is ``health == "healthy"``."""
        return cast(HealthReport, self._call("GET", f"/v1/agents/{_id(agent_id)}/health", timeout=self._timeout))

    def summary(self) -> ProcessSummary:
        """Counts by state and totals over live agents."""
        return cast(ProcessSummary, self._call("GET", "/v1/summary", timeout=self._timeout))

    def runs(self, agent_id: str) -> List[RunInfo]:
        """Every run of an id, oldest first."""
        return cast(List[RunInfo], self._call("GET", f"/v1/agents/{_id(agent_id)}/runs", timeout=self._timeout))

    def progress(self, agent_id: str, percent: int, message: Optional[str] = None) -> StatusDict:
        """Reports progress (0–100). From inside an agent, only its own (else :class:`Forbidden`)."""
        body = {"progress": percent, "message": message}
        return cast(
            StatusDict, self._call("PUT", f"/v1/agents/{_id(agent_id)}/progress", body=body, timeout=self._timeout)
        )

    def wait(self, agent_id: str, timeout_s: Optional[float] = None) -> StatusDict:
        """Waits until the current run has ended and will not be restarted; its final status.

        Raises :class:`~corral_client.Timeout` (a :class:`TimeoutError`) after
        ``timeout_s`` (the daemon's default: 30 s; at most 3600).
        """
        socket_timeout = (
            None if self._timeout is None else self._timeout + (DEFAULT_WAIT_S if timeout_s is None else timeout_s)
        )
        query = {"timeout_s": timeout_s}
        return cast(
            StatusDict, self._call("GET", f"/v1/agents/{_id(agent_id)}/wait", query=query, timeout=socket_timeout)
        )

    def logs(self, agent_id: str, stream: str = "stdout", tail: Optional[int] = None, run: Optional[int] = None) -> str:
        """A run's output so far: ``stream`` ``stdout``, ``stderr`` or ``both``; the last
        ``tail`` lines; run ``run`` (default: the current one)."""
        query = {"stream": stream, "tail": tail, "run": run}
        body = self._body("GET", f"/v1/agents/{_id(agent_id)}/logs", query=query, timeout=self._timeout)
        return body.decode("utf-8", "replace")

    def follow_logs(
        self, agent_id: str, stream: str = "stdout", tail: Optional[int] = None, run: Optional[int] = None
    ) -> Generator[str, None, None]:
        """Like :meth:`logs`, then what is written next, until the run ends.

        The request is made now; the iterator yields text as the daemon sends
        it (pieces as the agent wrote them, not split into lines) and ends when
        the run has ended. Close it (or leave the loop) to stop following early.
        """
        chunks = self._chunks(
            f"/v1/agents/{_id(agent_id)}/logs", {"stream": stream, "tail": tail, "run": run, "follow": True}
        )

        def text() -> Generator[str, None, None]:
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            try:
                for chunk in chunks:
                    piece = decoder.decode(chunk)
                    if piece:
                        yield piece
                rest = decoder.decode(b"", final=True)
                if rest:
                    yield rest
            finally:
                chunks.close()

        return text()

    def events(self, since: Optional[int] = None, follow: bool = True) -> Generator[Event, None, None]:
        """The event log (transitions, progress, stop stages, restarts, …) from after
        ``since``, in ``seq`` order; with ``follow`` it waits for new ones forever.

        Resume after a disconnect with ``since=`` the last ``seq`` seen: every
        event arrives exactly once.
        """
        chunks = self._chunks("/v1/events", {"since": since, "follow": follow})

        def parse() -> Generator[Event, None, None]:
            buf = b""
            data: List[str] = []
            try:
                for chunk in chunks:
                    *lines, buf = (buf + chunk).split(b"\n")
                    for raw in lines:
                        line = raw.rstrip(b"\r").decode("utf-8", "replace")
                        if not line and data:
                            yield cast(Event, json.loads("\n".join(data)))
                            data = []
                        elif line.startswith("data:"):
                            value = line[5:]
                            data.append(value[1:] if value.startswith(" ") else value)
            finally:
                chunks.close()

        return parse()

    # -- stopping and forgetting --------------------------------------------

    def stop(self, agent_id: str, force: bool = False, stop_timeouts: Optional[List[float]] = None) -> StopReport:
        """Staged stop of the agent's whole tree (SIGTERM, SIGTERM, SIGKILL; ``force``: SIGKILL
        at once). ``stop_timeouts`` overrides the agent's waits for this call."""
        body: Dict[str, Any] = {"force": force}
        if stop_timeouts is not None:
            body["stop_timeouts"] = stop_timeouts
        return cast(StopReport, self._call("POST", f"/v1/agents/{_id(agent_id)}/stop", body=body, timeout=None))

    def kill(self, agent_id: str, force: bool = False) -> KillResponse:
        """Stops one agent; ``killed`` is false when it had already ended."""
        return cast(
            KillResponse, self._call("POST", f"/v1/agents/{_id(agent_id)}/kill", body={"force": force}, timeout=None)
        )

    def stop_many(
        self,
        *,
        all: bool = False,
        selector: Optional[str] = None,
        force: bool = False,
        stop_timeouts: Optional[List[float]] = None,
        live_only: bool = False,
    ) -> List[StopReport]:
        """Stops every agent (``all=True``) or a selector's (``"L2.1.*"`` or one id), in
        parallel. Ended agents report ``already_ended`` unless ``live_only``."""
        body: Dict[str, Any] = {"force": force}
        if all:
            body["all"] = True
        if selector is not None:
            body["selector"] = selector
        if stop_timeouts is not None:
            body["stop_timeouts"] = stop_timeouts
        if live_only:
            body["live_only"] = True
        return cast(List[StopReport], self._call("POST", "/v1/stop", body=body, timeout=None))

    def reap(self) -> List[str]:
        """Sweeps for unreaped processes; the agents it had to reap (normally none)."""
        return cast(List[str], self._call("POST", "/v1/reap", timeout=self._timeout))

    def remove(self, agent_id: str) -> Removal:
        """Forgets an ended agent: its runs, and its logs in the default place
        (:class:`Conflict` while it is live)."""
        return cast(Removal, self._call("DELETE", f"/v1/agents/{_id(agent_id)}", timeout=self._timeout))

    def prune(self) -> Removal:
        """Forgets every ended run (live agents keep their current run)."""
        return cast(Removal, self._call("POST", "/v1/prune", timeout=self._timeout))
