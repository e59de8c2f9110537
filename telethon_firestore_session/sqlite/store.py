"""``ScopedSQLiteSession``: one Telethon SQLite file per user, in Telethon's own schema.

Layout::

    {sessions_dir}/{bot_id}/user_{user_id}.session   Telethon's schema, version 8, WAL mode
    {sessions_dir}/{bot_id}/metadata.json            {user_id: {user_id, created_at, last_active_at, size}}
    {sessions_dir}/{bot_id}/metadata.lock            serialises metadata.json writers across processes

A file written here opens with plain ``telethon.sessions.SQLiteSession(path)``, and
Telethon's own files (any schema version) open here; older versions are upgraded in
place, step by step, the way Telethon's ``_upgrade_database`` does.

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
  sealed too, without changing Telethon's ``entities`` table (Telethon inserts
  ``values (?,?,?,?,?,?)`` into it)::

      entities(id, hash, username, phone, name, date)     username/phone/name hold "bi:" + blind index
      tfs_sealed_entities(id primary key, username, phone, name)   the sealed values (blobs)

  The blind index (a keyed hash, see :meth:`SessionCipher.blind_index`) sits in the
  columns that the ``tfs_entities_*`` indexes already cover, so a lookup by username,
  phone or name is one indexed ``where column in (plaintext, "bi:" + index under each
  key)`` query joined with the side table by primary key: no scan, no plaintext. A
  field counts as sealed when its column starts with ``bi:`` *and* the side table has
  a value for it; the opened value must hash to that index, else the row was changed
  outside this library and reading it raises. Rows written before ``encrypt_pii`` was
  on (plaintext columns, no side row) are still found by their plaintext and are
  sealed when they are next written, or by :func:`rotate_sqlite_sessions`. A row that
  plain Telethon rewrote in plaintext is read as plaintext (its stale side row is
  ignored, and dropped on our next write of that row).
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
import datetime
import json
import logging
import math
import os
import re
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from telethon.tl import types

from telethon_firestore_session.core import (
    Changes,
    EntityRow,
    FileKey,
    SessionCore,
    SessionHeader,
    Store,
    StoredSession,
    reseal_each,
)
from telethon_firestore_session.crypto import SessionCipher
from telethon_firestore_session.errors import (
    ConfigError,
    InvalidSessionIdError,
    SchemaVersionError,
    SessionCorruptError,
    SessionDecryptionError,
    SessionInUseError,
    SessionStoreError,
)
from telethon_firestore_session.ids import SessionKey, validate_id
from telethon_firestore_session.sealing import PII_FIELDS, KeyState, Sealer

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "SCHEMA_VERSION",
    "SQLiteStore",
    "ScopedSQLiteSession",
    "list_sqlite_sessions",
    "read_metadata",
    "rotate_sqlite_sessions",
    "session_path",
]

log = logging.getLogger("telethon_firestore_session.sqlite")

#: Telethon's ``CURRENT_VERSION`` of its SQLite session schema (Telethon 1.45).
SCHEMA_VERSION = 8

SESSION_SUFFIX = ".session"
METADATA_FILE = "metadata.json"
METADATA_LOCK = "metadata.lock"
_FILE_MODE = 0o600
_DIR_MODE = 0o700
_PAGE = 1000
_BUSY_TIMEOUT = 10.0
_UTC = datetime.timezone.utc
_USER_FILE = re.compile(r"^user_(.+)\.session$")
_TMP_PREFIX = ".metadata.json."

# Telethon's schema, version 8, exactly as ``SQLiteSession`` creates it.
_TABLES = (
    "version (version integer primary key)",
    """sessions (
        dc_id integer primary key,
        server_address text,
        port integer,
        auth_key blob,
        takeout_id integer,
        tmp_auth_key blob
    )""",
    """entities (
        id integer primary key,
        hash integer not null,
        username text,
        phone integer,
        name text,
        date integer
    )""",
    """sent_files (
        md5_digest blob,
        file_size integer,
        type integer,
        id integer,
        hash integer,
        primary key(md5_digest, file_size, type)
    )""",
    """update_state (
        id integer primary key,
        pts integer,
        qts integer,
        date integer,
        seq integer
    )""",
)
_SENT_FILES_V3 = _TABLES[3]
_UPDATE_STATE_V4 = _TABLES[4]

# Extra indexes for lazy lookups; Telethon ignores them.
_INDEXES = (
    "create index if not exists tfs_entities_username on entities(username)",
    "create index if not exists tfs_entities_phone on entities(phone)",
    "create index if not exists tfs_entities_name on entities(name)",
)
_LOOKUP_FIELDS = frozenset({"username", "phone", "name"})

ENTITIES = "entities"
#: Our side table of sealed entity fields; Telethon ignores it.
SEALED_ENTITIES = "tfs_sealed_entities"
_SEALED_TABLE = f"{SEALED_ENTITIES} (id integer primary key, username blob, phone blob, name blob)"
#: A sealed field's column in ``entities`` holds this prefix and the field's blind index.
BLIND_INDEX_PREFIX = "bi:"
_INSERT_SEALED = f"insert or replace into {SEALED_ENTITIES} (id, username, phone, name) values (?, ?, ?, ?)"  # noqa: S608
_DELETE_SEALED = f"delete from {SEALED_ENTITIES} where id = ?"  # noqa: S608
_UPDATE_PII = "update entities set username = ?, phone = ?, name = ? where id = ?"
_ENTITY_COLUMNS = "e.id, e.hash, e.username, e.phone, e.name, e.date"
_SELECT_PLAIN = f"select {_ENTITY_COLUMNS} from entities e"  # noqa: S608 - fixed names
_SELECT_SEALED = (
    f"select {_ENTITY_COLUMNS}, s.username, s.phone, s.name "  # noqa: S608 - fixed names
    f"from entities e left join {SEALED_ENTITIES} s on s.id = e.id"
)

# Paths locked by a store of this process. Checked before opening the file at all:
# closing any descriptor of a file drops every POSIX lock this process holds on it,
# SQLite's own included.
_held: set[str] = set()
_held_lock = threading.Lock()


def _now_iso() -> str:
    return datetime.datetime.now(_UTC).isoformat(timespec="seconds")


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, _UTC).isoformat(timespec="seconds")


def _require_flock() -> Any:
    if fcntl is None:  # pragma: no cover - Windows
        raise SessionStoreError("ScopedSQLiteSession needs POSIX file locks (fcntl.flock); use FirestoreSession here")
    return fcntl


def _make_private_dirs(path: Path) -> None:
    """Create ``path`` and missing parents with mode 0700 (existing ones are left alone)."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, _DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(d, _DIR_MODE)  # exact, whatever the umask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _bot_dir(sessions_dir: str | os.PathLike[str], bot_id: object) -> tuple[Path, Path]:
    """``(resolved sessions_dir, its bot directory)``, checking that the latter stays inside."""
    bot = validate_id("bot_id", bot_id)
    base = Path(sessions_dir).resolve()
    bot_dir = (base / bot).resolve()
    if bot_dir.parent != base:
        raise InvalidSessionIdError(f"bot_id {bot!r}: {bot_dir} resolves outside the sessions directory {base}")
    return base, bot_dir


