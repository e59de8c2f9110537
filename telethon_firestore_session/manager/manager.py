"""``UserSessionManager``: one Telegram client per user, across restarts and instances.

The manager is what a bot uses to give each of its users their own
``TelegramClient``: it registers users, drives the two-step login from chat,
keeps a bounded cache of connected clients, and offers the admin operations
(listing, stats, cleanup, health). It is async throughout and backend-agnostic:
it uses the sessions (:class:`~telethon_firestore_session.firestore.FirestoreSession`
or :class:`~telethon_firestore_session.sqlite.ScopedSQLiteSession`) and a small
directory interface (:mod:`telethon_firestore_session._directory`); every blocking
call runs in a worker thread (``asyncio.to_thread``).

Promises:

* ``get_user_client`` returns a connected client; concurrent calls for one user
  get the same object (one ``asyncio.Lock`` per user). At most
  ``max_active_clients`` stay connected (least recently used first out), and a
  client unused for ``idle_timeout`` seconds is disconnected. Either way its
  session is flushed first: entities and update states are written before the
  client disconnects (waiting at most ``flush_timeout``), the auth key always is.
* A Firestore session is leased (``lease{holder, expires_at}`` on the session
  document) while this manager has its client open: another instance gets
  :class:`~telethon_firestore_session.errors.SessionInUseError` instead of a
  second connection on the same auth key (which Telegram punishes with
  ``AuthKeyDuplicatedError``). If this process dies, the lease expires after
  ``lease_ttl`` seconds and another instance takes over. SQLite files keep their
  OS file lock instead.
* The pending login (phone, phone-code hash, expiry) is stored with the session
  (sealed when a cipher is configured), so a restart or another instance can
  finish a login that this one began.
* ``health_check`` never raises and returns within about ``health_timeout``
  seconds, also when Firestore hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import enum
import logging
import os
import secrets
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from telethon import TelegramClient, errors, utils

from telethon_firestore_session.errors import ConfigError, SessionClosedError, SessionError, SessionStoreError
from telethon_firestore_session.firestore.directory import FirestoreDirectory
from telethon_firestore_session.firestore.lease import DEFAULT_LEASE_TTL, FirestoreLease, make_holder_id
from telethon_firestore_session.ids import validate_id
from telethon_firestore_session.sqlite.directory import SQLiteDirectory
from telethon_firestore_session.writer import BackgroundWriter

from .directory import (
    ApiCredentials,
    PendingLogin,
    SessionDirectory,
    UserRecord,
)

if TYPE_CHECKING:
    from google.cloud import firestore

    from telethon_firestore_session.config import SessionConfig
    from telethon_firestore_session.core import SessionCore, Store
    from telethon_firestore_session.crypto import SessionCipher

__all__ = [
    "LoginResult",
    "LoginStatus",
    "UserSession",
    "UserSessionInfo",
    "UserSessionManager",
    "create_user_session_manager_from_config",
]

log = logging.getLogger("telethon_firestore_session.manager")

_UTC = datetime.timezone.utc

#: Called as ``client_factory(session, api_id, api_hash, **client_kwargs)``.
ClientFactory = Callable[..., Any]


def _now() -> datetime.datetime:
    return datetime.datetime.now(_UTC)


# -- results ----------------------------------------------------------------------------------


class LoginStatus(str, enum.Enum):
    """What a login step did. Only ``LOGGED_IN`` and ``ALREADY_LOGGED_IN`` mean success."""

    CODE_SENT = "code_sent"
    """``begin_login``: Telegram sent the code; call ``complete_login`` before ``expires_at``."""
    LOGGED_IN = "logged_in"
    ALREADY_LOGGED_IN = "already_logged_in"
    PASSWORD_NEEDED = "password_needed"  # noqa: S105 - a status name, not a password
    """The code was right; the account has two-step verification: call ``complete_login`` with ``password``."""
    INVALID_CODE = "invalid_code"
    """The code was wrong; the login stays pending, the user may try again."""
    CODE_EXPIRED = "code_expired"
    """The code (or the pending login) expired; start again with ``begin_login``."""
    INVALID_PASSWORD = "invalid_password"  # noqa: S105 - a status name, not a password
    """The 2FA password was wrong; the login stays pending at the password step."""
    NO_PENDING_LOGIN = "no_pending_login"
    """``complete_login`` without a pending login (none was begun, or it finished)."""
    INVALID_PHONE = "invalid_phone"
    SIGN_UP_REQUIRED = "sign_up_required"
    """The phone number has no Telegram account; sign up in an official app first."""
    FLOOD_WAIT = "flood_wait"
    """Telegram asks to wait ``retry_after`` seconds."""
    FAILED = "failed"
    """Another Telegram error; ``message`` names it."""


@dataclasses.dataclass(frozen=True)
class LoginResult:
    """The outcome of :meth:`UserSessionManager.begin_login` or :meth:`~UserSessionManager.complete_login`."""

    status: LoginStatus
    message: str
    #: ``CODE_SENT``: until when ``complete_login`` can finish this login.
    expires_at: datetime.datetime | None = None
    #: ``FLOOD_WAIT``: seconds Telegram asks to wait.
    retry_after: int | None = None
    #: ``LOGGED_IN``/``ALREADY_LOGGED_IN``: the Telegram id of the account.
    telegram_user_id: int | None = None

    @property
    def ok(self) -> bool:
        """``True`` once the user is logged in."""
        return self.status in (LoginStatus.LOGGED_IN, LoginStatus.ALREADY_LOGGED_IN)


@dataclasses.dataclass(frozen=True)
class UserSessionInfo:
    """One user's session, as :meth:`UserSessionManager.list_user_sessions` reports it (no secrets)."""

    user_id: str
    registered_at: datetime.datetime | None
    last_active_at: datetime.datetime | None
    logged_in: bool
    login_pending: bool
    #: The user has their own ``api_id``/``api_hash``.
    custom_api: bool
    #: This manager has the user's client open.
    active: bool
    #: The holder of another instance's unexpired lease (Firestore), else ``None``.
    in_use_by: str | None

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in ("registered_at", "last_active_at"):
            value = data[name]
            data[name] = value.isoformat() if value is not None else None
        return data


