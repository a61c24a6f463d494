"""The scan on GCS and Azure as on S3, against real emulators (fake-gcs-server, Azurite) and a local Ray: one row
per object exactly once, incremental nights, a run resumed after an attempt died half-way, and the storage
failures' exit statuses through the CLI."""
from __future__ import annotations

import json
import time

import pyarrow.compute as pc
import pytest

from ood_audit.cli import main
from ood_audit.errors import EXIT_NO_BUCKET
from ood_audit.io.fs import resolve
from ood_audit.io.listing import list_objects
from ood_audit.scan import ScanConfig, run_scan
from ood_audit.store.schema import open_reports

from tests.datagen import labelled_images

SMALL = {"chunk_size": 8, "slice_rows": 4, "batch_size": 8, "workers": 1, "read_threads": 4}


def _rows(output, config, run_id=None):
    table = open_reports(output, s3=config).to_table()
    return table.filter(pc.field("run_id") == run_id) if run_id else table


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_rows_equal_objects_incremental_and_resume(ray_local, bundle_uri, cloud):
    files = labelled_images(5, seed=4)
    for key, data in files.items():
        cloud.put(f"imgs/{key}", data)
    cloud.put("imgs/broken.jpg", b"\xff\xd8\xff not really")
    prefix, out = cloud.uri("imgs"), cloud.uri("audit")
    listed = list_objects(prefix, s3=cloud.config).column("uri").to_pylist()
    assert len(listed) == len(files) + 1

    def scan(run_id):
        return run_scan(ScanConfig(bundle=bundle_uri, output=out, inputs=(prefix,), run_id=run_id,
                                   incremental=True, s3=cloud.config, **SMALL)).summary

    first = scan("night1")
    assert first.objects == len(listed) and first.complete
    assert (first.chunks.total, first.chunks.committed) == (2, 2)
    rows = _rows(out, cloud.config, "night1")
    assert sorted(rows.column("uri").to_pylist()) == sorted(listed)  # every object once, nothing else
    status = dict(zip(rows.column("uri").to_pylist(), rows.column("status").to_pylist()))
    assert status.pop(cloud.uri("imgs/broken.jpg")) == "decode_error" and set(status.values()) == {"ok"}

    # As if the attempt had died after committing chunk 0 only: run again, only chunk 1 runs, and every
    # object still has exactly one committed row.
    fs, path = resolve(cloud.uri("audit/runs/night1/chunks/c000001.json"), cloud.config)
    fs.delete_file(path)
    resumed = scan("night1")
    assert resumed.attempts == 2 and resumed.complete
    assert [e.rows for e in resumed.executions] == [len(listed) - 8]
    again = _rows(out, cloud.config, "night1").column("uri").to_pylist()
    assert len(again) == len(set(again)) and sorted(again) == sorted(listed)

    # The next night scans only what is new or rewritten.
    time.sleep(1.1)  # Azure's modification times have whole seconds: the rewrite gets a new stamp
    new = labelled_images(6, seed=9)
    cloud.put("imgs/class0/new.png", new["class0/0000.png"])
    cloud.put("imgs/class1/0002.png", new["class1/0005.png"])  # same key, new content
    second = scan("night2")
    assert second.objects == 2 and second.listing.skipped_done == len(listed) - 1 and second.complete
    assert sorted(_rows(out, cloud.config, "night2").column("uri").to_pylist()) == sorted(
        [cloud.uri("imgs/class0/new.png"), cloud.uri("imgs/class1/0002.png")])


@pytest.mark.parametrize("scheme", ["gs", "az"])
def test_cli_missing_bucket_exit_7_in_one_line(scheme, request, bundle_uri, tmp_path, capsys, monkeypatch):
    from tests.fixtures.clouds import AZURITE_ACCOUNT, AZURITE_KEY

    emulator = request.getfixturevalue("fake_gcs" if scheme == "gs" else "azurite")
    if scheme == "gs":  # each cloud's own variables, as a user sets them
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
    else:
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", f"DefaultEndpointsProtocol=http;AccountName="
                           f"{AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={emulator.url}/{AZURITE_ACCOUNT};")
    rc = main(["scan", "--bundle", bundle_uri, "--input", f"{scheme}://no-such-bucket-here/imgs",
               "--output", str(tmp_path / "out"), "--workers", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == EXIT_NO_BUCKET, err
    assert any("no-such-bucket-here" in line and emulator.url in line for line in err), err
    assert not any("Traceback" in line for line in err)


def test_exports_and_report_on_the_cloud_send_each_row_once(cloud, tmp_path):
    """The triage side on GCS or Azure: the export's ledger and lease under the output root, its JSONL manifest
    files on the same store, the report written there; two nights send each row once."""
    from ood_audit.io.fs import read_bytes
    from ood_audit.report import write_report
    from ood_audit.sinks.export import export
    from ood_audit.sinks.export_ledger import export_ledgers
    from ood_audit.sinks.manifest import ManifestSink
    from ood_audit.sinks.select import Selection

    from tests.reports import row, write_run

    out, config = cloud.uri("audit"), cloud.config
    write_run(out, "night1", [row(cloud.uri(f"in/a{i}.png"), pct=1.0) for i in range(3)], s3=config)
    sink = ManifestSink(cloud.uri("manifests"), s3=config)
    first = export(out, sink, Selection(), s3=config, catch_up=True)
    write_run(out, "night2", [row(cloud.uri(f"in/b{i}.png"), pct=1.0) for i in range(2)], day=1, s3=config)
    second = export(out, sink, Selection(), s3=config, catch_up=True)
    again = export(out, sink, Selection(), s3=config, catch_up=True)
    assert (first.sent_now, second.sent_now, again.sent_now) == (3, 2, 0)
    (ledger,) = export_ledgers(out, s3=config)  # found through the store's folder listing
    assert ledger.kind == "jsonl" and len(ledger.files()) == 2
    lines = [line for uri in list_objects(cloud.uri("manifests"), s3=config).column("uri").to_pylist()
             for line in read_bytes(uri, s3=config).decode().splitlines()]
    assert sorted(json.loads(line)["uri"] for line in lines) == sorted(
        [cloud.uri(f"in/a{i}.png") for i in range(3)] + [cloud.uri(f"in/b{i}.png") for i in range(2)])
    report = cloud.uri("reports/night2.html")
    write_report(out, report, s3=config)
    assert b"night2" in read_bytes(report, s3=config)
