"""Cached entities: one compact record per entity, one index, and one memory budget per process.

:class:`EntityCache` holds one session's entities in memory. Each entity is one
``bytes`` record (the access hash as 8 little-endian bytes, a byte of flags telling
``None`` from ``""``, then the UTF-8 username, phone and display name joined by
``0x1f``), and one dictionary indexes all three fields: its keys are 60 bits of the
field's hash with the field's tag in the high bits, its values the entity id itself
(the same ``int`` object as the record's key, so they cost nothing). A lookup checks
the record's field against the query, so a hash collision can only miss, and the rare
colliding values are kept in a small exact side map. That is about 370 bytes per
entity with its index (``benchmarks``: "bytes per cached entity"), against about 720
for tuples with three string-keyed indexes and 380 for Telethon's ``MemorySession``.

:class:`EntityBudget` bounds the entities cached by every session of the process
together (default :data:`DEFAULT_ENTITY_CACHE_MB`). Each cache keeps its records in
recency order (a hit or an entity seen again moves to the end); over the budget, the
least recently used sessions lose their least recently used entities, a few percent
at a time. An entity whose change is not stored yet (pending, or handed to the
background writer) is never evicted, and an evicted one is still found: a lookup that
misses memory asks the store, and the answer is cached again.
"""

from __future__ import annotations

import itertools
import operator
import struct
import sys
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, Protocol

from telethon.tl import types

from .rows import generic_row, row_function

__all__ = [
    "DEFAULT_ENTITY_CACHE_MB",
    "MAX_MISSES",
    "OBJECT_BYTES",
    "EntityBudget",
    "EntityCache",
    "Values",
    "decode",
    "encode",
]

#: The budget of cached entities in a process unless configured (``SESSION_ENTITY_CACHE_MB``).
DEFAULT_ENTITY_CACHE_MB = 32.0
#: Bytes of the objects of one cached entity besides its record's text: the id and three index
#: keys (``int``, 32 bytes each) and the record's ``bytes`` header (33) with its binary head (9).
OBJECT_BYTES = 4 * 32 + 33 + 9
#: Cached "not found" answers kept per session (beyond that they are forgotten and asked again).
MAX_MISSES = 1_000
#: Each eviction frees this fraction of the budget at once (evicting one at a time would be O(n) each).
_BATCH = 50
#: A dictionary with more bytes than this per entry is copied after an eviction (copies are compact).
_SPARSE = 200

USERNAME, PHONE, NAME = 0, 1, 2
_TAGS = (USERNAME, PHONE, NAME)
#: ``(access hash, username, phone, display name)``.
Values = tuple[int, "str | None", "str | None", "str | None"]

_SEP = "\x1f"
_HEAD = struct.Struct("<qB")
_HASH = struct.Struct("<q")
_MASK = (1 << 60) - 1
_PHONE_KEY = PHONE << 60
_NAME_KEY = NAME << 60
_clock = itertools.count()


def encode(h: int, username: str | None, phone: str | None, name: str | None) -> bytes | Values:
    """The record of an entity: bytes, or the tuple itself for values that cannot be joined (rare)."""
    text = f"{username or ''}{_SEP}{phone or ''}{_SEP}{name or ''}"
    if text.count(_SEP) != 2:
        return (h, username, phone, name)
    try:
        data = text.encode()
    except UnicodeEncodeError:  # a lone surrogate
        return (h, username, phone, name)
    return _HEAD.pack(h, (username is None) | (phone is None) << 1 | (name is None) << 2) + data


def decode(rec: bytes | Values) -> Values:
    if type(rec) is tuple:
        return rec
    assert isinstance(rec, bytes)
    h, flags = _HEAD.unpack_from(rec)
    u, p, n = rec[9:].decode().split(_SEP)
    return (h, None if flags & 1 else u, None if flags & 2 else p, None if flags & 4 else n)


