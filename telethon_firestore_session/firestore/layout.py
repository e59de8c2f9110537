"""Where a session lives in Firestore and how it is written: the one place that spells the layout.

::

    bots/{bot_id}/user_sessions/{user_id}                session document
    bots/{bot_id}/user_sessions/{user_id}/entities/{id}   one per cached entity (marked id)
    bots/{bot_id}/user_sessions/{user_id}/sent_files/{k}  one per cached upload
    bots/{bot_id}/bot_session/session                    the bot's own session (same layout)

Besides the paths and the document codecs, this module holds what every Firestore
module shares: the retry policies (:class:`RetryPolicy`), the one helper that commits
writes at most 500 per commit (:func:`commit_in_chunks`), the one deleter of a
session's subcollections (:func:`delete_subcollections`) and the one listing of a
bot's users (:func:`iter_sessions`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import itertools
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from telethon.tl import types

from telethon_firestore_session.errors import (
    InvalidSessionIdError,
    SchemaVersionError,
    SessionCorruptError,
    SessionStoreError,
)
from telethon_firestore_session.ids import BotSessionKey, SessionKey, validate_id
from telethon_firestore_session.sealing import PII_FIELDS, Sealer
from telethon_firestore_session.store import EntityRow, FileKey, SessionHeader, StoredSession

if TYPE_CHECKING:
    from google.cloud import firestore
    from google.cloud.firestore_v1.base_document import DocumentSnapshot
    from google.cloud.firestore_v1.types.write import WriteResult

log = logging.getLogger(__name__)

#: Version of the document layout written by this library.
SCHEMA_VERSION = 1
#: Firestore accepts at most 500 writes in one commit; the emulator does not check, so we do.
MAX_WRITES_PER_COMMIT = 500

BOTS = "bots"
USER_SESSIONS = "user_sessions"
ENTITIES = "entities"
SENT_FILES = "sent_files"
#: The collection of the bot's own session document (:class:`~telethon_firestore_session.ids.BotSessionKey`).
BOT_SESSION = "bot_session"
#: The subcollections of a session document; deleting a session deletes them.
SUBCOLLECTIONS = (ENTITIES, SENT_FILES)

#: Keyword arguments of one Firestore call: ``retry=`` and ``timeout=`` (see :meth:`RetryPolicy.call`).
CallOptions = Mapping[str, Any]


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


# -- paths ----------------------------------------------------------------------------------


def bot_document(client: firestore.Client, bot_id: str) -> firestore.DocumentReference:
    """``bots/{bot_id}`` (it need not exist: its ``user_sessions`` hold the sessions)."""
    return client.collection(BOTS).document(validate_id("bot_id", bot_id))


def sessions_collection(client: firestore.Client, bot_id: str) -> firestore.CollectionReference:
    """``bots/{bot_id}/user_sessions``: the session documents of one bot."""
    col: firestore.CollectionReference = bot_document(client, bot_id).collection(USER_SESSIONS)
    return col


def session_document(client: firestore.Client, key: SessionKey) -> firestore.DocumentReference:
    """The session document of ``key``: ``bots/{bot_id}/user_sessions/{user_id}``, the bot's ``bot_session/session``.

    :param client: the Firestore client (no call is made).
    :param key: the session's key.
    """
    if isinstance(key, BotSessionKey):
        doc: firestore.DocumentReference = bot_document(client, key.bot_id).collection(BOT_SESSION).document("session")
        return doc
    return sessions_collection(client, key.bot_id).document(key.user_id)


def where(ref: firestore.DocumentReference | firestore.CollectionReference) -> str:
    """How messages and logs name a document or a collection: ``firestore:{path}``."""
    path = getattr(ref, "path", None)  # a collection has none: its parent document's, and its id
    if path is None:
        parent = ref.parent
        path = f"{parent.path}/{ref.id}" if parent is not None else ref.id
    return f"firestore:{path}"


def sessions_where(bot_id: str) -> str:
    """How messages and logs name the sessions of a bot: ``firestore:bots/{bot_id}/user_sessions``."""
    return f"firestore:{BOTS}/{bot_id}/{USER_SESSIONS}"


# -- retries --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff (doubling from ``initial`` to ``maximum`` seconds) on transient errors.

    :meth:`call` bounds the whole call, retries included, by one timeout.
    """

    initial: float
    maximum: float

    def call(self, timeout: float) -> dict[str, Any]:
        """``retry=`` and ``timeout=`` for Firestore calls that must end within ``timeout`` seconds."""
        from google.api_core import retry as retries

        retry = retries.Retry(initial=self.initial, maximum=self.maximum, multiplier=2.0, timeout=timeout)
        return {"retry": retry, "timeout": timeout}


