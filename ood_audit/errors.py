"""Typed errors. Every message names the field or file at fault and, where possible, the fix."""


class OodAuditError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class ConfigError(OodAuditError, ValueError):
    """A bad option, argument or config field."""


class CheckpointError(OodAuditError):
    """Weights whose keys or shapes do not match the architecture (strict loading)."""


class DataError(OodAuditError):
    """Input data that cannot be used: an empty folder, a bad manifest, non-finite features."""


class BundleError(OodAuditError):
    """An audit bundle that is missing, malformed or fails its checksums."""


class KnnError(OodAuditError, ValueError):
    """Misuse of a kNN index: empty bank, dimension mismatch, k larger than the bank."""


class TrainingDivergedError(OodAuditError):
    """The training loss became NaN or infinite; the message names the step and suggests a lower --lr."""


class ReportError(OodAuditError):
    """A scan report that cannot be read: no runs, an unknown run id, an unknown report format."""


class ExportError(OodAuditError):
    """An export that could not finish: an unreachable endpoint, rejected credentials, a refused import."""


class NotFittedError(OodAuditError, RuntimeError):
    """A detector that needs ID statistics (a bank, a center and scale) was used before ``fit``."""


# Exit statuses of every command (README "Exit codes / failures"; ``ood-audit --help`` lists them too).
EXIT_OK = 0
EXIT_ERROR = 1            # unexpected: a bug (the traceback is printed)
EXIT_CONFIG = 2           # a bad argument, config, input, bundle or weights file
EXIT_UNREACHABLE = 3      # object storage did not answer within the retry window
EXIT_INCOMPLETE = 4       # the scan stopped part-way; committed work is kept, re-run with --run-id
EXIT_TRIAGE = 5           # nightly: the scan finished, an export or the report failed
EXIT_CREDENTIALS = 6      # object storage refused the credentials (wrong, expired or revoked)
EXIT_NO_BUCKET = 7        # a bucket does not exist
EXIT_DENIED = 8           # access denied: e.g. the output root is not writable
EXIT_LEASE_HELD = 75      # EX_TEMPFAIL: another live run holds the lease; try again later


class StorageError(OodAuditError):
    """Object storage (or a local output folder) could not be used. ``kind`` says how, and sets the exit status:

    - ``unreachable``: no answer from the endpoint within the retry window (down, wrong host, network);
    - ``credentials``: the keys were refused (unknown key, bad signature, expired or revoked token);
    - ``no_bucket``: the bucket does not exist;
    - ``denied``: the keys are valid but may not do this (e.g. write the output root).

    Messages name the endpoint and the bucket and key (or the local path) at fault. Kinds, their codes and
    their exit statuses are one table, :data:`ood_audit.io.storage_errors.KINDS`; its
    :func:`~ood_audit.io.storage_errors.storage_error` builds these from pyarrow's and boto3's exceptions.
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        if kind not in _storage_kinds():
            raise ValueError(f"unknown storage error kind {kind!r}")
        self.kind = kind

    @property
    def exit_code(self) -> int:
        return _storage_kinds()[self.kind].exit_status

    def __reduce__(self):  # keeps ``kind`` when raised in a Ray worker and re-raised on the driver
        return type(self), (str(self), self.kind)


def _storage_kinds() -> dict:
    from ood_audit.io.storage_errors import KINDS  # imported late: the io package imports this module

    return KINDS


EXIT_STATUSES: dict[int, str] = {
    EXIT_OK: "done (whatever the audit found)",
    EXIT_ERROR: "unexpected error (a bug: the traceback is printed)",
    EXIT_CONFIG: "bad argument, config, input, bundle or weights (corrupt file, other format version)",
    EXIT_UNREACHABLE: "object storage unreachable (endpoint down or wrong) before the run started",
    EXIT_INCOMPLETE: "scan stopped part-way (storage outage past --storage-retry-s, credentials revoked, output "
                     "refusing writes); committed work kept: re-run with the same --run-id",
    EXIT_TRIAGE: "nightly: an export or the report failed; re-run to finish them",
    EXIT_CREDENTIALS: "object storage refused the credentials",
    EXIT_NO_BUCKET: "a bucket does not exist",
    EXIT_DENIED: "access denied (e.g. the output root is not writable)",
    EXIT_LEASE_HELD: "another live run holds the lease (nightly, or a scan with the same --run-id)",
}
