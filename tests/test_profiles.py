"""Threshold profiles: versioned atomic saves, validation, refusal of mismatched profiles."""
import json
import threading
from dataclasses import replace

import pytest
import torch

from conftest import tiny_card
from derm_core.data.taxonomy import load_taxonomy
from derm_core.model.checkpoint import ModelCard, atomic_write_json, read_card, save_model
from derm_core.model.networks import create_model
from derm_core.triage import profiles as P
from derm_core.triage.rules import Thresholds


def _model(tmp_path, name, taxonomy, seed=0, temperature=1.0):
    torch.manual_seed(seed)
    model = create_model("tiny_test", len(taxonomy.classes), use_metadata=True, pretrained="none")
    data = {**tiny_card(taxonomy).to_json(), "name": name, "version": f"v-{seed}", "temperature": temperature}
    if len(taxonomy.tier_names) > 1:
        data["thresholds"] = {"classes": {c: 0.3 for c in taxonomy.classes},
                              "tiers": {t: 0.3 for t in taxonomy.tier_names[1:]}}
    return read_card(save_model(model, ModelCard.from_json(data), tmp_path / name / "model"))


def _thr(card, v=0.25) -> Thresholds:
    return Thresholds({c: v for c in card.classes}, {t: v for t in card.taxonomy.tier_names[1:]}, "slider")


@pytest.fixture
def card(tmp_path, ham7):
    return _model(tmp_path, "m1", ham7)


def test_save_load_round_trip_and_versions(tmp_path, card):
    folder = tmp_path / "profiles"
    p1 = P.save_profile("Screening clinic A", _thr(card, 0.2), card, folder=folder, author="dr who",
                        validation={"data": "/d", "split": "val", "n_images": 10}, metrics={"accuracy": 0.5}, note="n")
    p2 = P.save_profile("Screening clinic A", _thr(card, 0.3), card, folder=folder, author="dr who")
    assert (p1.version, p2.version) == (1, 2) and p1.path.name == "screening-clinic-a@v1.json"
    loaded = P.load_profile(p1.path, card)
    assert loaded.thresholds.classes == _thr(card, 0.2).classes and loaded.thresholds.name == "profile Screening clinic A v1"
    d = loaded.data
    assert d["author"] == "dr who" and d["created"] and d["validation"]["split"] == "val" and d["metrics"]["accuracy"] == 0.5
    assert d["model"]["weights_sha256"] and d["model"]["version"] == card.version and d["model"]["card"] == str(card.path)
    assert {p.version for p in P.list_profiles(folder)} == {1, 2}
    assert P.find_profile("Screening clinic A v2", folder).version == 2
    assert P.versions("screening clinic a", folder) == [1, 2]


def test_profiles_folder_from_environment(tmp_path, card, monkeypatch):
    monkeypatch.setenv("DERMTRIAGE_PROFILES", str(tmp_path / "elsewhere"))
    p = P.save_profile("x", _thr(card), card)
    assert p.path.parent == tmp_path / "elsewhere"


def test_other_model_other_classes_and_recalibrated_model_are_refused(tmp_path, card):
    folder = tmp_path / "profiles"
    prof = P.save_profile("p", _thr(card), card, folder=folder)
    other = _model(tmp_path, "m2", card.taxonomy, seed=1)                 # same classes, other weights
    with pytest.raises(P.ProfileError, match="made for model m1"):
        P.load_profile(prof.path, other)
    han = _model(tmp_path, "m3", load_taxonomy("han12"), seed=2)           # other classes
    with pytest.raises(P.ProfileError, match="classes"):
        P.load_profile(prof.path, han)
    # the same weights recalibrated (another temperature): probabilities mean something else now
    data = json.loads(card.path.read_text())
    data["temperature"] = 1.7
    atomic_write_json(card.path, data)
    with pytest.raises(P.ProfileError, match="temperature"):
        P.load_profile(prof.path, read_card(card.path))
    with pytest.raises(P.ProfileError, match="cannot save"):
        P.save_profile("bad", Thresholds({"mel": 0.3}, {"dangerous": 0.3}), card, folder=folder)


