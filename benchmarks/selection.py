"""Benchmark: which FeatureNorm block each selector picks on real images, and how good that block is.

    PYTHONPATH=. python benchmarks/selection.py                  # both ID sets, seeds 0, 1, 2
    PYTHONPATH=. python benchmarks/selection.py --id-sets digits --seeds 0

Real images only, all bundled with scikit-learn / scikit-image / Pillow (nothing is downloaded):

- ID ``digits``: scikit-learn's 1797 handwritten digits (8×8) upscaled to 32 px RGB, white strokes on
  black, 10 classes; ID ``textures``: 32 px crops of four scikit-image textures (brick, grass, gravel,
  moon), 4 classes; train and test crops come from disjoint image regions.
- OOD sources, each a different kind: ``textures`` (brick/grass/gravel crops), ``photos`` (crops of 8
  bundled photos), ``faces`` (scikit-image ``lfw_subset`` faces), ``letters`` (A–Z rendered at 8×8 and
  upscaled exactly like the digits: a near-OOD set), and ``digits`` for the textures ID set.
- Known outliers for ``--selector validated``: 8 extra images of each evaluated OOD kind ("seen kinds"),
  and, as a stricter variant computed from the same evidence, 32 crops of other bundled images (coins,
  clock, page, text, cell, ...) that match none of the evaluated kinds ("unseen kind").

The ID model is trained with the product's own ``train`` (Ray Train, resnet18 CIFAR stem, 2 CPU workers)
and cached under the temp dir keyed by its config. ``calibrate`` (in-process) writes the bundle with the
selection evidence; each selector's choice comes from that evidence with the product's ``choose_block``.
Every block is then scored on never-seen ID test images and each OOD source: FPR95 is the fraction of
OOD scoring >= the threshold that keeps 95% of ID (ID = positive, Hendrycks/ODIN convention), averaged
over the OOD sources. featurenorm2's center/scale come from calibrate's held-out split at each block.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFont, ImageDraw

SIZE = 32
DATA_VERSION = 1


# ------------------------------------------------------------------ real images
def _u8(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    a = (a - a.min()) / max(a.max() - a.min(), 1e-12) if a.max() > 1.0 or a.dtype == bool else a
    return (np.clip(a, 0, 1) * 255).astype(np.uint8)


def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.uint8:
        a = _u8(a)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    return a[..., :3]


def _resize(a: np.ndarray, size: int = SIZE) -> np.ndarray:
    return np.asarray(Image.fromarray(_rgb(a)).resize((size, size), Image.BILINEAR))


def crops(sources: list[np.ndarray], n: int, rng: np.random.Generator, side=(48, 160),
          rows=(0.0, 1.0)) -> list[np.ndarray]:
    """``n`` random square crops (side in ``side`` px, top edge within the ``rows`` fraction band) -> 32 px."""
    out = []
    for i in range(n):
        src = _rgb(sources[i % len(sources)])
        h, w = src.shape[:2]
        s = int(rng.integers(side[0], min(side[1], h, w) + 1))
        lo, hi = int(rows[0] * (h - s)), max(int(rows[0] * (h - s)) + 1, int(rows[1] * (h - s)))
        top, left = int(rng.integers(lo, hi)), int(rng.integers(0, w - s + 1))
        c = src[top : top + s, left : left + s]
        out.append(np.asarray(Image.fromarray(c).resize((SIZE, SIZE), Image.BOX)))
    return out


def digit_images() -> tuple[list[np.ndarray], np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return [_resize((img / 16.0 * 255).astype(np.uint8)) for img in d.images], d.target


def letter_images(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A–Z rendered white on black at 64 px (bold), reduced to 8×8 and scaled to full ink like the digits, then
    upscaled to 32 px the same way."""
    out = []
    for i in range(n):
        font = ImageFont.load_default(size=int(rng.integers(44, 60)))
        im = Image.new("L", (64, 64), 0)
        ch = chr(ord("A") + i % 26)
        ImageDraw.Draw(im).text((32 + int(rng.integers(-4, 5)), 32 + int(rng.integers(-4, 5))), ch, fill=255,
                                font=font, anchor="mm", stroke_width=int(rng.integers(2, 5)), stroke_fill=255)
        im = im.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR)
        small = np.asarray(im.resize((8, 8), Image.BOX), dtype=np.float64)  # like the digits: 0..max ink per cell
        out.append(_resize((small / max(small.max(), 1.0) * 255).astype(np.uint8)))
    return out


def texture_sources() -> dict[str, np.ndarray]:
    import skimage.data as d

    return {"brick": d.brick(), "grass": d.grass(), "gravel": d.gravel(), "moon": d.moon()}


