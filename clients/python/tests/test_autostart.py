"""Finding the daemon, and starting one when none answers, as the CLI does."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
from pathlib import Path
from typing import List

import pytest
from helpers import Corral, alive, cmdline, poll

from corral_client import AsyncClient, Client, SpawnRequest, Unreachable, UntrustedSocket


def daemons_of(corral: Corral) -> List[int]:
    """Live `corral ... daemon` processes serving this state dir."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = cmdline(int(entry))
            except OSError:
                continue
            if "daemon" in argv and corral.state_dir in argv and alive(int(entry)):
                found.append(int(entry))
    return found


def test_a_client_starts_a_daemon_when_none_answers(corral: Corral) -> None:
    assert not os.path.exists(corral.socket)
    health = Client().health()  # state dir and binary from CORRAL_STATE_DIR and CORRAL_BIN
    assert health.state_dir == corral.state_dir and health.pid == corral.daemon_pid()
    assert daemons_of(corral) == [health.pid]
    assert os.stat(corral.socket).st_mode & 0o777 == 0o600


def test_an_async_client_starts_a_daemon_too(corral: Corral) -> None:
    async def health() -> List[int]:
        async with AsyncClient() as c:  # state dir and binary from the environment
            # Many tasks at once find no daemon; they end up with one.
            answers = await asyncio.gather(*(c.health() for _ in range(4)))
            return [h.pid for h in answers]

    pids = asyncio.run(health())
    assert len(set(pids)) == 1 and pids[0] == corral.daemon_pid()
    assert poll(lambda: daemons_of(corral) == pids[:1], what="the losing daemons exiting")


def test_clients_starting_at_once_end_up_with_one_daemon(corral: Corral) -> None:
    barrier = threading.Barrier(4)
    pids: List[int] = []

    def start() -> None:
        client = corral.client()
        barrier.wait()
        pids.append(client.health().pid)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(pids) == 4 and len(set(pids)) == 1
    assert poll(lambda: daemons_of(corral) == pids[:1], what="the losing daemons exiting")


def test_a_dead_daemon_is_replaced_on_the_next_call(corral: Corral) -> None:
    client = corral.client()
    first = client.health().pid
    os.kill(first, signal.SIGKILL)  # leaves its socket behind: connecting is refused
    poll(lambda: not alive(first), what="the daemon dying")
    assert os.path.exists(corral.socket)
    second = client.health().pid
    assert second != first and corral.daemon_pid() == second


def test_no_daemon_is_started_without_autostart(corral: Corral) -> None:
    with pytest.raises(Unreachable, match="corral.sock"):
        corral.client(autostart=False).summary()
    with pytest.raises(Unreachable):
        Client(socket=corral.socket).summary()  # an explicit socket never starts a daemon
    assert daemons_of(corral) == [] and not os.path.exists(corral.socket)


def test_a_daemon_that_cannot_start_is_reported(
    corral: Corral, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "corral"
    fake.write_text("#!/bin/sh\necho 'error: refusing the state dir: it is open to others' >&2\nexit 1\n")
    fake.chmod(0o700)
    with pytest.raises(Unreachable, match=r"did not start \(exit code 1\): refusing the state dir"):
        Client(state_dir=corral.state_dir, corral_bin=str(fake)).summary()
    with pytest.raises(Unreachable, match="cannot start a corral daemon"):
        Client(state_dir=corral.state_dir, corral_bin=str(tmp_path / "missing")).summary()
    monkeypatch.delenv("CORRAL_BIN")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(Unreachable, match="set CORRAL_BIN or put corral on PATH"):
        Client(state_dir=corral.state_dir).summary()


def test_an_untrusted_socket_gets_nothing(corral: Corral) -> None:
    Path(corral.socket).write_text("")  # a plain file where the socket should be
    with pytest.raises(UntrustedSocket, match="not a socket"):
        corral.client().spawn(SpawnRequest("x", ["true"]))
    os.unlink(corral.socket)

    if os.geteuid() != 0:
        pytest.skip("making a socket owned by another user needs root")
    with socket.socket(socket.AF_UNIX) as planted:
        planted.bind(corral.socket)
        planted.listen()
        os.chown(corral.socket, 65534, 65534)
        with pytest.raises(UntrustedSocket, match="owned by uid 65534"):
            corral.client().spawn(SpawnRequest("x", ["true"]))
    os.unlink(corral.socket)
    assert daemons_of(corral) == []
