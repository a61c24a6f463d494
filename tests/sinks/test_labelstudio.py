"""Label Studio on a real server: project creation, imports read back through the API, both token forms,
dedupe across nights, and one-line failures that leave the ledger unchanged."""
import json
import os
import subprocess
import sys

import pytest
import requests

from ood_audit.errors import EXIT_LEASE_HELD, ConfigError
from ood_audit.sinks.export import export
from ood_audit.sinks.items import ExportError
from ood_audit.sinks.labelstudio import LabelStudioClient, LabelStudioSink, is_personal_access_token
from ood_audit.sinks.export_ledger import ExportLedger
from ood_audit.sinks.select import Selection

from tests.reports import row, write_run
from tests.sinks.nights import BUNDLE_1, BUNDLE_2, write_nights
from tests.sinks.servers import Relay, free_port

pytestmark = pytest.mark.timeout(600)


def _tasks(ls, project_id, token=None):
    """The project's tasks, oldest first."""
    return sorted(LabelStudioClient(ls.url, token or ls.token).tasks(project_id), key=lambda t: t["id"])


def test_create_import_and_read_back_with_legacy_token(tmp_path, label_studio):
    out = str(tmp_path / "audit")
    write_run(out, "n1", [row("s3://data/a.png", pct=0.5, pred_class=3),
                          row("s3://data/b.png", pct=2.0, pred_class=1, etag="eb"),
                          row("s3://data/c.png", pct=60.0, pred_class=1),
                          row("s3://data/d.png", status="decode_error")], bundle_id=BUNDLE_1)
    sink = LabelStudioSink(url=label_studio.url, token=label_studio.token, create_project="legacy-import",
                           tasks_file=str(tmp_path / "tasks-{run_id}.json"))
    summary = export(out, sink, Selection(policy="top-k", budget=3))
    assert summary.sent_now == 3 and summary.destination == f"{label_studio.url}/projects/{sink.project_id}"
    written = json.loads((tmp_path / "tasks-n1.json").read_text())
    tasks = {t["data"]["image"]: t for t in _tasks(label_studio, sink.project_id)}
    assert sorted(tasks) == ["s3://data/a.png", "s3://data/b.png", "s3://data/c.png"]
    assert sorted(t["data"]["image"] for t in written) == sorted(tasks)
    a, c = tasks["s3://data/a.png"], tasks["s3://data/c.png"]
    (pa,), (pc,) = a["predictions"], c["predictions"]
    assert pa["model_version"] == BUNDLE_1 and pa["score"] == pytest.approx(0.995)
    assert pc["score"] == pytest.approx(0.4)
    assert pa["result"][0]["value"]["choices"] == ["outlier"]          # flagged
    assert pc["result"][0]["value"]["choices"] == ["in-distribution"]  # top-k but not flagged
    assert a["data"]["pred_class"] == 3 and a["data"]["policy"] == "top-k" and a["data"]["etag"] == "e1"
    # the project was created with a label config that makes the pre-filled result valid
    project = requests.get(f"{label_studio.url}/api/projects/{sink.project_id}",
                           headers={"Authorization": f"Token {label_studio.token}"}).json()
    assert 'value="$image"' in project["label_config"] and "in-distribution" in project["label_config"]
    # the same title finds the same project; nothing new goes out
    again = LabelStudioSink(url=label_studio.url, token=label_studio.token, create_project="legacy-import")
    assert export(out, again, Selection(policy="top-k", budget=3)).sent_now == 0
    assert again.project_id == sink.project_id and len(_tasks(label_studio, sink.project_id)) == 3


