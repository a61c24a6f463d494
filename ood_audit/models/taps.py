"""One forward pass that returns logits, pooled penultimate vector, block outputs and last-stage map.

Built on `torchvision.models.feature_extraction.create_feature_extractor` (no hand-made hooks). The
model takes **pixel-space** input in [0, 1] and applies its own normalisation first (the preprocess's
``mean``/``std``, :func:`ood_audit.preprocess.normalize`), so jigsaw and other pseudo-OOD probes can work
before normalisation (SPEC §3).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn as nn
from torchvision.models.feature_extraction import create_feature_extractor

from ood_audit.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize
from ood_audit.models.arch import ArchSpec, arch_spec, check_blocks
from ood_audit.models.precision import DEFAULT_PRECISION, check_precision, forward_precision



@dataclass
class Taps:
    logits: torch.Tensor                       # [N, K]
    penultimate: torch.Tensor                  # [N, D] pooled penultimate vector f
    last_map: torch.Tensor                     # [N, C, H, W] last stage before pooling
    blocks: dict[str, torch.Tensor] = field(default_factory=dict)  # requested block outputs


class TapModel(nn.Module):
    """Wrap a classifier so one forward gives :class:`Taps`.

    Several roles may land on one graph node (ResNet's last block *is* its last-stage map); the
    extractor is asked for each node once and the roles are mapped onto it.

    Every forward runs under ``precision``, the bundle's precision policy (:mod:`.precision`), so
    calibration, ``evaluate`` and the scan compute activations the same way.
    """

    def __init__(self, model: nn.Module, blocks: Sequence[str] = (),
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 precision: str = DEFAULT_PRECISION) -> None:
        super().__init__()
        self.precision = check_precision(precision)
        check_blocks(model, list(blocks))
        self.spec: ArchSpec = arch_spec(model)
        self.blocks = tuple(blocks)
        roles = {"logits": self.spec.logits, "penultimate": self.spec.penultimate, "last_map": self.spec.last_map}
        nodes = list(dict.fromkeys([*roles.values(), *self.blocks]))
        self._roles = roles
        self.extractor = create_feature_extractor(model, return_nodes={n: n for n in nodes})
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        head = model.get_submodule(self.spec.head)
        if not isinstance(head, nn.Linear):
            raise TypeError(f"classifier head {self.spec.head} is {type(head).__name__}, expected Linear")
        self._head = [head]  # list: not a registered submodule (it is already inside the extractor)

    @property
    def head(self) -> nn.Linear:
        """The final linear layer (W, b) used by the selected-norm logit variants (SPEC §5)."""
        return self._head[0]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x, self.mean, self.std)

    def forward(self, x: torch.Tensor) -> Taps:
        with forward_precision(self.precision, x.device):
            out = self.extractor(self.normalize(x))
        pen = out[self._roles["penultimate"]]
        return Taps(
            logits=out[self._roles["logits"]],
            penultimate=pen.flatten(1),
            last_map=out[self._roles["last_map"]],
            blocks={b: out[b] for b in self.blocks},
        )


def last_map_hw(arch: str, num_classes: int, small_input: bool, input_hw: tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` of the last-stage map (SPEC §7) that ``arch`` gives for an input of ``input_hw``; shapes only:
    the model is built and run on the ``meta`` device, so no weights are made and nothing is computed."""
    from ood_audit.models.build import skeleton

    model = skeleton(arch, num_classes, small_input=small_input).eval()
    with torch.device("meta"):
        spec = arch_spec(model)
        extractor = create_feature_extractor(model, return_nodes={spec.last_map: "last_map"})
        out = extractor(torch.zeros(1, 3, *input_hw))["last_map"]
    return int(out.shape[2]), int(out.shape[3])
