"""SQS on moto's real server: batches of 10, dedupe across nights, FIFO ids, a failure partway and a resume."""
import json

import boto3
import pytest

from ood_audit.errors import ConfigError
from ood_audit.sinks.export import export
from ood_audit.sinks.items import ExportError, item_key
from ood_audit.sinks.export_ledger import ExportLedger
from ood_audit.sinks.select import Selection
from ood_audit.sinks.sqs import SqsSink

from tests.reports import row, write_run
from tests.sinks.conftest import new_queue_name
from tests.sinks.nights import write_nights

pytestmark = pytest.mark.timeout(180)


def _client(url):
    return boto3.client("sqs", endpoint_url=url, region_name="us-east-1")


def _queue(url, fifo=False):
    attrs = {"FifoQueue": "true"} if fifo else {}
    return _client(url).create_queue(QueueName=new_queue_name(fifo), Attributes=attrs)["QueueUrl"]


def _drain(url, queue_url):
    """Every message in the queue, each received once and deleted (FIFO groups release only then)."""
    c, out = _client(url), []
    while True:
        got = c.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=600,
                                MessageAttributeNames=["All"], AttributeNames=["All"]).get("Messages", [])
        if not got:
            return out
        out += got
        c.delete_message_batch(QueueUrl=queue_url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                                                            for i, m in enumerate(got)])


def test_sqs_dedupe_across_nights(tmp_path, sqs_env):
    out = str(tmp_path)
    want = write_nights(out)
    q = _queue(sqs_env.url)
    for night in ("night-1", "night-2", "night-3"):
        sink = SqsSink(q, endpoint=sqs_env.url, batch_size=7)
        summary = export(out, sink, Selection(), run_id=night)
        bodies = [json.loads(m["Body"]) for m in _drain(sqs_env.url, q)]
        assert sorted(b["uri"] for b in bodies) == sorted(want[night]), night
        assert summary.sent_now == len(want[night]) and sink.calls == sum(
            -(-len(want[night][i:i + 7]) // 10) for i in range(0, len(want[night]), 7))
    b = bodies[0]
    assert b["policy"] == "threshold" and b["label"] == "outlier" and b["key"] == item_key(b["uri"], b["etag"],
                                                                                           b["bundle_id"])
    assert export(out, SqsSink(q, endpoint=sqs_env.url), Selection(), run_id="night-3").sent_now == 0
    assert _drain(sqs_env.url, q) == []


def test_fifo_queue_gets_dedup_and_group_ids_from_a_queue_name(tmp_path, sqs_env, monkeypatch):
    out = str(tmp_path)
    write_run(out, "n1", [row(f"s3://d/{i}.png", pct=1.0, pred_class=i % 2) for i in range(23)])
    q = _queue(sqs_env.url, fifo=True)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", sqs_env.url)  # endpoint from the environment
    sink = SqsSink(q.rsplit("/", 1)[1])
    assert export(out, sink, Selection()).sent_now == 23 and sink.calls == 3  # 10 + 10 + 3
    msgs = _drain(sqs_env.url, q)
    assert len(msgs) == 23
    for m in msgs:
        body = json.loads(m["Body"])
        assert m["Attributes"]["MessageDeduplicationId"] == body["key"]
        assert m["Attributes"]["MessageGroupId"] == f"class-{body['pred_class']}"
        assert m["MessageAttributes"]["policy"]["StringValue"] == "threshold"


@pytest.mark.parametrize("fifo", [False, True])
def test_endpoint_down_partway_then_resume_sends_each_once(tmp_path, sqs_env, relay, fifo):
    out = str(tmp_path)
    write_run(out, "n1", [row(f"s3://d/{i:03d}.png", pct=i / 100, pred_class=i % 4) for i in range(95)])
    q = _queue(sqs_env.url, fifo=fifo)
    sink = SqsSink(q, endpoint=relay.url, batch_size=25, max_attempts=2)
    calls = []

    def cut_after_four(**_):
        calls.append(1)
        if len(calls) == 4:  # the 4th call's answer arrived; then the endpoint goes down
            relay.cut()

    sink.client.meta.events.register("after-call.sqs.SendMessageBatch", cut_after_four)
    with pytest.raises(ExportError) as err:
        export(out, sink, Selection())
    msg = str(err.value)
    assert "\n" not in msg and relay.url in msg and "re-run" in msg
    ledger = ExportLedger(out, "sqs", q, "outliers")
    assert len(ledger.load()) == 35  # the first batch (3 calls: 10+10+5) and 10 confirmed of the second
    relay.restore()
    summary = export(out, SqsSink(q, endpoint=relay.url, batch_size=25), Selection())
    assert (summary.already_sent, summary.sent_now) == (35, 60)
    keys = [json.loads(m["Body"])["key"] for m in _drain(sqs_env.url, q)]
    assert len(keys) == 95 and len(set(keys)) == 95
    assert set(keys) == ledger.load()


def test_unreachable_endpoint_and_unknown_queue_are_one_line(tmp_path, sqs_env):
    from tests.sinks.servers import free_port

    out = str(tmp_path)
    write_run(out, "n1", [row("s3://d/a.png", pct=1.0)])
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ExportError) as err:
        export(out, SqsSink("q1", endpoint=dead, max_attempts=1), Selection())
    assert dead in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="--queue 'nope'"):
        export(out, SqsSink("nope", endpoint=sqs_env.url), Selection())
    assert not (tmp_path / "exports").exists()  # nothing recorded
