"""The API's shapes as Python types, one per schema of ``/v1/openapi.json``.

- Answers are dataclasses (:class:`AgentInfo`, :class:`SpawnResponse`,
  :class:`StopReport`, …), built from the daemon's JSON: words as enums
  (:class:`PersistentStatus`, :class:`AgentState`, …), timestamps as aware
  UTC :class:`~datetime.datetime` objects. Fields a newer daemon adds are
  ignored; a word a newer daemon adds stays a plain ``str``.
- Request parts the caller writes (:class:`RestartPolicy`, :class:`Limits`, …)
  are ``TypedDict``\\ s: plain dicts, checked by type checkers.
- Events are one class per ``kind`` (:class:`StateEvent`, :class:`ProgressEvent`,
  …), all :class:`Event`\\ s; a kind this client does not know arrives as an
  :class:`UnknownEvent`.

Names follow the API's schemas (and the Rust crate's types), with one
exception: the status *object*, ``AgentStatus`` in the API and in Rust, is
:class:`AgentInfo` here, because in the reference Python spawner (and in
:mod:`corral_client.spawner`) ``AgentStatus`` is the status *word*, which the
typed client calls :class:`PersistentStatus`.

``corral_client.openapi.check_models`` compares every one of these with the
daemon's OpenAPI document; the test suite fails when they drift apart.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any, Dict, List, Literal, Mapping, Optional, Type, TypedDict

# ---------------------------------------------------------------------------
# Timestamps
# ---------------------------------------------------------------------------

_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
    r"\s*(?:([Zz])|([+-])(\d{2}):?(\d{2})?)?"
)


def parse_timestamp(text: str) -> datetime:
    """An RFC 3339 / ISO 8601 timestamp as an aware :class:`~datetime.datetime`.

    Takes what ``datetime.fromisoformat`` refuses before Python 3.11: a
    trailing ``Z``, fractions of any length (nanoseconds are cut to
    microseconds), ``,`` as the decimal sign and offsets without a colon. A
    timestamp without an offset is taken as UTC (corral writes UTC only).
    Raises :class:`ValueError` for anything else.
    """
    m = _TIMESTAMP.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = m.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    tz = timezone.utc
    if sign is not None:
        offset = timedelta(hours=int(off_h), minutes=int(off_m or 0))
        tz = timezone(-offset if sign == "-" else offset)
    try:
        return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0), micro, tzinfo=tz)
    except ValueError as e:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r} ({e})") from None


# ---------------------------------------------------------------------------
# Words
# ---------------------------------------------------------------------------


class _Word(str, Enum):
    """A word of the API: a ``str`` too, so ``PersistentStatus.RUNNING == "running"``."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class PersistentStatus(_Word):
    """The stored status of a run (``persistent_status``; the API's ``PersistentStatus``).

    The drop-in :class:`~corral_client.AgentSpawner` calls it ``AgentStatus``,
    as the reference spawner did.
    """

    SPAWNING = "spawning"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class AgentState(_Word):
    """Where an agent is in its life (``state``): the daemon's own committed state."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    PAUSED = "paused"
    BACKOFF = "backoff"
    ENDED = "ended"


class Health(_Word):
    """Live health (``health``): the reference's five words, and ``cancelled``."""

    HEALTHY = "healthy"
    ZOMBIE = "zombie"
    COMPLETED = "completed"
    FAILED = "failed"
    UNKNOWN = "unknown"
    CANCELLED = "cancelled"
    PAUSED = "paused"


class PauseOutcome(_Word):
    """What a pause or a resume did to one agent (``outcome`` of a :class:`PauseReport`)."""

    PAUSED = "paused"
    RESUMED = "resumed"
    ALREADY_PAUSED = "already_paused"
    NOT_PAUSED = "not_paused"
    SKIPPED = "skipped"


class StopStage(_Word):
    """The stage that ended an agent (a stop report), or the one under way."""

    ALREADY_ENDED = "already_ended"
    TERM = "term"
    SECOND_TERM = "second_term"
    KILL = "kill"
    UNKILLABLE = "unkillable"


