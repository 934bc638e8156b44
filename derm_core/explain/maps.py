"""Why the model said what it said: Grad-CAM heatmaps, LIME superpixels and a biopsy site.

Everything is computed on the photo exactly as the network sees it (resize-to-cover plus
centre-crop to the model's (H, W), see :class:`~derm_core.model.transforms.ResizeCover`);
:class:`CoverGeometry` is the one place that maps points and heatmaps back onto the
original photo, so the CAM overlay and the biopsy marker can never disagree.

The :class:`~derm_core.model.predictor.Predictor` is shared between Streamlit sessions. CAM
methods register hooks, and a hook on a module fires for every thread's forward pass, so a
prediction running in another session would slip its activations into the CAM's. CAM therefore
hooks a private view of the network (its own module objects over the same weight memory) and,
as the predictor asks of explanation methods, runs under ``predictor.lock``. The shared
model is never hooked and never gets gradients. LIME only runs inference and needs neither.

Both explain the network's single, un-flipped view (flip TTA would make LIME four times
slower); by default they explain the class the predictor itself shows, TTA included.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
from lime.lime_image import LimeImageExplainer
from lime.wrappers.scikit_image import SegmentationAlgorithm
from PIL import Image
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, ScoreCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from scipy import ndimage
from skimage.segmentation import find_boundaries, slic
from torch import nn

from derm_core.data.clinical import Clinical
from derm_core.explain.lesion import Box, crop_point_to_photo, mask_iou
from derm_core.model.calibration import softmax
from derm_core.model.networks import get_arch
from derm_core.model.transforms import to_pil_preview

CAM_METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM, "scorecam": ScoreCAM}
CAM_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "eigencam": "EigenCAM", "scorecam": "Score-CAM"}  # as written
SEGMENTATIONS = ("slic", "quickshift")
CUT_AWAY_SHARE = 0.02   # a greyed strip thinner than this share of the crop is not worth a caption

# LIME defaults, for < 3 s LIME + biopsy with lite0 at 150x200 on a 2-core CPU (README
# "Explanations" has the measurements; bench/bench_explain.py re-measures speed and agreement):
# * ~30 SLIC superpixels: lime's own quickshift defaults give only ~25 segments at this small
#   size; 20 or 25 SLIC superpixels were no stabler than 30.
# * 300 samples in antithetic pairs (PairedLimeExplainer), through the predictor's frozen
#   TorchScript copy: about 2.3 s per photo; mean top-5 self-agreement over seeds 0.82
#   (200 paired: 0.74 in 1.9 s; 200 random: 0.65; lime's 1000-sample defaults: 0.87).
# * batches of 16: per-image CPU cost rises with batch size on a small-cache CPU (32: +25%).
LIME_SAMPLES = 300
LIME_MIN_SAMPLES = 2       # the photo itself and one perturbation
LIME_SEGMENTS = 30
LIME_BATCH = 16
SCORECAM_BATCH = 64

GREEN = np.array([0, 200, 0], dtype=np.float32)
RED = np.array([230, 0, 0], dtype=np.float32)


# --------------------------------------------------------------------------- geometry

@dataclass(frozen=True)
class CoverGeometry:
    """Where :class:`ResizeCover` put a photo of ``image_size`` (W, H) inside the model input.

    Points use pixel-index coordinates (the centre of pixel ``(i, j)`` is ``(i, j)``), the
    convention of the resize (``align_corners=False``). Both directions are one affine map.
    """

    image_size: tuple[int, int]   # original photo (width, height)
    input_size: tuple[int, int]   # model input (H, W)
    scale_x: float                # resized width / original width
    scale_y: float
    left: int                     # centre-crop offset inside the resized photo
    top: int

    @classmethod
    def of(cls, image_size: tuple[int, int], input_size: tuple[int, int]) -> "CoverGeometry":
        """The geometry of ``ResizeCover(input_size)`` on a photo of ``image_size`` (W, H)."""
        w, h = (int(v) for v in image_size)
        H, W = (int(v) for v in input_size)
        if min(w, h, H, W) < 1:
            raise ValueError(f"sizes must be positive, got image {image_size} and input {input_size}")
        scale = max(H / h, W / w)  # the same arithmetic as ResizeCover, rounding included
        rh, rw = max(H, round(h * scale)), max(W, round(w * scale))
        return cls((w, h), (H, W), rw / w, rh / h, int(round((rw - W) / 2.0)), int(round((rh - H) / 2.0)))

    def to_original(self, x, y):
        """Model-input point(s) -> original-photo point(s) (floats; arrays are fine)."""
        return ((np.asarray(x, dtype=float) + self.left + 0.5) / self.scale_x - 0.5,
                (np.asarray(y, dtype=float) + self.top + 0.5) / self.scale_y - 0.5)

    def to_model(self, u, v):
        """Original-photo point(s) -> model-input point(s): the inverse of :meth:`to_original`."""
        return ((np.asarray(u, dtype=float) + 0.5) * self.scale_x - 0.5 - self.left,
                (np.asarray(v, dtype=float) + 0.5) * self.scale_y - 0.5 - self.top)

    def heatmap_to_original(self, heatmap: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """A model-input-size map resampled (bilinear) onto the original photo's pixels.

        Parts of the photo the centre-crop cut away get ``fill``: the model never saw them.
        """
        heatmap = np.asarray(heatmap, dtype=np.float32)
        if heatmap.shape != self.input_size:
            raise ValueError(f"heatmap is {heatmap.shape}, expected the model input size {self.input_size}")
        w, h = self.image_size
        x, y = self.to_model(np.arange(w), np.arange(h))
        mx, in_x = _interp_matrix(x, self.input_size[1])
        my, in_y = _interp_matrix(y, self.input_size[0])
        out = my @ heatmap @ mx.T  # bilinear resampling is separable for an axis-aligned map
        out[~in_y, :] = fill
        out[:, ~in_x] = fill
        return out

    def point_to_original(self, x: float, y: float) -> tuple[int, int]:
        """A model-input pixel as the nearest pixel of the original photo (for markers)."""
        u, v = self.to_original(x, y)
        w, h = self.image_size
        return int(np.clip(np.rint(u), 0, w - 1)), int(np.clip(np.rint(v), 0, h - 1))

    def point_to_photo(self, x: float, y: float, box: Box | None = None) -> tuple[int, int]:
        """A model-input pixel as the nearest pixel of the whole photo.

        This geometry is that of the crop ``box`` (left, top, right, bottom) of the photo, as
        the triage page explains a crop; None: of the whole photo, as ``explain`` on the
        command line does. Both report the same original-photo pixels this way.

        Raises:
            ValueError: the box is not the size of the image this geometry is for.
        """
        if box is not None and (int(box[2]) - int(box[0]), int(box[3]) - int(box[1])) != tuple(self.image_size):
            raise ValueError(f"crop box {tuple(box)} is not the size of the explained image {self.image_size}")
        point = self.point_to_original(x, y)
        return point if box is None else crop_point_to_photo(point, box)

    def mask_to_original(self, mask: np.ndarray) -> np.ndarray:
        """A model-input-size boolean mask (e.g. a biopsy region) on the original image's pixels:
        bool (H, W) of the image, False where the centre-crop cut the image away."""
        return self.heatmap_to_original(np.asarray(mask, dtype=np.float32)) > 0.5


def _interp_matrix(pos: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(len(pos), n) linear-interpolation weights and which positions fall inside the n pixels."""
    inside = (pos >= -0.5) & (pos <= n - 0.5)
    p = np.clip(pos, 0, n - 1)
    i0 = np.floor(p).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    f = (p - i0).astype(np.float32)
    m = np.zeros((len(pos), n), dtype=np.float32)
    rows = np.arange(len(pos))
    np.add.at(m, (rows, i0), 1 - f)
    np.add.at(m, (rows, i1), f)
    return m, inside


