"""The release: every shipped artifact of a model made together, from one set of predictions.

``python -m derm_core release RUN --data DIR --out weights/default`` takes a finished run (its
folder or card) and writes, into ``--out``: the weights and card (temperature, class and tier
thresholds, balanced rule), the conformal calibration, the out-of-scope gate, the validation and
test reports, the split file, the lesion-outline network for close-ups (trained on the split's
training photos, :mod:`derm_core.explain.outline`; the out-of-scope gate's non-lesion corpus is
cropped with it, as the page would), the skin-tone counts of every split (in the card) and the
model sheet ``MODEL.md``. The artifacts share one identity
(the weights' hash and temperature), which ``tests/test_shipped_bundle.py`` checks. Running it
again on the same run gives the same bundle, timestamps and timings aside.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from derm_core.data.dataset import load_table
from derm_core.data.splits import load_splits
from derm_core.errors import ModelError
from derm_core.explain.lesion import box_agreement, outline_from
from derm_core.explain.outline import CARD as OUTLINE_CARD
from derm_core.explain.outline import WEIGHTS as OUTLINE_WEIGHTS
from derm_core.explain.outline import OutlineTraining, fit_outline, record_metrics
from derm_core.explain.skin_tone import table_itas, tone_counts, tone_group
from derm_core.model.card import file_sha256
from derm_core.model.checkpoint import load_model, read_card, write_card
from derm_core.triage.rules import DEFAULT_TIER_SENSITIVITY

CARRIED = ("log.jsonl",)   # the run's epoch log travels with it


def release(run, data, out, command: str, progress=print) -> Path:
    """Build the bundle in ``out`` from the model at ``run``; returns the new card's path."""
    from derm_core.evaluate.sheet import write_sheet
    from derm_core.fit.train import finish
    from derm_core.model.device import pick_device
    t0 = time.time()
    model, card = load_model(run)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = load_table(data, card.taxonomy)
    split_src = card.split_file
    if not split_src.is_file():
        raise ModelError(f"{card.path}: its split file {split_src} is missing; the release needs the run's split")
    split = load_splits(table, split_src)
    src = card.path.parent.resolve()
    if src != out.resolve():
        shutil.copyfile(split_src, out / split_src.name)
        for name in CARRIED:
            if (src / name).is_file():
                shutil.copyfile(src / name, out / name)
    train_rows = table[(split == "train").to_numpy()]
    outline = None
    if train_rows["mask_path"].notna().sum() >= OutlineTraining().batch:
        progress("training the lesion-outline network")
        outline = fit_outline(train_rows, out, {"split_file": split_src.name, "split_sha256": file_sha256(split_src)},
                              progress=progress)
    else:
        progress("no lesion masks in the training split: the bundle gets no outline network (classical outline only)")
        for name in (OUTLINE_CARD, OUTLINE_WEIGHTS):
            (out / name).unlink(missing_ok=True)
    with outline_from(outline):     # the suggested crops from here on (its figures, the gate's corpus) use it
        if outline is not None:
            progress("measuring the suggested crop")
            record_metrics(outline, {name: box_agreement(table[(split == name).to_numpy()]) for name in ("val", "test")})
        targets = dict(card.tier_sensitivity_targets or DEFAULT_TIER_SENSITIVITY)
        path = finish(model, card, table, split, out / "model", targets, progress=progress)
        progress("estimating the skin tone of every photo")
        tones = np.array([tone_group(v) for v in table_itas(table)])
    device = pick_device()
    final = read_card(path)
    skin_tones = {"method": "ITA of the skin around the dataset's lesion mask (derm_core/explain/skin_tone.py)",
                  **{name: tone_counts(tones[(split == name).to_numpy()]) for name in ("train", "val", "test")}}
    final = final.with_(extra={**final.extra, "skin_tones": skin_tones,
                               "release": {"command": command, "seconds": round(time.time() - t0),
                                           "device": str(device)}})
    write_card(final)
    write_sheet(read_card(path))
    return path
