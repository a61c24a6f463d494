"""Which rows of a scan run go to a labeling queue (SPEC §12): the export policies and the per-class budget.

Policies (only ``status == "ok"`` rows are ever candidates; nothing was judged for the others):

- ``threshold`` (default): the bundle's flags, ``flagged`` true. Queue ``outliers``.
- ``top-k``: the ``budget`` rows with the highest anomaly (SPEC §12's 1 − lowest ``flag_on`` percentile/100),
  flagged or not. Queue ``outliers``.
- ``disagreement``: rows that exactly one of the two scores of the bundle's ``flag_on`` union put below its
  own threshold (``a in flag_reasons`` XOR ``b in flag_reasons``): FeatureNorm and CSD by default,
  ``featurenorm2`` where calibration replaced an inverted FeatureNorm, or whichever pair the bundle flags on.
  The two detectors look at different evidence (feature magnitude vs. cross-scale consistency, say), so a
  split vote is where a human must decide: these rows go to their own queue, ``disagreement``, with its own
  ledger, whatever the destination. A bundle that flags on one score, or on more than two, has no such
  vote, and the policy is refused in one line.

Quality filters (SPEC §14's ``quality_issues``; findings, never flags) narrow any policy, before ranking and
the budget, so a budget counts only rows that pass them:

- ``quality``: keep only rows with at least one of these issues (``any``: at least one issue of any kind);
- ``exclude_quality``: drop rows with any of these issues (``any``: drop every row with an issue).

A row whose ``quality_issues`` is null (nothing known) never matches ``quality`` and is never dropped by
``exclude_quality``. Runs written before the column (report formats 1 and 2) are refused when a quality
filter is given, rather than read as "no issues". Both filters are scanner expressions (the list joined
with ``,`` and matched by a regular expression over the validated names), so they are pushed down with
the ``status`` filter and top-k keeps streaming in bounded memory.

Ranking is always anomaly descending, then ``uri`` ascending, so a selection is a pure function of the run.

``budget`` caps how many rows go out; ``per_class`` splits it across ``pred_class`` (:func:`split_budget`):
equal shares, the remainder one each to the classes with the most candidates, and any share a class cannot
use (it has fewer candidates) handed to the others the same way, until the budget or the candidates run out.
So a rare class is never crowded out by a common one, and no budget is wasted while candidates remain.

Memory: only the columns a payload needs are read, with ``status`` (and ``flagged``/``flag_reasons``) filters
pushed down to the scanner, one record batch at a time. ``top-k`` streams through
:func:`~ood_audit.store.runs.most_anomalous` (O(budget + one batch)); ``threshold`` and ``disagreement`` hold
the candidate rows only, which is what is exported (use ``--budget`` to bound it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from ood_audit.errors import ConfigError, ReportError
from ood_audit.io.quality import ISSUES
from ood_audit.store.schema import QUALITY_COLUMN
from ood_audit.store.runs import anomaly, iter_batches, most_anomalous

Policy = Literal["threshold", "top-k", "disagreement"]
POLICIES: tuple[str, ...] = ("threshold", "top-k", "disagreement")
BASE_COLUMNS = ("uri", "etag", "run_id", "bundle_id", "pred_class", "csd_view", "flagged", "flag_reasons",
                "quality_issues", "duplicate_of", "near_duplicate_of_id")  # the last three: absent before formats 3-5
NO_CLASS = -1  # pred_class is never null on ok rows; this only keeps a malformed row in one group
ANY_ISSUE = "any"


def issue_names(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """Validated SPEC §14 issue names from ``"blurry,dark"`` or a list of names (``any`` allowed), in
    :data:`~ood_audit.io.quality.ISSUES` order; ``ConfigError`` naming the first unknown one."""
    if value is None:
        return ()
    parts = value.split(",") if isinstance(value, str) else list(value)
    names = [str(p).strip() for p in parts]
    names = [n for n in names if n]
    if not names:
        raise ConfigError("no quality issue named (give one or more of " + ", ".join((*ISSUES, ANY_ISSUE)) + ")")
    for n in names:
        if n not in ISSUES and n != ANY_ISSUE:
            raise ConfigError(f"{n!r} is not a quality issue (one of {', '.join(ISSUES)}, or {ANY_ISSUE})")
    if ANY_ISSUE in names:
        return (ANY_ISSUE,)  # every other name is implied
    return tuple(i for i in ISSUES if i in names)


def quality_conflict(quality: Sequence[str], exclude_quality: Sequence[str]) -> bool:
    """Whether keeping rows with ``quality`` while dropping rows with ``exclude_quality`` leaves none."""
    return bool(set(quality) & set(exclude_quality)) or bool(quality and ANY_ISSUE in exclude_quality)


def queue_of(policy: str) -> str:
    """The queue a policy's rows go to: ``disagreement`` is its own, the others share ``outliers``."""
    return "disagreement" if policy == "disagreement" else "outliers"


