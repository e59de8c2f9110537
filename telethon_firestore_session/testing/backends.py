"""The backends the contracts run on: Telethon's own sessions (the references) and this library's.

A :class:`SessionBackend` makes sessions of one kind for :class:`~.session.SessionContract`
(and, for sessions built on ``SessionCore`` with a store, :class:`~.store.StoreContract`).
:class:`FirestoreBackend` and :class:`ScopedSQLiteBackend` are also
:class:`~.encryption.EncryptionBackend`\\ s: they show :class:`~.encryption.EncryptionContract`
what only the store knows (the raw stored values, a snapshot of everything stored, rotation).
"""

from __future__ import annotations

import abc
import hashlib
import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from telethon.sessions import MemorySession, SQLiteSession
from telethon.sessions.abstract import Session
from telethon.tl import types

from telethon_firestore_session.core import SessionCore
from telethon_firestore_session.crypto import SessionCipher
from telethon_firestore_session.ids import SessionKey
from telethon_firestore_session.sealing import PII_FIELDS

from .cases import Deviation, input_channel, input_user
from .encryption import EncryptionBackend, StoredEntity, StoredField

__all__ = [
    "Deviation",
    "FirestoreBackend",
    "MemorySessionBackend",
    "SQLiteSessionBackend",
    "ScopedSQLiteBackend",
    "SessionBackend",
    "SessionCoreBackend",
]


class SessionBackend(abc.ABC):
    """How the contract suite makes sessions of one kind. Subclass it for your store.

    :meth:`make_session` constructs a session on the backend's storage (the same
    storage every time, so a second call opens what the first one stored).
    :meth:`reopen` closes a session and constructs it again; for backends that
    are not ``persistent`` it returns the same object. Use the backend as a
    context manager (or call :meth:`cleanup`) to close every session it made.
    """

    #: Name shown in failure messages.
    name: ClassVar[str] = "?"
    #: Whether a session survives ``close()`` and construction on the same storage.
    persistent: ClassVar[bool] = True
    #: Known deviations, by test name (entity case name, ``"sent_files"``, ...).
    deviations: ClassVar[Mapping[str, Deviation]] = {}

    def __init__(self) -> None:
        self._sessions: list[Session] = []

    @abc.abstractmethod
    def make_session(self) -> Session:
        """Construct a session on this backend's storage."""

    def reopen(self, session: Session) -> Session:
        """Close ``session`` (as ``TelegramClient.disconnect()`` does) and construct it again."""
        if not self.persistent:
            return session
        session.close()
        return self.make_session()

    # -- used by the suite ---------------------------------------------------------------------

    def open(self) -> Session:
        """A session from :meth:`make_session`, closed again by :meth:`cleanup`."""
        session = self.make_session()
        self._sessions.append(session)
        return session

    def open_again(self, session: Session) -> Session:
        """:meth:`reopen`, tracked for :meth:`cleanup`."""
        again = self.reopen(session)
        if again is not session:
            self._sessions.append(again)
        return again

    def deviation(self, test: str) -> Deviation | None:
        return self.deviations.get(test)

    def cleanup(self) -> None:
        """Close every session this backend made (newest first)."""
        while self._sessions:
            self._sessions.pop().close()

    def __enter__(self) -> SessionBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


_TYPE_ERROR_GET_FILE = Deviation(
    "get_file() calls cls(id, access_hash), but InputDocument and InputPhoto require file_reference "
    "since layer 108, so every cache hit raises TypeError; the correct answer is cls(id, access_hash, b'')"
)
_SET_ORDER = "MemorySession keeps every row it ever saw in a set; which stale row a lookup finds depends on set order"


