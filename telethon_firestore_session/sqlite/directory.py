"""Users of one bot on disk: the manager's directory of ``{sessions_dir}/{bot_id}/``."""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from telethon_firestore_session.errors import (
    ConfigError,
    InvalidSessionIdError,
    SessionCorruptError,
    SessionInUseError,
    SessionStoreError,
    store_error,
)
from telethon_firestore_session.ids import SessionKey, validate_id
from telethon_firestore_session.manager.directory import (
    UNSET,
    ApiCredentials,
    Counts,
    InactiveUser,
    SessionDirectory,
    UserRecord,
)

if TYPE_CHECKING:
    from telethon_firestore_session.core import SessionCore
    from telethon_firestore_session.crypto import SessionCipher

_UTC = datetime.timezone.utc


def _now() -> datetime.datetime:
    return datetime.datetime.now(_UTC)


log = logging.getLogger("telethon_firestore_session.directory")


_META_SUFFIX = ".meta.json"
_META_FILE = re.compile(r"^user_(.+)\.meta\.json$")
_SESSION_FILE = re.compile(r"^user_(.+)\.session$")
_SEALED = "sealed"


def _iso(value: datetime.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_iso(value: object) -> datetime.datetime | None:
    if isinstance(value, datetime.datetime):
        return value
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=_UTC)


def _latest(*values: datetime.datetime | None) -> datetime.datetime | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _to_json(value: Any) -> Any:
    """Metadata values as JSON: datetimes as ISO strings, sealed bytes as ``{"sealed": base64}``."""
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return {_SEALED: base64.b64encode(bytes(value)).decode("ascii")}
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_SEALED} and isinstance(value[_SEALED], str):
            try:
                return base64.b64decode(value[_SEALED], validate=True)
            except (binascii.Error, ValueError):
                return value
        return {k: _from_json(v) for k, v in value.items()}
    return value


