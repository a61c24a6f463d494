"""Report rows: schema, null handling for failed objects, percentiles and flags from the bundle (SPEC §11)."""
import numpy as np
import pyarrow as pa
import pytest

from ood_audit.flagging.thresholds import flags, percentile, quantile_table
from ood_audit.scan.rows import CHUNK, INTERNAL_COLUMNS, READ_S, SEQ, PercentileTable, RowBuilder
from ood_audit.store.schema import SPEC_SCORES, parse_part_name, part_name, report_schema

SCORES = ["featurenorm", "msp", "energy", "maxlogit", "msp+fn", "energy+fn", "csd", "knn"]


def _meta(rng):
    """A bundle-less ``meta``-shaped mapping, with the thresholds and tables it holds: (meta, per_score, flag,
    quantiles)."""
    held = {s: rng.normal(size=200) for s in SCORES}
    per_score = {s: float(np.quantile(v, 0.05)) for s, v in held.items()}
    flag = {"featurenorm": -1.0, "csd": -1.2}
    quantiles = {s: quantile_table(v) for s, v in held.items()}
    meta = {"thresholds": {"per_score": per_score, "flag_on": ["featurenorm", "csd"], "flag": flag},
            "heldout_quantiles": quantiles}
    return meta, per_score, flag, quantiles


def _batch(statuses):
    n = len(statuses)
    return {"uri": np.array([f"s3://b/{i}.png" for i in range(n)], dtype=object),
            "etag": np.array([f"e{i}" for i in range(n)], dtype=object),
            "size": np.arange(n, dtype=np.int64) * 10, "status": np.array(statuses, dtype=object),
            "error": np.array([None if s == "ok" else f"why {s}" for s in statuses], dtype=object),
            "width": np.array([32 if s == "ok" else -1 for s in statuses], dtype=np.int32),
            "height": np.array([32 if s == "ok" else -1 for s in statuses], dtype=np.int32),
            CHUNK: np.zeros(n, np.int32), SEQ: np.arange(n, dtype=np.int32), READ_S: np.zeros(n, np.float32)}


def test_spec_columns_always_present_in_order():
    names = report_schema().names
    assert names[:9] == ["run_id", "bundle_id", "uri", "etag", "size_bytes", "status", "error", "width", "height"]
    assert names[9:15] == list(SPEC_SCORES)
    assert names[15:19] == ["csd_view", "pred_class", "knn_nn", "knn_nn_dist"]
    assert names[19:25] == [f"pct_{s}" for s in SPEC_SCORES]
    assert names[25:] == ["flagged", "flag_reasons", "scanned_at", "content_sha256", "duplicate_of",
                          "quality_issues", "near_duplicate_of_id"]
    extra = report_schema(["msp", "msp+fn"]).names
    assert extra[extra.index("knn") + 1] == "msp+fn" and "pct_msp+fn" in extra


def test_rows_scores_percentiles_and_flags():
    rng = np.random.default_rng(0)
    meta, per_score, flag, quantiles = _meta(rng)
    builder = RowBuilder(meta, "bid", "run1", SCORES)
    statuses = ["ok", "decode_error", "ok", "missing", "ok", "too_large", "unsupported", "ok"]
    ok = np.array([s == "ok" for s in statuses])
    scores = {s: rng.normal(size=int(ok.sum())) for s in SCORES}
    scores["csd_view"] = np.array([0, 5, 2, 4])
    scores["pred_class"] = np.array([1, 0, 1, 1])
    table = builder.build(_batch(statuses), scores)
    assert table.schema.names == report_schema(SCORES).names + list(INTERNAL_COLUMNS)
    rows = table.to_pylist()
    assert [r["status"] for r in rows] == statuses
    expected_flag, _ = flags(scores, flag, ["featurenorm", "csd"])
    _, expected_reasons = flags(scores, per_score, [])
    j = 0
    for r, good in zip(rows, ok):
        assert r["run_id"] == "run1" and r["bundle_id"] == "bid"
        if not good:
            assert all(r[s] is None for s in SCORES) and r["flagged"] is None and r["flag_reasons"] is None
            assert r["width"] is None and r["error"].startswith("why")
            continue
        for s in SCORES:
            assert r[s] == scores[s][j]
            assert r[f"pct_{s}"] == pytest.approx(percentile(np.array([scores[s][j]]), quantiles[s])[0],
                                                  abs=1e-4)
        assert r["flagged"] == bool(expected_flag[j]) and r["flag_reasons"] == expected_reasons[j]
        assert r["csd_view"] == scores["csd_view"][j] and r["pred_class"] == scores["pred_class"][j]
        assert r["width"] == 32 and r["error"] is None
        j += 1


def test_all_failed_and_empty_batches_keep_the_schema():
    builder = RowBuilder(_meta(np.random.default_rng(1))[0], "bid", "run1", SCORES)
    failed = builder.build(_batch(["missing", "decode_error"]), None)
    assert failed.schema == builder.output_schema and failed.num_rows == 2
    assert failed.column("featurenorm").null_count == 2
    assert builder.empty().schema == failed.schema
    no_bank = RowBuilder({}, "bid", "run1", ["featurenorm", "msp"])  # a bundle without csd/knn or tables
    t = no_bank.build(_batch(["ok"]), {"featurenorm": np.array([1.0]), "msp": np.array([0.5]),
                                       "pred_class": np.array([0])})
    assert t.column("csd").null_count == 1 and t.column("pct_msp").null_count == 1
    assert t.column("flag_reasons").to_pylist() == [[]]


def test_all_null_string_columns_from_ray_stay_null():
    builder = RowBuilder({}, "bid", "run1", ["featurenorm"])
    batch = _batch(["ok", "ok"])
    batch["etag"] = np.full(2, np.nan, dtype=np.float32)  # how Ray hands over an all-null column
    batch["error"] = np.full(2, np.nan, dtype=np.float32)
    table = builder.build(batch, {"featurenorm": np.ones(2)})
    assert table.column("etag").null_count == 2 and table.column("error").null_count == 2


def test_percentile_table_matches_percentile_exactly():
    rng = np.random.default_rng(3)
    for held in (rng.normal(size=500), np.repeat(rng.normal(size=20), 30), np.ones(50)):
        table = quantile_table(held)
        values = np.concatenate([rng.normal(size=300), np.asarray(table)[::37], [-1e9, 1e9]])
        np.testing.assert_array_equal(PercentileTable(table)(values), percentile(values, table))


def test_part_names_round_trip():
    name = part_name("20261124T000000Z-abc123", 12, 3, "0123456789abcdef")
    assert name == "20261124T000000Z-abc123.c000012.a03.0123456789abcdef.parquet"
    assert parse_part_name(name) == ("20261124T000000Z-abc123", 12, 3)
    assert parse_part_name("part-0001.parquet") is None and parse_part_name("x.c1.a1.d.json") is None
    assert pa.types.is_timestamp(report_schema().field("scanned_at").type)
