"""Command line: ``python -m derm_core {train,evaluate,predict,explain} ...``."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path



def _check_out_file(path, flag: str) -> Path:
    """Refuse an output file path that cannot be written, before any work starts.

    Raises:
        ConfigError: the path is a folder, lies under a file, or its folder is not writable.
    """
    import os

    from .errors import ConfigError
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag} {p} is a folder; give a file name (e.g. {p / 'report.json'})")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"{flag} {p}: {parent} is a file, not a folder")
    if parent.is_dir() and not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {p}: the folder {parent} is not writable")
    if p.exists() and not os.access(p, os.W_OK) and not os.access(p.parent, os.W_OK):
        raise ConfigError(f"{flag} {p} is not writable")
    return p


def _check_out_dir(path, flag: str) -> Path:
    """Refuse an output folder that is a file or lies under one, before any work starts."""
    import os

    from .errors import ConfigError
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {p} is a file, not a folder")
    parent = p
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag} {p}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {p}: the folder {parent} is not writable")
    return p


def _clinical(a):
    from .clinical import Clinical
    from .errors import ConfigError
    try:
        c = Clinical.parse(a.age, a.sex, a.site)
    except ValueError as e:
        raise ConfigError(f"--age/--sex/--site: {e}") from None
    if c.age is not None and not 0 <= c.age <= 120:
        raise ConfigError(f"--age must be from 0 to 120 years, not {a.age:g}")
    return c


def _parse_crop(text: str):
    """``auto``, ``none`` or ``x0,y0,x1,y1`` (original-photo pixels, right/bottom exclusive)."""
    t = str(text).strip().lower()
    if t in ("auto", "none"):
        return t
    try:
        box = tuple(int(float(v)) for v in t.split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"--crop must be auto, none or x0,y0,x1,y1, not {text!r}")
    return box


def _crop_photo(photo, crop):
    """(cropped photo, crop box used, how it was chosen) for ``--crop``."""
    from .errors import ConfigError
    from .images import MAX_ASPECT, MIN_SIDE
    w, h = photo.size
    if crop == "none":
        return photo, (0, 0, w, h), "none (the whole photo)"
    if crop == "auto":
        from .lesion import suggest_box
        box = tuple(int(v) for v in suggest_box(photo, margin=0.15))
        how = "auto (the suggested lesion crop, as on the triage page)"
    else:
        box, how = crop, "given"
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise ConfigError(f"--crop {x0},{y0},{x1},{y1} is not inside the {w}x{h} photo "
                              f"(0 <= x0 < x1 <= {w}, 0 <= y0 < y1 <= {h})")
        bw, bh = x1 - x0, y1 - y0
        if min(bw, bh) < MIN_SIDE or max(bw, bh) / min(bw, bh) > MAX_ASPECT:
            raise ConfigError(f"--crop {x0},{y0},{x1},{y1} is {bw}x{bh} pixels: at least {MIN_SIDE}x{MIN_SIDE} and at "
                              f"most {MAX_ASPECT:.0f}:1 are needed")
    return photo.crop(box), box, how


def _json_safe(obj, path: str = "", undefined: dict | None = None):
    """``obj`` with NaN/infinite floats replaced by None (valid JSON); ``undefined`` collects their paths."""
    import math
    if isinstance(obj, dict):
        return {k: _json_safe(v, f"{path}.{k}" if path else str(k), undefined) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v, f"{path}[{i}]", undefined) for i, v in enumerate(obj)]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):   # numpy scalars
        try:
            obj = obj.item()
        except (TypeError, ValueError):
            pass
    if isinstance(obj, float) and not math.isfinite(obj):
        if undefined is not None:
            undefined[path] = "nan" if obj != obj else "infinite"
        return None
    return obj


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
                      patience=a.patience, workers=a.workers, limit=a.limit, resume=not (a.no_resume or a.new), device=a.device,
                      tta=a.tta, monitor=a.monitor, init_from=a.init_from, loss=a.loss, logit_tau=a.logit_tau,
                      label_smoothing=a.label_smoothing, ema_decay=a.ema_decay or None,
                      freeze_epochs=a.freeze_epochs or None)
    command = _command(a)
    from .run_folder import claim, validate_config
    validate_config(cfg)             # before any data is read (also checked again inside train)
    try:
        with claim(cfg, command, int(os.environ.get("RANK", "0")), force=a.force):
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
    out = _check_out_file(a.out, "--out")
    if a.predictions:
        _check_out_file(a.predictions, "--predictions")
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
    rep = build_report(table["y"].to_numpy(), pred["logits"], card.temperature, card.thresholds, tax, table,
                       card.balanced_rule)
    from .conformal import report_block_for   # issue 12: coverage of the prediction sets on these data
    rep["conformal"] = report_block_for(card, table["y"].to_numpy(), softmax(pred["logits"], card.temperature))
    rep["seconds"] = round(time.time() - t0, 2)
    rep["model"] = str(card.path)
    undefined: dict = {}
    rep = _json_safe(rep, undefined=undefined)
    if undefined:   # e.g. an AUC on data holding one class: null in the report, with the reason
        present = sorted({tax.classes[int(i)] for i in table["y"].unique()})
        why = (f"not defined on these data ({len(table)} image(s); classes present: {', '.join(present)}): "
               f"a per-class AUC needs images with and without the class, a rate needs cases to count")
        rep["undefined"] = {k: why for k in undefined}
        print(f"warning: {len(undefined)} metric(s) are not defined on these data and are written as null "
              f"(see 'undefined' in {out}): {why}", file=sys.stderr)
    atomic_write_json(out, rep)
    if a.predictions:
        from .checkpoint import atomic_write_bytes
        csv = isic_predictions(table["image_id"], softmax(pred["logits"], card.temperature), tax).to_csv(index=False)
        atomic_write_bytes(Path(a.predictions), csv.encode("utf-8"))
    print(json.dumps({k: rep.get(k) for k in ("n_images", "accuracy", "balanced_accuracy", "macro_auc", "ece")}, indent=2))
    return 0


def cmd_predict(a) -> int:
    from .images import load_image
    from .predictor import Predictor
    clinical = _clinical(a)
    photo = load_image(a.image)
    pred = Predictor.from_path(a.model)
    crop, box, how = _crop_photo(photo, a.crop)
    res = pred.predict(crop, clinical)
    out = {"image": a.image, "model": pred.card.name, "photo_size": list(photo.size),
           "crop": {"box": list(box), "mode": how}, **res.to_dict()}
    from .conformal import predict_fields      # issue 12: conformal prediction set at --level
    out.update(predict_fields(pred.card, res.probs, a.level))
    if a.json:
        print(json.dumps(_json_safe(out), indent=2))
    else:
        print(f"crop: x0,y0,x1,y1 = {','.join(map(str, box))} of {photo.width}x{photo.height} ({how})")
        print(f"risk tier: {res.tier}: {res.action}")
        if out["prediction_set"] is not None:
            print(f"prediction set ({out['level']:.0%}): {', '.join(out['prediction_set']) or 'empty'}")
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
    out = _check_out_dir(a.out, "--out")
    clinical = _clinical(a)
    photo = load_image(a.image)
    pred = Predictor.from_path(a.model)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = {"image": a.image, "model": pred.card.name, "method": a.method}
    if a.method == "lime":
        lime = E.lime_explanation(pred, photo, clinical=clinical, num_samples=E.LIME_SAMPLES if a.samples is None else a.samples,
                                  seed=a.seed)
        site = E.biopsy_site(lime, suggest_mask(photo))
        x, y = lime.geometry.point_to_original(site.x, site.y)
        lime.overlay(photo).save(out / "lime.png")
        result.update(target=pred.taxonomy.classes[lime.target],
                      biopsy_site={"x": x, "y": y, "note": site.note} if site.suggested else None,
                      **({} if site.suggested else {"biopsy_site_note": site.note}),
                      superpixel_weights={str(k): v for k, v in sorted(lime.weights.items())}, files=[str(out / "lime.png")])
    else:
        if a.method == "scorecam":
            print("note: ScoreCAM runs the network once per feature channel; it can take tens of seconds on a CPU",
                  file=sys.stderr)
        cam = E.cam_heatmap(pred, photo, method=a.method, clinical=clinical)
        cam.overlay(photo).save(out / f"{a.method}.png")
        x, y = cam.geometry.point_to_original(*E.cam_peak(cam.heatmap))
        result.update(target=pred.taxonomy.classes[cam.target], cam_peak={"x": x, "y": y},
                      files=[str(out / f"{a.method}.png")])
    result["seconds"] = round(time.perf_counter() - t0, 3)
    from .mapquality import quality_fields   # issue 12: how far to trust the map
    result["map_quality"] = quality_fields(pred, photo, lime if a.method == "lime" else cam, suggest_mask(photo), clinical)
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
    t.add_argument("--freeze-early", action=argparse.BooleanOptionalAction, default=True,
                   help="freeze the arch's early layers for the first --freeze-epochs epochs")
    t.add_argument("--freeze-epochs", type=int, default=1, help="epochs with the early layers frozen (0: the whole run)")
    t.add_argument("--class-weighting", default="none", choices=["none", "sqrt", "inverse"])
    t.add_argument("--loss", default="logit_adjusted", choices=["cross_entropy", "logit_adjusted"],
                   help="logit_adjusted: cross-entropy on logits + tau*log(prior) (balanced softmax at tau 1)")
    t.add_argument("--logit-tau", type=float, default=1.0)
    t.add_argument("--label-smoothing", type=float, default=0.1)
    t.add_argument("--ema-decay", type=float, default=0.998, help="weight EMA decay (0: off)")
    t.add_argument("--patience", type=int, default=4)
    t.add_argument("--monitor", default="val_loss", choices=["val_loss", "val_macro_auc", "val_balanced_accuracy",
                                                             "val_accuracy"], help="early stopping / best epoch")
    t.add_argument("--workers", type=int, default=1)
    t.add_argument("--limit", type=int, help="use only the first N images (smoke runs)")
    t.add_argument("--init-from", help="fine-tune from this model card (default: ImageNet weights)")
    t.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="average over flips at evaluation and inference")
    t.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in --out")
    t.add_argument("--new", action="store_true", help="start over in --out even though it holds a run (same as "
                                                      "--no-resume; the old epoch log is kept aside)")
    t.add_argument("--force", action="store_true", help="resume the run in --out even though its settings differ")
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
    p.add_argument("--crop", type=_parse_crop, default="auto", metavar="auto|none|x0,y0,x1,y1",
                   help="auto: the suggested lesion crop, as on the triage page (default); none: the whole photo; "
                        "or a box in photo pixels")
    p.add_argument("--level", type=float, default=0.9,
                   help="coverage level of the conformal prediction set (default 0.9: the true diagnosis is in the "
                        "set 90%% of the time on photos like the validation set)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_predict)
    x = sub.add_parser("explain", help="Grad-CAM or LIME + biopsy site for one photo")
    x.add_argument("image")
    x.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++", "eigencam", "scorecam", "lime"])
    x.add_argument("--out", required=True, help="folder for the overlay images")
    x.add_argument("--samples", type=int, help="LIME samples (default: explain.LIME_SAMPLES, as on the triage page)")
    x.add_argument("--seed", type=int, default=0, help="LIME sampling seed (the same seed gives the same weights)")
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


ENVIRONMENT_ERRNOS = {"ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EFBIG", "EMFILE", "ELOOP", "ENAMETOOLONG"}


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv=None) -> int:
    """Run one command. A :class:`~derm_core.errors.DermTriageError` (a bad photo, dataset, model
    card, profile, argument or run folder) and a full, read-only or forbidden disk are reported as
    one ``error: ...`` line with exit code 2; anything else is a bug and keeps its traceback."""
    import errno

    from .errors import DermTriageError
    argv = sys.argv[1:] if argv is None else list(argv)
    a = build_parser().parse_args(argv)
    a.argv = argv
    try:
        return a.fn(a)
    except DermTriageError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        if errno.errorcode.get(e.errno or -1) not in ENVIRONMENT_ERRNOS:
            raise
        what = {errno.ENOSPC: "the disk is full", errno.EROFS: "the disk is read-only"}.get(e.errno, e.strerror)
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: {what}{where}: nothing was finished; free space or fix the permissions and run it again",
              file=sys.stderr)
        return 2
