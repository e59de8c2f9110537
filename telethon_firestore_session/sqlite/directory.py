"""Users of one bot on disk: the manager's directory of ``{sessions_dir}/{bot_id}/``."""

from __future__ import annotations

import base64
import binascii
import datetime
import logging
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from telethon_firestore_session.errors import ConfigError, SessionInUseError, wrap_store_errors
from telethon_firestore_session.manager.directory import (
    UNSET,
    ApiCredentials,
    Counts,
    InactiveUser,
    SessionDirectory,
    UserRecord,
)

from . import files
from .session import ScopedSQLiteSession
from .store import SQLiteStore

if TYPE_CHECKING:
    from telethon_firestore_session.core import SessionCore
    from telethon_firestore_session.crypto import SessionCipher
    from telethon_firestore_session.firestore.lease import FirestoreLease

__all__ = ["SQLiteDirectory"]

log = logging.getLogger(__name__)

_SEALED = "sealed"


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


def _as_user(entry: dict[str, Any] | None, user_id: str) -> dict[str, Any]:
    """``entry`` as the manager's record of the user (a session file's entry gains the manager's fields)."""
    entry = entry or {"user_id": user_id}
    entry.setdefault("registered_at", None)
    entry.setdefault("logged_in", False)
    return entry


class SQLiteDirectory(SessionDirectory):
    """Users of one bot on disk, in ``{sessions_dir}/{bot_id}/``.

    A user exists when ``user_{id}.session`` exists or the manager registered it.
    Its record is the user's entry in ``metadata.json``, shared with the session
    store (see :mod:`telethon_firestore_session.sqlite.files`): one
    ``last_active_at``, bumped by the session's writes and by the manager. An old
    ``user_{id}.meta.json`` is folded into it the first time the user is read or
    written (a listing folds every one).

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
        if encrypt_pii and cipher is None:
            raise ConfigError("encrypt_pii", "needs a cipher (SESSION_ENCRYPTION_KEY) to seal entity fields")
        super().__init__(bot_id, cipher=cipher)
        self.encrypt_pii = encrypt_pii
        self.sessions_dir = Path(sessions_dir)
        # Validates the bot id and refuses a bot directory outside sessions_dir.
        _, self.bot_dir = files.bot_dir(self.sessions_dir, self.bot_id)
        self.where = f"sqlite:{self.bot_dir}"

    # -- records -----------------------------------------------------------------------------

    def _session_path(self, user_id: str) -> Path:
        return files.session_path(self.sessions_dir, self.key(user_id))

    def _change(self, user_id: str, change: files.Change) -> dict[str, Any] | None:
        files.make_private_dirs(self.bot_dir)
        return files.update_metadata(self.bot_dir, {user_id: change}, strict=True)[user_id]

    def _entry(self, user_id: str) -> dict[str, Any] | None:
        """The user's entry in metadata.json, with an old per-user file folded in first."""
        if files.legacy_path(self.bot_dir, user_id).exists():
            return self._change(user_id, files.keep)
        return files.load_metadata(self.bot_dir, strict=True).get(user_id)

    def _entries(self) -> tuple[dict[str, dict[str, Any]], dict[str, files.UserFiles]]:
        """Every entry and every user's files, with all old per-user files folded in first."""
        found = files.user_files(self.bot_dir)
        legacy = {uid: files.keep for uid, f in found.items() if f.legacy is not None}
        if legacy:
            files.update_metadata(self.bot_dir, legacy, strict=True)
        return files.load_metadata(self.bot_dir, strict=True), found

    def _record(self, user_id: str, entry: dict[str, Any] | None, *, full: bool, has_file: bool | None) -> UserRecord:
        meta = _from_json(entry or {})
        pending = meta.get("pending_login")
        creds = meta.get("api_credentials")
        return UserRecord(
            user_id=user_id,
            registered_at=files.parse_iso(meta.get("registered_at")),
            last_active_at=files.parse_iso(meta.get("last_active_at")),
            logged_in=meta.get("logged_in") is True,
            login_pending=isinstance(pending, dict),
            custom_api=isinstance(creds, dict),
            # Without a session file there is no auth key; with one, only opening it tells.
            has_auth_key=False if has_file is False else None,
            lease=None,
            api_credentials=self._credentials(user_id, creds) if full else None,
            pending_login=self._pending(user_id, pending, files.parse_iso) if full else None,
        )

    # -- the interface -----------------------------------------------------------------------

    def open_session(
        self,
        user_id: str,
        *,
        flush_interval: float,
        close_timeout: float,
        state_flush_interval: float = 60.0,
        lease: FirestoreLease | None = None,
    ) -> SessionCore:
        return ScopedSQLiteSession(
            user_id,
            bot_id=self.bot_id,
            sessions_dir=self.sessions_dir,
            cipher=self.cipher,
            encrypt_pii=self.encrypt_pii,
            flush_interval=flush_interval,
            state_flush_interval=state_flush_interval,
            close_timeout=close_timeout,
        )

    def bot_lease(self, session: SessionCore) -> FirestoreLease | None:
        """``None``: the bot's session file is locked while it is open."""
        if not (isinstance(session, ScopedSQLiteSession) and session.path == self.bot_dir / "bot.session"):
            raise ConfigError("session", f"is not the bot's own session of {self.bot_id} (use create_bot_session())")
        return None

    def register(self, user_id: str, credentials: ApiCredentials | None) -> bool:
        created = False

        def change(entry: dict[str, Any] | None) -> dict[str, Any] | None:
            nonlocal created
            exists = files.registered(entry) or self._session_path(user_id).exists()
            if exists and credentials is None:
                return entry
            if not files.registered(entry):
                now = files.now_iso()
                entry = _as_user(entry, user_id)
                entry.update(registered_at=now, last_active_at=now)
            entry = _as_user(entry, user_id)
            if credentials is not None:
                entry["api_credentials"] = _to_json(self._credentials_value(user_id, credentials))
            created = not exists
            return entry

        with wrap_store_errors("register in", self.where, catch=OSError):
            self._change(user_id, change)
        return created

    def get_user(self, user_id: str) -> UserRecord | None:
        with wrap_store_errors("read", self.where, catch=OSError):
            entry = self._entry(user_id)
            has_file = self._session_path(user_id).exists()
        if not files.registered(entry) and not has_file:
            return None
        return self._record(user_id, entry, full=True, has_file=has_file)

    def _change_user(self, user_id: str, what: str, update: Any) -> bool:
        """Apply ``update(entry)`` to a user that exists; ``False`` (nothing written) if it does not."""
        found = False

        def change(entry: dict[str, Any] | None) -> dict[str, Any] | None:
            nonlocal found
            found = files.registered(entry) or self._session_path(user_id).exists()
            if not found:
                return entry  # deleted meanwhile: do not bring it back
            entry = _as_user(entry, user_id)
            update(entry)
            return entry

        with wrap_store_errors(what, self.where, catch=OSError):
            self._change(user_id, change)
        return found

    def update_user(self, user_id: str, *, pending_login: Any = UNSET, logged_in: Any = UNSET) -> bool:
        def update(entry: dict[str, Any]) -> None:
            if pending_login is not UNSET:
                if pending_login is None:
                    entry.pop("pending_login", None)
                else:
                    entry["pending_login"] = _to_json(self._pending_value(user_id, pending_login))
            if logged_in is not UNSET:
                entry["logged_in"] = bool(logged_in)
                if logged_in:
                    entry["logged_in_at"] = files.now_iso()
                else:
                    entry.pop("logged_in_at", None)

        return self._change_user(user_id, "update", update)

    def touch(self, user_id: str) -> None:
        self._change_user(user_id, "update", lambda entry: entry.update(last_active_at=files.now_iso()))

    def list_users(self) -> list[UserRecord]:
        with wrap_store_errors("list", self.where, catch=OSError):
            entries, found = self._entries()
        users = {uid for uid, f in found.items() if f.session is not None}
        users |= {uid for uid, entry in entries.items() if files.registered(entry)}
        return [self._record(uid, entries.get(uid), full=False, has_file=None) for uid in sorted(users)]

    def counts(self) -> Counts:
        users = self.list_users()
        return Counts(len(users), sum(1 for u in users if u.logged_in), None)

    def find_inactive(self, cutoff: datetime.datetime) -> list[InactiveUser]:
        found: list[InactiveUser] = []
        for user in self.list_users():
            times = [t for t in (user.last_active_at, user.registered_at) if t is not None]
            if not times or max(times) < cutoff:
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
        with wrap_store_errors("delete", self.where, catch=OSError):
            existed = False
            if self._session_path(user_id).exists():
                existed = True
                # Takes the file lock first: a session open elsewhere raises SessionInUseError.
                SQLiteStore(self.key(user_id), self.sessions_dir).delete()
            if self.bot_dir.exists():
                existed = files.remove_user(self.bot_dir, user_id) or existed
        return existed

    def ping(self, timeout: float) -> None:
        # Write, fsync and remove a probe file: catches a missing, read-only or full disk.
        deadline = time.monotonic() + timeout
        with wrap_store_errors("write to", self.where, catch=OSError):
            files.make_private_dirs(self.bot_dir)
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
