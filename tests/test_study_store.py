"""Reader-study storage: schema and migration, constraints, server-side timing, resume,
clear errors for damaged/foreign/newer/locked files, and concurrent writers losing nothing.

No torch at module level: the multiprocessing test spawns writers that import this module."""
import multiprocessing
import sqlite3
import threading

import pandas as pd
import pytest

from derm_core.settings import ENV_HOME, ENV_STUDY_DB
from derm_core.study.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    AlreadyAnswered,
    StudyIntegrityError,
    StudyStore,
    StudyStoreError,
    study_db_path,
)

CHOICES = ["benign", "malignant"]


def _study_row(name="s1", mode="unassisted", limit=None, **kw):
    return {"name": name, "data_dir": "/data", "pool": "test", "question": "malignancy", "balance": "data",
            "mode": mode, "n_cases": 3, "time_limit_s": limit, "show_clinical": False, "seed": 0,
            "taxonomy": {"name": "t"}, "model": None if mode == "unassisted" else {"name": "m"},
            "thresholds": None, **kw}


def _cases(n=3, phase="unassisted", prefix="img", model=False):
    rows = []
    for i in range(n):
        truth = CHOICES[i % 2]
        rows.append({"phase": phase, "position": i, "image_id": f"{prefix}{i}", "image_path": f"/data/{prefix}{i}.jpg",
                     "label": "mel" if truth == "malignant" else "nv", "truth": truth, "age": 50.0, "sex": "male",
                     "site": "back", "model_probs": {"mel": 0.7, "nv": 0.3} if model else None,
                     "model_differential": [["mel", 0.7]] if model else None,
                     "model_tier": "dangerous" if model else None, "model_answer": "malignant" if model else None})
    return pd.DataFrame(rows)


def _make(store, n=3, name="s1", limit=None):
    sid = store.create_study(_study_row(name, n_cases=n, limit=limit), CHOICES, _cases(n, prefix=name))
    return sid, store.cases(sid)


def test_new_file_gets_the_schema_in_wal_mode_and_reopens_unchanged(tmp_path):
    path = tmp_path / "sub" / "studies.sqlite3"
    store = StudyStore(path)
    assert path.is_file() and store.schema_version() == SCHEMA_VERSION == len(MIGRATIONS)
    sid, _ = _make(store)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"study", "choice", "study_case", "reader", "shown", "answer"} <= tables
    con.close()
    again = StudyStore(path)                                   # a second open migrates nothing, loses nothing
    assert again.schema_version() == SCHEMA_VERSION
    assert list(again.studies()["id"]) == [sid] and len(again.cases(sid)) == 3


def test_database_location_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_STUDY_DB, raising=False)
    monkeypatch.setenv(ENV_HOME, str(tmp_path / "home"))
    assert study_db_path() == tmp_path / "home" / "studies.sqlite3"
    monkeypatch.setenv(ENV_STUDY_DB, str(tmp_path / "elsewhere.db"))
    assert study_db_path() == tmp_path / "elsewhere.db"
    assert StudyStore().path == tmp_path / "elsewhere.db" and (tmp_path / "elsewhere.db").is_file()


def test_migration_steps_run_in_order_and_keep_the_data(tmp_path):
    store = StudyStore(tmp_path / "s.db")
    sid, _ = _make(store)
    v2 = MIGRATIONS + (("ALTER TABLE study ADD COLUMN notes TEXT NOT NULL DEFAULT ''",),)
    assert store.migrate(v2) == SCHEMA_VERSION + 1
    assert store.schema_version() == SCHEMA_VERSION + 1
    assert store.study(sid)["notes"] == "" and len(store.cases(sid)) == 3
    with pytest.raises(StudyStoreError, match="newer DermTriage") as e:   # this DermTriage only knows v1
        StudyStore(tmp_path / "s.db")
    assert e.value.path == tmp_path / "s.db"


def test_damaged_foreign_and_folder_paths_are_refused_with_the_path(tmp_path):
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StudyStoreError, match="damaged or not an SQLite file") as e:
        StudyStore(garbage)
    assert str(garbage) in str(e.value)
    assert garbage.read_bytes() == b"this is not a database" * 100      # left untouched

    foreign = tmp_path / "other.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE invoices (id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(StudyStoreError, match="another program") as e:
        StudyStore(foreign)
    assert str(foreign) in str(e.value)
    with pytest.raises(StudyStoreError, match="is a folder"):
        StudyStore(tmp_path)


