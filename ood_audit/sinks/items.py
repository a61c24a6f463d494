"""The unit every labeling sink sends (SPEC §12): one selected report row as a typed item, its dedupe key,
and the three payload shapes (Label Studio task, SQS body, JSONL manifest line).

Besides the scores, every payload carries the row's data-quality findings (``quality_issues``) and its
duplicate links (``duplicate_of``, ``near_duplicate_of_id``), so a labeler sees why else a sample looks odd.

The dedupe key is a digest of ``(uri, etag, bundle_id)``: a sample goes out again only when its object
changed (a new etag) or a new bundle judged it. The same digest is the FIFO ``MessageDeduplicationId``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ood_audit.errors import ExportError
from ood_audit.sinks.select import flagged_by, queue_of

LABEL_FROM = "label"     # the Choices tag's name in the label config
LABEL_TO = "image"       # the Image tag's name
OUTLIER, IN_DISTRIBUTION = "outlier", "in-distribution"


class PartialSend(ExportError):
    """A batch failed after some of its items were confirmed; ``confirmed`` are their keys (the ledger
    records those, and only those)."""

    def __init__(self, message: str, confirmed: Sequence[str]) -> None:
        super().__init__(message)
        self.confirmed = list(confirmed)


def item_key(uri: str, etag: str | None, bundle_id: str) -> str:
    """The dedupe key of ``(uri, etag, bundle_id)``: 32 hex digits of SHA-256 (see the module docstring)."""
    raw = "\x1f".join((uri, etag or "", bundle_id)).encode("utf-8")
    return hashlib.sha256(raw).hexdigest()[:32]


@dataclass(frozen=True)
class ExportItem:
    """One row going out, with everything any payload shape needs."""

    key: str
    uri: str
    etag: str | None
    run_id: str
    bundle_id: str
    policy: str
    anomaly: float | None
    flagged: bool
    flag_reasons: tuple[str, ...]
    flagged_by: str | None
    pred_class: int | None
    csd_view: int | None
    scores: dict[str, float | None] = field(default_factory=dict)
    percentiles: dict[str, float | None] = field(default_factory=dict)
    quality_issues: tuple[str, ...] | None = None  # SPEC §14 findings; None where not decoded (or not recorded)
    duplicate_of: str | None = None
    near_duplicate_of_id: str | None = None

    @property
    def queue(self) -> str:
        return queue_of(self.policy)

    @property
    def choice(self) -> str:
        """The pre-filled label: ``outlier`` for flagged rows, ``in-distribution`` otherwise (SPEC §12)."""
        return OUTLIER if self.flagged else IN_DISTRIBUTION

    def fields(self) -> dict[str, Any]:
        """The scan fields shared by every payload shape (JSON-safe: no NaN)."""
        return {"uri": self.uri, "etag": self.etag, "run_id": self.run_id, "bundle_id": self.bundle_id,
                "policy": self.policy, "queue": self.queue, "anomaly": _num(self.anomaly),
                "flagged": self.flagged, "flag_reasons": list(self.flag_reasons), "flagged_by": self.flagged_by,
                "pred_class": self.pred_class, "csd_view": self.csd_view,
                "quality_issues": None if self.quality_issues is None else list(self.quality_issues),
                "duplicate_of": self.duplicate_of, "near_duplicate_of_id": self.near_duplicate_of_id,
                **{s: _num(v) for s, v in self.scores.items()},
                **{f"pct_{s}": _num(v) for s, v in self.percentiles.items()}}


def items_from_table(table: pa.Table, policy: str, flag_on: Sequence[str] = ()) -> Iterator[ExportItem]:
    """Items for the rows of a selection (:func:`~ood_audit.sinks.select.select_rows`), in its order;
    ``flag_on`` is the bundle's union (``disagreement`` names which of its pair flagged a row)."""
    names = table.schema.names
    scores = [n[4:] for n in names if n.startswith("pct_") and n[4:] in names]
    by = flagged_by(table, policy, flag_on)
    for i, r in enumerate(table.to_pylist()):
        yield ExportItem(
            key=item_key(r["uri"], r.get("etag"), r["bundle_id"]), uri=r["uri"], etag=r.get("etag"),
            run_id=r["run_id"], bundle_id=r["bundle_id"], policy=policy, anomaly=_num(r.get("anomaly")),
            flagged=bool(r.get("flagged")), flag_reasons=tuple(r.get("flag_reasons") or ()), flagged_by=by[i],
            pred_class=r.get("pred_class"), csd_view=r.get("csd_view"),
            quality_issues=None if r.get("quality_issues") is None else tuple(r["quality_issues"]),
            duplicate_of=r.get("duplicate_of"), near_duplicate_of_id=r.get("near_duplicate_of_id"),
            scores={s: _num(r.get(s)) for s in scores}, percentiles={s: _num(r.get(f"pct_{s}")) for s in scores})


def label_studio_task(item: ExportItem) -> dict[str, Any]:
    """A task in Label Studio's import format: the ``s3://`` URI as ``data.image`` (the project's S3 source
    storage presigns it when the page loads), the scan fields beside it, and one prediction whose
    ``model_version`` is the bundle and whose ``score`` is the anomaly."""
    prediction = {"model_version": item.bundle_id, "score": _num(item.anomaly),
                  "result": [{"from_name": LABEL_FROM, "to_name": LABEL_TO, "type": "choices",
                              "value": {"choices": [item.choice]}}]}
    return {"data": {"image": item.uri, **item.fields(), "export_key": item.key}, "predictions": [prediction]}


def sqs_body(item: ExportItem) -> dict[str, Any]:
    """An SQS message body (sent as JSON): the scan fields plus the dedupe key and the pre-filled label."""
    return {**item.fields(), "key": item.key, "label": item.choice}


def manifest_line(item: ExportItem) -> dict[str, Any]:
    """A JSONL manifest line: ``source-ref`` (the URI, as SageMaker Ground Truth reads it) and the scores."""
    return {"source-ref": item.uri, **item.fields(), "key": item.key, "label": item.choice}


def label_config() -> str:
    """A labeling config whose Image tag reads ``$image`` and whose Choices make the pre-filled result valid."""
    return (f'<View>\n  <Image name="{LABEL_TO}" value="$image"/>\n'
            f'  <Choices name="{LABEL_FROM}" toName="{LABEL_TO}" choice="single" showInLine="true">\n'
            f'    <Choice value="{OUTLIER}"/>\n    <Choice value="{IN_DISTRIBUTION}"/>\n  </Choices>\n</View>\n')


def _num(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
