"""Rendering :class:`~ood_audit.report.build.ReportData` into the one self-contained HTML page.

Jinja2 runs with autoescape on for the whole template, so every key, error string and prefix from the
data is HTML-escaped, in text and in attributes alike; the only values not escaped here are the numbers this
module formats, the ``data:`` URIs of images it encoded itself, and the block-selection fragment, which
:func:`~ood_audit.calibration.evidence_view.evidence_html` escapes as it builds it. Long tables are capped (prefixes,
drift rows) and say how many rows were left out, so a run with very many prefixes still gives a page a
browser opens.
"""
from __future__ import annotations

import math
from importlib import metadata

import jinja2

from ood_audit.report.build import ReportData
from ood_audit.io.quality import ISSUES
from ood_audit.report.explain import STATUS_WORDS, reason_words
from ood_audit.report.template import TEMPLATE

MAX_TABLE_ROWS = 500
VERDICT_WORDS = {"changed": "changed (adjusted p < 0.01)", "no change": "no significant change",
                 "too few": "no verdict: under 30 scored", "new": "new prefix", "gone": "not in this run",
                 "other bundle": "rates only (other bundle)"}
# the grid's quality filter, in bar order: the SPEC §14 issues between "all" and "any"/"none"
QUALITY_FILTERS: tuple[str, ...] = ("all", *ISSUES, "any", "none")
FILTER_WORDS = {"all": "all", "any": "any finding", "none": "no finding"}


def _num(value: float | int | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100.0 * value:.1f}%"


def _pval(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2g}" if value >= 1e-4 else f"{value:.1e}"


def _thousands(value: int | None) -> str:
    return "–" if value is None else f"{int(value):,}"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters.update(num=_num, pct=_pct, pval=_pval, thousands=_thousands)
    return env


def render_html(data: ReportData) -> str:
    """The report page as a string (UTF-8 when written)."""
    drift = data.drift.rows
    if len(drift) > MAX_TABLE_ROWS:  # keep every marked change, then the rest by name
        drift = sorted(drift, key=lambda r: (not r.significant, r.prefix))[:MAX_TABLE_ROWS]
    try:
        version = metadata.version("ood-audit")
    except metadata.PackageNotFoundError:
        version = "(unknown version)"
    return environment().from_string(TEMPLATE).render(
        d=data, s=data.run.summary,
        prefixes=data.prefixes[:MAX_TABLE_ROWS], prefixes_more=max(0, len(data.prefixes) - MAX_TABLE_ROWS),
        drift_rows=drift, drift_more=len(data.drift.rows) - len(drift), status_words=STATUS_WORDS,
        words=reason_words, verdict_words=VERDICT_WORDS, version=version, quality_filters=QUALITY_FILTERS,
        filter_words=FILTER_WORDS)
