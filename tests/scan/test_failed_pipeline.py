"""A failed pipeline gives its actor pool back at once (:class:`ood_audit.ray_setup.PoolReaper`, and
:func:`~ood_audit.ray_setup.release_failed_pipeline` for what the failed iteration still holds).

Left to Ray Data, the failed iteration's frames keep the pool's actor handles in a reference cycle, and the
actors keep their CPUs until the garbage collector happens to run: a training run started next in the same
process (it asks for every CPU of the cluster) then waits for workers it can never get.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from ood_audit.ray_setup import release_failed_pipeline


class _Identity:
    def __call__(self, batch):
        return batch


def _refuse_late(consumed: Path):
    """Rows from 20 on are refused, but only once the consumer holds an output (``consumed`` exists), so that
    the failure comes after the first outputs by construction, not by the scheduler's luck."""

    def refuse_late(batch):
        if batch["id"][0] >= 20:
            deadline = time.monotonic() + 60
            while not consumed.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            raise OSError("the store refused the write")
        return batch

    return refuse_late


def _failing_pipeline(ray, consumed: Path):
    ds = ray.data.range(60, override_num_blocks=12).map_batches(
        _Identity, batch_size=5, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.5)
    return ds.map_batches(_refuse_late(consumed), batch_size=5, num_cpus=0.25)


def _wait_all_cpus_free(ray, total):
    deadline = time.monotonic() + 60
    while ray.available_resources().get("CPU", 0.0) < total:  # the actor's exit is asynchronous
        assert time.monotonic() < deadline, f"{ray.available_resources().get('CPU')} of {total} CPUs free"
        time.sleep(0.2)


@pytest.mark.timeout(120)
def test_a_failed_pipeline_gives_its_actors_cpus_back_while_its_blocks_live(ray_local, tmp_path):
    """Blocks the pool's actor produced are still referenced after the failure (here: the pipeline's first
    outputs, held by the consumer). Ray keeps a restartable actor alive for their lineage, so Ray Data's own
    shutdown leaves its CPUs taken (measured: 2.5 of 3 free after 20 s); the pool's actor is killed all the
    same."""
    ray = ray_local
    total = ray.cluster_resources()["CPU"]
    held, consumed = [], tmp_path / "consumed"
    with pytest.raises(Exception, match="refused the write"):
        for bundle in _failing_pipeline(ray, consumed).iter_internal_ref_bundles():
            held.append(bundle)
            consumed.touch()
    assert held, "the failure came before any output: nothing of the pool's was held"
    _wait_all_cpus_free(ray, total)


@pytest.mark.timeout(120)
def test_releasing_a_failed_pipeline_drops_its_tracebacks_and_waits_for_its_executor(ray_local, tmp_path):
    ray = ray_local
    total = ray.cluster_resources()["CPU"]
    consumed = tmp_path / "consumed"
    consumed.touch()  # refuse at once
    with pytest.raises(Exception, match="refused the write") as failure:
        try:
            for _ in _failing_pipeline(ray, consumed).iter_batches(batch_size=None):
                pass
        except Exception as exc:
            release_failed_pipeline(exc)
            raise
    chain = [failure.value.__cause__, failure.value.__context__]
    assert all(e is None or e.__traceback__ is None for e in chain)
    # The executor's scheduling thread, which holds the pool too, was waited for before the collection.
    assert not [t.name for t in threading.enumerate()
                if t.name.startswith("StreamingExecutor-") and getattr(t, "_shutdown", False) and t.is_alive()]
    _wait_all_cpus_free(ray, total)
