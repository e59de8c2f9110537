"""The ``telethon-firestore-session`` command (also ``python -m telethon_firestore_session``).

It reads its configuration from the same environment as the factory
(``SessionConfig.from_env()``: ``BOT_ID``, ``USE_LOCAL_STORAGE``, ``SESSIONS_DIR``,
``FIREBASE_PROJECT_ID``/``GOOGLE_CLOUD_PROJECT``, ``FIREBASE_CREDENTIALS``,
``FIRESTORE_EMULATOR_HOST``, ``SESSION_ENCRYPTION_KEY`` ...); ``--backend``,
``--bot-id`` and ``--sessions-dir`` override it for one run. The process
environment itself is never modified, so :func:`main` can be called from code.

Backends are reported by the configuration's names, ``sqlite`` (per-user files)
and ``firestore``; on the command line ``local`` is accepted for ``sqlite``.

Exit codes: 0 success, 1 partial failure (some sessions failed, were left alone
because the destination holds another login, a run was interrupted, a check
failed), 2 usage or configuration error.

Secrets: no command prints an auth key. ``show`` prints its fingerprint.
``export`` writes one only with ``--include-secrets``, to a file created with mode
0600, or to standard output when that is not a terminal (or with ``--yes-print-secret``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import functools
import json
import logging
import os
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

from telethon_firestore_session import migrate
from telethon_firestore_session.errors import ConfigError, InvalidSessionIdError, SessionDecryptionError, SessionError

if TYPE_CHECKING:
    from google.cloud import firestore
    from telethon.sessions.abstract import Session

    from telethon_firestore_session.config import SessionConfig
    from telethon_firestore_session.manager import UserSessionManager

__all__ = ["main"]

PROG = "telethon-firestore-session"
EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2

SQLITE = "sqlite"
FIRESTORE = "firestore"
#: What ``--backend``/``--from`` accept; ``local`` is the friendly name of ``sqlite``.
BACKEND_CHOICES = ("local", SQLITE, FIRESTORE)

log = logging.getLogger("telethon_firestore_session.cli")


class UsageError(Exception):
    """A command was called in a way that cannot work (exit code 2)."""


def _backend_name(value: str | None) -> str | None:
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


def _environment(args: argparse.Namespace, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of this run: the process environment with the command-line overrides."""
    environ = dict(os.environ if base is None else base)
    backend = _backend_name(getattr(args, "backend", None))
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
    """The configuration of one run, and what is built from it (lazily)."""

    def __init__(self, args: argparse.Namespace, environ: Mapping[str, str]) -> None:
        self.args = args
        self.environ = environ
        self._config: SessionConfig | None = None
        self._configs: dict[str, SessionConfig] = {}
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

    def config_for(self, backend: str | None) -> SessionConfig:
        """The configuration with another backend (``backup``/``restore``/``--from`` read both)."""
        name = _backend_name(backend) or self.backend
        if name == self.backend:
            return self.config
        if name not in self._configs:
            self._configs[name] = dataclasses.replace(self.config, backend=name)  # type: ignore[arg-type]
        return self._configs[name]

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
            try:
                self._client = config.firestore_client()
            except ConfigError:
                raise
            except Exception as exc:
                if type(exc).__name__ == "DefaultCredentialsError":
                    raise ConfigError(
                        "GOOGLE_APPLICATION_CREDENTIALS",
                        "no Google credentials were found; set FIREBASE_CREDENTIALS (the service-account JSON) "
                        "or GOOGLE_APPLICATION_CREDENTIALS (a key file)",
                    ) from None
                raise
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

    def open_local(self, user_id: str) -> Session:
        from telethon_firestore_session.sqlite import ScopedSQLiteSession

        options = self.config.session_options()
        return ScopedSQLiteSession(user_id, bot_id=self.bot_id, sessions_dir=self.sessions_dir, **options)

    def open_firestore(self, user_id: str) -> Session:
        from telethon_firestore_session.firestore import FirestoreSession

        options = self.config.session_options()
        return FirestoreSession(user_id, bot_id=self.bot_id, client=self.firestore_client(), **options)

    def open(self, user_id: str, backend: str | None = None) -> Session:
        if (_backend_name(backend) or self.backend) == FIRESTORE:
            return self.open_firestore(user_id)
        return self.open_local(user_id)

    def exists(self, user_id: str, backend: str | None = None) -> bool:
        from telethon_firestore_session.ids import SessionKey

        key = SessionKey(self.bot_id, user_id)
        if (_backend_name(backend) or self.backend) == FIRESTORE:
            from telethon_firestore_session.firestore import session_document

            return bool(session_document(self.firestore_client(), key).get(field_paths=[], timeout=30).exists)
        from telethon_firestore_session.sqlite import session_path

        return session_path(self.sessions_dir, key).exists()

    def local_user_ids(self) -> list[str]:
        from telethon_firestore_session.sqlite import list_sqlite_sessions

        return [str(e["user_id"]) for e in list_sqlite_sessions(self.sessions_dir, self.bot_id)]

    def firestore_user_ids(self, page_size: int = 300) -> Iterator[str]:
        col = self.firestore_client().collection("bots").document(self.bot_id).collection("user_sessions")
        last = None
        while True:
            query = col.select([]).order_by("__name__").limit(page_size)
            if last is not None:
                query = query.start_after(last)
            page = list(query.stream(timeout=60))
            for snap in page:
                yield snap.id
            if len(page) < page_size:
                return
            last = page[-1]

    def firestore_destination(self) -> migrate.FirestoreDestination:
        """Batched writes into Firestore, sealed like this configuration's sessions."""
        return migrate.FirestoreDestination(self.firestore_client(), self.bot_id, **self.config.session_options())

    def user_ids(self, backend: str | None = None) -> list[str]:
        """Every stored session's user id in ``backend`` (default: the configured one)."""
        if (_backend_name(backend) or self.backend) == FIRESTORE:
            return list(self.firestore_user_ids())
        return self.local_user_ids()

    def destination(self, backend: str | None = None) -> migrate.Destination:
        if (_backend_name(backend) or self.backend) == FIRESTORE:
            return self.firestore_destination()
        return migrate.SessionDestination(self.open_local)

    def manager(self, backend: str | None = None) -> UserSessionManager:
        from telethon_firestore_session.manager import create_user_session_manager_from_config

        config = self.config_for(backend)
        options: dict[str, Any] = {}
        if config.backend == FIRESTORE:
            options["firestore_client"] = self.firestore_client()  # shared, closed by close()
        return create_user_session_manager_from_config(config, **options)


