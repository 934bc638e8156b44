"""Benchmark of the triage page's explanations on one HAM10000 photo (a script, not a test).

Prints Grad-CAM time, LIME + biopsy time at DermTriage's defaults, LIME at lime's own
defaults (1000 samples, quickshift, batches of 10), the speed-up, how well the fast LIME
agrees with lime's defaults and with itself across seeds, and where the biopsy site, the
CAM peak and the crop centre fall relative to the lesion.

    python bench/bench_explain.py [weights/default/model.json] [--threads 2] [--no-baseline]

The 1000-sample baseline costs tens of CPU-seconds: skip it with --no-baseline while
something else needs the CPU.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from derm_core.data.images import load_image  # noqa: E402
from derm_core.data.taxonomy import load_taxonomy  # noqa: E402
from derm_core.explain import maps as E  # noqa: E402
from derm_core.explain.lesion import suggest_mask  # noqa: E402
from derm_core.model.checkpoint import ModelCard, ModelError, read_card  # noqa: E402
from derm_core.model.networks import DEFAULT_ARCH, create_model, data_config  # noqa: E402
from derm_core.model.predictor import Predictor  # noqa: E402
from derm_core.settings import SHIPPED_MODEL  # noqa: E402

HAM_DIR = Path(os.environ.get("DERMTRIAGE_HAM10000", ROOT.parent / "shared" / "data" / "ham10000"))


def load_predictor(card_path: Path) -> tuple[Predictor, ModelCard | None, str]:
    """The trained model, or an untrained lite0 (ImageNet backbone, random head) if there is none."""
    device = torch.device("cpu")
    try:
        return Predictor.from_path(card_path, device), read_card(card_path), f"model {card_path}"
    except ModelError as e:
        tax = load_taxonomy("ham7")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = create_model(DEFAULT_ARCH, len(tax.classes), use_metadata=True, pretrained="offline")
        card = ModelCard.from_json({"arch": DEFAULT_ARCH, "taxonomy": tax.to_dict(), "use_metadata": True,
                          "preprocessing": data_config(DEFAULT_ARCH), "temperature": 1.0,
                          "thresholds": {"classes": {c: 0.5 for c in tax.classes},
                                         "tiers": {"high-risk": 0.5, "dangerous": 0.5}}})
        return (Predictor(model, card, device), None,
                f"UNTRAINED {DEFAULT_ARCH} (offline ImageNet backbone, random head) because: {e}")


def pick_image(card: ModelCard | None, images: Path, image_id: str | None) -> str:
    """The requested image, else the first of the model's test split, else the first file."""
    if image_id:
        return image_id
    split = card.split_file if card else None
    if split is not None and split.is_file():
        table = pd.read_csv(split, dtype=str)
        test = table.loc[table["split"] == "test", "image_id"]
        if len(test):
            return test.iloc[0]
    return sorted(images.glob("*.jpg"))[0].stem


