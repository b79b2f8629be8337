"""The reference spawner's documented usage, run unchanged after the new import,
against a real daemon — and checked against /proc, not only against answers."""

from __future__ import annotations

import sys

import pytest
from helpers import Corral, alive, cmdline

from corral_client import AgentSpawner, AgentStatus, SpawnRequest

SEED_FIELDS = {
    "agent_id",
    "process_alive",
    "process_status",
    "exit_code",
    "is_zombie",
    "cpu_percent",
    "memory_mb",
    "runtime_seconds",
    "num_threads",
    "cmdline",
    "health",
    "persistent_status",
    "started_at",
    "progress",
}
WORKER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_the_reference_usage_examples(corral: Corral, capsys: pytest.CaptureFixture[str]) -> None:
    spawner = AgentSpawner()
    request = SpawnRequest(agent_id="L2.1.1", command=WORKER)

    # --- Spawn an Agent (verbatim) ---
    response = spawner.spawn_agent(request)
    if response.status == AgentStatus.RUNNING:
        print(f"Success! PID: {response.pid}")

    assert response.status == AgentStatus.RUNNING, response.error
    assert response.agent_id == "L2.1.1" and response.error is None
    assert isinstance(response.pid, int) and alive(response.pid)
    assert cmdline(response.pid) == WORKER
    assert f"Success! PID: {response.pid}" in capsys.readouterr().out

    # --- Check Health (verbatim) ---
    # Quick check
    is_healthy = spawner.check_process_health("L2.1.1")

    # Detailed status
    status = spawner.get_agent_status("L2.1.1")
    print(f"CPU: {status['cpu_percent']}%")
    print(f"Memory: {status['memory_mb']} MB")
    print(f"Health: {status['health']}")

    assert is_healthy is True
    assert SEED_FIELDS <= set(status)
    assert status["pid"] == response.pid and status["process_alive"] and not status["is_zombie"]
    assert status["health"] == "healthy" and status["persistent_status"] == "running"
    assert status["memory_mb"] > 0
    out = capsys.readouterr().out
    assert "CPU: " in out and "Health: healthy" in out

    # --- Graceful Shutdown (verbatim) ---
    # Single agent
    spawner.cleanup(agent_id="L2.1.1")

    assert not alive(response.pid)
    assert spawner.get_agent_status("L2.1.1")["persistent_status"] == "cancelled"
    assert spawner.check_process_health("L2.1.1") is False

    others = [spawner.spawn_agent(SpawnRequest(agent_id=i, command=WORKER)) for i in ("L2.1.2", "L2.2.1")]
    assert all(r.status == AgentStatus.RUNNING and r.pid and alive(r.pid) for r in others)

    # All agents
    spawner.cleanup()

    assert not any(r.pid and alive(r.pid) for r in others)

    # A worker that ignores SIGTERM, with a child of its own: only SIGKILL ends them.
    stubborn = spawner.spawn_agent(
        SpawnRequest(agent_id="L3.1", command=["sh", "-c", "trap '' TERM; sleep 60 & exec sleep 61"])
    )
    assert stubborn.status == AgentStatus.RUNNING and stubborn.pid and alive(stubborn.pid)

    # Force kill
    spawner.cleanup(force=True)

    assert not alive(stubborn.pid)
    assert corral.agent_processes() == []

    # --- Monitor All (verbatim) ---
    summary = spawner.get_process_summary()
    print(f"Running: {summary['running']}")
    print(f"Failed: {summary['failed']}")
    print(f"Total Memory: {summary['total_memory_mb']} MB")

    assert summary["total"] == 4 and summary["cancelled"] == 4 and summary["running"] == 0
    assert "Running: 0" in capsys.readouterr().out

    # --- Handle Zombies (verbatim) ---
    reaped = spawner.reap_zombies()
    for agent_id in reaped:
        print(f"Reaped zombie: {agent_id}")

    assert reaped == []  # exits are reaped the moment they happen


def test_the_other_reference_methods(corral: Corral) -> None:
    spawner = AgentSpawner()
    first = spawner.spawn_agent(SpawnRequest(agent_id="worker.1", command=WORKER, labels={"team": "a"}))
    assert first.status == AgentStatus.RUNNING

    everything = spawner.monitor_all_agents()
    assert list(everything) == ["worker.1"]
    assert everything["worker.1"]["pid"] == first.pid and everything["worker.1"]["labels"] == {"team": "a"}

    assert spawner.kill_agent("worker.1") is True
    assert first.pid and not alive(first.pid)
    assert spawner.kill_agent("worker.1") is False  # already ended
    assert spawner.kill_agent("nobody") is False
    assert spawner.check_process_health("nobody") is False

    # A spawn that cannot happen is a FAILED response with the reason, not an exception.
    missing = spawner.spawn_agent(SpawnRequest(agent_id="worker.2", command=["/nonexistent/worker"]))
    assert missing.status == AgentStatus.FAILED and missing.pid is None
    assert missing.error and "No such file or directory" in missing.error

    # A worker that dies at once is reported failed with its exit code, never "running".
    crashed = spawner.spawn_agent(SpawnRequest(agent_id="worker.3", command=["sh", "-c", "echo boom >&2; exit 7"]))
    assert crashed.status == AgentStatus.FAILED and crashed.exit_code == 7
    assert crashed.error and "boom" in crashed.error

    reports = spawner.cleanup(force=True)
    assert sorted(r["agent_id"] for r in reports) == ["worker.1", "worker.2", "worker.3"]
    assert all(r["stage"] == "already_ended" for r in reports)
