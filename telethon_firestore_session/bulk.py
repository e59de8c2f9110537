"""Bulk imports: many sessions into one :class:`Destination`, each reported once it is stored.

:func:`import_snapshots` is the engine; :func:`import_session_files` and
:func:`import_string_session` feed it, and :class:`SessionDestination` copies into any session
backend with :func:`~telethon_firestore_session.migrate.copy_session` (the Firestore destination
is :class:`~telethon_firestore_session.firestore.importer.FirestoreDestination`). Running an import
again is safe. :mod:`telethon_firestore_session.migrate` re-exports these names.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from telethon.sessions.abstract import Session

from .core import SessionSnapshot
from .errors import SessionError
from .ids import SessionKey
from .migrate import FAILED, NO_AUTH_KEY, SKIPPED, CopyReport, copy_session, read_string_session
from .sqlite.schema import read_session_file

__all__ = [
    "BulkReport",
    "Destination",
    "ImportItem",
    "ProgressCallback",
    "SessionDestination",
    "Source",
    "import_session_files",
    "import_snapshots",
    "import_string_session",
    "session_files",
    "user_id_from_filename",
]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ImportItem:
    """The outcome of one session in a bulk import.

    :param source: the source, as reported (a path, ``"string"``, a document).
    :param user_id: the user it was imported as (``None`` if unknown).
    :param status: as :class:`CopyReport`'s, or ``"failed"``.
    :param reason: why it was skipped or failed.
    :param entities: entities written.
    :param update_states: update states written.
    :param files: sent files written.
    :param fingerprint: the source's auth key fingerprint.
    """

    source: str
    user_id: str | None
    status: str
    reason: str = ""
    entities: int = 0
    update_states: int = 0
    files: int = 0
    fingerprint: str | None = None

    @classmethod
    def of(cls, source: str, user_id: str | None, report: CopyReport) -> ImportItem:
        """The item of a copy that ran.

        :param source: the source.
        :param user_id: the user.
        :param report: the copy's report.
        """
        r = report
        return cls(source, user_id, r.status, r.reason, r.entities, r.update_states, r.files, r.fingerprint)

    @classmethod
    def failure(
        cls, source: str, user_id: str | None, exc: BaseException, fingerprint: str | None = None
    ) -> ImportItem:
        """The item of a session that could not be read or written; the reason names the error.

        :param source: the source.
        :param user_id: the user.
        :param exc: the error.
        :param fingerprint: the source's auth key fingerprint, if it was read.
        """
        return cls(source, user_id, FAILED, f"{type(exc).__name__}: {exc}", fingerprint=fingerprint)

    def as_dict(self) -> dict[str, Any]:
        """The fields by name (for JSON)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class BulkReport:
    """What a bulk import did: one :class:`ImportItem` per source, and the write counts.

    :param items: one per source, added when its outcome is final (for a batched
        Firestore import: once every write of that session is committed).
    :param commits: Firestore commits (0 for other destinations).
    :param writes: Firestore document writes.
    :param reads: Firestore document reads.
    :param elapsed: seconds the import took.
    """

    items: list[ImportItem] = dataclasses.field(default_factory=list)
    commits: int = 0
    writes: int = 0
    reads: int = 0
    elapsed: float = 0.0

    def counts(self) -> dict[str, int]:
        """How many items of each status."""
        out: dict[str, int] = {}
        for item in self.items:
            out[item.status] = out.get(item.status, 0) + 1
        return out

    @property
    def failed(self) -> list[ImportItem]:
        """The items that failed."""
        return [i for i in self.items if i.status == FAILED]

    @property
    def ok(self) -> bool:
        """No item failed."""
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        """The report for JSON: ``ok``, ``counts``, the write counts and the items."""
        return {
            "ok": self.ok,
            "counts": self.counts(),
            "commits": self.commits,
            "writes": self.writes,
            "reads": self.reads,
            "elapsed_seconds": round(self.elapsed, 3),
            "items": [i.as_dict() for i in self.items],
        }


#: ``progress(done, total, item)``, called after each source is read and applied.
ProgressCallback = Callable[[int, "int | None", ImportItem], None]


class Destination(abc.ABC):
    """Where a bulk import puts sessions, by user id."""

    @abc.abstractmethod
    def put(self, source: str, user_id: str, snapshot: SessionSnapshot, *, overwrite: bool) -> None:
        """Apply ``snapshot`` to the session of ``user_id``; the outcome comes from :meth:`drain`.

        :param source: the source, for the report.
        :param user_id: the user.
        :param snapshot: the session to apply.
        :param overwrite: replace a different login.
        """

    @abc.abstractmethod
    def drain(self, *, final: bool = False) -> list[ImportItem]:
        """Items whose outcome is now final.

        :param final: commit whatever is pending first.
        """

    def account(self, report: BulkReport) -> None:  # noqa: B027 - optional hook
        """Add this destination's counters to ``report``.

        :param report: the import's report.
        """


