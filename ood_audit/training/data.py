"""Each worker's disjoint shard of the labelled set, decoded batch by batch with the io module.

Sharding: every epoch all ranks draw the same seeded permutation of the rows; rank ``r`` of ``W`` takes
positions ``i % W == r`` of its first ``W * (N // W)`` entries. Shards are disjoint and equally long, and
every rank runs the same number of steps, so DDP's collectives stay in lockstep.

Unreadable images (missing, corrupt, too large, unsupported) are skipped, counted and remembered; the
batch is filled from the next rows instead, wrapping around the shard, so batches stay full and the step
count stays equal across ranks.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from ood_audit.errors import DataError
from ood_audit.preprocess import Preprocess, decoded_to_unit
from ood_audit.io.fs import S3Config
from ood_audit.io.reader import load_images
from ood_audit.io.uri import object_key

MAX_LISTED_FAILURES = 20


def epoch_shard(num_rows: int, world_size: int, rank: int, epoch: int, seed: int) -> np.ndarray:
    """Row indices of ``rank``'s shard for ``epoch`` (same permutation on every rank)."""
    if num_rows < world_size:
        raise DataError(f"the labelled set has {num_rows} image(s), fewer than the {world_size} workers")
    perm = np.random.default_rng([seed, epoch]).permutation(num_rows)
    per_rank = num_rows // world_size
    return perm[rank: per_rank * world_size: world_size]


