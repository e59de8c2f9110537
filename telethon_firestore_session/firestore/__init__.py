"""Sessions stored in Google Cloud Firestore under ``bots/{bot_id}/user_sessions/{user_id}``.

:mod:`.layout` spells the paths and the document formats, :mod:`.store` loads and
persists one session, :mod:`.session` is the Telethon session, :mod:`.lease` keeps
one instance per session and :mod:`.directory` lists a bot's users for the manager.
"""

from __future__ import annotations

from importlib import resources

from .layout import (
    ENTITIES,
    MAX_WRITES_PER_COMMIT,
    SCHEMA_VERSION,
    SENT_FILES,
    parse_session_document,
    session_document,
)
from .session import FirestoreSession, make_client, rotate_firestore_sessions
from .store import FirestoreStore

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
    "security_rules",
    "session_document",
]


def security_rules() -> str:
    """The Firestore security rules that deny client SDKs any access to the stored sessions.

    The text of ``firestore.rules`` (shipped in this package, and at the repository root): it
    denies web and mobile clients (and REST with an end user's token, or none) every path this
    library stores, and nothing else; its comments say how to merge it into your own rules. The
    server library, with service-account credentials, bypasses security rules.
    """
    return resources.files(__name__).joinpath("firestore.rules").read_text(encoding="utf-8")
