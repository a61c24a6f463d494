"""Small runtime helpers shared by commands: device choice."""
from __future__ import annotations

import torch

from ood_audit.errors import ConfigError


def resolve_device(name: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; validates explicit names."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine; use cpu or auto")
        return name
    raise ConfigError(f"--device {name!r}: choose cpu, cuda, cuda:N or auto")
