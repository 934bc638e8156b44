"""Figures the pages show (plotly charts, annotated images); no Streamlit here."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from PIL import Image, ImageDraw
from skimage.segmentation import find_boundaries

from derm_core.data.taxonomy import Taxonomy
from derm_core.triage.rules import Thresholds, TriageResult


def differential_chart(result: TriageResult, taxonomy: Taxonomy, thresholds: Thresholds) -> go.Figure:
    """Calibrated probability of every class, its operating threshold marked (a black tick);
    classes in the differential are coloured by their risk tier, the others grey, with a key
    below. The values stand in one column right of the 100% line, so none covers a tick or reads
    as the tick's value (a value written just past a far tick read as that tick's position)."""
    order = sorted(taxonomy.classes, key=lambda c: result.probs[c])
    in_diff = {c for c, _ in result.differential}
    colours = [taxonomy.tiers[taxonomy.class_tier[c]].colour if c in in_diff else NOT_IN_DIFFERENTIAL for c in order]
    names = list(order)   # short class codes on the axis, so the bars keep the width in narrow columns
    probs = [result.probs[c] for c in order]
    ticks = [thresholds.classes[c] for c in order]
    fig = go.Figure(go.Bar(x=probs, y=names, orientation="h", marker_color=colours, showlegend=False,
                           customdata=[taxonomy.display_names[c] for c in order],
                           hovertemplate="%{customdata} (%{y}): %{x:.1%}<extra></extra>", name="probability"))
    fig.add_trace(go.Scatter(x=ticks, y=names, mode="markers", name="threshold",
                             marker=dict(symbol="line-ns", size=18, line=dict(width=3, color="black")),
                             hovertemplate="threshold %{x:.2f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[VALUE_X] * len(order), y=names, mode="text",
                             text=[f"{p:.1%}" for p in probs], textposition="middle right", showlegend=False,
                             hoverinfo="skip", cliponaxis=False))
    key = [(t, taxonomy.tiers[t].colour) for t in taxonomy.tier_names]
    for label, colour in [*key, ("not in the differential", NOT_IN_DIFFERENTIAL)]:   # the bar colours' key
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=label, hoverinfo="skip",
                                 marker=dict(symbol="square", size=12, color=colour)))
    rows = 3                             # the key's rows in a narrow column (plotly wraps it as it needs)
    fig.update_layout(xaxis=dict(range=[0, VALUE_X + 0.2], tickvals=[0, 0.25, 0.5, 0.75, 1], tickformat=".0%",
                                 title="calibrated probability"),
                      yaxis=dict(range=[-0.6, len(order) - 0.4]),
                      height=60 + 34 * len(order) + 30 + LEGEND_ROW_PX * rows, margin=dict(l=10, r=10, t=10, b=40),
                      legend={**legend_below(len(key) + 2), "entrywidth": 0, "entrywidthmode": "pixels",
                              "title": dict(text="Bar colour: risk tier of a class in the differential", side="top",
                                            font=dict(size=11))})
    return fig


NOT_IN_DIFFERENTIAL = "#b0b0b0"
VALUE_X = 1.03       # where the value column starts, in probability units (right of every bar and tick)


def tier_chart(result: TriageResult, taxonomy: Taxonomy) -> go.Figure:
    """Probability mass of each risk tier, in the tier colours."""
    names = taxonomy.tier_names
    fig = go.Figure(go.Bar(x=names, y=[result.tier_probs[t] for t in names],
                           marker_color=[taxonomy.tiers[t].colour for t in names],
                           text=[f"{result.tier_probs[t]:.1%}" for t in names], textposition="outside"))
    fig.update_layout(yaxis=dict(range=[0, 1.15], tickformat=".0%"), height=260, margin=dict(l=10, r=10, t=10, b=30))
    return fig


BIOPSY_COLOUR = (0, 230, 255)     # cyan: the suggested region and point
OUTLINE_COLOUR = (255, 214, 0)    # yellow: the lesion outline the site was chosen in


def _thick_edge(mask: np.ndarray, width: int) -> np.ndarray:
    from scipy import ndimage
    edge = find_boundaries(mask, mode="inner")
    return ndimage.binary_dilation(edge, iterations=width - 1) & mask if width > 1 else edge


def mark_biopsy(photo: Image.Image, region_original: np.ndarray, point: tuple[int, int],
                shown_width: int | None = None, outline: np.ndarray | None = None) -> Image.Image:
    """The photo with the suggested biopsy region outlined and its point marked (cyan), and
    the lesion outline it was chosen in (yellow, when given).

    Drawn for a display ``shown_width`` px wide: the picture is rendered at twice that (sharp on
    high-density screens) with lines 2 and 3 screen pixels wide and a marker sized to the
    shown picture, so the site stays visible whether a 1,600 px crop is shown at 360 px or a
    150 px one is enlarged. Without ``shown_width`` it is drawn at the photo's own size.
    """
    w, h = photo.size
    out_w = 2 * shown_width if shown_width else w
    f = out_w / w
    size = (max(1, round(w * f)), max(1, round(h * f)))
    px = out_w / shown_width if shown_width else max(1.0, w / 360)     # output pixels per screen pixel

    def fit(mask):
        m = Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255)
        return np.asarray(m.resize(size, Image.NEAREST)) >= 128

    img = photo.convert("RGB")
    img = img.resize(size, Image.LANCZOS) if size != img.size else img.copy()
    out = np.asarray(img).copy()
    if outline is not None and np.asarray(outline).any():
        out[_thick_edge(fit(outline), max(1, round(1.5 * px)))] = OUTLINE_COLOUR
    region = fit(region_original)
    out[_thick_edge(region, max(2, round(2.5 * px)))] = BIOPSY_COLOUR
    img = Image.fromarray(out)
    d = ImageDraw.Draw(img)
    x, y = (point[0] + 0.5) * f - 0.5, (point[1] + 0.5) * f - 0.5
    r = max(3 * px, 0.035 * min(size))          # at least 3 screen px, else 3.5% of the picture
    lw = max(2, round(2.5 * px))
    for colour, width in (((0, 0, 0), lw + 2 * max(1, round(px))), (BIOPSY_COLOUR, lw)):   # dark halo, then cyan
        d.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=width)
        for (x0, y0, x1, y1) in ((x - 2 * r, y, x - r, y), (x + r, y, x + 2 * r, y),
                                 (x, y - 2 * r, x, y - r), (x, y + r, x, y + 2 * r)):
            d.line([x0, y0, x1, y1], fill=colour, width=width)
    return img


# ---------------------------------------------------------------------- Model lab figures
# Built from an evaluation set's re-binned numbers (derm_core.evaluate.operating); cheap enough to
# redraw on every threshold-slider move. Traces are plain dicts and layouts are set once, to
# keep plotly's validation cost low.
from plotly import colors as plotly_colors  # noqa: E402
from plotly.subplots import make_subplots  # noqa: E402

VALIDATE = False   # the lab's figures skip plotly's per-property validation (tests build them validated)


def _figure(data: list[dict], layout: dict) -> go.Figure:
    """A figure from plain dicts; unvalidated when :data:`VALIDATE` is off, which makes a
    slider redraw several times cheaper (plotly's private ``_validate`` switch; validated
    if this plotly lacks it)."""
    if not VALIDATE:
        try:
            return go.Figure(data=data, layout=layout, _validate=False)
        except (TypeError, ValueError):
            pass
    return go.Figure(data=data, layout=layout)


PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173")


ROC_RANGE = [-0.01, 1.01]          # ROC axes: always the unit square
ROC_MARGIN = dict(l=55, r=15)      # fixed room for the y ticks and title, so the square's size is known
ROC_AXIS_ROOM_PX = 50              # below the square: the x ticks and title
LEGEND_ROW_PX = 20                 # one legend entry, font size 11
PLOT_SIDE_PX = 360                 # the square plotting area of an ROC figure (at most)


def legend_below(n_entries: int, font_size: int = 11) -> dict:
    """A one-entry-per-row legend under the plot, so long labels never take the plot's width.

    Horizontal, each entry the legend's full width: plotly makes room for a horizontal legend
    in the bottom margin, whereas a vertical one, even at the figure's bottom, widens the left
    margin by its longest label and squeezes the plot to a sliver in a narrow column."""
    return dict(orientation="h", entrywidth=1, entrywidthmode="fraction", x=0, xanchor="left", xref="container",
                y=0, yanchor="bottom", yref="container", font=dict(size=font_size), tracegroupgap=0)


def roc_layout(n_entries: int, title: str, width: int | None = None, side: int = PLOT_SIDE_PX, top: int = 30) -> dict:
    """Layout of a square ROC plot (unit-square axes) of up to ``side`` px in a figure ``width``
    CSS px wide (the page measures its column and shows the figure at that width; None: the
    figure stretches, the plot just wide enough for the square), with a legend of
    ``n_entries`` rows below. The square comes from fixed margins and the x axis's domain, not
    from plotly's ``constrain="domain"``, which writes the shrunk domain back into the figure so
    that every window resize shrank the plot further."""
    plot_w = max((width or side + ROC_MARGIN["l"] + ROC_MARGIN["r"]) - ROC_MARGIN["l"] - ROC_MARGIN["r"], 60)
    side = min(side, plot_w)
    half = side / plot_w / 2
    bottom = ROC_AXIS_ROOM_PX + LEGEND_ROW_PX * max(n_entries, 0) + 10
    return dict(**({"width": int(width)} if width else {}),
                xaxis=dict(title=dict(text="1 - specificity"), range=ROC_RANGE, domain=[0.5 - half, 0.5 + half],
                           automargin=False),
                yaxis=dict(title=dict(text="sensitivity"), range=ROC_RANGE, automargin=False),
                height=int(top + side + bottom), margin=dict(**ROC_MARGIN, t=top, b=bottom),
                legend=legend_below(n_entries), title=dict(text=title, font=dict(size=14)))



def target_colours(ev) -> dict[str, str]:
    """A colour per target of an :class:`~derm_core.evaluate.operating.EvalSet`: tiers in their own colour, classes a palette."""
    from derm_core.evaluate.operating import TIER_PREFIX
    out = {}
    for i, c in enumerate(ev.classes):
        out[c] = PALETTE[i % len(PALETTE)]
    for t in ev.referral_tiers:
        out[TIER_PREFIX + t] = ev.taxonomy.tiers[t].colour
    return out


def roc_title(targets: list[str]) -> str:
    """The title of an ROC figure of these targets: per risk tier, per class, or both."""
    from derm_core.evaluate.operating import TIER_PREFIX
    tiers = sum(1 for t in targets if t.startswith(TIER_PREFIX))
    what = ("ROC per risk tier" if tiers == len(targets) else "ROC per class" if not tiers
            else "ROC per risk tier and class")
    return f"{what} (dot: current threshold)"


def roc_figure(ev, table, targets: list[str], width: int | None = None, side: int = PLOT_SIDE_PX,
               title: str | None = None) -> go.Figure:
    """ROC curve of each target with its AUC (95% bootstrap CI) and the current operating point.

    The axes stay the unit square with equal aspect (see :func:`roc_layout`); the legend (one
    row per curve) sits under the plot and the height grows with it.

    Args:
        ev: the :class:`~derm_core.evaluate.operating.EvalSet`.
        table: :func:`derm_core.evaluate.operating.operating_table` at the current thresholds.
        width: the figure's width as laid out (CSS px), for an exact square.
        title: default :func:`roc_title` (which says whether it shows classes or tiers).
    """
    colours = target_colours(ev)
    rows = table.set_index("target")
    legend_px = (width or side + ROC_MARGIN["l"] + ROC_MARGIN["r"]) - 50    # the legend's text, beside its symbol
    lines = 0
    data = [dict(type="scatter", x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#bbbbbb", dash="dot", width=1),
                 hoverinfo="skip", showlegend=False)]
    for t in targets:
        if t not in ev.roc:
            continue
        fpr, tpr = ev.roc[t]
        auc, lo, hi = ev.auc[t]
        r = rows.loc[t]
        wrapped = wrap_title(f"{ev.target_label(t)}: AUC {auc:.3f} ({lo:.3f}-{hi:.3f})", legend_px, 11)
        label, lines = "<br>".join(wrapped), lines + len(wrapped)     # long class names wrap, never cut
        data.append(dict(type="scattergl" if len(fpr) > 1500 else "scatter", x=fpr, y=tpr, mode="lines", name=label,
                         legendgroup=t, line=dict(color=colours[t], width=2),
                         hovertemplate="1-specificity %{x:.3f}<br>sensitivity %{y:.3f}<extra>" + t + "</extra>"))
        data.append(dict(type="scatter", x=[1 - r["specificity"]], y=[r["sensitivity"]], mode="markers",
                         legendgroup=t, showlegend=False,
                         marker=dict(color=colours[t], size=11, symbol="circle", line=dict(color="black", width=1.5)),
                         hovertemplate=(f"{t} at threshold {r['threshold']:.3f}<br>sensitivity %{{y:.3f}}<br>"
                                        f"specificity {r['specificity']:.3f}<extra></extra>")))
    return _figure(data, roc_layout(lines, roc_title(targets) if title is None else title, width, side))


SENS_SPEC_TITLE_PX = 26     # above each panel: its title
SENS_SPEC_AXIS_PX = 52      # below each panel: the x tick labels and the x-axis title, and a gap
SENS_SPEC_MARGIN = dict(l=48, r=18, t=30, b=30)  # left: the y tick labels; top: the mode bar; bottom: the legend


def sens_spec_panel_title(ev, target: str) -> str:
    """A short panel title: a class's code (its full name is the title's hover text); a tier's label
    (tier names are short)."""
    from derm_core.evaluate.operating import TIER_PREFIX
    return ev.target_label(target) if target.startswith(TIER_PREFIX) else target


def sens_spec_figure(ev, table, targets: list[str], cols: int = 3, height_per_row: int = 230) -> go.Figure:
    """Sensitivity and specificity against the threshold for each target (Han et al. 2018),
    the current threshold (solid line) and the Youden-optimal one (dotted) marked.

    Small multiples laid out by hand (``make_subplots`` alone costs more than a slider's budget):
    each row ``height_per_row`` px high, of which :data:`SENS_SPEC_TITLE_PX` above the panel hold
    its title (short: :func:`sens_spec_panel_title`; the full label on hover) and
    :data:`SENS_SPEC_AXIS_PX` below hold its tick labels and the x-axis title "threshold"."""
    from derm_core.evaluate.operating import GRID
    n_rows = max(1, -(-len(targets) // cols))
    rows = table.set_index("target")
    gap_x = 0.05
    m = SENS_SPEC_MARGIN
    height = m["t"] + m["b"] + height_per_row * n_rows
    px = 1.0 / (height_per_row * n_rows)              # one pixel of the plotting area, in paper units
    layout: dict = {"annotations": []}
    data = []
    for i, t in enumerate(targets):
        r, c = divmod(i, cols)
        ax = "" if i == 0 else str(i + 1)
        x0, x1 = c / cols + (gap_x / 2 if c else 0), (c + 1) / cols - (gap_x / 2 if c < cols - 1 else 0)
        y1 = 1 - r / n_rows - SENS_SPEC_TITLE_PX * px         # room for the panel title above
        y0 = 1 - (r + 1) / n_rows + SENS_SPEC_AXIS_PX * px    # and tick labels and axis title below
        layout["xaxis" + ax] = dict(domain=[x0, x1], anchor="y" + ax, range=[0, 1], tickformat=".1f", tick0=0,
                                    dtick=0.5, automargin=False,     # few ticks: none under the axis title
                                    title=dict(text="threshold", standoff=4, font=dict(size=11)))
        layout["yaxis" + ax] = dict(domain=[y0, y1], anchor="x" + ax, range=[0, 1.02], tickformat=".0%",
                                    showticklabels=c == 0, automargin=False)
        layout["annotations"].append(dict(text=sens_spec_panel_title(ev, t), hovertext=ev.target_label(t),
                                          x=(x0 + x1) / 2, y=y1 + 4 * px, xref="paper", yref="paper",
                                          xanchor="center", yanchor="bottom", showarrow=False, font=dict(size=12)))
        sens, spec = ev.sens_spec_curves[t]
        thr, yj = float(rows.loc[t, "threshold"]), ev.youden[t]
        first = i == 0
        common = dict(xaxis="x" + ax, yaxis="y" + ax, type="scatter", mode="lines")
        data += [dict(**common, x=GRID, y=sens, name="sensitivity", legendgroup="sens", showlegend=first,
                      line=dict(color="#c62828", width=2), hovertemplate="t=%{x:.3f} sensitivity %{y:.3f}<extra></extra>"),
                 dict(**common, x=GRID, y=spec, name="specificity", legendgroup="spec", showlegend=first,
                      line=dict(color="#1565c0", width=2), hovertemplate="t=%{x:.3f} specificity %{y:.3f}<extra></extra>"),
                 dict(**common, x=[thr, thr], y=[0, 1], name="current threshold", legendgroup="cur", showlegend=first,
                      line=dict(color="black", width=1.5), hovertemplate=f"current {thr:.3f}<extra></extra>")]
        if not np.isnan(yj):
            data.append(dict(**common, x=[yj, yj], y=[0, 1], name="Youden-optimal", legendgroup="youden",
                             showlegend=first, line=dict(color="#2e7d32", width=1.5, dash="dot"),
                             hovertemplate=f"Youden {yj:.3f}<extra></extra>"))
    layout.update(height=height, margin=dict(m),
                  legend=dict(orientation="h", x=0, xref="container", y=0, yref="container", yanchor="bottom"))
    return _figure(data, layout)


CM_CHAR_PX = 7          # a tick label's character (font size 12), to size margins and cells from the labels
CM_MIN_SIDE_PX = 150    # the square plot area of a sized confusion matrix: at least this high, even 2 x 2


def confusion_figure(cm: np.ndarray, labels: list[str], normalise: bool = False, title: str = "",
                     axis_names: tuple[str, str] = ("true", "predicted"), *, cell_px: int | None = None,
                     width: int | None = None) -> go.Figure:
    """Confusion-matrix heat map: counts, or rows normalised to 1 (each row: where that true class went).

    With ``cell_px`` the figure has its own size (show it at ``width="content"``): a square plot
    area of square cells at least ``cell_px`` wide (and wide enough for their labels), at least
    :data:`CM_MIN_SIDE_PX` high, no wider than ``width`` CSS px in all; fixed margins made from
    the labels' lengths, the title wrapped to the figure. Without it (the Model lab) the figure
    stretches to its column, its height growing with the number of classes."""
    cm = np.asarray(cm, dtype=float)
    if normalise:
        z = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        text = [[f"{v:.0%}" for v in row] for row in z]
    else:
        z = cm
        text = [[f"{int(v)}" for v in row] for row in cm]
    blues = plotly_colors.sequential.Blues
    trace = dict(type="heatmap", z=z, x=labels, y=labels, text=text, texttemplate="%{text}",
                 colorscale=[[i / (len(blues) - 1), c] for i, c in enumerate(blues)],
                 showscale=False, customdata=cm,
                 hovertemplate=f"{axis_names[0]} %{{y}}<br>{axis_names[1]} %{{x}}<br>%{{customdata:.0f}} images<extra></extra>")
    layout = dict(xaxis=dict(title=dict(text=axis_names[1]), side="bottom"),
                  yaxis=dict(title=dict(text=axis_names[0]), autorange="reversed"),
                  height=80 + 38 * len(labels), margin=dict(l=10, r=10, t=30 if title else 10, b=40))
    if title:
        layout["title"] = dict(text=title, font=dict(size=14))
    if cell_px:
        n, longest = max(len(labels), 1), max((len(str(lb)) for lb in labels), default=1)
        cell = max(int(cell_px), CM_CHAR_PX * longest + 12)          # an x tick label fits under its cell
        left, right, bottom = 36 + CM_CHAR_PX * longest, 10, 64
        side = max(cell * n, CM_MIN_SIDE_PX)
        if width:
            side = max(min(side, int(width) - left - right), 100)
        lines = wrap_title(title, left + side + right - 16) if title else []
        top = 14 + TITLE_LINE_PX * len(lines)
        layout.update(width=left + side + right, height=top + side + bottom,
                      margin=dict(l=left, r=right, t=top, b=bottom))
        layout["xaxis"].update(automargin=False, tickangle=0)
        layout["yaxis"].update(automargin=False)
        if lines:
            layout["title"]["text"] = "<br>".join(lines)
    return _figure([trace], layout)


def reliability_figure(calibration: dict) -> go.Figure:
    """Reliability diagram before and after temperature scaling, with each one's ECE.

    Args:
        calibration: ``EvalSet.calibration``: ``{"before"|"after": {confidence, accuracy, count, ece, temperature}}``.
    """
    data = [dict(type="scatter", x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#bbbbbb", dash="dot"),
                 name="perfect calibration", hoverinfo="skip")]
    for key, colour in (("before", "#ef6c00"), ("after", "#1565c0")):
        c = calibration[key]
        name = "uncalibrated, T = 1" if key == "before" else f"calibrated, T = {c['temperature']:.2f}"   # short: narrow columns
        biggest = max(max(c["count"], default=1), 1)
        data.append(dict(type="scatter", x=c["confidence"], y=c["accuracy"], mode="lines+markers",
                         name=f"{name}: ECE {c['ece']:.3f}", line=dict(color=colour),
                         marker=dict(size=[4 + 16 * np.sqrt(n / biggest) for n in c["count"]]), customdata=c["count"],
                         hovertemplate="confidence %{x:.2f}<br>accuracy %{y:.2f}<br>%{customdata} images<extra></extra>"))
    return _figure(data, dict(
        xaxis=dict(title=dict(text="confidence (top-class probability)"), range=[0, 1], automargin=True),
        yaxis=dict(title=dict(text="accuracy"), range=[0, 1.02], automargin=True),
        height=340 + 55 + LEGEND_ROW_PX * len(data), margin=dict(l=10, r=10, t=10, b=10),
        legend=legend_below(len(data))))


def embedding_figure(xy: np.ndarray, colour_by: np.ndarray, hover: np.ndarray, colours: dict[str, str] | None = None,
                     title: str = "", height: int = 560, point_size: float | None = None) -> go.Figure:
    """t-SNE map (2D or 3D) of the embeddings, one trace per colour category; hover shows each image's text.

    Args:
        xy: (N, 2) or (N, 3) coordinates.
        colour_by: (N,) category per point (true class, predicted class, tier, correct/wrong).
        hover: (N,) hover text (image id and details); the 2D trace's ``customdata`` is the row index,
            so a page can map a selection back to images.
    """
    xy = np.asarray(xy)
    colour_by = np.asarray(colour_by).astype(str)
    dims = xy.shape[1]
    cats = list(colours) if colours else sorted(np.unique(colour_by))
    cats = [c for c in cats if (colour_by == c).any()] + [c for c in sorted(np.unique(colour_by)) if c not in (colours or {})]
    size = point_size or (4 if len(xy) > 3000 else 6)
    data = []
    for i, cat in enumerate(cats):
        m = np.flatnonzero(colour_by == cat)
        colour = (colours or {}).get(cat, PALETTE[i % len(PALETTE)])
        common = dict(mode="markers", name=f"{cat} ({len(m)})", text=np.asarray(hover)[m], customdata=m,
                      hovertemplate="%{text}<extra>" + str(cat) + "</extra>")
        if dims == 3:
            data.append(dict(type="scatter3d", x=xy[m, 0], y=xy[m, 1], z=xy[m, 2],
                             marker=dict(size=size * 0.6, color=colour, opacity=0.8), **common))
        else:
            data.append(dict(type="scattergl", x=xy[m, 0], y=xy[m, 1],
                             marker=dict(size=size, color=colour, opacity=0.8), **common))
    axis = dict(showticklabels=False, title=dict(text=""), zeroline=False, showgrid=False)
    rows = -(-len(data) // 4)          # a horizontal legend under the map: about four entries a row
    layout = dict(height=height + LEGEND_ROW_PX * rows, margin=dict(l=10, r=10, t=30 if title else 10, b=10),
                  legend=dict(itemsizing="constant", orientation="h", x=0, xanchor="left", y=0, yanchor="bottom",
                              yref="container"))
    if dims == 3:
        layout["scene"] = dict(xaxis=axis, yaxis=axis, zaxis=axis)
    else:
        layout.update(xaxis=axis, yaxis=axis, dragmode="lasso")
    if title:
        layout["title"] = dict(text=title, font=dict(size=14))
    return _figure(data, layout)


def training_figure(history: list[dict]) -> go.Figure:
    """Per-epoch curves of a training run: losses (left) and validation metrics (right)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["loss", "validation metrics"], horizontal_spacing=0.1)
    ep = [h.get("epoch") for h in history]
    # each curve its own colour, dash and marker, so curves on the same values (two zeros) both stay visible
    for col, keys in ((1, (("train_loss", "training loss", "#1565c0", "solid", "circle"),
                           ("val_loss", "validation loss", "#c62828", "dash", "square"))),
                      (2, (("val_accuracy", "accuracy", "#2e7d32", "solid", "circle"),
                           ("val_balanced_accuracy", "balanced accuracy", "#ef6c00", "dash", "diamond-open"),
                           ("val_macro_auc", "macro AUC", "#6a1b9a", "dot", "square")))):
        for key, name, colour, dash, symbol in keys:
            ys = [h.get(key) for h in history]
            if any(v is not None for v in ys):
                fig.add_trace(go.Scatter(x=ep, y=ys, mode="lines+markers", name=name, line=dict(color=colour, dash=dash),
                                         marker=dict(symbol=symbol, size=9)), row=1, col=col)
    fig.update_xaxes(title_text="epoch", dtick=1 if len(ep) <= 20 else None)
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(range=[-0.03, 1.03], title_text="score (0-1)", row=1, col=2)   # 0 and 1 clear of the frame
    fig.update_layout(height=360, margin=dict(l=10, r=10, t=30, b=10),
                      legend=dict(orientation="h", x=0, xanchor="left", y=0, yanchor="bottom", yref="container"))
    return fig


