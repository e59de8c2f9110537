"""Leases on Firestore session documents, against the real emulator; and one writer per SQLite file.

Two managers in one process, two processes, and a holder killed with SIGKILL.
Telegram is :class:`tests.telegram_double.FakeTelegram` (a real TelegramClient
with its RPC sender swapped).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from telethon.tl import types

from telethon_firestore_session import BackgroundWriter, SessionConfig
from telethon_firestore_session.errors import (
    ConfigError,
    SchemaVersionError,
    SessionCorruptError,
    SessionInUseError,
    SessionStoreError,
)
from telethon_firestore_session.firestore import FirestoreSession, session_document
from telethon_firestore_session.firestore.lease import FirestoreLease, make_holder_id, parse_lease, watch_handoffs
from telethon_firestore_session.ids import SessionKey
from telethon_firestore_session.manager import LoginStatus, UserSessionManager

from .common import wait_for
from .telegram_double import FakeTelegram

ROOT = Path(__file__).resolve().parent.parent
UTC = datetime.timezone.utc
PHONE = "+1 555 0100"
API = {"api_id": 12345, "api_hash": "0123456789abcdef0123456789abcdef"}


def _doc(client: Any, bot_id: str, user_id: str = "u1") -> Any:
    return session_document(client, SessionKey(bot_id, user_id))


def _lease(client: Any, bot_id: str, holder: str, ttl: float = 30.0) -> FirestoreLease:
    return FirestoreLease(_doc(client, bot_id), client, holder=holder, ttl=ttl)


def _stored_lease(client: Any, bot_id: str) -> Any:
    return parse_lease((_doc(client, bot_id).get().to_dict() or {}).get("lease"))


@pytest.fixture
def fake() -> FakeTelegram:
    tg = FakeTelegram()
    tg.add_account(PHONE, user_id=1001, first_name="Alice", username="alice")
    tg.add_account("+1 555 0300", user_id=1003, first_name="Carol", username="carol")
    return tg


# -- FirestoreLease ------------------------------------------------------------------------------


@pytest.mark.firestore
def test_holder_ids_name_the_host_and_process_and_are_unique() -> None:
    a, b = make_holder_id(), make_holder_id()
    assert a != b and a.split(":")[1] == str(os.getpid()) and b.split(":")[1] == str(os.getpid())


@pytest.mark.firestore
def test_a_lease_is_exclusive_until_released(firestore_client: Any, bot_id: str) -> None:
    assert _lease(firestore_client, bot_id, "a").acquire() is False  # no session document: nothing to lease
    _doc(firestore_client, bot_id).set({"schema_version": 1})
    a = _lease(firestore_client, bot_id, "host:1:a")
    b = _lease(firestore_client, bot_id, "host:2:b")
    before = datetime.datetime.now(UTC)
    assert a.acquire() is True
    stored = _stored_lease(firestore_client, bot_id)
    assert stored.holder == "host:1:a"
    assert (
        before + datetime.timedelta(seconds=29)
        < stored.expires_at
        <= datetime.datetime.now(UTC) + datetime.timedelta(seconds=30)
    )
    with pytest.raises(SessionInUseError) as info:
        b.acquire()
    assert info.value.holder == "host:1:a" and info.value.expires_at == stored.expires_at
    assert "in use by host:1:a until" in str(info.value)
    assert a.acquire() is True  # the holder may take it again
    b.release()  # not b's: nothing happens
    assert _stored_lease(firestore_client, bot_id).holder == "host:1:a"
    a.release()
    assert _stored_lease(firestore_client, bot_id) is None
    assert b.acquire() is True


@pytest.mark.firestore
@pytest.mark.slow
def test_an_expired_lease_is_taken_over_and_the_old_holder_learns_it_lost(firestore_client: Any, bot_id: str) -> None:
    _doc(firestore_client, bot_id).set({"schema_version": 1})
    a = _lease(firestore_client, bot_id, "host:1:a", ttl=0.5)
    b = _lease(firestore_client, bot_id, "host:2:b")
    assert a.acquire() and a.held()
    time.sleep(0.6)
    assert b.acquire()
    # Past its deadline the old holder counts the lease as lost before asking Firestore (fencing).
    assert a.renew() is False
    assert a.lost and not a.held() and a.renewals == 0
    assert a.state()["lost"] and not a.state()["held"]
    a.release()  # a lost lease is not released: b keeps it
    assert _stored_lease(firestore_client, bot_id).holder == "host:2:b"


@pytest.mark.firestore
def test_renewal_extends_the_lease_and_the_activity_while_the_document_is_being_written(
    firestore_client: Any, bot_id: str
) -> None:
    doc = _doc(firestore_client, bot_id)
    doc.set({"schema_version": 1, "last_active_at": datetime.datetime(2020, 1, 1, tzinfo=UTC)})
    lease = _lease(firestore_client, bot_id, "host:1:a", ttl=3.0)
    assert lease.acquire()
    first = _stored_lease(firestore_client, bot_id).expires_at
    stop = threading.Event()

    def scribble() -> None:  # what the background writer does to the same document, 50 times a second
        n = 0
        while not stop.wait(0.02):
            doc.update({"update_states": {"0": {"pts": n, "qts": 0, "date": 0, "seq": 0}}})
            n += 1

    thread = threading.Thread(target=scribble)
    thread.start()
    renewed = 0
    try:
        deadline = time.monotonic() + 20
        while (lease.conflicts == 0 or renewed < 5) and time.monotonic() < deadline:
            assert lease.renew() is True
            renewed += 1
    finally:
        stop.set()
        thread.join()
    assert lease.conflicts >= 1, "no renewal ever raced a write; the test proved nothing"
    data = doc.get().to_dict()
    assert parse_lease(data["lease"]).expires_at > first
    assert data["last_active_at"].year > 2020
    assert lease.renewals == renewed and lease.state()["held"]


@pytest.mark.firestore
@pytest.mark.slow
def test_renew_if_due_waits_for_a_third_of_the_ttl(firestore_client: Any, bot_id: str) -> None:
    _doc(firestore_client, bot_id).set({"schema_version": 1})
    lease = _lease(firestore_client, bot_id, "host:1:a", ttl=0.9)
    assert lease.acquire()
    lease.renew_if_due()
    assert lease.renewals == 0
    time.sleep(0.35)
    lease.periodic()  # what the background writer calls
    assert lease.renewals == 1


# -- managers ----------------------------------------------------------------------------------


@pytest.fixture
async def managers(firestore_client: Any, bot_id: str, fake: FakeTelegram) -> AsyncIterator[list[UserSessionManager]]:
    made: list[UserSessionManager] = []
    try:
        yield made
    finally:
        for m in made:
            await m.aclose()
        assert BackgroundWriter.get().flush(None, 10)


def _manager(
    made: list[UserSessionManager], client: Any, bot_id: str, fake: FakeTelegram, **kw: Any
) -> UserSessionManager:
    m = UserSessionManager(
        bot_id, backend="firestore", firestore_client=client, client_factory=fake.client, **API, **kw
    )
    made.append(m)
    return m


async def _log_in(m: UserSessionManager, fake: FakeTelegram, user_id: str = "u1") -> Any:
    assert (await m.begin_login(user_id, PHONE)).status is LoginStatus.CODE_SENT
    assert (await m.complete_login(user_id, fake.last_code(PHONE))).ok
    return await m.get_user_client(user_id)


@pytest.mark.firestore
async def test_a_second_instance_gets_session_in_use_until_the_first_closes(
    managers: list[UserSessionManager], firestore_client: Any, bot_id: str, fake: FakeTelegram
) -> None:
    a = _manager(managers, firestore_client, bot_id, fake)
    b = _manager(managers, firestore_client, bot_id, fake, handoff_timeout=0)  # never asks a to hand over
    client = await _log_in(a, fake)
    with pytest.raises(SessionInUseError) as info:
        await b.get_user_client("u1")
    assert info.value.holder == a.holder_id
    assert info.value.expires_at is not None and info.value.expires_at > datetime.datetime.now(UTC)
    with pytest.raises(SessionInUseError):
        await b.begin_login("u1", PHONE)
    listed = {s.user_id: s for s in await b.list_user_sessions()}
    assert listed["u1"].in_use_by == a.holder_id and not listed["u1"].active
    assert (await b.get_session_stats())["leased_sessions"] == 1
    assert await b.cleanup_inactive_sessions(days=0) == []  # leased sessions are never cleaned up
    await a.aclose()
    assert not client.is_connected()
    assert _stored_lease(firestore_client, bot_id) is None  # released on close
    other = await b.get_user_client("u1")
    assert other is not None and (await other.get_me()).id == 1001
    assert _stored_lease(firestore_client, bot_id).holder == b.holder_id


@pytest.mark.firestore
@pytest.mark.slow
async def test_a_client_whose_lease_was_taken_over_is_closed(
    managers: list[UserSessionManager], firestore_client: Any, bot_id: str, fake: FakeTelegram
) -> None:
    a = _manager(managers, firestore_client, bot_id, fake, lease_ttl=0.9)
    client = await _log_in(a, fake)
    # Another instance took over (as after a pause longer than the TTL).
    intruder = {"holder": "elsewhere:1:x", "expires_at": datetime.datetime.now(UTC) + datetime.timedelta(minutes=5)}
    _doc(firestore_client, bot_id).update({"lease": intruder})
    deadline = time.monotonic() + 5
    while (a.active_clients or client.is_connected()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert a.active_clients == 0 and a.evictions["lost_lease"] == 1
    assert not client.is_connected()
    assert _stored_lease(firestore_client, bot_id).holder == "elsewhere:1:x"  # not released: not ours
    with pytest.raises(SessionInUseError) as info:
        await a.get_user_client("u1")
    assert info.value.holder == "elsewhere:1:x"


@pytest.mark.firestore
@pytest.mark.slow
async def test_leases_are_renewed_while_the_client_is_open(
    managers: list[UserSessionManager], firestore_client: Any, bot_id: str, fake: FakeTelegram
) -> None:
    a = _manager(managers, firestore_client, bot_id, fake, lease_ttl=1.2)
    await _log_in(a, fake)
    first = _stored_lease(firestore_client, bot_id).expires_at
    await asyncio.sleep(2.0)  # well past the TTL
    stored = _stored_lease(firestore_client, bot_id)
    assert stored.holder == a.holder_id and stored.expires_at > first
    assert stored.expires_at > datetime.datetime.now(UTC)
    health = await a.health_check()
    assert health["status"] == "healthy", health
    assert health["leases"] == {"held": 1, "lost": 0, "failing": 0, "holder": a.holder_id, "ttl": 1.2}


# -- two processes ---------------------------------------------------------------------------------

HOLDER = """
import asyncio, json, sys

