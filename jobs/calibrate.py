"""Entrypoint for `ray job submit -- python jobs/calibrate.py ARGS`: same code path as `ood-audit calibrate ARGS`."""
import sys

from ood_audit.cli import main

if __name__ == "__main__":
    sys.exit(main(["calibrate", *sys.argv[1:]]))
