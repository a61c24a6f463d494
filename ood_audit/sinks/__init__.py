"""Where scan results go: the Parquet reports (:mod:`.parquet`), reading runs back (:mod:`.runs`), and the
labeling queues: selection (:mod:`.select`), Label Studio, SQS and JSONL sinks, deduplicated by a ledger
(:mod:`.export`, :mod:`.ledger`)."""
from ood_audit.store.schema import (
    PARTITION_KEY,
    SPEC_SCORES,
    open_reports,
    partition_uri,
    report_schema,
    reports_root,
)

__all__ = ["PARTITION_KEY", "SPEC_SCORES", "open_reports", "partition_uri", "report_schema", "reports_root"]
