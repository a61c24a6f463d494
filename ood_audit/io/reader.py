"""Fetch one object and decode it: the per-object step shared by training, calibration and the scan.

:func:`load_image` never raises for a problem with the object itself; it returns a
:class:`~ood_audit.io.decode.DecodeResult` whose status says what happened. ``missing`` means the object
vanished since it was listed or could not be fetched (the error says which).

An S3 object costs one request: a GET whose response carries the size (``Content-Length``), so an object
over ``max_bytes`` is refused from the response headers and its body is never read, and a missing one is
told by the error code (``NoSuchKey``, ``NoSuchBucket``) in the same response. pyarrow's S3 files always
send a HEAD before their first GET, and boto3's ``get_object`` costs about three times the client CPU of
both together, so the GET goes to a URL presigned by the boto3 client (its credential chain and
addressing style) over one urllib3 connection pool per process.

The body is read as stored and capped while it streams: a ``gzip`` or ``deflate`` ``Content-Encoding`` is
inflated here, incrementally, so an object that inflates past ``max_bytes`` is ``too_large`` without ever
being held (:func:`~ood_audit.io.capped.capped_body`), where urllib3 would inflate it whole.

GCS and Azure objects are read through pyarrow's filesystem input stream (Google's and Azure's own clients
inside, with their credential chains), a chunk at a time, stopping one chunk past ``max_bytes``: an object
over the limit costs at most that much memory whatever its size (:func:`_read_stream`).

A refusal of one object while the bucket answers others (archived, its KMS key, SSE-C, a key-level deny)
is the row status ``refused``, and the run goes on; how a refusal is judged to be the object's and not the
bucket's is :func:`_per_object`.

Any other failure of the store itself is never a row status: it raises :class:`~ood_audit.errors.StorageError`
(through :func:`~ood_audit.io.storage_errors.storage_error` and its table), so the scan stops resumable
instead of writing ``missing`` rows for objects that exist. Connection failures and 5xx answers are retried
first, for as long as :func:`~ood_audit.io.storage_errors.next_wait` allows (``S3Config.retry_s`` shared
with every other request to the endpoint). The presigned URL never appears in a message: it is a bearer
credential until it expires.
"""

from __future__ import annotations

import functools
import os
import re
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from ood_audit.errors import ConfigError, StorageError
from ood_audit.io import storage_errors as budget
from ood_audit.io.decode import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DecodeResult,
    Preprocess,
    _short,
    decode_image,
)
from ood_audit.io.capped import CHUNK, capped_body
from ood_audit.io.fs import S3Config, _resolve_parsed
from ood_audit.io.storage_errors import kind_of_code, redact_urls, storage_error
from ood_audit.io.uri import ParsedUri, parse_uri

_PRESIGN_SECONDS = 900  # at least; a longer retry window gets a URL that outlives it
_ERROR_CODE = re.compile(rb"<Code>([^<]{1,64})</Code>")


