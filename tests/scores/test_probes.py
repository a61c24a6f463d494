"""Pseudo-OOD probes: deterministic under a seed, shape- and range-preserving, shard-independent."""
import pytest
import torch

from ood_audit.scores.jigsaw import jigsaw_indexed
from ood_audit.scores.probes import DEFAULT_PROBES, PROBES, apply_probe, check_probes, mix, pixel_shuffle


def _images(n=6, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    x[0] = 0.0  # extremes must stay in range
    x[1] = 1.0
    return x


@pytest.mark.parametrize("name", DEFAULT_PROBES)
def test_probe_is_seeded_and_keeps_shape_and_range(name):
    x, idx = _images(), torch.arange(10, 16)
    a = apply_probe(name, x, idx, seed=3)
    b = apply_probe(name, x.clone(), idx, seed=3)
    c = apply_probe(name, x, idx, seed=4)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)
    assert not torch.equal(a[2:], c[2:])  # another seed, other draws (constant images may not change)
    assert not torch.equal(a[2:], x[2:])  # it does change the images
    assert torch.equal(x, _images())  # input untouched


@pytest.mark.parametrize("name", [p for p in DEFAULT_PROBES if p != "mix"])
def test_probe_depends_only_on_seed_and_index_not_on_the_batch(name):
    x, idx = _images(), torch.arange(100, 106)
    whole = apply_probe(name, x, idx, seed=7)
    parts = torch.cat([apply_probe(name, x[[0, 3, 5]], idx[[0, 3, 5]], seed=7),
                       apply_probe(name, x[[1, 2, 4]], idx[[1, 2, 4]], seed=7)])
    assert torch.equal(whole[[0, 3, 5, 1, 2, 4]], parts)


def test_jigsaw_probe_is_the_paper_jigsaw():
    x, idx = _images(), torch.arange(6)
    assert torch.equal(apply_probe("jigsaw", x, idx, seed=1), jigsaw_indexed(x, idx, 1, 3))


def test_pixel_shuffle_keeps_each_cells_pixels():
    x = _images(2)
    y = pixel_shuffle(x, torch.arange(2), seed=0, patch=4)
    cells = lambda t: t.reshape(2, 3, 8, 4, 8, 4).permute(0, 2, 4, 1, 3, 5).reshape(2, 64, 3, 16)  # noqa: E731
    assert torch.equal(cells(x).sort(-1).values, cells(y).sort(-1).values)


def test_mix_partners_are_other_images_and_other_classes():
    x = torch.stack([torch.full((3, 8, 8), v) for v in (0.0, 0.2, 0.4, 0.6)])
    idx = torch.arange(4)
    out = mix(x, idx, seed=0, weight=(0.5, 0.5))
    for k in range(4):  # 0.5·x_k + 0.5·x_j with j != k: never the image itself
        assert not torch.allclose(out[k], x[k])
    labels = torch.tensor([0, 0, 1, 1])
    out = mix(x, idx, seed=0, labels=labels, weight=(0.5, 0.5))
    vals = [float(out[k, 0, 0, 0]) * 2 - float(x[k, 0, 0, 0]) for k in range(4)]  # the partner's value
    assert all(v >= 0.39 for v in vals[:2]) and all(v <= 0.21 for v in vals[2:])
    single = mix(x[:1], idx[:1], seed=0)  # no partner: its own 180° rotation
    assert single.shape == (1, 3, 8, 8)


def test_check_probes():
    assert check_probes(("noise", "jigsaw", "noise")) == ("jigsaw", "noise")
    assert set(PROBES) == set(DEFAULT_PROBES)
    with pytest.raises(ValueError, match="unknown probe 'swirl'"):
        check_probes(("swirl",))
    with pytest.raises(ValueError, match="at least one"):
        check_probes(())
