"""Supervised contrastive loss (Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020,
eq. 2, L^sup_out; SPEC §8 `joint` mode), and the multi-positive contrastive form it shares with
ALPA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ood_audit.errors import DataError


def multi_positive_contrastive(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over anchors i of

        −(1/|P(i)|) Σ_{p∈P(i)} log( exp ℓ_ip / Σ_{j≠i} exp ℓ_ij )

    for a logit matrix ℓ [N, N]. Self pairs are excluded from numerator and denominator;
    P(i) = {j ≠ i : labels_j = labels_i}; |P(i)| is replaced by 1 when 0, so an anchor without
    positives contributes 0 (it still counts in the mean over N).
    """
    n = logits.shape[0]
    if logits.dim() != 2 or logits.shape[1] != n:
        raise DataError(f"logits must be a square [N, N] matrix, got {tuple(logits.shape)}")
    labels = torch.as_tensor(labels, device=logits.device).reshape(-1)
    if labels.shape[0] != n:
        raise DataError(f"labels has {labels.shape[0]} entries but there are {n} samples")
    if n < 2:
        return logits.sum() * 0.0  # no pairs at all; keep the graph connected
    self_pair = torch.eye(n, dtype=torch.bool, device=logits.device)
    others = logits.masked_fill(self_pair, float("-inf"))
    log_prob = others - others.logsumexp(dim=1, keepdim=True)
    positive = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~self_pair
    summed = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    return (-summed / positive.sum(dim=1).clamp_min(1)).mean()


def supcon_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """SupCon (Khosla et al. 2020, eq. 2): with z_i = embeddings_i/‖embeddings_i‖ and
    ℓ_ij = z_i·z_j / τ (τ = ``temperature``),

        L = mean_i [ −(1/|P(i)|) Σ_{p∈P(i)} log( exp ℓ_ip / Σ_{j≠i} exp ℓ_ij ) ]

    Two views of an image are two rows with the same label. No τ/τ_base rescaling.
    """
    if embeddings.dim() != 2:
        raise DataError(f"embeddings must be [N, d], got shape {tuple(embeddings.shape)}")
    if temperature <= 0:
        raise DataError(f"temperature must be > 0, got {temperature}")
    z = F.normalize(embeddings, dim=1)
    return multi_positive_contrastive(z @ z.T / temperature, labels)
