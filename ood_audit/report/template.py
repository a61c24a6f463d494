"""The report page's Jinja2 template, kept in a module so that it ships inside the package like code.

The page is one self-contained file: CSS inline, images as ``data:`` URIs, no script, no web fonts, no
external reference of any kind, so it opens offline and can be mailed or attached to a ticket. The grid's
data-quality filter is CSS alone, so it keeps that property and works where scripts are blocked (mail
clients, strict content policies): hidden radio inputs precede the filter bar and the grid, and for each
filter one rule hides the cards that lack its class (``#qf-dark:checked ~ .grid .card:not(.q-dark)``). The
classes come from :data:`ood_audit.io.quality.ISSUES` only (:func:`~ood_audit.report.findings.issue_class`),
never from data. Every value
taken from data (keys, error strings, prefixes) goes through Jinja2's autoescape. One value is marked safe:
``d.selection_html``, the block-selection evidence, because
:func:`~ood_audit.calibration.evidence_view.evidence_html` builds it and escapes every string it takes from
the bundle itself (its test puts markup in those strings and finds it only as text).
"""

TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>OOD audit: run {{ d.run.run_id }}</title>
<style>
:root { --ink:#212529; --muted:#6c757d; --line:#dee2e6; --flag:#c92a2a; --ok:#2b8a3e; --bg:#f8f9fa; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--ink); margin: 0; background: #fff; line-height: 1.4; font-size: 14px; }
header { background: var(--bg); border-bottom: 1px solid var(--line); padding: 18px 28px; }
main { padding: 0 28px 40px; max-width: 1500px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 4px; }
.lede { color: var(--muted); margin: 0 0 12px; max-width: 70em; }
.mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; word-break: break-all; }
.facts { display: flex; flex-wrap: wrap; gap: 10px; margin-top: 12px; }
.fact { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; min-width: 150px; }
.fact b { display: block; font-size: 18px; } .fact span { color: var(--muted); font-size: 12px; }
.warn { background: #fff4e6; border: 1px solid #ffc078; border-radius: 6px; padding: 8px 12px; margin: 12px 0; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: var(--bg); font-weight: 600; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.hists { display: flex; flex-wrap: wrap; gap: 12px; }
.hists figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 6px; }
.hists figcaption { color: var(--muted); font-size: 12px; max-width: 420px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(380px, 1fr)); gap: 12px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px; margin: 0; }
.card.flagged { border-color: var(--flag); box-shadow: inset 3px 0 0 var(--flag); }
.card-top { display: flex; gap: 10px; }
.thumb { position: relative; flex: none; background: #eee; outline: 1px solid var(--line); }
.thumb img { display: block; width: 100%; height: 100%; image-rendering: pixelated; }
.csd-view { position: absolute; border: 2px solid #f59f00; box-shadow: 0 0 0 1px rgba(0,0,0,.5); pointer-events: none; }
.csd-view span { position: absolute; left: 0; top: 0; background: #f59f00; color: #000; font-size: 10px;
                 padding: 0 3px; line-height: 14px; }
.badge { display: inline-block; border-radius: 10px; padding: 0 8px; font-size: 12px; color: #fff; background: var(--muted); }
.badge.flag { background: var(--flag); } .badge.ok { background: var(--ok); }
.scores td { padding: 1px 6px; font-size: 12px; } .scores tr.flagging td:first-child { font-weight: 600; }
.note { color: var(--flag); font-size: 12px; }
.reasons { margin: 4px 0 0; padding-left: 18px; font-size: 12px; }
.also { color: var(--muted); font-size: 12px; margin-top: 2px; }
.nbrs { display: flex; gap: 8px; margin-top: 8px; }
.nbr { width: 88px; font-size: 11px; color: var(--muted); }
.nbr img { width: 48px; height: 48px; object-fit: contain; image-rendering: pixelated; display: block; background: #eee; }
.nbr .mono { font-size: 10px; display: block; max-height: 3.2em; overflow: hidden; }
tr.changed td { background: #fff5f5; } .verdict-changed { color: var(--flag); font-weight: 600; }
.block-selection svg { display: block; margin: 8px 0; } .block-selection tr.selected td { font-weight: 600; }
.block-selection .warning { color: var(--flag); } .block-selection .legend { color: var(--muted); font-size: 12px; max-width: 70em; }
.quality { font-size: 12px; margin-top: 4px; } .quality .badge { background: #e8590c; margin-right: 3px; }
.qf { position: absolute; opacity: 0; width: 1px; height: 1px; margin: 0; }
.qfilter { margin: 8px 0 10px; font-size: 12px; color: var(--muted); }
.qfilter label { display: inline-block; border: 1px solid var(--line); border-radius: 12px; padding: 1px 10px;
                 margin: 2px 4px 2px 0; cursor: pointer; color: var(--ink); background: #fff; }
{% for f in quality_filters %}#qf-{{ f }}:checked ~ .qfilter label[for="qf-{{ f }}"] { background: var(--ink); color: #fff; }
#qf-{{ f }}:focus-visible ~ .qfilter label[for="qf-{{ f }}"] { outline: 2px solid #1c7ed6; }
{% if f != "all" %}#qf-{{ f }}:checked ~ .grid .card:not(.q-{{ f }}) { display: none; }
{% endif %}{% endfor %}
footer { color: var(--muted); font-size: 12px; padding: 12px 28px; border-top: 1px solid var(--line); }
</style>
</head>
<body>
<header>
<h1>OOD audit: run <span class="mono" style="font-size:inherit">{{ d.run.run_id }}</span></h1>
<p class="lede">Scan of {{ d.objects | thousands }} objects on {{ d.run.run_date }} from
{% for i in d.inputs %}<span class="mono">{{ i }}</span>{% if not loop.last %}, {% endif %}{% else %}a manifest{% endfor %},
written to <span class="mono">{{ d.run.output }}</span>.</p>
<div class="facts">
  <div class="fact"><b>{{ d.flagged | thousands }}</b><span>flagged ({{ d.flag_rate | pct }} of scored)</span></div>
  {% for status, n in d.counts.items() if n or status == "ok" %}
  <div class="fact"><b>{{ n | thousands }}</b><span>{{ status }}: {{ status_words.get(status, status) }}</span></div>
  {% endfor %}
  <div class="fact"><b>{{ s.throughput.objects_per_s | num(1) }}/s</b><span>objects per second
    (steady {{ s.throughput.steady_objects_per_s | num(1) }}/s, first score after {{ s.throughput.startup_s | num(1) }} s)</span></div>
  <div class="fact"><b>{{ s.timings_s.scan_wall | num(1) }} s</b><span>scan wall time (listing {{ s.timings_s.listing | num(1) }} s;
    busy: read {{ s.timings_s.stage_busy.read | num(1) }} s, score {{ s.timings_s.stage_busy.score | num(1) }} s, write {{ s.timings_s.stage_busy.write | num(1) }} s)</span></div>
</div>
<p class="lede" style="margin-top:12px">Bundle <span class="mono">{{ d.bundle_id }}</span>
{% if d.bundle_uri %}(<span class="mono">{{ d.bundle_uri }}</span>){% endif %}.
{% if d.training and d.training.val_accuracy is not none %}Model validation accuracy
<b>{{ d.training.val_accuracy | pct }}</b> on {{ d.training.val_images }} held-out images{% if d.training.chance_accuracy is not none %}
(chance {{ d.training.chance_accuracy | pct }}){% endif %}.{% else %}Model validation accuracy: not recorded in the bundle.{% endif %}
{% if d.training and d.training.warning %}<span class="note">{{ d.training.warning }}</span>{% endif %}</p>
{% if not d.labelled %}<p class="lede" id="unlabelled">No class was predicted: the bundle was calibrated on unlabelled
ID images, so only the label-free scores (FeatureNorm, CSD, kNN) were computed, not the classifier's logit scores.</p>{% endif %}
{% for w in d.warnings %}<div class="warn">{{ w }}</div>{% endfor %}
{% if d.sent %}<p class="lede" id="sent">Sent to labelers under this run:
{% for e in d.sent %}<b>{{ e.rows | thousands }}</b> to {{ e.sink }} <span class="mono">{{ e.destination }}</span> ({{ e.queue }}),
<b>{{ e.from_earlier | thousands }}</b> of them from earlier nights{% if not loop.last %}; {% endif %}{% endfor %}.</p>{% endif %}
</header>
<main>
<h2>How to read this report</h2>
<p class="lede">Every score is higher for images that look like the model's training data (in-distribution, ID).
A <b>percentile</b> is the share of held-out ID images that scored lower: a percentile of 2 means only 2% of
ID images looked this unusual on that score. An object is <b>flagged</b> when any of
{% for s in d.flag_on %}<b>{{ s }}</b>{% if not loop.last %}, {% endif %}{% endfor %} falls below its flag threshold,
{% if d.id_flag_rate is not none %}set at calibration for a <b>target ID flag rate</b> of {{ d.id_flag_rate | pct }}: about that share of
ID images would be flagged.{% else %}set at calibration.{% endif %}</p>

<h2 id="histograms">Scores: scanned objects against held-out ID</h2>
<p class="lede">Orange bars are this run's scores, the blue outline the held-out ID images the thresholds were set on.
The dashed line is each score's own threshold (objects left of it list the score among their reasons); on the
flagging scores the solid line is the flag threshold, left of which objects are flagged.</p>
<div class="hists">
{% for h in d.histograms %}
<figure><img src="{{ h.png }}" alt="histogram of {{ h.score }}" width="420" height="260">
<figcaption>{{ h.score }}{% if h.flagging %} (a flagging score){% endif %}: low means {{ words(h.score) }}.</figcaption></figure>
{% else %}<p>No scored objects.</p>{% endfor %}
</div>

<h2 id="quality">Data-quality findings</h2>
{% if not d.quality.present %}
<p class="lede">This run's report was written before data-quality findings existed (it has no
<span class="mono">quality_issues</span> column), so there is nothing to show here; a scan with this version records them.</p>
{% else %}
<p class="lede">Checks on every decoded image for problems a person would want to know about before trusting a
score or a label. They are findings only: they never flag an object and never change its scores.
{{ d.quality.with_issue | thousands }} of {{ d.quality.decoded | thousands }} decoded objects
({{ d.quality.share_with_issue | pct }}) have at least one; an object can have several. Shares are of decoded
objects (objects that could not be read or decoded were not checked).</p>
{% if d.quality.note %}<div class="warn">{{ d.quality.note }}</div>{% endif %}
<table id="quality-table"><tr><th>finding</th><th class="num">objects</th><th class="num">share of decoded</th>
<th>what it means</th></tr>
{% for q in d.quality.rows %}<tr data-issue="{{ q.issue }}"><td class="mono" style="word-break:normal;white-space:nowrap">{{ q.issue }}</td>
<td class="num">{{ q.count | thousands }}</td><td class="num">{{ q.share | pct }}</td><td>{{ q.words }}</td></tr>{% endfor %}
</table>
{% endif %}

<h2 id="anomalous">The {{ d.grid | length }} most anomalous objects</h2>
<p class="lede">Ranked by anomaly, 1 − (lowest flagging percentile)/100. The orange box is the part of the image whose
CSD view decided its CSD score (the view least like any training image); below each are its three nearest
training images in the kNN feature space, with their distances.</p>
<div class="quality-scope">
{% if d.quality.present and d.grid %}
{% set qc = d.grid_quality_counts %}
{% for f in quality_filters %}<input type="radio" name="quality-filter" id="qf-{{ f }}" class="qf"{% if f == "all" %} checked{% endif %}>
{% endfor %}
<div class="qfilter" role="radiogroup" aria-label="show objects by data-quality finding">Show:
{% for f in quality_filters %}<label for="qf-{{ f }}">{{ filter_words.get(f, f) }} ({{ d.grid | length if f == "all" else qc.get(f, 0) }})</label>
{% endfor %}</div>
{% endif %}
<div class="grid">
{% for it in d.grid %}
<figure class="card{% if it.flagged %} flagged{% endif %}{% if it.quality_classes %} {{ it.quality_classes }}{% endif %}" data-uri="{{ it.uri }}"{% if it.quality is not none %} data-quality="{{ it.quality | join(' ') }}"{% endif %}>
 <div class="card-top">
  <div class="thumb" style="width:{{ it.thumb.width }}px;height:{{ it.thumb.height }}px">
   <img src="{{ it.thumb.src }}" width="{{ it.thumb.width }}" height="{{ it.thumb.height }}" alt="thumbnail of {{ it.uri }}">
   {% if it.box %}<div class="csd-view" data-view="{{ it.box.view }}" title="CSD deciding view: {{ it.box.words }}"
     style="left:{{ it.box.left }}%;top:{{ it.box.top }}%;width:{{ it.box.width }}%;height:{{ it.box.height }}%"><span>{{ it.box.view }}</span></div>{% endif %}
  </div>
  <div>
   <div>#{{ it.rank }} {% if it.flagged %}<span class="badge flag">flagged</span>{% else %}<span class="badge">not flagged</span>{% endif %}
     anomaly {{ it.anomaly | num(3) }}</div>
   {% if it.thumb.note %}<div class="note">{{ it.thumb.note }}</div>{% endif %}
   <table class="scores"><tr><th>score</th><th class="num">value</th><th class="num">pct</th></tr>
   {% for c in it.scores %}<tr{% if c.flagging %} class="flagging"{% endif %}><td>{{ c.score }}</td>
     <td class="num">{{ c.value | num(3) }}</td><td class="num">{{ c.pct | num(1) }}</td></tr>{% endfor %}
   </table>
   {% if it.pred_class is not none %}<div style="font-size:12px">predicted class {{ it.pred_class }}{% if it.box %}; CSD view: {{ it.box.words }}{% endif %}</div>{% endif %}
   {% if d.quality.present %}<div class="quality">data quality: {% if it.quality is none %}not checked{% elif it.quality %}{% for q in it.quality %}<span class="badge">{{ q }}</span>{% endfor %}{% else %}no finding{% endif %}</div>{% endif %}
  </div>
 </div>
 <div class="mono" style="margin-top:6px">{{ it.uri }}</div>
 {% if it.reasons %}<ul class="reasons">{% for r in it.reasons %}<li>{{ r }}</li>{% endfor %}</ul>{% endif %}
 {% if it.also_low %}<div class="also">also below their own thresholds: {{ it.also_low | join(", ") }}</div>{% endif %}
 {% if it.duplicate_of %}<div class="also dup">exact copy (same bytes) of <span class="mono">{{ it.duplicate_of }}</span></div>{% endif %}
 {% if it.near_duplicate_of_id %}<div class="also dup">near-duplicate of calibration image <span class="mono">{{ it.near_duplicate_of_id }}</span>: closer to it than the bundle's near-duplicate distance</div>{% endif %}
 {% if it.neighbours %}<div class="nbrs">{% for n in it.neighbours %}<div class="nbr">
   {% if n.thumb %}<img src="{{ n.thumb }}" alt="nearest ID image {{ loop.index }}">{% endif %}
   d = {{ n.distance | num(3) }}<span class="mono" title="{{ n.uri }}">{{ n.uri }}</span></div>{% endfor %}</div>{% endif %}
</figure>
{% else %}<p>No scored objects.</p>{% endfor %}
</div>
</div>

<h2 id="prefixes">By prefix</h2>
<p class="lede">Objects grouped by the first {{ d.options.prefix_depth }} path
{{ "components" if d.options.prefix_depth > 1 else "component" }} under the scanned input; the flagged rate is over scored objects, errors are objects that could not be scored.</p>
<table><tr><th>prefix</th><th class="num">objects</th><th class="num">scored</th><th class="num">flagged</th>
<th class="num">flagged rate</th><th class="num">errors</th></tr>
{% for p in prefixes %}<tr><td class="mono">{{ d.display_prefix(p.prefix) }}</td><td class="num">{{ p.stats.objects | thousands }}</td>
<td class="num">{{ p.stats.scored | thousands }}</td><td class="num">{{ p.stats.flagged | thousands }}</td>
<td class="num">{{ p.rate | pct }}</td><td class="num">{{ p.stats.errors | thousands }}</td></tr>{% endfor %}
</table>
{% if prefixes_more %}<p>… and {{ prefixes_more | thousands }} more prefixes.</p>{% endif %}

<h2 id="drift">Drift since the previous run</h2>
{% if not d.drift.previous %}
<p class="lede">This is the first run on this output root, so there is nothing to compare with.</p>
{% else %}
<p class="lede">Flagged rate per prefix now against run <span class="mono">{{ d.drift.previous.run_id }}</span>
({{ d.drift.previous.run_date }}). A two-proportion z-test per prefix, with p-values adjusted for the number of
prefixes (Benjamini–Hochberg); a change is marked where the adjusted p is below 0.01, and no verdict is given where
either run scored fewer than 30 objects in the prefix.</p>
{% if not d.drift.same_bundle %}<div class="warn">The previous run used a different bundle
(<span class="mono">{{ d.drift.previous.bundle_id }}</span>), so its scores and thresholds are not comparable with
this run's: rates are shown without a test.</div>{% endif %}
{% if d.drift.note %}<div class="warn">{{ d.drift.note }}</div>{% endif %}
<table id="drift-table"><tr><th>prefix</th><th class="num">before</th><th class="num">now</th><th class="num">z</th>
<th class="num">p</th><th class="num">adjusted p</th><th>verdict</th></tr>
{% for r in drift_rows %}<tr class="{{ r.verdict | replace(' ', '-') }}" data-prefix="{{ d.display_prefix(r.prefix) }}">
<td class="mono">{{ d.display_prefix(r.prefix) }}</td>
<td class="num">{{ r.before.rate | pct }} <small>({{ r.before.flagged }}/{{ r.before.scored }})</small></td>
<td class="num">{{ r.now.rate | pct }} <small>({{ r.now.flagged }}/{{ r.now.scored }})</small></td>
<td class="num">{{ r.z | num(2) }}</td><td class="num">{{ r.p | pval }}</td><td class="num">{{ r.q | pval }}</td>
<td class="verdict-{{ r.verdict | replace(' ', '-') }}">{{ verdict_words[r.verdict] }}</td></tr>{% endfor %}
</table>
{% if drift_more %}<p>… and {{ drift_more | thousands }} more prefixes.</p>{% endif %}
{% endif %}

{% if d.selection_html %}
<h2 id="block-selection">Why this block</h2>
<p class="lede">FeatureNorm and the scores built on it read the model's features at one block, chosen at calibration
from the candidate blocks. For each block the bundle records NormRatio (mean ID-to-jigsaw feature-norm ratio, the
paper's rule) and, for each pseudo-OOD probe (ID training images transformed: jigsaw, pixel shuffle, crop-upscale,
blur, noise, mix), how well the block's feature norm tells ID images from that probe (AUROC). A block is
<b>inverted</b> for a probe when most of the probe's images have a higher norm than the ID median: there, low norm
would not mean out-of-distribution. The chosen block is in bold.</p>
{{ d.selection_html | safe }}
{% endif %}

<h2 id="failures">Objects that could not be scored</h2>
{% if d.failures_total %}
<p class="lede">{{ d.failures_total | thousands }} objects have a status other than ok; they carry no scores.</p>
<table><tr><th>object</th><th>status</th><th>error</th></tr>
{% for f in d.failures %}<tr><td class="mono">{{ f.uri }}</td><td>{{ f.status }}<br><small>{{ status_words.get(f.status, "") }}</small></td>
<td class="mono">{{ f.error }}</td></tr>{% endfor %}
</table>
{% if d.failures_total > d.failures | length %}<p>… and {{ (d.failures_total - d.failures | length) | thousands }} more
(read them all with <span class="mono">load_report(…, filter=pc.field("status") != "ok")</span>).</p>{% endif %}
{% elif d.objects == 0 %}<p class="lede">This run has no rows: it listed nothing new to scan.</p>
{% else %}<p class="lede">Every listed object was scored.</p>{% endif %}
</main>
<footer>ood-audit {{ version }} · report generated {{ d.generated_at }} · run created {{ d.run.started_at }}</footer>
</body>
</html>
"""
