"""The command line, run as a real subprocess (``python -m telethon_firestore_session``).

Each run gets a controlled environment (no CI, a private HOME, only the variables a
test sets). Sources are real: files written by Telethon's own ``SQLiteSession``,
strings from ``StringSession.save()``, and seed-format documents (base64
``session_data``) in the real Firestore emulator. Nothing is mocked.

Every subprocess costs about half a second, so each test groups the assertions of
one flow.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import datetime
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from telethon.crypto import AuthKey
from telethon.sessions import SQLiteSession, StringSession

from telethon_firestore_session import FirestoreSession
from telethon_firestore_session.crypto import SessionCipher, is_sealed
from telethon_firestore_session.firestore import security_rules
from telethon_firestore_session.migrate import (
    LEGACY_BACKUP_FIELD,
    LEGACY_FIELD,
    auth_key_fingerprint,
    read_session,
    read_session_file,
)
from telethon_firestore_session.sqlite import ScopedSQLiteSession
from tests.leaks import find_leaks
from tests.test_migrate import expected, key_for, populate, summary, telethon_file

pytestmark = pytest.mark.slow  # every test runs the command line as child processes

ROOT = Path(__file__).resolve().parent.parent
PROG = [sys.executable, "-m", "telethon_firestore_session"]
TIMEOUT = 60


@dataclasses.dataclass
class Result:
    rc: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclasses.dataclass
class Run:
    """One run for :meth:`Cli.many`, with its own environment changes and standard input."""

    args: list[str]
    env: dict[str, str | None] | None = None
    stdin: str | None = None


class Cli:
    """Runs the command with a controlled environment: local backend, one bot, no CI, no emulator."""

    def __init__(self, tmp_path: Path, bot_id: str) -> None:
        self.tmp_path = tmp_path
        self.sessions_dir = tmp_path / "sessions"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path / "home"),
            "PYTHONPATH": str(ROOT),
            "LANG": "C.UTF-8",
            "BOT_ID": bot_id,
            "SESSIONS_DIR": str(self.sessions_dir),
            "USE_LOCAL_STORAGE": "true",
        }
        (tmp_path / "home").mkdir(exist_ok=True)

    def with_emulator(self) -> Cli:
        self.env["FIRESTORE_EMULATOR_HOST"] = os.environ["FIRESTORE_EMULATOR_HOST"]
        self.env["GOOGLE_CLOUD_PROJECT"] = os.environ["GOOGLE_CLOUD_PROJECT"]
        return self

    def environment(self, env: dict[str, str | None] | None) -> dict[str, str]:
        merged = dict(self.env)
        for k, v in (env or {}).items():
            if v is None:
                merged.pop(k, None)
            else:
                merged[k] = v
        return merged

    def __call__(self, *args: str, env: dict[str, str | None] | None = None, stdin: str | None = None) -> Result:
        proc = subprocess.run(
            [*PROG, *args],
            env=self.environment(env),
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=self.tmp_path,
            check=False,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def many(self, *runs: Sequence[str] | Run, env: dict[str, str | None] | None = None) -> list[Result]:
        """Independent runs at once (each is a separate process); ``env`` applies to plain argument lists."""
        jobs = [r if isinstance(r, Run) else Run(list(r), env) for r in runs]
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            return list(pool.map(lambda job: self(*job.args, env=job.env, stdin=job.stdin), jobs))

    def on_pty(self, *args: str, stream: str, env: dict[str, str | None] | None = None) -> tuple[int, str, str]:
        """Run with ``stream`` ("stdout" or "stderr") on a pseudo-terminal; returns (rc, pty text, other stream)."""
        master, slave = os.openpty()
        chunks: list[bytes] = []

        def drain() -> None:
            while True:
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: the child closed its end
                    return
                if not data:
                    return
                chunks.append(data)

        kwargs: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        kwargs[stream] = slave
        try:
            proc = subprocess.Popen(
                [*PROG, *args],
                env=self.environment(env),
                stdin=subprocess.DEVNULL,
                cwd=self.tmp_path,
                text=True,
                **kwargs,
            )
        finally:
            os.close(slave)
        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        try:
            out, err = proc.communicate(timeout=TIMEOUT)
            reader.join(timeout=10)
        finally:
            os.close(master)
        other = err if stream == "stdout" else out
        return proc.returncode, b"".join(chunks).decode("utf-8", "replace"), other


@pytest.fixture
def cli(tmp_path: Path, bot_id: str) -> Cli:
    return Cli(tmp_path, bot_id)


def telethon_dir(directory: Path, seeds: Sequence[int], first_user: int = 100) -> Path:
    """``user_{first_user + i}.session`` written by Telethon's SQLiteSession with ``populate(seed)``."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds):
        telethon_file(directory / f"user_{first_user + i}", seed=seed)
    return directory


