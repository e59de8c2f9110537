"""Encryption at rest, what is specific to SQLite files (real files, real SQLite): the side table
and blind indexes in Telethon's columns (indexed lookups, still Telethon's schema), WAL and
rollback journals left as they were, files copied whole, files held by other processes during
rotation, Telethon interop and migration of sealed files, the manager, and no secret in what
Telethon's own sender and the manager log.

Everything both stores must do (sealed auth keys, failures that touch nothing, rotation,
plaintext-to-sealed migration, blind-index lookups, no secret in logs or errors) is the
encryption contract (``telethon_firestore_session.testing.EncryptionContract``), run over
ScopedSQLiteSession in tests/contract."""

from __future__ import annotations

import datetime
import json
import logging
import os
import signal
import socket
import subprocess
import sys
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
    SessionCorruptError,
    SessionDecryptionError,
    SessionInUseError,
    SessionRotationError,
    UserSessionManager,
)
from telethon_firestore_session.crypto import SessionCipher, is_sealed
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
from telethon_firestore_session.testing.cases import AUTH_A, AUTH_B
from telethon_firestore_session.testing.encryption import (
    KEY_NEW,
    KEY_OLD,
    PEOPLE,
    PLAINTEXT,
    RAW_NEW,
    RAW_OLD,
    peer,
    person,
)
from tests.common import BOT, Opener
from tests.contract.storage import SQLiteStorage

from .leaks import assert_absent, find_leaks
from .telegram_double import FakeTelegram

ROOT = Path(__file__).resolve().parent.parent
DATE = datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc)


@pytest.fixture
def files(sdir: Path) -> SQLiteStorage:
    """The encryption contract's view of the files under ``sdir``: paths, raw reads and writes, snapshots."""
    return SQLiteStorage(sdir, bot_id=BOT)


def make(opener: Opener, uid: str = "42", auth: bytes = AUTH_A, **kw: Any) -> ScopedSQLiteSession:
    s = opener(uid, **kw)
    s.set_dc(2, "149.154.167.51", 443)
    s.auth_key = AuthKey(auth)
    s.save()
    return s


def plaintext_in(files: SQLiteStorage, uid: str, values: list[str]) -> list[str]:
    data = files.stored_bytes(uid)
    return [v for v in values if v.encode() in data]


def run_py(code: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT
    )


# -- failures that leave every byte as it was -------------------------------------------------------


def test_wrong_key_leaves_a_rollback_journal_file_untouched(
    opener: Opener, files: SQLiteStorage, old: SessionCipher
) -> None:
    """As a copy or backup tool may leave it: not in WAL mode (opening would switch it)."""
    make(opener, cipher=old).close()
    files.write("42", "pragma journal_mode=delete")
    before = files.snapshot()
    with pytest.raises(SessionDecryptionError, match="not configured"):
        opener(cipher=SessionCipher(KEY_NEW), encrypt_pii=True)  # would switch to WAL and add the side table
    assert files.snapshot() == before
    assert opener(cipher=old).auth_key.key == AUTH_A


def test_session_file_copied_over_another_users_does_not_open(
    opener: Opener, files: SQLiteStorage, old: SessionCipher
) -> None:
    make(opener, "1001", AUTH_A, cipher=old).close()
    path = files.path("1003")
    path.write_bytes(files.path("1001").read_bytes())
    before = files.snapshot()
    with pytest.raises(SessionDecryptionError, match="another session"):
        opener("1003", cipher=old)
    assert files.snapshot() == before


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


@pytest.mark.slow
def test_left_over_wal_is_left_alone_when_opening_fails(
    sdir: Path, old: SessionCipher, opener: Opener, files: SQLiteStorage
) -> None:
    child = run_py(CHILD_CRASH, str(sdir), KEY_OLD)
    assert child.returncode == 0, child.stderr
    before = files.snapshot()
    assert os.path.getsize(f"{files.path('42')}-wal") > 0
    for kw in ({}, {"cipher": SessionCipher(KEY_NEW)}):
        with pytest.raises(SessionDecryptionError):
            opener(**kw)
        assert files.snapshot() == before  # not checkpointed, not deleted
    s = opener(cipher=old)
    assert s.auth_key is not None and s.auth_key.key == bytes(range(256)) and s.dc_id == 4


