"""Distillation (issue 19): a single student trained on a teacher's (an ensemble's) soft labels
as well as the labels, from a teacher trained on the same split only."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import write_dataset
from derm_core.cli import main
from derm_core.data.dataset import load_table
from derm_core.data.splits import load_splits
from derm_core.evaluate.sheet import model_sheet
from derm_core.fit.config import TrainConfig
from derm_core.fit.train import DISTILL_T, distill_loss
from derm_core.model.calibration import softmax
from derm_core.model.checkpoint import read_card
from derm_core.model.predictor import Predictor

TINY = ["--arch", "tiny_test", "--epochs", "1", "--batch-size", "16", "--pretrained", "none"]


def test_the_loss_is_the_labels_without_a_teacher_and_the_mix_with_one():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(8, 7, generator=g), torch.randint(0, 7, (8,), generator=g)
    cfg = TrainConfig(distill_weight=0.25)
    hard = torch.nn.functional.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    assert torch.allclose(distill_loss(logits, y, None, cfg), hard)
    # a teacher that agrees with the student adds nothing: only the labels' share is left
    agree = torch.softmax(logits / DISTILL_T, 1)
    assert torch.allclose(distill_loss(logits, y, agree, cfg), 0.75 * hard, atol=1e-6)
    # one that disagrees costs more, and more with a larger weight
    other = torch.softmax(torch.randn(8, 7, generator=g), 1)
    assert distill_loss(logits, y, other, cfg) > 0.75 * hard
    q = torch.softmax(logits / DISTILL_T, 1)
    kl = (other * (other / q).log()).sum(1).mean()          # KL(teacher || student), per photo
    assert torch.allclose(distill_loss(logits, y, other, TrainConfig(distill_weight=1.0)), DISTILL_T ** 2 * kl)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("distil")
    data = write_dataset(root / "data", per_class=6)
    assert main(["train", "--data", str(data), "--out", str(root / "teacher"), *TINY, "--seed", "3"]) == 0
    return root, data


def test_a_student_learns_from_the_teachers_soft_labels(teacher):
    root, data = teacher
    t_card = read_card(root / "teacher" / "model.json")
    assert main(["train", "--data", str(data), "--out", str(root / "student"), *TINY, "--seed", "4",
                 "--teacher", str(t_card.path), "--distill-weight", "0.7"]) == 0
    card = read_card(root / "student" / "model.json")
    assert card.split_file.resolve() == t_card.split_file.resolve()       # the teacher's split, by default
    assert card.training.config["teacher"] == str(t_card.path) and card.training.config["distill_weight"] == 0.7
    assert "--teacher" in card.training.command
    # the card keeps the teacher's identity and recipe, and the sheet prints it before the student's
    record = card.training.details["teacher"]
    assert record["weights_sha256"] == t_card.weights_sha256() and record["commands"] == \
        t_card.training.details["commands"]
    sheet = model_sheet(card)
    assert sheet.index(t_card.training.command) < sheet.index(card.training.command)
    assert "Distilled from a teacher, tiny_test" in sheet and "weight 0.7" in sheet
    # the soft labels are the teacher's flip-averaged probabilities on the training photos, in order
    cached = list((root / "student").glob("teacher-*.npy"))
    assert [p.name for p in cached] == [f"teacher-{t_card.weights_sha256()[:16]}.npy"]
    table = load_table(data, t_card.taxonomy)
    train = table[(load_splits(table, t_card.split_file) == "train").to_numpy()].reset_index(drop=True)
    want = Predictor.from_path(t_card.path, device="cpu").predict_table(train, progress=False)["logits"]
    assert np.allclose(np.load(cached[0]), want, atol=1e-4)
    assert np.allclose(softmax(np.load(cached[0]), DISTILL_T).sum(1), 1)


def test_a_teacher_from_another_split_is_refused(teacher, capsys):
    root, data = teacher
    t_card = read_card(root / "teacher" / "model.json")
    split = pd.read_csv(t_card.split_file, dtype=str)
    split["split"] = split["split"].map({"train": "val", "val": "train", "test": "test"})  # its val is our train
    other = root / "other_split.csv"
    split.to_csv(other, index=False)
    assert main(["train", "--data", str(data), "--out", str(root / "leaky"), *TINY,
                 "--split-file", str(other), "--teacher", str(t_card.path)]) != 0
    assert "was not trained on this run's split" in capsys.readouterr().err
    assert not (root / "leaky" / "model.json").exists()
