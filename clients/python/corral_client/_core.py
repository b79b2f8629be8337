"""What :class:`~corral_client.Client` and :class:`~corral_client.AsyncClient`
share: finding the daemon, what each route sends and how its answer is read,
what a failure means, and starting a daemon when none answers.

Each route is a :class:`Call`: method, path, query, body, the time it may take
on top of the client's timeout, and how its JSON answer becomes a model. The
two clients differ only in how they carry a call (blocking or awaiting), so
their methods are the same, route for route.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import os
import shutil
import socket as socketlib
import subprocess
import threading
import time
import urllib.parse
from typing import (
    Any,
    Callable,
    Dict,
    Generic,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

import httpcore
import httpx

from ._convert import Mismatch, build, build_event
from ._transport import check_socket
from .errors import BadAnswer, CorralError, DeadlineExceeded, Unreachable, from_detail, printable
from .types import (
    AgentHistory,
    AgentInfo,
    DaemonHealth,
    DaemonStopResponse,
    Event,
    HealthReport,
    KillResponse,
    PauseReport,
    ProcessSummary,
    Removal,
    RunInfo,
    SpawnRequest,
    SpawnResponse,
    StopReport,
    TeamRemoval,
    TeamStatus,
    UiLogin,
)

T = TypeVar("T")

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
MAX_STAGE_S = 86400.0
UNSTATED_STOP_ALLOWANCE_S = 900.0

SpawnLike = Union[SpawnRequest, Mapping[str, Any]]
Pairs = Sequence[Tuple[str, str]]


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


class Target:
    """Which daemon a client talks to, and how: resolved from the client's arguments."""

    def __init__(
        self,
        *,
        state_dir: Optional[str],
        socket: Optional[str],
        url: Optional[str],
        token: Optional[str],
        token_file: Optional[str],
        autostart: bool,
        corral_bin: Optional[str],
    ) -> None:
        if sum(x is not None for x in (state_dir, socket, url)) > 1:
            raise ValueError("give one of state_dir, socket or url")
        self.corral_bin = corral_bin
        self.state_dir: Optional[str] = None
        self.uds: Optional[str] = None
        self.headers: Dict[str, str] = {"Accept": "application/json, text/plain, text/event-stream"}
        self.tcp = url is not None
        if url is not None:
            host, port = _parse_url(url)
            if token is None and token_file is not None:
                with open(token_file, encoding="utf-8") as f:
                    token = f.read().strip()
            if not token:
                raise ValueError(
                    "url needs token or token_file: a TCP daemon accepts only requests with its bearer token"
                )
            netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            self.base_url = f"http://{netloc}"
            self.address = f"{host}:{port}"
            self.headers["Authorization"] = f"Bearer {token}"
            self.autostart = False
        else:
            if token is not None or token_file is not None:
                raise ValueError("token and token_file are for url=; the Unix socket needs none")
            if socket is None and state_dir is None:
                # Inside an agent: the socket its daemon gave it (its team's
                # door; that daemon runs already), as the CLI does.
                socket = os.environ.get("CORRAL_SOCKET") or None
            if socket is None:
                self.state_dir = os.path.abspath(state_dir) if state_dir is not None else default_state_dir()
                socket = os.path.join(self.state_dir, SOCKET_NAME)
            self.uds = self.address = socket
            self.base_url = "http://corral"
            self.autostart = autostart and self.state_dir is not None

    # -- failures ------------------------------------------------------------

    def no_daemon(self, e: BaseException) -> bool:
        """Whether ``e`` says that nothing listens on the socket (so a daemon may be started)."""
        if self.uds is None:
            return False
        cause: Optional[BaseException] = e
        while cause is not None:
            if isinstance(cause, (FileNotFoundError, ConnectionRefusedError)):
                return True
            cause = cause.__cause__ or cause.__context__
        return False

    def failure(self, e: BaseException, what: str, timeout: Optional[float]) -> CorralError:
        """The client's error for a failure of the exchange ``what``."""
        if isinstance(e, (TimeoutError, socketlib.timeout, httpcore.TimeoutException, httpx.TimeoutException)):
            within = "" if timeout is None else f" within {timeout:g} s"
            return DeadlineExceeded(
                "deadline_exceeded", f"no complete answer to {what} from the corral daemon at {self.address}{within}"
            )
        if isinstance(e, (httpcore.ProtocolError, httpx.ProtocolError)) and not _disconnected(e):
            detail = printable(str(e))[:200]
            return BadAnswer(
                "bad_answer",
                f"{what}: expected an HTTP/1.1 answer from the corral daemon at {self.address}: "
                f"{type(e).__name__}: {detail}",
            )
        hint = "" if self.autostart or self.tcp else "; start one with `corral daemon`"
        reason = printable(str(e)) or type(e).__name__
        return Unreachable(
            "unreachable", f"cannot talk to the corral daemon at {self.address} ({what}): {reason}{hint}"
        )

    def stalled(self, what: str, stall: Optional[float]) -> DeadlineExceeded:
        return DeadlineExceeded(
            "deadline_exceeded",
            f"{what} from the corral daemon at {self.address} sent nothing for {stall:g} s "
            "(it sends a keep-alive every 15 s)",
        )

    def too_large(self, what: str) -> BadAnswer:
        return BadAnswer(
            "bad_answer",
            f"the answer to {what} from the corral daemon at {self.address} is larger than "
            f"{ANSWER_LIMIT >> 20} MiB, more than corral ever sends; stopped reading",
        )

    def event_too_large(self, what: str) -> BadAnswer:
        return BadAnswer(
            "bad_answer",
            f"an event of {what} from the corral daemon at {self.address} is larger than "
            f"{EVENT_LIMIT >> 20} MiB, more than corral ever sends; stopped reading",
        )

    # -- starting a daemon ---------------------------------------------------

    def start_daemon(self) -> None:
        """Starts ``corral daemon --detach`` for the state dir and waits for a daemon to answer.

        Race-safe as the CLI is: every client that finds no daemon starts one,
        all but one exit with code 3 on the state dir's lock, and each client
        waits for the winner. Blocking: the async client runs it in a thread.
        """
        assert self.state_dir is not None and self.uds is not None
        exe = self.corral_bin or os.environ.get("CORRAL_BIN") or shutil.which("corral")
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
            while not _answers(self.uds):
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


