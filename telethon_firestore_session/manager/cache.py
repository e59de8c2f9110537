"""The manager's client cache: opening and closing clients, one lock per user, eviction, leases.

A :class:`ClientCache` holds the clients that one
:class:`~telethon_firestore_session.manager.UserSessionManager` has open
(:class:`OpenClient`), least recently used first. Opening a client leases the
session (Firestore), loads it and connects. The cache closes the least recently
used client above ``max_active_clients``, and, every ``housekeeping_interval``
seconds, the clients unused for ``idle_timeout`` seconds or whose lease another
instance took over. Closing a client flushes its session first (waiting at most
``flush_timeout``), then disconnects it and releases its lease.

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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from telethon_firestore_session.errors import SessionClosedError, SessionError
from telethon_firestore_session.writer import BackgroundWriter

if TYPE_CHECKING:
    from telethon_firestore_session.core import SessionCore, Store
    from telethon_firestore_session.firestore.lease import FirestoreLease

    from .directory import SessionDirectory, UserRecord

__all__ = ["CacheSettings", "ClientCache", "OpenClient", "renew_due"]

log = logging.getLogger(__name__)


class OpenClient:
    """A connected client in the cache, with its session and (Firestore) lease."""

    __slots__ = ("authorized", "client", "last_used", "lease", "login_pending", "session", "user_id")

    def __init__(self, user_id: str, client: Any, session: SessionCore, lease: FirestoreLease | None) -> None:
        self.user_id = user_id
        self.client = client
        self.session = session
        self.lease = lease
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

    def gone(self) -> bool:
        """Logged out or disconnected behind our back, or its lease was taken over."""
        if self.lease is not None and self.lease.lost:
            return True
        return self.client.session is None or not self.client.is_connected()


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
        self._closed = False
        #: Clients closed because of ``max_active_clients`` / ``idle_timeout`` / a lost lease.
        self.evictions = {"lru": 0, "idle": 0, "lost_lease": 0}

    def __len__(self) -> int:
        return len(self._entries)

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
            if entry.lease is not None and entry.lease.lost:
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
        if lease is not None and not await asyncio.to_thread(lease.acquire):
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

    def _add(self, entry: OpenClient) -> None:
        self._entries[entry.user_id] = entry
        if entry.lease is not None:
            self._leases = (*self._leases, entry.lease)
        if self._closed:
            return  # aclose() is closing everything, this one too
        task = self._housekeeper
        if task is None or task.done():
            self._housekeeper = asyncio.get_running_loop().create_task(
                self._housekeeping(), name=f"UserSessionManager housekeeping {self._directory.bot_id}"
            )
        if self._renewer is None and self._directory.uses_leases:
            self._renewer = _LeaseRenewer(self, f"lease renewer of {self._settings.holder_id}")
            BackgroundWriter.get().register_periodic(cast("Store", self._renewer))

    # -- closing -------------------------------------------------------------------------------

    async def close(self, entry: OpenClient) -> bool:
        """Forget, flush, disconnect and release (call with the user's lock held). ``False`` if the flush timed out."""
        where = f"{self._directory.bot_id}/{entry.user_id}"
        self._remove(entry)
        flushed = True
        session = entry.session
        if entry.client.session is not None:
            try:
                session.save()  # a changed auth key is written through; the rest goes to the writer
            except Exception as exc:  # noqa: BLE001 - closing continues; the writer keeps retrying
                flushed = False
                log.warning("saving %s before closing failed: %s", where, type(exc).__name__)
            # Wait for the writer off the event loop, so that disconnect() below finds little to do.
            flushed = await asyncio.to_thread(session.wait_written, self._settings.flush_timeout) and flushed
            if not flushed:
                log.warning("closing %s before its session was written (the writer keeps retrying)", where)
        try:
            await entry.client.disconnect()  # Telethon saves states and entities, then closes the session
        except Exception as exc:  # noqa: BLE001 - a failed disconnect must not keep the entry alive
            log.warning("disconnecting %s failed: %s", where, type(exc).__name__)
        if entry.lease is not None:
            await asyncio.to_thread(entry.lease.release)
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
        while len(self._entries) > self._settings.max_active_clients:
            victim = next((e for uid, e in self._entries.items() if not self.busy(uid)), None)
            if victim is None:
                return  # every client is busy; the next call tries again
            async with self.lock(victim.user_id):
                if (
                    self._entries.get(victim.user_id) is victim
                    and len(self._entries) > self._settings.max_active_clients
                ):
                    self.evictions["lru"] += 1
                    await self.close(victim)

    async def _housekeeping(self) -> None:
        """Idle eviction, lost leases, and lease renewal (besides the writer's), every tick."""
        while not self._closed:
            await asyncio.sleep(self._settings.housekeeping_interval)
            try:
                now = time.time()
                for uid, entry in list(self._entries.items()):
                    lost = entry.lease is not None and entry.lease.lost
                    if not lost and entry.idle_for(now) < self._settings.idle_timeout:
                        continue
                    lock = self.lock(uid)
                    if lock.locked():
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

    async def aclose(self) -> None:
        """Stop the housekeeping, close every client, stop renewing leases."""
        self._closed = True
        task, self._housekeeper = self._housekeeper, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        async def close(entry: OpenClient) -> None:
            async with self.lock(entry.user_id):
                if self._entries.get(entry.user_id) is entry:
                    await self.close(entry)

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
