"""Sub-commands: each module has ``register(subparsers)`` and sets ``func`` to its runner."""
from . import blocks, evaluate

COMMANDS = (blocks, evaluate)
