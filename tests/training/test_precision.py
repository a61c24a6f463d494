"""The training forward's precision (``--precision``): bf16 autocast for the network only, fp32 for the rest."""
from __future__ import annotations

import pytest
import torch

from ood_audit.errors import ConfigError
from ood_audit.models import build_model
from ood_audit.models.precision import training_precision
from ood_audit.training import TrainConfig
from ood_audit.training.net import TrainNet


def test_precision_flag_is_checked_and_auto_resolves_to_a_policy():
    with pytest.raises(ConfigError, match="--precision 'fp8'"):
        TrainConfig(data="d", output="o.safetensors", precision="fp8").validate()
    assert training_precision("float32", "cpu") == "float32"
    assert training_precision("bfloat16", "cpu") == "bfloat16"
    assert training_precision("auto", "cpu") in ("float32", "bfloat16")


@pytest.mark.parametrize("mode", ["ce", "joint"])
def test_a_bf16_step_keeps_fp32_parameters_losses_and_gradients(mode):
    torch.manual_seed(0)
    pixels, labels = torch.rand(8, 3, 32, 32), torch.arange(8) % 4
    losses = {}
    for precision in ("float32", "bfloat16"):
        torch.manual_seed(1)
        net = TrainNet(build_model("resnet18", 4, small_input=True), mode, image_size=32, mean=(0.5,) * 3,
                       std=(0.25,) * 3, precision=precision)
        net.train()
        out = net(pixels, labels)
        out["loss"].backward()
        assert out["loss"].dtype == torch.float32
        grads = [p.grad for p in net.parameters() if p.requires_grad and p.grad is not None]
        assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
        assert all(p.dtype == torch.float32 for p in net.parameters())
        losses[precision] = out["loss"].item()
    # bf16 keeps 8 bits of mantissa: the same step's loss agrees with fp32's to a few percent over a ResNet18's
    # depth. A broken mixed-precision path (bf16 statistics that overflow, a head fed bf16) would not.
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.05)