def mask_to_model(mask: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """An original-size boolean mask brought through the model's resize-to-cover and crop."""
    img = Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, "L")
    return np.asarray(to_pil_preview(img, input_size)) >= 128


# --------------------------------------------------------------------------- Grad-CAM family

@dataclass(frozen=True, eq=False)
class CamResult:
    heatmap: np.ndarray            # float32 (H, W) in [0, 1] at the model input size
    target: int                    # explained class index
    method: str
    seconds: float
    image_size: tuple[int, int]    # original photo (width, height)
    member: int | None = None      # the ensemble member whose layer it shows (None: a single network)

    @property
    def geometry(self) -> CoverGeometry:
        return CoverGeometry.of(self.image_size, self.heatmap.shape)

    def overlay(self, image: Image.Image, image_weight: float = 0.55) -> Image.Image:
        """The heatmap (jet colours) blended over the photo as the model saw it."""
        _check_same_photo(image, self.image_size)
        base = np.asarray(to_pil_preview(image, self.heatmap.shape), dtype=np.float32) / 255.0
        return Image.fromarray(show_cam_on_image(base, self.heatmap, use_rgb=True, image_weight=image_weight))

    def on_original(self) -> np.ndarray:
        """The heatmap at the original photo's size (0 where the crop cut the photo)."""
        return self.geometry.heatmap_to_original(self.heatmap)


