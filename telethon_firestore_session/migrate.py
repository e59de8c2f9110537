"""Move sessions between backends without logging anyone in twice.

:func:`copy_session` copies one Telethon session, ours or Telethon's own, into another and
never clobbers a newer one (its docstring states the rules).

:func:`export_session_file` and :func:`export_string_session` write Telethon's formats;
``.session`` files are read and written by :mod:`telethon_firestore_session.sqlite.schema`.
The bulk importers (:func:`import_session_files`, :func:`import_string_session`, and
:func:`import_snapshots` under both) copy many sessions into a :class:`Destination` and report
each once it is stored; running one again is safe. They live in :mod:`telethon_firestore_session.bulk`,
the Firestore importers (``FirestoreDestination``, ``import_legacy_documents``) in
:mod:`telethon_firestore_session.firestore.importer`; both are re-exported here.
"""

from __future__ import annotations

import abc
import binascii
import dataclasses
import logging
import os
import struct
from pathlib import Path
from typing import Any

from telethon.crypto import AuthKey
from telethon.sessions import MemorySession, SQLiteSession, StringSession
from telethon.sessions.abstract import Session
from telethon.tl import types

from .core import Changes, EntityRow, SessionCore, SessionHeader, SessionSnapshot, auth_key_fingerprint
from .errors import SessionCorruptError, SessionStoreError
from .sqlite.schema import read_session_file, write_session_file

