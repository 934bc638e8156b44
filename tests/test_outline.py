"""The learned lesion outline for close-ups: trained, stored and checked like the model, and used
by the crop rule only where the classical outline falls short."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from derm_core.errors import ModelError
from derm_core.explain import lesion
from derm_core.explain.outline import CARD, WEIGHTS, Outline, OutlineTraining, fit_outline, record_metrics


def blob_photo(size=(200, 150), share=0.5, seed=0, light=(205, 160, 140)):
    """Skin with a dark ellipse covering about ``share`` of the frame, and its mask."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    a, b = np.sqrt(share * w * h / np.pi * 4 / 3), np.sqrt(share * w * h / np.pi * 3 / 4)
    cx, cy = w / 2 + rng.uniform(-0.05, 0.05) * w, h / 2 + rng.uniform(-0.05, 0.05) * h
    mask = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 < 1
    img = np.array(light, float) + rng.normal(0, 5, (h, w, 3))
    img[mask] = img[mask] * 0.4
    return Image.fromarray(img.clip(0, 255).astype(np.uint8)), mask


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """An outline network trained for one epoch on 40 synthetic photos."""
    root = tmp_path_factory.mktemp("outline")
    rows = []
    for i in range(40):
        im, mask = blob_photo(share=0.1 + 0.5 * (i % 5) / 4, seed=i)
        im.save(root / f"p{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / f"m{i}.png")
        rows.append({"path": str(root / f"p{i}.png"), "mask_path": str(root / f"m{i}.png")})
    rows.append({"path": str(root / "p0.png"), "mask_path": None})       # a photo without a mask is left out
    out = root / "bundle"
    card = fit_outline(pd.DataFrame(rows), out, {"split_file": "split.csv"},
                       OutlineTraining(epochs=1, batch=8), progress=lambda s: None)
    return card


def test_training_writes_weights_and_a_card_that_load_together(tiny):
    net = Outline.load(tiny.parent)
    assert net.card["training"]["n_photos"] == 40 and net.card["training"]["epochs"] == 1
    assert net.card["training"]["split_file"] == "split.csv"
    p = net.probability(blob_photo()[0])
    assert p.shape == (48, 64) and np.all((p >= 0) & (p <= 1))
    record_metrics(tiny, {"val": {"n": 3, "iou_at_least_0.6": 1.0, "median_iou": 0.9}})
    assert Outline.load(tiny).card["metrics"]["val"]["n"] == 3


def test_weights_that_do_not_belong_to_the_card_are_refused(tiny, tmp_path):
    import shutil
    folder = tmp_path / "b"
    shutil.copytree(tiny.parent, folder)
    weights = folder / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="hash differs"):
        Outline.load(folder)
    weights.unlink()
    with pytest.raises(ModelError, match="weights .* are missing"):
        Outline.load(folder)
    (folder / CARD).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ModelError, match="not an outline card"):
        Outline.load(folder)


def test_too_few_masks_is_an_error(tmp_path):
    with pytest.raises(ModelError, match="at least 32"):
        fit_outline(pd.DataFrame({"path": ["a.png"], "mask_path": [None]}), tmp_path, {}, progress=lambda s: None)


class Recorder:
    """A stand-in network that records its calls and outlines the photo's left half."""
    def __init__(self):
        self.calls = 0

    def mask(self, image, shape, fov=None):
        self.calls += 1
        m = np.zeros(shape, bool)
        m[:, : shape[1] // 2] = True
        return m


def test_only_a_close_up_is_outlined_by_the_network(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(lesion, "outline_network", lambda: rec)
    small, _ = blob_photo(share=0.05, seed=3)
    box = lesion.lesion_box(small)
    assert rec.calls == 0 and (box[2] - box[0]) * (box[3] - box[1]) < lesion.CLOSE_UP * 200 * 150
    close, _ = blob_photo(share=0.45, seed=3)
    assert lesion.lesion_box(close) == (0, 0, 100, 150) and rec.calls == 1     # the network's outline


def test_without_a_network_the_classical_outline_is_used(monkeypatch, tmp_path):
    lesion.use_outline(tmp_path / "none")         # nothing installed there
    try:
        assert lesion.outline_network() is None
        close, mask = blob_photo(share=0.45, seed=4)
        assert lesion.box_iou(lesion.lesion_box(close), lesion.mask_box(mask)) >= 0.6
    finally:
        lesion.use_outline(lesion.SHIPPED_MODEL.parent)


@pytest.mark.parametrize("light", [(205, 160, 140), (120, 80, 60)])
def test_the_shipped_network_outlines_a_close_up_on_light_and_dark_skin(light):
    net = lesion.outline_network()
    if net is None:
        pytest.skip("no outline network shipped")
    photo, mask = blob_photo(share=0.55, seed=5, light=light)
    found = net.mask(photo, mask.shape)
    assert found is not None and lesion.mask_iou(found, mask) >= 0.7
