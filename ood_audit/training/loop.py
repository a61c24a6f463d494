"""The function every Ray Train worker runs: build, maybe resume, train its shard under DDP, checkpoint.

Resuming is Ray Train's: ``ray.train.get_checkpoint()`` hands each (re)started worker the run's latest
reported checkpoint, both after a worker failure (``FailureConfig``) and when a run is started again with
the same name and storage (Ray Train V2 reloads the run's checkpoint list from storage). Every start is
appended to the ``attempts`` history with the global step it resumed from.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ood_audit.preprocess import Preprocess, decoded_to_unit
from ood_audit.progress import fmt_eta
from ood_audit.training.augment import augment, contrastive_view
from ood_audit.training.checkpoint import check_compatible, read_checkpoint, write_checkpoint
from ood_audit.training.config import TrainConfig
from ood_audit.training.data import (BN_REFRESH_IMAGES, MAX_LISTED_FAILURES, ShardReader, SkipLog, epoch_shard,
                                     refresh_batchnorm, steps_per_epoch, validate)
from ood_audit.training.gather import GlobalBatch
from ood_audit.training.net import TrainNet

log = logging.getLogger("ood_audit.training")
MAX_STORED_BAD_URIS = 10_000


def lr_at(step: int, total_steps: int, base_lr: float, warmup_steps: int) -> float:
    """Linear warm-up, then cosine decay to zero at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / span)))


def make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter],
                   backbone: list[torch.nn.Parameter] | None = None) -> torch.optim.Optimizer:
    """SGD or AdamW over ``params`` at the base rate and, as a second group, ``backbone`` (the pretrained
    layers) at ``cfg.lr_scale`` times it. Each group's ``lr_scale`` is what :func:`lr_at` is multiplied by."""
    groups: list[dict[str, Any]] = [{"params": params, "lr_scale": 1.0}]
    if backbone:
        groups.append({"params": backbone, "lr_scale": cfg.lr_scale})
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.base_lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.momentum > 0)


def param_checksum(model: torch.nn.Module) -> str:
    """sha256 over every parameter's bytes, in state-dict order (buffers excluded: BN statistics are per rank)."""
    import hashlib

    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _Status:
    """Keeps ``<dir>/rank-<r>.json`` current (pid, attempt, step), for operators and fault drills."""

    def __init__(self, directory: str | None, rank: int) -> None:
        self.path = Path(directory, f"rank-{rank}.json") if directory else None
        self.fields: dict[str, Any] = {"rank": rank, "pid": os.getpid(), "host": os.uname().nodename}

    def update(self, **fields: Any) -> None:
        if self.path is None:
            return
        self.fields.update(fields, updated=time.time())
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.fields))
        os.replace(tmp, self.path)


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _all_gather(obj: Any, world: int) -> list[Any]:
    if world == 1 or not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _mean_over_ranks(value: float, world: int, device: torch.device) -> float:
    """The mean of ``value`` over the ranks: the step's global loss, the same number on every rank, so that a
    non-finite loss stops every rank at the same step and no collective is left waiting."""
    if world == 1:
        return value
    return _all_reduce_sum([value], device)[0] / world


