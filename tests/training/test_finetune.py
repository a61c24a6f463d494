"""Fine-tuning with a new head (SPEC §16): a classifier trained here on one real task (scikit-learn's digits,
10 classes) is the ``--init`` of another with 2 classes (scikit-image's ``lfw_subset``: faces vs non-faces).

Real Ray Train (gloo, CPU workers) through the command line, as a user runs it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import wilcoxon

from ood_audit.cli import main
from ood_audit.models import IMAGENET_MEAN, IMAGENET_STD, build_model, load_weights, save_weights
from ood_audit.training.net import TrainNet
from tests.datagen import lfw_faces, write_local

pytestmark = [pytest.mark.slow]

COMMON = ["--small-input", "--batch-size", "16", "--workers", "1", "--val-fraction", "0.45", "--log-every", "600"]


@pytest.fixture(scope="module")
def digits_init(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet18 (small input) trained for 2 epochs on 320 real digits, in process: the 'pretrained' model.
    Under the training precision the product would pick here (bf16 autocast on a CPU with AMX)."""
    from ood_audit.demo.data import digit_variants
    from ood_audit.models.precision import training_precision

    images, labels = digit_variants(320, seed=3)
    torch.manual_seed(0)
    model = build_model("resnet18", 10, small_input=True)
    net = TrainNet(model, "ce", image_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                   precision=training_precision("auto", "cpu"))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)  # learns the digits in a few steps (loss ~0.4 after 10)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    y = torch.from_numpy(labels).long()
    net.train()
    for epoch in range(2):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for start in range(0, len(x), 32):
            rows = order[start: start + 32]
            loss = net(x[rows], y[rows])["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    path = tmp_path_factory.mktemp("init") / "digits.safetensors"
    save_weights(model, path)
    return path


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``face/`` and ``other/``: the 100 faces and 100 non-face crops of ``lfw_subset``, 25 px grey -> 32 px RGB."""
    return write_local(tmp_path_factory.mktemp("faces"), lfw_faces(32))


def _train(args: list[str], tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture) -> tuple[int, dict, list[str]]:
    """Exit status, the metadata beside the weights, and the lines that said a head was re-initialised."""
    out = tmp_path / f"{name}.safetensors"
    caplog.clear()
    with caplog.at_level(logging.INFO):
        rc = main(["train", "--output", str(out), "--storage", str(tmp_path / "runs"), "--run-name", name,
                   "--json", str(tmp_path / f"{name}-summary.json"), *COMMON, *args])
    head = [r.getMessage() for r in caplog.records if "new classifier head" in r.getMessage()]
    return rc, json.loads((tmp_path / f"{name}.json").read_text()) if rc in (0, 3) else {}, head


def _held_out(weights: Path, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """On the run's own held-out images, in eval mode: which ones the 2-class model classifies right, and its
    cross-entropy on each."""
    from ood_audit.io.dataset import load_labelled
    from ood_audit.models import TapModel
    from ood_audit.training.data import validation_split

    dataset = load_labelled(str(data))
    uris = dataset.uris()
    _, val = validation_split(uris, dataset.source, float(COMMON[COMMON.index("--val-fraction") + 1]))
    x = torch.from_numpy(np.stack([np.asarray(Image.open(uris[i]).convert("RGB")) for i in val]))
    model = TapModel(load_weights(build_model("resnet18", 2, small_input=True), weights), mean=IMAGENET_MEAN,
                     std=IMAGENET_STD).eval()
    labels = torch.from_numpy(dataset.labels()[val]).long()
    with torch.no_grad():
        logits = model(x.permute(0, 3, 1, 2).float() / 255.0).logits
    nll = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    return (logits.argmax(1) == labels).numpy(), nll.numpy()


@pytest.mark.timeout(900)
def test_a_new_head_on_a_pretrained_init_learns_and_beats_scratch(ray_local, digits_init, faces, tmp_path,
                                                                   caplog) -> None:
    """One epoch with the defaults from the digits model, then the same one from scratch, on the same split."""
    rc, tuned, head = _train(["--data", str(faces), "--init", str(digits_init), "--epochs", "1"], tmp_path, "tuned",
                             caplog)
    assert rc == 0 and len(head) == 1, (rc, head)
    assert "2 tensor(s) re-initialised: fc.weight (10, 512) -> (2, 512), fc.bias (10,) -> (2,)" in head[0]
    rc, scratch, head = _train(["--data", str(faces), "--epochs", "1"], tmp_path, "scratch", caplog)
    assert rc in (0, 3) and not head, rc

    assert tuned["validation"]["images_scored"] == scratch["validation"]["images_scored"] >= 70
    # Clearly above chance: the binomial bound the product itself applies (training/data.learned_margin).
    assert tuned["val_accuracy"] > tuned["validation"]["learned_above"], tuned["history"]
    # Faster than from scratch: after the same first epoch, further along on the same held-out images. Paired,
    # per image: the tuned model's cross-entropy is lower than scratch's (one-sided Wilcoxon signed-rank test).
    # Its per-image losses carry far more evidence than right/wrong, which on 86 images of an easy task leaves
    # too few images that only one model gets right for a test at this level.
    tuned_right, tuned_nll = _held_out(tmp_path / "tuned.safetensors", faces)
    scratch_right, scratch_nll = _held_out(tmp_path / "scratch.safetensors", faces)
    assert tuned_right.mean() == pytest.approx(tuned["val_accuracy"])       # the images the run validated on
    assert scratch_right.mean() == pytest.approx(scratch["val_accuracy"])
    p_tie = wilcoxon(tuned_nll, scratch_nll, alternative="less").pvalue
    assert p_tie < 0.01, (p_tie, tuned["val_loss"], scratch["val_loss"], tuned["val_accuracy"], scratch["val_accuracy"])

    # The defaults for a pretrained init, and the provenance the bundle reads.
    prov = tuned["provenance"]
    assert prov["how"] == "trained" and prov["run"] == "tuned" and prov["init"] == str(digits_init)
    assert prov["init_sha256"] == hashlib.sha256(digits_init.read_bytes()).hexdigest()
    assert prov["recipe"]["backbone_lr_scale"] == 0.1 and prov["recipe"]["freeze_backbone_epochs"] == 0
    assert scratch["provenance"]["init"] is None and scratch["provenance"]["recipe"]["backbone_lr_scale"] == 1.0
    load_weights(build_model("resnet18", 2, small_input=True), tmp_path / "tuned.safetensors")


@pytest.mark.timeout(900)
def test_alpa_finetune_from_the_init_runs_on_two_workers(ray_local, digits_init, faces, tmp_path, caplog) -> None:
    """MODE-F from the digits model on faces: a new head, L_ALPA on 2 DDP workers, a usable 2-class model.
    The first epoch is a linear-probe warm-up (the backbone stays as it was), the second trains it all."""
    from safetensors.torch import load_file

    rc, record, head = _train(["--data", str(faces), "--init", str(digits_init), "--mode", "alpa-finetune",
                            "--epochs", "2", "--workers", "2", "--batch-size", "8", "--freeze-backbone-epochs", "1"],
                           tmp_path, "modef", caplog)
    assert rc in (0, 3), rc  # two short epochs of ALPA are not asked to classify well, only to run
    assert len(head) == 1 and "fc.weight (10, 512) -> (2, 512)" in head[0], head
    assert record["mode"] == "alpa-finetune" and record["num_classes"] == 2 and record["epochs"] == 2
    first, last = sorted((tmp_path / "runs" / "modef").glob("checkpoint_step*"))[-2:]
    init, probed, final = (load_file(str(p)) for p in (digits_init, first / "model.safetensors",
                                                        last / "model.safetensors"))
    assert torch.equal(probed["layer3.0.conv1.weight"], init["layer3.0.conv1.weight"])      # frozen in epoch 1
    assert not torch.equal(final["layer3.0.conv1.weight"], init["layer3.0.conv1.weight"])   # trained in epoch 2
    assert not torch.equal(probed["fc.weight"], final["fc.weight"])                          # the head all along
    assert record["config"]["workers"] == 2 and math.isfinite(record["final_loss"])
    recipe = record["provenance"]["recipe"]
    assert recipe["backbone_lr_scale"] == 1.0 and recipe["freeze_backbone_epochs"] == 1  # MODE-F: all at one rate
    summary = json.loads((tmp_path / "modef-summary.json").read_text())
    assert len(set(summary["param_checksums"])) == 1 and len(summary["param_checksums"]) == 2  # ranks agree
    load_weights(build_model("resnet18", 2, small_input=True), tmp_path / "modef.safetensors")
