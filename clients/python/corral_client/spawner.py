"""``AgentSpawner``: the reference spawner's eight methods, served by a corral daemon.

Code written against the reference keeps its calls, argument names and
return types; only the import changes. The processes are owned by the daemon
instead of the Python process, so they outlive it, are reaped the moment they
exit, and are stopped together with everything they started.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from .client import Client
from .errors import CorralError, Invalid, NotFound
from .types import AgentStatus, ProcessSummary, SpawnRequest, SpawnResponse, StatusDict, StopReport


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
        self.client = Client(
            state_dir=state_dir, socket=socket, url=url, token=token, autostart=autostart, corral_bin=corral_bin
        )

    def spawn_agent(self, request: SpawnRequest) -> SpawnResponse:
        """Starts the agent and verifies it runs. A spawn the daemon refuses (a
        missing program, a bad id, an id still running) is returned as ``FAILED``
        with ``error`` set, as the reference handled spawn errors; a daemon that
        cannot be reached still raises."""
        try:
            return self.client.spawn(request)
        except CorralError as e:
            if e.status is None:
                raise
            return SpawnResponse(agent_id=request.agent_id, status=AgentStatus.FAILED, error=str(e))

    def get_agent_status(self, agent_id: str) -> StatusDict:
        """The agent's status dict (the reference's fields, and corral's extras);
        :class:`NotFound` for an id corral does not know."""
        return self.client.status(agent_id)

    def cleanup(self, agent_id: Optional[str] = None, force: bool = False) -> List[StopReport]:
        """Staged stop of one agent (or of a ``PREFIX.*`` subtree), or of every agent
        when ``agent_id`` is ``None``; ``force`` goes straight to SIGKILL. One report per agent."""
        if agent_id is None:
            return self.client.stop_many(all=True, force=force)
        if agent_id.endswith(".*"):
            return self.client.stop_many(selector=agent_id, force=force)
        return [self.client.stop(agent_id, force=force)]

    def monitor_all_agents(self) -> Dict[str, StatusDict]:
        """Every agent's status, by id."""
        return self.client.list_agents()

    def reap_zombies(self) -> List[str]:
        """Ids of agents whose exited process had to be reaped. corral reaps at
        exit, so this is normally empty; it stays for the reference's callers."""
        return self.client.reap()

    def get_process_summary(self) -> ProcessSummary:
        """Counts by state (``running``, ``failed``, …) and ``total_memory_mb``/``total_cpu_percent``."""
        return self.client.summary()

    def check_process_health(self, agent_id: str) -> bool:
        """True when the agent is alive and not a zombie; False otherwise, also
        for an id corral does not know (as the reference answered)."""
        try:
            return self.client.agent_health(agent_id)["healthy"]
        except (NotFound, Invalid):
            return False

    def kill_agent(self, agent_id: str, force: bool = False) -> bool:
        """Stops one agent (staged, or SIGKILL with ``force``); True when this call
        ended it, False when it had already ended or is unknown."""
        try:
            return self.client.kill(agent_id, force=force)["killed"]
        except (NotFound, Invalid):
            return False
