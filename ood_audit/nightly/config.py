"""The nightly job's one YAML file, validated by a schema (pydantic).

Every wrong field is reported in one line that names it by its path in the file (``exports[1].budget``),
says what was expected and what was given. Unknown fields are errors too: a typo such as ``budjet`` must
not silently fall back to a default on a job nobody watches.

Every number has an upper bound as well as a lower one: a job nobody watches must not take ``ttl_s: 1e20``
(the renew thread's sleep overflows) or a 5000-digit integer (which Python refuses to parse) and fail later,
far from the file. ``token_env`` may name only a token variable (``*_TOKEN``, ``*_API_KEY``, never
``AWS_*``): with ``url`` it decides which variable is sent to which host.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ood_audit.errors import ConfigError
from ood_audit.io.fs import DEFAULT_RETRY_S
from ood_audit.io.lease import check_ttl
from ood_audit.io.uri import parse_uri

# Upper bounds: far above any real need, low enough that nothing downstream overflows or sleeps forever.
Count = Annotated[int, Field(gt=0, le=1_000_000)]            # batch and chunk sizes, budgets, report rows
Small = Annotated[int, Field(gt=0, le=1024)]                  # workers, threads, attempts, prefix depth
Bytes = Annotated[int, Field(gt=0, le=1 << 34)]               # 16 GiB: one object, or one image's pixels
Seconds = Annotated[int, Field(gt=0, le=7 * 86400)]           # a week
ProjectId = Annotated[int, Field(gt=0, le=2**63 - 1)]         # Label Studio's ids are 64-bit
# A token variable, and never an AWS one: the key sent with ``url`` must not be the store's credentials.
TOKEN_ENV = re.compile(r"^[A-Z][A-Z0-9_]*_(TOKEN|API_KEY)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _uri(value: str) -> str:
    parse_uri(value)  # ConfigError for another scheme or an s3:// URI without bucket
    return value


class S3Settings(_Strict):
    """Where S3 is; credentials always come from the standard AWS chain, never from this file."""

    endpoint_url: str | None = None
    retry_s: Annotated[float, Field(ge=0, le=86400)] = DEFAULT_RETRY_S  # ``--storage-retry-s``


class ScanSettings(_Strict):
    """``ood-audit scan`` options (same names as its flags)."""

    batch_size: Count = 64
    chunk_size: Count = 10_000
    workers: Small | None = None
    device: str = "auto"
    read_threads: Small = 16
    max_attempts: Small = 3
    max_bytes: Bytes | None = None
    max_pixels: Bytes | None = None


def _issues(value: Any) -> list[str]:
    """SPEC §14 issue names (a list, or one comma-separated string), checked against ``io.quality.ISSUES``."""
    from ood_audit.sinks.select import issue_names  # the same check and message as the export flags

    if value is None or value == []:
        return []
    if not isinstance(value, (str, list)):
        raise ValueError("expected a list of quality issue names")
    return list(issue_names(value))


class _Export(_Strict):
    """A selection, as ``ood-audit export``'s flags: ``quality`` keeps only rows with one of these SPEC §14
    issues, ``exclude_quality`` drops rows with any of them (``any``: any issue)."""

    policy: Literal["threshold", "top-k", "disagreement"] = "threshold"
    budget: Count | None = None
    per_class: bool = False
    quality: list[str] = []
    exclude_quality: list[str] = []

    _check_issues = field_validator("quality", "exclude_quality", mode="before")(_issues)

    @model_validator(mode="after")
    def _budget(self) -> _Export:
        if self.policy == "top-k" and self.budget is None:
            raise ValueError("policy top-k needs a budget (a positive integer)")
        if self.per_class and self.budget is None:
            raise ValueError("per_class needs a budget to split")
        from ood_audit.sinks.select import quality_conflict

        if quality_conflict(self.quality, self.exclude_quality):
            raise ValueError("quality and exclude_quality leave no row to select")
        return self


class LabelStudioExport(_Export):
    """Label Studio tasks: written to ``tasks_file`` (``{run_id}`` is replaced by the run's id) and/or
    imported when ``url`` is set (token from the environment variable ``token_env``)."""

    sink: Literal["label-studio"]
    tasks_file: str | None = None
    url: str | None = None
    project_id: ProjectId | None = None
    create_project: str | None = None
    token_env: str = "LABEL_STUDIO_API_KEY"

    @field_validator("token_env")
    @classmethod
    def _check_token_env(cls, v: str) -> str:
        if v.startswith("AWS_") or not TOKEN_ENV.match(v):
            raise ValueError("must name a token variable (NAME_TOKEN or NAME_API_KEY, upper case), never AWS_*")
        return v

    @field_validator("tasks_file")
    @classmethod
    def _check_tasks(cls, v: str | None) -> str | None:
        from ood_audit.sinks.labelstudio import RUN_ID_FIELD  # the sink's rule; imported late (requests)

        if v is not None and RUN_ID_FIELD not in v:  # refused at load (exit 2), not at the night's export
            raise ValueError(f"must contain {RUN_ID_FIELD} (each export writes its own file; e.g. tasks-{{run_id}}.json)")
        return None if v is None else _uri(v)

    @model_validator(mode="after")
    def _project(self) -> LabelStudioExport:
        if self.url is None and self.tasks_file is None:
            raise ValueError("give tasks_file and/or url")
        if self.url is not None and (self.project_id is None) == (self.create_project is None):
            raise ValueError("with url, give exactly one of project_id or create_project")
        return self


class SqsExport(_Export):
    sink: Literal["sqs"]
    queue: str                      # name or URL; a .fifo queue gets deduplication ids
    endpoint_url: str | None = None


class JsonlExport(_Export):
    sink: Literal["jsonl"]
    prefix: str                     # folder or s3:// prefix for the manifest files

    _check_prefix = field_validator("prefix")(_uri)


class WebhookExport(_Export):
    sink: Literal["webhook"]
    url: str                                  # http(s)://...; signed batches are POSTed here
    secret_env: str = "OOD_AUDIT_WEBHOOK_SECRET"  # the variable holding the signing secret (never the secret)

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        from ood_audit.sinks.webhook import is_http_url  # the sink's own rules

        if not is_http_url(v):
            raise ValueError("must be an http:// or https:// URL")
        return v

    @field_validator("secret_env")
    @classmethod
    def _check_secret_env(cls, v: str) -> str:
        from ood_audit.sinks.webhook import SECRET_ENV_RULE

        if not SECRET_ENV_RULE.match(v):
            raise ValueError("must name a secret variable (NAME_SECRET, upper case), never AWS_*")
        return v


class FiftyOneExport(_Export):
    """Samples added to the FiftyOne dataset ``dataset`` (:mod:`ood_audit.sinks.fiftyone`). A machine without
    FiftyOne is refused when the config is loaded (exit 2), not after the night's scan."""

    sink: Literal["fiftyone"]
    dataset: Annotated[str, Field(min_length=1)]

    @field_validator("dataset")
    @classmethod
    def _check_installed(cls, v: str) -> str:
        from ood_audit.sinks.fiftyone import fiftyone_available

        if not fiftyone_available():
            raise ValueError("needs FiftyOne: pip install 'ood-audit[fiftyone]'")
        return v


Export = Annotated[Union[LabelStudioExport, SqsExport, JsonlExport, WebhookExport, FiftyOneExport],
                   Field(discriminator="sink")]


class ReportSettings(_Strict):
    """``out`` may hold ``{run_id}`` and ``{run_date}``, e.g. ``s3://audit/html/{run_date}.html``."""

    out: str
    top: Count = 48
    prefix_depth: Small = 1

    _check_out = field_validator("out")(_uri)


class LeaseSettings(_Strict):
    """The overlap guard: a run holds the lease and renews it every ``ttl_s / 3``; a lease not renewed for
    ``ttl_s`` belongs to a dead run and is taken over. It must outlast ``s3.retry_s``: a holder riding out
    a storage outage must not lose its lease for it."""

    ttl_s: Seconds = 6 * 3600


class NightlyConfig(_Strict):
    """One nightly audit: incremental scan -> exports -> report with drift (see the README's example)."""

    bundle: str
    inputs: Annotated[list[str], Field(min_length=1)]
    output: str
    incremental: bool = True
    s3: S3Settings = S3Settings()
    scan: ScanSettings = ScanSettings()
    exports: list[Export] = []
    report: ReportSettings | None = None
    lease: LeaseSettings = LeaseSettings()

    _check_uris = field_validator("bundle", "output")(_uri)

    @field_validator("inputs")
    @classmethod
    def _check_inputs(cls, v: list[str]) -> list[str]:
        return [_uri(u) for u in v]

    @model_validator(mode="after")
    def _lease_outlasts_retries(self) -> NightlyConfig:
        try:  # the rule is the lease's own (one home); pydantic reports a ValueError with the file's other errors
            check_ttl(self.lease.ttl_s, self.s3.retry_s, ttl_name="lease.ttl_s", retry_name="s3.retry_s")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self


def load_config(path: str | Path) -> NightlyConfig:
    """Parse and validate ``path``; ``ConfigError`` naming the file and every wrong field, in one line."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc})") from None
    try:
        doc = yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader (below)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"--config {path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"--config {path}: expected a mapping of fields at the top, got {type(doc).__name__}")
    return parse_config(doc, str(path))


def _loader() -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        """``yaml.SafeLoader`` that keeps an integer too long for Python to parse as its text, so the schema
        refuses it in one line naming its field (Python raises a bare ``ValueError`` beyond 4300 digits)."""

        def construct_yaml_int(self, node: Any) -> Any:
            try:
                return super().construct_yaml_int(node)
            except ValueError:
                return _TooLong(node.value)

    Loader.add_constructor("tag:yaml.org,2002:int", Loader.construct_yaml_int)
    return Loader


class _TooLong(str):
    """An integer literal with more digits than Python parses."""


def parse_config(doc: dict[str, Any], where: str = "config") -> NightlyConfig:
    try:
        return NightlyConfig.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(f"{where}: " + "; ".join(_describe(e) for e in exc.errors())) from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _describe(error: Any) -> str:
    loc = ""
    for part in error["loc"]:
        if isinstance(part, int):
            loc += f"[{part}]"
        elif part in ("label-studio", "sqs", "jsonl", "webhook", "fiftyone"):  # the discriminator's branch
            continue
        else:
            loc += f".{part}" if loc else str(part)
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"{loc}: unknown field"
    if error["type"] == "union_tag_invalid":
        ctx = error.get("ctx") or {}
        return f"{loc}.{ctx.get('discriminator', 'sink').strip(chr(39))}: expected one of {ctx.get('expected_tags')} " \
               f"(got {ctx.get('tag')!r})"
    if error["type"] == "missing":
        return f"{loc}: required field missing"
    return f"{loc}: {msg}{_shown(error.get('input'))}" if loc else f"{msg}{_shown(error.get('input'))}"


def _shown(given: Any) -> str:
    """`` (got X)``, short: a huge number or text is cut (a 5000-digit integer cannot even be printed)."""
    if isinstance(given, (dict, list)) or given is None:
        return ""
    if isinstance(given, _TooLong):
        return f" (got an integer of {len(given.lstrip('+-'))} digits)"
    if isinstance(given, int) and not isinstance(given, bool) and given.bit_length() > 128:
        return f" (got an integer of about {int(given.bit_length() * 0.30103) + 1} digits)"
    text = repr(given)
    return f" (got {text[:60]}…)" if len(text) > 60 else f" (got {text})"