def steps_per_epoch(num_rows: int, world_size: int, batch_size: int) -> int:
    """Steps every rank runs per epoch: its shard in batches, the last one topped up by wrapping around."""
    return max(1, math.ceil((num_rows // world_size) / batch_size))


@dataclass
class SkipLog:
    """Images this worker could not read: how many (unique) and the first few, with the reason."""

    bad: set[str] = field(default_factory=set)
    examples: list[dict[str, str]] = field(default_factory=list)

    def add(self, uri: str, status: str, error: str) -> None:
        if uri in self.bad:
            return
        self.bad.add(uri)
        if len(self.examples) < MAX_LISTED_FAILURES:
            self.examples.append({"uri": uri, "status": status, "error": error})


class ShardReader:
    """Iterates ``steps`` full batches ``(images uint8 [B, H, W, 3], labels int64 [B])`` over ``rows``.

    Decoding runs on a thread pool (``threads``) one batch ahead of the training step. ``start_step`` skips
    the first batches' rows, for resuming inside an epoch.
    """

    def __init__(self, uris: Sequence[str], labels: np.ndarray, rows: np.ndarray, *, batch_size: int, steps: int,
                 preprocess: Preprocess, s3: S3Config | None, threads: int, skips: SkipLog,
                 start_step: int = 0) -> None:
        self.uris, self.labels, self.rows = uris, labels, rows
        self.batch_size, self.steps, self.start_step = batch_size, steps, start_step
        self.preprocess, self.s3, self.threads, self.skips = preprocess, s3, threads, skips
        self._cursor = (start_step * batch_size) % max(1, len(rows))

    def _next_rows(self, n: int) -> list[int]:
        out: list[int] = []
        tried = 0
        while len(out) < n and tried < len(self.rows):
            row = int(self.rows[self._cursor])
            self._cursor = (self._cursor + 1) % len(self.rows)
            tried += 1
            if self.uris[row] not in self.skips.bad:
                out.append(row)
        return out

    def _decode_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        images: list[np.ndarray] = []
        labels: list[int] = []
        while len(images) < self.batch_size:
            rows = self._next_rows(self.batch_size - len(images))
            if not rows:
                ex = self.skips.examples[0] if self.skips.examples else None
                example = f", e.g. {ex['uri']} ({ex['status']}: {ex['error']})" if ex else ""
                raise DataError(f"no readable image in this worker's shard of {len(self.rows)} image(s): "
                                f"{len(self.skips.bad)} could not be read{example}")
            results = load_images([self.uris[r] for r in rows], size=self.preprocess, s3=self.s3,
                                  threads=self.threads)
            for row, res in zip(rows, results):
                if res.ok:
                    images.append(res.array)
                    labels.append(int(self.labels[row]))
                else:
                    self.skips.add(self.uris[row], res.status, res.error or "")
        return (torch.from_numpy(np.stack(images[: self.batch_size])),
                torch.tensor(labels[: self.batch_size], dtype=torch.int64))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        remaining = self.steps - self.start_step
        if remaining <= 0:
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-reader") as pool:
            pending: Future = pool.submit(self._decode_batch)
            for i in range(remaining):
                batch = pending.result()
                if i + 1 < remaining:
                    pending = pool.submit(self._decode_batch)
                yield batch


def validation_split(uris: Sequence[str], source: str, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows): an object is held out when sha256(``val:`` + its key), read as a
    number in [0, 1), is below ``fraction``.

    Hashing the key rather than drawing a permutation keeps every object on its side of the split as the
    set grows: an image added tomorrow never moves yesterday's images across it.
    """
    if fraction <= 0:
        return np.arange(len(uris)), np.zeros(0, dtype=np.int64)
    draws = np.fromiter((int.from_bytes(hashlib.sha256(b"val:" + object_key(u, source).encode()).digest()[:8],
                                        "big") / 2.0**64 for u in uris), dtype=np.float64, count=len(uris))
    held = draws < fraction
    return np.flatnonzero(~held), np.flatnonzero(held)


def chance_accuracy(labels: np.ndarray, num_classes: int) -> float:
    """What a model that learned nothing scores: 1/C, or the majority class's share if that is higher."""
    if len(labels) == 0:
        return 1.0 / num_classes
    return max(1.0 / num_classes, float(np.bincount(labels, minlength=num_classes).max()) / len(labels))


def learned_margin(chance: float, n: int) -> float:
    """The accuracy a model must exceed to count as having learned: chance plus the larger of a tenth of
    the room above chance and three binomial standard errors of chance accuracy on ``n`` images (a model
    at chance exceeds it with probability about 0.1%)."""
    return chance + max(0.1 * (1.0 - chance), 3.0 * math.sqrt(chance * (1.0 - chance) / max(1, n)))


def validate(model: torch.nn.Module, uris: Sequence[str], labels: np.ndarray, rows: np.ndarray, *,
             preprocess: Preprocess, s3: S3Config | None, threads: int, skips: SkipLog, device: torch.device,
             batch_size: int) -> tuple[float, int, int]:
    """(summed cross-entropy, correct top-1, images) of ``model`` (a TapModel: pixels in [0, 1]) on ``rows``,
    in eval mode with no augmentation, decoded exactly as calibration and the scan decode (``preprocess``)."""
    loss_sum, correct, seen = 0.0, 0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                chunk = [int(r) for r in rows[start: start + batch_size] if uris[int(r)] not in skips.bad]
                results = load_images([uris[r] for r in chunk], size=preprocess, s3=s3, threads=threads)
                good = [(r, res.array) for r, res in zip(chunk, results) if res.ok]
                for r, res in zip(chunk, results):
                    if not res.ok:
                        skips.add(uris[r], res.status, res.error or "")
                if not good:
                    continue
                x = decoded_to_unit(torch.from_numpy(np.stack([a for _, a in good])), device, non_blocking=True)
                y = torch.tensor([int(labels[r]) for r, _ in good], dtype=torch.int64, device=device)
                logits = model(x).logits
                loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
                seen += len(good)
    finally:
        model.train(was_training)
    return loss_sum, correct, seen


BN_REFRESH_IMAGES = 256


def refresh_batchnorm(model: torch.nn.Module, uris: Sequence[str], rows: np.ndarray, *, preprocess: Preprocess,
                      s3: S3Config | None, threads: int, device: torch.device, batch_size: int) -> int:
    """Re-estimate every BatchNorm's running mean and variance on up to ``BN_REFRESH_IMAGES`` training images
    decoded as the scan decodes them (Wu and Johnson's "precise BN", 2021); returns the images used.

    Why: the running statistics are an exponential average (momentum 0.1) over recent steps. With few steps
    per epoch and the early, large learning rates of a short run they trail the weights by several steps,
    and the eval-mode model, the one calibration and the scan use, scores far worse than the training
    loss says. Refreshing them costs one forward pass over a few hundred images per epoch.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or len(rows) == 0:
        return 0
    picked = [uris[int(r)] for r in rows[:BN_REFRESH_IMAGES]]
    arrays = [res.array for res in load_images(picked, size=preprocess, s3=s3, threads=threads) if res.ok]
    if len(arrays) < 2:
        return 0
    saved = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    model.train()
    try:
        with torch.no_grad():
            for start in range(0, len(arrays), batch_size):
                chunk = arrays[start: start + batch_size]
                if len(chunk) < 2 and start > 0:
                    break  # BatchNorm cannot train on one image; the batches before it are enough
                x = decoded_to_unit(torch.from_numpy(np.stack(chunk)), device, non_blocking=True)
                model(x)
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.train(was_training)
    return len(arrays)
