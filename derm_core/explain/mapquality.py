"""How far to trust an explanation map (Grad-CAM family or LIME).

Two checks per map, both on the photo as the network sees it (model input size):

* **Faithfulness** (deletion / insertion, Petsiuk et al. 2018): the pixels are ranked by
  the map; deleting them in that order (replacing them with a heavily blurred copy of the
  photo) should make the explained class's calibrated probability fall fast, and inserting
  them into the blurred photo should make it rise fast. Each curve is summarised by its
  area (mean probability over 0..100% of the pixels, ``steps`` + 1 points) relative to the
  probability on the whole photo; a random pixel order (same seed every time) is the
  baseline: a faithful map deletes faster than random (``deletion < random_deletion``).
  All perturbed photos go through the network in one batched pass. :func:`road_score`
  offers the ROAD metric of ``pytorch_grad_cam.metrics`` (noisy linear imputation, which
  avoids the blur's tell-tale edges) for benchmarks: it is several times slower.
* **Where the map lies**: the share of the map's (positive) weight inside the lesion
  outline against its share of the area; the rest falls on surrounding skin, rulers, ink
  or hair (Winkler et al. 2019: ink marks raise a CNN's melanoma scores).

:func:`map_similarity` (Spearman rank correlation) serves the model-randomisation sanity
check (Adebayo et al. 2018) in ``bench/sanity_maps.py``: a randomised network's maps must differ.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter

from derm_core.data.clinical import Clinical
from derm_core.explain.maps import LimeResult, _classifier_fn, mask_to_model
from derm_core.model.transforms import to_pil_preview

STEPS = 10
BLUR_RADIUS = 12
TIE = 0.02            # deletion areas (per p_full) this close read as equal: the summary shows two decimals
SHARE_MARGIN = 0.05   # a map's share inside the lesion this far under the lesion's area share "points elsewhere"


@dataclass(frozen=True)
class MapQuality:
    method: str
    target: int
    p_full: float              # explained class's probability on the whole photo (single view)
    deletion: float            # area under the deletion curve / p_full (lower = more faithful)
    insertion: float           # area under the insertion curve / p_full (higher = more faithful)
    random_deletion: float     # the same deletion with a random pixel order (the baseline)
    inside_lesion: float | None   # share of the map's weight inside the lesion outline
    lesion_area: float | None     # share of the image the outline covers
    deletion_curve: tuple[float, ...] = ()
    insertion_curve: tuple[float, ...] = ()

    @property
    def faithful(self) -> bool:
        """Deleting the map's pixels first lowers the class clearly (by more than TIE) faster than
        deleting random pixels."""
        return self.deletion < self.random_deletion - TIE

    @property
    def inconclusive(self) -> bool:
        """Map order and random order lower the class about equally (within TIE): the photo's score
        hardly depends on which pixels go first, so the check says nothing either way."""
        return abs(self.deletion - self.random_deletion) <= TIE

    def to_dict(self) -> dict:
        return {"method": self.method, "target": self.target, "p_full": self.p_full, "deletion_auc": self.deletion,
                "insertion_auc": self.insertion, "random_deletion_auc": self.random_deletion,
                "faithful": self.faithful, "inconclusive": self.inconclusive, "inside_lesion": self.inside_lesion, "lesion_area": self.lesion_area,
                "deletion_curve": list(self.deletion_curve), "insertion_curve": list(self.insertion_curve)}

    def summary(self) -> str:
        """One line for the triage page and the case report."""
        verdict = ("no verdict: hiding its strongest pixels first and hiding random pixels lower the score about "
                   "equally" if self.inconclusive else
                   "faithful: hiding its strongest pixels first lowers the score faster than hiding random pixels"
                   if self.faithful else "NOT faithful: hiding its strongest pixels lowers the score no faster than "
                                         "hiding random pixels")
        s = (f"{verdict} (deletion {self.deletion:.2f} vs {self.random_deletion:.2f} random, insertion "
             f"{self.insertion:.2f}; lower deletion and higher insertion are better)")
        if self.inside_lesion is not None:
            s += (f"; {self.inside_lesion:.0%} of the map's weight lies inside the lesion outline, which covers "
                  f"{self.lesion_area:.0%} of the crop")
            if self.inside_lesion < self.lesion_area - SHARE_MARGIN:
                s += " — it points at surrounding skin, rulers or ink more than at the lesion"
        return s + "."


def lime_attribution(lime: LimeResult) -> np.ndarray:
    """A LIME explanation as a pixel map: each superpixel's weight (positive = supports the class)."""
    w = np.zeros(int(lime.segments.max()) + 1, dtype=np.float32)
    for s, v in lime.weights.items():
        w[s] = v
    return w[lime.segments]


def lesion_share(attribution: np.ndarray, lesion_mask: np.ndarray) -> tuple[float, float]:
    """(share of the map's positive weight inside the mask, share of the image the mask covers).

    A map that ignores where the lesion is gets about the area share; all weight inside gives 1.
    No positive weight at all: (nan, area)."""
    a = np.clip(np.nan_to_num(np.asarray(attribution, dtype=np.float64)), 0, None)
    m = np.asarray(lesion_mask, dtype=bool)
    if a.shape != m.shape:
        raise ValueError(f"map is {a.shape}, mask {m.shape}")
    total = a.sum()
    return (float(a[m].sum() / total) if total > 0 else float("nan")), float(m.mean())


