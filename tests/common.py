"""Test data and helpers shared by several test modules (fixtures built on them live in conftest.py)."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable

from telethon.tl import types

from telethon_firestore_session.config import ENV_VARIABLES
from telethon_firestore_session.sqlite import ScopedSQLiteSession

#: The bot of the SQLite tests' sessions (the ``opener`` fixture's default).
BOT = "bot1"
#: ``opener(uid="42", bot=BOT, **session_kwargs)``: a ScopedSQLiteSession closed after the test.
Opener = Callable[..., ScopedSQLiteSession]

# Encryption keys (raw and as SESSION_ENCRYPTION_KEY text) and auth keys of the encryption tests.
RAW_OLD = bytes(range(32))
RAW_NEW = bytes(range(200, 232))
KEY_OLD = base64.urlsafe_b64encode(RAW_OLD).decode()
KEY_NEW = base64.urlsafe_b64encode(RAW_NEW).decode()
AUTH_A = bytes((i * 7 + 3) % 256 for i in range(256))
AUTH_B = bytes((i * 13 + 5) % 256 for i in range(256))


def person(uid: int, username: str | None, phone: str | None, first: str, last: str | None = None) -> types.User:
    """A user with every field that ``encrypt_pii`` seals."""
    return types.User(uid, access_hash=uid * 11, username=username, phone=phone, first_name=first, last_name=last)


#: Three people whose usernames, phones and names must never be stored in plaintext when sealed.
PEOPLE = types.contacts.ResolvedPeer(
    types.PeerUser(501),
    [],
    [
        person(501, "AliceW", "15550001111", "Alice", "Wonder"),
        person(502, "bob_b", "447700900123", "Bob"),
        person(503, None, "4915112345678", "Carol", "Kings"),
    ],
)


def clean_env(**values: str) -> dict[str, str]:
    """This process's environment without any variable the factory reads, plus ``values``: for child processes."""
    return {**{k: v for k, v in os.environ.items() if k not in ENV_VARIABLES}, **values}
