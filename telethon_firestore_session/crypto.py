"""Encryption at rest: :class:`SessionCipher` seals secret values on their way into a store.

Each value is sealed with AES-256-GCM and a fresh random 96-bit nonce, in a
versioned envelope::

    b"TFS"  format (1 byte)  key id (4 bytes)  nonce (12 bytes)  ciphertext + tag (len(value) + 16)

* The **key id** is the first 4 bytes of ``HMAC-SHA256(key, b"key-id")``: it tells
  which key sealed a value (so that keys can rotate) and reveals nothing about the key.
* The **associated data** binds every value to the session and the field that hold
  it (``bot_id/user_id/field``): a sealed value copied into another session's
  document, or into another field, does not open.
* A **blind index** (``HMAC-SHA256`` under a key derived from the current key with
  HKDF) lets a store look a sealed username or phone number up by equality without
  storing it in plaintext. It is bound to the session and the field, too.

Nothing here does I/O. Stores call :meth:`SessionCipher.seal` and
:meth:`SessionCipher.open` when they write and read; the in-memory hot path never
sees a sealed value.

Generate a key with ``python -m telethon_firestore_session.crypto keygen`` (or
:func:`generate_key`) and put it in ``SESSION_ENCRYPTION_KEY``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import sys
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import ConfigError, SessionDecryptionError

__all__ = [
    "ENV_KEY",
    "ENV_OLD_KEYS",
    "KEY_SIZE",
    "SessionCipher",
    "generate_key",
    "is_sealed",
    "open_sealed",
    "open_sealed_text",
]

#: Environment variable holding the current key (urlsafe base64 of 32 bytes).
ENV_KEY = "SESSION_ENCRYPTION_KEY"
#: Environment variable holding retired keys, comma-separated, still accepted for opening.
ENV_OLD_KEYS = "SESSION_ENCRYPTION_OLD_KEYS"
# Both may name a file instead: SESSION_ENCRYPTION_KEY_FILE, SESSION_ENCRYPTION_OLD_KEYS_FILE.

KEY_SIZE = 32
MAGIC = b"TFS"
FORMAT_V1 = 1
KEY_ID_SIZE = 4
NONCE_SIZE = 12
TAG_SIZE = 16
_HEADER_SIZE = len(MAGIC) + 1 + KEY_ID_SIZE + NONCE_SIZE
#: Bytes a sealed value has on top of its plaintext.
OVERHEAD = _HEADER_SIZE + TAG_SIZE

_BLIND_INDEX_INFO = b"telethon-firestore-session blind-index v1"
_BLIND_INDEX_SIZE = 16  # 128-bit index, base64url without padding: 22 characters


def generate_key() -> str:
    """A fresh random 32-byte key as urlsafe base64 text (the ``SESSION_ENCRYPTION_KEY`` format)."""
    return base64.urlsafe_b64encode(os.urandom(KEY_SIZE)).decode("ascii")


def is_sealed(value: object) -> bool:
    """Whether ``value`` has the shape of a sealed value (any key, any format version).

    A plaintext auth key is 256 random bytes; one that starts with ``b"TFS"`` and
    could be taken for a sealed value is a 1-in-16-million chance, and stores
    additionally treat exactly 256 bytes as a plaintext auth key.

    :param value: anything; only ``bytes`` can be sealed.
    """
    return isinstance(value, bytes) and len(value) >= OVERHEAD and value.startswith(MAGIC)


def _parse_key(value: bytes | str, name: str, label: str = "") -> bytes:
    """Turn a key given as 32 raw bytes or urlsafe base64 text into bytes; never echo it.

    Errors name the setting (``name``, plus ``label`` such as "entry 2") only.
    """
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ConfigError(name, f"{label}is empty")
        # urlsafe base64 (what keygen prints); the standard alphabet is accepted too.
        text = text.replace("+", "-").replace("/", "_")
        try:
            raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(
                name,
                f"{label}is not base64 text; generate a key with `python -m telethon_firestore_session.crypto keygen`",
            ) from None
        if len(raw) != KEY_SIZE:
            raise ConfigError(name, f"{label}must decode to {KEY_SIZE} bytes, got {len(raw)}")
        return raw
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if len(raw) != KEY_SIZE:
            raise ConfigError(
                name, f"{label}must be {KEY_SIZE} raw bytes (or urlsafe base64 text of them), got {len(raw)}"
            )
        return raw
    raise ConfigError(name, f"{label}must be bytes or str, not {type(value).__name__}")


def _setting(env: Mapping[str, str], name: str) -> tuple[str, str]:
    """The stripped value of ``name``, or of the file named by ``name_FILE``; and which variable it came from."""
    file_var = f"{name}_FILE"
    text = env.get(name, "").strip()
    path = env.get(file_var, "").strip()
    if text and path:
        raise ConfigError(name, f"is set and so is {file_var}; set only one of them")
    if not path:
        return text, name
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip(), file_var
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file_var, f"cannot read {path!r} ({type(exc).__name__})") from None


class _Key:
    """One key, ready to use. Its repr shows the key id only."""

    __slots__ = ("aead", "blind", "id")

    def __init__(self, raw: bytes) -> None:
        self.id = hmac.new(raw, b"key-id", hashlib.sha256).digest()[:KEY_ID_SIZE]
        self.aead = AESGCM(raw)
        self.blind = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_BLIND_INDEX_INFO).derive(raw)

    def __repr__(self) -> str:
        return f"<key {self.id.hex()}>"


def _key_id_of(value: object) -> bytes | None:
    if not is_sealed(value):
        return None
    assert isinstance(value, bytes)
    return value[len(MAGIC) + 1 : len(MAGIC) + 1 + KEY_ID_SIZE]


def _context(where: str, field: str) -> bytes:
    # Ids cannot contain "/" or NUL (see _ids.validate_id), so this is unambiguous.
    return f"{where}/{field}".encode()


class SessionCipher:
    """Seals and opens session values with AES-256-GCM; keys rotate through ``old_keys``.

    :param key: the current key: 32 raw bytes, or urlsafe base64 text of them
        (what :func:`generate_key` returns). New values are always sealed with it.
    :param old_keys: retired keys, still accepted by :meth:`open`. A value sealed
        with one of them opens, and :meth:`needs_reseal` says it should be
        written again (stores do that on the next write).
    :raises ConfigError: if a key is malformed (the message never contains it).

    Thread-safe: every method may be called from any thread (the background
    writer seals entity fields from its own thread). ``repr()`` shows key ids only.
    """

    __slots__ = ("_current", "_keys")

    def __init__(self, key: bytes | str, old_keys: Sequence[bytes | str] = ()) -> None:
        if isinstance(old_keys, (str, bytes)):
            raise ConfigError("old_keys", "must be a sequence of keys, not a single key")
        current = _Key(_parse_key(key, "key"))
        keys = {current.id: current}
        for i, old in enumerate(old_keys):
            k = _Key(_parse_key(old, "old_keys", f"entry {i + 1} "))
            if k.id in keys:
                continue  # the same key twice (e.g. the current key left in the old list)
            keys[k.id] = k
        self._current = current
        self._keys = keys

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SessionCipher | None:
        """Build a cipher from ``SESSION_ENCRYPTION_KEY`` and ``SESSION_ENCRYPTION_OLD_KEYS``.

        Returns ``None`` when ``SESSION_ENCRYPTION_KEY`` is unset or empty (no
        encryption). ``SESSION_ENCRYPTION_OLD_KEYS`` is a comma-separated list of
        retired keys. Either may instead name a file that holds it, through
        ``SESSION_ENCRYPTION_KEY_FILE`` / ``SESSION_ENCRYPTION_OLD_KEYS_FILE``
        (e.g. a Render secret file, ``/etc/secrets/session_key``).

        :param environ: the variables to read; default ``os.environ``.
        :raises ConfigError: naming the variable (never its value) if a key is
            malformed or its file unreadable, if both a variable and its
            ``_FILE`` form are set, or if old keys are set without a current key.
        """
        env = os.environ if environ is None else environ
        text, key_var = _setting(env, ENV_KEY)
        old_text, old_var = _setting(env, ENV_OLD_KEYS)
        if not text:
            if old_text:
                raise ConfigError(
                    ENV_KEY, f"is not set but {old_var} is; set the current key too (old keys only open values)"
                )
            return None
        key = _parse_key(text, key_var)
        olds = [
            _parse_key(part, old_var, f"entry {i} ")
            for i, part in enumerate((p.strip() for p in old_text.split(",")), start=1)
            if part
        ]
        return cls(key, olds)

    # -- introspection ---------------------------------------------------------------------

    @property
    def key_id(self) -> str:
        """Hex id of the current key (safe to log)."""
        return self._current.id.hex()

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Hex ids of every accepted key, the current one first (safe to log)."""
        return tuple(k.hex() for k in self._keys)

    def __repr__(self) -> str:
        old = ",".join(k.hex() for k in self._keys if k != self._current.id)
        return f"<SessionCipher key_id={self.key_id} old_key_ids=[{old}]>"

    # -- sealing -----------------------------------------------------------------------

    def seal(self, value: bytes, *, where: str, field: str) -> bytes:
        """Encrypt ``value`` with the current key, bound to ``where`` and ``field``.

        :param value: the plaintext.
        :param where: the session (``bot_id/user_id``) the value is bound to.
        :param field: the value's name (``auth_key``, ``username``...), bound in too.
        """
        key = self._current
        header = MAGIC + bytes((FORMAT_V1,)) + key.id
        nonce = os.urandom(NONCE_SIZE)
        return header + nonce + key.aead.encrypt(nonce, bytes(value), header + b"|" + _context(where, field))

    def open(self, value: bytes, *, where: str, field: str) -> bytes:
        """Decrypt a value sealed by :meth:`seal` for the same ``where`` and ``field``.

        :param value: the sealed value.
        :param where: the session (``bot_id/user_id``) the value is bound to.
        :param field: the value's name (``auth_key``, ``username``...), bound in too.
        :raises SessionDecryptionError: if ``value`` is not sealed, was sealed with
            a key this cipher does not have, was tampered with, or belongs to
            another session or field. The message names ``where`` and ``field``
            and the key id involved, never a key.
        """
        if not is_sealed(value):
            raise SessionDecryptionError(where, field, "the value is not sealed (or is truncated)")
        version = value[len(MAGIC)]
        if version != FORMAT_V1:
            raise SessionDecryptionError(
                where, field, f"unknown envelope format {version}; upgrade telethon-firestore-session"
            )
        kid = value[len(MAGIC) + 1 : _HEADER_SIZE - NONCE_SIZE]
        key = self._keys.get(kid)
        if key is None:
            raise SessionDecryptionError(
                where,
                field,
                f"sealed with key id {kid.hex()}, which is not configured (configured: {', '.join(self.key_ids)}); "
                f"set {ENV_KEY} or add the key to {ENV_OLD_KEYS}",
            )
        header = value[: _HEADER_SIZE - NONCE_SIZE]
        nonce = value[_HEADER_SIZE - NONCE_SIZE : _HEADER_SIZE]
        try:
            return key.aead.decrypt(nonce, value[_HEADER_SIZE:], header + b"|" + _context(where, field))
        except InvalidTag:
            raise SessionDecryptionError(
                where,
                field,
                f"authentication failed with key id {kid.hex()}: the value was modified or belongs to another "
                "session or field",
            ) from None

    def seal_text(self, value: str, *, where: str, field: str) -> bytes:
        """:meth:`seal` for text (UTF-8).

        :param value: the text.
        :param where: the session (``bot_id/user_id``) the value is bound to.
        :param field: the value's name (``auth_key``, ``username``...), bound in too.
        """
        return self.seal(value.encode("utf-8"), where=where, field=field)

    def open_text(self, value: bytes, *, where: str, field: str) -> str:
        """:meth:`open` for text sealed by :meth:`seal_text`.

        :param value: the sealed value.
        :param where: the session (``bot_id/user_id``) the value is bound to.
        :param field: the value's name (``auth_key``, ``username``...), bound in too.
        :raises SessionDecryptionError: as :meth:`open`, or if the result is not UTF-8.
        """
        return open_sealed_text(self, value, where=where, context=where, field=field)

    def is_sealed(self, value: object) -> bool:
        """Whether ``value`` looks sealed (by any key); see the module function :func:`is_sealed`.

        :param value: anything.
        """
        return is_sealed(value)

    def needs_reseal(self, value: object) -> bool:
        """Whether ``value`` is sealed, but not with the current key (an old or unknown key).

        Plaintext is not "sealed with an old key": check :meth:`is_sealed` for that.

        :param value: anything.
        """
        kid = _key_id_of(value)
        return kid is not None and kid != self._current.id

    def sealed_with(self, value: object) -> str | None:
        """Hex key id that sealed ``value``, or ``None`` if it is not sealed (safe to log).

        :param value: anything.
        """
        kid = _key_id_of(value)
        return None if kid is None else kid.hex()

    # -- blind indexes -------------------------------------------------------------------

    def blind_index(self, value: str, *, where: str, field: str) -> str:
        """A keyed hash of ``value`` for equality lookups, under the **current** key.

        ``HMAC-SHA256`` with a key derived from the current key by HKDF, over the
        session, the field and the value; 128 bits as base64url without padding
        (22 characters). Equal inputs give equal indexes; without the key nothing
        about the value can be learnt or tested. Rotating the key changes every
        index: stores write the current index and look up with
        :meth:`blind_indexes`, which also tries the old keys.

        :param value: the text to index.
        :param where: the session (``bot_id/user_id``) the value is bound to.
        :param field: the value's name (``auth_key``, ``username``...), bound in too.
        """
        return self._blind(self._current, value, where, field)

    def blind_indexes(self, value: str, *, where: str, field: str) -> tuple[str, ...]:
        """The blind index of ``value`` under every accepted key, the current key's first.

        :param value: the text to index.
        :param where: the session (``bot_id/user_id``) the value is bound to.
        :param field: the value's name (``auth_key``, ``username``...), bound in too.
        """
        return tuple(self._blind(k, value, where, field) for k in self._keys.values())

    @staticmethod
    def _blind(key: _Key, value: str, where: str, field: str) -> str:
        msg = _context(where, field) + b"\x00" + value.encode("utf-8")
        digest = hmac.new(key.blind, msg, hashlib.sha256).digest()[:_BLIND_INDEX_SIZE]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


