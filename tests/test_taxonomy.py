import json

import pytest

from derm_core.data.taxonomy import load_taxonomy


def test_ham7_tiers_follow_zhao(ham7):
    assert ham7.classes == ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
    tiers = {c: ham7.class_tier[c] for c in ham7.classes}
    assert {c for c, t in tiers.items() if t == "low-risk"} == {"nv", "bkl", "df", "vasc"}
    assert {c for c, t in tiers.items() if t == "high-risk"} == {"bcc", "akiec"}
    assert {c for c, t in tiers.items() if t == "dangerous"} == {"mel"}
    assert ham7.tier_names == ["low-risk", "high-risk", "dangerous"]
    assert "biopsy" in ham7.tiers["dangerous"].action


def test_han12_is_addable_as_a_file():
    han = load_taxonomy("han12")
    assert len(han.classes) == 12
    assert han.class_tier["scc"] == "dangerous" and han.class_tier["wart"] == "low-risk"


def test_custom_taxonomy_file_round_trip(tmp_path, ham7):
    d = ham7.to_dict()
    d["name"] = "clinic"
    d["classes"].append({"code": "scc", "name": "Squamous cell carcinoma", "tier": "dangerous"})
    p = tmp_path / "clinic.json"
    p.write_text(json.dumps(d))
    t = load_taxonomy(p)
    assert t.classes[-1] == "scc" and t.tier_members("dangerous") == [4, 7]


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["classes"].append(dict(d["classes"][0])), "twice"),
    (lambda d: d["classes"][0].update(tier="urgent"), "undefined tiers"),
    (lambda d: d.pop("tiers"), "missing field"),
])
def test_bad_taxonomy_files_are_refused(tmp_path, ham7, mutate, message):
    d = ham7.to_dict()
    mutate(d)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=message):
        load_taxonomy(p)


def test_unknown_taxonomy_name_lists_shipped():
    with pytest.raises(FileNotFoundError, match="ham7"):
        load_taxonomy("nope")


def test_unknown_class_index(ham7):
    with pytest.raises(ValueError, match="unknown class"):
        ham7.index("wart")
