"""`ood-audit weights import SRC --arch ARCH --output DST.safetensors`: bring your own model (SPEC §16)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ood_audit.commands.common import ARCHITECTURES, add_s3_args, s3_from_args
from ood_audit.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="import a model's weights (torchvision .pth/.pt or safetensors)")
    inner = p.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    imp = inner.add_parser("import", help="a checkpoint -> safetensors weights + <stem>.json beside them",
                           description="Read SRC with the safe loader (torch.load weights_only=True) or as "
                                       "safetensors, check that it loads strictly into ARCH (the class count "
                                       "is read from its head) and write DST plus its description DST.json.")
    imp.add_argument("src", metavar="SRC", help="torchvision .pth/.pt checkpoint or safetensors state dict")
    imp.add_argument("--arch", required=True, choices=ARCHITECTURES, metavar="ARCH", help=", ".join(ARCHITECTURES))
    imp.add_argument("--output", required=True, metavar="DST.safetensors",
                     help="where to write (local, s3://, gs:// or az://)")
    imp.add_argument("--image-size", type=int, default=None, help="input size in px (default 224, 32 with --small-input)")
    imp.add_argument("--small-input", action="store_true", help="the CIFAR-style stem of `ood-audit train --small-input`")
    imp.add_argument("--classes", default=None, metavar="FILE|imagenet",
                     help="class names: a text file, one per line in head order, or 'imagenet' (torchvision's list)")
    add_s3_args(imp)
    imp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ood_audit.models.importer import import_weights

    res = import_weights(args.src, args.arch, args.output,
                         image_size=args.image_size or (32 if args.small_input else 224),
                         small_input=args.small_input, class_names=_class_names(args.classes),
                         s3=s3_from_args(args) if _uses_s3(args) else None)
    spec = res.spec
    print(f"imported {args.src} as {spec.arch}: {spec.num_classes} classes, {spec.image_size} px, "
          f"sha256 {res.sha256[:12]}…" + (f", {res.renamed} key(s) renamed" if res.renamed else ""))
    print(f"wrote {res.output} and {res.metadata}")
    return 0


def _uses_s3(args: argparse.Namespace) -> bool:
    from ood_audit.io.uri import is_remote_uri  # not at import time: `--help` must not import pyarrow

    return any(is_remote_uri(str(u)) for u in (args.src, args.output) if u)


def _class_names(value: str | None) -> list[str] | None:
    if value is None:
        return None
    if value == "imagenet":
        from ood_audit.models.importer import imagenet_classes

        return imagenet_classes()
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"--classes {value}: no such file (give a text file, one class per line, or 'imagenet')")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise ConfigError(f"--classes {value}: the file names no class")
    return names