# -- the cache ----------------------------------------------------------------------------------


class _Entry:
    """A connected client in the cache."""

    __slots__ = ("authorized", "client", "last_used", "lease", "login_pending", "session", "user_id")

    def __init__(self, user_id: str, client: Any, session: SessionCore, lease: FirestoreLease | None) -> None:
        self.user_id = user_id
        self.client = client
        self.session = session
        self.lease = lease
        self.authorized: bool | None = None
        self.login_pending = False
        self.last_used = time.time()

    def idle_for(self, now: float) -> float:
        # Telethon stamps every RPC it makes in ``_last_request`` (wall clock), so a
        # client the application keeps using is not idle even if it never comes back here.
        last = max(self.last_used, float(getattr(self.client, "_last_request", 0.0) or 0.0))
        return now - last

    def gone(self) -> bool:
        """Logged out or disconnected behind our back, or its lease was taken over."""
        if self.lease is not None and self.lease.lost:
            return True
        return self.client.session is None or not self.client.is_connected()


class _LeaseRenewer:
    """Registered once per manager with the background writer: renews every due lease."""

    def __init__(self, manager: UserSessionManager) -> None:
        self._manager = weakref.ref(manager)
        self.where = f"lease renewer of {manager.holder_id}"

    def periodic(self) -> None:
        manager = self._manager()
        if manager is not None:
            _renew_all(manager._lease_snapshot)


def _renew_all(leases: Sequence[FirestoreLease]) -> None:
    """Renew the due leases; stop at the first failure (Firestore is probably down)."""
    for lease in leases:
        before = lease.failed_renewals
        lease.renew_if_due()
        if lease.failed_renewals > before:
            return


# -- the manager ----------------------------------------------------------------------------


