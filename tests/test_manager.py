"""UserSessionManager over both backends: SQLite files and the real Firestore emulator.

Telegram is :class:`tests.telegram_double.FakeTelegram` behind a real
``TelegramClient`` (only its RPC sender is swapped; see that module). The
sessions and stores under the clients are the real ones.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from telethon.tl import types

from telethon_firestore_session import BackgroundWriter
from telethon_firestore_session.crypto import SessionCipher, generate_key
from telethon_firestore_session.errors import (
    InvalidSessionIdError,
    SessionClosedError,
    SessionCorruptError,
    SessionDecryptionError,
    SessionStoreError,
)
from telethon_firestore_session.firestore import FirestoreSession
from telethon_firestore_session.ids import BotSessionKey
from telethon_firestore_session.manager import (
    LoginStatus,
    UserSession,
    UserSessionManager,
)
from telethon_firestore_session.sqlite import ScopedSQLiteSession
from telethon_firestore_session.sqlite.directory import SQLiteDirectory

from .leaks import assert_absent
from .telegram_double import FakeTelegram

ROOT = Path(__file__).resolve().parent.parent
UTC = datetime.timezone.utc

ALICE = "+1 555 0100"
BOB = "+1 555 0200"  # has a 2FA password
CAROL = "+1 555 0300"
PASSWORD = "correct horse battery staple"
PHONES = {"alice": ALICE, "bob": BOB, "carol": CAROL}


@pytest.fixture
def fake() -> FakeTelegram:
    tg = FakeTelegram()
    tg.add_account(ALICE, user_id=1001, first_name="Alice", username="alice")
    tg.add_account(BOB, user_id=1002, first_name="Bob", username="bob", password=PASSWORD)
    tg.add_account(CAROL, user_id=1003, first_name="Carol", username="carol")
    return tg


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.firestore)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Env:
    """One test's backend: builds managers and looks at the stored data directly."""

    def __init__(self, backend: str, bot_id: str, sessions_dir: Path, client: Any, fake: FakeTelegram) -> None:
        self.backend = backend
        self.bot_id = bot_id
        self.sessions_dir = sessions_dir
        self.client = client
        self.fake = fake
        self.managers: list[UserSessionManager] = []

    def manager(self, **kw: Any) -> UserSessionManager:
        kw.setdefault("api_id", 12345)
        kw.setdefault("api_hash", "0123456789abcdef0123456789abcdef")
        kw.setdefault("client_factory", self.fake.client)
        kw.setdefault("flush_interval", 60.0)  # nothing is written behind unless a test flushes
        if self.backend == "firestore":
            m = UserSessionManager(self.bot_id, backend="firestore", firestore_client=self.client, **kw)
        else:
            m = UserSessionManager(self.bot_id, sessions_dir=self.sessions_dir, **kw)
        self.managers.append(m)
        return m

    def open_session(self, user_id: str) -> Any:
        """The user's stored session, opened directly (not through a manager)."""
        if self.backend == "firestore":
            return FirestoreSession(user_id, bot_id=self.bot_id, client=self.client)
        return ScopedSQLiteSession(user_id, bot_id=self.bot_id, sessions_dir=self.sessions_dir)

    def stored_auth_key(self, user_id: str) -> bytes | None:
        session = self.open_session(user_id)
        try:
            return session.auth_key.key if session.auth_key is not None else None
        finally:
            session.close()

    def stored_entity(self, user_id: str, entity_id: int) -> Any:
        session = self.open_session(user_id)
        try:
            return session.get_input_entity(entity_id)
        except ValueError:
            return None
        finally:
            session.close()

    def exists(self, user_id: str) -> bool:
        if self.backend == "firestore":
            doc = self.client.collection("bots").document(self.bot_id).collection("user_sessions").document(user_id)
            return bool(doc.get().exists) or bool(list(doc.collections()))
        bot_dir = self.sessions_dir / self.bot_id
        metadata = bot_dir / "metadata.json"
        entries = json.loads(metadata.read_text()) if metadata.exists() else {}
        return (bot_dir / f"user_{user_id}.session").exists() or user_id in entries

    def age(self, user_id: str, days: float) -> None:
        """Make the user's session look inactive for ``days`` days (written directly)."""
        old = datetime.datetime.now(UTC) - datetime.timedelta(days=days)
        if self.backend == "firestore":
            doc = self.client.collection("bots").document(self.bot_id).collection("user_sessions").document(user_id)
            doc.update({"last_active_at": old, "registered_at": old})
            return
        md_path = self.sessions_dir / self.bot_id / "metadata.json"
        entries = json.loads(md_path.read_text())
        entries[user_id]["last_active_at"] = entries[user_id]["registered_at"] = old.isoformat()
        md_path.write_text(json.dumps(entries))


@pytest.fixture
async def env(
    request: pytest.FixtureRequest, backend: str, bot_id: str, tmp_path: Path, fake: FakeTelegram
) -> AsyncIterator[Env]:
    client = request.getfixturevalue("firestore_client") if backend == "firestore" else None
    e = Env(backend, bot_id, tmp_path / "sessions", client, fake)
    try:
        yield e
    finally:
        for m in e.managers:
            await m.aclose()
        assert BackgroundWriter.get().flush(None, 10)