class SQLiteDirectory(SessionDirectory):
    """Users of one bot on disk, in ``{sessions_dir}/{bot_id}/``.

    A user exists when ``user_{id}.session`` or ``user_{id}.meta.json`` does.
    ``last_active_at`` is the latest of the session's ``metadata.json`` entry
    (maintained by :class:`~telethon_firestore_session.sqlite.ScopedSQLiteSession`)
    and the meta file's own (written when the manager opens or closes the session).
    Meta files are replaced atomically (temporary file, fsync, rename).

    :param cipher: seals the per-user metadata's secrets and, in the sessions, the auth key.
    :param encrypt_pii: the sessions also seal entity usernames, phones and names (needs ``cipher``).
    """

    backend = "sqlite"

    def __init__(
        self,
        sessions_dir: str | os.PathLike[str],
        bot_id: str,
        *,
        cipher: SessionCipher | None = None,
        encrypt_pii: bool = False,
    ) -> None:
        from .store import session_path

        if encrypt_pii and cipher is None:
            raise ConfigError("encrypt_pii", "needs a cipher (SESSION_ENCRYPTION_KEY) to seal entity fields")
        super().__init__(bot_id, cipher=cipher)
        self.encrypt_pii = encrypt_pii
        self.sessions_dir = Path(sessions_dir)
        # session_path validates the ids and refuses a bot directory outside sessions_dir.
        self.bot_dir = session_path(self.sessions_dir, SessionKey(self.bot_id, "probe")).parent
        self.where = f"sqlite:{self.bot_dir}"
        self._lock = threading.Lock()

    # -- files ---------------------------------------------------------------------------------

    def _session_path(self, user_id: str) -> Path:
        from .store import session_path

        return session_path(self.sessions_dir, self.key(user_id))

    def _meta_path(self, user_id: str) -> Path:
        validate_id("user_id", user_id)
        return self.bot_dir / f"user_{user_id}{_META_SUFFIX}"

    def _ensure_dir(self) -> None:
        missing: list[Path] = []
        p = self.bot_dir
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(d, 0o700)
                os.chmod(d, 0o700)

    def _read_meta(self, user_id: str) -> dict[str, Any] | None:
        path = self._meta_path(user_id)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise SessionCorruptError(f"{path}: cannot read it ({type(exc).__name__}); not modified") from exc
        if not isinstance(data, dict):
            raise SessionCorruptError(f"{path}: not a JSON object; not modified")
        return dict(_from_json(data))

    def _write_meta(self, user_id: str, data: dict[str, Any]) -> None:
        self._ensure_dir()
        path = self._meta_path(user_id)
        tmp = self.bot_dir / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(_to_json(data), f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _user_ids(self) -> set[str]:
        try:
            names = os.listdir(self.bot_dir)
        except FileNotFoundError:
            return set()
        ids: set[str] = set()
        for name in names:
            m = _SESSION_FILE.match(name) or _META_FILE.match(name)
            if m is None:
                continue
            try:
                ids.add(validate_id("user_id", m.group(1)))
            except InvalidSessionIdError:
                continue
        return ids

    def _file_activity(self) -> dict[str, datetime.datetime | None]:
        from .store import read_metadata

        try:
            entries = read_metadata(self.sessions_dir, self.bot_id)
        except FileNotFoundError:
            return {}
        return {uid: _parse_iso(entry.get("last_active_at")) for uid, entry in entries.items()}

    def _wrap(self, what: str, func: Any, *args: Any) -> Any:
        try:
            return func(*args)
        except (SessionStoreError, SessionInUseError, InvalidSessionIdError):
            raise
        except OSError as exc:
            raise store_error(what, self.where, exc) from exc

    # -- the interface -----------------------------------------------------------------------

    def open_session(self, user_id: str, *, flush_interval: float, close_timeout: float) -> SessionCore:
        from .store import ScopedSQLiteSession

        return ScopedSQLiteSession(
            user_id,
            bot_id=self.bot_id,
            sessions_dir=self.sessions_dir,
            cipher=self.cipher,
            encrypt_pii=self.encrypt_pii,
            flush_interval=flush_interval,
            close_timeout=close_timeout,
        )

    def register(self, user_id: str, credentials: ApiCredentials | None) -> bool:
        def run() -> bool:
            with self._lock:
                meta = self._read_meta(user_id)
                exists = meta is not None or self._session_path(user_id).exists()
                if exists and credentials is None:
                    return False
                now = _now()
                if meta is None:
                    meta = {"user_id": user_id, "registered_at": now, "last_active_at": now, "logged_in": False}
                if credentials is not None:
                    meta["api_credentials"] = self._credentials_value(user_id, credentials)
                self._write_meta(user_id, meta)
                return not exists

        result: bool = self._wrap("register in", run)
        return result

    def _record(
        self,
        user_id: str,
        meta: dict[str, Any] | None,
        file_active: datetime.datetime | None,
        *,
        full: bool,
        has_file: bool | None = None,
    ) -> UserRecord:
        meta = meta or {}
        pending = meta.get("pending_login")
        creds = meta.get("api_credentials")
        return UserRecord(
            user_id=user_id,
            registered_at=_parse_iso(meta.get("registered_at")),
            last_active_at=_latest(_parse_iso(meta.get("last_active_at")), file_active),
            logged_in=meta.get("logged_in") is True,
            login_pending=isinstance(pending, dict),
            custom_api=isinstance(creds, dict),
            # Without a session file there is no auth key; with one, only opening it tells.
            has_auth_key=False if has_file is False else None,
            lease=None,
            api_credentials=self._credentials(user_id, creds) if full else None,
            pending_login=self._pending(user_id, pending, _parse_iso) if full else None,
        )

    def get_user(self, user_id: str) -> UserRecord | None:
        def run() -> UserRecord | None:
            meta = self._read_meta(user_id)
            has_file = self._session_path(user_id).exists()
            if meta is None and not has_file:
                return None
            return self._record(user_id, meta, self._file_activity().get(user_id), full=True, has_file=has_file)

        result: UserRecord | None = self._wrap("read", run)
        return result

    def update_user(self, user_id: str, *, pending_login: Any = UNSET, logged_in: Any = UNSET) -> bool:
        def run() -> bool:
            with self._lock:
                meta = self._read_meta(user_id)
                if meta is None:
                    if not self._session_path(user_id).exists():
                        return False
                    meta = {"user_id": user_id, "registered_at": None, "logged_in": False}
                if pending_login is not UNSET:
                    if pending_login is None:
                        meta.pop("pending_login", None)
                    else:
                        meta["pending_login"] = self._pending_value(user_id, pending_login)
                if logged_in is not UNSET:
                    meta["logged_in"] = bool(logged_in)
                    if logged_in:
                        meta["logged_in_at"] = _now()
                    else:
                        meta.pop("logged_in_at", None)
                self._write_meta(user_id, meta)
                return True

        result: bool = self._wrap("update", run)
        return result

    def touch(self, user_id: str) -> None:
        def run() -> None:
            with self._lock:
                meta = self._read_meta(user_id)
                if meta is None:
                    if not self._session_path(user_id).exists():
                        return  # deleted meanwhile: do not bring it back
                    meta = {"user_id": user_id, "registered_at": None, "logged_in": False}
                meta["last_active_at"] = _now()
                self._write_meta(user_id, meta)

        self._wrap("update", run)

    def list_users(self) -> list[UserRecord]:
        def run() -> list[UserRecord]:
            activity = self._file_activity()
            return [
                self._record(uid, self._read_meta(uid), activity.get(uid), full=False)
                for uid in sorted(self._user_ids())
            ]

        result: list[UserRecord] = self._wrap("list", run)
        return result

    def counts(self) -> Counts:
        users = self.list_users()
        return Counts(len(users), sum(1 for u in users if u.logged_in), None)

    def find_inactive(self, cutoff: datetime.datetime) -> list[InactiveUser]:
        found: list[InactiveUser] = []
        for user in self.list_users():
            last = _latest(user.last_active_at, user.registered_at)
            if last is None or last < cutoff:
                found.append(InactiveUser(user.user_id, user.last_active_at))
        return found

    def delete_inactive(self, users: Sequence[InactiveUser]) -> list[str]:
        deleted: list[str] = []
        for user in users:
            try:
                if self.delete_user(user.user_id):
                    deleted.append(user.user_id)
            except SessionInUseError:
                log.info("cleanup: %s/%s is in use by another process; skipped", self.bot_id, user.user_id)
        return deleted

    def delete_user(self, user_id: str) -> bool:
        from .store import SQLiteStore

        def run() -> bool:
            existed = False
            path = self._session_path(user_id)
            if path.exists():
                existed = True
                # Takes the file lock first: a session open elsewhere raises SessionInUseError.
                SQLiteStore(self.key(user_id), self.sessions_dir).delete()
            with self._lock:
                try:
                    os.unlink(self._meta_path(user_id))
                    existed = True
                except FileNotFoundError:
                    pass
            return existed

        result: bool = self._wrap("delete", run)
        return result

    def ping(self, timeout: float) -> None:
        # Write, fsync and remove a probe file: catches a missing, read-only or full disk.
        deadline = time.monotonic() + timeout
        self._ensure_dir()
        probe = self.bot_dir / f".probe.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{self.where} took longer than {timeout:.1f}s")