from telethon_firestore_session.manager import UserSessionManager
from tests.telegram_double import FakeTelegram


async def main() -> None:
    backend, bot_id, sessions_dir, state = sys.argv[1:5]
    fake = FakeTelegram.load(state)
    kw = {"backend": "firestore"} if backend == "firestore" else {"sessions_dir": sessions_dir}
    manager = UserSessionManager(bot_id, api_id=12345, api_hash="0123456789abcdef0123456789abcdef",
                                 client_factory=fake.client, lease_ttl=3.0, **kw)
    client = await manager.get_user_client("u1")
    me = await client.get_me()
    print(json.dumps({"holder": manager.holder_id, "me": me.id}), flush=True)
    await asyncio.sleep(120)  # killed long before this


asyncio.run(main())
"""


@pytest.fixture
def holder_process() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            if proc.stdin is not None:
                proc.stdin.close()
            if proc.stdout is not None:
                proc.stdout.close()
            if proc.stderr is not None:
                proc.stderr.close()


def _start_holder(
    procs: list[subprocess.Popen[str]], backend: str, bot_id: str, sessions_dir: Path, state: Path
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, backend, bot_id, str(sessions_dir), str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=dict(os.environ),
    )
    procs.append(proc)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline() if proc.stdout else ""))
    reader.start()
    reader.join(60)
    if not line or not line[0].strip():
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"the holder process did not start: {err[-3000:]}")
    return proc, json.loads(line[0])


@pytest.mark.firestore
@pytest.mark.slow
async def test_two_processes_contend_and_a_killed_holder_is_taken_over_within_the_ttl(
    managers: list[UserSessionManager],
    firestore_client: Any,
    bot_id: str,
    fake: FakeTelegram,
    tmp_path: Path,
    holder_process: list[subprocess.Popen[str]],
) -> None:
    first = _manager(managers, firestore_client, bot_id, fake)
    await _log_in(first, fake)
    await first.aclose()
    state = tmp_path / "telegram.json"
    fake.save(state)
    proc, started = _start_holder(holder_process, "firestore", bot_id, tmp_path, state)
    assert started["me"] == 1001

    b = _manager(managers, firestore_client, bot_id, fake, handoff_timeout=0)
    with pytest.raises(SessionInUseError) as info:
        await b.get_user_client("u1")
    assert info.value.holder == started["holder"]
    first_expiry = info.value.expires_at
    assert first_expiry is not None
    await asyncio.sleep(4.0)  # longer than the holder's 3 s TTL: it keeps renewing
    with pytest.raises(SessionInUseError) as again:
        await b.get_user_client("u1")
    assert again.value.holder == started["holder"]
    assert again.value.expires_at is not None and again.value.expires_at > first_expiry

    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    killed = time.monotonic()
    client = None
    while client is None:
        try:
            client = await b.get_user_client("u1")
        except SessionInUseError:
            assert time.monotonic() - killed < 3.0 + 2.0, "the lease was not taken over within its TTL"
            await asyncio.sleep(0.1)
    took = time.monotonic() - killed
    assert took <= 3.0 + 2.0
    assert (await client.get_me()).id == 1001
    assert _stored_lease(firestore_client, bot_id).holder == b.holder_id


@pytest.mark.slow
async def test_two_processes_on_one_sqlite_user_get_session_in_use(
    tmp_path: Path, fake: FakeTelegram, holder_process: list[subprocess.Popen[str]]
) -> None:
    sessions = tmp_path / "sessions"
    async with UserSessionManager("bot", sessions_dir=sessions, client_factory=fake.client, **API) as first:
        await _log_in(first, fake)
    state = tmp_path / "telegram.json"
    fake.save(state)
    proc, started = _start_holder(holder_process, "sqlite", "bot", sessions, state)
    assert started["me"] == 1001
    async with UserSessionManager("bot", sessions_dir=sessions, client_factory=fake.client, **API) as b:
        with pytest.raises(SessionInUseError, match="another process"):
            await b.get_user_client("u1")
        assert b.active_clients == 0
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        client = await b.get_user_client("u1")  # the kernel released the dead process's lock
        assert client is not None and (await client.get_me()).id == 1001


# -- Firestore unreachable ------------------------------------------------------------------------


@pytest.mark.firestore
async def test_health_check_reports_a_paused_emulator_as_unhealthy_without_raising(
    managers: list[UserSessionManager], firestore_client: Any, bot_id: str, fake: FakeTelegram, paused: Any
) -> None:
    m = _manager(managers, firestore_client, bot_id, fake, rpc_timeout=1.0)
    await _log_in(m, fake)
    paused.pause()
    try:
        start = time.monotonic()
        health = await m.health_check(timeout=1.0)
        took = time.monotonic() - start
        assert health["status"] == "unhealthy", health
        assert "did not answer" in health["error"] or "failed" in health["error"]
        assert took < 3.0
        assert health["leases"]["held"] == 1 and "queue_depth" in health["writer"]
        start = time.monotonic()
        with pytest.raises(SessionStoreError):
            await m.get_user_client("someone-else")
        assert time.monotonic() - start < 5.0
    finally:
        paused.resume()
    assert (await m.health_check())["status"] in ("healthy", "degraded")


# -- fencing: a holder that lost its lease writes nothing ---------------------------------------------

PEER = types.contacts.ResolvedPeer(types.PeerUser(7), [], [types.User(7, access_hash=49, username="seven")])


def _leased_session(
    client: Any, bot_id: str, holder: str, ttl: float = 30.0
) -> tuple[FirestoreSession, FirestoreLease]:
    """A session of u1 whose writes are fenced by ``holder``'s lease, as the manager opens them."""
    lease = _lease(client, bot_id, holder, ttl=ttl)
    assert lease.acquire()
    session = FirestoreSession("u1", bot_id=bot_id, client=client, flush_interval=60)
    session.store.fence = lease
    return session, lease


