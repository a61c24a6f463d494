"""Each worker's disjoint shard of the labelled set, decoded batch by batch with the io module.

Sharding: every epoch all ranks draw the same seeded permutation of the rows; rank ``r`` of ``W`` takes
positions ``i % W == r`` of its first ``W * (N // W)`` entries. Shards are disjoint and equally long, and
every rank runs the same number of steps, so DDP's collectives stay in lockstep.

Unreadable images (missing, corrupt, too large, unsupported) are skipped, counted and remembered; the
batch is filled from the next rows instead, wrapping around the shard, so batches stay full and the step
count stays equal across ranks.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import DataError
from ..io.decode import Preprocess
from ..io.fs import S3Config
from ..io.reader import load_images

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