# -- helpers -------------------------------------------------------------------------------


def _fail_usage(message: str) -> NoReturn:
    raise UsageError(message)


def _run_async(make: Callable[[UserSessionManager], Any], env: Env, backend: str | None = None) -> Any:
    async def runner() -> Any:
        manager = env.manager(backend)
        try:
            return await make(manager)
        finally:
            await manager.aclose()

    return asyncio.run(runner())


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
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


def _kv(data: Mapping[str, Any], indent: str = "") -> str:
    lines = []
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"{indent}{k}:")
            lines.append(_kv(v, indent + "  "))
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


#: ``run(progress, report, stop)`` of a bulk command: fills ``report``, asks ``stop()`` between sessions.
BulkRun = Callable[[migrate.ProgressCallback, migrate.BulkReport, Callable[[], bool]], migrate.BulkReport]


def _bulk(
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
            run(progress, report, stop)
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


# -- commands ------------------------------------------------------------------------------


def cmd_info(env: Env, out: Output) -> int:
    from telethon_firestore_session.config import get_deployment_info

    info = get_deployment_info(env.config)
    health = _run_async(lambda m: m.health_check(), env)
    data = {"deployment": info, "health": health}
    out.emit(data, lambda: _kv(data))
    return EXIT_OK if health.get("status") == "healthy" else EXIT_PARTIAL


def cmd_list(env: Env, out: Output) -> int:
    sessions = _run_async(lambda m: m.list_user_sessions(), env)
    rows = [dataclasses.asdict(s) for s in sessions]
    columns = [
        "user_id",
        "logged_in",
        "login_pending",
        "last_active_at",
        "registered_at",
        "custom_api",
        "in_use_by",
    ]
    data = {"backend": env.backend, "bot_id": env.bot_id, "sessions": [s.as_dict() for s in sessions]}
    out.emit(data, lambda: _table(rows, columns))
    return EXIT_OK


def cmd_stats(env: Env, out: Output) -> int:
    stats = _run_async(lambda m: m.get_session_stats(), env)
    out.emit(stats, lambda: _kv(stats))
    return EXIT_OK


def _describe_session(env: Env, user_id: str, backend: str) -> dict[str, Any]:
    if not env.exists(user_id, backend):
        raise SessionError(f"no {backend} session for user {user_id!r} of bot {env.bot_id!r}")
    session = env.open(user_id, backend)
    try:
        snap = migrate.read_session(session)
    finally:
        session.close()
    info = _run_async(lambda m: m.for_user(user_id).info(), env, backend)
    common = snap.update_states.get(0)
    return {
        "user_id": user_id,
        "bot_id": env.bot_id,
        "backend": backend,
        "has_auth_key": snap.auth_key is not None,
        "auth_key_fingerprint": snap.fingerprint,
        "dc_id": snap.dc_id,
        "server_address": snap.server_address,
        "port": snap.port,
        "takeout_id": snap.takeout_id,
        "entities": len(snap.entities),
        "sent_files": len(snap.files),
        "update_states": len(snap.update_states),
        "pts": common.pts if common is not None else None,
        "updates_date": common.date if common is not None else None,
        "logged_in": info.logged_in if info is not None else None,
        "login_pending": info.login_pending if info is not None else None,
        "registered_at": info.registered_at if info is not None else None,
        "last_active_at": info.last_active_at if info is not None else None,
        "custom_api": info.custom_api if info is not None else None,
        "in_use_by": info.in_use_by if info is not None else None,
    }


def cmd_show(env: Env, out: Output) -> int:
    backend = _backend_name(env.args.from_backend) or env.backend
    data = _describe_session(env, env.args.user, backend)
    out.emit(data, lambda: _kv(data))
    return EXIT_OK


def _read_secret_string(args: argparse.Namespace) -> str:
    if args.string_file:
        try:
            text = Path(args.string_file).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            _fail_usage(f"cannot read --string-file {args.string_file}: {exc}")
    elif sys.stdin.isatty():
        import getpass

        text = getpass.getpass("StringSession (input hidden): ").strip()
    else:
        text = sys.stdin.read().strip()
    if not text:
        _fail_usage("no StringSession string was given (on standard input, or with --string-file)")
    return text


def cmd_import(env: Env, out: Output) -> int:
    a = env.args
    string = a.string or a.string_file is not None
    kinds = sum(bool(x) for x in (a.paths, string, a.legacy))
    if kinds != 1:
        _fail_usage("give .session files or directories, or --string/--string-file, or --legacy (exactly one)")
    if a.no_legacy_backup and not a.legacy:
        _fail_usage("--no-legacy-backup only goes with --legacy")
    if a.legacy:
        user_ids = a.user if a.user else None
        legacy_destination = env.firestore_destination()

        def run_legacy(
            progress: migrate.ProgressCallback, report: migrate.BulkReport, stop: Callable[[], bool]
        ) -> migrate.BulkReport:
            return migrate.import_legacy_documents(
                env.firestore_client(),
                env.bot_id,
                user_ids=user_ids,
                overwrite=a.overwrite,
                keep_backup=not a.no_legacy_backup,
                progress=progress,
                report=report,
                destination=legacy_destination,
                stop=stop,
            )

        return _bulk(env, out, "import", run_legacy, total=len(user_ids) if user_ids else None)
    if a.user is not None and len(a.user) > 1:
        _fail_usage("--user can be given once, except with --legacy")
    user = a.user[0] if a.user else None
    if string:
        if user is None:
            _fail_usage("--string needs --user USER_ID: a string session does not say whose it is")
        text = _read_secret_string(a)

        def run_string(
            progress: migrate.ProgressCallback, report: migrate.BulkReport, stop: Callable[[], bool]
        ) -> migrate.BulkReport:
            return migrate.import_snapshots(
                [("string", user, functools.partial(migrate.read_string_session, text))],
                env.destination(),
                total=1,
                overwrite=a.overwrite,
                progress=progress,
                report=report,
                stop=stop,
            )

        return _bulk(env, out, "import", run_string, total=1)
    paths = [Path(p) for p in a.paths]
    for p in paths:
        if not p.exists():
            _fail_usage(f"{p} does not exist")
    files = migrate.session_files(paths)
    if not files:
        _fail_usage("no .session files found in " + ", ".join(str(p) for p in paths))
    if user is not None and len(files) != 1:
        _fail_usage("--user can only be used with a single .session file")
    destination = env.destination()

    def run_files(
        progress: migrate.ProgressCallback, report: migrate.BulkReport, stop: Callable[[], bool]
    ) -> migrate.BulkReport:
        return migrate.import_session_files(
            files, destination, user_id=user, overwrite=a.overwrite, progress=progress, report=report, stop=stop
        )

    return _bulk(env, out, "import", run_files, total=len(files))


def _write_private(path: Path, data: str, *, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        _fail_usage(f"{path} exists; pass --force to replace it")
    with os.fdopen(fd, "w", encoding="ascii") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data + "\n")


def cmd_export(env: Env, out: Output) -> int:
    a = env.args
    to_stdout = not a.output or a.output == "-"
    fmt = a.format or ("session" if not to_stdout and str(a.output).endswith(".session") else "string")
    if not a.include_secrets:
        _fail_usage(
            "an export contains the auth key, a full login to the account; "
            "add --include-secrets to confirm that you want it written out"
        )
    if fmt == "session" and to_stdout:
        _fail_usage("--format session writes a file: give --output PATH")
    if fmt == "string" and to_stdout and out.stdout.isatty() and not a.yes_print_secret:
        _fail_usage(
            "refusing to print a login secret on a terminal: write it to a file with --output PATH, "
            "pipe it to another program, or add --yes-print-secret"
        )
    backend = _backend_name(a.from_backend) or env.backend
    if not env.exists(a.user, backend):
        raise SessionError(f"no {backend} session for user {a.user!r} of bot {env.bot_id!r}")
    session = env.open(a.user, backend)
    try:
        snap = migrate.read_session(session)
    finally:
        session.close()
    if not snap.auth_key:
        raise SessionError(f"user {a.user!r} has no auth key (not logged in); there is nothing to export")
    if fmt == "session":
        path, report = migrate.export_session_file(snap, a.output, overwrite=a.overwrite)
        data = {"user_id": a.user, "backend": backend, "path": str(path), "format": "session", **report.as_dict()}
        extra = f" ({report.reason})" if report.reason else ""
        text = f"{report.status}: {path} (mode 0600, auth key {report.fingerprint}){extra}"
        if report.status == migrate.SKIPPED:
            text += "\nThe file holds another login and was left untouched; --overwrite replaces it."
        out.emit(data, text)
        return EXIT_OK if report.status != migrate.SKIPPED else EXIT_PARTIAL
    try:
        string = migrate.export_string_session(snap)
    except ValueError as exc:
        raise SessionError(f"user {a.user!r}: {exc}") from None
    if not to_stdout:
        path = Path(a.output)
        _write_private(path, string, force=a.force)
        data = {
            "user_id": a.user,
            "backend": backend,
            "path": str(path),
            "format": "string",
            "fingerprint": snap.fingerprint,
        }
        out.emit(data, f"wrote {path} (mode 0600, auth key {snap.fingerprint})")
        return EXIT_OK
    if a.json:
        out.emit(
            {"user_id": a.user, "backend": backend, "format": "string", "string_session": string},
            "",
        )
    else:
        out.stdout.write(string + "\n")
        out.stdout.flush()
    return EXIT_OK


def _user_sources(
    env: Env, user_ids: Sequence[str], backend: str, *, check: bool
) -> Iterator[tuple[str, str | None, Callable[[], migrate.SessionSnapshot]]]:
    """Sources that read each user's session from ``backend``.

    With ``check`` (ids named on the command line) a missing session is reported as
    failed, instead of being opened, which would create an empty local file.
    """

    def reader(uid: str) -> migrate.SessionSnapshot:
        if check and not env.exists(uid, backend):
            raise SessionError(f"no {backend} session for user {uid!r} of bot {env.bot_id!r}")
        session = env.open(uid, backend)
        try:
            return migrate.read_session(session)
        finally:
            session.close()

    for uid in user_ids:
        yield f"{backend}:{uid}", uid, functools.partial(reader, uid)


def _copy_all(env: Env, out: Output, verb: str, source: str, target: str) -> int:
    """``backup``/``restore``: every session of the bot (or ``--user``) from ``source`` to ``target``."""
    a = env.args
    user_ids = a.user or env.user_ids(source)
    destination = env.destination(target)
    sources = _user_sources(env, user_ids, source, check=bool(a.user))

    def run(
        progress: migrate.ProgressCallback, report: migrate.BulkReport, stop: Callable[[], bool]
    ) -> migrate.BulkReport:
        return migrate.import_snapshots(
            sources,
            destination,
            total=len(user_ids),
            overwrite=a.overwrite,
            progress=progress,
            report=report,
            stop=stop,
        )

    return _bulk(env, out, verb, run, total=len(user_ids))


def cmd_backup(env: Env, out: Output) -> int:
    return _copy_all(env, out, "backup", SQLITE, FIRESTORE)


def cmd_restore(env: Env, out: Output) -> int:
    return _copy_all(env, out, "restore", FIRESTORE, SQLITE)


def cmd_cleanup(env: Env, out: Output) -> int:
    a = env.args
    if a.days < 0:
        _fail_usage("--days must be zero or more")
    removed: list[str] = _run_async(lambda m: m.cleanup_inactive_sessions(days=a.days, dry_run=a.dry_run), env)
    data = {"backend": env.backend, "dry_run": a.dry_run, "days": a.days, "removed": removed}
    verb = "would remove" if a.dry_run else "removed"

    def text() -> str:
        head = f"{verb} {len(removed)} session(s) inactive for {a.days}+ days"
        return head + "".join(f"\n  {uid}" for uid in removed)

    out.emit(data, text)
    return EXIT_OK


def _confirm(out: Output, prompt: str, expected: str) -> bool:
    if not sys.stdin.isatty():
        return False
    out.stderr.write(prompt)
    out.stderr.flush()
    return sys.stdin.readline().strip() == expected


def cmd_delete(env: Env, out: Output) -> int:
    a = env.args
    from telethon_firestore_session.ids import validate_id

    user = validate_id("user_id", a.user)
    bot_id = env.bot_id  # a configuration error comes before the question
    if not a.yes and not _confirm(
        out, f"Delete every stored record of user {user} of bot {bot_id}? Type the user id to confirm: ", user
    ):
        _fail_usage("not confirmed: pass --yes to delete without asking (standard input is not a terminal)")
    existed = bool(_run_async(lambda m: m.delete_user_session(user, log_out=a.log_out), env))
    data = {"user_id": user, "backend": env.backend, "deleted": existed}
    out.emit(data, f"deleted the session of {user}" if existed else f"no session of {user} to delete")
    return EXIT_OK


RESEALED = "resealed"


def cmd_rotate_key(env: Env, out: Output) -> int:
    cipher = env.cipher
    if cipher is None:
        raise ConfigError("SESSION_ENCRYPTION_KEY", "is not set: there is no key to re-seal with")
    backend = env.backend
    from telethon_firestore_session.config import rotate_sessions

    a = env.args
    if a.user and not env.exists(a.user):
        raise SessionError(f"no {backend} session for user {a.user!r} of bot {env.bot_id!r}")
    user_ids = [a.user] if a.user else env.user_ids(backend)

    def run(
        progress: migrate.ProgressCallback, report: migrate.BulkReport, stop: Callable[[], bool]
    ) -> migrate.BulkReport:
        # One user at a time, so that the report says which sessions were re-sealed and which were not.
        start = time.monotonic()
        try:
            for uid in user_ids:
                if stop():
                    break
                source = f"{backend}:{uid}"
                try:
                    if rotate_sessions(env.config, user_id=uid):
                        item = migrate.ImportItem(source, uid, RESEALED)
                    else:
                        item = migrate.ImportItem(source, uid, migrate.UNCHANGED, "already sealed with the current key")
                except SessionError as exc:
                    cause = next(iter(getattr(exc, "failures", ())), exc)  # SessionRotationError wraps it
                    item = migrate.ImportItem(source, uid, migrate.FAILED, f"{type(cause).__name__}: {cause}")
                report.items.append(item)
                progress(len(report.items), len(user_ids), item)
        finally:
            report.elapsed = time.monotonic() - start
        return report

    return _bulk(env, out, "rotate-key", run, total=len(user_ids), extra={"key_id": cipher.key_id})


def cmd_keygen(env: Env, out: Output) -> int:
    from telethon_firestore_session.crypto import SessionCipher, generate_key

    key = generate_key()
    key_id = SessionCipher(key).key_id
    out.emit({"key": key, "key_id": key_id, "variable": "SESSION_ENCRYPTION_KEY"}, key)
    if not env.args.json:
        out.note(
            f"Key id {key_id}. Store it as SESSION_ENCRYPTION_KEY (a secret env var on Render) and keep a copy: "
            "without it, sealed sessions cannot be opened. To replace a key, move the old one to "
            f"SESSION_ENCRYPTION_OLD_KEYS and run `{PROG} rotate-key`."
        )
    return EXIT_OK


# -- doctor -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Check:
    name: str
    status: str  # ok, warn, fail
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def _doctor_checks(env: Env) -> Iterator[Check]:
    try:
        config = env.config
    except ConfigError as exc:
        yield Check("config", "fail", str(exc), f"set {exc.variable} (see the README's environment table)")
        return
    yield Check("config", "ok", f"backend={config.backend} bot_id={config.bot_id} ({config.backend_reason})")
    yield _check_encryption(env)
    if config.backend == FIRESTORE:
        yield from _check_firestore(env)
    elif config.emulator_host or config.project:
        # Firestore is only needed for backup and restore here: its problems are warnings.
        for check in _check_firestore(env):
            if check.status == "fail":
                check.status = "warn"
                check.detail += " (needed only for backup and restore)"
            yield check
    if config.backend == SQLITE:
        yield from _check_local(env)


def _check_encryption(env: Env) -> Check:
    if env.cipher is None:
        return Check(
            "encryption",
            "warn",
            "SESSION_ENCRYPTION_KEY is not set: auth keys are stored in the clear",
            f"run `{PROG} keygen`, set SESSION_ENCRYPTION_KEY, then run `{PROG} rotate-key`",
        )
    pii = ", usernames, phones and names too" if env.config.encrypt_pii else ""
    return Check("encryption", "ok", f"auth keys are sealed (AES-256-GCM, key id {env.cipher.key_id}){pii}")


def _check_firestore(env: Env) -> Iterator[Check]:
    config = env.config
    host = config.emulator_host
    if host:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://{host}/", timeout=3) as resp:
                ok = resp.read().decode("utf-8", "replace").strip() == "Ok"
        except OSError as exc:
            yield Check(
                "emulator",
                "fail",
                f"FIRESTORE_EMULATOR_HOST={host} does not answer ({type(exc).__name__})",
                "start the emulator (gcloud emulators firestore start) or unset FIRESTORE_EMULATOR_HOST",
            )
            return
        yield Check(
            "emulator",
            "ok" if ok else "warn",
            f"FIRESTORE_EMULATOR_HOST={host} answers" + ("" if ok else ", but not like a Firestore emulator"),
        )
    else:
        info = config.deployment_info()
        if config.project is None:
            yield Check(
                "project",
                "fail",
                "no Google Cloud project is set",
                "set FIREBASE_PROJECT_ID (or GOOGLE_CLOUD_PROJECT), or use FIREBASE_CREDENTIALS with a project_id",
            )
            return
        yield Check("project", "ok", f"project {config.project}")
        if config.credentials_info is None and config.credentials_file is None:
            try:
                import google.auth

                google.auth.default()
            except Exception as exc:  # noqa: BLE001 - reported as a finding
                yield Check(
                    "credentials",
                    "fail",
                    f"no Google credentials ({type(exc).__name__})",
                    "set FIREBASE_CREDENTIALS (service-account JSON) or GOOGLE_APPLICATION_CREDENTIALS, "
                    "or FIRESTORE_EMULATOR_HOST for the emulator",
                )
                return
        yield Check("credentials", "ok", str(info.get("credentials", "configured")))
    try:
        client = env.firestore_client()
        start = time.monotonic()
        col = client.collection("bots").document(env.bot_id).collection("user_sessions")
        docs = list(col.select([]).limit(1).get(timeout=10))
        ms = (time.monotonic() - start) * 1000
    except Exception as exc:  # noqa: BLE001 - reported as a finding
        name = type(exc).__name__
        fix = "check the project id, the network, and that Firestore (native mode) is enabled in the project"
        if name in ("PermissionDenied", "Forbidden", "Unauthenticated"):
            fix = "grant the service account the Cloud Datastore User role (roles/datastore.user) in the project"
        yield Check("firestore", "fail", f"cannot read bots/{env.bot_id}/user_sessions ({name})", fix)
        return
    yield Check(
        "firestore", "ok", f"read bots/{env.bot_id}/user_sessions in {ms:.0f} ms ({len(docs)} document sampled)"
    )
    yield from _check_leases_and_legacy(env, client)
    try:
        values = _firestore_auth_keys(env, client)
    except Exception as exc:  # noqa: BLE001 - reported as a finding
        yield Check("sealing", "warn", f"cannot read the stored auth keys ({type(exc).__name__})")
        return
    yield from _check_sealing(env, values)


def _check_leases_and_legacy(env: Env, client: firestore.Client) -> Iterator[Check]:
    from google.cloud.firestore_v1.base_query import FieldFilter

    col = client.collection("bots").document(env.bot_id).collection("user_sessions")
    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        held = list(
            col.where(filter=FieldFilter("lease.expires_at", ">", now)).select(["lease"]).limit(50).get(timeout=10)
        )
        legacy = list(col.where(filter=FieldFilter(migrate.LEGACY_FIELD, ">", "")).select([]).limit(1).get(timeout=10))
    except Exception as exc:  # noqa: BLE001 - reported as a finding
        yield Check("leases", "warn", f"cannot query leases ({type(exc).__name__})")
        return
    if held:
        holders = sorted({str(((s.to_dict() or {}).get("lease") or {}).get("holder")) for s in held})
        yield Check(
            "leases",
            "ok",
            f"{len(held)} session(s) in use by running instances now: {', '.join(holders)}",
            "normal while the bot runs; a crashed instance's lease expires by itself",
        )
    else:
        yield Check("leases", "ok", "no session is in use by a running instance")
    if legacy:
        yield Check(
            "legacy",
            "warn",
            "documents in the original system's base64 session_data layout exist; sessions cannot open them",
            f"run `{PROG} import --legacy` (it keeps the original in legacy_session_data)",
        )


#: Sessions whose auth keys ``doctor`` looks at.
_SEAL_SAMPLE = 20


def _firestore_auth_keys(env: Env, client: firestore.Client) -> list[tuple[str, bytes]]:
    col = client.collection("bots").document(env.bot_id).collection("user_sessions")
    values = []
    for snap in col.select(["auth_key"]).limit(_SEAL_SAMPLE).get(timeout=10):
        value = (snap.to_dict() or {}).get("auth_key")
        if isinstance(value, bytes) and value:
            values.append((snap.id, value))
    return values


def _sqlite_auth_keys(files: Sequence[Path]) -> list[tuple[str, bytes]]:
    """Raw ``auth_key`` column values, read-only and without the session's lock (a running bot is not disturbed)."""
    import sqlite3

    values = []
    for path in files[:_SEAL_SAMPLE]:
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1)
        except sqlite3.Error:
            continue
        try:
            row = conn.execute("select auth_key from sessions").fetchone()
        except sqlite3.Error:
            continue
        finally:
            conn.close()
        if row is not None and isinstance(row[0], bytes) and row[0]:
            values.append((migrate.user_id_from_filename(path), row[0]))
    return values


