"""Import a model the user brings (SPEC §16): a torchvision checkpoint or a safetensors state dict becomes
the product's safetensors weights + ``<stem>.json`` sidecar (the model description, its sha256 and provenance).

Checkpoints are read with ``torch.load(weights_only=True)``, the safe loader, never the pickle one: a file
that holds anything but tensors and plain containers is refused in one line. A safetensors file is read as
is; its names are mapped to torchvision's where a family's usual source names them differently
(:data:`KEY_MAPS`). The state must then load strictly into ``build_model(arch, num_classes)``, with
``num_classes`` read from the classifier head.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

import torch

from ood_audit.errors import CheckpointError, ConfigError
from ood_audit.io.fs import S3Config, exists, read_bytes, write_bytes
from ood_audit.models.arch import arch_spec
from ood_audit.models.build import ARCHITECTURES, skeleton
from ood_audit.models.spec import ModelSpec
from ood_audit.models.weights import infer_num_classes, load_state_strict

# Checkpoints that wrap the state dict (training scripts' habit) keep it under one of these keys.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")

# Per family: (regex on a source key, replacement) rules, tried in order, first match wins; a state whose
# keys do not look like the source's (``detect``) passes through unchanged, so torchvision names always do.
# - ConvNeXt from timm (``timm/convnext_tiny.*`` on the Hugging Face hub): stem / stages.S.(downsample|blocks)
#   / head, and ``gamma`` of shape [C] is torchvision's ``layer_scale`` of shape [C, 1, 1].
# - ResNet / ResNeXt / Wide ResNet from timm use torchvision's names already (conv1, layer1.0..., fc).
KEY_MAPS: dict[str, dict[str, Any]] = {
    "convnext": {
        "detect": re.compile(r"^(stem\.|stages\.)"),
        "rules": [
            (r"^stem\.(\d+)\.", r"features.0.\1."),
            (r"^stages\.(\d+)\.downsample\.(\d+)\.", lambda m: f"features.{2 * int(m[1])}.{m[2]}."),
            (r"^stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.", lambda m: f"features.{2 * int(m[1]) + 1}.{m[2]}.block.0."),
            (r"^stages\.(\d+)\.blocks\.(\d+)\.norm\.", lambda m: f"features.{2 * int(m[1]) + 1}.{m[2]}.block.2."),
            (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.", lambda m: f"features.{2 * int(m[1]) + 1}.{m[2]}.block.3."),
            (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.", lambda m: f"features.{2 * int(m[1]) + 1}.{m[2]}.block.5."),
            (r"^stages\.(\d+)\.blocks\.(\d+)\.gamma$", lambda m: f"features.{2 * int(m[1]) + 1}.{m[2]}.layer_scale"),
            (r"^head\.norm\.", "classifier.0."),
            (r"^head\.fc\.", "classifier.2."),
        ],
    },
}


@dataclass(frozen=True)
class ImportResult:
    output: str                  # the safetensors weights written
    metadata: str                # the sidecar ``<stem>.json``
    spec: ModelSpec
    sha256: str                  # of the written weights
    source_sha256: str           # of the source file, as read
    renamed: int                 # keys renamed by the family's key map (0: torchvision names)


def read_checkpoint(data: bytes, source: str) -> dict[str, torch.Tensor]:
    """A CPU state dict from checkpoint bytes: safetensors, else ``torch.load(weights_only=True)``."""
    if _is_safetensors(data):
        from safetensors.torch import load

        try:
            state = load(data)
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own Rust error types
            raise CheckpointError(f"{source}: not a readable safetensors file ({_first_line(exc)})") from None
    else:
        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols before refusing: one line only
                warnings.simplefilter("ignore")
                state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError (not a zip), EOFError...
            raise CheckpointError(f"{source}: refused by the safe loader torch.load(weights_only=True), which "
                                  f"reads only tensors and plain containers ({_why_refused(exc)})") from None
    if isinstance(state, dict):
        for key in WRAPPER_KEYS:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{source}: not a state dict (a mapping of parameter names to tensors, possibly "
                              f"under one of {', '.join(WRAPPER_KEYS)})")
    # nn.DataParallel / DistributedDataParallel prefix every name with "module."
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def map_keys(family: str, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """``state`` with the family's source names mapped to torchvision's (:data:`KEY_MAPS`); the count renamed."""
    spec = KEY_MAPS.get(family)
    if spec is None or not any(spec["detect"].match(k) for k in state):
        return state, 0
    out, renamed = {}, 0
    for key, value in state.items():
        new = key
        for pattern, repl in spec["rules"]:
            new, n = re.subn(pattern, repl, key, count=1)
            if n:
                break
        if new.endswith(".layer_scale") and value.dim() == 1:
            value = value.reshape(-1, 1, 1)
        renamed += new != key
        out[new] = value
    return out, renamed


def import_weights(src: str, arch: str, output: str, *, image_size: int = 224, small_input: bool = False,
                   class_names: Sequence[str] | None = None, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None, s3: S3Config | None = None) -> ImportResult:
    """Import ``src`` (a torchvision ``.pth``/``.pt`` or a safetensors state dict) as ``arch`` into ``output``
    (``*.safetensors``) + ``<stem>.json``; raises a one-line :class:`CheckpointError` naming ``src`` when the
    file cannot be read safely or does not fit ``arch`` (SPEC §16)."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"--arch {arch!r} is unknown; choose one of: {', '.join(ARCHITECTURES)}")
    if not str(output).endswith(".safetensors"):
        raise ConfigError(f"--output {output}: must end in .safetensors (the description goes beside it as .json)")
    if not exists(src, s3=s3):
        raise ConfigError(f"weights file not found: {src}")
    data = read_bytes(src, s3=s3)
    state = read_checkpoint(data, src)
    shape = skeleton(arch, 10, small_input=small_input)  # names only: no memory, nothing computed
    state, renamed = map_keys(arch_spec(shape).family, state)
    try:
        num_classes = infer_num_classes(state, shape)
        if num_classes < 2:
            raise CheckpointError(f"its head has {num_classes} output(s); a classifier needs >= 2")
    except CheckpointError as exc:
        raise CheckpointError(f"{src}: does not fit {arch}: {exc}") from None
    if class_names is not None and len(class_names) != num_classes:
        raise ConfigError(f"class names: {len(class_names)} given, but the head of {src} has {num_classes} classes")
    extra: dict[str, Any] = {k: list(v) for k, v in (("mean", mean), ("std", std)) if v is not None}
    spec = ModelSpec(arch, num_classes, small_input, image_size,
                     class_names=list(class_names) if class_names is not None else None, **extra)
    model = skeleton(arch, spec.num_classes, small_input=small_input)
    load_state_strict(model, state, source=f"{src} (as {arch})", assign=True)
    from safetensors.torch import save

    blob = save({k: v.detach().contiguous() for k, v in model.state_dict().items()})
    digest, source_digest = hashlib.sha256(blob).hexdigest(), hashlib.sha256(data).hexdigest()
    meta_uri = output[: -len(".safetensors")] + ".json"
    meta = {**spec.to_dict(), "weights": str(output).rsplit("/", 1)[-1], "sha256": digest,
            "imported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "provenance": {"how": "imported", "source": str(src), "source_sha256": source_digest, "run": None,
                           "init": None, "init_sha256": None, "recipe": None}}
    write_bytes(output, blob, s3=s3)
    write_bytes(meta_uri, json.dumps(meta, indent=2).encode(), s3=s3)
    return ImportResult(str(output), meta_uri, spec, digest, source_digest, renamed)


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names torchvision ships with its weight enums (no download)."""
    import torchvision.models as tvm

    return list(tvm.ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def _is_safetensors(data: bytes) -> bool:
    # 8-byte little-endian header length, then the JSON header; torch files are zips ("PK") or pickles.
    return len(data) > 9 and data[8:9] == b"{" and int.from_bytes(data[:8], "little") < len(data)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _why_refused(exc: BaseException) -> str:
    """The one informative line of torch's long refusal (which also suggests the unsafe loader: not repeated)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "Unsupported global" in ln or "Unsupported operand" in ln:
            # torch goes on to explain how to allow-list the global, i.e. how to load it unsafely: not repeated
            return ln.removeprefix("WeightsUnpickler error: ").split(" Please use", 1)[0]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