__all__ = [
    "COPIED",
    "FAILED",
    "LEGACY_BACKUP_FIELD",
    "LEGACY_FIELD",
    "MERGED",
    "REPLACED",
    "SKIPPED",
    "UNCHANGED",
    "BulkReport",
    "CopyReport",
    "Destination",
    "FirestoreDestination",
    "ImportItem",
    "ProgressCallback",
    "SessionDestination",
    "SessionSnapshot",
    "Source",
    "Target",
    "apply_snapshot",
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

log = logging.getLogger(__name__)

COPIED = "copied"
MERGED = "merged"
UNCHANGED = "unchanged"
REPLACED = "replaced"
SKIPPED = "skipped"
FAILED = "failed"

#: The reason a source without an auth key is skipped.
NO_AUTH_KEY = "the source has no auth key (it never logged in); nothing to copy"
_CHANNEL_MARK = 1_000_000_000_000


def _session_header(session: Any) -> SessionHeader:
    key = session.auth_key
    key = key.key if isinstance(key, AuthKey) else key
    return SessionHeader(
        int(session.dc_id or 0), session.server_address, session.port, bytes(key) if key else None, session.takeout_id
    )


def _is_memory(session: Any) -> bool:
    # Subclasses of MemorySession written by third parties usually keep their records
    # elsewhere and leave its tables empty, so only Telethon's own classes qualify.
    return type(session) in (MemorySession, StringSession)


def _is_file(session: Any) -> bool:
    return isinstance(session, SQLiteSession) and session.filename != ":memory:"


def _memory_tables(session: MemorySession) -> tuple[set[Any], dict[Any, Any], dict[int, Any]]:
    """The live tables of Telethon's ``MemorySession``: entity rows, sent files, update states.

    Telethon's ``Session`` API looks records up one at a time; nothing public lists or
    removes them. This is the one place that touches a MemorySession's private
    attributes, to list them (:func:`read_session`) and to empty them (an overwrite).
    """
    return session._entities, session._files, session._update_states


def read_session(session: Session | SessionSnapshot) -> SessionSnapshot:
    """Read every record of ``session`` (ours, or Telethon's Memory/SQLite/String sessions).

    For ours, entities not yet in memory are read from the store (one query). A
    Telethon ``SQLiteSession`` is saved, then its file is read. An unknown session type
    only yields its header and update states (``complete=False``): the abstract API
    cannot list entities.

    :param session: the session (a snapshot is returned as it is).
    :raises SessionCorruptError: for an ``SQLiteSession`` whose file holds a sealed auth
        key or sealed entity fields (open it with ``ScopedSQLiteSession`` instead).
    """
    if isinstance(session, SessionSnapshot):
        return session
    snap = SessionSnapshot(*_session_header(session))
    snap.update_states = dict(session.get_update_states() or ())
    if isinstance(session, SessionCore):
        snap.entities, snap.files = list(session.iter_entities()), dict(session.iter_files())
    elif _is_file(session):
        session.save()  # its last changes go to the file, which the one reader then reads
        stored = read_session_file(session.filename)
        snap.entities, snap.files = stored.entities, stored.files
    elif _is_memory(session):
        entities, files, _ = _memory_tables(session)
        # MemorySession can hold stale duplicates of one id; keep one of them.
        snap.entities = list({e[0]: EntityRow(e[0], e[1], e[2], e[3], e[4], 0) for e in entities}.values())
        snap.files = {(md5, size, kind.value): value for (md5, size, kind), value in files.items()}
    else:
        snap.complete = False
    return snap


def read_string_session(string: str) -> SessionSnapshot:
    """Read a Telethon ``StringSession`` string (DC, server address, port and auth key).

    :param string: the text that ``StringSession.save()`` returns.
    :raises SessionCorruptError: if ``string`` is not a valid StringSession string.
    """
    try:
        session = StringSession(string.strip())
    except (ValueError, struct.error, binascii.Error, IndexError) as exc:
        raise SessionCorruptError(
            "not a valid Telethon StringSession string (expected the text that StringSession.save() returns)"
        ) from exc
    return read_session(session)


# -- destinations ------------------------------------------------------------------------


def _changes(snap: SessionSnapshot) -> Changes:
    return Changes({r.id: r for r in snap.entities}, dict(snap.update_states), dict(snap.files))


class Target(abc.ABC):
    """One destination session, as :func:`apply_snapshot` sees it: what it holds, and how to write to it."""

    @abc.abstractmethod
    def header(self) -> SessionHeader:
        """The header it holds now."""

    @abc.abstractmethod
    def records(self) -> Changes:
        """Every update state, entity and sent file it holds now (read only to merge)."""

    @abc.abstractmethod
    def clear(self) -> None:
        """Remove every record of the destination (before an overwrite)."""

    @abc.abstractmethod
    def write(self, header: SessionHeader | None, changes: Changes) -> None:
        """Store the header and the records: durably, or queued in a batch whose commit decides.

        :param header: the header, or ``None`` to keep the stored one.
        :param changes: the records.
        """


def _row_to_tl(row: EntityRow) -> Any:
    """A TL object whose ``process_entities`` row is ``row``."""
    if row.id >= 0:
        return types.User(row.id, access_hash=row.hash, username=row.username, phone=row.phone, first_name=row.name)
    bare = -row.id
    if bare > _CHANNEL_MARK:
        name = row.name or ""
        return types.Channel(
            bare - _CHANNEL_MARK, name, types.ChatPhotoEmpty(), None, access_hash=row.hash, username=row.username
        )
    return types.Chat(bare, row.name or "", types.ChatPhotoEmpty(), 0, None, 0)


class _SessionTarget(Target):
    """A live session: ours (written as rows, then flushed) or any Telethon one (through the public Session API).

    Its records are listed as :func:`read_session` lists them; a type that cannot list them
    looks empty, so a merge hands it every record again (rows are replaced by id).
    """

    def __init__(self, session: Session, flush_timeout: float) -> None:
        self.session = session
        self.flush_timeout = flush_timeout

    def header(self) -> SessionHeader:
        return _session_header(self.session)

    def records(self) -> Changes:
        return _changes(read_session(self.session))

    def clear(self) -> None:
        s = self.session
        if isinstance(s, SessionCore):
            s.delete()
            s.reset()  # usable again, on the same (now empty) store
        elif _is_file(s):
            s.close()  # Telethon opens the file again on its next use, and finds it empty
            write_session_file(SessionSnapshot(), s.filename, replace=True)
        elif _is_memory(s):
            for table in _memory_tables(s):
                table.clear()
        else:
            raise TypeError(
                f"cannot overwrite a {type(s).__name__}: the abstract Session API cannot remove its "
                "records; delete it yourself and copy into a fresh one"
            )

    def write(self, header: SessionHeader | None, changes: Changes) -> None:
        s = self.session
        if header is not None:
            # SQLiteSession.set_dc re-reads the auth key from its table: set the DC first.
            s.set_dc(header.dc_id, header.server_address, header.port)
            s.auth_key = AuthKey(header.auth_key) if header.auth_key else None
            s.takeout_id = header.takeout_id
        for sid, state in changes.states.items():
            s.set_update_state(sid, state)
        if isinstance(s, SessionCore):
            s.put_entity_rows(changes.entities.values())
            for key, value in changes.files.items():
                s.put_file(key, value)
            if not s.flush(self.flush_timeout):
                raise SessionStoreError(
                    f"{s.where}: not everything was stored within {self.flush_timeout:.0f}s "
                    "(the background writer keeps retrying); run the copy again to complete it"
                )
            return
        if changes.entities:
            s.process_entities([_row_to_tl(r) for r in changes.entities.values()])
        for (md5, size, kind), (fid, fhash) in changes.files.items():
            s.cache_file(md5, size, (types.InputPhoto if kind == 1 else types.InputDocument)(fid, fhash, b""))
        s.save()


class _FileTarget(Target):
    """A Telethon ``.session`` file, read whole by the one reader and replaced whole by the one writer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.current = read_session_file(path)  # also refuses a file that is not a Telethon session
        except FileNotFoundError:
            self.current = SessionSnapshot()

    def header(self) -> SessionHeader:
        return self.current.header

    def records(self) -> Changes:
        return _changes(self.current)

    def clear(self) -> None:
        self.current = SessionSnapshot()

    def write(self, header: SessionHeader | None, changes: Changes) -> None:
        merged = _changes(self.current)
        merged.merge(changes)
        snap = SessionSnapshot(*(header or self.current.header))
        snap.update_states, snap.entities, snap.files = merged.states, list(merged.entities.values()), merged.files
        write_session_file(snap, self.path, replace=True)


# -- the copy ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CopyReport:
    """What :func:`copy_session` did. The counts are records written.

    :param status: ``"copied"``, ``"merged"``, ``"unchanged"``, ``"replaced"`` or ``"skipped"``.
    :param reason: why it was skipped (or what the source could not give).
    :param entities: entities written.
    :param update_states: update states written.
    :param files: sent files written.
    :param header_written: the DC, auth key and takeout id were written.
    :param fingerprint: the source's :func:`~telethon_firestore_session.core.auth_key_fingerprint`.
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
        """Something was written."""
        return self.status in (COPIED, MERGED, REPLACED)

    def as_dict(self) -> dict[str, Any]:
        """The fields by name (for JSON)."""
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


def apply_snapshot(snap: SessionSnapshot, target: Target, overwrite: bool) -> CopyReport:
    """Copy ``snap`` into ``target`` by the rules of :func:`copy_session` (the engine of every copy and import).

    :param snap: the source.
    :param target: the destination.
    :param overwrite: replace a different login.
    """
    fingerprint = snap.fingerprint
    if not snap.auth_key:
        return CopyReport(SKIPPED, NO_AUTH_KEY)
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
        held = target.records()
        changes = Changes(
            {r.id: r for r in snap.entities if _entity_newer(r, held.entities.get(r.id))},
            {sid: st for sid, st in snap.update_states.items() if _state_newer(st, held.states.get(sid))},
            {k: v for k, v in snap.files.items() if k not in held.files},
        )
        if new_header is None and not changes:
            return CopyReport(UNCHANGED, "the destination already holds this session", fingerprint=fingerprint)
    else:
        new_header, changes = snap.header, _changes(snap)

    target.write(new_header, changes)
    reason = "" if snap.complete else "the source type cannot list its entities; only the header and states came"
    return CopyReport(
        status,
        reason,
        entities=len(changes.entities),
        update_states=len(changes.states),
        files=len(changes.files),
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

    Never clobbers a newer session: into an empty ``dst`` everything is copied (``"copied"``); into
    one holding the **same** auth key only what it lacks or holds older (``"merged"``, or
    ``"unchanged"``: running it twice writes nothing the second time); into one holding a
    **different** auth key nothing (``"skipped"``) unless ``overwrite=True``, which first removes
    its records (``"replaced"``).

    Durability: when this returns, the records are stored: ours are saved and flushed, a Telethon
    ``SQLiteSession`` is committed; ``dst`` is not closed. Blocks the calling thread (from async
    code: ``asyncio.to_thread``).

    :param src: one of our sessions, Telethon's ``MemorySession``, ``SQLiteSession`` or
        ``StringSession`` (only the DC and auth key), any other ``Session`` (through the
        abstract API), or a snapshot.
    :param dst: the destination, a session of any of those types.
    :param overwrite: replace a different login.
    :param flush_timeout: seconds to wait for our sessions' writes.
    :raises SessionStoreError: if the destination could not store everything in time.
    """
    if not isinstance(dst, Session):
        raise TypeError(f"expected a Telethon Session, got {type(dst).__name__}")
    return apply_snapshot(read_session(src), _SessionTarget(dst, flush_timeout), overwrite)


# -- exporters ---------------------------------------------------------------------------


def export_session_file(
    src: Session | SessionSnapshot,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> tuple[Path, CopyReport]:
    """Write ``src`` to a Telethon ``.session`` file that plain ``SQLiteSession`` opens.

    A new file gets mode 0600; an existing one is merged into like any destination of
    :func:`copy_session`, and replaced atomically.

    :param src: one of our sessions, Telethon's, or a snapshot.
    :param path: the file; ``.session`` is appended to a name without it, as Telethon does.
    :param overwrite: replace a different login in an existing file.
    :returns: the path written, and what was copied.
    :raises SessionCorruptError: if the file exists and is not a plain Telethon session
        (it is not modified).
    """
    p = Path(path)
    if p.suffix != ".session":
        p = p.with_name(p.name + ".session")
    snap = read_session(src)
    return p, apply_snapshot(snap, _FileTarget(p), overwrite)


def export_string_session(src: Session | SessionSnapshot) -> str:
    """The ``StringSession`` string of ``src``: DC, server address, port and auth key only.

    A string session carries no entities, update states or takeout id. The result
    is a full login: keep it secret.

    :param src: one of our sessions, Telethon's, or a snapshot.
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


# The bulk importers and the Firestore importer build on the names above and live apart.
from .bulk import (  # noqa: E402
    BulkReport,
    Destination,
    ImportItem,
    ProgressCallback,
    SessionDestination,
    Source,
    import_session_files,
    import_snapshots,
    import_string_session,
    session_files,
    user_id_from_filename,
)
from .firestore.importer import (  # noqa: E402
    LEGACY_BACKUP_FIELD,
    LEGACY_FIELD,
    FirestoreDestination,
    decode_legacy_session_data,
    import_legacy_documents,
)
