"""The module DDP wraps: the classifier behind :class:`TapModel`, the training-only heads, and the loss of
each mode (SPEC §8).

- ``ce``: cross-entropy on the logits.
- ``alpa-finetune`` (MODE-F): L = L_ALPA on the last-stage map; the backbone and the ALPA projectors are
  updated, the classifier head is frozen (it is unused by the loss and keeps the ``--init`` weights). When
  ``--init`` had another number of classes (``new_head``, SPEC §16) the re-initialised head is trained as in
  ``joint`` mode, by cross-entropy on the detached penultimate vector, so the saved model has usable logits.
- ``joint`` (MODE-T): L = L_SupCon + λ·L_ALPA. SupCon runs on a small MLP projector of the pooled
  penultimate vector (L2-normalised inside :func:`supcon_loss`). The classifier head is trained alongside
  by cross-entropy on the *detached* penultimate vector (``head_ce``), so the saved model has usable logits
  while the backbone sees exactly L.

Batches of the contrastive modes hold the two views of each image as two rows with the same label.
Under DDP their losses run over the global batch (:mod:`ood_audit.training.gather`); ``objective`` is
then this rank's share, and the mean over ranks is the global loss.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ood_audit.errors import CheckpointError
from ood_audit.models import TapModel, load_state_strict
from ood_audit.models.precision import check_precision, forward_precision
from ood_audit.models.taps import Taps
from ood_audit.scores.alpa import ALPAHead, alpa_loss_from_projections
from ood_audit.scores.supcon import supcon_loss
from ood_audit.training.gather import GlobalBatch


class SupConProjector(nn.Module):
    """Pooled penultimate vector -> SupCon embedding: Linear(D, D), ReLU, Linear(D, d)."""

    def __init__(self, in_dim: int, out_dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TrainNet(nn.Module):
    """``forward(pixels [N, 3, H, W] in [0, 1], labels [N]) -> {"loss": to minimise, "objective": L, ...}``."""

    def __init__(self, model: nn.Module, mode: str, *, image_size: int, mean: Sequence[float],
                 std: Sequence[float], alpa_weight: float = 1.0, supcon_temperature: float = 0.1,
                 supcon_dim: int = 128, alpa_chunk: int = 64, global_batch: GlobalBatch | None = None,
                 new_head: bool = False, precision: str = "float32") -> None:
        super().__init__()
        self.mode = mode
        self.precision = check_precision(precision)  # the training forward's activations (training_precision)
        self.global_batch = global_batch or GlobalBatch()
        if self.precision == "bfloat16":
            # bf16 convolutions (AMX on a CPU, tensor cores on a GPU) are fastest on NHWC: a ResNet18 step on a CPU
            # with AMX costs about a fifth less CPU time with the weights channels-last. The activations follow the
            # weights' layout; checkpoints are written contiguous (NCHW) all the same.
            model.to(memory_format=torch.channels_last)
        self.taps = TapModel(model, mean=mean, std=std)
        self._model = [model]  # the classifier itself (shares parameters with taps); saved as model.safetensors
        self.alpa_weight = float(alpa_weight)
        self.supcon_temperature = float(supcon_temperature)
        self.alpa: ALPAHead | None = None
        self.supcon: SupConProjector | None = None
        if mode in ("alpa-finetune", "joint"):
            channels, dim = self._feature_dims(image_size)
            self.alpa = ALPAHead(channels, chunk_size=alpa_chunk)
            if mode == "joint":
                self.supcon = SupConProjector(dim, supcon_dim)
        self.train_head_on_features = mode == "joint" or (mode == "alpa-finetune" and new_head)
        if mode == "alpa-finetune" and not new_head:
            for p in self.taps.head.parameters():
                p.requires_grad_(False)
        head = {id(p) for p in self.taps.head.parameters()}
        self.backbone_params = [p for p in model.parameters() if id(p) not in head]

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(new layers: the classifier head and the projectors; the backbone), trainable ones, in a fixed order."""
        backbone = {id(p) for p in self.backbone_params}
        trainable = [p for p in self.parameters() if p.requires_grad]
        return [p for p in trainable if id(p) not in backbone], [p for p in trainable if id(p) in backbone]

    def freeze_backbone(self, frozen: bool) -> None:
        """Linear-probe phase: no gradient reaches the backbone (its BatchNorm statistics still follow the data)."""
        for p in self.backbone_params:
            p.requires_grad_(not frozen)

    @property
    def model(self) -> nn.Module:
        return self._model[0]

    def _feature_dims(self, image_size: int) -> tuple[int, int]:
        """Channels of the last-stage map and width of the penultimate vector at ``image_size``."""
        was_training = self.taps.training
        self.taps.eval()
        with torch.no_grad():
            out = self.taps(torch.zeros(1, 3, image_size, image_size))
        self.taps.train(was_training)
        return int(out.last_map.shape[1]), int(out.penultimate.shape[1])

    def _heads(self) -> dict[str, nn.Module]:
        return {name: head for name, head in (("alpa", self.alpa), ("supcon", self.supcon)) if head is not None}

    def heads_state(self) -> dict[str, torch.Tensor]:
        """The training-only projectors, keyed ``alpa.*`` / ``supcon.*`` (empty in ``ce`` mode)."""
        return {f"{name}.{k}": v.detach().cpu().contiguous()
                for name, head in self._heads().items() for k, v in head.state_dict().items()}

    def load_heads_state(self, state: dict[str, torch.Tensor]) -> None:
        """Strictly restore the projectors written by :meth:`heads_state`."""
        heads = self._heads()
        extra = sorted({k.split(".", 1)[0] for k in state} - set(heads))
        if extra:
            raise CheckpointError(f"heads.safetensors holds projectors {extra} that mode {self.mode!r} does not use")
        for name, head in heads.items():
            part = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
            load_state_strict(head, part, source=f"heads.safetensors ({name})")

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        # Only the network runs under the training precision; the heads and every loss take fp32 inputs.
        with forward_precision(self.precision, pixels.device):
            out = self.taps(pixels)
        if self.precision != "float32":
            out = Taps(logits=out.logits.float(), penultimate=out.penultimate.float(), last_map=out.last_map.float())
        if self.mode == "ce":
            loss = F.cross_entropy(out.logits, labels)
            return {"loss": loss, "objective": loss.detach()}
        assert self.alpa is not None
        g = self.global_batch
        anchors = g.anchors(labels.shape[0])
        all_labels = g.gather_labels(labels)
        q, k, v = (g.gather(t) for t in self.alpa.project(out.last_map))
        alpa = alpa_loss_from_projections(q, k, v, all_labels, inv_temp=self.alpa.inv_temp,
                                          chunk_size=self.alpa.chunk_size, anchors=anchors)
        if self.mode == "alpa-finetune":
            out_f = {"loss": alpa, "objective": alpa.detach(), "alpa": alpa.detach()}
            if self.train_head_on_features:
                head_ce = F.cross_entropy(self.taps.head(out.penultimate.detach()), labels)
                out_f.update(loss=alpa + head_ce, head_ce=head_ce.detach())
            return out_f
        assert self.supcon is not None
        sup = supcon_loss(g.gather(self.supcon(out.penultimate)), all_labels, temperature=self.supcon_temperature,
                          anchors=anchors)
        head_ce = F.cross_entropy(self.taps.head(out.penultimate.detach()), labels)
        objective = sup + self.alpa_weight * alpa
        return {"loss": objective + head_ce, "objective": objective.detach(), "supcon": sup.detach(),
                "alpa": alpa.detach(), "head_ce": head_ce.detach()}