async def login(manager: UserSessionManager, fake: FakeTelegram, user_id: str, who: str = "alice") -> Any:
    """Log ``user_id`` in as ``who`` through the manager; return the client."""
    phone = PHONES[who]
    sent = await manager.begin_login(user_id, phone)
    assert sent.status is LoginStatus.CODE_SENT, sent
    done = await manager.complete_login(user_id, fake.last_code(phone), PASSWORD if who == "bob" else None)
    assert done.status is LoginStatus.LOGGED_IN, done
    client = await manager.get_user_client(user_id)
    assert client is not None
    return client


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


# -- registration and login -------------------------------------------------------------------------


async def test_register_is_idempotent_and_a_user_without_login_gets_no_client(env: Env) -> None:
    m = env.manager()
    # The original system's `success = await create_user_session(...)`: True whenever the user is registered.
    assert await m.create_user_session("u1") is True
    assert await m.create_user_session("u1") is True
    assert await m.register_user("u1") is False  # "was it new" is register_user's answer
    assert await m.register_user("u3") is True and await m.for_user("u3").register() is False
    assert await m.create_user_session(42, api_id=777, api_hash="ffffffffffffffffffffffffffffffff") is True
    sessions = {s.user_id: s for s in await m.list_user_sessions()}
    assert set(sessions) == {"u1", "u3", "42"}
    assert sessions["42"].custom_api and not sessions["u1"].custom_api
    assert not sessions["u1"].logged_in and not sessions["u1"].active
    assert await m.get_user_client("u1") is None
    assert await m.get_user_client("nobody") is None
    assert env.fake.connects == 0  # nobody was connected: that would have created auth keys
    assert not env.exists("nobody")
    with pytest.raises(InvalidSessionIdError):
        await m.get_user_client("../etc")
    with pytest.raises(ValueError, match="both"):
        await m.create_user_session("u2", api_id=1)


async def test_login_by_code_stores_the_auth_key_and_returns_a_connected_client(env: Env) -> None:
    m = env.manager()
    await m.create_user_session("u1")
    sent = await m.begin_login("u1", ALICE)
    assert sent.status is LoginStatus.CODE_SENT and not sent.ok
    assert sent.expires_at is not None and sent.expires_at > datetime.datetime.now(UTC)
    assert await m.get_user_client("u1") is None  # not logged in yet
    wrong = await m.complete_login("u1", "00000" if env.fake.last_code(ALICE) != "00000" else "11111")
    assert wrong.status is LoginStatus.INVALID_CODE
    done = await m.complete_login("u1", env.fake.last_code(ALICE))
    assert done.status is LoginStatus.LOGGED_IN and done.ok and done.telegram_user_id == 1001
    client = await m.get_user_client("u1")
    assert client is not None and client.is_connected()
    me = await client.get_me()
    assert me.id == 1001 and me.username == "alice"
    assert env.fake.logged_in_user(client.session.auth_key.key) == 1001
    assert await m.is_logged_in("u1")
    again = await m.begin_login("u1", ALICE)
    assert again.status is LoginStatus.ALREADY_LOGGED_IN
    stats = await m.get_session_stats()
    assert stats["logged_in_sessions"] == 1 and stats["active_sessions"] == 1
    key = client.session.auth_key.key
    await m.aclose()
    assert not client.is_connected()
    assert env.stored_auth_key("u1") == key  # durable before begin_login returned, and still there


async def test_two_step_login_with_a_2fa_password(env: Env) -> None:
    m = env.manager()
    assert (await m.begin_login("b1", BOB)).status is LoginStatus.CODE_SENT
    step = await m.complete_login("b1", env.fake.last_code(BOB))
    assert step.status is LoginStatus.PASSWORD_NEEDED
    assert (await m.complete_login("b1", "", "not it")).status is LoginStatus.INVALID_PASSWORD
    assert (await m.complete_login("b1", "")).status is LoginStatus.PASSWORD_NEEDED
    done = await m.complete_login("b1", "", PASSWORD)
    assert done.status is LoginStatus.LOGGED_IN and done.telegram_user_id == 1002
    client = await m.get_user_client("b1")
    assert (await client.get_me()).id == 1002
    # Code and password in one call.
    assert (await m.begin_login("b2", BOB)).status is LoginStatus.CODE_SENT
    one = await m.complete_login("b2", env.fake.last_code(BOB), PASSWORD)
    assert one.status is LoginStatus.LOGGED_IN
    assert (await m.complete_login("b2", "123")).status is LoginStatus.ALREADY_LOGGED_IN


async def test_expired_codes_and_other_login_failures_are_typed_results(env: Env) -> None:
    m = env.manager()
    assert (await m.complete_login("u1", "12345")).status is LoginStatus.NO_PENDING_LOGIN
    assert (await m.begin_login("u1", "not a phone")).status is LoginStatus.INVALID_PHONE
    assert (await m.begin_login("u1", "+1 2")).status is LoginStatus.INVALID_PHONE  # Telegram refuses it
    assert (await m.begin_login("u1", ALICE)).status is LoginStatus.CODE_SENT
    env.fake.expire_codes()
    assert (await m.complete_login("u1", env.fake.last_code(ALICE))).status is LoginStatus.CODE_EXPIRED
    assert (await m.complete_login("u1", "12345")).status is LoginStatus.NO_PENDING_LOGIN  # cleared
    env.fake.flood["15550100"] = 3600  # over flood_sleep_threshold: Telethon raises
    flood = await m.begin_login("u1", ALICE)
    assert flood.status is LoginStatus.FLOOD_WAIT and flood.retry_after == 3600
    del env.fake.flood["15550100"]
    assert (await m.begin_login("u9", "+1 555 0999")).status is LoginStatus.CODE_SENT
    unknown = await m.complete_login("u9", env.fake.last_code("+1 555 0999"))
    assert unknown.status is LoginStatus.SIGN_UP_REQUIRED


