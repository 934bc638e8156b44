"""The out-of-scope gate of a model, measured: lesions flagged and non-lesion images flagged.

Uses the model's stored gate (nothing is re-fitted) on its test split and on the held-out
non-lesion corpus (``derm_core/evaluate/nonlesion.py``: every image whole and as the triage page
would crop it), then prints both shares against the targets (<= 3% of test lesions flagged,
>= 95% of non-lesion images flagged), the share per kind, the images that pass, and the gate's
time per photo.

    python bench/bench_ood.py [--data ../shared/data/ham10000] [--model CARD] [--phone N]

``--phone N`` also passes the first N test lesions, placed in bench_crop's synthetic 12 MP phone
photos and cropped by the page's suggested crop, through the gate: the lesions are real, the skin
around them is synthetic, so this shows how the gate treats such photos, not real phone photos.
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from derm_core.data.dataset import load_table  # noqa: E402
from derm_core.data.splits import split_rows  # noqa: E402
from derm_core.evaluate.nonlesion import corpus  # noqa: E402
from derm_core.model import ood  # noqa: E402
from derm_core.model.checkpoint import read_card  # noqa: E402


def phone_photos_gated(det, rows, data: Path) -> None:
    """The share of synthetic phone photos (bench_crop's, suggested crop) the gate flags, per variant."""
    from bench.bench_crop import phone_variant, variant_names
    from bench.phone_photos import phone_photo
    from derm_core.explain.lesion import suggest_crop
    rng, flags, names = np.random.default_rng(0), [], []
    for i, image_id in enumerate(rows["image_id"]):
        mask = np.asarray(Image.open(data / "masks" / f"{image_id}.png").convert("L")) > 127
        v = phone_variant(i, rng)
        photo, _ = phone_photo(Image.open(data / "images" / f"{image_id}.jpg").convert("RGB"), mask, **v)
        flags.append(bool(det([photo.crop(suggest_crop(photo))])[1][0]))
        names.append(variant_names(v))
    flags = np.asarray(flags)
    print(f"synthetic phone photos flagged: {flags.mean():.1%} of {len(flags)} (lesions real, skin synthetic)")
    for name in sorted({n for v in names for n in v}):
        sel = np.asarray([name in v for v in names])
        print(f"  {name:<28} {flags[sel].mean():6.1%} of {sel.sum()}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/ham10000")
    ap.add_argument("--model", default=None)
    ap.add_argument("--phone", type=int, default=0, help="also gate N synthetic phone photos, suggested crop")
    a = ap.parse_args()
    card = read_card(a.model)
    det, note = ood.load_detector_checked(card)
    if det is None:
        print(f"no usable gate: {note or 'the model has none'}")
        return 1
    test = split_rows(load_table(a.data, card.taxonomy), card.split_file, "test")
    samples = corpus()
    rep = ood.measure(det, ood.features([functools.partial(Image.open, p) for p in test["path"]]), samples,
                      ood.features([s.image for s in samples]))
    print(f"model {card.name}, gate limit {det.threshold:.3f} ({ood.IN_DIST_PASS:.0%} of validation lesions pass)")
    ok_in, ok_out = rep["lesions_flagged"] <= 0.03, rep["non_lesion_flagged"] >= 0.95
    print(f"test lesions flagged:      {rep['lesions_flagged']:.1%} of {rep['n_lesions']} (target <= 3%: "
          f"{'met' if ok_in else 'NOT met'})")
    print(f"non-lesion images flagged: {rep['non_lesion_flagged']:.1%} of {rep['n_non_lesion']} (target >= 95%: "
          f"{'met' if ok_out else 'NOT met'}); AUROC {rep['auroc']:.4f}")
    for kind, v in rep["per_kind"].items():
        print(f"  {kind:<28} {v['flagged']:6.1%} of {v['n']}")
    if rep["missed"]:
        print("passed the gate: " + ", ".join(rep["missed"]))
    photos = [Image.open(p).convert("RGB") for p in test["path"][:30]]
    det([photos[0]])
    t = []
    for im in photos:
        t0 = time.perf_counter()
        det([im])
        t.append(time.perf_counter() - t0)
    print(f"gate time per photo: median {np.median(t) * 1000:.1f} ms (30 test photos, one at a time)")
    if a.phone:
        phone_photos_gated(det, test.head(a.phone), Path(a.data))
    return 0 if ok_in and ok_out else 1


if __name__ == "__main__":
    sys.exit(main())
