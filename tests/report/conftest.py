"""Report-test fixtures: a system Chromium for Playwright, installed with apt when missing.

Playwright drives the distribution's ``chromium`` (no ``playwright install``, no browser download). On a
fresh machine the first browser test installs it with ``apt-get`` (about a minute and a half); when that
is impossible the test fails with one message saying what to run, never skips silently.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")
REPO = Path(__file__).resolve().parents[2]


def _find_chromium() -> str | None:
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _install_chromium() -> str:
    if shutil.which("apt-get") is None:
        pytest.fail("no chromium on PATH and no apt-get to install it: install Chromium (the `chromium` "
                    "package) and re-run", pytrace=False)
    steps = (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"])
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in steps:
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.fail(f"cannot install chromium ({' '.join(cmd)}: {exc}); run `apt-get update && apt-get "
                        "install -y chromium` as root and re-run", pytrace=False)
        if res.returncode != 0:
            tail = " | ".join((res.stderr or res.stdout).strip().splitlines()[-3:])
            pytest.fail(f"cannot install chromium: `{' '.join(cmd)}` exited {res.returncode} ({tail}); run "
                        "`apt-get update && apt-get install -y chromium` as root and re-run", pytrace=False)
    path = _find_chromium()
    if path is None:
        pytest.fail("apt-get installed chromium but no chromium binary is on PATH", pytrace=False)
    return path


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a system Chromium binary (installed with apt-get on first use when missing)."""
    import fcntl
    import tempfile

    path = _find_chromium()
    if path:
        return path
    with open(Path(tempfile.gettempdir()) / "ood-audit-tests-chromium.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time (parallel test workers share apt's lock)
        return _find_chromium() or _install_chromium()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave files for people to look at: ``$OOD_AUDIT_TEST_ARTIFACTS`` or ``<repo>/test-artifacts``."""
    path = Path(os.environ.get("OOD_AUDIT_TEST_ARTIFACTS") or REPO / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path
