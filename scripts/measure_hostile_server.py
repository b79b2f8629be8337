#!/usr/bin/env python3
"""Measures how a corral client copes with a misbehaving server: its peak
memory (the kernel's ``ru_maxrss``, from wait4) and wall time, for one request
against each behaviour of ``clients/python/tests/misbehaving.py``.

Usage: python3 scripts/measure_hostile_server.py CLIENT [MODE ...] [--limit-s 10] [-- CLI ARGS]

CLIENT is a corral binary, run as ``CLIENT --state-dir DIR --no-autostart ps``
(or the CLI ARGS given after ``--``), or ``python:DIR`` for the Python client
package in DIR (``DIR/corral_client``), run as
``Client(socket=..., timeout=5).list_agents()`` (``$TIMEOUT`` overrides the 5).
Either talks to a fake daemon socket in a private temp dir. A client still
running after ``--limit-s`` seconds is killed and reported so.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import List

sys.path.insert(
    0,
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python", "tests"),
)
from misbehaving import MODES, Misbehaving  # noqa: E402

PYTHON_CALL = """
import os, sys
sys.path.insert(0, sys.argv[1])
import corral_client
try:
    corral_client.Client(socket=sys.argv[2], timeout=float(os.environ.get("TIMEOUT", "5"))).list_agents()
except BaseException as e:
    sys.exit(f"{type(e).__name__}: {e}")
"""


def measure(client: str, mode: str, limit_s: float, cli_args: List[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="corral-hostile-") as state:
        os.chmod(state, 0o700)
        socket = os.path.join(state, "corral.sock")
        if client.startswith("python:"):
            argv = [sys.executable, "-c", PYTHON_CALL, client[len("python:") :], socket]
        else:
            argv = [client, "--state-dir", state, "--no-autostart", *cli_args]
        with Misbehaving(socket, mode), tempfile.TemporaryFile() as err_file:
            start = time.monotonic()
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err_file)
            killed = False
            while True:
                pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
                if pid == proc.pid:
                    break
                if not killed and time.monotonic() - start > limit_s:
                    proc.send_signal(signal.SIGKILL)
                    killed = True
                time.sleep(0.01)
            proc.returncode = os.waitstatus_to_exitcode(status)
            elapsed = time.monotonic() - start
            err_file.seek(0)
            err = err_file.read().decode("utf-8", "replace").strip().replace("\n", " | ")
    end = f"killed after {limit_s:g} s" if killed else f"exit {proc.returncode}"
    peak = rusage.ru_maxrss / 1024
    print(f"{mode:10} {end:22} wall {elapsed:6.2f} s  peak RSS {peak:8.1f} MiB  stderr: {err[:200]}")


def main() -> None:
    argv = sys.argv[1:]
    cli_args = ["ps"]
    if "--" in argv:
        cli_args = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    p = argparse.ArgumentParser()
    p.add_argument("client")
    p.add_argument("modes", nargs="*", default=list(MODES))
    p.add_argument("--limit-s", type=float, default=10.0)
    a = p.parse_args(argv)
    for mode in a.modes:
        measure(a.client, mode, a.limit_s, cli_args)


if __name__ == "__main__":
    main()
