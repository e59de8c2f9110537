"""What only each of our stores knows, for the encryption contract: raw stored values, snapshots, rotation.

:class:`FirestoreStorage` and :class:`SQLiteStorage` are the package's ``FirestoreBackend`` and
``ScopedSQLiteBackend`` as :class:`~telethon_firestore_session.testing.EncryptionBackend`\\ s.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from telethon_firestore_session.crypto import SessionCipher
from telethon_firestore_session.firestore import (
    ENTITIES,
    rotate_firestore_sessions,
    session_document,
)
from telethon_firestore_session.ids import SessionKey
from telethon_firestore_session.sealing import PII_FIELDS
from telethon_firestore_session.sqlite import (
    BLIND_INDEX_PREFIX,
    SEALED_ENTITIES,
    rotate_sqlite_sessions,
    session_path,
)
from telethon_firestore_session.testing import (
    EncryptionBackend,
    FirestoreBackend,
    ScopedSQLiteBackend,
    StoredEntity,
    StoredField,
)


class FirestoreStorage(FirestoreBackend, EncryptionBackend):
    """Sessions in Firestore (the emulator), and their documents as stored."""

    debug_loggers = ("google.cloud.firestore_v1",)

    def _doc(self, user_id: str, bot_id: str | None = None) -> Any:
        return session_document(self.client, SessionKey(bot_id or self.bot_id, user_id))

    def where(self, user_id: str, bot_id: str | None = None) -> str:
        return str(self._doc(user_id, bot_id).path)

    def stored_auth_key(self, user_id: str, bot_id: str | None = None) -> Any:
        return (self._doc(user_id, bot_id).get().to_dict() or {})["auth_key"]

    def replace_auth_key(self, user_id: str, value: Any, bot_id: str | None = None) -> None:
        self._doc(user_id, bot_id).update({"auth_key": value})

    def stored_entities(self, user_id: str) -> dict[int, StoredEntity]:
        out = {}
        for snap in self._doc(user_id).collection(ENTITIES).stream():
            data = snap.to_dict()
            fields = {f: StoredField(data.get(f), data.get(f"{f}_bi")) for f in PII_FIELDS}
            out[int(snap.id)] = StoredEntity(data["hash"], data["date"], fields)
        return out

    def replace_entity_field(self, user_id: str, entity_id: int, field: str, value: StoredField) -> None:
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


class SQLiteStorage(ScopedSQLiteBackend, EncryptionBackend):
    """Sessions in SQLite files, and the files' bytes and rows as stored."""

    no_auth_key = b""  # Telethon's schema stores an empty blob for "no auth key"

    def path(self, user_id: str, bot_id: str | None = None) -> Path:
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
        return rotate_sqlite_sessions(self.sessions_dir, self.bot_id, cipher, user_id=user_id, encrypt_pii=encrypt_pii)
