"""Looking for secrets in text (logs, errors, reprs) and in stored bytes, in every form they could leak in.

Failures name the secret and the form it was found in, never the secret itself: a plain
``assert secret not in text`` would print both on failure, which is the leak it tests for.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import Iterator, Mapping

__all__ = ["LIBRARY_LOGGERS", "assert_absent", "debug_logging", "find_leaks", "forms"]

#: Loggers put on DEBUG by :func:`debug_logging`: the root, and the libraries a session talks through.
LIBRARY_LOGGERS = ("", "telethon", "google", "google.cloud", "google.api_core", "grpc", "urllib3", "asyncio")


def forms(value: bytes) -> dict[str, str]:
    """Every way bytes could leak into text: raw, hex, base64 (both alphabets), repr."""
    return {
        "hex": value.hex(),
        "HEX": value.hex().upper(),
        "base64": base64.b64encode(value).decode(),
        "base64url": base64.urlsafe_b64encode(value).decode(),
        "repr": repr(value)[2:-1],
        "raw": value.decode("latin-1"),
        # A partial leak counts too: 16 bytes from the middle.
        "hex16": value[8:24].hex(),
        "base64-16": base64.b64encode(value[9:21]).decode(),
    }


def find_leaks(text: str, secrets: Mapping[str, bytes], key_texts: Mapping[str, str] | None = None) -> list[str]:
    """``name/form`` of every secret found in ``text``; never the secret itself.

    ``secrets`` are raw bytes (keys, auth keys); ``key_texts`` are keys as the text
    they were configured with (``SESSION_ENCRYPTION_KEY``), of which 20 characters suffice.
    """
    found = [
        f"{name}/{kind}" for name, secret in secrets.items() for kind, form in forms(secret).items() if form in text
    ]
    found += [f"{name}/env-text" for name, key in (key_texts or {}).items() if key[:20] in text]
    return found


def assert_absent(haystack: bytes | str, **secrets: bytes) -> None:
    """Fail if a secret (in bytes: whole or 16 bytes of it; in text: any of its :func:`forms`) is in ``haystack``.

    The failure names the secret, never shows it.
    """
    if isinstance(haystack, bytes):
        found = [name for name, secret in secrets.items() if secret in haystack or secret[8:24] in haystack]
    else:
        found = find_leaks(haystack, secrets)
    if found:
        raise AssertionError(f"secret found: {', '.join(found)}")


@contextlib.contextmanager
def debug_logging(names: tuple[str, ...] = LIBRARY_LOGGERS) -> Iterator[None]:
    """DEBUG on the root logger and the libraries' own loggers for the block, then their levels as they were."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