def _check_sealing(env: Env, values: Sequence[tuple[str, bytes]]) -> Iterator[Check]:
    """Do the stored auth keys match the configured keys? Looks at key ids only; never prints a value."""
    from telethon_firestore_session.crypto import is_sealed

    if not values:
        return
    cipher = env.cipher
    plain: list[str] = []
    current: list[str] = []
    old: list[str] = []
    unknown: list[str] = []
    for uid, value in values:
        if len(value) == migrate.AUTH_KEY_SIZE or not is_sealed(value):
            plain.append(uid)
        elif cipher is None:
            unknown.append(uid)
        else:
            kid = cipher.sealed_with(value)
            (current if kid == cipher.key_id else old if kid in cipher.key_ids else unknown).append(uid)
    sampled = f"of {len(values)} sampled session(s) with an auth key"
    if unknown:
        if cipher is None:
            yield Check(
                "sealing",
                "fail",
                f"{len(unknown)} {sampled} are sealed (e.g. user {unknown[0]}), but SESSION_ENCRYPTION_KEY is not set",
                "set SESSION_ENCRYPTION_KEY to the key that sealed them",
            )
        else:
            yield Check(
                "sealing",
                "fail",
                f"{len(unknown)} {sampled} are sealed with a key that is not configured (e.g. user {unknown[0]})",
                "set SESSION_ENCRYPTION_KEY to the key that sealed them, or add that key to "
                f"SESSION_ENCRYPTION_OLD_KEYS and run `{PROG} rotate-key`",
            )
        return
    if cipher is None:
        return  # all plaintext: the encryption check already says so
    if plain or old:
        yield Check(
            "sealing",
            "warn",
            f"{len(plain)} {sampled} hold a plaintext auth key, {len(old)} one sealed with an old key",
            f"run `{PROG} rotate-key` to seal them with the current key",
        )
    else:
        yield Check("sealing", "ok", f"{len(current)} {sampled} are sealed with the current key")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _check_local(env: Env) -> Iterator[Check]:
    base = env.sessions_dir
    bot_dir = base / env.bot_id
    if not base.exists():
        yield Check("sessions_dir", "ok", f"{base} does not exist yet; it is created (mode 0700) on first use")
        return
    if not os.access(base, os.W_OK | os.X_OK) or (bot_dir.exists() and not os.access(bot_dir, os.W_OK | os.X_OK)):
        yield Check(
            "sessions_dir",
            "fail",
            f"{base} (or {bot_dir}) is not writable by this user",
            f"chown or chmod u+rwx {base} {bot_dir}",
        )
        return
    problems = [p for p in (base, bot_dir) if p.exists() and _mode(p) & 0o077]
    if problems:
        yield Check(
            "sessions_dir",
            "warn",
            "readable by other users: " + ", ".join(f"{p} ({oct(_mode(p))})" for p in problems),
            "chmod 700 " + " ".join(str(p) for p in problems),
        )
    else:
        yield Check("sessions_dir", "ok", f"{base} is private and writable")
    if not bot_dir.exists():
        return
    files = sorted(bot_dir.glob("user_*.session"))
    loose = [f for f in files if _mode(f) & 0o077]
    if loose:
        yield Check(
            "file_modes",
            "warn",
            f"{len(loose)} session file(s) readable by other users (e.g. {loose[0].name})",
            f"chmod 600 {bot_dir}/user_*.session",
        )
    locked_inodes = _flock_inodes()
    locked = [f.name for f in files if _is_locked(f, locked_inodes)]
    if locked:
        yield Check(
            "locks",
            "ok",
            f"{len(locked)} of {len(files)} session file(s) are open in a running process: {', '.join(locked[:10])}",
            "normal while the bot runs; stop it before restore --overwrite or delete",
        )
    else:
        yield Check("locks", "ok", f"{len(files)} session file(s), none open in a running process")
    yield from _check_sealing(env, _sqlite_auth_keys(files))


