"""What every command of the command line uses: the run's configuration (:class:`Env`), output
(:class:`Output`, :class:`Progress`, tables), exit codes, and the frame of the bulk commands
(:func:`bulk`, :class:`GracefulStop`)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn, Protocol

from telethon_firestore_session import migrate
from telethon_firestore_session.errors import ConfigError, SessionError
from telethon_firestore_session.firestore.importer import FirestoreDestination
from telethon_firestore_session.firestore.layout import RPC_RETRY, iter_sessions, session_document
from telethon_firestore_session.ids import SessionKey
from telethon_firestore_session.sqlite import list_sqlite_sessions, session_path

if TYPE_CHECKING:
    from google.cloud import firestore
    from telethon.sessions.abstract import Session

    from telethon_firestore_session.config import SessionConfig
    from telethon_firestore_session.manager import UserSessionManager
    from telethon_firestore_session.manager.directory import SessionDirectory

PROG = "telethon-firestore-session"
EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2

SQLITE = "sqlite"
FIRESTORE = "firestore"
#: What ``--backend``/``--from`` accept; ``local`` is the friendly name of ``sqlite``.
BACKEND_CHOICES = ("local", SQLITE, FIRESTORE)
#: The help of ``--from`` (``show``, ``export``).
FROM_HELP = "backend to read (default: the configured one)"

#: One logger for the whole command line (``-v`` shows it as ``telethon_firestore_session.cli``).
log = logging.getLogger(__package__)


class UsageError(Exception):
    """A command was called in a way that cannot work (exit code 2)."""


def backend_name(value: str | None) -> str | None:
    """``local`` -> ``sqlite``: report backends by the configuration's names."""
    if value is None:
        return None
    return SQLITE if value in ("local", SQLITE) else FIRESTORE


# -- output ------------------------------------------------------------------------------


