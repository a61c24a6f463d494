"""Block-selection evidence for people: a text table (``bundle show``) and an HTML fragment with an inline SVG
(for the report). Both read only the bundle's typed ``selection`` part
(:class:`~ood_audit.bundle.schema.SelectionPart`, made by :func:`~.selection.selection_meta`).
"""
from __future__ import annotations

import html
from typing import Any

from ood_audit.bundle.schema import INVERSION_LEVEL, SelectionPart

_SHORT = {"jigsaw": "jigsaw", "pixel_shuffle": "pixshuf", "crop_upscale": "crop", "blur": "blur", "noise": "noise",
          "mix": "mix"}
LEGEND = ("AUROC = P(FN(ID) > FN(pseudo-OOD)), FeatureNorm's orientation; below 0.5 the probe has higher norms "
          "than ID. worst = lowest of these (robust ranks non-inverted blocks by it); 2-sided = lowest AUROC of "
          "featurenorm2. above-med = largest share of a probe's images above the ID median FN (inverted above {level:.0%}, "
          "marked !).")


def _short(p: str) -> str:
    return _SHORT.get(p, p[:7])


def _rows(sel: SelectionPart) -> list[dict[str, Any]]:
    """One row per candidate block with the numbers both views show."""
    ev, outl = sel.evidence, sel.outliers
    rows = []
    for b in sel.candidates or list(sel.ratios):
        e = ev.per_block.get(b) if ev is not None else None
        o = outl.per_block.get(b) if outl is not None else None
        rows.append({"block": b, "ratio": sel.ratios.get(b), "auroc": e.auroc if e else {},
                     "min_auroc": e.min_auroc if e else None, "min_two": e.min_auroc_two_sided if e else None,
                     "above": e.max_above_id_median if e else None,
                     "inverted": bool(e and ev and e.max_above_id_median > ev.inversion_level),
                     "fpr95": o.fpr95 if o else None, "fpr95_two": o.fpr95_two_sided if o else None,
                     "selected": b == sel.selected,
                     "choices": [k for k, v in sel.choices.items() if v == b]})
    return rows


def _f(v: Any, width: int, fmt: str = ".2f") -> str:
    return f"{v:>{width}{fmt}}" if isinstance(v, (int, float)) else f"{'-':>{width}}"


def evidence_lines(sel: SelectionPart) -> list[str]:
    """The evidence table with the chosen block marked, and a small text plot of the worst probe AUROC
    (robust's criterion), inverted blocks marked !."""
    ev, outl = sel.evidence, sel.outliers
    probes = ev.probes if ev is not None else []
    rows = _rows(sel)
    lines = []
    if ev is not None:
        lines.append(f"  evidence: {ev.images} ID images and their pseudo-OOD probes ({', '.join(probes)})")
    if outl is not None:
        lines.append(f"  known outliers: {outl.outliers} images ({outl.source or '?'}) against "
                     f"{outl.id_images} held-out ID images")
    hdr = f"  {'block':<14}{'R':>8}" + "".join(f"{_short(p):>8}" for p in probes)
    hdr += f"{'worst':>7}{'2-sided':>8}{'above-med':>10}"
    if outl is not None:
        hdr += f"{'FPR95':>7}{'FPR95-2':>8}"
    lines.append(hdr)
    for r in rows:
        line = f"  {r['block']:<14}{_f(r['ratio'], 8, '.4f')}" + "".join(_f(r["auroc"].get(p), 8) for p in probes)
        line += _f(r["min_auroc"], 7) + _f(r["min_two"], 8) + _f(r["above"], 9) + ("!" if r["inverted"] else " ")
        if outl is not None:
            line += _f(r["fpr95"], 7) + _f(r["fpr95_two"], 8)
        marks = (["<- selected"] if r["selected"] else []) + [f"{c} choice" for c in r["choices"]]
        lines.append(line + ("  " + ", ".join(marks) if marks else ""))
    if ev is not None:
        lines.append("  " + LEGEND.format(level=ev.inversion_level))
        vals = [r["min_auroc"] if isinstance(r["min_auroc"], (int, float)) else 0.0 for r in rows]
        lo = min(min(vals), 0.5) - 0.02
        hi = max(max(vals), 0.52, lo + 0.1)
        cell = lambda v: int(round(30 * (v - lo) / (hi - lo)))  # noqa: E731
        lines.append(f"  worst probe AUROC per block (robust ranks non-inverted blocks by it; axis {lo:.2f}..{hi:.2f}, "
                     "| marks 0.5 = chance, ! inverted):")
        for r, v in zip(rows, vals):
            n, half = cell(v), cell(0.5)
            bar = "#" * n + " " * (30 - n)
            bar = bar if n > half else bar[:half] + "|" + bar[half + 1:]
            lines.append(f"    {r['block']:<14}{bar} {v:.2f}{'!' if r['inverted'] else ' '}"
                         f"{' <- selected' if r['selected'] else ''}")
    return lines