SELECTION_PHOTOS = ("china", "flower", "astronaut", "coffee", "chelsea", "rocket", "camera", "motorcycle")


def photo_sources() -> list[np.ndarray]:
    """The photos to crop, from the one list of bundled photos (:data:`ood_audit.demo.data.PHOTO_SOURCES`)."""
    from ood_audit.demo.data import bundled_photos

    return list(bundled_photos(SELECTION_PHOTOS).values())


def misc_sources() -> list[np.ndarray]:
    import skimage.data as d

    return [d.coins(), d.clock(), d.page(), d.text(), d.cell(), d.hubble_deep_field(), d.immunohistochemistry(),
            d.retina(), d.colorwheel()]


def face_images() -> list[np.ndarray]:
    import skimage.data as d

    return [_resize(f) for f in d.lfw_subset()[:100]]  # the first 100 of lfw_subset are faces


def build_id_set(name: str, seed: int = 0):
    """(train {class: images}, test images, test labels, {ood source: images}, seen-kind and unseen-kind outliers).

    Class folders sort in the order of the class labels."""
    rng = np.random.default_rng(seed)
    faces = face_images()
    tex = texture_sources()
    if name == "digits":
        imgs, labels = digit_images()
        order = rng.permutation(len(imgs))
        cut = int(0.7 * len(imgs))
        train = {f"d{c}": [imgs[i] for i in order[:cut] if labels[i] == c] for c in range(10)}
        test = [imgs[i] for i in order[cut:]]
        test_labels = labels[order[cut:]]
        letters = letter_images(308, rng)
        ood = {"textures": crops([tex["brick"], tex["grass"], tex["gravel"]], 300, rng),
               "photos": crops(photo_sources(), 300, rng), "faces": faces[:92], "letters": letters[:300]}
        seen = (crops([tex["brick"], tex["grass"], tex["gravel"]], 8, rng) + crops(photo_sources(), 8, rng)
                + faces[92:] + letters[300:])
    elif name == "textures":
        train = {k: crops([v], 300, rng, side=(40, 100), rows=(0.0, 0.7)) for k, v in tex.items()}
        test = [c for v in tex.values() for c in crops([v], 100, rng, side=(40, 100), rows=(0.78, 1.0))]
        test_labels = np.repeat(np.arange(len(tex)), 100)
        digits, _ = digit_images()
        pick = rng.permutation(len(digits))
        letters = letter_images(308, rng)
        ood = {"digits": [digits[i] for i in pick[:300]], "photos": crops(photo_sources(), 300, rng),
               "faces": faces[:92], "letters": letters[:300]}
        seen = ([digits[i] for i in pick[300:308]] + crops(photo_sources(), 8, rng) + faces[92:] + letters[300:])
    else:
        raise SystemExit(f"unknown ID set {name!r}")
    return train, test, test_labels, ood, seen, crops(misc_sources(), 32, rng)