def session_path(sessions_dir: str | os.PathLike[str], key: SessionKey) -> Path:
    """``{sessions_dir}/{bot_id}/user_{user_id}.session`` (absolute).

    :raises InvalidSessionIdError: if an id is invalid, the bot directory (through a
        symbolic link) lies outside ``sessions_dir``, or the session file is a symbolic link.
    """
    _, bot_dir = _bot_dir(sessions_dir, key.bot_id)
    path = bot_dir / f"user_{key.user_id}{SESSION_SUFFIX}"
    if path.is_symlink():
        raise InvalidSessionIdError(f"session {key}: {path} is a symbolic link; refusing to follow it")
    return path


# -- metadata.json -------------------------------------------------------------------------

_dir_locks: dict[str, threading.Lock] = {}
_dir_locks_guard = threading.Lock()


def _dir_lock(bot_dir: Path) -> threading.Lock:
    with _dir_locks_guard:
        lock = _dir_locks.get(str(bot_dir))
        if lock is None:
            lock = _dir_locks[str(bot_dir)] = threading.Lock()
        return lock


def _file_size(path: Path) -> int | None:
    """Bytes on disk of a session: the file plus its write-ahead log; ``None`` if it is gone."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return None
    with contextlib.suppress(FileNotFoundError):
        size += os.stat(f"{path}-wal").st_size
    return size


def _session_files(bot_dir: Path) -> dict[str, Path]:
    """``user_id -> path`` of every ``user_*.session`` file in ``bot_dir``."""
    found: dict[str, Path] = {}
    try:
        names = os.listdir(bot_dir)
    except FileNotFoundError:
        return found
    for name in names:
        m = _USER_FILE.match(name)
        if m is None:
            continue
        try:
            uid = validate_id("user_id", m.group(1))
        except InvalidSessionIdError:
            continue
        found[uid] = bot_dir / name
    return found


def _entry_from_file(uid: str, path: Path) -> dict[str, Any] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    size = _file_size(path) or st.st_size
    return {"user_id": uid, "created_at": _iso(st.st_mtime), "last_active_at": _iso(st.st_mtime), "size": size}


def _rebuild(bot_dir: Path) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    for uid, path in _session_files(bot_dir).items():
        entry = _entry_from_file(uid, path)
        if entry is not None:
            entries[uid] = entry
    return entries


def _valid_entry(uid: str, entry: object) -> bool:
    return (
        isinstance(entry, dict)
        and entry.get("user_id") == uid
        and isinstance(entry.get("created_at"), str)
        and isinstance(entry.get("last_active_at"), str)
        and isinstance(entry.get("size"), int)
    )


def _load_metadata(bot_dir: Path) -> dict[str, dict[str, Any]]:
    """metadata.json of ``bot_dir``; rebuilt from the session files if missing or unreadable."""
    path = bot_dir / METADATA_FILE
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return _rebuild(bot_dir)
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s); rebuilding it from the session files", path, type(exc).__name__)
        return _rebuild(bot_dir)
    if not isinstance(data, dict):
        log.warning("%s is not a JSON object; rebuilding it from the session files", path)
        return _rebuild(bot_dir)
    entries: dict[str, dict[str, Any]] = {}
    for uid, entry in data.items():
        if _valid_entry(uid, entry):
            entries[uid] = entry
        else:
            log.warning("%s: ignoring a malformed entry", path)
    return entries


def _write_metadata(bot_dir: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Replace metadata.json atomically: temp file in the same directory, fsync, rename, fsync dir."""
    tmp = bot_dir / f"{_TMP_PREFIX}{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entries, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, bot_dir / METADATA_FILE)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(bot_dir)


def _remove_stale_temps(bot_dir: Path) -> None:
    """Temp files left by a writer that was killed (only called while holding metadata.lock)."""
    for name in os.listdir(bot_dir):
        if name.startswith(_TMP_PREFIX) and name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                os.unlink(bot_dir / name)


