"""The workloads: our sessions against Telethon's ``SQLiteSession`` and ``MemorySession``.

Every workload runs each implementation in turn inside every repeat (the order
rotates), so a burst of load from other processes hits all of them alike.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import gc
import inspect
import itertools
import math
import os
import random
import shutil
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from telethon.crypto import AuthKey
from telethon.sessions import MemorySession, SQLiteSession
from telethon.tl import types

from benchmarks._harness import MAIN_THREAD, READ_METHODS, Measurement, RpcCounter, Workload, percentile

BOT = "bench"
BATCH = 20
DATE = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
AUTH_KEY = bytes(random.Random(7).getrandbits(8) for _ in range(256))
CIPHER_KEY = bytes(range(32))
perf = time.perf_counter


# -- data ----------------------------------------------------------------------------------


def user_id(i: int) -> int:
    return 500_000_000 + i


def make_user(i: int, version: int = 0) -> types.User:
    """A real ``types.User`` as Telegram sends it: access hash, username, phone and names."""
    uid = user_id(i)
    return types.User(
        id=uid,
        access_hash=(uid * 2654435761) % (1 << 63),
        first_name=f"First{i}",
        last_name=f"Last{i}" if version == 0 else f"Last{i}v{version}",
        username=f"user{i}",
        phone=f"1555{i:07d}",
    )


def updates(users: Sequence[types.User]) -> types.Updates:
    """What ``process_entities`` gets after a batch of updates."""
    return types.Updates(updates=[], users=list(users), chats=[], date=DATE, seq=0)


class Population:
    """``n`` users in batches of 20, built once and shared by every implementation."""

    def __init__(self, n: int, users: list[types.User] | None = None) -> None:
        self.users = users[:n] if users is not None else [make_user(i) for i in range(n)]
        self.batches = [updates(self.users[i : i + BATCH]) for i in range(0, n, BATCH)]

    def prefix(self, n: int) -> Population:
        """The first ``n`` users (the same objects)."""
        return Population(n, self.users)

    def __len__(self) -> int:
        return len(self.users)


# -- implementations -----------------------------------------------------------------------


@dataclass
class Impl:
    """One session class, with a way to make fresh sessions and to get rid of them."""

    name: str
    new: Callable[[], Any]
    dispose: Callable[[Any], None]
    firestore: bool = False
    error: str | None = None


@dataclass
class Context:
    quick: bool
    tmpdir: str
    client: Any = None  # firestore.Client, or None without the emulator
    emulator: Any = None  # tests.emulator.Emulator (it can be paused when this run started it)
    rpc: RpcCounter = field(default_factory=RpcCounter)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    notes: list[str] = field(default_factory=list)
    scoped_cls: Any = None
    cipher: Any = None
    cipher_kwargs: dict[str, Any] = field(default_factory=dict)
    scoped_cipher_kwargs: dict[str, Any] = field(default_factory=dict)  # empty: ScopedSQLiteSession takes no cipher
    _n: Iterator[int] = field(default_factory=itertools.count)

    def tag(self) -> str:
        return f"{self.run_id}-{next(self._n)}"

    def flush_writer(self) -> None:
        from telethon_firestore_session import BackgroundWriter

        if not BackgroundWriter.get().flush(None, 120.0):
            raise RuntimeError("the background writer did not finish within 120 s")


def optional_modules(ctx: Context) -> None:
    """Pick up ScopedSQLiteSession and SessionCipher when they are importable."""
    try:
        from telethon_firestore_session.sqlite import ScopedSQLiteSession

        ctx.scoped_cls = ScopedSQLiteSession
    except ImportError as exc:
        ctx.notes.append(f"ScopedSQLiteSession is not importable ({exc}); issue 3 workloads skipped")
    try:
        from telethon_firestore_session.crypto import SessionCipher
        from telethon_firestore_session.firestore import FirestoreSession

        params = inspect.signature(FirestoreSession).parameters
        if "cipher" not in params:
            raise ImportError("FirestoreSession has no cipher= parameter yet")
        ctx.cipher = SessionCipher(CIPHER_KEY)
        ctx.cipher_kwargs = {"cipher": ctx.cipher}
        if "encrypt_pii" in params:
            ctx.cipher_kwargs["encrypt_pii"] = True
    except ImportError as exc:
        ctx.notes.append(f"SessionCipher is not usable ({exc}); issue 4 workloads skipped")
        return
    if ctx.scoped_cls is not None:
        params = inspect.signature(ctx.scoped_cls).parameters
        if "cipher" in params and "encrypt_pii" in params:
            ctx.scoped_cipher_kwargs = {"cipher": ctx.cipher, "encrypt_pii": True}
        else:
            ctx.notes.append("ScopedSQLiteSession has no cipher=/encrypt_pii= yet; its encryption workloads skipped")


def _sqlite_new(ctx: Context) -> Any:
    return SQLiteSession(os.path.join(ctx.tmpdir, f"telethon-{ctx.tag()}"))


def _sqlite_dispose(s: Any) -> None:
    s.close()
    s.delete()


def _firestore_new(ctx: Context, **kw: Any) -> Any:
    from telethon_firestore_session.firestore import FirestoreSession

    return FirestoreSession(ctx.tag(), bot_id=BOT, client=ctx.client, **kw)


def _firestore_dispose(s: Any) -> None:
    s.delete()  # drops what is queued; nothing of a benchmark's session is kept


def _scoped_new(ctx: Context, **kw: Any) -> Any:
    return ctx.scoped_cls(ctx.tag(), bot_id=BOT, sessions_dir=os.path.join(ctx.tmpdir, "scoped"), **kw)


def _scoped_dispose(s: Any) -> None:
    s.delete()
    s.close()


def implementations(ctx: Context) -> list[Impl]:
    impls = [
        Impl("SQLiteSession", lambda: _sqlite_new(ctx), _sqlite_dispose),
        Impl("MemorySession", MemorySession, lambda s: None),
    ]
    if ctx.client is not None:
        impls.append(Impl("FirestoreSession", lambda: _firestore_new(ctx), _firestore_dispose, firestore=True))
        if ctx.cipher is not None:
            impls.append(
                Impl(
                    "FirestoreSession+cipher",
                    lambda: _firestore_new(ctx, **ctx.cipher_kwargs),
                    _firestore_dispose,
                    firestore=True,
                )
            )
    if ctx.scoped_cls is not None:
        impls.append(Impl("ScopedSQLiteSession", lambda: _scoped_new(ctx), _scoped_dispose))
        if ctx.scoped_cipher_kwargs:
            impls.append(
                Impl(
                    "ScopedSQLiteSession+cipher",
                    lambda: _scoped_new(ctx, **ctx.scoped_cipher_kwargs),
                    _scoped_dispose,
                )
            )
    return impls


def _rotate(impls: list[Impl], r: int) -> list[Impl]:
    live = [i for i in impls if i.error is None]
    if not live:
        return live
    k = r % len(live)
    return live[k:] + live[:k]


def _fail(impl: Impl, ctx: Context, what: str) -> None:
    impl.error = f"{what}: {traceback.format_exc(limit=3).strip().splitlines()[-1]}"
    ctx.notes.append(f"{impl.name} failed in {what} and is left out from here on: {impl.error}")
    print(f"   !! {impl.name} failed in {what}:\n{traceback.format_exc(limit=6)}")


class SyncRpcs:
    """RPCs made from the calling (main) thread inside timed regions, per implementation."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.counts: dict[str, int] = {}

    def measure(self, impl: Impl, fn: Callable[[], Any]) -> tuple[float, Any]:
        mark = self.ctx.rpc.mark()
        t0 = perf()
        result = fn()
        dt = perf() - t0
        self.counts[impl.name] = self.counts.get(impl.name, 0) + self.ctx.rpc.since(mark, thread=MAIN_THREAD)
        return dt, result

    def note(self, impl: Impl) -> str:
        return f"sync RPCs {self.counts.get(impl.name, 0)}" if impl.firestore else ""

    def info(self, impl: Impl) -> dict[str, Any]:
        return {"sync_rpcs": self.counts.get(impl.name, 0)} if impl.firestore else {}


