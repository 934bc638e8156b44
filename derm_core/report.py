"""A self-contained HTML report of one triage case (images embedded, no external files).

The images are re-encoded from pixels only, so no EXIF/GPS metadata of the original
photo ends up in the report.
"""
from __future__ import annotations

import base64
import html
import io
import time

from PIL import Image

from .images import strip_metadata
from .taxonomy import Taxonomy
from .triage import Thresholds, TriageResult

DISCLAIMER = ("DermTriage is a research and teaching tool, not a medical device. Its output is not a diagnosis "
              "and must not replace the judgement of a qualified clinician.")


def _img_tag(img: Image.Image, alt: str, width: int = 320) -> str:
    buf = io.BytesIO()
    strip_metadata(img.convert("RGB")).save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" width="{width}" src="data:image/png;base64,{b64}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def case_report_html(crop: Image.Image, result: TriageResult, taxonomy: Taxonomy, thresholds: Thresholds,
                     model_name: str, model_version: str, figures: dict[str, Image.Image] | None = None,
                     clinical: dict | None = None, extra: dict | None = None) -> str:
    """Render the case: crop, differential, tier, explanation figures, model and thresholds."""
    e = html.escape
    tier = taxonomy.tiers[result.tier]
    rows = "".join(
        f"<tr><td>{e(taxonomy.display_names[c])}</td><td>{p:.1%}</td><td>{thresholds.classes[c]:.2f}</td>"
        f"<td>{'yes' if any(c == d for d, _ in result.differential) else ''}</td></tr>"
        for c, p in sorted(result.probs.items(), key=lambda kv: -kv[1]))
    tiers = "".join(f"<li>{e(t)}: {p:.1%} (threshold {thresholds.tiers.get(t, 0):.2f})</li>" if t in thresholds.tiers
                    else f"<li>{e(t)}: {p:.1%}</li>" for t, p in result.tier_probs.items())
    figs = "".join(_img_tag(img, name) for name, img in (figures or {}).items())
    clin = ", ".join(f"{k}: {v}" for k, v in (clinical or {}).items() if v not in (None, "")) or "none given"
    more = "".join(f"<li>{e(str(k))}: {e(str(v))}</li>" for k, v in (extra or {}).items())
    low = "<p><b>Low confidence:</b> no class reached its operating threshold; the most probable class is shown.</p>" \
        if result.low_confidence else ""
    notes = "".join(f"<li>{e(n)}</li>" for n in result.notes)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>DermTriage case report</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}
figure{{display:inline-block;margin:0 1em 1em 0}}.tier{{padding:.6em 1em;color:white;border-radius:6px;background:{tier.colour}}}
.disclaimer{{border:2px solid #c62828;padding:.6em 1em;background:#fff3f3}}</style></head><body>
<h1>DermTriage case report</h1>
<p class="disclaimer">{e(DISCLAIMER)}</p>
<p>Generated {time.strftime('%Y-%m-%d %H:%M')} · model {e(model_name)} (version {e(model_version)}) · thresholds: {e(thresholds.name)}</p>
<h2>Risk tier</h2><p class="tier"><b>{e(result.tier)}</b> — {e(result.action)}</p><ul>{tiers}</ul>
<h2>Differential diagnosis</h2>{low}
<table><tr><th>Class</th><th>Probability (calibrated)</th><th>Threshold</th><th>In differential</th></tr>{rows}</table>
<h2>Images and explanations</h2>{_img_tag(crop, "Lesion crop (model input)")}{figs}
<h2>Details</h2><ul><li>Clinical data: {e(clin)}</li>{notes}{more}</ul>
</body></html>"""
