"""Per-family tap points: block candidates (SPEC §1), last-stage map, penultimate vector, classifier head.

Everything is named by module path / graph node name, as `torchvision.models.feature_extraction` sees it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
import torchvision.models as tvm

from ood_audit.errors import ConfigError


@dataclass(frozen=True)
class ArchSpec:
    family: str
    candidates: tuple[str, ...]  # block outputs, in forward order; stem and head excluded
    last_map: str                # last stage before pooling (CSD / ALPA map, SPEC §7-8)
    penultimate: str             # pooled penultimate vector f (kNN, SPEC §5-6)
    logits: str                  # classifier output
    head: str                    # module path of the final nn.Linear (W, b for SPEC §5)


def arch_spec(model: nn.Module) -> ArchSpec:
    """Tap points of a torchvision classifier, found from its module structure."""
    if isinstance(model, tvm.ResNet):
        cands = tuple(f"{layer}.{i}" for layer in ("layer1", "layer2", "layer3", "layer4")
                      for i in range(len(getattr(model, layer))))
        return ArchSpec("resnet", cands, cands[-1], "flatten", "fc", "fc")
    if isinstance(model, tvm.VGG):
        cands = tuple(f"features.{i}" for i, m in enumerate(model.features) if isinstance(m, nn.ReLU))
        last = f"features.{len(model.features) - 1}"
        n = len(model.classifier)
        return ArchSpec("vgg", cands, last, f"classifier.{n - 2}", f"classifier.{n - 1}", f"classifier.{n - 1}")
    if isinstance(model, (tvm.MobileNetV2, tvm.MobileNetV3)):
        cands = tuple(f"features.{i}" for i in range(1, len(model.features)))
        n = len(model.classifier)
        pen = "flatten" if n == 2 else f"classifier.{n - 2}"
        return ArchSpec("mobilenet", cands, cands[-1], pen, f"classifier.{n - 1}", f"classifier.{n - 1}")
    if isinstance(model, tvm.DenseNet):
        cands = tuple(f"features.{name}" for name, _ in model.features.named_children()
                      if name.startswith(("denseblock", "transition")))
        return ArchSpec("densenet", cands, "relu", "flatten", "classifier", "classifier")
    raise ConfigError(f"unsupported model class {type(model).__name__}; build it with ood_audit.build_model")


def block_candidates(model: nn.Module | str) -> list[str]:
    """Candidate block names (module paths) of a model, or of an architecture name (SPEC §1)."""
    if isinstance(model, str):
        from ood_audit.models.build import build_model

        model = build_model(model, num_classes=10)
    return list(arch_spec(model).candidates)


def check_blocks(model: nn.Module, blocks: list[str] | tuple[str, ...]) -> None:
    """Raise ConfigError naming the valid choices if any block is not a candidate."""
    cands = arch_spec(model).candidates
    bad = [b for b in blocks if b not in cands]
    if bad:
        raise ConfigError(f"unknown block {bad[0]!r}; valid blocks: {', '.join(cands)}")
