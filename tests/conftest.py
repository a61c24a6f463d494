"""Shared fixtures: the servers (:mod:`tests.fixtures`) and the two-night real scan.

- S3: :mod:`tests.fixtures.s3_server` (``s3_server``, ``s3_bucket``, ``s3_env``, ``private_s3``, ...);
- GCS and Azure emulators: :mod:`tests.fixtures.clouds` (``fake_gcs``, ``azurite``, ``cloud``);
- Ray: :mod:`tests.fixtures.ray_session` (``ray_local``, ``no_ray``);
- ``quick_demo``: one ``ood-audit demo --quick`` and the digits model it trains (:mod:`tests.fixtures.demo_run`);
- ``real_scan``: two real nightly scans in SeaweedFS (:mod:`tests.realscan`), built once per session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from ood_audit.embedded.s3 import EmbeddedS3

# Loaded as plugins (not imported here) so that pytest rewrites their assertions.
pytest_plugins = ["tests.fixtures.installs", "tests.fixtures.s3_server", "tests.fixtures.clouds",
                  "tests.fixtures.ray_session", "tests.fixtures.demo_run"]  # installs first: the others import it


@pytest.fixture(scope="session")
def real_scan(s3_server: EmbeddedS3, s3_client: Any, shared_ray: Any) -> Iterator[Any]:
    """Two real nightly scans of real digits and outliers in SeaweedFS (see :mod:`tests.realscan`).

    Built once per session on first use, in its own bucket, on the shared local Ray; the tests that use it
    only read it (or write under their own prefixes of that bucket).
    """
    from tests.fixtures.s3_server import bucket_name, delete_bucket
    from tests.realscan import make_real_scan

    bucket = bucket_name("real-scan")
    s3_client.create_bucket(Bucket=bucket)
    try:
        shared_ray.ensure()
        yield make_real_scan(s3_server.s3_config(), s3_client, bucket)
    finally:
        delete_bucket(s3_client, bucket)


# Under pytest-xdist (``-n 2 --dist loadgroup``, the README's test command) each module's tests run in one
# worker, so its module-scoped fixtures are built once; and the tests that share one of the expensive session
# fixtures run in one worker too, so each is built once: the quick demo; the two-night real scan and Label
# Studio (the nightly tests and the failure matrix use both). Those two groups are the longest, so they are
# put first, one per worker. The modules follow, those with slow tests first (in their order), then the fast
# ones: a worker that frees up takes the next module, so the fast modules fill in at the end instead of a
# minute-long module starting last on one worker while the other has nothing left. xdist's own reordering (by
# test count) would start the quick demo last, and the suite would end waiting on it alone.
XDIST_GROUPS = (("quick-demo", {"quick_demo"}), ("triage", {"real_scan", "label_studio"}))


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False
    # The in-process torch work of a test (calibrations with workers=0, small trainings) shares the machine's
    # cores with the other xdist workers: each takes its share of threads, not all of them (torch's default),
    # which on 2 cores ran 4 threads and wasted CPU in the suite, which is CPU-bound.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow_modules = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    rank: dict[str, tuple[int, int]] = {}
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        module = item.nodeid.split("::")[0]
        index, group = next(((i, g) for i, (g, fixtures) in enumerate(XDIST_GROUPS) if names & fixtures),
                            (len(XDIST_GROUPS), module))
        item.add_marker(pytest.mark.xdist_group(group))
        rank[item.nodeid] = (index, int(index == len(XDIST_GROUPS) and module not in slow_modules))
    items.sort(key=lambda item: rank[item.nodeid])  # stable: the modules keep their order within each rank