# --------------------------------------------------------------------------- reader study
# The figure all three seed papers show: readers' points on the model's ROC (numbers from
# derm_core.study.results).
LEVEL_COLOURS = {"student": "#9467bd", "resident": "#ff7f0e", "general practitioner": "#2ca02c",
                 "dermatologist": "#1f77b4"}
OTHER_COLOUR = "#7f7f7f"


def _ok(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


READER_ROC_RANGE = [-0.03, 1.03]   # reader ROC axes: the unit square with room for markers on its edges
TITLE_FONT_PX, TITLE_LINE_PX = 14, 18


def wrap_title(title: str, width_px: float, font_px: int = TITLE_FONT_PX) -> list[str]:
    """``title`` broken into lines that fit ``width_px`` (at about 0.56 em a character): at its
    " · " separators where it can, else between words."""
    import textwrap
    per_line = max(12, int(width_px / (0.56 * font_px)))
    lines: list[str] = []
    for part in title.split(" · "):
        if lines and len(lines[-1]) + 3 + len(part) <= per_line:
            lines[-1] += " · " + part
        else:
            lines.extend(textwrap.wrap(part, per_line) or [""])
    return lines


def _same_point(a: dict, b: dict | None) -> bool:
    return bool(b) and all(_ok(b.get(k)) and abs(a[k] - b[k]) < 1e-9 for k in ("fpr", "sensitivity"))


def reader_roc_figure(ev, target: str, title: str, points: pd.DataFrame, averages: pd.DataFrame,
                      model_pt: dict | None = None, model_label: str = "model", side: int = PLOT_SIDE_PX,
                      width: int | None = None, answers_pt: dict | None = None,
                      answers_label: str = "model's answers", curves: pd.DataFrame | None = None) -> go.Figure:
    """The model's ROC curve for ``target`` on the study's cases, each reader's
    (1 - specificity, sensitivity) point coloured by experience level, each level's average
    (large diamond, outlined), the model's own operating point (black star) and, where it
    differs, the model's answers scored like a reader's (open star).

    The axes run :data:`READER_ROC_RANGE` and markers are not clipped, so a point on the unit
    square's edge (a reader who called nothing positive, at (0, 0)) is drawn whole; the title is
    wrapped to the figure's width.

    Args:
        ev: the model's probabilities on the same cases (None: no model curve).
        points, averages: :func:`~derm_core.study.results.reader_points` and
            :func:`~derm_core.study.results.level_points` for one part of the study.
        answers_pt: :func:`~derm_core.study.results.model_answer_point` (None: not drawn).
        curves: :func:`~derm_core.study.results.rating_rocs`: each reader's ROC curve from their
            confidence ratings, a thin line in their level's colour (None: not drawn).
    """
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#bbbbbb", dash="dot", width=1),
                             hoverinfo="skip", showlegend=False))
    if ev is not None and target in ev.roc:
        fpr, tpr = ev.roc[target]
        auc, lo, hi = ev.auc[target]
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", line=dict(color="black", width=2),
                                 name=f"model ROC: AUC {auc:.3f} ({lo:.3f}-{hi:.3f})",
                                 hovertemplate="1-specificity %{x:.3f}<br>sensitivity %{y:.3f}<extra>model</extra>"))
    elif ev is not None:
        fig.add_annotation(text="no ROC: these cases lack positives<br>or negatives for this target",  # clear of the diagonal
                           x=0.3, y=0.8, showarrow=False, font=dict(size=11), bgcolor="white")
    for r in (curves.itertuples(index=False) if curves is not None else ()):
        if len(r.fpr):
            fig.add_trace(go.Scatter(
                x=r.fpr, y=r.tpr, mode="lines", line=dict(color=LEVEL_COLOURS.get(r.level, OTHER_COLOUR), width=1),
                opacity=0.6, legendgroup=r.level, showlegend=False, line_shape="linear",
                hovertemplate=f"{r.reader}: ratings AUC {r.auc:.3f}<br>1-specificity %{{x:.3f}}<br>"
                              "sensitivity %{y:.3f}<extra></extra>"))
    pts = points[points["sensitivity"].notna() & points["fpr"].notna()] if len(points) else points
    for level in dict.fromkeys(list(LEVEL_COLOURS) + sorted(set(pts["level"]) if len(pts) else [])):
        g = pts[pts["level"] == level] if len(pts) else pts
        if not len(g):
            continue
        colour = LEVEL_COLOURS.get(level, OTHER_COLOUR)
        fig.add_trace(go.Scatter(
            x=g["fpr"], y=g["sensitivity"], mode="markers", name=f"{level} ({len(g)} reader{'s' * (len(g) != 1)})",
            legendgroup=level, text=g["reader"],
            marker=dict(color=colour, size=10, symbol="circle", line=dict(color="white", width=1)),
            hovertemplate="%{text}<br>1-specificity %{x:.3f}<br>sensitivity %{y:.3f}<extra>" + level + "</extra>"))
        avg = averages[averages["level"] == level] if len(averages) else averages
        for _, a in avg.iterrows():
            if _ok(a["fpr"]) and _ok(a["sensitivity"]):
                fig.add_trace(go.Scatter(
                    x=[a["fpr"]], y=[a["sensitivity"]], mode="markers", name=f"{level} average", legendgroup=level,
                    marker=dict(color=colour, size=17, symbol="diamond", line=dict(color="black", width=2)),
                    hovertemplate=(f"{level} average of {int(a['n_readers'])}<br>1-specificity %{{x:.3f}}<br>"
                                   "sensitivity %{y:.3f}<extra></extra>")))
    if model_pt and _ok(model_pt.get("fpr")) and _ok(model_pt.get("sensitivity")):
        fig.add_trace(go.Scatter(x=[model_pt["fpr"]], y=[model_pt["sensitivity"]], mode="markers", name=model_label,
                                 marker=dict(color="black", size=16, symbol="star"),
                                 hovertemplate=model_label + "<br>1-specificity %{x:.3f}<br>sensitivity %{y:.3f}"
                                               "<extra></extra>"))
    if answers_pt and _ok(answers_pt.get("fpr")) and _ok(answers_pt.get("sensitivity")) \
            and not _same_point(answers_pt, model_pt):
        fig.add_trace(go.Scatter(x=[answers_pt["fpr"]], y=[answers_pt["sensitivity"]], mode="markers",
                                 name=answers_label, marker=dict(color="black", size=16, symbol="star-open",
                                                                 line=dict(color="black", width=2)),
                                 hovertemplate=answers_label + "<br>1-specificity %{x:.3f}<br>sensitivity %{y:.3f}"
                                               "<extra></extra>"))
    fig.update_traces(cliponaxis=False, selector=dict(mode="markers"))
    n_entries = sum(1 for d in fig.data if d.name and d.showlegend is not False)
    lines = wrap_title(title, (width or side + ROC_MARGIN["l"] + ROC_MARGIN["r"]) - 16)
    fig.update_layout(**roc_layout(n_entries, "<br>".join(lines), width, side, top=22 + TITLE_LINE_PX * len(lines)))
    fig.update_layout(xaxis_range=READER_ROC_RANGE, yaxis_range=READER_ROC_RANGE)
    return fig


