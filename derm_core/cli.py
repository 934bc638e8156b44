"""Command line: ``python -m derm_core {train,evaluate,predict,explain} ...``."""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

from derm_core.errors import ConfigError


def _check_out_file(path, flag: str) -> Path:
    """Refuse an output file path that cannot be written, before any work starts.

    Raises:
        ConfigError: the path is a folder, lies under a file, or its folder is not writable.
    """
    import os

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
    from derm_core.data.clinical import Clinical
    try:
        c = Clinical.parse(a.age, a.sex, a.site)
    except ValueError as e:
        raise ConfigError(f"--age/--sex/--site: {e}") from None
    if c.age is not None and not 0 <= c.age <= 120:
        raise ConfigError(f"--age must be from 0 to 120 years, not {a.age:g}")
    return c


def _parse_crop(text: str):
    """``auto``, ``none`` or ``x0,y0,x1,y1``: whole, non-negative original-photo pixels (right and
    bottom exclusive). A box starting with a minus sign reaches here as ``--crop=-10,...`` (and
    ``--crop -10,...``, see :func:`_join_dash_values`), so it is refused for what it is."""
    t = str(text).strip().lower()
    if t in ("auto", "none"):
        return t
    parts = [v.strip() for v in t.split(",")]
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"must be auto, none or x0,y0,x1,y1, not {text!r}")
    box = []
    for name, v in zip(("x0", "y0", "x1", "y1"), parts):
        try:
            number = float(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text}: {name} is {v!r}, not a number of pixels") from None
        if not number.is_integer():
            raise argparse.ArgumentTypeError(f"{text}: {name} is {v}; give whole pixels")
        if number < 0:
            raise argparse.ArgumentTypeError(f"{text}: {name} is {v}; pixel positions start at 0 (the "
                                             "photo's top-left corner)")
        box.append(int(number))
    return tuple(box)


def _number(kind: type, lo=None, hi=None, *, open_range: bool = False):
    """An argparse type: a finite ``kind`` (int or float) from ``lo`` to ``hi`` (excluded with
    ``open_range``), refused at parse time with the range, before any file is read."""
    what = "a whole number" if kind is int else "a number"
    span = (f" between {lo:g} and {hi:g} (both excluded)" if open_range else f" from {lo:g} to {hi:g}") \
        if lo is not None and hi is not None else f" from {lo:g}" if lo is not None else ""

    def parse(text: str):
        try:
            v = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if isinstance(v, float) and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        below = lo is not None and (v <= lo if open_range else v < lo)
        above = hi is not None and (v >= hi if open_range else v > hi)
        if below or above:
            raise argparse.ArgumentTypeError(f"must be {what}{span}, not {text}")
        return v
    parse.__name__ = kind.__name__     # named like its kind (the CLI test finds numeric options by it)
    return parse


def _lime_samples(text: str) -> int:
    """``explain --samples``: LIME needs the photo itself and at least one perturbation."""
    from derm_core.explain.maps import LIME_MIN_SAMPLES
    return _number(int, LIME_MIN_SAMPLES)(text)


_lime_samples.__name__ = "int"      # a numeric option, like those of _number


def _tier_target(text: str) -> float:
    """A tier sensitivity target: a share of the tier's lesions, above 0 and at most 1."""
    v = _number(float, 0.0, 1.0)(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a number above 0 and at most 1, not {text}")
    return v


class _TierTarget(argparse.Action):
    """``--target TIER SENSITIVITY``, the sensitivity checked at parse time (:func:`_tier_target`)."""

    def __call__(self, parser, namespace, values, option_string=None):
        tier, value = values
        try:
            v = _tier_target(value)
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentError(self, f"{tier} {value}: {e}") from None
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), (tier, v)])


class _MemberArg(argparse.Action):
    """``--member ARCH SEED``: a registry architecture and a whole-number seed, checked at parse time."""

    def __call__(self, parser, namespace, values, option_string=None):
        from derm_core.model.networks import list_archs
        arch, seed = values
        if arch not in list_archs():
            raise argparse.ArgumentError(self, f"{arch!r} is not a known architecture; choose one of {list_archs()}")
        try:
            seed = _number(int, 0)(seed)
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentError(self, f"seed {seed}: {e}") from None
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), (arch, seed)])


