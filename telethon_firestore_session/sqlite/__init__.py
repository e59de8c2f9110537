"""Sessions in per-user SQLite files, ``{sessions_dir}/{bot_id}/user_{user_id}.session``, in Telethon's schema.

``schema`` knows Telethon's file format (and reads and writes whole files), ``files``
the bot directory (paths, locks, ``metadata.json``), ``store`` keeps one session in
one file, ``session`` is the Telethon session over it, ``directory`` the session
manager's view of a bot's users.
"""

from __future__ import annotations

from .files import METADATA_FILE, list_sqlite_sessions, read_metadata, session_path
from .schema import (
    BLIND_INDEX_PREFIX,
    SCHEMA_VERSION,
    SEALED_ENTITIES,
    check_file,
    read_auth_key,
    read_session_file,
    write_session_file,
)
from .session import ScopedSQLiteSession, rotate_sqlite_sessions
from .store import SQLiteStore

__all__ = [
    "BLIND_INDEX_PREFIX",
    "METADATA_FILE",
    "SCHEMA_VERSION",
    "SEALED_ENTITIES",
    "SQLiteStore",
    "ScopedSQLiteSession",
    "check_file",
    "list_sqlite_sessions",
    "read_auth_key",
    "read_metadata",
    "read_session_file",
    "rotate_sqlite_sessions",
    "session_path",
    "write_session_file",
]
