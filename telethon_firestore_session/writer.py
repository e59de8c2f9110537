"""The one background writer that serves every session of the process.

Sessions hand it batches of changes in constant time (a session swaps its sets of
changed records for empty ones and hands the old ones over); the writer's daemon
thread turns them into :class:`~telethon_firestore_session.core.Changes`, merges
successive batches per store (the newest value of a record wins), writes them,
retries failures with exponential backoff, and never raises into the caller.
``flush()`` waits, with a bound, until a store's changes are written.
A store whose writes keep raising :class:`~telethon_firestore_session.errors.SessionCorruptError`
(a damaged file) is given up after ``give_up_after`` attempts: its changes are dropped
and counted, and ``flush()`` of it returns ``False``.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, ClassVar, Protocol

from .errors import SessionCorruptError

if TYPE_CHECKING:
    from .core import Changes, Store

__all__ = ["BackgroundWriter", "WriterStats"]

log = logging.getLogger("telethon_firestore_session.writer")


class Batch(Protocol):
    """What sessions hand to the writer: built into ``Changes`` on the writer's thread."""

    def build(self) -> Changes:
        """The records to write (called once, on the writer's thread)."""

    def done(self) -> None:
        """Called once the records are stored."""

    def __len__(self) -> int: ...


class Periodic(Protocol):
    """Something the writer's thread calls about every ``interval`` seconds (lease renewal, probes)."""

    where: str

    def periodic(self) -> None: ...


class WriterStats:
    """A snapshot of the writer's health, for ``health_check()`` and monitoring.

    :param queue_depth: records waiting to be written.
    :param failed_writes: writes that raised (each was retried).
    :param written_records: records written since the process started.
    :param flushes: successful writes (one per store and round) since the process started.
    :param last_error: the last failed write's exception type and store (never a secret), or ``None``.
    :param dropped_records: records dropped because their store was given up (a damaged file).
    :param failed_stores: where the stores that were given up live (while they are in use,
        until written again or deleted).
    """

    __slots__ = (
        "dropped_records",
        "failed_stores",
        "failed_writes",
        "flushes",
        "last_error",
        "queue_depth",
        "written_records",
    )

    def __init__(
        self,
        queue_depth: int,
        failed_writes: int,
        written_records: int,
        flushes: int,
        last_error: str | None,
        dropped_records: int = 0,
        failed_stores: tuple[str, ...] = (),
    ) -> None:
        self.queue_depth = queue_depth
        self.failed_writes = failed_writes
        self.written_records = written_records
        self.flushes = flushes
        self.last_error = last_error
        self.dropped_records = dropped_records
        self.failed_stores = failed_stores

    def as_dict(self) -> dict[str, object]:
        """The fields by name (for JSON)."""
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return f"WriterStats({self.as_dict()})"


