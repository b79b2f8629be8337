"""The asyncio (or trio) twin of :class:`~corral_client.Client`: the same
methods, awaited, over one pooled ``httpx.AsyncClient``.

``events()`` and ``follow_logs()`` give :class:`AsyncStream`\\ s: async
iterators that make their request at the first item (or at ``await``), and
close their connection on ``aclose()`` or at the end of ``async with``.
Starting a daemon when none answers runs in a worker thread, so the event
loop never blocks on it. Deadlines, limits and errors are the sync client's.
"""

from __future__ import annotations

import time
from typing import (
    Any,
    AsyncGenerator,
    Awaitable,
    Callable,
    Dict,
    Generator,
    Generic,
    Iterable,
    List,
    Mapping,
    Optional,
    Tuple,
    TypeVar,
    Union,
    overload,
)

import anyio.to_thread
import httpx

from ._core import (
    ANSWER_LIMIT,
    EVENT_LIMIT,
    EVENT_STALL_S,
    IDEMPOTENT,
    Call,
    Routes,
    SpawnLike,
    Target,
    closed_unanswered,
    decode_event,
    list_query,
    utf8_decoder,
)
from ._sse import EventTooLarge, SSEDecoder
from ._transport import AsyncTransport, deadline
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

__all__ = ["AsyncClient", "AsyncStream"]

T = TypeVar("T")
_TIMEOUTS = (TimeoutError, httpx.TimeoutException)


class AsyncStream(Generic[T]):
    """An async iterator over a followed answer (a log, the event stream).

    The request is made at the first ``__anext__``, at ``await stream`` (which
    gives the stream back, opened) or at ``async with stream``; errors of the
    request (an unknown id: :class:`~corral_client.NotFound`) raise there.
    ``aclose()`` (or leaving ``async with``) closes its connection.
    """

    def __init__(self, opener: Callable[[], Awaitable[AsyncGenerator[T, None]]]) -> None:
        self._opener = opener
        self._gen: Optional[AsyncGenerator[T, None]] = None
        self._closed = False

    async def _opened(self) -> AsyncGenerator[T, None]:
        if self._gen is None:
            if self._closed:
                raise RuntimeError("the stream is closed")
            self._gen = await self._opener()
        return self._gen

    async def open(self) -> AsyncStream[T]:
        """Makes the request now (when it is not made yet); the stream."""
        await self._opened()
        return self

    def __await__(self) -> Generator[Any, None, AsyncStream[T]]:
        return self.open().__await__()

    def __aiter__(self) -> AsyncStream[T]:
        return self

    async def __anext__(self) -> T:
        if self._closed:
            raise StopAsyncIteration
        gen = await self._opened()
        return await gen.__anext__()

    async def aclose(self) -> None:
        """Stops following and closes the connection."""
        self._closed = True
        if self._gen is not None:
            await self._gen.aclose()

    async def __aenter__(self) -> AsyncStream[T]:
        return await self.open()

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


