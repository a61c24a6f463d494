import numpy as np
import torch

from ood_audit.scores import energy, energy_fn, maxlogit, msp, msp_fn


def _softmax(a):
    e = np.exp(a - a.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_logit_baselines_match_numpy():
    rng = np.random.default_rng(0)
    lg = rng.normal(scale=3, size=(5, 7))
    t = torch.tensor(lg)
    np.testing.assert_allclose(msp(t).numpy(), _softmax(lg).max(1), rtol=1e-5)
    np.testing.assert_allclose(energy(t).numpy(), np.log(np.exp(lg).sum(1)), rtol=1e-5)
    np.testing.assert_allclose(energy(t, 2.0).numpy(), 2 * np.log(np.exp(lg / 2).sum(1)), rtol=1e-5)
    np.testing.assert_allclose(maxlogit(t).numpy(), lg.max(1), rtol=1e-6)


def test_selected_norm_variants_replace_magnitude_keep_direction():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(4, 6))
    w = rng.normal(size=(3, 6))
    b = rng.normal(size=3)
    fn = np.abs(rng.normal(size=4)) * 5
    f_prime = fn[:, None] * f / np.linalg.norm(f, axis=1, keepdims=True)
    lg = f_prime @ w.T + b
    args = [torch.tensor(a) for a in (f, fn, w, b)]
    np.testing.assert_allclose(msp_fn(*args).numpy(), _softmax(lg).max(1), rtol=1e-5)
    np.testing.assert_allclose(energy_fn(*args).numpy(), np.log(np.exp(lg).sum(1)), rtol=1e-5)
    # scaling f does not change the result: only its direction is used
    args2 = [torch.tensor(f * 10), *args[1:]]
    np.testing.assert_allclose(msp_fn(*args2).numpy(), msp_fn(*args).numpy(), rtol=1e-5)
