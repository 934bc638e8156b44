"""Issue 13: hostile inputs the first corpus missed.

Decoder surface (only the listed formats, chosen by content; no subprocess, no file written),
float photos, extreme shapes, flat photos, bad dataset masks, model cards and threshold
profiles validated on load, CLI output paths and one-line errors, training arguments, the run
folder lock and settings check, degenerate data. The image corpus itself (with the new
entries) is in tests/test_robustness.py; this file adds the properties and the other classes.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_robustness import CORPUS, EPS

from conftest import CLASS_COLOURS, ROOT, lesion_image, tiny_card, write_dataset
from derm_core.cli import main
from derm_core.data.dataset import DataError, load_table
from derm_core.data.images import MAX_ASPECT, MIN_SIDE, ImageError, is_flat, load_image, load_mask
from derm_core.errors import DermTriageError, RunFolderError
from derm_core.explain import maps as E
from derm_core.model.checkpoint import ModelError, load_model, read_card, save_model
from derm_core.model.networks import create_model
from derm_core.model.predictor import Predictor
from derm_core.triage import profiles as P


def _enc(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


# =========================================================================== decoder surface

_EVENTS: list = []
_GUARD = {"on": False, "thread": None}
_SPAWN = ("subprocess.Popen", "os.system", "os.posix_spawn", "os.exec", "os.spawn", "os.fork", "os.forkpty",
          "os.startfile", "pty.spawn")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _audit(event, args):
    if not _GUARD["on"] or threading.get_ident() != _GUARD["thread"]:
        return
    if event in _SPAWN or event.startswith("tempfile."):
        _EVENTS.append((event, args[:2]))
    elif event == "open" and not isinstance(args[0], int):
        path, mode, flags = args
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & _WRITE_FLAGS):
            _EVENTS.append((event, (path, mode)))


sys.addaudithook(_audit)   # audit hooks cannot be removed: it records only while _GUARD is on


def _decode_all(tmp_path: Path) -> None:
    for name, (data, _) in CORPUS.items():
        for source in (data, io.BytesIO(data), tmp_path / name):
            try:
                load_image(source)
            except ImageError:
                pass


def test_no_subprocess_and_no_file_written_while_decoding_the_corpus(tmp_path):
    for name, (data, _) in CORPUS.items():
        (tmp_path / name).write_bytes(data)
    _decode_all(tmp_path)                    # warm up: lazy plugin imports may write bytecode caches
    # the guard sees what it must: a write and a subprocess in this thread are recorded
    _GUARD.update(on=True, thread=threading.get_ident())
    try:
        (tmp_path / "probe.txt").write_text("x")
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    finally:
        _GUARD["on"] = False
    assert {e for e, _ in _EVENTS} >= {"open", "subprocess.Popen"}
    _EVENTS.clear()
    _GUARD.update(on=True, thread=threading.get_ident())
    try:
        _decode_all(tmp_path)
    finally:
        _GUARD["on"] = False
    assert _EVENTS == [], f"decoding the corpus wrote a file or started a process: {_EVENTS[:5]}"


def test_postscript_never_reaches_ghostscript(monkeypatch):
    """Pillow on its own would hand this file to its EPS plugin (Ghostscript when installed)."""
    assert Image.open(io.BytesIO(EPS)).format == "EPS"
    from PIL import EpsImagePlugin

    def no_gs(*a, **k):
        raise AssertionError("the EPS plugin was reached")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", no_gs)
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    monkeypatch.setattr(subprocess, "Popen", no_gs)
    for source in (EPS, io.BytesIO(EPS)):
        with pytest.raises(ImageError, match="PostScript/EPS file: not a format DermTriage reads") as e:
            load_image(source)
        assert "damaged or truncated" not in str(e.value)


def test_format_is_chosen_by_content_not_extension(tmp_path):
    png = _enc(lesion_image(CLASS_COLOURS["nv"], (64, 48)), "PNG")
    p = tmp_path / "photo.jpg"
    p.write_bytes(png)
    assert load_image(p).size == (64, 48)                    # a PNG named .jpg still loads
    ico = tmp_path / "photo.ico"
    ico.write_bytes(_enc(lesion_image(CLASS_COLOURS["nv"], (64, 48)), "ICO"))
    with pytest.raises(ImageError, match="ICO"):            # an allowed-looking extension does not help either
        load_image(ico)


# --------------------------------------------------------------------------- shapes and values (properties)

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=st.integers(MIN_SIDE, 400), h=st.integers(MIN_SIDE, 400))
def test_aspect_ratio_over_the_limit_is_refused_before_decoding(w, h):
    data = _enc(Image.new("L", (w, h), 90), "PNG")
    ratio = max(w, h) / min(w, h)
    if ratio > MAX_ASPECT:
        with pytest.raises(ImageError, match=r"strip; photos up to 10:1"):
            load_image(data)
    else:
        assert load_image(data).size == (w, h)


def test_a_huge_strip_is_refused_without_decoding(monkeypatch):
    """The 2,000,000 x 20 PNG of the issue: refused from its header, before any pixel is decoded."""
    from PIL import ImageFile
    calls = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: calls.append(1))
    with pytest.raises(ImageError, match="2000000x20 pixels, a 100000:1 strip"):
        load_image(CORPUS["strip_header_2000000x20.png"][0])
    assert calls == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scale=st.sampled_from([1.0, 255.0]), seed=st.integers(0, 2**16), w=st.integers(16, 40), h=st.integers(16, 40))
def test_float_photos_are_scaled_by_their_range(scale, seed, w, h):
    rng = np.random.default_rng(seed)
    arr = rng.uniform(0, 1, (h, w)).astype(np.float32)
    arr[0, 0], arr[-1, -1] = 0.0, 1.0                   # the full range occurs
    got = np.asarray(load_image(_enc(Image.fromarray(arr * np.float32(scale)), "TIFF")))[..., 0].astype(int)
    want = np.clip(arr.astype(np.float64) * 255 + 0.5, 0, 255).astype(int)
    assert np.abs(got - want).max() <= 1
    assert got.max() == 255


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.sampled_from([np.nan, np.inf, -np.inf]), x=st.integers(0, 31), y=st.integers(0, 23))
def test_nan_or_infinite_pixels_are_refused(value, x, y):
    arr = np.full((24, 32), 0.5, dtype=np.float32)
    arr[y, x] = value
    with pytest.raises(ImageError, match=r"1 pixel value\(s\) that are not numbers"):
        load_image(_enc(Image.fromarray(arr), "TIFF"))


def test_float_outside_the_nominal_ranges_uses_the_real_range():
    arr = np.linspace(-3.0, 5.0, 32 * 24, dtype=np.float32).reshape(24, 32)
    got = np.asarray(load_image(_enc(Image.fromarray(arr), "TIFF")))[..., 0]
    assert got.min() == 0 and got.max() == 255


# =========================================================================== flat photos, masks

def _lime(weights: dict, size=(48, 64)) -> E.LimeResult:
    seg = np.zeros(size, dtype=int)
    seg[:, size[1] // 2:] = 1
    return E.LimeResult(segments=seg, weights=weights, target=0, seconds=0.0, num_samples=10,
                        image_size=(size[1], size[0]))


def test_no_biopsy_site_without_signal_and_one_with_it():
    flat = E.biopsy_site(_lime({0: 1e-10, 1: -3e-11}))
    assert not flat.suggested and not flat.region.any() and flat.segments == ()
    assert "no biopsy site suggested" in flat.note and "no signal" in flat.note
    real = E.biopsy_site(_lime({0: 0.02, 1: -0.01}))
    assert real.suggested and real.region.any() and real.segments == (0,)


def test_a_flat_photo_gets_no_biopsy_site_and_an_out_of_scope_note(tiny_predictor):
    flat = Image.new("RGB", (64, 48), (180, 140, 120))
    assert is_flat(flat) and not is_flat(lesion_image(CLASS_COLOURS["mel"]))
    lime = E.lime_explanation(tiny_predictor, flat, num_samples=40)
    site = E.biopsy_site(lime)
    assert not site.suggested and "no signal" in site.note
    res = tiny_predictor.predict(flat)
    assert res.out_of_scope is True and any("one colour" in n for n in res.notes)
    assert not any("one colour" in n for n in tiny_predictor.predict(lesion_image(CLASS_COLOURS["mel"])).notes)


def test_a_bad_dataset_mask_falls_back_with_the_reason(tmp_path):
    size = (64, 48)
    good = np.zeros((48, 64), dtype=np.uint8)
    good[10:30, 20:40] = 255
    Image.fromarray(good).save(tmp_path / "good.png")
    mask, note = load_mask(tmp_path / "good.png", size)
    assert note == "" and mask.shape == (48, 64) and mask[20, 30] and not mask[0, 0]
    Image.fromarray(good).resize((32, 24)).save(tmp_path / "small.png")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "good.png").read_bytes()[:60])
    (tmp_path / "text.png").write_text("not a mask")
    Image.new("L", size, 0).save(tmp_path / "empty.png")
    for name, why in (("small.png", "is 32x24 pixels but the photo is 64x48"), ("truncated.png", "cannot be read"),
                      ("text.png", "cannot be read"), ("missing.png", "cannot be read"), ("empty.png", "is empty")):
        mask, note = load_mask(tmp_path / name, size)
        assert mask is None and why in note and name in note and "automatic lesion outline" in note, (name, note)


# =========================================================================== model cards

def _saved(tmp_path, ham7, name="m") -> Path:
    torch.manual_seed(0)
    return save_model(create_model("tiny_test", 7, True, pretrained="none"), tiny_card(ham7),
                      tmp_path / name / "model")


CARD_BREAKS = {
    "no input_size": (lambda d: d["preprocessing"].pop("input_size"), "preprocessing.input_size"),
    "no mean": (lambda d: d["preprocessing"].pop("mean"), "preprocessing.mean"),
    "two-value mean": (lambda d: d["preprocessing"].update(mean=[0.5, 0.5]), "preprocessing.mean"),
    "input_size 0": (lambda d: d["preprocessing"].update(input_size=[0, 0]), "preprocessing.input_size"),
    "input_size strings": (lambda d: d["preprocessing"].update(input_size=["48", "64"]), "preprocessing.input_size"),
    "std zeros": (lambda d: d["preprocessing"].update(std=[0, 0, 0]), "preprocessing.std"),
    "threshold string": (lambda d: d["thresholds"]["classes"].update(mel="0.1"), "thresholds.classes.mel"),
    "tier threshold 2": (lambda d: d["thresholds"]["tiers"].update(dangerous=2), "thresholds.tiers.dangerous"),
    "temperature inf": (lambda d: d.update(temperature=math.inf), "temperature"),
    "temperature nan": (lambda d: d.update(temperature=math.nan), "temperature"),
    "temperature warm": (lambda d: d.update(temperature="warm"), "temperature"),
    "temperature 0": (lambda d: d.update(temperature=0), "temperature"),
    "use_metadata string": (lambda d: d.update(use_metadata="yes"), "use_metadata"),
    "ood threshold string": (lambda d: d.update(out_of_scope={"score": "feature", "threshold": "high"}),
                             "out_of_scope.threshold"),
    "ood unknown score": (lambda d: d.update(out_of_scope={"score": "vibes", "threshold": 0.1}), "out_of_scope.score"),
    "taxonomy not object": (lambda d: d.update(taxonomy="ham7"), "taxonomy"),
    "preprocessing list": (lambda d: d.update(preprocessing=[1, 2]), "preprocessing"),
}


@pytest.mark.parametrize("case", list(CARD_BREAKS))
def test_broken_cards_are_refused_naming_file_and_field(tmp_path, ham7, case):
    path = _saved(tmp_path, ham7)
    d = json.loads(path.read_text())
    breaker, field = CARD_BREAKS[case]
    breaker(d)
    path.write_text(json.dumps(d))          # Python's json writes Infinity/NaN as the cards did
    with pytest.raises(ModelError) as e:
        load_model(path)
    assert str(path) in str(e.value) and f"'{field}'" in str(e.value), str(e.value)
    assert isinstance(e.value, DermTriageError) and isinstance(e.value, ValueError)


def test_a_valid_card_and_the_shipped_card_still_load(tmp_path, ham7):
    load_model(_saved(tmp_path, ham7))
    read_card()                                          # the shipped model's card


def test_truncated_ood_file_says_the_warning_is_unavailable(tmp_path, ham7):
    from derm_core.model import ood
    from derm_core.model.checkpoint import atomic_save_tensors
    path = _saved(tmp_path, ham7)
    photo = lesion_image(CLASS_COLOURS["nv"], (64, 48))
    plain = Predictor.from_path(path, device=torch.device("cpu"))
    assert plain.ood is None and plain.ood_note is None            # no detector named: nothing to say
    feats = ood.features([lesion_image(CLASS_COLOURS["nv"], (64, 48), seed=k) for k in range(12)])
    det = ood.fit_detector(feats, feats)
    d = json.loads(path.read_text())
    d["out_of_scope"] = {"score": ood.SCORE, "threshold": det.threshold, "file": ood.detector_path(path).name}
    path.write_text(json.dumps(d))
    atomic_save_tensors(ood.detector_path(path), det.tensors())
    ok = Predictor.from_path(path, device=torch.device("cpu"))
    assert ok.ood is not None and ok.predict(photo).out_of_scope is not None
    good = ood.detector_path(path).read_bytes()
    for broken, why in ((good[: len(good) // 2], "cannot be read"), (None, "is missing")):
        if broken is None:
            ood.detector_path(path).unlink()
        else:
            ood.detector_path(path).write_bytes(broken)
        pred = Predictor.from_path(path, device=torch.device("cpu"))
        res = pred.predict(photo)
        assert res.out_of_scope is None and not res.withheld     # no gate: triaged, with the reason noted
        note = [n for n in res.notes if "out-of-scope check is unavailable" in n]
        assert note and why in note[0] and "fit-ood" in note[0], res.notes
    d["out_of_scope"] = {"score": "feature", "threshold": 0.2, "file": ood.detector_path(path).name}   # an older kind
    path.write_text(json.dumps(d))
    res = Predictor.from_path(path, device=torch.device("cpu")).predict(photo)
    assert any("older kind" in n for n in res.notes), res.notes


# =========================================================================== threshold profiles

def _profile_folder(tmp_path, ham7):
    path = _saved(tmp_path, ham7)
    card = read_card(path)
    folder = tmp_path / "profiles"
    good = P.save_profile("clinic", card.thresholds, card, folder=folder)
    return card, folder, good


PROFILE_BREAKS = {
    "format_version one": (lambda d: d.update(format_version="one"), "format_version"),
    "version latest": (lambda d: d.update(version="latest"), "version"),
    "numeric created": (lambda d: d.update(created=1700000000), "created"),
    "classes 7": (lambda d: d.update(classes=7), "classes"),
    "name number": (lambda d: d.update(name=5), "name"),
    "temperature string": (lambda d: d["model"].update(temperature="warm"), "model.temperature"),
}


@pytest.mark.parametrize("case", list(PROFILE_BREAKS))
def test_malformed_profiles_are_listed_as_unreadable_with_the_field(tmp_path, ham7, case):
    card, folder, good = _profile_folder(tmp_path, ham7)
    d = json.loads(good.path.read_text())
    breaker, field = PROFILE_BREAKS[case]
    breaker(d)
    (folder / "broken@v1.json").write_text(json.dumps(d))
    listed = P.list_profiles(folder)
    errors = [x for x in listed if isinstance(x, P.ProfileError)]
    assert [p.id for p in listed if isinstance(p, P.Profile)] == ["clinic v1"]
    assert len(errors) == 1 and "broken@v1.json" in str(errors[0]) and f"'{field}'" in str(errors[0])
    with pytest.raises(P.ProfileError, match=field.replace(".", r"\.")):
        P.load_profile(folder / "broken@v1.json", card)


def test_profile_listing_survives_anything(tmp_path, ham7):
    card, folder, good = _profile_folder(tmp_path, ham7)
    d = json.loads(good.path.read_text())
    (folder / "created-number@v1.json").write_text(json.dumps({**d, "name": "other", "created": 5}))
    (folder / "deep@v1.json").write_text("[" * 100000 + "]" * 100000)     # RecursionError inside json
    (folder / "dir@v1.json").mkdir()
    listed = P.list_profiles(folder)
    assert [p.id for p in listed if isinstance(p, P.Profile)] == ["clinic v1"]
    assert len([x for x in listed if isinstance(x, P.ProfileError)]) == 3


def test_triage_page_keeps_working_with_broken_profiles_and_cards(tmp_path, ham7, monkeypatch):
    """A malformed profile is listed as unreadable; a card without input_size falls back to the shipped model."""
    from streamlit.testing.v1 import AppTest
    card, folder, good = _profile_folder(tmp_path, ham7)
    d = json.loads(good.path.read_text())
    (folder / "broken@v1.json").write_text(json.dumps({**d, "version": "latest"}))
    (folder / "mixed@v2.json").write_text(json.dumps({**d, "created": 12345}))
    monkeypatch.setenv("DERMTRIAGE_PROFILES", str(folder))
    monkeypatch.setenv("DERMTRIAGE_MODEL", str(card.path))
    monkeypatch.delenv("DERMTRIAGE_DATA", raising=False)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception, at.exception
    captions = " ".join(c.value for c in at.sidebar.caption)
    assert "Unreadable threshold profile" in captions and "broken@v1.json" in captions and "'version'" in captions
    assert "mixed@v2.json" in captions and "'created'" in captions

    broken = json.loads(card.path.read_text())
    broken["preprocessing"].pop("input_size")
    card.path.write_text(json.dumps(broken))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception, at.exception
    errors = " ".join(e.value for e in at.error)
    assert "was refused" in errors and "preprocessing.input_size" in errors and "shipped default" in errors


# =========================================================================== command line

def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    errors = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("error:")]
    assert "Traceback" not in err and len(errors) == 1, err
    return errors[0]


@pytest.fixture
def no_model_load(monkeypatch):
    """Output paths are checked before any work: loading a model would be too late."""
    import derm_core.model.checkpoint as C

    def boom(*a, **k):
        raise AssertionError("work started before the output paths were checked")

    monkeypatch.setattr(C, "load_model", boom)
    monkeypatch.setattr(Predictor, "from_path", classmethod(lambda cls, *a, **k: boom()))


def test_output_paths_are_checked_before_any_work(tmp_path, capsys, no_model_load):
    img = tmp_path / "photo.png"
    lesion_image(CLASS_COLOURS["mel"]).save(img)
    afile = tmp_path / "a_file"
    afile.write_text("x")
    adir = tmp_path / "a_dir"
    adir.mkdir()
    cases = [
        (["explain", str(img), "--out", str(afile)], "is a file, not a folder"),
        (["explain", str(img), "--out", str(afile / "sub")], "is a file, not a folder"),
        (["evaluate", "--data", str(tmp_path), "--out", str(adir)], "is a folder"),
        (["evaluate", "--data", str(tmp_path), "--out", str(afile / "r.json")], "is a file, not a folder"),
        (["evaluate", "--data", str(tmp_path), "--out", str(tmp_path / "r.json"), "--predictions", str(adir)],
         "--predictions .* is a folder"),
    ]
    for argv, why in cases:
        assert main(argv) == 2, argv
        err = _one_line_error(capsys)
        assert pd.Series([err]).str.contains(why).all(), (argv, err)
    assert afile.read_text() == "x" and list(adir.iterdir()) == []


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path, capsys, monkeypatch):
    img = tmp_path / "photo.jpg"
    img.write_bytes(EPS)
    assert main(["predict", str(img)]) == 2
    assert "PostScript" in _one_line_error(capsys)
    import derm_core.cli as cli

    def bug(a):
        raise KeyError("a real bug")

    monkeypatch.setattr(cli, "cmd_predict", bug)
    with pytest.raises(KeyError):
        main(["predict", str(img)])


@pytest.mark.parametrize("argv, why", [
    (["--image-size", "8", "8"], "--image-size must be two whole numbers"),
    (["--epochs", "0"], "--epochs must be a whole number from 1"),
    (["--limit", "-5"], "--limit must be a whole number from 1"),
    (["--limit", "0"], "--limit must be a whole number from 1"),
    (["--batch-size", "0"], "--batch-size must be"),
    (["--lr", "0"], "--lr must be a number"),
    (["--lr", "nan"], "--lr must be a number"),
    (["--patience", "0"], "--patience must be"),
    (["--taxonomy", "no-such-taxonomy"], "--taxonomy 'no-such-taxonomy' cannot be used"),
])
def test_training_arguments_are_validated_up_front(tmp_path, capsys, argv, why):
    rc = main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"), "--arch", "tiny_test",
               *argv])
    assert rc == 2
    assert why in _one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def _cfg(tmp_path, data, **kw):
    from derm_core.fit.train import TrainConfig
    return TrainConfig(data=str(data), out=str(tmp_path / "run"), arch="tiny_test", epochs=1, batch_size=16,
                       pretrained="none", workers=0, device="cpu", tta=False, **kw)


def test_a_second_training_process_on_the_same_folder_is_refused(tmp_path, capsys):
    from derm_core.fit import run_folder as R
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]);"
         "from derm_core.fit.train import TrainConfig; from derm_core.fit.run_folder import claim;"
         "cfg = TrainConfig(out=sys.argv[2], arch='tiny_test', pretrained='none');"
         "c = claim(cfg, 'holder'); c.__enter__(); print('held', flush=True); time.sleep(60)", str(ROOT), str(run)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc = main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(run), "--arch", "tiny_test",
                   "--pretrained", "none"])
        assert rc == 2
        err = _one_line_error(capsys)
        assert "is in use by another training process" in err and f"pid {holder.pid}" in err
        with pytest.raises(RunFolderError):
            with R.claim(_cfg(tmp_path, tmp_path)):
                pass
    finally:
        holder.kill()
        holder.wait()
    with R.claim(_cfg(tmp_path, tmp_path)) as out:      # free again once the holder is gone
        assert out == run


def test_resuming_with_other_settings_is_refused_unless_new_or_force(tmp_path, capsys, monkeypatch):
    from derm_core.fit import run_folder as R
    data = tmp_path / "data"
    data.mkdir()
    run = tmp_path / "run"
    with R.claim(_cfg(tmp_path, data, lr=3e-3)):
        pass
    (run / "last.safetensors").write_bytes(b"")        # the run has a checkpoint to resume
    (run / "log.jsonl").write_text('{"epoch": 1}\n')
    import derm_core.fit.train as T
    started = []
    monkeypatch.setattr(T, "_train", lambda cfg, *a: started.append(cfg) or None)
    base = ["train", "--data", str(data), "--out", str(run), "--arch", "tiny_test", "--epochs", "1",
            "--batch-size", "16", "--pretrained", "none", "--workers", "0", "--device", "cpu", "--no-tta"]
    assert main([*base, "--lr", "0.01"]) == 2
    err = _one_line_error(capsys)
    assert "holds a run with other settings" in err and "--lr: 0.003 -> 0.01" in err and "--force" in err
    assert started == []
    assert main([*base, "--lr", "0.003", "--epochs", "5"]) == 0     # the same settings, a longer run: resumes
    assert main([*base, "--lr", "0.01", "--force"]) == 0 and started[-1].resume and started[-1].lr == 0.01
    assert main([*base, "--lr", "0.02", "--new"]) == 0 and not started[-1].resume
    assert not (run / "log.jsonl").exists() and list(run.glob("log.*.previous.jsonl"))
    assert json.loads((run / R.CONFIG_FILE).read_text())["settings"]["lr"] == 0.02
    assert len(started) == 3


def test_a_failed_training_leaves_the_job_marked_failed_even_on_a_full_disk(tmp_path, monkeypatch, capsys):
    import errno

    import derm_core.fit.train as T
    from derm_core.fit import run_folder as R
    run = tmp_path / "run"

    def fills_the_disk(cfg, *a):
        (run / "progress.json").write_text(json.dumps({"state": "training", "epoch": 1}))
        raise OSError(errno.ENOSPC, "No space left on device", str(run / "last.safetensors"))

    monkeypatch.setattr(T, "_train", fills_the_disk)
    import derm_core.model.checkpoint as C
    real = C.atomic_write_json

    def full(path, obj):
        if Path(path).name == "progress.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, obj)

    monkeypatch.setattr(C, "atomic_write_json", full)
    rc = main(["train", "--data", str(tmp_path), "--out", str(run), "--arch", "tiny_test", "--pretrained", "none"])
    assert rc == 2
    err = _one_line_error(capsys)
    assert "the disk is full" in err and "last.safetensors" in err
    prog = json.loads((run / "progress.json").read_text())
    assert prog["state"] == "failed" and "No space left" in prog["error"]
    assert not (run / R.OWNER_FILE).exists()
    from derm_core.fit import jobs
    assert jobs.status(run).state == "failed"


def test_evaluate_on_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, ham7, capsys, monkeypatch):
    import errno
    data = write_dataset(tmp_path / "data", per_class=1)
    path = _saved(tmp_path, ham7)

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["evaluate", "--data", str(data), "--model", str(path), "--out", str(out / "report.json")]) == 2
    assert "the disk is full" in _one_line_error(capsys)
    assert list(out.iterdir()) == []


# --------------------------------------------------------------------------- degenerate data

def test_evaluate_on_one_class_writes_null_with_a_reason_not_nan(tmp_path, ham7, capsys):
    path = _saved(tmp_path, ham7)
    data = write_dataset(tmp_path / "data", per_class=1)
    labels = pd.read_csv(data / "labels.csv")
    for n, name in ((1, "one_row"), (3, "one_class")):
        sub = tmp_path / name
        (sub / "images").mkdir(parents=True)
        rows = labels[labels["label"] == "nv"] if n == 1 else labels[labels["label"] == "mel"]
        rows = pd.concat([rows] * n, ignore_index=True)
        rows["image_id"] = [f"{r}_{i}" for i, r in enumerate(rows["image_id"])]
        for r in rows.itertuples():
            lesion_image(CLASS_COLOURS[r.label]).save(sub / "images" / f"{r.image_id}.jpg")
        rows.to_csv(sub / "labels.csv", index=False)
        rep_path = tmp_path / f"{name}.json"
        assert main(["evaluate", "--data", str(sub), "--model", str(path), "--out", str(rep_path)]) == 0, name
        text = rep_path.read_text()
        rep = json.loads(text, parse_constant=lambda c: pytest.fail(f"{name}: bare {c} in report.json"))
        assert rep["macro_auc"] is None and rep["n_images"] == n
        assert rep["undefined"]["macro_auc"].startswith("not defined on these data")
        assert "warning:" in capsys.readouterr().err


def test_a_lesion_with_two_diagnoses_is_refused(tmp_path, ham7):
    data = write_dataset(tmp_path / "data", per_class=2)
    labels = pd.read_csv(data / "labels.csv")
    labels.loc[labels["image_id"] == "nv_000", "lesion_id"] = "L_mel_0"
    labels.to_csv(data / "labels.csv", index=False)
    with pytest.raises(DataError, match=r"lesion_id 'L_mel_0' is labelled mel and nv"):
        load_table(data, ham7)


def test_single_class_and_too_few_lesions_give_clear_errors(tmp_path, ham7):
    from derm_core.data.splits import make_splits
    table = load_table(write_dataset(tmp_path / "data", per_class=4), ham7)
    with pytest.raises(DataError, match="one class only"):
        make_splits(table[table["label"] == "nv"].reset_index(drop=True))
    five = table.assign(group=[f"P{i % 5}" for i in range(len(table))])     # 5 patients over 7 classes
    try:
        split = make_splits(five)
    except DataError as e:                       # a clear refusal, not sklearn's n_splits message
        assert "n_splits" not in str(e) and "lesion" in str(e)
    else:
        assert (five.assign(split=split).groupby("group")["split"].nunique() == 1).all()
    with pytest.raises(DataError, match="only 2 lesion"):
        make_splits(table[table["group"].isin(["L_nv_0", "L_mel_0"])].reset_index(drop=True))


def test_a_symlink_loop_as_data_is_named_as_such(tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    for path, why in ((loop, "symbolic link loop"), (dangling, "which does not exist")):
        assert main(["evaluate", "--data", str(path), "--out", str(tmp_path / "r.json")]) == 2
        err = _one_line_error(capsys)
        assert why in err and "not found" not in err, err


# --------------------------------------------------------------------------- predict --crop

def test_predict_crop_modes_and_the_crop_is_reported(tmp_path, ham7, capsys):
    path = _saved(tmp_path, ham7)
    photo = Image.new("RGB", (400, 300), (224, 180, 160))
    photo.paste(lesion_image(CLASS_COLOURS["mel"], (100, 80), seed=3), (250, 40))
    img = tmp_path / "phone.jpg"
    photo.save(img, quality=95)
    got = {}
    for crop in ("auto", "none", "10,20,110,100"):
        assert main(["predict", str(img), "--model", str(path), "--json", "--crop", crop]) == 0
        got[crop] = json.loads(capsys.readouterr().out)
    assert got["none"]["crop"]["box"] == [0, 0, 400, 300] and got["none"]["photo_size"] == [400, 300]
    assert got["10,20,110,100"]["crop"] == {"box": [10, 20, 110, 100], "mode": "given"}
    x0, y0, x1, y1 = got["auto"]["crop"]["box"]
    assert got["auto"]["crop"]["mode"].startswith("auto") and (x1 - x0) * (y1 - y0) < 400 * 300 / 2
    assert x0 <= 300 <= x1 and y0 <= 80 <= y1                       # around the lesion
    for bad, why in (("0,0,500,100", "not inside the 400x300 photo"), ("0,0,300,10", "at least 16x16")):
        assert main(["predict", str(img), "--model", str(path), "--crop", bad]) == 2
        assert why in _one_line_error(capsys)
    assert main(["predict", str(img), "--crop", "left"]) == 2


# =========================================================================== issue 18: files the new features read

def _calibrated(tmp_path, ham7):
    """A saved tiny model with a valid ``model.conformal.json`` (its dict returned for breaking)."""
    from derm_core.model import conformal as C
    card = read_card(_saved(tmp_path, ham7))
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(7), 200)
    cal = C.Calibration.fit(rng.integers(0, 7, 200), probs, card.classes,
                            {"weights_sha256": card.weights_sha256(), "temperature": card.temperature})
    return card, cal.to_dict()


CALIBRATION_BREAKS = {
    "source a string": (lambda d: d.update(source="validation"), "source"),
    "source a list": (lambda d: d.update(source=["validation"]), "source"),
    "temperature warm": (lambda d: d["source"].update(temperature="warm"), "source.temperature"),
    "score -5": (lambda d: d["scores"]["mel"].append(-5), "scores.mel"),
    "score 7": (lambda d: d["scores"]["nv"].append(7), "scores.nv"),
    "score 1e300": (lambda d: d["scores"]["df"].append(1e300), "scores.df"),
    "score string": (lambda d: d["scores"]["bcc"].append("0.2"), "scores.bcc"),
    "scores a list": (lambda d: d.update(scores=[0.1, 0.2]), "scores"),
    "classes a number": (lambda d: d.update(classes=7), "classes"),
    "min_class_n string": (lambda d: d.update(min_class_n="30"), "min_class_n"),
}


@pytest.mark.parametrize("case", list(CALIBRATION_BREAKS))
def test_broken_calibration_files_are_refused_naming_file_and_field(tmp_path, ham7, capsys, case):
    from derm_core.model import conformal as C
    card, d = _calibrated(tmp_path, ham7)
    breaker, field = CALIBRATION_BREAKS[case]
    breaker(d)
    path = C.calibration_path(card)
    path.write_text(json.dumps(d))
    with pytest.raises(C.ConformalError) as e:
        C.load_calibration(card)
    assert str(path) in str(e.value) and f"'{field}'" in str(e.value), str(e.value)
    img = tmp_path / "photo.png"
    lesion_image(CLASS_COLOURS["mel"]).save(img)
    assert main(["predict", str(img), "--model", str(card.path), "--anyway", "--json"]) == 0   # no traceback
    out = json.loads(capsys.readouterr().out)
    assert out["prediction_set"] is None and f"'{field}'" in out["prediction_set_note"]
    assert out["risk_tier"]                                         # the rest of the triage still works


def test_calibration_paths_that_are_not_regular_files_or_nest_too_deep(tmp_path, ham7):
    from derm_core.model import conformal as C
    card, _ = _calibrated(tmp_path, ham7)
    path = C.calibration_path(card)
    assert C.load_calibration(card) is None                         # none at all: "no calibration"
    path.mkdir()
    with pytest.raises(C.ConformalError, match="is a folder, not a regular file"):
        C.load_calibration(card)
    note = C.predict_fields(card, dict(zip(card.classes, [1 / 7] * 7)))["prediction_set_note"]
    assert "not a regular file" in note and "no conformal calibration" not in note
    path.rmdir()
    os.mkfifo(path)                                                 # opening it would block: never opened
    with pytest.raises(C.ConformalError, match="is a pipe, not a regular file"):
        C.load_calibration(card)
    path.unlink()
    path.write_text("[" * 100000 + "]" * 100000)                    # RecursionError inside json
    with pytest.raises(C.ConformalError, match="nested too deeply"):
        C.load_calibration(card)
    card.path.write_text("[" * 100000 + "]" * 100000)               # the same for a model card
    with pytest.raises(ModelError, match="nested too deeply"):
        read_card(card.path)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(score=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6), st.text(max_size=5),
                       st.booleans(), st.none()))
def test_any_calibration_score_is_in_range_or_refused(tmp_path, ham7, score):
    """A stored score is a total probability: from 0 to 1, or the file is refused (never a
    silent "90%" sentence on scores of -5 or 1e300)."""
    from derm_core.model import conformal as C
    d = {"format": C.FORMAT, "method": C.METHOD, "min_class_n": 30, "classes": list(ham7.classes), "source": {},
         "scores": {c: [0.1, 0.5] for c in ham7.classes}}
    d["scores"]["mel"].append(score)
    ok = isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score) and 0 <= score <= 1
    if ok:
        assert C.Calibration.from_dict(d).n["mel"] == 3
    else:
        with pytest.raises(C.ConformalError, match="'scores.mel'"):
            C.Calibration.from_dict(d)


def test_a_profile_with_a_broken_calibration_is_refused_and_the_model_calibration_used(tmp_path, ham7):
    from derm_core.model import conformal as C
    card, d = _calibrated(tmp_path, ham7)
    folder = tmp_path / "profiles"
    good = P.save_profile("clinic", card.thresholds, card, folder=folder, extra={"conformal": d})
    assert C.active_calibration(card, str(good.path)) is not None
    for breaker, field in (CALIBRATION_BREAKS["source a string"], CALIBRATION_BREAKS["temperature warm"]):
        bad = json.loads(json.dumps(d))
        breaker(bad)
        prof = json.loads(good.path.read_text())
        path = folder / "broken@v1.json"
        path.write_text(json.dumps({**prof, "conformal": bad}))
        listed = [x for x in P.list_profiles(folder) if isinstance(x, P.ProfileError)]
        assert len(listed) == 1 and "broken@v1.json" in str(listed[0]) and f"'{field}'" in str(listed[0])
        with pytest.raises(P.ProfileError, match=f"entry 'conformal': field '{field}'"):
            P.load_profile(path, card)
        assert C.active_calibration(card, str(path)) is None       # the model's own (none here), no exception


# --------------------------------------------------------------------------- the similar-case index

@pytest.fixture
def index_setup(tmp_path, ham7, monkeypatch):
    """A saved tiny model with its split file, on its own small dataset, caches under tmp_path."""
    from derm_core.data.splits import make_splits, save_splits
    from derm_core.explain import similar
    monkeypatch.setenv("DERMTRIAGE_CACHE", str(tmp_path / "cache"))
    similar._MEMO.clear()
    card = read_card(_saved(tmp_path, ham7))
    data = write_dataset(tmp_path / "data", per_class=3)
    table = load_table(data, ham7)
    save_splits(table, make_splits(table, seed=0), card.split_file)
    return card, data, table


def _foreign_index(card, table, width=None, fill=None):
    """Cache files for the index's splits as another model would leave them (or all NaN)."""
    from derm_core.data.splits import load_splits
    from derm_core.evaluate import embedding as E
    from derm_core.explain import similar
    from derm_core.model.checkpoint import embedding_width
    rows = similar.index_table(table, load_splits(table, card.split_file).to_numpy())
    for s in similar.SPLITS:
        part = similar._split_rows(rows, s)
        emb = np.random.default_rng(0).normal(size=(len(part), width or embedding_width(card))).astype(np.float16)
        if fill is not None:
            emb[:] = fill
        E._save_npz(E.cache_path(card, part), logits=np.zeros((len(part), 7), np.float32), embeddings=emb,
                    image_id=np.asarray([str(i) for i in part["image_id"]]))


