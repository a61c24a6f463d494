"""SupCon and ALPA over the global batch (SPEC §8): two real DDP ranks (gloo) give the single-process loss
on the concatenated batch, and DDP's averaged gradients equal the single-process gradients."""
from __future__ import annotations

import json
import multiprocessing as mp

import pytest
import torch
from safetensors.torch import load_file

from tests.training.global_batch_case import build, fixed_batch, run_rank


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["joint", "alpa-finetune"])
def test_two_ranks_equal_one_process_on_the_concatenated_batch(mode, tmp_path) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=run_rank, args=(r, 2, mode, str(tmp_path / "store"), str(tmp_path)))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(150)
    assert [p.exitcode for p in procs] == [0, 0]
    distributed = json.loads((tmp_path / "loss.json").read_text())
    grads = load_file(str(tmp_path / "grads.safetensors"))

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
