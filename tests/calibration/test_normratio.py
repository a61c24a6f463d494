import numpy as np
import torch

from ood_audit import build_model, norm_ratio
from ood_audit.calibration.normratio import norm_ratio_sums, ratios_from_sums
from ood_audit.models import TapModel
from ood_audit.scores.jigsaw import jigsaw_indexed

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _hooked_norms(model, x, blocks):
    """Independent path: plain forward hooks + numpy FeatureNorm."""
    outs = {}
    hooks = [model.get_submodule(b).register_forward_hook(lambda m, i, o, b=b: outs.__setitem__(b, o.detach().numpy().copy()))
             for b in blocks]
    with torch.no_grad():
        model((x - MEAN[0]) / STD[0])
    for h in hooks:
        h.remove()
    return {b: np.sqrt((np.maximum(outs[b], 0) ** 2).sum(axis=(2, 3))).mean(axis=1) for b in blocks}


def test_norm_ratio_is_mean_of_paired_ratios_not_ratio_of_means():
    torch.manual_seed(0)
    model = build_model("resnet18", 3, small_input=True).eval()
    blocks = ["layer1.0", "layer3.1", "layer4.1"]
    # 33 px divides into 3x3 tiles exactly, so a constant image's jigsaw is itself (ratio exactly 1),
    # while a structured image of very different magnitude has a ratio far from 1.
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 33), torch.linspace(0, 1, 33), indexing="ij")
    structured = (((yy * 3).floor() + (xx * 3).floor()) % 2 * 0.9 + 0.05 * xx).expand(3, 33, 33)
    x = torch.stack([torch.full((3, 33, 33), 0.9), structured * 0.2, torch.full((3, 33, 33), 0.1),
                     structured, torch.full((3, 33, 33), 0.6), structured.flip(-1)])
    xj = jigsaw_indexed(x, torch.arange(6), seed=11)
    n_id, n_jig = _hooked_norms(model, x, blocks), _hooked_norms(model, xj, blocks)
    res = norm_ratio(model, [x[:4], x[4:]], blocks=blocks, seed=11, mean=MEAN, std=STD)
    assert res.count == 6
    separated = 0
    for b in blocks:
        paired = np.mean(n_id[b] / n_jig[b])
        of_means = n_id[b].mean() / n_jig[b].mean()
        np.testing.assert_allclose(res.ratios[b], paired, rtol=1e-5)
        # where the estimators differ, ours sits 100x closer to the paired mean than to the ratio of means
        if abs(paired - of_means) > 1e-3 * abs(paired):
            separated += 1
            assert abs(res.ratios[b] - of_means) > 100 * abs(res.ratios[b] - paired)
    assert separated >= 1
    assert res.selected == max(blocks, key=lambda b: np.mean(n_id[b] / n_jig[b]))


def test_sharded_sums_equal_single_pass_and_dataloader_tuples_work():
    torch.manual_seed(1)
    model = build_model("resnet18", 3, small_input=True).eval()
    tap = TapModel(model, blocks=["layer2.0", "layer4.1"], mean=MEAN, std=STD)
    x = torch.rand(7, 3, 32, 32)
    y = torch.zeros(7, dtype=torch.long)
    whole = norm_ratio(tap, [(x, y)], seed=5)
    s1, c1 = norm_ratio_sums(tap, [{"image": x[[0, 2, 4, 6]], "index": torch.tensor([0, 2, 4, 6])}], seed=5)
    s2, c2 = norm_ratio_sums(tap, [{"image": x[[1, 3, 5]], "index": torch.tensor([1, 3, 5])}], seed=5)
    combined = ratios_from_sums(tap.blocks, s1 + s2, c1 + c2)
    for b in tap.blocks:
        np.testing.assert_allclose(combined.ratios[b], whole.ratios[b], rtol=1e-9)
    assert combined.selected == whole.selected


def test_last_block_can_win():
    from ood_audit.calibration.normratio import select_block

    assert select_block({"a": 1.0, "b": 2.0, "c": 3.5}) == "c"