def access_hash(rec: bytes | Values) -> int:
    return _HASH.unpack_from(rec)[0] if type(rec) is bytes else rec[0]


def _field(rec: bytes | Values, tag: int) -> str | None:
    if type(rec) is tuple:
        return rec[1:][tag]
    assert isinstance(rec, bytes)
    if rec[8] >> tag & 1:
        return None
    return rec[9:].decode().split(_SEP)[tag]


def _size(rec: bytes | Values) -> int:
    """The text of a record, in bytes (a tuple, for odd values, counts as 100)."""
    return len(rec) - 9 if type(rec) is bytes else 100


def _key(tag: int, value: str) -> int:
    return (hash(value) & _MASK) | (tag << 60)


class _Batch(Protocol):
    """A hand-off to the writer (``core.Handoff``): its records stay until it is written."""

    entities: list[int]
    files: set[Any]
    written: bool


class EntityCache:
    """One session's cached entities: records in recency order and their lookup index.

    Used from the session's thread; the background writer only reads records (one
    dictionary lookup each) of entities that cannot be evicted meanwhile.
    """

    __slots__ = (
        "__weakref__",
        "budget",
        "dirty",
        "evict_due",
        "exact",
        "handed",
        "index",
        "misses",
        "owner",
        "records",
        "text_bytes",
        "track",
        "used",
    )

    def __init__(self, budget: EntityBudget | None = None) -> None:
        #: The budget this cache counts against, and evicts under; ``None``: keep everything.
        self.budget = budget
        #: Whether changes are tracked for writing (only a session with a store, and a budget, has to).
        self.track = budget is not None
        self.records: dict[int, bytes | Values] = {}
        #: The text of every record, in bytes (for :meth:`nbytes`).
        self.text_bytes = 0
        self.index: dict[int, int] = {}
        #: ``(tag, value) -> id`` for values whose index key is taken by another value.
        self.exact: dict[tuple[int, str], int] = {}
        #: Entities changed since they were last handed to the writer (a list: appending is the
        #: cheapest; an id changed twice is there twice).
        self.dirty: list[int] = []
        #: Hand-offs to the writer that are not written yet (their entities are pinned too).
        self.handed: list[_Batch] = []
        #: Hashes of lookups the store answered "not found" (at most :data:`MAX_MISSES`; a 64-bit
        #: hash stands for its lookup, so two that collide share one answer, about 2**-64 likely).
        self.misses: set[int] = set()
        self.used = next(_clock)
        self.owner = threading.get_ident()
        #: Another thread found the budget exceeded: evict on the next call.
        self.evict_due = False
        if budget is not None:
            budget.register(self)

    def __len__(self) -> int:
        return len(self.records)

    def use(self, grown: int = 0) -> None:
        """Note a use of this cache, with ``grown`` more entities in it (the budget evicts if it must)."""
        self.used = next(_clock)
        budget = self.budget
        if budget is not None and (grown or self.evict_due):
            self.owner = threading.get_ident()
            if self.evict_due:  # another thread found the budget exceeded
                self.evict_due = False
                budget.count += grown
                budget.rebalance()
            else:
                budget.grew(grown)

    def nbytes(self) -> int:
        """Memory used: the dictionaries as allocated, the objects in them as :data:`OBJECT_BYTES` each and text."""
        fixed = sys.getsizeof(self.records) + sys.getsizeof(self.index) + sys.getsizeof(self.exact)
        return fixed + sys.getsizeof(self.dirty) + len(self.records) * OBJECT_BYTES + self.text_bytes

    def __iter__(self) -> Iterator[tuple[int, Values]]:
        for eid, rec in list(self.records.items()):
            yield eid, decode(rec)

    # -- lookups ------------------------------------------------------------------------------

    def find(self, tag: int, value: str) -> int | None:
        """The id of the newest cached entity whose field ``tag`` is ``value`` (memory only)."""
        records = self.records
        eid = self.index.get(_key(tag, value))
        if eid is not None and _field(records[eid], tag) == value:
            records[eid] = records.pop(eid)
            return eid
        if self.exact:
            eid = self.exact.get((tag, value))
            if eid is not None and (rec := records.get(eid)) is not None and _field(rec, tag) == value:
                return eid
        return None

    def has_field(self, eid: int, tag: int, value: str) -> bool:
        rec = self.records.get(eid)
        return rec is not None and _field(rec, tag) == value

    def missed(self, key: object) -> bool:
        return hash(key) in self.misses

    def add_miss(self, key: object) -> None:
        if len(self.misses) >= MAX_MISSES:
            self.misses.clear()
        self.misses.add(hash(key))

    # -- changes ------------------------------------------------------------------------------

    def absorb(self, entities: Iterable[Any]) -> int:
        """``process_entities``: cache what ``entities`` are now (the newest values); return how many are new.

        The loop is written out (one record, three index keys) because it is the hot path;
        changed entities and odd values take :meth:`put`.
        """
        records = self.records
        index = self.index
        dirty = self.dirty if self.track else None
        mask, phone_key, name_key = _MASK, _PHONE_KEY, _NAME_KEY
        size = len(records)
        text_bytes = 0
        funcs = row_function
        generic = generic_row
        pack = _HEAD.pack
        setdefault = records.setdefault
        user = types.User
        for e in entities:
            if type(e) is user:  # most entities: their row is computed here, what MemorySession computes
                h = e.access_hash
                if h is None or e.min:
                    continue
                eid = e.id
                first, last = e.first_name, e.last_name
                n = f"{first} {last}" if (first and last) else (first or last or None)
                u = e.username
                u = u.lower() if u else None
                p = e.phone
            else:
                row = funcs.get(type(e), generic)(e)
                if row is None:
                    continue
                eid, h, u, p, n = row
            text = f"{u or ''}\x1f{p or ''}\x1f{n or ''}"
            try:
                rec = pack(h, (u is None) | (p is None) << 1 | (n is None) << 2) + text.encode()
            except UnicodeEncodeError:  # a lone surrogate: put() keeps such values as they are
                rec = b""
            old = setdefault(eid, rec)
            if old is not rec:
                if old == rec:
                    records[eid] = records.pop(eid)  # seen again: now the most recent
                else:
                    self.put(eid, (h, u, p, n), old)
                continue
            if not rec or text.count("\x1f") != 2:
                del records[eid]
                self.put(eid, (h, u, p, n), None)
                continue
            text_bytes += len(rec) - 9
            if dirty is not None:
                dirty.append(eid)
            if u and index.setdefault(hash(u) & mask, eid) is not eid:
                self._index(eid, USERNAME, u, True)
            if p and index.setdefault(hash(p) & mask | phone_key, eid) is not eid:
                self._index(eid, PHONE, p, True)
            if n and index.setdefault(hash(n) & mask | name_key, eid) is not eid:
                self._index(eid, NAME, n, True)
        self.text_bytes += text_bytes
        return len(records) - size

    def put(self, eid: int, values: Values, old: bytes | Values | None, *, dirty: bool = True) -> None:
        """Store ``values`` for ``eid`` as the most recent entity and keep the index right (the newest owner wins)."""
        records = self.records
        fields = values[1:]
        if old is not None:
            del records[eid]
            self.text_bytes -= _size(old)
            for tag, before, now in zip(_TAGS, decode(old)[1:], fields, strict=True):
                if before and before != now:
                    self._unindex(eid, tag, before)
        rec = records[eid] = encode(*values)
        self.text_bytes += _size(rec)
        if dirty and self.track:
            self.dirty.append(eid)
        for tag, value in zip(_TAGS, fields, strict=True):
            if value:
                self._index(eid, tag, value, dirty)

    def _index(self, eid: int, tag: int, value: str, dirty: bool) -> None:
        index = self.index
        key = _key(tag, value)
        current = index.setdefault(key, eid)
        if current == eid:
            return
        rec = self.records.get(current)
        if rec is None:  # not expected: entries leave the index with their record
            index[key] = eid
        elif _field(rec, tag) == value:  # another owner of the same value
            if dirty:  # seen now: newer than anything cached (a row read from the store is not)
                index[key] = eid
                if tag != NAME:  # usernames and phones have one owner: it moved
                    self._clear(current, tag)
        else:  # a hash collision: this value goes to the exact side map
            owner = self.exact.get((tag, value))
            if owner is None or (dirty and owner != eid):
                self.exact[(tag, value)] = eid
                if owner is not None and tag != NAME and owner in self.records:
                    self._clear(owner, tag)

    def _unindex(self, eid: int, tag: int, value: str) -> None:
        key = _key(tag, value)
        if self.index.get(key) == eid:
            del self.index[key]
        if self.exact and self.exact.get((tag, value)) == eid:
            del self.exact[(tag, value)]

    def _clear(self, eid: int, tag: int) -> None:
        """A username or phone moved to another entity: forget it on the old owner."""
        old = self.records[eid]
        values = list(decode(old))
        values[tag + 1] = None
        rec = self.records[eid] = encode(*values)  # type: ignore[arg-type]
        self.text_bytes += _size(rec) - _size(old)
        if self.track:
            self.dirty.append(eid)

    def clear(self) -> None:
        self.text_bytes = 0
        self.records.clear()
        self.index.clear()
        self.exact.clear()
        self.dirty = []
        self.handed = []
        self.misses.clear()

    # -- eviction -----------------------------------------------------------------------------

    def pinned(self) -> list[list[int]]:
        """The sets of entities that must stay: changed, or handed to the writer and not written yet."""
        self.handed = [h for h in self.handed if not h.written]
        return [self.dirty, *(h.entities for h in self.handed)]

    def evict(self, n: int) -> int:
        """Drop up to ``n`` of the least recently used entities that are stored; return how many."""
        pinned = self.pinned()
        keep = set().union(*pinned)
        records = self.records
        victims = []
        for eid in records:
            if eid not in keep:
                victims.append(eid)
                if len(victims) >= n:
                    break
        for eid in victims:
            rec = records.pop(eid)
            self.text_bytes -= _size(rec)
            for tag, value in zip(_TAGS, decode(rec)[1:], strict=True):
                if value:
                    self._unindex(eid, tag, value)
        if victims:
            # A cached "not found" may be about an entity that is only in the store now.
            self.misses.clear()
            # A dictionary never shrinks when entries are deleted: copy a very sparse one.
            if sys.getsizeof(records) > _SPARSE * (len(records) + 8):
                self.records = dict(records)
            if sys.getsizeof(self.index) > _SPARSE * (len(self.index) + 8):
                self.index = dict(self.index)
        return len(victims)


