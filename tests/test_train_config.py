"""TrainConfig is the one definition of the training settings: the ``train`` options, their
defaults, the background job's arguments and its job.json are all derived from its fields."""
import json
from dataclasses import asdict, fields, replace

import pytest

from derm_core.cli import build_parser
from derm_core.fit import config as TC
from derm_core.fit import jobs
from derm_core.fit.train import TrainConfig
from derm_core.model.networks import DEFAULT_ARCH, list_archs

# Not on the command line (documented as ``cli: False`` in their metadata): a job runs them at their defaults.
NOT_CLI = {"weight_decay", "meta_dropout", "tier_sensitivity"}
# The stable command line, in --help order (the fields' order, with the CLI-only --new and --force).
TRAIN_FLAGS = ["--data", "--csv", "--out", "--arch", "--taxonomy", "--split-file", "--seed", "--epochs", "--batch-size",
               "--lr", "--image-size", "--metadata", "--no-metadata", "--pretrained", "--freeze-early",
               "--no-freeze-early", "--freeze-epochs", "--class-weighting", "--loss", "--logit-tau", "--label-smoothing",
               "--ema-decay", "--patience", "--monitor", "--workers", "--limit", "--init-from", "--teacher",
               "--distill-weight", "--tta", "--no-tta",
               "--no-resume", "--new", "--force", "--device"]


def _train_parser():
    ap = build_parser()
    sub = next(a for a in ap._actions if a.dest == "cmd")
    return sub.choices["train"]


def _parse(argv) -> TrainConfig:
    return TC.config_from_args(build_parser().parse_args(["train", *argv]))


def test_every_field_has_an_option_and_the_flags_are_unchanged():
    train = _train_parser()
    dests = {a.dest for a in train._actions}
    assert {f.name for f in fields(TrainConfig) if not f.metadata.get("cli", True)} == NOT_CLI
    for f in fields(TrainConfig):
        assert (f.name in dests) == (f.name not in NOT_CLI), f.name
    assert [s for a in train._actions for s in a.option_strings if s not in ("-h", "--help")] == TRAIN_FLAGS


def test_the_parser_defaults_are_trainconfigs():
    assert _parse(["--out", TrainConfig().out]) == TrainConfig()
    train = _train_parser()
    for a in train._actions:
        if a.dest in TrainConfig.__dataclass_fields__ and not a.required:
            assert a.default == TC.default(a.dest), a.dest
    cfg = TrainConfig()
    assert (cfg.arch, cfg.epochs, cfg.batch_size, cfg.lr, cfg.monitor, cfg.ema_decay, cfg.freeze_epochs) == \
        (DEFAULT_ARCH, 12, None, 1e-3, "val_loss", 0.998, 1)
    assert cfg.tier_sensitivity == {"high-risk": 0.9, "dangerous": 0.9}
    assert cfg.tier_sensitivity is not TrainConfig().tier_sensitivity          # a fresh dict each time
    assert TC.choices("arch") == tuple(list_archs()) and TC.choices("monitor") == TC.MONITORS


def test_the_batch_size_follows_the_device_and_scales_the_learning_rate():
    cfg = TrainConfig(lr=1e-3)
    assert TC.for_device(cfg, "cpu").batch_size == 32 and TC.for_device(cfg, "cuda:0").batch_size == 128
    assert TC.for_device(replace(cfg, batch_size=64), "cuda").batch_size == 64      # asked for: kept
    assert TC.scaled_lr(TC.for_device(cfg, "cpu")) == 1e-3                          # the shipped CPU recipe
    assert TC.scaled_lr(replace(cfg, batch_size=128)) == pytest.approx(2e-3)       # sqrt(128 / 32)
    assert _parse(["--out", "o", "--batch-size", "48"]).batch_size == 48


def test_the_special_values_keep_their_meaning():
    assert _parse(["--out", "o", "--ema-decay", "0"]).ema_decay is None            # 0: no EMA
    assert _parse(["--out", "o", "--freeze-epochs", "0"]).freeze_epochs is None    # 0: frozen the whole run
    assert _parse(["--out", "o", "--image-size", "48", "64"]).image_size == (48, 64)
    assert not _parse(["--out", "o", "--no-resume"]).resume and not _parse(["--out", "o", "--new"]).resume
    assert not _parse(["--out", "o", "--no-metadata"]).metadata and not _parse(["--out", "o", "--no-tta"]).tta
    a = build_parser().parse_args(["train", "--out", "o", "--force"])
    assert a.force and TC.config_from_args(a) == TrainConfig(out="o")


@pytest.mark.parametrize("cfg", [
    TrainConfig(),
    TrainConfig(out="runs/x", data="/d"),
    TrainConfig(data="/data with spaces", out="/runs/x", csv="-labels.csv", arch="tiny_test", taxonomy="han12",
                split_file="s.csv", seed=7, epochs=3, batch_size=5, lr=3e-4, image_size=(48, 64), metadata=False,
                pretrained="none", freeze_early=False, freeze_epochs=None, class_weighting="sqrt", loss="cross_entropy",
                logit_tau=0.5, label_smoothing=0.0, ema_decay=None, patience=9, monitor="val_macro_auc", workers=0,
                limit=20, init_from="/m/model.json", teacher="/t/model.json", distill_weight=0.3, tta=False,
                resume=False, device="cuda:1"),
    TrainConfig(out="o", freeze_epochs=3, ema_decay=0.99, lr=1e-6, seed=2**32 - 1),
])
def test_config_argv_round_trips(cfg):
    argv = TC.config_argv(cfg)
    assert _parse(argv) == cfg
    assert TrainConfig.from_dict(json.loads(json.dumps(asdict(cfg)))) == cfg       # job.json
    assert "--out" in argv and len(TC.config_argv(TrainConfig())) == 2             # only what is not the default


def test_a_setting_the_command_line_cannot_say_is_refused(tmp_path):
    with pytest.raises(ValueError, match="weight_decay"):
        TC.config_argv(TrainConfig(weight_decay=0.05))
    with pytest.raises(jobs.JobError, match="tier_sensitivity"):
        jobs.start(tmp_path / "run", TrainConfig(data=str(tmp_path), tier_sensitivity={"dangerous": 0.99}))
    assert not (tmp_path / "run").exists()


def test_an_old_job_request_still_reads():
    old = {"data": "/d", "arch": "tiny_test", "epochs": 3, "image_size": [48, 64], "lr": 1e-4, "metadata": False,
           "batch_size": 16, "taxonomy": "ham7", "csv": None, "pretrained": "none", "workers": 0, "limit": None,
           "patience": 4, "seed": 0, "tta": False, "device": "cpu", "monitor": "val_loss", "init_from": None,
           "no_longer_a_setting": 1}
    cfg = TrainConfig.from_dict(old)
    assert cfg == replace(TrainConfig(), **{k: v for k, v in old.items() if k not in ("no_longer_a_setting",
                                                                                      "image_size")},
                          image_size=(48, 64))
    assert cfg.ema_decay == 0.998 and cfg.out == TrainConfig().out      # missing: the defaults