def evidence_html(sel: SelectionPart) -> str:
    """An HTML fragment: an inline SVG bar chart (worst probe AUROC per block, inverted blocks in red, NormRatio as
    dots) and the evidence table.

    Every piece of text taken from the bundle (block, probe and selector names, choices, warnings) goes through
    ``html.escape`` (quotes included) and nothing else from it is written but numbers this function formats, so
    the fragment may be embedded in a page as it is.
    """
    def esc(value: Any) -> str:
        return html.escape(str(value))

    ev = sel.evidence
    probes = ev.probes if ev is not None else []
    rows = _rows(sel)
    w, bar_h, gap, left = 660, 18, 6, 130
    h = len(rows) * (bar_h + gap) + 40
    rmax = max([r["ratio"] for r in rows if isinstance(r["ratio"], (int, float))] or [1.0]) or 1.0
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
           f'aria-label="worst pseudo-OOD AUROC per block">']
    span = w - left - 60
    x_half = left + span * 0.5
    for i, r in enumerate(rows):
        y = 10 + i * (bar_h + gap)
        v = r["min_auroc"] if isinstance(r["min_auroc"], (int, float)) else 0.0
        color = "#c0392b" if r["inverted"] else ("#2c7fb8" if r["selected"] else "#9ecae1")
        svg.append(f'<text x="{left - 6}" y="{y + bar_h - 4}" text-anchor="end" font-size="12" '
                   f'font-weight="{"bold" if r["selected"] else "normal"}">{esc(r["block"])}</text>')
        svg.append(f'<rect x="{left}" y="{y}" width="{span * max(0.0, min(1.0, v)):.1f}" height="{bar_h}" '
                   f'fill="{color}"><title>{esc(r["block"])}: worst AUROC {v:.3f}</title></rect>')
        svg.append(f'<text x="{left + span * max(0.0, min(1.0, v)) + 4:.1f}" y="{y + bar_h - 4}" '
                   f'font-size="11">{v:.2f}</text>')
        if isinstance(r["ratio"], (int, float)):
            cx = left + span * max(0.0, r["ratio"] / rmax)
            svg.append(f'<circle cx="{cx:.1f}" cy="{y + bar_h / 2}" r="3" fill="#333">'
                       f'<title>NormRatio {r["ratio"]:.4f}</title></circle>')
    svg.append(f'<line x1="{x_half:.1f}" y1="5" x2="{x_half:.1f}" y2="{h - 25}" stroke="#555" '
               f'stroke-dasharray="4 3"/>')
    svg.append(f'<text x="{left}" y="{h - 8}" font-size="11">bars: worst probe AUROC (dashed: 0.5 = chance; red: '
               f'inverted); dots: NormRatio / max</text></svg>')
    head = "".join(f"<th>{esc(p)}</th>" for p in probes)
    body = []
    for r in rows:
        cells = "".join(f"<td>{_f(r['auroc'].get(p), 0).strip()}</td>" for p in probes)
        mark = esc(", ".join((["selected"] if r["selected"] else []) + [f"{c} choice" for c in r["choices"]]))
        cls = ' class="selected"' if r["selected"] else ""
        body.append(f'<tr{cls}><td>{esc(r["block"])}</td>'
                    f'<td>{_f(r["ratio"], 0, ".4f").strip()}</td>{cells}<td>{_f(r["min_auroc"], 0).strip()}</td>'
                    f'<td>{_f(r["min_two"], 0).strip()}</td><td>{_f(r["above"], 0).strip()}'
                    f'{"!" if r["inverted"] else ""}</td><td>{_f(r["fpr95"], 0).strip()}</td><td>{mark}</td></tr>')
    warn = "".join(f'<p class="warning">{esc(x)}</p>' for x in sel.warnings)
    return (f'<section class="block-selection"><h3>Block selection: {esc(sel.selector)} chose '
            f'{esc(sel.selected)}</h3>{warn}{"".join(svg)}'
            f'<table><thead><tr><th>block</th><th>NormRatio</th>{head}<th>worst</th><th>2-sided</th>'
            f'<th>above-med</th><th>outlier FPR95</th><th></th></tr></thead><tbody>{"".join(body)}</tbody></table>'
            f'<p class="legend">{esc(LEGEND.format(level=ev.inversion_level if ev is not None else INVERSION_LEVEL))}'
            '</p></section>')
