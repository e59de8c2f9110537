"""What is specific to ScopedSQLiteSession: real files under tmp_path, Telethon's own
schema in both directions (and its older versions), the file lock across real
processes, permissions, path safety, metadata.json (also under SIGKILL), WAL and
one transaction per flush, and lazy entity loading."""

from __future__ import annotations

import contextlib
import datetime
import gc
import hashlib
import json
import logging
import os
import select
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from telethon.crypto import AuthKey
from telethon.sessions import SQLiteSession
from telethon.tl import types

from telethon_firestore_session import (
    InvalidSessionIdError,
    SchemaVersionError,
    SessionCipher,
    SessionCorruptError,
    SessionInUseError,
    SessionStoreError,
)
from telethon_firestore_session.core import Changes, EntityRow, SessionSnapshot
from telethon_firestore_session.manager.directory import ApiCredentials, PendingLogin
from telethon_firestore_session.sqlite import (
    METADATA_FILE,
    SCHEMA_VERSION,
    ScopedSQLiteSession,
    list_sqlite_sessions,
    read_auth_key,
    read_metadata,
    read_session_file,
    write_session_file,
)
from telethon_firestore_session.sqlite.directory import SQLiteDirectory
from tests.common import BOT, Opener
from tests.leaks import assert_absent

KEY = bytes(range(256))
KEY2 = bytes(reversed(range(256)))
UTC = datetime.timezone.utc
DATE = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
MD5 = hashlib.md5(b"file").digest()  # noqa: S324 - Telethon's sent-file key


def user(uid: int, **kw: Any) -> types.User:
    kw.setdefault("access_hash", uid * 7)
    return types.User(uid, **kw)


def users(n: int, start: int = 1000) -> types.contacts.ResolvedPeer:
    return types.contacts.ResolvedPeer(
        types.PeerUser(start),
        [],
        [
            user(start + i, username=f"u{start + i}", phone=str(15550000000 + start + i), first_name="N")
            for i in range(n)
        ],
    )


def state(pts: int, date: datetime.datetime = DATE) -> types.updates.State:
    return types.updates.State(pts, pts + 1, date, pts + 2, unread_count=0)


def raw_connect(path: Path) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(path))


def rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    with raw_connect(path) as conn:
        return conn.execute(query).fetchall()


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run_py(code: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def populate(s: Any) -> None:
    """One of everything, through the public Session API (works on Telethon's sessions too)."""
    s.set_dc(2, "149.154.167.51", 443)
    s.auth_key = AuthKey(KEY)
    s.takeout_id = 99
    s.process_entities(
        types.contacts.ResolvedPeer(
            types.PeerUser(10),
            [
                types.Chat(555, "A chat", types.ChatPhotoEmpty(), 3, DATE, 1),
                types.Channel(777, "A channel", types.ChatPhotoEmpty(), DATE, access_hash=88, username="SomeChannel"),
            ],
            [
                user(10, username="Alice", phone="15551234567", first_name="Alice", last_name="Liddell"),
                user(11, first_name="Bob"),
            ],
        )
    )
    s.set_update_state(0, state(100))
    s.set_update_state(777, state(5))
    s.cache_file(MD5, 1234, types.InputDocument(31, 32, b""))
    s.cache_file(MD5, 1234, types.InputPhoto(41, 42, b""))


def check_populated(s: Any, *, files: bool = True) -> None:
    assert (s.dc_id, s.server_address, s.port, s.takeout_id) == (2, "149.154.167.51", 443, 99)
    assert s.auth_key.key == KEY
    assert s.get_input_entity("alice") == types.InputPeerUser(10, 70)
    assert s.get_input_entity("@Alice") == types.InputPeerUser(10, 70)
    assert s.get_input_entity("+1 555 123 4567") == types.InputPeerUser(10, 70)
    assert s.get_input_entity(11) == types.InputPeerUser(11, 77)
    assert s.get_input_entity("Alice Liddell") == types.InputPeerUser(10, 70)
    assert s.get_input_entity(-555) == types.InputPeerChat(555)
    assert s.get_input_entity("somechannel") == types.InputPeerChannel(777, 88)
    assert s.get_input_entity(types.PeerChannel(777)) == types.InputPeerChannel(777, 88)
    got = {sid: (st.pts, st.qts, st.date, st.seq) for sid, st in s.get_update_states()}
    assert got[0] == (100, 101, DATE, 102)
    assert got[777][0] == 5
    if files:
        assert s.get_file(MD5, 1234, types.InputDocument) == types.InputDocument(31, 32, b"")
        assert s.get_file(MD5, 1234, types.InputPhoto) == types.InputPhoto(41, 42, b"")


# -- round trip and laziness ------------------------------------------------------------------


def test_round_trip_through_close_and_reopen(opener: Opener) -> None:
    s = opener()
    assert s.auth_key is None and s.dc_id == 0
    populate(s)
    s.save()
    s.close()

    again = opener()
    assert again.path == s.path
    assert (again.user_id, again.bot_id) == ("42", BOT)
    assert again._entities == {}  # nothing loaded until asked
    check_populated(again)
    stored = {r.id: r for r in again._sqlite.iter_entities()}
    assert set(stored) == {10, 11, -555, -1000000000777}
    assert stored[10].phone == "15551234567"  # read back as str from the integer column
    assert stored[10].date > 0
    assert dict(again._sqlite.iter_files()) == {(MD5, 1234, 0): (31, 32), (MD5, 1234, 1): (41, 42)}


def test_save_is_durable_when_it_returns(opener: Opener) -> None:
    s = opener()
    s.set_dc(4, "149.154.167.91", 443)
    s.auth_key = AuthKey(KEY)
    s.save()
    # The session is still open; another connection already sees the committed row.
    assert rows(s.path, "select dc_id, server_address, port, auth_key from sessions") == [
        (4, "149.154.167.91", 443, KEY)
    ]
    s.auth_key = AuthKey(KEY2)
    s.save()
    assert rows(s.path, "select auth_key from sessions") == [(KEY2,)]


def test_repr_hides_the_auth_key(opener: Opener) -> None:
    s = opener()
    s.auth_key = AuthKey(KEY)
    text = repr(s)
    assert "auth_key=set" in text and "user_42.session" in text
    assert KEY.hex()[:16] not in text and str(KEY)[:20] not in text


def test_start_up_does_not_load_entities(opener: Opener) -> None:
    s = opener()
    s.auth_key = AuthKey(KEY)
    s.process_entities(users(10_000))
    s.close()
    assert rows(s.path, "select count(*) from entities") == [(10_000,)]

    again = opener()
    assert len(again._entities) == 0
    assert again.auth_key.key == KEY
    assert again.get_input_entity("u5000") == types.InputPeerUser(5000, 35000)
    assert again.get_input_entity("+15550010999") == types.InputPeerUser(10999, 76993)
    assert again.get_input_entity(7777) == types.InputPeerUser(7777, 54439)
    assert len(again._entities) == 3
    with pytest.raises(ValueError, match="Could not find"):
        again.get_input_entity("nobody")


def test_lookups_are_indexed_point_queries(opener: Opener) -> None:
    s = opener()
    s.process_entities(users(3))
    assert s.flush(10.0)
    store = s._sqlite
    handle = store._handle
    assert handle is not None
    statements: list[str] = []
    handle.conn.set_trace_callback(statements.append)
    assert store.find_entity("username", "u1001") is not None
    assert store.find_entity("phone", "15550001001") is not None
    assert store.find_entity("name", "N") is not None
    assert store.find_entity_by_ids([1002, -1002, -1000000001002]) is not None
    assert store.find_file((MD5, 1, 0)) is None
    handle.conn.set_trace_callback(None)
    assert len(statements) == 5
    expected = ["tfs_entities_username", "tfs_entities_phone", "tfs_entities_name", "PRIMARY KEY", "sqlite_autoindex"]
    with raw_connect(s.path) as conn:
        for sql, index in zip(statements, expected, strict=True):
            plan = " ".join(str(r[-1]) for r in conn.execute(f"explain query plan {sql}"))
            assert plan.startswith("SEARCH") and index in plan, (sql, plan)
            assert "SCAN" not in plan


def test_username_lookup_picks_the_newest_row(opener: Opener) -> None:
    s = opener()
    s.close()
    with raw_connect(s.path) as conn:
        conn.executemany(
            "insert into entities values (?, ?, ?, ?, ?, ?)",
            [(1, 11, "dup", None, "One", 100), (2, 22, "dup", None, "Two", 300), (3, 33, "dup", None, "Three", 200)],
        )
        conn.commit()
    again = opener()
    assert again.get_input_entity("dup") == types.InputPeerUser(2, 22)


def test_reused_after_close_takes_the_lock_again(opener: Opener) -> None:
    s = opener()
    s.auth_key = AuthKey(KEY)
    s.save()
    s.close()
    other = opener()  # the lock was released
    other.close()
    # Telethon reconnects after close(): the next write opens the file and the lock again.
    s.process_entities(users(2))
    s.save()
    assert s.flush(10.0)
    with pytest.raises(SessionInUseError, match="another session object in this process"):
        opener()
    s.close()
    assert opener().get_input_entity("u1001") == types.InputPeerUser(1001, 7007)


def test_a_dropped_session_releases_its_lock(opener: Opener, sdir: Path) -> None:
    s = ScopedSQLiteSession("7", bot_id=BOT, sessions_dir=sdir)
    s.auth_key = AuthKey(KEY)
    s.save()
    del s
    gc.collect()
    assert opener("7").auth_key.key == KEY


# -- Telethon interop -------------------------------------------------------------------------


def test_our_file_opens_in_telethon_and_back(opener: Opener) -> None:
    s = opener()
    populate(s)
    s.save()
    s.close()
    assert rows(s.path, "select version from version") == [(SCHEMA_VERSION,)]
    assert rows(s.path, "pragma journal_mode") == [("delete",)]  # at rest: Telethon's journal, one file

    t = SQLiteSession(str(s.path))
    try:
        check_populated(t, files=False)  # Telethon's get_file cannot build InputDocument (file_reference)
        assert rows(s.path, "select md5_digest, file_size, type, id, hash from sent_files order by type") == [
            (MD5, 1234, 0, 31, 32),
            (MD5, 1234, 1, 41, 42),
        ]
        # Telethon writes to our file as well.
        t.process_entities(types.contacts.ResolvedPeer(types.PeerUser(12), [], [user(12, username="carol")]))
        t.set_update_state(0, state(200))
        t.save()
    finally:
        t.close()

    again = opener()
    assert again.get_input_entity("carol") == types.InputPeerUser(12, 84)
    assert dict(again.get_update_states())[0].pts == 200
    assert again.auth_key.key == KEY


def test_telethon_file_opens_here(opener: Opener, sdir: Path) -> None:
    path = sdir / BOT / "user_42.session"
    path.parent.mkdir(parents=True)
    t = SQLiteSession(str(path))
    populate(t)
    t.save()
    t.close()
    assert rows(path, "pragma journal_mode") == [("delete",)]

    s = opener()
    assert s.path == path.resolve()
    check_populated(s)
    assert mode(path) == 0o600  # tightened from Telethon's default
    s.close()
    assert rows(path, "pragma journal_mode") == [("delete",)]
    assert sorted(p.name for p in path.parent.glob("user_42.session*")) == ["user_42.session"]
    t = SQLiteSession(str(path))
    try:
        check_populated(t, files=False)
    finally:
        t.close()


# Older versions of Telethon's schema, reconstructed from its ``_upgrade_database``.
def build_old_file(path: Path, version: int) -> None:
    with raw_connect(path) as c:
        c.execute("create table version (version integer primary key)")
        c.execute("insert into version values (?)", (version,))
        cols = "dc_id integer primary key, server_address text, port integer, auth_key blob"
        if version >= 5:
            cols += ", takeout_id integer"
        c.execute(f"create table sessions ({cols})")
        ecols = "id integer primary key, hash integer not null, username text, phone integer, name text"
        if version >= 7:
            ecols += ", date integer"
        c.execute(f"create table entities ({ecols})")
        if version == 2:
            c.execute(
                "create table sent_files (md5_digest blob, file_size integer, file_id integer, part_count integer, "
                "primary key(md5_digest, file_size))"
            )
            c.execute("insert into sent_files values (?, ?, ?, ?)", (MD5, 1234, 5, 1))
        if version >= 3:
            c.execute(
                "create table sent_files (md5_digest blob, file_size integer, type integer, id integer, "
                "hash integer, primary key(md5_digest, file_size, type))"
            )
            c.execute("insert into sent_files values (?, ?, ?, ?, ?)", (MD5, 1234, 0, 31, 32))
        if version >= 4:
            c.execute(
                "create table update_state (id integer primary key, pts integer, qts integer, date integer, "
                "seq integer)"
            )
            c.execute("insert into update_state values (0, 100, 101, ?, 102)", (int(DATE.timestamp()),))
        session = [2, "149.154.167.51", 443, KEY] + ([99] if version >= 5 else [])
        c.execute(f"insert into sessions values ({','.join('?' * len(session))})", session)  # noqa: S608
        entity = [10, 70, "alice", 15551234567, "Alice"] + ([1000] if version >= 7 else [])
        c.execute(f"insert into entities values ({','.join('?' * len(entity))})", entity)  # noqa: S608
        c.commit()


def schema(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with raw_connect(path) as conn:
        tables = [r[0] for r in conn.execute("select name from sqlite_master where type='table' order by name")]
        return {t: [r[1:3] + r[5:] for r in conn.execute(f"pragma table_info({t})")] for t in tables}


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with raw_connect(path) as conn:
        tables = [r[0] for r in conn.execute("select name from sqlite_master where type='table' order by name")]
        return {t: sorted(conn.execute(f"select * from {t}").fetchall(), key=repr) for t in tables}  # noqa: S608


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION))
def test_upgrade_older_schema_versions(opener: Opener, sdir: Path, tmp_path: Path, version: int) -> None:
    path = sdir / BOT / "user_42.session"
    path.parent.mkdir(parents=True)
    build_old_file(path, version)
    pristine = tmp_path / "pristine.session"
    shutil.copy(path, pristine)

    s = opener()
    assert (s.dc_id, s.server_address, s.port, s.auth_key.key) == (2, "149.154.167.51", 443, KEY)
    assert s.takeout_id == (99 if version >= 5 else None)
    states = dict(s.get_update_states())
    if version >= 4:
        assert (states[0].pts, states[0].qts, states[0].date, states[0].seq) == (100, 101, DATE, 102)
    else:
        assert states == {}
    if version >= 6:  # Telethon drops the possibly wrong access hashes of versions up to 5
        assert s.get_input_entity("alice") == types.InputPeerUser(10, 70)
        assert s.get_input_entity("+15551234567") == types.InputPeerUser(10, 70)
    else:
        with pytest.raises(ValueError, match="Could not find"):
            s.get_input_entity("alice")
    expected_file = types.InputDocument(31, 32, b"") if version >= 3 else None
    assert s.get_file(MD5, 1234, types.InputDocument) == expected_file
    s.close()

    # The same schema as a file Telethon creates today, plus our indexes.
    fresh = tmp_path / "fresh.session"
    SQLiteSession(str(fresh)).close()
    assert schema(path) == schema(fresh)
    assert rows(path, "select version from version") == [(SCHEMA_VERSION,)]
    indexes = {r[0] for r in rows(path, "select name from sqlite_master where type='index' and name like 'tfs_%'")}
    assert indexes == {"tfs_entities_username", "tfs_entities_phone", "tfs_entities_name"}

    if version >= 2:  # Telethon's own upgrade of version 1 fails (it drops a table v1 never had)
        t = SQLiteSession(str(pristine))
        t.close()
        ours = dump(path)
        theirs = dump(pristine)
        ours["sessions"] = [r[:5] for r in ours["sessions"]]  # tmp_auth_key: b'' (ours) vs NULL (upgrade)
        theirs["sessions"] = [r[:5] for r in theirs["sessions"]]
        assert ours == theirs

    t = SQLiteSession(str(path))
    try:
        assert (t.dc_id, t.auth_key.key) == (2, KEY)
    finally:
        t.close()


