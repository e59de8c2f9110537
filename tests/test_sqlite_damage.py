"""Damaged session files: real files whose pages were overwritten with garbage.

The pages of the ``entities`` b-tree are found by walking it from its root page
(``sqlite_master.rootpage``, ``PRAGMA page_size``). Every open, lookup and write
either works (the right answer) or raises ``SessionCorruptError`` naming the file and
what to do; the writer gives the store up after a bound and ``health_check()`` shows
it; ``doctor`` runs ``quick_check`` on every file; and the file and its ``-wal`` stay
byte for byte as they were.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import random
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from telethon.crypto import AuthKey
from telethon.sessions import SQLiteSession
from telethon.tl import types

from telethon_firestore_session import BackgroundWriter, SessionCorruptError, UserSessionManager
from telethon_firestore_session.core import Changes, EntityRow, SessionHeader
from telethon_firestore_session.ids import SessionKey
from telethon_firestore_session.sqlite import ScopedSQLiteSession, SQLiteStore, check_file
from tests.test_cli import Cli

BOT = "bot1"
N = 3000
KEY = bytes(range(256))
MD5 = bytes(range(16))


def user(i: int) -> types.User:
    return types.User(i, access_hash=i * 7, username=f"user{i}", phone=str(15550000000 + i), first_name=f"N{i}")


def populate(s: Any) -> None:
    s.set_dc(2, "149.154.167.51", 443)
    s.auth_key = AuthKey(KEY)
    s.process_entities(types.contacts.ResolvedPeer(types.PeerUser(1), [], [user(i) for i in range(1, N + 1)]))
    s.cache_file(MD5, 1234, types.InputDocument(55, 66, b""))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sessions directory with user 1's file: DC, auth key, 3,000 users, a sent file (closed cleanly)."""
    sdir = tmp_path_factory.mktemp("pristine") / "sessions"
    s = ScopedSQLiteSession(1, bot_id=BOT, sessions_dir=sdir)
    populate(s)
    assert s.flush(30)
    s.close()
    return sdir


def entity_pages(path: Path) -> tuple[int, int, list[int]]:
    """``(page size, root page, leaf pages)`` of the entities table, found by walking its b-tree."""
    with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as conn:
        size = conn.execute("pragma page_size").fetchone()[0]
        root = conn.execute("select rootpage from sqlite_master where name = 'entities'").fetchone()[0]
    data = path.read_bytes()
    leaves, todo = [], [root]
    while todo:
        page = todo.pop()
        start = (page - 1) * size
        header = start + (100 if page == 1 else 0)
        if data[header] == 0x0D:  # a table leaf
            leaves.append(page)
            continue
        assert data[header] == 0x05, "an interior table page"
        cells = int.from_bytes(data[header + 3 : header + 5], "big")
        todo.append(int.from_bytes(data[header + 8 : header + 12], "big"))  # the right-most child
        for k in range(cells):
            at = start + int.from_bytes(data[header + 12 + 2 * k : header + 14 + 2 * k], "big")
            todo.append(int.from_bytes(data[at : at + 4], "big"))
    assert len(leaves) > 10 and root not in leaves
    return size, root, sorted(leaves)


