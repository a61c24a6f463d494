"""The precision policy: how every forward pass of a bundle's model runs, in calibration and in the scan.

Thresholds and percentiles are quantiles of held-out scores, so a scan only keeps the calibrated ID
flag rate when it computes scores the way calibration did. The policy is chosen at calibration,
recorded in the bundle, and applied by every forward pass that touches the bundle (bank images,
held-out images, scanned images) on whatever device runs it:

- ``float32`` (default): activations in fp32 everywhere, TF32 off on CUDA. A CPU node and a GPU node
  then differ only by fp32 rounding of different kernels, far below any threshold margin.
- ``bfloat16``: the model runs under bf16 autocast on both sides (CPU autocast too), so thresholds come
  from the same bf16 activations the scan sees. Faster (about 2.5x on a CPU with AMX, more on a GPU)
  but bf16's 8-bit mantissa makes kernels of different devices disagree visibly.

In both, every threshold-bearing score is computed in fp32 (or fp64) from the activations: the score
formulas cast their inputs up (:mod:`ood_audit.scores`).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Literal

import torch

from ood_audit.errors import ConfigError

Activations = Literal["float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16")
DEFAULT_PRECISION: Activations = "float32"


def training_precision(requested: str, device: str | torch.device) -> Activations:
    """The activations a training step runs in: ``requested``, or for ``auto`` bf16 autocast where the device
    multiplies bf16 natively (a CUDA GPU with bf16, a CPU with AMX tiles) and fp32 elsewhere.

    Mixed precision: parameters, optimizer state and losses stay fp32; only the network's forward runs in
    bf16. On a CPU with AMX a ResNet18 step costs about 2.4x less CPU time; on a CPU without it bf16 is
    emulated and slower, so ``auto`` keeps fp32 there. Validation and every scoring pass use the bundle's
    policy above, not this one."""
    if requested != "auto":
        return check_precision(requested)
    dev = torch.device(device)
    if dev.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    try:  # private, but the one place torch says whether this CPU has AMX; absent: assume not
        fast = bool(torch.cpu._is_amx_tile_supported()) and bool(torch.cpu._is_avx512_bf16_supported())
    except Exception:  # noqa: BLE001
        fast = False
    return "bfloat16" if fast else "float32"


def check_precision(name: str) -> Activations:
    if name not in PRECISIONS:
        raise ConfigError(f"precision {name!r} is unknown; choose one of {', '.join(PRECISIONS)}")
    return name  # type: ignore[return-value]


@contextlib.contextmanager
def forward_precision(activations: str, device: str | torch.device) -> Iterator[None]:
    """Run the enclosed forward pass under ``activations`` on ``device`` (see the module docstring)."""
    dev = torch.device(device)
    if check_precision(activations) == "bfloat16":
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            yield
        return
    if dev.type != "cuda":
        yield
        return
    # fp32 means fp32: cuDNN convolutions use TF32 by default on Ampere and later.
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