async def test_the_pending_login_expires_after_login_timeout_without_asking_telegram(env: Env) -> None:
    m = env.manager(login_timeout=0.2)
    assert (await m.begin_login("u1", ALICE)).status is LoginStatus.CODE_SENT
    await asyncio.sleep(0.3)
    served = len(env.fake.requests)
    assert (await m.complete_login("u1", env.fake.last_code(ALICE))).status is LoginStatus.CODE_EXPIRED
    assert "SignInRequest" not in env.fake.requests[served:]


async def test_a_login_begun_before_a_restart_is_finished_by_a_new_manager(env: Env) -> None:
    first = env.manager()
    assert (await first.begin_login("u1", ALICE)).status is LoginStatus.CODE_SENT
    code = env.fake.last_code(ALICE)
    await first.aclose()
    second = env.manager()  # another instance: a new holder id, nothing in memory
    assert second.holder_id != first.holder_id
    done = await second.complete_login("u1", code)
    # FakeTelegram only accepts the code from the auth key that asked for it: the
    # second manager signed in with the key the first one stored.
    assert done.status is LoginStatus.LOGGED_IN
    client = await second.get_user_client("u1")
    assert (await client.get_me()).id == 1001


# -- the client cache -------------------------------------------------------------------------------


async def test_concurrent_get_user_client_calls_return_one_client(env: Env) -> None:
    first = env.manager()
    await login(first, env.fake, "u1")
    await first.aclose()
    m = env.manager()
    connects = env.fake.connects
    clients = await asyncio.gather(*(m.get_user_client("u1") for _ in range(12)))
    assert clients[0] is not None
    assert all(c is clients[0] for c in clients)
    assert env.fake.connects == connects + 1
    assert m.active_clients == 1


async def test_lru_eviction_flushes_and_disconnects_the_least_recently_used_client(env: Env) -> None:
    m = env.manager(max_active_clients=2)
    c1 = await login(m, env.fake, "u1", "alice")
    bob = await c1.get_entity("bob")  # an entity that only exists in u1's session memory
    c2 = await login(m, env.fake, "u2", "carol")
    assert await m.get_user_client("u1") is c1  # u1 is now the most recently used
    await login(m, env.fake, "u3", "bob")
    assert m.active_clients == 2 and m.evictions["lru"] == 1
    assert not c2.is_connected() and c1.is_connected()
    assert env.stored_auth_key("u2") is not None
    await login(m, env.fake, "u4", "alice")  # evicts u1 now
    assert not c1.is_connected() and m.evictions["lru"] == 2
    # Flushed on eviction, long before the 60 s flush interval: the entity is in the store.
    stored = env.stored_entity("u1", bob.id)
    assert isinstance(stored, types.InputPeerUser) and stored.access_hash == bob.access_hash
    # Evicted users come back with a fresh client, still logged in.
    again = await m.get_user_client("u1")
    assert again is not None and again is not c1 and (await again.get_me()).id == 1001


async def test_idle_clients_are_flushed_and_disconnected(env: Env) -> None:
    m = env.manager(idle_timeout=0.4)
    client = await login(m, env.fake, "u1")
    carol = await client.get_entity("carol")
    # Out of the cache first, then flushed and disconnected under the user's lock: wait for all of it.
    await wait_for(lambda: m.active_clients == 0 and not client.is_connected() and not m._cache.busy("u1"))
    assert m.evictions["idle"] == 1
    stored = env.stored_entity("u1", carol.id)
    assert stored is not None and stored.access_hash == carol.access_hash
    again = await m.get_user_client("u1")
    assert again is not None and again is not client


@pytest.mark.slow
async def test_a_client_in_use_is_not_idle(env: Env) -> None:
    m = env.manager(idle_timeout=0.6)
    client = await login(m, env.fake, "u1")
    for _ in range(8):  # 1.6 s of RPCs through the client, never through the manager
        await client.get_me()
        await asyncio.sleep(0.2)
    assert m.active_clients == 1 and client.is_connected()


async def test_a_client_logged_out_behind_the_managers_back_is_forgotten(env: Env) -> None:
    m = env.manager()
    client = await login(m, env.fake, "u1")
    assert await client.log_out()
    assert await m.get_user_client("u1") is None
    assert m.active_clients == 0


