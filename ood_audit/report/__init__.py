"""The self-contained HTML audit report of a scan run (SPEC §13): ``ood-audit report``.

``collect`` folds a run's rows in one streaming pass, ``drift`` holds the pure statistics, ``explain``
the CSD view box and the nearest ID neighbours, ``thumbs`` the object thumbnails, ``plots`` the
histograms, ``quality`` the data-quality findings (SPEC §14), ``build`` puts them together and ``html``
renders the page.
"""
from __future__ import annotations

from ood_audit.io.fs import S3Config, write_bytes
from ood_audit.report.build import DEFAULT_TOP, ReportData, ReportOptions, build_report
from ood_audit.report.html import render_html


def write_report(output: str, out: str, run_id: str | None = None, *, s3: S3Config | None = None,
                 options: ReportOptions | None = None) -> ReportData:
    """Build the report of run ``run_id`` (latest when None) under ``output`` and write it to ``out``
    (a local path or ``s3://`` URI). Returns what was shown."""
    data = build_report(output, run_id, s3=s3, options=options)
    write_bytes(out, render_html(data).encode("utf-8"), s3=s3)
    return data


__all__ = ["DEFAULT_TOP", "ReportData", "ReportOptions", "build_report", "render_html", "write_report"]
