"""``UserSessionManager``: one Telegram client per user, across restarts and instances.

The manager is what a bot uses to give each of its users their own
``TelegramClient``: it registers users, drives the two-step login from chat,
keeps a bounded cache of connected clients, and offers the admin operations
(listing, stats, cleanup, health). It is async throughout and backend-agnostic:
it uses the sessions (:class:`~telethon_firestore_session.firestore.FirestoreSession`
or :class:`~telethon_firestore_session.sqlite.ScopedSQLiteSession`) and a small
directory interface (:mod:`telethon_firestore_session.manager.directory`); every blocking
call runs in a worker thread (``asyncio.to_thread``). The open clients live in a
:class:`~telethon_firestore_session.manager.cache.ClientCache`, the two login steps in
:class:`~telethon_firestore_session.manager.login.LoginSteps`.

Promises:

* ``get_user_client`` returns a connected client; concurrent calls for one user
  get the same object (one ``asyncio.Lock`` per user). At most
  ``max_active_clients`` stay connected (least recently used first out), and a
  client unused for ``idle_timeout`` seconds is disconnected. Either way its
  session is flushed first: entities and update states are written before the
  client disconnects (waiting at most ``flush_timeout``), the auth key always is.
* A Firestore session is leased (``lease{holder, expires_at}`` on the session
  document) while this manager has its client open: another instance asks this
  one to hand the session over and waits up to ``handoff_timeout`` seconds, then
  gets :class:`~telethon_firestore_session.errors.SessionInUseError`, instead of
  a second connection on the same auth key (which Telegram punishes with
  ``AuthKeyDuplicatedError``). If this process dies, the lease expires after
  ``lease_ttl`` seconds and another instance takes over; a holder paused past its
  lease writes nothing more (fencing, see :mod:`~telethon_firestore_session.firestore.lease`).
  SQLite files keep their OS file lock instead.
* :meth:`UserSessionManager.run` (or :meth:`~UserSessionManager.stop_on_signals`)
  stops cleanly on SIGTERM and SIGINT: no new clients, every client flushed and
  disconnected, every lease released, within ``shutdown_timeout`` seconds.
* The pending login (phone, phone-code hash, expiry) is stored with the session
  (sealed when a cipher is configured), so a restart or another instance can
  finish a login that this one began.
* ``health_check`` never raises and returns within about ``health_timeout``
  seconds, also when Firestore hangs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from telethon import TelegramClient, utils

from telethon_firestore_session.config import open_directory
from telethon_firestore_session.entities import EntityBudget
from telethon_firestore_session.errors import ConfigError
from telethon_firestore_session.firestore.lease import DEFAULT_LEASE_TTL, make_holder_id
from telethon_firestore_session.ids import validate_id

from .admin import Administration
from .cache import ClientCache, client_maker
from .directory import ApiCredentials, SessionDirectory, UserRecord
from .health import HealthCheck
from .lifecycle import Lifecycle
from .login import LoginSteps
from .records import LoginResult, LoginStatus, UserSessionInfo

if TYPE_CHECKING:
    from google.cloud import firestore

    from telethon_firestore_session.config import SessionConfig
    from telethon_firestore_session.crypto import SessionCipher

__all__ = [
    "LoginResult",
    "LoginStatus",
    "UserSession",
    "UserSessionInfo",
    "UserSessionManager",
    "create_user_session_manager_from_config",
]

log = logging.getLogger(__name__)

#: Called as ``client_factory(session, api_id, api_hash, **client_kwargs)``.
ClientFactory = Callable[..., Any]


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} must be positive")


class UserSessionManager(Administration, Lifecycle):
    """One Telegram client per user of a bot, stored in Firestore or in local SQLite files.

    The default is local: ``UserSessionManager("mybot", api_id=..., api_hash=...)``
    keeps sessions in ``sessions/mybot/``. ``backend="firestore"`` keeps them in
    ``bots/{bot_id}/user_sessions`` (pass ``firestore_client=`` or ``project=``).
    :func:`create_user_session_manager_from_config` builds it from the environment.

    ``async with manager:``, ``manager.run(main)`` (which also stops on SIGTERM/SIGINT: see
    :class:`.lifecycle.Lifecycle`) or :meth:`aclose` end by closing every client (flushed) and lease.
    Its coroutines run storage calls in worker threads (``asyncio.to_thread``), so they never
    block the event loop; what each write makes durable: ``ARCHITECTURE.md``, "Durability".

    :param bot_id: the bot (or application) whose users these are.
    :param backend: ``"sqlite"`` (default) or ``"firestore"``.
    :param sessions_dir: where SQLite sessions live (``{sessions_dir}/{bot_id}/``).
    :param firestore_client: a ``google.cloud.firestore.Client`` (else one is built
        from ``project`` and closed by :meth:`aclose`).
    :param project: the Google Cloud project for that client (default ``GOOGLE_CLOUD_PROJECT``).
    :param cipher: a :class:`~telethon_firestore_session.crypto.SessionCipher`: seals
        auth keys, per-user ``api_hash`` and pending logins (both backends).
    :param encrypt_pii: also seal entity usernames, phone numbers and names in the
        sessions, looked up through blind indexes (both backends; needs ``cipher``).
    :param directory: a ready :class:`~telethon_firestore_session.manager.directory.SessionDirectory`
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
    :param flush_interval: the sessions' write-behind interval (entities, sent files).
    :param state_flush_interval: that of update states (Telethon's ``save()`` writes them too).
    :param entity_cache_mb: sets the process-wide entity memory budget (``EntityBudget``), in MiB.
    :param flush_timeout: how long closing a client waits for its session to be written.
    :param rpc_timeout: deadline of each Firestore call made by the directory and sessions.
    :param health_timeout: the bound on :meth:`health_check`'s backend round trip.
    :param holder_id: this instance's name in leases (default ``hostname:pid:random``).
    :param handoff_timeout: how long to wait for another instance to hand a session over (0: do not ask).
    :param shutdown_timeout: the bound on :meth:`aclose` (and so on a stop by signal).
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
        state_flush_interval: float = 60.0,
        entity_cache_mb: float | None = None,
        flush_timeout: float = 10.0,
        rpc_timeout: float = 10.0,
        health_timeout: float = 5.0,
        holder_id: str | None = None,
        handoff_timeout: float = 15.0,
        shutdown_timeout: float = 20.0,
    ) -> None:
        if max_active_clients < 1:
            raise ValueError("max_active_clients must be at least 1")
        _check_positive(
            idle_timeout=idle_timeout,
            lease_ttl=lease_ttl,
            login_timeout=login_timeout,
            flush_timeout=flush_timeout,
            state_flush_interval=state_flush_interval,
            health_timeout=health_timeout,
            shutdown_timeout=shutdown_timeout,
        )
        if (api_id is None) != (api_hash is None):
            raise ConfigError("API_ID/API_HASH", "give both the default api_id and api_hash, or neither")
        if directory is None:
            if bot_id is None:
                raise ConfigError("BOT_ID", "the manager needs a bot_id")
            directory = open_directory(
                backend,
                bot_id,
                sessions_dir=sessions_dir,
                firestore_client=firestore_client,
                project=project,
                cipher=cipher,
                encrypt_pii=encrypt_pii,
                rpc_timeout=rpc_timeout,
            )
        elif bot_id is not None and validate_id("bot_id", bot_id) != directory.bot_id:
            raise ConfigError("bot_id", f"{bot_id!r} does not match the directory's bot_id {directory.bot_id!r}")
        self._directory = directory
        default = ApiCredentials(api_id, api_hash) if api_id is not None and api_hash else None
        make_client = client_maker(client_factory, default, dict(client_kwargs or {}))
        self.max_active_clients = max_active_clients
        self.idle_timeout = idle_timeout
        self.lease_ttl = lease_ttl
        self.login_timeout = login_timeout
        self.flush_interval = flush_interval
        self.state_flush_interval = state_flush_interval
        EntityBudget.configure(entity_cache_mb)
        self.flush_timeout = flush_timeout
        self.health_timeout = health_timeout
        self.holder_id = holder_id or make_holder_id()
        self.handoff_timeout = max(0.0, handoff_timeout)
        self.shutdown_timeout = shutdown_timeout
        #: A client asked for by another instance is handed over once unused for this many seconds.
        self.handoff_grace = 1.0
        #: Seconds between housekeeping rounds (idle eviction, lease renewal, lost leases).
        self.housekeeping_interval = max(0.05, min(idle_timeout / 4, lease_ttl / 6, 30.0))
        #: A backend round trip slower than this makes ``health_check`` report "degraded".
        self.degraded_latency = 1.0
        #: A writer queue deeper than this makes ``health_check`` report "degraded".
        self.degraded_queue_depth = 10_000

        self._cache = ClientCache(directory, self, make_client)
        self._login = LoginSteps(directory, self._cache, self._cache.note_authorized)
        self._health = HealthCheck(directory, self._cache, self)
        self._closed = False
        self._closing: asyncio.Future[None] | None = None
        #: Clients disconnected because of ``max_active_clients`` / ``idle_timeout`` / a lost lease.
        self.evictions = self._cache.evictions

    def __repr__(self) -> str:
        return (
            f"<UserSessionManager {self._directory.where} holder={self.holder_id} "
            f"active={len(self._cache)}/{self.max_active_clients}>"
        )

    @property
    def bot_id(self) -> str:
        """The bot whose users these are."""
        return self._directory.bot_id

    @property
    def backend(self) -> str:
        """``"firestore"`` or ``"sqlite"``."""
        return self._directory.backend

    @property
    def active_clients(self) -> int:
        """How many clients this manager has open now."""
        return len(self._cache)

    # -- users ------------------------------------------------------------------------------------

    async def create_user_session(
        self, user_id: str | int, *, api_id: int | None = None, api_hash: str | None = None
    ) -> bool:
        """Make sure the user is registered: ``True`` once they are (new or not). Idempotent.

        The original system's ``success = await create_user_session(...)``; to know
        whether the user is new, call :meth:`register_user`.

        :param user_id: the user (str or int; checked by :func:`~telethon_firestore_session.ids.validate_id`).
        :param api_id: the user's own Telegram API id (optional; with ``api_hash``).
            Stored with the session, the hash sealed when a cipher is configured.
            New credentials for a known user replace theirs (an open client keeps
            the old ones until it is reopened).
        :param api_hash: the user's own Telegram API hash.
        :raises InvalidSessionIdError: for an id that could escape its place.
        :raises SessionStoreError: the backend failed (nothing was registered).
        """
        await self.register_user(user_id, api_id=api_id, api_hash=api_hash)
        return True

    async def register_user(
        self, user_id: str | int, *, api_id: int | None = None, api_hash: str | None = None
    ) -> bool:
        """Register a user like :meth:`create_user_session`; ``True`` if they are new, ``False`` if they were known.

        :param user_id: the user (str or int; checked by :func:`~telethon_firestore_session.ids.validate_id`).
        :param api_id: as in :meth:`create_user_session`.
        :param api_hash: as in :meth:`create_user_session`.
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
        While another live instance holds the user (Firestore), it is asked to hand
        the session over, and this waits up to ``handoff_timeout`` seconds.

        :param user_id: the user (str or int; checked by :func:`~telethon_firestore_session.ids.validate_id`).
        :raises SessionInUseError: another instance (lease) or process (file lock) has it.
        :raises SessionStoreError: the backend failed.
        :raises SessionClosedError: after :meth:`aclose`.
        """
        uid = validate_id("user_id", user_id)
        self._check_open()
        client: TelegramClient | None = await self._cache.logged_in_client(uid)
        return client

    async def is_logged_in(self, user_id: str | int) -> bool:
        """Whether the user is logged in, as last recorded (no Telegram round trip).

        :param user_id: the user (str or int; checked by :func:`~telethon_firestore_session.ids.validate_id`).
        """
        uid = validate_id("user_id", user_id)
        self._check_open()
        entry = self._cache.get(uid)
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

        :param user_id: the user (str or int; checked by :func:`~telethon_firestore_session.ids.validate_id`).
        :param phone: the phone number (any format Telethon parses).
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
        async with self._cache.lock(uid):
            result = await self._login.begin(uid, number, self.login_timeout)
        await self._cache.enforce_limit()
        return result

    async def complete_login(self, user_id: str | int, code: str | int, password: str | None = None) -> LoginResult:
        """Finish the pending login with the code (and the 2FA password if the account has one).

        Works in any instance that can open the session: the auth key that asked
        for the code is loaded from the store. ``password`` may come with the code
        or, after a ``PASSWORD_NEEDED`` result, in a second call (the code is then
        ignored).

        :param user_id: the user (str or int; checked by :func:`~telethon_firestore_session.ids.validate_id`).
        :param code: the code Telegram sent.
        :param password: the account's two-step verification password, if it has one.
        :returns: ``LOGGED_IN`` (with ``telegram_user_id``), ``ALREADY_LOGGED_IN``,
            ``PASSWORD_NEEDED``, ``INVALID_CODE``, ``CODE_EXPIRED``,
            ``INVALID_PASSWORD``, ``NO_PENDING_LOGIN``, ``SIGN_UP_REQUIRED``,
            ``FLOOD_WAIT`` or ``FAILED``.
        :raises SessionInUseError: another instance or process has the session.
        :raises SessionStoreError: the backend failed.
        """
        uid = validate_id("user_id", user_id)
        self._check_open()
        async with self._cache.lock(uid):
            result = await self._login.complete(uid, str(code).strip(), password)
        await self._cache.enforce_limit()
        return result

    # -- admin ------------------------------------------------------------------------------------

    async def delete_user_session(self, user_id: str | int, *, log_out: bool = True) -> bool:
        """Log the user's client out (with ``log_out``, when it can) and remove every stored record.

        Logging out makes Telegram forget the auth key; it needs the session to be
        free here (it is opened if needed). If Telegram cannot be reached the
        records are removed anyway.

        :param user_id: the user (str or int; checked by :func:`~telethon_firestore_session.ids.validate_id`).
        :param log_out: log the client out of Telegram first.
        :returns: ``True`` if there was anything to remove.
        :raises SessionInUseError: another instance or process has the session.
        :raises SessionStoreError: the backend failed.
        """
        uid = validate_id("user_id", user_id)
        self._check_open()
        async with self._cache.lock(uid):
            record: UserRecord | None = await self._call(self._directory.get_user, uid)
            entry = self._cache.get(uid)
            if log_out and entry is None and record is not None and record.has_auth_key is not False:
                entry = await self._cache.open(uid, login=True, record=record, require_auth_key=True)
            existed = record is not None or entry is not None
            if entry is not None:
                await self._cache.discard(entry, log_out=log_out)
            existed = bool(await self._call(self._directory.delete_user, uid)) or existed
        if existed:
            log.info("deleted the session of %s/%s", self.bot_id, uid)
        return existed

    async def health_check(self, timeout: float | None = None) -> dict[str, Any]:
        """The manager's health. Never raises; returns within about ``timeout`` seconds.

        ``status`` is ``"unhealthy"`` when the backend round trip fails or times
        out, ``"degraded"`` when it is slow (over ``degraded_latency``), the
        background writer failed writes since the last check or has a deep queue,
        or a lease was lost or cannot be renewed; otherwise ``"healthy"``.
        Also: ``backend_latency_ms``, ``error``, ``writer`` (``queue_depth``,
        ``failed_writes``, ``new_failed_writes``, ``last_error``), ``leases``
        (``held``, ``lost``, ``failing``, ``holder``, ``ttl``), ``active_clients``.

        :param timeout: seconds for the backend round trip; default ``health_timeout``.
        """
        return await self._health.run(self.health_timeout if timeout is None else timeout, closed=self._closed)

    def for_user(self, user_id: str | int) -> UserSession:
        """A handle that exposes only ``user_id``'s own client, login and session info.

        :param user_id: the user (str or int; checked by :func:`~telethon_firestore_session.ids.validate_id`).
        """
        return UserSession(self, validate_id("user_id", user_id))

    async def start_bot(self, client: TelegramClient, *, bot_token: str) -> TelegramClient:
        """Start the bot's client (on ``create_bot_session()``, already leased) and keep it until :meth:`aclose`.

        ``client.start(bot_token=...)`` logs in only if the stored session is not: a restart
        makes no new bot login. Another instance that asks for the bot session gets it at
        once: this client is flushed and disconnected (``run_until_disconnected()`` returns).

        :param client: a ``TelegramClient`` on :func:`~telethon_firestore_session.create_bot_session`'s session.
        :param bot_token: the bot's token.
        :raises ConfigError: ``client.session`` is not this bot's own session.
        """
        self._check_open()
        await self._cache.start_bot(client, bot_token, self._directory.bot_lease(client.session))
        return client

    async def aclose(self) -> None:
        """Flush every session, disconnect every client, release every lease. Idempotent.

        New calls fail with ``SessionClosedError`` at once; the rest is bounded by
        ``shutdown_timeout`` (what is not written by then is logged; leases not
        released then expire after ``lease_ttl``). A concurrent call waits for the first.
        """
        if self._closing is None:
            self._closed = True
            self._closing = asyncio.ensure_future(self._cache.aclose(time.monotonic() + self.shutdown_timeout))
        if not self._closing.done():
            await asyncio.shield(self._closing)


