"""Looking for secrets in text (log records, error messages, reprs) in every form they could leak in."""

from __future__ import annotations

import base64
from collections.abc import Mapping


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


def find_leaks(text: str, secrets: Mapping[str, bytes], key_texts: Mapping[str, str] = {}) -> list[str]:
    """``name/form`` of every secret found in ``text``; never the secret itself.

    ``secrets`` are raw bytes (keys, auth keys); ``key_texts`` are keys as the text
    they were configured with (``SESSION_ENCRYPTION_KEY``), of which 20 characters suffice.
    """
    found = [
        f"{name}/{kind}" for name, secret in secrets.items() for kind, form in forms(secret).items() if form in text
    ]
    found += [f"{name}/env-text" for name, key in key_texts.items() if key[:20] in text]
    return found


def assert_absent(haystack: bytes | str, **secrets: bytes) -> None:
    """Fail if a secret (or, in text, any of its :func:`forms`) is in ``haystack``, naming it, never showing it.

    A plain ``assert secret not in data`` would print both on failure, which is the leak it tests for.
    """
    if isinstance(haystack, bytes):
        found = [name for name, secret in secrets.items() if secret in haystack or secret[8:24] in haystack]
    else:
        found = find_leaks(haystack, secrets)
    if found:
        raise AssertionError(f"secret found: {', '.join(found)}")
