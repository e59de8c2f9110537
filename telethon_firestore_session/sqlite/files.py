"""A bot's directory of session files: paths and id checks, file locks, and ``metadata.json``.

Layout::

    {sessions_dir}/{bot_id}/                 0700
        user_{user_id}.session    0600       Telethon's schema (see :mod:`.schema`), locked while open
        bot.session               0600       the bot's own session (same schema; not in metadata.json)
        metadata.json             0600       one entry per user (below)
        metadata.lock                        serialises metadata.json writers across processes

``metadata.json`` is the one per-user record: ``{user_id: entry}``. The session store
keeps ``user_id``, ``created_at``, ``last_active_at`` and ``size`` (bytes of the file
and its write-ahead log) of every session file; the session manager's directory keeps
its fields in the same entry (``registered_at``, ``logged_in``, ``api_credentials``,
``pending_login``, ...; an entry with ``registered_at`` is a registered user). Both
bump the one ``last_active_at``. Every write takes a thread lock and an ``flock`` on
metadata.lock, changes the entry and replaces the file atomically (temporary file,
fsync, rename, fsync of the directory).

Older versions kept the manager's fields in ``user_{user_id}.meta.json``. Such a file
is folded into the user's entry by the first write that touches the user (the
directory's reads write for that): metadata.json is written first and the old file
removed after, so a crash in between loses nothing and the next write folds it again.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import errno
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from telethon_firestore_session.errors import (
    InvalidSessionIdError,
    SessionCorruptError,
    SessionInUseError,
    SessionStoreError,
)
from telethon_firestore_session.ids import BotSessionKey, SessionKey, validate_id

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "METADATA_FILE",
    "FileLock",
    "UserFiles",
    "list_sqlite_sessions",
    "locked_files",
    "read_metadata",
    "session_path",
    "user_files",
]

log = logging.getLogger(__name__)

SESSION_SUFFIX = ".session"
#: The old per-user record of the session manager, folded into metadata.json.
LEGACY_SUFFIX = ".meta.json"
METADATA_FILE = "metadata.json"
METADATA_LOCK = "metadata.lock"
FILE_MODE = 0o600
DIR_MODE = 0o700
#: The fields of an entry that describe the session file (the store's).
SESSION_FIELDS = ("created_at", "size")

_USER_FILE = re.compile(r"^user_(.+)\.session$")
_LEGACY_FILE = re.compile(r"^user_(.+)\.meta\.json$")
_TMP_PREFIX = ".metadata.json."
_UTC = datetime.timezone.utc

#: An entry (a copy, or ``None`` if there is none) -> the new entry (``None`` removes it).
Change = Callable[[dict[str, Any] | None], dict[str, Any] | None]


def now_iso() -> str:
    return datetime.datetime.now(_UTC).isoformat(timespec="seconds")


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, _UTC).isoformat(timespec="seconds")


def parse_iso(value: object) -> datetime.datetime | None:
    """An ISO-8601 time (naive ones are UTC), or ``None`` for anything else."""
    if isinstance(value, datetime.datetime):
        return value
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=_UTC)


def registered(entry: Mapping[str, Any] | None) -> bool:
    """Whether an entry is the session manager's record of a user (not only a session file's)."""
    return entry is not None and "registered_at" in entry


# -- paths ---------------------------------------------------------------------------------


def require_flock() -> Any:
    if fcntl is None:  # pragma: no cover - Windows
        raise SessionStoreError("ScopedSQLiteSession needs POSIX file locks (fcntl.flock); use FirestoreSession here")
    return fcntl


def make_private_dirs(path: Path) -> None:
    """Create ``path`` and missing parents with mode 0700 (existing ones are left alone)."""
    missing: list[Path] = []
    p = path
    while not os.path.isdir(p) and not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(d, DIR_MODE)  # exact, whatever the umask


def fsync_dir(path: Path) -> None:
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


def bot_dir(sessions_dir: str | os.PathLike[str], bot_id: object) -> tuple[Path, Path]:
    """``(resolved sessions_dir, its bot directory)``, checking that the latter stays inside."""
    bot = validate_id("bot_id", bot_id)
    base = os.path.realpath(sessions_dir)
    found = os.path.join(base, bot)  # canonical unless it is a link itself (an id has no "/" and no "..")
    if os.path.islink(found):
        found = os.path.realpath(found)
    if os.path.dirname(found) != base:
        raise InvalidSessionIdError(f"bot_id {bot!r}: {found} resolves outside the sessions directory {base}")
    return Path(base), Path(found)


def file_name(key: SessionKey) -> str:
    """``user_{user_id}.session``, or ``bot.session`` for the bot's own session (a :class:`BotSessionKey`)."""
    return f"bot{SESSION_SUFFIX}" if isinstance(key, BotSessionKey) else f"user_{key.user_id}{SESSION_SUFFIX}"


