"""The release: one version everywhere, and what the sdist and the wheel hold.

The artifact tests read the sdist and wheel that ``python -m build`` wrote into ``$TFS_DIST_DIR``;
``bash .ci/run`` builds them once, before the test suite, and after it installs the wheel in a fresh
virtualenv and runs ``examples/quickstart.py`` and the console script from there. Without that
variable these tests skip (under ``CI=true`` they fail).

The sdist is the complete source release, as distributions build and test from it: every file git
tracks (the package, tests, benchmarks, examples, the CI script the tests read, README, LICENSE,
CHANGELOG and the root ``firestore.rules``). The wheel is the package alone, with its data.
"""

from __future__ import annotations

import email.message
import email.parser
import importlib.metadata
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from telethon_firestore_session import __version__
from telethon_firestore_session.cli import main

ROOT = Path(__file__).resolve().parent.parent
DIST = "telethon-firestore-session"
PACKAGE = "telethon_firestore_session"
# What setuptools writes into an sdist besides the files MANIFEST.in selects.
SDIST_GENERATED = ("PKG-INFO", "setup.cfg", f"{PACKAGE}.egg-info/")


def test_one_version_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    installed = importlib.metadata.version(DIST)
    assert installed == __version__, f"installed metadata says {installed}: reinstall (pip install -e '.[dev]')"
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"{DIST} {__version__}\n"
    (script,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == DIST]
    assert script.load() is main


def _tracked(*paths: str) -> set[str]:
    proc = subprocess.run(["git", "ls-files", "-z", *paths], cwd=ROOT, capture_output=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"comparing the artifacts with the source needs a git checkout: {proc.stderr.decode()[-300:]}")
    return {name for name in proc.stdout.decode().split("\0") if name and (ROOT / name).exists()}


@pytest.fixture(scope="module")
def dist() -> tuple[Path, Path]:
    """The wheel and the sdist in ``$TFS_DIST_DIR``."""
    where = os.environ.get("TFS_DIST_DIR")
    if not where:
        reason = "set TFS_DIST_DIR to a directory holding `python -m build --outdir DIR`'s output (.ci/run does)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
    wheels, sdists = sorted(Path(where).glob("*.whl")), sorted(Path(where).glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, f"expected one wheel and one sdist in {where}: {wheels + sdists}"
    return wheels[0], sdists[0]


def _metadata(text: bytes) -> email.message.Message:
    return email.parser.BytesParser().parsebytes(text)


def test_the_wheel_holds_the_package_with_its_data(dist: tuple[Path, Path]) -> None:
    wheel, _ = dist
    assert wheel.name == f"{PACKAGE}-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = f"{PACKAGE}-{__version__}.dist-info/"
        entry_points = zf.read(info + "entry_points.txt").decode()
    assert {n for n in names if not n.startswith(info)} == _tracked(PACKAGE)  # every module and data file, no more
    for sub in ("firestore", "sqlite", "manager", "cli", "testing"):
        assert f"{PACKAGE}/{sub}/__init__.py" in names
    assert {f"{PACKAGE}/py.typed", f"{PACKAGE}/firestore/firestore.rules", info + "licenses/LICENSE"} <= names
    assert f"{DIST} = {PACKAGE}.cli:main" in entry_points


def test_the_sdist_is_the_tracked_source(dist: tuple[Path, Path]) -> None:
    _, sdist = dist
    top = f"{PACKAGE}-{__version__}/"
    assert sdist.name == f"{PACKAGE}-{__version__}.tar.gz"
    with tarfile.open(sdist) as tf:
        members = [m for m in tf.getmembers() if m.isfile()]
        assert all(m.name.startswith(top) for m in members)
        names = {m.name[len(top) :] for m in members}
    source = names - {n for n in names if n.startswith(SDIST_GENERATED)}
    assert source == _tracked() - {".gitignore"}, "add the missing files to MANIFEST.in (or exclude the extra ones)"
    assert {"README.md", "LICENSE", "CHANGELOG.md", "firestore.rules", "tests/conftest.py"} <= source


def test_the_metadata(dist: tuple[Path, Path]) -> None:
    wheel, sdist = dist
    with zipfile.ZipFile(wheel) as zf:
        meta = _metadata(zf.read(f"{PACKAGE}-{__version__}.dist-info/METADATA"))
    with tarfile.open(sdist) as tf:
        pkg_info = tf.extractfile(f"{PACKAGE}-{__version__}/PKG-INFO")
        assert pkg_info is not None
        sdist_meta = _metadata(pkg_info.read())
    for field in ("Name", "Version", "License-Expression", "Requires-Python", "Summary"):
        assert meta[field] == sdist_meta[field], field
    assert (meta["Name"], meta["Version"]) == (DIST, __version__)
    assert meta["License-Expression"] == "MIT" and meta.get_all("License-File") == ["LICENSE"]
    classifiers = meta.get_all("Classifier")
    assert not [c for c in classifiers if c.startswith("License ::")]  # PEP 639: the expression says it
    assert {f"Programming Language :: Python :: 3.{minor}" for minor in range(10, 14)} <= set(classifiers)
    assert {"Typing :: Typed", "Framework :: AsyncIO", "Operating System :: POSIX"} <= set(classifiers)
    assert meta["Requires-Python"] == ">=3.10"
    urls = dict(url.split(", ", 1) for url in meta.get_all("Project-URL"))
    assert set(urls) == {"Homepage", "Documentation", "Source", "Issues", "Changelog"}
    assert all(url.startswith("https://") for url in urls.values())
    assert meta.get_all("Requires-Dist") == importlib.metadata.requires(DIST)  # as the dev install declares
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload(decode=True) == (ROOT / "README.md").read_bytes()