@pytest.mark.parametrize("width, fill, why", [(4096, None, "is {n}x4096"), (70, None, "is {n}x70"),
                                              (None, np.nan, "not numbers")])
def test_a_cached_index_that_is_not_the_models_is_refused_and_rebuilt(index_setup, width, fill, why):
    from derm_core.explain import similar
    from derm_core.model.checkpoint import embedding_width
    card, data, table = index_setup
    assert embedding_width(card) is not None
    _foreign_index(card, table, width, fill)
    found = similar.folder_index(card, data)
    assert found.index is None and found.n > 0
    assert "field 'embeddings'" in found.ignored and re.search(why.replace("{n}", r"\d+"), found.ignored), found.ignored
    rebuilt = similar.folder_index(card, data, build=True)          # building replaces the foreign files
    assert rebuilt.index is not None and rebuilt.index.vectors.shape[1] == embedding_width(card) - 64
    assert np.isfinite(rebuilt.index.vectors).all()
    similar._MEMO.clear()
    again = similar.folder_index(card, data)
    assert again.index is not None and again.ignored is None


# --------------------------------------------------------------------------- device and fast-path settings

@pytest.mark.parametrize("value, why", [("tpu", "is not a device name"), ("gpu", "is not a device name"),
                                        ("cuda:abc", "is not a device name"), ("meta", "runs on cpu or cuda"),
                                        ("cuda", "no usable CUDA GPU|cuda:0 to"), ("cuda:7", "no usable CUDA GPU|cuda:0 to")])
