"""Move sessions between backends without logging anyone in twice.

:func:`copy_session` copies one Telethon session into another: ours
(:class:`~telethon_firestore_session.FirestoreSession`, ``ScopedSQLiteSession``) or
Telethon's own (``MemorySession``, ``SQLiteSession``, ``StringSession``). It copies the
DC, the auth key, the takeout id, the update states, the cached entities and the
sent-file cache. It is idempotent and never clobbers a newer session:

* the destination is empty (no auth key): everything is copied (``"copied"``);
* the destination holds the **same** auth key: records missing from the destination,
  or newer in the source, are added; nothing newer is replaced (``"merged"``, or
  ``"unchanged"`` when there was nothing to add);
* the destination holds a **different** auth key: it is a different login, and nothing
  is written (``"skipped"``) unless ``overwrite=True``, which first removes every
  record of the destination and then copies (``"replaced"``).

Importers bring in Telethon ``.session`` files (:func:`read_session_file`,
:func:`import_session_files`), ``StringSession`` strings (:func:`read_string_session`)
and the original system's Firestore documents, which kept a base64 ``session_data``
field under ``bots/{bot_id}/user_sessions/{user_id}`` (:func:`import_legacy_documents`).
Exporters write a Telethon ``.session`` file (:func:`export_session_file`) or a
``StringSession`` string (:func:`export_string_session`).

Bulk imports into Firestore (:class:`FirestoreDestination`) batch the writes of many
sessions into commits of at most 500 writes and hold at most one session's records
plus one batch in memory. A session is reported as imported only once every write
of it is committed. A bulk import that stops halfway reports what went in and what
did not, and running it again is safe: what is already there is ``"unchanged"``.
"""

from __future__ import annotations

import abc
import base64
import binascii
import contextlib
import dataclasses
import datetime
import functools
import logging
import os
import sqlite3
import struct
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from telethon.crypto import AuthKey
from telethon.sessions import MemorySession, SQLiteSession, StringSession
from telethon.sessions.abstract import Session
from telethon.tl import types

from .core import (
    EMPTY_HEADER,
    Changes,
    EntityRow,
    FileKey,
    SessionCore,
    SessionHeader,
    SessionSnapshot,
    auth_key_fingerprint,
)
from .errors import SessionCorruptError, SessionError, SessionStoreError
from .ids import SessionKey

if TYPE_CHECKING:
    from google.cloud import firestore

    from .crypto import SessionCipher
    from .firestore import FirestoreStore

__all__ = [
    "COPIED",
    "FAILED",
    "MERGED",
    "REPLACED",
    "SKIPPED",
    "UNCHANGED",
    "BulkReport",
    "CopyReport",
    "Destination",
    "FirestoreDestination",
    "ImportItem",
    "SessionDestination",
    "SessionSnapshot",
    "auth_key_fingerprint",
    "copy_session",
    "decode_legacy_session_data",
    "export_session_file",
    "export_string_session",
    "import_legacy_documents",
    "import_session_files",
    "import_snapshots",
    "import_string_session",
    "read_session",
    "read_session_file",
    "read_string_session",
    "session_files",
    "user_id_from_filename",
]

log = logging.getLogger("telethon_firestore_session.migrate")

#: The first 16 bytes of every SQLite 3 database file.
SQLITE_MAGIC = b"SQLite format 3\x00"
#: Telegram auth keys are 2048 bits.
AUTH_KEY_SIZE = 256
#: Where the original system's base64 session lives, and where the importer keeps a copy.
LEGACY_FIELD = "session_data"
LEGACY_BACKUP_FIELD = "legacy_session_data"

COPIED = "copied"
MERGED = "merged"
UNCHANGED = "unchanged"
REPLACED = "replaced"
SKIPPED = "skipped"
FAILED = "failed"

_NO_AUTH_KEY = "the source has no auth key (it never logged in); nothing to copy"
_CHANNEL_MARK = 1_000_000_000_000
_UTC = datetime.timezone.utc
_URLSAFE = str.maketrans("-_", "+/")


def _key_bytes(auth_key: Any) -> bytes | None:
    if auth_key is None:
        return None
    key = auth_key.key if isinstance(auth_key, AuthKey) else auth_key
    return bytes(key) if key else None


def _session_header(session: Any) -> SessionHeader:
    return SessionHeader(
        int(session.dc_id or 0),
        session.server_address,
        session.port,
        _key_bytes(session.auth_key),
        session.takeout_id,
    )


def _is_memory(session: Any) -> bool:
    # Subclasses of MemorySession written by third parties usually keep their records
    # elsewhere and leave ``_entities`` empty, so only Telethon's own classes qualify.
    return type(session) in (MemorySession, StringSession)


def read_session(session: Session | SessionSnapshot) -> SessionSnapshot:
    """Read every record of ``session`` (ours, or Telethon's Memory/SQLite/String sessions).

    For ours, entities not yet in memory are read from the store (one query).
    An unknown session type only yields its header and update states
    (``complete=False``): the abstract API cannot list entities.
    """
    if isinstance(session, SessionSnapshot):
        return session
    h = _session_header(session)
    snap = SessionSnapshot(h.dc_id, h.server_address, h.port, h.auth_key, h.takeout_id)
    snap.update_states = dict(session.get_update_states() or ())
    if isinstance(session, SessionCore):
        snap.entities = list(session.iter_entities())
        snap.files = dict(session.iter_files())
    elif isinstance(session, SQLiteSession):
        where = str(session.filename)
        _check_auth_key(h.auth_key, where)
        _refuse_sealed_entities(session._cursor(), where)
        snap.entities, snap.files = _read_sqlite_records(session._cursor(), _sqlite_version(session._cursor()))
    elif _is_memory(session):
        snap.entities = _memory_entities(session)
        snap.files = {(md5, size, kind.value): value for (md5, size, kind), value in session._files.items()}
    else:
        snap.complete = False
    return snap


def _memory_entities(session: Any) -> list[EntityRow]:
    rows: dict[int, EntityRow] = {}
    for eid, ehash, username, phone, name in session._entities:
        # MemorySession can hold stale duplicates of one id; keep one of them.
        rows[eid] = EntityRow(eid, ehash, username, phone, name, 0)
    return list(rows.values())


