"""Administration commands: ``cleanup``, ``delete``, ``rotate-key`` and ``keygen``."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from telethon_firestore_session import migrate
from telethon_firestore_session.errors import ConfigError, SessionError

from .common import EXIT_OK, PROG, AddCommand, Env, Output, bulk, fail_usage, run_async


def add_commands(add: AddCommand) -> None:
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


def cmd_cleanup(env: Env, out: Output) -> int:
    a = env.args
    if a.days < 0:
        fail_usage("--days must be zero or more")
    removed: list[str] = run_async(lambda m: m.cleanup_inactive_sessions(days=a.days, dry_run=a.dry_run), env)
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
        fail_usage("not confirmed: pass --yes to delete without asking (standard input is not a terminal)")
    existed = bool(run_async(lambda m: m.delete_user_session(user, log_out=a.log_out), env))
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
    if a.user:
        env.require(a.user)
    user_ids = [a.user] if a.user else env.user_ids(backend)

    def run(
        *, progress: migrate.ProgressCallback, report: migrate.BulkReport, stop: Callable[[], bool]
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

    return bulk(env, out, "rotate-key", run, total=len(user_ids), extra={"key_id": cipher.key_id})


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