def user_file(directory: Path, key: SessionKey) -> Path:
    """The session file of ``key`` (:func:`file_name`) in a bot directory from :func:`bot_dir`.

    :raises InvalidSessionIdError: if the session file is a symbolic link.
    """
    path = directory / file_name(key)
    if path.is_symlink():
        raise InvalidSessionIdError(f"session {key}: {path} is a symbolic link; refusing to follow it")
    return path


def session_paths(sessions_dir: str | os.PathLike[str], key: SessionKey) -> tuple[str, str, str]:
    """``(sessions_dir, bot directory, session file)``, absolute, without touching the disk.

    :func:`check_bot_dir` checks the bot directory each time the file is opened, and
    :meth:`FileLock.acquire` refuses a session file that is a symbolic link.
    """
    base = os.path.abspath(sessions_dir)
    bot = os.path.join(base, key.bot_id)  # an id has no "/" and no ".."
    return base, bot, os.path.join(bot, file_name(key))


def check_bot_dir(base: str, bot: str, bot_id: str) -> None:
    """The bot directory of :func:`session_paths` is no symbolic link out of the sessions directory.

    :raises InvalidSessionIdError: otherwise.
    """
    if os.path.islink(bot) and os.path.dirname(os.path.realpath(bot)) != os.path.realpath(base):
        raise InvalidSessionIdError(f"bot_id {bot_id!r}: {bot} resolves outside the sessions directory {base}")


def session_path(sessions_dir: str | os.PathLike[str], key: SessionKey) -> Path:
    """``{sessions_dir}/{bot_id}/user_{user_id}.session`` (absolute); ``bot.session`` for a :class:`BotSessionKey`.

    :param sessions_dir: the directory that holds a folder per bot.
    :param key: the session's key.
    :raises InvalidSessionIdError: if an id is invalid, the bot directory (through a
        symbolic link) lies outside ``sessions_dir``, or the session file is a symbolic link.
    """
    return user_file(bot_dir(sessions_dir, key.bot_id)[1], key)


def legacy_path(directory: Path, user_id: str) -> Path:
    """The old per-user record ``user_{user_id}.meta.json``."""
    return directory / f"user_{validate_id('user_id', user_id)}{LEGACY_SUFFIX}"


class UserFiles(NamedTuple):
    """One user's files in a bot directory."""

    session: Path | None
    legacy: Path | None


def user_files(directory: Path) -> dict[str, UserFiles]:
    """Every user with a ``user_*.session`` or old ``user_*.meta.json`` file in ``directory``.

    The one listing of a bot's users on disk; names that are not valid ids are ignored.
    """
    sessions: dict[str, Path] = {}
    legacy: dict[str, Path] = {}
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return {}
    for name in names:
        for pattern, found in ((_USER_FILE, sessions), (_LEGACY_FILE, legacy)):
            m = pattern.match(name)
            if m is None:
                continue
            with contextlib.suppress(InvalidSessionIdError):  # not a name we wrote: ignored
                found[validate_id("user_id", m.group(1))] = directory / name
            break
    return {uid: UserFiles(sessions.get(uid), legacy.get(uid)) for uid in sorted(sessions.keys() | legacy.keys())}


def session_files(directory: Path) -> dict[str, Path]:
    """``user_id -> path`` of every session file in ``directory``, sorted by user id."""
    return {uid: f.session for uid, f in user_files(directory).items() if f.session is not None}


