"""Benchmark: labeling-queue exports. Prints ratios measured within one run only.

    PYTHONPATH=. python benchmarks/export.py                 # 1M-row run, 500 SQS messages, 2000 webhook items
    PYTHONPATH=. python benchmarks/export.py --rows 200000 --messages 500

1. **SQS batching** (moto's standalone server on loopback): the product's sink (``send_message_batch``, 10
   entries a call) against one ``send_message`` per message, same bodies, in rounds of 100 messages, each
   round into fresh queues (moto's cost per message grows with the queue's length, which AWS's does not).
   Ratio = messages/s batched over messages/s single; on moto it mostly measures per-request overhead.
2. **Webhook batching** (a real HTTP receiver on loopback that checks every signature,
   ``tests.sinks.webhook_receiver``): the product's sink (signed batches of 100 on one keep-alive connection
   pool) against what a script would do, one signed ``requests.post`` per item, same payload lines.
   Ratio = items/s batched over items/s one at a time.
3. **Selection on a large constructed run** (report schema, random percentiles, 100k-row part files): the
   product's streaming top-k (:func:`ood_audit.sinks.select.select_rows`, ``--policy top-k``) against loading
   every payload column of the run into one table, computing the anomaly and sorting. Each variant runs in
   its own process; peak memory is that process's max RSS minus the RSS of the same process before the work
   (imports and the dataset opened). Both must pick the same rows, checked.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROUND = 100  # messages per SQS round (one ledger batch)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_run(output: str, rows: int, per_file: int = 100_000) -> None:
    import pyarrow as pa

    from ood_audit.io.fs import write_bytes
    from ood_audit.store.schema import SPEC_SCORES, part_name, partition_uri, report_schema, write_part
    from ood_audit.store.runs import SUMMARY_JSON, run_dir

    rng = np.random.default_rng(0)
    schema = report_schema()
    part = partition_uri(output, "2026-11-01")
    for c, start in enumerate(range(0, rows, per_file)):
        n = min(per_file, rows - start)
        cols = {f.name: pa.nulls(n, f.type) for f in schema}
        cols.update(run_id=pa.array(["bench"] * n), bundle_id=pa.array(["b" * 32] * n),
                    uri=pa.array([f"s3://bench/img/{start + i:08d}.png" for i in range(n)]),
                    etag=pa.array(["e1"] * n), status=pa.array(["ok"] * n),
                    pred_class=pa.array(rng.integers(0, 10, n), pa.int32()),
                    flagged=pa.array(rng.random(n) < 0.05), scanned_at=pa.array([0] * n, pa.timestamp("us", "UTC")))
        for s in SPEC_SCORES:
            p = rng.uniform(0, 100, n).astype(np.float32)
            cols[s], cols[f"pct_{s}"] = pa.array(p.astype(np.float64)), pa.array(p)
        cols["flag_reasons"] = pa.array([["featurenorm"] if f else [] for f in cols["flagged"].to_pylist()],
                                        pa.list_(pa.string()))
        write_part(pa.table([cols[f.name] for f in schema], schema=schema), f"{part}/{part_name('bench', c, 1, 'd')}")
    doc = {"run_id": "bench", "run_date": "2026-11-01", "complete": True, "bundle": {"id": "b" * 32},
           "created_at": "2026-11-01T02:00:00+00:00"}
    write_bytes(f"{run_dir(output, 'bench')}/{SUMMARY_JSON}", json.dumps(doc).encode())


def child(variant: str, output: str, k: int) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    from ood_audit.store.runs import anomaly, find_run, run_dataset
    from ood_audit.sinks.select import Selection, payload_columns, select_rows

    run = find_run(output)
    ds = run_dataset(run)
    base = _rss_mb()
    t0 = time.perf_counter()
    if variant == "streaming":
        uris = select_rows(ds, run.flag_on, Selection(policy="top-k", budget=k)).column("uri").to_pylist()
    else:
        t = ds.to_table(columns=payload_columns(ds.schema, run.flag_on), filter=pc.field("status") == "ok")
        a = anomaly(t, run.flag_on)
        t = t.append_column("anomaly", pa.array(a))
        order = pc.sort_indices(t, sort_keys=[("anomaly", "descending"), ("uri", "ascending")])
        uris = t.take(order[:k]).column("uri").to_pylist()
    dt = time.perf_counter() - t0
    print(json.dumps({"s": dt, "peak_mb": _rss_mb() - base, "uris": uris}))


def bench_selection(rows: int, k: int) -> None:
    with tempfile.TemporaryDirectory(prefix="ood-audit-bench-export-") as d:
        t0 = time.perf_counter()
        make_run(d, rows)
        print(f"selection: constructed a {rows:,}-row run in {time.perf_counter() - t0:.1f} s")
        res = {}
        for variant in ("streaming", "full"):
            out = subprocess.run([sys.executable, __file__, "--child", variant, d, "--k", str(k)], check=True,
                                 capture_output=True, text=True, env={**os.environ, "PYTHONPATH": "."}).stdout
            res[variant] = json.loads(out.strip().splitlines()[-1])
        same = res["streaming"]["uris"] == res["full"]["uris"]
        s, f = res["streaming"], res["full"]
        print(f"selection top-{k} of {rows:,}: same rows={same}; time full/streaming = {f['s'] / s['s']:.2f}x; "
              f"peak memory full/streaming = {f['peak_mb'] / max(s['peak_mb'], 1.0):.1f}x "
              f"({f['peak_mb']:.0f} MB vs {s['peak_mb']:.0f} MB above the opened dataset)")


def bench_sqs(messages: int) -> None:
    import boto3

    from ood_audit.sinks.items import items_from_table
    from ood_audit.sinks.sqs import SqsSink, sqs_body
    from tests.sinks.servers import MotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    with tempfile.TemporaryDirectory() as d:
        moto = MotoServer(Path(d) / "moto.log")
        moto.start()
        try:
            import pyarrow as pa

            table = pa.table({"uri": [f"s3://b/{i}.png" for i in range(messages)], "etag": ["e"] * messages,
                              "run_id": ["r"] * messages, "bundle_id": ["b" * 32] * messages,
                              "pred_class": [i % 10 for i in range(messages)], "flagged": [True] * messages,
                              "flag_reasons": [["featurenorm"]] * messages, "anomaly": [0.99] * messages,
                              "featurenorm": [1.0] * messages, "pct_featurenorm": [0.5] * messages})
            items = list(items_from_table(table, "threshold"))
            client = boto3.client("sqs", endpoint_url=moto.url, region_name="us-east-1")
            sink = SqsSink("bench-batched", endpoint=moto.url, batch_size=ROUND)  # queue set per round
            batched = single = 0.0
            for r, start in enumerate(range(0, len(items), ROUND)):
                part = items[start:start + ROUND]
                # a fresh queue per round for both: moto's cost per message grows with the queue's length
                sink.queue_url = client.create_queue(QueueName=f"bench-batched-{r}")["QueueUrl"]
                t0 = time.perf_counter()
                sink.send(part)
                batched += time.perf_counter() - t0
                q = client.create_queue(QueueName=f"bench-single-{r}")["QueueUrl"]
                t0 = time.perf_counter()
                for it in part:
                    client.send_message(QueueUrl=q, MessageBody=json.dumps(sqs_body(it)))
                single += time.perf_counter() - t0
        finally:
            moto.stop()
    print(f"sqs {messages} messages on moto: batched {messages / batched:.0f} msg/s ({sink.calls} calls), single "
          f"{messages / single:.0f} msg/s; batched/single throughput = {single / batched:.1f}x")


def bench_webhook(n: int) -> None:
    import hashlib
    import hmac

    import pyarrow as pa
    import requests

    from ood_audit.sinks.items import items_from_table, manifest_line
    from ood_audit.sinks.webhook import SECRET_ENV, WebhookSink
    from tests.sinks.webhook_receiver import WebhookReceiver

    secret = "bench-webhook-secret"
    table = pa.table({"uri": [f"s3://b/{i}.png" for i in range(n)], "etag": ["e"] * n, "run_id": ["r"] * n,
                      "bundle_id": ["b" * 32] * n, "flagged": [True] * n, "flag_reasons": [["csd"]] * n,
                      "anomaly": [0.99] * n, "csd": [-1.0] * n, "pct_csd": [0.5] * n})
    items = list(items_from_table(table, "threshold"))
    batched_rx, single_rx = WebhookReceiver(secret.encode()).start(), WebhookReceiver(secret.encode()).start()
    try:
        sink = WebhookSink(batched_rx.url, environ={SECRET_ENV: secret})
        sink.open()
        t0 = time.perf_counter()
        for start in range(0, n, sink.batch_size):
            sink.send(items[start:start + sink.batch_size])
        batched = time.perf_counter() - t0
        sink.close()
        t0 = time.perf_counter()
        for it in items:
            doc = {"batch": it.key, "run_id": "r", "queue": it.queue, "items": [manifest_line(it)]}
            body = json.dumps(doc).encode()
            ts = str(int(time.time()))
            sig = "sha256=" + hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
            requests.post(single_rx.url, data=body, timeout=30, headers={
                "Content-Type": "application/json", "X-OOD-Audit-Timestamp": ts, "X-OOD-Audit-Signature": sig,
                "Idempotency-Key": it.key}).raise_for_status()
        single = time.perf_counter() - t0
    finally:
        batched_rx.stop()
        single_rx.stop()
    assert len(batched_rx.taken) == len(single_rx.taken) == n and not batched_rx.refused and not single_rx.refused
    print(f"webhook {n} items on a local receiver: batched {n / batched:.0f} items/s ({batched_rx.requests} POSTs), "
          f"one POST per item {n / single:.0f} items/s; batched/single throughput = {single / batched:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--webhook-items", type=int, default=2000)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--child", nargs=2, metavar=("VARIANT", "OUTPUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.k)
        return
    bench_sqs(args.messages)
    bench_webhook(args.webhook_items)
    bench_selection(args.rows, args.k)


if __name__ == "__main__":
    main()
