"""`ood-audit train` on a real local Ray (TorchTrainer, 2 CPU workers, gloo) and a real S3 server (SeaweedFS).

Runs are tiny (resnet18 CIFAR stem, 32 px, a few steps) but go through everything: sharded decoding,
DDP, pickle-free checkpoints in S3, recovery from a killed worker, resuming a named run.
"""
from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load as load_safetensors

from ood_audit import build_model, save_weights
from ood_audit.cli import main
from ood_audit.models import ModelSpec, load_state_strict
from ood_audit.training import TrainConfig, train

pytestmark = [pytest.mark.slow]

BASE = dict(arch="resnet18", small_input=True, batch_size=8, workers=2, cpus_per_worker=1.0, log_every_s=5.0)
RESUME_LR = 0.05


def _s3_objects(client: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", ()):
            if obj["Key"].endswith("/"):  # directory markers pyarrow creates
                continue
            out[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


@pytest.mark.timeout(240)
def test_ddp_two_workers_on_s3(ray_local, s3_data, s3_config, s3_client) -> None:
    bucket, data_uri = s3_data
    res = train(TrainConfig(data=data_uri, output=f"s3://{bucket}/models/r18.safetensors", epochs=3,
                            run_name="ddp", storage=f"s3://{bucket}/runs", s3=s3_config, **BASE))

    # DDP kept the ranks identical, and the easy task was learnt.
    assert len(res.param_checksums) == 2 and res.param_checksums[0] == res.param_checksums[1]
    losses = [h["loss"] for h in res.history]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    # 74 of the 81 files are training images after the 10% validation split (the broken one among them):
    # 74 // 2 ranks = 37 per rank, in batches of 8 = 5 steps per epoch.
    assert res.global_step == 3 * 5
    assert all(h["images_per_second"] > 0 for h in res.history)
    # Validation every epoch, on the 7 held-out images, in the history, the summary and Ray's metrics.
    assert [h["val_images"] for h in res.history] == [7, 7, 7] and res.val_images == 7
    assert all(0.0 <= h["val_accuracy"] <= 1.0 and math.isfinite(h["val_loss"]) for h in res.history)
    assert res.val_accuracy == res.history[-1]["val_accuracy"] and res.chance_accuracy >= 0.5

    # The unreadable file was skipped, counted and listed.
    assert res.skipped_images == 1 and res.skipped_examples[0]["uri"].endswith("class0/broken.png")

    # Final weights in S3, their sha256 in the metadata, strictly loadable into the plain classifier.
    weights = s3_client.get_object(Bucket=bucket, Key="models/r18.safetensors")["Body"].read()
    record = json.loads(s3_client.get_object(Bucket=bucket, Key="models/r18.json")["Body"].read())
    import hashlib

    assert record["sha256"] == hashlib.sha256(weights).hexdigest() == res.sha256
    spec = ModelSpec.from_dict(record)  # the record is a model description, as calibrate reads it
    assert spec.arch == "resnet18" and spec.num_classes == 2 and spec.small_input is True
    assert spec.image_size == 32 and spec.class_names == ["class0", "class1"] and record["mode"] == "ce"
    assert {"mean", "std"} <= set(record) and len(spec.mean) == 3 and len(spec.std) == 3
    assert record["epochs"] == 3 and record["final_loss"] == pytest.approx(losses[-1])
    assert record["val_accuracy"] == res.val_accuracy and record["validation"]["images"] == 7
    assert record["validation"]["fraction"] == 0.1 and record["config"]["warmup_epochs"] == 1.0
    load_state_strict(build_model("resnet18", 2, small_input=True), load_safetensors(weights))

    # Checkpoints: one per epoch, safetensors + JSON only, nothing pickled.
    objects = _s3_objects(s3_client, bucket, "runs/ddp/")
    ckpt_files: dict[str, list[str]] = {}
    for key in objects:
        _, _, folder, *rest = key.split("/")
        if folder.startswith("checkpoint_step"):
            ckpt_files.setdefault(folder, []).append("/".join(rest))
    assert sorted(ckpt_files) == [f"checkpoint_step{s:09d}" for s in (5, 10, 15)]
    for files in ckpt_files.values():
        assert sorted(files) == ["model.safetensors", "optimizer.json", "optimizer.safetensors",
                                 "train_state.json"]
    for key, body in objects.items():
        assert key.endswith((".safetensors", ".json", ".validate_storage_marker")), key
        assert not body.startswith(b"\x80"), f"{key} looks like a pickle"
    state = json.loads(objects["runs/ddp/checkpoint_step000000015/train_state.json"])
    assert state["epoch"] == 3 and state["global_step"] == 15 and state["config"]["mode"] == "ce"
    assert [h["val_accuracy"] for h in state["history"]] == [h["val_accuracy"] for h in res.history]
    import ray.train

    reported = ray.train.Result.from_path(f"{bucket}/runs/ddp", storage_filesystem=s3_config.pyarrow_fs()).metrics
    assert reported["val_accuracy"] == res.val_accuracy and reported["val_images"] == 7
    assert "secret" not in json.dumps(state).lower()


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    from tests.datagen import labelled_images, write_local

    return write_local(tmp_path_factory.mktemp("small"), labelled_images(16, seed=1))


@pytest.fixture(scope="module")
def init_weights(tmp_path_factory) -> Path:
    """Weights to fine-tune from (untrained: what is tested is the mechanics, and the frozen head)."""
    path = tmp_path_factory.mktemp("init") / "init.safetensors"
    save_weights(build_model("resnet18", 2, small_input=True), path)
    return path


def _check_heads_and_model(result: dict, mode: str) -> None:
    """Projectors are training-only: their own file; the model file stays a plain classifier."""
    heads = load_safetensors(Path(result["heads"]).read_bytes())
    assert any(k.startswith("alpa.phi_q.") for k in heads)
    assert any(k.startswith("supcon.") for k in heads) == (mode == "joint")
    model = load_safetensors(Path(result["output"]).read_bytes())
    load_state_strict(build_model("resnet18", 2, small_input=True), model)
    assert sorted(p.name for p in Path(result["checkpoint"]).iterdir()) == [
        "heads.safetensors", "model.safetensors", "optimizer.json", "optimizer.safetensors", "train_state.json"]


def _kill_rank1_after_checkpoint(status_dir: Path, run_dir: Path, killed: dict, stop: threading.Event) -> None:
    """Wait until Ray has registered a checkpoint of the run, then SIGKILL rank 1's worker process."""
    import ray.train

    while not stop.is_set():
        try:
            registered = ray.train.Result.from_path(str(run_dir)).checkpoint is not None
            status = json.loads((status_dir / "rank-1.json").read_text())
        except Exception:  # noqa: BLE001 - the run folder is being written while we look
            registered = False
        if registered and status.get("checkpoint_step"):
            killed.update(pid=status["pid"], at_step=status["global_step"], time=time.time())
            os.kill(status["pid"], signal.SIGKILL)
            return
        time.sleep(0.05)


@pytest.mark.timeout(300)
def test_killed_worker_recovers_from_last_checkpoint_in_joint_mode(ray_local, local_data, tmp_path) -> None:
    """Joint mode (CE + SupCon + ALPA, the projector heads in the checkpoint too) through a killed worker: the
    restarted ranks resume from the last checkpoint, and the loss still falls."""
    status_dir = tmp_path / "status"
    status_dir.mkdir()
    storage = tmp_path / "runs"
    killed: dict = {}
    stop = threading.Event()
    killer = threading.Thread(target=_kill_rank1_after_checkpoint,
                              args=(status_dir, storage / "fault", killed, stop), daemon=True)
    killer.start()
    try:
        res = train(TrainConfig(data=str(local_data), output=str(tmp_path / "out" / "model.safetensors"),
                                mode="joint", epochs=5, checkpoint_every=2, max_failures=2, run_name="fault", storage=str(storage),
                                worker_status_dir=str(status_dir), **BASE))
    finally:
        stop.set()
        killer.join(5)
    assert killed, "the run finished before a worker could be killed"
    assert len(res.attempts) == 2, res.attempts
    first, second = res.attempts
    assert first["start_step"] == 0 and first["resumed_from"] is None
    # The restarted workers continued from a checkpoint taken before the kill, not from step 0.
    assert 0 < second["start_step"] <= killed["at_step"]
    assert second["resumed_from"] == f"checkpoint_step{second['start_step']:09d}"
    assert res.global_step == 5 * 5 and res.epochs_completed == 5
    assert res.param_checksums[0] == res.param_checksums[1]
    # Validation went on from the checkpoint: one record per epoch, none lost or repeated by the restart.
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4, 5]
    assert all(h["val_images"] == 7 and h["val_accuracy"] is not None for h in res.history)
    assert json.loads((status_dir / "rank-1.json").read_text())["pid"] != killed["pid"]
    losses = [h["loss"] for h in res.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    _check_heads_and_model(res.to_json(), "joint")


@pytest.mark.timeout(240)
def test_rerun_same_name_resumes_alpa_finetune(ray_local, small_data, init_weights, tmp_path, capsys) -> None:
    common = dict(data=str(small_data), run_name="resume", storage=str(tmp_path / "runs"))
    # A learning rate that moves the objective well past its step-to-step noise in two steps (the default, scaled
    # to a global batch of 16 and warmed up over the first epoch, barely moves it), the same in both runs.
    first = train(TrainConfig(output=str(tmp_path / "a.safetensors"), mode="alpa-finetune", init=str(init_weights),
                              epochs=1, lr=RESUME_LR, warmup_epochs=0.0, **common, **BASE))
    assert first.epochs_completed == 1 and first.global_step == 2  # 29 training images / 2 ranks / batch 8

    # The same run name and storage again, through the CLI, with more epochs: it starts at epoch 1, with the
    # model, the ALPA projectors and the optimizer state of the first run's checkpoint.
    out = tmp_path / "b.safetensors"
    rc = main(["train", "--data", common["data"], "--output", str(out), "--small-input", "--epochs", "2",
               "--mode", "alpa-finetune", "--init", str(init_weights), "--batch-size", "8", "--workers", "2",
               "--cpus-per-worker", "1", "--run-name", "resume", "--storage", common["storage"],
               "--lr", str(RESUME_LR), "--warmup-epochs", "0",
               "--json", str(tmp_path / "summary.json")])
    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [a["start_epoch"] for a in summary["attempts"]] == [0, 1]
    assert [a["start_step"] for a in summary["attempts"]] == [0, 2]
    assert summary["attempts"][1]["resumed_from"] == "checkpoint_step000000002"
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    assert summary["history"][0] == first.history[0]  # epoch 1 was not run again
    assert summary["global_step"] == 4 and summary["param_checksums"][0] == summary["param_checksums"][1]
    losses = [h["loss"] for h in summary["history"]]
    assert all(math.isfinite(v) for v in losses) and losses[1] < losses[0], losses
    record = json.loads((tmp_path / "b.json").read_text())
    assert record["epochs"] == 2 and record["attempts"] == summary["attempts"] and record["mode"] == "alpa-finetune"
    assert "run resume: 2 epoch(s)" in capsys.readouterr().out
    _check_heads_and_model(summary, "alpa-finetune")
    # MODE-F leaves the classifier head alone: it still holds the --init weights; the backbone moved.
    init = load_safetensors(init_weights.read_bytes())
    final = load_safetensors(out.read_bytes())
    assert torch.equal(init["fc.weight"], final["fc.weight"]) and torch.equal(init["fc.bias"], final["fc.bias"])
    assert not torch.equal(init["conv1.weight"], final["conv1.weight"])
