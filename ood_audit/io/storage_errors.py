"""Object-storage failures in one place: what each error code means (its kind and exit status), and how long
a request may wait for a store that does not answer (README "Exit codes / failures").

**The table.** :data:`KINDS` gives each kind of failure its exit status, the codes that mean it (as pyarrow's
texts, botocore's error codes and S3's XML error bodies spell them), and the words of its one-line message.
:func:`storage_error` reads an exception (and its causes) against it; :func:`kind_of_code` reads a bare code.
"Not found" is not a storage failure: it is about one object, and callers decide what it means.

**The budget.** An outage is timed per endpoint and per process, from the first failed attempt until some
request gets an answer. Every retry of the boto3 clients (:func:`boto_retry_hook`, which replaces botocore's
attempt count) and of the reader's GETs asks :func:`next_wait`, so however many requests wait at once, in
whichever layer, none retries past the window: ``--storage-retry-s`` once the endpoint has answered in this
run, at most :data:`FIRST_CONTACT_S` before (a mistyped endpoint fails in seconds, with exit 3, instead of
being waited for as if it were restarting). pyarrow retries inside C++ on a fixed doubling schedule
(25 ms·2^i) that cannot ask the clock, so each pyarrow filesystem is made with the most attempts whose waits
fit in the window left when it is resolved (:func:`pyarrow_attempts`). An outage that lasts past
:data:`ANNOUNCE_S` is announced once, on the console, with what is waited for and for how long at most.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ood_audit.errors import EXIT_CREDENTIALS, EXIT_DENIED, EXIT_NO_BUCKET, EXIT_UNREACHABLE, StorageError
from ood_audit.io.uri import parse_uri

log = logging.getLogger(__name__)

FIRST_CONTACT_S = 10.0   # the window of an endpoint that has not answered yet in this run
ANNOUNCE_S = 5.0         # an outage waited for longer than this gets one console line
BACKOFF_S, BACKOFF_MAX_S = 0.25, 10.0  # wait before retry i: BACKOFF_S * 2^(i-1), at most BACKOFF_MAX_S
_PYARROW_BASE_DELAY_S = 0.025  # AWS SDK for C++ DefaultRetryStrategy: 25 ms * 2^i before retry i


@dataclass(frozen=True)
class Kind:
    """One row of the table: the exit status, the codes that mean this kind, and its message's words."""

    exit_status: int
    codes: tuple[str, ...]
    what: str
    fix: str


# Order matters: a text is matched against the rows in this order (a refused signature is not "denied").
KINDS: dict[str, Kind] = {
    "credentials": Kind(EXIT_CREDENTIALS, (
        "INVALID_ACCESS_KEY_ID", "InvalidAccessKeyId", "SIGNATURE_DOES_NOT_MATCH", "SignatureDoesNotMatch",
        "EXPIRED_TOKEN", "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "AuthorizationHeaderMalformed",
        "InvalidClientTokenId", "UNRECOGNIZED_CLIENT", "UnrecognizedClientException", "InvalidSecurity",
        "MISSING_AUTHENTICATION_TOKEN",
        # Azure (the service, then Azurite's wording) and GCS
        "AuthenticationFailed", "InvalidAuthenticationInfo", "failed to authenticate", "UNAUTHENTICATED",
        "invalid_grant", "Could not load the default credentials", "Could not create a OAuth2 access token"),
        "object storage at {endpoint} refused the credentials",
        "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the session token)"),
    "no_bucket": Kind(EXIT_NO_BUCKET, ("NO_SUCH_BUCKET", "NoSuchBucket", "Bucket does not exist",
                                       "bucket does not exist", "ContainerNotFound", "container does not exist"),
                      "no such bucket at {endpoint}", "create it or fix the URI"),
    "denied": Kind(EXIT_DENIED, ("ACCESS_DENIED", "AccessDenied", "AccessDeniedException", "AllAccessDisabled",
                                 "Forbidden", "Permission denied", "Read-only file system",
                                 "AuthorizationPermissionMismatch", "AuthorizationFailure", "PERMISSION_DENIED",
                                 "InsufficientAccountPermissions"),
                   "access denied by {endpoint}", "check the credentials, grant them access, or choose another location"),
    "unreachable": Kind(EXIT_UNREACHABLE, (
        "NETWORK_CONNECTION", "curlCode", "Could not connect", "Connection refused", "REQUEST_TIMEOUT",
        "RequestTimeout", "SLOW_DOWN", "SlowDown", "Throttling", "ThrottlingException", "SERVICE_UNAVAILABLE",
        "ServiceUnavailable", "INTERNAL_FAILURE", "InternalError", "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
        "ConnectionClosedError", "Could not resolve host", "Timeout was reached",
        "UNAVAILABLE", "DEADLINE_EXCEEDED", "Fail to get a new connection", "ServerBusy", "OperationTimedOut"),
        "cannot reach object storage at {endpoint}", "check --s3-endpoint / AWS_ENDPOINT_URL and that the server is up"),
}
# What to check differs by cloud where the kind's own words name AWS's variables.
_CLOUD_FIX = {
    ("credentials", "gcs"): "check GOOGLE_APPLICATION_CREDENTIALS (or the metadata server's service account)",
    ("credentials", "azure"): "check AZURE_STORAGE_ACCOUNT_KEY / AZURE_STORAGE_SAS_TOKEN (or "
                              "AZURE_STORAGE_CONNECTION_STRING, or the default Azure credential)",
    ("unreachable", "gcs"): "check STORAGE_EMULATOR_HOST (when set) and that the service is up",
    ("unreachable", "azure"): "check AZURE_STORAGE_BLOB_ENDPOINT / the connection string's BlobEndpoint and that "
                              "the service is up",
}
_UNREACHABLE_TYPES = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                      "ConnectionError", "ProxyConnectionError", "SSLError", "NewConnectionError", "ProtocolError",
                      "MaxRetryError", "TimeoutError", "ConnectionRefusedError"}
