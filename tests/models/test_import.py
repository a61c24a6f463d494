"""`ood-audit weights import` / ``ood_audit.import_weights`` (SPEC §16): torchvision checkpoints saved here
(random init, nothing downloaded) import and load strictly; unsafe or mismatching files are one line, exit 2."""
from __future__ import annotations

import hashlib
import json
import pickle
import re

import pytest
import torch
import torchvision.models as tvm
from safetensors.torch import save_file

import ood_audit
from ood_audit.cli import main
from ood_audit.models import ModelSpec, read_state


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """torchvision's own builders, random init, saved the way torchvision users save them."""
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    states = {"resnet50": tvm.resnet50(weights=None).state_dict(),
              "convnext_tiny": tvm.convnext_tiny(weights=None).state_dict(),
              "efficientnet_b0": tvm.efficientnet_b0(weights=None, num_classes=37).state_dict()}
    torch.save(states["resnet50"], root / "resnet50.pth")
    torch.save({"state_dict": states["convnext_tiny"], "epoch": 3}, root / "convnext_tiny.pth")  # wrapped
    torch.save(states["efficientnet_b0"], root / "efficientnet_b0.pt")
    return root, states


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("ood-audit: error: ")
    return err[0]


@pytest.mark.parametrize("arch,name,classes", [("resnet50", "resnet50.pth", 1000),
                                               ("convnext_tiny", "convnext_tiny.pth", 1000),
                                               ("efficientnet_b0", "efficientnet_b0.pt", 37)])
def test_torchvision_checkpoint_imports_and_loads_strictly(arch, name, classes, checkpoints, tmp_path, capsys):
    root, states = checkpoints
    src, dst = root / name, tmp_path / "w" / f"{arch}.safetensors"
    extra = ["--classes", "imagenet"] if classes == 1000 else []
    assert main(["weights", "import", str(src), "--arch", arch, "--output", str(dst), *extra]) == 0
    assert str(dst) in capsys.readouterr().out
    sidecar = json.loads((tmp_path / "w" / f"{arch}.json").read_text())
    spec = ModelSpec.from_dict(sidecar)
    assert (spec.arch, spec.num_classes, spec.image_size, spec.small_input) == (arch, classes, 224, False)
    assert list(spec.mean) == [0.485, 0.456, 0.406] and list(spec.std) == [0.229, 0.224, 0.225]
    assert (spec.class_names or [])[:2] == (["tench", "goldfish"] if classes == 1000 else [])
    assert sidecar["sha256"] == _sha(dst)
    assert sidecar["provenance"] == {"how": "imported", "source": str(src), "source_sha256": _sha(src), "run": None,
                                     "init": None, "init_sha256": None, "recipe": None}
    got = read_state(dst)
    assert got.keys() == states[arch].keys()
    assert all(torch.equal(got[k], v) for k, v in states[arch].items())
    spec.build(got, source=str(dst))  # strict, into the model the sidecar describes


def test_timm_convnext_names_are_mapped(checkpoints, tmp_path):
    """The same ConvNeXt under timm's names (stem / stages.S.downsample|blocks / head, gamma of shape [C])."""
    _, states = checkpoints

    def timm_name(key: str) -> str:
        m = re.match(r"features\.(\d+)\.(\d+)\.(.*)", key)
        if m is None:
            return {"classifier.0.weight": "head.norm.weight", "classifier.0.bias": "head.norm.bias",
                    "classifier.2.weight": "head.fc.weight", "classifier.2.bias": "head.fc.bias"}[key]
        i, j, rest = int(m[1]), m[2], m[3]
        if i == 0:
            return f"stem.{j}.{rest}"
        if i % 2 == 0:
            return f"stages.{i // 2}.downsample.{j}.{rest}"
        part = {"block.0": "conv_dw", "block.2": "norm", "block.3": "mlp.fc1", "block.5": "mlp.fc2"}
        if rest == "layer_scale":
            return f"stages.{i // 2}.blocks.{j}.gamma"
        layer, param = rest.rsplit(".", 1)
        return f"stages.{i // 2}.blocks.{j}.{part[layer]}.{param}"

    tv = states["convnext_tiny"]
    timm = {timm_name(k): (v.flatten() if k.endswith("layer_scale") else v).contiguous() for k, v in tv.items()}
    assert len(timm) == len(tv) and "stages.3.blocks.2.gamma" in timm
    save_file(timm, str(tmp_path / "timm.safetensors"))
    res = ood_audit.import_weights(str(tmp_path / "timm.safetensors"), "convnext_tiny", str(tmp_path / "out.safetensors"))
    assert res.renamed == len(tv) and res.spec.num_classes == 1000
    got = read_state(tmp_path / "out.safetensors")
    assert all(torch.equal(got[k], v) for k, v in tv.items())


class NotAStateDict:
    pass


def test_a_pickled_object_is_refused_by_the_safe_loader_in_one_line(tmp_path, capsys):
    src = tmp_path / "evil.pth"
    torch.save({"model": NotAStateDict()}, src)
    assert main(["weights", "import", str(src), "--arch", "resnet50", "--output", str(tmp_path / "o.safetensors")]) == 2
    line = _one_error_line(capsys)
    assert str(src) in line and "weights_only=True" in line and "NotAStateDict" in line
    assert "trust" not in line  # torch's hint to allow-list the class is not passed on
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"layer": [1.0, 2.0]}))
    assert main(["weights", "import", str(plain), "--arch", "resnet50", "--output", str(tmp_path / "o.safetensors")]) == 2
    assert str(plain) in _one_error_line(capsys)
    assert not list(tmp_path.glob("o.*"))


