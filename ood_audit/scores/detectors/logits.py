"""Logit baselines (SPEC §6) and their selected-norm variants (SPEC §5) as detectors. Nothing to fit."""
from __future__ import annotations

import torch

from ood_audit.scores.baselines import energy, energy_fn, maxlogit, msp, msp_fn
from ood_audit.scores.detectors.base import Detector, Features


class MSP(Detector):
    """max_k softmax(logits)_k."""

    name, reference, outputs = "msp", "Hendrycks & Gimpel, ICLR 2017", ("msp",)

    def score(self, f: Features) -> dict[str, torch.Tensor]:
        return {self.name: msp(f.logits)}


class Energy(Detector):
    """T · logsumexp(logits / T), T = 1."""

    name, reference, outputs = "energy", "Liu et al., NeurIPS 2020", ("energy",)

    def score(self, f: Features) -> dict[str, torch.Tensor]:
        return {self.name: energy(f.logits)}


class MaxLogit(Detector):
    """max_k logits_k."""

    name, reference, outputs = "maxlogit", "Hendrycks et al., ICML 2022", ("maxlogit",)

    def score(self, f: Features) -> dict[str, torch.Tensor]:
        return {self.name: maxlogit(f.logits)}


class _NormReplaced(Detector):
    """A logit score on logits' = W (FN_B · f/‖f‖) + b: the penultimate direction with the selected
    block's norm (Yu et al., CVPR 2023, §3.3; SPEC §5)."""

    reference = "Yu et al., CVPR 2023, §3.3"

    def __init__(self, block: str) -> None:
        super().__init__()
        self.block = block


class MSPFN(_NormReplaced):
    """`msp+fn`: MSP on the selected-norm logits."""

    name, outputs = "msp+fn", ("msp+fn",)

    def score(self, f: Features) -> dict[str, torch.Tensor]:
        return {self.name: msp_fn(f.penultimate, f.fn(self.block), f.head.weight, f.head.bias)}


class EnergyFN(_NormReplaced):
    """`energy+fn`: energy on the selected-norm logits."""

    name, outputs = "energy+fn", ("energy+fn",)

    def score(self, f: Features) -> dict[str, torch.Tensor]:
        return {self.name: energy_fn(f.penultimate, f.fn(self.block), f.head.weight, f.head.bias)}