def test_newer_or_foreign_files_are_refused_untouched(opener: Opener, sdir: Path) -> None:
    path = sdir / BOT / "user_42.session"
    path.parent.mkdir(parents=True)
    build_old_file(path, 7)
    with raw_connect(path) as c:
        c.execute("update version set version = 9")
        c.commit()
    before = path.read_bytes()
    with pytest.raises(SchemaVersionError, match="schema_version 9"):
        opener()
    with pytest.raises(SchemaVersionError):  # the failed open released the lock
        opener()
    assert path.read_bytes() == before

    path.unlink()
    with raw_connect(path) as c:
        c.execute("create table notes (x text)")
        c.commit()
    before = path.read_bytes()
    with pytest.raises(SessionCorruptError, match="version table"):
        opener()
    assert path.read_bytes() == before

    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(SessionCorruptError, match="not modified"):
        opener()
    assert path.read_bytes() == b"this is not a database at all" * 100


# -- WAL and transactions ---------------------------------------------------------------------


def test_wal_mode_and_one_transaction_per_flush(opener: Opener) -> None:
    s = opener()
    assert rows(s.path, "pragma journal_mode") == [("wal",)]  # a new file: created in WAL mode
    s.close()
    assert rows(s.path, "pragma journal_mode") == [("delete",)]  # closed: back to Telethon's journal
    s = opener()
    s.save()
    assert rows(s.path, "pragma journal_mode") == [("delete",)]  # opened and read: nothing written
    s.close()
    s = opener()
    store = s._sqlite
    handle = store._handle
    assert handle is not None
    statements: list[str] = []
    handle.conn.set_trace_callback(statements.append)
    before = store.commits
    s.process_entities(users(300))
    s.set_update_state(0, state(1))
    s.set_update_state(777, state(2))
    s.cache_file(MD5, 1, types.InputDocument(1, 2, b""))
    s.save()
    assert s.flush(10.0)
    handle.conn.set_trace_callback(None)
    assert store.commits == before + 1
    assert [x.lower() for x in statements if x.lower() in ("begin immediate", "commit", "rollback")] == [
        "begin immediate",
        "commit",
    ]
    assert Path(f"{s.path}-wal").exists()  # written: in WAL mode while open
    assert rows(s.path, "pragma journal_mode") == [("wal",)]
    assert rows(s.path, "select count(*) from entities") == [(300,)]
    assert rows(s.path, "select count(*) from update_state") == [(2,)]