def _update_metadata(bot_dir: Path, user_id: str, path: Path, *, remove: bool = False) -> None:
    """Refresh (or remove) ``user_id``'s entry in metadata.json.

    Serialised per directory by a thread lock (this process) and an ``flock`` on
    metadata.lock (other processes).
    """
    flock = _require_flock()
    with _dir_lock(bot_dir):
        fd = os.open(bot_dir / METADATA_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
        try:
            flock.flock(fd, flock.LOCK_EX)
            _remove_stale_temps(bot_dir)
            entries = _load_metadata(bot_dir)
            size = None if remove else _file_size(path)
            if size is None:
                if entries.pop(user_id, None) is None and remove:
                    return
            else:
                now = _now_iso()
                entry = entries.get(user_id)
                created = entry["created_at"] if entry is not None else now
                entries[user_id] = {"user_id": user_id, "created_at": created, "last_active_at": now, "size": size}
            _write_metadata(bot_dir, entries)
        finally:
            os.close(fd)  # releases the flock


def read_metadata(sessions_dir: str | os.PathLike[str], bot_id: str) -> dict[str, dict[str, Any]]:
    """The contents of ``{sessions_dir}/{bot_id}/metadata.json``: ``{user_id: entry}``.

    Each entry has ``user_id``, ``created_at`` and ``last_active_at`` (ISO-8601, UTC)
    and ``size`` (bytes of the session file and its write-ahead log). If the file is
    missing or unreadable, the entries are rebuilt from the ``.session`` files
    (a warning is logged when it was unreadable); nothing is written here.
    """
    _, bot_dir = _bot_dir(sessions_dir, bot_id)
    return _load_metadata(bot_dir)


def list_sqlite_sessions(sessions_dir: str | os.PathLike[str], bot_id: str) -> list[dict[str, Any]]:
    """Every session file of ``bot_id``, with its metadata, sorted by ``user_id``.

    The files decide what exists: an entry whose file is gone is left out, a file
    without an entry gets one from the file's modification time, and ``size`` is
    measured now.
    """
    _, bot_dir = _bot_dir(sessions_dir, bot_id)
    entries = _load_metadata(bot_dir)
    result: list[dict[str, Any]] = []
    for uid, path in sorted(_session_files(bot_dir).items()):
        size = _file_size(path)
        if size is None:
            continue
        entry = dict(entries.get(uid) or _entry_from_file(uid, path) or {})
        if not entry:
            continue
        entry["size"] = size
        result.append(entry)
    return result


# -- the store -----------------------------------------------------------------------------


class _Handle:
    """An open connection and the flock that guards it, released together (also on GC)."""

    def __init__(self, conn: sqlite3.Connection, fd: int, held_key: str) -> None:
        self.conn = conn
        self._finalizer = weakref.finalize(self, _release, conn, fd, held_key)
        # At exit the background writer still flushes through this connection.
        self._finalizer.atexit = False

    def close(self) -> None:
        self._finalizer()


def _release(conn: sqlite3.Connection, fd: int, held_key: str) -> None:
    try:
        conn.close()  # first: SQLite's POSIX locks must go before our descriptor closes
    finally:
        try:
            os.close(fd)  # releases the flock
        finally:
            with _held_lock:
                _held.discard(held_key)


def _rollback(conn: sqlite3.Connection) -> None:
    """Undo an open transaction while another exception propagates, without replacing it.

    A KeyboardInterrupt that lands just after ``commit`` finds no transaction to roll
    back; a failing rollback must not hide the error that caused it either.
    """
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("rollback")


@contextlib.contextmanager
def _durable_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction committed with a full fsync (write-through); rolled back on any error."""
    conn.execute("pragma synchronous=full")
    try:
        conn.execute("begin immediate")
        try:
            yield
            conn.execute("commit")
        except BaseException:
            _rollback(conn)
            raise
    finally:
        conn.execute("pragma synchronous=normal")


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"pragma table_info({table})").fetchall()}


def _wal_size(path: Path) -> int:
    """Bytes in the write-ahead log beside ``path`` (0 if there is none)."""
    try:
        return os.stat(f"{path}-wal").st_size
    except FileNotFoundError:
        return 0


class _Opened(NamedTuple):
    """The sessions row of a file as it was opened (auth key opened), and how its key was stored."""

    header: SessionHeader | None
    state: KeyState


def _state_from_row(pts: Any, qts: Any, date: Any, seq: Any) -> types.updates.State:
    return types.updates.State(
        int(pts or 0),
        int(qts or 0),
        datetime.datetime.fromtimestamp(date or 0, tz=_UTC),
        int(seq or 0),
        unread_count=0,
    )


def _entity_from_row(row: Sequence[Any]) -> EntityRow:
    eid, ehash, username, phone, name, date = row
    return EntityRow(
        int(eid),
        int(ehash),
        username or None,
        str(phone) if phone is not None and phone != "" else None,  # the column has integer affinity
        name or None,
        int(date or 0),
    )


class SQLiteStore(Store):
    """Loads and persists one session in ``{sessions_dir}/{bot_id}/user_{user_id}.session``.

    One SQLite connection serves both the session's thread and the background
    writer's thread; a lock serialises them. The file (and its ``flock``) is opened
    by ``load()`` and again, lazily, by any later call after ``close()``.
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
        self.sessions_dir, self.bot_dir = _bot_dir(sessions_dir, key.bot_id)
        self.path = session_path(sessions_dir, key)
        self.where = f"sqlite:{self.path}"
        self.sealer = Sealer(key, self.where, cipher, encrypt_pii=encrypt_pii, record="file")
        self.cipher = cipher
        self.encrypt_pii = encrypt_pii
        self._lock = threading.RLock()
        self._handle: _Handle | None = None
        self._opened: _Opened | None = None  # the sessions row as read (and opened) when the file was opened
        self._sealed_table = False  # the file has our side table of sealed entity fields
        self._purge_due = False  # a plaintext or old-key auth key is on disk until the next header write
        self._metadata_due = False  # written since metadata.json was last refreshed
        self._wrote = False  # written since the file was opened (close() records the final size)
        self._metadata_at = -math.inf
        #: Seconds between metadata.json refreshes caused by ``write_changes`` alone.
        self.metadata_interval = 30.0
        #: Transactions committed by ``write_changes`` (one per call).
        self.commits = 0

    # -- opening and closing ----------------------------------------------------------------

    def _check_path(self) -> None:
        if session_path(self.sessions_dir, self.key) != self.path:
            raise InvalidSessionIdError(f"session {self.key}: {self.path} now resolves elsewhere")

    def _lock_file(self, create: bool = True) -> tuple[int, str]:
        flock = _require_flock()
        held_key = str(self.path)
        with _held_lock:
            if held_key in _held:
                raise SessionInUseError(self.where, "another session object in this process")
            _held.add(held_key)
        try:
            if create:
                _make_private_dirs(self.bot_dir)
            self._check_path()
            flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
            for _ in range(10):
                fd = os.open(self.path, flags, _FILE_MODE)
                try:
                    flock.flock(fd, flock.LOCK_EX | flock.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise SessionInUseError(
                        self.where, "another process (it holds the file lock; close the session there first)"
                    ) from None
                except BaseException:
                    os.close(fd)
                    raise
                # delete() elsewhere may have unlinked the file between our open and lock.
                try:
                    st = os.stat(self.path, follow_symlinks=False)
                except FileNotFoundError:
                    st = None
                fst = os.fstat(fd)
                if st is not None and (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino):
                    if fst.st_mode & 0o777 != _FILE_MODE:
                        os.fchmod(fd, _FILE_MODE)  # -wal/-shm inherit this mode from SQLite
                    return fd, held_key
                os.close(fd)
            raise SessionStoreError(f"{self.where}: the file keeps being replaced while opening it")
        except BaseException:
            with _held_lock:
                _held.discard(held_key)
            raise

    def _conn(self, *, create: bool = True) -> sqlite3.Connection:
        """The open connection (call with ``self._lock`` held); opens file and lock if needed.

        Opening reads and checks the schema and the sessions row (opening a sealed
        auth key) before anything is written; only then is the file prepared.
        """
        handle = self._handle
        if handle is not None:
            return handle.conn
        try:
            fd, held_key = self._lock_file(create)
        except OSError as exc:
            raise SessionStoreError(f"cannot open {self.where}: {type(exc).__name__}: {exc}") from exc
        try:
            if _wal_size(self.path):
                # Closing a writable connection checkpoints a left-over -wal into the file:
                # check what we are about to open without one.
                self._check_read_only()
            conn = sqlite3.connect(str(self.path), timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            _release_fd(fd, held_key)
            raise SessionStoreError(f"cannot open {self.where}: {exc}") from exc
        except BaseException:
            _release_fd(fd, held_key)
            raise
        handle = _Handle(conn, fd, held_key)
        try:
            with self._reading_errors():
                tables, version = self._inspect(conn)
                opened = self._read_header(conn, tables)
                self._prepare(conn, tables, version)
        except BaseException:
            handle.close()
            raise
        self._opened = opened
        self._handle = handle
        return conn

    @contextlib.contextmanager
    def _reading_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise SessionStoreError(f"cannot open {self.where}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise SessionCorruptError(
                f"{self.where}: cannot read it as a Telethon session ({exc}); the file was not modified"
            ) from exc

    def _check_read_only(self) -> None:
        """Check the schema and open the sessions row through a read-only connection."""
        try:
            ro = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT)
        except sqlite3.Error as exc:
            log.debug("%s: no read-only check (%s); checking through the writable connection", self.where, exc)
            return
        try:
            tables, _ = self._inspect(ro)
            self._read_header(ro, tables)
        except sqlite3.OperationalError as exc:
            log.debug("%s: no read-only check (%s); checking through the writable connection", self.where, exc)
        except sqlite3.DatabaseError as exc:
            raise SessionCorruptError(
                f"{self.where}: cannot read it as a Telethon session ({exc}); the file was not modified"
            ) from exc
        finally:
            ro.close()

    def _inspect(self, conn: sqlite3.Connection) -> tuple[set[str], int | None]:
        """The file's tables and Telethon schema version (``None`` for a new file); reads only."""
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
        version: int | None = None
        if tables:
            if "version" not in tables:
                raise SessionCorruptError(
                    f"{self.where}: an SQLite database without Telethon's version table; the file was not modified"
                )
            row = conn.execute("select version from version").fetchone()
            if row is None or not isinstance(row[0], int):
                raise SessionCorruptError(f"{self.where}: Telethon's version table is empty; the file was not modified")
            version = row[0]
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(self.where, version, SCHEMA_VERSION)
            if version < 1:
                raise SessionCorruptError(f"{self.where}: schema version {version} is invalid; not modified")
            if "sessions" not in tables:
                raise SessionCorruptError(
                    f"{self.where}: Telethon's sessions table is missing; the file was not modified"
                )
        return tables, version

    def _read_header(self, conn: sqlite3.Connection, tables: set[str]) -> _Opened:
        """The sessions row with its auth key opened; reads only (any schema version)."""
        if "sessions" not in tables:
            return _Opened(None, KeyState.NONE)
        cur = conn.execute("select * from sessions limit 1")
        try:
            names = [d[0] for d in cur.description]
            row = cur.fetchone()
        finally:
            cur.close()
        if row is None:
            return _Opened(None, KeyState.NONE)
        values = dict(zip(names, row, strict=True))
        auth_key, state = self.sealer.open_auth_key(values.get("auth_key"))
        header = SessionHeader(
            int(values.get("dc_id") or 0),
            values.get("server_address"),
            values.get("port"),
            auth_key,
            values.get("takeout_id"),
        )
        return _Opened(header, state)

    def _prepare(self, conn: sqlite3.Connection, tables: set[str], version: int | None) -> None:
        """Switch to WAL, create or upgrade tables (the first writes; the file was checked before)."""
        mode = conn.execute("pragma journal_mode=wal").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise SessionStoreError(f"{self.where}: cannot switch the file to WAL mode (got {mode})")
        conn.execute("pragma synchronous=normal")
        if self.cipher is not None:
            conn.execute("pragma secure_delete=on")  # replaced values are zeroed, not left in free space
        conn.execute("begin immediate")
        try:
            if version is None:
                for table in _TABLES:
                    conn.execute(f"create table {table}")
                conn.execute("insert into version values (?)", (SCHEMA_VERSION,))
            elif version < SCHEMA_VERSION:
                self._upgrade(conn, version)
                conn.execute("delete from version")
                conn.execute("insert into version values (?)", (SCHEMA_VERSION,))
                log.info("upgraded %s from Telethon schema version %d to %d", self.where, version, SCHEMA_VERSION)
            for stmt in _INDEXES:
                conn.execute(stmt)
            if self.encrypt_pii:
                conn.execute(f"create table if not exists {_SEALED_TABLE}")
            conn.execute("commit")
        except BaseException:
            _rollback(conn)
            raise
        self._sealed_table = self.encrypt_pii or SEALED_ENTITIES in tables

    @staticmethod
    def _upgrade(conn: sqlite3.Connection, old: int) -> None:
        """Telethon's ``SQLiteSession._upgrade_database``, step by step, in the caller's transaction.

        Unlike Telethon's, each step tolerates a file that a crashed upgrade left half-done.
        """
        if old == 1:
            old += 1  # version 1 has no sent_files table yet
        if old == 2:
            old += 1  # the old sent_files cache expires within a day anyway: drop it
            conn.execute("drop table if exists sent_files")
            conn.execute(f"create table {_SENT_FILES_V3}")
        if old == 3:
            old += 1
            conn.execute(f"create table if not exists {_UPDATE_STATE_V4}")
        if old == 4:
            old += 1
            if "takeout_id" not in _columns(conn, "sessions"):
                conn.execute("alter table sessions add column takeout_id integer")
        if old == 5:
            old += 1  # access hashes of users and channels may be wrong: drop them
            conn.execute("delete from entities")
        if old == 6:
            old += 1
            if "date" not in _columns(conn, "entities"):
                conn.execute("alter table entities add column date integer")
        if old == 7:
            old += 1
            if "tmp_auth_key" not in _columns(conn, "sessions"):
                conn.execute("alter table sessions add column tmp_auth_key blob")

    def close(self) -> None:
        """Close the file and release its lock; a later call opens both again."""
        with self._lock:
            handle, self._handle = self._handle, None
            if handle is not None:
                handle.close()  # SQLite checkpoints and removes -wal/-shm here
            if self._metadata_due or self._wrote:
                self._wrote = False
                self._refresh_metadata()

    # -- sealing ---------------------------------------------------------------------------

    def _encode_auth_key(self, key: bytes | None) -> bytes:
        """The value stored in ``sessions.auth_key`` (Telethon stores ``b''`` for no key)."""
        return self.sealer.seal_auth_key(key) or b""

    def _seal_fields(self, row: EntityRow) -> tuple[list[str | None], list[bytes | None]]:
        """The ``entities`` columns (blind indexes) and side-table values (sealed) of a row."""
        columns: list[str | None] = []
        sealed: list[bytes | None] = []
        for f, value in zip(PII_FIELDS, (row.username, row.phone, row.name), strict=True):
            if not value:
                columns.append(None)
                sealed.append(None)
            else:
                index, value_sealed = self.sealer.seal_entity_field(row.id, f, value)
                columns.append(BLIND_INDEX_PREFIX + index)
                sealed.append(value_sealed)
        return columns, sealed

    def _field_value(self, eid: int, f: str, column: Any, sealed: Any) -> str | None:
        """One entity field: the opened sealed value, or the column's plaintext."""
        if sealed is None or not (isinstance(column, str) and column.startswith(BLIND_INDEX_PREFIX)):
            # Plaintext: written without encrypt_pii, or rewritten by plain Telethon (a stale side value).
            if column is None or column == "":
                return None
            return str(column)  # the phone column has integer affinity
        value = self.sealer.open_entity_field(eid, f, bytes(sealed))
        self.sealer.check_blind_index(eid, f, value, column[len(BLIND_INDEX_PREFIX) :])
        return value

    def _entity(self, row: Sequence[Any]) -> EntityRow:
        """An entity from a row of ``_SELECT_PLAIN`` or ``_SELECT_SEALED``, opening sealed fields."""
        if len(row) == 6 or (row[6] is None and row[7] is None and row[8] is None):
            return _entity_from_row(row[:6])
        eid = int(row[0])
        username, phone, name = (self._field_value(eid, f, row[2 + i], row[6 + i]) for i, f in enumerate(PII_FIELDS))
        return EntityRow(eid, int(row[1]), username, phone, name, int(row[5] or 0))

    def _select(self) -> str:
        """The entity query for this file (call after ``_conn()``)."""
        return _SELECT_SEALED if self._sealed_table else _SELECT_PLAIN

    # -- reading -----------------------------------------------------------------------------

    def load(self) -> StoredSession | None:
        """Open the file and read the sessions row and the update states (never the entities)."""
        try:
            with self._lock:
                fresh = self._handle is None
                conn = self._conn()
                opened = self._opened
                try:
                    if not fresh or opened is None:
                        opened = self._read_header(conn, {"sessions"})
                    states = {
                        int(sid): _state_from_row(pts, qts, date, seq)
                        for sid, pts, qts, date, seq in conn.execute("select id, pts, qts, date, seq from update_state")
                    }
                except sqlite3.DatabaseError as exc:
                    raise SessionCorruptError(f"{self.where}: cannot read the session ({exc})") from exc
                if opened.header is None and not states:
                    return None
                rewrite = opened.state.needs_rewrite
                if opened.state is KeyState.PLAINTEXT:
                    log.info("%s: plaintext auth key; it is sealed on the next save()", self.where)
                elif opened.state is KeyState.OLD_KEY:
                    log.info("%s: auth key sealed with an old key; it is re-sealed on the next save()", self.where)
                self._purge_due = rewrite
                header = opened.header or SessionHeader(0, None, None, None, None)
                return StoredSession(header=header, update_states=states, needs_rewrite=rewrite)
        except BaseException:
            self.close()  # a session that failed to open must not keep the lock
            raise

    def find_entity_by_ids(self, ids: Sequence[int]) -> EntityRow | None:
        if not ids:
            return None
        marks = ",".join("?" * len(ids))
        with self._lock:
            conn = self._conn()
            rows = conn.execute(f"{self._select()} where e.id in ({marks})", tuple(ids)).fetchall()
        found = {r.id: r for r in map(self._entity, rows)}
        for i in ids:
            if i in found:
                return found[i]
        return None

    def find_entity(self, field: str, value: str) -> EntityRow | None:
        if field not in _LOOKUP_FIELDS:
            raise ValueError(f"cannot look entities up by {field!r}")
        order = "order by coalesce(e.date, 0) desc, e.rowid desc"
        with self._lock:
            conn = self._conn()
            if not self._sealed_table:
                row = conn.execute(f"{_SELECT_PLAIN} where e.{field} = ? {order} limit 1", (value,)).fetchone()
                return _entity_from_row(row) if row is not None else None
            # Sealed rows are found by their blind index under any accepted key; rows
            # written before encrypt_pii was on, by their plaintext. One indexed query.
            indexes: frozenset[str] = frozenset()
            if self.cipher is not None:
                indexes = frozenset(BLIND_INDEX_PREFIX + bi for bi in self.sealer.blind_indexes(field, value))
            keys = (value, *indexes)
            marks = ",".join("?" * len(keys))
            rows = conn.execute(f"{_SELECT_SEALED} where e.{field} in ({marks}) {order}", keys).fetchall()
        i = PII_FIELDS.index(field)
        failed: SessionDecryptionError | None = None
        for row in rows:
            if row[2 + i] in indexes and row[6 + i] is None:
                continue  # a blind index without its sealed value answers nothing
            try:
                entity = self._entity(row)
            except SessionDecryptionError as exc:
                # A row that does not open (copied from elsewhere, changed outside) never
                # hides the real owner of the value: try the next one.
                log.warning("%s: skipping entity %s in a lookup: %s", self.where, row[0], exc.reason)
                failed = failed or exc
                continue
            if row[2 + i] not in indexes or getattr(entity, field) == value:
                return entity  # found by the plaintext value, or by the blind index of the value
        if failed is not None:
            raise failed
        return None

    def find_file(self, key: FileKey) -> tuple[int, int] | None:
        with self._lock:
            row = (
                self._conn()
                .execute(
                    "select id, hash from sent_files where md5_digest = ? and file_size = ? and type = ?",
                    (key[0], key[1], key[2]),
                )
                .fetchone()
            )
        return (int(row[0]), int(row[1])) if row is not None else None

    def iter_entities(self) -> Iterator[EntityRow]:
        """Every stored entity, read in pages of 1,000 (the lock is not held between pages)."""
        last = -(2**63)  # the smallest SQLite integer
        while True:
            with self._lock:
                conn = self._conn()
                rows = conn.execute(f"{self._select()} where e.id > ? order by e.id limit ?", (last, _PAGE)).fetchall()
            for row in rows:
                yield self._entity(row)
            if len(rows) < _PAGE:
                return
            last = rows[-1][0]

    def iter_files(self) -> Iterator[tuple[FileKey, tuple[int, int]]]:
        last = 0
        while True:
            with self._lock:
                rows = (
                    self._conn()
                    .execute(
                        "select rowid, md5_digest, file_size, type, id, hash from sent_files "
                        "where rowid > ? order by rowid limit ?",
                        (last, _PAGE),
                    )
                    .fetchall()
                )
            for _, md5, size, kind, fid, fhash in rows:
                yield (bytes(md5), int(size), int(kind)), (int(fid), int(fhash))
            if len(rows) < _PAGE:
                return
            last = rows[-1][0]

    # -- writing -----------------------------------------------------------------------------

    def write_session(self, header: SessionHeader) -> None:
        """Replace the sessions row and commit with a full fsync before returning."""
        try:
            with self._lock:
                conn = self._conn()
                with _durable_transaction(conn):
                    conn.execute("delete from sessions")
                    conn.execute(
                        "insert into sessions (dc_id, server_address, port, auth_key, takeout_id, tmp_auth_key) "
                        "values (?, ?, ?, ?, ?, ?)",
                        (
                            header.dc_id,
                            header.server_address,
                            header.port,
                            self._encode_auth_key(header.auth_key),
                            header.takeout_id,
                            b"",
                        ),
                    )
                if self._purge_due:
                    # The plaintext (or old-key) auth key is still in the main file until a
                    # checkpoint copies the new page over it: do that now.
                    self._purge_due = False
                    self._checkpoint(conn)
        except sqlite3.Error as exc:
            raise SessionStoreError(f"cannot write {self.where}: {type(exc).__name__}: {exc}") from exc
        self._wrote = True
        self._refresh_metadata()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """Copy the write-ahead log into the file and truncate it (replaced values leave the disk)."""
        row = conn.execute("pragma wal_checkpoint(truncate)").fetchone()
        if row is not None and row[0]:
            log.debug("%s: the checkpoint could not finish (a reader); it completes on close", self.where)

    def write_changes(self, changes: Changes) -> None:
        """Write entities, update states and sent files in one transaction (background thread)."""
        entity_rows: list[tuple[Any, ...]] = []
        sealed_rows: list[tuple[Any, ...]] = []
        if self.encrypt_pii:
            # Sealed here, in the writer's thread: the hot path never pays for it.
            for r in changes.entities.values():
                columns, sealed = self._seal_fields(r)
                entity_rows.append((r.id, r.hash, *columns, r.date))
                sealed_rows.append((r.id, *sealed))
        else:
            entity_rows = [(r.id, r.hash, r.username, r.phone, r.name, r.date) for r in changes.entities.values()]
        state_rows = [(sid, s.pts, s.qts, int(s.date.timestamp()), s.seq) for sid, s in changes.states.items()]
        file_rows = [(k[0], k[1], k[2], v[0], v[1]) for k, v in changes.files.items()]
        with self._lock:
            conn = self._conn()
            conn.execute("begin immediate")
            try:
                if entity_rows:
                    conn.executemany(
                        "insert or replace into entities (id, hash, username, phone, name, date) "
                        "values (?, ?, ?, ?, ?, ?)",
                        entity_rows,
                    )
                    if sealed_rows:
                        conn.executemany(_INSERT_SEALED, sealed_rows)
                    elif self._sealed_table:
                        # Written in plaintext now: their sealed values are stale.
                        conn.executemany(_DELETE_SEALED, [(r[0],) for r in entity_rows])
                if state_rows:
                    conn.executemany(
                        "insert or replace into update_state (id, pts, qts, date, seq) values (?, ?, ?, ?, ?)",
                        state_rows,
                    )
                if file_rows:
                    conn.executemany(
                        "insert or replace into sent_files (md5_digest, file_size, type, id, hash) "
                        "values (?, ?, ?, ?, ?)",
                        file_rows,
                    )
                conn.execute("commit")
            except BaseException:
                _rollback(conn)
                raise
            self.commits += 1
            self._metadata_due = self._wrote = True
        if time.monotonic() - self._metadata_at >= self.metadata_interval:
            self._refresh_metadata()

    def _refresh_metadata(self) -> None:
        """Update this user's metadata.json entry; a failure is logged, never raised."""
        self._metadata_due = False
        self._metadata_at = time.monotonic()
        try:
            _update_metadata(self.bot_dir, self.key.user_id, self.path)
        except Exception as exc:  # noqa: BLE001 - metadata is an index of the files, never worth failing a write
            self._metadata_due = True
            log.warning("cannot update %s (%s)", self.bot_dir / METADATA_FILE, type(exc).__name__)

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
                        os.unlink(f"{self.path}{suffix}")
            except (OSError, sqlite3.Error) as exc:
                raise SessionStoreError(f"cannot delete {self.where}: {type(exc).__name__}: {exc}") from exc
            finally:
                handle.close()
            self._metadata_due = self._wrote = False
            try:
                _update_metadata(self.bot_dir, self.key.user_id, self.path, remove=True)
            except Exception as exc:  # noqa: BLE001 - the file is gone; the index is rebuilt from files
                log.warning("cannot update %s (%s)", self.bot_dir / METADATA_FILE, type(exc).__name__)

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
        cipher = self.cipher
        if cipher is None:
            raise ConfigError("cipher", "re-sealing needs a cipher")
        if not self.path.exists():
            return 0
        with self._lock:
            fresh = self._handle is None
            conn = self._conn(create=False)
            try:
                opened = self._opened if fresh and self._opened is not None else self._read_header(conn, {"sessions"})
                auth_key: bytes | None = None
                if opened.header is not None and opened.state.needs_rewrite:
                    auth_key = self._encode_auth_key(opened.header.auth_key)
                columns, sealed = self._resealed_entities(conn)
                if auth_key is None and not columns:
                    return 0
                with _durable_transaction(conn):
                    if auth_key is not None:
                        conn.execute("update sessions set auth_key = ?", (auth_key,))
                    if columns:
                        conn.execute(f"create table if not exists {_SEALED_TABLE}")
                        conn.executemany(_UPDATE_PII, columns)
                        conn.executemany(_INSERT_SEALED, sealed)
                self._sealed_table = self._sealed_table or bool(columns)
                if opened.header is not None:
                    self._opened = _Opened(opened.header, KeyState.CURRENT)
                self._purge_due = False
                self._checkpoint(conn)  # the replaced values leave the disk now
            except sqlite3.Error as exc:
                raise SessionStoreError(f"cannot re-seal {self.where}: {type(exc).__name__}: {exc}") from exc
        return int(auth_key is not None) + len(columns)

    def _resealed_entities(self, conn: sqlite3.Connection) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """``(entities updates, side-table rows)`` for every entity row that is not sealed as it should be."""
        updates: list[tuple[Any, ...]] = []
        sealed: list[tuple[Any, ...]] = []
        last = -(2**63)
        select = self._select()
        while True:
            rows = conn.execute(f"{select} where e.id > ? order by e.id limit ?", (last, _PAGE)).fetchall()
            for row in rows:
                if self._needs_reseal(row):
                    entity = self._entity(row)
                    columns, values = self._seal_fields(entity)
                    updates.append((*columns, entity.id))
                    sealed.append((entity.id, *values))
            if len(rows) < _PAGE:
                return updates, sealed
            last = rows[-1][0]

    def _needs_reseal(self, row: Sequence[Any]) -> bool:
        cipher = self.cipher
        assert cipher is not None
        plaintext = False
        for i in range(len(PII_FIELDS)):
            column = row[2 + i]
            side = row[6 + i] if len(row) > 6 else None
            if side is not None and isinstance(column, str) and column.startswith(BLIND_INDEX_PREFIX):
                if cipher.needs_reseal(bytes(side)):
                    return True
            elif column is not None and column != "":
                plaintext = True
        return self.encrypt_pii and plaintext


def _release_fd(fd: int, held_key: str) -> None:
    try:
        os.close(fd)
    finally:
        with _held_lock:
            _held.discard(held_key)


def rotate_sqlite_sessions(
    sessions_dir: str | os.PathLike[str],
    bot_id: str,
    cipher: SessionCipher,
    *,
    user_id: str | int | None = None,
    encrypt_pii: bool = False,
) -> int:
    """Re-seal one session (``user_id``) or every session file of ``bot_id`` with ``cipher``'s current key.

    The SQLite counterpart of :func:`~telethon_firestore_session.firestore.rotate_firestore_sessions`.
    Run it after every process has the new key as ``SESSION_ENCRYPTION_KEY`` and the
    previous one in ``SESSION_ENCRYPTION_OLD_KEYS``; afterwards the old key can be
    dropped. It also seals plaintext auth keys (turning encryption on for files
    written without it), and with ``encrypt_pii`` plaintext entity fields. Each file
    is rewritten in one transaction, only if something in it is not current, and
    its write-ahead log is checkpointed and truncated, so replaced values leave the
    disk. Safe to run again after an interruption. It never bumps a session's
    ``last_active_at`` in metadata.json.

    A file that is open (in another process, or in this one) holds its lock: it is
    skipped and reported, never written; it is re-sealed by its own next ``save()``
    (the auth key) or by running this again once it is closed.

    :returns: how many sessions had at least one row rewritten.
    :raises SessionRotationError: once the others are done, if some sessions were
        skipped (in use, a value that does not open, an unreadable file). It lists
        each of them; they are left exactly as they were.
    """
    if user_id is not None:
        keys = [SessionKey(bot_id, user_id)]
    else:
        _, bot_dir = _bot_dir(sessions_dir, bot_id)
        keys = [SessionKey(bot_id, uid) for uid in sorted(_session_files(bot_dir))]
    return reseal_each(
        keys, lambda key: SQLiteStore(key, sessions_dir, cipher=cipher, encrypt_pii=encrypt_pii), cipher.key_id
    )


class ScopedSQLiteSession(SessionCore):
    """A Telethon session in ``{sessions_dir}/{bot_id}/user_{user_id}.session``.

    Pass it to ``TelegramClient(session=ScopedSQLiteSession(user_id, bot_id=...), ...)``.
    The file uses Telethon's own schema (version 8), so ``telethon.sessions.SQLiteSession``
    can open it too, and Telethon's files (any version) open here.

    Durability and timing:

    * Creating the object opens the file, takes an exclusive file lock and reads the
      DC, auth key, takeout id and update states (one small read; entities are looked
      up lazily with indexed queries, so start-up does not grow with their number).
    * ``save()`` returns after a changed auth key, DC or takeout id is committed and
      fsynced. Otherwise it only hands records to the background writer: no disk I/O.
    * Entities, update states and sent files are written behind within
      ``flush_interval`` seconds, one transaction per flush.
    * ``close()`` flushes (waiting at most ``close_timeout``), closes the file and
      releases the lock. Using the session again re-opens the file and takes the lock.

    Encryption at rest (``cipher``): the auth key is sealed in ``sessions.auth_key`` and
    opened when the session is created; a plaintext one (a file written without a
    cipher, or by Telethon), or one sealed with an old key, is re-sealed by the next
    ``save()``, and the write-ahead log is checkpointed so the old value leaves the
    disk. With ``encrypt_pii=True`` entity usernames, phone numbers and display names
    are sealed as well and looked up through blind indexes (see the module docstring
    for the layout). Sealing happens in ``save()`` and the background writer, opening
    in lazy lookups: never on the hot path. A sealed file still opens in plain
    Telethon, whose client then fails with ``AuthKeyNotFound`` (Telegram does not know
    the envelope as a key).

    :param user_id: the user whose session this is (str or int).
    :param bot_id: the bot (or application) the user belongs to.
    :param sessions_dir: the directory that holds a folder per bot.
    :param cipher: a :class:`~telethon_firestore_session.crypto.SessionCipher`
        (e.g. ``SessionCipher.from_env()``), or ``None`` to store plaintext.
    :param encrypt_pii: also seal entity usernames, phone numbers and names (needs ``cipher``).
    :raises ConfigError: for ``encrypt_pii=True`` without a ``cipher``.
    :raises InvalidSessionIdError: for a ``user_id``/``bot_id`` that could escape ``sessions_dir``.
    :raises SessionInUseError: if another process (or object) has this user's session open.
    :raises SessionDecryptionError: if the stored auth key cannot be opened (wrong or missing
        key, tampered, or copied from another user's file); the file is not modified.
    :raises SchemaVersionError: if the file has a newer Telethon schema (it is not modified).
    :raises SessionCorruptError: if the file is not a Telethon session (it is not modified).
    :raises SessionStoreError: if the file cannot be opened or written.
    """

    def __init__(
        self,
        user_id: str | int,
        *,
        bot_id: str,
        sessions_dir: str | os.PathLike[str] = "sessions",
        cipher: SessionCipher | None = None,
        encrypt_pii: bool = False,
        flush_interval: float = 5.0,
        close_timeout: float = 10.0,
    ) -> None:
        key = SessionKey(bot_id, user_id)
        self.key = key
        store = SQLiteStore(key, sessions_dir, cipher=cipher, encrypt_pii=encrypt_pii)
        self._sqlite = store
        super().__init__(store, flush_interval=flush_interval, close_timeout=close_timeout)

    @property
    def user_id(self) -> str:
        return self.key.user_id

    @property
    def bot_id(self) -> str:
        return self.key.bot_id

    @property
    def path(self) -> Path:
        """The session file (absolute)."""
        return self._sqlite.path
