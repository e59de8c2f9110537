"""Issue 11: what an always-active user costs in Firestore operations, per user-day, and in dollars.

``python -m benchmarks.bench_cost [--quick] [--minutes N] [--compression C] [--markdown] [--json PATH]``
runs only this; ``python -m benchmarks`` runs it too, at the end (``--quick``: 6 simulated minutes).

One user is played against the real emulator with time compressed ``C`` times
(default 60: a simulated hour in a minute): an update every 2 s (``set_update_state``
with a new ``pts``), 200 new entities an hour (``process_entities`` of a realistic
``types.User``), 50 lookups an hour that miss memory (``get_input_entity`` of stored
entities by id and by username, and of unknown usernames), Telethon's ``save()``
every 60 s, and a restart a day (close, open again). Every interval of the library is
divided by the same ``C``: ``flush_interval``, ``state_flush_interval``, the lease TTL
(and so its renewal), the background writer's poll and periodic interval; so the
operations counted per simulated hour are the real ones. ``--minutes`` simulated
minutes are measured (default 60; ``--quick`` 6), then scaled to a day
(``1440 / minutes`` times), plus one restart measured on its own.

Two scenarios: a bare ``FirestoreSession``, and a user held by ``UserSessionManager``
(backend firestore, its client a real ``TelegramClient`` on the Telegram double of
``tests/telegram_double.py``): the manager leases the session, renews the lease, and
every write commit carries a guard write of the session document (fencing, see
``telethon_firestore_session/firestore/lease.py``).

Operations are counted at the RPC boundary of the google-cloud-firestore client (its
GAPIC methods, not the library's own counters): ``commit`` counts the writes and
deletes in the request (a transform or a field delete is a write); ``batch_get_documents``,
``run_query`` and ``run_aggregation_query`` count the documents returned, at least one
read per call; ``begin_transaction`` and ``rollback`` cost nothing; a listen stream
counts the documents it delivers (and one read when it starts). Each operation is
attributed to a cause from the request itself (which document, which fields).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/bench_cost.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import CountingStream, Target, firestore_emulator, raw_proto

PROJECT = "demo-bench-cost"
BOT = "costbot"
API = {"api_id": 12345, "api_hash": "0123456789abcdef0123456789abcdef"}
DAY_MINUTES = 24 * 60

#: The workload, per simulated hour.
UPDATE_EVERY = 2.0  # seconds
ENTITIES_PER_HOUR = 200
LOOKUPS_PER_HOUR = 50
SAVE_EVERY = 60.0
#: The library's intervals at their defaults (real seconds), divided by the compression.
FLUSH_INTERVAL = 5.0
STATE_FLUSH_INTERVAL = 60.0
LEASE_TTL = 60.0
WRITER_INTERVAL = 5.0
WRITER_POLL = 0.5
#: Stored entities that are not in memory when the measured hour starts (looked up by id and username).
SEEDED = 200
#: Simulated minutes per scenario in a quick run (CI): about 8 s each with the setup.
QUICK_MINUTES = 6
#: Writes per user-day allowed (issue 11 acceptance).
WRITE_BUDGET = 2_000

#: Firestore Standard edition, us-central1, USD per 100,000 documents, and the free quota per day.
PRICES = {"reads": 0.03, "writes": 0.09, "deletes": 0.01}
FREE_QUOTA = {"reads": 50_000, "writes": 20_000, "deletes": 20_000}
PRICE_SOURCE = (
    "Firestore Standard edition list prices for us-central1 ($0.03 per 100,000 document reads, $0.09 per "
    "100,000 writes, $0.01 per 100,000 deletes; free quota 50,000 reads, 20,000 writes, 20,000 deletes a day), "
    "from firebase.google.com/docs/firestore/standard-edition and cloud.google.com/firestore/pricing, "
    "as stored on 2026-12-01"
)


# -- counting at the RPC boundary ------------------------------------------------------------


def _is_session_doc(path: str) -> bool:
    parts = path.split("/documents/", 1)[-1].split("/")
    return len(parts) == 4 and parts[2] in ("user_sessions", "bot_session")


def _doc_kind(path: str) -> str:
    if "/entities/" in path:
        return "entity documents"
    if "/sent_files/" in path:
        return "sent-file documents"
    return "session document" if _is_session_doc(path) else "other documents"


def _session_write_kind(fields: set[str], in_transaction: bool, guard: bool) -> str:
    """What a write of the session document is for, from the fields it updates.

    ``guard``: a conditional update committed with other documents (a leased session's fenced commit).
    """
    if in_transaction and "lease" in fields:
        return "lease acquire (transaction)"
    if guard:
        return "guard writes (fenced commits of entities)"
    if "update_states" in fields or any(f.startswith("update_states.") for f in fields):
        return "update states"
    if fields & {"auth_key", "dc_id", "server_address", "port", "takeout_id"}:
        return "auth key / DC (save())"
    if "lease.expires_at" in fields:
        return "lease renewals"
    if fields == {"lease"}:
        return "lease release"
    if any(f.startswith("handoff") for f in fields):
        return "hand-over requests"
    return "session document, other"


class _Call:
    __slots__ = ("cause", "docs")

    def __init__(self, cause: str) -> None:
        self.cause = cause
        self.docs = 0

    def found(self) -> None:
        self.docs += 1


class OpCounter:
    """Firestore reads, writes and deletes a client makes, each with its cause; counted from the RPCs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.writes: collections.Counter[str] = collections.Counter()
        self.deletes: collections.Counter[str] = collections.Counter()
        self._reads: list[_Call] = []
        self.commits = 0

    def install(self, client: Any) -> None:
        # The GAPIC client (what every DocumentReference/Query/WriteBatch call goes through) is
        # only reachable as client._firestore_api; listen streams go to its transport directly.
        api = client._firestore_api
        for name, wrap in (
            ("commit", self._commit),
            ("batch_get_documents", self._batch_get),
            ("run_query", self._run_query),
            ("run_aggregation_query", self._aggregation),
        ):
            setattr(api, name, wrap(getattr(api, name)))
        transport = api._transport
        listen = transport.listen  # creates the stub; watch.py calls transport.listen again
        transport._stubs["listen"] = self._listen(listen)

    def reset(self) -> None:
        with self._lock:
            self.writes.clear()
            self.deletes.clear()
            self._reads = []
            self.commits = 0

    @property
    def reads(self) -> collections.Counter[str]:
        out: collections.Counter[str] = collections.Counter()
        with self._lock:
            for call in self._reads:
                out[call.cause] += max(1, call.docs)
        return out

    def snapshot(self) -> dict[str, collections.Counter[str]]:
        with self._lock:
            writes, deletes = collections.Counter(self.writes), collections.Counter(self.deletes)
        return {"reads": self.reads, "writes": writes, "deletes": deletes}

    def _read(self, cause: str) -> _Call:
        call = _Call(cause)
        with self._lock:
            self._reads.append(call)
        return call

    def _commit(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def commit(*args: Any, request: Any = None, **kwargs: Any) -> Any:
            result = real(*args, request=request, **kwargs)  # counted once it succeeded
            writes = [raw_proto(w) for w in (request or {}).get("writes", [])]
            in_txn = bool((request or {}).get("transaction"))
            ops = [(w.WhichOneof("operation"), w) for w in writes]
            paths = [
                w.update.name if op == "update" else w.delete if op == "delete" else w.transform.document
                for op, w in ops
            ]
            with_others = any(not _is_session_doc(p) for p in paths)
            with self._lock:
                self.commits += 1
                for (op, w), path in zip(ops, paths, strict=True):
                    kind = _doc_kind(path)
                    if op == "delete":
                        self.deletes[kind] += 1
                    elif kind == "session document":
                        guard = with_others and w.current_document.HasField("update_time")
                        self.writes[_session_write_kind(set(w.update_mask.field_paths), in_txn, guard)] += 1
                    else:
                        self.writes[kind] += 1
            return result

        return commit

    def _batch_get(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def batch_get(*args: Any, request: Any = None, **kwargs: Any) -> Any:
            req = request or {}
            paths = list(req.get("documents", []))
            if any("/entities/" in p for p in paths):
                cause = "lookups by id (entity documents)"
            elif any("/sent_files/" in p for p in paths):
                cause = "sent-file lookups"
            elif req.get("transaction"):
                cause = "lease acquire (in its transaction)"
            elif req.get("mask"):
                cause = "lease checks (renewal, fencing, release)"
            else:
                cause = "session document (open, login state)"
            return CountingStream(real(*args, request=request, **kwargs), "found", self._read(cause).found)

        return batch_get

    def _run_query(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def run_query(*args: Any, request: Any = None, **kwargs: Any) -> Any:
            query = raw_proto((request or {}).get("structured_query"))
            collection = query.from_[0].collection_id if query is not None and len(query.from_) else "?"
            cause = "lookups by username/phone (queries)" if collection == "entities" else f"queries of {collection}"
            return CountingStream(real(*args, request=request, **kwargs), "document", self._read(cause).found)

        return run_query

    def _aggregation(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def aggregation(*args: Any, **kwargs: Any) -> Any:
            self._read("aggregation queries (count)")  # one read per up to 1,000 index entries: these are small
            return real(*args, **kwargs)

        return aggregation

    def _listen(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def listen(*args: Any, **kwargs: Any) -> Any:
            listener = self._read("listener (hand-over watch, one per process)")
            return CountingStream(real(*args, **kwargs), "document_change", listener.found)

        return listen


# -- the workload ----------------------------------------------------------------------------


def _user(i: int) -> Any:
    from benchmarks.bench_sessions import make_user

    return make_user(i)


def _updates(users: list[Any]) -> Any:
    from benchmarks.bench_sessions import updates

    return updates(users)


SEED_BASE = 40_000_000  # stored before the measured hour, not in memory
NEW_BASE = 50_000_000  # new entities seen during the hour


@dataclasses.dataclass
class Played:
    minutes: float
    updates: int = 0
    entities: int = 0
    lookups: int = 0
    lookups_found: int = 0
    saves: int = 0
    lag: float = 0.0  # how far the player fell behind its schedule at most (real seconds)


async def play(session: Any, minutes: float, compression: float) -> Played:
    """``minutes`` simulated minutes of an always-active user, in ``minutes * 60 / compression`` real seconds."""
    from telethon.tl import types

    from benchmarks.bench_sessions import DATE, user_id

    res = Played(minutes)
    ticks = int(minutes * 60 / UPDATE_EVERY)
    entity_every = int(3600 / ENTITIES_PER_HOUR / UPDATE_EVERY)  # ticks: 18 s
    lookup_every = int(3600 / LOOKUPS_PER_HOUR / UPDATE_EVERY)  # 72 s
    save_every = int(SAVE_EVERY / UPDATE_EVERY)
    start = time.perf_counter()
    for tick in range(1, ticks + 1):
        due = start + tick * UPDATE_EVERY / compression
        if (delay := due - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        else:
            res.lag = max(res.lag, -delay)
        session.set_update_state(0, types.updates.State(10_000 + tick, 7, DATE, 9, 0))
        res.updates += 1
        if tick % entity_every == 0:
            session.process_entities(_updates([_user(NEW_BASE + res.entities)]))
            res.entities += 1
        if tick % lookup_every == 0:
            n = res.lookups
            seeded = SEED_BASE + n % SEEDED  # a different stored entity each time: each one a miss
            key: Any = (user_id(seeded), f"user{seeded}", f"nobody{n}")[n % 3]
            try:
                session.get_input_entity(key)
                res.lookups_found += 1
            except ValueError:  # an unknown username, as Telethon's sessions answer it
                pass
            res.lookups += 1
        if tick % save_every == 0:
            session.save()  # Telethon's keepalive saves every 60 s
            res.saves += 1
    return res


@contextlib.contextmanager
def scaled_writer(compression: float) -> Iterator[Any]:
    """The process-wide background writer, with its poll and periodic interval divided by ``compression``."""
    from telethon_firestore_session import BackgroundWriter

    old = BackgroundWriter.get()
    old.flush(None, 60.0)
    writer = BackgroundWriter(interval=WRITER_INTERVAL / compression, poll=WRITER_POLL / compression)
    # The benchmark swaps the process-wide instance: BackgroundWriter has no setter for it (a library
    # never needs one), and every session and lease asks BackgroundWriter.get() for it.
    BackgroundWriter._instance = writer
    try:
        yield writer
    finally:
        writer.flush(None, 60.0)
        writer.stop()
        BackgroundWriter._instance = old


@dataclasses.dataclass
class Scenario:
    name: str
    compression: float
    played: Played | None = None
    hour: dict[str, collections.Counter[str]] = dataclasses.field(default_factory=dict)
    restart: dict[str, collections.Counter[str]] = dataclasses.field(default_factory=dict)
    lost_lease: bool = False

    def per_day(self) -> dict[str, collections.Counter[str]]:
        """The measured minutes scaled to a day, plus one restart."""
        assert self.played is not None
        factor = DAY_MINUTES / self.played.minutes
        out: dict[str, collections.Counter[str]] = {}
        for kind in ("reads", "writes", "deletes"):
            day: collections.Counter[str] = collections.Counter()
            for cause, n in self.hour.get(kind, {}).items():
                day[cause] += round(n * factor)
            for cause, n in self.restart.get(kind, {}).items():
                day[f"restart: {cause}"] += n
            out[kind] = day
        return out

    def totals(self) -> dict[str, int]:
        return {kind: sum(c.values()) for kind, c in self.per_day().items()}


def _seed_users() -> Any:
    return _updates([_user(SEED_BASE + j) for j in range(SEEDED)])


async def bare_session(client: Any, counter: OpCounter, minutes: float, compression: float) -> Scenario:
    """A FirestoreSession on its own: no lease, unconditional writes."""
    from telethon.crypto import AuthKey

    from benchmarks.bench_sessions import AUTH_KEY
    from telethon_firestore_session import FirestoreSession

    sc = Scenario("FirestoreSession", compression)
    uid = f"bare-{int(time.time())}"
    setup = FirestoreSession(uid, bot_id=BOT, client=client)
    setup.set_dc(2, "149.154.167.51", 443)
    setup.auth_key = AuthKey(AUTH_KEY)
    setup.process_entities(_seed_users())
    setup.close()
    kwargs = {
        "bot_id": BOT,
        "client": client,
        "flush_interval": FLUSH_INTERVAL / compression,
        "state_flush_interval": STATE_FLUSH_INTERVAL / compression,
    }
    with scaled_writer(compression) as writer:
        session = FirestoreSession(uid, **kwargs)
        writer.flush(None, 30.0)
        counter.reset()
        sc.played = await play(session, minutes, compression)
        await asyncio.sleep(2 * FLUSH_INTERVAL / compression)  # the last flush timer fires, as in a longer run
        writer.flush(None, 30.0)
        sc.hour = counter.snapshot()
        counter.reset()
        session.close()
        session = FirestoreSession(uid, **kwargs)
        sc.restart = counter.snapshot()
        session.close()
        session.delete()
    return sc


async def managed_user(client: Any, counter: OpCounter, minutes: float, compression: float) -> Scenario:
    """A user held by UserSessionManager (backend firestore): leased, renewed, every commit fenced."""
    from telethon_firestore_session.manager import UserSessionManager
    from tests.telegram_double import FakeTelegram

    sc = Scenario("UserSessionManager (leased)", compression)
    fake = FakeTelegram()
    phone = "+15550001234"
    fake.add_account(phone, user_id=7_777_777, first_name="Always", username="alwaysactive")
    uid = f"managed-{int(time.time())}"
    common: dict[str, Any] = {"backend": "firestore", "firestore_client": client, "client_factory": fake.client, **API}

    setup = UserSessionManager(BOT, **common)
    try:
        assert (await setup.begin_login(uid, phone)).status.value == "code_sent"
        assert (await setup.complete_login(uid, fake.last_code(phone))).ok
        tg = await setup.get_user_client(uid)
        tg.session.process_entities(_seed_users())
    finally:
        await setup.aclose()

    scaled: dict[str, Any] = {
        **common,
        "lease_ttl": LEASE_TTL / compression,
        "flush_interval": FLUSH_INTERVAL / compression,
        "state_flush_interval": STATE_FLUSH_INTERVAL / compression,
        "handoff_timeout": 0.0,
    }
    with scaled_writer(compression) as writer:
        manager = UserSessionManager(BOT, **scaled)
        try:
            tg = await manager.get_user_client(uid)
            await asyncio.to_thread(writer.flush, None, 30.0)
            counter.reset()
            sc.played = await play(tg.session, minutes, compression)
            await asyncio.sleep(2 * FLUSH_INTERVAL / compression)
            await asyncio.to_thread(writer.flush, None, 30.0)
            sc.hour = counter.snapshot()
            sc.lost_lease = manager.evictions["lost_lease"] > 0 or not tg.is_connected()
            counter.reset()
        finally:
            await manager.aclose()
        manager = UserSessionManager(BOT, **scaled)
        try:
            await manager.get_user_client(uid)
            sc.restart = counter.snapshot()
            await manager.delete_user_session(uid, log_out=False)
        finally:
            await manager.aclose()
    return sc


# -- reporting -------------------------------------------------------------------------------


def cost(totals: dict[str, int]) -> tuple[int, float]:
    """Always-active users within the free quota, and USD per 1,000 users a month (30 days, no free quota)."""
    fit = min(FREE_QUOTA[k] // totals[k] if totals[k] else 10**9 for k in FREE_QUOTA)
    usd = sum(totals[k] * 1000 * 30 / 100_000 * PRICES[k] for k in PRICES)
    return fit, usd


def print_scenarios(scenarios: list[Scenario], *, before: dict[str, dict[str, int]] | None = None) -> None:
    print()
    for sc in scenarios:
        p = sc.played
        assert p is not None
        print(
            f"== Firestore operations per user-day: {sc.name} "
            f"({p.minutes:.0f} simulated minutes, time compressed {sc.compression:.0f}x; "
            "scaled to 24 h, plus 1 restart)"
        )
        print(
            f"   played: {p.updates} update states, {p.entities} new entities, {p.lookups} lookups missing memory "
            f"({p.lookups_found} found), {p.saves} save(); schedule lag at most {p.lag * 1000:.0f} ms (real)"
            + ("; THE LEASE WAS LOST (compression too high for this machine's load)" if sc.lost_lease else "")
        )
        day = sc.per_day()
        for kind in ("writes", "reads", "deletes"):
            for cause, n in sorted(day[kind].items(), key=lambda kv: -kv[1]):
                print(f"   {kind:<8} {n:>8,}  {cause}")
        totals = sc.totals()
        fit, usd = cost(totals)
        print(
            f"   total    writes {totals['writes']:,}, reads {totals['reads']:,}, deletes {totals['deletes']:,} "
            f"per user-day; {fit:,} always-active users fit the free quota; "
            f"${usd:,.2f} per 1,000 users a month (no free quota)"
        )
    print(f"   prices: {PRICE_SOURCE}")


def markdown_table(scenarios: list[Scenario]) -> str:
    rows = [
        "| per always-active user-day | " + " | ".join(sc.name for sc in scenarios) + " |",
        "| --- | " + " | ".join("---:" for _ in scenarios) + " |",
    ]
    causes: dict[tuple[str, str], None] = {}
    days = [sc.per_day() for sc in scenarios]
    for day in days:
        for kind in ("writes", "reads", "deletes"):
            for cause in sorted(day[kind], key=lambda c: -day[kind][c]):
                causes[(kind, cause)] = None
    for kind, cause in causes:
        rows.append(f"| {kind}: {cause} | " + " | ".join(f"{d[kind].get(cause, 0):,}" for d in days) + " |")
    totals = [sc.totals() for sc in scenarios]
    for kind in ("writes", "reads", "deletes"):
        rows.append(f"| **{kind}** | " + " | ".join(f"**{t[kind]:,}**" for t in totals) + " |")
    fits = [cost(t) for t in totals]
    rows.append("| users within the free quota | " + " | ".join(f"{f:,}" for f, _ in fits) + " |")
    rows.append("| USD per 1,000 users a month | " + " | ".join(f"${u:,.2f}" for _, u in fits) + " |")
    return "\n".join(rows)


def targets_for(scenarios: list[Scenario]) -> list[Target]:
    out = []
    for sc in scenarios:
        writes = sc.totals()["writes"]
        out.append(Target("11", f"cost: writes per always-active user-day, {sc.name}", writes, WRITE_BUDGET, ""))
        if sc.lost_lease:
            out.append(Target("11", f"cost: {sc.name} kept its lease through the run", 0, 1, "", "=="))
    return out


async def run_cost(client: Any, counter: OpCounter, minutes: float, compression: float) -> list[Scenario]:
    return [
        await bare_session(client, counter, minutes, compression),
        await managed_user(client, counter, minutes, compression),
    ]


def measure(quick: bool, minutes: float | None = None, compression: float | None = None) -> list[Scenario]:
    """Both scenarios on a client of their own (the emulator must be running: FIRESTORE_EMULATOR_HOST)."""
    from google.cloud import firestore

    client = firestore.Client(project=PROJECT)
    counter = OpCounter()
    counter.install(client)
    try:
        return asyncio.run(run_cost(client, counter, minutes or (QUICK_MINUTES if quick else 60), compression or 60))
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_cost", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_MINUTES} simulated minutes per scenario; never fails"
    )
    parser.add_argument("--minutes", type=float, help="simulated minutes measured per scenario (default 60)")
    parser.add_argument("--compression", type=float, default=60.0, help="time compression (default 60)")
    parser.add_argument("--markdown", action="store_true", help="also print the table as markdown")
    parser.add_argument("--json", metavar="PATH", help="also write the counts as JSON")
    args = parser.parse_args(argv)
    with firestore_emulator(PROJECT) as emu:
        if emu is None:
            print("no Firestore emulator: nothing measured")
            return 0 if args.quick else 1
        scenarios = measure(args.quick, args.minutes, args.compression)
    print_scenarios(scenarios)
    if args.markdown:
        print()
        print(markdown_table(scenarios))
    targets = targets_for(scenarios)
    print()
    for t in targets:
        print(t.describe())
    if args.json:
        data = [
            {
                "scenario": sc.name,
                "played": dataclasses.asdict(sc.played) if sc.played else None,
                "per_day": {k: dict(v) for k, v in sc.per_day().items()},
                "totals": sc.totals(),
            }
            for sc in scenarios
        ]
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    failed = any(t.status == "FAIL" for t in targets)
    return 1 if failed and not args.quick else 0


if __name__ == "__main__":
    raise SystemExit(main())
