"""The ``telethon-firestore-session`` command (also ``python -m telethon_firestore_session``).

It reads its configuration from the same environment as the factory
(``SessionConfig.from_env()``: ``BOT_ID``, ``USE_LOCAL_STORAGE``, ``SESSIONS_DIR``,
``FIREBASE_PROJECT_ID``/``GOOGLE_CLOUD_PROJECT``, ``FIREBASE_CREDENTIALS``,
``FIRESTORE_EMULATOR_HOST``, ``SESSION_ENCRYPTION_KEY`` ...); ``--backend``,
``--bot-id`` and ``--sessions-dir`` override it for one run.

Exit codes: 0 success, 1 partial failure (some sessions failed, a check failed),
2 usage or configuration error.

Secrets: no command prints an auth key. ``show`` prints its fingerprint.
``export`` writes one only with ``--include-secrets``, to a file created with mode
0600, or to standard output when that is not a terminal (or with ``--yes-print-secret``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import functools
import json
import logging
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

from . import migrate
from .errors import ConfigError, InvalidSessionIdError, SessionError, SessionInUseError

if TYPE_CHECKING:
    from google.cloud import firestore
    from telethon.sessions.abstract import Session

    from .config import SessionConfig

__all__ = ["main"]

PROG = "telethon-firestore-session"
EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2

log = logging.getLogger("telethon_firestore_session.cli")


class UsageError(Exception):
    """A command was called in a way that cannot work (exit code 2)."""


# -- output ------------------------------------------------------------------------------


def _in_ci(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    return environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


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
        if not self.enabled:
            return
        now = time.monotonic()
        if (total is not None and done >= total) or now - self._last >= 0.1:
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


class Env:
    """The configuration of one run, and what is built from it (lazily)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._config: SessionConfig | None = None
        self._client: firestore.Client | None = None

    @property
    def config(self) -> SessionConfig:
        if self._config is None:
            from .config import SessionConfig

            self._config = SessionConfig.from_env()
        return self._config

    @property
    def backend(self) -> str:
        return str(self.config.backend)

    @property
    def bot_id(self) -> str:
        return str(self.config.bot_id)

    @property
    def sessions_dir(self) -> Path:
        return Path(self.config.sessions_dir)

    @property
    def cipher(self) -> Any:
        return getattr(self.config, "cipher", None)

    def firestore_client(self) -> firestore.Client:
        if self._client is None:
            self._client = self.config.firestore_client()
        return self._client

    def close(self) -> None:
        client: Any = self._client
        self._client = None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    # -- sessions ---------------------------------------------------------------------------

    def open_local(self, user_id: str) -> Session:
        from .sqlite import ScopedSQLiteSession

        kwargs: dict[str, Any] = {"bot_id": self.bot_id, "sessions_dir": self.sessions_dir}
        if self.cipher is not None:
            kwargs["cipher"] = self.cipher
        return ScopedSQLiteSession(user_id, **kwargs)

    def open_firestore(self, user_id: str) -> Session:
        from .firestore import FirestoreSession

        kwargs: dict[str, Any] = {"bot_id": self.bot_id, "client": self.firestore_client()}
        if self.cipher is not None:
            kwargs["cipher"] = self.cipher
        return FirestoreSession(user_id, **kwargs)

    def open(self, user_id: str, backend: str | None = None) -> Session:
        return self.open_firestore(user_id) if (backend or self.backend) == "firestore" else self.open_local(user_id)

    def exists(self, user_id: str, backend: str | None = None) -> bool:
        from ._ids import SessionKey

        key = SessionKey(self.bot_id, user_id)
        if (backend or self.backend) == "firestore":
            from .firestore import session_document

            return bool(session_document(self.firestore_client(), key).get(field_paths=[]).exists)
        from .sqlite import session_path

        return session_path(self.sessions_dir, key).exists()

    def local_user_ids(self) -> list[str]:
        from .sqlite import list_sqlite_sessions

        return [str(e["user_id"]) for e in list_sqlite_sessions(self.sessions_dir, self.bot_id)]

    def firestore_user_ids(self, page_size: int = 300) -> Iterator[str]:
        col = self.firestore_client().collection("bots").document(self.bot_id).collection("user_sessions")
        last = None
        while True:
            query = col.select([]).order_by("__name__").limit(page_size)
            if last is not None:
                query = query.start_after(last)
            page = list(query.stream())
            for snap in page:
                yield snap.id
            if len(page) < page_size:
                return
            last = page[-1]

    def destination(self, backend: str | None = None) -> migrate.Destination:
        if (backend or self.backend) == "firestore":
            kwargs: dict[str, Any] = {}
            if self.cipher is not None:
                kwargs["cipher"] = self.cipher
            return migrate.FirestoreDestination(self.firestore_client(), self.bot_id, **kwargs)
        return migrate.SessionDestination(self.open_local)

    def manager(self) -> Any:
        from .manager import create_user_session_manager_from_config

        return create_user_session_manager_from_config()