@pytest.mark.firestore
def test_the_store_refuses_a_stale_holders_writes(firestore_client: Any, bot_id: str) -> None:
    """A frozen VM: its monotonic clock did not advance, so only the store can tell that the lease went."""
    doc = _doc(firestore_client, bot_id)
    doc.set({"schema_version": 1})
    session, lease = _leased_session(firestore_client, bot_id, "host:1:a", ttl=60.0)
    # Meanwhile the lease expired (as seen by the others) and another instance took it.
    doc.update({"lease.expires_at": datetime.datetime.now(UTC) - datetime.timedelta(seconds=1)})
    taker = _lease(firestore_client, bot_id, "host:2:b")
    assert taker.acquire()
    taken = doc.get()
    assert lease.held()  # by its own clock the old holder still holds it
    session.process_entities(PEER)
    session.save()  # the changes go to the writer, whose commit is refused
    assert session.wait_written(10)
    assert list(doc.collection("entities").stream()) == []
    assert lease.lost and lease.lost_to is not None and lease.lost_to.holder == "host:2:b"
    assert lease.fenced_writes >= 1
    session.set_dc(4, "149.154.167.91", 443)  # a header change is written through: refused with an error
    with pytest.raises(SessionInUseError) as info:
        session.save()
    assert info.value.holder == "host:2:b"
    with pytest.raises(SessionInUseError):
        session.close()  # still unwritten: said again, never dropped in silence; and no release
    assert doc.get().update_time == taken.update_time  # the new holder's document is untouched
    assert _stored_lease(firestore_client, bot_id).holder == "host:2:b"


