"""The manager's client cache: opening and closing clients, one lock per user, eviction, leases.

A :class:`ClientCache` holds the clients that one
:class:`~telethon_firestore_session.manager.UserSessionManager` has open
(:class:`OpenClient`), least recently used first. Opening a client leases the
session (Firestore; while another live instance holds it, that instance is asked
to hand it over and the cache waits up to ``handoff_timeout``), loads it and
connects. The cache closes the least recently used client above
``max_active_clients``, and, every ``housekeeping_interval`` seconds, the clients
unused for ``idle_timeout`` seconds or whose lease was lost (taken over, or past
its deadline). Closing a client flushes its session first (waiting at most
``flush_timeout``), then disconnects it and releases its lease.

Hand-over: one listener per cache (:meth:`SessionDirectory.watch_handoffs`) learns
that another instance asks for a session held here; the client is closed as soon
as it has not been used for ``handoff_grace`` seconds (the bot's own client at
once). The other instance connects only after the lease is released, which
follows the disconnect: never two connections on one auth key.

Everything runs on the event loop, except lease renewal: the leases of the open
clients are kept as a tuple, replaced (never changed) whenever a client opens or
closes, which the background writer's thread reads to renew them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from telethon_firestore_session.errors import ConfigError, SessionClosedError, SessionError
from telethon_firestore_session.firestore.lease import HANDOFF_POLL
from telethon_firestore_session.writer import BackgroundWriter

if TYPE_CHECKING:
    from telethon_firestore_session.core import SessionCore, Store
    from telethon_firestore_session.firestore.lease import FirestoreLease

    from .directory import ApiCredentials, SessionDirectory, UserRecord

__all__ = ["CacheSettings", "ClientCache", "OpenClient", "renew_due"]

log = logging.getLogger(__name__)

#: The key of the bot's own client (``#`` is in no user id).
BOT = "#bot"


class OpenClient:
    """A connected client in the cache, with its session and (Firestore) lease."""

    __slots__ = ("authorized", "client", "last_used", "lease", "login_pending", "pinned", "session", "user_id")

    def __init__(
        self, user_id: str, client: Any, session: SessionCore, lease: FirestoreLease | None, *, pinned: bool = False
    ) -> None:
        self.user_id = user_id
        self.client = client
        self.session = session
        self.lease = lease
        #: The bot's own client: never evicted, handed over at once.
        self.pinned = pinned
        #: Whether Telegram says the client is logged in (``None``: not asked yet).
        self.authorized: bool | None = None
        self.login_pending = False
        self.last_used = time.time()

    def idle_for(self, now: float) -> float:
        # Telethon stamps every RPC it makes in ``_last_request`` (wall clock), so a client
        # the application keeps using is not idle even if it never comes back to the manager.
        # Telethon has no public "last used" time; getattr keeps this working if it goes.
        last = max(self.last_used, float(getattr(self.client, "_last_request", 0.0) or 0.0))
        return now - last

    def lost(self) -> bool:
        """Its lease was taken over or passed its deadline (see :meth:`FirestoreLease.held`)."""
        return self.lease is not None and not self.lease.held()

    def gone(self) -> bool:
        """Logged out or disconnected behind our back, or its lease was lost."""
        return self.lost() or self.client.session is None or not self.client.is_connected()


class CacheSettings(Protocol):
    """The manager's settings that the cache reads at each use (so that changing them takes effect)."""

    max_active_clients: int
    idle_timeout: float
    flush_interval: float
    state_flush_interval: float
    flush_timeout: float
    housekeeping_interval: float
    holder_id: str
    lease_ttl: float
    handoff_timeout: float
    handoff_grace: float


