"""The store contract: write-behind and lazy-lookup rules for sessions built on ``SessionCore`` with a store."""

from __future__ import annotations

import contextlib
import datetime
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from telethon.crypto import AuthKey
from telethon.sessions.abstract import Session
from telethon.tl import types

from telethon_firestore_session.core import SessionCore, Store

from .backends import SessionBackend
from .cases import ALICE, AUTH_A, DATE, MD5_A, MD5_B, channel, chat, input_channel, input_user, updates, user

__all__ = ["StoreContract", "StoreProbe"]


class StoreProbe:
    """Counts what a :class:`SessionCore`'s store is asked to do, and can hold its writes back.

    It wraps the bound store's methods on the instance; the real store still does
    every read and write.

    :param session: a :class:`SessionCore` bound to a store.
    :param hold_timeout: the longest a held write waits (then ``hold_expired`` is set).
    """

    def __init__(self, session: Session, hold_timeout: float = 5.0) -> None:
        store = session.store if isinstance(session, SessionCore) else None
        assert store is not None, "StoreProbe needs a SessionCore bound to a store"
        self.store: Store = store
        self.hold_timeout = hold_timeout
        self.hold_expired = False
        self.write_calls = 0
        self.entities_written = 0
        self.states_written = 0
        self.files_written = 0
        self.lookups: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._released.set()

        write_changes = store.write_changes

        def counted_write(changes: Any) -> None:
            if not self._released.wait(self.hold_timeout):
                self.hold_expired = True
            write_changes(changes)
            with self._lock:
                self.write_calls += 1
                self.entities_written += len(changes.entities)
                self.states_written += len(changes.states)
                self.files_written += len(changes.files)

        store.write_changes = counted_write  # type: ignore[method-assign]
        for name in ("find_entity_by_ids", "find_entity", "find_file"):
            self._count(name)

    def _count(self, name: str) -> None:
        original: Callable[..., Any] = getattr(self.store, name)

        def counted(*args: Any) -> Any:
            self.lookups.append((name, args))
            return original(*args)

        setattr(self.store, name, counted)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Block the store's writes until the block exits (at most ``hold_timeout``)."""
        self._released.clear()
        try:
            yield
        finally:
            self._released.set()


def _users(n: int, start: int) -> list[types.User]:
    return [user(start + i, username=f"user{start + i}", phone=f"1555{start + i}", first_name="N") for i in range(n)]


