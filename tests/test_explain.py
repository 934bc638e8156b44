"""Explanation engine on a tiny untrained model: CAM, LIME, biopsy site, coordinate mapping."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import lesion_image, tiny_card
from derm_core.data.clinical import Clinical
from derm_core.data.taxonomy import load_taxonomy
from derm_core.explain import maps as E
from derm_core.model.checkpoint import ModelCard
from derm_core.model.networks import create_model
from derm_core.model.predictor import Predictor
from derm_core.model.transforms import to_pil_preview

INPUT = (64, 80)  # (H, W)


def _card(tta: bool) -> ModelCard:
    tax = load_taxonomy("ham7")
    return ModelCard.from_json({
        "arch": "tiny_test", "taxonomy": tax.to_dict(), "use_metadata": True,
        "preprocessing": {"input_size": list(INPUT), "mean": [0.5] * 3, "std": [0.25] * 3, "tta": tta},
        "temperature": 1.5,
        "thresholds": {"classes": {c: 0.5 for c in tax.classes}, "tiers": {"high-risk": 0.5, "dangerous": 0.5}},
    })


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    model = create_model("tiny_test", 7, use_metadata=True, pretrained="none")
    return Predictor(model, _card(tta=False), device=torch.device("cpu"), fast_path="fp32")


@pytest.fixture(scope="module")
def tta_predictor(predictor) -> Predictor:
    """The same network behind a card that asks for flip test-time augmentation."""
    return Predictor(predictor.model, _card(tta=True), device=torch.device("cpu"), fast_path="fp32")


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return lesion_image((90, 50, 40), size=(120, 90), seed=3)  # 4:3, so the crop cuts the sides


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(m._backward_pre_hooks) for m in model.modules())


# --------------------------------------------------------------------------- CAM

@pytest.mark.parametrize("method", sorted(E.CAM_METHODS))
def test_cam_heatmap_shape_range_target(predictor, photo, method):
    r = E.cam_heatmap(predictor, photo, method=method)
    assert r.heatmap.shape == INPUT and r.heatmap.dtype == np.float32
    assert 0.0 <= r.heatmap.min() and r.heatmap.max() <= 1.0
    assert r.target == int(predictor.probabilities([photo])[0].argmax())
    assert r.method == method and r.seconds > 0
    assert r.overlay(photo).size == (INPUT[1], INPUT[0])
    assert r.on_original().shape == (photo.size[1], photo.size[0])


def test_cam_explicit_target_and_clinical(predictor, photo):
    r = E.cam_heatmap(predictor, photo, target=4, clinical=Clinical(age=60, sex="male", site="back"))
    assert r.target == 4 and r.heatmap.shape == INPUT


def test_cam_leaves_shared_model_untouched(predictor, photo):
    model = predictor.model
    before = predictor.probabilities([photo])
    flags = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = _hooks(model)
    for method in ("gradcam", "eigencam"):
        E.cam_heatmap(predictor, photo, method=method)
    assert _hooks(model) == hooks == 0
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    np.testing.assert_array_equal(predictor.probabilities([photo]), before)
    assert not model.training and not predictor.lock.locked()


def test_cam_works_with_frozen_parameters_and_in_inference_mode(predictor, photo):
    reference = E.cam_heatmap(predictor, photo, target=2).heatmap
    flags = [p.requires_grad for p in predictor.model.parameters()]
    predictor.model.requires_grad_(False)  # e.g. frozen early layers, or a fully frozen model
    try:
        frozen = E.cam_heatmap(predictor, photo, target=2).heatmap
        with torch.inference_mode():
            inside = E.cam_heatmap(predictor, photo, target=2).heatmap
    finally:
        for p, f in zip(predictor.model.parameters(), flags):
            p.requires_grad_(f)
    np.testing.assert_allclose(frozen, reference, atol=1e-6)
    np.testing.assert_allclose(inside, reference, atol=1e-6)
    assert reference.max() > 0


def test_cam_concurrent_calls_match_sequential(predictor, photo):
    """Two sessions explaining at once, while a third keeps predicting on the shared model
    (its forward passes must not reach the CAM's hooks)."""
    other = lesion_image((40, 20, 30), size=(90, 120), seed=5)
    jobs = [(photo, "gradcam", None), (other, "gradcam", 1), (photo, "gradcam++", 3), (other, "eigencam", None)] * 2
    sequential = [E.cam_heatmap(predictor, im, target=t, method=m) for im, m, t in jobs]
    done = threading.Event()

    def predicting_session():
        while not done.is_set():
            predictor.probabilities([other, photo])

    with ThreadPoolExecutor(max_workers=3) as pool:
        busy = pool.submit(predicting_session)
        try:
            parallel = list(pool.map(lambda j: E.cam_heatmap(predictor, j[0], target=j[2], method=j[1]), jobs))
        finally:
            done.set()
        busy.result()
    for s, p in zip(sequential, parallel):
        assert s.target == p.target
        np.testing.assert_array_equal(s.heatmap, p.heatmap)
    assert _hooks(predictor.model) == 0


def test_cam_rejects_bad_arguments(predictor, photo):
    with pytest.raises(ValueError, match="gradcam\\+\\+.*scorecam"):
        E.cam_heatmap(predictor, photo, method="gradcamm")
    for bad in (-1, 7, 1.0):
        with pytest.raises(ValueError, match="target"):
            E.cam_heatmap(predictor, photo, target=bad)
    r = E.cam_heatmap(predictor, photo)
    with pytest.raises(ValueError, match="photo"):
        r.overlay(photo.resize((50, 50)))


def test_baselines():
    h = np.zeros(INPUT, np.float32)
    h[10, 70] = 1.0
    assert E.cam_peak(h) == (70, 10)
    assert E.crop_centre(INPUT) == (40, 32)


# --------------------------------------------------------------------------- geometry

SIZES = [(120, 90), (90, 120), (200, 100), (40, 30), (80, 64), (241, 181)]


@pytest.mark.parametrize("size", SIZES)
def test_geometry_matches_resize_cover(size):
    """A photo whose red/green values encode x/y: what the model sees at each pixel must be
    the colour of the original point the geometry maps that pixel to."""
    w, h = size
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    ramp = np.stack([u * 255 / (w - 1), v * 255 / (h - 1), np.zeros_like(u)], -1)
    seen = np.asarray(to_pil_preview(Image.fromarray(np.rint(ramp).astype(np.uint8)), INPUT), dtype=float)
    g = E.CoverGeometry.of(size, INPUT)
    x, y = np.meshgrid(np.arange(INPUT[1]), np.arange(INPUT[0]))
    ox, oy = g.to_original(x, y)
    inner = (slice(3, -3), slice(3, -3))  # the resize filter clamps at the photo's edges
    np.testing.assert_allclose(seen[..., 0][inner], (ox * 255 / (w - 1))[inner], atol=1.5)
    np.testing.assert_allclose(seen[..., 1][inner], (oy * 255 / (h - 1))[inner], atol=1.5)


@pytest.mark.parametrize("size", SIZES)
def test_geometry_round_trip_and_heatmap_back_mapping(size):
    g = E.CoverGeometry.of(size, INPUT)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, INPUT[1] - 1, 50), rng.uniform(0, INPUT[0] - 1, 50)
    bx, by = g.to_model(*g.to_original(x, y))
    np.testing.assert_allclose(bx, x, atol=1e-9)
    np.testing.assert_allclose(by, y, atol=1e-9)
    # A heatmap linear in x and y comes back as the same linear function of the mapped point.
    xx, yy = np.meshgrid(np.arange(INPUT[1]), np.arange(INPUT[0]))
    heat = (0.3 * xx / INPUT[1] + 0.6 * yy / INPUT[0]).astype(np.float32)
    back = g.heatmap_to_original(heat, fill=-1.0)
    w, h = size
    assert back.shape == (h, w)
    uu, vv = np.meshgrid(np.arange(w), np.arange(h))
    mx, my = g.to_model(uu, vv)
    seen = (mx >= -0.5) & (mx <= INPUT[1] - 0.5) & (my >= -0.5) & (my <= INPUT[0] - 0.5)
    assert (back[~seen] == -1.0).all() and seen.mean() > 0.5
    expect = 0.3 * np.clip(mx, 0, INPUT[1] - 1) / INPUT[1] + 0.6 * np.clip(my, 0, INPUT[0] - 1) / INPUT[0]
    np.testing.assert_allclose(back[seen], expect[seen], atol=1e-5)
    px, py = g.point_to_original(INPUT[1] - 1, INPUT[0] - 1)
    assert 0 <= px < w and 0 <= py < h


