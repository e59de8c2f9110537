"""Migration: copy_session between every kind of session, importers and exporters.

Sources are real: files written by Telethon's own SQLiteSession, strings produced by
StringSession.save(), and seed-format documents (base64 ``session_data``) in the
real Firestore emulator. Every round trip is compared field by field.
"""

from __future__ import annotations

import base64
import datetime
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from telethon.crypto import AuthKey
from telethon.sessions import MemorySession, SQLiteSession, StringSession
from telethon.tl import types

from telethon_firestore_session import FirestoreSession, SessionCorruptError, SessionDecryptionError
from telethon_firestore_session.core import SessionCore
from telethon_firestore_session.crypto import SessionCipher, generate_key, is_sealed
from telethon_firestore_session.migrate import (
    COPIED,
    FAILED,
    LEGACY_BACKUP_FIELD,
    LEGACY_FIELD,
    MERGED,
    REPLACED,
    SKIPPED,
    UNCHANGED,
    FirestoreDestination,
    SessionSnapshot,
    auth_key_fingerprint,
    copy_session,
    decode_legacy_session_data,
    export_session_file,
    export_string_session,
    import_legacy_documents,
    import_session_files,
    import_string_session,
    read_session,
    read_session_file,
    read_string_session,
    user_id_from_filename,
)
from telethon_firestore_session.sqlite import ScopedSQLiteSession
from tests.emulator import Emulator
from tests.leaks import assert_absent

UTC = datetime.timezone.utc
DATE = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def key_for(n: int) -> bytes:
    return bytes((n + i) % 256 for i in range(256))


def history(seed: int = 0) -> list[Any]:
    """Real TL results, as Telethon hands them to process_entities."""
    base = 1000 + seed * 100
    return [
        types.contacts.ResolvedPeer(
            types.PeerUser(base),
            [types.Channel(base + 1, "News", types.ChatPhotoEmpty(), None, access_hash=base * 3, username="News")],
            [
                types.User(
                    base, access_hash=base * 7, username="Alice", phone="15550001", first_name="Al", last_name="Ice"
                ),
                types.User(base + 2, access_hash=base * 11, first_name="Bob"),
            ],
        ),
        [types.Chat(base + 3, "Group", types.ChatPhotoEmpty(), 3, None, 1)],
        # The client's own user: entity id 0, access hash = its user id.
        types.contacts.ResolvedPeer(types.PeerUser(0), [], [types.User(0, access_hash=base + 99)]),
    ]


def populate(s: Any, seed: int = 0, *, dc: int = 2) -> None:
    s.set_dc(dc, "149.154.167.51", 443)
    s.auth_key = AuthKey(key_for(seed))
    s.takeout_id = 4242 + seed
    for tlo in history(seed):
        s.process_entities(tlo)
    s.set_update_state(0, types.updates.State(100 + seed, 7, DATE, 30, 0))
    s.set_update_state(1500 + seed, types.updates.State(55, 0, DATE, 0, 0))
    s.cache_file(b"\x01" * 16, 2048, types.InputDocument(501, 601, b""))
    s.cache_file(b"\x02" * 16, 4096, types.InputPhoto(502, 602, b""))
    s.save()


def summary(snap: SessionSnapshot) -> tuple[Any, ...]:
    return (
        snap.dc_id,
        snap.server_address,
        snap.port,
        snap.auth_key,
        snap.takeout_id,
        {k: (s.pts, s.qts, int(s.date.timestamp()), s.seq) for k, s in snap.update_states.items()},
        {r.id: (r.hash, r.username, r.phone, r.name) for r in snap.entities},
        dict(snap.files),
    )


def telethon_file(path: Path, seed: int = 0) -> Path:
    """A .session file written by Telethon's own SQLiteSession."""
    s = SQLiteSession(str(path))
    populate(s, seed)
    s.close()
    return Path(s.filename)


