"""Training augmentation as batched tensor ops on the worker's device.

Input and output are pixel-space batches ``[B, 3, H, W]`` in [0, 1]; :class:`~ood_audit.models.TapModel`
normalises afterwards. Every random draw comes from the ``generator`` passed in, so a run is reproducible
given its seed.

- ``ce``: the CIFAR recipe (pad-and-crop, flip) for small images, random resized crop and flip otherwise.
- the contrastive modes (SPEC §8, the SupCon/MODE reference recipe): random resized crop with scale
  0.2–1 at every input size, flip, colour jitter (0.4, 0.4, 0.4, 0.1) with p = 0.8 and random greyscale
  with p = 0.2. The colour operations are torchvision's own functional ones, applied per image in a
  random order, as ``ColorJitter`` does; only the random draws are ours, so they follow the run's seed.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as TF

JITTER = (0.4, 0.4, 0.4, 0.1)   # brightness, contrast, saturation, hue (SPEC §8)
JITTER_P = 0.8
GREYSCALE_P = 0.2
CONTRASTIVE_SCALE = (0.2, 1.0)


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


def colour_jitter(x: torch.Tensor, generator: torch.Generator, strength: tuple[float, float, float, float] = JITTER,
                  p: float = JITTER_P) -> torch.Tensor:
    """torchvision's ColorJitter per image with probability ``p``: brightness, contrast and saturation
    factors uniform in [1 - s, 1 + s], hue shift uniform in [-h, h], the four in a random order."""
    b, s_b, s_c, s_s, s_h = x.shape[0], *strength
    apply = torch.rand(b, generator=generator) < p
    factors = torch.stack([_uniform(b, 1 - s_b, 1 + s_b, generator), _uniform(b, 1 - s_c, 1 + s_c, generator),
                           _uniform(b, 1 - s_s, 1 + s_s, generator), _uniform(b, -s_h, s_h, generator)], dim=1)
    orders = torch.argsort(torch.rand(b, 4, generator=generator), dim=1)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    out = x.clone()
    for i in torch.nonzero(apply).flatten().tolist():
        img = x[i]
        for op in orders[i].tolist():
            img = ops[op](img, float(factors[i, op]))
        out[i] = img
    return out


def random_greyscale(x: torch.Tensor, generator: torch.Generator, p: float = GREYSCALE_P) -> torch.Tensor:
    grey = (torch.rand(x.shape[0], generator=generator) < p).to(x.device)
    return torch.where(grey[:, None, None, None], TF.rgb_to_grayscale(x, num_output_channels=3), x)


def contrastive_view(x: torch.Tensor, *, size: int, generator: torch.Generator) -> torch.Tensor:
    """One view for SupCon/ALPA (SPEC §8): resized crop (scale 0.2–1), flip, colour jitter, greyscale."""
    x = random_resized_crop(x, size, generator, scale=CONTRASTIVE_SCALE)
    x = random_hflip(x, generator)
    return random_greyscale(colour_jitter(x, generator), generator)


def augment(x: torch.Tensor, *, size: int, small_input: bool, generator: torch.Generator) -> torch.Tensor:
    """One augmented view: pad-and-crop (small images) or random resized crop (large ones), then a flip."""
    if small_input:
        x = random_crop_with_padding(x, padding=max(1, size // 8), generator=generator)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    else:
        x = random_resized_crop(x, size, generator)
    return random_hflip(x, generator)

