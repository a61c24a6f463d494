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
