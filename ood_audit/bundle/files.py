"""The audit bundle (SPEC §10): a versioned, immutable directory that calibration writes and scans load.
This module holds its format, its id and reading it back with every checksum verified; writing it is
:func:`ood_audit.bundle.write.write_bundle`'s.

Layout, local or on S3::

    <root>/bundles/<bundle_id>/
        model.safetensors
        csd_bank.safetensors, knn_bank.safetensors, ...   (any other allowed files)
        bundle.json                                        (written last: its presence marks completeness)

``bundle.json``::

    {"format": "ood-audit-bundle", "format_version": 1, "bundle_id": "...",
     "meta": {...},                                   # architecture, blocks, thresholds, ... (caller's)
     "files": {"model.safetensors": {"sha256": "...", "bytes": 123}, ...},
     "provenance": {"created_at": "...", "software": {...}}}

``bundle_id`` is the first 32 hex digits of the SHA-256 of the canonical JSON (sorted keys, no spaces,
UTF-8) of ``{"format_version", "meta", "files"}``. ``provenance`` (creation time, software versions) is
outside the hash, so writing the same content twice yields the same id, and the second write changes
nothing. Loading recomputes the id and every file's SHA-256 and refuses any mismatch.

A bundle is pinned by its directory: ``bundles/<bundle_id>/`` must hold the bundle whose id is that name.
Loading refuses a directory whose name differs from the ``bundle_id`` inside, so another self-consistent
bundle copied over a pinned directory is refused, not scanned with. A caller that already knows the id it
expects (the scan's scoring actors) passes it as ``expected_id``.

Only safetensors, JSON and a few inert formats are allowed: no pickles anywhere.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata as importlib_metadata
from typing import Any

import numpy as np

from ood_audit.errors import BundleError
from ood_audit.io.fs import S3Config, read_bytes, resolve
from ood_audit.io.uri import join_uri, parse_uri

from ood_audit.bundle.schema import BundleMeta, parse_meta

FORMAT = "ood-audit-bundle"
FORMAT_VERSION = 1
BUNDLE_JSON = "bundle.json"
ID_HEX_CHARS = 32
# Inert formats only. A faiss index written with faiss' own writer is allowed (SPEC §10).
ALLOWED_SUFFIXES = (".safetensors", ".json", ".faiss", ".parquet", ".txt")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_REQUIRED_KEYS = ("format", "format_version", "bundle_id", "meta", "files")
_CHUNK = 8 << 20
# kNN-bank row r came from ``uri`` (``row`` = r); ``thumb`` is a small JPEG of what the model saw (SPEC §13),
# so reports show nearest ID neighbours without access to the ID bucket.
BANK_SOURCES = "knn_sources.parquet"


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle. File contents are read on demand and re-verified on every read.

    ``meta`` is the metadata exactly as stored (hashed into the id); ``info`` is the same metadata as the
    typed :class:`~ood_audit.bundle.schema.BundleMeta` (migrated from older schemas), which is what the
    product reads. :func:`open_bundle` parses it at load.
    """

    id: str
    uri: str
    meta: dict[str, Any]
    files: dict[str, dict[str, Any]]
    provenance: dict[str, Any]
    s3: S3Config | None = None

    @cached_property
    def info(self) -> BundleMeta:
        return parse_meta(self.meta, self.uri)

    def file_uri(self, name: str) -> str:
        self._check_known(name)
        return join_uri(self.uri, name)

    def file_bytes(self, name: str) -> bytes:
        """The file's bytes, checked against the SHA-256 recorded in ``bundle.json``."""
        self._check_known(name)
        try:
            data = read_bytes(join_uri(self.uri, name), s3=self.s3)
        except FileNotFoundError:
            raise BundleError(f"bundle {self.uri} is missing its file {name}") from None
        _check_digest(self.uri, name, data, self.files[name])
        return data

    def tensors(self, name: str) -> dict[str, Any]:
        """The tensors of a ``.safetensors`` file, on the CPU."""
        if not name.endswith(".safetensors"):
            raise BundleError(f"bundle file {name} is not a .safetensors file")
        from safetensors.torch import load

        try:
            return load(self.file_bytes(name))
        except BundleError:
            raise
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise BundleError(f"bundle {self.uri} file {name} is not valid safetensors: {exc}") from exc

    def json_file(self, name: str) -> Any:
        if not name.endswith(".json"):
            raise BundleError(f"bundle file {name} is not a .json file")
        try:
            return json.loads(self.file_bytes(name))
        except ValueError as exc:
            raise BundleError(f"bundle {self.uri} file {name} is not valid JSON: {exc}") from exc

    def table(self, name: str) -> Any:
        """A ``.parquet`` file as a pyarrow Table (checksum verified first)."""
        if not name.endswith(".parquet"):
            raise BundleError(f"bundle file {name} is not a .parquet file")
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(pa.BufferReader(self.file_bytes(name)))
        except BundleError:
            raise
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several error types
            raise BundleError(f"bundle {self.uri} file {name} is not valid Parquet: {exc}") from exc

    def bank_sources(self) -> Any | None:
        """Where each kNN-bank row came from (:data:`BANK_SOURCES`), or None for bundles written without it."""
        return self.table(BANK_SOURCES) if BANK_SOURCES in self.files else None

    def _check_known(self, name: str) -> None:
        if name not in self.files:
            raise BundleError(
                f"bundle {self.uri} has no file {name!r} (it has: {', '.join(sorted(self.files))})"
            )