_NOT_FOUND = ("404", "NoSuchKey", "NotFound")
_PYARROW_WHERE = re.compile(r"When (?P<op>[\w ]+?) (?:for |under |from )?key '(?P<key>[^']*)' in bucket "
                            r"'(?P<bucket>[^']*)'")
_PYARROW_BUCKET = re.compile(r"bucket '(?P<bucket>[^']*)'")


def kind_of_code(code: str | None, status: int | None = None) -> str | None:
    """The kind an S3 error code (or, without a known code, an HTTP status) means; None for not-found and others."""
    code = code or ""
    for kind, row in KINDS.items():
        if code in row.codes:
            return kind
    if code in _NOT_FOUND:
        return None
    if status == 403 or code == "403":
        return "denied"
    if status is not None and status >= 500:
        return "unreachable"
    return None


def kind_of(exc: BaseException) -> str | None:
    """The kind of storage failure ``exc`` itself is (its causes are not followed), None when it is none."""
    found = _classify(exc)
    return found[0] if found else None


def _classify(exc: BaseException) -> tuple[str, str] | None:
    """``(kind, code)`` for a storage failure, None otherwise."""
    names = {c.__name__ for c in type(exc).__mro__}
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        code = str((response.get("Error") or {}).get("Code") or "")
        kind = kind_of_code(code, (response.get("ResponseMetadata") or {}).get("HTTPStatusCode"))
        if kind is not None or code in _NOT_FOUND:
            return (kind, code or "403") if kind is not None else None
    if names & _UNREACHABLE_TYPES and "ClientError" not in names:
        return "unreachable", type(exc).__name__
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return None
    if isinstance(exc, PermissionError):
        return "denied", "Permission denied"
    if not isinstance(exc, OSError) and "RayTaskError" not in names and "UserCodeException" not in names:
        return None
    text = str(exc)
    for kind, row in KINDS.items():
        for code in row.codes:
            if code in text:
                return kind, code
    return None


def _chain(exc: BaseException, depth: int = 8) -> list[BaseException]:
    """``exc`` and its causes (``__cause__``, ``__context__``, Ray's ``cause``), nearest first."""
    out: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo and len(out) < depth:
        e = todo.pop(0)
        if e is None or any(e is seen for seen in out):
            continue
        out.append(e)
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return out


def storage_error(exc: BaseException, *, s3: Any = None,
                  uri: str | os.PathLike[str] | None = None) -> StorageError | None:
    """The :class:`StorageError` that ``exc`` (or one of its causes) means, or None when it is not a failure of
    the store itself (an object not found, any other error).

    ``uri`` names the object when the exception text does not; ``s3`` (an ``S3Config``) names the endpoint.
    """
    chain = _chain(exc)
    for e in chain:
        if type(e) is StorageError:
            return e
    for e in chain:  # Ray's wrapper of a StorageError raised in a worker: its text is a traceback
        if isinstance(e, StorageError):
            return StorageError(_last_line(str(e)), e.kind)
    for e in chain:
        found = _classify(e)
        if found is not None:
            return StorageError(_message(e, found[0], found[1], s3, uri), found[0])
    return None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    last = lines[-1] if lines else text
    return last.split("StorageError: ", 1)[-1]


def _endpoint(s3: Any) -> str:
    if s3 is None:
        from ood_audit.io.fs import S3Config  # fs imports this module

        s3 = S3Config.from_env()
    return s3.endpoint


