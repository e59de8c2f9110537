"""Errors raised by telethon-firestore-session.

Every error derives from :class:`SessionError`, so one ``except`` clause
catches them all::

    SessionError
    ├── ConfigError               (also a ValueError) bad or missing configuration
    ├── InvalidSessionIdError     (also a ValueError) a bot_id/user_id that could escape its place
    ├── SessionInUseError         another process or instance holds the session
    ├── SessionClosedError        the session was closed or deleted
    ├── SessionDecryptionError    a sealed value could not be opened
    ├── SessionRotationError      re-sealing skipped some sessions (it lists them)
    └── SessionStoreError         the backing store failed or holds something unusable
        ├── SchemaVersionError    written by a newer version of this library
        └── SessionCorruptError   the stored record has the wrong shape

Messages name the session and the field involved, never a key or an auth key. The
constructors' parameters are kept as attributes of the same names.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator, Sequence

__all__ = [
    "ConfigError",
    "InvalidSessionIdError",
    "SchemaVersionError",
    "SessionClosedError",
    "SessionCorruptError",
    "SessionDecryptionError",
    "SessionError",
    "SessionInUseError",
    "SessionRotationError",
    "SessionStoreError",
    "store_error",
    "wrap_store_errors",
]


class SessionError(Exception):
    """Base class of every error raised by this library."""


class ConfigError(SessionError, ValueError):
    """A configuration value is missing or invalid.

    :param variable: the setting (usually an environment variable).
    :param message: what is wrong with it.
    """

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


class InvalidSessionIdError(SessionError, ValueError):
    """A ``bot_id`` or ``user_id`` is empty, too long or could escape its path."""


class SessionStoreError(SessionError):
    """The backing store (Firestore or the SQLite file) failed.

    The original exception is chained as ``__cause__``.
    """


class SchemaVersionError(SessionStoreError):
    """The stored session was written by a newer schema than this library knows.

    The stored data is left untouched; upgrade telethon-firestore-session.

    :param where: the session.
    :param found: the stored ``schema_version``.
    :param supported: the newest this version knows.
    """

    def __init__(self, where: str, found: int, supported: int) -> None:
        super().__init__(
            f"{where} has schema_version {found}, but this version of "
            f"telethon-firestore-session supports up to {supported}; upgrade the "
            "package. The stored session was not modified."
        )
        self.where = where
        self.found = found
        self.supported = supported


class SessionCorruptError(SessionStoreError):
    """The stored session does not have the expected shape.

    The stored data is left untouched so that it can be inspected or repaired.
    """


class SessionInUseError(SessionError):
    """Another process or instance is using this session.

    :param where: the session.
    :param holder: who holds it, if known.
    :param expires_at: when its lease runs out (``None`` for a local file lock, which
        is held until that process ends).
    """

    def __init__(
        self,
        where: str,
        holder: str | None = None,
        expires_at: datetime.datetime | None = None,
    ) -> None:
        msg = f"session {where} is in use"
        if holder:
            msg += f" by {holder}"
        if expires_at is not None:
            msg += f" until {expires_at.isoformat()}"
        super().__init__(msg)
        self.where = where
        self.holder = holder
        self.expires_at = expires_at


class SessionClosedError(SessionError):
    """The session was closed or deleted and cannot be used any more."""


class SessionDecryptionError(SessionError):
    """A sealed value could not be opened.

    Raised for a wrong or missing key, a tampered value, or a value copied
    from another session. The key is never part of the message. The stored data
    is left untouched.

    :param where: the session.
    :param field: the value (``auth_key``, an entity field...).
    :param reason: why it did not open.
    """

    def __init__(self, where: str, field: str, reason: str) -> None:
        super().__init__(f"cannot open field {field!r} of session {where}: {reason}")
        self.where = where
        self.field = field
        self.reason = reason


class SessionRotationError(SessionError):
    """Re-sealing (key rotation) had to skip some sessions; the others were re-sealed.

    Skipped sessions are left exactly as they were: fix the cause and run the rotation again.

    :param rotated: how many sessions were re-sealed.
    :param failures: one error per skipped session, each naming its session (a
        :class:`SessionDecryptionError`, a :class:`SessionInUseError`, ...); the first
        is also chained as ``__cause__``. Kept as a tuple.
    """

    def __init__(self, rotated: int, failures: Sequence[SessionError]) -> None:
        listed = "; ".join(f"{type(exc).__name__}: {exc}" for exc in failures)
        super().__init__(
            f"{len(failures)} session(s) could not be re-sealed and were left as they were "
            f"({rotated} re-sealed): {listed}"
        )
        self.rotated = rotated
        self.failures = tuple(failures)


def store_error(what: str, where: str, exc: BaseException) -> SessionStoreError:
    """``SessionStoreError("cannot {what} {where}: {type}: {exc}")``, for ``raise ... from exc``.

    The one way this library turns a backend's exception (a Firestore RPC error, an
    ``OSError``, an ``sqlite3.Error``) into a :class:`SessionStoreError`.

    :param what: the action, e.g. ``"read"``.
    :param where: the store (a path or a document), never a secret.
    :param exc: the backend's exception.
    """
    return SessionStoreError(f"cannot {what} {where}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def wrap_store_errors(
    what: str, where: str, *, catch: type[BaseException] | tuple[type[BaseException], ...] = Exception
) -> Iterator[None]:
    """Re-raise any ``catch`` exception from the block as :func:`store_error`; our own errors pass through.

    :param what: the action, e.g. ``"read"``.
    :param where: the store, never a secret.
    :param catch: the exception types to wrap.
    """
    try:
        yield
    except SessionError:
        raise
    except catch as exc:
        raise store_error(what, where, exc) from exc