#: Methods a request of which may be sent again when its connection was closed before any answer.
IDEMPOTENT = frozenset({"GET", "PUT", "DELETE"})


def closed_unanswered(e: BaseException) -> bool:
    """The connection was closed before any of the answer came: on a kept
    connection, the daemon closed it as idle just as the request went out (it
    may, to make room), so the request was not served."""
    return isinstance(
        e, (httpcore.RemoteProtocolError, httpx.RemoteProtocolError)
    ) and "without sending a response" in str(e)


def _disconnected(e: BaseException) -> bool:
    """A peer that hung up (rather than one that said something other than HTTP)."""
    text = str(e).lower()
    return "disconnected" in text or "peer closed" in text or "connection closed" in text


def _answers(path: str) -> bool:
    """Whether anything answers HTTP on the socket at ``path`` (a daemon answering 503 is still there)."""
    check_socket(path)
    try:
        with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(path)
            s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: corral\r\nConnection: close\r\n\r\n")
            return s.recv(16).startswith(b"HTTP/")
    except OSError:
        return False


# -- calls ---------------------------------------------------------------------


def _same(value: Any) -> Any:
    return value


@dataclasses.dataclass(frozen=True)
class Call(Generic[T]):
    """One request of a route, and how its answer is read."""

    method: str
    path: str
    #: What the answer becomes: ``build(model, json)`` or the like.
    parse: Callable[[Any], T]
    #: What the answer should be, in words (for :class:`BadAnswer`).
    shape: str = "JSON"
    query: Pairs = ()
    body: Optional[Any] = None
    #: Seconds the call may take on top of the client's timeout (the time it asks the daemon to take).
    extra_s: float = 0.0
    #: ``dict`` or ``list`` for a JSON answer of that kind; ``None`` for text.
    expect: Optional[type] = dict

    @property
    def what(self) -> str:
        return f"{self.method} {self.path}"

    def deadline_s(self, timeout: Optional[float]) -> Optional[float]:
        return None if timeout is None else timeout + self.extra_s

    def content(self) -> Optional[bytes]:
        return None if self.body is None else json.dumps(self.body).encode()

    def decode(self, raw: bytes) -> T:
        """The answer's body as JSON of the expected kind, then as the model."""
        if self.expect is None:
            return self.parse(raw.decode("utf-8", "replace"))
        wanted = "a JSON object" if self.expect is dict else "a JSON array" if self.expect is list else "JSON"
        try:
            value = json.loads(raw)
        except ValueError as e:
            head = printable(raw[:120].decode("utf-8", "replace"))
            got = f"{len(raw)} bytes beginning {head!r}" if raw else "an empty body"
            raise BadAnswer("bad_answer", f"{self.what}: expected {wanted}, got {got} ({e})") from e
        if not isinstance(value, self.expect):
            kind = "list" if isinstance(value, list) else "object" if isinstance(value, dict) else type(value).__name__
            raise BadAnswer("bad_answer", f"{self.what}: expected {wanted}, got a JSON {kind}")
        return self.shaped(value)

    def raw(self) -> Call[Any]:
        """The same request, its answer kept as plain JSON (for the drop-in spawner's dicts)."""
        return dataclasses.replace(self, parse=_same)

    def shaped(self, value: Any) -> T:
        """The JSON answer as the model; an answer of the wrong shape raises :class:`BadAnswer`."""
        try:
            return self.parse(value)
        except (Mismatch, KeyError, TypeError, ValueError) as e:
            raise BadAnswer("bad_answer", f"{self.what}: expected {self.shape}: {e}") from e