@pytest.mark.firestore
@pytest.mark.slow
def test_wait_written_waits_for_the_writer_and_hands_nothing_over(
    firestore_client: Any, bot_id: str, emulator: Any
) -> None:
    """What closing a client relies on: ``save()``, then ``SessionCore.wait_written`` off the event loop."""
    if emulator.process is None:
        pytest.skip("needs an emulator started by the test suite (unset FIRESTORE_EMULATOR_HOST) to pause it")
    session = FirestoreSession("u1", bot_id=bot_id, client=firestore_client, rpc_timeout=1.0)
    entities = firestore_client.collection(f"bots/{bot_id}/user_sessions/u1/entities")
    peer = types.contacts.ResolvedPeer(types.PeerUser(7), [], [types.User(7, access_hash=49, username="seven")])
    session.process_entities(peer)
    assert session.wait_written(5) is True  # nothing was handed over: nothing to wait for
    assert list(entities.stream()) == []  # and it did not save
    emulator.pause()
    try:
        session.save()  # hands the entity to the writer, which cannot reach Firestore now
        assert session.wait_written(0.5) is False
    finally:
        emulator.resume()
    assert session.wait_written(30) is True
    assert [d.id for d in entities.stream()] == ["7"]
    session.close()


# -- admin ---------------------------------------------------------------------------------------


async def test_delete_user_session_logs_out_and_removes_every_record(env: Env) -> None:
    m = env.manager()
    client = await login(m, env.fake, "u1")
    await client.get_entity("bob")
    key = client.session.auth_key.key
    assert await m.delete_user_session("u1") is True
    assert env.fake.logged_in_user(key) is None  # Telegram forgot the auth key
    assert not client.is_connected()
    assert not env.exists("u1")
    assert await m.get_user_client("u1") is None
    assert await m.list_user_sessions() == []
    assert await m.delete_user_session("u1") is False


async def test_delete_user_session_logs_out_a_user_whose_client_is_not_open(env: Env) -> None:
    first = env.manager()
    client = await login(first, env.fake, "u1")
    key = client.session.auth_key.key
    await first.aclose()
    m = env.manager()
    assert await m.delete_user_session("u1") is True
    assert env.fake.logged_in_user(key) is None
    assert not env.exists("u1")


async def test_delete_without_log_out_keeps_the_telegram_authorization(env: Env) -> None:
    m = env.manager()
    client = await login(m, env.fake, "u1")
    key = client.session.auth_key.key
    assert await m.delete_user_session("u1", log_out=False) is True
    assert env.fake.logged_in_user(key) == 1001
    assert not env.exists("u1")


async def test_deleting_a_user_who_never_logged_in_connects_nobody(env: Env) -> None:
    m = env.manager()
    await m.create_user_session("u1", api_id=5, api_hash="abcdefabcdefabcdefabcdefabcdefab")
    assert await m.delete_user_session("u1") is True
    assert env.fake.connects == 0 and env.fake.requests == []
    assert not env.exists("u1")


async def test_stats_count_registered_logged_in_and_active_sessions(env: Env) -> None:
    m = env.manager()
    for uid in ("a", "b", "c", "d"):
        await m.create_user_session(uid)
    await login(m, env.fake, "a", "alice")
    await login(m, env.fake, "b", "carol")
    stats = await m.get_session_stats()
    assert stats["total_sessions"] == 4
    assert stats["logged_in_sessions"] == 2
    assert stats["active_sessions"] == 2
    assert stats["backend"] == env.backend and stats["bot_id"] == env.bot_id
    if env.backend == "firestore":
        assert stats["leased_sessions"] == 2
    else:
        assert stats["leased_sessions"] is None
    await m.delete_user_session("b")
    stats = await m.get_session_stats()
    assert (stats["total_sessions"], stats["logged_in_sessions"], stats["active_sessions"]) == (3, 1, 1)


async def test_cleanup_removes_sessions_inactive_for_longer_than_days(env: Env) -> None:
    first = env.manager()
    for uid in ("old1", "old2", "fresh"):
        await first.create_user_session(uid)
    client = await login(first, env.fake, "old1", "alice")
    await client.get_entity("bob")  # give old1 an entity (a subcollection / rows) to remove
    await first.aclose()
    m = env.manager()
    open_client = await login(m, env.fake, "busy", "carol")
    for uid in ("old1", "old2", "busy"):
        env.age(uid, 40)
    env.age("fresh", 10)

    would = await m.cleanup_inactive_sessions(days=30, dry_run=True)
    assert sorted(would) == ["old1", "old2"]  # busy is open here
    assert env.exists("old1") and env.exists("old2")

    removed = await m.cleanup_inactive_sessions(days=30)
    assert sorted(removed) == ["old1", "old2"]
    assert not env.exists("old1") and not env.exists("old2")
    assert env.exists("fresh") and env.exists("busy")
    assert open_client.is_connected()
    assert sorted(s.user_id for s in await m.list_user_sessions()) == ["busy", "fresh"]
    assert await m.cleanup_inactive_sessions(days=5) == ["fresh"]
    with pytest.raises(ValueError, match="negative"):
        await m.cleanup_inactive_sessions(days=-1)