class StopCause(_Word):
    """Why a stop began."""

    USER = "user"
    MAX_RUNTIME = "max_runtime"
    LIMIT = "limit"
    LIVENESS = "liveness"
    LEFTOVERS = "leftovers"
    PARENT = "parent"


class RestartMode(_Word):
    """A restart policy's ``policy``."""

    NEVER = "never"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"


# ---------------------------------------------------------------------------
# Requests: what the caller writes
# ---------------------------------------------------------------------------


class RestartPolicy(TypedDict, total=False):
    """``restart`` of a spawn request; the daemon fills what is left out."""

    policy: Literal["never", "on-failure", "always"]
    max_restarts: int
    window_s: float
    backoff_s: List[float]


class Limits(TypedDict, total=False):
    """``limits`` of a spawn request: each one optional."""

    memory_mb: Optional[float]
    pids: Optional[int]
    nofile: Optional[int]
    cpu_percent: Optional[float]


class _LogRotationRequired(TypedDict):
    max_mb: float


class LogRotation(_LogRotationRequired, total=False):
    """``logs`` of a spawn request: copy-and-truncate rotation past ``max_mb``."""

    keep: int


class Probes(TypedDict, total=False):
    """``probes`` of a spawn request. A probe is one of ``{"exec": [argv]}``,
    ``{"http": URL}``, ``{"tcp": "HOST:PORT"}``, ``{"progress_stale_s": S}`` or
    (readiness only) ``{"log": REGEX}``."""

    liveness: Optional[Dict[str, Any]]
    readiness: Optional[Dict[str, Any]]
    interval_s: float
    timeout_s: float
    failures: int


class SlurmPlacement(TypedDict, total=False):
    """Run the agent as a job of a Slurm cluster."""

    partition: Optional[str]
    nodes: Optional[str]
    cpus: Optional[int]
    mem_mb: Optional[int]
    time_limit: Optional[str]
    requeue: Optional[bool]


class Placement(TypedDict, total=False):
    """``placement`` of a spawn request."""

    slurm: Optional[SlurmPlacement]


@dataclasses.dataclass
class SpawnRequest:
    """What to start: the body of ``POST /v1/agents``.

    ``command`` is an argv list run without a shell (``["python3", "w.py"]``,
    not ``"python3 w.py"``). Fields left ``None`` take the daemon's defaults.
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
    probes: Optional[Probes] = None
    user: Optional[str] = None
    logs: Optional[LogRotation] = None
    placement: Optional[Placement] = None
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


class CleanupOptions(TypedDict, total=False):
    """Body of a one-agent stop or restart."""

    force: bool
    stop_timeouts: Optional[List[float]]


class KillRequest(TypedDict, total=False):
    """Body of ``POST /v1/agents/{id}/kill``."""

    force: bool


class StopManyRequest(TypedDict, total=False):
    """Body of ``POST /v1/stop`` and ``POST /v1/restart``."""

    all: bool
    selector: Optional[str]
    force: bool
    stop_timeouts: Optional[List[float]]
    live_only: bool


class PauseRequest(TypedDict, total=False):
    """Body of ``POST /v1/pause`` and ``POST /v1/resume``: one of the three."""

    agent_id: Optional[str]
    selector: Optional[str]
    all: bool


class _ProgressUpdateRequired(TypedDict):
    progress: int


class ProgressUpdate(_ProgressUpdateRequired, total=False):
    """Body of ``PUT /v1/agents/{id}/progress``."""

    message: Optional[str]


class DaemonStopRequest(TypedDict, total=False):
    """Body of ``POST /v1/daemon/stop``."""

    stop_agents: bool


class BatchRequest(TypedDict):
    """Body of ``POST /v1/agents/batch``: spawn requests as JSON."""

    agents: List[Dict[str, Any]]


# ---------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class StopInfo:
    """A stop under way (``stop`` of a status while ``state`` is ``stopping``)."""

    stage: StopStage
    cause: StopCause
    began_at: datetime
    stage_deadline_at: Optional[datetime] = None
    unkillable: bool = False


@dataclasses.dataclass
class TreeSummary:
    """An agent's whole process tree (itself and every descendant)."""

    processes: int
    cpu_percent: float
    memory_mb: float


