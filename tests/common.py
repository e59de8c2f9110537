"""Helpers shared by several test modules (fixtures built on them live in conftest.py).

The encryption tests' data (keys, auth keys, PEOPLE) is the encryption contract's, in
``telethon_firestore_session.testing.encryption``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from telethon_firestore_session.config import ENV_VARIABLES
from telethon_firestore_session.sqlite import ScopedSQLiteSession

#: The bot of the SQLite tests' sessions (the ``opener`` fixture's default).
BOT = "bot1"
#: ``opener(uid="42", bot=BOT, **session_kwargs)``: a ScopedSQLiteSession closed after the test.
Opener = Callable[..., ScopedSQLiteSession]


def clean_env(**values: str) -> dict[str, str]:
    """This process's environment without any variable the factory reads, plus ``values``: for child processes."""
    return {**{k: v for k, v in os.environ.items() if k not in ENV_VARIABLES}, **values}
