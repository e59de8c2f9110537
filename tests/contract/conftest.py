r"""One contract suite, every backend: the ``session_backend``, ``store_backend`` and ``encryption_backend`` fixtures.

Adding a backend is a :class:`~telethon_firestore_session.testing.SessionBackend`
subclass (a few lines, in ``telethon_firestore_session/testing/backends.py``) and one
entry in ``_BUILDERS`` below; our stores are built as their ``storage.py`` subclasses,
which are also :class:`~telethon_firestore_session.testing.EncryptionBackend`\ s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from telethon_firestore_session import testing as contract
from telethon_firestore_session.crypto import SessionCipher
from tests.contract.storage import FirestoreStorage, SQLiteStorage

_Builder = Callable[[pytest.FixtureRequest, Path], contract.SessionBackend]

#: Encryption on: sealed auth keys and sealed usernames, phones and names (blind-index lookups).
_SEALED = {"cipher": SessionCipher(bytes(range(100, 132))), "encrypt_pii": True}

_BUILDERS: dict[str, _Builder] = {
    "firestore": lambda request, tmp: FirestoreStorage(
        request.getfixturevalue("firestore_client"), request.getfixturevalue("bot_id")
    ),
    "firestore-sealed": lambda request, tmp: FirestoreStorage(
        request.getfixturevalue("firestore_client"), request.getfixturevalue("bot_id"), **_SEALED
    ),
    "scoped-sqlite": lambda request, tmp: SQLiteStorage(tmp / "sessions", bot_id="contract-bot"),
    "scoped-sqlite-sealed": lambda request, tmp: SQLiteStorage(tmp / "sessions", bot_id="contract-bot", **_SEALED),
    "session-core": lambda request, tmp: contract.SessionCoreBackend(),
    "telethon-memory": lambda request, tmp: contract.MemorySessionBackend(),
    "telethon-sqlite": lambda request, tmp: contract.SQLiteSessionBackend(tmp),
}

#: Backends whose sessions are SessionCore bound to a store (they also run StoreContract).
_STORE_BACKENDS = ("firestore", "firestore-sealed", "scoped-sqlite", "scoped-sqlite-sealed")
#: Stores that seal (they also run EncryptionContract, choosing the cipher per session).
_ENCRYPTION_BACKENDS = ("firestore", "scoped-sqlite")


def _param(name: str) -> object:
    return pytest.param(name, marks=pytest.mark.firestore) if name.startswith("firestore") else name


@pytest.fixture(params=[_param(n) for n in _BUILDERS])
def session_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[contract.SessionBackend]:
    with _BUILDERS[request.param](request, tmp_path) as backend:
        yield backend


@pytest.fixture(params=[_param(n) for n in _STORE_BACKENDS])
def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[contract.SessionBackend]:
    with _BUILDERS[request.param](request, tmp_path) as backend:
        yield backend


@pytest.fixture(params=[_param(n) for n in _ENCRYPTION_BACKENDS])
def encryption_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[contract.SessionBackend]:
    with _BUILDERS[request.param](request, tmp_path) as backend:
        yield backend