def test_a_locked_database_gives_a_clear_error_and_writes_nothing(tmp_path):
    path = tmp_path / "s.db"
    store = StudyStore(path, timeout=0.2)
    sid, cases = _make(store)
    reader = store.reader(sid, "Ann", "student")
    store.mark_shown(reader["id"], int(cases["id"][0]), now=100.0)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StudyStoreError, match="is locked") as e:
            store.record_answer(reader["id"], int(cases["id"][0]), "benign", now=110.0)
        assert str(path) in str(e.value) and not isinstance(e.value, StudyIntegrityError)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.answers(sid).empty
    store.record_answer(reader["id"], int(cases["id"][0]), "benign", now=110.0)   # works once released
    assert len(store.answers(sid)) == 1


def test_constraints_reject_impossible_rows(tmp_path):
    from derm_core.study.cases import (
        LEVELS,  # imported here: spawned writer processes import this module, keep it light
    )
    store = StudyStore(tmp_path / "s.db")
    sid, cases = _make(store, name="one")
    other, other_cases = _make(store, name="two")
    ann = store.reader(sid, "Ann", "resident")
    case0 = int(cases["id"][0])
    store.mark_shown(ann["id"], case0, now=10.0)

    with pytest.raises(StudyIntegrityError):           # an answer that is not one of the study's choices
        store.record_answer(ann["id"], case0, "melanoma", now=12.0)
    with pytest.raises(StudyIntegrityError, match="not in the reader's study"):
        store.record_answer(ann["id"], int(other_cases["id"][0]), "benign", now=12.0)
    with pytest.raises(StudyIntegrityError):           # showing another study's case to this reader
        store.mark_shown(ann["id"], int(other_cases["id"][0]), now=12.0)
    with pytest.raises(StudyIntegrityError, match="never shown"):
        store.record_answer(ann["id"], int(cases["id"][1]), "benign", now=12.0)
    store.record_answer(ann["id"], case0, "benign", now=12.0)
    with pytest.raises(AlreadyAnswered):
        store.record_answer(ann["id"], case0, "malignant", now=13.0)
    assert list(store.answers(sid)["answer"]) == ["benign"]           # the first answer stands, alone

    with pytest.raises(StudyIntegrityError):
        store.reader(sid, "Bob", "nurse")
    with pytest.raises(StudyIntegrityError):
        store.reader(sid, "   ", "student")
    for level in LEVELS:                                   # the vocabulary of derm_core.study.cases fits the schema
        store.reader(sid, f"reader {level}", level)
    same = store.reader(sid, "  Ann ", "dermatologist")    # (study, name) is the identity; the first level stays
    assert same["id"] == ann["id"] and not same["new"] and same["level"] == "resident"
    assert store.reader(other, "Ann", "student")["id"] != ann["id"]

    with pytest.raises(StudyIntegrityError, match="already exists"):
        _make(store, name="one")
    with pytest.raises(StudyIntegrityError):               # unknown question
        store.create_study(_study_row("bad", question="colour"), CHOICES, _cases(prefix="bad"))
    with pytest.raises(StudyIntegrityError):               # assisted cases in an unassisted study
        store.create_study(_study_row("bad2"), CHOICES, _cases(phase="assisted", prefix="bad2", model=True))
    with pytest.raises(StudyIntegrityError):               # a case whose correct answer is not a choice
        store.create_study(_study_row("bad3"), CHOICES, _cases(prefix="bad3").assign(truth="purple"))
    with pytest.raises(StudyIntegrityError):               # the same image twice
        store.create_study(_study_row("bad4"), CHOICES, pd.concat([_cases(1, prefix="x"), _cases(1, prefix="x")]))
    assert set(store.studies()["name"]) == {"one", "two"}   # failed creations left nothing behind
    con = sqlite3.connect(store.path)
    assert con.execute("SELECT count(*) FROM study_case").fetchone()[0] == 6

    # below the store's API: the schema itself refuses a negative time and a reversed clock
    con.execute("PRAGMA foreign_keys = ON")
    ok = (sid, ann["id"], int(cases["id"][2]), "unassisted", "benign")
    con.execute("INSERT INTO shown VALUES (?, ?, ?, ?)", (ann["id"], sid, int(cases["id"][2]), 50.0))
    for shown, answered, seconds in ((50.0, 40.0, -10.0), (50.0, 60.0, -1.0), (50.0, 60.0, 3.0)):
        with pytest.raises(sqlite3.IntegrityError):
            con.execute("INSERT INTO answer (study_id, reader_id, case_id, phase, answer, shown_at, answered_at, "
                        "seconds, timed_out) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)", (*ok, shown, answered, seconds))
    with pytest.raises(sqlite3.IntegrityError):            # the phase must be the case's
        con.execute("INSERT INTO answer (study_id, reader_id, case_id, phase, answer, shown_at, answered_at, seconds, "
                    "timed_out) VALUES (?, ?, ?, 'assisted', 'benign', 50, 55, 5, 0)", ok[:3])
    con.close()


