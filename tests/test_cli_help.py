"""`ood-audit --help` and every sub-command's help stay light: no torch, Ray, pyarrow, boto3 or matplotlib.

Checked in fresh interpreters (this test process has long imported them), without timing anything.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ood_audit.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "ray", "pyarrow", "boto3", "matplotlib")


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every sub-command path (``("bundle", "show")`` included), depth first."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append((*prefix, name))
                out += _commands(sub, (*prefix, name))
    return out


COMMANDS = _commands(build_parser())

_HELP_SCRIPT = r"""
import argparse, contextlib, io, json, sys
from ood_audit.cli import build_parser

codes = {}
for path in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            build_parser().parse_args([*path, "--help"])
            code = None
        except SystemExit as e:
            code = e.code
    codes[" ".join(path)] = [code, "usage: ood-audit" in out.getvalue()]
print(json.dumps({"codes": codes, "loaded": sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2:]))}))
"""


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_commands_found():
    assert {c[0] for c in COMMANDS} >= {"blocks", "evaluate", "train", "calibrate", "bundle", "scan", "export",
                                        "report", "nightly", "demo"}
    assert ("bundle", "show") in COMMANDS


def test_every_help_renders_without_heavy_imports():
    r = _run("-c", _HELP_SCRIPT, json.dumps([[], *map(list, COMMANDS)]), *HEAVY)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["loaded"] == [], f"the help path imported {res['loaded']}"
    assert set(res["codes"]) == {"", *(" ".join(c) for c in COMMANDS)}
    for name, (code, usage) in res["codes"].items():
        assert code == 0 and usage, f"`ood-audit {name} --help`: exit {code}, usage printed: {usage}"


@pytest.mark.parametrize("path", [(), *COMMANDS], ids=lambda p: " ".join(p) or "top-level")
def test_help_exits_0(path):
    """The real entry point, as a user runs it; ``-X importtime`` lists every module it imported."""
    r = _run("-X", "importtime", "-m", "ood_audit.cli", *path, "--help")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("usage: ood-audit")
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    heavy = sorted({m.split(".")[0] for m in imported} & set(HEAVY))
    assert not heavy, f"`ood-audit {' '.join(path)} --help` imported {heavy}"


def test_option_vocabularies_match_their_sources():
    """The copies that keep the parser light agree with the modules that own them."""
    from ood_audit.calibration.selection import DEFAULT_SELECTOR, SELECTORS
    from ood_audit.commands import common
    from ood_audit.models import ARCHITECTURES
    from ood_audit.models.precision import DEFAULT_PRECISION, PRECISIONS
    from ood_audit.report.build import DEFAULT_TOP
    from ood_audit.scores.probes import DEFAULT_PROBES

    assert common.ARCHITECTURES == ARCHITECTURES
    assert common.SELECTORS == SELECTORS
    assert common.DEFAULT_SELECTOR == DEFAULT_SELECTOR
    assert common.DEFAULT_PROBES == DEFAULT_PROBES
    assert common.DEFAULT_REPORT_TOP == DEFAULT_TOP
    assert common.PRECISIONS == PRECISIONS and common.DEFAULT_PRECISION == DEFAULT_PRECISION


_CALIBRATE = ["calibrate", "--data", "d", "--model", "m.safetensors", "--output", "o"]


def test_id_flag_rate(capsys):
    p = build_parser()
    assert p.parse_args(_CALIBRATE).id_flag_rate == 0.05
    assert p.parse_args([*_CALIBRATE, "--id-flag-rate", "0.02"]).id_flag_rate == 0.02
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit) as e:
        p.parse_args([*_CALIBRATE, "--id-flag-rate", "x"])
    assert e.value.code == 2


def test_target_fpr_is_a_deprecated_alias(capsys):
    args = build_parser().parse_args([*_CALIBRATE, "--target-fpr", "0.01"])
    assert args.id_flag_rate == 0.01 and not hasattr(args, "target_fpr")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--target-fpr is deprecated" in err[0] and "--id-flag-rate" in err[0]


def test_target_fpr_is_hidden_from_help():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    text = sub.choices["calibrate"].format_help()
    assert "--id-flag-rate" in text and "--target-fpr" not in text
