"""`ood-audit train`: train or fine-tune a classifier on Ray Train (DDP), resumably.

Exit status: 0 trained; 2 a one-line error (bad flag or data, a non-finite loss, ...); 3 trained, but the
model's validation accuracy is not clearly above chance (the weights are written, with a warning)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ood_audit.commands.common import ARCHITECTURES, add_ray_args, add_s3_args, s3_from_args

EXIT_DID_NOT_LEARN = 3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a classifier on a labelled image set (Ray Train, DDP)",
        description="Train on a labelled set (class folders or a manifest, local or s3://) with Ray Train. "
                    "Modes: ce (cross-entropy), alpa-finetune (MODE-F: L_ALPA from --init weights), joint "
                    "(MODE-T: L_SupCon + λ·L_ALPA). Checkpoints go to --storage/--run-name every epoch; running "
                    "the same --run-name and --storage again resumes from the latest one.")
    p.add_argument("--data", required=True,
                   help="labelled images: class-folder prefix or manifest, local, s3://, gs:// or az://")
    p.add_argument("--output", required=True,
                   help="final weights (.safetensors, local, s3://, gs:// or az://); <stem>.json with the metadata "
                        "goes next to it")
    p.add_argument("--arch", default="resnet18", metavar="ARCH", help=f"one of: {', '.join(ARCHITECTURES)}")
    p.add_argument("--small-input", action="store_true", help="CIFAR-style stem (for ~32 px images)")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size in px (default 32 with --small-input, else 224)")
    p.add_argument("--mode", default="ce", help="ce, alpa-finetune or joint (default ce)")
    p.add_argument("--init", default=None,
                   help="starting weights (safetensors, local, s3://, gs:// or az://); required by alpa-finetune. "
                        "A classifier "
                        "head with another number of classes is re-initialised (said in one line)")
    p.add_argument("--freeze-backbone-epochs", type=int, default=None, metavar="N",
                   help="with --init: train only the new layers (head, projectors) for the first N epochs, a "
                        "linear-probe warm-up, then the whole network (default 0)")
    p.add_argument("--backbone-lr-scale", type=float, default=None, metavar="S",
                   help="with --init: the pretrained layers learn at lr x S, the head at lr (default 0.1 for ce "
                        "and joint, 1 for alpa-finetune, MODE-F)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64,
                   help="images per worker per step (contrastive modes feed 2 views of each)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: 0.1 x global batch / 256 for sgd, the linear scaling rule; "
                        "1e-3 x sqrt(global batch / 256) for adamw; a tenth of those for alpa-finetune)")
    p.add_argument("--optimizer", default="sgd", help="sgd (momentum, Nesterov) or adamw")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup-epochs", type=float, default=1.0,
                   help="linear warm-up before the cosine decay (default 1 epoch)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of the images held out for validation, chosen by a hash of the object key "
                        "(default 0.1; 0 = none)")
    p.add_argument("--alpa-weight", type=float, default=1.0, help="λ in joint mode's L_SupCon + λ·L_ALPA")
    p.add_argument("--supcon-temperature", type=float, default=0.1)
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers (DDP ranks)")
    p.add_argument("--device", default="auto", help="auto (GPUs when the cluster has them), cpu or gpu (cuda)")
    p.add_argument("--precision", default="auto",
                   help="the forward pass's activations: auto (bf16 autocast on a GPU with bf16 or a CPU with AMX, "
                        "else fp32), float32 or bfloat16; weights, optimizer and losses stay fp32")
    p.add_argument("--cpus-per-worker", type=float, default=None, help="default: the cluster's CPUs shared out")
    p.add_argument("--run-name", default=None, help="names the run in --storage; reuse it to resume")
    p.add_argument("--storage", default=None, help="checkpoint storage: s3|gs|az://bucket/prefix or a local directory "
                                                   "(default Ray's ~/ray_results)")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="STEPS",
                   help="also checkpoint every STEPS steps (every epoch always ends with one)")
    p.add_argument("--keep-checkpoints", type=int, default=3)
    p.add_argument("--max-failures", type=int, default=2, help="worker failures to recover from (-1: no limit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--decode-threads", type=int, default=8, help="image fetch/decode threads per worker")
    p.add_argument("--log-every", type=float, default=10.0, metavar="SECONDS", help="progress log interval")
    add_s3_args(p)
    add_ray_args(p)
    p.add_argument("--json", dest="json_out", default=None, help="also write the run summary as JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ood_audit.training import TrainConfig, train

    cfg = TrainConfig(
        data=args.data, output=args.output, arch=args.arch, small_input=args.small_input,
        image_size=args.image_size, mode=args.mode, init=args.init, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer, momentum=args.momentum,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, val_fraction=args.val_fraction,
        freeze_backbone_epochs=args.freeze_backbone_epochs, backbone_lr_scale=args.backbone_lr_scale,
        alpa_weight=args.alpa_weight,
        supcon_temperature=args.supcon_temperature, workers=args.workers, device=args.device,
        precision=args.precision,
        cpus_per_worker=args.cpus_per_worker, run_name=args.run_name, storage=args.storage,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
        max_failures=args.max_failures, seed=args.seed, decode_threads=args.decode_threads,
        log_every_s=args.log_every, address=args.ray_address,
    ).validate()
    if cfg.uses_s3() or args.s3_endpoint:
        cfg.s3 = s3_from_args(args)
    res = train(cfg)
    val = "n/a (no validation images)" if res.val_accuracy is None else \
        f"{res.val_accuracy:.3f} on {res.val_images} held-out images (chance {res.chance_accuracy:.3f})"
    print(f"run {res.run_name}: {res.epochs_completed} epoch(s), {res.global_step} step(s), "
          f"final loss {_num(res.final_loss)}, {_num(res.images_per_second)} img/s (last epoch)")
    print(f"validation accuracy: {val}")
    print("  epoch      loss  val loss   val acc     img/s  seconds")
    for h in res.history:
        print(f"  {h['epoch']:>5}  {h['loss']:>8.4f}  {_fixed(h.get('val_loss'), 4):>8}  "
              f"{_fixed(h.get('val_accuracy'), 3):>8}  {h['images_per_second']:>8.1f}  {h['seconds']:>7.1f}")
    if res.skipped_images:
        print(f"skipped {res.skipped_images} unreadable image(s), e.g.:")
        for ex in res.skipped_examples[:5]:
            print(f"  {ex['uri']}: {ex['status']}: {ex['error']}")
    print(f"weights: {res.output}\nmetadata: {res.metadata}\ncheckpoint: {res.checkpoint}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(res.to_json(), indent=2))
    if res.warning:
        print(f"WARNING: {res.warning}", file=sys.stderr)
        return EXIT_DID_NOT_LEARN
    return 0


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _fixed(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"
