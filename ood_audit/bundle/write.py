"""Writing an audit bundle (SPEC §10): content-addressed, so the same content gets the same id and a second
write changes nothing; ``bundle.json`` goes last, and its presence marks a complete bundle.

The format, the id and reading back with every checksum verified are :mod:`ood_audit.bundle.files`'.

On S3 every object is written with ``If-None-Match: *``: a bundle is never overwritten, by this writer or
by anyone the bucket policy holds to the same rule (cluster/iam-policy-train.json denies a PutObject under
``bundles/`` without that header). An object already there with other content is refused in one line.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from ood_audit.bundle.files import (
    BUNDLE_JSON,
    FORMAT,
    FORMAT_VERSION,
    canonical_json,
    check_name,
    compute_bundle_id,
    parse_manifest,
    sha256_hex,
    software_versions,
)
from ood_audit.errors import BundleError
from ood_audit.io.fs import S3Config, exists, file_size, read_bytes, s3_client, write_bytes
from ood_audit.io.uri import join_uri, parse_uri


def bank_sources(uris: list[str], thumbs: Any) -> bytes:
    """The :data:`BANK_SOURCES` file: one row per kNN-bank row, in bank order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"row": pa.array(range(len(uris)), pa.int32()), "uri": pa.array(uris, pa.string()),
                      "thumb": pa.array(list(thumbs), pa.binary())})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def write_bundle(
    root_uri: str,
    meta: Mapping[str, Any],
    *,
    tensors: Mapping[str, Mapping[str, Any]] | None = None,
    files: Mapping[str, bytes] | None = None,
    s3: S3Config | None = None,
) -> str:
    """Write a bundle under ``<root_uri>/bundles/<bundle_id>/`` and return its URI.

    Args:
        root_uri: local directory or ``s3://bucket/prefix``.
        meta: JSON-serialisable metadata (numpy scalars and arrays are converted); hashed into the id.
        tensors: ``{filename: {name: torch.Tensor}}``, each saved with safetensors (on the CPU,
            contiguous; tensors in one file must not share memory: ``.clone()`` them).
        files: ``{filename: bytes}`` written as they are.
        s3: S3 settings for ``s3://`` roots (default: from the environment).

    If a bundle with the same id is already complete there, nothing is written. Files from an interrupted
    earlier write are kept when their size and hash match, rewritten otherwise; ``bundle.json`` goes last.
    """
    blobs = _collect_files(tensors or {}, files or {})
    if not blobs:
        raise BundleError("a bundle needs at least one file (e.g. model.safetensors)")
    meta_json = json.loads(canonical_json(dict(meta)))  # normalised: what load_bundle will return
    listing = {name: {"sha256": sha256_hex(data), "bytes": len(data)} for name, data in sorted(blobs.items())}
    bundle_id = compute_bundle_id(meta_json, listing)
    bundle_uri = join_uri(root_uri, "bundles", bundle_id)
    manifest_uri = join_uri(bundle_uri, BUNDLE_JSON)

    if exists(manifest_uri, s3=s3):
        try:
            existing = parse_manifest(read_bytes(manifest_uri, s3=s3), manifest_uri)
        except BundleError:
            existing = None  # damaged: rewriting the same content at the same id repairs it
        if (
            existing is not None
            and existing["bundle_id"] == bundle_id
            and existing["meta"] == meta_json
            and existing["files"] == listing
            and all(file_size(join_uri(bundle_uri, n), s3=s3) == f["bytes"] for n, f in listing.items())
        ):
            return bundle_uri
    for name, data in blobs.items():
        target = join_uri(bundle_uri, name)
        if file_size(target, s3=s3) == len(data) and sha256_hex(read_bytes(target, s3=s3)) == listing[name]["sha256"]:
            continue  # left by an interrupted write of this same bundle
        _write_new(target, data, s3)
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "bundle_id": bundle_id,
        "meta": meta_json,
        "files": listing,
        "provenance": {
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "software": software_versions(),
        },
    }
    text = json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    _write_new(manifest_uri, text.encode("utf-8"), s3)
    return bundle_uri


def _write_new(uri: str, data: bytes, s3: S3Config | None) -> None:
    """Write ``data``; in object storage only if no object is there yet (S3 ``If-None-Match: *``, one PUT: no
    multipart upload, whose parts cannot carry the header; GCS ``ifGenerationMatch=0``; Azure
    ``If-None-Match: *``)."""
    parsed = parse_uri(uri)
    if not parsed.is_remote:
        write_bytes(uri, data, s3=s3)
        return
    if not parsed.is_s3:
        from ood_audit.io.conditional import Conflict, create_only

        try:
            create_only(parsed, data, s3)
        except Conflict:
            raise BundleError(f"{uri} already exists with other content; bundles are never overwritten (delete "
                              "the incomplete bundle deliberately, or write to another root)") from None
        return
    from botocore.exceptions import ClientError

    try:
        s3_client(s3).put_object(Bucket=parsed.bucket, Key=parsed.key, Body=data, IfNoneMatch="*")
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 412 or exc.response.get("Error", {}).get("Code") == "PreconditionFailed":
            raise BundleError(f"{uri} already exists with other content; bundles are never overwritten (delete "
                              "the incomplete bundle deliberately, or write to another root)") from None
        raise


def _collect_files(
    tensors: Mapping[str, Mapping[str, Any]], files: Mapping[str, bytes]
) -> dict[str, bytes]:
    blobs: dict[str, bytes] = {}
    for name, data in files.items():
        check_name(name)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise BundleError(f"bundle file {name}: expected bytes, got {type(data).__name__}")
        blobs[name] = bytes(data)
    for name, group in tensors.items():
        check_name(name)
        if not name.endswith(".safetensors"):
            raise BundleError(f"bundle tensor file {name} must end in .safetensors")
        if name in blobs:
            raise BundleError(f"bundle file {name} is given both as bytes and as tensors")
        blobs[name] = _safetensors_bytes(name, group)
    return blobs


def _safetensors_bytes(name: str, group: Mapping[str, Any]) -> bytes:
    import torch
    from safetensors.torch import save

    prepared = {}
    for key, value in group.items():
        if not isinstance(value, torch.Tensor):
            raise BundleError(f"bundle file {name}: {key!r} is {type(value).__name__}, not a torch.Tensor")
        prepared[str(key)] = value.detach().cpu().contiguous()
    try:
        return save(prepared)
    except (RuntimeError, ValueError) as exc:
        raise BundleError(f"bundle file {name} cannot be saved with safetensors: {exc}") from exc