class _Parser(argparse.ArgumentParser):
    """argparse with DermTriage's promise for a user error: one ``error: ...`` line, exit code 2."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())} (see {self.prog} --help)\n")


def _join_dash_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--opt -10,...`` as ``--opt=-10,...``: argparse takes a value that starts with a minus
    sign and is not one plain number for an option and stops with "expected one argument";
    joined, the option's own type refuses it with the reason."""
    takes_value = {o for sub in _subparsers(parser).values() for a in sub._actions if a.nargs is None
                   and a.option_strings and not isinstance(a, argparse._StoreConstAction) for o in a.option_strings}
    out, i = [], 0
    while i < len(argv):
        tok, nxt = argv[i], argv[i + 1] if i + 1 < len(argv) else ""
        if tok in takes_value and nxt[:1] == "-" and nxt[1:2] in tuple("0123456789."):
            out.append(f"{tok}={nxt}")
            i += 2
        else:
            out.append(tok)
            i += 1
    return out


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each command's parser, by name (for :func:`_join_dash_values` and the tests that walk them)."""
    return next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _crop_photo(photo, crop):
    """(cropped photo, crop box used, how it was chosen) for ``--crop``."""
    from derm_core.data.images import crop_photo
    from derm_core.errors import ImageError
    w, h = photo.size
    if crop == "none":
        return photo, (0, 0, w, h), "none (the whole photo)"
    if crop == "auto":
        from derm_core.explain.lesion import suggest_crop
        box = tuple(int(v) for v in suggest_crop(photo))
        how = "auto (the suggested lesion crop, as on the triage page)"
    else:
        box, how = crop, "given"
    try:
        return crop_photo(photo, box), box, how
    except ImageError as e:
        raise ConfigError(f"--crop {','.join(map(str, box))}: {e}") from None


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
    p.add_argument("--model", default=None,
                   help="model card (.json) or run folder; default: $DERMTRIAGE_MODEL, else the shipped model")


def _model(a):
    """The model a command uses: ``--model``, else ``$DERMTRIAGE_MODEL``, else the shipped model."""
    from derm_core.settings import settings
    return a.model or settings().model


def _add_clinical(p):
    p.add_argument("--age", type=float)
    p.add_argument("--sex", choices=["male", "female"])
    p.add_argument("--site")


def _train_config(a):
    """The training settings of ``train``/``train-ensemble`` (--no-resume and --new both set
    resume=False), with the device's batch size and a teacher's split filled in: they are part
    of the settings a resume checks, and the run folder is claimed before ``train`` runs."""
    from derm_core.fit.config import config_from_args, for_device
    from derm_core.fit.train import with_teacher_split
    from derm_core.model.device import pick_device
    cfg = with_teacher_split(config_from_args(a))
    return for_device(cfg, pick_device(cfg.device))


def cmd_train(a) -> int:
    from derm_core.fit.train import Stopped, train
    cfg = _train_config(a)
    command = _command(a)
    from derm_core.fit.run_folder import claim, validate_config
    validate_config(cfg)             # before any data is read (also checked again inside train)
    try:
        with claim(cfg, command, int(os.environ.get("RANK", "0")), force=a.force):
            path = train(cfg, command=command)
    except Stopped as e:
        print(e, file=sys.stderr)
        return 3
    if path:
        print(json.dumps({"model": str(path), "metrics": _headline(path)}, indent=2))
    return 0


def _member_plan(a, cfg) -> list:
    """The members of ``train-ensemble``: each ``--member ARCH SEED``, or ``--members N`` of
    ``--arch`` with seeds ``--seed``, ``--seed`` + 1, ..."""
    from derm_core.fit.ensemble import MemberPlan
    if a.member:
        return [MemberPlan(arch, seed) for arch, seed in a.member]
    return [MemberPlan(cfg.arch, cfg.seed + i) for i in range(a.members)]


def cmd_train_ensemble(a) -> int:
    from dataclasses import replace

    from derm_core.fit.ensemble import train_ensemble
    from derm_core.fit.run_folder import claim, validate_config
    from derm_core.fit.train import Stopped
    cfg = _train_config(a)
    plan = _member_plan(a, cfg)
    command = _command(a)
    for m in plan:
        validate_config(replace(cfg, arch=m.arch, seed=m.seed))
    if len(plan) < 2:
        raise ConfigError("an ensemble needs at least two members: give --member twice or more, or --members 2+")
    try:
        with claim(cfg, command, force=a.force):
            path = train_ensemble(cfg, plan, command)
    except Stopped as e:
        print(e, file=sys.stderr)
        return 3
    print(json.dumps({"model": str(path), "metrics": _headline(path)}, indent=2))
    return 0


