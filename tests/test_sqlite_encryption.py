"""Encryption at rest in SQLite files (real files, real SQLite): sealed auth keys, failures
that leave every byte of the file as it was, rotation, plaintext-to-sealed migration,
sealed entity fields with indexed blind-index lookups, Telethon interop, the manager,
and no secret in any log record or error on either backend."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from telethon import TelegramClient
from telethon.crypto import AuthKey
from telethon.sessions import SQLiteSession
from telethon.tl import types

from telethon_firestore_session import (
    BackgroundWriter,
    ConfigError,
    FirestoreSession,
    SessionCorruptError,
    SessionDecryptionError,
    SessionInUseError,
    SessionRotationError,
    UserSessionManager,
)
from telethon_firestore_session.crypto import OVERHEAD, SessionCipher, is_sealed
from telethon_firestore_session.entities import decode
from telethon_firestore_session.firestore import rotate_firestore_sessions
from telethon_firestore_session.manager import LoginStatus
from telethon_firestore_session.migrate import (
    SessionDestination,
    copy_session,
    import_session_files,
    read_session,
    read_session_file,
)
from telethon_firestore_session.sqlite import (
    BLIND_INDEX_PREFIX,
    METADATA_FILE,
    SEALED_ENTITIES,
    ScopedSQLiteSession,
    rotate_sqlite_sessions,
)
from telethon_firestore_session.sqlite.directory import SQLiteDirectory
from tests.common import AUTH_A, AUTH_B, BOT, KEY_NEW, KEY_OLD, PEOPLE, RAW_NEW, RAW_OLD, Opener, person

from .leaks import find_leaks
from .telegram_double import FakeTelegram

ROOT = Path(__file__).resolve().parent.parent
DATE = datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc)
SIDE_FILES = ("", "-wal", "-journal")  # -shm is SQLite's shared-memory index, rebuilt by any reader

PLAINTEXT = ["alicew", "AliceW", "15550001111", "Alice Wonder", "bob_b", "447700900123", "4915112345678", "Carol Kings"]


def make(opener: Opener, uid: str = "42", auth: bytes = AUTH_A, **kw: Any) -> ScopedSQLiteSession:
    s = opener(uid, **kw)
    s.set_dc(2, "149.154.167.51", 443)
    s.auth_key = AuthKey(auth)
    s.save()
    return s


def path_of(sdir: Path, uid: str = "42", bot: str = BOT) -> Path:
    return sdir / bot / f"user_{uid}.session"


def on_disk(path: Path) -> dict[str, str | None]:
    """sha256 of the file and its -wal/-journal side files (None: absent). Equal means untouched."""
    out: dict[str, str | None] = {}
    for suffix in SIDE_FILES:
        try:
            out[suffix or "db"] = hashlib.sha256(Path(f"{path}{suffix}").read_bytes()).hexdigest()
        except FileNotFoundError:
            out[suffix or "db"] = None
    return out


def raw_bytes(path: Path) -> bytes:
    """Every byte of the database and its side files, as an attacker with the disk sees them."""
    return b"".join(Path(f"{path}{s}").read_bytes() for s in (*SIDE_FILES, "-shm") if Path(f"{path}{s}").exists())


def plaintext_in(path: Path, values: list[str]) -> list[str]:
    data = raw_bytes(path)
    return [v for v in values if v.encode() in data]


def secrets_in(path: Path, **secrets: bytes) -> list[str]:
    """Which secrets appear in the file's bytes (names only, so a failure never prints one)."""
    data = raw_bytes(path)
    return [name for name, secret in secrets.items() if secret in data or secret[64:96] in data]


