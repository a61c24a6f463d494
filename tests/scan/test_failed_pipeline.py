"""A failed pipeline gives its actor pool back at once (:func:`ood_audit.ray_setup.release_failed_pipeline`).

Without it, the failed iteration's frames keep the pool's actor handles in a reference cycle, and the actors
keep their CPUs until the garbage collector happens to run: a training run started next in the same process
(it asks for every CPU of the cluster) then waits for workers it can never get.
"""
from __future__ import annotations

import threading
import time

import pytest

from ood_audit.ray_setup import release_failed_pipeline


class _Identity:
    def __call__(self, batch):
        return batch


def _refuse_late(batch):
    if batch["id"][0] >= 20:
        raise OSError("the store refused the write")
    return batch


@pytest.mark.timeout(120)
def test_a_failed_pipeline_gives_its_actors_cpus_back(ray_local):
    ray = ray_local
    total = ray.cluster_resources()["CPU"]
    ds = ray.data.range(60, override_num_blocks=12).map_batches(
        _Identity, batch_size=5, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.5)
    ds = ds.map_batches(_refuse_late, batch_size=5, num_cpus=0.25)
    with pytest.raises(Exception, match="refused the write"):
        try:
            for _ in ds.iter_batches(batch_size=None):
                pass
        except Exception as exc:
            release_failed_pipeline(exc)
            raise
    # The executor's scheduling thread, which holds the pool too, was waited for before the collection.
    assert not [t.name for t in threading.enumerate()
                if t.name.startswith("StreamingExecutor-") and getattr(t, "_shutdown", False) and t.is_alive()]
    deadline = time.monotonic() + 60
    while ray.available_resources().get("CPU", 0.0) < total:  # the actor's exit is asynchronous
        assert time.monotonic() < deadline, f"{ray.available_resources().get('CPU')} of {total} CPUs free"
        time.sleep(0.2)