def _in_ci(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _json_default(value: object) -> Any:
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if hasattr(value, "as_dict"):
        return value.as_dict()
    return str(value)


class Output:
    """Human text or one JSON document on stdout; messages on stderr."""

    def __init__(self, as_json: bool, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> None:
        self.as_json = as_json
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr

    def emit(self, data: Any, text: str | Callable[[], str]) -> None:
        if self.as_json:
            json.dump(data, self.stdout, default=_json_default, indent=2, sort_keys=True)
            self.stdout.write("\n")
        else:
            body = text() if callable(text) else text
            if body:
                self.stdout.write(body.rstrip("\n") + "\n")
        self.stdout.flush()

    def note(self, message: str) -> None:
        self.stderr.write(message.rstrip("\n") + "\n")
        self.stderr.flush()

    def error(self, command: str, kind: str, exc: BaseException, exit_code: int) -> int:
        """Report a failed command: a line on stderr, and with ``--json`` a document on stdout too."""
        label = "error" if kind == "error" else f"{kind} error"
        self.note(f"{PROG} {command}: {label}: {exc}")
        if self.as_json:
            err: dict[str, Any] = {"type": type(exc).__name__, "kind": kind, "message": str(exc)}
            variable = getattr(exc, "variable", None)
            if variable is not None:
                err["variable"] = variable
            self.emit({"ok": False, "exit_code": exit_code, "error": err}, "")
        return exit_code


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal and not in CI."""

    def __init__(self, label: str, stream: IO[str], enabled: bool, width: int = 30) -> None:
        self.label = label
        self.stream = stream
        self.enabled = enabled
        self.width = width
        self.counts: dict[str, int] = {}
        self._last = 0.0
        self._drawn = False

    @classmethod
    def for_stream(cls, label: str, stream: IO[str], *, disabled: bool = False) -> Progress:
        try:
            tty = stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        return cls(label, stream, tty and not _in_ci() and not disabled)

    def __call__(self, done: int, total: int | None, item: migrate.ImportItem) -> None:
        self.counts[item.status] = self.counts.get(item.status, 0) + 1
        log.debug("%s %s/%s: %s %s", self.label, done, total or "?", item.status, item.user_id)
        if not self.enabled:
            return
        now = time.monotonic()
        if not self._drawn or (total is not None and done >= total) or now - self._last >= 0.1:
            self._last = now
            self._draw(done, total)

    def _draw(self, done: int, total: int | None) -> None:
        summary = " ".join(f"{k}:{v}" for k, v in sorted(self.counts.items()))
        if total:
            filled = int(self.width * min(done, total) / total)
            bar = "#" * filled + "-" * (self.width - filled)
            line = f"\r{self.label} [{bar}] {done}/{total} {summary}"
        else:
            line = f"\r{self.label} {done} done {summary}"
        self.stream.write(line + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()


# -- configuration -----------------------------------------------------------------------


def environment(args: argparse.Namespace, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of this run: the process environment with the command-line overrides."""
    environ = dict(os.environ if base is None else base)
    backend = backend_name(getattr(args, "backend", None))
    if backend is not None:
        environ["USE_LOCAL_STORAGE"] = "true" if backend == SQLITE else "false"
    bot_id = getattr(args, "bot_id", None)
    if bot_id is not None:
        environ["BOT_ID"] = bot_id
    sessions_dir = getattr(args, "sessions_dir", None)
    if sessions_dir is not None:
        environ["SESSIONS_DIR"] = str(sessions_dir)
    return environ


class Env:
    """The configuration of one run, and what is built from it (lazily).

    Sessions and managers of either backend come from ``config.open_directory`` and the configuration,
    through this run's one Firestore client (:meth:`firestore_client`, closed by :meth:`close`).
    """

    def __init__(self, args: argparse.Namespace, environ: Mapping[str, str]) -> None:
        self.args = args
        self.environ = environ
        self._config: SessionConfig | None = None
        self._client: firestore.Client | None = None

    @property
    def config(self) -> SessionConfig:
        if self._config is None:
            from telethon_firestore_session.config import SessionConfig

            self._config = SessionConfig.from_env(self.environ)
            log.debug("configuration: %r", self._config)  # secrets masked by its repr
        return self._config

    @property
    def backend(self) -> str:
        return str(self.config.backend)

    @property
    def bot_id(self) -> str:
        return self.config.bot_id

    @property
    def sessions_dir(self) -> Path:
        return self.config.sessions_dir

    @property
    def cipher(self) -> Any:
        return self.config.cipher

    def _name(self, backend: str | None) -> str:
        return backend_name(backend) or self.backend

    def firestore_client(self) -> firestore.Client:
        """The one Firestore client of this run (closed by :meth:`close`)."""
        if self._client is None:
            config = self.config
            if config.project is None and config.emulator_host is None:
                raise ConfigError(
                    "FIREBASE_PROJECT_ID",
                    f"`{self.args.command}` needs Firestore, but no project is set; set FIREBASE_PROJECT_ID "
                    "(or GOOGLE_CLOUD_PROJECT, or FIREBASE_CREDENTIALS), or FIRESTORE_EMULATOR_HOST for the emulator",
                )
            host = config.emulator_host
            if host is not None and os.environ.get("FIRESTORE_EMULATOR_HOST") != host:
                # This process is the command line's own: name the emulator where google-cloud-firestore
                # reads it, before the client is built (config then needs no private attribute of it).
                os.environ["FIRESTORE_EMULATOR_HOST"] = host
            from google.auth.exceptions import DefaultCredentialsError

            try:
                self._client = config.firestore_client()
            except DefaultCredentialsError:
                raise ConfigError(
                    "GOOGLE_APPLICATION_CREDENTIALS",
                    "no Google credentials were found; set FIREBASE_CREDENTIALS (the service-account JSON) "
                    "or GOOGLE_APPLICATION_CREDENTIALS (a key file)",
                ) from None
        return self._client

    def close(self) -> None:
        client: Any = self._client
        self._client = None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # noqa: BLE001 - closing at exit must not hide the result
                log.debug("closing the Firestore client failed: %s", type(exc).__name__)

    # -- sessions ---------------------------------------------------------------------------

    def directory(self, backend: str | None = None) -> SessionDirectory:
        """The sessions of ``backend`` (default: the configured one), sealed as configured."""
        from telethon_firestore_session.config import open_directory

        config = self.config
        return open_directory(
            self._name(backend),
            config.bot_id,
            sessions_dir=config.sessions_dir,
            firestore_client=self.firestore_client,  # called only for Firestore
            cipher=config.cipher,
            encrypt_pii=config.encrypt_pii,
            owns_client=False,
        )

    def open(self, user_id: str, backend: str | None = None) -> Session:
        return self.directory(backend).open_session(user_id, flush_interval=5.0, close_timeout=10.0)

    def exists(self, user_id: str, backend: str | None = None) -> bool:
        """Whether ``user_id`` has a session in ``backend``, found without opening (and so creating) one."""
        key = SessionKey(self.bot_id, user_id)
        if self._name(backend) == FIRESTORE:
            return bool(session_document(self.firestore_client(), key).get(field_paths=[], timeout=30).exists)
        return session_path(self.sessions_dir, key).exists()

    def require(self, user_id: str, backend: str | None = None) -> None:
        """Raise :class:`SessionError` unless ``user_id`` has a session in ``backend`` (opening would create one)."""
        if not self.exists(user_id, backend):
            raise SessionError(f"no {self._name(backend)} session for user {user_id!r} of bot {self.bot_id!r}")

    def read(self, user_id: str, backend: str | None = None, *, check: bool = True) -> migrate.SessionSnapshot:
        """``user_id``'s session in ``backend``, read whole; with ``check``, a missing one is an error."""
        if check:
            self.require(user_id, backend)
        session = self.open(user_id, backend)
        try:
            return migrate.read_session(session)
        finally:
            session.close()

    def user_ids(self, backend: str | None = None) -> list[str]:
        """The user id of every stored session in ``backend`` (default: the configured one)."""
        if self._name(backend) == FIRESTORE:
            return [uid for uid, _ in iter_sessions(self.firestore_client(), self.bot_id, call=RPC_RETRY.call(60.0))]
        return [str(e["user_id"]) for e in list_sqlite_sessions(self.sessions_dir, self.bot_id)]

    def destination(self, backend: str | None = None) -> migrate.Destination:
        """Where imports go: Firestore in shared batches, sealed like this configuration's sessions."""
        if self._name(backend) == FIRESTORE:
            return FirestoreDestination(self.firestore_client(), self.bot_id, **self.config.session_options())
        return migrate.SessionDestination(functools.partial(self.open, backend=SQLITE))

    def manager(self, backend: str | None = None) -> UserSessionManager:
        from telethon_firestore_session.manager import create_user_session_manager_from_config

        # firestore_client: this run's, shared and closed by close() (called only for Firestore).
        return create_user_session_manager_from_config(
            self.config, backend=self._name(backend), firestore_client=self.firestore_client
        )


#: ``add(name, func, help)``: adds the command ``name`` (run by ``func``) to the parser, and returns
#: its sub-parser for the command's own arguments. Each group module has ``add_commands(add)``.
AddCommand = Callable[[str, Callable[[Env, Output], int], str], argparse.ArgumentParser]


# -- helpers -------------------------------------------------------------------------------


def fail_usage(message: str) -> NoReturn:
    raise UsageError(message)


def run_async(make: Callable[[UserSessionManager], Any], env: Env, backend: str | None = None) -> Any:
    async def runner() -> Any:
        manager = env.manager(backend)
        try:
            return await make(manager)
        finally:
            await manager.aclose()

    return asyncio.run(runner())


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime.datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value) if value else "-"
    return str(value)


def kv(data: Mapping[str, Any], indent: str = "") -> str:
    lines = []
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"{indent}{k}:")
            lines.append(kv(v, indent + "  "))
        else:
            lines.append(f"{indent}{k}: {_cell(v)}")
    return "\n".join(lines)


