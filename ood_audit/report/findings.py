"""The report's data-quality findings (SPEC §14): counts per issue over a run, and each issue in words.

``quality_issues`` is a list column: null where the object was not decoded (nothing was measured), an empty
list for a decoded image with no finding. Shares are over *decoded* rows (non-null lists), since only those
were checked. Runs written before the column (report formats 1 and 2) have no counts at all, which the page
says instead of showing zeros.

The explanations quote the thresholds the scan used, from the run summary's ``quality_thresholds``; a
summary without them (runs before SPEC §14) is explained with the SPEC defaults and says so. The summary is
free-form JSON, so a value that does not validate is a note on the page, never a failure.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError

from ood_audit.io.quality import ISSUES, QualityConfig
from ood_audit.store.records import RunSummary
from ood_audit.store.schema import QUALITY_COLUMN


@dataclass
class QualityCounts:
    """Counts folded batch by batch: rows per issue name, decoded rows, rows with at least one issue."""

    counts: dict[str, int] = field(default_factory=dict)
    decoded: int = 0
    with_issue: int = 0

    def add(self, issues: pa.Array | pa.ChunkedArray) -> None:
        """Fold one batch's ``quality_issues`` (the scan names an issue at most once per row)."""
        self.decoded += len(issues) - issues.null_count
        lengths = pc.fill_null(pc.list_value_length(issues), 0)
        self.with_issue += int(pc.sum(pc.greater(lengths, 0)).as_py() or 0)
        flat = pc.list_flatten(issues)  # null lists contribute nothing
        if len(flat):
            for vc in pc.value_counts(flat).to_pylist():
                if vc["values"] is not None:
                    self.counts[vc["values"]] = self.counts.get(vc["values"], 0) + int(vc["counts"])


@dataclass(frozen=True)
class QualityRow:
    issue: str
    count: int
    share: float | None  # of decoded rows
    words: str


@dataclass
class QualityView:
    """What the page's "Data-quality findings" section shows; ``present`` False for reports before the column."""

    present: bool
    decoded: int = 0
    with_issue: int = 0
    rows: list[QualityRow] = field(default_factory=list)
    note: str | None = None  # where the thresholds quoted come from, when not from this run

    @property
    def share_with_issue(self) -> float | None:
        return self.with_issue / self.decoded if self.decoded else None


def thresholds_of(summary: RunSummary) -> tuple[QualityConfig, str | None]:
    """The thresholds the run used (its summary's ``quality_thresholds``) and a note when they are not."""
    raw = summary.quality_thresholds
    if raw is None:
        return QualityConfig(), "this run's summary does not record its quality thresholds: SPEC §14 defaults shown"
    known = {k: v for k, v in raw.items() if k in QualityConfig.model_fields}  # a later field is not an error
    try:
        return QualityConfig.model_validate(known), None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        return QualityConfig(), (f"this run's summary has an unreadable quality threshold ({where}: {err['msg']}): "
                                 "SPEC §14 defaults shown")


def issue_words(issue: str, th: QualityConfig, blurry_percentile: float | None = None) -> str:
    """One plain-English line saying what ``issue`` means, with the threshold ``th`` gives it."""
    if issue == "dark":
        return f"mean brightness below {th.dark:g} on the 0–255 grey scale: the image is nearly black"
    if issue == "light":
        return f"mean brightness above {th.light:g} on the 0–255 grey scale: the image is nearly white or washed out"
    if issue == "blurry":
        if th.blurry is None:
            return "not checked in this run: the bundle has no calibrated sharpness threshold"
        source = (f"the {_ordinal(blurry_percentile)} percentile of" if blurry_percentile is not None
                  else "set at calibration from")
        return (f"sharpness (variance of the grey image's Laplacian) below {th.blurry:.4g}, {source} held-out "
                "in-distribution images: out of focus or smoothed")
    if issue == "low_information":
        return f"grey-level entropy below {th.low_information:g} bits: nearly uniform, little content to judge"
    if issue == "grayscale":
        return (f"the three colour channels agree within {th.grayscale_tolerance} levels at "
                f"{100 * th.grayscale_fraction:g}% of pixels or more: a grey image stored as colour")
    if issue == "odd_aspect_ratio":
        return f"the longer side is more than {th.odd_aspect_ratio:g} times the shorter: a strip, banner or crop"
    if issue == "tiny":
        return f"the shorter side of the stored image is under {th.tiny} px: too small to judge reliably"
    return "a finding this version of the report does not know"


def _ordinal(p: float) -> str:
    if p != int(p):
        return f"{p:g}th"
    n = int(p)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def quality_view(counts: QualityCounts | None, summary: RunSummary,
                 blurry_percentile: float | None = None) -> QualityView:
    """Every SPEC §14 issue in :data:`ISSUES` order (zeros included), then any other name the rows hold."""
    if counts is None:
        return QualityView(present=False)
    th, note = thresholds_of(summary)
    names = [*ISSUES, *sorted(n for n in counts.counts if n not in ISSUES)]
    rows = [QualityRow(n, counts.counts.get(n, 0),
                       counts.counts.get(n, 0) / counts.decoded if counts.decoded else None,
                       issue_words(n, th, blurry_percentile)) for n in names]
    return QualityView(present=True, decoded=counts.decoded, with_issue=counts.with_issue, rows=rows, note=note)


def issue_class(issue: str) -> str | None:
    """The card's CSS class for a SPEC §14 issue (``q-dark``); None for any other name, which is shown as
    text only and never reaches an attribute the page's CSS reads."""
    return f"q-{issue}" if issue in ISSUES else None


__all__ = ["QUALITY_COLUMN", "QualityCounts", "QualityRow", "QualityView", "issue_class", "issue_words",
           "quality_view", "thresholds_of"]
