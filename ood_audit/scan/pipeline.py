"""The scan's Ray Data graph (SPEC §11): plan slices → fetch + decode tasks → scoring actors → writer tasks.

One graph per pipeline pass, over the chunks not yet committed; the driver (:mod:`ood_audit.scan.driver`)
consumes its output, the feed rows (:class:`~ood_audit.store.records.FeedRow`).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, NamedTuple

from ood_audit.errors import ConfigError
from ood_audit.scan.config import ScanConfig
from ood_audit.scan.duplicates import STAGING_DIR, prefix_chars_for

if TYPE_CHECKING:
    from ood_audit.scan.driver import ScanContext

log = logging.getLogger(__name__)


class Actors(NamedTuple):
    """The scoring actors of a pass: Ray resources per actor, their device, and the pool size."""

    resources: dict[str, float]
    device: str
    workers: int


def actor_resources(cfg: ScanConfig) -> Actors:
    """Size the scoring pool for the connected Ray cluster (``ConfigError`` when it cannot run)."""
    import ray

    cluster = ray.cluster_resources()
    gpus, cpus = float(cluster.get("GPU", 0)), float(cluster.get("CPU", 0))
    # An explicit --device cuda --workers N is a request: an autoscaling cluster that has no GPU node up
    # yet adds them for the N actors. Without --workers the pool is sized from the GPUs present.
    if cfg.device.startswith("cuda") and gpus < 1 and not cfg.workers:
        raise ConfigError(f"--device {cfg.device}: the Ray cluster has no GPU now; give --workers N to let an "
                          "autoscaling cluster add GPU nodes, or use --device cpu or auto")
    use_gpu = cfg.device.startswith("cuda") or (cfg.device == "auto" and gpus >= 1)
    if use_gpu:
        return Actors({"num_gpus": 1, "num_cpus": 1}, cfg.device if cfg.device != "auto" else "cuda",
                      cfg.workers or int(gpus))
    # One single-threaded actor per CPU: with half as many, half the cores sat idle while the actors computed
    # (measured on 2 CPUs, two alternating runs each: steady 106 vs 180-218 img/s at 32 px, 29-30 vs 51-64 at
    # 224 px). Each holds only a fractional CPU in Ray, so the read tasks still find room to run beside them.
    workers = cfg.workers or max(1, int(cpus))
    if workers * cfg.actor_cpus >= cpus:
        raise ConfigError(f"--workers {workers} scoring actors need {workers * cfg.actor_cpus:g} of the cluster's "
                          f"{cpus:g} CPUs, leaving none for reading; use fewer workers")
    return Actors({"num_cpus": cfg.actor_cpus}, "cpu", workers)


def build_pipeline(ctx: ScanContext, todo: list[int], attempt: int, actors: Actors) -> Any:
    """The Ray Dataset of pass ``attempt`` over chunks ``todo``; iterating it yields feed-row batches."""
    import ray

    from ood_audit.scan.read import PlanDatasource, fetch_decode
    from ood_audit.scan.score import ScoreActor
    from ood_audit.scan.write import write_parts

    cfg, plan = ctx.cfg, ctx.plan
    ray.data.DataContext.get_current().enable_progress_bars = cfg.progress_bars
    # Ray Data fuses a task stage into the next actor stage when their resources are identical; fetch +
    # decode must stay separate CPU tasks (many in flight, next to the actors), so they differ.
    resources = actors.resources
    read_cpus = cfg.read_cpus if resources.get("num_cpus") != cfg.read_cpus or resources.get("num_gpus") else (
        cfg.read_cpus * 0.99)
    slices = ctx.ledger.slices(plan, todo)
    pool = max(1, min(actors.workers, len(slices)))  # never more actors than read tasks to feed them
    log.info("pipeline pass %d: %d chunk(s), %d object(s), %d %s scoring actor(s)", attempt, len(todo),
             sum(plan.chunk_rows[c] for c in todo), pool, actors.device)
    # Same resources and one block per slice: the read fuses with fetch + decode into one task.
    ds = ray.data.read_datasource(PlanDatasource(slices, cfg.s3), num_cpus=read_cpus,
                                  override_num_blocks=len(slices))
    ds = ds.map_batches(
        fetch_decode, batch_size=None, batch_format="numpy",  # a whole slice per call: slice_rows in flight
        num_cpus=read_cpus,
        fn_kwargs={"preprocess": ctx.preprocess.to_dict(), "s3": cfg.s3, "max_bytes": cfg.max_bytes,
                   "max_pixels": cfg.max_pixels, "threads": cfg.read_threads,
                   "quality": ctx.quality.model_dump()})
    ds = ds.map_batches(
        ScoreActor, batch_size=cfg.batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=pool), **resources,
        fn_constructor_kwargs={"bundle_uri": ctx.bundle.uri, "bundle_id": ctx.bundle.id, "run_id": ctx.run_id,
                               "s3": cfg.s3,
                               "device": actors.device, "knn_backend": cfg.knn_backend,
                               "torch_threads": cfg.torch_threads})
    return ds.map_batches(
        write_parts, batch_size=min(cfg.rows_per_file, max(plan.chunk_rows)), batch_format="pyarrow",
        num_cpus=cfg.write_cpus,
        fn_kwargs={"partition": ctx.partition, "run_id": ctx.run_id, "attempt": attempt,
                   "staging": ctx.layout.file(STAGING_DIR), "prefix_chars": prefix_chars_for(plan.objects),
                   "s3": cfg.s3})
