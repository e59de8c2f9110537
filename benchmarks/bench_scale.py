"""Issue 11: memory per entity and per process, the hand-off to the writer, update-state writes, outages.

Each workload measures our sessions and, where Telethon has the same operation, its
``MemorySession`` or ``SQLiteSession`` in the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import os
import resource
import statistics
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from telethon.crypto import AuthKey
from telethon.sessions import MemorySession, SQLiteSession
from telethon.tl import types

from benchmarks._harness import fmt_time
from benchmarks.bench_sessions import AUTH_KEY, BOT, DATE, Context, count_entity_docs, make_user, updates, user_id

MiB = 2**20
perf = time.perf_counter


@dataclass(frozen=True)
class ScaleSizes:
    footprint: tuple[int, ...]
    sessions: int
    per_session: int
    fs_sessions: int
    fs_per_session: int
    single: int
    budget_mb: float | None  # None: the default
    save_pending: int
    timer_pending: int
    repeats: int
    timer_repeats: int
    outage_s: float
    outage_misses: int


FULL_SCALE = ScaleSizes((5_000, 50_000, 200_000), 100, 5_000, 100, 5_000, 200_000, None, 90_000, 20_000, 3, 9, 20.0, 50)
QUICK_SCALE = ScaleSizes((5_000, 20_000), 5, 4_000, 5, 1_000, 20_000, 2.0, 90_000, 20_000, 1, 3, 4.0, 20)


def budget_mb(sizes: ScaleSizes) -> float:
    from telethon_firestore_session.entities import DEFAULT_ENTITY_CACHE_MB

    return sizes.budget_mb or DEFAULT_ENTITY_CACHE_MB


def _feed(session: Any, first: int, n: int, save_every: int = 0) -> None:
    for i in range(first, first + n, 100):
        session.process_entities(updates([make_user(j) for j in range(i, min(i + 100, first + n))]))
        if save_every and (i - first + 100) % save_every == 0:
            session.save()


# -- bytes per cached entity --------------------------------------------------------------------


@dataclass
class Footprint:
    n: int
    ours: float
    memory_session: float
    ours_seen_again: float  # after every entity is seen again (moved to the end of its dictionary)


def _traced(make: Callable[[], Any], n: int) -> tuple[float, Any]:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    session = make()
    _feed(session, 0, n)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return used / n, session


def bench_footprint(sizes: ScaleSizes) -> list[Footprint]:
    """tracemalloc bytes per entity: our cache (``SessionCore``, what every session holds) and ``MemorySession``."""
    from telethon_firestore_session import SessionCore

    out = []
    for n in sizes.footprint:
        ours, session = _traced(SessionCore, n)
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        _feed(session, 0, n)  # seen again, unchanged
        gc.collect()
        again = (tracemalloc.get_traced_memory()[0] - base) / n
        tracemalloc.stop()
        del session
        memory, reference = _traced(MemorySession, n)
        del reference
        out.append(Footprint(n, ours, memory, ours + again))
    return out


def print_footprint(rows: list[Footprint]) -> None:
    print()
    print("== bytes per cached entity (tracemalloc; username, phone, first and last name)")
    print(f"{'entities':>10}{'ours':>10}{'Memory':>10}{'x Memory':>10}{'ours, all seen again':>24}")
    for r in rows:
        print(
            f"{r.n:>10}{r.ours:>10.0f}{r.memory_session:>10.0f}{r.ours / r.memory_session:>10.2f}"
            f"{r.ours_seen_again:>24.0f}"
        )
    print("   ours: SessionCore's cache, which every session holds (entities written: no pending set)")
    print(
        "   seen again: each entity moves to the end of its dictionary, which then holds freed slots until it resizes"
    )


# -- the process's heap with many sessions ---------------------------------------------------------


@dataclass
class Heap:
    backend: str
    sessions: int
    per_session: int
    budget_mb: float
    heap_mb: float = 0.0
    peak_mb: float = 0.0
    rss_growth_mb: float = 0.0
    cached: int = 0
    evictions: int = 0
    checked: int = 0
    found: int = 0
    stored: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_heap(ctx: Context, backend: str, sessions: int, per_session: int, limit_mb: float) -> Heap:
    """``sessions`` sessions that each see ``per_session`` distinct entities; then every one is looked up.

    Each session's entities arrive in one burst and are then written (``flush()``) before
    the next session's arrive: entities not written yet are never evicted, so a burst
    faster than the store can take holds memory until it is written.
    """
    from telethon_firestore_session import FirestoreSession
    from telethon_firestore_session.entities import EntityBudget
    from telethon_firestore_session.sqlite import ScopedSQLiteSession

    budget = EntityBudget.get()
    budget.limit_mb = limit_mb
    evictions0 = budget.evictions
    res = Heap(backend, sessions, per_session, limit_mb)
    tag = ctx.tag()
    t0 = perf()
    rss0 = _rss_mb()
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    opened: list[Any] = []
    for k in range(sessions):
        if backend == "firestore":
            s: Any = FirestoreSession(f"heap-{tag}-{k}", bot_id=BOT, client=ctx.client, rpc_timeout=300)
        else:
            s = ScopedSQLiteSession(f"heap-{tag}-{k}", bot_id=BOT, sessions_dir=ctx.tmpdir)
        opened.append(s)
        _feed(s, k * per_session, per_session, save_every=1000)
        if not s.flush(600.0):
            res.notes.append(f"session {k}: the writer did not finish within 600 s")
    # Every entity by id in SQLite; in Firestore (a point read each) every 100th, and all are counted there.
    step = 1 if backend == "sqlite" else 100
    for k, s in enumerate(opened):
        for i in range(k * per_session, (k + 1) * per_session, step):
            res.checked += 1
            try:
                s.get_input_entity(user_id(i))
                res.found += 1
            except ValueError:
                pass
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    res.heap_mb = (current - base) / MiB
    res.peak_mb = (peak - base) / MiB
    res.rss_growth_mb = _rss_mb() - rss0
    res.cached = int(budget.stats()["entities"])  # type: ignore[call-overload]
    res.evictions = budget.evictions - evictions0
    if backend == "firestore":
        res.stored = sum(count_entity_docs(ctx, f"heap-{tag}-{k}") for k in range(sessions))
    else:
        res.stored = res.found
    for s in opened:
        s.close()  # the caller resets the emulator's data
    res.seconds = perf() - t0
    return res


def print_heap(rows: list[Heap]) -> None:
    print()
    print("== the process's heap: N sessions that have each seen M distinct entities (tracemalloc)")
    print(
        f"{'backend':<10}{'sessions x entities':>22}{'budget':>9}{'heap':>10}{'peak':>10}{'cached':>9}"
        f"{'evicted':>10}{'found':>16}{'stored':>10}{'time':>8}"
    )
    for r in rows:
        print(
            f"{r.backend:<10}{f'{r.sessions} x {r.per_session}':>22}{r.budget_mb:>7.0f}MB{r.heap_mb:>8.1f}MB"
            f"{r.peak_mb:>8.1f}MB{r.cached:>9}{r.evictions:>10}{f'{r.found}/{r.checked}':>16}{r.stored:>10}"
            f"{r.seconds:>7.0f}s"
        )
    print("   heap: traced Python memory after every entity was written and looked up (peak: while pending)")
    print("   each session's entities arrive at once, then are written (flush()) before the next session's")
    print("   found: lookups by id through the session (Firestore: every 100th; stored: documents counted)")
    print("   not traced: SQLite's own page cache (C memory), up to 2 MB per open file by default")


# -- save() and the flush timer: constant-time hand-off ---------------------------------------------


@dataclass
class HandOff:
    impl: str
    pending: int
    seconds: list[float]  # wall time
    cpu: list[float] = field(default_factory=list)  # the calling thread's CPU time: the work, no waiting

    @property
    def best(self) -> float:
        return min(self.seconds)

    def measure(self, call: Callable[[], object]) -> None:
        t0, c0 = perf(), time.thread_time()
        call()
        self.cpu.append(time.thread_time() - c0)
        self.seconds.append(perf() - t0)


def bench_save_pending(ctx: Context, pending: int, repeats: int) -> list[HandOff]:
    """``save()`` with ``pending`` entity changes (no event loop: a script, a migration)."""
    from telethon_firestore_session.sqlite import ScopedSQLiteSession

    makers: list[tuple[str, Callable[[int], Any]]] = [
        ("SQLiteSession", lambda r: SQLiteSession(os.path.join(ctx.tmpdir, f"pending-{ctx.tag()}"))),
        (
            "ScopedSQLiteSession",
            lambda r: ScopedSQLiteSession(f"pending-{ctx.tag()}", bot_id=BOT, sessions_dir=ctx.tmpdir),
        ),
    ]
    # FirestoreSession's save() runs the same hand-off (SessionCore's); writing 90,000 documents per repeat
    # would only load the emulator. The timer benchmark below hands off 20,000 to Firestore for real.
    out = {name: HandOff(name, pending, []) for name, _ in makers}
    for r in range(repeats):
        for name, make in makers:
            s = make(r)
            s.set_dc(2, "149.154.167.51", 443)
            s.auth_key = AuthKey(AUTH_KEY)
            s.save()
            _feed(s, 10_000_000 + r * pending, pending)
            gc.collect()
            out[name].measure(s.save)
            s.close()
            if name == "SQLiteSession":
                s.delete()
    return list(out.values())


def bench_timer(ctx: Context, pending: int, repeats: int) -> list[HandOff]:
    """The flush timer's callback on a running loop with ``pending`` changes; SQLiteSession.save() for contrast."""
    from telethon_firestore_session import FirestoreSession
    from telethon_firestore_session.sqlite import ScopedSQLiteSession

    ours: dict[str, HandOff] = {}
    lite = HandOff("SQLiteSession (save() of as many)", pending, [])

    async def once(name: str, s: Any, first: int) -> None:
        row = ours.setdefault(name, HandOff(name, pending, []))
        # No public hook times a timer callback: wrap the session's own (the timer looks it up when armed).
        on_timer = s._on_timer

        unmeasured = [True]

        def timed(states: bool) -> None:  # the real callback, timed where the loop runs it (the first time)
            if unmeasured and unmeasured.pop():
                row.measure(lambda: on_timer(states))
            else:
                on_timer(states)

        s._on_timer = timed
        _feed(s, first, pending)  # arms the timer (flush_interval 0.5 s) on the first change
        end = perf() + 0.7
        while perf() < end:  # a busy loop, as a bot's: the timer fires between other tasks
            sum(range(100))
            await asyncio.sleep(0)

    for r in range(repeats):
        first = 20_000_000 + r * pending
        sessions: list[tuple[str, Any]] = [
            (
                "ScopedSQLiteSession",
                ScopedSQLiteSession(f"timer-{ctx.tag()}", bot_id=BOT, sessions_dir=ctx.tmpdir, flush_interval=0.5),
            )
        ]
        if ctx.client is not None:
            sessions.append(
                (
                    "FirestoreSession",
                    FirestoreSession(
                        f"timer-{ctx.tag()}", bot_id=BOT, client=ctx.client, flush_interval=0.5, rpc_timeout=300
                    ),
                )
            )
        for name, s in sessions:
            asyncio.run(once(name, s, first))
            s.flush(120.0)
            s.close()  # Firestore: the run resets the emulator's data before the next workload
        sq = SQLiteSession(os.path.join(ctx.tmpdir, f"timer-{ctx.tag()}"))
        _feed(sq, first, pending)
        lite.measure(sq.save)
        sq.close()
        sq.delete()
    return [*ours.values(), lite]