class _BoundMeta(nn.Module):
    """pytorch-grad-cam calls ``model(x)``: this binds the clinical metadata to every call."""

    def __init__(self, model: nn.Module, meta: torch.Tensor | None):
        super().__init__()
        self.model = model
        self.meta = meta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, None if self.meta is None else self.meta.expand(len(x), -1))


def _private_view(model: nn.Module) -> nn.Module:
    """The model's module tree copied over the same weight and buffer memory (no tensor is
    copied): hooks on it stay invisible to other threads, and its parameters are frozen
    aliases, so no ``.grad`` ever lands on the shared model."""
    memo = {id(p): nn.Parameter(p.detach(), requires_grad=False) for p in model.parameters()}
    memo.update({id(b): b for b in model.buffers()})
    return copy.deepcopy(model, memo)


def _graph_cut(module, args, output):
    """Start the autograd graph at the CAM layer: the gradient there is all Grad-CAM needs,
    it exists although every parameter is frozen, and backward never walks the backbone."""
    if torch.is_grad_enabled():
        return output.detach().requires_grad_()
    return None


def _cam_layer(model: nn.Module) -> nn.Module:
    path = get_arch(model.arch).cam_layer
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ValueError(f"the registry's CAM layer {path!r} does not exist in this {model.arch} model") from None


def _check_target(target: int | None, n_classes: int) -> None:
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, np.integer))
                               or not 0 <= target < n_classes):
        raise ValueError(f"target must be a class index in 0..{n_classes - 1} or None, got {target!r}")


def _check_same_photo(image: Image.Image, image_size: tuple[int, int]) -> None:
    if tuple(image.size) != tuple(image_size):
        raise ValueError(f"this explanation was made for a {image_size[0]}x{image_size[1]} photo, "
                         f"got {image.size[0]}x{image.size[1]}")


def cam_member(predictor, member: int | None) -> int | None:
    """The ensemble member a CAM explains (default the first), checked; None for one network.
    A class-activation map needs one convolutional layer, so an ensemble's is one member's."""
    members = getattr(predictor.model, "members", None)
    if members is None:
        return None
    m = 0 if member is None else member
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 0 <= m < len(members):
        raise ValueError(f"member must be 0..{len(members) - 1} for this {len(members)}-member ensemble, got {member!r}")
    return int(m)


def cam_scope(card, member: int | None) -> str:
    """What a class-activation map explains, for captions: an ensemble's named member (LIME,
    which needs only the outputs, explains the whole ensemble); '' for one network."""
    if member is None or not card.is_ensemble:
        return ""
    return f"member {member + 1} of {len(card.members)}: {card.members[member].label}"