@pytest.mark.firestore
def test_fenced_writes_land_while_the_lease_is_ours_though_others_write_the_document(
    firestore_client: Any, bot_id: str
) -> None:
    doc = _doc(firestore_client, bot_id)
    doc.set({"schema_version": 1, "update_states": {"-1001": {"pts": 5, "qts": 0, "date": 0, "seq": 0}}})
    session, lease = _leased_session(firestore_client, bot_id, "host:1:a")
    doc.update({"handoff": {"from": "host:1:a", "to": "x"}})  # someone else's write: the precondition fails once
    users = [types.User(1000 + i, access_hash=i, username=f"user{i}") for i in range(1200)]  # three commits
    session.process_entities(types.contacts.ResolvedPeer(types.PeerUser(1000), [], users))
    session.set_update_state(0, types.updates.State(9, 0, datetime.datetime.now(UTC), 2, 0))
    assert session.flush(30)
    data = doc.get().to_dict()
    assert data["update_states"]["0"]["pts"] == 9 and data["update_states"]["-1001"]["pts"] == 5  # merged, not replaced
    assert len(list(doc.collection("entities").select([]).stream())) == 1200
    assert not lease.lost and lease.fenced_writes == 0
    assert session.store.commits == 3
    session.close()  # closing a leased session releases its lease
    assert _stored_lease(firestore_client, bot_id) is None


