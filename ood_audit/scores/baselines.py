"""Logit-based baselines (SPEC §6) and their selected-norm variants (SPEC §5). All higher = ID."""
from __future__ import annotations

import torch


def msp(logits: torch.Tensor) -> torch.Tensor:
    """Maximum softmax probability (Hendrycks & Gimpel, ICLR 2017): max_k softmax(logits)_k."""
    return logits.float().softmax(dim=1).amax(dim=1)


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy (Liu et al., NeurIPS 2020): T · logsumexp(logits / T)."""
    return temperature * torch.logsumexp(logits.float() / temperature, dim=1)


def maxlogit(logits: torch.Tensor) -> torch.Tensor:
    """Maximum logit (Hendrycks et al., ICML 2022): max_k logits_k."""
    return logits.float().amax(dim=1)


def norm_replaced_logits(penultimate: torch.Tensor, fn_selected: torch.Tensor,
                         weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """logits' = W f' + b with f' = FN_sel · f/‖f‖ (SPEC §5): keep f's direction, take the block's norm."""
    f = penultimate.float()
    f_prime = fn_selected.float().unsqueeze(1) * f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
    out = f_prime @ weight.float().t()
    return out if bias is None else out + bias.float()


def msp_fn(penultimate: torch.Tensor, fn_selected: torch.Tensor, weight: torch.Tensor,
           bias: torch.Tensor | None) -> torch.Tensor:
    """`msp+fn`: MSP on the selected-norm logits (SPEC §5)."""
    return msp(norm_replaced_logits(penultimate, fn_selected, weight, bias))


def energy_fn(penultimate: torch.Tensor, fn_selected: torch.Tensor, weight: torch.Tensor,
              bias: torch.Tensor | None) -> torch.Tensor:
    """`energy+fn`: energy on the selected-norm logits (SPEC §5)."""
    return energy(norm_replaced_logits(penultimate, fn_selected, weight, bias))
