"""Bulk imports into Firestore, and the conversion of the original system's documents.

:class:`FirestoreDestination` is the Firestore destination of
:func:`~telethon_firestore_session.migrate.import_snapshots`. :func:`import_legacy_documents`
converts in place the documents of the system this library replaces:
``bots/{bot_id}/user_sessions/{user_id}`` with one field, ``session_data``, base64 of a
Telethon ``.session`` file. :mod:`telethon_firestore_session.migrate` re-exports these names.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from telethon_firestore_session import migrate
from telethon_firestore_session.errors import SessionCorruptError, SessionError
from telethon_firestore_session.ids import SessionKey
from telethon_firestore_session.sqlite.schema import SQLITE_MAGIC, read_session_file
from telethon_firestore_session.store import EMPTY_HEADER, Changes, SessionHeader, SessionSnapshot, StoredSession

from .layout import BULK_RETRY, MAX_WRITES_PER_COMMIT, Write, commit_in_chunks, iter_sessions, session_document, utcnow
from .store import FirestoreStore

if TYPE_CHECKING:
    from google.cloud import firestore
    from google.cloud.firestore_v1.base_document import DocumentSnapshot

    from telethon_firestore_session.crypto import SessionCipher

__all__ = [
    "LEGACY_BACKUP_FIELD",
    "LEGACY_FIELD",
    "FirestoreDestination",
    "decode_legacy_session_data",
    "import_legacy_documents",
]

#: Where the original system's base64 session lives, and where the importer keeps a copy.
LEGACY_FIELD = "session_data"
LEGACY_BACKUP_FIELD = "legacy_session_data"

#: Listing the original documents: each query (a page) ends within this many seconds, retries included.
_LIST_TIMEOUT = 60.0
_URLSAFE = str.maketrans("-_", "+/")
_COMMIT_FAILED = "commit failed: Firestore refused it or did not answer in time (after retries)"


class _FirestoreTarget(migrate.Target):
    """One Firestore session; its writes are collected in :attr:`writes` for the shared batches.

    ``legacy`` is the original document being converted: one holding only ``session_data``
    has nothing of ours yet, so it is not read again.
    """

    def __init__(self, store: FirestoreStore, legacy: dict[str, Any] | None, keep_backup: bool) -> None:
        self.store = store
        self.legacy = legacy
        self.keep_backup = keep_backup
        self.reads = 0
        self.writes: list[Write] = []

    @functools.cached_property
    def loaded(self) -> StoredSession | None:
        if self.legacy is not None and "schema_version" not in self.legacy:
            return None
        self.reads += 1
        return self.store.load()

    def header(self) -> SessionHeader:
        return self.loaded.header if self.loaded is not None else EMPTY_HEADER

    def records(self) -> Changes:
        self.reads += 2
        states = dict(self.loaded.update_states) if self.loaded is not None else {}
        return Changes({r.id: r for r in self.store.iter_entities()}, states, dict(self.store.iter_files()))

    def clear(self) -> None:
        # Replacing a different login: nothing of the old one may survive. What the
        # original layout held is written back with the new records (legacy_fields).
        self.store.delete()
        self.loaded = None

    def legacy_fields(self) -> dict[str, Any]:
        """``session_data`` moved aside into ``legacy_session_data`` (sealed with a cipher), or nothing."""
        if self.legacy is None or LEGACY_FIELD not in self.legacy:
            return {}
        from google.cloud import firestore

        fields: dict[str, Any] = {LEGACY_FIELD: firestore.DELETE_FIELD}
        if self.keep_backup:
            backup = self.legacy[LEGACY_FIELD]
            if self.store.cipher is not None:
                # With encryption on, the backup (which holds the auth key) is sealed too.
                raw = backup.encode("utf-8") if isinstance(backup, str) else bytes(backup)
                backup = self.store.sealer.seal(raw, LEGACY_BACKUP_FIELD)
            fields[LEGACY_BACKUP_FIELD] = backup
            fields["legacy_imported_at"] = utcnow()
        return fields

    def write(self, header: SessionHeader | None, changes: Changes) -> None:
        now = int(time.time())
        changes.entities = {i: (r if r.date else r._replace(date=now)) for i, r in changes.entities.items()}
        writes = self.store.change_writes(changes, header)
        # The session document comes first: a session never exists without its header.
        first = next(writes)
        self.writes.append(first._replace(fields={**(first.fields or {}), **self.legacy_fields()}))
        self.writes.extend(writes)


class FirestoreDestination(migrate.Destination):
    """Firestore sessions of one bot, written in shared batches of at most 500 writes.

    With a ``cipher`` the auth keys (and, with ``encrypt_pii``, usernames, phones and
    names) are sealed exactly as ``FirestoreSession(cipher=...)`` seals them.
    Memory holds one session's records plus one batch. Each session costs one read
    of its document (two more queries when it has to be merged). A session is
    reported once all its writes are committed; a failed commit reports each session
    in it as failed, and running the import again completes them.

    :param client: the Firestore client.
    :param bot_id: the bot whose sessions these are.
    :param batch_size: writes per commit (at most 500).
    :param rpc_timeout: seconds each commit may take, retries included.
    :param cipher: seals the sessions as ``FirestoreSession(cipher=...)`` does.
    :param encrypt_pii: also seal entity fields (needs ``cipher``).
    :param store_factory: builds the store of a key (tests); default a ``FirestoreStore``.
    """

    def __init__(
        self,
        client: firestore.Client,
        bot_id: str,
        *,
        batch_size: int = 500,
        rpc_timeout: float = 30.0,
        cipher: SessionCipher | None = None,
        encrypt_pii: bool = False,
        store_factory: Callable[[SessionKey], FirestoreStore] | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_WRITES_PER_COMMIT:
            raise ValueError(f"batch_size must be between 1 and {MAX_WRITES_PER_COMMIT}")
        self.client = client
        self.bot_id = bot_id
        sealing: dict[str, Any] = {"cipher": cipher, "encrypt_pii": encrypt_pii} if cipher is not None else {}
        self._store_factory = store_factory or (
            lambda key: FirestoreStore(key, client, rpc_timeout=rpc_timeout, **sealing)
        )
        self._limit = batch_size
        self._call = BULK_RETRY.call(rpc_timeout)
        self._writes: list[tuple[int, Write]] = []  # (session, write), not committed yet
        self._waiting: dict[int, tuple[migrate.ImportItem, int]] = {}  # session -> (its item, writes left)
        self._done: list[migrate.ImportItem] = []
        self._sessions = 0
        #: ``source -> (original document, keep_backup)``, set by :func:`import_legacy_documents`.
        self._legacy: dict[str, tuple[dict[str, Any], bool]] = {}
        self.reads = self.commits = self.writes = 0

    @property
    def pending_writes(self) -> int:
        """Writes waiting for their commit: at most one batch plus one session's."""
        return len(self._writes)

    def put(self, source: str, user_id: str, snapshot: SessionSnapshot, *, overwrite: bool) -> None:
        if any(item.user_id == user_id for item, _ in self._waiting.values()):
            # The same user twice in one run: let the second one see the first one's writes.
            self._commit(final=True)
        legacy, keep_backup = self._legacy.pop(source, (None, True))
        try:
            target = _FirestoreTarget(self._store_factory(SessionKey(self.bot_id, user_id)), legacy, keep_backup)
        except (SessionError, ValueError) as exc:
            self._done.append(migrate.ImportItem.failure(source, user_id, exc))
            return
        try:
            report = migrate.apply_snapshot(snapshot, target, overwrite)
            if report.status == migrate.UNCHANGED and (fields := target.legacy_fields()):
                # Already imported, but the original field is back: move it aside again.
                target.writes.append(Write(target.store.doc, "merge", fields))
        except Exception as exc:  # noqa: BLE001 - one bad session must not stop the run
            self._done.append(migrate.ImportItem.failure(source, user_id, exc, snapshot.fingerprint))
            return
        finally:
            self.reads += target.reads
        item = migrate.ImportItem.of(source, user_id, report)
        if target.writes:
            self._sessions += 1
            self._waiting[self._sessions] = (item, len(target.writes))
            self._writes.extend((self._sessions, w) for w in target.writes)
        else:
            self._done.append(item)
        # A replaced session's old records are gone already: make the new ones durable now.
        self._commit(final=report.status == migrate.REPLACED)

    def _commit(self, *, final: bool) -> None:
        """Commit every full batch, and with ``final`` the rest too; settle the sessions all of whose writes went."""
        from google.api_core.exceptions import GoogleAPIError

        n = len(self._writes) if final else len(self._writes) - len(self._writes) % self._limit
        batch, self._writes = self._writes[:n], self._writes[n:]
        writes = (w for _, w in batch)
        done = 0
        # A failed commit (after its retries) fails every session in it; the next batch goes on.
        for chunk, results in commit_in_chunks(
            self.client, writes, self._call, limit=self._limit, tolerate=(GoogleAPIError,)
        ):
            if results is not None:
                self.commits += 1
                self.writes += len(chunk)
            for session, _ in batch[done : done + len(chunk)]:
                item, left = self._waiting.pop(session)
                if results is None:
                    item.status, item.reason = migrate.FAILED, _COMMIT_FAILED
                if left > 1:
                    self._waiting[session] = (item, left - 1)
                else:
                    self._done.append(item)
            done += len(chunk)

    def drain(self, *, final: bool = False) -> list[migrate.ImportItem]:
        if final:
            self._commit(final=True)
        done, self._done = self._done, []
        return done

    def account(self, report: migrate.BulkReport) -> None:
        report.commits = self.commits
        report.writes = self.writes
        report.reads = self.reads