def expected(seed: int = 0) -> tuple[Any, ...]:
    s = MemorySession()
    populate(s, seed)
    return summary(read_session(s))


# -- session kinds -----------------------------------------------------------------------


class Kinds:
    """Opens sessions of each kind; closes what it opened."""

    def __init__(self, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        self.request = request
        self.tmp_path = tmp_path
        self.opened: list[Any] = []
        self.n = 0

    def open(self, kind: str, name: str | None = None) -> Any:
        self.n += 1
        name = name or f"s{self.n}"
        if kind == "memory":
            s: Any = MemorySession()
        elif kind == "core":
            s = SessionCore()
        elif kind == "sqlite":
            s = SQLiteSession(str(self.tmp_path / name))
        elif kind == "firestore":
            client = self.request.getfixturevalue("firestore_client")
            s = FirestoreSession(name, bot_id=self.request.getfixturevalue("bot_id"), client=client)
        elif kind == "local":
            s = ScopedSQLiteSession(name, bot_id="bot", sessions_dir=self.tmp_path / "sessions")
        else:
            raise AssertionError(kind)
        self.opened.append(s)
        return s

    def reopen(self, kind: str, s: Any) -> Any:
        """A fresh object on the same storage, to prove the copy was durable."""
        if kind == "sqlite":
            s.close()
            again: Any = SQLiteSession(s.filename)
        elif kind == "firestore":
            s.close()
            again = FirestoreSession(s.user_id, bot_id=s.bot_id, client=s.store.client)
        elif kind == "local":
            s.close()
            again = ScopedSQLiteSession(s.user_id, bot_id=s.bot_id, sessions_dir=self.tmp_path / "sessions")
        else:
            return s
        self.opened.append(again)
        return again

    def close(self) -> None:
        for s in self.opened:
            s.close()


@pytest.fixture
def kinds(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Kinds]:
    k = Kinds(request, tmp_path)
    try:
        yield k
    finally:
        k.close()


KINDS = ["memory", "core", "sqlite", "local", "firestore"]


@pytest.mark.parametrize("dst_kind", KINDS)
@pytest.mark.parametrize("src_kind", KINDS)
def test_copy_session_round_trip_field_by_field(kinds: Kinds, src_kind: str, dst_kind: str) -> None:
    src = kinds.open(src_kind)
    populate(src)
    if src_kind in ("firestore", "local"):
        src.flush()
        src = kinds.reopen(src_kind, src)  # read back from the store, not from memory
    dst = kinds.open(dst_kind)
    report = copy_session(src, dst)
    assert report.status == COPIED
    assert (report.entities, report.update_states, report.files) == (5, 2, 2)
    assert report.fingerprint == auth_key_fingerprint(key_for(0))
    dst = kinds.reopen(dst_kind, dst)
    assert summary(read_session(dst)) == expected()
    # Telethon's own lookups agree on the destination.
    assert dst.get_input_entity("@alice") == types.InputPeerUser(1000, 7000)
    assert dst.get_input_entity("+1 555 0001") == types.InputPeerUser(1000, 7000)
    assert dst.get_input_entity(-1000000001001) == types.InputPeerChannel(1001, 3000)
    assert dst.get_input_entity("Group") == types.InputPeerChat(1003)
    # Copying again writes nothing.
    assert copy_session(src, dst).status == UNCHANGED


def test_copy_is_idempotent_and_never_clobbers(kinds: Kinds) -> None:
    src = kinds.open("firestore", "src")
    populate(src)
    dst = kinds.open("firestore", "dst")
    populate(dst, seed=1)  # another login
    before = summary(read_session(dst))
    report = copy_session(src, dst)
    assert report.status == SKIPPED
    assert "different login" in report.reason and auth_key_fingerprint(key_for(1)) in (report.reason or "")
    assert summary(read_session(kinds.reopen("firestore", dst))) == before

    dst = kinds.open("firestore", "dst")
    report = copy_session(src, dst, overwrite=True)
    assert report.status == REPLACED
    dst = kinds.reopen("firestore", dst)
    # Nothing of the other login survives: its entities had other access hashes.
    assert summary(read_session(dst)) == expected()
    assert copy_session(src, dst).status == UNCHANGED


@pytest.mark.parametrize("dst_kind", KINDS)
def test_overwrite_replaces_every_kind_of_destination(kinds: Kinds, dst_kind: str) -> None:
    dst = kinds.open(dst_kind)
    populate(dst, seed=1)
    dst.process_entities([types.User(77, access_hash=78, username="only_in_seed_1")])
    dst.set_update_state(1501, types.updates.State(1, 1, DATE, 1, 0))
    dst.save()
    src = MemorySession()
    populate(src, seed=2)
    report = copy_session(src, dst, overwrite=True)
    assert report.status == REPLACED and (report.entities, report.update_states, report.files) == (5, 2, 2)
    again = kinds.reopen(dst_kind, dst)
    assert summary(read_session(again)) == expected(2)  # nothing of the other login survives
    assert again.get_input_entity("@alice") == types.InputPeerUser(1200, 1200 * 7)
    assert copy_session(src, again).status == UNCHANGED


def test_reset_starts_a_deleted_session_afresh_on_its_store(tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    s = ScopedSQLiteSession("1", bot_id="bot", sessions_dir=sessions)
    populate(s, seed=1)
    s.flush()
    s.delete()
    s.reset()
    assert (s.dc_id, s.auth_key, s.takeout_id, s.get_update_states()) == (0, None, None, [])
    assert list(s.iter_entities()) == [] and list(s.iter_files()) == []
    with pytest.raises(ValueError, match="Could not find input entity"):
        s.get_input_entity("@alice")
    populate(s, seed=2)  # usable again: the new records reach the same file
    s.close()
    again = ScopedSQLiteSession("1", bot_id="bot", sessions_dir=sessions)
    try:
        assert again.path == s.path and summary(read_session(again)) == expected(2)
    finally:
        again.close()
    unbound = SessionCore()
    populate(unbound)
    unbound.delete()
    unbound.reset()
    assert unbound.auth_key is None and list(unbound.iter_entities()) == []


def test_same_login_merges_without_replacing_newer_records(kinds: Kinds) -> None:
    src = kinds.open("sqlite")
    populate(src)
    dst = kinds.open("firestore")
    copy_session(src, dst)
    # The destination moves on: a newer update state, a changed username, a new user.
    dst.set_update_state(0, types.updates.State(900, 8, DATE, 31, 0))
    dst.process_entities([types.User(1000, access_hash=7000, username="alice_new", phone="15550001", first_name="Al")])
    dst.process_entities([types.User(5, access_hash=55, username="carol")])
    dst.takeout_id = None
    dst.save()
    # The source learns something too.
    src.process_entities([types.User(6, access_hash=66, username="dave")])
    src.cache_file(b"\x03" * 16, 1, types.InputDocument(503, 603, b""))
    src.save()
    report = copy_session(src, dst)
    assert report.status == MERGED
    assert (report.entities, report.update_states, report.files) == (1, 0, 1)
    assert report.header_written  # the destination's missing takeout id came from the source
    dst = kinds.reopen("firestore", dst)
    got = read_session(dst)
    rows = {r.id: r for r in got.entities}
    assert rows[1000].username == "alice_new"  # newer in the destination: kept
    assert rows[5].username == "carol" and rows[6].username == "dave"
    assert got.update_states[0].pts == 900
    assert got.takeout_id == 4242
    assert (b"\x03" * 16, 1, 0) in got.files


def test_source_without_auth_key_is_skipped(kinds: Kinds) -> None:
    dst = kinds.open("memory")
    report = copy_session(MemorySession(), dst)
    assert report.status == SKIPPED and "no auth key" in report.reason
    assert dst.auth_key is None


# -- files ---------------------------------------------------------------------------------


def test_read_session_file_reads_telethon_files_without_touching_them(tmp_path: Path) -> None:
    path = telethon_file(tmp_path / "user_7")
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    snap = read_session_file(path)
    assert summary(snap) == expected()
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user_7.session"]
    # Telethon itself agrees.
    s = SQLiteSession(str(path))
    try:
        assert s.get_input_entity("news") == types.InputPeerChannel(1001, 3000)
    finally:
        s.close()


def test_read_session_file_handles_older_schema_versions(tmp_path: Path) -> None:
    path = telethon_file(tmp_path / "old")
    with sqlite3.connect(path) as conn:  # as Telethon 1.x wrote it at schema version 7
        conn.execute("alter table sessions drop column tmp_auth_key")
        conn.execute("update version set version = 7")
    conn.close()
    assert summary(read_session_file(path)) == expected()
    with sqlite3.connect(path) as conn:  # version 5: Telethon drops the entities on upgrade
        conn.execute("alter table entities drop column date")
        conn.execute("update version set version = 5")
    conn.close()
    snap = read_session_file(path)
    assert snap.entities == [] and snap.auth_key == key_for(0) and snap.takeout_id == 4242


def test_read_session_file_rejects_what_is_not_a_session(tmp_path: Path) -> None:
    junk = tmp_path / "junk.session"
    junk.write_bytes(b"not a database at all" * 10)
    with pytest.raises(SessionCorruptError, match="not an SQLite database"):
        read_session_file(junk)
    other = tmp_path / "other.session"
    with sqlite3.connect(other) as conn:
        conn.execute("create table t (x)")
    conn.close()
    with pytest.raises(SessionCorruptError, match="no sessions table"):
        read_session_file(other)
    with pytest.raises(FileNotFoundError):
        read_session_file(tmp_path / "missing.session")
    assert not (tmp_path / "missing.session").exists()


def test_export_session_file_is_private_and_opens_in_telethon(tmp_path: Path) -> None:
    src = MemorySession()
    populate(src)
    path, report = export_session_file(src, tmp_path / "out")
    assert path == tmp_path / "out.session" and report.status == COPIED
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    s = SQLiteSession(str(path))
    try:
        assert summary(read_session(s)) == expected()
        assert s.get_input_entity("@alice") == types.InputPeerUser(1000, 7000)
        assert s.takeout_id == 4242
    finally:
        s.close()
    # Again: nothing changes. Into another login's file: refused unless asked.
    assert export_session_file(src, path)[1].status == UNCHANGED
    other = MemorySession()
    populate(other, seed=3)
    assert export_session_file(other, path)[1].status == SKIPPED
    assert read_session_file(path).auth_key == key_for(0)
    assert export_session_file(other, path, overwrite=True)[1].status == REPLACED
    assert summary(read_session_file(path)) == expected(3)
    junk = tmp_path / "junk.session"
    junk.write_bytes(b"x" * 100)
    with pytest.raises(SessionCorruptError):
        export_session_file(src, junk)
    assert junk.read_bytes() == b"x" * 100


# -- string sessions -------------------------------------------------------------------------


def test_string_session_round_trip(firestore_client: Any, bot_id: str) -> None:
    src = StringSession()
    src.set_dc(4, "149.154.167.91", 443)
    src.auth_key = AuthKey(key_for(9))
    string = src.save()
    snap = read_string_session(string)
    assert (snap.dc_id, snap.server_address, snap.port, snap.auth_key) == (4, "149.154.167.91", 443, key_for(9))

    dest = FirestoreDestination(firestore_client, bot_id)
    report = import_string_session(string, "77", dest)
    assert report.counts() == {COPIED: 1}
    s = FirestoreSession("77", bot_id=bot_id, client=firestore_client)
    try:
        assert (s.dc_id, s.server_address, s.port, s.auth_key.key) == (4, "149.154.167.91", 443, key_for(9))
        assert export_string_session(s) == string
    finally:
        s.close()
    assert import_string_session(string, "77", FirestoreDestination(firestore_client, bot_id)).counts() == {
        UNCHANGED: 1
    }
    # IPv6 addresses survive too.
    v6 = StringSession()
    v6.set_dc(2, "2001:67c:4e8:f002::a", 443)
    v6.auth_key = AuthKey(key_for(10))
    assert export_string_session(read_string_session(v6.save())) == v6.save()


@pytest.mark.parametrize("bad", ["", "2abc", "1" + "A" * 40, "not base64 !!"])
def test_bad_string_sessions_are_rejected(bad: str) -> None:
    if bad == "":
        assert read_string_session(bad).auth_key is None
        with pytest.raises(ValueError, match="no auth key"):
            export_string_session(read_string_session(bad))
        return
    with pytest.raises(SessionCorruptError, match="StringSession"):
        read_string_session(bad)


# -- bulk imports ---------------------------------------------------------------------------


def count(query: Any) -> int:
    return int(query.count().get()[0][0].value)


def test_directory_import_interrupted_by_a_corrupt_file_then_rerun(
    tmp_path: Path, firestore_client: Any, bot_id: str
) -> None:
    for i in range(5):
        telethon_file(tmp_path / f"user_{i}", seed=i)
    good = (tmp_path / "user_3.session").read_bytes()
    (tmp_path / "user_3.session").write_bytes(good[:100])  # truncated mid-copy
    (tmp_path / "notes.txt").write_text("ignored")
    seen: list[tuple[int, int | None, str]] = []
    report = import_session_files(
        tmp_path, FirestoreDestination(firestore_client, bot_id), progress=lambda d, t, i: seen.append((d, t, i.status))
    )
    assert report.counts() == {COPIED: 4, FAILED: 1}
    failed = report.failed[0]
    assert failed.user_id == "3" and "user_3.session" in failed.source
    assert [d for d, _, _ in seen] == [1, 2, 3, 4, 5] and {t for _, t, _ in seen} == {5}
    sessions = firestore_client.collection("bots").document(bot_id).collection("user_sessions")
    assert count(sessions) == 4

    (tmp_path / "user_3.session").write_bytes(good)  # fixed
    report = import_session_files(tmp_path, FirestoreDestination(firestore_client, bot_id))
    assert report.counts() == {UNCHANGED: 4, COPIED: 1}
    assert report.ok
    assert count(sessions) == 5
    assert count(firestore_client.collection_group("entities")) == 5 * 5  # no duplicates
    for i in range(5):
        s = FirestoreSession(str(i), bot_id=bot_id, client=firestore_client)
        try:
            assert summary(read_session(s)) == expected(i)
        finally:
            s.close()


@pytest.mark.slow
def test_bulk_import_batches_writes_across_sessions(tmp_path: Path, firestore_client: Any, bot_id: str) -> None:
    n, per = 60, 20
    for i in range(n):
        s = SQLiteSession(str(tmp_path / f"user_{i}"))
        s.set_dc(2, "149.154.167.51", 443)
        s.auth_key = AuthKey(key_for(i))
        s.process_entities([types.User(10_000 + j, access_hash=j + 1, first_name=f"U{j}") for j in range(per)])
        s.close()
    dest = FirestoreDestination(firestore_client, bot_id)
    most_pending = 0

    def progress(done: int, total: int | None, item: Any) -> None:
        nonlocal most_pending
        most_pending = max(most_pending, dest.pending_writes)

    report = import_session_files(tmp_path, dest, progress=progress)
    assert report.ok and report.counts() == {COPIED: n}
    writes = n * (1 + per)  # one session document and its entities each
    assert report.writes == writes
    assert report.commits == -(-writes // 500)  # 1260 writes -> 3 commits
    assert report.reads == n  # one read of each session document
    assert most_pending < 500 + 1 + per  # one batch plus one session, never more
    assert count(firestore_client.collection_group("entities")) == n * per


def test_failed_commit_is_reported_and_a_rerun_completes_it(
    tmp_path: Path, paused: Emulator, firestore_client: Any, bot_id: str
) -> None:
    for i in range(6):
        s = SQLiteSession(str(tmp_path / f"user_{i}"))
        s.set_dc(2, "149.154.167.51", 443)
        s.auth_key = AuthKey(key_for(i))
        s.close()
    from telethon_firestore_session.firestore import FirestoreStore

    opened = 0

    def store_factory(key: Any) -> FirestoreStore:
        nonlocal opened
        opened += 1
        if opened == 6:
            paused.pause()  # Firestore stops answering with session 5 still in the batch
        return FirestoreStore(key, firestore_client, rpc_timeout=1.0)

    dest = FirestoreDestination(firestore_client, bot_id, batch_size=4, rpc_timeout=1.0, store_factory=store_factory)
    try:
        report = import_session_files(tmp_path, dest)
    finally:
        paused.resume()
    assert report.counts() == {COPIED: 4, FAILED: 2}, report.as_dict()
    reasons = {i.user_id: i.reason for i in report.failed}
    assert "commit failed" in reasons["4"]
    assert "SessionStoreError" in reasons["5"]
    assert report.commits == 1 and report.writes == 4

    # Session 5 was never written. Session 4's commit timed out, which does not undo it: the emulator,
    # running again, may still apply the request it had received. The rerun copies what is missing.
    again = import_session_files(tmp_path, FirestoreDestination(firestore_client, bot_id))
    statuses = {item.user_id: item.status for item in again.items}
    assert statuses.pop("4") in (UNCHANGED, COPIED)
    assert statuses == {"0": UNCHANGED, "1": UNCHANGED, "2": UNCHANGED, "3": UNCHANGED, "5": COPIED}
    sessions = firestore_client.collection("bots").document(bot_id).collection("user_sessions")
    assert count(sessions) == 6


def test_user_ids_come_from_file_names(tmp_path: Path, firestore_client: Any, bot_id: str) -> None:
    assert user_id_from_filename("sessions/b/user_123.session") == "123"
    assert user_id_from_filename("alice.session") == "alice"
    assert user_id_from_filename("user_.session") == "user_"
    telethon_file(tmp_path / "bad..name")
    telethon_file(tmp_path / "user_1")
    report = import_session_files(tmp_path, FirestoreDestination(firestore_client, bot_id))
    assert report.counts() == {COPIED: 1, FAILED: 1}
    assert "InvalidSessionIdError" in report.failed[0].reason
    one = import_session_files(
        tmp_path / "user_1.session", FirestoreDestination(firestore_client, bot_id), user_id="renamed"
    )
    assert one.counts() == {COPIED: 1} and one.items[0].user_id == "renamed"


# -- the original system's Firestore documents ------------------------------------------------


def seed_doc(client: Any, bot_id: str, uid: str, session_data: str) -> Any:
    doc = client.document(f"bots/{bot_id}/user_sessions/{uid}")
    doc.set({LEGACY_FIELD: session_data})
    return doc


def test_legacy_documents_are_converted_in_place(tmp_path: Path, firestore_client: Any, bot_id: str) -> None:
    encoded = {}
    for i in range(3):
        encoded[str(100 + i)] = base64.b64encode(telethon_file(tmp_path / f"user_{i}", seed=i).read_bytes()).decode()
        seed_doc(firestore_client, bot_id, str(100 + i), encoded[str(100 + i)])
    string_session = StringSession()
    string_session.set_dc(1, "149.154.175.53", 443)
    string_session.auth_key = AuthKey(key_for(20))
    seed_doc(firestore_client, bot_id, "200", string_session.save())
    seed_doc(firestore_client, bot_id, "300", "bm90IGEgc2Vzc2lvbg==")  # base64 of "not a session"
    firestore_client.document(f"bots/{bot_id}/users/100").set({"config": 1})  # the app's own data

    # Before the import, our session refuses the original layout, and says what to do.
    with pytest.raises(SessionCorruptError, match="import"):
        FirestoreSession("100", bot_id=bot_id, client=firestore_client)

    report = import_legacy_documents(firestore_client, bot_id, page_size=2)
    assert report.counts() == {COPIED: 4, FAILED: 1}
    assert report.failed[0].user_id == "300"
    bad = firestore_client.document(f"bots/{bot_id}/user_sessions/300").get().to_dict()
    assert bad == {LEGACY_FIELD: "bm90IGEgc2Vzc2lvbg=="}  # untouched

    for i in range(3):
        uid = str(100 + i)
        raw = firestore_client.document(f"bots/{bot_id}/user_sessions/{uid}").get().to_dict()
        assert LEGACY_FIELD not in raw
        assert raw[LEGACY_BACKUP_FIELD] == encoded[uid]
        assert raw["schema_version"] == 1
        s = FirestoreSession(uid, bot_id=bot_id, client=firestore_client)
        try:
            assert summary(read_session(s)) == expected(i)
        finally:
            s.close()
    s = FirestoreSession("200", bot_id=bot_id, client=firestore_client)
    try:
        assert (s.dc_id, s.auth_key.key) == (1, key_for(20))
    finally:
        s.close()
    assert firestore_client.document(f"bots/{bot_id}/users/100").get().to_dict() == {"config": 1}

    again = import_legacy_documents(firestore_client, bot_id)
    assert again.counts() == {FAILED: 1}  # only the broken one is left to do
    assert count(firestore_client.collection_group("entities")) == 3 * 5


def test_legacy_document_rewritten_by_the_old_system_is_merged(
    tmp_path: Path, firestore_client: Any, bot_id: str
) -> None:
    data = base64.b64encode(telethon_file(tmp_path / "a", seed=0).read_bytes()).decode()
    seed_doc(firestore_client, bot_id, "1", data)
    import_legacy_documents(firestore_client, bot_id, user_ids=["1"], keep_backup=False)
    doc = firestore_client.document(f"bots/{bot_id}/user_sessions/1")
    assert LEGACY_BACKUP_FIELD not in doc.get().to_dict()
    # The old system, still running somewhere, writes its field again with the same login.
    doc.update({LEGACY_FIELD: data})
    report = import_legacy_documents(firestore_client, bot_id, user_ids=["1", "missing"])
    assert report.counts() == {UNCHANGED: 1}
    raw = doc.get().to_dict()
    assert LEGACY_FIELD not in raw and raw[LEGACY_BACKUP_FIELD] == data
    # ... or with another login: left alone unless asked.
    other = base64.b64encode(telethon_file(tmp_path / "b", seed=5).read_bytes()).decode()
    doc.update({LEGACY_FIELD: other})
    report = import_legacy_documents(firestore_client, bot_id)
    assert report.counts() == {SKIPPED: 1}
    assert doc.get().to_dict()[LEGACY_FIELD] == other
    report = import_legacy_documents(firestore_client, bot_id, overwrite=True)
    assert report.counts() == {REPLACED: 1}
    raw = doc.get().to_dict()
    assert LEGACY_FIELD not in raw and raw[LEGACY_BACKUP_FIELD] == other
    s = FirestoreSession("1", bot_id=bot_id, client=firestore_client)
    try:
        assert summary(read_session(s)) == expected(5)
    finally:
        s.close()


def test_decode_legacy_session_data_accepts_the_known_encodings(tmp_path: Path) -> None:
    raw = telethon_file(tmp_path / "x").read_bytes()
    assert summary(decode_legacy_session_data(base64.b64encode(raw).decode())) == expected()
    assert summary(decode_legacy_session_data(base64.urlsafe_b64encode(raw).decode().rstrip("="))) == expected()
    assert summary(decode_legacy_session_data(raw)) == expected()
    ss = StringSession()
    ss.set_dc(2, "149.154.167.51", 443)
    ss.auth_key = AuthKey(key_for(0))
    assert decode_legacy_session_data(ss.save()).auth_key == key_for(0)
    assert decode_legacy_session_data(base64.b64encode(ss.save().encode()).decode()).auth_key == key_for(0)
    with pytest.raises(SessionCorruptError, match="not base64"):
        decode_legacy_session_data("!!!")
    with pytest.raises(SessionCorruptError):
        decode_legacy_session_data(base64.b64encode(raw[:200]).decode())
    with pytest.raises(SessionCorruptError, match="expected a base64 string"):
        decode_legacy_session_data(12)


# -- secrets -----------------------------------------------------------------------------------


def test_reports_and_snapshots_never_show_the_auth_key(tmp_path: Path) -> None:
    src = MemorySession()
    populate(src)
    snap = read_session(src)
    report = copy_session(src, MemorySession())
    key = key_for(0)
    for text in (repr(snap), str(snap), repr(report), str(report.as_dict())):
        assert_absent(text, auth_key=key)
    assert snap.fingerprint in repr(snap)


def test_overwrite_into_our_session_keeps_the_object_usable(firestore_client: Any, bot_id: str) -> None:
    dst = FirestoreSession("9", bot_id=bot_id, client=firestore_client)
    populate(dst, seed=1)
    dst.flush()
    src = MemorySession()
    populate(src, seed=2)
    assert copy_session(src, dst, overwrite=True).status == REPLACED
    dst.process_entities([types.User(77, access_hash=78, username="later")])
    dst.close()
    again = FirestoreSession("9", bot_id=bot_id, client=firestore_client)
    try:
        got = read_session(again)
        assert got.auth_key == key_for(2)
        ids = {r.id for r in got.entities}
        assert 77 in ids and 1100 not in ids and 1200 in ids  # seed 1's users are gone
    finally:
        again.close()


def test_imports_with_a_cipher_seal_the_auth_key_and_the_legacy_backup(
    tmp_path: Path, firestore_client: Any, bot_id: str
) -> None:
    cipher = SessionCipher(generate_key())
    path = telethon_file(tmp_path / "user_1")
    report = import_session_files(path, FirestoreDestination(firestore_client, bot_id, cipher=cipher))
    assert report.counts() == {COPIED: 1}
    raw = firestore_client.document(f"bots/{bot_id}/user_sessions/1").get().to_dict()
    assert is_sealed(raw["auth_key"]) and key_for(0) not in raw["auth_key"]
    s = FirestoreSession("1", bot_id=bot_id, client=firestore_client, cipher=cipher)
    try:
        assert summary(read_session(s)) == expected()
    finally:
        s.close()
    with pytest.raises(SessionDecryptionError):
        FirestoreSession("1", bot_id=bot_id, client=firestore_client)
    # Merging into a sealed session compares the opened keys: a re-run is unchanged.
    again = import_session_files(path, FirestoreDestination(firestore_client, bot_id, cipher=cipher))
    assert again.counts() == {UNCHANGED: 1}

    data = base64.b64encode(path.read_bytes()).decode()
    seed_doc(firestore_client, bot_id, "2", data)
    assert import_legacy_documents(firestore_client, bot_id, cipher=cipher).counts() == {COPIED: 1}
    raw = firestore_client.document(f"bots/{bot_id}/user_sessions/2").get().to_dict()
    backup = raw[LEGACY_BACKUP_FIELD]
    assert isinstance(backup, bytes) and data.encode() not in backup
    assert cipher.open(backup, where=f"{bot_id}/2", field=LEGACY_BACKUP_FIELD) == data.encode()
    assert is_sealed(raw["auth_key"])
