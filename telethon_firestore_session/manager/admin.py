"""The manager's plumbing and its read-mostly administration: listing, statistics, cleanup.

A base class of :class:`~telethon_firestore_session.manager.UserSessionManager`, which
documents the whole interface; what these methods cost is stated on each.
"""

from __future__ import annotations

import abc
import asyncio
import datetime
import logging
from collections.abc import Callable
from typing import Any

from telethon_firestore_session.errors import SessionClosedError

from .cache import ClientCache
from .directory import SessionDirectory, UserRecord
from .records import UserSessionInfo

__all__ = ["Administration"]

log = logging.getLogger(__name__)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class Administration(abc.ABC):
    """Listing, statistics and cleanup over the manager's directory and open clients."""

    _directory: SessionDirectory
    _cache: ClientCache
    _closed: bool
    holder_id: str
    max_active_clients: int

    @property
    @abc.abstractmethod
    def bot_id(self) -> str:
        """The bot whose users these are."""

    @property
    @abc.abstractmethod
    def backend(self) -> str:
        """``"firestore"`` or ``"sqlite"``."""

    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosedError("the UserSessionManager was closed")

    @staticmethod
    async def _call(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(func, *args, **kwargs)

    # -- listing, statistics, cleanup ----------------------------------------------------------

    async def list_user_sessions(self) -> list[UserSessionInfo]:
        """Every registered user of the bot, sorted by id (one query; no secrets)."""
        self._check_open()
        records: list[UserRecord] = await self._call(self._directory.list_users)
        now = _now()
        return [self._info(r, now) for r in records]

    def _info(self, r: UserRecord, now: datetime.datetime) -> UserSessionInfo:
        return UserSessionInfo.from_record(r, active=r.user_id in self._cache, holder_id=self.holder_id, now=now)

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
            "active_sessions": len(self._cache),
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

        :param days: the age, in days, of the oldest ``last_active_at`` kept.
        :param dry_run: only list what would be removed.
        :returns: the user ids removed (with ``dry_run``, those that would be).
        """
        self._check_open()
        if days < 0:
            raise ValueError("days must not be negative")
        cutoff = _now() - datetime.timedelta(days=days)
        found = await self._call(self._directory.find_inactive, cutoff)
        candidates = [u for u in found if u.user_id not in self._cache and not self._cache.busy(u.user_id)]
        if dry_run:
            return [u.user_id for u in candidates]
        removed: list[str] = await self._call(self._directory.delete_inactive, candidates)
        if removed:
            log.info("cleanup removed %d session(s) of %s inactive since %s", len(removed), self.bot_id, cutoff)
        return removed