def local_summary(cli: Cli, bot_id: str, user_id: str, cipher: SessionCipher | None = None) -> tuple[Any, ...]:
    options: dict[str, Any] = {"cipher": cipher} if cipher is not None else {}
    s = ScopedSQLiteSession(user_id, bot_id=bot_id, sessions_dir=cli.sessions_dir, **options)
    try:
        return summary(read_session(s))
    finally:
        s.close()


def firestore_summary(client: Any, bot_id: str, user_id: str, cipher: SessionCipher | None = None) -> tuple[Any, ...]:
    s = FirestoreSession(user_id, bot_id=bot_id, client=client, cipher=cipher)
    try:
        return summary(read_session(s))
    finally:
        s.close()


def string_session(n: int) -> str:
    s = StringSession()
    s.set_dc(2, "149.154.167.51", 443)
    s.auth_key = AuthKey(key_for(n))
    return str(s.save())


def assert_no_secret(result: Result, secrets: dict[str, bytes], key_texts: dict[str, str]) -> None:
    """Names what leaked, never shows it (pytest would echo the output, and with it the secret)."""
    leaks = find_leaks(result.output, secrets, key_texts)
    if leaks:
        raise AssertionError(f"secret found: {', '.join(leaks)}")


# -- usage and configuration errors ------------------------------------------------------------


def test_usage_and_configuration_errors_exit_2(cli: Cli) -> None:
    no_bot = {"BOT_ID": None}
    missing, missing_json, doctor, nothing, no_flag, unknown, bad_id, bad_api, bad_backend = cli.many(
        Run(["list"], no_bot),
        Run(["--json", "stats"], no_bot),
        Run(["doctor"], no_bot),
        ["import"],
        ["export", "1"],
        ["frobnicate"],
        ["show", "../etc"],
        Run(["info"], {"API_ID": "abc"}),
        ["--backend", "sqlite-ish", "list"],
    )
    assert missing.rc == 2 and "BOT_ID" in missing.stderr and missing.stdout == ""
    assert missing_json.rc == 2
    assert missing_json.json() == {
        "ok": False,
        "exit_code": 2,
        "error": {
            "type": "ConfigError",
            "kind": "configuration",
            "variable": "BOT_ID",
            "message": missing_json.json()["error"]["message"],
        },
    }
    assert doctor.rc == 2 and "[FAIL] config: BOT_ID" in doctor.stdout and "fix: set BOT_ID" in doctor.stdout
    assert nothing.rc == 2 and "exactly one" in nothing.stderr
    # No secret leaves without --include-secrets; that is checked before anything is read.
    assert no_flag.rc == 2 and "--include-secrets" in no_flag.stderr and no_flag.stdout == ""
    assert unknown.rc == 2 and "invalid choice" in unknown.stderr
    assert bad_id.rc == 2 and "user_id '../etc'" in bad_id.stderr
    assert bad_api.rc == 2 and "API_ID" in bad_api.stderr
    assert bad_backend.rc == 2 and "--backend" in bad_backend.stderr
    assert not cli.sessions_dir.exists()  # none of them created anything


