"""``ood-audit export``: send selected scan rows to a labeling queue, each sample once (SPEC §12).

What is selected:

- ``--run-id X`` (or the latest run): that run's committed rows, as before.
- *Catch-up* (``catch_up=True``; the nightly's exports, and ``ood-audit export --catch-up``): every committed
  row, of every run under the output root with the run's bundle, that this destination's ledger has not
  sent, whichever night scanned it. The unit of "sent" is the object and its content (the ledger key
  ``(uri, etag, bundle_id)``), not the night: rows of a night whose scan stopped (its committed chunks), or
  whose export failed, go out with the next night's export. Rows already sent are left out *before* the
  policy's budget, so they never take its place. The summary says how many rows came from earlier runs.

Order of work, chosen so that nothing is marked sent that was not, and a bad flag or endpoint costs nothing:

1. **Select** (:mod:`~ood_audit.sinks.select`): read the rows, apply the policy, the quality filters
   (SPEC §14) and the budget. No network. (A catch-up selects after step 3, which it needs.)
2. **Open** the sink: resolve the queue, check the token, create or find the project. An unreachable endpoint
   or a rejected credential stops here with one line, before any send and with the ledger untouched.
3. **Lease** ``<ledger>/lease.json`` (:mod:`ood_audit.io.lease`): one sender per destination and queue,
   whether ``ood-audit export`` or the nightly; a second one stops with exit 75 having sent nothing.
4. **Dedupe** against the destination's ledger (:mod:`~ood_audit.sinks.export_ledger`): keys of
   ``(uri, etag, bundle_id)`` already recorded are skipped, and the selection is made unique by key (a
   manifest that lists one URI twice sends it once).
5. **Send** the rest in batches, in the selection's order. After each batch the sink confirmed, one ledger
   file records it; when a batch fails partway, only its confirmed items are recorded and the export stops
   with one line. Re-running sends exactly what is missing, and re-running after success sends nothing.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import pyarrow.compute as pc

from ood_audit.io.fs import S3Config
from ood_audit.io.lease import Lease
from ood_audit.sinks.items import ExportError, ExportItem, PartialSend, items_from_table
from ood_audit.sinks.export_ledger import ExportLedger
from ood_audit.store.runs import RunInfo, all_committed_parts, find_run, parts_dataset, run_dataset
from ood_audit.sinks.select import Selection, select_rows

EXPORT_LEASE_TTL_S = 300.0  # renewed every third of it while sending; a crashed sender is stale after it

log = logging.getLogger(__name__)


class Sink(Protocol):
    """What :func:`export` needs from a sink. ``send`` raises on failure (``PartialSend`` when some of the
    batch was confirmed); returning means the whole batch was delivered. A sink whose answer can be lost
    after the batch was applied also has ``present(keys) -> set[str]`` (the keys the destination has):
    its batches are noted in flight and reconciled with it (:mod:`~ood_audit.sinks.export_ledger`)."""

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
    catch_up: bool = False
    from_earlier_runs: int = 0  # of sent_now: rows an earlier run scanned (a catch-up's)
    duplicates: int = 0         # selected rows whose key another selected row already has
    files: list[str] = field(default_factory=list)
    quality: list[str] = field(default_factory=list)          # --quality: rows with any of these issues
    exclude_quality: list[str] = field(default_factory=list)  # --exclude-quality: rows without them

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        quality = (f", with quality issue {' or '.join(self.quality)}" if self.quality else "") + \
                  (f", without quality issue {' or '.join(self.exclude_quality)}" if self.exclude_quality else "")
        scope = "every run not yet sent up to " if self.catch_up else ""
        return [f"{scope}run {self.run_id} (bundle {self.bundle_id[:12]}), policy {self.policy}{quality} "
                f"-> queue {self.queue}",
                f"  {self.sink} {self.destination}",
                f"  selected {self.selected}, already sent {self.already_sent}, sent now {self.sent_now} "
                f"in {self.batches} batch(es)" + (f", {self.from_earlier_runs} of them from earlier runs"
                                                  if self.catch_up else ""),
                f"  ledger {self.ledger}"]


def export(output: str, sink: Sink, selection: Selection, *, run_id: str | None = None, catch_up: bool = False,
           s3: S3Config | None = None, lease_ttl_s: float = EXPORT_LEASE_TTL_S) -> ExportSummary:
    """Export run ``run_id`` (the latest when None) under ``output`` to ``sink``; with ``catch_up``, every
    committed row of that run's bundle not yet sent (module docstring)."""
    run = find_run(output, run_id, s3=s3)
    table = None if catch_up else select_rows(run_dataset(run, s3=s3), run.flag_on, selection,
                                              where=f"run {run.run_id}")
    try:
        sink.open()
        ledger = ExportLedger(output, sink.kind, sink.destination, selection.queue, s3=s3)
        with Lease(ledger.lease_uri, lease_ttl_s, run=run.run_id, s3=s3, dead_holder_is_stale=True) as lease:
            if catch_up:
                table = _catch_up_rows(run, ledger, selection, s3)
            summary = _send(run, sink, selection, ledger, table, lease)
            summary.catch_up = catch_up
        summary.files = list(getattr(sink, "files", []))
        if getattr(sink, "written", None):
            summary.files.append(sink.written)  # type: ignore[attr-defined]
        return summary
    finally:
        sink.close()


