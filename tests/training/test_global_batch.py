"""SupCon and ALPA over the global batch (SPEC §8): two real DDP ranks (gloo) give the single-process loss
on the concatenated batch, and DDP's averaged gradients equal the single-process gradients."""
from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.training.global_batch_case import bn_batches, build, fixed_batch, refreshed, run_rank


MODES = ("joint", "alpa-finetune")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both modes on two spawned gloo ranks, once: ``<dir>/<mode>/loss.json`` and ``grads.safetensors``."""
    out = tmp_path_factory.mktemp("global-batch")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=run_rank, args=(r, 2, MODES, str(out / "store"), str(out))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    assert [p.exitcode for p in procs] == [0, 0]
    return out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", MODES)
def test_two_ranks_equal_one_process_on_the_concatenated_batch(mode, two_ranks) -> None:
    distributed = json.loads((two_ranks / mode / "loss.json").read_text())
    grads = load_file(str(two_ranks / mode / "grads.safetensors"))

    net = build(mode)  # one process, no gathering: the reference
    pixels, labels = fixed_batch(2)
    out = net(pixels, labels)
    out["loss"].backward()
    assert distributed["loss"] == pytest.approx(float(out["objective"]), rel=1e-5, abs=1e-5)
    reference = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    assert sorted(grads) == sorted(reference)
    assert any(n.startswith("alpa.") for n in grads)
    for name, g in reference.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-5, msg=name)
    # The losses of the two halves alone differ from the global one: the gathering matters.
    half = net(pixels[:12], labels[:12])
    assert abs(float(half["objective"]) - float(out["objective"])) > 1e-3


def test_batchnorm_refreshed_on_each_ranks_share_equals_one_refresh_over_all(two_ranks) -> None:
    """Each rank refreshes on its own batches, then the statistics merge: the result is the one-process
    refresh over every rank's batches, and every rank holds the same bits."""
    ranks = [load_file(str(two_ranks / f"batchnorm-rank{r}.safetensors")) for r in range(2)]
    reference = dict(refreshed(bn_batches(2)).named_buffers())
    alone = dict(refreshed(bn_batches(2)[:2]).named_buffers())  # rank 0's share only
    stats = [n for n in reference if n.endswith(("running_mean", "running_var"))]
    assert stats and sorted(ranks[0]) == sorted(reference)
    for name in stats:
        torch.testing.assert_close(ranks[0][name], reference[name], rtol=1e-5, atol=1e-6, msg=name)
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    # Rank 0's share alone differs: the merge is what makes them equal.
    assert max(float((alone[n] - reference[n]).abs().max()) for n in stats) > 1e-3
