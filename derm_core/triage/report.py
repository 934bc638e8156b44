"""A self-contained HTML report of one triage case (images embedded, no external files).

The images are re-encoded from pixels only, so no EXIF/GPS metadata of the original
photo ends up in the report.
"""
from __future__ import annotations

import html
import time

from PIL import Image

from derm_core.data.clinical import NONE_GIVEN_NOTE
from derm_core.data.images import data_uri, strip_metadata
from derm_core.data.taxonomy import Taxonomy
from derm_core.triage.rules import Thresholds, TriageResult, explain_tier, tier_score_name

DISCLAIMER = ("DermTriage is a research and teaching tool, not a medical device. Its output is not a diagnosis "
              "and must not replace the judgement of a qualified clinician.")


NOT_TRIAGED_COLOUR = "#616161"
NO_DIFFERENTIAL = "No differential: the photo was not triaged."

CROP_TITLE = "Lesion crop (the model sees its centre)"   # cut to the input's shape: the maps grey the rest


def _img_tag(img: Image.Image, alt: str, width: int = 320) -> str:
    return (f'<figure><img alt="{html.escape(alt)}" width="{width}" src="{data_uri(img)}">'
            f'<figcaption>{html.escape(alt)}</figcaption></figure>')


def _plain(v):
    """A value as a person writes it: a whole-number float (an age of 80.0) without its ``.0``."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _content(crop: Image.Image, result: TriageResult, taxonomy: Taxonomy, thresholds: Thresholds, model_name: str,
             model_version: str, figures: dict[str, Image.Image] | None, clinical: dict | None,
             extra: dict | None) -> dict:
    """What a case report says, once, for the HTML and the PDF alike."""
    # each tier's own probability and, for a tier with a threshold, the score that threshold applies to
    names = [n for n in taxonomy.tier_names if n in result.tier_probs]
    tier_lines = [f"{t}: {result.tier_probs[t]:.1%}" + (
        f" · {tier_score_name(taxonomy, taxonomy.tier_names.index(t))} "
        f"{sum(result.tier_probs[u] for u in names[k:]):.1%} (threshold {thresholds.tiers[t]:.1%})"
        if t in thresholds.tiers else "") for k, t in enumerate(names)]
    rows = [(taxonomy.display_names[c], f"{p:.1%}", f"{thresholds.classes[c]:.1%}",     # both as the page shows them
             "yes" if any(c == d for d, _ in result.differential) else "")
            for c, p in sorted(result.probs.items(), key=lambda kv: -kv[1])]
    clin = ", ".join(f"{k}: {_plain(v)}" for k, v in (clinical or {}).items() if v not in (None, "")) or "none given"
    notes = [n for n in result.notes if n != NONE_GIVEN_NOTE]    # said once, by "Clinical data: none given"
    details = [f"Clinical data: {clin}", *notes, *(f"{k}: {v}" for k, v in (extra or {}).items())]
    if result.withheld:   # an out-of-scope photo: the report says why, and gives nothing clinical
        tier, action, colour, tier_lines, rows = "Not triaged: out of scope", result.withheld, NOT_TRIAGED_COLOUR, [], []
        reason = ""
    else:
        tier, action, colour = result.tier, result.what_to_do, taxonomy.tiers[result.tier].colour
        reason = result.tier_reason or explain_tier(result.probs, taxonomy, thresholds.tiers)
    return dict(
        generated=f"Generated {time.strftime('%Y-%m-%d %H:%M')} · model {model_name} (version {model_version}) · "
                  f"thresholds: {thresholds.name}",
        tier=tier, action=action, tier_colour=colour, warning=result.anyway_warning, tier_reason=reason,
        tier_lines=tier_lines,
        low=("Low confidence: no class reached its operating threshold; the most probable class is shown."
             if result.low_confidence else ""),
        header=("Class", "Probability (calibrated)", "Threshold", "In differential"), rows=rows,
        images=[(CROP_TITLE, crop), *(figures or {}).items()], details=details)


def case_report_html(crop: Image.Image, result: TriageResult, taxonomy: Taxonomy, thresholds: Thresholds,
                     model_name: str, model_version: str, figures: dict[str, Image.Image] | None = None,
                     clinical: dict | None = None, extra: dict | None = None) -> str:
    """Render the case: crop, differential, tier, explanation figures, model and thresholds."""
    e = html.escape
    c = _content(crop, result, taxonomy, thresholds, model_name, model_version, figures, clinical, extra)
    rows = "".join("<tr>" + "".join(f"<td>{e(v)}</td>" for v in row) + "</tr>" for row in c["rows"])
    head = "".join(f"<th>{e(h)}</th>" for h in c["header"])
    tiers = "".join(f"<li>{e(t)}</li>" for t in c["tier_lines"])
    figs = "".join(_img_tag(img, name) for name, img in c["images"])
    details = "".join(f"<li>{e(str(d))}</li>" for d in c["details"])
    low = f"<p><b>{e(c['low'])}</b></p>" if c["low"] else ""
    reason = f'<p class="reason">Why this tier: {e(c["tier_reason"])}</p>' if c["tier_reason"] else ""
    warning = f'<p class="warning">{e(c["warning"])}</p>' if c["warning"] else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>DermTriage case report</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}
figure{{display:inline-block;margin:0 1em 1em 0}}.tier{{padding:.6em 1em;color:white;border-radius:6px;background:{c['tier_colour']}}}
.disclaimer{{border:2px solid #c62828;padding:.6em 1em;background:#fff3f3}}
.warning{{border:2px solid #ef6c00;padding:.6em 1em;background:#fff8e1;font-weight:bold}}</style></head><body>
<h1>DermTriage case report</h1>
<p class="disclaimer">{e(DISCLAIMER)}</p>
<p>{e(c['generated'])}</p>
<h2>Risk tier</h2>{warning}<p class="tier"><b>{e(c['tier'])}</b> — {e(c['action'])}</p>{reason}<ul>{tiers}</ul>
<h2>Differential diagnosis</h2>{low}
{f"<table><tr>{head}</tr>{rows}</table>" if c["rows"] else f"<p>{e(NO_DIFFERENTIAL)}</p>"}
<h2>Images and explanations</h2>{figs}
<h2>Details</h2><ul>{details}</ul>
</body></html>"""