def read_object(
    uri: str | os.PathLike[str],
    *,
    s3: S3Config | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[bytes | None, DecodeResult | None]:
    """``(data, None)``, or ``(None, result)`` with status ``missing``, ``too_large``, ``refused`` (or
    ``decode_error`` for a body whose ``Content-Encoding`` does not inflate).

    One request per S3 object; an object over ``max_bytes`` is refused from the size in the response,
    without downloading it, and no more than ``max_bytes`` (plus one chunk) of it is ever held, inflated or
    not (:func:`~ood_audit.io.capped.capped_body`).
    """
    try:
        parsed = parse_uri(uri)
        if parsed.is_s3:
            return _get_s3(parsed, s3 or S3Config.from_env(), max_bytes)
        fs, path = _resolve_parsed(parsed, s3)
    except ConfigError as exc:
        return None, DecodeResult("missing", f"bad URI: {exc}")
    if parsed.is_remote:
        return _read_stream(fs, path, parsed, s3, max_bytes)
    try:
        with fs.open_input_file(path) as fh:  # a local file: open + fstat, no request
            size = fh.size()
            if size > max_bytes:
                return None, DecodeResult("too_large", f"{size} bytes exceeds max_bytes={max_bytes}")
            data = fh.read(max_bytes + 1)  # a file that grew since its size was read stops at the cap too
            if len(data) > max_bytes:
                return None, DecodeResult("too_large", f"more than max_bytes={max_bytes} bytes")
            return data, None
    except FileNotFoundError:
        return None, DecodeResult("missing", "object does not exist")
    except IsADirectoryError:
        return None, DecodeResult("missing", "is a directory, not an object")
    except OSError as exc:
        err = storage_error(exc, s3=s3, uri=uri)
        if err is not None and err.kind != "no_bucket":
            raise err from None
        if _is_directory(fs, path):
            return None, DecodeResult("missing", "is a directory, not an object")
        return None, DecodeResult("missing", f"read failed: {_short(exc)}")


def _read_stream(fs: pafs.FileSystem, path: str, parsed: ParsedUri, s3: S3Config | None,
                 max_bytes: int) -> tuple[bytes | None, DecodeResult | None]:
    """A GCS or Azure object through the filesystem's input stream, capped as it streams (module docstring)."""
    if not parsed.key:
        return None, DecodeResult("missing", "is a bucket, not an object")
    try:
        data = bytearray()
        with fs.open_input_stream(path) as stream:
            while len(data) <= max_bytes:
                part = stream.read(CHUNK)
                if not part:
                    return bytes(data), None
                data += part
        return None, DecodeResult("too_large", f"more than max_bytes={max_bytes} bytes")
    except FileNotFoundError:
        return None, DecodeResult("missing", "object does not exist")
    except OSError as exc:
        err = storage_error(exc, s3=s3, uri=str(parsed))
        if err is not None and err.kind != "no_bucket":
            raise err from None
        return None, DecodeResult("missing", f"read failed: {redact_urls(_short(exc))}")


def _get_s3(parsed: ParsedUri, s3: S3Config, max_bytes: int) -> tuple[bytes | None, DecodeResult | None]:
    """One GET: the body (streamed under the cap, :func:`~ood_audit.io.capped.capped_body`), ``missing`` from the error code, or
    ``refused`` for a per-object refusal (:func:`_per_object`)."""
    import urllib3

    if not parsed.key:
        return None, DecodeResult("missing", "is a bucket, not an object")
    uri = str(parsed)
    url = _presign(parsed, s3)
    resp = _get(_http_pool(s3, os.getpid(), _proxy_for(url)), url, s3, uri)
    try:
        if resp.status == 200:
            data, failed = capped_body(resp, max_bytes)
            _READ_FINE[(s3.endpoint, parsed.bucket)] = parsed.key  # the refusal probe's witness
            return data, failed
        code = _error_code(resp.read(8192, decode_content=False))
        if code == "NoSuchBucket":
            return None, DecodeResult("missing", "bucket does not exist")
        if code == "NoSuchKey" or (resp.status == 404 and code is None):
            return None, DecodeResult("missing", "object does not exist")
        refusal = _refused(resp.status, code, parsed, s3)
        if refusal.kind == "denied" and _per_object(code, parsed, s3):
            detail = f"HTTP {resp.status} {code}" if code else f"HTTP {resp.status}"
            return None, DecodeResult("refused", f"{detail}: the store refuses this object and answers others")
        raise refusal
    except (urllib3.exceptions.HTTPError, OSError) as exc:  # cut off mid-body, after the retries
        raise _unreachable(exc, s3, uri) from None
    finally:
        if resp.length_remaining or (resp.length_remaining is None and not resp.isclosed()):
            resp.close()  # body left unread (refused, over the cap): drop the connection rather than drain it
        resp.release_conn()


def _presign(parsed: ParsedUri, s3: S3Config) -> str:
    """A presigned GET of the object; the URL is a bearer credential, never put in a message."""
    try:
        return str(s3.client().generate_presigned_url(
            "get_object", Params={"Bucket": parsed.bucket, "Key": parsed.key},
            ExpiresIn=int(max(_PRESIGN_SECONDS, 2 * s3.retry_s + 60))))
    except Exception as exc:  # noqa: BLE001 - botocore: no credentials, bad region and the like
        err = storage_error(exc, s3=s3, uri=str(parsed))
        if err is not None:
            raise err from None
        raise StorageError(f"cannot sign a request for {parsed}: {_short(exc)}; check the AWS_* credentials",
                           "credentials") from None


_OBJECT_STATE_CODES = ("InvalidObjectState",)
_READ_FINE: dict[tuple[str, str], str] = {}  # (endpoint, bucket) -> a key this process read fine last


def _per_object(code: str | None, parsed: ParsedUri, s3: S3Config) -> bool:
    """Whether a refused GET (of kind ``denied``) is about this object alone, so it becomes a ``refused`` row.

    Decided the same way for every object, and only when a GET was refused: an object-state code
    (``InvalidObjectState``, ``KMS.*``) is per object by nature. Anything else (a key-level ``AccessDenied``,
    SSE-C, a KMS denial that S3 words as ``AccessDenied``) could as well be a deny on the whole bucket or a
    revoked role, whose rows would all become ``refused`` and hide an incident, so the bucket is asked once
    more (:func:`_bucket_answers`); when it does not answer, the refusal is the bucket's and stops the run.
    """
    if code in _OBJECT_STATE_CODES or (code or "").startswith("KMS."):
        return True
    return _bucket_answers(parsed, s3)


def _bucket_answers(parsed: ParsedUri, s3: S3Config) -> bool:
    """Whether the bucket answers this principal now: the first byte of a key this process read fine
    there (a GET, what the scan's role surely may do), or else a listing of at most one key under the
    refused key (what a prefix scan did to find it). Either failing, or no answer, counts as no.
    """
    import urllib3

    witness = _READ_FINE.get((s3.endpoint, parsed.bucket))
    if witness is not None and witness != parsed.key:
        url = _presign(ParsedUri(parsed.scheme, parsed.bucket, witness), s3)
        try:
            resp = _http_pool(s3, os.getpid(), _proxy_for(url)).request(
                "GET", url, headers={"Range": "bytes=0-0"}, preload_content=True, decode_content=False,
                redirect=False, retries=False)
        except (urllib3.exceptions.HTTPError, OSError):
            return False
        if resp.status in (200, 206):
            return True
        if resp.status != 404:
            return False
    try:
        s3.client().list_objects_v2(Bucket=parsed.bucket, Prefix=parsed.key, MaxKeys=1)
    except Exception:  # noqa: BLE001 - denied, unreachable: the bucket does not answer
        return False
    return True




def _error_code(body: bytes) -> str | None:
    match = _ERROR_CODE.search(body)
    return match.group(1).decode("ascii", "replace") if match else None


def _get(pool: Any, url: str, s3: S3Config, uri: str) -> Any:
    """The GET, retried on connection failures and 5xx answers while the budget allows; the last 5xx answer
    is returned when it runs out."""
    import urllib3

    attempt = 0
    while True:
        attempt += 1
        try:
            resp = pool.request("GET", url, preload_content=False, decode_content=False, redirect=False,
                                retries=False)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            wait = budget.next_wait(s3, attempt, f"GET {uri}")
            if wait is None:
                raise _unreachable(exc, s3, uri) from None
        else:
            if resp.status < 500:
                budget.mark_answered(s3.endpoint)
                return resp
            wait = budget.next_wait(s3, attempt, f"GET {uri}")
            if wait is None:
                return resp
            resp.drain_conn()
            resp.release_conn()
        budget.sleep(wait)


def _refused(status: int, code: str | None, parsed: ParsedUri, s3: S3Config) -> StorageError:
    """The store's refusal of a GET (an S3 error response other than not-found) as a StorageError."""
    detail = f"HTTP {status} {code}" if code else f"HTTP {status}"
    return budget.error_of(kind_of_code(code, status) or "denied", s3=s3, what="GetObject", where=str(parsed),
                           detail=detail)


def _unreachable(exc: BaseException, s3: S3Config, uri: str) -> StorageError:
    """A connection failure once the budget is spent; the detail is the error type only (no signed URL)."""
    reason = getattr(exc, "reason", None) or exc
    return budget.error_of("unreachable", s3=s3, where=uri, detail=type(reason).__name__)


def _proxy_for(url: str) -> str | None:
    """The proxy the standard ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY`` variables give for ``url``."""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        return proxy
    return None


@functools.lru_cache(maxsize=16)
def _http_pool(s3: S3Config, pid: int, proxy: str | None) -> Any:
    # pid is part of the key: connections must not be shared across fork().
    import urllib3
    from botocore.httpsession import get_cert_path

    kwargs: dict[str, Any] = {"maxsize": 32, "block": False, "timeout": urllib3.Timeout(connect=10, read=60),
                              "ca_certs": os.environ.get("AWS_CA_BUNDLE") or get_cert_path(True)}
    return urllib3.ProxyManager(proxy, **kwargs) if proxy else urllib3.PoolManager(**kwargs)


def load_image(
    uri: str | os.PathLike[str],
    *,
    size: Preprocess | int | tuple[int, int] | None = None,
    s3: S3Config | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    working_size: int | None = None,
) -> DecodeResult:
    """Read ``uri`` and decode it with :func:`~ood_audit.io.decode.decode_image` (``working_size``: also the
    SPEC §14 working copy)."""
    data, failed = read_object(uri, s3=s3, max_bytes=max_bytes)
    if failed is not None:
        return failed
    assert data is not None
    return decode_image(data, size=size, max_bytes=max_bytes, max_pixels=max_pixels, working_size=working_size)


def load_images(
    uris: Sequence[str],
    *,
    size: Preprocess | int | tuple[int, int] | None = None,
    s3: S3Config | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    threads: int = 8,
    working_size: int | None = None,
) -> list[DecodeResult]:
    """:func:`load_image` for many URIs, in order, on a thread pool.

    Fetching is I/O-bound and Pillow releases the GIL while decoding, so threads help even on few cores.
    """
    def one(u: str) -> DecodeResult:
        return load_image(u, size=size, s3=s3, max_bytes=max_bytes, max_pixels=max_pixels,
                          working_size=working_size)

    if threads <= 1 or len(uris) <= 1:
        return [one(u) for u in uris]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, uris))


def _is_directory(fs: pafs.FileSystem, path: str) -> bool:
    try:
        return fs.get_file_info(path).type == pafs.FileType.Directory
    except OSError:
        return False
