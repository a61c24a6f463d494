"""Entrypoint for `ray job submit -- python jobs/scan.py ARGS`: same code path as `ood-audit scan ARGS`."""
import sys

from ood_audit.cli import main

if __name__ == "__main__":
    sys.exit(main(["scan", *sys.argv[1:]]))
