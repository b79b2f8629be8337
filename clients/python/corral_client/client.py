"""A typed client for every route of corral's HTTP/JSON API.

It speaks HTTP/1.1 with the standard library only: over the daemon's Unix
socket (the default) or over TCP with a bearer token. Each call uses a fresh
connection, so one call's failure or abandoned stream never affects the next.
Like the ``corral`` CLI, it starts a daemon for the state dir when none
answers on its socket.

It does not trust what answers either. Every call has one deadline for the
whole exchange — connecting, sending, the answer's head and all of its body —
so a peer dripping a byte a second cannot stretch it; an answer's body is read
up to :data:`ANSWER_LIMIT` bytes and no further; an answer that is not HTTP,
not JSON, or not the expected shape raises :class:`BadAnswer`. Streams (a
followed log, the event stream) have the deadline until their answer begins,
then last as long as what they follow.
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

from .errors import (
    BadAnswer,
    CorralError,
    DeadlineExceeded,
    Unreachable,
    UntrustedSocket,
    from_answer,
    from_detail,
    printable,
)
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
#: The most a non-streaming answer's body may hold, bytes (64 MiB). The largest
#: answer corral gives, the listing of every agent, takes about 0.9 KiB an agent:
#: about 9 MiB for 10,000 agents, so this leaves room for seven times that.
ANSWER_LIMIT = 64 << 20
#: The most one server-sent event (or one line of the stream) may hold, bytes.
EVENT_LIMIT = 4 << 20
#: How long the event stream may stay silent: four of the daemon's 15 s keep-alives.
EVENT_STALL_S = 60.0
#: The longest stop stage the daemon accepts, seconds (a stop that names no
#: timeouts runs with the agents' own, which it bounds so).
_MAX_STAGE_S = 86400.0
_UNSTATED_STOP_ALLOWANCE_S = 900.0
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


class _DeadlineSocket(socketlib.socket):
    """A socket whose every connect, send and receive shares one deadline for
    the whole call, instead of a timeout per operation (which a peer sending a
    byte a second would renew forever). Without a deadline, ``stall`` (or
    nothing) bounds each receive."""

    deadline: Optional[float] = None
    stall: Optional[float] = None

    def _arm(self) -> None:
        if self.deadline is None:
            self.settimeout(self.stall)
            return
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise socketlib.timeout("the call's deadline has passed")
        self.settimeout(left)

    def connect(self, *args: Any, **kwargs: Any) -> None:
        self._arm()
        super().connect(*args, **kwargs)

    def recv_into(self, *args: Any, **kwargs: Any) -> int:
        self._arm()
        return super().recv_into(*args, **kwargs)

    def recv(self, *args: Any, **kwargs: Any) -> bytes:
        self._arm()
        return super().recv(*args, **kwargs)

    def sendall(self, *args: Any, **kwargs: Any) -> None:
        self._arm()
        super().sendall(*args, **kwargs)

    def send(self, *args: Any, **kwargs: Any) -> int:
        self._arm()
        return super().send(*args, **kwargs)


class _Connection(http.client.HTTPConnection):
    """HTTP over a Unix socket (``path``) or TCP, on a :class:`_DeadlineSocket`."""

    def __init__(self, host: str, port: Optional[int], path: Optional[str], deadline: Optional[float]) -> None:
        super().__init__(host, port, timeout=None)
        self._path = path
        self.deadline = deadline
        #: The socket, kept after ``close()`` hands it to a response that still reads from it.
        self.dsock: Optional[_DeadlineSocket] = None

    def connect(self) -> None:
        if self._path is not None:
            targets: List[Tuple[int, int, int, Any]] = [(socketlib.AF_UNIX, socketlib.SOCK_STREAM, 0, self._path)]
        else:
            targets = [
                (family, kind, proto, addr)
                for family, kind, proto, _, addr in socketlib.getaddrinfo(
                    self.host, self.port, 0, socketlib.SOCK_STREAM
                )
            ]
        error: Optional[OSError] = None
        for family, kind, proto, address in targets:
            sock = _DeadlineSocket(family, kind, proto)
            sock.deadline = self.deadline
            try:
                sock.connect(address)
            except (socketlib.timeout, TimeoutError):
                sock.close()
                raise
            except OSError as e:
                sock.close()
                error = e
                continue
            except BaseException:
                sock.close()
                raise
            if family != socketlib.AF_UNIX:
                sock.setsockopt(socketlib.IPPROTO_TCP, socketlib.TCP_NODELAY, 1)
            self.sock = self.dsock = sock
            return
        raise error or OSError(f"no address for {self.host}:{self.port}")


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

    ``timeout`` is the deadline of each call (seconds, ``None`` for none):
    connecting, sending and reading the whole answer must fit in it, or
    :class:`DeadlineExceeded` is raised. Calls that ask the daemon to take
    time get that time on top: a wait its ``timeout_s``, a spawn its
    verification window, a stop or kill its stage timeouts (the agents' own,
    at most 86,400 s a stage, when the call names none). A followed stream has
    the deadline until its answer begins; the event stream then fails after
    :data:`EVENT_STALL_S` without a byte (the daemon sends keep-alives). Time
    spent starting a daemon does not count: that has its own 10 s.
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

    def _connect(self, conn: _Connection, autostart: bool, timeout: Optional[float]) -> None:
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
        # The deadline is for the exchange with a daemon; starting one had its own.
        conn.deadline = None if timeout is None else time.monotonic() + timeout
        conn.connect()

    def _failure(self, e: BaseException, what: str, timeout: Optional[float]) -> CorralError:
        """The client's error for a failure of the exchange ``what``."""
        if isinstance(e, (socketlib.timeout, TimeoutError)):
            return DeadlineExceeded(
                "deadline_exceeded",
                f"no complete answer to {what} from the corral daemon at {self.address} within {timeout:g} s",
            )
        if isinstance(e, http.client.HTTPException) and not isinstance(
            e, (http.client.RemoteDisconnected, http.client.IncompleteRead)
        ):
            detail = printable(str(e))[:200]
            return BadAnswer(
                "bad_answer",
                f"{what}: expected an HTTP/1.1 answer from the corral daemon at {self.address}: "
                f"{type(e).__name__}: {detail}",
            )
        hint = "" if self._autostart or self._tcp else "; start one with `corral daemon`"
        return Unreachable(
            "unreachable", f"cannot talk to the corral daemon at {self.address} ({what}): {printable(str(e))}{hint}"
        )

    def _send(
        self,
        method: str,
        path: str,
        *,
        query: Optional[Query] = None,
        body: Optional[Any] = None,
        timeout: Optional[float],
        autostart: bool = True,
    ) -> Tuple[_Connection, http.client.HTTPResponse]:
        """Sends one request and returns its open answer; an error answer is raised.
        ``timeout`` bounds the whole call, reading the answer's body included."""
        target = path
        if query:
            pairs = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in query.items() if v is not None}
            target += "?" + urllib.parse.urlencode(pairs)
        what = f"{method} {path}"
        headers = {"Connection": "close", "Accept": "application/json, text/plain, text/event-stream"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        deadline = None if timeout is None else time.monotonic() + timeout
        conn: _Connection
        if self._tcp is not None:
            host, port, token = self._tcp
            conn = _Connection(host, port, None, deadline)
            headers["Authorization"] = f"Bearer {token}"
        else:
            conn = _Connection("corral", None, self.address, deadline)
        try:
            self._connect(conn, autostart, timeout)
            conn.request(method, target, body=data, headers=headers)
            resp = conn.getresponse()
            if resp.status >= 400:
                raise from_answer(resp.status, self._read_all(resp, what))
            return conn, resp
        except CorralError:
            conn.close()
            raise
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise self._failure(e, what, timeout) from e
        except BaseException:
            conn.close()
            raise

    def _read_all(self, resp: http.client.HTTPResponse, what: str) -> bytes:
        """An answer's whole body, up to :data:`ANSWER_LIMIT` bytes."""
        too_large = BadAnswer(
            "bad_answer",
            f"the answer to {what} from the corral daemon at {self.address} is larger than "
            f"{ANSWER_LIMIT >> 20} MiB, more than corral ever sends; stopped reading",
        )
        if resp.length is not None and resp.length > ANSWER_LIMIT:
            raise too_large
        buf = bytearray()
        while True:
            chunk = resp.read(_CHUNK)
            if not chunk:
                return bytes(buf)
            if len(buf) + len(chunk) > ANSWER_LIMIT:
                raise too_large
            buf += chunk

    def _body(self, method: str, path: str, *, timeout: Optional[float], **kw: Any) -> bytes:
        conn, resp = self._send(method, path, timeout=timeout, **kw)
        what = f"{method} {path}"
        try:
            return self._read_all(resp, what)
        except (OSError, http.client.HTTPException) as e:
            raise self._failure(e, what, timeout) from e
        finally:
            conn.close()

    def _call(
        self, method: str, path: str, *, timeout: Optional[float], expect: Optional[type] = None, **kw: Any
    ) -> Any:
        """One request with a JSON answer: a JSON ``expect`` (``dict``, ``list``) when given."""
        raw = self._body(method, path, timeout=timeout, **kw)
        wanted = "a JSON object" if expect is dict else "a JSON array" if expect is list else "JSON"
        try:
            value = json.loads(raw)
        except ValueError as e:
            head = printable(raw[:120].decode("utf-8", "replace"))
            got = f"{len(raw)} bytes beginning {head!r}" if raw else "an empty body"
            raise BadAnswer("bad_answer", f"{method} {path}: expected {wanted}, got {got} ({e})") from e
        if expect is not None and not isinstance(value, expect):
            raise BadAnswer("bad_answer", f"{method} {path}: expected {wanted}, got a JSON {type(value).__name__}")
        return value

    @staticmethod
    def _shaped(what: str, expected: str, build: Any) -> Any:
        """``build()``, an answer of the wrong shape raising :class:`BadAnswer`."""
        try:
            return build()
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BadAnswer("bad_answer", f"{what}: expected {expected}: {type(e).__name__}: {e}") from e

    def _chunks(self, path: str, query: Query, stall: Optional[float] = None) -> Generator[bytes, None, None]:
        """Opens a streamed GET now (so errors raise here) and yields its body as it arrives.

        The answer's head must come within the client's timeout; the body has
        no deadline, and with ``stall`` may not go silent that long."""
        conn, resp = self._send("GET", path, query=query, timeout=self._timeout)
        if conn.dsock is not None:
            conn.dsock.deadline = None
            conn.dsock.stall = stall

        def pieces() -> Generator[bytes, None, None]:
            try:
                while True:
                    try:
                        chunk = resp.read1(_CHUNK)
                    except (socketlib.timeout, TimeoutError) as e:
                        raise DeadlineExceeded(
                            "deadline_exceeded",
                            f"GET {path} from the corral daemon at {self.address} sent nothing for {stall:g} s "
                            "(it sends a keep-alive every 15 s)",
                        ) from e
                    except (OSError, http.client.HTTPException) as e:
                        raise self._failure(e, f"GET {path}", None) from e
                    if not chunk:
                        return
                    yield chunk
            finally:
                conn.close()
                resp.close()

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
        return cast(DaemonHealth, self._call("GET", "/v1/health", timeout=self._timeout, expect=dict))

    def openapi(self) -> Dict[str, Any]:
        """The daemon's OpenAPI document: every route and shape."""
        return cast(Dict[str, Any], self._call("GET", "/v1/openapi.json", timeout=self._timeout, expect=dict))

    def metrics(self) -> str:
        """``GET /metrics``: Prometheus text format (bearer token required over TCP too)."""
        return self._body("GET", "/metrics", timeout=self._timeout).decode("utf-8", "replace")

    # -- spawning ------------------------------------------------------------

    def _spawn_timeout(self, requests: Iterable[Mapping[str, Any]]) -> Optional[float]:
        """The usual bound plus the longest verification window asked for."""
        if self._timeout is None:
            return None
        return self._timeout + max((float(r.get("verify_ms") or 0) for r in requests), default=0.0) / 1000

    def _stop_timeout(self, stop_timeouts: Optional[List[float]]) -> Optional[float]:
        """The usual bound plus the stop's stages: those named, else 15 minutes
        (the agents' own stages are the daemon's to know, up to three days each;
        a stop the client gives up on goes on in the daemon)."""
        if self._timeout is None:
            return None
        if stop_timeouts is None:
            return self._timeout + _UNSTATED_STOP_ALLOWANCE_S
        return self._timeout + sum(min(max(float(t), 0.0), _MAX_STAGE_S) for t in stop_timeouts)

    def spawn(self, request: SpawnLike) -> SpawnResponse:
        """Starts an agent and answers after its verification window.

        A program that cannot start raises :class:`SpawnFailed` (with the OS's
        reason); one that ended inside the window is answered with
        ``status`` ``COMPLETED`` or ``FAILED``. A live id raises :class:`Conflict`.
        """
        body = request.to_json() if isinstance(request, SpawnRequest) else dict(request)
        answer = self._call("POST", "/v1/agents", body=body, timeout=self._spawn_timeout([body]), expect=dict)
        return cast(
            SpawnResponse,
            self._shaped("POST /v1/agents", "a spawn response", lambda: SpawnResponse.from_json(answer)),
        )

    def spawn_batch(self, requests: Iterable[SpawnLike]) -> List[Union[SpawnResponse, CorralError]]:
        """Starts many agents in one request, all verification windows at once.

        One result per request, in request order: a :class:`SpawnResponse`, or
        the error that entry alone got (a :class:`CorralError` subclass, returned
        rather than raised so the others are not lost).
        """
        bodies = [r.to_json() if isinstance(r, SpawnRequest) else dict(r) for r in requests]
        answer = self._call(
            "POST", "/v1/agents/batch", body={"agents": bodies}, timeout=self._spawn_timeout(bodies), expect=dict
        )

        def results() -> List[Union[SpawnResponse, CorralError]]:
            out: List[Union[SpawnResponse, CorralError]] = []
            for entry in answer["results"]:
                error = entry.get("error")
                if isinstance(error, dict):
                    out.append(from_detail(str(error["code"]), str(error["message"])))
                else:
                    out.append(SpawnResponse.from_json(entry))
            return out

        return cast(
            List[Union[SpawnResponse, CorralError]],
            self._shaped("POST /v1/agents/batch", "a list of spawn results", results),
        )

    # -- observing -----------------------------------------------------------

    def list_agents(
        self,
        selector: Optional[str] = None,
        state: Union[str, Iterable[str], None] = None,
        label: Union[str, Mapping[str, str], Iterable[str], None] = None,
        fields: Union[str, Iterable[str], None] = None,
    ) -> Dict[str, StatusDict]:
        """Every agent's status, by id (the reference's ``monitor_all_agents``).

        The daemon filters before it answers: ``selector`` (an id or
        ``PREFIX.*``), ``state`` (lifecycle states: ``"running"`` or
        ``["running", "paused"]``), ``label`` (``{"team": "a"}`` or
        ``"team=a"`` or ``["team=a", "tier=1"]``: all must match). With
        ``fields`` (``["state", "progress"]``) each status has only those
        fields and ``agent_id``. A bad value raises :class:`Invalid` naming it.
        """
        query: List[Tuple[str, str]] = []
        if selector is not None:
            query.append(("selector", selector))
        if state is not None:
            query.append(("state", state if isinstance(state, str) else ",".join(state)))
        if label is not None:
            if isinstance(label, str):
                pairs: List[str] = [label]
            elif isinstance(label, Mapping):
                pairs = [f"{k}={v}" for k, v in label.items()]
            else:
                pairs = list(label)
            # One parameter per pair (the daemon also takes them comma-separated).
            query.extend(("label", p) for p in pairs)
        if fields is not None:
            query.append(("fields", fields if isinstance(fields, str) else ",".join(fields)))
        path = "/v1/agents"
        if query:
            path += "?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
        return cast(Dict[str, StatusDict], self._call("GET", path, timeout=self._timeout, expect=dict))

    def status(self, agent_id: str) -> StatusDict:
        """One agent's status (:class:`NotFound` for an unknown id)."""
        return cast(StatusDict, self._call("GET", f"/v1/agents/{_id(agent_id)}", timeout=self._timeout, expect=dict))

    def agent_health(self, agent_id: str) -> HealthReport:
        """Quick health: ``healthy`` is ``health == "healthy"``."""
        return cast(
            HealthReport, self._call("GET", f"/v1/agents/{_id(agent_id)}/health", timeout=self._timeout, expect=dict)
        )

    def summary(self) -> ProcessSummary:
        """Counts by state and totals over live agents."""
        return cast(ProcessSummary, self._call("GET", "/v1/summary", timeout=self._timeout, expect=dict))

    def runs(self, agent_id: str) -> List[RunInfo]:
        """Every run of an id, oldest first."""
        return cast(
            List[RunInfo], self._call("GET", f"/v1/agents/{_id(agent_id)}/runs", timeout=self._timeout, expect=list)
        )

    def progress(self, agent_id: str, percent: int, message: Optional[str] = None) -> StatusDict:
        """Reports progress (0–100). From inside an agent, only its own (else :class:`Forbidden`)."""
        body = {"progress": percent, "message": message}
        return cast(
            StatusDict,
            self._call("PUT", f"/v1/agents/{_id(agent_id)}/progress", body=body, timeout=self._timeout, expect=dict),
        )

    def wait(self, agent_id: str, timeout_s: Optional[float] = None) -> StatusDict:
        """Waits until the current run has ended and will not be restarted; its final status.

        Raises :class:`~corral_client.Timeout` (a :class:`TimeoutError`) after
        ``timeout_s`` (the daemon's default: 30 s; at most 3600).
        """
        # The call may take the wait itself on top of the usual deadline.
        socket_timeout = (
            None if self._timeout is None else self._timeout + (DEFAULT_WAIT_S if timeout_s is None else timeout_s)
        )
        query = {"timeout_s": timeout_s}
        return cast(
            StatusDict,
            self._call("GET", f"/v1/agents/{_id(agent_id)}/wait", query=query, timeout=socket_timeout, expect=dict),
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
        chunks = self._chunks("/v1/events", {"since": since, "follow": follow}, stall=EVENT_STALL_S)

        def event(data: List[str]) -> Event:
            text = "\n".join(data)
            try:
                value = json.loads(text)
            except ValueError as e:
                head = printable(text[:120])
                raise BadAnswer("bad_answer", f"GET /v1/events: expected an event as JSON, got {head!r} ({e})") from e
            if not isinstance(value, dict):
                raise BadAnswer(
                    "bad_answer", f"GET /v1/events: expected a JSON object, got a JSON {type(value).__name__}"
                )
            return cast(Event, value)

        def parse() -> Generator[Event, None, None]:
            buf = b""
            data: List[str] = []
            held = 0
            try:
                for chunk in chunks:
                    *lines, buf = (buf + chunk).split(b"\n")
                    for raw in lines:
                        line = raw.rstrip(b"\r").decode("utf-8", "replace")
                        if not line and data:
                            yield event(data)
                            data = []
                            held = 0
                        elif line.startswith("data:"):
                            value = line[5:]
                            data.append(value[1:] if value.startswith(" ") else value)
                            held += len(value)
                    if len(buf) + held > EVENT_LIMIT:
                        raise BadAnswer(
                            "bad_answer",
                            f"an event of GET /v1/events from the corral daemon at {self.address} is larger than "
                            f"{EVENT_LIMIT >> 20} MiB, more than corral ever sends; stopped reading",
                        )
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
        return cast(
            StopReport,
            self._call(
                "POST",
                f"/v1/agents/{_id(agent_id)}/stop",
                body=body,
                timeout=self._stop_timeout(stop_timeouts),
                expect=dict,
            ),
        )

    def kill(self, agent_id: str, force: bool = False) -> KillResponse:
        """Stops one agent; ``killed`` is false when it had already ended."""
        return cast(
            KillResponse,
            self._call(
                "POST",
                f"/v1/agents/{_id(agent_id)}/kill",
                body={"force": force},
                timeout=self._stop_timeout(None),
                expect=dict,
            ),
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
        return cast(
            List[StopReport],
            self._call("POST", "/v1/stop", body=body, timeout=self._stop_timeout(stop_timeouts), expect=list),
        )

    def reap(self) -> List[str]:
        """Sweeps for unreaped processes; the agents it had to reap (normally none)."""
        return cast(List[str], self._call("POST", "/v1/reap", timeout=self._timeout, expect=list))

    def remove(self, agent_id: str) -> Removal:
        """Forgets an ended agent: its runs, and its logs in the default place
        (:class:`Conflict` while it is live)."""
        return cast(Removal, self._call("DELETE", f"/v1/agents/{_id(agent_id)}", timeout=self._timeout, expect=dict))

    def prune(self) -> Removal:
        """Forgets every ended run (live agents keep their current run)."""
        return cast(Removal, self._call("POST", "/v1/prune", timeout=self._timeout, expect=dict))