class UserSessionManager:
    """One Telegram client per user of a bot, stored in Firestore or in local SQLite files.

    The default is local: ``UserSessionManager("mybot", api_id=..., api_hash=...)``
    keeps sessions in ``sessions/mybot/``. ``backend="firestore"`` keeps them in
    ``bots/{bot_id}/user_sessions`` (pass ``firestore_client=`` or ``project=``).
    :func:`create_user_session_manager_from_config` builds it from the environment.

    Use it as ``async with manager:`` or call :meth:`aclose`, which disconnects
    every client, flushes every session and releases every lease.

    :param bot_id: the bot (or application) whose users these are.
    :param backend: ``"sqlite"`` (default) or ``"firestore"``.
    :param sessions_dir: where SQLite sessions live (``{sessions_dir}/{bot_id}/``).
    :param firestore_client: a ``google.cloud.firestore.Client`` (else one is built
        from ``project``/``GOOGLE_CLOUD_PROJECT`` and closed by :meth:`aclose`).
    :param cipher: a :class:`~telethon_firestore_session.crypto.SessionCipher`: seals
        auth keys, per-user ``api_hash`` and pending logins (both backends).
    :param encrypt_pii: also seal entity usernames, phone numbers and names in the
        sessions, looked up through blind indexes (both backends; needs ``cipher``).
    :param directory: a ready :class:`~telethon_firestore_session._directory.SessionDirectory`
        (overrides ``bot_id``/``backend``/``sessions_dir``/``firestore_client``).
    :param api_id: default Telegram API id for users without their own.
    :param api_hash: default Telegram API hash.
    :param client_factory: builds a client as ``client_factory(session, api_id, api_hash,
        **client_kwargs)``; default ``telethon.TelegramClient``.
    :param client_kwargs: extra keyword arguments for every client (``device_model``, ...).
    :param max_active_clients: connected clients kept at most (least recently used evicted).
    :param idle_timeout: seconds after which an unused client is disconnected.
    :param lease_ttl: seconds a Firestore lease lasts without renewal (renewed every third).
    :param login_timeout: seconds a pending login (the code sent by ``begin_login``) stays valid.
    :param flush_interval: the sessions' write-behind interval.
    :param flush_timeout: how long closing a client waits for its session to be written.
    :param rpc_timeout: deadline of each Firestore call made by the directory and sessions.
    :param health_timeout: the bound on :meth:`health_check`'s backend round trip.
    :param holder_id: this instance's name in leases (default ``hostname:pid:random``).
    """

    def __init__(
        self,
        bot_id: str | None = None,
        *,
        backend: str = "sqlite",
        sessions_dir: str | os.PathLike[str] = "sessions",
        firestore_client: firestore.Client | None = None,
        project: str | None = None,
        cipher: SessionCipher | None = None,
        encrypt_pii: bool = False,
        directory: SessionDirectory | None = None,
        api_id: int | None = None,
        api_hash: str | None = None,
        client_factory: ClientFactory = TelegramClient,
        client_kwargs: Mapping[str, Any] | None = None,
        max_active_clients: int = 100,
        idle_timeout: float = 1800.0,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        login_timeout: float = 600.0,
        flush_interval: float = 5.0,
        flush_timeout: float = 10.0,
        rpc_timeout: float = 10.0,
        health_timeout: float = 5.0,
        holder_id: str | None = None,
    ) -> None:
        if max_active_clients < 1:
            raise ValueError("max_active_clients must be at least 1")
        for name, value in (
            ("idle_timeout", idle_timeout),
            ("lease_ttl", lease_ttl),
            ("login_timeout", login_timeout),
            ("flush_timeout", flush_timeout),
            ("health_timeout", health_timeout),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be positive")
        if (api_id is None) != (api_hash is None):
            raise ConfigError("API_ID/API_HASH", "give both the default api_id and api_hash, or neither")
        if directory is None:
            if bot_id is None:
                raise ConfigError("BOT_ID", "the manager needs a bot_id")
            if backend == "sqlite":
                directory = SQLiteDirectory(sessions_dir, bot_id, cipher=cipher, encrypt_pii=encrypt_pii)
            elif backend == "firestore":
                owns = firestore_client is None
                if firestore_client is None:
                    from telethon_firestore_session.firestore import make_client

                    firestore_client = make_client(project)
                directory = FirestoreDirectory(
                    firestore_client,
                    bot_id,
                    cipher=cipher,
                    encrypt_pii=encrypt_pii,
                    rpc_timeout=rpc_timeout,
                    owns_client=owns,
                )
            else:
                raise ConfigError("backend", f"must be 'sqlite' or 'firestore', not {backend!r}")
        elif bot_id is not None and validate_id("bot_id", bot_id) != directory.bot_id:
            raise ConfigError("bot_id", f"{bot_id!r} does not match the directory's bot_id {directory.bot_id!r}")
        self._directory = directory
        self._default_credentials = ApiCredentials(api_id, api_hash) if api_id is not None and api_hash else None
        self._client_factory = client_factory
        self._client_kwargs = dict(client_kwargs or {})
        self.max_active_clients = max_active_clients
        self.idle_timeout = idle_timeout
        self.lease_ttl = lease_ttl
        self.login_timeout = login_timeout
        self.flush_interval = flush_interval
        self.flush_timeout = flush_timeout
        self.health_timeout = health_timeout
        self.holder_id = holder_id or make_holder_id()
        #: Seconds between housekeeping rounds (idle eviction, lease renewal, lost leases).
        self.housekeeping_interval = max(0.05, min(idle_timeout / 4, lease_ttl / 6, 30.0))
        #: A backend round trip slower than this makes ``health_check`` report "degraded".
        self.degraded_latency = 1.0
        #: A writer queue deeper than this makes ``health_check`` report "degraded".
        self.degraded_queue_depth = 10_000

        self._clients: OrderedDict[str, _Entry] = OrderedDict()
        # The leases of open clients, replaced (never mutated) on every change: the writer
        # thread reads it while the event loop changes ``_clients``.
        self._lease_snapshot: tuple[FirestoreLease, ...] = ()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._housekeeper: asyncio.Task[None] | None = None
        self._renewer = _LeaseRenewer(self)
        self._renewer_registered = False
        self._closed = False
        self._failed_writes_seen = BackgroundWriter.get().stats().failed_writes
        #: Clients disconnected because of ``max_active_clients`` / ``idle_timeout`` / a lost lease.
        self.evictions = {"lru": 0, "idle": 0, "lost_lease": 0}

    def __repr__(self) -> str:
        return (
            f"<UserSessionManager {self._directory.where} holder={self.holder_id} "
            f"active={len(self._clients)}/{self.max_active_clients}>"
        )

    @property
    def bot_id(self) -> str:
        return self._directory.bot_id

    @property
    def backend(self) -> str:
        """``"firestore"`` or ``"sqlite"``."""
        return self._directory.backend

    @property
    def active_clients(self) -> int:
        """How many clients this manager has open now."""
        return len(self._clients)

    # -- plumbing ------------------------------------------------------------------------------

    async def __aenter__(self) -> UserSessionManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosedError("the UserSessionManager was closed")

    @staticmethod
    async def _call(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(func, *args, **kwargs)

    def _lock(self, user_id: str) -> asyncio.Lock:
        lock = self._locks.get(user_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[user_id] = lock
        return lock

    def _leases(self) -> tuple[FirestoreLease, ...]:
        return self._lease_snapshot

    def _add(self, entry: _Entry) -> None:
        self._clients[entry.user_id] = entry
        if entry.lease is not None:
            self._lease_snapshot = (*self._lease_snapshot, entry.lease)

    def _remove(self, entry: _Entry) -> None:
        if self._clients.get(entry.user_id) is entry:
            del self._clients[entry.user_id]
        if entry.lease is not None:
            self._lease_snapshot = tuple(lease for lease in self._lease_snapshot if lease is not entry.lease)

    def _ensure_housekeeping(self) -> None:
        task = self._housekeeper
        if task is None or task.done():
            self._housekeeper = asyncio.get_running_loop().create_task(
                self._housekeeping(), name=f"UserSessionManager housekeeping {self.bot_id}"
            )
        if not self._renewer_registered and self._directory.uses_leases:
            BackgroundWriter.get().register_periodic(cast("Store", self._renewer))
            self._renewer_registered = True

    # -- opening and closing clients --------------------------------------------------------------

    def _credentials(self, record: UserRecord) -> ApiCredentials:
        creds = record.api_credentials or self._default_credentials
        if creds is None:
            raise ConfigError(
                "API_ID",
                f"user {record.user_id} has no api_id/api_hash of their own and the manager has no default "
                "(pass api_id= and api_hash=, or set API_ID and API_HASH)",
            )
        return creds

    async def _open(self, record: UserRecord, *, require_auth_key: bool) -> _Entry | None:
        """Lease, load and connect the user's session (call with the user's lock held)."""
        uid = record.user_id
        lease = self._directory.new_lease(uid, holder=self.holder_id, ttl=self.lease_ttl)
        if lease is not None and not await self._call(lease.acquire):
            return None  # deleted meanwhile
        session: SessionCore | None = None
        client: Any = None
        try:
            session = await self._call(
                self._directory.open_session,
                uid,
                flush_interval=self.flush_interval,
                close_timeout=min(self.flush_timeout, 1.0),
            )
            assert session is not None
            if require_auth_key and session.auth_key is None:
                await self._call(session.close)
                if lease is not None:
                    await self._call(lease.release)
                return None
            creds = self._credentials(record)
            client = self._client_factory(session, creds.api_id, creds.api_hash, **self._client_kwargs)
            await client.connect()
            if self._closed:
                raise SessionClosedError("the UserSessionManager was closed while opening a client")
        except BaseException:
            with contextlib.suppress(Exception):
                if client is not None:
                    await client.disconnect()
                elif session is not None:
                    await self._call(session.close)
            if lease is not None:
                await self._call(lease.release)
            raise
        try:
            await self._call(self._directory.touch, uid)
        except SessionError as exc:
            log.warning("cannot record the activity of %s/%s: %s", self.bot_id, uid, exc)
        entry = _Entry(uid, client, session, lease)
        entry.login_pending = record.pending_login is not None
        self._add(entry)
        self._ensure_housekeeping()
        log.debug("opened the client of %s/%s", self.bot_id, uid)
        return entry

    async def _entry(
        self, uid: str, *, login: bool, record: UserRecord | None = None, require_auth_key: bool | None = None
    ) -> _Entry | None:
        """The cached entry, or a freshly opened one (call with the user's lock held).

        A user whose session has no auth key is only connected (which creates one)
        for a login; otherwise (or with ``require_auth_key``) the result is ``None``.
        """
        if require_auth_key is None:
            require_auth_key = not login
        entry = self._clients.get(uid)
        if entry is not None:
            if not entry.gone():
                self._clients.move_to_end(uid)
                entry.last_used = time.time()
                return entry
            if entry.lease is not None and entry.lease.lost:
                self.evictions["lost_lease"] += 1
            await self._close_entry(entry)
        if record is None:
            record = await self._call(self._directory.get_user, uid)
        if record is None:
            return None
        if require_auth_key and record.has_auth_key is False:
            return None
        return await self._open(record, require_auth_key=require_auth_key)

    async def _close_entry(self, entry: _Entry) -> bool:
        """Flush, disconnect and release (call with the user's lock held). ``False`` if the flush timed out."""
        uid = entry.user_id
        self._remove(entry)
        flushed = True
        session = entry.session
        store = session._store
        if store is not None and entry.client.session is not None:
            try:
                session.save()  # a changed auth key is written through; the rest goes to the writer
            except Exception as exc:  # noqa: BLE001 - closing continues; the writer keeps retrying
                flushed = False
                log.warning("saving %s/%s before closing failed: %s", self.bot_id, uid, type(exc).__name__)
            # Wait for the writer off the event loop, so that disconnect() below finds little to do.
            flushed = await self._call(BackgroundWriter.get().flush, store, self.flush_timeout) and flushed
            if not flushed:
                log.warning(
                    "closing %s/%s before its session was written (the writer keeps retrying)", self.bot_id, uid
                )
        try:
            await entry.client.disconnect()  # Telethon saves states and entities, then closes the session
        except Exception as exc:  # noqa: BLE001 - a failed disconnect must not keep the entry alive
            log.warning("disconnecting %s/%s failed: %s", self.bot_id, uid, type(exc).__name__)
        if entry.lease is not None:
            await self._call(entry.lease.release)
        with contextlib.suppress(SessionError, OSError):
            await self._call(self._directory.touch, uid)
        log.debug("closed the client of %s/%s", self.bot_id, uid)
        return flushed

    async def _enforce_limit(self) -> None:
        """Evict least recently used clients above ``max_active_clients`` (never one whose lock is held)."""
        while len(self._clients) > self.max_active_clients:
            victim = None
            for uid, entry in self._clients.items():
                lock = self._locks.get(uid)
                if lock is None or not lock.locked():
                    victim = entry
                    break
            if victim is None:
                return  # every client is busy; the next call tries again
            async with self._lock(victim.user_id):
                if self._clients.get(victim.user_id) is victim and len(self._clients) > self.max_active_clients:
                    self.evictions["lru"] += 1
                    await self._close_entry(victim)

    async def _housekeeping(self) -> None:
        """Idle eviction, lost leases, and lease renewal (besides the writer's), every tick."""
        while not self._closed:
            await asyncio.sleep(self.housekeeping_interval)
            try:
                now = time.time()
                for uid, entry in list(self._clients.items()):
                    lost = entry.lease is not None and entry.lease.lost
                    if not lost and entry.idle_for(now) < self.idle_timeout:
                        continue
                    lock = self._lock(uid)
                    if lock.locked():
                        continue
                    async with lock:
                        if self._clients.get(uid) is not entry:
                            continue
                        self.evictions["lost_lease" if lost else "idle"] += 1
                        await self._close_entry(entry)
                leases = self._leases()
                if leases:
                    await self._call(_renew_all, leases)
            except Exception:  # housekeeping must survive anything
                log.exception("housekeeping of %s failed; trying again", self.bot_id)

    # -- users ------------------------------------------------------------------------------------

    async def create_user_session(
        self, user_id: str | int, *, api_id: int | None = None, api_hash: str | None = None
    ) -> bool:
        """Register a user. Idempotent.

        :param api_id: the user's own Telegram API id (optional; with ``api_hash``).
            Stored with the session, the hash sealed when a cipher is configured.
            New credentials for a known user replace theirs (an open client keeps
            the old ones until it is reopened).
        :returns: ``True`` if the user was registered now, ``False`` if they already were.
        :raises InvalidSessionIdError: for an id that could escape its place.
        :raises SessionStoreError: the backend failed (nothing was registered).
        """
        uid = validate_id("user_id", user_id)
        self._check_open()
        if (api_id is None) != (api_hash is None):
            raise ValueError("give both api_id and api_hash, or neither")
        creds = ApiCredentials(int(api_id), str(api_hash)) if api_id is not None else None
        created: bool = await self._call(self._directory.register, uid, creds)
        if created:
            log.info("registered user %s/%s", self.bot_id, uid)
        return created

    async def get_user_client(self, user_id: str | int) -> TelegramClient | None:
        """The user's connected, logged-in ``TelegramClient``, or ``None``.

        ``None`` for an unknown user and for one who is not logged in (a user whose
        session has no auth key is not even connected). The client is cached:
        concurrent calls for one user return the same object, at most
        ``max_active_clients`` stay connected, and one unused for ``idle_timeout``
        seconds is flushed and disconnected (call this again to get a new one).

        :raises SessionInUseError: another instance (lease) or process (file lock) has it.
        :raises SessionStoreError: the backend failed.
        :raises SessionClosedError: after :meth:`aclose`.
        """
        uid = validate_id("user_id", user_id)
        self._check_open()
        async with self._lock(uid):
            entry = await self._entry(uid, login=False)
            if entry is None:
                return None
            if entry.authorized is None:
                entry.authorized = bool(await entry.client.is_user_authorized())
                await self._note_authorized(uid, entry.authorized)
            client = entry.client if entry.authorized else None
            if client is None and not entry.login_pending:
                await self._close_entry(entry)
        await self._enforce_limit()
        return client

    async def _note_authorized(self, uid: str, authorized: bool) -> None:
        try:
            await self._call(self._directory.update_user, uid, logged_in=authorized)
        except SessionError as exc:
            log.warning("cannot record the login state of %s/%s: %s", self.bot_id, uid, exc)

    async def is_logged_in(self, user_id: str | int) -> bool:
        """Whether the user is logged in, as last recorded (no Telegram round trip)."""
        uid = validate_id("user_id", user_id)
        self._check_open()
        entry = self._clients.get(uid)
        if entry is not None and entry.authorized is not None:
            return entry.authorized
        record: UserRecord | None = await self._call(self._directory.get_user, uid)
        return record is not None and record.logged_in

    # -- login --------------------------------------------------------------------------------

    async def begin_login(self, user_id: str | int, phone: str) -> LoginResult:
        """Send the login code to ``phone`` and store the pending login with the session.

        Registers the user if needed. The pending login (phone, phone-code hash and
        its expiry, ``login_timeout`` from now) is durable when this returns, so
        :meth:`complete_login` may run after a restart or on another instance.

        :returns: ``CODE_SENT`` (with ``expires_at``), ``ALREADY_LOGGED_IN``,
            ``INVALID_PHONE``, ``FLOOD_WAIT`` or ``FAILED``.
        :raises SessionInUseError: another instance or process has the session.
        :raises SessionStoreError: the backend failed.
        """
        uid = validate_id("user_id", user_id)
        self._check_open()
        number = utils.parse_phone(phone) if isinstance(phone, (str, int)) else None
        if not number:
            return LoginResult(LoginStatus.INVALID_PHONE, "that is not a phone number")
        await self._call(self._directory.register, uid, None)
        async with self._lock(uid):
            result = await self._begin_login(uid, number)
        await self._enforce_limit()
        return result

    async def _begin_login(self, uid: str, number: str) -> LoginResult:
        entry = await self._entry(uid, login=True)
        if entry is None:
            raise SessionStoreError(f"{self._directory.where}/{uid} disappeared while beginning a login")
        client = entry.client
        if await client.is_user_authorized():
            entry.authorized = True
            await self._note_authorized(uid, True)
            return LoginResult(LoginStatus.ALREADY_LOGGED_IN, "already logged in")
        entry.authorized = False
        try:
            sent = await client.send_code_request(number)
        except errors.PhoneNumberInvalidError:
            return LoginResult(LoginStatus.INVALID_PHONE, "Telegram does not accept that phone number")
        except errors.PhoneNumberBannedError:
            return LoginResult(LoginStatus.FAILED, "that phone number is banned from Telegram")
        except errors.FloodWaitError as exc:
            return LoginResult(LoginStatus.FLOOD_WAIT, f"wait {exc.seconds} s", retry_after=int(exc.seconds))
        except errors.RPCError as exc:
            return LoginResult(LoginStatus.FAILED, f"Telegram refused to send a code ({type(exc).__name__})")
        now = _now()
        pending = PendingLogin(
            phone=number,
            phone_code_hash=sent.phone_code_hash,
            sent_at=now,
            expires_at=now + datetime.timedelta(seconds=self.login_timeout),
        )
        await self._call(self._directory.update_user, uid, pending_login=pending)
        entry.login_pending = True
        log.info("sent a login code for %s/%s", self.bot_id, uid)
        return LoginResult(LoginStatus.CODE_SENT, "code sent", expires_at=pending.expires_at)

    async def complete_login(self, user_id: str | int, code: str | int, password: str | None = None) -> LoginResult:
        """Finish the pending login with the code (and the 2FA password if the account has one).

        Works in any instance that can open the session: the auth key that asked
        for the code is loaded from the store. ``password`` may come with the code
        or, after a ``PASSWORD_NEEDED`` result, in a second call (the code is then
        ignored).

        :returns: ``LOGGED_IN`` (with ``telegram_user_id``), ``ALREADY_LOGGED_IN``,
            ``PASSWORD_NEEDED``, ``INVALID_CODE``, ``CODE_EXPIRED``,
            ``INVALID_PASSWORD``, ``NO_PENDING_LOGIN``, ``SIGN_UP_REQUIRED``,
            ``FLOOD_WAIT`` or ``FAILED``.
        :raises SessionInUseError: another instance or process has the session.
        :raises SessionStoreError: the backend failed.
        """
        uid = validate_id("user_id", user_id)
        self._check_open()
        async with self._lock(uid):
            result = await self._complete_login(uid, str(code).strip(), password)
        await self._enforce_limit()
        return result

    async def _complete_login(self, uid: str, code: str, password: str | None) -> LoginResult:
        record: UserRecord | None = await self._call(self._directory.get_user, uid)
        if record is None or record.pending_login is None:
            entry = self._clients.get(uid)
            if (entry is not None and entry.authorized) or (record is not None and record.logged_in):
                return LoginResult(LoginStatus.ALREADY_LOGGED_IN, "already logged in")
            return LoginResult(LoginStatus.NO_PENDING_LOGIN, "no login is pending; call begin_login first")
        pending = record.pending_login
        if pending.expired():
            await self._call(self._directory.update_user, uid, pending_login=None)
            return LoginResult(LoginStatus.CODE_EXPIRED, "the login expired; call begin_login again")
        entry = await self._entry(uid, login=True, record=record)
        if entry is None:
            return LoginResult(LoginStatus.NO_PENDING_LOGIN, "the session disappeared; call begin_login again")
        client = entry.client
        try:
            if not pending.password_needed:
                try:
                    me = await client.sign_in(pending.phone, code, phone_code_hash=pending.phone_code_hash)
                except errors.SessionPasswordNeededError:
                    pending = dataclasses.replace(pending, password_needed=True)
                    await self._call(self._directory.update_user, uid, pending_login=pending)
                    if password is None:
                        return LoginResult(LoginStatus.PASSWORD_NEEDED, "the account has a 2FA password")
                    me = await client.sign_in(password=password)
            elif password is None:
                return LoginResult(LoginStatus.PASSWORD_NEEDED, "the account has a 2FA password")
            else:
                me = await client.sign_in(password=password)
        except errors.PhoneCodeInvalidError:
            return LoginResult(LoginStatus.INVALID_CODE, "the code is wrong; try again")
        except (errors.PhoneCodeExpiredError, errors.PhoneCodeEmptyError):
            await self._call(self._directory.update_user, uid, pending_login=None)
            return LoginResult(LoginStatus.CODE_EXPIRED, "the code expired; call begin_login again")
        except errors.PasswordHashInvalidError:
            return LoginResult(LoginStatus.INVALID_PASSWORD, "the 2FA password is wrong; try again")
        except errors.PhoneNumberUnoccupiedError:
            await self._call(self._directory.update_user, uid, pending_login=None)
            return LoginResult(LoginStatus.SIGN_UP_REQUIRED, "no Telegram account uses that phone number")
        except errors.FloodWaitError as exc:
            return LoginResult(LoginStatus.FLOOD_WAIT, f"wait {exc.seconds} s", retry_after=int(exc.seconds))
        except errors.RPCError as exc:
            return LoginResult(LoginStatus.FAILED, f"Telegram refused the login ({type(exc).__name__})")
        await self._call(self._directory.update_user, uid, pending_login=None, logged_in=True)
        entry.authorized = True
        entry.login_pending = False
        log.info("user %s/%s logged in", self.bot_id, uid)
        return LoginResult(LoginStatus.LOGGED_IN, "logged in", telegram_user_id=getattr(me, "id", None))

    # -- admin ------------------------------------------------------------------------------------

    async def delete_user_session(self, user_id: str | int, *, log_out: bool = True) -> bool:
        """Log the user's client out (with ``log_out``, when it can) and remove every stored record.

        Logging out makes Telegram forget the auth key; it needs the session to be
        free here (it is opened if needed). If Telegram cannot be reached the
        records are removed anyway.

        :returns: ``True`` if there was anything to remove.
        :raises SessionInUseError: another instance or process has the session.
        :raises SessionStoreError: the backend failed.
        """
        uid = validate_id("user_id", user_id)
        self._check_open()
        async with self._lock(uid):
            record: UserRecord | None = await self._call(self._directory.get_user, uid)
            entry = self._clients.get(uid)
            if log_out and entry is None and record is not None and record.has_auth_key is not False:
                entry = await self._entry(uid, login=True, record=record, require_auth_key=True)
            existed = record is not None or entry is not None
            if entry is not None:
                await self._discard_entry(entry, log_out=log_out)
            existed = bool(await self._call(self._directory.delete_user, uid)) or existed
        if existed:
            log.info("deleted the session of %s/%s", self.bot_id, uid)
        return existed

    async def _discard_entry(self, entry: _Entry, *, log_out: bool) -> None:
        uid = entry.user_id
        self._remove(entry)
        logged_out = False
        if log_out and entry.session.auth_key is not None and entry.client.session is not None:
            try:
                logged_out = bool(await entry.client.log_out())  # disconnects and deletes the session
            except Exception as exc:  # noqa: BLE001 - the records are removed anyway
                log.warning("logging %s/%s out failed: %s", self.bot_id, uid, type(exc).__name__)
        if not logged_out:
            with contextlib.suppress(Exception):
                await entry.client.disconnect()
            await self._call(entry.session.delete)  # drops pending writes first
        if entry.lease is not None:
            await self._call(entry.lease.release)

    async def list_user_sessions(self) -> list[UserSessionInfo]:
        """Every registered user of the bot, sorted by id (one query; no secrets)."""
        self._check_open()
        records: list[UserRecord] = await self._call(self._directory.list_users)
        now = _now()
        return [self._info(r, now) for r in records]

    def _info(self, r: UserRecord, now: datetime.datetime) -> UserSessionInfo:
        lease = r.lease
        return UserSessionInfo(
            user_id=r.user_id,
            registered_at=r.registered_at,
            last_active_at=r.last_active_at,
            logged_in=r.logged_in,
            login_pending=r.login_pending,
            custom_api=r.custom_api,
            active=r.user_id in self._clients,
            in_use_by=(
                lease.holder if lease is not None and lease.active(now) and lease.holder != self.holder_id else None
            ),
        )

    async def _user_info(self, uid: str) -> UserSessionInfo | None:
        self._check_open()
        record: UserRecord | None = await self._call(self._directory.get_user, uid)
        return self._info(record, _now()) if record is not None else None

    async def get_session_stats(self) -> dict[str, Any]:
        """Counts without reading every session (Firestore: three aggregation queries).

        ``total_sessions`` (registered users), ``active_sessions`` (clients open in
        this manager), ``logged_in_sessions`` (as recorded at the last login or
        check), ``leased_sessions`` (Firestore: open in any instance now; ``None``
        for SQLite), ``backend``, ``bot_id``, ``max_active_clients``.
        """
        self._check_open()
        counts = await self._call(self._directory.counts)
        return {
            "total_sessions": counts.total,
            "active_sessions": len(self._clients),
            "logged_in_sessions": counts.logged_in,
            "leased_sessions": counts.leased,
            "backend": self.backend,
            "bot_id": self.bot_id,
            "max_active_clients": self.max_active_clients,
        }

    async def cleanup_inactive_sessions(self, days: float = 30, *, dry_run: bool = False) -> list[str]:
        """Remove sessions whose ``last_active_at`` is more than ``days`` days ago.

        Sessions open here or in another instance (an unexpired lease, a held file
        lock) are kept, and so is one used between finding and removing it.
        Removal takes the entities and sent files with it. It does not log the
        users out of Telegram (that needs a connection per user); use
        :meth:`delete_user_session` for that.

        :returns: the user ids removed (with ``dry_run``, those that would be).
        """
        self._check_open()
        if days < 0:
            raise ValueError("days must not be negative")
        cutoff = _now() - datetime.timedelta(days=days)
        found = await self._call(self._directory.find_inactive, cutoff)
        candidates = [
            u
            for u in found
            if u.user_id not in self._clients
            and not ((lock := self._locks.get(u.user_id)) is not None and lock.locked())
        ]
        if dry_run:
            return [u.user_id for u in candidates]
        removed: list[str] = await self._call(self._directory.delete_inactive, candidates)
        if removed:
            log.info("cleanup removed %d session(s) of %s inactive since %s", len(removed), self.bot_id, cutoff)
        return removed

    async def health_check(self, timeout: float | None = None) -> dict[str, Any]:
        """The manager's health. Never raises; returns within about ``timeout`` seconds.

        ``status`` is ``"unhealthy"`` when the backend round trip fails or times
        out, ``"degraded"`` when it is slow (over ``degraded_latency``), the
        background writer failed writes since the last check or has a deep queue,
        or a lease was lost or cannot be renewed; otherwise ``"healthy"``.
        Also: ``backend_latency_ms``, ``error``, ``writer`` (``queue_depth``,
        ``failed_writes``, ``new_failed_writes``, ``last_error``), ``leases``
        (``held``, ``lost``, ``failing``, ``holder``, ``ttl``), ``active_clients``.
        """
        limit = self.health_timeout if timeout is None else timeout
        report: dict[str, Any] = {
            "status": "unhealthy",
            "backend": self.backend,
            "bot_id": self.bot_id,
            "where": self._directory.where,
            "backend_latency_ms": None,
            "error": None,
            "active_clients": len(self._clients),
            "checked_at": _now().isoformat(),
        }
        try:
            problems: list[str] = []
            if self._closed:
                problems.append("the manager is closed")
            start = time.monotonic()
            try:
                await asyncio.wait_for(self._call(self._directory.ping, limit), limit + 0.5)
                latency = time.monotonic() - start
                report["backend_latency_ms"] = round(latency * 1000, 2)
                if latency > self.degraded_latency:
                    problems.append(f"backend round trip took {latency:.2f}s")
            except (asyncio.TimeoutError, TimeoutError):
                report["error"] = f"the backend did not answer within {limit:.1f}s"
            except Exception as exc:  # noqa: BLE001 - health_check reports, never raises
                report["error"] = f"backend round trip failed: {type(exc).__name__}"
            stats = BackgroundWriter.get().stats()
            new_failures = stats.failed_writes - self._failed_writes_seen
            self._failed_writes_seen = stats.failed_writes
            report["writer"] = {
                "queue_depth": stats.queue_depth,
                "failed_writes": stats.failed_writes,
                "new_failed_writes": new_failures,
                "last_error": stats.last_error,
            }
            if new_failures > 0:
                problems.append(f"{new_failures} background write(s) failed since the last check")
            if stats.queue_depth > self.degraded_queue_depth:
                problems.append(f"{stats.queue_depth} records wait for the background writer")
            states = [lease.state() for lease in self._leases()]
            lost = sum(1 for s in states if s["lost"])
            failing = sum(1 for s in states if s["last_error"] is not None)
            report["leases"] = {
                "held": sum(1 for s in states if s["held"]),
                "lost": lost,
                "failing": failing,
                "holder": self.holder_id,
                "ttl": self.lease_ttl,
            }
            if lost or failing:
                problems.append(f"leases: {lost} lost, {failing} failing to renew")
            report["problems"] = problems
            if report["error"] is None:
                report["status"] = "degraded" if problems else "healthy"
        except Exception as exc:  # noqa: BLE001 - health_check never raises
            report["error"] = report["error"] or f"health check failed: {type(exc).__name__}"
        return report

    def for_user(self, user_id: str | int) -> UserSession:
        """A handle that exposes only ``user_id``'s own client, login and session info."""
        return UserSession(self, validate_id("user_id", user_id))

    async def aclose(self) -> None:
        """Flush every session, disconnect every client, release every lease. Idempotent."""
        if self._closed:
            return
        self._closed = True
        task, self._housekeeper = self._housekeeper, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        async def close(entry: _Entry) -> None:
            async with self._lock(entry.user_id):
                if self._clients.get(entry.user_id) is entry:
                    await self._close_entry(entry)

        for _ in range(3):  # a call already past its checks may still add a client once
            if not self._clients:
                break
            results = await asyncio.gather(*(close(e) for e in list(self._clients.values())), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    log.warning("closing a client failed: %s", type(result).__name__)
        if self._renewer_registered:
            BackgroundWriter.get().unregister_periodic(cast("Store", self._renewer))
            self._renewer_registered = False
        await self._call(self._directory.close)


class UserSession:
    """One user's view of the manager: their own client, login and session info, nothing else.

    Returned by :meth:`UserSessionManager.for_user`. It has no listing, stats,
    cleanup or other users' operations, and no way to name another user.
    """

    __slots__ = ("__manager", "__user_id")

    def __init__(self, manager: UserSessionManager, user_id: str) -> None:
        self.__manager = manager
        self.__user_id = user_id

    def __repr__(self) -> str:
        return f"<UserSession {self.__user_id}>"

    @property
    def user_id(self) -> str:
        return self.__user_id

    async def register(self, *, api_id: int | None = None, api_hash: str | None = None) -> bool:
        """Register this user (optionally with their own API credentials); ``True`` if new."""
        return await self.__manager.create_user_session(self.__user_id, api_id=api_id, api_hash=api_hash)

    async def get_client(self) -> TelegramClient | None:
        """This user's connected, logged-in client, or ``None`` (see ``get_user_client``)."""
        return await self.__manager.get_user_client(self.__user_id)

    async def begin_login(self, phone: str) -> LoginResult:
        return await self.__manager.begin_login(self.__user_id, phone)

    async def complete_login(self, code: str | int, password: str | None = None) -> LoginResult:
        return await self.__manager.complete_login(self.__user_id, code, password)

    async def is_logged_in(self) -> bool:
        return await self.__manager.is_logged_in(self.__user_id)

    async def info(self) -> UserSessionInfo | None:
        """This user's session info, or ``None`` if they are not registered."""
        return await self.__manager._user_info(self.__user_id)

    async def log_out(self) -> bool:
        """Log this user out of Telegram and delete their stored session."""
        return await self.__manager.delete_user_session(self.__user_id, log_out=True)


def create_user_session_manager_from_config(config: SessionConfig | None = None, **options: Any) -> UserSessionManager:
    """Build a :class:`UserSessionManager` from ``SessionConfig.from_env()`` (or ``config``).

    The backend, bot id, default API credentials, sessions directory or Firestore
    project and the encryption key come from the configuration (``USE_LOCAL_STORAGE``,
    ``BOT_ID``, ``API_ID``, ``API_HASH``, ``SESSIONS_DIR``, ``FIREBASE_PROJECT_ID``,
    ``FIREBASE_CREDENTIALS``, ``SESSION_ENCRYPTION_KEY``...); ``options`` are passed
    to :class:`UserSessionManager` and override them. On Render the lease holder id
    names the instance (``RENDER_INSTANCE_ID``).

    :raises ConfigError: a missing or invalid setting, at start-up.
    """
    from telethon_firestore_session.config import SessionConfig

    # A configuration read here is ours alone, and so is the Firestore client built
    # from it: the manager closes it. A configuration passed in keeps its client.
    owns_config = config is None
    if config is None:
        config = SessionConfig.from_env()
    kwargs: dict[str, Any] = {
        "backend": config.backend,
        "api_id": config.api_id,
        "api_hash": config.api_hash,
        **config.session_options(),
    }
    if config.render and config.instance_id:
        # Like make_holder_id(), with Render's instance id in place of the container's host name.
        kwargs["holder_id"] = f"{config.instance_id}:{os.getpid()}:{secrets.token_hex(4)}"
    built_client = config.backend == "firestore" and "firestore_client" not in options and "directory" not in options
    if built_client:
        kwargs["firestore_client"] = config.firestore_client()
    elif config.backend != "firestore":
        kwargs["sessions_dir"] = config.sessions_dir
    kwargs.update(options)
    manager = UserSessionManager(config.bot_id, **kwargs)
    if built_client and owns_config and isinstance(manager._directory, FirestoreDirectory):
        manager._directory.owns_client = True
    return manager
