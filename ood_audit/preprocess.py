"""The one input transform: how a stored image becomes the model's input (SPEC §10, §13).

:class:`Preprocess` is stored in the bundle (its ``preprocess`` part), so training, calibration, ``evaluate``,
the scan and the report's CSD boxes use one geometry and one normalisation:

- **geometry** (:meth:`Preprocess.crop_box`): ``"crop"`` scales the image so it covers the output and takes
  the centre (or, with ``resize_shorter``, scales the shorter side to it first, as torchvision's
  ``Resize(256) + CenterCrop(224)``); ``"resize"`` stretches the whole image to the output. The decoder
  (:mod:`ood_audit.io.decode`) resamples exactly this box, and
  :func:`ood_audit.scores.csd.view_box` maps CSD views back through it;
- **scaling** (:func:`to_unit`, :func:`decoded_to_unit`): uint8 → float32 in [0, 1], the model's pixel space
  (pseudo-OOD probes work there, SPEC §3);
- **normalisation** (:func:`normalize`): ``(x − mean) / std`` per channel, applied by the model wrapper
  (:class:`ood_audit.models.TapModel`) with this ``mean``/``std``.

This module imports neither numpy nor torch at load (the bundle's schema reads it); the functions that need
torch import it when called.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from ood_audit.errors import ConfigError

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
DEFAULT_WORKING_SIZE = 256  # SPEC §14: the quality checks' working image has its longer side at most this

ResizeMode = Literal["crop", "resize"]
Box = tuple[float, float, float, float]  # (left, top, right, bottom) in source pixels, edges not centres


class Preprocess(BaseModel):
    """How decoded images become the model's input. Stored in the bundle so every stage agrees.

    Args:
        size: output ``(height, width)``; an int means a square. None keeps the original size.
        mode: ``"crop"`` or ``"resize"`` (module docstring).
        resize_shorter: ``"crop"`` only: scale the shorter side to this first, then centre-crop ``size``.
            Must be ≥ the output sides.
        jpeg_draft: let libjpeg decode big JPEGs at a reduced scale first (faster, slightly different
            pixels; keep the same setting for calibration and scanning).
        jpeg_draft_longer: with ``jpeg_draft``, the draft also keeps the longer side at least this many px
            (the SPEC §14 working size; :mod:`ood_audit.io.decode`). 0: the model size alone, as bundles
            written before this field.
        mean, std: the per-channel normalisation of [0, 1] pixels (ImageNet's by default).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    size: tuple[int, int] | None = None
    mode: ResizeMode = "crop"
    resize_shorter: int | None = None
    jpeg_draft: bool = True
    jpeg_draft_longer: int = DEFAULT_WORKING_SIZE
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __init__(self, size: int | tuple[int, int] | list[int] | None = None, **data: Any) -> None:
        try:
            super().__init__(size=size, **data)
        except ValidationError as exc:
            raise ConfigError(one_line(exc)) from None

    @field_validator("size", mode="before")
    @classmethod
    def _square(cls, v: Any) -> Any:
        return (v, v) if isinstance(v, int) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _consistent(self) -> "Preprocess":
        hw = self.size
        if hw is not None and (hw[0] < 1 or hw[1] < 1):
            raise ValueError(f"size must be positive, got {hw!r}")
        if self.jpeg_draft_longer < 0:
            raise ValueError(f"jpeg_draft_longer must be ≥ 0, got {self.jpeg_draft_longer!r}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be > 0, got {self.std!r}")
        if self.resize_shorter is not None:
            if self.mode != "crop" or hw is None:
                raise ValueError("resize_shorter needs mode='crop' and a size")
            if self.resize_shorter < max(hw):
                raise ValueError(f"resize_shorter={self.resize_shorter} is smaller than the crop {hw}; "
                                 "it must be at least the larger output side")
        return self

    @property
    def output_hw(self) -> tuple[int, int] | None:
        """The model input's ``(height, width)``; None keeps each image's own size."""
        return self.size

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Any) -> "Preprocess":
        """A stored preprocess (a dict, or a :class:`Preprocess`), with the values of the files written before a
        field existed (:func:`upgrade_stored`). Raises ``ConfigError`` in one line when invalid."""
        if isinstance(data, Preprocess):
            return data
        try:
            return cls.model_validate(upgrade_stored(dict(data)))
        except ValidationError as exc:
            raise ConfigError(one_line(exc)) from None

    def crop_box(self, width: int, height: int) -> Box | None:
        """The box of a ``width``×``height`` image (after EXIF orientation) that becomes the whole model input
        (None when ``size`` is None: the image as it is). The one home of the resize + crop arithmetic."""
        hw = self.output_hw
        if hw is None:
            return None
        out_h, out_w = hw
        w, h = width, height
        if self.mode == "resize":
            return (0.0, 0.0, float(w), float(h))
        scale = self.resize_shorter / min(w, h) if self.resize_shorter is not None else max(out_h / h, out_w / w)
        crop_w, crop_h = min(float(w), out_w / scale), min(float(h), out_h / scale)  # rounding: never past an edge
        left, top = (w - crop_w) / 2.0, (h - crop_h) / 2.0
        return (left, top, left + crop_w, top + crop_h)


def upgrade_stored(data: dict[str, Any], model: dict[str, Any] | None = None) -> dict[str, Any]:
    """A stored preprocess as this version reads it. Files written before a field existed lack it:
    ``jpeg_draft_longer`` is then 0 (those bundles were calibrated with the model size alone), and ``mean``/``std``
    are those of the bundle's ``model`` part, where they lived before (ImageNet's when that has none either)."""
    out = dict(data)
    out.setdefault("jpeg_draft_longer", 0)
    for key in ("mean", "std"):
        if key not in out and model and key in model:
            out[key] = model[key]
    return out


def one_line(exc: ValidationError) -> str:
    """The first error of ``exc`` in one line, naming the field (``preprocess.<field>: <what is wrong>``)."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"preprocess{'.' + loc if loc else ''}: {err['msg'].removeprefix('Value error, ')}"


def to_unit(pixels: "torch.Tensor", device: "torch.device | str | None" = None) -> "torch.Tensor":
    """``[N, 3, H, W]`` uint8 (or float already in [0, 1]) → float32 in [0, 1] on ``device`` (default: where it
    is). The one home of the uint8 → [0, 1] scaling."""
    import torch

    x = pixels if device is None else pixels.to(device)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def decoded_to_unit(batch: "torch.Tensor", device: "torch.device | str | None" = None, *,
                    non_blocking: bool = False) -> "torch.Tensor":
    """Decoded images ``[N, H, W, 3]`` uint8 (as :func:`ood_audit.io.decode.decode_image` gives them) →
    ``[N, 3, H, W]`` float32 in [0, 1] on ``device`` (copied as uint8, then scaled there)."""
    x = batch if device is None else batch.to(device, non_blocking=non_blocking)
    return to_unit(x.permute(0, 3, 1, 2))


def normalize(x: "torch.Tensor", mean: "torch.Tensor", std: "torch.Tensor") -> "torch.Tensor":
    """``(x − mean) / std`` per channel of [0, 1] pixels ``x`` ``[N, 3, H, W]``; ``mean``/``std`` are
    ``[1, 3, 1, 1]`` tensors (:class:`~ood_audit.models.TapModel` keeps them as buffers on its device)."""
    return (x - mean.to(x.dtype)) / std.to(x.dtype)