def print_handoff(title: str, rows: list[HandOff]) -> None:
    print()
    print(f"== {title}")
    base = next((r for r in rows if r.impl.startswith("SQLiteSession")), None)
    print(f"{'implementation':<36}{'pending':>9}{'median':>12}{'max':>12}{'cpu':>12}{'x SQLite':>10}")
    for r in rows:
        wall, cpu = statistics.median(r.seconds), statistics.median(r.cpu)
        ratio = f"{wall / statistics.median(base.seconds):.4f}" if base is not None else "-"
        print(f"{r.impl:<36}{r.pending:>9}{_t(wall):>12}{_t(max(r.seconds)):>12}{_t(cpu):>12}{ratio:>10}")
    print("   wall time per call (median, max); cpu: median CPU time of the calling thread (no waiting for the GIL)")


def _t(seconds: float) -> str:
    return fmt_time(seconds)


# -- update states: 120 s of continuous changes, compressed 100x ------------------------------------


@dataclass
class StateWrites:
    scale: float
    seconds: float
    state_changes: int = 0
    saves: int = 0
    session_doc_writes: int = 0  # before close()
    at_close: int = 0
    entities: int = 0
    entities_stored: int = 0
    max_entity_latency: float = 0.0
    flush_interval: float = 0.0
    sqlite_commits: int = 0  # what Telethon's SQLiteSession does with the same calls


