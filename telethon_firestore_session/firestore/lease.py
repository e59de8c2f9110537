"""One instance at a time per Firestore session: a lease on the session document, fencing, hand-over.

The session document carries ``lease{holder, expires_at, acquired_at}`` and
``lease_epoch`` (incremented at every acquisition, never removed). Two processes
that use one auth key at once lose it to ``AuthKeyDuplicatedError``, so an
instance takes the lease before it connects a user's client, keeps renewing it
while the client is open, and gives it back when it closes the client:

* :meth:`FirestoreLease.acquire` reads the document and writes the lease in one
  Firestore transaction (run off the event loop, never on the writer thread). It
  fails with :class:`~telethon_firestore_session.errors.SessionInUseError` (holder
  and expiry) while another holder's lease has not expired; an expired lease is
  taken over. Its ``check`` (the document's readability) runs inside the
  transaction, before anything is written: an unreadable document is never touched.
* :meth:`FirestoreLease.renew_if_due` extends it once a third of the TTL has
  passed. It runs from the process-wide background writer (registered with
  ``BackgroundWriter.register_periodic``, called every writer interval) and from
  the manager's housekeeping task, whichever comes first. Renewal must stay
  bounded in time because it runs on the shared writer thread, and Firestore's
  transaction begin/commit calls take no timeout (google-cloud-firestore sends
  them with the library's 60 s default); so it reads the lease and writes the new
  expiry with a precondition on the document's update time (the same optimistic
  check a transaction makes), each call bounded by ``rpc_timeout``.
* :meth:`FirestoreLease.release` removes the lease if it is still ours, with the
  same precondition.

**Fencing.** A holder paused for longer than the TTL (a GC pause, SIGSTOP, a
frozen VM) must not act on a lease that another instance may have taken since:

* on its side, the lease counts as lost as soon as its *deadline* has passed: the
  TTL (less a tenth for clock skew) after the last successful acquisition or
  renewal started, on the monotonic clock. :meth:`FirestoreLease.held` is then
  false, the manager hands out no client, and :meth:`FirestoreLease.commit` writes
  nothing;
* on the store's side, every write of a leased session goes through
  :meth:`FirestoreLease.commit`: each commit updates the session document with a
  precondition on its update time, last seen when the lease was checked to be
  ours (holder and epoch). A commit that finds the document changed reads the
  lease again (bounded by ``rpc_timeout``) and retries only if it is still ours;
  otherwise nothing of it is written. No transaction, so a fenced write never
  hangs the writer thread. That guard write also carries the lease's new expiry:
  it renews the lease under the same precondition a renewal uses, so a session
  that writes at least every third of the TTL needs no renewal of its own.

A monotonic clock does not advance while a VM is frozen, which the store-side
check covers. Expiry compares wall clocks of the instances, so their clocks must
agree to well within the TTL (NTP does).

**Hand-over.** An instance that wants a session another live instance holds
records ``handoff{from, to, requested_at}`` on the session document
(:meth:`FirestoreLease.request_handoff`). The holder learns it from one query
listener on its bot's sessions (:func:`watch_handoffs`) and releases the lease
once it has closed the client; the next acquisition removes the request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import itertools
import logging
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

from telethon_firestore_session.errors import SessionInUseError, SessionStoreError, wrap_store_errors
from telethon_firestore_session.writer import BackgroundWriter

from .layout import LEASE_RETRY, MAX_WRITES_PER_COMMIT, CallOptions, Write, commit_in_chunks, kept_changing, utcnow
from .layout import where as _where

if TYPE_CHECKING:
    from google.cloud import firestore

    from telethon_firestore_session.core import Store

    from .session import FirestoreSession

__all__ = [
    "DEFAULT_LEASE_TTL",
    "HANDOFF_POLL",
    "FirestoreLease",
    "LeaseInfo",
    "make_holder_id",
    "open_bot_session",
    "parse_lease",
    "watch_handoffs",
]

log = logging.getLogger(__name__)

#: Seconds a lease lasts without renewal; a crashed holder's session is free after this.
DEFAULT_LEASE_TTL = 60.0

_CAS_ATTEMPTS = 8
#: Seconds between the attempts of an instance waiting for a hand-over (about 4 reads a second).
HANDOFF_POLL = 0.25
#: The fields that say who holds a session: read by renewal, release and fencing.
_LEASE_FIELDS = ["lease", "lease_epoch"]


def make_holder_id() -> str:
    """``hostname:pid:random``: names this instance in leases and in "in use by" errors."""
    host = socket.gethostname() or "host"
    return f"{host}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclasses.dataclass(frozen=True)
class LeaseInfo:
    """A lease as stored: who holds it and until when (UTC)."""

    holder: str
    expires_at: datetime.datetime

    def active(self, now: datetime.datetime | None = None) -> bool:
        return self.expires_at > (now or utcnow())


def parse_lease(value: object) -> LeaseInfo | None:
    """The ``lease`` field of a session document, or ``None`` if absent or malformed."""
    if not isinstance(value, dict):
        return None
    holder = value.get("holder")
    expires = value.get("expires_at")
    if not isinstance(holder, str) or not isinstance(expires, datetime.datetime):
        return None
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=datetime.timezone.utc)
    return LeaseInfo(holder, expires)


def _epoch(data: dict[str, Any]) -> int:
    value = data.get("lease_epoch")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _as_update(fields: dict[str, Any]) -> dict[str, Any]:
    """A merge of the session document as the field paths of an update (maps one level deep, as merged)."""
    from google.cloud.firestore_v1.field_path import FieldPath

    flat: dict[str, Any] = {}
    for name, value in fields.items():
        if name == "created_at":
            continue  # a leased document exists already
        if isinstance(value, dict):
            flat.update((FieldPath(name, str(k)).to_api_repr(), v) for k, v in value.items())
        else:
            flat[FieldPath(name).to_api_repr()] = value
    return flat


class FirestoreLease:
    """The lease of one session document, held by ``holder`` for ``ttl`` seconds at a time.

    Thread-safe: the background writer and the manager may renew it concurrently.
    ``where`` and :meth:`periodic` make it registrable with
    ``BackgroundWriter.register_periodic``.

    :param check: called with the document's data inside :meth:`acquire`'s
        transaction, before the lease is written; it raises if the document cannot
        be opened (then nothing is written).
    """

    def __init__(
        self,
        doc: firestore.DocumentReference,
        client: firestore.Client,
        *,
        holder: str,
        ttl: float = DEFAULT_LEASE_TTL,
        rpc_timeout: float = 5.0,
        where: str | None = None,
        check: Callable[[dict[str, Any]], object] | None = None,
    ) -> None:
        if ttl <= 0:
            raise ValueError("the lease TTL must be positive")
        self.doc = doc
        self.client = client
        self.holder = holder
        self.ttl = ttl
        self.rpc_timeout = rpc_timeout
        self.where = where or _where(doc)
        self.check = check
        self._lock = threading.Lock()
        #: Our lease's expiry as last written (``None`` until acquired, or after release).
        self.expires_at: datetime.datetime | None = None
        #: ``lease_epoch`` of our acquisition (fencing compares it).
        self.epoch: int | None = None
        #: The session document's update time after our last write of it (``None``: read it first).
        self.update_time: Any = None
        self._renewed = -float("inf")  # monotonic time when the last successful write started
        #: Set when another holder took the lease over, or its deadline passed: the session must be closed.
        self.lost = False
        self.lost_to: LeaseInfo | None = None
        #: The last renewal error (type name), cleared by a successful renewal.
        self.last_error: str | None = None
        self.renewals = 0
        self.failed_renewals = 0
        #: Renewal writes refused because the document changed after it was read (then retried).
        self.conflicts = 0
        #: Writes of the session refused by fencing.
        self.fenced_writes = 0
        #: The last refusal of :meth:`try_acquire`, and the holder it asked to hand over.
        self.refused: SessionInUseError | None = None
        self._asked: str | None = None

    def __repr__(self) -> str:
        state = "lost" if self.lost else ("held" if self.expires_at is not None else "free")
        return f"<FirestoreLease {self.where} holder={self.holder} {state}>"

    # -- state ----------------------------------------------------------------------------------

    def deadline(self) -> float:
        """Monotonic time after which this holder no longer counts on the lease (see the module docstring)."""
        return self._renewed + self.ttl - min(2.0, self.ttl / 10)

    def held(self) -> bool:
        """Ours, not lost, and within its deadline. Marks the lease lost once the deadline has passed."""
        if self.lost or self.expires_at is None:
            return False
        if time.monotonic() >= self.deadline():
            self._lose(None, "its deadline passed before it was renewed")
            return False
        return True

    def _lose(self, to: LeaseInfo | None, why: str, *, level: int = logging.WARNING) -> None:
        if self.lost:
            return
        self.lost = True
        self.lost_to = to
        self.expires_at = None
        holder = f" to {to.holder}" if to else ""
        log.log(level, "%s: lost the lease%s (%s); this instance's client is closed", self.where, holder, why)

    def _renew_timeout(self) -> float:
        # A renewal that takes longer than a third of the TTL is not worth finishing.
        return max(0.5, min(self.rpc_timeout, self.ttl / 3))

    # -- acquire / renew / release -----------------------------------------------------------

    def acquire(self) -> bool:
        """Take the lease in a Firestore transaction; ``False`` if the document does not exist.

        Our own lease (same holder) is taken again with a new epoch; an expired lease
        of another holder is taken over (and logged). A pending hand-over request is
        removed. ``check`` runs before anything is written.

        :raises SessionInUseError: another holder's lease has not expired.
        :raises SessionError: ``check`` found the document unreadable (nothing was written).
        :raises SessionStoreError: Firestore failed.
        """
        from google.cloud import firestore

        taken_over: list[LeaseInfo] = []

        @firestore.transactional
        def take(transaction: Any) -> tuple[datetime.datetime, int] | None:
            snap = self.doc.get(transaction=transaction, timeout=self.rpc_timeout)
            if not snap.exists:
                return None
            data = snap.to_dict() or {}
            current = parse_lease(data.get("lease"))
            now = utcnow()
            if current is not None and current.holder != self.holder:
                if current.active(now):
                    raise SessionInUseError(self.where, current.holder, current.expires_at)
                taken_over[:] = [current]
            if self.check is not None:
                self.check(data)
            expires = now + datetime.timedelta(seconds=self.ttl)
            epoch = _epoch(data) + 1
            transaction.update(
                self.doc,
                {
                    "lease": {"holder": self.holder, "expires_at": expires, "acquired_at": now},
                    "lease_epoch": epoch,
                    "handoff": firestore.DELETE_FIELD,
                    "last_active_at": now,
                },
            )
            return expires, epoch

        started = time.monotonic()
        transaction = self.client.transaction()
        with wrap_store_errors("take the lease of", self.where):  # our own errors pass through
            taken = take(transaction)
        if taken is None:
            return False
        if taken_over:
            log.warning(
                "%s: took over the expired lease of %s (expired %s)",
                self.where,
                taken_over[0].holder,
                taken_over[0].expires_at.isoformat(),
            )
        results = getattr(transaction, "write_results", None) or [None]
        with self._lock:
            self.expires_at, self.epoch = taken
            self.update_time = getattr(results[0], "update_time", None)
            self._renewed = started
            self.lost = False
            self.lost_to = None
            self.last_error = None
        return True

    def try_acquire(self, *, ask: bool = True) -> bool | None:
        """One attempt of a waiting acquirer: :meth:`acquire`'s answer, or ``None`` while another instance holds it.

        With ``ask``, that holder is asked to hand the session over (once per holder).
        :attr:`refused` keeps the last refusal. Blocks (run it off the event loop).
        """
        try:
            return self.acquire()
        except SessionInUseError as exc:
            self.refused = exc
            if ask and exc.holder is not None and exc.holder != self._asked:
                self.request_handoff(exc.holder)
                self._asked = exc.holder
            return None

    def acquire_waiting(self, handoff_timeout: float) -> bool:
        """:meth:`try_acquire` every ``HANDOFF_POLL`` seconds for up to ``handoff_timeout`` (0: once, without asking).

        :raises SessionInUseError: still held by another instance after ``handoff_timeout`` seconds.
        """
        deadline = time.monotonic() + handoff_timeout
        while (acquired := self.try_acquire(ask=handoff_timeout > 0)) is None:
            if time.monotonic() >= deadline:
                raise self.refusal()
            time.sleep(max(0.0, min(HANDOFF_POLL, deadline - time.monotonic())))
        return acquired

    def refusal(self) -> SessionInUseError:
        """The last :class:`SessionInUseError` of :meth:`try_acquire` (to raise once the caller stops waiting)."""
        assert self.refused is not None
        return self.refused

    def request_handoff(self, holder: str) -> None:
        """Ask ``holder``, which holds the lease, to hand the session over to us (bounded by ``rpc_timeout``).

        A request that comes too late (the lease was released) is removed by the next acquisition.

        :raises SessionStoreError: Firestore failed.
        """
        from google.api_core.exceptions import NotFound

        request = {"from": holder, "to": self.holder, "requested_at": utcnow()}
        with wrap_store_errors("ask for the session", self.where):
            try:
                self.doc.update({"handoff": request}, **LEASE_RETRY.call(self.rpc_timeout))
            except NotFound:
                return  # deleted: the next acquire() says so
        log.info("%s: asked %s to hand the session over", self.where, holder)

    def renew_if_due(self) -> None:
        """Renew once a third of the TTL has passed since the last renewal. Never raises."""
        if self.lost or self.expires_at is None or not self._due():
            return
        try:
            with self._lock:
                if self._due():  # the writer and the manager may both have found it due
                    self._renew_locked()
        except Exception as exc:  # noqa: BLE001 - called from the writer thread; state is kept for health_check
            with self._lock:
                self.failed_renewals += 1
                self.last_error = type(exc).__name__
            log.warning("%s: renewing the lease failed (%s)", self.where, type(exc).__name__)

    def periodic(self) -> None:
        """Called by the background writer every writer interval."""
        self.renew_if_due()

    def renew(self) -> bool:
        """Extend the lease by ``ttl`` from now; ``False`` (and ``lost``) if it is no longer ours.

        :raises Exception: Firestore errors (the caller decides; :meth:`renew_if_due` logs them).
        """
        with self._lock:
            return self._renew_locked()

    def _due(self) -> bool:
        return time.monotonic() - self._renewed >= self.ttl / 3

    def _ours(self, snap: Any) -> bool:
        """Whether a snapshot of the lease fields shows our lease (holder and epoch); if not, it is lost."""
        data = (snap.to_dict() or {}) if snap.exists else {}
        current = parse_lease(data.get("lease"))
        if current is not None and current.holder == self.holder and _epoch(data) == self.epoch:
            return True
        # Deleted, released by someone else, or taken over: the session is not ours any more.
        if not snap.exists:
            self._lose(None, "the session was deleted", level=logging.INFO)
        else:
            self._lose(current, "another holder has it" if current is not None else "it was released elsewhere")
        return False

    def _renew_locked(self) -> bool:
        if not self.held():
            return False
        started = time.monotonic()
        expires: list[datetime.datetime] = []

        def fields() -> dict[str, Any]:
            now = utcnow()
            expires[:] = [now + datetime.timedelta(seconds=self.ttl)]
            return {"lease.expires_at": expires[0], "last_active_at": now}

        result = self._update_if_ours(fields, LEASE_RETRY.call(self._renew_timeout()), "renew the lease of")
        if result is None:
            return False
        self.expires_at = expires[0]
        self.update_time = result.update_time
        self._renewed = started
        self.renewals += 1
        self.last_error = None
        return True

    def _update_if_ours(self, fields: Callable[[], dict[str, Any]], call: CallOptions, what: str) -> Any:
        """Update the document with ``fields()`` while the lease is ours; the write result, or ``None`` (lost).

        The lease is read, then the document updated with a precondition on that read's
        update time; written meanwhile (the background writer, a taker), it is read again
        after a short random pause, so that a steady writer cannot keep winning.
        """
        from google.api_core.exceptions import FailedPrecondition, NotFound

        for _ in range(_CAS_ATTEMPTS):
            snap = self.doc.get(field_paths=_LEASE_FIELDS, **call)
            if not self._ours(snap):
                return None
            try:
                option = self.client.write_option(last_update_time=snap.update_time)
                return self.doc.update(fields(), option=option, **call)
            except (FailedPrecondition, NotFound):
                self.conflicts += 1
                time.sleep(random.uniform(0.005, 0.04))  # noqa: S311 - jitter, not security
        raise kept_changing(what, self.where)

    def release(self, deadline: float | None = None) -> None:
        """Remove the lease if it is still ours (bounded by ``rpc_timeout``, and by ``deadline``). Never raises.

        ``deadline`` is a monotonic time (a shutdown's); past it nothing is sent. If
        Firestore cannot be reached the lease simply expires after the TTL.
        """
        from google.cloud import firestore

        BackgroundWriter.get().unregister_periodic(cast("Store", self))  # a bot session registers its lease
        with self._lock:
            held = self.expires_at is not None and not self.lost
            self.expires_at = None
            if not held:
                return
            timeout = self.rpc_timeout if deadline is None else min(self.rpc_timeout, deadline - time.monotonic())
            if timeout <= 0.05:
                log.warning("%s: no time left to release the lease; it expires by itself", self.where)
                return
            try:
                self._update_if_ours(lambda: {"lease": firestore.DELETE_FIELD}, LEASE_RETRY.call(timeout), "release")
            except Exception as exc:  # noqa: BLE001 - the lease then expires by itself
                log.warning("%s: releasing the lease failed (%s); it expires by itself", self.where, type(exc).__name__)

    # -- fenced writes ------------------------------------------------------------------------------

    def commit(self, writes: Iterable[Write], call: CallOptions) -> list[int] | None:
        """Commit ``writes`` only while the lease is ours: the writes per commit, or ``None`` if fenced.

        ``writes`` starts with the merge of the session document (as
        ``FirestoreStore.change_writes`` yields them); each commit of at most 500
        writes updates the session document with a precondition on its update time,
        and extends the lease in the same write (see the module docstring).
        ``None``: the lease is lost (before or during the call); what was not
        committed is not written. Blocks; bounded by ``call``.

        :raises Exception: Firestore errors other than a failed precondition (the writer retries).
        """
        from google.api_core.exceptions import FailedPrecondition, NotFound

        pending: Iterator[Write] = iter(writes)
        first = next(pending, None)
        if first is None:
            return []
        guard = _as_update(first.fields or {})
        sizes: list[int] = []
        while True:
            chunk = list(itertools.islice(pending, MAX_WRITES_PER_COMMIT - 1))
            for _ in range(_CAS_ATTEMPTS):
                if not self.held():
                    self.fenced_writes += 1
                    return None
                since = self.update_time
                if since is None:
                    snap = self.doc.get(field_paths=_LEASE_FIELDS, **call)
                    if not self._ours(snap):
                        continue  # held() is false now
                    since = snap.update_time
                started = time.monotonic()
                expires = utcnow() + datetime.timedelta(seconds=self.ttl)
                renewing = {**guard, "lease.expires_at": expires}
                batch = [Write(self.doc, "update", renewing, since), *chunk]
                results = next(commit_in_chunks(self.client, batch, call, tolerate=(FailedPrecondition, NotFound)))[1]
                if results is None:
                    self.update_time = None  # changed by someone: read the lease again
                    continue
                self.update_time = results[0].update_time
                self._renewed_by_commit(started, expires)
                sizes.append(len(batch))
                break
            else:
                raise kept_changing("write", self.where)
            if len(chunk) < MAX_WRITES_PER_COMMIT - 1:
                return sizes
            guard = {"updated_at": utcnow()}

    def _renewed_by_commit(self, started: float, expires: datetime.datetime) -> None:
        """A fenced commit also extended the lease: its guard carried the new expiry (see :meth:`commit`).

        The guard's precondition (the document unchanged since our last write of it) is the
        same check a renewal makes, so the extension is as safe as one, and the periodic
        renewal is not due until a third of the TTL after it. Skipped while a renewal or a
        release holds the lock (it keeps its own account: a release must not be undone).
        """
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self.expires_at is not None and not self.lost and started > self._renewed:
                self.expires_at = expires
                self._renewed = started
        finally:
            self._lock.release()

    def state(self) -> dict[str, Any]:
        """For ``health_check()``: ``held``, ``lost``, ``expires_at`` (ISO), ``last_error``.

        Never blocks (a renewal may be waiting for Firestore while holding the lock).
        """
        expires, lost, lost_to = self.expires_at, self.lost, self.lost_to
        return {
            "held": expires is not None and not lost,
            "lost": lost,
            "lost_to": lost_to.holder if lost_to is not None else None,
            "expires_at": expires.isoformat() if expires is not None else None,
            "last_error": self.last_error,
            "renewals": self.renewals,
            "failed_renewals": self.failed_renewals,
        }


def watch_handoffs(
    collection: firestore.CollectionReference, holder: str, on_request: Callable[[str], None]
) -> Callable[[], None]:
    """Call ``on_request(document id)`` when a session of ``collection`` is asked from ``holder``.

    One query listener (google-cloud-firestore's ``on_snapshot``, on its own thread):
    ``handoff.from == holder``. It costs one read when it starts (and when its stream
    is resumed after a long disconnection) plus one per change of a requested session
    until it is handed over (the request, the holder's last writes). ``on_request`` is
    called from the listener's thread, maybe more than once per request. Returns the
    function that stops it.
    """
    from google.cloud.firestore_v1.base_query import FieldFilter

    def changed(_snaps: Any, changes: Any, _read_time: Any) -> None:
        for change in changes:
            if change.type.name in ("ADDED", "MODIFIED"):
                try:
                    on_request(change.document.id)
                except Exception:  # the listener's thread must survive anything
                    log.exception("handling a hand-over request for %s failed", change.document.id)

    query = collection.where(filter=FieldFilter("handoff.from", "==", holder))
    listener = _Listener(query, changed, _where(collection))
    return listener.stop


class _Listener:
    """A query listener that listens again when its stream ends (checked from the writer's periodic tick).

    google-cloud-firestore's ``Watch`` stops for good when the server ends its stream
    with an error it does not retry (``Cancelled``, for example) and raises that error in
    a thread of its own; without this, hand-over requests would go unheard from then on.
    """

    def __init__(self, query: Any, callback: Callable[..., None], where: str) -> None:
        self.where = where
        self._query = query
        self._callback = callback
        self._lock = threading.Lock()
        self._stopped = False
        self.restarts = 0
        self._watch = query.on_snapshot(callback)
        BackgroundWriter.get().register_periodic(self)

    def periodic(self) -> None:
        with self._lock:
            if self._stopped or self._watch.is_active:
                return
            log.warning("the hand-over listener of %s stopped; listening again", self.where)
            self._watch.unsubscribe()
            self._watch = self._query.on_snapshot(self._callback)
            self.restarts += 1

    def stop(self) -> None:
        BackgroundWriter.get().unregister_periodic(self)
        with self._lock:
            self._stopped = True
            self._watch.unsubscribe()


def open_bot_session(
    client: firestore.Client,
    bot_id: str,
    *,
    holder: str | None = None,
    lease_ttl: float = DEFAULT_LEASE_TTL,
    handoff_timeout: float = 15.0,
    **options: Any,
) -> FirestoreSession:
    """The bot's own session, ``bots/{bot_id}/bot_session/session``, leased before it is read.

    The lease is taken first (asking a live holder to hand it over and waiting up to
    ``handoff_timeout``; the document is created on the first start), so what is read
    is what the previous holder left. It fences the session's writes, is renewed by
    the background writer and released when the session closes. Blocks. ``options``
    go to :class:`~telethon_firestore_session.firestore.FirestoreSession`.

    :raises SessionInUseError: another instance still holds it after ``handoff_timeout``.
    """
    from google.api_core.exceptions import Conflict

    from telethon_firestore_session.ids import BotSessionKey

    from .layout import RPC_RETRY, touch_fields
    from .session import FirestoreSession
    from .store import FirestoreStore

    key = BotSessionKey(bot_id)
    reader = FirestoreStore(key, client, cipher=options.get("cipher"), encrypt_pii=options.get("encrypt_pii", False))
    lease = FirestoreLease(reader.doc, client, holder=holder or make_holder_id(), ttl=lease_ttl, check=reader.parse)
    if not lease.acquire_waiting(handoff_timeout):
        # Another instance may create it meanwhile (Conflict): then it is leased like any other.
        with wrap_store_errors("create", lease.where), contextlib.suppress(Conflict):
            reader.doc.create(touch_fields(created=True), **RPC_RETRY.call(lease.rpc_timeout))
        if not lease.acquire_waiting(handoff_timeout):
            raise SessionStoreError(f"cannot lease {lease.where}: it was deleted while it was being created")
    try:
        session = FirestoreSession(key, bot_id=bot_id, client=client, **options)
    except BaseException:  # any failure, interrupts too: the lease is not kept
        lease.release()
        raise
    session.store.fence = lease
    BackgroundWriter.get().register_periodic(cast("Store", lease))
    return session
