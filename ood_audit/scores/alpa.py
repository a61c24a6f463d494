"""ALPA, attention-based local propagation (Zhang et al., "From Global to Local: Multi-scale
Out-of-distribution Detection", TIP 2023, section "Attention-based Local Propagation"; SPEC §8).
A training loss only: the projectors are never used at scoring time.

For images a, b with local features (the P = H·W cells of the last-stage map) projected to
Q, K, V ∈ R^{P×e}:

    B̃_a = softmax_rows(Q_a K_bᵀ / √e) V_b          (b aligned onto a's positions)
    Ã_b = softmax_rows(Q_b K_aᵀ / √e) V_a
    S(a, b) = mean_p [ cos(V_a[p], B̃_a[p]) + cos(V_b[p], Ã_b[p]) ]          ∈ [−2, 2]

    ℓ_ij = S(i, j) · inv_temp   (inv_temp = 10)
    L_ALPA = mean_i [ −(1/|P(i)|) Σ_{p∈P(i)} log( exp ℓ_ip / Σ_{j≠i} exp ℓ_ij ) ]

with self pairs excluded, P(i) every j ≠ i of the same label, and |P(i)| → 1 when 0.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from ood_audit.errors import DataError
from ood_audit.scores.supcon import multi_positive_contrastive

ALPA_INV_TEMP = 10.0
ALPA_EMBED_DIM = 80
_COS_EPS = 1e-8


def _one_way_alignment(
    q_a: torch.Tensor, v_a: torch.Tensor, k_b: torch.Tensor, v_b: torch.Tensor
) -> torch.Tensor:
    """T[a, b] = mean_p cos(V_a[p], [softmax_rows(Q_a K_bᵀ/√e) V_b][p]) for a chunk of anchors
    a and a chunk of candidates b; [A, B]. S(a, b) = T[a, b] + T[b, a]."""
    scale = q_a.shape[-1] ** -0.5
    attention = (torch.einsum("ape,bqe->abpq", q_a, k_b) * scale).softmax(dim=-1)
    aligned = torch.einsum("abpq,bqe->abpe", attention, v_b)  # B̃_a for every (a, b)
    dot = torch.einsum("ape,abpe->abp", v_a, aligned)
    norms = v_a.norm(dim=-1).clamp_min(_COS_EPS).unsqueeze(1) * aligned.norm(dim=-1).clamp_min(
        _COS_EPS
    )
    return (dot / norms).mean(dim=-1)


def _one_way_blocks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, anchors: range, candidates: range,
                    chunk_size: int, use_checkpoint: bool) -> torch.Tensor:
    """T[anchors, candidates] in [chunk_size × chunk_size] blocks."""
    rows = []
    for a0 in range(anchors.start, anchors.stop, chunk_size):
        a1 = min(a0 + chunk_size, anchors.stop)
        blocks = []
        for b0 in range(candidates.start, candidates.stop, chunk_size):
            b1 = min(b0 + chunk_size, candidates.stop)
            args = (q[a0:a1], v[a0:a1], k[b0:b1], v[b0:b1])
            if use_checkpoint:
                blocks.append(_checkpoint(_one_way_alignment, *args, use_reentrant=False))
            else:
                blocks.append(_one_way_alignment(*args))
        rows.append(torch.cat(blocks, dim=1))
    return torch.cat(rows, dim=0)


def alpa_similarity(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    chunk_size: int = 64,
    use_checkpoint: bool | None = None,
    anchors: slice | None = None,
) -> torch.Tensor:
    """The pairwise ALPA similarity S [N, N] from projections q, k, v [N, P, e].

    Computed in [chunk_size × chunk_size] blocks of the one-way matrix T (S = T + Tᵀ), so the
    working memory is O(chunk_size²·P·(P + e)). With ``use_checkpoint`` (default: whenever
    gradients are being recorded) each block is recomputed in backward instead of kept, so the
    memory held for backward is O(N²) too. With ``anchors`` (a slice of rows) only S[anchors, :] is
    computed, from T[anchors, :] and T[:, anchors]: a DDP rank's share of the global batch.
    """
    if chunk_size < 1:
        raise DataError(f"chunk_size must be >= 1, got {chunk_size}")
    if use_checkpoint is None:
        use_checkpoint = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    every = range(q.shape[0])
    if anchors is None:
        one_way = _one_way_blocks(q, k, v, every, every, chunk_size, use_checkpoint)
        return one_way + one_way.T
    rows = every[anchors]
    if rows.step != 1 or len(rows) == 0:
        raise DataError(f"anchors must be a non-empty contiguous slice of the {len(every)} rows, got {anchors}")
    return (_one_way_blocks(q, k, v, rows, every, chunk_size, use_checkpoint)
            + _one_way_blocks(q, k, v, every, rows, chunk_size, use_checkpoint).T)


def alpa_loss_from_projections(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    labels: torch.Tensor,
    inv_temp: float = ALPA_INV_TEMP,
    chunk_size: int = 64,
    use_checkpoint: bool | None = None,
    anchors: slice | None = None,
) -> torch.Tensor:
    """L_ALPA (SPEC §8) from projections q, k, v [N, P, e] and labels [N]; the two augmented
    views of an image are two rows with the same label. ℓ_ij = S(i, j)·inv_temp. With ``anchors``,
    the mean over those rows only (each still contrasted with all N)."""
    if q.dim() != 3 or q.shape != k.shape or q.shape != v.shape:
        raise DataError(
            "q, k, v must all be [N, P, e] with the same shape, got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    similarity = alpa_similarity(q, k, v, chunk_size=chunk_size, use_checkpoint=use_checkpoint, anchors=anchors)
    first = 0 if anchors is None else range(q.shape[0])[anchors].start
    return multi_positive_contrastive(similarity * inv_temp, labels, first_anchor=first)


def _projector(in_channels: int, embed_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_channels, in_channels, bias=False),
        nn.ReLU(),
        nn.Linear(in_channels, embed_dim, bias=False),
    )


class ALPAHead(nn.Module):
    """The three ALPA projectors φ_q, φ_k, φ_v (each C→C, ReLU, C→e, no bias; SPEC §8) and the
    loss. ``forward(fmap [N, C, H, W], labels [N])`` returns L_ALPA over the P = H·W cells."""

    def __init__(
        self,
        in_channels: int,
        embed_dim: int = ALPA_EMBED_DIM,
        inv_temp: float = ALPA_INV_TEMP,
        chunk_size: int = 64,
    ) -> None:
        super().__init__()
        self.phi_q = _projector(in_channels, embed_dim)
        self.phi_k = _projector(in_channels, embed_dim)
        self.phi_v = _projector(in_channels, embed_dim)
        self.inv_temp = float(inv_temp)
        self.chunk_size = int(chunk_size)

    def project(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q, K, V [N, P, e] of a map [N, C, H, W] (cells flattened row-major)."""
        if fmap.dim() != 4:
            raise DataError(f"ALPA needs a last-stage map [N, C, H, W], got {tuple(fmap.shape)}")
        cells = fmap.flatten(2).transpose(1, 2)
        return self.phi_q(cells), self.phi_k(cells), self.phi_v(cells)

    def forward(self, fmap: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project(fmap)
        return alpa_loss_from_projections(
            q, k, v, labels, inv_temp=self.inv_temp, chunk_size=self.chunk_size
        )
