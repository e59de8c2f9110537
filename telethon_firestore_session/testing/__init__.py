"""A contract suite for Telethon session stores: one suite, every backend.

Telethon's own ``MemorySession`` and ``SQLiteSession`` are the reference for what
a session answers. This module feeds every backend the same histories of real
``telethon.tl.types`` objects and checks that ``get_input_entity``, update states,
the sent-file cache, the DC, the auth key and the takeout id come back the same,
including after the session is closed and constructed again. Where Telethon's
own backends are wrong, the expected answer is the correct one and the
reference is marked with a :class:`Deviation` (a strict ``xfail``, or a
documented branch when its answer depends on ``set`` iteration order).

Use it for your own session store (needs ``pytest``; this module is only
imported by tests, never by the package itself)::

    import pytest
    from telethon_firestore_session.testing import SessionBackend, SessionContract

    class MyBackend(SessionBackend):
        name = "mine"
        persistent = True  # reopen() closes the session and constructs it again

        def __init__(self, path):
            super().__init__()
            self.path = path

        def make_session(self):
            return MySession(self.path)

    @pytest.fixture
    def session_backend(tmp_path):
        with MyBackend(tmp_path / "s") as backend:  # closes every session it made
            yield backend

    class TestMySession(SessionContract):
        pass

Sessions built on :class:`~telethon_firestore_session.SessionCore` with a store
can also run :class:`StoreContract` (dirty tracking, write-behind, lazy
lookups, cached misses) with a ``store_backend`` fixture. A store that seals
(``cipher=``, ``encrypt_pii=``) runs :class:`EncryptionContract` with an
``encryption_backend`` fixture: an :class:`EncryptionBackend` that makes sessions
with a cipher of the test's choosing and shows the contract what is stored (the
project's own, for Firestore and SQLite files, are in its ``tests/contract/storage.py``).

The modules: :mod:`.cases` (the histories), :mod:`.backends` (Telethon's
references and this library's stores), :mod:`.session`, :mod:`.store` and
:mod:`.encryption` (the contracts), :mod:`.leaks` (finding secrets in text and bytes).

The tests call the session's methods synchronously and expect plain return
values, as Telethon's own sessions give.
"""

from __future__ import annotations

from .backends import (
    Deviation,
    FirestoreBackend,
    MemorySessionBackend,
    ScopedSQLiteBackend,
    SessionBackend,
    SessionCoreBackend,
    SQLiteSessionBackend,
)
from .cases import ENTITY_CASES, MISS, EntityCase, answer, describe, feed
from .encryption import EncryptionBackend, EncryptionContract, StoredEntity, StoredField
from .session import SessionContract
from .store import StoreContract, StoreProbe

__all__ = [
    "ENTITY_CASES",
    "MISS",
    "Deviation",
    "EncryptionBackend",
    "EncryptionContract",
    "EntityCase",
    "FirestoreBackend",
    "MemorySessionBackend",
    "SQLiteSessionBackend",
    "ScopedSQLiteBackend",
    "SessionBackend",
    "SessionContract",
    "SessionCoreBackend",
    "StoreContract",
    "StoreProbe",
    "StoredEntity",
    "StoredField",
    "answer",
    "describe",
    "feed",
]
