"""Training that learns with its defaults, on real handwritten digits, and the guards against silent failure.

Real Ray Train (2 CPU workers, gloo) through the command line, as a user runs it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ood_audit.cli import main
from ood_audit.demo.tour import QUICK
from ood_audit.training import TrainConfig
from tests.datagen import png_bytes, write_local

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    from ood_audit.demo import write_digit_folders

    return write_digit_folders(tmp_path_factory.mktemp("digits"), 900, seed=1)


@pytest.mark.timeout(1800)  # the session's quick demo may start here
def test_defaults_learn_real_digits(quick_demo) -> None:
    """Nothing but the data, the architecture and the epochs: the default lr, warm-up, batch and workers.

    The run is the quick demo's cross-entropy training (:mod:`tests.fixtures.demo_run`; the suite trains
    that model once): ``QUICK.epochs`` epochs of a ResNet18 on real handwritten digits, through ``ood-audit demo``.
    """
    assert quick_demo.code == 0
    ce = quick_demo.trainings[0]
    defaults = TrainConfig(data="unused", output="unused.safetensors")
    assert ce.config.mode == defaults.mode == "ce" and ce.config.epochs == QUICK.epochs
    for name in ("lr", "warmup_epochs", "batch_size", "workers", "optimizer", "weight_decay"):
        assert getattr(ce.config, name) == getattr(defaults, name), name
    result = ce.result
    assert result.warning is None
    assert result.epochs_completed == QUICK.epochs
    assert result.val_images > 60 and result.val_accuracy >= 0.90, result.history
    assert ce.record["val_accuracy"] == result.val_accuracy and ce.record["config"]["lr"] == pytest.approx(0.05)


@pytest.mark.timeout(300)
def test_huge_lr_stops_with_one_line_naming_the_step(ray_local, digits, tmp_path, capsys) -> None:
    rc = main(["train", "--data", str(digits), "--output", str(tmp_path / "m.safetensors"), "--small-input",
               "--epochs", "2", "--lr", "1e9", "--batch-size", "16", "--storage", str(tmp_path / "runs"),
               "--run-name", "boom"])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("ood-audit: error:")]
    assert len(lines) == 1 and "at step" in lines[0] and "lower --lr" in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.timeout(300)
def test_a_model_stuck_at_chance_warns_and_exits_3(ray_local, tmp_path, capsys) -> None:
    """Noise images with random labels: nothing to learn, so validation stays at chance."""
    rng = np.random.default_rng(0)
    files = {f"c{int(rng.integers(0, 4))}/{i:03d}.png": png_bytes(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
             for i in range(160)}
    data = write_local(tmp_path / "noise", files)
    rc = main(["train", "--data", str(data), "--output", str(tmp_path / "m.safetensors"), "--small-input",
               "--epochs", "1", "--batch-size", "16", "--storage", str(tmp_path / "runs"), "--run-name", "chance",
               "--json", str(tmp_path / "s.json")])
    printed = capsys.readouterr()
    assert rc == 3, printed.err
    assert "WARNING: the model did not learn" in printed.err
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["warning"].startswith("the model did not learn")
    assert summary["val_accuracy"] <= json.loads((tmp_path / "m.json").read_text())["validation"]["learned_above"]
    assert f"validation accuracy: {summary['val_accuracy']:.3f}" in printed.out
    assert "PlacementGroupCleaner" not in printed.out + printed.err  # Ray's own noise stays in its log files
    assert (tmp_path / "m.safetensors").exists()  # the weights are still written, for inspection
