"""One settings module (derm_core.settings) and one error base (derm_core.errors)."""
import json
import re
from pathlib import Path

import pytest

from conftest import CLASS_COLOURS, lesion_image
from derm_core import errors
from derm_core import settings as S
from derm_core.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for v in S.VARIABLES:
        monkeypatch.delenv(v.env, raising=False)


def store_paths():
    """Where each module puts its store now."""
    from derm_core.evaluate.embedding import cache_root
    from derm_core.fit.jobs import runs_root
    from derm_core.study.store import study_db_path
    from derm_core.triage.profiles import profiles_dir
    return {"runs": runs_root(), "profiles": profiles_dir(), "cache": cache_root(), "study_db": study_db_path()}


def test_defaults_unchanged_when_nothing_is_set():
    s = S.settings()
    expected = {"runs": ROOT / "runs", "profiles": ROOT / "profiles", "cache": ROOT / ".dermtriage" / "cache",
                "study_db": ROOT / ".dermtriage" / "studies.sqlite3"}
    assert {k: getattr(s, k) for k in expected} == expected == store_paths()
    assert s.home == ROOT / ".dermtriage"
    assert s.model == S.SHIPPED_MODEL == ROOT / "weights" / "default" / "model.json"
    assert (s.data, s.device, s.fast_path, s.job_nice) == (None, None, "auto", 5)
    assert {r["source"] for r in S.describe()} == {"default"}


def test_home_moves_every_store(monkeypatch, tmp_path):
    monkeypatch.setenv(S.ENV_HOME, str(tmp_path / "home"))
    home = tmp_path / "home"
    expected = {"runs": home / "runs", "profiles": home / "profiles", "cache": home / "cache",
                "study_db": home / "studies.sqlite3"}
    assert store_paths() == expected
    assert S.settings().home == home
    sources = {r["field"]: r["source"] for r in S.describe()}
    assert sources["home"] == "environment" and sources["runs"] == "default (from $DERMTRIAGE_HOME)"
    assert sources["model"] == "default"      # HOME does not move the shipped model


def test_per_store_variables_override_home(monkeypatch, tmp_path):
    monkeypatch.setenv(S.ENV_HOME, str(tmp_path / "home"))
    own = {"runs": S.ENV_RUNS, "profiles": S.ENV_PROFILES, "cache": S.ENV_CACHE, "study_db": S.ENV_STUDY_DB}
    for field, env in own.items():
        monkeypatch.setenv(env, str(tmp_path / f"own-{field}"))
    assert store_paths() == {f: tmp_path / f"own-{f}" for f in own}
    assert {r["source"] for r in S.describe() if r["field"] in own} == {"environment"}


def test_read_on_every_call_and_empty_means_unset(monkeypatch, tmp_path):
    assert S.settings().data is None
    monkeypatch.setenv(S.ENV_DATA, str(tmp_path))
    monkeypatch.setenv(S.ENV_FAST_PATH, " FP32 ")
    monkeypatch.setenv(S.ENV_DEVICE, "cpu")
    monkeypatch.setenv(S.ENV_NICE, "0")
    s = S.settings()
    assert (s.data, s.fast_path, s.device, s.job_nice) == (tmp_path, "fp32", "cpu", 0)
    monkeypatch.setenv(S.ENV_RUNS, "")
    assert S.settings().runs == ROOT / "runs"


def test_invalid_value_is_a_config_error_naming_the_variable_where_it_is_used(monkeypatch, tmp_path):
    monkeypatch.setenv(S.ENV_NICE, "low")
    monkeypatch.setenv(S.ENV_HOME, str(tmp_path))
    s = S.settings()                                                   # every other setting still reads
    assert s.runs == tmp_path / "runs" and s.job_nice is None
    with pytest.raises(errors.ConfigError, match="DERMTRIAGE_JOB_NICE"):
        s.require("job_nice")
    assert s.require("runs") == tmp_path / "runs"
    row = next(r for r in S.describe() if r["env"] == S.ENV_NICE)      # describe reports it instead, marked
    assert row["value"] == "low" and row["valid"] is False and "invalid" in row["source"]


def test_each_variable_is_named_once_and_read_only_in_settings():
    """Every DERMTRIAGE_* variable has one row in VARIABLES, and no other module reads the environment."""
    assert len({v.env for v in S.VARIABLES}) == len(S.VARIABLES) == len(S.Settings.__dataclass_fields__) - 1
    reads = re.compile(r"(environ|getenv)[^\n]*(DERMTRIAGE_|ENV_)")
    readers = [str(p.relative_to(S.ROOT)) for p in [*S.ROOT.glob("derm_core/**/*.py"), *S.ROOT.glob("pages/*.py")]
               if p.name != "settings.py" and reads.search(p.read_text(encoding="utf-8"))]
    assert readers == []