def _catch_up_rows(run: RunInfo, ledger: ExportLedger, selection: Selection, s3: S3Config | None) -> Any:
    """Every committed row of ``run``'s bundle, from any run, that ``ledger`` has not sent, selected."""
    parts = all_committed_parts(run.output, s3=s3, bundle_id=run.bundle_id)
    parts.sort(key=lambda p: p.run_id != run.run_id)  # the run's own schema first: the newest format
    ds = parts_dataset(parts, s3=s3)
    if ds is None:
        return None
    log.info("catch-up: %d run(s) with committed rows of bundle %s", len(parts), run.bundle_id[:12])
    return select_rows(ds, run.flag_on, selection, where=f"the runs of bundle {run.bundle_id[:12]}",
                       restrict=(pc.field("bundle_id") == run.bundle_id) & ledger.unsent_filter(run.bundle_id))


def _send(run: RunInfo, sink: Sink, selection: Selection, ledger: ExportLedger, table: Any,
          lease: Lease) -> ExportSummary:
    selected = [] if table is None else list(items_from_table(table, selection.policy, run.flag_on))
    items, keys = [], set()
    for item in selected:  # unique by key (a manifest may list one URI twice): the first, best-ranked, kept
        if item.key not in keys:
            keys.add(item.key)
            items.append(item)
    log.info("run %s: %d rows selected by %s", run.run_id, len(items), selection.describe())
    present = getattr(sink, "present", None)  # a sink whose answers can be lost reconciles first
    for note, noted in ledger.in_flight() if present is not None else ():
        found = present(set(noted.column("key").to_pylist()))
        log.warning("%s %s: a batch of %d sent earlier got no answer; %d of it found there, recorded",
                    sink.kind, sink.destination, noted.num_rows, len(found))
        ledger.settle(note, noted, found)
    sent = ledger.load()
    pending = [i for i in items if i.key not in sent]
    summary = ExportSummary(run_id=run.run_id, bundle_id=run.bundle_id, policy=selection.policy,
                            queue=selection.queue, sink=sink.kind, destination=sink.destination,
                            ledger=ledger.root, selected=len(items), already_sent=len(items) - len(pending),
                            duplicates=len(selected) - len(items), quality=list(selection.quality),
                            exclude_quality=list(selection.exclude_quality))
    log.info("%s %s: %d already sent, %d to send", sink.kind, sink.destination, summary.already_sent,
             len(pending))
    sink.begin(run.run_id, pending)
    for start in range(0, len(pending), sink.batch_size):
        batch = pending[start:start + sink.batch_size]
        lease.check()  # taken over meanwhile: stop before sending, not after
        note = ledger.intend(run.run_id, batch) if present is not None else None
        try:
            sink.send(batch)
        except PartialSend as exc:
            done = set(exc.confirmed)
            confirmed = [i for i in batch if i.key in done]
            ledger.record(run.run_id, confirmed)
            if note is not None:
                ledger.settle(note)  # the sink said which were confirmed: nothing is in doubt
            _count(summary, run, confirmed)
            raise ExportError(f"{exc} ({summary.sent_now} sent and recorded this time, "
                              f"{len(pending) - summary.sent_now} not; re-run to send the rest)") from None
        ledger.record(run.run_id, batch)
        if note is not None:
            ledger.settle(note)
        _count(summary, run, batch)
        summary.batches += 1
        log.info("%s: %d/%d sent", sink.kind, summary.sent_now, len(pending))
    return summary


def _count(summary: ExportSummary, run: RunInfo, items: list[ExportItem]) -> None:
    summary.sent_now += len(items)
    summary.from_earlier_runs += sum(i.run_id != run.run_id for i in items)


__all__ = ["ExportSummary", "Sink", "export"]
