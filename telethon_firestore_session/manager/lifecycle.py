"""Stopping cleanly: a manager's ``async with``, its signal handlers, and the runner that owns the loop.

Render (like most hosts) stops an instance with SIGTERM and kills it 30 s later;
Python's default SIGTERM ends the process at once, leaving every lease held until
it expires and up to ``flush_interval`` of entities unwritten. :class:`Lifecycle`
gives :class:`~telethon_firestore_session.manager.UserSessionManager` the two ways
out, modelled on python-telegram-bot's ``run_polling`` and aiogram's
``start_polling(handle_signals=True)``:

* :meth:`Lifecycle.run` owns the event loop: it runs the application's main
  coroutine and, on SIGTERM or SIGINT, closes the manager (bounded by its
  ``shutdown_timeout``), lets main end (cancelling it if it does not within half a
  second) and returns, so the process exits with status 0;
* :meth:`Lifecycle.stop_on_signals` installs the same handlers in a loop the
  application runs itself, and returns an event set once the manager is closed.

A second signal while stopping is ignored (the first one's shutdown is bounded).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

__all__ = ["STOP_SIGNALS", "Lifecycle"]

log = logging.getLogger(__name__)

_L = TypeVar("_L", bound="Lifecycle")

#: What :meth:`Lifecycle.stop_on_signals` and :meth:`Lifecycle.run` stop on.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Seconds main gets to end by itself once everything is closed, before it is cancelled.
MAIN_GRACE = 0.5


class Lifecycle(abc.ABC):
    """``async with``, :meth:`stop_on_signals` and :meth:`run` over an :meth:`aclose` that is bounded in time."""

    #: Seconds :meth:`aclose` may take at most.
    shutdown_timeout: float
    #: The stop signal that came first (``None`` until one did).
    stopped_by: signal.Signals | None = None
    _stopping: asyncio.Task[None] | None = None

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close everything within ``shutdown_timeout``; idempotent, and concurrent callers wait for the first."""

    async def __aenter__(self: _L) -> _L:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def stop_on_signals(self, signals: Sequence[signal.Signals] = STOP_SIGNALS) -> asyncio.Event:
        """On SIGTERM or SIGINT (or ``signals``): :meth:`aclose`; the event returned is set once it is done.

        Call it in the running event loop (POSIX: ``loop.add_signal_handler``); an
        application that runs its own loop awaits ``event.wait()`` where it would
        otherwise run forever. :meth:`run` does all of this.
        """
        loop = asyncio.get_running_loop()
        closed = asyncio.Event()

        async def stop() -> None:
            try:
                await self.aclose()
            finally:
                closed.set()

        def on_signal(sig: signal.Signals) -> None:
            if self.stopped_by is not None:
                log.info("%s while stopping: ignored (the shutdown is bounded)", sig.name)
                return
            log.info("%s: stopping (within %.0f s)", sig.name, self.shutdown_timeout)
            self.stopped_by = sig
            self._stopping = loop.create_task(stop(), name=f"stop on {sig.name}")

        for sig in signals:
            loop.add_signal_handler(sig, on_signal, sig)
        return closed

    def run(self, main: Awaitable[object] | Callable[[], Awaitable[object]]) -> None:
        """Run ``main`` (a coroutine, or a function returning one) until it returns or a stop signal comes.

        Owns the event loop (``asyncio.run``), like python-telegram-bot's ``run_polling``.
        On SIGTERM or SIGINT: no new clients, every client flushed and disconnected,
        every lease released, within ``shutdown_timeout``; then ``main`` gets half a
        second to end by itself (its clients are closed) before it is cancelled, and
        this returns normally, so the process exits with status 0. When ``main``
        returns (or raises), everything is closed the same way (and the error propagates).
        """

        async def runner() -> None:
            closed = self.stop_on_signals()
            task = asyncio.ensure_future(main() if callable(main) else main)
            stopped = asyncio.ensure_future(closed.wait())
            try:
                await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not task.done():
                    await asyncio.wait({task}, timeout=MAIN_GRACE)
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task  # main's own error propagates
            finally:
                stopped.cancel()
                await self.aclose()
            if self.stopped_by is not None:
                log.info("stopped by %s", self.stopped_by.name)

        asyncio.run(runner())