def test_a_device_this_machine_lacks_is_one_clear_error(tmp_path, ham7, capsys, monkeypatch, value, why):
    if value.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that GPU")
    img = tmp_path / "photo.png"
    lesion_image(CLASS_COLOURS["mel"]).save(img)
    path = _saved(tmp_path, ham7)
    monkeypatch.setenv("DERMTRIAGE_DEVICE", value)
    assert main(["predict", str(img), "--model", str(path)]) == 2
    err = _one_line_error(capsys)
    assert "$DERMTRIAGE_DEVICE" in err and re.search(why, err), err
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"{value} (not used)" in out and "device:    cannot be used:" in out
    monkeypatch.delenv("DERMTRIAGE_DEVICE")
    rc = main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"), "--arch", "tiny_test",
               "--device", value])
    assert rc == 2 and "--device" in _one_line_error(capsys)
    assert not (tmp_path / "run").exists()
    from derm_core.model.device import device_or_cpu
    monkeypatch.setenv("DERMTRIAGE_DEVICE", value)
    device, note = device_or_cpu()                                   # the pages: the CPU, saying why
    assert device.type == "cpu" and "Running on the CPU instead" in note


def test_an_unknown_fast_path_is_refused_not_silently_fp32(tmp_path, ham7, capsys, monkeypatch):
    from derm_core.model.inference import fast_path_or_auto
    img = tmp_path / "photo.png"
    lesion_image(CLASS_COLOURS["mel"]).save(img)
    monkeypatch.setenv("DERMTRIAGE_DEVICE", "cpu")
    monkeypatch.setenv("DERMTRIAGE_FAST_PATH", "fp8")
    assert main(["predict", str(img), "--model", str(_saved(tmp_path, ham7))]) == 2
    assert "$DERMTRIAGE_FAST_PATH must be auto or fp32, not 'fp8'" in _one_line_error(capsys)
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    row = next(r for r in info["settings"] if r["field"] == "fast_path")
    assert row["value"] == "fp8" and row["valid"] is False and "invalid" in row["source"]
    assert info["fast_path"] is None and "fp8" in info["fast_path_error"]
    path, note = fast_path_or_auto(torch.device("cpu"))               # the pages: the automatic path, saying so
    assert path in ("cpu-bf16", "fp32") and "automatic fast path" in note


