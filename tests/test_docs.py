"""The documentation is tested like code: every Python example in README.md and docs/ runs, and the site builds.

Each ```python block is preceded by a marker comment that says how it is checked:

* ``<!-- test: local -->``: run in a fresh process, in an empty directory, with no Render, Firestore
  or encryption variables set (the local default);
* ``<!-- test: firestore -->``: the same, with the test emulator in ``FIRESTORE_EMULATOR_HOST``;
* ``<!-- test: pytest -->``: a test module, run by pytest in an empty directory; it must pass;
* ``<!-- test: same-as PATH -->``: the block appears verbatim in ``PATH`` (a file that other tests run,
  or a page whose blocks run here);
* ``<!-- test: skip REASON -->``: not run, for the reason given.

A block without a marker fails the suite, so a new example cannot go untested by accident.

The site is built with ``mkdocs build --strict`` (a broken link, anchor or cross-reference fails it;
CI also runs it before the tests), and its API reference must document every name the package
root exports.
"""

from __future__ import annotations

import html
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import telethon_firestore_session
from tests.common import child_env, run_python

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MARKERS = {"local", "firestore", "pytest", "same-as", "skip"}
_BLOCK = re.compile(r"(?:^<!-- test: (?P<marker>[^>]*?) -->\n)?^```(?P<lang>\w*)\n(?P<code>.*?)^```", re.S | re.M)
_PYTHON_FENCE = re.compile(r"^\s*```+ *python", re.M)


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int
    marker: str
    code: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def _blocks() -> list[Block]:
    blocks = []
    for path in PAGES:
        text = path.read_text(encoding="utf-8")
        for match in _BLOCK.finditer(text):
            if match.group("lang") == "python":
                line = text.count("\n", 0, match.start("code")) + 1
                page = path.relative_to(ROOT).as_posix()
                blocks.append(Block(page, line, match.group("marker") or "", match.group("code")))
    return blocks


BLOCKS = _blocks()


def _of(kind: str) -> list[Block]:
    return [b for b in BLOCKS if b.marker.split(" ", 1)[0] == kind]


def test_every_python_block_is_found_and_marked() -> None:
    for path in PAGES:
        text = path.read_text(encoding="utf-8")
        found = sum(1 for b in BLOCKS if b.page == path.relative_to(ROOT).as_posix())
        # An indented block (in a list or an admonition) would escape the runner: keep examples at the margin.
        assert len(_PYTHON_FENCE.findall(text)) == found, f"{path.name}: a python block the runner does not see"
    assert len(BLOCKS) >= 15
    unmarked = [str(b) for b in BLOCKS if not b.marker]
    assert unmarked == [], f"python blocks without a <!-- test: ... --> marker: {unmarked}"
    assert {b.marker.split(" ", 1)[0] for b in BLOCKS} <= MARKERS
    assert all(len(b.marker.split(" ", 1)) == 2 for b in BLOCKS if b.marker.startswith(("skip", "same-as"))), (
        "skip needs a reason, same-as a path"
    )


@pytest.mark.slow
@pytest.mark.parametrize("block", _of("local"), ids=str)
def test_local_examplesrun_python(block: Block, tmp_path: Path) -> None:
    proc = run_python(["-c", block.code], tmp_path, child_env())
    assert proc.returncode == 0, f"{block}:\n{proc.stderr[-3000:]}"


@pytest.mark.slow
@pytest.mark.firestore
@pytest.mark.parametrize("block", _of("firestore"), ids=str)
def test_firestore_examplesrun_python(block: Block, tmp_path: Path, firestore_client: object) -> None:
    env = child_env(
        FIRESTORE_EMULATOR_HOST=os.environ["FIRESTORE_EMULATOR_HOST"],
        GOOGLE_CLOUD_PROJECT=os.environ["GOOGLE_CLOUD_PROJECT"],
    )
    proc = run_python(["-c", block.code], tmp_path, env)
    assert proc.returncode == 0, f"{block}:\n{proc.stderr[-3000:]}"
    assert not (tmp_path / "sessions").exists()


@pytest.mark.slow
@pytest.mark.parametrize("block", _of("pytest"), ids=str)
def test_test_module_examples_pass(block: Block, tmp_path: Path) -> None:
    (tmp_path / "test_example.py").write_text(block.code, encoding="utf-8")
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", "--rootdir", str(tmp_path)]
    proc = run_python(
        [*args, "-c", os.devnull, "-o", "asyncio_default_fixture_loop_scope=function"], tmp_path, child_env()
    )
    assert proc.returncode == 0, f"{block}:\n{proc.stdout[-3000:]}{proc.stderr[-1000:]}"
    assert re.search(r"^\d+ passed", proc.stdout.splitlines()[-1]), proc.stdout[-500:]


@pytest.mark.parametrize("block", _of("same-as"), ids=str)
def test_blocks_match_their_files(block: Block) -> None:
    path = ROOT / block.marker.split(" ", 1)[1]
    assert block.code in path.read_text(encoding="utf-8"), f"{block}: the block differs from {path.name}"
    # A page named as the source must run that block itself, not point further.
    if path.suffix == ".md":
        (source,) = [b for b in BLOCKS if b.page == path.relative_to(ROOT).as_posix() and b.code == block.code]
        assert source.marker.split(" ", 1)[0] in ("local", "firestore", "pytest"), f"{block}: {source} does not run"


# -- the site ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mkdocs build --strict``, as CI runs it, into a temporary directory."""
    if importlib.util.find_spec("mkdocs") is None:
        reason = "building the documentation needs MkDocs: pip install -e '.[docs]' (or '.[dev]')"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return out


def _documented(site: Path) -> dict[str, object]:
    """Every object the API reference renders, by the identifier of its heading."""
    objects: dict[str, object] = {}
    for page in (site / "reference").rglob("*.html"):
        for ident in re.findall(r'id="(telethon_firestore_session[\w.]*)"', page.read_text(encoding="utf-8")):
            module, _, name = ident.rpartition(".")
            try:
                objects[ident] = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError):
                continue  # a member of a class, or a module itself: not an export of a module
    return objects


@pytest.mark.slow
def test_the_api_reference_documents_every_exported_name(site: Path) -> None:
    documented = _documented(site)
    missing = [
        name
        for name in telethon_firestore_session.__all__
        if name != "__version__"
        and not any(obj is getattr(telethon_firestore_session, name) for obj in documented.values())
    ]
    assert missing == [], f"exported by the package root but not in the API reference (no docstring?): {missing}"
    index = html.unescape((site / "reference" / "index.html").read_text(encoding="utf-8"))
    assert "telethon_firestore_session.__version__" in index
    modules = ("testing", "firestore", "sqlite", "manager", "config", "crypto", "errors", "migrate", "entities")
    for module in modules:
        assert f"telethon_firestore_session.{module}" in documented, f"no reference page for the {module} module"


@pytest.mark.slow
def test_the_architecture_page_is_the_repository_file(site: Path) -> None:
    page = html.unescape((site / "architecture" / "index.html").read_text(encoding="utf-8"))
    for line in (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            assert f">{line[3:].replace('`', '')}<" in re.sub(r"</?code>", "", page), line
    assert page.count('class="mermaid"') >= 2


def test_ci_builds_the_docs_strictly_before_the_tests() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    build = [n for n, line in enumerate(ci) if line.strip().startswith("mkdocs build --strict")]
    assert build and build[0] < ci.index("python -m pytest")