def test_rules_prints_the_firestore_security_rules(cli: Cli) -> None:
    text, as_json = cli.many(["rules"], ["rules", "--json"], env={"BOT_ID": None})  # needs no configuration
    assert text.rc == 0 and text.stderr == ""
    assert text.stdout == security_rules().rstrip("\n") + "\n"
    assert "allow read, write: if false" in text.stdout
    assert as_json.rc == 0 and as_json.json() == {"rules": security_rules()}


def test_the_docs_list_every_command() -> None:
    import argparse

    from telethon_firestore_session.cli import GROUPS

    commands: list[str] = []
    for group in GROUPS:
        group.add_commands(lambda name, func, help_: commands.append(name) or argparse.ArgumentParser())
    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([a-z-]+)", page, flags=re.MULTILINE))
    assert "rules" in commands and set(commands) <= listed, sorted(set(commands) - listed)


# -- local: import a directory, re-run, overwrite, export -----------------------------------------


def test_import_directory_partial_failure_rerun_and_export(cli: Cli, bot_id: str, tmp_path: Path) -> None:
    src = telethon_dir(tmp_path / "src", [0, 1, 2])
    (src / "user_999.session").write_bytes(b"this is not a database" * 20)

    first = cli("import", str(src), "--json")
    assert first.rc == 1
    report = first.json()
    assert report["counts"] == {"copied": 3, "failed": 1} and report["ok"] is False
    by_user = {i["user_id"]: i for i in report["items"]}
    assert by_user["999"]["status"] == "failed" and "not an SQLite database" in by_user["999"]["reason"]
    for n, uid in enumerate(["100", "101", "102"]):
        assert by_user[uid]["status"] == "copied"
        assert by_user[uid]["fingerprint"] == auth_key_fingerprint(key_for(n))
        assert (by_user[uid]["entities"], by_user[uid]["update_states"], by_user[uid]["files"]) == (5, 2, 2)
        assert local_summary(cli, bot_id, uid) == expected(n)  # DC, key, takeout, states, entities, files

    # Fix the broken file; meanwhile 101's source became a different login. The re-run
    # adds 999, leaves what is there unchanged, and does not clobber 101 without --overwrite.
    (src / "user_999.session").unlink()
    telethon_file(src / "user_999", seed=9)
    (src / "user_101.session").unlink()
    telethon_file(src / "user_101", seed=7)
    again = cli("import", str(src))
    assert again.rc == 1
    assert "4 session(s)" in again.stdout and "1 copied, 1 skipped, 2 unchanged" in again.stdout
    assert "skipped: 101" in again.stdout and "--overwrite" in again.stdout
    assert local_summary(cli, bot_id, "101") == expected(1)
    assert local_summary(cli, bot_id, "999") == expected(9)

    replaced = cli("import", str(src / "user_101.session"), "--overwrite", "--json")
    assert replaced.rc == 0 and replaced.json()["counts"] == {"replaced": 1}
    assert local_summary(cli, bot_id, "101") == expected(7)
    settled = cli("import", str(src), "--json")
    assert settled.rc == 0 and settled.json()["counts"] == {"unchanged": 4}

    listing = cli("list", "--json")
    assert listing.rc == 0
    assert [s["user_id"] for s in listing.json()["sessions"]] == ["100", "101", "102", "999"]  # nothing twice
    assert listing.json()["backend"] == "sqlite"

    # Export to a .session file: mode 0600, opened by plain Telethon, every field there.
    out = tmp_path / "out"
    out.mkdir()
    exported = cli("export", "100", "--include-secrets", "-o", str(out / "alice.session"), "--json")
    assert exported.rc == 0, exported.stderr
    assert exported.json()["status"] == "copied" and exported.json()["backend"] == "sqlite"
    path = out / "alice.session"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    plain = SQLiteSession(str(path))
    try:
        assert plain.auth_key.key == key_for(0) and plain.dc_id == 2 and plain.takeout_id == 4242
    finally:
        plain.close()
    assert summary(read_session_file(path)) == expected(0)
    # Into a file that holds another login: left alone, exit 1.
    clash = cli("export", "101", "--include-secrets", "-o", str(path))
    assert clash.rc == 1 and "skipped" in clash.stdout and summary(read_session_file(path)) == expected(0)


