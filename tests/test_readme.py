"""The README's promises about itself: its set-up commands, and every Python example in it runs.

Each ```python block in README.md is preceded by a marker comment that says how it is checked:

* ``<!-- readme-test: local -->``: run in a fresh process, in an empty directory, with no
  Render, Firestore or encryption variables set (the local default);
* ``<!-- readme-test: firestore -->``: the same, with the test emulator in ``FIRESTORE_EMULATOR_HOST``;
* ``<!-- readme-test: same-as PATH -->``: the block appears verbatim in ``PATH`` (which other tests run);
* ``<!-- readme-test: skip REASON -->``: not run, for the reason given.

A block without a marker fails the suite, so a new example cannot go untested by accident.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.common import clean_env

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
_BLOCK = re.compile(r"(?:<!-- readme-test: (?P<marker>[^>]*?) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)^```", re.S | re.M)


def _python_blocks() -> list[tuple[str, str, int]]:
    blocks = []
    for match in _BLOCK.finditer(README):
        if match.group("lang") == "python":
            line = README.count("\n", 0, match.start("code")) + 1
            blocks.append((match.group("marker") or "", match.group("code"), line))
    return blocks


BLOCKS = _python_blocks()


def _clean_env(**extra: str) -> dict[str, str]:
    """No factory variables (the local default), and this checkout importable (for ``examples``)."""
    return clean_env(PYTHONPATH=str(ROOT), **extra)


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
        check=False,
    )


def test_the_readme_starts_with_two_set_up_commands() -> None:
    intro = README.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert intro == [
        "pip install . && python examples/quickstart.py",
        "pip install -e '.[dev]' && python -m pytest",
    ]
    test_command = intro[1].split(" && ", 1)[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_command in ci  # CI runs the README's own test command, as a line of its own
    assert any("pip install" in line and "-e '.[dev]'" in line for line in ci)  # ... after the same install


def test_every_python_block_has_a_marker() -> None:
    assert len(BLOCKS) >= 6
    unmarked = [line for marker, _, line in BLOCKS if not marker]
    assert unmarked == [], f"README.md python blocks without a readme-test marker at lines {unmarked}"
    kinds = {marker.split()[0] for marker, _, _ in BLOCKS}
    assert kinds <= {"local", "firestore", "same-as", "skip"}, kinds


@pytest.mark.parametrize(
    ("code", "line"), [(c, n) for m, c, n in BLOCKS if m == "local"], ids=lambda v: str(v) if isinstance(v, int) else ""
)
@pytest.mark.slow
def test_local_examples_run(code: str, line: int, tmp_path: Path) -> None:
    proc = _run(["-c", code], tmp_path, _clean_env())
    assert proc.returncode == 0, f"README.md line {line}:\n{proc.stderr[-3000:]}"


@pytest.mark.firestore
@pytest.mark.parametrize(
    ("code", "line"),
    [(c, n) for m, c, n in BLOCKS if m == "firestore"],
    ids=lambda v: str(v) if isinstance(v, int) else "",
)
@pytest.mark.slow
def test_firestore_examples_run(code: str, line: int, tmp_path: Path, firestore_client: object) -> None:
    env = _clean_env(
        FIRESTORE_EMULATOR_HOST=os.environ["FIRESTORE_EMULATOR_HOST"],
        GOOGLE_CLOUD_PROJECT=os.environ["GOOGLE_CLOUD_PROJECT"],
    )
    proc = _run(["-c", code], tmp_path, env)
    assert proc.returncode == 0, f"README.md line {line}:\n{proc.stderr[-3000:]}"
    assert not (tmp_path / "sessions").exists()


@pytest.mark.parametrize(
    ("marker", "code"), [(m, c) for m, c, _ in BLOCKS if m.startswith("same-as ")], ids=lambda v: str(v)[:40]
)
def test_blocks_match_their_files(marker: str, code: str) -> None:
    path = ROOT / marker.split(" ", 1)[1]
    assert code in path.read_text(encoding="utf-8"), f"the README block differs from {path.name}"


@pytest.mark.slow
def test_quickstart_runs_twice_and_finds_its_session(tmp_path: Path) -> None:
    for _ in range(2):
        proc = _run([str(ROOT / "examples" / "quickstart.py")], tmp_path, _clean_env())
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stderr == ""
        assert "backend: sqlite" in proc.stdout
        assert "@durov -> InputPeerUser(user_id=1006, access_hash=-4917286338155112893)" in proc.stdout
    assert (tmp_path / "sessions" / "quickstart" / "user_42.session").stat().st_mode & 0o777 == 0o600


@pytest.mark.slow
def test_the_example_bot_fails_at_start_up_on_bad_settings(tmp_path: Path) -> None:
    bot = str(ROOT / "examples" / "bot.py")
    proc = _run([bot], tmp_path, _clean_env(BOT_ID="mybot_local"))
    assert proc.returncode == 1 and "set BOT_TOKEN, API_ID and API_HASH" in proc.stderr
    proc = _run([bot], tmp_path, _clean_env(BOT_ID="mybot_local", API_ID="12ab", API_HASH="0" * 32))
    assert proc.returncode == 1 and "ConfigError: API_ID: must be an integer" in proc.stderr
    assert not (tmp_path / "sessions").exists()