@pytest.mark.firestore
def test_a_fenced_commit_renews_the_lease_so_no_renewal_of_its_own_is_due(firestore_client: Any, bot_id: str) -> None:
    _doc(firestore_client, bot_id).set({"schema_version": 1})
    session, lease = _leased_session(firestore_client, bot_id, "host:1:a", ttl=1.5)
    first = _stored_lease(firestore_client, bot_id).expires_at
    time.sleep(0.6)  # more than a third of the TTL: a renewal is due
    session.process_entities(PEER)
    assert session.flush(10)
    stored = _stored_lease(firestore_client, bot_id).expires_at
    assert stored - first >= datetime.timedelta(seconds=0.5)  # the guard write carried the new expiry
    assert abs(lease.expires_at - stored) < datetime.timedelta(milliseconds=1)  # type: ignore[operator]
    lease.renew_if_due()
    assert lease.renewals == 0 and lease.held()  # not due: the commit renewed it
    assert lease.deadline() - time.monotonic() > 1.0
    session.close()
    assert _stored_lease(firestore_client, bot_id) is None  # and the release is not undone


@pytest.mark.firestore
async def test_a_leased_session_writes_pending_update_states_with_its_entities(
    firestore_client: Any, bot_id: str
) -> None:
    """Every commit of a leased session writes its session document (the guard): states ride along for free."""
    state = types.updates.State(9, 0, datetime.datetime.now(UTC), 2, 0)
    sessions = []
    for user, leased in (("u1", True), ("u2", False)):
        doc = _doc(firestore_client, bot_id, user)
        doc.set({"schema_version": 1})
        session = FirestoreSession(user, bot_id=bot_id, client=firestore_client, flush_interval=0.05)
        if leased:
            lease = FirestoreLease(doc, firestore_client, holder="host:1:a")
            assert lease.acquire()
            session.store.fence = lease
        session.set_update_state(0, state)  # not due for state_flush_interval (60 s)
        session.process_entities(PEER)  # the flush timer hands the entity over within 0.05 s
        sessions.append(session)
    deadline = time.monotonic() + 10
    while not all(s.store.commits for s in sessions) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    leased_data, bare_data = (_doc(firestore_client, bot_id, u).get().to_dict() for u in ("u1", "u2"))
    assert leased_data["update_states"]["0"]["pts"] == 9
    assert sessions[0].store.writes == 2  # the guard (with the states) and the entity: no write of their own
    assert "update_states" not in bare_data  # unleased, the states wait for save() or their interval
    for s in sessions:
        s.close()


