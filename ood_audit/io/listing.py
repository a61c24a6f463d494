"""List objects under prefixes, page by page, and read manifests.

A listing is a stream of pyarrow tables ("pages") of at most ``page_size`` rows with :data:`LISTING_SCHEMA`:

- ``uri``: ``s3://bucket/key`` (``gs://``, ``az://``, ``abfs[s]://`` as written) or an absolute local path;
- ``etag``: on S3 the object's ETag without quotes; locally, on GCS and on Azure ``"<mtime_ns>-<size>"``, a
  cheap stamp that changes when the object is rewritten but is not a content hash (pyarrow's listings carry
  no generation or ETag, and no object is read to list it);
- ``size``: bytes.

Only one page is alive at a time, so listing millions of keys costs the driver one page of memory.

Prefixes are directories: ``s3://b/imgs`` lists ``imgs/…`` and never ``imgs2/…``. A URI naming one
object or file lists just that object.

Order is deterministic for a given store: S3 lists in the store's order (AWS: UTF-8 byte order of the
keys; SeaweedFS walks folders depth-first). Local directories are walked in AWS's order (a directory
sorts as its name plus ``/``). GCS and Azure prefixes are listed through pyarrow's filesystems, which
return one prefix's listing whole: it is sorted by key, and costs the driver that listing's memory (about
200 bytes an object) rather than one page. Sort a listing yourself if two stores must agree.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ood_audit.errors import DataError, StorageError
from ood_audit.io.fs import S3Config, _resolve_parsed, store_name
from ood_audit.io.storage_errors import redact_urls, storage_error
from ood_audit.io.uri import ParsedUri, parse_uri, s3_uri

DEFAULT_PAGE_SIZE = 1000
LISTING_SCHEMA = pa.schema([("uri", pa.string()), ("etag", pa.string()), ("size", pa.int64())])


def iter_listing_pages(
    prefixes: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    s3: S3Config | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    allow_empty: bool = False,
) -> Iterator[pa.Table]:
    """Yield pages (pyarrow tables, ≤ ``page_size`` rows each) of the objects under each prefix.

    Raises ``DataError`` naming the prefix when it does not exist or holds no objects, unless
    ``allow_empty``; a missing local directory is an error either way, and a missing bucket a
    :class:`~ood_audit.errors.StorageError` (README "Exit codes": 7).
    """
    if page_size < 1:
        raise DataError(f"page_size must be at least 1, got {page_size}")
    if isinstance(prefixes, (str, os.PathLike)):
        prefixes = [prefixes]
    for prefix in prefixes:
        parsed = parse_uri(prefix)
        rows = (_iter_s3(parsed, s3, page_size) if parsed.is_s3 else
                _iter_cloud(parsed, s3) if parsed.is_remote else _iter_local(parsed))
        seen = 0
        for page in _paginate(rows, page_size):
            seen += page.num_rows
            yield page
        if seen == 0 and not allow_empty:
            where = "the prefix is missing or empty" if parsed.is_remote else "the directory is empty"
            raise DataError(f"no objects under {_display(parsed)} ({where})")


def list_objects(
    prefixes: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    s3: S3Config | None = None,
    allow_empty: bool = False,
) -> pa.Table:
    """The whole listing as one table; for small sets (tests, OOD folders). Streams stay the default."""
    pages = list(iter_listing_pages(prefixes, s3=s3, allow_empty=allow_empty))
    return pa.concat_tables(pages) if pages else LISTING_SCHEMA.empty_table()


def _display(parsed: ParsedUri) -> str:
    if parsed.is_remote:
        key = parsed.key if not parsed.key or parsed.key.endswith("/") else parsed.key + "/"
        return str(parsed.with_key(key)) if key else f"{parsed.with_key('')}/"
    return parsed.key


def _paginate(rows: Iterable[tuple[str, str, int]], page_size: int) -> Iterator[pa.Table]:
    uris: list[str] = []
    etags: list[str] = []
    sizes: list[int] = []
    for uri, etag, size in rows:
        uris.append(uri)
        etags.append(etag)
        sizes.append(size)
        if len(uris) >= page_size:
            yield pa.table([uris, etags, sizes], schema=LISTING_SCHEMA)
            uris, etags, sizes = [], [], []
    if uris:
        yield pa.table([uris, etags, sizes], schema=LISTING_SCHEMA)


def _iter_s3(parsed: ParsedUri, s3: S3Config | None, page_size: int) -> Iterator[tuple[str, str, int]]:
    from botocore.exceptions import ClientError

    client = (s3 or S3Config.from_env()).client()
    bucket = parsed.bucket
    prefix = parsed.key if not parsed.key or parsed.key.endswith("/") else parsed.key + "/"
    paginator = client.get_paginator("list_objects_v2")
    found = False
    try:
        for response in paginator.paginate(
            Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": min(page_size, 1000)}
        ):
            for obj in response.get("Contents", ()):
                key = obj["Key"]
                if key.endswith("/"):
                    continue  # a "directory marker", not an object
                found = True
                yield s3_uri(bucket, key), obj.get("ETag", "").strip('"'), int(obj["Size"])
        if found or not parsed.key or parsed.key.endswith("/"):
            return
        # Not a prefix: maybe the URI names one object.
        try:
            head = client.head_object(Bucket=bucket, Key=parsed.key)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return  # neither a prefix nor an object: the caller says the prefix is empty
            raise
        yield s3_uri(bucket, parsed.key), head.get("ETag", "").strip('"'), int(head["ContentLength"])
    except ClientError as exc:
        err = storage_error(exc, s3=s3, uri=_display(parsed))
        if err is not None and err.kind == "no_bucket":  # the table's status (7), like the output's bucket
            raise err from None
        # Other refusals of a listing stay bad input (exit 2), as they always were.
        code = exc.response.get("Error", {}).get("Code", "")
        raise DataError(f"cannot list {_display(parsed)}: {code}: {exc}") from exc


def _iter_cloud(parsed: ParsedUri, s3: S3Config | None) -> Iterator[tuple[str, str, int]]:
    """GCS and Azure through pyarrow's filesystem: the prefix's objects sorted by key, else the one object the URI
    names; a missing bucket or container is a :class:`StorageError` (status 7)."""
    fs, path = _resolve_parsed(parsed, s3)
    try:
        try:
            infos = fs.get_file_info(pafs.FileSelector(path.rstrip("/"), recursive=True, allow_not_found=True))
        except FileNotFoundError:
            infos = []
        files = sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)
        if not files and parsed.key and not parsed.key.endswith("/"):
            one = fs.get_file_info(path)
            files = [one] if one.type == pafs.FileType.File else []
        if not files and fs.get_file_info(parsed.bucket).type == pafs.FileType.NotFound:
            word = "container" if parsed.cloud == "azure" else "bucket"
            raise StorageError(f"no such {word} at {store_name(parsed, s3)}: {parsed.with_key('')} (listing "
                               f"{_display(parsed)}); create it or fix the URI", "no_bucket")
    except OSError as exc:
        err = storage_error(exc, s3=s3, uri=_display(parsed))
        if err is not None:
            raise err from None
        raise DataError(f"cannot list {_display(parsed)}: {redact_urls(str(exc))}") from None
    for info in files:
        key = info.path.partition("/")[2]
        yield str(parsed.with_key(key)), f"{info.mtime_ns}-{info.size}", int(info.size)


def local_etag(st: os.stat_result) -> str:
    """The local stand-in for an ETag: ``"<mtime_ns>-<size>"`` (changes on rewrite; not a content hash)."""
    return f"{st.st_mtime_ns}-{st.st_size}"


def _iter_local(parsed: ParsedUri) -> Iterator[tuple[str, str, int]]:
    root = parsed.key
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise DataError(f"{root} does not exist") from None
    if stat.S_ISREG(st.st_mode):
        yield root, local_etag(st), st.st_size
        return
    if not stat.S_ISDIR(st.st_mode):
        raise DataError(f"{root} is neither a file nor a directory")
    yield from _walk(root, {(st.st_dev, st.st_ino)})


def _walk(directory: str, visiting: set[tuple[int, int]]) -> Iterator[tuple[str, str, int]]:
    entries: list[tuple[str, str, os.stat_result, bool]] = []
    with os.scandir(directory) as it:
        for entry in it:
            try:
                st = entry.stat()  # follows symlinks
            except FileNotFoundError:
                continue  # a dangling link, or removed while listing
            is_dir = stat.S_ISDIR(st.st_mode)
            if not is_dir and not stat.S_ISREG(st.st_mode):
                continue
            entries.append((entry.name + "/" if is_dir else entry.name, entry.path, st, is_dir))
    entries.sort(key=lambda e: e[0])
    for _, path, st, is_dir in entries:
        if is_dir:
            ident = (st.st_dev, st.st_ino)
            if ident in visiting:
                continue  # a symlink loop
            visiting.add(ident)
            yield from _walk(path, visiting)
            visiting.discard(ident)
        else:
            yield path, local_etag(st), st.st_size


# -- manifests --------------------------------------------------------------------------------------

MANIFEST_SUFFIXES = (".parquet", ".pq", ".csv", ".csv.gz")
# Read as strings whatever they look like: "00123" must stay a key, not become an integer.
_CSV_STRING_COLUMNS = ("uri", "etag")
_CSV_BLOCK = 16 << 20  # CSV types are inferred from the first block: make it large


def read_manifest(uri: str | os.PathLike[str], *, s3: S3Config | None = None) -> pa.Table:
    """Read a Parquet or CSV manifest with a ``uri`` column (and optional ``label``, ``etag``, ``size``).

    Relative URIs in it are taken relative to the manifest's own directory or prefix. URIs come back
    normalised (absolute local paths, ``s3://`` kept). Other columns are dropped. Raises ``DataError``
    naming the manifest and column on a missing ``uri`` column, an empty or null ``uri``, or no rows.
    """
    pages = list(iter_manifest_pages(uri, s3=s3, page_size=1 << 16))
    return pa.concat_tables(pages)


def iter_manifest_pages(
    uri: str | os.PathLike[str],
    *,
    s3: S3Config | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> Iterator[pa.Table]:
    """:func:`read_manifest` as a stream of pages of at most ``page_size`` rows."""
    parsed = parse_uri(uri)
    name = os.path.basename(parsed.key).lower()
    if not name.endswith(MANIFEST_SUFFIXES):
        raise DataError(f"manifest {parsed} must end in one of {', '.join(MANIFEST_SUFFIXES)}")
    fs, path = _resolve_parsed(parsed, s3)
    base = parsed.key.rpartition("/")[0] if parsed.is_remote else os.path.dirname(parsed.key)
    rows = 0
    try:
        for batch in _manifest_batches(fs, path, name, page_size, parsed):
            table = pa.Table.from_batches([batch])
            rows += table.num_rows
            yield _normalise_manifest(table, parsed, base, rows - table.num_rows)
    except FileNotFoundError:
        raise DataError(f"manifest {parsed} does not exist") from None
    except pa.ArrowInvalid as exc:
        raise DataError(f"manifest {parsed} cannot be parsed: {exc}") from exc
    if rows == 0:
        raise DataError(f"manifest {parsed} has no rows")


def _manifest_batches(
    fs: pafs.FileSystem, path: str, name: str, page_size: int, parsed: ParsedUri
) -> Iterator[pa.RecordBatch]:
    if name.endswith((".parquet", ".pq")):
        with fs.open_input_file(path) as fh:
            pf = pq.ParquetFile(fh)
            columns = [c for c in ("uri", "label", "etag", "size") if c in pf.schema_arrow.names]
            if "uri" not in columns:
                raise DataError(_no_uri_column(parsed, pf.schema_arrow.names))
            yield from pf.iter_batches(batch_size=page_size, columns=columns)
        return
    with fs.open_input_stream(path) as fh:
        reader = pacsv.open_csv(
            fh,
            read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in _CSV_STRING_COLUMNS},
                strings_can_be_null=True,
            ),
        )
        names = reader.schema.names
        if "uri" not in names:
            raise DataError(_no_uri_column(parsed, names))
        keep = [c for c in ("uri", "label", "etag", "size") if c in names]
        for batch in reader:
            for start in range(0, batch.num_rows, page_size):
                yield batch.slice(start, page_size).select(keep)


def _no_uri_column(parsed: ParsedUri, names: Sequence[str]) -> str:
    return f"manifest {parsed} has no 'uri' column (columns: {', '.join(names) or 'none'})"


def _normalise_manifest(table: pa.Table, parsed: ParsedUri, base: str, first_row: int) -> pa.Table:
    column = table.column("uri")
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise DataError(f"manifest {parsed} column 'uri' has type {column.type}; expected strings")
    out: list[str] = []
    for i, value in enumerate(column.to_pylist()):
        if not value:
            raise DataError(f"manifest {parsed} column 'uri' is empty or null at row {first_row + i}")
        out.append(_absolute(value, parsed, base))
    return table.set_column(table.schema.get_field_index("uri"), "uri", pa.array(out, pa.string()))


def _absolute(value: str, manifest: ParsedUri, base: str) -> str:
    if "://" in value:
        return str(parse_uri(value))
    if manifest.is_remote:
        if value.startswith("/"):
            raise DataError(
                f"manifest {manifest} holds the absolute local path {value!r}; use {manifest.scheme}:// URIs or "
                "keys relative to the manifest"
            )
        return str(manifest.with_key(f"{base}/{value}" if base else value))
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))
