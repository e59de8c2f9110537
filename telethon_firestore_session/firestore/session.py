"""``FirestoreSession``: a Telethon session stored in Google Cloud Firestore; and key rotation over a bot."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from telethon_firestore_session.core import SessionCore, reseal_each
from telethon_firestore_session.errors import ConfigError
from telethon_firestore_session.ids import BotSessionKey, SessionKey

from .layout import RPC_RETRY, iter_sessions
from .store import FirestoreStore

if TYPE_CHECKING:
    from google.cloud import firestore

    from telethon_firestore_session.crypto import SessionCipher

__all__ = ["FirestoreSession", "make_client", "rotate_firestore_sessions"]


def make_client(project: str | None = None, credentials: Any = None) -> firestore.Client:
    """Build a Firestore client the standard way (no network call yet).

    With ``FIRESTORE_EMULATOR_HOST`` set, no credentials are needed.

    :param project: the Google Cloud project; default ``GOOGLE_CLOUD_PROJECT``.
    :param credentials: ``google.auth`` credentials; default Application Default Credentials.
    :raises ConfigError: if no client can be made (no project or credentials).
    """
    from google.cloud import firestore

    project = project or os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCLOUD_PROJECT")
    try:
        return firestore.Client(project=project, credentials=credentials)
    except Exception as exc:  # google-auth raises many types; each means "not configured"
        raise ConfigError(
            "GOOGLE_CLOUD_PROJECT",
            "cannot create a Firestore client "
            f"({type(exc).__name__}); set the project (project= or GOOGLE_CLOUD_PROJECT) and "
            "Application Default Credentials, or FIRESTORE_EMULATOR_HOST for the emulator",
        ) from exc


def rotate_firestore_sessions(
    client: firestore.Client,
    bot_id: str,
    cipher: SessionCipher,
    user_id: str | int | None = None,
    *,
    encrypt_pii: bool = False,
    rpc_timeout: float = 30.0,
) -> int:
    """Re-seal one session (``user_id``) or every session of ``bot_id`` with ``cipher``'s current key.

    Run it after every process has the new key as ``SESSION_ENCRYPTION_KEY`` and
    the previous one in ``SESSION_ENCRYPTION_OLD_KEYS``; afterwards the old key can
    be dropped. It also seals plaintext auth keys (turning encryption on for
    sessions that were written without it), and with ``encrypt_pii`` plaintext
    entity fields. Safe to run while sessions are in use, and again after an
    interruption: only documents that are not current are rewritten, each only
    if it did not change since it was read.

    Blocks the calling thread (from async code: ``asyncio.to_thread``).

    :param client: the Firestore client.
    :param bot_id: the bot whose sessions are re-sealed.
    :param cipher: the cipher with the current key and the old ones.
    :param user_id: only this user's session; default every session of the bot.
    :param encrypt_pii: also seal plaintext entity fields.
    :param rpc_timeout: seconds each Firestore call may take, retries included.
    :returns: how many sessions had at least one document rewritten.
    :raises SessionRotationError: sessions that fail (a value that does not open,
        a document in the original system's format, a failed Firestore call) are
        logged and skipped; once the others are done, one error lists them all
        (``failures``, the first chained as ``__cause__``). They are left as they were.
    """
    if user_id is not None:
        keys = [SessionKey(bot_id, user_id)]
    else:
        keys = [SessionKey(bot_id, uid) for uid, _ in iter_sessions(client, bot_id, call=RPC_RETRY.call(rpc_timeout))]
    return reseal_each(
        keys,
        lambda key: FirestoreStore(key, client, rpc_timeout=rpc_timeout, cipher=cipher, encrypt_pii=encrypt_pii),
        cipher.key_id,
    )


class FirestoreSession(SessionCore):
    """A Telethon session stored in Firestore under ``bots/{bot_id}/user_sessions/{user_id}``.

    Pass it to ``TelegramClient(session=FirestoreSession(user_id, bot_id=...), ...)``.

    Durability:

    * The session document is read once, when the object is created, so the
      client starts with the stored auth key and DC.
    * ``save()`` returns after a changed auth key, DC or takeout id is stored.
    * Entities and sent files are written behind by one process-wide background
      writer, within ``flush_interval`` seconds of the change (batched, at most 500
      writes per commit, retried with backoff). Update states go with ``save()``
      (Telethon calls it every minute and on disconnect) or after
      ``state_flush_interval`` seconds: the session document is written at most
      about once a minute, never for entities alone.
    * ``close()`` flushes, waiting at most ``close_timeout`` seconds. Creating the object,
      ``save()``, ``close()`` and lazy lookups block the calling thread, as Telethon calls them.
    * Entities not in memory are looked up lazily (one point read or one query,
      bounded by ``lookup_timeout``); the answer is cached, misses included. The
      lookup runs on the caller's thread (the event loop), so the default is 1 s:
      far above a healthy read (tens of milliseconds), short enough that a stall is
      brief. After a lookup fails, lookups answer "not found" at once until a
      background probe reaches Firestore again (see :mod:`..breaker`).

    Encryption at rest (``cipher``): the auth key is sealed on its way into
    Firestore and opened when the session is created; a plaintext one, or one
    sealed with an old key, is re-sealed by the next ``save()``. With
    ``encrypt_pii=True`` usernames, phone numbers and display names of entities
    are sealed as well and looked up through blind indexes. Sealing happens only
    in the store (on ``save()``, in the background writer and in lazy lookups),
    never on the hot path.

    :param user_id: the user whose session this is (str or int), or ``BotSessionKey(bot_id)``
        for the bot's own session (what :func:`~telethon_firestore_session.create_bot_session` passes).
    :param bot_id: the bot (or application) the user belongs to.
    :param client: an existing ``google.cloud.firestore.Client`` (e.g. from ``firebase_admin``).
    :param project: the Google Cloud project, when no ``client`` is given
        (default: ``GOOGLE_CLOUD_PROJECT``).
    :param cipher: a :class:`~telethon_firestore_session.crypto.SessionCipher`
        (e.g. ``SessionCipher.from_env()``), or ``None`` to store plaintext.
    :param encrypt_pii: also seal entity usernames, phone numbers and names (needs ``cipher``).
    :param flush_interval: seconds within which changed entities and sent files are written.
    :param state_flush_interval: seconds between writes of changed update states alone.
    :param close_timeout: seconds ``close()`` waits for the background writer.
    :param rpc_timeout: seconds each Firestore read or write may take, retries included.
    :param lookup_timeout: seconds one lazy lookup may take.
    :raises ConfigError: for ``encrypt_pii=True`` without a ``cipher``, or no client can be made.
    :raises InvalidSessionIdError: for a ``user_id``/``bot_id`` that could escape its place.
    :raises SessionDecryptionError: if the stored auth key cannot be opened (wrong or
        missing key, tampered, or copied from another session); nothing is written.
    :raises SchemaVersionError: if the document was written by a newer version.
    :raises SessionCorruptError: if the document has the wrong shape.
    :raises SessionStoreError: if Firestore cannot be read.
    """

    def __init__(
        self,
        user_id: str | int | BotSessionKey,
        *,
        bot_id: str,
        client: firestore.Client | None = None,
        project: str | None = None,
        flush_interval: float = 5.0,
        state_flush_interval: float = 60.0,
        close_timeout: float = 10.0,
        rpc_timeout: float = 10.0,
        lookup_timeout: float = 1.0,
        cipher: SessionCipher | None = None,
        encrypt_pii: bool = False,
    ) -> None:
        key = user_id if isinstance(user_id, BotSessionKey) else SessionKey(bot_id, user_id)
        if encrypt_pii and cipher is None:
            raise ConfigError("encrypt_pii", "needs a cipher (SESSION_ENCRYPTION_KEY) to seal entity fields")
        if client is None:
            client = make_client(project)
        self.key = key
        store = FirestoreStore(
            key,
            client,
            rpc_timeout=rpc_timeout,
            lookup_timeout=lookup_timeout,
            cipher=cipher,
            encrypt_pii=encrypt_pii,
        )
        # Kept under its old name too: tests/contract, tests/test_migrate.py,
        # tests/test_firestore_encryption.py and benchmarks/bench_sessions.py read it.
        self._firestore = store
        super().__init__(
            store,
            flush_interval=flush_interval,
            state_flush_interval=state_flush_interval,
            close_timeout=close_timeout,
        )

    @property
    def store(self) -> FirestoreStore:
        """The :class:`FirestoreStore` behind this session.

        Its ``commits`` and ``writes`` count what the background writer committed;
        ``client`` is the Firestore client and ``doc`` the session document.
        """
        return self._firestore

    @property
    def user_id(self) -> str:
        """The user's id, as stored (``"bot"`` for the bot's own session)."""
        return self.key.user_id

    @property
    def bot_id(self) -> str:
        """The bot's id."""
        return self.key.bot_id

    @property
    def document(self) -> firestore.DocumentReference:
        """The session document."""
        return self._firestore.doc
