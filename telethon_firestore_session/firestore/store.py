"""``FirestoreSession``: a Telethon session stored in Google Cloud Firestore.

Layout (see DESIGN.md)::

    bots/{bot_id}/user_sessions/{user_id}                session document
    bots/{bot_id}/user_sessions/{user_id}/entities/{id}   one per cached entity (marked id)
    bots/{bot_id}/user_sessions/{user_id}/sent_files/{k}  one per cached upload
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from telethon.tl import types

from telethon_firestore_session.core import (
    Changes,
    EntityRow,
    FileKey,
    SessionCore,
    SessionHeader,
    Store,
    StoredSession,
    reseal_each,
)
from telethon_firestore_session.crypto import SessionCipher
from telethon_firestore_session.errors import (
    ConfigError,
    SchemaVersionError,
    SessionCorruptError,
    SessionError,
    SessionStoreError,
)
from telethon_firestore_session.ids import SessionKey, validate_id
from telethon_firestore_session.sealing import PII_FIELDS, KeyState, Sealer

if TYPE_CHECKING:
    from google.cloud import firestore

__all__ = [
    "SCHEMA_VERSION",
    "FirestoreSession",
    "FirestoreStore",
    "make_client",
    "rotate_firestore_sessions",
    "session_document",
]

log = logging.getLogger("telethon_firestore_session.firestore")

#: Version of the document layout written by this library.
SCHEMA_VERSION = 1

#: Firestore accepts at most 500 writes in one commit; the emulator does not check.
MAX_WRITES_PER_COMMIT = 500

ENTITIES = "entities"
SENT_FILES = "sent_files"


def make_client(project: str | None = None, credentials: Any = None) -> firestore.Client:
    """Build a Firestore client the standard way.

    The project comes from ``project`` or ``GOOGLE_CLOUD_PROJECT``; credentials
    from ``credentials`` or Application Default Credentials. With
    ``FIRESTORE_EMULATOR_HOST`` set, no credentials are needed.
    """
    from google.cloud import firestore

    project = project or os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCLOUD_PROJECT")
    try:
        return firestore.Client(project=project, credentials=credentials)
    except Exception as exc:
        raise ConfigError(
            "GOOGLE_CLOUD_PROJECT",
            "cannot create a Firestore client "
            f"({type(exc).__name__}); set the project (project= or GOOGLE_CLOUD_PROJECT) and "
            "Application Default Credentials, or FIRESTORE_EMULATOR_HOST for the emulator",
        ) from exc


def session_document(client: firestore.Client, key: SessionKey) -> firestore.DocumentReference:
    """The session document of ``key``: ``bots/{bot_id}/user_sessions/{user_id}``."""
    doc: firestore.DocumentReference = (
        client.collection("bots").document(key.bot_id).collection("user_sessions").document(key.user_id)
    )
    return doc


def _file_doc_id(key: FileKey) -> str:
    return f"{key[0].hex()}-{key[1]}-{key[2]}"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _check(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise SessionCorruptError(f"{where}: {what}; the document was not modified")


def _opt(value: object, kind: type | tuple[type, ...]) -> bool:
    return value is None or (isinstance(value, kind) and not isinstance(value, bool))


def parse_session_document(data: dict[str, Any], where: str) -> StoredSession:
    """Validate a session document and turn it into a :class:`StoredSession`."""
    version = data.get("schema_version")
    if version is None and "session_data" in data:
        raise SessionCorruptError(
            f"{where} is in the original system's base64 session_data format; import it with "
            "`telethon-firestore-session import` first. The document was not modified."
        )
    _check(isinstance(version, int) and not isinstance(version, bool), where, "schema_version is missing")
    assert isinstance(version, int)
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(where, version, SCHEMA_VERSION)
    _check(version >= 1, where, f"schema_version {version} is invalid")
    dc_id = data.get("dc_id", 0)
    _check(isinstance(dc_id, int) and not isinstance(dc_id, bool), where, "dc_id must be an integer")
    server = data.get("server_address")
    _check(_opt(server, str), where, "server_address must be a string")
    port = data.get("port")
    _check(_opt(port, int), where, "port must be an integer")
    auth_key = data.get("auth_key")
    _check(_opt(auth_key, bytes), where, "auth_key must be bytes")
    takeout = data.get("takeout_id")
    _check(_opt(takeout, int), where, "takeout_id must be an integer")
    raw_states = data.get("update_states") or {}
    _check(isinstance(raw_states, dict), where, "update_states must be a map")
    states: dict[int, types.updates.State] = {}
    for k, v in raw_states.items():
        try:
            sid = int(k)
            pts, qts, date, seq = (int(v["pts"]), int(v["qts"]), int(v["date"]), int(v["seq"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise SessionCorruptError(
                f"{where}: update state {k!r} is malformed; the document was not modified"
            ) from exc
        states[sid] = types.updates.State(
            pts, qts, datetime.datetime.fromtimestamp(date, tz=datetime.timezone.utc), seq, unread_count=0
        )
    header = SessionHeader(dc_id, server, port, auth_key or None, takeout)
    return StoredSession(header=header, update_states=states)


def _state_value(state: types.updates.State) -> dict[str, int]:
    return {"pts": state.pts, "qts": state.qts, "date": int(state.date.timestamp()), "seq": state.seq}


def _entity_from_doc(doc_id: str, data: dict[str, Any] | None) -> EntityRow | None:
    if data is None:
        return None
    try:
        return EntityRow(
            int(doc_id),
            int(data["hash"]),
            data.get("username"),
            data.get("phone"),
            data.get("name"),
            int(data.get("date") or 0),
        )
    except (KeyError, TypeError, ValueError):
        log.warning("ignoring malformed entity document %s", doc_id)
        return None


class FirestoreStore(Store):
    """Loads and persists one session under ``bots/{bot_id}/user_sessions/{user_id}``."""

    def __init__(
        self,
        key: SessionKey,
        client: firestore.Client,
        *,
        rpc_timeout: float = 10.0,
        lookup_timeout: float = 2.0,
        cipher: SessionCipher | None = None,
        encrypt_pii: bool = False,
    ) -> None:
        from google.api_core import retry as retries

        self.key = key
        self.client = client
        self.doc = session_document(client, key)
        self.where = f"firestore:{self.doc.path}"
        self.sealer = Sealer(key, self.where, cipher, encrypt_pii=encrypt_pii, record="document")
        self.cipher = cipher
        self.encrypt_pii = encrypt_pii
        self._rpc_timeout = rpc_timeout
        self._lookup_timeout = lookup_timeout
        self._retry = retries.Retry(initial=0.1, maximum=2.0, multiplier=2.0, timeout=rpc_timeout)
        self._lookup_retry = retries.Retry(initial=0.05, maximum=0.5, multiplier=2.0, timeout=lookup_timeout)
        self._exists = False
        #: Number of Firestore commits and document writes made by ``write_changes``.
        self.commits = 0
        self.writes = 0

    # -- reading ------------------------------------------------------------------------

    def load(self) -> StoredSession | None:
        try:
            snap = self.doc.get(retry=self._retry, timeout=self._rpc_timeout)
        except Exception as exc:
            raise SessionStoreError(f"cannot read {self.where}: {type(exc).__name__}: {exc}") from exc
        if not snap.exists:
            return None
        self._exists = True
        return self._open_stored(parse_session_document(snap.to_dict() or {}, self.where))

    # -- sealing ----------------------------------------------------------------------------

    def _open_stored(self, stored: StoredSession) -> StoredSession:
        """Open the stored auth key (one rule for both stores: see :mod:`..sealing`)."""
        key, state = self.sealer.open_auth_key(stored.header.auth_key)
        if state is KeyState.PLAINTEXT:
            log.info("%s: plaintext auth key; it is sealed on the next save()", self.where)
        elif state is KeyState.OLD_KEY:
            log.info("%s: auth key sealed with an old key; it is re-sealed on the next save()", self.where)
        return dataclasses.replace(
            stored, header=stored.header._replace(auth_key=key), needs_rewrite=state.needs_rewrite
        )

    def _entity_row(self, doc_id: str, data: dict[str, Any] | None) -> EntityRow | None:
        """An entity row from its document, opening sealed fields."""
        if data is not None and any(isinstance(data.get(f), bytes) for f in PII_FIELDS):
            data = dict(data)
            for f in PII_FIELDS:
                value = data.get(f)
                if isinstance(value, bytes):
                    data[f] = self.sealer.open_entity_field(doc_id, f, value)
        return _entity_from_doc(doc_id, data)

    def _entity_fields(self, row: EntityRow) -> dict[str, Any]:
        """The document of an entity row: plaintext, or sealed with blind indexes."""
        data: dict[str, Any] = {"hash": row.hash}
        for f, value in zip(PII_FIELDS, (row.username, row.phone, row.name), strict=True):
            if not self.sealer.seals_fields:
                data[f] = value
            elif value is None:
                data[f] = data[f"{f}_bi"] = None
            else:
                data[f"{f}_bi"], data[f] = self.sealer.seal_entity_field(row.id, f, value)
        data["date"] = row.date
        return data

    def find_entity_by_ids(self, ids: Sequence[int]) -> EntityRow | None:
        col = self.doc.collection(ENTITIES)
        refs = [col.document(str(i)) for i in ids]
        found: dict[int, EntityRow] = {}
        for snap in self.client.get_all(refs, retry=self._lookup_retry, timeout=self._lookup_timeout):
            if snap.exists:
                row = self._entity_row(snap.id, snap.to_dict())
                if row is not None:
                    found[row.id] = row
        for i in ids:
            if i in found:
                return found[i]
        return None

    def find_entity(self, field: str, value: str) -> EntityRow | None:
        from google.cloud.firestore_v1.base_query import FieldFilter, Or

        flt: Any = FieldFilter(field, "==", value)
        if self.cipher is not None:
            # Sealed rows are found by their blind index under any accepted key;
            # rows written before encrypt_pii was on, by their plaintext.
            indexes = list(self.sealer.blind_indexes(field, value))
            flt = Or([FieldFilter(f"{field}_bi", "in", indexes), flt])
        query = self.doc.collection(ENTITIES).where(filter=flt).limit(10)
        rows = [
            row
            for snap in query.get(retry=self._lookup_retry, timeout=self._lookup_timeout)
            if (row := self._entity_row(snap.id, snap.to_dict())) is not None
        ]
        if not rows:
            return None
        return max(rows, key=lambda r: r.date)

    def find_file(self, key: FileKey) -> tuple[int, int] | None:
        snap = (
            self.doc.collection(SENT_FILES)
            .document(_file_doc_id(key))
            .get(retry=self._lookup_retry, timeout=self._lookup_timeout)
        )
        if not snap.exists:
            return None
        data = snap.to_dict() or {}
        try:
            return int(data["id"]), int(data["hash"])
        except (KeyError, TypeError, ValueError):
            return None

    # -- writing ------------------------------------------------------------------------

    def _header_fields(self, header: SessionHeader) -> dict[str, Any]:
        now = _now()
        fields: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "dc_id": header.dc_id,
            "server_address": header.server_address,
            "port": header.port,
            "auth_key": self.sealer.seal_auth_key(header.auth_key),
            "takeout_id": header.takeout_id,
            "updated_at": now,
            "last_active_at": now,
        }
        if not self._exists:
            fields["created_at"] = now
        return fields

    def write_session(self, header: SessionHeader) -> None:
        try:
            self.doc.set(self._header_fields(header), merge=True, retry=self._retry, timeout=self._rpc_timeout)
        except Exception as exc:
            raise SessionStoreError(f"cannot write {self.where}: {type(exc).__name__}: {exc}") from exc
        self._exists = True

    def _operations(self, changes: Changes) -> Iterator[tuple[Any, dict[str, Any]]]:
        now = _now()
        session: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "updated_at": now, "last_active_at": now}
        if changes.states:
            session["update_states"] = {str(k): _state_value(v) for k, v in changes.states.items()}
        if not self._exists:
            session["created_at"] = now
        yield self.doc, session
        entities = self.doc.collection(ENTITIES)
        for row in changes.entities.values():
            yield entities.document(str(row.id)), self._entity_fields(row)
        files = self.doc.collection(SENT_FILES)
        for key, (fid, fhash) in changes.files.items():
            yield (
                files.document(_file_doc_id(key)),
                {
                    "md5": key[0],
                    "size": key[1],
                    "type": key[2],
                    "id": fid,
                    "hash": fhash,
                },
            )

    def write_changes(self, changes: Changes) -> None:
        batch = self.client.batch()
        count = 0
        for ref, data in self._operations(changes):
            # The session document is merged; entity and file documents are replaced whole.
            batch.set(ref, data, merge=ref is self.doc)
            count += 1
            if count == MAX_WRITES_PER_COMMIT:
                self._commit(batch, count)
                batch, count = self.client.batch(), 0
        if count:
            self._commit(batch, count)
        self._exists = True

    def _commit(self, batch: Any, count: int) -> None:
        batch.commit(retry=self._retry, timeout=self._rpc_timeout)
        self.commits += 1
        self.writes += count

    def iter_entities(self) -> Iterator[EntityRow]:
        for snap in self.doc.collection(ENTITIES).stream(retry=self._retry, timeout=self._rpc_timeout):
            row = self._entity_row(snap.id, snap.to_dict())
            if row is not None:
                yield row

    def iter_files(self) -> Iterator[tuple[FileKey, tuple[int, int]]]:
        for snap in self.doc.collection(SENT_FILES).stream(retry=self._retry, timeout=self._rpc_timeout):
            data = snap.to_dict() or {}
            try:
                key: FileKey = (bytes(data["md5"]), int(data["size"]), int(data["type"]))
                yield key, (int(data["id"]), int(data["hash"]))
            except (KeyError, TypeError, ValueError):
                log.warning("ignoring malformed sent-file document %s", snap.id)

    def delete(self) -> None:
        try:
            for name in (ENTITIES, SENT_FILES):
                self._delete_collection(self.doc.collection(name))
            self.doc.delete(retry=self._retry, timeout=self._rpc_timeout)
        except Exception as exc:
            raise SessionStoreError(f"cannot delete {self.where}: {type(exc).__name__}: {exc}") from exc
        self._exists = False

    def _delete_collection(self, col: Any) -> None:
        while True:
            snaps = col.limit(MAX_WRITES_PER_COMMIT).select([]).get(retry=self._retry, timeout=self._rpc_timeout)
            if not snaps:
                return
            batch = self.client.batch()
            for snap in snaps:
                batch.delete(snap.reference)
            batch.commit(retry=self._retry, timeout=self._rpc_timeout)

    # -- re-sealing: key rotation, and turning encryption on ---------------------------------

    def reseal(self) -> int:
        """Re-seal what this session stores with the cipher's current key.

        The auth key is sealed if it is plaintext or sealed with an old key. Entity
        fields sealed with an old key are sealed again, with fresh blind indexes;
        with ``encrypt_pii``, plaintext entity fields are sealed too. A document is
        only rewritten while it is still the version that was read (a concurrent
        writer wins and the document is read again), so nothing newer is lost.

        :returns: the number of documents rewritten (0 if all were current).
        :raises SessionDecryptionError: if a value cannot be opened; that document
            is left as it is.
        """
        if self.cipher is None:
            raise ConfigError("cipher", "re-sealing needs a cipher")
        return int(self._reseal_header()) + self._reseal_entities()

    def _reseal_header(self) -> bool:
        from google.api_core.exceptions import FailedPrecondition

        for _ in range(_RESEAL_ATTEMPTS):
            snap = self.doc.get(retry=self._retry, timeout=self._rpc_timeout)
            if not snap.exists:
                return False
            stored = self._open_stored(parse_session_document(snap.to_dict() or {}, self.where))
            if not stored.needs_rewrite:
                return False
            fields = {"auth_key": self.sealer.seal_auth_key(stored.header.auth_key), "updated_at": _now()}
            try:
                self.doc.update(
                    fields,
                    option=self.client.write_option(last_update_time=snap.update_time),
                    retry=self._retry,
                    timeout=self._rpc_timeout,
                )
            except FailedPrecondition:
                continue  # written meanwhile: read it again
            return True
        raise SessionStoreError(f"cannot re-seal {self.where}: it changed on every attempt")

    def _resealed_entity(self, doc_id: str, data: dict[str, Any] | None) -> dict[str, Any] | None:
        """The fields to update in an entity document, or ``None`` if it is current."""
        cipher = self.cipher
        assert cipher is not None
        if data is None:
            return None
        values = [data.get(f) for f in PII_FIELDS]
        old_key = any(isinstance(v, bytes) and cipher.needs_reseal(v) for v in values)
        plaintext = self.encrypt_pii and any(isinstance(v, str) for v in values)
        if not (old_key or plaintext):
            return None
        row = self._entity_row(doc_id, data)
        if row is None:
            return None
        fields: dict[str, Any] = {}
        for f, value in zip(PII_FIELDS, (row.username, row.phone, row.name), strict=True):
            if value is not None and (isinstance(data.get(f), bytes) or self.encrypt_pii):
                fields[f"{f}_bi"], fields[f] = self.sealer.seal_entity_field(row.id, f, value)
        return fields

    def _reseal_entities(self) -> int:
        from google.api_core.exceptions import FailedPrecondition

        todo = [
            (snap, fields)
            for snap in self.doc.collection(ENTITIES).stream(retry=self._retry, timeout=self._rpc_timeout)
            if (fields := self._resealed_entity(snap.id, snap.to_dict())) is not None
        ]
        written = 0
        for start in range(0, len(todo), MAX_WRITES_PER_COMMIT):
            chunk = todo[start : start + MAX_WRITES_PER_COMMIT]
            for _ in range(_RESEAL_ATTEMPTS):
                if not chunk:
                    break
                batch = self.client.batch()
                for snap, fields in chunk:
                    batch.update(
                        snap.reference, fields, option=self.client.write_option(last_update_time=snap.update_time)
                    )
                try:
                    batch.commit(retry=self._retry, timeout=self._rpc_timeout)
                except FailedPrecondition:
                    # One of them was written meanwhile: read the chunk again.
                    snaps = self.client.get_all(
                        [snap.reference for snap, _ in chunk], retry=self._retry, timeout=self._rpc_timeout
                    )
                    chunk = [
                        (snap, fields)
                        for snap in snaps
                        if snap.exists and (fields := self._resealed_entity(snap.id, snap.to_dict())) is not None
                    ]
                    continue
                written += len(chunk)
                break
            else:
                raise SessionStoreError(f"cannot re-seal the entities of {self.where}: they changed on every attempt")
        return written


_RESEAL_ATTEMPTS = 5


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

    :returns: how many sessions had at least one document rewritten.
    :raises SessionRotationError: sessions that fail (a value that does not open,
        a document in the original system's format) are logged and skipped; once
        the others are done, one error lists them all (``failures``, the first
        chained as ``__cause__``). They are left as they were.
    """
    if user_id is not None:
        keys = [SessionKey(bot_id, user_id)]
    else:
        sessions = client.collection("bots").document(validate_id("bot_id", bot_id)).collection("user_sessions")
        keys = []
        for ref in sessions.list_documents():
            try:
                keys.append(SessionKey(bot_id, ref.id))
            except SessionError:
                log.warning("rotate: skipping session document %r, whose id is not a valid user_id", ref.id)
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
    * Entities, update states and sent files are written behind by one
      process-wide background writer, within ``flush_interval`` seconds of the
      change (batched, at most 500 writes per commit, retried with backoff).
    * ``close()`` flushes, waiting at most ``close_timeout`` seconds.
    * Entities not in memory are looked up lazily (one point read or one query,
      bounded by ``lookup_timeout``); the answer is cached, misses included.

    Encryption at rest (``cipher``): the auth key is sealed on its way into
    Firestore and opened when the session is created; a plaintext one, or one
    sealed with an old key, is re-sealed by the next ``save()``. With
    ``encrypt_pii=True`` usernames, phone numbers and display names of entities
    are sealed as well and looked up through blind indexes. Sealing happens only
    in the store (on ``save()``, in the background writer and in lazy lookups),
    never on the hot path.

    :param user_id: the user whose session this is (str or int).
    :param bot_id: the bot (or application) the user belongs to.
    :param client: an existing ``google.cloud.firestore.Client`` (e.g. from ``firebase_admin``).
    :param project: the Google Cloud project, when no ``client`` is given
        (default: ``GOOGLE_CLOUD_PROJECT``).
    :param cipher: a :class:`~telethon_firestore_session.crypto.SessionCipher`
        (e.g. ``SessionCipher.from_env()``), or ``None`` to store plaintext.
    :param encrypt_pii: also seal entity usernames, phone numbers and names (needs ``cipher``).
    :raises InvalidSessionIdError: for a ``user_id``/``bot_id`` that could escape its place.
    :raises SessionDecryptionError: if the stored auth key cannot be opened (wrong or
        missing key, tampered, or copied from another session); nothing is written.
    :raises SchemaVersionError: if the document was written by a newer version.
    :raises SessionCorruptError: if the document has the wrong shape.
    :raises SessionStoreError: if Firestore cannot be read.
    """

    def __init__(
        self,
        user_id: str | int,
        *,
        bot_id: str,
        client: firestore.Client | None = None,
        project: str | None = None,
        flush_interval: float = 5.0,
        close_timeout: float = 10.0,
        rpc_timeout: float = 10.0,
        lookup_timeout: float = 2.0,
        cipher: SessionCipher | None = None,
        encrypt_pii: bool = False,
    ) -> None:
        key = SessionKey(bot_id, user_id)
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
        self._firestore = store
        super().__init__(store, flush_interval=flush_interval, close_timeout=close_timeout)

    @property
    def user_id(self) -> str:
        return self.key.user_id

    @property
    def bot_id(self) -> str:
        return self.key.bot_id

    @property
    def document(self) -> firestore.DocumentReference:
        """The session document."""
        return self._firestore.doc
