"""UserSessionManager at scale: memory with 1,000 users and 50 clients; RPCs of stats and cleanup.

``python -m benchmarks.bench_manager [--users 1000] [--active 50] [--entities 20] [--quick] [--json PATH]``

For each backend (the Firestore emulator, and SQLite files in a temporary directory):

1. registers ``--users`` users through the manager;
2. logs ``--active`` of them in (through a real ``TelegramClient`` whose RPC sender
   is the test double, ``tests/telegram_double.py``) and has each client resolve
   ``--entities`` usernames, so every open session holds entities in memory;
3. measures the Python heap with ``tracemalloc`` (from just before the manager is
   built, after one warm-up RPC) and checks it against :data:`MEMORY_BUDGET_MB`.

Then, on Firestore only, with the RPCs counted at the gRPC layer
(:class:`benchmarks._harness.RpcCounter`):

4. ``get_session_stats()`` and ``list_user_sessions()``;
5. ``cleanup_inactive_sessions(days=30)`` after every session except the active
   ones was aged 40 days (written directly, not counted); 10% of them hold
   ``--entities`` entity documents each, which go too. Targets: stats in at most
   :data:`STATS_RPC_BUDGET` RPCs whatever the number of sessions, cleanup in at
   most ``1 + 2 per removed session + 3 per 500 documents written`` RPCs.

tracemalloc sees Python objects only (gRPC's C buffers are not in it); the
process's peak RSS is printed next to it for reference.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import math
import resource
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/bench_manager.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import RpcCounter, firestore_emulator

PROJECT = "demo-bench-manager"
API = {"api_id": 12345, "api_hash": "0123456789abcdef0123456789abcdef"}

#: The manager with 1,000 registered users and 50 logged-in clients (20 entities each)
#: stays under this many MB of Python heap (measured: about 2.6 MB).
MEMORY_BUDGET_MB = 16.0
#: Registered users cost no memory until their client is opened: 1,000 of them stay under this.
REGISTERED_BUDGET_MB = 1.0
#: get_session_stats() makes at most this many RPCs, for any number of sessions.
STATS_RPC_BUDGET = 3


def _heap() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def _phone(i: int) -> str:
    return f"+1555{i:07d}"


def _make_telegram(active: int, entities: int) -> Any:
    from tests.telegram_double import FakeTelegram

    fake = FakeTelegram()
    for i in range(active):
        fake.add_account(_phone(i), user_id=5_000_000 + i, first_name=f"User{i}", username=f"user{i}")
    for j in range(entities):
        fake.add_account(_phone(900_000 + j), user_id=7_000_000 + j, first_name=f"Contact{j}", username=f"contact{j}")
    return fake


async def _register(manager: Any, users: int) -> float:
    start = time.perf_counter()
    for first in range(0, users, 50):
        await asyncio.gather(*(manager.create_user_session(f"user{i}") for i in range(first, min(users, first + 50))))
    return time.perf_counter() - start


async def _activate(manager: Any, fake: Any, active: int, entities: int) -> tuple[float, list[Any]]:
    start = time.perf_counter()
    clients = []
    for i in range(active):
        uid = f"user{i}"
        sent = await manager.begin_login(uid, _phone(i))
        assert sent.status.value == "code_sent", sent
        done = await manager.complete_login(uid, fake.last_code(_phone(i)))
        assert done.ok, done
        client = await manager.get_user_client(uid)
        for j in range(entities):
            await client.get_entity(f"contact{j}")
        clients.append(client)
    return time.perf_counter() - start, clients


async def measure_memory(backend: str, args: argparse.Namespace, client: Any, sessions_dir: Path) -> dict[str, Any]:
    """Register, activate and measure; return the figures (and leave nothing open)."""
    from telethon_firestore_session import BackgroundWriter
    from telethon_firestore_session.manager import UserSessionManager

    fake = _make_telegram(args.active, args.entities)
    bot_id = f"bench-{backend}"
    kw: dict[str, Any] = (
        {"backend": "firestore", "firestore_client": client}
        if backend == "firestore"
        else {"sessions_dir": sessions_dir}
    )
    tracemalloc.start()
    try:
        base = _heap()
        manager = UserSessionManager(
            bot_id, client_factory=fake.client, max_active_clients=args.active, flush_interval=5.0, **API, **kw
        )
        try:
            t_register = await _register(manager, args.users)
            registered = _heap() - base
            t_activate, clients = await _activate(manager, fake, args.active, args.entities)
            assert manager.active_clients == args.active
            assert all(c.is_connected() for c in clients)
            del clients
            active = _heap() - base
            peak = tracemalloc.get_traced_memory()[1] - base
            stats = await manager.get_session_stats()
            assert stats["total_sessions"] == args.users, stats
            assert stats["logged_in_sessions"] == args.active, stats
        finally:
            await manager.aclose()
    finally:
        tracemalloc.stop()
    assert BackgroundWriter.get().flush(None, 30)
    return {
        "backend": backend,
        "users": args.users,
        "active": args.active,
        "entities": args.entities,
        "register_s": round(t_register, 3),
        "activate_s": round(t_activate, 3),
        "heap_registered_mb": round(registered / 1e6, 3),
        "heap_active_mb": round(active / 1e6, 3),
        "heap_per_client_kb": round((active - registered) / args.active / 1e3, 1),
        "heap_peak_mb": round(peak / 1e6, 3),
    }


async def measure_rpcs(args: argparse.Namespace, client: Any, counter: RpcCounter) -> dict[str, Any]:
    """Stats, listing and cleanup over ``--users`` Firestore sessions, with RPCs counted."""
    from telethon_firestore_session import BackgroundWriter
    from telethon_firestore_session.manager import UserSessionManager

    fake = _make_telegram(args.active, args.entities)
    bot_id = "bench-rpcs"
    manager = UserSessionManager(
        bot_id, backend="firestore", firestore_client=client, client_factory=fake.client, **API
    )
    try:
        await _register(manager, args.users)
        _, clients = await _activate(manager, fake, args.active, args.entities)
        del clients

        # Age every session that is not open, and give 10% of them entity documents (not counted).
        sessions = client.collection("bots").document(bot_id).collection("user_sessions")
        old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=40)
        stale = [f"user{i}" for i in range(args.active, args.users)]
        with_entities = stale[::10]
        batch, n = client.batch(), 0
        for uid in stale:
            batch.update(sessions.document(uid), {"last_active_at": old})
            n += 1
            if uid in with_entities:
                for j in range(args.entities):
                    batch.set(sessions.document(uid).collection("entities").document(str(7_000_000 + j)), {"hash": j})
                    n += 1
            if n >= 400:
                batch.commit()
                batch, n = client.batch(), 0
        if n:
            batch.commit()

        # The background writer keeps flushing the open clients' sessions meanwhile: its RPCs
        # are not the manager's, so they are counted apart.
        await asyncio.to_thread(BackgroundWriter.get().flush, None, 30)
        writer = {t.ident for t in threading.enumerate() if t.name == "telethon-session-writer"}

        def rpcs(mark: int) -> Counter[str]:
            return Counter(name for ident, name in counter.calls[mark:] if ident not in writer)

        mark = counter.mark()
        t0 = time.perf_counter()
        stats = await manager.get_session_stats()
        t_stats = time.perf_counter() - t0
        stats_rpcs = rpcs(mark)
        assert stats["total_sessions"] == args.users and stats["leased_sessions"] == args.active, stats

        mark = counter.mark()
        t0 = time.perf_counter()
        listed = await manager.list_user_sessions()
        t_list = time.perf_counter() - t0
        list_rpcs = rpcs(mark)
        assert len(listed) == args.users

        mark = counter.mark()
        would = await manager.cleanup_inactive_sessions(days=30, dry_run=True)
        dry_rpcs = rpcs(mark)
        assert len(would) == len(stale)

        mark = counter.mark()
        t0 = time.perf_counter()
        removed = await manager.cleanup_inactive_sessions(days=30)
        t_cleanup = time.perf_counter() - t0
        cleanup_rpcs = rpcs(mark)
        assert sorted(removed) == sorted(stale), (len(removed), len(stale))
        after = await manager.get_session_stats()
        assert after["total_sessions"] == args.active, after
        left = sum(1 for uid in with_entities for _ in sessions.document(uid).collection("entities").limit(1).stream())
        assert left == 0, "entities were left behind"
    finally:
        await manager.aclose()
    assert BackgroundWriter.get().flush(None, 30)
    documents = len(stale) + len(with_entities) * args.entities
    cleanup_budget = 1 + 2 * len(stale) + 3 * math.ceil((documents + len(stale)) / 500)
    return {
        "sessions": args.users,
        "stale": len(stale),
        "entity_documents": len(with_entities) * args.entities,
        "stats_s": round(t_stats, 4),
        "stats_rpcs": dict(stats_rpcs),
        "list_s": round(t_list, 4),
        "list_rpcs": dict(list_rpcs),
        "dry_run_rpcs": dict(dry_rpcs),
        "cleanup_s": round(t_cleanup, 3),
        "cleanup_rpcs": dict(cleanup_rpcs),
        "cleanup_rpc_budget": cleanup_budget,
    }


def _print_memory(r: dict[str, Any]) -> bool:
    ok_active = bool(r["heap_active_mb"] <= MEMORY_BUDGET_MB)
    ok_registered = bool(r["heap_registered_mb"] <= REGISTERED_BUDGET_MB)
    print(f"\n{r['backend']}: {r['users']} registered users, {r['active']} active clients x {r['entities']} entities")
    print(f"  register         {r['register_s']:8.2f} s")
    print(f"  log in + resolve {r['activate_s']:8.2f} s")
    print(f"  heap, registered {r['heap_registered_mb']:8.2f} MB   (nothing is cached per registered user)")
    print(f"  heap, active     {r['heap_active_mb']:8.2f} MB   ({r['heap_per_client_kb']:.0f} kB per open client)")
    print(f"  heap, peak       {r['heap_peak_mb']:8.2f} MB")
    print(
        f"  {'PASS' if ok_registered else 'FAIL'}  heap with {r['users']} registered users <= "
        f"{REGISTERED_BUDGET_MB:.0f} MB"
    )
    print(f"  {'PASS' if ok_active else 'FAIL'}  heap with {r['active']} clients <= {MEMORY_BUDGET_MB:.0f} MB")
    return ok_active and ok_registered


def _print_rpcs(r: dict[str, Any]) -> bool:
    stats_total = sum(r["stats_rpcs"].values())
    cleanup_total = sum(r["cleanup_rpcs"].values())
    print(
        f"\nfirestore: stats and cleanup over {r['sessions']} sessions ({r['stale']} stale, "
        f"{r['entity_documents']} entity documents among them)"
    )
    print(f"  get_session_stats       {r['stats_s'] * 1000:8.1f} ms  {stats_total:5d} RPCs  {r['stats_rpcs']}")
    print(
        f"  list_user_sessions      {r['list_s'] * 1000:8.1f} ms  {sum(r['list_rpcs'].values()):5d} RPCs  "
        f"{r['list_rpcs']}"
    )
    print(f"  cleanup (dry run)                    {sum(r['dry_run_rpcs'].values()):5d} RPCs  {r['dry_run_rpcs']}")
    print(f"  cleanup_inactive        {r['cleanup_s'] * 1000:8.1f} ms  {cleanup_total:5d} RPCs  {r['cleanup_rpcs']}")
    ok_stats = stats_total <= STATS_RPC_BUDGET
    ok_cleanup = cleanup_total <= r["cleanup_rpc_budget"]
    print(f"  {'PASS' if ok_stats else 'FAIL'}  stats in <= {STATS_RPC_BUDGET} RPCs (aggregation queries)")
    print(
        f"  {'PASS' if ok_cleanup else 'FAIL'}  cleanup in <= {r['cleanup_rpc_budget']} RPCs "
        "(1 query + 2 id-only listings per removed session + 3 commits per 500 writes)"
    )
    return ok_stats and ok_cleanup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_manager", description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1000, help="registered users (default 1000)")
    parser.add_argument("--active", type=int, default=50, help="logged-in, open clients (default 50)")
    parser.add_argument("--entities", type=int, default=20, help="entities resolved per client (default 20)")
    parser.add_argument("--quick", action="store_true", help="200 users, 10 clients: a smoke run")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.active = 200, 10
    if args.active > args.users:
        parser.error("--active must not exceed --users")

    from google.cloud import firestore

    results: dict[str, Any] = {"memory": []}
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-manager-") as tmp:
        memory = asyncio.run(measure_memory("sqlite", args, None, Path(tmp) / "sessions"))
        results["memory"].append(memory)
        ok = _print_memory(memory) and ok
        with firestore_emulator(PROJECT) as emu:
            if emu is not None:
                client = firestore.Client(project=PROJECT)
                try:
                    client.collection("bots").document("warm-up").get()
                    memory = asyncio.run(measure_memory("firestore", args, client, Path(tmp)))
                    results["memory"].append(memory)
                    ok = _print_memory(memory) and ok
                    counter = RpcCounter()
                    counter.install(client)
                    results["rpcs"] = asyncio.run(measure_rpcs(args, client, counter))
                    ok = _print_rpcs(results["rpcs"]) and ok
                finally:
                    client.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["peak_rss_mb"] = round(rss, 1)
    print(f"\npeak RSS of the whole benchmark process: {rss:.0f} MB (includes gRPC, Telethon, the emulator client)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
