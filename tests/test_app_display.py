"""What the pages show, at the size they show it: the crop widget's photo scaled to its column
and the box mapped back to the photo's pixels, the biopsy site drawn to stay visible when a
large crop is shown small, the biopsy site kept inside the lesion outline, and the figures'
layouts (legends out of the plot's width, ROC axes fixed to the unit square)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from derm_core.evaluate import figures as F
from derm_core.explain.lesion import DisplayScale, biopsy_site, crop_mask, crop_point_to_photo
from derm_core.explain.maps import LimeResult
from derm_core.explain.maps import biopsy_site as lime_only_site


# ----------------------------------------------------------------------------- crop widget geometry
@pytest.mark.parametrize("column", [330, 676, 1100])
def test_a_known_box_on_a_phone_photo_maps_back_within_one_screen_pixel(column):
    scale = DisplayScale.fit((4032, 3024), column, max_height=max(320, column))
    w, h = scale.shown
    assert w <= column and h <= max(320, column)
    assert abs(w / h - 4032 / 3024) < 0.01                        # the whole photo, aspect kept
    per_px = 4032 / w                                            # original pixels per screen pixel
    box = (1203, 811, 2617, 2099)
    rect = scale.box_to_shown(box)
    back = scale.rect_to_original(rect)
    assert max(abs(a - b) for a, b in zip(back, box)) <= per_px, (box, rect, back)
    # the widget reports floats after a drag: the same box moved by exactly 10 screen pixels
    moved = {k: v + (10.0 if k in ("left", "top") else 0.0) for k, v in rect.items()}
    got = scale.rect_to_original(moved)
    assert abs(got[0] - (box[0] + 10 * per_px)) <= per_px and abs(got[1] - (box[1] + 10 * 3024 / h)) <= per_px
    assert got[2] - got[0] == pytest.approx(box[2] - box[0], abs=per_px)


def test_portrait_and_odd_photos_fit_the_column_and_are_never_enlarged():
    portrait = DisplayScale.fit((3024, 4032), 330, max_height=330)
    assert portrait.shown[1] <= 330 and portrait.shown[0] <= 330 and portrait.shown[0] < portrait.shown[1]
    strip = DisplayScale.fit((6000, 100), 330, max_height=330)
    assert strip.shown[0] <= 330 and strip.shown[1] >= 1
    small = DisplayScale.fit((200, 150), 676, max_height=676)
    assert small.shown == (200, 150) and small.scale == (1.0, 1.0)
    img = Image.new("RGB", (3024, 4032), "white")
    assert portrait.resize(img).size == portrait.shown
    with pytest.raises(ValueError):
        portrait.resize(Image.new("RGB", (10, 10)))
    with pytest.raises(ValueError):
        DisplayScale.fit((0, 10), 100)


def test_a_box_dragged_past_the_edges_is_clipped_to_the_photo():
    scale = DisplayScale.fit((4032, 3024), 400)
    assert scale.rect_to_original({"left": -20, "top": -5, "width": 1000, "height": 1000}) == (0, 0, 4032, 3024)
    tiny = scale.rect_to_original({"left": 399.6, "top": 299.9, "width": 0, "height": 0})
    assert tiny[2] - tiny[0] >= 1 and tiny[3] - tiny[1] >= 1 and tiny[2] <= 4032 and tiny[3] <= 3024


def test_crop_coordinates_map_to_the_whole_photo():
    assert crop_point_to_photo((5, 7), (100, 200, 300, 400)) == (105, 207)
    full = np.zeros((50, 60), bool)
    full[10:20, 30:40] = True
    part = crop_mask(full, (25, 5, 45, 25))
    assert part.shape == (20, 20) and part.sum() == 100 and part[5:15, 5:15].all()


def test_a_point_of_an_explained_crop_maps_to_the_whole_photo():
    from derm_core.explain.maps import CoverGeometry
    g = CoverGeometry.of((600, 450), (150, 200))          # a 600x450 crop seen at 200x150: a third of a pixel each
    box = (1000, 2000, 1600, 2450)                         # where that crop lies in the photo
    assert g.point_to_original(10, 20) == (31, 61)         # (x + 0.5) * 3 - 0.5, in the crop's pixels
    assert g.point_to_photo(10, 20, box) == (1031, 2061)   # ... plus the crop's offset
    assert g.point_to_photo(10, 20) == (31, 61)            # no box: the geometry is of the whole photo
    assert g.point_to_photo(10, 20, (0, 0, 600, 450)) == (31, 61)
    assert g.point_to_photo(199, 149, box) == (1598, 2448)  # the last model pixel: the centre of the crop's last 3
    with pytest.raises(ValueError, match="not the size"):
        g.point_to_photo(10, 20, (0, 0, 500, 450))


def test_a_model_input_region_maps_onto_the_explained_image():
    from derm_core.explain.maps import CoverGeometry
    g = CoverGeometry.of((600, 450), (150, 200))
    region = np.zeros((150, 200), bool)
    region[50:100, 80:120] = True
    out = g.mask_to_original(region)
    assert out.dtype == bool and out.shape == (450, 600)
    assert out[225, 300] and not out[10, 10] and not out[225, 200]
    assert abs(int(out.sum()) - 50 * 3 * 40 * 3) <= 2 * 3 * (50 + 40) * 3   # within a model pixel of the edge
    wide = CoverGeometry.of((800, 450), (150, 200))        # the centre-crop cuts the sides away
    full = wide.mask_to_original(np.ones((150, 200), bool))
    assert not full[:, 0].any() and not full[:, -1].any() and full[:, 400].all()


def test_the_cropper_gets_the_photo_at_its_shown_size_without_metadata():
    import base64
    import io
    photo = Image.new("RGB", (4032, 3024), "white")
    exif = photo.getexif()
    exif[0x010F] = "PhoneMaker"
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", exif=exif)
    photo = Image.open(io.BytesIO(buf.getvalue()))
    url = DisplayScale.fit(photo.size, 400).jpeg_data_url(photo)
    assert url.startswith("data:image/jpeg;base64,")
    shown = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert shown.size == DisplayScale.fit(photo.size, 400).shown == (400, 300)
    assert not shown.getexif()


# ----------------------------------------------------------------------------- the biopsy site drawn
def _cyan(a: np.ndarray) -> np.ndarray:
    return (a[..., 0] < 90) & (a[..., 1] > 170) & (a[..., 2] > 190)


def test_biopsy_site_stays_visible_on_a_large_crop_shown_small():
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(120, 200, (1200, 1600, 3), dtype=np.uint8))
    region = np.zeros((1200, 1600), bool)
    region[500:700, 700:900] = True
    outline = np.zeros_like(region)
    outline[300:900, 400:1200] = True
    shown = 360
    img = F.mark_biopsy(photo, region, (800, 600), shown_width=shown, outline=outline)
    assert img.size == (720, 540)                                 # drawn at twice the shown size
    seen = np.asarray(img.resize((shown, 270), Image.BILINEAR)).astype(int)   # as the browser shows it
    cyan = _cyan(seen)
    # the region's frame (200 px -> 45 screen px a side) shows as a line along its whole edge
    top_edge = cyan[int(500 * 270 / 1200) - 1:int(500 * 270 / 1200) + 3, int(700 * 0.225) + 12:int(900 * 0.225) - 12]
    assert top_edge.any(axis=0).mean() > 0.9
    # the marker is there, around the point
    cy, cx = 135, 180
    assert cyan[cy - 20:cy + 20, cx - 20:cx + 20].sum() > 40
    # and the lesion outline it was chosen in is drawn too (yellow)
    yellow = (seen[..., 0] > 200) & (seen[..., 1] > 170) & (seen[..., 2] < 80)
    assert yellow[int(300 * 0.225) - 1:int(300 * 0.225) + 3, 120:240].any(axis=0).mean() > 0.9
    # drawn at the photo's own size (the old way), the 1-px frame vanishes at this display size
    old = np.asarray(F.mark_biopsy(photo, region, (800, 600)).resize((shown, 270), Image.BILINEAR)).astype(int)
    assert _cyan(old)[111:116, 170:190].sum() < cyan[111:116, 170:190].sum()


def test_biopsy_site_on_a_small_crop_is_enlarged_for_display():
    photo = Image.new("RGB", (150, 100), (180, 140, 120))
    region = np.zeros((100, 150), bool)
    region[40:60, 60:90] = True
    img = F.mark_biopsy(photo, region, (75, 50), shown_width=360)
    assert img.size == (720, 480) and _cyan(np.asarray(img)).sum() > 500


# ----------------------------------------------------------------------------- the biopsy site chosen
def _lime(weights: dict[int, float], segments: np.ndarray) -> LimeResult:
    h, w = segments.shape
    return LimeResult(segments, weights, target=0, seconds=0.0, num_samples=10, image_size=(w, h))


def test_biopsy_point_goes_deep_into_the_outline_not_to_the_superpixel_centre():
    H, W = 120, 160
    yy, xx = np.mgrid[:H, :W]
    outline = np.hypot(yy - 60, xx - 80) < 45                    # the lesion outline: a disc
    seg = np.zeros((H, W), int)
    seg[:, 80:] = 1                                              # superpixel 1: the right half ...
    seg[(xx >= 110)] = 2                                         # ... split: 2 covers the rim and beyond
    ring = (xx >= 100) & (xx < 125) & outline                    # superpixel 3: a band at the rim, inside
    seg[ring] = 3
    lime = _lime({0: -0.1, 1: 0.01, 2: 0.02, 3: 0.5}, seg)
    site = biopsy_site(lime, outline, "the automatic lesion outline")
    depth_old = lime_only_site(lime, outline)
    assert site.suggested and outline[site.y, site.x] and seg[site.y, site.x] == 3
    # deeper in the outline than the superpixel's own deepest point
    from scipy import ndimage
    d = ndimage.distance_transform_edt(np.pad(outline, 1))[1:-1, 1:-1]
    assert d[site.y, site.x] > d[depth_old.y, depth_old.x]


def test_a_superpixel_that_only_grazes_the_rim_gives_the_outlines_deepest_point():
    H, W = 120, 160
    yy, xx = np.mgrid[:H, :W]
    outline = np.hypot(yy - 60, xx - 80) < 45
    seg = np.zeros((H, W), int)
    rim = outline & (np.hypot(yy - 60, xx - 80) > 41)            # a thin ring just inside the outline
    seg[rim] = 1
    lime = _lime({0: -0.2, 1: 0.4}, seg)
    site = biopsy_site(lime, outline, "the automatic lesion outline")
    assert (site.x, site.y) == (80, 60) or np.hypot(site.x - 80, site.y - 60) <= 1.5
    assert "automatic lesion outline" in site.note and "deepest point" in site.note


def test_without_an_outline_the_lime_site_is_kept():
    seg = np.zeros((40, 60), int)
    seg[:, 30:] = 1
    lime = _lime({0: 0.1, 1: 0.3}, seg)
    a, b = biopsy_site(lime, None), lime_only_site(lime, None)
    assert (a.x, a.y, a.segments) == (b.x, b.y, b.segments)


# ----------------------------------------------------------------------------- figure layouts
def test_roc_layouts_keep_the_unit_square_and_put_the_legend_below(ham7):
    from test_operating import _eval, _thr

    from derm_core.evaluate import operating as O
    ev = _eval(ham7, n=300)
    table = O.operating_table(ev, _thr(ham7))
    fig = F.roc_figure(ev, table, list(ham7.classes))
    lay = fig.layout
    for ax in (lay.xaxis, lay.yaxis):
        assert tuple(ax.range) == (-0.01, 1.01) and ax.constrain is None    # plotly's constrain shrinks on resize
    # a true square in a measured 600-px column: x length (domain share of the plot width) = y length
    sq = F.roc_figure(ev, table, list(ham7.classes), width=600).layout
    x_len = (sq.xaxis.domain[1] - sq.xaxis.domain[0]) * (600 - sq.margin.l - sq.margin.r)
    assert x_len == pytest.approx(sq.height - sq.margin.t - sq.margin.b) == F.PLOT_SIDE_PX
    assert lay.legend.yref == "container" and lay.legend.y == 0 and lay.legend.yanchor == "bottom"
    names = [d.name for d in fig.data if d.name]
    assert len(names) == 7
    assert lay.height >= F.PLOT_SIDE_PX + F.LEGEND_ROW_PX * len(names)     # room for the legend under the square
    few = F.roc_figure(ev, table, ev.target_names()[:1])
    assert few.layout.height < lay.height


# ----------------------------------------------------------------------------- issue 17
def test_a_small_photo_is_enlarged_to_the_column_and_the_box_still_maps_to_its_own_pixels():
    scale = DisplayScale.fit((200, 150), 676, max_height=676, enlarge=True)
    assert scale.shown == (676, 507) and scale.scale[0] > 3
    box = (40, 30, 160, 120)
    assert scale.rect_to_original(scale.box_to_shown(box)) == box
    # a drag of 10 screen pixels moves the box by 10 / 3.38 photo pixels, rounded
    rect = {**scale.box_to_shown(box), "left": scale.box_to_shown(box)["left"] + 10.0}
    assert scale.rect_to_original(rect)[0] == 40 + round(10 / scale.scale[0])
    assert scale.rect_to_original({"left": -5, "top": -5, "width": 2000, "height": 2000}) == (0, 0, 200, 150)
    assert scale.resize(Image.new("RGB", (200, 150))).size == (676, 507)
    portrait = DisplayScale.fit((150, 200), 676, max_height=676, enlarge=True)
    assert portrait.shown == (507, 676)                        # the height limit holds too
    big = DisplayScale.fit((4032, 3024), 676, max_height=676, enlarge=True)
    assert big == DisplayScale.fit((4032, 3024), 676, max_height=676)      # a large photo: the same either way


def test_lime_overlay_covers_the_whole_crop_like_the_biopsy_picture():
    """A crop wider than the model input: the overlay spans the crop (as the biopsy-site picture
    beside it does), with the parts the model's centre-crop cut away greyed and untinted."""
    from derm_core.explain.maps import CoverGeometry
    crop = Image.new("RGB", (400, 150), (200, 120, 100))        # 8:3, the model input is 4:3
    g = CoverGeometry.of(crop.size, (60, 80))
    seg = np.zeros((60, 80), int)
    seg[:, 40:] = 1                                              # right half of the model input
    lime = LimeResult(seg, {0: -1.0, 1: 1.0}, target=0, seconds=0.0, num_samples=10, image_size=crop.size)
    assert lime.cut_away
    on = lime.segments_on_image()
    assert on.shape == (150, 400)
    seen = g.mask_to_original(np.ones((60, 80), bool))
    assert ((on >= 0) == seen).mean() > 0.99                     # the model's view, as CoverGeometry maps it
    assert (on[:, :90] == -1).all() and (on[:, 310:] == -1).all()
    assert (on[:, 110:190] == 0).all() and (on[:, 210:290] == 1).all()
    img = np.asarray(lime.overlay_on_image(crop, width=800), dtype=int)
    assert img.shape == (300, 800, 3)                            # the crop's aspect, drawn at the asked width
    assert img[150, 500, 1] > img[150, 500, 0]                   # right half: green (supports)
    assert img[150, 300, 0] > 200 and img[150, 300, 1] < 100     # left half: red (opposes)
    grey = img[150, 50]
    assert abs(grey[0] - grey[1]) < 40                            # cut away: greyed, not tinted
    assert not LimeResult(seg, {}, 0, 0.0, 10, (80, 60)).cut_away
    assert not LimeResult(seg, {}, 0, 0.0, 10, (203, 150)).cut_away    # a 1% strip: nothing a caption should name
    assert LimeResult(seg, {}, 0, 0.0, 10, (150, 150)).cut_away         # a quarter cut away (top and bottom)


def test_differential_chart_has_a_key_and_values_clear_of_the_threshold_ticks(ham7):
    from derm_core.triage.rules import Thresholds, triage
    thr = Thresholds({**{c: 0.1 for c in ham7.classes}, "mel": 0.05, "vasc": 1.0}, {"high-risk": 0.3, "dangerous": 0.2})
    probs = np.array([0.01, 0.06, 0.08, 0.02, 0.04, 0.78, 0.01])
    fig = F.differential_chart(triage(probs, ham7, thr), ham7, thr)
    labels = next(t for t in fig.data if getattr(t, "mode", None) == "text")
    by_class = dict(zip(labels.y, labels.x))
    for c, p in zip(ham7.classes, probs):
        assert by_class[c] > max(p, thr.classes[c]) + 0.02                 # right of both the bar and the tick
    assert len(set(by_class.values())) == 1                               # one column: a value never sits by a tick
    assert max(by_class.values()) <= fig.layout.xaxis.range[1] - 0.15     # room for the text inside the plot
    legend = [t.name for t in fig.data if t.showlegend is not False]
    assert "threshold" in legend and set(ham7.tier_names) <= set(legend) and "not in the differential" in legend
    assert "risk tier" in fig.layout.legend.title.text
