"""``SQLiteStore``: one session in ``{sessions_dir}/{bot_id}/user_{user_id}.session``, in Telethon's schema.

A file written here opens with plain ``telethon.sessions.SQLiteSession(path)``, and
Telethon's own files (any schema version) open here; older versions are upgraded in
place, step by step (see :mod:`.schema`).

While a store is open it holds an exclusive ``flock`` on its ``.session`` file, so a
second process (or a second session object in this process) that opens the same user
gets :class:`~telethon_firestore_session.errors.SessionInUseError` instead of
"database is locked" or, worse, ``AuthKeyDuplicatedError`` from Telegram.

Encryption at rest (``cipher=``, see :mod:`telethon_firestore_session.crypto`):

* ``sessions.auth_key`` holds the sealed envelope (256 + 36 bytes) instead of the
  256-byte key, bound to ``bot_id/user_id`` and the field ``auth_key`` exactly as in
  Firestore. A plaintext key (a file written without a cipher, or by Telethon) is read
  and sealed by the next ``save()``; one sealed with an old key is re-sealed then.
* With ``encrypt_pii=True`` entity usernames, phone numbers and display names are
  sealed too, without changing Telethon's ``entities`` table: the columns hold blind
  indexes and our side table the sealed values (layout in :mod:`.schema`). A lookup by
  username, phone or name is one indexed ``where column in (plaintext, "bi:" + index
  under each key)`` query joined with the side table by primary key: no scan, no
  plaintext. Rows written before ``encrypt_pii`` was on are still found by their
  plaintext and are sealed when they are next written, or by
  :func:`~telethon_firestore_session.sqlite.rotate_sqlite_sessions`.
* With a cipher the connection runs with ``pragma secure_delete=on`` (replaced
  values are zeroed, not left in free space). The ``save()`` that re-seals a
  plaintext or old-key auth key, and a rotation, checkpoint and truncate the
  write-ahead log at once, so the old value leaves the disk when they return. An
  entity row that the writer re-seals on its next write leaves the disk at the next
  checkpoint (automatic, and at the latest when the session closes).
* Failures never write: the sessions row is read and opened before the file is
  switched to WAL mode or changed in any way (through a read-only connection when a
  ``-wal`` file is left over, because closing a writable connection would checkpoint
  it). A wrong or missing key, a tampered value or one copied from another user's
  file raises :class:`~telethon_firestore_session.errors.SessionDecryptionError`,
  naming the file and the field, and leaves the file byte for byte as it was.
* Plain ``telethon.sessions.SQLiteSession`` still opens a sealed file (it is a valid
  schema-8 file) but gets the envelope as its auth key, which Telegram does not know:
  its client fails with ``AuthKeyNotFound``. It keeps the sealed bytes as they are
  when it saves, so the file still opens here with the key.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from telethon_firestore_session.crypto import SessionCipher
from telethon_firestore_session.errors import (
    ConfigError,
    SessionCorruptError,
    store_error,
)
from telethon_firestore_session.ids import BotSessionKey, SessionKey
from telethon_firestore_session.sealing import KeyState, Sealer
from telethon_firestore_session.store import (
    EMPTY_HEADER,
    Changes,
    EntityRow,
    FileKey,
    SessionHeader,
    Store,
    StoredSession,
)

from . import files, schema

__all__ = ["SQLiteStore"]

log = logging.getLogger(__name__)

_BUSY_TIMEOUT = 10.0


def _read_header(conn: sqlite3.Connection, sealer: Sealer) -> tuple[SessionHeader | None, KeyState]:
    """The sessions row with its auth key opened, and how the key was stored; reads only (any schema version)."""
    values = schema.sessions_row(conn)
    if values is None:
        return None, KeyState.NONE
    auth_key, state = sealer.open_auth_key(values.get("auth_key"))
    return schema.header_from_row(values, auth_key), state


def _check_read_only(path: str, where: str, sealer: Sealer) -> None:
    """Check the schema and open the sessions row through a read-only connection."""
    try:
        ro = sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT)
    except sqlite3.Error as exc:
        log.debug("%s: no read-only check (%s); checking through the writable connection", where, exc)
        return
    try:
        with schema.file_errors("open", where):
            try:
                tables, _ = schema.inspect(ro, where)
                if tables:
                    _read_header(ro, sealer)
            except sqlite3.OperationalError as exc:
                if schema.is_damage(exc):
                    raise
                log.debug("%s: no read-only check (%s); checking through the writable connection", where, exc)
    finally:
        ro.close()


class _Handle:
    """An open connection and the file lock that guards it, released together (also on GC)."""

    def __init__(self, conn: sqlite3.Connection, lock: files.FileLock) -> None:
        self.conn = conn
        self._finalizer = weakref.finalize(self, _release, conn, lock)
        # At exit the background writer still flushes through this connection.
        self._finalizer.atexit = False

    def close(self) -> None:
        self._finalizer()


def _release(conn: sqlite3.Connection, lock: files.FileLock) -> None:
    try:
        conn.close()  # first: SQLite's POSIX locks must go before our descriptor closes
    finally:
        lock.release()


class _Opened(NamedTuple):
    """What opening a file found: its sessions row, update states and layout."""

    handle: _Handle
    header: SessionHeader | None  # the auth key opened
    state: KeyState  # how the auth key was stored
    states: dict[int, Any]
    sealed_table: bool  # the file has our side table of sealed entity fields
    prepared: bool  # it was checked and switched to WAL while opening (it needed writes)


def _open(path: str, where: str, sealer: Sealer, *, create: bool, check: Callable[[], None]) -> _Opened:
    """Lock and open the file, and read its sessions row and update states in one read transaction.

    The schema and the sessions row (opening a sealed auth key) are checked before
    anything is written; only then is the file prepared (upgrade, indexes), if it
    needs that (see :func:`.schema.prepare`). A file that needs nothing is not written.
    """
    try:
        lock = files.FileLock.acquire(path, where, create=create, check=check)
    except OSError as exc:
        raise store_error("open", where, exc) from exc
    try:
        if 0 < lock.size < schema.MIN_DATABASE_SIZE:  # SQLite would take it for an empty database
            raise schema.damaged(where, f"not an SQLite database: {lock.size} bytes")
        if os.path.exists(f"{path}-wal") and os.stat(f"{path}-wal").st_size:
            # Closing a writable connection checkpoints a left-over -wal into the
            # file: check what we are about to open without one.
            _check_read_only(path, where, sealer)
        conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
    except (sqlite3.Error, OSError) as exc:
        lock.release()
        raise store_error("open", where, exc) from exc
    except BaseException:  # any failure, interrupts too: the lock is not kept
        lock.release()
        raise
    handle = _Handle(conn, lock)
    try:
        with schema.file_errors("open", where):
            if sealer.cipher is not None:
                conn.execute("pragma secure_delete=on")  # replaced values are zeroed, not left in free space
            names, version = schema.inspect(conn, where)
            header, state = _read_header(conn, sealer) if names else (None, KeyState.NONE)
            states = schema.read_states(conn) if "update_state" in names else {}
            seals = sealer.seals_fields
            prepared = schema.prepare(conn, names, version, where, sealed_table=seals)
    except BaseException:  # any failure, interrupts too: a file that failed to open is released
        handle.close()
        raise
    return _Opened(handle, header, state, states, seals or schema.SEALED_ENTITIES in names, prepared)


class SQLiteStore(Store):
    """Loads and persists one session in ``{sessions_dir}/{bot_id}/user_{user_id}.session``.

    One SQLite connection serves both the session's thread and the background
    writer's thread; a lock serialises them. The file (and its ``flock``) is opened
    by ``load()`` and again, lazily, by any later call after ``close()``.

    :param key: the session's key.
    :param sessions_dir: the directory that holds a folder per bot.
    :param cipher: seals the auth key (and with ``encrypt_pii`` entity fields); ``None``: plaintext.
    :param encrypt_pii: also seal entity usernames, phone numbers and names.
    """

    def __init__(
        self,
        key: SessionKey,
        sessions_dir: str | os.PathLike[str] = "sessions",
        *,
        cipher: SessionCipher | None = None,
        encrypt_pii: bool = False,
    ) -> None:
        self.key = key
        self._base, self._bot, self._file = files.session_paths(sessions_dir, key)
        self.where = f"sqlite:{self._file}"
        self.sealer = Sealer(key, self.where, cipher, encrypt_pii=encrypt_pii, record="file")
        self.codec = schema.EntityCodec(self.sealer)
        self.cipher = cipher
        self.encrypt_pii = encrypt_pii
        self._lock = threading.RLock()
        self._handle: _Handle | None = None
        self._opened: _Opened | None = None  # the sessions row as read (and opened) when the file was opened
        self._sealed_table = False  # the file has our side table of sealed entity fields
        self._checked = False  # the open file passed quick_check (done before its first write)
        self._writable = False  # ... and is in WAL mode with this store's pragmas
        self._damage: str | None = None  # why the open file is known to be damaged: nothing is written to it
        self._purge_due = False  # a plaintext or old-key auth key is on disk until the next header write
        self._metadata_due = False  # written since metadata.json was last refreshed
        self._wrote = False  # written since the file was opened (close() records the final size)
        self._metadata_at = -math.inf
        #: Seconds between metadata.json refreshes caused by ``write_changes`` alone.
        self.metadata_interval = 30.0
        #: Transactions committed by ``write_changes`` (one per call).
        self.commits = 0

    # -- opening and closing ----------------------------------------------------------------

    @functools.cached_property
    def path(self) -> Path:
        """The session file (absolute)."""
        return Path(self._file)

    @functools.cached_property
    def bot_dir(self) -> Path:
        return Path(self._bot)

    def _check_path(self) -> None:
        files.check_bot_dir(self._base, self._bot, self.key.bot_id)

    def _conn(self, *, create: bool = True) -> sqlite3.Connection:
        """The open connection (call with ``self._lock`` held); opens file and lock if needed."""
        handle = self._handle
        if handle is None:
            opened = self._opened = _open(self._file, self.where, self.sealer, create=create, check=self._check_path)
            handle = self._handle = opened.handle
            self._sealed_table = opened.sealed_table
            self._damage = None
            self._checked = self._writable = opened.prepared
        return handle.conn

    @contextlib.contextmanager
    def _using(self, what: str, *, create: bool = True) -> Iterator[sqlite3.Connection]:
        """The open connection, with ``self._lock`` held; SQLite's errors become ours (:func:`.schema.file_errors`).

        Damage found here is remembered until the file is closed: every later read or
        write of it raises :class:`SessionCorruptError` at once, without touching the file.
        """
        with self._lock:
            try:
                with schema.file_errors(what, self.where):
                    if self._damage is not None:
                        raise SessionCorruptError(self._damage)
                    yield self._conn(create=create)
            except SessionCorruptError as exc:
                if self._handle is not None and self._damage is None:
                    self._damage = str(exc)
                    log.error("%s", self._damage)
                raise

    def _verify(self, conn: sqlite3.Connection) -> None:
        """Once per open, before the first write or "not found": SQLite's quick_check (damage is never written)."""
        if not self._checked:
            problem = schema.quick_check(conn)
            if problem is not None:
                raise schema.damaged(self.where, problem)
            self._checked = True

    def _begin_writing(self, conn: sqlite3.Connection) -> None:
        """Before each write: the file is checked (:meth:`_verify`) and in WAL mode (:func:`.schema.use_wal`)."""
        self._verify(conn)
        if not self._writable:
            schema.use_wal(conn, self.where)
            self._writable = True

    def close(self) -> None:
        """Close the file and release its lock; a later call opens both again."""
        with self._lock:
            handle, self._handle = self._handle, None
            if handle is not None:
                if self._damage is None:
                    schema.rest(handle.conn, self.where)
                handle.close()  # SQLite checkpoints and removes -wal/-shm here
            self._damage = None  # the file is checked again when it is opened again
            if self._metadata_due or self._wrote:
                self._wrote = False
                self._refresh_metadata()

    def _select(self) -> str:
        """The entity query for this file (call after ``_conn()``)."""
        return schema.SELECT_SEALED if self._sealed_table else schema.SELECT_PLAIN

    # -- reading -----------------------------------------------------------------------------

    def load(self) -> StoredSession | None:
        """Open the file and read the sessions row and the update states (never the entities)."""
        try:
            with self._lock:
                if self._handle is None:
                    self._conn()  # reads the header and the update states while opening
                    assert self._opened is not None
                    header, state, states = self._opened.header, self._opened.state, self._opened.states
                else:
                    with self._using("open") as conn:
                        header, state = _read_header(conn, self.sealer)
                        states = schema.read_states(conn)
                if header is None and not states:
                    return None
                rewrite = state.needs_rewrite
                if state is KeyState.PLAINTEXT:
                    log.info("%s: plaintext auth key; it is sealed on the next save()", self.where)
                elif state is KeyState.OLD_KEY:
                    log.info("%s: auth key sealed with an old key; it is re-sealed on the next save()", self.where)
                self._purge_due = rewrite
                return StoredSession(header=header or EMPTY_HEADER, update_states=states, needs_rewrite=rewrite)
        except BaseException:  # any failure, interrupts too: a session that failed to open must not keep the lock
            self.close()
            raise

    def find_entity_by_ids(self, ids: Sequence[int]) -> EntityRow | None:
        if not ids:
            return None
        marks = ",".join("?" * len(ids))
        with self._using("read") as conn:
            rows = conn.execute(f"{self._select()} where e.id in ({marks})", tuple(ids)).fetchall()
            found = {r.id: r for r in map(self.codec.decode, rows)}
            for i in ids:
                if i in found:
                    return found[i]
            self._verify(conn)  # "not found" from a damaged file would be a lie
        return None

    def find_entity(self, field: str, value: str) -> EntityRow | None:
        if field not in schema.LOOKUP_FIELDS:
            raise ValueError(f"cannot look entities up by {field!r}")
        order = "order by coalesce(e.date, 0) desc, e.rowid desc"
        with self._using("read") as conn:
            if not self._sealed_table:
                row = conn.execute(f"{schema.SELECT_PLAIN} where e.{field} = ? {order} limit 1", (value,)).fetchone()
                found = schema.entity_from_row(row) if row is not None else None
            else:
                # Sealed rows are found by their blind index under any accepted key; rows
                # written before encrypt_pii was on, by their plaintext. One indexed query.
                keys = self.codec.lookup_keys(field, value)
                marks = ",".join("?" * len(keys))
                rows = conn.execute(f"{schema.SELECT_SEALED} where e.{field} in ({marks}) {order}", keys).fetchall()
                found = self.codec.first_match(rows, field, value, self.where)
            if found is None:
                self._verify(conn)
        return found

    def find_file(self, key: FileKey) -> tuple[int, int] | None:
        with self._using("read") as conn:
            row = conn.execute(schema.SELECT_FILE, key).fetchone()
            if row is None:
                self._verify(conn)
                return None
            return schema.file_value(row)

    def _entity_page(self, after: int) -> list[Any]:
        with self._using("read") as conn:
            return [(r[0], self.codec.decode(r)) for r in schema.entity_page(conn, self._select(), after)]

    def iter_entities(self) -> Iterator[EntityRow]:
        """Every stored entity, read in pages of 1,000 (the lock is not held between pages)."""
        return (row for _, row in schema.paged(self._entity_page))

    def _file_page(self, after: int) -> list[Any]:
        with self._using("read") as conn:
            return [(r[0], schema.file_from_row(r)) for r in schema.file_page(conn, after)]

    def iter_files(self) -> Iterator[tuple[FileKey, tuple[int, int]]]:
        return (item for _, item in schema.paged(self._file_page))

    def probe(self) -> None:
        """Read through the open connection; a closed file passes (its next use opens it and takes its lock)."""
        with self._lock:
            if self._handle is not None:
                self._handle.conn.execute("select 1 from sessions limit 1").fetchall()

    # -- writing -----------------------------------------------------------------------------

    def write_session(self, header: SessionHeader) -> None:
        """Replace the sessions row and commit with a full fsync before returning.

        :param header: the header to store.
        """
        with self._using("write") as conn:
            self._begin_writing(conn)
            auth_key = self.sealer.seal_auth_key(header.auth_key) or b""  # Telethon stores b"" for none
            with schema.durable_transaction(conn):
                conn.execute("delete from sessions")
                conn.execute(
                    schema.INSERT_SESSION,
                    (header.dc_id, header.server_address, header.port, auth_key, header.takeout_id, b""),
                )
            if self._purge_due:
                # The plaintext (or old-key) auth key is still in the main file until a
                # checkpoint copies the new page over it: do that now.
                self._purge_due = False
                schema.checkpoint(conn, self.where)
        # metadata.json is an index rebuilt from the files: refreshed by the writer or close(), not here.
        self._metadata_due = self._wrote = True

    def write_changes(self, changes: Changes) -> None:
        """Write entities, update states and sent files in one transaction (background thread).

        :param changes: the records to write.
        """
        # Sealed here, in the writer's thread: the hot path never pays for it.
        entity_rows, sealed_rows = self.codec.encode(changes.entities.values())
        state_rows = [(sid, s.pts, s.qts, int(s.date.timestamp()), s.seq) for sid, s in changes.states.items()]
        file_rows = [(*k, *v) for k, v in changes.files.items()]
        with self._using("write") as conn:
            self._begin_writing(conn)
            with schema.transaction(conn):
                if entity_rows:
                    conn.executemany(schema.INSERT_ENTITY, entity_rows)
                    if sealed_rows:
                        conn.executemany(schema.INSERT_SEALED, sealed_rows)
                    elif self._sealed_table:
                        # Written in plaintext now: their sealed values are stale.
                        conn.executemany(schema.DELETE_SEALED, [(r[0],) for r in entity_rows])
                if state_rows:
                    conn.executemany(schema.INSERT_STATE, state_rows)
                if file_rows:
                    conn.executemany(schema.INSERT_FILE, file_rows)
            self.commits += 1
            self._metadata_due = self._wrote = True
        if time.monotonic() - self._metadata_at >= self.metadata_interval:
            self._refresh_metadata()

    def _refresh_metadata(self) -> None:
        """Update this user's metadata.json entry; a failure is logged, never raised."""
        self._metadata_due = False
        self._metadata_at = time.monotonic()
        if isinstance(self.key, BotSessionKey):
            return  # metadata.json lists users; the bot's own session is not one
        try:
            files.record_session(self.bot_dir, self.key.user_id, self.path)
        except Exception as exc:  # noqa: BLE001 - metadata is an index of the files, never worth failing a write
            self._metadata_due = True
            log.warning("cannot update %s (%s)", self.bot_dir / files.METADATA_FILE, type(exc).__name__)

    def delete(self) -> None:
        """Remove the file, its -wal/-shm and its metadata entry (taking the lock first)."""
        with self._lock:
            self._conn()  # take the lock: never delete a file that another process is using
            handle, self._handle = self._handle, None
            assert handle is not None
            try:
                handle.conn.close()  # SQLite checkpoints; the flock stays until the files are gone
                for suffix in ("", "-wal", "-shm", "-journal"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f"{self._file}{suffix}")
            except (OSError, sqlite3.Error) as exc:
                raise store_error("delete", self.where, exc) from exc
            finally:
                handle.close()
            self._metadata_due = self._wrote = False
            if isinstance(self.key, BotSessionKey):
                return
            try:
                files.forget_session(self.bot_dir, self.key.user_id)
            except Exception as exc:  # noqa: BLE001 - the file is gone; the index is rebuilt from files
                log.warning("cannot update %s (%s)", self.bot_dir / files.METADATA_FILE, type(exc).__name__)

    # -- re-sealing: key rotation, and turning encryption on ---------------------------------

    def reseal(self) -> int:
        """Re-seal what this file stores with the cipher's current key.

        The auth key is sealed if it is plaintext or sealed with an old key. Entity
        fields sealed with an old key are sealed again, with fresh blind indexes;
        with ``encrypt_pii``, plaintext entity fields are sealed too. Every value is
        opened before anything is written, and the rewrite is one transaction, so a
        failure leaves the file as it was. A missing file is not created.

        :returns: the number of rows rewritten (the sessions row and entity rows; 0 if all were current).
        :raises SessionDecryptionError: if a value cannot be opened (nothing is written).
        :raises SessionInUseError: if the file is open in another process or object (it is not touched).
        """
        if self.cipher is None:
            raise ConfigError("cipher", "re-sealing needs a cipher")
        if not os.path.exists(self._file):
            return 0
        with self._lock:
            fresh = self._handle is None
            with self._using("re-seal", create=False) as conn:
                opened = self._opened
                header, state = (opened.header, opened.state) if fresh and opened else _read_header(conn, self.sealer)
                auth_key: bytes | None = None
                if header is not None and state.needs_rewrite:
                    auth_key = self.sealer.seal_auth_key(header.auth_key) or b""
                updates, sealed = self._resealed_entities(conn)
                if auth_key is None and not updates:
                    return 0
                self._begin_writing(conn)
                with schema.durable_transaction(conn):
                    if auth_key is not None:
                        conn.execute("update sessions set auth_key = ?", (auth_key,))
                    if updates:
                        conn.execute(f"create table if not exists {schema.SEALED_TABLE}")
                        conn.executemany(schema.UPDATE_PII, updates)
                        conn.executemany(schema.INSERT_SEALED, sealed)
                self._sealed_table = self._sealed_table or bool(updates)
                if opened is not None:
                    self._opened = opened._replace(state=KeyState.CURRENT)
                self._purge_due = False
                schema.checkpoint(conn, self.where)  # the replaced values leave the disk now
        return int(auth_key is not None) + len(updates)

    def _resealed_entities(self, conn: sqlite3.Connection) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """``(entities updates, side-table rows)`` for every entity row that is not sealed as it should be."""
        updates: list[tuple[Any, ...]] = []
        sealed: list[tuple[Any, ...]] = []
        select = self._select()
        for row in schema.paged(lambda after: schema.entity_page(conn, select, after)):
            if self.codec.needs_reseal(row):
                entity = self.codec.decode(row)
                cols, values = self.codec.seal_fields(entity)
                updates.append((*cols, entity.id))
                sealed.append((entity.id, *values))
        return updates, sealed