@pytest.mark.firestore
async def test_cleanup_removes_subcollections_larger_than_one_commit(firestore_client: Any, bot_id: str) -> None:
    sessions = firestore_client.collection("bots").document(bot_id).collection("user_sessions")
    old = datetime.datetime.now(UTC) - datetime.timedelta(days=90)
    doc = sessions.document("big")
    doc.set({"schema_version": 1, "last_active_at": old})
    for start in range(0, 1200, 400):
        batch = firestore_client.batch()
        for i in range(start, start + 400):
            batch.set(doc.collection("entities").document(str(i)), {"hash": i})
            if i % 3 == 0:
                batch.set(doc.collection("sent_files").document(f"f{i}"), {"id": i})
        batch.commit()
    m = UserSessionManager(bot_id, backend="firestore", firestore_client=firestore_client)
    try:
        assert await m.cleanup_inactive_sessions(days=30) == ["big"]
    finally:
        await m.aclose()
    assert not doc.get().exists
    assert list(doc.collection("entities").limit(1).stream()) == []
    assert list(doc.collection("sent_files").limit(1).stream()) == []


async def test_health_check_is_healthy_with_a_working_backend(env: Env) -> None:
    m = env.manager()
    await login(m, env.fake, "u1")
    health = await m.health_check()
    assert health["status"] == "healthy", health
    assert health["error"] is None and health["backend_latency_ms"] is not None
    assert health["writer"]["queue_depth"] >= 0 and "failed_writes" in health["writer"]
    assert health["active_clients"] == 1
    assert health["leases"]["held"] == (1 if env.backend == "firestore" else 0)
    assert health["leases"]["lost"] == 0


async def test_the_manager_refuses_work_after_aclose(env: Env) -> None:
    m = env.manager()
    await login(m, env.fake, "u1")
    async with m:
        pass
    await m.aclose()  # idempotent
    with pytest.raises(SessionClosedError):
        await m.get_user_client("u1")
    with pytest.raises(SessionClosedError):
        await m.get_session_stats()
    health = await m.health_check()
    assert health["status"] != "healthy"


# -- scoping --------------------------------------------------------------------------------------


async def test_a_user_handle_reaches_only_its_own_user(env: Env) -> None:
    m = env.manager()
    alice = m.for_user("u1")
    carol = m.for_user("u2")
    assert isinstance(alice, UserSession) and alice.user_id == "u1"
    public = {name for name in dir(alice) if not name.startswith("_")}
    assert public == {
        "user_id",
        "register",
        "get_client",
        "begin_login",
        "complete_login",
        "is_logged_in",
        "info",
        "log_out",
    }
    assert not hasattr(alice, "__dict__")
    with pytest.raises(AttributeError):
        alice.user_id = "u2"  # type: ignore[misc]

    assert await alice.register() is True
    assert (await alice.begin_login(ALICE)).status is LoginStatus.CODE_SENT
    assert (await alice.complete_login(env.fake.last_code(ALICE))).ok
    assert (await carol.begin_login(CAROL)).status is LoginStatus.CODE_SENT
    assert (await carol.complete_login(env.fake.last_code(CAROL))).ok
    a_client = await alice.get_client()
    c_client = await carol.get_client()
    assert a_client is not c_client
    assert (await a_client.get_me()).id == 1001 and (await c_client.get_me()).id == 1003
    info = await alice.info()
    assert info is not None and info.user_id == "u1" and info.logged_in and info.active
    assert await alice.is_logged_in()
    # Carol logging herself out leaves Alice alone.
    assert await carol.log_out()
    assert await carol.get_client() is None and await carol.info() is None
    assert await alice.get_client() is a_client and a_client.is_connected()
    with pytest.raises(InvalidSessionIdError):
        m.for_user("u1/../u2")


# -- encryption and failures ------------------------------------------------------------------------


async def test_credentials_and_pending_logins_are_sealed_with_a_cipher(env: Env) -> None:
    cipher = SessionCipher(generate_key())
    m = env.manager(cipher=cipher)
    api_hash = "feedfacefeedfacefeedfacefeedface"
    await m.create_user_session("u1", api_id=4242, api_hash=api_hash)
    assert (await m.begin_login("u1", ALICE)).status is LoginStatus.CODE_SENT
    code_hash = next(iter(env.fake.codes))
    if env.backend == "firestore":
        doc = env.client.collection("bots").document(env.bot_id).collection("user_sessions").document("u1")
        raw = doc.get().to_dict()
        blob = repr(raw).encode()
        assert isinstance(raw["api_credentials"]["api_hash"], bytes)
        assert isinstance(raw["pending_login"]["phone"], bytes)
        assert isinstance(raw["auth_key"], bytes) and len(raw["auth_key"]) != 256  # sealed too
    else:
        blob = (env.sessions_dir / env.bot_id / "metadata.json").read_bytes()
    assert api_hash.encode() not in blob and b"15550100" not in blob and code_hash.encode() not in blob
    await m.aclose()
    # Another instance with the key finishes the login; the client used the user's own api_id.
    second = env.manager(cipher=cipher)
    assert (await second.complete_login("u1", env.fake.last_code(ALICE))).ok
    client = await second.get_user_client("u1")
    assert client.api_id == 4242
    # Without the key, the sealed values do not open: a clear error, nothing overwritten.
    third = env.manager()
    await second.aclose()
    with pytest.raises(SessionDecryptionError, match="no encryption key is configured"):
        await third.get_user_client("u1")


