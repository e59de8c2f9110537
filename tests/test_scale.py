"""Issue 11: bounded entity memory, the hand-off to the writer, update-state writes, the lookup breaker.

Issue 10 item 2: a deleted session refuses writes instead of storing nothing silently.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from telethon.crypto import AuthKey
from telethon.tl import types

from telethon_firestore_session import (
    ConfigError,
    FirestoreSession,
    ScopedSQLiteSession,
    SessionClosedError,
    SessionConfig,
    UserSessionManager,
)
from telethon_firestore_session import entities as entities_module
from telethon_firestore_session.core import Handoff, SessionCore
from telethon_firestore_session.entities import MAX_MISSES, EntityBudget, decode, encode
from telethon_firestore_session.testing import ENTITY_CASES, MISS, StoreProbe, answer, feed
from telethon_firestore_session.testing.cases import AUTH_A
from tests.common import Opener, wait_for
from tests.emulator import Emulator

MiB = 2**20


def person(uid: int) -> types.User:
    """A realistic user: access hash, username, phone, first and last name."""
    return types.User(
        uid,
        access_hash=uid * 7919 - 2**40,
        username=f"user_{uid:07d}",
        phone=f"1555{uid:07d}",
        first_name=f"First{uid % 97}",
        last_name=f"Last{uid}",
    )


def people(n: int, start: int = 1) -> list[types.User]:
    return [person(start + i) for i in range(n)]


def feed_people(session: Any, n: int, start: int = 1, *, save_every: int = 0) -> None:
    for i in range(start, start + n, 100):
        session.process_entities(people(min(100, start + n - i), i))
        if save_every and (i - start + 100) % save_every == 0:
            session.save()


def iu(uid: int) -> types.InputPeerUser:
    return types.InputPeerUser(uid, uid * 7919 - 2**40)


@pytest.fixture
def budget(monkeypatch: pytest.MonkeyPatch) -> EntityBudget:
    """A fresh process-wide budget of 1 MiB for this test (the real one comes back afterwards)."""
    fresh = EntityBudget(limit_mb=1)
    monkeypatch.setattr(EntityBudget, "_instance", fresh)
    return fresh


# -- records and the index ---------------------------------------------------------------------


def test_records_keep_none_and_empty_apart_and_odd_values_as_they_are() -> None:
    for values in [
        (-(2**63), None, None, None),
        (2**63 - 1, "", "", ""),
        (5, "u", None, "Ünïcode nàme 名前"),
        (6, None, "", "Tab\tand\nnewline"),
        (7, "x", "1", "with \x1f separator"),  # kept as a tuple
        (8, "y", "2", "lone \ud800 surrogate"),  # not UTF-8: kept as a tuple
    ]:
        assert decode(encode(*values)) == values

    session = SessionCore()
    odd = types.User(9, access_hash=9, first_name="A\x1fB", phone="")
    session.process_entities([odd, types.User(10, access_hash=10, first_name="Plain")])
    assert session.get_input_entity("A\x1fB") == types.InputPeerUser(9, 9)
    assert session.get_input_entity("Plain") == types.InputPeerUser(10, 10)
    assert next(r for r in session.iter_entities() if r.id == 9).phone == ""


@pytest.mark.parametrize("case", ENTITY_CASES, ids=lambda c: c.name)
def test_every_contract_answer_holds_when_every_index_key_collides(monkeypatch: pytest.MonkeyPatch, case: Any) -> None:
    """With every hash masked to 0, all values of a field share one index key: the exact side map answers."""
    monkeypatch.setattr(entities_module, "_MASK", 0)
    session = SessionCore()
    feed(session, case)
    for key, expected in case.queries:
        assert answer(session, key) == ("MISS" if expected is MISS else str(expected)), key


def test_a_username_that_moves_within_the_side_map_leaves_its_old_owner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(entities_module, "_MASK", 0)
    session = SessionCore()
    session.process_entities([types.User(1, access_hash=1, username="first")])  # owns the index key
    session.process_entities([types.User(2, access_hash=2, username="taken")])  # collides: side map
    session.process_entities([types.User(3, access_hash=3, username="taken")])  # takes it over
    assert session.get_input_entity("taken") == types.InputPeerUser(3, 3)
    assert next(r for r in session.iter_entities() if r.id == 2).username is None


# -- the memory budget ------------------------------------------------------------------------


def test_evicted_entities_are_found_again_through_the_file(opener: Opener, budget: EntityBudget) -> None:
    session = opener()
    feed_people(session, 10_000, save_every=1000)
    assert session.flush(30)
    session.process_entities(people(100, 20_000))  # growth after the writes: now evictable
    cache = session._cache
    assert budget.evictions > 0 and len(cache) < 10_000
    assert budget.stats()["estimated_mb"] <= 1.0
    for uid in range(1, 10_001, 7):
        assert session.get_input_entity(f"user_{uid:07d}") == iu(uid), uid
        assert session.get_input_entity(f"+1555{uid:07d}") == iu(uid), uid
        assert session.get_input_entity(uid) == iu(uid), uid
    assert budget.stats()["estimated_mb"] <= 1.05  # found again, and evicted again as it came back


@pytest.mark.firestore
def test_evicted_entities_are_found_again_through_firestore(
    firestore_client: Any, bot_id: str, budget: EntityBudget
) -> None:
    budget.limit_mb = 0.25
    session = FirestoreSession("42", bot_id=bot_id, client=firestore_client)
    feed_people(session, 2000, save_every=500)
    assert session.flush(30)
    session.process_entities(people(50, 9000))
    assert budget.evictions > 0 and len(session._cache) < 2000
    for uid in range(1, 2001, 41):
        assert session.get_input_entity(f"@user_{uid:07d}") == iu(uid), uid
        assert session.get_input_entity(uid) == iu(uid), uid
    session.close()


def test_a_session_that_only_looks_up_evicts_once_its_entities_are_written(
    opener: Opener, budget: EntityBudget
) -> None:
    session = opener()
    feed_people(session, 5000)  # one burst, all pending: nothing can go yet
    assert session.flush(30)
    assert len(session._cache) == 5000 and session._cache.evict_due
    assert session.get_input_entity(1) == iu(1)  # no new entity: the lookup makes room
    assert budget.evictions > 0 and budget.stats()["estimated_mb"] <= 1.0
    assert session.get_input_entity(4999) == iu(4999)  # evicted or not, still found


def test_pending_entities_are_never_evicted(opener: Opener, budget: EntityBudget) -> None:
    budget.limit_mb = 0.1
    session = opener()
    probe = StoreProbe(session, hold_timeout=30)
    feed_people(session, 3000)  # nothing saved: every one is pending
    assert len(session._cache) == 3000 and budget.evictions == 0
    with probe.hold():
        session.save()  # handed to the writer, which is held: still not stored
        feed_people(session, 500, 5000)
        assert all(uid in session._cache.records for uid in range(1, 3001))
    assert session.flush(30)
    feed_people(session, 500, 8000)  # written now: they may go
    assert budget.evictions > 0
    assert len(session._cache) < 3000
    assert session.get_input_entity("user_0000001") == iu(1)


def test_least_recently_used_sessions_lose_their_entities_first(opener: Opener, budget: EntityBudget) -> None:
    budget.limit_mb = 100
    a, b, c = opener("1"), opener("2"), opener("3")
    for n, s in enumerate((a, b, c)):
        feed_people(s, 800, n * 10_000 + 1)
        assert s.flush(30)
    a.process_entities(people(10, 1))  # a is in use again; b is now the least recently used
    budget.limit_mb = sum(s._cache.nbytes() for s in (a, b, c)) * 0.9 / MiB
    feed_people(c, 100, 50_000)  # c grows: someone has to make room
    assert budget.evictions > 0
    assert len(b._cache) < 800
    assert len(a._cache) == 800
    assert b.get_input_entity(10_001 + 1) == iu(10_002)  # evicted, found again


def test_a_session_used_by_another_thread_evicts_on_its_next_call(opener: Opener, budget: EntityBudget) -> None:
    other = opener("other")

    def use(call: Callable[[], Any]) -> None:
        t = threading.Thread(target=call)
        t.start()
        t.join()

    use(lambda: (feed_people(other, 1500, 100_000), other.flush(30)))
    budget.limit_mb = 0.3
    mine = opener("mine")
    feed_people(mine, 300)  # over the budget: other's entities are not this thread's to evict
    assert len(other._cache) == 1500 and other._cache.evict_due
    use(lambda: other.process_entities(people(1, 200_000)))
    assert len(other._cache) < 1500 and not other._cache.evict_due


def test_a_session_without_a_store_keeps_everything_and_tracks_nothing(budget: EntityBudget) -> None:
    budget.limit_mb = 0.01
    session = SessionCore()
    feed_people(session, 3000)
    assert len(session._cache) == 3000 and not session._cache.dirty
    assert budget.stats()["sessions"] == 0


def test_cached_misses_and_sent_files_are_bounded(opener: Opener, budget: EntityBudget) -> None:
    session = opener()
    for i in range(MAX_MISSES + 500):
        with pytest.raises(ValueError, match="Could not find"):
            session.get_input_entity(f"@nobody{i}")
    assert len(session._cache.misses) <= MAX_MISSES
    md5 = [bytes([i % 256, i // 256]) * 8 for i in range(600)]
    for i, digest in enumerate(md5):
        session.cache_file(digest, i, types.InputPhoto(i, i + 1, b""))
    assert len(session._files) == 600  # pending: all kept
    assert session.flush(30)
    session.cache_file(b"x" * 16, 1, types.InputPhoto(1, 2, b""))
    assert len(session._files) <= 256
    assert session.get_file(md5[0], 0, types.InputPhoto) == types.InputPhoto(0, 1, b"")  # from the file


def test_the_writer_builds_the_rows_on_its_own_thread(opener: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    build = Handoff.build

    def recorded(self: Handoff) -> Any:
        threads.append(threading.current_thread().name)
        return build(self)

    monkeypatch.setattr(Handoff, "build", recorded)
    session = opener()
    feed_people(session, 300)
    session.save()
    assert session._cache.dirty == []  # handed over: a fresh list for what comes next
    assert session.flush(30)
    assert threads and threading.current_thread().name not in threads
    assert session._sqlite.commits >= 1


# -- update states: at most once per state_flush_interval -----------------------------------------


async def test_update_states_wait_for_save_or_their_interval(opener: Opener) -> None:
    session = opener(flush_interval=0.05, state_flush_interval=0.6)
    probe = StoreProbe(session)
    state_writes: list[float] = []
    write = session._sqlite.write_changes

    def counted(changes: Any) -> None:
        if changes.states:
            state_writes.append(time.monotonic())
        write(changes)

    session._sqlite.write_changes = counted  # type: ignore[method-assign]
    start = time.monotonic()
    pts = 0
    seen: dict[int, float] = {}
    while time.monotonic() - start < 1.5:
        pts += 1
        session.set_update_state(0, types.updates.State(pts, 0, _date(), 0, 0))
        if pts % 10 == 0:
            uid = 1000 + pts
            session.process_entities([person(uid)])
            seen[uid] = time.monotonic()
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    # Entities kept flush_interval (well within flush_interval + 1 s); states went at most every 0.6 s.
    assert await asyncio.to_thread(wait_for, lambda: probe.entities_written == len(seen), 10)
    assert 1 <= len(state_writes) <= 3, state_writes
    assert all(b - a >= 0.5 for a, b in itertools.pairwise(state_writes))
    session.save()  # Telethon's periodic save() writes the latest state at once
    assert await asyncio.to_thread(session.wait_written, 10)
    assert len(state_writes) <= 4
    session.close()
    again = opener()
    state = again.get_update_state(0)
    assert state is not None and state.pts == pts


async def test_set_update_state_alone_does_not_arm_the_flush_timer(opener: Opener) -> None:
    session = opener(flush_interval=0.05, state_flush_interval=0.5)
    probe = StoreProbe(session)
    session.set_update_state(0, types.updates.State(1, 0, _date(), 0, 0))
    await asyncio.sleep(0.3)
    assert probe.write_calls == 0
    assert await asyncio.to_thread(wait_for, lambda: probe.states_written == 1, 10)


def _date() -> Any:
    import datetime

    return datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)


@pytest.mark.firestore
def test_entities_alone_leave_the_session_document_alone(firestore_client: Any, bot_id: str) -> None:
    session = FirestoreSession("42", bot_id=bot_id, client=firestore_client)
    session.set_update_state(0, types.updates.State(1, 0, _date(), 0, 0))
    assert session.flush(10)
    before = session.document.get().update_time
    for n in range(3):
        session.process_entities(people(5, 100 + 10 * n))
        assert session.flush(10)
    assert session.document.get().update_time == before
    assert session.store.writes == 1 + 15


# -- the lookup breaker --------------------------------------------------------------------------


@pytest.mark.firestore
async def test_lookups_stop_after_one_failure_until_a_probe_succeeds(
    firestore_client: Any, bot_id: str, paused: Emulator
) -> None:
    one = FirestoreSession("1", bot_id=bot_id, client=firestore_client, lookup_timeout=0.5)
    one.process_entities([person(7)])
    one.close()
    one = FirestoreSession("1", bot_id=bot_id, client=firestore_client, lookup_timeout=0.5)
    two = FirestoreSession("2", bot_id=bot_id, client=firestore_client, lookup_timeout=0.5)
    manager = UserSessionManager(bot_id, backend="firestore", firestore_client=firestore_client)
    paused.pause()
    start = time.perf_counter()
    with pytest.raises(ValueError, match="Could not find"):
        one.get_input_entity("@user_0000007")
    first = time.perf_counter() - start
    breaker = one.store.breaker
    assert breaker is not None and breaker.open and two.store.breaker is breaker  # one per client
    start = time.perf_counter()
    for i in range(20):  # every further miss, in any session on this client, answers at once
        for s in (one, two):
            with pytest.raises(ValueError, match="Could not find"):
                s.get_input_entity(f"@missing{i}")
    assert time.perf_counter() - start < 0.5 and first < 3.0
    report = await manager.health_check(1.0)
    assert report["lookups"]["open"] >= 1
    assert any("answer 'not found'" in p for p in report["problems"])
    paused.resume()
    assert await asyncio.to_thread(wait_for, lambda: not breaker.open, 30)
    assert one.get_input_entity("@user_0000007") == iu(7)  # the failure was never cached as a miss
    await manager.aclose()


# -- a deleted session refuses writes (issue 10 item 2) -----------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.firestore)])
def make_session(request: pytest.FixtureRequest, sdir: Path, bot_id: str) -> Callable[[], SessionCore]:
    if request.param == "sqlite":
        return lambda: ScopedSQLiteSession("42", bot_id=bot_id, sessions_dir=sdir)
    client = request.getfixturevalue("firestore_client")
    return lambda: FirestoreSession("42", bot_id=bot_id, client=client)


def _stored_key(make_session: Callable[[], SessionCore]) -> bytes | None:
    again = make_session()
    try:
        return again.auth_key.key if again.auth_key is not None else None
    finally:
        again.close()


def test_a_deleted_session_refuses_an_auth_key_instead_of_dropping_it(make_session: Callable[[], SessionCore]) -> None:
    session = make_session()
    session.auth_key = AuthKey(AUTH_A)
    session.save()
    assert session.delete() is True
    session.save()  # nothing new: nothing to refuse
    assert session.flush() is True
    assert session.auth_key is None and session.dc_id == 0  # the deleted session is empty in memory too
    session.set_dc(2, "149.154.167.51", 443)
    session.auth_key = AuthKey(AUTH_A)
    for call in (session.save, session.flush, session.close):
        with pytest.raises(SessionClosedError, match="closed or deleted"):
            call()
    assert _stored_key(make_session) is None


def test_entities_seen_after_delete_are_refused_too(make_session: Callable[[], SessionCore]) -> None:
    session = make_session()
    session.process_entities([person(1)])
    session.delete()
    session.process_entities([person(2)])  # the hot path never raises
    with pytest.raises(SessionClosedError, match="deleted"):
        session.save()


def test_telethons_log_out_order_never_raises(make_session: Callable[[], SessionCore]) -> None:
    """``log_out()``: disconnect (states and entities, then ``close()``), ``delete()``; a late ``close()`` is quiet."""
    session = make_session()
    session.auth_key = AuthKey(AUTH_A)
    session.save()
    session.process_entities([person(3)])
    session.set_update_state(0, types.updates.State(5, 0, _date(), 0, 0))
    session.close()
    assert session.delete() is True
    session.close()
    assert session.delete() is True
    assert _stored_key(make_session) is None


# -- configuration --------------------------------------------------------------------------------


def test_environment_sets_the_state_interval_and_the_entity_budget(
    sdir: Path, budget: EntityBudget, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"BOT_ID": "mybot", "SESSIONS_DIR": str(sdir)}
    config = SessionConfig.from_env({**env, "SESSION_STATE_FLUSH_INTERVAL": "30", "SESSION_ENTITY_CACHE_MB": "12.5"})
    assert (config.state_flush_interval, config.entity_cache_mb) == (30.0, 12.5)
    defaults = SessionConfig.from_env(env)
    assert (defaults.state_flush_interval, defaults.entity_cache_mb) == (60.0, None)
    for name in ("SESSION_STATE_FLUSH_INTERVAL", "SESSION_ENTITY_CACHE_MB"):
        for bad in ("0", "-1", "soon", "inf", "nan"):
            with pytest.raises(ConfigError) as info:
                SessionConfig.from_env({**env, name: bad})
            assert info.value.variable == name
    session = config.create_session(7)
    try:
        assert session._state_flush_interval == 30.0
        assert budget.limit_mb == 12.5
    finally:
        session.close()
    UserSessionManager("mybot", sessions_dir=sdir, entity_cache_mb=20)
    assert budget.limit_mb == 20.0
    with pytest.raises(ValueError, match="positive"):
        UserSessionManager("mybot", sessions_dir=sdir, entity_cache_mb=0)