# -- issue 2/3/4: process_entities -----------------------------------------------------------


def bench_process_entities(ctx: Context, impls: list[Impl], pop: Population, repeats: int) -> list[Workload]:
    new = Workload("process_new", f"process_entities, 20 new users per call ({len(pop.batches)} calls)", "min")
    seen = Workload(
        "process_seen", f"process_entities, 20 users seen again, unchanged ({len(pop.batches)} calls)", "min"
    )
    samples: dict[tuple[str, str], list[float]] = {}
    sync = SyncRpcs(ctx)
    for r in range(repeats):
        for impl in _rotate(impls, r):
            try:
                s = impl.new()
                gc.collect()

                def feed(s: Any = s) -> None:
                    for b in pop.batches:
                        s.process_entities(b)

                dt_new, _ = sync.measure(impl, feed)
                dt_seen, _ = sync.measure(impl, feed)
                impl.dispose(s)
            except Exception:  # noqa: BLE001 - report it and go on without this implementation
                _fail(impl, ctx, "process_entities")
                continue
            samples.setdefault((impl.name, "new"), []).append(dt_new / len(pop.batches))
            samples.setdefault((impl.name, "seen"), []).append(dt_seen / len(pop.batches))
        if ctx.client is not None:
            ctx.flush_writer()
    for impl in impls:
        for w, kind in ((new, "new"), (seen, "seen")):
            got = samples.get((impl.name, kind))
            if got:
                w.rows.append(Measurement(w.key, impl.name, got, len(pop.batches), sync.note(impl), sync.info(impl)))
    for w in (new, seen):
        w.notes.append(f"{repeats} repeats; per call; ratios on the min (CPU-bound)")
    return [new, seen]


