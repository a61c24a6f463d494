"""The driver side of training: check inputs, size the Ray Train job, run it, write the final weights.

    result = train(TrainConfig(data="s3://bucket/train/", output="s3://bucket/models/r18.safetensors",
                               arch="resnet18", small_input=True, epochs=30, workers=2,
                               run_name="r18-ce", storage="s3://bucket/runs"))

A run is named (``run_name``) and lives under ``storage``. Starting a run whose name already has
checkpoints there resumes from the latest one (Ray Train V2 reloads the run's checkpoint list from
storage), so ``epochs`` can be raised on a finished run to train further; the cosine learning-rate schedule
is then stretched over the new total. The model-defining settings (architecture, classes, input size,
mode, optimizer) must stay the same, or the run is refused with a :class:`CheckpointError`; a resume keeps
the run's ``freeze_backbone_epochs`` and ``backbone_lr_scale`` (giving other values is refused too).

``init`` weights whose classifier head has another number of classes get a new head (SPEC §16), said in
one line. The metadata (``<stem>.json``) records the weights' provenance: trained by this run, from which
init (with its sha256), with which recipe.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ood_audit.console import LogRelay
from ood_audit.errors import CheckpointError, ConfigError, DataError, OodAuditError, TrainingDivergedError
from ood_audit.io.dataset import LabelledDataset, load_labelled
from ood_audit.io.fs import S3Config, read_bytes, resolve, write_bytes
from ood_audit.io.uri import parse_uri
from ood_audit.ray_setup import init_ray
from ood_audit.training.checkpoint import HEADS_FILE, MODEL_FILE, STATE_FILE, check_compatible
from ood_audit.training.config import TrainConfig, TrainResult
from ood_audit.training.data import chance_accuracy, learned_margin, validation_split
from ood_audit.training.loop import train_loop_per_worker

log = logging.getLogger(__name__)
METADATA_FORMAT_VERSION = 1


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) a training run on Ray Train and write the final weights and their metadata."""
    started = time.perf_counter()
    cfg = config.validate()
    s3 = cfg.s3 or (S3Config.from_env() if cfg.uses_s3() else None)
    cfg = replace(cfg, s3=s3)
    dataset = load_labelled(cfg.data, s3=s3)
    train_rows, val_rows = validation_split(dataset.uris(), dataset.source, cfg.val_fraction)
    if len(train_rows) < cfg.workers:
        raise DataError(f"--data {cfg.data} has {len(train_rows)} training image(s) after the --val-fraction "
                        f"{cfg.val_fraction:g} split, fewer than --workers {cfg.workers}")
    if cfg.val_fraction > 0 and len(val_rows) == 0:
        log.warning("--val-fraction %g held out no image of %d: training without validation", cfg.val_fraction,
                    len(dataset))
    init_bytes = _read_init(cfg, dataset) if cfg.init else None
    init_sha256 = hashlib.sha256(init_bytes).hexdigest() if init_bytes is not None else None
    run_name = cfg.run_name or f"{cfg.arch}-{cfg.mode}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"

    init_ray(cfg.address, runtime_env={"env_vars": s3.env()} if s3 else None)
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu, cpus = _resources(cfg, ray.cluster_resources())
    storage_path, storage_fs, storage_label = _storage(cfg, s3)
    identity = {"arch": cfg.arch, "num_classes": dataset.num_classes, "small_input": cfg.small_input,
                "image_size": cfg.size, "mode": cfg.mode, "class_names": list(dataset.class_names),
                "optimizer": cfg.optimizer, "val_fraction": cfg.val_fraction}
    saved_recipe = _log_resume(run_name, storage_path, storage_fs, storage_label, identity, cfg.epochs)
    cfg = _keep_recipe(cfg, saved_recipe, run_name)
    log.info("run %s: %d image(s), %d class(es), %d worker(s) on %s (%.2g CPU each); checkpoints under %s/%s",
             run_name, len(dataset), dataset.num_classes, cfg.workers, "GPU" if use_gpu else "CPU", cpus,
             storage_label, run_name)

    relay = LogRelay()
    # Ray Train's controller unpickles this dict: every value is a plain one or an object ref, so that it
    # imports none of this package (nor torchvision), which would add about 1.5 s to every run's start.
    loop_config = {"cfg_ref": ray.put(cfg), "data_ref": ray.put(dataset.table),
                   "class_names": list(dataset.class_names), "split_ref": ray.put((train_rows, val_rows)),
                   "log_queue": relay.queue, "init_ref": ray.put(init_bytes) if init_bytes is not None else None,
                   "use_gpu": use_gpu, "torch_threads": max(1, int(cpus))}
    resources = {"CPU": cpus, **({"GPU": 1} if use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        raise _user_error(e) or e
    finally:
        relay.close()
    returned = result.return_value or {}
    if returned.get("diverged"):
        d = returned["diverged"]
        raise TrainingDivergedError(
            f"the training loss became {d['loss']} at step {d['step']} (epoch {d['epoch']}, lr {d['lr']:.3g}); "
            f"nothing was written to --output. Try a lower --lr (e.g. {d['lr'] / 10:.2g}) or a longer "
            f"--warmup-epochs; the run's checkpoints stay under {storage_label}/{run_name}")
    if result.checkpoint is None:
        raise CheckpointError(f"run {run_name} finished without a checkpoint under {storage_label}")
    labels = dataset.labels()
    validation = {"fraction": cfg.val_fraction, "images": int(len(val_rows)),
                  "method": "sha256('val:' + key under --data) / 2^64 < fraction",
                  "chance_accuracy": chance_accuracy(labels[val_rows], dataset.num_classes)}
    validation["learned_above"] = learned_margin(validation["chance_accuracy"], len(val_rows))
    out = _write_output(cfg, result.checkpoint, run_name, storage_label, returned, validation, init_sha256)
    out.seconds = round(time.perf_counter() - started, 2)
    return out


def _read_init(cfg: TrainConfig, dataset: LabelledDataset) -> bytes:
    """The ``--init`` weights' bytes, after checking they load strictly into the model being trained."""
    from safetensors.torch import load as load_safetensors

    from ood_audit.models import build_model
    from ood_audit.models.weights import load_state_new_head

    try:
        data = read_bytes(cfg.init, s3=cfg.s3)
    except FileNotFoundError:
        raise ConfigError(f"--init {cfg.init}: no such file or object") from None
    try:
        state = load_safetensors(data)
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"--init {cfg.init} is not a readable safetensors file: {e}") from None
    model = build_model(cfg.arch, num_classes=dataset.num_classes, small_input=cfg.small_input)
    changed = load_state_new_head(model, state,
                                  source=f"--init {cfg.init} (for {cfg.arch} with {dataset.num_classes} classes)")
    if changed:  # the one line that says so (SPEC §16); the workers load the same way without a word
        log.info("--init %s: new classifier head for %d classes, %d tensor(s) re-initialised: %s", cfg.init,
                 dataset.num_classes, len(changed), ", ".join(changed))
    return data


def _keep_recipe(cfg: TrainConfig, saved: dict[str, Any] | None, run_name: str) -> TrainConfig:
    """``cfg`` with the fine-tuning settings resolved: a resumed run keeps its checkpoint's values, and a
    flag that asks for others is refused (the schedule would change under the optimizer's state)."""
    resolved: dict[str, Any] = {"freeze_backbone_epochs": cfg.freeze_epochs, "backbone_lr_scale": cfg.lr_scale}
    if saved is None:
        return replace(cfg, **resolved)
    legacy = {"freeze_backbone_epochs": 0, "backbone_lr_scale": 1.0}  # runs checkpointed before these settings
    for key in resolved:
        value = saved.get(key, legacy[key])
        if getattr(cfg, key) is not None and getattr(cfg, key) != value:
            raise CheckpointError(f"run {run_name!r} was trained with --{key.replace('_', '-')} {value:g} but this "
                                  f"run asks for {getattr(cfg, key):g}; use a new --run-name or leave the flag out")
        resolved[key] = value
    return replace(cfg, **resolved)


def _resources(cfg: TrainConfig, cluster: dict[str, float]) -> tuple[bool, float]:
    """(use_gpu, CPUs per worker) for this cluster. ``auto`` uses GPUs when the cluster has any."""
    gpus, cpus = cluster.get("GPU", 0.0), cluster.get("CPU", 0.0)
    use_gpu = cfg.device == "gpu" or (cfg.device == "auto" and gpus >= 1)
    if use_gpu and gpus < cfg.workers:
        if cfg.device == "auto":
            raise ConfigError(f"--workers {cfg.workers} needs {cfg.workers} GPU(s) but the cluster has {gpus:g}; "
                              f"use --workers {int(gpus)} or --device cpu")
        log.warning("--workers %d with --device gpu: the cluster has %g GPU(s) now; waiting for more",
                    cfg.workers, gpus)
    if cfg.cpus_per_worker is not None:
        per = cfg.cpus_per_worker
        if per * cfg.workers > cpus:
            log.warning("--cpus-per-worker %g x %d workers exceeds the cluster's %g CPU(s); the run waits for them",
                        per, cfg.workers, cpus)
    elif cpus >= cfg.workers:
        per = float(max(1, math.floor(cpus / cfg.workers)))
    else:  # fewer CPUs than workers: share them out so the run can start at all
        per = math.floor(100 * cpus / cfg.workers) / 100
        if per <= 0:
            raise ConfigError(f"the Ray cluster has no CPUs for --workers {cfg.workers}")
    return use_gpu, per


def _storage(cfg: TrainConfig, s3: S3Config | None) -> tuple[str | None, Any, str]:
    """(storage_path, storage_filesystem, label) for Ray's RunConfig."""
    if not cfg.storage:
        from ray.train.constants import DEFAULT_STORAGE_PATH

        return None, None, DEFAULT_STORAGE_PATH
    parsed = parse_uri(cfg.storage)
    if parsed.is_remote:
        fs, path = resolve(str(parsed), s3)  # the same filesystem, credentials and emulator settings as every read
        path = path.rstrip("/")
        return path, fs, str(parsed.with_key(parsed.key.rstrip("/")))
    return parsed.key, None, parsed.key


def _log_resume(run_name: str, storage_path: str | None, storage_fs: Any, label: str,
                identity: dict[str, Any], epochs: int) -> dict[str, Any] | None:
    """Say whether this run resumes, and refuse early when its saved model settings differ. Returns the
    saved run's config (its fine-tuning settings are kept), or None for a new run."""
    import pyarrow.fs as pafs
    import ray.train
    from ray.train.constants import DEFAULT_STORAGE_PATH

    fs, base = (storage_fs, storage_path) if storage_fs is not None else \
        (pafs.LocalFileSystem(), storage_path or os.path.expanduser(DEFAULT_STORAGE_PATH))
    run_path = f"{base.rstrip('/')}/{run_name}"
    try:
        if fs.get_file_info(run_path).type != pafs.FileType.Directory:
            return None
        latest = ray.train.Result.from_path(run_path, storage_filesystem=fs).checkpoint
    except (RuntimeError, OSError) as e:  # a run folder without a checkpoint list: nothing to resume
        log.debug("no resumable checkpoint under %s: %s", run_path, e)
        return None
    if latest is None:
        return None
    with latest.filesystem.open_input_stream(f"{latest.path}/{STATE_FILE}") as f:
        saved = json.loads(f.read())
    check_compatible(saved.get("model", {}), identity, run_name)
    if saved.get("epoch", 0) >= epochs:
        log.info("run %s under %s already has %d epoch(s), --epochs is %d: nothing to train, writing its weights",
                 run_name, label, saved.get("epoch", 0), epochs)
        return saved.get("config") or {}
    log.info("run %s exists under %s: resuming from %s (epoch %d, step %d)", run_name, label,
             os.path.basename(latest.path), saved.get("epoch", 0), saved.get("global_step", 0))
    return saved.get("config") or {}


def _user_error(error: Exception) -> OodAuditError | None:
    """The first product error (DataError, CheckpointError, ...) raised inside a worker, re-raised as itself."""
    failures = getattr(error, "worker_failures", None) or {}
    for exc in failures.values():
        seen = 0
        while exc is not None and seen < 10:
            if isinstance(exc, OodAuditError):
                return type(exc)(str(exc))
            exc = getattr(exc, "cause", None) or exc.__cause__
            seen += 1
    return None


def _sibling(uri: str, suffix: str) -> str:
    base = uri[: -len(".safetensors")]
    return base + suffix


def learned_check(final: dict[str, Any], validation: dict[str, Any], num_classes: int) -> str | None:
    """The warning for a model whose last validation accuracy is not clearly above chance, else None."""
    acc = final.get("val_accuracy")
    if acc is None or acc > validation["learned_above"] or validation["learned_above"] >= 1.0:
        return None  # learned, or no validation, or too few images to tell (no accuracy could pass)
    return (f"the model did not learn: validation accuracy {acc:.3f} on {final.get('val_images', 0)} held-out "
            f"images is not clearly above chance ({validation['chance_accuracy']:.3f} for {num_classes} classes; "
            f"needs > {validation['learned_above']:.3f}). Check the labels and --lr, or train for more --epochs")


def _write_output(cfg: TrainConfig, checkpoint: Any, run_name: str, storage_label: str,
                  returned: dict[str, Any], validation: dict[str, Any], init_sha256: str | None) -> TrainResult:
    """Copy the final checkpoint's weights to ``cfg.output`` and write ``<stem>.json`` next to them."""
    import ray
    import torch

    import ood_audit

    with checkpoint.as_directory() as d:
        weights = Path(d, MODEL_FILE).read_bytes()
        heads = Path(d, HEADS_FILE).read_bytes() if Path(d, HEADS_FILE).is_file() else None
        state = json.loads(Path(d, STATE_FILE).read_text())
    digest = hashlib.sha256(weights).hexdigest()
    write_bytes(cfg.output, weights, s3=cfg.s3)
    heads_uri = None
    if heads is not None:
        heads_uri = _sibling(cfg.output, ".heads.safetensors")
        write_bytes(heads_uri, heads, s3=cfg.s3)
    history = state.get("history", [])
    final = history[-1] if history else {}
    model = state.get("model", {})
    storage = parse_uri(cfg.storage) if cfg.storage else None
    checkpoint_uri = (str(storage.with_key(checkpoint.path.partition("/")[2])) if storage and storage.is_remote
                      else checkpoint.path)
    skipped = state.get("skipped", {})
    warning = learned_check(final, validation, int(model.get("num_classes") or 0))
    if warning:
        log.warning("WARNING: %s", warning)
    elif final.get("val_accuracy") is not None and validation["learned_above"] >= 1.0:
        log.info("only %d validation image(s): too few to tell whether the model learned", validation["images"])
    meta = {
        "format_version": METADATA_FORMAT_VERSION,
        "weights": os.path.basename(parse_uri(cfg.output).key), "sha256": digest,
        "heads": os.path.basename(parse_uri(heads_uri).key) if heads_uri else None,
        "arch": cfg.arch, "num_classes": model.get("num_classes"), "small_input": cfg.small_input,
        "image_size": cfg.size, "mean": list(cfg.mean), "std": list(cfg.std),
        "class_names": model.get("class_names"), "mode": cfg.mode, "epochs": state.get("epoch"),
        "global_step": state.get("global_step"), "final_loss": final.get("loss"),
        "val_accuracy": final.get("val_accuracy"), "val_loss": final.get("val_loss"),
        "validation": {**validation, "images_scored": final.get("val_images", 0)}, "warning": warning,
        "run_name": run_name, "storage": storage_label, "checkpoint": checkpoint_uri,
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "history": history, "attempts": state.get("attempts", []),
        "skipped_images": skipped.get("count", 0), "skipped_examples": skipped.get("examples", []),
        "software": {"ood_audit": ood_audit.__version__, "torch": torch.__version__, "ray": ray.__version__},
        "config": cfg.to_json(),
        # Where the weights came from (shared with `weights import` and the bundle): trained by this run.
        "provenance": {"how": "trained", "source": None, "source_sha256": None, "run": run_name,
                       "init": cfg.init, "init_sha256": init_sha256, "recipe": cfg.recipe},
    }
    metadata_uri = _sibling(cfg.output, ".json")
    write_bytes(metadata_uri, json.dumps(meta, indent=2).encode(), s3=cfg.s3)
    log.info("wrote %s (sha256 %s…) and %s", cfg.output, digest[:12], metadata_uri)
    return TrainResult(
        output=str(parse_uri(cfg.output)), metadata=str(parse_uri(metadata_uri)),
        heads=str(parse_uri(heads_uri)) if heads_uri else None, run_name=run_name, storage=storage_label,
        checkpoint=checkpoint_uri, epochs_completed=int(state.get("epoch", 0)),
        global_step=int(state.get("global_step", 0)), final_loss=final.get("loss"),
        images_per_second=final.get("images_per_second"), val_accuracy=final.get("val_accuracy"),
        val_loss=final.get("val_loss"), val_images=int(final.get("val_images") or 0),
        chance_accuracy=validation["chance_accuracy"], warning=warning, history=history, attempts=state.get("attempts", []),
        skipped_images=int(skipped.get("count", 0)), skipped_examples=list(skipped.get("examples", [])),
        param_checksums=list(returned.get("param_checksums", [])), sha256=digest,
    )
