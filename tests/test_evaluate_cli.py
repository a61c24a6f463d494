"""`ood-audit evaluate` end to end on tiny generated folders, through the real CLI entry point."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ood_audit import build_model, save_weights
from ood_audit.cli import main


def _write_images(folder, n, kind, seed):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if kind == "stripes":
            a = np.zeros((32, 32, 3), np.uint8)
            a[:, :: 4 + i % 3] = 200 + rng.integers(0, 55)
        else:
            a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(a).save(folder / f"img_{i}.png")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    _write_images(root / "train" / "a", 40, "stripes", 0)
    _write_images(root / "train" / "b", 40, "stripes", 1)
    _write_images(root / "test", 30, "stripes", 2)
    _write_images(root / "noise", 30, "noise", 3)
    (root / "noise" / "notes.txt").write_text("not an image")
    w = root / "w.safetensors"
    save_weights(build_model("resnet18", 2, small_input=True), w)
    return root


def test_evaluate_prints_table_and_json(folders, capsys):
    out_json = folders / "out.json"
    rc = main(["evaluate", "--arch", "resnet18", "--small-input", "--weights", str(folders / "w.safetensors"),
               "--id-train", str(folders / "train"), "--id-test", str(folders / "test"),
               "--ood", f"noise={folders / 'noise'}", "--json", str(out_json), "--batch-size", "32",
               "--selector", "normratio"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "selected block:" in text and "ID = positive class" in text
    data = json.loads(out_json.read_text())
    scores = {r["score"] for r in data["results"]}
    assert {"featurenorm", "featurenorm2", "msp", "energy", "maxlogit", "msp+fn", "energy+fn", "csd", "knn"} <= scores
    assert data["selection"]["selector"] == "normratio" and set(data["selection"]["choices"]) == {"normratio", "robust"}
    assert set(data["norm_ratios"]) == {f"layer{i}.{j}" for i in range(1, 5) for j in range(2)}
    assert data["selected_block"] == max(data["norm_ratios"], key=data["norm_ratios"].get)
    assert data["skipped_files"]["noise"] == 1
    assert data["counts"] == {"id_train": 80, "id_test": 30, "noise": 30}
    for r in data["results"]:
        assert 0.0 <= r["fpr95"] <= 1.0 and 0.0 <= r["auroc"] <= 1.0


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ood_audit.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, needle", [
    (["blocks", "resnet19"], "unknown architecture 'resnet19'"),
    (["evaluate", "--arch", "resnet18", "--weights", "w", "--id-train", "a", "--id-test", "b"], "--ood"),
])
def test_bad_arguments_are_one_line(args, needle):
    r = _cli(*args)
    assert r.returncode != 0
    assert needle in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bad_inputs_are_one_line(folders, tmp_path):
    (tmp_path / "empty").mkdir()
    w = str(folders / "w.safetensors")
    base = ["evaluate", "--arch", "resnet18", "--small-input", "--id-test", str(folders / "test"),
            "--ood", str(folders / "noise")]
    cases = [
        (base + ["--weights", w, "--id-train", str(tmp_path / "empty")], "is empty"),
        (base + ["--weights", w, "--id-train", str(folders / "train"), "--block", "layer9.9"], "valid blocks"),
    ]
    w34 = tmp_path / "r34.safetensors"
    save_weights(build_model("resnet34", 2, small_input=True), w34)
    cases.append((base + ["--weights", str(w34), "--id-train", str(folders / "train")], "does not match"))
    for args, needle in cases:
        r = _cli(*args)
        assert r.returncode == 2, r.stderr
        assert needle in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()[-1:]) == 1 and r.stderr.strip().splitlines()[-1].startswith("ood-audit: error")


def test_blocks_command(capsys):
    assert main(["blocks", "resnet18"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["layer1.0", "layer1.1"] and "layer4.1" in out
