"""One instance at a time per Firestore session: a lease on the session document.

The session document carries ``lease{holder, expires_at, acquired_at}``. Two
processes that use one auth key at once lose it to ``AuthKeyDuplicatedError``,
so an instance takes the lease before it connects a user's client, keeps
renewing it while the client is open, and gives it back when it closes the
client:

* :meth:`FirestoreLease.acquire` reads the document and writes the lease in one
  Firestore transaction. It fails with
  :class:`~telethon_firestore_session.errors.SessionInUseError` (holder and
  expiry) while another holder's lease has not expired; an expired lease is
  taken over.
* :meth:`FirestoreLease.renew_if_due` extends it once a third of the TTL has
  passed. It runs from the process-wide background writer (registered with
  ``BackgroundWriter.register_periodic``, called every writer interval) and from
  the manager's housekeeping task, whichever comes first. Renewal must stay
  bounded in time because it runs on the shared writer thread, and Firestore's
  transaction begin/commit calls take no timeout; so it reads the lease and
  writes the new expiry with a precondition on the document's update time (the
  same optimistic check a transaction makes), each call bounded by
  ``rpc_timeout``.
* :meth:`FirestoreLease.release` removes the lease if it is still ours, with the
  same precondition.

A holder that finds another holder's lease on renewal has lost the session
(it was paused for longer than the TTL and someone took over): ``lost`` is set
and the manager closes that client. Expiry compares wall clocks of the
instances, so their clocks must agree to well within the TTL (NTP does).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import random
import secrets
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from telethon_firestore_session.errors import SessionInUseError, wrap_store_errors

from .layout import LEASE_RETRY, kept_changing, utcnow
from .layout import where as _where

if TYPE_CHECKING:
    from google.cloud import firestore

__all__ = ["DEFAULT_LEASE_TTL", "FirestoreLease", "LeaseInfo", "make_holder_id", "parse_lease"]

log = logging.getLogger(__name__)

#: Seconds a lease lasts without renewal; a crashed holder's session is free after this.
DEFAULT_LEASE_TTL = 60.0

_CAS_ATTEMPTS = 8


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


class FirestoreLease:
    """The lease of one session document, held by ``holder`` for ``ttl`` seconds at a time.

    Thread-safe: the background writer and the manager may renew it concurrently.
    ``where`` and :meth:`periodic` make it registrable with
    ``BackgroundWriter.register_periodic``.
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
    ) -> None:
        if ttl <= 0:
            raise ValueError("the lease TTL must be positive")
        self.doc = doc
        self.client = client
        self.holder = holder
        self.ttl = ttl
        self.rpc_timeout = rpc_timeout
        self.where = where or _where(doc)
        self._lock = threading.Lock()
        #: Our lease's expiry as last written (``None`` until acquired, or after release).
        self.expires_at: datetime.datetime | None = None
        self._renewed = -float("inf")  # monotonic time of the last successful write
        #: Set when another holder took the lease over: the session must be closed.
        self.lost = False
        self.lost_to: LeaseInfo | None = None
        #: The last renewal error (type name), cleared by a successful renewal.
        self.last_error: str | None = None
        self.renewals = 0
        self.failed_renewals = 0
        #: Renewal writes refused because the document changed after it was read (then retried).
        self.conflicts = 0

    def __repr__(self) -> str:
        state = "lost" if self.lost else ("held" if self.expires_at is not None else "free")
        return f"<FirestoreLease {self.where} holder={self.holder} {state}>"

    # -- Firestore helpers --------------------------------------------------------------------

    def _renew_timeout(self) -> float:
        # A renewal that takes longer than a third of the TTL is not worth finishing.
        return max(0.5, min(self.rpc_timeout, self.ttl / 3))

    # -- acquire / renew / release -----------------------------------------------------------

    def acquire(self) -> bool:
        """Take the lease in a Firestore transaction; ``False`` if the document does not exist.

        Our own lease (same holder) is simply extended; an expired lease of
        another holder is taken over (and logged).

        :raises SessionInUseError: another holder's lease has not expired.
        :raises SessionStoreError: Firestore failed.
        """
        from google.cloud import firestore

        taken_over: list[LeaseInfo] = []

        @firestore.transactional
        def take(transaction: Any) -> datetime.datetime | None:
            snap = self.doc.get(transaction=transaction, timeout=self.rpc_timeout)
            if not snap.exists:
                return None
            current = parse_lease((snap.to_dict() or {}).get("lease"))
            now = utcnow()
            if current is not None and current.holder != self.holder:
                if current.active(now):
                    raise SessionInUseError(self.where, current.holder, current.expires_at)
                taken_over[:] = [current]
            expires = now + datetime.timedelta(seconds=self.ttl)
            transaction.update(
                self.doc,
                {
                    "lease": {"holder": self.holder, "expires_at": expires, "acquired_at": now},
                    "last_active_at": now,
                },
            )
            return expires

        with wrap_store_errors("take the lease of", self.where):  # SessionInUseError passes through
            expires = take(self.client.transaction())
        if expires is None:
            return False
        if taken_over:
            log.warning(
                "%s: took over the expired lease of %s (expired %s)",
                self.where,
                taken_over[0].holder,
                taken_over[0].expires_at.isoformat(),
            )
        with self._lock:
            self.expires_at = expires
            self._renewed = time.monotonic()
            self.lost = False
            self.lost_to = None
            self.last_error = None
        return True

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

    def _renew_locked(self) -> bool:
        from google.api_core.exceptions import FailedPrecondition, NotFound

        if self.lost:
            return False
        call = LEASE_RETRY.call(self._renew_timeout())
        for _ in range(_CAS_ATTEMPTS):
            snap = self.doc.get(field_paths=["lease"], **call)
            current = parse_lease((snap.to_dict() or {}).get("lease")) if snap.exists else None
            if current is None or current.holder != self.holder:
                # Deleted, released by someone else, or taken over: the session is not ours any more.
                self.lost = True
                self.lost_to = current
                self.expires_at = None
                log.warning(
                    "%s: lost the lease%s; closing this instance's client",
                    self.where,
                    f" to {current.holder}" if current is not None else "",
                )
                return False
            now = utcnow()
            expires = now + datetime.timedelta(seconds=self.ttl)
            try:
                self.doc.update(
                    {"lease.expires_at": expires, "last_active_at": now},
                    option=self.client.write_option(last_update_time=snap.update_time),
                    **call,
                )
            except (FailedPrecondition, NotFound):
                # Written meanwhile (the background writer, or a taker): read again, after a short
                # random pause so that a steady writer cannot keep winning.
                self.conflicts += 1
                time.sleep(random.uniform(0.005, 0.04))  # noqa: S311 - jitter, not security
                continue
            self.expires_at = expires
            self._renewed = time.monotonic()
            self.renewals += 1
            self.last_error = None
            return True
        raise kept_changing("renew the lease of", self.where)

    def release(self) -> None:
        """Remove the lease if it is still ours (bounded by ``rpc_timeout``). Never raises.

        If Firestore cannot be reached the lease simply expires after the TTL.
        """
        from google.api_core.exceptions import FailedPrecondition, NotFound
        from google.cloud import firestore

        with self._lock:
            held = self.expires_at is not None and not self.lost
            self.expires_at = None
            if not held:
                return
            call = LEASE_RETRY.call(self.rpc_timeout)
            try:
                for _ in range(_CAS_ATTEMPTS):
                    snap = self.doc.get(field_paths=["lease"], **call)
                    current = parse_lease((snap.to_dict() or {}).get("lease")) if snap.exists else None
                    if current is None or current.holder != self.holder:
                        return
                    try:
                        self.doc.update(
                            {"lease": firestore.DELETE_FIELD},
                            option=self.client.write_option(last_update_time=snap.update_time),
                            **call,
                        )
                    except (FailedPrecondition, NotFound):
                        continue
                    return
            except Exception as exc:  # noqa: BLE001 - the lease then expires by itself
                log.warning("%s: releasing the lease failed (%s); it expires by itself", self.where, type(exc).__name__)

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