# -- issue 2/3/4: get_input_entity hits ------------------------------------------------------


def _populate(impl: Impl, pop: Population) -> Any:
    s = impl.new()
    for b in pop.batches:
        s.process_entities(b)
    if not impl.firestore:
        # SQLite commits; a store-backed session is drained so that no writer traffic runs
        # meanwhile. Firestore is left unsaved for the same reason (nothing is written).
        s.save()
        if hasattr(s, "flush"):
            s.flush(timeout=120.0)
    return s


def lookup_keys(pop: Population, kind: str, n: int, seed: int) -> list[Any]:
    rnd = random.Random(seed)
    picks = [rnd.randrange(len(pop)) for _ in range(n)]
    if kind == "id":
        return [user_id(i) for i in picks]
    if kind == "username":
        return [f"user{i}" for i in picks]
    return [f"+1555{i:07d}" for i in picks]


def bench_lookups(
    ctx: Context, impls: list[Impl], pop: Population, repeats: int, max_calls: int, budget: float
) -> list[Workload]:
    """get_input_entity hits by id, username and phone, with ``len(pop)`` entities known."""
    size = f"{len(pop) // 1000}k"
    kinds = ("id", "username", "phone")
    works = {k: Workload(f"lookup_{k}_{size}", f"get_input_entity hit by {k}, {size} entities", "min") for k in kinds}
    sync = SyncRpcs(ctx)
    sessions: dict[str, Any] = {}
    for impl in impls:
        if impl.error is None:
            try:
                sessions[impl.name] = _populate(impl, pop)
            except Exception:  # noqa: BLE001
                _fail(impl, ctx, f"populating {size}")
    # The same keys for everyone, and the same answers from everyone.
    keys = {k: lookup_keys(pop, k, max_calls, seed=len(pop) + i) for i, k in enumerate(kinds)}
    reference = sessions.get("SQLiteSession")
    calls: dict[tuple[str, str], int] = {}
    for impl in impls:
        s = sessions.get(impl.name)
        if s is None:
            continue
        try:
            for kind in kinds:
                for key in keys[kind][:10]:
                    got = s.get_input_entity(key)
                    if reference is not None and got != reference.get_input_entity(key):
                        raise AssertionError(f"{impl.name} answers {got} for {key!r}, SQLiteSession differs")
                # Calibrate: enough calls for about `budget` seconds per sample.
                t0 = perf()
                for key in keys[kind][:5]:
                    s.get_input_entity(key)
                est = (perf() - t0) / 5
                calls[(impl.name, kind)] = max(5, min(max_calls, int(budget / max(est, 1e-7))))
        except Exception:  # noqa: BLE001
            _fail(impl, ctx, f"lookups at {size}")
    samples: dict[tuple[str, str], list[float]] = {}
    for r in range(repeats):
        for impl in _rotate(impls, r):
            s = sessions.get(impl.name)
            if s is None:
                continue
            for kind in kinds:
                n = calls[(impl.name, kind)]
                ks = keys[kind][:n]
                gie = s.get_input_entity

                def run(ks: list[Any] = ks, gie: Any = gie) -> None:
                    for key in ks:
                        gie(key)

                dt, _ = sync.measure(impl, run)
                samples.setdefault((impl.name, kind), []).append(dt / n)
    for impl in impls:
        for kind in kinds:
            got = samples.get((impl.name, kind))
            if got:
                n = calls[(impl.name, kind)]
                note = f"{n} calls/sample; {sync.note(impl)}".strip("; ")
                works[kind].rows.append(Measurement(works[kind].key, impl.name, got, n, note, sync.info(impl)))
    for impl in impls:
        s = sessions.get(impl.name)
        if s is not None:
            try:
                impl.dispose(s)
            except Exception:  # noqa: BLE001
                _fail(impl, ctx, "disposing")
    for w in works.values():
        w.notes.append(f"{repeats} repeats; per call; ratios on the min (CPU-bound)")
    return list(works.values())


