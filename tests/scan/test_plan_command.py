"""`ood-audit plan` on the embedded S3 and the session's Ray: the inventory it lists, the sample it scans for
real, and estimates that follow from its own measurement (the arithmetic is tested in test_sizing)."""
from __future__ import annotations

import json

import pytest

from ood_audit.cli import main
from ood_audit.scan import ScanConfig, run_scan
from ood_audit.scan.sizing import NightPlan, estimate
from ood_audit.store.schema import open_reports

from tests.datagen import labelled_images, upload


@pytest.mark.timeout(300)
def test_plan_lists_samples_and_estimates(ray_local, bundle_uri, s3_client, s3_bucket, s3_config, s3_env, tmp_path,
                                          capsys):
    pngs = labelled_images(8, seed=11)            # 16 PNGs under in/a
    jpgs = {k.replace(".png", ".jpg"): v for k, v in labelled_images(3, seed=12).items()}  # 6 under in/b
    a = upload(s3_client, s3_bucket, "in/a", pngs)
    b = upload(s3_client, s3_bucket, "in/b", jpgs)
    output = f"s3://{s3_bucket}/audit"
    # last night scanned in/b: an --incremental scan would skip those 6
    run_scan(ScanConfig(bundle=bundle_uri, output=output, inputs=(b,), run_id="last-night", s3=s3_config,
                        chunk_size=8, slice_rows=4, batch_size=8, workers=1, read_threads=4))
    plan_json = tmp_path / "plan.json"
    rc = main(["plan", "--bundle", bundle_uri, "--input", a, "--input", b, "--output", output, "--sample", "10",
               "--nodes", "3", "--price-per-node-hour", "2.5", "--workers", "1", "--batch-size", "8",
               "--json", str(plan_json), "--s3-endpoint", s3_config.endpoint_url])
    out, err = capsys.readouterr()
    assert rc == 0, err
    plan = NightPlan.model_validate(json.loads(plan_json.read_text()))
    inv = plan.inventory
    sizes = {**{f"{a}/{k}": len(v) for k, v in pngs.items()}, **{f"{b}/{k}": len(v) for k, v in jpgs.items()}}
    assert (inv.objects, inv.bytes) == (22, sum(sizes.values()))
    assert {k: v.objects for k, v in inv.by_prefix.items()} == {a: 16, b: 6}
    assert {k: v.objects for k, v in inv.by_extension.items()} == {".png": 16, ".jpg": 6}
    assert inv.already_done == 6 and inv.to_scan == 16
    assert plan.sample.objects == 10 and plan.sample.nodes == 1 and plan.sample.scoring_actors == 1
    assert plan.busiest_stage in {"read", "score", "write"}
    one, three = plan.estimates
    assert (one.nodes, three.nodes) == (1, 3) and one.objects == three.objects == 16
    assert one == estimate(inv, plan.sample, nodes=1, price_per_node_hour=2.5)
    assert three.objects_per_s == pytest.approx(3 * one.objects_per_s)
    assert three.cost == pytest.approx(three.wall_s / 3600 * 3 * 2.5)
    assert "estimate on 3 node(s)" in out and "--incremental would skip 6" in out
    # nothing reached the output but last night's run
    runs = set(open_reports(output, s3=s3_config).to_table(columns=["run_id"]).column("run_id").to_pylist())
    assert runs == {"last-night"}


def test_plan_refuses_bad_flags_in_one_line(capsys):
    assert main(["plan", "--bundle", "b", "--sample", "10"]) == 2
    assert "give --input PREFIX" in capsys.readouterr().err
    assert main(["plan", "--bundle", "b", "--input", "/tmp/x", "--sample", "0"]) == 2
    assert "--sample must be >= 1, got 0" in capsys.readouterr().err
