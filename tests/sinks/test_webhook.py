"""The signed webhook sink against a real HTTP receiver (:mod:`tests.sinks.webhook_receiver`): signatures, one
idempotency key per batch across retries, 4xx as one line with nothing retried, an unreachable endpoint, and
the flags and config fields that name what is wrong. Two real nights end to end: ``tests/sinks/test_real_scan``."""
from __future__ import annotations

import socket

import pytest

from ood_audit.cli import main
from ood_audit.errors import ConfigError, ExportError
from ood_audit.nightly.config import parse_config
from ood_audit.sinks.items import ExportItem, item_key, manifest_line
from ood_audit.sinks.webhook import SECRET_ENV, WebhookSink, batch_id

from tests.sinks.webhook_receiver import WebhookReceiver

SECRET = "s3cr3t-webhook-value"


def _items(n: int, run_id: str = "r1") -> list[ExportItem]:
    return [ExportItem(key=item_key(f"s3://b/k{i}.png", f"e{i}", "bundle"), uri=f"s3://b/k{i}.png", etag=f"e{i}",
                       run_id=run_id, bundle_id="bundle", policy="threshold", anomaly=0.5 + i / 100, flagged=True,
                       flag_reasons=("csd",), flagged_by=None, pred_class=None, csd_view=i % 6,
                       scores={"csd": -1.0 - i}, percentiles={"csd": 0.5})
            for i in range(n)]


@pytest.fixture
def receiver():
    started: list[WebhookReceiver] = []

    def make(**kw) -> WebhookReceiver:
        started.append(WebhookReceiver(SECRET.encode(), **kw).start())
        return started[-1]

    yield make
    for r in started:
        r.stop()


def _sink(url: str, **kw) -> WebhookSink:
    sink = WebhookSink(url, environ={SECRET_ENV: SECRET}, backoff_s=0.01, **kw)
    sink.open()
    sink.begin("r1", [])
    return sink


def test_a_batch_is_signed_and_retried_under_one_key_until_taken(receiver):
    r = receiver(fail_first=2)
    items = _items(5)
    sink = _sink(r.url)
    sink.send(items)
    sink.close()
    assert r.requests == 3 and r.refused == [503, 503]  # two 5xx answers retried, the third taken
    assert r.keys_by_request == [batch_id(items)] * 3     # one idempotency key for every attempt
    assert dict(r.taken) == {i.key: 1 for i in items}
    (body,) = r.bodies
    assert body["items"] == [manifest_line(i) for i in items] and body["run_id"] == "r1"
    assert sink.destination == r.url.split("?")[0]        # the ledger's destination: no query


def test_an_answer_lost_to_a_timeout_is_sent_again_with_the_same_key_and_taken_once(receiver):
    r = receiver(slow_first=1, delay_s=2.0)
    items = _items(3)
    sink = _sink(r.url, timeout_s=0.5)
    sink.send(items)
    assert r.keys_by_request == [batch_id(items)] * 2 and r.refused == []
    assert dict(r.taken) == {i.key: 1 for i in items}


def test_a_refused_signature_is_one_line_and_not_retried(receiver):
    r = WebhookReceiver(b"another-secret").start()
    try:
        with pytest.raises(ExportError) as exc:
            _sink(r.url).send(_items(2))
        assert r.requests == 1 and r.refused == [401]
        msg = str(exc.value)
        assert "refused the batch: HTTP 401 bad signature" in msg and "\n" not in msg
        assert "not-for-logs" not in msg and SECRET not in msg
    finally:
        r.stop()


def test_an_endpoint_still_failing_after_the_attempts_is_one_line(receiver):
    r = receiver(fail_first=10)
    with pytest.raises(ExportError, match=r"still failing after 3 attempt\(s\): HTTP 503"):
        _sink(r.url, attempts=3).send(_items(1))
    assert r.requests == 3 and not r.taken


def test_an_unreachable_endpoint_is_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    with pytest.raises(ExportError, match=r"no answer after 2 attempt\(s\) \(connection refused\)"):
        _sink(f"http://127.0.0.1:{port}/hook", attempts=2).send(_items(1))