class EntityBudget:
    """The memory budget of the entities cached by every session of the process.

    ``EntityBudget.get()`` is the process-wide instance; set its size with
    ``EntityBudget.get().limit_mb = 64`` (or ``entity_cache_mb=`` on
    :class:`~telethon_firestore_session.manager.UserSessionManager` and
    :class:`~telethon_firestore_session.config.SessionConfig`, or the environment
    variable ``SESSION_ENTITY_CACHE_MB`` through ``SessionConfig.from_env()``).

    Accounting (:meth:`EntityCache.nbytes`) is the real size of each cache's
    dictionaries plus an estimate of the objects in them; the hot path only counts
    entities, and the bytes are added up when that count passes a threshold. Only
    sessions bound to a store take part (an unbound ``SessionCore``, as made by
    ``clone()``, keeps everything, like ``MemorySession``). Entities are evicted by
    the thread that owns their session; a session owned by another thread is told
    to evict on its next call.

    :param limit_mb: the budget in MiB.
    """

    _instance: ClassVar[EntityBudget | None] = None
    _instance_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, limit_mb: float = DEFAULT_ENTITY_CACHE_MB) -> None:
        self._caches: weakref.WeakSet[EntityCache] = weakref.WeakSet()
        self._lock = threading.Lock()
        #: Entities cached (approximate between rebalances, which count them exactly).
        self.count = 0
        #: Entities evicted so far.
        self.evictions = 0
        self.limit_bytes = 0
        #: The count above which the next growth adds the bytes up again.
        self.threshold = 0
        #: The last rebalance could not get under the budget (entities were pending).
        self.over = False
        self.limit_mb = limit_mb

    @classmethod
    def configure(cls, limit_mb: float | None) -> None:
        """Set the process-wide budget to ``limit_mb`` MiB; ``None`` leaves it as it is.

        :param limit_mb: the budget in MiB, or ``None``.
        """
        if limit_mb is not None:
            cls.get().limit_mb = limit_mb

    @classmethod
    def get(cls) -> EntityBudget:
        """The process-wide budget."""
        inst = cls._instance
        if inst is None:
            with cls._instance_lock:
                inst = cls._instance
                if inst is None:
                    inst = cls._instance = cls()
        return inst

    @property
    def limit_mb(self) -> float:
        """The budget in MiB (a smaller one applies from the next entity cached)."""
        return self._limit_mb

    @limit_mb.setter
    def limit_mb(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"the entity cache budget must be a positive number of MiB, not {value!r}")
        self._limit_mb = float(value)
        self.limit_bytes = int(value * 2**20)
        self.threshold = 0  # add the bytes up at the next entity cached

    def register(self, cache: EntityCache) -> None:
        """Count ``cache`` in the budget (held weakly: a dropped session leaves it).

        :param cache: a session's entity cache.
        """
        with self._lock:
            self._caches.add(cache)

    def grew(self, n: int) -> None:
        """``n`` entities were cached by the calling thread; evict if the budget is exceeded.

        :param n: how many.
        """
        self.count += n
        if self.count > self.threshold:
            self.rebalance()

    def rebalance(self) -> None:
        """Add the bytes up; over the budget, evict from the least recently used sessions first."""
        if not self._lock.acquire(blocking=False):
            return  # another thread is at it
        try:
            caches = list(self._caches)
            used = sum(c.nbytes() for c in caches)
            count = sum(len(c) for c in caches)
            if used > self.limit_bytes:
                # Evicting frees the entities' objects; the dictionaries shrink at their next resize.
                freed = OBJECT_BYTES + sum(c.text_bytes for c in caches) // max(count, 1)
                excess = -(-(used - self.limit_bytes + self.limit_bytes // _BATCH) // freed)
                me = threading.get_ident()
                for cache in sorted(caches, key=operator.attrgetter("used")):
                    if excess <= 0:
                        break
                    if cache.owner != me:
                        cache.evict_due = True
                        continue
                    cache.evict_due = False
                    evicted = cache.evict(excess)
                    excess -= evicted
                    count -= evicted
                    used -= evicted * freed
                    self.evictions += evicted
            self.count = count
            self.over = used > self.limit_bytes
            # Look again once the room left is used, or (still over: pending writes, other
            # threads) after some more growth, never on every call.
            per_entity = used // count + 1 if count else OBJECT_BYTES
            room = (self.limit_bytes - used) // per_entity
            self.threshold = count + max(room, count // _BATCH, 64)
        finally:
            self._lock.release()

    def stats(self) -> dict[str, object]:
        """``limit_mb``, ``sessions``, ``entities`` cached, ``estimated_mb`` and ``evictions``."""
        with self._lock:
            caches = list(self._caches)
        return {
            "limit_mb": self._limit_mb,
            "sessions": len(caches),
            "entities": sum(len(c) for c in caches),
            "estimated_mb": round(sum(c.nbytes() for c in caches) / 2**20, 1),
            "evictions": self.evictions,
        }