def test_mask_to_model_follows_the_geometry():
    mask = np.zeros((90, 120), bool)
    mask[30:60, 50:90] = True
    small = E.mask_to_model(mask, INPUT)
    g = E.CoverGeometry.of((120, 90), INPUT)
    ys, xs = np.nonzero(small)
    u, v = g.to_original(xs, ys)
    assert small.shape == INPUT and small.any()
    assert u.min() > 48 and u.max() < 91 and v.min() > 28 and v.max() < 61


def test_geometry_rejects_bad_sizes():
    with pytest.raises(ValueError):
        E.CoverGeometry.of((0, 10), INPUT)
    with pytest.raises(ValueError, match="heatmap"):
        E.CoverGeometry.of((120, 90), INPUT).heatmap_to_original(np.zeros((10, 10)))


# --------------------------------------------------------------------------- LIME

def test_lime_is_reproducible(predictor, photo):
    a = E.lime_explanation(predictor, photo, num_samples=24, n_segments=16, seed=7, batch_size=12)
    b = E.lime_explanation(predictor, photo, num_samples=24, n_segments=16, seed=7, batch_size=12)
    c = E.lime_explanation(predictor, photo, num_samples=24, n_segments=16, seed=8, batch_size=12)
    np.testing.assert_array_equal(a.segments, b.segments)
    assert a.weights == b.weights and a.target == b.target
    assert a.weights != c.weights
    assert a.segments.shape == INPUT and set(a.weights) == set(range(a.segments.max() + 1))
    assert a.target == int(predictor.probabilities([photo])[0].argmax())
    assert a.num_samples == 24 and a.seconds > 0
    assert E.lime_agreement(a, b) == 1.0


