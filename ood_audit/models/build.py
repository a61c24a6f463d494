"""Typed model builders (SPEC §1, §16). Nothing is downloaded: weights come from local safetensors files."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torchvision.models as tvm

from ood_audit.errors import ConfigError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": tvm.resnet18,
    "resnet34": tvm.resnet34,
    "resnet50": tvm.resnet50,
    "wide_resnet50_2": tvm.wide_resnet50_2,
    "vgg11_bn": tvm.vgg11_bn,
    "vgg16_bn": tvm.vgg16_bn,
    "mobilenet_v2": tvm.mobilenet_v2,
    "mobilenet_v3_large": tvm.mobilenet_v3_large,
    "densenet121": tvm.densenet121,
    # SPEC §16: the families teams deploy now (ResNeXt and Wide ResNet are tvm.ResNet instances)
    "resnext50_32x4d": tvm.resnext50_32x4d,
    "resnext101_32x8d": tvm.resnext101_32x8d,
    "wide_resnet101_2": tvm.wide_resnet101_2,
    "convnext_tiny": tvm.convnext_tiny,
    "convnext_small": tvm.convnext_small,
    "efficientnet_b0": tvm.efficientnet_b0,
    "efficientnet_b1": tvm.efficientnet_b1,
    "efficientnet_b2": tvm.efficientnet_b2,
    "efficientnet_b3": tvm.efficientnet_b3,
    "efficientnet_v2_s": tvm.efficientnet_v2_s,
    "regnet_y_400mf": tvm.regnet_y_400mf,
    "regnet_y_800mf": tvm.regnet_y_800mf,
    "regnet_y_1_6gf": tvm.regnet_y_1_6gf,
    "regnet_y_3_2gf": tvm.regnet_y_3_2gf,
    "regnet_y_8gf": tvm.regnet_y_8gf,
}

ARCHITECTURES: tuple[str, ...] = tuple(_BUILDERS)


def build_model(name: str, num_classes: int, small_input: bool = False) -> nn.Module:
    """Build an untrained torchvision classifier.

    ``small_input=True`` gives the CIFAR-style variant for ~32 px images (SPEC §1): for ResNets a 3×3,
    stride-1, padding-1 stem without max-pool (layer4 is 512×4×4 at 32 px for ResNet18); analogous
    stride reductions for the other families so the last stage keeps a spatial map (4×4 at 32 px).
    """
    if name not in _BUILDERS:
        raise ConfigError(f"unknown architecture {name!r}; choose one of: {', '.join(ARCHITECTURES)}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    model = _BUILDERS[name](weights=None, num_classes=num_classes)
    if small_input:
        _make_small_input(name, model, num_classes)
    return model


def skeleton(name: str, num_classes: int, small_input: bool = False) -> nn.Module:
    """``build_model``'s structure on the ``meta`` device: names and shapes, no memory, no initialisation
    (ConvNeXt's takes seconds). Load real weights into it with ``load_state_dict(..., assign=True)``."""
    try:
        with torch.device("meta"):
            return build_model(name, num_classes, small_input)
    except NotImplementedError:  # RegNet's builder computes its stage widths with tensors: build it for real
        return build_model(name, num_classes, small_input).to("meta")


def _unstride(module: nn.Module) -> None:
    """Every stride-2 convolution inside ``module`` at stride 1 (their padding keeps the map size)."""
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d) and conv.stride == (2, 2):
            conv.stride = (1, 1)


def _make_small_input(name: str, model: nn.Module, num_classes: int) -> None:
    if name.startswith(("resnet", "wide_resnet", "resnext")):
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif name.startswith("densenet"):
        out = model.features.conv0.out_channels
        model.features.conv0 = nn.Conv2d(3, out, kernel_size=3, stride=1, padding=1, bias=False)
        model.features.pool0 = nn.Identity()
    elif name.startswith("mobilenet"):
        # Stem and first down-sampling block at stride 1: 32 px -> 4x4 last stage.
        strided = [m for m in model.features.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
        for conv in strided[:2]:
            conv.stride = (1, 1)
    elif name.startswith("convnext"):
        # The 4x4 stride-4 patchify stem becomes a 3x3 stride-1 one: stages at 32, 16, 8, 4 px.
        out = model.features[0][0].out_channels
        model.features[0][0] = nn.Conv2d(3, out, kernel_size=3, stride=1, padding=1)
    elif name.startswith("efficientnet"):
        # Stem and the first down-sampling stage at stride 1 (total stride 8): 32 px -> 4x4 last stage.
        _unstride(model.features[0])
        _unstride(next(s for s in list(model.features)[1:] if _has_stride2(s)))
    elif name.startswith("regnet"):
        _unstride(model.stem)
        _unstride(model.trunk_output[0])
    elif name.startswith("vgg"):
        # Keep the last stage at 2x2 (not 1x1) and use a 512-wide head instead of the 25088-wide one.
        model.features[len(model.features) - 1] = nn.Identity()
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier = nn.Sequential(
            nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(),
            nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(),
            nn.Linear(512, num_classes),
        )


def _has_stride2(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) and m.stride == (2, 2) for m in module.modules())