def test_close_after_a_failed_reopen_writes_nothing(opener: Opener, files: SQLiteStorage, old: SessionCipher) -> None:
    """A session whose file was re-keyed while it was closed refuses it, and its close() writes nothing."""
    s = make(opener, cipher=old, close_timeout=0.3)
    s.process_entities(PEOPLE)
    s.close()
    stranger = SessionCipher(bytes(range(50, 82)))
    files.replace_auth_key("42", stranger.seal(AUTH_B, where=f"{BOT}/42", field="auth_key"))
    before = files.snapshot()
    with pytest.raises(ValueError, match="Could not find"):
        s.get_input_entity("@nobody")  # opening the file again fails: a miss, logged
    s.process_entities([person(504, "dave", None, "Dave")])
    try:
        s.close()  # the writer cannot open the file either: nothing is written (it keeps retrying)
        assert files.snapshot() == before
    finally:
        BackgroundWriter.get().discard(s._sqlite)


# -- turning encryption on, and rotation ---------------------------------------------------------


def test_plaintext_telethon_file_is_sealed_on_next_save(
    opener: Opener, files: SQLiteStorage, old: SessionCipher
) -> None:
    path = files.path("42")
    path.parent.mkdir(parents=True)
    plain = SQLiteSession(str(path))  # Telethon's own file, written before encryption was turned on
    plain.set_dc(2, "149.154.167.51", 443)
    plain.auth_key = AuthKey(AUTH_A)
    plain.process_entities(PEOPLE)
    plain.save()
    plain.close()

    s = opener(cipher=old)
    assert s.auth_key is not None and s.auth_key.key == AUTH_A
    assert s._sqlite._conn().execute("pragma secure_delete").fetchone() == (1,)  # whatever SQLite's build default
    assert s.get_input_entity("@alicew") == peer(501)  # Telethon's plaintext rows are found
    s.save()
    assert is_sealed(files.stored_auth_key("42"))
    # The plaintext key left the disk at once (zeroed, checkpointed), not at the next checkpoint.
    assert_absent(files.stored_bytes("42"), auth_key=AUTH_A)


def test_rotation_closes_the_files_and_is_not_activity(
    opener: Opener, files: SQLiteStorage, sdir: Path, old: SessionCipher, new: SessionCipher
) -> None:
    s = make(opener, "3", AUTH_B, cipher=old, encrypt_pii=True)
    s.process_entities(PEOPLE)
    s.close()
    make(opener, "4", AUTH_A).close()
    metadata = json.loads((sdir / BOT / METADATA_FILE).read_text())
    assert rotate_sqlite_sessions(sdir, BOT, new) == 2
    for uid in ("3", "4"):
        assert not Path(f"{files.path(uid)}-wal").exists()  # closed again
    assert json.loads((sdir / BOT / METADATA_FILE).read_text()) == metadata  # metadata.json is left alone
    # The re-sealed fields' blind indexes are in Telethon's own columns.
    [(username,)] = files.query("3", "select username from entities where id = 501")
    assert username == BLIND_INDEX_PREFIX + new.blind_index("alicew", where=f"{BOT}/3", field="username")


CHILD_HOLD = """
import sys
from telethon_firestore_session.crypto import SessionCipher
from telethon_firestore_session.sqlite import ScopedSQLiteSession
s = ScopedSQLiteSession(sys.argv[2], bot_id="bot1", sessions_dir=sys.argv[1], cipher=SessionCipher(sys.argv[3]))
print("OPEN", flush=True)
sys.stdin.readline()
s.close()
"""


@pytest.mark.slow
def test_rotate_skips_and_reports_sessions_held_elsewhere(
    opener: Opener, sdir: Path, files: SQLiteStorage, old: SessionCipher, new: SessionCipher
) -> None:
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
        before = files.snapshot("2", "3")
        with pytest.raises(SessionRotationError) as info:
            rotate_sqlite_sessions(sdir, BOT, new)
        assert files.snapshot("2", "3") == before
    finally:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("\n")
        child.stdin.close()
        child.wait(30)
        child.stdout.close()
    err = info.value
    assert err.rotated == 1
    assert [type(f) for f in err.failures] == [SessionInUseError, SessionInUseError]
    assert err.__cause__ is err.failures[0]
    text = str(err)
    for uid in ("2", "3"):
        assert f"user_{uid}.session" in text
    assert "another process" in text and "another session object in this process" in text
    assert new.sealed_with(files.stored_auth_key("4")) == new.key_id
    # Once the other holders are gone, running it again finishes the job.
    held_here.close()
    assert rotate_sqlite_sessions(sdir, BOT, new) == 2


