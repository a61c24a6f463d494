import numpy as np
import torch

from ood_audit import feature_norm


def _fn_reference(z: np.ndarray) -> np.ndarray:
    n, c, h, w = z.shape
    out = np.zeros(n)
    for i in range(n):
        acc = 0.0
        for ch in range(c):
            s = 0.0
            for y in range(h):
                for x in range(w):
                    v = max(z[i, ch, y, x], 0.0)
                    s += v * v
            acc += np.sqrt(s)
        out[i] = acc / c
    return out


def test_feature_norm_matches_literal_reference_with_negatives():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 5, 4, 3))
    assert (z < 0).any()
    got = feature_norm(torch.tensor(z)).numpy()
    np.testing.assert_allclose(got, _fn_reference(z), rtol=1e-5)


def test_relu_matters_and_it_is_not_other_norms():
    rng = np.random.default_rng(1)
    z = torch.tensor(rng.normal(size=(2, 4, 3, 3)), dtype=torch.float32)
    fn = feature_norm(z)
    no_relu = z.square().sum((2, 3)).sqrt().mean(1)
    frob = z.clamp_min(0).flatten(1).norm(dim=1)
    pooled = z.clamp_min(0).mean((2, 3)).norm(dim=1)
    for other in (no_relu, frob, pooled):
        assert not torch.allclose(fn, other)


def test_no_spatial_averaging():
    z = torch.ones(1, 2, 4, 4)
    # each channel's L2 norm over 16 ones is 4; no 1/(HW) factor
    assert feature_norm(z).item() == 4.0
