"""Move sessions between backends without logging anyone in twice.

:func:`copy_session` copies one Telethon session, ours or Telethon's own, into another and
never clobbers a newer one (its docstring states the rules).

The bulk importers (:func:`import_session_files`, :func:`import_string_session`, and
:func:`import_snapshots` under both) copy many sessions into a :class:`Destination` and report
each once it is stored; running one again is safe. :func:`export_session_file` and
:func:`export_string_session` write Telethon's formats. ``.session`` files are read and written
by :mod:`telethon_firestore_session.sqlite.schema`; the Firestore importers
(``FirestoreDestination``, ``import_legacy_documents``) live in
:mod:`telethon_firestore_session.firestore.importer` and are re-exported here.
"""

from __future__ import annotations

import abc
import binascii
import dataclasses
import functools
import logging
import os
import sqlite3
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from telethon.crypto import AuthKey
from telethon.sessions import MemorySession, SQLiteSession, StringSession
from telethon.sessions.abstract import Session
from telethon.tl import types

from .core import Changes, EntityRow, SessionCore, SessionHeader, SessionSnapshot, auth_key_fingerprint
from .errors import SessionCorruptError, SessionError, SessionStoreError
from .ids import SessionKey
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
    "SessionDestination",
    "SessionSnapshot",
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

_NO_AUTH_KEY = "the source has no auth key (it never logged in); nothing to copy"
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


# -- bulk imports ------------------------------------------------------------------------


@dataclasses.dataclass
class ImportItem:
    """The outcome of one session in a bulk import.

    :param source: the source, as reported (a path, ``"string"``, a document).
    :param user_id: the user it was imported as (``None`` if unknown).
    :param status: as :class:`CopyReport`'s, or ``"failed"``.
    :param reason: why it was skipped or failed.
    :param entities: entities written.
    :param update_states: update states written.
    :param files: sent files written.
    :param fingerprint: the source's auth key fingerprint.
    """

    source: str
    user_id: str | None
    status: str
    reason: str = ""
    entities: int = 0
    update_states: int = 0
    files: int = 0
    fingerprint: str | None = None

    @classmethod
    def of(cls, source: str, user_id: str | None, report: CopyReport) -> ImportItem:
        """The item of a copy that ran.

        :param source: the source.
        :param user_id: the user.
        :param report: the copy's report.
        """
        r = report
        return cls(source, user_id, r.status, r.reason, r.entities, r.update_states, r.files, r.fingerprint)

    @classmethod
    def failure(
        cls, source: str, user_id: str | None, exc: BaseException, fingerprint: str | None = None
    ) -> ImportItem:
        """The item of a session that could not be read or written; the reason names the error.

        :param source: the source.
        :param user_id: the user.
        :param exc: the error.
        :param fingerprint: the source's auth key fingerprint, if it was read.
        """
        return cls(source, user_id, FAILED, f"{type(exc).__name__}: {exc}", fingerprint=fingerprint)

    def as_dict(self) -> dict[str, Any]:
        """The fields by name (for JSON)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class BulkReport:
    """What a bulk import did: one :class:`ImportItem` per source, and the write counts.

    :param items: one per source, added when its outcome is final (for a batched
        Firestore import: once every write of that session is committed).
    :param commits: Firestore commits (0 for other destinations).
    :param writes: Firestore document writes.
    :param reads: Firestore document reads.
    :param elapsed: seconds the import took.
    """

    items: list[ImportItem] = dataclasses.field(default_factory=list)
    commits: int = 0
    writes: int = 0
    reads: int = 0
    elapsed: float = 0.0

    def counts(self) -> dict[str, int]:
        """How many items of each status."""
        out: dict[str, int] = {}
        for item in self.items:
            out[item.status] = out.get(item.status, 0) + 1
        return out

    @property
    def failed(self) -> list[ImportItem]:
        """The items that failed."""
        return [i for i in self.items if i.status == FAILED]

    @property
    def ok(self) -> bool:
        """No item failed."""
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        """The report for JSON: ``ok``, ``counts``, the write counts and the items."""
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


class Destination(abc.ABC):
    """Where a bulk import puts sessions, by user id."""

    @abc.abstractmethod
    def put(self, source: str, user_id: str, snapshot: SessionSnapshot, *, overwrite: bool) -> None:
        """Apply ``snapshot`` to the session of ``user_id``; the outcome comes from :meth:`drain`.

        :param source: the source, for the report.
        :param user_id: the user.
        :param snapshot: the session to apply.
        :param overwrite: replace a different login.
        """

    @abc.abstractmethod
    def drain(self, *, final: bool = False) -> list[ImportItem]:
        """Items whose outcome is now final.

        :param final: commit whatever is pending first.
        """

    def account(self, report: BulkReport) -> None:  # noqa: B027 - optional hook
        """Add this destination's counters to ``report``.

        :param report: the import's report.
        """


class SessionDestination(Destination):
    """Any session backend, one session at a time.

    Each session is copied with :func:`copy_session` and closed; its writes are
    durable before the next one starts.

    :param opener: ``opener(user_id)`` returns the user's session.
    :param flush_timeout: as in :func:`copy_session`.
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
            self._done.append(ImportItem.failure(source, user_id, exc))
            return
        try:
            report = copy_session(snapshot, dst, overwrite=overwrite, flush_timeout=self.flush_timeout)
            self._done.append(ImportItem.of(source, user_id, report))
        except (SessionError, OSError, ValueError, sqlite3.Error) as exc:
            self._done.append(ImportItem.failure(source, user_id, exc, snapshot.fingerprint))
        finally:
            try:
                dst.close()
            except Exception as exc:  # noqa: BLE001 - reported, never fatal to the bulk run
                log.warning("closing the session of %s failed: %s", user_id, type(exc).__name__)

    def drain(self, *, final: bool = False) -> list[ImportItem]:
        done, self._done = self._done, []
        return done


