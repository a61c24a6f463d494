"""What a training run needs (:class:`TrainConfig`) and what it gives back (:class:`TrainResult`).

Validation messages name the command-line flag, so the CLI and library callers see the same one line.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from ..errors import ConfigError
from ..io.fs import S3Config
from ..io.uri import is_s3_uri, parse_uri
from ..models import ARCHITECTURES, IMAGENET_MEAN, IMAGENET_STD

MODES: tuple[str, ...] = ("ce", "alpa-finetune", "joint")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
DEVICES: tuple[str, ...] = ("auto", "cpu", "gpu")

# Base learning rates when --lr is not given: fine-tuning starts from trained weights, so it moves gently.
_DEFAULT_LR = {
    "sgd": {"ce": 0.1, "alpa-finetune": 0.01, "joint": 0.1},
    "adamw": {"ce": 1e-3, "alpa-finetune": 1e-4, "joint": 1e-3},
}


@dataclass
class TrainConfig:
    """One training run. ``batch_size`` is images per worker per step; the contrastive modes (``alpa-finetune``,
    ``joint``) feed two augmented views of each image, so a step holds ``2 * batch_size`` rows (SPEC §8)."""

    data: str                                   # class-folder prefix or manifest, local or s3://
    output: str                                 # final weights, a .safetensors path or s3:// URI
    arch: str = "resnet18"
    small_input: bool = False
    image_size: int | None = None               # default 32 with small_input, else 224
    mode: str = "ce"
    init: str | None = None                     # starting weights (safetensors, local or s3://)
    epochs: int = 10
    batch_size: int = 64
    lr: float | None = None                     # default depends on optimizer and mode
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    alpa_weight: float = 1.0                    # λ in L_SupCon + λ·L_ALPA (joint mode)
    supcon_temperature: float = 0.1
    supcon_dim: int = 128
    alpa_chunk: int = 64
    workers: int = 2
    device: str = "auto"                        # auto (GPUs when the cluster has them), cpu, gpu (or cuda)
    cpus_per_worker: float | None = None        # default: the cluster's CPUs shared out, at most what fits
    run_name: str | None = None
    storage: str | None = None                  # s3://bucket/prefix or a local directory
    checkpoint_every: int | None = None         # also checkpoint every N steps (an epoch always ends with one)
    keep_checkpoints: int = 3
    max_failures: int = 2
    seed: int = 0
    decode_threads: int = 8
    log_every_s: float = 10.0
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    s3: S3Config | None = None                  # default: from the AWS_* environment
    address: str | None = None                  # Ray cluster to join (default RAY_ADDRESS or a local Ray)
    worker_status_dir: str | None = None        # local dir: each worker keeps rank-<r>.json (pid, step) fresh

    @property
    def size(self) -> int:
        return self.image_size or (32 if self.small_input else 224)

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else _DEFAULT_LR[self.optimizer][self.mode]

    @property
    def two_views(self) -> bool:
        return self.mode in ("alpa-finetune", "joint")

    def validate(self) -> "TrainConfig":
        """Raise :class:`ConfigError` naming the flag at fault; returns self."""
        if self.mode not in MODES:
            raise ConfigError(f"--mode {self.mode!r}: choose one of {', '.join(MODES)}")
        if self.arch not in ARCHITECTURES:
            raise ConfigError(f"--arch {self.arch!r}: choose one of {', '.join(ARCHITECTURES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"--optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.device == "cuda":
            self.device = "gpu"
        if self.device not in DEVICES:
            raise ConfigError(f"--device {self.device!r}: choose one of {', '.join(DEVICES)}")
        if self.mode == "alpa-finetune" and not self.init:
            raise ConfigError("--mode alpa-finetune needs --init: the trained weights to fine-tune (SPEC §8, MODE-F)")
        for flag, value, low in (("--epochs", self.epochs, 1), ("--batch-size", self.batch_size, 1),
                                 ("--workers", self.workers, 1), ("--image-size", self.image_size, 8),
                                 ("--checkpoint-every", self.checkpoint_every, 1),
                                 ("--keep-checkpoints", self.keep_checkpoints, 1),
                                 ("--max-failures", self.max_failures, -1),
                                 ("--decode-threads", self.decode_threads, 1),
                                 ("--supcon-dim", self.supcon_dim, 1), ("--alpa-chunk", self.alpa_chunk, 1)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise ConfigError(f"{flag} must be an integer >= {low}, got {value!r}")
        for flag, value in (("--lr", self.lr), ("--supcon-temperature", self.supcon_temperature),
                            ("--cpus-per-worker", self.cpus_per_worker)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{flag} must be a positive number, got {value!r}")
        for flag, value in (("--momentum", self.momentum), ("--weight-decay", self.weight_decay),
                            ("--warmup-epochs", self.warmup_epochs), ("--alpa-weight", self.alpa_weight),
                            ("--log-every", self.log_every_s)):
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{flag} must be a number >= 0, got {value!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("mean and std must hold 3 values each, std > 0")
        _check_uri("--data", self.data)
        _check_uri("--output", self.output)
        if not str(self.output).endswith(".safetensors"):
            raise ConfigError(f"--output {self.output!r} must name a .safetensors file (e.g. out/model.safetensors)")
        if self.init:
            _check_uri("--init", self.init)
        if self.storage:
            parsed = _check_uri("--storage", self.storage)
            if parsed.is_s3 and not parsed.bucket:
                raise ConfigError(f"--storage {self.storage!r}: write s3://bucket/prefix")
        if self.run_name is not None and (not self.run_name or "/" in self.run_name or self.run_name.startswith(".")):
            raise ConfigError(f"--run-name {self.run_name!r} must be a non-empty name without '/'")
        return self

    def uses_s3(self) -> bool:
        return any(v and is_s3_uri(v) for v in (self.data, self.output, self.init, self.storage))

    def to_json(self) -> dict[str, Any]:
        """The run settings as plain JSON (no credentials)."""
        out = asdict(self)
        out.pop("s3", None)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        out["image_size"], out["lr"] = self.size, self.base_lr
        return out


def _check_uri(flag: str, value: str):
    try:
        return parse_uri(value)
    except ConfigError as e:
        raise ConfigError(f"{flag}: {e}") from None


@dataclass
class TrainResult:
    """What a finished run produced. ``history`` has one entry per epoch (loss, img/s, ...) and ``attempts`` one
    per start of the training function (first start, each recovery from a failure, each re-run of the run name),
    with the global step it started from."""

    output: str
    metadata: str
    heads: str | None
    run_name: str
    storage: str
    checkpoint: str | None
    epochs_completed: int
    global_step: int
    final_loss: float | None
    images_per_second: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    skipped_images: int = 0
    skipped_examples: list[dict[str, str]] = field(default_factory=list)
    param_checksums: list[str] = field(default_factory=list)   # one per rank, at the end of the run
    sha256: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
