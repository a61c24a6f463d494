"""`ood-audit blocks [ARCH]`: the tap points of an architecture (SPEC §1, §16), or a table of all of them."""
from __future__ import annotations

import argparse

from ood_audit.commands.common import ARCHITECTURES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("blocks", help="list candidate blocks, last map, penultimate and head of an architecture",
                       description="With ARCH: its candidate blocks (one per line, in forward order), then one "
                                   "line with the last-stage map, the penultimate vector and the head. Without: "
                                   "one line per known architecture.")
    p.add_argument("arch", nargs="?", default=None, metavar="ARCH", help=f"one of: {', '.join(ARCHITECTURES)}")
    p.add_argument("--small-input", action="store_true", help="CIFAR-style stem for ~32 px images")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ood_audit.models import arch_spec, skeleton

    if args.arch is None:
        print("# arch  family  candidates  last-map  penultimate  head  post-ReLU")
        for arch in ARCHITECTURES:
            spec = arch_spec(skeleton(arch, 10, small_input=args.small_input))
            print(f"{arch}  {spec.family}  {len(spec.candidates)}  {spec.last_map}  {spec.penultimate}  {spec.head}  "
                  f"{'yes' if spec.post_relu else 'no'}")
        return 0
    spec = arch_spec(skeleton(args.arch, 10, small_input=args.small_input))
    for name in spec.candidates:
        print(name)
    # FeatureNorm applies its ReLU to every block (SPEC §2); where blocks are not post-ReLU say so, since its
    # evidence is then weaker (README "Your own model": when to flag on CSD alone).
    relu = "" if spec.post_relu else "; blocks are not post-ReLU (FeatureNorm applies its own ReLU)"
    print(f"# last-stage map: {spec.last_map}; penultimate: {spec.penultimate}; head: {spec.head}{relu}")
    return 0