def write_pngs(folder: Path, images: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        (folder / f"{i:05d}.png").write_bytes(buf.getvalue())
    return folder


# ------------------------------------------------------------------ model (product's own Ray Train)
def trained_model(name: str, train_dir: Path, args: argparse.Namespace) -> Path:
    from ood_audit.training import TrainConfig, train

    key = hashlib.sha256(json.dumps({"set": name, "data": DATA_VERSION, "epochs": args.epochs, "lr": args.lr,
                                     "seed": args.seed, "arch": "resnet18"}).encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / "ood-audit-bench-selection" / key
    out = cache / "model.safetensors"
    if out.is_file() and (cache / "model.json").is_file():
        print(f"[{name}] cached model {out}")
        return out
    t0 = time.perf_counter()
    res = train(TrainConfig(data=str(train_dir), output=str(out), arch="resnet18", small_input=True, image_size=SIZE,
                            epochs=args.epochs, batch_size=64, lr=args.lr, workers=2, seed=args.seed,
                            run_name=f"sel-{name}-{key}", storage=str(cache / "runs"), log_every_s=60.0))
    print(f"[{name}] trained {res.epochs_completed} epochs in {time.perf_counter() - t0:.0f}s, "
          f"final loss {res.final_loss:.3f}")
    return out


# ------------------------------------------------------------------ scoring every block
@torch.no_grad()
def norms_at_blocks(tap, pixels: torch.Tensor, batch: int = 128) -> np.ndarray:
    from ood_audit.calibration.evidence import block_norms

    out = [block_norms(tap(pixels[i : i + batch].float() / 255).blocks, tap.blocks).double().numpy()
           for i in range(0, pixels.shape[0], batch)]
    return np.concatenate(out)


def decode(uris: list[str]) -> torch.Tensor:
    from ood_audit.io.dataset import decode_dataset

    return torch.from_numpy(decode_dataset(uris, size=SIZE).images).permute(0, 3, 1, 2).contiguous()


def run_id_set(name: str, work: Path, args: argparse.Namespace) -> dict:
    """Data (split by ``args.seed``), model, calibrate, then FPR95 of every block and each selector's choice."""
    from ood_audit.bundle.files import open_bundle
    from ood_audit.calibration.calibrate import CalibrateConfig, calibrate, list_id_images
    from ood_audit.calibration.evidence import outlier_evidence
    from ood_audit.calibration.selection import choose_block
    from ood_audit.calibration.split import heldout_mask
    from ood_audit.metrics import fpr_at_tpr
    from ood_audit.models import TapModel, read_state
    from ood_audit.scores.featurenorm import feature_norm_two_sided, two_sided_stats

    train, test, test_labels, ood, seen, unseen = build_id_set(name, args.seed)
    root = work / f"{name}-{args.seed}"
    for c, imgs in train.items():
        write_pngs(root / "train" / c, imgs)
    write_pngs(root / "test", test)
    for k, imgs in ood.items():
        write_pngs(root / "ood" / k, imgs)
    write_pngs(root / "outliers", seen)
    model = trained_model(name, root / "train", args)

    t0 = time.perf_counter()
    res = calibrate(CalibrateConfig(data=str(root / "train"), model=str(model), output=str(root / "bundles"),
                                    workers=0, selector="validated", outliers=str(root / "outliers"),
                                    seed=args.seed, k_knn=20))
    t_cal = time.perf_counter() - t0
    info = open_bundle(res.bundle_uri).info
    sel = info.selection.model_dump(mode="json")
    blocks = sel["candidates"]

    spec = info.model.spec()
    net = spec.build(read_state(model))
    tap = TapModel(net, blocks=blocks, mean=spec.mean, std=spec.std).eval()
    uris, _ = list_id_images(str(root / "train"), None)
    held = heldout_mask(uris, 0.1, args.seed)
    fn_held = norms_at_blocks(tap, decode([u for u, h in zip(uris, held) if h]))
    test_px = decode([str(p) for p in sorted((root / "test").iterdir())])
    fn_test = norms_at_blocks(tap, test_px)
    with torch.no_grad():
        pred = torch.cat([tap(test_px[i:i + 256].float() / 255).logits.argmax(1) for i in range(0, len(test_px), 256)])
    acc = float((pred.numpy() == test_labels).mean())
    fn_ood = {k: norms_at_blocks(tap, decode([str(p) for p in sorted((root / "ood" / k).iterdir())])) for k in ood}
    fn_unseen = norms_at_blocks(tap, torch.from_numpy(np.stack(unseen)).permute(0, 3, 1, 2).contiguous())
    unseen_ev = outlier_evidence(blocks, fn_held, fn_unseen)

    per_block = {}
    for j, b in enumerate(blocks):
        c, s = two_sided_stats(fn_held[:, j])
        two = lambda a: feature_norm_two_sided(torch.from_numpy(a), c, s).numpy()  # noqa: E731
        f1 = {k: fpr_at_tpr(fn_test[:, j], v[:, j]) for k, v in fn_ood.items()}
        f2 = {k: fpr_at_tpr(two(fn_test[:, j]), two(v[:, j])) for k, v in fn_ood.items()}
        per_block[b] = {"fn": f1, "fn2": f2, "mean_fn": float(np.mean(list(f1.values()))),
                        "mean_fn2": float(np.mean(list(f2.values())))}
    ev, outl = info.selection.evidence, info.selection.outliers
    choices = {"normratio": choose_block("normratio", sel["ratios"], ev, outl),
               "robust": choose_block("robust", sel["ratios"], ev, outl),
               "validated (seen kinds)": choose_block("validated", sel["ratios"], ev, outl),
               "validated (unseen kind)": choose_block("validated", sel["ratios"], ev, unseen_ev)}
    assert choices["validated (seen kinds)"] == sel["selected"]
    return {"name": name, "seed": args.seed, "blocks": blocks, "per_block": per_block, "choices": choices,
            "selection": sel,
            "ood": list(ood), "counts": {"train": sum(map(len, train.values())), "test": len(test),
                                        **{k: len(v) for k, v in ood.items()}, "outliers seen": len(seen),
                                        "outliers unseen": len(unseen)},
            "calibrate_s": t_cal, "accuracy": acc}


# ------------------------------------------------------------------ report
def report(r: dict) -> str:
    pb, blocks = r["per_block"], r["blocks"]
    ev = r["selection"]["evidence"]["per_block"]
    o1 = min(blocks, key=lambda b: pb[b]["mean_fn"])
    o2 = min(blocks, key=lambda b: pb[b]["mean_fn2"])
    lines = [f"ID set {r['name']} (seed {r['seed']}): " + ", ".join(f"{k} {v}" for k, v in r["counts"].items())
             + f"; test accuracy {r['accuracy']:.3f}"
             + f"; calibrate {r['calibrate_s']:.0f}s",
             f"  {'block':<10}{'R':>8}{'worst':>7}{'above':>7}{'valFPR':>7}  "
             + "".join(f"{k[:8]:>9}" for k in r["ood"]) + f"{'mean FN':>9}{'mean FN2':>9}"]
    outl = r["selection"]["outliers"]["per_block"]
    for b in blocks:
        e = ev[b]
        lines.append(f"  {b:<10}{e['normratio']:>8.4f}{e['min_auroc']:>7.2f}{e['max_above_id_median']:>7.2f}"
                     f"{outl[b]['fpr95']:>7.2f}  " + "".join(f"{pb[b]['fn'][k]:>9.3f}" for k in r["ood"])
                     + f"{pb[b]['mean_fn']:>9.3f}{pb[b]['mean_fn2']:>9.3f}")
    lines += ["", f"  {'selector':<25}{'block':<10}{'mean FPR95 FN':>14}{'mean FPR95 FN2':>15}{'gap to oracle FN':>18}"]
    for s, b in r["choices"].items():
        lines.append(f"  {s:<25}{b:<10}{pb[b]['mean_fn']:>14.3f}{pb[b]['mean_fn2']:>15.3f}"
                     f"{pb[b]['mean_fn'] - pb[o1]['mean_fn']:>18.3f}")
    lines.append(f"  {'oracle (FN)':<25}{o1:<10}{pb[o1]['mean_fn']:>14.3f}{pb[o1]['mean_fn2']:>15.3f}{0:>18.3f}")
    lines.append(f"  {'oracle (FN2)':<25}{o2:<10}{pb[o2]['mean_fn']:>14.3f}{pb[o2]['mean_fn2']:>15.3f}"
                 f"{pb[o2]['mean_fn'] - pb[o1]['mean_fn']:>18.3f}")
    return "\n".join(lines)


def summary(results: list[dict]) -> str:
    """One row per (ID set, seed): each selector's gap to the oracle block's mean FPR95 of featurenorm."""
    from ood_audit.calibration.selection import DEFAULT_SELECTOR

    names = list(results[0]["choices"])
    lines = [f"  {'ID set':<10}{'seed':>5}{'oracle':>10}{'FN':>7}" + "".join(f"{n[:23]:>25}" for n in names)]
    ok = 0
    for r in results:
        pb = r["per_block"]
        o1 = min(r["blocks"], key=lambda b: pb[b]["mean_fn"])
        cells = [f"{b} {pb[b]['mean_fn'] - pb[o1]['mean_fn']:+.3f}" for b in r["choices"].values()]
        lines.append(f"  {r['name']:<10}{r['seed']:>5}{o1:>10}{pb[o1]['mean_fn']:>7.3f}"
                     + "".join(f"{c:>25}" for c in cells))
        d = r["choices"][DEFAULT_SELECTOR]
        ok += pb[d]["mean_fn"] - pb[o1]["mean_fn"] <= 0.05
    lines.append(f"  default selector {DEFAULT_SELECTOR!r}: within 0.05 mean FPR95 of the oracle block in {ok} of "
                 f"{len(results)} runs")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--id-sets", default="digits,textures")
    p.add_argument("--seeds", default="0,1,2", help="each seed re-splits the data and retrains the model")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    results = []
    with tempfile.TemporaryDirectory(prefix="ood-audit-selection-") as tmp:
        for seed in [int(x) for x in args.seeds.split(",")]:
            for name in args.id_sets.split(","):
                args.seed = seed
                torch.manual_seed(seed)
                results.append(run_id_set(name, Path(tmp), args))
                print(report(results[-1]), flush=True)
                print()
    print("Gap to the oracle block (mean FPR95 of featurenorm, lower is better; + = worse than the oracle):")
    print(summary(results))
    print()
    print("FPR95 = fraction of OOD scoring >= the threshold keeping 95% of ID test images (ID positive); "
          "FN = featurenorm (one-sided), FN2 = featurenorm2 (two-sided); means over the OOD sources listed.")
    print("R = NormRatio, worst = min probe AUROC, above = max share of a probe above the ID median FN, "
          "valFPR = FPR95 on the seen-kind known outliers vs held-out ID.")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