def _sqlite_version(cur: sqlite3.Cursor) -> int | None:
    try:
        cur.execute("select name from sqlite_master where type='table'")
        tables = {r[0] for r in cur.fetchall()}
        if "version" not in tables:
            return None
        row = cur.execute("select version from version").fetchone()
        return int(row[0]) if row else None
    finally:
        cur.close()


def _refuse_sealed_entities(cur: sqlite3.Cursor, where: str) -> None:
    """A file whose entity fields ScopedSQLiteSession sealed (``encrypt_pii``) holds blind indexes, not names."""
    try:
        sealed = cur.execute("select 1 from sqlite_master where type='table' and name='tfs_sealed_entities'").fetchone()
    finally:
        cur.close()
    if sealed is not None:
        raise SessionCorruptError(
            f"{where}: its usernames, phones and names are sealed by telethon-firestore-session encryption "
            "(open it with ScopedSQLiteSession and the key instead)"
        )


def _columns(cur: sqlite3.Cursor, table: str) -> set[str]:
    return {r[1] for r in cur.execute(f"pragma table_info({table})").fetchall()}


def _read_sqlite_records(
    cur: sqlite3.Cursor, version: int | None
) -> tuple[list[EntityRow], dict[FileKey, tuple[int, int]]]:
    """Entities and sent files from a database in Telethon's schema (any version)."""
    try:
        entities: list[EntityRow] = []
        cols = _columns(cur, "entities")
        # Versions up to 5 stored access hashes that may be wrong; Telethon drops them.
        if cols and (version is None or version > 5):
            date = "date" if "date" in cols else "0"
            for eid, ehash, username, phone, name, edate in cur.execute(
                f"select id, hash, username, phone, name, {date} from entities"  # noqa: S608 - fixed names
            ):
                entities.append(
                    EntityRow(
                        int(eid),
                        int(ehash),
                        username or None,
                        str(phone) if phone is not None else None,  # the column has integer affinity
                        name or None,
                        int(edate or 0),
                    )
                )
        files: dict[FileKey, tuple[int, int]] = {}
        if {"md5_digest", "file_size", "type", "id", "hash"} <= _columns(cur, "sent_files"):
            for md5, size, kind, fid, fhash in cur.execute(
                "select md5_digest, file_size, type, id, hash from sent_files"
            ):
                files[(bytes(md5), int(size), int(kind))] = (int(fid), int(fhash))
        return entities, files
    finally:
        cur.close()


def _read_sqlite_states(cur: sqlite3.Cursor) -> dict[int, types.updates.State]:
    try:
        if not _columns(cur, "update_state"):
            return {}
        return {
            int(sid): types.updates.State(
                int(pts), int(qts), datetime.datetime.fromtimestamp(date, tz=_UTC), int(seq), unread_count=0
            )
            for sid, pts, qts, date, seq in cur.execute("select id, pts, qts, date, seq from update_state")
        }
    finally:
        cur.close()


def _check_auth_key(key: bytes | None, where: str) -> bytes | None:
    if key is not None and len(key) != AUTH_KEY_SIZE:
        raise SessionCorruptError(
            f"{where}: the auth key has {len(key)} bytes, not {AUTH_KEY_SIZE}; it may be sealed by "
            "telethon-firestore-session encryption (open it with ScopedSQLiteSession and the key instead)"
        )
    return key