class UserSession:
    """One user's view of the manager: their own client, login and session info, nothing else.

    Returned by :meth:`UserSessionManager.for_user`. It has no listing, stats,
    cleanup or other users' operations, and no way to name another user.

    :param manager: the manager.
    :param user_id: the user, already validated.
    """

    __slots__ = ("__manager", "__user_id")

    def __init__(self, manager: UserSessionManager, user_id: str) -> None:
        self.__manager = manager
        self.__user_id = user_id

    def __repr__(self) -> str:
        return f"<UserSession {self.__user_id}>"

    @property
    def user_id(self) -> str:
        """The user."""
        return self.__user_id

    async def register(self, *, api_id: int | None = None, api_hash: str | None = None) -> bool:
        """Register this user; ``True`` if new (see :meth:`UserSessionManager.create_user_session`).

        :param api_id: the user's own Telegram API id (optional; with ``api_hash``).
        :param api_hash: the user's own Telegram API hash.
        """
        return await self.__manager.register_user(self.__user_id, api_id=api_id, api_hash=api_hash)

    async def get_client(self) -> TelegramClient | None:
        """This user's connected, logged-in client, or ``None`` (see ``get_user_client``)."""
        return await self.__manager.get_user_client(self.__user_id)

    async def begin_login(self, phone: str) -> LoginResult:
        """Send this user the login code; see :meth:`UserSessionManager.begin_login`.

        :param phone: the phone number.
        """
        return await self.__manager.begin_login(self.__user_id, phone)

    async def complete_login(self, code: str | int, password: str | None = None) -> LoginResult:
        """Finish this user's login; see :meth:`UserSessionManager.complete_login`.

        :param code: the code Telegram sent.
        :param password: the two-step verification password, if the account has one.
        """
        return await self.__manager.complete_login(self.__user_id, code, password)

    async def is_logged_in(self) -> bool:
        """Whether this user is logged in, as last recorded."""
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

    :param config: the configuration; default ``SessionConfig.from_env()`` (its client is then
        the manager's, closed by :meth:`~UserSessionManager.aclose`).
    :raises ConfigError: a missing or invalid setting, at start-up.
    """
    from telethon_firestore_session.config import SessionConfig

    # A configuration read here is ours alone, and so is the Firestore client built
    # from it: the manager closes it. A configuration passed in keeps its client.
    owns_config = config is None
    if config is None:
        config = SessionConfig.from_env()
    kwargs: dict[str, Any] = {
        "api_id": config.api_id,
        "api_hash": config.api_hash,
        "state_flush_interval": config.state_flush_interval,
        "entity_cache_mb": config.entity_cache_mb,
    }
    if config.render and config.instance_id:
        kwargs["holder_id"] = config.holder_id()  # Render's instance id in place of the container's host name
    kwargs.update(options)
    if "directory" not in kwargs:
        given = kwargs.pop("firestore_client", None)
        kwargs["directory"] = open_directory(
            kwargs.pop("backend", config.backend),
            config.bot_id,
            sessions_dir=kwargs.pop("sessions_dir", config.sessions_dir),
            firestore_client=given or config.firestore_client,  # the configuration's, built only for Firestore
            project=kwargs.pop("project", config.project),
            cipher=kwargs.pop("cipher", config.cipher),
            encrypt_pii=kwargs.pop("encrypt_pii", config.encrypt_pii),
            rpc_timeout=kwargs.get("rpc_timeout", 10.0),
            owns_client=owns_config and given is None,
        )
    return UserSessionManager(config.bot_id, **kwargs)
