"""A model's description, kept beside its weights (``model.json``) and inside audit bundles.

The field list is the bundle's :class:`~ood_audit.bundle.schema.ModelPart` (which reads without torch);
:class:`ModelSpec` is that description, checked when made (a one-line :class:`ConfigError`) and able to
build the model. ``evaluate`` reads the class count from the weights' head (:meth:`ModelSpec.for_weights`).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from pydantic import ValidationError, model_validator

from ood_audit.bundle.schema import ModelPart
from ood_audit.errors import ConfigError
from ood_audit.models.build import ARCHITECTURES, build_model, skeleton
from ood_audit.models.weights import infer_num_classes, load_state_strict
from ood_audit.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, ResizeMode


class ModelSpec(ModelPart):
    """``ModelSpec(arch, num_classes, small_input=False, image_size=224, mean=ImageNet's, std=ImageNet's,
    class_names=None)``: positional arguments follow :class:`ModelPart`'s fields."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.update(zip(ModelPart.model_fields, args))
        kwargs.setdefault("mean", list(IMAGENET_MEAN))
        kwargs.setdefault("std", list(IMAGENET_STD))
        try:
            super().__init__(**kwargs)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"model description{f' field {where}' if where else ''}: "
                              f"{str(err['msg']).removeprefix('Value error, ')}") from None

    @model_validator(mode="after")
    def _known(self) -> "ModelSpec":
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch {self.arch!r} is unknown; choose one of: {', '.join(ARCHITECTURES)}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean/std must be 3 numbers each, std > 0")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The description as ``model.json`` and the bundle store it."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        """From ``model.json`` or a bundle's ``model`` part; other keys (a training record's) are ignored."""
        return cls(**d)

    @classmethod
    def for_weights(cls, arch: str, state: dict[str, torch.Tensor], *, small_input: bool = False,
                    image_size: int = 224) -> "ModelSpec":
        """The description of ``state``'s model, with the class count read from its head."""
        n = infer_num_classes(state, build_model(arch, num_classes=10, small_input=small_input))
        return cls(arch, n, small_input, image_size)

    def preprocess(self, mode: ResizeMode = "crop") -> Preprocess:
        """The input transform of this model: its ``image_size``, ``mode``, and its ``mean``/``std``."""
        return Preprocess(size=self.image_size, mode=mode, mean=tuple(self.mean), std=tuple(self.std))

    def build(self, state: dict[str, torch.Tensor] | None = None, source: str = "checkpoint") -> nn.Module:
        """The model in eval mode, with ``state`` strictly loaded when given (into a skeleton: the random
        initialisation it would replace is never computed)."""
        if state is None:
            return build_model(self.arch, self.num_classes, small_input=self.small_input).eval()
        model = skeleton(self.arch, self.num_classes, small_input=self.small_input)
        load_state_strict(model, state, source=source, assign=True)
        return model.eval()
