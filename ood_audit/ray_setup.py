"""Starting or joining Ray the same way from every command, test and job."""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)

# Quiet, local-friendly defaults; a user's own environment always wins.
_ENV_DEFAULTS = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_DEDUP_LOGS": "1",
    # Ray ends a worker process beyond its soft limit (one per CPU) after 1 s idle. A scan's read tasks (a
    # quarter CPU each) run more workers than that between its batches, and each new one imports Ray Data and
    # pandas again (seconds of CPU): a local Ray keeps them for a minute instead.
    "RAY_idle_worker_killing_time_threshold_ms": "60000",
}

# Only for a Ray started here, on this one machine: Ray Train's preemption watcher (an actor per training run)
# follows the draining of cluster nodes, which a single machine never sees; it would only cost a process.
_LOCAL_ENV_DEFAULTS = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def apply_env_defaults() -> None:
    """Set Ray environment defaults (no auth token or usage stats for local runs) unless already set."""
    for k, v in _ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)


# Whether the Ray this process started forwards worker output to its console (None: not started here).
_LOG_TO_DRIVER: bool | None = None
_LOG_DIR: str | None = None


def ray_logs_to_driver() -> bool:
    """True unless this process started Ray itself with worker output kept off the console."""
    return _LOG_TO_DRIVER is not False


def ray_log_dir() -> str | None:
    """The folder where Ray keeps its own logs (the session's ``logs/``), once Ray was started here."""
    return _LOG_DIR