@dataclass(frozen=True)
class Selection:
    """What to export from one run, as a validated value (field names match the CLI flags)."""

    policy: str = "threshold"
    budget: int | None = None
    per_class: bool = False
    # SPEC §14 issue names, or one comma-separated string of them (as the flags give them); normalised to a
    # tuple in ISSUES order. quality: keep rows with any of them; exclude_quality: drop those rows.
    quality: tuple[str, ...] | str = ()
    exclude_quality: tuple[str, ...] | str = ()

    def __post_init__(self) -> None:
        for name in ("quality", "exclude_quality"):
            value = getattr(self, name)
            if value in ((), None):
                object.__setattr__(self, name, ())
                continue
            try:
                object.__setattr__(self, name, issue_names(value))  # frozen: normalised once, here
            except ConfigError as exc:
                raise ConfigError(f"--{name.replace('_', '-')}: {exc}") from None
        if quality_conflict(self.quality, self.exclude_quality):
            raise ConfigError(f"--quality {','.join(self.quality)} with --exclude-quality "
                              f"{','.join(self.exclude_quality)} leaves no row to select")
        if self.policy not in POLICIES:
            raise ConfigError(f"--policy {self.policy!r} is not one of {', '.join(POLICIES)}")
        if self.budget is not None and self.budget <= 0:
            raise ConfigError(f"--budget must be > 0, got {self.budget}")
        if self.policy == "top-k" and self.budget is None:
            raise ConfigError("--policy top-k needs --budget N (how many rows to send)")
        if self.per_class and self.budget is None:
            raise ConfigError("--per-class needs --budget N (the budget it splits across classes)")

    @property
    def queue(self) -> str:
        return queue_of(self.policy)

    @property
    def filters_quality(self) -> bool:
        return bool(self.quality or self.exclude_quality)

    def describe(self) -> str:
        """The selection in words, for logs and the export summary."""
        parts = [f"policy {self.policy}"]
        if self.budget is not None:
            parts.append(f"budget {self.budget}{' per class' if self.per_class else ''}")
        if self.quality:
            parts.append("with quality issue " + " or ".join(self.quality))
        if self.exclude_quality:
            parts.append("without quality issue " + " or ".join(self.exclude_quality))
        return ", ".join(parts)


def quality_filter(selection: Selection, schema: pa.Schema, where: str = "this run") -> Any:
    """The scanner expression of ``selection``'s quality filters (None without any); ``ReportError`` when
    the report has no ``quality_issues`` column (module docstring)."""
    if not selection.filters_quality:
        return None
    if QUALITY_COLUMN not in schema.names:
        raise ReportError(f"{where} was written before the {QUALITY_COLUMN} column (report format 1 or 2): "
                          "--quality/--exclude-quality need a run scanned by this version")
    out = None
    if selection.quality:
        out = _has_issue(selection.quality)
    if selection.exclude_quality:
        keep = pc.invert(pc.coalesce(_has_issue(selection.exclude_quality), pa.scalar(False)))
        out = keep if out is None else out & keep
    return out


def _has_issue(names: Sequence[str]) -> Any:
    """True where ``quality_issues`` holds one of ``names`` (``any``: is non-empty); null where it is null."""
    field = pc.field(QUALITY_COLUMN)
    if ANY_ISSUE in names:
        return pc.list_value_length(field) > 0
    # the names are from ISSUES ([a-z_]+): no escaping needed, and "," never occurs inside one
    return pc.match_substring_regex(pc.binary_join(field, ","), f"(^|,)({'|'.join(names)})(,|$)")


