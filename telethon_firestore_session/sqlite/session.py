"""``ScopedSQLiteSession``, the Telethon session of one user in one file, and key rotation over a bot's files."""

from __future__ import annotations

import os
from pathlib import Path

from telethon_firestore_session.core import SessionCore, reseal_each
from telethon_firestore_session.crypto import SessionCipher
from telethon_firestore_session.ids import BotSessionKey, SessionKey

from . import files
from .store import SQLiteStore

__all__ = ["ScopedSQLiteSession", "rotate_sqlite_sessions"]


def rotate_sqlite_sessions(
    sessions_dir: str | os.PathLike[str],
    bot_id: str,
    cipher: SessionCipher,
    *,
    user_id: str | int | None = None,
    encrypt_pii: bool = False,
) -> int:
    """Re-seal one session (``user_id``) or every session file of ``bot_id`` with ``cipher``'s current key.

    The SQLite counterpart of :func:`~telethon_firestore_session.firestore.rotate_firestore_sessions`.
    Run it after every process has the new key as ``SESSION_ENCRYPTION_KEY`` and the
    previous one in ``SESSION_ENCRYPTION_OLD_KEYS``; afterwards the old key can be
    dropped. It also seals plaintext auth keys (turning encryption on for files
    written without it), and with ``encrypt_pii`` plaintext entity fields. Each file
    is rewritten in one transaction, only if something in it is not current, and
    its write-ahead log is checkpointed and truncated, so replaced values leave the
    disk. Safe to run again after an interruption. It never bumps a session's
    ``last_active_at`` in metadata.json.

    A file that is open (in another process, or in this one) holds its lock: it is
    skipped and reported, never written; it is re-sealed by its own next ``save()``
    (the auth key) or by running this again once it is closed.

    Blocks the calling thread (from async code: ``asyncio.to_thread``).

    :param sessions_dir: the directory that holds a folder per bot.
    :param bot_id: the bot whose sessions are re-sealed.
    :param cipher: the cipher with the current key and the old ones.
    :param user_id: only this user's session; default every session file of the bot.
    :param encrypt_pii: also seal plaintext entity fields.
    :returns: how many sessions had at least one row rewritten.
    :raises SessionRotationError: once the others are done, if some sessions were
        skipped (in use, a value that does not open, an unreadable file). It lists
        each of them; they are left exactly as they were.
    """
    if user_id is not None:
        keys = [SessionKey(bot_id, user_id)]
    else:
        _, bot_dir = files.bot_dir(sessions_dir, bot_id)
        keys = [SessionKey(bot_id, uid) for uid in files.session_files(bot_dir)]
    return reseal_each(
        keys, lambda key: SQLiteStore(key, sessions_dir, cipher=cipher, encrypt_pii=encrypt_pii), cipher.key_id
    )


class ScopedSQLiteSession(SessionCore):
    """A Telethon session in ``{sessions_dir}/{bot_id}/user_{user_id}.session``.

    Pass it to ``TelegramClient(session=ScopedSQLiteSession(user_id, bot_id=...), ...)``.
    The file uses Telethon's own schema (version 8), so ``telethon.sessions.SQLiteSession``
    can open it too, and Telethon's files (any version) open here.

    Durability and timing:

    * Creating the object opens the file, takes an exclusive file lock and reads the
      DC, auth key, takeout id and update states (one small read; entities are looked
      up lazily with indexed queries, so start-up does not grow with their number).
    * ``save()`` returns after a changed auth key, DC or takeout id is committed and
      fsynced. Otherwise it only hands records to the background writer: no disk I/O.
    * Entities and sent files are written behind within ``flush_interval`` seconds,
      one transaction per flush; update states with ``save()`` (Telethon calls it
      every minute and on disconnect) or after ``state_flush_interval`` seconds.
    * ``close()`` flushes (waiting at most ``close_timeout``), closes the file and
      releases the lock. Using the session again re-opens the file and takes the lock.
    * Creating the object, ``save()``, ``close()`` and lazy lookups block the calling
      thread, as Telethon calls them (small local reads and one fsync at most).

    Encryption at rest (``cipher``): the auth key is sealed in ``sessions.auth_key`` and
    opened when the session is created; a plaintext one (a file written without a
    cipher, or by Telethon), or one sealed with an old key, is re-sealed by the next
    ``save()``, and the write-ahead log is checkpointed so the old value leaves the
    disk. With ``encrypt_pii=True`` entity usernames, phone numbers and display names
    are sealed as well and looked up through blind indexes (the layout is in
    :mod:`telethon_firestore_session.sqlite.schema`). Sealing happens in ``save()`` and the background writer, opening
    in lazy lookups: never on the hot path. A sealed file still opens in plain
    Telethon, whose client then fails with ``AuthKeyNotFound`` (Telegram does not know
    the envelope as a key).

    :param user_id: the user whose session this is (str or int), or ``BotSessionKey(bot_id)``
        for the bot's own session (what :func:`~telethon_firestore_session.create_bot_session` passes).
    :param bot_id: the bot (or application) the user belongs to.
    :param sessions_dir: the directory that holds a folder per bot.
    :param cipher: a :class:`~telethon_firestore_session.crypto.SessionCipher`
        (e.g. ``SessionCipher.from_env()``), or ``None`` to store plaintext.
    :param encrypt_pii: also seal entity usernames, phone numbers and names (needs ``cipher``).
    :param flush_interval: seconds within which changed entities and sent files are written.
    :param state_flush_interval: seconds between writes of changed update states alone.
    :param close_timeout: seconds ``close()`` waits for the background writer.
    :raises ConfigError: for ``encrypt_pii=True`` without a ``cipher``.
    :raises InvalidSessionIdError: for a ``user_id``/``bot_id`` that could escape ``sessions_dir``.
    :raises SessionInUseError: if another process (or object) has this user's session open.
    :raises SessionDecryptionError: if the stored auth key cannot be opened (wrong or missing
        key, tampered, or copied from another user's file); the file is not modified.
    :raises SchemaVersionError: if the file has a newer Telethon schema (it is not modified).
    :raises SessionCorruptError: if the file is not a Telethon session (it is not modified).
    :raises SessionStoreError: if the file cannot be opened or written.
    """

    def __init__(
        self,
        user_id: str | int | BotSessionKey,
        *,
        bot_id: str,
        sessions_dir: str | os.PathLike[str] = "sessions",
        cipher: SessionCipher | None = None,
        encrypt_pii: bool = False,
        flush_interval: float = 5.0,
        state_flush_interval: float = 60.0,
        close_timeout: float = 10.0,
    ) -> None:
        key = user_id if isinstance(user_id, BotSessionKey) else SessionKey(bot_id, user_id)
        self.key = key
        store = SQLiteStore(key, sessions_dir, cipher=cipher, encrypt_pii=encrypt_pii)
        self._sqlite = store
        super().__init__(
            store,
            flush_interval=flush_interval,
            state_flush_interval=state_flush_interval,
            close_timeout=close_timeout,
        )

    @property
    def user_id(self) -> str:
        """The user's id, as stored (``"bot"`` for the bot's own session)."""
        return self.key.user_id

    @property
    def bot_id(self) -> str:
        """The bot's id."""
        return self.key.bot_id

    @property
    def path(self) -> Path:
        """The session file (absolute)."""
        return self._sqlite.path