#: Reads and writes of sessions and of the manager's directory (``rpc_timeout``).
RPC_RETRY = RetryPolicy(initial=0.1, maximum=2.0)
#: Lazy entity lookups (``lookup_timeout``): a quick miss is better than a late answer.
LOOKUP_RETRY = RetryPolicy(initial=0.05, maximum=0.5)
#: Lease renewal and release, which run on the shared writer thread.
LEASE_RETRY = RetryPolicy(initial=0.05, maximum=1.0)
#: Bulk imports: commits of up to 500 writes, retried patiently.
BULK_RETRY = RetryPolicy(initial=0.2, maximum=5.0)


def kept_changing(what: str, where: str) -> SessionStoreError:
    """The error when a conditional write lost to another writer on every attempt."""
    return SessionStoreError(f"cannot {what} {where}: it changed on every attempt")


# -- writes, at most 500 per commit -----------------------------------------------------------


class Write(NamedTuple):
    """One document write for :func:`commit_in_chunks`.

    ``kind`` is ``"set"`` (replace the document with ``fields``), ``"merge"`` (merge
    ``fields`` into it), ``"update"`` (change ``fields`` of an existing document) or
    ``"delete"``. With ``unchanged_since`` (a document's update time) an update or a
    delete fails unless the document is unchanged since then.
    """

    ref: firestore.DocumentReference
    kind: Literal["set", "merge", "update", "delete"]
    fields: dict[str, Any] | None = None
    unchanged_since: Any = None

    @property
    def merge(self) -> bool:
        return self.kind == "merge"


def commit_in_chunks(
    client: firestore.Client,
    writes: Iterable[Write],
    call: CallOptions,
    *,
    limit: int = MAX_WRITES_PER_COMMIT,
    tolerate: tuple[type[BaseException], ...] = (),
) -> Iterator[tuple[list[Write], list[WriteResult] | None]]:
    """Commit ``writes`` in order, at most ``limit`` (<= 500) per commit; yield each chunk with its results.

    A generator: a chunk is committed when it is reached, so memory holds one chunk
    of a lazy ``writes``. A commit that fails with one of ``tolerate`` is yielded
    with ``None`` instead of results and the next chunk follows; any other error
    propagates. A commit is all or nothing: after a failed precondition
    (``FailedPrecondition``, ``NotFound``) nothing of the chunk was written.
    """
    if not 1 <= limit <= MAX_WRITES_PER_COMMIT:
        raise ValueError(f"a commit holds 1 to {MAX_WRITES_PER_COMMIT} writes, not {limit}")
    pending = iter(writes)
    while chunk := list(itertools.islice(pending, limit)):
        batch = client.batch()
        for w in chunk:
            option = client.write_option(last_update_time=w.unchanged_since) if w.unchanged_since is not None else None
            if w.kind == "delete":
                batch.delete(w.ref, option=option)
            elif w.kind == "update":
                batch.update(w.ref, w.fields or {}, option=option)
            else:
                batch.set(w.ref, w.fields or {}, merge=w.merge)
        try:
            results = batch.commit(**call)
        except tolerate:
            yield chunk, None
            continue
        yield chunk, list(results)


# -- listing --------------------------------------------------------------------------------


def _paged(query: Any, call: CallOptions, page_size: int) -> Iterator[DocumentSnapshot[Any]]:
    """Every result of ``query`` in document-id order, ``page_size`` per call (each bounded by ``call``)."""
    from google.cloud.firestore_v1.field_path import FieldPath

    query = query.order_by(FieldPath.document_id()).limit(page_size)
    last = None
    while True:
        page = (query.start_after(last) if last is not None else query).get(**call)
        yield from page
        if len(page) < page_size:
            return
        last = page[-1]