@pytest.mark.firestore
@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"schema_version": 999, "auth_key": bytes(range(256))}, SchemaVersionError),
        ({"schema_version": 1, "auth_key": "not bytes"}, SessionCorruptError),
    ],
    ids=["newer-schema", "auth-key-type"],
)
async def test_an_unreadable_document_stays_as_it_was(
    managers: list[UserSessionManager],
    firestore_client: Any,
    bot_id: str,
    fake: FakeTelegram,
    fields: dict[str, Any],
    error: type[Exception],
) -> None:
    doc = _doc(firestore_client, bot_id)
    doc.set({**fields, "registered_at": datetime.datetime(2024, 1, 1, tzinfo=UTC), "logged_in": True})
    before = doc.get()
    m = _manager(managers, firestore_client, bot_id, fake)
    with pytest.raises(error):
        await m.get_user_client("u1")
    after = doc.get()
    assert after.update_time == before.update_time and after.to_dict() == before.to_dict()
    assert fake.connects == 0


# -- hand-over between live instances ------------------------------------------------------------------


@pytest.mark.firestore
def test_the_handoff_listener_listens_again_when_its_stream_ends(firestore_client: Any, bot_id: str) -> None:
    heard: list[str] = []
    # Requested before the listener starts: its first snapshot has it. (The emulator can miss a write that
    # races with a listener's start; real hand-over requests come long after the listener started.)
    _doc(firestore_client, bot_id, "u1").set({"handoff": {"from": "me", "to": "other"}})
    stop = watch_handoffs(_doc(firestore_client, bot_id).parent, "me", heard.append)
    listener: Any = stop.__self__  # type: ignore[attr-defined]
    try:
        assert wait_for(lambda: "u1" in heard)
        # The server ends the stream (google-cloud-firestore's Watch then stops for good).
        listener._watch.unsubscribe()
        assert not listener._watch.is_active
        _doc(firestore_client, bot_id, "u2").set({"handoff": {"from": "me", "to": "other"}})
        listener.periodic()  # the writer's tick, at most `interval` seconds later
        assert listener.restarts == 1 and listener._watch.is_active
        assert wait_for(lambda: "u2" in heard)
    finally:
        stop()
    listener.periodic()
    assert listener.restarts == 1 and not listener._watch.is_active  # stopped: it stays stopped


@pytest.mark.firestore
@pytest.mark.slow
async def test_an_idle_client_is_handed_over_to_another_instance(
    managers: list[UserSessionManager], firestore_client: Any, bot_id: str, fake: FakeTelegram
) -> None:
    a = _manager(managers, firestore_client, bot_id, fake, flush_interval=60)
    b = _manager(managers, firestore_client, bot_id, fake)
    client_a = await _log_in(a, fake)
    bob = await client_a.get_entity("alice")  # pending in a's session (60 s flush interval)
    await asyncio.sleep(a.handoff_grace)  # idle
    start = time.monotonic()
    client_b = await b.get_user_client("u1")
    took = time.monotonic() - start
    assert client_b is not None and took < 3.0, took
    assert not client_a.is_connected() and a.active_clients == 0 and a.evictions["handoff"] == 1
    # The old connection ended before the new one began: one connection per auth key at any time.
    (last_disconnect,) = [t for what, t in fake.events if what == "disconnect"]
    last_connect = max(t for what, t in fake.events if what == "connect")
    assert last_disconnect < last_connect
    assert _stored_lease(firestore_client, bot_id).holder == b.holder_id
    assert "handoff" not in _doc(firestore_client, bot_id).get().to_dict()
    stored = await asyncio.to_thread(client_b.session.get_input_entity, bob.id)  # written by a before it let go
    assert stored.access_hash == bob.access_hash
    assert (await client_b.get_me()).id == 1001


