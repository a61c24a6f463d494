"""The training pieces without Ray: sharding, decoding with skips, augmentation, objectives, checkpoints, config."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ood_audit import build_model
from ood_audit.cli import main
from ood_audit.errors import CheckpointError, ConfigError, DataError
from ood_audit.io.decode import Preprocess
from ood_audit.training import TrainConfig
from ood_audit.training.augment import augment, random_crop_with_padding, random_hflip
from ood_audit.training.checkpoint import (check_compatible, flatten_optimizer_state, read_checkpoint,
                                           write_checkpoint)
from ood_audit.training.data import ShardReader, SkipLog, epoch_shard, steps_per_epoch
from ood_audit.training.loop import lr_at, make_optimizer, param_checksum
from ood_audit.training.net import TrainNet

pytestmark = pytest.mark.timeout(120)


def test_shards_are_disjoint_equal_and_cover_all_but_the_remainder() -> None:
    for world in (1, 2, 3):
        shards = [epoch_shard(11, world, r, epoch=4, seed=7) for r in range(world)]
        assert len({len(s) for s in shards}) == 1 and len(shards[0]) == 11 // world
        flat = np.concatenate(shards)
        assert len(set(flat.tolist())) == len(flat)
    assert not np.array_equal(epoch_shard(50, 2, 0, 0, 0), epoch_shard(50, 2, 0, 1, 0))  # reshuffled per epoch
    assert np.array_equal(epoch_shard(50, 2, 1, 3, 0), epoch_shard(50, 2, 1, 3, 0))
    assert steps_per_epoch(81, 2, 8) == 5 and steps_per_epoch(3, 2, 8) == 1
    with pytest.raises(DataError, match="fewer than the 4 workers"):
        epoch_shard(3, 4, 0, 0, 0)


def _png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(path)


def test_reader_skips_unreadable_images_and_keeps_batches_full(tmp_path: Path) -> None:
    uris = []
    for i in range(5):
        _png(tmp_path / f"{i}.png", 10 * i)
        uris.append(str(tmp_path / f"{i}.png"))
    (tmp_path / "bad.png").write_bytes(b"nope")
    uris.insert(2, str(tmp_path / "bad.png"))
    uris.append(str(tmp_path / "missing.png"))
    labels = np.arange(len(uris)) % 2
    skips = SkipLog()
    reader = ShardReader(uris, labels, np.arange(len(uris)), batch_size=4, steps=3, preprocess=Preprocess(size=8),
                         s3=None, threads=2, skips=skips)
    batches = list(reader)
    assert len(batches) == 3 and all(b[0].shape == (4, 8, 8, 3) and b[0].dtype == torch.uint8 for b in batches)
    assert {e["status"] for e in skips.examples} == {"unsupported", "missing"} and len(skips.bad) == 2
    # rows come in shard order, wrapping around, with the unreadable ones left out
    firsts = [int(b[0][0, 0, 0, 0]) for b in batches]
    assert firsts == [0, 40, 30]  # [0 10 20 30] [40 0 10 20] [30 40 0 10]
    assert list(ShardReader(uris, labels, np.arange(len(uris)), batch_size=4, steps=3, preprocess=Preprocess(size=8),
                            s3=None, threads=1, skips=skips, start_step=3)) == []


def test_reader_with_nothing_readable_raises(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    reader = ShardReader([str(tmp_path / "a.png")], np.zeros(1), np.arange(1), batch_size=2, steps=1,
                         preprocess=Preprocess(size=8), s3=None, threads=1, skips=SkipLog())
    with pytest.raises(DataError, match="no readable image in this worker"):
        list(reader)


def test_augment_keeps_shape_range_and_is_seeded() -> None:
    x = torch.rand(6, 3, 32, 32)
    a = augment(x, size=32, small_input=True, generator=torch.Generator().manual_seed(1))
    b = augment(x, size=32, small_input=True, generator=torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
    big = augment(torch.rand(2, 3, 40, 48), size=24, small_input=False, generator=torch.Generator().manual_seed(0))
    assert big.shape == (2, 3, 24, 24) and 0 <= big.min() and big.max() <= 1
    # pad-and-crop shifts content by whole pixels and fills with zeros
    ones = torch.ones(8, 3, 8, 8)
    shifted = random_crop_with_padding(ones, 2, torch.Generator().manual_seed(3))
    assert set(shifted.unique().tolist()) <= {0.0, 1.0} and shifted.sum() > 0
    flipped = random_hflip(torch.arange(4.0).view(1, 1, 1, 4).repeat(32, 3, 1, 1), torch.Generator().manual_seed(0))
    rows = {tuple(r.tolist()) for r in flipped[:, 0, 0]}
    assert rows == {(0.0, 1.0, 2.0, 3.0), (3.0, 2.0, 1.0, 0.0)}


def test_lr_schedule_warms_up_then_decays_to_zero() -> None:
    assert lr_at(0, 100, 0.1, 10) == pytest.approx(0.01)
    assert lr_at(10, 100, 0.1, 10) == pytest.approx(0.1)
    assert lr_at(100, 100, 0.1, 10) == pytest.approx(0.0)
    assert lr_at(55, 100, 0.1, 10) == pytest.approx(0.05)


@pytest.mark.parametrize("mode, optimizer", [("ce", "sgd"), ("alpa-finetune", "sgd"), ("joint", "adamw")])
def test_checkpoint_round_trip_without_pickles(tmp_path: Path, mode: str, optimizer: str) -> None:
    torch.manual_seed(0)
    cfg = TrainConfig(data="d", output="o.safetensors", mode=mode, optimizer=optimizer, init="i.safetensors")
    model = build_model("resnet18", 2, small_input=True)
    net = TrainNet(model, mode, image_size=32, mean=cfg.mean, std=cfg.std)
    opt = make_optimizer(cfg, [p for p in net.parameters() if p.requires_grad])
    out = net(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]))
    assert set(out) >= {"loss", "objective"} and torch.isfinite(out["loss"])
    out["loss"].backward()
    opt.step()
    write_checkpoint(tmp_path, model_state=model.state_dict(), heads_state=net.heads_state(), optimizer=opt,
                     train_state={"epoch": 1, "global_step": 7})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert all(n.endswith((".safetensors", ".json")) for n in names)
    assert ("heads.safetensors" in names) == (mode != "ce")
    for p in tmp_path.iterdir():
        assert not p.read_bytes().startswith(b"\x80")  # pickle protocol 2+ magic
    flat, meta = flatten_optimizer_state(opt.state_dict())
    assert all(k.startswith("state.") and k.count(".") >= 2 for k in flat)
    json.dumps(meta)

    data = read_checkpoint(tmp_path)
    assert data.train_state["global_step"] == 7
    model2 = build_model("resnet18", 2, small_input=True)
    net2 = TrainNet(model2, mode, image_size=32, mean=cfg.mean, std=cfg.std)
    opt2 = make_optimizer(cfg, [p for p in net2.parameters() if p.requires_grad])
    model2.load_state_dict(data.model_state, strict=True)
    net2.load_heads_state(data.heads_state)
    opt2.load_state_dict(data.optimizer_state(like=opt2))
    assert param_checksum(model2) == param_checksum(model)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for i, per in s1["state"].items():
        for key, value in per.items():
            assert torch.equal(value, s2["state"][i][key])


def test_alpa_finetune_freezes_the_classifier_head() -> None:
    net = TrainNet(build_model("resnet18", 3, small_input=True), "alpa-finetune", image_size=32,
                   mean=(0.5,) * 3, std=(0.5,) * 3)
    assert not any(p.requires_grad for p in net.taps.head.parameters())
    assert net.alpa is not None and net.supcon is None


def test_heads_and_identity_mismatches_are_refused(tmp_path: Path) -> None:
    joint = TrainNet(build_model("resnet18", 2, small_input=True), "joint", image_size=32, mean=(0.5,) * 3,
                     std=(0.5,) * 3)
    finetune = TrainNet(build_model("resnet18", 2, small_input=True), "alpa-finetune", image_size=32,
                        mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(CheckpointError, match="supcon"):
        finetune.load_heads_state(joint.heads_state())
    with pytest.raises(CheckpointError, match="arch='resnet18'"):
        check_compatible({"arch": "resnet18"}, {"arch": "resnet34"}, "r")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="incomplete"):
        read_checkpoint(tmp_path)


@pytest.mark.parametrize("changes, flag", [
    ({"epochs": 0}, "--epochs"), ({"mode": "supcon"}, "--mode"), ({"mode": "alpa-finetune"}, "--init"),
    ({"data": "hdfs://b/x"}, "--data"), ({"output": "out/model.pt"}, "--output"), ({"storage": "ftp://x"}, "--storage"),
    ({"batch_size": 0}, "--batch-size"), ({"lr": -1.0}, "--lr"), ({"arch": "resnet9"}, "--arch"),
    ({"workers": 0}, "--workers"), ({"device": "tpu"}, "--device"), ({"init": "hdfs://x"}, "--init"),
    ({"run_name": "a/b"}, "--run-name"), ({"checkpoint_every": 0}, "--checkpoint-every"),
])
def test_bad_settings_name_the_flag(changes: dict, flag: str) -> None:
    cfg = TrainConfig(data="/tmp/data", output="/tmp/out/model.safetensors")
    for key, value in changes.items():
        setattr(cfg, key, value)
    with pytest.raises(ConfigError, match=flag):
        cfg.validate()


def test_cli_errors_are_one_line(capsys, tmp_path: Path) -> None:
    out = str(tmp_path / "m.safetensors")
    cases = [(["--epochs", "0"], "--epochs"), (["--mode", "nope"], "--mode"),
             (["--mode", "alpa-finetune"], "--init"), (["--data", "hdfs://bucket/x"], "--data")]
    for extra, flag in cases:
        args = ["train", "--data", str(tmp_path), "--output", out, *extra]
        if extra[0] == "--data":
            args = ["train", "--output", out, *extra]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("ood-audit: error:") and flag in err and "\n" not in err


def test_empty_or_single_class_data_is_a_data_error(tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "m.safetensors")
    (tmp_path / "empty").mkdir()
    _png(tmp_path / "one" / "only" / "a.png", 5)
    for folder, expected in (("empty", "empty"), ("one", "at least two class folders")):
        assert main(["train", "--data", str(tmp_path / folder), "--output", out]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ood-audit: error:") and expected in err, err


def test_init_that_does_not_match_is_refused_before_ray_starts(tmp_path: Path, capsys) -> None:
    from ood_audit import save_weights

    for c in ("a", "b"):
        _png(tmp_path / "data" / c / "x.png", 1)
        _png(tmp_path / "data" / c / "y.png", 2)
    # Another number of classes alone would get a new head (SPEC §16); this init also has the 7x7 ImageNet
    # stem where the small-input model has a 3x3 one, and a mismatch outside the head stays an error.
    save_weights(build_model("resnet18", 5, small_input=False), tmp_path / "w5.safetensors")
    rc = main(["train", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "m.safetensors"),
               "--small-input", "--init", str(tmp_path / "w5.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and "shape mismatch at conv1.weight" in err and "Traceback" not in err, err
    assert len([ln for ln in err.splitlines() if ln.startswith("ood-audit: error:")]) == 1, err
    rc = main(["train", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "m.safetensors"),
               "--init", str(tmp_path / "missing.safetensors")])
    assert rc == 2 and "--init" in capsys.readouterr().err


def test_worker_resources_follow_the_cluster() -> None:
    from ood_audit.training.trainer import _resources

    cfg = TrainConfig(data="d", output="o.safetensors", workers=2)
    assert _resources(cfg, {"CPU": 2.0}) == (False, 1.0)
    assert _resources(cfg, {"CPU": 16.0, "GPU": 2.0}) == (True, 8.0)
    assert _resources(cfg, {"CPU": 1.0}) == (False, 0.5)            # fewer CPUs than workers: share them
    cfg.device = "cpu"
    assert _resources(cfg, {"CPU": 4.0, "GPU": 8.0}) == (False, 2.0)
    cfg.device, cfg.cpus_per_worker = "auto", 1.5
    with pytest.raises(ConfigError, match="--workers 2 needs 2 GPU"):
        _resources(cfg, {"CPU": 8.0, "GPU": 1.0})
    assert _resources(cfg, {"CPU": 8.0}) == (False, 1.5)


def test_worker_errors_come_back_as_product_errors() -> None:
    from ray.train import WorkerGroupError

    from ood_audit.training.trainer import _user_error

    wrapped = RuntimeError("task failed")
    wrapped.__cause__ = DataError("no readable image in this worker's shard")
    err = _user_error(WorkerGroupError("boom", {1: wrapped}))
    assert isinstance(err, DataError) and "no readable image" in str(err)
    assert _user_error(WorkerGroupError("boom", {0: RuntimeError("gloo")})) is None
