"""A typed client for every route of corral's HTTP/JSON API (blocking).

It speaks HTTP/1.1 through httpx over the daemon's Unix socket (the default)
or over TCP with a bearer token, and keeps its connections for the next call
(close it, or use it as a context manager, to let them go). Like the
``corral`` CLI, it starts a daemon for the state dir when none answers on its
socket. :class:`~corral_client.AsyncClient` has the same methods, awaited.

It does not trust what answers either. Every call has one deadline for the
whole exchange — connecting, sending, the answer's head and all of its body —
so a peer dripping a byte a second cannot stretch it; an answer's body is read
up to :data:`ANSWER_LIMIT` bytes and no further; an answer that is not HTTP,
not JSON, or not the expected shape raises :class:`~corral_client.BadAnswer`.
Streams (a followed log, the event stream) have the deadline until their
answer begins, then last as long as what they follow.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Generator, Iterable, List, Mapping, Optional, Tuple, TypeVar, Union, overload

import httpx

from ._core import (
    ANSWER_LIMIT,
    DEFAULT_WAIT_S,
    EVENT_LIMIT,
    EVENT_STALL_S,
    IDEMPOTENT,
    STARTUP_DEADLINE_S,
    Call,
    Routes,
    SpawnLike,
    Target,
    closed_unanswered,
    decode_event,
    default_state_dir,
    list_query,
    utf8_decoder,
)
from ._sse import EventTooLarge, SSEDecoder
from ._transport import Transport, deadline
from .errors import CorralError, from_answer
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
    SpawnResponse,
    StopReport,
    TeamRemoval,
    TeamStatus,
    UiLogin,
)

__all__ = [
    "ANSWER_LIMIT",
    "DEFAULT_WAIT_S",
    "EVENT_LIMIT",
    "EVENT_STALL_S",
    "STARTUP_DEADLINE_S",
    "Client",
    "default_state_dir",
]

T = TypeVar("T")
_TIMEOUTS = (TimeoutError, httpx.TimeoutException)


class Client:
    """A client bound to one corral daemon.

    Exactly one of: ``state_dir`` (its socket, ``<state_dir>/corral.sock``),
    ``socket`` (that socket; no daemon is started for it) or ``url``
    (``HOST:PORT`` of ``corral daemon --listen``, with ``token`` or
    ``token_file``). With none: inside an agent, the socket its daemon gave
    it (``$CORRAL_SOCKET``, which serves the agent's own team); elsewhere the
    state dir, found as the CLI finds it.
    For a state dir with ``autostart`` (the default), a daemon is started with
    ``corral --state-dir DIR daemon --detach`` when none answers — ``corral``
    being ``corral_bin``, else ``$CORRAL_BIN``, else found on ``PATH``.

    ``timeout`` is the deadline of each call (seconds, ``None`` for none):
    connecting, sending and reading the whole answer must fit in it, or
    :class:`~corral_client.DeadlineExceeded` is raised. Calls that ask the
    daemon to take time get that time on top: a wait its ``timeout_s``, a
    spawn its verification window, a stop or kill its stage timeouts (15
    minutes when the call names none). A followed stream has the deadline
    until its answer begins; the event stream then fails after
    :data:`EVENT_STALL_S` without a byte (the daemon sends keep-alives). Time
    spent starting a daemon does not count: that has its own 10 s.

    One client may be used from many threads; its connections are reused.
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
        self._target = Target(
            state_dir=state_dir,
            socket=socket,
            url=url,
            token=token,
            token_file=token_file,
            autostart=autostart,
            corral_bin=corral_bin,
        )
        self._timeout = timeout
        #: The state dir (``None`` for ``socket=`` or ``url=``).
        self.state_dir = self._target.state_dir
        #: The socket's path, or ``HOST:PORT``.
        self.address = self._target.address
        self._http = httpx.Client(
            base_url=self._target.base_url,
            transport=Transport(self._target.uds),
            headers=self._target.headers,
            timeout=None,
            trust_env=False,
        )

    def __repr__(self) -> str:
        return f"Client({self.address!r})"

    def close(self) -> None:
        """Closes the client's connections (a followed stream still open ends)."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- transport -----------------------------------------------------------

    def _open(self, call: Call[Any], *, stream: bool, stall: Optional[float] = None) -> Tuple[httpx.Response, bytes]:
        """Sends ``call`` and returns its answer: read whole (``stream`` false) or
        with only its head read. An error answer is raised; a missing daemon is
        started first when that is allowed."""
        timeout = call.deadline_s(self._timeout)
        request = self._http.build_request(
            call.method,
            call.path,
            params=list(call.query) or None,
            content=call.content(),
            headers={"Content-Type": "application/json"} if call.body is not None else None,
            timeout=httpx.Timeout(None, read=stall),
        )
        started = resent = False
        while True:
            at = None if timeout is None else time.monotonic() + timeout
            try:
                with deadline(at):
                    resp = self._http.send(request, stream=True)
                    keep = False
                    try:
                        if resp.status_code >= 400:
                            raise from_answer(resp.status_code, self._read(resp, call.what))
                        body = b"" if stream else self._read(resp, call.what)
                        keep = stream
                    finally:
                        if not keep:
                            resp.close()
                    return resp, body
            except CorralError:
                raise
            except Exception as e:
                if not resent and call.method in IDEMPOTENT and closed_unanswered(e):
                    resent = True  # a kept connection closed under the request: once more, on a new one
                    continue
                if not started and self._target.autostart and self._target.no_daemon(e):
                    started = True
                    self._target.start_daemon()
                    continue  # the deadline is for the exchange with a daemon; starting one had its own
                raise self._target.failure(e, call.what, timeout) from e

    def _read(self, resp: httpx.Response, what: str) -> bytes:
        """An answer's whole body, up to :data:`ANSWER_LIMIT` bytes."""
        length = resp.headers.get("content-length", "")
        if length.isdigit() and int(length) > ANSWER_LIMIT:
            raise self._target.too_large(what)
        buf = bytearray()
        for chunk in resp.iter_raw():
            if len(buf) + len(chunk) > ANSWER_LIMIT:
                raise self._target.too_large(what)
            buf += chunk
        return bytes(buf)

    def _run(self, call: Call[T]) -> T:
        _, body = self._open(call, stream=False)
        return call.decode(body)

    def _chunks(self, call: Call[Any], stall: Optional[float]) -> Generator[bytes, None, None]:
        """Opens a streamed GET now (so errors raise here) and yields its body as it arrives."""
        resp, _ = self._open(call, stream=True, stall=stall)

        def pieces() -> Generator[bytes, None, None]:
            try:
                raw = resp.iter_raw()
                while True:
                    try:
                        with deadline(None):
                            chunk = next(raw, None)
                    except _TIMEOUTS as e:
                        raise self._target.stalled(call.what, stall) from e
                    except CorralError:
                        raise
                    except Exception as e:
                        raise self._target.failure(e, call.what, None) from e
                    if chunk is None:
                        return
                    if chunk:
                        yield chunk
            finally:
                resp.close()

        return pieces()

    # -- the daemon ----------------------------------------------------------

    def health(self) -> DaemonHealth:
        """The daemon answers and its store takes writes (else :class:`~corral_client.Unavailable`)."""
        return self._run(Routes.health())

    def openapi(self) -> Dict[str, Any]:
        """The daemon's OpenAPI document: every route and shape."""
        return self._run(Routes.openapi())

    def metrics(self) -> str:
        """``GET /metrics``: Prometheus text format (bearer token required over TCP too)."""
        return self._run(Routes.metrics())

    def stop_daemon(self, stop_agents: bool = False) -> DaemonStopResponse:
        """Stops the daemon; its agents keep running unless ``stop_agents``
        (then the reports of their stops). It answers, then stops serving."""
        return self._run(Routes.stop_daemon(stop_agents))

    # -- spawning ------------------------------------------------------------

    def spawn(self, request: SpawnLike) -> SpawnResponse:
        """Starts an agent and answers after its verification window.

        A program that cannot start raises :class:`~corral_client.SpawnFailed`
        (with the OS's reason); one that ended inside the window is answered
        with ``status`` ``COMPLETED`` or ``FAILED``. A live id raises
        :class:`~corral_client.Conflict`.
        """
        return self._run(Routes.spawn(request))

    def spawn_batch(self, requests: Iterable[SpawnLike]) -> List[Union[SpawnResponse, CorralError]]:
        """Starts many agents in one request, all verification windows at once.

        One result per request, in request order: a :class:`SpawnResponse`, or
        the error that entry alone got (a :class:`~corral_client.CorralError`
        subclass, returned rather than raised so the others are not lost).
        """
        return self._run(Routes.spawn_batch(requests))

    def restart(self, agent_id: str, force: bool = False, stop_timeouts: Optional[List[float]] = None) -> SpawnResponse:
        """The agent's staged stop (when it is live), then a new run with the request it was last spawned with."""
        return self._run(Routes.restart(agent_id, force, stop_timeouts))

    def restart_many(
        self,
        *,
        all: bool = False,
        selector: Optional[str] = None,
        force: bool = False,
        stop_timeouts: Optional[List[float]] = None,
    ) -> List[Union[SpawnResponse, CorralError]]:
        """Restarts every agent (``all=True``) or a selector's; one result each, as :meth:`spawn_batch`."""
        return self._run(Routes.restart_many(all, selector, force, stop_timeouts))

    def pause(
        self, agent_id: Optional[str] = None, *, selector: Optional[str] = None, all: bool = False
    ) -> List[PauseReport]:
        """Freezes an agent's whole tree (or a selector's, or every agent's): state ``paused``."""
        return self._run(Routes.pause(False, agent_id, selector, all))

    def resume(
        self, agent_id: Optional[str] = None, *, selector: Optional[str] = None, all: bool = False
    ) -> List[PauseReport]:
        """Thaws what :meth:`pause` froze: state ``running`` again."""
        return self._run(Routes.pause(True, agent_id, selector, all))

    # -- observing -----------------------------------------------------------

    @overload
    def list_agents(
        self,
        selector: Optional[str] = None,
        state: Union[str, Iterable[str], None] = None,
        label: Union[str, Mapping[str, str], Iterable[str], None] = None,
        fields: None = None,
        *,
        node: Union[str, Iterable[str], None] = None,
    ) -> Dict[str, AgentInfo]: ...

    @overload
    def list_agents(
        self,
        selector: Optional[str] = None,
        state: Union[str, Iterable[str], None] = None,
        label: Union[str, Mapping[str, str], Iterable[str], None] = None,
        *,
        fields: Union[str, Iterable[str]],
        node: Union[str, Iterable[str], None] = None,
    ) -> Dict[str, Dict[str, Any]]: ...

    def list_agents(
        self,
        selector: Optional[str] = None,
        state: Union[str, Iterable[str], None] = None,
        label: Union[str, Mapping[str, str], Iterable[str], None] = None,
        fields: Union[str, Iterable[str], None] = None,
        *,
        node: Union[str, Iterable[str], None] = None,
    ) -> Union[Dict[str, AgentInfo], Dict[str, Dict[str, Any]]]:
        """Every agent's status, by id (the reference's ``monitor_all_agents``).

        The daemon filters before it answers: ``selector`` (an id or
        ``PREFIX.*``), ``state`` (``"running"`` or ``["running", "paused"]``),
        ``label`` (``{"team": "a"}`` or ``"team=a"`` or ``["team=a", "tier=1"]``:
        all must match), ``node`` (``"n2"`` or ``["n1", "n3"]``: only agents
        whose cluster job runs on one of those nodes). With ``fields`` (``["state", "progress"]``) each
        status is a plain dict of only those fields and ``agent_id``, as JSON.
        A bad value raises :class:`~corral_client.Invalid` naming it.
        """
        query = list_query(selector, state, label, fields, node)
        return self._run(Routes.list_agents(query, raw=fields is not None))  # type: ignore[no-any-return]

    def status(self, agent_id: str) -> AgentInfo:
        """One agent's status (:class:`~corral_client.NotFound` for an unknown id)."""
        return self._run(Routes.status(agent_id))

    def agent_health(self, agent_id: str) -> HealthReport:
        """Quick health: ``healthy`` is ``health == "healthy"``."""
        return self._run(Routes.agent_health(agent_id))

    def summary(self) -> ProcessSummary:
        """Counts by stored status and by state, and totals over live agents."""
        return self._run(Routes.summary())

    def runs(self, agent_id: str) -> List[RunInfo]:
        """Every run of an id, oldest first."""
        return self._run(Routes.runs(agent_id))

    def history(self, agent_id: str, since: Optional[float] = None) -> AgentHistory:
        """The agent's recent CPU and memory (its whole tree), oldest first; only
        points after ``since`` (Unix seconds) when given."""
        return self._run(Routes.history(agent_id, since))

    def ui_login(self) -> UiLogin:
        """A one-time login URL for the web dashboard (refused from inside an agent)."""
        return self._run(Routes.ui_login())

    def progress(self, agent_id: str, percent: int, message: Optional[str] = None) -> AgentInfo:
        """Reports progress (0–100). From inside an agent, only its own (else :class:`~corral_client.Forbidden`)."""
        return self._run(Routes.progress(agent_id, percent, message))

    def wait(self, agent_id: str, timeout_s: Optional[float] = None) -> AgentInfo:
        """Waits until the current run has ended and will not be restarted; its final status.

        Raises :class:`~corral_client.Timeout` (a :class:`TimeoutError`) after
        ``timeout_s`` (the daemon's default: 30 s; at most 3600).
        """
        return self._run(Routes.wait(agent_id, timeout_s))

    def logs(self, agent_id: str, stream: str = "stdout", tail: Optional[int] = None, run: Optional[int] = None) -> str:
        """A run's output so far: ``stream`` ``stdout``, ``stderr`` or ``both``; the last
        ``tail`` lines; run ``run`` (default: the current one)."""
        return self._run(Routes.logs(agent_id, stream, tail, run))

    def follow_logs(
        self, agent_id: str, stream: str = "stdout", tail: Optional[int] = None, run: Optional[int] = None
    ) -> Generator[str, None, None]:
        """Like :meth:`logs`, then what is written next, until the run ends.

        The request is made now; the iterator yields text as the daemon sends
        it (pieces as the agent wrote them, not split into lines) and ends when
        the run has ended. Close it (or leave the loop) to stop following early.
        """
        chunks = self._chunks(Routes.logs(agent_id, stream, tail, run, follow=True), None)

        def text() -> Generator[str, None, None]:
            decoder = utf8_decoder()
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
        """The event log from after ``since``, in ``seq`` order, one typed
        :class:`~corral_client.Event` each (:class:`~corral_client.StateEvent`,
        :class:`~corral_client.ProgressEvent`, …); with ``follow`` it waits for
        new ones until closed.

        The request is made now. Resume after a disconnect with ``since=`` the
        last ``seq`` seen: every event arrives exactly once.
        """
        call = Routes.events(since, follow)
        chunks = self._chunks(call, EVENT_STALL_S)

        def parse() -> Generator[Event, None, None]:
            decoder = SSEDecoder(EVENT_LIMIT)
            try:
                for chunk in chunks:
                    try:
                        batch = decoder.feed(chunk)
                    except EventTooLarge:
                        raise self._target.event_too_large(call.what) from None
                    for sse in batch:
                        yield decode_event(call.what, sse.data)
            finally:
                chunks.close()

        return parse()

    # -- stopping and forgetting --------------------------------------------

    def stop(self, agent_id: str, force: bool = False, stop_timeouts: Optional[List[float]] = None) -> StopReport:
        """Staged stop of the agent's whole tree (SIGTERM, SIGTERM, SIGKILL; ``force``: SIGKILL
        at once). ``stop_timeouts`` overrides the agent's waits for this call."""
        return self._run(Routes.stop(agent_id, force, stop_timeouts))

    def kill(self, agent_id: str, force: bool = False) -> KillResponse:
        """Stops one agent; ``killed`` is false when it had already ended."""
        return self._run(Routes.kill(agent_id, force))

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
        return self._run(Routes.stop_many(all, selector, force, stop_timeouts, live_only))

    # -- teams ---------------------------------------------------------------

    def teams(self) -> List[TeamStatus]:
        """Every team with budgets, with what each uses."""
        return self._run(Routes.teams())

    def team(self, team: str) -> TeamStatus:
        """One team: its budgets, usage and members (:class:`~corral_client.NotFound` for a
        team with no budget and no agent)."""
        return self._run(Routes.team(team))

    def set_team(
        self,
        team: str,
        *,
        memory_mb: Optional[float] = None,
        cpu_percent: Optional[float] = None,
        pids: Optional[int] = None,
        max_agents: Optional[int] = None,
    ) -> TeamStatus:
        """Sets (replaces) the budgets of ``team``: the agent ``team`` and every agent under it.
        A spawn over ``max_agents`` then raises :class:`~corral_client.OverBudget`."""
        return self._run(Routes.set_team(team, memory_mb, cpu_percent, pids, max_agents))

    def remove_team(self, team: str) -> TeamRemoval:
        """Removes the budgets of ``team``; answers what they were."""
        return self._run(Routes.remove_team(team))

    def reap(self) -> List[str]:
        """Sweeps for unreaped processes; the agents it had to reap (normally none)."""
        return self._run(Routes.reap())

    def remove(self, agent_id: str) -> Removal:
        """Forgets an ended agent: its runs, and its logs in the default place
        (:class:`~corral_client.Conflict` while it is live)."""
        return self._run(Routes.remove(agent_id))

    def prune(self) -> Removal:
        """Forgets every ended run (live agents keep their current run)."""
        return self._run(Routes.prune())
