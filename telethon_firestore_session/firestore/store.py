"""``FirestoreStore``: loads and persists one session in the layout of :mod:`.layout`."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from telethon_firestore_session.breaker import LookupBreaker
from telethon_firestore_session.errors import (
    ConfigError,
    SessionCorruptError,
    SessionDecryptionError,
    SessionError,
    SessionInUseError,
    wrap_store_errors,
)
from telethon_firestore_session.ids import SessionKey
from telethon_firestore_session.sealing import PII_FIELDS, KeyState, Sealer
from telethon_firestore_session.store import Changes, EntityRow, FileKey, SessionHeader, Store, StoredSession

from .layout import (
    ENTITIES,
    LOOKUP_RETRY,
    RPC_RETRY,
    SENT_FILES,
    Write,
    commit_in_chunks,
    delete_subcollections,
    entity_fields,
    entity_row,
    file_doc_id,
    file_entry,
    file_fields,
    header_fields,
    kept_changing,
    parse_session_document,
    session_document,
    states_field,
    touch_fields,
    utcnow,
    where,
)

if TYPE_CHECKING:
    from google.cloud import firestore
    from google.cloud.firestore_v1.base_document import DocumentSnapshot

    from telethon_firestore_session.crypto import SessionCipher

    from .lease import FirestoreLease

__all__ = ["FirestoreStore"]

log = logging.getLogger(__name__)

#: Conditional re-seal writes that lose to another writer are read and tried again this often.
_RESEAL_ATTEMPTS = 5


class FirestoreStore(Store):
    """Loads and persists one session under ``bots/{bot_id}/user_sessions/{user_id}``.

    Every call is bounded by ``rpc_timeout`` (lazy lookups by ``lookup_timeout``),
    retries included. Sealing goes through :class:`~telethon_firestore_session.sealing.Sealer`.
    Stores on one client share one :class:`~telethon_firestore_session.breaker.LookupBreaker`.

    :param key: the session's key (bot and user).
    :param client: the Firestore client.
    :param rpc_timeout: seconds each call may take, retries included.
    :param lookup_timeout: seconds one lazy lookup may take (it runs on the caller's thread).
    :param cipher: seals the auth key (and, with ``encrypt_pii``, entity fields); ``None``: plaintext.
    :param encrypt_pii: also seal entity usernames, phone numbers and names.
    """

    def __init__(
        self,
        key: SessionKey,
        client: firestore.Client,
        *,
        rpc_timeout: float = 10.0,
        lookup_timeout: float = 1.0,
        cipher: SessionCipher | None = None,
        encrypt_pii: bool = False,
    ) -> None:
        self.key = key
        self.client = client
        self.doc = session_document(client, key)
        self.where = where(self.doc)
        self.breaker = LookupBreaker.shared(client, f"firestore:{client.project}")
        self.sealer = Sealer(key, self.where, cipher, encrypt_pii=encrypt_pii, record="document")
        self.cipher = cipher
        self.encrypt_pii = encrypt_pii
        self._call = RPC_RETRY.call(rpc_timeout)
        self._lookup = LOOKUP_RETRY.call(lookup_timeout)
        self._exists = False
        #: The lease that fences this session's writes while the session manager holds it
        #: (see :meth:`FirestoreLease.commit`); ``None``: unconditional writes.
        self.fence: FirestoreLease | None = None
        #: Number of Firestore commits and document writes made by ``write_changes``.
        self.commits = 0
        self.writes = 0

    # -- reading ------------------------------------------------------------------------

    def load(self) -> StoredSession | None:
        with wrap_store_errors("read", self.where):
            snap = self.doc.get(**self._call)
        if not snap.exists:
            return None
        self._exists = True
        return self.parse(snap.to_dict() or {})

    def parse(self, data: dict[str, Any]) -> StoredSession:
        """A session document's data, checked and its auth key opened; raises what :meth:`load` raises.

        Writes nothing: the lease runs it before its first write (``FirestoreLease(check=...)``).

        :param data: the session document's fields.
        """
        return self._open_stored(parse_session_document(data, self.where))

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

    def find_entity_by_ids(self, ids: Sequence[int]) -> EntityRow | None:
        col = self.doc.collection(ENTITIES)
        found: dict[int, EntityRow] = {}
        for snap in self.client.get_all([col.document(str(i)) for i in ids], **self._lookup):
            if snap.exists and (row := entity_row(snap.id, snap.to_dict(), self.sealer)) is not None:
                found[row.id] = row
        return next((found[i] for i in ids if i in found), None)

    def find_entity(self, field: str, value: str) -> EntityRow | None:
        from google.cloud.firestore_v1.base_query import FieldFilter, Or

        flt: Any = FieldFilter(field, "==", value)
        if self.cipher is not None:
            # Sealed rows are found by their blind index under any accepted key;
            # rows written before encrypt_pii was on, by their plaintext.
            indexes = list(self.sealer.blind_indexes(field, value))
            flt = Or([FieldFilter(f"{field}_bi", "in", indexes), flt])
        query = self.doc.collection(ENTITIES).where(filter=flt).limit(10)
        rows: list[EntityRow] = []
        failed: SessionError | None = None
        for snap in query.get(**self._lookup):
            try:
                row = entity_row(snap.id, snap.to_dict(), self.sealer)
            except (SessionCorruptError, SessionDecryptionError) as exc:
                # One unreadable document never hides the real owner of the value.
                log.warning("skipping entity document %s in a lookup of %s: %s", snap.id, self.where, exc)
                failed = failed or exc
                continue
            if row is not None and getattr(row, field) == value:  # by the plaintext, or the index of the value
                rows.append(row)
        if rows:
            return max(rows, key=lambda r: r.date)
        if failed is not None:
            raise failed
        return None

    def find_file(self, key: FileKey) -> tuple[int, int] | None:
        snap = self.doc.collection(SENT_FILES).document(file_doc_id(key)).get(**self._lookup)
        return file_entry(snap.id, snap.to_dict() or {}, self.where)[1] if snap.exists else None

    def iter_entities(self) -> Iterator[EntityRow]:
        with wrap_store_errors("read the entities of", self.where):
            for snap in self.doc.collection(ENTITIES).stream(**self._call):
                if (row := entity_row(snap.id, snap.to_dict(), self.sealer)) is not None:
                    yield row

    def iter_files(self) -> Iterator[tuple[FileKey, tuple[int, int]]]:
        with wrap_store_errors("read the sent files of", self.where):
            for snap in self.doc.collection(SENT_FILES).stream(**self._call):
                yield file_entry(snap.id, snap.to_dict() or {}, self.where)

    # -- writing ------------------------------------------------------------------------

    def _header_fields(self, header: SessionHeader) -> dict[str, Any]:
        fields = touch_fields(created=not self._exists)
        fields.update(header_fields(header, self.sealer.seal_auth_key(header.auth_key)))
        return fields

    def write_session(self, header: SessionHeader) -> None:
        with wrap_store_errors("write", self.where):
            if self.fence is None:
                self.doc.set(self._header_fields(header), merge=True, **self._call)
            elif self.fence.commit([Write(self.doc, "merge", self._header_fields(header))], self._call) is None:
                lost_to = self.fence.lost_to
                raise SessionInUseError(self.where, lost_to.holder if lost_to else None)
        self._exists = True

    def change_writes(
        self, changes: Changes, header: SessionHeader | None = None, *, touch: bool = False
    ) -> Iterator[Write]:
        """The document writes that store ``changes`` (and ``header``, if given), session document first.

        The session document is merged (times, ``update_states``, the header) when
        there are update states or a header to write, when it does not exist yet, or
        with ``touch`` (so writes of entities alone cost no session-document write);
        entity and sent-file documents are replaced whole, sealed as this store seals them.
        Nothing is written: commit them with :func:`.layout.commit_in_chunks` (as
        :meth:`write_changes` does) or in a caller's own batches.

        :param changes: the records to write.
        :param header: the header to write too, if any.
        :param touch: merge the session document even without update states or a header.
        """
        if touch or header is not None or changes.states or not self._exists:
            session = self._header_fields(header) if header is not None else touch_fields(created=not self._exists)
            if changes.states:
                session["update_states"] = states_field(changes.states)
            yield Write(self.doc, "merge", session)
        entities = self.doc.collection(ENTITIES)
        for row in changes.entities.values():
            yield Write(entities.document(str(row.id)), "set", entity_fields(row, self.sealer))
        files = self.doc.collection(SENT_FILES)
        for key, value in changes.files.items():
            yield Write(files.document(file_doc_id(key)), "set", file_fields(key, value))

    def write_changes(self, changes: Changes) -> None:
        if self.fence is not None:
            # The session document comes first: the lease's commit turns it into its guard write.
            sizes = self.fence.commit(self.change_writes(changes, touch=True), self._call)
            if sizes is None:  # never retried: the session belongs to another holder now
                log.warning("%s: dropped %d records: this instance lost the lease", self.where, len(changes))
                return
        else:
            sizes = [len(chunk) for chunk, _ in commit_in_chunks(self.client, self.change_writes(changes), self._call)]
        self.commits += len(sizes)
        self.writes += sum(sizes)
        self._exists = True

    def writes_session_document(self) -> bool:
        """A leased session's every commit writes the session document (its guard): states ride along."""
        return self.fence is not None

    def close(self) -> None:
        """Release the lease that fences this session, if any: a leased session's use ends when it closes."""
        if self.fence is not None:
            self.fence.release()

    def delete(self) -> None:
        with wrap_store_errors("delete", self.where):
            delete_subcollections(self.client, [self.doc], self._call)
            self.doc.delete(**self._call)
        self._exists = False

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
        with wrap_store_errors("re-seal", self.where):
            return int(self._reseal_header()) + self._reseal_entities()

    def _reseal_header(self) -> bool:
        from google.api_core.exceptions import FailedPrecondition

        for _ in range(_RESEAL_ATTEMPTS):
            snap = self.doc.get(**self._call)
            if not snap.exists:
                return False
            stored = self._open_stored(parse_session_document(snap.to_dict() or {}, self.where))
            if not stored.needs_rewrite:
                return False
            fields = {"auth_key": self.sealer.seal_auth_key(stored.header.auth_key), "updated_at": utcnow()}
            option = self.client.write_option(last_update_time=snap.update_time)
            try:
                self.doc.update(fields, option=option, **self._call)
            except FailedPrecondition:
                continue  # written meanwhile: read it again
            return True
        raise kept_changing("re-seal", self.where)

    def _reseal_write(self, snap: DocumentSnapshot[Any]) -> Write | None:
        """The update that re-seals an entity document, or ``None`` if it is current."""
        data = snap.to_dict()
        if data is None:
            return None
        values = [data.get(f) for f in PII_FIELDS]
        old_key = any(isinstance(v, bytes) and self.sealer.needs_reseal(v) for v in values)
        plaintext = self.encrypt_pii and any(isinstance(v, str) for v in values)
        if not (old_key or plaintext) or (row := entity_row(snap.id, data, self.sealer)) is None:
            return None
        fields: dict[str, Any] = {}
        for f, value in zip(PII_FIELDS, (row.username, row.phone, row.name), strict=True):
            if value is not None and (isinstance(data.get(f), bytes) or self.encrypt_pii):
                fields[f"{f}_bi"], fields[f] = self.sealer.seal_entity_field(row.id, f, value)
        return Write(snap.reference, "update", fields, snap.update_time)

    def _reseal_entities(self) -> int:
        from google.api_core.exceptions import FailedPrecondition

        stream = self.doc.collection(ENTITIES).stream(**self._call)
        writes = [w for snap in stream if (w := self._reseal_write(snap)) is not None]
        conflicts = (FailedPrecondition,)
        written = 0
        for chunk, results in commit_in_chunks(self.client, writes, self._call, tolerate=conflicts):
            attempts = 1
            while results is None:  # one of them was written meanwhile: read the chunk again
                if attempts == _RESEAL_ATTEMPTS:
                    raise kept_changing("re-seal the entities of", self.where)
                attempts += 1
                snaps = self.client.get_all([w.ref for w in chunk], **self._call)
                chunk = [w for snap in snaps if snap.exists and (w := self._reseal_write(snap)) is not None]
                _, results = next(commit_in_chunks(self.client, chunk, self._call, tolerate=conflicts), (chunk, []))
            written += len(chunk)
        return written
