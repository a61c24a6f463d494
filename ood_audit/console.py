"""What a person sees on the console: the product's progress lines and summaries, none of Ray's own.

Ray forwards everything its workers and actors print to the driver's console (``log_to_driver``). On a
small local cluster that is hundreds of lines of internals: Ray Train's placement-group watchdog polls the
state API, which lives in the dashboard we do not start, and warns every few seconds that it cannot.
So :func:`~ood_audit.ray_setup.init_ray` starts Ray with ``log_to_driver=False``: what Ray and its
workers write stays in the session's log folder, whose path is printed once. The product's own records
from inside Ray workers (training progress) reach the driver through a small Ray queue instead
(:class:`LogRelay` on the driver, :func:`relay_logs_to_driver` in the worker) and are printed there like
the driver's own lines.

No secret reaches a log, at any level (:class:`RedactSecrets`): one filter on every handler of the root
logger masks what botocore's DEBUG lines (request headers), urllib3's retry lines (presigned URLs) and any
other record could carry.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any

log = logging.getLogger(__name__)
PRODUCT_LOGGER = "ood_audit"


MASK = "<redacted>"
# Header and query names whose values are credentials: AWS's, and the tokens and secrets a webhook URL may carry
# in its query (``?token=``, ``?access_token=``, ``?api_key=``, ``?secret=``, ``?sig=``).
_SECRET_NAMES = (r"authorization|x-amz-security-token|x-amz-credential|x-amz-signature|awsaccesskeyid"
                 r"|(?<![a-z-])(?:access_token|token|api_key|apikey|secret|sig|accountkey|sharedaccesssignature)")
# A header or query parameter with its value quoted (botocore prints headers as a dict of bytes).
_QUOTED = re.compile(rf"(?i)((?:{_SECRET_NAMES})['\"]?\s*[:=]\s*b?)(['\"])(.*?)\2")
# The same unquoted (a URL's query, a raw header line): the value runs to the next separator.
_BARE = re.compile(rf"(?i)((?:{_SECRET_NAMES})\s*[:=]\s*)(?!['\"]|{MASK})"
                   r"(?:(?:Bearer|Token|Basic|AWS4-HMAC-SHA256)\s+)?[^\s&'\",;}]+")
# SigV4 parts wherever they appear (an Authorization value split across a line).
_SIGV4 = re.compile(r"(?i)\b(Signature|Credential)=(?!" + MASK + r")[^\s&'\",;}]+")
# Environment variables whose values are secrets: the AWS keys, Azure's account key and connection string, and every
# token or secret the config may name
# (``token_env``: ``*_TOKEN``, ``*_API_KEY``; a webhook's ``secret_env``: ``*_SECRET``; nightly.config).
SECRET_ENV_NAME = re.compile(r"^(AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|AWS_SECURITY_TOKEN"
                             r"|AZURE_STORAGE_ACCOUNT_KEY|AZURE_STORAGE_KEY|AZURE_STORAGE_CONNECTION_STRING"
                             r"|AZURE_CLIENT_SECRET|[A-Z0-9_]*_TOKEN|[A-Z0-9_]*_API_KEY|[A-Z0-9_]*_SECRET)$")
_MIN_SECRET = 8  # shorter values would mask ordinary words


def redact(text: str) -> str:
    """``text`` with every credential masked: signed-URL parameters, ``Authorization`` and session-token
    headers, and the value of every secret environment variable (``SECRET_ENV_NAME``)."""
    text = _QUOTED.sub(rf"\1\2{MASK}\2", text)
    text = _BARE.sub(rf"\1{MASK}", text)
    text = _SIGV4.sub(rf"\1={MASK}", text)
    for name, value in os.environ.items():  # read per record: a token may be set after logging starts
        if len(value) >= _MIN_SECRET and value in text and SECRET_ENV_NAME.match(name):
            text = text.replace(value, MASK)
    return text


class RedactSecrets(logging.Filter):
    """Masks secrets in a record's message and traceback (:func:`redact`) before any handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def redact_root_handlers() -> None:
    """Put :class:`RedactSecrets` on every handler of the root logger (once each). A handler filter sees the
    records every library's logger propagates to the root; a logger filter would see only its own."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())


class ConsoleHandler(logging.StreamHandler):
    """The command line's handler: on a terminal, log lines go above the one progress line that
    :class:`ood_audit.progress.Progress` keeps updating (``tqdm.write``); elsewhere, plain lines."""

    def emit(self, record: logging.LogRecord) -> None:
        if not _isatty(self.stream):
            super().emit(record)
            return
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - as logging does: a console that fails never stops the run
            self.handleError(record)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def console_stream() -> Any | None:
    """The stream of the root logger's console handler (None without one)."""
    return next((h.stream for h in logging.getLogger().handlers if isinstance(h, ConsoleHandler)), None)


def console_is_tty() -> bool:
    """True when the product's console is a terminal: progress is then one line updated in place."""
    return _isatty(console_stream())


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