def iter_sessions(
    client: firestore.Client,
    bot_id: str,
    fields: Sequence[str] = (),
    *,
    call: CallOptions,
    page_size: int = 1000,
) -> Iterator[tuple[str, DocumentSnapshot[Any]]]:
    """Every session of ``bot_id`` as ``(user_id, snapshot holding only fields)``, in user-id order.

    The one way to list a bot's users: ``page_size`` documents per query, each query
    bounded by ``call``. Documents whose id is not a valid user id are logged and skipped.
    """
    query = sessions_collection(client, bot_id).select(list(fields))
    for snap in _paged(query, call, page_size):
        try:
            uid = validate_id("user_id", snap.id)
        except InvalidSessionIdError:
            log.warning("%s: skipping document %r, whose id is not a valid user_id", sessions_where(bot_id), snap.id)
            continue
        yield uid, snap


# -- deleting ---------------------------------------------------------------------------------

#: Sessions whose subcollections are listed at once by a parallel :func:`delete_subcollections`.
_DELETE_ROUND = 64


def _children(doc: firestore.DocumentReference, call: CallOptions) -> Iterator[firestore.DocumentReference]:
    for name in SUBCOLLECTIONS:
        for snap in _paged(doc.collection(name).select([]), call, MAX_WRITES_PER_COMMIT):
            yield snap.reference


def delete_subcollections(
    client: firestore.Client, docs: Sequence[firestore.DocumentReference], call: CallOptions, *, workers: int = 1
) -> int:
    """Delete the ``entities`` and ``sent_files`` of ``docs`` (not ``docs`` themselves); return how many.

    Documents are listed by id only, 500 per query, and deleted at most 500 per
    commit, across sessions. One session is listed a page at a time, between its
    commits. With ``workers > 1`` the sessions are taken 64 at a time, listed by
    ``workers`` threads (one small query per subcollection each), then deleted:
    memory holds the references of 64 sessions.

    Every call is bounded by ``call``; errors propagate (what was committed stays deleted).

    Not ``Client.recursive_delete()``: its listing and ``BatchWrite`` calls take no
    timeout (the library's defaults are 60 to 300 s, so a hung backend blocks that
    long), its default ``BulkWriter`` loses a failed ``BatchWrite`` and still reports
    the documents as deleted, it sends 20 deletes per call at most 500 per second, and
    it cannot delete a document only if unchanged, as the manager's cleanup must.
    """

    def deletes(refs: Iterable[firestore.DocumentReference]) -> int:
        return sum(len(chunk) for chunk, _ in commit_in_chunks(client, (Write(r, "delete") for r in refs), call))

    if workers <= 1:
        return deletes(ref for doc in docs for ref in _children(doc, call))
    deleted = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tfs-delete") as pool:
        for start in range(0, len(docs), _DELETE_ROUND):
            listed = pool.map(lambda doc: list(_children(doc, call)), docs[start : start + _DELETE_ROUND])
            deleted += deletes(ref for refs in listed for ref in refs)
    return deleted


# -- the session document -----------------------------------------------------------------------


def _check(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise SessionCorruptError(f"{where}: {what}; the document was not modified")


def _opt(value: object, kind: type | tuple[type, ...]) -> bool:
    return value is None or (isinstance(value, kind) and not isinstance(value, bool))


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_id(text: object) -> int | None:
    """The integer a document id or map key spells canonically (``"-100"``), else ``None``."""
    try:
        value = int(text)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
    return value if str(value) == text else None


def parse_session_document(data: dict[str, Any], where: str) -> StoredSession:
    """Validate a session document and turn it into a :class:`StoredSession` (the auth key as stored).

    :param data: the document's fields.
    :param where: how errors name the document.
    :raises SchemaVersionError: if a newer version wrote it.
    :raises SessionCorruptError: if it has the wrong shape.
    """
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
    raw_states = data.get("update_states")
    _check(raw_states is None or isinstance(raw_states, dict), where, "update_states must be a map")
    states: dict[int, types.updates.State] = {}
    for k, v in (raw_states or {}).items():
        sid = _int_id(k)
        values: list[Any] = [v.get(f) for f in ("pts", "qts", "date", "seq")] if isinstance(v, dict) else []
        _check(
            sid is not None and len(values) == 4 and all(_int(x) for x in values),
            where,
            f"update state {k!r} is malformed",
        )
        assert sid is not None
        pts, qts, date, seq = values
        try:
            when = datetime.datetime.fromtimestamp(date, tz=datetime.timezone.utc)
        except (OverflowError, OSError, ValueError) as exc:
            raise SessionCorruptError(
                f"{where}: the date of update state {k!r} is out of range; the document was not modified"
            ) from exc
        states[sid] = types.updates.State(pts, qts, when, seq, unread_count=0)
    header = SessionHeader(dc_id, server, port, auth_key or None, takeout)
    return StoredSession(header=header, update_states=states)


def touch_fields(*, created: bool) -> dict[str, Any]:
    """What every write of the session document sets: the schema version and the times."""
    now = utcnow()
    fields: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "updated_at": now, "last_active_at": now}
    if created:
        fields["created_at"] = now
    return fields


