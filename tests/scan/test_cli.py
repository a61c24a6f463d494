"""`ood-audit scan` refuses bad arguments with one line naming the flag, before any Ray or S3 work."""
import pytest

from ood_audit.cli import main


@pytest.mark.parametrize(("args", "expected"), [
    ([], "the following arguments are required: --bundle, --output"),
    (["--bundle", "B", "--output", "O"], "give --input PREFIX (repeatable) or --manifest URI"),
    (["--bundle", "B", "--output", "O", "--input", "s3://b/x", "--manifest", "m.csv"],
     "--input and --manifest are mutually exclusive"),
    (["--bundle", "B", "--output", "O", "--input", "s3://b/x", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["--bundle", "B", "--output", "O", "--input", "s3://b/x", "--workers", "-1"], "--workers must be >= 1"),
    (["--bundle", "B", "--output", "O", "--input", "s3://b/x", "--chunk-size", "0"], "--chunk-size must be >= 1"),
    (["--bundle", "B", "--output", "O", "--input", "s3://b/x", "--max-pixels", "0"], "--max-pixels must be >= 1"),
    (["--bundle", "B", "--output", "O", "--input", "s3://b/x", "--batch-size", "lots"],
     "argument --batch-size: invalid int value: 'lots'"),
    (["--bundle", "B", "--output", "O", "--input", "s3://b/x", "--run-id", "no spaces"], "--run-id 'no spaces'"),
    (["--bundle", "B", "--output", "O", "--input", "s3://b/x", "--device", "tpu"], "--device 'tpu'"),
    (["--bundle", "B", "--output", "O", "--input", "hdfs://b/x"], "--input 'hdfs://b/x'"),
    (["--bundle", "B", "--output", "s3://b/x/out", "--input", "s3://b/x"], "--output s3://b/x/out lies inside"),
    (["--bundle", "B", "--output", "O", "--input", "s3://b/x", "--input", "s3://b/x/y"],
     "--input s3://b/x/y lies inside --input s3://b/x"),
    (["--bundle", "s3://", "--output", "O", "--input", "s3://b/x"], "has no bucket"),
])
def test_bad_arguments_one_line_naming_the_flag(args, expected, capsys):
    usage_error = not args or "lots" in args  # argparse's own errors exit directly
    with pytest.raises(SystemExit) if usage_error else _no_raise():
        assert main(["scan", *args]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert len(err.strip().splitlines()) == 1, err


def test_missing_bundle_is_one_line(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    rc = main(["scan", "--bundle", str(tmp_path / "nope"), "--output", str(tmp_path / "out"), "--input",
               str(tmp_path / "in")])
    err = capsys.readouterr().err
    assert rc == 2 and "no bundle at" in err and len(err.strip().splitlines()) == 1


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_summary_lines_are_for_people():
    from ood_audit.commands.scan import summary_lines
    from ood_audit.store.records import RunSummary

    summary = RunSummary.model_validate({"run_id": "night1", "complete": True, "objects": 1250,
               "counts": {"ok": 1200, "decode_error": 30, "missing": 20, "too_large": 0, "unsupported": 0},
               "flagged": 60, "bundle": {"flag_on": ["featurenorm", "csd"]},
               "throughput": {"objects_per_s": 25.0}, "timings_s": {"scan_wall": 50.0},
               "duplicates": {"rows": 7, "within_run": 5, "earlier_runs": 2},
               "listing": {"skipped_done": 0}, "reports": "s3://b/out/reports/run_date=2026-12-01"})
    lines = summary_lines(summary, "s3://b/out/runs/night1/summary.json")
    assert lines[0] == "scan run night1: complete, 1,250 object(s) in 50 s (25.0 objects/s)"
    assert lines[1] == "  scored 1,200; not scored: decode_error 30, missing 20"
    assert lines[2] == "  flagged 60 (5.0% of scored), low featurenorm or csd"
    assert lines[3] == "  exact duplicates: 7 (5 of objects in this run, 2 of earlier runs' objects)"
    assert lines[-1] == "  summary: s3://b/out/runs/night1/summary.json"
    assert not any(line.lstrip().startswith("{") for line in lines)
    empty = summary_lines(RunSummary(run_id="r", complete=False, objects=0, counts={}), "x")
    assert empty[0] == "scan run r: INCOMPLETE, 0 object(s)" and empty[2] == "  flagged 0"
