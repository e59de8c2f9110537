"""Test data and helpers shared by several test modules (fixtures built on them live in conftest.py)."""

from __future__ import annotations

import os
from collections.abc import Callable

from telethon_firestore_session.config import ENV_VARIABLES
from telethon_firestore_session.sqlite import ScopedSQLiteSession
from telethon_firestore_session.testing.cases import AUTH_A, AUTH_B
from telethon_firestore_session.testing.encryption import (
    KEY_NEW,
    KEY_OLD,
    PEOPLE,
    PLAINTEXT,
    RAW_NEW,
    RAW_OLD,
    RAW_STRANGER,
    peer,
    person,
)

#: The bot of the SQLite tests' sessions (the ``opener`` fixture's default).
BOT = "bot1"
#: ``opener(uid="42", bot=BOT, **session_kwargs)``: a ScopedSQLiteSession closed after the test.
Opener = Callable[..., ScopedSQLiteSession]

# The encryption contract's test data (keys, auth keys, PEOPLE), for the per-backend encryption tests.
__all__ = [
    "AUTH_A",
    "AUTH_B",
    "BOT",
    "KEY_NEW",
    "KEY_OLD",
    "PEOPLE",
    "PLAINTEXT",
    "RAW_NEW",
    "RAW_OLD",
    "RAW_STRANGER",
    "Opener",
    "clean_env",
    "peer",
    "person",
]


def clean_env(**values: str) -> dict[str, str]:
    """This process's environment without any variable the factory reads, plus ``values``: for child processes."""
    return {**{k: v for k, v in os.environ.items() if k not in ENV_VARIABLES}, **values}
