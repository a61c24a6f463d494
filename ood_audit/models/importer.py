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
# - EfficientNet from timm (``efficientnet_b0``..``b3``: the same tensors and the same forward as torchvision's):
#   conv_stem/bn1, blocks.S.B, conv_head/bn2, classifier. Stage 0 is a depthwise-separable block (dw, se, pw)
#   whose ``bn1``/``bn2`` are other layers than in the inverted-residual blocks of stages 1-6: its rules come
#   first. timm's ``tf_efficientnet_b*`` have the same names and shapes, so they load, but compute something
#   else (TF "same" padding, BatchNorm eps 1e-3): nothing in a state dict tells them apart. No timm model is
#   torchvision's ``efficientnet_v2_s`` (``efficientnetv2_s``: eps 1e-5, not 1e-3; ``tf_efficientnetv2_s``:
#   "same" padding), and their other block layout (conv_exp...) is refused by the strict load.
# - RegNetY from timm: ``regnety_004``, ``regnety_008_tv``, ``regnety_016``, ``regnety_032``, ``regnety_080_tv``
#   are torchvision's 400mf, 800mf, 1.6gf, 3.2gf, 8gf. stem.conv|bn, sS.bB.conv1|conv2|conv3|se|downsample,
#   head.fc. torchvision's block registers ``proj`` (the downsample) before ``f``: the rules go by name, never
#   by order. ``regnety_008`` and ``regnety_080`` have other widths and fail the strict load on a shape.
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
    "efficientnet": {
        "detect": re.compile(r"^(conv_stem\.|blocks\.\d+\.\d+\.)"),
        "rules": [
            (r"^conv_stem\.", "features.0.0."),
            (r"^bn1\.", "features.0.1."),
            (r"^blocks\.0\.(\d+)\.conv_dw\.", r"features.1.\1.block.0.0."),
            (r"^blocks\.0\.(\d+)\.bn1\.", r"features.1.\1.block.0.1."),
            (r"^blocks\.0\.(\d+)\.se\.conv_reduce\.", r"features.1.\1.block.1.fc1."),
            (r"^blocks\.0\.(\d+)\.se\.conv_expand\.", r"features.1.\1.block.1.fc2."),
            (r"^blocks\.0\.(\d+)\.conv_pw\.", r"features.1.\1.block.2.0."),
            (r"^blocks\.0\.(\d+)\.bn2\.", r"features.1.\1.block.2.1."),
            (r"^blocks\.(\d+)\.(\d+)\.(conv_pw|bn1|conv_dw|bn2|se\.conv_reduce|se\.conv_expand|conv_pwl|bn3)\.",
             lambda m: f"features.{int(m[1]) + 1}.{m[2]}.block.{_EFFNET_IR[m[3]]}."),
            (r"^conv_head\.", "features.8.0."),   # b0..b3 have 7 stages of blocks: features.1..7
            (r"^bn2\.", "features.8.1."),
            (r"^classifier\.(weight|bias)$", r"classifier.1.\1"),  # classifier.0 is the dropout
        ],
    },
    "regnet": {
        "detect": re.compile(r"^(stem\.conv\.|s\d+\.b\d+\.)"),
        "rules": [
            (r"^stem\.conv\.", "stem.0."),
            (r"^stem\.bn\.", "stem.1."),
            (r"^s(\d+)\.b(\d+)\.(conv1|conv2|conv3|downsample)\.(conv|bn)\.",
             lambda m: f"{_regnet_block(m)}.{_REGNET_PART[m[3]]}.{0 if m[4] == 'conv' else 1}."),
            (r"^s(\d+)\.b(\d+)\.se\.(fc1|fc2)\.", lambda m: f"{_regnet_block(m)}.f.se.{m[3]}."),
            (r"^head\.fc\.", "fc."),
        ],
    },
}
# timm's inverted-residual parts -> torchvision's MBConv ``block`` indices (expand, depthwise, SE, project).
_EFFNET_IR = {"conv_pw": "0.0", "bn1": "0.1", "conv_dw": "1.0", "bn2": "1.1", "se.conv_reduce": "2.fc1",
              "se.conv_expand": "2.fc2", "conv_pwl": "3.0", "bn3": "3.1"}
# timm's bottleneck parts -> torchvision's: ``f.a`` 1x1, ``f.b`` grouped 3x3, ``f.c`` 1x1, ``proj`` shortcut.
_REGNET_PART = {"conv1": "f.a", "conv2": "f.b", "conv3": "f.c", "downsample": "proj"}


def _regnet_block(m: re.Match) -> str:
    # timm counts blocks from 1 (s1.b1), torchvision from 0 (block1-0)
    return f"trunk_output.block{m[1]}.block{m[1]}-{int(m[2]) - 1}"


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
    # after a key map the mismatch is named in torchvision's terms: say so, the file itself has timm's names
    mapped = f", its {arch_spec(shape).family} names mapped from timm's" if renamed else ""
    load_state_strict(model, state, source=f"{src} (as {arch}{mapped})", assign=True)
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
