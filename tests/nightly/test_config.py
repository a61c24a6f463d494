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
    (("output: s3://my-audit/audit", "output: hdfs://my-audit/audit"), "output: unsupported URI scheme 'hdfs'"),
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


@pytest.mark.parametrize("edit, message", [
    (("tasks_file: 's3://my-audit/exports/tasks-{run_id}.json'}",
      "url: 'http://ls.example', project_id: 1, token_env: AWS_SECRET_ACCESS_KEY}"),
     "exports[0].token_env: must name a token variable"),
    (("tasks_file: 's3://my-audit/exports/tasks-{run_id}.json'}", "url: 'http://ls.example', project_id: 1, token_env: HOME}"),
     "exports[0].token_env: must name a token variable"),
    (("{ttl_s: 600}", "{ttl_s: 1e20}"), "lease.ttl_s: "),
    (("{ttl_s: 600}", "{ttl_s: 604801}"), "lease.ttl_s: Input should be less than or equal to 604800"),
    (("{ttl_s: 600}", "{ttl_s: 100}"), "lease.ttl_s (100 s) must be larger than s3.retry_s (120 s)"),
    (("output: s3://my-audit/audit", "output: s3://my-audit/audit\ns3: {retry_s: 900}"),
     "lease.ttl_s (600 s) must be larger than s3.retry_s (900 s)"),
    (("scan: {batch_size: 32}", "scan: {batch_size: 32, read_threads: 100000}"),
     "scan.read_threads: Input should be less"),
    (("budget: 500", "budget: 100000000"), "exports[1].budget: Input should be less than or equal to"),
    (("report: {out: s3://my-audit/reports/latest.html}", "report: {out: s3://my-audit/r.html, top: 10000000}"),
     "report.top: Input should be less than or equal to"),
    (("{ttl_s: 600}", "{ttl_s: " + "9" * 5000 + "}"), "lease.ttl_s: "),
    (("budget: 500", "budget: " + "9" * 5000), "exports[1].budget: "),
])
def test_bounds_and_token_variable_one_line_naming_the_field(tmp_path, edit, message):
    """Upper bounds on every number, ``token_env`` never an AWS variable: one line naming the field, even for
    a number with more digits than Python parses (which would otherwise escape as a bare ValueError)."""
    p = tmp_path / "nightly.yaml"
    assert edit[0] in GOOD
    p.write_text(GOOD.replace(*edit))
    with pytest.raises(ConfigError) as err:
        load_config(p)
    text = str(err.value)
    assert message in text and "\n" not in text and str(p) in text and len(text) < 400


def test_allowed_token_variables(tmp_path):
    p = tmp_path / "nightly.yaml"
    for name in ("LABEL_STUDIO_API_KEY", "LS_TOKEN"):
        p.write_text(GOOD.replace("tasks_file: 's3://my-audit/exports/tasks-{run_id}.json'}",
                                  f"url: 'http://ls.example', project_id: 1, token_env: {name}}}"))
        assert load_config(p).exports[0].token_env == name


def test_a_tasks_file_without_run_id_is_refused_at_load(tmp_path):
    """Every night would overwrite the last one's file (even with [] once its tasks are recorded)."""
    p = tmp_path / "n.yaml"
    p.write_text("bundle: s3://b/bundles/x\ninputs: [s3://b/in]\noutput: s3://b/audit\n"
                 "exports:\n  - {sink: label-studio, tasks_file: /tmp/tasks.json}\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(p))
    msg = str(err.value)
    assert "\n" not in msg and "tasks_file" in msg and "{run_id}" in msg, msg
