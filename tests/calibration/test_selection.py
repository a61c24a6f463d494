"""Block selectors and their evidence, on constructed cases (no model)."""
import numpy as np
import pytest

from ood_audit.bundle.schema import OutlierBlockEvidence, OutlierEvidence
from ood_audit.calibration.evidence import outlier_evidence, probe_evidence
from ood_audit.calibration.evidence_view import evidence_html, evidence_lines
from ood_audit.calibration.normratio import select_block
from ood_audit.calibration.selection import (
    choose_block,
    robust_choice,
    selection_meta,
    selection_warnings,
    validated_choice,
)
from ood_audit.errors import ConfigError

BLOCKS = ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
PROBES = ["jigsaw", "blur", "noise"]


def _case(seed=0, n=400):
    """FN of ID and of three probes at four blocks, built so that:

    - layer1.0 separates every probe modestly, in FeatureNorm's direction (probes lower than ID);
    - layer2.0 separates jigsaw and blur very well but noise is slightly *higher* than ID (inverted);
    - layer3.0 is far from ID for every probe, but noise is far *above* (inverted; a two-sided or
      symmetric criterion would love it);
    - layer4.0 (the last block) barely tells jigsaw from ID: it has the top NormRatio.
    """
    rng = np.random.default_rng(seed)
    fn_id = rng.normal(10.0, 1.0, (n, 4))
    shift = np.array([[-1.5, -1.5, -1.5, -0.05],   # jigsaw
                      [-1.5, -6.0, -8.0, -3.00],   # blur
                      [-1.5, +0.5, +9.0, -3.00]])  # noise
    fn_probe = fn_id[:, None, :] + shift[None] + rng.normal(0, 0.3, (n, 3, 4))
    ratios = {"layer1.0": 1.10, "layer2.0": 1.20, "layer3.0": 1.30, "layer4.0": 1.35}
    return fn_id, fn_probe, ratios


def test_normratio_is_the_papers_argmax():
    fn_id, fn_probe, ratios = _case()
    ev = probe_evidence(BLOCKS, fn_id, fn_probe, PROBES, ratios)
    assert choose_block("normratio", ratios, ev) == "layer4.0" == select_block(ratios)  # the last block can win
    assert choose_block("normratio", {"a": 2.0, "b": 2.0, "c": 1.0}) == "a"  # first on ties
    assert choose_block("normratio", {"a": 1.0, "b": 3.0, "c": 2.0}) == "b"


def test_evidence_shows_orientation_and_inversion():
    fn_id, fn_probe, ratios = _case()
    ev = probe_evidence(BLOCKS, fn_id, fn_probe, PROBES, ratios)
    per = ev.per_block
    assert ev.images == 400 and ev.probes == PROBES and per["layer3.0"].normratio == 1.30
    assert per["layer3.0"].auroc["noise"] < 0.01            # inverted: noise far above ID
    assert per["layer3.0"].auroc_two_sided["noise"] > 0.99   # the two-sided score still separates it
    assert per["layer3.0"].above_id_median["noise"] > 0.99
    assert ev.inverted("layer3.0") == ["noise"] and ev.inverted("layer2.0") == ["noise"]
    assert ev.inverted("layer1.0") == [] and ev.inverted("layer4.0") == []
    assert ev.inverted("not-a-candidate") == []
    assert 0.45 < per["layer4.0"].auroc["jigsaw"] < 0.55
    assert per["layer1.0"].min_auroc == min(per["layer1.0"].auroc.values())


def test_robust_never_picks_an_inverted_block():
    fn_id, fn_probe, ratios = _case()
    ev = probe_evidence(BLOCKS, fn_id, fn_probe, PROBES, ratios)
    # layer3.0 has the largest two-sided and symmetric separation, layer2.0 the best jigsaw/blur AUROC:
    # both are inverted for noise, so robust takes layer1.0; normratio takes the near-useless last block
    per = ev.per_block
    assert per["layer3.0"].min_auroc_two_sided > per["layer1.0"].min_auroc_two_sided
    choice = choose_block("robust", ratios, ev)
    assert choice == "layer1.0"
    assert not ev.inverted(choice)
    assert selection_warnings(choice, ev) == []
    for seed in range(5):  # and never an inverted block, whatever the noise draw
        a, b, r = _case(seed, n=60)
        e = probe_evidence(BLOCKS, a, b, PROBES, r)
        assert not e.inverted(robust_choice(e))