def file_size(path: Path) -> int | None:
    """Bytes on disk of a session: the file plus its write-ahead log; ``None`` if it is gone."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return None
    with contextlib.suppress(FileNotFoundError):
        size += os.stat(f"{path}-wal").st_size
    return size


# -- the lock on a session file -----------------------------------------------------------------

# Paths locked by a store of this process. Checked before opening the file at all:
# closing any descriptor of a file drops every POSIX lock this process holds on it,
# SQLite's own included.
_held: set[str] = set()
_held_lock = threading.Lock()


class FileLock:
    """An exclusive ``flock`` on one session file, held by one object of this process."""

    __slots__ = ("fd", "held_key", "size")

    def __init__(self, fd: int, held_key: str, size: int = 0) -> None:
        self.fd = fd
        self.held_key = held_key
        #: The file's size when it was locked.
        self.size = size

    @classmethod
    def acquire(cls, path: str, where: str, *, create: bool, check: Callable[[], None]) -> FileLock:
        """Open ``path`` (creating it and its directory with ``create``) and lock it.

        ``check`` runs before the file is opened (path checks). A file replaced
        between opening and locking (deleted by another process) is opened again.

        :raises SessionInUseError: if this process or another one holds the lock.
        :raises InvalidSessionIdError: if the file is a symbolic link (it is not followed).
        :raises FileNotFoundError: without ``create``, if the file does not exist.
        """
        flock = require_flock()
        held_key = str(path)
        with _held_lock:
            if held_key in _held:
                raise SessionInUseError(where, "another session object in this process")
            _held.add(held_key)
        try:
            check()
            flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
            for _ in range(10):
                try:
                    fd = _open_no_link(path, flags, where)
                except FileNotFoundError:
                    if not create:
                        raise
                    make_private_dirs(Path(path).parent)  # a new bot directory
                    check()
                    fd = _open_no_link(path, flags, where)
                try:
                    flock.flock(fd, flock.LOCK_EX | flock.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise SessionInUseError(
                        where, "another process (it holds the file lock; close the session there first)"
                    ) from None
                except BaseException:  # any failure, interrupts too: never leak the descriptor
                    os.close(fd)
                    raise
                # delete() elsewhere may have unlinked the file between our open and lock.
                try:
                    st = os.stat(path, follow_symlinks=False)
                except FileNotFoundError:
                    st = None
                fst = os.fstat(fd)
                if st is not None and (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino):
                    if fst.st_mode & 0o777 != FILE_MODE:
                        os.fchmod(fd, FILE_MODE)  # -wal/-shm inherit this mode from SQLite
                    return cls(fd, held_key, fst.st_size)
                os.close(fd)
            raise SessionStoreError(f"{where}: the file keeps being replaced while opening it")
        except BaseException:  # any failure, interrupts too: the path is not held
            with _held_lock:
                _held.discard(held_key)
            raise

    def release(self) -> None:
        """Close the descriptor (which drops the ``flock``); safe to call twice."""
        fd, self.fd = self.fd, -1
        if fd < 0:
            return
        try:
            os.close(fd)
        finally:
            with _held_lock:
                _held.discard(self.held_key)


def _flock_inodes() -> set[int] | None:
    """Inodes with a ``flock`` lock held, from ``/proc/locks`` (Linux); ``None`` where it does not exist.

    Only the inode is compared: overlay file systems (containers) report another device there.
    """
    try:
        text = Path("/proc/locks").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    inodes: set[int] = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 6 or parts[1] != "FLOCK":
            continue
        with contextlib.suppress(IndexError, ValueError):
            inodes.add(int(parts[5].rsplit(":", 1)[1]))
    return inodes


def _probe(path: Path) -> bool:
    """Whether an exclusive ``flock`` is held on ``path``: a shared probe fails only then."""
    if fcntl is None:  # pragma: no cover - Windows
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def locked_files(paths: Iterable[Path]) -> list[Path]:
    """The session files among ``paths`` that a running process holds open (its :class:`FileLock`).

    On Linux the kernel's lock table is read, which takes no lock, so a bot opening its
    session at that moment is never disturbed; elsewhere each file is probed with a
    shared lock. Not for files this process has open (closing the probe's descriptor
    would drop this process's SQLite locks on them).
    """
    inodes = _flock_inodes()
    if inodes is None:
        return [p for p in paths if _probe(p)]
    locked = []
    for p in paths:
        with contextlib.suppress(OSError):
            if p.stat().st_ino in inodes:
                locked.append(p)
    return locked


def _open_no_link(path: str, flags: int, where: str) -> int:
    """``os.open`` with ``O_NOFOLLOW``: a session file that is a symbolic link is refused."""
    try:
        return os.open(path, flags, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidSessionIdError(f"{where} is a symbolic link; refusing to follow it") from None
        raise


# -- metadata.json: reading ---------------------------------------------------------------------


def _entry_from_file(uid: str, path: Path) -> dict[str, Any] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    size = file_size(path) or st.st_size
    return {"user_id": uid, "created_at": _iso(st.st_mtime), "last_active_at": _iso(st.st_mtime), "size": size}


def _rebuild(directory: Path) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    for uid, path in session_files(directory).items():
        entry = _entry_from_file(uid, path)
        if entry is not None:
            entries[uid] = entry
    return entries


def _session_entry(uid: str, entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """The session file's fields of an entry (``user_id, created_at, last_active_at, size``), if it has them."""
    created, active, size = entry.get("created_at"), entry.get("last_active_at"), entry.get("size")
    if isinstance(created, str) and isinstance(active, str) and isinstance(size, int) and not isinstance(size, bool):
        return {"user_id": uid, "created_at": created, "last_active_at": active, "size": size}
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` if the file does not exist.

    :raises SessionCorruptError: if it cannot be read as a JSON object (it is left as it is).
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SessionCorruptError(f"{path}: cannot read it ({type(exc).__name__}); not modified") from exc
    if not isinstance(data, dict):
        raise SessionCorruptError(f"{path}: not a JSON object; not modified")
    return data


def load_metadata(directory: Path, *, strict: bool = False, keep_aside: bool = False) -> dict[str, dict[str, Any]]:
    """metadata.json's entries; rebuilt from the session files if it is missing.

    :param strict: an unreadable file raises :class:`SessionCorruptError` (the manager's
        records are in it); otherwise it is rebuilt from the session files with a warning.
    :param keep_aside: move an unreadable file to ``metadata.json.{ns}.unreadable`` (before it is rewritten).
    """
    path = directory / METADATA_FILE
    try:
        data = _read_json(path)
    except SessionCorruptError as exc:
        if strict:
            raise
        if keep_aside:
            aside = directory / f"{METADATA_FILE}.{time.time_ns()}.unreadable"
            os.replace(path, aside)
            log.warning("%s; kept as %s and rebuilding it from the session files", exc, aside.name)
        else:
            log.warning("%s; rebuilding it from the session files", exc)
        return _rebuild(directory)
    if data is None:
        return _rebuild(directory)
    entries: dict[str, dict[str, Any]] = {}
    for uid, entry in data.items():
        if isinstance(entry, dict) and entry.get("user_id") == uid:
            entries[uid] = entry
        else:
            log.warning("%s: ignoring a malformed entry", path)
    return entries


def read_metadata(sessions_dir: str | os.PathLike[str], bot_id: str) -> dict[str, dict[str, Any]]:
    """The session files' entries of ``{sessions_dir}/{bot_id}/metadata.json``: ``{user_id: entry}``.

    Each entry has ``user_id``, ``created_at`` and ``last_active_at`` (ISO-8601, UTC)
    and ``size`` (bytes of the session file and its write-ahead log). If the file is
    missing or unreadable, the entries are rebuilt from the ``.session`` files
    (a warning is logged when it was unreadable); nothing is written here.

    :param sessions_dir: the directory that holds a folder per bot.
    :param bot_id: the bot.
    """
    _, directory = bot_dir(sessions_dir, bot_id)
    found = {uid: _session_entry(uid, e) for uid, e in load_metadata(directory).items()}
    return {uid: e for uid, e in found.items() if e is not None}


def list_sqlite_sessions(sessions_dir: str | os.PathLike[str], bot_id: str) -> list[dict[str, Any]]:
    """Every session file of ``bot_id``, with its metadata, sorted by ``user_id``.

    The files decide what exists: an entry whose file is gone is left out, a file
    without an entry gets one from the file's modification time, and ``size`` is
    measured now.

    :param sessions_dir: the directory that holds a folder per bot.
    :param bot_id: the bot.
    """
    _, directory = bot_dir(sessions_dir, bot_id)
    entries = read_metadata(sessions_dir, bot_id)
    result: list[dict[str, Any]] = []
    for uid, path in session_files(directory).items():
        size = file_size(path)
        entry = entries.get(uid) or _entry_from_file(uid, path)
        if size is None or entry is None:
            continue
        result.append({**entry, "size": size})
    return result


# -- metadata.json: writing ---------------------------------------------------------------------

_dir_locks: dict[str, threading.Lock] = {}
_dir_locks_guard = threading.Lock()


def _dir_lock(directory: Path) -> threading.Lock:
    with _dir_locks_guard:
        lock = _dir_locks.get(str(directory))
        if lock is None:
            lock = _dir_locks[str(directory)] = threading.Lock()
        return lock


@contextlib.contextmanager
def _metadata_lock(directory: Path) -> Iterator[None]:
    """This directory's metadata writers, serialised: a thread lock (this process), an ``flock`` (others)."""
    flock = require_flock()
    with _dir_lock(directory):
        fd = os.open(directory / METADATA_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            flock.flock(fd, flock.LOCK_EX)
            for name in os.listdir(directory):  # temp files left by a writer that was killed
                if name.startswith(_TMP_PREFIX) and name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        os.unlink(directory / name)
            yield
        finally:
            os.close(fd)  # releases the flock


def _write_file(directory: Path, entries: Mapping[str, Any]) -> None:
    """Replace metadata.json atomically: temp file in the same directory, fsync, rename, fsync dir."""
    tmp = directory / f"{_TMP_PREFIX}{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entries, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / METADATA_FILE)
    except BaseException:  # any failure, interrupts too: no temp file left behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def _latest_iso(a: object, b: object) -> object:
    pa, pb = parse_iso(a), parse_iso(b)
    if pa is None:
        return b if pb is not None else a
    return b if pb is not None and pb > pa else a


def _fold(entries: dict[str, dict[str, Any]], uid: str, path: Path) -> bool:
    """Fold the old ``user_{uid}.meta.json`` into ``entries[uid]``; ``False`` if there is none.

    Its fields replace the entry's (every writer folds before it changes an entry, so
    the old file is never older than what it folds into), except ``last_active_at``:
    the later of both.

    :raises SessionCorruptError: if the old file cannot be read (it is left as it is).
    """
    data = _read_json(path)
    if data is None:
        return False
    entry = entries.get(uid) or {}
    active = _latest_iso(entry.get("last_active_at"), data.get("last_active_at"))
    folded = {k: v for k, v in data.items() if k not in SESSION_FIELDS}
    entry.update(folded, user_id=uid)
    entry.setdefault("registered_at", None)
    entry.setdefault("logged_in", False)
    if active is not None:
        entry["last_active_at"] = active
    entries[uid] = entry
    return True


def update_metadata(
    directory: Path, changes: Mapping[str, Change], *, strict: bool = False
) -> dict[str, dict[str, Any] | None]:
    """Change users' entries in metadata.json in one atomic write; the new entries.

    Each user's old ``user_{id}.meta.json`` is folded in first and removed once
    metadata.json is written. Nothing is written if nothing changed.

    :param strict: raise :class:`SessionCorruptError` for an unreadable metadata.json
        instead of keeping it aside as ``metadata.json.{ns}.unreadable`` and rebuilding it.
    :raises SessionCorruptError: if an old per-user file cannot be read (nothing is written).
    """
    with _metadata_lock(directory):
        entries = load_metadata(directory, strict=strict, keep_aside=True)
        folded = [legacy_path(directory, uid) for uid in changes if _fold(entries, uid, legacy_path(directory, uid))]
        changed = bool(folded) or not (directory / METADATA_FILE).exists()
        after: dict[str, dict[str, Any] | None] = {}
        for uid, change in changes.items():
            old = entries.pop(uid, None)
            new = after[uid] = change(copy.deepcopy(old))
            if new is not None:
                entries[uid] = new
            changed = changed or new != old
        if changed:
            _write_file(directory, entries)
        for path in folded:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return after


def keep(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """The :data:`Change` that changes nothing (only folds)."""
    return entry


def record_session(directory: Path, user_id: str, path: Path) -> None:
    """Refresh the session file's fields of ``user_id``'s entry: its size, and now as ``last_active_at``."""

    def change(entry: dict[str, Any] | None) -> dict[str, Any] | None:
        size = file_size(path)
        if size is None:
            return _without_session(entry)
        now = now_iso()
        entry = entry or {}
        created = entry.get("created_at")
        created = created if isinstance(created, str) else now
        entry.update(user_id=user_id, created_at=created, last_active_at=now, size=size)
        return entry

    update_metadata(directory, {user_id: change})


def _without_session(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """The entry without its session file's fields; gone unless the manager registered the user."""
    if not registered(entry):
        return None
    assert entry is not None
    for name in SESSION_FIELDS:
        entry.pop(name, None)
    return entry


def forget_session(directory: Path, user_id: str) -> None:
    """The session file is gone: drop its fields from the entry (the manager's stay)."""
    update_metadata(directory, {user_id: _without_session})


def remove_user(directory: Path, user_id: str) -> bool:
    """Remove the user's entry and old per-user file (without reading it); whether the user was registered."""
    with _metadata_lock(directory):
        try:
            os.unlink(legacy_path(directory, user_id))  # first: a crash must not leave it to come back
            existed = True
        except FileNotFoundError:
            existed = False
        entries = load_metadata(directory, strict=True)
        entry = entries.pop(user_id, None)
        if entry is not None:
            _write_file(directory, entries)
    return registered(entry) or existed
