"""The store layer's interface and records: what a backend implements (:class:`Store`) and exchanges.

A store only loads and persists; Telethon's semantics live in :class:`~telethon_firestore_session.core.SessionCore`.
These names are importable from :mod:`telethon_firestore_session.core` too.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from telethon.tl import types

from .errors import SessionError, SessionRotationError

if TYPE_CHECKING:
    from .breaker import LookupBreaker

__all__ = [
    "EMPTY_HEADER",
    "Changes",
    "EntityRow",
    "FileKey",
    "SessionHeader",
    "SessionSnapshot",
    "Store",
    "StoredSession",
    "auth_key_fingerprint",
    "reseal_each",
]

log = logging.getLogger("telethon_firestore_session")

#: (md5 digest, file size, type) where type is 0 for documents and 1 for photos,
#: the same numbers that Telethon's SQLite ``sent_files`` table uses.
FileKey = tuple[bytes, int, int]


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
    """What a store returns when it opens a session: one read's worth.

    :param header: the DC, address, port, auth key and takeout id.
    :param update_states: the update states by entity id (0 for the account's own).
    :param needs_rewrite: the stored header is plaintext or sealed with an old key: ``save()`` rewrites it.
    """

    header: SessionHeader = EMPTY_HEADER
    update_states: dict[int, types.updates.State] = dataclasses.field(default_factory=dict)
    needs_rewrite: bool = False


@dataclasses.dataclass
class Changes:
    """Records waiting to be written behind. Newer values replace older ones.

    :param entities: entity rows by marked id.
    :param states: update states by entity id.
    :param files: sent files, ``(id, access_hash)`` by key.
    """

    entities: dict[int, EntityRow] = dataclasses.field(default_factory=dict)
    states: dict[int, types.updates.State] = dataclasses.field(default_factory=dict)
    files: dict[FileKey, tuple[int, int]] = dataclasses.field(default_factory=dict)

    def merge(self, newer: Changes) -> None:
        """Add the records of ``newer`` to these, its values replacing older ones.

        :param newer: the later changes.
        """
        self.entities.update(newer.entities)
        self.states.update(newer.states)
        self.files.update(newer.files)

    def build(self) -> Changes:
        """Itself (what the background writer asks of every batch handed to it)."""
        return self

    def done(self) -> None:
        """Nothing to do once written (the writer calls it)."""

    def __len__(self) -> int:
        return len(self.entities) + len(self.states) + len(self.files)


def auth_key_fingerprint(key: bytes | None) -> str | None:
    """A short, non-reversible name for an auth key: the first 16 hex digits of its SHA-256.

    Safe to print and log; two sessions with the same fingerprint hold the same login.

    :param key: the auth key's bytes, or ``None``.
    """
    if not key:
        return None
    return hashlib.sha256(key).hexdigest()[:16]


# -- snapshots ---------------------------------------------------------------------------


@dataclasses.dataclass
class SessionSnapshot:
    """Everything a Telethon session holds, read out of one: header, states, entities, files.

    :param dc_id: the data centre (0 when unset).
    :param server_address: the DC's address.
    :param port: the DC's port.
    :param auth_key: the auth key's bytes (never in ``repr()``: :attr:`fingerprint` names it).
    :param takeout_id: the takeout session id, if any.
    :param update_states: update states by entity id.
    :param entities: the cached entities.
    :param files: sent files, ``(id, access_hash)`` by key.
    :param complete: ``False`` if the source (an unknown session type) could not list entities and files.
    """

    dc_id: int = 0
    server_address: str | None = None
    port: int | None = None
    auth_key: bytes | None = dataclasses.field(default=None, repr=False)
    takeout_id: int | None = None
    update_states: dict[int, types.updates.State] = dataclasses.field(default_factory=dict, repr=False)
    entities: list[EntityRow] = dataclasses.field(default_factory=list, repr=False)
    files: dict[FileKey, tuple[int, int]] = dataclasses.field(default_factory=dict, repr=False)
    complete: bool = True

    @property
    def header(self) -> SessionHeader:
        """The DC, address, port, auth key and takeout id, as a store writes them."""
        return SessionHeader(self.dc_id, self.server_address, self.port, self.auth_key, self.takeout_id)

    @property
    def fingerprint(self) -> str | None:
        """The auth key's :func:`auth_key_fingerprint` (safe to log)."""
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
    #: Stops lookups after one fails until a probe succeeds (:mod:`..breaker`); stores that share
    #: a connection share one. A store without one gets its own when a session binds it.
    breaker: LookupBreaker | None = None

    @abc.abstractmethod
    def load(self) -> StoredSession | None:
        """Read the session header and update states, or ``None`` if there is no session."""

    @abc.abstractmethod
    def write_session(self, header: SessionHeader) -> None:
        """Durably store the header before returning; raise :class:`SessionStoreError` on failure.

        :param header: the header to store.
        """

    @abc.abstractmethod
    def write_changes(self, changes: Changes) -> None:
        """Persist entities, update states and sent files. May raise; the writer retries.

        :param changes: the records to write.
        """

    @abc.abstractmethod
    def find_entity_by_ids(self, ids: Sequence[int]) -> EntityRow | None:
        """Return the stored entity with the first of ``ids`` that exists.

        :param ids: marked ids, in order of preference.
        """

    @abc.abstractmethod
    def find_entity(self, field: str, value: str) -> EntityRow | None:
        """Return the newest stored entity whose ``field`` equals ``value``.

        :param field: ``"username"``, ``"phone"`` or ``"name"``.
        :param value: the value to match (as Telethon normalises it).
        """

    @abc.abstractmethod
    def find_file(self, key: FileKey) -> tuple[int, int] | None:
        """Return ``(id, access_hash)`` of a cached sent file.

        :param key: ``(md5_digest, file_size, file_type)``.
        """

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

    def writes_session_document(self) -> bool:
        """Whether every write of changes writes the session's header record anyway (a leased session's guard).

        Then pending update states go with every write of entities or sent files: they cost
        no write of their own (see ``SessionCore``).
        """
        return False

    def probe(self) -> None:
        """A cheap read that raises if the store cannot answer (the breaker's probe; off the event loop)."""
        self.find_entity_by_ids((0,))

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

    :param keys: the sessions' keys.
    :param open_store: opens the store of a key (it is closed afterwards).
    :param key_id: the current key's id, for the log.
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
