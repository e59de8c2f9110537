"""Transfer commands: ``import`` and ``export`` (.session files, StringSessions, the original
Firestore layout), ``backup`` (local files to Firestore) and ``restore`` (Firestore to local files)."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

from telethon_firestore_session import migrate
from telethon_firestore_session.errors import SessionError
from telethon_firestore_session.firestore.importer import import_legacy_documents

from .common import (
    BACKEND_CHOICES,
    EXIT_OK,
    EXIT_PARTIAL,
    FIRESTORE,
    FROM_HELP,
    SQLITE,
    AddCommand,
    Env,
    Output,
    backend_name,
    bulk,
    fail_usage,
)


def add_commands(add: AddCommand) -> None:
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
    p.add_argument("--from", dest="from_backend", choices=BACKEND_CHOICES, help=FROM_HELP)

    p = add("backup", cmd_backup, "copy local sessions to Firestore")
    p.add_argument("--user", action="append", help="only this user (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace Firestore sessions that hold another login")
    p = add("restore", cmd_restore, "copy Firestore sessions to local files")
    p.add_argument("--user", action="append", help="only this user (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace local sessions that hold another login")


def _read_secret_string(args: argparse.Namespace) -> str:
    if args.string_file:
        try:
            text = Path(args.string_file).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            fail_usage(f"cannot read --string-file {args.string_file}: {exc}")
    elif sys.stdin.isatty():
        import getpass

        text = getpass.getpass("StringSession (input hidden): ").strip()
    else:
        text = sys.stdin.read().strip()
    if not text:
        fail_usage("no StringSession string was given (on standard input, or with --string-file)")
    return text


def cmd_import(env: Env, out: Output) -> int:
    a = env.args
    string = a.string or a.string_file is not None
    kinds = sum(bool(x) for x in (a.paths, string, a.legacy))
    if kinds != 1:
        fail_usage("give .session files or directories, or --string/--string-file, or --legacy (exactly one)")
    if a.no_legacy_backup and not a.legacy:
        fail_usage("--no-legacy-backup only goes with --legacy")
    if a.legacy:
        user_ids = a.user if a.user else None
        run_legacy = functools.partial(
            import_legacy_documents,
            env.firestore_client(),
            env.bot_id,
            user_ids=user_ids,
            overwrite=a.overwrite,
            keep_backup=not a.no_legacy_backup,
            **env.config.session_options(),
        )
        return bulk(env, out, "import", run_legacy, total=len(user_ids) if user_ids else None)
    if a.user is not None and len(a.user) > 1:
        fail_usage("--user can be given once, except with --legacy")
    user = a.user[0] if a.user else None
    if string:
        if user is None:
            fail_usage("--string needs --user USER_ID: a string session does not say whose it is")
        text = _read_secret_string(a)
        source = ("string", user, functools.partial(migrate.read_string_session, text))
        run_string = functools.partial(
            migrate.import_snapshots, [source], env.destination(), total=1, overwrite=a.overwrite
        )
        return bulk(env, out, "import", run_string, total=1)
    paths = [Path(p) for p in a.paths]
    for p in paths:
        if not p.exists():
            fail_usage(f"{p} does not exist")
    files = migrate.session_files(paths)
    if not files:
        fail_usage("no .session files found in " + ", ".join(str(p) for p in paths))
    if user is not None and len(files) != 1:
        fail_usage("--user can only be used with a single .session file")
    run_files = functools.partial(
        migrate.import_session_files, files, env.destination(), user_id=user, overwrite=a.overwrite
    )
    return bulk(env, out, "import", run_files, total=len(files))


def _write_private(path: Path, data: str, *, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        fail_usage(f"{path} exists; pass --force to replace it")
    with os.fdopen(fd, "w", encoding="ascii") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data + "\n")


def cmd_export(env: Env, out: Output) -> int:
    a = env.args
    to_stdout = not a.output or a.output == "-"
    fmt = a.format or ("session" if not to_stdout and str(a.output).endswith(".session") else "string")
    if not a.include_secrets:
        fail_usage(
            "an export contains the auth key, a full login to the account; "
            "add --include-secrets to confirm that you want it written out"
        )
    if fmt == "session" and to_stdout:
        fail_usage("--format session writes a file: give --output PATH")
    if fmt == "string" and to_stdout and out.stdout.isatty() and not a.yes_print_secret:
        fail_usage(
            "refusing to print a login secret on a terminal: write it to a file with --output PATH, "
            "pipe it to another program, or add --yes-print-secret"
        )
    backend = backend_name(a.from_backend) or env.backend
    snap = env.read(a.user, backend)
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


def _copy_all(env: Env, out: Output, verb: str, source: str, target: str) -> int:
    """``backup``/``restore``: every session of the bot (or ``--user``) from ``source`` to ``target``.

    A user named with ``--user`` who has no session in ``source`` is reported as failed, instead
    of being opened, which would create an empty local file.
    """
    a = env.args
    user_ids = a.user or env.user_ids(source)
    check = bool(a.user)
    sources = ((f"{source}:{uid}", uid, functools.partial(env.read, uid, source, check=check)) for uid in user_ids)
    run = functools.partial(
        migrate.import_snapshots, sources, env.destination(target), total=len(user_ids), overwrite=a.overwrite
    )
    return bulk(env, out, verb, run, total=len(user_ids))


def cmd_backup(env: Env, out: Output) -> int:
    return _copy_all(env, out, "backup", SQLITE, FIRESTORE)


def cmd_restore(env: Env, out: Output) -> int:
    return _copy_all(env, out, "restore", FIRESTORE, SQLITE)
