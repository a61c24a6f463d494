"""Filesystems for URIs: one resolver for local paths, S3, GCS and Azure, and the whole-object operations on them
(read, write, exists, size, subdirectories, the output root's write probe). The settings they take live in
:mod:`ood_audit.io.s3config` (``S3Config``, re-exported here).

**Errors.** :func:`storage_error` (from :mod:`ood_audit.io.storage_errors`, where the table of codes lives)
turns pyarrow's ``OSError`` texts and botocore's exceptions into a :class:`~ood_audit.errors.StorageError`
with a kind and a one-line message naming the endpoint, bucket and key.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from typing import TypeVar

import pyarrow.fs as pafs

from ood_audit.errors import StorageError
from ood_audit.io import storage_errors as budget
from ood_audit.io.clouds import azure_filesystem, gcs_filesystem, gcs_subdirectories
from ood_audit.io.s3config import DEFAULT_REGION, DEFAULT_RETRY_S, S3Config, s3_client
from ood_audit.io.storage_errors import storage_error
from ood_audit.io.uri import ParsedUri, parse_uri

_T = TypeVar("_T")
__all__ = ["DEFAULT_REGION", "DEFAULT_RETRY_S", "S3Config", "check_writable", "exists", "file_size", "read_bytes",
           "resolve", "s3_client", "store_name", "subdirectories", "write_bytes"]


def resolve(uri: str | os.PathLike[str], s3: S3Config | None = None) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the path inside it for ``uri``.

    ``s3`` is used for ``s3://`` URIs; when None, settings come from the environment.
    """
    return _resolve_parsed(parse_uri(uri), s3)


def _resolve_parsed(parsed: ParsedUri, s3: S3Config | None) -> tuple[pafs.FileSystem, str]:
    if parsed.is_s3:
        config = s3 or S3Config.from_env()
        if not budget.has_answered(config.endpoint):
            _first_contact(config, parsed)
        return config.pyarrow_fs(), parsed.fs_path
    if parsed.cloud == "gcs":
        config = s3 or S3Config.from_env()
        if not budget.has_answered(config.gcs_settings.endpoint):
            _first_contact_gcs(config, parsed)
        return gcs_filesystem(config.gcs_settings, config.retry_s), parsed.fs_path
    if parsed.cloud == "azure":
        return azure_filesystem((s3 or S3Config.from_env()).azure_settings, parsed.account), parsed.fs_path
    return pafs.LocalFileSystem(), parsed.fs_path


def _first_contact(config: S3Config, parsed: ParsedUri) -> None:
    """Ask the endpoint once through boto3, whose retries the budget watches, before pyarrow's, which it cannot:
    a mistyped endpoint fails within the first-contact window, and any answer (a refusal too) gives pyarrow the
    whole window."""
    try:
        config.client().head_bucket(Bucket=parsed.bucket)
    except Exception as exc:  # noqa: BLE001 - only "no answer" matters here; the request itself tells the rest
        err = storage_error(exc, s3=config, uri=str(parsed))
        if err is not None and err.kind == "unreachable":
            raise err from None


def _first_contact_gcs(config: S3Config, parsed: ParsedUri) -> None:
    """S3's first contact for GCS: Google's client retries a missing credential (no token, no metadata server)
    as a passing outage, for the whole retry window; one lookup of the bucket under the first-contact window
    tells a wrong setup in seconds."""
    fs = gcs_filesystem(config.gcs_settings, budget.FIRST_CONTACT_S)
    try:
        fs.get_file_info(parsed.bucket)
    except OSError as exc:
        err = storage_error(exc, s3=config, uri=str(parsed))
        if err is not None and err.kind in ("unreachable", "credentials"):
            raise err from None
    budget.mark_answered(config.gcs_settings.endpoint)


def read_bytes(uri: str | os.PathLike[str], *, s3: S3Config | None = None) -> bytes:
    """The whole object. Raises ``FileNotFoundError`` when it does not exist (local or S3)."""
    parsed = parse_uri(uri)
    fs, path = _resolve_parsed(parsed, s3)
    try:
        return _request(parsed, s3, "reading", lambda: _read_all(fs, path))
    except FileNotFoundError:
        raise
    except OSError as exc:
        if _is_not_found(exc):
            raise FileNotFoundError(f"{parsed} does not exist") from exc
        if _unreachable(exc):
            raise  # asking again whether it exists would wait out the window a second time
        if not _exists(fs, path):
            raise FileNotFoundError(f"{parsed} does not exist") from exc
        raise


def _read_all(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as stream:
        return stream.read()


def write_bytes(uri: str | os.PathLike[str], data: bytes, *, s3: S3Config | None = None) -> None:
    """Write ``data`` so that readers see either the old object or the whole new one.

    Locally: a temporary file in the same directory, then ``os.replace``. In object storage an upload (a PUT,
    a completed multipart or resumable upload, a committed block list) is already all-or-nothing.
    """
    parsed = parse_uri(uri)
    if parsed.is_remote:
        fs, path = _resolve_parsed(parsed, s3)

        def put() -> None:
            with fs.open_output_stream(path) as out:
                out.write(data)
        _request(parsed, s3, "writing", put)
        return
    directory = os.path.dirname(parsed.key)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(parsed.key)}.tmp-{secrets.token_hex(6)}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, parsed.key)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def exists(uri: str | os.PathLike[str], *, s3: S3Config | None = None) -> bool:
    """True when ``uri`` is an existing object or file (a prefix or directory does not count)."""
    return _info(uri, s3).type == pafs.FileType.File