@pytest.mark.slow
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


# -- the side table and blind indexes in Telethon's columns -----------------------------------------


def _lookup_plans(s: ScopedSQLiteSession, files: SQLiteStorage, key: str) -> list[str]:
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
            plans += [row[3] for row in files.query("42", f"explain query plan {stmt}")]
    return plans


def test_sealed_fields_live_in_a_side_table_and_are_found_with_indexed_queries(
    opener: Opener, files: SQLiteStorage, old: SessionCipher
) -> None:
    s = make(opener, cipher=old, encrypt_pii=True)
    s.process_entities(PEOPLE)
    assert s.flush(10)
    path = files.path("42")
    assert Path(f"{path}-wal").stat().st_size > 0  # written, not yet checkpointed: the -wal is checked too
    assert plaintext_in(files, "42", PLAINTEXT) == []
    s.close()
    [alice] = files.query("42", "select username, phone, name from entities where id = 501")
    assert alice[0] == BLIND_INDEX_PREFIX + old.blind_index("alicew", where=f"{BOT}/42", field="username")
    assert alice[1] == BLIND_INDEX_PREFIX + old.blind_index("15550001111", where=f"{BOT}/42", field="phone")
    sealed = files.query("42", f"select username, phone, name from {SEALED_ENTITIES} where id = 501")  # noqa: S608
    assert all(is_sealed(v) for v in sealed[0])
    # Still a valid Telethon schema-8 file: Telethon's own insert works on it.
    columns = [r[1] for r in files.query("42", "pragma table_info(entities)")]
    assert columns == ["id", "hash", "username", "phone", "name", "date"]
    assert files.query("42", "select version from version") == [(8,)]

    fresh = opener(cipher=old, encrypt_pii=True)
    for key in ("@AliceW", "+44 7700 900123", "Carol Kings"):  # one per entity: each asks the file
        plans = _lookup_plans(fresh, files, key)
        assert plans and not [p for p in plans if p.startswith("SCAN")], plans
        assert any("USING INDEX tfs_entities_" in p or "USING COVERING INDEX tfs_entities_" in p for p in plans)


def test_no_side_table_without_encrypt_pii(opener: Opener, files: SQLiteStorage, old: SessionCipher) -> None:
    s = make(opener, cipher=old)
    s.process_entities(PEOPLE)
    s.close()
    assert files.query("42", "select name from sqlite_master where name = ?", (SEALED_ENTITIES,)) == []


