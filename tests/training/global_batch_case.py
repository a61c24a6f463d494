"""One rank of the global-batch check (spawned by test_global_batch.py): DDP over gloo, for each mode
(joint, alpa-finetune) a TrainNet on this rank's half of a fixed batch; writes the loss and DDP-averaged
gradients under ``<out_dir>/<mode>/``. Both modes share one pair of processes (each costs a torch import)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

BATCH = 6          # images per rank; two views each -> 12 rows per rank, 24 in the global batch


def fixed_batch(world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole global batch, ranks concatenated in order; each rank's rows are its two views."""
    gen = torch.Generator().manual_seed(1)
    pixels = torch.rand(world * 2 * BATCH, 3, 16, 16, generator=gen, dtype=torch.float64)
    images = torch.randint(0, 3, (world, BATCH), generator=gen)
    labels = torch.cat([torch.cat([images[r], images[r]]) for r in range(world)])
    return pixels, labels


def build(mode: str, global_batch=None):
    from ood_audit.models import build_model
    from ood_audit.training.net import TrainNet

    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3, small_input=True)
    net = TrainNet(model, mode, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, alpa_chunk=5,
                   global_batch=global_batch).double()
    # BatchNorm in eval mode: per-rank batch statistics would differ from the full batch's by design,
    # and that is not what is compared here.
    net.eval()
    return net


def run_rank(rank: int, world: int, modes: tuple[str, ...], store_path: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)
    try:
        for mode in modes:
            _one_mode(rank, world, mode, os.path.join(out_dir, mode))
        _batchnorm(rank, world, out_dir)
    finally:
        dist.destroy_process_group()


def _one_mode(rank: int, world: int, mode: str, out_dir: str) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file
    from torch.nn.parallel import DistributedDataParallel

    from ood_audit.training.gather import GlobalBatch

    net = build(mode, GlobalBatch.create(rank, world))
    ddp = DistributedDataParallel(net)
    pixels, labels = fixed_batch(world)
    rows = slice(rank * 2 * BATCH, (rank + 1) * 2 * BATCH)
    out = ddp(pixels[rows], labels[rows])
    out["loss"].backward()
    share = torch.tensor([float(out["objective"])], dtype=torch.float64)
    dist.all_reduce(share)
    grads = {n: p.grad.detach().contiguous() for n, p in net.named_parameters() if p.grad is not None}
    if rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        save_file(grads, os.path.join(out_dir, "grads.safetensors"))
        Path(out_dir, "loss.json").write_text(json.dumps({"loss": share.item() / world,
                                                         "parts": {k: float(v) for k, v in out.items()
                                                                   if k != "loss"}}))


def bn_batches(world: int) -> list[torch.Tensor]:
    """Two batches per rank, ranks in order, for the BatchNorm refresh check."""
    gen = torch.Generator().manual_seed(2)
    return [torch.rand(8, 3, 16, 16, generator=gen) * (1 + i) for i in range(2 * world)]


def refreshed(batches: list[torch.Tensor]) -> torch.nn.Module:
    """A model whose BatchNorm statistics are the cumulative average over ``batches`` (as the refresh does)."""
    from ood_audit.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3, small_input=True)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    return model


def _batchnorm(rank: int, world: int, out_dir: str) -> None:
    from safetensors.torch import save_file

    from ood_audit.training.loop import merge_batchnorm

    mine = bn_batches(world)[2 * rank: 2 * rank + 2]
    model = refreshed(mine)
    merge_batchnorm(model, sum(len(x) for x in mine), world, torch.device("cpu"))
    buffers = {n: b.detach().contiguous() for n, b in model.named_buffers()}
    save_file(buffers, os.path.join(out_dir, f"batchnorm-rank{rank}.safetensors"))