@pytest.mark.firestore
@pytest.mark.slow
async def test_a_client_in_use_is_handed_over_only_once_idle(
    managers: list[UserSessionManager], firestore_client: Any, bot_id: str, fake: FakeTelegram
) -> None:
    a = _manager(managers, firestore_client, bot_id, fake)
    b = _manager(managers, firestore_client, bot_id, fake, handoff_timeout=1.5)
    client_a = await _log_in(a, fake)

    async def keep_busy(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await client_a.get_me()  # Telethon stamps every request: the client is in use
            await asyncio.sleep(0.1)

    busy = asyncio.create_task(keep_busy(2.5))
    with pytest.raises(SessionInUseError):
        await b.get_user_client("u1")
    assert client_a.is_connected() and a.evictions["handoff"] == 0
    await busy
    b.handoff_timeout = 15.0
    start = time.monotonic()
    assert await b.get_user_client("u1") is not None
    assert time.monotonic() - start < a.handoff_grace + 2.0
    assert not client_a.is_connected() and a.evictions["handoff"] == 1


# -- hand-over and fencing across processes ----------------------------------------------------------

IDLE_HOLDER = """
import asyncio, json, logging, sys

from telethon_firestore_session.errors import SessionInUseError
from telethon_firestore_session.manager import UserSessionManager
from tests.telegram_double import FakeTelegram


async def main() -> None:
    bot_id, state, ttl, handoff = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    logging.basicConfig(level=logging.INFO)  # on stderr, which the test shows when it fails
    fake = FakeTelegram.load(state)
    manager = UserSessionManager(bot_id, backend="firestore", api_id=12345, api_hash="0123456789abcdef0123456789abcdef",
                                 client_factory=fake.client, flush_interval=60, lease_ttl=ttl, handoff_timeout=handoff)
    client = await manager.get_user_client("u1")
    carol = await client.get_entity("carol")  # pending in memory: written when the client closes
    print(json.dumps({"holder": manager.holder_id, "carol": [carol.id, carol.access_hash]}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # the test's go
    try:
        again = await manager.get_user_client("u1")
        result = "the same client" if again is client else "another client" if again else "none"
    except SessionInUseError as exc:
        result = f"in use by {exc.holder}"
    report = {"events": fake.events, "connected": client.is_connected(), "again": result,
              "evictions": manager.evictions}
    print(json.dumps(report), flush=True)
    await manager.aclose()


asyncio.run(main())
"""


async def _logged_in_holder(
    managers: list[UserSessionManager],
    client: Any,
    bot_id: str,
    fake: FakeTelegram,
    tmp_path: Path,
    procs: list[subprocess.Popen[str]],
    *,
    ttl: float,
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Log u1 in here, then start IDLE_HOLDER on it (which never asks for a hand-over itself)."""
    first = _manager(managers, client, bot_id, fake)
    await _log_in(first, fake)
    await first.aclose()
    state = tmp_path / "telegram.json"
    fake.save(state)
    proc = subprocess.Popen(
        [sys.executable, "-c", IDLE_HOLDER, bot_id, str(state), str(ttl), "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=dict(os.environ),
    )
    procs.append(proc)
    return proc, _read_line(proc)


def _read_line(proc: subprocess.Popen[str], timeout: float = 60.0) -> dict[str, Any]:
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline() if proc.stdout else ""))
    reader.start()
    reader.join(timeout)
    if not line or not line[0].strip():
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"the holder process said nothing: {err[-3000:]}")
    return dict(json.loads(line[0]))


def _report(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    report = _read_line(proc)
    assert proc.wait(timeout=30) == 0
    return report


@pytest.mark.firestore
async def test_another_process_hands_an_idle_client_over_within_seconds(
    managers: list[UserSessionManager],
    firestore_client: Any,
    bot_id: str,
    fake: FakeTelegram,
    tmp_path: Path,
    holder_process: list[subprocess.Popen[str]],
) -> None:
    proc, started = await _logged_in_holder(managers, firestore_client, bot_id, fake, tmp_path, holder_process, ttl=60)
    await asyncio.sleep(1.0)  # the holder's client stays unused

    b = _manager(managers, firestore_client, bot_id, fake)  # the defaults: handoff_timeout=15
    start = time.monotonic()
    try:
        client = await b.get_user_client("u1")
    except SessionInUseError as exc:
        proc.kill()
        raise AssertionError(f"not handed over; the holder said: {proc.communicate(timeout=10)[1][-3000:]}") from exc
    took = time.monotonic() - start
    connected_at = max(t for what, t in fake.events if what == "connect")
    assert client is not None and took < 3.0, took
    print(f"hand-over between processes: {took:.2f} s")  # measured for the README (-s shows it)

    report = _report(proc)
    disconnected_at = max(t for what, t in report["events"] if what == "disconnect")
    assert disconnected_at < connected_at  # never two connections on one auth key
    assert not report["connected"] and report["evictions"]["handoff"] == 1
    assert report["again"] == f"in use by {b.holder_id}"
    carol_id, carol_hash = started["carol"]
    stored = await asyncio.to_thread(client.session.get_input_entity, carol_id)  # what the holder had pending
    assert stored.access_hash == carol_hash
    assert (await client.get_me()).id == 1001


@pytest.mark.firestore
async def test_a_holder_paused_past_its_lease_hands_out_nothing_and_writes_nothing(
    managers: list[UserSessionManager],
    firestore_client: Any,
    bot_id: str,
    fake: FakeTelegram,
    tmp_path: Path,
    holder_process: list[subprocess.Popen[str]],
) -> None:
    proc, started = await _logged_in_holder(managers, firestore_client, bot_id, fake, tmp_path, holder_process, ttl=2)
    entities = _doc(firestore_client, bot_id).collection("entities")
    before = {d.id for d in entities.stream()}  # the self user, written at the login
    proc.send_signal(signal.SIGSTOP)  # a long GC pause, a frozen VM
    try:
        b = _manager(managers, firestore_client, bot_id, fake, flush_interval=60)  # writes nothing meanwhile
        client = await b.get_user_client("u1")  # asks the paused holder, then takes the lease once it expired
        assert client is not None
        owned = _doc(firestore_client, bot_id).get()
    finally:
        proc.send_signal(signal.SIGCONT)
    report = _report(proc)  # the resumed holder is asked for the client again
    assert report["again"] == f"in use by {b.holder_id}"  # not its old client
    assert not report["connected"] and report["evictions"]["lost_lease"] == 1
    await asyncio.to_thread(BackgroundWriter.get().flush, None, 10)
    carol_id, _ = started["carol"]
    after = {d.id for d in entities.stream()}
    assert str(carol_id) not in after and after == before  # its pending write-behind never landed
    assert _doc(firestore_client, bot_id).get().update_time == owned.update_time  # nothing at all was written
    assert _stored_lease(firestore_client, bot_id).holder == b.holder_id


@pytest.mark.firestore
async def test_the_bots_own_session_is_leased_and_handed_over_at_once(
    managers: list[UserSessionManager], firestore_client: Any, bot_id: str, fake: FakeTelegram
) -> None:
    fake.add_bot("4242:AAbotsecretbotsecretbotsecret", username="testbot")
    config = SessionConfig(bot_id=bot_id, backend="firestore", emulator_host=os.environ["FIRESTORE_EMULATOR_HOST"])
    config = dataclasses.replace(config, project=os.environ["GOOGLE_CLOUD_PROJECT"], **API)
    a = _manager(managers, firestore_client, bot_id, fake)
    bot_a = fake.client(await asyncio.to_thread(config.create_bot_session), **API)
    await a.start_bot(bot_a, bot_token="4242:AAbotsecretbotsecretbotsecret")
    assert bot_a.is_connected() and a.active_clients == 0  # kept, but not one of the users' clients
    doc = firestore_client.document(f"bots/{bot_id}/bot_session/session")
    assert parse_lease(doc.get().to_dict()["lease"]).holder == bot_a.session.store.fence.holder
    with pytest.raises(SessionInUseError):
        await asyncio.to_thread(config.create_bot_session, handoff_timeout=0)
    with pytest.raises(ConfigError):  # a user's session is not the bot's
        await a.start_bot(
            fake.client(FirestoreSession("u9", bot_id=bot_id, client=firestore_client), **API), bot_token="x"
        )

    start = time.monotonic()
    session_b = await asyncio.to_thread(config.create_bot_session)  # another instance starts: a lets go at once
    assert time.monotonic() - start < 3.0
    assert not bot_a.is_connected() and a.evictions["handoff"] == 1
    assert parse_lease(doc.get().to_dict()["lease"]).holder == session_b.store.fence.holder
    assert session_b.auth_key.key == bot_a.session.auth_key.key  # the same bot login, not a new one
    session_b.close()
    assert "lease" not in doc.get().to_dict()