def cmd_ensemble(a) -> int:
    from derm_core.fit.ensemble import combine
    path = combine(a.runs, a.data, a.out, _command(a))
    print(json.dumps({"model": str(path), "metrics": _headline(path)}, indent=2))
    return 0


def _headline(card_path) -> dict:
    """Accuracy, balanced accuracy and macro AUC per split, from the card just written."""
    from derm_core.model.checkpoint import read_card
    return {k: {m: v[m] for m in ("accuracy", "balanced_accuracy", "macro_auc")}
            for k, v in read_card(card_path).metrics.items()}


def cmd_evaluate(a) -> int:
    from derm_core.data.dataset import load_table
    from derm_core.data.splits import split_rows
    from derm_core.evaluate.evaluation import build_report, isic_predictions
    from derm_core.model.calibration import softmax
    from derm_core.model.checkpoint import atomic_write_json, load_model
    from derm_core.model.predictor import Predictor
    out = _check_out_file(a.out, "--out")
    if a.predictions:
        _check_out_file(a.predictions, "--predictions")
    model, card = load_model(_model(a))
    tax = card.taxonomy
    table = load_table(a.data, tax, a.csv)
    if a.split:
        sf = Path(a.split_file) if a.split_file else card.split_file
        table = split_rows(table, sf, a.split)
    t0 = time.time()
    pred = Predictor(model, card).predict_table(table, batch_size=a.batch_size, use_metadata=not a.no_metadata)
    rep = build_report(table["y"].to_numpy(), pred["logits"], card.temperature, card.thresholds, tax, table,
                       card.balanced_rule)
    from derm_core.model.conformal import report_block_for  # issue 12: coverage of the prediction sets on these data
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
        from derm_core.model.checkpoint import atomic_write_bytes
        csv = isic_predictions(table["image_id"], softmax(pred["logits"], card.temperature), tax).to_csv(index=False)
        atomic_write_bytes(Path(a.predictions), csv.encode("utf-8"))
    print(json.dumps({k: rep.get(k) for k in ("n_images", "accuracy", "balanced_accuracy", "macro_auc", "ece")}, indent=2))
    return 0


def cmd_predict(a) -> int:
    from derm_core.data.images import load_image
    from derm_core.model.predictor import Predictor
    clinical = _clinical(a)
    photo = load_image(a.image)
    pred = Predictor.from_path(_model(a))
    crop, box, how = _crop_photo(photo, a.crop)
    res = pred.predict(crop, clinical, anyway=a.anyway)
    out = {"image": a.image, "model": pred.card.name, "photo_size": list(photo.size),
           "crop": {"box": list(box), "mode": how}, **res.to_dict()}
    from derm_core.model.conformal import predict_fields  # issue 12: conformal prediction set at --level
    out.update(predict_fields(pred.card, res.probs, a.level) if not res.withheld else
               {"prediction_set": None, "level": a.level, "prediction_set_note": "no prediction set: the photo was not triaged"})
    if a.json:
        print(json.dumps(_json_safe(out), indent=2))
    elif res.withheld:
        print(f"crop: x0,y0,x1,y1 = {','.join(map(str, box))} of {photo.width}x{photo.height} ({how})")
        print(f"not triaged (out of scope): {res.withheld}")
        print("no risk tier or differential is given; pass --anyway to triage it regardless")
    else:
        print(f"crop: x0,y0,x1,y1 = {','.join(map(str, box))} of {photo.width}x{photo.height} ({how})")
        print(f"risk tier: {res.tier}: {res.action}")
        print(f"  because {res.tier_reason}")
        if out["prediction_set"] is not None:
            print(f"prediction set ({out['level']:.0%}): {', '.join(out['prediction_set']) or 'empty'}")
        for c, p in res.differential:
            print(f"  {pred.taxonomy.display_names[c]:<60} {p:6.1%}")
        if res.low_confidence:
            print("  (low confidence: no class passed its threshold)")
    return 0


