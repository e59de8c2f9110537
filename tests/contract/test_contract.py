"""The shipped contract suite (telethon_firestore_session.testing), run over every backend in conftest.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from telethon_firestore_session.testing import EncryptionContract, SessionContract, StoreContract


class TestSession(SessionContract):
    """Every backend: Telethon's references, SessionCore, FirestoreSession, ScopedSQLiteSession."""


class TestStore(StoreContract):
    """Backends built on SessionCore with a store."""


class TestEncryption(EncryptionContract):
    """The stores that seal: FirestoreSession and ScopedSQLiteSession."""


@pytest.mark.slow
def test_importing_the_package_does_not_import_pytest() -> None:
    code = (
        "import sys, telethon_firestore_session, telethon_firestore_session.firestore; "
        "print(sorted(m for m in ('pytest', 'telethon_firestore_session.testing') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
