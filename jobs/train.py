"""`ray job submit` entrypoint for training: the same arguments as `ood-audit train`.

    ray job submit --working-dir . -- python jobs/train.py --data s3://bucket/train/ \
        --output s3://bucket/models/r18.safetensors --storage s3://bucket/runs --run-name r18 --workers 4
"""
import sys

from ood_audit.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
