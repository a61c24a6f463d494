"""Training checkpoints without pickles: tensors in safetensors, everything else in JSON.

A checkpoint directory holds:

- ``model.safetensors``: the classifier's state dict; loads strictly into
  ``build_model(arch, num_classes, small_input)``;
- ``heads.safetensors``: the training-only projectors (``alpa.*``, ``supcon.*``), when the mode has any;
- ``optimizer.safetensors``: the optimizer's per-parameter tensors, flattened as
  ``state.<param_index>.<key>`` (e.g. ``state.3.momentum_buffer``);
- ``optimizer.json``: the param groups' hyper-parameters and any non-tensor per-parameter state;
- ``train_state.json``: epoch, global step, position inside the epoch, the run's config, class names and
  history.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ood_audit.errors import CheckpointError

MODEL_FILE = "model.safetensors"
HEADS_FILE = "heads.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
OPTIMIZER_META_FILE = "optimizer.json"
STATE_FILE = "train_state.json"
FORMAT_VERSION = 1


def flatten_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` -> (tensors for safetensors, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, dict[str, Any]] = {}
    for index, per_param in state_dict["state"].items():
        for key, value in per_param.items():
            if "." in str(key):
                raise CheckpointError(f"optimizer state key {key!r} contains '.', which the flat layout reserves")
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                values.setdefault(str(index), {})[key] = value
    meta = {"format_version": FORMAT_VERSION, "param_groups": state_dict["param_groups"], "state_values": values}
    return tensors, meta


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                              like: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """The inverse of :func:`flatten_optimizer_state`. JSON turns tuples (e.g. Adam's ``betas``) into lists;
    with ``like`` given, values whose current type is a tuple are turned back."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        prefix, index, key = name.split(".", 2)
        if prefix != "state":
            raise CheckpointError(f"unexpected tensor {name!r} in {OPTIMIZER_FILE}")
        state.setdefault(int(index), {})[key] = value
    for index, per_param in meta.get("state_values", {}).items():
        state.setdefault(int(index), {}).update(per_param)
    groups = [dict(g) for g in meta["param_groups"]]
    if like is not None:
        if len(like.param_groups) != len(groups):
            raise CheckpointError(f"{OPTIMIZER_META_FILE} has {len(groups)} param group(s), "
                                  f"the optimizer {len(like.param_groups)}")
        for group, current in zip(groups, like.param_groups):
            for key, value in group.items():
                if isinstance(current.get(key), tuple) and isinstance(value, list):
                    group[key] = tuple(value)
    return {"state": state, "param_groups": groups}


def write_checkpoint(directory: str | os.PathLike[str], *, model_state: dict[str, torch.Tensor],
                     heads_state: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                     train_state: dict[str, Any]) -> None:
    """Write one checkpoint's files into ``directory`` (which must exist)."""
    d = Path(directory)
    save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()}, str(d / MODEL_FILE))
    if heads_state:
        save_file(heads_state, str(d / HEADS_FILE))
    tensors, meta = flatten_optimizer_state(optimizer.state_dict())
    save_file(tensors, str(d / OPTIMIZER_FILE))
    (d / OPTIMIZER_META_FILE).write_text(json.dumps(meta, indent=1))
    (d / STATE_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION, **train_state}, indent=1))


@dataclass
class CheckpointData:
    model_state: dict[str, torch.Tensor]
    heads_state: dict[str, torch.Tensor]
    optimizer_tensors: dict[str, torch.Tensor]
    optimizer_meta: dict[str, Any]
    train_state: dict[str, Any]

    def optimizer_state(self, like: torch.optim.Optimizer | None = None) -> dict[str, Any]:
        return unflatten_optimizer_state(self.optimizer_tensors, self.optimizer_meta, like)


def read_checkpoint(directory: str | os.PathLike[str]) -> CheckpointData:
    """Read a checkpoint directory written by :func:`write_checkpoint`."""
    d = Path(directory)
    missing = [n for n in (MODEL_FILE, OPTIMIZER_FILE, OPTIMIZER_META_FILE, STATE_FILE) if not (d / n).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {d} is incomplete: missing {', '.join(missing)}")
    try:
        heads = load_file(str(d / HEADS_FILE)) if (d / HEADS_FILE).is_file() else {}
        return CheckpointData(load_file(str(d / MODEL_FILE)), heads, load_file(str(d / OPTIMIZER_FILE)),
                              json.loads((d / OPTIMIZER_META_FILE).read_text()),
                              json.loads((d / STATE_FILE).read_text()))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {d}: {e}") from None


def check_compatible(saved: dict[str, Any], current: dict[str, Any], run_name: str) -> None:
    """Refuse to resume a run whose model-defining settings changed since its checkpoint was written."""
    keys = ("arch", "num_classes", "small_input", "image_size", "mode", "class_names", "optimizer")
    changed = [k for k in keys if k in saved and k in current and saved[k] != current[k]]
    if changed:
        k = changed[0]
        raise CheckpointError(f"run {run_name!r} was checkpointed with {k}={saved[k]!r} but this run has "
                              f"{k}={current[k]!r}; use a new --run-name (or the original settings) to go on")