def test_directory_with_encrypt_pii_needs_a_cipher(sdir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        SQLiteDirectory(sdir, BOT, encrypt_pii=True)
    assert info.value.variable == "encrypt_pii"
    assert not sdir.exists()


# -- Telethon interop ---------------------------------------------------------------------------


def test_plain_telethon_opens_a_sealed_file_but_gets_no_usable_key(
    opener: Opener, files: SQLiteStorage, old: SessionCipher
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
    path = files.path("42")
    sealed = files.stored_auth_key("42")

    plain = SQLiteSession(str(path))
    assert plain.auth_key is not None and plain.auth_key.key == sealed and plain.auth_key.key != AUTH_A
    assert plain.get_input_entity(501) == peer(501)
    with pytest.raises(ValueError, match="Could not find"):
        plain.get_input_entity("alicew")
    plain.process_entities([person(502, "bob_plain", "447700900123", "Bob")])  # Telethon writes plaintext
    plain.save()
    plain.close()
    assert files.stored_auth_key("42") == sealed

    again = opener(cipher=old, encrypt_pii=True)
    assert again.auth_key is not None and again.auth_key.key == AUTH_A
    assert again.get_input_entity("bob_plain") == peer(502)
    assert again.get_input_entity("alicew") == peer(501)
    assert {r.id: r.username for r in again.iter_entities()} == {501: "alicew", 502: "bob_plain", 503: None}
    # Our next write of that row seals it again and drops the stale sealed values.
    again.process_entities([person(502, "bob_sealed", "447700900123", "Bob")])
    assert again.flush(10)
    again.close()
    assert plaintext_in(files, "42", ["bob_plain", "bob_sealed"]) == []


# -- migration through sealed sessions -----------------------------------------------------------


def test_migrate_round_trips_through_a_sealed_session(
    opener: Opener, sdir: Path, files: SQLiteStorage, tmp_path: Path, old: SessionCipher
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
    assert plaintext_in(files, "77", PLAINTEXT) == []
    assert_absent(files.stored_bytes("77"), auth_key=AUTH_A)
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
    assert out.get_input_entity("alicew") == peer(501)
    out.close()
    sealed.close()
    # The file itself is refused by the readers that would copy envelopes and blind indexes.
    with pytest.raises(SessionCorruptError, match="sealed by telethon-firestore-session"):
        read_session_file(files.path("77"))
    with pytest.raises(SessionCorruptError, match="sealed by telethon-firestore-session"):
        read_session(SQLiteSession(str(files.path("77"))))


# -- the manager --------------------------------------------------------------------------------


async def test_manager_seals_sqlite_sessions(sdir: Path, files: SQLiteStorage, old: SessionCipher) -> None:
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
    assert is_sealed(files.stored_auth_key("u1"))
    assert_absent(files.stored_bytes("u1"), auth=key)
    assert plaintext_in(files, "u1", ["alice_tg", "15550100"]) == []
    assert files.query("u1", f"select count(*) from {SEALED_ENTITIES}")[0][0] >= 1  # noqa: S608 - the user's own entity
    # A restart with the key: logged in, with the same auth key; without it: a clear error.
    async with UserSessionManager(BOT, sessions_dir=sdir, cipher=old, encrypt_pii=True, **kw) as m:
        client = await m.get_user_client("u1")
        assert client is not None and client.session.auth_key.key == key
        assert (await client.get_me()).username == "alice_tg"
    before = files.snapshot("u1")
    async with UserSessionManager(BOT, sessions_dir=sdir, **kw) as m:
        with pytest.raises(SessionDecryptionError, match="no encryption key is configured"):
            await m.get_user_client("u1")
    assert files.snapshot("u1") == before


# -- nothing secret in what Telethon and the manager log ------------------------------------------


async def test_no_secret_in_telethon_or_manager_logs(
    opener: Opener, sdir: Path, new: SessionCipher, caplog: pytest.LogCaptureFixture, debug_everywhere: None
) -> None:
    """Telethon's own sender on a sealed session's key, and a login through the manager (the store's own
    paths, on both backends, are the encryption contract's ``test_no_secret_in_logs_or_errors``)."""
    caplog.set_level(logging.DEBUG)
    with socket.socket() as sock:  # a refused local port, so no network
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t = make(opener, "5", AUTH_B, cipher=new)
    t.set_dc(2, "127.0.0.1", port)
    t.save()
    telethon_client = TelegramClient(t, 12345, "0123456789abcdef0123456789abcdef", connection_retries=1, retry_delay=0)
    with pytest.raises(ConnectionError):
        await telethon_client.connect()
    await telethon_client.disconnect()
    tg = FakeTelegram()
    tg.add_account("+1 555 0100", user_id=1001, first_name="Alice", username="alice_tg")
    kw: dict[str, Any] = {"api_id": 1, "api_hash": "h", "client_factory": tg.client, "flush_interval": 60.0}
    async with UserSessionManager(BOT, sessions_dir=sdir, cipher=new, encrypt_pii=True, **kw) as m:
        await m.begin_login("u9", "+1 555 0100")
        await m.complete_login("u9", tg.last_code("+1 555 0100"))
        client = await m.get_user_client("u9")
        assert client is not None
        manager_key = client.session.auth_key.key

    assert any(rec.name.startswith("telethon.network") and rec.levelno == logging.DEBUG for rec in caplog.records)
    assert any(rec.name.startswith("telethon_firestore_session") for rec in caplog.records)
    text = caplog.text + "\n".join(str(rec.args) for rec in caplog.records) + repr(t)
    secrets = {"key_old": RAW_OLD, "key_new": RAW_NEW, "auth_b": AUTH_B, "manager": manager_key}
    assert find_leaks(text, secrets, {"key_old": KEY_OLD, "key_new": KEY_NEW}) == []