# -- issue 2/3/4: save() with only entities changed --------------------------------------------


def bench_save(ctx: Context, impls: list[Impl], pop: Population, iterations: int) -> Workload:
    w = Workload(
        "save_entities",
        f"save() after 20 new users (header unchanged), {iterations} calls",
        "median",
        columns=("median", "p99", "max", "cpu_p99"),
        baselines=("SQLiteSession",),
    )
    sync = SyncRpcs(ctx)
    samples: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    batches = pop.batches[:iterations]
    # Interleave implementations in rounds so that background load is shared.
    live: dict[str, Any] = {}
    for impl in impls:
        if impl.error is None:
            try:
                s = impl.new()
                s.set_dc(2, "149.154.167.51", 443)
                s.auth_key = AuthKey(AUTH_KEY)
                s.save()  # the header is written through once, before the measurement
                live[impl.name] = s
            except Exception:  # noqa: BLE001
                _fail(impl, ctx, "save() setup")
    rounds = 10
    per_round = max(1, len(batches) // rounds)
    for r in range(rounds):
        for impl in _rotate(impls, r):
            s = live.get(impl.name)
            if s is None:
                continue
            out = samples.setdefault(impl.name, [])
            cpu_out = cpu.setdefault(impl.name, [])
            try:
                for b in batches[r * per_round : (r + 1) * per_round]:
                    s.process_entities(b)
                    c0 = time.thread_time()
                    dt, _ = sync.measure(impl, s.save)
                    cpu_out.append(time.thread_time() - c0)
                    out.append(dt)
            except Exception:  # noqa: BLE001
                _fail(impl, ctx, "save()")
                live.pop(impl.name, None)
    for impl in impls:
        s = live.get(impl.name)
        if s is None:
            continue
        extra = sync.info(impl)
        extra["cpu"] = cpu.get(impl.name, [])
        if impl.firestore:
            t0 = perf()
            ok = s.flush(timeout=120.0)
            extra.update(writer_drain_s=perf() - t0, drained=ok, writes=s._firestore.writes)
        impl.dispose(s)
        got = samples.get(impl.name)
        if got:
            note = sync.note(impl)
            if impl.firestore:
                note += f", background writes {extra['writes']}"
            w.rows.append(Measurement(w.key, impl.name, got, 1, note.strip(", "), extra))
    w.notes.append("per call, each after process_entities of 20 new users; SQLiteSession.save() is a commit")
    w.notes.append("Firestore: the background writer commits meanwhile from its own thread (GIL contention included)")
    w.notes.append("cpu_p99: 99th percentile of the calling thread's CPU time in save() (no waiting of any kind)")
    return w


# -- issue 11: saving a changed auth key in a local file ------------------------------------------


def bench_save_auth_key(ctx: Context, impls: list[Impl], repeats: int) -> Workload:
    """``auth_key = new key; save()`` on an open session: SQLiteSession vs ScopedSQLiteSession(+cipher).

    Each repeat saves every implementation once, back to back (rotating order), so the
    paired ratio cancels the disk's drift. Both commit with an fsync before returning.
    """
    w = Workload(
        "save_auth_key",
        "auth_key = a new key; save() (committed and fsynced when it returns)",
        "median",
        baselines=("SQLiteSession",),
    )
    keys = [AuthKey(bytes([i]) * 256) for i in range(2)]
    live: dict[str, Any] = {}
    for impl in impls:
        if impl.error is None and not impl.firestore and impl.name != "MemorySession":
            try:
                s = impl.new()
                s.set_dc(2, "149.154.167.51", 443)
                s.auth_key = AuthKey(AUTH_KEY)
                s.save()
                live[impl.name] = s
            except Exception:  # noqa: BLE001
                _fail(impl, ctx, "save_auth_key setup")
    samples: dict[str, list[float]] = {name: [] for name in live}
    names = list(live)
    for r in range(repeats):
        key = keys[r % 2]
        for name in names[r % len(names) :] + names[: r % len(names)]:
            s = live[name]
            t0 = perf()
            s.auth_key = key
            s.save()
            samples[name].append(perf() - t0)
    for impl in impls:
        s = live.get(impl.name)
        if s is not None:
            impl.dispose(s)
            w.rows.append(Measurement(w.key, impl.name, samples[impl.name], 1))
    w.notes.append(f"{repeats} saves each, interleaved; SQLiteSession: its setter writes, save() commits")
    for name in names:
        if name != "SQLiteSession" and "SQLiteSession" in samples:
            ratio = w.paired_ratio(name, "SQLiteSession")
            w.notes.append(f"paired ratio {name} / SQLiteSession: {ratio:.2f}x (median of per-repeat ratios)")
    return w


# -- issue 2/3/4: opening a session --------------------------------------------------------------


def seed_firestore_session(ctx: Context, user: str, n_entities: int, **kw: Any) -> float:
    """A session document written by FirestoreSession, plus ``n_entities`` entity documents.

    The entities are written directly with the client in the layout
    ``bots/{bot}/user_sessions/{user}/entities/{marked_id}``, 500 per commit.
    Returns the seconds spent seeding entities.
    """
    from telethon_firestore_session.firestore import FirestoreSession

    s = FirestoreSession(user, bot_id=BOT, client=ctx.client, **kw)
    s.set_dc(2, "149.154.167.51", 443)
    s.auth_key = AuthKey(AUTH_KEY)
    for sid in (0, 1001, 1002, 1003):
        s.set_update_state(sid, types.updates.State(100 + sid, 5, DATE, 7, 0))
    s.save()
    s.close()
    if not n_entities:
        return 0.0
    col = ctx.client.collection("bots").document(BOT).collection("user_sessions").document(user).collection("entities")

    def commit(start: int) -> None:
        batch = ctx.client.batch()
        for i in range(start, min(start + 500, n_entities)):
            u = make_user(i)
            batch.set(
                col.document(str(u.id)),
                {
                    "hash": u.access_hash,
                    "username": u.username.lower(),
                    "phone": u.phone,
                    "name": f"{u.first_name} {u.last_name}",
                    "date": int(DATE.timestamp()),
                },
            )
        batch.commit()

    t0 = perf()
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(commit, range(0, n_entities, 500)))
    return perf() - t0