def test_timing_is_server_side_and_survives_a_reload(tmp_path):
    store = StudyStore(tmp_path / "s.db")
    sid = store.create_study(_study_row("timed", limit=30.0), CHOICES, _cases(3, prefix="t"))
    cases = store.cases(sid)
    ann = store.reader(sid, "Ann", "student")
    c0, c1, c2 = (int(i) for i in cases["id"])
    assert store.next_case(ann["id"])["id"] == c0 and store.next_case(ann["id"])["shown_at"] is None
    assert store.mark_shown(ann["id"], c0, now=1000.0) == 1000.0
    assert store.mark_shown(ann["id"], c0, now=1020.0) == 1000.0      # a reload does not restart the clock
    assert store.next_case(ann["id"])["shown_at"] == 1000.0
    a = store.record_answer(ann["id"], c0, "benign", now=1025.0)
    assert a["seconds"] == pytest.approx(25.0) and a["timed_out"] == 0

    reopened = StudyStore(tmp_path / "s.db")                            # a new session: continue at case 2
    same = reopened.reader(sid, "Ann", "student")
    assert reopened.next_case(same["id"])["id"] == c1 and reopened.progress(same["id"]) == (1, 3)
    reopened.mark_shown(same["id"], c1, now=2000.0)
    late = reopened.record_answer(same["id"], c1, "malignant", now=2030.5)
    assert late["timed_out"] == 1 and late["seconds"] == pytest.approx(30.5)
    reopened.mark_shown(same["id"], c2, now=3000.0)
    back = reopened.record_answer(same["id"], c2, "benign", now=2990.0)   # the clock stepped back
    assert back["seconds"] == 0.0 and back["timed_out"] == 0
    assert reopened.next_case(same["id"]) is None and reopened.progress(same["id"]) == (3, 3)
    got = reopened.answers(sid)
    assert list(got["timed_out"]) == [False, True, False] and list(got["image_id"]) == ["t0", "t1", "t2"]


def _answer_all(path, sid, name, level="student"):
    store = StudyStore(path, timeout=30)
    me = store.reader(sid, name, level)
    while (case := store.next_case(me["id"])) is not None:
        store.mark_shown(me["id"], int(case["id"]))
        store.record_answer(me["id"], int(case["id"]), "benign" if int(case["id"]) % 2 else "malignant")


def test_concurrent_readers_in_threads_lose_nothing(tmp_path):
    path = tmp_path / "s.db"
    sid, _ = _make(StudyStore(path), n=12)
    errors = []

    def run(name):
        try:
            _answer_all(path, sid, name)
        except Exception as e:   # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=run, args=(f"reader {i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    got = StudyStore(path).answers(sid)
    assert len(got) == 8 * 12
    assert got.groupby("reader").size().eq(12).all() and got["reader"].nunique() == 8


def test_concurrent_registration_of_one_name_makes_one_reader(tmp_path):
    path = tmp_path / "s.db"
    sid, _ = _make(StudyStore(path))
    ids, barrier = [], threading.Barrier(6)

    def run():
        barrier.wait()
        ids.append(StudyStore(path, timeout=30).reader(sid, "Same Name", "resident")["id"])
    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 6 and len(set(ids)) == 1
    assert len(StudyStore(path).readers(sid)) == 1


def test_concurrent_first_opens_migrate_a_new_file_once(tmp_path):
    path, barrier, errors = tmp_path / "new.db", threading.Barrier(6), []

    def run():
        barrier.wait()
        try:
            StudyStore(path, timeout=30)
        except Exception as e:   # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert StudyStore(path).schema_version() == SCHEMA_VERSION
    _make(StudyStore(path))                                  # the schema exists once and works


def test_concurrent_readers_in_processes_lose_nothing(tmp_path):
    path = tmp_path / "s.db"
    sid, _ = _make(StudyStore(path), n=10)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_answer_all, args=(path, sid, f"process reader {i}")) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 4
    got = StudyStore(path).answers(sid)
    assert len(got) == 4 * 10 and got.groupby("reader").size().eq(10).all()
