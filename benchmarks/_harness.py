"""Measuring, counting Firestore RPCs, starting the emulator, and printing the results."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import statistics
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/run.py` puts only benchmarks/ on the path
    sys.path.insert(0, str(ROOT))

from tests.emulator import INSTALL_HINT, Emulator, find_jar  # noqa: E402

# -- counting Firestore RPCs ---------------------------------------------------------------

#: GAPIC methods that read documents (each call is one RPC; billing counts documents).
READ_METHODS = frozenset(
    {
        "batch_get_documents",
        "get_document",
        "run_query",
        "run_aggregation_query",
        "list_documents",
        "list_collection_ids",
        "partition_query",
        "execute_pipeline",
    }
)
WRITE_METHODS = frozenset(
    {
        "commit",
        "batch_write",
        "begin_transaction",
        "rollback",
        "create_document",
        "update_document",
        "delete_document",
        "write",
        "listen",
    }
)
MAIN_THREAD = threading.main_thread().ident


def raw_proto(message: Any) -> Any:
    """The raw protobuf of a proto-plus message (or the message itself if it is raw already)."""
    pb = getattr(type(message), "pb", None)
    return pb(message) if pb is not None else message


class CountingStream:
    """Wraps a server-streaming response iterator; calls ``found()`` for each response that carries ``field``."""

    def __init__(self, it: Any, field: str, found: Callable[[], None]) -> None:
        self._it = it
        self._field = field
        self._found = found

    def __iter__(self) -> CountingStream:
        return self

    def __next__(self) -> Any:
        resp = next(self._it)
        try:
            if raw_proto(resp).HasField(self._field):
                self._found()
        except (AttributeError, TypeError, ValueError):
            pass
        return resp

    def __getattr__(self, name: str) -> Any:
        return getattr(self._it, name)


class RpcCounter:
    """Counts every Firestore RPC a client makes, with the thread that made it.

    It replaces the methods of the client's GAPIC ``FirestoreClient`` (``client._firestore_api``),
    the layer where ``DocumentReference.get``, ``Client.get_all``, ``Query.get``,
    ``WriteBatch.commit`` and transactions turn into exactly one gRPC call each.
    Nothing is faked: each wrapper records ``(thread id, method)`` and calls the real method.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[tuple[int | None, str]] = []
        self.documents_read = 0

    def install(self, client: Any) -> None:
        api = client._firestore_api  # creates the real GAPIC client and gRPC channel
        for name in sorted(READ_METHODS | WRITE_METHODS):
            real = getattr(api, name, None)
            if real is not None:
                setattr(api, name, self._wrap(name, real))

    def _wrap(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        field = {"batch_get_documents": "found", "run_query": "document"}.get(name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls.append((threading.get_ident(), name))
            result = real(*args, **kwargs)
            if field is not None:
                return CountingStream(result, field, lambda: self.add_documents(1))
            return result

        return counted

    def add_documents(self, n: int) -> None:
        with self._lock:
            self.documents_read += n

    def mark(self) -> int:
        with self._lock:
            return len(self.calls)

    def since(self, mark: int, *, thread: int | str | None = "any", methods: frozenset[str] | None = None) -> int:
        with self._lock:
            calls = self.calls[mark:]
        return sum(1 for t, m in calls if (thread == "any" or t == thread) and (methods is None or m in methods))


# -- the emulator --------------------------------------------------------------------------


@contextlib.contextmanager
def firestore_emulator(project: str, heap: str = "1g") -> Iterator[Emulator | None]:
    """Yield a running emulator (started here unless FIRESTORE_EMULATOR_HOST is set), or None.

    An emulator we start is stopped on exit. Only ``project``'s data is reset.
    """
    host = os.environ.get("FIRESTORE_EMULATOR_HOST")
    saved = {k: os.environ.get(k) for k in ("FIRESTORE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")}
    emu: Emulator | None
    if host:
        emu = Emulator(host)
        if not emu.ready():
            raise RuntimeError(f"FIRESTORE_EMULATOR_HOST={host} is set but no emulator answers there")
    else:
        jar = find_jar()
        if jar is None:
            print(f"NOTE: {INSTALL_HINT}; the Firestore workloads are skipped")
            yield None
            return
        emu = Emulator.start(jar, heap=heap)
        os.environ["FIRESTORE_EMULATOR_HOST"] = emu.host
        os.environ["GOOGLE_CLOUD_PROJECT"] = project
    try:
        emu.reset(project)
        yield emu
    finally:
        try:
            with contextlib.suppress(OSError):
                emu.reset(project)
        finally:
            emu.stop()  # only stops an emulator started here
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


# -- results -------------------------------------------------------------------------------


@dataclasses.dataclass
class Measurement:
    """Seconds per call for one implementation in one workload, one sample per repeat."""

    workload: str
    impl: str
    samples: list[float]
    calls: int  # calls per sample
    notes: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    def stat(self, name: str) -> float:
        if name == "min":
            return self.min
        if name == "median":
            return self.median
        if name == "p99":
            return percentile(self.samples, 99)
        if name == "max":
            return max(self.samples)
        if name == "cpu":
            return float(statistics.median(self.extra["cpu"]))
        if name == "cpu_p99":
            return percentile(self.extra["cpu"], 99)
        raise ValueError(name)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclasses.dataclass
class Workload:
    """A table: one row per implementation."""

    key: str
    title: str
    ratio_on: str  # "min" (CPU-bound, per-call) or "median"
    rows: list[Measurement] = dataclasses.field(default_factory=list)
    columns: tuple[str, ...] = ("median", "min")
    notes: list[str] = dataclasses.field(default_factory=list)
    #: Rows that the ratio columns divide by.
    baselines: tuple[str, ...] = ("SQLiteSession", "MemorySession")

    def row(self, impl: str) -> Measurement | None:
        return next((m for m in self.rows if m.impl == impl), None)

    def paired_ratio(self, impl: str, baseline: str) -> float | None:
        """Median of per-repeat ratios (both measured back to back in each repeat): drift cancels out."""
        a, b = self.row(impl), self.row(baseline)
        if a is None or b is None or len(a.samples) != len(b.samples):
            return None
        return statistics.median(x / y for x, y in zip(a.samples, b.samples, strict=True) if y > 0)

    def ratio(self, impl: str, baseline: str, stat: str | None = None) -> float | None:
        a, b = self.row(impl), self.row(baseline)
        if a is None or b is None:
            return None
        s = stat or self.ratio_on
        base = b.stat(s)
        return a.stat(s) / base if base > 0 else None


@dataclasses.dataclass
class Target:
    """An acceptance target: ``value <= limit`` (or ``==`` for counts)."""

    issue: str
    name: str
    value: float | None
    limit: float
    unit: str = "x"
    op: str = "<="
    note: str = ""

    @property
    def status(self) -> str:
        if self.value is None:
            return "SKIP"
        if self.op == "<=":
            return "PASS" if self.value <= self.limit else "FAIL"
        if self.op == "<":
            return "PASS" if self.value < self.limit else "FAIL"
        return "PASS" if self.value == self.limit else "FAIL"

    def describe(self) -> str:
        if self.value is None:
            return f"{self.status}  [{self.issue}] {self.name}: not measured ({self.note})"
        return (
            f"{self.status}  [{self.issue}] {self.name}: {fmt_value(self.value, self.unit)} "
            f"(target {self.op} {fmt_value(self.limit, self.unit)})" + (f"  {self.note}" if self.note else "")
        )


def fmt_value(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "s":
        return fmt_time(value)
    if float(value).is_integer():
        return f"{int(value)}{unit}"
    return f"{value:.2f}{unit}"


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def print_workload(w: Workload) -> None:
    print()
    print(f"== {w.title}")
    width = max(28, *(len(m.impl) for m in w.rows)) if w.rows else 28
    header = f"{'implementation':<{width}}" + "".join(f"{c:>12}" for c in w.columns)
    present = [b for b in w.baselines if w.row(b) is not None]
    header += "".join(f"  {'x ' + b.replace('Session', ''):>12}" for b in present)
    print(header + "  notes")
    for m in w.rows:
        line = f"{m.impl:<{width}}" + "".join(f"{fmt_time(m.stat(c)):>12}" for c in w.columns)
        for b in present:
            r = w.ratio(m.impl, b)
            line += f"  {(f'{r:.2f}' if r is not None else '-'):>12}"
        print(line + (f"  {m.notes}" if m.notes else ""))
    for note in w.notes:
        print(f"   {note}")
