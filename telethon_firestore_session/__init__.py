"""Telethon sessions stored in Google Cloud Firestore or in per-user SQLite files.

The public API, by layer (each documented in the README):

* sessions: :class:`FirestoreSession`, :class:`ScopedSQLiteSession` (both
  ``telethon.sessions.abstract.Session``), built on :class:`SessionCore`, the
  process-wide :class:`BackgroundWriter` and the process-wide memory budget of
  cached entities, :class:`EntityBudget`; :class:`Store` is the interface a new
  backend implements;
* encryption at rest: :class:`SessionCipher`, :func:`generate_key`;
* the environment factory: :class:`SessionConfig`, :func:`create_session`,
  :func:`create_bot_session` (the bot's own session), :func:`get_deployment_info`,
  :func:`log_deployment_info`, :func:`is_render`;
* per-user clients: :class:`UserSessionManager`, :func:`create_user_session_manager_from_config`;
* migration: :func:`copy_session` (any Telethon session to any other);
* errors: :class:`SessionError` and its subclasses (see :mod:`.errors`).
"""

from __future__ import annotations

from .config import (
    SessionConfig,
    create_bot_session,
    create_session,
    get_deployment_info,
    is_render,
    log_deployment_info,
)
from .core import SessionCore, Store
from .crypto import SessionCipher, generate_key
from .entities import EntityBudget
from .errors import (
    ConfigError,
    InvalidSessionIdError,
    SchemaVersionError,
    SessionClosedError,
    SessionCorruptError,
    SessionDecryptionError,
    SessionError,
    SessionInUseError,
    SessionRotationError,
    SessionStoreError,
)
from .firestore import FirestoreSession
from .manager import (
    LoginResult,
    LoginStatus,
    UserSession,
    UserSessionInfo,
    UserSessionManager,
    create_user_session_manager_from_config,
)
from .migrate import copy_session
from .sqlite import ScopedSQLiteSession
from .writer import BackgroundWriter, WriterStats

__version__ = "0.1.0"

__all__ = [
    "BackgroundWriter",
    "ConfigError",
    "EntityBudget",
    "FirestoreSession",
    "InvalidSessionIdError",
    "LoginResult",
    "LoginStatus",
    "SchemaVersionError",
    "ScopedSQLiteSession",
    "SessionCipher",
    "SessionClosedError",
    "SessionConfig",
    "SessionCore",
    "SessionCorruptError",
    "SessionDecryptionError",
    "SessionError",
    "SessionInUseError",
    "SessionRotationError",
    "SessionStoreError",
    "Store",
    "UserSession",
    "UserSessionInfo",
    "UserSessionManager",
    "WriterStats",
    "__version__",
    "copy_session",
    "create_bot_session",
    "create_session",
    "create_user_session_manager_from_config",
    "generate_key",
    "get_deployment_info",
    "is_render",
    "log_deployment_info",
]