@dataclasses.dataclass
class LimitState:
    """A limit in force, and how it is enforced (``cgroup``, ``rlimit`` or ``sampler``)."""

    value: float
    enforced_by: str


@dataclasses.dataclass
class ProbeState:
    """A probe's latest result."""

    kind: str
    consecutive_failures: int
    last_at: Optional[datetime] = None
    last_output: Optional[str] = None
    last_result: Optional[str] = None


@dataclasses.dataclass
class ProbesState:
    """The latest result of each probe."""

    liveness: Optional[ProbeState] = None
    readiness: Optional[ProbeState] = None


@dataclasses.dataclass
class PlacementInfo:
    """Where an agent runs when it runs on a cluster engine."""

    engine: str
    job_id: str
    node: Optional[str] = None
    pending_reason: Optional[str] = None


@dataclasses.dataclass
class AgentInfo:
    """One agent's status: the API's (and Rust's) ``AgentStatus`` object.

    The reference's fields keep their names and meanings (``process_alive``,
    ``cpu_percent``, ``health``, ``persistent_status``, …); the others are
    corral's. ``exit_code`` is ``None`` when a signal ended the agent; then
    ``exit_signal`` names it (the drop-in spawner's dicts give ``-signal``
    instead, as ``subprocess.Popen`` does).
    """

    agent_id: str
    process_alive: bool
    process_status: str
    is_zombie: bool
    cpu_percent: float
    memory_mb: float
    runtime_seconds: float
    num_threads: int
    cmdline: str
    health: Health
    persistent_status: PersistentStatus
    state: AgentState
    started_at: datetime
    run: int
    restarts: int
    restart_policy: str
    stop_timeouts: List[float]
    labels: Dict[str, str]
    stdout_log: str
    stderr_log: str
    containment: str
    pid: Optional[int] = None
    exit_code: Optional[int] = None
    exit_signal: Optional[int] = None
    stop: Optional[StopInfo] = None
    progress: Optional[int] = None
    progress_message: Optional[str] = None
    progress_at: Optional[datetime] = None
    ended_at: Optional[datetime] = None
    end_reason: Optional[str] = None
    next_restart_at: Optional[datetime] = None
    ready: Optional[bool] = None
    probe: Optional[ProbesState] = None
    limits: Dict[str, LimitState] = dataclasses.field(default_factory=dict)
    user: Optional[str] = None
    placement: Optional[PlacementInfo] = None
    tree: Optional[TreeSummary] = None


@dataclasses.dataclass
class SpawnResponse:
    """What a spawn did: the answer of ``POST /v1/agents`` (the reference's response object).

    ``status`` is ``RUNNING``, or ``COMPLETED``/``FAILED`` when the agent ended
    inside its verification window (then ``exit_code``/``exit_signal`` and
    ``error`` say how). :class:`~corral_client.AgentSpawner` also returns one,
    ``FAILED`` with ``error`` set, for a spawn the daemon refused: then
    ``run`` is 0, the log paths are empty and ``started_at`` is when it was refused.
    """

    agent_id: str
    status: PersistentStatus
    run: int
    started_at: datetime
    stdout_log: str
    stderr_log: str
    pid: Optional[int] = None
    exit_code: Optional[int] = None
    exit_signal: Optional[int] = None
    error: Optional[str] = None
    placement: Optional[PlacementInfo] = None


@dataclasses.dataclass
class StopReport:
    """What one agent's stop did: the stage that ended it and how long it took."""

    agent_id: str
    stage: StopStage
    duration_ms: float
    persistent_status: PersistentStatus
    pid: Optional[int] = None
    exit_code: Optional[int] = None
    exit_signal: Optional[int] = None
    descendants_killed: Optional[int] = None
    complete: Optional[bool] = None
    incomplete_reason: Optional[str] = None


@dataclasses.dataclass
class KillResponse:
    """``killed`` is false when the agent had already ended."""

    agent_id: str
    killed: bool
    report: StopReport


