"""``doctor``: checks the configuration, Firestore or the sessions directory, and the sealing of the
stored auth keys, and says what to fix. It reads only: a running bot is never disturbed. ``rules``
prints the Firestore security rules that keep client SDKs away from the sessions."""

from __future__ import annotations

import dataclasses
import datetime
import os
import stat
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from telethon_firestore_session.errors import ConfigError, SessionCorruptError, SessionDecryptionError, SessionError
from telethon_firestore_session.firestore import security_rules
from telethon_firestore_session.firestore.importer import LEGACY_FIELD
from telethon_firestore_session.firestore.layout import sessions_collection, sessions_where
from telethon_firestore_session.ids import SessionKey
from telethon_firestore_session.sealing import KeyState, Sealer
from telethon_firestore_session.sqlite.files import locked_files, session_files
from telethon_firestore_session.sqlite.schema import read_auth_key

from .common import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, FIRESTORE, PROG, SQLITE, AddCommand, Env, Output


def add_commands(add: AddCommand) -> None:
    add("doctor", cmd_doctor, "check the configuration and say what to fix")
    add("rules", cmd_rules, "print the Firestore security rules that deny client SDKs access to the sessions")


def cmd_rules(env: Env, out: Output) -> int:
    text = security_rules()
    out.emit({"rules": text}, text)
    return EXIT_OK


@dataclasses.dataclass
class Check:
    name: str
    status: str  # ok, info (a reminder), warn, fail
    detail: str
    fix: str = ""


def _doctor_checks(env: Env) -> Iterator[Check]:
    try:
        config = env.config
    except ConfigError as exc:
        yield Check("config", "fail", str(exc), f"set {exc.variable} (see the documentation's configuration page)")
        return
    yield Check("config", "ok", f"backend={config.backend} bot_id={config.bot_id} ({config.backend_reason})")
    yield _check_encryption(env)
    if config.backend == FIRESTORE:
        yield from _check_firestore(env)
        yield Check(
            "rules",
            "info",
            "this library bypasses security rules; the project's rules must deny client SDKs (web, mobile, REST) "
            "any access to the sessions",
            f"deploy the rules that `{PROG} rules` prints (the documentation's security rules page says how)",
        )
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
        col = sessions_collection(env.firestore_client(), env.bot_id)
        docs = list(col.select([]).limit(1).get(timeout=10))
        ms = (time.monotonic() - start) * 1000
    except Exception as exc:  # noqa: BLE001 - reported as a finding
        name = type(exc).__name__
        fix = "check the project id, the network, and that Firestore (native mode) is enabled in the project"
        if name in ("PermissionDenied", "Forbidden", "Unauthenticated"):
            fix = "grant the service account the Cloud Datastore User role (roles/datastore.user) in the project"
        yield Check("firestore", "fail", f"cannot read {sessions_where(env.bot_id)} ({name})", fix)
        return
    yield Check("firestore", "ok", f"read {sessions_where(env.bot_id)} in {ms:.0f} ms ({len(docs)} document sampled)")
    yield from _check_leases_and_legacy(env)
    try:
        values = _firestore_auth_keys(env)
    except Exception as exc:  # noqa: BLE001 - reported as a finding
        yield Check("sealing", "warn", f"cannot read the stored auth keys ({type(exc).__name__})")
        return
    yield from _check_sealing(env, values)


def _check_leases_and_legacy(env: Env) -> Iterator[Check]:
    from google.cloud.firestore_v1.base_query import FieldFilter

    col = sessions_collection(env.firestore_client(), env.bot_id)
    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        held = list(
            col.where(filter=FieldFilter("lease.expires_at", ">", now)).select(["lease"]).limit(50).get(timeout=10)
        )
        legacy = list(col.where(filter=FieldFilter(LEGACY_FIELD, ">", "")).select([]).limit(1).get(timeout=10))
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


def _firestore_auth_keys(env: Env) -> list[tuple[str, object]]:
    col = sessions_collection(env.firestore_client(), env.bot_id)
    values = []
    for snap in col.select(["auth_key"]).limit(_SEAL_SAMPLE).get(timeout=10):
        value = (snap.to_dict() or {}).get("auth_key")
        if value:
            values.append((snap.id, value))
    return values


