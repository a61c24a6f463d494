"""Report-test fixtures: a system Chromium for Playwright, installed with apt when missing.

Playwright drives the distribution's ``chromium`` (no ``playwright install``, no browser download). On a
fresh machine it is installed with ``apt-get`` (about a minute and a half), started in the background once the
collected tests show a browser test will run (:mod:`tests.fixtures.installs`); when that is impossible the
test fails with one message saying what to run, never skips silently.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a system Chromium binary (installed with apt-get on first use when missing)."""
    from tests.fixtures.installs import chromium_path

    return chromium_path()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave files for people to look at: ``$OOD_AUDIT_TEST_ARTIFACTS`` or ``<repo>/test-artifacts``."""
    path = Path(os.environ.get("OOD_AUDIT_TEST_ARTIFACTS") or REPO / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path
