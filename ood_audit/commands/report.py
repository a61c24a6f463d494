"""`ood-audit report`: placeholder, filled in by the triage work."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    pass