def test_invalid_files_are_refused_with_a_reason(tmp_path, card):
    folder = tmp_path / "profiles"
    good = P.save_profile("good", _thr(card), card, folder=folder)
    (folder / "half@v1.json").write_text(good.path.read_text()[:50])          # truncated
    (folder / "other@v1.json").write_text(json.dumps({"hello": 1}))          # not a profile
    bad = json.loads(good.path.read_text())
    bad["thresholds"]["classes"]["mel"] = 1.5
    (folder / "range@v1.json").write_text(json.dumps(bad))
    msgs = {}
    for name in ("half@v1.json", "other@v1.json", "range@v1.json"):
        with pytest.raises(P.ProfileError) as e:
            P.load_profile(folder / name)
        msgs[name] = str(e.value)
    assert "not a readable profile" in msgs["half@v1.json"]
    assert "not a DermTriage threshold profile" in msgs["other@v1.json"]
    assert "between 0 and 1" in msgs["range@v1.json"]
    listed = P.list_profiles(folder)
    assert sum(isinstance(x, P.Profile) for x in listed) == 1 and sum(isinstance(x, P.ProfileError) for x in listed) == 3
    with pytest.raises(P.ProfileError, match="not found"):
        P.load_profile(folder / "missing@v1.json")


def test_crash_mid_save_leaves_no_profile(tmp_path, card, monkeypatch):
    folder = tmp_path / "profiles"
    import derm_core.model.checkpoint as C
    real_replace = C.os.replace

    def crash(*a, **kw):
        raise KeyboardInterrupt("power cut")
    monkeypatch.setattr(C.os, "replace", crash)          # dies while writing the staging file
    with pytest.raises(KeyboardInterrupt):
        P.save_profile("p", _thr(card), card, folder=folder)
    monkeypatch.setattr(C.os, "replace", real_replace)
    assert P.list_profiles(folder) == [] and not list(folder.glob("*.json"))

    def crash_link(*a, **kw):
        raise KeyboardInterrupt("power cut")
    monkeypatch.setattr(P.os, "link", crash_link)        # dies between staging and publishing
    with pytest.raises(KeyboardInterrupt):
        P.save_profile("p", _thr(card), card, folder=folder)
    assert P.list_profiles(folder) == [] and not list(folder.iterdir())


def test_concurrent_saves_get_distinct_versions(tmp_path, card):
    folder = tmp_path / "profiles"
    out = []
    threads = [threading.Thread(target=lambda: out.append(P.save_profile("same", _thr(card), card, folder=folder)))
               for _ in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(p.version for p in out) == [1, 2, 3, 4, 5, 6]
    assert len(list(folder.glob("same@v*.json"))) == 6
    with pytest.raises(P.ProfileError):
        P.slugify("  ///  ")


def test_picker_lists_this_models_profiles_first_and_marks_the_rest(tmp_path, card):
    folder = tmp_path / "profiles"
    other = _model(tmp_path, "m2", card.taxonomy, seed=1)
    mine = P.save_profile("mine", _thr(card), card, folder=folder)
    theirs = P.save_profile("theirs", _thr(other), other, folder=folder)     # newer, but for another model
    (folder / "broken.json").write_text("{")
    labels, unreadable = P.profile_choices(card, None, folder)
    assert list(labels) == [P.MODEL_DEFAULT, str(mine.path), str(theirs.path)]
    assert labels[P.MODEL_DEFAULT] == P.MODEL_DEFAULT == card.thresholds.name      # not "model default (model default)"
    named = card.with_(thresholds=replace(card.thresholds, name="Youden (validation)"))
    assert P.profile_choices(named, None, folder)[0][P.MODEL_DEFAULT] == "default: Youden (validation)"
    assert labels[str(mine.path)] == "mine v1" and labels[str(theirs.path)] == "theirs v1 — for another model (m2)"
    assert len(unreadable) == 1 and "broken.json" in str(unreadable[0])
    gone = str(folder / "gone@v1.json")                                       # chosen, then removed
    labels, _ = P.profile_choices(card, gone, folder)
    assert list(labels)[-1] == gone and labels[gone] == "gone@v1.json (unavailable)"
    assert len(P.profile_choices(card, str(mine.path), folder)[0]) == 3
    assert P.profile_choices(card, None, tmp_path / "none")[0] == {P.MODEL_DEFAULT: labels[P.MODEL_DEFAULT]}
