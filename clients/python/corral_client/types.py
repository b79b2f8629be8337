"""The API's shapes, for type checkers and for people reading signatures.

Answers stay plain dicts (typed as :class:`~typing.TypedDict`), as the
reference spawner returned them: code that indexes ``status["cpu_percent"]``
keeps working, and fields a newer daemon adds are simply there. The two
objects the reference treated as objects — the spawn request and its
response — are dataclasses.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any, Dict, List, Literal, Mapping, Optional, TypedDict

Health = Literal["healthy", "zombie", "completed", "failed", "unknown", "cancelled"]
PersistentStatus = Literal["spawning", "running", "completed", "failed", "cancelled"]
#: Where an agent is in its life (``state``): the daemon's own committed state.
State = Literal["starting", "running", "stopping", "paused", "backoff", "ended"]
StopStage = Literal["already_ended", "term", "second_term", "kill", "unkillable"]
StopCause = Literal["user", "max_runtime", "limit", "liveness", "leftovers", "parent"]
#: One entry of ``GET /v1/events``: ``seq``, ``at``, ``agent_id``, ``run``, ``kind``
#: and the kind's own fields (``state``, ``status``, ``pid``, ``exit_code``,
#: ``stop``, ``progress``, …; one shape per kind, see the API's OpenAPI document).
Event = Dict[str, Any]


class StopInfo(TypedDict):
    """A stop under way (``stop`` in a status while ``state`` is ``stopping``)."""

    stage: Literal["term", "second_term", "kill"]
    cause: StopCause
    began_at: str
    stage_deadline_at: Optional[str]
    unkillable: bool


class AgentStatus(str, Enum):
    """An agent's stored lifecycle state (``persistent_status``).

    A ``str`` too, so it compares equal to the wire word: ``AgentStatus.RUNNING == "running"``.
    """

    SPAWNING = "spawning"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


class RestartPolicy(TypedDict, total=False):
    """``restart`` of a spawn request; the daemon fills what is left out."""

    policy: Literal["never", "on-failure", "always"]
    max_restarts: int
    window_s: float
    backoff_s: List[float]


class Limits(TypedDict, total=False):
    """``limits`` of a spawn request: each one optional."""

    memory_mb: float
    pids: int
    nofile: int
    cpu_percent: float


class LogRotation(TypedDict, total=False):
    """``logs`` of a spawn request: copy-and-truncate rotation."""

    max_mb: float
    keep: int


@dataclasses.dataclass
class SpawnRequest:
    """What to start: the body of ``POST /v1/agents``.

    ``command`` is an argv list run without a shell (``["python3", "w.py"]``,
    not ``"python3 w.py"``). Fields left ``None`` take the daemon's defaults.
    ``probes`` and ``placement`` are passed as given (see the API contract).
    ``inherit_env=False`` starts an agent of the daemon's own user with a clean
    environment (``PATH``, ``HOME``, ``USER``, ``LOGNAME``, ``SHELL``, ``LANG``
    and ``env``) instead of the daemon's; agents of another ``user`` always get
    the clean one.
    """

    agent_id: str
    command: List[str]
    cwd: Optional[str] = None
    env: Optional[Dict[str, str]] = None
    agent_dir: Optional[str] = None
    labels: Optional[Dict[str, str]] = None
    stop_timeouts: Optional[List[float]] = None
    verify_ms: Optional[int] = None
    restart: Optional[RestartPolicy] = None
    max_runtime_s: Optional[float] = None
    limits: Optional[Limits] = None
    probes: Optional[Dict[str, Any]] = None
    user: Optional[str] = None
    logs: Optional[LogRotation] = None
    placement: Optional[Dict[str, Any]] = None
    inherit_env: Optional[bool] = None

    def to_json(self) -> Dict[str, Any]:
        """The request body: unset fields left out, paths as strings.

        A string ``command`` is refused here, because the daemon would run the
        whole string as one program name and answer with a puzzling "not found".
        """
        if isinstance(self.command, (str, bytes)):
            raise TypeError(
                f"SpawnRequest.command must be a list of strings (argv), not a string: {self.command!r}; "
                "use e.g. ['sh', '-c', '...'] for shell syntax"
            )
        body: Dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None:
                body[field.name] = value
        body["command"] = [str(a) for a in self.command]
        for key in ("cwd", "agent_dir"):
            if key in body:
                body[key] = str(body[key])
        return body


@dataclasses.dataclass
class SpawnResponse:
    """What a spawn did: the answer of ``POST /v1/agents``, as the reference's response object.

    ``status`` is ``RUNNING``, or ``COMPLETED``/``FAILED`` when the agent ended
    inside its verification window (then ``exit_code``/``exit_signal`` and
    ``error`` say how). :class:`~corral_client.AgentSpawner` also returns one,
    ``FAILED`` with ``error`` set, for a spawn the daemon refused; then the
    fields of a run (``run``, ``pid``, logs) are ``None``.
    """

    agent_id: str
    status: AgentStatus
    run: Optional[int] = None
    pid: Optional[int] = None
    started_at: Optional[str] = None
    stdout_log: Optional[str] = None
    stderr_log: Optional[str] = None
    exit_code: Optional[int] = None
    exit_signal: Optional[int] = None
    error: Optional[str] = None
    placement: Optional[Dict[str, Any]] = None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> SpawnResponse:
        """Builds one from the daemon's JSON, ignoring fields this client does not know yet."""
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in body.items() if k in known}
        fields["status"] = AgentStatus(body["status"])
        return cls(**fields)


