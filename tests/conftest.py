"""Shared fixtures: the real Firestore emulator, and per-test ids.

``emulator`` (session scope) starts the emulator jar on a free loopback port,
or uses the one in ``FIRESTORE_EMULATOR_HOST``. ``firestore_client`` resets the
emulator's data before each test. Without the emulator those tests skip with
an install hint; under ``CI=true`` they fail instead. ``paused`` lets a test
pause the emulator; such a test, like one using an emulator of its own, is marked ``slow``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from telethon_firestore_session.crypto import SessionCipher
from telethon_firestore_session.sqlite import ScopedSQLiteSession
from telethon_firestore_session.testing.encryption import new_cipher, old_cipher
from tests.common import BOT, Opener
from tests.emulator import INSTALL_HINT, Emulator, find_jar
from tests.leaks import debug_logging

PROJECT = "demo-telethon-firestore-session"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _require_jar() -> str:
    """The emulator jar; without it, skip with the install hint (fail under ``CI=true``)."""
    jar = find_jar()
    if jar is None:
        if _in_ci():
            pytest.fail(f"CI=true and {INSTALL_HINT}")
        pytest.skip(INSTALL_HINT)
    return jar


@pytest.fixture(scope="session")
def emulator_jar() -> str:
    """The emulator jar, for a test module that starts its own emulator (skips or fails like ``emulator``)."""
    return _require_jar()


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    host = os.environ.get("FIRESTORE_EMULATOR_HOST")
    if host:
        emu = Emulator(host)
        if not emu.ready():
            pytest.fail(f"FIRESTORE_EMULATOR_HOST={host} is set but no emulator answers there")
        os.environ.setdefault("GOOGLE_CLOUD_PROJECT", PROJECT)
        yield emu
        return
    emu = Emulator.start(_require_jar())
    os.environ["FIRESTORE_EMULATOR_HOST"] = emu.host
    os.environ["GOOGLE_CLOUD_PROJECT"] = PROJECT
    try:
        yield emu
    finally:
        emu.stop()
        os.environ.pop("FIRESTORE_EMULATOR_HOST", None)


@pytest.fixture
def firestore_client(emulator: Emulator) -> Iterator[Any]:
    """A Firestore client on a freshly reset emulator."""
    from google.cloud import firestore

    project = os.environ["GOOGLE_CLOUD_PROJECT"]
    emulator.reset(project)
    client = firestore.Client(project=project)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def paused(emulator: Emulator, firestore_client: Any) -> Iterator[Emulator]:
    """The emulator, paused for the test body where it calls ``emulator.pause()``; always resumed."""
    if emulator.process is None:
        pytest.skip("needs an emulator started by the test suite (unset FIRESTORE_EMULATOR_HOST) to pause it")
    try:
        yield emulator
    finally:
        emulator.resume()


@pytest.fixture
def bot_id() -> str:
    return f"bot-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def sdir(tmp_path: Path) -> Path:
    """A sessions directory for SQLite sessions."""
    return tmp_path / "sessions"


@pytest.fixture
def opener(sdir: Path) -> Iterator[Opener]:
    """Opens sessions under ``sdir`` and closes every one of them after the test."""
    opened: list[ScopedSQLiteSession] = []

    def open_session(uid: object = "42", bot: str = BOT, **kw: Any) -> ScopedSQLiteSession:
        s = ScopedSQLiteSession(uid, bot_id=bot, sessions_dir=sdir, **kw)  # type: ignore[arg-type]
        opened.append(s)
        return s

    yield open_session
    for s in opened:
        s.close()


@pytest.fixture
def old() -> SessionCipher:
    """A cipher with only the old key."""
    return old_cipher()


@pytest.fixture
def new() -> SessionCipher:
    """The rotated cipher: the new key, still opening the old one."""
    return new_cipher()


#: A test using one of these is slow: it pauses the emulator (and waits for timeouts by design),
#: starts an emulator of its own, or runs a lease holder in another process.
SLOW_FIXTURES = frozenset({"paused", "rules_emulator", "holder_process"})


@pytest.hookimpl(tryfirst=True)  # before -m selects on the marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that use a :data:`SLOW_FIXTURES` fixture ``slow``."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def debug_everywhere() -> Iterator[None]:
    """DEBUG on the root logger and on the libraries' own loggers (telethon, google, grpc) for the test."""
    with debug_logging():
        yield