def overwrite(path: Path, offset: int, length: int, seed: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(random.Random(seed).randbytes(length))


def leaf_page(path: Path, seed: int) -> None:
    size, _, leaves = entity_pages(path)
    overwrite(path, (leaves[len(leaves) // 2] - 1) * size, size, seed)


def cell_pointers(path: Path, seed: int) -> None:
    size, _, leaves = entity_pages(path)
    start = (leaves[len(leaves) // 3] - 1) * size
    cells = int.from_bytes(path.read_bytes()[start + 3 : start + 5], "big")
    overwrite(path, start + 8, 2 * cells, seed)


def interior_page(path: Path, seed: int) -> None:
    size, root, _ = entity_pages(path)
    overwrite(path, (root - 1) * size, size, seed)


def cell_contents(path: Path, seed: int) -> None:
    size, _, leaves = entity_pages(path)
    overwrite(path, (leaves[-2] - 1) * size + size // 2, 64, seed)


def file_header(path: Path, seed: int) -> None:
    overwrite(path, 0, 100, seed)


DAMAGE: dict[str, Callable[[Path, int], None]] = {
    "leaf page": leaf_page,
    "cell pointers": cell_pointers,
    "interior page": interior_page,
    "cell contents": cell_contents,
    "file header": file_header,
}
CASES = [pytest.param(name, seed, id=f"{name}-{seed}") for name in DAMAGE for seed in (1, 2)]


def snapshot(path: Path) -> dict[str, bytes | None]:
    """The file and its -wal, byte for byte (``None``: absent or empty).

    An empty -wal holds nothing (SQLite treats it as absent); read-only connections,
    ``check_file``'s too, leave one behind when the file had none.
    """
    found: dict[str, bytes | None] = {}
    for suffix in ("", "-wal"):
        p = Path(f"{path}{suffix}")
        found[suffix] = (p.read_bytes() or None) if p.exists() else None
    return found


def damaged_copy(pristine: Path, tmp_path: Path, name: str, seed: int) -> tuple[Path, Path]:
    sdir = tmp_path / "sessions"
    shutil.copytree(pristine, sdir)
    path = sdir / BOT / "user_1.session"
    DAMAGE[name](path, seed)
    return sdir, path


def assert_names_the_file_and_the_fix(exc: BaseException, path: Path) -> None:
    assert str(path) in str(exc) and "restore the file from a backup" in str(exc) and "not modified" in str(exc)


def test_pristine_file_is_sound_and_walked(pristine: Path) -> None:
    path = pristine / BOT / "user_1.session"
    assert check_file(path) is None
    size, _, leaves = entity_pages(path)
    assert size == 4096 and len(leaves) > 20


@pytest.mark.parametrize(("name", "seed"), CASES)
def test_store_answers_right_or_raises_and_never_writes(pristine: Path, tmp_path: Path, name: str, seed: int) -> None:
    sdir, path = damaged_copy(pristine, tmp_path, name, seed)
    before = snapshot(path)
    assert check_file(path) is not None  # doctor's check sees every one of these
    store = SQLiteStore(SessionKey(BOT, 1), sdir)
    try:
        try:
            loaded = store.load()
        except SessionCorruptError as exc:
            assert_names_the_file_and_the_fix(exc, path)
            return
        assert loaded is not None and loaded.header.auth_key == KEY
        outcomes = {"right": 0, "raised": 0}
        for i in range(1, N + 1):
            try:
                row = store.find_entity_by_ids([i])
            except SessionCorruptError as exc:
                assert_names_the_file_and_the_fix(exc, path)
                outcomes["raised"] += 1
                continue
            assert row is not None and (row.hash, row.username, row.phone) == (i * 7, f"user{i}", str(15550000000 + i))
            outcomes["right"] += 1
        assert outcomes["raised"] > 0  # a damaged file never answers "not found" for what it holds
        for call in (
            lambda: store.find_entity("username", "user5"),
            lambda: store.find_entity_by_ids([N + 1]),  # "not found" would be a lie
            lambda: store.find_file((MD5, 1234, 0)),
            lambda: list(store.iter_entities()),
            lambda: store.write_changes(Changes(entities={N + 1: EntityRow(N + 1, 1, None, None, "x", 0)})),
            lambda: store.write_session(SessionHeader(2, "149.154.167.51", 443, KEY[::-1], None)),
        ):
            with pytest.raises(SessionCorruptError) as info:
                call()
            assert_names_the_file_and_the_fix(info.value, path)
    finally:
        store.close()
    assert snapshot(path) == before


@pytest.mark.parametrize(("name", "seed"), CASES)
def test_session_reports_it_and_the_writer_gives_up(
    pristine: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, seed: int
) -> None:
    sdir, path = damaged_copy(pristine, tmp_path, name, seed)
    before = snapshot(path)
    writer = BackgroundWriter.get()
    dropped = writer.stats().dropped_records
    try:
        s = ScopedSQLiteSession(1, bot_id=BOT, sessions_dir=sdir)
    except SessionCorruptError as exc:
        assert_names_the_file_and_the_fix(exc, path)
        assert snapshot(path) == before
        return
    try:
        assert s.auth_key is not None and s.auth_key.key == KEY
        for i in range(1, N + 1, 7):
            try:
                peer = s.get_input_entity(i)
            except ValueError:  # not found: only once the damage is known, and then with an error logged
                assert any(r.levelno == logging.ERROR and str(path) in r.getMessage() for r in caplog.records)
                continue
            assert peer == types.InputPeerUser(i, i * 7)
        s.process_entities(types.contacts.ResolvedPeer(types.PeerUser(1), [], [user(N + 5)]))
        assert s.flush(10) is False  # given up, not retried forever
        stats = writer.stats()
        assert s.path.as_posix() in " ".join(stats.failed_stores)
        assert stats.dropped_records >= dropped + 1
        assert writer.pending_records() == 0
        s.auth_key = AuthKey(KEY[::-1])
        with pytest.raises(SessionCorruptError) as info:
            s.save()  # a changed auth key cannot be stored: the caller hears it
        assert_names_the_file_and_the_fix(info.value, path)
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any(str(path) in m and "restore the file from a backup" in m for m in errors)
    finally:
        with contextlib.suppress(SessionCorruptError):
            s.close()  # its last save() fails too; the file is released all the same
    ScopedSQLiteSession(2, bot_id=BOT, sessions_dir=sdir).close()  # the bot directory is still usable
    s = ScopedSQLiteSession(1, bot_id=BOT, sessions_dir=sdir)  # the lock was released
    s.auth_key = AuthKey(KEY[::-1])
    with pytest.raises(SessionCorruptError):
        s.save()  # the reopened file is checked again before its first write
    with contextlib.suppress(SessionCorruptError):
        s.close()
    assert snapshot(path) == before
    del s
    gc.collect()


def test_telethon_file_is_checked_before_it_is_switched_to_wal(tmp_path: Path) -> None:
    path = tmp_path / "telethon.session"
    t = SQLiteSession(str(path))
    populate(t)
    t.save()
    t.close()
    leaf_page(path, 3)
    sdir = tmp_path / "sessions"
    (sdir / BOT).mkdir(parents=True)
    target = sdir / BOT / "user_7.session"
    shutil.copy(path, target)
    before = snapshot(target)
    with pytest.raises(SessionCorruptError) as info:
        ScopedSQLiteSession(7, bot_id=BOT, sessions_dir=sdir)
    assert_names_the_file_and_the_fix(info.value, target)
    assert snapshot(target) == before


def test_restored_file_is_written_again(pristine: Path, tmp_path: Path) -> None:
    """The writer gives a damaged store up; restoring the file from a backup makes it writable again."""
    sdir, path = damaged_copy(pristine, tmp_path, "cell pointers", 1)
    writer = BackgroundWriter(min_backoff=0.01)
    store = SQLiteStore(SessionKey(BOT, 1), sdir)
    try:
        store.load()
        changes = Changes(entities={N + 1: EntityRow(N + 1, 1, None, None, "x", 0)})
        writer.submit(store, changes)
        assert writer.flush(store, 10) is False
        stats = writer.stats()
        assert stats.failed_writes == BackgroundWriter.give_up_after
        assert stats.dropped_records == 1 and stats.failed_stores == (store.where,)
        assert writer.flush(None, 1)  # nothing is pending any more
        store.close()
        shutil.copy(pristine / BOT / "user_1.session", path)  # restored from a backup
        writer.submit(store, changes)
        assert writer.flush(store, 10) is True
        assert writer.stats().failed_stores == ()
        assert store.find_entity_by_ids([N + 1]) == EntityRow(N + 1, 1, None, None, "x", 0)
    finally:
        writer.stop()
        store.close()


async def test_health_check_shows_the_damaged_session(pristine: Path, tmp_path: Path) -> None:
    sdir, path = damaged_copy(pristine, tmp_path, "leaf page", 1)
    s = ScopedSQLiteSession(1, bot_id=BOT, sessions_dir=sdir)
    try:
        s.process_entities(types.contacts.ResolvedPeer(types.PeerUser(1), [], [user(N + 5)]))
        assert s.flush(10) is False
        async with UserSessionManager(BOT, sessions_dir=sdir) as m:
            report = await m.health_check()
        assert report["status"] == "degraded"
        assert str(path) in " ".join(report["writer"]["failed_stores"])
        assert any("damaged" in p and str(path) in p for p in report["problems"])
    finally:
        with contextlib.suppress(SessionCorruptError):
            s.close()
        del s
        gc.collect()
    assert str(path) not in " ".join(BackgroundWriter.get().stats().failed_stores)  # no longer in use


def test_doctor_runs_quick_check_on_every_file(pristine: Path, tmp_path: Path) -> None:
    cli = Cli(tmp_path, BOT)
    shutil.copytree(pristine, cli.sessions_dir)
    bot_dir = cli.sessions_dir / BOT
    shutil.copy(bot_dir / "user_1.session", bot_dir / "user_2.session")
    cell_pointers(bot_dir / "user_2.session", 1)
    before = {p.name: p.read_bytes() for p in bot_dir.iterdir()}
    result = cli("doctor")
    assert result.rc == 1, result.output
    assert "[FAIL] integrity: 1 of 2 session file(s) fail SQLite's quick_check: user_2.session:" in result.stdout
    assert "restore them from a backup" in result.stdout
    assert {p.name: p.read_bytes() for p in bot_dir.iterdir()} == before
    (bot_dir / "user_2.session").unlink()
    result = cli("doctor")
    assert "[ok  ] integrity: 1 session file(s) pass SQLite's quick_check" in result.stdout, result.output