# --------------------------------------------------------------------------- command line (issue 18)

@pytest.mark.parametrize("argv, why", [
    (["explain", "{img}", "--out", "{out}", "--method", "lime", "--samples", "0"], "--samples: must be a whole number from 2"),
    (["explain", "{img}", "--out", "{out}", "--method", "lime", "--samples", "-5"], "--samples"),
    (["explain", "{img}", "--out", "{out}", "--method", "lime", "--samples", "1"], "from 2"),
    (["explain", "{img}", "--out", "{out}", "--seed", "-1"], "--seed"),
    (["evaluate", "--data", "{out}", "--batch-size", "0"], "--batch-size: must be a whole number from 1"),
    (["predict", "{img}", "--level", "1.5"], "--level: must be a number between 0 and 1"),
    (["predict", "{img}", "--level", "nan"], "--level"),
    (["predict", "{img}", "--crop", "-10,-10,50,50"], "x0 is -10; pixel positions start at 0"),
    (["predict", "{img}", "--crop=-10,-10,50,50"], "x0 is -10; pixel positions start at 0"),
    (["predict", "{img}", "--crop", "1.5,2,50,60"], "x0 is 1.5; give whole pixels"),
    (["predict", "{img}", "--crop", "left"], "--crop: must be auto, none or x0,y0,x1,y1"),
    (["recalibrate", "--target", "dangerous", "1.5"], "--target"),
    (["recalibrate", "--target", "dangerous", "high"], "--target"),
])
def test_numeric_regressions_are_one_line_errors_before_any_work(tmp_path, capsys, no_model_load, argv, why):
    img = tmp_path / "photo.png"
    lesion_image(CLASS_COLOURS["mel"]).save(img)
    argv = [a.format(img=img, out=tmp_path / "out") for a in argv]
    assert main(argv) == 2
    assert why in _one_line_error(capsys)


