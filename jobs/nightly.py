"""`ray job submit` entrypoint for the nightly job: the same arguments as `ood-audit nightly`.

    ray job submit --working-dir . -- python jobs/nightly.py --config /etc/ood-audit/nightly.yaml
"""
import sys

from ood_audit.cli import main

if __name__ == "__main__":
    sys.exit(main(["nightly", *sys.argv[1:]]))