def cmd_explain(a) -> int:
    from derm_core.data.images import load_image
    from derm_core.explain import maps as E
    from derm_core.explain.lesion import biopsy_site, suggest_mask
    from derm_core.model.predictor import Predictor
    from derm_core.triage.rules import biopsy_class
    out = _check_out_dir(a.out, "--out")
    clinical = _clinical(a)
    photo = load_image(a.image)
    pred = Predictor.from_path(_model(a))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = {"image": a.image, "model": pred.card.name, "method": a.method}
    gate = pred.predict(photo, clinical, anyway=a.anyway)   # no biopsy site or map for an out-of-scope photo
    if gate.withheld:
        result.update(withheld=gate.withheld, files=[])
        print(json.dumps(result, indent=2) if a.json else
              f"not explained (out of scope): {gate.withheld}; pass --anyway to explain it regardless")
        return 0
    outline = suggest_mask(photo)   # the whole photo is explained: points map to it as on the triage page
    if a.member is not None and (a.method == "lime" or not pred.card.is_ensemble):
        raise ConfigError(f"--member names an ensemble's member for the Grad-CAM family; "
                          f"{'LIME explains the whole model' if a.method == 'lime' else 'this model is one network'}")
    if a.member is not None and a.member > len(pred.card.members):
        raise ConfigError(f"--member {a.member}: this ensemble has {len(pred.card.members)} members")
    if a.method == "lime":
        target = pred.taxonomy.index(biopsy_class(gate, pred.taxonomy))    # the triage page's class
        lime = E.lime_explanation(pred, photo, target, clinical=clinical, seed=a.seed,
                                  num_samples=E.LIME_SAMPLES if a.samples is None else a.samples)
        site = biopsy_site(lime, outline, "the automatic lesion outline")   # the triage page's rule
        x, y = lime.geometry.point_to_photo(site.x, site.y)
        lime.overlay(photo).save(out / "lime.png")
        result.update(target=pred.taxonomy.classes[lime.target],
                      biopsy_site={"x": x, "y": y, "note": site.note} if site.suggested else None,
                      **({} if site.suggested else {"biopsy_site_note": site.note}),
                      superpixel_weights={str(k): v for k, v in sorted(lime.weights.items())}, files=[str(out / "lime.png")])
    else:
        if a.method == "scorecam":
            print("note: ScoreCAM runs the network once per feature channel; it can take tens of seconds on a CPU",
                  file=sys.stderr)
        cam = E.cam_heatmap(pred, photo, method=a.method, clinical=clinical,
                            member=None if a.member is None else a.member - 1)
        cam.overlay(photo).save(out / f"{a.method}.png")
        x, y = cam.geometry.point_to_photo(*E.cam_peak(cam.heatmap))
        result.update(target=pred.taxonomy.classes[cam.target], cam_peak={"x": x, "y": y},
                      files=[str(out / f"{a.method}.png")])
        if cam.member is not None:
            result["explains"] = E.cam_scope(pred.card, cam.member)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    from derm_core.explain.mapquality import quality_fields  # issue 12: how far to trust the map
    result["map_quality"] = quality_fields(pred, photo, lime if a.method == "lime" else cam, outline, clinical)
    print(json.dumps(result, indent=2) if a.json else
          f"{a.method}: {result['target']} in {result['seconds']} s; wrote {', '.join(result['files'])}")
    return 0


def cmd_recalibrate(a) -> int:
    from derm_core.data.dataset import load_table
    from derm_core.data.splits import load_splits
    from derm_core.fit.train import finish
    from derm_core.model.checkpoint import load_model
    model, card = load_model(_model(a))
    table = load_table(a.data, card.taxonomy, a.csv)
    split = load_splits(table, card.split_file)
    from dataclasses import replace

    from derm_core.triage.rules import DEFAULT_TIER_SENSITIVITY
    if a.tta is not None:
        card = card.with_(preprocessing=replace(card.preprocessing, tta=a.tta))
    targets = dict(card.tier_sensitivity_targets or DEFAULT_TIER_SENSITIVITY)
    for t, v in a.target or []:        # checked when parsed (_TierTarget)
        targets[t] = v
    card = card.with_(recalibrations=(*card.recalibrations,
                                      {"command": _command(a), "time": time.strftime("%Y-%m-%d %H:%M:%S")}))
    path = finish(model, card, table, split, card.path.with_suffix(""), targets, progress=print)
    print(json.dumps(_headline(path), indent=2))
    return 0


