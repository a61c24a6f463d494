"""`ood-audit demo`: the product tour on an embedded default (see :mod:`.tour`); its data in :mod:`.data`."""
from ood_audit.demo.data import OUTLIER_KINDS, demo_files, digit_variants, kind_of, write_digit_folders
from ood_audit.demo.tour import run_demo

__all__ = ["OUTLIER_KINDS", "demo_files", "digit_variants", "kind_of", "run_demo", "write_digit_folders"]