def read_session_file(path: str | os.PathLike[str], *, _read_only: bool = True) -> SessionSnapshot:
    """Read a Telethon ``.session`` file (any schema version) without modifying it.

    The file is opened read-only; unlike ``SQLiteSession(path)`` this never creates a
    missing file and never upgrades an old one in place.

    :raises FileNotFoundError: if ``path`` does not exist.
    :raises SessionCorruptError: if it is not a Telethon session database.
    """
    p = Path(path)
    with p.open("rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if head != SQLITE_MAGIC:
        raise SessionCorruptError(f"{p}: not an SQLite database, so not a Telethon .session file")
    uri = p.resolve().as_uri() + ("?mode=ro" if _read_only else "")
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise SessionCorruptError(f"{p}: cannot open it ({exc})") from exc
    try:
        return _read_telethon_db(conn, str(p))
    except sqlite3.Error as exc:
        raise SessionCorruptError(f"{p}: cannot read it as a Telethon session ({exc})") from exc
    finally:
        conn.close()


def _read_telethon_db(conn: sqlite3.Connection, where: str) -> SessionSnapshot:
    version = _sqlite_version(conn.cursor())
    cur = conn.cursor()
    try:
        cur.execute("select * from sessions")
        names = [d[0] for d in cur.description]
        row = cur.fetchone()
    except sqlite3.OperationalError as exc:
        raise SessionCorruptError(f"{where}: has no sessions table, so it is not a Telethon session") from exc
    finally:
        cur.close()
    snap = SessionSnapshot()
    if row is not None:
        values = dict(zip(names, row, strict=False))
        snap.dc_id = int(values.get("dc_id") or 0)
        snap.server_address = values.get("server_address")
        snap.port = values.get("port")
        snap.auth_key = _check_auth_key(bytes(values["auth_key"]) if values.get("auth_key") else None, where)
        snap.takeout_id = values.get("takeout_id")
    snap.update_states = _read_sqlite_states(conn.cursor())
    _refuse_sealed_entities(conn.cursor(), where)
    snap.entities, snap.files = _read_sqlite_records(conn.cursor(), version)
    return snap


def read_string_session(string: str) -> SessionSnapshot:
    """Read a Telethon ``StringSession`` string (DC, server address, port and auth key).

    :raises SessionCorruptError: if ``string`` is not a valid StringSession string.
    """
    text = string.strip()
    try:
        session = StringSession(text)
    except (ValueError, struct.error, binascii.Error, IndexError) as exc:
        raise SessionCorruptError(
            "not a valid Telethon StringSession string (expected the text that StringSession.save() returns)"
        ) from exc
    return read_session(session)


def decode_legacy_session_data(value: object, where: str = "session_data") -> SessionSnapshot:
    """Decode the original system's ``session_data`` field.

    It is base64 of the bytes of a Telethon ``.session`` SQLite file (recognised by
    ``b"SQLite format 3\\x00"`` after decoding). A ``StringSession`` string, plain or
    base64-encoded, and raw bytes of a ``.session`` file are accepted too.

    :raises SessionCorruptError: if the value is none of these.
    """
    candidates: list[bytes] = []
    text: str | None = None
    if isinstance(value, bytes):
        candidates.append(value)
        with contextlib.suppress(UnicodeDecodeError):
            text = value.decode("ascii").strip()
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise SessionCorruptError(f"{where}: expected a base64 string, found {type(value).__name__}")
    if text:
        # Standard or URL-safe alphabet, padded or not; anything else is not base64.
        normal = text.translate(_URLSAFE) + "=" * (-len(text) % 4)
        with contextlib.suppress(binascii.Error, ValueError):
            candidates.append(base64.b64decode(normal, validate=True))
    for raw in candidates:
        if raw.startswith(SQLITE_MAGIC):
            return _snapshot_from_sqlite_bytes(raw, where)
    strings = [text] if text else []
    for raw in candidates:
        with contextlib.suppress(UnicodeDecodeError):
            strings.append(raw.decode("ascii").strip())
    for s in strings:
        if s and s[0] == "1":
            with contextlib.suppress(SessionCorruptError):
                return read_string_session(s)
    raise SessionCorruptError(
        f"{where}: not base64 of a Telethon .session file, nor a StringSession string; the document was not modified"
    )


def _snapshot_from_sqlite_bytes(raw: bytes, where: str) -> SessionSnapshot:
    with tempfile.TemporaryDirectory(prefix="tfs-import-") as tmp:
        path = Path(tmp) / "legacy.session"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        try:
            return read_session_file(path, _read_only=False)
        except SessionCorruptError as exc:
            raise SessionCorruptError(f"{where}: {exc}".replace(str(path), "the decoded file")) from exc


# -- destinations ------------------------------------------------------------------------


class _Target(abc.ABC):
    """One destination session, seen the way the copy needs it."""

    where = "?"

    @abc.abstractmethod
    def header(self) -> SessionHeader: ...

    @abc.abstractmethod
    def states(self) -> dict[int, types.updates.State]: ...

    @abc.abstractmethod
    def entities(self) -> dict[int, EntityRow]: ...

    @abc.abstractmethod
    def files(self) -> dict[FileKey, tuple[int, int]]: ...

    @abc.abstractmethod
    def clear(self) -> None:
        """Remove every record of the destination (before an overwrite)."""

    @abc.abstractmethod
    def write(
        self,
        header: SessionHeader | None,
        states: dict[int, types.updates.State],
        entities: list[EntityRow],
        files: dict[FileKey, tuple[int, int]],
    ) -> None:
        """Store the records (durably, or queued in a batch whose commit decides)."""


def _set_header(session: Any, header: SessionHeader) -> None:
    # SQLiteSession.set_dc re-reads the auth key from its table: set the DC first.
    session.set_dc(header.dc_id, header.server_address, header.port)
    session.auth_key = AuthKey(header.auth_key) if header.auth_key else None
    session.takeout_id = header.takeout_id


class _CoreTarget(_Target):
    """Our sessions: ``FirestoreSession``, ``ScopedSQLiteSession`` or an unbound core."""

    def __init__(self, core: SessionCore, flush_timeout: float) -> None:
        self.core = core
        self.flush_timeout = flush_timeout
        self.where = core._store.where if core._store is not None else "memory"

    def header(self) -> SessionHeader:
        return _session_header(self.core)

    def states(self) -> dict[int, types.updates.State]:
        return dict(self.core.get_update_states())

    def entities(self) -> dict[int, EntityRow]:
        return {r.id: r for r in self.core.iter_entities()}

    def files(self) -> dict[FileKey, tuple[int, int]]:
        return dict(self.core.iter_files())

    def clear(self) -> None:
        core = self.core
        core.delete()
        # delete() leaves the object unusable; start it afresh on the same (now empty) store.
        SessionCore.__init__(
            core,
            core._store,
            flush_interval=core._flush_interval,
            close_timeout=core._close_timeout,
            writer=core._writer,
        )

    def write(
        self,
        header: SessionHeader | None,
        states: dict[int, types.updates.State],
        entities: list[EntityRow],
        files: dict[FileKey, tuple[int, int]],
    ) -> None:
        core = self.core
        if header is not None:
            _set_header(core, header)
        for sid, state in states.items():
            core.set_update_state(sid, state)
        core.put_entity_rows(entities)
        for key, value in files.items():
            core.put_file(key, value)
        if not core.flush(self.flush_timeout):
            raise SessionStoreError(
                f"{self.where}: not everything was stored within {self.flush_timeout:.0f}s "
                "(the background writer keeps retrying); run the copy again to complete it"
            )


class _TelethonSQLiteTarget(_Target):
    def __init__(self, session: SQLiteSession) -> None:
        self.session = session
        self.where = f"sqlite:{session.filename}"

    def header(self) -> SessionHeader:
        return _session_header(self.session)

    def states(self) -> dict[int, types.updates.State]:
        return dict(self.session.get_update_states())

    def entities(self) -> dict[int, EntityRow]:
        rows, _ = _read_sqlite_records(self.session._cursor(), None)
        return {r.id: r for r in rows}

    def files(self) -> dict[FileKey, tuple[int, int]]:
        _, files = _read_sqlite_records(self.session._cursor(), None)
        return files

    def clear(self) -> None:
        cur = self.session._cursor()
        try:
            for table in ("entities", "sent_files", "update_state"):
                cur.execute(f"delete from {table}")  # noqa: S608 - fixed names
        finally:
            cur.close()
        self.session.save()

    def write(
        self,
        header: SessionHeader | None,
        states: dict[int, types.updates.State],
        entities: list[EntityRow],
        files: dict[FileKey, tuple[int, int]],
    ) -> None:
        s = self.session
        if header is not None:
            _set_header(s, header)
        for sid, state in states.items():
            s.set_update_state(sid, state)
        now = int(time.time())
        cur = s._cursor()
        try:
            cur.executemany(
                "insert or replace into entities values (?,?,?,?,?,?)",
                [(r.id, r.hash, r.username, r.phone, r.name, r.date or now) for r in entities],
            )
            cur.executemany(
                "insert or replace into sent_files values (?,?,?,?,?)",
                [(k[0], k[1], k[2], v[0], v[1]) for k, v in files.items()],
            )
        finally:
            cur.close()
        s.save()


class _MemoryTarget(_Target):
    def __init__(self, session: MemorySession) -> None:
        self.session = session
        self.where = type(session).__name__

    def header(self) -> SessionHeader:
        return _session_header(self.session)

    def states(self) -> dict[int, types.updates.State]:
        return dict(self.session.get_update_states())

    def entities(self) -> dict[int, EntityRow]:
        return {r.id: r for r in _memory_entities(self.session)}

    def files(self) -> dict[FileKey, tuple[int, int]]:
        return {(m, s, k.value): v for (m, s, k), v in self.session._files.items()}

    def clear(self) -> None:
        self.session._entities = set()
        self.session._files = {}
        self.session._update_states = {}

    def write(
        self,
        header: SessionHeader | None,
        states: dict[int, types.updates.State],
        entities: list[EntityRow],
        files: dict[FileKey, tuple[int, int]],
    ) -> None:
        from telethon.sessions.memory import _SentFileType

        s = self.session
        if header is not None:
            _set_header(s, header)
        for sid, state in states.items():
            s.set_update_state(sid, state)
        ids = {r.id for r in entities}
        s._entities = {row for row in s._entities if row[0] not in ids}
        s._entities |= {(r.id, r.hash, r.username, r.phone, r.name) for r in entities}
        for (md5, size, kind), value in files.items():
            s._files[(md5, size, _SentFileType(kind))] = value


def _row_to_tl(row: EntityRow) -> Any:
    """A TL object whose ``process_entities`` row is ``row`` (for unknown session types)."""
    if row.id >= 0:
        return types.User(row.id, access_hash=row.hash, username=row.username, phone=row.phone, first_name=row.name)
    bare = -row.id
    if bare > _CHANNEL_MARK:
        return types.Channel(
            bare - _CHANNEL_MARK,
            row.name or "",
            types.ChatPhotoEmpty(),
            None,
            access_hash=row.hash,
            username=row.username,
        )
    return types.Chat(bare, row.name or "", types.ChatPhotoEmpty(), 0, None, 0)


class _GenericTarget(_Target):
    """Any other ``Session`` subclass, through the abstract API only."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.where = type(session).__name__

    def header(self) -> SessionHeader:
        return _session_header(self.session)

    def states(self) -> dict[int, types.updates.State]:
        return dict(self.session.get_update_states() or ())

    def entities(self) -> dict[int, EntityRow]:
        return {}

    def files(self) -> dict[FileKey, tuple[int, int]]:
        return {}

    def clear(self) -> None:
        raise TypeError(
            f"cannot overwrite a {type(self.session).__name__}: the abstract Session API cannot remove its "
            "records; delete it yourself and copy into a fresh one"
        )

    def write(
        self,
        header: SessionHeader | None,
        states: dict[int, types.updates.State],
        entities: list[EntityRow],
        files: dict[FileKey, tuple[int, int]],
    ) -> None:
        s = self.session
        if header is not None:
            _set_header(s, header)
        for sid, state in states.items():
            s.set_update_state(sid, state)
        if entities:
            s.process_entities([_row_to_tl(r) for r in entities])
        for (md5, size, kind), (fid, fhash) in files.items():
            cls = types.InputPhoto if kind == 1 else types.InputDocument
            s.cache_file(md5, size, cls(fid, fhash, b""))
        s.save()


def _target_for(session: Session, flush_timeout: float) -> _Target:
    if isinstance(session, SessionCore):
        return _CoreTarget(session, flush_timeout)
    if isinstance(session, SQLiteSession):
        return _TelethonSQLiteTarget(session)
    if _is_memory(session):
        return _MemoryTarget(session)
    if isinstance(session, Session):
        return _GenericTarget(session)
    raise TypeError(f"expected a Telethon Session, got {type(session).__name__}")


# -- the copy ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CopyReport:
    """What :func:`copy_session` did.

    ``status`` is one of ``"copied"``, ``"merged"``, ``"unchanged"``, ``"replaced"`` or
    ``"skipped"`` (then ``reason`` says why). The counts are records written.
    """

    status: str
    reason: str = ""
    entities: int = 0
    update_states: int = 0
    files: int = 0
    header_written: bool = False
    fingerprint: str | None = None

    @property
    def changed(self) -> bool:
        return self.status in (COPIED, MERGED, REPLACED)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _state_newer(src: types.updates.State, dst: types.updates.State | None) -> bool:
    if dst is None:
        return True
    return bool((src.pts, src.qts, src.seq) > (dst.pts, dst.qts, dst.seq))


def _entity_newer(src: EntityRow, dst: EntityRow | None) -> bool:
    if dst is None:
        return True
    if (src.hash, src.username, src.phone, src.name) == (dst.hash, dst.username, dst.phone, dst.name):
        return False
    return src.date > dst.date


def _apply(snap: SessionSnapshot, target: _Target, overwrite: bool) -> CopyReport:
    fingerprint = snap.fingerprint
    if not snap.auth_key:
        return CopyReport(SKIPPED, _NO_AUTH_KEY)
    current = target.header()
    dst_key = current.auth_key
    if dst_key and dst_key != snap.auth_key:
        if not overwrite:
            return CopyReport(
                SKIPPED,
                f"the destination holds a different login (auth key {auth_key_fingerprint(dst_key)}, source "
                f"{fingerprint}); it was left untouched. Pass overwrite=True (--overwrite) to replace it",
                fingerprint=fingerprint,
            )
        target.clear()
        status, merge = REPLACED, False
    elif dst_key:
        status, merge = MERGED, True
    else:
        status, merge = COPIED, False

    if merge:
        # Same login: keep what the destination has, add what it lacks or holds older.
        header = SessionHeader(
            current.dc_id or snap.dc_id,
            current.server_address or snap.server_address,
            current.port or snap.port,
            dst_key,
            current.takeout_id if current.takeout_id is not None else snap.takeout_id,
        )
        new_header = header if header != current else None
        dst_states = target.states()
        states = {sid: st for sid, st in snap.update_states.items() if _state_newer(st, dst_states.get(sid))}
        entities: list[EntityRow] = []
        if snap.entities:
            dst_entities = target.entities()
            entities = [r for r in snap.entities if _entity_newer(r, dst_entities.get(r.id))]
        files: dict[FileKey, tuple[int, int]] = {}
        if snap.files:
            dst_files = target.files()
            files = {k: v for k, v in snap.files.items() if k not in dst_files}
        if new_header is None and not states and not entities and not files:
            return CopyReport(UNCHANGED, "the destination already holds this session", fingerprint=fingerprint)
    else:
        new_header = snap.header
        states, entities, files = dict(snap.update_states), list(snap.entities), dict(snap.files)

    target.write(new_header, states, entities, files)
    reason = "" if snap.complete else "the source type cannot list its entities; only the header and states came"
    return CopyReport(
        status,
        reason,
        entities=len(entities),
        update_states=len(states),
        files=len(files),
        header_written=new_header is not None,
        fingerprint=fingerprint,
    )


def copy_session(
    src: Session | SessionSnapshot,
    dst: Session,
    *,
    overwrite: bool = False,
    flush_timeout: float = 30.0,
) -> CopyReport:
    """Copy DC, auth key, takeout id, update states, entities and sent files from ``src`` to ``dst``.

    Either side may be one of our sessions or Telethon's ``MemorySession``,
    ``SQLiteSession`` or ``StringSession`` (a ``StringSession`` only carries the DC and
    auth key). Any other ``Session`` subclass works through the abstract API.

    Never clobbers a newer session: when ``dst`` already holds a different auth key,
    nothing is written and the report says ``"skipped"``, unless ``overwrite=True``,
    which removes every record of ``dst`` first. With the same auth key the copy
    merges: it adds missing records and never replaces newer ones, so running it
    twice writes nothing the second time (``"unchanged"``).

    Durability: when this returns, the records are stored: ours are saved and
    flushed (waiting at most ``flush_timeout`` seconds), a Telethon ``SQLiteSession``
    is committed. ``dst`` is not closed.

    :raises SessionStoreError: if the destination could not store everything in time.
    """
    snap = read_session(src)
    return _apply(snap, _target_for(dst, flush_timeout), overwrite)


# -- exporters ---------------------------------------------------------------------------


def _create_private(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    os.chmod(path, 0o600)  # whatever the umask


def export_session_file(
    src: Session | SessionSnapshot,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> tuple[Path, CopyReport]:
    """Write ``src`` to a Telethon ``.session`` file that plain ``SQLiteSession`` opens.

    A new file is created with mode 0600. If the file exists it is merged into
    like any destination of :func:`copy_session` (same login: merged; a different
    login: skipped unless ``overwrite``, which replaces its records). Telethon appends
    ``.session`` to a name without it, and so does this; the path written is returned.
    """
    p = Path(path)
    if p.suffix != ".session":
        p = p.with_name(p.name + ".session")
    snap = read_session(src)
    if p.exists():
        read_session_file(p)  # refuse to touch a file that is not a Telethon session
    else:
        _create_private(p)
    dst = SQLiteSession(str(p))
    try:
        report = _apply(snap, _TelethonSQLiteTarget(dst), overwrite)
    finally:
        dst.close()
    return p, report


def export_string_session(src: Session | SessionSnapshot) -> str:
    """The ``StringSession`` string of ``src``: DC, server address, port and auth key only.

    A string session carries no entities, update states or takeout id. The result
    is a full login: keep it secret.

    :raises ValueError: if ``src`` has no auth key or no server address.
    """
    snap = read_session(src)
    if not snap.auth_key:
        raise ValueError("the session has no auth key (it never logged in); there is nothing to export")
    if not snap.server_address or snap.port is None:
        raise ValueError("the session has no server address; a StringSession needs one")
    out = StringSession()
    out.set_dc(snap.dc_id, snap.server_address, snap.port)
    out.auth_key = AuthKey(snap.auth_key)
    return str(out.save())


# -- bulk imports ------------------------------------------------------------------------


@dataclasses.dataclass
class ImportItem:
    """The outcome of one session in a bulk import."""

    source: str
    user_id: str | None
    status: str
    reason: str = ""
    entities: int = 0
    update_states: int = 0
    files: int = 0
    fingerprint: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class BulkReport:
    """What a bulk import did: one :class:`ImportItem` per source, and the write counts.

    Items are added when their outcome is final: for a batched Firestore import,
    once every write of that session is committed. ``commits`` and ``writes`` count
    Firestore commits and document writes (0 for other destinations).
    """

    items: list[ImportItem] = dataclasses.field(default_factory=list)
    commits: int = 0
    writes: int = 0
    reads: int = 0
    elapsed: float = 0.0

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for item in self.items:
            out[item.status] = out.get(item.status, 0) + 1
        return out

    @property
    def failed(self) -> list[ImportItem]:
        return [i for i in self.items if i.status == FAILED]

    @property
    def ok(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "counts": self.counts(),
            "commits": self.commits,
            "writes": self.writes,
            "reads": self.reads,
            "elapsed_seconds": round(self.elapsed, 3),
            "items": [i.as_dict() for i in self.items],
        }


#: ``progress(done, total, item)``, called after each source is read and applied.
ProgressCallback = Callable[[int, "int | None", ImportItem], None]


def _item(source: str, user_id: str | None, report: CopyReport) -> ImportItem:
    return ImportItem(
        source,
        user_id,
        report.status,
        report.reason,
        report.entities,
        report.update_states,
        report.files,
        report.fingerprint,
    )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Destination(abc.ABC):
    """Where a bulk import puts sessions, by user id."""

    @abc.abstractmethod
    def put(self, source: str, user_id: str, snapshot: SessionSnapshot, *, overwrite: bool) -> None:
        """Apply ``snapshot`` to the session of ``user_id``; the outcome comes from :meth:`drain`."""

    @abc.abstractmethod
    def drain(self, *, final: bool = False) -> list[ImportItem]:
        """Items whose outcome is now final. ``final=True`` commits whatever is pending."""

    def account(self, report: BulkReport) -> None:  # noqa: B027 - optional hook
        """Add this destination's counters to ``report``."""


class SessionDestination(Destination):
    """Any session backend, one session at a time: ``opener(user_id)`` returns the session.

    Each session is copied with :func:`copy_session` and closed; its writes are
    durable before the next one starts.
    """

    def __init__(self, opener: Callable[[str], Session], *, flush_timeout: float = 30.0) -> None:
        self.opener = opener
        self.flush_timeout = flush_timeout
        self._done: list[ImportItem] = []

    def put(self, source: str, user_id: str, snapshot: SessionSnapshot, *, overwrite: bool) -> None:
        if not snapshot.auth_key:
            # Nothing would be copied: do not open (and so create) an empty destination.
            self._done.append(ImportItem(source, user_id, SKIPPED, _NO_AUTH_KEY))
            return
        try:
            dst = self.opener(user_id)
        except (SessionError, OSError, ValueError) as exc:
            self._done.append(ImportItem(source, user_id, FAILED, _describe(exc)))
            return
        try:
            report = copy_session(snapshot, dst, overwrite=overwrite, flush_timeout=self.flush_timeout)
            self._done.append(_item(source, user_id, report))
        except (SessionError, OSError, ValueError, sqlite3.Error) as exc:
            self._done.append(ImportItem(source, user_id, FAILED, _describe(exc), fingerprint=snapshot.fingerprint))
        finally:
            try:
                dst.close()
            except Exception as exc:  # noqa: BLE001 - reported, never fatal to the bulk run
                log.warning("closing the session of %s failed: %s", user_id, type(exc).__name__)

    def drain(self, *, final: bool = False) -> list[ImportItem]:
        done, self._done = self._done, []
        return done


class _Batcher:
    """Collects document writes of many sessions and commits them 500 at a time."""

    def __init__(self, client: firestore.Client, limit: int, retry: Any, timeout: float) -> None:
        self.client = client
        self.limit = limit
        self.retry = retry
        self.timeout = timeout
        self.ops: list[tuple[int, Any, dict[str, Any], bool]] = []
        self.remaining: dict[int, int] = {}
        self.failed: dict[int, str] = {}
        self.commits = 0
        self.writes = 0

    def add(self, owner: int, ref: Any, data: dict[str, Any], merge: bool) -> None:
        self.ops.append((owner, ref, data, merge))
        self.remaining[owner] = self.remaining.get(owner, 0) + 1

    def commit(self, *, final: bool) -> None:
        while len(self.ops) >= self.limit or (final and self.ops):
            chunk, self.ops = self.ops[: self.limit], self.ops[self.limit :]
            batch = self.client.batch()
            for _, ref, data, merge in chunk:
                batch.set(ref, data, merge=merge)
            try:
                batch.commit(retry=self.retry, timeout=self.timeout)
            except Exception as exc:  # noqa: BLE001 - every session in the batch is reported failed
                reason = f"commit failed: {_describe(exc)}"
                for owner, *_ in chunk:
                    self.failed.setdefault(owner, reason)
                    self.remaining[owner] -= 1
                continue
            self.commits += 1
            self.writes += len(chunk)
            for owner, *_ in chunk:
                self.remaining[owner] -= 1


class _FirestoreTarget(_Target):
    """One Firestore session whose writes go into a shared :class:`_Batcher`."""

    def __init__(
        self,
        store: FirestoreStore,
        batcher: _Batcher,
        owner: int,
        *,
        legacy: dict[str, Any] | None = None,
        keep_backup: bool = True,
    ) -> None:
        self.store = store
        self.batcher = batcher
        self.owner = owner
        self.where = store.where
        self.legacy = legacy
        self.keep_backup = keep_backup
        self.reads = 0
        self._loaded: Any = None
        self._load_done = False

    def _load(self) -> Any:
        if not self._load_done:
            if self.legacy is not None and "schema_version" not in self.legacy:
                self._loaded = None  # only the original layout is there: nothing of ours yet
            else:
                self.reads += 1
                self._loaded = self.store.load()
            self._load_done = True
        return self._loaded

    def header(self) -> SessionHeader:
        loaded = self._load()
        return loaded.header if loaded is not None else EMPTY_HEADER

    def states(self) -> dict[int, types.updates.State]:
        loaded = self._load()
        return dict(loaded.update_states) if loaded is not None else {}

    def entities(self) -> dict[int, EntityRow]:
        self.reads += 1
        return {r.id: r for r in self.store.iter_entities()}

    def files(self) -> dict[FileKey, tuple[int, int]]:
        self.reads += 1
        return dict(self.store.iter_files())

    def clear(self) -> None:
        # Replacing a different login: nothing of the old one may survive. What the
        # original layout held is written back with the new records (legacy_fields).
        self.store.delete()
        self._loaded = None

    def legacy_fields(self) -> dict[str, Any]:
        if self.legacy is None or LEGACY_FIELD not in self.legacy:
            return {}
        from google.cloud import firestore

        fields: dict[str, Any] = {LEGACY_FIELD: firestore.DELETE_FIELD}
        if self.keep_backup:
            backup = self.legacy[LEGACY_FIELD]
            cipher = getattr(self.store, "cipher", None)
            if cipher is not None:
                # With encryption on, the backup (which holds the auth key) is sealed too.
                raw = backup.encode("utf-8") if isinstance(backup, str) else bytes(backup)
                backup = cipher.seal(raw, where=str(self.store.key), field=LEGACY_BACKUP_FIELD)
            fields[LEGACY_BACKUP_FIELD] = backup
            fields["legacy_imported_at"] = datetime.datetime.now(_UTC)
        return fields

    def write(
        self,
        header: SessionHeader | None,
        states: dict[int, types.updates.State],
        entities: list[EntityRow],
        files: dict[FileKey, tuple[int, int]],
    ) -> None:
        now = int(time.time())
        changes = Changes(
            entities={r.id: (r if r.date else r._replace(date=now)) for r in entities},
            states=states,
            files=files,
        )
        ops = self.store._operations(changes)
        doc_ref, session_fields = next(ops)
        if header is not None:
            session_fields = {**self.store._header_fields(header), **session_fields}
        session_fields.update(self.legacy_fields())
        # The session document goes first: a session never exists without its header.
        self.batcher.add(self.owner, doc_ref, session_fields, True)
        for ref, data in ops:
            self.batcher.add(self.owner, ref, data, False)


class FirestoreDestination(Destination):
    """Firestore sessions of one bot, written in shared batches of at most 500 writes.

    With a ``cipher`` the auth keys (and, with ``encrypt_pii``, usernames, phones and
    names) are sealed exactly as ``FirestoreSession(cipher=...)`` seals them.
    Memory holds one session's records plus one batch. Each session costs one read
    of its document (two more queries when it has to be merged). A session is
    reported once all its writes are committed; a failed commit reports each session
    in it as failed, and running the import again completes them.
    """

    def __init__(
        self,
        client: firestore.Client,
        bot_id: str,
        *,
        batch_size: int = 500,
        rpc_timeout: float = 30.0,
        cipher: SessionCipher | None = None,
        encrypt_pii: bool = False,
        store_factory: Callable[[SessionKey], FirestoreStore] | None = None,
    ) -> None:
        from google.api_core import retry as retries

        from .firestore import MAX_WRITES_PER_COMMIT, FirestoreStore

        if not 1 <= batch_size <= MAX_WRITES_PER_COMMIT:
            raise ValueError(f"batch_size must be between 1 and {MAX_WRITES_PER_COMMIT}")
        self.client = client
        self.bot_id = bot_id
        sealing: dict[str, Any] = {}
        if cipher is not None:
            sealing = {"cipher": cipher, "encrypt_pii": encrypt_pii}
        self._store_factory = store_factory or (
            lambda key: FirestoreStore(key, client, rpc_timeout=rpc_timeout, **sealing)
        )
        retry = retries.Retry(initial=0.2, maximum=5.0, multiplier=2.0, timeout=rpc_timeout)
        self._batcher = _Batcher(client, batch_size, retry, rpc_timeout)
        self._pending: dict[int, ImportItem] = {}
        self._pending_users: set[str] = set()
        self._done: list[ImportItem] = []
        self._next_owner = 0
        self.reads = 0

    def _target(self, user_id: str, legacy: dict[str, Any] | None, keep_backup: bool) -> _FirestoreTarget:
        if user_id in self._pending_users:
            # The same user twice in one run: let the second one see the first one's writes.
            self._commit(final=True)
        self._next_owner += 1
        store = self._store_factory(SessionKey(self.bot_id, user_id))
        return _FirestoreTarget(store, self._batcher, self._next_owner, legacy=legacy, keep_backup=keep_backup)

    def put(self, source: str, user_id: str, snapshot: SessionSnapshot, *, overwrite: bool) -> None:
        self._put(source, user_id, snapshot, overwrite=overwrite, legacy=None, keep_backup=True)

    def _put(
        self,
        source: str,
        user_id: str,
        snapshot: SessionSnapshot,
        *,
        overwrite: bool,
        legacy: dict[str, Any] | None,
        keep_backup: bool,
    ) -> None:
        try:
            target = self._target(user_id, legacy, keep_backup)
        except (SessionError, ValueError) as exc:
            self._done.append(ImportItem(source, user_id, FAILED, _describe(exc)))
            return
        before = len(self._batcher.ops)
        try:
            report = _apply(snapshot, target, overwrite)
            if report.status == UNCHANGED and legacy is not None and target.legacy_fields():
                # Already imported, but the original field is back: move it aside again.
                self._batcher.add(target.owner, target.store.doc, target.legacy_fields(), True)
        except Exception as exc:  # noqa: BLE001 - one bad session must not stop the run
            del self._batcher.ops[before:]
            self._batcher.remaining.pop(target.owner, None)
            self._done.append(ImportItem(source, user_id, FAILED, _describe(exc), fingerprint=snapshot.fingerprint))
            return
        finally:
            self.reads += target.reads
        item = _item(source, user_id, report)
        if self._batcher.remaining.get(target.owner):
            self._pending[target.owner] = item
            self._pending_users.add(user_id)
        else:
            self._done.append(item)
        if report.status == REPLACED:
            # The old records are gone already: make the new ones durable now.
            self._commit(final=True)
        else:
            self._commit(final=False)

    def _commit(self, *, final: bool) -> None:
        b = self._batcher
        b.commit(final=final)
        for owner in [o for o in self._pending if not b.remaining.get(o)]:
            item = self._pending.pop(owner)
            b.remaining.pop(owner, None)
            reason = b.failed.pop(owner, None)
            if reason is not None:
                item.status, item.reason = FAILED, reason
            self._done.append(item)
        self._pending_users = {i.user_id for i in self._pending.values() if i.user_id is not None}

    def drain(self, *, final: bool = False) -> list[ImportItem]:
        if final:
            self._commit(final=True)
        done, self._done = self._done, []
        return done

    def account(self, report: BulkReport) -> None:
        report.commits = self._batcher.commits
        report.writes = self._batcher.writes
        report.reads = self.reads


def user_id_from_filename(path: str | os.PathLike[str]) -> str:
    """``user_123.session`` -> ``"123"`` (the original layout); ``alice.session`` -> ``"alice"``."""
    stem = Path(path).name
    if stem.endswith(".session"):
        stem = stem[: -len(".session")]
    if stem.startswith("user_") and len(stem) > len("user_"):
        stem = stem[len("user_") :]
    return stem


def session_files(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The files to import: each file as given, and every ``*.session`` file directly in each directory."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(c for c in p.iterdir() if c.name.endswith(".session") and c.is_file()))
        else:
            out.append(p)
    return out


#: One source of a bulk import: ``(description, user id, read)``; ``read()`` returns the snapshot.
Source = tuple[str, "str | None", Callable[[], SessionSnapshot]]


def import_snapshots(
    sources: Iterable[Source],
    destination: Destination,
    *,
    total: int | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    report: BulkReport | None = None,
    stop: Callable[[], bool] | None = None,
) -> BulkReport:
    """Copy many sessions into ``destination``, one at a time; the engine of every bulk import.

    Each source is read only when its turn comes, so memory holds one session
    (plus, for Firestore, one batch of writes). A source that cannot be read or
    written is reported as failed and the others go on. ``progress(done, total,
    item)`` is called as each outcome becomes final. Pass ``report`` to have it
    filled in as the import goes, so that it is complete up to the point where a
    ``KeyboardInterrupt`` stopped it.

    ``stop()`` is asked before each source: once it returns ``True`` no further
    source is read, what is pending is committed, and the report covers exactly
    the sessions handled (a graceful stop, e.g. on the first Ctrl-C).
    """
    report = report if report is not None else BulkReport()
    start = time.monotonic()
    done = 0

    def settle(items: Sequence[ImportItem]) -> None:
        nonlocal done
        for item in items:
            report.items.append(item)
            done += 1
            if progress is not None:
                progress(done, total, item)

    try:
        for source, user_id, read in sources:
            if stop is not None and stop():
                break
            if user_id is None:
                settle([ImportItem(source, None, FAILED, "no user id")])
                continue
            try:
                SessionKey("bot", user_id)
                snapshot = read()
            except (SessionError, OSError, ValueError, sqlite3.Error) as exc:
                settle([ImportItem(source, user_id, FAILED, _describe(exc))])
                continue
            destination.put(source, user_id, snapshot, overwrite=overwrite)
            del snapshot
            settle(destination.drain())
        settle(destination.drain(final=True))
    finally:
        destination.account(report)
        report.elapsed = time.monotonic() - start
    return report


def import_session_files(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    destination: Destination,
    *,
    user_id: str | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    report: BulkReport | None = None,
    stop: Callable[[], bool] | None = None,
) -> BulkReport:
    """Import Telethon ``.session`` files: a file, a directory of them, or a list of either.

    The user id comes from the file name (``user_123.session`` -> ``123``), or from
    ``user_id`` for a single file. Files are read read-only and never modified. A
    file that cannot be read is reported as failed and the others go on; fix it and
    run the import again: sessions already imported come out ``"unchanged"``.

    Pass ``report`` to have it filled in as the import goes (useful when the run
    may be interrupted), and ``stop`` to end it early (see :func:`import_snapshots`).
    """
    files = session_files(paths)
    if user_id is not None and len(files) != 1:
        raise ValueError("user_id can only be given for a single file")

    def sources() -> Iterator[tuple[str, str | None, Callable[[], SessionSnapshot]]]:
        for f in files:
            yield str(f), user_id or user_id_from_filename(f), functools.partial(read_session_file, f)

    return import_snapshots(
        sources(), destination, total=len(files), overwrite=overwrite, progress=progress, report=report, stop=stop
    )


def import_string_session(
    string: str,
    user_id: str,
    destination: Destination,
    *,
    overwrite: bool = False,
    report: BulkReport | None = None,
) -> BulkReport:
    """Import one ``StringSession`` string as the session of ``user_id``."""
    return import_snapshots(
        [("string", user_id, functools.partial(read_string_session, string))],
        destination,
        total=1,
        overwrite=overwrite,
        report=report,
    )


def import_legacy_documents(
    client: firestore.Client,
    bot_id: str,
    *,
    user_ids: Iterable[str] | None = None,
    overwrite: bool = False,
    keep_backup: bool = True,
    cipher: SessionCipher | None = None,
    encrypt_pii: bool = False,
    batch_size: int = 500,
    page_size: int = 100,
    progress: ProgressCallback | None = None,
    report: BulkReport | None = None,
    destination: FirestoreDestination | None = None,
    stop: Callable[[], bool] | None = None,
) -> BulkReport:
    """Convert the original system's documents in place, to this library's layout.

    The original system kept ``bots/{bot_id}/user_sessions/{user_id}`` with one field,
    ``session_data``: base64 of a Telethon ``.session`` file. For each such document
    this decodes it and writes the DC, auth key, takeout id, update states, entities
    and sent files in the new layout, in the same document and its subcollections.
    In the same write as the header, ``session_data`` is moved to
    ``legacy_session_data`` (with ``legacy_imported_at``), so the original is kept
    as a backup; ``keep_backup=False`` drops it instead. The backup holds the auth
    key; with a ``cipher`` it is sealed (bound to the session and the field
    ``legacy_session_data``), without one it stays in the clear, as the original was.

    Documents already in the new layout without ``session_data`` are not touched.
    Running it again is safe. Pages through the collection ``page_size`` documents
    at a time; ``user_ids`` restricts it to those users (one read each). ``stop``
    ends it early (see :func:`import_snapshots`).
    """
    dest = destination or FirestoreDestination(
        client, bot_id, batch_size=batch_size, cipher=cipher, encrypt_pii=encrypt_pii
    )
    col = client.collection("bots").document(bot_id).collection("user_sessions")
    fields = [LEGACY_FIELD, "schema_version"]

    def docs() -> Iterator[tuple[str, dict[str, Any]]]:
        if user_ids is not None:
            for uid in user_ids:
                snap = col.document(str(SessionKey(bot_id, uid).user_id)).get(field_paths=fields)
                dest.reads += 1
                if snap.exists:
                    yield snap.id, snap.to_dict() or {}
            return
        last = None
        while True:
            query = col.select(fields).order_by("__name__").limit(page_size)
            if last is not None:
                query = query.start_after(last)
            page = list(query.stream())
            dest.reads += 1
            for snap in page:
                yield snap.id, snap.to_dict() or {}
            if len(page) < page_size:
                return
            last = page[-1]

    def sources() -> Iterator[tuple[str, str | None, Callable[[], SessionSnapshot]]]:
        for uid, data in docs():
            if LEGACY_FIELD not in data:
                continue
            where = f"bots/{bot_id}/user_sessions/{uid}"
            legacy_by_source.clear()  # only the document being imported is kept in memory
            legacy_by_source[where] = data
            yield where, uid, functools.partial(decode_legacy_session_data, data[LEGACY_FIELD], where)

    legacy_by_source: dict[str, dict[str, Any]] = {}

    class _LegacyDestination(Destination):
        def put(self, source: str, user_id: str, snapshot: SessionSnapshot, *, overwrite: bool) -> None:
            legacy = legacy_by_source.pop(source, None)
            dest._put(source, user_id, snapshot, overwrite=overwrite, legacy=legacy, keep_backup=keep_backup)

        def drain(self, *, final: bool = False) -> list[ImportItem]:
            return dest.drain(final=final)

        def account(self, report: BulkReport) -> None:
            dest.account(report)

    return import_snapshots(
        sources(), _LegacyDestination(), overwrite=overwrite, progress=progress, report=report, stop=stop
    )