def cmd_release(a) -> int:
    from derm_core.fit.release import release
    path = release(a.run, a.data, a.out, _command(a))
    print(json.dumps({"card": str(path), **_headline(path)}, indent=2))
    return 0


def cmd_fit_ood(a) -> int:
    from derm_core.data.dataset import load_table
    from derm_core.data.splits import load_splits
    from derm_core.model.checkpoint import load_model
    from derm_core.model.ood import fit_for_model
    model, card = load_model(_model(a))
    table = load_table(a.data, card.taxonomy, a.csv)
    split = load_splits(table, card.split_file)
    print(json.dumps(fit_for_model(model, card, table, split), indent=2))
    return 0


def cmd_info(a) -> int:
    """Print what a command would use (settings and where each came from, model, device, fast path),
    so a wrong folder or model is visible before a long run. An unreadable model is reported, not raised."""
    from derm_core.errors import DermTriageError
    from derm_core.model.checkpoint import read_card
    from derm_core.model.device import pick_device
    from derm_core.model.inference import fast_path
    from derm_core.settings import describe
    rows = describe()
    path = next(r["value"] for r in rows if r["field"] == "model")
    model = {"path": path}
    try:
        card = read_card(path)
        model.update(name=card.name, version=card.version, arch=card.arch)
    except (DermTriageError, OSError) as e:
        model["error"] = _one_line(e)
    info = {"settings": rows, "model": model}
    by_field = {r["field"]: r for r in rows}
    try:
        device = pick_device()
        info["device"] = str(device)
    except DermTriageError as e:     # e.g. DERMTRIAGE_DEVICE=tpu, or cuda on a machine without a GPU
        device = None
        info.update(device=None, device_error=_one_line(e))
        by_field["device"].update(valid=False, source=f"environment, invalid: {_one_line(e)}")
    try:
        info["fast_path"] = fast_path(device) if device is not None else None
    except DermTriageError as e:     # e.g. DERMTRIAGE_FAST_PATH=fp8 (its row already says why)
        info.update(fast_path=None, fast_path_error=_one_line(e))
    if a.json:
        print(json.dumps(info, indent=2))
        return 0
    print("settings (variable  value  [source]):")
    width = max(len(r["env"]) for r in rows)
    for r in rows:
        value = "(not set)" if r["value"] is None else r["value"] if r.get("valid", True) else f"{r['value']} (not used)"
        print(f"  {r['env']:<{width}}  {value}  [{r['source']}]")
        print(f"  {'':<{width}}    {r['help']}; default: {r['default']}")
    if "error" in model:
        print(f"model:     {path}: cannot be used: {model['error']}")
    else:
        print(f"model:     {path}: {model['name']} {model['version']} ({model['arch']})")
    print(f"device:    {info['device'] or 'cannot be used: ' + info['device_error']}")
    print(f"fast path: {info['fast_path'] or ('cannot be used: ' + info['fast_path_error'] if 'fast_path_error' in info else '-')}")
    return 0