def _numeric_actions():
    """(command, option, action) of every option whose value is a number, from the parser itself."""
    from derm_core.cli import _subparsers, _TierTarget, build_parser
    for name, sub in _subparsers(build_parser()).items():
        for a in sub._actions:
            if a.option_strings and (getattr(a.type, "__name__", "") in ("int", "float") or isinstance(a, _TierTarget)):
                yield name, a.option_strings[-1], a


def _base_args(sub_name, tmp_path) -> list[str]:
    """A command line for ``sub_name`` whose every required input points nowhere, so that any
    value that gets past the parser still ends in a one-line error (and nothing heavy runs)."""
    from derm_core.cli import _subparsers, build_parser
    sub = _subparsers(build_parser())[sub_name]
    nowhere = str(tmp_path / "nowhere")
    out = []
    for a in sub._actions:
        if not a.option_strings and a.dest not in ("help",):
            out.append(nowhere)
        elif a.required or a.dest in ("model", "data"):
            out += [a.option_strings[-1], str(tmp_path / f"{a.dest}-nowhere")]
    return out


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan", "1e999", ""])
def test_every_numeric_option_at_zero_minus_one_and_non_numbers_is_a_one_line_error(tmp_path, capsys, value):
    """Walks the parser: a new numeric option is covered without touching this test."""
    seen = []
    for cmd, opt, action in _numeric_actions():
        seen.append(opt)
        from derm_core.cli import _TierTarget
        values = ["dangerous", value] if isinstance(action, _TierTarget) else [value] * (action.nargs if isinstance(action.nargs, int) else 1)
        argv = [cmd, *_base_args(cmd, tmp_path), opt, *values]
        rc = main(argv)
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert rc == 2 and len(lines) == 1 and "Traceback" not in err, (argv, rc, err)
        if value in ("abc", "", "1e999") and action.type is not float:
            assert opt in lines[0], (argv, lines[0])
    assert {"--batch-size", "--samples", "--seed", "--level", "--epochs", "--lr", "--target"} <= set(seen)


