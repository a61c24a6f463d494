"""Benchmark: what a pretrained ``--init`` buys over training from scratch, in one run.

    PYTHONPATH=. python benchmarks/finetune.py                       # digits -> faces (below)
    PYTHONPATH=. python benchmarks/finetune.py --pair photos-digits  # 1000 digits, 6 epochs each way
    PYTHONPATH=. python benchmarks/finetune.py --pair photos-digits --quick  # 400 digits, 3 epochs

``digits-faces`` (default): the init is a ResNet18 trained here on the demo's real digits; the task is
scikit-image's ``lfw_subset`` (100 faces, 100 non-face crops, 2 classes, 45% held out), as in the
fine-tuning test. An init that learned strokes and edges on one real task, reused on another with
another head: the usual case of a team's own model. OOD: each model is calibrated on its training
faces and scored on its held-out faces against the demo's OOD kinds, the digits among them.

``photos-digits``: the ID task is the demo's: real handwritten digits (scikit-learn, 10 classes, 32 px, a ResNet18 with the
small-input stem). The "pretrained" model is trained first, here, on another real task: crops of the
photographs bundled with scikit-learn and scikit-image, labelled by the photograph they come from (an
ImageNet in miniature; like an ImageNet model it has seen photographs, among them the sources of the
demo's ``photos`` OOD kind). Then, with the same defaults and epochs:

- **scratch**: ``train`` on the digits from a random initialisation;
- **fine-tuned**: ``train --init pretrained`` (a new 10-class head, said in one line; the defaults for a
  pretrained init: backbone lr x 0.1).

It prints, for both, the epochs and the training wall time until the held-out accuracy first reaches
``--target``, and the FPR95 / AUROC of CSD and FeatureNorm (each model calibrated on its training digits,
as ``ood-audit evaluate`` does) on the demo's real OOD kinds against unseen digits, with ratios
fine-tuned / scratch. Ratios compare runs made in this one process, on this machine.
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tests.datagen import lfw_faces, photo_sources, png_bytes, write_local

SCORES = ("csd", "featurenorm")


def photo_task(n: int, seed: int) -> dict[str, bytes]:
    """``<photo>/<i>.png``: ``n`` random 96-256 px crops of the bundled photographs at 48 px, class = source."""
    sources = photo_sources(min_side=256)
    names = sorted(sources)
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        name = names[i % len(names)]
        src = sources[name]
        side = int(rng.integers(96, 257))
        y, x = int(rng.integers(0, src.shape[0] - side + 1)), int(rng.integers(0, src.shape[1] - side + 1))
        crop = Image.fromarray(np.ascontiguousarray(src[y:y + side, x:x + side])).resize((48, 48), Image.BILINEAR)
        out[f"{name}/{i:05d}.png"] = png_bytes(np.asarray(crop))
    return out


def train_run(data: Path, work: Path, name: str, epochs: int, init: str | None = None, **options):
    from ood_audit.training import TrainConfig, train

    return train(TrainConfig(data=str(data), output=str(work / f"{name}.safetensors"), small_input=True,
                             epochs=epochs, init=init, run_name=name, storage=str(work / "runs"),
                             log_every_s=600.0, **options))


FACES_VAL = 0.45  # of 200 images: about 90 held out, enough to tell epochs apart


def faces_task(root: Path) -> tuple[Path, Path, Path]:
    """``lfw_subset`` at 32 px under ``face/`` and ``other/``: (all, the training split, the held-out split),
    split as training splits them (by key, ``FACES_VAL``)."""
    from ood_audit.io.dataset import load_labelled
    from ood_audit.training.data import validation_split

    files = lfw_faces(32)
    everything = write_local(root / "faces", files)
    dataset = load_labelled(str(everything))
    uris = dataset.uris()
    train_rows, val_rows = validation_split(uris, dataset.source, FACES_VAL)
    key = lambda u: os.path.relpath(u, everything)  # noqa: E731
    split = [write_local(root / name, {key(uris[i]): files[key(uris[i])] for i in rows})
             for name, rows in (("faces-train", train_rows), ("faces-heldout", val_rows))]
    return everything, split[0], split[1]


def reach(history: list[dict], target: float) -> tuple[int | None, float | None]:
    """(epochs, training seconds incl. validation) until the held-out accuracy first reaches ``target``."""
    seconds = 0.0
    for h in history:
        seconds += h["seconds"] + h.get("val_seconds", 0.0)
        if (h.get("val_accuracy") or 0.0) >= target:
            return h["epoch"], seconds
    return None, None


def ood_metrics(model: str, id_train: Path, id_test: Path, ood: dict[str, Path],
                **options) -> dict[tuple[str, str], dict[str, float]]:
    from ood_audit.evaluate import evaluate, model_spec

    spec = model_spec("resnet18", model, small_input=True, image_size=32)
    res = evaluate(spec, model, str(id_train), str(id_test), {k: str(v) for k, v in ood.items()}, **options)
    return {(r["ood"], r["score"]): r for r in res.rows if r["score"] in SCORES}


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", choices=("digits-faces", "photos-digits"), default="digits-faces",
                        help="init task -> fine-tuned task (module docstring)")
    parser.add_argument("--quick", action="store_true", help="photos-digits: 400 digits, 3 epochs, 330 photo crops")
    parser.add_argument("--digits", type=int, default=1000, help="ID training digits (default 1000)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of each digits run (default 6)")
    parser.add_argument("--pretrain-images", type=int, default=1100, help="photo crops to pretrain on")
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--target", type=float, help="held-out accuracy to reach (default 0.93 for digits-faces, "
                                                       "0.9 for photos-digits)")
    args = parser.parse_args(argv)
    if args.target is None:
        args.target = 0.93 if args.pair == "digits-faces" else 0.9
    if args.quick:
        args.digits, args.epochs, args.pretrain_images, args.pretrain_epochs = 400, 3, 330, 3
    logging.basicConfig(level=logging.WARNING)

    from ood_audit.demo.data import OUTLIER_KINDS, demo_files
    from ood_audit.ray_setup import init_ray

    init_ray(num_cpus=os.cpu_count() or 2, object_store_memory=256 * 2**20)
    with tempfile.TemporaryDirectory(prefix="ood-audit-bench-finetune-") as tmp:
        work = Path(tmp)
        id_files, incoming, _ = demo_files(seed=0, n_train=args.digits)
        id_train = write_local(work / "id", id_files)
        inc = write_local(work / "incoming", {k: v for k, v in incoming.items() if not k.startswith("broken/")})
        if args.pair == "photos-digits":
            pre, pre_what = write_local(work / "photos", photo_task(args.pretrain_images, seed=1)), "photo crops"
            task, task_what, options = id_train, f"{args.digits} real digits (10 classes)", {}
            id_test, ood = inc / "digits", {k: inc / k for k in OUTLIER_KINDS}
        else:
            pre, pre_what = id_train, "real digits"
            task, task_train, id_test = faces_task(work)
            task_what = f"lfw_subset faces vs non-faces ({FACES_VAL:.0%} held out)"
            options = {"val_fraction": FACES_VAL, "batch_size": 16}
            ood = {k: inc / k for k in ("digits", *OUTLIER_KINDS) if k != "faces"}

        t = time.perf_counter()
        pretrained = train_run(pre, work, "pretrain", args.pretrain_epochs)
        print(f"pretrained on {sum(len(f) for _, _, f in os.walk(pre))} {pre_what} "
              f"({len(os.listdir(pre))} classes), {args.pretrain_epochs} epochs: val acc "
              f"{pretrained.val_accuracy:.3f} (chance {pretrained.chance_accuracy:.3f}), {time.perf_counter() - t:.0f} s")
        runs = {"scratch": train_run(task, work, "scratch", args.epochs, **options),
                "fine-tuned": train_run(task, work, "finetuned", args.epochs, init=pretrained.output, **options)}
        bank = id_train if args.pair == "photos-digits" else task_train
        extra = {} if args.pair == "photos-digits" else {"heldout_fraction": 0.2}
        metrics = {name: ood_metrics(r.output, bank, id_test, ood, **extra) for name, r in runs.items()}

    print(f"\n{task_what}, ResNet18 small input, {args.epochs} epochs each, "
          f"target held-out accuracy {args.target:g}")
    print(f"{'':12} {'val acc by epoch':<40} {'epochs to target':>16} {'seconds to target':>18}")
    reached = {}
    for name, r in runs.items():
        accs = " ".join(f"{h['val_accuracy']:.2f}" for h in r.history)
        reached[name] = reach(r.history, args.target)
        e, s = reached[name]
        print(f"{name:12} {accs:<40} {e if e else '>' + str(args.epochs):>16} {f'{s:.0f}' if s else '-':>18}")
    (es, ss), (ef, sf) = reached["scratch"], reached["fine-tuned"]
    print(f"ratio fine-tuned / scratch: epochs {_ratio(ef, es)}, wall time {_ratio(sf, ss)}")

    print(f"\n{'OOD kind':<10} {'score':<12} {'AUROC scratch':>13} {'AUROC tuned':>11} {'ratio':>6} "
          f"{'FPR95 scratch':>13} {'FPR95 tuned':>11} {'ratio':>6}")
    for (kind, score), s in metrics["scratch"].items():
        f = metrics["fine-tuned"][(kind, score)]
        print(f"{kind:<10} {score:<12} {s['auroc']:>13.3f} {f['auroc']:>11.3f} {_ratio(f['auroc'], s['auroc']):>6} "
              f"{s['fpr95']:>13.3f} {f['fpr95']:>11.3f} {_ratio(f['fpr95'], s['fpr95']):>6}")


if __name__ == "__main__":
    main()
