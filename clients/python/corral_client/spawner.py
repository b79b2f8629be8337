"""``AgentSpawner``: the reference spawner's eight methods, served by a corral daemon.

Code written against the reference keeps its calls, argument names and
return types; only the import changes. ``AgentStatus`` here is the
reference's status word (``AgentStatus.RUNNING``), the typed client's
:class:`~corral_client.PersistentStatus`. Statuses, summaries and stop
reports are plain dicts, as the reference returned them, with corral's extra
fields beside the reference's.

Where the reference and corral's JSON API differ, this follows the
reference: an agent ended by a signal has ``exit_code`` ``-N`` (as
``subprocess.Popen.returncode`` says; ``-9`` for SIGKILL) in every dict and
response it returns, where the API (and :class:`~corral_client.Client`) says
``exit_code: null`` and ``exit_signal: N``. ``exit_signal`` stays in the dicts.

The processes are owned by the daemon instead of the Python process, so they
outlive it, are reaped the moment they exit, and are stopped together with
everything they started.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, TypedDict

from ._core import Routes
from .client import Client
from .errors import CorralError, Invalid, NotFound
from .types import PersistentStatus, SpawnRequest, SpawnResponse

#: The reference's status word: ``SPAWNING``, ``RUNNING``, ``COMPLETED``,
#: ``FAILED``, ``CANCELLED`` (a ``str``: ``AgentStatus.RUNNING == "running"``).
#: The typed client's :class:`~corral_client.PersistentStatus`, under the reference's name.
AgentStatus = PersistentStatus

__all__ = [
    "AgentSpawner",
    "AgentStatus",
    "SpawnRequest",
    "SpawnResponse",
    "StatusDict",
    "StopReportDict",
    "SummaryDict",
]


class StatusDict(TypedDict, total=False):
    """One agent's status as the drop-in returns it: the reference's fields with
    their exact names (``exit_code`` negative for a signal death), then
    corral's (see :class:`~corral_client.AgentInfo` for each field). Timestamps
    stay RFC 3339 strings, as in the reference."""

    agent_id: str
    pid: Optional[int]
    process_alive: bool
    process_status: str
    exit_code: Optional[int]
    is_zombie: bool
    cpu_percent: float
    memory_mb: float
    runtime_seconds: float
    num_threads: int
    cmdline: str
    health: str
    persistent_status: str
    started_at: str
    progress: Optional[int]
    state: str
    stop: Optional[Dict[str, Any]]
    progress_message: Optional[str]
    progress_at: Optional[str]
    exit_signal: Optional[int]
    ended_at: Optional[str]
    end_reason: Optional[str]
    run: int
    restarts: int
    next_restart_at: Optional[str]
    restart_policy: str
    stop_timeouts: List[float]
    ready: Optional[bool]
    probe: Optional[Dict[str, Any]]
    limits: Dict[str, Dict[str, Any]]
    labels: Dict[str, str]
    stdout_log: str
    stderr_log: str
    containment: str
    user: Optional[str]
    placement: Optional[Dict[str, Any]]
    tree: Optional[Dict[str, Any]]


class StopReportDict(TypedDict, total=False):
    """What one agent's stop did (``exit_code`` negative for a signal death)."""

    agent_id: str
    pid: Optional[int]
    stage: str
    duration_ms: float
    exit_code: Optional[int]
    exit_signal: Optional[int]
    descendants_killed: Optional[int]
    persistent_status: str
    complete: Optional[bool]
    incomplete_reason: Optional[str]


class SummaryDict(TypedDict, total=False):
    """Counts by status (the reference's keys) and by ``states``, and totals."""

    total: int
    spawning: int
    running: int
    completed: int
    failed: int
    cancelled: int
    zombie: int
    total_memory_mb: float
    total_cpu_percent: float
    states: Dict[str, int]


def popen_exit_code(exit_code: Optional[int], exit_signal: Optional[int]) -> Optional[int]:
    """The exit code as ``subprocess.Popen.returncode`` gives it: ``-N`` for a death by signal N."""
    if exit_code is None and exit_signal is not None:
        return -exit_signal
    return exit_code