class TreeSummary(TypedDict):
    """An agent's whole process tree (itself and every descendant)."""

    processes: int
    cpu_percent: float
    memory_mb: float


class StatusDict(TypedDict):
    """One agent's status: the reference's fields with their exact names, then corral's extras."""

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
    health: Health
    persistent_status: PersistentStatus
    state: State
    stop: Optional[StopInfo]
    started_at: str
    progress: Optional[int]
    progress_message: Optional[str]
    progress_at: Optional[str]
    exit_signal: Optional[int]
    ended_at: Optional[str]
    end_reason: Optional[str]
    run: int
    restarts: int
    next_restart_at: Optional[str]
    restart_policy: str
    ready: Optional[bool]
    probe: Optional[Dict[str, Any]]
    limits: Dict[str, Dict[str, Any]]
    labels: Dict[str, str]
    stdout_log: str
    stderr_log: str
    containment: str
    user: Optional[str]
    placement: Optional[Dict[str, Any]]
    tree: Optional[TreeSummary]


class ProcessSummary(TypedDict):
    """Counts by state and totals over live agents."""

    total: int
    spawning: int
    running: int
    completed: int
    failed: int
    cancelled: int
    zombie: int
    total_memory_mb: float
    total_cpu_percent: float
    states: Dict[State, int]


class HealthReport(TypedDict):
    """Quick health of one agent."""

    agent_id: str
    healthy: bool
    health: Health


class StopReport(TypedDict):
    """What one agent's stop did: the stage that ended it and how long it took."""

    agent_id: str
    pid: Optional[int]
    stage: StopStage
    duration_ms: float
    exit_code: Optional[int]
    exit_signal: Optional[int]
    descendants_killed: Optional[int]
    persistent_status: PersistentStatus


class KillResponse(TypedDict):
    """``killed`` is false when the agent had already ended."""

    agent_id: str
    killed: bool
    report: StopReport


class Removal(TypedDict):
    """Ids forgotten altogether, and runs deleted from the record."""

    removed: List[str]
    runs_removed: int


class RunInfo(TypedDict):
    """One run of an agent id."""

    run: int
    pid: Optional[int]
    started_at: str
    ended_at: Optional[str]
    persistent_status: PersistentStatus
    exit_code: Optional[int]
    exit_signal: Optional[int]
    end_reason: Optional[str]
    stdout_log: str
    stderr_log: str


class DaemonHealth(TypedDict):
    """The daemon answers and its store takes writes."""

    ok: bool
    version: str
    pid: int
    agents: int
    state_dir: str
    uptime_s: float
