"""Helpers shared by several test modules (fixtures built on them live in conftest.py).

The encryption tests' data (keys, auth keys, PEOPLE) is the encryption contract's, in
``telethon_firestore_session.testing.encryption``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from telethon_firestore_session.config import ENV_VARIABLES
from telethon_firestore_session.sqlite import ScopedSQLiteSession

#: The bot of the SQLite tests' sessions (the ``opener`` fixture's default).
BOT = "bot1"
#: ``opener(uid="42", bot=BOT, **session_kwargs)``: a ScopedSQLiteSession closed after the test.
Opener = Callable[..., ScopedSQLiteSession]


def clean_env(**values: str) -> dict[str, str]:
    """This process's environment without any variable the factory reads, plus ``values``: for child processes."""
    return {**{k: v for k, v in os.environ.items() if k not in ENV_VARIABLES}, **values}


#: The checkout's root (examples and docs live there).
ROOT = Path(__file__).resolve().parent.parent


def run_python(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -W error ARGS`` in a child process (two minutes at most), its output captured."""
    return subprocess.run(
        [sys.executable, "-W", "error", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
        check=False,
    )


def child_env(**extra: str) -> dict[str, str]:
    """No factory variables (the local default), and this checkout importable (for ``examples``)."""
    return clean_env(PYTHONPATH=str(ROOT), **extra)


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll ``condition`` every 50 ms until it holds (``True``) or ``timeout`` seconds pass (``False``)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
