"""Start, reset and stop the real Google Cloud Firestore emulator.

The jar is started directly (not through ``gcloud emulators firestore start``,
whose wrapper leaves the JVM running when it is killed) on a free loopback port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

INSTALL_HINT = (
    "the Firestore emulator is not installed: install the Google Cloud CLI with its emulator "
    "(Debian/Ubuntu: `apt-get install google-cloud-cli google-cloud-cli-firestore-emulator`, "
    "elsewhere: `gcloud components install cloud-firestore-emulator`), or point "
    "FIRESTORE_EMULATOR_HOST at a running emulator"
)

MAIN_CLASS = "com.google.cloud.datastore.emulator.firestore.CloudFirestore"


def find_jar() -> str | None:
    """Locate the emulator jar: $FIRESTORE_EMULATOR_JAR, the Debian package, or the gcloud SDK."""
    env = os.environ.get("FIRESTORE_EMULATOR_JAR")
    if env and Path(env).is_file():
        return env
    if shutil.which("dpkg"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                ["dpkg", "-L", "google-cloud-cli-firestore-emulator"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            ).stdout
            for line in out.splitlines():
                if line.endswith("emulator.jar") and Path(line).is_file():
                    return line
    gcloud = shutil.which("gcloud")
    if gcloud:
        sdk = Path(gcloud).resolve().parent.parent
        for cand in sdk.glob("platform/cloud-firestore-emulator/*emulator*.jar"):
            return str(cand)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(method: str, url: str, timeout: float = 5.0) -> str:
    req = urllib.request.Request(url, method=method)  # noqa: S310 - loopback URL built here
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
        return str(resp.read().decode("utf-8", "replace"))


class Emulator:
    """A Firestore emulator: one we started, or one given by FIRESTORE_EMULATOR_HOST."""

    def __init__(self, host: str, process: subprocess.Popen[bytes] | None = None, log_path: str | None = None):
        self.host = host
        self.process = process
        self.log_path = log_path

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @classmethod
    def start(cls, jar: str, timeout: float = 60.0, rules: str | None = None, heap: str = "1g") -> Emulator:
        """Start the jar; ``rules`` is a security rules file to enforce (none: every request allowed).

        ``heap`` is the JVM's maximum heap: the emulator keeps every document in it.
        """
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("java is not on PATH; the Firestore emulator needs a Java runtime (17+)")
        port = free_port()
        fd, log_path = tempfile.mkstemp(prefix="firestore-emulator-", suffix=".log")
        log = os.fdopen(fd, "wb")
        proc = subprocess.Popen(
            [
                java,
                "-Duser.language=en",
                f"-Xmx{heap}",
                "-cp",
                jar,
                MAIN_CLASS,
                "start",
                "--host=127.0.0.1",
                f"--port={port}",
                *([f"--rules={rules}"] if rules else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        emu = cls(f"127.0.0.1:{port}", proc, log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the Firestore emulator exited early; see {log_path}")
            if emu.ready():
                return emu
            time.sleep(0.1)
        emu.stop()
        raise RuntimeError(f"the Firestore emulator did not answer within {timeout:.0f}s; see {log_path}")

    def ready(self) -> bool:
        try:
            return _request("GET", self.url + "/", timeout=1.0).strip() == "Ok"
        except (OSError, urllib.error.URLError):
            return False

    def reset(self, project: str) -> None:
        # Minutes for hundreds of thousands of documents (the benchmarks); a test suite has a handful.
        _request("DELETE", f"{self.url}/emulator/v1/projects/{project}/databases/(default)/documents", timeout=600.0)

    def pause(self) -> None:
        """Freeze the JVM (SIGSTOP): RPCs hang until :meth:`resume`.

        Returns once every thread of the JVM is stopped. ``kill()`` only queues the
        signal: each thread stops when the kernel next schedules it, and on a busy
        machine a thread can still answer an RPC a few milliseconds after ``kill()``
        returned (a write meant to hang then succeeds).
        """
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGSTOP)
        self._wait_for_threads(stopped=True)

    def resume(self) -> None:
        """Let the JVM run again (SIGCONT); returns once no thread of it is stopped."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGCONT)
        self._wait_for_threads(stopped=False)

    def _wait_for_threads(self, *, stopped: bool, timeout: float = 10.0) -> None:
        """Wait until every thread of the JVM is (or no thread is) in state ``T``, read from ``/proc``."""
        assert self.process is not None
        tasks = Path(f"/proc/{self.process.pid}/task")
        if not tasks.is_dir():  # not Linux: no way to see it; give the signal a moment
            time.sleep(0.5)
            return
        deadline = time.monotonic() + timeout
        while True:
            states = set()
            for task in tasks.iterdir():
                with contextlib.suppress(OSError):  # a thread that just exited
                    states.add((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
            if (states <= {"T", "t"}) if stopped else not (states & {"T", "t"}):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the emulator's threads did not {'stop' if stopped else 'resume'}: {states}")
            time.sleep(0.002)

    def stop(self) -> None:
        """POST /shutdown, then make sure the JVM is gone. Only stops an emulator we started."""
        proc = self.process
        if proc is None:
            return
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGCONT)
        with contextlib.suppress(OSError, urllib.error.URLError):
            _request("POST", self.url + "/shutdown", timeout=5.0)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