# -- the original system's documents ---------------------------------------------------------


def decode_legacy_session_data(value: object, where: str = "session_data") -> SessionSnapshot:
    """Decode the original system's ``session_data`` field.

    It is base64 of the bytes of a Telethon ``.session`` SQLite file (recognised by
    ``b"SQLite format 3\\x00"`` after decoding). A ``StringSession`` string, plain or
    base64-encoded, and raw bytes of a ``.session`` file are accepted too.

    :param value: the field's value.
    :param where: how errors name it.
    :raises SessionCorruptError: if the value is none of these.
    """
    if not isinstance(value, (bytes, str)):
        raise SessionCorruptError(f"{where}: expected a base64 string, found {type(value).__name__}")
    raw = value.encode("utf-8") if isinstance(value, str) else value
    candidates = [raw]
    with contextlib.suppress(ValueError):  # binascii.Error and UnicodeDecodeError are ValueErrors
        # Standard or URL-safe alphabet, padded or not; anything else is not base64.
        text = raw.strip().decode("ascii").translate(_URLSAFE)
        candidates.append(base64.b64decode(text + "=" * (-len(text) % 4), validate=True))
    for data in candidates:
        if data.startswith(SQLITE_MAGIC):
            return _snapshot_from_sqlite_bytes(data, where)
        if data.strip()[:1] == b"1":  # StringSession strings start with their version, 1
            with contextlib.suppress(SessionCorruptError, ValueError):
                return migrate.read_string_session(data.decode("ascii"))
    raise SessionCorruptError(
        f"{where}: not base64 of a Telethon .session file, nor a StringSession string; the document was not modified"
    )