@dataclasses.dataclass
class Removal:
    """Ids forgotten altogether, and runs deleted from the record."""

    removed: List[str]
    runs_removed: int


@dataclasses.dataclass
class RunInfo:
    """One run of an agent id."""

    run: int
    started_at: datetime
    persistent_status: PersistentStatus
    stdout_log: str
    stderr_log: str
    pid: Optional[int] = None
    ended_at: Optional[datetime] = None
    exit_code: Optional[int] = None
    exit_signal: Optional[int] = None
    end_reason: Optional[str] = None


@dataclasses.dataclass
class StateCounts:
    """Agents by ``state``."""

    starting: int
    running: int
    stopping: int
    paused: int
    backoff: int
    ended: int

    @classmethod
    def zero(cls) -> StateCounts:
        """No agent in any state (a summary of a daemon that does not count states)."""
        return cls(0, 0, 0, 0, 0, 0)


@dataclasses.dataclass
class ProcessSummary:
    """Counts by stored status and by state, and totals over live agents."""

    total: int
    spawning: int
    running: int
    completed: int
    failed: int
    cancelled: int
    zombie: int
    total_memory_mb: float
    total_cpu_percent: float
    states: StateCounts = dataclasses.field(default_factory=StateCounts.zero)


@dataclasses.dataclass
class HealthReport:
    """Quick health of one agent: ``healthy`` is ``health == "healthy"``."""

    agent_id: str
    healthy: bool
    health: Health


@dataclasses.dataclass
class PauseReport:
    """What a pause or a resume did to one agent, and how its tree was frozen or thawed."""

    agent_id: str
    outcome: PauseOutcome
    state: AgentState
    pid: Optional[int] = None
    method: Optional[str] = None
    processes: Optional[int] = None
    reason: Optional[str] = None


@dataclasses.dataclass
class TeamBudget:
    """A team's budgets: caps on the sum over the agent ``team`` and every agent under it."""

    memory_mb: Optional[float] = None
    cpu_percent: Optional[float] = None
    pids: Optional[int] = None
    max_agents: Optional[int] = None


@dataclasses.dataclass
class TeamUsage:
    """What a team uses now: sums over its live agents' trees."""

    memory_mb: float
    cpu_percent: float
    pids: int
    agents: int


@dataclasses.dataclass
class TeamMember:
    """One agent of a team and its tree's figures."""

    agent_id: str
    state: AgentState
    memory_mb: float
    cpu_percent: float
    pids: int


@dataclasses.dataclass
class TeamStatus:
    """A team: its budgets, how they are enforced (``sampler`` or ``cgroup``), its usage, its members."""

    team: str
    budget: TeamBudget
    enforcement: str
    usage: TeamUsage
    over: List[str] = dataclasses.field(default_factory=list)
    members: Optional[List[TeamMember]] = None


@dataclasses.dataclass
class TeamRemoval:
    """The budgets a ``DELETE /v1/teams/{id}`` removed."""

    team: str
    budget: TeamBudget


@dataclasses.dataclass
class HistoryPoint:
    """One point of an agent's figures over time: its whole process tree's (a thinned point: the mean)."""

    t: float
    cpu_percent: float
    memory_mb: float


@dataclasses.dataclass
class AgentHistory:
    """An agent's recent CPU and memory, oldest first: every sample of about the
    last minute, then one point a minute back to an hour."""

    agent_id: str
    interval_s: float
    points: List[HistoryPoint]


@dataclasses.dataclass
class UiLogin:
    """A one-time login to the web dashboard: ``url`` to open within ``expires_s``, once."""

    url: str
    path: str
    expires_s: int


@dataclasses.dataclass
class DaemonHealth:
    """The daemon answers and its store takes writes."""

    ok: bool
    version: str
    pid: int
    agents: int
    state_dir: str
    uptime_s: float


@dataclasses.dataclass
class DaemonStopResponse:
    """The daemon that is stopping, and the agents it stopped first (if asked to)."""

    pid: int
    stopped: List[StopReport]


# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Event:
    """One entry of the event log (``GET /v1/events``): what every kind has.

    ``seq`` orders the log (resume after the last one seen); ``at`` is when it
    was recorded. Each ``kind`` is a subclass with that kind's fields:
    narrow with ``isinstance(event, StateEvent)`` or by ``event.kind``.
    """

    seq: int
    at: datetime
    agent_id: str
    run: int
    kind: str


@dataclasses.dataclass
class StateEvent(Event):
    """``state``: a committed transition, a new ``state`` and/or stored ``status``."""

    state: Optional[AgentState] = None
    status: Optional[PersistentStatus] = None
    pid: Optional[int] = None
    exit_code: Optional[int] = None
    exit_signal: Optional[int] = None
    reason: Optional[str] = None
    restart_attempt: Optional[int] = None
    stop: Optional[StopInfo] = None


@dataclasses.dataclass
class ProgressEvent(Event):
    """``progress``: a progress report (0–100) and its message."""

    progress: int
    message: Optional[str] = None


@dataclasses.dataclass
class StopStageEvent(Event):
    """``stop_stage``: a stop stage began (its signal went out)."""

    stage: StopStage
    signal: str
    pid: Optional[int] = None
    job_id: Optional[str] = None
    cause: Optional[StopCause] = None


@dataclasses.dataclass
class RestartEvent(Event):
    """``restart``: the restart policy planned the next run."""

    delay_s: float
    attempt: int


@dataclasses.dataclass
class CrashLoopEvent(Event):
    """``crash_loop``: too many restarts too fast; the policy gave up."""

    restarts: int
    window_s: float


@dataclasses.dataclass
class RestartCancelledEvent(Event):
    """``restart_cancelled``: a planned restart was called off."""

    reason: str


@dataclasses.dataclass
class LimitEvent(Event):
    """``limit``: the sampler saw the run over a limit it enforces."""

    limit: str
    value: float
    usage: Optional[float] = None


@dataclasses.dataclass
class RuntimeExceededEvent(LimitEvent):
    """``runtime_exceeded``: the run outlived ``max_runtime_s``."""


@dataclasses.dataclass
class ProbeEvent(Event):
    """``probe``: a probe's result changed (or readiness did)."""

    probe: str
    check: str
    result: str
    output: str
    ready: Optional[bool] = None


@dataclasses.dataclass
class JobEvent(Event):
    """``job``: the run's cluster job was submitted, or placed on a node."""

    engine: str
    job_id: str
    node: Optional[str] = None
    status: Optional[PersistentStatus] = None


@dataclasses.dataclass
class JobRequeuedEvent(Event):
    """``job_requeued``: the engine queued the run's job again; the same run is ``starting`` again."""

    engine: str
    job_id: str
    pending_reason: str
    node: Optional[str] = None


@dataclasses.dataclass
class LogDroppedEvent(Event):
    """``log_dropped``: a log over ``logs.max_mb`` could not be copied whole and was truncated anyway."""

    stream: str
    dropped_bytes: int
    kept_bytes: int
    reason: str


@dataclasses.dataclass
class BudgetEvent(Event):
    """``budget``: the agent's team went over one of its budgets (``action``: ``stop`` or ``none``)."""

    team: str
    budget: str
    limit: float
    usage: float
    action: str
    agent_usage: float


@dataclasses.dataclass
class UnknownEvent(Event):
    """A kind this client does not know (from a newer daemon): its fields as JSON."""

    fields: Dict[str, Any] = dataclasses.field(default_factory=dict)


#: The class of each event kind, and the API schema of its fields.
EVENT_CLASSES: Mapping[str, Type[Event]] = {
    "state": StateEvent,
    "progress": ProgressEvent,
    "stop_stage": StopStageEvent,
    "restart": RestartEvent,
    "crash_loop": CrashLoopEvent,
    "restart_cancelled": RestartCancelledEvent,
    "limit": LimitEvent,
    "runtime_exceeded": RuntimeExceededEvent,
    "probe": ProbeEvent,
    "job": JobEvent,
    "job_requeued": JobRequeuedEvent,
    "log_dropped": LogDroppedEvent,
    "budget": BudgetEvent,
}
