"""The global batch of the contrastive modes: every DDP rank's projections, gathered with gradients.

SupCon and ALPA contrast every view with every other view of the batch (SPEC §8, N = 2B), and the
reference trains them on one process, so B is the global batch. Under DDP each rank gathers the
projections of all ranks (``torch.distributed.nn.functional.all_gather``, whose backward sends each
rank the gradient that the other ranks' losses put on its rows) and computes the loss of its *own*
anchors against all N rows. Every rank holds an equal share, so the mean of the shares is the
single-process loss, and DDP's averaging of the parameter gradients gives exactly its gradient:
(1/W) Σ_r ∂L_r/∂θ = ∂/∂θ (1/W) Σ_r L_r = ∂L/∂θ. No rank computes another rank's anchors twice.

The gathers run on a process group of their own, so they never interleave with DDP's gradient
all-reduce on the default group.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class GlobalBatch:
    """This rank's place in the global batch. ``world == 1`` (no DDP) makes every method the identity."""

    rank: int = 0
    world: int = 1
    group: Any = None

    @classmethod
    def create(cls, rank: int, world: int) -> "GlobalBatch":
        """Call on every rank at the same point (it creates a process group when ``world > 1``)."""
        return cls(rank, world, dist.new_group() if world > 1 else None)

    def anchors(self, local_rows: int) -> slice | None:
        """This rank's rows in the gathered batch (ranks are concatenated in rank order)."""
        if self.world == 1:
            return None
        return slice(self.rank * local_rows, (self.rank + 1) * local_rows)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, ...]`` on each rank -> ``[W·n, ...]``, differentiable with respect to this rank's rows."""
        if self.world == 1:
            return x
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(x.contiguous(), group=self.group), dim=0)

    def gather_labels(self, labels: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return labels
        parts = [torch.empty_like(labels) for _ in range(self.world)]
        dist.all_gather(parts, labels.contiguous(), group=self.group)
        return torch.cat(parts)
