"""Users of one bot in Firestore: the manager's directory of ``bots/{bot_id}/user_sessions``."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from telethon_firestore_session.errors import InvalidSessionIdError, store_error
from telethon_firestore_session.ids import validate_id
from telethon_firestore_session.manager.directory import (
    UNSET,
    ApiCredentials,
    Counts,
    InactiveUser,
    SessionDirectory,
    UserRecord,
)

from .lease import FirestoreLease, parse_lease

if TYPE_CHECKING:
    from google.cloud import firestore

    from telethon_firestore_session.core import SessionCore
    from telethon_firestore_session.crypto import SessionCipher

_UTC = datetime.timezone.utc


def _now() -> datetime.datetime:
    return datetime.datetime.now(_UTC)


log = logging.getLogger("telethon_firestore_session.directory")
#: Firestore accepts at most 500 writes in one commit.
_MAX_WRITES = 500
#: Threads listing subcollections during cleanup (each listing is one small query).
_LIST_WORKERS = 8


def _fs_time(value: object) -> datetime.datetime | None:
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=_UTC)
    return None


class FirestoreDirectory(SessionDirectory):
    """Users of one bot in Firestore: the documents of ``bots/{bot_id}/user_sessions``.

    :param client: the ``google.cloud.firestore.Client`` the sessions use.
    :param owns_client: close ``client`` in :meth:`close` (set when the directory built it).
    :param rpc_timeout: deadline of each Firestore call (with retries inside it).
    """

    backend = "firestore"
    uses_leases = True

    #: Fields read for listings and cleanup (never the auth key).
    _LIST_FIELDS = (
        "registered_at",
        "created_at",
        "last_active_at",
        "logged_in",
        "pending_login.expires_at",
        "api_credentials.api_id",
        "lease",
    )

    def __init__(
        self,
        client: firestore.Client,
        bot_id: str,
        *,
        cipher: SessionCipher | None = None,
        encrypt_pii: bool = False,
        rpc_timeout: float = 10.0,
        owns_client: bool = False,
    ) -> None:
        super().__init__(bot_id, cipher=cipher)
        self.client = client
        self.encrypt_pii = encrypt_pii
        self.rpc_timeout = rpc_timeout
        self.owns_client = owns_client
        self.collection = client.collection("bots").document(self.bot_id).collection("user_sessions")
        self.where = f"firestore:bots/{self.bot_id}/user_sessions"

    def _retry(self, timeout: float | None = None) -> Any:
        from google.api_core import retry as retries

        return retries.Retry(initial=0.1, maximum=2.0, multiplier=2.0, timeout=timeout or self.rpc_timeout)

    def _kw(self) -> dict[str, Any]:
        return {"retry": self._retry(), "timeout": self.rpc_timeout}

    def _doc(self, user_id: str) -> firestore.DocumentReference:
        from .store import session_document

        return session_document(self.client, self.key(user_id))

    def open_session(self, user_id: str, *, flush_interval: float, close_timeout: float) -> SessionCore:
        from .store import FirestoreSession

        return FirestoreSession(
            user_id,
            bot_id=self.bot_id,
            client=self.client,
            flush_interval=flush_interval,
            close_timeout=close_timeout,
            rpc_timeout=self.rpc_timeout,
            cipher=self.cipher,
            encrypt_pii=self.encrypt_pii,
        )

    def new_lease(self, user_id: str, *, holder: str, ttl: float) -> FirestoreLease:
        doc = self._doc(user_id)
        return FirestoreLease(
            doc,
            self.client,
            holder=holder,
            ttl=ttl,
            rpc_timeout=min(self.rpc_timeout, 5.0),
            where=f"firestore:{doc.path}",
        )

    def register(self, user_id: str, credentials: ApiCredentials | None) -> bool:
        from google.api_core.exceptions import Conflict

        from .store import SCHEMA_VERSION

        doc = self._doc(user_id)
        now = _now()
        data: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "created_at": now,
            "updated_at": now,
            "registered_at": now,
            "last_active_at": now,
            "logged_in": False,
        }
        if credentials is not None:
            data["api_credentials"] = self._credentials_value(user_id, credentials)
        try:
            doc.create(data, **self._kw())
            return True
        except Conflict:
            pass
        except Exception as exc:
            raise store_error("register", f"firestore:{doc.path}", exc) from exc
        if credentials is not None:
            try:
                doc.update({"api_credentials": data["api_credentials"], "updated_at": now}, **self._kw())
            except Exception as exc:
                raise store_error("update", f"firestore:{doc.path}", exc) from exc
        return False

    def _record(self, user_id: str, data: dict[str, Any], *, full: bool) -> UserRecord:
        pending = data.get("pending_login")
        creds = data.get("api_credentials")
        return UserRecord(
            user_id=user_id,
            registered_at=_fs_time(data.get("registered_at")) or _fs_time(data.get("created_at")),
            last_active_at=_fs_time(data.get("last_active_at")),
            logged_in=data.get("logged_in") is True,
            login_pending=isinstance(pending, dict),
            custom_api=isinstance(creds, dict),
            has_auth_key=data.get("auth_key") is not None if full else None,
            lease=parse_lease(data.get("lease")),
            api_credentials=self._credentials(user_id, creds) if full else None,
            pending_login=self._pending(user_id, pending, _fs_time) if full else None,
        )

    def get_user(self, user_id: str) -> UserRecord | None:
        doc = self._doc(user_id)
        try:
            snap = doc.get(**self._kw())
        except Exception as exc:
            raise store_error("read", f"firestore:{doc.path}", exc) from exc
        if not snap.exists:
            return None
        return self._record(user_id, snap.to_dict() or {}, full=True)

    def update_user(self, user_id: str, *, pending_login: Any = UNSET, logged_in: Any = UNSET) -> bool:
        from google.api_core.exceptions import NotFound
        from google.cloud import firestore

        now = _now()
        fields: dict[str, Any] = {"updated_at": now}
        if pending_login is not UNSET:
            fields["pending_login"] = (
                firestore.DELETE_FIELD if pending_login is None else self._pending_value(user_id, pending_login)
            )
        if logged_in is not UNSET:
            fields["logged_in"] = bool(logged_in)
            fields["logged_in_at"] = now if logged_in else firestore.DELETE_FIELD
        doc = self._doc(user_id)
        try:
            doc.update(fields, **self._kw())
        except NotFound:
            return False
        except Exception as exc:
            raise store_error("update", f"firestore:{doc.path}", exc) from exc
        return True

    def touch(self, user_id: str) -> None:
        """Nothing to do: taking and renewing the lease writes ``last_active_at``."""

    def _listed(self) -> Iterator[tuple[str, Any]]:
        for snap in self.collection.select(list(self._LIST_FIELDS)).stream(**self._kw()):
            try:
                uid = validate_id("user_id", snap.id)
            except InvalidSessionIdError:
                log.warning("%s: skipping document %r, whose id is not a valid user_id", self.where, snap.id)
                continue
            yield uid, snap

    def list_users(self) -> list[UserRecord]:
        try:
            records = [self._record(uid, snap.to_dict() or {}, full=False) for uid, snap in self._listed()]
        except Exception as exc:
            raise store_error("list", self.where, exc) from exc
        return sorted(records, key=lambda r: r.user_id)

    @staticmethod
    def _count(query: Any, **kw: Any) -> int:
        result = query.count(alias="n").get(**kw)
        return int(result[0][0].value)

    def counts(self) -> Counts:
        from google.cloud.firestore_v1.base_query import FieldFilter

        kw = self._kw()
        try:
            total = self._count(self.collection, **kw)
            logged_in = self._count(self.collection.where(filter=FieldFilter("logged_in", "==", True)), **kw)
            leased = self._count(self.collection.where(filter=FieldFilter("lease.expires_at", ">", _now())), **kw)
        except Exception as exc:
            raise store_error("count", self.where, exc) from exc
        return Counts(total, logged_in, leased)

    def find_inactive(self, cutoff: datetime.datetime) -> list[InactiveUser]:
        from google.cloud.firestore_v1.base_query import FieldFilter

        query = self.collection.where(filter=FieldFilter("last_active_at", "<", cutoff)).select(
            ["last_active_at", "lease"]
        )
        found: list[InactiveUser] = []
        now = _now()
        try:
            for snap in query.stream(**self._kw()):
                try:
                    uid = validate_id("user_id", snap.id)
                except InvalidSessionIdError:
                    continue
                data = snap.to_dict() or {}
                lease = parse_lease(data.get("lease"))
                if lease is not None and lease.active(now):
                    continue  # open somewhere right now
                found.append(InactiveUser(uid, _fs_time(data.get("last_active_at")), snap.update_time))
        except Exception as exc:
            raise store_error("query", self.where, exc) from exc
        return sorted(found, key=lambda u: u.user_id)

    def _commit_each(self, writes: Sequence[tuple[str, Any, dict[str, Any] | None, Any]]) -> dict[str, Any]:
        """Commit ``(user_id, ref, fields or None for delete, last_update_time)`` writes with preconditions.

        Up to 500 per commit; if a commit fails because one document changed, that
        chunk is retried write by write. Returns ``user_id -> new update_time`` of
        the writes that succeeded.
        """
        from google.api_core.exceptions import FailedPrecondition, NotFound

        done: dict[str, Any] = {}

        def add(batch: Any, ref: Any, fields: dict[str, Any] | None, version: Any) -> None:
            option = self.client.write_option(last_update_time=version)
            if fields is None:
                batch.delete(ref, option=option)
            else:
                batch.update(ref, fields, option=option)

        for start in range(0, len(writes), _MAX_WRITES):
            chunk = writes[start : start + _MAX_WRITES]
            batch = self.client.batch()
            for _, ref, fields, version in chunk:
                add(batch, ref, fields, version)
            try:
                results = batch.commit(**self._kw())
            except (FailedPrecondition, NotFound):
                for uid, ref, fields, version in chunk:
                    single = self.client.batch()
                    add(single, ref, fields, version)
                    try:
                        res = single.commit(**self._kw())
                    except (FailedPrecondition, NotFound):
                        continue  # used (or deleted) since it was found
                    done[uid] = res[0].update_time
                continue
            for (uid, _, _, _), res in zip(chunk, results, strict=True):
                done[uid] = res.update_time
        return done

    def _children(self, user_id: str) -> list[Any]:
        """References of every document in the user's ``entities`` and ``sent_files`` (ids only)."""
        from google.cloud.firestore_v1.field_path import FieldPath

        from .store import ENTITIES, SENT_FILES

        refs: list[Any] = []
        doc = self._doc(user_id)
        for name in (ENTITIES, SENT_FILES):
            query = doc.collection(name).select([]).order_by(FieldPath.document_id()).limit(_MAX_WRITES)
            last = None
            while True:
                page = (query.start_after(last) if last is not None else query).get(**self._kw())
                refs.extend(snap.reference for snap in page)
                if len(page) < _MAX_WRITES:
                    break
                last = page[-1]
        return refs

    def _delete_subcollections(self, user_ids: Sequence[str]) -> None:
        """Delete the subcollections of ``user_ids``: listed in parallel, deleted 500 per commit.

        Users are handled in chunks, so memory holds at most one chunk's references.
        """
        from concurrent.futures import ThreadPoolExecutor

        chunk_size = 64
        with ThreadPoolExecutor(max_workers=_LIST_WORKERS, thread_name_prefix="tfs-cleanup") as pool:
            for start in range(0, len(user_ids), chunk_size):
                refs = [
                    ref for found in pool.map(self._children, user_ids[start : start + chunk_size]) for ref in found
                ]
                for first in range(0, len(refs), _MAX_WRITES):
                    batch = self.client.batch()
                    for ref in refs[first : first + _MAX_WRITES]:
                        batch.delete(ref)
                    batch.commit(**self._kw())

    def delete_inactive(self, users: Sequence[InactiveUser]) -> list[str]:
        """Mark, then empty, then delete, each step conditional where it matters.

        1. ``cleanup_started_at`` is written with a precondition on the update time
           seen by :meth:`find_inactive` (500 per commit): a session used since then
           (its lease taken, anything written) is skipped.
        2. Its ``entities`` and ``sent_files`` are deleted: two id-only queries per
           session (listed by 8 threads), then 500 deletes per commit.
        3. The document is deleted with a precondition on the mark's update time, so
           a session opened during step 2 keeps its auth key (it only lost cached
           entities, which Telethon fetches again).

        If the process dies midway, the document still has its old
        ``last_active_at`` and the next cleanup finishes the job.
        """
        try:
            marked = self._commit_each(
                [(u.user_id, self._doc(u.user_id), {"cleanup_started_at": _now()}, u.version) for u in users]
            )
            order = [u.user_id for u in users if u.user_id in marked]
            self._delete_subcollections(order)
            deleted = self._commit_each([(uid, self._doc(uid), None, marked[uid]) for uid in order])
        except Exception as exc:
            raise store_error("clean up", self.where, exc) from exc
        return [uid for uid in order if uid in deleted]

    def delete_user(self, user_id: str) -> bool:
        from .store import FirestoreStore

        doc = self._doc(user_id)
        try:
            existed = bool(doc.get(field_paths=["registered_at"], **self._kw()).exists)
        except Exception as exc:
            raise store_error("read", f"firestore:{doc.path}", exc) from exc
        FirestoreStore(self.key(user_id), self.client, rpc_timeout=self.rpc_timeout).delete()
        return existed

    def ping(self, timeout: float) -> None:
        # One point read of the bot document (it need not exist), without retries.
        self.client.collection("bots").document(self.bot_id).get(retry=None, timeout=timeout)

    def close(self) -> None:
        if self.owns_client:
            self.client.close()  # type: ignore[no-untyped-call]
