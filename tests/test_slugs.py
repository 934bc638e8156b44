"""One slug rule for profile files, run folders and the reader study's CSV exports."""
import re

import pytest

from derm_core.fit import jobs
from derm_core.slugs import slugify
from derm_core.triage import profiles as P


def _old_profile_slug(name: str) -> str:
    """The profiles' own rule before the shared one: existing file names must not change."""
    return re.sub(r"[^a-z0-9._-]+", "-", name.strip().lower()).strip("-._")[:60]


@pytest.mark.parametrize("name", ["Screening clinic A", "  same  ", "x", "High-spec. (≥95%)", "ÄÖ clinic", "a" * 80,
                                  "v1.2_final", "--dots..", "İstanbul K-ward", "tab\tand\nnewline", "UPPER lower"])
def test_profile_file_names_are_unchanged(name):
    assert P.slugify(name) == _old_profile_slug(name)


def test_the_rule():
    assert slugify("  Screening clinic A ") == "screening-clinic-a"
    assert slugify("GP day, March: room #2") == "gp-day-march-room-2"          # a run of separators is one dash
    assert slugify("My run #2", lower=False) == "My-run-2"
    assert slugify("..hidden_", lower=False) == "hidden"                         # no hidden files, no '..'
    assert slugify("///", fallback="study7") == "study7" and slugify("///") == ""
    assert slugify("Grüße") == "gr-e"                                            # ASCII only: safe on every disk
    assert slugify("abcdef", max_length=3) == "abc"
    with pytest.raises(ValueError):
        slugify("x", max_length=0)
    with pytest.raises(P.ProfileError):
        P.slugify("  ///  ")


def test_run_folders_keep_their_case_and_fall_back_to_run(tmp_path):
    assert jobs.new_run_dir("My Run: 2", tmp_path) == tmp_path / "My-Run-2"
    assert jobs.new_run_dir("   ", tmp_path) == tmp_path / "run"
    assert jobs.new_run_dir("../../etc", tmp_path) == tmp_path / "etc"
