"""The audit bundle's metadata as one typed schema (SPEC §10), parsed and validated once at load.

``bundle.json``'s ``meta`` object is a :class:`BundleMeta`. Its parts: the model (:class:`ModelPart`, the
one model description) and preprocessing, the precision policy, the block selection and its evidence
(:class:`ProbeEvidence`, :class:`OutlierEvidence`), each fitted detector's state (``featurenorm2``,
``csd``, ``knn``: the :class:`FeatureNorm2Part` and :class:`BankPart` their ``state()`` returns), the
thresholds, the held-out tables, and provenance of the data (split, data, training). Every reader uses
these attributes; no part is read by string key.

Schema versions:

- **2** (this version): ``schema_version`` and ``precision`` are present; the target rate is
  ``thresholds.target_id_flag_rate``.
- **1** (bundles written before the schema had a version) is migrated on load: ``precision`` becomes
  ``float32`` activations (what those bundles were calibrated with) and ``thresholds.target_fpr`` becomes
  ``target_id_flag_rate``. The file and its id are not changed.
- Anything newer is refused in one line: it needs a newer ood-audit.

The ``preprocess`` part is :class:`ood_audit.preprocess.Preprocess`. Fields it gained within schema 2 are
filled on load with what older files meant (``jpeg_draft_longer`` 0; ``mean``/``std`` from the ``model`` part).

Optional parts added within schema 2 (absent from bundles written before them, which load unchanged and
simply lack the finding; older ood-audit ignores them): ``quality`` (the calibrated SPEC §14 ``blurry``
threshold and, later, the held-out ``grayscale_share``), ``near_duplicates`` (τ of
:mod:`ood_audit.flagging.neardup`) and ``per_class``
(:mod:`ood_audit.flagging.perclass`). Their models live here, with the rest of the schema, so reading
a bundle needs neither numpy nor torch; the formulas that fill them live in those modules. Also within
schema 2 (SPEC §16): ``labelled`` (false for a bundle calibrated on unlabelled ID images: only the label-free
detectors were fitted and no class is predicted; older bundles read as labelled) and ``weights``, where the
weights came from (:class:`~ood_audit.bundle.provenance.WeightsProvenance`; absent in older bundles). And the
SPEC §15 detectors: ``mahalanobis`` (:class:`MahalanobisPart`, labelled bundles) and ``scale``
(:class:`ScalePart`); a bundle without them scores without those two columns.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ood_audit.bundle.provenance import WeightsProvenance
from ood_audit.errors import BundleError
from ood_audit.preprocess import Preprocess, upgrade_stored

SCHEMA_VERSION = 2


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, protected_namespaces=())


class ModelPart(_Part):
    """The model's description (SPEC §1): the one field list of ``model.json``, of this part and of
    :class:`~ood_audit.models.ModelSpec` (this description, checked, that builds the model)."""

    arch: str
    num_classes: int
    small_input: bool = False
    image_size: int = 224
    mean: list[float]
    std: list[float]
    class_names: list[str] | None = None

    def spec(self) -> Any:
        """The :class:`~ood_audit.models.ModelSpec` (imports torch)."""
        from ood_audit.models import ModelSpec

        return ModelSpec(**self.model_dump())


class PrecisionPart(_Part):
    """The precision policy every forward pass of this bundle's model runs under
    (:mod:`ood_audit.models.precision`); scores themselves are always fp32 or wider."""

    activations: Literal["float32", "bfloat16"] = "float32"
    scores: Literal["float32"] = "float32"


# above this fraction of a probe's images above the ID median FN, a block is inverted for that probe
INVERSION_LEVEL = 0.6


class ProbeBlockEvidence(_Part):
    """How one candidate block's FeatureNorm separates ID from each pseudo-OOD probe
    (:func:`ood_audit.calibration.evidence.probe_evidence`)."""

    normratio: float | None = None
    auroc: dict[str, float]
    auroc_two_sided: dict[str, float]
    above_id_median: dict[str, float]
    min_auroc: float
    min_auroc_two_sided: float
    max_above_id_median: float


class ProbeEvidence(_Part):
    """The probe evidence of block selection: ``images`` ID images and their probes, per block in candidate
    order; a block is inverted for a probe whose ``above_id_median`` exceeds ``inversion_level``."""

    probes: list[str]
    images: int
    per_block: dict[str, ProbeBlockEvidence]
    inversion_level: float

    def inverted(self, block: str) -> list[str]:
        """Probes whose images mostly have *higher* FN than the ID median at ``block`` (one-sided FN inverted)."""
        e = self.per_block.get(block)
        return [] if e is None else [p for p in self.probes if e.above_id_median[p] > self.inversion_level]


class OutlierBlockEvidence(_Part):
    """FeatureNorm's (and featurenorm2's) FPR95 and AUROC at one block, known outliers against held-out ID."""

    fpr95: float
    auroc: float
    fpr95_two_sided: float
    auroc_two_sided: float


class OutlierEvidence(_Part):
    """The known-outlier evidence (:func:`ood_audit.calibration.evidence.outlier_evidence`): ``outliers``
    images from ``source`` (``decode_failures`` more did not decode) against ``id_images`` held-out ID."""

    outliers: int
    id_images: int
    per_block: dict[str, OutlierBlockEvidence]
    source: str | None = None
    decode_failures: int = 0


class SelectionPart(_Part):
    selector: str = "normratio"
    seed: int = 0
    grid: int = 3
    images: int = 0
    candidates: list[str] = Field(default_factory=list)
    ratios: dict[str, float]
    normratio_choice: str | None = None
    choices: dict[str, str] = Field(default_factory=dict)
    selected: str
    forced: bool = False
    inverted_probes: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    evidence: ProbeEvidence | None = None
    outliers: OutlierEvidence | None = None
    # Whether the family's block outputs are post-ReLU (SPEC §16). False (ConvNeXt, EfficientNet, ...): FeatureNorm
    # applies its ReLU to residual streams that can be negative, so its evidence matters more. None: not recorded.
    blocks_post_relu: bool | None = None


class FeatureNorm2Part(_Part):
    """What :class:`~ood_audit.scores.detectors.FeatureNorm2` learns (its ``state()``): center and scale of
    held-out ID log FN at ``block`` (SPEC §10)."""

    block: str
    center: float
    scale: float
    heldout_images: int = 0
    formula: str = ""


class BankIndex(_Part):
    """How a bank is searched: exactly, over every row (SPEC §6, §7)."""

    type: Literal["flat"] = "flat"
    exact: bool = True


class BankPart(_Part):
    """What a bank detector (:class:`~ood_audit.scores.detectors.CSD`, ``KNN``) learns (its ``state()``): the
    bank's shape and storage; the bank itself is the tensor ``bank`` of ``file``."""

    k: int
    bank_size: int
    dim: int
    dtype: Literal["float16", "float32"] = "float16"
    index: BankIndex = BankIndex()
    file: str
    views_per_image: int | None = None    # csd: 6
    sources: str | None = None            # knn: the bank rows' URIs and thumbnails


