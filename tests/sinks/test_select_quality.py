"""Export selection by SPEC §14 data-quality issues (``--quality``, ``--exclude-quality``), combined with every
policy and the budget, on a constructed run whose rows carry known ``quality_issues``."""
import json

import pyarrow.parquet as pq
import pytest

from ood_audit.cli import main
from ood_audit.errors import ConfigError, ReportError
from ood_audit.io.quality import ISSUES
from ood_audit.nightly.config import parse_config
from ood_audit.store.runs import find_run, run_dataset
from ood_audit.sinks.select import Selection, issue_names, select_rows

from tests.reports import row, write_run

# row i: pct 5*i (so anomaly falls with i), class i % 3, flagged below 25 (rows 0-4)
ISSUES_OF = {0: ["dark", "blurry"], 1: [], 2: ["blurry"], 3: ["tiny"], 4: ["grayscale", "tiny"], 5: ["dark"],
             6: [], 7: ["low_information"], 8: ["blurry", "odd_aspect_ratio"], 9: None, 10: ["light"], 11: []}


def _rows():
    rows = [row(f"/d/{i}.png", pct=5.0 * i, pred_class=i % 3, flagged=i < 5, quality_issues=q)
            for i, q in ISSUES_OF.items()]
    rows[1]["flag_reasons"] = ["csd"]                    # disagreement
    rows[2]["flag_reasons"] = ["featurenorm", "csd"]     # both detectors: not a disagreement
    rows[6].update(flag_reasons=["featurenorm"])         # below FeatureNorm's own threshold, not flagged
    # never candidates, whatever their findings: nothing was judged
    rows.append(row("/d/broken.png", status="decode_error"))
    rows.append(row("/d/missing.png", status="missing", quality_issues=["dark"]))
    return rows


@pytest.fixture
def run(tmp_path):
    write_run(str(tmp_path), "n1", _rows(), rows_per_file=5)
    return str(tmp_path)


def _select(out, **kw):
    r = find_run(out)
    got = select_rows(run_dataset(r), r.flag_on, Selection(**kw)).column("uri").to_pylist()
    return [int(u.rsplit("/", 1)[1].split(".")[0]) for u in got]


@pytest.mark.parametrize("kw, want", [
    ({}, [0, 1, 2, 3, 4]),
    ({"quality": "blurry,dark"}, [0, 2]),                        # any of them
    ({"quality": ("dark", "blurry")}, [0, 2]),                   # a sequence, in any order
    ({"quality": "any"}, [0, 2, 3, 4]),
    ({"exclude_quality": "tiny"}, [0, 1, 2]),
    ({"exclude_quality": "any"}, [1]),
    ({"quality": "blurry", "exclude_quality": "dark"}, [2]),
    ({"quality": "light"}, []),                                  # row 10 has it but is not flagged
    ({"quality": "tiny", "budget": 1}, [3]),                     # the budget counts rows that pass only
])
def test_threshold_policy_with_quality(run, kw, want):
    assert _select(run, **kw) == want


@pytest.mark.parametrize("kw, want", [
    ({"quality": "blurry", "budget": 3}, [0, 2, 8]),
    ({"quality": "blurry", "budget": 2}, [0, 2]),
    ({"quality": "dark", "budget": 10}, [0, 5]),                 # the missing row's "dark" never counts
    ({"exclude_quality": "any", "budget": 3}, [1, 6, 9]),        # 9: null findings are not excluded
    ({"exclude_quality": "any", "budget": 10}, [1, 6, 9, 11]),
    ({"quality": "any", "exclude_quality": "blurry,tiny", "budget": 10}, [5, 7, 10]),
    # issue rows by class: c0 {0, 3}, c1 {4, 7, 10}, c2 {2, 5, 8}; budget 2 -> one each to c1 and c2 (most
    # candidates, then class id), each class's best row
    ({"quality": "any", "budget": 2, "per_class": True}, [2, 4]),
])
def test_top_k_with_quality(run, kw, want):
    assert _select(run, policy="top-k", **kw) == want


def test_disagreement_with_quality(run):
    assert _select(run, policy="disagreement") == [0, 1, 3, 4, 6]
    assert _select(run, policy="disagreement", quality="tiny") == [3, 4]
    assert _select(run, policy="disagreement", exclude_quality="any") == [1, 6]
    assert _select(run, policy="disagreement", quality="grayscale,dark", budget=1) == [0]


def test_null_findings_never_match_quality(run):
    assert 9 not in _select(run, policy="top-k", budget=100, quality="any")
    assert 9 in _select(run, policy="top-k", budget=100, exclude_quality="dark")


def test_names_are_normalised_in_spec_order():
    assert issue_names("tiny, blurry,dark") == ("dark", "blurry", "tiny")
    assert issue_names(["blurry", "any"]) == ("any",)
    assert Selection(quality="tiny,dark").quality == ("dark", "tiny")
    assert Selection().quality == () and Selection().exclude_quality == ()