async def test_a_corrupt_record_is_a_typed_error(env: Env) -> None:
    m = env.manager()
    await m.create_user_session("u1")
    if env.backend == "firestore":
        doc = env.client.collection("bots").document(env.bot_id).collection("user_sessions").document("u1")
        doc.update({"pending_login": {"phone": "1", "phone_code_hash": "x"}})  # no expiry
    else:
        (env.sessions_dir / env.bot_id / "metadata.json").write_text("{not json")
    with pytest.raises(SessionCorruptError):
        await m.complete_login("u1", "12345")
    with pytest.raises(SessionStoreError):
        await m.get_user_client("u1")


async def test_sqlite_directory_files_are_private(tmp_path: Path, fake: FakeTelegram) -> None:
    directory = SQLiteDirectory(tmp_path / "s", "bot")
    # A client class bound to the double works as the factory too.
    async with UserSessionManager(directory=directory, api_id=1, api_hash="h", client_factory=fake.client_class) as m:
        await login(m, fake, "u1")
    for path in (tmp_path / "s" / "bot").iterdir():
        assert path.stat().st_mode & 0o077 == 0, path
    assert (tmp_path / "s" / "bot").stat().st_mode & 0o777 == 0o700


# -- restore after restart, in a fresh process ----------------------------------------------------------

CHILD = """
import asyncio, hashlib, json, sys

from telethon_firestore_session.manager import UserSessionManager
from tests.telegram_double import FakeTelegram


async def main() -> None:
    backend, bot_id, sessions_dir, state = sys.argv[1:5]
    fake = FakeTelegram.load(state)
    kw = {"backend": "firestore"} if backend == "firestore" else {"sessions_dir": sessions_dir}
    async with UserSessionManager(bot_id, api_id=12345, api_hash="0123456789abcdef0123456789abcdef",
                                  client_factory=fake.client, **kw) as manager:
        client = await manager.get_user_client("u1")
        me = await client.get_me()
        key = client.session.auth_key.key
        print(json.dumps({
            "me": me.id,
            "key_sha256": hashlib.sha256(key).hexdigest(),
            "bob_hash": (await client.get_input_entity(1002)).access_hash,
            "connects": fake.connects,
            "requests": fake.requests,
        }))


asyncio.run(main())
"""


@pytest.mark.slow
async def test_a_fresh_process_finds_the_users_session_and_auth_key(env: Env, tmp_path: Path) -> None:
    m = env.manager()
    client = await login(m, env.fake, "u1")
    bob = await client.get_entity("bob")
    key_sha = hashlib.sha256(client.session.auth_key.key).hexdigest()
    await m.aclose()
    state = tmp_path / "telegram.json"
    env.fake.save(state)
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", CHILD, env.backend, env.bot_id, str(env.sessions_dir), str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=dict(os.environ),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["me"] == 1001
    assert out["key_sha256"] == key_sha  # the same auth key, restored from the store
    assert out["bob_hash"] == bob.access_hash  # the entity came from the store, not from Telegram
    assert "ResolveUsernameRequest" not in out["requests"] and "SendCodeRequest" not in out["requests"]
    assert out["connects"] == 1


# -- the README's bot flow (examples/bot.py), against the local default -----------------------------


async def test_the_readme_bot_flow(tmp_path: Path, fake: FakeTelegram, monkeypatch: pytest.MonkeyPatch) -> None:
    from examples import bot

    monkeypatch.setattr(bot, "ADMINS", {9})
    handle = bot.handle
    sessions = tmp_path / "sessions"
    async with UserSessionManager(
        "mybot_local", sessions_dir=sessions, api_id=12345, api_hash="x" * 32, client_factory=fake.client
    ) as manager:
        assert "/login" in await handle(manager, 1, "/start")
        assert "sent you a code" in await handle(manager, 1, f"/login {ALICE}")
        assert await handle(manager, 1, "/code 0 0 0 0 0" if fake.last_code(ALICE) != "00000" else "/code 1") != (
            "Logged in."
        )
        assert await handle(manager, 1, "/code " + " ".join(fake.last_code(ALICE))) == "Logged in."
        assert await handle(manager, 1, "/me") == "You are Alice (id 1001)."
        assert await handle(manager, 1, "/dialogs") == "No dialogs."

        assert "sent you a code" in await handle(manager, 2, f"/login {BOB}")
        assert "2FA" in await handle(manager, 2, "/code " + " ".join(fake.last_code(BOB)))
        assert "wrong" in await handle(manager, 2, "/password guess")
        assert await handle(manager, 2, f"/password {PASSWORD}") == "Logged in."
        assert await handle(manager, 2, "/me") == "You are Bob (id 1002)."

        assert "not logged in" in await handle(manager, 3, "/me")
        assert (await handle(manager, 3, "/stats")).startswith("Commands:")  # not an admin
        await handle(manager, 4, "/start")
        metadata = sessions / "mybot_local" / "metadata.json"
        entries = json.loads(metadata.read_text())  # user 4 was last seen in 2020
        entries["4"].update(registered_at="2020-01-01T00:00:00+00:00", last_active_at="2020-01-01T00:00:00+00:00")
        metadata.write_text(json.dumps(entries))
        assert await handle(manager, 9, "/stats") == "3 users, 2 logged in, 2 open"
        assert await handle(manager, 9, "/cleanup") == "Removed 1 sessions unused for 30 days."
        assert (await handle(manager, 9, "/health")).startswith("healthy: ")
        assert await handle(manager, 1, "/logout") == "Logged out."
        assert await handle(manager, 9, "/stats") == "1 users, 1 logged in, 1 open"
    assert sorted(p.name for p in (sessions / "mybot_local").glob("user_*")) == ["user_2.session"]


