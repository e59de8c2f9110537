"""Sessions in per-user SQLite files, ``{sessions_dir}/{bot_id}/user_{user_id}.session``, in Telethon's schema."""

from __future__ import annotations

from .store import (
    BLIND_INDEX_PREFIX,
    METADATA_FILE,
    SCHEMA_VERSION,
    SEALED_ENTITIES,
    ScopedSQLiteSession,
    SQLiteStore,
    list_sqlite_sessions,
    read_metadata,
    rotate_sqlite_sessions,
    session_path,
)

__all__ = [
    "BLIND_INDEX_PREFIX",
    "METADATA_FILE",
    "SCHEMA_VERSION",
    "SEALED_ENTITIES",
    "SQLiteStore",
    "ScopedSQLiteSession",
    "list_sqlite_sessions",
    "read_metadata",
    "rotate_sqlite_sessions",
    "session_path",
]