def merge_batchnorm(model: torch.nn.Module, images: int, world: int, device: torch.device) -> None:
    """Every rank's BatchNorm statistics become the image-weighted mean of the ranks' refreshed ones.

    Why: each rank refreshes on its share of the images (:func:`refresh_batchnorm`, a cumulative average of
    batch statistics), so the whole refresh costs one rank's share of the time instead of keeping the others
    waiting for rank 0. The mean over ranks is the same cumulative average over all their batches. Then rank
    0's buffers are broadcast, so that every rank validates, and rank 0 saves, bit-identical statistics.
    """
    if world == 1:
        return
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.running_mean is not None]
    total = _all_reduce_sum([float(images)], device)[0]
    if norms and total > 0:
        weight = float(images) / total
        for m in norms:
            for buf in (m.running_mean, m.running_var):
                merged = buf.double() * weight
                dist.all_reduce(merged)
                buf.copy_(merged.to(buf.dtype))
    for buf in model.buffers():
        dist.broadcast(buf, 0)


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    import ray.train
    import ray.train.torch
    from safetensors.torch import load as safetensors_bytes_to_state
    from torch.nn.parallel import DistributedDataParallel

    from ood_audit.console import relay_logs_to_driver
    from ood_audit.models import build_model, load_state_strict
    from ood_audit.models.precision import training_precision
    from ood_audit.models.weights import load_state_new_head

    cfg: TrainConfig = ray.get(config["cfg_ref"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if rank == 0:
        relay_logs_to_driver(config.get("log_queue"))
    use_gpu = bool(config["use_gpu"])
    device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
    torch.set_num_threads(max(1, int(config["torch_threads"])))
    table = ray.get(config["data_ref"])
    uris = table.column("uri").to_pylist()
    labels = table.column("label").to_numpy().astype(np.int64)
    train_rows, val_rows = ray.get(config["split_ref"])
    class_names = list(config["class_names"])
    status = _Status(cfg.worker_status_dir, rank)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, num_classes=len(class_names), small_input=cfg.small_input)
    new_head = False
    if config["init_ref"] is not None:  # the driver has said (once) which head tensors are re-initialised
        new_head = bool(load_state_new_head(model, safetensors_bytes_to_state(ray.get(config["init_ref"])),
                                            source=str(cfg.init)))
    global_batch = GlobalBatch.create(rank, world) if cfg.two_views else GlobalBatch()
    net = TrainNet(model, cfg.mode, image_size=cfg.size, mean=cfg.mean, std=cfg.std, alpa_weight=cfg.alpa_weight,
                   supcon_temperature=cfg.supcon_temperature, supcon_dim=cfg.supcon_dim,
                   alpa_chunk=cfg.alpa_chunk, global_batch=global_batch, new_head=new_head,
                   precision=training_precision(cfg.precision, device)).to(device)
    # One group, in parameter order, at scale 1: the layout of checkpoints written before --backbone-lr-scale.
    if cfg.lr_scale == 1.0:
        optimizer = make_optimizer(cfg, [p for p in net.parameters() if p.requires_grad])
    else:
        optimizer = make_optimizer(cfg, *net.parameter_groups())
    identity = {"arch": cfg.arch, "num_classes": len(class_names), "small_input": cfg.small_input,
                "image_size": cfg.size, "mode": cfg.mode, "class_names": class_names, "optimizer": cfg.optimizer,
                "val_fraction": cfg.val_fraction}
    state: dict[str, Any] = {"epoch": 0, "epoch_images": 0, "global_step": 0, "images_seen": 0,
                             "history": [], "attempts": [], "skipped": {"count": 0, "examples": [], "uris": []}}
    resumed_from = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            data = read_checkpoint(d)
        check_compatible(data.train_state.get("model", {}), identity, ctx.get_experiment_name())
        load_state_strict(model, data.model_state, source="checkpoint model.safetensors")
        net.load_heads_state(data.heads_state)
        optimizer.load_state_dict(data.optimizer_state(like=optimizer))
        state.update({k: data.train_state[k] for k in state if k in data.train_state})
        resumed_from = data.train_state.get("checkpoint_name")
    state["attempts"].append({"attempt": len(state["attempts"]) + 1, "start_step": state["global_step"],
                              "start_epoch": state["epoch"], "world_size": world, "resumed_from": resumed_from,
                              "started_at": _now()})
    skips = SkipLog()
    for uri in state["skipped"]["uris"]:
        skips.bad.add(uri)
    skips.examples = list(state["skipped"]["examples"])

    steps_epoch = steps_per_epoch(len(train_rows), world, cfg.batch_size)
    total_steps = cfg.epochs * steps_epoch
    warmup_steps = int(round(cfg.warmup_epochs * steps_epoch))
    if rank == 0:
        where = f"resuming from {resumed_from} (epoch {state['epoch']}, step {state['global_step']})" \
            if resumed_from else "starting from scratch" if not cfg.init else \
            f"starting from {cfg.init} (backbone lr x{cfg.lr_scale:g}, head-only epochs {cfg.freeze_epochs})"
        log.info("training %s (%s) on %d image(s) + %d held out for validation, %d class(es), %d worker(s), "
                 "global batch %d, lr %.4g, warm-up %d step(s), %s activations: %s", cfg.arch, cfg.mode,
                 len(train_rows), len(val_rows), len(class_names), world, cfg.global_batch, cfg.base_lr, warmup_steps,
                 net.precision, where)

    def wrap(frozen: bool) -> torch.nn.Module:
        """The module to step, with the backbone frozen or not. DDP registers the parameters that need a
        gradient when it is built, so it is built again when the linear-probe phase ends."""
        net.freeze_backbone(frozen)
        if world == 1:
            return net
        return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    frozen = state["epoch"] < cfg.freeze_epochs
    ddp = wrap(frozen)
    net.train()

    norm = {"mean": tuple(cfg.mean), "std": tuple(cfg.std)}
    preprocess = Preprocess(size=cfg.size if cfg.small_input else int(round(cfg.size * 8 / 7)), mode="crop", **norm)
    val_preprocess = Preprocess(size=cfg.size, mode="crop", **norm)  # what calibration and the scan decode
    views_per_image = 2 if cfg.two_views else 1
    status.update(attempt=len(state["attempts"]), epoch=state["epoch"], global_step=state["global_step"],
                  checkpoint_step=state["global_step"] if resumed_from else None)

    def save_and_report(metrics: dict[str, Any]) -> None:
        name = f"checkpoint_step{state['global_step']:09d}"
        state["checkpoint_name"] = name
        if rank == 0:
            with tempfile.TemporaryDirectory(prefix="ood-audit-ckpt-") as d:
                write_checkpoint(d, model_state=model.state_dict(), heads_state=net.heads_state(),
                                 optimizer=optimizer, train_state={**state, "model": identity,
                                                                   "config": cfg.to_json()})
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                                 checkpoint_dir_name=name)
        else:
            ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
        status.update(checkpoint_step=state["global_step"])

    last_val = next((h["val_accuracy"] for h in reversed(state["history"]) if h.get("val_accuracy") is not None),
                    None)
    attempt_start, attempt_steps = time.perf_counter(), 0
    diverged: dict[str, Any] | None = None
    while state["epoch"] < cfg.epochs and diverged is None:
        epoch = state["epoch"]
        if frozen and epoch >= cfg.freeze_epochs:
            frozen = False
            ddp = wrap(frozen)
            if rank == 0:
                log.info("epoch %d: linear-probe warm-up over, training the whole network", epoch + 1)
        start_step = min(steps_epoch, state["epoch_images"] // (cfg.batch_size * world))
        rows = train_rows[epoch_shard(len(train_rows), world, rank, epoch, cfg.seed)]
        reader = ShardReader(uris, labels, rows, batch_size=cfg.batch_size, steps=steps_epoch,
                             preprocess=preprocess, s3=cfg.s3, threads=cfg.decode_threads, skips=skips,
                             start_step=start_step)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 1_009 + rank * 17 + start_step)
        loss_sum, loss_n, epoch_start, last_log = 0.0, 0, time.perf_counter(), time.perf_counter()
        for step_in_epoch, (images, targets) in enumerate(reader, start=start_step):
            pixels = decoded_to_unit(images, device, non_blocking=True)
            targets = targets.to(device)
            if views_per_image == 2:
                pixels = torch.cat([contrastive_view(pixels, size=cfg.size, generator=gen) for _ in range(2)])
                targets = torch.cat([targets, targets])
            else:
                pixels = augment(pixels, size=cfg.size, small_input=cfg.small_input, generator=gen)
            lr = lr_at(state["global_step"], total_steps, cfg.base_lr, warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            out = ddp(pixels, targets)
            value = _mean_over_ranks(float(out["objective"]), world, device)
            if not math.isfinite(value):
                diverged = {"step": state["global_step"] + 1, "epoch": epoch + 1, "loss": str(value), "lr": lr}
                break
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            optimizer.step()
            loss_sum, loss_n = loss_sum + value, loss_n + 1
            state["global_step"] += 1
            state["epoch_images"] += cfg.batch_size * world
            state["images_seen"] += cfg.batch_size * world
            attempt_steps += 1
            status.update(epoch=epoch, global_step=state["global_step"])
            now = time.perf_counter()
            if rank == 0 and now - last_log >= cfg.log_every_s and step_in_epoch + 1 < steps_epoch:
                last_log = now
                rate = attempt_steps / max(1e-9, now - attempt_start)
                log.info("  epoch %d/%d  step %d/%d  loss %.4f  val acc %s  %.1f img/s  ETA %s", epoch + 1,
                         cfg.epochs, step_in_epoch + 1, steps_epoch, loss_sum / loss_n,
                         "-" if last_val is None else f"{last_val:.3f}", rate * cfg.batch_size * world,
                         fmt_eta((total_steps - state["global_step"]) / max(rate, 1e-9)))
            if (cfg.checkpoint_every and state["global_step"] % cfg.checkpoint_every == 0
                    and step_in_epoch + 1 < steps_epoch):
                save_and_report({"epoch": epoch, "global_step": state["global_step"], "loss": loss_sum / loss_n})
        if diverged is not None:
            break
        seconds = time.perf_counter() - epoch_start
        used = refresh_batchnorm(net.taps, uris, rows[: -(-BN_REFRESH_IMAGES // world)], preprocess=val_preprocess,
                                 s3=cfg.s3, threads=cfg.decode_threads, device=device,
                                 batch_size=2 * cfg.batch_size)
        merge_batchnorm(model, used, world, device)
        v_loss, v_correct, v_n = _all_reduce_sum(list(validate(
            net.taps, uris, labels, val_rows[rank::world], preprocess=val_preprocess, s3=cfg.s3,
            threads=cfg.decode_threads, skips=skips, device=device, batch_size=2 * cfg.batch_size)), device)
        val_seconds = time.perf_counter() - epoch_start - seconds
        images_done = (steps_epoch - start_step) * cfg.batch_size * world
        _merge_skips(skips, _all_gather((sorted(skips.bad)[:MAX_STORED_BAD_URIS], skips.examples), world))
        last_val = v_correct / v_n if v_n else None
        record = {"epoch": epoch + 1, "global_step": state["global_step"], "loss": loss_sum / max(1, loss_n),
                  "val_loss": v_loss / v_n if v_n else None, "val_accuracy": last_val, "val_images": int(v_n),
                  "images": images_done, "seconds": round(seconds, 3), "val_seconds": round(val_seconds, 3),
                  "images_per_second": images_done / max(seconds, 1e-9), "skipped_images": len(skips.bad),
                  "lr": optimizer.param_groups[0]["lr"]}
        state["history"].append(record)
        state["skipped"] = {"count": len(skips.bad), "examples": skips.examples,
                            "uris": sorted(skips.bad)[:MAX_STORED_BAD_URIS]}
        state["epoch"], state["epoch_images"] = epoch + 1, 0
        if rank == 0:
            rate = attempt_steps / max(1e-9, time.perf_counter() - attempt_start)
            val = "no validation images" if not v_n else \
                f"val acc {record['val_accuracy']:.3f} (loss {record['val_loss']:.4f}, {int(v_n)} images)"
            log.info("epoch %d/%d  loss %.4f  %s  %.1f img/s  ETA %s%s", epoch + 1, cfg.epochs, record["loss"], val,
                     record["images_per_second"], fmt_eta((total_steps - state["global_step"]) / max(rate, 1e-9)),
                     f"  ({len(skips.bad)} unreadable image(s) skipped)" if skips.bad else "")
        save_and_report(record)
    checksums = _all_gather(param_checksum(model), world)
    return {"param_checksums": checksums, "global_step": state["global_step"], "epoch": state["epoch"],
            "diverged": diverged}


def _merge_skips(skips: SkipLog, gathered: list[tuple[list[str], list[dict[str, str]]]]) -> None:
    """Every rank learns every rank's unreadable images, so none of them is fetched again."""
    for bad, examples in gathered:
        for ex in examples:
            if len(skips.examples) < MAX_LISTED_FAILURES and all(e["uri"] != ex["uri"] for e in skips.examples):
                skips.examples.append(ex)
        skips.bad.update(bad)