def test_string_sessions_from_stdin_and_file_and_back(cli: Cli, bot_id: str, tmp_path: Path) -> None:
    text = string_session(3)
    (tmp_path / "s.txt").write_text(text + "\n")
    from_stdin, from_file, broken, whose = cli.many(
        Run(["import", "--string", "--user", "42", "--json"], stdin=text),
        ["import", "--string-file", str(tmp_path / "s.txt"), "--user", "43"],
        Run(["import", "--string", "--user", "44", "--json"], stdin="1not-a-session"),
        Run(["import", "--string"], stdin=text),
    )
    assert from_stdin.rc == 0, from_stdin.stderr
    assert from_stdin.json()["counts"] == {"copied": 1}
    assert from_file.rc == 0 and "copied: 43 (string)" in from_file.stdout
    assert broken.rc == 1 and broken.json()["items"][0]["status"] == "failed"
    assert whose.rc == 2 and "--user" in whose.stderr  # a string does not say whose session it is
    rerun = cli("import", "--string", "--user", "42", stdin=text)
    assert rerun.rc == 0 and "1 unchanged" in rerun.stdout

    s = ScopedSQLiteSession("42", bot_id=bot_id, sessions_dir=cli.sessions_dir)
    try:
        assert (s.dc_id, s.server_address, s.port, s.auth_key.key) == (2, "149.154.167.51", 443, key_for(3))
    finally:
        s.close()

    # Out again as a string: to a pipe, to a private file, never to a terminal unasked.
    piped, as_json, nobody = cli.many(
        ["export", "42", "--include-secrets"],
        ["export", "43", "--include-secrets", "--json"],
        ["export", "nobody", "--include-secrets"],
    )
    assert piped.rc == 0 and piped.stdout.strip() == text
    assert as_json.json()["string_session"] == text
    assert nobody.rc == 1 and "no sqlite session" in nobody.stderr and nobody.stdout == ""
    to_file = cli("export", "42", "--include-secrets", "-o", str(tmp_path / "back.txt"))
    assert to_file.rc == 0 and text not in to_file.output
    assert (tmp_path / "back.txt").read_text().strip() == text
    assert stat.S_IMODE((tmp_path / "back.txt").stat().st_mode) == 0o600
    assert cli("export", "42", "--include-secrets", "-o", str(tmp_path / "back.txt")).rc == 2  # exists: --force
    rc, shown, err = cli.on_pty("export", "42", "--include-secrets", stream="stdout")
    assert rc == 2 and text not in shown and "terminal" in err
    rc, shown, _ = cli.on_pty("export", "42", "--include-secrets", "--yes-print-secret", stream="stdout")
    assert rc == 0 and text in shown


# -- progress ------------------------------------------------------------------------------------


def test_progress_only_on_a_terminal_outside_ci(cli: Cli, tmp_path: Path) -> None:
    src = telethon_dir(tmp_path / "src", [0, 1, 2])
    rc, on_tty, out = cli.on_pty("import", str(src), stream="stderr")
    assert rc == 0 and "3 copied" in out
    assert "\rimport [" in on_tty and "3/3" in on_tty
    rc, in_ci, _ = cli.on_pty("import", str(src), stream="stderr", env={"CI": "true"})
    assert rc == 0 and "import [" not in in_ci and "\r" not in in_ci
    rc, quiet, _ = cli.on_pty("import", str(src), "--no-progress", stream="stderr")
    assert rc == 0 and "import [" not in quiet
    piped = cli("import", str(src))
    assert piped.rc == 0 and piped.stderr == "" and "\r" not in piped.stdout and "3 unchanged" in piped.stdout