def test_a_disk_that_fills_while_the_checkpoint_is_written_is_one_line(tmp_path, monkeypatch, capsys):
    """safetensors reports the failed write as a SafetensorError: it becomes the OSError it wraps."""
    from safetensors import SafetensorError

    import derm_core.fit.train as T
    import derm_core.model.checkpoint as C

    def full(*a, **k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(C, "save_file", full)

    def writes_a_checkpoint(cfg, *a):
        C.atomic_save_tensors(tmp_path / "run" / "last.safetensors", {"w": torch.zeros(3)})

    monkeypatch.setattr(T, "_train", writes_a_checkpoint)
    rc = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--arch", "tiny_test",
               "--pretrained", "none"])
    assert rc == 2
    err = _one_line_error(capsys)
    assert "the disk is full" in err and "last.safetensors" in err
    assert not list((tmp_path / "run").glob(".last.safetensors.*"))   # no staging file left behind


def test_a_real_failed_tensor_write_is_an_os_error(tmp_path):
    """The real safetensors message, from a file-size limit in a child process."""
    code = ("import resource, signal, sys, torch; signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]));"
            "from derm_core.model.checkpoint import atomic_save_tensors\n"
            "try:\n    atomic_save_tensors(sys.argv[1], {'w': torch.zeros(100000)})\n"
            "except OSError as e:\n    print('OSError', e.errno)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "big.safetensors")], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.stdout.strip() == "OSError 27", out.stderr[-2000:]
    assert not list(tmp_path.iterdir())


def test_the_triage_page_keeps_working_and_says_what_it_ignored(index_setup, monkeypatch, tmp_path):
    """A broken calibration beside the model, a foreign similar-case index in the cache and a
    device this machine lacks: the page triages the upload and names each thing it did not use."""
    from streamlit.testing.v1 import AppTest

    from derm_core.model import conformal as C
    card, data, _ = index_setup
    C.calibration_path(card).write_text(json.dumps({"format": C.FORMAT, "method": C.METHOD, "min_class_n": 30,
                                                    "classes": list(card.classes), "source": "validation",
                                                    "scores": {c: [0.1] for c in card.classes}}))
    _foreign_index(card, load_table(data, card.taxonomy), 4096)
    monkeypatch.setenv("DERMTRIAGE_MODEL", str(card.path))
    monkeypatch.setenv("DERMTRIAGE_DATA", str(data))
    monkeypatch.setenv("DERMTRIAGE_PROFILES", str(tmp_path / "profiles"))
    monkeypatch.setenv("DERMTRIAGE_DEVICE", "tpu")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.session_state["lime_samples"] = 50
    at.run()
    buf = io.BytesIO()
    lesion_image(CLASS_COLOURS["mel"], (200, 150)).save(buf, "PNG")
    at.file_uploader[0].set_value(("photo.png", buf.getvalue(), "image/png"))
    at.run()
    assert not at.exception, at.exception
    warnings = " ".join(w.value for w in at.warning)
    captions = " ".join(c.value for c in at.caption)
    assert "$DERMTRIAGE_DEVICE 'tpu'" in warnings and "Running on the CPU instead" in warnings
    assert "No prediction set:" in captions and "'source'" in captions and "model.conformal.json" in captions
    assert "Ignored the cached similar-case index" in warnings and "x4096" in warnings
    assert "Risk tier:" in " ".join(m.value for m in at.markdown) + captions + " ".join(
        x.value for x in [*at.success, *at.warning, *at.error, *at.info])