class MahalanobisPart(_Part):
    """What :class:`~ood_audit.scores.detectors.MahalanobisPP` learns (its ``state()``, SPEC §15): the class means
    and the shrunk shared covariance's inverse, float64 tensors ``means`` and ``precision`` of ``file``."""

    file: str
    classes: int
    dim: int
    bank_images: int
    shrinkage: float          # the Ledoit–Wolf intensity δ: ε = δ · (tr(Σ)/D) / (1 − δ)
    epsilon: float            # the ε added to Σ's diagonal
    formula: str = ""


class ScalePart(_Part):
    """SCALE's one setting (SPEC §15): the percentile ``p`` each image's activations are cut at, and where
    it comes from."""

    percentile: float
    source: str = ""


class ThresholdsPart(_Part):
    target_id_flag_rate: float
    heldout_images: int
    per_score: dict[str, float]
    flag_on: list[str]
    flag: dict[str, float]
    flag_alpha: float = 0.0
    flag_on_reason: str | None = None     # why flag_on differs from what was asked, if it does


MEASURED_ON_WORKING_COPY = "working copies of the held-out ID images (whole frame, longer side <= working_size)"
MEASURED_ON_MODEL_INPUT = "decoded held-out ID images at the bundle's preprocess size"  # bundles before the copy