# ---------------------------------------------------------------------------- PDF
_LATIN1 = str.maketrans({"—": "-", "–": "-", "·": "|", "≥": ">=", "≤": "<=", "→": "->", "’": "'", "‘": "'",
                         "“": '"', "”": '"', "…": "...", "×": "x", "±": "+/-"})


def _pdf_text(v) -> str:
    """Text for the PDF's built-in Helvetica (Latin-1): common typography mapped, the rest replaced."""
    return str(v).translate(_LATIN1).encode("latin-1", "replace").decode("latin-1")


def _rgb(colour: str) -> tuple[int, int, int]:
    c = colour.lstrip("#")
    return (int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)) if len(c) == 6 else (90, 90, 90)


def case_report_pdf(crop: Image.Image, result: TriageResult, taxonomy: Taxonomy, thresholds: Thresholds,
                    model_name: str, model_version: str, figures: dict[str, Image.Image] | None = None,
                    clinical: dict | None = None, extra: dict | None = None) -> bytes:
    """The same case report as :func:`case_report_html`, as an A4 PDF (fpdf2; no system
    libraries or fonts needed). Images are re-encoded from pixels (no EXIF/GPS)."""
    from fpdf import FPDF

    c = _content(crop, result, taxonomy, thresholds, model_name, model_version, figures, clinical, extra)
    t = _pdf_text
    pdf = FPDF(format="A4", unit="mm")
    pdf.set_title("DermTriage case report")
    pdf.set_creator("DermTriage")
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin
    pdf.set_font("Helvetica", "B", 18)
    pdf.cell(0, 10, "DermTriage case report", new_x="LMARGIN", new_y="NEXT")
    pdf.set_draw_color(198, 40, 40)
    pdf.set_fill_color(255, 243, 243)
    pdf.set_font("Helvetica", "", 10)
    pdf.multi_cell(0, 5, t(DISCLAIMER), border=1, fill=True, padding=2, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_font("Helvetica", "", 9)
    pdf.multi_cell(0, 5, t(c["generated"]), new_x="LMARGIN", new_y="NEXT")

    def heading(text: str, keep: float = 16) -> None:
        """A section heading, moved to a new page unless ``keep`` mm of its section fit under it."""
        if pdf.will_page_break(3 + 8 + keep):
            pdf.add_page()
        else:
            pdf.ln(3)
        pdf.set_font("Helvetica", "B", 13)
        pdf.cell(0, 8, t(text), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", "", 10)

    heading("Risk tier")
    if c["warning"]:     # before the banner: a triaged-anyway photo's tier must not be read without it
        pdf.set_draw_color(239, 108, 0)
        pdf.set_fill_color(255, 248, 225)
        pdf.set_font("Helvetica", "B", 10)
        pdf.multi_cell(0, 5, t(c["warning"]), border=1, fill=True, padding=2, align="L", new_x="LMARGIN",
                       new_y="NEXT")
        pdf.ln(2)
    pdf.set_fill_color(*_rgb(c["tier_colour"]))
    pdf.set_text_color(255, 255, 255)
    pdf.set_font("Helvetica", "B", 11)
    pdf.multi_cell(0, 7, t(f"{c['tier']} - {c['action']}"), fill=True, padding=2, new_x="LMARGIN", new_y="NEXT")
    pdf.set_fill_color(255, 255, 255)    # the tier colour is for the banner only (a table fills with the current colour)
    pdf.set_draw_color(204, 204, 204)    # and the table's lines are grey, as in the HTML (not the disclaimer's red)
    pdf.set_text_color(0, 0, 0)
    pdf.set_font("Helvetica", "", 10)
    if c["tier_reason"]:
        pdf.ln(1)
        pdf.multi_cell(0, 5, t(f"Why this tier: {c['tier_reason']}"), align="L", new_x="LMARGIN", new_y="NEXT")
    for line in c["tier_lines"]:
        pdf.cell(0, 5, t(f"- {line}"), new_x="LMARGIN", new_y="NEXT")
    heading("Differential diagnosis", keep=5 * 5.5)
    if c["low"]:
        pdf.set_font("Helvetica", "B", 10)
        pdf.multi_cell(0, 5, t(c["low"]), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", "", 10)
    if not c["rows"]:
        pdf.multi_cell(0, 5, t(NO_DIFFERENTIAL), new_x="LMARGIN", new_y="NEXT")
    else:
        with pdf.table(col_widths=(46, 22, 14, 18), text_align=("LEFT", "RIGHT", "RIGHT", "CENTER"),
                       line_height=5.5, first_row_as_headings=True, cell_fill_color=(255, 255, 255),
                       cell_fill_mode="ALL") as table:
            for row in [c["header"], *c["rows"]]:
                r = table.row()
                for v in row:
                    r.cell(t(v))
    per_row, gap = 3, 4.0
    img_w = (width - gap * (per_row - 1)) / per_row
    images = [(name, strip_metadata(img.convert("RGB"))) for name, img in c["images"]]
    # a picture is at most as tall as fits a page under the heading, with its caption
    max_h = pdf.h - pdf.t_margin - pdf.b_margin - 11 - 12

    def size(img) -> tuple[float, float]:
        h = img_w * img.height / img.width
        return (img_w, h) if h <= max_h else (img_w * max_h / h, max_h)

    heading("Images and explanations", keep=max(size(img)[1] for _, img in images[:per_row]) + 12)
    for start in range(0, len(images), per_row):
        row = images[start:start + per_row]
        row_h = max(size(img)[1] for _, img in row)
        if pdf.will_page_break(row_h + 12):
            pdf.add_page()
        y0 = pdf.get_y()
        for col, (name, img) in enumerate(row):
            x = pdf.l_margin + col * (img_w + gap)
            pdf.image(img, x=x, y=y0, w=size(img)[0], h=size(img)[1])
            pdf.set_xy(x, y0 + row_h + 1)
            pdf.set_font("Helvetica", "", 8)
            pdf.multi_cell(img_w, 3.5, t(name), align="L", new_x="RIGHT", new_y="TOP")
        pdf.set_xy(pdf.l_margin, y0 + row_h + 10)
    heading("Details", keep=3 * 5)
    for d in c["details"]:
        pdf.multi_cell(0, 5, t(f"- {d}"), align="L", new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())
