"""Users of one bot in Firestore: the manager's directory of ``bots/{bot_id}/user_sessions``."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from telethon_firestore_session.errors import ConfigError, InvalidSessionIdError, wrap_store_errors
from telethon_firestore_session.ids import BotSessionKey, validate_id
from telethon_firestore_session.manager.directory import (
    UNSET,
    ApiCredentials,
    Counts,
    InactiveUser,
    SessionDirectory,
    UserRecord,
)

from .layout import (
    BOT_SESSION,
    RPC_RETRY,
    SCHEMA_VERSION,
    Write,
    bot_document,
    commit_in_chunks,
    delete_subcollections,
    iter_sessions,
    session_document,
    sessions_collection,
    sessions_where,
    utcnow,
    where,
)
from .lease import FirestoreLease, parse_lease, watch_handoffs
from .session import FirestoreSession
from .store import FirestoreStore

if TYPE_CHECKING:
    from google.cloud import firestore

    from telethon_firestore_session.core import SessionCore
    from telethon_firestore_session.crypto import SessionCipher

__all__ = ["FirestoreDirectory"]

log = logging.getLogger(__name__)

#: Threads listing subcollections during cleanup (each listing is one small query).
_LIST_WORKERS = 8


def _fs_time(value: object) -> datetime.datetime | None:
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=datetime.timezone.utc)
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
        self.collection = sessions_collection(client, self.bot_id)
        self.where = sessions_where(self.bot_id)
        self._call = RPC_RETRY.call(rpc_timeout)

    def _doc(self, user_id: str) -> firestore.DocumentReference:
        return session_document(self.client, self.key(user_id))

    def open_session(
        self,
        user_id: str,
        *,
        flush_interval: float,
        close_timeout: float,
        state_flush_interval: float = 60.0,
        lease: FirestoreLease | None = None,
    ) -> SessionCore:
        session = FirestoreSession(
            user_id,
            bot_id=self.bot_id,
            client=self.client,
            flush_interval=flush_interval,
            state_flush_interval=state_flush_interval,
            close_timeout=close_timeout,
            rpc_timeout=self.rpc_timeout,
            cipher=self.cipher,
            encrypt_pii=self.encrypt_pii,
        )
        session.store.fence = lease
        return session

    def new_lease(self, user_id: str, *, holder: str, ttl: float) -> FirestoreLease:
        # The session's own reader checks the document inside the lease's transaction.
        reader = FirestoreStore(self.key(user_id), self.client, cipher=self.cipher, encrypt_pii=self.encrypt_pii)
        rpc_timeout = min(self.rpc_timeout, 5.0)
        return FirestoreLease(
            reader.doc, self.client, holder=holder, ttl=ttl, rpc_timeout=rpc_timeout, check=reader.parse
        )

    def bot_lease(self, session: SessionCore) -> FirestoreLease | None:
        if not (isinstance(session, FirestoreSession) and session.key == BotSessionKey(self.bot_id)):
            raise ConfigError("session", f"is not the bot's own session of {self.bot_id} (use create_bot_session())")
        return session.store.fence

    def watch_handoffs(
        self, holder: str, on_request: Callable[[str], None], *, bot: bool = False
    ) -> Callable[[], None] | None:
        collection = bot_document(self.client, self.bot_id).collection(BOT_SESSION) if bot else self.collection
        return watch_handoffs(collection, holder, on_request)

    def register(self, user_id: str, credentials: ApiCredentials | None) -> bool:
        from google.api_core.exceptions import Conflict

        doc = self._doc(user_id)
        now = utcnow()
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
        with wrap_store_errors("register", where(doc)):
            try:
                doc.create(data, **self._call)
                return True
            except Conflict:
                pass  # known already: only the credentials change
        if credentials is not None:
            with wrap_store_errors("update", where(doc)):
                doc.update({"api_credentials": data["api_credentials"], "updated_at": now}, **self._call)
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
        with wrap_store_errors("read", where(doc)):
            snap = doc.get(**self._call)
        if not snap.exists:
            return None
        return self._record(user_id, snap.to_dict() or {}, full=True)

    def update_user(self, user_id: str, *, pending_login: Any = UNSET, logged_in: Any = UNSET) -> bool:
        from google.api_core.exceptions import NotFound
        from google.cloud import firestore

        now = utcnow()
        fields: dict[str, Any] = {"updated_at": now}
        if pending_login is not UNSET:
            fields["pending_login"] = (
                firestore.DELETE_FIELD if pending_login is None else self._pending_value(user_id, pending_login)
            )
        if logged_in is not UNSET:
            fields["logged_in"] = bool(logged_in)
            fields["logged_in_at"] = now if logged_in else firestore.DELETE_FIELD
        doc = self._doc(user_id)
        with wrap_store_errors("update", where(doc)):
            try:
                doc.update(fields, **self._call)
            except NotFound:
                return False
        return True

    def touch(self, user_id: str) -> None:
        """Nothing to do: taking and renewing the lease writes ``last_active_at``."""

    def list_users(self) -> list[UserRecord]:
        with wrap_store_errors("list", self.where):
            listed = iter_sessions(self.client, self.bot_id, self._LIST_FIELDS, call=self._call)
            records = [self._record(uid, snap.to_dict() or {}, full=False) for uid, snap in listed]
        return sorted(records, key=lambda r: r.user_id)

    def _count(self, query: Any) -> int:
        result = query.count(alias="n").get(**self._call)
        return int(result[0][0].value)

    def counts(self) -> Counts:
        from google.cloud.firestore_v1.base_query import FieldFilter

        col = self.collection
        with wrap_store_errors("count", self.where):
            total = self._count(col)
            logged_in = self._count(col.where(filter=FieldFilter("logged_in", "==", True)))
            leased = self._count(col.where(filter=FieldFilter("lease.expires_at", ">", utcnow())))
        return Counts(total, logged_in, leased)

    def find_inactive(self, cutoff: datetime.datetime) -> list[InactiveUser]:
        from google.cloud.firestore_v1.base_query import FieldFilter

        query = self.collection.where(filter=FieldFilter("last_active_at", "<", cutoff)).select(
            ["last_active_at", "lease"]
        )
        found: list[InactiveUser] = []
        now = utcnow()
        with wrap_store_errors("query", self.where):
            for snap in query.stream(**self._call):
                try:
                    uid = validate_id("user_id", snap.id)
                except InvalidSessionIdError:
                    continue
                data = snap.to_dict() or {}
                lease = parse_lease(data.get("lease"))
                if lease is not None and lease.active(now):
                    continue  # open somewhere right now
                found.append(InactiveUser(uid, _fs_time(data.get("last_active_at")), snap.update_time))
        return sorted(found, key=lambda u: u.user_id)

    def _commit_each(self, writes: Sequence[Write]) -> dict[str, Any]:
        """Commit conditional writes of session documents; ``user_id -> new update time`` of those that succeeded.

        Up to 500 per commit; if a commit fails because one document changed (or
        went), that chunk is committed again write by write.
        """
        from google.api_core.exceptions import FailedPrecondition, NotFound

        conflicts = (FailedPrecondition, NotFound)
        done: dict[str, Any] = {}
        for chunk, results in commit_in_chunks(self.client, writes, self._call, tolerate=conflicts):
            if results is not None:
                done.update((w.ref.id, r.update_time) for w, r in zip(chunk, results, strict=True))
                continue
            for write in chunk:
                for _, single in commit_in_chunks(self.client, [write], self._call, tolerate=conflicts):
                    if single is not None:  # else: used (or deleted) since it was found
                        done[write.ref.id] = single[0].update_time
        return done

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
        with wrap_store_errors("clean up", self.where):
            mark = {"cleanup_started_at": utcnow()}
            marked = self._commit_each([Write(self._doc(u.user_id), "update", mark, u.version) for u in users])
            order = [u.user_id for u in users if u.user_id in marked]
            docs = [self._doc(uid) for uid in order]
            delete_subcollections(self.client, docs, self._call, workers=_LIST_WORKERS)
            deleted = self._commit_each([Write(doc, "delete", unchanged_since=marked[doc.id]) for doc in docs])
        return [uid for uid in order if uid in deleted]

    def delete_user(self, user_id: str) -> bool:
        doc = self._doc(user_id)
        with wrap_store_errors("read", where(doc)):
            existed = bool(doc.get(field_paths=["registered_at"], **self._call).exists)
        FirestoreStore(self.key(user_id), self.client, rpc_timeout=self.rpc_timeout).delete()
        return existed

    def ping(self, timeout: float) -> None:
        # One point read of the bot document (it need not exist), without retries.
        bot_document(self.client, self.bot_id).get(retry=None, timeout=timeout)

    def close(self) -> None:
        if self.owns_client:
            self.client.close()  # type: ignore[no-untyped-call]