class QualityPart(_Part):
    """The SPEC §14 thresholds set at calibration: ``blurry`` = the ``blurry_percentile`` of the held-out ID
    images' Laplacian variances (:func:`ood_audit.io.quality.blurry_threshold`), measured on their working
    copies (the whole decoded frame reduced to ``working_size``), as the scan measures every object; and
    ``grayscale_share``, the share of those images that are grey (:func:`ood_audit.io.quality.grayscale_share`):
    ``grayscale`` is reported only when it is below one half. None in bundles calibrated before it was recorded:
    grayscale is then not reported."""

    blurry: float
    blurry_percentile: float = 1.0
    heldout_images: int
    working_size: int = 256
    measured_on: str = MEASURED_ON_WORKING_COPY
    grayscale_share: float | None = Field(None, ge=0, le=1)

    @property
    def comparable(self) -> bool:
        """Whether ``blurry`` was measured the way the scan measures now. Bundles calibrated before the
        working copy measured the model's input (a crop, at the model's size): another scale."""
        return self.measured_on == MEASURED_ON_WORKING_COPY

    def config(self) -> Any:
        """The scan's :class:`~ood_audit.io.quality.QualityConfig`: SPEC §14 defaults with this ``blurry``
        (none for a bundle whose threshold is not :attr:`comparable`: blur is then not checked) and this
        ``grayscale_share`` (none when not recorded: grayscale is then not reported)."""
        from ood_audit.io.quality import QualityConfig

        return QualityConfig(working_size=self.working_size, blurry=self.blurry if self.comparable else None,
                             grayscale_id_share=self.grayscale_share)


NEARDUP_FORMULA = ("near-duplicate iff ||z/|z| - NN_1(z/|z|)||_2 < tau; tau = order statistic floor(rate*n)+1 "
                   "of held-out NN_1")


class NearDupPart(_Part):
    """What the bundle records for the near-duplicate check (:mod:`ood_audit.flagging.neardup`)."""

    threshold: float
    rate: float = 0.01
    heldout_images: int
    formula: str = NEARDUP_FORMULA


class ClassThresholds(_Part):
    images: int
    per_score: dict[str, float]
    flag: dict[str, float]
    flag_alpha: float


class PerClassThresholds(_Part):
    """Per predicted class thresholds (:mod:`ood_audit.flagging.perclass`): the classes with their own
    and, in ``fallback`` (class -> held-out images), those under ``min_images`` that use the global ones."""

    target_id_flag_rate: float
    min_images: int
    flag_on: list[str]
    classes: dict[int, ClassThresholds]
    fallback: dict[int, int]


class SplitPart(_Part):
    method: str = ""
    heldout_fraction: float
    seed: int = 0
    bank_images: int
    heldout_images: int
    heldout_unseen: bool | None = None   # True: the held-out images are the model's validation split (never
                                         # trained on); False: they may include training images; None: older
    heldout_note: str = ""               # why, in words `bundle show` prints


class DataPart(_Part):
    source: str
    listed_images: int
    skipped_non_images: int = 0
    decode_failures: int = 0


class TrainingPart(_Part):
    val_accuracy: float | None = None
    val_loss: float | None = None
    chance_accuracy: float | None = None
    epochs: int | None = None
    mode: str | None = None
    run_name: str | None = None
    warning: str | None = None
    val_images: int | None = None
    val_fraction: float | None = None
    data: str | None = None               # the --data the model was trained on (its validation split's root)


