"""Starting or joining Ray the same way from every command, test and job."""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

# Quiet, local-friendly defaults; a user's own environment always wins.
_ENV_DEFAULTS = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_DEDUP_LOGS": "1",
}


def apply_env_defaults() -> None:
    """Set Ray environment defaults (no auth token or usage stats for local runs) unless already set."""
    for k, v in _ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)


def init_ray(address: str | None = None, *, num_cpus: int | None = None,
             object_store_memory: int | None = None, runtime_env: dict | None = None) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``) if given, else start a local Ray; no-op when connected.

    Local Ray starts without the dashboard; ``runtime_env`` env_vars (e.g. S3 credentials) reach every
    worker.
    """
    apply_env_defaults()
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"runtime_env": runtime_env} if runtime_env else {}
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, logging_level=logging.WARNING, **kwargs)
        return
    if object_store_memory is None and os.environ.get("OOD_AUDIT_OBJECT_STORE_MB"):
        object_store_memory = int(os.environ["OOD_AUDIT_OBJECT_STORE_MB"]) * 2**20
    ray.init(num_cpus=num_cpus, object_store_memory=object_store_memory, include_dashboard=False,
             logging_level=logging.WARNING, **kwargs)
