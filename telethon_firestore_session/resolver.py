"""How a session finds an entity or a sent file that is not in memory: the store, through its breaker.

:class:`Resolver` answers ``get_input_entity`` for every key but a cached id (the
session answers that itself): it parses the key as Telethon does (phone, username,
invite link, display name, peers and TL objects), asks memory, then the store with
one point read or one query, and keeps the answer, "not found" included. A lookup
runs on the caller's thread (Telethon's ``get_input_entity`` is synchronous); while
the store's :class:`~telethon_firestore_session.breaker.LookupBreaker` is open it
answers "not found" at once, and nothing is cached.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from telethon import utils
from telethon.tl.tlobject import TLObject

from . import rows
from .entities import NAME, PHONE, USERNAME, EntityCache, Values, access_hash
from .errors import SessionCorruptError, SessionDecryptionError

if TYPE_CHECKING:
    from .core import EntityRow, FileKey, Store

__all__ = ["Resolver"]

log = logging.getLogger("telethon_firestore_session")

_FIELDS = ("username", "phone", "name")
_FAILED = object()  # the store could not answer (never cached, unlike "not found")

Found = tuple[int, "bytes | Values"]


class Resolver:
    """The lookups of one session: its :class:`EntityCache` first, then its store (if any)."""

    def __init__(self, cache: EntityCache, store: Store | None) -> None:
        self.cache = cache
        #: ``None`` without a store, and once the session is deleted: memory only.
        self.store = store

    def input_entity(self, key: Any) -> Any:
        """``get_input_entity(key)``; raises ``ValueError`` (Telethon then asks Telegram) if unknown."""
        kind = type(key)
        if kind is int:
            exact = key < 0
        elif kind is str:
            exact = True
        else:
            try:
                if key.SUBCLASS_OF_ID in rows.INPUT_SUBCLASSES:
                    return key
                return utils.get_input_peer(key)
            except (AttributeError, TypeError):
                if isinstance(key, TLObject):
                    key = utils.get_peer_id(key)
                    exact = True
                else:
                    exact = not isinstance(key, int) or key < 0
        result: Found | None = None
        if isinstance(key, str):
            phone = utils.parse_phone(key)
            if phone:
                result = self._lookup(PHONE, phone)
            else:
                username, invite = utils.parse_username(key)
                if username and not invite:
                    result = self._lookup(USERNAME, username)
                elif tup := utils.resolve_invite_link(key)[1]:
                    result = self._lookup_ids(rows.candidate_ids(tup))
            if result is None:
                result = self._lookup(NAME, key)
        elif isinstance(key, int):
            result = self._lookup_ids((key,) if exact else rows.candidate_ids(key))
        if result is None:
            raise ValueError("Could not find input entity with key ", key)
        return rows.input_peer(result[0], access_hash(result[1]))

    def find_file(self, key: FileKey) -> tuple[int, int] | None:
        """A sent file that is not in memory, from the store (misses are cached)."""
        if self.store is None or self.cache.missed(("file", key)):
            return None
        value = self._ask(lambda s: s.find_file(key))
        if value is None:
            self.cache.add_miss(("file", key))
        return None if value is _FAILED else value

    def _lookup(self, tag: int, value: str) -> Found | None:
        cache = self.cache
        eid = cache.find(tag, value)
        if eid is not None:
            return eid, cache.records[eid]
        field = _FIELDS[tag]
        found = self._load(("f", tag, value), lambda s: s.find_entity(field, value))
        # The store may hold an older version of an entity that memory has changed since.
        return found if found is None or cache.has_field(found[0], tag, value) else None

    def _lookup_ids(self, ids: Sequence[int]) -> Found | None:
        """The first of ``ids`` that exists in memory or in the store (order is preference)."""
        records = self.cache.records
        unknown: list[int] = []  # preferred ids that only the store can rule out
        for eid in ids:
            rec = records.get(eid)
            if rec is not None:
                records[eid] = records.pop(eid)  # now the most recent
                # A less preferred id in memory must not shadow a preferred one in the store
                # (a bare id that is a user there and a channel here); ask once, then it is cached.
                if unknown:
                    found = self._load_ids(unknown)
                    if found is not None:
                        return found
                return eid, rec
            if self.store is not None and not self.cache.missed(("i", eid)):
                unknown.append(eid)
        return self._load_ids(unknown) if unknown else None

    def _ask(self, query: Callable[[Store], Any]) -> Any:
        """``query(store)``, or ``_FAILED`` (at once while the store's breaker is open)."""
        store = self.store
        assert store is not None
        breaker = store.breaker
        if breaker is not None and breaker.open:
            return _FAILED
        try:
            return query(store)
        except (SessionDecryptionError, SessionCorruptError) as exc:  # the store answered; the record is unusable
            log.warning("lookup in %s failed (%s): %s", store.where, type(exc).__name__, exc)
        except Exception as exc:  # noqa: BLE001 - a failed lookup is a miss, never a crash
            if breaker is not None:
                breaker.trip(exc, store.probe)
        return _FAILED

    def _load_ids(self, ids: Sequence[int]) -> Found | None:
        """Ask the store for the first of ``ids``; every id before the answer is cached as a miss."""
        row = self._ask(lambda s: s.find_entity_by_ids(ids))
        if row is _FAILED:
            return None
        for eid in ids:
            if row is not None and eid == row.id:
                break
            self.cache.add_miss(("i", eid))
        return self._adopt(row) if row is not None else None

    def _load(self, miss_key: tuple[Any, ...], query: Callable[[Store], Any]) -> Found | None:
        if self.store is None or self.cache.missed(miss_key):
            return None
        row = self._ask(query)
        if row is _FAILED:
            return None
        if row is None:
            self.cache.add_miss(miss_key)
            return None
        return self._adopt(row)

    def _adopt(self, row: EntityRow) -> Found:
        """Keep a row read from the store in memory, unless memory has the entity already (it is newer)."""
        cache = self.cache
        current = cache.records.get(row.id)
        if current is None:
            cache.put(row.id, (row.hash, row.username, row.phone, row.name), None, dirty=False)
            current = cache.records[row.id]
            cache.use(1)
        return row.id, current
