"""Ids with control characters are refused by every public entry point of both backends and the manager.

Python's ``$`` also matches before a final newline, so ``"123\\n"`` once passed as a
valid id and became a second session (``user_123\\n.session``) of user 123. Every
control character (0x00-0x1f, 0x7f, and a few Unicode ones) is tried at the start,
in the middle and at the end of ``user_id`` and of ``bot_id``; nothing may be created.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from telethon_firestore_session import FirestoreSession, InvalidSessionIdError, UserSessionManager
from telethon_firestore_session.ids import SessionKey, validate_id
from telethon_firestore_session.sqlite import ScopedSQLiteSession, list_sqlite_sessions, read_metadata

CONTROL = [chr(c) for c in range(0x20)] + ["\x7f", "\x85", "\xa0", "\u200b", "\u2028", "\u2029", "\ufeff"]


def bad_ids() -> Iterator[str]:
    for c in CONTROL:
        yield from (f"123{c}", f"{c}123", f"1{c}23")


def refused(make: Callable[[str], Any]) -> list[str]:
    """The bad ids that ``make`` accepted (should be none)."""
    accepted = []
    for bad in bad_ids():
        try:
            make(bad)
        except InvalidSessionIdError:
            continue
        accepted.append(bad)
    return accepted


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def test_validate_id_refuses_every_control_character() -> None:
    assert refused(lambda v: validate_id("user_id", v)) == []
    assert refused(lambda v: SessionKey("bot", v)) == []
    assert refused(lambda v: SessionKey(v, "1")) == []
    assert validate_id("user_id", "123") == "123"
    assert validate_id("user_id", 123) == "123"


def test_scoped_sqlite_session_refuses_them_and_creates_nothing(tmp_path: Path) -> None:
    sdir = tmp_path / "sessions"
    assert refused(lambda v: ScopedSQLiteSession(v, bot_id="mybot", sessions_dir=sdir)) == []
    assert refused(lambda v: ScopedSQLiteSession("123", bot_id=v, sessions_dir=sdir)) == []
    assert refused(lambda v: list_sqlite_sessions(sdir, v)) == []
    assert refused(lambda v: read_metadata(sdir, v)) == []
    assert tree(sdir) == set()


@pytest.mark.firestore
def test_firestore_session_refuses_them_and_writes_nothing(firestore_client: Any) -> None:
    assert refused(lambda v: FirestoreSession(v, bot_id="mybot", client=firestore_client)) == []
    assert refused(lambda v: FirestoreSession("123", bot_id=v, client=firestore_client)) == []
    assert list(firestore_client.collections()) == []


async def test_manager_refuses_them(tmp_path: Path) -> None:
    sdir = tmp_path / "sessions"
    assert refused(lambda v: UserSessionManager(v, sessions_dir=sdir)) == []
    async with UserSessionManager("mybot", sessions_dir=sdir, api_id=1, api_hash="0" * 32) as m:
        before = tree(sdir)
        assert refused(m.for_user) == []
        for call in (m.create_user_session, m.get_user_client, m.is_logged_in, m.delete_user_session):
            accepted = []
            for bad in bad_ids():
                try:
                    await call(bad)
                except InvalidSessionIdError:
                    continue
                accepted.append(bad)
            assert accepted == [], call.__name__
        assert tree(sdir) == before
        assert await m.list_user_sessions() == []


@pytest.mark.firestore
async def test_firestore_manager_refuses_them(firestore_client: Any) -> None:
    assert refused(lambda v: UserSessionManager(v, backend="firestore", firestore_client=firestore_client)) == []
    async with UserSessionManager("mybot", backend="firestore", firestore_client=firestore_client) as m:
        for bad in bad_ids():
            with pytest.raises(InvalidSessionIdError):
                await m.create_user_session(bad)
    assert list(firestore_client.collections()) == []
