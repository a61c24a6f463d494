"""Sub-commands: each module has ``register(subparsers)`` and sets ``func`` to its runner."""
from . import blocks, bundle, calibrate, demo, evaluate, scan, train

COMMANDS = (blocks, evaluate, train, calibrate, bundle, scan, demo)