def cmd_study_demo(a) -> int:
    """A reader study read by simulated readers: the Results page filled before anyone reads."""
    from derm_core.data.splits import held_out_cases
    from derm_core.model.predictor import Predictor
    from derm_core.settings import settings
    from derm_core.study import results as R
    from derm_core.study.cases import Study, StudySpec, create_study
    from derm_core.study.simulate import simulate_readers
    from derm_core.study.store import StudyStore
    pred = Predictor.from_path(_model(a))
    data = a.data or settings().data
    table, pool = held_out_cases(data, pred.taxonomy, pred.card)
    spec = StudySpec(a.name, str(data), a.question, a.cases, "class", None, False, "both", a.seed, "same",
                     a.planted, True)
    store = StudyStore(a.db)
    sid = create_study(store, spec, table, pred.taxonomy, pred, pred.card.thresholds, pool,
                       callback=lambda d, n: d % 10 == 0 or d == n and print(f"model output: {d} of {n} cases",
                                                                            file=sys.stderr))
    study = Study.load(store, sid)
    simulate_readers(store, study, a.readers_per_level, seed=a.seed)
    answers = store.answers(sid)
    honest = R.honest(answers)
    levels = R.level_table(R.reader_table(honest))
    aucs = R.rating_rocs(honest, study)
    orh, why = R.assistance_mrmc(answers, study)
    _, reliance = R.over_reliance(answers, study)
    print(f"study #{sid} {study.spec.name!r} in {store.path}: {study.describe()}")
    print(f"cases from {pool}; {answers['reader_id'].nunique()} simulated readers")
    print("accuracy per level (cases with the model's own advice):")
    for r in levels.itertuples(index=False):
        print(f"  {r.level:<22} {r.phase:<11} {r.accuracy_mean:6.1%}  ({r.n_readers} readers)")
    print("ratings AUC, mean over readers: " + ", ".join(
        f"{ph} {aucs.loc[aucs['phase'] == ph, 'auc'].mean():.3f}" for ph in ("unassisted", "assisted")))
    print(f"MRMC: {orh.summary() if orh else why}")
    on_accuracy, why = R.assistance_mrmc(answers)          # the same cases, scored on accuracy
    print(f"MRMC on accuracy: {on_accuracy.summary() if on_accuracy else why}")
    print(f"over-reliance: {R.over_reliance_summary(reliance, study)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from derm_core.fit.config import add_config_arguments, cli_fields
    ap = _Parser(prog="python -m derm_core", description="DermTriage: skin-lesion triage engine")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a model on a dataset folder")
    add_config_arguments(t, names=[f.name for f in cli_fields() if f.name != "device"])   # TrainConfig's fields
    t.add_argument("--new", dest="resume", action="store_false", help="start over in --out even though it holds a "
                   "run (same as --no-resume; the old epoch log is kept aside)")
    t.add_argument("--force", action="store_true", help="resume the run in --out even though its settings differ")
    add_config_arguments(t, names=["device"])       # after the CLI-only flags, where --help has always listed it
    t.set_defaults(fn=cmd_train)

    te = sub.add_parser("train-ensemble", help="train several models on one split, one after another (each "
                                               "resumable), and combine them into one calibrated ensemble")
    add_config_arguments(te)
    te.add_argument("--members", type=_number(int, 2, 20), default=3,
                    help="members of --arch, seeds --seed, --seed + 1, ... (default 3)")
    te.add_argument("--member", nargs=2, action=_MemberArg, metavar=("ARCH", "SEED"),
                    help="a member of this architecture and seed (repeatable; replaces --members)")
    te.add_argument("--force", action="store_true", help="resume the run in --out even though its settings differ")
    te.set_defaults(fn=cmd_train_ensemble)

    en = sub.add_parser("ensemble", help="combine finished runs of one split into one calibrated ensemble "
                                         "(the members' logits averaged)")
    en.add_argument("runs", nargs="+", help="the members: finished runs' folders or model cards")
    en.add_argument("--data", help="the runs' dataset folder; default $DERMTRIAGE_DATA")
    en.add_argument("--out", required=True, help="the ensemble's run folder")
    en.set_defaults(fn=cmd_ensemble)

    e = sub.add_parser("evaluate", help="evaluate a model on every image of a dataset folder")
    e.add_argument("--data", help="dataset folder; default $DERMTRIAGE_DATA")
    e.add_argument("--csv")
    _add_model(e)
    e.add_argument("--split", choices=["train", "val", "test"], help="only this split of the model's split file")
    e.add_argument("--split-file", help="split file (default: the one in the model card)")
    e.add_argument("--out", default="report.json")
    e.add_argument("--predictions", help="also write ISIC 2018 Task 3 CSV predictions here")
    e.add_argument("--no-metadata", action="store_true", help="hide age/sex/site from a metadata model (ablation)")
    e.add_argument("--batch-size", type=_number(int, 1), default=64)
    e.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("predict", help="triage one photo")
    p.add_argument("image")
    _add_clinical(p)
    _add_model(p)
    p.add_argument("--crop", type=_parse_crop, default="auto", metavar="auto|none|x0,y0,x1,y1",
                   help="auto: the suggested lesion crop, as on the triage page (default); none: the whole photo; "
                        "or a box in photo pixels")
    p.add_argument("--level", type=_number(float, 0.0, 1.0, open_range=True), default=0.9,
                   help="coverage level of the conformal prediction set (default 0.9: the true diagnosis is in the "
                        "set 90%% of the time on photos like the validation set)")
    p.add_argument("--anyway", action="store_true", help="triage a photo the out-of-scope check refuses (the result "
                   "is marked and may mean nothing)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_predict)
    x = sub.add_parser("explain", help="Grad-CAM or LIME + biopsy site for one photo")
    x.add_argument("image")
    x.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++", "eigencam", "scorecam", "lime"])
    x.add_argument("--out", required=True, help="folder for the overlay images")
    x.add_argument("--samples", type=_lime_samples,
                   help="LIME samples (default: explain.LIME_SAMPLES, as on the triage page)")
    x.add_argument("--seed", type=_number(int, 0, 2**32 - 1), default=0,
                   help="LIME sampling seed (the same seed gives the same weights)")
    _add_clinical(x)
    _add_model(x)
    x.add_argument("--member", type=_number(int, 1),
                   help="an ensemble's member the Grad-CAM family explains, 1 = the first (the default); "
                        "LIME always explains the whole ensemble")
    x.add_argument("--anyway", action="store_true", help="explain a photo the out-of-scope check refuses")
    x.add_argument("--json", action="store_true")
    x.set_defaults(fn=cmd_explain)

    r = sub.add_parser("recalibrate", help="re-fit temperature, thresholds, reports and out-of-scope detector "
                                          "of a trained model on its own validation split")
    r.add_argument("--data", help="the model's training dataset folder; default $DERMTRIAGE_DATA")
    r.add_argument("--csv")
    _add_model(r)
    r.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help="flip test-time augmentation")
    r.add_argument("--target", nargs=2, action=_TierTarget, metavar=("TIER", "SENSITIVITY"), default=None,
                   help="tier sensitivity target on validation, e.g. --target dangerous 0.95 (repeatable)")
    r.set_defaults(fn=cmd_recalibrate)

    rl = sub.add_parser("release", help="make every shipped artifact of a finished run in one go: weights, card, "
                                       "calibration, prediction sets, out-of-scope gate, reports and MODEL.md")
    rl.add_argument("run", help="the finished run: its folder or model card")
    rl.add_argument("--data", help="the run's dataset folder; default $DERMTRIAGE_DATA")
    rl.add_argument("--out", required=True, help="the bundle's folder, e.g. weights/default (may be the run's own)")
    rl.set_defaults(fn=cmd_release)

    o = sub.add_parser("fit-ood", help="(re)fit a model's out-of-scope detector on its own split")
    o.add_argument("--data", help="the model's training dataset folder; default $DERMTRIAGE_DATA")
    o.add_argument("--csv")
    _add_model(o)
    o.set_defaults(fn=cmd_fit_ood)

    sd = sub.add_parser("study-demo", help="create a reader study (both parts on the same cases, planted advice, "
                                           "malignancy ratings) and let simulated readers read it")
    sd.add_argument("--data", help="dataset folder; default $DERMTRIAGE_DATA")
    _add_model(sd)
    sd.add_argument("--name", default="Simulated readers (demo)", help="the study's name (must be new)")
    sd.add_argument("--question", default="diagnosis", choices=["diagnosis", "tier", "malignancy"])
    sd.add_argument("--cases", type=_number(int, 1), default=40, help="cases per part (default 40)")
    sd.add_argument("--planted", type=_number(float, 0.0, 0.5), default=0.15,
                    help="share of the assisted cases with planted wrong advice (default 0.15)")
    sd.add_argument("--readers-per-level", type=_number(int, 1), default=3,
                    help="simulated readers of each experience level (default 3)")
    sd.add_argument("--seed", type=_number(int, 0), default=0)
    sd.add_argument("--db", help="study database; default $DERMTRIAGE_STUDY_DB (the app's)")
    sd.set_defaults(fn=cmd_study_demo)

    i = sub.add_parser("info", help="show the settings ($DERMTRIAGE_* variables), model, device and fast path in use")
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=cmd_info)
    return ap


ENVIRONMENT_ERRNOS = {"ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EFBIG", "EMFILE", "ELOOP", "ENAMETOOLONG"}


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv=None) -> int:
    """Run one command. A :class:`~derm_core.errors.DermTriageError` (a bad photo, dataset, model
    card, profile, argument or run folder) and a full, read-only or forbidden disk are reported as
    one ``error: ...`` line with exit code 2; anything else is a bug and keeps its traceback."""
    import errno

    from derm_core.errors import DermTriageError
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        a = parser.parse_args(_join_dash_values(parser, argv))
    except SystemExit as e:          # --help (0), or a usage error already printed as one line (2)
        return e.code if isinstance(e.code, int) else 2
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