class SessionDestination(Destination):
    """Any session backend, one session at a time.

    Each session is copied with :func:`copy_session` and closed; its writes are
    durable before the next one starts.

    :param opener: ``opener(user_id)`` returns the user's session.
    :param flush_timeout: as in :func:`copy_session`.
    """

    def __init__(self, opener: Callable[[str], Session], *, flush_timeout: float = 30.0) -> None:
        self.opener = opener
        self.flush_timeout = flush_timeout
        self._done: list[ImportItem] = []

    def put(self, source: str, user_id: str, snapshot: SessionSnapshot, *, overwrite: bool) -> None:
        if not snapshot.auth_key:
            # Nothing would be copied: do not open (and so create) an empty destination.
            self._done.append(ImportItem(source, user_id, SKIPPED, NO_AUTH_KEY))
            return
        try:
            dst = self.opener(user_id)
        except (SessionError, OSError, ValueError) as exc:
            self._done.append(ImportItem.failure(source, user_id, exc))
            return
        try:
            report = copy_session(snapshot, dst, overwrite=overwrite, flush_timeout=self.flush_timeout)
            self._done.append(ImportItem.of(source, user_id, report))
        except (SessionError, OSError, ValueError, sqlite3.Error) as exc:
            self._done.append(ImportItem.failure(source, user_id, exc, snapshot.fingerprint))
        finally:
            try:
                dst.close()
            except Exception as exc:  # noqa: BLE001 - reported, never fatal to the bulk run
                log.warning("closing the session of %s failed: %s", user_id, type(exc).__name__)

    def drain(self, *, final: bool = False) -> list[ImportItem]:
        done, self._done = self._done, []
        return done


def user_id_from_filename(path: str | os.PathLike[str]) -> str:
    """``user_123.session`` -> ``"123"`` (the original layout); ``alice.session`` -> ``"alice"``.

    :param path: the file.
    """
    stem = Path(path).name
    if stem.endswith(".session"):
        stem = stem[: -len(".session")]
    if stem.startswith("user_") and len(stem) > len("user_"):
        stem = stem[len("user_") :]
    return stem


def session_files(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The files to import: each file as given, and every ``*.session`` file directly in each directory.

    :param paths: a file or directory, or a list of them.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(c for c in p.iterdir() if c.name.endswith(".session") and c.is_file()))
        else:
            out.append(p)
    return out


#: One source of a bulk import: ``(description, user id, read)``; ``read()`` returns the snapshot.
Source = tuple[str, "str | None", Callable[[], SessionSnapshot]]


def import_snapshots(
    sources: Iterable[Source],
    destination: Destination,
    *,
    total: int | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    report: BulkReport | None = None,
    stop: Callable[[], bool] | None = None,
) -> BulkReport:
    """Copy many sessions into ``destination``, one at a time; the engine of every bulk import.

    Each source is read only when its turn comes, so memory holds one session
    (plus, for Firestore, one batch of writes). A source that cannot be read or
    written is reported as failed and the others go on. Blocks the calling thread.

    :param sources: ``(description, user_id, read)`` each; ``read()`` returns the snapshot.
    :param destination: where the sessions go.
    :param total: how many sources there are, for ``progress``.
    :param overwrite: replace a different login (see :func:`copy_session`).
    :param progress: ``progress(done, total, item)``, called as each outcome becomes final.
    :param report: filled in as the import goes, so it is complete up to a ``KeyboardInterrupt``.
    :param stop: asked before each source: once it returns ``True`` no further source is
        read, what is pending is committed, and the report covers exactly the sessions
        handled (a graceful stop, e.g. on the first Ctrl-C).
    """
    report = report if report is not None else BulkReport()
    start = time.monotonic()
    done = 0

    def settle(items: Sequence[ImportItem]) -> None:
        nonlocal done
        for item in items:
            report.items.append(item)
            done += 1
            if progress is not None:
                progress(done, total, item)

    try:
        for source, user_id, read in sources:
            if stop is not None and stop():
                break
            if user_id is None:
                settle([ImportItem(source, None, FAILED, "no user id")])
                continue
            try:
                SessionKey("bot", user_id)
                snapshot = read()
            except (SessionError, OSError, ValueError, sqlite3.Error) as exc:
                settle([ImportItem.failure(source, user_id, exc)])
                continue
            destination.put(source, user_id, snapshot, overwrite=overwrite)
            del snapshot
            settle(destination.drain())
        settle(destination.drain(final=True))
    finally:
        destination.account(report)
        report.elapsed = time.monotonic() - start
    return report


def import_session_files(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    destination: Destination,
    *,
    user_id: str | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    report: BulkReport | None = None,
    stop: Callable[[], bool] | None = None,
) -> BulkReport:
    """Import Telethon ``.session`` files: a file, a directory of them, or a list of either.

    Files are read read-only and never modified. A file that cannot be read is reported
    as failed and the others go on; fix it and run the import again: sessions already
    imported come out ``"unchanged"``.

    :param paths: see :func:`session_files`.
    :param destination: where the sessions go.
    :param user_id: the user, for a single file; default from each file's name
        (:func:`user_id_from_filename`).
    :param overwrite: see :func:`import_snapshots`.
    :param progress: see :func:`import_snapshots`.
    :param report: see :func:`import_snapshots`.
    :param stop: see :func:`import_snapshots`.
    """
    files = session_files(paths)
    if user_id is not None and len(files) != 1:
        raise ValueError("user_id can only be given for a single file")

    def sources() -> Iterator[Source]:
        for f in files:
            yield str(f), user_id or user_id_from_filename(f), functools.partial(read_session_file, f)

    return import_snapshots(
        sources(), destination, total=len(files), overwrite=overwrite, progress=progress, report=report, stop=stop
    )


def import_string_session(
    string: str,
    user_id: str,
    destination: Destination,
    *,
    overwrite: bool = False,
    report: BulkReport | None = None,
) -> BulkReport:
    """Import one ``StringSession`` string as the session of ``user_id``.

    :param string: the text that ``StringSession.save()`` returns.
    :param user_id: the user.
    :param destination: where the session goes.
    :param overwrite: see :func:`import_snapshots`.
    :param report: see :func:`import_snapshots`.
    """
    return import_snapshots(
        [("string", user_id, functools.partial(read_string_session, string))],
        destination,
        total=1,
        overwrite=overwrite,
        report=report,
    )