def test_personal_access_token_is_exchanged_for_a_bearer_token(tmp_path, label_studio):
    pat = label_studio.personal_access_token()
    assert is_personal_access_token(pat) and not is_personal_access_token(label_studio.token)
    out = str(tmp_path / "audit")
    write_run(out, "n1", [row(f"s3://data/p{i}.png", pct=1.0) for i in range(7)])
    sink = LabelStudioSink(url=label_studio.url, token=pat, create_project="pat-import", batch_size=3)
    summary = export(out, sink, Selection())
    assert (summary.sent_now, summary.batches) == (7, 3)
    assert sink.client.pat and sink.client._access  # a Bearer access token was obtained
    tasks = _tasks(label_studio, sink.project_id, token=pat)
    assert sorted(t["data"]["image"] for t in tasks) == [f"s3://data/p{i}.png" for i in range(7)]


def test_dedupe_across_nights(tmp_path, label_studio):
    out = str(tmp_path / "audit")
    want = write_nights(out, n=6)
    seen = 0
    for night in ("night-1", "night-2", "night-3"):
        sink = LabelStudioSink(url=label_studio.url, token=label_studio.token, create_project="nights",
                               batch_size=4)
        assert export(out, sink, Selection(), run_id=night).sent_now == len(want[night])
        tasks = _tasks(label_studio, sink.project_id)[seen:]
        seen += len(tasks)
        assert sorted(t["data"]["image"] for t in tasks) == sorted(want[night]), night
    assert {t["predictions"][0]["model_version"] for t in tasks} == {BUNDLE_2}
    # a tasks file alone is its own destination, with its own ledger
    file_sink = LabelStudioSink(tasks_file=str(tmp_path / "t-{run_id}.json"))
    assert export(out, file_sink, Selection(), run_id="night-1").sent_now == len(want["night-1"])
    assert export(out, LabelStudioSink(tasks_file=str(tmp_path / "t-{run_id}.json")), Selection(),
                  run_id="night-1").sent_now == 0
    assert json.loads((tmp_path / "t-night-1.json").read_text()) == []


@pytest.mark.parametrize("case", ["legacy", "pat", "unreachable", "no-project"])
def test_failures_are_one_line_and_leave_the_ledger_unchanged(tmp_path, label_studio, case):
    out = str(tmp_path / "audit")
    write_run(out, "n1", [row("s3://data/a.png", pct=1.0)])
    url = f"http://127.0.0.1:{free_port()}" if case == "unreachable" else label_studio.url
    token = {"legacy": "not-the-token", "pat": _fake_pat()}.get(case, label_studio.token)
    kw = {"project_id": 99999} if case == "no-project" else {"create_project": "never"}
    with pytest.raises((ExportError, ConfigError)) as err:
        export(out, LabelStudioSink(url=url, token=token, **kw), Selection())
    msg = str(err.value)
    assert "\n" not in msg and url in msg
    assert {"legacy": "rejected the legacy token", "pat": "rejected the personal access token",
            "unreachable": "cannot reach Label Studio", "no-project": "--project-id 99999"}[case] in msg
    assert not (tmp_path / "audit" / "exports").exists()


def test_a_refused_import_is_not_recorded(tmp_path, label_studio):
    """A project whose config has no ``$image`` refuses the tasks: the error says so, nothing is recorded."""
    r = requests.post(f"{label_studio.url}/api/projects", headers={"Authorization": f"Token {label_studio.token}"},
                      json={"title": "text-only", "label_config": '<View><Text name="t" value="$text"/></View>'})
    out = str(tmp_path / "audit")
    write_run(out, "n1", [row("s3://data/a.png", pct=1.0)])
    sink = LabelStudioSink(url=label_studio.url, token=label_studio.token, project_id=r.json()["id"])
    with pytest.raises(ExportError) as err:
        export(out, sink, Selection())
    assert "\n" not in str(err.value) and "HTTP 400" in str(err.value)
    assert ExportLedger(out, "label-studio", sink.destination, "outliers").load() == set()


def _fake_pat():
    import base64

    claims = base64.urlsafe_b64encode(json.dumps({"token_type": "refresh", "user_id": 1}).encode()).decode()
    return f"eyJhbGciOiJIUzI1NiJ9.{claims.rstrip('=')}.c2lnbmF0dXJl"