def test_write_changes_is_atomic(opener: Opener) -> None:
    s = opener()
    store = s._sqlite
    bad = Changes(
        entities={5: EntityRow(5, 55, "five", None, "Five", 1)},
        states={0: state(9)},
        files={(MD5, 1, 0): (2**64, 1)},  # too large for SQLite: fails after the entity and state rows
    )
    with pytest.raises(OverflowError):
        store.write_changes(bad)
    assert store.find_entity_by_ids([5]) is None
    assert rows(s.path, "select count(*) from update_state") == [(0,)]
    assert store.commits == 0
    store.write_changes(Changes(entities={5: EntityRow(5, 55, "five", None, "Five", 1)}))
    assert store.find_entity("username", "five") == EntityRow(5, 55, "five", None, "Five", 1)


def test_save_with_only_entities_dirty_does_not_touch_the_disk(opener: Opener) -> None:
    s = opener()
    s.auth_key = AuthKey(KEY)
    s.save()
    held = threading.Event()
    release = threading.Event()

    def hold_store() -> None:
        with s._sqlite._lock:  # any store call from save() would block here
            held.set()
            release.wait(10.0)

    holder = threading.Thread(target=hold_store)
    holder.start()
    try:
        assert held.wait(5.0)
        s.process_entities(users(20))
        s.set_update_state(0, state(3))
        s.cache_file(MD5, 7, types.InputDocument(1, 2, b""))
        t0 = time.monotonic()
        s.save()
        assert s.get_input_entity("u1005") == types.InputPeerUser(1005, 7035)
        elapsed = time.monotonic() - t0
    finally:
        release.set()
        holder.join(10.0)
    assert elapsed < 1.0
    assert s.flush(10.0)
    assert rows(s.path, "select count(*) from entities") == [(20,)]


def test_writer_and_lookups_share_the_file_without_errors(opener: Opener, caplog: pytest.LogCaptureFixture) -> None:
    s = opener()
    s.process_entities(users(200, start=50_000))
    assert s.flush(10.0)
    s.close()
    s = opener()
    caplog.set_level(logging.WARNING)
    found = 0
    for i in range(200):
        s.process_entities(users(5, start=100_000 + i * 5))
        s.save()  # hands the batch to the writer thread
        if s.get_input_entity(50_000 + i) == types.InputPeerUser(50_000 + i, (50_000 + i) * 7):  # a miss: a query
            found += 1
    assert s.flush(10.0)
    assert found == 200
    assert rows(s.path, "select count(*) from entities") == [(1200,)]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- locking across processes -----------------------------------------------------------------

CHILD_OPEN = """
import sys
from telethon_firestore_session.errors import SessionInUseError
from telethon_firestore_session.sqlite import ScopedSQLiteSession
try:
    s = ScopedSQLiteSession("42", bot_id="bot1", sessions_dir=sys.argv[1])
except SessionInUseError as exc:
    print("IN_USE", exc)
    sys.exit(3)
print("OPENED", s.dc_id)
s.close()
"""


@pytest.mark.slow
def test_second_process_gets_session_in_use(opener: Opener, sdir: Path) -> None:
    s = opener()
    s.set_dc(2, "149.154.167.51", 443)
    s.save()
    child = run_py(CHILD_OPEN, str(sdir))
    assert child.returncode == 3, child.stderr
    assert "is in use by another process" in child.stdout
    assert "user_42.session" in child.stdout

    s.close()
    child = run_py(CHILD_OPEN, str(sdir))
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["OPENED", "2"]

    with pytest.raises(ValueError, match="Could not find"):
        s.get_input_entity("nobody")  # a lookup opens the file and takes the lock again
    child = run_py(CHILD_OPEN, str(sdir))
    assert child.returncode == 3, child.stderr


def test_second_object_in_one_process_gets_session_in_use(opener: Opener) -> None:
    s = opener()
    with pytest.raises(SessionInUseError, match="in use by another session object in this process"):
        opener()
    assert opener("43").user_id == "43"  # other users are independent
    s.close()
    opener().close()


@pytest.mark.slow
def test_telegram_client_in_a_fresh_process_sees_auth_key_and_dc(opener: Opener, sdir: Path) -> None:
    s = opener()
    s.set_dc(4, "149.154.167.91", 443)
    s.auth_key = AuthKey(KEY)
    s.save()
    s.close()
    code = """
import asyncio, hashlib, sys
from telethon import TelegramClient
from telethon_firestore_session.sqlite import ScopedSQLiteSession

async def main():
    session = ScopedSQLiteSession("42", bot_id="bot1", sessions_dir=sys.argv[1])
    client = TelegramClient(session=session, api_id=1, api_hash="x")
    key = client._sender.auth_key.key
    print(hashlib.sha256(key).hexdigest(), client.session.dc_id, client.session.server_address)
    session.close()

asyncio.run(main())
"""
    child = run_py(code, str(sdir))
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == [hashlib.sha256(KEY).hexdigest(), "4", "149.154.167.91"]


# -- paths and permissions --------------------------------------------------------------------