def _apply_overrides(args: argparse.Namespace) -> None:
    """``--backend``, ``--bot-id`` and ``--sessions-dir`` become the factory's variables."""
    backend = getattr(args, "backend", None)
    if backend is not None:
        os.environ["USE_LOCAL_STORAGE"] = "true" if backend == "local" else "false"
    bot_id = getattr(args, "bot_id", None)
    if bot_id is not None:
        os.environ["BOT_ID"] = bot_id
    sessions_dir = getattr(args, "sessions_dir", None)
    if sessions_dir is not None:
        os.environ["SESSIONS_DIR"] = str(sessions_dir)


# -- helpers -------------------------------------------------------------------------------


def _fail_usage(message: str) -> NoReturn:
    raise UsageError(message)


def _run_async(make: Callable[[Any], Any], env: Env) -> Any:
    async def runner() -> Any:
        manager = env.manager()
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
    return str(value)


def _kv(data: dict[str, Any], indent: str = "") -> str:
    lines = []
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"{indent}{k}:")
            lines.append(_kv(v, indent + "  "))
        else:
            lines.append(f"{indent}{k}: {_cell(v)}")
    return "\n".join(lines)


def _bulk_text(report: migrate.BulkReport, verb: str) -> str:
    counts = report.counts()
    lines = [
        f"{verb}: {len(report.items)} session(s) in {report.elapsed:.1f}s "
        + (", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "nothing to do")
    ]
    if report.commits:
        lines.append(f"firestore: {report.writes} document writes in {report.commits} commits, {report.reads} reads")
    for item in report.items:
        if item.status in (migrate.FAILED, migrate.SKIPPED):
            lines.append(f"  {item.status}: {item.user_id or '?'} ({item.source}): {item.reason}")
    if report.failed:
        lines.append("Fix the failures and run the same command again: what is already there stays unchanged.")
    return "\n".join(lines)


def _bulk(
    env: Env,
    out: Output,
    verb: str,
    run: Callable[[migrate.ProgressCallback, migrate.BulkReport], migrate.BulkReport],
) -> int:
    progress = Progress.for_stream(verb, out.stderr, disabled=env.args.json or env.args.no_progress)
    report = migrate.BulkReport()
    interrupted = False
    try:
        run(progress, report)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
    data = report.as_dict()
    data["interrupted"] = interrupted
    text = _bulk_text(report, verb)
    if interrupted:
        text += "\ninterrupted: the sessions listed went in; run the command again to do the rest."
    out.emit(data, text)
    return EXIT_PARTIAL if (interrupted or report.failed) else EXIT_OK


# -- commands ------------------------------------------------------------------------------


def cmd_info(env: Env, out: Output) -> int:
    from .config import get_deployment_info

    info = dict(get_deployment_info(env.config))
    health = _run_async(lambda m: m.health_check(), env)
    data = {"deployment": info, "health": health}
    out.emit(data, lambda: _kv(data))
    status = str(health.get("status", "")) if isinstance(health, dict) else ""
    return EXIT_OK if status == "healthy" else EXIT_PARTIAL


def cmd_list(env: Env, out: Output) -> int:
    sessions = _run_async(lambda m: m.list_user_sessions(), env)
    rows = [s if isinstance(s, dict) else {"user_id": s} for s in sessions]
    columns = ["user_id", *sorted({k for r in rows for k in r if k != "user_id"})]
    out.emit(rows, lambda: _table(rows, columns))
    return EXIT_OK


def cmd_stats(env: Env, out: Output) -> int:
    stats = _run_async(lambda m: m.get_session_stats(), env)
    out.emit(stats, lambda: _kv(dict(stats)))
    return EXIT_OK


def _describe_session(env: Env, user_id: str, backend: str) -> dict[str, Any]:
    if not env.exists(user_id, backend):
        raise SessionError(f"no {backend} session for user {user_id!r} of bot {env.bot_id!r}")
    session = env.open(user_id, backend)
    try:
        snap = migrate.read_session(session)
    finally:
        session.close()
    common = snap.update_states.get(0)
    return {
        "user_id": user_id,
        "bot_id": env.bot_id,
        "backend": backend,
        "logged_in": snap.auth_key is not None,
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
    }


def cmd_show(env: Env, out: Output) -> int:
    data = _describe_session(env, env.args.user, env.args.from_backend or env.backend)
    out.emit(data, lambda: _kv(data))
    return EXIT_OK


def _read_secret_string(args: argparse.Namespace) -> str:
    if args.string_file:
        return Path(args.string_file).read_text(encoding="ascii").strip()
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass("StringSession (input hidden): ").strip()
    return sys.stdin.read().strip()


def cmd_import(env: Env, out: Output) -> int:
    a = env.args
    kinds = sum(bool(x) for x in (a.paths, a.string, a.legacy))
    if kinds != 1:
        _fail_usage("give .session files or directories, or --string, or --legacy (exactly one of them)")
    if a.legacy:
        user_ids = [a.user] if a.user else None

        def run_legacy(progress: migrate.ProgressCallback, report: migrate.BulkReport) -> migrate.BulkReport:
            kwargs: dict[str, Any] = {}
            if env.cipher is not None:
                kwargs["destination"] = env.destination("firestore")
            return migrate.import_legacy_documents(
                env.firestore_client(),
                env.bot_id,
                user_ids=user_ids,
                overwrite=a.overwrite,
                keep_backup=not a.no_legacy_backup,
                progress=progress,
                report=report,
                **kwargs,
            )

        return _bulk(env, out, "import", run_legacy)
    if a.string:
        if not a.user:
            _fail_usage("--string needs --user USER_ID: a string session does not say whose it is")
        string = _read_secret_string(a)

        def run_string(progress: migrate.ProgressCallback, report: migrate.BulkReport) -> migrate.BulkReport:
            return migrate.import_string_session(
                string, a.user, env.destination(), overwrite=a.overwrite, report=report
            )

        return _bulk(env, out, "import", run_string)
    paths = [Path(p) for p in a.paths]
    for p in paths:
        if not p.exists():
            _fail_usage(f"{p} does not exist")
    files = migrate.session_files(paths)
    if a.user and len(files) != 1:
        _fail_usage("--user can only be used with a single .session file")

    def run_files(progress: migrate.ProgressCallback, report: migrate.BulkReport) -> migrate.BulkReport:
        return migrate.import_session_files(
            files, env.destination(), user_id=a.user, overwrite=a.overwrite, progress=progress, report=report
        )

    return _bulk(env, out, "import", run_files)


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
    fmt = a.format or ("session" if a.output and str(a.output).endswith(".session") else "string")
    if not a.include_secrets:
        _fail_usage(
            "an export contains the auth key, a full login to the account; "
            "add --include-secrets to confirm that you want it written out"
        )
    backend = a.from_backend or env.backend
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
        if not a.output or a.output == "-":
            _fail_usage("--format session writes a file: give --output PATH")
        path, report = migrate.export_session_file(snap, a.output, overwrite=a.overwrite)
        data = {"user_id": a.user, "path": str(path), "format": "session", **report.as_dict()}
        out.emit(data, f"{report.status}: {path} (mode 0600, auth key {report.fingerprint}) {report.reason}")
        return EXIT_OK if report.status != migrate.SKIPPED else EXIT_PARTIAL
    string = migrate.export_string_session(snap)
    if a.output and a.output != "-":
        path = Path(a.output)
        _write_private(path, string, force=a.force)
        data = {"user_id": a.user, "path": str(path), "format": "string", "fingerprint": snap.fingerprint}
        out.emit(data, f"wrote {path} (mode 0600, auth key {snap.fingerprint})")
        return EXIT_OK
    if out.stdout.isatty() and not a.yes_print_secret:
        _fail_usage(
            "refusing to print a login secret on a terminal: write it to a file with --output PATH, "
            "pipe it to another program, or add --yes-print-secret"
        )
    if a.json:
        out.emit({"user_id": a.user, "format": "string", "string_session": string}, "")
    else:
        out.stdout.write(string + "\n")
        out.stdout.flush()
    return EXIT_OK


def _user_sources(
    user_ids: Sequence[str], open_session: Callable[[str], Session], where: str
) -> Iterator[tuple[str, str | None, Callable[[], migrate.SessionSnapshot]]]:
    def reader(uid: str) -> migrate.SessionSnapshot:
        session = open_session(uid)
        try:
            return migrate.read_session(session)
        finally:
            session.close()

    for uid in user_ids:
        yield f"{where}:{uid}", uid, functools.partial(reader, uid)


def cmd_backup(env: Env, out: Output) -> int:
    a = env.args
    user_ids = a.user or env.local_user_ids()
    sources = _user_sources(user_ids, env.open_local, "local")

    def run(progress: migrate.ProgressCallback, report: migrate.BulkReport) -> migrate.BulkReport:
        return migrate.import_snapshots(
            sources,
            env.destination("firestore"),
            total=len(user_ids),
            overwrite=a.overwrite,
            progress=progress,
            report=report,
        )

    return _bulk(env, out, "backup", run)


def cmd_restore(env: Env, out: Output) -> int:
    a = env.args
    user_ids = a.user or list(env.firestore_user_ids())
    sources = _user_sources(user_ids, env.open_firestore, "firestore")

    def run(progress: migrate.ProgressCallback, report: migrate.BulkReport) -> migrate.BulkReport:
        return migrate.import_snapshots(
            sources,
            env.destination("local"),
            total=len(user_ids),
            overwrite=a.overwrite,
            progress=progress,
            report=report,
        )

    return _bulk(env, out, "restore", run)


def cmd_cleanup(env: Env, out: Output) -> int:
    a = env.args
    if a.days < 0:
        _fail_usage("--days must be zero or more")
    removed = _run_async(lambda m: m.cleanup_inactive_sessions(days=a.days, dry_run=a.dry_run), env)
    items = list(removed) if not isinstance(removed, dict) else removed
    data = {"dry_run": a.dry_run, "days": a.days, "removed": items}
    verb = "would remove" if a.dry_run else "removed"

    def text() -> str:
        ids = [r.get("user_id", r) if isinstance(r, dict) else r for r in items]
        return f"{verb} {len(ids)} session(s) inactive for {a.days}+ days" + "".join(f"\n  {i}" for i in ids)

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
    from ._ids import validate_id

    user = validate_id("user_id", a.user)
    if not a.yes and not _confirm(
        out, f"Delete every stored record of user {user} of bot {env.bot_id}? Type the user id to confirm: ", user
    ):
        _fail_usage("not confirmed: pass --yes to delete without asking")
    result = _run_async(lambda m: m.delete_user_session(user, log_out=a.log_out), env)
    data = {"user_id": user, "deleted": bool(result)}
    out.emit(data, f"deleted the session of {user}" if result else f"no session of {user} to delete")
    return EXIT_OK


def cmd_rotate_key(env: Env, out: Output) -> int:
    if env.cipher is None:
        raise ConfigError("SESSION_ENCRYPTION_KEY", "is not set: there is no key to re-seal with")
    from .config import rotate_sessions

    resealed = rotate_sessions(env.config, user_id=env.args.user)
    data = {"resealed": resealed, "key_id": env.cipher.key_id}
    out.emit(data, lambda: _kv(data))
    return EXIT_OK


def cmd_keygen(env: Env, out: Output) -> int:
    from .crypto import generate_key

    key = generate_key()
    out.emit({"key": key, "variable": "SESSION_ENCRYPTION_KEY"}, key)
    if not env.args.json:
        out.note(
            "Store it as SESSION_ENCRYPTION_KEY (a secret env var on Render) and keep a copy: "
            "without it, sealed sessions cannot be opened."
        )
    return EXIT_OK


# -- doctor -----------------------------------------------------------------------------------


class Check:
    def __init__(self, name: str, status: str, detail: str, fix: str = "") -> None:
        self.name = name
        self.status = status  # ok, warn, fail
        self.detail = detail
        self.fix = fix

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def _doctor_checks(env: Env) -> Iterator[Check]:
    try:
        config = env.config
    except ConfigError as exc:
        yield Check("config", "fail", str(exc), f"set {exc.variable} (see the README's environment table)")
        return
    yield Check("config", "ok", f"backend={env.backend} bot_id={env.bot_id}")
    cipher_check = _check_encryption(env)
    yield cipher_check
    if env.backend == "firestore" or os.environ.get("FIRESTORE_EMULATOR_HOST"):
        yield from _check_firestore(env)
    if env.backend == "sqlite":
        yield from _check_local(env)
    del config


def _check_encryption(env: Env) -> Check:
    if env.cipher is None:
        return Check(
            "encryption",
            "warn",
            "SESSION_ENCRYPTION_KEY is not set: auth keys are stored in the clear",
            f"run `{PROG} keygen` and set SESSION_ENCRYPTION_KEY, then `{PROG} rotate-key`",
        )
    return Check("encryption", "ok", "auth keys are sealed (AES-256-GCM)")


def _check_firestore(env: Env) -> Iterator[Check]:
    host = os.environ.get("FIRESTORE_EMULATOR_HOST")
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
        yield Check("emulator", "ok" if ok else "warn", f"FIRESTORE_EMULATOR_HOST={host} answers")
    else:
        try:
            import google.auth

            _, project = google.auth.default()
            yield Check("credentials", "ok", f"application default credentials found (project {project or '-'})")
        except Exception as exc:  # noqa: BLE001 - reported as a finding
            if not (os.environ.get("FIREBASE_CREDENTIALS") or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")):
                yield Check(
                    "credentials",
                    "fail",
                    f"no Google credentials ({type(exc).__name__})",
                    "set FIREBASE_CREDENTIALS (service-account JSON) or GOOGLE_APPLICATION_CREDENTIALS, "
                    "or FIRESTORE_EMULATOR_HOST for the emulator",
                )
                return
            yield Check("credentials", "ok", "service-account credentials configured")
    try:
        client = env.firestore_client()
        start = time.monotonic()
        col = client.collection("bots").document(env.bot_id).collection("user_sessions")
        docs = list(col.select([]).limit(1).get(timeout=10))
        ms = (time.monotonic() - start) * 1000
    except Exception as exc:  # noqa: BLE001 - reported as a finding
        name = type(exc).__name__
        fix = "grant the service account the Cloud Datastore User role (roles/datastore.user)"
        if name not in ("PermissionDenied", "Forbidden"):
            fix = "check the project id, the network, and that Firestore (native mode) is enabled in the project"
        yield Check("firestore", "fail", f"cannot read bots/{env.bot_id}/user_sessions ({name}: {exc})", fix)
        return
    yield Check("firestore", "ok", f"read bots/{env.bot_id}/user_sessions in {ms:.0f} ms ({len(docs)} doc sampled)")
    yield from _check_leases_and_legacy(env, client)


def _check_leases_and_legacy(env: Env, client: firestore.Client) -> Iterator[Check]:
    from google.cloud.firestore_v1.base_query import FieldFilter

    col = client.collection("bots").document(env.bot_id).collection("user_sessions")
    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        held = list(col.where(filter=FieldFilter("lease.expires_at", ">", now)).limit(50).get(timeout=10))
        legacy = list(col.where(filter=FieldFilter(migrate.LEGACY_FIELD, ">", "")).limit(1).get(timeout=10))
    except Exception as exc:  # noqa: BLE001 - reported as a finding
        yield Check("leases", "warn", f"cannot query leases ({type(exc).__name__})")
        return
    if held:
        holders = sorted({str((s.to_dict() or {}).get("lease", {}).get("holder")) for s in held})
        yield Check(
            "leases",
            "ok",
            f"{len(held)} session(s) currently held by running instances: {', '.join(holders)}",
            "normal while the bot runs; a lease of a crashed instance expires by itself",
        )
    else:
        yield Check("leases", "ok", "no session is held by a running instance")
    if legacy:
        yield Check(
            "legacy",
            "warn",
            "documents in the original base64 session_data layout exist; this library cannot open them yet",
            f"run `{PROG} import --legacy` (it keeps a backup in legacy_session_data)",
        )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _check_local(env: Env) -> Iterator[Check]:
    base = env.sessions_dir
    bot_dir = base / env.bot_id
    if not base.exists():
        yield Check("sessions_dir", "ok", f"{base} does not exist yet; it is created (0700) on first use")
        return
    if not os.access(base, os.W_OK | os.X_OK):
        yield Check("sessions_dir", "fail", f"{base} is not writable by this user", f"chown or chmod u+rwx {base}")
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
    locked = [f.name for f in files if _is_locked(f)]
    if locked:
        yield Check(
            "locks",
            "ok",
            f"{len(locked)} of {len(files)} session file(s) are open in another process: {', '.join(locked[:10])}",
            "normal while the bot runs; stop it before restore --overwrite or delete",
        )
    else:
        yield Check("locks", "ok", f"{len(files)} session file(s), none open in another process")


def _is_locked(path: Path) -> bool:
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

    def text() -> str:
        lines = []
        for c in checks:
            lines.append(f"[{marks[c.status]}] {c.name}: {c.detail}")
            if c.fix and c.status != "ok":
                lines.append(f"       fix: {c.fix}")
        failed = sum(c.status == "fail" for c in checks)
        lines.append("all checks passed" if not failed else f"{failed} check(s) failed")
        return "\n".join(lines)

    out.emit({"checks": [c.as_dict() for c in checks]}, text)
    if any(c.name == "config" and c.status == "fail" for c in checks):
        return EXIT_USAGE
    return EXIT_PARTIAL if any(c.status == "fail" for c in checks) else EXIT_OK


# -- the parser ---------------------------------------------------------------------------------


def _common(suppress: bool) -> argparse.ArgumentParser:
    """Options accepted before and after the command name."""
    default = argparse.SUPPRESS if suppress else None
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("configuration (overrides the environment)")
    g.add_argument("--backend", choices=["local", "firestore"], default=default, help="sets USE_LOCAL_STORAGE")
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
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Callable[[Env, Output], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, parents=[common])
        p.set_defaults(func=func)
        return p

    add("info", cmd_info, "deployment info, backend and health")
    add("list", cmd_list, "list the stored sessions of the bot")
    add("stats", cmd_stats, "session statistics")
    p = add("show", cmd_show, "one session's metadata (the auth key only as a fingerprint)")
    p.add_argument("user", metavar="USER")
    p.add_argument("--from", dest="from_backend", choices=["local", "firestore"], help="backend to read")

    p = add("import", cmd_import, "import .session files, a directory, a StringSession, or the original layout")
    p.add_argument("paths", nargs="*", metavar="PATH", help=".session files or directories of them")
    p.add_argument("--user", help="user id for a single file or a string (default: from user_<id>.session)")
    p.add_argument("--string", action="store_true", help="import a StringSession read from stdin (or --string-file)")
    p.add_argument("--string-file", metavar="FILE", help="read the StringSession from FILE")
    p.add_argument(
        "--legacy", action="store_true", help="convert bots/{bot_id}/user_sessions/* base64 session_data in place"
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
    p.add_argument("--from", dest="from_backend", choices=["local", "firestore"], help="backend to read")

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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    _setup_logging(args.verbose)
    out = Output(args.json)
    _apply_overrides(args)
    env = Env(args)
    try:
        return int(args.func(env, out))
    except UsageError as exc:
        out.note(f"{PROG} {args.command}: error: {exc}")
        return EXIT_USAGE
    except (ConfigError, InvalidSessionIdError) as exc:
        out.note(f"{PROG} {args.command}: configuration error: {exc}")
        return EXIT_USAGE
    except SessionInUseError as exc:
        out.note(f"{PROG} {args.command}: {exc}")
        return EXIT_PARTIAL
    except (SessionError, OSError) as exc:
        out.note(f"{PROG} {args.command}: error: {exc}")
        return EXIT_PARTIAL
    except KeyboardInterrupt:
        out.note(f"{PROG} {args.command}: interrupted")
        return EXIT_PARTIAL
    finally:
        env.close()
