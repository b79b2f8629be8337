"""An agent killed by a signal: the drop-in says what ``subprocess.Popen`` says
(``exit_code`` -9 for SIGKILL), the typed client what the JSON API says
(``exit_code`` None, ``exit_signal`` 9)."""

from __future__ import annotations

import os
import signal
import subprocess

from helpers import Corral, alive, poll

from corral_client import AgentSpawner, AgentStatus, Client, PersistentStatus, SpawnRequest


def test_popen_says_minus_the_signal() -> None:
    # The reference spawner's processes were Popen objects: this is its convention.
    assert subprocess.Popen(["sh", "-c", "kill -9 $$"]).wait() == -9


def test_a_kill_9_is_exit_code_minus_9_in_the_drop_in_and_a_signal_in_the_client(corral: Corral) -> None:
    spawner = AgentSpawner()
    c: Client = spawner.client
    response = spawner.spawn_agent(SpawnRequest(agent_id="sig.1", command=["sleep", "60"]))
    assert response.status == AgentStatus.RUNNING and response.pid and response.exit_code is None

    os.kill(response.pid, signal.SIGKILL)
    poll(lambda: c.status("sig.1").state == "ended", what="the daemon recording the death")
    assert not alive(response.pid)

    # The drop-in: dicts as the reference gave them, exit_code as Popen gives it.
    status = spawner.get_agent_status("sig.1")
    assert status["exit_code"] == -9 and status["exit_signal"] == 9
    assert status["persistent_status"] == "failed" and status["health"] == "failed"
    assert spawner.monitor_all_agents()["sig.1"]["exit_code"] == -9
    (report,) = spawner.cleanup(agent_id="sig.1")
    assert report["stage"] == "already_ended" and report["exit_code"] == -9

    # The typed client: the JSON API's null exit code and the signal beside it.
    info = c.status("sig.1")
    assert info.exit_code is None and info.exit_signal == 9
    assert info.persistent_status == PersistentStatus.FAILED
    (run,) = c.runs("sig.1")
    assert run.exit_code is None and run.exit_signal == 9
    stop = c.stop("sig.1")
    assert stop.stage == "already_ended" and stop.exit_code is None and stop.exit_signal == 9


def test_a_signal_inside_the_verification_window_too(corral: Corral) -> None:
    spawner = AgentSpawner()
    request = SpawnRequest(agent_id="sig.2", command=["sh", "-c", "kill -9 $$"], verify_ms=2000)
    response = spawner.spawn_agent(request)
    assert response.status == AgentStatus.FAILED
    assert response.exit_code == -9 and response.exit_signal == 9

    again = spawner.client.spawn(request)  # the typed client, the same death
    assert again.status == PersistentStatus.FAILED and again.run == 2
    assert again.exit_code is None and again.exit_signal == 9


def test_an_ordinary_exit_code_is_left_alone(corral: Corral) -> None:
    spawner = AgentSpawner()
    response = spawner.spawn_agent(SpawnRequest(agent_id="sig.3", command=["sh", "-c", "exit 7"], verify_ms=2000))
    assert response.status == AgentStatus.FAILED and response.exit_code == 7 and response.exit_signal is None
    assert spawner.get_agent_status("sig.3")["exit_code"] == 7
    assert spawner.client.status("sig.3").exit_code == 7