class BackgroundWriter:
    """Writes sessions' changes behind, from a single daemon thread.

    :meth:`submit` runs on the event loop (``save()``, the flush timer), so it takes no
    lock and wakes no thread: a lock that the writer's thread holds while it waits for the
    GIL, or waking that thread (a system call that can take a millisecond on a virtual
    machine), would stall the loop. It appends to an inbox (``deque.append`` is atomic);
    the thread takes the inbox every ``poll`` seconds, and at once when :meth:`flush`
    wakes it. :meth:`flush`, :meth:`discard` and :meth:`stop` block the calling thread.
    Sessions use the process-wide one, :meth:`get`.

    :param interval: seconds between calls of ``Store.periodic()`` (lease renewal).
    :param poll: seconds between looks at the inbox.
    :param min_backoff: seconds before the first retry of a failed write.
    :param max_backoff: the longest wait between retries (the wait doubles up to it).
    :param name: the thread's name.
    """

    _instance: ClassVar[BackgroundWriter | None] = None
    _instance_lock: ClassVar[threading.Lock] = threading.Lock()
    #: Attempts after which a store raising SessionCorruptError is given up (retrying cannot help).
    give_up_after: ClassVar[int] = 3

    def __init__(
        self,
        *,
        interval: float = 5.0,
        poll: float = 0.5,
        min_backoff: float = 0.2,
        max_backoff: float = 30.0,
        name: str = "telethon-session-writer",
    ) -> None:
        self._interval = interval
        self._poll = poll
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._name = name
        self._cond = threading.Condition()
        #: What ``submit()`` hands over, without a lock; moved into ``_pending`` by ``_take_inbox()``.
        self._inbox: collections.deque[tuple[Store, Batch]] = collections.deque()
        #: Per store: batches not yet built, or (after a failed write) the built changes first.
        self._pending: dict[Store, list[Batch]] = {}
        self._attempts: dict[Store, int] = {}
        self._retry_at: dict[Store, float] = {}
        self._in_flight: set[Store] = set()
        self._periodic: dict[Periodic, None] = {}
        # Given up (damaged): until written again, discarded, or no longer used by anyone.
        self._failed: weakref.WeakKeyDictionary[Store, None] = weakref.WeakKeyDictionary()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._stopping = False
        self.failed_writes = 0
        self.written_records = 0
        self.flushes = 0
        self.dropped_records = 0
        self.last_error: str | None = None

    # -- the process-wide instance ------------------------------------------------------

    @classmethod
    def get(cls) -> BackgroundWriter:
        """The process-wide writer (a new one after ``fork()``)."""
        inst = cls._instance
        if inst is not None and inst._pid == os.getpid():
            return inst
        with cls._instance_lock:
            inst = cls._instance
            if inst is None or inst._pid != os.getpid():
                inst = cls()
                cls._instance = inst
            return inst

    # -- API used by sessions -----------------------------------------------------------

    def submit(self, store: Store, batch: Batch) -> None:
        """Queue ``batch`` for ``store``. Constant time; never raises.

        It is written within ``poll`` seconds (sooner if someone calls :meth:`flush`).

        :param store: where to write.
        :param batch: ``Changes``, or a session's hand-off (anything with ``build()`` and ``done()``).
        """
        self._inbox.append((store, batch))
        thread = self._thread
        if thread is None or not thread.is_alive():
            with self._cond:
                self._ensure_thread()

    def _take_inbox(self) -> None:
        """Move what was submitted into ``_pending``, in order (call with ``_cond`` held)."""
        inbox = self._inbox
        while inbox:
            store, batch = inbox.popleft()
            self._pending.setdefault(store, []).append(batch)

    def discard(self, store: Store) -> None:
        """Drop whatever is queued for ``store`` (it is being deleted) and wait for an in-flight write.

        :param store: the store.
        """
        with self._cond:
            self._take_inbox()
            self._pending.pop(store, None)
            self._attempts.pop(store, None)
            self._retry_at.pop(store, None)
            self._periodic.pop(store, None)
            self._failed.pop(store, None)
            deadline = time.monotonic() + 30.0
            while store in self._in_flight and time.monotonic() < deadline:
                self._cond.wait(0.05)

    def register_periodic(self, task: Periodic) -> None:
        """Call ``task.periodic()`` about every ``interval`` seconds until unregistered.

        :param task: anything with ``where`` and ``periodic()``.
        """
        with self._cond:
            self._periodic[task] = None
            self._ensure_thread()
            self._cond.notify_all()

    def unregister_periodic(self, task: Periodic) -> None:
        """Stop calling ``task.periodic()``.

        :param task: as given to :meth:`register_periodic`.
        """
        with self._cond:
            self._periodic.pop(task, None)

    def flush(self, store: Store | None = None, timeout: float = 10.0) -> bool:
        """Wait until ``store``'s changes (or all, for ``None``) are written; ``False`` on timeout.

        Also ``False`` for a store that was given up (its changes were dropped).

        :param store: the store, or ``None`` for every store.
        :param timeout: seconds to wait.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            # Anything waiting for a retry is due now: someone is waiting for it.
            for s in list(self._retry_at) if store is None else [store]:
                if s in self._retry_at:
                    self._retry_at[s] = 0.0
            self._cond.notify_all()
            while True:
                self._take_inbox()
                busy = (
                    bool(self._pending or self._in_flight)
                    if store is None
                    else (store in self._pending or store in self._in_flight)
                )
                if not busy:
                    return store is None or store not in self._failed
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.1))

    def pending_records(self, store: Store | None = None) -> int:
        """How many records wait to be written.

        :param store: only this store's; ``None`` for every store.
        """
        with self._cond:
            self._take_inbox()
            queues = [self._pending.get(store, [])] if store is not None else list(self._pending.values())
            return sum(len(b) for q in queues for b in q)

    def stats(self) -> WriterStats:
        """A snapshot of the writer's health."""
        depth = self.pending_records()
        with self._cond:
            failed = tuple(s.where for s in self._failed)
            return WriterStats(
                depth,
                self.failed_writes,
                self.written_records,
                self.flushes,
                self.last_error,
                self.dropped_records,
                failed,
            )

    # -- the thread ---------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _next_ready(self) -> tuple[Store, list[Batch]] | None:
        self._take_inbox()
        now = time.monotonic()
        for store in self._pending:
            if store not in self._in_flight and self._retry_at.get(store, 0.0) <= now:
                batches = self._pending.pop(store)
                self._in_flight.add(store)
                return store, batches
        return None

    def _wait_time(self) -> float:
        now = time.monotonic()
        times = [self._retry_at.get(s, 0.0) - now for s in self._pending if s not in self._in_flight]
        times.append(min(self._interval, self._poll))  # new batches are looked for every poll seconds
        return max(0.01, min(times))

    def _run(self) -> None:
        last_periodic = time.monotonic()
        while True:
            with self._cond:
                job = self._next_ready()
                while job is None:
                    if self._stopping:
                        return
                    if time.monotonic() - last_periodic >= self._interval:
                        break
                    self._cond.wait(self._wait_time())
                    job = self._next_ready()
                periodic = list(self._periodic)
            if job is not None:
                self._write(*job)
            if time.monotonic() - last_periodic >= self._interval:
                last_periodic = time.monotonic()
                for store in periodic:
                    try:
                        store.periodic()
                    except Exception as exc:  # noqa: BLE001 - never let one store stop the thread
                        log.warning("periodic task of %s failed: %s", store.where, type(exc).__name__)

    def _write(self, store: Store, batches: list[Batch]) -> None:
        changes: Changes | None = None
        try:
            changes = batches[0].build()
            for batch in batches[1:]:
                changes.merge(batch.build())  # newer values win
            store.write_changes(changes)
        except Exception as exc:  # noqa: BLE001 - the writer never raises; it retries
            with self._cond:
                self.failed_writes += 1
                self.last_error = f"{type(exc).__name__} writing {store.where}"
                attempt = self._attempts.get(store, 0) + 1
                self._attempts[store] = attempt
                if isinstance(exc, SessionCorruptError) and (attempt >= self.give_up_after or store in self._failed):
                    newer = self._pending.pop(store, [])
                    dropped = sum(map(len, batches)) + sum(map(len, newer))
                    for batch in (*batches, *newer):
                        batch.done()  # dropped: their entities are no longer pinned in memory
                    self.dropped_records += dropped
                    self._failed[store] = None
                    self._attempts.pop(store, None)
                    self._retry_at.pop(store, None)
                    self._in_flight.discard(store)
                    self._cond.notify_all()
                    log.error(
                        "gave up writing %d records of %s after %d attempts: %s",
                        dropped,
                        store.where,
                        attempt,
                        str(exc),
                    )
                    return
                backoff = min(self._max_backoff, self._min_backoff * (2 ** (attempt - 1)))
                self._retry_at[store] = time.monotonic() + backoff
                # Built once: the records stay as they were read, newer batches come after them.
                failed: list[Batch] = batches if changes is None else [_Built(changes, batches)]
                self._pending[store] = [*failed, *self._pending.get(store, [])]
                self._in_flight.discard(store)
                self._cond.notify_all()
            log.warning(
                "writing %d records of %s failed (%s, attempt %d); retrying in %.1fs",
                sum(map(len, batches)),
                store.where,
                type(exc).__name__,
                attempt,
                backoff,
            )
            return
        for batch in batches:
            batch.done()
        with self._cond:
            self.written_records += len(changes)
            self.flushes += 1
            self._failed.pop(store, None)
            self._attempts.pop(store, None)
            self._retry_at.pop(store, None)
            self._in_flight.discard(store)
            self._cond.notify_all()

    def stop(self, timeout: float = 10.0) -> bool:
        """Flush everything and stop the thread.

        :param timeout: seconds to wait for the flush and for the thread.
        :returns: ``False`` if something was left unwritten.
        """
        done = self.flush(None, timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, timeout))
        return done


class _Built:
    """Changes already built from ``batches`` (kept after a failed write, so they are built once)."""

    def __init__(self, changes: Changes, batches: list[Batch]) -> None:
        self.changes = changes
        self.batches = batches

    def build(self) -> Changes:
        return self.changes

    def done(self) -> None:
        for batch in self.batches:
            batch.done()

    def __len__(self) -> int:
        return len(self.changes)


def _flush_at_exit() -> None:
    inst = BackgroundWriter._instance
    if inst is not None and inst._pid == os.getpid() and inst.pending_records() and not inst.flush(None, 10.0):
        log.warning("exiting with %d session records not yet written", inst.pending_records())


atexit.register(_flush_at_exit)