def _flock_inodes() -> set[int] | None:
    """Inodes with a ``flock`` lock held, from ``/proc/locks`` (Linux); ``None`` where it does not exist.

    Reading the table takes no lock, so a bot opening its session at that moment is never disturbed.
    Only the inode is compared: overlay file systems (containers) report another device there.
    """
    try:
        text = Path("/proc/locks").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    inodes: set[int] = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 6 or parts[1] == "->" or parts[1] != "FLOCK":
            continue
        try:
            inodes.add(int(parts[5].rsplit(":", 1)[1]))
        except (IndexError, ValueError):
            continue
    return inodes


def _is_locked(path: Path, locked_inodes: set[int] | None) -> bool:
    if locked_inodes is not None:
        try:
            return path.stat().st_ino in locked_inodes
        except OSError:
            return False
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        # A shared probe: it fails only while an exclusive lock (an open session) is held.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def cmd_doctor(env: Env, out: Output) -> int:
    checks = list(_doctor_checks(env))
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    failed = sum(c.status == "fail" for c in checks)

    def text() -> str:
        lines = []
        for c in checks:
            lines.append(f"[{marks[c.status]}] {c.name}: {c.detail}")
            if c.fix and c.status != "ok":
                lines.append(f"       fix: {c.fix}")
        lines.append("all checks passed" if not failed else f"{failed} check(s) failed")
        return "\n".join(lines)

    out.emit({"ok": not failed, "checks": [c.as_dict() for c in checks]}, text)
    if any(c.name == "config" and c.status == "fail" for c in checks):
        return EXIT_USAGE
    return EXIT_PARTIAL if failed else EXIT_OK