def split_budget(counts: Mapping[int, int], budget: int) -> dict[int, int]:
    """Per-class shares of ``budget`` given each class's candidate count (see the module docstring).

    Deterministic; ``sum(result) == min(budget, sum(counts))`` and no class gets more than its count.
    """
    if budget < 0:
        raise ConfigError(f"--budget must be > 0, got {budget}")
    shares = {c: 0 for c in counts}
    left = budget
    # most candidates first, then class id: the order the remainder is handed out in
    order = sorted((c for c in counts if counts[c] > 0), key=lambda c: (-counts[c], c))
    while left > 0:
        active = [c for c in order if shares[c] < counts[c]]
        if not active:
            break
        base, extra = divmod(left, len(active))
        for i, c in enumerate(active):
            give = min(counts[c] - shares[c], base + (1 if i < extra else 0))
            shares[c] += give
            left -= give
    return shares


def payload_columns(schema: pa.Schema, flag_on: Sequence[str]) -> list[str]:
    """The report columns an export reads: identity, class, flags, and every score with its percentile."""
    from ood_audit.store.schema import SPEC_SCORES

    names = set(schema.names)
    scores = [s for s in dict.fromkeys([*SPEC_SCORES, *flag_on]) if s in names]
    cols = [c for c in BASE_COLUMNS if c in names]
    cols += scores + [f"pct_{s}" for s in scores if f"pct_{s}" in names]
    return list(dict.fromkeys(cols))


def select_rows(ds: pads.Dataset, flag_on: Sequence[str], selection: Selection, *,
                where: str = "this run", restrict: Any = None) -> pa.Table:
    """The rows ``selection`` exports from a dataset (one run's, or a catch-up's many), ranked, with an
    ``anomaly`` column (``where`` names the rows in errors). ``restrict``, a scanner expression, narrows
    the candidates before ranking and the budget (a catch-up's "not sent yet")."""
    columns = payload_columns(ds.schema, flag_on)
    ok = pc.field("status") == "ok"
    if restrict is not None:
        ok = ok & restrict
    quality = quality_filter(selection, ds.schema, where)
    if quality is not None:  # candidates are ok rows that pass the quality filters, whatever the policy
        ok = ok & quality
    if selection.policy == "top-k":
        assert selection.budget is not None
        if not selection.per_class:
            return most_anomalous(ds, selection.budget, flag_on, columns=columns, filter=ok)
        counts = _class_counts(ds, flag_on, ok)
        parts = [most_anomalous(ds, n, flag_on, columns=columns, filter=ok & _class_is(c))
                 for c, n in split_budget(counts, selection.budget).items() if n > 0]
        return rank(_concat(parts, ds.schema, columns))
    if selection.policy == "threshold":
        table = _candidates(ds, flag_on, columns, ok & (pc.field("flagged") == True))  # noqa: E712
    else:
        pair = disagreement_pair(flag_on)
        has_reason = pc.list_value_length(pc.field("flag_reasons")) > 0
        table = _candidates(ds, flag_on, columns, ok & has_reason, keep=lambda t: disagreement_mask(t, pair))
    return apply_budget(rank(table), selection.budget, selection.per_class)


def disagreement_pair(flag_on: Sequence[str]) -> tuple[str, str]:
    """The two scores whose split vote ``disagreement`` selects: the bundle's ``flag_on`` union, which must
    have exactly two (module docstring)."""
    scores = list(dict.fromkeys(flag_on))
    if len(scores) != 2:
        raise ConfigError(f"--policy disagreement compares the two scores a bundle flags on; this run's bundle flags "
                          f"on {', '.join(scores) or 'nothing'}: use --policy threshold or top-k, or calibrate with "
                          "--flag-on A,B")
    return scores[0], scores[1]


