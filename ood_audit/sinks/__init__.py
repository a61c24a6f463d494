"""Where scan results go: Parquet reports (:mod:`~ood_audit.sinks.parquet`)."""
from ood_audit.sinks.parquet import (
    PARTITION_KEY,
    SPEC_SCORES,
    open_reports,
    partition_uri,
    report_schema,
    reports_root,
)

__all__ = ["PARTITION_KEY", "SPEC_SCORES", "open_reports", "partition_uri", "report_schema", "reports_root"]
