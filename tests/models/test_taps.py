import pytest
import torch

from ood_audit import TapModel, block_candidates, build_model
from ood_audit.errors import CheckpointError, ConfigError
from ood_audit.models import ARCHITECTURES, load_weights, save_weights


# A real forward per architecture costs seconds for the big variants; the families of SPEC §16 are checked
# in test_families.py (every architecture's taps on the meta device, the smallest of each family for real).
FIRST_FAMILIES = ("resnet18", "resnet34", "resnet50", "wide_resnet50_2", "vgg11_bn", "vgg16_bn", "mobilenet_v2",
                  "mobilenet_v3_large", "densenet121")


def test_first_families_are_known():
    assert set(FIRST_FAMILIES) <= set(ARCHITECTURES)


@pytest.mark.parametrize("arch", FIRST_FAMILIES)
def test_candidates_exist_and_taps_have_shapes(arch):
    model = build_model(arch, num_classes=5, small_input=True).eval()
    cands = block_candidates(model)
    assert len(cands) >= 4
    assert all("fc" not in c and "classifier" not in c and "conv1" != c for c in cands)
    tap = TapModel(model, blocks=[cands[0], cands[-1]])
    with torch.no_grad():
        out = tap(torch.rand(2, 3, 32, 32))
    assert out.logits.shape == (2, 5)
    assert out.penultimate.dim() == 2 and out.penultimate.shape[0] == 2
    assert out.last_map.dim() == 4 and out.last_map.shape[-1] >= 2
    assert set(out.blocks) == {cands[0], cands[-1]}


def test_resnet18_small_input_layer4_is_512x4x4():
    model = build_model("resnet18", 10, small_input=True).eval()
    assert block_candidates(model) == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.padding == (1, 1)
    tap = TapModel(model, blocks=["layer4.1", "layer3.0"])
    with torch.no_grad():
        out = tap(torch.rand(3, 3, 32, 32))
    assert out.blocks["layer4.1"].shape == (3, 512, 4, 4)
    assert out.last_map.shape == (3, 512, 4, 4)
    assert out.blocks["layer3.0"].shape == (3, 256, 8, 8)


def test_taps_equal_forward_hook_outputs_and_plain_logits():
    torch.manual_seed(0)
    model = build_model("resnet18", 4, small_input=True).eval()
    seen = {}
    h = model.layer2.get_submodule("1").register_forward_hook(lambda m, i, o: seen.__setitem__("l2", o.clone()))
    x = torch.rand(2, 3, 32, 32)
    tap = TapModel(model, blocks=["layer2.1"], mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    with torch.no_grad():
        ref_logits = model((x - 0.5) / 0.25)
        out = tap(x)
    h.remove()
    torch.testing.assert_close(out.blocks["layer2.1"], seen["l2"])
    torch.testing.assert_close(out.logits, ref_logits)
    torch.testing.assert_close(out.logits, out.penultimate @ model.fc.weight.t() + model.fc.bias)


def test_unknown_arch_and_block_name_valid_choices():
    with pytest.raises(ConfigError, match="resnet18"):
        build_model("resnet19", 10)
    with pytest.raises(ConfigError, match="layer4.1"):
        TapModel(build_model("resnet18", 10), blocks=["layer9.0"])


def test_strict_loading_roundtrip_and_mismatch(tmp_path):
    a = build_model("resnet18", 10, small_input=True)
    p = tmp_path / "w.safetensors"
    save_weights(a, p)
    b = load_weights(build_model("resnet18", 10, small_input=True), p)
    for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_weights(build_model("resnet18", 7, small_input=True), p)
    with pytest.raises(CheckpointError, match="missing|unexpected"):
        load_weights(build_model("resnet34", 10, small_input=True), p)
