"""Benchmark: start-up of `ood-audit --help` and of every sub-command's `--help`. Prints figures, asserts nothing.

    .venv/bin/python benchmarks/startup.py              # 5 runs of each
    .venv/bin/python benchmarks/startup.py --repeat 9

Each help is run as a fresh subprocess (the installed ``ood-audit`` script beside this interpreter, else
``python -m ood_audit.cli``), once to warm the file cache and then ``--repeat`` times; the figure is the median
wall time. So that it does not depend on the machine, each median is also given as a ratio to the median of
``python -c "import torch"`` measured in the same run (the cost the help path used to pay). The last column
says which heavy packages the help path imports: a ``python -c`` that builds the parser through
``ood_audit.cli.build_parser``, renders that command's help and reads ``sys.modules``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEAVY = ("torch", "ray", "pyarrow", "boto3", "matplotlib")

_HELP_IMPORTS_SCRIPT = r"""
import contextlib, io, json, sys
from ood_audit.cli import build_parser
with contextlib.redirect_stdout(io.StringIO()):
    try:
        build_parser().parse_args([*json.loads(sys.argv[1]), "--help"])
    except SystemExit:
        pass
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2:]))))
"""


def entry_point() -> list[str]:
    script = Path(sys.executable).parent / "ood-audit"
    if script.exists():
        return [str(script)]
    found = shutil.which("ood-audit")
    return [found] if found else [sys.executable, "-m", "ood_audit.cli"]


def command_paths() -> list[tuple[str, ...]]:
    from ood_audit.cli import build_parser

    def walk(p: argparse.ArgumentParser, prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
        out = []
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    out += [(*prefix, name), *walk(sub, (*prefix, name))]
        return out

    return [(), *walk(build_parser(), ())]


def median_wall(cmd: list[str], repeat: int) -> float:
    def once() -> float:
        t = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        dt = time.perf_counter() - t
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()[-500:]}")
        return dt

    once()  # warm the file cache
    return statistics.median(once() for _ in range(repeat))


def heavy_imports(path: tuple[str, ...]) -> list[str]:
    r = subprocess.run([sys.executable, "-c", _HELP_IMPORTS_SCRIPT, json.dumps(list(path)), *HEAVY], cwd=ROOT,
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="timed runs of each command (default 5)")
    a = ap.parse_args()

    cli = entry_point()
    bare = median_wall([sys.executable, "-c", "pass"], a.repeat)
    torch_s = median_wall([sys.executable, "-c", "import torch"], a.repeat)
    print(f"entry point: {' '.join(cli)}; {a.repeat} runs each, medians")
    print(f"python -c pass:          {bare:7.3f} s")
    print(f"python -c 'import torch': {torch_s:6.3f} s  (the reference of the ratios)")
    print()
    name_w = max(len("ood-audit " + " ".join(p) + " --help") for p in command_paths())
    print(f"{'command':<{name_w}}  {'median s':>8}  {'/ torch':>7}  heavy imports on the help path")
    ratios = []
    for path in command_paths():
        name = " ".join(("ood-audit", *path, "--help"))
        t = median_wall([*cli, *path, "--help"], a.repeat)
        ratios.append(t / torch_s)
        heavy = heavy_imports(path)
        print(f"{name:<{name_w}}  {t:8.3f}  {t / torch_s:7.3f}  {', '.join(heavy) or 'none'}")
    print()
    print(f"slowest help / import torch: {max(ratios):.3f}; median over commands {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
