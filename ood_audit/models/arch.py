"""Per-family tap points: block candidates (SPEC §1, §16), last-stage map, penultimate vector, classifier head.

Everything is named by module path / graph node name, as `torchvision.models.feature_extraction` sees it
(a module path names the output of that module's last operation, so a residual block's path is its sum).
The families are found from the module classes: ResNeXt and Wide ResNet are ``tvm.ResNet`` instances.
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
    # Whether every candidate's output has passed a ReLU. FeatureNorm (SPEC §2) applies its own ReLU either
    # way; when False (residual streams, linear bottlenecks) that ReLU discards the negative half of the
    # block's signal, and FeatureNorm may separate poorly: README "Your own model" has the measurement.
    post_relu: bool


def arch_spec(model: nn.Module) -> ArchSpec:
    """Tap points of a torchvision classifier, found from its module structure."""
    if isinstance(model, tvm.ResNet):
        cands = tuple(f"{layer}.{i}" for layer in ("layer1", "layer2", "layer3", "layer4")
                      for i in range(len(getattr(model, layer))))
        return ArchSpec("resnet", cands, cands[-1], "flatten", "fc", "fc", True)
    if isinstance(model, tvm.VGG):
        cands = tuple(f"features.{i}" for i, m in enumerate(model.features) if isinstance(m, nn.ReLU))
        last = f"features.{len(model.features) - 1}"
        n = len(model.classifier)
        return ArchSpec("vgg", cands, last, f"classifier.{n - 2}", f"classifier.{n - 1}", f"classifier.{n - 1}", True)
    if isinstance(model, (tvm.MobileNetV2, tvm.MobileNetV3)):
        cands = tuple(f"features.{i}" for i in range(1, len(model.features)))
        n = len(model.classifier)
        pen = "flatten" if n == 2 else f"classifier.{n - 2}"
        # Inverted residuals end in a linear bottleneck (only the last 1x1 conv has an activation).
        return ArchSpec("mobilenet", cands, cands[-1], pen, f"classifier.{n - 1}", f"classifier.{n - 1}", False)
    if isinstance(model, tvm.DenseNet):
        cands = tuple(f"features.{name}" for name, _ in model.features.named_children()
                      if name.startswith(("denseblock", "transition")))
        # Dense blocks concatenate conv outputs; transitions end in conv + pool: neither is post-ReLU.
        return ArchSpec("densenet", cands, "relu", "flatten", "classifier", "classifier", False)
    if isinstance(model, tvm.ConvNeXt):
        # features: stem, then stages (odd indices) between down-sampling layers; each CNBlock's output is
        # its residual sum (LayerNorm + GELU inside, no ReLU). classifier: LayerNorm2d, Flatten, Linear.
        cands = _stage_blocks("features", [(i, s) for i, s in enumerate(model.features) if i % 2 == 1])
        n = len(model.classifier)
        return ArchSpec("convnext", cands, cands[-1], f"classifier.{n - 2}", f"classifier.{n - 1}",
                        f"classifier.{n - 1}", False)
    if isinstance(model, tvm.EfficientNet):
        # features: stem, MBConv/FusedMBConv stages, a final 1x1 conv (+SiLU) that pooling reads: that
        # conv's output is the last map. Blocks end in BatchNorm (+ residual): not post-ReLU.
        last = len(model.features) - 1
        cands = _stage_blocks("features", [(i, model.features[i]) for i in range(1, last)])
        n = len(model.classifier)
        return ArchSpec("efficientnet", cands, f"features.{last}", "flatten", f"classifier.{n - 1}",
                        f"classifier.{n - 1}", False)
    if isinstance(model, tvm.RegNet):
        # trunk_output.blockS holds blocks named "blockS-i"; each ends in ReLU(x + shortcut).
        cands = _stage_blocks("trunk_output", list(model.trunk_output.named_children()))
        return ArchSpec("regnet", cands, cands[-1], "flatten", "fc", "fc", True)
    raise ConfigError(f"unsupported model class {type(model).__name__}; build it with ood_audit.build_model")


def _stage_blocks(prefix: str, stages: list[tuple[int | str, nn.Module]]) -> tuple[str, ...]:
    """``prefix.stage.block`` for every block (child) of every stage, in forward order."""
    return tuple(f"{prefix}.{i}.{name}" for i, stage in stages for name, _ in stage.named_children())


def block_candidates(model: nn.Module | str) -> list[str]:
    """Candidate block names (module paths) of a model, or of an architecture name (SPEC §1)."""
    if isinstance(model, str):
        from ood_audit.models.build import skeleton

        model = skeleton(model, num_classes=10)
    return list(arch_spec(model).candidates)


def check_blocks(model: nn.Module, blocks: list[str] | tuple[str, ...]) -> None:
    """Raise ConfigError naming the valid choices if any block is not a candidate."""
    cands = arch_spec(model).candidates
    bad = [b for b in blocks if b not in cands]
    if bad:
        raise ConfigError(f"unknown block {bad[0]!r}; valid blocks: {', '.join(cands)}")
