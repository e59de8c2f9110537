"""The per-user session manager: one Telegram client per user of a bot, on either backend."""

from __future__ import annotations

from .manager import (
    LoginResult,
    LoginStatus,
    UserSession,
    UserSessionInfo,
    UserSessionManager,
    create_user_session_manager_from_config,
)

__all__ = [
    "LoginResult",
    "LoginStatus",
    "UserSession",
    "UserSessionInfo",
    "UserSessionManager",
    "create_user_session_manager_from_config",
]