def _sqlite_auth_keys(files: dict[str, Path]) -> list[tuple[str, object]]:
    """Stored ``auth_key`` values, read without the session's lock (a running bot is not disturbed)."""
    values: list[tuple[str, object]] = []
    for uid, path in list(files.items())[:_SEAL_SAMPLE]:
        try:
            value = read_auth_key(path)
        except SessionError:
            continue
        if value:
            values.append((uid, value))
    return values


def _check_sealing(env: Env, values: Sequence[tuple[str, object]]) -> Iterator[Check]:
    """Do the stored auth keys open with the configured keys, by the one rule of ``sealing``? Never prints a value."""
    if not values:
        return
    cipher = env.cipher
    found: dict[str, list[str]] = {}
    for uid, value in values:
        try:
            _, state = Sealer(SessionKey(env.bot_id, uid), "doctor", cipher).open_auth_key(value)
            group = "old" if state is KeyState.OLD_KEY else "plain" if state is KeyState.PLAINTEXT else "current"
        except SessionDecryptionError:  # sealed with a key that is not configured (or damaged, with a cipher)
            group = "unknown"
        except SessionCorruptError:  # neither a plaintext key nor a sealed one, and no cipher
            group = "damaged"
        found.setdefault(group, []).append(uid)
    sampled = f"of {len(values)} sampled session(s) with an auth key"
    if damaged := found.get("damaged"):
        yield Check(
            "sealing",
            "fail",
            f"{len(damaged)} {sampled} hold neither a plaintext nor a sealed auth key (e.g. user {damaged[0]})",
            "restore those sessions from a backup, or delete them and log in again",
        )
        return
    if unknown := found.get("unknown"):
        by = "with a key that is not configured" if cipher else "while SESSION_ENCRYPTION_KEY is not set"
        fix = "set SESSION_ENCRYPTION_KEY to the key that sealed them"
        if cipher is not None:
            fix += f", or add that key to SESSION_ENCRYPTION_OLD_KEYS and run `{PROG} rotate-key`"
        yield Check("sealing", "fail", f"{len(unknown)} {sampled} are sealed {by} (e.g. user {unknown[0]})", fix)
        return
    if cipher is None:
        return  # all plaintext: the encryption check already says so
    plain, old = found.get("plain", []), found.get("old", [])
    if plain or old:
        yield Check(
            "sealing",
            "warn",
            f"{len(plain)} {sampled} hold a plaintext auth key, {len(old)} one sealed with an old key",
            f"run `{PROG} rotate-key` to seal them with the current key",
        )
    else:
        yield Check("sealing", "ok", f"{len(found.get('current', []))} {sampled} are sealed with the current key")


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
    files = session_files(bot_dir)
    loose = [f for f in files.values() if _mode(f) & 0o077]
    if loose:
        yield Check(
            "file_modes",
            "warn",
            f"{len(loose)} session file(s) readable by other users (e.g. {loose[0].name})",
            f"chmod 600 {bot_dir}/user_*.session",
        )
    locked = [f.name for f in locked_files(files.values())]
    if locked:
        yield Check(
            "locks",
            "ok",
            f"{len(locked)} of {len(files)} session file(s) are open in a running process: {', '.join(locked[:10])}",
            "normal while the bot runs; stop it before restore --overwrite or delete",
        )
    else:
        yield Check("locks", "ok", f"{len(files)} session file(s), none open in a running process")
    yield _check_integrity(list(files.values()))
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


def cmd_doctor(env: Env, out: Output) -> int:
    checks = list(_doctor_checks(env))
    marks = {"ok": "ok  ", "info": "info", "warn": "WARN", "fail": "FAIL"}
    failed = sum(c.status == "fail" for c in checks)

    def text() -> str:
        lines = []
        for c in checks:
            lines.append(f"[{marks[c.status]}] {c.name}: {c.detail}")
            if c.fix and c.status != "ok":
                lines.append(f"       fix: {c.fix}")
        lines.append("all checks passed" if not failed else f"{failed} check(s) failed")
        return "\n".join(lines)

    out.emit({"ok": not failed, "checks": [dataclasses.asdict(c) for c in checks]}, text)
    if any(c.name == "config" and c.status == "fail" for c in checks):
        return EXIT_USAGE
    return EXIT_PARTIAL if failed else EXIT_OK