def count_entity_docs(ctx: Context, user: str) -> int:
    col = ctx.client.collection("bots").document(BOT).collection("user_sessions").document(user).collection("entities")
    result = col.count().get()
    return int(result[0][0].value)


def bench_open_firestore(ctx: Context, n_entities: int, repeats: int) -> tuple[Workload, dict[str, Any]]:
    from telethon_firestore_session.firestore import FirestoreSession

    size = f"{n_entities // 1000}k"
    w = Workload(
        "open_firestore",
        f"open FirestoreSession: 0 vs {size} stored entities",
        "median",
        columns=("median", "min", "cpu"),
        baselines=("FirestoreSession (0)",),
    )
    users = {"0": f"open0-{ctx.run_id}", size: f"open{size}-{ctx.run_id}"}
    seed_firestore_session(ctx, users["0"], 0)
    seed_s = seed_firestore_session(ctx, users[size], n_entities)
    stored = count_entity_docs(ctx, users[size])
    variants: list[tuple[str, str, dict[str, Any]]] = [
        ("FirestoreSession (0)", users["0"], {}),
        (f"FirestoreSession ({size})", users[size], {}),
    ]
    if ctx.cipher is not None:
        users["enc"] = f"open0enc-{ctx.run_id}"
        seed_firestore_session(ctx, users["enc"], 0, **ctx.cipher_kwargs)
        variants.append(("FirestoreSession+cipher (0)", users["enc"], ctx.cipher_kwargs))
    info: dict[str, Any] = {"seed_seconds": seed_s, "stored_entities": stored, "reads": {}, "documents": {}}
    samples: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    reads: dict[str, list[int]] = {}
    docs: dict[str, list[int]] = {}
    FirestoreSession(users["0"], bot_id=BOT, client=ctx.client).close()  # warm the channel
    for r in range(repeats):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for label, user, kw in order:
            gc.collect()
            mark, docs0 = ctx.rpc.mark(), ctx.rpc.documents_read
            t0, c0 = perf(), time.thread_time()
            s = FirestoreSession(user, bot_id=BOT, client=ctx.client, **kw)
            dt, dc = perf() - t0, time.thread_time() - c0
            cpu.setdefault(label, []).append(dc)
            reads.setdefault(label, []).append(ctx.rpc.since(mark, methods=READ_METHODS))
            docs.setdefault(label, []).append(ctx.rpc.documents_read - docs0)
            if s.auth_key is None or s.auth_key.key != AUTH_KEY or len(s.get_update_states()) != 4:
                raise AssertionError(f"{label}: the session did not load its auth key and update states")
            s.close()
            samples.setdefault(label, []).append(dt)
    for label, _, _ in variants:
        info["reads"][label] = max(reads[label])
        info["documents"][label] = max(docs[label])
        w.rows.append(
            Measurement(
                w.key,
                label,
                samples[label],
                1,
                f"reads/open {max(reads[label])} RPC, {max(docs[label])} doc",
                {"reads": max(reads[label]), "documents": max(docs[label]), "cpu": cpu[label]},
            )
        )
    w.notes.append(
        f"{repeats} opens each, interleaved; {stored} entity documents stored "
        f"(seeded in {seed_s:.1f} s, 500 per commit)"
    )
    w.notes.append("cpu: median CPU time of the opening thread (the emulator's time excluded)")
    base = variants[0][0]
    for label, _, _ in variants[1:]:
        w.notes.append(
            f"paired ratio {label} / {base}: {w.paired_ratio(label, base):.2f}x (median of per-repeat ratios)"
        )
    return w, info