def bench_state_writes(ctx: Context, scale: float = 0.01) -> StateWrites:
    """120 s scaled by ``scale``: an update state change every 1 s, a new entity every 10 s, save() every 60 s."""
    from telethon_firestore_session import FirestoreSession

    res = StateWrites(scale, 120 * scale)
    res.flush_interval = 5 * scale
    s = FirestoreSession(
        f"states-{ctx.tag()}", bot_id=BOT, client=ctx.client, flush_interval=5 * scale, state_flush_interval=60 * scale
    )
    s.set_dc(2, "149.154.167.51", 443)
    s.auth_key = AuthKey(AUTH_KEY)
    s.save()
    store = s.store
    written_at: dict[int, float] = {}
    session_writes: list[float] = []
    write_changes = store.write_changes

    def recorded(changes: Any) -> None:  # the real write, with the time each record reached Firestore
        write_changes(changes)
        now = perf()
        if changes.states:
            session_writes.append(now)
        for eid in changes.entities:
            written_at.setdefault(eid, now)

    store.write_changes = recorded  # type: ignore[method-assign]
    lite = SQLiteSession(os.path.join(ctx.tmpdir, f"states-{ctx.tag()}"))
    lite_commits = 0
    seen_at: dict[int, float] = {}

    async def play() -> None:
        nonlocal lite_commits
        start = perf()
        tick = 0
        while (now := perf()) - start < res.seconds:
            tick += 1
            state = types.updates.State(1000 + tick, 5, DATE, 7, 0)
            s.set_update_state(0, state)
            lite.set_update_state(0, state)
            res.state_changes += 1
            if tick % 10 == 0:
                u = make_user(30_000_000 + tick)
                s.process_entities(updates([u]))
                lite.process_entities(updates([u]))
                seen_at[u.id] = now
            if tick % 60 == 0:  # Telethon's keepalive: set_update_state, then save(), every 60 s
                s.save()
                lite.save()
                lite_commits += 1
                res.saves += 1
            await asyncio.sleep(scale)

    asyncio.run(play())
    res.session_doc_writes = len(session_writes)
    s.close()
    lite.close()
    lite_commits += 1
    res.at_close = len(session_writes) - res.session_doc_writes
    res.sqlite_commits = lite_commits
    res.entities = len(seen_at)
    res.entities_stored = sum(1 for e in seen_at if e in written_at)
    res.max_entity_latency = max((written_at[e] - t for e, t in seen_at.items() if e in written_at), default=0.0)
    s.delete()
    lite.delete()
    return res