def cam_heatmap(predictor, image: Image.Image, target: int | None = None, method: str = "gradcam",
                clinical: Clinical | None = None, member: int | None = None) -> CamResult:
    """Class-activation heatmap of ``target`` (default: the class the predictor predicts,
    flip TTA included) for one photo, computed on the single, un-flipped view. For an ensemble
    it is the map of one ``member`` (default the first; see :func:`cam_member`), for the
    class the ensemble predicts.

    The shared model is left exactly as it was: no hooks, no gradients, same outputs.
    """
    try:
        cam_cls = CAM_METHODS[method]
    except (KeyError, TypeError):
        raise ValueError(f"unknown CAM method {method!r}; choose one of {sorted(CAM_METHODS)}") from None
    _check_target(target, len(predictor.taxonomy.classes))
    start = time.perf_counter()
    member = cam_member(predictor, member)
    target = predicted_class(predictor, image, clinical) if target is None else int(target)
    heat = None
    with predictor.lock, torch.inference_mode(False), torch.enable_grad():
        view = _private_view(predictor.model)
        if member is not None:
            view = view.members[member]
        layer = _cam_layer(view)
        layer.register_forward_hook(_graph_cut, prepend=True)  # runs before CAM's own hooks
        x = predictor.preprocess([image])
        with cam_cls(model=_BoundMeta(view, predictor.meta_tensor(clinical, 1)), target_layers=[layer]) as cam:
            cam.batch_size = SCORECAM_BATCH  # only ScoreCAM reads it
            heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])[0]
    if heat is None:  # BaseCAM.__exit__ swallows IndexError after printing it
        raise RuntimeError(f"{method} failed inside pytorch-grad-cam (see the message printed above)")
    heat = np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float32)), 0.0, 1.0)
    if heat.shape != tuple(predictor.card.input_size):
        raise RuntimeError(f"{method} returned a {heat.shape} map for a {predictor.card.input_size} input")
    return CamResult(heat, target, method, time.perf_counter() - start, tuple(image.size), member)


def predicted_class(predictor, image: Image.Image, clinical: Clinical | None = None) -> int:
    """The class the triage shows for this photo: the predictor's own forward (TTA included)."""
    return int(predictor.probabilities([image], clinical)[0].argmax())


def cam_peak(heatmap: np.ndarray) -> tuple[int, int]:
    """Baseline biopsy point: the heatmap's maximum, as (x, y)."""
    y, x = np.unravel_index(int(np.argmax(heatmap)), np.shape(heatmap))
    return int(x), int(y)


def crop_centre(input_size: tuple[int, int]) -> tuple[int, int]:
    """Baseline biopsy point: the centre of the model input, as (x, y)."""
    H, W = input_size
    return W // 2, H // 2


# --------------------------------------------------------------------------- LIME