def disagreement_mask(table: pa.Table | pa.RecordBatch, pair: tuple[str, str]) -> np.ndarray:
    """True where exactly one of the ``pair`` of scores is among ``flag_reasons``."""
    reasons = table.column("flag_reasons").to_pylist()
    a, b = pair
    return np.array([(a in (r or ())) != (b in (r or ())) for r in reasons], dtype=bool)


def flagged_by(table: pa.Table, policy: str, flag_on: Sequence[str] = ()) -> list[str | None]:
    """Which score put each row in the queue: for ``disagreement`` the one of the bundle's pair that flagged
    it, otherwise the first of ``flag_reasons`` (None when nothing flagged it: a top-k row)."""
    pair = disagreement_pair(flag_on) if policy == "disagreement" else ()
    out: list[str | None] = []
    for r in table.column("flag_reasons").to_pylist():
        r = list(r or ())
        if policy == "disagreement":
            out.append(next((s for s in pair if s in r), None))
        else:
            out.append(r[0] if r else None)
    return out


def rank(table: pa.Table) -> pa.Table:
    """Anomaly descending, then ``uri`` ascending (the one export order)."""
    if table.num_rows == 0:
        return table
    order = pc.sort_indices(table, sort_keys=[("anomaly", "descending"), ("uri", "ascending")])
    return table.take(order)


def apply_budget(table: pa.Table, budget: int | None, per_class: bool) -> pa.Table:
    """The first ``budget`` rows of a ranked table, split across ``pred_class`` when ``per_class``."""
    if budget is None:
        return table
    if not per_class:
        return table.slice(0, budget)
    classes = _class_array(table)
    values, counts = np.unique(classes, return_counts=True)
    shares = split_budget({int(v): int(n) for v, n in zip(values, counts)}, budget)
    seen: dict[int, int] = {}
    keep = np.zeros(table.num_rows, dtype=bool)
    for i, c in enumerate(classes.tolist()):  # the table is ranked: the first rows of a class are its best
        if seen.get(c, 0) < shares.get(c, 0):
            keep[i] = True
            seen[c] = seen.get(c, 0) + 1
    return table.filter(pa.array(keep))


def _candidates(ds: pads.Dataset, flag_on: Sequence[str], columns: list[str], filter: Any,
                keep: Any = None) -> pa.Table:
    pieces = []
    for batch in iter_batches(ds, columns=columns, filter=filter):
        t = pa.Table.from_batches([batch])
        if keep is not None:
            t = t.filter(pa.array(keep(t)))
        pieces.append(t.append_column("anomaly", pa.array(anomaly(t, flag_on), pa.float64())))
    return _concat(pieces, ds.schema, columns)


def _class_counts(ds: pads.Dataset, flag_on: Sequence[str], filter: Any) -> dict[int, int]:
    """Top-k candidates (ok rows with a known anomaly) per predicted class, counted batch by batch."""
    pct = [f"pct_{s}" for s in flag_on if f"pct_{s}" in ds.schema.names]
    counts: dict[int, int] = {}
    for batch in iter_batches(ds, columns=["pred_class", *pct], filter=filter):
        t = pa.Table.from_batches([batch])
        classes = _class_array(t)[np.isfinite(anomaly(t, flag_on))]
        for v, n in zip(*np.unique(classes, return_counts=True)):
            counts[int(v)] = counts.get(int(v), 0) + int(n)
    return counts


def _class_array(table: pa.Table) -> np.ndarray:
    return np.asarray(pc.fill_null(table.column("pred_class"), NO_CLASS).to_numpy(zero_copy_only=False),
                      dtype=np.int64)


def _class_is(c: int) -> Any:
    return pc.field("pred_class").is_null() if c == NO_CLASS else pc.field("pred_class") == c


def _concat(parts: list[pa.Table], schema: pa.Schema, columns: list[str]) -> pa.Table:
    if parts:
        return pa.concat_tables(parts)
    fields = [schema.field(c) for c in columns] + [pa.field("anomaly", pa.float64())]
    return pa.schema(fields).empty_table()


__all__ = ["ANY_ISSUE", "POLICIES", "Selection", "apply_budget", "disagreement_mask", "disagreement_pair", "flagged_by", "issue_names",
           "payload_columns", "quality_filter", "queue_of", "rank", "select_rows", "split_budget"]
