"""One scenario through the blocking and the asyncio client: spawn 20 agents,
follow the event stream until each is running, wait for those that end,
read every log, stop them all. Both must see the same things, and leave
nothing behind."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Dict, List, Set, Tuple

from helpers import Corral, alive, within

from corral_client import (
    AgentState,
    AsyncClient,
    Client,
    Event,
    PersistentStatus,
    SpawnRequest,
    SpawnResponse,
    StateEvent,
    StopStage,
)

N = 20
WORKERS = N // 2  # 0..9 end by themselves once released; 10..19 run until stopped

#: What a scenario saw, per agent (by its number): final status of the
#: workers, every log, each stop report's stage.
Seen = Dict[int, Tuple[str, str, str]]


def requests(prefix: str, go: Path) -> List[SpawnRequest]:
    out = []
    for i in range(N):
        if i < WORKERS:
            script = f'echo "hi $CORRAL_AGENT_ID"; while [ ! -e {go} ]; do sleep 0.01; done; echo bye; exit 0'
        else:
            script = 'echo "hi $CORRAL_AGENT_ID"; exec sleep 60'
        out.append(SpawnRequest(f"{prefix}.{i}", ["sh", "-c", script], stop_timeouts=[5, 1, 1]))
    return out


def running_ids(event: Event) -> Set[str]:
    if isinstance(event, StateEvent) and event.state == AgentState.RUNNING:
        return {event.agent_id}
    return set()


def sync_scenario(c: Client, prefix: str, go: Path) -> Tuple[Seen, List[int]]:
    backlog = list(c.events(follow=False))
    stream = c.events(since=backlog[-1].seq if backlog else 0)  # opened now: nothing after it is missed

    spawned: List[SpawnResponse] = [c.spawn(r) for r in requests(prefix, go)]
    assert all(r.status == PersistentStatus.RUNNING and r.pid and alive(r.pid) for r in spawned), spawned

    wanted = {r.agent_id for r in spawned}

    def until_all_running() -> Set[str]:
        seen: Set[str] = set()
        for event in stream:
            seen |= running_ids(event) & wanted
            if seen == wanted:
                return seen
        return seen

    assert within(30, until_all_running) == wanted
    stream.close()

    go.touch()  # the workers may end now
    finals = {i: c.wait(f"{prefix}.{i}", timeout_s=30) for i in range(WORKERS)}
    logs = {i: c.logs(f"{prefix}.{i}") for i in range(N)}
    reports = {int(r.agent_id.rsplit(".", 1)[1]): r for r in c.stop_many(selector=f"{prefix}.*")}

    seen: Seen = {}
    for i in range(N):
        final = str(finals[i].persistent_status) if i in finals else "-"
        seen[i] = (final, logs[i].replace(prefix, "P"), str(reports[i].stage))
    return seen, [r.pid for r in spawned if r.pid]


async def async_scenario(c: AsyncClient, prefix: str, go: Path) -> Tuple[Seen, List[int]]:
    backlog = [e async for e in c.events(follow=False)]
    stream = await c.events(since=backlog[-1].seq if backlog else 0)  # opened now: nothing after it is missed

    spawned: List[SpawnResponse] = list(await asyncio.gather(*(c.spawn(r) for r in requests(prefix, go))))
    assert all(r.status == PersistentStatus.RUNNING and r.pid and alive(r.pid) for r in spawned), spawned

    wanted = {r.agent_id for r in spawned}

    async def until_all_running() -> Set[str]:
        seen: Set[str] = set()
        async for event in stream:
            seen |= running_ids(event) & wanted
            if seen == wanted:
                return seen
        return seen

    assert await asyncio.wait_for(until_all_running(), 30) == wanted
    await stream.aclose()

    go.touch()
    finals_list = await asyncio.gather(*(c.wait(f"{prefix}.{i}", timeout_s=30) for i in range(WORKERS)))
    finals = dict(enumerate(finals_list))
    logs = dict(enumerate(await asyncio.gather(*(c.logs(f"{prefix}.{i}") for i in range(N)))))
    reports = {int(r.agent_id.rsplit(".", 1)[1]): r for r in await c.stop_many(selector=f"{prefix}.*")}

    seen: Seen = {}
    for i in range(N):
        final = str(finals[i].persistent_status) if i in finals else "-"
        seen[i] = (final, logs[i].replace(prefix, "P"), str(reports[i].stage))
    return seen, [r.pid for r in spawned if r.pid]


def expected() -> Seen:
    out: Seen = {}
    for i in range(N):
        if i < WORKERS:
            out[i] = ("completed", f"hi P.{i}\nbye\n", str(StopStage.ALREADY_ENDED))
        else:
            out[i] = ("-", f"hi P.{i}\n", str(StopStage.TERM))
    return out


def test_the_same_scenario_through_the_sync_and_the_async_client(corral: Corral, tmp_path: Path) -> None:
    with corral.client() as c:
        sync_seen, sync_pids = sync_scenario(c, "sync", tmp_path / "go-sync")

    async def run() -> Tuple[Seen, List[int]]:
        async with AsyncClient(state_dir=corral.state_dir, corral_bin=corral.bin) as a:
            return await async_scenario(a, "async", tmp_path / "go-async")

    async_seen, async_pids = asyncio.run(run())

    assert sync_seen == expected()
    assert async_seen == sync_seen
    for pid in sync_pids + async_pids:
        assert not alive(pid), pid
    assert corral.agent_processes() == []
    assert os.path.exists(corral.socket)
