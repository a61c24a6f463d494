"""`ood-audit demo`: the product tour, offline, on an embedded default.

One process walks through what a data team would schedule, on real images (:mod:`.data`):

1. an embedded S3 server (SeaweedFS) and a local Ray; ID digits and a mixed incoming prefix uploaded;
2. training with Ray Train: cross-entropy with the default recipe, then a short ALPA fine-tune (SPEC §8);
3. calibration into an audit bundle (SPEC §10);
4. night 1: a scan of the incoming prefix; exports to a Label Studio task file and a JSONL manifest;
   the HTML report;
5. night 2: new objects arrive (among them faces dropped into the digits folder); an incremental scan
   scores only those; the exports send only what is new; the report shows drift against night 1.

The console gets progress lines and a summary (:mod:`.summary`); Ray's own logs go to the file whose path
is printed first. Everything is written under the work directory, which is kept.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ood_audit.demo.data import demo_files
from ood_audit.demo.summary import format_summary, per_kind

log = logging.getLogger(__name__)
BUCKET = "ood-demo"
COPIES = 3  # of each kind of copy planted in the incoming data (demo.data.demo_files)


@dataclass(frozen=True)
class DemoSize:
    """How much the tour trains on and scans (:func:`~ood_audit.demo.data.demo_files`'s sizes)."""

    epochs: int                 # cross-entropy epochs
    finetune_epochs: int        # ALPA fine-tuning epochs after them
    n_train: int | None         # ID training images (None: every digit not held out)
    incoming_digits: int        # unseen digits in night 1
    per_kind: int               # objects of each outlier kind in night 1
    night2_digits: int
    night2_faces: int
    max_probe: int | None = None  # ID images for the block selector's probe evidence (None: calibration's default)


FULL = DemoSize(epochs=10, finetune_epochs=1, n_train=None, incoming_digits=150, per_kind=40, night2_digits=40,
                night2_faces=30)
# ``--quick``: the same stages and incoming kinds, a smaller training set and fewer epochs (a few minutes).
QUICK = DemoSize(epochs=7, finetune_epochs=1, n_train=1000, incoming_digits=150, per_kind=40, night2_digits=40,
                 night2_faces=30, max_probe=300)


class _Stages:
    """Wall time per stage, for the summary."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        log.info("[demo] %s ...", name)
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def _upload(client: Any, prefix: str, files: dict[str, bytes]) -> str:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=BUCKET, Key=f"{prefix}/{kv[0]}", Body=kv[1]), files.items()))
    return f"s3://{BUCKET}/{prefix}"


def run_demo(workdir: str | None = None, *, epochs: int | None = None, finetune_epochs: int | None = None,
             workers: int = 2, keep_server: bool = False, size: DemoSize = FULL) -> dict[str, Any]:
    """Run the tour (module docstring) and return its summary; ``keep_server`` leaves S3 up until Ctrl-C.

    ``size`` sets the data and the epochs; ``epochs`` and ``finetune_epochs``, when given, override its."""
    from ood_audit.embedded.s3 import EmbeddedS3
    from ood_audit.ray_setup import init_ray, ray_log_dir

    root = Path(workdir or tempfile.mkdtemp(prefix="ood-audit-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    epochs = size.epochs if epochs is None else epochs
    finetune_epochs = size.finetune_epochs if finetune_epochs is None else finetune_epochs
    t0 = time.perf_counter()
    stages = _Stages()
    server = EmbeddedS3(data_dir=str(root / "s3")).start()
    try:
        os.environ.update(server.env())
        s3, client = server.s3_config(), server.client()
        client.create_bucket(Bucket=BUCKET)
        id_files, night1, night2 = demo_files(n_incoming_digits=size.incoming_digits, per_kind=size.per_kind,
                                              night2_digits=size.night2_digits, night2_faces=size.night2_faces,
                                              copies=COPIES, n_train=size.n_train)
        id_uri = _upload(client, "id", id_files)
        in_uri = _upload(client, "incoming", night1)
        log.info("[demo] S3 at %s: %d ID images -> %s, %d incoming objects -> %s", server.endpoint_url,
                 len(id_files), id_uri, len(night1), in_uri)
        init_ray(runtime_env={"env_vars": server.env()})
        where = {"S3 endpoint": server.endpoint_url, "work directory": str(root), "Ray's logs": ray_log_dir() or "-"}
        model, tr, finetuned = stages.run("train", lambda: _train(id_uri, epochs, finetune_epochs, workers))
        bundle = stages.run("calibrate", lambda: _calibrate(id_uri, model, workers, s3, size.max_probe))
        output = f"s3://{BUCKET}/audit"
        where.update({"ID images": id_uri, "incoming": in_uri, "model": model, "bundle": bundle,
                      "scan reports": f"{output}/reports/"})

        scan1 = stages.run("scan night 1", lambda: _scan(bundle, output, in_uri, "night-1", s3))
        exports = stages.run("export night 1", lambda: _export(output, "night-1", root, s3))
        stages.run("report night 1", lambda: _report(output, "night-1", root / "report-night-1.html", s3))

        _upload(client, "incoming", night2)
        log.info("[demo] night 2: %d new objects under %s/digits/", len(night2), in_uri)
        scan2 = stages.run("scan night 2", lambda: _scan(bundle, output, in_uri, "night-2", s3))
        exports += stages.run("export night 2", lambda: _export(output, "night-2", root, s3))
        drift = stages.run("report night 2", lambda: _report(output, "night-2", root / "report-night-2.html", s3))
        where.update({"report, night 1": str(root / "report-night-1.html"),
                      "report, night 2": str(root / "report-night-2.html"),
                      "Label Studio tasks": str(root / "exports" / "label-studio-tasks-<night>.json"),
                      "JSONL manifests": str(root / "exports" / "manifests")})
        rows = _rows(output, "night-1", s3)
        summary = {"where": where, "val_accuracy": tr.val_accuracy, "val_images": tr.val_images,
                   "finetuned": finetuned, "kinds": per_kind(rows, in_uri),
                   "night2": {"objects": scan2.summary.objects, "skipped": scan2.summary.listing.skipped_done,
                              "flagged": scan2.summary.flagged, "drift": drift},
                   "night1": {"objects": scan1.summary.objects, "flagged": scan1.summary.flagged},
                   "duplicates": {"exact_night1": scan1.summary.duplicates.rows if scan1.summary.duplicates else 0,
                                  "near_id": sum(r["near_duplicate_of_id"] is not None for r in rows
                                                 if "/digits/reupload-" in r["uri"]),
                                  "near_other": sum(r["near_duplicate_of_id"] is not None for r in rows
                                                    if "/digits/reupload-" not in r["uri"]),
                                  "reuploads": COPIES,
                                  "exact_earlier": (scan2.summary.duplicates.earlier_runs
                                                    if scan2.summary.duplicates else 0)},
                   "exports": exports, "stages": stages.seconds, "seconds": time.perf_counter() - t0}
        print(format_summary(summary), flush=True)
        if keep_server:
            print(f"\nS3 stays up at {server.endpoint_url} (keys: AWS_ACCESS_KEY_ID={server.env()['AWS_ACCESS_KEY_ID']}"
                  f", AWS_SECRET_ACCESS_KEY={server.env()['AWS_SECRET_ACCESS_KEY']}); press Ctrl-C to stop it.",
                  flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return summary
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        server.stop()


def _train(id_uri: str, epochs: int, finetune_epochs: int, workers: int) -> tuple[str, Any, bool]:
    from ood_audit.training import TrainConfig, train

    ce = f"s3://{BUCKET}/models/digits-resnet18-ce.safetensors"
    # Every training setting but the architecture is the default: the model a new user gets.
    tr = train(TrainConfig(data=id_uri, output=ce, arch="resnet18", small_input=True, epochs=epochs,
                           workers=workers, storage=f"s3://{BUCKET}/train-runs", run_name="demo-ce"))
    log.info("[demo] cross-entropy model: validation accuracy %s", _acc(tr))
    if finetune_epochs <= 0:
        return ce, tr, False
    ft = f"s3://{BUCKET}/models/digits-resnet18-alpa.safetensors"
    tf = train(TrainConfig(data=id_uri, output=ft, arch="resnet18", small_input=True, mode="alpa-finetune",
                           init=ce, epochs=finetune_epochs, workers=workers, storage=f"s3://{BUCKET}/train-runs",
                           run_name="demo-alpa"))
    log.info("[demo] ALPA fine-tuned model: validation accuracy %s", _acc(tf))
    return ft, tf, True


def _acc(tr: Any) -> str:
    return "n/a" if tr.val_accuracy is None else f"{tr.val_accuracy:.3f} on {tr.val_images} held-out images"


def _calibrate(id_uri: str, model: str, workers: int, s3: Any, max_probe: int | None) -> str:
    from ood_audit.calibration.calibrate import CalibrateConfig, calibrate

    probes = {} if max_probe is None else {"max_probe": max_probe}
    cal = calibrate(CalibrateConfig(data=id_uri, model=model, output=f"s3://{BUCKET}/audit", s3=s3,
                                    workers=workers, k_knn=50, **probes))
    log.info("[demo] bundle %s (selected block %s)", cal.bundle_uri, cal.info.block)
    return cal.bundle_uri


def _scan(bundle: str, output: str, in_uri: str, run_id: str, s3: Any) -> Any:
    from ood_audit.scan import ScanConfig, run_scan

    return run_scan(ScanConfig(bundle=bundle, output=output, inputs=(in_uri,), s3=s3, chunk_size=200,
                               run_id=run_id, incremental=True))


def _rows(output: str, run_id: str, s3: Any) -> list[dict[str, Any]]:
    from ood_audit.store.runs import load_report

    return load_report(output, run_id, s3=s3, columns=["uri", "status", "flagged", "featurenorm", "csd", "knn",
                                                       "near_duplicate_of_id"]).to_pylist()


def _export(output: str, run_id: str, root: Path, s3: Any) -> list[str]:
    """The night's flags to a Label Studio task file (import format, ``s3://`` images) and the 100 most
    anomalous rows to a JSONL manifest; both deduplicated across nights by their ledgers."""
    from ood_audit.sinks.export import export
    from ood_audit.sinks.labelstudio import LabelStudioSink
    from ood_audit.sinks.manifest import ManifestSink
    from ood_audit.sinks.select import Selection

    ls = export(output, LabelStudioSink(tasks_file=str(root / "exports" / "label-studio-tasks-{run_id}.json"), s3=s3),
                Selection(), run_id=run_id, s3=s3)
    js = export(output, ManifestSink(str(root / "exports" / "manifests"), s3=s3),
                Selection(policy="top-k", budget=100), run_id=run_id, s3=s3)
    return [f"{run_id}: Label Studio tasks (flagged): {ls.sent_now} new, {ls.already_sent} already sent",
            f"{run_id}: JSONL manifest (top 100 most anomalous): {js.sent_now} new, {js.already_sent} already sent"]


def _report(output: str, run_id: str, out: Path, s3: Any) -> list[str]:
    """Write the HTML report; return one line per prefix of its drift table that has a verdict."""
    from ood_audit.report import write_report

    data = write_report(output, str(out), run_id, s3=s3)
    lines = []
    for r in data.drift.rows:
        if r.before.rate is None or r.now.rate is None:
            continue
        p = "" if r.p is None else f", p={r.p:.2g}, BH q={r.q:.2g}"
        lines.append(f"{data.display_prefix(r.prefix)}: flagged {r.before.rate:.2f} -> {r.now.rate:.2f} "
                     f"({r.before.scored} -> {r.now.scored} scored{p}): {r.verdict}")
    return lines
