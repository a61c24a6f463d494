"""The nightly YAML schema: a good file parses; every wrong field gets one line naming it."""
import pytest

from ood_audit.errors import ConfigError
from ood_audit.nightly.config import load_config

GOOD = """
bundle: s3://my-audit/bundles/0123
inputs: [s3://my-datasets/incoming/]
output: s3://my-audit/audit
scan: {batch_size: 32}
exports:
  - {sink: label-studio, tasks_file: 's3://my-audit/exports/tasks-{run_id}.json'}
  - {sink: jsonl, policy: top-k, budget: 500, prefix: s3://my-audit/exports/manifests/}
  - {sink: sqs, policy: disagreement, queue: "https://sqs.us-east-1.amazonaws.com/1/q.fifo"}
report: {out: s3://my-audit/reports/latest.html}
lease: {ttl_s: 600}
"""


def test_good_config(tmp_path):
    p = tmp_path / "nightly.yaml"
    p.write_text(GOOD)
    cfg = load_config(p)
    assert cfg.scan.batch_size == 32 and cfg.scan.chunk_size == 10_000 and cfg.incremental
    assert [e.sink for e in cfg.exports] == ["label-studio", "jsonl", "sqs"]
    assert cfg.exports[1].budget == 500 and cfg.report.top == 48 and cfg.lease.ttl_s == 600


@pytest.mark.parametrize("edit, message", [
    (("scan: {batch_size: 32}", "scan: {batch_sise: 32}"), "scan.batch_sise: unknown field"),
    (("scan: {batch_size: 32}", "scan: {batch_size: lots}"), "scan.batch_size: Input should be a valid integer"),
    (("budget: 500", "budget: -1"), "exports[1].budget: Input should be greater than 0 (got -1)"),
    (("policy: top-k, budget: 500, ", "policy: top-k, "), "exports[1]: policy top-k needs a budget"),
    (("sink: sqs,", "sink: kafka,"), "exports[2].sink: expected one of"),
    (("queue: ", "queue_url: "), "exports[2].queue: required field missing"),
    (("output: s3://my-audit/audit", "output: gs://my-audit/audit"), "output: unsupported URI scheme 'gs'"),
    (("inputs: [s3://my-datasets/incoming/]", "inputs: []"), "inputs: List should have at least 1 item"),
    (("bundle: s3://my-audit/bundles/0123\n", ""), "bundle: required field missing"),
    (("{ttl_s: 600}", "{ttl_s: 600"), "not valid YAML at line"),
])
def test_bad_fields_named_in_one_line(tmp_path, edit, message):
    p = tmp_path / "nightly.yaml"
    assert edit[0] in GOOD
    p.write_text(GOOD.replace(*edit))
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(p) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")