def bench_open_local(ctx: Context, files: dict[str, Callable[[], Any]], repeats: int) -> Workload:
    """Open SQLiteSession / ScopedSQLiteSession files holding 0 and N entities (from the lookup runs)."""
    w = Workload(
        "open_local",
        "open a local session file: 0 vs N stored entities",
        "median",
        baselines=("SQLiteSession (0)", "ScopedSQLiteSession (0)"),
    )
    variants = list(files.items())
    samples: dict[str, list[float]] = {}
    for r in range(repeats):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for label, opener in order:
            gc.collect()
            t0 = perf()
            s = opener()
            dt = perf() - t0
            s.close()
            samples.setdefault(label, []).append(dt)
    for label, _ in variants:
        w.rows.append(Measurement(w.key, label, samples[label], 1))
    w.notes.append(f"{repeats} opens each, interleaved")
    for label in samples:
        base = None
        if label.startswith("ScopedSQLiteSession+cipher ("):
            base = label.replace("+cipher", "")
        elif label.startswith("ScopedSQLiteSession ("):
            base = label.replace("ScopedSQLiteSession", "SQLiteSession")
        if base in samples:
            w.notes.append(
                f"paired ratio {label} / {base}: {w.paired_ratio(label, base):.2f}x (median of per-repeat ratios)"
            )
    return w


