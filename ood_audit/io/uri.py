"""Object URIs: ``s3://bucket/key``, ``gs://bucket/key``, ``az://container/key`` (also
``abfs[s]://container/key`` and ``abfs[s]://container@account.dfs.core.windows.net/key``), or a local path
(``file:///abs/path`` is accepted too).

Object keys are taken literally, as the clouds' own command-line tools do: ``s3://b/a b.jpg`` is the key
``a b.jpg`` (no percent-decoding). ``file://`` URIs follow RFC 8089 and are percent-decoded. Local paths are
made absolute, so a URI written into a report or manifest means the same file from any working directory.
A URI keeps the scheme it was written with (``abfs://`` stays ``abfs://``): rows, ledgers and manifests name
objects exactly as the user did.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from urllib.parse import unquote

from ood_audit.errors import ConfigError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# scheme -> the cloud whose filesystem serves it (io/clouds.py builds one per cloud)
CLOUDS = {"s3": "s3", "gs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure"}
_ABFS_HOST = re.compile(r"^(?P<container>[^@/]+)@(?P<account>[a-z0-9]{3,24})\.dfs\.core\.windows\.net$")
_EXAMPLE = "s3://bucket/key, gs://bucket/key, az://container/key or a local path"


@dataclass(frozen=True)
class ParsedUri:
    """A URI split into its parts. ``scheme`` is ``"file"`` or a key of :data:`CLOUDS`.

    In object storage ``bucket`` (a GCS bucket, an Azure container) and ``key`` are set, and ``account`` is
    the Azure storage account an ``abfs://container@account...`` URI names (else ``""``: the configured
    one); for local files ``bucket`` is ``""`` and ``key`` is the absolute path.
    """

    scheme: str
    bucket: str
    key: str
    account: str = ""

    @property
    def is_s3(self) -> bool:
        return self.scheme == "s3"

    @property
    def is_remote(self) -> bool:
        """In object storage (any cloud), not on local disk."""
        return self.scheme != "file"

    @property
    def cloud(self) -> str:
        """``"s3"``, ``"gcs"``, ``"azure"``, or ``""`` for a local path."""
        return CLOUDS.get(self.scheme, "")

    @property
    def fs_path(self) -> str:
        """The path as ``pyarrow.fs`` wants it: ``bucket/key`` in object storage, the absolute path locally."""
        if self.is_remote:
            return f"{self.bucket}/{self.key}" if self.key else self.bucket
        return self.key

    def with_key(self, key: str) -> ParsedUri:
        """The same bucket (container, account) with another key."""
        return replace(self, key=key)

    def __str__(self) -> str:
        if not self.is_remote:
            return self.key
        if self.account:
            host = f"{self.bucket}@{self.account}.dfs.core.windows.net"
            return f"{self.scheme}://{host}/{self.key}" if self.key else f"{self.scheme}://{host}"
        return f"{self.scheme}://{self.fs_path}"


def parse_uri(uri: str | os.PathLike[str]) -> ParsedUri:
    """Split ``uri``. Raises ``ConfigError`` for an empty URI, another scheme, or an object URI without bucket."""
    text = os.fspath(uri)
    if not isinstance(text, str) or not text:
        raise ConfigError(f"empty URI: give {_EXAMPLE}")
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
    if scheme not in CLOUDS:
        raise ConfigError(f"unsupported URI scheme {scheme!r} in {text!r}: use {_EXAMPLE}")
    bucket, _, key = rest.partition("/")
    account = ""
    if "@" in bucket:
        host = _ABFS_HOST.match(bucket.lower()) if scheme in ("abfs", "abfss") else None
        if host is None:
            raise ConfigError(f"{scheme} URI {text!r}: write {scheme}://container@account.dfs.core.windows.net/key"
                              if scheme in ("abfs", "abfss") else f"{scheme} URI {text!r}: a bucket has no '@'")
        bucket, account = host["container"], host["account"]
    if not bucket:
        word = "container" if CLOUDS[scheme] == "azure" else "bucket"
        raise ConfigError(f"{scheme} URI {text!r} has no {word}: write {scheme}://{word}/key")
    return ParsedUri(scheme, bucket, key, account)


def is_remote_uri(uri: str | os.PathLike[str]) -> bool:
    """Whether ``uri`` names object storage (``s3://``, ``gs://``, ``az://``, ``abfs[s]://``)."""
    match = _SCHEME.match(os.fspath(uri))
    return match is not None and match.group(1).lower() in CLOUDS


def is_s3_uri(uri: str | os.PathLike[str]) -> bool:
    return os.fspath(uri).lower().startswith("s3://")


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def join_uri(base: str | os.PathLike[str], *parts: str) -> str:
    """Append path parts to a prefix URI with exactly one ``/`` between them."""
    parsed = parse_uri(base)
    if not parsed.is_remote:
        return os.path.join(parsed.key, *parts)
    key = parsed.key
    for part in parts:
        part = part.lstrip("/")
        if not part:
            continue
        key = f"{key.rstrip('/')}/{part}" if key else part
    return str(parsed.with_key(key))


def parent_uri(uri: str | os.PathLike[str]) -> str:
    """The prefix that contains ``uri`` (without a trailing slash)."""
    parsed = parse_uri(uri)
    if not parsed.is_remote:
        return os.path.dirname(parsed.key.rstrip(os.sep)) or os.sep
    key = parsed.key.rstrip("/").rpartition("/")[0]
    return str(parsed.with_key(key)) if key else f"{parsed.with_key('')}/"


def separator(uri: str) -> str:
    """``/`` in object storage, the OS separator on local disk."""
    return "/" if is_remote_uri(uri) else os.sep


def object_key(uri: str, source: str) -> str:
    """The part of ``uri`` under the dataset's root ``source`` (the whole URI for manifests): what the
    training and calibration splits hash, so a set keeps its splits when it is copied to another bucket or
    disk."""
    base = source if source.endswith(("/", os.sep)) else source + separator(source)
    return uri[len(base):] if uri.startswith(base) else uri