def _message(exc: BaseException, kind: str, code: str, s3: Any, uri: str | os.PathLike[str] | None) -> str:
    text = " ".join(str(exc).split())
    m = _PYARROW_WHERE.search(text)
    response = getattr(exc, "response", None)
    if m:
        where: str | None = f"s3://{m['bucket']}/{m['key']}" if m["key"] else f"s3://{m['bucket']}"
        what = m["op"]
    elif isinstance(response, Mapping) and (response.get("Error") or {}).get("BucketName"):
        err = response["Error"]
        where = f"s3://{err['BucketName']}/{err.get('Key', '')}".rstrip("/")
        what = getattr(exc, "operation_name", "") or ""
    else:
        b = _PYARROW_BUCKET.search(text)
        where = f"s3://{b['bucket']}" if b else None
        what = getattr(exc, "operation_name", "") or ""
    if uri is not None and (where is None or not str(uri).startswith(where)):
        where = str(parse_uri(uri)) if where is None else where
        parsed = parse_uri(uri)
        if parsed.cloud in ("gcs", "azure"):
            return str(cloud_error(kind, str(parsed), s3=s3, detail=_short_detail(text, code), what=what))
        if not parsed.is_s3:
            return f"{kind.replace('_', ' ')}: {uri} ({code}); {KINDS[kind].fix}"
    endpoint = _endpoint(s3) if (where or "s3://").startswith("s3://") else "local disk"
    detail = code if code in ("Permission denied", "Read-only file system") else _short_detail(text, code)
    return _line(kind, endpoint, what, where, detail)


def _line(kind: str, endpoint: str, what: str, where: str | None, detail: str, fix: str | None = None) -> str:
    target = f": {what} {where}".replace(":  ", ": ") if where else ""
    return f"{KINDS[kind].what.format(endpoint=endpoint)}{target} ({detail}); {fix or KINDS[kind].fix}"


def error_of(kind: str, *, s3: Any, where: str, detail: str, what: str = "") -> StorageError:
    """A :class:`StorageError` of ``kind`` for a failure told by a code or a status rather than by an exception
    (the reader's GET); ``detail`` must hold no secret."""
    return StorageError(_line(kind, _endpoint(s3), what, where, detail), kind)


def cloud_error(kind: str, uri: str, *, s3: Any, detail: str, what: str = "") -> StorageError:
    """A :class:`StorageError` of ``kind`` for a GCS or Azure object, naming its store and what to check there;
    ``detail`` must hold no secret."""
    from ood_audit.io.fs import store_name  # fs imports this module

    parsed = parse_uri(uri)
    fix = _CLOUD_FIX.get((kind, parsed.cloud), KINDS[kind].fix)
    return StorageError(_line(kind, store_name(parsed, s3), what, str(parsed), detail, fix), kind)


_URL_QUERY = re.compile(r"(https?://[^\s'\"?]+)\?[^\s'\"]*")


def redact_urls(text: str) -> str:
    """``text`` with every URL's query cut: Azure's client puts a SAS token (a bearer credential) there, and
    pyarrow's error texts quote the whole URL."""
    return _URL_QUERY.sub(r"\1?<query redacted>", text)


def _short_detail(text: str, code: str) -> str:
    # pyarrow: "...: AWS Error CODE during Op operation: message" -> "CODE during Op operation: message";
    # "... Azure Error: [Code] 403 message Request ID: ..." -> "[Code] 403 message";
    # "google::cloud::Status(CODE: message error_info={...})" -> "CODE: message"
    detail = text
    for marker in ("AWS Error ", "Azure Error: ", "google::cloud::Status("):
        i = text.find(marker)
        if i >= 0:
            detail = text[i + len(marker):]
            break
    for tail in (" Request ID:", " error_info="):
        detail = detail.split(tail, 1)[0]
    detail = redact_urls(detail)
    if "Traceback" in detail:
        detail = code
    return detail[:200]


# -- the retry budget ------------------------------------------------------------------------------------

clock: Callable[[], float] = time.monotonic  # tests replace both with a fake clock
sleep: Callable[[float], None] = time.sleep


@dataclass
class _Endpoint:
    answered: bool = False          # some request got an answer (not a 5xx) in this run
    since: float | None = None      # first failed attempt of the outage in progress
    last_failure: float = 0.0
    announced: bool = False


_STATE: dict[str, _Endpoint] = {}
_LOCK = threading.Lock()


def _state(endpoint: str) -> _Endpoint:
    return _STATE.setdefault(endpoint, _Endpoint())


def has_answered(endpoint: str) -> bool:
    """Whether ``endpoint`` has answered once in this run (this process, or the driver that sent the config)."""
    with _LOCK:
        return _state(endpoint).answered