def user_id_from_filename(path: str | os.PathLike[str]) -> str:
    """``user_123.session`` -> ``"123"`` (the original layout); ``alice.session`` -> ``"alice"``.

    :param path: the file.
    """
    stem = Path(path).name
    if stem.endswith(".session"):
        stem = stem[: -len(".session")]
    if stem.startswith("user_") and len(stem) > len("user_"):
        stem = stem[len("user_") :]
    return stem


def session_files(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The files to import: each file as given, and every ``*.session`` file directly in each directory.

    :param paths: a file or directory, or a list of them.
    """
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
    written is reported as failed and the others go on. Blocks the calling thread.

    :param sources: ``(description, user_id, read)`` each; ``read()`` returns the snapshot.
    :param destination: where the sessions go.
    :param total: how many sources there are, for ``progress``.
    :param overwrite: replace a different login (see :func:`copy_session`).
    :param progress: ``progress(done, total, item)``, called as each outcome becomes final.
    :param report: filled in as the import goes, so it is complete up to a ``KeyboardInterrupt``.
    :param stop: asked before each source: once it returns ``True`` no further source is
        read, what is pending is committed, and the report covers exactly the sessions
        handled (a graceful stop, e.g. on the first Ctrl-C).
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
                settle([ImportItem.failure(source, user_id, exc)])
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

    Files are read read-only and never modified. A file that cannot be read is reported
    as failed and the others go on; fix it and run the import again: sessions already
    imported come out ``"unchanged"``.

    :param paths: see :func:`session_files`.
    :param destination: where the sessions go.
    :param user_id: the user, for a single file; default from each file's name
        (:func:`user_id_from_filename`).
    :param overwrite: see :func:`import_snapshots`.
    :param progress: see :func:`import_snapshots`.
    :param report: see :func:`import_snapshots`.
    :param stop: see :func:`import_snapshots`.
    """
    files = session_files(paths)
    if user_id is not None and len(files) != 1:
        raise ValueError("user_id can only be given for a single file")

    def sources() -> Iterator[Source]:
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
    """Import one ``StringSession`` string as the session of ``user_id``.

    :param string: the text that ``StringSession.save()`` returns.
    :param user_id: the user.
    :param destination: where the session goes.
    :param overwrite: see :func:`import_snapshots`.
    :param report: see :func:`import_snapshots`.
    """
    return import_snapshots(
        [("string", user_id, functools.partial(read_string_session, string))],
        destination,
        total=1,
        overwrite=overwrite,
        report=report,
    )


# The Firestore importer builds on the names above and lives with the Firestore backend.
from .firestore.importer import (  # noqa: E402
    LEGACY_BACKUP_FIELD,
    LEGACY_FIELD,
    FirestoreDestination,
    decode_legacy_session_data,
    import_legacy_documents,
)