def init_ray(address: str | None = None, *, num_cpus: int | None = None,
             object_store_memory: int | None = None, runtime_env: dict | None = None) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``) if given, else start a local Ray; no-op when connected.

    Local Ray starts without the dashboard; ``runtime_env`` env_vars (e.g. S3 credentials) reach every
    worker (through the environment Ray's local processes inherit; a cluster gets them as the job's
    runtime_env). Ray's own output stays in its log folder (see :mod:`ood_audit.console`), unless
    ``OOD_AUDIT_RAY_CONSOLE=1`` asks for it on the console.
    """
    global _LOG_TO_DRIVER, _LOG_DIR
    apply_env_defaults()
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    to_console = os.environ.get("OOD_AUDIT_RAY_CONSOLE", "0") not in ("", "0", "false")
    kwargs: dict = {"runtime_env": runtime_env} if runtime_env else {}
    if address:
        log.info("joining Ray cluster at %s", address)
        ctx = ray.init(address=address, logging_level=logging.WARNING, log_to_driver=to_console, **kwargs)
    else:
        if object_store_memory is None and os.environ.get("OOD_AUDIT_OBJECT_STORE_MB"):
            object_store_memory = int(os.environ["OOD_AUDIT_OBJECT_STORE_MB"]) * 2**20
        # A local Ray's processes inherit this process's environment: env_vars given to them that way,
        # rather than as the job's runtime_env, keep the workers Ray prestarts usable (a job runtime_env
        # makes every task and actor wait for workers started for it) and skip the runtime-env agent.
        local_env = {k: v for k, v in _LOCAL_ENV_DEFAULTS.items() if k not in os.environ}
        local_env.update((runtime_env or {}).get("env_vars") or {})
        rest = {k: v for k, v in (runtime_env or {}).items() if k != "env_vars"}
        with _environment(local_env):
            ctx = ray.init(num_cpus=num_cpus, object_store_memory=object_store_memory, include_dashboard=False,
                           logging_level=logging.WARNING, log_to_driver=to_console,
                           **({"runtime_env": rest} if rest else {}))
    _LOG_TO_DRIVER = to_console
    session = (getattr(ctx, "address_info", None) or {}).get("session_dir")
    _LOG_DIR = os.path.join(session, "logs") if session else None
    _reap_failed_pools()
    if not to_console:
        _quiet_ray_data()
        where = _LOG_DIR or "the Ray head node's session folder (/tmp/ray/session_latest/logs)"
        log.info("Ray's own logs: %s", where)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` while the block runs (Ray's processes start inside it), then restored."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _quiet_ray_data() -> None:
    """Ray Data draws progress bars and logs each execution plan on the console; the product prints its own
    progress lines. Its console handler is raised to ERROR; its file log (``ray-data.log`` in the session's
    log folder) keeps everything."""
    import sys

    try:
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.enable_operator_progress_bars = False
    except Exception:  # noqa: BLE001 - an older or newer Ray Data without these switches
        return
    for handler in logging.getLogger("ray.data").handlers:
        if getattr(handler, "stream", None) in (sys.stderr, sys.stdout):
            handler.setLevel(logging.ERROR)


def _reap_failed_pools() -> None:
    """Have Ray Data kill the pool actors of every execution that fails in this process (:class:`PoolReaper`)."""
    try:
        from ray.data import DataContext
    except ImportError:
        return
    classes = DataContext.get_current().custom_execution_callback_classes
    if PoolReaper not in classes:
        classes.append(PoolReaper)


class PoolReaper:
    """A Ray Data execution callback (``ExecutionCallback``'s methods): kills a failed execution's pool actors.

    Why: Ray Data shuts a failed execution down without force: it only drops its actor handles and leaves the
    actors to Ray's reference counting. But its actors may be restarted, so Ray keeps each one alive while
    anything still refers to it or to the blocks it produced (lineage), and after a failure something often
    does: frames of the failed iteration, in a reference cycle with the executor, or blocks still in flight.
    The pool then holds its CPUs until a garbage collection or later; a scan's next pass, or a training run
    (it asks for every CPU of the cluster) started next in the same process, waits for them. The pools'
    actors are noted at every step of the execution's loop (the pools drop them before the failure is
    reported) and killed when it fails; only the last step's are held, so an actor a pool retires while
    the execution runs still exits as usual.
    """

    def __init__(self) -> None:
        self._actors: list = []

    def before_execution_starts(self, executor) -> None:  # noqa: ANN001 - Ray Data's StreamingExecutor
        self._actors = []

    def on_execution_step(self, executor) -> None:  # noqa: ANN001
        actors = []
        for op in executor._topology:
            pool = getattr(op, "_actor_pool", None)
            if pool is not None:
                actors.extend(getattr(pool, "_running_actors", ()))
                actors.extend(getattr(pool, "_pending_actors", {}).values())
        self._actors = actors

    def after_execution_succeeds(self, executor) -> None:  # noqa: ANN001
        self._actors = []

    def after_execution_fails(self, executor, error: Exception) -> None:  # noqa: ANN001
        import ray

        actors, self._actors = self._actors, []
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)


def release_failed_pipeline(exc: BaseException, wait_s: float = 30.0) -> None:
    """Free what a Ray Dataset whose iteration raised ``exc`` still holds; call it in the handler.

    Its pool's actors are killed as the execution fails (:class:`PoolReaper`, registered by :func:`init_ray`).
    The frames of the loop that consumed it (kept by ``exc``'s traceback, and in a reference cycle with Ray
    Data's executor) still hold the executor, its blocks and the actors' handles until the garbage collector
    happens to find the cycle: the tracebacks are dropped (the message stays) and the cycle is collected now.

    The executor's scheduling thread holds the cycle too until it has seen its shutdown, and Ray Data waits
    for it only 2 s: on a busy machine it can still run when this is called, and what it leaves behind, by
    then in the oldest generation, waits for a full collection that may not come for minutes. So the threads
    of executors already shut down are joined (up to ``wait_s`` in all) before collecting.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e.with_traceback(None)
        e = e.__cause__ or e.__context__
    deadline = time.monotonic() + wait_s
    for thread in threading.enumerate():
        # StreamingExecutor is the thread itself; only those already told to stop are waited for.
        if thread.name.startswith("StreamingExecutor-") and getattr(thread, "_shutdown", False):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
    gc.collect()
