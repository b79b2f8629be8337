"""Fixtures: a private state dir served by a real corral daemon (the one built
from this repository, or ``$CORRAL_BIN``), shut down and checked at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

import pytest
from helpers import Corral, corral_bin


@contextlib.contextmanager
def private_corral() -> Iterator[Corral]:
    """A 0700 temp state dir; ``CORRAL_STATE_DIR`` and ``CORRAL_BIN`` point at it and
    the binary, so code that names neither (the reference's) finds this daemon."""
    binary = corral_bin()
    state_dir = tempfile.mkdtemp(prefix="corral-py-")
    os.chmod(state_dir, 0o700)
    corral = Corral(binary, state_dir)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("CORRAL_BIN", binary)
            mp.setenv("CORRAL_STATE_DIR", state_dir)
            yield corral
    finally:
        try:
            corral.shutdown()
        finally:
            shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def corral() -> Iterator[Corral]:
    """A state dir of this test's own; no daemon until something starts one."""
    with private_corral() as c:
        yield c


@pytest.fixture(scope="module")
def shared_corral() -> Iterator[Corral]:
    """One state dir and daemon for a whole module (tests use distinct agent ids)."""
    with private_corral() as c:
        yield c