BAD_IDS = ["../x", "a/b", "", "x" * 200, "..", "a\\b"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_path_traversal_ids_are_rejected(tmp_path: Path, sdir: Path, bad: str) -> None:
    before = tree(tmp_path)
    with pytest.raises(InvalidSessionIdError):
        ScopedSQLiteSession(bad, bot_id=BOT, sessions_dir=sdir)
    with pytest.raises(InvalidSessionIdError):
        ScopedSQLiteSession("42", bot_id=bad, sessions_dir=sdir)
    with pytest.raises(InvalidSessionIdError):
        list_sqlite_sessions(sdir, bad)
    with pytest.raises(InvalidSessionIdError):
        read_metadata(sdir, bad)
    assert tree(tmp_path) == before


def test_symlinks_out_of_sessions_dir_are_rejected(tmp_path: Path, sdir: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    sdir.mkdir()
    (sdir / "evil").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InvalidSessionIdError, match="outside"):
        ScopedSQLiteSession("42", bot_id="evil", sessions_dir=sdir)
    (sdir / BOT).mkdir()
    (sdir / BOT / "user_43.session").symlink_to(outside / "stolen.session")
    with pytest.raises(InvalidSessionIdError, match="symbolic link"):
        ScopedSQLiteSession("43", bot_id=BOT, sessions_dir=sdir)
    assert list(outside.iterdir()) == []
    # A link to another user's file of the same bot would hand over that user's login.
    s = ScopedSQLiteSession("42", bot_id=BOT, sessions_dir=sdir)
    s.auth_key = AuthKey(KEY)
    s.save()
    s.close()
    (sdir / BOT / "user_44.session").symlink_to(sdir / BOT / "user_42.session")
    with pytest.raises(InvalidSessionIdError, match="symbolic link"):
        ScopedSQLiteSession("44", bot_id=BOT, sessions_dir=sdir)


def test_files_and_directories_are_private(opener: Opener, sdir: Path) -> None:
    old = os.umask(0)  # permissions must not depend on the umask
    try:
        s = opener()
        s.auth_key = AuthKey(KEY)
        s.save()
        s.process_entities(users(3))
        assert s.flush(10.0)
        bot_dir = sdir / BOT
        assert mode(sdir) == 0o700
        assert mode(bot_dir) == 0o700
        for name in ("user_42.session", "user_42.session-wal", "user_42.session-shm", METADATA_FILE, "metadata.lock"):
            assert mode(bot_dir / name) == 0o600, name
        assert [p.name for p in bot_dir.iterdir() if p.name.endswith(".tmp")] == []
    finally:
        os.umask(old)


# -- delete and metadata ----------------------------------------------------------------------


def test_delete_removes_file_and_metadata(opener: Opener, sdir: Path) -> None:
    s = opener()
    keep = opener("43")
    for session in (s, keep):
        session.auth_key = AuthKey(KEY)
        session.save()
    s.process_entities(users(3))
    assert s.flush(10.0)
    assert Path(f"{s.path}-wal").exists()
    assert set(read_metadata(sdir, BOT)) == {"42", "43"}

    assert s.delete() is True
    for suffix in ("", "-wal", "-shm"):
        assert not Path(f"{s.path}{suffix}").exists()
    assert set(read_metadata(sdir, BOT)) == {"43"}
    assert [e["user_id"] for e in list_sqlite_sessions(sdir, BOT)] == ["43"]
    assert keep.auth_key.key == KEY

    fresh = opener()  # the user can log in again
    assert fresh.auth_key is None and fresh.get_update_states() == []


def test_metadata_entries(opener: Opener, sdir: Path) -> None:
    s = opener()
    s.set_dc(2, "149.154.167.51", 443)
    s.save()
    first = read_metadata(sdir, BOT)["42"]
    assert set(first) == {"user_id", "created_at", "last_active_at", "size"}
    assert first["user_id"] == "42"
    created = datetime.datetime.fromisoformat(first["created_at"])
    assert created.tzinfo is not None and created.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(UTC) - created).total_seconds()) < 60
    s.process_entities(users(2000))
    s.close()  # flushes; the metadata entry is refreshed when the file is closed
    later = read_metadata(sdir, BOT)["42"]
    assert later["created_at"] == first["created_at"]
    assert later["last_active_at"] >= first["last_active_at"]
    assert later["size"] == os.stat(s.path).st_size > first["size"] > 0
    listed = list_sqlite_sessions(sdir, BOT)
    assert listed == [later]

    again = opener()
    again._sqlite.metadata_interval = 0.0  # refresh on every flush
    again.process_entities(users(2000, start=10_000))
    assert again.flush(10.0)
    wal = os.stat(f"{again.path}-wal").st_size
    assert read_metadata(sdir, BOT)["42"]["size"] == os.stat(again.path).st_size + wal
    again.close()  # the WAL is checkpointed away; the entry records the final size
    assert read_metadata(sdir, BOT)["42"]["size"] == os.stat(again.path).st_size
    assert not Path(f"{again.path}-wal").exists()


def test_list_reconciles_metadata_with_files(opener: Opener, sdir: Path) -> None:
    for uid in ("1", "2", "3"):
        session = opener(uid)
        session.auth_key = AuthKey(KEY)
        session.save()
        session.close()
    bot_dir = sdir / BOT
    (bot_dir / "user_2.session").unlink()  # gone behind our back
    telethon_file = SQLiteSession(str(bot_dir / "user_9.session"))  # dropped in, never in metadata
    telethon_file.close()
    (bot_dir / "user_..bad.session").write_bytes(b"")  # not a valid id: ignored
    (bot_dir / "notes.txt").write_text("x")
    listed = list_sqlite_sessions(sdir, BOT)
    assert [e["user_id"] for e in listed] == ["1", "3", "9"]
    assert set(read_metadata(sdir, BOT)) == {"1", "2", "3"}  # the raw metadata, before reconciling
    assert list_sqlite_sessions(sdir, "unknown-bot") == []


