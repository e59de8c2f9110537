"""The ``telethon-firestore-session`` command line (``python -m telethon_firestore_session``)."""

from __future__ import annotations

from .main import build_parser, main

__all__ = ["build_parser", "main"]
