"""Catch-up exports (local files, no server): every committed row not yet sent, across nights; keys unique;
one sender per destination; a tasks file must name its run."""
import json
import os

from ood_audit.cli import main
from ood_audit.errors import EXIT_CONFIG, EXIT_LEASE_HELD
from ood_audit.io.lease import Lease
from ood_audit.report.build import SentLine, sent_lines
from ood_audit.sinks.export import export
from ood_audit.sinks.export_ledger import ExportLedger
from ood_audit.sinks.manifest import ManifestSink
from ood_audit.sinks.select import Selection
from ood_audit.store.runs import SUMMARY_JSON, run_dir

from tests.reports import row, write_run


def _sent(sink):
    return [json.loads(line)["source-ref"] for f in sink.files for line in open(f).read().splitlines()]


def test_catch_up_sends_every_earlier_nights_rows_once(tmp_path):
    out, prefix = str(tmp_path / "audit"), str(tmp_path / "manifests")
    n1 = [row(f"s3://d/n1/{i}.png", pct=1.0) for i in range(3)] + [row("s3://d/n1/ok.png", pct=60.0)]
    n2 = [row(f"s3://d/n2/{i}.png", pct=2.0) for i in range(2)]
    n3 = [row("s3://d/n3/0.png", pct=0.5)]
    write_run(out, "n1", n1, day=0)  # exported by nobody (its export failed)
    write_run(out, "n2", n2, day=1)
    os.remove(os.path.join(run_dir(out, "n2"), SUMMARY_JSON))  # its scan stopped: committed chunks, no summary
    write_run(out, "n3", n3, day=2)

    only_n3 = ManifestSink(prefix)
    assert export(out, only_n3, Selection(), run_id="n3").sent_now == 1  # --run-id: that run only
    sink = ManifestSink(prefix)
    summary = export(out, sink, Selection(), run_id="n3", catch_up=True)
    flagged = {r["uri"] for r in n1 + n2 if r["flagged"]}
    assert sorted(_sent(sink)) == sorted(flagged)  # n3's row went out before: not again
    assert summary.sent_now == len(flagged) == summary.from_earlier_runs == 5 and summary.catch_up
    assert "5 of them from earlier runs" in "\n".join(summary.lines())
    again = ManifestSink(prefix)
    assert export(out, again, Selection(), run_id="n3", catch_up=True).sent_now == 0 and _sent(again) == []
    ledger = ExportLedger(out, "jsonl", prefix, "outliers")
    assert ledger.sent_by("n3") == (6, 5)  # 1 row of n3 itself, 5 scanned by earlier runs
    assert sent_lines(out, "n3", None) == [SentLine("jsonl", prefix, "outliers", 6, 5)]  # the report's line


def test_catch_up_leaves_sent_rows_out_before_the_budget(tmp_path):
    out, prefix = str(tmp_path / "audit"), str(tmp_path / "m")
    write_run(out, "n1", [row(f"s3://d/{i}.png", pct=float(i + 1)) for i in range(5)])
    got = []
    for _ in range(3):
        sink = ManifestSink(prefix)
        export(out, sink, Selection(policy="top-k", budget=2), catch_up=True)
        got.append(_sent(sink))
    # ranked by anomaly (lowest percentile first): each night the next two not yet sent
    assert got == [["s3://d/0.png", "s3://d/1.png"], ["s3://d/2.png", "s3://d/3.png"], ["s3://d/4.png"]]


def test_a_uri_listed_twice_is_sent_once(tmp_path):
    out, prefix = str(tmp_path / "audit"), str(tmp_path / "m")
    twice = row("s3://d/dup.png", pct=1.0)
    write_run(out, "n1", [twice, dict(twice), row("s3://d/other.png", pct=2.0)])  # a manifest listing it twice
    sink = ManifestSink(prefix)
    summary = export(out, sink, Selection(), run_id="n1")
    assert sorted(_sent(sink)) == ["s3://d/dup.png", "s3://d/other.png"]
    assert summary.selected == 2 and summary.duplicates == 1 and summary.sent_now == 2


def test_export_refuses_while_another_sender_holds_the_lease(tmp_path, capsys):
    out, prefix = str(tmp_path / "audit"), str(tmp_path / "m")
    write_run(out, "n1", [row("s3://d/a.png", pct=1.0)])
    ledger = ExportLedger(out, "jsonl", prefix, "outliers")
    with Lease(ledger.lease_uri, 600, run="other-sender"):
        code = main(["export", "--report", out, "--to", "jsonl", "--manifest-prefix", prefix])
        assert code == EXIT_LEASE_HELD
        assert ledger.load() == set()
    assert main(["export", "--report", out, "--to", "jsonl", "--manifest-prefix", prefix]) == 0
    assert len(ledger.load()) == 1


def test_tasks_file_without_run_id_is_refused_in_one_line(tmp_path, capsys):
    out = str(tmp_path / "audit")
    write_run(out, "n1", [row("s3://d/a.png", pct=1.0)])
    code = main(["export", "--report", out, "--to", "label-studio", "--tasks-file", str(tmp_path / "tasks.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_CONFIG and len(err) == 1 and "{run_id}" in err[0] and "tasks.json" in err[0]
    assert not (tmp_path / "tasks.json").exists()


def test_a_stray_part_file_is_read_by_no_reader(tmp_path):
    """A part file no marker names (a killed attempt's) is not in load_report, an export, a catch-up or the
    done-set; `ood-audit runs sweep` removes it and says so."""
    import pyarrow as pa

    from ood_audit.scan.plan import DoneSet
    from ood_audit.store.runs import find_run, load_report
    from ood_audit.store.schema import list_parts, part_name, report_schema, write_part
    from tests.reports import BASE_TIME

    out, prefix = str(tmp_path / "audit"), str(tmp_path / "m")
    partition = write_run(out, "n1", [row("s3://d/a.png", pct=1.0)])
    stray = row("s3://d/stray.png", pct=1.0)
    schema = report_schema()
    cols = {f.name: [stray.get(f.name)] for f in schema}
    cols.update(run_id=["n1"], bundle_id=["b" * 32], scanned_at=[BASE_TIME])
    write_part(pa.Table.from_pydict(cols, schema=schema), f"{partition}/{part_name('n1', 7, 2, 'd1')}")
    assert len(list_parts(partition)) == 2
    assert load_report(out, "n1").column("uri").to_pylist() == ["s3://d/a.png"]
    sink = ManifestSink(prefix)
    assert export(out, sink, Selection(), catch_up=True).sent_now == 1 and _sent(sink) == ["s3://d/a.png"]
    assert len(DoneSet.from_reports(out, find_run(out, "n1").bundle_id)) == 1  # the stray object is scanned again
    assert main(["runs", "sweep", out]) == 0
    assert list_parts(partition) == [part_name("n1", 0, 1, "d0")]
