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
import dataclasses
import datetime
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from telethon_firestore_session.crypto import open_sealed_text
from telethon_firestore_session.errors import SessionCorruptError
from telethon_firestore_session.firestore.lease import FirestoreLease, LeaseInfo
from telethon_firestore_session.ids import SessionKey, validate_id

if TYPE_CHECKING:
    from telethon_firestore_session.core import SessionCore
    from telethon_firestore_session.crypto import SessionCipher

__all__ = [
    "ApiCredentials",
    "Counts",
    "InactiveUser",
    "PendingLogin",
    "SessionDirectory",
    "UserRecord",
]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


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

    # -- sealing secret metadata (for the implementations) ---------------------------------

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

    def encode_credentials(self, user_id: str, creds: ApiCredentials) -> dict[str, Any]:
        """``api_credentials`` as stored: the hash sealed when there is a cipher."""
        return {"api_id": creds.api_id, "api_hash": self._seal(user_id, "api_credentials.api_hash", creds.api_hash)}

    def decode_credentials(self, user_id: str, value: object) -> ApiCredentials | None:
        """Stored ``api_credentials`` back (``None`` if absent); :class:`SessionCorruptError` if malformed."""
        if not isinstance(value, dict):
            return None
        api_id = value.get("api_id")
        if not isinstance(api_id, int) or isinstance(api_id, bool):
            raise SessionCorruptError(f"{self.where}/{user_id}: api_credentials.api_id is not an integer")
        return ApiCredentials(api_id, self._open(user_id, "api_credentials.api_hash", value.get("api_hash")))

    def encode_pending(self, user_id: str, pending: PendingLogin) -> dict[str, Any]:
        """``pending_login`` as stored: phone and phone-code hash sealed when there is a cipher."""
        return {
            "phone": self._seal(user_id, "pending_login.phone", pending.phone),
            "phone_code_hash": self._seal(user_id, "pending_login.phone_code_hash", pending.phone_code_hash),
            "sent_at": pending.sent_at,
            "expires_at": pending.expires_at,
            "password_needed": pending.password_needed,
        }

    def decode_pending(
        self, user_id: str, value: object, parse_time: Callable[[object], datetime.datetime | None]
    ) -> PendingLogin | None:
        """Stored ``pending_login`` back (``None`` if absent), its times read by ``parse_time``."""
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

    # The names the implementations used before (until they call the public ones).
    _credentials_value = encode_credentials
    _credentials = decode_credentials
    _pending_value = encode_pending
    _pending = decode_pending

    # -- the interface -----------------------------------------------------------------------

    @abc.abstractmethod
    def open_session(
        self,
        user_id: str,
        *,
        flush_interval: float,
        close_timeout: float,
        state_flush_interval: float = 60.0,
        lease: FirestoreLease | None = None,
    ) -> SessionCore:
        """Open (load) the user's Telethon session. May create an empty one.

        ``lease`` (from :meth:`new_lease`, held) fences the session's writes.

        :raises SessionInUseError: a local file lock is held elsewhere.
        """

    def new_lease(self, user_id: str, *, holder: str, ttl: float) -> FirestoreLease | None:
        """The lease guarding the user's session, or ``None`` where a file lock does that.

        Taking it checks that the session can be opened before anything is written.
        """
        return None

    @abc.abstractmethod
    def bot_lease(self, session: SessionCore) -> FirestoreLease | None:
        """The lease held by the bot's own session (``create_bot_session()``), ``None`` where a file lock is.

        :raises ConfigError: ``session`` is not this bot's own session.
        """

    def watch_handoffs(
        self, holder: str, on_request: Callable[[str], None], *, bot: bool = False
    ) -> Callable[[], None] | None:
        """Call ``on_request(user_id)`` (from another thread) when another instance asks ``holder``
        for a session (with ``bot``, for the bot's own); return what stops it, or ``None`` where
        sessions are not handed over (local files: see the README)."""
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
