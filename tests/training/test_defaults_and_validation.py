"""The default learning rate, the validation split and the did-it-learn rule: pure functions, no Ray."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ood_audit.errors import ConfigError
from ood_audit.training import TrainConfig
from ood_audit.training.augment import colour_jitter, contrastive_view, random_greyscale
from ood_audit.training.config import scaled_lr
from ood_audit.training.data import chance_accuracy, learned_margin, object_key, validation_split
from ood_audit.training.trainer import learned_check


def test_default_lr_follows_the_global_batch() -> None:
    one = TrainConfig(data="d", output="o.safetensors", workers=1, batch_size=64)
    two = TrainConfig(data="d", output="o.safetensors", workers=2, batch_size=64)
    assert one.base_lr == pytest.approx(0.1 * 64 / 256) and two.base_lr == pytest.approx(2 * one.base_lr)
    assert TrainConfig(data="d", output="o.safetensors", lr=0.3, workers=4).base_lr == 0.3  # --lr overrides
    assert scaled_lr("adamw", "ce", 1024) == pytest.approx(2e-3)  # square-root rule for AdamW
    assert scaled_lr("sgd", "alpa-finetune", 256) == pytest.approx(0.01)
    assert one.warmup_epochs == 1.0 and one.val_fraction == 0.1
    assert one.to_json()["lr"] == pytest.approx(0.025)


@pytest.mark.parametrize("value", [-0.1, 0.5, float("nan")])
def test_bad_val_fraction_names_the_flag(value: float) -> None:
    with pytest.raises(ConfigError, match="--val-fraction"):
        TrainConfig(data="d", output="o.safetensors", val_fraction=value).validate()


def test_validation_split_is_disjoint_deterministic_and_stable_as_the_set_grows() -> None:
    source = "s3://bucket/train"
    uris = [f"{source}/c{i % 3}/{i:05d}.png" for i in range(5000)]
    train, val = validation_split(uris, source, 0.1)
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(uris)
    assert 0.08 < len(val) / len(uris) < 0.12
    again_train, again_val = validation_split(list(uris), source, 0.1)
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)
    # New objects never move old ones across the split.
    grown = uris + [f"{source}/c0/new{i}.png" for i in range(500)]
    _, grown_val = validation_split(grown, source, 0.1)
    assert set(grown_val) & set(range(len(uris))) == set(val.tolist())
    # The key, not the bucket, decides: the same set copied to local disk splits the same way.
    local = [u.replace(source, "/data/train") for u in uris]
    assert np.array_equal(validation_split(local, "/data/train", 0.1)[1], val)
    assert object_key(uris[7], source) == "c1/00007.png"
    assert len(validation_split(uris, source, 0.0)[1]) == 0


def test_chance_and_the_learned_margin() -> None:
    assert chance_accuracy(np.array([0, 1, 2, 3]), 4) == 0.25
    assert chance_accuracy(np.array([0] * 9 + [1]), 2) == 0.9  # the majority class, when it beats 1/C
    margin = learned_margin(0.1, 160)
    assert margin == pytest.approx(0.1 + max(0.1 * 0.9, 3 * math.sqrt(0.09 / 160)))
    # A model guessing at chance on 160 images almost never passes it (binomial tail, simulated).
    rng = np.random.default_rng(0)
    assert (rng.binomial(160, 0.1, 20_000) / 160 > margin).mean() < 0.01
    validation = {"chance_accuracy": 0.1, "learned_above": margin}
    assert learned_check({"val_accuracy": 0.97, "val_images": 160}, validation, 10) is None
    warning = learned_check({"val_accuracy": 0.12, "val_images": 160}, validation, 10)
    assert warning and "did not learn" in warning and "0.120" in warning
    assert learned_check({}, validation, 10) is None  # no validation: nothing to judge
    tiny = {"chance_accuracy": 0.5, "learned_above": learned_margin(0.5, 3)}
    assert tiny["learned_above"] > 1 and learned_check({"val_accuracy": 0.33}, tiny, 2) is None  # too few to tell


def test_contrastive_view_follows_the_reference_recipe_and_the_seed() -> None:
    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a = contrastive_view(x, size=32, generator=torch.Generator().manual_seed(1))
    b = contrastive_view(x, size=32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    # Greyscale with p = 0.2: about a fifth of the images come out with equal channels.
    grey = random_greyscale(x.repeat(8, 1, 1, 1), torch.Generator().manual_seed(2))
    share = ((grey[:, 0] == grey[:, 1]).flatten(1).all(1)).float().mean().item()
    assert 0.12 < share < 0.28
    # Colour jitter with p = 0.8 leaves about a fifth of the images untouched.
    jit = colour_jitter(x.repeat(8, 1, 1, 1), torch.Generator().manual_seed(3))
    same = (jit == x.repeat(8, 1, 1, 1)).flatten(1).all(1).float().mean().item()
    assert 0.12 < same < 0.28
