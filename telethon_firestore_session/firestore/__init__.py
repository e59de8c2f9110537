"""Sessions stored in Google Cloud Firestore under ``bots/{bot_id}/user_sessions/{user_id}``."""

from __future__ import annotations

from .store import (
    ENTITIES,
    MAX_WRITES_PER_COMMIT,
    SCHEMA_VERSION,
    SENT_FILES,
    FirestoreSession,
    FirestoreStore,
    make_client,
    parse_session_document,
    rotate_firestore_sessions,
    session_document,
)

__all__ = [
    "ENTITIES",
    "MAX_WRITES_PER_COMMIT",
    "SCHEMA_VERSION",
    "SENT_FILES",
    "FirestoreSession",
    "FirestoreStore",
    "make_client",
    "parse_session_document",
    "rotate_firestore_sessions",
    "session_document",
]
