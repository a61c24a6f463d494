"""featurenorm2 = −|log FN − median_ID(log FN)| / MAD_ID(log FN): numpy reference, MAD guard, Scorer wiring."""
import numpy as np
import torch

from ood_audit import build_model
from ood_audit.models import TapModel
from ood_audit.scores.featurenorm import feature_norm_two_sided, two_sided_stats
from ood_audit.scores.scorer import Scorer


def _reference(fn: np.ndarray, heldout: np.ndarray) -> np.ndarray:
    logs = np.log(heldout)
    med = np.median(logs)
    mad = np.median(np.abs(logs - med))
    return -np.abs(np.log(fn) - med) / mad


def test_equals_numpy_reference():
    rng = np.random.default_rng(0)
    heldout = rng.lognormal(mean=2.0, sigma=0.3, size=501)
    fn = np.concatenate([rng.lognormal(2.0, 0.3, 50), [1e-3, 1e3, float(np.exp(2.0))]])
    c, s = two_sided_stats(heldout)
    got = feature_norm_two_sided(torch.from_numpy(fn), c, s).numpy()
    np.testing.assert_allclose(got, _reference(fn, heldout), rtol=1e-12)
    assert got.dtype == np.float64
    # two-sided: both a much lower and a much higher norm score far below a typical one
    assert got[-3] < -5 and got[-2] < -5 and got[-1] > -0.1
    # float32 input (as the scorer has it) gives the same as its float64 copy
    f32 = torch.from_numpy(fn.astype(np.float32))
    assert torch.equal(feature_norm_two_sided(f32, c, s), feature_norm_two_sided(f32.double(), c, s))


def test_mad_zero_and_zero_norm_are_guarded():
    heldout = np.array([2.0, 2.0, 2.0, 2.0, 3.0])  # more than half tie: MAD = 0
    c, s = two_sided_stats(heldout)
    assert c == np.log(2.0) and s > 0
    assert two_sided_stats(np.full(7, 5.0))[1] == 1.0
    out = feature_norm_two_sided(torch.tensor([0.0, 2.0, 3.0]), c, s)
    assert torch.isfinite(out).all() and out[1] == 0 and out[0] < out[2] < 0
    assert torch.isfinite(feature_norm_two_sided(torch.tensor([1.0, 4.0]), 0.0, 0.0)).all()


def test_scorer_adds_featurenorm2_from_its_featurenorm():
    torch.manual_seed(0)
    tap = TapModel(build_model("resnet18", 3, small_input=True), blocks=["layer2.0"])
    x = torch.rand(5, 3, 32, 32)
    plain = Scorer(tap, "layer2.0")
    assert "featurenorm2" not in plain.score_names
    scorer = Scorer(tap, "layer2.0", featurenorm2=(1.5, 0.25))
    names = scorer.score_names
    assert names.index("featurenorm2") == names.index("featurenorm") + 1
    out = scorer(x)
    expected = -np.abs(np.log(out["featurenorm"].astype(np.float64)) - 1.5) / 0.25
    np.testing.assert_allclose(out["featurenorm2"], expected, rtol=1e-12)
