"""Out-of-scope detection: warn when a photo does not look like the lesions the model knows.

Three scores, higher = less like the training data: ``msp`` (1 - max softmax),
``energy`` (-T·logsumexp(logits/T), Liu et al. 2020) and ``feature`` (cosine distance of
the penultimate embedding to the nearest class centroid of the training split). The
threshold is set on in-distribution validation images only (``IN_DIST_PASS`` of them pass);
AUROC against clearly out-of-scope images (:func:`out_of_scope_images`) is reported.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image, ImageDraw

from derm_core.evaluate.metrics import auc_score
from derm_core.model.calibration import softmax

SCORES = ("msp", "energy", "feature")
DEFAULT_SCORE = "feature"
IN_DIST_PASS = 0.95

_NATURAL = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass", "gravel",
            "horse", "hubble_deep_field", "logo", "moon", "page", "rocket", "text", "cell")


def _normalise(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def class_centroids(embeddings: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Unit-length mean direction of each class's (unit-length) embeddings."""
    e = _normalise(np.asarray(embeddings, dtype=np.float64))
    return _normalise(np.stack([e[y == k].mean(0) if (y == k).any() else np.zeros(e.shape[1]) for k in range(n_classes)]))


def scores(logits: np.ndarray, embeddings: np.ndarray, centroids: np.ndarray, temperature: float = 1.0) -> dict:
    """All out-of-scope scores for a batch (higher = more out of scope)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    m = z.max(1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]
    sim = _normalise(np.asarray(embeddings, dtype=np.float64)) @ centroids.T
    return {"msp": 1.0 - softmax(logits, temperature).max(1), "energy": -temperature * lse, "feature": 1.0 - sim.max(1)}


@dataclass(frozen=True)
class OodDetector:
    centroids: np.ndarray
    score: str
    threshold: float
    temperature: float

    def __call__(self, logits: np.ndarray, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(score, flagged) per image."""
        s = scores(logits, embeddings, self.centroids, self.temperature)[self.score]
        return s, s > self.threshold