def _snapshot_from_sqlite_bytes(raw: bytes, where: str) -> SessionSnapshot:
    with tempfile.TemporaryDirectory(prefix="tfs-import-") as tmp:
        path = Path(tmp) / "legacy.session"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        try:
            return read_session_file(path, read_only=False)
        except SessionCorruptError as exc:
            raise SessionCorruptError(f"{where}: {exc}".replace(str(path), "the decoded file")) from exc


def import_legacy_documents(
    client: firestore.Client,
    bot_id: str,
    *,
    user_ids: Iterable[str] | None = None,
    overwrite: bool = False,
    keep_backup: bool = True,
    cipher: SessionCipher | None = None,
    encrypt_pii: bool = False,
    batch_size: int = 500,
    page_size: int = 100,
    progress: migrate.ProgressCallback | None = None,
    report: migrate.BulkReport | None = None,
    destination: FirestoreDestination | None = None,
    stop: Callable[[], bool] | None = None,
) -> migrate.BulkReport:
    """Convert the original system's documents in place, to this library's layout.

    The original system kept ``bots/{bot_id}/user_sessions/{user_id}`` with one field,
    ``session_data``: base64 of a Telethon ``.session`` file. For each such document
    this decodes it and writes the DC, auth key, takeout id, update states, entities
    and sent files in the new layout, in the same document and its subcollections.
    In the same write as the header, ``session_data`` is moved to
    ``legacy_session_data`` (with ``legacy_imported_at``), so the original is kept
    as a backup; ``keep_backup=False`` drops it instead. The backup holds the auth
    key; with a ``cipher`` it is sealed (bound to the session and the field
    ``legacy_session_data``), without one it stays in the clear, as the original was.

    Documents already in the new layout without ``session_data`` are not touched.
    Running it again is safe. Blocks the calling thread.

    :param client: the Firestore client.
    :param bot_id: the bot whose documents are converted.
    :param user_ids: only these users (one read each); default every document, page by page.
    :param overwrite: replace a different login already in the new layout.
    :param keep_backup: keep ``legacy_session_data``; ``False`` drops it.
    :param cipher: seals the sessions and the backup.
    :param encrypt_pii: also seal entity fields (needs ``cipher``).
    :param batch_size: writes per commit (at most 500).
    :param page_size: documents per page when listing the collection.
    :param progress: see :func:`~telethon_firestore_session.migrate.import_snapshots`.
    :param report: see :func:`~telethon_firestore_session.migrate.import_snapshots`.
    :param destination: a ready :class:`FirestoreDestination` (else one is made from the above).
    :param stop: see :func:`~telethon_firestore_session.migrate.import_snapshots`.
    """
    dest = destination or FirestoreDestination(
        client, bot_id, batch_size=batch_size, cipher=cipher, encrypt_pii=encrypt_pii
    )
    fields = [LEGACY_FIELD, "schema_version"]
    call = BULK_RETRY.call(_LIST_TIMEOUT)

    def documents() -> Iterator[DocumentSnapshot[Any]]:
        if user_ids is None:
            for _, snap in iter_sessions(client, bot_id, fields, call=call, page_size=page_size):
                dest.reads += 1
                yield snap
            return
        for uid in user_ids:
            snap = session_document(client, SessionKey(bot_id, uid)).get(field_paths=fields, **call)
            dest.reads += 1
            if snap.exists:
                yield snap

    def sources() -> Iterator[migrate.Source]:
        for snap in documents():
            data = snap.to_dict() or {}
            if LEGACY_FIELD not in data:
                continue
            where = snap.reference.path
            dest._legacy = {where: (data, keep_backup)}  # only the document being imported is kept in memory
            yield where, snap.id, functools.partial(decode_legacy_session_data, data[LEGACY_FIELD], where)

    return migrate.import_snapshots(sources(), dest, overwrite=overwrite, progress=progress, report=report, stop=stop)