def print_states(r: StateWrites) -> None:
    print()
    print(f"== update states: 120 s of continuous changes, compressed {1 / r.scale:.0f}x ({r.seconds:.1f} s)")
    print(
        f"   {r.state_changes} set_update_state (one a second), {r.entities} new entities (one every 10 s), "
        f"{r.saves} save() (every 60 s, as Telethon's keepalive)"
    )
    print(
        f"   FirestoreSession: session document written {r.session_doc_writes} times, +{r.at_close} at close(); "
        f"entities stored {r.entities_stored}/{r.entities}, at most {r.max_entity_latency:.2f} s after they were seen "
        f"(flush_interval {r.flush_interval:.2f} s)"
    )
    print(f"   SQLiteSession, same calls: {r.sqlite_commits} commits (on save() and close())")


# -- a Firestore outage: lookups that miss memory --------------------------------------------------


@dataclass
class Outage:
    seconds: float
    misses: int
    lookup_timeout: float
    stall: float = 0.0
    longest: float = 0.0
    breaker_closed_after: float | None = None
    found_after: bool = False


def bench_outage(ctx: Context, emulator: Any, seconds: float, misses: int) -> Outage:
    """``misses`` distinct lookups that miss memory, spread over ``seconds`` of a paused emulator, on a loop."""
    from telethon_firestore_session import FirestoreSession

    user = f"outage-{ctx.tag()}"
    s = FirestoreSession(user, bot_id=BOT, client=ctx.client)
    s.process_entities(updates([make_user(40_000_000)]))
    s.close()
    s = FirestoreSession(user, bot_id=BOT, client=ctx.client)
    res = Outage(seconds, misses, inspect.signature(FirestoreSession).parameters["lookup_timeout"].default)
    durations: list[float] = []

    async def play() -> None:
        for i in range(misses):
            t0 = perf()
            with contextlib.suppress(ValueError):
                s.get_input_entity(f"@nobody_{ctx.run_id}_{i}")
            durations.append(perf() - t0)
            await asyncio.sleep(seconds / misses)

    emulator.pause()
    try:
        asyncio.run(play())
    finally:
        emulator.resume()
    res.stall = sum(durations)
    res.longest = max(durations)
    breaker = s.store.breaker
    t0 = perf()
    while breaker is not None and breaker.open and perf() - t0 < 60:
        time.sleep(0.05)
    res.breaker_closed_after = perf() - t0 if breaker is None or not breaker.open else None
    try:
        res.found_after = s.get_input_entity(user_id(40_000_000)) is not None
    except ValueError:
        res.found_after = False
    s.delete()
    return res


def print_outage(r: Outage) -> None:
    print()
    print(f"== a {r.seconds:.0f} s Firestore outage (emulator paused): {r.misses} distinct lookups that miss memory")
    closed = f"{r.breaker_closed_after:.1f} s" if r.breaker_closed_after is not None else "not within 60 s"
    print(
        f"   event loop stalled {r.stall:.2f} s in total (longest call {r.longest:.2f} s; lookup_timeout "
        f"{r.lookup_timeout:.1f} s); without the breaker: up to {r.misses * r.lookup_timeout:.0f} s"
    )
    print(f"   lookups resumed {closed} after the emulator did; the stored entity found again: {r.found_after}")


__all__ = [
    "FULL_SCALE",
    "QUICK_SCALE",
    "ScaleSizes",
    "bench_footprint",
    "bench_heap",
    "bench_outage",
    "bench_save_pending",
    "bench_state_writes",
    "bench_timer",
    "budget_mb",
]
