"""Telethon's session semantics, implemented once, in memory: :class:`SessionCore`, over a :class:`Store`.

The hot path (``process_entities``, ``set_update_state``, ``cache_file``, ``get_file`` and
``get_input_entity`` for known keys) does dictionary work only: no I/O and no scans. Cached
entities live in an :class:`~telethon_firestore_session.entities.EntityCache` under the
process-wide :class:`~telethon_firestore_session.entities.EntityBudget`; lookups that miss
memory go through the store's :class:`~telethon_firestore_session.breaker.LookupBreaker`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from telethon.crypto import AuthKey
from telethon.sessions.abstract import Session
from telethon.tl import types

from . import rows
from .breaker import LookupBreaker
from .entities import EntityBudget, EntityCache, Values, access_hash, decode
from .errors import SessionClosedError
from .resolver import Resolver
from .store import (
    EMPTY_HEADER,
    Changes,
    EntityRow,
    FileKey,
    SessionHeader,
    SessionSnapshot,
    Store,
    StoredSession,
    auth_key_fingerprint,
    reseal_each,
)
from .writer import BackgroundWriter

__all__ = [
    "Changes",
    "EntityRow",
    "FileKey",
    "SessionCore",
    "SessionHeader",
    "SessionSnapshot",
    "Store",
    "StoredSession",
    "auth_key_fingerprint",
    "reseal_each",
]

log = logging.getLogger("telethon_firestore_session")

#: Sent files cached per session bound to a store (the oldest stored ones are dropped beyond).
MAX_FILES = 256

_NOTHING: frozenset[Any] = frozenset()


class Handoff:
    """Records a session handed to the writer in constant time; the writer builds the rows on its thread.

    Its entities stay pinned in the session's cache (never evicted) until :meth:`done`.
    """

    __slots__ = ("core", "entities", "files", "states", "written")

    def __init__(self, core: SessionCore, entities: list[int], states: set[int], files: set[FileKey]) -> None:
        self.core = core
        self.entities = entities
        self.states = states
        self.files = files
        self.written = False

    def build(self) -> Changes:
        core = self.core
        now = int(time.time())
        records = core._cache.records
        entities = {}
        for eid in self.entities:
            rec = records.get(eid)
            if rec is not None:
                entities[eid] = EntityRow(eid, *decode(rec), now)
        states = {sid: st for sid in self.states if (st := core._states.get(sid)) is not None}
        files = {key: value for key in self.files if (value := core._files.get(key)) is not None}
        return Changes(entities, states, files)

    def done(self) -> None:
        """Written (on the writer's thread): the entities are no longer pinned and the sets can go."""
        self.written = True
        self.entities, self.states, self.files = [], set(), set()
        cache = self.core._cache
        if cache.budget is not None and cache.budget.over:
            cache.evict_due = True  # what was pinned may go now: the session evicts on its next call

    def __len__(self) -> int:
        return len(self.entities) + len(self.states) + len(self.files)


class ConnectionData(Session):  # type: ignore[misc]
    """Telethon's connection data: DC, server address, port, auth key and takeout id.

    The part of Telethon's ``Session`` that is written through on ``save()``
    (:class:`SessionCore` adds everything else); its members behave as Telethon documents them.
    """

    def __init__(self) -> None:
        super().__init__()
        self._dc_id = 0
        self._server_address: str | None = None
        self._port: int | None = None
        self._auth_key: AuthKey | None = None
        self._takeout_id: int | None = None

    def set_dc(self, dc_id: int, server_address: str, port: int) -> None:
        self._dc_id = dc_id or 0
        self._server_address = server_address
        self._port = port

    @property
    def dc_id(self) -> int:
        return self._dc_id

    @property
    def server_address(self) -> str | None:
        return self._server_address

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def auth_key(self) -> AuthKey | None:
        return self._auth_key

    @auth_key.setter
    def auth_key(self, value: AuthKey | None) -> None:
        self._auth_key = value

    @property
    def takeout_id(self) -> int | None:
        return self._takeout_id

    @takeout_id.setter
    def takeout_id(self, value: int | None) -> None:
        self._takeout_id = value

    def _header(self) -> SessionHeader:
        # AuthKey objects are mutated in place by Telethon (``auth_key.key = None``
        # on a DC switch), so compare the bytes, never the object.
        key = self._auth_key.key if self._auth_key is not None else None
        return SessionHeader(self._dc_id, self._server_address, self._port, key or None, self._takeout_id)

    def _load_header(self, h: SessionHeader) -> None:
        self._dc_id, self._server_address, self._port = h.dc_id, h.server_address, h.port
        self._auth_key = AuthKey(h.auth_key) if h.auth_key else None
        self._takeout_id = h.takeout_id

    def clone(self, to_instance: Session | None = None) -> Session:
        """An unbound in-memory copy of the connection data (used for CDN clients).

        It never writes to this session's store, so a CDN's DC cannot replace ours.

        :param to_instance: returned as it is when given (Telethon's contract).
        """
        if to_instance is not None:
            return to_instance
        cloned = SessionCore()
        cloned.set_dc(self._dc_id, self._server_address or "", self._port or 0)
        cloned.save_entities = self.save_entities
        return cloned


class SessionCore(ConnectionData):
    """An in-memory Telethon session with O(1) lookups, optionally bound to a store.

    Without a store it behaves like Telethon's ``MemorySession`` (minus its linear scans and
    stale rows) and keeps every entity. :meth:`clone` returns one of these. Telethon's
    ``Session`` methods not documented here behave as Telethon documents them.

    Bound to a store, it reads the DC, auth key, takeout id and update states when created
    and looks entities and sent files up lazily. Its cached entities count against the
    process-wide :class:`~telethon_firestore_session.entities.EntityBudget`; entities, sent
    files and update states are handed to the background writer by :meth:`save`, and by a
    timer on the running event loop: entities and sent files within ``flush_interval``
    seconds, update states at most every ``state_flush_interval`` seconds (Telethon calls
    ``save()`` every minute and on disconnect, which always hands them over), and with every
    write of entities when that write stores the session's header record anyway
    (:meth:`Store.writes_session_document`: a leased Firestore session). Construction,
    :meth:`save`, :meth:`close`, :meth:`delete` and lookups that miss memory block on the
    store, as Telethon calls them; durability: ``ARCHITECTURE.md``, "Durability".

    :param store: where the session lives; ``None`` for a session in memory.
    :param flush_interval: seconds before changed entities and sent files are handed over.
    :param state_flush_interval: seconds between hand-overs of update states.
    :param close_timeout: seconds :meth:`close` (and, by default, :meth:`wait_written`) wait.
    :param writer: the background writer; default the process-wide one.
    """

    def __init__(
        self,
        store: Store | None = None,
        *,
        flush_interval: float = 5.0,
        state_flush_interval: float = 60.0,
        close_timeout: float = 10.0,
        writer: BackgroundWriter | None = None,
    ) -> None:
        super().__init__()
        self._store = store
        self._flush_interval = flush_interval
        self._state_flush_interval = state_flush_interval
        self._close_timeout = close_timeout
        self._writer = writer
        self.save_entities = True

        self._cache = EntityCache(EntityBudget.get() if store is not None else None)
        self._resolver = Resolver(self._cache, store)
        self._states: dict[int, types.updates.State] = {}
        self._files: dict[FileKey, tuple[int, int]] = {}
        self._dirty_states: set[int] = set()
        self._dirty_files: set[FileKey] = set()
        self._flush_handle: asyncio.TimerHandle | None = None
        self._state_handle: asyncio.TimerHandle | None = None
        self._states_due = time.monotonic() + state_flush_interval
        self._persisted = EMPTY_HEADER
        self._rewrite_header = False
        self._deleted = False

        if store is not None:
            if store.breaker is None:
                store.breaker = LookupBreaker(store.where)
            loaded = store.load()
            if loaded is not None:
                self._apply_loaded(loaded)

    def _apply_loaded(self, loaded: StoredSession) -> None:
        self._load_header(loaded.header)
        self._states = dict(loaded.update_states)
        self._persisted = loaded.header
        self._rewrite_header = loaded.needs_rewrite

    @property
    def store(self) -> Store | None:
        """The store this session is bound to (``None`` for a session in memory)."""
        return self._store

    @property
    def _entities(self) -> dict[int, bytes | Values]:
        """The cached entity records by marked id (see :mod:`.entities`)."""
        return self._cache.records

    @property
    def _bound_writer(self) -> BackgroundWriter:
        if self._writer is None:
            self._writer = BackgroundWriter.get()
        return self._writer

    def __repr__(self) -> str:
        where = self._store.where if self._store is not None else "memory"
        key = "set" if self._auth_key is not None and self._auth_key.key else "none"
        return f"<{type(self).__name__} {where} dc_id={self._dc_id} auth_key={key} entities_cached={len(self._cache)}>"

    # -- update states -----------------------------------------------------------------

    def get_update_state(self, entity_id: int) -> types.updates.State | None:
        return self._states.get(entity_id)

    def set_update_state(self, entity_id: int, state: types.updates.State) -> None:
        old = self._states.get(entity_id)
        if old is not None and rows.same_state(old, state, entity_id):
            return
        self._states[entity_id] = state
        self._dirty_states.add(entity_id)
        if self._state_handle is None:
            self._state_handle = self._arm(self._states_due - time.monotonic(), True)

    def get_update_states(self) -> list[tuple[int, types.updates.State]]:
        return list(self._states.items())

    # -- entities --------------------------------------------------------------------

    def process_entities(self, tlo: Any) -> None:
        """Cache the users and chats a TL object carries (unless ``save_entities`` is off).

        :param tlo: any TL object, or a list of them.
        """
        if not self.save_entities:
            return
        cache = self._cache
        grown = cache.absorb(rows.collect(tlo))
        if cache.dirty and self._flush_handle is None:
            self._flush_handle = self._arm(self._flush_interval, False)
        cache.use(grown)

    def get_input_entity(self, key: Any) -> Any:
        """The ``InputPeer`` for ``key``, from memory or else one store lookup.

        :param key: a marked id, username, phone, name, or a TL peer or input peer.
        :raises ValueError: if nothing matches (as Telethon's sessions do).
        """
        cache = self._cache
        if cache.evict_due:  # written while over the budget: evict here, on the session's thread
            cache.use()
        if type(key) is int:
            records = cache.records
            rec = records.pop(key, None)
            if rec is not None:
                records[key] = rec  # now the most recent
                if key > 0:
                    return types.InputPeerUser(key, access_hash(rec))
                return rows.input_peer(key, access_hash(rec))
        return self._resolver.input_entity(key)

    # -- sent files ------------------------------------------------------------------

    def cache_file(self, md5_digest: bytes, file_size: int, instance: Any) -> None:
        if not isinstance(instance, (types.InputDocument, types.InputPhoto)):
            raise TypeError(f"Cannot cache {type(instance)} instance")
        self.put_file((md5_digest, file_size, rows.file_type(type(instance))), (instance.id, instance.access_hash))

    def get_file(self, md5_digest: bytes, file_size: int, cls: Any) -> Any:
        """A sent file as an instance of ``cls``, or ``None``.

        :param md5_digest: the file's MD5.
        :param file_size: its size in bytes.
        :param cls: ``InputDocument`` or ``InputPhoto``.
        """
        key: FileKey = (md5_digest, file_size, rows.file_type(cls))
        value = self._files.get(key)
        if value is None:
            value = self._resolver.find_file(key)
            if value is None:
                return None
            self._files[key] = value
            self._trim_files()
        # Telethon's own backends call cls(id, hash) and fail: file_reference is required.
        return cls(id=value[0], access_hash=value[1], file_reference=b"")

    def _trim_files(self) -> None:
        """Keep at most :data:`MAX_FILES` sent files in memory (the oldest stored ones go; the store has them)."""
        files = self._files
        if self._store is None or len(files) <= MAX_FILES:
            return
        pinned = set(self._dirty_files).union(*(h.files for h in self._cache.handed if not h.written))
        excess = len(files) - MAX_FILES + MAX_FILES // 4
        drop = [key for key in itertools.islice(files, excess + len(pinned)) if key not in pinned]
        for key in drop[:excess]:
            del files[key]

    # -- persistence -------------------------------------------------------------------

    def _arm(self, delay: float, states: bool) -> asyncio.TimerHandle | None:
        """A timer on the running loop that hands the changes over in ``delay`` seconds (``None`` without a loop)."""
        if self._store is None or self._deleted:
            return None
        # asyncio exports _get_running_loop (it is in asyncio.__all__): the loop or None, where
        # get_running_loop() raises, which would cost every call made outside a loop.
        loop = asyncio._get_running_loop()
        if loop is None:
            return None  # not in a loop: save() or close() will hand the changes over
        return loop.call_later(max(0.0, delay), self._on_timer, states)

    def _on_timer(self, states: bool) -> None:
        if states:
            self._state_handle = None
        else:
            self._flush_handle = None
        self._hand_over(states=states or time.monotonic() >= self._states_due)

    def _hand_over(self, *, states: bool) -> None:
        """Give the changed records to the writer: swap the sets of changes for empty ones (constant time)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        store = self._store
        if store is None or self._deleted:
            return
        cache = self._cache
        handed_states: set[int] = _NOTHING  # type: ignore[assignment]
        if not states and (cache.dirty or self._dirty_files) and store.writes_session_document():
            states = True  # that commit writes the session document anyway: the update states ride along
        if states and self._dirty_states:
            handed_states, self._dirty_states = self._dirty_states, set()
            self._states_due = time.monotonic() + self._state_flush_interval
            if self._state_handle is not None:
                self._state_handle.cancel()
                self._state_handle = None
        if not (cache.dirty or self._dirty_files or handed_states):
            return
        handoff = Handoff(self, cache.dirty, handed_states, self._dirty_files)
        cache.dirty, self._dirty_files = [], set()
        cache.handed = [h for h in cache.handed if not h.written]
        cache.handed.append(handoff)
        self._bound_writer.submit(store, handoff)

    def _refuse_if_deleted(self, store: Store) -> bool:
        """``True`` for a deleted session; raises if something was changed since (it would be lost)."""
        if not self._deleted:
            return False
        if self._header() != EMPTY_HEADER or self._cache.dirty or self._dirty_states or self._dirty_files:
            raise SessionClosedError(
                f"{store.where} was deleted, so this session is closed or deleted and writes nothing more; "
                "what was set after delete() is not stored (open a new session to log in again)"
            )
        return True

    def save(self) -> None:
        """Write the auth key, DC and takeout id through; hand everything else to the writer.

        Returns once a changed auth key, DC or takeout id is durable in the store.
        Entities, update states and sent files are handed to the background writer in
        constant time and written behind, without waiting for the network here.

        :raises SessionStoreError: if the header cannot be written (it stays pending).
        :raises SessionClosedError: after :meth:`delete`, if anything was set since
            (an auth key, a DC, entities...): a deleted session writes nothing more.
        """
        store = self._store
        if store is None or self._refuse_if_deleted(store):
            return
        header = self._header()
        if header != self._persisted or self._rewrite_header:
            store.write_session(header)
            self._persisted = header
            self._rewrite_header = False
        self._hand_over(states=True)

    def flush(self, timeout: float | None = None) -> bool:
        """Save, then wait until the writer has stored everything (:meth:`wait_written`).

        :param timeout: seconds to wait; default ``close_timeout``.
        :returns: ``False`` if the wait timed out (the writer keeps retrying).
        """
        self.save()
        return self.wait_written(timeout)

    def wait_written(self, timeout: float | None = None) -> bool:
        """Wait until the background writer has stored the records this session handed to it.

        It hands nothing over itself: changes not yet given to the writer by :meth:`save`
        (or the flush timer) stay pending; :meth:`flush` is ``save()`` and then this. It
        blocks the calling thread, so async code runs it in a worker thread
        (``asyncio.to_thread``).

        :param timeout: seconds to wait; default ``close_timeout``.
        :returns: ``False`` on timeout (the writer keeps retrying); ``True`` at once for
            a session without a store or a deleted one.
        """
        if self._store is None or self._deleted:
            return True
        return self._bound_writer.flush(self._store, self._close_timeout if timeout is None else timeout)

    def close(self) -> None:
        """Flush what is left (waiting at most ``close_timeout``) and release the store.

        The session stays usable: Telethon calls ``close()`` on disconnect and
        may connect again. After :meth:`delete` it raises like :meth:`save` if
        anything was set since, and does nothing otherwise.
        """
        store = self._store
        if store is None or self._refuse_if_deleted(store):
            return
        try:
            if not self.flush():
                log.warning("closing %s before the background writer stored everything; it keeps retrying", store.where)
        finally:
            store.close()  # also when the last save() fails (a damaged file): the lock is released

    def delete(self) -> bool:
        """Remove every stored record of this session (Telethon calls this on ``log_out()``).

        Afterwards the session is empty (no auth key, DC, entities, states or files)
        and writes nothing more: ``save()``, ``flush()`` and ``close()`` do nothing, or
        raise :class:`SessionClosedError` if something was set since (an auth key must
        never vanish without an error).
        """
        for handle in (self._flush_handle, self._state_handle):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._state_handle = None
        store = self._store
        if store is None:
            self._cache.dirty.clear()
            self._dirty_states.clear()
            self._dirty_files.clear()
            return True
        self._bound_writer.discard(store)
        store.delete()
        self._deleted = True
        self._resolver.store = None
        self._load_header(EMPTY_HEADER)
        self._persisted = EMPTY_HEADER
        self._cache.clear()
        self._states, self._files = {}, {}
        self._dirty_states, self._dirty_files = set(), set()
        return True

    def reset(self) -> None:
        """Start afresh after :meth:`delete`: an empty session on the same store, usable again.

        Everything held in memory is dropped and the store is loaded again (empty
        after ``delete()``), as if the object had just been created. Used to replace a
        session in place (``copy_session(..., overwrite=True)``).
        """
        self._cache.clear()
        SessionCore.__init__(
            self,
            self._store,
            flush_interval=self._flush_interval,
            state_flush_interval=self._state_flush_interval,
            close_timeout=self._close_timeout,
            writer=self._writer,
        )

    @property
    def where(self) -> str:
        """Where the session is stored, for messages (``firestore:...``, ``sqlite:...``, or ``memory``)."""
        return self._store.where if self._store is not None else "memory"

    # -- whole-session access, for export and migration -----------------------------------

    def iter_entities(self) -> Iterator[EntityRow]:
        """Every entity of the session: the stored ones, overlaid with what is in memory."""
        now = int(time.time())
        seen: set[int] = set()
        for eid, values in self._cache:
            seen.add(eid)
            yield EntityRow(eid, *values, now)
        if self._store is not None and not self._deleted:
            for row in self._store.iter_entities():
                if row.id not in seen:
                    yield row

    def iter_files(self) -> Iterator[tuple[FileKey, tuple[int, int]]]:
        """Every cached sent file as ``(key, (id, access_hash))``."""
        files = dict(self._files)
        yield from files.items()
        if self._store is not None and not self._deleted:
            for key, value in self._store.iter_files():
                if key not in files:
                    yield key, value

    def put_entity_rows(self, rows: Iterable[EntityRow]) -> None:
        """Add entity rows as they are (migration); they are written behind like any change.

        :param rows: the rows.
        """
        cache = self._cache
        size = len(cache)
        for row in rows:
            values: Values = (row.hash, row.username, row.phone, row.name)
            old = cache.records.get(row.id)
            if old is None or decode(old) != values:
                cache.put(row.id, values, old)
        if cache.dirty and self._flush_handle is None:
            self._flush_handle = self._arm(self._flush_interval, False)
        cache.use(len(cache) - size)

    def put_file(self, key: FileKey, value: tuple[int, int]) -> None:
        """Add a sent-file record as it is (migration); written behind.

        :param key: ``(md5_digest, file_size, file_type)``.
        :param value: ``(id, access_hash)``.
        """
        if self._files.get(key) != value:
            self._files[key] = value
            self._dirty_files.add(key)
            self._trim_files()
            if self._flush_handle is None:
                self._flush_handle = self._arm(self._flush_interval, False)