def test_an_import_answer_lost_in_transit_is_reconciled_without_duplicates(tmp_path, label_studio):
    """The first import reaches the project but its answer is dropped by a relay: the export fails, and the
    next one asks the project which of that batch's keys it has, records them and sends only the rest."""
    out = str(tmp_path / "audit")
    uris = [f"s3://data/lost/{i}.png" for i in range(5)]
    write_run(out, "n1", [row(u, pct=1.0 + i / 2) for i, u in enumerate(uris)], bundle_id=BUNDLE_1)  # all flagged
    relay = Relay(label_studio.port)
    try:
        title = f"lost-answer-{tmp_path.name}"
        relay.drop_next_answer(b"/import?")
        sink = LabelStudioSink(url=relay.url, token=label_studio.token, create_project=title, batch_size=2)
        with pytest.raises(ExportError):
            export(out, sink, Selection(), run_id="n1")
        assert relay.dropped.is_set()
        applied = _tasks(label_studio, sink.project_id)
        assert len(applied) == 2  # the first batch is in the project, though its sender never heard so
        ledger = ExportLedger(out, "label-studio", sink.destination, "outliers")
        assert ledger.load() == set() and len(ledger.in_flight()) == 1
        again = LabelStudioSink(url=relay.url, token=label_studio.token, create_project=title, batch_size=2)
        summary = export(out, again, Selection(), run_id="n1")
        assert summary.already_sent == 2 and summary.sent_now == 3 and ledger.in_flight() == []
        tasks = _tasks(label_studio, sink.project_id)
        assert sorted(t["data"]["image"] for t in tasks) == uris  # each once: no duplicate task
    finally:
        relay.cut()


def test_two_concurrent_exports_one_exits_75_and_each_key_is_sent_once(tmp_path, label_studio):
    """Export A is held inside its first import (by the relay) while holding the destination's lease; export B,
    started then, exits 75 having sent nothing; released, A sends everything once."""
    out = str(tmp_path / "audit")
    uris = [f"s3://data/two/{i}.png" for i in range(4)]
    write_run(out, "n1", [row(u, pct=1.0) for u in uris], bundle_id=BUNDLE_1)
    project = LabelStudioClient(label_studio.url, label_studio.token).create_project(f"two-{tmp_path.name}")
    relay = Relay(label_studio.port)
    env = {**os.environ, "LABEL_STUDIO_API_KEY": label_studio.token}
    cmd = [sys.executable, "-c", "import sys; from ood_audit.cli import main; sys.exit(main())", "export",
           "--report", out, "--to", "label-studio", "--label-studio-url", relay.url, "--project-id", str(project),
           "--batch-size", "2"]
    try:
        release = relay.hold_next(b"/import?")
        a = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert relay.holding.wait(120), a.communicate()  # A is mid-send, under the lease
        b = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert b.returncode == EXIT_LEASE_HELD, b.stderr
        assert len(b.stderr.strip().splitlines()) == 1 and "lease" in b.stderr
        release.set()
        stdout, stderr = a.communicate(timeout=120)
        assert a.returncode == 0, stderr
    finally:
        relay.cut()
    tasks = _tasks(label_studio, project)
    assert sorted(t["data"]["image"] for t in tasks) == uris


def test_an_empty_project_has_no_tasks_and_an_unknown_one_is_refused(label_studio):
    """Label Studio answers 404 for the first page of a project without tasks: that is an empty list (the
    in-flight reconciliation asks an empty project after a night whose import never arrived), while a project
    that does not exist is still refused in one line."""
    client = LabelStudioClient(label_studio.url, label_studio.token)
    project = client.create_project("empty-project-tasks")
    assert client.tasks(project) == []
    with pytest.raises(ConfigError, match=f"--project-id {project + 10_000}: no such project"):
        client.tasks(project + 10_000)