def query(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read through a connection of our own (reads only; as the last one to close, it removes the -wal)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def write(path: Path, sql: str, params: tuple[Any, ...] = ()) -> None:
    """Change the file as an attacker (or another program) would, then leave no -wal behind."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(sql, params)
        conn.execute("pragma wal_checkpoint(truncate)")
    finally:
        conn.close()


def stored_key(path: Path) -> bytes:
    [(value,)] = query(path, "select auth_key from sessions")
    assert isinstance(value, bytes)
    return value


def run_py(code: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT
    )


# -- the auth key ------------------------------------------------------------------------------


async def test_auth_key_is_sealed_in_the_file_and_opens(opener: Opener, sdir: Path, old: SessionCipher) -> None:
    s = make(opener, cipher=old)
    path = path_of(sdir)
    sealed = stored_key(path)
    assert is_sealed(sealed) and len(sealed) == 256 + OVERHEAD
    assert old.sealed_with(sealed) == old.key_id
    assert old.open(sealed, where=f"{BOT}/42", field="auth_key") == AUTH_A  # bound to bot_id/user_id/auth_key
    assert secrets_in(path, auth_a=AUTH_A) == []  # while open: the database and its -wal
    first = sealed
    s.takeout_id = 7
    s.save()
    assert stored_key(path) != first  # a fresh nonce for every write
    s.close()
    assert secrets_in(path, auth_a=AUTH_A) == []

    again = opener(cipher=old)
    assert again.auth_key is not None and again.auth_key.key == AUTH_A
    assert (again.dc_id, again.server_address, again.port, again.takeout_id) == (2, "149.154.167.51", 443, 7)
    assert "auth_key=set" in repr(again) and old.key_id not in repr(again)
    # A real client builds its sender from the opened key.
    client = TelegramClient(again, 12345, "0123456789abcdef0123456789abcdef")
    assert client._sender.auth_key.key == AUTH_A


def test_cleared_auth_key_is_stored_empty(opener: Opener, sdir: Path, old: SessionCipher) -> None:
    s = make(opener, cipher=old)
    s.auth_key = None
    s.save()
    s.close()
    assert stored_key(path_of(sdir)) == b""  # what Telethon stores for "no key"
    assert opener(cipher=old).auth_key is None


def test_missing_key_for_a_sealed_file_touches_nothing(opener: Opener, sdir: Path, old: SessionCipher) -> None:
    make(opener, cipher=old).close()
    path = path_of(sdir)
    metadata = (sdir / BOT / METADATA_FILE).read_bytes()
    before = on_disk(path)
    with pytest.raises(SessionDecryptionError) as info:
        opener()
    assert info.value.field == "auth_key"
    assert str(path) in info.value.where
    assert "no encryption key is configured" in str(info.value)
    assert on_disk(path) == before
    assert (sdir / BOT / METADATA_FILE).read_bytes() == metadata
    # The failed open released the lock, and the session never started empty: the key still opens it.
    right = opener(cipher=old)
    assert right.auth_key is not None and right.auth_key.key == AUTH_A


def test_wrong_key_touches_nothing(opener: Opener, sdir: Path, old: SessionCipher) -> None:
    make(opener, cipher=old).close()
    path = path_of(sdir)
    for journal in ("wal", "delete"):  # ours, and as a copy or backup tool may leave it
        write(path, f"pragma journal_mode={journal}")
        before = on_disk(path)
        for wrong in (SessionCipher(KEY_NEW), SessionCipher(KEY_NEW, [bytes(32)])):
            with pytest.raises(SessionDecryptionError) as info:
                opener(cipher=wrong, encrypt_pii=True)  # would switch to WAL and add the side table
            assert old.key_id in str(info.value) and "not configured" in str(info.value)
            assert on_disk(path) == before
    right = opener(cipher=old)
    assert right.auth_key is not None and right.auth_key.key == AUTH_A


def test_tampered_auth_key_touches_nothing(opener: Opener, sdir: Path, old: SessionCipher) -> None:
    make(opener, cipher=old).close()
    path = path_of(sdir)
    for position in (100, 10, -1):  # ciphertext, key id, tag
        tampered = bytearray(stored_key(path))
        tampered[position] ^= 0x01
        write(path, "update sessions set auth_key = ?", (bytes(tampered),))
        before = on_disk(path)
        with pytest.raises(SessionDecryptionError) as info:
            opener(cipher=old)
        assert info.value.field == "auth_key"
        assert on_disk(path) == before
        tampered[position] ^= 0x01
        write(path, "update sessions set auth_key = ?", (bytes(tampered),))
    # Cut short, or its header damaged (no longer an envelope): still never read as a key.
    sealed = stored_key(path)
    for damaged in (sealed[:-1], b"XYZ" + sealed[3:]):
        write(path, "update sessions set auth_key = ?", (damaged,))
        before = on_disk(path)
        with pytest.raises(SessionDecryptionError, match="modified"):
            opener(cipher=old)
        assert on_disk(path) == before
    with pytest.raises(SessionCorruptError, match="not 256"):
        opener()  # without a key, a value that is no envelope is no auth key either
    assert on_disk(path) == before


def test_auth_key_copied_from_another_users_file_does_not_open(opener: Opener, sdir: Path, old: SessionCipher) -> None:
    make(opener, "1001", AUTH_A, cipher=old).close()
    make(opener, "1002", AUTH_B, cipher=old).close()
    make(opener, "1001", AUTH_B, bot="bot2", cipher=old).close()
    alice = stored_key(path_of(sdir, "1001"))
    for bot, uid in ((BOT, "1002"), ("bot2", "1001")):
        path = path_of(sdir, uid, bot)
        write(path, "update sessions set auth_key = ?", (alice,))
        before = on_disk(path)
        with pytest.raises(SessionDecryptionError, match="another session"):
            opener(uid, bot=bot, cipher=old)
        assert on_disk(path) == before
    # Or the whole file copied over another user's.
    path = path_of(sdir, "1003")
    path.write_bytes(path_of(sdir, "1001").read_bytes())
    before = on_disk(path)
    with pytest.raises(SessionDecryptionError, match="another session"):
        opener("1003", cipher=old)
    assert on_disk(path) == before
    a = opener("1001", cipher=old)
    assert a.auth_key is not None and a.auth_key.key == AUTH_A


CHILD_CRASH = """
import os, sys
from telethon.crypto import AuthKey
from telethon_firestore_session.crypto import SessionCipher
from telethon_firestore_session.sqlite import ScopedSQLiteSession
s = ScopedSQLiteSession("42", bot_id="bot1", sessions_dir=sys.argv[1], cipher=SessionCipher(sys.argv[2]))
s.set_dc(4, "149.154.167.91", 443)
s.auth_key = AuthKey(bytes(range(256)))
s.save()
os._exit(0)  # killed before close(): the commit is only in the -wal
"""


def test_left_over_wal_is_left_alone_when_opening_fails(sdir: Path, old: SessionCipher, opener: Opener) -> None:
    child = run_py(CHILD_CRASH, str(sdir), KEY_OLD)
    assert child.returncode == 0, child.stderr
    path = path_of(sdir)
    before = on_disk(path)
    assert before["-wal"] is not None and os.path.getsize(f"{path}-wal") > 0
    for kw in ({}, {"cipher": SessionCipher(KEY_NEW)}):
        with pytest.raises(SessionDecryptionError):
            opener(**kw)
        assert on_disk(path) == before  # not checkpointed, not deleted
    s = opener(cipher=old)
    assert s.auth_key is not None and s.auth_key.key == bytes(range(256)) and s.dc_id == 4


def test_close_after_a_failed_reopen_writes_nothing(opener: Opener, sdir: Path, old: SessionCipher) -> None:
    """A session whose file was re-keyed while it was closed refuses it, and its close() writes nothing."""
    s = make(opener, cipher=old, close_timeout=0.3)
    s.process_entities(PEOPLE)
    s.close()
    path = path_of(sdir)
    stranger = SessionCipher(bytes(range(50, 82)))
    write(path, "update sessions set auth_key = ?", (stranger.seal(AUTH_B, where=f"{BOT}/42", field="auth_key"),))
    before = on_disk(path)
    with pytest.raises(ValueError, match="Could not find"):
        s.get_input_entity("@nobody")  # opening the file again fails: a miss, logged
    s.process_entities([person(504, "dave", None, "Dave")])
    try:
        s.close()  # the writer cannot open the file either: nothing is written (it keeps retrying)
        assert on_disk(path) == before
    finally:
        BackgroundWriter.get().discard(s._sqlite)


# -- turning encryption on, and rotation ---------------------------------------------------------


def test_plaintext_telethon_file_is_sealed_on_next_save(opener: Opener, sdir: Path, old: SessionCipher) -> None:
    path = path_of(sdir)
    path.parent.mkdir(parents=True)
    plain = SQLiteSession(str(path))  # Telethon's own file, written before encryption was turned on
    plain.set_dc(2, "149.154.167.51", 443)
    plain.auth_key = AuthKey(AUTH_A)
    plain.process_entities(PEOPLE)
    plain.save()
    plain.close()
    assert stored_key(path) == AUTH_A

    s = opener(cipher=old)
    assert s.auth_key is not None and s.auth_key.key == AUTH_A
    assert s._sqlite._conn().execute("pragma secure_delete").fetchone() == (1,)  # whatever SQLite's build default
    assert stored_key(path) == AUTH_A  # not until save()
    assert s.get_input_entity("@alicew") == types.InputPeerUser(501, 501 * 11)  # plaintext rows still found
    s.save()  # nothing changed, but the header is written again, sealed
    sealed = stored_key(path)
    assert is_sealed(sealed) and old.sealed_with(sealed) == old.key_id
    # The plaintext key left the disk at once (zeroed, checkpointed), not at the next checkpoint.
    assert secrets_in(path, auth_a=AUTH_A) == []
    s.save()
    assert stored_key(path) == sealed  # ... once
    s.close()
    assert secrets_in(path, auth_a=AUTH_A) == []
    with pytest.raises(SessionDecryptionError):
        opener()
    again = opener(cipher=old)
    assert again.auth_key is not None and again.auth_key.key == AUTH_A


def test_plaintext_key_that_looks_like_an_envelope(opener: Opener, old: SessionCipher) -> None:
    odd = b"TFS\x01" + AUTH_A[4:]
    make(opener, auth=odd).close()
    s = opener(cipher=old)
    assert s.auth_key is not None and s.auth_key.key == odd


def test_old_key_opens_and_next_save_reseals(
    opener: Opener, sdir: Path, old: SessionCipher, new: SessionCipher
) -> None:
    make(opener, cipher=old).close()
    path = path_of(sdir)
    before = stored_key(path)
    s = opener(cipher=new)
    assert s.auth_key is not None and s.auth_key.key == AUTH_A
    assert stored_key(path) == before  # opening writes nothing
    s.save()
    sealed = stored_key(path)
    assert new.sealed_with(sealed) == new.key_id
    s.save()
    assert stored_key(path) == sealed
    s.close()
    only_new = opener(cipher=SessionCipher(KEY_NEW))
    assert only_new.auth_key is not None and only_new.auth_key.key == AUTH_A


def _entities(path: Path) -> dict[int, tuple[Any, ...]]:
    return {r[0]: r[1:] for r in query(path, "select id, hash, username, phone, name, date from entities")}


def _sealed(path: Path) -> dict[int, tuple[Any, ...]]:
    return {r[0]: r[1:] for r in query(path, f"select id, username, phone, name from {SEALED_ENTITIES}")}  # noqa: S608


def test_rotate_sqlite_sessions(opener: Opener, sdir: Path, old: SessionCipher, new: SessionCipher) -> None:
    make(opener, "1", AUTH_A, cipher=old).close()
    make(opener, "2", AUTH_B).close()  # plaintext
    s3 = make(opener, "3", AUTH_B, cipher=old, encrypt_pii=True)
    s3.process_entities(PEOPLE)
    s3.close()
    metadata = json.loads((sdir / BOT / METADATA_FILE).read_text())
    before_3 = _entities(path_of(sdir, "3"))

    assert rotate_sqlite_sessions(sdir, BOT, new) == 3
    for uid in ("1", "2", "3"):
        assert new.sealed_with(stored_key(path_of(sdir, uid))) == new.key_id
        assert not Path(f"{path_of(sdir, uid)}-wal").exists()  # closed again
    after_3 = _entities(path_of(sdir, "3"))
    sealed_3 = _sealed(path_of(sdir, "3"))
    assert after_3.keys() == before_3.keys() == {501, 502, 503}
    for eid, row in after_3.items():
        assert row[0] == before_3[eid][0] and row[4] == before_3[eid][4]  # hash and date kept
        for i in range(3):
            if before_3[eid][1 + i] is None:
                assert row[1 + i] is None and sealed_3[eid][i] is None
            else:
                assert row[1 + i].startswith(BLIND_INDEX_PREFIX) and row[1 + i] != before_3[eid][1 + i]
                assert new.sealed_with(sealed_3[eid][i]) == new.key_id
    # Rotation is not activity: metadata.json is left alone.
    assert json.loads((sdir / BOT / METADATA_FILE).read_text()) == metadata
    # Everything opens with the new key alone, lookups included.
    only_new = SessionCipher(KEY_NEW)
    fresh = opener("3", cipher=only_new, encrypt_pii=True)
    assert fresh.auth_key is not None and fresh.auth_key.key == AUTH_B
    assert fresh.get_input_entity("@alicew") == types.InputPeerUser(501, 501 * 11)
    assert fresh.get_input_entity("+44 7700 900123") == types.InputPeerUser(502, 502 * 11)
    fresh.close()
    # Idempotent: a second run finds nothing to do and writes nothing.
    before = {uid: on_disk(path_of(sdir, uid)) for uid in ("1", "2", "3")}
    assert rotate_sqlite_sessions(sdir, BOT, new) == 0
    assert {uid: on_disk(path_of(sdir, uid)) for uid in ("1", "2", "3")} == before


def test_rotate_one_session_and_seal_plaintext_pii(opener: Opener, sdir: Path, old: SessionCipher) -> None:
    s = make(opener, "7", AUTH_A)
    s.process_entities(PEOPLE)
    s.close()
    make(opener, "8", AUTH_B).close()
    other = on_disk(path_of(sdir, "8"))
    assert plaintext_in(path_of(sdir, "7"), PLAINTEXT)  # the check below can fail

    assert rotate_sqlite_sessions(sdir, BOT, old, user_id=7, encrypt_pii=True) == 1
    assert on_disk(path_of(sdir, "8")) == other  # another session: untouched
    assert plaintext_in(path_of(sdir, "7"), PLAINTEXT) == []  # zeroed and checkpointed, not left in free space
    assert secrets_in(path_of(sdir, "7"), auth_a=AUTH_A) == []
    fresh = opener("7", cipher=old, encrypt_pii=True)
    assert fresh.get_input_entity("Carol Kings") == types.InputPeerUser(503, 503 * 11)
    assert fresh.get_input_entity("+4915112345678") == types.InputPeerUser(503, 503 * 11)
    fresh.close()
    # A user without a file: nothing to do, and no file is created.
    assert rotate_sqlite_sessions(sdir, BOT, old, user_id="nobody") == 0
    assert not path_of(sdir, "nobody").exists()


CHILD_HOLD = """
import sys
from telethon_firestore_session.crypto import SessionCipher
from telethon_firestore_session.sqlite import ScopedSQLiteSession
s = ScopedSQLiteSession(sys.argv[2], bot_id="bot1", sessions_dir=sys.argv[1], cipher=SessionCipher(sys.argv[3]))
print("OPEN", flush=True)
sys.stdin.readline()
s.close()
"""


def test_rotate_skips_and_reports_sessions_it_cannot_open(
    opener: Opener, sdir: Path, old: SessionCipher, new: SessionCipher
) -> None:
    stranger = SessionCipher(bytes(range(50, 82)))
    make(opener, "1", AUTH_A, cipher=stranger).close()  # a key we do not have
    make(opener, "2", AUTH_B, cipher=old).close()  # held by another process
    make(opener, "3", AUTH_B, cipher=old).close()  # held by another object in this process
    make(opener, "4", AUTH_A).close()  # fine
    held_here = opener("3", cipher=old)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_HOLD, str(sdir), "2", KEY_OLD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "OPEN"
        before = {uid: on_disk(path_of(sdir, uid)) for uid in ("1", "2", "3")}
        with pytest.raises(SessionRotationError) as info:
            rotate_sqlite_sessions(sdir, BOT, new)
        assert {uid: on_disk(path_of(sdir, uid)) for uid in ("1", "2", "3")} == before
    finally:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("\n")
        child.stdin.close()
        child.wait(30)
        child.stdout.close()
    err = info.value
    assert err.rotated == 1
    assert [type(f) for f in err.failures] == [SessionDecryptionError, SessionInUseError, SessionInUseError]
    assert err.__cause__ is err.failures[0]
    text = str(err)
    for uid in ("1", "2", "3"):
        assert f"user_{uid}.session" in text
    assert "another process" in text and "another session object in this process" in text
    assert new.sealed_with(stored_key(path_of(sdir, "4"))) == new.key_id
    # Once the other holders are gone, running it again finishes the job.
    held_here.close()
    with pytest.raises(SessionRotationError) as again:
        rotate_sqlite_sessions(sdir, BOT, new)
    assert again.value.rotated == 2 and [type(f) for f in again.value.failures] == [SessionDecryptionError]


def test_rotate_needs_no_live_session_and_a_killed_holder_does_not_block(
    sdir: Path, old: SessionCipher, new: SessionCipher
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_HOLD, str(sdir), "9", KEY_OLD], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert child.stdin is not None and child.stdout is not None
    with child.stdin, child.stdout:
        assert child.stdout.readline().strip() == b"OPEN"
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    assert rotate_sqlite_sessions(sdir, BOT, new, user_id="9") == 0  # an empty session: nothing sealed yet
    assert rotate_sqlite_sessions(sdir, BOT, new) == 0


# -- sealed entity fields and blind-index lookups ------------------------------------------------


def _lookup_plans(s: ScopedSQLiteSession, path: Path, key: str) -> list[str]:
    """The query plans of the statements a lookup ran (captured from the store's own connection)."""
    statements: list[str] = []
    conn = s._sqlite._conn()
    conn.set_trace_callback(statements.append)
    try:
        s.get_input_entity(key)
    finally:
        conn.set_trace_callback(None)
    plans = []
    for stmt in statements:
        if stmt.lstrip().lower().startswith("select"):
            plans += [row[3] for row in query(path, f"explain query plan {stmt}")]
    return plans


def test_pii_is_sealed_and_found_with_indexed_queries(opener: Opener, sdir: Path, old: SessionCipher) -> None:
    s = make(opener, cipher=old, encrypt_pii=True)
    s.process_entities(PEOPLE)
    assert s.flush(10)
    path = path_of(sdir)
    assert Path(f"{path}-wal").stat().st_size > 0  # written, not yet checkpointed: the -wal is checked too
    assert plaintext_in(path, PLAINTEXT) == []
    s.close()
    assert plaintext_in(path, PLAINTEXT) == []
    stored = _entities(path)
    sealed = _sealed(path)
    assert set(stored) == set(sealed) == {501, 502, 503}
    alice = stored[501]
    assert alice[0] == 501 * 11
    assert alice[1] == BLIND_INDEX_PREFIX + old.blind_index("alicew", where=f"{BOT}/42", field="username")
    assert alice[2] == BLIND_INDEX_PREFIX + old.blind_index("15550001111", where=f"{BOT}/42", field="phone")
    assert all(is_sealed(v) for v in sealed[501])
    assert old.open_text(sealed[501][2], where=f"{BOT}/42", field="entities/501/name") == "Alice Wonder"
    assert stored[503][1] is None and sealed[503][0] is None
    # Still a valid Telethon schema-8 file: Telethon's own insert works on it.
    assert [r[1] for r in query(path, "pragma table_info(entities)")] == [
        "id",
        "hash",
        "username",
        "phone",
        "name",
        "date",
    ]
    assert query(path, "select version from version") == [(8,)]

    # A fresh session has nothing in memory: each lookup is one lazy indexed query.
    fresh = opener(cipher=old, encrypt_pii=True)
    assert not fresh._entities
    for key in ("@AliceW", "+44 7700 900123", "Carol Kings"):  # one per entity: each asks the file
        plans = _lookup_plans(fresh, path, key)
        assert plans and not [p for p in plans if p.startswith("SCAN")], plans
        assert any("USING INDEX tfs_entities_" in p or "USING COVERING INDEX tfs_entities_" in p for p in plans)
    assert fresh.get_input_entity("t.me/alicew") == types.InputPeerUser(501, 501 * 11)
    assert fresh.get_input_entity("+1 (555) 000-1111") == types.InputPeerUser(501, 501 * 11)
    assert fresh.get_input_entity("Alice Wonder") == types.InputPeerUser(501, 501 * 11)
    fresh.close()
    fresh = opener(cipher=old, encrypt_pii=True)
    assert fresh.get_input_entity("ALICEW") == types.InputPeerUser(501, 501 * 11)
    assert fresh.get_input_entity("447700900123") == types.InputPeerUser(502, 502 * 11)
    assert fresh.get_input_entity("Carol Kings") == types.InputPeerUser(503, 503 * 11)
    assert fresh.get_input_entity(503) == types.InputPeerUser(503, 503 * 11)
    for missing in ("@nobody_here", "+1 555 999 9999", "Nobody Known", "Bob "):
        with pytest.raises(ValueError, match="Could not find"):
            fresh.get_input_entity(missing)
    # Opened values are in memory now, as plaintext, for the hot path.
    assert decode(fresh._entities[501]) == (501 * 11, "alicew", "15550001111", "Alice Wonder")
    fresh.close()
    rows = {r.id: r for r in opener(cipher=old, encrypt_pii=True).iter_entities()}
    assert (rows[502].username, rows[502].phone, rows[502].name) == ("bob_b", "447700900123", "Bob")


def test_lookups_find_old_key_and_plaintext_rows_and_seal_them_on_write(
    opener: Opener, sdir: Path, old: SessionCipher, new: SessionCipher
) -> None:
    # Alice sealed under the old key; Bob written in plaintext before encrypt_pii was on.
    s = make(opener, cipher=old, encrypt_pii=True)
    s.process_entities([PEOPLE.users[0]])
    s.close()
    p = opener(cipher=old)
    p.process_entities([PEOPLE.users[1]])
    p.close()
    path = path_of(sdir)
    assert _entities(path)[502][1] == "bob_b"

    fresh = opener(cipher=new, encrypt_pii=True)
    assert fresh.get_input_entity("alicew") == types.InputPeerUser(501, 501 * 11)
    assert fresh.get_input_entity("@bob_b") == types.InputPeerUser(502, 502 * 11)
    assert fresh.get_input_entity("+447700900123") == types.InputPeerUser(502, 502 * 11)
    # Re-seeing Bob with a new username writes his row sealed, under the new key.
    fresh.process_entities([person(502, "bob_new", "447700900123", "Bob")])
    assert fresh.flush(10)
    fresh.close()
    assert new.sealed_with(_sealed(path)[502][0]) == new.key_id
    assert plaintext_in(path, ["bob_new", "bob_b", "447700900123"]) == []
    assert opener(cipher=new, encrypt_pii=True).get_input_entity("bob_new") == types.InputPeerUser(502, 502 * 11)


def test_entity_field_copied_between_entities_or_files_is_a_miss(
    opener: Opener, sdir: Path, old: SessionCipher, caplog: pytest.LogCaptureFixture
) -> None:
    for uid in ("42", "43"):
        s = make(opener, uid, cipher=old, encrypt_pii=True)
        s.process_entities(PEOPLE)
        s.close()
    path = path_of(sdir)
    alice = _entities(path)[501]
    alice_sealed = _sealed(path)[501]
    # Alice's sealed username moved onto Bob's row (with its blind index): does not open for 502.
    write(path, f"update {SEALED_ENTITIES} set username = ? where id = 502", (alice_sealed[0],))  # noqa: S608
    write(path, "update entities set username = ? where id = 502", (alice[1],))
    # Carol's row replaced by the same row from user 43's file: bound to another session.
    carol = query(path_of(sdir, "43"), f"select username, phone, name from {SEALED_ENTITIES} where id = 503")[0]  # noqa: S608
    write(path, f"update {SEALED_ENTITIES} set username = ?, phone = ?, name = ? where id = 503", carol)  # noqa: S608
    before = on_disk(path)
    fresh = opener(cipher=old, encrypt_pii=True)
    with pytest.raises(ValueError, match="Could not find"):
        fresh.get_input_entity(502)
    with pytest.raises(ValueError, match="Could not find"):
        fresh.get_input_entity("+4915112345678")
    assert "SessionDecryptionError" in caplog.text
    assert fresh.get_input_entity("alicew") == types.InputPeerUser(501, 501 * 11)  # the real owner
    with pytest.raises(SessionDecryptionError, match="entities/502/username"):
        list(fresh.iter_entities())
    fresh.close()
    assert on_disk(path) == before


def test_blind_index_changed_outside_is_refused(opener: Opener, sdir: Path, old: SessionCipher) -> None:
    s = make(opener, cipher=old, encrypt_pii=True)
    s.process_entities(PEOPLE)
    s.close()
    path = path_of(sdir)
    bob = _entities(path)[502]
    write(path, "update entities set username = ? where id = 501", (bob[1],))  # Alice now claims Bob's index
    fresh = opener(cipher=old, encrypt_pii=True)
    assert fresh.get_input_entity("bob_b") == types.InputPeerUser(502, 502 * 11)  # never Alice
    with pytest.raises(ValueError, match="Could not find"):
        fresh.get_input_entity(501)
    with pytest.raises(SessionDecryptionError, match=r"entities/501/username.*changed outside"):
        list(fresh.iter_entities())


def test_encrypt_pii_needs_a_cipher(sdir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        ScopedSQLiteSession("42", bot_id=BOT, sessions_dir=sdir, encrypt_pii=True)
    assert info.value.variable == "encrypt_pii"
    assert not sdir.exists()
    with pytest.raises(ConfigError):
        SQLiteDirectory(sdir, BOT, encrypt_pii=True)


def test_cipher_without_encrypt_pii_keeps_entities_plaintext(opener: Opener, sdir: Path, old: SessionCipher) -> None:
    s = make(opener, cipher=old)
    s.process_entities(PEOPLE)
    s.close()
    path = path_of(sdir)
    assert _entities(path)[501][1:4] == ("alicew", 15550001111, "Alice Wonder")
    assert query(path, "select name from sqlite_master where name = ?", (SEALED_ENTITIES,)) == []
    assert is_sealed(stored_key(path))


# -- Telethon interop ---------------------------------------------------------------------------


def test_plain_telethon_opens_a_sealed_file_but_gets_no_usable_key(
    opener: Opener, sdir: Path, old: SessionCipher
) -> None:
    """A sealed file is a valid schema-8 file, but plain SQLiteSession cannot use its secrets.

    It reads the envelope as its auth key: not the key, so a real client would get
    ``AuthKeyNotFound`` from Telegram (Telethon's MTProtoSender on a 404), and log in
    again. Ids and access hashes stay usable; sealed usernames, phones and names do
    not. What it writes back keeps the envelope intact, and rows it rewrites in
    plaintext are read as plaintext here.
    """
    s = make(opener, cipher=old, encrypt_pii=True)
    s.process_entities(PEOPLE)
    s.close()
    path = path_of(sdir)
    sealed = stored_key(path)

    plain = SQLiteSession(str(path))
    assert plain.auth_key is not None and plain.auth_key.key == sealed and plain.auth_key.key != AUTH_A
    assert plain.get_input_entity(501) == types.InputPeerUser(501, 501 * 11)
    with pytest.raises(ValueError, match="Could not find"):
        plain.get_input_entity("alicew")
    plain.process_entities([person(502, "bob_plain", "447700900123", "Bob")])  # Telethon writes plaintext
    plain.save()
    plain.close()
    assert stored_key(path) == sealed

    again = opener(cipher=old, encrypt_pii=True)
    assert again.auth_key is not None and again.auth_key.key == AUTH_A
    assert again.get_input_entity("bob_plain") == types.InputPeerUser(502, 502 * 11)
    assert again.get_input_entity("alicew") == types.InputPeerUser(501, 501 * 11)
    assert {r.id: r.username for r in again.iter_entities()} == {501: "alicew", 502: "bob_plain", 503: None}
    # Our next write of that row seals it again and drops the stale sealed values.
    again.process_entities([person(502, "bob_sealed", "447700900123", "Bob")])
    assert again.flush(10)
    again.close()
    assert plaintext_in(path, ["bob_plain", "bob_sealed"]) == []


# -- migration through sealed sessions -----------------------------------------------------------


def test_migrate_round_trips_through_a_sealed_session(
    opener: Opener, sdir: Path, tmp_path: Path, old: SessionCipher
) -> None:
    src = tmp_path / "user_77.session"
    telethon = SQLiteSession(str(src))
    telethon.set_dc(2, "149.154.167.51", 443)
    telethon.auth_key = AuthKey(AUTH_A)
    telethon.process_entities(PEOPLE)
    telethon.set_update_state(0, types.updates.State(5, 6, DATE, 7, 0))
    telethon.save()
    telethon.close()
    expected = read_session_file(src)

    report = import_session_files(
        src,
        SessionDestination(
            lambda uid: ScopedSQLiteSession(uid, bot_id=BOT, sessions_dir=sdir, cipher=old, encrypt_pii=True)
        ),
    )
    assert [item.status for item in report.items] == ["copied"]
    path = path_of(sdir, "77")
    assert plaintext_in(path, PLAINTEXT) == [] and secrets_in(path, auth_a=AUTH_A) == []
    sealed = opener("77", cipher=old, encrypt_pii=True)
    snap = read_session(sealed)
    assert snap.auth_key == AUTH_A and snap.dc_id == 2
    assert {r.id: (r.hash, r.username, r.phone, r.name) for r in snap.entities} == {
        r.id: (r.hash, r.username, r.phone, r.name) for r in expected.entities
    }
    assert {k: v.pts for k, v in snap.update_states.items()} == {0: 5}
    # Out again, into a plain Telethon file (the secrets are opened by the session, not copied sealed).
    out = SQLiteSession(str(tmp_path / "exported"))
    assert copy_session(sealed, out).status == "copied"
    assert out.auth_key is not None and out.auth_key.key == AUTH_A
    assert out.get_input_entity("alicew") == types.InputPeerUser(501, 501 * 11)
    out.close()
    sealed.close()
    # The file itself is refused by the readers that would copy envelopes and blind indexes.
    with pytest.raises(SessionCorruptError, match="sealed by telethon-firestore-session"):
        read_session_file(path)
    with pytest.raises(SessionCorruptError, match="sealed by telethon-firestore-session"):
        read_session(SQLiteSession(str(path)))


# -- the manager --------------------------------------------------------------------------------


async def test_manager_seals_sqlite_sessions(sdir: Path, old: SessionCipher) -> None:
    tg = FakeTelegram()
    tg.add_account("+1 555 0100", user_id=1001, first_name="Alice", username="alice_tg")
    kw: dict[str, Any] = {"api_id": 1, "api_hash": "h", "client_factory": tg.client, "flush_interval": 60.0}
    async with UserSessionManager(BOT, sessions_dir=sdir, cipher=old, encrypt_pii=True, **kw) as m:
        await m.create_user_session("u1")
        assert (await m.begin_login("u1", "+1 555 0100")).status is LoginStatus.CODE_SENT
        assert (await m.complete_login("u1", tg.last_code("+1 555 0100"))).ok
        client = await m.get_user_client("u1")
        assert client is not None
        key = client.session.auth_key.key
    path = path_of(sdir, "u1")
    assert is_sealed(stored_key(path)) and secrets_in(path, auth=key) == []
    assert plaintext_in(path, ["alice_tg", "15550100"]) == []
    assert query(path, f"select count(*) from {SEALED_ENTITIES}")[0][0] >= 1  # noqa: S608 - the user's own entity
    # A restart with the key: logged in, with the same auth key; without it: a clear error.
    async with UserSessionManager(BOT, sessions_dir=sdir, cipher=old, encrypt_pii=True, **kw) as m:
        client = await m.get_user_client("u1")
        assert client is not None and client.session.auth_key.key == key
        assert (await client.get_me()).username == "alice_tg"
    before = on_disk(path)
    async with UserSessionManager(BOT, sessions_dir=sdir, **kw) as m:
        with pytest.raises(SessionDecryptionError, match="no encryption key is configured"):
            await m.get_user_client("u1")
    assert on_disk(path) == before


# -- nothing secret in logs or errors, either backend -------------------------------------------------


@pytest.fixture
def debug_everywhere() -> Iterator[None]:
    """DEBUG on the root logger and on the libraries' own loggers (telethon, google, grpc)."""
    names = ["", "telethon", "google", "google.cloud", "google.api_core", "grpc", "urllib3", "asyncio"]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@pytest.mark.firestore
async def test_no_secret_in_logs_or_errors_on_either_backend(
    opener: Opener,
    sdir: Path,
    firestore_client: Any,
    bot_id: str,
    old: SessionCipher,
    new: SessionCipher,
    caplog: pytest.LogCaptureFixture,
    debug_everywhere: None,
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = [repr(old), repr(new), str(old)]

    def failing(fn: Callable[[], Any], kind: type[Exception] = SessionDecryptionError) -> None:
        with pytest.raises(kind) as info:
            fn()
        texts.extend([str(info.value), repr(info.value), repr(info.value.args)])
        for failure in getattr(info.value, "failures", ()):
            texts.extend([str(failure), repr(failure)])

    # SQLite: plaintext first, sealed on save, PII, lookups, rotation, every failure.
    make(opener, "1", AUTH_A).close()
    s = opener("1", cipher=old, encrypt_pii=True)
    s.process_entities(PEOPLE)
    s.save()
    s.close()
    texts.append(repr(s))
    rotate_sqlite_sessions(sdir, BOT, new, encrypt_pii=True)
    r = opener("1", cipher=new, encrypt_pii=True)
    r.get_input_entity("@alicew")
    r.close()
    make(opener, "2", AUTH_B, cipher=old).close()
    failing(lambda: opener("1"))
    failing(lambda: opener("1", cipher=SessionCipher(bytes(32))))
    failing(lambda: opener("2", cipher=SessionCipher(KEY_NEW)))
    tampered = bytearray(stored_key(path_of(sdir, "2")))
    tampered[-1] ^= 0x80
    write(path_of(sdir, "2"), "update sessions set auth_key = ?", (bytes(tampered),))
    failing(lambda: opener("2", cipher=old))
    failing(lambda: rotate_sqlite_sessions(sdir, BOT, new), SessionRotationError)
    failing(lambda: SessionCipher.from_env({"SESSION_ENCRYPTION_KEY": KEY_OLD[:-4]}), ConfigError)

    # Telethon's own sender on a sealed session's key: a refused local port, so no network.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t = make(opener, "5", AUTH_B, cipher=new)
    t.set_dc(2, "127.0.0.1", port)
    t.save()
    telethon_client = TelegramClient(t, 12345, "0123456789abcdef0123456789abcdef", connection_retries=1, retry_delay=0)
    with pytest.raises(ConnectionError):
        await telethon_client.connect()
    await telethon_client.disconnect()
    # A client on a sealed session through the manager, login included.
    tg = FakeTelegram()
    tg.add_account("+1 555 0100", user_id=1001, first_name="Alice", username="alice_tg")
    kw: dict[str, Any] = {"api_id": 1, "api_hash": "h", "client_factory": tg.client, "flush_interval": 60.0}
    async with UserSessionManager(BOT, sessions_dir=sdir, cipher=new, encrypt_pii=True, **kw) as m:
        await m.begin_login("u9", "+1 555 0100")
        await m.complete_login("u9", tg.last_code("+1 555 0100"))
        client = await m.get_user_client("u9")
        assert client is not None
        manager_key = client.session.auth_key.key

    # Firestore (the emulator): the same paths.
    f = FirestoreSession("1", bot_id=bot_id, client=firestore_client)
    f.set_dc(2, "149.154.167.51", 443)
    f.auth_key = AuthKey(AUTH_A)
    f.save()
    f.close()
    fs = FirestoreSession("1", bot_id=bot_id, client=firestore_client, cipher=old, encrypt_pii=True)
    fs.process_entities(PEOPLE)
    fs.save()
    fs.close()
    texts.append(repr(fs))
    rotate_firestore_sessions(firestore_client, bot_id, new, encrypt_pii=True)
    fr = FirestoreSession("1", bot_id=bot_id, client=firestore_client, cipher=new, encrypt_pii=True)
    fr.get_input_entity("@alicew")
    fr.close()
    failing(lambda: FirestoreSession("1", bot_id=bot_id, client=firestore_client))
    failing(lambda: FirestoreSession("1", bot_id=bot_id, client=firestore_client, cipher=SessionCipher(KEY_OLD)))
    failing(lambda: rotate_firestore_sessions(firestore_client, bot_id, SessionCipher(RAW_OLD)), SessionRotationError)

    names = {rec.name.split(".")[0] for rec in caplog.records}
    assert {"telethon_firestore_session", "telethon", "google"} <= names, names
    assert any(rec.name.startswith("telethon.network") and rec.levelno == logging.DEBUG for rec in caplog.records)
    assert {rec.levelno for rec in caplog.records} >= {logging.DEBUG, logging.INFO, logging.WARNING}
    text = caplog.text + "\n".join(texts) + "\n".join(str(rec.args) for rec in caplog.records)
    secrets = {"key_old": RAW_OLD, "key_new": RAW_NEW, "auth_a": AUTH_A, "auth_b": AUTH_B, "manager": manager_key}
    assert find_leaks(text, secrets, {"key_old": KEY_OLD, "key_new": KEY_NEW}) == []
