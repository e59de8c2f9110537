"""The session contract: what every Telethon session answers, checked against Telethon's own backends.

:class:`SessionContract` feeds every backend the histories of :mod:`.cases` and checks that
``get_input_entity``, update states, the sent-file cache, the DC, the auth key and the
takeout id come back the same, including after the session is closed and constructed again.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import pytest
from telethon.crypto import AuthKey
from telethon.sessions.abstract import Session
from telethon.tl import types

from .backends import SessionBackend
from .cases import (
    ALICE,
    AUTH_A,
    DATE,
    ENTITY_CASES,
    MD5_A,
    MD5_B,
    UTC,
    Deviation,
    EntityCase,
    answer,
    describe,
    expect_deviation,
    feed,
    fmt,
    input_user,
    key_bytes,
    user,
)

__all__ = ["SessionContract"]


def _check_answers(
    session: Session, queries: Sequence[tuple[Any, Any]], dev: Deviation | None, phase: str, backend: SessionBackend
) -> None:
    either = dev.either if dev is not None and dev.either is not None else {}
    wrong = []
    for key, expected in queries:
        label = describe(key)
        got = answer(session, key)
        allowed = {fmt(expected), *(fmt(v) for v in either.get(label, ()))}
        if got not in allowed:
            wrong.append(f"  get_input_entity({label}) -> {got}; expected {fmt(expected)}")
    assert not wrong, f"{backend.name}, {phase}:\n" + "\n".join(wrong)


class SessionContract:
    """What every Telethon session must do. Needs a ``session_backend`` fixture (a :class:`SessionBackend`)."""

    @pytest.mark.parametrize("case", ENTITY_CASES, ids=lambda c: c.name)
    def test_get_input_entity(
        self, session_backend: SessionBackend, case: EntityCase, request: pytest.FixtureRequest
    ) -> None:
        backend = session_backend
        dev = expect_deviation(request, backend, case.name)
        session = backend.open()
        feed(session, case)
        _check_answers(session, case.queries, dev, "same session", backend)
        if backend.persistent and case.check_reopened:
            session = backend.open_again(session)
            _check_answers(session, case.queries, dev, "reopened", backend)
            session = backend.open_again(session)
            _check_answers(session, case.queries[::-1], dev, "reopened, queries in reverse order", backend)

    def test_update_states_survive_reopen(self, session_backend: SessionBackend) -> None:
        backend = session_backend
        session = backend.open()
        common = types.updates.State(120, 7, datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC), 9, unread_count=0)
        session.set_update_state(0, types.updates.State(1, 1, DATE, 1, unread_count=0))
        session.set_update_state(0, common)
        # What TelegramClient._save_states_and_entities stores for channels: pts and a naive now().
        session.set_update_state(1001, types.updates.State(50, 0, datetime.datetime.now(), 0, unread_count=0))
        session.set_update_state(1002, types.updates.State(60, 0, datetime.datetime.now(), 0, unread_count=0))
        session.set_update_state(1002, types.updates.State(61, 0, datetime.datetime.now(), 0, unread_count=0))
        session.save()
        for phase in ("same session", "reopened", "reopened twice"):
            if phase != "same session":
                session = backend.open_again(session)
            states = dict(session.get_update_states())
            assert sorted(states) == [0, 1001, 1002], phase
            got = states[0]
            assert (got.pts, got.qts, got.date, got.seq) == (120, 7, common.date, 9), phase
            assert (states[1001].pts, states[1002].pts) == (50, 61), phase
            one = session.get_update_state(0)
            assert one is not None and (one.pts, one.date) == (120, common.date), phase
            assert session.get_update_state(1002).pts == 61, phase
            assert session.get_update_state(999) is None, phase

    def test_dc_auth_key_and_takeout_survive_save_and_reopen(self, session_backend: SessionBackend) -> None:
        backend = session_backend
        session = backend.open()
        assert (session.dc_id, key_bytes(session), session.takeout_id) == (0, None, None)
        session.set_dc(2, "149.154.167.51", 443)
        session.auth_key = AuthKey(AUTH_A)
        session.takeout_id = 987654321
        session.save()
        session = backend.open_again(session)
        assert (session.dc_id, session.server_address, session.port) == (2, "149.154.167.51", 443)
        assert key_bytes(session) == AUTH_A
        assert session.takeout_id == 987654321

        # What TelegramClient._switch_dc does, then the end of a takeout session.
        assert session.auth_key is not None
        session.auth_key.key = None
        session.set_dc(4, "149.154.167.91", 443)
        session.auth_key = None
        session.takeout_id = None
        session.save()
        session = backend.open_again(session)
        assert (session.dc_id, session.server_address, session.port) == (4, "149.154.167.91", 443)
        assert key_bytes(session) is None
        assert session.takeout_id is None

    def test_sent_files(self, session_backend: SessionBackend, request: pytest.FixtureRequest) -> None:
        backend = session_backend
        expect_deviation(request, backend, "sent_files")
        session = backend.open()
        session.cache_file(MD5_A, 1000, types.InputDocument(11, 12, b"ref"))
        session.cache_file(MD5_A, 1000, types.InputPhoto(21, 22, b"ref"))  # same bytes, other kind
        session.cache_file(MD5_B, 2000, types.InputDocument(31, 32, b""))
        session.cache_file(MD5_B, 2000, types.InputDocument(33, 34, b""))  # re-uploaded: the newest wins
        session.save()
        for phase in ("same session", "reopened"):
            if phase == "reopened":
                session = backend.open_again(session)
            assert session.get_file(MD5_A, 1000, types.InputDocument) == types.InputDocument(11, 12, b""), phase
            assert session.get_file(MD5_A, 1000, types.InputPhoto) == types.InputPhoto(21, 22, b""), phase
            assert session.get_file(MD5_B, 2000, types.InputDocument) == types.InputDocument(33, 34, b""), phase

    def test_sent_file_misses_and_wrong_types(self, session_backend: SessionBackend) -> None:
        backend = session_backend
        session = backend.open()
        session.cache_file(MD5_A, 1000, types.InputDocument(11, 12, b"ref"))
        with pytest.raises(TypeError):
            session.cache_file(MD5_A, 1000, types.InputFile(1, 1, "a", ""))
        session.save()
        session = backend.open_again(session)
        assert session.get_file(MD5_B, 1000, types.InputDocument) is None
        assert session.get_file(MD5_A, 1001, types.InputDocument) is None
        assert session.get_file(MD5_B, 1000, types.InputPhoto) is None
        with pytest.raises(ValueError, match="InputDocument/InputPhoto"):
            session.get_file(MD5_A, 1000, types.InputFile)

    def test_save_entities_false_stores_nothing(
        self, session_backend: SessionBackend, request: pytest.FixtureRequest
    ) -> None:
        backend = session_backend
        expect_deviation(request, backend, "save_entities")
        session = backend.open()
        session.process_entities([user(3601, username="kept")])
        session.save_entities = False
        session.process_entities([user(3602, username="dropped", phone="15553602"), user(3601, username="moved")])
        for phase in ("same session", "reopened"):
            if phase == "reopened":
                session = backend.open_again(session)
            assert answer(session, "kept") == fmt(input_user(3601)), phase
            assert answer(session, 3602) == "MISS", phase
            assert answer(session, "dropped") == "MISS", phase
            assert answer(session, "moved") == "MISS", phase

    def test_delete_forgets_everything(self, session_backend: SessionBackend) -> None:
        """``delete()`` (Telethon calls it on ``log_out()``) leaves nothing for the next construction."""
        backend = session_backend
        if not backend.persistent:
            pytest.skip(f"{backend.name} is not persistent; its delete() has nothing to remove")
        session = backend.open()
        session.set_dc(2, "149.154.167.51", 443)
        session.auth_key = AuthKey(AUTH_A)
        session.takeout_id = 5
        session.process_entities([ALICE])
        session.set_update_state(0, types.updates.State(1, 2, DATE, 3, unread_count=0))
        session.cache_file(MD5_A, 1, types.InputPhoto(1, 2, b""))
        session.save()
        session = backend.open_again(session)
        assert answer(session, "alice") == fmt(input_user(101))
        session.delete()
        session = backend.open_again(session)
        assert (session.dc_id, key_bytes(session), session.takeout_id) == (0, None, None)
        assert list(session.get_update_states()) == []
        assert answer(session, "alice") == "MISS"
        assert answer(session, 101) == "MISS"
        assert session.get_file(MD5_A, 1, types.InputPhoto) is None

    def test_clone_without_arguments(self, session_backend: SessionBackend) -> None:
        """``clone()`` (used for CDN clients, which then call ``set_dc``) needs no arguments and is detached."""
        backend = session_backend
        session = backend.open()
        session.set_dc(2, "149.154.167.51", 443)
        session.auth_key = AuthKey(AUTH_A)
        session.save()
        cloned = session.clone()
        try:
            assert isinstance(cloned, Session) and cloned is not session
            assert key_bytes(cloned) is None
            cloned.set_dc(203, "91.105.192.100", 443)
            cloned.auth_key = AuthKey(bytes(256))
            cloned.save()
        finally:
            _close_fully(cloned)
        for phase in ("same session", "reopened"):
            if phase == "reopened":
                session = backend.open_again(session)
            assert (session.dc_id, session.server_address, session.port) == (2, "149.154.167.51", 443), phase
            assert key_bytes(session) == AUTH_A, phase


def _close_fully(session: Session) -> None:
    session.close()
    # SQLiteSession.close() leaves an in-memory database (what its clone() makes) open.
    conn = getattr(session, "_conn", None)
    if conn is not None and getattr(session, "filename", None) == ":memory:":
        conn.close()
        session._conn = None
