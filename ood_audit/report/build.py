"""Assembling the HTML audit report of one scan run (SPEC §11, §13) from its rows, summary and bundle.

What is read, and why memory stays bounded for a run of any size:

- the run and its predecessor come from :mod:`ood_audit.store.runs` (``find_run``, ``previous_run``);
- one streaming pass (:func:`ood_audit.report.collect.collect`) reads ``uri``, ``status``, ``error``,
  ``flagged`` and the score columns batch by batch for the prefix table, the histograms and the failures;
- the grid's rows are chosen by ``most_anomalous``, which keeps only the best ``top`` rows while streaming;
- the previous run is read once more, for its per-prefix counts only (``uri``, ``status``, ``flagged``);
- thumbnails are fetched for the ``top`` rows only, in parallel on a bounded pool;
- the data-quality counts (SPEC §14) come from the same streaming pass (:mod:`ood_audit.report.findings`),
  and the grid's cards carry each row's issues, which the page's filter reads;
- the block-selection evidence comes from the bundle's metadata alone (no bundle file is read for it).

Nothing the report shows is allowed to fail it once the run itself is readable: a bundle that is gone,
damaged or does not fit the schema, an old bundle without bank sources, or objects
deleted since the scan each become a visible note on the page (``warnings`` or a placeholder thumbnail). A
missing run, an unknown run id or an unknown report format stay errors (``ReportError``), since there would
be nothing to show.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow.dataset as pads

from ood_audit.bundle.files import open_bundle
from ood_audit.calibration.evidence_view import evidence_html
from ood_audit.bundle.schema import BundleMeta, RowTables, TrainingPart
from ood_audit.errors import BundleError, ConfigError, ReportError
from ood_audit.io.fs import S3Config
from ood_audit.report.collect import Collected, PrefixStats, collect, prefix_counts, score_edges
from ood_audit.report.drift import DriftRow, Rate, drift_rows
from ood_audit.report.explain import (CsdBox, Neighbour, STATUS_WORDS, csd_box, csd_geometry, data_uri, neighbours,
                                      reason_words)
from ood_audit.report.plots import histogram_png
from ood_audit.report.findings import QUALITY_COLUMN, QualityView, issue_class, quality_view
from ood_audit.report.previews import Thumb, object_thumbs
from ood_audit.store.schema import SPEC_SCORES, report_schema
from ood_audit.store.runs import RunInfo, find_run, list_runs, most_anomalous, previous_run, run_dataset

DEFAULT_TOP = 48
GRID_COLUMNS = ("uri", "status", "width", "height", "csd_view", "pred_class", "knn_nn", "knn_nn_dist",
                "flagged", "flag_reasons", QUALITY_COLUMN, "duplicate_of", "near_duplicate_of_id")


@dataclass(frozen=True)
class SentLine:
    """Rows the exports under this run's id recorded at one destination and queue, and how many of them an
    earlier run scanned (the nightly's catch-up: rows of a night whose scan stopped or whose export failed)."""

    sink: str
    destination: str
    queue: str
    rows: int
    from_earlier: int


def sent_lines(output: str, run_id: str, s3: S3Config | None) -> list[SentLine]:
    from ood_audit.sinks.export_ledger import export_ledgers

    out = []
    for ledger in export_ledgers(output, s3=s3):
        rows, earlier = ledger.sent_by(run_id)
        if rows:
            out.append(SentLine(ledger.kind, ledger.destination, ledger.queue, rows, earlier))
    return out


@dataclass(frozen=True)
class ReportOptions:
    top: int = DEFAULT_TOP
    prefix_depth: int = 1
    threads: int = 16
    max_failures: int = 200
    thumb_side: int = 112

    def validate(self) -> None:
        for name in ("top", "prefix_depth", "threads", "thumb_side"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_failures < 0:
            raise ConfigError(f"max_failures must be >= 0, got {self.max_failures}")


@dataclass(frozen=True)
class ScoreCell:
    score: str
    value: float | None
    pct: float | None
    flagging: bool  # one of the bundle's flag_on scores


@dataclass(frozen=True)
class GridItem:
    uri: str
    rank: int
    anomaly: float
    flagged: bool
    reasons: list[str]  # the flagging scores below their thresholds, in words
    also_low: list[str]  # other scores below their own thresholds
    scores: list[ScoreCell]
    pred_class: int | None
    thumb: Thumb
    box: CsdBox | None
    neighbours: list[Neighbour]
    quality: list[str] | None = None  # SPEC §14 findings; None: not decoded, or a report before the column
    duplicate_of: str | None = None          # the first URI with the same bytes (scan.duplicates)
    near_duplicate_of_id: str | None = None  # the calibration image it nearly duplicates

    @property
    def quality_classes(self) -> str:
        """The card's filter classes: ``q-<issue>`` per SPEC §14 issue, ``q-any`` or ``q-none`` (decoded, no
        issue); nothing when unknown, so no quality filter shows the card."""
        if self.quality is None:
            return ""
        names = [c for c in (issue_class(i) for i in self.quality) if c]
        return " ".join([*dict.fromkeys(names), "q-any" if self.quality else "q-none"])


@dataclass(frozen=True)
class PrefixRow:
    prefix: str
    stats: PrefixStats

    @property
    def rate(self) -> float | None:
        return self.stats.flagged / self.stats.scored if self.stats.scored else None


@dataclass(frozen=True)
class HistogramView:
    score: str
    png: str
    flagging: bool
    scanned: int


@dataclass
class Drift:
    previous: RunInfo | None
    same_bundle: bool
    rows: list[DriftRow]
    note: str | None = None


@dataclass
class ReportData:
    """Everything the page shows; :func:`ood_audit.report.html.render_html` turns it into HTML."""

    run: RunInfo
    options: ReportOptions
    bundle_id: str
    bundle_uri: str
    training: TrainingPart | None  # the bundle's, as the template reads it
    flag_on: list[str]
    id_flag_rate: float | None  # the bundle's target ID flag rate (thresholds.target_id_flag_rate)
    counts: dict[str, int]
    objects: int
    flagged: int
    histograms: list[HistogramView]
    grid: list[GridItem]
    prefixes: list[PrefixRow]
    drift: Drift
    failures: list[dict[str, Any]]
    failures_total: int
    inputs: list[str]
    warnings: list[str] = field(default_factory=list)
    generated_at: str = ""
    # the bundle's block-selection evidence as an HTML fragment (evidence_html escapes all it takes from the
    # bundle, so the page embeds it as it is); None without a readable bundle
    selection_html: str | None = None
    quality: QualityView = field(default_factory=lambda: QualityView(present=False))
    sent: list[SentLine] = field(default_factory=list)  # what this run's exports sent, per destination
    labelled: bool = True  # False: a bundle calibrated without labels (SPEC §16): no class, no logit score

    @property
    def grid_quality_counts(self) -> dict[str, int]:
        """Cards per filter of the grid's quality filter: every SPEC §14 issue, ``any`` and ``none``."""
        out = {r.issue: 0 for r in self.quality.rows if issue_class(r.issue)}
        out.update(any=0, none=0)
        for it in self.grid:
            for c in it.quality_classes.split():
                name = c.removeprefix("q-")
                out[name] = out.get(name, 0) + 1
        return out

    @property
    def scored(self) -> int:
        return self.counts.get("ok", 0)

    @property
    def flag_rate(self) -> float | None:
        return self.flagged / self.scored if self.scored else None

    def display_prefix(self, key: str) -> str:
        """A prefix key relative to the scanned input when there is just one (else the full URI prefix)."""
        if len(self.inputs) == 1:
            base = self.inputs[0].rstrip("/") + "/"
            if key == base:
                return "(directly under the input)"
            if key.startswith(base):
                return key[len(base):]
        return key


def build_report(output: str, run_id: str | None = None, *, s3: S3Config | None = None,
                 options: ReportOptions | None = None) -> ReportData:
    """Read run ``run_id`` (latest when None) under ``output`` and everything its report shows."""
    opts = options or ReportOptions()
    opts.validate()
    runs = list_runs(output, s3=s3)  # once: the run and its predecessor both come from it
    run = find_run(output, run_id, s3=s3, runs=runs)
    ds = _rows(run, s3)
    warnings: list[str] = []
    if not run.complete:
        warnings.append("this run did not finish: some listed objects have no row yet, so counts are partial")
    bundle, sources = _bundle(run, s3, warnings)
    info = bundle.info if bundle is not None else None
    th = RowTables.of(info) if info is not None else RowTables()
    quantiles = th.quantiles
    flag_on = list(th.flag_on or run.flag_on)
    inputs = [str(i) for i in run.summary.inputs]

    names = set(ds.schema.names)
    # the flagging scores and SPEC §6-8's; variants (``msp+fn``, ``featurenorm2``) only when they flag
    present = [s for s in dict.fromkeys([*flag_on, *SPEC_SCORES]) if s in names]
    labelled = info is None or info.labelled
    if not labelled:  # only what the bundle calibrated: its logit-score columns are null
        present = [s for s in present if s in th.per_score]
    edges = {}
    for s in present:
        e = score_edges(ds, s, quantiles.get(s), th.per_score.get(s))
        if e is not None:
            edges[s] = e
    col = collect(ds, inputs=inputs, depth=opts.prefix_depth, edges=edges, max_failures=opts.max_failures)
    histograms = _histograms(col, quantiles, th, flag_on)
    grid = _grid(ds, flag_on, present, sources, opts, s3, info)
    drift = _drift(output, run, col, opts, s3, runs)
    counts = dict(run.summary.counts)
    if not counts:
        counts = {"ok": sum(p.scored for p in col.prefixes.values())}
    flagged = sum(p.flagged for p in col.prefixes.values())
    prefixes = [PrefixRow(k, v) for k, v in sorted(col.prefixes.items())]
    selection_html = _selection_html(info, warnings)
    quality = quality_view(col.quality, run.summary,
                           info.quality.blurry_percentile if info is not None and info.quality else None)
    return ReportData(run=run, options=opts, bundle_id=run.bundle_id, bundle_uri=run.bundle_uri,
                      training=info.training if info is not None else None,
                      flag_on=flag_on,
                      id_flag_rate=info.thresholds.target_id_flag_rate if info is not None else None,
                      counts=counts, objects=col.rows, flagged=flagged, histograms=histograms, grid=grid,
                      prefixes=prefixes, drift=drift, failures=col.failures, failures_total=col.failures_total,
                      inputs=inputs, warnings=warnings,
                      generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      selection_html=selection_html, quality=quality, sent=sent_lines(output, run.run_id, s3),
                      labelled=labelled)


def _rows(run: RunInfo, s3: S3Config | None) -> Any:
    """The run's rows; an empty table for a run that listed nothing new (an incremental night), which
    writes no report file but is still a run to report on, with drift."""
    try:
        return run_dataset(run, s3=s3)
    except ReportError:
        if run.summary.objects == 0:
            return pads.dataset(report_schema().empty_table())
        raise


def _bundle(run: RunInfo, s3: S3Config | None, warnings: list[str]) -> tuple[Any, Any]:
    if not run.bundle_uri:
        warnings.append("the run summary names no bundle: no ID distribution, thresholds or neighbours")
        return None, None
    try:
        bundle = open_bundle(run.bundle_uri, s3=s3, verify=False)
    except BundleError as exc:
        warnings.append(f"the bundle cannot be read ({exc}): no ID distribution, thresholds or neighbours")
        return None, None
    try:
        sources = bundle.bank_sources()
    except BundleError as exc:
        warnings.append(f"the bundle's kNN-bank sources cannot be read ({exc}): neighbours shown by row only")
        return bundle, None
    if sources is None:
        warnings.append("this bundle predates kNN-bank sources: neighbours are shown by bank row only")
    return bundle, sources


def _selection_html(info: BundleMeta | None, warnings: list[str]) -> str | None:
    # the selection part and its evidence are typed, validated when the bundle was opened: nothing to catch
    return evidence_html(info.selection) if info is not None else None


def _histograms(col: Collected, quantiles: dict[str, Any], th: RowTables,
                flag_on: list[str]) -> list[HistogramView]:
    out = []
    per_score, flag = th.per_score, th.flag
    for s in sorted(col.histograms, key=lambda s: (s not in flag_on, s)):
        h = col.histograms[s]
        if h.n == 0:
            continue
        lines = [(per_score.get(s), "own threshold")]
        if s in flag and flag[s] != per_score.get(s):
            lines.append((flag[s], "flag threshold"))
        png = histogram_png(h, id_quantiles=quantiles.get(s), thresholds=[l for l in lines if l[0] is not None])
        out.append(HistogramView(s, data_uri(png, "image/png"), s in flag_on, h.n))
    return out


def _grid(ds: Any, flag_on: list[str], scores: list[str], sources: Any, opts: ReportOptions,
          s3: S3Config | None, info: BundleMeta | None) -> list[GridItem]:
    names = set(ds.schema.names)
    cols = [c for c in (*GRID_COLUMNS, *scores, *(f"pct_{s}" for s in scores)) if c in names]
    top = most_anomalous(ds, opts.top, flag_on, columns=cols).to_pylist()
    sizes = {r["uri"]: (r.get("width"), r.get("height")) for r in top}
    thumbs = object_thumbs([r["uri"] for r in top], sizes=sizes, s3=s3, max_side=opts.thumb_side,
                           threads=opts.threads)
    geometry = csd_geometry(info) if any(r.get("csd_view") is not None for r in top) else None
    items = []
    for rank, r in enumerate(top, 1):
        cells = [ScoreCell(s, r.get(s), r.get(f"pct_{s}"), s in flag_on) for s in scores
                 if r.get(s) is not None or r.get(f"pct_{s}") is not None]
        cells.sort(key=lambda c: not c.flagging)
        items.append(GridItem(uri=r["uri"], rank=rank, anomaly=float(r["anomaly"]), flagged=bool(r.get("flagged")),
                              reasons=[f"{s}: {reason_words(s)}" for s in r.get("flag_reasons") or []
                                       if s in flag_on],
                              also_low=[s for s in r.get("flag_reasons") or [] if s not in flag_on],
                              scores=cells, pred_class=r.get("pred_class"), thumb=thumbs[r["uri"]],
                              box=csd_box(r.get("csd_view"), geometry, thumbs[r["uri"]].stored),
                              neighbours=neighbours(r.get("knn_nn"), r.get("knn_nn_dist"), sources),
                              quality=None if r.get(QUALITY_COLUMN) is None else list(r[QUALITY_COLUMN]),
                              duplicate_of=r.get("duplicate_of"), near_duplicate_of_id=r.get("near_duplicate_of_id")))
    return items


def _drift(output: str, run: RunInfo, col: Collected, opts: ReportOptions, s3: S3Config | None,
           runs: list[RunInfo]) -> Drift:
    prev = previous_run(output, run, s3=s3, runs=runs)
    if prev is None:
        return Drift(None, True, [])
    try:
        before_ds = _rows(prev, s3)
    except ReportError as exc:
        return Drift(prev, prev.bundle_id == run.bundle_id, [], note=f"the previous run cannot be read: {exc}")
    before = prefix_counts(before_ds, inputs=[str(i) for i in prev.summary.inputs],
                           depth=opts.prefix_depth)
    same = prev.bundle_id == run.bundle_id
    rows = drift_rows({k: Rate(v.flagged, v.scored) for k, v in before.items()},
                      {k: Rate(v.flagged, v.scored) for k, v in col.prefixes.items()}, same_bundle=same)
    return Drift(prev, same, rows)


__all__ = ["DEFAULT_TOP", "Drift", "GridItem", "ReportData", "ReportOptions", "STATUS_WORDS", "build_report"]