def software_versions() -> dict[str, str]:
    """Versions of Python and the libraries whose numerics a bundle depends on."""
    out = {"python": platform.python_version()}
    for dist in ("ood-audit", "torch", "torchvision", "numpy", "pyarrow", "safetensors", "pillow", "faiss-cpu"):
        try:
            out[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            continue
    return out


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN/Infinity: the bytes the bundle id is hashed from."""
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_jsonable
        ).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise BundleError(
            f"bundle metadata cannot be stored as JSON ({exc}); use plain numbers, strings, lists and "
            "dicts, and null instead of NaN or Infinity"
        ) from exc


def compute_bundle_id(meta: Mapping[str, Any], files: Mapping[str, Mapping[str, Any]]) -> str:
    """The content-derived id for ``meta`` and ``files`` (``{name: {"sha256", "bytes"}}``)."""
    payload = {
        "format_version": FORMAT_VERSION,
        "meta": meta,
        "files": {n: {"sha256": f["sha256"], "bytes": int(f["bytes"])} for n, f in files.items()},
    }
    return hashlib.sha256(canonical_json(payload)).hexdigest()[:ID_HEX_CHARS]


def load_bundle(uri: str, *, s3: S3Config | None = None, verify: bool = True, expected_id: str | None = None) -> Bundle:
    """Load the bundle at ``uri`` (its directory, or its ``bundle.json``).

    Checks the JSON, the id against the content, the directory's name against the id (the pin; module
    docstring), the id against ``expected_id`` when given, and (``verify=True``) every file's size and
    SHA-256, streaming so large banks are not held in memory. Raises ``BundleError`` naming the file at fault.
    """
    bundle_uri = str(parse_uri(uri)).rstrip("/")
    if bundle_uri.endswith("/" + BUNDLE_JSON):
        bundle_uri = bundle_uri[: -len(BUNDLE_JSON) - 1]
    manifest_uri = join_uri(bundle_uri, BUNDLE_JSON)
    try:
        raw = read_bytes(manifest_uri, s3=s3)
    except FileNotFoundError:
        raise BundleError(
            f"no bundle at {bundle_uri}: {BUNDLE_JSON} is missing (an incomplete write, or the wrong path)"
        ) from None
    doc = parse_manifest(raw, manifest_uri)
    expected = compute_bundle_id(doc["meta"], doc["files"])
    if doc["bundle_id"] != expected:
        raise BundleError(
            f"{manifest_uri}: bundle_id {doc['bundle_id']} does not match its content ({expected}); "
            "bundle.json was edited or damaged"
        )
    pinned = bundle_uri.rsplit("/", 1)[-1]
    if pinned != doc["bundle_id"]:
        raise BundleError(f"{bundle_uri} holds bundle {doc['bundle_id']}, not the {pinned} its directory pins; "
                          "a bundle was copied over another, refusing it")
    if expected_id is not None and doc["bundle_id"] != expected_id:
        raise BundleError(f"{bundle_uri} now holds bundle {doc['bundle_id']}, not the {expected_id} this run "
                          "started with; refusing to score with another bundle")
    bundle = Bundle(
        id=doc["bundle_id"],
        uri=bundle_uri,
        meta=doc["meta"],
        files=doc["files"],
        provenance=dict(doc.get("provenance") or {}),
        s3=s3,
    )
    if verify:
        for name, entry in doc["files"].items():
            _verify_file(bundle_uri, name, entry, s3)
    return bundle


def open_bundle(uri: str, *, s3: S3Config | None = None, verify: bool = True, expected_id: str | None = None) -> Bundle:
    """:func:`load_bundle` for an audit bundle: its metadata is validated against the schema now, so a
    bundle of another schema version fails here, in one line, and not inside a worker."""
    bundle = load_bundle(uri, s3=s3, verify=verify, expected_id=expected_id)
    bundle.info  # noqa: B018 - parse and validate once, at load
    return bundle


def check_name(name: str) -> None:
    if not _NAME.match(name) or name == BUNDLE_JSON:
        raise BundleError(
            f"bundle file name {name!r} is not allowed: use letters, digits, '.', '_' or '-', no folders, "
            f"and not {BUNDLE_JSON}"
        )
    if not name.endswith(ALLOWED_SUFFIXES):
        raise BundleError(
            f"bundle file {name} has a disallowed type; bundles hold only {', '.join(ALLOWED_SUFFIXES)} "
            "(no pickles)"
        )


def parse_manifest(raw: bytes, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise BundleError(f"{where} must hold a JSON object")
    missing = [k for k in _REQUIRED_KEYS if k not in doc]
    if missing:
        raise BundleError(f"{where} lacks the required key(s) {', '.join(missing)}")
    if doc["format"] != FORMAT:
        raise BundleError(f"{where} has format {doc['format']!r}, expected {FORMAT!r}")
    if doc["format_version"] != FORMAT_VERSION:
        raise BundleError(
            f"{where} has format_version {doc['format_version']!r}; this ood-audit reads version "
            f"{FORMAT_VERSION}"
        )
    if not isinstance(doc["meta"], dict) or not isinstance(doc["files"], dict) or not doc["files"]:
        raise BundleError(f"{where}: 'meta' must be an object and 'files' a non-empty object")
    for name, entry in doc["files"].items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not isinstance(entry.get("bytes"), int)
        ):
            raise BundleError(f"{where}: files[{name!r}] must have 'sha256' (string) and 'bytes' (integer)")
        check_name(name)
    return doc


def _verify_file(bundle_uri: str, name: str, entry: Mapping[str, Any], s3: S3Config | None) -> None:
    fs, path = resolve(join_uri(bundle_uri, name), s3)
    digest = hashlib.sha256()
    size = 0
    try:
        with fs.open_input_stream(path) as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        raise BundleError(f"bundle {bundle_uri} is missing its file {name}") from None
    if size != entry["bytes"] or digest.hexdigest() != entry["sha256"]:
        raise BundleError(
            f"bundle {bundle_uri} file {name} fails its checksum (expected {entry['bytes']} bytes, sha256 "
            f"{entry['sha256'][:12]}…; found {size} bytes, sha256 {digest.hexdigest()[:12]}…): the file "
            "was modified or damaged"
        )


def _check_digest(bundle_uri: str, name: str, data: bytes, entry: Mapping[str, Any]) -> None:
    if len(data) != entry["bytes"] or sha256_hex(data) != entry["sha256"]:
        raise BundleError(
            f"bundle {bundle_uri} file {name} fails its checksum: the file was modified or damaged"
        )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, set | frozenset):
        return sorted(value)
    if callable(getattr(value, "tolist", None)):  # torch tensors and scalars
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable: {value!r:.80}")
