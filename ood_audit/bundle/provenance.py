"""Where a bundle's weights came from (SPEC §16): the ``weights`` part of the bundle's metadata.

Calibration reads it from the JSON sidecar beside the weights (``<stem>.json``, else ``model.json``) that
``ood-audit weights import`` and ``ood-audit train`` write: its ``provenance`` record (how the weights were
obtained: imported from a source file, or trained by a run from an init, with the recipe) and its top-level
``sha256`` of the weights file. A record is trusted only when that ``sha256`` is the one of the weights
being calibrated: a sidecar left beside other weights describes something else. Without a trusted record
the weights' provenance is ``unknown``; their sha256 is always computed here, from the bytes.

This module needs neither numpy nor torch, so reading a bundle stays cheap.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError


class WeightsProvenance(BaseModel):
    """How the bundle's weights were obtained. ``sha256`` is of the weights file calibrated (computed);
    the rest comes from the sidecar's ``provenance`` record (``record``: where it was read), when trusted."""

    model_config = ConfigDict(extra="ignore", frozen=True, protected_namespaces=())

    sha256: str
    how: Literal["imported", "trained", "unknown"] = "unknown"
    source: str | None = None            # imported: the file it was imported from
    source_sha256: str | None = None
    run: str | None = None               # trained: the training run's name
    init: str | None = None              # trained: the init weights it started from (None: from scratch)
    init_sha256: str | None = None
    recipe: dict[str, Any] | None = None
    record: str | None = None            # the sidecar it was read from
    note: str | None = None              # why it is unknown, when a sidecar exists but was not used


def read_weights_provenance(uri: str, data: bytes, s3: Any = None) -> WeightsProvenance:
    """The provenance of the weights ``data`` read from ``uri`` (see the module docstring)."""
    from ood_audit.io.fs import exists, read_bytes
    from ood_audit.io.uri import join_uri, parent_uri

    digest = hashlib.sha256(data).hexdigest()
    stem = uri[: -len(".safetensors")] if uri.endswith(".safetensors") else uri
    notes = []
    for cand in dict.fromkeys((stem + ".json", join_uri(parent_uri(uri), "model.json"))):
        if not exists(cand, s3=s3):
            continue
        try:
            record = json.loads(read_bytes(cand, s3=s3))
        except ValueError:
            notes.append(f"{cand} is not JSON")
            continue
        if not isinstance(record, dict):
            continue
        if record.get("sha256") != digest:
            if "provenance" in record or "run_name" in record:
                notes.append(f"{cand} describes other weights (sha256 {str(record.get('sha256'))[:12]}...)")
            continue
        found = _from_record(record, digest, cand)
        if found is not None:
            return found
    return WeightsProvenance(sha256=digest, note="; ".join(notes) or None)


def _from_record(record: dict[str, Any], digest: str, where: str) -> WeightsProvenance | None:
    """The sidecar's ``provenance`` record; for a training record written before it, the run's name, mode and
    epochs (what such a record holds)."""
    prov = record.get("provenance")
    if isinstance(prov, dict):
        try:
            return WeightsProvenance.model_validate({**prov, "sha256": digest, "record": where})
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            return WeightsProvenance(sha256=digest, note=f"{where} field provenance.{loc}: {err['msg']}")
    if record.get("run_name"):
        recipe = {k: record[k] for k in ("mode", "epochs") if record.get(k) is not None}
        return WeightsProvenance(sha256=digest, how="trained", run=str(record["run_name"]), recipe=recipe or None,
                                 record=where)
    return None


def provenance_lines(p: WeightsProvenance | None) -> list[str]:
    """``bundle show``'s lines for the ``weights`` part; a bundle written before the part existed says so."""
    if p is None:
        return ["  weights: provenance not recorded (bundle calibrated before provenance was recorded)"]
    if p.how == "imported":
        src = f" (sha256 {p.source_sha256})" if p.source_sha256 else ""
        head = f"imported from {p.source or 'an unrecorded file'}{src}"
    elif p.how == "trained":
        init = f" from init {p.init}" + (f" (sha256 {p.init_sha256})" if p.init_sha256 else "") if p.init \
            else " from scratch"
        head = f"trained by run {p.run or '(unnamed)'}{init}"
    else:
        head = "provenance unknown (no sidecar record describes these weights)"
    lines = [f"  weights: {head}", f"    sha256 {p.sha256}"]
    if p.recipe:
        lines.append("    recipe: " + ", ".join(f"{k}={v}" for k, v in p.recipe.items()))
    if p.record:
        lines.append(f"    recorded in {p.record}")
    if p.note:
        lines.append(f"    note: {p.note}")
    return lines
