"""Python client for corral, the agent process supervisor.

- :class:`Client`: a typed client for every route of the daemon's API.
- :class:`AgentSpawner`, :class:`SpawnRequest`, :class:`AgentStatus`: a
  drop-in for the reference Python spawner, backed by the daemon.

Standard library only; talks to the daemon's Unix socket (starting a daemon
when none answers, as the ``corral`` CLI does) or to its TCP port with a token.
"""

from .client import Client, default_state_dir
from .errors import (
    BadAnswer,
    Conflict,
    CorralError,
    DeadlineExceeded,
    Forbidden,
    InternalError,
    Invalid,
    NotFound,
    SpawnFailed,
    Timeout,
    Unauthorized,
    Unavailable,
    Unreachable,
    UntrustedSocket,
)
from .spawner import AgentSpawner
from .types import (
    AgentStatus,
    DaemonHealth,
    Event,
    HealthReport,
    KillResponse,
    Limits,
    LogRotation,
    ProcessSummary,
    Removal,
    RestartPolicy,
    RunInfo,
    SpawnRequest,
    SpawnResponse,
    StatusDict,
    StopReport,
    TreeSummary,
)

__version__ = "0.1.0"

__all__ = [
    "AgentSpawner",
    "AgentStatus",
    "BadAnswer",
    "Client",
    "Conflict",
    "CorralError",
    "DaemonHealth",
    "DeadlineExceeded",
    "Event",
    "Forbidden",
    "HealthReport",
    "InternalError",
    "Invalid",
    "KillResponse",
    "Limits",
    "LogRotation",
    "NotFound",
    "ProcessSummary",
    "Removal",
    "RestartPolicy",
    "RunInfo",
    "SpawnFailed",
    "SpawnRequest",
    "SpawnResponse",
    "StatusDict",
    "StopReport",
    "Timeout",
    "TreeSummary",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
    "UntrustedSocket",
    "default_state_dir",
]