def test_robust_falls_back_to_two_sided_when_every_block_is_inverted_and_warns():
    fn_id, fn_probe, ratios = _case()
    fn_probe[:, 2, :] = fn_id + 5.0 + np.arange(4) * 0.0  # noise above ID at every block
    fn_probe[:, 2, 1] += 20.0                               # ... and most clearly at layer2.0
    ev = probe_evidence(BLOCKS, fn_id, fn_probe, PROBES, ratios)
    assert all(ev.inverted(b) == ["noise"] for b in BLOCKS)
    choice = robust_choice(ev)
    assert choice == max(BLOCKS, key=lambda b: ev.per_block[b].min_auroc_two_sided)
    warnings = selection_warnings(choice, ev)
    assert len(warnings) == 1 and "inverted" in warnings[0] and "noise" in warnings[0]


def test_validated_takes_the_lowest_outlier_fpr95():
    rng = np.random.default_rng(1)
    fn_id = rng.normal(10, 1, (200, 4))
    fn_out = np.column_stack([rng.normal(9, 1, 30), rng.normal(5, 1, 30), rng.normal(20, 1, 30),
                              rng.normal(10, 1, 30)])
    out = outlier_evidence(BLOCKS, fn_id, fn_out)
    assert out.outliers == 30 and out.id_images == 200
    per = out.per_block
    assert per["layer2.0"].fpr95 < 0.05 and per["layer3.0"].fpr95 == 1.0   # one-sided: high norms pass
    assert per["layer3.0"].fpr95_two_sided == 0.0                          # two-sided: caught
    assert validated_choice(out) == choose_block("validated", {b: 1.0 for b in BLOCKS}, None, out) == "layer2.0"
    tie = OutlierEvidence(outliers=5, id_images=20, per_block={
        "a": OutlierBlockEvidence(fpr95=0.2, auroc=0.8, fpr95_two_sided=0.0, auroc_two_sided=1.0),
        "b": OutlierBlockEvidence(fpr95=0.2, auroc=0.9, fpr95_two_sided=0.5, auroc_two_sided=0.5)})
    assert validated_choice(tie) == "b"
    assert any("only 5 known outliers" in w for w in selection_warnings("b", None, tie))


def test_selectors_need_their_evidence():
    with pytest.raises(ConfigError, match="--outliers"):
        choose_block("validated", {"a": 1.0})
    with pytest.raises(ConfigError, match="probe evidence"):
        choose_block("robust", {"a": 1.0})
    with pytest.raises(ConfigError, match="choose one of"):
        choose_block("best", {"a": 1.0})


def test_views_mark_the_choice_and_escape_names():
    fn_id, fn_probe, ratios = _case()
    blocks = ["layer1.0", "<script>alert(1)</script>", "layer3.0", "layer4.0"]
    ratios = dict(zip(blocks, ratios.values()))
    ev = probe_evidence(blocks, fn_id, fn_probe, ["jigsaw", "blur", "no<i>se"], ratios)
    out = outlier_evidence(blocks, fn_id[:50], fn_probe[:20, 1], source="s3://b/<img src=x>")
    sel = selection_meta(selector="normratio", selected="layer4.0", forced=False, ratios=ratios, images=400, seed=0,
                         grid=3, evidence=ev, outliers=out)
    assert sel.choices == {"normratio": "layer4.0", "robust": "layer1.0", "validated": sel.choices["validated"]}
    text = "\n".join(evidence_lines(sel))
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("layer4.0"))
    assert "<- selected" in line and "normratio choice" in line
    assert "robust choice" in next(ln for ln in text.splitlines() if ln.strip().startswith("layer1.0"))
    frag = evidence_html(sel)
    assert frag.startswith("<section") and "<svg" in frag and frag.endswith("</section>")
    assert "<script>" not in frag and "&lt;script&gt;" in frag and "no&lt;i&gt;se" in frag
    assert "<img" not in frag


@pytest.mark.parametrize("post_relu", [True, False, None])
def test_bundle_says_when_the_blocks_are_not_post_relu(post_relu):
    """SPEC §16: the family's blocks being post-ReLU or not is recorded, and `bundle show` warns when not."""
    from ood_audit.calibration.summary import _selection_lines

    sel = selection_meta(selector="normratio", selected="layer4.0", forced=False,
                         ratios={b: 1.0 + i for i, b in enumerate(BLOCKS)}, images=10, seed=0, grid=3,
                         evidence=None, outliers=None, post_relu=post_relu)
    assert sel.blocks_post_relu is post_relu
    warned = any("not post-ReLU" in line for line in _selection_lines(sel))
    assert warned == (post_relu is False)
