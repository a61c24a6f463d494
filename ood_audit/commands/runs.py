"""`ood-audit runs sweep OUTPUT`: remove the part files no commit marker names (crashed attempts' leftovers)."""
from __future__ import annotations

import argparse
import json

from ood_audit.commands.common import add_s3_args, s3_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="housekeeping of the scan runs under an output root",
                       description="Housekeeping of the scan runs under an output root.")
    runs_sub = p.add_subparsers(dest="runs_command", metavar="SUBCOMMAND", required=True)
    s = runs_sub.add_parser(
        "sweep", help="remove part files that no commit marker names",
        description="Remove every part file under OUTPUT/reports/ that no run's commit marker names: the "
                    "leftovers of attempts that crashed (SIGKILL, out of memory, storage down) before their own "
                    "sweep. No reader ever reads such a file (reports, exports, drift and the incremental scan's "
                    "done-set read committed files only), so this only frees space; every scan also runs it when "
                    "it starts. A run whose lease a live scan holds is left alone. Prints each file removed.")
    s.add_argument("output", metavar="OUTPUT", help="the scan's output root (local, s3://, gs:// or az://)")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    add_s3_args(s)
    s.set_defaults(func=run_sweep)


def run_sweep(args: argparse.Namespace) -> int:
    from ood_audit.store.run_ledger import sweep_output

    result = sweep_output(args.output, s3=s3_from_args(args))
    if args.json:
        print(json.dumps({"removed": result.removed, "busy_runs": result.busy_runs}, indent=2))
    else:
        print("\n".join(result.lines()))
    return 0
