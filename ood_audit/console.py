"""What a person sees on the console: the product's progress lines and summaries, none of Ray's own.

Ray forwards everything its workers and actors print to the driver's console (``log_to_driver``). On a
small local cluster that is hundreds of lines of internals: Ray Train's placement-group watchdog polls the
state API, which lives in the dashboard we do not start, and warns every few seconds that it cannot.
So :func:`~ood_audit.ray_setup.init_ray` starts Ray with ``log_to_driver=False``: what Ray and its
workers write stays in the session's log folder, whose path is printed once. The product's own records
from inside Ray workers (training progress) reach the driver through a small Ray queue instead
(:class:`LogRelay` on the driver, :func:`relay_logs_to_driver` in the worker) and are printed there like
the driver's own lines.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)
PRODUCT_LOGGER = "ood_audit"


class _QueueHandler(logging.Handler):
    def __init__(self, queue: Any) -> None:
        super().__init__(logging.INFO)
        self.queue = queue

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait({"name": record.name, "levelno": record.levelno, "levelname": record.levelname,
                                   "msg": record.getMessage(), "created": record.created})
        except Exception:  # noqa: BLE001 - a full or gone queue must never break training
            pass


def relay_logs_to_driver(queue: Any | None) -> None:
    """In a Ray worker: also send the product's log records (INFO and up) to the driver's :class:`LogRelay`."""
    if queue is None:
        return
    logger = logging.getLogger(PRODUCT_LOGGER)
    if not any(isinstance(h, _QueueHandler) for h in logger.handlers):
        logger.addHandler(_QueueHandler(queue))
        logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))


class LogRelay:
    """On the driver: a queue the workers log into, and a thread that prints what arrives.

    ``queue`` is None when Ray already forwards worker output to this console (a Ray the user started
    with ``log_to_driver=True``), so nothing is printed twice.
    """

    def __init__(self) -> None:
        from ood_audit.ray_setup import ray_logs_to_driver

        self.queue: Any | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if ray_logs_to_driver():
            return
        from ray.util.queue import Queue

        self.queue = Queue(maxsize=10_000, actor_options={"num_cpus": 0})
        self._thread = threading.Thread(target=self._pump, name="ood-audit-log-relay", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        from ray.util.queue import Empty

        while True:
            try:
                item = self.queue.get(timeout=0.5)
            except Empty:
                if self._stop.is_set():
                    return
                continue
            except Exception:  # noqa: BLE001 - the queue actor is gone (Ray shut down)
                return
            record = logging.makeLogRecord({**item, "args": None})
            logging.getLogger(item["name"]).handle(record)

    def close(self) -> None:
        """Print what is still queued, then stop the thread and the queue actor."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(10)
        try:
            import ray

            ray.kill(self.queue.actor)
        except Exception:  # noqa: BLE001 - already gone
            pass
        self._thread = None

    def __enter__(self) -> "LogRelay":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