def _popen(d: Any) -> Any:
    if isinstance(d, dict) and "exit_code" in d:
        d["exit_code"] = popen_exit_code(d.get("exit_code"), d.get("exit_signal"))
    return d


class AgentSpawner:
    """Drop-in for the reference spawner. The arguments choose the daemon as
    :class:`~corral_client.Client` does; with none, the CLI's state dir."""

    def __init__(
        self,
        state_dir: Optional[str] = None,
        socket: Optional[str] = None,
        url: Optional[str] = None,
        token: Optional[str] = None,
        autostart: bool = True,
        corral_bin: Optional[str] = None,
    ) -> None:
        #: The typed client underneath (its answers keep the API's ``exit_code``/``exit_signal``).
        self.client = Client(
            state_dir=state_dir, socket=socket, url=url, token=token, autostart=autostart, corral_bin=corral_bin
        )

    def _json(self, call: Any) -> Any:
        return self.client._run(call.raw())

    def spawn_agent(self, request: SpawnRequest) -> SpawnResponse:
        """Starts the agent and verifies it runs. A spawn the daemon refuses (a
        missing program, a bad id, an id still running) is returned as ``FAILED``
        with ``error`` set, as the reference handled spawn errors; a daemon that
        cannot be reached still raises. An agent that a signal ended inside its
        verification window has ``exit_code`` ``-N``."""
        try:
            response = self.client.spawn(request)
        except CorralError as e:
            if e.status is None:
                raise
            return SpawnResponse(
                agent_id=request.agent_id,
                status=AgentStatus.FAILED,
                run=0,
                started_at=datetime.now(timezone.utc),
                stdout_log="",
                stderr_log="",
                error=str(e),
            )
        return dataclasses.replace(response, exit_code=popen_exit_code(response.exit_code, response.exit_signal))

    def get_agent_status(self, agent_id: str) -> StatusDict:
        """The agent's status dict (the reference's fields, and corral's extras);
        :class:`~corral_client.NotFound` for an id corral does not know."""
        status: StatusDict = _popen(self._json(Routes.status(agent_id)))
        return status

    def cleanup(self, agent_id: Optional[str] = None, force: bool = False) -> List[StopReportDict]:
        """Staged stop of one agent (or of a ``PREFIX.*`` subtree), or of every agent
        when ``agent_id`` is ``None``; ``force`` goes straight to SIGKILL. One report per agent."""
        if agent_id is None:
            reports = self._json(Routes.stop_many(True, None, force, None, False))
        elif agent_id.endswith(".*"):
            reports = self._json(Routes.stop_many(False, agent_id, force, None, False))
        else:
            reports = [self._json(Routes.stop(agent_id, force, None))]
        return [_popen(r) for r in reports]

    def monitor_all_agents(self) -> Dict[str, StatusDict]:
        """Every agent's status, by id."""
        everything: Dict[str, StatusDict] = self._json(Routes.list_agents((), raw=True))
        for status in everything.values():
            _popen(status)
        return everything

    def reap_zombies(self) -> List[str]:
        """Ids of agents whose exited process had to be reaped. corral reaps at
        exit, so this is normally empty; it stays for the reference's callers."""
        return self.client.reap()

    def get_process_summary(self) -> SummaryDict:
        """Counts by state (``running``, ``failed``, …) and ``total_memory_mb``/``total_cpu_percent``."""
        summary: SummaryDict = self._json(Routes.summary())
        return summary

    def check_process_health(self, agent_id: str) -> bool:
        """True when the agent is alive and not a zombie; False otherwise, also
        for an id corral does not know (as the reference answered)."""
        try:
            return self.client.agent_health(agent_id).healthy
        except (NotFound, Invalid):
            return False

    def kill_agent(self, agent_id: str, force: bool = False) -> bool:
        """Stops one agent (staged, or SIGKILL with ``force``); True when this call
        ended it, False when it had already ended or is unknown."""
        try:
            return self.client.kill(agent_id, force=force).killed
        except (NotFound, Invalid):
            return False
