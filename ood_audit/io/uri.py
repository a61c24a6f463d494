"""Object URIs: ``s3://bucket/key`` or a local path (``file:///abs/path`` is accepted too).

S3 keys are taken literally, as the AWS CLI does: ``s3://b/a b.jpg`` is the key ``a b.jpg`` (no
percent-decoding). ``file://`` URIs follow RFC 8089 and are percent-decoded. Local paths are made
absolute, so a URI written into a report or manifest means the same file from any working directory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import unquote

from ood_audit.errors import ConfigError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


@dataclass(frozen=True)
class ParsedUri:
    """A URI split into its parts. ``scheme`` is ``"s3"`` or ``"file"``.

    For S3, ``bucket`` and ``key`` are set; for local files ``bucket`` is ``""`` and ``key`` is the
    absolute path.
    """

    scheme: str
    bucket: str
    key: str

    @property
    def is_s3(self) -> bool:
        return self.scheme == "s3"

    @property
    def fs_path(self) -> str:
        """The path as ``pyarrow.fs`` wants it: ``bucket/key`` on S3, the absolute path locally."""
        if self.is_s3:
            return f"{self.bucket}/{self.key}" if self.key else self.bucket
        return self.key

    def __str__(self) -> str:
        return f"s3://{self.fs_path}" if self.is_s3 else self.key


def parse_uri(uri: str | os.PathLike[str]) -> ParsedUri:
    """Split ``uri``. Raises ``ConfigError`` for an empty URI, another scheme, or ``s3://`` without bucket."""
    text = os.fspath(uri)
    if not isinstance(text, str) or not text:
        raise ConfigError("empty URI: give s3://bucket/key or a local path")
    match = _SCHEME.match(text)
    if match is None:
        return ParsedUri("file", "", os.path.abspath(os.path.expanduser(text)))
    scheme = match.group(1).lower()
    rest = text[match.end():]
    if scheme == "file":
        # file://host/path is legal but only the local host makes sense here.
        host, sep, path = rest.partition("/")
        if host not in ("", "localhost"):
            raise ConfigError(f"file URI {text!r} names host {host!r}; only local files are supported")
        return ParsedUri("file", "", os.path.abspath(unquote(sep + path)))
    if scheme == "s3":
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise ConfigError(f"S3 URI {text!r} has no bucket: write s3://bucket/key")
        return ParsedUri("s3", bucket, key)
    raise ConfigError(f"unsupported URI scheme {scheme!r} in {text!r}: use s3://bucket/key or a local path")


def is_s3_uri(uri: str | os.PathLike[str]) -> bool:
    return os.fspath(uri).lower().startswith("s3://")


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def join_uri(base: str | os.PathLike[str], *parts: str) -> str:
    """Append path parts to a prefix URI with exactly one ``/`` between them."""
    parsed = parse_uri(base)
    if not parsed.is_s3:
        return os.path.join(parsed.key, *parts)
    key = parsed.key
    for part in parts:
        part = part.lstrip("/")
        if not part:
            continue
        key = f"{key.rstrip('/')}/{part}" if key else part
    return s3_uri(parsed.bucket, key)


def parent_uri(uri: str | os.PathLike[str]) -> str:
    """The prefix that contains ``uri`` (without a trailing slash)."""
    parsed = parse_uri(uri)
    if not parsed.is_s3:
        return os.path.dirname(parsed.key.rstrip(os.sep)) or os.sep
    key = parsed.key.rstrip("/")
    return s3_uri(parsed.bucket, key.rpartition("/")[0])


def object_key(uri: str, source: str) -> str:
    """The part of ``uri`` under the dataset's root ``source`` (the whole URI for manifests): what the
    training and calibration splits hash, so a set keeps its splits when it is copied to another bucket or
    disk."""
    base = source if source.endswith(("/", os.sep)) else source + ("/" if source.startswith("s3://") else os.sep)
    return uri[len(base):] if uri.startswith(base) else uri
