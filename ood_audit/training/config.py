"""What a training run needs (:class:`TrainConfig`) and what it gives back (:class:`TrainResult`).

Validation messages name the command-line flag, so the CLI and library callers see the same one line.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from ood_audit.errors import ConfigError
from ood_audit.io.fs import S3Config
from ood_audit.io.uri import is_remote_uri, parse_uri
from ood_audit.models import ARCHITECTURES, IMAGENET_MEAN, IMAGENET_STD

MODES: tuple[str, ...] = ("ce", "alpa-finetune", "joint")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
DEVICES: tuple[str, ...] = ("auto", "cpu", "gpu")
TRAIN_PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16")

# Learning rates for a global batch of REFERENCE_BATCH images, used when --lr is not given; fine-tuning
# starts from trained weights, so it moves gently. The rate actually used is scaled to the run's global
# batch (workers x batch size) by :func:`scaled_lr`.
REFERENCE_BATCH = 256
REFERENCE_LR = {
    "sgd": {"ce": 0.1, "alpa-finetune": 0.01, "joint": 0.1},
    "adamw": {"ce": 1e-3, "alpa-finetune": 1e-4, "joint": 1e-3},
}
DEFAULT_WARMUP_EPOCHS = 1.0
# The rate of the pretrained layers relative to the new ones when fine-tuning a classifier from --init (see
# TrainConfig.lr_scale): the head learns at the scratch rate, the backbone ten times slower.
PRETRAINED_BACKBONE_LR_SCALE = 0.1


def scaled_lr(optimizer: str, mode: str, global_batch: int) -> float:
    """The default learning rate for ``global_batch`` images per step.

    SGD follows the linear scaling rule (Goyal et al., "Accurate, Large Minibatch SGD", 2017):
    lr = lr_ref * B / 256, which keeps the update per image constant as workers are added. AdamW's update
    is normalised by its second-moment estimate, so it follows the square-root rule instead
    (Malladi et al., "On the SDEs and Scaling Rules for Adaptive Gradient Algorithms", 2022).
    Both pair with a linear warm-up (``warmup_epochs``, default one epoch), which absorbs the large
    early gradients of a freshly initialised network.
    """
    ratio = global_batch / REFERENCE_BATCH
    ref = REFERENCE_LR[optimizer][mode]
    return ref * (ratio if optimizer == "sgd" else math.sqrt(ratio))


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
    lr: float | None = None                     # default: scaled_lr(optimizer, mode, global batch)
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = DEFAULT_WARMUP_EPOCHS
    freeze_backbone_epochs: int | None = None   # linear-probe warm-up with --init (default 0, see freeze_epochs)
    backbone_lr_scale: float | None = None      # lr of the pretrained layers / lr (default: see lr_scale)
    val_fraction: float = 0.1                   # held out by object key for validation (0 = none)
    alpa_weight: float = 1.0                    # λ in L_SupCon + λ·L_ALPA (joint mode)
    supcon_temperature: float = 0.1
    supcon_dim: int = 128
    alpa_chunk: int = 64
    workers: int = 2
    device: str = "auto"                        # auto (GPUs when the cluster has them), cpu, gpu (or cuda)
    precision: str = "auto"                     # the forward's activations (models.precision.training_precision)
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
    def global_batch(self) -> int:
        """Images per optimizer step over all workers (the contrastive modes feed two views of each)."""
        return self.workers * self.batch_size

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else scaled_lr(self.optimizer, self.mode, self.global_batch)

    @property
    def freeze_epochs(self) -> int:
        """Epochs in which only the new layers train (the classifier head, the training-only projectors)."""
        return self.freeze_backbone_epochs if self.freeze_backbone_epochs is not None else 0

    @property
    def lr_scale(self) -> float:
        """The pretrained layers' learning rate over ``base_lr``; the head and the projectors get ``base_lr``.

        Defaults: from scratch 1 (nothing is pretrained). From ``--init`` in ``ce`` and ``joint``
        mode :data:`PRETRAINED_BACKBONE_LR_SCALE` (0.1), the usual fine-tuning recipe: the head, often new,
        learns at the scratch rate while the backbone moves ten times slower, so that the large early
        gradients of a fresh head (also tamed by the warm-up) do not wash out the pretrained features
        (Kumar et al., "Fine-Tuning can Distort Pretrained Features", ICLR 2022). ``alpa-finetune`` is the
        MODE paper's MODE-F (SPEC §8): L_ALPA updates the backbone and the projectors together, so 1; its
        base rate is already a tenth of the scratch rate (:data:`REFERENCE_LR`).
        """
        if self.backbone_lr_scale is not None:
            return self.backbone_lr_scale
        return PRETRAINED_BACKBONE_LR_SCALE if self.init and self.mode != "alpa-finetune" else 1.0

    @property
    def recipe(self) -> dict[str, Any]:
        """The training recipe as recorded in the weights' provenance (common to resumes of a run)."""
        return {"mode": self.mode, "epochs": self.epochs, "lr": self.base_lr, "optimizer": self.optimizer,
                "momentum": self.momentum, "weight_decay": self.weight_decay, "warmup_epochs": self.warmup_epochs,
                "freeze_backbone_epochs": self.freeze_epochs, "backbone_lr_scale": self.lr_scale,
                "batch_size": self.batch_size, "workers": self.workers, "global_batch": self.global_batch,
                "image_size": self.size, "small_input": self.small_input, "seed": self.seed}

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
        if self.precision not in TRAIN_PRECISIONS:
            raise ConfigError(f"--precision {self.precision!r}: choose one of {', '.join(TRAIN_PRECISIONS)}")
        if self.mode == "alpa-finetune" and not self.init:
            raise ConfigError("--mode alpa-finetune needs --init: the trained weights to fine-tune (SPEC §8, MODE-F)")
        for flag, value, low in (("--epochs", self.epochs, 1), ("--batch-size", self.batch_size, 1),
                                 ("--workers", self.workers, 1), ("--image-size", self.image_size, 8),
                                 ("--checkpoint-every", self.checkpoint_every, 1),
                                 ("--keep-checkpoints", self.keep_checkpoints, 1),
                                 ("--max-failures", self.max_failures, -1),
                                 ("--decode-threads", self.decode_threads, 1),
                                 ("--supcon-dim", self.supcon_dim, 1), ("--alpa-chunk", self.alpa_chunk, 1),
                                 ("--freeze-backbone-epochs", self.freeze_backbone_epochs, 0)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise ConfigError(f"{flag} must be an integer >= {low}, got {value!r}")
        for flag, value in (("--lr", self.lr), ("--supcon-temperature", self.supcon_temperature),
                            ("--cpus-per-worker", self.cpus_per_worker),
                            ("--backbone-lr-scale", self.backbone_lr_scale)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{flag} must be a positive number, got {value!r}")
        if not self.init and (self.freeze_backbone_epochs or (self.backbone_lr_scale or 1.0) != 1.0):
            flag = "--freeze-backbone-epochs" if self.freeze_backbone_epochs else "--backbone-lr-scale"
            raise ConfigError(f"{flag} applies to pretrained layers: it needs --init")
        for flag, value in (("--momentum", self.momentum), ("--weight-decay", self.weight_decay),
                            ("--warmup-epochs", self.warmup_epochs), ("--alpa-weight", self.alpa_weight),
                            ("--log-every", self.log_every_s)):
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{flag} must be a number >= 0, got {value!r}")
        if not (math.isfinite(self.val_fraction) and 0.0 <= self.val_fraction < 0.5):
            raise ConfigError(f"--val-fraction must be a number in [0, 0.5), got {self.val_fraction!r}")
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
            if parsed.is_remote and not parsed.bucket:
                raise ConfigError(f"--storage {self.storage!r}: write {parsed.scheme}://bucket/prefix")
        if self.run_name is not None and (not self.run_name or "/" in self.run_name or self.run_name.startswith(".")):
            raise ConfigError(f"--run-name {self.run_name!r} must be a non-empty name without '/'")
        return self

    def uses_s3(self) -> bool:
        """Whether any location is in object storage (so the storage settings are needed)."""
        return any(v and is_remote_uri(v) for v in (self.data, self.output, self.init, self.storage))

    def to_json(self) -> dict[str, Any]:
        """The run settings as plain JSON (no credentials)."""
        out = asdict(self)
        out.pop("s3", None)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        out["image_size"], out["lr"] = self.size, self.base_lr
        out["freeze_backbone_epochs"], out["backbone_lr_scale"] = self.freeze_epochs, self.lr_scale
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
    val_accuracy: float | None = None           # top-1 on the held-out split after the last epoch
    val_loss: float | None = None
    val_images: int = 0
    chance_accuracy: float | None = None        # max(1/C, the majority class's share of the split)
    warning: str | None = None                  # set when the model did not learn (see learned_check)
    history: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    skipped_images: int = 0
    skipped_examples: list[dict[str, str]] = field(default_factory=list)
    param_checksums: list[str] = field(default_factory=list)   # one per rank, at the end of the run
    sha256: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
