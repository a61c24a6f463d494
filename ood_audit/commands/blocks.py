"""`ood-audit blocks ARCH`: list the candidate blocks of an architecture (SPEC §1)."""
from __future__ import annotations

import argparse

from ood_audit.commands.common import ARCHITECTURES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("blocks", help="list candidate blocks of an architecture")
    p.add_argument("arch", help=f"one of: {', '.join(ARCHITECTURES)}")
    p.add_argument("--small-input", action="store_true", help="CIFAR-style stem for ~32 px images")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ood_audit.models import arch_spec, build_model

    model = build_model(args.arch, num_classes=10, small_input=args.small_input)
    spec = arch_spec(model)
    for name in spec.candidates:
        print(name)
    print(f"# last-stage map: {spec.last_map}; penultimate: {spec.penultimate}; head: {spec.head}")
    return 0
