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

pytestmark = pytest.mark.slow

DOCUMENTED = (SessionCorruptError, SchemaVersionError, SessionDecryptionError, SessionStoreError)
BOT = "hostile"
KEY = bytes(range(256))
DATE = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc)
UTC = datetime.timezone.utc
HYPOTHESIS = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def populate(s: Any) -> None:
    s.set_dc(2, "149.154.167.51", 443)
    s.auth_key = AuthKey(KEY)
    s.takeout_id = 7
    s.process_entities(
        types.contacts.ResolvedPeer(
            types.PeerUser(10),
            [types.Channel(777, "A channel", types.ChatPhotoEmpty(), DATE, access_hash=88, username="chan")],
            [
                types.User(
                    10 + i, access_hash=(10 + i) * 7, username=f"user{i}", phone=f"1555000{i:04d}", first_name="N"
                )
                for i in range(30)
            ],
        )
    )
    s.set_update_state(0, types.updates.State(5, 6, DATE, 7, unread_count=0))
    s.set_update_state(1000000777, types.updates.State(9, 0, DATE, 0, unread_count=0))
    s.cache_file(bytes(range(16)), 1234, types.InputDocument(31, 32, b""))


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
    st.sampled_from([KEY[:100], KEY + b"x", b"", "user3", "15550000003"]),
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


ENTITY_IDS = (10, 11, 25, 39, -1000000000777, 5)  # users, the channel, one never stored


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
        # Used as a bot would: anything that fails is a documented error, never another one.
        s = ScopedSQLiteSession(1, bot_id=BOT, sessions_dir=sdir)
        try:
            s.process_entities(types.contacts.ResolvedPeer(types.PeerUser(99), [], [types.User(99, access_hash=1)]))
            s.set_update_state(0, types.updates.State(50, 6, DATE, 7, unread_count=0))
            s.auth_key = AuthKey(KEY[::-1])
            with contextlib.suppress(*DOCUMENTED):
                s.save()
            with contextlib.suppress(*DOCUMENTED):
                s.flush(5)
            with contextlib.suppress(ValueError):
                s.get_input_entity("user3")
        finally:
            with contextlib.suppress(*DOCUMENTED):
                s.close()


def test_documented_errors_are_session_errors() -> None:
    assert all(issubclass(e, SessionError) for e in DOCUMENTED)