class StoreContract:
    """Write-behind and lazy-lookup rules for sessions built on :class:`SessionCore` with a store.

    Needs a ``store_backend`` fixture: a persistent :class:`SessionBackend` whose
    sessions are ``SessionCore`` instances bound to a store.
    """

    def test_unchanged_entities_are_not_written_again(self, store_backend: SessionBackend) -> None:
        session = store_backend.open()
        probe = StoreProbe(session)
        batch = [*_users(20, 3000), chat(3100, "Chat"), channel(3200, "Chan", username="chan3200")]
        session.process_entities(updates(users=batch[:20], chats=batch[20:]))
        assert session.flush(10)
        assert probe.entities_written == 22

        # Seen again: equal copies, min copies and hashless copies write nothing.
        session.process_entities(updates(users=_users(20, 3000), chats=[chat(3100, "Chat")]))
        session.process_entities([channel(3200, "Chan", username="chan3200")])
        session.process_entities([user(3001, access_hash=1, min=True, username="x"), user(3002, access_hash=None)])
        assert session.flush(10)
        assert probe.entities_written == 22

        # One change: one record. A username that moves: the new owner and the old one.
        session.process_entities([user(3003, username="renamed3003", phone="15553003", first_name="N")])
        assert session.flush(10)
        assert probe.entities_written == 23
        session.process_entities([user(3004, username="user3005", phone="15553004", first_name="N")])
        assert session.flush(10)
        assert probe.entities_written == 25
        session = store_backend.open_again(session)
        assert session.get_input_entity("user3005") == input_user(3004)
        assert session.get_input_entity(3005) == input_user(3005)
        with pytest.raises(ValueError, match="Could not find"):
            session.get_input_entity("user3004")

    def test_unchanged_states_and_files_are_not_written_again(self, store_backend: SessionBackend) -> None:
        session = store_backend.open()
        probe = StoreProbe(session)
        for _ in range(3):
            session.set_update_state(0, types.updates.State(5, 6, DATE, 7, unread_count=0))
            # Telethon stamps channel states with now(); only pts matters.
            session.set_update_state(3300, types.updates.State(40, 0, datetime.datetime.now(), 0, unread_count=0))
            session.cache_file(MD5_A, 10, types.InputPhoto(1, 2, b"ref"))
            session.cache_file(MD5_A, 10, types.InputPhoto(1, 2, b"other reference, same photo"))
            assert session.flush(10)
        assert (probe.states_written, probe.files_written) == (2, 1)
        session.set_update_state(3300, types.updates.State(41, 0, datetime.datetime.now(), 0, unread_count=0))
        assert session.flush(10)
        assert probe.states_written == 3

    def test_save_with_only_entities_does_not_wait_for_the_store(self, store_backend: SessionBackend) -> None:
        session = store_backend.open()
        session.auth_key = AuthKey(AUTH_A)
        session.save()  # the header is durable now; from here on only entities change
        probe = StoreProbe(session)
        with probe.hold():
            session.process_entities(_users(30, 3400))
            session.set_update_state(0, types.updates.State(1, 2, DATE, 3, unread_count=0))
            start = time.perf_counter()
            session.save()
            elapsed = time.perf_counter() - start
            assert probe.write_calls == 0  # nothing has reached the store yet
        assert not probe.hold_expired, "save() waited for the store to write entities"
        assert elapsed < 1.0
        assert session.flush(10)
        assert (probe.entities_written, probe.states_written) == (30, 1)
        session = store_backend.open_again(session)
        assert session.get_input_entity("user3429") == input_user(3429)
        assert session.get_update_state(0).pts == 1

    def test_lazy_lookups_after_reopen(self, store_backend: SessionBackend) -> None:
        session = store_backend.open()
        session.process_entities(
            updates(
                users=[ALICE, user(3501, phone="15553501"), user(3502, first_name="Only", last_name="Name")],
                chats=[channel(3503, "Lazy channel", username="lazychan"), chat(3504, "Lazy chat")],
            )
        )
        session = store_backend.open_again(session)
        probe = StoreProbe(session)
        # Nothing is loaded at start: each first lookup asks the store once; the answer is then in memory.
        for key, expected in (
            (101, input_user(101)),
            ("@alice", input_user(101)),  # known since the lookup by id: no query
            ("+15550001", input_user(101)),
            ("+1 555 3501", input_user(3501)),
            ("Only Name", input_user(3502)),
            ("t.me/LazyChan", input_channel(3503)),
            (3504, types.InputPeerChat(3504)),
            (-1000000003503, input_channel(3503)),
        ):
            for _ in range(2):
                assert session.get_input_entity(key) == expected, key
        kinds = [name for name, _ in probe.lookups]
        assert kinds == ["find_entity_by_ids", "find_entity", "find_entity", "find_entity", "find_entity_by_ids"]

    def test_misses_are_cached(self, store_backend: SessionBackend) -> None:
        session = store_backend.open()
        session.process_entities([ALICE])
        session = store_backend.open_again(session)
        probe = StoreProbe(session)
        keys = ("nobody", "+1 555 9999", 4242, -4242, types.PeerChannel(4242), "Nobody Known")
        for key in keys:
            with pytest.raises(ValueError, match="Could not find"):
                session.get_input_entity(key)
        asked = len(probe.lookups)
        assert asked >= len(keys)
        for key in keys:
            with pytest.raises(ValueError, match="Could not find"):
                session.get_input_entity(key)
        assert session.get_file(MD5_B, 1, types.InputDocument) is None
        assert session.get_file(MD5_B, 1, types.InputDocument) is None
        assert len(probe.lookups) == asked + 1  # only the first get_file asked
        # A cached miss never hides an entity seen later.
        session.process_entities([user(4242, username="nobody", phone="15559999")])
        assert session.get_input_entity("nobody") == input_user(4242)
        assert session.get_input_entity("+1 555 9999") == input_user(4242)
        assert session.get_input_entity(4242) == input_user(4242)
        session.cache_file(MD5_B, 1, types.InputDocument(8, 9, b""))
        assert session.get_file(MD5_B, 1, types.InputDocument) == types.InputDocument(8, 9, b"")
        assert len(probe.lookups) == asked + 1
