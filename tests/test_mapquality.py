"""Map quality: deletion/insertion faithfulness, lesion share, ROAD, randomisation helpers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import lesion_image
from derm_core.data.taxonomy import load_taxonomy
from derm_core.explain import mapquality as Q
from derm_core.explain import maps as E
from derm_core.model.checkpoint import ModelCard
from derm_core.model.predictor import Predictor

SIZE = (48, 64)   # (H, W)


class TextureTopLeft(nn.Module):
    """Class 0's logit is the amount of fine texture in the top-left quadrant; every other logit is 0.
    The true explanation of class 0 is therefore that quadrant."""

    use_metadata = False

    def forward(self, x, meta=None):
        q = x[:, :, : SIZE[0] // 2, : SIZE[1] // 2]
        tex = (q[..., 1:] - q[..., :-1]).abs().mean((1, 2, 3))
        return torch.cat([20 * tex[:, None], 0 * tex[:, None].repeat(1, 6)], 1)   # traceable at any batch size


@pytest.fixture(scope="module")
def texture_predictor() -> Predictor:
    tax = load_taxonomy("ham7")
    card = ModelCard.from_json({"arch": "tiny_test", "taxonomy": tax.to_dict(), "use_metadata": False,
                      "preprocessing": {"input_size": list(SIZE), "mean": [0.5] * 3, "std": [0.5] * 3},
                      "temperature": 1.0,
                      "thresholds": {"classes": {c: 0.3 for c in tax.classes},
                                     "tiers": {"high-risk": 0.3, "dangerous": 0.3}}})
    return Predictor(TextureTopLeft(), card, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def noise_photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (SIZE[0], SIZE[1], 3)).astype(np.uint8))


def _quadrant(top_left: bool) -> np.ndarray:
    m = np.zeros(SIZE, np.float32)
    h, w = SIZE[0] // 2, SIZE[1] // 2
    if top_left:
        m[:h, :w] = 1.0
    else:
        m[h:, w:] = 1.0
    return m


def test_the_true_map_is_faithful_and_a_wrong_one_is_not(texture_predictor, noise_photo):
    good = Q.map_quality(texture_predictor, noise_photo, _quadrant(True), 0, method="truth")
    bad = Q.map_quality(texture_predictor, noise_photo, _quadrant(False), 0, method="wrong")
    assert good.faithful and not bad.faithful
    assert good.deletion < good.random_deletion < bad.deletion
    assert good.insertion > bad.insertion
    assert good.p_full == pytest.approx(bad.p_full) and good.p_full > 1 / 7
    # curves start at the whole photo (deletion) and at the blurred photo (insertion)
    assert good.deletion_curve[0] == pytest.approx(good.p_full)
    assert good.insertion_curve[-1] == pytest.approx(good.p_full, rel=1e-5)
    assert len(good.deletion_curve) == Q.STEPS + 1
    assert "faithful" in good.summary() and "NOT faithful" in bad.summary()
    # same inputs, same numbers (the random baseline is seeded)
    again = Q.map_quality(texture_predictor, noise_photo, _quadrant(True), 0)
    assert again.random_deletion == good.random_deletion
    with pytest.raises(ValueError):
        Q.map_quality(texture_predictor, noise_photo, np.zeros((5, 5)), 0)


def test_lesion_share():
    mask = np.zeros(SIZE, bool)
    mask[:24, :32] = True
    inside, area = Q.lesion_share(_quadrant(True), mask)
    assert inside == pytest.approx(1.0) and area == pytest.approx(0.25)
    inside, _ = Q.lesion_share(_quadrant(False), mask)
    assert inside == pytest.approx(0.0)
    inside, _ = Q.lesion_share(np.ones(SIZE), mask)     # a map that ignores the lesion gets its area share
    assert inside == pytest.approx(0.25)
    neg = -_quadrant(True) + _quadrant(False)            # negative weight (opposes) is not counted
    assert Q.lesion_share(neg, mask)[0] == pytest.approx(0.0)
    assert np.isnan(Q.lesion_share(np.zeros(SIZE), mask)[0])


def test_summary_flags_a_map_off_the_lesion(texture_predictor, noise_photo):
    mask = np.zeros(SIZE, bool)
    mask[24:, 32:] = True                              # the "lesion" is where the map is not
    r = Q.map_quality(texture_predictor, noise_photo, _quadrant(True), 0, lesion_mask=mask)
    assert r.inside_lesion == pytest.approx(0.0) and r.lesion_area == pytest.approx(0.25)
    assert "surrounding skin" in r.summary()
    d = r.to_dict()
    assert d["inside_lesion"] == 0.0 and d["faithful"] is True and len(d["insertion_curve"]) == Q.STEPS + 1


def test_on_real_explanations_of_a_tiny_model(tiny_predictor):
    photo = lesion_image((60, 30, 30), size=(120, 90), seed=1)
    lime = E.lime_explanation(tiny_predictor, photo, num_samples=40)
    att = Q.lime_attribution(lime)
    assert att.shape == tuple(tiny_predictor.card.input_size)
    s = lime.supporting(1)[0]
    assert np.all(att[lime.segments == s] == pytest.approx(lime.weights[s]))
    mask = np.zeros((90, 120), bool)
    mask[20:70, 30:90] = True                              # at the photo's size: brought through the crop
    r = Q.map_quality(tiny_predictor, photo, att, lime.target, method="lime", lesion_mask=mask)
    assert 0 <= r.inside_lesion <= 1 and 0 < r.lesion_area < 1
    cam = E.cam_heatmap(tiny_predictor, photo, method="gradcam")
    r2 = Q.map_quality(tiny_predictor, photo, cam.heatmap, cam.target, method="gradcam")
    assert r2.inside_lesion is None and np.isfinite([r2.deletion, r2.insertion, r2.random_deletion]).all()
    road = Q.road_score(tiny_predictor, photo, cam.heatmap, cam.target, percentiles=(50,))
    assert np.isfinite(road) and -1 <= road <= 1


def test_randomised_copy_and_map_similarity(tiny_predictor):
    net = Q.randomised_copy(tiny_predictor.model, seed=1)
    a = [p.detach().clone() for p in tiny_predictor.model.parameters()]
    assert any(not torch.equal(p, q) for p, q in zip(net.parameters(), tiny_predictor.model.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(a, tiny_predictor.model.parameters()))   # original untouched
    head = Q.randomised_copy(tiny_predictor.model, seed=1, head_only=True)
    assert all(torch.equal(p, q) for p, q in zip(head.backbone.parameters(), tiny_predictor.model.backbone.parameters()))
    m = np.random.default_rng(0).random(SIZE)
    assert Q.map_similarity(m, m) == pytest.approx(1.0)
    assert Q.map_similarity(m, -m) == pytest.approx(-1.0)
    assert abs(Q.map_similarity(m, np.random.default_rng(1).random(SIZE))) < 0.1


def test_a_tie_with_random_order_gets_no_verdict():
    """Equal deletion areas (as the page shows them, two decimals) are neither faithful nor not."""
    q = Q.MapQuality("lime", 0, 0.9, deletion=1.0, insertion=1.0, random_deletion=1.0 + Q.TIE / 2,
                     inside_lesion=0.27, lesion_area=0.28)
    assert q.inconclusive and not q.faithful
    assert q.summary().startswith("no verdict") and "faithful" not in q.summary()
    assert "surrounding skin" not in q.summary()          # 27% vs 28%: not a finding either
    clear = Q.MapQuality("lime", 0, 0.9, deletion=0.5, insertion=1.0, random_deletion=0.8,
                         inside_lesion=0.1, lesion_area=0.3)
    assert clear.faithful and not clear.inconclusive and "surrounding skin" in clear.summary()
    assert clear.to_dict()["inconclusive"] is False
