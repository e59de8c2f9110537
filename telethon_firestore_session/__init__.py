"""Telethon sessions stored in Google Cloud Firestore or in per-user SQLite files."""

from __future__ import annotations

from ._core import SessionCore
from ._writer import BackgroundWriter, WriterStats
from .crypto import SessionCipher
from .errors import (
    ConfigError,
    InvalidSessionIdError,
    SchemaVersionError,
    SessionClosedError,
    SessionCorruptError,
    SessionDecryptionError,
    SessionError,
    SessionInUseError,
    SessionStoreError,
)
from .firestore import FirestoreSession

__version__ = "0.1.0"

__all__ = [
    "BackgroundWriter",
    "ConfigError",
    "FirestoreSession",
    "InvalidSessionIdError",
    "SchemaVersionError",
    "SessionCipher",
    "SessionClosedError",
    "SessionCore",
    "SessionCorruptError",
    "SessionDecryptionError",
    "SessionError",
    "SessionInUseError",
    "SessionStoreError",
    "WriterStats",
    "__version__",
]
