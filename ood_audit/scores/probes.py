"""Pseudo-OOD probes made from ID images, for checking a block's FeatureNorm before trusting it (SPEC §3–4).

Every probe maps pixel batches ``x`` [N, C, H, W] in [0, 1] (before normalisation) with their global
image ``indices`` [N] and a ``seed`` to a batch of the same shape, still in [0, 1]. Image i's random
draws come from a generator seeded by (seed, indices[i], probe), so a probe gives the same result for an
image whichever shard or batch it lands in (``mix`` also depends on the batch: see its docstring).

The paper's jigsaw (SPEC §3) is one probe among several. It alone can mislead: the jigsaw of a
low-texture image (white strokes on black) still looks like ID, so deep blocks "win" its ratio. The
other probes stand for other kinds of OOD, and block selection looks at all of them.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ood_audit.scores.jigsaw import jigsaw_indexed

Probe = Callable[..., torch.Tensor]


def probe_generator(seed: int, index: int, salt: int) -> torch.Generator:
    """A generator that depends only on (seed, image index, probe salt)."""
    key = ((int(seed) * 1_000_003 + int(index)) * 8_191 + int(salt)) % (2**63 - 1)
    return torch.Generator().manual_seed(key)


def _check(x: torch.Tensor, indices: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"probes expect [N, C, H, W] pixels, got shape {tuple(x.shape)}")
    if len(indices) != x.shape[0]:
        raise ValueError(f"{len(indices)} indices for {x.shape[0]} images")


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return float(low + (high - low) * torch.rand(1, generator=g))


def jigsaw_probe(x: torch.Tensor, indices: torch.Tensor, seed: int) -> torch.Tensor:
    """Jigsaw-shuffled images (SPEC §3, the paper's pseudo-OOD): ID parts in a scrambled layout.

    Stands for OOD that shares ID's local statistics but not its global arrangement.
    """
    _check(x, indices)
    return jigsaw_indexed(x, indices, seed, 3)


def pixel_shuffle(x: torch.Tensor, indices: torch.Tensor, seed: int, patch: int = 4) -> torch.Tensor:
    """Pixels permuted inside each ``patch``×``patch`` cell (one permutation per cell, shared by the channels).

    Keeps each cell's colours and brightness but destroys edges and strokes: stands for fine-grained,
    noise-like texture with ID's colour statistics. A remainder strip narrower than ``patch`` is unchanged.
    """
    _check(x, indices)
    n, c, h, w = x.shape
    gh, gw = h // patch, w // patch
    out = x.clone()
    if gh == 0 or gw == 0:
        return out
    body = x[:, :, : gh * patch, : gw * patch].reshape(n, c, gh, patch, gw, patch).permute(0, 2, 4, 1, 3, 5)
    body = body.reshape(n, gh * gw, c, patch * patch)
    cells = gh * gw
    perms = torch.stack([torch.argsort(torch.rand(cells, patch * patch, generator=probe_generator(seed, int(i), 2)),
                                       dim=1) for i in indices]).to(x.device)
    shuffled = torch.gather(body, 3, perms[:, :, None, :].expand(-1, -1, c, -1))
    shuffled = shuffled.reshape(n, gh, gw, c, patch, patch).permute(0, 3, 1, 4, 2, 5)
    out[:, :, : gh * patch, : gw * patch] = shuffled.reshape(n, c, gh * patch, gw * patch)
    return out


def crop_upscale(x: torch.Tensor, indices: torch.Tensor, seed: int,
                 fraction: tuple[float, float] = (0.25, 0.5)) -> torch.Tensor:
    """A random square crop (side a ``fraction`` of the image's shorter side) upscaled bilinearly to full size.

    Stands for texture without global shape: ID's local appearance at the wrong scale, with no whole object.
    """
    _check(x, indices)
    n, _, h, w = x.shape
    outs = []
    for k, i in enumerate(indices):
        g = probe_generator(seed, int(i), 3)
        side = max(2, int(round(_uniform(g, *fraction) * min(h, w))))
        top = int(torch.randint(0, h - side + 1, (1,), generator=g))
        left = int(torch.randint(0, w - side + 1, (1,), generator=g))
        crop = x[k : k + 1, :, top : top + side, left : left + side]
        outs.append(F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False))
    return torch.cat(outs).clamp_(0.0, 1.0) if outs else x.clone()


def blur(x: torch.Tensor, indices: torch.Tensor, seed: int, sigma: tuple[float, float] = (1.0, 2.5)) -> torch.Tensor:
    """Gaussian blur with a random σ (in pixels) per image, reflect-padded.

    Stands for low-detail inputs: out-of-focus, heavily compressed or upsampled-from-tiny images.
    """
    _check(x, indices)
    n, c, h, w = x.shape
    outs = []
    for k, i in enumerate(indices):
        s = _uniform(probe_generator(seed, int(i), 4), *sigma)
        r = max(1, min(int(3 * s + 0.5), (min(h, w) - 1) // 2))
        t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
        k1 = torch.exp(-0.5 * (t / s) ** 2)
        k1 = k1 / k1.sum()
        img = F.pad(x[k : k + 1], (r, r, r, r), mode="reflect") if r > 0 else x[k : k + 1]
        img = F.conv2d(img, k1.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        img = F.conv2d(img, k1.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
        outs.append(img)
    return torch.cat(outs).clamp_(0.0, 1.0) if outs else x.clone()


def noise(x: torch.Tensor, indices: torch.Tensor, seed: int, std: tuple[float, float] = (0.1, 0.3)) -> torch.Tensor:
    """Additive Gaussian noise with a random standard deviation per image, clipped to [0, 1].

    Stands for sensor noise and texture-rich surfaces: high-frequency energy that ID images lack.
    """
    _check(x, indices)
    outs = []
    for k, i in enumerate(indices):
        g = probe_generator(seed, int(i), 5)
        s = _uniform(g, *std)
        outs.append(x[k : k + 1] + s * torch.randn(x[k : k + 1].shape, generator=g).to(x.device, x.dtype))
    return torch.cat(outs).clamp_(0.0, 1.0) if outs else x.clone()


def mix(x: torch.Tensor, indices: torch.Tensor, seed: int, labels: torch.Tensor | None = None,
        weight: tuple[float, float] = (0.4, 0.6)) -> torch.Tensor:
    """λ·x_i + (1−λ)·x_j, λ drawn from ``weight``: two ID images superimposed, neither one class.

    Stands for ambiguous inputs that mix ID content (overlaps, double exposures, collages). The partner
    j is another image *of the same batch*, drawn with image i's generator: with ``labels`` one of a
    different class, without labels (the usual case at calibration time, where labels are not read)
    simply a different image. The result is deterministic for a given batch and seed, but, unlike the
    other probes, changes when an image lands in a batch with other images. An image with no eligible
    partner (a batch of one, or a batch of one class) is mixed with its own 180° rotation.
    """
    _check(x, indices)
    n = x.shape[0]
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} images")
    lab = torch.as_tensor(labels) if labels is not None else None
    outs = []
    for k, i in enumerate(indices):
        g = probe_generator(seed, int(i), 6)
        lam = _uniform(g, *weight)
        pos = torch.arange(n)
        ok = pos != k if lab is None else lab != lab[k]
        choices = pos[ok]
        if choices.numel():
            partner = x[int(choices[int(torch.randint(0, choices.numel(), (1,), generator=g))])]
        else:
            partner = x[k].flip(-1, -2)
        outs.append((lam * x[k] + (1.0 - lam) * partner).unsqueeze(0))
    return torch.cat(outs).clamp_(0.0, 1.0) if outs else x.clone()


PROBES: dict[str, Probe] = {
    "jigsaw": jigsaw_probe,
    "pixel_shuffle": pixel_shuffle,
    "crop_upscale": crop_upscale,
    "blur": blur,
    "noise": noise,
    "mix": mix,
}
DEFAULT_PROBES: tuple[str, ...] = tuple(PROBES)


def check_probes(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The probe names, validated (``jigsaw`` first when present); raises ValueError naming the bad one."""
    bad = [p for p in names if p not in PROBES]
    if bad:
        raise ValueError(f"unknown probe {bad[0]!r}; choose from {', '.join(PROBES)}")
    if not names:
        raise ValueError("give at least one probe")
    uniq = list(dict.fromkeys(names))
    return tuple(sorted(uniq, key=lambda p: p != "jigsaw"))


def apply_probe(name: str, x: torch.Tensor, indices: torch.Tensor, seed: int,
                labels: torch.Tensor | None = None) -> torch.Tensor:
    """Run probe ``name`` (see :data:`PROBES`) on a pixel batch."""
    if name not in PROBES:
        raise ValueError(f"unknown probe {name!r}; choose from {', '.join(PROBES)}")
    if name == "mix":
        return mix(x, indices, seed, labels=labels)
    return PROBES[name](x, indices, seed)
