"""Where rows are sent: selection (:mod:`.select`) and the Label Studio, SQS, JSONL, webhook and FiftyOne sinks,
each sample once through the export ledger (:mod:`.export`, :mod:`.export_ledger`). The report schema names
re-exported here live in :mod:`ood_audit.store.schema`."""
from ood_audit.store.schema import (
    PARTITION_KEY,
    SPEC_SCORES,
    open_reports,
    partition_uri,
    report_schema,
    reports_root,
)

__all__ = ["PARTITION_KEY", "SPEC_SCORES", "open_reports", "partition_uri", "report_schema", "reports_root"]