class MemorySessionBackend(SessionBackend):
    """Telethon's ``MemorySession``, the reference (not persistent)."""

    name = "telethon-memory"
    persistent = False
    deviations: ClassVar[Mapping[str, Deviation]] = {
        "username_renamed": Deviation(
            "MemorySession never drops the row with the old username, so a name the user gave up still resolves"
        ),
        "username_moves": Deviation(
            _SET_ORDER,
            either={
                "'shared'": (input_user(802),),
                "'@SHARED'": (input_user(802),),
                "'t.me/shared'": (input_user(802),),
            },
        ),
        "username_moves_after_rename": Deviation(_SET_ORDER, either={"'taken'": (input_user(901),)}),
        "phone_changed": Deviation("MemorySession never drops the row with the old phone, so it still resolves"),
        "phone_moves": Deviation(
            _SET_ORDER, either={"'+15551100'": (input_user(1101),), "'+1 (555) 110-0'": (input_user(1101),)}
        ),
        "name_changed": Deviation("MemorySession never drops the row with the old display name, so it still resolves"),
        "channel_renamed": Deviation("MemorySession never drops the row with the old title and username"),
        "duplicate_names": Deviation(_SET_ORDER, either={"'Dana'": (input_user(1401),)}),
        "bare_ids": Deviation(
            "a bare id is looked up as user, chat and channel at once; the first row in set order wins",
            either={"5": (types.InputPeerChat(5), input_channel(5))},
        ),
        "bare_chat_and_channel": Deviation(
            "a bare id is looked up as chat and channel at once; the first row in set order wins",
            either={"6": (input_channel(6),)},
        ),
        "access_hash_changes": Deviation(
            _SET_ORDER,
            either={"1501": (types.InputPeerUser(1501, 1),), "'hashy'": (types.InputPeerUser(1501, 1),)},
        ),
        "sent_files": _TYPE_ERROR_GET_FILE,
        "save_entities": Deviation("MemorySession ignores save_entities = False and stores every entity"),
    }

    def make_session(self) -> Session:
        return MemorySession()


class SQLiteSessionBackend(SessionBackend):
    """Telethon's ``SQLiteSession`` on a file in ``directory``, the persistent reference."""

    name = "telethon-sqlite"
    deviations: ClassVar[Mapping[str, Deviation]] = {
        "username_moves": Deviation(
            "every row of one process_entities() call gets the same date (in whole seconds); among rows of one "
            "date with the same username the highest id wins (stable sort in rowid order), not the newest owner"
        ),
        "phone_moves": Deviation(
            "'select id, hash from entities where phone = ?' returns the lowest id; the old owner keeps the phone"
        ),
        "duplicate_names": Deviation("'where name = ?' returns the lowest id, not the most recently seen entity"),
        "bare_ids": Deviation(
            "'where id in (user, chat, channel)' returns the lowest marked id: channel, then chat, then user"
        ),
        "bare_chat_and_channel": Deviation("'where id in (...)' returns the lowest marked id: the channel"),
        "sent_files": _TYPE_ERROR_GET_FILE,
    }

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = os.path.join(os.fspath(directory), "telethon-reference")

    def make_session(self) -> Session:
        return SQLiteSession(self.path)


class SessionCoreBackend(SessionBackend):
    """This library's :class:`SessionCore` without a store (in memory)."""

    name = "session-core"
    persistent = False

    def make_session(self) -> Session:
        return SessionCore()


class _StoreBackend(SessionBackend, EncryptionBackend):
    """A store of this library: sessions of ``bot_id`` with ``options`` (and per-session overrides)."""

    def __init__(self, bot_id: str, user_id: str, options: dict[str, Any]) -> None:
        super().__init__()
        self.bot_id = bot_id
        self.user_id = user_id
        self.options = options

    @abc.abstractmethod
    def construct(self, user_id: str, bot_id: str, **options: Any) -> Session:
        """A session of this store."""

    def make_session(self) -> Session:
        return self.construct(self.user_id, self.bot_id, **self.options)

    def session(self, user_id: str = "42", *, bot_id: str | None = None, **options: Any) -> Session:
        made = self.construct(user_id, bot_id or self.bot_id, **{**self.options, **options})
        self._sessions.append(made)
        return made


