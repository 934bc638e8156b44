"""Reader-study storage: one SQLite file shared by every browser session and process.

Why SQLite: several readers answer at the same moment from different tabs (each a thread of
the Streamlit server, or another server process on the same files), and no answer may be
lost. So:

* the file is ``$DERMTRIAGE_STUDY_DB``, else ``studies.sqlite3`` under ``$DERMTRIAGE_HOME``
  (default ``.dermtriage/`` beside the code, as for the prediction cache);
* WAL journal (readers never block the writer), ``busy_timeout`` (a writer waits for
  another instead of failing), and every write is one ``BEGIN IMMEDIATE`` transaction on
  its own connection, so writers queue rather than interleave;
* the schema is versioned with ``PRAGMA user_version`` and brought up to date on open
  (:data:`MIGRATIONS`, pending steps in one transaction); a file made by a newer DermTriage
  or by another program is refused, not modified;
* constraints reject impossible rows: STRICT column types, CHECKs on every vocabulary
  and on times, UNIQUE (one answer per reader, case and phase; one reader name per
  study), composite FOREIGN KEYs (an answer's reader and case belong to its study, its
  answer is one of the study's choices, the case was shown to that reader first);
* a damaged, foreign, newer or locked file raises :class:`StudyStoreError` naming the
  path and what to do, never a silent fallback.

Timing is server-side: :meth:`StudyStore.mark_shown` records when a reader first saw a
case (a reload does not reset it) and :meth:`StudyStore.record_answer` derives the
seconds taken, and whether the study's time limit was exceeded, from that record.
"""
from __future__ import annotations

import json
import math
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from derm_core.errors import AlreadyAnswered, StudyIntegrityError, StudyStoreError
from derm_core.settings import ENV_STUDY_DB, settings

BUSY_TIMEOUT_S = 15.0

