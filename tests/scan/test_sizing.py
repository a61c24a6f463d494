"""The planner's arithmetic (ood_audit.scan.sizing): inventories and estimates from made-up measurements."""
from __future__ import annotations

import pyarrow as pa
import pytest

from ood_audit.scan.sizing import (Inventory, SampleRun, UniformSample, busiest_stage, estimate, extension, make_plan,
                                    tally)


def page(rows):
    return pa.table({"uri": [u for u, _ in rows], "etag": ["e"] * len(rows), "size": [s for _, s in rows]})


def test_tally_counts_per_prefix_and_extension():
    pages = [page([("s3://b/in/a/1.JPG", 100), ("s3://b/in/a/2.png", 50)]),
             page([("s3://b/in/ab/3.jpg", 10), ("s3://b/in/a/sub/4", 7), ("s3://b/other/5.png", 1)])]
    inv = tally(pages, ["s3://b/in/a", "s3://b/in/ab/"])
    assert (inv.objects, inv.bytes) == (5, 168)
    assert {k: (t.objects, t.bytes) for k, t in inv.by_prefix.items()} == {
        "s3://b/in/a": (3, 157), "s3://b/in/ab": (1, 10), "(manifest)": (1, 1)}  # ab is not under a
    assert {k: (t.objects, t.bytes) for k, t in inv.by_extension.items()} == {
        ".jpg": (2, 110), ".png": (2, 51), "(none)": (1, 7)}
    assert extension("s3://b/x.tar.GZ") == ".gz" and extension("s3://b/.hidden") == "(none)"


def test_a_sample_estimates_its_own_wall_time():
    s = SampleRun(objects=500, wall_s=40.0, steady_objects_per_s=20.0, startup_s=8.0)
    assert s.fixed_s() == pytest.approx(40.0 - 500 / 20.0)
    e = estimate(Inventory(objects=500), s, nodes=1)
    assert e.wall_s == pytest.approx(40.0) and e.scan_s == pytest.approx(25.0)


def test_full_run_on_k_nodes_and_its_cost():
    s = SampleRun(objects=500, wall_s=40.0, steady_objects_per_s=20.0, nodes=1)
    inv = Inventory(objects=1_000_000, already_done=200_000, listing_s=120.0)
    one = estimate(inv, s, nodes=1, price_per_node_hour=3.0)
    four = estimate(inv, s, nodes=4, price_per_node_hour=3.0)
    assert one.objects == four.objects == 800_000
    assert one.scan_s == pytest.approx(800_000 / 20.0) and four.scan_s == pytest.approx(800_000 / 80.0)
    assert four.wall_s == pytest.approx(120.0 + 15.0 + 10_000.0)  # listing + fixed + scanning
    assert four.cost == pytest.approx(four.wall_s / 3600 * 4 * 3.0)
    assert one.cost == pytest.approx(one.wall_s / 3600 * 3.0)


def test_rate_from_a_sample_of_two_nodes_scales_per_node():
    s = SampleRun(objects=100, wall_s=10.0, steady_objects_per_s=40.0, nodes=2)
    assert estimate(Inventory(objects=4000), s, nodes=4).objects_per_s == pytest.approx(80.0)


def test_without_a_steady_window_the_average_after_startup():
    s = SampleRun(objects=60, wall_s=20.0, startup_s=8.0)
    assert s.rate() == pytest.approx(60 / 12.0) and s.fixed_s() == pytest.approx(8.0)


def test_nothing_to_scan_costs_the_listing_only():
    s = SampleRun(objects=10, wall_s=10.0, steady_objects_per_s=5.0)
    e = estimate(Inventory(objects=300, already_done=300, listing_s=2.0), s, nodes=1)
    assert (e.objects, e.wall_s) == (0, 2.0)


def test_busiest_stage_and_plan():
    s = SampleRun(objects=200, wall_s=30.0, steady_objects_per_s=10.0,
                  stage_busy_s={"read": 8.0, "score": 12.0, "write": 1.0})
    stage, per = busiest_stage(s)
    assert stage == "score" and per == pytest.approx({"read": 0.04, "score": 0.06, "write": 0.005})
    plan = make_plan(bundle_id="b1", inputs=["s3://b/in"], inventory=Inventory(objects=2000), sample=s,
                     nodes=[1, 3], price_per_node_hour=None)
    assert [e.nodes for e in plan.estimates] == [1, 3] and plan.busiest_stage == "score"
    assert type(plan).model_validate(plan.model_dump()) == plan  # the JSON round-trips


def test_uniform_sample_keeps_k_rows_of_the_stream_evenly_and_reproducibly():
    pages = [page([(f"s3://b/{p:03d}-{i:03d}.png", 1) for i in range(100)]) for p in range(50)]  # 5000 rows
    a, b = UniformSample(200, seed=1), UniformSample(200, seed=1)
    for pg in pages:
        a.add(pg)
        b.add(pg)
    got = a.table().column("uri").to_pylist()
    assert len(got) == len(set(got)) == 200 and got == sorted(got) == b.table().column("uri").to_pylist()
    # every page is equally likely: 50 pages of 100 rows, 4 expected per page. The count from the first
    # half of the stream is Hypergeometric(5000, 2500, 200): mean 100, sd 7.1; 5 sd either side.
    first_half = sum(u < "s3://b/025" for u in got)
    assert 100 - 36 <= first_half <= 100 + 36, first_half
    small = UniformSample(10, seed=0)
    small.add(page([("s3://b/x.png", 1), ("s3://b/y.png", 2)]))
    assert small.table().num_rows == 2 and UniformSample(3, seed=0).table() is None