def mark_answered(endpoint: str, *, outage_over: bool = True) -> None:
    """``endpoint`` answered: it gets the full window from now on, and (``outage_over``) any outage ended."""
    with _LOCK:
        st = _state(endpoint)
        st.answered = True
        if outage_over:
            st.since, st.announced = None, False


def window_s(s3: Any) -> float:
    """The whole window of an outage of ``s3``'s endpoint: ``retry_s``, or the first-contact window before it
    has answered."""
    return s3.retry_s if has_answered(s3.endpoint) else min(s3.retry_s, FIRST_CONTACT_S)


def _in_outage(st: _Endpoint, window: float, now: float) -> bool:
    # An outage goes on while attempts keep failing; a failure after a quiet whole window starts a new one.
    return st.since is not None and now - st.last_failure <= max(window, BACKOFF_MAX_S)


def _window_left(st: _Endpoint, window: float, now: float) -> float:
    return st.since + window - now if _in_outage(st, window, now) and st.since is not None else window


def window_left_s(s3: Any) -> float:
    """What is left of the window for a request starting now (all of it unless an outage is in progress)."""
    window = window_s(s3)
    with _LOCK:
        return _window_left(_state(s3.endpoint), window, clock())


def next_wait(s3: Any, attempt: int, what: str) -> float | None:
    """After failed attempt ``attempt`` (1-based) of ``what`` to ``s3``'s endpoint: the wait before the next
    attempt, or None when the outage has used up the window (give up)."""
    window = window_s(s3)
    with _LOCK:
        st = _state(s3.endpoint)
        now = clock()
        _failed(st, window, now, now)
        left = _window_left(st, window, now)
        if left <= 0:
            return None
        wait = min(BACKOFF_S * 2 ** (attempt - 1), BACKOFF_MAX_S, left)
        announce = not st.announced and now - st.since + wait > ANNOUNCE_S
        st.announced = st.announced or announce
    if announce:
        log.warning("object storage at %s is not answering (%s); waiting at most %.0f s more (%s)", s3.endpoint, what,
                    left, "--storage-retry-s" if has_answered(s3.endpoint) else "first contact")
    return wait


def _failed(st: _Endpoint, window: float, started: float, now: float) -> None:
    if not _in_outage(st, window, now):
        st.since, st.announced = started, False
    st.last_failure = now


def note_failure(s3: Any, started: float) -> None:
    """A request that began at ``started`` (on :data:`clock`) gave up on ``s3``'s endpoint after retries that
    :func:`next_wait` did not see (pyarrow's): the outage is timed from then on."""
    window = window_s(s3)
    with _LOCK:
        _failed(_state(s3.endpoint), window, started, clock())


def pyarrow_attempts(window: float) -> int:
    """Attempts (first try included) of pyarrow's fixed schedule whose waits fit in ``window``: the most n with
    25 ms·(2^n − 2) ≤ ``window``."""
    if window < 2 * _PYARROW_BASE_DELAY_S:
        return 1
    return int(math.floor(math.log2(window / _PYARROW_BASE_DELAY_S + 2)))


@contextmanager
def announced_if_slow(s3: Any, what: str) -> Iterator[None]:
    """Around a pyarrow request, whose retries cannot be watched: one console line if it takes over
    :data:`ANNOUNCE_S` (it then waits for at most what was left of the window)."""
    left = window_left_s(s3)
    if left <= ANNOUNCE_S:
        yield
        return
    timer = threading.Timer(ANNOUNCE_S, log.warning, ("object storage at %s has not answered for %.0f s (%s); waiting "
                                                      "at most %.0f s more (--storage-retry-s)",
                                                      s3.endpoint, ANNOUNCE_S, what, left - ANNOUNCE_S))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def boto_retry_hook(s3: Any) -> Callable[..., float | None]:
    """A ``needs-retry`` handler for a boto3 client (botocore's own attempts set to one): it retries connection
    failures, 5xx and throttling answers while :func:`next_wait` allows, and notes every answer."""

    def needs_retry(attempts: int, response: Any = None, caught_exception: BaseException | None = None,
                    operation: Any = None, **_: Any) -> float | None:
        if caught_exception is not None:
            if kind_of(caught_exception) != "unreachable":
                return None
        elif response is not None:
            status = getattr(response[0], "status_code", None)
            code = ((response[1] or {}).get("Error") or {}).get("Code")
            if status is not None and status < 500:
                mark_answered(s3.endpoint)
            if kind_of_code(code, status) != "unreachable":
                return None
        else:
            return None
        wait = next_wait(s3, attempts, getattr(operation, "name", "request"))
        if wait is None:
            return None
        sleep(wait)  # here rather than in botocore, so that one clock serves every layer
        return 0
    return needs_retry