def client_maker(
    factory: Callable[..., Any], default: ApiCredentials | None, kwargs: Mapping[str, Any]
) -> Callable[[SessionCore, UserRecord], Any]:
    """A cache's ``make_client``: ``factory(session, api_id, api_hash, **kwargs)``, with the user's credentials
    or ``default``."""

    def make(session: SessionCore, record: UserRecord) -> Any:
        creds = record.api_credentials or default
        if creds is None:
            raise ConfigError(
                "API_ID",
                f"user {record.user_id} has no api_id/api_hash of their own and the manager has no default "
                "(pass api_id= and api_hash=, or set API_ID and API_HASH)",
            )
        return factory(session, creds.api_id, creds.api_hash, **kwargs)

    return make


def renew_due(leases: Sequence[FirestoreLease]) -> None:
    """Renew the leases that are due; stop at the first failure (Firestore is probably down). Blocks."""
    for lease in leases:
        before = lease.failed_renewals
        lease.renew_if_due()
        if lease.failed_renewals > before:
            return


class _LeaseRenewer:
    """Registered with the background writer: renews the cache's due leases from its thread."""

    def __init__(self, cache: ClientCache, where: str) -> None:
        self._cache = weakref.ref(cache)
        self.where = where

    def periodic(self) -> None:
        cache = self._cache()
        if cache is not None:
            renew_due(cache.leases)