def test_every_user_error_has_one_base_and_keeps_its_historical_one():
    from derm_core.data import dataset as data
    from derm_core.data import images
    from derm_core.fit import jobs
    from derm_core.model import conformal
    from derm_core.study import cases as study
    from derm_core.study import store as study_store
    from derm_core.triage import profiles
    expected = {(data, "DataError"): ValueError, (images, "ImageError"): ValueError,
                (profiles, "ProfileError"): ValueError, (study, "StudyError"): ValueError,
                (study_store, "StudyStoreError"): RuntimeError, (study_store, "StudyIntegrityError"): RuntimeError,
                (study_store, "AlreadyAnswered"): RuntimeError, (jobs, "JobError"): RuntimeError,
                (conformal, "ConformalError"): ValueError}
    for (module, name), historical in expected.items():
        cls = getattr(module, name)
        assert cls is getattr(errors, name), name            # defined once, in errors.py
        assert issubclass(cls, errors.DermTriageError) and issubclass(cls, historical), name
        assert cls.__doc__, name
    assert issubclass(errors.ModelError, errors.DermTriageError) and issubclass(errors.ModelError, ValueError)
    assert issubclass(errors.AlreadyAnswered, errors.StudyIntegrityError)
    assert errors.StudyStoreError("locked", "/x.db").path == "/x.db"


# ------------------------------------------------------------------------------------- command line
def test_cli_uses_dermtriage_model(monkeypatch, tmp_path, capsys):
    img = tmp_path / "x.png"
    lesion_image(CLASS_COLOURS["bcc"]).save(img)
    missing = tmp_path / "elsewhere" / "model.json"
    monkeypatch.setenv(S.ENV_MODEL, str(missing))
    assert main(["predict", str(img)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(missing) in err
    assert main(["fit-ood", "--data", str(tmp_path)]) == 2
    assert str(missing) in capsys.readouterr().err
    flag = tmp_path / "flag.json"                                  # --model still wins over the variable
    assert main(["predict", str(img), "--model", str(flag)]) == 2
    err = capsys.readouterr().err
    assert str(flag) in err and str(missing) not in err


def test_info_text_and_json(monkeypatch, tmp_path, capsys):
    card = tmp_path / "tiny" / "model.json"                  # the shipped card, renamed
    card.parent.mkdir()
    shipped = json.loads(S.SHIPPED_MODEL.read_text())
    card.write_text(json.dumps({**shipped, "name": "tiny", "version": "t1"}))
    monkeypatch.setenv(S.ENV_MODEL, str(card))
    monkeypatch.setenv(S.ENV_HOME, str(tmp_path / "home"))
    monkeypatch.setenv(S.ENV_DEVICE, "cpu")
    monkeypatch.setenv(S.ENV_FAST_PATH, "fp32")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for v in S.VARIABLES:
        assert v.env in out
    assert re.search(rf"{S.ENV_HOME} +{re.escape(str(tmp_path / 'home'))}  \[environment\]", out)
    assert str(tmp_path / "home" / "runs") in out and f"tiny t1 ({shipped['arch']})" in out
    assert "device:    cpu" in out and "fast path: fp32" in out

    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    rows = {r["field"]: r for r in info["settings"]}
    assert rows["study_db"]["value"] == str(tmp_path / "home" / "studies.sqlite3")
    assert rows["study_db"]["source"] == "default (from $DERMTRIAGE_HOME)"
    assert info["model"] == {"path": str(card), "name": "tiny", "version": "t1", "arch": shipped["arch"]}
    assert (info["device"], info["fast_path"]) == ("cpu", "fp32")


def test_info_reports_an_unreadable_model(monkeypatch, tmp_path, capsys):
    broken = tmp_path / "model.json"
    broken.write_text("{not json")
    monkeypatch.setenv(S.ENV_MODEL, str(broken))
    monkeypatch.setenv(S.ENV_DEVICE, "cpu")
    assert main(["info", "--json"]) == 0
    model = json.loads(capsys.readouterr().out)["model"]
    assert model["path"] == str(broken) and model["error"] and "name" not in model
    assert main(["info"]) == 0
    assert f"model:     {broken}: cannot be used:" in capsys.readouterr().out


@pytest.mark.parametrize("bug", [ValueError("a bug"), KeyError("a bug")])
def test_cli_keeps_the_traceback_of_a_bug(monkeypatch, bug):
    import derm_core.cli as cli

    def broken(a):
        raise bug
    monkeypatch.setattr(cli, "cmd_info", broken)
    with pytest.raises(type(bug)):
        main(["info"])


@pytest.mark.parametrize("name", ["DataError", "ImageError", "ModelError", "ProfileError", "StudyError",
                                  "StudyStoreError", "AlreadyAnswered", "JobError", "ConformalError", "ConfigError",
                                  "RunFolderError"])
def test_cli_reports_a_user_error_in_one_line(monkeypatch, capsys, name):
    import derm_core.cli as cli

    def refuses(a):
        raise getattr(errors, name)("the file\n  x.csv is wrong")
    monkeypatch.setattr(cli, "cmd_info", refuses)
    assert main(["info"]) == 2
    assert capsys.readouterr().err == "error: the file x.csv is wrong\n"
