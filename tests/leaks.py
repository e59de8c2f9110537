"""Looking for secrets in text and bytes: the shipped helpers (telethon_firestore_session.testing.leaks)."""

from __future__ import annotations

from telethon_firestore_session.testing.leaks import assert_absent, debug_logging, find_leaks, forms

__all__ = ["assert_absent", "debug_logging", "find_leaks", "forms"]
