"""Where the user session manager finds its users: listing and per-user metadata.

:class:`SessionDirectory` is the small interface that
:class:`~telethon_firestore_session.manager.UserSessionManager` uses besides the
sessions themselves; the manager never calls Firestore or SQLite directly.
Every method is blocking (the manager calls them through ``asyncio.to_thread``)
and raises :class:`~telethon_firestore_session.errors.SessionStoreError` when
the backend fails.

Per-user metadata kept next to each session:

* ``registered_at``, ``last_active_at``, ``logged_in`` (and ``logged_in_at``);
* ``api_credentials``: the user's own ``api_id``/``api_hash``, optional; the hash
  is sealed when a cipher is configured;
* ``pending_login``: phone, phone-code hash, expiry and whether the 2FA password
  is awaited, so that a restart or another instance can finish a login; the
  phone and the hash are sealed when a cipher is configured.

Two implementations:

* :class:`FirestoreDirectory` keeps the metadata as fields of the session document
  ``bots/{bot_id}/user_sessions/{user_id}`` (next to the auth key and the
  ``lease``). Counting uses aggregation queries, finding inactive sessions a query on
  ``last_active_at``; neither reads every document.
* :class:`SQLiteDirectory` keeps it in ``{sessions_dir}/{bot_id}/user_{user_id}.meta.json``
  (written atomically, mode 0600) beside the session file and ``metadata.json``;
  the session files themselves decide which users exist.
"""

from __future__ import annotations

import abc
import base64
import binascii
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ._ids import SessionKey, validate_id
from ._lease import FirestoreLease, LeaseInfo, parse_lease
from .crypto import open_sealed_text
from .errors import (
    ConfigError,
    InvalidSessionIdError,
    SessionCorruptError,
    SessionInUseError,
    SessionStoreError,
)

if TYPE_CHECKING:
    from google.cloud import firestore

    from ._core import SessionCore
    from .crypto import SessionCipher

__all__ = [
    "ApiCredentials",
    "Counts",
    "FirestoreDirectory",
    "InactiveUser",
    "PendingLogin",
    "SQLiteDirectory",
    "SessionDirectory",
    "UserRecord",
]

log = logging.getLogger("telethon_firestore_session.directory")

_UTC = datetime.timezone.utc
#: Firestore accepts at most 500 writes in one commit.
_MAX_WRITES = 500
#: Threads listing subcollections during cleanup (each listing is one small query).
_LIST_WORKERS = 8


def _now() -> datetime.datetime:
    return datetime.datetime.now(_UTC)


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: "Leave this field as it is" in :meth:`SessionDirectory.update_user`.
UNSET: Any = _Unset()


@dataclasses.dataclass(frozen=True)
class ApiCredentials:
    """A user's own Telegram API credentials. ``repr`` hides the hash."""

    api_id: int
    api_hash: str = dataclasses.field(repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.api_id, bool) or not isinstance(self.api_id, int) or self.api_id <= 0:
            raise ValueError("api_id must be a positive integer")
        if not isinstance(self.api_hash, str) or not self.api_hash:
            raise ValueError("api_hash must be a non-empty string")


@dataclasses.dataclass(frozen=True)
class PendingLogin:
    """A login waiting for its code (or, after the code, for the 2FA password).

    ``repr`` hides the phone number and the phone-code hash.
    """

    phone: str = dataclasses.field(repr=False)
    phone_code_hash: str = dataclasses.field(repr=False)
    sent_at: datetime.datetime
    expires_at: datetime.datetime
    password_needed: bool = False

    def expired(self, now: datetime.datetime | None = None) -> bool:
        return (now or _now()) >= self.expires_at


@dataclasses.dataclass(frozen=True)
class UserRecord:
    """What the directory knows about one user (never the auth key itself).

    ``api_credentials`` and ``pending_login`` are only filled in by
    :meth:`SessionDirectory.get_user`; listings say only whether they exist.
    ``has_auth_key`` is ``None`` when the backend cannot tell without opening the session.
    """

    user_id: str
    registered_at: datetime.datetime | None
    last_active_at: datetime.datetime | None
    logged_in: bool
    login_pending: bool
    custom_api: bool
    has_auth_key: bool | None = None
    lease: LeaseInfo | None = None
    api_credentials: ApiCredentials | None = None
    pending_login: PendingLogin | None = None