# -- an interrupted import ---------------------------------------------------------------------


def test_interrupted_import_reports_and_reruns_safely(cli: Cli, bot_id: str, tmp_path: Path) -> None:
    total = 100
    src = tmp_path / "src"
    src.mkdir()
    for i in range(total):
        s = SQLiteSession(str(src / f"user_{1000 + i}"))
        populate(s, seed=i % 50)
        s.close()
    bot_dir = cli.sessions_dir / bot_id
    proc = subprocess.Popen(
        [*PROG, "import", str(src), "--json"],
        env=cli.environment(None),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    deadline = time.monotonic() + TIMEOUT
    while not (bot_dir.exists() and len(list(bot_dir.glob("user_*.session"))) >= 15):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: stop after the current session
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 1, err
    report = json.loads(out)
    done = {i["user_id"] for i in report["items"]}
    assert report["interrupted"] is True and report["ok"] is False
    assert 15 <= len(done) < total and report["not_attempted"] == total - len(done)
    assert report["counts"] == {"copied": len(done)}  # every session it reports went in whole
    assert {p.name for p in bot_dir.glob("user_*.session")} == {f"user_{u}.session" for u in done}

    rerun = cli("import", str(src), "--json")
    assert rerun.rc == 0
    assert rerun.json()["counts"] == {"unchanged": len(done), "copied": total - len(done)}
    assert len(list(bot_dir.glob("user_*.session"))) == total
    for uid in ("1000", f"{1000 + len(done) - 1}", f"{1000 + len(done)}", f"{1000 + total - 1}"):
        assert local_summary(cli, bot_id, uid) == expected(int(uid) % 50)


# -- delete and cleanup -----------------------------------------------------------------------------


def test_delete_and_cleanup(cli: Cli, bot_id: str, tmp_path: Path) -> None:
    src = telethon_dir(tmp_path / "src", [0, 1, 2])
    assert cli("import", str(src)).rc == 0
    bot_dir = cli.sessions_dir / bot_id

    dry, keep_all = cli.many(["cleanup", "--days", "0", "--dry-run", "--json"], ["cleanup", "--days", "3650"])
    assert dry.rc == 0 and dry.json()["removed"] == ["100", "101", "102"] and dry.json()["dry_run"] is True
    assert keep_all.rc == 0 and "removed 0 session(s)" in keep_all.stdout
    assert len(list(bot_dir.glob("user_*.session"))) == 3  # a dry run removes nothing

    refused = cli("delete", "100")  # no --yes, and nobody to ask: standard input is not a terminal
    assert refused.rc == 2 and "--yes" in refused.stderr and (bot_dir / "user_100.session").exists()
    deleted = cli("delete", "100", "--yes", "--json")
    assert deleted.rc == 0 and deleted.json() == {"user_id": "100", "backend": "sqlite", "deleted": True}
    assert not (bot_dir / "user_100.session").exists()
    assert "no session of 100" in cli("delete", "100", "--yes").stdout

    removed = cli("cleanup", "--days", "0")
    assert removed.rc == 0 and "removed 2 session(s)" in removed.stdout
    assert list(bot_dir.glob("user_*.session")) == []


# -- doctor on local files --------------------------------------------------------------------------


def test_doctor_local_reports_locks_modes_and_keys(cli: Cli, bot_id: str, tmp_path: Path) -> None:
    src = telethon_dir(tmp_path / "src", [0, 1])
    assert cli("import", str(src)).rc == 0
    bot_dir = cli.sessions_dir / bot_id
    os.chmod(bot_dir / "user_101.session", 0o644)
    held = ScopedSQLiteSession("100", bot_id=bot_id, sessions_dir=cli.sessions_dir)  # a running bot
    try:
        doctor, show = cli.many(["doctor"], ["show", "100"])
    finally:
        held.close()
    assert doctor.rc == 0, doctor.stdout  # warnings only
    assert "[ok  ] locks: 1 of 2 session file(s) are open in a running process: user_100.session" in doctor.stdout
    assert "[WARN] file_modes" in doctor.stdout and f"fix: chmod 600 {bot_dir}/user_*.session" in doctor.stdout
    assert "[WARN] encryption" in doctor.stdout and "keygen" in doctor.stdout
    assert show.rc == 1 and "in use" in show.stderr
    assert (bot_dir / "user_100.session").exists()
    assert "rules:" not in doctor.stdout  # the security-rules reminder is for the Firestore backend

    # Firestore configured but not reachable: a failure with its fix.
    down = cli("doctor", "--backend", "firestore", "--json", env={"FIRESTORE_EMULATOR_HOST": "127.0.0.1:9"})
    assert down.rc == 1
    checks = {c["name"]: c for c in down.json()["checks"]}
    assert checks["emulator"]["status"] == "fail" and "start the emulator" in checks["emulator"]["fix"]


# -- Firestore: seed documents, backup and restore, secrets, rotation -------------------------------


@pytest.mark.firestore
def test_import_seed_format_documents(cli: Cli, bot_id: str, tmp_path: Path, firestore_client: Any) -> None:
    cli.with_emulator()
    col = firestore_client.collection("bots").document(bot_id).collection("user_sessions")
    encoded = {}
    for n, uid in enumerate(["1", "2"]):
        encoded[uid] = base64.b64encode(telethon_file(tmp_path / f"seed_{uid}", seed=n).read_bytes()).decode()
        col.document(uid).set({LEGACY_FIELD: encoded[uid]})
    col.document("3").set({LEGACY_FIELD: "bm90IGEgc2Vzc2lvbg=="})  # base64 of "not a session"

    before = cli("doctor", "--backend", "firestore")
    assert before.rc == 0 and "[WARN] legacy" in before.stdout and "import --legacy" in before.stdout
    # A reminder that the server library bypasses security rules, pointing at the command that prints them.
    assert "[info] rules: this library bypasses security rules" in before.stdout
    assert "fix: deploy the rules that `telethon-firestore-session rules` prints" in before.stdout

    first = cli("--backend", "firestore", "import", "--legacy", "--json")
    assert first.rc == 1
    report = first.json()
    assert report["counts"] == {"copied": 2, "failed": 1} and report["commits"] >= 1
    assert [i["user_id"] for i in report["items"] if i["status"] == "failed"] == ["3"]
    assert col.document("3").get().to_dict() == {LEGACY_FIELD: "bm90IGEgc2Vzc2lvbg=="}  # untouched
    for n, uid in enumerate(["1", "2"]):
        raw = col.document(uid).get().to_dict()
        assert LEGACY_FIELD not in raw and raw[LEGACY_BACKUP_FIELD] == encoded[uid]
        assert firestore_summary(firestore_client, bot_id, uid) == expected(n)

    # The third document is repaired; the re-run converts it and leaves the others alone.
    repaired = base64.b64encode(telethon_file(tmp_path / "seed_3", seed=5).read_bytes()).decode()
    col.document("3").set({LEGACY_FIELD: repaired})
    again = cli("--backend", "firestore", "import", "--legacy", "--json")
    assert again.rc == 0 and again.json()["counts"] == {"copied": 1}
    assert firestore_summary(firestore_client, bot_id, "3") == expected(5)

    show = cli("--backend", "firestore", "show", "2", "--json")
    assert show.rc == 0
    assert show.json()["auth_key_fingerprint"] == auth_key_fingerprint(key_for(1))
    assert show.json()["backend"] == "firestore" and show.json()["entities"] == 5


@pytest.mark.firestore
def test_backup_and_restore_round_trip(cli: Cli, bot_id: str, tmp_path: Path, firestore_client: Any) -> None:
    cli.with_emulator()
    src = telethon_dir(tmp_path / "src", [0, 1, 2])
    assert cli("import", str(src)).rc == 0

    backup = cli("backup", "--json")
    assert backup.rc == 0, backup.stderr
    report = backup.json()
    assert report["counts"] == {"copied": 3} and report["commits"] == 1 and report["backend"] == "sqlite"
    for n, uid in enumerate(["100", "101", "102"]):
        assert firestore_summary(firestore_client, bot_id, uid) == expected(n)
    assert cli("backup", "--json").json()["counts"] == {"unchanged": 3}
    typo = cli("backup", "--user", "1O1")
    assert typo.rc == 1 and "failed: 1O1" in typo.stdout and "no sqlite session" in typo.stdout
    assert not (cli.sessions_dir / bot_id / "user_1O1.session").exists()  # not created by looking

    # A user the manager registered who never logged in: nothing to restore, and no empty file made for it.
    firestore_client.document(f"bots/{bot_id}/user_sessions/103").set(
        {"schema_version": 1, "registered_at": datetime.datetime.now(datetime.timezone.utc), "logged_in": False}
    )
    restored_dir = tmp_path / "restored"
    restore = cli("restore", "--sessions-dir", str(restored_dir), "--json")
    assert restore.rc == 0, restore.stderr
    assert restore.json()["counts"] == {"copied": 3, "skipped": 1}
    assert restore.json()["conflicts"] == 0
    for n, uid in enumerate(["100", "101", "102"]):
        assert summary(read_session_file(restored_dir / bot_id / f"user_{uid}.session")) == expected(n)
    assert not (restored_dir / bot_id / "user_103.session").exists()

    # A restore never clobbers a local session that holds another login.
    (tmp_path / "other").mkdir()
    telethon_file(tmp_path / "other" / "user_101", seed=8)
    assert cli("import", str(tmp_path / "other"), "--sessions-dir", str(restored_dir), "--overwrite").rc == 0
    clash = cli("restore", "--sessions-dir", str(restored_dir), "--user", "101", "--user", "102")
    assert clash.rc == 1 and "skipped: 101" in clash.stdout and "unchanged: 102" in clash.stdout
    assert summary(read_session_file(restored_dir / bot_id / "user_101.session")) == expected(8)

    listing, stats = cli.many(["--backend", "firestore", "list", "--json"], ["stats", "--backend", "firestore"])
    assert [s["user_id"] for s in listing.json()["sessions"]] == ["100", "101", "102", "103"]
    assert "total_sessions: 4" in stats.stdout and "backend: firestore" in stats.stdout


@pytest.mark.firestore
def test_no_secret_in_any_output(cli: Cli, bot_id: str, tmp_path: Path, firestore_client: Any) -> None:
    cli.with_emulator()
    key = cli("keygen").stdout.strip()
    cli.env["SESSION_ENCRYPTION_KEY"] = key
    secrets = {
        "auth_key_0": key_for(0),
        "auth_key_1": key_for(1),
        "encryption_key": base64.urlsafe_b64decode(key),
    }
    src = telethon_dir(tmp_path / "src", [0, 1])
    imported = cli("import", str(src), "-vv")
    backed_up = cli("backup", "-vv")
    local = cli.many(
        ["show", "100", "-vv"],
        ["list", "-vv"],
        ["stats", "-vv"],
        ["info", "-vv"],
        ["doctor", "-vv"],
        ["show", "101", "--json", "-vv"],
    )
    remote = cli.many(
        ["show", "100", "-vv"],
        ["list", "-vv"],
        ["stats", "-vv"],
        ["info", "-vv", "--json"],
        ["doctor", "-vv"],
        ["import", "--legacy", "-vv"],
        env={"USE_LOCAL_STORAGE": "false"},
    )
    for result in [imported, backed_up, *local, *remote]:
        assert_no_secret(result, secrets, {"encryption_key": key})
        assert result.rc == 0, result.output  # shown only once it is known to hold no secret
    assert "DEBUG telethon_firestore_session.cli: configuration: SessionConfig(" in imported.stderr  # -vv logs
    assert auth_key_fingerprint(key_for(0)) in local[0].stdout
    assert auth_key_fingerprint(key_for(0)) in remote[0].stdout
    assert remote[3].json()["health"]["status"] == "healthy"
    assert remote[3].json()["deployment"]["backend"] == "firestore"
    assert "[ok  ] sealing" in local[4].stdout and "[ok  ] sealing" in remote[4].stdout


@pytest.mark.firestore
def test_keygen_and_rotate_key(cli: Cli, bot_id: str, tmp_path: Path, firestore_client: Any) -> None:
    cli.with_emulator()
    text, as_json = cli.many(["keygen"], ["keygen", "--json"])
    old_key = text.stdout.strip()
    new_key = as_json.json()["key"]
    assert text.rc == 0 and as_json.rc == 0 and old_key != new_key
    assert SessionCipher(old_key).key_id in text.stderr  # the note names the key id, stdout holds the key only
    assert as_json.json()["key_id"] == SessionCipher(new_key).key_id

    firestore = {"USE_LOCAL_STORAGE": "false", "SESSION_ENCRYPTION_KEY": old_key}
    src = telethon_dir(tmp_path / "src", [0])
    assert cli("import", str(src), env=firestore).rc == 0
    doc = firestore_client.document(f"bots/{bot_id}/user_sessions/100")
    sealed_old = doc.get().to_dict()["auth_key"]
    assert is_sealed(sealed_old) and SessionCipher(old_key).sealed_with(sealed_old) == SessionCipher(old_key).key_id

    rotate_env = {**firestore, "SESSION_ENCRYPTION_KEY": new_key, "SESSION_ENCRYPTION_OLD_KEYS": old_key}
    stale = cli("doctor", env=rotate_env)
    assert stale.rc == 0 and "[WARN] sealing" in stale.stdout and "rotate-key" in stale.stdout
    rotated = cli("rotate-key", "--json", env=rotate_env)
    assert rotated.rc == 0, rotated.stderr
    assert rotated.json()["counts"] == {"resealed": 1} and rotated.json()["key_id"] == SessionCipher(new_key).key_id
    sealed_new = doc.get().to_dict()["auth_key"]
    assert SessionCipher(new_key).sealed_with(sealed_new) == SessionCipher(new_key).key_id
    # The new key alone opens it now, with every record intact.
    assert firestore_summary(firestore_client, bot_id, "100", SessionCipher(new_key)) == expected(0)
    again = cli("rotate-key", env=rotate_env)
    assert again.rc == 0 and "1 unchanged" in again.stdout

    wrong = cli("doctor", env=firestore)  # only the retired key
    assert wrong.rc == 1 and "[FAIL] sealing" in wrong.stdout and "SESSION_ENCRYPTION_OLD_KEYS" in wrong.stdout
    refused = cli("show", "100", env=firestore)
    assert refused.rc == 2 and "auth_key" in refused.stderr
    assert cli("rotate-key", env={"USE_LOCAL_STORAGE": "false"}).rc == 2  # no key to seal with


def test_rotate_key_reseals_local_files(cli: Cli, bot_id: str, tmp_path: Path) -> None:
    old_key, new_key = cli("keygen").stdout.strip(), cli("keygen").stdout.strip()
    src = telethon_dir(tmp_path / "src", [0, 1])
    assert cli("import", str(src), env={"SESSION_ENCRYPTION_KEY": old_key}).rc == 0
    rotated = cli(
        "rotate-key", "--json", env={"SESSION_ENCRYPTION_KEY": new_key, "SESSION_ENCRYPTION_OLD_KEYS": old_key}
    )
    assert rotated.rc == 0, rotated.stderr
    assert rotated.json()["counts"] == {"resealed": 2} and rotated.json()["backend"] == "sqlite"
    for n, uid in enumerate(["100", "101"]):
        assert local_summary(cli, bot_id, uid, SessionCipher(new_key)) == expected(n)
