"""The manager's health check: a backend round trip, the writer, the leases, lookups and the entity cache."""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import TYPE_CHECKING, Any, Protocol

from telethon_firestore_session.breaker import LookupBreaker
from telethon_firestore_session.entities import EntityBudget
from telethon_firestore_session.writer import BackgroundWriter

if TYPE_CHECKING:
    from .cache import ClientCache
    from .directory import SessionDirectory

__all__ = ["HealthCheck", "HealthSettings"]


class HealthSettings(Protocol):
    """The manager's settings that the health check reads at each check."""

    holder_id: str
    lease_ttl: float
    degraded_latency: float
    degraded_queue_depth: int


class HealthCheck:
    """What :meth:`~telethon_firestore_session.manager.UserSessionManager.health_check` reports.

    It remembers the writer's failed writes seen by the previous check, to report the new ones.
    """

    def __init__(self, directory: SessionDirectory, cache: ClientCache, settings: HealthSettings) -> None:
        self._directory = directory
        self._cache = cache
        self._settings = settings
        self._failed_writes_seen = BackgroundWriter.get().stats().failed_writes

    async def run(self, limit: float, *, closed: bool) -> dict[str, Any]:
        """The report; never raises, returns within about ``limit`` seconds."""
        directory = self._directory
        report: dict[str, Any] = {
            "status": "unhealthy",
            "backend": directory.backend,
            "bot_id": directory.bot_id,
            "where": directory.where,
            "backend_latency_ms": None,
            "error": None,
            "active_clients": len(self._cache),
            "checked_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }
        try:
            problems: list[str] = ["the manager is closed"] if closed else []
            start = time.monotonic()
            try:
                await asyncio.wait_for(asyncio.to_thread(directory.ping, limit), limit + 0.5)
                latency = time.monotonic() - start
                report["backend_latency_ms"] = round(latency * 1000, 2)
                if latency > self._settings.degraded_latency:
                    problems.append(f"backend round trip took {latency:.2f}s")
            except (asyncio.TimeoutError, TimeoutError):
                report["error"] = f"the backend did not answer within {limit:.1f}s"
            except Exception as exc:  # noqa: BLE001 - health_check reports, never raises
                report["error"] = f"backend round trip failed: {type(exc).__name__}"
            report["writer"] = self._writer(problems)
            report["leases"] = self._leases(problems)
            report["lookups"] = self._lookups(problems)
            report["entity_cache"] = EntityBudget.get().stats()
            report["problems"] = problems
            if report["error"] is None:
                report["status"] = "degraded" if problems else "healthy"
        except Exception as exc:  # noqa: BLE001 - health_check never raises
            report["error"] = report["error"] or f"health check failed: {type(exc).__name__}"
        return report

    def _writer(self, problems: list[str]) -> dict[str, Any]:
        stats = BackgroundWriter.get().stats()
        new_failures = stats.failed_writes - self._failed_writes_seen
        self._failed_writes_seen = stats.failed_writes
        if new_failures > 0:
            problems.append(f"{new_failures} background write(s) failed since the last check")
        if stats.queue_depth > self._settings.degraded_queue_depth:
            problems.append(f"{stats.queue_depth} records wait for the background writer")
        if stats.failed_stores:
            problems.append(
                f"{len(stats.failed_stores)} session(s) are damaged and no longer written "
                f"({stats.dropped_records} records dropped; restore from a backup): {', '.join(stats.failed_stores)}"
            )
        return {
            "queue_depth": stats.queue_depth,
            "failed_writes": stats.failed_writes,
            "new_failed_writes": new_failures,
            "last_error": stats.last_error,
            "failed_stores": list(stats.failed_stores),
            "dropped_records": stats.dropped_records,
        }

    @staticmethod
    def _lookups(problems: list[str]) -> dict[str, Any]:
        """The lookup breakers of the process (:mod:`telethon_firestore_session.breaker`) that ever tripped."""
        breakers = LookupBreaker.states()
        for b in breakers:
            if b["open"]:
                problems.append(f"lookups in {b['where']} answer 'not found' ({b['last_error']}, {b['open_for']}s)")
        return {"open": sum(1 for b in breakers if b["open"]), "breakers": breakers}

    def _leases(self, problems: list[str]) -> dict[str, Any]:
        states = [lease.state() for lease in self._cache.leases]
        lost = sum(1 for s in states if s["lost"])
        failing = sum(1 for s in states if s["last_error"] is not None)
        if lost or failing:
            problems.append(f"leases: {lost} lost, {failing} failing to renew")
        return {
            "held": sum(1 for s in states if s["held"]),
            "lost": lost,
            "failing": failing,
            "holder": self._settings.holder_id,
            "ttl": self._settings.lease_ttl,
        }
