"""Jigsaw-puzzle pseudo-OOD images (Yu et al., CVPR 2023, §3.2; SPEC §3)."""
from __future__ import annotations

import torch


def jigsaw(x: torch.Tensor, grid: int = 3, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shuffle a ``grid``×``grid`` tiling of each image, in pixel space [0, 1] (before normalisation).

    Tiles are s_h = ⌊H/grid⌋ by s_w = ⌊W/grid⌋; each image gets one uniformly random permutation drawn
    from ``generator``. The output starts as zeros and only the top-left grid·s_h × grid·s_w area is
    filled, so any remainder strip stays 0. No rotation, flip or other augmentation.
    """
    if x.dim() != 4:
        raise ValueError(f"jigsaw expects [N, C, H, W], got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    sh, sw = h // grid, w // grid
    if sh == 0 or sw == 0:
        raise ValueError(f"image {h}x{w} is too small for a {grid}x{grid} jigsaw")
    g = grid * grid
    # [N, C, grid, sh, grid, sw] -> [N, g, C, sh, sw]
    tiles = x[:, :, : grid * sh, : grid * sw].reshape(n, c, grid, sh, grid, sw).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(n, g, c, sh, sw)
    perm = torch.stack([torch.randperm(g, generator=generator) for _ in range(n)]).to(x.device)
    shuffled = torch.gather(tiles, 1, perm.view(n, g, 1, 1, 1).expand(-1, -1, c, sh, sw))
    body = shuffled.reshape(n, grid, grid, c, sh, sw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, grid * sh, grid * sw)
    out = torch.zeros_like(x)
    out[:, :, : grid * sh, : grid * sw] = body
    return out


def index_generator(seed: int, index: int) -> torch.Generator:
    """A generator that depends only on (seed, image index), so shards reproduce one-process results."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(index)) % (2**63 - 1))


def jigsaw_indexed(x: torch.Tensor, indices: torch.Tensor, seed: int, grid: int = 3) -> torch.Tensor:
    """:func:`jigsaw` where image i's permutation is drawn from ``index_generator(seed, indices[i])``."""
    return torch.cat([jigsaw(x[i : i + 1], grid, index_generator(seed, int(j))) for i, j in enumerate(indices)])
