"""The scoring actor's intra-op threads follow its CPU share in Ray (torch's default outside Ray); the read
tasks' size follows the input size."""

from __future__ import annotations

import pytest
import torch

from ood_audit.scan.score import ScoreActor, threads_for_cpus


def test_threads_for_cpus() -> None:
    assert [threads_for_cpus(c) for c in (None, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.4, 8.0)] == [
        None, None, 1, 1, 1, 2, 2, 3, 8]


@pytest.mark.timeout(300)
def test_actor_threads_match_num_cpus(ray_local, bundle_uri) -> None:
    ray = ray_local

    @ray.remote
    class ThreadCountingActor(ScoreActor):
        def threads(self) -> int:
            return torch.get_num_threads()

    shares = {0.5: 1, 2: 2}
    actors = {cpus: ThreadCountingActor.options(num_cpus=cpus).remote(bundle_uri, "r") for cpus in shares}
    got = {cpus: ray.get(a.threads.remote(), timeout=240) for cpus, a in actors.items()}
    explicit = ThreadCountingActor.options(num_cpus=0.5).remote(bundle_uri, "r", torch_threads=3)
    got_explicit = ray.get(explicit.threads.remote(), timeout=240)
    for a in [*actors.values(), explicit]:
        ray.kill(a)
    assert got == shares and got_explicit == 3


def test_read_tasks_take_about_8_mib_of_pixels() -> None:
    """Objects per read task when --slice-rows is not given: 8 MiB of uint8 RGB at the model's input size,
    between 16 and 256 (worked by hand: 8388608 / (224 * 224 * 3) = 55.7; at 32 px 2730, capped)."""
    from ood_audit.scan.config import default_slice_rows

    assert default_slice_rows(32, 32) == 256
    assert default_slice_rows(224, 224) == 55
    assert default_slice_rows(128, 96) == 227  # 8388608 / 36864 = 227.6
    assert default_slice_rows(1024, 1024) == 16
