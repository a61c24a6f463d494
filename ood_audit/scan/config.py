"""One scan's settings (SPEC §11): :class:`ScanConfig`, with the checks that need no storage or Ray."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ood_audit.errors import ConfigError
from ood_audit.io.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from ood_audit.io.fs import DEFAULT_RETRY_S, S3Config
from ood_audit.io.lease import check_ttl
from ood_audit.store.run_ledger import check_run_id

# the settings recorded in the run summary's ``config``: those that shape the rows and the run's speed
REPORTED_CONFIG = ("max_pixels", "max_bytes", "batch_size", "workers", "device", "knn_backend", "chunk_size",
                   "slice_rows", "read_threads", "rows_per_file", "max_attempts")
MIN_LEASE_TTL_S = 300.0  # the default scan lease TTL when three times --storage-retry-s is shorter


@dataclass
class ScanConfig:
    """One scan. Field names match the CLI flags (``batch_size`` is ``--batch-size``)."""

    bundle: str
    output: str
    inputs: tuple[str, ...] = ()
    manifest: str | None = None
    run_id: str | None = None
    incremental: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    batch_size: int = 64            # images per forward pass
    workers: int | None = None      # scoring actors; None: one per GPU, else one per CPU
    device: str = "auto"            # decided on the workers' nodes for "auto"
    knn_backend: str = "auto"
    chunk_size: int = 10_000        # objects per commit unit
    slice_rows: int | None = None   # objects per read task; None: :func:`default_slice_rows` for the input size
    read_threads: int = 16          # requests in flight per read task
    rows_per_file: int = 8192       # upper bound on rows per part file
    max_attempts: int = 3           # pipeline attempts within this process
    actor_cpus: float = 0.5         # CPU actors: fractional, so read tasks always find a CPU
    read_cpus: float = 0.25
    write_cpus: float = 0.25
    torch_threads: int | None = None
    progress_bars: bool = False
    lease_ttl_s: float | None = None  # the run's lease (one driver per run id); None: :meth:`lease_ttl`
    s3: S3Config | None = None

    def validate(self, *, need_source: bool = True) -> None:
        """``ConfigError`` naming the flag for a setting no scan can run with."""
        if need_source and not self.inputs and not self.manifest:
            raise ConfigError("give --input PREFIX (repeatable) or --manifest URI")
        if self.inputs and self.manifest:
            raise ConfigError("--input and --manifest are mutually exclusive")
        for name in ("max_pixels", "max_bytes", "batch_size", "chunk_size", "slice_rows", "read_threads",
                     "rows_per_file", "max_attempts", "workers", "torch_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(f"--device {self.device!r}: choose auto, cpu, cuda or cuda:N")
        if self.run_id is not None:
            check_run_id(self.run_id)
        self.lease_ttl()

    def lease_ttl(self) -> float:
        """The run lease's TTL: the one set, which must exceed ``--storage-retry-s`` (one-line ``ConfigError``
        otherwise), or by default three times the retry window and at least :data:`MIN_LEASE_TTL_S`: a
        renewal riding out a whole outage never finds its lease taken over, and a chunk marker sent just
        before the fence closes (2/3 of the TTL) has its whole retry window to land before anyone may take
        over (:mod:`ood_audit.io.lease`)."""
        retry = self.s3.retry_s if self.s3 is not None else DEFAULT_RETRY_S
        if self.lease_ttl_s is None:
            return max(MIN_LEASE_TTL_S, 3.0 * retry)
        check_ttl(self.lease_ttl_s, retry, ttl_name="the scan's lease TTL (lease_ttl_s)")
        return float(self.lease_ttl_s)

    def read_slice_rows(self, output_hw: tuple[int, int] | None) -> int:
        """Objects per read task: the one set, else :func:`default_slice_rows` for the model's input size."""
        if self.slice_rows:
            return self.slice_rows
        return default_slice_rows(*output_hw) if output_hw else MAX_SLICE_ROWS

    def reported(self) -> dict[str, Any]:
        """The settings the run summary records (:data:`REPORTED_CONFIG`)."""
        return {k: getattr(self, k) for k in REPORTED_CONFIG}


# One read task's decoded pixels (a Ray Data block): small enough that a few blocks in flight per actor fit the
# object store and reach the actors early, large enough that per-task overhead stays small at 32 px.
SLICE_BYTES = 8 * 2**20
MIN_SLICE_ROWS, MAX_SLICE_ROWS = 16, 256


def default_slice_rows(height: int, width: int) -> int:
    """Objects per read task for the model's input size: about :data:`SLICE_BYTES` of uint8 RGB pixels (256 at
    32 px, 55 at 224 px). Why: at 224 px, 256 photos per task made blocks of 38 MB that arrived late and few,
    and the actors waited half the time (steady 20 against 43 img/s with 64 per task, 600 photos, 2 actors)."""
    return max(MIN_SLICE_ROWS, min(MAX_SLICE_ROWS, SLICE_BYTES // max(1, height * width * 3)))