@pytest.mark.parametrize("garbage", [b"", b"{not json", b'{"42": {"user_id": "42", "created', b"[1, 2, 3]"])
def test_unreadable_metadata_is_rebuilt_from_files(
    opener: Opener, sdir: Path, caplog: pytest.LogCaptureFixture, garbage: bytes
) -> None:
    for uid in ("41", "42"):
        session = opener(uid)
        session.auth_key = AuthKey(KEY)
        session.save()
        session.close()
    meta = sdir / BOT / METADATA_FILE
    meta.write_bytes(garbage)
    caplog.set_level(logging.WARNING, logger="telethon_firestore_session.sqlite")
    assert set(read_metadata(sdir, BOT)) == {"41", "42"}
    assert [e["user_id"] for e in list_sqlite_sessions(sdir, BOT)] == ["41", "42"]
    assert any("rebuilding" in r.getMessage() for r in caplog.records)
    assert meta.read_bytes() == garbage  # reading never writes
    with pytest.raises(SessionCorruptError, match="not modified"):  # the manager's records may be in it
        SQLiteDirectory(sdir, BOT).list_users()
    s = opener("43")
    s.auth_key = AuthKey(KEY)
    s.save()
    assert meta.read_bytes() == garbage  # saving an auth key does not touch metadata.json ...
    s.close()  # ... closing does: it repairs the file, keeping the unreadable one aside
    assert set(json.loads(meta.read_text())) == {"41", "42", "43"}
    [aside] = (sdir / BOT).glob(f"{METADATA_FILE}.*.unreadable")
    assert aside.read_bytes() == garbage


CHILD_HAMMER = """
import itertools, sys, threading
from pathlib import Path
from telethon_firestore_session.sqlite import ScopedSQLiteSession
from telethon_firestore_session.sqlite.files import record_session
sdir, users = sys.argv[1], sys.argv[2].split(",")
bot_dir = Path(sdir).resolve() / "bot1"

def metadata_only():
    for i in itertools.count():
        uid = users[i % len(users)]
        record_session(bot_dir, uid, bot_dir / f"user_{uid}.session")

for i in itertools.count():
    s = ScopedSQLiteSession(users[i % len(users)], bot_id="bot1", sessions_dir=sdir)
    s.set_dc(i % 5 + 1, "149.154.167.51", 443)
    s.save()
    s.close()
    if i == 0:
        threading.Thread(target=metadata_only, daemon=True).start()
        print("READY", flush=True)
"""


@pytest.mark.slow
def test_sigkill_during_metadata_writes_loses_nothing(
    opener: Opener, sdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uids = [str(i) for i in range(1, 6)]
    for uid in uids:
        s = opener(uid)
        s.set_dc(1, "149.154.167.51", 443)
        s.auth_key = AuthKey(KEY)
        s.save()
        s.close()
    caplog.set_level(logging.WARNING, logger="telethon_firestore_session.sqlite")
    meta = sdir / BOT / METADATA_FILE
    for delay in (0.05, 0.2, 0.45):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD_HAMMER, str(sdir), ",".join(uids)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 30.0)
            assert ready, "the child did not start writing within 30 s"
            assert proc.stdout.readline().strip() == "READY"
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, err
        data = json.loads(meta.read_text())  # always a whole file, never a torn one
        assert set(data) == set(uids)
        assert not caplog.records
        assert [e["user_id"] for e in list_sqlite_sessions(sdir, BOT)] == uids
        for uid in uids:  # every session opens, with its auth key
            s = opener(uid)
            assert s.auth_key.key == KEY and 1 <= s.dc_id <= 5
            s.close()
    s = opener("1")
    s.set_dc(3, "149.154.167.51", 443)
    s.save()  # the next metadata write clears temp files a killed writer left
    assert [p.name for p in (sdir / BOT).iterdir() if p.name.endswith(".tmp")] == []


CHILD_WRITERS = """
import sys
from telethon_firestore_session.sqlite import ScopedSQLiteSession
sdir, prefix = sys.argv[1], sys.argv[2]
for i in range(25):
    s = ScopedSQLiteSession(f"{prefix}{i}", bot_id="bot1", sessions_dir=sdir)
    s.set_dc(2, "149.154.167.51", 443)
    s.save()
    s.close()
"""


@pytest.mark.slow
def test_metadata_writers_in_several_processes_lose_no_entry(sdir: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD_WRITERS, str(sdir), prefix], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for prefix in ("a", "b", "c")
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    data = json.loads((sdir / BOT / METADATA_FILE).read_text())
    assert set(data) == {f"{p}{i}" for p in "abc" for i in range(25)}


def test_rollback_keeps_the_original_error_when_no_transaction_is_open(tmp_path: Path) -> None:
    from telethon_firestore_session.sqlite.schema import rollback as _rollback

    conn = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    conn.execute("create table t (x)")
    conn.execute("begin immediate")
    conn.execute("insert into t values (1)")
    _rollback(conn)  # an open transaction is undone
    assert conn.execute("select count(*) from t").fetchone() == (0,) and not conn.in_transaction
    # Interrupted just after "commit": nothing to roll back, and the interrupt must get through as it is.
    conn.execute("begin immediate")
    conn.execute("insert into t values (2)")

    def commit_then_interrupted() -> None:
        try:
            conn.execute("commit")
            raise KeyboardInterrupt
        except BaseException:
            _rollback(conn)
            raise

    with pytest.raises(KeyboardInterrupt):
        commit_then_interrupted()
    assert conn.execute("select count(*) from t").fetchone() == (1,)
    conn.close()


# -- the one reader and writer of Telethon files ------------------------------------------------


def snapshot() -> SessionSnapshot:
    return SessionSnapshot(
        dc_id=2,
        server_address="149.154.167.51",
        port=443,
        auth_key=KEY,
        takeout_id=99,
        update_states={0: state(100), 777: state(5)},
        entities=[
            EntityRow(10, 70, "alice", "15551234567", "Alice Liddell", 1000),
            EntityRow(11, 77, None, None, "Bob", 0),  # no date: written as now
            EntityRow(-555, 0, None, None, "A chat", 1000),
            EntityRow(-1000000000777, 88, "somechannel", None, "A channel", 1000),
        ],
        files={(MD5, 1234, 0): (31, 32), (MD5, 1234, 1): (41, 42)},
    )


