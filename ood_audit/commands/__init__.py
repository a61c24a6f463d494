"""Sub-commands: each module has ``register(subparsers)`` and sets ``func`` to its runner."""
from . import blocks, bundle, calibrate, demo, evaluate, export, report, scan, train

COMMANDS = (blocks, evaluate, train, calibrate, bundle, scan, export, report, demo)
