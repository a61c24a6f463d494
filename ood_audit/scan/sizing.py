"""Sizing a night before running it (``ood-audit plan``): what the inputs hold, and how long the full scan
takes on this cluster and on K nodes like it, from a sample scanned through the real pipeline.

The model is the one a scan's own timings follow: a run costs a fixed part (Ray Data planning, actor
start, the pipeline filling and draining, the summary) plus its objects at the steady rate. A sample of
``n`` objects that took ``wall`` seconds at steady rate ``r`` (rows 20-90 %, timed by the rows' own
``scanned_at``) therefore has the fixed part ``wall − n / r``, and the full run of ``N`` objects takes::

    listing + fixed + N / (r · K)

on K nodes like this one: the listing is measured on the full input (one driver lists, whatever K), and the
steady rate scales with the nodes because each brings its own read tasks and scoring actors (the driver
only commits a marker per chunk). The busiest stage is the one with the most busy seconds per object: the
one to give more resources, or to speed up.
"""
from __future__ import annotations

import posixpath
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

PLAN_FORMAT = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Tally(_Model):
    objects: int = 0
    bytes: int = 0


class Inventory(_Model):
    """The inputs as listed: totals, per input prefix, per file extension, and what ``--incremental`` skips."""

    objects: int = 0
    bytes: int = 0
    by_prefix: dict[str, Tally] = Field(default_factory=dict)
    by_extension: dict[str, Tally] = Field(default_factory=dict)
    already_done: int | None = None  # objects an --incremental run would skip (None: no output to ask)
    listing_s: float = 0.0

    @property
    def to_scan(self) -> int:
        return self.objects - (self.already_done or 0)


def extension(uri: str) -> str:
    """The lower-case extension of an object's name (``(none)`` without one)."""
    ext = posixpath.splitext(uri.rsplit("/", 1)[-1])[1].lower()
    return ext or "(none)"


def tally(pages: Iterable[pa.Table], prefixes: Sequence[str]) -> Inventory:
    """Count ``pages`` (columns ``uri``, ``size``) into an :class:`Inventory`; each object is counted under
    the longest of ``prefixes`` it lies under (``(manifest)`` when none does)."""
    inv = Inventory()
    roots = sorted((p.rstrip("/") for p in prefixes), key=len, reverse=True)
    for page in pages:
        sizes = page.column("size").to_pylist()
        for uri, size in zip(page.column("uri").to_pylist(), sizes):
            size = int(size or 0)
            root = next((r for r in roots if uri == r or uri.startswith(r + "/")), "(manifest)")
            for key, table in ((root, inv.by_prefix), (extension(uri), inv.by_extension)):
                t = table.setdefault(key, Tally())
                t.objects += 1
                t.bytes += size
            inv.objects += 1
            inv.bytes += size
    return inv


class UniformSample:
    """A uniform random sample of ``k`` rows from a stream of listing pages, in O(k) memory: every row gets a
    seeded random key and the ``k`` smallest keys are kept (bottom-k sampling), a page at a time in numpy."""

    def __init__(self, k: int, seed: int) -> None:
        self.k, self.rng = k, np.random.default_rng(seed)
        self.kept: pa.Table | None = None
        self.keys = np.zeros(0)

    def add(self, page: pa.Table) -> None:
        keys = np.concatenate([self.keys, self.rng.random(page.num_rows)])
        table = page if self.kept is None else pa.concat_tables([self.kept, page.select(self.kept.column_names)])
        if len(keys) > self.k:
            keep = np.sort(np.argpartition(keys, self.k)[:self.k])
            table, keys = table.take(pa.array(keep)), keys[keep]
        self.kept, self.keys = table, keys

    def table(self) -> pa.Table | None:
        """The sample in URI order (None before any page)."""
        if self.kept is None:
            return None
        return self.kept.sort_by("uri")


class SampleRun(_Model):
    """The sample's scan, as measured: its objects, wall time, steady rate and busy seconds per stage."""

    objects: int
    wall_s: float
    steady_objects_per_s: float | None = None
    startup_s: float | None = None
    stage_busy_s: dict[str, float] = Field(default_factory=dict)  # read, score, write
    scoring_actors: int = 0
    nodes: int = 1

    def rate(self) -> float:
        """Objects/s in steady state; the whole run's average when the sample was too short for one."""
        if self.steady_objects_per_s:
            return self.steady_objects_per_s
        return self.objects / max(self.wall_s - (self.startup_s or 0.0), 1e-9)

    def fixed_s(self) -> float:
        """The run's cost that does not grow with its objects: ``wall − objects / rate`` (at least 0)."""
        return max(0.0, self.wall_s - self.objects / self.rate())


class Estimate(_Model):
    nodes: int
    objects: int
    objects_per_s: float
    listing_s: float
    fixed_s: float
    scan_s: float
    wall_s: float
    cost: float | None = None  # at --price-per-node-hour


class NightPlan(_Model):
    """What ``ood-audit plan`` prints and writes as JSON."""

    plan_format: int = PLAN_FORMAT
    bundle_id: str
    inputs: list[str]
    inventory: Inventory
    sample: SampleRun
    busiest_stage: str | None = None
    busy_s_per_object: dict[str, float] = Field(default_factory=dict)
    estimates: list[Estimate]
    price_per_node_hour: float | None = None


def estimate(inv: Inventory, sample: SampleRun, *, nodes: int, price_per_node_hour: float | None = None) -> Estimate:
    """The full run of ``inv.to_scan`` objects on ``nodes`` nodes like the sample's (module docstring)."""
    rate = sample.rate() * nodes / max(1, sample.nodes)
    scan_s = inv.to_scan / rate if inv.to_scan else 0.0
    fixed = sample.fixed_s() if inv.to_scan else 0.0
    wall = inv.listing_s + fixed + scan_s
    cost = None if price_per_node_hour is None else wall / 3600 * nodes * price_per_node_hour
    return Estimate(nodes=nodes, objects=inv.to_scan, objects_per_s=rate, listing_s=inv.listing_s, fixed_s=fixed,
                    scan_s=scan_s, wall_s=wall, cost=cost)


def busiest_stage(sample: SampleRun) -> tuple[str | None, dict[str, float]]:
    """The stage with the most busy seconds per object, and every stage's figure."""
    per = {k: v / sample.objects for k, v in sample.stage_busy_s.items() if sample.objects and v is not None}
    return (max(per, key=per.__getitem__) if per else None), per


def make_plan(*, bundle_id: str, inputs: Sequence[str], inventory: Inventory, sample: SampleRun,
              nodes: Sequence[int], price_per_node_hour: float | None) -> NightPlan:
    stage, per = busiest_stage(sample)
    return NightPlan(bundle_id=bundle_id, inputs=list(inputs), inventory=inventory, sample=sample,
                     busiest_stage=stage, busy_s_per_object=per, price_per_node_hour=price_per_node_hour,
                     estimates=[estimate(inventory, sample, nodes=k, price_per_node_hour=price_per_node_hour)
                                for k in nodes])