def _is_conflict(item: migrate.ImportItem) -> bool:
    """Skipped because the destination holds another login (a source without an auth key has no fingerprint)."""
    return item.status == migrate.SKIPPED and item.fingerprint is not None


#: With at most this many sessions, the text output names every one of them.
_LIST_ALL_UP_TO = 20


def _bulk_text(report: migrate.BulkReport, verb: str, verbose: bool) -> str:
    counts = report.counts()
    lines = [
        f"{verb}: {len(report.items)} session(s) in {report.elapsed:.1f}s: "
        + (", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "nothing to do")
    ]
    if report.commits:
        lines.append(f"firestore: {report.writes} document writes in {report.commits} commits, {report.reads} reads")
    show_all = verbose or len(report.items) <= _LIST_ALL_UP_TO
    for item in report.items:
        if item.status in (migrate.FAILED, migrate.SKIPPED) or show_all:
            detail = f": {item.reason}" if item.reason else ""
            lines.append(f"  {item.status}: {item.user_id or '?'} ({item.source}){detail}")
    if any(_is_conflict(i) for i in report.items):
        lines.append("Sessions skipped for holding another login were left untouched; --overwrite replaces them.")
    if report.failed:
        lines.append("Fix the failures and run the same command again: what is already there stays unchanged.")
    return "\n".join(lines)


class GracefulStop:
    """The first Ctrl-C asks a bulk command to stop after the current session; a second one stops at once.

    Stopping between sessions keeps every session written whole, and lets a
    Firestore import commit what it has pending. Call the object to ask whether
    a stop was requested. Outside the main thread, or when SIGINT is ignored,
    nothing is installed and Ctrl-C keeps its usual meaning.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True  # nothing is printed here: a handler must not write to a stream mid-write

    def __enter__(self) -> GracefulStop:
        try:
            if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
                self._previous = signal.signal(signal.SIGINT, self._handle)
                self._installed = True
        except ValueError:  # not the main thread
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False


class BulkRun(Protocol):
    """The work of a bulk command: fills ``report``, asks ``stop()`` between sessions (as ``migrate``'s importers)."""

    def __call__(
        self, *, progress: migrate.ProgressCallback, report: migrate.BulkReport, stop: Callable[[], bool]
    ) -> migrate.BulkReport: ...


def bulk(
    env: Env,
    out: Output,
    verb: str,
    run: BulkRun,
    total: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> int:
    progress = Progress.for_stream(verb, out.stderr, disabled=env.args.json or env.args.no_progress)
    report = migrate.BulkReport()
    interrupted = False
    with GracefulStop() as stop:
        try:
            run(progress=progress, report=report, stop=stop)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            progress.close()
    interrupted = interrupted or stop.requested
    conflicts = [i for i in report.items if _is_conflict(i)]
    data = report.as_dict()
    data["ok"] = not (interrupted or report.failed or conflicts)
    data["interrupted"] = interrupted
    data["conflicts"] = len(conflicts)
    data["not_attempted"] = max(0, total - len(report.items)) if (interrupted and total is not None) else 0
    data["backend"] = env.backend
    data.update(extra or {})
    text = _bulk_text(report, verb, env.args.verbose > 0)
    if interrupted:
        rest = f" {data['not_attempted']} were not imported;" if total is not None else ""
        text += (
            f"\ninterrupted: the {len(report.items)} session(s) listed are done;{rest} "
            "run the same command again to do the rest."
        )
    out.emit(data, text)
    return EXIT_OK if data["ok"] else EXIT_PARTIAL
