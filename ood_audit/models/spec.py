"""A model's description, kept beside its weights (`model.json`) and inside audit bundles."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ood_audit.errors import ConfigError
from ood_audit.models.build import ARCHITECTURES, build_model
from ood_audit.models.weights import load_state_strict
from ood_audit.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, ResizeMode


@dataclass
class ModelSpec:
    arch: str
    num_classes: int
    small_input: bool = False
    image_size: int = 224
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    class_names: list[str] | None = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ConfigError(f"model arch {self.arch!r} is unknown; choose one of: {', '.join(ARCHITECTURES)}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("model mean/std must be 3 numbers each, std > 0")
        if self.image_size < 8:
            raise ConfigError(f"model image_size must be >= 8, got {self.image_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        missing = [k for k in ("arch", "num_classes") if k not in known]
        if missing:
            raise ConfigError(f"model description lacks field {missing[0]!r}")
        return cls(**known)

    def preprocess(self, mode: ResizeMode = "crop") -> Preprocess:
        """The input transform of this model: its ``image_size``, ``mode``, and its ``mean``/``std``."""
        return Preprocess(size=self.image_size, mode=mode, mean=tuple(self.mean), std=tuple(self.std))

    def build(self, state: dict[str, torch.Tensor] | None = None, source: str = "checkpoint") -> nn.Module:
        """The model in eval mode, with ``state`` strictly loaded when given."""
        model = build_model(self.arch, self.num_classes, small_input=self.small_input)
        if state is not None:
            load_state_strict(model, state, source=source)
        return model.eval()