# ---------------------------------------------------------------------- conformal prediction sets (issue 12)
def coverage_figure(curve: dict, colours: dict[str, str] | None = None) -> go.Figure:
    """Empirical coverage against the chosen level, overall and per class, with the diagonal the
    guarantee promises (``curve``: :func:`derm_core.model.conformal.coverage_curve`). The y axis is
    fixed at 0-1 so a class far below the level stays in view instead of off the bottom."""
    lv = curve["level"]
    data = [dict(type="scatter", x=[lv[0], lv[-1]], y=[lv[0], lv[-1]], mode="lines", name="guarantee (= level)",
                 line=dict(color="#bbbbbb", dash="dot"), hoverinfo="skip"),
            dict(type="scatter", x=lv, y=curve["coverage"], mode="lines", name="all photos",
                 line=dict(color="#000000", width=3),
                 hovertemplate="level %{x:.0%}<br>coverage %{y:.3f}<extra>all photos</extra>")]
    for i, (c, ys) in enumerate(curve["per_class"].items()):
        data.append(dict(type="scatter", x=lv, y=ys, mode="lines", name=c, line=dict(
            color=(colours or {}).get(c, PALETTE[i % len(PALETTE)]), width=1.5),
            hovertemplate=f"level %{{x:.0%}}<br>coverage %{{y:.3f}}<extra>{c}</extra>"))
    return _figure(data, dict(
        xaxis=dict(title=dict(text="chosen level"), tickformat=".0%", automargin=True),
        yaxis=dict(title=dict(text="coverage (true diagnosis in the set)"), range=[0, 1.02], tickformat=".0%",
                   automargin=True),
        height=340 + 55 + LEGEND_ROW_PX * len(data), margin=dict(l=10, r=10, t=10, b=10), legend=legend_below(len(data))))


def set_size_figure(counts: list[int], level: float) -> go.Figure:
    """How many photos get a prediction set of each size (0 = empty) at one level."""
    n = max(sum(counts), 1)
    return _figure([dict(type="bar", x=list(range(len(counts))), y=[c / n for c in counts], marker=dict(color="#1565c0"),
                         customdata=counts, hovertemplate="%{x} classes: %{customdata} photos (%{y:.1%})<extra></extra>")],
                   dict(xaxis=dict(title=dict(text=f"diagnoses in the set ({level:.0%})"), dtick=1,
                                   automargin=True),     # short: the chart sits in a third of a 1024-px page
                        yaxis=dict(title=dict(text="share of photos"), tickformat=".0%"), height=300,
                        margin=dict(l=10, r=10, t=10, b=10)))