# Schema steps: MIGRATIONS[i] brings user_version i to i + 1. Frozen once released: change
# the schema by appending a step, never by editing one (vocabularies are written out here,
# not formatted from Python constants, for that reason).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE study (
            id            INTEGER PRIMARY KEY,
            name          TEXT NOT NULL UNIQUE CHECK (length(trim(name)) BETWEEN 1 AND 200),
            created_at    REAL NOT NULL,
            data_dir      TEXT NOT NULL,
            pool          TEXT NOT NULL DEFAULT '',
            question      TEXT NOT NULL CHECK (question IN ('diagnosis', 'tier', 'malignancy')),
            balance       TEXT NOT NULL CHECK (balance IN ('class', 'tier', 'data')),
            mode          TEXT NOT NULL CHECK (mode IN ('unassisted', 'assisted', 'both')),
            n_cases       INTEGER NOT NULL CHECK (n_cases > 0),
            time_limit_s  REAL CHECK (time_limit_s IS NULL OR time_limit_s > 0),
            show_clinical INTEGER NOT NULL CHECK (show_clinical IN (0, 1)),
            seed          INTEGER NOT NULL,
            taxonomy      TEXT NOT NULL CHECK (json_valid(taxonomy)),
            model         TEXT CHECK (model IS NULL OR json_valid(model)),
            thresholds    TEXT CHECK (thresholds IS NULL OR json_valid(thresholds)),
            CHECK (mode = 'unassisted' OR model IS NOT NULL)
        ) STRICT""",
        """CREATE TABLE choice (
            study_id INTEGER NOT NULL REFERENCES study(id),
            code     TEXT NOT NULL CHECK (length(code) > 0),
            position INTEGER NOT NULL CHECK (position >= 0),
            PRIMARY KEY (study_id, code),
            UNIQUE (study_id, position)
        ) STRICT""",
        """CREATE TABLE study_case (
            id                 INTEGER PRIMARY KEY,
            study_id           INTEGER NOT NULL REFERENCES study(id),
            phase              TEXT NOT NULL CHECK (phase IN ('unassisted', 'assisted')),
            position           INTEGER NOT NULL CHECK (position >= 0),
            image_id           TEXT NOT NULL,
            image_path         TEXT NOT NULL,
            label              TEXT NOT NULL,
            truth              TEXT NOT NULL,
            age                REAL CHECK (age IS NULL OR age BETWEEN 0 AND 120),
            sex                TEXT,
            site               TEXT,
            model_probs        TEXT CHECK (model_probs IS NULL OR json_valid(model_probs)),
            model_differential TEXT CHECK (model_differential IS NULL OR json_valid(model_differential)),
            model_tier         TEXT,
            model_answer       TEXT,
            CHECK (phase = 'unassisted' OR (model_probs IS NOT NULL AND model_answer IS NOT NULL)),
            UNIQUE (study_id, image_id),
            UNIQUE (study_id, phase, position),
            UNIQUE (id, study_id),
            UNIQUE (id, study_id, phase),
            FOREIGN KEY (study_id, truth) REFERENCES choice(study_id, code),
            FOREIGN KEY (study_id, model_answer) REFERENCES choice(study_id, code)
        ) STRICT""",
        """CREATE TRIGGER study_case_phase_fits_mode BEFORE INSERT ON study_case
           WHEN NOT EXISTS (SELECT 1 FROM study s WHERE s.id = NEW.study_id AND s.mode IN ('both', NEW.phase))
           BEGIN SELECT RAISE(ABORT, 'case phase does not fit the study mode'); END""",
        """CREATE TABLE reader (
            id         INTEGER PRIMARY KEY,
            study_id   INTEGER NOT NULL REFERENCES study(id),
            name       TEXT NOT NULL CHECK (length(trim(name)) BETWEEN 1 AND 100 AND name = trim(name)),
            level      TEXT NOT NULL CHECK (level IN ('student', 'resident', 'general practitioner', 'dermatologist')),
            created_at REAL NOT NULL,
            UNIQUE (study_id, name),
            UNIQUE (id, study_id)
        ) STRICT""",
        """CREATE TABLE shown (
            reader_id INTEGER NOT NULL,
            study_id  INTEGER NOT NULL,
            case_id   INTEGER NOT NULL,
            shown_at  REAL NOT NULL,
            PRIMARY KEY (reader_id, case_id),
            FOREIGN KEY (reader_id, study_id) REFERENCES reader(id, study_id),
            FOREIGN KEY (case_id, study_id) REFERENCES study_case(id, study_id)
        ) STRICT""",
        """CREATE TABLE answer (
            id          INTEGER PRIMARY KEY,
            study_id    INTEGER NOT NULL,
            reader_id   INTEGER NOT NULL,
            case_id     INTEGER NOT NULL,
            phase       TEXT NOT NULL,
            answer      TEXT NOT NULL,
            shown_at    REAL NOT NULL,
            answered_at REAL NOT NULL,
            seconds     REAL NOT NULL CHECK (seconds >= 0),
            timed_out   INTEGER NOT NULL CHECK (timed_out IN (0, 1)),
            CHECK (answered_at >= shown_at AND abs(seconds - (answered_at - shown_at)) < 1e-3),
            UNIQUE (reader_id, case_id, phase),
            FOREIGN KEY (reader_id, study_id) REFERENCES reader(id, study_id),
            FOREIGN KEY (case_id, study_id, phase) REFERENCES study_case(id, study_id, phase),
            FOREIGN KEY (reader_id, case_id) REFERENCES shown(reader_id, case_id),
            FOREIGN KEY (study_id, answer) REFERENCES choice(study_id, code)
        ) STRICT""",
        "CREATE INDEX answer_by_study ON answer(study_id)",
        "CREATE INDEX case_by_study ON study_case(study_id, phase, position)",
    ),
    (   # 2: the same cases in both parts (design), planted wrong advice, confidence ratings.
        # study_case is rebuilt (SQLite cannot change a UNIQUE constraint in place): an image may
        # now appear once per part, and an assisted case may carry planted advice.
        """ALTER TABLE study ADD COLUMN design TEXT NOT NULL DEFAULT 'different'
           CHECK (design IN ('different', 'same'))""",
        """ALTER TABLE study ADD COLUMN planted_share REAL NOT NULL DEFAULT 0
           CHECK (planted_share >= 0 AND planted_share <= 0.5)""",
        "ALTER TABLE study ADD COLUMN ask_confidence INTEGER NOT NULL DEFAULT 0 CHECK (ask_confidence IN (0, 1))",
        "ALTER TABLE answer ADD COLUMN confidence INTEGER CHECK (confidence IS NULL OR confidence BETWEEN 1 AND 5)",
        """CREATE TABLE study_case_v2 (
            id                 INTEGER PRIMARY KEY,
            study_id           INTEGER NOT NULL REFERENCES study(id),
            phase              TEXT NOT NULL CHECK (phase IN ('unassisted', 'assisted')),
            position           INTEGER NOT NULL CHECK (position >= 0),
            image_id           TEXT NOT NULL,
            image_path         TEXT NOT NULL,
            label              TEXT NOT NULL,
            truth              TEXT NOT NULL,
            age                REAL CHECK (age IS NULL OR age BETWEEN 0 AND 120),
            sex                TEXT,
            site               TEXT,
            model_probs        TEXT CHECK (model_probs IS NULL OR json_valid(model_probs)),
            model_differential TEXT CHECK (model_differential IS NULL OR json_valid(model_differential)),
            model_tier         TEXT,
            model_answer       TEXT,
            planted            TEXT CHECK (planted IS NULL OR (json_valid(planted) AND phase = 'assisted')),
            CHECK (phase = 'unassisted' OR (model_probs IS NOT NULL AND model_answer IS NOT NULL)),
            UNIQUE (study_id, phase, image_id),
            UNIQUE (study_id, phase, position),
            UNIQUE (id, study_id),
            UNIQUE (id, study_id, phase),
            FOREIGN KEY (study_id, truth) REFERENCES choice(study_id, code),
            FOREIGN KEY (study_id, model_answer) REFERENCES choice(study_id, code)
        ) STRICT""",
        """INSERT INTO study_case_v2 (id, study_id, phase, position, image_id, image_path, label, truth, age, sex, site,
                                     model_probs, model_differential, model_tier, model_answer)
           SELECT id, study_id, phase, position, image_id, image_path, label, truth, age, sex, site,
                  model_probs, model_differential, model_tier, model_answer FROM study_case""",
        "DROP TABLE study_case",
        "ALTER TABLE study_case_v2 RENAME TO study_case",
        """CREATE TRIGGER study_case_phase_fits_mode BEFORE INSERT ON study_case
           WHEN NOT EXISTS (SELECT 1 FROM study s WHERE s.id = NEW.study_id AND s.mode IN ('both', NEW.phase))
           BEGIN SELECT RAISE(ABORT, 'case phase does not fit the study mode'); END""",
        "CREATE INDEX case_by_study ON study_case(study_id, phase, position)",
        """CREATE TRIGGER answer_confidence_as_asked BEFORE INSERT ON answer
           WHEN (SELECT ask_confidence FROM study s WHERE s.id = NEW.study_id) != (NEW.confidence IS NOT NULL)
           BEGIN SELECT RAISE(ABORT, 'a confidence rating is given exactly when the study asks for one'); END""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