class AsyncClient:
    """A client bound to one corral daemon, for asyncio (or trio): the same
    arguments and methods as :class:`~corral_client.Client`, awaited.

    ``async with AsyncClient() as c: ...`` closes its connections at the end
    (or call :meth:`aclose`). One client may serve many tasks at once; each
    call takes a pooled connection of its own.
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
        self._http = httpx.AsyncClient(
            base_url=self._target.base_url,
            transport=AsyncTransport(self._target.uds),
            headers=self._target.headers,
            timeout=None,
            trust_env=False,
        )

    def __repr__(self) -> str:
        return f"AsyncClient({self.address!r})"

    async def aclose(self) -> None:
        """Closes the client's connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # -- transport -----------------------------------------------------------

    async def _open(
        self, call: Call[Any], *, stream: bool, stall: Optional[float] = None
    ) -> Tuple[httpx.Response, bytes]:
        """As :meth:`Client._open <corral_client.Client>`: the answer, read whole or with only its head read."""
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
                    resp = await self._http.send(request, stream=True)
                    keep = False
                    try:
                        if resp.status_code >= 400:
                            raise from_answer(resp.status_code, await self._read(resp, call.what))
                        body = b"" if stream else await self._read(resp, call.what)
                        keep = stream
                    finally:
                        if not keep:
                            await resp.aclose()
                    return resp, body
            except CorralError:
                raise
            except Exception as e:
                if not resent and call.method in IDEMPOTENT and closed_unanswered(e):
                    resent = True  # a kept connection closed under the request: once more, on a new one
                    continue
                if not started and self._target.autostart and self._target.no_daemon(e):
                    started = True
                    await anyio.to_thread.run_sync(self._target.start_daemon)
                    continue
                raise self._target.failure(e, call.what, timeout) from e

    async def _read(self, resp: httpx.Response, what: str) -> bytes:
        length = resp.headers.get("content-length", "")
        if length.isdigit() and int(length) > ANSWER_LIMIT:
            raise self._target.too_large(what)
        buf = bytearray()
        async for chunk in resp.aiter_raw():
            if len(buf) + len(chunk) > ANSWER_LIMIT:
                raise self._target.too_large(what)
            buf += chunk
        return bytes(buf)

    async def _run(self, call: Call[T]) -> T:
        _, body = await self._open(call, stream=False)
        return call.decode(body)

    async def _chunks(self, call: Call[Any], stall: Optional[float]) -> AsyncGenerator[bytes, None]:
        """Opens a streamed GET now (so errors raise here); its body as it arrives."""
        resp, _ = await self._open(call, stream=True, stall=stall)

        async def pieces() -> AsyncGenerator[bytes, None]:
            try:
                raw = resp.aiter_raw()
                while True:
                    try:
                        with deadline(None):
                            chunk = await raw.__anext__()
                    except StopAsyncIteration:
                        return
                    except _TIMEOUTS as e:
                        raise self._target.stalled(call.what, stall) from e
                    except CorralError:
                        raise
                    except Exception as e:
                        raise self._target.failure(e, call.what, None) from e
                    if chunk:
                        yield chunk
            finally:
                await resp.aclose()

        return pieces()

    # -- the daemon ----------------------------------------------------------

    async def health(self) -> DaemonHealth:
        """The daemon answers and its store takes writes (else :class:`~corral_client.Unavailable`)."""
        return await self._run(Routes.health())

    async def openapi(self) -> Dict[str, Any]:
        """The daemon's OpenAPI document: every route and shape."""
        return await self._run(Routes.openapi())

    async def metrics(self) -> str:
        """``GET /metrics``: Prometheus text format (bearer token required over TCP too)."""
        return await self._run(Routes.metrics())

    async def stop_daemon(self, stop_agents: bool = False) -> DaemonStopResponse:
        """Stops the daemon; its agents keep running unless ``stop_agents``
        (then the reports of their stops). It answers, then stops serving."""
        return await self._run(Routes.stop_daemon(stop_agents))

    # -- spawning ------------------------------------------------------------

    async def spawn(self, request: SpawnLike) -> SpawnResponse:
        """Starts an agent and answers after its verification window.

        A program that cannot start raises :class:`~corral_client.SpawnFailed`
        (with the OS's reason); one that ended inside the window is answered
        with ``status`` ``COMPLETED`` or ``FAILED``. A live id raises
        :class:`~corral_client.Conflict`.
        """
        return await self._run(Routes.spawn(request))

    async def spawn_batch(self, requests: Iterable[SpawnLike]) -> List[Union[SpawnResponse, CorralError]]:
        """Starts many agents in one request, all verification windows at once.

        One result per request, in request order: a :class:`SpawnResponse`, or
        the error that entry alone got (a :class:`~corral_client.CorralError`
        subclass, returned rather than raised so the others are not lost).
        """
        return await self._run(Routes.spawn_batch(requests))

    async def restart(
        self, agent_id: str, force: bool = False, stop_timeouts: Optional[List[float]] = None
    ) -> SpawnResponse:
        """The agent's staged stop (when it is live), then a new run with the request it was last spawned with."""
        return await self._run(Routes.restart(agent_id, force, stop_timeouts))

    async def restart_many(
        self,
        *,
        all: bool = False,
        selector: Optional[str] = None,
        force: bool = False,
        stop_timeouts: Optional[List[float]] = None,
    ) -> List[Union[SpawnResponse, CorralError]]:
        """Restarts every agent (``all=True``) or a selector's; one result each, as :meth:`spawn_batch`."""
        return await self._run(Routes.restart_many(all, selector, force, stop_timeouts))

    async def pause(
        self, agent_id: Optional[str] = None, *, selector: Optional[str] = None, all: bool = False
    ) -> List[PauseReport]:
        """Freezes an agent's whole tree (or a selector's, or every agent's): state ``paused``."""
        return await self._run(Routes.pause(False, agent_id, selector, all))

    async def resume(
        self, agent_id: Optional[str] = None, *, selector: Optional[str] = None, all: bool = False
    ) -> List[PauseReport]:
        """Thaws what :meth:`pause` froze: state ``running`` again."""
        return await self._run(Routes.pause(True, agent_id, selector, all))

    # -- observing -----------------------------------------------------------

    @overload
    async def list_agents(
        self,
        selector: Optional[str] = None,
        state: Union[str, Iterable[str], None] = None,
        label: Union[str, Mapping[str, str], Iterable[str], None] = None,
        fields: None = None,
        *,
        node: Union[str, Iterable[str], None] = None,
    ) -> Dict[str, AgentInfo]: ...

    @overload
    async def list_agents(
        self,
        selector: Optional[str] = None,
        state: Union[str, Iterable[str], None] = None,
        label: Union[str, Mapping[str, str], Iterable[str], None] = None,
        *,
        fields: Union[str, Iterable[str]],
        node: Union[str, Iterable[str], None] = None,
    ) -> Dict[str, Dict[str, Any]]: ...

    async def list_agents(
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
        return await self._run(Routes.list_agents(query, raw=fields is not None))

    async def status(self, agent_id: str) -> AgentInfo:
        """One agent's status (:class:`~corral_client.NotFound` for an unknown id)."""
        return await self._run(Routes.status(agent_id))

    async def agent_health(self, agent_id: str) -> HealthReport:
        """Quick health: ``healthy`` is ``health == "healthy"``."""
        return await self._run(Routes.agent_health(agent_id))

    async def summary(self) -> ProcessSummary:
        """Counts by stored status and by state, and totals over live agents."""
        return await self._run(Routes.summary())

    async def runs(self, agent_id: str) -> List[RunInfo]:
        """Every run of an id, oldest first."""
        return await self._run(Routes.runs(agent_id))

    async def history(self, agent_id: str, since: Optional[float] = None) -> AgentHistory:
        """The agent's recent CPU and memory (its whole tree), oldest first; only
        points after ``since`` (Unix seconds) when given."""
        return await self._run(Routes.history(agent_id, since))

    async def ui_login(self) -> UiLogin:
        """A one-time login URL for the web dashboard (refused from inside an agent)."""
        return await self._run(Routes.ui_login())

    async def progress(self, agent_id: str, percent: int, message: Optional[str] = None) -> AgentInfo:
        """Reports progress (0–100). From inside an agent, only its own (else :class:`~corral_client.Forbidden`)."""
        return await self._run(Routes.progress(agent_id, percent, message))

    async def wait(self, agent_id: str, timeout_s: Optional[float] = None) -> AgentInfo:
        """Waits until the current run has ended and will not be restarted; its final status.

        Raises :class:`~corral_client.Timeout` (a :class:`TimeoutError`) after
        ``timeout_s`` (the daemon's default: 30 s; at most 3600).
        """
        return await self._run(Routes.wait(agent_id, timeout_s))

    async def logs(
        self, agent_id: str, stream: str = "stdout", tail: Optional[int] = None, run: Optional[int] = None
    ) -> str:
        """A run's output so far: ``stream`` ``stdout``, ``stderr`` or ``both``; the last
        ``tail`` lines; run ``run`` (default: the current one)."""
        return await self._run(Routes.logs(agent_id, stream, tail, run))

    def follow_logs(
        self, agent_id: str, stream: str = "stdout", tail: Optional[int] = None, run: Optional[int] = None
    ) -> AsyncStream[str]:
        """Like :meth:`logs`, then what is written next, until the run ends.

        ``async for piece in client.follow_logs(...)`` makes the request at the
        first item; ``await client.follow_logs(...)`` makes it at once (so an
        unknown id raises there) and gives the stream. Pieces come as the agent
        wrote them, not split into lines; the stream ends when the run has
        ended. Close it (``aclose()``, or ``async with``) to stop following early.
        """
        call = Routes.logs(agent_id, stream, tail, run, follow=True)

        async def opened() -> AsyncGenerator[str, None]:
            chunks = await self._chunks(call, None)

            async def text() -> AsyncGenerator[str, None]:
                decoder = utf8_decoder()
                try:
                    async for chunk in chunks:
                        piece = decoder.decode(chunk)
                        if piece:
                            yield piece
                    rest = decoder.decode(b"", final=True)
                    if rest:
                        yield rest
                finally:
                    await chunks.aclose()

            return text()

        return AsyncStream(opened)

    def events(self, since: Optional[int] = None, follow: bool = True) -> AsyncStream[Event]:
        """The event log from after ``since``, in ``seq`` order, one typed
        :class:`~corral_client.Event` each (:class:`~corral_client.StateEvent`,
        :class:`~corral_client.ProgressEvent`, …); with ``follow`` it waits for
        new ones until closed.

        ``async for event in client.events(...)`` makes the request at the
        first item; ``await client.events(...)`` makes it at once and gives the
        stream. Resume after a disconnect with ``since=`` the last ``seq`` seen:
        every event arrives exactly once.
        """
        call = Routes.events(since, follow)

        async def opened() -> AsyncGenerator[Event, None]:
            chunks = await self._chunks(call, EVENT_STALL_S)

            async def parse() -> AsyncGenerator[Event, None]:
                decoder = SSEDecoder(EVENT_LIMIT)
                try:
                    async for chunk in chunks:
                        try:
                            batch = decoder.feed(chunk)
                        except EventTooLarge:
                            raise self._target.event_too_large(call.what) from None
                        for sse in batch:
                            yield decode_event(call.what, sse.data)
                finally:
                    await chunks.aclose()

            return parse()

        return AsyncStream(opened)

    # -- stopping and forgetting --------------------------------------------

    async def stop(self, agent_id: str, force: bool = False, stop_timeouts: Optional[List[float]] = None) -> StopReport:
        """Staged stop of the agent's whole tree (SIGTERM, SIGTERM, SIGKILL; ``force``: SIGKILL
        at once). ``stop_timeouts`` overrides the agent's waits for this call."""
        return await self._run(Routes.stop(agent_id, force, stop_timeouts))

    async def kill(self, agent_id: str, force: bool = False) -> KillResponse:
        """Stops one agent; ``killed`` is false when it had already ended."""
        return await self._run(Routes.kill(agent_id, force))

    async def stop_many(
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
        return await self._run(Routes.stop_many(all, selector, force, stop_timeouts, live_only))

    # -- teams ---------------------------------------------------------------

    async def teams(self) -> List[TeamStatus]:
        """Every team with budgets, with what each uses."""
        return await self._run(Routes.teams())

    async def team(self, team: str) -> TeamStatus:
        """One team: its budgets, usage and members (:class:`~corral_client.NotFound` for a
        team with no budget and no agent)."""
        return await self._run(Routes.team(team))

    async def set_team(
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
        return await self._run(Routes.set_team(team, memory_mb, cpu_percent, pids, max_agents))

    async def remove_team(self, team: str) -> TeamRemoval:
        """Removes the budgets of ``team``; answers what they were."""
        return await self._run(Routes.remove_team(team))

    async def reap(self) -> List[str]:
        """Sweeps for unreaped processes; the agents it had to reap (normally none)."""
        return await self._run(Routes.reap())

    async def remove(self, agent_id: str) -> Removal:
        """Forgets an ended agent: its runs, and its logs in the default place
        (:class:`~corral_client.Conflict` while it is live)."""
        return await self._run(Routes.remove(agent_id))

    async def prune(self) -> Removal:
        """Forgets every ended run (live agents keep their current run)."""
        return await self._run(Routes.prune())