def _model(tp: Any) -> Callable[[Any], Any]:
    return lambda value: build(tp, value)


def _pairs(query: Mapping[str, Any]) -> List[Tuple[str, str]]:
    return [(k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in query.items() if v is not None]


def _stop_extra(stop_timeouts: Optional[Sequence[float]]) -> float:
    """The stop's stages: those named, else 15 minutes (the agents' own stages
    are the daemon's to know, up to a day each; a stop the client gives up on
    goes on in the daemon)."""
    if stop_timeouts is None:
        return UNSTATED_STOP_ALLOWANCE_S
    return sum(min(max(float(t), 0.0), MAX_STAGE_S) for t in stop_timeouts)


def _spawn_extra(bodies: Iterable[Mapping[str, Any]]) -> float:
    """The longest verification window asked for."""
    return max((float(b.get("verify_ms") or 0) for b in bodies), default=0.0) / 1000


def _spawn_body(request: SpawnLike) -> Dict[str, Any]:
    return request.to_json() if isinstance(request, SpawnRequest) else dict(request)


def _batch_results(value: Any) -> List[Union[SpawnResponse, CorralError]]:
    out: List[Union[SpawnResponse, CorralError]] = []
    results = value["results"]
    if not isinstance(results, list):
        raise Mismatch("results: expected an array")
    for i, entry in enumerate(results):
        error = entry.get("error") if isinstance(entry, dict) else None
        if isinstance(error, dict):
            out.append(from_detail(str(error["code"]), str(error["message"])))
        else:
            out.append(build(SpawnResponse, entry, f"results[{i}]"))
    return out


def _many_body(
    all: bool, selector: Optional[str], force: bool, stop_timeouts: Optional[List[float]], live_only: bool
) -> Dict[str, Any]:
    body: Dict[str, Any] = {"force": force}
    if all:
        body["all"] = True
    if selector is not None:
        body["selector"] = selector
    if stop_timeouts is not None:
        body["stop_timeouts"] = stop_timeouts
    if live_only:
        body["live_only"] = True
    return body


def _list_query(
    selector: Optional[str],
    state: Union[str, Iterable[str], None],
    label: Union[str, Mapping[str, str], Iterable[str], None],
    fields: Union[str, Iterable[str], None],
    node: Union[str, Iterable[str], None] = None,
) -> List[Tuple[str, str]]:
    query: List[Tuple[str, str]] = []
    if selector is not None:
        query.append(("selector", selector))
    if state is not None:
        query.append(("state", state if isinstance(state, str) else ",".join(str(s) for s in state)))
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
    if node is not None:
        query.append(("node", node if isinstance(node, str) else ",".join(node)))
    return query


class Routes:
    """Every route of the API as a :class:`Call` (what both clients send)."""

    @staticmethod
    def health() -> Call[DaemonHealth]:
        return Call("GET", "/v1/health", _model(DaemonHealth), "a daemon health object")

    @staticmethod
    def openapi() -> Call[Dict[str, Any]]:
        return Call("GET", "/v1/openapi.json", _same, "an OpenAPI document")

    @staticmethod
    def metrics() -> Call[str]:
        return Call("GET", "/metrics", _same, "Prometheus text", expect=None)

    @staticmethod
    def spawn(request: SpawnLike) -> Call[SpawnResponse]:
        body = _spawn_body(request)
        return Call(
            "POST", "/v1/agents", _model(SpawnResponse), "a spawn response", body=body, extra_s=_spawn_extra([body])
        )

    @staticmethod
    def spawn_batch(requests: Iterable[SpawnLike]) -> Call[List[Union[SpawnResponse, CorralError]]]:
        bodies = [_spawn_body(r) for r in requests]
        return Call(
            "POST",
            "/v1/agents/batch",
            _batch_results,
            "a list of spawn results",
            body={"agents": bodies},
            extra_s=_spawn_extra(bodies),
        )

    @staticmethod
    def list_agents(query: Pairs, raw: bool) -> Call[Any]:
        if raw:
            return Call("GET", "/v1/agents", _same, "statuses by id", query=query)
        return Call("GET", "/v1/agents", _model(Dict[str, AgentInfo]), "agent statuses by id", query=query)

    @staticmethod
    def status(agent_id: str) -> Call[AgentInfo]:
        return Call("GET", f"/v1/agents/{_id(agent_id)}", _model(AgentInfo), "an agent status")

    @staticmethod
    def agent_health(agent_id: str) -> Call[HealthReport]:
        return Call("GET", f"/v1/agents/{_id(agent_id)}/health", _model(HealthReport), "a health report")

    @staticmethod
    def summary() -> Call[ProcessSummary]:
        return Call("GET", "/v1/summary", _model(ProcessSummary), "a summary")

    @staticmethod
    def runs(agent_id: str) -> Call[List[RunInfo]]:
        return Call("GET", f"/v1/agents/{_id(agent_id)}/runs", _model(List[RunInfo]), "a list of runs", expect=list)

    @staticmethod
    def history(agent_id: str, since: Optional[float]) -> Call[AgentHistory]:
        return Call(
            "GET",
            f"/v1/agents/{_id(agent_id)}/history",
            _model(AgentHistory),
            "an agent history",
            query=_pairs({"since": since}),
        )

    @staticmethod
    def ui_login() -> Call[UiLogin]:
        return Call("POST", "/v1/ui/login", _model(UiLogin), "a dashboard login")

    @staticmethod
    def progress(agent_id: str, percent: int, message: Optional[str]) -> Call[AgentInfo]:
        body = {"progress": percent, "message": message}
        return Call("PUT", f"/v1/agents/{_id(agent_id)}/progress", _model(AgentInfo), "an agent status", body=body)

    @staticmethod
    def wait(agent_id: str, timeout_s: Optional[float]) -> Call[AgentInfo]:
        return Call(
            "GET",
            f"/v1/agents/{_id(agent_id)}/wait",
            _model(AgentInfo),
            "an agent status",
            query=_pairs({"timeout_s": timeout_s}),
            # The call may take the wait itself on top of the usual deadline.
            extra_s=DEFAULT_WAIT_S if timeout_s is None else float(timeout_s),
        )

    @staticmethod
    def logs(agent_id: str, stream: str, tail: Optional[int], run: Optional[int], follow: bool = False) -> Call[str]:
        query = _pairs({"stream": stream, "tail": tail, "run": run, "follow": True if follow else None})
        return Call("GET", f"/v1/agents/{_id(agent_id)}/logs", _same, "text", query=query, expect=None)

    @staticmethod
    def events(since: Optional[int], follow: bool) -> Call[Any]:
        return Call("GET", "/v1/events", _same, "events", query=_pairs({"since": since, "follow": follow}), expect=None)

    @staticmethod
    def stop(agent_id: str, force: bool, stop_timeouts: Optional[List[float]]) -> Call[StopReport]:
        body: Dict[str, Any] = {"force": force}
        if stop_timeouts is not None:
            body["stop_timeouts"] = stop_timeouts
        return Call(
            "POST",
            f"/v1/agents/{_id(agent_id)}/stop",
            _model(StopReport),
            "a stop report",
            body=body,
            extra_s=_stop_extra(stop_timeouts),
        )

    @staticmethod
    def kill(agent_id: str, force: bool) -> Call[KillResponse]:
        return Call(
            "POST",
            f"/v1/agents/{_id(agent_id)}/kill",
            _model(KillResponse),
            "a kill response",
            body={"force": force},
            extra_s=_stop_extra(None),
        )

    @staticmethod
    def stop_many(
        all: bool, selector: Optional[str], force: bool, stop_timeouts: Optional[List[float]], live_only: bool
    ) -> Call[List[StopReport]]:
        return Call(
            "POST",
            "/v1/stop",
            _model(List[StopReport]),
            "a list of stop reports",
            body=_many_body(all, selector, force, stop_timeouts, live_only),
            extra_s=_stop_extra(stop_timeouts),
            expect=list,
        )

    @staticmethod
    def restart(agent_id: str, force: bool, stop_timeouts: Optional[List[float]]) -> Call[SpawnResponse]:
        body: Dict[str, Any] = {"force": force}
        if stop_timeouts is not None:
            body["stop_timeouts"] = stop_timeouts
        return Call(
            "POST",
            f"/v1/agents/{_id(agent_id)}/restart",
            _model(SpawnResponse),
            "a spawn response",
            body=body,
            extra_s=_stop_extra(stop_timeouts),
        )

    @staticmethod
    def restart_many(
        all: bool, selector: Optional[str], force: bool, stop_timeouts: Optional[List[float]]
    ) -> Call[List[Union[SpawnResponse, CorralError]]]:
        return Call(
            "POST",
            "/v1/restart",
            _batch_results,
            "a list of spawn results",
            body=_many_body(all, selector, force, stop_timeouts, False),
            extra_s=_stop_extra(stop_timeouts),
        )

    @staticmethod
    def pause(resume: bool, agent_id: Optional[str], selector: Optional[str], all: bool) -> Call[List[PauseReport]]:
        body: Dict[str, Any] = {}
        if agent_id is not None:
            body["agent_id"] = agent_id
        if selector is not None:
            body["selector"] = selector
        if all:
            body["all"] = True
        return Call(
            "POST",
            "/v1/resume" if resume else "/v1/pause",
            _model(List[PauseReport]),
            "a list of pause reports",
            body=body,
            expect=list,
        )

    @staticmethod
    def teams() -> Call[List[TeamStatus]]:
        return Call("GET", "/v1/teams", _model(List[TeamStatus]), "a list of teams", expect=list)

    @staticmethod
    def team(team: str) -> Call[TeamStatus]:
        return Call("GET", f"/v1/teams/{_id(team)}", _model(TeamStatus), "a team")

    @staticmethod
    def set_team(
        team: str,
        memory_mb: Optional[float],
        cpu_percent: Optional[float],
        pids: Optional[int],
        max_agents: Optional[int],
    ) -> Call[TeamStatus]:
        given = {"memory_mb": memory_mb, "cpu_percent": cpu_percent, "pids": pids, "max_agents": max_agents}
        body = {k: v for k, v in given.items() if v is not None}
        return Call("PUT", f"/v1/teams/{_id(team)}", _model(TeamStatus), "a team", body=body)

    @staticmethod
    def remove_team(team: str) -> Call[TeamRemoval]:
        return Call("DELETE", f"/v1/teams/{_id(team)}", _model(TeamRemoval), "a team removal")

    @staticmethod
    def reap() -> Call[List[str]]:
        return Call("POST", "/v1/reap", _model(List[str]), "a list of agent ids", expect=list)

    @staticmethod
    def remove(agent_id: str) -> Call[Removal]:
        return Call("DELETE", f"/v1/agents/{_id(agent_id)}", _model(Removal), "a removal")

    @staticmethod
    def prune() -> Call[Removal]:
        return Call("POST", "/v1/prune", _model(Removal), "a removal")

    @staticmethod
    def stop_daemon(stop_agents: bool) -> Call[DaemonStopResponse]:
        return Call(
            "POST",
            "/v1/daemon/stop",
            _model(DaemonStopResponse),
            "a daemon stop response",
            body={"stop_agents": stop_agents},
            extra_s=_stop_extra(None) if stop_agents else 0.0,
        )


list_query = _list_query


def decode_event(what: str, data: str) -> Event:
    """One server-sent event's data as the class of its kind."""
    try:
        value = json.loads(data)
    except ValueError as e:
        head = printable(data[:120])
        raise BadAnswer("bad_answer", f"{what}: expected an event as JSON, got {head!r} ({e})") from e
    if not isinstance(value, dict):
        kind = "list" if isinstance(value, list) else type(value).__name__
        raise BadAnswer("bad_answer", f"{what}: expected a JSON object, got a JSON {kind}")
    try:
        return build_event(value)
    except Mismatch as e:
        raise BadAnswer("bad_answer", f"{what}: expected an event: {e}") from e


def utf8_decoder() -> "codecs.IncrementalDecoder":
    """Text of a followed log: a character split between two chunks is kept whole."""
    return codecs.getincrementaldecoder("utf-8")("replace")