#: Why a sealed value cannot be opened when no cipher is configured.
NO_KEY_REASON = "the value is sealed but no encryption key is configured (pass cipher=, or set SESSION_ENCRYPTION_KEY)"


def open_sealed(cipher: SessionCipher | None, value: bytes, *, where: str, context: str, field: str) -> bytes:
    """Open a sealed value read from a store, bound to ``context`` (``bot_id/user_id``) and ``field``.

    :param cipher: the cipher, or ``None`` when none is configured.
    :param value: the sealed value.
    :param where: the store's location, for the error message.
    :param context: the session (``bot_id/user_id``) the value is bound to.
    :param field: the value's name, bound in too.
    :raises SessionDecryptionError: for every failure, a missing cipher included; it
        names ``where`` and ``field``, never a key.
    """
    if cipher is None:
        raise SessionDecryptionError(where, field, NO_KEY_REASON)
    try:
        return cipher.open(value, where=context, field=field)
    except SessionDecryptionError as exc:
        raise SessionDecryptionError(where, field, exc.reason) from None


def open_sealed_text(cipher: SessionCipher | None, value: bytes, *, where: str, context: str, field: str) -> str:
    """:func:`open_sealed` for text sealed by :meth:`SessionCipher.seal_text`.

    :param cipher: the cipher, or ``None`` when none is configured.
    :param value: the sealed value.
    :param where: the store's location, for the error message.
    :param context: the session (``bot_id/user_id``) the value is bound to.
    :param field: the value's name, bound in too.
    :raises SessionDecryptionError: as :func:`open_sealed`, or if the result is not UTF-8.
    """
    raw = open_sealed(cipher, value, where=where, context=context, field=field)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SessionDecryptionError(where, field, "the opened value is not UTF-8 text") from None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m telethon_firestore_session.crypto keygen``: print a fresh key."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args != ["keygen"]:
        sys.stderr.write("usage: python -m telethon_firestore_session.crypto keygen\n")
        return 2
    sys.stdout.write(generate_key() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