class BundleMeta(_Part):
    schema_version: int = SCHEMA_VERSION
    model: ModelPart
    preprocess: Preprocess  # the one input transform (ood_audit.preprocess); older files: migrate()
    precision: PrecisionPart = PrecisionPart()
    selection: SelectionPart
    featurenorm2: FeatureNorm2Part | None = None
    csd: BankPart | None = None
    knn: BankPart | None = None
    mahalanobis: MahalanobisPart | None = None   # mahalanobis++ (labelled bundles only)
    scale: ScalePart | None = None
    thresholds: ThresholdsPart
    heldout_quantiles: dict[str, list[float]]
    heldout_stats: dict[str, dict[str, float]] = Field(default_factory=dict)
    split: SplitPart | None = None
    data: DataPart | None = None
    training: TrainingPart | None = None
    quality: QualityPart | None = None
    near_duplicates: NearDupPart | None = None
    per_class: PerClassThresholds | None = None
    labelled: bool = True                  # False: calibrated without labels (SPEC §16), no logit scores
    weights: WeightsProvenance | None = None

    @property
    def block(self) -> str:
        """The selected block every block-reading detector uses."""
        return self.selection.selected

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def migrate(meta: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 ``meta`` in schema-2 form (see the module docstring); a ``preprocess`` written before one of
    its fields in the form this version reads (:func:`ood_audit.preprocess.upgrade_stored`)."""
    if isinstance(meta.get("preprocess"), dict):
        meta = {**meta, "preprocess": upgrade_stored(meta["preprocess"], meta.get("model"))}
    if "schema_version" in meta:
        return meta
    out = {**meta, "schema_version": SCHEMA_VERSION, "precision": {"activations": "float32", "scores": "float32"}}
    th = dict(meta.get("thresholds") or {})
    if "target_fpr" in th:
        th["target_id_flag_rate"] = th.pop("target_fpr")
    out["thresholds"] = th
    return out


def parse_meta(meta: dict[str, Any], where: str) -> BundleMeta:
    """Validate ``meta`` (migrating schema 1) or raise a one-line :class:`BundleError` naming ``where``."""
    version = meta.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
        raise BundleError(f"bundle {where} has metadata schema version {version!r}; this ood-audit reads versions "
                          f"1 to {SCHEMA_VERSION}: upgrade ood-audit, or recalibrate with this version")
    try:
        return BundleMeta.model_validate(migrate(meta))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise BundleError(f"bundle {where} metadata field {loc or '(top)'}: {err['msg']}; it was not written by "
                          "ood-audit calibrate, or it was edited") from None


class RowTables(_Part):
    """What report rows need from a bundle (SPEC §11): thresholds, ``flag_on`` and held-out quantiles, and
    the optional near-duplicate τ and per-class thresholds."""

    per_score: dict[str, float] = Field(default_factory=dict)
    flag: dict[str, float] = Field(default_factory=dict)
    flag_on: list[str] = Field(default_factory=list)
    quantiles: dict[str, list[float]] = Field(default_factory=dict)
    near_duplicates: NearDupPart | None = None
    per_class: PerClassThresholds | None = None

    @classmethod
    def of(cls, meta: "BundleMeta | dict[str, Any]") -> "RowTables":
        """From a bundle's typed metadata, or from a partial ``meta``-shaped mapping (bundle-less callers,
        tests), parsed as :class:`_RowParts`; missing parts are empty."""
        parts = meta if isinstance(meta, BundleMeta) else _RowParts.model_validate(meta)
        th = parts.thresholds
        return cls(per_score=th.per_score, flag=th.flag, flag_on=th.flag_on, quantiles=parts.heldout_quantiles,
                   near_duplicates=parts.near_duplicates, per_class=parts.per_class)


class _RowThresholds(_Part):
    per_score: dict[str, float] = Field(default_factory=dict)
    flag: dict[str, float] = Field(default_factory=dict)
    flag_on: list[str] = Field(default_factory=list)


class _RowParts(_Part):
    """The parts of a partial ``meta``-shaped mapping that rows read (:meth:`RowTables.of`), any missing."""

    thresholds: _RowThresholds = _RowThresholds()
    heldout_quantiles: dict[str, list[float]] = Field(default_factory=dict)
    near_duplicates: NearDupPart | None = None
    per_class: PerClassThresholds | None = None
