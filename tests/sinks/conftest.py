"""Servers for the sink tests, each started once per session on first use and stopped at the end.

- ``label_studio``: a real Label Studio (PyPI ``label-studio``, installed on first use into a cached venv
  under ``~/.cache/ood-audit-tests/``; about 40 s once, then a ~45 s first start for its migrations).
- ``moto``: moto's standalone server, for SQS (``moto_server`` from this venv).
- ``fiftyone``: FiftyOne (PyPI ``fiftyone``, installed on first use into a cached venv beside Label Studio's),
  run in subprocesses that also see this project, with its database under the session's temporary folder.
Tests that use them are marked ``slow``.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.sinks.servers import FiftyOneRunner, LabelStudio, MotoServer, Relay

_SLOW = {"label_studio", "moto", "sqs_env", "fiftyone"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _SLOW & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    server = LabelStudio(tmp_path_factory.mktemp("label-studio"))
    try:
        server.start()
    except Exception as exc:  # noqa: BLE001
        server.stop()
        pytest.fail(f"cannot start Label Studio: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def fiftyone(tmp_path_factory: pytest.TempPathFactory) -> FiftyOneRunner:
    try:
        return FiftyOneRunner(tmp_path_factory.mktemp("fiftyone"))
    except Exception as exc:  # noqa: BLE001 - the install's own message says what failed
        pytest.fail(f"cannot install FiftyOne: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sqs_env(monkeypatch: pytest.MonkeyPatch, moto: MotoServer) -> MotoServer:
    """Credentials and region for moto (it accepts any key); no endpoint in the environment."""
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    return moto


@pytest.fixture
def relay(moto: MotoServer) -> Iterator[Relay]:
    r = Relay(moto.port)
    try:
        yield r
    finally:
        r.cut()


def new_queue_name(fifo: bool = False) -> str:
    return f"q-{uuid.uuid4().hex[:12]}" + (".fifo" if fifo else "")