def timed(fn, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def mean_pairwise(results: list[E.LimeResult], **kw) -> float:
    return float(np.mean([E.lime_agreement(a, b, **kw) for a, b in itertools.combinations(results, 2)]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("card", nargs="?", default=str(SHIPPED_MODEL), help="model card (.json) or run folder")
    ap.add_argument("--data", default=str(HAM_DIR), help="HAM10000 folder (images/, masks/)")
    ap.add_argument("--image", default=None, help="image_id (default: first of the model's test split)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (the target machine has 2 cores)")
    ap.add_argument("--seeds", type=int, default=3, help="LIME seeds for the self-agreement of the fast setting")
    ap.add_argument("--no-baseline", action="store_true", help="skip LIME at lime's defaults (1000 samples)")
    ap.add_argument("--sampling", default="paired", choices=list(E.SAMPLINGS), help="LIME sampling design of the fast setting")
    ap.add_argument("--samples", type=int, default=E.LIME_SAMPLES, help="LIME samples of the fast setting")
    ap.add_argument("--baseline-seeds", type=int, default=1, help="runs of the baseline (2+ gives its self-agreement)")
    ap.add_argument("--eval", type=int, default=0, metavar="N",
                    help="also score biopsy points against ground-truth masks on N test images")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    data = Path(a.data)

    predictor, card, note = load_predictor(Path(a.card))
    image_id = pick_image(card, data / "images", a.image)
    photo = load_image(data / "images" / f"{image_id}.jpg")
    mask_file = data / "masks" / f"{image_id}.png"
    if mask_file.is_file():
        lesion, lesion_src = np.asarray(Image.open(mask_file).convert("L")) > 127, "ground-truth mask"
    else:
        lesion, lesion_src = suggest_mask(photo), "suggest_mask"
    lesion_model = E.mask_to_model(lesion, predictor.card.input_size)
    print(f"{note}\nimage {image_id} {photo.size[0]}x{photo.size[1]} -> input {predictor.card.input_size}, "
          f"{a.threads} threads, lesion from {lesion_src}, inference path "
          f"{getattr(predictor, 'fast_path', 'frozen fp32')}, LIME sampling {a.sampling}")

    E.cam_heatmap(predictor, photo)  # warm-up
    cams = [timed(E.cam_heatmap, predictor, photo) for _ in range(3)]
    cam = cams[0][0]
    print(f"Grad-CAM:             {np.median([c[1] for c in cams]):6.2f} s wall  "
          f"{np.median([c[2] for c in cams]):6.2f} s CPU   (median of 3 after warm-up)")

    def fast(seed):
        lime = E.lime_explanation(predictor, photo, seed=seed, sampling=a.sampling, num_samples=a.samples)
        return lime, E.biopsy_site(lime, lesion)

    fast(1)  # warm-up (also one of the seeds below)
    (lime, site), wall, cpu = timed(fast, 0)
    print(f"LIME + biopsy:        {wall:6.2f} s wall  {cpu:6.2f} s CPU   ({lime.num_samples} samples, "
          f"{lime.segments.max() + 1} SLIC superpixels, batches of {E.LIME_BATCH}, {a.sampling} sampling)")
    runs = [lime] + [fast(s)[0] for s in range(1, a.seeds)]
    if a.seeds > 1:
        print(f"  self-agreement over {a.seeds} seeds: top-5 IoU {mean_pairwise(runs):.2f}, "
              f"top-20%-area IoU {mean_pairwise(runs, area=0.2):.2f}")

    if not a.no_baseline:
        base = []
        for seed in range(a.baseline_seeds):
            r, bwall, bcpu = timed(E.lime_explanation, predictor, photo, num_samples=1000, seed=seed,
                                   segmentation="quickshift", batch_size=10, sampling="random")
            base.append((r, bwall, bcpu))
        b, bwall, bcpu = base[0]
        print(f"LIME, lime defaults:  {bwall:6.2f} s wall  {bcpu:6.2f} s CPU   (1000 samples, "
              f"{b.segments.max() + 1} quickshift superpixels, batches of 10)")
        print(f"  speed-up: {bwall / wall:.1f}x wall, {bcpu / cpu:.1f}x CPU; "
              f"same target class: {b.target == lime.target}")
        print(f"  agreement with the fast setting: top-5 IoU {E.lime_agreement(lime, b):.2f}, "
              f"top-20%-area IoU {E.lime_agreement(lime, b, area=0.2):.2f}")
        if len(base) > 1:
            rs = [r for r, *_ in base]
            print(f"  self-agreement over {len(rs)} seeds: top-5 IoU {mean_pairwise(rs):.2f}, "
                  f"top-20%-area IoU {mean_pairwise(rs, area=0.2):.2f}")

    g = lime.geometry
    for name, (x, y) in (("biopsy site", (site.x, site.y)), ("CAM peak", E.cam_peak(cam.heatmap)),
                         ("crop centre", E.crop_centre(predictor.card.input_size))):
        print(f"{name:12s} input ({x:3d},{y:3d}) -> photo {g.point_to_original(x, y)}  "
              f"in lesion: {bool(lesion_model[y, x])}")
    if site.note:
        print(f"  note: {site.note}")
    if a.eval:
        evaluate_sites(predictor, card, data, a.eval)
    return 0


def evaluate_sites(predictor: Predictor, card: ModelCard | None, data: Path, n: int) -> None:
    """How often each candidate point lands inside the ground-truth lesion (HAM10000 masks)."""
    split = card.split_file if card else None
    if split is not None and split.is_file():
        table = pd.read_csv(split, dtype=str)
        ids = table.loc[table["split"] == "test", "image_id"].tolist()
    else:
        ids = sorted(p.stem for p in (data / "images").glob("*.jpg"))
    ids = [i for i in ids if (data / "masks" / f"{i}.png").is_file()][:n]
    hits = {"biopsy site, suggest_mask": [], "biopsy site, no mask": [], "CAM peak": [], "crop centre": []}
    for image_id in ids:
        photo = load_image(data / "images" / f"{image_id}.jpg")
        truth = E.mask_to_model(np.asarray(Image.open(data / "masks" / f"{image_id}.png").convert("L")) > 127,
                                predictor.card.input_size)
        lime = E.lime_explanation(predictor, photo)
        points = {"biopsy site, suggest_mask": E.biopsy_site(lime, suggest_mask(photo)),
                  "biopsy site, no mask": E.biopsy_site(lime, None),
                  "CAM peak": E.cam_peak(E.cam_heatmap(predictor, photo, target=lime.target).heatmap),
                  "crop centre": E.crop_centre(predictor.card.input_size)}
        for name, pt in points.items():
            x, y = (pt.x, pt.y) if isinstance(pt, E.BiopsySite) else pt
            hits[name].append(bool(truth[y, x]))
    print(f"inside the ground-truth lesion, {len(ids)} test images:")
    for name, h in hits.items():
        print(f"  {name:26s} {np.mean(h):6.1%}")


if __name__ == "__main__":
    sys.exit(main())