@pytest.mark.parametrize("kw, needle", [
    ({"quality": "blurr"}, "--quality: 'blurr' is not a quality issue"),
    ({"exclude_quality": "dark,Tiny"}, "--exclude-quality: 'Tiny' is not a quality issue"),
    ({"quality": ","}, "--quality: no quality issue named"),
    ({"quality": "dark", "exclude_quality": "tiny,dark"}, "leaves no row to select"),
    ({"quality": "dark", "exclude_quality": "any"}, "leaves no row to select"),
])
def test_bad_names_are_one_line_naming_the_value(kw, needle):
    with pytest.raises(ConfigError) as err:
        Selection(**kw)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg
    if "not a quality issue" in needle:
        assert all(i in msg for i in ISSUES)  # says what is allowed


def test_a_run_without_the_column_is_refused_only_when_filtering(tmp_path):
    """Format 2 reports have no quality_issues: a quality filter must not read that as 'no issues'."""
    out = str(tmp_path)
    write_run(out, "old", [row(f"/d/{i}.png", pct=float(i)) for i in range(8)])
    for f in (tmp_path / "reports").rglob("*.parquet"):
        t = pq.read_table(f)
        t = t.drop_columns(["content_sha256", "quality_issues", "near_duplicate_of_id"])
        pq.write_table(t.replace_schema_metadata({"ood_audit.report_format": "2"}), f)
    assert _select(out) == [0, 1, 2, 3, 4]
    r = find_run(out)
    with pytest.raises(ReportError, match="run old was written before the quality_issues column"):
        select_rows(run_dataset(r), r.flag_on, Selection(exclude_quality="tiny"), where="run old")


def test_cli_exports_only_the_filtered_rows(run, tmp_path, capsys):
    args = ["export", "--report", run, "--to", "jsonl", "--manifest-prefix", str(tmp_path / "m"), "--json"]
    assert main([*args, "--exclude-quality", "tiny"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["selected"] == doc["sent_now"] == 3 and doc["exclude_quality"] == ["tiny"] and doc["quality"] == []
    lines = [json.loads(x) for f in doc["files"] for x in open(f)]
    assert sorted(x["source-ref"] for x in lines) == ["/d/0.png", "/d/1.png", "/d/2.png"]
    # the same destination later with --quality tiny: the tiny rows are new to it, nothing is sent twice
    assert main([a for a in args if a != "--json"] + ["--quality", "tiny"]) == 0
    text = capsys.readouterr().out
    assert "policy threshold, with quality issue tiny -> queue outliers" in text
    assert "selected 2, already sent 0, sent now 2" in text


@pytest.mark.parametrize("flags, needle", [
    (["--quality", "blurr"], "--quality: 'blurr' is not a quality issue"),
    (["--exclude-quality", "any,nope"], "--exclude-quality: 'nope' is not a quality issue"),
    (["--quality", "tiny", "--exclude-quality", "tiny"], "leaves no row to select"),
])
def test_cli_bad_names_are_one_line(run, tmp_path, capsys, flags, needle):
    rc = main(["export", "--report", run, "--to", "jsonl", "--manifest-prefix", str(tmp_path / "m"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0] and err[0].startswith("ood-audit: error: ")
    assert not (tmp_path / "m").exists()


BASE = {"bundle": "/b", "inputs": ["/i"], "output": "/o"}


def _export_cfg(**kw):
    return parse_config({**BASE, "exports": [{"sink": "jsonl", "prefix": "/m", **kw}]}, "nightly.yaml")


def test_nightly_config_takes_the_same_filters():
    e = _export_cfg(policy="top-k", budget=5, quality=["tiny", "dark"], exclude_quality="blurry").exports[0]
    assert e.quality == ["dark", "tiny"] and e.exclude_quality == ["blurry"]
    assert _export_cfg().exports[0].quality == []
    for kw, needle in [({"quality": ["blurr"]}, "exports[0].quality: 'blurr' is not a quality issue"),
                       ({"exclude_quality": 3}, "exports[0].exclude_quality: expected a list of quality issue"),
                       ({"quality": "any", "exclude_quality": ["any"]}, "leave no row to select")]:
        with pytest.raises(ConfigError) as err:
            _export_cfg(**kw)
        assert needle in str(err.value) and "\n" not in str(err.value)


def test_nightly_export_applies_the_filters(run, tmp_path):
    from ood_audit.io.fs import S3Config
    from ood_audit.nightly.run import NightlyResult, _export

    cfg = parse_config({**BASE, "output": run, "exports": [
        {"sink": "jsonl", "prefix": str(tmp_path / "m"), "policy": "top-k", "budget": 10, "quality": ["blurry"]}]})
    res = NightlyResult("n1")
    _export(cfg, cfg.exports[0], "n1", S3Config.from_env(None), res, {})
    (doc,) = res.exports
    assert doc["quality"] == ["blurry"] and doc["selected"] == 3
    lines = [json.loads(x) for f in doc["files"] for x in open(f)]
    assert [x["source-ref"] for x in lines] == ["/d/0.png", "/d/2.png", "/d/8.png"]


def test_help_copy_of_the_issue_names():
    from ood_audit.commands import common
    from ood_audit.sinks.select import ANY_ISSUE

    assert common.QUALITY_ISSUES == ISSUES and common.ANY_QUALITY_ISSUE == ANY_ISSUE