class FirestoreBackend(_StoreBackend):
    """:class:`~telethon_firestore_session.FirestoreSession` on ``client`` (the emulator in tests).

    ``options`` go to every session (e.g. ``cipher=SessionCipher(key), encrypt_pii=True``).
    """

    name = "firestore"
    debug_loggers = ("google.cloud.firestore_v1",)

    def __init__(self, client: Any, bot_id: str, user_id: str = "42", **options: Any) -> None:
        super().__init__(bot_id, user_id, options)
        self.client = client

    def construct(self, user_id: str, bot_id: str, **options: Any) -> Session:
        from telethon_firestore_session.firestore import FirestoreSession

        return FirestoreSession(user_id, bot_id=bot_id, client=self.client, **options)

    # -- what only the store knows ---------------------------------------------------------

    def _doc(self, user_id: str, bot_id: str | None = None) -> Any:
        from telethon_firestore_session.firestore import session_document

        return session_document(self.client, SessionKey(bot_id or self.bot_id, user_id))

    def where(self, user_id: str, bot_id: str | None = None) -> str:
        return str(self._doc(user_id, bot_id).path)

    def stored_auth_key(self, user_id: str, bot_id: str | None = None) -> Any:
        return (self._doc(user_id, bot_id).get().to_dict() or {})["auth_key"]

    def replace_auth_key(self, user_id: str, value: Any, bot_id: str | None = None) -> None:
        self._doc(user_id, bot_id).update({"auth_key": value})

    def stored_entities(self, user_id: str) -> dict[int, StoredEntity]:
        from telethon_firestore_session.firestore import ENTITIES

        out = {}
        for snap in self._doc(user_id).collection(ENTITIES).stream():
            data = snap.to_dict()
            fields = {f: StoredField(data.get(f), data.get(f"{f}_bi")) for f in PII_FIELDS}
            out[int(snap.id)] = StoredEntity(data["hash"], data["date"], fields)
        return out

    def replace_entity_field(self, user_id: str, entity_id: int, field: str, value: StoredField) -> None:
        from telethon_firestore_session.firestore import ENTITIES

        assert field in PII_FIELDS, field
        entity = self._doc(user_id).collection(ENTITIES).document(str(entity_id))
        entity.update({field: value.value, f"{field}_bi": value.index})

    def snapshot(self, *user_ids: str) -> dict[str, Any]:
        """Every document (its fields and update time) of ``user_ids``' sessions, or of the whole database."""
        out: dict[str, Any] = {}
        if user_ids:
            for uid in user_ids:
                _walk_document(self._doc(uid), out)
        else:
            for collection in self.client.collections():
                for doc in collection.list_documents():
                    _walk_document(doc, out)
        return out

    def stored_bytes(self, user_id: str) -> bytes:
        return b"\n".join(_leaves(data) for data, _ in self.snapshot(user_id).values())

    def rotate(self, cipher: SessionCipher, *, user_id: str | None = None, encrypt_pii: bool = False) -> int:
        from telethon_firestore_session.firestore import rotate_firestore_sessions

        return rotate_firestore_sessions(self.client, self.bot_id, cipher, user_id, encrypt_pii=encrypt_pii)


def _walk_document(doc: Any, out: dict[str, Any]) -> None:
    snap = doc.get()
    if snap.exists:
        out[doc.path] = (snap.to_dict(), snap.update_time)
    for collection in doc.collections():
        for child in collection.list_documents():
            _walk_document(child, out)