# -- the parser ---------------------------------------------------------------------------------


def _common(suppress: bool) -> argparse.ArgumentParser:
    """Options accepted before and after the command name."""
    default = argparse.SUPPRESS if suppress else None
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("configuration (overrides the environment)")
    g.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default=default,
        help="local (= sqlite, per-user files) or firestore; sets USE_LOCAL_STORAGE",
    )
    g.add_argument("--bot-id", default=default, metavar="BOT_ID", help="sets BOT_ID")
    g.add_argument("--sessions-dir", default=default, metavar="DIR", help="sets SESSIONS_DIR")
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", default=argparse.SUPPRESS if suppress else False, help="JSON output")
    o.add_argument(
        "--no-progress",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="no progress bar even on a terminal",
    )
    o.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS if suppress else 0, help="log to stderr"
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _common(suppress=True)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Manage Telethon sessions stored in Firestore or per-user SQLite files.",
        parents=[_common(suppress=False)],
        epilog="Exit codes: 0 success, 1 partial failure, 2 usage or configuration error.",
    )
    from telethon_firestore_session import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Callable[[Env, Output], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, parents=[common])
        p.set_defaults(func=func)
        return p

    from_help = "backend to read (default: the configured one)"
    add("info", cmd_info, "deployment info, backend and health")
    add("list", cmd_list, "list the stored sessions of the bot")
    add("stats", cmd_stats, "session statistics")
    p = add("show", cmd_show, "one session's metadata (the auth key only as a fingerprint)")
    p.add_argument("user", metavar="USER")
    p.add_argument("--from", dest="from_backend", choices=BACKEND_CHOICES, help=from_help)

    p = add(
        "import",
        cmd_import,
        "import .session files, a directory of them, a StringSession, or the original Firestore layout",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help=".session files or directories of them")
    p.add_argument(
        "--user",
        action="append",
        help="user id for a single file or a string (default: from user_<id>.session); "
        "with --legacy, only this user (repeatable)",
    )
    p.add_argument("--string", action="store_true", help="import a StringSession read from stdin (or --string-file)")
    p.add_argument("--string-file", metavar="FILE", help="read the StringSession from FILE")
    p.add_argument(
        "--legacy",
        action="store_true",
        help="convert the original system's bots/{bot_id}/user_sessions/* base64 session_data in place (Firestore)",
    )
    p.add_argument("--no-legacy-backup", action="store_true", help="with --legacy: do not keep legacy_session_data")
    p.add_argument("--overwrite", action="store_true", help="replace sessions that hold a different login")

    p = add("export", cmd_export, "export a session as a .session file or a StringSession")
    p.add_argument("user", metavar="USER")
    p.add_argument("--format", choices=["session", "string"], help="default: session for *.session, else string")
    p.add_argument("-o", "--output", metavar="PATH", help="file to write (mode 0600); '-' or none: stdout")
    p.add_argument("--include-secrets", action="store_true", help="required: the export contains the auth key")
    p.add_argument("--yes-print-secret", action="store_true", help="allow printing the secret on a terminal")
    p.add_argument("--force", action="store_true", help="replace an existing string file")
    p.add_argument("--overwrite", action="store_true", help="replace a .session file holding another login")
    p.add_argument("--from", dest="from_backend", choices=BACKEND_CHOICES, help=from_help)

    p = add("backup", cmd_backup, "copy local sessions to Firestore")
    p.add_argument("--user", action="append", help="only this user (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace Firestore sessions that hold another login")
    p = add("restore", cmd_restore, "copy Firestore sessions to local files")
    p.add_argument("--user", action="append", help="only this user (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace local sessions that hold another login")

    p = add("cleanup", cmd_cleanup, "remove sessions inactive for N days")
    p.add_argument("--days", type=int, required=True, metavar="N")
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    p = add("delete", cmd_delete, "delete one user's session")
    p.add_argument("user", metavar="USER")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--log-out", action="store_true", help="log the client out at Telegram first (needs API_ID)")
    p = add("rotate-key", cmd_rotate_key, "re-seal sessions with the current SESSION_ENCRYPTION_KEY")
    p.add_argument("--user", help="only this user")
    add("keygen", cmd_keygen, "print a new SESSION_ENCRYPTION_KEY")
    add("doctor", cmd_doctor, "check the configuration and say what to fix")
    return parser


