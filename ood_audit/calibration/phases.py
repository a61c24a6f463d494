"""Running a calibration worker over images, on a Ray Data actor pool or in-process (``workers=0``).

Both give the same rows for the same images: the workers are pure per-batch functions and the
driver re-orders their output by image index. ``evaluate`` runs in-process; ``ood-audit calibrate``
usually on Ray.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pyarrow as pa

_PUT_BYTES = 1 << 20  # larger weights and banks go through the object store once, not with every actor


def _put_large(value: Any) -> Any:
    import ray

    if isinstance(value, dict):
        return {k: _put_large(v) for k, v in value.items()}
    if isinstance(value, (bytes, np.ndarray)) and len(value) and getattr(value, "nbytes", len(value)) > _PUT_BYTES:
        return ray.put(value)
    return value


def run_phase(worker_cls: type, kwargs: dict[str, Any], table: pa.Table, *, workers: int, batch_size: int,
              device: str) -> Iterator[dict[str, np.ndarray]]:
    """Yield the worker's output batches for every row of ``table`` (columns ``uri``, ``index``, ...)."""
    if table.num_rows == 0:
        return
    if workers == 0:
        worker = worker_cls(**kwargs)
        for b in table.to_batches(max_chunksize=batch_size):
            yield worker({c: b.column(c).to_numpy(zero_copy_only=False) for c in b.schema.names})
        return
    import ray

    from ood_audit.ray_setup import release_failed_pipeline

    cuda = device.startswith("cuda")
    kwargs = {k: _put_large(v) for k, v in kwargs.items()}
    step = max(batch_size, -(-table.num_rows // (4 * workers)))  # >= 4 blocks per actor
    blocks = [table.slice(i, step) for i in range(0, table.num_rows, step)]
    ds = ray.data.from_arrow(blocks).map_batches(
        worker_cls, fn_constructor_kwargs=kwargs, batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=0 if cuda else 0.5,
        num_gpus=1 if cuda else 0)
    try:
        yield from ds.iter_batches(batch_size=None, batch_format="numpy")
    except Exception as exc:
        release_failed_pipeline(exc)
        raise


def score_images(kwargs: dict[str, Any], uris: list[str], *, workers: int, batch_size: int, device: str,
                 what: str | None = None) -> tuple[dict[str, np.ndarray], list[tuple[str, str, str]]]:
    """Every score of ``uris`` through :class:`~.workers.ScoreWorker` (``kwargs``), in ``uris`` order, for
    the images that decoded; and (uri, status, error) of those that did not. ``what`` names the phase in
    progress lines (none without it)."""
    from ood_audit.calibration.workers import ScoreWorker
    from ood_audit.progress import Progress

    table = pa.table({"uri": uris, "index": pa.array(np.arange(len(uris)), pa.int64())})
    parts: dict[str, list[np.ndarray]] = {}
    index: list[np.ndarray] = []
    failures: list[tuple[str, str, str]] = []
    progress = Progress(what, len(uris), unit="images") if what else None
    for out in run_phase(ScoreWorker, kwargs, table, workers=workers, batch_size=batch_size, device=device):
        ok = out["status"] == "ok"
        if progress is not None:
            progress.update(progress.done + len(ok))
        failures += [(uris[i], s, e) for i, s, e in zip(out["index"][~ok], out["status"][~ok], out["error"][~ok])]
        index.append(out["index"][ok])
        for k, v in out.items():
            if k not in ("index", "status", "error"):
                parts.setdefault(k, []).append(np.asarray(v, dtype=np.float64)[ok])
    if progress is not None:
        progress.finish()
    order = np.argsort(np.concatenate(index), kind="stable") if index else np.zeros(0, np.int64)
    return {k: np.concatenate(v)[order] for k, v in parts.items()}, failures