def header_fields(header: SessionHeader, stored_auth_key: bytes | None) -> dict[str, Any]:
    """The header in the session document; ``stored_auth_key`` is the key as stored (sealed or not)."""
    return {
        "dc_id": header.dc_id,
        "server_address": header.server_address,
        "port": header.port,
        "auth_key": stored_auth_key,
        "takeout_id": header.takeout_id,
    }


def states_field(states: Mapping[int, types.updates.State]) -> dict[str, dict[str, int]]:
    """``update_states``: one map per entity id (0 for the account)."""
    return {
        str(k): {"pts": s.pts, "qts": s.qts, "date": int(s.date.timestamp()), "seq": s.seq} for k, s in states.items()
    }


# -- entity and sent-file documents -----------------------------------------------------------


def entity_fields(row: EntityRow, sealer: Sealer) -> dict[str, Any]:
    """The document of an entity row: plaintext, or sealed fields with their blind indexes (``{field}_bi``)."""
    data: dict[str, Any] = {"hash": row.hash}
    for f, value in zip(PII_FIELDS, (row.username, row.phone, row.name), strict=True):
        if not sealer.seals_fields:
            data[f] = value
        elif value is None:
            data[f] = data[f"{f}_bi"] = None
        else:
            data[f"{f}_bi"], data[f] = sealer.seal_entity_field(row.id, f, value)
    data["date"] = row.date
    return data


def entity_row(doc_id: str, data: dict[str, Any] | None, sealer: Sealer) -> EntityRow | None:
    """The entity row of a document, sealed fields opened; ``None`` if there is no document.

    :raises SessionCorruptError: for a document of the wrong shape (it is not modified).
    :raises SessionDecryptionError: for a sealed field that does not open.
    """
    if data is None:
        return None
    eid = _int_id(doc_id)
    _check(eid is not None, sealer.where, f"entity document {doc_id!r} has an id that is not an entity id")
    assert eid is not None
    fields: list[str | None] = []
    for f in PII_FIELDS:
        value = data.get(f)
        if isinstance(value, bytes):
            value = sealer.open_entity_field(doc_id, f, value)
            # Lookups compare the index: it must be the opened value's, or the record was changed outside.
            sealer.check_blind_index(doc_id, f, value, data.get(f"{f}_bi"))
        _check(_opt(value, str), sealer.where, f"{f} of entity document {doc_id} must be a string")
        fields.append(value)
    ehash: Any = data.get("hash")
    date: Any = data.get("date")
    _check(_int(ehash) and _opt(date, int), sealer.where, f"hash or date of entity document {doc_id} is not an integer")
    username, phone, name = fields
    return EntityRow(eid, ehash, username, phone, name, date or 0)


def file_doc_id(key: FileKey) -> str:
    """``{md5 hex}-{size}-{type}``: the id of a sent-file document."""
    return f"{key[0].hex()}-{key[1]}-{key[2]}"


def file_fields(key: FileKey, value: tuple[int, int]) -> dict[str, Any]:
    return {"md5": key[0], "size": key[1], "type": key[2], "id": value[0], "hash": value[1]}


def file_entry(doc_id: str, data: dict[str, Any], where: str) -> tuple[FileKey, tuple[int, int]]:
    """``(key, (id, access_hash))`` of a sent-file document.

    :raises SessionCorruptError: for a document of the wrong shape (it is not modified).
    """
    md5, size, kind, fid, fhash = (data.get(f) for f in ("md5", "size", "type", "id", "hash"))
    ok = isinstance(md5, bytes) and all(_int(v) for v in (size, kind, fid, fhash))
    key: Any = (md5, size, kind)
    _check(
        ok and file_doc_id(key) == doc_id, where, f"sent-file document {doc_id} is malformed or not the one of its id"
    )
    return key, (fid, fhash)  # type: ignore[return-value]
