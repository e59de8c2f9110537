"""Hostile stored data, systematically (hypothesis): valid stored sessions are mutated in both stores.

SQLite: values of any type in any column, missing and extra tables, columns and
rows, random bytes anywhere in the file, a truncated file. Firestore (the emulator):
fields of the wrong type or size, missing and extra fields, in the session document,
its update states and the entity and sent-file documents.

Every open then either returns the right data (what an independent read of the raw
record says, with the documented types) or raises one of the documented errors
(``SessionCorruptError``, ``SchemaVersionError``, ``SessionDecryptionError``,
``SessionStoreError``); every lookup of a stored entity answers it right or raises one
of them; and a record that did not open is never written. The examples are
derandomized (a fixed seed per test) and bounded, so a failure reproduces.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import sqlite3
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from telethon.crypto import AuthKey
from telethon.tl import types

from telethon_firestore_session import (
    SchemaVersionError,
    SessionCorruptError,
    SessionDecryptionError,
    SessionError,
    SessionStoreError,
)
from telethon_firestore_session.ids import SessionKey
from telethon_firestore_session.sqlite import ScopedSQLiteSession, SQLiteStore
from tests.test_sqlite import DATE, KEY, MD5, populate

pytestmark = pytest.mark.slow

DOCUMENTED = (SessionCorruptError, SchemaVersionError, SessionDecryptionError, SessionStoreError)
BOT = "hostile"
UTC = datetime.timezone.utc
HYPOTHESIS = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def use_as_a_bot(s: Any) -> None:
    """Use an opened session as a bot would: whatever fails is a documented error, never another one."""
    try:
        s.process_entities(types.contacts.ResolvedPeer(types.PeerUser(99), [], [types.User(99, access_hash=1)]))
        s.set_update_state(0, types.updates.State(50, 6, DATE, 7, unread_count=0))
        s.auth_key = AuthKey(KEY[::-1])
        with contextlib.suppress(*DOCUMENTED):
            s.save()
        with contextlib.suppress(*DOCUMENTED):
            s.flush(5)
        with contextlib.suppress(ValueError):
            s.get_input_entity("alice")
    finally:
        with contextlib.suppress(*DOCUMENTED):
            s.close()


# -- SQLite --------------------------------------------------------------------------------------

COLUMNS = {
    "version": ("version",),
    "sessions": ("dc_id", "server_address", "port", "auth_key", "takeout_id", "tmp_auth_key"),
    "entities": ("id", "hash", "username", "phone", "name", "date"),
    "update_state": ("id", "pts", "qts", "date", "seq"),
    "sent_files": ("md5_digest", "file_size", "type", "id", "hash"),
}
SQL_VALUES = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 1, -1, 8, 9, 2**31, 10**12]),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.binary(max_size=300),
    st.sampled_from([KEY[:100], KEY + b"x", b"", "alice", "15551234567"]),
)


@st.composite
def sqlite_mutations(draw: Any) -> list[tuple[Any, ...]]:
    out = []
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        kind = draw(
            st.sampled_from(["set", "set", "set", "drop table", "drop column", "add column", "add row", "delete rows"])
            | st.sampled_from(["bytes", "truncate"])
        )
        table = draw(st.sampled_from(sorted(COLUMNS)))
        column = draw(st.sampled_from(COLUMNS[table]))
        if kind == "set":
            out.append((kind, table, column, draw(SQL_VALUES), draw(st.booleans())))
        elif kind == "add row":
            out.append((kind, table, tuple(draw(SQL_VALUES) for _ in COLUMNS[table])))
        elif kind == "add column":
            out.append((kind, table, draw(st.sampled_from(["extra blob", "extra integer not null default 5"]))))
        elif kind == "bytes":
            out.append((kind, draw(st.floats(min_value=0, max_value=1)), draw(st.binary(min_size=1, max_size=64))))
        elif kind == "truncate":
            out.append((kind, draw(st.floats(min_value=0, max_value=1))))
        else:
            out.append((kind, table, column))
    return out


def mutate_sqlite(path: Path, mutations: list[tuple[Any, ...]]) -> None:
    """Apply the mutations that apply (SQLite refuses some, such as dropping a primary key)."""
    for m in mutations:
        kind = m[0]
        if kind == "bytes":
            size = path.stat().st_size
            with open(path, "r+b") as f:
                f.seek(int(m[1] * max(0, size - len(m[2]))))
                f.write(m[2])
            continue
        if kind == "truncate":
            os.truncate(path, int(m[1] * path.stat().st_size))
            continue
        table = m[1]  # names from COLUMNS, never input: the statements below are built from fixed text
        if kind == "set":
            first = f" where rowid = (select min(rowid) from {table})" if m[4] else ""  # noqa: S608
            sql, args = f"update {table} set {m[2]} = ?{first}", (m[3],)  # noqa: S608
        elif kind == "add row":
            sql, args = f"insert into {table} values ({','.join('?' * len(m[2]))})", m[2]  # noqa: S608
        else:
            statements = {
                "drop table": f"drop table {table}",
                "drop column": f"alter table {table} drop column {m[2]}",
                "add column": f"alter table {table} add column {m[2]}",
                "delete rows": f"delete from {table}",  # noqa: S608
            }
            sql, args = statements[kind], ()
        with contextlib.suppress(sqlite3.Error, UnicodeDecodeError), contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute(sql, args)
            conn.commit()


def snapshot(path: Path) -> dict[str, bytes | None]:
    """The file and its -wal/-journal (``None``: absent or empty, which SQLite treats alike)."""
    found: dict[str, bytes | None] = {}
    for suffix in ("", "-wal", "-journal"):
        p = Path(f"{path}{suffix}")
        found[suffix] = (p.read_bytes() or None) if p.exists() else None
    return found


def raw_sqlite(path: Path) -> dict[str, Any] | None:
    """What the file says, read independently with plain sqlite3 (read-only); ``None`` if SQLite cannot
    read what opening needs (the sessions row, the update states). ``entities`` is ``None`` if SQLite cannot
    read them, and empty for schema versions up to 5 (Telethon's upgrade drops them: their hashes may be wrong).

    An empty file is a new session (that is how a session file starts).
    """
    if path.stat().st_size == 0:
        return {"sessions": None, "states": [], "entities": []}
    with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as conn:
        try:
            version = conn.execute("select version from version").fetchone()[0]
            cur = conn.execute("select * from sessions limit 1")
            names = [d[0] for d in cur.description]
            row = cur.fetchone()
            tables = {r[0] for r in conn.execute("select name from sqlite_master")}
            states = (
                conn.execute("select id, pts, qts, date, seq from update_state").fetchall()
                if "update_state" in tables
                else []
            )
        except (sqlite3.Error, UnicodeDecodeError, TypeError):
            return None
        try:
            entities = conn.execute("select id, hash, username, phone, name, date from entities").fetchall()
        except (sqlite3.Error, UnicodeDecodeError):
            entities = None
    return {
        "sessions": dict(zip(names, row, strict=True)) if row is not None else None,
        "states": states,
        "entities": entities if not is_int(version) or version > 5 else [],
    }


def is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_sqlite_session(s: ScopedSQLiteSession, raw: dict[str, Any] | None) -> None:
    """An opened session holds what the file says, with the documented types."""
    assert raw is not None, "the session opened a file that SQLite cannot read"
    row = raw["sessions"]
    if row is None:
        assert s.auth_key is None and s.dc_id == 0
    else:
        assert s.dc_id == (row.get("dc_id") or 0) and is_int(s.dc_id)
        assert s.server_address == row.get("server_address") and isinstance(s.server_address, (str, type(None)))
        assert s.port == row.get("port") and (s.port is None or is_int(s.port))
        assert s.takeout_id == row.get("takeout_id") and (s.takeout_id is None or is_int(s.takeout_id))
        key = row.get("auth_key")
        assert (s.auth_key.key if s.auth_key else None) == (key or None)
        assert key in (None, b"") or (isinstance(key, bytes) and len(key) == 256)
    states = dict(s.get_update_states())
    assert set(states) == {r[0] for r in raw["states"]}
    for sid, pts, qts, date, seq in raw["states"]:
        got = states[sid]
        assert (got.pts, got.qts, got.seq) == (pts or 0, qts or 0, seq or 0)
        assert got.date == datetime.datetime.fromtimestamp(date or 0, UTC)


ENTITY_IDS = (10, 11, -555, -1000000000777, 5)  # users, the chat, the channel, one never stored


def raw_entity(path: Path, eid: int) -> tuple[Any, ...] | Exception | None:
    """The entity row with id ``eid`` as plain sqlite3 reads it (an exception if it cannot)."""
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as conn:
            row: tuple[Any, ...] | None = conn.execute(
                "select id, hash, username, phone, name, date from entities where id = ?", (eid,)
            ).fetchone()
            return row
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        return exc


def check_sqlite_lookups(store: SQLiteStore, path: Path, raw: dict[str, Any]) -> None:
    """Each entity is answered as stored (documented types), or the lookup raises a documented error."""
    ids = {*ENTITY_IDS, *(r[0] for r in (raw["entities"] or [])[:20] if is_int(r[0]))}
    for eid in ids:
        expected = raw_entity(path, eid) if raw["entities"] != [] else None  # versions up to 5: dropped
        try:
            row = store.find_entity_by_ids([eid])
        except DOCUMENTED:
            continue
        assert not isinstance(expected, Exception), f"entity {eid}: SQLite cannot read it, and the lookup answered"
        if expected is None:
            assert row is None
            continue
        assert row is not None, f"entity {eid} is stored, and the lookup said 'not found'"
        _, ehash, username, phone, name, date = expected
        assert (row.id, row.hash, row.username, row.name) == (eid, ehash, username or None, name or None)
        assert row.phone == (str(phone) if phone not in (None, "") else None) and row.date == (date or 0)
        assert is_int(row.hash) and isinstance(row.username, (str, type(None))) and is_int(row.date)


@pytest.fixture(scope="module")
def sqlite_pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sdir = tmp_path_factory.mktemp("hostile") / "sessions"
    s = ScopedSQLiteSession(1, bot_id=BOT, sessions_dir=sdir)
    populate(s)
    assert s.flush(30)
    s.close()
    return sdir / BOT / "user_1.session"


@given(mutations=sqlite_mutations())
@HYPOTHESIS
def test_sqlite_opens_right_or_raises_and_never_writes_what_did_not_open(
    sqlite_pristine: Path, mutations: list[tuple[Any, ...]]
) -> None:
    with tempfile.TemporaryDirectory(dir=sqlite_pristine.parent.parent.parent) as tmp:
        sdir = Path(tmp)
        path = sdir / BOT / "user_1.session"
        path.parent.mkdir()
        shutil.copy(sqlite_pristine, path)
        mutate_sqlite(path, mutations)
        before = snapshot(path)
        assume(before != snapshot(sqlite_pristine))  # a mutation applied
        raw = raw_sqlite(path)
        try:
            s = ScopedSQLiteSession(1, bot_id=BOT, sessions_dir=sdir)
        except DOCUMENTED:
            assert snapshot(path) == before  # a record that did not open is never written
            return
        try:
            check_sqlite_session(s, raw)
        finally:
            with contextlib.suppress(*DOCUMENTED):
                s.close()
        assert raw is not None
        store = SQLiteStore(SessionKey(BOT, 1), sdir)
        try:
            try:
                store.load()
            except DOCUMENTED:
                return
            check_sqlite_lookups(store, path, raw)
        finally:
            store.close()
        use_as_a_bot(ScopedSQLiteSession(1, bot_id=BOT, sessions_dir=sdir))


def test_documented_errors_are_session_errors() -> None:
    assert all(issubclass(e, SessionError) for e in DOCUMENTED)


# -- Firestore (the emulator) ----------------------------------------------------------------------

FS_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.binary(max_size=300),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=3),
    st.dictionaries(st.sampled_from(["pts", "qts", "date", "seq", "x"]), st.integers(-5, 10**12), max_size=4),
    st.datetimes(timezones=st.just(UTC)),
    st.sampled_from([KEY[:100], KEY + b"x", b"", "", 10**12, 2**62, -1, "x" * 200_000, b"y" * 200_000]),
)
SESSION_FIELDS = (
    "schema_version",
    "dc_id",
    "server_address",
    "port",
    "auth_key",
    "takeout_id",
    "update_states",
    "created_at",
    "extra",
)
ENTITY_FIELDS = ("hash", "username", "phone", "name", "date", "extra")
FILE_FIELDS = ("md5", "size", "type", "id", "hash", "extra")
STATE_IDS = ("0", "777")


@st.composite
def firestore_mutations(draw: Any) -> list[tuple[Any, ...]]:
    out = []
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        target = draw(st.sampled_from(["session", "session", "state", "entity", "entity", "file", "stray"]))
        delete = draw(st.booleans())
        value = draw(FS_VALUES)
        if target == "session":
            out.append((target, (draw(st.sampled_from(SESSION_FIELDS)),), delete, value))
        elif target == "state":
            sid = draw(st.sampled_from(STATE_IDS))
            path = (sid,) if draw(st.booleans()) else (sid, draw(st.sampled_from(["pts", "qts", "date", "seq", "x"])))
            out.append((target, ("update_states", *path), delete, value))
        elif target == "entity":
            eid = draw(st.sampled_from(ENTITY_IDS[:4]))
            out.append((target, (str(eid), draw(st.sampled_from(ENTITY_FIELDS))), delete, value))
        elif target == "file":
            out.append((target, (draw(st.sampled_from(FILE_FIELDS)),), delete, value))
        else:  # a document whose id is not an entity id, with whatever is in it
            out.append((target, (draw(st.sampled_from(["abc", "-0", "1e3", "99999999999999999999"])),), delete, value))
    return out


class FirestoreCase:
    """One session written from the raw documents of a populated session, under a fresh user id."""

    def __init__(self, client: Any, bot_id: str, raw: dict[str, Any]) -> None:
        self.client = client
        self.bot_id = bot_id
        self.uid = uuid.uuid4().hex[:12]
        self.doc = client.document(f"bots/{bot_id}/user_sessions/{self.uid}")
        batch = client.batch()
        batch.set(self.doc, raw["session"])
        for eid, data in raw["entities"].items():
            batch.set(self.doc.collection("entities").document(eid), data)
        for fid, data in raw["files"].items():
            batch.set(self.doc.collection("sent_files").document(fid), data)
        batch.commit()
        self.file_id = next(iter(raw["files"]))

    def mutate(self, mutations: list[tuple[Any, ...]]) -> None:
        from google.api_core import exceptions
        from google.cloud.firestore_v1 import DELETE_FIELD
        from google.cloud.firestore_v1.field_path import FieldPath

        for target, path, delete, value in mutations:
            new = DELETE_FIELD if delete else value
            try:
                if target in ("session", "state"):
                    self.doc.update({FieldPath(*path).to_api_repr(): new})
                elif target == "entity":
                    self.doc.collection("entities").document(path[0]).update({FieldPath(path[1]).to_api_repr(): new})
                elif target == "file":
                    ref = self.doc.collection("sent_files").document(self.file_id)
                    ref.update({FieldPath(path[0]).to_api_repr(): new})
                else:
                    self.doc.collection("entities").document(path[0]).set({"hash": value, "username": "alice"})
            except (exceptions.GoogleAPICallError, ValueError, TypeError):
                continue  # Firestore refuses it (a value too big, a nested array): not stored

    def snapshot(self) -> list[tuple[str, Any, Any]]:
        """Every document of the session with its data and update time."""
        docs = [self.doc.get()]
        for name in ("entities", "sent_files"):
            docs.extend(self.doc.collection(name).stream())
        return sorted((d.reference.path, d.to_dict(), d.update_time) for d in docs if d.exists)


def check_firestore_session(s: Any, raw: dict[str, Any]) -> None:
    """An opened session holds what the document says, with the documented types."""
    assert raw.get("schema_version") == 1
    assert s.dc_id == raw.get("dc_id", 0) and is_int(s.dc_id)
    assert s.server_address == raw.get("server_address") and isinstance(s.server_address, (str, type(None)))
    assert s.port == raw.get("port") and (s.port is None or is_int(s.port))
    assert s.takeout_id == raw.get("takeout_id") and (s.takeout_id is None or is_int(s.takeout_id))
    key = raw.get("auth_key")
    assert (s.auth_key.key if s.auth_key else None) == (key or None)
    assert key in (None, b"") or (isinstance(key, bytes) and len(key) == 256)
    stored = raw.get("update_states") or {}
    states = dict(s.get_update_states())
    assert {str(k) for k in states} == set(stored)
    for sid, got in states.items():
        want = stored[str(sid)]
        assert all(is_int(want[f]) for f in ("pts", "qts", "date", "seq"))
        assert (got.pts, got.qts, got.seq) == (want["pts"], want["qts"], want["seq"])
        assert got.date == datetime.datetime.fromtimestamp(want["date"], UTC)


def check_firestore_lookups(store: Any, case: FirestoreCase) -> None:
    for eid in ENTITY_IDS:
        snap = case.doc.collection("entities").document(str(eid)).get()
        try:
            row = store.find_entity_by_ids([eid])
        except DOCUMENTED:
            continue
        if not snap.exists:
            assert row is None
            continue
        assert row is not None, f"entity {eid} is stored, and the lookup said 'not found'"
        want = snap.to_dict()
        assert (row.id, row.hash, row.date) == (eid, want["hash"], want.get("date") or 0)
        assert (row.username, row.phone, row.name) == tuple(want.get(f) for f in ("username", "phone", "name"))
        assert is_int(row.hash) and is_int(row.date)
        assert all(isinstance(v, (str, type(None))) for v in (row.username, row.phone, row.name))
    snap = case.doc.collection("sent_files").document(case.file_id).get()
    try:
        found = store.find_file((MD5, 1234, 0))
    except DOCUMENTED:
        return
    want = snap.to_dict() if snap.exists else None
    if found is not None:
        assert want is not None and found == (want["id"], want["hash"]) and all(is_int(v) for v in found)
        assert (want["md5"], want["size"], want["type"]) == (MD5, 1234, 0)


@pytest.fixture
def firestore_raw(firestore_client: Any, bot_id: str) -> dict[str, Any]:
    """The raw documents of a populated session, as FirestoreSession writes them."""
    from telethon_firestore_session import FirestoreSession

    s = FirestoreSession("pristine", bot_id=bot_id, client=firestore_client)
    populate(s)
    assert s.flush(30)
    doc = firestore_client.document(f"bots/{bot_id}/user_sessions/pristine")
    return {
        "session": doc.get().to_dict(),
        "entities": {d.id: d.to_dict() for d in doc.collection("entities").stream()},
        "files": {d.id: d.to_dict() for d in doc.collection("sent_files").stream()},
    }


@pytest.mark.firestore
@given(mutations=firestore_mutations())
@settings(HYPOTHESIS, max_examples=40)
def test_firestore_opens_right_or_raises_and_never_writes_what_did_not_open(
    firestore_client: Any, bot_id: str, firestore_raw: dict[str, Any], mutations: list[tuple[Any, ...]]
) -> None:
    from telethon_firestore_session import FirestoreSession
    from telethon_firestore_session.firestore import FirestoreStore

    case = FirestoreCase(firestore_client, bot_id, firestore_raw)
    case.mutate(mutations)
    before = case.snapshot()
    raw = case.doc.get().to_dict() or {}
    try:
        s = FirestoreSession(case.uid, bot_id=bot_id, client=firestore_client)
    except DOCUMENTED:
        assert case.snapshot() == before  # a record that did not open is never written
        return
    check_firestore_session(s, raw)
    store = FirestoreStore(SessionKey(bot_id, case.uid), firestore_client)
    check_firestore_lookups(store, case)
    use_as_a_bot(s)
