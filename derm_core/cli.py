"""Command line: ``python -m derm_core {train,evaluate,predict,explain} ...``."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path



def _command(a) -> str:
    """The command line that ran, for the model card."""
    return "python -m derm_core " + " ".join(shlex.quote(x) for x in a.argv)


def _add_model(p):
    p.add_argument("--model", default=None, help="model card (.json) or run folder; default: the shipped model")


def _add_clinical(p):
    p.add_argument("--age", type=float)
    p.add_argument("--sex", choices=["male", "female"])
    p.add_argument("--site")


def cmd_train(a) -> int:
    from .train import Stopped, TrainConfig, train
    cfg = TrainConfig(data=a.data, out=a.out, arch=a.arch, taxonomy=a.taxonomy, csv=a.csv, split_file=a.split_file,
                      seed=a.seed, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                      image_size=tuple(a.image_size) if a.image_size else None, metadata=a.metadata,
                      pretrained=a.pretrained, freeze_early=a.freeze_early, class_weighting=a.class_weighting,
                      patience=a.patience, workers=a.workers, limit=a.limit, resume=not a.no_resume, device=a.device,
                      tta=a.tta, monitor=a.monitor, init_from=a.init_from)
    command = _command(a)
    try:
        path = train(cfg, command=command)
    except Stopped as e:
        print(e, file=sys.stderr)
        return 3
    if path:
        card = json.loads(path.read_text())
        print(json.dumps({"model": str(path), "metrics": {k: {m: v[m] for m in ("accuracy", "balanced_accuracy", "macro_auc")}
                                                          for k, v in card["metrics"].items()}}, indent=2))
    return 0


def cmd_evaluate(a) -> int:
    from .checkpoint import atomic_write_json, load_model
    from .data import load_table
    from .evaluation import build_report, isic_predictions, predict_table
    from .calibration import softmax
    from .splits import load_splits
    model, card = load_model(a.model)
    tax = card.taxonomy
    table = load_table(a.data, tax, a.csv)
    if a.split:
        sf = Path(a.split_file) if a.split_file else card.split_file
        table = table[(load_splits(table, sf) == a.split).to_numpy()].reset_index(drop=True)
    t0 = time.time()
    pred = predict_table(model, table, card.input_size, card.mean, card.std, batch_size=a.batch_size,
                         use_metadata=card.use_metadata and not a.no_metadata,
                         tta=bool(card.data["preprocessing"].get("tta")))
    rep = build_report(table["y"].to_numpy(), pred["logits"], card.temperature, card.thresholds, tax, table)
    rep["seconds"] = round(time.time() - t0, 2)
    rep["model"] = str(card.path)
    atomic_write_json(Path(a.out), rep)
    if a.predictions:
        isic_predictions(table["image_id"], softmax(pred["logits"], card.temperature), tax).to_csv(a.predictions, index=False)
    print(json.dumps({k: rep[k] for k in ("n_images", "accuracy", "balanced_accuracy", "macro_auc", "ece")}, indent=2))
    return 0


def cmd_predict(a) -> int:
    from .clinical import Clinical
    from .images import load_image
    from .predictor import Predictor
    clinical = Clinical.parse(a.age, a.sex, a.site)
    pred = Predictor.from_path(a.model)
    res = pred.predict(load_image(a.image), clinical)
    out = {"image": a.image, "model": pred.card.name, **res.to_dict()}
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"risk tier: {res.tier}: {res.action}")
        for c, p in res.differential:
            print(f"  {pred.taxonomy.display_names[c]:<60} {p:6.1%}")
        if res.low_confidence:
            print("  (low confidence: no class passed its threshold)")
    return 0


def cmd_explain(a) -> int:
    from . import explain as E
    from .clinical import Clinical
    from .images import load_image
    from .lesion import suggest_mask
    from .predictor import Predictor
    pred = Predictor.from_path(a.model)
    photo = load_image(a.image)
    clinical = Clinical.parse(a.age, a.sex, a.site)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = {"image": a.image, "model": pred.card.name, "method": a.method}
    if a.method == "lime":
        lime = E.lime_explanation(pred, photo, clinical=clinical, num_samples=E.LIME_SAMPLES if a.samples is None else a.samples)
        site = E.biopsy_site(lime, suggest_mask(photo))
        x, y = lime.geometry.point_to_original(site.x, site.y)
        lime.overlay(photo).save(out / "lime.png")
        result.update(target=pred.taxonomy.classes[lime.target], biopsy_site={"x": x, "y": y, "note": site.note},
                      superpixel_weights={str(k): v for k, v in sorted(lime.weights.items())}, files=[str(out / "lime.png")])
    else:
        cam = E.cam_heatmap(pred, photo, method=a.method, clinical=clinical)
        cam.overlay(photo).save(out / f"{a.method}.png")
        x, y = cam.geometry.point_to_original(*E.cam_peak(cam.heatmap))
        result.update(target=pred.taxonomy.classes[cam.target], cam_peak={"x": x, "y": y},
                      files=[str(out / f"{a.method}.png")])
    result["seconds"] = round(time.perf_counter() - t0, 3)
    print(json.dumps(result, indent=2) if a.json else
          f"{a.method}: {result['target']} in {result['seconds']} s; wrote {', '.join(result['files'])}")
    return 0


def cmd_recalibrate(a) -> int:
    from .checkpoint import load_model
    from .data import load_table
    from .splits import load_splits
    from .train import finish
    model, card = load_model(a.model)
    table = load_table(a.data, card.taxonomy, a.csv)
    split = load_splits(table, card.split_file)
    data = card.data
    if a.tta is not None:
        data["preprocessing"]["tta"] = a.tta
    targets = dict(data["thresholds"].get("tier_sensitivity_targets") or {"high-risk": 0.9, "dangerous": 0.9})
    for t, v in a.target or []:
        targets[t] = float(v)
    data.setdefault("recalibrations", []).append(
        {"command": _command(a),
         "time": time.strftime("%Y-%m-%d %H:%M:%S")})
    path = finish(model, data, table, split, card.path.with_suffix(""), targets, progress=print)
    m = json.loads(path.read_text())["metrics"]
    print(json.dumps({k: {n: v[n] for n in ("accuracy", "balanced_accuracy", "macro_auc")} for k, v in m.items()}, indent=2))
    return 0


def cmd_fit_ood(a) -> int:
    from .checkpoint import load_model
    from .data import load_table
    from .ood import fit_for_model
    from .splits import load_splits
    model, card = load_model(a.model)
    table = load_table(a.data, card.taxonomy, a.csv)
    split = load_splits(table, card.split_file)
    print(json.dumps(fit_for_model(model, card, table, split), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .models import DEFAULT_ARCH, list_archs
    ap = argparse.ArgumentParser(prog="python -m derm_core", description="DermTriage: skin-lesion triage engine")
    sub = ap.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train a model on a dataset folder")
    t.add_argument("--data", help="dataset folder (HAM10000 or generic layout); default $DERMTRIAGE_DATA")
    t.add_argument("--csv", help="label CSV inside the folder (default metadata.csv or labels.csv)")
    t.add_argument("--out", required=True, help="run folder (resumed if it holds a checkpoint)")
    t.add_argument("--arch", default=DEFAULT_ARCH, choices=list_archs())
    t.add_argument("--taxonomy", default="ham7", help="taxonomy name or JSON file")
    t.add_argument("--split-file", help="reuse/create this split file (default <out>/split.csv)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, default=12)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"))
    t.add_argument("--metadata", action=argparse.BooleanOptionalAction, default=True, help="fuse age/sex/site")
    t.add_argument("--pretrained", default="offline", choices=["offline", "hub", "none"])
    t.add_argument("--freeze-early", action=argparse.BooleanOptionalAction, default=True)
    t.add_argument("--class-weighting", default="sqrt", choices=["none", "sqrt", "inverse"])
    t.add_argument("--patience", type=int, default=4)
    t.add_argument("--monitor", default="val_loss", choices=["val_loss", "val_macro_auc", "val_balanced_accuracy",
                                                             "val_accuracy"], help="early stopping / best epoch")
    t.add_argument("--workers", type=int, default=1)
    t.add_argument("--limit", type=int, help="use only the first N images (smoke runs)")
    t.add_argument("--init-from", help="fine-tune from this model card (default: ImageNet weights)")
    t.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="average over flips at evaluation and inference")
    t.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in --out")
    t.add_argument("--device", help="force cpu or cuda")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a model on every image of a dataset folder")
    e.add_argument("--data", help="dataset folder; default $DERMTRIAGE_DATA")
    e.add_argument("--csv")
    _add_model(e)
    e.add_argument("--split", choices=["train", "val", "test"], help="only this split of the model's split file")
    e.add_argument("--split-file", help="split file (default: the one in the model card)")
    e.add_argument("--out", default="report.json")
    e.add_argument("--predictions", help="also write ISIC 2018 Task 3 CSV predictions here")
    e.add_argument("--no-metadata", action="store_true", help="hide age/sex/site from a metadata model (ablation)")
    e.add_argument("--batch-size", type=int, default=64)
    e.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("predict", help="triage one photo")
    p.add_argument("image")
    _add_clinical(p)
    _add_model(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_predict)
    x = sub.add_parser("explain", help="Grad-CAM or LIME + biopsy site for one photo")
    x.add_argument("image")
    x.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++", "eigencam", "scorecam", "lime"])
    x.add_argument("--out", required=True, help="folder for the overlay images")
    x.add_argument("--samples", type=int, help="LIME samples (default: explain.LIME_SAMPLES, as on the triage page)")
    _add_clinical(x)
    _add_model(x)
    x.add_argument("--json", action="store_true")
    x.set_defaults(fn=cmd_explain)

    r = sub.add_parser("recalibrate", help="re-fit temperature, thresholds, reports and out-of-scope detector "
                                          "of a trained model on its own validation split")
    r.add_argument("--data", help="the model's training dataset folder; default $DERMTRIAGE_DATA")
    r.add_argument("--csv")
    _add_model(r)
    r.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help="flip test-time augmentation")
    r.add_argument("--target", nargs=2, action="append", metavar=("TIER", "SENSITIVITY"),
                   help="tier sensitivity target on validation, e.g. --target dangerous 0.95")
    r.set_defaults(fn=cmd_recalibrate)

    o = sub.add_parser("fit-ood", help="(re)fit a model's out-of-scope detector on its own split")
    o.add_argument("--data", help="the model's training dataset folder; default $DERMTRIAGE_DATA")
    o.add_argument("--csv")
    _add_model(o)
    o.set_defaults(fn=cmd_fit_ood)
    return ap


def main(argv=None) -> int:
    from .checkpoint import ModelError
    from .data import DataError
    from .images import ImageError
    argv = sys.argv[1:] if argv is None else list(argv)
    a = build_parser().parse_args(argv)
    a.argv = argv
    try:
        return a.fn(a)
    except (DataError, ImageError, ModelError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
