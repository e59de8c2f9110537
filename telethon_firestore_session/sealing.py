"""What a store keeps secret, sealed and checked the same way in Firestore and in SQLite files.

A :class:`Sealer` binds an optional :class:`~telethon_firestore_session.crypto.SessionCipher`
to one session: every value it seals is bound to ``bot_id/user_id`` and to its field,
and every failure names the store's location and the field, never a key.

**The auth key** is stored as its 256 plaintext bytes (no cipher) or as a sealed
envelope (with a cipher). :meth:`Sealer.open_auth_key` applies one rule on both backends:

* 256 bytes: a plaintext key. With a cipher it is sealed by the next ``save()``
  (:attr:`KeyState.PLAINTEXT`). A plaintext key that happens to start like an
  envelope is still a plaintext key: a sealed one is never 256 bytes long.
* an envelope: opened with the cipher (a missing or wrong key, a tampered value or one
  copied from another session raises :class:`~telethon_firestore_session.errors.SessionDecryptionError`);
  the opened value must be 256 bytes. One sealed with an old key is re-sealed by the
  next ``save()`` (:attr:`KeyState.OLD_KEY`).
* anything else (a key cut short, a damaged envelope, the wrong type) is no auth key:
  :class:`~telethon_firestore_session.errors.SessionDecryptionError` ("modified or
  truncated") with a cipher, :class:`~telethon_firestore_session.errors.SessionCorruptError`
  without one. The store raises before writing anything, so the stored value stays as it was.

**Entity fields** (``encrypt_pii=True``): a username, phone number or display name is
stored sealed, next to a *blind index* (a keyed hash, see
:meth:`SessionCipher.blind_index`) that lookups compare by equality. Each store lays
these out its own way; this module only seals, opens and indexes.
"""

from __future__ import annotations

import enum

from .crypto import SessionCipher, is_sealed, open_sealed, open_sealed_text
from .errors import ConfigError, SessionCorruptError, SessionDecryptionError
from .ids import SessionKey

__all__ = ["AUTH_KEY_SIZE", "PII_FIELDS", "KeyState", "Sealer"]

#: Telegram auth keys are 2048 bits; a sealed one is longer (see ``crypto.OVERHEAD``).
AUTH_KEY_SIZE = 256
#: Entity fields sealed with ``encrypt_pii=True``, in the order of :class:`~telethon_firestore_session.core.EntityRow`.
PII_FIELDS = ("username", "phone", "name")
#: Where sealed entity fields are bound: ``entities/{marked id}/{field}``.
ENTITIES = "entities"


class KeyState(enum.Enum):
    """How a stored auth key was found."""

    NONE = "none"
    #: Plaintext without a cipher, or sealed with the current key.
    CURRENT = "current"
    #: Plaintext, with a cipher configured: sealed on the next ``save()``.
    PLAINTEXT = "plaintext"
    #: Sealed with an old key: re-sealed on the next ``save()``.
    OLD_KEY = "old-key"

    @property
    def needs_rewrite(self) -> bool:
        return self in (KeyState.PLAINTEXT, KeyState.OLD_KEY)


