"""GPU benchmarks, in-process (no Ray, no faiss needed): the figures the scan, training and kNN issues ask for.

Prints one table; every ratio is measured within this run.

1. Score stage (SPEC §2, §5–7): `Scorer` on uint8 batches already on the host -> all scores, ResNet18
   small_input at 32 px and ResNet50 at 224 px, with channels_last + bf16 autocast + the torch kNN backend.
2. GPU JPEG decode: `torchvision.io.decode_jpeg(device="cuda")` batched vs PIL on the host.
3. ALPA fine-tune (MODE-F) training steps and calibration (NormRatio + banks) throughput on the GPU.
4. Exact CSD/kNN search: torch backend on the GPU vs pytorch-ood's KNN (scikit-learn on the host CPUs).

    python benchmarks/gpu.py [--quick]
"""
from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch


def _sync() -> None:
    torch.cuda.synchronize()


def timed(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    _sync()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        _sync()
        best = min(best, time.perf_counter() - t)
    return best


def score_stage(arch: str, small: bool, size: int, batch: int, n_bank: int, dim: int, rows: list) -> None:
    from ood_audit.bundle.scorer import make_scorer
    from ood_audit.models import ModelSpec, build_model

    spec = ModelSpec(arch, 10, small, size)
    state = build_model(arch, 10, small_input=small).state_dict()
    g = torch.Generator().manual_seed(0)
    csd_bank = torch.nn.functional.normalize(torch.randn(6 * n_bank, dim, generator=g), dim=1)
    knn_bank = torch.nn.functional.normalize(torch.randn(n_bank, dim, generator=g), dim=1)
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8).pin_memory()
    from ood_audit.scores.detectors import CSD, KNN, LOGIT_DETECTORS, make_detectors

    block = "layer3.1" if arch == "resnet18" else "layer3.5"
    for label, dtype, precision in (("fp32", None, "float32"), ("bf16 autocast", torch.bfloat16, "bfloat16")):
        dets = [*make_detectors(("featurenorm", *LOGIT_DETECTORS), block=block).values(),
                CSD(10, device="cuda", knn_backend="torch").fit(csd_bank.reshape(n_bank, 6, dim)),
                KNN(50, device="cuda", knn_backend="torch").fit(knn_bank)]
        sc = make_scorer(state, spec, block, detectors=dets, device="cuda", precision=precision)
        sec = timed(lambda: sc(x))
        rows.append((f"score stage {arch} {size}px ({label}, batch {batch}, banks 6x{n_bank}/{n_bank})",
                     f"{batch / sec:,.0f} img/s"))
        def forward():
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                sc.tap(x.cuda(non_blocking=True).float().div_(255))

        fwd = timed(forward)
        rows.append((f"  of which H2D + forward pass only ({label})", f"{batch / fwd:,.0f} img/s"))


def jpeg_decode(n: int, size: int, rows: list) -> None:
    from PIL import Image
    from torchvision.io import decode_jpeg

    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(n):
        a = (rng.random((size, size, 3)) * 40 + np.linspace(0, 200, size)[None, :, None]).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=90)
        blobs.append(buf.getvalue())
    datas = [torch.frombuffer(b, dtype=torch.uint8) for b in blobs]
    t = time.perf_counter()
    for b in blobs:
        np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
    cpu = time.perf_counter() - t
    gpu = timed(lambda: decode_jpeg(datas, device="cuda"))
    rows.append((f"JPEG decode {size}px, PIL 1 host thread", f"{n / cpu:,.0f} img/s"))
    rows.append((f"JPEG decode {size}px, decode_jpeg(device='cuda') batched", f"{n / gpu:,.0f} img/s"))
    rows.append(("  GPU / PIL-one-thread ratio", f"{cpu / gpu:.1f}x"))