def file_size(uri: str | os.PathLike[str], *, s3: S3Config | None = None) -> int | None:
    """Size in bytes, or None when ``uri`` is not an existing object or file."""
    info = _info(uri, s3)
    return info.size if info.type == pafs.FileType.File else None


def _info(uri: str | os.PathLike[str], s3: S3Config | None) -> pafs.FileInfo:
    parsed = parse_uri(uri)
    fs, path = _resolve_parsed(parsed, s3)
    return _request(parsed, s3, "looking up", lambda: fs.get_file_info(path))


def _request(parsed: ParsedUri, s3: S3Config | None, doing: str, call: Callable[[], _T]) -> _T:
    """One pyarrow request. On S3 it is announced if slow, and its answer or failure goes on the outage clock."""
    if not parsed.is_s3:
        return call()
    config = s3 or S3Config.from_env()
    started = budget.clock()
    with budget.announced_if_slow(config, f"{doing} {parsed}"):
        try:
            out = call()
        except OSError as exc:
            if _unreachable(exc):
                budget.note_failure(config, started)
            else:  # the store answered, if only to refuse
                budget.mark_answered(config.endpoint)
            raise
    budget.mark_answered(config.endpoint)
    return out


def _unreachable(exc: OSError) -> bool:
    return budget.kind_of(exc) == "unreachable"


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError:
        return True  # cannot tell: let the original error through


def _is_not_found(exc: OSError) -> bool:
    text = str(exc)
    return "NoSuchKey" in text or "NO_SUCH_KEY" in text or "Path does not exist" in text


def subdirectories(uri: str | os.PathLike[str], s3: S3Config | None = None) -> list[str]:
    """Names of the directories right under ``uri``, sorted (none when it does not exist).

    On S3, Azure and local disk pyarrow's listing reports them; on GCS it reports only directory-marker
    objects, so the names come from the listing's prefixes there (:func:`~ood_audit.io.clouds.gcs_subdirectories`).
    """
    parsed = parse_uri(uri)
    fs, path = _resolve_parsed(parsed, s3)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    names = {i.base_name for i in infos if i.type == pafs.FileType.Directory}
    if parsed.cloud == "gcs":
        names.update(gcs_subdirectories((s3 or S3Config.from_env()).gcs_settings, parsed.bucket, parsed.key))
    return sorted(names)


def store_name(parsed: ParsedUri, s3: S3Config | None) -> str:
    """The store that holds ``parsed``, as messages name it (an endpoint, or the cloud's service)."""
    config = s3 or S3Config.from_env()
    if parsed.cloud == "gcs":
        return config.gcs_settings.endpoint
    if parsed.cloud == "azure":
        return config.azure_settings.endpoint
    return config.endpoint if parsed.is_s3 else "local disk"


def check_writable(root: str | os.PathLike[str], *, s3: S3Config | None = None) -> None:
    """Write and delete a small object under ``root``; a :class:`StorageError` naming it when that fails.

    For S3 the bucket is checked first (some servers create a missing bucket on the first write).
    """
    parsed = parse_uri(root)
    probe = f"{str(parsed).rstrip('/')}/.ood-audit-write-probe-{secrets.token_hex(4)}"
    try:
        if parsed.is_s3:
            client = (s3 or S3Config.from_env()).client()
            try:  # a GET, not a HEAD: its error body says why (unknown key, bad signature, no bucket)
                client.list_objects_v2(Bucket=parsed.bucket, Prefix=parsed.key, MaxKeys=1)
            except Exception as exc:  # noqa: BLE001 - translated below
                err = storage_error(exc, s3=s3)
                response = getattr(exc, "response", None) or {}
                # A listing answered 404 whatever its code: the bucket is what was not found.
                if (err is not None and err.kind == "no_bucket") or \
                        response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    raise StorageError(f"no such bucket at {(s3 or S3Config.from_env()).endpoint}: s3://{parsed.bucket}"
                                       f" (the output root {root}); create it or fix --output", "no_bucket") from None
                raise
        elif parsed.is_remote:
            fs, _ = _resolve_parsed(parsed, s3)
            if fs.get_file_info(parsed.bucket).type == pafs.FileType.NotFound:
                word = "container" if parsed.cloud == "azure" else "bucket"
                raise StorageError(f"no such {word} at {store_name(parsed, s3)}: {parsed.with_key('')} (the output "
                                   f"root {root}); create it or fix --output", "no_bucket") from None
        write_bytes(probe, b"ood-audit write probe\n", s3=s3)
        fs, path = resolve(probe, s3)
        fs.delete_file(path)
    except StorageError:
        raise
    except OSError as exc:
        if not parsed.is_remote:
            raise StorageError(f"output root {root} is not writable ({exc.strerror or exc}); choose another "
                               "--output or fix its permissions", "denied") from None
        err = storage_error(exc, s3=s3, uri=probe)
        if err is None:
            raise
        raise StorageError(f"output root {root} is not usable: {err}", err.kind) from None
    except Exception as exc:  # noqa: BLE001 - only storage failures are translated; the rest pass through
        err = storage_error(exc, s3=s3, uri=probe)
        if err is None:
            raise
        raise StorageError(f"output root {root} is not usable: {err}", err.kind) from None