TABLES = frozenset({"study", "choice", "study_case", "reader", "shown", "answer"})
_CASE_JSON = ("model_probs", "model_differential", "planted")   # study_case columns stored as JSON


def home_dir() -> Path:
    """DermTriage's own data folder: ``settings().home`` ($DERMTRIAGE_HOME or ``.dermtriage/`` beside the code)."""
    return settings().home


def study_db_path() -> Path:
    """The study database: ``settings().study_db`` ($DERMTRIAGE_STUDY_DB, else ``studies.sqlite3`` in :func:`home_dir`)."""
    return settings().study_db


def _is_locked(e: sqlite3.Error) -> bool:
    return isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e))


class StudyStore:
    """The study database at ``path`` (default :func:`study_db_path`), migrated on open.

    Each call opens its own short-lived connection, so one store may be shared by threads
    (Streamlit sessions) and several stores or processes may use the same file at once.
    """

    def __init__(self, path: str | Path | None = None, timeout: float = BUSY_TIMEOUT_S):
        self.path = Path(path).expanduser() if path else study_db_path()
        self.timeout = float(timeout)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StudyStoreError(f"cannot create the folder for the study database {self.path}: {e}",
                                  self.path) from None
        if self.path.is_dir():
            raise StudyStoreError(f"the study database path {self.path} is a folder; give a file path", self.path)
        self.migrate()

    # ------------------------------------------------------------------ plumbing
    def _connect(self, foreign_keys: bool = True) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        con.row_factory = sqlite3.Row
        con.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
        con.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        return con

    def _error(self, e: sqlite3.Error, doing: str) -> StudyStoreError:
        p = self.path
        if _is_locked(e):
            return StudyStoreError(f"the study database {p} is locked by another program or session (waited "
                                   f"{self.timeout:g} s while {doing}); nothing was written — try again, or close "
                                   "the program holding it", p)
        if isinstance(e, sqlite3.IntegrityError):
            return StudyIntegrityError(f"refused while {doing}: {e} (study database {p}); nothing was written", p)
        if isinstance(e, sqlite3.DatabaseError) and ("not a database" in str(e) or "malformed" in str(e)):
            return StudyStoreError(f"the study database {p} is damaged or not an SQLite file ({e}); move it aside "
                                   f"or point ${ENV_STUDY_DB} at another file", p)
        return StudyStoreError(f"the study database {p} failed while {doing}: {e}", p)

    @contextmanager
    def _tx(self, doing: str, write: bool = True, foreign_keys: bool = True):
        """One connection and one transaction (``BEGIN IMMEDIATE`` for writes): all or nothing.
        ``foreign_keys=False`` only for migrations that rebuild a table, which then check them."""
        try:
            con = self._connect(foreign_keys)
        except sqlite3.Error as e:
            raise self._error(e, doing) from None
        try:
            con.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            yield con
            con.execute("COMMIT")
        except sqlite3.Error as e:
            _rollback(con)
            raise self._error(e, doing) from None
        except BaseException:
            _rollback(con)
            raise
        finally:
            con.close()

    def migrate(self, migrations: tuple[tuple[str, ...], ...] = MIGRATIONS) -> int:
        """Bring the file to the latest schema; return the version.

        A read first (no lock when the file is up to date, as on every page run); pending
        steps then run in one write transaction that re-reads the version, so two processes
        opening a new file at once migrate it once.
        """
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                con = self._connect()
                try:
                    if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                        con.execute("PRAGMA journal_mode = WAL")
                finally:
                    con.close()
                break
            except sqlite3.Error as e:
                # Switching a new file to WAL can report "locked" at once, without waiting for
                # the busy timeout, when several connections race to do it: retry until then.
                if not _is_locked(e) or time.monotonic() > deadline:
                    raise self._error(e, "opening it") from None
                time.sleep(0.05)
        with self._tx("reading its schema version", write=False) as con:
            version = self._check_version(con, migrations)
        if version == len(migrations):
            return version
        # foreign keys off while a step rebuilds a table others refer to (SQLite's documented
        # procedure), then checked over the whole file before the transaction commits
        with self._tx("updating its schema", foreign_keys=False) as con:
            version = self._check_version(con, migrations)
            for step in range(version, len(migrations)):
                for statement in migrations[step]:
                    con.execute(statement)
                con.execute(f"PRAGMA user_version = {step + 1}")
            broken = con.execute("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise sqlite3.IntegrityError(f"the schema update left {len(broken)} rows whose references "
                                             f"fail (first in table {broken[0][0]})")
        return len(migrations)

    def _check_version(self, con: sqlite3.Connection, migrations) -> int:
        """The file's schema version; refuses a newer schema or another program's database."""
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version > len(migrations):
            raise StudyStoreError(f"the study database {self.path} has schema version {version}, made by a newer "
                                  f"DermTriage (this one knows up to {len(migrations)}); upgrade DermTriage or "
                                  f"point ${ENV_STUDY_DB} at another file", self.path)
        if version == 0:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables:
                raise StudyStoreError(f"{self.path} is an SQLite database of another program (tables "
                                      f"{sorted(tables)[:5]}), not a DermTriage study database; point "
                                      f"${ENV_STUDY_DB} at another file", self.path)
        return version

    def schema_version(self) -> int:
        with self._tx("reading its version", write=False) as con:
            return con.execute("PRAGMA user_version").fetchone()[0]

    # ------------------------------------------------------------------ studies
    def create_study(self, study: dict, choices: list[str], cases: pd.DataFrame) -> int:
        """Write a study, its answer choices and its frozen case list in one transaction; its id.

        ``study`` has the columns of the ``study`` table (JSON fields as Python objects);
        ``cases`` those of ``study_case`` (``model_probs``/``model_differential`` as objects).
        """
        row = dict(study)
        for k in ("taxonomy", "model", "thresholds"):
            row[k] = None if row.get(k) is None else json.dumps(row[k])
        row["show_clinical"] = int(bool(row["show_clinical"]))
        row.setdefault("created_at", time.time())
        row.setdefault("pool", "")
        row["ask_confidence"] = int(bool(row.get("ask_confidence", False)))
        row.setdefault("design", "different")
        row.setdefault("planted_share", 0.0)
        cols = ["name", "created_at", "data_dir", "pool", "question", "balance", "mode", "n_cases", "time_limit_s",
                "show_clinical", "seed", "taxonomy", "model", "thresholds", "design", "planted_share",
                "ask_confidence"]
        case_cols = ["phase", "position", "image_id", "image_path", "label", "truth", "age", "sex", "site",
                     "model_probs", "model_differential", "model_tier", "model_answer", "planted"]
        with self._tx(f"creating study {study.get('name')!r}") as con:
            if con.execute("SELECT 1 FROM study WHERE name = ?", (row.get("name"),)).fetchone():
                raise StudyIntegrityError(f"a study named {row.get('name')!r} already exists in {self.path}; "
                                          "choose another name", self.path)
            sid = con.execute(f"INSERT INTO study ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                              [row.get(c) for c in cols]).lastrowid
            con.executemany("INSERT INTO choice (study_id, code, position) VALUES (?, ?, ?)",
                            [(sid, c, i) for i, c in enumerate(choices)])
            rows = []
            for r in cases.to_dict("records"):
                r = {c: _plain(r.get(c)) for c in case_cols}
                for k in _CASE_JSON:
                    r[k] = None if r[k] is None else json.dumps(r[k])
                rows.append([sid] + [r[c] for c in case_cols])
            con.executemany(f"INSERT INTO study_case (study_id, {', '.join(case_cols)}) "
                            f"VALUES ({', '.join('?' * (len(case_cols) + 1))})", rows)
        return int(sid)

    def studies(self) -> pd.DataFrame:
        """Every study with its size and activity, newest first."""
        with self._tx("listing studies", write=False) as con:
            rows = con.execute(
                """SELECT s.id, s.name, s.created_at, s.question, s.mode, s.n_cases, s.time_limit_s,
                          (SELECT count(*) FROM study_case c WHERE c.study_id = s.id) AS n_case_rows,
                          (SELECT count(*) FROM reader r WHERE r.study_id = s.id) AS n_readers,
                          (SELECT count(*) FROM answer a WHERE a.study_id = s.id) AS n_answers
                   FROM study s ORDER BY s.created_at DESC, s.id DESC""").fetchall()
        cols = ["id", "name", "created_at", "question", "mode", "n_cases", "time_limit_s", "n_case_rows",
                "n_readers", "n_answers"]
        return pd.DataFrame([tuple(r) for r in rows], columns=cols)

    def study(self, study_id: int) -> dict:
        """One study's row (JSON fields decoded) plus its ordered ``choices``."""
        with self._tx("reading a study", write=False) as con:
            r = con.execute("SELECT * FROM study WHERE id = ?", (int(study_id),)).fetchone()
            if r is None:
                raise KeyError(f"no study {study_id} in {self.path}")
            choices = [c[0] for c in con.execute("SELECT code FROM choice WHERE study_id = ? ORDER BY position",
                                                 (int(study_id),))]
        out = dict(r)
        for k in ("taxonomy", "model", "thresholds"):
            out[k] = None if out[k] is None else json.loads(out[k])
        out["show_clinical"] = bool(out["show_clinical"])
        out["ask_confidence"] = bool(out["ask_confidence"])
        out["choices"] = choices
        return out

    def cases(self, study_id: int) -> pd.DataFrame:
        """The frozen case list in reading order (unassisted phase first), JSON fields decoded."""
        with self._tx("reading cases", write=False) as con:
            rows = con.execute("""SELECT * FROM study_case WHERE study_id = ?
                                  ORDER BY CASE phase WHEN 'unassisted' THEN 0 ELSE 1 END, position""",
                               (int(study_id),)).fetchall()
        df = pd.DataFrame([dict(r) for r in rows])
        if len(df):
            for k in _CASE_JSON:     # (pandas may hold a missing value as NaN)
                df[k] = pd.Series([json.loads(v) if isinstance(v, str) else None for v in df[k]], dtype=object)
        return df

    # ------------------------------------------------------------------ readers
    def reader(self, study_id: int, name: str, level: str, now: float | None = None) -> dict:
        """The reader ``name`` of this study, registered now if new (a returning reader keeps
        their first level and progress). Adds ``new``: whether this call registered them."""
        name = " ".join(str(name).split())
        with self._tx(f"registering reader {name!r}") as con:
            r = con.execute("SELECT * FROM reader WHERE study_id = ? AND name = ?", (int(study_id), name)).fetchone()
            if r is not None:
                return {**dict(r), "new": False}
            rid = con.execute("INSERT INTO reader (study_id, name, level, created_at) VALUES (?, ?, ?, ?)",
                              (int(study_id), name, level, time.time() if now is None else float(now))).lastrowid
            r = con.execute("SELECT * FROM reader WHERE id = ?", (rid,)).fetchone()
        return {**dict(r), "new": True}

    def find_reader(self, study_id: int, name: str) -> dict | None:
        """The reader ``name`` of this study, or None (names are compared space-normalised)."""
        with self._tx("looking up a reader", write=False) as con:
            r = con.execute("SELECT * FROM reader WHERE study_id = ? AND name = ?",
                            (int(study_id), " ".join(str(name).split()))).fetchone()
        return None if r is None else dict(r)

    def readers(self, study_id: int) -> pd.DataFrame:
        with self._tx("listing readers", write=False) as con:
            rows = con.execute(
                """SELECT r.id, r.name, r.level, r.created_at,
                          (SELECT count(*) FROM answer a WHERE a.reader_id = r.id) AS n_answers
                   FROM reader r WHERE r.study_id = ? ORDER BY r.id""", (int(study_id),)).fetchall()
        return pd.DataFrame([tuple(r) for r in rows], columns=["id", "name", "level", "created_at", "n_answers"])

    def next_case(self, reader_id: int) -> dict | None:
        """The first case in reading order this reader has not answered (None: finished),
        with ``shown_at`` when it was already shown to them."""
        with self._tx("finding the next case", write=False) as con:
            r = con.execute(
                """SELECT c.*, s.shown_at FROM study_case c
                   JOIN reader r ON r.study_id = c.study_id AND r.id = ?
                   LEFT JOIN shown s ON s.reader_id = r.id AND s.case_id = c.id
                   WHERE NOT EXISTS (SELECT 1 FROM answer a WHERE a.reader_id = r.id AND a.case_id = c.id)
                   ORDER BY CASE c.phase WHEN 'unassisted' THEN 0 ELSE 1 END, c.position LIMIT 1""",
                (int(reader_id),)).fetchone()
        if r is None:
            return None
        out = dict(r)
        for k in _CASE_JSON:
            out[k] = None if out[k] is None else json.loads(out[k])
        return out

    def progress(self, reader_id: int) -> tuple[int, int]:
        """(answered, total) cases of this reader's study."""
        with self._tx("reading progress", write=False) as con:
            done = con.execute("SELECT count(*) FROM answer WHERE reader_id = ?", (int(reader_id),)).fetchone()[0]
            total = con.execute("""SELECT count(*) FROM study_case c JOIN reader r ON r.study_id = c.study_id
                                   WHERE r.id = ?""", (int(reader_id),)).fetchone()[0]
        return int(done), int(total)

    # ------------------------------------------------------------------ reading
    def mark_shown(self, reader_id: int, case_id: int, now: float | None = None) -> float:
        """Record that the case is on the reader's screen; returns when it was *first* shown
        (showing it again after a reload keeps the first time, so the clock does not restart)."""
        now = time.time() if now is None else float(now)
        with self._tx("recording a shown case") as con:
            con.execute("""INSERT OR IGNORE INTO shown (reader_id, study_id, case_id, shown_at)
                           SELECT r.id, r.study_id, ?, ? FROM reader r WHERE r.id = ?""",
                        (int(case_id), now, int(reader_id)))
            r = con.execute("SELECT shown_at FROM shown WHERE reader_id = ? AND case_id = ?",
                            (int(reader_id), int(case_id))).fetchone()
            if r is None:
                raise StudyIntegrityError(f"no reader {reader_id} in {self.path}", self.path)
        return float(r[0])

    def record_answer(self, reader_id: int, case_id: int, answer: str, now: float | None = None,
                      confidence: int | None = None) -> dict:
        """Store one answer (with its 1-5 malignancy ``confidence`` when the study asks for one);
        the seconds taken and whether it came after the study's time limit are computed here from
        the stored shown time. Returns the stored row.

        Raises:
            AlreadyAnswered: this reader already answered this case.
            StudyIntegrityError: the case was not shown to the reader, belongs to another
                study, ``answer`` is not one of the study's choices, or a confidence rating is
                missing where the study asks for one (or given where it does not).
        """
        now = time.time() if now is None else float(now)
        doing = f"recording reader {reader_id}'s answer to case {case_id}"
        with self._tx(doing) as con:
            ctx = con.execute(
                """SELECT r.study_id, c.phase, sh.shown_at, st.time_limit_s,
                          EXISTS (SELECT 1 FROM answer a WHERE a.reader_id = r.id AND a.case_id = c.id) AS done
                   FROM reader r JOIN study st ON st.id = r.study_id
                   LEFT JOIN study_case c ON c.id = ? AND c.study_id = r.study_id
                   LEFT JOIN shown sh ON sh.reader_id = r.id AND sh.case_id = c.id
                   WHERE r.id = ?""", (int(case_id), int(reader_id))).fetchone()
            if ctx is None:
                raise StudyIntegrityError(f"refused while {doing}: no such reader (study database {self.path})",
                                          self.path)
            if ctx["phase"] is None:
                raise StudyIntegrityError(f"refused while {doing}: the case is not in the reader's study", self.path)
            if ctx["done"]:
                raise AlreadyAnswered(f"this case was already answered by this reader (study database {self.path})",
                                      self.path)
            if ctx["shown_at"] is None:
                raise StudyIntegrityError(f"refused while {doing}: the case was never shown to the reader", self.path)
            shown_at = float(ctx["shown_at"])
            answered_at = max(now, shown_at)     # a clock step backwards cannot make a negative time
            seconds = answered_at - shown_at
            limit = ctx["time_limit_s"]
            timed_out = int(limit is not None and seconds > float(limit))
            try:
                aid = con.execute(
                    """INSERT INTO answer (study_id, reader_id, case_id, phase, answer, shown_at, answered_at,
                                           seconds, timed_out, confidence) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    (ctx["study_id"], int(reader_id), int(case_id), ctx["phase"], str(answer), shown_at, answered_at,
                     seconds, timed_out, None if confidence is None else int(confidence))).lastrowid
            except sqlite3.IntegrityError as e:
                if "UNIQUE" in str(e):
                    raise AlreadyAnswered(f"this case was already answered by this reader (study database "
                                          f"{self.path})", self.path) from None
                raise
            row = con.execute("SELECT * FROM answer WHERE id = ?", (aid,)).fetchone()
        return dict(row)

    def answers(self, study_id: int) -> pd.DataFrame:
        """Every answer of a study with its reader and case: one row per (reader, case), with the
        reader's ``confidence`` (None when not asked) and, for a case whose advice was planted,
        ``planted`` True and the advice's answer in ``planted_answer``."""
        cols = ["answer_id", "study_id", "reader_id", "reader", "level", "case_id", "phase", "position", "image_id",
                "label", "truth", "answer", "timed_out", "seconds", "shown_at", "answered_at", "model_answer",
                "confidence", "planted", "planted_answer"]
        with self._tx("reading answers", write=False) as con:
            rows = con.execute(
                """SELECT a.id, a.study_id, a.reader_id, r.name, r.level, a.case_id, a.phase, c.position, c.image_id,
                          c.label, c.truth, a.answer, a.timed_out, a.seconds, a.shown_at, a.answered_at, c.model_answer,
                          a.confidence, c.planted IS NOT NULL, json_extract(c.planted, '$.answer')
                   FROM answer a JOIN reader r ON r.id = a.reader_id JOIN study_case c ON c.id = a.case_id
                   WHERE a.study_id = ? ORDER BY r.id, CASE a.phase WHEN 'unassisted' THEN 0 ELSE 1 END, c.position""",
                (int(study_id),)).fetchall()
        df = pd.DataFrame([tuple(r) for r in rows], columns=cols)
        df["timed_out"] = df["timed_out"].astype(bool)
        df["planted"] = df["planted"].astype(bool)
        return df


def _rollback(con: sqlite3.Connection) -> None:
    try:
        if con.in_transaction:
            con.execute("ROLLBACK")
    except sqlite3.Error:
        pass   # the transaction is gone with the connection anyway


def _plain(v):
    """numpy scalars and NaN to what sqlite3 stores (NaN becomes NULL)."""
    if hasattr(v, "item") and not isinstance(v, (dict, list)):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v
