"""Leases on Firestore session documents, against the real emulator; and one writer per SQLite file.

Two managers in one process, two processes, and a holder killed with SIGKILL.
Telegram is :class:`tests.telegram_double.FakeTelegram` (a real TelegramClient
with its RPC sender swapped).
"""

from __future__ import annotations

import asyncio
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

from telethon_firestore_session import BackgroundWriter
from telethon_firestore_session.errors import SessionInUseError, SessionStoreError
from telethon_firestore_session.firestore import session_document
from telethon_firestore_session.firestore.lease import FirestoreLease, make_holder_id, parse_lease
from telethon_firestore_session.ids import SessionKey
from telethon_firestore_session.manager import LoginStatus, UserSessionManager

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
    managers: list[UserSessionManager], firestore_client: Any, bot_id: str, fake: FakeTelegram, emulator: Any
) -> None:
    if emulator.process is None:
        pytest.skip("needs an emulator started by the test suite (it is paused)")
    m = _manager(managers, firestore_client, bot_id, fake, rpc_timeout=1.0)
    await _log_in(m, fake)
    emulator.pause()
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
        emulator.resume()
    assert (await m.health_check())["status"] in ("healthy", "degraded")
