"""Weights as safetensors only (never pickles). Loading is strict (SPEC §8)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from ood_audit.errors import CheckpointError, ConfigError
from ood_audit.models.arch import arch_spec


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a local safetensors file into a CPU state dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"weights file not found: {p}")
    try:
        return load_file(str(p), device="cpu")
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"cannot read safetensors file {p}: {e}") from None


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint",
                      assign: bool = False) -> None:
    """Load a state dict, failing with a one-line message when keys or shapes do not match.

    ``assign=True`` puts ``state``'s tensors (cast to the model's dtypes) in place of the model's, which is
    how a :func:`~ood_audit.models.build.skeleton` on the meta device gets its weights."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) e.g. {unexpected[0]}")
        if shapes:
            k = shapes[0]
            parts.append(f"shape mismatch at {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        raise CheckpointError(f"{source} does not match the architecture: " + "; ".join(parts))
    if assign:
        state = {k: v.to(own[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=assign)


def load_state_new_head(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> list[str]:
    """Load ``state`` strictly, except that classifier-head tensors of another shape (another number of
    classes) keep ``model``'s fresh initialisation (SPEC §16, "New head"). Returns one
    ``"<key> <checkpoint shape> -> <model shape>"`` per re-initialised tensor; empty when nothing differed.
    Any other mismatch is :func:`load_state_strict`'s one-line error."""
    own = model.state_dict()
    prefix = arch_spec(model).head + "."
    head = [k for k in own if k.startswith(prefix)]
    if not any(k in state and state[k].shape != own[k].shape for k in head):
        load_state_strict(model, state, source=source)
        return []
    # The whole head goes (weight and bias together): a bias sized for the old classes means nothing here.
    changed = [f"{k} {tuple(state[k].shape)} -> {tuple(own[k].shape)}" for k in head if k in state]
    load_state_strict(model, {**state, **{k: own[k] for k in head if k in state}}, source=source)
    return changed


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Strictly load a local safetensors file into ``model`` and return it."""
    load_state_strict(model, read_state(path), source=str(path))
    return model


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Write ``model``'s state dict as safetensors (contiguous CPU copies)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))


def infer_num_classes(state: dict[str, torch.Tensor], model_for_spec: nn.Module) -> int:
    """Number of classes from the classifier head's weight in a state dict."""
    key = arch_spec(model_for_spec).head + ".weight"
    if key not in state:
        raise CheckpointError(f"checkpoint has no classifier weight {key!r}; is the architecture right?")
    return int(state[key].shape[0])