def test_a_written_file_opens_in_plain_telethon(tmp_path: Path) -> None:
    path = tmp_path / "out.session"
    snap = snapshot()
    old = os.umask(0)
    try:
        assert write_session_file(snap, path) == path
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.session"]
    t = SQLiteSession(str(path))
    try:
        check_populated(t, files=False)  # DC, auth key, takeout id, entities, update states
        assert len(list(t.get_update_states())) == 2
        # Telethon finds the sent file, then fails to build it (its get_file predates file_reference).
        with pytest.raises(TypeError, match="file_reference"):
            t.get_file(MD5, 1234, types.InputDocument)
        assert t.get_file(MD5, 999, types.InputDocument) is None
        t.set_update_state(0, state(200))  # and writes to it as to its own
        t.save()
    finally:
        t.close()
    assert rows(path, "select md5_digest, file_size, type, id, hash from sent_files order by type") == [
        (MD5, 1234, 0, 31, 32),
        (MD5, 1234, 1, 41, 42),
    ]
    assert rows(path, "pragma journal_mode") == [("delete",)]  # Telethon's own, one self-contained file
    fresh = tmp_path / "fresh.session"
    SQLiteSession(str(fresh)).close()
    assert schema(path) == schema(fresh)
    back = read_session_file(path)
    assert back.header == snap.header and back.files == snap.files
    assert sorted(r for r in back.entities if r.id != 11) == sorted(r for r in snap.entities if r.id != 11)
    assert 0 < next(r.date for r in back.entities if r.id == 11) <= time.time()
    assert back.update_states[0].pts == 200


def test_writing_a_file_never_clobbers_one_unless_asked(tmp_path: Path, sdir: Path, opener: Opener) -> None:
    path = tmp_path / "out.session"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        write_session_file(snapshot(), path)
    assert path.read_bytes() == b"precious"
    write_session_file(snapshot(), path, replace=True)
    assert read_session_file(path).auth_key == KEY
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.session"]
    with pytest.raises(SessionStoreError, match="cannot write"):
        write_session_file(snapshot(), tmp_path / "missing" / "out.session")
    # Our sessions open it too (and upgrade nothing: it is schema 8 already).
    target = sdir / BOT / "user_42.session"
    target.parent.mkdir(parents=True)
    write_session_file(snapshot(), target)
    check_populated(opener(), files=True)


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION + 1))
def test_reading_a_file_of_any_version_never_modifies_it(tmp_path: Path, version: int) -> None:
    path = tmp_path / "old.session"
    build_old_file(path, version)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    snap = read_session_file(path)
    assert (snap.dc_id, snap.server_address, snap.port, snap.auth_key) == (2, "149.154.167.51", 443, KEY)
    assert snap.takeout_id == (99 if version >= 5 else None)
    assert snap.entities == (
        [EntityRow(10, 70, "alice", "15551234567", "Alice", 1000 if version >= 7 else 0)] if version >= 6 else []
    )
    assert snap.files == ({(MD5, 1234, 0): (31, 32)} if version >= 3 else {})
    assert {k: v.pts for k, v in snap.update_states.items()} == ({0: 100} if version >= 4 else {})
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.session"]


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ("update version set version = 9", SchemaVersionError, "schema_version 9"),
        ("update sessions set auth_key = zeroblob(292)", SessionCorruptError, "292 bytes, not 256; it may be sealed"),
        (
            "create table tfs_sealed_entities (id integer primary key, username blob, phone blob, name blob)",
            SessionCorruptError,
            "sealed by telethon-firestore-session",
        ),
        ("drop table sessions", SessionCorruptError, "no sessions table"),
    ],
)
def test_reading_refuses_what_it_cannot_read_faithfully(
    tmp_path: Path, change: str, error: type[Exception], match: str
) -> None:
    path = tmp_path / "x.session"
    build_old_file(path, 8)
    with raw_connect(path) as c:
        c.execute(change)
        c.commit()
    before = path.read_bytes()
    with pytest.raises(error, match=match):
        read_session_file(path)
    assert path.read_bytes() == before


def test_read_auth_key_reads_the_stored_bytes_of_a_file_in_use(opener: Opener, tmp_path: Path) -> None:
    s = opener()
    assert read_auth_key(s.path) is None
    s.auth_key = AuthKey(KEY)
    s.save()
    assert read_auth_key(s.path) == KEY  # while the session holds its lock
    junk = tmp_path / "junk.session"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(SessionStoreError):
        read_auth_key(junk)
    with pytest.raises(SessionStoreError):
        read_auth_key(tmp_path / "missing.session")
    assert not (tmp_path / "missing.session").exists()


# -- one record per user: the manager's fields in metadata.json -----------------------------------

API_HASH = "feedfacefeedfacefeedfacefeedface"
PHONE = "+4915112345678"
CODE_HASH = "0123456789abcdef"
SENT = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def sealed_json(cipher: SessionCipher, uid: str, field: str, value: str) -> dict[str, str]:
    """A secret as the old SQLiteDirectory stored it in user_{id}.meta.json."""
    import base64

    return {"sealed": base64.b64encode(cipher.seal_text(value, where=f"{BOT}/{uid}", field=field)).decode()}


def legacy_meta(cipher: SessionCipher, uid: str = "7") -> dict[str, Any]:
    return {
        "user_id": uid,
        "registered_at": "2024-01-02T03:04:05.000006+00:00",
        "last_active_at": "2024-05-06T07:08:09.000001+00:00",
        "logged_in": False,
        "api_credentials": {"api_id": 4242, "api_hash": sealed_json(cipher, uid, "api_credentials.api_hash", API_HASH)},
        "pending_login": {
            "phone": sealed_json(cipher, uid, "pending_login.phone", PHONE),
            "phone_code_hash": sealed_json(cipher, uid, "pending_login.phone_code_hash", CODE_HASH),
            "sent_at": SENT.isoformat(),
            "expires_at": (SENT + datetime.timedelta(minutes=5)).isoformat(),
            "password_needed": True,
        },
    }


def check_folded_user(directory: SQLiteDirectory, uid: str = "7") -> None:
    user = directory.get_user(uid)
    assert user is not None
    assert user.registered_at == datetime.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert user.api_credentials == ApiCredentials(4242, API_HASH)
    assert user.pending_login == PendingLogin(PHONE, CODE_HASH, SENT, SENT + datetime.timedelta(minutes=5), True)