@dataclass(frozen=True, eq=False)
class LimeResult:
    segments: np.ndarray           # int (H, W) superpixel labels 0..n-1 at the model input size
    weights: dict[int, float]      # superpixel -> LIME weight for ``target`` (> 0 supports it)
    target: int
    seconds: float
    num_samples: int
    image_size: tuple[int, int]    # original photo (width, height)

    @property
    def geometry(self) -> CoverGeometry:
        return CoverGeometry.of(self.image_size, self.segments.shape)

    def supporting(self, k: int | None = None) -> list[int]:
        """Superpixels with positive weight, strongest first (at most ``k``)."""
        ids = sorted((s for s, w in self.weights.items() if w > 0), key=lambda s: (-self.weights[s], s))
        return ids[:k] if k is not None else ids

    def opposing(self, k: int | None = None) -> list[int]:
        """Superpixels with negative weight, strongest first (at most ``k``)."""
        ids = sorted((s for s, w in self.weights.items() if w < 0), key=lambda s: (self.weights[s], s))
        return ids[:k] if k is not None else ids

    def support_mask(self, k: int = 5, area: float | None = None) -> np.ndarray:
        """Pixels of the ``k`` strongest supporting superpixels or, with ``area``, of as many of
        them (strongest first) as it takes to cover that share of the image."""
        ids = self.supporting()
        if area is not None:
            if not 0.0 < area <= 1.0:
                raise ValueError(f"area must be in (0, 1], got {area}")
            sizes = np.bincount(self.segments.ravel())[ids]
            k = int(np.searchsorted(np.cumsum(sizes), area * self.segments.size)) + 1
        return np.isin(self.segments, ids[:k])

    def overlay(self, image: Image.Image, k: int | None = 5, alpha: float = 0.45) -> Image.Image:
        """The photo as the model saw it, the ``k`` strongest supporting superpixels tinted
        green and the ``k`` strongest opposing ones red, each outlined in its colour."""
        _check_same_photo(image, self.image_size)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
        out = np.asarray(to_pil_preview(image, self.segments.shape), dtype=np.float32).copy()
        edges = find_boundaries(self.segments, mode="inner", background=-1)  # label 0 is a superpixel too
        for ids, colour in ((self.supporting(k), GREEN), (self.opposing(k), RED)):
            region = np.isin(self.segments, ids)
            out[region] = (1 - alpha) * out[region] + alpha * colour
            out[region & edges] = colour
        return Image.fromarray(np.rint(out).astype(np.uint8))

    @property
    def cut_away(self) -> bool:
        """Whether the model's centre-crop left a visible part of the explained image out (more
        than :data:`CUT_AWAY_SHARE` of it; an image not of the model input's aspect):
        :meth:`overlay_on_image` greys that part, and a caption says so only when it shows."""
        g, (w, h), (H, W) = self.geometry, self.image_size, self.segments.shape
        return 1 - min(1.0, W / (w * g.scale_x)) * min(1.0, H / (h * g.scale_y)) > CUT_AWAY_SHARE

    def segments_on_image(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """int (h, w) superpixel label of each pixel of the explained image drawn at ``size`` (w, h)
        (default: its own size), from the nearest model-input pixel; -1 where the model's
        centre-crop cut the image away (the model never saw those pixels)."""
        w, h = self.image_size
        out_w, out_h = (int(v) for v in (size or (w, h)))
        x, y = self.geometry.to_model((np.arange(out_w) + 0.5) * w / out_w - 0.5,
                                      (np.arange(out_h) + 0.5) * h / out_h - 0.5)
        H, W = self.segments.shape
        in_x, in_y = (x >= -0.5) & (x <= W - 0.5), (y >= -0.5) & (y <= H - 0.5)
        xi, yi = np.clip(np.rint(x), 0, W - 1).astype(int), np.clip(np.rint(y), 0, H - 1).astype(int)
        seg = self.segments[yi[:, None], xi[None, :]].copy()
        seg[~(in_y[:, None] & in_x[None, :])] = -1
        return seg

    def overlay_on_image(self, image: Image.Image, width: int | None = None, k: int | None = 5,
                         alpha: float = 0.45) -> Image.Image:
        """:meth:`overlay` over the whole explained image (the triage page's crop box) rather than
        the model's centre-crop of it, so it shows the same area as the biopsy-site picture beside
        it; ``width`` px wide (default: the image's own width). The parts the centre-crop cut
        away are greyed: the model never saw them."""
        _check_same_photo(image, self.image_size)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
        w, h = self.image_size
        size = (int(width), max(1, round(h * int(width) / w))) if width else (w, h)
        img = image.convert("RGB")
        out = np.asarray(img.resize(size, Image.LANCZOS) if size != img.size else img, dtype=np.float32).copy()
        seg = self.segments_on_image(size)
        edges = find_boundaries(seg, mode="inner", background=-2)
        thick = max(1, round(size[0] / self.segments.shape[1]))     # one model-input pixel wide, as in :meth:`overlay`
        if thick > 1:
            edges = ndimage.binary_dilation(edges, iterations=thick - 1)
        unseen = seg < 0
        out[unseen] = 0.4 * out[unseen] + 0.6 * 160.0
        for ids, colour in ((self.supporting(k), GREEN), (self.opposing(k), RED)):
            region = np.isin(seg, ids)
            out[region] = (1 - alpha) * out[region] + alpha * colour
            out[region & edges] = colour
        return Image.fromarray(np.rint(out).astype(np.uint8))


def segment(preview: np.ndarray, method: str = "slic", n_segments: int = LIME_SEGMENTS, seed: int = 0) -> np.ndarray:
    """Superpixels labelled 0..n-1 (LIME needs consecutive labels). SLIC is deterministic by
    construction (grid-initialised k-means); quickshift uses lime's own default parameters."""
    if method == "slic":
        seg = slic(preview, n_segments=n_segments, compactness=10.0, sigma=1.0, start_label=0, channel_axis=-1)
    elif method == "quickshift":
        seg = SegmentationAlgorithm("quickshift", kernel_size=4, max_dist=200, ratio=0.2, random_seed=seed)(preview)
    else:
        raise ValueError(f"unknown segmentation {method!r}; choose one of {list(SEGMENTATIONS)}")
    return np.unique(seg, return_inverse=True)[1].reshape(seg.shape).astype(np.int32)


def _classifier_fn(predictor, clinical: Clinical | None, tta: bool = False):
    """LIME's classifier: (N, H, W, 3) uint8 model-size images -> calibrated probabilities.

    A single view per image unless ``tta``: the predictor's flip-averaging (when its model
    card asks for it) would make every LIME sample cost four forward passes.
    """
    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            # The images are already model-sized, so the predictor's own transform only
            # converts and normalises them (its resize/crop are identities).
            batch = np.array(batch, dtype=np.uint8)  # a writable copy, as torch wants
            x = predictor.transform(torch.from_numpy(batch).permute(0, 3, 1, 2))
            x = x.to(predictor.device, memory_format=torch.channels_last)
            return softmax(predictor.logits(x, clinical, tta=tta), predictor.card.temperature)
    return predict


def _labels(data, image, fudged_image, segments, classifier_fn, batch_size) -> np.ndarray:
    """The classifier's output on each perturbed photo: superpixels on in ``data`` from ``image``,
    the rest from ``fudged_image`` (lime fills a copy of the photo, so both are uint8)."""
    labels = []
    for i in range(0, len(data), batch_size):
        keep = data[i:i + batch_size][:, segments].astype(bool)[..., None]   # (b, H, W, 1)
        labels.append(classifier_fn(np.where(keep, image, fudged_image)))
    return np.concatenate(labels)


class PairedLimeExplainer(LimeImageExplainer):
    """lime's image explainer with antithetic sampling: every random on/off pattern of the
    superpixels is followed by its complement. Each superpixel is then on in exactly half of
    the samples and the pairs cancel each other's chance correlations, which lowers the
    variance of the fitted weights at the same number of model calls. Regression, kernel and
    explanation objects stay lime's own; the perturbed photos are also built vectorised."""

    def data_labels(self, image, fudged_image, segments, classifier_fn, num_samples, batch_size=10):
        n = int(segments.max()) + 1
        half = self.random_state.randint(0, 2, ((num_samples + 1) // 2, n))
        half[0] = 1                                   # the photo itself (and, paired, all switched off)
        data = np.empty((num_samples, n), dtype=half.dtype)
        data[0::2], data[1::2] = half, 1 - half[: num_samples // 2]
        return data, _labels(data, image, fudged_image, segments, classifier_fn, batch_size)


class OrthogonalLimeExplainer(PairedLimeExplainer):
    """Paired sampling on a randomised two-level orthogonal design (issue 12): the on/off patterns
    are rows of a Hadamard matrix (columns = superpixels, chosen at random, each flipped at random,
    rows shuffled, all from the seed), each followed by its complement (a foldover). Every
    superpixel is on in half the samples and every pair of superpixels is uncorrelated *exactly*,
    not just on average, and the foldover keeps two-superpixel interactions out of the main
    effects: the regression's chance correlations, the noise that makes random LIME unstable,
    are gone. lime's kernel, regression and explanation objects are unchanged."""

    def data_labels(self, image, fudged_image, segments, classifier_fn, num_samples, batch_size=10):
        from scipy.linalg import hadamard
        rs = self.random_state
        n = int(segments.max()) + 1
        order = 1 << max(2, int(np.ceil(np.log2(n + 1))))            # a Hadamard order with a spare column
        rows = []
        while sum(len(r) for r in rows) < (num_samples + 1) // 2:
            h = hadamard(order)[:, 1:]                                 # drop the constant column
            h = h[:, rs.permutation(order - 1)[:n]] * rs.choice((-1, 1), n)
            rows.append((h[rs.permutation(order)] > 0).astype(int))
        half = np.concatenate(rows)[: (num_samples + 1) // 2]
        half[0] = 1                                                    # the photo itself (and all switched off)
        data = np.empty((num_samples, n), dtype=half.dtype)
        data[0::2], data[1::2] = half, 1 - half[: num_samples // 2]
        return data, _labels(data, image, fudged_image, segments, classifier_fn, batch_size)


SAMPLINGS = {"paired": PairedLimeExplainer, "random": LimeImageExplainer, "orthogonal": OrthogonalLimeExplainer}


def lime_explanation(predictor, image: Image.Image, target: int | None = None, num_samples: int = LIME_SAMPLES,
                     n_segments: int = LIME_SEGMENTS, seed: int = 0, clinical: Clinical | None = None,
                     batch_size: int = LIME_BATCH, segmentation: str = "slic", tta: bool = False,
                     sampling: str = "paired") -> LimeResult:
    """LIME superpixel weights for ``target`` (default: the class the predictor predicts).

    Reproducible: the same photo and arguments give identical weights (seeded sampling,
    deterministic segmentation). ``sampling="paired"`` (default) draws antithetic pairs, see
    :class:`PairedLimeExplainer`; ``sampling="random"``, ``segmentation="quickshift"`` and
    ``num_samples=1000`` reproduce lime's own defaults (``n_segments`` is then unused). The perturbed photos go
    through the network once each; ``tta=True`` uses the predictor's full forward instead
    (flip test-time augmentation when the model card enables it: four times slower).
    """
    _check_target(target, len(predictor.taxonomy.classes))
    for name, v in (("num_samples", num_samples), ("n_segments", n_segments), ("batch_size", batch_size)):
        if isinstance(v, bool) or not (isinstance(v, (int, np.integer)) and v >= 1):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if num_samples < LIME_MIN_SAMPLES:
        raise ValueError(f"num_samples must be at least {LIME_MIN_SAMPLES} (the photo itself and one perturbation)")
    start = time.perf_counter()
    preview = np.asarray(to_pil_preview(image, predictor.card.input_size))
    segments = segment(preview, segmentation, n_segments, seed)
    target = predicted_class(predictor, image, clinical) if target is None else int(target)
    if sampling not in SAMPLINGS:
        raise ValueError(f"unknown sampling {sampling!r}; choose one of {list(SAMPLINGS)}")
    explainer = SAMPLINGS[sampling](random_state=seed, feature_selection="none")
    exp = explainer.explain_instance(
        preview, _classifier_fn(predictor, clinical, tta), labels=(target,), top_labels=None,
        num_features=int(segments.max()) + 1, num_samples=int(num_samples), batch_size=int(batch_size),
        segmentation_fn=lambda _: segments, random_seed=seed)
    weights = {int(s): float(w) for s, w in exp.local_exp[target]}
    return LimeResult(segments, weights, target, time.perf_counter() - start, int(num_samples), tuple(image.size))


def lime_agreement(a: LimeResult, b: LimeResult, k: int = 5, area: float | None = None) -> float:
    """IoU of the pixel areas of the ``k`` strongest supporting superpixels of two explanations.

    Comparing pixels, not superpixel ids, makes explanations with different segmentations
    (e.g. SLIC vs quickshift) comparable. Superpixels of different sizes cap the IoU of a
    top-k comparison, so ``area`` compares the strongest support covering that share of the
    image instead (see :meth:`LimeResult.support_mask`). No support on either side: 1.0.
    """
    if a.segments.shape != b.segments.shape:
        raise ValueError(f"explanations are for different input sizes: {a.segments.shape} vs {b.segments.shape}")
    return mask_iou(a.support_mask(k, area), b.support_mask(k, area))


# --------------------------------------------------------------------------- biopsy site

@dataclass(frozen=True, eq=False)
class BiopsySite:
    x: int                         # model-input pixel coordinates (see CoverGeometry)
    y: int
    region: np.ndarray             # bool (H, W): the chosen superpixels inside the lesion
    score: float                   # LIME weight of the superpixel holding the point
    segments: tuple[int, ...]      # chosen superpixels, strongest first
    note: str = ""                 # how the site was chosen when the preferred rule failed
    suggested: bool = True         # False: the explanation carries no signal; no site to show (see note)


MIN_LIME_SIGNAL = 1e-6             # largest |LIME weight| (probability units) below which there is nothing to explain


def _deepest_point(region: np.ndarray) -> tuple[int, int]:
    """The pixel of ``region`` farthest from its edge (and from the image border): always inside
    the region, unlike a centroid of a ring- or C-shaped one."""
    dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def biopsy_site(lime: LimeResult, lesion_mask: np.ndarray | None = None, k: int = 3,
                min_inside: float = 0.5) -> BiopsySite:
    """Where to biopsy: inside the strongest LIME-supporting superpixel that lies in the lesion.

    A superpixel is in the lesion when at least ``min_inside`` of its pixels are. The region
    is the ``k`` strongest such superpixels (intersected with the lesion); the point is the
    deepest pixel of the strongest one, so it lies inside both it and the lesion. Without a
    supporting superpixel in the lesion, the best-weighted superpixel touching the lesion is
    used; without a mask, the whole image counts as lesion.

    Args:
        lesion_mask: bool mask at the model input size, or at the original photo's size (it
            is then brought through the same resize-to-cover and crop).
    """
    if not (isinstance(k, (int, np.integer)) and k >= 1):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not 0.0 < min_inside <= 1.0:
        raise ValueError(f"min_inside must be in (0, 1], got {min_inside}")
    seg = lime.segments
    note = ""
    if lesion_mask is None:
        mask = np.ones(seg.shape, dtype=bool)
    else:
        mask = np.asarray(lesion_mask, dtype=bool)
        w, h = lime.image_size
        if mask.shape != seg.shape:
            if mask.shape != (h, w):
                raise ValueError(f"lesion mask is {mask.shape}; expected the model input size {seg.shape} "
                                 f"or the photo's size {(h, w)}")
            mask = mask_to_model(mask, seg.shape)
        if not mask.any():
            mask = np.ones(seg.shape, dtype=bool)
            note = "the lesion mask is empty (or outside the part the model sees): the whole image was used"
    n = int(seg.max()) + 1
    area = np.bincount(seg.ravel(), minlength=n)
    inside = np.bincount(seg.ravel(), weights=mask.ravel(), minlength=n)
    chosen = [s for s in lime.supporting() if inside[s] >= min_inside * area[s]][:k]
    if not chosen:
        touching = [s for s in range(n) if inside[s] > 0]
        best = max(touching, key=lambda s: (lime.weights.get(s, 0.0), inside[s] / area[s], -s))
        chosen = [best]
        note = note or "no supporting superpixel lies in the lesion: the best-weighted part of the lesion was used"
    x, y = _deepest_point((seg == chosen[0]) & mask)
    region = np.isin(seg, chosen) & mask
    peak = max((abs(float(w)) for w in lime.weights.values()), default=0.0)
    if not peak >= MIN_LIME_SIGNAL:   # a flat photo: no part of it changes the output (issue 13)
        return BiopsySite(x, y, np.zeros(seg.shape, dtype=bool), peak, (), f"no biopsy site suggested: the "
                          f"explanation carries no signal (largest LIME weight {peak:.1e}, under {MIN_LIME_SIGNAL:g}); "
                          f"no part of the photo changes the model's output, as for a flat or featureless photo",
                          suggested=False)
    return BiopsySite(x, y, region, float(lime.weights.get(chosen[0], 0.0)), tuple(int(s) for s in chosen), note)
