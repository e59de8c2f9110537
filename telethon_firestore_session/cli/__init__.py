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

The commands live one group to a module: :mod:`.inspection` (``info``, ``list``, ``stats``,
``show``), :mod:`.transfer` (``import``, ``export``, ``backup``, ``restore``),
:mod:`.administration` (``cleanup``, ``delete``, ``rotate-key``, ``keygen``) and :mod:`.doctor`
(``doctor``, ``rules``);
:mod:`.common` holds what they share.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from google.api_core.exceptions import GoogleAPIError

from telethon_firestore_session.errors import ConfigError, InvalidSessionIdError, SessionDecryptionError, SessionError

from . import administration, doctor, inspection, transfer
from .common import (
    BACKEND_CHOICES,
    EXIT_PARTIAL,
    EXIT_USAGE,
    PROG,
    Env,
    Output,
    UsageError,
    environment,
    log,
)

__all__ = ["build_parser", "main"]

#: The command groups, in the order ``--help`` lists their commands.
GROUPS = (inspection, transfer, administration, doctor)


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

    for group in GROUPS:
        group.add_commands(add)
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
    env = Env(args, environment(args))
    command = args.command
    try:
        return int(args.func(env, out))
    except UsageError as exc:
        return out.error(command, "error", exc, EXIT_USAGE)
    except (ConfigError, InvalidSessionIdError, SessionDecryptionError) as exc:
        # SessionDecryptionError: a wrong or missing SESSION_ENCRYPTION_KEY (nothing was written).
        return out.error(command, "configuration", exc, EXIT_USAGE)
    except (SessionError, OSError) as exc:
        return out.error(command, "error", exc, EXIT_PARTIAL)
    except KeyboardInterrupt as exc:
        out.note(f"{PROG} {command}: interrupted")
        if out.as_json:
            out.emit({"ok": False, "exit_code": EXIT_PARTIAL, "error": {"type": type(exc).__name__}}, "")
        return EXIT_PARTIAL
    except GoogleAPIError as exc:  # a failed Firestore call
        log.debug("Firestore call failed", exc_info=True)
        return out.error(command, "firestore", exc, EXIT_PARTIAL)
    finally:
        env.close()