def prepare_local_files(ctx: Context, impls: list[Impl], n: int, pop: Population) -> dict[str, Callable[[], Any]]:
    """Session files with 0 and ``n`` entities for SQLiteSession and ScopedSQLiteSession(+cipher); their openers.

    The +cipher files are written with the cipher and ``encrypt_pii=True``: a sealed
    auth key, and sealed usernames, phones and names with blind indexes.
    """
    files: dict[str, Callable[[], Any]] = {}
    size = f"{n // 1000}k"
    for count, label in ((0, "0"), (n, size)):
        path = os.path.join(ctx.tmpdir, f"open-{label}")
        s = SQLiteSession(path)
        s.set_dc(2, "149.154.167.51", 443)
        s.auth_key = AuthKey(AUTH_KEY)
        for b in pop.batches[: count // BATCH]:
            s.process_entities(b)
        s.save()
        s.close()
        files[f"SQLiteSession ({label})"] = functools.partial(SQLiteSession, path)
    for name, kw in (("ScopedSQLiteSession", {}), ("ScopedSQLiteSession+cipher", ctx.scoped_cipher_kwargs)):
        scoped = next((i for i in impls if i.name == name and i.error is None), None)
        if scoped is None:
            continue
        try:
            sdir = os.path.join(ctx.tmpdir, "scoped-open")
            for count, label in ((0, "0"), (n, size)):
                uid = f"open{label}{'-sealed' if kw else ''}"
                s = ctx.scoped_cls(uid, bot_id=BOT, sessions_dir=sdir, **kw)
                s.set_dc(2, "149.154.167.51", 443)
                s.auth_key = AuthKey(AUTH_KEY)
                for b in pop.batches[: count // BATCH]:
                    s.process_entities(b)
                s.save()
                s.close()
                files[f"{name} ({label})"] = functools.partial(ctx.scoped_cls, uid, bot_id=BOT, sessions_dir=sdir, **kw)
        except Exception:  # noqa: BLE001
            _fail(scoped, ctx, "open setup")
    return files


def bench_lazy_lookups(ctx: Context, files: dict[str, Callable[[], Any]], pop: Population, repeats: int) -> Workload:
    """First lookups by username right after opening a file of N entities: each one asks the file.

    Informational (no target): what a lookup that misses memory costs, with the
    cipher (an indexed query, then opening the sealed fields and checking their
    blind index) and without (an indexed query), against SQLiteSession (a scan).
    """
    labels = [label for label in files if label.endswith("k)")]
    size = labels[0].rsplit("(", 1)[1].rstrip(")") if labels else "?"
    w = Workload(
        "lookup_lazy",
        f"get_input_entity by username, first lookup after opening a file of {size} entities",
        "median",
        baselines=tuple(label for label in labels if label.startswith("SQLiteSession")),
    )
    keys = lookup_keys(pop, "username", 20, seed=4242)
    reference: list[Any] | None = None
    samples: dict[str, list[float]] = {}
    for r in range(repeats):
        order = labels[r % len(labels) :] + labels[: r % len(labels)]
        for label in order:
            s = files[label]()
            gc.collect()
            t0 = perf()
            got = [s.get_input_entity(k) for k in keys]
            dt = perf() - t0
            s.close()
            if reference is None:
                reference = got
            elif got != reference:
                raise AssertionError(f"{label} answers differently from {order[0]} for the same usernames")
            samples.setdefault(label, []).append(dt / len(keys))
    for label in labels:
        w.rows.append(Measurement(w.key, label, samples[label], len(keys)))
    w.notes.append(f"{repeats} repeats of {len(keys)} distinct usernames, each a miss in memory; per call")
    return w


# -- issue 2: writes and commits per 1,000 updates ---------------------------------------------------


@dataclass
class WriteCount:
    calls: int = 0
    entity_sightings: int = 0
    changed_entities: int = 0  # distinct entities changed per flush interval, summed
    changed_states: int = 0  # distinct update states changed per flush interval, summed
    flushes_with_changes: int = 0
    flushes_with_states: int = 0  # the session document is written only with update states
    expected_commits: int = 0
    writes: int = 0
    commits: int = 0
    session_doc_writes: int = 0
    sqlite_rows_written: int = 0
    reseen_writes: int = 0
    reseen_commits: int = 0
    reseen_sqlite_rows: int = 0
    sync_rpcs: int = 0


def _feed_plan(calls: int, pool: int) -> list[tuple[str, Any]]:
    """1,000 calls: 4 in 5 are process_entities of 20 users, 1 in 5 set_update_state.

    Users are swept from a pool; every 200 entity calls, each 25th user changes its
    last name. Update states cycle over 4 keys and change every other time.
    """
    plan: list[tuple[str, Any]] = []
    k = j = 0
    for i in range(calls):
        if i % 5 == 4:
            key = (0, 1001, 1002, 1003)[j % 4]
            plan.append(("state", (key, 100 + j // 8)))
            j += 1
        else:
            idx = [(k * BATCH + m) % pool for m in range(BATCH)]
            plan.append(("entities", [(u, (k // 200) if u % 25 == 0 else 0) for u in idx]))
            k += 1
    return plan


def bench_writes(ctx: Context, calls: int, flush_every: int, pool: int) -> WriteCount:
    """Feed ``calls`` updates; flush every ``flush_every`` calls; count what Firestore gets."""
    from telethon_firestore_session.firestore import FirestoreSession

    plan = _feed_plan(calls, pool)
    users = {(u, v): make_user(u, v) for _, arg in plan if _ == "entities" for u, v in arg}
    result = WriteCount(calls=calls)
    s = FirestoreSession(f"writes-{ctx.run_id}", bot_id=BOT, client=ctx.client, flush_interval=3600)
    store = s._firestore
    lite = SQLiteSession(os.path.join(ctx.tmpdir, f"writes-{ctx.run_id}"))
    lite_changes0 = lite._conn.total_changes
    # The independent model: what changed, per flush interval.
    last_seen: dict[int, int] = {}
    last_state: dict[int, int] = {}
    interval_entities: set[int] = set()
    interval_states: set[int] = set()
    writes0, commits0 = store.writes, store.commits

    def flush() -> None:
        nonlocal interval_entities, interval_states
        s.save()
        if not s.flush(timeout=60.0):
            raise RuntimeError("the writer did not drain within 60 s")
        lite.save()
        if interval_entities or interval_states:
            result.changed_entities += len(interval_entities)
            result.changed_states += len(interval_states)
            result.flushes_with_changes += 1
            result.flushes_with_states += bool(interval_states)
            result.expected_commits += math.ceil((bool(interval_states) + len(interval_entities)) / 500)
        interval_entities, interval_states = set(), set()

    mark = ctx.rpc.mark()
    for i, (kind, arg) in enumerate(plan):
        if kind == "state":
            key, pts = arg
            st = types.updates.State(pts, 5, DATE, 7, 0)
            s.set_update_state(key, st)
            lite.set_update_state(key, st)
            if last_state.get(key) != pts:
                interval_states.add(key)
                last_state[key] = pts
        else:
            batch = updates([users[uv] for uv in arg])
            s.process_entities(batch)
            lite.process_entities(batch)
            result.entity_sightings += len(arg)
            for u, v in arg:
                if last_seen.get(u) != v:
                    interval_entities.add(u)
                    last_seen[u] = v
        if (i + 1) % flush_every == 0:
            result.sync_rpcs += ctx.rpc.since(mark, thread=MAIN_THREAD)
            flush()
            mark = ctx.rpc.mark()
    result.sync_rpcs += ctx.rpc.since(mark, thread=MAIN_THREAD)
    flush()
    result.writes = store.writes - writes0
    result.commits = store.commits - commits0
    result.session_doc_writes = result.writes - result.changed_entities
    result.sqlite_rows_written = lite._conn.total_changes - lite_changes0

    # Every user seen again, unchanged: nothing may be written.
    w0, c0, l0 = store.writes, store.commits, lite._conn.total_changes
    final = [make_user(u, last_seen[u]) for u in sorted(last_seen)]
    for i in range(0, len(final), BATCH):
        batch = updates(final[i : i + BATCH])
        s.process_entities(batch)
        lite.process_entities(batch)
    s.save()
    s.flush(timeout=60.0)
    lite.save()
    result.reseen_writes = store.writes - w0
    result.reseen_commits = store.commits - c0
    result.reseen_sqlite_rows = lite._conn.total_changes - l0
    s.delete()
    lite.close()
    lite.delete()
    return result


# -- issue 2: no RPC on the hot path, in a real event loop -------------------------------------------


@dataclass
class HotPathCheck:
    iterations: int = 0
    main_thread_rpcs: int = 0
    writer_thread_commits: int = 0
    timer_flushes: int = 0
    stored_entities: int = 0
    expected_entities: int = 0


def check_hot_path_async(ctx: Context, pop: Population, iterations: int) -> HotPathCheck:
    """Telethon's pattern in an event loop: entities, states, hits, save(); timer flushes every 50 ms."""
    from telethon_firestore_session.firestore import FirestoreSession

    user = f"hot-{ctx.run_id}"
    s = FirestoreSession(user, bot_id=BOT, client=ctx.client, flush_interval=0.05)
    s.set_dc(2, "149.154.167.51", 443)
    s.auth_key = AuthKey(AUTH_KEY)
    s.save()
    res = HotPathCheck(iterations=iterations)
    batches = pop.batches[:iterations]

    async def scenario() -> None:
        for i, b in enumerate(batches):
            s.process_entities(b)
            s.set_update_state(0, types.updates.State(1000 + i, 5, DATE, 7, 0))
            u = b.users[i % BATCH]
            s.get_input_entity(u.id)
            s.get_input_entity(u.username)
            s.get_input_entity("+" + u.phone)
            if i % 50 == 49:
                s.save()
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.1)  # let the last timer fire

    store = s._firestore
    commits0 = store.commits
    mark = ctx.rpc.mark()
    asyncio.run(scenario())
    res.main_thread_rpcs = ctx.rpc.since(mark, thread=MAIN_THREAD)
    s.flush(timeout=60.0)
    res.writer_thread_commits = ctx.rpc.since(mark, methods=frozenset({"commit"})) - res.main_thread_rpcs
    res.timer_flushes = store.commits - commits0
    res.stored_entities = count_entity_docs(ctx, user)
    res.expected_entities = len(batches) * BATCH
    s.delete()
    return res


# -- helpers for run.py -----------------------------------------------------------------------------


def make_tmpdir() -> str:
    return tempfile.mkdtemp(prefix="tfs-bench-")


def remove_tmpdir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def p99(m: Measurement) -> float:
    return percentile(m.samples, 99)
