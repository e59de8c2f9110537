"""``doctor``: checks the configuration, Firestore or the sessions directory, and the sealing of the
stored auth keys, and says what to fix. It reads only: a running bot is never disturbed."""

from __future__ import annotations

import dataclasses
import datetime
import os
import stat
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from telethon_firestore_session import migrate
from telethon_firestore_session.errors import ConfigError

from .common import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, FIRESTORE, PROG, SQLITE, AddCommand, Env, Output


def add_commands(add: AddCommand) -> None:
    add("doctor", cmd_doctor, "check the configuration and say what to fix")


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
        start = time.monotonic()
        col = env.sessions_collection()
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
    yield from _check_leases_and_legacy(env)
    try:
        values = _firestore_auth_keys(env)
    except Exception as exc:  # noqa: BLE001 - reported as a finding
        yield Check("sealing", "warn", f"cannot read the stored auth keys ({type(exc).__name__})")
        return
    yield from _check_sealing(env, values)


def _check_leases_and_legacy(env: Env) -> Iterator[Check]:
    from google.cloud.firestore_v1.base_query import FieldFilter

    col = env.sessions_collection()
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


def _firestore_auth_keys(env: Env) -> list[tuple[str, bytes]]:
    col = env.sessions_collection()
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
    yield _check_integrity(files)
    yield from _check_sealing(env, _sqlite_auth_keys(files))


def _check_integrity(files: Sequence[Path]) -> Check:
    """SQLite's quick_check on every session file (read-only, without the session's lock)."""
    from telethon_firestore_session.errors import SessionStoreError
    from telethon_firestore_session.sqlite import check_file

    damaged = []
    for f in files:
        try:
            problem = check_file(f)
        except SessionStoreError as exc:
            problem = f"cannot be checked now: {exc}"
        if problem is not None:
            damaged.append(f"{f.name}: {problem}")
    if damaged:
        return Check(
            "integrity",
            "fail",
            f"{len(damaged)} of {len(files)} session file(s) fail SQLite's quick_check: " + "; ".join(damaged[:5]),
            "stop the bot and restore them from a backup (or delete them: those users log in again)",
        )
    return Check("integrity", "ok", f"{len(files)} session file(s) pass SQLite's quick_check")


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