class Sealer:
    """Seals and opens one session's secret values.

    :param key: the session (what sealed values are bound to).
    :param where: the store's location for messages (``firestore:bots/...``, ``sqlite:/path``).
    :param cipher: the cipher, or ``None`` for plaintext storage (sealed values then fail to open).
    :param encrypt_pii: also seal entity usernames, phones and names (needs ``cipher``).
    :param record: what the store calls one stored session in messages ("document", "file").
    :raises ConfigError: for ``encrypt_pii`` without a cipher.
    """

    __slots__ = ("cipher", "context", "encrypt_pii", "record", "where")

    def __init__(
        self,
        key: SessionKey,
        where: str,
        cipher: SessionCipher | None,
        *,
        encrypt_pii: bool = False,
        record: str = "record",
    ) -> None:
        if encrypt_pii and cipher is None:
            raise ConfigError("encrypt_pii", "needs a cipher (SESSION_ENCRYPTION_KEY) to seal entity fields")
        self.cipher = cipher
        self.context = str(key)
        self.where = where
        self.encrypt_pii = encrypt_pii
        self.record = record

    def __repr__(self) -> str:
        return f"<Sealer {self.where} cipher={self.cipher!r} encrypt_pii={self.encrypt_pii}>"

    @property
    def seals_fields(self) -> bool:
        """Whether entity fields are written sealed."""
        return self.encrypt_pii and self.cipher is not None

    # -- any value --------------------------------------------------------------------------

    def seal(self, value: bytes, field: str) -> bytes:
        cipher = self._cipher()
        return cipher.seal(value, where=self.context, field=field)

    def open(self, value: bytes, field: str) -> bytes:
        """Open a sealed value; any failure (no cipher included) is a :class:`SessionDecryptionError`."""
        return open_sealed(self.cipher, value, where=self.where, context=self.context, field=field)

    def open_text(self, value: bytes, field: str) -> str:
        return open_sealed_text(self.cipher, value, where=self.where, context=self.context, field=field)

    def needs_reseal(self, value: object) -> bool:
        """Sealed, but not with the current key."""
        return self.cipher is not None and self.cipher.needs_reseal(value)

    def _cipher(self) -> SessionCipher:
        if self.cipher is None:
            raise ConfigError("cipher", "sealing needs a cipher")
        return self.cipher

    # -- the auth key -----------------------------------------------------------------------

    def seal_auth_key(self, key: bytes | None) -> bytes | None:
        """The value to store for ``key``: sealed with a cipher, else as it is (``None`` stays ``None``)."""
        if not key or self.cipher is None:
            return key or None
        return self.cipher.seal(key, where=self.context, field="auth_key")

    def open_auth_key(self, value: object) -> tuple[bytes | None, KeyState]:
        """The auth key in a stored value and how it was stored, by the rule in the module docstring."""
        if value is None:
            return None, KeyState.NONE
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise SessionCorruptError(
                f"{self.where}: the auth key is a {type(value).__name__}, not bytes; the {self.record} was not modified"
            )
        raw = bytes(value)
        if not raw:
            return None, KeyState.NONE
        if len(raw) == AUTH_KEY_SIZE:
            return raw, (KeyState.PLAINTEXT if self.cipher is not None else KeyState.CURRENT)
        if is_sealed(raw):
            key = self.open(raw, "auth_key")
            if len(key) != AUTH_KEY_SIZE:
                raise SessionCorruptError(
                    f"{self.where}: the opened auth key has {len(key)} bytes, not {AUTH_KEY_SIZE}; "
                    f"the {self.record} was not modified"
                )
            return key, (KeyState.OLD_KEY if self.needs_reseal(raw) else KeyState.CURRENT)
        if self.cipher is not None:
            raise SessionDecryptionError(
                self.where,
                "auth_key",
                f"the stored value has {len(raw)} bytes and is neither a plaintext auth key nor a sealed one: "
                "it was modified or truncated",
            )
        raise SessionCorruptError(
            f"{self.where}: the auth key has {len(raw)} bytes, not {AUTH_KEY_SIZE}; the {self.record} was not modified"
        )

    # -- entity fields ----------------------------------------------------------------------

    def seal_entity_field(self, entity_id: int, field: str, value: str) -> tuple[str, bytes]:
        """``(blind index, sealed value)`` of one entity field (``field`` in :data:`PII_FIELDS`)."""
        cipher = self._cipher()
        sealed = cipher.seal_text(value, where=self.context, field=f"{ENTITIES}/{entity_id}/{field}")
        return cipher.blind_index(value, where=self.context, field=field), sealed

    def open_entity_field(self, entity_id: int | str, field: str, sealed: bytes) -> str:
        return self.open_text(sealed, f"{ENTITIES}/{entity_id}/{field}")

    def blind_indexes(self, field: str, value: str) -> tuple[str, ...]:
        """The blind index of ``value`` under every accepted key (none without a cipher)."""
        if self.cipher is None:
            return ()
        return self.cipher.blind_indexes(value, where=self.context, field=field)

    def check_blind_index(self, entity_id: int | str, field: str, value: str, index: object) -> None:
        """Raise unless ``index`` is the blind index of the opened ``value`` (the row was changed outside)."""
        if index not in self.blind_indexes(field, value):
            raise SessionDecryptionError(
                self.where,
                f"{ENTITIES}/{entity_id}/{field}",
                "the blind index does not belong to the sealed value: "
                "the record was changed outside telethon-firestore-session",
            )