@dataclasses.dataclass(frozen=True)
class Counts:
    """Session counts of one bot. ``leased`` is ``None`` where sessions have no leases."""

    total: int
    logged_in: int
    leased: int | None


@dataclasses.dataclass(frozen=True)
class InactiveUser:
    """A cleanup candidate. ``version`` lets the deletion skip a session used since it was found."""

    user_id: str
    last_active_at: datetime.datetime | None
    version: Any = None


class SessionDirectory(abc.ABC):
    """Listing and per-user metadata of one bot's sessions, for one backend.

    All methods block; the manager calls them through ``asyncio.to_thread``.
    """

    #: ``"firestore"`` or ``"sqlite"``.
    backend: ClassVar[str]
    #: Whether :meth:`new_lease` returns leases (that someone must renew).
    uses_leases: ClassVar[bool] = False

    def __init__(self, bot_id: str, *, cipher: SessionCipher | None = None) -> None:
        self.bot_id = validate_id("bot_id", bot_id)
        self.cipher = cipher
        #: Human-readable location (no secrets), for logs and ``health_check()``.
        self.where = "?"

    def key(self, user_id: str) -> SessionKey:
        return SessionKey(self.bot_id, user_id)

    # -- sealing secret metadata -----------------------------------------------------------

    def _seal(self, user_id: str, field: str, value: str) -> bytes | str:
        if self.cipher is None:
            return value
        return self.cipher.seal_text(value, where=str(self.key(user_id)), field=field)

    def _open(self, user_id: str, field: str, value: object) -> str:
        if isinstance(value, str):
            return value  # written before encryption was turned on
        if not isinstance(value, (bytes, bytearray)):
            raise SessionCorruptError(f"{self.where}/{user_id}: {field} has the wrong type; not modified")
        where = str(self.key(user_id))
        return open_sealed_text(self.cipher, bytes(value), where=where, context=where, field=field)

    def _credentials_value(self, user_id: str, creds: ApiCredentials) -> dict[str, Any]:
        return {"api_id": creds.api_id, "api_hash": self._seal(user_id, "api_credentials.api_hash", creds.api_hash)}

    def _credentials(self, user_id: str, value: object) -> ApiCredentials | None:
        if not isinstance(value, dict):
            return None
        api_id = value.get("api_id")
        if not isinstance(api_id, int) or isinstance(api_id, bool):
            raise SessionCorruptError(f"{self.where}/{user_id}: api_credentials.api_id is not an integer")
        return ApiCredentials(api_id, self._open(user_id, "api_credentials.api_hash", value.get("api_hash")))

    def _pending_value(self, user_id: str, pending: PendingLogin) -> dict[str, Any]:
        return {
            "phone": self._seal(user_id, "pending_login.phone", pending.phone),
            "phone_code_hash": self._seal(user_id, "pending_login.phone_code_hash", pending.phone_code_hash),
            "sent_at": pending.sent_at,
            "expires_at": pending.expires_at,
            "password_needed": pending.password_needed,
        }

    def _pending(self, user_id: str, value: object, parse_time: Any) -> PendingLogin | None:
        if not isinstance(value, dict):
            return None
        sent = parse_time(value.get("sent_at"))
        expires = parse_time(value.get("expires_at"))
        if sent is None or expires is None:
            raise SessionCorruptError(f"{self.where}/{user_id}: pending_login has no sent_at/expires_at")
        return PendingLogin(
            phone=self._open(user_id, "pending_login.phone", value.get("phone")),
            phone_code_hash=self._open(user_id, "pending_login.phone_code_hash", value.get("phone_code_hash")),
            sent_at=sent,
            expires_at=expires,
            password_needed=bool(value.get("password_needed")),
        )

    # -- the interface -----------------------------------------------------------------------

    @abc.abstractmethod
    def open_session(self, user_id: str, *, flush_interval: float, close_timeout: float) -> SessionCore:
        """Open (load) the user's Telethon session. May create an empty one.

        :raises SessionInUseError: a local file lock is held elsewhere.
        """

    def new_lease(self, user_id: str, *, holder: str, ttl: float) -> FirestoreLease | None:
        """The lease guarding the user's session, or ``None`` where a file lock does that."""
        return None

    @abc.abstractmethod
    def register(self, user_id: str, credentials: ApiCredentials | None) -> bool:
        """Register the user; ``True`` if new. Credentials given for a known user replace theirs."""

    @abc.abstractmethod
    def get_user(self, user_id: str) -> UserRecord | None:
        """The user's record with credentials and pending login opened, or ``None`` if unknown."""

    @abc.abstractmethod
    def update_user(self, user_id: str, *, pending_login: Any = UNSET, logged_in: Any = UNSET) -> bool:
        """Set ``pending_login`` (a :class:`PendingLogin` or ``None``) and/or ``logged_in``.

        Returns ``False`` if the user does not exist (nothing is created).
        """

    @abc.abstractmethod
    def touch(self, user_id: str) -> None:
        """Record that the user's session is in use now (``last_active_at``)."""

    @abc.abstractmethod
    def list_users(self) -> list[UserRecord]:
        """Every registered user, sorted by id (without credentials or pending-login secrets)."""

    @abc.abstractmethod
    def counts(self) -> Counts:
        """How many sessions there are, are logged in, and (Firestore) are leased now."""

    @abc.abstractmethod
    def find_inactive(self, cutoff: datetime.datetime) -> list[InactiveUser]:
        """Users whose last activity is before ``cutoff`` and that nobody holds now."""

    @abc.abstractmethod
    def delete_inactive(self, users: Sequence[InactiveUser]) -> list[str]:
        """Delete each of ``users`` unless it was used since it was found; the ids deleted."""

    @abc.abstractmethod
    def delete_user(self, user_id: str) -> bool:
        """Remove every record of the user; ``False`` if there was none.

        :raises SessionInUseError: the session is held by another process.
        """

    @abc.abstractmethod
    def ping(self, timeout: float) -> None:
        """One small round trip to the backend, bounded by ``timeout``; raises on failure."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (a Firestore client the directory created)."""