def _order(attribution: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pixel indices, strongest first; ties (LIME's flat superpixels) broken at random, the same way every time."""
    a = np.asarray(attribution, dtype=np.float64).ravel()
    return np.lexsort((rng.random(a.size), -a))


def _curves(preview: np.ndarray, blurred: np.ndarray, orders: list[np.ndarray], steps: int):
    """Perturbed photos for deletion and insertion along each pixel order: (batch, how to split it)."""
    h, w, _ = preview.shape
    n = h * w
    cuts = np.rint(np.linspace(0, n, steps + 1)).astype(int)
    flat, flat_b = preview.reshape(n, 3), blurred.reshape(n, 3)
    batch = []
    for order in orders:
        for mode in ("deletion", "insertion"):
            for c in cuts:
                img = (flat if mode == "deletion" else flat_b).copy()
                img[order[:c]] = (flat_b if mode == "deletion" else flat)[order[:c]]
                batch.append(img.reshape(h, w, 3))
    return np.stack(batch)


def map_quality(predictor, image: Image.Image, attribution: np.ndarray, target: int, *, method: str = "",
                lesion_mask: np.ndarray | None = None, clinical: Clinical | None = None, steps: int = STEPS,
                seed: int = 0, batch_size: int = 32) -> MapQuality:
    """Faithfulness and lesion share of one map of ``target`` for ``image`` (already cropped).

    Args:
        attribution: (H, W) at the model input size (a CAM heatmap, :func:`lime_attribution`).
        lesion_mask: bool, at the model input size or the photo's size (brought through the crop).
    """
    size = tuple(predictor.card.input_size)
    attribution = np.asarray(attribution, dtype=np.float32)
    if attribution.shape != size:
        raise ValueError(f"map is {attribution.shape}, expected the model input size {size}")
    if not (isinstance(steps, (int, np.integer)) and steps >= 2):
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    pil = to_pil_preview(image, size)
    preview = np.asarray(pil)
    blurred = np.asarray(pil.filter(ImageFilter.GaussianBlur(BLUR_RADIUS)))
    rng = np.random.default_rng(seed)
    orders = [_order(attribution, rng), rng.permutation(attribution.size)]
    batch = _curves(preview, blurred, orders, steps)
    fn = _classifier_fn(predictor, clinical)
    probs = np.concatenate([fn(batch[i:i + batch_size]) for i in range(0, len(batch), batch_size)])[:, target]
    k = steps + 1
    dele, ins, rdel = probs[:k], probs[k:2 * k], probs[2 * k:3 * k]
    p_full = float(dele[0])
    norm = max(p_full, 1e-6)
    area = lambda c: float(np.trapezoid(c, dx=1.0 / steps) / norm)  # noqa: E731
    inside = area_share = None
    if lesion_mask is not None:
        m = np.asarray(lesion_mask, dtype=bool)
        if m.shape != size:
            m = mask_to_model(m, size)
        if m.any():
            inside, area_share = lesion_share(attribution, m)
    return MapQuality(method, int(target), p_full, area(dele), area(ins), area(rdel), inside, area_share,
                      tuple(float(v) for v in dele), tuple(float(v) for v in ins))


def road_score(predictor, image: Image.Image, attribution: np.ndarray, target: int,
               clinical: Clinical | None = None, percentiles=(20, 40, 60, 80)) -> float:
    """ROAD (Rong et al. 2022) through ``pytorch_grad_cam.metrics.road.ROADCombined``: mean over the
    percentiles of (drop in the class's softmax probability when the *least* relevant pixels are
    imputed - drop when the *most* relevant are) / 2. Higher = more faithful; about 0 = uninformative."""
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    from derm_core.explain.maps import _BoundMeta
    torch.manual_seed(0)    # the imputer adds noise
    x = predictor.preprocess([image])
    model = _BoundMeta(predictor.model, predictor.meta_tensor(clinical, 1))
    with torch.inference_mode():
        s = ROADCombined(percentiles=list(percentiles))(x, np.asarray(attribution, np.float32)[None],
                                                        [ClassifierOutputSoftmaxTarget(int(target))], model)
    return float(np.asarray(s).ravel()[0])


def map_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps' pixels (1 = same ranking, about 0 = unrelated)."""
    from scipy.stats import spearmanr
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def randomised_copy(model: torch.nn.Module, seed: int = 0, head_only: bool = False) -> torch.nn.Module:
    """A copy of the network with re-initialised weights (the head only, or every layer), for the
    model-randomisation sanity check. The original is untouched."""
    import copy
    net = copy.deepcopy(model).eval()
    torch.manual_seed(seed)
    mods = net.head.modules() if head_only else net.modules()
    for m in mods:
        if hasattr(m, "reset_parameters") and m is not net:
            m.reset_parameters()
    return net


def explanation_quality(predictor, image: Image.Image, explanation, lesion_mask: np.ndarray | None = None,
                        clinical: Clinical | None = None) -> MapQuality:
    """:func:`map_quality` of a :class:`~derm_core.explain.maps.CamResult` or :class:`~derm_core.explain.maps.LimeResult`."""
    if isinstance(explanation, LimeResult):
        return map_quality(predictor, image, lime_attribution(explanation), explanation.target, method="lime",
                           lesion_mask=lesion_mask, clinical=clinical)
    return map_quality(predictor, image, explanation.heatmap, explanation.target, method=explanation.method,
                       lesion_mask=lesion_mask, clinical=clinical)


def quality_fields(predictor, image: Image.Image, explanation, lesion_mask: np.ndarray | None = None,
                   clinical: Clinical | None = None) -> dict:
    """The ``map_quality`` entry of ``explain --json`` and of the case report: numbers plus the one-line summary."""
    q = explanation_quality(predictor, image, explanation, lesion_mask, clinical)
    d = q.to_dict()
    d["summary"] = q.summary()
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}
