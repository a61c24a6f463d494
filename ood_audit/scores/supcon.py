"""Supervised contrastive loss (Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020,
eq. 2, L^sup_out; SPEC §8 `joint` mode), and the multi-positive contrastive form it shares with
ALPA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ood_audit.errors import DataError


def multi_positive_contrastive(logits: torch.Tensor, labels: torch.Tensor, first_anchor: int = 0) -> torch.Tensor:
    """Mean over anchors i of

        −(1/|P(i)|) Σ_{p∈P(i)} log( exp ℓ_ip / Σ_{j≠i} exp ℓ_ij )

    for a logit matrix ℓ [N, N]. Self pairs are excluded from numerator and denominator;
    P(i) = {j ≠ i : labels_j = labels_i}; |P(i)| is replaced by 1 when 0, so an anchor without
    positives contributes 0 (it still counts in the mean over N).

    ``logits`` may also hold only the rows ``first_anchor … first_anchor + A − 1`` of ℓ ([A, N]); the
    result is then the mean over those A anchors. This is how a DDP rank computes its share of a loss
    over the global batch: the mean of the ranks' equal shares is the full loss.
    """
    a, n = logits.shape if logits.dim() == 2 else (-1, -1)
    if a < 0 or not 0 <= first_anchor <= n - a:
        raise DataError(f"logits must be rows [{first_anchor}, {first_anchor}+A) of an [N, N] matrix, "
                        f"got shape {tuple(logits.shape)}")
    labels = torch.as_tensor(labels, device=logits.device).reshape(-1)
    if labels.shape[0] != n:
        raise DataError(f"labels has {labels.shape[0]} entries but there are {n} samples")
    if n < 2:
        return logits.sum() * 0.0  # no pairs at all; keep the graph connected
    rows = torch.arange(first_anchor, first_anchor + a, device=logits.device)
    self_pair = rows.unsqueeze(1) == torch.arange(n, device=logits.device).unsqueeze(0)
    others = logits.masked_fill(self_pair, float("-inf"))
    log_prob = others - others.logsumexp(dim=1, keepdim=True)
    positive = (labels[rows].unsqueeze(1) == labels.unsqueeze(0)) & ~self_pair
    summed = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    return (-summed / positive.sum(dim=1).clamp_min(1)).mean()


SUPCON_BASE_TEMPERATURE = 0.07


def supcon_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    base_temperature: float | None = SUPCON_BASE_TEMPERATURE,
    anchors: slice | None = None,
) -> torch.Tensor:
    """SupCon (Khosla et al. 2020, eq. 2): with z_i = embeddings_i/‖embeddings_i‖ and
    ℓ_ij = z_i·z_j / τ (τ = ``temperature``),

        L = (τ/τ_base) · mean_i [ −(1/|P(i)|) Σ_{p∈P(i)} log( exp ℓ_ip / Σ_{j≠i} exp ℓ_ij ) ]

    Two views of an image are two rows with the same label. τ/τ_base (τ_base = 0.07) is the reference
    code's factor (SPEC §8); ``base_temperature=None`` leaves it out. ``anchors`` (a slice of rows)
    restricts the mean to those anchors, each still contrasted with all N rows.
    """
    if embeddings.dim() != 2:
        raise DataError(f"embeddings must be [N, d], got shape {tuple(embeddings.shape)}")
    if temperature <= 0 or (base_temperature is not None and base_temperature <= 0):
        raise DataError(f"temperature and base_temperature must be > 0, got {temperature}, {base_temperature}")
    z = F.normalize(embeddings, dim=1)
    rows = z if anchors is None else z[anchors]
    first = 0 if anchors is None else range(len(z))[anchors].start
    loss = multi_positive_contrastive(rows @ z.T / temperature, labels, first_anchor=first)
    return loss if base_temperature is None else loss * (temperature / base_temperature)
