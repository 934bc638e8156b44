"""The release: every shipped artifact of a model made together, from one set of predictions.

``python -m derm_core release RUN --data DIR --out weights/default`` takes a finished run (its
folder or card) and writes, into ``--out``: the weights and card (temperature, class and tier
thresholds, balanced rule), the conformal calibration, the out-of-scope gate, the validation and
test reports, the split file and the model sheet ``MODEL.md``. The artifacts share one identity
(the weights' hash and temperature), which ``tests/test_shipped_bundle.py`` checks. Running it
again on the same run gives the same bundle, timestamps and timings aside.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from derm_core.data.dataset import load_table
from derm_core.data.splits import load_splits
from derm_core.errors import ModelError
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
    targets = dict(card.tier_sensitivity_targets or DEFAULT_TIER_SENSITIVITY)
    path = finish(model, card, table, split, out / "model", targets, progress=progress)
    device = pick_device()
    final = read_card(path)
    final = final.with_(extra={**final.extra, "release": {"command": command, "seconds": round(time.time() - t0),
                                                          "device": str(device)}})
    write_card(final)
    write_sheet(read_card(path))
    return path