def test_bad_settings_name_what_is_wrong(monkeypatch, capsys):
    with pytest.raises(ConfigError, match=r"\$NO_SUCH_SECRET is not set"):
        WebhookSink("https://example.invalid/h", secret_env="NO_SUCH_SECRET", environ={})
    with pytest.raises(ConfigError, match="--webhook-url 'ftp://h/x': give an http"):
        WebhookSink("ftp://h/x", environ={SECRET_ENV: SECRET})
    with pytest.raises(ConfigError, match="--webhook-secret-env 'HOOK_KEY': name an environment variable ending"):
        WebhookSink("https://h/x", secret_env="HOOK_KEY", environ={"HOOK_KEY": SECRET})
    monkeypatch.delenv(SECRET_ENV, raising=False)
    for argv, expected in ((["--to", "webhook"], "--to webhook needs --webhook-url"),
                           (["--to", "sqs", "--queue", "q", "--webhook-url", "http://h/"],
                            "--webhook-url does not apply to --to sqs"),
                           (["--to", "webhook", "--webhook-url", "http://h/"], f"${SECRET_ENV} is not set")):
        assert main(["export", "--report", "/nonexistent-report", *argv]) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, err


def test_nightly_config_takes_a_webhook_and_names_a_bad_field():
    base = {"bundle": "s3://b/bundle", "inputs": ["s3://b/in"], "output": "s3://b/out"}
    cfg = parse_config({**base, "exports": [{"sink": "webhook", "url": "https://hooks.example/ood",
                                             "secret_env": "TEAM_HOOK_SECRET"}]})
    (e,) = cfg.exports
    assert e.url == "https://hooks.example/ood" and e.secret_env == "TEAM_HOOK_SECRET"
    with pytest.raises(ConfigError, match=r"exports\[0\]\.url: must be an http:// or https:// URL"):
        parse_config({**base, "exports": [{"sink": "webhook", "url": "hooks.example/ood"}]})
    with pytest.raises(ConfigError, match=r"exports\[0\]\.secret_env: must name a secret variable"):
        parse_config({**base, "exports": [{"sink": "webhook", "url": "https://h/", "secret_env": "AWS_SECRET"}]})


def test_two_nights_through_a_failing_receiver_deliver_each_key_once(receiver, tmp_path, monkeypatch):
    """``export --catch-up`` of two nights, batches of 4, to a receiver whose first two answers are 503: every
    flagged row arrives once, night 2 sends only what night 1 did not, and a re-run sends nothing."""
    from tests.reports import row, write_run

    monkeypatch.setenv(SECRET_ENV, SECRET)
    r = receiver(fail_first=2)
    out = str(tmp_path / "audit")
    night1 = [row(f"s3://data/a{i}.png", pct=1.0) for i in range(10)] + [row("s3://data/ok.png", pct=60.0)]
    night2 = night1[:5] + [row(f"s3://data/b{i}.png", pct=1.0) for i in range(3)]
    argv = ["export", "--report", out, "--to", "webhook", "--webhook-url", r.url, "--batch-size", "4", "--catch-up"]
    write_run(out, "night-1", night1, day=0)
    assert main([*argv, "--run-id", "night-1"]) == 0
    write_run(out, "night-2", night2, day=1)
    assert main([*argv, "--run-id", "night-2"]) == 0
    assert main([*argv, "--run-id", "night-2"]) == 0  # everything is in the ledger: nothing goes out
    assert sorted(r.uris["night-1"]) == sorted(x["uri"] for x in night1[:10])  # the unflagged row stays
    assert sorted(r.uris["night-2"]) == [f"s3://data/b{i}.png" for i in range(3)]
    assert set(r.taken.values()) == {1} and len(r.taken) == 13
    assert r.refused == [503, 503] and r.requests == 2 + 3 + 1  # night 1: 3 batches of <= 4, night 2: 1


def test_the_nightly_export_signs_with_the_secret_its_config_names(receiver, tmp_path):
    """The nightly's export stage (``nightly.run._export``, the stage the nightly runs after its scan) with a
    ``sink: webhook`` entry: the secret is read from the variable ``secret_env`` names, in the run's environment."""
    from ood_audit.nightly.run import NightlyResult, _export

    from tests.reports import row, write_run

    r = receiver()
    out = str(tmp_path / "audit")
    write_run(out, "n1", [row(f"s3://data/n{i}.png", pct=1.0) for i in range(3)])
    cfg = parse_config({"bundle": "s3://b/bundle", "inputs": ["s3://b/in"], "output": out,
                        "exports": [{"sink": "webhook", "url": r.url, "secret_env": "TEAM_HOOK_SECRET"}]})
    res = NightlyResult("n1")
    _export(cfg, cfg.exports[0], "n1", None, res, {"TEAM_HOOK_SECRET": SECRET})
    assert sorted(r.uris["n1"]) == [f"s3://data/n{i}.png" for i in range(3)] and r.refused == []
    (summary,) = res.exports
    assert summary["sink"] == "webhook" and summary["sent_now"] == 3 and "not-for-logs" not in summary["destination"]