class ClientCache:
    """The clients one manager has open, least recently used first; see the module docstring.

    :param directory: where the sessions and the users' records live.
    :param settings: the timeouts, limits and lease holder: the manager's (see :class:`CacheSettings`).
    :param make_client: builds a (not yet connected) client on a session, for a user's record.
    """

    def __init__(
        self,
        directory: SessionDirectory,
        settings: CacheSettings,
        make_client: Callable[[SessionCore, UserRecord], Any],
    ) -> None:
        self._directory = directory
        self._settings = settings
        self._make_client = make_client
        self._entries: OrderedDict[str, OpenClient] = OrderedDict()
        self._leases: tuple[FirestoreLease, ...] = ()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._housekeeper: asyncio.Task[None] | None = None
        self._renewer: _LeaseRenewer | None = None
        self._watches: dict[bool, Callable[[], None] | None] = {}  # bot? -> stops its hand-over listener
        self._handoffs: dict[str, asyncio.Task[None]] = {}
        self._closed = False
        #: Clients closed because of ``max_active_clients`` / ``idle_timeout`` / a lost lease / a hand-over.
        self.evictions = {"lru": 0, "idle": 0, "lost_lease": 0, "handoff": 0}

    def __len__(self) -> int:
        """The users' clients open (the bot's own is not one of them)."""
        return len(self._entries) - (BOT in self._entries)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._entries

    def get(self, user_id: str) -> OpenClient | None:
        return self._entries.get(user_id)

    @property
    def leases(self) -> tuple[FirestoreLease, ...]:
        """The leases of the open clients: a snapshot that any thread may read."""
        return self._leases

    def lock(self, user_id: str) -> asyncio.Lock:
        """The user's lock: whoever opens, uses for a login, or closes the user's client holds it."""
        lock = self._locks.get(user_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[user_id] = lock
        return lock

    def busy(self, user_id: str) -> bool:
        """Someone holds the user's lock now."""
        lock = self._locks.get(user_id)
        return lock is not None and lock.locked()

    def _remove(self, entry: OpenClient) -> None:
        if self._entries.get(entry.user_id) is entry:
            del self._entries[entry.user_id]
        if entry.lease is not None:
            self._leases = tuple(lease for lease in self._leases if lease is not entry.lease)

    # -- opening -------------------------------------------------------------------------------

    async def open(
        self, uid: str, *, login: bool, record: UserRecord | None = None, require_auth_key: bool | None = None
    ) -> OpenClient | None:
        """The user's client: the cached one, or one opened now (call with the user's lock held).

        A cached client that is gone (:meth:`OpenClient.gone`) is closed and replaced.
        ``None`` for an unknown user, and for one whose session has no auth key unless
        ``login`` (connecting creates one) and not ``require_auth_key``.
        """
        if require_auth_key is None:
            require_auth_key = not login
        entry = self._entries.get(uid)
        if entry is not None:
            if not entry.gone():
                self._entries.move_to_end(uid)
                entry.last_used = time.time()
                return entry
            if entry.lost():
                self.evictions["lost_lease"] += 1
            await self.close(entry)
        if record is None:
            record = await asyncio.to_thread(self._directory.get_user, uid)
        if record is None or (require_auth_key and record.has_auth_key is False):
            return None
        return await self._connect(record, require_auth_key=require_auth_key)

    async def _connect(self, record: UserRecord, *, require_auth_key: bool) -> OpenClient | None:
        """Lease, load and connect the user's session, and cache the client."""
        uid = record.user_id
        settings = self._settings
        lease = self._directory.new_lease(uid, holder=settings.holder_id, ttl=settings.lease_ttl)
        if lease is not None and not await self._acquire(lease):
            return None  # deleted meanwhile
        session: SessionCore | None = None
        client: Any = None
        try:
            session = await asyncio.to_thread(
                self._directory.open_session,
                uid,
                flush_interval=settings.flush_interval,
                state_flush_interval=settings.state_flush_interval,
                close_timeout=min(settings.flush_timeout, 1.0),
                lease=lease,
            )
            if require_auth_key and session.auth_key is None:
                await asyncio.to_thread(session.close)
                if lease is not None:
                    await asyncio.to_thread(lease.release)
                return None
            client = self._make_client(session, record)
            await client.connect()
            if self._closed:
                raise SessionClosedError("the UserSessionManager was closed while opening a client")
        except BaseException:  # undo on any failure, cancellation too; re-raised below
            with contextlib.suppress(Exception):  # the original error is what matters
                if client is not None:
                    await client.disconnect()
                elif session is not None:
                    await asyncio.to_thread(session.close)
            if lease is not None:
                await asyncio.to_thread(lease.release)
            raise
        try:
            await asyncio.to_thread(self._directory.touch, uid)
        except SessionError as exc:
            log.warning("cannot record the activity of %s/%s: %s", self._directory.bot_id, uid, exc)
        entry = OpenClient(uid, client, session, lease)
        entry.login_pending = record.pending_login is not None
        self._add(entry)
        log.debug("opened the client of %s/%s", self._directory.bot_id, uid)
        return entry

    async def note_authorized(self, uid: str, authorized: bool) -> None:
        """Record whether Telegram says the user is logged in (a failure is logged)."""
        try:
            await asyncio.to_thread(self._directory.update_user, uid, logged_in=authorized)
        except SessionError as exc:
            log.warning("cannot record the login state of %s/%s: %s", self._directory.bot_id, uid, exc)

    async def logged_in_client(self, uid: str) -> Any | None:
        """The user's client if it is logged in (Telegram is asked once per client, the answer recorded)."""
        async with self.lock(uid):
            entry = await self.open(uid, login=False)
            if entry is None:
                return None
            if entry.authorized is None:
                entry.authorized = bool(await entry.client.is_user_authorized())
                await self.note_authorized(uid, entry.authorized)
            client = entry.client if entry.authorized else None
            if client is None and not entry.login_pending:
                await self.close(entry)
        await self.enforce_limit()
        return client

    async def _acquire(self, lease: FirestoreLease) -> bool:
        """Take the lease, asking a live holder to hand it over; waits up to ``handoff_timeout``, holding no thread."""
        timeout = self._settings.handoff_timeout
        deadline = time.monotonic() + timeout
        while (acquired := await asyncio.to_thread(lease.try_acquire, ask=timeout > 0)) is None:
            if time.monotonic() >= deadline or self._closed:
                raise lease.refusal()
            await asyncio.sleep(HANDOFF_POLL)
        return acquired

    def _add(self, entry: OpenClient) -> None:
        self._entries[entry.user_id] = entry
        if entry.lease is not None:
            self._leases = (*self._leases, entry.lease)
        if self._closed:
            return  # aclose() is closing everything, this one too
        if entry.lease is not None:
            self._watch(entry)
        task = self._housekeeper
        if task is None or task.done():
            self._housekeeper = asyncio.get_running_loop().create_task(
                self._housekeeping(), name=f"UserSessionManager housekeeping {self._directory.bot_id}"
            )
        if self._renewer is None and self._directory.uses_leases:
            self._renewer = _LeaseRenewer(self, f"lease renewer of {self._settings.holder_id}")
            BackgroundWriter.get().register_periodic(cast("Store", self._renewer))

    async def start_bot(self, client: Any, bot_token: str, lease: FirestoreLease | None) -> None:
        """Start the bot's own client and keep it: never evicted, handed over at once (see ``start_bot``)."""
        async with self.lock(BOT):
            await client.start(bot_token=bot_token)
            self._add(OpenClient(BOT, client, client.session, lease, pinned=True))

    # -- hand-over ----------------------------------------------------------------------------

    def _watch(self, entry: OpenClient) -> None:
        """Start the hand-over listener of the users' sessions (or of the bot's) once."""
        assert entry.lease is not None
        if entry.pinned in self._watches:
            return
        loop = asyncio.get_running_loop()
        key = entry.user_id if entry.pinned else None

        def requested(doc_id: str) -> None:  # on the listener's thread
            loop.call_soon_threadsafe(self._handoff_requested, key or doc_id)

        self._watches[entry.pinned] = self._directory.watch_handoffs(entry.lease.holder, requested, bot=entry.pinned)

    def _handoff_requested(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is not None and key not in self._handoffs and not self._closed:
            self._handoffs[key] = asyncio.get_running_loop().create_task(self._hand_over(entry))

    async def _hand_over(self, entry: OpenClient) -> None:
        """Close ``entry`` once it has not been used for ``handoff_grace`` seconds (the bot's at once)."""
        try:
            lock = self.lock(entry.user_id)
            while self._entries.get(entry.user_id) is entry:
                wait = 0.0 if entry.pinned else self._settings.handoff_grace - entry.idle_for(time.time())
                if wait <= 0 and not lock.locked():
                    async with lock:
                        if self._entries.get(entry.user_id) is entry:
                            self.evictions["handoff"] += 1
                            log.info("handing %s/%s over to another instance", self._directory.bot_id, entry.user_id)
                            await self.close(entry)
                    return
                await asyncio.sleep(max(wait, 0.05))
        finally:
            self._handoffs.pop(entry.user_id, None)

    # -- closing -------------------------------------------------------------------------------

    async def close(self, entry: OpenClient, *, deadline: float | None = None) -> bool:
        """Forget, flush, disconnect and release (call with the user's lock held). ``False`` if the flush timed out.

        A client whose lease is lost is not flushed: its writes would be refused (fencing).
        With ``deadline`` (monotonic) the flush waits at most three quarters of the time
        left, and the lease is released only before it.
        """
        where = f"{self._directory.bot_id}/{entry.user_id}"
        self._remove(entry)
        flushed = True
        session = entry.session
        if entry.client.session is not None and not entry.lost():
            wait = self._settings.flush_timeout
            if deadline is not None:
                wait = max(0.0, min(wait, (deadline - time.monotonic()) * 0.75))
            try:
                session.save()  # a changed auth key is written through; the rest goes to the writer
            except Exception as exc:  # noqa: BLE001 - closing continues; the writer keeps retrying
                flushed = False
                log.warning("saving %s before closing failed: %s", where, type(exc).__name__)
            # Wait for the writer off the event loop, so that disconnect() below finds little to do.
            flushed = await asyncio.to_thread(session.wait_written, wait) and flushed
            if not flushed:
                log.warning("closing %s before its session was written (the writer keeps retrying)", where)
        try:
            await entry.client.disconnect()  # Telethon saves states and entities, then closes the session
        except Exception as exc:  # noqa: BLE001 - a failed disconnect must not keep the entry alive
            log.warning("disconnecting %s failed: %s", where, type(exc).__name__)
        if entry.lease is not None:
            await asyncio.to_thread(entry.lease.release, deadline)
        if not entry.pinned:
            with contextlib.suppress(SessionError, OSError):
                await asyncio.to_thread(self._directory.touch, entry.user_id)
        log.debug("closed the client of %s", where)
        return flushed

    async def discard(self, entry: OpenClient, *, log_out: bool) -> None:
        """Forget the client and drop its session's records (call with the user's lock held).

        With ``log_out`` the client logs out first, which makes Telegram forget the auth
        key; if that fails, or without ``log_out``, it is disconnected and its session deleted.
        """
        self._remove(entry)
        logged_out = False
        if log_out and entry.session.auth_key is not None and entry.client.session is not None:
            try:
                logged_out = bool(await entry.client.log_out())  # disconnects and deletes the session
            except Exception as exc:  # noqa: BLE001 - the records are removed anyway
                log.warning("logging %s/%s out failed: %s", self._directory.bot_id, entry.user_id, type(exc).__name__)
        if not logged_out:
            with contextlib.suppress(Exception):  # the session is deleted next either way
                await entry.client.disconnect()
            await asyncio.to_thread(entry.session.delete)  # drops pending writes first
        if entry.lease is not None:
            await asyncio.to_thread(entry.lease.release)

    async def enforce_limit(self) -> None:
        """Close least recently used clients above ``max_active_clients`` (never one whose lock is held)."""
        while len(self) > self._settings.max_active_clients:
            victim = next((e for uid, e in self._entries.items() if not e.pinned and not self.busy(uid)), None)
            if victim is None:
                return  # every client is busy; the next call tries again
            async with self.lock(victim.user_id):
                if self._entries.get(victim.user_id) is victim and len(self) > self._settings.max_active_clients:
                    self.evictions["lru"] += 1
                    await self.close(victim)

    async def _housekeeping(self) -> None:
        """Idle eviction, lost leases, and lease renewal (besides the writer's), every tick."""
        while not self._closed:
            await asyncio.sleep(self._settings.housekeeping_interval)
            try:
                now = time.time()
                for uid, entry in list(self._entries.items()):
                    lost = entry.lost()
                    stale = entry.gone() if entry.pinned else entry.idle_for(now) >= self._settings.idle_timeout
                    lock = self.lock(uid)
                    if not (lost or stale) or lock.locked():
                        continue
                    async with lock:
                        if self._entries.get(uid) is not entry:
                            continue
                        self.evictions["lost_lease" if lost else "idle"] += 1
                        await self.close(entry)
                if self._leases:
                    await asyncio.to_thread(renew_due, self._leases)
            except Exception:  # housekeeping must survive anything
                log.exception("housekeeping of %s failed; trying again", self._directory.bot_id)

    async def aclose(self, deadline: float) -> None:
        """Stop handing out and watching, close every client by ``deadline`` (monotonic), stop renewing leases.

        Then close the directory (and a Firestore client it built)."""
        self._closed = True
        for stop in self._watches.values():
            if stop is not None:
                stop()
        tasks = [t for t in (self._housekeeper, *self._handoffs.values()) if t is not None]
        self._housekeeper = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

        async def close(entry: OpenClient) -> None:
            async with self.lock(entry.user_id):
                if self._entries.get(entry.user_id) is entry:
                    await self.close(entry, deadline=deadline)

        for _ in range(3):  # a call already past its checks may still add a client once
            if not self._entries:
                break
            results = await asyncio.gather(*(close(e) for e in list(self._entries.values())), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    log.warning("closing a client failed: %s", type(result).__name__)
        if self._renewer is not None:
            BackgroundWriter.get().unregister_periodic(cast("Store", self._renewer))
            self._renewer = None
        await asyncio.to_thread(self._directory.close)
