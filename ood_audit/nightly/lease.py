"""Overlap protection for scheduled runs: one lease object under the output root.

Why a lease of our own: KubeRay's RayCronJob has no ``concurrencyPolicy``, and after operator downtime it
replays the runs it missed; a plain CronJob's ``Forbid`` holds only within one cluster, and a person may
start the job by hand. Two nights running at once would scan twice and race on the exports' ledgers.

The lease is ``<output>/nightly/lease.json``; the protocol (conditional create, renewal, stale takeover,
loss, release) is :mod:`ood_audit.io.lease`'s. A night that finds the lease held stops with
:class:`LeaseHeld` (exit status :data:`EXIT_LEASE_HELD`) having touched nothing.
"""
from __future__ import annotations

from typing import Any

from ood_audit.errors import EXIT_LEASE_HELD
from ood_audit.io import lease as _lease
from ood_audit.io.fs import S3Config
from ood_audit.io.lease import LeaseHeld, LeaseLost
from ood_audit.io.uri import join_uri

LEASE_FILE = ("nightly", "lease.json")

__all__ = ["EXIT_LEASE_HELD", "LEASE_FILE", "Lease", "LeaseHeld", "LeaseLost"]


class Lease(_lease.Lease):
    """The nightly lease on one output root: ``with Lease(output, ttl_s, run=...):``."""

    def __init__(self, output: str, ttl_s: int, *, run: str = "", s3: S3Config | None = None,
                 now: Any = None) -> None:
        super().__init__(join_uri(output, *LEASE_FILE), ttl_s, run=run, s3=s3, now=now)
