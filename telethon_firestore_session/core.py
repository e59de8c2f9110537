"""Telethon's session semantics, implemented once, in memory.

:class:`SessionCore` is a complete :class:`telethon.sessions.abstract.Session`.
Bound to a :class:`Store`, it loads the session header (DC, auth key, takeout id,
update states) when it is created, looks entities and sent files up lazily,
writes the header through on :meth:`~SessionCore.save` and hands everything
else to the process-wide :class:`~telethon_firestore_session._writer.BackgroundWriter`.

The hot path (``process_entities``, ``set_update_state``, ``cache_file``,
``get_file`` and ``get_input_entity`` for known keys) does dictionary work only:
no I/O and no scans.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from telethon import utils
from telethon.crypto import AuthKey
from telethon.sessions.abstract import Session
from telethon.tl import types
from telethon.tl.tlobject import TLObject

from .errors import SessionError, SessionRotationError
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
]

log = logging.getLogger("telethon_firestore_session")

#: (md5 digest, file size, type) where type is 0 for documents and 1 for photos,
#: the same numbers that Telethon's SQLite ``sent_files`` table uses.
FileKey = tuple[bytes, int, int]
FILE_DOCUMENT = 0
FILE_PHOTO = 1

_CHANNEL_MARK = 1_000_000_000_000
_INPUT_SUBCLASSES = (0xC91C90B6, 0xE669BF46, 0x40F202FD)  # InputPeer, InputUser, InputChannel

# An entity's values in memory: (access hash, username, phone, display name).
_Values = tuple[int, "str | None", "str | None", "str | None"]


class EntityRow(NamedTuple):
    """One cached entity, as the stores persist it."""

    id: int  # marked id
    hash: int
    username: str | None
    phone: str | None
    name: str | None
    date: int  # unix time when it was last changed


class SessionHeader(NamedTuple):
    """What is written through on ``save()``: rare, and fatal to lose."""

    dc_id: int
    server_address: str | None
    port: int | None
    auth_key: bytes | None
    takeout_id: int | None


EMPTY_HEADER = SessionHeader(0, None, None, None, None)


@dataclasses.dataclass
class StoredSession:
    """What a store returns when it opens a session: one read's worth."""

    header: SessionHeader = EMPTY_HEADER
    update_states: dict[int, types.updates.State] = dataclasses.field(default_factory=dict)
    #: The stored header is not in its current form (plaintext or sealed with an old
    #: key): the next ``save()`` writes it again even if nothing changed.
    needs_rewrite: bool = False


@dataclasses.dataclass
class Changes:
    """Records waiting to be written behind. Newer values replace older ones."""

    entities: dict[int, EntityRow] = dataclasses.field(default_factory=dict)
    states: dict[int, types.updates.State] = dataclasses.field(default_factory=dict)
    files: dict[FileKey, tuple[int, int]] = dataclasses.field(default_factory=dict)

    def merge(self, newer: Changes) -> None:
        self.entities.update(newer.entities)
        self.states.update(newer.states)
        self.files.update(newer.files)

    def __len__(self) -> int:
        return len(self.entities) + len(self.states) + len(self.files)


def auth_key_fingerprint(key: bytes | None) -> str | None:
    """A short, non-reversible name for an auth key: the first 16 hex digits of its SHA-256.

    Safe to print and log; two sessions with the same fingerprint hold the same login.
    """
    if not key:
        return None
    return hashlib.sha256(key).hexdigest()[:16]


# -- snapshots ---------------------------------------------------------------------------


