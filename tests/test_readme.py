"""The README is the landing page: its set-up commands, its size, its links into the site, and its examples.

Its Python examples are checked with the documentation's (``tests/test_docs.py``: each block carries a
``<!-- test: ... -->`` marker). Here: the two set-up commands come first and CI runs the same test
command; the README stays short (PyPI shows it whole); every link into the documentation site is an
absolute link under the Documentation URL of pyproject.toml (so it works on PyPI) to a page, and an
anchor, that exist in ``docs/``; and the quickstart and the example bot the README points to run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.common import child_env, run_python

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
_PYPROJECT = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
#: [project.urls] (tomllib is Python 3.11+): the site, and the repository.
DOCS_URL = re.search(r'^Documentation = "(.+)"$', _PYPROJECT, flags=re.M)[1]  # type: ignore[index]
SOURCE_URL = re.search(r'^Source = "(.+)"$', _PYPROJECT, flags=re.M)[1]  # type: ignore[index]
#: Markdown links and bare <autolinks>.
_LINK = re.compile(r"\]\((?P<a>[^)\s]+)\)|<(?P<b>https?://[^>\s]+)>")


def test_the_readme_starts_with_two_set_up_commands() -> None:
    intro = README.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert intro == [
        "pip install . && python examples/quickstart.py",
        "pip install -e '.[dev]' && python -m pytest",
    ]
    assert README.index("```bash\n") < README.index("```python")  # before any example
    test_command = intro[1].split(" && ", 1)[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_command in ci  # CI runs the README's own test command, as a line of its own
    assert any("pip install" in line and "-e '.[dev]'" in line for line in ci)  # ... after the same install


def test_the_readme_is_a_landing_page() -> None:
    assert len(README) <= 10_000, f"README.md has {len(README)} characters: move the detail into docs/"
    # One example per backend, each the same as the documentation's (which runs it).
    examples = re.findall(r"<!-- test: (.*?) -->\n```python\n(.*?)^```", README, flags=re.S | re.M)
    assert [marker for marker, _ in examples] == ["same-as docs/sessions.md"] * 2
    assert "FirestoreSession(" in examples[0][1] and "ScopedSQLiteSession(" in examples[1][1]
    assert "## Speed" in README and "## Features" in README


def _anchors(page: Path) -> set[str]:
    """The heading ids MkDocs gives a page (Python-Markdown's toc slugify, on the heading's text)."""
    from markdown.extensions.toc import slugify  # MkDocs' own dependency (the docs extra)

    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    ids: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+?)\s*$", text, flags=re.M):
        ids.add(slugify(re.sub(r"[`*]|\[([^]]*)\]\([^)]*\)", r"\1", heading), "-"))
    return ids


def test_the_readme_links_into_the_site() -> None:
    pytest.importorskip("markdown", reason="checking the links' anchors needs MkDocs: pip install -e '.[docs]'")
    mkdocs = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert re.search(rf"^site_url: {re.escape(DOCS_URL.rstrip('/'))}/$", mkdocs, flags=re.M), (
        "site_url != Documentation"
    )
    links = [m.group("a") or m.group("b") for m in _LINK.finditer(README)]
    into_site = [link for link in links if link.startswith(DOCS_URL)]
    assert len(into_site) >= 15
    for link in links:  # PyPI shows the README without the repository: every link is absolute
        assert link.startswith(("https://", "http://")), f"relative link {link!r}: PyPI cannot follow it"
        if link.startswith(("https://github.com/", SOURCE_URL)) and "/blob/main/" in link:
            assert (ROOT / link.split("/blob/main/", 1)[1]).exists(), link
    for link in into_site:
        path, _, anchor = link[len(DOCS_URL) :].lstrip("/").partition("#")
        assert path == "" or path.endswith("/"), f"{link}: MkDocs serves pages as directories (.../page/)"
        page = ROOT / "docs" / (path.rstrip("/") or "index")
        page = page / "index.md" if page.is_dir() else page.with_suffix(".md")
        assert page.exists(), f"{link}: no page {page.relative_to(ROOT)}"
        assert not anchor or anchor in _anchors(page), f"{link}: no heading #{anchor} in {page.relative_to(ROOT)}"
    # Every guide page is reachable from the landing page.
    guide = {p.stem for p in (ROOT / "docs").glob("*.md")} - {"index"}
    linked = {link[len(DOCS_URL) :].strip("/").partition("#")[0].strip("/") for link in into_site}
    assert guide <= linked, sorted(guide - linked)


@pytest.mark.slow
def test_quickstart_runs_twice_and_finds_its_session(tmp_path: Path) -> None:
    for _ in range(2):
        proc = run_python([str(ROOT / "examples" / "quickstart.py")], tmp_path, child_env())
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stderr == ""
        assert "backend: sqlite" in proc.stdout
        assert "@durov -> InputPeerUser(user_id=1006, access_hash=-4917286338155112893)" in proc.stdout
    assert (tmp_path / "sessions" / "quickstart" / "user_42.session").stat().st_mode & 0o777 == 0o600


@pytest.mark.slow
def test_the_example_bot_fails_at_start_up_on_bad_settings(tmp_path: Path) -> None:
    bot = str(ROOT / "examples" / "bot.py")
    proc = run_python([bot], tmp_path, child_env(BOT_ID="mybot_local"))
    assert proc.returncode == 1 and "set BOT_TOKEN, API_ID and API_HASH" in proc.stderr
    proc = run_python([bot], tmp_path, child_env(BOT_ID="mybot_local", API_ID="12ab", API_HASH="0" * 32))
    assert proc.returncode == 1 and "ConfigError: API_ID: must be an integer" in proc.stderr
    assert not (tmp_path / "sessions").exists()