def test_a_file_for_another_arch_is_refused_in_one_line(checkpoints, tmp_path, capsys):
    root, _ = checkpoints
    for arch in ("convnext_tiny", "resnext50_32x4d"):  # another family; the same family, other shapes
        out = tmp_path / f"{arch}.safetensors"
        assert main(["weights", "import", str(root / "resnet50.pth"), "--arch", arch, "--output", str(out)]) == 2
        line = _one_error_line(capsys)
        assert str(root / "resnet50.pth") in line and arch in line
        assert not out.exists()


# timm model -> the torchvision architecture it equals (same tensors, same forward); found by building both
# with random weights and comparing shapes and logits, not by their names (regnety_008 and regnety_080 have
# other widths than torchvision's 800mf / 8gf; their "_tv" variants are torchvision's).
TIMM_PAIRS = [("efficientnet_b0", "efficientnet_b0"), ("efficientnet_b1", "efficientnet_b1"),
              ("efficientnet_b2", "efficientnet_b2"), ("efficientnet_b3", "efficientnet_b3"),
              ("regnety_004", "regnet_y_400mf"), ("regnety_008_tv", "regnet_y_800mf"),
              ("regnety_016", "regnet_y_1_6gf"), ("regnety_032", "regnet_y_3_2gf")]
# Left out to keep the file fast: regnety_080_tv -> regnet_y_8gf (39M parameters, ~5 s on a loaded 2-core
# machine, the cost of the three smallest RegNets together) uses the same rules as the RegNets above and was
# checked equal the same way (max |logit difference| 0) when the map was written.


@pytest.fixture
def one_thread():
    # Small forwards: one intra-op thread is as fast, and it does not stall in OpenMP barriers when other
    # processes share the CPU (efficientnet_b1 at 64 px: 0.05 s on one thread, seconds on two under load).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _timm_model(name: str, seed: int = 0) -> torch.nn.Module:
    """A timm model, random init (nothing downloaded), eval mode, with random BatchNorm statistics: at
    init they are the identity and the logits are so small that timm's tf_ variants (another padding, another
    eps) come within 1e-5 of torchvision's; with these, a wrong map or another network shows in the logits."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(n, generator=g) * 0.1)
            bn.num_batches_tracked.fill_(7)  # mapped too: a strict load would miss it otherwise
    return model


def _save_timm(model: torch.nn.Module, path) -> dict[str, torch.Tensor]:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    return state


@pytest.mark.parametrize("timm_name,arch", TIMM_PAIRS)
def test_timm_checkpoint_imports_as_the_same_torchvision_network(timm_name, arch, tmp_path, one_thread):
    model = _timm_model(timm_name)
    state = _save_timm(model, tmp_path / f"{timm_name}.safetensors")
    res = ood_audit.import_weights(str(tmp_path / f"{timm_name}.safetensors"), arch, str(tmp_path / "out.safetensors"))
    assert (res.spec.arch, res.spec.num_classes) == (arch, 1000)
    tv = res.spec.build(read_state(tmp_path / "out.safetensors"), source=res.output)
    assert res.renamed == sum(k not in tv.state_dict() for k in state)  # every timm name is mapped
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, got = model(x), tv(x)
    assert want.abs().max() > 0.1  # logits large enough for the tolerance below to tell networks apart
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_timm_tf_efficientnet_loads_but_is_another_network(tmp_path, one_thread):
    """tf_efficientnet_b0 has efficientnet_b0's names and shapes (nothing in the file says otherwise) but TF
    "same" padding and BatchNorm eps 1e-3: it imports, and the logits show it is not torchvision's network.
    This is the limit the README states, and the proof that the forward check above can fail."""
    model = _timm_model("tf_efficientnet_b0")
    _save_timm(model, tmp_path / "tf.safetensors")
    res = ood_audit.import_weights(str(tmp_path / "tf.safetensors"), "efficientnet_b0", str(tmp_path / "o.safetensors"))
    tv = res.spec.build(read_state(tmp_path / "o.safetensors"))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (tv(x) - model(x)).abs().max() > 1e-3


def test_a_timm_regnet_of_other_widths_is_refused_in_one_line(tmp_path, capsys, one_thread):
    """timm's regnety_008 is not torchvision's regnet_y_800mf (other widths; regnety_008_tv is)."""
    src, out = tmp_path / "regnety_008.safetensors", tmp_path / "o.safetensors"
    _save_timm(_timm_model("regnety_008"), src)
    assert main(["weights", "import", str(src), "--arch", "regnet_y_800mf", "--output", str(out)]) == 2
    line = _one_error_line(capsys)
    assert str(src) in line and "regnet_y_800mf" in line and "names mapped from timm's" in line
    assert re.search(r"shape mismatch at trunk_output\.block\d\.block\d-\d+\.\S+: checkpoint \(\d+, ", line), line
    assert not out.exists()