def test_an_old_meta_file_is_folded_into_metadata_json(sdir: Path, old: SessionCipher) -> None:
    bot_dir = sdir / BOT
    bot_dir.mkdir(parents=True)
    legacy = bot_dir / "user_7.meta.json"
    legacy.write_text(json.dumps(legacy_meta(old)))
    directory = SQLiteDirectory(sdir, BOT, cipher=old)
    check_folded_user(directory)
    assert not legacy.exists()
    entry = json.loads((bot_dir / METADATA_FILE).read_text())["7"]
    assert entry == {
        **legacy_meta(old),
        "api_credentials": entry["api_credentials"],
        "pending_login": entry["pending_login"],
    }
    assert set(entry["api_credentials"]["api_hash"]) == {"sealed"}  # still sealed, as it was
    blob = (bot_dir / METADATA_FILE).read_bytes()
    assert_absent(blob, api_hash=API_HASH.encode(), phone=PHONE.encode(), code_hash=CODE_HASH.encode())
    check_folded_user(SQLiteDirectory(sdir, BOT, cipher=old))  # read back from metadata.json alone
    assert [u.user_id for u in directory.list_users()] == ["7"]
    assert read_metadata(sdir, BOT) == {}  # no session file yet: not an entry of the session index


def test_a_listing_folds_every_old_meta_file_and_keeps_the_later_activity(
    sdir: Path, opener: Opener, old: SessionCipher
) -> None:
    s = opener("7")
    s.auth_key = AuthKey(KEY)
    s.save()  # the store's entry: created_at, last_active_at (now), size
    s.close()
    store_entry = read_metadata(sdir, BOT)["7"]
    bot_dir = sdir / BOT
    (bot_dir / "user_7.meta.json").write_text(json.dumps(legacy_meta(old, "7")))
    (bot_dir / "user_8.meta.json").write_text(json.dumps(legacy_meta(old, "8")))
    directory = SQLiteDirectory(sdir, BOT, cipher=old)
    users = directory.list_users()
    assert [(u.user_id, u.custom_api, u.login_pending) for u in users] == [("7", True, True), ("8", True, True)]
    assert sorted(p.name for p in bot_dir.glob("user_*")) == ["user_7.session"]
    # One last_active_at: the session's (now) is later than the old file's (2024-05-06).
    assert users[0].last_active_at == datetime.datetime.fromisoformat(store_entry["last_active_at"])
    assert users[1].last_active_at == datetime.datetime(2024, 5, 6, 7, 8, 9, 1, tzinfo=UTC)
    assert read_metadata(sdir, BOT) == {"7": store_entry}  # the session index is unchanged
    check_folded_user(directory, "7")
    check_folded_user(directory, "8")


def test_the_store_folds_and_keeps_the_managers_fields(sdir: Path, opener: Opener, old: SessionCipher) -> None:
    bot_dir = sdir / BOT
    bot_dir.mkdir(parents=True)
    (bot_dir / "user_7.meta.json").write_text(json.dumps(legacy_meta(old)))
    s = opener("7", cipher=old)
    s.auth_key = AuthKey(KEY)
    s.save()
    s.close()  # the store's first write to metadata.json folds the old file in
    assert not (bot_dir / "user_7.meta.json").exists()
    directory = SQLiteDirectory(sdir, BOT, cipher=old)
    check_folded_user(directory)
    assert set(read_metadata(sdir, BOT)["7"]) == {"user_id", "created_at", "last_active_at", "size"}
    s.process_entities(users(50))
    s.close()  # refreshes size and last_active_at only
    check_folded_user(directory)
    assert s.delete() is True  # the file is gone, the manager's user is not
    assert read_metadata(sdir, BOT) == {} and list_sqlite_sessions(sdir, BOT) == []
    check_folded_user(directory)
    assert directory.delete_user("7") is True
    assert directory.get_user("7") is None and json.loads((bot_dir / METADATA_FILE).read_text()) == {}
    assert directory.delete_user("7") is False


CHILD_CRASH_AFTER_FOLD = """
import os, signal, sys
from telethon_firestore_session.crypto import SessionCipher
from telethon_firestore_session.sqlite.directory import SQLiteDirectory

unlink = os.unlink
def crash_before_removing_old_files(path, *a, **kw):
    if str(path).endswith(".meta.json"):
        os.kill(os.getpid(), signal.SIGKILL)  # metadata.json is written, the old file still there
    unlink(path, *a, **kw)
os.unlink = crash_before_removing_old_files
SQLiteDirectory(sys.argv[1], "bot1", cipher=SessionCipher(sys.argv[2])).list_users()
"""


@pytest.mark.slow
def test_a_crash_between_folding_and_removing_loses_nothing(sdir: Path, old: SessionCipher) -> None:
    from telethon_firestore_session.testing.encryption import KEY_OLD

    bot_dir = sdir / BOT
    bot_dir.mkdir(parents=True)
    legacy = bot_dir / "user_7.meta.json"
    legacy.write_text(json.dumps(legacy_meta(old)))
    child = run_py(CHILD_CRASH_AFTER_FOLD, str(sdir), KEY_OLD)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert legacy.exists()
    assert "pending_login" in json.loads((bot_dir / METADATA_FILE).read_text())["7"]  # written first
    # Run again: the old file is folded once more (the same values) and removed; then life goes on.
    directory = SQLiteDirectory(sdir, BOT, cipher=old)
    assert directory.update_user("7", logged_in=True) is True
    assert not legacy.exists()
    check_folded_user(directory)
    user = directory.get_user("7")
    assert user is not None and user.logged_in
    assert [p.name for p in bot_dir.iterdir() if p.name.endswith(".tmp")] == []


def test_an_unreadable_old_meta_file_is_a_typed_error_and_kept(sdir: Path) -> None:
    bot_dir = sdir / BOT
    bot_dir.mkdir(parents=True)
    legacy = bot_dir / "user_7.meta.json"
    legacy.write_text("{not json")
    directory = SQLiteDirectory(sdir, BOT)
    for call in (lambda: directory.get_user("7"), directory.list_users, lambda: directory.touch("7")):
        with pytest.raises(SessionCorruptError, match=r"user_7\.meta\.json"):
            call()
    assert legacy.read_text() == "{not json"
    assert directory.delete_user("7") is True  # deleting needs no reading
    assert not legacy.exists() and directory.list_users() == []
