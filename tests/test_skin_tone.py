"""The skin-tone audit: ITA measured on synthetic skin of known CIELAB colour, its categories, and
the subgroup and prediction-set tables by tone."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage.color import lab2rgb

from derm_core.explain import skin_tone as T


def skin(L, a, b, size=(200, 150), lesion=True, vignette=False, seed=0):
    """A photo of skin of CIELAB colour (L, a, b) with a little noise, a dark lesion in the middle
    (and its mask), optionally the black corners of a dermoscope."""
    w, h = size
    lab = np.empty((h, w, 3))
    lab[...] = (L, a, b)
    lab[..., 0] += np.random.default_rng(seed).normal(0, 1.0, (h, w))
    rgb = (lab2rgb(lab) * 255).round().clip(0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    mask = ((xx - w / 2) / (w * 0.25)) ** 2 + ((yy - h / 2) / (h * 0.25)) ** 2 < 1
    if lesion:
        rgb[mask] = (rgb[mask] * 0.35).astype(np.uint8)
    if vignette:
        rgb[np.hypot(xx - w / 2, yy - h / 2) > 0.55 * w] = 0
    return Image.fromarray(rgb), mask


@pytest.mark.parametrize("L,a,b", [(78, 6, 12), (66, 9, 16), (60, 9, 15), (58, 10, 17), (42, 12, 20), (28, 9, 15)])
def test_ita_of_known_skin_colours(L, a, b):
    want = math.degrees(math.atan2(L - 50, b))
    photo, mask = skin(L, a, b)
    assert T.estimate_ita(photo, mask) == pytest.approx(want, abs=1.5)
    assert T.estimate_ita(photo) == pytest.approx(want, abs=1.5)          # with the automatic outline
    assert T.tone_group(T.estimate_ita(photo, mask)) == T.tone_group(want)
    vignetted, _ = skin(L, a, b, vignette=True)
    assert T.estimate_ita(vignetted, mask) == pytest.approx(want, abs=1.5)   # the black field is not skin


def test_only_the_skin_outside_the_outline_is_measured():
    light, _ = skin(78, 6, 12, lesion=False)
    dark, _ = skin(42, 12, 20, lesion=False)
    photo = np.asarray(light).copy()
    photo[:, :120] = np.asarray(dark)[:, :120]          # the left 60% of the photo is another colour
    mask = np.zeros(photo.shape[:2], bool)
    mask[:, :120] = True                                # ... and is the lesion outline
    want = math.degrees(math.atan2(78 - 50, 12))
    assert T.estimate_ita(Image.fromarray(photo), mask) == pytest.approx(want, abs=1.5)
    assert T.estimate_ita(Image.fromarray(photo), np.zeros_like(mask)) < want - 20     # the median moves


def test_no_estimate_without_skin():
    photo, mask = skin(60, 10, 15)
    assert T.estimate_ita(photo, np.ones_like(mask)) is None
    assert T.tone_group(None) == T.UNKNOWN and T.tone_group(float("nan")) == T.UNKNOWN


def test_categories_and_their_ranges():
    assert [T.tone_group(v) for v in (56, 55, 42, 30, 11, 0, -31)] == [
        "very light", "light", "light", "intermediate", "tan", "brown", "dark"]
    assert T.tone_range("very light") == "> 55°" and T.tone_range("light") == "41° to 55°"
    assert T.tone_range("dark") == "≤ -30°"
    assert T.tone_counts(["dark", "light", T.UNKNOWN, "light"]) == {"light": 2, "dark": 1, T.UNKNOWN: 1}
    assert list(T.tone_counts(["dark", "very light"])) == ["very light", "dark"]   # lightest first


def test_an_ita_off_the_usual_scale_says_so():
    """atan2 keeps bluish skin (b* < 0) light, but past 90° it is no value of the usual scale."""
    assert T.ita_text(41.4) == "ITA 41°" and T.ita_text(-30.0) == "ITA -30°"
    assert T.ita_text(112.0).startswith("ITA 112°, beyond the usual scale of ±90°")
    rgb = (lab2rgb(np.array([[[80.0, 0.0, -6.0]]])) * 255).round().astype(np.uint8)   # light, a little blue
    ita = T.estimate_ita(Image.fromarray(np.tile(rgb, (60, 80, 1))))
    assert ita > 90 and T.tone_group(ita) == "very light" and "beyond" in T.ita_text(ita)


def test_the_training_note_says_how_thin_the_data_are():
    counts = {"very light": 900, "light": 80, "dark": 20}
    note = T.training_note("dark", counts)
    assert "20 of the model's 1,000 training photos (2.0%)" in note and "less reliable" in note
    assert "less reliable" not in T.training_note("very light", counts)
    assert "0 of the model's 1,000" in T.training_note("tan", counts)
    assert "no skin-tone counts" in T.training_note("light", None)
    assert "Too little skin" in T.training_note(T.UNKNOWN, counts)


def test_a_tables_photos_use_their_masks(tmp_path):
    rows = []
    for k, (L, b) in enumerate([(75, 12), (45, 20)]):
        photo, mask = skin(L, 8, b, seed=k)
        photo.save(tmp_path / f"p{k}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / f"m{k}.png")
        rows.append({"path": str(tmp_path / f"p{k}.png"), "mask_path": str(tmp_path / f"m{k}.png")})
    rows.append({"path": str(tmp_path / "p1.png"), "mask_path": None})      # no mask: the automatic outline
    itas = T.table_itas(pd.DataFrame(rows))
    assert [T.tone_group(v) for v in itas] == ["very light", "brown", "brown"]


def test_the_subgroup_table_reads_tones_lightest_first_with_intervals(ham7):
    from test_operating import _eval, _thr

    from derm_core.evaluate import lab_views as L
    from derm_core.evaluate import operating as O
    ev = _eval(ham7, n=300)
    tones = np.array(["very light"] * 200 + ["brown"] * 90 + ["dark"] * 10)
    ev = O.EvalSet(ev.taxonomy, ev.y, ev.logits, groups={"skin_tone": tones})
    sub = O.subgroup_table(ev, _thr(ham7), "tier:dangerous")
    assert list(sub["group"]) == ["very light", "brown", "dark"] and list(sub["n"]) == [200, 90, 10]
    row = sub.iloc[0]
    if not np.isnan(row["sensitivity"]):
        low, high = (float(v) for v in row["sensitivity_95ci"].split("–"))
        assert low <= row["sensitivity"] <= high
    widths = [float(c.split("–")[1]) - float(c.split("–")[0]) for c in sub["specificity_95ci"] if c]
    assert widths[-1] > widths[0]                         # 10 photos: a much wider interval than 200
    pos = ev.target_truth_score("tier:dangerous")[0]
    if not pos[tones == "dark"].any():
        assert sub.iloc[2]["sensitivity_95ci"] is None
        shown, _, undefined = L.display_table(sub)
        assert shown.iloc[2]["sensitivity_95ci"] == L.UNDEFINED and undefined


def test_prediction_set_coverage_per_tone(ham7):
    from test_operating import _eval

    from derm_core.model import conformal as C
    ev = _eval(ham7, n=400)
    cal = C.Calibration.fit(ev.y[:200], ev.probs[:200], ham7.classes)
    tones = np.where(np.arange(200) % 4 == 0, "dark", "light")
    rows = C.per_group_rows(cal, ev.y[200:], ev.probs[200:], tones, (*T.TONE_NAMES, T.UNKNOWN), 0.9)
    assert [r["group"] for r in rows] == ["light", "dark"] and [r["photos"] for r in rows] == [150, 50]
    dark = C.evaluate(cal, ev.y[200:][tones == "dark"], ev.probs[200:][tones == "dark"], 0.9)
    assert rows[1]["coverage"] == dark["coverage"] and rows[1]["mean set size"] == dark["mean_set_size"]