@dataclasses.dataclass
class SessionSnapshot:
    """Everything a Telethon session holds, read out of one: header, states, entities, files.

    The auth key is never part of ``repr()``; :attr:`fingerprint` names it instead.
    """

    dc_id: int = 0
    server_address: str | None = None
    port: int | None = None
    auth_key: bytes | None = dataclasses.field(default=None, repr=False)
    takeout_id: int | None = None
    update_states: dict[int, types.updates.State] = dataclasses.field(default_factory=dict, repr=False)
    entities: list[EntityRow] = dataclasses.field(default_factory=list, repr=False)
    files: dict[FileKey, tuple[int, int]] = dataclasses.field(default_factory=dict, repr=False)
    #: ``False`` when the source could not list its entities and sent files (an unknown
    #: third-party session type): only the header and update states were read.
    complete: bool = True

    @property
    def header(self) -> SessionHeader:
        return SessionHeader(self.dc_id, self.server_address, self.port, self.auth_key, self.takeout_id)

    @property
    def fingerprint(self) -> str | None:
        return auth_key_fingerprint(self.auth_key)

    def __repr__(self) -> str:
        return (
            f"SessionSnapshot(dc_id={self.dc_id}, server_address={self.server_address!r}, port={self.port}, "
            f"auth_key={self.fingerprint or 'none'}, takeout_id={self.takeout_id}, "
            f"update_states={len(self.update_states)}, entities={len(self.entities)}, files={len(self.files)})"
        )


