"""Fine-tuning settings and the new head, without Ray: defaults, flag validation, what loads, what trains."""
from __future__ import annotations

import pytest
import torch

from ood_audit.errors import CheckpointError, ConfigError
from ood_audit.models import IMAGENET_MEAN, IMAGENET_STD, build_model
from ood_audit.models.weights import load_state_new_head
from ood_audit.training import TrainConfig
from ood_audit.training.loop import make_optimizer
from ood_audit.training.net import TrainNet
from ood_audit.training.trainer import _keep_recipe


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(data="d", output="o.safetensors", **kw)


def test_defaults_for_a_pretrained_init() -> None:
    assert _cfg().lr_scale == 1.0 and _cfg().freeze_epochs == 0                      # scratch: nothing pretrained
    tuned = _cfg(init="w.safetensors")
    assert tuned.lr_scale == 0.1 and tuned.freeze_epochs == 0 and tuned.base_lr == _cfg().base_lr
    modef = _cfg(init="w.safetensors", mode="alpa-finetune")
    assert modef.lr_scale == 1.0 and modef.base_lr == pytest.approx(_cfg().base_lr / 10)  # SPEC §8, MODE-F
    assert _cfg(init="w.safetensors", backbone_lr_scale=0.5).lr_scale == 0.5
    recipe = _cfg(init="w.safetensors", freeze_backbone_epochs=2).validate().recipe
    assert recipe["freeze_backbone_epochs"] == 2 and recipe["backbone_lr_scale"] == 0.1 and recipe["mode"] == "ce"


@pytest.mark.parametrize("kw, flag", [
    ({"init": "w.safetensors", "freeze_backbone_epochs": -1}, "--freeze-backbone-epochs must be an integer >= 0"),
    ({"init": "w.safetensors", "freeze_backbone_epochs": 1.5}, "--freeze-backbone-epochs must be an integer"),
    ({"init": "w.safetensors", "backbone_lr_scale": 0.0}, "--backbone-lr-scale must be a positive number"),
    ({"init": "w.safetensors", "backbone_lr_scale": float("nan")}, "--backbone-lr-scale must be a positive"),
    ({"freeze_backbone_epochs": 1}, "--freeze-backbone-epochs applies to pretrained layers: it needs --init"),
    ({"backbone_lr_scale": 0.1}, "--backbone-lr-scale applies to pretrained layers: it needs --init"),
])
def test_bad_fine_tuning_flags_are_named(kw, flag) -> None:
    with pytest.raises(ConfigError, match=flag.replace("(", r"\(")):
        _cfg(**kw).validate()


def test_only_the_head_is_reinitialised_and_anything_else_is_refused() -> None:
    torch.manual_seed(1)
    init = build_model("resnet18", 10, small_input=True)
    state = init.state_dict()
    torch.manual_seed(2)
    model = build_model("resnet18", 3, small_input=True)
    fresh_head = model.fc.weight.detach().clone()
    changed = load_state_new_head(model, state, source="--init w")
    assert changed == ["fc.weight (10, 512) -> (3, 512)", "fc.bias (10,) -> (3,)"]
    assert torch.equal(model.conv1.weight, state["conv1.weight"]) and torch.equal(model.fc.weight, fresh_head)
    assert torch.equal(model.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    same = build_model("resnet18", 10, small_input=True)
    assert load_state_new_head(same, state) == [] and torch.equal(same.fc.weight, state["fc.weight"])
    with pytest.raises(CheckpointError, match="shape mismatch at conv1.weight"):  # 7x7 stem vs 3x3
        load_state_new_head(build_model("resnet18", 3), state, source="--init w")
    with pytest.raises(CheckpointError, match="1 missing key"):
        load_state_new_head(build_model("resnet18", 3, small_input=True),
                            {k: v for k, v in state.items() if k != "layer1.0.conv1.weight"})


def test_backbone_groups_and_the_linear_probe_phase() -> None:
    model = build_model("resnet18", 2, small_input=True)
    net = TrainNet(model, "ce", image_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    new, backbone = net.parameter_groups()
    assert {id(p) for p in new} == {id(model.fc.weight), id(model.fc.bias)}
    assert len(backbone) == len(list(model.parameters())) - 2
    opt = make_optimizer(_cfg(init="w.safetensors"), new, backbone)
    assert [g["lr_scale"] for g in opt.param_groups] == [1.0, 0.1]
    net.freeze_backbone(True)
    loss = net(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]))["loss"]
    loss.backward()
    assert model.conv1.weight.grad is None and model.fc.weight.grad is not None
    net.freeze_backbone(False)
    assert all(p.requires_grad for p in model.parameters())


def test_modef_trains_a_new_head_on_detached_features_and_keeps_a_matching_one() -> None:
    kw = {"image_size": 16, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "alpa_chunk": 8}
    kept = TrainNet(build_model("resnet18", 2, small_input=True), "alpa-finetune", **kw)
    assert not any(p.requires_grad for p in kept.taps.head.parameters())
    model = build_model("resnet18", 2, small_input=True)
    new = TrainNet(model, "alpa-finetune", new_head=True, **kw)
    out = new(torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 0, 1]))
    assert "head_ce" in out and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.fc.weight.grad is not None and float(model.fc.weight.grad.abs().sum()) > 0


def test_a_resume_keeps_the_runs_fine_tuning_settings() -> None:
    cfg = _cfg(init="w.safetensors")
    assert _keep_recipe(cfg, None, "r").backbone_lr_scale == 0.1                     # a new run: the defaults
    kept = _keep_recipe(cfg, {"freeze_backbone_epochs": 2, "backbone_lr_scale": 0.3}, "r")
    assert kept.freeze_backbone_epochs == 2 and kept.backbone_lr_scale == 0.3
    assert _keep_recipe(cfg, {}, "old").backbone_lr_scale == 1.0   # checkpointed before the setting: one rate
    with pytest.raises(CheckpointError, match="--backbone-lr-scale 0.3 but this run asks for 0.5"):
        _keep_recipe(_cfg(init="w.safetensors", backbone_lr_scale=0.5), {"backbone_lr_scale": 0.3}, "r")
