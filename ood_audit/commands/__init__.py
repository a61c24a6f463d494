"""Sub-commands: each module has ``register(subparsers)`` and sets ``func`` to its runner."""
from ood_audit.commands import (blocks, bundle, calibrate, demo, evaluate, export, nightly, plan, report, runs, scan, train,
                                weights)

COMMANDS = (blocks, evaluate, train, calibrate, bundle, plan, scan, export, report, nightly, runs, demo, weights)
