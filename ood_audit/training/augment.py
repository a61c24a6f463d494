"""Training augmentation as batched tensor ops on the worker's device.

Input and output are pixel-space batches ``[B, 3, H, W]`` in [0, 1]; :class:`~ood_audit.models.TapModel`
normalises afterwards. Every random draw comes from the ``generator`` passed in, so a run is reproducible
given its seed.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def random_crop_with_padding(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` on every side and cut a random ``H×W`` window per image (the CIFAR recipe)."""
    if padding <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, :, None]      # [B, H, 1]
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, :]     # [B, 1, W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_resized_crop(x: torch.Tensor, size: int, generator: torch.Generator,
                        scale: tuple[float, float] = (0.25, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """A random box per image (area fraction in ``scale``, aspect ratio log-uniform in ``ratio``), resized
    bilinearly to ``size×size`` in one batched ``roi_align``."""
    b, _, h, w = x.shape
    area = _uniform(b, *scale, generator) * h * w
    log_r = _uniform(b, math.log(ratio[0]), math.log(ratio[1]), generator)
    aspect = torch.exp(log_r)
    bw = torch.sqrt(area * aspect).clamp(1.0, float(w))
    bh = torch.sqrt(area / aspect).clamp(1.0, float(h))
    x0 = torch.rand(b, generator=generator) * (w - bw)
    y0 = torch.rand(b, generator=generator) * (h - bh)
    boxes = torch.stack([torch.arange(b, dtype=torch.float32), x0, y0, x0 + bw, y0 + bh], dim=1)
    out = roi_align(x, boxes.to(device=x.device, dtype=x.dtype), output_size=(size, size),
                    spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return out.clamp_(0.0, 1.0)


def random_hflip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    flip = (torch.rand(x.shape[0], generator=generator) < p).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def augment(x: torch.Tensor, *, size: int, small_input: bool, generator: torch.Generator) -> torch.Tensor:
    """One augmented view: pad-and-crop (small images) or random resized crop (large ones), then a flip."""
    if small_input:
        x = random_crop_with_padding(x, padding=max(1, size // 8), generator=generator)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    else:
        x = random_resized_crop(x, size, generator)
    return random_hflip(x, generator)


def to_pixels(batch_uint8: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``[B, H, W, 3]`` uint8 -> ``[B, 3, H, W]`` float in [0, 1] on ``device``."""
    return batch_uint8.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
