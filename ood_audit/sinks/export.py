"""``ood-audit export``: send a scan run's selected rows to a labeling queue, each sample once (SPEC §12).

Order of work, chosen so that nothing is marked sent that was not, and a bad flag or endpoint costs nothing:

1. **Select** (:mod:`~ood_audit.sinks.select`): read the run, apply the policy, the quality filters (SPEC §14)
   and the budget. Pure; no network.
2. **Open** the sink: resolve the queue, check the token, create or find the project. An unreachable endpoint
   or a rejected credential stops here with one line, before any send and with the ledger untouched.
3. **Dedupe** against the destination's ledger (:mod:`~ood_audit.sinks.export_ledger`): keys of
   ``(uri, etag, bundle_id)`` already recorded are skipped.
4. **Send** the rest in batches, in the selection's order. After each batch the sink confirmed, one ledger
   file records it; when a batch fails partway, only its confirmed items are recorded and the export stops
   with one line. Re-running sends exactly what is missing, and re-running after success sends nothing.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ood_audit.io.fs import S3Config
from ood_audit.sinks.items import ExportError, ExportItem, PartialSend, items_from_table
from ood_audit.sinks.export_ledger import ExportLedger
from ood_audit.store.runs import find_run, run_dataset
from ood_audit.sinks.select import Selection, select_rows

log = logging.getLogger(__name__)


class Sink(Protocol):
    """What :func:`export` needs from a sink. ``send`` raises on failure (``PartialSend`` when some of the
    batch was confirmed); returning means the whole batch was delivered."""

    kind: str
    destination: str
    batch_size: int

    def open(self) -> None: ...
    def begin(self, run_id: str, items: list[ExportItem]) -> None: ...
    def send(self, items: list[ExportItem]) -> None: ...
    def close(self) -> None: ...


@dataclass
class ExportSummary:
    """What one export did (printed for people, or as JSON with ``--json``)."""

    run_id: str
    bundle_id: str
    policy: str
    queue: str
    sink: str
    destination: str
    ledger: str
    selected: int
    already_sent: int
    sent_now: int = 0
    batches: int = 0
    files: list[str] = field(default_factory=list)
    quality: list[str] = field(default_factory=list)          # --quality: rows with any of these issues
    exclude_quality: list[str] = field(default_factory=list)  # --exclude-quality: rows without them

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        quality = (f", with quality issue {' or '.join(self.quality)}" if self.quality else "") + \
                  (f", without quality issue {' or '.join(self.exclude_quality)}" if self.exclude_quality else "")
        return [f"run {self.run_id} (bundle {self.bundle_id[:12]}), policy {self.policy}{quality} "
                f"-> queue {self.queue}",
                f"  {self.sink} {self.destination}",
                f"  selected {self.selected}, already sent {self.already_sent}, sent now {self.sent_now} "
                f"in {self.batches} batch(es)",
                f"  ledger {self.ledger}"]


def export(output: str, sink: Sink, selection: Selection, *, run_id: str | None = None,
           s3: S3Config | None = None) -> ExportSummary:
    """Export one run (the latest when ``run_id`` is None) under ``output`` to ``sink`` (module docstring)."""
    run = find_run(output, run_id, s3=s3)
    table = select_rows(run_dataset(run, s3=s3), run.flag_on, selection, where=f"run {run.run_id}")
    items = list(items_from_table(table, selection.policy))
    log.info("run %s: %d rows selected by %s", run.run_id, len(items), selection.describe())
    try:
        sink.open()
        ledger = ExportLedger(output, sink.kind, sink.destination, selection.queue, s3=s3)
        sent = ledger.load()
        pending = [i for i in items if i.key not in sent]
        summary = ExportSummary(run_id=run.run_id, bundle_id=run.bundle_id, policy=selection.policy,
                                queue=selection.queue, sink=sink.kind, destination=sink.destination,
                                ledger=ledger.root, selected=len(items), already_sent=len(items) - len(pending),
                                quality=list(selection.quality), exclude_quality=list(selection.exclude_quality))
        log.info("%s %s: %d already sent, %d to send", sink.kind, sink.destination, summary.already_sent,
                 len(pending))
        sink.begin(run.run_id, pending)
        for start in range(0, len(pending), sink.batch_size):
            batch = pending[start:start + sink.batch_size]
            try:
                sink.send(batch)
            except PartialSend as exc:
                done = set(exc.confirmed)
                ledger.record(run.run_id, [i for i in batch if i.key in done])
                summary.sent_now += len(done)
                raise ExportError(f"{exc} ({summary.sent_now} sent and recorded this time, "
                                  f"{len(pending) - summary.sent_now} not; re-run to send the rest)") from None
            ledger.record(run.run_id, batch)
            summary.sent_now += len(batch)
            summary.batches += 1
            log.info("%s: %d/%d sent", sink.kind, summary.sent_now, len(pending))
        summary.files = list(getattr(sink, "files", []))
        if getattr(sink, "written", None):
            summary.files.append(sink.written)  # type: ignore[attr-defined]
        return summary
    finally:
        sink.close()


__all__ = ["ExportSummary", "Sink", "export"]