def _setup_logging(verbosity: int) -> None:
    if verbosity <= 0:
        logging.getLogger("telethon_firestore_session").setLevel(logging.ERROR)
        return
    logging.basicConfig(
        level=logging.DEBUG if verbosity > 1 else logging.INFO,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _is_google_api_error(exc: BaseException) -> bool:
    try:
        from google.api_core.exceptions import GoogleAPIError
    except ImportError:  # pragma: no cover - a dependency
        return False
    return isinstance(exc, GoogleAPIError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    _setup_logging(args.verbose)
    out = Output(args.json)
    env = Env(args, _environment(args))
    command = args.command
    try:
        return int(args.func(env, out))
    except UsageError as exc:
        return out.error(command, "error", exc, EXIT_USAGE)
    except (ConfigError, InvalidSessionIdError) as exc:
        return out.error(command, "configuration", exc, EXIT_USAGE)
    except SessionDecryptionError as exc:
        # A wrong or missing SESSION_ENCRYPTION_KEY (nothing was written).
        return out.error(command, "configuration", exc, EXIT_USAGE)
    except (SessionError, OSError) as exc:
        return out.error(command, "error", exc, EXIT_PARTIAL)
    except KeyboardInterrupt as exc:
        out.note(f"{PROG} {command}: interrupted")
        if out.as_json:
            out.emit({"ok": False, "exit_code": EXIT_PARTIAL, "error": {"type": type(exc).__name__}}, "")
        return EXIT_PARTIAL
    except Exception as exc:
        if not _is_google_api_error(exc):
            raise
        log.debug("Firestore call failed", exc_info=True)
        return out.error(command, "firestore", exc, EXIT_PARTIAL)
    finally:
        env.close()