def alpa_and_calibration(batch: int, steps: int, rows: list) -> None:
    from ood_audit.calibration.normratio import norm_ratio_sums
    from ood_audit.models import TapModel, block_candidates, build_model
    from ood_audit.scores.csd import csd_views
    from ood_audit.training.net import TrainNet

    model = build_model("resnet18", 10, small_input=True).cuda()
    net = TrainNet(model.cpu(), "alpa-finetune", image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3).cuda()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    x = torch.rand(2 * batch, 3, 32, 32, device="cuda")
    y = torch.arange(batch, device="cuda").repeat(2) % 10

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = net(x, y)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sec = timed(lambda: [step() for _ in range(steps)], repeat=2)
    rows.append((f"ALPA fine-tune, resnet18 32px, {batch} images x 2 views/step", f"{steps * batch / sec:,.0f} img/s"))

    m = build_model("resnet18", 10, small_input=True).cuda().eval()
    tap = TapModel(m, blocks=block_candidates(m)).cuda()
    imgs = torch.rand(4 * batch, 3, 32, 32)

    def calib():
        norm_ratio_sums(tap, [imgs], seed=0, device="cuda")
        with torch.no_grad():
            t = tap(imgs.cuda())
            csd_views(t.last_map.float())
            torch.nn.functional.normalize(t.penultimate.float(), dim=1)

    sec = timed(calib, repeat=2)
    rows.append((f"calibration bank phase (NormRatio 8 blocks + CSD/kNN features), {4 * batch} images",
                 f"{4 * batch / sec:,.0f} img/s"))


def knn_vs_pytorch_ood(n_bank: int, n_q: int, k: int, rows: list) -> None:
    from ood_audit.knn import build_index

    g = torch.Generator().manual_seed(1)
    centres = torch.nn.functional.normalize(torch.randn(1000, 512, generator=g), dim=1)
    bank = torch.nn.functional.normalize(centres[torch.randint(0, 1000, (n_bank,), generator=g)]
                                         + 0.3 * torch.randn(n_bank, 512, generator=g) / 512**0.5 * 8, dim=1)
    q = torch.nn.functional.normalize(centres[torch.randint(0, 1000, (n_q,), generator=g)]
                                      + 0.3 * torch.randn(n_q, 512, generator=g) / 512**0.5 * 8, dim=1)
    t = time.perf_counter()
    idx = build_index(bank, kind="torch", device="cuda")
    _sync()
    build = time.perf_counter() - t
    search = timed(lambda: idx.search(q.cuda(), k))
    ours = idx.search(q.cuda(), k)[0][:, k - 1].sqrt().cpu().numpy()
    try:
        from pytorch_ood.detector import KNN
    except ImportError:
        rows.append(("pytorch-ood KNN", "skipped (not installed)"))
        return
    import inspect

    flag = "norm_features" if "norm_features" in inspect.signature(KNN.__init__).parameters else "normalize"
    det = KNN(None, k=k, **{flag: True})
    t = time.perf_counter()
    det.fit_features(bank, torch.zeros(n_bank, dtype=torch.long))
    p_build = time.perf_counter() - t
    t = time.perf_counter()
    ref = det.predict_features(q).double().numpy()
    p_search = time.perf_counter() - t
    diff = float(np.max(np.abs(ours - ref)))
    rows.append((f"exact kNN {n_bank}x512, {n_q} queries, k={k}: ours torch CUDA build+search",
                 f"{build:.3f} + {search:.4f} s"))
    rows.append(("  pytorch-ood KNN (scikit-learn, host CPUs) fit+predict", f"{p_build:.3f} + {p_search:.3f} s"))
    rows.append(("  speed-up, search", f"{p_search / search:,.0f}x"))
    rows.append(("  speed-up, build+search", f"{(p_build + p_search) / (build + search):,.1f}x"))
    rows.append(("  max |k-th distance difference|", f"{diff:.2e}"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA device"
    torch.backends.cudnn.benchmark = True
    rows = _Rows()
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}", flush=True)
    q = args.quick
    score_stage("resnet18", True, 32, 2048 if q else 8192, 5_000 if q else 50_000, 512, rows)
    score_stage("resnet18", True, 32, 2048 if q else 8192, 5_000 if q else 10_000, 512, rows)
    score_stage("resnet50", False, 224, 128 if q else 512, 5_000 if q else 50_000, 2048, rows)
    jpeg_decode(256 if q else 2048, 224, rows)
    alpa_and_calibration(128, 5 if q else 20, rows)
    knn_vs_pytorch_ood(30_000 if q else 300_000, 2_000, 50, rows)


class _Rows(list):
    """Prints each row as it is measured, so a failure later keeps the earlier figures."""

    def append(self, row: tuple[str, str]) -> None:
        super().append(row)
        print(f"{row[0]:<78}  {row[1]}", flush=True)


if __name__ == "__main__":
    main()