def out_of_scope_images(n: int = 200, size: tuple[int, int] = (200, 150), seed: int = 0) -> list[Image.Image]:
    """Clearly out-of-scope photos made offline: natural images shipped with scikit-image
    (cat, astronaut, coffee, text pages, ...) as random crops, blank and flat-colour images,
    noise, and synthetic screenshots of user interfaces."""
    rng = np.random.default_rng(seed)
    natural = []
    for name in _NATURAL:
        a = getattr(skimage.data, name)()
        natural.append(Image.fromarray(a).convert("RGB"))
    out = []
    w, h = size
    for i in range(n):
        kind = i % 5
        if kind in (0, 1):  # natural photo crops
            src = natural[rng.integers(len(natural))]
            cw = int(src.width * rng.uniform(0.5, 1.0))
            ch = min(src.height, int(cw * h / w))
            x0, y0 = rng.integers(0, src.width - cw + 1), rng.integers(0, src.height - ch + 1)
            out.append(src.crop((x0, y0, x0 + cw, y0 + ch)).resize(size))
        elif kind == 2:  # blank / flat colour
            out.append(Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3))))
        elif kind == 3:  # noise
            out.append(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
        else:  # a screenshot: window chrome, text lines, buttons
            img = Image.new("RGB", size, (250, 250, 250))
            d = ImageDraw.Draw(img)
            d.rectangle([0, 0, w, 14], fill=tuple(int(c) for c in rng.integers(40, 120, 3)))
            for k in range(int(rng.integers(4, 9))):
                y = 20 + k * 14
                d.text((6, y), "Lorem ipsum dolor sit amet " * 2, fill=(20, 20, 20))
            d.rectangle([w - 60, h - 24, w - 8, h - 8], fill=(30, 100, 200))
            out.append(img)
    return out


def fit_detector(train_emb, train_y, val_logits, val_emb, temperature: float, n_classes: int,
                 score: str = DEFAULT_SCORE) -> OodDetector:
    """Centroids from the training split; threshold passing ``IN_DIST_PASS`` of validation images."""
    if score not in SCORES:
        raise ValueError(f"unknown out-of-scope score {score!r}; choose one of {SCORES}")
    c = class_centroids(train_emb, np.asarray(train_y), n_classes)
    s = scores(val_logits, val_emb, c, temperature)[score]
    return OodDetector(c, score, float(np.quantile(s, IN_DIST_PASS)), temperature)


def auroc_report(det: OodDetector, in_logits, in_emb, out_logits, out_emb) -> dict:
    """AUROC of every score (in-distribution = 0, out-of-scope = 1) and the chosen rule's rates."""
    s_in = scores(in_logits, in_emb, det.centroids, det.temperature)
    s_out = scores(out_logits, out_emb, det.centroids, det.temperature)
    y = np.r_[np.zeros(len(in_logits)), np.ones(len(out_logits))]
    rep = {f"auroc_{k}": auc_score(y, np.r_[s_in[k], s_out[k]]) for k in SCORES}
    rep["in_distribution_flagged"] = float(np.mean(s_in[det.score] > det.threshold))
    rep["out_of_scope_flagged"] = float(np.mean(s_out[det.score] > det.threshold))
    rep["n_in"], rep["n_out"] = len(in_logits), len(out_logits)
    return rep


def detector_path(card_path) -> Path:
    p = Path(card_path)
    return p.with_name(p.stem + ".ood.safetensors")


def load_detector(card) -> OodDetector | None:
    """The model's detector, or None when the card has none (or its file is unusable)."""
    return load_detector_checked(card)[0]


def load_detector_checked(card) -> tuple[OodDetector | None, str | None]:
    """(detector, None), or (None, why the out-of-scope warning is unavailable) when the card
    names a detector whose file is missing, truncated or for other classes; (None, None) for a
    card without one."""
    from safetensors.torch import load_file
    cfg = card.out_of_scope
    if cfg is None or card.path is None:
        return None, None
    path = detector_path(card.path)
    fix = f"refit it with `python -m derm_core fit-ood --model {card.path}`"
    try:
        c = load_file(path)["centroids"].double().numpy()
    except Exception as e:  # noqa: BLE001 - a missing/corrupt side file only disables the warning
        why = "is missing" if not path.is_file() else f"cannot be read (truncated or corrupt: {type(e).__name__})"
        return None, f"the out-of-scope warning is unavailable: {path.name} {why}; {fix}"
    if c.ndim != 2 or c.shape[0] != len(card.classes) or not np.isfinite(c).all():
        return None, (f"the out-of-scope warning is unavailable: {path.name} holds centroids of shape "
                      f"{tuple(c.shape)}, not one per class of the model ({len(card.classes)}); {fix}")
    return OodDetector(c, cfg.score, float(cfg.threshold), float(card.temperature)), None


def fit_for_model(model, card, table, split, seed: int = 0, n_out: int = 300, progress: bool = True) -> dict:
    """Fit on the model's train/val split, measure AUROC on its test split vs generated
    out-of-scope images, save ``<card>.ood.safetensors`` and the card's ``out_of_scope`` entry
    (returned, as JSON)."""
    import torch

    from derm_core.model.card import OutOfScope
    from derm_core.model.checkpoint import atomic_save_tensors, write_card
    from derm_core.model.predictor import Predictor

    p = Predictor(model, card, out_of_scope=False)
    parts = {s: table[(split == s).to_numpy()].reset_index(drop=True) for s in ("train", "val", "test")}
    pred = {s: p.predict_table(part, embeddings=True, progress=progress) for s, part in parts.items() if len(part)}
    det = fit_detector(pred["train"]["embeddings"], parts["train"]["y"].to_numpy(), pred["val"]["logits"],
                       pred["val"]["embeddings"], card.temperature, len(card.classes))
    logits, embs = [], []
    images = out_of_scope_images(n_out, seed=seed)
    for i in range(0, len(images), 64):
        z, e = p.forward(p.preprocess(images[i:i + 64]))
        logits.append(z)
        embs.append(e)
    ref = pred.get("test", pred["val"])
    rep = auroc_report(det, ref["logits"], ref["embeddings"], np.concatenate(logits), np.concatenate(embs))
    rep["evaluated_on"] = "test split" if "test" in pred else "validation split"
    atomic_save_tensors(detector_path(card.path), {"centroids": torch.from_numpy(det.centroids).float()})
    card = card.with_(out_of_scope=OutOfScope(det.score, det.threshold, IN_DIST_PASS, detector_path(card.path).name, rep))
    write_card(card)
    return card.to_json()["out_of_scope"]
