"""A circuit breaker for the lookups that sessions make in their store, on the caller's thread.

A lookup that misses memory is a synchronous call on the event loop (Telethon's
``get_input_entity`` is not async), bounded by ``lookup_timeout``. When the store is
away, every such miss would stall the whole process for that long. So after one
lookup times out or fails, the breaker opens: further misses answer "not found" at
once (nothing is cached), and the background writer's thread probes the store every
few seconds, off the event loop. The first probe that succeeds closes the breaker.

Sessions on one Firestore client share one breaker (it is the connection that is
down); a SQLite file has its own. ``health_check()`` reports them all.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

__all__ = ["LookupBreaker"]

log = logging.getLogger(__name__)


class LookupBreaker:
    """Open after a failed lookup; closed again by the first background probe that succeeds.

    :param where: what the log lines and ``health_check()`` name (never secrets).
    :param cooldown: seconds between probes (they run on the background writer's
        thread, at its next periodic round after that).
    """

    _all: ClassVar[weakref.WeakSet[LookupBreaker]] = weakref.WeakSet()
    _by_client: ClassVar[weakref.WeakKeyDictionary[Any, LookupBreaker]] = weakref.WeakKeyDictionary()
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, where: str, *, cooldown: float = 5.0) -> None:
        self.where = where
        self.cooldown = cooldown
        #: Lookups answer "not found" at once while this is true (read on the hot path).
        self.open = False
        self.trips = 0
        self.last_error: str | None = None
        self._opened_at: float | None = None
        self._next_probe = 0.0
        self._probe: Callable[[], object] | None = None
        self._lock = threading.Lock()
        with self._registry_lock:
            self._all.add(self)

    @classmethod
    def shared(cls, client: Any, where: str) -> LookupBreaker:
        """The breaker of every store on ``client`` (one per client object)."""
        with cls._registry_lock:
            breaker = cls._by_client.get(client)
        if breaker is None:
            breaker = cls(where)
            with cls._registry_lock:
                breaker = cls._by_client.setdefault(client, breaker)
        return breaker

    def trip(self, exc: BaseException, probe: Callable[[], object]) -> None:
        """A lookup failed: open, and probe with ``probe()`` (a cheap read that raises on failure)."""
        from .writer import BackgroundWriter

        with self._lock:
            self.last_error = type(exc).__name__
            if self.open:
                return
            self.open = True
            self.trips += 1
            self._opened_at = time.monotonic()
            self._next_probe = self._opened_at + self.cooldown
            self._probe = probe
        log.warning(
            "a lookup in %s failed (%s): lookups that miss memory answer 'not found' at once until it answers again",
            self.where,
            type(exc).__name__,
        )
        BackgroundWriter.get().register_periodic(self)

    def periodic(self) -> None:
        """The probe, on the background writer's thread."""
        from .writer import BackgroundWriter

        probe = self._probe
        if not self.open or probe is None:
            BackgroundWriter.get().unregister_periodic(self)
            return
        if time.monotonic() < self._next_probe:
            return
        try:
            probe()
        except Exception as exc:  # noqa: BLE001 - any failure means: still away, probe again later
            self.last_error = type(exc).__name__
            self._next_probe = time.monotonic() + self.cooldown
            log.debug("probe of %s failed (%s); lookups stay off", self.where, type(exc).__name__)
            return
        with self._lock:
            self.open = False
            self._probe = None
            opened_at, self._opened_at = self._opened_at, None
        BackgroundWriter.get().unregister_periodic(self)
        log.info("%s answers again after %.1fs: lookups resume", self.where, time.monotonic() - (opened_at or 0.0))

    def state(self) -> dict[str, Any]:
        """``where``, ``open``, ``open_for`` (seconds), ``trips`` and ``last_error`` (an exception type)."""
        opened_at = self._opened_at
        return {
            "where": self.where,
            "open": self.open,
            "open_for": round(time.monotonic() - opened_at, 1) if opened_at is not None else None,
            "trips": self.trips,
            "last_error": self.last_error,
        }

    @classmethod
    def states(cls) -> list[dict[str, Any]]:
        """:meth:`state` of every breaker of the process that ever tripped."""
        with cls._registry_lock:
            breakers = list(cls._all)
        return [b.state() for b in breakers if b.trips]