# -- Firestore ---------------------------------------------------------------------------------


def _fs_time(value: object) -> datetime.datetime | None:
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=_UTC)
    return None


def _store_error(where: str, what: str, exc: BaseException) -> SessionStoreError:
    return SessionStoreError(f"cannot {what} {where}: {type(exc).__name__}: {exc}")


class FirestoreDirectory(SessionDirectory):
    """Users of one bot in Firestore: the documents of ``bots/{bot_id}/user_sessions``.

    :param client: the ``google.cloud.firestore.Client`` the sessions use.
    :param owns_client: close ``client`` in :meth:`close` (set when the directory built it).
    :param rpc_timeout: deadline of each Firestore call (with retries inside it).
    """

    backend = "firestore"
    uses_leases = True

    #: Fields read for listings and cleanup (never the auth key).
    _LIST_FIELDS = (
        "registered_at",
        "created_at",
        "last_active_at",
        "logged_in",
        "pending_login.expires_at",
        "api_credentials.api_id",
        "lease",
    )

    def __init__(
        self,
        client: firestore.Client,
        bot_id: str,
        *,
        cipher: SessionCipher | None = None,
        encrypt_pii: bool = False,
        rpc_timeout: float = 10.0,
        owns_client: bool = False,
    ) -> None:
        super().__init__(bot_id, cipher=cipher)
        self.client = client
        self.encrypt_pii = encrypt_pii
        self.rpc_timeout = rpc_timeout
        self.owns_client = owns_client
        self.collection = client.collection("bots").document(self.bot_id).collection("user_sessions")
        self.where = f"firestore:bots/{self.bot_id}/user_sessions"

    def _retry(self, timeout: float | None = None) -> Any:
        from google.api_core import retry as retries

        return retries.Retry(initial=0.1, maximum=2.0, multiplier=2.0, timeout=timeout or self.rpc_timeout)

    def _kw(self) -> dict[str, Any]:
        return {"retry": self._retry(), "timeout": self.rpc_timeout}

    def _doc(self, user_id: str) -> firestore.DocumentReference:
        from .firestore import session_document

        return session_document(self.client, self.key(user_id))

    def open_session(self, user_id: str, *, flush_interval: float, close_timeout: float) -> SessionCore:
        from .firestore import FirestoreSession

        return FirestoreSession(
            user_id,
            bot_id=self.bot_id,
            client=self.client,
            flush_interval=flush_interval,
            close_timeout=close_timeout,
            rpc_timeout=self.rpc_timeout,
            cipher=self.cipher,
            encrypt_pii=self.encrypt_pii,
        )

    def new_lease(self, user_id: str, *, holder: str, ttl: float) -> FirestoreLease:
        doc = self._doc(user_id)
        return FirestoreLease(
            doc,
            self.client,
            holder=holder,
            ttl=ttl,
            rpc_timeout=min(self.rpc_timeout, 5.0),
            where=f"firestore:{doc.path}",
        )

    def register(self, user_id: str, credentials: ApiCredentials | None) -> bool:
        from google.api_core.exceptions import Conflict

        from .firestore import SCHEMA_VERSION

        doc = self._doc(user_id)
        now = _now()
        data: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "created_at": now,
            "updated_at": now,
            "registered_at": now,
            "last_active_at": now,
            "logged_in": False,
        }
        if credentials is not None:
            data["api_credentials"] = self._credentials_value(user_id, credentials)
        try:
            doc.create(data, **self._kw())
            return True
        except Conflict:
            pass
        except Exception as exc:
            raise _store_error(f"firestore:{doc.path}", "register", exc) from exc
        if credentials is not None:
            try:
                doc.update({"api_credentials": data["api_credentials"], "updated_at": now}, **self._kw())
            except Exception as exc:
                raise _store_error(f"firestore:{doc.path}", "update", exc) from exc
        return False

    def _record(self, user_id: str, data: dict[str, Any], *, full: bool) -> UserRecord:
        pending = data.get("pending_login")
        creds = data.get("api_credentials")
        return UserRecord(
            user_id=user_id,
            registered_at=_fs_time(data.get("registered_at")) or _fs_time(data.get("created_at")),
            last_active_at=_fs_time(data.get("last_active_at")),
            logged_in=data.get("logged_in") is True,
            login_pending=isinstance(pending, dict),
            custom_api=isinstance(creds, dict),
            has_auth_key=data.get("auth_key") is not None if full else None,
            lease=parse_lease(data.get("lease")),
            api_credentials=self._credentials(user_id, creds) if full else None,
            pending_login=self._pending(user_id, pending, _fs_time) if full else None,
        )

    def get_user(self, user_id: str) -> UserRecord | None:
        doc = self._doc(user_id)
        try:
            snap = doc.get(**self._kw())
        except Exception as exc:
            raise _store_error(f"firestore:{doc.path}", "read", exc) from exc
        if not snap.exists:
            return None
        return self._record(user_id, snap.to_dict() or {}, full=True)

    def update_user(self, user_id: str, *, pending_login: Any = UNSET, logged_in: Any = UNSET) -> bool:
        from google.api_core.exceptions import NotFound
        from google.cloud import firestore

        now = _now()
        fields: dict[str, Any] = {"updated_at": now}
        if pending_login is not UNSET:
            fields["pending_login"] = (
                firestore.DELETE_FIELD if pending_login is None else self._pending_value(user_id, pending_login)
            )
        if logged_in is not UNSET:
            fields["logged_in"] = bool(logged_in)
            fields["logged_in_at"] = now if logged_in else firestore.DELETE_FIELD
        doc = self._doc(user_id)
        try:
            doc.update(fields, **self._kw())
        except NotFound:
            return False
        except Exception as exc:
            raise _store_error(f"firestore:{doc.path}", "update", exc) from exc
        return True

    def touch(self, user_id: str) -> None:
        """Nothing to do: taking and renewing the lease writes ``last_active_at``."""

    def _listed(self) -> Iterator[tuple[str, Any]]:
        for snap in self.collection.select(list(self._LIST_FIELDS)).stream(**self._kw()):
            try:
                uid = validate_id("user_id", snap.id)
            except InvalidSessionIdError:
                log.warning("%s: skipping document %r, whose id is not a valid user_id", self.where, snap.id)
                continue
            yield uid, snap

    def list_users(self) -> list[UserRecord]:
        try:
            records = [self._record(uid, snap.to_dict() or {}, full=False) for uid, snap in self._listed()]
        except Exception as exc:
            raise _store_error(self.where, "list", exc) from exc
        return sorted(records, key=lambda r: r.user_id)

    @staticmethod
    def _count(query: Any, **kw: Any) -> int:
        result = query.count(alias="n").get(**kw)
        return int(result[0][0].value)

    def counts(self) -> Counts:
        from google.cloud.firestore_v1.base_query import FieldFilter

        kw = self._kw()
        try:
            total = self._count(self.collection, **kw)
            logged_in = self._count(self.collection.where(filter=FieldFilter("logged_in", "==", True)), **kw)
            leased = self._count(self.collection.where(filter=FieldFilter("lease.expires_at", ">", _now())), **kw)
        except Exception as exc:
            raise _store_error(self.where, "count", exc) from exc
        return Counts(total, logged_in, leased)

    def find_inactive(self, cutoff: datetime.datetime) -> list[InactiveUser]:
        from google.cloud.firestore_v1.base_query import FieldFilter

        query = self.collection.where(filter=FieldFilter("last_active_at", "<", cutoff)).select(
            ["last_active_at", "lease"]
        )
        found: list[InactiveUser] = []
        now = _now()
        try:
            for snap in query.stream(**self._kw()):
                try:
                    uid = validate_id("user_id", snap.id)
                except InvalidSessionIdError:
                    continue
                data = snap.to_dict() or {}
                lease = parse_lease(data.get("lease"))
                if lease is not None and lease.active(now):
                    continue  # open somewhere right now
                found.append(InactiveUser(uid, _fs_time(data.get("last_active_at")), snap.update_time))
        except Exception as exc:
            raise _store_error(self.where, "query", exc) from exc
        return sorted(found, key=lambda u: u.user_id)

    def _commit_each(self, writes: Sequence[tuple[str, Any, dict[str, Any] | None, Any]]) -> dict[str, Any]:
        """Commit ``(user_id, ref, fields or None for delete, last_update_time)`` writes with preconditions.

        Up to 500 per commit; if a commit fails because one document changed, that
        chunk is retried write by write. Returns ``user_id -> new update_time`` of
        the writes that succeeded.
        """
        from google.api_core.exceptions import FailedPrecondition, NotFound

        done: dict[str, Any] = {}

        def add(batch: Any, ref: Any, fields: dict[str, Any] | None, version: Any) -> None:
            option = self.client.write_option(last_update_time=version)
            if fields is None:
                batch.delete(ref, option=option)
            else:
                batch.update(ref, fields, option=option)

        for start in range(0, len(writes), _MAX_WRITES):
            chunk = writes[start : start + _MAX_WRITES]
            batch = self.client.batch()
            for _, ref, fields, version in chunk:
                add(batch, ref, fields, version)
            try:
                results = batch.commit(**self._kw())
            except (FailedPrecondition, NotFound):
                for uid, ref, fields, version in chunk:
                    single = self.client.batch()
                    add(single, ref, fields, version)
                    try:
                        res = single.commit(**self._kw())
                    except (FailedPrecondition, NotFound):
                        continue  # used (or deleted) since it was found
                    done[uid] = res[0].update_time
                continue
            for (uid, _, _, _), res in zip(chunk, results, strict=True):
                done[uid] = res.update_time
        return done

    def _children(self, user_id: str) -> list[Any]:
        """References of every document in the user's ``entities`` and ``sent_files`` (ids only)."""
        from google.cloud.firestore_v1.field_path import FieldPath

        from .firestore import ENTITIES, SENT_FILES

        refs: list[Any] = []
        doc = self._doc(user_id)
        for name in (ENTITIES, SENT_FILES):
            query = doc.collection(name).select([]).order_by(FieldPath.document_id()).limit(_MAX_WRITES)
            last = None
            while True:
                page = (query.start_after(last) if last is not None else query).get(**self._kw())
                refs.extend(snap.reference for snap in page)
                if len(page) < _MAX_WRITES:
                    break
                last = page[-1]
        return refs

    def _delete_subcollections(self, user_ids: Sequence[str]) -> None:
        """Delete the subcollections of ``user_ids``: listed in parallel, deleted 500 per commit.

        Users are handled in chunks, so memory holds at most one chunk's references.
        """
        from concurrent.futures import ThreadPoolExecutor

        chunk_size = 64
        with ThreadPoolExecutor(max_workers=_LIST_WORKERS, thread_name_prefix="tfs-cleanup") as pool:
            for start in range(0, len(user_ids), chunk_size):
                refs = [
                    ref for found in pool.map(self._children, user_ids[start : start + chunk_size]) for ref in found
                ]
                for first in range(0, len(refs), _MAX_WRITES):
                    batch = self.client.batch()
                    for ref in refs[first : first + _MAX_WRITES]:
                        batch.delete(ref)
                    batch.commit(**self._kw())

    def delete_inactive(self, users: Sequence[InactiveUser]) -> list[str]:
        """Mark, then empty, then delete, each step conditional where it matters.

        1. ``cleanup_started_at`` is written with a precondition on the update time
           seen by :meth:`find_inactive` (500 per commit): a session used since then
           (its lease taken, anything written) is skipped.
        2. Its ``entities`` and ``sent_files`` are deleted: two id-only queries per
           session (listed by 8 threads), then 500 deletes per commit.
        3. The document is deleted with a precondition on the mark's update time, so
           a session opened during step 2 keeps its auth key (it only lost cached
           entities, which Telethon fetches again).

        If the process dies midway, the document still has its old
        ``last_active_at`` and the next cleanup finishes the job.
        """
        try:
            marked = self._commit_each(
                [(u.user_id, self._doc(u.user_id), {"cleanup_started_at": _now()}, u.version) for u in users]
            )
            order = [u.user_id for u in users if u.user_id in marked]
            self._delete_subcollections(order)
            deleted = self._commit_each([(uid, self._doc(uid), None, marked[uid]) for uid in order])
        except Exception as exc:
            raise _store_error(self.where, "clean up", exc) from exc
        return [uid for uid in order if uid in deleted]

    def delete_user(self, user_id: str) -> bool:
        from .firestore import FirestoreStore

        doc = self._doc(user_id)
        try:
            existed = bool(doc.get(field_paths=["registered_at"], **self._kw()).exists)
        except Exception as exc:
            raise _store_error(f"firestore:{doc.path}", "read", exc) from exc
        FirestoreStore(self.key(user_id), self.client, rpc_timeout=self.rpc_timeout).delete()
        return existed

    def ping(self, timeout: float) -> None:
        # One point read of the bot document (it need not exist), without retries.
        self.client.collection("bots").document(self.bot_id).get(retry=None, timeout=timeout)

    def close(self) -> None:
        if self.owns_client:
            self.client.close()  # type: ignore[no-untyped-call]


# -- SQLite files ------------------------------------------------------------------------------

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
        from .sqlite import session_path

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
        from .sqlite import session_path

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
        from .sqlite import read_metadata

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
            raise _store_error(self.where, what, exc) from exc

    # -- the interface -----------------------------------------------------------------------

    def open_session(self, user_id: str, *, flush_interval: float, close_timeout: float) -> SessionCore:
        from .sqlite import ScopedSQLiteSession

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
        from .sqlite import SQLiteStore

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
