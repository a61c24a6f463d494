"""I/O shared by training, calibration and the scan: URIs, filesystems, listings, decoding, datasets.

- :mod:`~ood_audit.io.uri`: ``s3://bucket/key`` and local paths.
- :mod:`~ood_audit.io.fs`: ``S3Config`` (picklable S3 settings), ``resolve`` to a pyarrow filesystem,
  ``read_bytes`` / ``write_bytes`` / ``exists``, boto3 clients.
- :mod:`~ood_audit.io.listing`: paginated listings (``uri``, ``etag``, ``size``) and manifests.
- :mod:`~ood_audit.io.decode`: ``decode_image`` with one status per object, and ``Preprocess``.
- :mod:`~ood_audit.io.reader`: ``load_image`` = fetch + decode, ``missing`` when an object is gone.
- :mod:`~ood_audit.io.dataset`: labelled ID datasets (class folders, manifests) and OOD image folders.
"""

from ood_audit.io.dataset import (
    IMAGE_EXTENSIONS,
    DecodedImages,
    ImageList,
    LabelledDataset,
    decode_dataset,
    discover_class_folders,
    has_image_extension,
    labelled_from_manifest,
    list_images,
    load_labelled,
)
from ood_audit.io.decode import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    STATUSES,
    DecodeResult,
    Preprocess,
    decode_file,
    decode_image,
)
from ood_audit.io.fs import S3Config, exists, file_size, read_bytes, resolve, s3_client, write_bytes
from ood_audit.io.listing import (
    DEFAULT_PAGE_SIZE,
    LISTING_SCHEMA,
    iter_listing_pages,
    iter_manifest_pages,
    list_objects,
    read_manifest,
)
from ood_audit.io.reader import load_image, load_images, read_object
from ood_audit.io.uri import ParsedUri, is_s3_uri, join_uri, parent_uri, parse_uri, s3_uri

__all__ = [
    "DEFAULT_MAX_BYTES", "DEFAULT_MAX_PIXELS", "DEFAULT_PAGE_SIZE", "IMAGE_EXTENSIONS", "LISTING_SCHEMA",
    "STATUSES", "DecodeResult", "DecodedImages", "ImageList", "LabelledDataset", "ParsedUri", "Preprocess",
    "S3Config", "decode_dataset", "decode_file", "decode_image", "discover_class_folders", "exists",
    "file_size", "has_image_extension", "is_s3_uri", "iter_listing_pages", "iter_manifest_pages",
    "join_uri", "labelled_from_manifest", "list_images", "list_objects", "load_image", "load_images",
    "load_labelled", "parent_uri", "parse_uri", "read_bytes", "read_manifest", "read_object", "resolve",
    "s3_client", "s3_uri", "write_bytes",
]
