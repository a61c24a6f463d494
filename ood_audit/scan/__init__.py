"""The scan: Ray Data stages from a listing to Parquet reports (SPEC §11), resumable and incremental.

Modules follow the data:

- :mod:`~ood_audit.scan.plan`: prefixes or a manifest, minus already-done objects, cut into chunks;
- :mod:`~ood_audit.scan.read`: plan slices as read tasks; fetch + decode tasks;
- :mod:`~ood_audit.scan.score`: the scoring actor (one bundle, one forward pass per batch);
- :mod:`~ood_audit.scan.rows`: report rows (scores, percentiles, flags) in the fixed schema;
- :mod:`~ood_audit.scan.write`: the part-file writer stage and its feed to the driver;
- :mod:`~ood_audit.scan.config`: :class:`ScanConfig` and its checks;
- :mod:`~ood_audit.scan.pipeline`: the Ray Data graph of one pass and the scoring actors' resources;
- :mod:`~ood_audit.scan.driver`: ``run_scan``, the passes, commits and storage failures (design notes live there);
- :mod:`~ood_audit.scan.summary`: the run's :class:`~ood_audit.store.records.RunSummary`;
- :mod:`~ood_audit.store.run_ledger` and :mod:`~ood_audit.store.records`: the run's plan, commit markers and
  cleanup, and its typed records.

``run_scan`` and ``ScanConfig`` are imported lazily, so importing this package does not start Ray or torch.
"""
from __future__ import annotations

from typing import Any

__all__ = ["ScanConfig", "ScanIncomplete", "ScanResult", "run_scan"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ood_audit.scan import driver

        return getattr(driver, name)
    raise AttributeError(f"module 'ood_audit.scan' has no attribute {name!r}")