class Store(abc.ABC):
    """Where a session lives. Stores only load and persist; the core has the semantics.

    ``write_changes`` is called from the background writer's thread; every other
    method from the thread that uses the session.
    """

    #: Human-readable location used in log records and errors (never secrets).
    where: str = "?"

    @abc.abstractmethod
    def load(self) -> StoredSession | None:
        """Read the session header and update states, or ``None`` if there is no session."""

    @abc.abstractmethod
    def write_session(self, header: SessionHeader) -> None:
        """Durably store the header before returning; raise :class:`SessionStoreError` on failure."""

    @abc.abstractmethod
    def write_changes(self, changes: Changes) -> None:
        """Persist entities, update states and sent files. May raise; the writer retries."""

    @abc.abstractmethod
    def find_entity_by_ids(self, ids: Sequence[int]) -> EntityRow | None:
        """Return the stored entity with the first of ``ids`` that exists."""

    @abc.abstractmethod
    def find_entity(self, field: str, value: str) -> EntityRow | None:
        """Return the newest stored entity whose ``field`` (username, phone, name) equals ``value``."""

    @abc.abstractmethod
    def find_file(self, key: FileKey) -> tuple[int, int] | None:
        """Return ``(id, access_hash)`` of a cached sent file."""

    @abc.abstractmethod
    def iter_entities(self) -> Iterator[EntityRow]:
        """Every stored entity (for export and migration; not used on the hot path)."""

    @abc.abstractmethod
    def iter_files(self) -> Iterator[tuple[FileKey, tuple[int, int]]]:
        """Every stored sent file as ``(key, (id, access_hash))``."""

    @abc.abstractmethod
    def delete(self) -> None:
        """Remove every record of the session."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; the store may be used again afterwards."""

    def periodic(self) -> None:  # noqa: B027 - optional hook
        """Called by the background writer about once per flush interval (lease renewal)."""

    def reseal(self) -> int:
        """Write every sealed value again with the cipher's current key; return the records rewritten.

        Stores that support encryption implement it (key rotation); nothing is written
        when a value cannot be opened.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot re-seal")


def reseal_each(keys: Iterable[object], open_store: Callable[[Any], Store], key_id: str) -> int:
    """Re-seal the session of every key (:meth:`Store.reseal`); the loop of the ``rotate_*`` functions.

    A session that cannot be opened or re-sealed is logged, skipped and left as it
    was; once the others are done, :class:`SessionRotationError` lists every one of
    them (the first chained as ``__cause__``). Returns how many sessions changed.
    """
    rotated = 0
    failures: list[SessionError] = []
    for key in keys:
        try:
            store = open_store(key)
        except SessionError as exc:  # e.g. a session file that is a symbolic link
            log.warning("rotate: session %s was not re-sealed: %s", key, exc)
            failures.append(exc)
            continue
        try:
            written = store.reseal()
        except SessionError as exc:
            log.warning("rotate: %s was not re-sealed: %s", store.where, exc)
            failures.append(exc)
            continue
        finally:
            store.close()
        if written:
            rotated += 1
            log.info("rotate: re-sealed %d record(s) of %s with key %s", written, store.where, key_id)
    if failures:
        log.warning("rotate: %d session(s) re-sealed, %d skipped", rotated, len(failures))
        raise SessionRotationError(rotated, failures) from failures[0]
    return rotated


# -- turning TL objects into rows ------------------------------------------------------


def _user_row(e: types.User) -> tuple[int, int, str | None, str | None, str | None] | None:
    h = e.access_hash
    if h is None or e.min:
        return None
    first, last = e.first_name, e.last_name
    name = f"{first} {last}" if (first and last) else (first or last or None)
    un = e.username
    return (e.id, h, un.lower() if un else None, e.phone, name)


def _chat_row(e: types.Chat) -> tuple[int, int, str | None, str | None, str | None] | None:
    if not 0 < e.id <= 9999999999:
        return _generic_row(e)
    return (-e.id, 0, None, None, e.title or None)


def _channel_row(e: types.Channel) -> tuple[int, int, str | None, str | None, str | None] | None:
    h = e.access_hash
    if h is None or e.min:
        return None
    if not 0 < e.id <= 9999999999:
        return _generic_row(e)
    un = e.username
    return (-(_CHANNEL_MARK + e.id), h, un.lower() if un else None, None, e.title or None)


def _generic_row(e: Any) -> tuple[int, int, str | None, str | None, str | None] | None:
    """Exactly what ``MemorySession._entity_to_row`` computes, for the rarer types."""
    if not isinstance(e, TLObject):
        return None
    try:
        p = utils.get_input_peer(e, allow_self=False)
        marked_id = utils.get_peer_id(p)
    except TypeError:
        return None
    if isinstance(p, (types.InputPeerUser, types.InputPeerChannel)):
        p_hash = p.access_hash
    elif isinstance(p, types.InputPeerChat):
        p_hash = 0
    else:
        return None
    username = getattr(e, "username", None) or None
    if username is not None:
        username = username.lower()
    phone = getattr(e, "phone", None)
    name = utils.get_display_name(e) or None
    return (marked_id, p_hash, username, phone, name)


_ROW_FUNCS: dict[type, Any] = {
    types.User: _user_row,
    types.Chat: _chat_row,
    types.Channel: _channel_row,
}


def _collect(tlo: Any) -> Iterable[Any]:
    if not isinstance(tlo, TLObject) and utils.is_list_like(tlo):
        return tlo  # type: ignore[no-any-return]
    entities: list[Any] = []
    user = getattr(tlo, "user", None)
    if user is not None:
        entities.append(user)
    chat = getattr(tlo, "chat", None)
    if chat is not None:
        entities.append(chat)
    chats = getattr(tlo, "chats", None)
    if chats is not None and utils.is_list_like(chats):
        entities.extend(chats)
    users = getattr(tlo, "users", None)
    if users is not None and utils.is_list_like(users):
        entities.extend(users)
    return entities


def _input_peer(marked_id: int, access_hash: int) -> Any:
    if marked_id >= 0:
        return types.InputPeerUser(marked_id, access_hash)
    bare = -marked_id
    if bare > _CHANNEL_MARK:
        return types.InputPeerChannel(bare - _CHANNEL_MARK, access_hash)
    return types.InputPeerChat(bare)


def _same_state(a: types.updates.State, b: types.updates.State, entity_id: int) -> bool:
    if entity_id != 0:
        # Telethon stamps channel states with datetime.now() and reads back only pts.
        return bool(a.pts == b.pts)
    return bool(a.pts == b.pts and a.qts == b.qts and a.seq == b.seq and a.date == b.date)


def _file_type(cls: Any) -> int:
    if cls is types.InputDocument:
        return FILE_DOCUMENT
    if cls is types.InputPhoto:
        return FILE_PHOTO
    raise ValueError("The cls must be either InputDocument/InputPhoto")


_MISS = object()


class SessionCore(Session):  # type: ignore[misc]
    """An in-memory Telethon session with O(1) lookups, optionally bound to a store.

    Without a store it behaves like Telethon's ``MemorySession`` (minus its
    linear scans and stale rows). :meth:`clone` returns one of these.
    """

    def __init__(
        self,
        store: Store | None = None,
        *,
        flush_interval: float = 5.0,
        close_timeout: float = 10.0,
        writer: BackgroundWriter | None = None,
    ) -> None:
        super().__init__()
        self._store = store
        self._flush_interval = flush_interval
        self._close_timeout = close_timeout
        self._writer = writer
        self.save_entities = True

        self._dc_id = 0
        self._server_address: str | None = None
        self._port: int | None = None
        self._auth_key: AuthKey | None = None
        self._takeout_id: int | None = None

        self._entities: dict[int, _Values] = {}
        self._by_username: dict[str, int] = {}
        self._by_phone: dict[str, int] = {}
        self._by_name: dict[str, dict[int, None]] = {}
        self._states: dict[int, types.updates.State] = {}
        self._files: dict[FileKey, tuple[int, int]] = {}
        self._misses: set[tuple[str, object]] = set()

        self._dirty_entities: set[int] = set()
        self._dirty_states: set[int] = set()
        self._dirty_files: set[FileKey] = set()
        self._flush_handle: asyncio.TimerHandle | None = None
        self._persisted = EMPTY_HEADER
        self._rewrite_header = False
        self._deleted = False

        if store is not None:
            loaded = store.load()
            if loaded is not None:
                self._apply_loaded(loaded)

    def _apply_loaded(self, loaded: StoredSession) -> None:
        h = loaded.header
        self._dc_id = h.dc_id
        self._server_address = h.server_address
        self._port = h.port
        self._auth_key = AuthKey(h.auth_key) if h.auth_key else None
        self._takeout_id = h.takeout_id
        self._states = dict(loaded.update_states)
        self._persisted = h
        self._rewrite_header = loaded.needs_rewrite

    @property
    def store(self) -> Store | None:
        """The store this session is bound to (``None`` for a session in memory)."""
        return self._store

    @property
    def _bound_writer(self) -> BackgroundWriter:
        if self._writer is None:
            self._writer = BackgroundWriter.get()
        return self._writer

    def __repr__(self) -> str:
        where = self._store.where if self._store is not None else "memory"
        key = "set" if self._auth_key is not None and self._auth_key.key else "none"
        return (
            f"<{type(self).__name__} {where} dc_id={self._dc_id} auth_key={key} entities_cached={len(self._entities)}>"
        )

    # -- header ---------------------------------------------------------------------

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

    # -- update states -----------------------------------------------------------------

    def get_update_state(self, entity_id: int) -> types.updates.State | None:
        return self._states.get(entity_id)

    def set_update_state(self, entity_id: int, state: types.updates.State) -> None:
        old = self._states.get(entity_id)
        if old is not None and _same_state(old, state, entity_id):
            return
        self._states[entity_id] = state
        self._dirty_states.add(entity_id)
        self._schedule_flush()

    def get_update_states(self) -> list[tuple[int, types.updates.State]]:
        return list(self._states.items())

    # -- entities --------------------------------------------------------------------

    def process_entities(self, tlo: Any) -> None:
        if not self.save_entities:
            return
        dirty_before = len(self._dirty_entities)
        funcs = _ROW_FUNCS
        entities = self._entities
        for e in _collect(tlo):
            func = funcs.get(type(e), _generic_row)
            row = func(e)
            if row is None:
                continue
            values = row[1:]
            old = entities.get(row[0])
            if old != values:
                self._put(row[0], values, old)
        if len(self._dirty_entities) != dirty_before:
            self._schedule_flush()

    def _put(self, eid: int, values: _Values, old: _Values | None, *, dirty: bool = True) -> None:
        """Store ``values`` for ``eid`` and keep the indexes right (the newest owner wins)."""
        self._entities[eid] = values
        if dirty:
            self._dirty_entities.add(eid)
        _, username, phone, name = values
        if old is not None:
            _, old_username, old_phone, old_name = old
            if old_username and old_username != username and self._by_username.get(old_username) == eid:
                del self._by_username[old_username]
            if old_phone and old_phone != phone and self._by_phone.get(old_phone) == eid:
                del self._by_phone[old_phone]
            if old_name and old_name != name:
                owners = self._by_name.get(old_name)
                if owners is not None:
                    owners.pop(eid, None)
                    if not owners:
                        del self._by_name[old_name]
        if username:
            prev = self._by_username.get(username)
            if prev != eid:
                if prev is not None and dirty:
                    self._clear_field(prev, 1)
                if prev is None or dirty:
                    self._by_username[username] = eid
        if phone:
            prev = self._by_phone.get(phone)
            if prev != eid:
                if prev is not None and dirty:
                    self._clear_field(prev, 2)
                if prev is None or dirty:
                    self._by_phone[phone] = eid
        if name:
            owners = self._by_name.setdefault(name, {})
            if dirty or not owners:
                owners.pop(eid, None)
                owners[eid] = None
            else:
                # A row loaded from the store is older than what we saw ourselves.
                items = {eid: None}
                items.update(owners)
                self._by_name[name] = items

    def _clear_field(self, eid: int, index: int) -> None:
        """A username or phone moved to another entity: forget it on the old owner."""
        values = self._entities.get(eid)
        if values is None:
            return
        h, username, phone, name = values
        self._entities[eid] = (h, None, phone, name) if index == 1 else (h, username, None, name)
        self._dirty_entities.add(eid)

    def _lookup(self, field: str, value: str) -> tuple[int, _Values] | None:
        if field == "username":
            eid = self._by_username.get(value)
        elif field == "phone":
            eid = self._by_phone.get(value)
        else:
            owners = self._by_name.get(value)
            eid = next(reversed(owners)) if owners else None
        if eid is not None:
            return eid, self._entities[eid]
        return self._load(("f", field, value), lambda s: s.find_entity(field, value))

    def _lookup_ids(self, ids: Sequence[int]) -> tuple[int, _Values] | None:
        """The first of ``ids`` that exists in memory or in the store (order is preference)."""
        entities = self._entities
        unknown: list[int] = []  # preferred ids that only the store can rule out
        for eid in ids:
            values = entities.get(eid)
            if values is not None:
                # A less preferred id in memory must not shadow a preferred one in the store
                # (a bare id that is a user there and a channel here); ask once, then it is cached.
                if unknown:
                    found = self._load_ids(unknown)
                    if found is not None:
                        return found
                return eid, values
            if self._store is not None and not self._deleted and ("i", (eid,)) not in self._misses:
                unknown.append(eid)
        return self._load_ids(unknown) if unknown else None

    def _load_ids(self, ids: Sequence[int]) -> tuple[int, _Values] | None:
        """Ask the store for the first of ``ids``; every id before the answer is cached as a miss."""
        store = self._store
        assert store is not None
        try:
            row = store.find_entity_by_ids(ids)
        except Exception as exc:  # noqa: BLE001 - a failed lookup is a miss, never a crash
            log.warning("entity lookup in %s failed (%s); treating it as a miss", store.where, type(exc).__name__)
            return None
        for eid in ids:
            if row is not None and eid == row.id:
                break
            self._misses.add(("i", (eid,)))
        return self._adopt(row) if row is not None else None

    def _load(self, miss_key: tuple[Any, ...], query: Any) -> tuple[int, _Values] | None:
        store = self._store
        if store is None or self._deleted or miss_key in self._misses:
            return None
        try:
            row: EntityRow | None = query(store)
        except Exception as exc:  # noqa: BLE001 - a failed lookup is a miss, never a crash
            log.warning("entity lookup in %s failed (%s); treating it as a miss", store.where, type(exc).__name__)
            return None
        if row is None:
            self._misses.add(miss_key)
            return None
        return self._adopt(row)

    def _adopt(self, row: EntityRow) -> tuple[int, _Values]:
        """Keep a row read from the store in memory, unless memory has the entity already (it is newer)."""
        current = self._entities.get(row.id)
        if current is not None:
            return row.id, current
        values: _Values = (row.hash, row.username, row.phone, row.name)
        self._put(row.id, values, None, dirty=False)
        return row.id, values

    def get_input_entity(self, key: Any) -> Any:
        kind = type(key)
        if kind is int:
            exact = key < 0
        elif kind is str:
            exact = True
        else:
            try:
                if key.SUBCLASS_OF_ID in _INPUT_SUBCLASSES:
                    return key
                return utils.get_input_peer(key)
            except (AttributeError, TypeError):
                if isinstance(key, TLObject):
                    key = utils.get_peer_id(key)
                    exact = True
                else:
                    exact = not isinstance(key, int) or key < 0

        result: tuple[int, _Values] | None = None
        if isinstance(key, str):
            phone = utils.parse_phone(key)
            if phone:
                result = self._lookup("phone", phone)
            else:
                username, invite = utils.parse_username(key)
                if username and not invite:
                    result = self._lookup("username", username)
                else:
                    tup = utils.resolve_invite_link(key)[1]
                    if tup:
                        result = self._lookup_ids(self._candidate_ids(tup))
            if result is None:
                result = self._lookup("name", key)
        elif isinstance(key, int):
            values = self._entities.get(key)
            if values is not None:
                result = (key, values)
            elif exact:
                result = self._lookup_ids((key,))
            else:
                result = self._lookup_ids(self._candidate_ids(key))

        if result is None:
            raise ValueError("Could not find input entity with key ", key)
        return _input_peer(result[0], result[1][0])

    @staticmethod
    def _candidate_ids(bare: int) -> tuple[int, ...]:
        # A bare positive id is a user first (as in the Bot API), then a chat, then a channel.
        ids = (
            utils.get_peer_id(types.PeerUser(bare)),
            utils.get_peer_id(types.PeerChat(bare)),
            utils.get_peer_id(types.PeerChannel(bare)),
        )
        return tuple(dict.fromkeys(ids))

    # -- sent files ------------------------------------------------------------------

    def cache_file(self, md5_digest: bytes, file_size: int, instance: Any) -> None:
        if not isinstance(instance, (types.InputDocument, types.InputPhoto)):
            raise TypeError(f"Cannot cache {type(instance)} instance")
        key: FileKey = (md5_digest, file_size, _file_type(type(instance)))
        value = (instance.id, instance.access_hash)
        if self._files.get(key) != value:
            self._files[key] = value
            self._dirty_files.add(key)
            self._schedule_flush()

    def get_file(self, md5_digest: bytes, file_size: int, cls: Any) -> Any:
        key: FileKey = (md5_digest, file_size, _file_type(cls))
        value = self._files.get(key)
        if value is None:
            store = self._store
            if store is None or self._deleted or ("file", key) in self._misses:
                return None
            try:
                value = store.find_file(key)
            except Exception as exc:  # noqa: BLE001 - a failed lookup is a miss
                log.warning("sent-file lookup in %s failed (%s)", store.where, type(exc).__name__)
                return None
            if value is None:
                self._misses.add(("file", key))
                return None
            self._files[key] = value
        # Telethon's own backends call cls(id, hash) and fail: file_reference is required.
        return cls(id=value[0], access_hash=value[1], file_reference=b"")

    # -- persistence -------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if self._store is None or self._flush_handle is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not in a loop: save() or close() will hand the changes over
        self._flush_handle = loop.call_later(self._flush_interval, self._flush_from_timer)

    def _flush_from_timer(self) -> None:
        self._flush_handle = None
        self._submit_changes()

    def _take_changes(self) -> Changes | None:
        if not (self._dirty_entities or self._dirty_states or self._dirty_files):
            return None
        now = int(time.time())
        entities = self._entities
        changes = Changes(
            entities={eid: EntityRow(eid, *entities[eid], now) for eid in self._dirty_entities},
            states={sid: self._states[sid] for sid in self._dirty_states},
            files={k: self._files[k] for k in self._dirty_files},
        )
        self._dirty_entities = set()
        self._dirty_states = set()
        self._dirty_files = set()
        return changes

    def _submit_changes(self) -> None:
        if self._store is None or self._deleted:
            return
        changes = self._take_changes()
        if changes is not None:
            self._bound_writer.submit(self._store, changes)

    def save(self) -> None:
        """Write the auth key, DC and takeout id through; hand everything else to the writer.

        Returns once a changed auth key, DC or takeout id is durable in the store.
        Entities, update states and sent files are written behind, within the
        flush interval, without waiting for the network here.
        """
        store = self._store
        if store is None or self._deleted:
            return
        header = self._header()
        if header != self._persisted or self._rewrite_header:
            store.write_session(header)
            self._persisted = header
            self._rewrite_header = False
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._submit_changes()

    def flush(self, timeout: float | None = None) -> bool:
        """Save, then wait up to ``timeout`` seconds until the writer has stored everything.

        Returns ``False`` if the wait timed out (the writer keeps retrying).
        """
        self.save()
        return self.wait_written(timeout)

    def wait_written(self, timeout: float | None = None) -> bool:
        """Wait until the background writer has stored the records this session handed to it.

        Waits at most ``timeout`` seconds (default ``close_timeout``). It hands nothing
        over itself: changes not yet given to the writer by :meth:`save` (or the flush
        timer) stay pending; :meth:`flush` is ``save()`` and then this. It blocks the
        calling thread, so async code runs it in a worker thread (``asyncio.to_thread``).
        Returns ``False`` on timeout (the writer keeps retrying), and ``True`` at once for
        a session without a store or a deleted one.
        """
        if self._store is None or self._deleted:
            return True
        return self._bound_writer.flush(self._store, self._close_timeout if timeout is None else timeout)

    def close(self) -> None:
        """Flush what is left (waiting at most ``close_timeout``) and release the store.

        The session stays usable: Telethon calls ``close()`` on disconnect and
        may connect again.
        """
        store = self._store
        if store is None or self._deleted:
            return
        try:
            if not self.flush():
                log.warning("closing %s before the background writer stored everything; it keeps retrying", store.where)
        finally:
            store.close()  # also when the last save() fails (a damaged file): the lock is released

    def delete(self) -> bool:
        """Remove every stored record of this session (Telethon calls this on ``log_out()``)."""
        store = self._store
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._dirty_entities.clear()
        self._dirty_states.clear()
        self._dirty_files.clear()
        if store is None:
            return True
        self._bound_writer.discard(store)
        store.delete()
        self._deleted = True
        self._persisted = EMPTY_HEADER
        return True

    def reset(self) -> None:
        """Start afresh after :meth:`delete`: an empty session on the same store, usable again.

        Everything held in memory is dropped and the store is loaded again (empty
        after ``delete()``), as if the object had just been created. Used to replace a
        session in place (``copy_session(..., overwrite=True)``).
        """
        SessionCore.__init__(
            self,
            self._store,
            flush_interval=self._flush_interval,
            close_timeout=self._close_timeout,
            writer=self._writer,
        )

    @property
    def where(self) -> str:
        """Where the session is stored, for messages (``firestore:...``, ``sqlite:...``, or ``memory``)."""
        return self._store.where if self._store is not None else "memory"

    def clone(self, to_instance: Session | None = None) -> Session:
        """An unbound in-memory copy of the connection data (used for CDN clients).

        It never writes to this session's store, so a CDN's DC cannot replace ours.
        """
        if to_instance is not None:
            return to_instance
        cloned = SessionCore()
        cloned.set_dc(self._dc_id, self._server_address or "", self._port or 0)
        cloned.save_entities = self.save_entities
        return cloned

    # -- whole-session access, for export and migration -----------------------------------

    def iter_entities(self) -> Iterator[EntityRow]:
        """Every entity of the session: the stored ones, overlaid with what is in memory."""
        now = int(time.time())
        seen: set[int] = set()
        for eid, values in self._entities.items():
            seen.add(eid)
            yield EntityRow(eid, *values, now)
        if self._store is not None and not self._deleted:
            for row in self._store.iter_entities():
                if row.id not in seen:
                    yield row

    def iter_files(self) -> Iterator[tuple[FileKey, tuple[int, int]]]:
        """Every cached sent file as ``(key, (id, access_hash))``."""
        seen = set(self._files)
        yield from self._files.items()
        if self._store is not None and not self._deleted:
            for key, value in self._store.iter_files():
                if key not in seen:
                    yield key, value

    def put_entity_rows(self, rows: Iterable[EntityRow]) -> None:
        """Add entity rows as they are (migration); they are written behind like any change."""
        for row in rows:
            values: _Values = (row.hash, row.username, row.phone, row.name)
            old = self._entities.get(row.id)
            if old != values:
                self._put(row.id, values, old)
        self._schedule_flush()

    def put_file(self, key: FileKey, value: tuple[int, int]) -> None:
        """Add a sent-file record as it is (migration)."""
        if self._files.get(key) != value:
            self._files[key] = value
            self._dirty_files.add(key)
            self._schedule_flush()
