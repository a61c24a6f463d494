"""A Label Studio tasks file per night (``{run_id}`` in its name) still deduplicates across nights."""
import json

from ood_audit.sinks.export import export
from ood_audit.sinks.labelstudio import LabelStudioSink
from ood_audit.sinks.select import Selection

from tests.reports import row, write_run


def test_per_night_task_files_share_one_ledger(tmp_path):
    out = str(tmp_path / "audit")
    night1 = [row(f"s3://data/in/{i}.png", pct=1.0) for i in range(4)] + [row("s3://data/in/ok.png", pct=60.0)]
    write_run(out, "night-1", night1, day=0)
    write_run(out, "night-2", night1 + [row("s3://data/in/new.png", pct=0.5)], day=1)
    template = str(tmp_path / "tasks-{run_id}.json")
    for night in ("night-1", "night-2"):
        summary = export(out, LabelStudioSink(tasks_file=template), Selection(), run_id=night)
        assert summary.files == [template.replace("{run_id}", night)]
    first = json.loads((tmp_path / "tasks-night-1.json").read_text())
    second = json.loads((tmp_path / "tasks-night-2.json").read_text())
    assert sorted(t["data"]["image"] for t in first) == [f"s3://data/in/{i}.png" for i in range(4)]
    assert [t["data"]["image"] for t in second] == ["s3://data/in/new.png"]  # night 1's file kept, not resent