def test_lime_explicit_target_and_quickshift(predictor, photo):
    r = E.lime_explanation(predictor, photo, target=5, num_samples=20, segmentation="quickshift")
    assert r.target == 5 and r.segments.shape == INPUT
    assert set(np.unique(r.segments)) == set(range(r.segments.max() + 1)) == set(r.weights)


def test_lime_classifier_matches_the_predictor(predictor, tta_predictor, photo):
    """LIME sees the triage's calibrated probabilities: from the single un-flipped view by
    default (one pass per image), exactly the predictor's forward with ``tta=True``."""
    preview = np.stack([np.asarray(to_pil_preview(photo, INPUT))] * 2)
    tta_predictor.runner.eager = True   # count the images each backbone pass sees (per photo of the batch of 2) on
    # the eager network (the frozen copy runs no Python hooks): 1 view per photo, or the 4 flips
    passes = []
    hook = predictor.model.backbone.register_forward_hook(lambda m, inp, out: passes.append(len(inp[0]) // 2))
    try:
        single = E._classifier_fn(tta_predictor, None)(preview)
        n_single = sum(passes)
        full = E._classifier_fn(tta_predictor, None, tta=True)(preview)
        n_full = sum(passes) - n_single
        expect_single, expect_full = predictor.probabilities([photo]), tta_predictor.probabilities([photo])
    finally:
        hook.remove()
    assert (n_single, n_full) == (1, 4)
    np.testing.assert_allclose(single, np.repeat(expect_single, 2, 0), atol=1e-6)
    np.testing.assert_allclose(full, np.repeat(expect_full, 2, 0), atol=1e-6)
    tta_predictor.runner.eager = False  # LIME's CPU fast path: the frozen copy, same probabilities
    np.testing.assert_allclose(E._classifier_fn(tta_predictor, None)(preview), single, atol=1e-5)
    assert tta_predictor.frozen() is not None


def test_default_target_is_the_triage_class(tta_predictor, photo):
    shown = int(tta_predictor.probabilities([photo])[0].argmax())
    assert E.predicted_class(tta_predictor, photo) == shown
    assert E.cam_heatmap(tta_predictor, photo).target == shown
    assert E.lime_explanation(tta_predictor, photo, num_samples=10, n_segments=10).target == shown


def test_lime_rejects_bad_arguments(predictor, photo):
    for kwargs in ({"num_samples": 0}, {"n_segments": 0}, {"batch_size": -1}, {"batch_size": True}, {"target": 9},
                   {"segmentation": "felzenszwalb"}):
        with pytest.raises(ValueError):
            E.lime_explanation(predictor, photo, **{"num_samples": 10, **kwargs})


def _quadrants(weights: dict[int, float], size=INPUT, image_size=None) -> E.LimeResult:
    H, W = size
    seg = (np.arange(H)[:, None] >= H // 2) * 2 + (np.arange(W)[None, :] >= W // 2)
    return E.LimeResult(seg.astype(np.int32), weights, 0, 0.0, 10, image_size or (W, H))


def test_lime_overlay_colours():
    lime = _quadrants({0: 0.5, 1: -0.4, 2: 0.0, 3: 0.1})
    grey = Image.new("RGB", (INPUT[1], INPUT[0]), (128, 128, 128))
    out = np.asarray(lime.overlay(grey, alpha=0.5)).astype(int)
    r, g = out[..., 0], out[..., 1]
    assert g[10, 10] > 128 > r[10, 10]          # supporting: green tint
    assert g[50, 70] > 128 > r[50, 70]          # weakly supporting, still among the top k
    assert r[10, 70] > 128 > g[10, 70]          # opposing: red tint
    assert (out[50, 10] == 128).all()           # zero weight: untouched
    assert tuple(out[31, 10]) == tuple(E.GREEN.astype(int))  # outlined at its edge
    only_top = np.asarray(lime.overlay(grey, k=1)).astype(int)
    assert (only_top[50, 70] == 128).all()      # k=1 keeps only the strongest


def test_lime_agreement_measures_pixel_overlap():
    a = _quadrants({0: 0.5, 1: 0.4, 2: -0.1, 3: -0.2})
    b = _quadrants({0: 0.5, 1: -0.4, 2: -0.1, 3: 0.2})
    assert E.lime_agreement(a, a, k=2) == 1.0
    assert E.lime_agreement(a, b, k=1) == 1.0
    assert E.lime_agreement(a, b, k=2) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        E.lime_agreement(a, _quadrants({0: 1.0}, size=(32, 40)))


# --------------------------------------------------------------------------- biopsy site

def _random_case(seed: int):
    """Irregular superpixels, random weights and a random lesion of awkward shape."""
    rng = np.random.default_rng(seed)
    H, W = INPUT
    pts = rng.uniform([0, 0], [H, W], (int(rng.integers(5, 40)), 2))
    yy, xx = np.mgrid[:H, :W]
    seg = np.argmin((yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2, axis=-1)
    seg = np.unique(seg, return_inverse=True)[1].reshape(H, W).astype(np.int32)
    weights = {s: float(rng.normal()) for s in range(seg.max() + 1)}
    cy, cx, r = rng.uniform(15, 50), rng.uniform(15, 65), rng.uniform(8, 30)
    d = np.hypot(yy - cy, xx - cx)
    kind = seed % 4
    if kind == 0:     # ring
        mask = (d < r) & (d > r * rng.uniform(0.3, 0.8))
    elif kind == 1:   # C shape
        mask = (d < r) & (d > r * 0.5) & ~((xx > cx) & (np.abs(yy - cy) < r * 0.3))
    elif kind == 2:   # blob of two discs
        mask = (d < r * 0.6) | (np.hypot(yy - cy - 10, xx - cx + 12) < r * 0.4)
    else:             # scattered noise
        mask = rng.random((H, W)) < 0.3
    if not mask.any():
        mask[int(cy), int(cx)] = True
    return E.LimeResult(seg, weights, 0, 0.0, 10, (W, H)), mask


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 100_000))
def test_biopsy_point_is_always_inside_lesion_and_region(seed):
    lime, mask = _random_case(seed)
    site = E.biopsy_site(lime, mask, k=3)
    assert mask[site.y, site.x] and site.region[site.y, site.x]
    assert not (site.region & ~mask).any()
    assert lime.segments[site.y, site.x] == site.segments[0]
    assert site.score == lime.weights[site.segments[0]]
    if not site.note:  # preferred rule: supporting superpixels, mostly inside the lesion
        assert all(lime.weights[s] > 0 for s in site.segments)
        assert all(mask[lime.segments == s].mean() >= 0.5 for s in site.segments)
        assert list(site.segments) == [s for s in lime.supporting() if mask[lime.segments == s].mean() >= 0.5][:3]


def test_biopsy_skips_the_hole_of_a_ring():
    H, W = INPUT
    yy, xx = np.mgrid[:H, :W]
    d = np.hypot(yy - 32, xx - 40)
    seg = np.where(d < 10, 0, np.where(d < 22, 1 + (xx > 40), 3)).astype(np.int32)
    lime = E.LimeResult(seg, {0: 0.9, 1: 0.5, 2: 0.2, 3: 0.1}, 0, 0.0, 10, (W, H))
    ring = (d >= 10) & (d < 22)
    site = E.biopsy_site(lime, ring, k=2)
    assert site.segments == (1, 2) and site.note == ""
    assert ring[site.y, site.x] and seg[site.y, site.x] == 1


def test_biopsy_point_inside_a_c_shaped_superpixel():
    """The centroid of a C lies in its gap: the site must not."""
    H, W = INPUT
    yy, xx = np.mgrid[:H, :W]
    d = np.hypot(yy - 32, xx - 40)
    c = (d < 25) & (d > 12) & ~((xx > 40) & (np.abs(yy - 32) < 8))
    lime = E.LimeResult(c.astype(np.int32), {0: -0.1, 1: 0.8}, 0, 0.0, 10, (W, H))
    site = E.biopsy_site(lime, None)
    cy, cx = np.argwhere(c).mean(0)
    assert not c[int(round(cy)), int(round(cx))]  # the centroid is outside: a real trap
    assert c[site.y, site.x] and site.region[site.y, site.x]


def test_biopsy_fallbacks():
    lime = _quadrants({0: -0.5, 1: -0.4, 2: -0.3, 3: -0.01})
    mask = np.zeros(INPUT, bool)
    mask[5:20, 5:30] = True  # only in quadrant 0
    site = E.biopsy_site(lime, mask)
    assert site.note and site.segments == (0,) and mask[site.y, site.x]
    # support outside the lesion only: fall back to the best part of the lesion
    lime = _quadrants({0: -0.5, 1: 0.4, 2: 0.3, 3: 0.2})
    site = E.biopsy_site(lime, mask)
    assert site.note and mask[site.y, site.x]
    # no mask: the whole image; empty mask: the whole image, with a note
    site = E.biopsy_site(lime, None)
    assert site.segments == (1, 2, 3) and lime.segments[site.y, site.x] == 1 and not site.note
    site = E.biopsy_site(lime, np.zeros(INPUT, bool))
    assert site.note and lime.segments[site.y, site.x] == 1


def test_biopsy_accepts_photo_size_mask_and_rejects_bad_ones():
    lime = _quadrants({0: 0.5, 1: 0.4, 2: 0.3, 3: 0.2}, image_size=(120, 90))
    photo_mask = np.zeros((90, 120), bool)
    photo_mask[50:85, 60:110] = True  # lower right of the photo
    site = E.biopsy_site(lime, photo_mask, k=1)
    assert E.mask_to_model(photo_mask, INPUT)[site.y, site.x] and site.segments == (3,)
    u, v = lime.geometry.point_to_original(site.x, site.y)
    assert photo_mask[v, u]
    with pytest.raises(ValueError, match="mask"):
        E.biopsy_site(lime, np.ones((10, 10), bool))
    with pytest.raises(ValueError):
        E.biopsy_site(lime, None, k=0)


def test_lime_then_biopsy_on_a_photo(predictor, photo):
    """End to end as on the triage page: LIME, the automatic lesion mask, the site, back to the photo."""
    from derm_core.explain.lesion import suggest_mask
    lime = E.lime_explanation(predictor, photo, num_samples=30, n_segments=25)
    mask = suggest_mask(photo)
    site = E.biopsy_site(lime, mask)
    assert E.mask_to_model(mask, INPUT)[site.y, site.x]
    u, v = lime.geometry.point_to_original(site.x, site.y)
    assert 0 <= u < photo.size[0] and 0 <= v < photo.size[1]


def test_paired_lime_sampling_is_antithetic_and_balanced():
    """Every sample is followed by its complement: each superpixel is on in exactly half the
    samples, the first sample is the photo itself, and the batches reach the classifier."""
    segments = np.repeat(np.arange(6), 4).reshape(4, 6).astype(np.int32)   # 6 superpixels
    image = np.full((4, 6, 3), 200, np.uint8)
    fudged = np.zeros_like(image)
    seen = []

    def classifier(batch):
        seen.append(len(batch))
        on = (batch[..., 0] > 0).mean(axis=(1, 2))           # share of the photo left on
        return np.stack([on, 1 - on], 1)

    data, labels = E.PairedLimeExplainer(random_state=3).data_labels(image, fudged, segments, classifier, 40,
                                                                    batch_size=16)
    assert data.shape == (40, 6) and seen == [16, 16, 8]
    assert (data[0] == 1).all() and (data[1] == 0).all()
    assert (data[0::2] + data[1::2] == 1).all()
    assert (data.sum(0) == 20).all()
    assert np.allclose(labels[:, 0], data.mean(1))          # the perturbed photos match the on/off rows
    again, _ = E.PairedLimeExplainer(random_state=3).data_labels(image, fudged, segments, classifier, 40)
    assert (again == data).all()


@pytest.mark.parametrize("metadata", [True, False])
def test_frozen_network_matches_the_eager_one(metadata):
    """LIME's fast path (TorchScript, batch norm folded) gives the eager network's logits at every batch size."""
    torch.manual_seed(0)
    tax = load_taxonomy("ham7")
    model = create_model("tiny_test", len(tax.classes), metadata, "none")
    for m in model.modules():                     # non-trivial batch-norm statistics to fold
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    pred = Predictor(model, tiny_card(tax, use_metadata=metadata), device=torch.device("cpu"), fast_path="fp32")
    frozen = pred.frozen()
    assert frozen is not None and pred.frozen() is frozen            # built once
    for n in (1, 5, 16):
        x = torch.randn(n, 3, *pred.card.input_size).contiguous(memory_format=torch.channels_last)
        meta = pred.meta_tensor(Clinical(age=50, sex="female", site="back"), n)
        with torch.inference_mode():
            eager = pred.model(x, meta)
            fast = frozen(x) if meta is None else frozen(x, meta)
        assert torch.allclose(fast, eager, atol=1e-4), float((fast - eager).abs().max())