def _leaves(value: Any) -> bytes:
    """A document's values as the bytes a reader of the database sees."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, Mapping):
        return b"\n".join(_leaves(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return b"\n".join(_leaves(v) for v in value)
    return repr(value).encode()


#: SQLite files of one session: the database and its journals. ``-shm`` is SQLite's
#: shared-memory index, rebuilt by any reader, so a snapshot leaves it out.
_SIDE_FILES = ("", "-wal", "-journal")


class ScopedSQLiteBackend(_StoreBackend):
    """:class:`~telethon_firestore_session.sqlite.ScopedSQLiteSession` in ``sessions_dir``.

    ``options`` go to every session (e.g. ``cipher=SessionCipher(key), encrypt_pii=True``).
    """

    name = "scoped-sqlite"
    no_auth_key = b""  # Telethon's schema stores an empty blob for "no auth key"

    def __init__(
        self, sessions_dir: str | os.PathLike[str], bot_id: str = "bot", user_id: str = "42", **options: Any
    ) -> None:
        super().__init__(bot_id, user_id, options)
        self.sessions_dir = sessions_dir

    def construct(self, user_id: str, bot_id: str, **options: Any) -> Session:
        from telethon_firestore_session.sqlite import ScopedSQLiteSession

        return ScopedSQLiteSession(user_id, bot_id=bot_id, sessions_dir=self.sessions_dir, **options)

    # -- what only the store knows ---------------------------------------------------------

    def path(self, user_id: str, bot_id: str | None = None) -> Path:
        from telethon_firestore_session.sqlite import session_path

        return session_path(self.sessions_dir, SessionKey(bot_id or self.bot_id, user_id))

    def where(self, user_id: str, bot_id: str | None = None) -> str:
        return str(self.path(user_id, bot_id))

    def query(
        self, user_id: str, sql: str, params: tuple[Any, ...] = (), bot_id: str | None = None
    ) -> list[tuple[Any, ...]]:
        """Read through a connection of our own (it only reads: an empty ``-wal`` it removes held nothing)."""
        conn = sqlite3.connect(self.path(user_id, bot_id))
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def write(self, user_id: str, sql: str, params: tuple[Any, ...] = (), bot_id: str | None = None) -> None:
        """Change the file as an attacker (or another program) would, and leave no ``-wal`` behind."""
        conn = sqlite3.connect(self.path(user_id, bot_id), isolation_level=None)
        try:
            conn.execute(sql, params)
            conn.execute("pragma wal_checkpoint(truncate)")
        finally:
            conn.close()

    def stored_auth_key(self, user_id: str, bot_id: str | None = None) -> Any:
        [(value,)] = self.query(user_id, "select auth_key from sessions", (), bot_id)
        return value

    def replace_auth_key(self, user_id: str, value: Any, bot_id: str | None = None) -> None:
        self.write(user_id, "update sessions set auth_key = ?", (value,), bot_id)

    def stored_entities(self, user_id: str) -> dict[int, StoredEntity]:
        from telethon_firestore_session.sqlite import BLIND_INDEX_PREFIX, SEALED_ENTITIES

        tables = {name for (name,) in self.query(user_id, "select name from sqlite_master where type = 'table'")}
        sealed: dict[int, tuple[Any, ...]] = {}
        if SEALED_ENTITIES in tables:
            rows = self.query(user_id, f"select id, username, phone, name from {SEALED_ENTITIES}")  # noqa: S608
            sealed = {r[0]: r[1:] for r in rows}
        out = {}
        for eid, access_hash, *columns, date in self.query(
            user_id, "select id, hash, username, phone, name, date from entities"
        ):
            fields = {}
            for i, (f, column) in enumerate(zip(PII_FIELDS, columns, strict=True)):
                if isinstance(column, str) and column.startswith(BLIND_INDEX_PREFIX):
                    side = sealed.get(eid, (None, None, None))[i]
                    fields[f] = StoredField(side, column[len(BLIND_INDEX_PREFIX) :])
                else:
                    fields[f] = StoredField(column)
            out[eid] = StoredEntity(access_hash, date, fields)
        return out

    def replace_entity_field(self, user_id: str, entity_id: int, field: str, value: StoredField) -> None:
        from telethon_firestore_session.sqlite import BLIND_INDEX_PREFIX, SEALED_ENTITIES

        assert field in PII_FIELDS, field
        column = value.value if value.index is None else BLIND_INDEX_PREFIX + value.index
        self.write(user_id, f"update entities set {field} = ? where id = ?", (column, entity_id))  # noqa: S608
        if value.index is not None:
            self.write(user_id, f"update {SEALED_ENTITIES} set {field} = ? where id = ?", (value.value, entity_id))  # noqa: S608

    def snapshot(self, *user_ids: str) -> dict[str, str]:
        """sha256 of every file of ``user_ids``' sessions, or of every file and directory under ``sessions_dir``.

        Leaves out ``-shm`` files and empty ``-wal`` files: SQLite makes them for any reader.
        """
        root = Path(self.sessions_dir).resolve()
        out = {}
        if user_ids:
            files = [Path(f"{self.path(uid)}{suffix}") for uid in user_ids for suffix in _SIDE_FILES]
        else:
            everything = [root, *sorted(root.rglob("*"))] if root.exists() else []
            out.update({str(d.relative_to(root)): "directory" for d in everything if d.is_dir()})
            files = [p for p in everything if p.is_file()]
        for file in files:
            if file.name.endswith("-shm") or not file.exists():
                continue
            data = file.read_bytes()
            if data or not file.name.endswith("-wal"):
                out[str(file.relative_to(root))] = hashlib.sha256(data).hexdigest()
        return out

    def stored_bytes(self, user_id: str) -> bytes:
        """Every byte of the database and its side files, ``-shm`` included, as an attacker with the disk sees them."""
        path = self.path(user_id)
        files = [Path(f"{path}{suffix}") for suffix in (*_SIDE_FILES, "-shm")]
        return b"".join(f.read_bytes() for f in files if f.exists())

    def rotate(self, cipher: SessionCipher, *, user_id: str | None = None, encrypt_pii: bool = False) -> int:
        from telethon_firestore_session.sqlite import rotate_sqlite_sessions

        return rotate_sqlite_sessions(self.sessions_dir, self.bot_id, cipher, user_id=user_id, encrypt_pii=encrypt_pii)
