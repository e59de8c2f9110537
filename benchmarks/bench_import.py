"""Bulk import of Telethon ``.session`` files into Firestore (the real emulator).

``python -m benchmarks.bench_import [--sessions 1000] [--entities 20] [--quick]``

Writes N session files with Telethon's own ``SQLiteSession`` (E entities, two
update states and one sent file each), then imports the directory with
``import_session_files(dir, FirestoreDestination(...))`` and reports:

* wall time and sessions per second;
* Firestore commits, document writes and RPCs (counted at the gRPC layer);
* peak Python memory (tracemalloc) for N and for N/10 sessions: bounded memory
  means the two peaks are about the same, not 10x apart;
* the time and reads of a second run over the same files (everything ``unchanged``).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from benchmarks._harness import READ_METHODS, WRITE_METHODS, RpcCounter, firestore_emulator

PROJECT = "demo-bench-import"


def write_files(directory: Path, sessions: int, entities: int) -> None:
    from telethon.crypto import AuthKey
    from telethon.sessions import SQLiteSession
    from telethon.tl import types

    date = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    for i in range(sessions):
        s = SQLiteSession(str(directory / f"user_{100000 + i}"))
        s.set_dc(2, "149.154.167.51", 443)
        s.auth_key = AuthKey(i.to_bytes(4, "big") * 64)
        s.takeout_id = None
        users = [
            types.User(
                10_000_000 + j, access_hash=i * 1000 + j + 1, username=f"u{j}_{i}", first_name="User", last_name=str(j)
            )
            for j in range(entities)
        ]
        s.process_entities(users)
        s.set_update_state(0, types.updates.State(1000 + i, 5, date, 10, 0))
        s.set_update_state(1234, types.updates.State(77, 0, date, 0, 0))
        s.cache_file(b"\x07" * 16, 1000 + i, types.InputDocument(i, i + 1, b""))
        s.close()


def run_import(client: Any, directory: Path, bot_id: str, *, trace: bool) -> tuple[Any, float, int, int, int]:
    from telethon_firestore_session.migrate import FirestoreDestination, import_session_files

    counter = RpcCounter()
    counter.install(client)
    gc.collect()
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    report = import_session_files(directory, FirestoreDestination(client, bot_id))
    elapsed = time.perf_counter() - start
    peak = 0
    if trace:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    reads = counter.since(0, methods=READ_METHODS)
    writes = counter.since(0, methods=WRITE_METHODS)
    return report, elapsed, peak, reads, writes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_import", description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=1000, help="number of .session files (default 1000)")
    parser.add_argument("--entities", type=int, default=20, help="entities per session (default 20)")
    parser.add_argument("--quick", action="store_true", help="100 sessions, for a smoke run")
    args = parser.parse_args(argv)
    n = 100 if args.quick else args.sessions
    small = max(1, n // 10)

    from google.cloud import firestore

    with firestore_emulator(PROJECT) as emu, tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        if emu is None:
            return 0
        big_dir, small_dir = Path(tmp) / "big", Path(tmp) / "small"
        big_dir.mkdir()
        small_dir.mkdir()
        t0 = time.perf_counter()
        write_files(big_dir, n, args.entities)
        write_files(small_dir, small, args.entities)
        print(f"wrote {n} + {small} Telethon .session files in {time.perf_counter() - t0:.1f}s (not measured)")

        client = firestore.Client(project=PROJECT)
        try:
            report, elapsed, _, reads, rpc_writes = run_import(client, big_dir, "bench", trace=False)
            assert report.ok, report.counts()
            per_session = 1 + args.entities + 1  # session document, entities, sent file
            print(f"\nimport of {n} sessions x {args.entities} entities into the emulator:")
            print(f"  time            {elapsed:8.2f} s   ({n / elapsed:,.0f} sessions/s)")
            print(f"  document writes {report.writes:8d}     (expected {n * per_session})")
            print(f"  commits         {report.commits:8d}     (ceil(writes / 500) = {-(-report.writes // 500)})")
            print(
                f"  RPCs            {reads + rpc_writes:8d}     ({reads} reads: one per session; {rpc_writes} commits)"
            )
            print(f"  outcome         {report.counts()}")

            again, elapsed2, _, reads2, writes2 = run_import(client, big_dir, "bench", trace=False)
            print(
                f"\nsecond run over the same files: {elapsed2:.2f} s, {again.counts()}, {writes2} commits, "
                f"{reads2} reads (the document, then its entities and sent files to merge: 3 per session)"
            )

            emu.reset(PROJECT)
            r_small, _, peak_small, _, _ = run_import(client, small_dir, "small", trace=True)
            emu.reset(PROJECT)
            r_big, _, peak_big, _, _ = run_import(client, big_dir, "big", trace=True)
            assert r_small.ok and r_big.ok
            print("\npeak Python memory during the import (tracemalloc):")
            print(f"  {small:5d} sessions  {peak_small / 1e6:7.2f} MB")
            growth = f"{peak_big / peak_small:.2f}x for {n / small:.0f}x sessions"
            print(f"  {n:5d} sessions  {peak_big / 1e6:7.2f} MB   ({growth})")
        finally:
            client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