def _local_environment(monkeypatch: pytest.MonkeyPatch, bot_id: str, sessions_dir: Path) -> None:
    """The variables of a local bot (SQLite files), and none of Render's."""
    for name in ("RENDER", "RENDER_SERVICE_ID", "RENDER_INSTANCE_ID", "SESSION_ENCRYPTION_KEY"):
        monkeypatch.delenv(name, raising=False)
    values = {"USE_LOCAL_STORAGE": "true", "BOT_ID": bot_id, "API_ID": "4321", "API_HASH": "f" * 32}
    for name, value in {**values, "SESSIONS_DIR": str(sessions_dir)}.items():
        monkeypatch.setenv(name, value)


def test_the_manager_is_built_from_the_environment(
    tmp_path: Path, fake: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    from telethon_firestore_session.manager import create_user_session_manager_from_config

    _local_environment(monkeypatch, "envbot", tmp_path / "from-env")

    async def run() -> None:
        async with create_user_session_manager_from_config(client_factory=fake.client) as manager:
            assert manager.backend == "sqlite" and manager.bot_id == "envbot"
            client = await login(manager, fake, "u1")
            assert client.api_id == 4321
        assert (tmp_path / "from-env" / "envbot" / "user_u1.session").exists()

    asyncio.run(run())


def test_the_original_systems_calls_mean_what_they_meant(
    tmp_path: Path, fake: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every call of the original system's guide, as it wrote them (README: "Coming from the original system")."""
    from telethon_firestore_session import create_user_session_manager_from_config

    _local_environment(monkeypatch, "wang3.0_local", tmp_path / "sessions")
    # Built in a plain __init__, with no event loop running (the guide's EnhancedTelegramBot).
    session_manager = create_user_session_manager_from_config(client_factory=fake.client)

    async def run() -> None:
        success = await session_manager.create_user_session("user_123")
        assert success is True and await session_manager.create_user_session("user_123") is True
        assert (
            await session_manager.get_user_client("user_123") is None
        )  # not logged in: falsy, as `if user_client:` reads
        stats = await session_manager.get_session_stats()
        assert (stats["total_sessions"], stats["active_sessions"]) == (1, 0)
        assert await session_manager.cleanup_inactive_sessions(days=30) == []
        assert await session_manager.delete_user_session("user_123") is True
        health = await session_manager.health_check()
        assert health["status"] == "healthy"
        await session_manager.aclose()

    asyncio.run(run())
    assert (tmp_path / "sessions" / "wang3.0_local").is_dir()


def test_options_override_the_configuration(tmp_path: Path, fake: FakeTelegram) -> None:
    from telethon_firestore_session.config import SessionConfig
    from telethon_firestore_session.manager import create_user_session_manager_from_config

    config = SessionConfig(bot_id="cfgbot", sessions_dir=tmp_path / "configured", api_id=4321, api_hash="f" * 32)

    async def run() -> None:
        manager = create_user_session_manager_from_config(
            config, sessions_dir=tmp_path / "given", api_id=99, api_hash="e" * 32, client_factory=fake.client
        )
        async with manager:
            client = await login(manager, fake, "u1")
            assert client.api_id == 99
        assert (tmp_path / "given" / "cfgbot" / "user_u1.session").exists()
        assert not (tmp_path / "configured").exists()

    asyncio.run(run())


@pytest.mark.firestore
def test_the_manager_is_built_from_a_render_config(firestore_client: Any, bot_id: str, fake: FakeTelegram) -> None:
    from telethon_firestore_session.config import SessionConfig
    from telethon_firestore_session.manager import create_user_session_manager_from_config

    config = SessionConfig.from_env(
        {
            "BOT_ID": bot_id,
            "RENDER": "true",
            "RENDER_INSTANCE_ID": "srv-d0abc-7f9x",
            "FIRESTORE_EMULATOR_HOST": os.environ["FIRESTORE_EMULATOR_HOST"],
            "GOOGLE_CLOUD_PROJECT": os.environ["GOOGLE_CLOUD_PROJECT"],
            "API_ID": "4321",
            "API_HASH": "f" * 32,
            "SESSION_ENCRYPTION_KEY": generate_key(),
        }
    )

    async def run() -> None:
        async with create_user_session_manager_from_config(config, client_factory=fake.client) as manager:
            assert manager.backend == "firestore" and manager.bot_id == bot_id
            assert manager.holder_id.startswith(f"srv-d0abc-7f9x:{os.getpid()}:")
            client = await login(manager, fake, "u1")
            assert client.api_id == 4321
            lease = firestore_client.document(f"bots/{bot_id}/user_sessions/u1").get().to_dict()["lease"]
            assert lease["holder"] == manager.holder_id
        # The configuration keeps its client (it was passed in): still usable after aclose().
        assert config.firestore_client().document(f"bots/{bot_id}/user_sessions/u1").get().exists
        stored = firestore_client.document(f"bots/{bot_id}/user_sessions/u1").get().to_dict()
        assert isinstance(stored["auth_key"], bytes) and len(stored["auth_key"]) != 256  # sealed

    asyncio.run(run())


# -- stopping on SIGTERM, and the bot's own session across restarts -----------------------------------

BOT_TOKEN = "4242:AAbotsecretbotsecretbotsecret"
RUNNER = """
import asyncio, json, logging, os, sys

from telethon_firestore_session import SessionConfig, create_user_session_manager_from_config
from tests.telegram_double import FakeTelegram


def main() -> None:
    backend, bot_id, sessions_dir, state, handoff, token = sys.argv[1:7]
    users = sys.argv[7:]
    logging.basicConfig(level=logging.INFO)
    fake = FakeTelegram.load(state)
    common = {"bot_id": bot_id, "api_id": 12345, "api_hash": "0123456789abcdef0123456789abcdef"}
    if backend == "firestore":
        host, project = os.environ["FIRESTORE_EMULATOR_HOST"], os.environ["GOOGLE_CLOUD_PROJECT"]
        config = SessionConfig(backend="firestore", emulator_host=host, project=project, **common)
    else:
        config = SessionConfig(sessions_dir=sessions_dir, **common)
    manager = create_user_session_manager_from_config(
        config, client_factory=fake.client, flush_interval=60, handoff_timeout=float(handoff)
    )

    async def serve() -> None:
        session = config.create_bot_session(handoff_timeout=float(handoff), flush_interval=60)
        bot = fake.client(session, config.api_id, config.api_hash, catch_up=True)
        await manager.start_bot(bot, bot_token=token)
        await bot.get_entity("carol")  # pending in the bot's session
        for uid in users:
            client = await manager.get_user_client(uid)
            await client.get_entity("bob")  # pending in each user's session
        print(json.dumps({"ready": True}), flush=True)
        await bot.run_until_disconnected()  # until a stop signal

    manager.run(serve)
    fake.save(state)
    print(json.dumps({"requests": fake.requests, "differences": fake.differences}), flush=True)


main()
"""


def _run_until_sigterm(env: Env, state: Path, *, handoff: float, users: list[str]) -> tuple[float, dict[str, Any]]:
    """Start RUNNER, SIGTERM it once it is ready; ``(seconds from SIGTERM to exit, its report)``."""
    args = [env.backend, env.bot_id, str(env.sessions_dir), str(state), str(handoff), BOT_TOKEN, *users]
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=dict(os.environ),
    )
    try:
        ready = proc.stdout.readline() if proc.stdout else ""
        if not ready.strip():
            proc.kill()
            raise AssertionError(f"the runner did not start: {proc.communicate(timeout=10)[1][-3000:]}")
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, err[-3000:]
    assert "SIGTERM: stopping" in err
    assert_absent(err, bot_token=BOT_TOKEN.split(":")[1].encode())  # the INFO log names no secret
    return took, json.loads(out.strip().splitlines()[-1])


def _open_bot_session(env: Env) -> Any:
    key = BotSessionKey(env.bot_id)
    if env.backend == "firestore":
        return FirestoreSession(key, bot_id=env.bot_id, client=env.client)
    return ScopedSQLiteSession(key, bot_id=env.bot_id, sessions_dir=env.sessions_dir)


@pytest.mark.slow
async def test_sigterm_stops_cleanly_and_a_restart_reuses_the_bots_session(env: Env, tmp_path: Path) -> None:
    env.fake.add_bot(BOT_TOKEN, username="testbot")
    env.fake.pts = 3
    m = env.manager()
    await login(m, env.fake, "u1", "alice")
    await login(m, env.fake, "u2", "carol")
    await m.aclose()
    state = tmp_path / "telegram.json"
    env.fake.save(state)

    took, first = _run_until_sigterm(env, state, handoff=15.0, users=["u1", "u2"])
    print(f"shutdown on SIGTERM ({env.backend}): {took:.2f} s")  # measured for the README (-s shows it)
    assert took < 20.0  # shutdown_timeout, under Render's 30 s
    assert "ImportBotAuthorizationRequest" in first["requests"]  # the first start logs the bot in
    for uid in ("u1", "u2"):  # written at the stop, long before the 60 s flush interval
        assert env.stored_entity(uid, 1002) is not None, uid
    bot_session = _open_bot_session(env)  # the bot's session is free (its lease released, its file unlocked)
    try:
        assert bot_session.auth_key is not None and bot_session.get_input_entity(1003).user_id == 1003
        assert bot_session.get_update_state(0).pts == 3
    finally:
        bot_session.close()
    if env.backend == "firestore":
        sessions = env.client.collection(f"bots/{env.bot_id}/user_sessions").stream()
        documents = [*sessions, env.client.document(f"bots/{env.bot_id}/bot_session/session").get()]
        assert [d.id for d in documents if "lease" in (d.to_dict() or {})] == []  # no lease left

    env.fake = FakeTelegram.load(state)
    env.fake.pts = 7  # what was sent to the bot while it was down
    env.fake.save(state)
    # handoff=0: a lease left behind would fail the start at once.
    took, second = _run_until_sigterm(env, state, handoff=0.0, users=["u1", "u2"])
    assert "ImportBotAuthorizationRequest" not in second["requests"]  # no new bot login
    assert "SendCodeRequest" not in second["requests"]
    assert second["differences"][:1] == [3]  # catch_up starts from the stored state: nothing sent meanwhile is lost
